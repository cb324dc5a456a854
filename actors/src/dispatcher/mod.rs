//! `Dispatcher` actor: moves records from the WAL to each sink's publisher.
//!
//! Mailbox:
//! - `Wake`      <- its commit watcher (new records) and its poll timer (pauses that ended,
//!   the idle recheck)
//! - `Leased`    <- its own lease waiters (a lease's result, numbered per sink)
//! - `Published` <- its own publish waiters (how a batch went)
//! - `Fail`      <- admin API chaos hook
//!
//! Each sink has a [`lane::Lane`]: the pure state machine that decides what to lease, what to
//! forward, when to resume the publisher and how to settle, and that holds the order of first
//! delivery per device (its module doc states the rules; `lane_tests` replays the chaos-found
//! bugs and checks random interleavings). This actor only carries out the lane's actions —
//! casts to the WAL and the publisher, a waiter task per answer, the backoff clock — and feeds
//! the answers back as events. A sink that fails pauses alone with jittered exponential
//! backoff (backon); other sinks go on. The driver answers a lane's lease itself, empty, for a
//! sink an operator paused ([`Holds`]) and for an object sink whose WAL just found no full
//! object (`Fill`: asked again after a quarter of its age, 100 ms-1 s).
//!
//! Failure: the dispatcher holds nothing durable; its tasks end with its state. A new
//! instance first asks the WAL to release every lease (`ReleaseLeases`, ordered before its
//! own leases), so records its predecessor held are leased again first instead of waiting out
//! `delivery.lease_timeout_ms` while newer records overtake them: duplicates, never loss, and
//! order of first delivery kept.

pub mod lane;
#[cfg(test)]
mod lane_tests;
pub mod rate;
mod spec;

use crate::addr::{Addr, Failable};
use crate::sinks::{PublishResult, PublisherMsg};
use crate::wal::{Fill, Leased, WalMsg};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use edge_gateway_config::DeliveryConfig;
use lane::{Action, Event, Lane, Pause};
use opentelemetry::KeyValue;
use ractor::{Actor, ActorProcessingErr, ActorRef};
pub use spec::{Holds, SinkSpec};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

pub struct Dispatcher;

pub enum DispatcherMsg {
    Wake,
    /// A lease's result; `cycle` numbers leases per sink in the order they were cast.
    Leased {
        sink: usize,
        cycle: u64,
        batch: Result<Vec<Leased>, String>,
    },
    /// How a forwarded batch went.
    Published {
        sink: usize,
        cycle: u64,
        result: PublishResult,
    },
    Fail(String),
}

impl Failable for DispatcherMsg {
    fn fail(reason: String) -> Self {
        DispatcherMsg::Fail(reason)
    }
}

pub struct DispatcherArgs {
    pub sinks: Vec<SinkSpec>,
    pub holds: Holds,
    pub wal: Addr<WalMsg>,
    pub commits: watch::Receiver<u64>,
    pub config: DeliveryConfig,
    pub addr: Addr<DispatcherMsg>,
}

/// One sink: its lane and what carrying out the lane's actions needs.
pub struct SinkDriver {
    pub name: String,
    publisher: Addr<PublisherMsg>,
    pub lane: Lane<Vec<Leased>>,
    backoff: ExponentialBackoff,
    pub paused_until: Option<Instant>,
    fill: Option<Fill>,
    /// A fill sink's WAL answered "not full yet": no lease is cast before this (the lane gets
    /// an empty answer at once), and a recheck is due at it.
    fill_gate: Option<Instant>,
    /// `delivery.max_records_per_sec` of this sink, if it has one; a recheck is due at
    /// `rate_gate` when the ceiling cut a lease short; `reserved` holds each lease's grant
    /// until it returns.
    bucket: Option<rate::Bucket>,
    rate_gate: Option<Instant>,
    reserved: std::collections::HashMap<u64, usize>,
    /// `delivery.live_first`: leases ask the WAL for the live lane first and take the
    /// backlog within the ceiling ([`crate::wal::Lanes`]); `resplit` asks it to move the
    /// split to the head at the next lease (set when a pause or an operator's hold ends, so
    /// what piled up meanwhile is backlog).
    live_first: bool,
    resplit: bool,
}

