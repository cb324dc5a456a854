//! MQTT clients for control-plane tests: a device that receives its commands and answers
//! them, an operator's backend that sends requests and reads the answers.

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// A persistent-session QoS 1 client subscribed to `filter`, which reconnects on its own and
/// keeps every message it receives. As a device, it acknowledges each command it receives
/// on `<topic>/ack`.
pub struct Listener {
    pub client: AsyncClient,
    pub messages: Arc<Mutex<Vec<(String, Value)>>>,
    count: watch::Receiver<usize>,
    /// The broker's answer to the subscription (`true`: granted).
    pub granted: watch::Receiver<Option<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    pub async fn start(
        port: u16,
        client_id: &str,
        filter: &str,
        transport: Option<Transport>,
        ack_commands: bool,
    ) -> Listener {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(10))
            .set_clean_session(false)
            .set_max_packet_size(1 << 20, 1 << 20);
        if let Some(t) = transport {
            o.set_transport(t);
        }
        let (client, mut ev) = AsyncClient::new(o, 100);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (tx, count) = watch::channel(0usize);
        let (gtx, granted) = watch::channel(None);
        let (m2, c2, filter) = (messages.clone(), client.clone(), filter.to_string());
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c2.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(a))) => {
                        let ok = !a
                            .return_codes
                            .iter()
                            .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                        let _ = gtx.send(Some(ok));
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        if ack_commands {
                            let ack = serde_json::json!({"command_id": v["command_id"], "status": "done"});
                            let _ = c2.try_publish(
                                format!("{}/ack", p.topic),
                                QoS::AtLeastOnce,
                                false,
                                serde_json::to_vec(&ack).unwrap(),
                            );
                        }
                        let mut g = m2.lock().unwrap();
                        g.push((p.topic.clone(), v));
                        let n = g.len();
                        drop(g);
                        tx.send_replace(n);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let mut g = granted.clone();
        tokio::time::timeout(Duration::from_secs(10), g.wait_for(|s| s.is_some()))
            .await
            .expect("subscription answered")
            .unwrap();
        Listener {
            client,
            messages,
            count,
            granted,
            task,
        }
    }

    /// Waits for a message `ok` accepts; it, or None after `timeout`.
    pub async fn wait_for(&self, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Option<Value> {
        let mut rx = self.count.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = self.messages.lock().unwrap().iter().find(|(_, v)| ok(v)) {
                return Some(v.1.clone());
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// The messages `ok` accepts, received so far.
    pub fn count(&self, ok: impl Fn(&Value) -> bool) -> usize {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, v)| ok(v))
            .count()
    }

    pub async fn publish(&self, topic: &str, body: &Value) {
        self.client
            .publish(
                topic,
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(body).unwrap(),
            )
            .await
            .unwrap();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}
