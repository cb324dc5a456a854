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
        let mut t = txn.open_table(META)?;
        t.insert("format_version", self.format_version)?;
        t.insert("next_seq", self.next_seq)?;
        t.insert("live_bytes", self.live_bytes)?;
        t.insert("records", self.records)?;
        t.insert("idem_keys", self.idem_keys)?;
        t.insert("rejected_next", self.rejected_next)?;
        t.insert("rejected", self.rejected)?;
        t.insert("device_usage_v1", self.device_usage_v1)?;
        t.insert("clock_ms", self.clock_ms)?;
        t.insert("history_records", self.history_records)?;
        t.insert("history_bytes", self.history_bytes)?;
        for (sink, (p, d, a)) in &self.sinks {
            t.insert(format!("pending/{sink}").as_str(), *p)?;
            t.insert(format!("dead/{sink}").as_str(), *d)?;
            t.insert(format!("acked/{sink}").as_str(), *a)?;
        }
        Ok(())
    }

    pub(super) fn sink(&mut self, sink: &str) -> &mut (u64, u64, u64) {
        self.sinks.entry(sink.to_string()).or_default()
    }
}
