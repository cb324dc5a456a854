//! The group commit: the queued operations go to the blocking pool in one transaction; the
//! result comes back as `Committed`, is answered in order, and the next group starts.

use super::*;

impl Wal {
    pub(super) fn start_commit(myself: &ActorRef<WalMsg>, state: &mut WalState) {
        let Some((store, jobs)) = state.take_group() else {
            return;
        };
        state.metrics.wal_commit_ops.observe(jobs.len() as f64);
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
            let appended = jobs.iter().filter_map(Job::appended);
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
                let durable = jobs.iter().any(Job::needs_durability);
                store
                    .apply_with(jobs, now, durable, |a, job| job.run(a))
                    .map(|(store, mut answers, compacted)| {
                        // The sweep's report says what compaction followed it.
                        if let Some(Answer::Cast(OpResult::Maintained(rep))) =
                            answers.iter_mut().find(|a| a.maintained().is_some())
                        {
                            rep.compacted = compacted;
                        }
                        (store, answers)
                    })
            })
            .await;
            let result = joined.unwrap_or_else(|e| {
                Err(GroupFailed {
                    error: WalError::Storage(format!("commit task: {e}")),
                    answered: Vec::new(),
                    rest: Vec::new(),
                })
            });
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

    pub(super) fn enqueue(myself: &ActorRef<WalMsg>, state: &mut WalState, job: Job) {
        state.queue.push_back(job);
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
            Ok((mut store, answers)) => {
                // Counted after the fact: what the commit made Dead, however.
                for (sink, class) in store.take_dead_events() {
                    state
                        .metrics
                        .dead_lettered
                        .with_label_values(&[&sink, class.as_str()])
                        .inc();
                }
                note_maintenance(&state.metrics, &answers);
                note_disk(myself, state, &answers);
                let delivering = state.queue.iter().any(Job::is_delivery);
                if sweep_has_more(&answers, delivering) {
                    state.queue.push_back(Job::Cast(Op::Maintain));
                }
                state.finish(myself, store, answers);
                Self::start_commit(myself, state);
                Ok(())
            }
            Err(failed) if failed.error.is_no_space() => {
                // Not the store's fault: reopen in place and carry on delivering.
                let why = "disk full: not committed, retry";
                fail_group(failed.answered, failed.rest, why);
                state.fail_waiters(why);
                let e = failed.error;
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
            Err(failed) => {
                let e = failed.error;
                tracing::error!(error = %e, "WAL commit failed; failing so the supervisor reopens the file");
                fail_group(failed.answered, failed.rest, "WAL commit failed");
                state.fail_waiters("WAL commit failed");
                Err(e.into())
            }
        }
    }
}

/// A group that did not commit: every caller in it gets an error, never an ack.
fn fail_group(answered: Vec<Answer>, rest: Vec<Job>, why: &str) {
    for a in answered {
        a.fail(why);
    }
    for j in rest {
        j.fail(why);
    }
}
