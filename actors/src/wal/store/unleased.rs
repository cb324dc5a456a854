//! Unleased ranges (issue 9, part 2): a sink's records that were never leased are not rows.
//!
//! A record appended for every sink used to write one `pending` row per sink, only for the
//! first lease to rewrite it and the settle to delete it. Now each sink keeps a few seq ranges
//! `[start, end)` of records still waiting for their first lease; the `pending` row of a record
//! is written when it is first leased (its attempt has to be persisted then anyway). Per
//! record, an append writes one row fewer.
//!
//! Invariants (checked by `wal verify`):
//! - For a sink, its pending records are its `pending` rows plus the seqs below `next_seq`
//!   inside its ranges; the two never overlap.
//! - Every seq inside a range below `next_seq` names a stored record, routed to that sink, and
//!   holds that record (`WalStore::release`) and counts in the sink's `pending` counter, as a
//!   row would.
//! - Every sink the WAL queues new records for has exactly one open range `[f, u64::MAX)`;
//!   the sinks with an open range are the sinks new records were queued for. A change of the
//!   sink set (at open or by `config.apply`) first writes the rows of every sink that leaves,
//!   so a range is only ever read with the sink set it was written under.
//! - A record not queued for every sink (routing rules, a replay) is cut out of every range
//!   and gets rows, as before.
//!
//! `Unleased` is the in-memory mirror (plain data, unit-tested below); the `UNLEASED` table
//! holds it, rewritten per sink only when that sink's ranges changed, in the same commit.

use super::*;

/// (sink, start) -> end (exclusive; `u64::MAX`: open, new records join it).
pub(super) const UNLEASED: TableDefinition<(&str, u64), u64> = TableDefinition::new("unleased");

/// More ranges than this for one sink (routing rules interleaving with plain appends) and its
/// ranges are written out as rows (see [`Unleased::crowded`]). Tiny under test, so the model
/// test goes through that path too.
#[cfg(not(test))]
pub(super) const MAX_RANGES: usize = 64;
#[cfg(test)]
pub(super) const MAX_RANGES: usize = 3;

/// Every sink's unleased ranges, and which sinks changed since the last save.
#[derive(Debug, Clone, Default)]
pub(super) struct Unleased {
    /// sink -> start -> end. Disjoint, non-empty ranges.
    ranges: BTreeMap<String, BTreeMap<u64, u64>>,
    dirty: std::collections::BTreeSet<String>,
}

impl Unleased {
    /// The sinks with ranges: the sinks new records are queued for.
    pub(super) fn sinks(&self) -> impl Iterator<Item = &String> {
        self.ranges.keys()
    }

    /// Adds a sink whose first unleased record will be `from`.
    pub(super) fn add_sink(&mut self, sink: &str, from: u64) {
        self.ranges
            .insert(sink.to_string(), BTreeMap::from([(from, u64::MAX)]));
        self.dirty.insert(sink.to_string());
    }

    /// Forgets a sink's ranges (its caller wrote their rows first).
    pub(super) fn remove_sink(&mut self, sink: &str) {
        if self.ranges.remove(sink).is_some() {
            self.dirty.insert(sink.to_string());
        }
    }

    pub(super) fn contains(&self, sink: &str, seq: u64) -> bool {
        self.ranges
            .get(sink)
            .and_then(|r| r.range(..=seq).next_back())
            .is_some_and(|(_, end)| seq < *end)
    }

    /// `sink`'s ranges within `[lo, hi)`, clipped to it, in order.
    pub(super) fn within(&self, sink: &str, lo: u64, hi: u64) -> Vec<(u64, u64)> {
        let Some(r) = self.ranges.get(sink) else {
            return Vec::new();
        };
        let first = r.range(..=lo).next_back().map_or(lo, |(s, _)| *s);
        r.range(first..hi)
            .map(|(s, e)| ((*s).max(lo), (*e).min(hi)))
            .filter(|(s, e)| s < e)
            .collect()
    }

    /// How many seqs below `next_seq` are in `sink`'s ranges.
    #[cfg(test)]
    pub(super) fn count(&self, sink: &str, next_seq: u64) -> u64 {
        self.within(sink, 0, next_seq)
            .iter()
            .map(|(s, e)| e - s)
            .sum()
    }

    /// The first seq below `next_seq` in `sink`'s ranges.
    pub(super) fn first(&self, sink: &str, next_seq: u64) -> Option<u64> {
        self.within(sink, 0, next_seq).first().map(|(s, _)| *s)
    }

