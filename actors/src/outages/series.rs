//! The counters behind an outage's chart: each sink's backlog, deliveries, re-sends and the
//! gateway's accepted readings, sampled from an outage's start until its backlog drained —
//! every [`SAMPLE_EVERY_MS`], every look (a second) while the backlog moves by a tenth or
//! more since the last sample (so a peak is drawn where it was), at each transition, and the
//! last look before it began (so the chart shows where it started from).

use super::{Event, Observation};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const SAMPLE_EVERY_MS: u64 = 5_000;

/// One look at a sink's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub at_ms: u64,
    pub pending: u64,
    pub acked: u64,
    pub accepted: u64,
    pub resent: u64,
}

/// How much a counter rose over a run of samples; a fall is a restart (counters start at 0
/// again), after which the rise continues from 0.
pub fn increase(values: impl Iterator<Item = u64>) -> u64 {
    let mut total = 0;
    let mut last: Option<u64> = None;
    for v in values {
        total += match last {
            Some(l) if v >= l => v - l,
            Some(_) => v,
            None => 0,
        };
        last = Some(v);
    }
    total
}

/// One look's events in the order the log needs them: starts, then the samples (which
/// belong to the outage a start opens), then ends and drains (which close it).
pub fn merge(events: Vec<Event>, samples: Vec<Event>) -> Vec<Event> {
    let (starts, rest): (Vec<_>, Vec<_>) = events
        .into_iter()
        .partition(|e| matches!(e, Event::Start { .. }));
    starts.into_iter().chain(samples).chain(rest).collect()
}

/// Decides which looks become [`Event::Sample`]s.
#[derive(Debug, Default)]
pub struct Series {
    /// When each sink was last sampled, and its backlog then.
    last: BTreeMap<String, (u64, u64)>,
    /// The last look at each sink while nothing was wrong.
    before: BTreeMap<String, Sample>,
}

fn sample(now_ms: u64, o: &Observation) -> Sample {
    Sample {
        at_ms: now_ms,
        pending: o.pending,
        acked: o.acked_total,
        accepted: o.accepted_total,
        resent: o.resent_total,
    }
}

fn event(sink: &str, s: Sample) -> Event {
    Event::Sample {
        sink: sink.to_string(),
        at_ms: s.at_ms,
        pending: s.pending,
        acked: s.acked,
        accepted: s.accepted,
        resent: s.resent,
    }
}

impl Series {
    /// After `Tracker::observe` made `events` from the same look: the samples to record.
    /// `active(sink)`: the tracker holds an outage or a drain open for it.
    pub fn observe(
        &mut self,
        now_ms: u64,
        sinks: &[Observation],
        events: &[Event],
        active: impl Fn(&str) -> bool,
    ) -> Vec<Event> {
        let mut out = Vec::new();
        for o in sinks {
            let mine = || events.iter().filter(|e| e.sink() == o.sink);
            let changed = mine().next().is_some();
            if !active(&o.sink) && !changed {
                self.before.insert(o.sink.clone(), sample(now_ms, o));
                self.last.remove(&o.sink);
                continue;
            }
            if mine().any(|e| matches!(e, Event::Start { .. })) {
                if let Some(b) = self.before.remove(&o.sink) {
                    out.push(event(&o.sink, b));
                }
            }
            let due = self.last.get(&o.sink).is_none_or(|&(at, pending)| {
                let moved = o.pending.abs_diff(pending) > pending / 10;
                now_ms >= at + SAMPLE_EVERY_MS || moved
            });
            if changed || due {
                out.push(event(&o.sink, sample(now_ms, o)));
                self.last.insert(o.sink.clone(), (now_ms, o.pending));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outages::{assemble, Tracker};

    fn look(outage: bool, pending: u64, acked: u64, accepted: u64, resent: u64) -> Observation {
        Observation {
            sink: "api".into(),
            outage: outage.then(|| ("HTTP 503".to_string(), 0)),
            outage_trace: None,
            paused: false,
            pending,
            acked_total: acked,
            accepted_total: accepted,
            resent_total: resent,
        }
    }

    #[test]
    fn an_outage_is_sampled_from_the_look_before_it_until_it_drained() {
        let (mut t, mut s) = (Tracker::default(), Series::default());
        let mut all = Vec::new();
        let mut look_at = |now: u64, o: Observation| {
            let looks = [o];
            let e = t.observe(now, &looks);
            let open = t.is_open("api");
            let samples = s.observe(now, &looks, &e, |_| open);
            let n = samples.len();
            all.extend(merge(e, samples));
            n
        };
        assert_eq!(
            look_at(0, look(false, 2, 100, 1_000, 0)),
            0,
            "nothing wrong"
        );
        assert_eq!(look_at(1_000, look(false, 2, 110, 1_010, 0)), 0);
        // Starts: the look before, and this one.
        assert_eq!(look_at(2_000, look(true, 30, 110, 1_020, 0)), 2);
        assert_eq!(
            look_at(3_000, look(true, 32, 110, 1_030, 0)),
            0,
            "steady, within 5 s"
        );
        assert_eq!(look_at(4_000, look(true, 60, 110, 1_040, 0)), 1, "moved");
        assert_eq!(look_at(5_000, look(true, 62, 110, 1_050, 0)), 0);
        assert_eq!(look_at(9_000, look(true, 64, 110, 1_070, 0)), 1, "5 s on");
        // Ends (a delivery), then drains, with 20 records re-sent.
        assert_eq!(look_at(10_000, look(false, 50, 150, 1_080, 20)), 1);
        assert_eq!(
            look_at(11_000, look(false, 2, 240, 1_090, 20)),
            1,
            "drained"
        );
        assert_eq!(look_at(20_000, look(false, 2, 300, 1_100, 20)), 0, "over");
        let r = &assemble(&all)[0];
        assert_eq!(
            r.samples.iter().map(|s| s.pending).collect::<Vec<_>>(),
            [2, 30, 60, 64, 50, 2]
        );
        assert_eq!(r.resent, Some(20));
    }

    #[test]
    fn a_restart_resets_counters_without_losing_the_rise() {
        assert_eq!(increase([5, 9, 12].into_iter()), 7);
        assert_eq!(increase([5, 9, 2, 4].into_iter()), 4 + 2 + 2);
        assert_eq!(increase(std::iter::empty()), 0);
    }
}
