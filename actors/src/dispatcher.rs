//! `Dispatcher` actor: moves records from the WAL to each sink's publisher.
//!
//! Mailbox:
//! - `Wake`  <- its commit watcher (new records) and its poll timer
//! - `Leased` <- its own lease waiters (a lease's result, numbered per sink)
//! - `Done`  <- its own publish waiters (how a batch went)
//! - `Fail`  <- admin API chaos hook
//!
//! Per sink, up to [`PIPELINE`] cycles run at once: lease up to `batch_size` records
//! (InFlight in the WAL), hand them to the sink's publisher, settle the outcome in the WAL. A
//! transient failure pauses that sink alone with jittered exponential backoff (backon); other
//! sinks go on. Permanent failures dead-letter the batch with the reason.
//!
//! Order of first delivery per device holds with two cycles in flight:
//! - leases are cast to the WAL from this actor's handler, so the WAL serves them in cycle
//!   order; their results are forwarded to the publisher in cycle order (a reorder buffer
//!   absorbs waiters that finish out of order), and the publisher takes its mailbox in order;
//! - each failure — and each batch the publisher held back (`NotSent`: a new publisher
//!   instance starts holding) — starts a new epoch: a batch leased in an earlier epoch is not
//!   forwarded but released (back to Enqueued, attempt given back), and the publisher itself
//!   answers
//!   `NotSent` after a failure until the dispatcher sends `Resume` ahead of the first batch of
//!   the new epoch — so nothing queued behind a failed batch overtakes it;
//! - cycle endings are taken in cycle order, and a new epoch starts only once every cycle of
//!   the old one has ended (so its records are back in the WAL before the next lease).
//!
//! Failure: the dispatcher holds nothing durable; its tasks end with its state. A new
//! instance first asks the WAL to release every lease (`ReleaseLeases`, ordered before its
//! own leases), so records its predecessor held are leased again first instead of waiting out
//! `delivery.lease_timeout_ms` while newer records overtake them: duplicates, never loss, and
//! order of first delivery kept.

use crate::addr::{Addr, Failable};
use crate::metrics::Metrics;
use crate::sinks::{PublishResult, PublisherMsg};
use crate::wal::{Leased, Outcome, WalMsg};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use edge_gateway_config::DeliveryConfig;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

pub struct Dispatcher;

/// How one sink cycle ended.
#[derive(Debug)]
pub enum Cycle {
    /// Nothing to lease.
    Empty,
    /// The WAL did not answer the lease.
    LeaseFailed(String),
    Published {
        seqs: Vec<u64>,
        full: bool,
        result: PublishResult,
    },
}

pub enum DispatcherMsg {
    Wake,
    /// A lease's result; `cycle` numbers leases per sink in the order they were cast.
    Leased {
        sink: usize,
        cycle: u64,
        epoch: u64,
        batch: Result<Vec<Leased>, String>,
    },
    /// How a forwarded batch went; `n` is its cycle number.
    Done {
        sink: usize,
        n: u64,
        cycle: Cycle,
    },
    Fail(String),
}

impl Failable for DispatcherMsg {
    fn fail(reason: String) -> Self {
        DispatcherMsg::Fail(reason)
    }
}

pub struct DispatcherArgs {
    pub sinks: Vec<(String, Addr<PublisherMsg>)>,
    pub wal: Addr<WalMsg>,
    pub commits: watch::Receiver<u64>,
    pub config: DeliveryConfig,
    pub metrics: Arc<Metrics>,
    pub addr: Addr<DispatcherMsg>,
}

/// One sink's delivery state.
pub struct SinkSlot {
    pub name: String,
    publisher: Addr<PublisherMsg>,
    pub in_flight: usize,
    pub paused_until: Option<Instant>,
    backoff: ExponentialBackoff,
    /// Commit mark when a lease last came back empty: no need to ask again until it moves.
    idle_at_commit: Option<u64>,
    last_lease: Option<Instant>,
    /// Bumped by every failure; batches leased in an older epoch are released unsent.
    pub epoch: u64,
    /// The publisher holds batches until told to resume (after a failure, or a restart).
    pub needs_resume: bool,
    /// Number of the next lease to cast, and of the next lease result to forward.
    next_cycle: u64,
    next_forward: u64,
    /// Lease results that came back ahead of an earlier one: cycle -> (epoch, result).
    reorder: std::collections::BTreeMap<u64, (u64, Result<Vec<Leased>, String>)>,
    /// Cycle endings are taken in cycle order too, so a failure is always seen before the
    /// `NotSent` answers it caused (their waiters may report in either order).
    next_complete: u64,
    ended: std::collections::BTreeMap<u64, Cycle>,
}

