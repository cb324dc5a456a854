//! Giving space back: compacting the file after a backlog drained.
//!
//! redb never returns freed pages in the middle of its file to the filesystem; a 1 M-record
//! backlog leaves a file of hundreds of MiB that no longer holds anything. After a maintenance
//! commit the store runs redb's `compact()` — a series of ordinary two-phase commits that move
//! live pages down and truncate the file — when all of these hold:
//! - the file is at least `compact_min_bytes`, and at least twice the size the last
//!   compaction left (compacting leaves no free pages, so the next commits grow the file again
//!   a little: without this, compaction would chase its own tail);
//! - the backlog has drained: the live record bytes are at most 1/64 of the file (compacting
//!   *during* a drain moved the backlog's pages for seconds while delivery waited);
//! - the file's pages are less than half in use;
//! - the last attempt was at least [`COMPACT_PAUSE_MS`] ago (WAL time);
//! - the two conditions before held for `wal.compact_settle_ms` (2 s of WAL time by default) —
//!   unless the file is at `max_file_bytes`, where appends wait for it. The tail of a drain
//!   passes the live-bytes test for a moment before the backlog is gone; compacting then
//!   stalled its last batches (a 1 M drain took 9.3 s instead of 6.1–6.5 s, docs/benchmarks.md,
//!   session 12).
//!
//! Each step commits whole or not at all, so a crash during compaction leaves a file that
//! opens with every committed row (`compact_tests` cuts the power at every step;
//! `tests/crash.rs` kills the gateway while it compacts).
//!
//! Compaction needs the database to itself: it takes the write lock of the shared handle,
//! so it waits for a `WalReader` read in progress (an admin read, bounded) and readers wait
//! for it. It runs on the WAL's blocking thread, so appends wait meanwhile (tens to a few
//! hundred ms after a 1 M backlog: docs/benchmarks.md).

use super::*;

/// Least WAL time between two attempts (ms).
pub(super) const COMPACT_PAUSE_MS: u64 = 30_000;

impl WalStore {
    /// Compacts the file if the conditions above hold; `None` if it did not run. A failed
    /// compaction is logged, not returned: the commit before it stands, and an I/O error
    /// that broke the file shows at the next commit, which reopens the store.
    pub(super) fn maybe_compact(&mut self, now: u64) -> Option<Compacted> {
        if now < self.compact_after_ms {
            return None;
        }
        match self.try_compact(now) {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(error = %e, "WAL compaction failed; tried again once the file grows");
                self.compact_floor = self.file_bytes;
                None
            }
        }
    }

    fn try_compact(&mut self, now: u64) -> Result<Option<Compacted>, WalError> {
        let min = self.limits.compact_min_bytes;
        let before = self.file_bytes;
        if min == 0 || before < min || before < self.compact_floor.saturating_mul(2) {
            return Ok(None);
        }
        // Cheap first: the backlog must have drained before the page count (a walk of the
        // trees) is worth taking; kept history (rows compaction keeps) at most a quarter of it.
        let (live, kept) = (self.meta.live_bytes, self.meta.history_bytes);
        if live.saturating_mul(64) > before || (live + kept).saturating_mul(4) > before {
            self.compact_ready_at = None;
            return Ok(None);
        }
        // Held long enough, or appends wait for it (the file at its limit).
        let at_limit = self.limits.max_file_bytes > 0 && before >= self.limits.max_file_bytes;
        let ready_at = *self
            .compact_ready_at
            .get_or_insert(now.saturating_add(self.limits.compact_settle_ms));
        if now < ready_at && !at_limit {
            return Ok(None);
        }
        self.compact_ready_at = None;
        let used = {
            let txn = read_db(&self.db).begin_write()?;
            let st = txn.stats()?;
            txn.abort()?;
            st.allocated_pages() * st.page_size() as u64
        };
        self.compact_after_ms = now.saturating_add(COMPACT_PAUSE_MS);
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
        // Nothing to give back until the file doubles from where this attempt left it.
        self.compact_floor = after;
        Ok(Some(Compacted {
            before,
            after,
            millis,
        }))
    }
}

impl WalStore {
    /// `edge-gateway wal compact`: gives the free space of a WAL file no process holds open
    /// back to the filesystem, whatever the conditions above (each step commits whole).
    pub fn offline_compact(path: &Path) -> Result<Compacted, WalError> {
        let before = std::fs::metadata(path).map_or(0, |m| m.len());
        let started = std::time::Instant::now();
        let mut db = Database::open(path).map_err(|e| open_error(path, e))?;
        // Each call moves what it can; it answers whether it moved anything.
        while db
            .compact()
            .map_err(|e| WalError::Storage(format!("compaction: {e}")))?
        {}
        drop(db);
        Ok(Compacted {
            before,
            after: std::fs::metadata(path).map_or(before, |m| m.len()),
            millis: started.elapsed().as_millis() as u64,
        })
    }
}
