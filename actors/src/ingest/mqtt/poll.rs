//! The event-loop task: polls rumqttc, (re)subscribes on every connect, forwards messages
//! to the session actor one un-acked permit each, reconnects with jittered exponential
//! backoff.
//!
//! It never waits for anything but the event loop: rumqttc sends our PUBACKs only while it
//! is polled, so a poller that stopped to wait for a permit would wait for acks that
//! cannot leave (that deadlock was seen with mosquitto 2.0.11, which on a session resume
//! sends every queued message at once, ignoring `max_inflight_messages`).
//!
//! Bounding un-acked messages ourselves: past `max_unacked` messages or `max_unacked_bytes`
//! payload bytes a message is *shed* — dropped
//! from memory without a PUBACK, and so is every message after it until the reconnect (so
//! what is kept is a prefix of what the broker sent, and per-device order survives). The
//! broker still owes them to us; once every message we kept has been acknowledged the poller
//! disconnects and reconnects, and the broker redelivers what was shed. Memory stays bounded
//! whatever the broker does; nothing is lost.
use super::{MqttSessionMsg, SessionStatus};
use crate::addr::Addr;
use crate::metrics::Metrics;
use backon::{BackoffBuilder, ExponentialBuilder};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS, SubscribeReasonCode};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One un-acknowledged message's share of the budgets, returned when its PUBACK is queued.
pub struct Unacked {
    _message: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

pub struct Poller {
    pub events: EventLoop,
    pub client: AsyncClient,
    pub filters: Vec<String>,
    /// This instance only: a poller must never feed a successor (its permits and its
    /// connection's packet ids belong to this session).
    pub myself: ractor::ActorRef<MqttSessionMsg>,
    /// For mailbox-depth accounting.
    pub addr: Addr<MqttSessionMsg>,
    pub permits: Arc<Semaphore>,
    /// Payload bytes of un-acked messages (`mqtt.max_unacked_bytes`).
    pub bytes: Arc<Semaphore>,
    pub status: Arc<Mutex<SessionStatus>>,
    pub metrics: Arc<Metrics>,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    pub max_unacked: usize,
    pub bytes_budget: usize,
    /// TLS to the broker, and whether we present a client certificate (for hints).
    pub tls: bool,
    pub client_cert: bool,
}

/// A likely cause of a connection error, for the operator reading the log.
pub fn hint(error: &str, tls: bool, client_cert: bool) -> Option<&'static str> {
    let e = error.to_lowercase();
    if e.contains("certificate verify failed") || e.contains("unknown ca") {
        Some("the broker's certificate is not signed by mqtt.tls.ca_file, or its name does not match the host in mqtt.broker")
    } else if tls
        && !client_cert
        && (e.contains("reset by peer") || e.contains("handshake") || e.contains("certificate"))
    {
        Some("the broker may require a client certificate: set mqtt.tls.client_cert_file and mqtt.tls.client_key_file")
    } else if e.contains("payloadsizelimitexceeded") {
        Some("the broker sent a packet larger than mqtt.max_payload_bytes + 64 KiB: set the edge broker's max_packet_size below it (config/mosquitto/edge.conf)")
    } else if e.contains("connection refused (os error") {
        Some("nothing accepts connections at mqtt.broker")
    } else if e.contains("notauthorized") || e.contains("badusernamepassword") {
        Some("the broker refused the credentials or this client id")
    } else if !tls && (e.contains("reset by peer") || e.contains("unexpected eof")) {
        Some("is the broker's listener TLS? then use mqtts:// in mqtt.broker")
    } else {
        None
    }
}

impl Poller {
    fn backoff(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::new()
            .with_min_delay(self.reconnect_initial)
            .with_max_delay(self.reconnect_max)
            .with_jitter()
            .without_max_times()
            .build()
    }

    fn set(&self, state: &'static str, error: Option<String>) {
        let mut s = self.status.lock().expect("status lock");
        s.state = state;
        if error.is_some() {
            s.last_error = error;
        }
        s.since_ms = super::pipeline::now_ms();
        self.metrics
            .mqtt_session_up
            .set(i64::from(state == "connected"));
    }

    /// Both budgets for one message, or neither. A payload larger than the whole byte budget
    /// (validation keeps `max_unacked_bytes >= max_payload_bytes`, so only an oversized
    /// one, soon dead-lettered) waits for the budget to be whole rather than never fitting.
    fn take(&self, payload: usize) -> Option<Unacked> {
        let message = self.permits.clone().try_acquire_owned().ok()?;
        let want = payload.min(self.bytes_budget);
        let bytes = match u32::try_from(want) {
            Ok(0) => None,
            Ok(n) => Some(self.bytes.clone().try_acquire_many_owned(n).ok()?),
            Err(_) => return None,
        };
        Some(Unacked {
            _message: message,
            _bytes: bytes,
        })
    }

