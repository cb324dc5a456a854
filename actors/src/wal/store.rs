//! `WalStore`: the WAL's state machine over redb, with no runtime in sight.
//!
//! Every operation is applied inside one write transaction per group ([`WalStore::apply`]);
//! the actor decides the grouping. Invariants:
//! - A record's per-sink state is: Enqueued (a `pending` row, not leased), InFlight (a
//!   `pending` row whose seq is in `inflight` with a deadline in the future), Acked (no row:
//!   the sink is done with it) or Dead (a `dead` row with the reason).
//! - `refs[seq].0` counts the `pending` plus `dead` rows naming `seq`; at zero the record is
//!   deleted. So a record lives exactly as long as some sink may still need it or show it.
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

use super::idem::{self, IDEM};
use super::quota::{self, DeviceQuota, Devices, QuotaLimits, Usage, DEVICE_USAGE};
use super::record::{AppendOutcome, DeadEntry, Leased, Outcome, Record, SinkStats, WalStats};
use super::rejected::{Rejected, REJECTED};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
#[cfg(test)]
pub(super) const RECORDS_FOR_TESTS: TableDefinition<u64, &[u8]> = RECORDS;
/// seq -> (rows that still name the record, WAL time of its append).
const REFS: TableDefinition<u64, (u32, u64)> = TableDefinition::new("refs");
/// (sink, seq) -> attempts so far.
const PENDING: TableDefinition<(&str, u64), u32> = TableDefinition::new("pending");
/// (sink, seq) -> CBOR `DeadEntry`.
const DEAD: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("dead");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Most rows one maintenance sweep touches per kind, so a sweep never stalls appends for long
/// (a sweep shares its commit with appends). When a sweep hits the limit it reports `more`
/// and the actor sweeps again right away, between groups of appends.
const SWEEP_LIMIT: usize = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("cannot open WAL {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("WAL database is already open (another gateway process, or a previous instance still closing)")]
    AlreadyOpen,
    #[error("WAL storage error: {0}")]
    Storage(String),
}

