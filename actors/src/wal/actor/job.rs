//! A queued operation with its caller's reply port (`Job`), and what the commit made of it
//! (`Answer`). The port travels inside the operation into the commit and comes back beside
//! its own typed result ([`WalStore::apply_with`]), so an answer cannot reach another caller
//! and no result needs matching to a waiter afterwards.

use super::super::record::{Fill, Lanes};
use super::super::store::{Applier, SinksChanged};
use super::*;

/// An operation waiting for the next group commit.
pub enum Job {
    Append {
        records: Vec<Record>,
        reply: RpcReplyPort<AppendReply>,
    },
    Lease {
        sink: String,
        max: usize,
        fill: Option<Fill>,
        lanes: Option<Lanes>,
        reply: RpcReplyPort<Vec<Leased>>,
    },
    Replay {
        sink: String,
        records: Vec<Record>,
        reply: RpcReplyPort<Result<usize, String>>,
    },
    Requeue {
        sink: String,
        limit: usize,
        filter: DeadFilter,
        reply: RpcReplyPort<usize>,
    },
    PurgeDead {
        sink: String,
        filter: DeadFilter,
        limit: usize,
        reply: RpcReplyPort<usize>,
    },
    Sinks {
        sinks: Vec<String>,
        removed: Vec<(String, Removal)>,
        reply: RpcReplyPort<SinksChanged>,
    },
    StopLeases(RpcReplyPort<usize>),
    Reject {
        entry: Rejected,
        reply: RpcReplyPort<Result<u64, AppendError>>,
    },
    /// Nobody waits: settles, maintenance, a predecessor's leases released.
    Cast(Op),
}

/// A job's result beside its reply port, sent once the group's commit returned.
pub enum Answer {
    Appended(
        RpcReplyPort<AppendReply>,
        Result<Vec<AppendOutcome>, AppendRefused>,
    ),
    /// Decoded off the commit thread before the caller is answered.
    Leased {
        reply: RpcReplyPort<Vec<Leased>>,
        sink: String,
        leased: Vec<LeasedBody>,
    },
    Replayed(RpcReplyPort<Result<usize, String>>, Result<usize, String>),
    Requeued(RpcReplyPort<usize>, usize),
    Purged {
        reply: RpcReplyPort<usize>,
        sink: String,
        purged: usize,
    },
    SinksSet(RpcReplyPort<SinksChanged>, SinksChanged),
    LeasesStopped(RpcReplyPort<usize>, usize),
    Rejected(RpcReplyPort<Result<u64, AppendError>>, u64),
    Cast(OpResult),
}

impl Job {
    /// Whether its commit must be durable before anyone is answered (as [`Op`]'s).
    pub fn needs_durability(&self) -> bool {
        match self {
            Job::Lease { .. } => false,
            Job::Cast(op) => op.needs_durability(),
            _ => true,
        }
    }

    /// A lease or a settle: a delivery is under way.
    pub fn is_delivery(&self) -> bool {
        matches!(self, Job::Lease { .. } | Job::Cast(Op::Settle { .. }))
    }

    /// The records it appends, if it does (the group's trace span).
    pub fn appended(&self) -> Option<&Vec<Record>> {
        match self {
            Job::Append { records, .. } => Some(records),
            _ => None,
        }
    }

    /// Applies it in the group's transaction.
    pub fn run(self, a: &mut Applier<'_, '_>) -> Result<Answer, WalError> {
        Ok(match self {
            Job::Append { records, reply } => Answer::Appended(reply, a.append(records)?),
            Job::Lease {
                sink,
                max,
                fill,
                lanes,
                reply,
            } => Answer::Leased {
                leased: a.lease_bodies(&sink, max, fill, lanes)?,
                reply,
                sink,
            },
            Job::Replay {
                sink,
                records,
                reply,
            } => Answer::Replayed(reply, a.replay(&sink, records)?),
            Job::Requeue {
                sink,
                limit,
                filter,
                reply,
            } => Answer::Requeued(reply, a.requeue(&sink, limit, &filter)?),
            Job::PurgeDead {
                sink,
                filter,
                limit,
                reply,
            } => {
                let purged = a.purge_dead(&sink, &filter, limit)?;
                Answer::Purged {
                    reply,
                    sink,
                    purged,
                }
            }
            Job::Sinks {
                sinks,
                removed,
                reply,
            } => Answer::SinksSet(reply, a.set_sinks(sinks, removed)?),
            Job::StopLeases(reply) => Answer::LeasesStopped(reply, a.stop_leases()?),
            Job::Reject { entry, reply } => Answer::Rejected(reply, a.reject(entry)?),
            Job::Cast(op) => Answer::Cast(a.op(op)?),
        })
    }

    /// Not committed: its caller gets an error, never an ack (a dropped port is one too).
    pub fn fail(self, why: &str) {
        match self {
            Job::Append { reply, .. } => {
                let _ = reply.send(Err(AppendError::Unavailable(why.to_string())));
            }
            Job::Reject { reply, .. } => {
                let _ = reply.send(Err(AppendError::Unavailable(why.to_string())));
            }
            Job::Replay { reply, .. } => {
                let _ = reply.send(Err(format!("not replayed: {why}")));
            }
            _ => {}
        }
    }
}

impl Answer {
    /// Made in a group that did not commit: as [`Job::fail`].
    pub fn fail(self, why: &str) {
        match self {
            Answer::Appended(reply, _) => {
                let _ = reply.send(Err(AppendError::Unavailable(why.to_string())));
            }
            Answer::Rejected(reply, _) => {
                let _ = reply.send(Err(AppendError::Unavailable(why.to_string())));
            }
            Answer::Replayed(reply, _) => {
                let _ = reply.send(Err(format!("not replayed: {why}")));
            }
            _ => {}
        }
    }

    /// The maintenance report, if it is one.
    pub fn maintained(&self) -> Option<&MaintainReport> {
        match self {
            Answer::Cast(OpResult::Maintained(rep)) => Some(rep),
            _ => None,
        }
    }
}
