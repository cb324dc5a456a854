//! Retention and purges: expiry, the idempotency window, dead-letter and rejected budgets.

use super::*;

impl WalStore {
    /// Deletes up to `limit` of `sink`'s dead letters that `matches` accepts, oldest first
    /// (`None`: an entry that no longer decodes).
    /// Deletes up to `limit` of `sink`'s dead letters (oldest first) that `filter` takes
    /// (`None`: all).
    pub(super) fn purge_dead(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        sink: &str,
        limit: usize,
        filter: Option<(&DeadFilter, u64)>,
    ) -> Result<usize, WalError> {
        let seqs = self.dead_matching(tx, sink, limit, filter)?;
        for &seq in &seqs {
            tx.dead.remove((sink, seq))?;
            let s = meta.sink(sink);
            s.1 = s.1.saturating_sub(1);
            self.release(tx, meta, seq, Some(sink))?;
        }
        Ok(seqs.len())
    }

    /// The seqs of up to `limit` of `sink`'s dead letters, oldest first, that `filter` takes.
    pub(super) fn dead_matching(
        &self,
        tx: &mut Tx<'_>,
        sink: &str,
        limit: usize,
        filter: Option<(&DeadFilter, u64)>,
    ) -> Result<Vec<u64>, WalError> {
        let mut seqs = Vec::new();
        for row in tx.dead.range((sink, 0)..=(sink, u64::MAX))? {
            if seqs.len() >= limit {
                break;
            }
            let (k, v) = row?;
            let seq = k.value().1;
            let take = match filter {
                None => true,
                Some((f, now)) => {
                    let entry: Option<DeadEntry> = ciborium::from_reader(v.value()).ok();
                    let device = if f.needs_device() {
                        tx.records
                            .get(seq)?
                            .and_then(|b| quota::device_of(b.value()))
                    } else {
                        None
                    };
                    f.matches(entry.as_ref(), device.as_deref(), now)
                }
            };
            if take {
                seqs.push(seq);
            }
        }
        Ok(seqs)
    }

