//! The commit: a group of operations applied in one write transaction, durable if any needs
//! it, each answered — as `OpResult`s in order ([`WalStore::apply`]), or through the
//! caller's own typed jobs ([`WalStore::apply_with`], the WAL actor's: each job carries its
//! reply port and gets its own result).

use super::deliver::Ask;
use super::*;

impl WalStore {
    /// Applies `ops` in one transaction, durable (fsync) if any op needs it, and answers each.
    /// Consumes the store: on error it is dropped and must be reopened.
    pub fn apply(self, ops: Vec<Op>, now_ms: u64) -> Result<(WalStore, Vec<OpResult>), WalError> {
        let durable = ops.iter().any(Op::needs_durability);
        let (store, mut results, compacted) = self
            .apply_with(ops, now_ms, durable, |a, op| a.op(op))
            .map_err(|f| f.error)?;
        if let Some(OpResult::Maintained(report)) = results
            .iter_mut()
            .find(|r| matches!(r, OpResult::Maintained(_)))
        {
            report.compacted = compacted;
        }
        Ok((store, results))
    }

    /// Applies a group of the caller's `jobs` in one transaction: `each` turns a job into its
    /// answer through the [`Applier`]'s typed operations, so whatever travels with a job (a
    /// caller's reply port) comes back paired with its own result. Durable (fsync) if
    /// `durable` or the store is tight. After a group with a maintenance sweep, the file may
    /// be compacted (returned). Consumes the store: on error it is dropped and must be
    /// reopened, and the jobs not applied come back with the answers made so far (none of
    /// which committed).
    pub fn apply_with<J, A>(
        mut self,
        jobs: Vec<J>,
        now_ms: u64,
        durable: bool,
        mut each: impl FnMut(&mut Applier<'_, '_>, J) -> Result<A, WalError>,
    ) -> Result<Applied<A>, GroupFailed<J, A>> {
        // Tight (the reserve is in use after ENOSPC): every commit durable, so the pages a
        // settle or delete frees are reusable by the very next commit (redb keeps pages freed
        // by a non-durable commit until a durable one) and the file need not grow.
        let durable = (self.tight || durable) && !self.negative_control_non_durable;
        let mut answers = Vec::with_capacity(jobs.len());
        let mut jobs = jobs.into_iter();
        let mut maintained = false;
        let committed = (|| -> Result<(), WalError> {
            let mut txn = read_db(&self.db).begin_write()?;
            txn.set_durability(if durable {
                Durability::Immediate
            } else {
                Durability::None
            })?;
            let mut meta = self.meta.clone();
            meta.clock_ms = meta.clock_ms.max(now_ms);
            {
                let mut tx = Tx::open(&txn)?;
                let mut a = Applier {
                    store: &mut self,
                    tx: &mut tx,
                    meta: &mut meta,
                    now_ms,
                    disk_full: None,
                    maintained: false,
                };
                for job in jobs.by_ref() {
                    answers.push(each(&mut a, job)?);
                }
                maintained = a.maintained;
                // Ranges cut up by routed records: written out as rows past a bound.
                for sink in self.unleased.crowded() {
                    self.unleased
                        .materialize(&mut tx, &sink, meta.next_seq, true)?;
                }
                self.save_idem(&mut tx, &mut meta, now_ms)?;
                self.unleased.save(&mut tx.unleased)?;
                self.devices.save(&mut tx.device_usage)?;
            }
            meta.save_since(Some(&self.meta), &txn)?;
            txn.commit()?;
            self.meta = meta;
            Ok(())
        })();
        if let Err(error) = committed {
            return Err(GroupFailed {
                error,
                answered: answers,
                rest: jobs.collect(),
            });
        }
        self.file_bytes = std::fs::metadata(&self.path).map_or(self.file_bytes, |m| m.len());
        // After a sweep: give space back if the file is mostly empty (see `compact.rs`).
        let compacted = if maintained {
            self.maybe_compact(now_ms)
        } else {
            None
        };
        Ok((self, answers, compacted))
    }
}

/// A group committed: the store back, each job's answer in order, and the compaction that
/// followed a sweep, if any.
pub type Applied<A> = (WalStore, Vec<A>, Option<Compacted>);

/// A group that did not commit: why, the answers made before it failed (none committed) and
/// the jobs not applied.
pub struct GroupFailed<J, A> {
    pub error: WalError,
    pub answered: Vec<A>,
    pub rest: Vec<J>,
}

