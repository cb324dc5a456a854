//! The ledger: every reading produced and acknowledged, every delivery each sink saw; and the
//! oracle that judges them once the backlog has drained.

use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// One reading as its device produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device: String,
    pub seq: u64,
    pub value: f64,
}

/// What one sink received.
#[derive(Debug, Default)]
struct SinkLog {
    /// Deliveries per key (all of them, duplicates included).
    count: HashMap<String, u32>,
    /// Per device, seqs in order of first delivery.
    first: HashMap<String, Vec<u64>>,
    /// Deliveries of keys never produced.
    unknown: Vec<String>,
    /// Deliveries whose value differs from what was produced.
    corrupt: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Ledger {
    produced: HashMap<String, Reading>,
    acked: HashSet<String>,
    /// Acknowledged readings [`POISON_SINK`] refuses: they must be dead-lettered there, and
    /// they are the only dead letters any sink may have.
    poison: HashSet<String>,
    sinks: BTreeMap<String, SinkLog>,
}

/// The sink that refuses poison readings (the recording analytics API).
pub const POISON_SINK: &str = "analytics";

impl Ledger {
    pub fn new(sinks: &[&str]) -> Ledger {
        Ledger {
            sinks: sinks
                .iter()
                .map(|s| (s.to_string(), SinkLog::default()))
                .collect(),
            ..Default::default()
        }
    }

    pub fn produced(&mut self, r: Reading) {
        self.produced.insert(crate::key(&r.device, r.seq), r);
    }

    /// The gateway (HTTP 2xx) or the edge broker (MQTT PUBACK) acknowledged it.
    pub fn acked(&mut self, device: &str, seq: u64) {
        self.acked.insert(crate::key(device, seq));
    }

    /// An acknowledged reading that [`POISON_SINK`] will refuse.
    pub fn poison(&mut self, device: &str, seq: u64) {
        self.poison.insert(crate::key(device, seq));
    }

    pub fn acked_count(&self) -> usize {
        self.acked.len()
    }

    pub fn produced_count(&self) -> usize {
        self.produced.len()
    }

    /// A sink saw a record: its idempotency key, device, seq and value as delivered.
    pub fn delivered(&mut self, sink: &str, key: &str, device: &str, seq: u64, value: Option<f64>) {
        // Abusers' readings are not the oracle's business (scenario `abuse`): only that
        // theirs never cost an honest device one.
        if device.starts_with(crate::abuse::ABUSER) {
            return;
        }
        let log = self.sinks.entry(sink.to_string()).or_default();
        let n = log.count.entry(key.to_string()).or_insert(0);
        *n += 1;
        if *n > 1 {
            return;
        }
        match self.produced.get(key) {
            None => log.unknown.push(key.to_string()),
            Some(r) => {
                if value.is_none_or(|v| (v - r.value).abs() > 1e-9)
                    || r.device != device
                    || r.seq != seq
                {
                    log.corrupt.push(key.to_string());
                }
                log.first.entry(device.to_string()).or_default().push(seq);
            }
        }
    }

    /// Acknowledged keys a sink has not (yet) received and that are not dead-lettered there.
    pub fn missing(&self, sink: &str, dead: &HashSet<String>) -> Vec<String> {
        let log = self.sinks.get(sink);
        let mut out: Vec<String> = self
            .acked
            .iter()
            .filter(|k| !dead.contains(*k) && log.is_none_or(|l| !l.count.contains_key(*k)))
            .cloned()
            .collect();
        out.sort();
        out
    }

