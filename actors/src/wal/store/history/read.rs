//! Reading kept history beside the running writer: the export and time-range replay
//! (`history_each`), and whether a stored record is still held by a sink.

use super::super::*;
use super::runs::{self, Covering};
use super::{HistoryRow, SinkAck};

/// The sinks a file knows (each has its `pending/<sink>` counter in `meta`), in name order.
pub(in crate::wal::store) fn known_sinks(
    txn: &redb::ReadTransaction,
) -> Result<Vec<String>, WalError> {
    let meta = txn.open_table(META)?;
    let mut sinks = Vec::new();
    for row in meta.iter()? {
        let (k, _) = row?;
        if let Some(("pending", s)) = k.value().split_once('/') {
            sinks.push(s.to_string());
        }
    }
    Ok(sinks)
}

/// Whether some sink still holds a record (a row, a range, a dead letter), in a read
/// transaction.
pub(in crate::wal::store) struct Holds {
    sinks: Vec<String>,
    pending: redb::ReadOnlyTable<(&'static str, u64), u32>,
    dead: redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    unleased: Option<redb::ReadOnlyTable<(&'static str, u64), u64>>,
}

impl Holds {
    pub(in crate::wal::store) fn open(txn: &redb::ReadTransaction) -> Result<Holds, WalError> {
        Ok(Holds {
            sinks: known_sinks(txn)?,
            pending: txn.open_table(PENDING)?,
            dead: txn.open_table(DEAD)?,
            unleased: unleased::table(txn)?,
        })
    }

    pub(in crate::wal::store) fn held(&self, seq: u64) -> Result<bool, WalError> {
        for sink in &self.sinks {
            let s = sink.as_str();
            if self.pending.get((s, seq))?.is_some() || self.dead.get((s, seq))?.is_some() {
                return Ok(true);
            }
            if let Some(t) = &self.unleased {
                if unleased::table_contains(t, s, seq)? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// WAL time a kept record settled: its latest ack (the last sink's settled it).
pub(in crate::wal::store) fn settled_at(acked: &[SinkAck]) -> Option<u64> {
    acked.iter().map(|a| a.at_ms).max()
}

impl WalReader {
    /// Every settled record kept in the history whose `receive_ts` is in `[from_ms, to_ms)`,
    /// in WAL order, to `f` until it answers false; how many were visited. One read
    /// transaction: a consistent view beside the running writer. Blocking.
    pub fn history_each(
        &self,
        from_ms: u64,
        to_ms: u64,
        mut f: impl FnMut(HistoryRow) -> bool,
    ) -> Result<u64, WalError> {
        let db = read_db(&self.0);
        let txn = db.begin_read()?;
        let Some(acks) = runs::table(&txn)? else {
            return Ok(0);
        };
        let Some(first) = acks.first()?.map(|(k, _)| k.value().0) else {
            return Ok(0);
        };
        let holds = Holds::open(&txn)?;
        let records = txn.open_table(RECORDS)?;
        let mut covering = Covering::new(runs::all_runs(&acks)?);
        let mut n = 0;
        for row in records.range(first..)? {
            let (k, v) = row?;
            let seq = k.value();
            let acked = covering.at(seq)?;
            if acked.is_empty() || holds.held(seq)? {
                continue;
            }
            let Ok(r) = Record::decode(v.value()) else {
                continue;
            };
            if r.receive_ts_ms < from_ms || r.receive_ts_ms >= to_ms {
                continue;
            }
            let mut record = serde_json::to_value(&r).unwrap_or_default();
            if let Some(t) = r.trace {
                record["trace"] = serde_json::json!(t.to_string());
            }
            n += 1;
            let row = HistoryRow {
                wal_seq: seq,
                settled_at_wal_ms: settled_at(&acked),
                acked,
                record,
            };
            if !f(row) {
                break;
            }
        }
        Ok(n)
    }
}