/// One group's transaction, as [`WalStore::apply_with`] hands it to each job: one typed
/// method per operation.
pub struct Applier<'s, 't> {
    store: &'s mut WalStore,
    tx: &'s mut Tx<'t>,
    meta: &'s mut Meta,
    now_ms: u64,
    /// Whether appends are refused for space, found once per group at its first append.
    disk_full: Option<Option<DiskFull>>,
    maintained: bool,
}

impl Applier<'_, '_> {
    /// Any operation, answered as an [`OpResult`] (the store's tests and tools).
    pub fn op(&mut self, op: Op) -> Result<OpResult, WalError> {
        Ok(match op {
            Op::Append(records) => OpResult::Appended(self.append(records)?),
            Op::Lease {
                sink,
                max,
                fill,
                lanes,
            } => OpResult::Leased(self.lease(&sink, max, fill, lanes)?),
            Op::Settle { sink, outcomes } => self.settle(&sink, outcomes)?,
            Op::Maintain => OpResult::Maintained(self.maintain()?),
            Op::Replay { sink, records } => OpResult::Replayed(self.replay(&sink, records)?),
            Op::Requeue {
                sink,
                limit,
                filter,
            } => OpResult::Requeued(self.requeue(&sink, limit, &filter)?),
            Op::Sinks { sinks, removed } => OpResult::SinksSet(self.set_sinks(sinks, removed)?),
            Op::ReleaseLeases => OpResult::LeasesReleased(self.release_leases()),
            Op::StopLeases => OpResult::LeasesReleased(self.stop_leases()?),
            Op::PurgeDead {
                sink,
                filter,
                limit,
            } => {
                let purged = self.purge_dead(&sink, &filter, limit)?;
                OpResult::Purged { sink, purged }
            }
            Op::Reject(r) => OpResult::Rejected(self.reject(r)?),
        })
    }

    pub fn append(
        &mut self,
        records: Vec<Record>,
    ) -> Result<Result<Vec<AppendOutcome>, AppendRefused>, WalError> {
        if let Some(full) = self.disk_full() {
            return Ok(Err(full.into()));
        }
        let (tx, meta, now) = (&mut *self.tx, &mut *self.meta, self.now_ms);
        self.store.append(tx, meta, records, now)
    }

    /// Once per group that appends: is there room to take more in?
    fn disk_full(&mut self) -> Option<DiskFull> {
        if let Some(known) = &self.disk_full {
            return known.clone();
        }
        let s = &self.store;
        let full = if s.tight {
            Some(DiskFull {
                free: (s.free_space)().unwrap_or(0),
                min_free: 0,
                reserve_in_use: true,
            })
        } else if s.limits.min_free_bytes > 0 {
            (s.free_space)()
                .filter(|free| *free < s.limits.min_free_bytes)
                .map(|free| DiskFull {
                    free,
                    min_free: s.limits.min_free_bytes,
                    reserve_in_use: false,
                })
        } else {
            None
        };
        self.disk_full = Some(full.clone());
        full
    }

    /// A lease whose records the caller decodes (the WAL actor, off the commit thread).
    pub fn lease_bodies(
        &mut self,
        sink: &str,
        max: usize,
        fill: Option<Fill>,
        lanes: Option<Lanes>,
    ) -> Result<Vec<LeasedBody>, WalError> {
        let ask = Ask { max, fill, lanes };
        let (tx, meta, now) = (&mut *self.tx, &mut *self.meta, self.now_ms);
        self.store.lease(tx, meta, sink, ask, now)
    }

    /// A lease decoded here: a body that is not a record is dead-lettered in this
    /// transaction, as the actor's `Corrupt` settle would later.
    pub fn lease(
        &mut self,
        sink: &str,
        max: usize,
        fill: Option<Fill>,
        lanes: Option<Lanes>,
    ) -> Result<Vec<Leased>, WalError> {
        let (leased, bad) = LeasedBody::decode_all(self.lease_bodies(sink, max, fill, lanes)?);
        if !bad.is_empty() {
            self.settle(sink, bad)?;
        }
        Ok(leased)
    }

