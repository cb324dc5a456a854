//! Real mosquitto brokers on loopback ports, simulated devices and an upstream subscriber.

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

pub use edge_gateway_chaos::broker::Broker;
pub use edge_gateway_chaos::free_port;

/// Plain TCP, anonymous, persistent, no queue limit (the chaos harness's broker).
pub fn plain(dir: &Path) -> Broker {
    Broker::plain(dir, true, "").expect("mosquitto (apt-get install mosquitto)")
}

/// `plain` plus extra configuration lines.
pub fn plain_with(dir: &Path, extra: &str) -> Broker {
    Broker::plain(dir, true, extra).expect("mosquitto")
}

/// The shipped edge config (`config/mosquitto/edge.conf`), its paths pointed at `pki`
/// (which must hold ca.pem, server.pem, server.key) and `dir`, on a free port.
pub fn shipped_edge(dir: &Path, pki: &Path) -> Broker {
    std::fs::create_dir_all(dir).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mosquitto");
    for f in ["ca.pem", "server.pem", "server.key"] {
        std::fs::copy(pki.join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(root.join("edge.acl"), dir.join("edge.acl")).unwrap();
    let port = free_port();
    let conf = std::fs::read_to_string(root.join("edge.conf"))
        .unwrap()
        .replace(
            "/etc/edge-gateway/mosquitto/",
            &format!("{}/", dir.display()),
        )
        .replace(
            "/var/lib/edge-gateway-mosquitto/",
            &format!("{}/", dir.display()),
        )
        .replace("listener 8883", &format!("listener {port} 127.0.0.1"));
    assert!(conf.contains(&format!("listener {port}")));
    Broker::with_conf(dir, port, conf).expect("mosquitto with the shipped config")
}

/// TLS for a test client: trust `ca`, present `<cn>.pem`/`<cn>.key` from `pki` if given.
pub fn tls_transport(pki: &Path, ca: &str, identity: Option<&str>) -> Transport {
    let mut b = native_tls::TlsConnector::builder();
    b.add_root_certificate(
        native_tls::Certificate::from_pem(&std::fs::read(pki.join(ca)).unwrap()).unwrap(),
    );
    if let Some(cn) = identity {
        let cert = std::fs::read(pki.join(format!("{cn}.pem"))).unwrap();
        let key = std::fs::read(pki.join(format!("{cn}.key"))).unwrap();
        let key = openssl_pkcs8(&key);
        b.identity(native_tls::Identity::from_pkcs8(&cert, &key).unwrap());
    }
    Transport::Tls(TlsConfiguration::NativeConnector(b.build().unwrap()))
}

fn openssl_pkcs8(key_pem: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(["pkcs8", "-topk8", "-nocrypt"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(key_pem).unwrap();
    child.wait_with_output().unwrap().stdout
}

/// A simulated device: QoS 1 publishes, and which of them the broker acknowledged.
pub struct Device {
    pub id: String,
    client: AsyncClient,
    /// Count of PUBACKs received from the broker.
    acked: watch::Receiver<u64>,
    /// Count of connection errors (refused, dropped by the broker).
    errors: watch::Receiver<u64>,
    sent: u64,
    task: tokio::task::JoinHandle<()>,
}

impl Device {
    pub async fn connect(port: u16, id: &str, transport: Option<Transport>) -> Device {
        Device::connect_as(port, id, &format!("dev-{id}"), transport).await
    }

    /// With an explicit client id (a second connection for the same device).
    pub async fn connect_as(
        port: u16,
        id: &str,
        client_id: &str,
        transport: Option<Transport>,
    ) -> Device {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(10)).set_inflight(100);
        if let Some(t) = transport {
            o.set_transport(t);
        }
        let (client, mut ev) = AsyncClient::new(o, 1000);
        let (tx, acked) = watch::channel(0u64);
        let (etx, errors) = watch::channel(0u64);
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => tx.send_modify(|n| *n += 1),
                    Ok(_) => {}
                    Err(_) => {
                        etx.send_modify(|n| *n += 1);
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                }
            }
        });
        Device {
            id: id.to_string(),
            client,
            acked,
            errors,
            sent: 0,
            task,
        }
    }

    pub async fn publish_raw(&mut self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
        self.sent += 1;
    }

    /// Publishes a JSON reading with `seq` to the device's own topic.
    pub async fn publish_seq(&mut self, seq: u64) {
        let body = serde_json::json!({"seq": seq, "temp_c": 20.0 + (seq % 10) as f64 / 10.0});
        let topic = format!("devices/{}/telemetry", self.id);
        self.publish_raw(&topic, serde_json::to_vec(&body).unwrap())
            .await;
    }

    /// Waits until every publish so far has its PUBACK.
    pub async fn wait_acked(&self, timeout: Duration) -> bool {
        let mut rx = self.acked.clone();
        let want = self.sent;
        let ok = tokio::time::timeout(timeout, rx.wait_for(|n| *n >= want))
            .await
            .is_ok();
        ok
    }

    /// Waits for the connection to fail at least once (e.g. dropped by the broker).
    pub async fn wait_error(&self, timeout: Duration) -> bool {
        let mut rx = self.errors.clone();
        let ok = tokio::time::timeout(timeout, rx.wait_for(|n| *n >= 1))
            .await
            .is_ok();
        ok
    }

    pub fn acked(&self) -> u64 {
        *self.acked.borrow()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a subscriber on the upstream broker received.
#[derive(Default)]
pub struct Seen {
    /// Every message's JSON, in arrival order.
    pub messages: Vec<(String, Value)>,
    pub keys: HashSet<String>,
}

/// A persistent-session QoS 1 subscriber on `filter` that reconnects on its own.
pub struct Subscriber {
    pub seen: Arc<Mutex<Seen>>,
    count: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    pub async fn start(port: u16, filter: &str) -> Subscriber {
        let mut o = MqttOptions::new("test-upstream-subscriber", "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(10))
            .set_clean_session(false);
        let (client, mut ev) = AsyncClient::new(o, 100);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (tx, count) = watch::channel(0usize);
        let (s2, filter) = (seen.clone(), filter.to_string());
        let (sub_tx, mut sub_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        let mut g = s2.lock().unwrap();
                        if let Some(k) = v["idempotency_key"].as_str() {
                            g.keys.insert(k.to_string());
                        }
                        g.messages.push((p.topic.clone(), v));
                        let n = g.keys.len();
                        drop(g);
                        tx.send_replace(n);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), sub_rx.wait_for(|s| *s))
            .await
            .expect("subscriber subscribed")
            .unwrap();
        Subscriber { seen, count, task }
    }

    /// Waits until every key in `want` arrived; the missing ones on timeout.
    pub async fn wait_for_keys(
        &self,
        want: &HashSet<String>,
        timeout: Duration,
    ) -> Result<(), Vec<String>> {
        let mut rx = self.count.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let missing: Vec<String> = {
                let g = self.seen.lock().unwrap();
                want.iter()
                    .filter(|k| !g.keys.contains(*k))
                    .cloned()
                    .collect()
            };
            if missing.is_empty() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(missing);
            }
        }
    }

    /// Device -> seqs in order of first arrival.
    pub fn first_arrival_order(&self) -> HashMap<String, Vec<u64>> {
        let g = self.seen.lock().unwrap();
        let mut seen = HashSet::new();
        let mut out: HashMap<String, Vec<u64>> = HashMap::new();
        for (_, v) in &g.messages {
            let k = v["idempotency_key"].as_str().unwrap_or("").to_string();
            if seen.insert(k) {
                out.entry(v["device_id"].as_str().unwrap_or("").to_string())
                    .or_default()
                    .push(v["seq"].as_u64().unwrap_or(0));
            }
        }
        out
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}
