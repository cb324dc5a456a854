//! mosquitto processes: the edge broker devices publish to, and the upstream (cloud) broker.
//! Both persistent, no queue limit, on a fixed loopback port so stop/start keeps clients'
//! addresses.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    pub name: &'static str,
    pub port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

fn bin() -> &'static str {
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
    pub fn start(name: &'static str, dir: &Path) -> std::io::Result<Broker> {
        std::fs::create_dir_all(dir)?;
        let port = crate::free_port();
        let mut conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
             persistence_location {}/\nautosave_interval 1\nmax_queued_messages 0\n\
             max_inflight_messages 1000\n",
            dir.display()
        );
        if is_root() {
            conf.push_str("user root\n"); // else mosquitto drops to a user that cannot read dir
        }
        let path = dir.join("mosquitto.conf");
        std::fs::write(&path, conf)?;
        let mut b = Broker {
            name,
            port,
            conf: path,
            log: dir.join("mosquitto.log"),
            child: None,
        };
        b.run()?;
        Ok(b)
    }

    pub fn run(&mut self) -> std::io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(bin())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "{} broker not listening",
                    self.name
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Graceful stop: mosquitto saves its sessions and queues.
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
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
