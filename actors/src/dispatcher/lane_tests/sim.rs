//! The simulated world the lane runs in for the property test (see `lane_tests`).

use super::super::lane::{Action, Event, Lane, PIPELINE};
use super::Seqs;
use crate::sinks::PublishResult;
use crate::wal::Outcome;
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::{BTreeMap, HashSet, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum St {
    Enqueued,
    InFlight { inst: u32, cycle: u64 },
    Acked,
    Dead,
}

#[derive(Debug)]
enum WalOp {
    Lease {
        inst: u32,
        cycle: u64,
        max: usize,
    },
    Settle {
        inst: u32,
        cycle: u64,
        outcomes: Vec<(u64, Outcome)>,
    },
    ReleaseLeases,
}

#[derive(Debug)]
enum PubOp {
    Resume,
    Publish { inst: u32, cycle: u64, batch: Seqs },
}

#[derive(Debug)]
pub(super) enum Reply {
    Leased {
        inst: u32,
        cycle: u64,
        batch: Seqs,
    },
    Published {
        inst: u32,
        cycle: u64,
        result: PublishResult,
    },
}

const DEVICES: u64 = 3;

pub(super) struct World {
    batch_size: usize,
    max_attempts: u32,
    pub(super) recs: Vec<(St, u32)>,
    commit: u64,
    wal: VecDeque<WalOp>,
    publisher: VecDeque<PubOp>,
    holding: bool,
    pub(super) replies: Vec<Reply>,
    inst: u32,
    lane: Lane<Seqs>,
    /// The lane's cycles in flight at most.
    pipeline: usize,
    paused: bool,
    /// Publishes the dispatcher stopped waiting for: their answers go nowhere.
    timed_out: HashSet<(u32, u64)>,
    /// What reached the sink, in order.
    pub(super) delivered: Vec<u64>,
    pub(super) faults: u32,
}

impl World {
    pub(super) fn new(records: u64, batch_size: usize, max_attempts: u32) -> Self {
        World {
            batch_size,
            max_attempts,
            recs: (0..records).map(|_| (St::Enqueued, 0)).collect(),
            commit: 1,
            wal: VecDeque::new(),
            publisher: VecDeque::new(),
            holding: true,
            replies: Vec::new(),
            inst: 0,
            lane: Lane::new(batch_size),
            pipeline: PIPELINE,
            paused: false,
            timed_out: HashSet::new(),
            delivered: Vec::new(),
            faults: 0,
        }
    }

    pub(super) fn set_pipeline(&mut self, depth: usize) {
        self.pipeline = depth;
        self.lane = Lane::new(self.batch_size).with_pipeline(depth);
    }

    fn feed(&mut self, event: Event<Seqs>) {
        for action in self.lane.on(event) {
            let inst = self.inst;
            match action {
                Action::Lease { cycle, max } => {
                    self.wal.push_back(WalOp::Lease { inst, cycle, max })
                }
                Action::Resume => self.publisher.push_back(PubOp::Resume),
                Action::Forward { cycle, batch } => {
                    self.publisher
                        .push_back(PubOp::Publish { inst, cycle, batch })
                }
                Action::Settle { cycle, outcomes } => self.wal.push_back(WalOp::Settle {
                    inst,
                    cycle,
                    outcomes,
                }),
                Action::Pause(_) => self.paused = true,
                Action::Recovered => {}
            }
        }
    }

    pub(super) fn wake(&mut self) {
        self.feed(Event::Wake {
            commit: self.commit,
        });
    }

    fn append(&mut self, n: u64) {
        self.recs.extend((0..n).map(|_| (St::Enqueued, 0)));
        self.commit += 1;
    }

    pub(super) fn wal_step(&mut self) {
        let Some(op) = self.wal.pop_front() else {
            return;
        };
        match op {
            WalOp::Lease { inst, cycle, max } => {
                let mut picked = Vec::new();
                for (seq, (st, attempts)) in self.recs.iter_mut().enumerate() {
                    if picked.len() >= max.min(self.batch_size) {
                        break;
                    }
                    if *st != St::Enqueued {
                        continue;
                    }
                    if *attempts >= self.max_attempts {
                        *st = St::Dead; // killed at lease time
                        continue;
                    }
                    *st = St::InFlight { inst, cycle };
                    *attempts += 1;
                    picked.push(seq as u64);
                }
                self.replies.push(Reply::Leased {
                    inst,
                    cycle,
                    batch: Seqs(picked),
                });
            }
            WalOp::Settle {
                inst,
                cycle,
                outcomes,
            } => {
                for (seq, outcome) in outcomes {
                    let (st, attempts) = &mut self.recs[seq as usize];
                    assert_eq!(
                        *st,
                        St::InFlight { inst, cycle },
                        "record {seq} settled by cycle {cycle} of instance {inst}, which does not hold it"
                    );
                    *st = match outcome {
                        Outcome::Acked => St::Acked,
                        Outcome::Dead(_) | Outcome::Corrupt(_) => St::Dead,
                        Outcome::Retry(_) if *attempts >= self.max_attempts => St::Dead,
                        Outcome::Retry(_) => St::Enqueued,
                        Outcome::Release => {
                            *attempts -= 1;
                            St::Enqueued
                        }
                    };
                }
            }
            WalOp::ReleaseLeases => {
                for (st, _) in &mut self.recs {
                    if matches!(st, St::InFlight { .. }) {
                        *st = St::Enqueued;
                    }
                }
            }
        }
    }

    /// The publisher takes its next message; `outcome` picks how a batch goes when it is sent.
    fn publisher_step(&mut self, rng: &mut StdRng, faulty: bool) {
        let Some(op) = self.publisher.pop_front() else {
            return;
        };
        let (inst, cycle, batch) = match op {
            PubOp::Resume => {
                self.holding = false;
                return;
            }
            PubOp::Publish { inst, cycle, batch } => (inst, cycle, batch),
        };
        let result = if self.holding {
            PublishResult::NotSent
        } else {
            let roll = if faulty { rng.random_range(0..10) } else { 0 };
            match roll {
                0..=5 => {
                    self.delivered.extend(&batch.0);
                    PublishResult::Delivered
                }
                6 => {
                    let sent = rng.random_range(0..=batch.0.len());
                    self.delivered.extend(&batch.0[..sent]);
                    PublishResult::Transient("HTTP 503".into())
                }
                7 if rng.random_bool(0.5) => PublishResult::Permanent("HTTP 400".into()),
                7 => PublishResult::TooBig("HTTP 413".into()),
                8 => PublishResult::Outage {
                    reason: "HTTP 503".into(),
                    retry_after_ms: rng.random_bool(0.5).then_some(1000),
                },
                _ => {
                    // Crashes part way through the batch.
                    let sent = rng.random_range(0..=batch.0.len());
                    self.delivered.extend(&batch.0[..sent]);
                    self.reply(inst, cycle, PublishResult::Transient("stopped".into()));
                    self.restart_publisher();
                    return;
                }
            }
        };
        self.holding = result != PublishResult::Delivered;
        self.reply(inst, cycle, result);
    }

    fn reply(&mut self, inst: u32, cycle: u64, result: PublishResult) {
        if !self.timed_out.remove(&(inst, cycle)) {
            self.replies.push(Reply::Published {
                inst,
                cycle,
                result,
            });
        }
    }

    fn restart_publisher(&mut self) {
        self.faults += 1;
        for op in std::mem::take(&mut self.publisher) {
            if let PubOp::Publish { inst, cycle, .. } = op {
                self.reply(inst, cycle, PublishResult::Transient("stopped".into()));
            }
        }
        self.holding = true;
    }

    pub(super) fn restart_dispatcher(&mut self) {
        self.faults += 1;
        self.inst += 1;
        self.lane = Lane::new(self.batch_size).with_pipeline(self.pipeline);
        self.paused = false;
        self.wal.push_back(WalOp::ReleaseLeases);
    }

    /// The dispatcher stops waiting for one batch the publisher has not taken yet.
    fn time_out_a_publish(&mut self, rng: &mut StdRng) {
        let waiting: Vec<(u32, u64)> = self
            .publisher
            .iter()
            .filter_map(|op| match op {
                PubOp::Publish { inst, cycle, .. } => Some((*inst, *cycle)),
                PubOp::Resume => None,
            })
            .filter(|(inst, c)| *inst == self.inst && !self.timed_out.contains(&(*inst, *c)))
            .collect();
        if waiting.is_empty() {
            return;
        }
        self.faults += 1;
        let (inst, cycle) = waiting[rng.random_range(0..waiting.len())];
        self.timed_out.insert((inst, cycle));
        self.feed(Event::Published {
            cycle,
            result: PublishResult::Transient("publisher did not answer in time".into()),
        });
    }

    pub(super) fn deliver_reply(&mut self, i: usize) {
        let reply = self.replies.remove(i);
        match reply {
            Reply::Leased { inst, .. } | Reply::Published { inst, .. } if inst != self.inst => {}
            Reply::Leased { cycle, batch, .. } => self.feed(Event::Leased {
                cycle,
                batch: Ok(batch),
            }),
            Reply::Published { cycle, result, .. } => self.feed(Event::Published { cycle, result }),
        }
    }

    pub(super) fn step(&mut self, rng: &mut StdRng, faulty: bool) {
        match rng.random_range(0..100) {
            0..=24 => self.wal_step(),
            25..=49 => self.publisher_step(rng, faulty),
            50..=74 if !self.replies.is_empty() => {
                let i = rng.random_range(0..self.replies.len());
                self.deliver_reply(i);
            }
            75..=82 => self.wake(),
            83..=85 => self.feed(Event::Recheck),
            86..=89 if self.paused => {
                self.paused = false;
                self.feed(Event::PauseOver);
            }
            90..=92 if faulty => self.append(rng.random_range(1..5)),
            93..=94 if faulty => self.restart_publisher(),
            95..=96 if faulty => self.restart_dispatcher(),
            97..=99 if faulty => self.time_out_a_publish(rng),
            _ => {}
        }
    }

    fn settled(&self) -> bool {
        self.wal.is_empty()
            && self.publisher.is_empty()
            && self.replies.is_empty()
            && self
                .recs
                .iter()
                .all(|(st, _)| matches!(st, St::Acked | St::Dead))
    }

    pub(super) fn run_to_quiescence(&mut self, rng: &mut StdRng) {
        for _ in 0..200_000 {
            if self.settled() {
                return;
            }
            self.step(rng, false);
        }
        panic!(
            "not settled: forgotten records {:?}",
            self.recs
                .iter()
                .enumerate()
                .filter(|(_, (st, _))| !matches!(st, St::Acked | St::Dead))
                .collect::<Vec<_>>()
        );
    }

    /// First deliveries per device in acceptance order, and every acked record delivered.
    pub(super) fn check(&self) {
        let mut seen = HashSet::new();
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        for &seq in &self.delivered {
            if !seen.insert(seq) {
                continue;
            }
            let device = seq % DEVICES;
            if let Some(&before) = last.get(&device) {
                assert!(
                    seq > before,
                    "device {device}: record {seq} first delivered after {before}; deliveries {:?}",
                    self.delivered
                );
            }
            last.insert(device, seq);
        }
        for (seq, (st, _)) in self.recs.iter().enumerate() {
            if *st == St::Acked {
                assert!(
                    seen.contains(&(seq as u64)),
                    "record {seq} acked, never delivered"
                );
            }
        }
    }
}
