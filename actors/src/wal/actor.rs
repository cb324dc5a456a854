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
//! counted, so a full disk never exhausts a restart budget. The reserve is recreated once
//! the filesystem has room again.

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
    tasks: crate::tasks::Tasks,
}

/// Everything needed to (re)open the store and keep its reserve file.
#[derive(Clone)]
struct OpenArgs {
    path: PathBuf,
    sinks: Vec<String>,
    limits: WalLimits,
    reserve_bytes: u64,
    min_free_bytes: u64,
}

impl OpenArgs {
    fn reserve_path(&self) -> PathBuf {
        self.path.with_extension("reserve")
    }
}

/// Makes the reserve file if it is missing and the filesystem can spare it with
/// `min_free_bytes` to go; true if it is in place. Blocking.
fn ensure_reserve(o: &OpenArgs) -> bool {
    use std::io::Write;
    if o.reserve_bytes == 0 {
        return true;
    }
    let path = o.reserve_path();
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= o.reserve_bytes) {
        return true;
    }
    let dir = o
        .path
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let free = (super::store::free_space_of(dir))().unwrap_or(0);
    // Room for the reserve and as much again beyond `min_free_bytes`: made back the moment
    // its own size is free, it would take again exactly what its release gave delivery.
    if free
        < o.reserve_bytes
            .saturating_mul(2)
            .saturating_add(o.min_free_bytes)
    {
        return false;
    }
    let made = (|| {
        let mut f = std::fs::File::create(&path)?;
        // Blocks reserved without writing them, where the filesystem can; else zeros.
        let flags = rustix::fs::FallocateFlags::empty();
        if rustix::fs::fallocate(&f, flags, 0, o.reserve_bytes).is_ok() {
            return f.sync_all();
        }
        let chunk = vec![0u8; 1 << 20];
        let mut left = o.reserve_bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        f.sync_all()
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    made.is_ok()
}

/// WAL time (see `store/mod.rs`, "Time"): the store's last committed time, advanced by the
/// monotonic clock since the store was opened. Also watches the wall clock, to say when it
/// jumped (the jump moves no age, but an operator wants to know).
#[derive(Debug, Clone, Copy)]
pub struct WalClock {
    base_ms: u64,
    opened: tokio::time::Instant,
    /// Wall-clock ms minus WAL ms at the last look.
    wall_offset_ms: i64,
}

/// A wall-clock step this large (either way) between two commits is reported.
const JUMP_MS: i64 = 60_000;

impl WalClock {
    pub fn new(base_ms: u64, wall_ms: u64) -> Self {
        WalClock {
            base_ms,
            opened: tokio::time::Instant::now(),
            wall_offset_ms: wall_ms as i64 - base_ms as i64,
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.base_ms + self.opened.elapsed().as_millis() as u64
    }

    /// Compares the wall clock with WAL time; `Some(step)` if it jumped since the last look.
    pub fn observe_wall(&mut self, wall_ms: u64) -> Option<i64> {
        let offset = wall_ms as i64 - self.now_ms() as i64;
        let step = offset - self.wall_offset_ms;
        self.wall_offset_ms = offset;
        (step.abs() >= JUMP_MS).then_some(step)
    }
}

impl WalState {
    /// Takes the next group if no commit is running: at most `max_group` operations, but
    /// never splits an operation.
    fn take_group(&mut self) -> Option<(WalStore, Vec<Op>)> {
        if self.queue.is_empty() {
            return None;
        }
        let store = self.store.take()?;
        let n = self.queue.len().min(self.max_group);
        let mut ops = Vec::with_capacity(n);
        for (op, waiter) in self.queue.drain(..n) {
            ops.push(op);
            self.in_commit.push(waiter);
        }
        Some((store, ops))
    }

    /// Answers the waiters of the group that just committed.
    fn finish(&mut self, store: WalStore, results: Vec<OpResult>) {
        let waiters = std::mem::take(&mut self.in_commit);
        let mut new_work = false;
        let mut appended = 0usize;
        for (waiter, result) in waiters.into_iter().zip(results) {
            match (waiter, result) {
                (Waiter::Append(reply), OpResult::Appended(r)) => {
                    if let Ok(v) = &r {
                        for o in v {
                            if let AppendOutcome::Stored { .. } = o {
                                new_work = true;
                                appended += 1;
                            }
                        }
                    }
                    self.metrics
                        .backpressure_active
                        .set(i64::from(matches!(r, Err(AppendRefused::Full(_)))));
                    let _ = reply.send(r.map_err(AppendError::from));
                }
                (Waiter::Lease(reply), OpResult::Leased(v)) => {
                    let _ = reply.send(v);
                }
                (Waiter::Replay(reply), OpResult::Replayed(r)) => {
                    new_work |= r.as_ref().is_ok_and(|n| *n > 0);
                    let _ = reply.send(r);
                }
                (Waiter::Requeue(reply), OpResult::Requeued(n)) => {
                    new_work |= n > 0;
                    let _ = reply.send(n);
                }
                (Waiter::Sinks(reply), OpResult::SinksSet(changed)) => {
                    new_work = true;
                    tracing::warn!(sinks = ?store.sinks(), dropped = changed.dropped, moved = changed.moved, "WAL sink set changed");
                    let _ = reply.send(changed);
                }
                (Waiter::Reject(reply), OpResult::Rejected(id)) => {
                    let _ = reply.send(Ok(id));
                }
                (Waiter::Purge(reply), OpResult::Purged { sink, purged }) => {
                    self.metrics
                        .dead_letters_purged
                        .with_label_values(&[&sink, "operator"])
                        .inc_by(purged as u64);
                    tracing::warn!(sink = %sink, purged, "dead letters purged by the operator");
                    let _ = reply.send(purged);
                }
                (_, OpResult::Settled { .. })
                | (_, OpResult::Requeued(_))
                | (_, OpResult::Rejected(_))
                | (_, OpResult::LeasesReleased(_))
                | (_, OpResult::Purged { .. })
                | (_, OpResult::SinksSet(_))
                | (_, OpResult::Maintained(_))
                | (Waiter::Nobody, _) => {}
                (Waiter::Append(..), _)
                | (Waiter::Lease(_), _)
                | (Waiter::Requeue(_), _)
                | (Waiter::Purge(_), _)
                | (Waiter::Replay(_), _)
                | (Waiter::Sinks(_), _)
                | (Waiter::Reject(_), _) => {
                    unreachable!("results come back in the order of their operations")
                }
            }
        }
        self.metrics.wal_commit_records.observe(appended as f64);
        self.last_stats = store.stats();
        self.metrics.observe_wal(&self.last_stats);
        self.store = Some(store);
        if new_work {
            self.commits
                .send_modify(|mark| *mark = mark.wrapping_add(1));
        }
    }

    /// Fails every caller still waiting: they get an error, never an ack.
    fn fail_waiters(&mut self, why: &str) {
        let waiters = self
            .in_commit
            .drain(..)
            .chain(self.queue.drain(..).map(|(_, w)| w));
        for w in waiters.collect::<Vec<_>>() {
            match w {
                Waiter::Append(reply) => {
                    let _ = reply.send(Err(AppendError::Unavailable(why.to_string())));
                }
                Waiter::Reject(reply) => {
                    let _ = reply.send(Err(AppendError::Unavailable(why.to_string())));
                }
                Waiter::Replay(reply) => {
                    let _ = reply.send(Err(format!("not replayed: {why}")));
                }
                _ => {}
            }
        }
    }
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
                        tracing::error!(
                            error = %e,
                            reserve_released = released,
                            "WAL commit met a full disk; reopening in place: ingest waits, delivery goes on"
                        );
                        // The old database goes with its last handle: ours too, before the
                        // reopen (a read in flight finishes first; open_store waits for it).
                        state.reader = None;
                        let store = open_store(&state.open).await?;
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
                        reply,
                    } => {
                        Self::enqueue(
                            &myself,
                            state,
                            Op::Lease { sink, max, fill },
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
                        let Some(reader) = state.reader.clone() else {
                            let _ = reply.send(Err(REOPENING.into()));
                            return Ok(());
                        };
                        state.tasks.push(tokio::spawn(async move {
                            let found = tokio::task::spawn_blocking(move || reader.find(&id)).await;
                            let _ = reply.send(read_answer(found));
                        }));
                    }
                    WalMsg::Backup { dest, reply } => {
                        let Some(reader) = state.reader.clone() else {
                            let _ = reply.send(Err(REOPENING.into()));
                            return Ok(());
                        };
                        state.tasks.push(tokio::spawn(async move {
                            let done =
                                tokio::task::spawn_blocking(move || reader.backup(&dest)).await;
                            let _ = reply.send(read_answer(done));
                        }));
                    }
                    WalMsg::DeadLetters { sink, limit, reply } => {
                        let Some(reader) = state.reader.clone() else {
                            let _ = reply.send(Err(REOPENING.into()));
                            return Ok(());
                        };
                        state.tasks.push(tokio::spawn(async move {
                            let rows = tokio::task::spawn_blocking(move || {
                                reader.dead_letters(&sink, limit)
                            })
                            .await;
                            let _ = reply.send(read_answer(rows));
                        }));
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
                    WalMsg::ReleaseLeases => {
                        Self::enqueue(&myself, state, Op::ReleaseLeases, Waiter::Nobody);
                    }
                    WalMsg::Reject { entry, reply } => {
                        Self::enqueue(&myself, state, Op::Reject(entry), Waiter::Reject(reply));
                    }
                    WalMsg::Rejected { limit, reply } => {
                        let Some(reader) = state.reader.clone() else {
                            let _ = reply.send(Err(REOPENING.into()));
                            return Ok(());
                        };
                        state.tasks.push(tokio::spawn(async move {
                            let rows =
                                tokio::task::spawn_blocking(move || reader.rejected(limit)).await;
                            let _ = reply.send(read_answer(rows));
                        }));
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
const REOPENING: &str = "the WAL is being reopened after a full disk; try again shortly";

/// A read on the blocking pool, as an answer: its rows or why there are none.
fn read_answer<T>(
    joined: Result<Result<T, WalError>, tokio::task::JoinError>,
) -> Result<T, String> {
    match joined {
        Ok(Ok(rows)) => Ok(rows),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("read task: {e}")),
    }
}

/// Disk state after a commit: the gauge, and a try at the reserve once there is room again
/// (on the blocking pool; the answer comes back as `ReserveMade`).
fn note_disk(myself: &ActorRef<WalMsg>, state: &mut WalState, results: &[OpResult]) {
    for r in results {
        if let OpResult::Appended(a) = r {
            state
                .metrics
                .wal_disk_full
                .set(i64::from(matches!(a, Err(AppendRefused::DiskFull(_)))));
        }
    }
    let maintained = results.iter().any(|r| matches!(r, OpResult::Maintained(_)));
    if state.reserve_missing && maintained {
        state.reserve_missing = false; // one try in flight at a time
        let (o, me, addr) = (state.open.clone(), myself.clone(), state.addr.clone());
        state.tasks.push(tokio::spawn(async move {
            let made = tokio::task::spawn_blocking(move || ensure_reserve(&o))
                .await
                .unwrap_or(false);
            addr.note_sent();
            let _ = me.cast(WalMsg::ReserveMade(made));
        }));
    }
}

fn note_settles(m: &Metrics, sink: &str, outcomes: &[(u64, Outcome)]) {
    let retries = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Retry(_)))
        .count();
    if retries > 0 {
        m.retries.with_label_values(&[sink]).inc_by(retries as u64);
    }
}

/// True when a sweep in `results` left work for another one.
fn sweep_has_more(results: &[OpResult]) -> bool {
    results
        .iter()
        .any(|r| matches!(r, OpResult::Maintained(rep) if rep.more))
}

/// What a maintenance commit reports: purges (dead letters are counted from the store's
/// events, see `Committed`) and compactions.
fn note_maintenance(m: &Metrics, results: &[OpResult]) {
    for r in results {
        if let OpResult::Maintained(rep) = r {
            for (sink, n) in &rep.dead_over_budget {
                m.dead_letters_purged
                    .with_label_values(&[sink, "budget"])
                    .inc_by(*n);
                tracing::warn!(
                    sink = %sink,
                    purged = n,
                    "oldest dead letters purged: the sink holds more than wal.max_dead_letters"
                );
            }
            if let Some(c) = rep.compacted {
                m.wal_compactions.inc();
                m.wal_compacted_bytes
                    .inc_by(c.before.saturating_sub(c.after));
                tracing::info!(
                    before = c.before,
                    after = c.after,
                    millis = c.millis,
                    "WAL file compacted"
                );
            }
            if rep.dead_purged > 0 {
                m.dead_letters_purged
                    .with_label_values(&["*", "retention"])
                    .inc_by(rep.dead_purged);
            }
        }
    }
}

#[cfg(test)]
mod read_tests {
    use super::{read_answer, WalError};

    #[tokio::test]
    async fn a_failed_read_is_an_answer_not_an_empty_list() {
        let ok = tokio::task::spawn_blocking(|| Ok::<_, WalError>(vec![1])).await;
        assert_eq!(read_answer(ok), Ok(vec![1]));
        let failed = tokio::task::spawn_blocking(|| {
            Err::<Vec<u8>, _>(WalError::Storage("I/O error: Input/output error".into()))
        })
        .await;
        assert_eq!(
            read_answer(failed),
            Err("WAL storage error: I/O error: Input/output error".to_string())
        );
    }
}

#[cfg(test)]
mod reserve_tests {
    use super::{ensure_reserve, OpenArgs};

    #[test]
    fn the_reserve_is_made_only_with_room_to_spare() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = OpenArgs {
            path: dir.path().join("wal.redb"),
            sinks: vec![],
            limits: crate::wal::tests::limits(),
            reserve_bytes: 3 << 20,
            min_free_bytes: 0,
        };
        assert!(ensure_reserve(&o));
        assert_eq!(std::fs::metadata(o.reserve_path()).unwrap().len(), 3 << 20);
        assert!(ensure_reserve(&o), "already there");
        std::fs::remove_file(o.reserve_path()).unwrap();
        o.min_free_bytes = u64::MAX / 2; // no filesystem has that much to spare
        assert!(!ensure_reserve(&o));
        assert!(!o.reserve_path().exists());
    }
}

#[cfg(test)]
mod clock_tests {
    use super::WalClock;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn wal_time_is_monotonic_and_jumps_are_seen_not_followed() {
        let wall = 1_577_836_800_000; // a board that booted thinking it is 2020
        let mut c = WalClock::new(5_000, wall);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(c.now_ms(), 15_000);
        assert_eq!(
            c.observe_wall(wall + 10_000),
            None,
            "wall and WAL time moved together"
        );
        // NTP steps the wall clock six years forward: seen, and WAL time does not follow.
        let six_years = 6 * 365 * 86_400_000;
        let step = c.observe_wall(wall + 10_000 + six_years);
        assert_eq!(step, Some(six_years as i64));
        assert_eq!(c.now_ms(), 15_000);
        // And backwards.
        assert_eq!(c.observe_wall(wall + 10_000), Some(-(six_years as i64)));
    }
}
