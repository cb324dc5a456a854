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
//! past `MAX_UNREAD` messages not yet handled it reports the link lost instead, and the
//! broker redelivers what had no PUBACK on the next connection.

use super::ControlMsg;
use crate::addr::Addr;
use crate::mqtt_options::{network_options, options, ClientSettings, MqttSetupError};
use rumqttc::{AsyncClient, Event, Outgoing, Packet, Publish, QoS, SubscribeReasonCode};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Inbound messages handed to the actor and not yet handled, at most.
const MAX_UNREAD: usize = 256;

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

/// One unread inbound message's share of `MAX_UNREAD`.
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] OwnedSemaphorePermit);

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
        let task = tokio::spawn(async move {
            loop {
                let note = match events.poll().await {
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
                        match unread.clone().try_acquire_owned() {
                            Ok(permit) => LinkNote::Inbound(Box::new(p), Permit(permit)),
                            Err(_) => LinkNote::Lost(format!(
                                "more than {MAX_UNREAD} control messages unread; reconnecting \
                                 for their redelivery"
                            )),
                        }
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
