//! The batches an MQTT sink has on the wire, as a plain type (no I/O, no clock): which
//! publishes each one sent, which PUBACKs it still waits for, and which are done — always
//! answered in the order they were submitted.
//!
//! Invariants (unit-tested below):
//! - A batch is `Delivered` only once each of its publishes was sent and acknowledged, and
//!   only after every batch submitted before it was answered.
//! - Publishes leave in submission order on one connection, so a `Sent` belongs to the
//!   oldest batch that has not sent all of its own.
//! - A failure decides every batch still open at once (the connection goes with it): a batch
//!   sent behind a failed one is never reported delivered, even if its PUBACKs came, so
//!   nothing overtakes a batch that was not delivered. `sent_any` says whether the attempt
//!   may have reached the broker (the `resent` count).

use crate::sinks::PublishResult;
use std::collections::{HashSet, VecDeque};
use tokio::time::Instant;

#[derive(Debug)]
struct Entry {
    ticket: u64,
    total: usize,
    /// Publishes handed to the client (it may write them before we hear they left).
    queued: usize,
    sent: usize,
    waiting: HashSet<u16>,
    deadline: Instant,
    decided: Option<PublishResult>,
}

/// A batch's answer, in submission order.
#[derive(Debug, PartialEq, Eq)]
pub struct Done {
    pub ticket: u64,
    pub result: PublishResult,
    pub sent_any: bool,
}

#[derive(Debug, Default)]
pub struct Window {
    entries: VecDeque<Entry>,
}

impl Window {
    /// A batch whose `total` publishes are being queued, answered by `deadline` at the latest.
    pub fn sending(&mut self, ticket: u64, total: usize, deadline: Instant) {
        self.entries.push_back(Entry {
            ticket,
            total,
            queued: 0,
            sent: 0,
            waiting: HashSet::new(),
            deadline,
            decided: None,
        });
    }

    /// A batch answered without sending (held back, too big, no connection), in its turn.
    pub fn decided(&mut self, ticket: u64, result: PublishResult, deadline: Instant) {
        self.entries.push_back(Entry {
            ticket,
            total: 0,
            queued: 0,
            sent: 0,
            waiting: HashSet::new(),
            deadline,
            decided: Some(result),
        });
    }

    /// Batches still waiting for the broker.
    pub fn open(&self) -> usize {
        self.entries.iter().filter(|e| e.decided.is_none()).count()
    }

    /// One more publish of the newest batch handed to the client.
    pub fn queued(&mut self) {
        if let Some(e) = self.entries.back_mut() {
            e.queued += 1;
        }
    }

