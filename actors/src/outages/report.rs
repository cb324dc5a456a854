//! Outage reports, assembled from the logged events.

use super::{series, Event, Sample};
use serde::Serialize;
use std::collections::BTreeMap;

/// One outage, assembled from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub sink: String,
    /// `outage` (unreachable or refusing the gateway) or `paused` (an operator's `sink.pause`).
    pub kind: String,
    pub reason: String,
    /// The trace of the first failed attempt, when it was traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    pub drained_at_ms: Option<u64>,
    pub backlog_at_start: u64,
    pub backlog_peak: Option<u64>,
    /// Readings that waited for the sink because of it (the peak above the backlog it began
    /// with).
    pub readings_held: Option<u64>,
    pub duration_secs: Option<f64>,
    /// From its end until the backlog was back to where it began.
    pub drain_secs: Option<f64>,
    /// Readings delivered while it drained.
    pub delivered_while_draining: Option<u64>,
    pub last_reason: Option<String>,
    /// Records sent again after a failed attempt that may have reached the sink, from the
    /// outage's start until it drained: an upper bound on the duplicates it caused downstream
    /// (a SIGKILL meanwhile resets the count).
    pub resent: Option<u64>,
    /// The counters over time (not in the JSON: `report outages --svg` draws them).
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// The reports the events make, oldest first.
pub fn assemble(events: &[Event]) -> Vec<Report> {
    let mut out: Vec<Report> = Vec::new();
    let mut open: BTreeMap<String, usize> = BTreeMap::new();
    for e in events {
        match e {
            Event::Start {
                sink,
                at_ms,
                kind,
                reason,
                backlog,
                trace_id,
            } => {
                open.insert(sink.clone(), out.len());
                out.push(Report {
                    sink: sink.clone(),
                    kind: kind.clone(),
                    reason: reason.clone(),
                    trace_id: trace_id.clone(),
                    started_at_ms: *at_ms,
                    backlog_at_start: *backlog,
                    ..Default::default()
                });
            }
            Event::End {
                sink,
                at_ms,
                backlog_peak,
                last_reason,
            } => {
                if let Some(r) = open.get(sink).map(|&i| &mut out[i]) {
                    r.ended_at_ms = Some(*at_ms);
                    r.backlog_peak = Some(*backlog_peak);
                    r.readings_held = Some(backlog_peak.saturating_sub(r.backlog_at_start));
                    r.duration_secs = Some(at_ms.saturating_sub(r.started_at_ms) as f64 / 1000.0);
                    r.last_reason = Some(last_reason.clone());
                }
            }
            Event::Sample {
                sink,
                at_ms,
                pending,
                acked,
                accepted,
                resent,
            } => {
                if let Some(r) = open.get(sink).map(|&i| &mut out[i]) {
                    r.samples.push(Sample {
                        at_ms: *at_ms,
                        pending: *pending,
                        acked: *acked,
                        accepted: *accepted,
                        resent: *resent,
                    });
                    r.resent = Some(series::increase(r.samples.iter().map(|s| s.resent)));
                }
            }
            Event::Drained {
                sink,
                at_ms,
                delivered,
            } => {
                if let Some(i) = open.remove(sink) {
                    let r = &mut out[i];
                    r.drained_at_ms = Some(*at_ms);
                    r.drain_secs = r
                        .ended_at_ms
                        .map(|e| at_ms.saturating_sub(e) as f64 / 1000.0);
                    r.delivered_while_draining = Some(*delivered);
                }
            }
        }
    }
    out
}
