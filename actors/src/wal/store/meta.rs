//! Counters kept in the `meta` table, changed in the same transaction as the rows.

use super::*;

/// Counters kept in `meta`; mirrored in memory between commits.
#[derive(Debug, Clone, Default)]
pub(super) struct Meta {
    /// The file's format ([`super::FORMAT_VERSION`]); 0 in files of format 1, which had none.
    pub(super) format_version: u64,
    pub(super) next_seq: u64,
    pub(super) live_bytes: u64,
    pub(super) records: u64,
    pub(super) idem_keys: u64,
    /// Next id in the rejected table, and rows in it.
    pub(super) rejected_next: u64,
    pub(super) rejected: u64,
    /// 1 once `device_usage` is maintained for this file (older files are scanned once).
    pub(super) device_usage_v1: u64,
    /// The latest WAL time committed (see "Time" above).
    pub(super) clock_ms: u64,
    /// Settled records kept with their lifecycle (`history.rs`), and their bytes (bodies and
    /// lifecycle rows). Not in `records` / `live_bytes`.
    pub(super) history_records: u64,
    pub(super) history_bytes: u64,
    /// Per sink: (pending, dead, acked_total).
    pub(super) sinks: BTreeMap<String, (u64, u64, u64)>,
}

impl Meta {
    pub(super) fn load(txn: &WriteTransaction) -> Result<Meta, WalError> {
        let t = txn.open_table(META)?;
        let mut m = Meta {
            next_seq: 1,
            ..Default::default()
        };
        for row in t.iter()? {
            let (k, v) = row?;
            let (k, v) = (k.value().to_string(), v.value());
            match k.as_str() {
                "format_version" => m.format_version = v,
                "next_seq" => m.next_seq = v,
                "live_bytes" => m.live_bytes = v,
                "records" => m.records = v,
                "idem_keys" => m.idem_keys = v,
                "rejected_next" => m.rejected_next = v,
                "rejected" => m.rejected = v,
                "device_usage_v1" => m.device_usage_v1 = v,
                "clock_ms" => m.clock_ms = v,
                "history_records" => m.history_records = v,
                "history_bytes" => m.history_bytes = v,
                other => {
                    if let Some((kind, sink)) = other.split_once('/') {
                        let e = m.sinks.entry(sink.to_string()).or_default();
                        match kind {
                            "pending" => e.0 = v,
                            "dead" => e.1 = v,
                            "acked" => e.2 = v,
                            _ => {}
                        }
                    }
                }
            }
        }
        Ok(m)
    }

    pub(super) fn save(&self, txn: &WriteTransaction) -> Result<(), WalError> {
        self.save_since(None, txn)
    }

    /// Writes the counters that differ from `before` (what the file holds: the last commit's
    /// counters), or all of them. A commit pays for the rows it changed, not for every
    /// counter.
    pub(super) fn save_since(
        &self,
        before: Option<&Meta>,
        txn: &WriteTransaction,
    ) -> Result<(), WalError> {
        let mut t = txn.open_table(META)?;
        let b = before.map(Meta::scalars);
        for (i, (k, v)) in self.scalars().into_iter().enumerate() {
            if b.as_ref().is_none_or(|b| b[i].1 != v) {
                t.insert(k, v)?;
            }
        }
        for (sink, &(p, d, a)) in &self.sinks {
            let old = before.and_then(|b| b.sinks.get(sink));
            for (kind, v, was) in [
                ("pending", p, old.map(|o| o.0)),
                ("dead", d, old.map(|o| o.1)),
                ("acked", a, old.map(|o| o.2)),
            ] {
                if was != Some(v) {
                    t.insert(format!("{kind}/{sink}").as_str(), v)?;
                }
            }
        }
        Ok(())
    }

    fn scalars(&self) -> [(&'static str, u64); 11] {
        [
            ("format_version", self.format_version),
            ("next_seq", self.next_seq),
            ("live_bytes", self.live_bytes),
            ("records", self.records),
            ("idem_keys", self.idem_keys),
            ("rejected_next", self.rejected_next),
            ("rejected", self.rejected),
            ("device_usage_v1", self.device_usage_v1),
            ("clock_ms", self.clock_ms),
            ("history_records", self.history_records),
            ("history_bytes", self.history_bytes),
        ]
    }

    pub(super) fn sink(&mut self, sink: &str) -> &mut (u64, u64, u64) {
        // Per record on the commit path: no copy of the name for a sink already counted.
        if !self.sinks.contains_key(sink) {
            self.sinks.insert(sink.to_string(), Default::default());
        }
        self.sinks.get_mut(sink).expect("inserted above")
    }
}
