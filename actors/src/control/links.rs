//! The control plane's MQTT connections and their reconnection: the **edge** link (device
//! commands out, their acknowledgements in, and the request door with
//! `control.requests = "edge"`) and the **upstream** link (the request door on an mqtt sink's
//! broker, where an operator's backend usually is, with `control.requests = "upstream"`).
//! Each reconnects on its own with a doubling backoff (0.5 s to 30 s) from the `Tick`.

use super::device::MAX_PUBLISHING;
use super::link::Link;
use super::{ControlError, ControlState};
use crate::mqtt_options::{ClientSettings, MqttSetupError};
use edge_gateway_config::RequestDoor;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Edge,
    Upstream,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Edge => "edge",
            Role::Upstream => "upstream",
        }
    }
}

/// One connection and when to try it again.
pub struct Slot {
    pub role: Role,
    pub link: Option<Link>,
    reconnect_at: Option<Instant>,
    backoff: Duration,
}

impl Slot {
    pub fn new(role: Role) -> Slot {
        Slot {
            role,
            link: None,
            reconnect_at: None,
            backoff: Duration::from_millis(500),
        }
    }
}

impl ControlState {
    /// The link the request door answers on.
    pub(super) fn door_link(&mut self) -> Option<&mut Link> {
        let role = match self.args.control.requests {
            RequestDoor::Upstream => Role::Upstream,
            _ => Role::Edge,
        };
        self.slots
            .iter_mut()
            .find(|s| s.role == role)
            .and_then(|s| s.link.as_mut())
    }

    /// Which slot a note of `generation` belongs to.
    pub(super) fn slot_of(&self, generation: u64) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.link.as_ref().is_some_and(|l| l.generation == generation))
    }

    /// Slot `i` went down: for the edge link, what had no PUBACK is queued again.
    pub(super) fn link_lost(&mut self, i: usize, why: &str) {
        let slot = &mut self.slots[i];
        let role = slot.role;
        if let Some(l) = slot.link.take() {
            if l.connected {
                tracing::warn!(link = role.name(), error = %why, "control link lost; reconnecting");
            } else {
                tracing::warn!(link = role.name(), error = %why, retry_in_ms = slot.backoff.as_millis() as u64, "control link failed");
            }
        }
        slot.reconnect_at = Some(Instant::now() + slot.backoff);
        slot.backoff = (slot.backoff * 2).min(Duration::from_secs(30));
        let m = &self.args.metrics.control;
        m.link_up.with_label_values(&[role.name()]).set(0);
        m.link_errors.with_label_values(&[role.name()]).inc();
        if role == Role::Edge {
            self.outbox.lost();
        }
    }

    /// Drops every link (their files changed): they reconnect at once.
    pub(super) fn relink(&mut self) {
        for slot in &mut self.slots {
            if slot.link.take().is_some() {
                tracing::info!(
                    link = slot.role.name(),
                    "control link reconnecting with its reloaded files"
                );
                self.args
                    .metrics
                    .control
                    .link_up
                    .with_label_values(&[slot.role.name()])
                    .set(0);
            }
            slot.reconnect_at = None;
        }
        self.outbox.lost();
    }

    pub(super) fn link_connected(&mut self, i: usize) {
        let c = &self.args.control;
        let gw = &self.args.gateway_id;
        let request = c.request_topic.replace("{gateway_id}", gw);
        let slot = &mut self.slots[i];
        let Some(link) = slot.link.as_mut() else {
            return;
        };
        link.connected = true;
        slot.backoff = Duration::from_millis(500);
        let filters = match (slot.role, c.requests) {
            (Role::Edge, RequestDoor::Edge) => vec![c.ack_filter(gw), request],
            (Role::Edge, _) => vec![c.ack_filter(gw)],
            (Role::Upstream, _) => vec![request],
        };
        for f in filters {
            let _ = link.client.try_subscribe(f, rumqttc::QoS::AtLeastOnce);
        }
        let role = slot.role;
        self.args
            .metrics
            .control
            .link_up
            .with_label_values(&[role.name()])
            .set(1);
        tracing::info!(link = role.name(), "control link connected");
        self.pump();
    }

    /// Connects every slot without a link whose backoff has passed.
    pub(super) fn reconnect_if_due(&mut self) -> Result<(), ControlError> {
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if slot.link.is_some() || slot.reconnect_at.is_some_and(|t| t > Instant::now()) {
                continue;
            }
            self.generation += 1;
            let role = slot.role;
            match self.connect(role) {
                Ok(l) => self.slots[i].link = Some(l),
                Err(e) => {
                    tracing::error!(link = role.name(), error = %e, "control link settings");
                    self.slots[i].reconnect_at = Some(Instant::now() + Duration::from_secs(30));
                }
            }
        }
        Ok(())
    }

    fn connect(&self, role: Role) -> Result<Link, MqttSetupError> {
        let c = &self.args.control;
        let gw = &self.args.gateway_id;
        let connect = |s: &ClientSettings<'_>| {
            Link::connect(
                s,
                self.generation,
                self.myself.clone(),
                self.args.addr.clone(),
            )
        };
        match role {
            Role::Edge => {
                let m = self
                    .args
                    .edge
                    .as_ref()
                    .expect("an edge slot has its broker");
                let tls = m.tls.clone().unwrap_or_default();
                let (cert, key) = match (&c.client_cert_file, &c.client_key_file) {
                    (Some(cert), Some(key)) => (Some(cert.as_path()), Some(key.as_path())),
                    _ => (
                        tls.client_cert_file.as_deref(),
                        tls.client_key_file.as_deref(),
                    ),
                };
                let (user, password) = match &c.username {
                    Some(u) => (Some(u.as_str()), c.password_file.as_deref()),
                    None => (m.username.as_deref(), m.password_file.as_deref()),
                };
                connect(&ClientSettings {
                    broker: &m.broker,
                    client_id: c.client_id.clone().unwrap_or_else(|| {
                        format!("{}-control", crate::ingest::mqtt::client_id(m, gw))
                    }),
                    keep_alive: Duration::from_secs(m.keep_alive_secs),
                    clean_session: false,
                    ca_file: tls.ca_file.as_deref(),
                    client_cert_file: cert,
                    client_key_file: key,
                    username: user,
                    password_file: password,
                    inflight: MAX_PUBLISHING as u16 + 8,
                    max_incoming_packet: crate::mqtt_options::ingest_packet_limit(
                        m.max_payload_bytes,
                    ),
                })
            }
            Role::Upstream => {
                let s = self
                    .args
                    .upstream
                    .as_ref()
                    .expect("an upstream slot has its sink");
                connect(&ClientSettings {
                    broker: &s.url,
                    client_id: format!("{gw}-{}-control", s.name),
                    keep_alive: Duration::from_secs(30),
                    clean_session: false,
                    ca_file: s.ca_file.as_deref(),
                    client_cert_file: s.client_cert_file.as_deref(),
                    client_key_file: s.client_key_file.as_deref(),
                    username: s.username.as_deref(),
                    password_file: s.password_file.as_deref(),
                    inflight: 16,
                    max_incoming_packet: 128 * 1024,
                })
            }
        }
    }
}