/// The dispatcher's state: the lanes and the handles their actions go to.
pub struct DispatcherState {
    pub sinks: Vec<SinkDriver>,
    config: DeliveryConfig,
    wal: Addr<WalMsg>,
    addr: Addr<DispatcherMsg>,
    commits: watch::Receiver<u64>,
    last_recheck: Instant,
    tasks: crate::tasks::Tasks,
    holds: Holds,
}

fn backoff(c: &DeliveryConfig) -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(c.backoff_initial_ms))
        .with_max_delay(Duration::from_millis(c.backoff_max_ms))
        .with_jitter()
        .without_max_times()
        .build()
}

/// The longest `Retry-After` a sink's answer can make it wait.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// How long a fill sink waits before asking the WAL again after "not full yet": a quarter of
/// its batch age, between 100 ms and 1 s.
fn fill_recheck(f: Fill) -> Duration {
    Duration::from_millis((f.max_age_ms / 4).clamp(100, 1_000))
}

/// Even an idle sink is asked again this often, so expired leases are picked up.
const IDLE_RECHECK: Duration = Duration::from_secs(2);

impl DispatcherState {
    pub fn new(
        specs: Vec<SinkSpec>,
        holds: Holds,
        config: DeliveryConfig,
        wal: Addr<WalMsg>,
        addr: Addr<DispatcherMsg>,
        commits: watch::Receiver<u64>,
    ) -> Self {
        let sinks = specs
            .into_iter()
            .map(|s| SinkDriver {
                publisher: s.publisher,
                lane: Lane::new(s.batch_size),
                backoff: backoff(&config),
                paused_until: None,
                fill: s.fill,
                fill_gate: None,
                bucket: config
                    .max_records_per_sec
                    .get(&s.name)
                    .map(|r| rate::Bucket::new(*r, Instant::now())),
                rate_gate: None,
                reserved: Default::default(),
                live_first: config.live_first,
                resplit: false,
                name: s.name,
            })
            .collect();
        DispatcherState {
            sinks,
            config,
            wal,
            addr,
            commits,
            last_recheck: Instant::now(),
            tasks: crate::tasks::Tasks::default(),
            holds,
        }
    }

    /// The poll timer or a commit: ends pauses that are due, rechecks idle lanes now and
    /// then, and lets every lane lease what it has room for.
    fn wake(&mut self, myself: &ActorRef<DispatcherMsg>) {
        let now = Instant::now();
        let commit = *self.commits.borrow();
        let recheck = now.duration_since(self.last_recheck) >= IDLE_RECHECK;
        if recheck {
            self.last_recheck = now;
        }
        for i in 0..self.sinks.len() {
            if self.sinks[i].paused_until.is_some_and(|t| t <= now) {
                self.sinks[i].paused_until = None;
                self.sinks[i].resplit = true;
                self.on(i, Event::PauseOver, myself);
            }
            let mut filled = self.sinks[i].fill_gate.is_some_and(|t| t <= now);
            if filled {
                self.sinks[i].fill_gate = None;
            }
            if self.sinks[i].rate_gate.is_some_and(|t| t <= now) {
                self.sinks[i].rate_gate = None;
                filled = true;
            }
            if recheck || filled {
                self.on(i, Event::Recheck, myself);
            }
            self.on(i, Event::Wake { commit }, myself);
        }
    }

    /// A fill sink whose WAL found no full batch is asked again after a while, not at
    /// every commit: each ask reads up to a batch of bodies.
    fn leased(&mut self, i: usize, cycle: u64, batch: &Result<Vec<Leased>, String>) {
        let s = &mut self.sinks[i];
        if let (Some(b), Some(granted)) = (&mut s.bucket, s.reserved.remove(&cycle)) {
            // With lanes the ceiling holds the backlog only.
            let live_first = s.live_first;
            let used = batch
                .as_ref()
                .map_or(0, |b| b.iter().filter(|l| !(live_first && l.live)).count());
            b.refund(granted.saturating_sub(used));
        }
        if let (Some(f), Ok(b)) = (s.fill, batch) {
            if b.is_empty() {
                s.fill_gate = Some(Instant::now() + fill_recheck(f));
            }
        }
    }

