//! Outage reports (issue 13): each period a sink could not be delivered to — unreachable,
//! refusing the gateway, or paused by an operator — recorded durably with what it did to the
//! backlog, so that "what happened during last night's outage?" has an answer the gateway
//! wrote itself: when it began and ended, why, the backlog when it began and at its peak, how
//! many readings waited, and how long the backlog took to drain once it was over.
//!
//! [`Tracker`] is the pure state machine (observations in, events out), driven every second
//! by the control actor's tick; [`log`] appends the events to `data/outages.jsonl` (fsync'd)
//! and reads them back into [`Report`]s, with the gateway running or stopped.

pub mod chart;
pub mod log;
mod report;
pub mod series;

pub use report::{assemble, Report};

pub use series::{Sample, Series};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One sink as seen now.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub sink: String,
    /// In an outage: its reason (the latest answer's) and when it began (the first answer
    /// that was no delivery).
    pub outage: Option<(String, u64)>,
    /// The trace of the outage's first failed attempt, when it was traced.
    pub outage_trace: Option<String>,
    pub paused: bool,
    pub pending: u64,
    pub acked_total: u64,
    /// Readings the gateway accepted since it started (every source): the ingest rate.
    pub accepted_total: u64,
    /// Records the sink was sent again after a failed attempt (`sinks/resent.rs`).
    pub resent_total: u64,
}

/// What the log records, one line each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Start {
        sink: String,
        at_ms: u64,
        /// `outage` or `paused`.
        kind: String,
        reason: String,
        backlog: u64,
        /// The trace of the first failed attempt (when it was traced): where to look first.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace_id: Option<String>,
    },
    End {
        sink: String,
        at_ms: u64,
        backlog_peak: u64,
        last_reason: String,
    },
    /// The backlog is back to where it was when the outage began.
    Drained {
        sink: String,
        at_ms: u64,
        delivered: u64,
    },
    /// The sink's counters, every few seconds from an outage's start until it drained
    /// (`series.rs`): what the chart is drawn from.
    Sample {
        sink: String,
        at_ms: u64,
        pending: u64,
        acked: u64,
        accepted: u64,
        resent: u64,
    },
}

