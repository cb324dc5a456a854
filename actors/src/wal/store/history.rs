//! A record's lifecycle kept after every sink settled it (issue 14, part 1): "what happened
//! to the reading with correlation id X?" answered for an hour after delivery, and acked
//! records replayed by time range to a sink that lost them on its side.
//!
//! Rows: `history: seq -> Lifecycle` (CBOR). A sink's ack adds its end (sink, attempts, when);
//! the last one sets `settled_at_ms` and the record's row is **kept** instead of deleted, no
//! longer counted as live (`meta.records`, `live_bytes`, device quotas) but as history
//! (`history_records`, `history_bytes`). A row without `settled_at_ms` belongs to a record
//! still held by another sink. Maintenance deletes settled records and their rows past
//! `wal.history_secs`, and oldest first past `wal.history_max_bytes`, when the disk is tight
//! or the file is at 3/4 of `max_file_bytes`: history never costs ingest its room.
//! Off (`history_secs = 0`): nothing is written and what was kept is deleted.
//!
//! Cost: one row read and one written per ack, on the serial commit path; the record's delete
//! moves from the ack to maintenance (docs/benchmarks.md, "History").

use super::*;
use serde::{Deserialize, Serialize};

pub(super) const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");

/// The history table in a read transaction; `None` in a file no writer of this version has
/// opened yet (it creates the table).
pub(super) fn table(
    txn: &redb::ReadTransaction,
) -> Result<Option<redb::ReadOnlyTable<u64, &'static [u8]>>, WalError> {
    match txn.open_table(HISTORY) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What the WAL remembers of a record's delivery.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// WAL time the last sink settled it; `None` while a sink still holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at_ms: Option<u64>,
    /// Each sink's ack, in the order they came.
    pub acked: Vec<SinkAck>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkAck {
    pub sink: String,
    /// Leases it took, the delivering one included.
    pub attempts: u32,
    /// WAL time of the ack.
    pub at_ms: u64,
}

impl Lifecycle {
    pub fn decode(b: &[u8]) -> Option<Lifecycle> {
        ciborium::from_reader(b).ok()
    }

    fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        ciborium::into_writer(self, &mut buf).expect("encoding to a Vec cannot fail");
        buf
    }
}

impl WalLimits {
    pub fn keeps_history(&self) -> bool {
        self.history_ms > 0
    }
}

impl WalStore {
    /// `sink` acked `seq`: its row and its ref go, and, with history on, its ack is kept —
    /// and the record with it if it was the last sink holding it.
    pub(super) fn unref_acked(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        sink: &str,
        seq: u64,
        attempts: u32,
        now: u64,
    ) -> Result<(), WalError> {
        if !self.limits.keeps_history() {
            return self.release(tx, meta, seq, Some(sink));
        }
        let held = self.held_elsewhere(tx, meta, seq, Some(sink))?;
        let mut life = tx
            .history
            .get(seq)?
            .and_then(|v| Lifecycle::decode(v.value()))
            .unwrap_or_default();
        life.acked.push(SinkAck {
            sink: sink.to_string(),
            attempts,
            at_ms: now,
        });
        if held {
            tx.history.insert(seq, life.encode().as_slice())?;
            return Ok(());
        }
        life.settled_at_ms = Some(now);
        let row = life.encode();
        tx.history.insert(seq, row.as_slice())?;
        let len = match tx.records.get(seq)? {
            Some(body) => {
                let body = body.value();
                let device = quota::device_of(body).unwrap_or_default();
                self.devices.remove(&device, body.len() as u64);
                body.len() as u64
            }
            None => 0,
        };
        meta.live_bytes = meta.live_bytes.saturating_sub(len);
        meta.records = meta.records.saturating_sub(1);
        meta.history_records += 1;
        meta.history_bytes += len + row.len() as u64;
        Ok(())
    }

    /// Deletes settled records past the history's age, or oldest first while it is over its
    /// bytes, the disk is tight, the file is near its cap, or history is off. Returns how many.
    pub(super) fn expire_history(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        now: u64,
        report: &mut MaintainReport,
    ) -> Result<(), WalError> {
        if meta.history_records == 0 {
            return Ok(());
        }
        let cutoff = now.saturating_sub(self.limits.history_ms);
        let near_cap = self.limits.max_file_bytes > 0
            && self.file_bytes.saturating_mul(4) >= self.limits.max_file_bytes.saturating_mul(3);
        let squeeze = self.tight || near_cap || !self.limits.keeps_history();
        // From where the last sweep ran out of budget on rows still held by a sink (acks of
        // some sinks, or a dead letter's): a long run of them never stalls the sweep.
        let rows: Vec<(u64, Option<u64>, u64)> = tx
            .history
            .range(self.history_cursor..)?
            .take(SWEEP_LIMIT)
            .map(|r| {
                r.map(|(k, v)| {
                    let at = Lifecycle::decode(v.value()).and_then(|l| l.settled_at_ms);
                    (k.value(), at, v.value().len() as u64)
                })
            })
            .collect::<Result<_, _>>()?;
        let full = rows.len() >= SWEEP_LIMIT;
        // Past the end, or stopped at a record young enough: the next sweep starts over.
        self.history_cursor = match rows.last() {
            Some((seq, ..)) if full => seq + 1,
            _ => 0,
        };
        report.more |= full;
        for (seq, settled, row_len) in rows {
            let Some(at) = settled else {
                continue; // a sink still holds it: deleted with the record
            };
            let over = meta.history_bytes > self.limits.history_max_bytes;
            if at > cutoff && !over && !squeeze {
                self.history_cursor = 0;
                break;
            }
            tx.history.remove(seq)?;
            let len = tx
                .records
                .remove(seq)?
                .map_or(0, |b| b.value().len() as u64);
            meta.history_records = meta.history_records.saturating_sub(1);
            meta.history_bytes = meta.history_bytes.saturating_sub(len + row_len);
            report.history_purged += 1;
        }
        Ok(())
    }
}

/// A kept record as one line of a history export: the record as `dlq export` writes it (so
/// `replay` reads either), with its lifecycle.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    pub wal_seq: u64,
    pub settled_at_wal_ms: Option<u64>,
    pub acked: Vec<SinkAck>,
    pub record: serde_json::Value,
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
        let Some(history) = table(&txn)? else {
            return Ok(0);
        };
        let records = txn.open_table(RECORDS)?;
        let mut n = 0;
        for row in history.iter()? {
            let (k, v) = row?;
            let seq = k.value();
            let Some(life) = Lifecycle::decode(v.value()).filter(|l| l.settled_at_ms.is_some())
            else {
                continue;
            };
            let Some(r) = records
                .get(seq)?
                .and_then(|b| Record::decode(b.value()).ok())
            else {
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
                settled_at_wal_ms: life.settled_at_ms,
                acked: life.acked,
                record,
            };
            if !f(row) {
                break;
            }
        }
        Ok(n)
    }
}
