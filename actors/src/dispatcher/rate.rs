//! A sink's delivery ceiling (`delivery.max_records_per_sec`): a token bucket holding at most
//! one second's worth. A lease takes what the bucket grants (a reservation); what the WAL did
//! not hand out is given back when the lease returns. Pure: time is passed in.

use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Full at the start: a backlog's first second goes at once.
    pub fn new(rate: f64, now: Instant) -> Bucket {
        Bucket {
            rate,
            tokens: rate.max(1.0),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.rate.max(1.0));
        self.at = now;
    }

    /// Up to `want` records may be leased now (0: none yet).
    pub fn grant(&mut self, want: usize, now: Instant) -> usize {
        self.refill(now);
        let n = (self.tokens.floor().max(0.0) as usize).min(want);
        self.tokens -= n as f64;
        n
    }

    /// Live first: a backlog lease takes at most 50 ms of the ceiling, so a live reading
    /// that arrives while the backlog drains waits behind that much at most.
    pub fn slice(&self) -> usize {
        (self.rate / 20.0).ceil().max(1.0) as usize
    }

    /// Records reserved but not leased.
    pub fn refund(&mut self, n: usize) {
        self.tokens = (self.tokens + n as f64).min(self.rate.max(1.0));
    }

    /// How long until `n` records (at most a bucketful) may be leased.
    pub fn wait_for(&self, n: usize) -> Duration {
        let missing = (n as f64).min(self.rate.max(1.0)) - self.tokens;
        Duration::from_secs_f64((missing / self.rate).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_at_once_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100.0, t0);
        assert_eq!(b.grant(500, t0), 100, "a bucketful");
        assert_eq!(b.grant(500, t0), 0);
        assert_eq!(b.wait_for(50), Duration::from_millis(500));
        assert_eq!(b.grant(500, t0 + Duration::from_millis(250)), 25);
        b.refund(5);
        assert_eq!(b.grant(500, t0 + Duration::from_millis(250)), 5);
        // Idle for a minute: still one second's worth, not a minute's.
        assert_eq!(b.grant(10_000, t0 + Duration::from_secs(60)), 100);
        // A slow ceiling still lets one record through.
        let mut slow = Bucket::new(0.5, t0);
        assert_eq!(slow.grant(10, t0), 1);
        assert_eq!(slow.grant(10, t0 + Duration::from_secs(1)), 0);
        assert_eq!(slow.grant(10, t0 + Duration::from_secs(3)), 1);
    }
}
