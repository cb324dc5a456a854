//! Test harness: the real `edge-gateway` binary, a recording HTTP sink, load clients.
//!
//! Everything binds loopback port 0. Waiting is event-driven: the gateway's "ready" log
//! line, the sink's watch channel of received keys; every wait has a deadline.
#![allow(dead_code)]

pub mod mqtt;
pub mod mqtt_client;
pub mod otlp;
pub mod pki;
pub mod sink;

use serde_json::Value;
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_edge-gateway");

/// A running gateway process.
pub struct Gateway {
    pub child: Child,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub data_dir: PathBuf,
    pub token: String,
    pub admin_token: String,
    log: Arc<Mutex<Vec<String>>>,
}

/// Writes a config file into `dir` and returns its path. `extra` is appended TOML.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("gateway.toml");
    let base = format!(
        "data_dir = {:?}\n{extra}",
        dir.join("data").display().to_string()
    );
    std::fs::write(&p, base).unwrap();
    p
}

/// [`write_config`] with `extra` TOML (tables such as `[delivery]`) and one http sink named
/// `api` posting to `url`.
pub fn api_sink_config(dir: &Path, url: &str, extra: &str) -> PathBuf {
    write_config(
        dir,
        &format!("{extra}[[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"{url}\"\n"),
    )
}

/// Writes a secret file as an operator must: owner-only (the gateway refuses others).
pub fn write_secret(path: &Path, secret: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, secret).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Appends TOML to a config written by [`write_config`].
pub fn append_config(config: &Path, extra: &str) {
    let text = std::fs::read_to_string(config).unwrap() + extra;
    std::fs::write(config, text).unwrap();
}

impl Gateway {
    /// Starts the binary with `config` and waits for its "edge-gateway ready" line.
    pub fn start(config: &Path) -> Gateway {
        Gateway::start_with_env(config, &[])
    }

    /// The command that runs the binary with `config` on loopback ports it picks.
    pub fn command(config: &Path) -> Command {
        let mut c = Command::new(BIN);
        c.args([
            "run",
            "--http-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(config);
        c
    }

    /// `start` with extra environment variables (e.g. libfaketime's).
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Gateway {
        let mut child = Gateway::command(config)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn edge-gateway");
        let (tx, rx) = mpsc::channel::<Value>();
        let log = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "edge-gateway ready" {
                        let _ = tx.send(v);
                    }
                }
                log2.lock().unwrap().push(line);
            }
        });
        let err = child.stderr.take().unwrap();
        let log3 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                log3.lock().unwrap().push(format!("stderr: {line}"));
            }
        });
        let ready = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(v) => v,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "gateway did not become ready; log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        let data_dir = PathBuf::from(ready["data_dir"].as_str().unwrap());
        let read = |name: &str| {
            std::fs::read_to_string(data_dir.join(name))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        Gateway {
            http: ready["http"].as_str().unwrap().parse().unwrap(),
            admin: ready["admin"].as_str().unwrap().parse().unwrap(),
            token: read("ingest.token"),
            admin_token: read("admin.token"),
            data_dir,
            child,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub async fn admin_get(&self, path: &str) -> Value {
        client()
            .get(self.admin_url(path))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits (20 s at most) until metric `name` (with labels) satisfies `ok`; returns the text.
    pub async fn wait_metric(&self, name: &str, ok: impl Fn(f64) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let m = self.metrics().await;
            if metric(&m, name).is_some_and(&ok) {
                return m;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} = {:?}",
                metric(&m, name)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls the admin API (it offers no event to wait on), 30 s at most, until `sink` lists
    /// at least `n` dead letters; returns the listing.
    pub async fn wait_dead_letters(&self, sink: &str, n: usize) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let dl = self
                .admin_get(&format!("/admin/dead-letters/{sink}?limit=10000"))
                .await;
            if dl["dead_letters"].as_array().is_some_and(|a| a.len() >= n) {
                return dl;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not dead-lettered: {dl}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /readyz`'s body, whatever its status.
    pub async fn readyz(&self) -> Value {
        client()
            .get(self.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `edge-gateway ARGS --config CFG` to its end: (success, stdout, stderr).
pub fn cli(cfg: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(cfg)
        .output()
        .expect("run edge-gateway");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Sends a control command through the admin API (`POST /admin/control`); the status and
/// the answer.
pub async fn command(gw: &Gateway, body: Value) -> (u16, Value) {
    command_as(gw, &gw.admin_token, body).await
}

/// [`command`] with another admin token.
pub async fn command_as(gw: &Gateway, token: &str, body: Value) -> (u16, Value) {
    post_json(&client(), &gw.admin_url("/admin/control"), token, &body).await
}

/// The audit trail's `command_id`s, newest first (`GET /admin/control?limit=N`).
pub async fn command_ids(gw: &Gateway, limit: usize) -> Vec<String> {
    let all = gw.admin_get(&format!("/admin/control?limit={limit}")).await;
    all["commands"]
        .as_array()
        .unwrap_or_else(|| panic!("{all}"))
        .iter()
        .map(|c| c["command_id"].as_str().unwrap().to_string())
        .collect()
}

/// Runs a command line to completion; panics with its stderr unless it succeeded.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Posts one JSON reading; returns the status and body.
pub async fn post_json(
    c: &reqwest::Client,
    gw_url: &str,
    token: &str,
    body: &Value,
) -> (u16, Value) {
    match c.post(gw_url).bearer_auth(token).json(body).send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Value of a metric line (exact name with labels) in Prometheus text.
pub fn metric(text: &str, name_with_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_with_labels) && l[name_with_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The idempotency keys found in a JSON Lines file sink output.
pub fn file_sink_keys(path: &Path) -> HashSet<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return HashSet::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["idempotency_key"].as_str().map(str::to_string))
        .collect()
}

/// Posts readings `0..n` of each device as `{"seq", "v", "pad"}` (`pad` bytes of padding),
/// `per_request` to a request; returns their idempotency keys.
pub async fn ingest_seqs(
    gw: &Gateway,
    devices: &[&str],
    n: u64,
    per_request: u64,
    pad: usize,
) -> HashSet<String> {
    let c = client();
    let mut keys = HashSet::new();
    for d in devices {
        for start in (0..n).step_by(per_request as usize) {
            let end = (start + per_request).min(n);
            let body: Vec<_> = (start..end)
                .map(|i| serde_json::json!({"seq": i, "v": i, "pad": "x".repeat(pad)}))
                .collect();
            let url = gw.url(&format!("/ingest/{d}"));
            let (s, b) = post_json(&c, &url, &gw.token, &serde_json::json!(body)).await;
            assert_eq!(s, 202, "{b}");
            keys.extend((start..end).map(|i| format!("{d}/seq/{i}")));
        }
    }
    keys
}
