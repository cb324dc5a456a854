//! `Wal` actor: makes ingested records durable before anyone acknowledges them.
//!
//! Mailbox:
//! - `Append`      <- the ingest edges, through `Router` (reply after the commit that holds
//!   the records: stored ids, duplicates, or `Full` / `DeviceQuota` for backpressure)
//! - `Lease`       <- Dispatcher (reply: up to N Enqueued records of one sink, now InFlight)
//! - `Settle`      <- Dispatcher (cast: Acked / Retry / Dead per record for one sink)
//! - `Stats`, `DeadLetters`, `Find`, `Backup`, `Reader` <- admin API (reply; dead letters are read, and a
//!   backup copied from one read transaction, on the blocking pool through a `WalReader`,
//!   never waiting for the writer)
//! - `Requeue`     <- admin API (reply after the commit: dead letters of a sink back to Enqueued)
//! - `Replay`      <- admin API (reply after the commit: records re-enqueued for one sink)
//! - `Reject`      <- MqttSession (reply after the commit that holds a refused message, so
//!   it is acknowledged to the broker only once it is kept)
//! - `Rejected`    <- admin API (reply: refused messages, newest first, read like dead letters)
//! - `PurgeDead`   <- admin API (reply after the commit: dead letters deleted, counted, logged)
//! - `ReleaseLeases` <- Dispatcher, when it starts (cast: every lease back to Enqueued)
//! - `StopLeases`  <- Dispatcher, when it stops (reply after the durable commit: every lease
//!   back to Enqueued, its attempt refunded)
//! - `Maintain`    <- its own timer (retention sweep; also makes earlier settles durable)
//! - `ReserveMade` <- its own reserve task (the reserve file is back, or not yet)
//! - `Committed`   <- its own commit task
//! - `Fail`, `Stall` <- admin API chaos hooks (fail; the next commit hangs as on a hung disk)
//!
//! Group commit: operations queue while one commit runs on the blocking pool; when it
//! returns, everything queued meanwhile goes into the next transaction. Each queued `Job`
//! carries its caller's reply port into the commit and comes back as an `Answer` beside its
//! own result (`job.rs`); the answers are sent only after the commit returned. One fsync thus
//! serves every append that arrived during the previous one. The store itself moves into the
//! blocking task and back, so no redb call ever runs on a tokio worker.
//!
//! Failure: a storage error fails the actor (every queued caller gets an error, none an
//! ack); the StorageSupervisor restarts it and `pre_start` reopens the file, which returns
//! every InFlight lease to Enqueued.
//!
//! A full disk is not a failure (issue 9, part 7): appends are refused before it fills
//! (`wal.min_free_bytes`, 503 `disk_full`), and if a commit still meets ENOSPC (another
//! process filled the disk), the actor deletes its reserve file (`wal.reserve_bytes`, kept
//! beside the WAL), reopens the store in place — its callers get an error, never an ack — and
//! carries on, so settles and deletes, which free space, keep committing. No restart is
//! counted, so a full disk never exhausts a restart budget. Until the reserve is back the
//! WAL is *tight*: appends are refused (503 `disk_full`, whatever `min_free_bytes` says) and
//! every commit is durable, so the reserve's room goes to settles and deletes and the pages
//! they free are reused by the next commit. A reopen that itself meets ENOSPC waits for room
//! rather than failing. The reserve is recreated once the filesystem has room again.

use super::quota::DeviceQuota;
use super::record::{AppendOutcome, Leased, LeasedBody, Outcome, Record, WalStats};
use super::rejected::Rejected;
use super::store::{
    AppendRefused, DeadFilter, DiskFull, Full, GroupFailed, MaintainReport, Op, OpResult, Removal,
    WalError, WalLimits, WalReader, WalStore,
};
use crate::addr::{Addr, Failable};
use crate::metrics::Metrics;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

pub struct Wal;

