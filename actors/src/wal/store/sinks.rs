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
}

/// What a change of the sink set did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinksChanged {
    pub dropped: u64,
    pub moved: u64,
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
                    Removal::MoveTo(to)
                        if tx.pending.get((to.as_str(), seq))?.is_none()
                            && tx.dead.get((to.as_str(), seq))?.is_none() =>
                    {
                        tx.pending.insert((to.as_str(), seq), 0u32)?;
                        meta.sink(to).0 += 1;
                        out.moved += 1;
                    }
                    Removal::MoveTo(_) => self.unref(tx, meta, seq)?,
                    Removal::Drop => {
                        self.unref(tx, meta, seq)?;
                        out.dropped += 1;
                    }
                }
            }
            meta.sink(&sink).0 = 0;
            if how == Removal::Drop {
                let dead = self.purge_dead(tx, meta, &sink, usize::MAX, |_| true)?;
                out.dropped += dead as u64;
            }
        }
        for s in &sinks {
            meta.sink(s);
        }
        self.sinks = sinks;
        Ok(out)
    }
}
