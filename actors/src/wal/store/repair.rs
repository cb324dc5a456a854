//! `edge-gateway wal repair` (issue 14, part 5): makes a damaged WAL consistent again, with the
//! gateway stopped, never dropping anything silently: what cannot be kept is written to a
//! quarantine file (JSON Lines, synced before the repair commits) and counted.
//!
//! - a record that does not decode: quarantined with its bytes (base64) and the sinks that
//!   held it, then removed with its rows;
//! - a pending or dead row naming a missing record: quarantined and removed;
//! - a record no row names any more: quarantined and removed (nothing would deliver it);
//! - the per-device usage and the counters in `meta`: recomputed from the rows; an append
//!   time (`times.rs`) added if none covers the first record kept (it gets the WAL's time);
//! - kept history (settled records and runs of acks, `history/`) is given up first, and
//!   counted: it is delivered already, and a damaged file's history cannot be trusted.
//!
//! Pages redb cannot repair are beyond this: restore a backup.

use super::quota::Devices;
use super::*;
use base64::Engine;
use std::io::Write;

/// What a repair did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RepairReport {
    pub quarantine: String,
    pub records_quarantined: u64,
    pub rows_quarantined: u64,
    /// 1 if no append time covered the first record kept and one was added.
    pub times_added: u64,
    pub counters_fixed: bool,
    /// Settled records kept as history, deleted.
    pub history_dropped: u64,
}

