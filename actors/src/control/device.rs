//! Device commands: queued durably in `control.redb`, published on the edge broker over the
//! control link, acknowledged by their devices, expired after their ttl (the driver around
//! the pure [`Outbox`]).
//!
//! A command's record moves `queued -> sent -> acknowledged | expired`; each move is written
//! (fsync'd) before anything depends on it, and the queue is read back at start, so a
//! SIGKILL at any point leaves each command queued (sent again: the device de-duplicates by
//! `command_id`) or settled, never forgotten.

use super::command::DeviceCommand;
use super::link::Out;
use super::outbox::{Entry, Stage};
use super::store::CommandRecord;
use super::{blocking, now_rfc3339, ControlError, ControlState};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Device commands on the wire at once (each device has at most one).
pub(super) const MAX_PUBLISHING: usize = 32;

/// Wall-clock milliseconds: expiry is a promise about real time and survives restarts.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// What is published for a command: its topic and the payload bytes.
pub fn publication(record: &CommandRecord) -> (String, Vec<u8>) {
    let topic = record.result["topic"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut payload = record.request["payload"].clone();
    if !payload.is_object() {
        payload = json!({});
    }
    payload["command_id"] = record.command_id.clone().into();
    payload["expires_at"] = record.result["expires_at"].clone();
    (topic, serde_json::to_vec(&payload).unwrap_or_default())
}

impl ControlState {
    /// Queues a device command (its record `queued`, durable on return) or refuses it when the
    /// outbox is full.
    pub(super) async fn queue_device(
        &mut self,
        mut record: CommandRecord,
        d: DeviceCommand,
    ) -> Result<CommandRecord, ControlError> {
        let c = &self.args.control;
        if self.outbox.len() >= c.max_device_commands {
            record.state = "failed".into();
            record.finished_at = Some(now_rfc3339());
            record.result = json!({"error": "queue_full", "message": format!(
                "{} device commands are queued or awaiting their devices (control.max_device_commands)",
                self.outbox.len())});
            let r = record.clone();
            blocking(&self.store, move |s| s.put(&r)).await?;
            return Ok(record);
        }
        let expires = now_ms() + d.ttl_secs * 1000;
        record.state = "queued".into();
        record.result = json!({
            "device_id": d.device_id,
            "topic": c.device_topic
                .replace("{gateway_id}", &self.args.gateway_id)
                .replace("{device_id}", &d.device_id),
            "ttl_secs": d.ttl_secs,
            "expires_at": rfc3339_ms(expires),
            "expires_at_ms": expires,
            "publishes": 0,
        });
        let r = record.clone();
        let seq = blocking(&self.store, move |s| s.enqueue(&r)).await?;
        self.add_to_outbox(seq, &record);
        self.args
            .metrics
            .control
            .device_commands
            .with_label_values(&["queued"])
            .inc();
        self.pump();
        Ok(record)
    }

    pub(super) fn add_to_outbox(&mut self, seq: u64, r: &CommandRecord) {
        self.bodies.insert(r.command_id.clone(), publication(r));
        self.outbox.add(Entry {
            seq,
            command_id: r.command_id.clone(),
            device_id: r.result["device_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            expires_at_ms: r.result["expires_at_ms"].as_u64().unwrap_or(0),
            stage: if r.state == "sent" {
                Stage::Sent
            } else {
                Stage::Queued
            },
        });
        self.args
            .metrics
            .control
            .outbox
            .set(self.outbox.len() as i64);
    }

    /// Publishes what is due, if the edge link is up.
    pub(super) fn pump(&mut self) {
        let Some(link) = self
            .slots
            .iter_mut()
            .find(|s| s.role == super::links::Role::Edge)
            .and_then(|s| s.link.as_mut())
            .filter(|l| l.connected)
        else {
            return;
        };
        let room = MAX_PUBLISHING.saturating_sub(link.device_publishes());
        for e in self.outbox.due(now_ms(), room) {
            let (topic, payload) = self.bodies[&e.command_id].clone();
            if !link.publish(topic, payload, Out::Device(e.command_id.clone())) {
                // The client is closing: the loss note that follows requeues it.
                break;
            }
            *self.publishes.entry(e.command_id).or_default() += 1;
        }
    }

    /// Loads the queue at start: what was queued or sent before a restart goes on.
    pub(super) async fn load_queue(&mut self) -> Result<(), ControlError> {
        for (seq, r) in blocking(&self.store, |s| s.queue()).await? {
            self.add_to_outbox(seq, &r);
        }
        Ok(())
    }

    /// Writes a queued command's new state; `done` takes it off the queue.
    async fn settle(
        &mut self,
        e: &Entry,
        state: &str,
        change: impl FnOnce(&mut CommandRecord),
    ) -> Result<(), ControlError> {
        let id = e.command_id.clone();
        let Some(mut r) = blocking(&self.store, move |s| s.get(&id)).await? else {
            return Ok(());
        };
        r.state = state.into();
        r.result["publishes"] = json!(
            r.result["publishes"].as_u64().unwrap_or(0)
                + self.publishes.get(&e.command_id).copied().unwrap_or(0)
        );
        change(&mut r);
        let done = state != "sent";
        if done {
            r.finished_at = Some(now_rfc3339());
            self.bodies.remove(&e.command_id);
        }
        self.publishes.remove(&e.command_id);
        let (seq, rec) = (e.seq, r.clone());
        blocking(&self.store, move |s| s.update_queued(seq, &rec, done)).await?;
        let m = &self.args.metrics.control;
        m.device_commands.with_label_values(&[state]).inc();
        m.outbox.set(self.outbox.len() as i64);
        tracing::info!(command_id = %r.command_id, device_id = %e.device_id, state, "device command");
        self.respond(&r, false);
        Ok(())
    }

    /// The broker acknowledged a publish.
    pub(super) async fn on_puback(&mut self, what: Out) -> Result<(), ControlError> {
        if let Out::Device(id) = what {
            if self.outbox.published(&id) {
                let e = self.outbox.get(&id).cloned().expect("published above");
                self.settle(&e, "sent", |r| {
                    r.result["sent_at"] = now_rfc3339().into();
                })
                .await?;
            }
        }
        self.pump();
        Ok(())
    }

    /// A device's acknowledgement on its ack topic.
    pub(super) async fn on_device_ack(
        &mut self,
        device: &str,
        payload: &[u8],
    ) -> Result<(), ControlError> {
        let metrics = self.args.metrics.clone();
        let ignored = |why: &str| {
            super::mqtt_door::ignored_ack(&metrics, why);
            tracing::warn!(device_id = %device, reason = why, "device command acknowledgement ignored");
        };
        let Ok(ack) = serde_json::from_slice::<Value>(payload) else {
            ignored("malformed");
            return Ok(());
        };
        let Some(id) = ack.get("command_id").and_then(Value::as_str) else {
            ignored("malformed");
            return Ok(());
        };
        let Some(e) = self.outbox.acknowledged(id, device) else {
            // Not queued here: unknown, already settled (a repeated ack), or another device's.
            ignored(match self.outbox.get(id) {
                Some(_) => "other_device",
                None => "unknown",
            });
            return Ok(());
        };
        let status = match ack.get("status") {
            Some(Value::String(s)) if s.len() <= 64 => s.clone(),
            _ => "ok".into(),
        };
        let reply = (payload.len() <= 4096).then(|| ack.clone());
        self.settle(&e, "acknowledged", |r| {
            r.result["acknowledged_at"] = now_rfc3339().into();
            r.result["device_status"] = status.into();
            r.result["device_reply"] = reply.unwrap_or(Value::Null);
        })
        .await?;
        self.pump();
        Ok(())
    }

    /// Expires what is past its ttl; reconnects the link when it is due; removes drained
    /// sinks.
    pub(super) async fn tick(&mut self) -> Result<(), ControlError> {
        for sink in self.args.reconfigure.finish_drains().await {
            tracing::info!(sink = %sink, "drained sink removed");
            let n = sink.clone();
            blocking(&self.store, move |s| s.set_draining(&n, None)).await?;
        }
        for e in self.outbox.expire(now_ms()) {
            let why = match e.stage {
                Stage::Sent => "the broker took it; its device did not acknowledge it within its ttl",
                _ => "never published: its ttl ran out first (no connection to the edge broker, or its device's earlier commands were still going)",
            };
            self.settle(&e, "expired", |r| r.result["reason"] = why.into())
                .await?;
        }
        self.reconnect_if_due()?;
        self.pump();
        self.record_outages().await;
        Ok(())
    }

    /// One look at every sink for the outage reports (`crate::outages`); their events are
    /// appended to `data/outages.jsonl`. A WAL that does not answer in time skips this look.
    async fn record_outages(&mut self) {
        let Ok(stats) = self
            .args
            .wal
            .call(crate::wal::WalMsg::Stats, Some(Duration::from_millis(500)))
            .await
        else {
            return;
        };
        let health = self.args.sink_health.snapshot();
        let paused = self.args.holds.all();
        let m = &self.args.metrics;
        let accepted_total = ["http", "mqtt"]
            .iter()
            .map(|src| m.ingest_records.with_label_values(&[src, "accepted"]).get())
            .sum::<u64>();
        let observations: Vec<crate::outages::Observation> = self
            .args
            .live
            .sink_names()
            .into_iter()
            .map(|sink| {
                let s = stats.sinks.iter().find(|k| k.sink == sink);
                let current = health.get(&sink).cloned().flatten();
                crate::outages::Observation {
                    outage_trace: current.as_ref().and_then(|o| o.trace_id.clone()),
                    outage: current.map(|o| {
                        let since = o
                            .since
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64);
                        (o.reason, since)
                    }),
                    paused: paused.contains(&sink),
                    pending: s.map_or(0, |k| k.pending),
                    acked_total: s.map_or(0, |k| k.acked_total),
                    accepted_total,
                    resent_total: m.publish_resent.with_label_values(&[&sink]).get(),
                    sink,
                }
            })
            .collect();
        let now = now_ms();
        let events = self.outages.observe(now, &observations);
        let tracker = &self.outages;
        let samples = self
            .outage_series
            .observe(now, &observations, &events, |sink| tracker.is_open(sink));
        let events = crate::outages::series::merge(events, samples);
        if events.is_empty() {
            return;
        }
        let dd = self.args.live.get().data_dir.clone();
        match super::blocking_io(move || crate::outages::log::append(&dd, &events)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "outage report not written"),
            Err(e) => tracing::error!(error = %e, "outage report not written"),
        }
    }
}
