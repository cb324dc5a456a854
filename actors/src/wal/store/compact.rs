//! Giving space back: compacting the file after a backlog drained.
//!
//! redb never returns freed pages in the middle of its file to the filesystem; a 1 M-record
//! backlog leaves a file of hundreds of MiB that no longer holds anything. After a maintenance
//! commit, when the file is at least `compact_min_bytes` and more than twice what its pages
//! hold, the store runs redb's `compact()`: a series of ordinary two-phase commits that move
//! live pages down and truncate the file. Each step commits whole or not at all, so a crash
//! during compaction leaves a file that opens with every committed row (`tests/crash.rs`
//! kills the gateway while it compacts).
//!
//! Compaction needs the database to itself: it takes the write lock of the shared handle,
//! so it waits for a `WalReader` read in progress (an admin read, bounded) and readers wait
//! for it. It runs on the WAL's blocking thread, so appends wait meanwhile; the precondition
//! (rows a small part of the file) keeps that short. After an attempt (given back or not),
//! the next waits until the file grew again.

use super::*;

impl WalStore {
    /// Compacts the file if the conditions above hold; `None` if it did not run. A failed
    /// compaction is logged, not returned: the commit before it stands, and an I/O error
    /// that broke the file shows at the next commit, which reopens the store.
    pub(super) fn maybe_compact(&mut self) -> Option<Compacted> {
        match self.try_compact() {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(error = %e, "WAL compaction failed; tried again once the file grows");
                self.compact_floor = self.file_bytes;
                None
            }
        }
    }

    fn try_compact(&mut self) -> Result<Option<Compacted>, WalError> {
        let min = self.limits.compact_min_bytes;
        let before = self.file_bytes;
        if min == 0 || before < min || before <= self.compact_floor {
            return Ok(None);
        }
        // Cheap first: the record bytes alone must be a small part of the file before the
        // page count (a walk of the trees) is worth taking.
        if self.meta.live_bytes.saturating_mul(4) > before {
            return Ok(None);
        }
        let used = {
            let txn = read_db(&self.db).begin_write()?;
            let st = txn.stats()?;
            txn.abort()?;
            st.allocated_pages() * st.page_size() as u64
        };
        if used.saturating_mul(2) >= before {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        self.db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .compact()
            .map_err(|e| WalError::Storage(format!("compaction: {e}")))?;
        let millis = started.elapsed().as_millis() as u64;
        let after = std::fs::metadata(&self.path).map_or(before, |m| m.len());
        self.file_bytes = after;
        // Nothing to give back until the file grows past where this attempt left it.
        self.compact_floor = after;
        Ok(Some(Compacted {
            before,
            after,
            millis,
        }))
    }
}
