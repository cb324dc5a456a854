//! MQTT sink: publishes each record at QoS 1 to an upstream broker; a batch is delivered
//! when every one of its publishes has its PUBACK.
//!
//! Topic: the sink's `topic` template (default `{prefix}/{device_id}/telemetry`). Payload:
//! the record JSON every sink receives, `idempotency_key` included, so a subscriber
//! de-duplicates redeliveries. Publishes go out in batch order on one connection, at most
//! `max_in_flight` awaiting PUBACK (rumqttc holds the rest), so a returning broker sees a
//! bounded stream in WAL order, not a flood.
//!
//! A broker that cannot be reached before anything was sent makes the batch `Unreachable`
//! (no delivery attempt used up: an outage of any length only delays). A connection lost
//! after publishes left, or a PUBACK missing past `timeout_ms`, fails the batch as transient.
//! Either way the connection is dropped: the next batch starts on a fresh one (clean
//! session), so no acknowledgement from an earlier connection can be taken for a later
//! publish.

use super::{record_json, PublishResult};
use crate::mqtt_options::{options, ClientSettings};
use crate::wal::Leased;
use edge_gateway_config::{render_topic, SinkConfig, DEFAULT_SINK_TOPIC};
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::mpsc;

pub struct MqttSink {
    cfg: SinkConfig,
    gateway_id: String,
    topic: String,
    prefix: String,
    timeout: Duration,
    batch_capacity: usize,
    conn: Option<Conn>,
}

struct Conn {
    client: AsyncClient,
    notes: mpsc::UnboundedReceiver<Note>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the connection's event-loop task reports, in the order it happened.
#[derive(Debug)]
enum Note {
    Sent(u16),
    Acked(u16),
    Lost(String),
}

impl MqttSink {
    pub fn new(cfg: &SinkConfig, gateway_id: &str, batch_size: usize) -> Result<MqttSink, String> {
        let s = MqttSink {
            cfg: cfg.clone(),
            gateway_id: gateway_id.to_string(),
            topic: cfg
                .topic
                .clone()
                .unwrap_or_else(|| DEFAULT_SINK_TOPIC.to_string()),
            prefix: cfg
                .topic_prefix
                .clone()
                .unwrap_or_else(|| gateway_id.to_string()),
            timeout: Duration::from_millis(cfg.timeout_ms),
            batch_capacity: batch_size + 16,
            conn: None,
        };
        s.settings_check()?;
        Ok(s)
    }

    /// Fails at start-up on unreadable TLS files or a bad address, not at the first batch.
    fn settings_check(&self) -> Result<(), String> {
        self.options().map(|_| ()).map_err(|e| e.to_string())
    }

    fn options(&self) -> Result<rumqttc::MqttOptions, crate::mqtt_options::MqttSetupError> {
        let c = &self.cfg;
        let mut o = options(&ClientSettings {
            broker: c.url.as_deref().unwrap_or(""),
            client_id: c
                .client_id
                .clone()
                .unwrap_or_else(|| format!("{}-{}", self.gateway_id, c.name)),
            keep_alive: Duration::from_secs(30),
            clean_session: true,
            ca_file: c.ca_file.as_deref(),
            client_cert_file: c.client_cert_file.as_deref(),
            client_key_file: c.client_key_file.as_deref(),
            username: c.username.as_deref(),
            password_file: c.password_file.as_deref(),
            inflight: c.max_in_flight.unwrap_or(100),
        })?;
        o.set_request_channel_capacity(self.batch_capacity);
        Ok(o)
    }

    fn connect(&self) -> Result<Conn, String> {
        let opts = self.options().map_err(|e| e.to_string())?;
        let (client, mut events) = AsyncClient::new(opts, self.batch_capacity);
        let (tx, notes) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let note = match events.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Note::Sent(pkid),
                    Ok(Event::Incoming(Packet::PubAck(a))) => Note::Acked(a.pkid),
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Note::Lost(e.to_string()));
                        return;
                    }
                };
                if tx.send(note).is_err() {
                    return;
                }
            }
        });
        Ok(Conn {
            client,
            notes,
            task,
        })
    }

    pub async fn publish(&mut self, batch: &[Leased]) -> PublishResult {
        let mut sent = 0usize;
        match self.try_publish(batch, &mut sent).await {
            Ok(()) => PublishResult::Delivered,
            Err(why) => {
                self.conn = None;
                if sent == 0 {
                    PublishResult::Unreachable(why)
                } else {
                    PublishResult::Transient(why)
                }
            }
        }
    }

    /// `sent` counts publishes written to the connection.
    async fn try_publish(&mut self, batch: &[Leased], sent: &mut usize) -> Result<(), String> {
        // A connection that died while idle is replaced before anything is sent on it.
        if let Some(c) = &mut self.conn {
            while let Ok(n) = c.notes.try_recv() {
                if matches!(n, Note::Lost(_)) {
                    self.conn = None;
                    break;
                }
            }
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let conn = self.conn.as_mut().expect("set above");
        let deadline = tokio::time::Instant::now() + self.timeout;
        for l in batch {
            let topic = render_topic(
                &self.topic,
                &self.prefix,
                &l.record.device_id,
                &self.gateway_id,
            );
            let payload = serde_json::to_vec(&record_json(l)).map_err(|e| e.to_string())?;
            let queued = tokio::time::timeout_at(
                deadline,
                conn.client.publish(topic, QoS::AtLeastOnce, false, payload),
            )
            .await;
            match queued {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("upstream client: {e}")),
                Err(_) => return Err("timed out queueing publishes".into()),
            }
        }
        let mut waiting = HashSet::new();
        while *sent < batch.len() || !waiting.is_empty() {
            let note = tokio::time::timeout_at(deadline, conn.notes.recv()).await;
            match note {
                Err(_) => {
                    return Err(format!(
                        "upstream broker: {} of {} PUBACKs missing after {} ms",
                        waiting.len() + batch.len() - *sent,
                        batch.len(),
                        self.timeout.as_millis()
                    ))
                }
                Ok(None) => return Err("upstream connection task ended".into()),
                Ok(Some(Note::Lost(e))) => return Err(format!("upstream broker: {e}")),
                Ok(Some(Note::Sent(pkid))) => {
                    *sent += 1;
                    waiting.insert(pkid);
                }
                Ok(Some(Note::Acked(pkid))) => {
                    waiting.remove(&pkid);
                }
            }
        }
        Ok(())
    }
}
