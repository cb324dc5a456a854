//! When each record was appended, one row per commit (issue 9, part 2, step 2).
//!
//! Every age the store computes from a record's append (expiry, a `Fill` lease's wait, the
//! oldest pending age) used to read a `refs` row written per record. WAL time is monotonic in
//! seq — records get their seqs in commit order and a commit's records share its time — so a
//! row per commit that appends (`times`: first seq of the commit → WAL time) says the same:
//! a record's time is the one of the last row at or below its seq. Expiry is a seq cut.
//!
//! Invariants (checked by `wal verify`): the rows' seqs and times both increase; the first row
//! is at or below the first stored record. Rows wholly below the first stored record are
//! deleted by maintenance (the last row is always kept: the next append compares with it).

use super::*;

/// First seq of a commit that appended -> the WAL time of that commit.
pub(super) const TIMES: TableDefinition<u64, u64> = TableDefinition::new("times");

/// The WAL time `seq` was appended at, if any row covers it.
pub(super) fn appended_at(
    table: &impl ReadableTable<u64, u64>,
    seq: u64,
) -> Result<Option<u64>, WalError> {
    Ok(table
        .range(..=seq)?
        .next_back()
        .transpose()?
        .map(|(_, t)| t.value()))
}

/// The first seq at or above `from` appended at `cutoff` or later (`next_seq` if none): every
/// seq in `from..` below it was appended before `cutoff`. Reads the rows from the one covering
/// `from`, so a sweep that moves `from` along reads each row about once.
pub(super) fn first_at_or_after(
    table: &impl ReadableTable<u64, u64>,
    from: u64,
    cutoff: u64,
    next_seq: u64,
) -> Result<u64, WalError> {
    // No row covers `from` (a damaged file: `wal verify` names it): those records' age is
    // unknown, and an unknown age never expires anything.
    let Some(start) = table
        .range(..=from)?
        .next_back()
        .transpose()?
        .map(|(k, _)| k.value())
    else {
        return Ok(from);
    };
    for row in table.range(start..)? {
        let (k, v) = row?;
        if v.value() >= cutoff {
            return Ok(k.value());
        }
    }
    Ok(next_seq)
}

/// Format 3 and earlier: seq -> (rows naming the record, WAL time of its append).
pub(super) const REFS: TableDefinition<u64, (u32, u64)> = TableDefinition::new("refs");

/// The table in a read transaction; `None` in a file of format 3 or earlier, which has none.
pub(super) fn table(
    txn: &redb::ReadTransaction,
) -> Result<Option<redb::ReadOnlyTable<u64, u64>>, WalError> {
    match txn.open_table(TIMES) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Format 3 and earlier kept a `refs` row per record: seq -> (rows naming it, append time).
/// Their times become rows of `times` (one per run of equal times) and the table goes; the
/// counts are not needed (a record lives while a sink holds it: `WalStore::release`).
pub(super) fn migrate_refs(txn: &WriteTransaction) -> Result<Option<u64>, WalError> {
    let Some(old) = txn
        .list_tables()?
        .find(|t| redb::TableHandle::name(t) == "refs")
    else {
        return Ok(None);
    };
    let mut n = 0;
    {
        let refs = txn.open_table(REFS)?;
        let mut times = txn.open_table(TIMES)?;
        let mut last: Option<u64> = times.last()?.map(|(_, t)| t.value());
        for row in refs.iter()? {
            let (k, v) = row?;
            let (seq, at) = (k.value(), v.value().1);
            if last.is_none_or(|t| at > t) {
                times.insert(seq, at)?;
                last = Some(at);
            }
            n += 1;
        }
    }
    txn.delete_table(old)?;
    Ok(Some(n))
}

impl WalStore {
    /// Notes that `seq` (the first record of a run) was appended at `now`: a row, unless the
    /// last row already says that time.
    pub(super) fn note_appended(
        &mut self,
        tx: &mut Tx<'_>,
        seq: u64,
        now: u64,
    ) -> Result<(), WalError> {
        if self.last_time.is_none_or(|t| now > t) {
            tx.times.insert(seq, now)?;
            self.last_time = Some(now);
        }
        Ok(())
    }

    /// Deletes the rows wholly below the first stored record (all but the last row).
    pub(super) fn trim_times(&mut self, tx: &mut Tx<'_>) -> Result<usize, WalError> {
        let first = tx.records.first()?.map(|(k, _)| k.value());
        let mut gone = Vec::new();
        let mut rows = tx.times.iter()?.peekable();
        while let Some(row) = rows.next() {
            let start = row?.0.value();
            let Some(Ok((next, _))) = rows.peek() else {
                break; // the last row stays
            };
            if first.is_some_and(|f| next.value() > f) || gone.len() >= SWEEP_LIMIT {
                break;
            }
            gone.push(start);
        }
        drop(rows);
        for start in &gone {
            tx.times.remove(*start)?;
        }
        Ok(gone.len())
    }

    /// Whether any sink other than `except` still holds `seq`: a pending row, an unleased
    /// range, or a dead letter. `except` is the sink whose row was just removed (its states
    /// are exclusive, so it holds nothing else of `seq`).
    pub(super) fn held_elsewhere(
        &self,
        tx: &Tx<'_>,
        meta: &Meta,
        seq: u64,
        except: Option<&str>,
    ) -> Result<bool, WalError> {
        for sink in meta.sinks.keys() {
            if Some(sink.as_str()) == except {
                continue;
            }
            if self.unleased.contains(sink, seq)
                || tx.pending.get((sink.as_str(), seq))?.is_some()
                || tx.dead.get((sink.as_str(), seq))?.is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_records_time_is_its_commits_and_expiry_is_a_seq_cut() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(TIMES).unwrap();
            // Commits at 100 (seqs 1..=4), 130 (5..=9), 200 (10..).
            for (seq, at) in [(1, 100), (5, 130), (10, 200)] {
                t.insert(seq, at).unwrap();
            }
            assert_eq!(appended_at(&t, 0).unwrap(), None);
            assert_eq!(appended_at(&t, 4).unwrap(), Some(100));
            assert_eq!(appended_at(&t, 5).unwrap(), Some(130));
            assert_eq!(appended_at(&t, 99).unwrap(), Some(200));
            assert_eq!(first_at_or_after(&t, 1, 101, 20).unwrap(), 5);
            assert_eq!(first_at_or_after(&t, 1, 130, 20).unwrap(), 5);
            assert_eq!(first_at_or_after(&t, 1, 0, 20).unwrap(), 1);
            assert_eq!(first_at_or_after(&t, 1, 201, 20).unwrap(), 20);
            assert_eq!(
                first_at_or_after(&t, 0, 201, 20).unwrap(),
                0,
                "below every row: unknown"
            );
            // From inside a run: its own row counts (seq 7 was appended at 130).
            assert_eq!(first_at_or_after(&t, 7, 131, 20).unwrap(), 10);
            assert_eq!(first_at_or_after(&t, 7, 120, 20).unwrap(), 5);
            t.remove(1).unwrap(); // seqs 1..=4 have no time now
            assert_eq!(
                first_at_or_after(&t, 2, 1_000, 20).unwrap(),
                2,
                "unknown ages never expire"
            );
        }
        txn.commit().unwrap();
    }
}