impl WalStore {
    /// Repairs the WAL file at `path` (no process may hold it), quarantining into `quarantine`
    /// (appended to).
    pub fn offline_repair(path: &Path, quarantine: &Path) -> Result<RepairReport, WalError> {
        let mut db = Database::open(path).map_err(|e| open_error(path, e))?;
        db.check_integrity().map_err(|e| {
            WalError::Storage(format!(
                "redb cannot repair this file's pages ({e}): restore a backup (`wal backup`)"
            ))
        })?;
        let mut report = RepairReport {
            quarantine: quarantine.display().to_string(),
            ..Default::default()
        };
        let mut lines: Vec<serde_json::Value> = Vec::new();
        let b64 = base64::engine::general_purpose::STANDARD;
        let txn = db.begin_write()?;
        let mut meta = Meta::load(&txn)?;
        // Unleased records as rows first: the repair reasons about rows only (the next open
        // gives each configured sink its open range again).
        unleased::materialize_all(&txn, meta.next_seq)?;
        // A file of an older format: its per-record times become `times` first.
        times::migrate_refs(&txn)?;
        {
            let mut records = txn.open_table(RECORDS)?;
            let mut pending = txn.open_table(PENDING)?;
            let mut dead = txn.open_table(DEAD)?;
            // Rows by seq: (sink, is_dead).
            let mut rows: BTreeMap<u64, Vec<(String, bool)>> = BTreeMap::new();
            for r in pending.iter()? {
                let (k, _) = r?;
                let (sink, seq) = k.value();
                rows.entry(seq).or_default().push((sink.to_string(), false));
            }
            for r in dead.iter()? {
                let (k, _) = r?;
                let (sink, seq) = k.value();
                rows.entry(seq).or_default().push((sink.to_string(), true));
            }
            // Kept history first: every run of acks goes (and format 4's lifecycle rows), and
            // the settled records no sink holds with them.
            {
                let mut seqs = Vec::new();
                let mut acks = txn.open_table(history::runs::ACKS)?;
                for r in acks.iter()? {
                    let (k, v) = r?;
                    let first = k.value().0;
                    let last =
                        history::runs::Run::decode(first, v.value()).map_or(first, |r| r.last);
                    seqs.extend(first..=last);
                }
                acks.retain(|_, _| false)?;
                if let Ok(old) = txn.open_table(history::runs::HISTORY_V4) {
                    for r in old.iter()? {
                        seqs.push(r?.0.value());
                    }
                    drop(old);
                    txn.delete_table(history::runs::HISTORY_V4)?;
                }
                for seq in seqs {
                    if !rows.contains_key(&seq) && records.remove(seq)?.is_some() {
                        report.history_dropped += 1;
                    }
                }
                (meta.history_records, meta.history_bytes) = (0, 0);
            }
            let mut bad = Vec::new();
            let mut good = std::collections::BTreeSet::new();
            for r in records.iter()? {
                let (k, v) = r?;
                let seq = k.value();
                if Record::decode(v.value()).is_err() {
                    bad.push((seq, v.value().to_vec(), "does not decode"));
                } else if !rows.contains_key(&seq) {
                    bad.push((seq, v.value().to_vec(), "no sink holds it"));
                } else {
                    good.insert(seq);
                }
            }
            for (seq, bytes, why) in bad {
                let sinks = rows.remove(&seq).unwrap_or_default();
                lines.push(serde_json::json!({
                    "kind": "record", "wal_seq": seq, "why": why,
                    "sinks": sinks.iter().map(|(s, d)| serde_json::json!({"sink": s, "dead": d})).collect::<Vec<_>>(),
                    "bytes_base64": b64.encode(&bytes),
                }));
                records.remove(seq)?;
                for (sink, is_dead) in sinks {
                    if is_dead {
                        dead.remove((sink.as_str(), seq))?;
                    } else {
                        pending.remove((sink.as_str(), seq))?;
                    }
                }
                report.records_quarantined += 1;
            }
            // Rows naming a record that is gone.
            for (seq, sinks) in rows.iter().filter(|(s, _)| !good.contains(s)) {
                for (sink, is_dead) in sinks {
                    let entry = if *is_dead {
                        dead.remove((sink.as_str(), *seq))?
                            .map(|v| b64.encode(v.value()))
                    } else {
                        pending.remove((sink.as_str(), *seq))?;
                        None
                    };
                    lines.push(serde_json::json!({
                        "kind": if *is_dead { "dead_row" } else { "pending_row" },
                        "sink": sink, "wal_seq": seq, "why": "its record is gone",
                        "dead_entry_base64": entry,
                    }));
                    report.rows_quarantined += 1;
                }
            }
            // Append times: one must cover the first record kept.
            if let Some(&first) = good.first() {
                let mut times = txn.open_table(TIMES)?;
                if times::appended_at(&times, first)?.is_none() {
                    times.insert(first, meta.clock_ms)?;
                    report.times_added = 1;
                }
            }
            // Counters, from the rows.
            let before = (meta.records, meta.live_bytes, meta.sinks.clone());
            meta.records = 0;
            meta.live_bytes = 0;
            for r in records.iter()? {
                meta.records += 1;
                meta.live_bytes += r?.1.value().len() as u64;
            }
            for v in meta.sinks.values_mut() {
                (v.0, v.1) = (0, 0);
            }
            for (seq, sinks) in &rows {
                if good.contains(seq) {
                    for (sink, is_dead) in sinks {
                        let e = meta.sink(sink);
                        if *is_dead {
                            e.1 += 1;
                        } else {
                            e.0 += 1;
                        }
                    }
                }
            }
            report.counters_fixed = before != (meta.records, meta.live_bytes, meta.sinks.clone());
            let mut usage = txn.open_table(super::quota::DEVICE_USAGE)?;
            let mut devices = Devices::scan(&records)?;
            usage.retain(|_, _| false)?;
            devices.save(&mut usage)?;
        }
        meta.save(&txn)?;
        // The quarantine is on disk before anything it holds leaves the WAL.
        if !lines.is_empty() {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(quarantine)
                .map_err(|e| {
                    WalError::Storage(format!("quarantine {}: {e}", quarantine.display()))
                })?;
            for l in &lines {
                let mut b = serde_json::to_vec(l).expect("JSON");
                b.push(b'\n');
                f.write_all(&b)
                    .map_err(|e| WalError::Storage(format!("quarantine: {e}")))?;
            }
            f.sync_all()
                .map_err(|e| WalError::Storage(format!("quarantine: {e}")))?;
        }
        txn.commit()?;
        Ok(report)
    }
}
