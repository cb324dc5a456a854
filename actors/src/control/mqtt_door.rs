//! The MQTT door (`control.requests = "edge"` or `"upstream"`): requests on `request_topic`,
//! answers on `response_topic` (QoS 1) on the same broker, and what came in on the control
//! links sorted out.
//!
//! Trust: whoever may publish to the request topic may command the gateway — the broker's
//! ACL and TLS identities are the boundary (docs/security.md). With `hmac_secret_file` a
//! request must also be signed ([`super::signed`]); an unsigned or badly signed one is
//! refused, counted and never recorded, so it cannot take a `command_id` either.

use super::link::Out;
use super::links::Role;
use super::signed;
use super::store::CommandRecord;
use super::{ControlError, ControlState, Door};
use edge_gateway_config::RequestDoor;
use rumqttc::Publish;
use serde_json::{json, Value};

/// Largest request read; anything larger is refused unread.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Counts an inbound message on an ack topic that changed nothing.
pub(super) fn ignored_ack(metrics: &crate::metrics::Metrics, why: &str) {
    metrics.control.acks_ignored.with_label_values(&[why]).inc();
}

impl ControlState {
    /// Sorts out one message from the control link. The caller acknowledges it afterwards.
    pub(super) async fn on_inbound(&mut self, role: Role, p: &Publish) -> Result<(), ControlError> {
        let c = &self.args.control;
        let gw = &self.args.gateway_id;
        let topic = p.topic.as_str();
        let door = match c.requests {
            RequestDoor::Edge => Some(Role::Edge),
            RequestDoor::Upstream => Some(Role::Upstream),
            RequestDoor::Off => None,
        };
        if door == Some(role) && topic == c.request_topic.replace("{gateway_id}", gw) {
            return self.on_request(&p.payload).await;
        }
        // Device acknowledgements come from the edge broker only.
        if let Some(device) = c.ack_device(gw, topic).filter(|_| role == Role::Edge) {
            let device = device.to_string();
            return self.on_device_ack(&device, &p.payload).await;
        }
        ignored_ack(&self.args.metrics, "other_topic");
        Ok(())
    }

    fn refuse(&mut self, reason: &'static str, message: String, command_id: Option<Value>) {
        self.args
            .metrics
            .control
            .refused
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(reason, %message, "control request over MQTT refused");
        let mut v = json!({"error": reason, "message": message});
        if let Some(id) = command_id {
            v["command_id"] = id;
        }
        self.publish_response(&v);
    }

    async fn on_request(&mut self, payload: &[u8]) -> Result<(), ControlError> {
        if payload.len() > MAX_REQUEST_BYTES {
            let m = format!("{} bytes, over {MAX_REQUEST_BYTES}", payload.len());
            self.refuse("too_large", m, None);
            return Ok(());
        }
        let Ok(mut request) = serde_json::from_slice::<Value>(payload) else {
            self.refuse("not_json", "the request is not JSON".into(), None);
            return Ok(());
        };
        if let Some(secret) = &self.secret {
            let opened = signed::open(&request, secret).map(str::to_string);
            match opened {
                Ok(text) => match serde_json::from_str(&text) {
                    Ok(v) => request = v,
                    Err(_) => {
                        self.refuse("not_json", "the signed request is not JSON".into(), None);
                        return Ok(());
                    }
                },
                Err(e) => {
                    let id = request.get("command_id").cloned();
                    self.refuse(e.label(), e.to_string(), id);
                    return Ok(());
                }
            }
        }
        match self.command(Door::Mqtt, request.clone()).await {
            Ok(a) => self.respond(&a.record, a.duplicate),
            Err(ControlError::Invalid(e)) => {
                let v = json!({"command_id": request.get("command_id"), "error": "invalid",
                               "field": e.field, "message": e.message});
                self.publish_response(&v);
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Publishes a command's record on the response topic, if it came through this door.
    pub(super) fn respond(&mut self, r: &CommandRecord, duplicate: bool) {
        if r.door != Door::Mqtt.name() {
            return;
        }
        let mut v = serde_json::to_value(r).unwrap_or_default();
        v["duplicate"] = duplicate.into();
        self.publish_response(&v);
    }

    fn publish_response(&mut self, v: &Value) {
        let topic = self
            .args
            .control
            .response_topic
            .replace("{gateway_id}", &self.args.gateway_id);
        let body = serde_json::to_vec(v).unwrap_or_default();
        let published = self
            .door_link()
            .is_some_and(|l| l.publish(topic, body, Out::Response));
        if !published {
            tracing::warn!("control response not published: the control link is down (the command's record has it)");
        }
    }
}
