//! The idempotency rows (format 6): one row per commit that stores readings, holding every key
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
//!   the index names the newer row, and a lookup in a row reads its entries from the last.
//!   `meta.idem_keys` counts entries, superseded ones too.
//! - Rows leave from the front: past the window (maintenance), or past
//!   `idempotency_max_keys` entries, at a commit's granularity — the oldest rows go, never the
//!   newest (a single commit of more keys than the cap keeps them all until the next).
//! - The in-memory index ([`KeyIndex`]) maps a key to its row's id; it is a hint confirmed
//!   against the row, which holds the key. Rebuilt at open by reading the rows in order.
//! - A commit's entries are gathered in the store ([`IdemBuf`]) and written as one row just
//!   before it commits; a group that fails drops the store, buffer and all.

use super::*;

/// Row id (the seq of its first entry) -> (WAL time of its commit, packed entries).
pub(super) const IDEM_V3: TableDefinition<u64, (u64, &[u8])> = TableDefinition::new("idem_v3");

/// One remembered key, as packed in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry<'a> {
    pub(super) key: &'a str,
    pub(super) seq: u64,
    pub(super) fp: u64,
    pub(super) correlation_id: &'a str,
}

/// Appends one entry: `len(key) u32, key, seq u64, fingerprint u64, len(corr) u32, corr`,
/// little-endian.
fn pack(buf: &mut Vec<u8>, e: &Entry<'_>) {
    buf.extend_from_slice(&(e.key.len() as u32).to_le_bytes());
    buf.extend_from_slice(e.key.as_bytes());
    buf.extend_from_slice(&e.seq.to_le_bytes());
    buf.extend_from_slice(&e.fp.to_le_bytes());
    buf.extend_from_slice(&(e.correlation_id.len() as u32).to_le_bytes());
    buf.extend_from_slice(e.correlation_id.as_bytes());
}

/// A row's entries in the order they were remembered. A damaged row ends at its first
/// malformed entry: the keys after it are forgotten (a retry of them is stored again —
/// a duplicate, never a loss).
pub(super) fn entries(mut b: &[u8]) -> impl Iterator<Item = Entry<'_>> {
    std::iter::from_fn(move || {
        let (e, rest) = parse(b)?;
        b = rest;
        Some(e)
    })
}

fn parse(b: &[u8]) -> Option<(Entry<'_>, &[u8])> {
    fn u32_at(b: &[u8]) -> Option<(usize, &[u8])> {
        let (n, rest) = b.split_first_chunk::<4>()?;
        Some((u32::from_le_bytes(*n) as usize, rest))
    }
    fn u64_at(b: &[u8]) -> Option<(u64, &[u8])> {
        let (n, rest) = b.split_first_chunk::<8>()?;
        Some((u64::from_le_bytes(*n), rest))
    }
    fn str_at(b: &[u8], len: usize) -> Option<(&str, &[u8])> {
        let (s, rest) = b.split_at_checked(len)?;
        Some((std::str::from_utf8(s).ok()?, rest))
    }
    let (len, b) = u32_at(b)?;
    let (key, b) = str_at(b, len)?;
    let (seq, b) = u64_at(b)?;
    let (fp, b) = u64_at(b)?;
    let (len, b) = u32_at(b)?;
    let (correlation_id, b) = str_at(b, len)?;
    let e = Entry {
        key,
        seq,
        fp,
        correlation_id,
    };
    Some((e, b))
}

/// `key`'s newest entry in a row.
fn find(row: &[u8], key: &str) -> Option<idem::Seen> {
    entries(row)
        .filter(|e| e.key == key)
        .last()
        .map(|e| idem::Seen {
            seq: e.seq,
            correlation_id: e.correlation_id.to_string(),
            fingerprint: e.fp,
        })
}

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
            return Ok(find(&self.idem_buf.bytes, key));
        }
        let Some(row) = tx.idem.get(id)? else {
            return Ok(None);
        };
        let (at, bytes) = row.value();
        if at.saturating_add(self.limits.idempotency_window_ms) <= now {
            return Ok(None);
        }
        Ok(find(bytes, key))
    }

    /// `key` now names the reading `seq`: an entry in this commit's row.
    pub(super) fn remember_key(&mut self, key: &str, seq: u64, correlation_id: &str, fp: u64) {
        let id = *self.idem_buf.id.get_or_insert(seq);
        let e = Entry {
            key,
            seq,
            fp,
            correlation_id,
        };
        pack(&mut self.idem_buf.bytes, &e);
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
            for e in entries(row.value().1) {
                self.idem.remove_if(e.key, id);
                n += 1;
            }
            meta.idem_keys = meta.idem_keys.saturating_sub(n);
            forgotten += n;
        }
    }
}