    pub(super) fn maintain(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        now: u64,
    ) -> Result<MaintainReport, WalError> {
        let mut report = MaintainReport::default();
        // Idempotency rows that left the window, and the oldest past the cap (kept at each
        // commit by `save_idem`; here it only covers a cap lowered in the config since). The
        // newest row stays for the cap, as there.
        let cutoff = now.saturating_sub(self.limits.idempotency_window_ms);
        let cap = self.limits.idempotency_max_keys;
        let newest = tx.idem.last()?.map(|(k, _)| k.value());
        let (purged, more) = self.forget_rows(tx, meta, SWEEP_LIMIT, |m, at, id| {
            at < cutoff || (m.idem_keys > cap && Some(id) != newest)
        })?;
        report.idempotency_purged += purged;
        report.more |= more;
        // Settled records kept past their time, or crowding what ingest needs.
        self.expire_history(tx, meta, now, &mut report)?;
        // Undelivered records past max age: Dead with reason `expired`, per sink still pending.
        // Every seq below `cut` was appended before the cutoff (`times.rs`).
        let age_cutoff = now.saturating_sub(self.limits.max_age_ms);
        if let Some((first, _)) = tx.records.first()? {
            self.expiry_cursor = self.expiry_cursor.max(first.value());
        }
        let cut =
            times::first_at_or_after(&tx.times, self.expiry_cursor, age_cutoff, meta.next_seq)?;
        let candidates: Vec<u64> = tx
            .records
            .range(self.expiry_cursor..cut.max(self.expiry_cursor))?
            .map(|r| r.map(|(k, _)| k.value()))
            .take(SWEEP_LIMIT)
            .collect::<Result<_, _>>()?;
        let all = candidates.len() < SWEEP_LIMIT;
        report.more |= !all;
        for seq in candidates {
            for sink in self.sinks.clone() {
                let attempts = match tx.pending.get((sink.as_str(), seq))? {
                    Some(v) => Some(v.value()),
                    None => self.unleased.contains(&sink, seq).then_some(0),
                };
                if let Some(attempts) = attempts {
                    self.kill(tx, meta, &sink, seq, attempts, DeadReason::Expired, now)?;
                    report.expired += 1;
                }
            }
            self.expiry_cursor = seq + 1;
        }
        if all {
            self.expiry_cursor = self.expiry_cursor.max(cut);
        }
        // Dead letters past their retention.
        let dead_cutoff = now.saturating_sub(self.limits.dead_retention_ms);
        for sink in meta.sinks.keys().cloned().collect::<Vec<_>>() {
            let rows: Vec<(u64, u64)> = tx
                .dead
                .range((sink.as_str(), 0)..=(sink.as_str(), u64::MAX))?
                .take(SWEEP_LIMIT)
                .map(|r| {
                    r.map(|(k, v)| {
                        let at = ciborium::from_reader::<DeadEntry, _>(v.value())
                            .map(|d| d.dead_at_ms)
                            .unwrap_or(0);
                        (k.value().1, at)
                    })
                })
                .collect::<Result<_, _>>()?;
            for (seq, at) in rows {
                if at >= dead_cutoff {
                    break;
                }
                tx.dead.remove((sink.as_str(), seq))?;
                let s = meta.sink(&sink);
                s.1 = s.1.saturating_sub(1);
                self.release(tx, meta, seq, Some(sink.as_str()))?;
                report.dead_purged += 1;
            }
        }
        // Dead letters over their budget, oldest first: a sink that dead-letters everything
        // for days must not fill the WAL that live ingest needs.
        for (sink, (_, dead, _)) in meta.sinks.clone() {
            let excess = dead.saturating_sub(self.limits.max_dead_per_sink) as usize;
            if excess == 0 {
                continue;
            }
            let n = excess.min(SWEEP_LIMIT);
            let purged = self.purge_dead(tx, meta, &sink, n, None)?;
            report.more |= excess > SWEEP_LIMIT;
            report.dead_over_budget.push((sink, purged as u64));
        }
        // Rejected messages past retention or over the count cap, oldest first.
        let excess = meta.rejected.saturating_sub(self.limits.max_rejected) as usize;
        let old: Vec<u64> = tx
            .rejected
            .iter()?
            .enumerate()
            .take_while(|(i, r)| {
                *i < excess
                    || r.as_ref().is_ok_and(|(_, v)| {
                        Rejected::decode(v.value()).map_or(true, |e| {
                            let kept = if e.kept_ms > 0 {
                                e.kept_ms
                            } else {
                                e.received_ms
                            };
                            kept < dead_cutoff
                        })
                    })
            })
            .take(SWEEP_LIMIT)
            .map(|(_, r)| r.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()?;
        report.more |= old.len() >= SWEEP_LIMIT;
        for id in old {
            tx.rejected.remove(id)?;
            meta.rejected = meta.rejected.saturating_sub(1);
            report.rejected_purged += 1;
        }
        // Each sink's oldest pending record, for its age (the SLO metric and `ping`): its
        // first pending row or unleased record, whose append time `times` holds. Two
        // lookups per sink, once per maintenance run: the age is at most one run stale.
        self.oldest_pending.clear();
        for sink in meta.sinks.keys() {
            let row = tx
                .pending
                .range((sink.as_str(), 0)..=(sink.as_str(), u64::MAX))?
                .next()
                .transpose()?
                .map(|(k, _)| k.value().1);
            let first = match (row, self.unleased.first(sink, meta.next_seq)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(seq) = first {
                if let Some(at) = times::appended_at(&tx.times, seq)? {
                    self.oldest_pending.insert(sink.clone(), at);
                }
            }
        }
        self.trim_times(tx)?;
        Ok(report)
    }
}