impl SinkSlot {
    /// Room for another cycle. After a failure (or before the first batch) the pipeline is
    /// drained first: a lease taken while an older epoch's lease is still out would skip the
    /// records that lease holds, and deliver later ones before them once they are released.
    fn has_room(&self) -> bool {
        if self.needs_resume {
            self.in_flight == 0
        } else {
            self.in_flight < PIPELINE
        }
    }
}

/// The dispatcher's state: plain data, decisions testable without the runtime.
pub struct DispatcherState {
    pub slots: Vec<SinkSlot>,
    config: DeliveryConfig,
    wal: Addr<WalMsg>,
    addr: Addr<DispatcherMsg>,
    commits: watch::Receiver<u64>,
    tasks: crate::tasks::Tasks,
}

fn backoff(c: &DeliveryConfig) -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(c.backoff_initial_ms))
        .with_max_delay(Duration::from_millis(c.backoff_max_ms))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Lease-publish cycles in flight per sink: the next lease overlaps the current publish.
pub const PIPELINE: usize = 2;

/// Even an idle sink is asked again this often, so expired leases are picked up.
const IDLE_RECHECK: Duration = Duration::from_secs(2);

impl DispatcherState {
    pub fn new(
        names: Vec<(String, Addr<PublisherMsg>)>,
        config: DeliveryConfig,
        wal: Addr<WalMsg>,
        addr: Addr<DispatcherMsg>,
        commits: watch::Receiver<u64>,
    ) -> Self {
        let slots = names
            .into_iter()
            .map(|(name, publisher)| SinkSlot {
                name,
                publisher,
                in_flight: 0,
                paused_until: None,
                backoff: backoff(&config),
                idle_at_commit: None,
                last_lease: None,
                epoch: 0,
                needs_resume: true,
                next_cycle: 0,
                next_forward: 0,
                reorder: Default::default(),
                next_complete: 0,
                ended: Default::default(),
            })
            .collect();
        DispatcherState {
            slots,
            config,
            wal,
            addr,
            commits,
            tasks: crate::tasks::Tasks::default(),
        }
    }