/// The index of the rows, read in order (newer entries replace older ones).
pub(super) fn load_index(
    table: &impl ReadableTable<u64, (u64, &'static [u8])>,
    next_seq: u64,
    cap: u64,
) -> Result<KeyIndex, WalError> {
    let base = match table.first()? {
        Some((k, _)) => k.value(),
        None => next_seq,
    };
    let mut index = KeyIndex::new(base, cap);
    for row in table.iter()? {
        let (k, v) = row?;
        let id = k.value();
        for e in entries(v.value().1) {
            index.insert(e.key, id);
        }
    }
    Ok(index)
}

/// Every key the rows hold (readers and tests).
pub(super) fn keys(
    table: &impl ReadableTable<u64, (u64, &'static [u8])>,
) -> Result<std::collections::BTreeSet<String>, WalError> {
    let mut keys = std::collections::BTreeSet::new();
    for row in table.iter()? {
        let (_, v) = row?;
        keys.extend(entries(v.value().1).map(|e| e.key.to_string()));
    }
    Ok(keys)
}

/// Format 5 and earlier: a row per key in `idem_v2` becomes a row per WAL time in `idem_v3`
/// (the keys one commit stored share its time), and `idem_v2` goes. Format 1's `idem_by_ts`
/// is dropped (its keys were not scoped to the device; see `idem.rs`): `Some(keys)` dropped.
/// Recounts `meta.idem_keys`. In the opening transaction: a crash leaves the old format whole.
pub(super) fn migrate(txn: &WriteTransaction, meta: &mut Meta) -> Result<Option<u64>, WalError> {
    let find = |name: &str| -> Result<Option<redb::UntypedTableHandle>, WalError> {
        Ok(txn
            .list_tables()?
            .find(|t| redb::TableHandle::name(t) == name))
    };
    let dropped = match find(idem::IDEM_V1_NAME)? {
        Some(old) => {
            txn.delete_table(old)?;
            Some(meta.idem_keys)
        }
        None => None,
    };
    let mut to = txn.open_table(IDEM_V3)?;
    if let Some(old) = find(idem::IDEM_V2_NAME)? {
        let from = txn.open_table(idem::IDEM_V2)?;
        // One row per run of equal times, its entries in seq order (its id the first).
        type Run = (u64, Vec<(u64, String, String, u64)>); // time, (seq, key, corr, fp)
        let flush = |run: &mut Option<Run>,
                     to: &mut redb::Table<'_, u64, (u64, &'static [u8])>|
         -> Result<(), WalError> {
            let Some((at, mut es)) = run.take() else {
                return Ok(());
            };
            es.sort_unstable_by_key(|e| e.0);
            let mut bytes = Vec::new();
            for (seq, key, correlation_id, fp) in &es {
                let e = Entry {
                    key,
                    seq: *seq,
                    fp: *fp,
                    correlation_id,
                };
                pack(&mut bytes, &e);
            }
            if let Some(&(id, ..)) = es.first() {
                to.insert(id, (at, bytes.as_slice()))?;
            }
            Ok(())
        };
        let mut run: Option<Run> = None;
        for row in from.iter()? {
            let (k, v) = row?;
            let (at, key) = k.value();
            let (seq, corr, fp) = v.value();
            if run.as_ref().is_some_and(|(t, _)| *t != at) {
                flush(&mut run, &mut to)?;
            }
            let (_, es) = run.get_or_insert_with(|| (at, Vec::new()));
            es.push((seq, key.to_string(), corr.to_string(), fp));
        }
        flush(&mut run, &mut to)?;
        drop(from);
        txn.delete_table(old)?;
    }
    let mut n = 0u64;
    for row in to.iter()? {
        n += entries(row?.1.value().1).count() as u64;
    }
    meta.idem_keys = n;
    Ok(dropped)
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
        let (mut count, mut len, mut first) = (0u64, 0usize, None);
        for e in entries(bytes) {
            first.get_or_insert(e.seq);
            count += 1;
            len += 24 + e.key.len() + e.correlation_id.len();
        }
        if len != bytes.len() {
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

    #[test]
    fn entries_round_trip_and_a_damaged_row_ends_early() {
        let a = Entry {
            key: "d/seq/1",
            seq: 7,
            fp: 0xabcd,
            correlation_id: "c-7",
        };
        let b = Entry {
            key: "d/key/ü",
            seq: 9,
            fp: 1,
            correlation_id: "",
        };
        let mut row = Vec::new();
        pack(&mut row, &a);
        pack(&mut row, &b);
        assert_eq!(entries(&row).collect::<Vec<_>>(), vec![a.clone(), b]);
        // Cut inside the second entry: the first survives.
        row.truncate(row.len() - 3);
        assert_eq!(entries(&row).collect::<Vec<_>>(), vec![a]);
        assert_eq!(entries(&[1, 0]).count(), 0);
    }

    #[test]
    fn the_newest_entry_of_a_key_counts() {
        let mut row = Vec::new();
        for (seq, fp) in [(1, 10), (2, 20)] {
            let e = Entry {
                key: "k",
                seq,
                fp,
                correlation_id: "c",
            };
            pack(&mut row, &e);
        }
        let seen = find(&row, "k").unwrap();
        assert_eq!((seen.seq, seen.fingerprint), (2, 20));
        assert!(find(&row, "other").is_none());
    }

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
                let mut t = txn.open_table(IDEM_V3).unwrap();
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
