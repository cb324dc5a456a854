//! What crosses the store's interface: operations, their results, limits, errors.

use super::*;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error(
        "cannot open WAL {path}: {source}. If the file is damaged, keep a copy of it before \
         anything else and run `edge-gateway wal verify` with the gateway stopped \
         (docs/operations.md, \"The WAL file is corrupt\"); the gateway does not start on an \
         empty WAL in its place"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("WAL database is already open (another gateway process, or a previous instance still closing)")]
    AlreadyOpen,
    #[error("WAL storage error: {0}")]
    Storage(String),
    /// Written by a newer release: refused rather than misread (an upgrade is one-way; keep
    /// the newer binary, or restore the backup taken before the upgrade).
    #[error(
        "WAL {path} has format version {found}, newer than this gateway's {supported}: it was \
         written by a newer release; run that release (or restore a backup of the WAL taken \
         before the upgrade)"
    )]
    NewerFormat {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
}

impl WalError {
    /// The filesystem is full (ENOSPC): the store must be reopened, but nothing is wrong
    /// with it, and delivery must go on (see the WAL actor).
    /// Also when the (re)open itself met it: redb repairs and the store commits at open.
    pub fn is_no_space(&self) -> bool {
        let s = match self {
            WalError::Storage(s) => s.clone(),
            WalError::Open { source, .. } => source.to_string(),
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
    /// Compact the file once it is at least this big and more than twice its rows (0: never).
    pub compact_min_bytes: u64,
    /// ...after it looked drained this long (WAL ms; see `compact.rs`).
    pub compact_settle_ms: u64,
    /// Appends are refused while the file is at least this big (0: no limit).
    pub max_file_bytes: u64,
    /// A settled record and its lifecycle are kept this long (0: not kept; see `history.rs`),
    /// within this many bytes.
    pub history_ms: u64,
    pub history_max_bytes: u64,
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
            compact_min_bytes: wal.compact_min_bytes,
            compact_settle_ms: wal.compact_settle_ms,
            history_ms: wal.history_secs.saturating_mul(1000),
            history_max_bytes: wal.history_max_bytes,
            max_file_bytes: wal.max_file_bytes,
        }
    }

    pub(super) fn quota(&self) -> QuotaLimits {
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
        /// Wait for a full batch (see [`Fill`]).
        fill: Option<Fill>,
        /// Live first (see [`super::Lanes`]).
        lanes: Option<super::Lanes>,
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
        filter: DeadFilter,
    },
    /// Keep a refused message for inspection (see `rejected.rs`).
    Reject(Rejected),
    /// Every InFlight lease of every sink back to Enqueued (a new dispatcher starts: whoever
    /// held them is gone). Attempts already counted stay counted.
    ReleaseLeases,
    /// The gateway stops gracefully: every lease in flight back to Enqueued with the attempt
    /// its lease counted refunded — a publish cut short by a stop blames no record, so a box
    /// restarted nightly through a long outage never dead-letters its oldest batch — and
    /// committed durably.
    StopLeases,
    /// The sinks new records are queued for change; removed ones' records are dropped or
    /// moved (`sinks.rs`).
    Sinks {
        sinks: Vec<String>,
        removed: Vec<(String, super::Removal)>,
    },
    /// Records re-enqueued for one sink, keys kept, the idempotency window bypassed
    /// (`replay.rs`).
    Replay {
        sink: String,
        records: Vec<Record>,
    },
    /// The operator deletes up to `limit` of a sink's dead letters matching `filter`.
    PurgeDead {
        sink: String,
        filter: DeadFilter,
        limit: usize,
    },
}

/// Which dead letters a listing, export, requeue or purge takes: every condition set must
/// hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadFilter {
    /// Reason class, as in the metrics; `None`: any.
    pub reason: Option<DeadClass>,
    /// Dead for at least this long (WAL time, see "Time"); `None`: any age.
    pub older_than_ms: Option<u64>,
    /// Device ids matching this glob (`*` any run, `?` one character).
    pub device: Option<String>,
    /// Dead at or after / before these times (WAL time, which follows the wall clock but for
    /// its jumps: see "Time").
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
}