    /// Feeds one event to sink `i`'s lane and carries out what it answers. Answers that come
    /// back at once (a publisher that cannot be reached) are fed back in the same turn.
    fn on(&mut self, i: usize, event: Event<Vec<Leased>>, myself: &ActorRef<DispatcherMsg>) {
        let mut events = std::collections::VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            let actions = self.sinks[i].lane.on(event);
            for action in actions {
                if let Some(back) = self.act(i, action, myself) {
                    events.push_back(back);
                }
            }
        }
    }

    fn act(
        &mut self,
        i: usize,
        action: Action<Vec<Leased>>,
        myself: &ActorRef<DispatcherMsg>,
    ) -> Option<Event<Vec<Leased>>> {
        let s = &mut self.sinks[i];
        match action {
            Action::Lease { cycle, max } => {
                // Paused by an operator, or not full a moment ago: answered here.
                let held = self.holds.is_held(&s.name);
                if held || s.fill_gate.is_some_and(|t| Instant::now() < t) {
                    s.resplit |= held;
                    return Some(Event::Leased {
                        cycle,
                        batch: Ok(Vec::new()),
                    });
                }
                // The sink's ceiling: a lease takes what the bucket grants; cut short, the
                // lane is asked again once a whole batch is allowed. With lanes the grant
                // bounds the backlog only: live records are leased whatever it is.
                let mut max = max;
                let mut granted = None;
                if let Some(b) = &mut s.bucket {
                    let now = Instant::now();
                    let want = if s.live_first {
                        max.min(b.slice())
                    } else {
                        max
                    };
                    let g = b.grant(want, now);
                    if g < want {
                        s.rate_gate = Some(now + b.wait_for(want));
                    }
                    if g == 0 && !s.live_first {
                        return Some(Event::Leased {
                            cycle,
                            batch: Ok(Vec::new()),
                        });
                    }
                    s.reserved.insert(cycle, g);
                    granted = Some(g);
                }
                let lanes = s.live_first.then(|| crate::wal::Lanes {
                    backlog_max: granted.unwrap_or(max),
                    split_now: std::mem::take(&mut s.resplit),
                });
                if lanes.is_none() {
                    max = granted.unwrap_or(max);
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                let lease = WalMsg::Lease {
                    sink: s.name.clone(),
                    max,
                    fill: s.fill,
                    lanes,
                    reply: tx.into(),
                };
                let sent = self.wal.cast(lease).map_err(|e| e.to_string());
                let (me, addr) = (myself.clone(), self.addr.clone());
                let sink = s.name.clone();
                let started = std::time::SystemTime::now();
                self.tasks.push(tokio::spawn(async move {
                    let batch = match sent {
                        Err(e) => Err(e),
                        Ok(()) => match tokio::time::timeout(Duration::from_secs(30), rx).await {
                            Ok(Ok(batch)) => Ok(batch),
                            Ok(Err(_)) => Err("WAL stopped before answering the lease".into()),
                            Err(_) => Err("lease not answered in 30 s".into()),
                        },
                    };
                    addr.note_sent();
                    if let Ok(b) = &batch {
                        let kept = crate::traces::kept_contexts(b.iter().map(|l| &l.record));
                        crate::traces::group_span(
                            "dispatcher.lease",
                            started,
                            &kept,
                            vec![
                                KeyValue::new("sink.name", sink),
                                KeyValue::new("lease.records", b.len() as i64),
                            ],
                        );
                    }
                    let _ = me.cast(DispatcherMsg::Leased {
                        sink: i,
                        cycle,
                        batch,
                    });
                }));
                None
            }
            Action::Resume => {
                let _ = s.publisher.cast(PublisherMsg::Resume);
                None
            }
            Action::Forward { cycle, batch } => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let publish = PublisherMsg::Publish {
                    batch,
                    reply: tx.into(),
                };
                if let Err(e) = s.publisher.cast(publish) {
                    let result = PublishResult::Transient(format!("publisher: {e}"));
                    return Some(Event::Published { cycle, result });
                }
                let timeout = Duration::from_millis(self.config.lease_timeout_ms);
                let (me, addr) = (myself.clone(), self.addr.clone());
                self.tasks.push(tokio::spawn(async move {
                    let result = match tokio::time::timeout(timeout, rx).await {
                        Ok(Ok(r)) => r,
                        Ok(Err(_)) => {
                            PublishResult::Transient("publisher stopped before answering".into())
                        }
                        Err(_) => {
                            PublishResult::Transient("publisher did not answer in time".into())
                        }
                    };
                    addr.note_sent();
                    let _ = me.cast(DispatcherMsg::Published {
                        sink: i,
                        cycle,
                        result,
                    });
                }));
                None
            }
            Action::Settle { outcomes, .. } => {
                let settle = WalMsg::Settle {
                    sink: s.name.clone(),
                    outcomes,
                };
                if let Err(e) = self.wal.cast(settle) {
                    // The leases expire and the records are delivered again.
                    tracing::warn!(sink = %s.name, error = %e, "settle not sent");
                }
                None
            }
            Action::Pause(kind) => {
                let d = match kind {
                    Pause::Short => Duration::from_millis(self.config.backoff_initial_ms),
                    Pause::Backoff => s
                        .backoff
                        .next()
                        .unwrap_or(Duration::from_millis(self.config.backoff_max_ms)),
                    // Honoured, up to MAX_RETRY_AFTER: a sink cannot park delivery for a day.
                    Pause::RetryAfter(ms) => s
                        .backoff
                        .next()
                        .unwrap_or(Duration::from_millis(self.config.backoff_max_ms))
                        .max(Duration::from_millis(ms).min(MAX_RETRY_AFTER)),
                };
                s.paused_until = Some(Instant::now() + d);
                None
            }
            Action::Recovered => {
                s.backoff = backoff(&self.config);
                None
            }
        }
    }
}

