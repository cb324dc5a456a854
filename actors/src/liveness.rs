//! Liveness (`GET /healthz`, issue 13): whether the gateway is wedged and should be restarted
//! by its service manager or orchestrator — not whether it is ready (`/readyz`).
//!
//! Wedged means, for longer than `admin.liveness_stall_secs`:
//! - the WAL has work queued (appends waiting for an answer) but no commit has finished — a
//!   hung disk or filesystem: nothing can be acknowledged;
//! - a supervised actor is not running (its restarts keep failing);
//! - or the runtime stopped making progress: the monitor that computes this verdict every
//!   second has not run for `RUNTIME_STALL_MS`.
//!
//! The pure parts are [`Pulse`] (progress marks the WAL sets) and [`verdict`].

use crate::addr::Directory;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// The monitor must have run within this long, or the runtime is taken to be stuck.
pub const RUNTIME_STALL_MS: u64 = 5_000;

/// Progress marks, set by the WAL actor, read by the monitor.
#[derive(Default)]
pub struct Pulse {
    wal_busy: AtomicBool,
    /// When the WAL last made progress: a commit finished, or work arrived while idle.
    wal_progress_ms: AtomicU64,
}

impl Pulse {
    /// A commit group starts.
    pub fn wal_busy(&self, now_ms: u64) {
        if !self.wal_busy.swap(true, Ordering::AcqRel) {
            self.wal_progress_ms.store(now_ms, Ordering::Release);
        }
    }

    /// A commit finished (whatever its result: an error is progress too, the actor handles it).
    pub fn wal_committed(&self, now_ms: u64) {
        self.wal_progress_ms.store(now_ms, Ordering::Release);
        self.wal_busy.store(false, Ordering::Release);
    }

    /// How long the WAL has been busy without finishing a commit (0 when idle).
    pub fn wal_stalled_ms(&self, now_ms: u64) -> u64 {
        if self.wal_busy.load(Ordering::Acquire) {
            now_ms.saturating_sub(self.wal_progress_ms.load(Ordering::Acquire))
        } else {
            0
        }
    }
}

/// The monitor's memory between runs: when each actor was first seen not running.
#[derive(Default)]
pub struct Monitor {
    down_since: BTreeMap<String, u64>,
    /// The last verdict and when it was reached.
    pub last: Mutex<(u64, Vec<String>)>,
}

/// What is wedged (empty: alive). `down`: actors not running now, by name.
pub fn verdict(
    down_since: &mut BTreeMap<String, u64>,
    down: &[String],
    wal_stalled_ms: u64,
    now_ms: u64,
    stall_ms: u64,
) -> Vec<String> {
    down_since.retain(|name, _| down.contains(name));
    let mut out = Vec::new();
    for name in down {
        let since = *down_since.entry(name.clone()).or_insert(now_ms);
        let for_ms = now_ms.saturating_sub(since);
        if for_ms >= stall_ms {
            out.push(format!("actor {name} not running for {} s", for_ms / 1000));
        }
    }
    if wal_stalled_ms >= stall_ms {
        out.push(format!(
            "the WAL has had work queued for {} s without finishing a commit (a hung disk?)",
            wal_stalled_ms / 1000
        ));
    }
    out
}

impl Monitor {
    /// One run: look at the tree and the pulse, keep the verdict.
    pub fn run(&mut self, dir: &Directory, pulse: &Pulse, now_ms: u64, stall_ms: u64) {
        let down: Vec<String> = dir
            .all()
            .iter()
            .filter(|e| {
                !matches!(
                    e.status(),
                    Some(ractor::ActorStatus::Running)
                        | Some(ractor::ActorStatus::Starting)
                        | Some(ractor::ActorStatus::Upgrading)
                )
            })
            // The root is bound by the binary after it starts; a stopped root ends the process.
            .filter(|e| e.parent().is_some())
            .map(|e| e.name().to_string())
            .collect();
        let v = verdict(
            &mut self.down_since,
            &down,
            pulse.wal_stalled_ms(now_ms),
            now_ms,
            stall_ms,
        );
        *self.last.lock().expect("liveness") = (now_ms, v);
    }
}

/// `/healthz`'s answer from the last verdict: the problems (empty: alive).
pub fn check(last: &(u64, Vec<String>), now_ms: u64) -> Vec<String> {
    let (at, problems) = last;
    if now_ms.saturating_sub(*at) > RUNTIME_STALL_MS {
        return vec![format!(
            "the runtime has not run the liveness monitor for {} s",
            now_ms.saturating_sub(*at) / 1000
        )];
    }
    problems.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_past_its_time_and_not_before() {
        let mut down = BTreeMap::new();
        let a = vec!["dispatcher".to_string()];
        assert!(
            verdict(&mut down, &a, 0, 1_000, 30_000).is_empty(),
            "just down"
        );
        assert!(verdict(&mut down, &a, 0, 20_000, 30_000).is_empty());
        let v = verdict(&mut down, &a, 0, 31_000, 30_000);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("dispatcher"));
        assert!(
            verdict(&mut down, &[], 0, 32_000, 30_000).is_empty(),
            "back up"
        );
        assert!(
            verdict(&mut down, &a, 0, 33_000, 30_000).is_empty(),
            "the clock starts again"
        );

        let p = Pulse::default();
        p.wal_busy(1_000);
        assert_eq!(p.wal_stalled_ms(5_000), 4_000);
        p.wal_busy(4_000); // still the same group: the mark stays
        assert_eq!(p.wal_stalled_ms(5_000), 4_000);
        let v = verdict(&mut down, &[], p.wal_stalled_ms(40_000), 40_000, 30_000);
        assert!(v[0].contains("WAL"), "{v:?}");
        p.wal_committed(40_500);
        assert_eq!(p.wal_stalled_ms(90_000), 0, "idle is not stalled");

        assert!(check(&(10_000, vec![]), 14_000).is_empty());
        assert!(check(&(10_000, vec![]), 16_000)[0].contains("runtime"));
    }
}
