//! The idempotency rows (format 6; format 7 packs the entries tighter, `entry.rs`): one row
//! per commit that stores readings, holding every key
//! that commit remembered — `id -> (WAL time, packed entries)`, where a row's id is the seq of
//! its first entry.
//!
//! Format 5 kept a row per key (`idem_v2`: `(time, key) -> (seq, correlation_id,
//! fingerprint)`): one more B-tree insert per reading, as costly as the record's own, and
//! about half of what held the WAL below bare redb's append rate (docs/benchmarks.md,
//! "Session 15"). A commit's keys now cost one insert.
//!
//! Invariants:
//! - Row ids and row times both increase: every entry names a reading its commit stored, seqs
//!   grow with commits and WAL time never goes back. So the front of the table is both the
//!   oldest and the first to leave.
//! - A key's newest entry is the one that counts. A key stored again (a key conflict, or a
//!   key reused after its window) leaves its older entry where it is until that row goes;
//!   the index names the newer row, and a lookup takes the row's last entry of the key.
//!   `meta.idem_keys` counts entries, superseded ones too.
//! - Rows leave from the front: past the window (maintenance), or past
//!   `idempotency_max_keys` entries, at a commit's granularity — the oldest rows go, never the
//!   newest (a single commit of more keys than the cap keeps them all until the next).
//! - The in-memory index ([`KeyIndex`]) maps a key to its row's id; it is a hint confirmed
//!   against the row, which holds the key. Rebuilt at open by reading the rows in order.
//! - A commit's entries are gathered in the store ([`IdemBuf`]) and written as one row just
//!   before it commits; a group that fails drops the store, buffer and all.
//!
//! Layout: this file the store's side (gathering, lookups, forgetting rows, the index, `wal
//! verify`'s checks); `entry.rs` the packed entry; `migrate.rs` the conversion of format 5.

use super::*;

mod entry;
mod migrate;
use entry::{entries, find, pack, Corr, Entry};
pub(super) use migrate::migrate;

/// Row id (the seq of its first entry) -> (WAL time of its commit, packed entries).
pub(super) const IDEM: TableDefinition<u64, (u64, &[u8])> = TableDefinition::new("idem_v4");

/// Format 6's rows: the same, with entries packed as `entry::legacy` reads them.
pub(super) const IDEM_V3: TableDefinition<u64, (u64, &[u8])> = TableDefinition::new("idem_v3");

/// The entries of the commit in progress, written as one row before it commits.
#[derive(Debug, Default)]
pub(super) struct IdemBuf {
    /// The row's id: the seq of its first entry.
    id: Option<u64>,
    bytes: Vec<u8>,
    count: u64,
}

impl WalStore {
    /// The newest entry of `key` if it is still within the idempotency window.
    pub(super) fn window_row(
        &self,
        tx: &Tx<'_>,
        key: &str,
        now: u64,
    ) -> Result<Option<idem::Seen>, WalError> {
        let Some(id) = self.idem.get(key) else {
            return Ok(None);
        };
        if self.idem_buf.id == Some(id) {
            // Remembered by this commit: within any window.
            return Ok(find(id, &self.idem_buf.bytes, key));
        }
        let Some(row) = tx.idem.get(id)? else {
            return Ok(None);
        };
        let (at, bytes) = row.value();
        if at.saturating_add(self.limits.idempotency_window_ms) <= now {
            return Ok(None);
        }
        Ok(find(id, bytes, key))
    }

    /// `key` now names the reading `seq`: an entry in this commit's row.
    pub(super) fn remember_key(&mut self, key: &str, seq: u64, correlation_id: &str, fp: u64) {
        let id = *self.idem_buf.id.get_or_insert(seq);
        let e = Entry {
            key,
            seq,
            fp,
            correlation_id: Corr::of(correlation_id),
        };
        pack(&mut self.idem_buf.bytes, id, &e);
        self.idem_buf.count += 1;
        self.idem.insert(key, id);
    }

    /// Writes this commit's row, if it remembered any key, then keeps the cap: the oldest
    /// rows go while the entries are over it (never the newest row; about `SWEEP_LIMIT`
    /// entries at most).
    pub(super) fn save_idem(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        now: u64,
    ) -> Result<(), WalError> {
        let buf = std::mem::take(&mut self.idem_buf);
        let Some(id) = buf.id else {
            return Ok(());
        };
        tx.idem.insert(id, (now, buf.bytes.as_slice()))?;
        meta.idem_keys += buf.count;
        // At most a sweep's worth per commit (a cap lowered in the config could otherwise
        // make one commit delete every row); maintenance forgets the rest.
        let cap = self.limits.idempotency_max_keys;
        self.forget_rows(tx, meta, SWEEP_LIMIT, |m, _, row| {
            m.idem_keys > cap && row != id
        })?;
        Ok(())
    }

