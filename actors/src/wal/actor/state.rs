//! The WAL actor's state between messages: the commit queue, and answering callers.

use super::*;

/// How long a stop waits for the WAL's final commit.
const FINAL_COMMIT_WAIT: Duration = Duration::from_secs(5);

impl WalState {
    /// Takes the next group if no commit is running: at most `max_group` jobs.
    pub(super) fn take_group(&mut self) -> Option<(WalStore, Vec<Job>)> {
        if self.queue.is_empty() {
            return None;
        }
        let mut store = self.store.take()?;
        store.set_tight(self.tight);
        let n = self.queue.len().min(self.max_group);
        Some((store, self.queue.drain(..n).collect()))
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

    /// Answers the callers of the group that just committed.
    pub(super) fn finish(
        &mut self,
        myself: &ActorRef<WalMsg>,
        store: WalStore,
        answers: Vec<Answer>,
    ) {
        let mut new_work = false;
        let mut appended = 0usize;
        for answer in answers {
            match answer {
                Answer::Appended(reply, r) => {
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
                Answer::Leased {
                    reply,
                    sink,
                    leased,
                } => {
                    // Decoded on a task of its own while the next group commits; the bodies
                    // that are not records go back as `Corrupt` settles (dead-lettered).
                    let (me, addr) = (myself.clone(), self.addr.clone());
                    self.tasks.push(tokio::spawn(async move {
                        let (leased, bad) = LeasedBody::decode_all(leased);
                        if !bad.is_empty() {
                            addr.note_sent();
                            let _ = me.cast(WalMsg::Settle {
                                sink,
                                outcomes: bad,
                            });
                        }
                        let _ = reply.send(leased);
                    }));
                }
                Answer::Replayed(reply, r) => {
                    new_work |= r.as_ref().is_ok_and(|n| *n > 0);
                    let _ = reply.send(r);
                }
                Answer::Requeued(reply, n) => {
                    new_work |= n > 0;
                    let _ = reply.send(n);
                }
                Answer::SinksSet(reply, changed) => {
                    new_work = true;
                    tracing::warn!(sinks = ?store.sinks(), dropped = changed.dropped, moved = changed.moved, "WAL sink set changed");
                    let _ = reply.send(changed);
                }
                Answer::Rejected(reply, id) => {
                    let _ = reply.send(Ok(id));
                }
                Answer::LeasesStopped(reply, n) => {
                    new_work |= n > 0;
                    let _ = reply.send(n);
                }
                Answer::Purged {
                    reply,
                    sink,
                    purged,
                } => {
                    self.metrics
                        .dead_letters_purged
                        .with_label_values(&[&sink, "operator"])
                        .inc_by(purged as u64);
                    tracing::warn!(sink = %sink, purged, "dead letters purged by the operator");
                    let _ = reply.send(purged);
                }
                Answer::Cast(_) => {}
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

    /// At a stop with no commit running: every lease still in flight returned with its
    /// attempt refunded (and any settles queued), in one durable commit, before the file is
    /// closed. The dispatcher's own stop returns its leases first (`StopLeases`); this covers
    /// the WAL stopping without it — its supervisor stopping it, a failure of the WAL actor
    /// itself — where a lease kept the attempt of a publish that a stop, not the reading, cut
    /// short. A commit still running at the stop is left to finish on its own (its result
    /// is not awaited: the actor's mailbox is closed). Bounded by `FINAL_COMMIT_WAIT`;
    /// appends and other queued work get their callers' errors (`fail_waiters`).
    pub(super) async fn final_commit(&mut self) {
        let Some(store) = self.store.take() else {
            return; // a commit is running, or the store is being reopened
        };
        let mut ops: Vec<Op> = Vec::new();
        let mut rest = VecDeque::with_capacity(self.queue.len());
        for job in self.queue.drain(..) {
            match job {
                Job::Cast(op @ Op::Settle { .. }) => ops.push(op),
                _ => rest.push_back(job),
            }
        }
        self.queue = rest;
        let settles = ops.len();
        ops.push(Op::StopLeases);
        let now = self.clock.now_ms();
        let commit = tokio::task::spawn_blocking(move || store.apply(ops, now));
        match tokio::time::timeout(FINAL_COMMIT_WAIT, commit).await {
            Ok(Ok(Ok((store, results)))) => {
                let returned = results.iter().find_map(|r| match r {
                    OpResult::LeasesReleased(n) => Some(*n),
                    _ => None,
                });
                tracing::info!(
                    settles,
                    leases_returned = returned.unwrap_or(0),
                    "WAL stopped after a final durable commit"
                );
                self.store = Some(store);
            }
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the WAL's final commit failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the WAL's final commit task failed"),
            Err(_) => tracing::warn!("the WAL's final commit did not finish in time"),
        }
    }

    /// Fails every caller still queued: they get an error, never an ack. (Those of a group
    /// in commit travel with it: failed when it fails, dropped with it if the actor goes.)
    pub(super) fn fail_waiters(&mut self, why: &str) {
        for job in self.queue.drain(..) {
            job.fail(why);
        }
    }
}