impl DeadFilter {
    /// Whether the record's device must be read to decide.
    pub(super) fn needs_device(&self) -> bool {
        self.device.is_some()
    }

    /// An entry that no longer decodes (`None`) matches only a filter without conditions on
    /// the entry; a record whose device cannot be read matches no device filter.
    pub fn matches(&self, e: Option<&DeadEntry>, device: Option<&str>, now: u64) -> bool {
        if let Some(g) = &self.device {
            if !device.is_some_and(|d| glob(g, d)) {
                return false;
            }
        }
        let Some(e) = e else {
            return self.reason.is_none()
                && self.older_than_ms.is_none()
                && self.since_ms.is_none()
                && self.until_ms.is_none();
        };
        self.reason.is_none_or(|r| e.class() == r)
            && self
                .older_than_ms
                .is_none_or(|age| e.dead_at_ms.saturating_add(age) <= now)
            && self.since_ms.is_none_or(|t| e.dead_at_ms >= t)
            && self.until_ms.is_none_or(|t| e.dead_at_ms < t)
    }
}

/// `*` matches any run of characters, `?` one; everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative with one backtrack point: linear in practice, never exponential.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

impl Op {
    /// Appends must be durable before they are answered; maintenance makes earlier
    /// non-durable settles durable at a bounded interval.
    pub fn needs_durability(&self) -> bool {
        matches!(
            self,
            Op::Append(_)
                | Op::StopLeases
                | Op::Replay { .. }
                | Op::Maintain
                | Op::Requeue { .. }
                | Op::Reject(_)
                | Op::PurgeDead { .. }
                | Op::Sinks { .. }
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
    SinksSet(super::SinksChanged),
    /// Dead letters purged by the operator.
    Purged {
        sink: String,
        purged: usize,
    },
    /// Records replayed, or why none were (the WAL full, a sink not configured).
    Replayed(Result<usize, String>),
}

/// The filesystem holding the WAL is nearly full: appends wait, delivery goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct DiskFull {
    pub free: u64,
    /// `wal.min_free_bytes`; 0 when the refusal is the reserve's (`reserve_in_use`).
    pub min_free: u64,
    /// A commit met ENOSPC and the WAL's reserve file was released: its room is kept for
    /// settles and deletes, so appends wait until the reserve is back, whatever
    /// `wal.min_free_bytes` says.
    pub reserve_in_use: bool,
}

impl DiskFull {
    fn describe(&self) -> String {
        if self.reserve_in_use {
            format!(
                "disk full: a commit met ENOSPC and the WAL's reserve is in use ({} bytes free); \
                 appends resume once delivery has freed room for the reserve again",
                self.free
            )
        } else {
            format!(
                "disk nearly full: {} bytes free, wal.min_free_bytes is {}; appends resume once \
                 delivery frees space",
                self.free, self.min_free
            )
        }
    }
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
#[error(
    "WAL full: {records} records / {bytes} bytes live, file {file_bytes} bytes (limits \
     {max_records} / {max_bytes} / file {max_file_bytes})"
)]
pub struct Full {
    pub records: u64,
    pub bytes: u64,
    pub max_records: u64,
    pub max_bytes: u64,
    pub file_bytes: u64,
    pub max_file_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintainReport {
    pub expired: u64,
    pub dead_purged: u64,
    pub idempotency_purged: u64,
    pub rejected_purged: u64,
    /// Settled records whose kept lifecycle was deleted (age, bytes, or room).
    pub history_purged: u64,
    /// Dead letters purged because a sink held more than `max_dead_per_sink`, by sink.
    pub dead_over_budget: Vec<(String, u64)>,
    /// A limit was hit: another sweep has work to do.
    pub more: bool,
    /// Kept history is over its bytes or age and another sweep has more of it to trim, none
    /// of it urgent: the stored total (live + kept) is not above its mark, the disk is not
    /// tight and the file not near its cap. The actor sweeps again right away only when no
    /// delivery is queued; otherwise its timer paces the trimming, off the drain's path.
    pub history_more: bool,
    /// The file was compacted after this sweep's commit.
    pub compacted: Option<Compacted>,
}

/// A compaction: the file's size before and after, and how long the WAL was busy with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub before: u64,
    pub after: u64,
    pub millis: u64,
}
