//! One sink's delivery lane: the rules that keep the order of first delivery, as a pure state
//! machine. No actor, no clock, no I/O: events go in, actions come out, and the dispatcher
//! actor only carries them out (casts to the WAL and the publisher, timers).
//!
//! Events: `Wake` (a commit landed; carries the commit mark), `Recheck` (the idle recheck
//! came: leases may have expired), `PauseOver`, `Leased` (a lease's result, by cycle number),
//! `Published` (how a forwarded batch went). Actions: `Lease`, `Resume`, `Forward`, `Settle`,
//! `Pause`, `Recovered`.
//!
//! Invariants (checked by the deterministic and the property tests in `lane_tests`):
//! - **Order of first delivery.** Leases are issued in cycle order and the WAL serves them in
//!   the order they were cast, so cycle order is record order. Batches are forwarded in cycle
//!   order (results that come back early wait in `leased`), and the publisher takes its
//!   mailbox in order.
//! - **Nothing overtakes a batch that was not delivered.** Every outcome other than
//!   `Delivered` (a failure, or `NotSent`: the publisher was holding) starts a new epoch. A batch
//!   leased in an older epoch is released unsent, never forwarded; and the publisher holds
//!   (answers `NotSent`) after a failure until a `Resume`, which goes out just ahead of the first
//!   batch of the new epoch.
//! - **A new epoch leases only after the old one ended.** While a `Resume` is owed, no lease is
//!   issued until every cycle in flight ended, so the records of the old epoch are back in the
//!   WAL (its `Settle` is emitted before the next `Lease`) before they can be skipped.
//! - **Settle once.** Cycles end in cycle order, each exactly once; a `Published` for a cycle
//!   that was not forwarded (a late or duplicate answer) is ignored.
//!
//! A lane starts owing a `Resume` (a fresh publisher instance holds until told). It assumes
//! the leases of any predecessor were released before its first lease: the dispatcher casts
//! `ReleaseLeases` to the WAL when it starts, ahead of every lease of its own.

use crate::sinks::PublishResult;
use crate::wal::Outcome;
use std::collections::BTreeMap;

/// Lease-publish cycles in flight per lane: the next leases overlap the current publish, so
/// the WAL's commits (lease, settle: an fsync each) are off the sink's path. 2 left the drain
/// waiting on them (1 M records to a local HTTP sink: 7.8–8.6 s; with 3: 6.1–6.2 s,
/// docs/benchmarks.md, session 12). Publishers take batches in order, so more only queues.
pub const PIPELINE: usize = 3;

/// Deliveries in a row at a reduced lease limit before it doubles again.
pub const GOOD_BEFORE_GROWING: u32 = 8;