/// Why an append was not acknowledged.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AppendError {
    #[error(transparent)]
    Full(#[from] Full),
    /// Only this device is refused; see `quota.rs`.
    #[error(transparent)]
    DeviceQuota(#[from] DeviceQuota),
    #[error(transparent)]
    DiskFull(#[from] DiskFull),
    #[error("WAL unavailable: {0}")]
    Unavailable(String),
}

impl From<AppendRefused> for AppendError {
    fn from(r: AppendRefused) -> Self {
        match r {
            AppendRefused::Full(f) => AppendError::Full(f),
            AppendRefused::DeviceQuota(q) => AppendError::DeviceQuota(q),
            AppendRefused::DiskFull(d) => AppendError::DiskFull(d),
        }
    }
}

pub type AppendReply = Result<Vec<AppendOutcome>, AppendError>;

pub enum WalMsg {
    Append {
        records: Vec<Record>,
        reply: RpcReplyPort<AppendReply>,
    },
    Lease {
        sink: String,
        max: usize,
        /// Wait for a full batch (see [`crate::wal::Fill`]).
        fill: Option<crate::wal::Fill>,
        /// Live first (see [`crate::wal::Lanes`]).
        lanes: Option<crate::wal::Lanes>,
        reply: RpcReplyPort<Vec<Leased>>,
    },
    Settle {
        sink: String,
        outcomes: Vec<(u64, Outcome)>,
    },
    Stats(RpcReplyPort<WalStats>),
    /// The record a WAL seq, correlation id or idempotency key names, and its state per sink
    /// (admin API: "where is my reading?").
    Find {
        id: String,
        reply: RpcReplyPort<Result<Option<super::RecordView>, String>>,
    },
    /// Records re-enqueued for one sink, keys kept (admin API: `replay`); the count, after
    /// the commit.
    Replay {
        sink: String,
        records: Vec<super::Record>,
        reply: RpcReplyPort<Result<usize, String>>,
    },
    /// A read-only handle for long reads on the caller's blocking threads (an export of dead
    /// letters streamed by the admin API); `Err` while the WAL reopens.
    Reader(RpcReplyPort<Result<super::WalReader, String>>),
    /// A consistent copy of the WAL at `dest` (a new file), beside commits (admin API).
    Backup {
        dest: std::path::PathBuf,
        reply: RpcReplyPort<Result<super::BackupReport, String>>,
    },
    DeadLetters {
        sink: String,
        limit: usize,
        /// An error is an answer (the caller says 503), never an empty list.
        reply: RpcReplyPort<Result<Vec<super::store::DeadLetter>, String>>,
    },
    Requeue {
        sink: String,
        limit: usize,
        filter: super::DeadFilter,
        reply: RpcReplyPort<usize>,
    },
    Reject {
        entry: Rejected,
        reply: RpcReplyPort<Result<u64, AppendError>>,
    },
    Rejected {
        limit: usize,
        reply: RpcReplyPort<Result<Vec<(u64, Rejected)>, String>>,
    },
    PurgeDead {
        sink: String,
        filter: DeadFilter,
        limit: usize,
        reply: RpcReplyPort<usize>,
    },
    ReleaseLeases,
    /// The dispatcher stops gracefully (reply after the durable commit: how many leases went
    /// back with their attempt refunded).
    StopLeases(RpcReplyPort<usize>),
    /// New records go to `sinks`; `removed` sinks' records are dropped or moved (reply after
    /// the commit).
    SetSinks {
        sinks: Vec<String>,
        removed: Vec<(String, crate::wal::store::Removal)>,
        reply: RpcReplyPort<crate::wal::store::SinksChanged>,
    },
    Maintain,
    /// Its own reserve task: whether the reserve file is in place again.
    ReserveMade(bool),
    Committed(Box<Committed>),
    /// Chaos hook only (`admin.chaos`): the next commit hangs this long, as on a hung disk.
    Stall(Duration),
    Fail(String),
}

impl Failable for WalMsg {
    fn fail(reason: String) -> Self {
        WalMsg::Fail(reason)
    }
}

pub struct Committed {
    result: Result<(WalStore, Vec<Answer>), GroupFailed<Job, Answer>>,
    elapsed: Duration,
}

pub struct WalArgs {
    pub path: PathBuf,
    pub sinks: Vec<String>,
    pub limits: WalLimits,
    pub max_group: usize,
    pub maintenance_interval: Duration,
    pub metrics: Arc<Metrics>,
    pub addr: Addr<WalMsg>,
    /// A mark bumped by every commit that gives a sink new work (appends, requeues, reopen);
    /// the dispatcher watches it to wake at once.
    pub commits: watch::Sender<u64>,
    /// Size of the reserve file kept beside the WAL (0: none).
    pub reserve_bytes: u64,
    /// Free space the filesystem must keep before the reserve is recreated.
    pub min_free_bytes: u64,
}

/// The actor's state: the commit queue, and the store when no commit holds it.
pub struct WalState {
    store: Option<WalStore>,
    /// Chaos hook: how long the next commit hangs.
    stall_next: Option<Duration>,
    /// Jobs waiting for the next group; a group in commit travels with its task.
    queue: VecDeque<Job>,
    last_stats: WalStats,
    /// Shares the store's database for reads; `None` while the store is being reopened (the
    /// file lock goes with the last handle, so a reopen must not keep one).
    reader: Option<WalReader>,
    max_group: usize,
    metrics: Arc<Metrics>,
    addr: Addr<WalMsg>,
    commits: watch::Sender<u64>,
    clock: WalClock,
    /// What reopening the store in place needs (ENOSPC).
    open: OpenArgs,
    /// The reserve was deleted (or could not be made): recreate it when there is room.
    reserve_missing: bool,
    /// A commit met ENOSPC and the reserve is not back yet: appends are refused and every
    /// commit is durable (`WalStore::set_tight`), so the reserve's room goes to settles.
    tight: bool,
    tasks: crate::tasks::Tasks,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Actor for Wal {
    type Msg = WalMsg;
    type State = WalState;
    type Arguments = WalArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WalMsg>,
        args: WalArgs,
    ) -> Result<WalState, ActorProcessingErr> {
        WalState::start(myself, args).await
    }

    async fn post_stop(
        &self,
        _: ActorRef<WalMsg>,
        state: &mut WalState,
    ) -> Result<(), ActorProcessingErr> {
        state.final_commit().await;
        state.fail_waiters("WAL stopped");
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<WalMsg>,
        msg: WalMsg,
        state: &mut WalState,
    ) -> Result<(), ActorProcessingErr> {
        state.addr.received();
        match msg {
            WalMsg::Committed(c) => Self::on_committed(&myself, state, *c).await,
            WalMsg::Maintain => {
                Self::enqueue(&myself, state, Job::Cast(Op::Maintain));
                Ok(())
            }
            WalMsg::ReserveMade(made) => {
                state.reserve_missing = !made;
                if made {
                    state.tight = false;
                    tracing::info!(path = %state.open.reserve_path().display(), "WAL reserve file in place again");
                }
                Ok(())
            }
            WalMsg::Append { records, reply } => {
                Self::enqueue(&myself, state, Job::Append { records, reply });
                Ok(())
            }
            WalMsg::Lease {
                sink,
                max,
                fill,
                lanes,
                reply,
            } => {
                let job = Job::Lease {
                    sink,
                    max,
                    fill,
                    lanes,
                    reply,
                };
                Self::enqueue(&myself, state, job);
                Ok(())
            }
            WalMsg::Settle { sink, outcomes } => {
                note_settles(&state.metrics, &sink, &outcomes);
                let job = Job::Cast(Op::Settle { sink, outcomes });
                Self::enqueue(&myself, state, job);
                Ok(())
            }
            WalMsg::Replay {
                sink,
                records,
                reply,
            } => {
                let job = Job::Replay {
                    sink,
                    records,
                    reply,
                };
                Self::enqueue(&myself, state, job);
                Ok(())
            }
            WalMsg::Requeue {
                sink,
                limit,
                filter,
                reply,
            } => {
                let job = Job::Requeue {
                    sink,
                    limit,
                    filter,
                    reply,
                };
                Self::enqueue(&myself, state, job);
                Ok(())
            }
            WalMsg::PurgeDead {
                sink,
                filter,
                limit,
                reply,
            } => {
                let job = Job::PurgeDead {
                    sink,
                    filter,
                    limit,
                    reply,
                };
                Self::enqueue(&myself, state, job);
                Ok(())
            }
            WalMsg::SetSinks {
                sinks,
                removed,
                reply,
            } => {
                let job = Job::Sinks {
                    sinks,
                    removed,
                    reply,
                };
                Self::enqueue(&myself, state, job);
                Ok(())
            }
            WalMsg::StopLeases(reply) => {
                Self::enqueue(&myself, state, Job::StopLeases(reply));
                Ok(())
            }
            WalMsg::ReleaseLeases => {
                Self::enqueue(&myself, state, Job::Cast(Op::ReleaseLeases));
                Ok(())
            }
            WalMsg::Reject { entry, reply } => {
                Self::enqueue(&myself, state, Job::Reject { entry, reply });
                Ok(())
            }
            WalMsg::Stats(reply) => {
                let s = state
                    .store
                    .as_ref()
                    .map(WalStore::stats)
                    .unwrap_or_else(|| state.last_stats.clone());
                let _ = reply.send(s);
                Ok(())
            }
            WalMsg::Reader(reply) => {
                let _ = reply.send(state.reader.clone().ok_or_else(|| REOPENING.into()));
                Ok(())
            }
            // Reads run on the blocking pool through a `WalReader`, beside the writer.
            WalMsg::Find { id, reply } => {
                state.read(reply, move |r| r.find(&id));
                Ok(())
            }
            WalMsg::Backup { dest, reply } => {
                state.read(reply, move |r| r.backup(&dest));
                Ok(())
            }
            WalMsg::DeadLetters { sink, limit, reply } => {
                state.read(reply, move |r| r.dead_letters(&sink, limit));
                Ok(())
            }
            WalMsg::Rejected { limit, reply } => {
                state.read(reply, move |r| r.rejected(limit));
                Ok(())
            }
            WalMsg::Fail(reason) => Err(format!("failure injected: {reason}").into()),
            WalMsg::Stall(d) => {
                tracing::warn!(
                    ms = d.as_millis() as u64,
                    "chaos: the next WAL commit hangs"
                );
                state.stall_next = Some(d);
                Ok(())
            }
        }
    }
}

/// The answer to a read while the store is being reopened after a full disk.
mod clock;
mod commit;
mod disk;
mod job;
pub use job::{Answer, Job};
mod open;
use open::reopen_on_full_disk;
mod notes;
mod state;
#[cfg(test)]
mod tests;

pub use clock::WalClock;
use disk::{ensure_reserve, OpenArgs};
use notes::*;
