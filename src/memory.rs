//! The binary's allocator settings: glibc's malloc, held to what the gateway uses.
//!
//! Two measures, both for glibc only (musl and other targets keep their defaults), both
//! measured with the `drain` bench (docs/decisions.md, "Memory"):
//! - two heap arenas instead of up to eight per core ([`cap_arenas`]);
//! - freed memory handed back to the kernel every few seconds ([`trim_periodically`]).

use std::time::Duration;

/// How often freed heap pages are handed back. A trim walks the free lists of the two
/// arenas (about a millisecond at the sizes seen here) on a blocking thread.
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// glibc gives each thread that allocates its own heap arena, up to eight per core, and each
/// keeps its high-water mark: after a drain the gateway held 130 MiB, of which 44 MiB were
/// arenas of threads now idle. Two arenas (the machine class has two cores) held 85 MiB, at
/// the same drain rate. `MALLOC_ARENA_MAX` set by the operator wins. Called before any thread
/// starts.
pub fn cap_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; no thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// glibc returns freed memory to the kernel only from the top of a heap; a burst of ingest
/// (request bodies, decoded batches, commit buffers) leaves free pages inside the arenas,
/// counted in RSS until reused. Holding a 1 M backlog after its ingest the gateway stayed
/// at 58.5 MiB for 40 s; one `malloc_trim(0)` (which releases whole free pages anywhere in
/// the arenas) took it to 46.3 MiB. Runs for the life of the runtime.
pub async fn trim_periodically() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // SAFETY: malloc_trim only releases free pages; it takes the arenas' locks.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    }
}
