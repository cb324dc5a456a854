//! The command line: `config check` reports every problem at once and prints the effective
//! config with secrets redacted; `wal stats` reads the WAL of a stopped gateway.

mod common;

use common::*;
use serde_json::json;
use std::process::Command;

#[test]
fn config_check_reports_every_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "typo = 1\n[delivery]\nmax_attempts = 0\n[[sinks]]\nname = \"x\"\ntype = \"http\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "typo: unknown key",
        "delivery.max_attempts: must be > 0",
        "sinks[0].url: required",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn config_check_prints_the_effective_config_with_layers_and_redaction() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ok.toml");
    std::fs::write(&f, "[http]\nlisten = \"127.0.0.1:9000\"\n[auth.devices]\nd1 = \"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&f)
        .args(["--set", "wal.max_records=5"])
        .env("EDGE_GATEWAY__ADMIN__LISTEN", "127.0.0.1:9001")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let cfg: toml::Table = text.parse().unwrap();
    assert_eq!(
        cfg["http"]["listen"].as_str(),
        Some("127.0.0.1:9000"),
        "file layer"
    );
    assert_eq!(
        cfg["admin"]["listen"].as_str(),
        Some("127.0.0.1:9001"),
        "environment layer"
    );
    assert_eq!(
        cfg["wal"]["max_records"].as_integer(),
        Some(5),
        "flag layer"
    );
    assert!(
        !text.contains("9f86d0"),
        "device token hashes are redacted:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_stats_reads_a_stopped_gateways_wal() {
    let dir = tempfile::tempdir().unwrap();
    // An http sink nobody listens on: records stay pending.
    let cfg = write_config(dir.path(), "[[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"http://127.0.0.1:9/x\"\ntimeout_ms = 200\n");
    let gw = Gateway::start(&cfg);
    for i in 0..3 {
        let (s, _) = post_json(
            &client(),
            &gw.url("/ingest/d1"),
            &gw.token,
            &json!({"seq": i}),
        )
        .await;
        assert_eq!(s, 202);
    }
    let data = gw.data_dir.clone();
    assert!(gw.terminate().success());
    let out = Command::new(BIN)
        .args(["wal", "stats", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["records"], 3, "{stats}");
    assert_eq!(stats["sinks"][0]["sink"], "api");
    assert_eq!(stats["sinks"][0]["pending"], 3);
}
