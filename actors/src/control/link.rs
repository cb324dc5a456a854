//! The control link: the control plane's own MQTT connection to the edge broker (device
//! commands out, device acknowledgements and, with `control.requests = "edge"`, operators'
//! requests in). Its own connection, not the ingest session's, so nothing the control plane
//! does — a slow store write, a flood of acks, a crash — can hold back a telemetry PUBACK.
//!
//! Session: persistent (`clean_session = false`), QoS 1 subscriptions renewed on every
//! connect, manual PUBACKs sent once the control actor has recorded what came in: an ack or
//! request that arrives while the gateway is down is delivered when it is back.
//!
//! The event-loop task only polls and reports ([`LinkNote`]s, tagged with the link's
//! generation so that notes of a dropped link are told apart). It never waits on the actor:
//! past `MAX_UNREAD` messages (or `MAX_UNREAD_BYTES`) not yet handled it *sheds* — drops what
//! comes, unacknowledged, until every message it kept has been handled — then reconnects, and
//! the broker redelivers what was shed (as the ingest session does: a flood of device acks
//! costs a reconnection, never memory, and nothing kept is handled twice).

use super::ControlMsg;
use crate::addr::Addr;
use crate::mqtt_options::{network_options, options, ClientSettings, MqttSetupError};
use rumqttc::{AsyncClient, Event, Outgoing, Packet, Publish, QoS, SubscribeReasonCode};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Inbound messages handed to the actor and not yet handled, at most (the shipped edge
/// broker sends up to 1,000 unacknowledged: most floods fit).
const MAX_UNREAD: usize = 1024;
/// Their payload bytes, at most.
const MAX_UNREAD_BYTES: usize = 8 << 20;

/// What the event-loop task saw, in order.
#[derive(Debug)]
pub enum LinkNote {
    Connected,
    Sent(u16),
    Acked(u16),
    Inbound(Box<Publish>, Permit),
    Refused(String),
    Lost(String),
}

/// One unread inbound message's share of `MAX_UNREAD` and `MAX_UNREAD_BYTES`.
#[derive(Debug)]
pub struct Permit(
    #[allow(dead_code)] OwnedSemaphorePermit,
    #[allow(dead_code)] Option<OwnedSemaphorePermit>,
);

/// Both shares for a payload of `len` bytes, or neither.
fn take(unread: &Arc<Semaphore>, bytes: &Arc<Semaphore>, len: usize) -> Option<Permit> {
    let one = unread.clone().try_acquire_owned().ok()?;
    let n = u32::try_from(len.min(MAX_UNREAD_BYTES)).ok()?;
    let b = match n {
        0 => None,
        n => Some(bytes.clone().try_acquire_many_owned(n).ok()?),
    };
    Some(Permit(one, b))
}

/// What a publish on the link was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    Device(String),
    Response,
}

pub struct Link {
    pub generation: u64,
    pub client: AsyncClient,
    pub connected: bool,
    task: tokio::task::JoinHandle<()>,
    /// Publishes asked for, in order, whose packet id is not known yet (rumqttc numbers
    /// them in the order they were asked for).
    asked: VecDeque<Out>,
    /// Publishes on the wire awaiting their PUBACK.
    on_wire: HashMap<u16, Out>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Link {
    pub fn connect(
        settings: &ClientSettings<'_>,
        generation: u64,
        myself: ractor::ActorRef<ControlMsg>,
        addr: Addr<ControlMsg>,
    ) -> Result<Link, MqttSetupError> {
        let mut o = options(settings)?;
        o.set_manual_acks(true).set_request_channel_capacity(256);
        let (client, mut events) = AsyncClient::new(o, 256);
        events.set_network_options(network_options());
        let unread = Arc::new(Semaphore::new(MAX_UNREAD));
        let bytes = Arc::new(Semaphore::new(MAX_UNREAD_BYTES));
        let leaver = client.clone();
        let task = tokio::spawn(async move {
            // Messages dropped since the connection began, for want of a share.
            let mut shed = 0u64;
            // Disconnecting for redelivery: nothing more is kept.
            let mut leaving = false;
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
            loop {
                let polled = tokio::select! {
                    ev = events.poll() => ev,
                    _ = tick.tick(), if shed > 0 => {
                        if unread.available_permits() == MAX_UNREAD {
                            // Everything kept is handled and its PUBACK queued: disconnect
                            // after them (the request channel is in order), then reconnect
                            // for the shed ones.
                            tracing::warn!(shed, "control messages handled; reconnecting for the shed ones");
                            leaving = leaver.try_disconnect().is_ok();
                            shed = 0;
                        }
                        continue;
                    }
                };
                let note = match polled {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => LinkNote::Connected,
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => LinkNote::Sent(pkid),
                    Ok(Event::Incoming(Packet::PubAck(a))) => LinkNote::Acked(a.pkid),
                    Ok(Event::Incoming(Packet::SubAck(a))) => {
                        if !a
                            .return_codes
                            .iter()
                            .any(|c| matches!(c, SubscribeReasonCode::Failure))
                        {
                            continue;
                        }
                        LinkNote::Refused(format!(
                            "the edge broker refused a control subscription ({:?}): check its \
                             ACL for the control link's identity",
                            a.return_codes
                        ))
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        // Once shedding, everything until the reconnection: what is kept
                        // stays a prefix of what the broker sent.
                        let permit = match (shed, leaving) {
                            (0, false) => take(&unread, &bytes, p.payload.len()),
                            _ => None,
                        };
                        match permit {
                            Some(permit) => LinkNote::Inbound(Box::new(p), permit),
                            None if leaving => continue,
                            None => {
                                if shed == 0 {
                                    tracing::warn!("more control messages unread than the link keeps; shedding until those are handled");
                                }
                                shed += 1;
                                continue;
                            }
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                        LinkNote::Lost("disconnected to get shed messages redelivered".into())
                    }
                    Ok(_) => continue,
                    Err(e) => LinkNote::Lost(e.to_string()),
                };
                let last = matches!(note, LinkNote::Lost(_));
                addr.note_sent();
                if myself.cast(ControlMsg::Link(generation, note)).is_err() || last {
                    return;
                }
            }
        });
        Ok(Link {
            generation,
            client,
            connected: false,
            task,
            asked: VecDeque::new(),
            on_wire: HashMap::new(),
        })
    }

    /// Asks for a QoS 1 publish; false if the client cannot take it (the link is closing).
    pub fn publish(&mut self, topic: String, payload: Vec<u8>, what: Out) -> bool {
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
        {
            Ok(()) => {
                self.asked.push_back(what);
                true
            }
            Err(_) => false,
        }
    }

    pub fn sent(&mut self, pkid: u16) {
        if let Some(what) = self.asked.pop_front() {
            self.on_wire.insert(pkid, what);
        }
    }

    /// What the PUBACK of `pkid` acknowledges.
    pub fn acked(&mut self, pkid: u16) -> Option<Out> {
        self.on_wire.remove(&pkid)
    }

    /// Device commands asked for or on the wire.
    pub fn device_publishes(&self) -> usize {
        self.asked
            .iter()
            .chain(self.on_wire.values())
            .filter(|o| matches!(o, Out::Device(_)))
            .count()
    }
}
