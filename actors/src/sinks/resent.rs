//! Which deliveries may be duplicates downstream: records delivered after an attempt that
//! may have reached the sink failed (a request that broke part way, an upstream broker that
//! went away before its PUBACKs, a timeout). The gateway cannot see the sink's side, so this
//! is an upper bound on duplicates — what the outage report calls `resent`.
//!
//! Kept per publisher, in memory (a restart forgets it: after a SIGKILL, what was in flight
//! is re-sent uncounted — the chaos ledger counts those). Bounded: the WAL sequence ranges of
//! the last [`MAX_RANGES`] failed batches.

use super::PublishResult;
use std::collections::VecDeque;

const MAX_RANGES: usize = 1024;

#[derive(Debug, Default)]
pub struct Resent {
    /// `(first, last)` WAL sequence of each failed batch that may have reached the sink.
    ranges: VecDeque<(u64, u64)>,
}

impl Resent {
    /// Notes a batch's result (`reached`: the attempt may have reached the sink — false when
    /// the sink knows nothing left, e.g. a refused connection); returns how many of its
    /// records were re-sent after a failed attempt (counted when the batch is delivered).
    pub fn observe(&mut self, seqs: &[u64], result: &PublishResult, reached: bool) -> u64 {
        let (Some(&lo), Some(&hi)) = (seqs.iter().min(), seqs.iter().max()) else {
            return 0;
        };
        match result {
            PublishResult::Delivered => {
                let n = seqs
                    .iter()
                    .filter(|s| self.ranges.iter().any(|&(a, b)| (a..=b).contains(*s)))
                    .count() as u64;
                if n > 0 {
                    // Ranges wholly delivered are done with.
                    self.ranges.retain(|&(a, b)| !(lo <= a && b <= hi));
                }
                n
            }
            // May have reached the sink in part.
            PublishResult::Transient(_) | PublishResult::Outage { .. } if reached => {
                if self.ranges.len() == MAX_RANGES {
                    self.ranges.pop_front();
                }
                self.ranges.push_back((lo, hi));
                0
            }
            // Refused, or failed before anything left: nothing reached the sink twice.
            PublishResult::Transient(_)
            | PublishResult::Outage { .. }
            | PublishResult::NotSent
            | PublishResult::Permanent(_)
            | PublishResult::TooBig(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seqs: &[u64]) -> Vec<u64> {
        seqs.to_vec()
    }

    #[test]
    fn records_delivered_after_a_failed_attempt_are_counted() {
        let mut r = Resent::default();
        assert_eq!(
            r.observe(&batch(&[1, 2, 3]), &PublishResult::Delivered, true),
            0
        );
        let out = PublishResult::Outage {
            reason: "gone".into(),
            retry_after_ms: None,
        };
        assert_eq!(r.observe(&batch(&[4, 5, 6]), &out, true), 0);
        assert_eq!(r.observe(&batch(&[4, 5]), &PublishResult::NotSent, true), 0);
        // A connect that failed sent nothing: not a range to count.
        assert_eq!(r.observe(&batch(&[20, 21]), &out, false), 0);
        assert_eq!(
            r.observe(&batch(&[20, 21]), &PublishResult::Delivered, true),
            0
        );
        // Re-sent in two smaller batches after a split, with a new record after them.
        assert_eq!(
            r.observe(&batch(&[4, 5]), &PublishResult::Delivered, true),
            2
        );
        assert_eq!(
            r.observe(&batch(&[6, 7]), &PublishResult::Delivered, true),
            1
        );
        assert_eq!(r.observe(&batch(&[8]), &PublishResult::Delivered, true), 0);
        // Delivered whole: the range is dropped.
        assert_eq!(r.observe(&batch(&[10, 11]), &out, true), 0);
        assert_eq!(
            r.observe(&batch(&[10, 11]), &PublishResult::Delivered, true),
            2
        );
        assert!(!r.ranges.contains(&(10, 11)));
        // A refusal never reached the sink twice.
        let refused = PublishResult::Permanent("400".into());
        assert_eq!(r.observe(&batch(&[9]), &refused, true), 0);
        assert_eq!(r.observe(&batch(&[9]), &PublishResult::Delivered, true), 0);
    }

    #[test]
    fn memory_is_bounded() {
        let mut r = Resent::default();
        let t = PublishResult::Transient("reset".into());
        for i in 0..(MAX_RANGES as u64 + 10) {
            r.observe(&batch(&[i * 10]), &t, true);
        }
        assert_eq!(r.ranges.len(), MAX_RANGES);
        assert_eq!(
            r.observe(&batch(&[0]), &PublishResult::Delivered, true),
            0,
            "forgotten"
        );
    }
}