    pub async fn run(mut self) {
        let mut delays = self.backoff();
        // Messages dropped since the last (re)connect for want of a permit.
        let mut shed = 0u64;
        // We asked for the disconnect: the error that follows is expected.
        let mut leaving = false;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            let event = tokio::select! {
                ev = self.events.poll() => ev,
                _ = tick.tick(), if shed > 0 => {
                    if self.permits.available_permits() == self.max_unacked {
                        tracing::warn!(shed, "every kept message acknowledged; reconnecting to get the shed ones redelivered");
                        shed = 0;
                        leaving = self.client.try_disconnect().is_ok();
                    }
                    continue;
                }
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    delays = self.backoff();
                    shed = 0;
                    tracing::info!(
                        session_present = ack.session_present,
                        "mqtt session connected; subscribing"
                    );
                    for f in &self.filters {
                        if self
                            .client
                            .try_subscribe(f.clone(), QoS::AtLeastOnce)
                            .is_err()
                        {
                            tracing::error!(filter = %f, "mqtt subscribe request not queued");
                        }
                    }
                    self.set("subscribing", None);
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        let why = format!(
                            "broker refused a subscription ({:?}); check its ACL",
                            ack.return_codes
                        );
                        tracing::error!(filters = ?self.filters, "{why}");
                        self.set("subscription_refused", Some(why));
                    } else {
                        tracing::info!(filters = ?self.filters, "mqtt session subscribed");
                        self.set("connected", None);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    // Once shedding, shed everything until the reconnect: what is kept
                    // stays a prefix of what the broker sent, so redelivery keeps the order.
                    let permit = match shed {
                        0 => self.take(p.payload.len()),
                        _ => None,
                    };
                    let Some(permit) = permit else {
                        if shed == 0 {
                            tracing::warn!(
                                max_unacked = self.max_unacked,
                                max_unacked_bytes = self.bytes_budget,
                                "broker sent more un-acknowledged messages than mqtt.max_unacked / mqtt.max_unacked_bytes; shedding until the kept ones are acknowledged"
                            );
                        }
                        shed += 1;
                        self.metrics.mqtt_shed.inc();
                        continue;
                    };
                    self.metrics.mqtt_unacked.inc();
                    let received_ms = super::pipeline::now_ms();
                    self.addr.note_sent();
                    if self
                        .myself
                        .cast(MqttSessionMsg::Message(Box::new((p, permit, received_ms))))
                        .is_err()
                    {
                        self.addr.received();
                        self.metrics.mqtt_unacked.dec();
                        return; // the session is stopping; the broker keeps the message
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                    self.set("connecting", None);
                }
                Ok(_) => {}
                Err(e) if leaving => {
                    leaving = false;
                    tracing::info!(reason = %e, "mqtt session reconnecting for redelivery");
                    self.set("connecting", None);
                }
                Err(e) => {
                    self.metrics
                        .mqtt_connection_errors
                        .with_label_values(&["ingest"])
                        .inc();
                    let delay = delays.next().unwrap_or(self.reconnect_max);
                    let mut why = e.to_string();
                    let hint = hint(&why, self.tls, self.client_cert);
                    tracing::error!(
                        error = %why,
                        hint = hint.unwrap_or(""),
                        retry_in_ms = delay.as_millis() as u64,
                        "mqtt connection to the edge broker failed"
                    );
                    if let Some(h) = hint {
                        why = format!("{why} ({h})");
                    }
                    self.set("disconnected", Some(why));
                    tokio::time::sleep(delay).await;
                    self.set("connecting", None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::hint;

    #[test]
    fn hints_name_the_setting_to_check() {
        let reset = "Mqtt state: Mqtt serialization/deserialization error: IO: Connection reset by peer (os error 104)";
        assert!(hint(reset, true, false)
            .unwrap()
            .contains("client_cert_file"));
        assert!(hint(reset, false, false).unwrap().contains("mqtts://"));
        let ca = "TLS: Native TLS error: error:0A000086:SSL routines:tls_post_process_server_certificate:certificate verify failed";
        assert!(hint(ca, true, true).unwrap().contains("ca_file"));
        assert!(hint("I/O: Connection refused (os error 111)", false, false)
            .unwrap()
            .contains("mqtt.broker"));
        assert_eq!(hint("keep alive timeout", true, true), None);
    }
}
