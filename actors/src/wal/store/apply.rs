//! The commit: a group of operations applied in one write transaction, durable if any needs
//! it, each answered in order.

use super::deliver::Ask;
use super::*;

impl WalStore {
    /// Applies `ops` in one transaction, durable (fsync) if any op needs it, and answers each.
    /// Consumes the store: on error it is dropped and must be reopened.
    pub fn apply(
        mut self,
        ops: Vec<Op>,
        now_ms: u64,
    ) -> Result<(WalStore, Vec<OpResult>), WalError> {
        // Tight (the reserve is in use after ENOSPC): every commit durable, so the pages a
        // settle or delete frees are reusable by the very next commit (redb keeps pages freed
        // by a non-durable commit until a durable one) and the file need not grow.
        let durable = (self.tight || ops.iter().any(Op::needs_durability))
            && !self.negative_control_non_durable;
        let mut txn = read_db(&self.db).begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        let mut meta = self.meta.clone();
        meta.clock_ms = meta.clock_ms.max(now_ms);
        // Once per commit that appends: is there room to take more in?
        let appends = ops.iter().any(|o| matches!(o, Op::Append(_)));
        let disk_full = if appends && self.tight {
            Some(DiskFull {
                free: (self.free_space)().unwrap_or(0),
                min_free: 0,
                reserve_in_use: true,
            })
        } else if appends && self.limits.min_free_bytes > 0 {
            (self.free_space)()
                .filter(|free| *free < self.limits.min_free_bytes)
                .map(|free| DiskFull {
                    free,
                    min_free: self.limits.min_free_bytes,
                    reserve_in_use: false,
                })
        } else {
            None
        };
        let mut results = Vec::with_capacity(ops.len());
        {
            let mut tx = Tx::open(&txn)?;
            for op in ops {
                let r = match op {
                    Op::Append(_) if disk_full.is_some() => {
                        OpResult::Appended(Err(disk_full.clone().expect("checked").into()))
                    }
                    Op::Append(records) => {
                        OpResult::Appended(self.append(&mut tx, &mut meta, records, now_ms)?)
                    }
                    Op::Lease {
                        sink,
                        max,
                        fill,
                        lanes,
                    } => {
                        let ask = Ask { max, fill, lanes };
                        OpResult::Leased(self.lease(&mut tx, &mut meta, &sink, ask, now_ms)?)
                    }
                    Op::Settle { sink, outcomes } => {
                        self.settle(&mut tx, &mut meta, &sink, outcomes, now_ms)?
                    }
                    Op::Maintain => {
                        OpResult::Maintained(self.maintain(&mut tx, &mut meta, now_ms)?)
                    }
                    Op::Replay { sink, records } if self.sinks.contains(&sink) => {
                        OpResult::Replayed(
                            self.replay(&mut tx, &mut meta, &sink, records, now_ms)?
                                .map_err(|e| e.to_string()),
                        )
                    }
                    Op::Replay { sink, .. } => OpResult::Replayed(Err(format!(
                        "no sink named {sink:?} in the configuration"
                    ))),
                    Op::Requeue {
                        sink,
                        limit,
                        filter,
                    } => OpResult::Requeued(self.requeue(
                        &mut tx,
                        &mut meta,
                        &sink,
                        limit,
                        Some((&filter, now_ms)),
                    )?),
                    Op::Sinks { sinks, removed } => {
                        OpResult::SinksSet(self.set_sinks(&mut tx, &mut meta, sinks, removed)?)
                    }
                    Op::ReleaseLeases => {
                        let n = self.inflight.values().map(BTreeMap::len).sum();
                        self.inflight.clear();
                        OpResult::LeasesReleased(n)
                    }
                    Op::StopLeases => OpResult::LeasesReleased(self.stop_leases(&mut tx)?),
                    Op::PurgeDead {
                        sink,
                        filter,
                        limit,
                    } => {
                        let purged = self.purge_dead(
                            &mut tx,
                            &mut meta,
                            &sink,
                            limit,
                            Some((&filter, now_ms)),
                        )?;
                        OpResult::Purged { sink, purged }
                    }
                    Op::Reject(mut r) => {
                        r.kept_ms = now_ms;
                        let id = meta.rejected_next.max(1);
                        tx.rejected.insert(id, r.encode().as_slice())?;
                        meta.rejected_next = id + 1;
                        meta.rejected += 1;
                        OpResult::Rejected(id)
                    }
                };
                results.push(r);
            }
            // Ranges cut up by routed records: written out as rows past a bound.
            for sink in self.unleased.crowded() {
                self.unleased
                    .materialize(&mut tx, &sink, meta.next_seq, true)?;
            }
            self.unleased.save(&mut tx.unleased)?;
            self.devices.save(&mut tx.device_usage)?;
        }
        meta.save(&txn)?;
        txn.commit()?;
        self.meta = meta;
        self.file_bytes = std::fs::metadata(&self.path).map_or(self.file_bytes, |m| m.len());
        // After a sweep: give space back if the file is mostly empty (see `compact.rs`).
        if let Some(OpResult::Maintained(report)) = results
            .iter_mut()
            .find(|r| matches!(r, OpResult::Maintained(_)))
        {
            report.compacted = self.maybe_compact(now_ms);
        }
        Ok((self, results))
    }
}

/// The tables of one write transaction, opened once per group.
pub(super) struct Tx<'t> {
    pub(super) records: redb::Table<'t, u64, &'static [u8]>,
    pub(super) times: redb::Table<'t, u64, u64>,
    pub(super) pending: redb::Table<'t, (&'static str, u64), u32>,
    pub(super) dead: redb::Table<'t, (&'static str, u64), &'static [u8]>,
    pub(super) idem: redb::Table<'t, (u64, &'static str), (u64, &'static str, u64)>,
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
