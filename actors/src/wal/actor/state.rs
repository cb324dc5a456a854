//! The WAL actor's state between messages: the commit queue, and answering waiters.

use super::*;

impl WalState {
    /// Takes the next group if no commit is running: at most `max_group` operations, but
    /// never splits an operation.
    pub(super) fn take_group(&mut self) -> Option<(WalStore, Vec<Op>)> {
        if self.queue.is_empty() {
            return None;
        }
        let mut store = self.store.take()?;
        store.set_tight(self.tight);
        let n = self.queue.len().min(self.max_group);
        let mut ops = Vec::with_capacity(n);
        for (op, waiter) in self.queue.drain(..n) {
            ops.push(op);
            self.in_commit.push(waiter);
        }
        Some((store, ops))
    }

    /// A read on the blocking pool through the shared reader (never waiting for the
    /// writer), answering `reply`; refused at once while the WAL reopens.
    pub(super) fn read<T: Send + 'static>(
        &mut self,
        reply: RpcReplyPort<Result<T, String>>,
        f: impl FnOnce(WalReader) -> Result<T, WalError> + Send + 'static,
    ) {
        let Some(reader) = self.reader.clone() else {
            let _ = reply.send(Err(REOPENING.into()));
            return;
        };
        self.tasks.push(tokio::spawn(async move {
            let answer = tokio::task::spawn_blocking(move || f(reader)).await;
            let _ = reply.send(read_answer(answer));
        }));
    }

    /// Answers the waiters of the group that just committed.
    pub(super) fn finish(&mut self, store: WalStore, results: Vec<OpResult>) {
        let waiters = std::mem::take(&mut self.in_commit);
        let mut new_work = false;
        let mut appended = 0usize;
        for (waiter, result) in waiters.into_iter().zip(results) {
            match (waiter, result) {
                (Waiter::Append(reply), OpResult::Appended(r)) => {
                    if let Ok(v) = &r {
                        for o in v {
                            if let AppendOutcome::Stored { .. } = o {
                                new_work = true;
                                appended += 1;
                            }
                        }
                    }
                    self.metrics
                        .backpressure_active
                        .set(i64::from(matches!(r, Err(AppendRefused::Full(_)))));
                    let _ = reply.send(r.map_err(AppendError::from));
                }
                (Waiter::Lease(reply), OpResult::Leased(v)) => {
                    let _ = reply.send(v);
                }
                (Waiter::Replay(reply), OpResult::Replayed(r)) => {
                    new_work |= r.as_ref().is_ok_and(|n| *n > 0);
                    let _ = reply.send(r);
                }
                (Waiter::Requeue(reply), OpResult::Requeued(n)) => {
                    new_work |= n > 0;
                    let _ = reply.send(n);
                }
                (Waiter::Sinks(reply), OpResult::SinksSet(changed)) => {
                    new_work = true;
                    tracing::warn!(sinks = ?store.sinks(), dropped = changed.dropped, moved = changed.moved, "WAL sink set changed");
                    let _ = reply.send(changed);
                }
                (Waiter::Reject(reply), OpResult::Rejected(id)) => {
                    let _ = reply.send(Ok(id));
                }
                (Waiter::StopLeases(reply), OpResult::LeasesReleased(n)) => {
                    new_work |= n > 0;
                    let _ = reply.send(n);
                }
                (Waiter::Purge(reply), OpResult::Purged { sink, purged }) => {
                    self.metrics
                        .dead_letters_purged
                        .with_label_values(&[&sink, "operator"])
                        .inc_by(purged as u64);
                    tracing::warn!(sink = %sink, purged, "dead letters purged by the operator");
                    let _ = reply.send(purged);
                }
                (_, OpResult::Settled { .. })
                | (_, OpResult::Requeued(_))
                | (_, OpResult::Rejected(_))
                | (_, OpResult::LeasesReleased(_))
                | (_, OpResult::Purged { .. })
                | (_, OpResult::SinksSet(_))
                | (_, OpResult::Maintained(_))
                | (Waiter::Nobody, _) => {}
                (Waiter::Append(..), _)
                | (Waiter::Lease(_), _)
                | (Waiter::Requeue(_), _)
                | (Waiter::Purge(_), _)
                | (Waiter::Replay(_), _)
                | (Waiter::Sinks(_), _)
                | (Waiter::Reject(_), _)
                | (Waiter::StopLeases(_), _) => {
                    unreachable!("results come back in the order of their operations")
                }
            }
        }
        self.metrics.wal_commit_records.observe(appended as f64);
        self.last_stats = store.stats();
        self.metrics.observe_wal(&self.last_stats);
        self.store = Some(store);
        if new_work {
            self.commits
                .send_modify(|mark| *mark = mark.wrapping_add(1));
        }
    }

    /// Fails every caller still waiting: they get an error, never an ack.
    pub(super) fn fail_waiters(&mut self, why: &str) {
        let waiters = self
            .in_commit
            .drain(..)
            .chain(self.queue.drain(..).map(|(_, w)| w));
        for w in waiters.collect::<Vec<_>>() {
            match w {
                Waiter::Append(reply) => {
                    let _ = reply.send(Err(AppendError::Unavailable(why.to_string())));
                }
                Waiter::Reject(reply) => {
                    let _ = reply.send(Err(AppendError::Unavailable(why.to_string())));
                }
                Waiter::Replay(reply) => {
                    let _ = reply.send(Err(format!("not replayed: {why}")));
                }
                _ => {}
            }
        }
    }
}