    pub fn settle(
        &mut self,
        sink: &str,
        outcomes: Vec<(u64, Outcome)>,
    ) -> Result<OpResult, WalError> {
        let (tx, meta, now) = (&mut *self.tx, &mut *self.meta, self.now_ms);
        self.store.settle(tx, meta, sink, outcomes, now)
    }

    pub fn maintain(&mut self) -> Result<MaintainReport, WalError> {
        self.maintained = true;
        let (tx, meta, now) = (&mut *self.tx, &mut *self.meta, self.now_ms);
        self.store.maintain(tx, meta, now)
    }

    pub fn replay(
        &mut self,
        sink: &str,
        records: Vec<Record>,
    ) -> Result<Result<usize, String>, WalError> {
        if !self.store.sinks.iter().any(|s| s == sink) {
            return Ok(Err(format!("no sink named {sink:?} in the configuration")));
        }
        let (tx, meta, now) = (&mut *self.tx, &mut *self.meta, self.now_ms);
        Ok(self
            .store
            .replay(tx, meta, sink, records, now)?
            .map_err(|e| e.to_string()))
    }

    pub fn requeue(
        &mut self,
        sink: &str,
        limit: usize,
        filter: &DeadFilter,
    ) -> Result<usize, WalError> {
        let (tx, meta, now) = (&mut *self.tx, &mut *self.meta, self.now_ms);
        self.store
            .requeue(tx, meta, sink, limit, Some((filter, now)))
    }

    pub fn set_sinks(
        &mut self,
        sinks: Vec<String>,
        removed: Vec<(String, super::Removal)>,
    ) -> Result<super::SinksChanged, WalError> {
        let (tx, meta) = (&mut *self.tx, &mut *self.meta);
        self.store.set_sinks(tx, meta, sinks, removed)
    }

    /// Every lease in flight forgotten (its holder is gone); how many.
    pub fn release_leases(&mut self) -> usize {
        let n = self.store.inflight.values().map(BTreeMap::len).sum();
        self.store.inflight.clear();
        n
    }

    pub fn stop_leases(&mut self) -> Result<usize, WalError> {
        self.store.stop_leases(self.tx)
    }

    pub fn purge_dead(
        &mut self,
        sink: &str,
        filter: &DeadFilter,
        limit: usize,
    ) -> Result<usize, WalError> {
        let (tx, meta, now) = (&mut *self.tx, &mut *self.meta, self.now_ms);
        self.store
            .purge_dead(tx, meta, sink, limit, Some((filter, now)))
    }

    /// Keeps a refused message; the id it is stored under.
    pub fn reject(&mut self, mut r: Rejected) -> Result<u64, WalError> {
        r.kept_ms = self.now_ms;
        let id = self.meta.rejected_next.max(1);
        self.tx.rejected.insert(id, r.encode().as_slice())?;
        self.meta.rejected_next = id + 1;
        self.meta.rejected += 1;
        Ok(id)
    }
}

/// The tables of one write transaction, opened once per group.
pub(super) struct Tx<'t> {
    pub(super) records: redb::Table<'t, u64, &'static [u8]>,
    pub(super) times: redb::Table<'t, u64, u64>,
    pub(super) pending: redb::Table<'t, (&'static str, u64), u32>,
    pub(super) dead: redb::Table<'t, (&'static str, u64), &'static [u8]>,
    pub(super) idem: redb::Table<'t, u64, (u64, &'static [u8])>,
    pub(super) rejected: redb::Table<'t, u64, &'static [u8]>,
    pub(super) device_usage: redb::Table<'t, &'static str, (u64, u64)>,
    pub(super) acks: redb::Table<'t, (u64, &'static str), &'static [u8]>,
    pub(super) unleased: redb::Table<'t, (&'static str, u64), u64>,
}

impl<'t> Tx<'t> {
    pub(super) fn open(txn: &'t WriteTransaction) -> Result<Tx<'t>, WalError> {
        Ok(Tx {
            records: txn.open_table(RECORDS)?,
            times: txn.open_table(TIMES)?,
            pending: txn.open_table(PENDING)?,
            dead: txn.open_table(DEAD)?,
            idem: txn.open_table(IDEM)?,
            rejected: txn.open_table(REJECTED)?,
            device_usage: txn.open_table(DEVICE_USAGE)?,
            acks: txn.open_table(history::runs::ACKS)?,
            unleased: txn.open_table(UNLEASED)?,
        })
    }
}