    /// Takes `[lo, hi)` out of `sink`'s ranges.
    pub(super) fn remove(&mut self, sink: &str, lo: u64, hi: u64) {
        let Some(r) = self.ranges.get_mut(sink) else {
            return;
        };
        if lo >= hi {
            return;
        }
        let first = r.range(..=lo).next_back().map_or(lo, |(s, _)| *s);
        let hit: Vec<(u64, u64)> = r
            .range(first..hi)
            .map(|(s, e)| (*s, *e))
            .filter(|(s, e)| *s < hi && lo < *e)
            .collect();
        if hit.is_empty() {
            return;
        }
        for (s, e) in hit {
            r.remove(&s);
            if s < lo {
                r.insert(s, lo);
            }
            if hi < e {
                r.insert(hi, e);
            }
        }
        self.dirty.insert(sink.to_string());
    }

    /// Takes `[lo, hi)` out of every sink's ranges (records that get rows instead).
    pub(super) fn remove_all(&mut self, lo: u64, hi: u64) {
        let sinks: Vec<String> = self.ranges.keys().cloned().collect();
        for s in sinks {
            self.remove(&s, lo, hi);
        }
    }

    /// The sinks whose ranges grew past [`MAX_RANGES`].
    pub(super) fn crowded(&self) -> Vec<String> {
        self.ranges
            .iter()
            .filter(|(_, r)| r.len() > MAX_RANGES)
            .map(|(s, _)| s.clone())
            .collect()
    }

