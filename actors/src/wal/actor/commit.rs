//! The group commit: the queued operations go to the blocking pool in one transaction; the
//! result comes back as `Committed`, is answered in order, and the next group starts.

use super::*;

impl Wal {
    pub(super) fn start_commit(myself: &ActorRef<WalMsg>, state: &mut WalState) {
        let Some((store, ops)) = state.take_group() else {
            return;
        };
        state.metrics.wal_commit_ops.observe(ops.len() as f64);
        state.metrics.pulse.wal_busy(now_ms());
        let stall = state.stall_next.take();
        let now = state.clock.now_ms();
        if let Some(step) = state.clock.observe_wall(now_ms()) {
            state.metrics.clock_jumps.inc();
            tracing::warn!(
                step_ms = step,
                "the system clock jumped; ages (expiry, leases, idempotency window, retention) \
                 follow the WAL's monotonic clock and are unaffected; readings taken while it \
                 read before the release's floor are marked clock_synced: false"
            );
        }
        let me = myself.clone();
        let addr = state.addr.clone();
        // The group's span (`traces`): only looked for when traces are on.
        let (records, append_ops, kept) = if crate::traces::enabled() {
            let appended = ops.iter().filter_map(|op| match op {
                Op::Append(rs) => Some(rs),
                _ => None,
            });
            let records = appended.clone().map(Vec::len).sum::<usize>();
            let kept = crate::traces::kept_contexts(appended.clone().flatten());
            (records, appended.count(), kept)
        } else {
            (0, 0, Vec::new())
        };
        // In `Tasks`: a failed instance's commit wrapper goes with its state (the blocking
        // apply finishes on its own and drops the store, closing the file for the successor).
        state.tasks.push(tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let started_wall = std::time::SystemTime::now();
            let joined = tokio::task::spawn_blocking(move || {
                if let Some(d) = stall {
                    // Chaos hook only (`admin.chaos`): a disk that hangs.
                    std::thread::sleep(d);
                }
                store.apply(ops, now)
            })
            .await;
            let result =
                joined.unwrap_or_else(|e| Err(WalError::Storage(format!("commit task: {e}"))));
            if result.is_ok() {
                crate::traces::commit_span(started_wall, &kept, records, append_ops);
            }
            addr.note_sent();
            let _ = me.cast(WalMsg::Committed(Box::new(Committed {
                result,
                elapsed: started.elapsed(),
            })));
        }));
    }

    pub(super) fn enqueue(myself: &ActorRef<WalMsg>, state: &mut WalState, op: Op, waiter: Waiter) {
        state.queue.push_back((op, waiter));
        Self::start_commit(myself, state);
    }

    /// A group commit came back: answer its callers and start the next, or reopen in place
    /// after ENOSPC, or fail so the supervisor reopens the file.
    pub(super) async fn on_committed(
        myself: &ActorRef<WalMsg>,
        state: &mut WalState,
        c: Committed,
    ) -> Result<(), ActorProcessingErr> {
        state.metrics.pulse.wal_committed(now_ms());
        state
            .metrics
            .wal_commit_seconds
            .observe(c.elapsed.as_secs_f64());
        match c.result {
            Ok((mut store, results)) => {
                // Counted after the fact: what the commit made Dead, however.
                for (sink, class) in store.take_dead_events() {
                    state
                        .metrics
                        .dead_lettered
                        .with_label_values(&[&sink, class.as_str()])
                        .inc();
                }
                note_maintenance(&state.metrics, &results);
                note_disk(myself, state, &results);
                if sweep_has_more(&results) {
                    state.queue.push_back((Op::Maintain, Waiter::Nobody));
                }
                state.finish(store, results);
                Self::start_commit(myself, state);
                Ok(())
            }
            Err(e) if e.is_no_space() => {
                // Not the store's fault: reopen in place and carry on delivering.
                state.fail_waiters("disk full: not committed, retry");
                state.metrics.wal_disk_full.set(1);
                state.metrics.wal_enospc.inc();
                let reserve = state.open.reserve_path();
                let released = std::fs::remove_file(&reserve).is_ok();
                state.reserve_missing = true;
                state.tight = true;
                tracing::error!(
                    error = %e,
                    reserve_released = released,
                    "WAL commit met a full disk; reopening in place: ingest waits, delivery goes on"
                );
                // The old database goes with its last handle: ours too, before the
                // reopen (a read in flight finishes first; open_store waits for it).
                state.reader = None;
                let store = reopen_on_full_disk(&state.open).await?;
                state.reader = Some(store.reader());
                state.store = Some(store);
                state
                    .commits
                    .send_modify(|mark| *mark = mark.wrapping_add(1));
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "WAL commit failed; failing so the supervisor reopens the file");
                state.fail_waiters("WAL commit failed");
                Err(e.into())
            }
        }
    }
}