    pub fn sent(&mut self, pkid: u16) {
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.decided.is_none() && e.sent < e.total)
        {
            e.sent += 1;
            e.waiting.insert(pkid);
        }
    }

    pub fn acked(&mut self, pkid: u16) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.waiting.contains(&pkid)) {
            e.waiting.remove(&pkid);
        }
    }

    /// The oldest open batch's deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.entries
            .iter()
            .find(|e| e.decided.is_none())
            .map(|e| e.deadline)
    }

    /// The PUBACKs the oldest open batch still misses, of how many.
    pub fn missing(&self) -> Option<(usize, usize)> {
        self.entries
            .iter()
            .find(|e| e.decided.is_none())
            .map(|e| (e.waiting.len() + e.total - e.sent, e.total))
    }

    /// The connection failed: every open batch fails with `why` (an outage), except the one
    /// that sent `refused` (if any), which gets `refusal`.
    pub fn fail(&mut self, why: &str, refused: Option<(u16, PublishResult)>) {
        for e in self.entries.iter_mut().filter(|e| e.decided.is_none()) {
            e.decided = Some(match &refused {
                Some((pkid, r)) if e.waiting.contains(pkid) => r.clone(),
                _ => PublishResult::outage(why),
            });
        }
    }

    /// The batches answered now, oldest first; each stops at the first that is still open.
    pub fn take_done(&mut self) -> Vec<Done> {
        let mut out = Vec::new();
        while let Some(e) = self.entries.front() {
            let complete = e.decided.is_none() && e.sent == e.total && e.waiting.is_empty();
            if e.decided.is_none() && !complete {
                break;
            }
            let e = self.entries.pop_front().expect("front");
            out.push(Done {
                ticket: e.ticket,
                // Conservative (the `resent` bound): a publish handed to the client may have
                // reached the broker before its `Sent` was read.
                sent_any: e.sent > 0 || e.queued > 0,
                result: e.decided.unwrap_or(PublishResult::Delivered),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> Instant {
        Instant::now()
    }

    #[test]
    fn the_next_batch_streams_while_the_last_acks_of_one_are_out_and_answers_wait_their_turn() {
        let mut w = Window::default();
        w.sending(1, 2, at());
        w.sent(10);
        w.sent(11);
        w.sending(2, 2, at());
        w.sent(12);
        w.sent(13);
        // The second batch is acknowledged first: it waits for the first.
        w.acked(12);
        w.acked(13);
        w.acked(10);
        assert!(w.take_done().is_empty());
        assert_eq!(w.missing(), Some((1, 2)));
        w.acked(11);
        let done = w.take_done();
        assert_eq!(
            done.iter().map(|d| d.ticket).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(done.iter().all(|d| d.result == PublishResult::Delivered));
        assert_eq!(w.open(), 0);
    }

    #[test]
    fn a_batch_sent_behind_a_failed_one_is_never_delivered_even_with_its_pubacks() {
        let mut w = Window::default();
        w.sending(1, 2, at());
        w.sent(1);
        w.sent(2);
        w.sending(2, 1, at());
        w.sent(3);
        w.acked(3);
        w.acked(1);
        w.fail("upstream broker: connection reset", None);
        let done = w.take_done();
        assert_eq!(done.len(), 2);
        assert!(matches!(done[0].result, PublishResult::Outage { .. }));
        assert!(matches!(done[1].result, PublishResult::Outage { .. }));
        assert!(done.iter().all(|d| d.sent_any));
    }

    #[test]
    fn a_refused_publish_fails_its_own_batch_for_good_and_the_others_as_an_outage() {
        let mut w = Window::default();
        w.sending(1, 1, at());
        w.sent(1);
        w.sending(2, 2, at());
        w.sent(2);
        w.sent(3);
        w.fail(
            "closed after a refusal",
            Some((3, PublishResult::Permanent("NotAuthorized".into()))),
        );
        let done = w.take_done();
        assert!(matches!(done[0].result, PublishResult::Outage { .. }));
        assert_eq!(
            done[1].result,
            PublishResult::Permanent("NotAuthorized".into())
        );
    }

    #[test]
    fn decided_batches_keep_their_turn_and_unsent_ones_reached_nothing() {
        let mut w = Window::default();
        w.sending(1, 1, at());
        w.sent(5);
        w.decided(2, PublishResult::TooBig("big".into()), at());
        w.decided(3, PublishResult::NotSent, at());
        assert!(w.take_done().is_empty(), "the first is still open");
        w.acked(5);
        let done = w.take_done();
        assert_eq!(
            done,
            vec![
                Done {
                    ticket: 1,
                    result: PublishResult::Delivered,
                    sent_any: true
                },
                Done {
                    ticket: 2,
                    result: PublishResult::TooBig("big".into()),
                    sent_any: false
                },
                Done {
                    ticket: 3,
                    result: PublishResult::NotSent,
                    sent_any: false
                },
            ]
        );
    }

    #[test]
    fn a_batch_handed_to_the_client_may_have_reached_the_broker_before_any_sent_was_read() {
        let mut w = Window::default();
        w.sending(1, 2, at());
        w.queued();
        w.fail("timed out", None);
        assert!(w.take_done()[0].sent_any);
    }

    #[test]
    fn a_timeout_names_what_is_missing() {
        let mut w = Window::default();
        let t = at();
        w.sending(1, 3, t);
        w.sent(1);
        w.acked(1);
        w.sent(2);
        assert_eq!(w.deadline(), Some(t));
        assert_eq!(w.missing(), Some((2, 3)));
        w.fail("2 of 3 PUBACKs missing", None);
        let d = w.take_done();
        assert!(matches!(d[0].result, PublishResult::Outage { .. }));
        assert!(d[0].sent_any);
        assert_eq!(w.deadline(), None);
    }
}
