//! `WalStore`: the WAL's state machine over redb, with no runtime in sight.
//!
//! Layout: this file holds the store and its stats; `open.rs` opening and migrating a file;
//! `apply.rs` the commit of a group of operations; `types.rs` the operations, results, limits
//! and errors; `unleased.rs` each sink's never-leased records; `meta.rs` the counters; `write.rs` appends and
//! the idempotency rows; `deliver.rs` leases and settles; `maintain.rs` retention and purges;
//! `compact.rs` giving space back; `reader.rs` read-only access.
//!
//! Every operation is applied inside one write transaction per group ([`WalStore::apply`]);
//! the actor decides the grouping. Invariants:
//! - A record's per-sink state is: Enqueued (never leased: inside the sink's unleased ranges,
//!   no row — `unleased.rs`; or a `pending` row, leased before), InFlight (a `pending` row
//!   whose seq is in `inflight` with a deadline in the future), Acked (no row: the sink is
//!   done with it) or Dead (a `dead` row with the reason).
//! - A record lives while some sink holds it — a `pending` row, an unleased range, or a
//!   `dead` row — and is deleted (or kept as history) when the last one goes
//!   ([`WalStore::release`]). So a record lives exactly as long as some sink may still need it
//!   or show it. When it was appended is kept per commit, not per record (`times.rs`).
//! - `attempts` is incremented durably-on-next-commit when a record is *leased*, not when it
//!   is settled, so a record that crashes its publisher cannot be redelivered forever.
//! - InFlight exists only in memory: reopening the store returns every lease to Enqueued,
//!   attempts preserved.
//! - Counters in `meta` change in the same transaction as the rows they count.
//! - After `apply` fails the store is gone (it is consumed): redb answers `PreviousIo` after an
//!   I/O error, so the only safe continuation is to reopen the file.
//!
//! Time: every age the store computes (expiry, leases, idempotency window, dead-letter and
//! rejected retention) is in *WAL time*, the `now` its caller passes, never a record's
//! wall-clock `receive_ts_ms`. The actor derives WAL time from a monotonic clock, based at
//! [`WalStore::clock_ms`] — the last WAL time committed, saved in `meta` at every commit — so
//! a wall clock that jumps (a board without a battery-backed clock, then NTP) moves no age,
//! across restarts too. Time while the gateway is stopped does not count. A file without
//! that counter (new, or from an older release, whose rows hold wall times) starts it at the
//! wall clock, so its old rows compare as before.

use super::idem;
use super::key_index::KeyIndex;
use super::quota::{self, DeviceQuota, Devices, QuotaLimits, Usage, DEVICE_USAGE};
use super::record::{
    AppendOutcome, DeadClass, DeadEntry, DeadReason, Fill, Lanes, Leased, LeasedBody, Outcome,
    Record, SinkStats, WalStats,
};
use super::rejected::{Rejected, REJECTED};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

mod backup;
mod compact;
mod deliver;
mod history;
mod idem_rows;
pub use history::{HistoryRow, SinkAck};
use idem_rows::{IdemBuf, IDEM, IDEM_V3};
mod apply;
mod dlq;
mod lookup;
mod maintain;
mod meta;
mod open;
mod reader;
mod repair;
mod replay;
use apply::Tx;
pub use apply::{Applier, GroupFailed};
use open::open_error;
mod sinks;
mod times;
mod types;
mod unleased;
use times::TIMES;
mod verify;
mod write;
use unleased::{Unleased, UNLEASED};

