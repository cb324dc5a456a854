//! Read-only access: inspection from other threads, offline stats, test dumps.

use super::*;

impl WalStore {
    /// A read-only handle for inspection from other threads.
    pub fn reader(&self) -> WalReader {
        WalReader(self.db.clone())
    }

    /// Dead-lettered entries of a sink, oldest first (for inspection).
    pub fn dead_letters(&self, sink: &str, limit: usize) -> Result<Vec<DeadLetter>, WalError> {
        self.reader().dead_letters(sink, limit)
    }

    /// Stats of a WAL file that no process holds open (`edge-gateway wal stats`).
    pub fn offline_stats(path: &Path) -> Result<WalStats, WalError> {
        let db = Database::open(path).map_err(|e| open_error(path, e))?;
        let txn = db.begin_write()?;
        let meta = Meta::load(&txn)?;
        txn.abort()?;
        if meta.format_version > FORMAT_VERSION {
            return Err(WalError::NewerFormat {
                path: path.to_path_buf(),
                found: meta.format_version,
                supported: FORMAT_VERSION,
            });
        }
        let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Ok(stats_from(&meta, &HashMap::new(), file_bytes))
    }

    /// Every row's key, for model-based tests: pending (with attempts), dead, records, keys.
    #[doc(hidden)]
    pub fn dump(&self) -> Result<Dump, WalError> {
        let db = read_db(&self.db);
        let txn = db.begin_read()?;
        let mut d = Dump::default();
        for row in txn.open_table(PENDING)?.iter()? {
            let (k, v) = row?;
            d.pending
                .insert((k.value().0.to_string(), k.value().1), v.value());
        }
        // Records never leased: pending, no attempts, like a row.
        if let Some(t) = unleased::table(&txn)? {
            let next_seq = self.meta.next_seq;
            let (rows, _) = unleased::virtual_rows(&t, &txn.open_table(RECORDS)?, next_seq)?;
            for key in rows {
                d.pending.insert(key, 0);
            }
        }
        for row in txn.open_table(DEAD)?.iter()? {
            let (k, _) = row?;
            d.dead.insert((k.value().0.to_string(), k.value().1));
        }
        // Live records only: held by a sink (one kept as history is held by none).
        let held: std::collections::HashSet<u64> = d
            .pending
            .keys()
            .chain(d.dead.iter())
            .map(|(_, seq)| *seq)
            .collect();
        for row in txn.open_table(RECORDS)?.iter()? {
            let seq = row?.0.value();
            if held.contains(&seq) {
                d.records.insert(seq);
            }
        }
        d.idem = match txn.open_table(IDEM) {
            Ok(t) => idem_rows::keys(&t)?,
            Err(redb::TableError::TableDoesNotExist(_)) => Default::default(),
            Err(e) => return Err(e.into()),
        };
        Ok(d)
    }

    /// Row counts straight from the tables, for tests that check the counters.
    pub fn count_rows(&self) -> Result<(u64, u64, u64), WalError> {
        let db = read_db(&self.db);
        let txn = db.begin_read()?;
        // Records never leased count as the pending rows they stand for.
        let unleased = match unleased::table(&txn)? {
            Some(t) => {
                let records = txn.open_table(RECORDS)?;
                unleased::virtual_rows(&t, &records, self.meta.next_seq)?
                    .0
                    .len() as u64
            }
            None => 0,
        };
        Ok((
            txn.open_table(RECORDS)?.len()?,
            txn.open_table(PENDING)?.len()? + unleased,
            txn.open_table(DEAD)?.len()?,
        ))
    }
}

/// A dead letter: its WAL seq, why and when it died, and the record (if still readable).
pub type DeadLetter = (u64, DeadEntry, Option<Record>);

/// Read-only access to the WAL (redb readers never block the writer). Blocking: call from a
/// blocking thread.
#[derive(Clone)]
pub struct WalReader(pub(super) Shared);

impl WalReader {
    /// Dead-lettered entries of a sink, oldest first (for inspection).
    pub fn dead_letters(
        &self,
        sink: &str,
        limit: usize,
    ) -> Result<Vec<(u64, DeadEntry, Option<Record>)>, WalError> {
        // The guard lives as long as the read: a compaction waits for it.
        let db = read_db(&self.0);
        let txn = db.begin_read()?;
        let dead = txn.open_table(DEAD)?;
        let records = txn.open_table(RECORDS)?;
        let mut out = Vec::new();
        for row in dead.range((sink, 0)..=(sink, u64::MAX))?.take(limit) {
            let (k, v) = row?;
            let seq = k.value().1;
            let entry: DeadEntry =
                ciborium::from_reader(v.value()).map_err(|e| WalError::Storage(e.to_string()))?;
            let rec = records
                .get(seq)?
                .and_then(|b| Record::decode(b.value()).ok());
            out.push((seq, entry, rec));
        }
        Ok(out)
    }
}

impl WalReader {
    /// Rejected messages, newest first.
    pub fn rejected(&self, limit: usize) -> Result<Vec<(u64, Rejected)>, WalError> {
        // The guard lives as long as the read: a compaction waits for it.
        let db = read_db(&self.0);
        let txn = db.begin_read()?;
        let t = txn.open_table(REJECTED)?;
        let mut out = Vec::new();
        for row in t.iter()?.rev().take(limit) {
            let (k, v) = row?;
            out.push((
                k.value(),
                Rejected::decode(v.value()).map_err(WalError::Storage)?,
            ));
        }
        Ok(out)
    }
}

/// All rows of a store, by key (see [`WalStore::dump`]).
#[doc(hidden)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dump {
    pub pending: BTreeMap<(String, u64), u32>,
    pub dead: std::collections::BTreeSet<(String, u64)>,
    pub records: std::collections::BTreeSet<u64>,
    pub idem: std::collections::BTreeSet<String>,
}
