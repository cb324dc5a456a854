//! MQTT sink: publishes each record at QoS 1 to an upstream broker; a batch is delivered
//! when every one of its publishes has its PUBACK.
//!
//! Topic: the sink's `topic` template (default `{prefix}/{device_id}/telemetry`). Payload:
//! the record JSON every sink receives, `idempotency_key` included, so a subscriber
//! de-duplicates redeliveries; with `protocol = "v5"` the key is also an `idempotency_key`
//! user property (and a refusing PUBACK reason code is honoured: not authorised, bad topic
//! or bad payload dead-letter the batch, other refusals retry it). Publishes go out in batch
//! order on one connection, at most `max_in_flight` awaiting PUBACK (rumqttc holds the rest),
//! so a returning broker sees a bounded stream in WAL order, not a flood. The sink runs as its
//! own task (`pipeline.rs`): the next batch streams out while the last PUBACKs of the one
//! before are on their way, and answers go back in batch order (`window.rs`).
//!
//! A broker that cannot be reached, a connection lost after publishes left, or a PUBACK
//! missing past `timeout_ms` make the batch an `Outage` (no delivery attempt used up: an
//! outage of any length only delays; issue 10). Either way the connection is dropped: the next batch starts on a fresh one (clean
//! session), so no acknowledgement from an earlier connection can be taken for a later
//! publish.
//!
//! Presence: on every connection a retained `gateways/{gateway_id}/status` `online`, and a
//! retained Last Will `offline`, with `presence = true` (off by default: the broker's ACL must
//! allow the topic). A broker that answers the connection `NotAuthorized` then makes the sink
//! drop presence (logged) so that delivery goes on; one that resets it (mosquitto) cannot be
//! told apart from an outage, hence the opt-in.
//!
//! Size: a PUBLISH over the broker's maximum packet size — `max_packet_bytes`, or what an
//! MQTT 5 broker announced in its CONNACK, whichever is smaller — is never sent: the batch is
//! too big (split by the lane until the reading is alone, then dead-lettered naming its size).
//! A limit learnt from a CONNACK applies from the next batch on (a batch already sent when it
//! arrives fails as an outage and is split on its retry).

mod pipeline;
mod presence;
mod window;

pub use pipeline::{Cmd, MqttPipe};
pub use window::Done;

use super::json::write_record;
use crate::mqtt_options::{options, options_v5, ClientSettings};
use crate::wal::Leased;
use edge_gateway_config::{render_topic, MqttProtocol, MqttSinkConfig, DEFAULT_SINK_TOPIC};
use presence::Presence;
use rumqttc::v5::mqttbytes::v5::{PubAckReason, PublishProperties};
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use std::time::Duration;
use tokio::sync::mpsc;

/// The connection task: turns the event loop's events into [`Note`]s until the connection
/// fails. One body for both protocol versions (their event types differ).
macro_rules! note_loop {
    ($events:ident, $tx:ident, $note_of:ident) => {
        tokio::spawn(async move {
            loop {
                let note = match $events.poll().await {
                    Ok(ev) => match $note_of(ev) {
                        Some(n) => n,
                        None => continue,
                    },
                    Err(e) => {
                        // mosquitto refuses a publish with a PUBACK reason code and then
                        // drops the connection: what was read before the close counts.
                        for ev in $events.state.events.drain(..) {
                            if let Some(n) = $note_of(ev) {
                                let _ = $tx.send(n);
                            }
                        }
                        let _ = $tx.send(Note::Lost(e.to_string()));
                        return;
                    }
                };
                if $tx.send(note).is_err() {
                    return;
                }
            }
        })
    };
}

pub struct MqttSink {
    cfg: MqttSinkConfig,
    gateway_id: String,
    topic: String,
    prefix: String,
    timeout: Duration,
    batch_capacity: usize,
    /// The broker's maximum packet size (`max_packet_bytes`), if it has one.
    max_packet: Option<u64>,
    /// The maximum packet size the broker announced in its last CONNACK (MQTT 5).
    announced_max: Option<u64>,
    /// Gateway presence on this broker, with `presence = true`.
    presence: Option<Presence>,
    conn: Option<Conn>,
}