/// What the lane needs to know of a leased batch.
pub trait Batch {
    /// WAL sequence numbers, in the order leased.
    fn seqs(&self) -> Vec<u64>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Batch for Vec<crate::wal::Leased> {
    fn seqs(&self) -> Vec<u64> {
        self.iter().map(|l| l.seq).collect()
    }
    fn len(&self) -> usize {
        Vec::len(self)
    }
}

#[derive(Debug)]
pub enum Event<B> {
    /// Something may be leasable: `commit` is the WAL's commit mark now.
    Wake { commit: u64 },
    /// Ask again even if no commit moved (expired leases come back this way).
    Recheck,
    /// The pause asked for by the last `Pause` is over.
    PauseOver,
    /// The WAL answered lease `cycle`.
    Leased {
        cycle: u64,
        batch: Result<B, String>,
    },
    /// The publisher answered the batch of `cycle` (or the driver gave up waiting).
    Published { cycle: u64, result: PublishResult },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// The WAL did not answer a lease: a short, fixed pause.
    Short,
    /// The sink failed: the next step of its jittered exponential backoff.
    Backoff,
    /// The sink asked for this long (ms; its `Retry-After`): the backoff's next step, but at
    /// least this.
    RetryAfter(u64),
}

#[derive(Debug, PartialEq)]
pub enum Action<B> {
    /// Cast a lease of up to `max` records to the WAL.
    Lease {
        cycle: u64,
        max: usize,
    },
    /// Tell the publisher to stop holding; always just ahead of a `Forward`.
    Resume,
    Forward {
        cycle: u64,
        batch: B,
    },
    /// Settle the records of `cycle`: emitted once per forwarded or released cycle.
    Settle {
        cycle: u64,
        outcomes: Vec<(u64, Outcome)>,
    },
    /// Stop leasing until `PauseOver`.
    Pause(Pause),
    /// A batch was delivered: the backoff starts over.
    Recovered,
}

/// How one cycle ended.
#[derive(Debug)]
enum Ending {
    Empty,
    LeaseFailed,
    Published {
        seqs: Vec<u64>,
        full: bool,
        result: PublishResult,
    },
}

#[derive(Debug)]
struct Issued {
    epoch: u64,
    /// Records asked for: a batch this long is full.
    max: usize,
    /// The commit mark known when the lease was issued: an empty answer means nothing was
    /// leasable up to it.
    commit: u64,
}

#[derive(Debug)]
pub struct Lane<B> {
    batch_size: usize,
    /// Cycles in flight at most ([`PIPELINE`]; tests vary it).
    pipeline: usize,
    /// Records per lease now: `batch_size`, or less after the sink refused a batch as a whole
    /// (too big, or one bad record in it): halved until the refusal is down to one record,
    /// doubled again after [`GOOD_BEFORE_GROWING`] deliveries in a row.
    limit: usize,
    delivered_at_limit: u32,
    /// Cycles issued and not yet ended.
    in_flight: usize,
    paused: bool,
    /// Commit mark the WAL was known to be empty at; no lease until a newer one or a recheck.
    idle_at: Option<u64>,
    commit: u64,
    epoch: u64,
    resume_owed: bool,
    next_cycle: u64,
    issued: BTreeMap<u64, Issued>,
    /// Lease answers waiting for an earlier one (forwarded in cycle order).
    next_forward: u64,
    leased: BTreeMap<u64, Result<B, String>>,
    /// Forwarded cycles awaiting the publisher: their records and whether the batch was full.
    forwarded: BTreeMap<u64, (Vec<u64>, bool)>,
    /// Endings waiting for an earlier one (completed in cycle order).
    next_complete: u64,
    ended: BTreeMap<u64, Ending>,
}

impl<B: Batch> Lane<B> {
    pub fn new(batch_size: usize) -> Self {
        Lane {
            batch_size: batch_size.max(1),
            pipeline: PIPELINE,
            limit: batch_size.max(1),
            delivered_at_limit: 0,
            in_flight: 0,
            paused: false,
            idle_at: None,
            commit: 0,
            epoch: 0,
            resume_owed: true,
            next_cycle: 0,
            issued: BTreeMap::new(),
            next_forward: 0,
            leased: BTreeMap::new(),
            forwarded: BTreeMap::new(),
            next_complete: 0,
            ended: BTreeMap::new(),
        }
    }