    pub(super) fn load(
        table: &impl ReadableTable<(&'static str, u64), u64>,
    ) -> Result<Unleased, WalError> {
        let mut u = Unleased::default();
        for row in table.iter()? {
            let (k, v) = row?;
            let (sink, start) = k.value();
            u.ranges
                .entry(sink.to_string())
                .or_default()
                .insert(start, v.value());
        }
        Ok(u)
    }

    /// Rewrites the rows of every sink whose ranges changed since the last save.
    pub(super) fn save(
        &mut self,
        table: &mut redb::Table<'_, (&'static str, u64), u64>,
    ) -> Result<(), WalError> {
        for sink in std::mem::take(&mut self.dirty) {
            let old: Vec<u64> = table
                .range((sink.as_str(), 0)..=(sink.as_str(), u64::MAX))?
                .map(|r| r.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for start in old {
                table.remove((sink.as_str(), start))?;
            }
            for (s, e) in self.ranges.get(&sink).into_iter().flatten() {
                table.insert((sink.as_str(), *s), *e)?;
            }
        }
        Ok(())
    }
}

/// Whether `seq` is in `sink`'s ranges, read from the table (readers of a file or a snapshot).
pub(super) fn table_contains(
    table: &impl ReadableTable<(&'static str, u64), u64>,
    sink: &str,
    seq: u64,
) -> Result<bool, WalError> {
    let last = table
        .range((sink, 0)..=(sink, seq))?
        .next_back()
        .transpose()?;
    Ok(last.is_some_and(|(_, end)| seq < end.value()))
}

/// (sink, seq) pairs.
type SinkSeqs = Vec<(String, u64)>;
/// The table, read-only.
type RangesTable = redb::ReadOnlyTable<(&'static str, u64), u64>;

/// Every (sink, seq) in the table's ranges below `next_seq` that names a stored record, in
/// order; and the seqs a range holds without a record (a broken invariant, for `verify`).
pub(super) fn virtual_rows(
    ranges: &impl ReadableTable<(&'static str, u64), u64>,
    records: &impl ReadableTable<u64, &'static [u8]>,
    next_seq: u64,
) -> Result<(SinkSeqs, SinkSeqs), WalError> {
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    for r in ranges.iter()? {
        let (k, v) = r?;
        let (sink, start) = k.value();
        let end = v.value().min(next_seq);
        let mut expect = start;
        for rec in records.range(start..end.max(start))? {
            let seq = rec?.0.value();
            missing.extend((expect..seq).map(|s| (sink.to_string(), s)));
            rows.push((sink.to_string(), seq));
            expect = seq + 1;
        }
        missing.extend((expect..end).map(|s| (sink.to_string(), s)));
    }
    Ok((rows, missing))
}

impl Unleased {
    /// Writes a `pending` row (no attempts yet) for every record in `sink`'s ranges, and leaves
    /// it the open range from `next_seq` on (or none, when `keep` is false). Returns the rows.
    pub(super) fn materialize(
        &mut self,
        tx: &mut Tx<'_>,
        sink: &str,
        next_seq: u64,
        keep: bool,
    ) -> Result<u64, WalError> {
        let mut n = 0;
        for (s, e) in self.within(sink, 0, next_seq) {
            let seqs: Vec<u64> = tx
                .records
                .range(s..e)?
                .map(|r| r.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?;
            for seq in seqs {
                tx.pending.insert((sink, seq), 0u32)?;
                n += 1;
            }
        }
        self.remove_sink(sink);
        if keep {
            self.add_sink(sink, next_seq);
        }
        Ok(n)
    }

    /// Brings the ranges in line with `sinks`, the sinks new records are queued for: a sink
    /// that left gets its rows written (an orphan keeps its backlog, as rows, as before); a
    /// new one starts at `next_seq`.
    pub(super) fn reconcile(
        &mut self,
        tx: &mut Tx<'_>,
        sinks: &[String],
        next_seq: u64,
    ) -> Result<(), WalError> {
        let gone: Vec<String> = self
            .sinks()
            .filter(|s| !sinks.contains(s))
            .cloned()
            .collect();
        for sink in gone {
            self.materialize(tx, &sink, next_seq, false)?;
        }
        for sink in sinks {
            if !self.ranges.contains_key(sink) {
                self.add_sink(sink, next_seq);
            }
        }
        Ok(())
    }
}

/// Writes the rows of every range in the file and empties the table (`wal repair`: it then
/// reasons about rows only; the next open gives each configured sink its open range).
pub(super) fn materialize_all(txn: &WriteTransaction, next_seq: u64) -> Result<u64, WalError> {
    let mut table = txn.open_table(UNLEASED)?;
    let records = txn.open_table(RECORDS)?;
    let mut pending = txn.open_table(PENDING)?;
    let (rows, _) = virtual_rows(&table, &records, next_seq)?;
    for (sink, seq) in &rows {
        pending.insert((sink.as_str(), *seq), 0u32)?;
    }
    table.retain(|_, _| false)?;
    Ok(rows.len() as u64)
}

/// The table in a read transaction; `None` in a file of format 2 or earlier, which has none.
pub(super) fn table(txn: &redb::ReadTransaction) -> Result<Option<RangesTable>, WalError> {
    match txn.open_table(UNLEASED) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl WalStore {
    /// Whether `sink` holds `seq` pending: a row, or inside its ranges.
    pub(super) fn is_pending(&self, tx: &Tx<'_>, sink: &str, seq: u64) -> Result<bool, WalError> {
        Ok(self.unleased.contains(sink, seq) || tx.pending.get((sink, seq))?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(u: &Unleased, sink: &str) -> Vec<(u64, u64)> {
        u.within(sink, 0, u64::MAX)
    }

    #[test]
    fn ranges_split_and_shrink_as_seqs_are_taken() {
        let mut u = Unleased::default();
        u.add_sink("a", 1);
        assert!(u.contains("a", 1) && u.contains("a", 1_000_000));
        assert!(!u.contains("a", 0) && !u.contains("b", 5));
        u.remove("a", 1, 11); // a lease of 1..=10
        assert_eq!(spans(&u, "a"), vec![(11, u64::MAX)]);
        u.remove("a", 20, 21); // a record routed elsewhere
        assert_eq!(spans(&u, "a"), vec![(11, 20), (21, u64::MAX)]);
        assert_eq!(u.count("a", 30), 9 + 9);
        assert_eq!(u.first("a", 30), Some(11));
        assert_eq!(u.within("a", 15, 25), vec![(15, 20), (21, 25)]);
        u.remove("a", 5, 25); // across both, from before the first
        assert_eq!(spans(&u, "a"), vec![(25, u64::MAX)]);
        u.remove("a", 25, 25); // empty: nothing
        assert_eq!(spans(&u, "a"), vec![(25, u64::MAX)]);
        assert_eq!(u.first("a", 25), None, "nothing below next_seq");
        assert_eq!(u.count("a", 25), 0);
    }

    #[test]
    fn only_changed_sinks_are_dirty_and_crowding_is_seen() {
        let mut u = Unleased::default();
        u.add_sink("a", 1);
        u.add_sink("b", 1);
        u.dirty.clear();
        u.remove("a", 100, 200);
        u.remove("b", 0, 1); // nothing of b's there
        assert_eq!(u.dirty.iter().collect::<Vec<_>>(), vec!["a"]);
        assert!(u.crowded().is_empty());
        for i in 0..=MAX_RANGES as u64 {
            u.remove_all(1_000 + 2 * i, 1_001 + 2 * i);
        }
        assert_eq!(u.crowded(), vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn ranges_survive_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("u.redb")).unwrap();
        let mut u = Unleased::default();
        u.add_sink("a", 3);
        u.add_sink("b", 7);
        u.remove("a", 10, 12);
        let txn = db.begin_write().unwrap();
        u.save(&mut txn.open_table(UNLEASED).unwrap()).unwrap();
        txn.commit().unwrap();
        u.remove("a", 3, 10); // a's first range is gone: its row must go too
        let txn = db.begin_write().unwrap();
        u.save(&mut txn.open_table(UNLEASED).unwrap()).unwrap();
        txn.commit().unwrap();
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(UNLEASED).unwrap();
        let back = Unleased::load(&t).unwrap();
        assert_eq!(spans(&back, "a"), vec![(12, u64::MAX)]);
        assert_eq!(spans(&back, "b"), vec![(7, u64::MAX)]);
        assert!(table_contains(&t, "a", 12).unwrap());
        assert!(!table_contains(&t, "a", 11).unwrap());
        assert!(!table_contains(&t, "c", 12).unwrap());
    }
}