impl WalError {
    /// The filesystem is full (ENOSPC): the store must be reopened, but nothing is wrong
    /// with it, and delivery must go on (see the WAL actor).
    pub fn is_no_space(&self) -> bool {
        let s = match self {
            WalError::Storage(s) => s.as_str(),
            _ => return false,
        };
        s.contains("os error 28") || s.contains("No space left") || s.contains("no storage space")
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for WalError {
            fn from(e: $t) -> Self { WalError::Storage(e.to_string()) }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Drops the idempotency table of earlier versions (see `idem.rs`); `Some(keys)` if there
/// was one.
fn drop_v1_idempotency_table(
    txn: &WriteTransaction,
    meta: &mut Meta,
) -> Result<Option<u64>, WalError> {
    let Some(old) = txn
        .list_tables()?
        .find(|t| redb::TableHandle::name(t) == idem::IDEM_V1_NAME)
    else {
        return Ok(None);
    };
    txn.delete_table(old)?;
    let dropped = meta.idem_keys;
    meta.idem_keys = txn.open_table(IDEM)?.len()?;
    Ok(Some(dropped))
}

/// The in-memory index's key for an idempotency key. Only compared within one process (the
/// index is rebuilt from the rows at open), so the hasher need not be stable across releases.
fn key_hash(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

fn open_error(path: &Path, source: redb::DatabaseError) -> WalError {
    match source {
        redb::DatabaseError::DatabaseAlreadyOpen => WalError::AlreadyOpen,
        source => WalError::Open {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Limits and retention, in WAL units (milliseconds, bytes).
#[derive(Debug, Clone)]
pub struct WalLimits {
    pub max_bytes: u64,
    pub max_records: u64,
    pub max_age_ms: u64,
    pub idempotency_window_ms: u64,
    pub idempotency_max_keys: u64,
    pub dead_retention_ms: u64,
    /// Rejected messages kept for inspection, at most.
    pub max_rejected: u64,
    pub max_attempts: u32,
    pub lease_ms: u64,
    /// redb page cache size.
    pub cache_bytes: usize,
    /// Per-device caps (0 = none) and the fair-share rule (see `quota.rs`).
    pub device_max: Usage,
    pub device_fair_share: bool,
    /// Dead letters kept per sink, at most: past it the oldest are purged (counted).
    pub max_dead_per_sink: u64,
    /// Appends are refused while the filesystem has less free than this (0: no check).
    pub min_free_bytes: u64,
}

impl WalLimits {
    pub fn from_config(
        wal: &edge_gateway_config::WalConfig,
        d: &edge_gateway_config::DeliveryConfig,
    ) -> Self {
        WalLimits {
            max_bytes: wal.max_bytes,
            max_records: wal.max_records,
            max_age_ms: wal.max_age_secs.saturating_mul(1000),
            idempotency_window_ms: wal.idempotency_window_secs.saturating_mul(1000),
            idempotency_max_keys: wal.idempotency_max_keys,
            dead_retention_ms: wal.dead_retention_secs.saturating_mul(1000),
            max_rejected: wal.max_rejected,
            max_attempts: d.max_attempts,
            lease_ms: d.lease_timeout_ms,
            cache_bytes: usize::try_from(wal.cache_bytes).unwrap_or(usize::MAX),
            device_max: Usage {
                records: wal.device_max_records,
                bytes: wal.device_max_bytes,
            },
            device_fair_share: wal.device_fair_share,
            max_dead_per_sink: wal.max_dead_letters,
            min_free_bytes: wal.min_free_bytes,
        }
    }

    fn quota(&self) -> QuotaLimits {
        QuotaLimits {
            wal: Usage {
                records: self.max_records,
                bytes: self.max_bytes,
            },
            device_max: self.device_max,
            fair_share: self.device_fair_share,
        }
    }
}

/// One operation of a commit group.
#[derive(Debug, Clone)]
pub enum Op {
    Append(Vec<Record>),
    Lease {
        sink: String,
        max: usize,
    },
    Settle {
        sink: String,
        outcomes: Vec<(u64, Outcome)>,
    },
    Maintain,
    /// Dead -> Enqueued (attempts reset) for up to `limit` of a sink's dead letters, oldest
    /// first: the operator's replay after fixing what made the sink refuse them.
    Requeue {
        sink: String,
        limit: usize,
    },
    /// Keep a refused message for inspection (see `rejected.rs`).
    Reject(Rejected),
    /// Every InFlight lease of every sink back to Enqueued (a new dispatcher starts: whoever
    /// held them is gone). Attempts already counted stay counted.
    ReleaseLeases,
    /// The operator deletes up to `limit` of a sink's dead letters matching `filter`.
    PurgeDead {
        sink: String,
        filter: DeadFilter,
        limit: usize,
    },
}

/// Which dead letters a purge takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadFilter {
    /// Reason class as in metrics (`expired`, `max_attempts`, `corrupt`, `invalid`,
    /// `rejected`); `None`: any.
    pub reason: Option<String>,
    /// Dead for at least this long (WAL time, see "Time"); `None`: any age.
    pub older_than_ms: Option<u64>,
}

impl DeadFilter {
    /// The reason classes a filter may name (`metrics::reason_class`).
    pub const REASONS: [&'static str; 5] =
        ["expired", "max_attempts", "corrupt", "invalid", "rejected"];

    fn matches(&self, e: &DeadEntry, now: u64) -> bool {
        self.reason
            .as_deref()
            .is_none_or(|r| crate::metrics::reason_class(&e.reason) == r)
            && self
                .older_than_ms
                .is_none_or(|age| e.dead_at_ms.saturating_add(age) <= now)
    }
}

impl Op {
    /// Appends must be durable before they are answered; maintenance makes earlier
    /// non-durable settles durable at a bounded interval.
    fn needs_durability(&self) -> bool {
        matches!(
            self,
            Op::Append(_)
                | Op::Maintain
                | Op::Requeue { .. }
                | Op::Reject(_)
                | Op::PurgeDead { .. }
        )
    }
}

/// The answer to one operation, in the same position as its `Op`.
#[derive(Debug, Clone, PartialEq)]
pub enum OpResult {
    Appended(Result<Vec<AppendOutcome>, AppendRefused>),
    Leased(Vec<Leased>),
    Settled {
        sink: String,
        acked: usize,
        dead: usize,
        retried: usize,
        /// Of `dead`: retries that used up `max_attempts`.
        exhausted: usize,
    },
    Maintained(MaintainReport),
    Requeued(usize),
    /// The id the rejected message was stored under.
    Rejected(u64),
    /// Leases released.
    LeasesReleased(usize),
    /// Dead letters purged by the operator.
    Purged {
        sink: String,
        purged: usize,
    },
}

/// The filesystem holding the WAL is nearly full: appends wait, delivery goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("disk nearly full: {free} bytes free, wal.min_free_bytes is {min_free}; appends resume once delivery frees space")]
pub struct DiskFull {
    pub free: u64,
    pub min_free: u64,
}

/// Free bytes of the WAL's filesystem (`None`: unknown, no check).
pub type FreeSpace = std::sync::Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// `statvfs` of `dir`: bytes an unprivileged writer may still use.
pub fn free_space_of(dir: PathBuf) -> FreeSpace {
    std::sync::Arc::new(move || {
        rustix::fs::statvfs(&dir)
            .ok()
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
    })
}

/// Why an append was refused whole (nothing stored).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendRefused {
    /// The filesystem is nearly full: backpressure for everyone, delivery unaffected.
    #[error(transparent)]
    DiskFull(#[from] DiskFull),
    /// The WAL is over a limit: backpressure for everyone.
    #[error(transparent)]
    Full(#[from] Full),
    /// This device is over its share: backpressure for it alone.
    #[error(transparent)]
    DeviceQuota(#[from] DeviceQuota),
}

/// The WAL is over a limit: the append was refused whole, nothing stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("WAL full: {records} records / {bytes} bytes live (limits {max_records} / {max_bytes})")]
pub struct Full {
    pub records: u64,
    pub bytes: u64,
    pub max_records: u64,
    pub max_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintainReport {
    pub expired: u64,
    pub dead_purged: u64,
    pub idempotency_purged: u64,
    pub rejected_purged: u64,
    /// Dead letters purged because a sink held more than `max_dead_per_sink`, by sink.
    pub dead_over_budget: Vec<(String, u64)>,
    /// A limit was hit: another sweep has work to do.
    pub more: bool,
}

/// Counters kept in `meta`; mirrored in memory between commits.
#[derive(Debug, Clone, Default)]
struct Meta {
    next_seq: u64,
    live_bytes: u64,
    records: u64,
    idem_keys: u64,
    /// Next id in the rejected table, and rows in it.
    rejected_next: u64,
    rejected: u64,
    /// 1 once `device_usage` is maintained for this file (older files are scanned once).
    device_usage_v1: u64,
    /// The latest WAL time committed (see "Time" above).
    clock_ms: u64,
    /// Per sink: (pending, dead, acked_total).
    sinks: BTreeMap<String, (u64, u64, u64)>,
}

impl Meta {
    fn load(txn: &WriteTransaction) -> Result<Meta, WalError> {
        let t = txn.open_table(META)?;
        let mut m = Meta {
            next_seq: 1,
            ..Default::default()
        };
        for row in t.iter()? {
            let (k, v) = row?;
            let (k, v) = (k.value().to_string(), v.value());
            match k.as_str() {
                "next_seq" => m.next_seq = v,
                "live_bytes" => m.live_bytes = v,
                "records" => m.records = v,
                "idem_keys" => m.idem_keys = v,
                "rejected_next" => m.rejected_next = v,
                "rejected" => m.rejected = v,
                "device_usage_v1" => m.device_usage_v1 = v,
                "clock_ms" => m.clock_ms = v,
                other => {
                    if let Some((kind, sink)) = other.split_once('/') {
                        let e = m.sinks.entry(sink.to_string()).or_default();
                        match kind {
                            "pending" => e.0 = v,
                            "dead" => e.1 = v,
                            "acked" => e.2 = v,
                            _ => {}
                        }
                    }
                }
            }
        }
        Ok(m)
    }

    fn save(&self, txn: &WriteTransaction) -> Result<(), WalError> {
        let mut t = txn.open_table(META)?;
        t.insert("next_seq", self.next_seq)?;
        t.insert("live_bytes", self.live_bytes)?;
        t.insert("records", self.records)?;
        t.insert("idem_keys", self.idem_keys)?;
        t.insert("rejected_next", self.rejected_next)?;
        t.insert("rejected", self.rejected)?;
        t.insert("device_usage_v1", self.device_usage_v1)?;
        t.insert("clock_ms", self.clock_ms)?;
        for (sink, (p, d, a)) in &self.sinks {
            t.insert(format!("pending/{sink}").as_str(), *p)?;
            t.insert(format!("dead/{sink}").as_str(), *d)?;
            t.insert(format!("acked/{sink}").as_str(), *a)?;
        }
        Ok(())
    }

    fn sink(&mut self, sink: &str) -> &mut (u64, u64, u64) {
        self.sinks.entry(sink.to_string()).or_default()
    }
}

/// The WAL file and the in-memory lease table.
pub struct WalStore {
    /// Shared with [`WalReader`]s so inspection never waits for the writer.
    pub(super) db: std::sync::Arc<Database>,
    path: PathBuf,
    sinks: Vec<String>,
    limits: WalLimits,
    meta: Meta,
    /// sink -> seq -> lease deadline (ms). Memory only, by design (see module doc).
    inflight: HashMap<String, BTreeMap<u64, u64>>,
    /// Records below this seq were already examined for age expiry since open.
    expiry_cursor: u64,
    /// hash(idempotency key) -> receive_ts_ms of its row in `IDEM`. Rebuilt on open. A hash
    /// collision can only make a duplicate look new (stored twice: allowed), never the reverse,
    /// because a hit is confirmed against the row's key.
    idem: HashMap<u64, u64>,
    /// What each device holds (see `quota.rs`); saved in the same commit as the rows.
    devices: Devices,
    /// Free bytes of the WAL's filesystem, asked once per commit that appends.
    free_space: FreeSpace,
    /// Size of the file after the last commit.
    file_bytes: u64,
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
    /// Opens (creating if needed) the WAL at `path`. Blocking: call from a blocking thread.
    pub fn open(path: &Path, sinks: Vec<String>, limits: WalLimits) -> Result<WalStore, WalError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| WalError::Storage(e.to_string()))?;
        }
        let db = Database::builder()
            .set_cache_size(limits.cache_bytes)
            .create(path)
            .map_err(|e| open_error(path, e))?;
        // Readings are the operator's data: owner only, whatever the umask.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| WalError::Storage(format!("chmod 600 {}: {e}", path.display())))?;
        }
        Self::from_db(db, path, sinks, limits)
    }

    /// Opens over a caller-supplied storage backend (fault-injection tests); `path` is only
    /// reported in stats.
    #[doc(hidden)]
    pub fn open_with_backend(
        backend: impl redb::StorageBackend,
        path: &Path,
        sinks: Vec<String>,
        limits: WalLimits,
    ) -> Result<WalStore, WalError> {
        let db = Database::builder()
            .set_cache_size(limits.cache_bytes)
            .create_with_backend(backend)
            .map_err(|e| open_error(path, e))?;
        Self::from_db(db, path, sinks, limits)
    }

    fn from_db(
        db: Database,
        path: &Path,
        sinks: Vec<String>,
        limits: WalLimits,
    ) -> Result<WalStore, WalError> {
        let txn = db.begin_write()?;
        // Create every table so readers never meet a missing one.
        txn.open_table(RECORDS)?;
        txn.open_table(REFS)?;
        txn.open_table(PENDING)?;
        txn.open_table(DEAD)?;
        txn.open_table(REJECTED)?;
        txn.open_table(IDEM)?;
        txn.open_table(DEVICE_USAGE)?;
        let mut meta = Meta::load(&txn)?;
        let dropped = drop_v1_idempotency_table(&txn, &mut meta)?;
        let devices = if meta.device_usage_v1 == 1 {
            Devices::load(&txn.open_table(DEVICE_USAGE)?)?
        } else {
            let mut d = Devices::scan(&txn.open_table(RECORDS)?)?;
            d.save(&mut txn.open_table(DEVICE_USAGE)?)?;
            meta.device_usage_v1 = 1;
            d
        };
        if meta.clock_ms == 0 {
            meta.clock_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_millis() as u64);
        }
        meta.save(&txn)?;
        let mut idem = HashMap::new();
        for row in txn.open_table(IDEM)?.iter()? {
            let (k, _) = row?;
            let (ts, key) = k.value();
            idem.insert(key_hash(key), ts);
        }
        txn.commit()?;
        if let Some(n) = dropped {
            tracing::warn!(
                keys = n,
                "WAL upgraded: idempotency keys are now scoped to the device and checked \
                 against the reading's content; the {n} keys of the old format were dropped \
                 (a retry of a reading accepted before the upgrade is stored again: a \
                 duplicate downstream, never a loss)"
            );
        }
        Ok(WalStore {
            db: std::sync::Arc::new(db),
            path: path.to_path_buf(),
            sinks,
            limits,
            meta,
            inflight: HashMap::new(),
            expiry_cursor: 0,
            idem,
            devices,
            free_space: free_space_of(path.parent().unwrap_or(Path::new(".")).to_path_buf()),
            file_bytes: std::fs::metadata(path).map_or(0, |m| m.len()),
            // Only in a build with the `negative-control` feature (never a default): the
            // chaos harness's proof that it can see loss.
            negative_control_non_durable: cfg!(feature = "negative-control"),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the free-space probe (tests: a disk that fills on demand).
    pub fn set_free_space(&mut self, probe: FreeSpace) {
        self.free_space = probe;
    }

    /// The latest WAL time committed: where the actor's clock resumes after a (re)open.
    pub fn clock_ms(&self) -> u64 {
        self.meta.clock_ms
    }

    /// Applies `ops` in one transaction, durable (fsync) if any op needs it, and answers each.
    /// Consumes the store: on error it is dropped and must be reopened.
    pub fn apply(
        mut self,
        ops: Vec<Op>,
        now_ms: u64,
    ) -> Result<(WalStore, Vec<OpResult>), WalError> {
        let durable = ops.iter().any(Op::needs_durability) && !self.negative_control_non_durable;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        let mut meta = self.meta.clone();
        meta.clock_ms = meta.clock_ms.max(now_ms);
        // Once per commit that appends: is there room to take more in?
        let disk_full =
            if self.limits.min_free_bytes > 0 && ops.iter().any(|o| matches!(o, Op::Append(_))) {
                (self.free_space)()
                    .filter(|free| *free < self.limits.min_free_bytes)
                    .map(|free| DiskFull {
                        free,
                        min_free: self.limits.min_free_bytes,
                    })
            } else {
                None
            };
        let mut results = Vec::with_capacity(ops.len());
        {
            let mut tx = Tx::open(&txn)?;
            for op in ops {
                let r = match op {
                    Op::Append(_) if disk_full.is_some() => {
                        OpResult::Appended(Err(disk_full.clone().expect("checked").into()))
                    }
                    Op::Append(records) => {
                        OpResult::Appended(self.append(&mut tx, &mut meta, records, now_ms)?)
                    }
                    Op::Lease { sink, max } => {
                        OpResult::Leased(self.lease(&mut tx, &mut meta, &sink, max, now_ms)?)
                    }
                    Op::Settle { sink, outcomes } => {
                        self.settle(&mut tx, &mut meta, &sink, outcomes, now_ms)?
                    }
                    Op::Maintain => {
                        OpResult::Maintained(self.maintain(&mut tx, &mut meta, now_ms)?)
                    }
                    Op::Requeue { sink, limit } => {
                        OpResult::Requeued(self.requeue(&mut tx, &mut meta, &sink, limit)?)
                    }
                    Op::ReleaseLeases => {
                        let n = self.inflight.values().map(BTreeMap::len).sum();
                        self.inflight.clear();
                        OpResult::LeasesReleased(n)
                    }
                    Op::PurgeDead {
                        sink,
                        filter,
                        limit,
                    } => {
                        let purged = self.purge_dead(&mut tx, &mut meta, &sink, limit, |e| {
                            filter.matches(e, now_ms)
                        })?;
                        OpResult::Purged { sink, purged }
                    }
                    Op::Reject(mut r) => {
                        r.kept_ms = now_ms;
                        let id = meta.rejected_next.max(1);
                        tx.rejected.insert(id, r.encode().as_slice())?;
                        meta.rejected_next = id + 1;
                        meta.rejected += 1;
                        OpResult::Rejected(id)
                    }
                };
                results.push(r);
            }
            self.devices.save(&mut tx.device_usage)?;
        }
        meta.save(&txn)?;
        txn.commit()?;
        self.meta = meta;
        self.file_bytes = std::fs::metadata(&self.path).map_or(self.file_bytes, |m| m.len());
        Ok((self, results))
    }

    fn append(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        mut records: Vec<Record>,
        now: u64,
    ) -> Result<Result<Vec<AppendOutcome>, AppendRefused>, WalError> {
        // Pass 1: classify without writing, so a refused append leaves nothing behind. Keys
        // are borrowed from the records (no copies on this serial path); the fingerprint is
        // normally cached by the ingest edge.
        enum Class {
            New(u64),
            Conflict(u64),
            Dup(u64, String),
            DupInBatch(usize),
        }
        let mut classes = Vec::with_capacity(records.len());
        {
            // key -> (index of its latest new reading in this batch, fingerprint)
            let mut seen: HashMap<&str, (usize, u64)> = HashMap::new();
            for (i, r) in records.iter().enumerate() {
                let fp = idem::fingerprint_of(r);
                let key = r.idempotency_key.as_str();
                let class = match seen.get(key) {
                    Some(&(first, f)) if f == fp => Class::DupInBatch(first),
                    Some(_) => Class::Conflict(fp),
                    None => match idem::classify(self.window_row(tx, key, now)?.as_ref(), fp) {
                        idem::Verdict::New => Class::New(fp),
                        idem::Verdict::Conflict => Class::Conflict(fp),
                        idem::Verdict::Duplicate {
                            seq,
                            correlation_id,
                        } => Class::Dup(seq, correlation_id),
                    },
                };
                if let Class::New(_) | Class::Conflict(_) = class {
                    seen.insert(key, (i, fp));
                }
                classes.push(class);
            }
        }
        // A conflicting reading is stored under a derived key (`idem.rs`), but its row in
        // `IDEM` replaces the row of the key it arrived with (`arrived`).
        enum Plan {
            New {
                fp: u64,
                arrived: Option<String>,
                bytes: Vec<u8>,
            },
            Dup(u64, String),
            DupInBatch(usize),
        }
        let (mut new_count, mut new_bytes) = (0u64, 0u64);
        let mut plans = Vec::with_capacity(records.len());
        for (r, class) in records.iter_mut().zip(classes) {
            let (fp, arrived) = match class {
                Class::Dup(seq, corr) => {
                    plans.push(Plan::Dup(seq, corr));
                    continue;
                }
                Class::DupInBatch(first) => {
                    plans.push(Plan::DupInBatch(first));
                    continue;
                }
                Class::New(fp) => (fp, None),
                Class::Conflict(fp) => {
                    let derived = idem::conflict_key(&r.idempotency_key, fp);
                    (fp, Some(std::mem::replace(&mut r.idempotency_key, derived)))
                }
            };
            let bytes = r.encode();
            new_count += 1;
            new_bytes += bytes.len() as u64;
            plans.push(Plan::New { fp, arrived, bytes });
        }
        if new_count > 0
            && (meta.records + new_count > self.limits.max_records
                || meta.live_bytes + new_bytes > self.limits.max_bytes)
        {
            return Ok(Err(Full {
                records: meta.records,
                bytes: meta.live_bytes,
                max_records: self.limits.max_records,
                max_bytes: self.limits.max_bytes,
            }
            .into()));
        }
        // Per-device share (one request holds one device's readings; checked per device
        // all the same).
        let mut adding: HashMap<&str, Usage> = HashMap::new();
        for (r, plan) in records.iter().zip(&plans) {
            if let Plan::New { bytes, .. } = plan {
                let a = adding.entry(r.device_id.as_str()).or_default();
                a.records += 1;
                a.bytes += bytes.len() as u64;
            }
        }
        let total = Usage {
            records: meta.records,
            bytes: meta.live_bytes,
        };
        let quota = self.limits.quota();
        for (device, add) in adding {
            if let Err(e) = quota::check(&quota, device, self.devices.get(device), add, total) {
                return Ok(Err(e.into()));
            }
        }
        // Pass 2: write.
        let mut out: Vec<AppendOutcome> = Vec::with_capacity(records.len());
        for (r, plan) in records.iter().zip(plans) {
            let outcome = match plan {
                Plan::Dup(seq, correlation_id) => AppendOutcome::Duplicate {
                    seq,
                    correlation_id,
                },
                Plan::DupInBatch(first) => match &out[first] {
                    AppendOutcome::Stored {
                        seq,
                        correlation_id,
                        ..
                    }
                    | AppendOutcome::Duplicate {
                        seq,
                        correlation_id,
                    } => AppendOutcome::Duplicate {
                        seq: *seq,
                        correlation_id: correlation_id.clone(),
                    },
                },
                Plan::New { fp, arrived, bytes } => {
                    let seq = meta.next_seq;
                    meta.next_seq += 1;
                    tx.records.insert(seq, bytes.as_slice())?;
                    tx.refs.insert(seq, (self.sinks.len() as u32, now))?;
                    for sink in &self.sinks {
                        tx.pending.insert((sink.as_str(), seq), 0u32)?;
                        meta.sink(sink).0 += 1;
                    }
                    let key = arrived.as_deref().unwrap_or(&r.idempotency_key);
                    let row = IdemRow {
                        at: now,
                        seq,
                        correlation_id: &r.correlation_id,
                        fp,
                    };
                    self.remember_key(tx, meta, key, row)?;
                    meta.records += 1;
                    meta.live_bytes += bytes.len() as u64;
                    self.devices.add(&r.device_id, bytes.len() as u64);
                    if self.sinks.is_empty() {
                        // Nothing will ever need it; keep the idempotency key only.
                        self.unref(tx, meta, seq)?;
                    }
                    AppendOutcome::Stored {
                        seq,
                        correlation_id: r.correlation_id.clone(),
                        key_conflict: arrived.is_some(),
                    }
                }
            };
            out.push(outcome);
        }
        Ok(Ok(out))
    }

    /// The row of `key` if it is still within the idempotency window.
    fn window_row(&self, tx: &Tx<'_>, key: &str, now: u64) -> Result<Option<idem::Seen>, WalError> {
        let Some(&ts) = self.idem.get(&key_hash(key)) else {
            return Ok(None);
        };
        if ts.saturating_add(self.limits.idempotency_window_ms) <= now {
            return Ok(None);
        }
        Ok(tx.idem.get((ts, key))?.map(|v| {
            let (seq, corr, fingerprint) = v.value();
            idem::Seen {
                seq,
                correlation_id: corr.to_string(),
                fingerprint,
            }
        }))
    }

    /// `key` now names `row`'s reading: its row (and index entry) replace any older one, and
    /// past the cap the oldest key is forgotten.
    fn remember_key(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        key: &str,
        row: IdemRow<'_>,
    ) -> Result<(), WalError> {
        let IdemRow {
            at: now,
            seq,
            correlation_id,
            fp,
        } = row;
        let h = key_hash(key);
        if let Some(old_ts) = self.idem.insert(h, now) {
            // An expired or conflicting key being reused (or a hash collision): drop its
            // old row.
            if tx.idem.remove((old_ts, key))?.is_some() {
                meta.idem_keys = meta.idem_keys.saturating_sub(1);
            }
        }
        if tx
            .idem
            .insert((now, key), (seq, correlation_id, fp))?
            .is_none()
        {
            meta.idem_keys += 1;
        }
        // Past the cap, forget the oldest key now: one delete at the front of the table per
        // insert, instead of a purge backlog competing with delivery.
        while meta.idem_keys > self.limits.idempotency_max_keys {
            let Some((k, _)) = tx.idem.pop_first()? else {
                break;
            };
            let (ts, old_key) = k.value();
            let h = key_hash(old_key);
            if self.idem.get(&h) == Some(&ts) {
                self.idem.remove(&h);
            }
            meta.idem_keys -= 1;
        }
        Ok(())
    }

    fn lease(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        sink: &str,
        max: usize,
        now: u64,
    ) -> Result<Vec<Leased>, WalError> {
        let leased_now = {
            let inflight = self.inflight.entry(sink.to_string()).or_default();
            inflight.retain(|_, deadline| *deadline > now);
            let mut picked = Vec::new();
            for row in tx.pending.range((sink, 0)..=(sink, u64::MAX))? {
                let (k, v) = row?;
                let seq = k.value().1;
                if inflight.contains_key(&seq) {
                    continue;
                }
                picked.push((seq, v.value()));
                if picked.len() >= max {
                    break;
                }
            }
            picked
        };
        let mut out = Vec::with_capacity(leased_now.len());
        for (seq, attempts) in leased_now {
            if attempts >= self.limits.max_attempts {
                // Leased that often without a settle: its publisher keeps dying on it.
                let reason =
                    format!("max attempts ({attempts}) reached without a settled delivery");
                self.kill(tx, meta, sink, seq, attempts, reason, now)?;
                continue;
            }
            let body = tx.records.get(seq)?.map(|b| Record::decode(b.value()));
            let record = match body {
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    self.kill(
                        tx,
                        meta,
                        sink,
                        seq,
                        attempts,
                        format!("corrupt record: {e}"),
                        now,
                    )?;
                    continue;
                }
                None => {
                    self.kill(
                        tx,
                        meta,
                        sink,
                        seq,
                        attempts,
                        "record body missing".into(),
                        now,
                    )?;
                    continue;
                }
            };
            tx.pending.insert((sink, seq), attempts + 1)?;
            self.inflight
                .entry(sink.to_string())
                .or_default()
                .insert(seq, now.saturating_add(self.limits.lease_ms));
            out.push(Leased {
                seq,
                attempts: attempts + 1,
                record,
            });
        }
        Ok(out)
    }

    fn settle(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        sink: &str,
        outcomes: Vec<(u64, Outcome)>,
        now: u64,
    ) -> Result<OpResult, WalError> {
        let (mut acked, mut dead, mut retried, mut exhausted) = (0, 0, 0, 0);
        for (seq, outcome) in outcomes {
            if let Some(m) = self.inflight.get_mut(sink) {
                m.remove(&seq);
            }
            let Some(attempts) = tx.pending.get((sink, seq))?.map(|v| v.value()) else {
                continue; // already settled by an earlier lease of the same record
            };
            match outcome {
                Outcome::Acked => {
                    tx.pending.remove((sink, seq))?;
                    let s = meta.sink(sink);
                    s.0 -= 1;
                    s.2 += 1;
                    self.unref(tx, meta, seq)?;
                    acked += 1;
                }
                Outcome::Retry(reason) if attempts >= self.limits.max_attempts => {
                    let reason = format!("max attempts ({attempts}) reached; last error: {reason}");
                    self.kill(tx, meta, sink, seq, attempts, reason, now)?;
                    dead += 1;
                    exhausted += 1;
                }
                Outcome::Retry(_) => retried += 1,
                Outcome::Release => {
                    tx.pending.insert((sink, seq), attempts.saturating_sub(1))?;
                    retried += 1;
                }
                Outcome::Dead(reason) => {
                    self.kill(tx, meta, sink, seq, attempts, reason, now)?;
                    dead += 1;
                }
            }
        }
        Ok(OpResult::Settled {
            sink: sink.to_string(),
            acked,
            dead,
            retried,
            exhausted,
        })
    }

    fn requeue(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        sink: &str,
        limit: usize,
    ) -> Result<usize, WalError> {
        let seqs: Vec<u64> = tx
            .dead
            .range((sink, 0)..=(sink, u64::MAX))?
            .take(limit)
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for &seq in &seqs {
            // The dead row's reference passes to the pending row: `refs` is unchanged.
            tx.dead.remove((sink, seq))?;
            tx.pending.insert((sink, seq), 0u32)?;
            let s = meta.sink(sink);
            s.1 = s.1.saturating_sub(1);
            s.0 += 1;
        }
        Ok(seqs.len())
    }

    /// Pending -> Dead for one sink. The dead row keeps the record referenced.
    #[allow(clippy::too_many_arguments)]
    fn kill(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        sink: &str,
        seq: u64,
        attempts: u32,
        reason: String,
        now: u64,
    ) -> Result<(), WalError> {
        tx.pending.remove((sink, seq))?;
        if let Some(m) = self.inflight.get_mut(sink) {
            m.remove(&seq);
        }
        let entry = DeadEntry {
            reason,
            attempts,
            dead_at_ms: now,
        };
        let mut buf = Vec::new();
        ciborium::into_writer(&entry, &mut buf).expect("encoding to a Vec cannot fail");
        tx.dead.insert((sink, seq), buf.as_slice())?;
        let s = meta.sink(sink);
        s.0 -= 1;
        s.1 += 1;
        Ok(())
    }

    /// One row fewer names `seq`; the last one out deletes the record.
    fn unref(&mut self, tx: &mut Tx<'_>, meta: &mut Meta, seq: u64) -> Result<(), WalError> {
        let Some((n, ts)) = tx.refs.get(seq)?.map(|v| v.value()) else {
            return Ok(());
        };
        if n > 1 {
            tx.refs.insert(seq, (n - 1, ts))?;
            return Ok(());
        }
        tx.refs.remove(seq)?;
        if let Some(body) = tx.records.remove(seq)? {
            let body = body.value();
            meta.live_bytes = meta.live_bytes.saturating_sub(body.len() as u64);
            let device = quota::device_of(body).unwrap_or_default();
            self.devices.remove(&device, body.len() as u64);
        }
        meta.records = meta.records.saturating_sub(1);
        Ok(())
    }

    /// Deletes up to `limit` of `sink`'s dead letters that `keep_going` accepts, oldest first.
    fn purge_dead(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        sink: &str,
        limit: usize,
        matches: impl Fn(&DeadEntry) -> bool,
    ) -> Result<usize, WalError> {
        let mut seqs = Vec::new();
        for row in tx.dead.range((sink, 0)..=(sink, u64::MAX))? {
            if seqs.len() >= limit {
                break;
            }
            let (k, v) = row?;
            let entry: Option<DeadEntry> = ciborium::from_reader(v.value()).ok();
            // An unreadable entry matches only an unfiltered purge.
            if entry.as_ref().map_or_else(
                || {
                    matches(&DeadEntry {
                        reason: String::new(),
                        attempts: 0,
                        dead_at_ms: 0,
                    })
                },
                &matches,
            ) {
                seqs.push(k.value().1);
            }
        }
        for &seq in &seqs {
            tx.dead.remove((sink, seq))?;
            let s = meta.sink(sink);
            s.1 = s.1.saturating_sub(1);
            self.unref(tx, meta, seq)?;
        }
        Ok(seqs.len())
    }

    fn maintain(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        now: u64,
    ) -> Result<MaintainReport, WalError> {
        let mut report = MaintainReport::default();
        // Idempotency keys that left the window (the count cap is kept by `append`; `excess`
        // only covers a cap lowered in the config since the last run).
        let cutoff = now.saturating_sub(self.limits.idempotency_window_ms);
        let excess = meta
            .idem_keys
            .saturating_sub(self.limits.idempotency_max_keys) as usize;
        let old: Vec<(u64, String)> = tx
            .idem
            .iter()?
            .enumerate()
            .take_while(|(i, r)| *i < excess || r.as_ref().is_ok_and(|(k, _)| k.value().0 < cutoff))
            .map(|(_, r)| r)
            .take(SWEEP_LIMIT)
            .map(|r| r.map(|(k, _)| (k.value().0, k.value().1.to_string())))
            .collect::<Result<_, _>>()?;
        report.more |= old.len() >= SWEEP_LIMIT;
        for (ts, key) in old {
            tx.idem.remove((ts, key.as_str()))?;
            let h = key_hash(&key);
            if self.idem.get(&h) == Some(&ts) {
                self.idem.remove(&h);
            }
            meta.idem_keys = meta.idem_keys.saturating_sub(1);
            report.idempotency_purged += 1;
        }
        // Undelivered records past max age: Dead with reason `expired`, per sink still pending.
        let age_cutoff = now.saturating_sub(self.limits.max_age_ms);
        let candidates: Vec<(u64, u64)> = tx
            .refs
            .range(self.expiry_cursor..)?
            .map(|r| r.map(|(k, v)| (k.value(), v.value().1)))
            .take_while(|r| r.as_ref().map_or(true, |(_, ts)| *ts < age_cutoff))
            .take(SWEEP_LIMIT)
            .collect::<Result<_, _>>()?;
        report.more |= candidates.len() >= SWEEP_LIMIT;
        for (seq, ts) in candidates {
            if ts >= age_cutoff {
                break;
            }
            for sink in self.sinks.clone() {
                let attempts = tx.pending.get((sink.as_str(), seq))?.map(|v| v.value());
                if let Some(attempts) = attempts {
                    self.kill(tx, meta, &sink, seq, attempts, "expired".into(), now)?;
                    report.expired += 1;
                }
            }
            self.expiry_cursor = seq + 1;
        }
        // Dead letters past their retention.
        let dead_cutoff = now.saturating_sub(self.limits.dead_retention_ms);
        for sink in meta.sinks.keys().cloned().collect::<Vec<_>>() {
            let rows: Vec<(u64, u64)> = tx
                .dead
                .range((sink.as_str(), 0)..=(sink.as_str(), u64::MAX))?
                .take(SWEEP_LIMIT)
                .map(|r| {
                    r.map(|(k, v)| {
                        let at = ciborium::from_reader::<DeadEntry, _>(v.value())
                            .map(|d| d.dead_at_ms)
                            .unwrap_or(0);
                        (k.value().1, at)
                    })
                })
                .collect::<Result<_, _>>()?;
            for (seq, at) in rows {
                if at >= dead_cutoff {
                    break;
                }
                tx.dead.remove((sink.as_str(), seq))?;
                let s = meta.sink(&sink);
                s.1 = s.1.saturating_sub(1);
                self.unref(tx, meta, seq)?;
                report.dead_purged += 1;
            }
        }
        // Dead letters over their budget, oldest first: a sink that dead-letters everything
        // for days must not fill the WAL that live ingest needs.
        for (sink, (_, dead, _)) in meta.sinks.clone() {
            let excess = dead.saturating_sub(self.limits.max_dead_per_sink) as usize;
            if excess == 0 {
                continue;
            }
            let n = excess.min(SWEEP_LIMIT);
            let purged = self.purge_dead(tx, meta, &sink, n, |_| true)?;
            report.more |= excess > SWEEP_LIMIT;
            report.dead_over_budget.push((sink, purged as u64));
        }
        // Rejected messages past retention or over the count cap, oldest first.
        let excess = meta.rejected.saturating_sub(self.limits.max_rejected) as usize;
        let old: Vec<u64> = tx
            .rejected
            .iter()?
            .enumerate()
            .take_while(|(i, r)| {
                *i < excess
                    || r.as_ref().is_ok_and(|(_, v)| {
                        Rejected::decode(v.value()).map_or(true, |e| {
                            let kept = if e.kept_ms > 0 {
                                e.kept_ms
                            } else {
                                e.received_ms
                            };
                            kept < dead_cutoff
                        })
                    })
            })
            .take(SWEEP_LIMIT)
            .map(|(_, r)| r.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()?;
        report.more |= old.len() >= SWEEP_LIMIT;
        for id in old {
            tx.rejected.remove(id)?;
            meta.rejected = meta.rejected.saturating_sub(1);
            report.rejected_purged += 1;
        }
        Ok(report)
    }

    /// Counts by state and sink, from the in-memory mirror: no I/O, safe on any thread (the
    /// file size is taken after each commit, on the thread that committed).
    pub fn stats(&self) -> WalStats {
        let mut s = stats_from(&self.meta, &self.inflight, self.file_bytes);
        s.devices = self.devices.count();
        s
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
        let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Ok(stats_from(&meta, &HashMap::new(), file_bytes))
    }

    /// Every row's key, for model-based tests: pending (with attempts), dead, records, keys.
    #[doc(hidden)]
    pub fn dump(&self) -> Result<Dump, WalError> {
        let txn = self.db.begin_read()?;
        let mut d = Dump::default();
        for row in txn.open_table(PENDING)?.iter()? {
            let (k, v) = row?;
            d.pending
                .insert((k.value().0.to_string(), k.value().1), v.value());
        }
        for row in txn.open_table(DEAD)?.iter()? {
            let (k, _) = row?;
            d.dead.insert((k.value().0.to_string(), k.value().1));
        }
        for row in txn.open_table(RECORDS)?.iter()? {
            d.records.insert(row?.0.value());
        }
        for row in txn.open_table(IDEM)?.iter()? {
            d.idem.insert(row?.0.value().1.to_string());
        }
        Ok(d)
    }

    /// Row counts straight from the tables, for tests that check the counters.
    pub fn count_rows(&self) -> Result<(u64, u64, u64), WalError> {
        let txn = self.db.begin_read()?;
        Ok((
            txn.open_table(RECORDS)?.len()?,
            txn.open_table(PENDING)?.len()?,
            txn.open_table(DEAD)?.len()?,
        ))
    }
}

/// A dead letter: its WAL seq, why and when it died, and the record (if still readable).
pub type DeadLetter = (u64, DeadEntry, Option<Record>);

/// Read-only access to the WAL (redb readers never block the writer). Blocking: call from a
/// blocking thread.
#[derive(Clone)]
pub struct WalReader(std::sync::Arc<Database>);

impl WalReader {
    /// Dead-lettered entries of a sink, oldest first (for inspection).
    pub fn dead_letters(
        &self,
        sink: &str,
        limit: usize,
    ) -> Result<Vec<(u64, DeadEntry, Option<Record>)>, WalError> {
        let txn = self.0.begin_read()?;
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
        let txn = self.0.begin_read()?;
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
        sinks: meta
            .sinks
            .iter()
            .map(|(sink, (p, d, a))| SinkStats {
                sink: sink.clone(),
                pending: *p,
                in_flight: inflight.get(sink).map(|m| m.len() as u64).unwrap_or(0),
                dead: *d,
                acked_total: *a,
            })
            .collect(),
    }
}

/// What an idempotency row holds, and when (WAL time) it was written.
struct IdemRow<'a> {
    at: u64,
    seq: u64,
    correlation_id: &'a str,
    fp: u64,
}

/// The tables of one write transaction, opened once per group.
struct Tx<'t> {
    records: redb::Table<'t, u64, &'static [u8]>,
    refs: redb::Table<'t, u64, (u32, u64)>,
    pending: redb::Table<'t, (&'static str, u64), u32>,
    dead: redb::Table<'t, (&'static str, u64), &'static [u8]>,
    idem: redb::Table<'t, (u64, &'static str), (u64, &'static str, u64)>,
    rejected: redb::Table<'t, u64, &'static [u8]>,
    device_usage: redb::Table<'t, &'static str, (u64, u64)>,
}

impl<'t> Tx<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Tx<'t>, WalError> {
        Ok(Tx {
            records: txn.open_table(RECORDS)?,
            refs: txn.open_table(REFS)?,
            pending: txn.open_table(PENDING)?,
            dead: txn.open_table(DEAD)?,
            idem: txn.open_table(IDEM)?,
            rejected: txn.open_table(REJECTED)?,
            device_usage: txn.open_table(DEVICE_USAGE)?,
        })
    }
}