impl Actor for Dispatcher {
    type Msg = DispatcherMsg;
    type State = DispatcherState;
    type Arguments = DispatcherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        a: DispatcherArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = DispatcherState::new(
            a.sinks,
            a.holds,
            a.config.clone(),
            a.wal,
            a.addr,
            a.commits.clone(),
        );
        // Leases of a predecessor go back to Enqueued before this instance leases anything.
        if let Err(e) = state.wal.cast(WalMsg::ReleaseLeases) {
            tracing::warn!(error = %e, "leases not released; they expire after delivery.lease_timeout_ms");
        }
        // New commits wake the dispatcher at once.
        let (me, addr, mut rx) = (myself.clone(), state.addr.clone(), a.commits);
        state.tasks.push(tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                addr.note_sent();
                if me.cast(DispatcherMsg::Wake).is_err() {
                    break;
                }
            }
        }));
        // The poll timer ends backoff pauses and picks up expired leases.
        let period = Duration::from_millis(a.config.poll_interval_ms);
        let addr = state.addr.clone();
        state
            .tasks
            .every(period, myself.clone(), addr, || DispatcherMsg::Wake);
        Ok(state)
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.tasks.abort_all();
        // A stop (graceful shutdown, a config change) cuts publishes short: their leases go
        // back with the attempt refunded, durably, before the WAL stops (it stops last).
        match state
            .wal
            .call(WalMsg::StopLeases, Some(Duration::from_secs(5)))
            .await
        {
            Ok(n) if n > 0 => tracing::info!(leases = n, "leases in flight returned at stop"),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "leases in flight not returned at stop: their attempt stays counted")
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.addr.received();
        match msg {
            DispatcherMsg::Wake => state.wake(&myself),
            DispatcherMsg::Leased { sink, cycle, batch } => {
                state.leased(sink, cycle, &batch);
                state.on(sink, Event::Leased { cycle, batch }, &myself)
            }
            DispatcherMsg::Published {
                sink,
                cycle,
                result,
            } => state.on(sink, Event::Published { cycle, result }, &myself),
            DispatcherMsg::Fail(reason) => {
                return Err(format!("failure injected: {reason}").into());
            }
        }
        Ok(())
    }
}