    /// The oracle. `dead` holds, per sink, the keys dead-lettered there.
    pub fn verdict(&self, dead: &HashMap<String, HashSet<String>>) -> Verdict {
        let empty = HashSet::new();
        let mut sinks = BTreeMap::new();
        for (name, log) in &self.sinks {
            let d = dead.get(name).unwrap_or(&empty);
            let lost = self.missing(name, d);
            let deliveries: u64 = log.count.values().map(|&n| n as u64).sum();
            let unique = log.count.len() as u64;
            let mut out_of_order: Vec<String> = log
                .first
                .iter()
                .filter_map(|(d, seqs)| {
                    let w = seqs.windows(2).find(|w| w[0] >= w[1])?;
                    Some(format!("{d} ({} first delivered before {})", w[0], w[1]))
                })
                .collect();
            out_of_order.sort();
            // Nothing blames a reading but the poison: any other dead letter is a record
            // dead-lettered for a failure it did not cause.
            let expected: &HashSet<String> = if name == POISON_SINK {
                &self.poison
            } else {
                &empty
            };
            let mut dead_unexpected: Vec<String> = d.difference(expected).cloned().collect();
            dead_unexpected.sort();
            let poison_delivered = expected
                .iter()
                .filter(|k| log.count.contains_key(*k))
                .count() as u64;
            sinks.insert(
                name.clone(),
                SinkVerdict {
                    delivered_unique: unique,
                    deliveries,
                    duplicates: deliveries - unique,
                    dead_lettered: d.len() as u64,
                    dead_unexpected: dead_unexpected.len() as u64,
                    dead_unexpected_sample: dead_unexpected.into_iter().take(20).collect(),
                    poison_delivered,
                    lost: lost.len() as u64,
                    lost_sample: lost.into_iter().take(20).collect(),
                    unknown: log.unknown.len() as u64,
                    corrupt: log.corrupt.len() as u64,
                    out_of_order_devices: out_of_order,
                },
            );
        }
        Verdict {
            produced: self.produced.len() as u64,
            acknowledged: self.acked.len() as u64,
            lost: sinks.values().map(|s| s.lost).sum(),
            sinks,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SinkVerdict {
    pub delivered_unique: u64,
    pub deliveries: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    /// Dead letters of readings that are not poison here. Must be 0.
    pub dead_unexpected: u64,
    pub dead_unexpected_sample: Vec<String>,
    /// Poison readings the sink took all the same (it never does). Must be 0.
    pub poison_delivered: u64,
    /// Acknowledged, neither delivered nor dead-lettered. Must be 0.
    pub lost: u64,
    pub lost_sample: Vec<String>,
    /// Delivered but never produced. Must be 0.
    pub unknown: u64,
    /// Delivered with a payload other than the one produced. Must be 0.
    pub corrupt: u64,
    /// Devices whose first deliveries were not in `seq` order, with the first inversion.
    /// Must be empty.
    pub out_of_order_devices: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub produced: u64,
    pub acknowledged: u64,
    /// Sum over sinks.
    pub lost: u64,
    pub sinks: BTreeMap<String, SinkVerdict>,
}

impl Verdict {
    /// Everything but loss that the oracle refuses.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (name, s) in &self.sinks {
            if s.unknown > 0 {
                v.push(format!("{name}: {} deliveries never produced", s.unknown));
            }
            if s.dead_unexpected > 0 {
                v.push(format!(
                    "{name}: {} readings dead-lettered for a failure they did not cause, e.g. {:?}",
                    s.dead_unexpected, s.dead_unexpected_sample
                ));
            }
            if s.poison_delivered > 0 {
                v.push(format!(
                    "{name}: {} poison readings counted as delivered",
                    s.poison_delivered
                ));
            }
            if s.corrupt > 0 {
                v.push(format!("{name}: {} payloads altered", s.corrupt));
            }
            if !s.out_of_order_devices.is_empty() {
                v.push(format!(
                    "{name}: first deliveries out of order for {:?}",
                    s.out_of_order_devices
                ));
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(d: &str, seq: u64) -> Reading {
        Reading {
            device: d.into(),
            seq,
            value: crate::value(d, seq),
        }
    }

    fn deliver(l: &mut Ledger, sink: &str, d: &str, seq: u64) {
        l.delivered(
            sink,
            &crate::key(d, seq),
            d,
            seq,
            Some(crate::value(d, seq)),
        );
    }

    #[test]
    fn every_acked_reading_delivered_or_dead_is_no_loss() {
        let b = POISON_SINK;
        let mut l = Ledger::new(&["a", b]);
        for s in 0..4 {
            l.produced(r("d1", s));
        }
        for s in 0..3 {
            l.acked("d1", s);
        }
        l.poison("d1", 1);
        for s in 0..4 {
            deliver(&mut l, "a", "d1", s); // seq 3 was produced, never acked: fine
        }
        deliver(&mut l, "a", "d1", 1); // a duplicate
        deliver(&mut l, b, "d1", 0);
        deliver(&mut l, b, "d1", 2);
        let dead = HashMap::from([(b.to_string(), HashSet::from([crate::key("d1", 1)]))]);
        let v = l.verdict(&dead);
        assert_eq!(v.lost, 0, "{v:?}");
        assert_eq!(v.sinks["a"].duplicates, 1);
        assert_eq!(v.sinks[b].dead_lettered, 1);
        assert!(v.violations().is_empty(), "{:?}", v.violations());
    }

    #[test]
    fn only_the_poison_may_be_dead_and_only_where_it_is_refused() {
        let b = POISON_SINK;
        let mut l = Ledger::new(&["a", b]);
        for s in 0..3 {
            l.produced(r("d1", s));
            l.acked("d1", s);
        }
        l.poison("d1", 1);
        deliver(&mut l, "a", "d1", 0);
        deliver(&mut l, "a", "d1", 2);
        deliver(&mut l, b, "d1", 0);
        // `a` dead-letters the poison it has no reason to refuse; `b` dead-letters a
        // neighbour of the poison besides the poison itself.
        let dead = HashMap::from([
            ("a".to_string(), HashSet::from([crate::key("d1", 1)])),
            (
                b.to_string(),
                HashSet::from([crate::key("d1", 1), crate::key("d1", 2)]),
            ),
        ]);
        let v = l.verdict(&dead);
        assert_eq!(v.lost, 0, "{v:?}");
        assert_eq!(v.sinks["a"].dead_unexpected, 1);
        assert_eq!(v.sinks[b].dead_unexpected, 1);
        assert_eq!(v.sinks[b].dead_unexpected_sample, vec![crate::key("d1", 2)]);
        let msgs = v.violations().join("; ");
        assert!(msgs.contains("did not cause"), "{msgs}");
    }

    #[test]
    fn the_oracle_sees_loss_corruption_strangers_and_disorder() {
        let mut l = Ledger::new(&["a"]);
        for s in 0..3 {
            l.produced(r("d1", s));
            l.acked("d1", s);
        }
        deliver(&mut l, "a", "d1", 2);
        deliver(&mut l, "a", "d1", 0); // out of order
        l.delivered("a", "ghost/seq/1", "ghost", 1, Some(1.0));
        l.delivered("a", &crate::key("d1", 1), "d1", 1, Some(-1.0)); // altered payload
        let v = l.verdict(&HashMap::new());
        assert_eq!(v.lost, 0);
        let v2 = {
            let mut l2 = Ledger::new(&["a"]);
            l2.produced(r("d1", 0));
            l2.acked("d1", 0);
            l2.verdict(&HashMap::new())
        };
        assert_eq!(v2.lost, 1);
        assert_eq!(v2.sinks["a"].lost_sample, vec![crate::key("d1", 0)]);
        let msgs = v.violations().join("; ");
        assert!(msgs.contains("never produced"), "{msgs}");
        assert!(msgs.contains("altered"), "{msgs}");
        assert!(msgs.contains("out of order"), "{msgs}");
    }
}