enum Client {
    V4(AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    async fn publish(&self, topic: String, payload: Vec<u8>, l: &Leased) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => {
                let mut user_properties =
                    vec![("idempotency_key".into(), l.record.idempotency_key.clone())];
                if let Some(t) = l.record.outgoing_trace() {
                    user_properties.push(("traceparent".into(), t.to_string()));
                }
                let props = PublishProperties {
                    user_properties,
                    content_type: Some("application/json".into()),
                    ..Default::default()
                };
                c.publish_with_properties(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload,
                    props,
                )
                .await
                .map_err(|e| e.to_string())
            }
        }
    }
}

struct Conn {
    client: Client,
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
    /// An MQTT 5 PUBACK with a refusing reason code; `permanent` when retrying cannot help.
    Refused {
        pkid: u16,
        reason: String,
        permanent: bool,
    },
    Lost(String),
    /// An MQTT 5 CONNACK's maximum packet size (`None`: the broker has none).
    Limit(Option<u32>),
}

/// How an MQTT 5 PUBACK reason code counts. `NoMatchingSubscribers` is a success: the broker
/// took the message.
fn v5_ack(pkid: u16, reason: PubAckReason) -> Note {
    match reason {
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Note::Acked(pkid),
        r => Note::Refused {
            pkid,
            reason: format!("{r:?}"),
            permanent: matches!(
                r,
                PubAckReason::NotAuthorized
                    | PubAckReason::TopicNameInvalid
                    | PubAckReason::PayloadFormatInvalid
            ),
        },
    }
}

impl MqttSink {
    pub fn new(
        cfg: &MqttSinkConfig,
        gateway_id: &str,
        batch_size: usize,
    ) -> Result<MqttSink, String> {
        let mut s = MqttSink {
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
            // Two batches: the next one is queued while the last PUBACKs of one are out.
            batch_capacity: 2 * batch_size + 16,
            max_packet: cfg.max_packet_bytes,
            announced_max: None,
            presence: cfg.presence.then(|| Presence::new(gateway_id)),
            conn: None,
        };
        s.settings_check()?;
        // Connected from the start, not at the first batch: presence says `online` at once.
        if s.presence.is_some() {
            s.conn = Some(s.connect()?);
        }
        Ok(s)
    }

    /// Whether a sink with `cfg` would start: its address and TLS files (nothing connects).
    pub fn check(cfg: &MqttSinkConfig, gateway_id: &str) -> Result<(), String> {
        let s = MqttSink {
            cfg: cfg.clone(),
            gateway_id: gateway_id.to_string(),
            topic: String::new(),
            prefix: String::new(),
            timeout: Duration::ZERO,
            batch_capacity: 1,
            max_packet: None,
            announced_max: None,
            presence: None,
            conn: None,
        };
        s.settings_check()
    }

    /// Fails at start-up on unreadable TLS files or a bad address, not at the first batch.
    fn settings_check(&self) -> Result<(), String> {
        self.options().map(|_| ()).map_err(|e| e.to_string())
    }