    /// At most `depth` cycles in flight (at least one).
    pub fn with_pipeline(mut self, depth: usize) -> Self {
        self.pipeline = depth.max(1);
        self
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Takes one event; returns what to do, in order (a `Settle` always precedes the lease
    /// that may pick its released records up again).
    pub fn on(&mut self, event: Event<B>) -> Vec<Action<B>> {
        let mut out = Vec::new();
        match event {
            Event::Wake { commit } => {
                self.commit = self.commit.max(commit);
                if self.idle_at != Some(self.commit) {
                    self.fill(&mut out);
                }
            }
            Event::Recheck => {
                self.idle_at = None;
                self.fill(&mut out);
            }
            Event::PauseOver => {
                self.paused = false;
                self.fill(&mut out);
            }
            Event::Leased { cycle, batch } => {
                if self.issued.contains_key(&cycle) && cycle >= self.next_forward {
                    self.leased.insert(cycle, batch);
                    self.forward_ready(&mut out);
                }
            }
            Event::Published { cycle, result } => {
                if let Some((seqs, full)) = self.forwarded.remove(&cycle) {
                    let ending = Ending::Published { seqs, full, result };
                    self.end(cycle, ending, &mut out);
                }
            }
        }
        out
    }

    fn has_room(&self) -> bool {
        if self.paused {
            false
        } else if self.resume_owed {
            // The old epoch's records must be back in the WAL before the next lease.
            self.in_flight == 0
        } else {
            self.in_flight < self.pipeline
        }
    }

    fn fill(&mut self, out: &mut Vec<Action<B>>) {
        while self.has_room() {
            self.lease(out);
        }
    }

    fn lease(&mut self, out: &mut Vec<Action<B>>) {
        let cycle = self.next_cycle;
        self.next_cycle += 1;
        self.in_flight += 1;
        let issued = Issued {
            epoch: self.epoch,
            max: self.limit,
            commit: self.commit,
        };
        self.issued.insert(cycle, issued);
        out.push(Action::Lease {
            cycle,
            max: self.limit,
        });
    }

    /// Forwards every lease answer that is now next in cycle order.
    fn forward_ready(&mut self, out: &mut Vec<Action<B>>) {
        while let Some(answer) = self.leased.remove(&self.next_forward) {
            let cycle = self.next_forward;
            self.next_forward += 1;
            let (epoch, max) = self
                .issued
                .get(&cycle)
                .map_or((0, self.batch_size), |i| (i.epoch, i.max));
            match answer {
                Err(_) => self.end(cycle, Ending::LeaseFailed, out),
                Ok(batch) if batch.is_empty() => self.end(cycle, Ending::Empty, out),
                Ok(batch) => {
                    let seqs = batch.seqs();
                    let full = batch.len() >= max;
                    if epoch < self.epoch {
                        // Leased before an outcome that was not a delivery: must not overtake
                        // that batch, whose records are going back to the WAL.
                        let result = PublishResult::NotSent;
                        self.end(cycle, Ending::Published { seqs, full, result }, out);
                        continue;
                    }
                    if self.resume_owed {
                        self.resume_owed = false;
                        out.push(Action::Resume);
                    }
                    self.forwarded.insert(cycle, (seqs, full));
                    out.push(Action::Forward { cycle, batch });
                }
            }
        }
    }

    /// Records that `cycle` ended; completes every ending now next in cycle order.
    fn end(&mut self, cycle: u64, ending: Ending, out: &mut Vec<Action<B>>) {
        self.ended.insert(cycle, ending);
        while let Some(ending) = self.ended.remove(&self.next_complete) {
            let cycle = self.next_complete;
            self.next_complete += 1;
            self.complete(cycle, ending, out);
        }
    }

    fn complete(&mut self, cycle: u64, ending: Ending, out: &mut Vec<Action<B>>) {
        self.in_flight -= 1;
        let issued = self.issued.remove(&cycle);
        let again = match ending {
            Ending::Empty => {
                self.idle_at = Some(issued.map_or(self.commit, |i| i.commit));
                false
            }
            Ending::LeaseFailed => {
                self.paused = true;
                out.push(Action::Pause(Pause::Short));
                false
            }
            Ending::Published { seqs, full, result } => {
                self.idle_at = None;
                let (outcome, again) = match result {
                    PublishResult::Delivered => {
                        out.push(Action::Recovered);
                        self.delivered();
                        (Outcome::Acked, full)
                    }
                    // Refused as a whole — too big, or something in it is bad: never the
                    // neighbours' fault. Back to the WAL, and the next leases are half as
                    // long, down to the one record that is refused alone (dead-lettered with
                    // the sink's reason); the others go on, in order.
                    PublishResult::Permanent(_) | PublishResult::TooBig(_) if seqs.len() > 1 => {
                        self.new_epoch();
                        self.limit = (seqs.len() / 2).max(1);
                        self.delivered_at_limit = 0;
                        (Outcome::Release, true)
                    }
                    PublishResult::Permanent(reason) | PublishResult::TooBig(reason) => {
                        self.new_epoch();
                        (Outcome::Dead(reason), true)
                    }
                    // Held back by the publisher (it failed, or it is a new instance), or
                    // leased in an older epoch: never sent, so the attempt is given back; but a
                    // new epoch all the same, so no batch leased after it goes out ahead of it.
                    PublishResult::NotSent => {
                        self.new_epoch();
                        (Outcome::Release, true)
                    }
                    PublishResult::Transient(reason) => {
                        self.new_epoch();
                        self.pause(out);
                        (Outcome::Retry(reason), false)
                    }
                    // The sink took nothing and blamed nothing: the attempt is given back.
                    PublishResult::Outage { retry_after_ms, .. } => {
                        self.new_epoch();
                        self.pause_at_least(retry_after_ms, out);
                        (Outcome::Release, false)
                    }
                };
                let outcomes = seqs.into_iter().map(|q| (q, outcome.clone())).collect();
                out.push(Action::Settle { cycle, outcomes });
                again
            }
        };
        if again && self.has_room() {
            self.lease(out);
        }
    }

    /// A delivery at the current limit; enough of them in a row and the limit grows back.
    fn delivered(&mut self) {
        if self.limit < self.batch_size {
            self.delivered_at_limit += 1;
            if self.delivered_at_limit >= GOOD_BEFORE_GROWING {
                self.limit = (self.limit * 2).min(self.batch_size);
                self.delivered_at_limit = 0;
            }
        }
    }

    fn new_epoch(&mut self) {
        self.epoch += 1;
        self.resume_owed = true;
    }

    fn pause(&mut self, out: &mut Vec<Action<B>>) {
        self.pause_at_least(None, out);
    }

    fn pause_at_least(&mut self, retry_after_ms: Option<u64>, out: &mut Vec<Action<B>>) {
        if !self.paused {
            self.paused = true;
            out.push(Action::Pause(match retry_after_ms {
                Some(ms) => Pause::RetryAfter(ms),
                None => Pause::Backoff,
            }));
        }
    }
}