impl Event {
    pub fn sink(&self) -> &str {
        match self {
            Event::Start { sink, .. }
            | Event::End { sink, .. }
            | Event::Drained { sink, .. }
            | Event::Sample { sink, .. } => sink,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Down {
        kind: &'static str,
        backlog_at_start: u64,
        peak: u64,
        reason: String,
        /// The sink's delivered count at the first look in this phase: an outage ends only
        /// once the sink delivered again (after a restart the gateway knows nothing of the
        /// sink until its first answer, which is no evidence the outage is over).
        acked: Option<u64>,
    },
    Draining {
        backlog_at_start: u64,
        /// The sink's delivered count when the outage ended (unknown after a restart: then
        /// counted from the first look).
        acked_at_end: Option<u64>,
    },
}

/// Per sink: in an outage, draining after one, or (absent) delivering normally.
#[derive(Debug, Default)]
pub struct Tracker {
    phases: BTreeMap<String, Phase>,
    /// Each sink's backlog at the last look while it delivered normally: what an outage is
    /// measured against (by the time the outage is known, readings already wait for it).
    normal: BTreeMap<String, u64>,
}

impl Tracker {
    /// The tracker as the log left it (after a restart): open outages stay open.
    pub fn resume(reports: &[Report]) -> Tracker {
        let mut t = Tracker::default();
        for r in reports {
            let phase = match (r.ended_at_ms, r.drained_at_ms) {
                (None, _) => Phase::Down {
                    kind: if r.kind == "paused" {
                        "paused"
                    } else {
                        "outage"
                    },
                    backlog_at_start: r.backlog_at_start,
                    peak: r.backlog_peak.unwrap_or(r.backlog_at_start),
                    reason: r.reason.clone(),
                    acked: None,
                },
                (Some(_), None) => Phase::Draining {
                    backlog_at_start: r.backlog_at_start,
                    acked_at_end: None,
                },
                _ => {
                    t.phases.remove(&r.sink);
                    continue;
                }
            };
            t.phases.insert(r.sink.clone(), phase);
        }
        t
    }

    /// Whether an outage or its drain is open for `sink`.
    pub fn is_open(&self, sink: &str) -> bool {
        self.phases.contains_key(sink)
    }

    /// One look at every sink; the events it makes.
    pub fn observe(&mut self, now_ms: u64, sinks: &[Observation]) -> Vec<Event> {
        let mut out = Vec::new();
        for o in sinks {
            let down = o
                .outage
                .clone()
                .map(|(r, since)| ("outage", r, since))
                .or_else(|| {
                    o.paused
                        .then(|| ("paused", "paused by an operator".to_string(), now_ms))
                });
            let mut phase = self.phases.get_mut(&o.sink);
            if let Some(Phase::Down {
                kind, acked, peak, ..
            }) = phase.as_deref_mut()
            {
                let first = *acked.get_or_insert(o.acked_total);
                // Not down now, but nothing delivered since: not over yet (an outage's end is
                // a delivery; a pause's is the resume).
                if down.is_none() && *kind == "outage" && o.acked_total <= first {
                    *peak = (*peak).max(o.pending);
                    continue;
                }
            }
            match (phase, down) {
                (Some(Phase::Down { peak, reason, .. }), Some((_, r, _))) => {
                    *peak = (*peak).max(o.pending);
                    *reason = r;
                }
                (
                    Some(Phase::Down {
                        backlog_at_start,
                        peak,
                        reason,
                        ..
                    }),
                    None,
                ) => {
                    out.push(Event::End {
                        sink: o.sink.clone(),
                        at_ms: now_ms,
                        backlog_peak: (*peak).max(o.pending),
                        last_reason: reason.clone(),
                    });
                    let b = *backlog_at_start;
                    self.phases.insert(
                        o.sink.clone(),
                        Phase::Draining {
                            backlog_at_start: b,
                            acked_at_end: Some(o.acked_total),
                        },
                    );
                    self.drained(now_ms, o, &mut out);
                }
                (Some(Phase::Draining { .. }), Some(d)) => {
                    // Down again before the backlog drained: that drain ends here, unfinished.
                    self.phases.remove(&o.sink);
                    self.start(now_ms, o, d, &mut out);
                }
                (Some(Phase::Draining { .. }), None) => self.drained(now_ms, o, &mut out),
                (None, Some(d)) => self.start(now_ms, o, d, &mut out),
                (None, None) => {
                    self.normal.insert(o.sink.clone(), o.pending);
                }
            }
        }
        out
    }

    fn start(
        &mut self,
        now_ms: u64,
        o: &Observation,
        (kind, reason, since_ms): (&'static str, String, u64),
        out: &mut Vec<Event>,
    ) {
        let backlog = self
            .normal
            .get(&o.sink)
            .copied()
            .unwrap_or(o.pending)
            .min(o.pending);
        out.push(Event::Start {
            sink: o.sink.clone(),
            at_ms: since_ms.min(now_ms),
            kind: kind.into(),
            reason: reason.clone(),
            backlog,
            trace_id: o.outage_trace.clone(),
        });
        self.phases.insert(
            o.sink.clone(),
            Phase::Down {
                kind,
                backlog_at_start: backlog,
                peak: o.pending,
                reason,
                acked: Some(o.acked_total),
            },
        );
    }

    fn drained(&mut self, now_ms: u64, o: &Observation, out: &mut Vec<Event>) {
        let Some(Phase::Draining {
            backlog_at_start,
            acked_at_end,
        }) = self.phases.get_mut(&o.sink)
        else {
            return;
        };
        let base = *acked_at_end.get_or_insert(o.acked_total);
        if o.pending <= *backlog_at_start {
            out.push(Event::Drained {
                sink: o.sink.clone(),
                at_ms: now_ms,
                delivered: o.acked_total.saturating_sub(base),
            });
            self.phases.remove(&o.sink);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(outage: Option<&str>, paused: bool, pending: u64, acked: u64) -> Vec<Observation> {
        vec![Observation {
            sink: "api".into(),
            outage: outage.map(|r| (r.to_string(), 900)),
            outage_trace: None,
            paused,
            pending,
            acked_total: acked,
            accepted_total: 0,
            resent_total: 0,
        }]
    }

    #[test]
    fn an_outage_is_recorded_from_its_start_through_its_drain() {
        let mut t = Tracker::default();
        assert!(t.observe(0, &obs(None, false, 2, 100)).is_empty());
        // Known a second late: readings already wait; it is measured from the look before,
        // and dated from the sink's first failed answer.
        let e = t.observe(1_000, &obs(Some("HTTP 502"), false, 40, 100));
        assert!(
            matches!(
                &e[0],
                Event::Start {
                    backlog: 2,
                    at_ms: 900,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(t
            .observe(2_000, &obs(Some("timeout"), false, 500, 100))
            .is_empty());
        let e = t.observe(3_000, &obs(None, false, 400, 200));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(matches!(
            &e[0],
            Event::End {
                backlog_peak: 500,
                ..
            }
        ));
        let e = t.observe(9_000, &obs(None, false, 1, 700));
        assert!(
            matches!(&e[0], Event::Drained { delivered: 500, .. }),
            "{e:?}"
        );
        let mut all = vec![
            Event::Start {
                sink: "api".into(),
                at_ms: 1_000,
                kind: "outage".into(),
                reason: "HTTP 502".into(),
                backlog: 2,
                trace_id: None,
            },
            Event::End {
                sink: "api".into(),
                at_ms: 3_000,
                backlog_peak: 500,
                last_reason: "timeout".into(),
            },
        ];
        all.extend(e);
        let r = &assemble(&all)[0];
        assert_eq!(
            (
                r.duration_secs,
                r.drain_secs,
                r.readings_held,
                r.delivered_while_draining
            ),
            (Some(2.0), Some(6.0), Some(498), Some(500))
        );
    }

    #[test]
    fn pauses_count_and_a_restart_resumes_open_outages() {
        let mut t = Tracker::default();
        let e = t.observe(0, &obs(None, true, 0, 0));
        assert!(matches!(&e[0], Event::Start { kind, .. } if kind == "paused"));
        let reports = assemble(&e);
        let mut t = Tracker::resume(&reports);
        assert!(
            t.observe(1_000, &obs(None, true, 5, 0)).is_empty(),
            "still the same one"
        );
        let e = t.observe(2_000, &obs(None, false, 0, 5));
        assert_eq!(e.len(), 2, "ended and drained at once: {e:?}");
    }
}