    /// Forgets rows from the front while `go(meta, row time, row id)` holds, at most about
    /// `limit` entries (whole rows; at least one). The entries forgotten, and whether it
    /// stopped at the limit with more to go.
    pub(super) fn forget_rows(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        limit: usize,
        mut go: impl FnMut(&Meta, u64, u64) -> bool,
    ) -> Result<(u64, bool), WalError> {
        let mut forgotten = 0u64;
        loop {
            let Some((id, at)) = tx.idem.first()?.map(|(k, v)| (k.value(), v.value().0)) else {
                return Ok((forgotten, false));
            };
            if !go(meta, at, id) {
                return Ok((forgotten, false));
            }
            if forgotten >= limit as u64 {
                return Ok((forgotten, true));
            }
            let Some((_, row)) = tx.idem.pop_first()? else {
                return Ok((forgotten, false));
            };
            let mut n = 0u64;
            for e in entries(id, row.value().1) {
                self.idem.remove_if(e.key, id);
                n += 1;
            }
            meta.idem_keys = meta.idem_keys.saturating_sub(n);
            forgotten += n;
        }
    }
}

/// The index of the rows, read in order (newer entries replace older ones), and the number of
/// entries they hold.
pub(super) fn load_index(
    table: &impl ReadableTable<u64, (u64, &'static [u8])>,
    next_seq: u64,
    cap: u64,
) -> Result<(KeyIndex, u64), WalError> {
    let base = match table.first()? {
        Some((k, _)) => k.value(),
        None => next_seq,
    };
    let mut index = KeyIndex::new(base, cap);
    let mut entries_held = 0u64;
    for row in table.iter()? {
        let (k, v) = row?;
        let id = k.value();
        for e in entries(id, v.value().1) {
            index.insert(e.key, id);
            entries_held += 1;
        }
    }
    Ok((index, entries_held))
}

/// Every key the rows hold (readers and tests).
pub(super) fn keys(
    table: &impl ReadableTable<u64, (u64, &'static [u8])>,
) -> Result<std::collections::BTreeSet<String>, WalError> {
    let mut keys = std::collections::BTreeSet::new();
    for row in table.iter()? {
        let (k, v) = row?;
        keys.extend(entries(k.value(), v.value().1).map(|e| e.key.to_string()));
    }
    Ok(keys)
}

/// `wal verify`'s checks of the rows (see the invariants above), and `meta.idem_keys`.
pub(super) fn verify(
    table: &impl ReadableTable<u64, (u64, &'static [u8])>,
    meta: &Meta,
    report: &mut VerifyReport,
) -> Result<(), WalError> {
    let mut last: Option<(u64, u64)> = None;
    let mut n = 0u64;
    for row in table.iter()? {
        let (k, v) = row?;
        let (id, (at, bytes)) = (k.value(), v.value());
        if last.is_some_and(|(_, t)| at < t) {
            report.problem("idempotency", format!("row {id}'s time goes back"));
        }
        last = Some((id, at));
        let (mut count, mut first) = (0u64, None);
        let mut es = entries(id, bytes);
        for e in es.by_ref() {
            first.get_or_insert(e.seq);
            count += 1;
        }
        if !es.rest().is_empty() {
            report.problem(
                "idempotency",
                format!("row {id} is damaged after its {count} entries"),
            );
        }
        if first.is_some_and(|s| s != id) {
            report.problem("idempotency", format!("row {id} names another first entry"));
        }
        n += count;
    }
    if n != meta.idem_keys {
        report.problem(
            "counter",
            format!(
                "meta says {} idempotency keys, the rows hold {n}",
                meta.idem_keys
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A damaged row (cut inside an entry) opens: its whole entries are kept, the rest
    /// forgotten (a retry of them is stored again, never refused), and `wal verify` names it.
    #[test]
    fn a_damaged_row_opens_keeps_its_whole_entries_and_verify_names_it() {
        use crate::wal::tests::{limits, rec};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.redb");
        let store = WalStore::open(&path, vec!["s".into()], limits()).unwrap();
        let ops = vec![Op::Append(vec![rec("a", 1), rec("b", 1)])];
        let (store, _) = store.apply(ops, 1).unwrap();
        drop(store);
        {
            let db = Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(IDEM).unwrap();
                let (id, at, mut bytes) = {
                    let (k, v) = t.first().unwrap().unwrap();
                    (k.value(), v.value().0, v.value().1.to_vec())
                };
                bytes.truncate(bytes.len() - 2);
                t.insert(id, (at, bytes.as_slice())).unwrap();
            }
            txn.commit().unwrap();
        }
        let report = WalStore::verify(&path).unwrap();
        assert!(
            report.problems.iter().any(|p| p.kind == "idempotency"),
            "{:?}",
            report.problems
        );
        let store = WalStore::open(&path, vec!["s".into()], limits()).unwrap();
        let ops = vec![Op::Append(vec![rec("a", 2), rec("b", 2)])];
        let (_, r) = store.apply(ops, 2).unwrap();
        let OpResult::Appended(Ok(v)) = &r[0] else {
            panic!("{r:?}")
        };
        assert!(matches!(v[0], AppendOutcome::Duplicate { .. }), "{v:?}");
        assert!(matches!(v[1], AppendOutcome::Stored { .. }), "{v:?}");
    }
}
