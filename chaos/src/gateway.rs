//! The gateway process under test: started on fixed ports (devices keep their addresses
//! across restarts), killed with SIGKILL, sampled for metrics and RSS.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Gateway {
    bin: PathBuf,
    config: PathBuf,
    pub data_dir: PathBuf,
    pub http_port: u16,
    pub admin_port: u16,
    child: Option<Child>,
    log: PathBuf,
    pub token: String,
    pub admin_token: String,
}

/// What one metrics scrape said.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    pub backlog: f64,
    /// Enqueued and in flight, per sink.
    pub backlog_by_sink: BTreeMap<String, f64>,
    /// Gaps in devices' `seq` the gateway noticed (`edge_gateway_devices_seq_gaps`).
    pub seq_gaps: f64,
    pub mailbox_max: BTreeMap<String, f64>,
    pub restarts: BTreeMap<String, f64>,
}

impl Gateway {
    /// Writes the config and starts the binary; waits for its ready line.
    pub fn start(bin: &Path, dir: &Path, extra: &str) -> std::io::Result<Gateway> {
        std::fs::create_dir_all(dir)?;
        let data_dir = dir.join("data");
        let config = dir.join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "gateway_id = \"chaos-gw\"\ndata_dir = {:?}\n{extra}",
                data_dir.display().to_string()
            ),
        )?;
        let mut g = Gateway {
            bin: bin.to_path_buf(),
            config,
            data_dir,
            http_port: crate::free_port(),
            admin_port: crate::free_port(),
            child: None,
            log: dir.join("gateway.log"),
            token: String::new(),
            admin_token: String::new(),
        };
        g.run()?;
        let read =
            |f: &str| std::fs::read_to_string(g.data_dir.join(f)).map(|s| s.trim().to_string());
        g.token = read("ingest.token")?;
        g.admin_token = read("admin.token")?;
        Ok(g)
    }

    /// (Re)starts the process on the same ports and data; returns once it is ready.
    pub fn run(&mut self) -> std::io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut child = Command::new(&self.bin)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .args(["--http-listen", &format!("127.0.0.1:{}", self.http_port)])
            .args(["--admin-listen", &format!("127.0.0.1:{}", self.admin_port)])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(log.try_clone()?)
            .spawn()?;
        let out = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut log = log;
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.contains("\"edge-gateway ready\"") {
                    let _ = tx.send(());
                }
                use std::io::Write;
                let _ = writeln!(log, "{line}");
            }
        });
        self.child = Some(child);
        rx.recv_timeout(Duration::from_secs(60)).map_err(|_| {
            std::io::Error::other(format!("gateway not ready; see {}", self.log.display()))
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL: no chance to flush, close or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    pub fn rss_mib(&self) -> f64 {
        let Some(pid) = self.pid() else { return 0.0 };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .map_or(0.0, |kib| kib / 1024.0)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    pub fn ingest_url(&self, device: &str) -> String {
        format!("http://127.0.0.1:{}/ingest/{device}", self.http_port)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Scrapes `/metrics`.
    pub async fn sample(&self, c: &reqwest::Client) -> Option<Sample> {
        let text = c
            .get(self.admin("/metrics"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let mut s = Sample::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            let label = |k: &str| {
                name.split_once(&format!("{k}=\""))
                    .and_then(|(_, r)| r.split_once('"'))
                    .map(|(v, _)| v.to_string())
            };
            if name.starts_with("edge_gateway_wal_records{")
                && (name.contains("state=\"enqueued\"") || name.contains("state=\"in_flight\""))
            {
                s.backlog += v;
                if let Some(k) = label("sink") {
                    *s.backlog_by_sink.entry(k).or_default() += v;
                }
            } else if name == "edge_gateway_devices_seq_gaps" {
                s.seq_gaps = v;
            } else if name.starts_with("edge_gateway_actor_mailbox_depth_max{") {
                if let Some(a) = label("actor") {
                    s.mailbox_max.insert(a, v);
                }
            } else if name.starts_with("edge_gateway_actor_restarts_total{") {
                if let Some(a) = label("actor") {
                    s.restarts.insert(a, v);
                }
            }
        }
        Some(s)
    }
}

impl Gateway {
    /// `edge-gateway report outages --json --svg <svg>`: the gateway's own outage reports
    /// (read from its data directory; the gateway may be stopped), and its chart drawn.
    pub fn outage_reports(&self, svg: &Path) -> std::io::Result<Vec<serde_json::Value>> {
        let out = std::process::Command::new(&self.bin)
            .args(["report", "outages", "--json", "--svg"])
            .arg(svg)
            .arg("--config")
            .arg(&self.config)
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(std::io::Error::other)
    }
}

impl Gateway {
    /// `edge-gateway wal verify` on the stopped gateway's WAL: `(passed, its report)`.
    pub fn verify_wal(&self) -> std::io::Result<(bool, String)> {
        let out = std::process::Command::new(&self.bin)
            .args(["wal", "verify", "--config"])
            .arg(&self.config)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        Ok((out.status.success(), text.trim().to_string()))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}
