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
//! returns, everything queued meanwhile goes into the next transaction. One fsync thus
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
use super::record::{AppendOutcome, Leased, Outcome, Record, WalStats};
use super::rejected::Rejected;
use super::store::{
    AppendRefused, DeadFilter, DiskFull, Full, Op, OpResult, WalError, WalLimits, WalReader,
    WalStore,
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
    result: Result<(WalStore, Vec<OpResult>), WalError>,
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

/// Who waits for an operation's result.
pub enum Waiter {
    Append(RpcReplyPort<AppendReply>),
    Lease(RpcReplyPort<Vec<Leased>>),
    Requeue(RpcReplyPort<usize>),
    Purge(RpcReplyPort<usize>),
    Replay(RpcReplyPort<Result<usize, String>>),
    Sinks(RpcReplyPort<crate::wal::store::SinksChanged>),
    Reject(RpcReplyPort<Result<u64, AppendError>>),
    StopLeases(RpcReplyPort<usize>),
    Nobody,
}

/// The actor's state: the commit queue, and the store when no commit holds it.
pub struct WalState {
    store: Option<WalStore>,
    /// Chaos hook: how long the next commit hangs.
    stall_next: Option<Duration>,
    queue: VecDeque<(Op, Waiter)>,
    in_commit: Vec<Waiter>,
    last_stats: WalStats,
    /// Shares the store's database for reads; `None` while the store is being reopened (the
    /// file lock goes with the last handle, so a reopen must not keep one).
    reader: Option<WalReader>,
    max_group: usize,
    metrics: Arc<Metrics>,
    addr: Addr<WalMsg>,
    commits: watch::Sender<u64>,
    timer: Option<tokio::task::JoinHandle<()>>,
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

/// Opens the store on the blocking pool, waiting out a predecessor that is still closing.
async fn open_store(args: &OpenArgs) -> Result<WalStore, WalError> {
    let mut delay = Duration::from_millis(10);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (path, sinks, limits) = (args.path.clone(), args.sinks.clone(), args.limits.clone());
        let r = tokio::task::spawn_blocking(move || WalStore::open(&path, sinks, limits))
            .await
            .map_err(|e| WalError::Storage(format!("open task: {e}")))?;
        match r {
            Err(WalError::AlreadyOpen) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// Reopens the store after ENOSPC. The reopen commits too (redb's repair, the store's
/// open transaction), so on a disk with not a byte left it waits for room — freed by the
/// operator or another process — instead of failing the actor into a restart loop that
/// would end the process; `/healthz` reports the WAL stalled meanwhile.
async fn reopen_on_full_disk(args: &OpenArgs) -> Result<WalStore, WalError> {
    let mut delay = Duration::from_millis(100);
    let mut tries = 0u32;
    loop {
        match open_store(args).await {
            Err(e) if e.is_no_space() => {
                tries += 1;
                if tries == 1 || tries.is_power_of_two() {
                    tracing::error!(
                        error = %e,
                        tries,
                        "the WAL cannot reopen: the disk is full to the last byte; waiting for room \
                         (free space on the WAL's filesystem)"
                    );
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

impl Wal {
    fn start_commit(myself: &ActorRef<WalMsg>, state: &mut WalState) {
        let Some((store, ops)) = state.take_group() else {
            return;
        };
        state.metrics.wal_commit_ops.observe(ops.len() as f64);
        state.metrics.pulse.wal_busy(now_ms());
        let stall = state.stall_next.take();
        let now = state.clock.now_ms();
        if let Some(step) = state.clock.observe_wall(now_ms()) {
            state.metrics.clock_jumps.inc();
            tracing::warn!(
                step_ms = step,
                "the system clock jumped; ages (expiry, leases, idempotency window, retention) \
                 follow the WAL's monotonic clock and are unaffected; readings taken while it \
                 read before the release's floor are marked clock_synced: false"
            );
        }
        let me = myself.clone();
        let addr = state.addr.clone();
        // The group's span (`traces`): only looked for when traces are on.
        let (records, append_ops, kept) = if crate::traces::enabled() {
            let appended = ops.iter().filter_map(|op| match op {
                Op::Append(rs) => Some(rs),
                _ => None,
            });
            let records = appended.clone().map(Vec::len).sum::<usize>();
            let kept = crate::traces::kept_contexts(appended.clone().flatten());
            (records, appended.count(), kept)
        } else {
            (0, 0, Vec::new())
        };
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let started_wall = std::time::SystemTime::now();
            let joined = tokio::task::spawn_blocking(move || {
                if let Some(d) = stall {
                    // Chaos hook only (`admin.chaos`): a disk that hangs.
                    std::thread::sleep(d);
                }
                store.apply(ops, now)
            })
            .await;
            let result =
                joined.unwrap_or_else(|e| Err(WalError::Storage(format!("commit task: {e}"))));
            if result.is_ok() {
                crate::traces::commit_span(started_wall, &kept, records, append_ops);
            }
            addr.note_sent();
            let _ = me.cast(WalMsg::Committed(Box::new(Committed {
                result,
                elapsed: started.elapsed(),
            })));
        });
    }

    fn enqueue(myself: &ActorRef<WalMsg>, state: &mut WalState, op: Op, waiter: Waiter) {
        state.queue.push_back((op, waiter));
        Self::start_commit(myself, state);
    }
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
        let open = OpenArgs {
            path: args.path.clone(),
            sinks: args.sinks.clone(),
            limits: args.limits.clone(),
            reserve_bytes: args.reserve_bytes,
            min_free_bytes: args.min_free_bytes,
        };
        let store = open_store(&open).await?;
        let o = open.clone();
        let reserve_missing = !tokio::task::spawn_blocking(move || ensure_reserve(&o))
            .await
            .unwrap_or(false);
        if reserve_missing {
            tracing::warn!(
                path = %open.reserve_path().display(),
                "no room for the WAL's reserve file yet; it is made once the disk has room"
            );
        }
        let reader = store.reader();
        args.metrics.wal_opens.inc();
        args.metrics.slo.set_capacity(crate::slo::Capacity {
            max_records: args.limits.max_records,
            max_bytes: args.limits.max_bytes,
        });
        let stats = store.stats();
        args.metrics.observe_wal(&stats);
        tracing::info!(path = %store.path().display(), records = stats.records, "WAL open");
        for o in &stats.orphaned {
            tracing::error!(
                sink = %o.sink,
                pending = o.pending,
                dead = o.dead,
                "the WAL holds records for sink {:?}, which the configuration no longer has: \
                 nothing delivers them. Stop the gateway and run `edge-gateway wal move-sink {} \
                 <new name>` (a renamed sink) or `edge-gateway wal drop-sink {}` (counted and \
                 logged), or restore the sink",
                o.sink,
                o.sink,
                o.sink
            );
        }
        let clock = WalClock::new(store.clock_ms(), now_ms());
        let me = myself.clone();
        let addr = args.addr.clone();
        let period = args.maintenance_interval;
        let timer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                addr.note_sent();
                if me.cast(WalMsg::Maintain).is_err() {
                    break;
                }
            }
        });
        // Wake the dispatcher: recovered records may be waiting.
        args.commits
            .send_modify(|mark| *mark = mark.wrapping_add(1));
        Ok(WalState {
            stall_next: None,
            store: Some(store),
            queue: VecDeque::new(),
            in_commit: Vec::new(),
            last_stats: stats,
            reader: Some(reader),
            max_group: args.max_group,
            metrics: args.metrics,
            addr: args.addr,
            commits: args.commits,
            timer: Some(timer),
            clock,
            open,
            reserve_missing,
            tight: false,
            tasks: crate::tasks::Tasks::default(),
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<WalMsg>,
        state: &mut WalState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.timer.take() {
            t.abort();
        }
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
            WalMsg::Committed(c) => {
                state.metrics.pulse.wal_committed(now_ms());
                state
                    .metrics
                    .wal_commit_seconds
                    .observe(c.elapsed.as_secs_f64());
                match c.result {
                    Ok((mut store, results)) => {
                        // Counted after the fact: what the commit made Dead, however.
                        for (sink, class) in store.take_dead_events() {
                            state
                                .metrics
                                .dead_lettered
                                .with_label_values(&[&sink, class.as_str()])
                                .inc();
                        }
                        note_maintenance(&state.metrics, &results);
                        note_disk(&myself, state, &results);
                        if sweep_has_more(&results) {
                            state.queue.push_back((Op::Maintain, Waiter::Nobody));
                        }
                        state.finish(store, results);
                        Self::start_commit(&myself, state);
                        Ok(())
                    }
                    Err(e) if e.is_no_space() => {
                        // Not the store's fault: reopen in place and carry on delivering.
                        state.fail_waiters("disk full: not committed, retry");
                        state.metrics.wal_disk_full.set(1);
                        state.metrics.wal_enospc.inc();
                        let reserve = state.open.reserve_path();
                        let released = std::fs::remove_file(&reserve).is_ok();
                        state.reserve_missing = true;
                        state.tight = true;
                        tracing::error!(
                            error = %e,
                            reserve_released = released,
                            "WAL commit met a full disk; reopening in place: ingest waits, delivery goes on"
                        );
                        // The old database goes with its last handle: ours too, before the
                        // reopen (a read in flight finishes first; open_store waits for it).
                        state.reader = None;
                        let store = reopen_on_full_disk(&state.open).await?;
                        state.reader = Some(store.reader());
                        state.store = Some(store);
                        state
                            .commits
                            .send_modify(|mark| *mark = mark.wrapping_add(1));
                        Ok(())
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "WAL commit failed; failing so the supervisor reopens the file");
                        state.fail_waiters("WAL commit failed");
                        Err(e.into())
                    }
                }
            }
            WalMsg::Maintain => {
                Self::enqueue(&myself, state, Op::Maintain, Waiter::Nobody);
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
            other => {
                match other {
                    WalMsg::Append { records, reply } => {
                        Self::enqueue(&myself, state, Op::Append(records), Waiter::Append(reply));
                    }
                    WalMsg::Lease {
                        sink,
                        max,
                        fill,
                        lanes,
                        reply,
                    } => {
                        Self::enqueue(
                            &myself,
                            state,
                            Op::Lease {
                                sink,
                                max,
                                fill,
                                lanes,
                            },
                            Waiter::Lease(reply),
                        );
                    }
                    WalMsg::Settle { sink, outcomes } => {
                        note_settles(&state.metrics, &sink, &outcomes);
                        Self::enqueue(
                            &myself,
                            state,
                            Op::Settle { sink, outcomes },
                            Waiter::Nobody,
                        );
                    }
                    WalMsg::Stats(reply) => {
                        let s = state
                            .store
                            .as_ref()
                            .map(WalStore::stats)
                            .unwrap_or_else(|| state.last_stats.clone());
                        let _ = reply.send(s);
                    }
                    WalMsg::Replay {
                        sink,
                        records,
                        reply,
                    } => {
                        Self::enqueue(
                            &myself,
                            state,
                            Op::Replay { sink, records },
                            Waiter::Replay(reply),
                        );
                    }
                    WalMsg::Reader(reply) => {
                        let _ = reply.send(state.reader.clone().ok_or_else(|| REOPENING.into()));
                    }
                    WalMsg::Find { id, reply } => {
                        state.read(reply, move |r| r.find(&id));
                    }
                    WalMsg::Backup { dest, reply } => {
                        state.read(reply, move |r| r.backup(&dest));
                    }
                    WalMsg::DeadLetters { sink, limit, reply } => {
                        state.read(reply, move |r| r.dead_letters(&sink, limit));
                    }
                    WalMsg::Requeue {
                        sink,
                        limit,
                        filter,
                        reply,
                    } => {
                        Self::enqueue(
                            &myself,
                            state,
                            Op::Requeue {
                                sink,
                                limit,
                                filter,
                            },
                            Waiter::Requeue(reply),
                        );
                    }
                    WalMsg::PurgeDead {
                        sink,
                        filter,
                        limit,
                        reply,
                    } => {
                        Self::enqueue(
                            &myself,
                            state,
                            Op::PurgeDead {
                                sink,
                                filter,
                                limit,
                            },
                            Waiter::Purge(reply),
                        );
                    }
                    WalMsg::SetSinks {
                        sinks,
                        removed,
                        reply,
                    } => {
                        Self::enqueue(
                            &myself,
                            state,
                            Op::Sinks { sinks, removed },
                            Waiter::Sinks(reply),
                        );
                    }
                    WalMsg::StopLeases(reply) => {
                        Self::enqueue(&myself, state, Op::StopLeases, Waiter::StopLeases(reply));
                    }
                    WalMsg::ReleaseLeases => {
                        Self::enqueue(&myself, state, Op::ReleaseLeases, Waiter::Nobody);
                    }
                    WalMsg::Reject { entry, reply } => {
                        Self::enqueue(&myself, state, Op::Reject(entry), Waiter::Reject(reply));
                    }
                    WalMsg::Rejected { limit, reply } => {
                        state.read(reply, move |r| r.rejected(limit));
                    }
                    WalMsg::Fail(reason) => {
                        return Err(format!("failure injected: {reason}").into());
                    }
                    WalMsg::Stall(d) => {
                        tracing::warn!(
                            ms = d.as_millis() as u64,
                            "chaos: the next WAL commit hangs"
                        );
                        state.stall_next = Some(d);
                    }
                    WalMsg::Committed(_) | WalMsg::Maintain | WalMsg::ReserveMade(_) => {
                        unreachable!("matched above")
                    }
                }
                Ok(())
            }
        }
    }
}

/// The answer to a read while the store is being reopened after a full disk.
mod clock;
mod disk;
mod notes;
mod state;
#[cfg(test)]
mod tests;

pub use clock::WalClock;
use disk::{ensure_reserve, OpenArgs};
use notes::*;
