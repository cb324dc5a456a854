//! Secrets and files (issue 8, docs/security.md): what the binary refuses at start or in
//! `config check`, and the modes of what it writes.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn run(args: &[&str], config: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// `run` on loopback ports, for a start that is expected to fail.
fn start_on_loopback(config: &std::path::Path) -> std::process::Output {
    run(
        &[
            "run",
            "--http-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        config,
    )
}

/// A token file others may read is refused at start, naming the fix; the honest setup
/// (0600) starts, and everything the gateway writes is private.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readable_secrets_are_refused_and_written_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("ingest.secret");
    std::fs::write(&token, "fleet-secret\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[auth]\ningest_token_file = {:?}\n",
            token.display().to_string()
        ),
    );
    let out = start_on_loopback(&cfg);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("chmod 600") && err.contains("ingest.secret"),
        "{err}"
    );

    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let gw = Gateway::start(&cfg);
    let (s, _) = post_json(
        &client(),
        &gw.url("/ingest/d"),
        "fleet-secret",
        &serde_json::json!({"seq": 1}),
    )
    .await;
    assert_eq!(s, 202);
    assert_eq!(mode(&gw.data_dir), 0o700, "data dir created owner-only");
    assert_eq!(mode(&gw.data_dir.join("wal.redb")), 0o600);
    assert_eq!(mode(&gw.data_dir.join("admin.token")), 0o600);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let sink_file = gw.data_dir.join("sink/records.jsonl");
    while !sink_file.exists() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(mode(&sink_file), 0o640);
}

/// A symlink planted where the gateway will create its token is never written through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_symlink_is_not_followed_when_creating_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let victim = dir.path().join("victim-file");
    std::os::unix::fs::symlink(&victim, data.join("admin.token")).unwrap();
    let cfg = write_config(dir.path(), "");
    let out = start_on_loopback(&cfg);
    assert!(!out.status.success());
    assert!(
        !victim.exists(),
        "the token was not written through the link"
    );
}

#[test]
fn token_hash_reads_stdin_so_secrets_stay_out_of_shell_history() {
    let from_arg = Command::new(BIN)
        .args(["token", "hash", "s3cret"])
        .output()
        .unwrap();
    let mut child = Command::new(BIN)
        .args(["token", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let from_stdin = child.wait_with_output().unwrap();
    assert!(from_stdin.status.success());
    assert_eq!(from_arg.stdout, from_stdin.stdout);
    assert!(String::from_utf8_lossy(&from_stdin.stdout).starts_with("sha256:"));
}

/// Credentials over plain http:// or mqtt:// are refused unless the sink says
/// `allow_insecure`; `config check` never prints them.
#[test]
fn cleartext_credentials_are_refused_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("bearer");
    write_secret(&secret, "t0ken");
    let sinks = format!(
        "[[sinks]]\nname = \"a\"\ntype = \"http\"\nurl = \"http://user:hunter2@api.example/in\"\n\
         [[sinks]]\nname = \"b\"\ntype = \"http\"\nurl = \"http://api.example/in\"\nbearer_token_file = {:?}\n\
         [[sinks]]\nname = \"c\"\ntype = \"mqtt\"\nurl = \"mqtt://broker.example\"\nusername = \"gw\"\npassword_file = {:?}\n",
        secret.display().to_string(),
        secret.display().to_string()
    );
    let cfg = write_config(dir.path(), &sinks);
    let out = run(&["config", "check"], &cfg);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for s in [
        "sinks[0].url",
        "sinks[1].url",
        "sinks[2].url",
        "allow_insecure",
    ] {
        assert!(err.contains(s), "{s} in {err}");
    }
    assert!(!err.contains("hunter2"), "{err}");
    let cfg = write_config(
        dir.path(),
        &sinks
            .replace(
                "type = \"http\"\n",
                "type = \"http\"\nallow_insecure = true\n",
            )
            .replace(
                "type = \"mqtt\"\n",
                "type = \"mqtt\"\nallow_insecure = true\n",
            ),
    );
    let out = run(&["config", "check"], &cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        !printed.contains("hunter2") && printed.contains("http://<redacted>@api.example/in"),
        "{printed}"
    );
}

/// A cleartext listener on a network address is refused unless asked for with the one
/// flag, `--insecure-listen` (the container image's default command included).
#[test]
fn cleartext_on_the_network_needs_the_one_flag() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let out = run(&["config", "check", "--http-listen", "0.0.0.0:8080"], &cfg);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.listen") && err.contains("--insecure-listen"),
        "{err}"
    );
    let out = run(
        &[
            "config",
            "check",
            "--http-listen",
            "0.0.0.0:8080",
            "--admin-listen",
            "0.0.0.0:8081",
            "--insecure-listen",
        ],
        &cfg,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