    /// Sinks that should start a cycle now.
    pub fn ready(&self, now: Instant, commit_mark: u64) -> Vec<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.has_room() && s.paused_until.is_none_or(|p| p <= now))
            .filter(|(_, s)| {
                s.idle_at_commit != Some(commit_mark)
                    || s.last_lease
                        .is_none_or(|t| now.duration_since(t) >= IDLE_RECHECK)
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Records a finished cycle; returns the settle to send to the WAL, if any, and whether
    /// the sink should go again at once.
    pub fn on_done(
        &mut self,
        i: usize,
        cycle: Cycle,
        now: Instant,
        commit_mark: u64,
    ) -> (Option<Vec<(u64, Outcome)>>, bool) {
        let initial = self.config.backoff_initial_ms;
        let s = &mut self.slots[i];
        s.in_flight = s.in_flight.saturating_sub(1);
        match cycle {
            Cycle::Empty => {
                s.idle_at_commit = Some(commit_mark);
                (None, false)
            }
            Cycle::LeaseFailed(_) => {
                s.paused_until = Some(now + Duration::from_millis(initial));
                (None, false)
            }
            Cycle::Published { seqs, full, result } => {
                s.idle_at_commit = None;
                let (outcome, again) = match result {
                    PublishResult::Delivered => {
                        s.backoff = backoff(&self.config);
                        s.paused_until = None;
                        (Outcome::Acked, full)
                    }
                    PublishResult::Permanent(reason) => {
                        s.epoch += 1;
                        s.needs_resume = true;
                        (Outcome::Dead(reason), true)
                    }
                    PublishResult::NotSent => {
                        // The publisher was holding (it failed, or it is a new instance). Not a
                        // failure (no backoff, the attempt is given back), but a new epoch all
                        // the same: a batch leased after this one must not be forwarded — with
                        // the `Resume` this one now needs — ahead of its records.
                        s.epoch += 1;
                        s.needs_resume = true;
                        (Outcome::Release, true)
                    }
                    PublishResult::Transient(_) | PublishResult::Unreachable(_) => {
                        s.epoch += 1;
                        s.needs_resume = true;
                        let d = s
                            .backoff
                            .next()
                            .unwrap_or(Duration::from_millis(self.config.backoff_max_ms));
                        s.paused_until = Some(now + d);
                        match result {
                            PublishResult::Transient(reason) => (Outcome::Retry(reason), false),
                            // Nothing reached the sink: the attempt is given back.
                            _ => (Outcome::Release, false),
                        }
                    }
                };
                (
                    Some(seqs.into_iter().map(|q| (q, outcome.clone())).collect()),
                    again,
                )
            }
        }
    }

    /// Starts a cycle for sink `i`: casts its lease to the WAL now, from the handler, so the
    /// WAL serves leases in cycle order; a task waits for the answer.
    fn start(&mut self, i: usize, myself: &ActorRef<DispatcherMsg>) {
        let max = self.config.batch_size;
        let s = &mut self.slots[i];
        s.in_flight += 1;
        s.last_lease = Some(Instant::now());
        let (cycle, epoch) = (s.next_cycle, s.epoch);
        s.next_cycle += 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lease = WalMsg::Lease {
            sink: s.name.clone(),
            max,
            reply: tx.into(),
        };
        let sent = self.wal.cast(lease).map_err(|e| e.to_string());
        let (me, addr) = (myself.clone(), self.addr.clone());
        let h = tokio::spawn(async move {
            let batch = match sent {
                Err(e) => Err(e),
                Ok(()) => match tokio::time::timeout(Duration::from_secs(30), rx).await {
                    Ok(Ok(batch)) => Ok(batch),
                    Ok(Err(_)) => Err("WAL stopped before answering the lease".to_string()),
                    Err(_) => Err("lease not answered in 30 s".to_string()),
                },
            };
            addr.note_sent();
            let _ = me.cast(DispatcherMsg::Leased {
                sink: i,
                cycle,
                epoch,
                batch,
            });
        });
        self.tasks.push(h);
    }

    /// Takes a lease result; forwards every result that is now next in cycle order.
    fn on_leased(
        &mut self,
        i: usize,
        cycle: u64,
        epoch: u64,
        batch: Result<Vec<Leased>, String>,
        myself: &ActorRef<DispatcherMsg>,
    ) {
        self.slots[i].reorder.insert(cycle, (epoch, batch));
        loop {
            let s = &mut self.slots[i];
            let n = s.next_forward;
            let Some((epoch, next)) = s.reorder.remove(&n) else {
                break;
            };
            s.next_forward += 1;
            match next {
                Err(e) => self.end(i, n, Cycle::LeaseFailed(e), myself),
                Ok(batch) if batch.is_empty() => self.end(i, n, Cycle::Empty, myself),
                Ok(batch) => self.forward(i, n, epoch, batch, myself),
            }
        }
    }

    /// Hands a batch to the publisher (its mailbox keeps the order) and waits on a task.
    fn forward(
        &mut self,
        i: usize,
        n: u64,
        epoch: u64,
        batch: Vec<Leased>,
        myself: &ActorRef<DispatcherMsg>,
    ) {
        let seqs: Vec<u64> = batch.iter().map(|l| l.seq).collect();
        let full = batch.len() >= self.config.batch_size;
        let s = &mut self.slots[i];
        if epoch < s.epoch {
            // Leased before a failure that came after: must not overtake the failed batch.
            let result = PublishResult::NotSent;
            return self.end(i, n, Cycle::Published { seqs, full, result }, myself);
        }
        if s.needs_resume {
            s.needs_resume = false;
            let _ = s.publisher.cast(PublisherMsg::Resume);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let publish = PublisherMsg::Publish {
            batch,
            reply: tx.into(),
        };
        if let Err(e) = s.publisher.cast(publish) {
            let result = PublishResult::Transient(format!("publisher: {e}"));
            return self.end(i, n, Cycle::Published { seqs, full, result }, myself);
        }
        let timeout = Duration::from_millis(self.config.lease_timeout_ms);
        let (me, addr) = (myself.clone(), self.addr.clone());
        let h = tokio::spawn(async move {
            let result = match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => PublishResult::Transient("publisher stopped before answering".into()),
                Err(_) => PublishResult::Transient("publisher did not answer in time".into()),
            };
            addr.note_sent();
            let cycle = Cycle::Published { seqs, full, result };
            let _ = me.cast(DispatcherMsg::Done { sink: i, n, cycle });
        });
        self.tasks.push(h);
    }

    /// Records that cycle `n` ended and completes every ended cycle now next in order.
    fn end(&mut self, i: usize, n: u64, cycle: Cycle, myself: &ActorRef<DispatcherMsg>) {
        self.slots[i].ended.insert(n, cycle);
        loop {
            let s = &mut self.slots[i];
            let Some(cycle) = s.ended.remove(&s.next_complete) else {
                break;
            };
            s.next_complete += 1;
            self.complete(i, cycle, myself);
        }
    }

    /// A cycle ended: settle its records, and go again if it says so.
    fn complete(&mut self, i: usize, cycle: Cycle, myself: &ActorRef<DispatcherMsg>) {
        let mark = *self.commits.borrow();
        let (settle, again) = self.on_done(i, cycle, Instant::now(), mark);
        if let Some(outcomes) = settle {
            let name = self.slots[i].name.clone();
            if let Err(e) = self.wal.cast(WalMsg::Settle {
                sink: name.clone(),
                outcomes,
            }) {
                // The leases expire and the records are delivered again.
                tracing::warn!(sink = %name, error = %e, "settle not sent");
            }
        }
        let s = &self.slots[i];
        if again && s.has_room() && s.paused_until.is_none() {
            self.start(i, myself);
        }
    }

    fn start_ready(&mut self, myself: &ActorRef<DispatcherMsg>) {
        let mark = *self.commits.borrow();
        for i in self.ready(Instant::now(), mark) {
            self.start(i, myself);
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
        let mut state =
            DispatcherState::new(a.sinks, a.config.clone(), a.wal, a.addr, a.commits.clone());
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
        let (me, addr, period) = (
            myself.clone(),
            state.addr.clone(),
            Duration::from_millis(a.config.poll_interval_ms),
        );
        state.tasks.push(tokio::spawn(async move {
            let mut t = tokio::time::interval(period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                addr.note_sent();
                if me.cast(DispatcherMsg::Wake).is_err() {
                    break;
                }
            }
        }));
        Ok(state)
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.tasks.abort_all();
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
            DispatcherMsg::Wake => state.start_ready(&myself),
            DispatcherMsg::Leased {
                sink,
                cycle,
                epoch,
                batch,
            } => state.on_leased(sink, cycle, epoch, batch, &myself),
            DispatcherMsg::Done { sink, n, cycle } => state.end(sink, n, cycle, &myself),
            DispatcherMsg::Fail(reason) => {
                return Err(format!("failure injected: {reason}").into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> DispatcherState {
        let (_tx, rx) = watch::channel(0);
        let cfg = DeliveryConfig {
            backoff_initial_ms: 100,
            backoff_max_ms: 1000,
            ..Default::default()
        };
        DispatcherState::new(
            vec![
                ("a".into(), Addr::new("publisher:a", None)),
                ("b".into(), Addr::new("publisher:b", None)),
            ],
            cfg,
            Addr::new("wal", None),
            Addr::new("dispatcher", None),
            rx,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_sink_backs_off_without_using_up_attempts() {
        let mut s = state();
        let now = Instant::now();
        s.slots[0].in_flight = 1;
        let (settle, again) = s.on_done(
            0,
            Cycle::Published {
                seqs: vec![7],
                full: true,
                result: PublishResult::Unreachable("connection refused".into()),
            },
            now,
            1,
        );
        assert_eq!(settle.unwrap(), vec![(7, Outcome::Release)]);
        assert!(!again);
        assert!(s.slots[0].paused_until.unwrap() > now);
        assert!(s.slots[0].needs_resume);
        assert_eq!(
            s.ready(now, 1),
            vec![1],
            "the unreachable sink waits out its backoff"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failure_pauses_only_that_sink_with_growing_backoff() {
        let mut s = state();
        let now = Instant::now();
        assert_eq!(s.ready(now, 1), vec![0, 1]);
        s.slots[0].in_flight = PIPELINE;
        assert_eq!(
            s.ready(now, 1),
            vec![1],
            "a sink with a full pipeline waits"
        );
        s.slots[0].in_flight = 1;
        s.slots[1].in_flight = 1;
        let (settle, again) = s.on_done(
            0,
            Cycle::Published {
                seqs: vec![1, 2],
                full: true,
                result: PublishResult::Transient("HTTP 503".into()),
            },
            now,
            1,
        );
        assert_eq!(
            settle.unwrap(),
            vec![
                (1, Outcome::Retry("HTTP 503".into())),
                (2, Outcome::Retry("HTTP 503".into()))
            ]
        );
        assert!(!again);
        let first_pause = s.slots[0].paused_until.unwrap() - now;
        assert!(
            first_pause >= Duration::from_millis(100) && first_pause <= Duration::from_millis(1000),
            "{first_pause:?}"
        );
        let (_, again) = s.on_done(
            1,
            Cycle::Published {
                seqs: vec![1],
                full: true,
                result: PublishResult::Delivered,
            },
            now,
            1,
        );
        assert!(again, "a full delivered batch goes again at once");
        assert_eq!(s.ready(now, 1), vec![1], "sink a is paused, b is not");
        assert_eq!(s.ready(now + Duration::from_millis(2001), 1), vec![0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failure_dead_letters_and_empty_sink_waits_for_commits() {
        let mut s = state();
        let now = Instant::now();
        s.slots[0].in_flight = 1;
        let (settle, _) = s.on_done(
            0,
            Cycle::Published {
                seqs: vec![5],
                full: false,
                result: PublishResult::Permanent("HTTP 400".into()),
            },
            now,
            1,
        );
        assert_eq!(settle.unwrap(), vec![(5, Outcome::Dead("HTTP 400".into()))]);
        s.slots[0].last_lease = Some(now);
        s.on_done(0, Cycle::Empty, now, 7);
        assert!(!s.ready(now, 7).contains(&0), "nothing new committed");
        assert!(s.ready(now, 8).contains(&0), "a commit wakes it");
        assert!(
            s.ready(now + IDLE_RECHECK, 7).contains(&0),
            "and so does the idle recheck"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_open_a_new_epoch_and_held_batches_are_released() {
        let mut s = state();
        let now = Instant::now();
        assert!(
            s.slots[0].needs_resume,
            "a fresh publisher must be resumed first"
        );
        s.slots[0].needs_resume = false;
        s.slots[0].in_flight = 2;
        let failed = Cycle::Published {
            seqs: vec![1],
            full: true,
            result: PublishResult::Transient("HTTP 503".into()),
        };
        s.on_done(0, failed, now, 1);
        assert_eq!((s.slots[0].epoch, s.slots[0].needs_resume), (1, true));
        let held = Cycle::Published {
            seqs: vec![2],
            full: true,
            result: PublishResult::NotSent,
        };
        let (settle, again) = s.on_done(0, held, now, 1);
        assert_eq!(
            settle.unwrap(),
            vec![(2, Outcome::Release)],
            "no attempt spent on a batch never sent"
        );
        assert!(again);
        assert!(
            s.slots[0].paused_until.is_some(),
            "only the failure paused the sink"
        );
        assert_eq!(
            s.slots[0].epoch, 2,
            "held back: batches leased before it are released, not forwarded ahead of it"
        );
        assert_eq!(s.slots[0].in_flight, 0);
    }
}
