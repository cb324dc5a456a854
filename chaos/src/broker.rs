//! mosquitto processes on loopback: the chaos harness's edge and upstream brokers, and the
//! brokers of the MQTT tests and benchmark (which use this module too). A broker keeps its
//! port, config and persistence directory across stop/start, so clients keep their address.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

pub struct Broker {
    pub port: u16,
    /// Its first listener is TLS.
    pub tls: bool,
    pub dir: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Debian's mosquitto, wherever it is installed.
pub fn mosquitto_bin() -> &'static str {
    ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("mosquitto")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Broker {
    /// Plain TCP on a free port, anonymous, no queue limit, `max_inflight_messages 1000`;
    /// persistent (saved every second) when `persistence`. `extra` is appended to the config.
    pub fn plain(dir: &Path, persistence: bool, extra: &str) -> std::io::Result<Broker> {
        std::fs::create_dir_all(dir)?;
        let port = crate::free_port();
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence {persistence}\n\
             persistence_location {}/\nautosave_interval 1\nmax_queued_messages 0\n\
             max_inflight_messages 1000\n{extra}",
            dir.display()
        );
        Broker::with_conf(dir, port, conf)
    }

    /// A broker with this exact config (it must listen on `port`).
    pub fn with_conf(dir: &Path, port: u16, mut conf: String) -> std::io::Result<Broker> {
        std::fs::create_dir_all(dir)?;
        if is_root() {
            // mosquitto drops root to the `mosquitto` user, which cannot read our files.
            conf.push_str("user root\n");
        }
        let path = dir.join("mosquitto.conf");
        std::fs::write(&path, &conf)?;
        let tls = conf
            .lines()
            .skip_while(|l| !l.starts_with("listener"))
            .skip(1)
            .take_while(|l| !l.starts_with("listener"))
            .any(|l| l.starts_with("certfile"));
        let mut b = Broker {
            port,
            tls,
            dir: dir.to_path_buf(),
            conf: path,
            log: dir.join("mosquitto.log"),
            child: None,
        };
        b.start()?;
        Ok(b)
    }

    /// Starts the process (again) and waits until it accepts connections.
    pub fn start(&mut self) -> std::io::Result<()> {
        let mut cmd = Command::new(mosquitto_bin());
        cmd.arg("-c").arg(&self.conf);
        let child = crate::process::spawn_listening(cmd, self.port, &self.log, "mosquitto")?;
        self.child = Some(child);
        Ok(())
    }

    /// Graceful stop (SIGTERM): mosquitto saves its sessions and queues.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn tls_url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    /// What a client of the first listener uses: `mqtts://` when it is TLS.
    pub fn client_url(&self) -> String {
        if self.tls {
            self.tls_url()
        } else {
            self.url()
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
