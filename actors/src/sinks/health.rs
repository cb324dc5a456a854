//! Each sink's delivery health, shared by its publisher (which writes it after every answer)
//! and the admin API (`/readyz` names a sink in an outage and why).
//!
//! An outage begins with the first answer that blames no record and is no delivery (see
//! [`PublishResult::Outage`]) and ends with the next delivery; both ends are logged once and
//! `edge_gateway_sink_outage{sink}` is 1 in between. A publisher restart keeps the state:
//! the map outlives the actor.

use super::PublishResult;
use crate::metrics::Metrics;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A sink's current outage.
#[derive(Debug, Clone, PartialEq)]
pub struct Outage {
    /// The latest answer's reason (the sink may change its mind: 502, then a timeout).
    pub reason: String,
    pub since: SystemTime,
    /// The trace of the first failed attempt, when it was traced (`traces`).
    pub trace_id: Option<String>,
}

/// Every sink's outage, if it is in one. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SinkHealth(Arc<Mutex<BTreeMap<String, Option<Outage>>>>);

impl SinkHealth {
    /// The sinks' states, by name: `None` is delivering (or not yet tried).
    pub fn snapshot(&self) -> BTreeMap<String, Option<Outage>> {
        self.0.lock().expect("sink health lock").clone()
    }

    /// Registers `sink` (delivering until an answer says otherwise).
    pub fn register(&self, sink: &str, metrics: &Metrics) {
        self.0
            .lock()
            .expect("sink health lock")
            .entry(sink.to_string())
            .or_default();
        let _ = metrics.sink_outage.with_label_values(&[sink]);
        // Every per-sink series exists from the start, at 0: a dashboard panel or an alert
        // on it shows "none yet" rather than nothing at all (which hides a renamed metric).
        let _ = metrics.retries.with_label_values(&[sink]);
        let _ = metrics.publish_resent.with_label_values(&[sink]);
        let _ = metrics
            .publish_results
            .with_label_values(&[sink, "delivered"]);
        for class in crate::wal::DeadClass::ALL {
            let _ = metrics
                .dead_lettered
                .with_label_values(&[sink, class.as_str()]);
        }
    }

    /// Notes the answer to one publish of `sink`.
    pub fn observe(&self, sink: &str, result: &PublishResult, metrics: &Metrics) {
        let mut map = self.0.lock().expect("sink health lock");
        let state = map.entry(sink.to_string()).or_default();
        let now = SystemTime::now();
        match (result, state.as_mut()) {
            (PublishResult::Outage { reason, .. }, Some(o)) => o.reason.clone_from(reason),
            (PublishResult::Outage { reason, .. }, None) => {
                tracing::warn!(sink, reason = %reason, "sink outage begins: records wait in the WAL, no attempts used");
                metrics.sink_outage.with_label_values(&[sink]).set(1);
                *state = Some(Outage {
                    reason: reason.clone(),
                    since: now,
                    trace_id: None,
                });
            }
            (PublishResult::Delivered, Some(o)) => {
                let lasted = now.duration_since(o.since).unwrap_or(Duration::ZERO);
                tracing::info!(sink, lasted_secs = lasted.as_secs_f64(), last_reason = %o.reason, "sink outage over: delivering");
                metrics.sink_outage.with_label_values(&[sink]).set(0);
                *state = None;
            }
            _ => {}
        }
    }
}

impl SinkHealth {
    /// Links `sink`'s current outage to a trace, if it has none yet: the first traced attempt
    /// that failed in it.
    pub fn note_trace(&self, sink: &str, trace_id: Option<String>) {
        let mut map = self.0.lock().expect("sink health lock");
        if let Some(Some(o)) = map.get_mut(sink) {
            if o.trace_id.is_none() {
                o.trace_id = trace_id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_runs_from_its_first_answer_to_the_next_delivery() {
        let (h, m) = (SinkHealth::default(), Metrics::new());
        h.register("api", &m);
        assert_eq!(h.snapshot()["api"], None);
        h.observe("api", &PublishResult::outage("HTTP 502"), &m);
        let since = h.snapshot()["api"].as_ref().unwrap().since;
        h.observe("api", &PublishResult::Permanent("HTTP 400".into()), &m);
        h.observe("api", &PublishResult::outage("timeout"), &m);
        let o = h.snapshot()["api"].clone().unwrap();
        assert_eq!((o.reason.as_str(), o.since), ("timeout", since));
        assert_eq!(m.sink_outage.with_label_values(&["api"]).get(), 1);
        h.observe("api", &PublishResult::Delivered, &m);
        assert_eq!(h.snapshot()["api"], None);
        assert_eq!(m.sink_outage.with_label_values(&["api"]).get(), 0);
    }
}