    fn settings(&self) -> ClientSettings<'_> {
        let c = &self.cfg;
        ClientSettings {
            broker: &c.url,
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
            max_incoming_packet: crate::mqtt_options::SINK_INCOMING_PACKET,
        }
    }

    fn v5(&self) -> bool {
        self.cfg.protocol == Some(MqttProtocol::V5)
    }

    fn options(&self) -> Result<(), crate::mqtt_options::MqttSetupError> {
        if self.v5() {
            options_v5(&self.settings()).map(|_| ())
        } else {
            options(&self.settings()).map(|_| ())
        }
    }

    fn connect(&self) -> Result<Conn, String> {
        let (tx, notes) = mpsc::unbounded_channel();
        let (client, task) = if self.v5() {
            let mut o = options_v5(&self.settings()).map_err(|e| e.to_string())?;
            o.set_request_channel_capacity(self.batch_capacity);
            if let Some(p) = &self.presence {
                o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                    &p.topic,
                    p.offline.clone(),
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    true,
                    None,
                ));
            }
            let (client, mut events) = rumqttc::v5::AsyncClient::new(o, self.batch_capacity);
            if let Some(p) = &self.presence {
                let _ = client.try_publish(
                    &p.topic,
                    rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                    true,
                    p.online.clone(),
                );
            }
            use rumqttc::v5::mqttbytes::v5::Packet as P5;
            use rumqttc::v5::Event as E5;
            let note_of = |ev: E5| match ev {
                // Packet id 0: the QoS 0 presence publish, not a record.
                E5::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => Some(Note::Sent(pkid)),
                E5::Incoming(P5::PubAck(a)) => Some(v5_ack(a.pkid, a.reason)),
                E5::Incoming(P5::ConnAck(c)) => {
                    Some(Note::Limit(c.properties.and_then(|p| p.max_packet_size)))
                }
                _ => None,
            };
            let task = note_loop!(events, tx, note_of);
            (Client::V5(client), task)
        } else {
            let mut o = options(&self.settings()).map_err(|e| e.to_string())?;
            o.set_request_channel_capacity(self.batch_capacity);
            if let Some(p) = &self.presence {
                o.set_last_will(rumqttc::LastWill::new(
                    &p.topic,
                    p.offline.clone(),
                    QoS::AtLeastOnce,
                    true,
                ));
            }
            let (client, mut events) = AsyncClient::new(o, self.batch_capacity);
            if let Some(p) = &self.presence {
                let _ = client.try_publish(&p.topic, QoS::AtMostOnce, true, p.online.clone());
            }
            events.set_network_options(crate::mqtt_options::network_options());
            let note_of = |ev: Event| match ev {
                Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => Some(Note::Sent(pkid)),
                Event::Incoming(Packet::PubAck(a)) => Some(Note::Acked(a.pkid)),
                _ => None,
            };
            let task = note_loop!(events, tx, note_of);
            (Client::V4(client), task)
        };
        Ok(Conn {
            client,
            notes,
            task,
        })
    }

    /// Every PUBLISH of `batch` prepared before any is sent.
    fn prepare(&self, batch: &[Leased]) -> Vec<(String, Vec<u8>)> {
        batch
            .iter()
            .map(|l| {
                let topic = render_topic(
                    &self.topic,
                    &self.prefix,
                    &l.record.device_id,
                    &self.gateway_id,
                );
                let mut payload = Vec::with_capacity(256);
                write_record(&mut payload, l);
                (topic, payload)
            })
            .collect()
    }

    /// One PUBLISH over the broker's limit makes the batch too big (the lane splits it until
    /// that reading is alone).
    fn check_sizes(&self, prepared: &[(String, Vec<u8>)], batch: &[Leased]) -> Result<(), String> {
        let Some((max, which)) = self.packet_limit() else {
            return Ok(());
        };
        for ((topic, payload), l) in prepared.iter().zip(batch) {
            let size = publish_size(topic, payload, &l.record.idempotency_key, self.v5());
            if size > max {
                return Err(format!(
                    "record too large for the broker: a {size}-byte PUBLISH, over {which} {max}"
                ));
            }
        }
        Ok(())
    }

    /// The smaller of `max_packet_bytes` and the broker's announced limit, and which it is.
    fn packet_limit(&self) -> Option<(u64, &'static str)> {
        match (self.max_packet, self.announced_max) {
            (Some(c), Some(a)) if a < c => Some((a, "the broker's announced maximum packet size")),
            (Some(c), _) => Some((c, "the sink's max_packet_bytes")),
            (None, Some(a)) => Some((a, "the broker's announced maximum packet size")),
            (None, None) => None,
        }
    }
}

/// Bytes of the QoS 1 PUBLISH for this topic and payload: fixed header (at most 5), topic
/// (2 + its length), packet id (2), payload; MQTT 5 adds its properties (the idempotency key
/// as a user property, the content type).
fn publish_size(topic: &str, payload: &[u8], key: &str, v5: bool) -> u64 {
    let props = if v5 {
        // length (≤ 4) + user property (1 + 2 + 15 + 2 + key) + content type (1 + 2 + 16)
        4 + 1 + 2 + "idempotency_key".len() + 2 + key.len() + 1 + 2 + "application/json".len()
    } else {
        0
    };
    (5 + 2 + topic.len() + 2 + props + payload.len()) as u64
}

#[cfg(test)]
mod flow_tests;
#[cfg(test)]
mod tests;
