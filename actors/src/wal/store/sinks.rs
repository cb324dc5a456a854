//! The set of sinks changes while the gateway runs (`config.apply`, issue 12): new records
//! are queued for the new set; a removed sink's records are dropped or moved to another sink,
//! in the same transaction, never left pending for a sink nothing delivers to.

use super::*;

/// What becomes of a removed sink's pending records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Deleted (with its dead letters), counted and reported.
    Drop,
    /// Pending for this sink instead (a record it already holds is not doubled); the removed
    /// sink's dead letters are kept under its name for inspection.
    MoveTo(String),
    /// A rename (`edge-gateway wal move-sink`): pending records and dead letters both carried
    /// over to this sink (one it already holds is not doubled).
    Rename(String),
}

/// What a change of the sink set did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinksChanged {
    pub dropped: u64,
    pub moved: u64,
    /// Dead letters carried over by a [`Removal::Rename`].
    pub moved_dead: u64,
}

impl WalStore {
    /// The sinks new records are queued for.
    pub fn sinks(&self) -> &[String] {
        &self.sinks
    }

    pub(super) fn set_sinks(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        sinks: Vec<String>,
        removed: Vec<(String, Removal)>,
    ) -> Result<SinksChanged, WalError> {
        let mut out = SinksChanged::default();
        for (sink, how) in removed {
            self.inflight.remove(&sink);
            // Its unleased records get rows first: the moves below work on rows.
            self.unleased.materialize(tx, &sink, meta.next_seq, false)?;
            let mut seqs = Vec::new();
            for row in tx
                .pending
                .range((sink.as_str(), 0)..=(sink.as_str(), u64::MAX))?
            {
                seqs.push(row?.0.value().1);
            }
            for &seq in &seqs {
                tx.pending.remove((sink.as_str(), seq))?;
                match &how {
                    Removal::MoveTo(to) | Removal::Rename(to)
                        if !self.is_pending(tx, to, seq)?
                            && tx.dead.get((to.as_str(), seq))?.is_none() =>
                    {
                        tx.pending.insert((to.as_str(), seq), 0u32)?;
                        meta.sink(to).0 += 1;
                        out.moved += 1;
                    }
                    Removal::MoveTo(_) | Removal::Rename(_) => {
                        self.release(tx, meta, seq, Some(sink.as_str()))?
                    }
                    Removal::Drop => {
                        self.release(tx, meta, seq, Some(sink.as_str()))?;
                        out.dropped += 1;
                    }
                }
            }
            meta.sink(&sink).0 = 0;
            if let Removal::Rename(to) = &how {
                out.moved_dead += self.rename_dead(tx, meta, &sink, to)?;
            }
            if how == Removal::Drop {
                let dead = self.purge_dead(tx, meta, &sink, usize::MAX, None)?;
                out.dropped += dead as u64;
            }
        }
        for s in &sinks {
            meta.sink(s);
        }
        self.unleased.reconcile(tx, &sinks, meta.next_seq)?;
        self.sinks = sinks;
        Ok(out)
    }

    /// Carries `from`'s dead letters over to `to` (one `to` already holds is dropped).
    fn rename_dead(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        from: &str,
        to: &str,
    ) -> Result<u64, WalError> {
        let mut rows = Vec::new();
        for row in tx.dead.range((from, 0)..=(from, u64::MAX))? {
            let (k, v) = row?;
            rows.push((k.value().1, v.value().to_vec()));
        }
        let mut moved = 0;
        for (seq, entry) in rows {
            tx.dead.remove((from, seq))?;
            let f = meta.sink(from);
            f.1 = f.1.saturating_sub(1);
            if tx.dead.get((to, seq))?.is_none() && !self.is_pending(tx, to, seq)? {
                tx.dead.insert((to, seq), entry.as_slice())?;
                meta.sink(to).1 += 1;
                moved += 1;
            } else {
                self.release(tx, meta, seq, Some(from))?;
            }
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::tests::{limits, rec};

    #[test]
    fn a_rename_carries_pending_records_and_dead_letters_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.redb");
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let s = WalStore::open(&path, names(&["old", "keep"]), limits()).unwrap();
        let recs = (0..3).map(|i| rec(&format!("k{i}"), 1)).collect();
        let (s, _) = s.apply(vec![Op::Append(recs)], 1).unwrap();
        let (s, _) = s
            .apply(
                vec![Op::Lease {
                    sink: "old".into(),
                    max: 1,
                    fill: None,
                    lanes: None,
                }],
                1,
            )
            .unwrap();
        let (s, _) = s
            .apply(
                vec![Op::Settle {
                    sink: "old".into(),
                    outcomes: vec![(1, Outcome::Dead("400".into()))],
                }],
                1,
            )
            .unwrap();
        drop(s);
        // Reopened without `old`: its records are orphaned, then renamed to `new`.
        let s = WalStore::open(&path, names(&["new", "keep"]), limits()).unwrap();
        let orphan = &s.stats().orphaned;
        assert_eq!((orphan[0].pending, orphan[0].dead), (2, 1), "{orphan:?}");
        let (s, r) = s
            .apply(
                vec![Op::Sinks {
                    sinks: names(&["new", "keep"]),
                    removed: vec![("old".into(), Removal::Rename("new".into()))],
                }],
                2,
            )
            .unwrap();
        assert_eq!(
            r[0],
            OpResult::SinksSet(SinksChanged {
                dropped: 0,
                moved: 2,
                moved_dead: 1
            })
        );
        let st = s.stats();
        assert!(st.orphaned.is_empty(), "{st:?}");
        let new = st.sinks.iter().find(|k| k.sink == "new").unwrap();
        assert_eq!((new.pending, new.dead), (2, 1));
        // Every record is still held (by `keep` too), none doubled.
        assert_eq!(st.records, 3);
    }
}
