//! A record's lifecycle kept after every sink settled it (issue 14, part 1): "what happened
//! to the reading with correlation id X?" answered for an hour after delivery, and acked
//! records replayed by time range to a sink that lost them on its side.
//!
//! Each sink's acks are kept as runs (`runs.rs`: one `acks` row per run of consecutive seqs a
//! settle batch acked, not a row per record). At the last sink's ack the record's row is
//! **kept** instead of deleted, no longer counted as live (`meta.records`, `live_bytes`, device
//! quotas) but as history (`history_records`, `history_bytes`, which counts kept records and
//! run rows). A kept record is one still stored that no sink holds and a run covers.
//! Maintenance deletes kept records past `wal.history_secs` after their last ack, and oldest
//! first past `wal.history_max_bytes`, when the disk is tight or the file is at 3/4 of
//! `max_file_bytes`: history never costs ingest its room; a run's row goes once none of its
//! records is stored. Off (`history_secs = 0`): nothing is written and what was kept is deleted.
//!
//! Cost per ack: the record's body read (its size and device leave the live counters); one
//! 20-byte row per run, written once per settle batch (docs/benchmarks.md, "History").

mod read;
pub(super) mod runs;
pub(super) use read::{known_sinks, settled_at};

use super::*;
use serde::{Deserialize, Serialize};

/// Format 4's lifecycle row of a record (`history: seq -> CBOR`), read once when the file is
/// migrated to runs (`runs::migrate_lifecycles`).
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
}

impl WalLimits {
    pub fn keeps_history(&self) -> bool {
        self.history_ms > 0
    }
}

impl WalStore {
    /// `sink` acked `seq` (its row is gone) with history kept: if no other sink holds it, the
    /// record stays as history. The ack itself is kept by [`WalStore::keep_runs`].
    pub(super) fn keep_acked(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        sink: &str,
        seq: u64,
    ) -> Result<(), WalError> {
        if self.held_elsewhere(tx, meta, seq, Some(sink))? {
            return Ok(());
        }
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
        meta.history_bytes += len;
        Ok(())
    }

    /// One settle batch's acks of `sink`, a row per run.
    pub(super) fn keep_runs(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        sink: &str,
        runs: runs::Runs,
    ) -> Result<(), WalError> {
        for run in runs.into_vec() {
            // A seq is acked once per sink, so a run's key is new; were it not, the row it
            // replaces leaves the count.
            if tx
                .acks
                .insert((run.first, sink), run.encode().as_slice())?
                .is_none()
            {
                meta.history_bytes += runs::run_bytes(sink);
            }
        }
        Ok(())
    }

    /// Deletes kept records past the history's age, or oldest first while it is over its
    /// bytes, the disk is tight, the file is near its cap, or history is off; and the rows of
    /// runs none of whose records is stored any more.
    pub(super) fn expire_history(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        now: u64,
        report: &mut MaintainReport,
    ) -> Result<(), WalError> {
        // What a drain pushed over the cap was live a moment ago: trimming it may wait (see
        // `stored_mark`) unless more came in since, the disk is tight or the file near its cap.
        let stored = meta.live_bytes.saturating_add(meta.history_bytes);
        if meta.history_bytes <= self.limits.history_max_bytes {
            self.stored_mark = stored;
        }
        if meta.history_records == 0 && meta.history_bytes == 0 {
            return Ok(());
        }
        let cutoff = now.saturating_sub(self.limits.history_ms);
        let near_cap = self.limits.max_file_bytes > 0
            && self.file_bytes.saturating_mul(4) >= self.limits.max_file_bytes.saturating_mul(3);
        let squeeze = self.tight || near_cap || !self.limits.keeps_history();
        let several = meta.sinks.len() > 1;
        let max_bytes = self.limits.history_max_bytes;
        // (A 1/64 slack for the run rows a drain adds, and appends of the last moment.)
        let deferrable =
            !squeeze && stored <= self.stored_mark.saturating_add(self.stored_mark / 64);
        let more = |report: &mut MaintainReport| {
            if deferrable {
                report.history_more = true;
            } else {
                report.more = true;
            }
        };
        // From where the last sweep ran out of budget on records still held by a sink (acks
        // of some sinks, or a dead letter's): a long run of them never stalls the sweep.
        let (from_row, from_seq) = self.history_cursor;
        let rows: Vec<(u64, String, Option<runs::Run>)> = tx
            .acks
            .range((from_row, "")..)?
            .take(SWEEP_LIMIT)
            .map(|r| {
                r.map(|(k, v)| {
                    let (first, sink) = k.value();
                    (first, sink.to_string(), runs::Run::decode(first, v.value()))
                })
            })
            .collect::<Result<_, _>>()?;
        let full = rows.len() >= SWEEP_LIMIT;
        // Past the end, or stopped at a record young enough: the next sweep starts over.
        self.history_cursor = match rows.last() {
            Some((first, ..)) if full => (first + 1, 0),
            _ => (0, 0),
        };
        if full {
            more(report);
        }
        // Records looked at, the budget of one sweep.
        let mut budget = SWEEP_LIMIT;
        'rows: for (first, sink, run) in rows {
            // A damaged row (`wal verify` names it) is old: it goes.
            let young = run.is_some_and(|r| r.at_ms > cutoff);
            let keep = |meta: &Meta| young && meta.history_bytes <= max_bytes && !squeeze;
            if keep(meta) {
                self.history_cursor = (0, 0);
                break;
            }
            let last = run.map_or(first, |r| r.last);
            // Records before where the last sweep stopped in this row wait for the next pass.
            let start = if first == from_row {
                first.max(from_seq)
            } else {
                first
            };
            let mut needed = start > first;
            let stored: Vec<u64> = tx
                .records
                .range(start..=last)?
                .map(|r| r.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?;
            for seq in stored {
                if budget == 0 {
                    self.history_cursor = (first, seq);
                    more(report);
                    break 'rows;
                }
                budget -= 1;
                if keep(meta) {
                    self.history_cursor = (0, 0);
                    break 'rows;
                }
                // Still held by another sink: deleted with the record, or kept once settled.
                if self.held_elsewhere(tx, meta, seq, Some(&sink))? {
                    needed = true;
                    continue;
                }
                // Settled by a later ack of another sink, which is still young.
                if several && meta.history_bytes <= max_bytes && !squeeze {
                    let acks = runs::acks_of(&tx.acks, seq)?;
                    if acks.iter().any(|a| a.at_ms > cutoff) {
                        needed = true;
                        continue;
                    }
                }
                let len = tx
                    .records
                    .remove(seq)?
                    .map_or(0, |b| b.value().len() as u64);
                meta.history_records = meta.history_records.saturating_sub(1);
                meta.history_bytes = meta.history_bytes.saturating_sub(len);
                report.history_purged += 1;
            }
            if !needed {
                tx.acks.remove((first, sink.as_str()))?;
                meta.history_bytes = meta.history_bytes.saturating_sub(runs::run_bytes(&sink));
            }
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
