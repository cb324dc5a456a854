//! WAL time, and the wall clock's jumps.

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