pub use backup::BackupReport;
pub use dlq::DeadRow;
pub use lookup::{RecordView, SinkState};
use meta::Meta;
pub use reader::{DeadLetter, Dump, WalReader};
pub use repair::RepairReport;
pub use sinks::{Removal, SinksChanged};
pub use types::*;
pub use verify::{Problem, VerifyReport};

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
#[cfg(test)]
pub(super) const RECORDS_FOR_TESTS: TableDefinition<u64, &[u8]> = RECORDS;
/// (sink, seq) -> attempts so far.
const PENDING: TableDefinition<(&str, u64), u32> = TableDefinition::new("pending");
/// (sink, seq) -> CBOR `DeadEntry`.
const DEAD: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("dead");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The WAL file's format, saved in `meta` as `format_version`.
///
/// - 1: the releases up to commit 7c6a1e7 (no version in `meta`; idempotency in
///   `idem_by_ts`; no `device_usage`; ages from wall-clock times).
/// - 2: idempotency keys scoped to the device (`idem_v2`), `device_usage`, the WAL clock
///   (`meta.clock_ms`).
/// - 3: unleased ranges (`unleased`): a record never leased has no `pending` row. A file of
///   format 2 migrates by giving each configured sink an open range from `next_seq` on (its
///   `pending` rows stay as they are).
/// - 4: no `refs` row per record: append times per commit (`times`), a record's life from the
///   sinks holding it. Earlier files migrate their `refs` times into `times` and drop it.
/// - 5: kept acks as runs (`acks`, `history/runs.rs`).
/// - 6: idempotency keys packed one row per commit (`idem_v3`, `idem_rows/`). Earlier files
///   convert their `idem_v2` rows (grouped by time) and drop it.
/// - 7: the rows' entries packed tighter (`idem_v4`, `idem_rows/entry.rs`: varint lengths, seq
///   from the row's id, a UUID correlation id as 16 bytes). Format 6's rows are packed again.
///
/// Opening migrates an older file in the same write transaction that stamps the new version
/// (redb commits it whole or not at all, so a crash during the migration leaves the older format whole, and
/// the next open migrates again). A newer version is refused ([`WalError::NewerFormat`]).
pub const FORMAT_VERSION: u64 = 7;

/// Most rows one maintenance sweep touches per kind, so a sweep never stalls appends for long
/// (a sweep shares its commit with appends). When a sweep hits the limit it reports `more`
/// and the actor sweeps again right away, between groups of appends.
const SWEEP_LIMIT: usize = 2_000;
/// Rows between two progress reports of the offline tools (verify, backup).
const PROGRESS_EVERY: u64 = 10_000;

/// The database, shared by the store and its readers (see [`WalStore::db`]).
pub(super) type Shared = std::sync::Arc<std::sync::RwLock<Database>>;

/// Reads the shared database (a poisoned lock only means a reader panicked mid-read).
pub(super) fn read_db(db: &Shared) -> std::sync::RwLockReadGuard<'_, Database> {
    db.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The WAL file and the in-memory lease table.
pub struct WalStore {
    /// Shared with [`WalReader`]s so inspection never waits for the writer (redb readers
    /// run beside it). Readers hold the read lock for the whole of their read; the store takes
    /// the write lock only to compact, which needs the database to itself.
    pub(super) db: Shared,
    path: PathBuf,
    sinks: Vec<String>,
    limits: WalLimits,
    meta: Meta,
    /// sink -> seq -> lease deadline (ms). Memory only, by design (see module doc).
    inflight: HashMap<String, BTreeMap<u64, u64>>,
    /// Each sink's records never leased (see `unleased.rs`): the mirror of `UNLEASED`,
    /// saved in the commit that changes it.
    unleased: Unleased,
    /// The time of the last `times` row (see `times.rs`).
    last_time: Option<u64>,
    /// sink -> first seq of its live lane (see [`Lanes`]). Memory only: after a restart,
    /// what the WAL holds is backlog.
    live_from: HashMap<String, u64>,
    /// Records below this seq were already examined for age expiry since open.
    expiry_cursor: u64,
    /// Where the history sweep goes on: the first seq of a run, and the seq in it
    /// (`history/mod.rs`).
    history_cursor: (u64, u64),
    /// Live plus kept bytes when kept history was last within `history_max_bytes`: a drain
    /// moves bytes from live to kept without raising the sum, and trimming what it pushed
    /// over the cap can wait for the deliveries while the sum stays at or below this mark
    /// (`MaintainReport::history_more`). In memory; 0 after an open (nothing deferred).
    stored_mark: u64,
    /// idempotency key -> the id of its row in `idem_v4` (`key_index.rs`, `idem_rows/`).
    /// Rebuilt on open. A wrong hint can only make a duplicate look new (stored twice:
    /// allowed), never the reverse, because a hit is confirmed against the row's key.
    idem: KeyIndex,
    /// The keys the commit in progress remembered, written as one row before it commits.
    idem_buf: IdemBuf,
    /// What each device holds (see `quota.rs`); saved in the same commit as the rows.
    devices: Devices,
    /// Free bytes of the WAL's filesystem, asked once per commit that appends.
    free_space: FreeSpace,
    /// See [`WalStore::set_tight`].
    tight: bool,
    /// Size of the file after the last commit.
    file_bytes: u64,
    /// Size the last compaction left the file at, and when (WAL time) the next attempt may be
    /// (see `compact.rs`).
    compact_floor: u64,
    compact_after_ms: u64,
    /// WAL time from which a compaction may run, once the conditions held since it was set
    /// (`compact.rs`, `COMPACT_SETTLE_MS`); `None` while they do not hold.
    compact_ready_at: Option<u64>,
    /// (sink, class) of every record made Dead by the last commits, for the caller to count
    /// once they are committed (`take_dead_events`); gone with the store if a commit fails.
    dead_events: Vec<(String, DeadClass)>,
    /// sink -> WAL time its oldest pending record was appended, as of the last maintenance.
    oldest_pending: BTreeMap<String, u64>,
    /// Negative control for the power-loss tests only: commit appends without fsync, so the
    /// test can show it would catch an ack-before-durable bug.
    negative_control_non_durable: bool,
}

impl std::fmt::Debug for WalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl WalStore {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tight after a commit met ENOSPC, until the reserve is back: appends refused
    /// (`DiskFull { reserve_in_use }`), every commit durable (see `apply`).
    pub fn set_tight(&mut self, tight: bool) {
        self.tight = tight;
    }

    /// Replaces the free-space probe (tests: a disk that fills on demand).
    pub fn set_free_space(&mut self, probe: FreeSpace) {
        self.free_space = probe;
    }

    /// The latest WAL time committed: where the actor's clock resumes after a (re)open.
    pub fn clock_ms(&self) -> u64 {
        self.meta.clock_ms
    }

    /// Counts by state and sink, from the in-memory mirror: no I/O, safe on any thread (the
    /// file size is taken after each commit, on the thread that committed).
    pub fn stats(&self) -> WalStats {
        let mut s = stats_from(&self.meta, &self.inflight, self.file_bytes);
        for k in &mut s.sinks {
            k.oldest_pending_age_ms = self
                .oldest_pending
                .get(&k.sink)
                .filter(|_| k.pending > 0)
                .map(|ts| self.meta.clock_ms.saturating_sub(*ts));
        }
        s.devices = self.devices.count();
        s.orphaned = s
            .sinks
            .iter()
            .filter(|k| !self.sinks.contains(&k.sink) && (k.pending > 0 || k.dead > 0))
            .map(|k| super::record::OrphanedSink {
                sink: k.sink.clone(),
                pending: k.pending,
                dead: k.dead,
            })
            .collect();
        s
    }

    /// (sink, reason) of every record made Dead since the last call: settles, expiry, and the
    /// ones killed at lease time (attempts used up without a settle, a corrupt record).
    pub fn take_dead_events(&mut self) -> Vec<(String, DeadClass)> {
        std::mem::take(&mut self.dead_events)
    }

    /// What one device holds of the WAL.
    pub fn device_usage(&self, device: &str) -> Usage {
        self.devices.get(device)
    }

    /// Test-only: break durability on purpose (see `negative_control_non_durable`).
    #[cfg(test)]
    pub(crate) fn break_durability_for_negative_control(&mut self) {
        self.negative_control_non_durable = true;
    }
}

fn stats_from(
    meta: &Meta,
    inflight: &HashMap<String, BTreeMap<u64, u64>>,
    file_bytes: u64,
) -> WalStats {
    WalStats {
        records: meta.records,
        live_bytes: meta.live_bytes,
        file_bytes,
        idempotency_keys: meta.idem_keys,
        rejected: meta.rejected,
        devices: 0,
        history_records: meta.history_records,
        history_bytes: meta.history_bytes,
        sinks: meta
            .sinks
            .iter()
            .map(|(sink, (p, d, a))| SinkStats {
                sink: sink.clone(),
                pending: *p,
                in_flight: inflight.get(sink).map(|m| m.len() as u64).unwrap_or(0),
                dead: *d,
                acked_total: *a,
                oldest_pending_age_ms: None,
            })
            .collect(),
        orphaned: Vec::new(),
    }
}
