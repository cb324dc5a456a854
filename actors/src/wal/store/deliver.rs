//! Delivery: leases, settles, requeues, dead letters, and deleting what no sink needs.

use super::*;

impl WalStore {
    pub(super) fn lease(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        sink: &str,
        ask: Ask,
        now: u64,
    ) -> Result<Vec<Leased>, WalError> {
        let Ask { max, fill, lanes } = ask;
        // The live lane starts at the split; without lanes everything is one lane from 0.
        let split = lanes.map(|l| {
            let head = meta.next_seq;
            let from = self.live_from.entry(sink.to_string()).or_insert(head);
            if l.split_now {
                *from = head;
            }
            *from
        });
        let inflight = self.inflight.entry(sink.to_string()).or_default();
        inflight.retain(|_, deadline| *deadline > now);
        let (mut leased_now, mut bodies, live_from) = match (split, lanes) {
            (Some(split), Some(l)) => {
                let live = pick(tx, inflight, sink, split..=u64::MAX, max)?;
                // A batch that carries live records takes no more backlog than it carries
                // live ones, so the backlog does not make it slow to send.
                let mut room = max.saturating_sub(live.len()).min(l.backlog_max);
                if !live.is_empty() {
                    room = room.min(live.len());
                }
                let mut backlog = pick(tx, inflight, sink, 0..=split.saturating_sub(1), room)?;
                // Each lane's bodies in one scan; the batch in seq order (backlog first).
                let mut bodies = bodies_of(tx, &backlog)?;
                bodies.extend(bodies_of(tx, &live)?);
                backlog.extend(live);
                (backlog, bodies, split)
            }
            _ => {
                let picked = pick(tx, inflight, sink, 0..=u64::MAX, max)?;
                // The bodies, read in key order: one range scan over the record table when
                // the leased seqs are dense (a backlog), lookups when they are sparse
                // (records other sinks hold).
                let bodies = bodies_of(tx, &picked)?;
                (picked, bodies, u64::MAX)
            }
        };
        if let Some(f) = fill {
            if !filled(tx, &mut leased_now, &bodies, max, f, now)? {
                return Ok(Vec::new());
            }
        }
        let mut out = Vec::with_capacity(leased_now.len());
        for (seq, attempts) in leased_now {
            if attempts >= self.limits.max_attempts {
                // Leased that often without a settle: its publisher keeps dying on it.
                let reason = DeadReason::MaxAttempts {
                    attempts,
                    last_error: None,
                };
                self.kill(tx, meta, sink, seq, attempts, reason, now)?;
                continue;
            }
            let body = bodies.remove(&seq).map(|b| Record::decode(&b));
            let record = match body {
                Some(Ok(r)) => r,
                unreadable => {
                    let reason = match unreadable {
                        Some(Err(e)) => DeadReason::Corrupt(format!("corrupt record: {e}")),
                        _ => DeadReason::Corrupt("record body missing".into()),
                    };
                    self.kill(tx, meta, sink, seq, attempts, reason, now)?;
                    continue;
                }
            };
            tx.pending.insert((sink, seq), attempts + 1)?;
            self.inflight
                .entry(sink.to_string())
                .or_default()
                .insert(seq, now.saturating_add(self.limits.lease_ms));
            out.push(Leased {
                seq,
                attempts: attempts + 1,
                record,
                live: seq >= live_from,
            });
        }
        Ok(out)
    }

    /// Every lease in flight back to Enqueued, its attempt refunded (`Op::StopLeases`).
    pub(super) fn stop_leases(&mut self, tx: &mut Tx<'_>) -> Result<usize, WalError> {
        let mut n = 0;
        for (sink, leases) in std::mem::take(&mut self.inflight) {
            for seq in leases.into_keys() {
                let attempts = tx.pending.get((sink.as_str(), seq))?.map(|v| v.value());
                if let Some(a) = attempts {
                    tx.pending
                        .insert((sink.as_str(), seq), a.saturating_sub(1))?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    pub(super) fn settle(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        sink: &str,
        outcomes: Vec<(u64, Outcome)>,
        now: u64,
    ) -> Result<OpResult, WalError> {
        let (mut acked, mut dead, mut retried, mut exhausted) = (0, 0, 0, 0);
        for (seq, outcome) in outcomes {
            if let Some(m) = self.inflight.get_mut(sink) {
                m.remove(&seq);
            }
            // An ack removes the row in the same walk of the tree that finds it.
            let row = match outcome {
                Outcome::Acked => tx.pending.remove((sink, seq))?,
                _ => tx.pending.get((sink, seq))?,
            };
            let Some(attempts) = row.map(|v| v.value()) else {
                continue; // already settled by an earlier lease of the same record
            };
            match outcome {
                Outcome::Acked => {
                    let s = meta.sink(sink);
                    s.0 -= 1;
                    s.2 += 1;
                    self.unref_acked(tx, meta, sink, seq, attempts, now)?;
                    acked += 1;
                }
                Outcome::Retry(reason) if attempts >= self.limits.max_attempts => {
                    let reason = DeadReason::MaxAttempts {
                        attempts,
                        last_error: Some(reason),
                    };
                    self.kill(tx, meta, sink, seq, attempts, reason, now)?;
                    dead += 1;
                    exhausted += 1;
                }
                Outcome::Retry(_) => retried += 1,
                Outcome::Release => {
                    tx.pending.insert((sink, seq), attempts.saturating_sub(1))?;
                    retried += 1;
                }
                Outcome::Dead(reason) => {
                    let reason = DeadReason::Refused(reason);
                    self.kill(tx, meta, sink, seq, attempts, reason, now)?;
                    dead += 1;
                }
            }
        }
        Ok(OpResult::Settled {
            sink: sink.to_string(),
            acked,
            dead,
            retried,
            exhausted,
        })
    }

    pub(super) fn requeue(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        sink: &str,
        limit: usize,
        filter: Option<(&DeadFilter, u64)>,
    ) -> Result<usize, WalError> {
        let seqs = self.dead_matching(tx, sink, limit, filter)?;
        for &seq in &seqs {
            // The dead row's reference passes to the pending row: `refs` is unchanged.
            tx.dead.remove((sink, seq))?;
            tx.pending.insert((sink, seq), 0u32)?;
            let s = meta.sink(sink);
            s.1 = s.1.saturating_sub(1);
            s.0 += 1;
        }
        Ok(seqs.len())
    }

    /// Pending -> Dead for one sink. The dead row keeps the record referenced.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn kill(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        sink: &str,
        seq: u64,
        attempts: u32,
        reason: DeadReason,
        now: u64,
    ) -> Result<(), WalError> {
        tx.pending.remove((sink, seq))?;
        if let Some(m) = self.inflight.get_mut(sink) {
            m.remove(&seq);
        }
        self.dead_events.push((sink.to_string(), reason.class()));
        let entry = DeadEntry::new(&reason, attempts, now);
        let mut buf = Vec::new();
        ciborium::into_writer(&entry, &mut buf).expect("encoding to a Vec cannot fail");
        tx.dead.insert((sink, seq), buf.as_slice())?;
        let s = meta.sink(sink);
        s.0 -= 1;
        s.1 += 1;
        Ok(())
    }

    /// One row fewer names `seq`; the last one out deletes the record.
    pub(super) fn unref(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        seq: u64,
    ) -> Result<(), WalError> {
        // Removed first: with one sink (the common case) one walk of the tree, not two.
        let Some((n, ts)) = tx.refs.remove(seq)?.map(|v| v.value()) else {
            return Ok(());
        };
        if n > 1 {
            tx.refs.insert(seq, (n - 1, ts))?;
            return Ok(());
        }
        if let Some(body) = tx.records.remove(seq)? {
            let body = body.value();
            meta.live_bytes = meta.live_bytes.saturating_sub(body.len() as u64);
            let device = quota::device_of(body).unwrap_or_default();
            self.devices.remove(&device, body.len() as u64);
        }
        meta.records = meta.records.saturating_sub(1);
        if self.limits.keeps_history() {
            tx.history.remove(seq)?; // acks of other sinks, if any
        }
        Ok(())
    }
}

/// The encoded records of `picked` (ascending seqs), by seq; a missing one is absent.
/// Whether a [`Fill`] lease goes ahead with `picked` (cut at `max_bytes` first): a full
/// batch, by records or bytes, or an oldest record that has waited long enough.
fn filled(
    tx: &Tx<'_>,
    picked: &mut Vec<(u64, u32)>,
    bodies: &HashMap<u64, Vec<u8>>,
    max: usize,
    f: Fill,
    now: u64,
) -> Result<bool, WalError> {
    let Some(&(oldest, _)) = picked.first() else {
        return Ok(false);
    };
    let mut full = picked.len() >= max;
    let mut bytes = 0u64;
    for (i, (seq, _)) in picked.iter().enumerate() {
        bytes += bodies.get(seq).map_or(0, |b| b.len() as u64);
        if bytes >= f.max_bytes {
            // This record fills the batch; keep it unless that takes it over (and it is not
            // the only one).
            let keep = if bytes > f.max_bytes && i > 0 {
                i
            } else {
                i + 1
            };
            picked.truncate(keep);
            full = true;
            break;
        }
    }
    let accepted = tx.refs.get(oldest)?.map_or(0, |r| r.value().1);
    Ok(full || now.saturating_sub(accepted) >= f.max_age_ms)
}

/// What a lease asks for (see [`Op::Lease`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ask {
    pub max: usize,
    pub fill: Option<Fill>,
    pub lanes: Option<Lanes>,
}

/// Up to `max` of `sink`'s pending rows in `seqs`, in order, skipping those in flight:
/// (seq, attempts so far).
fn pick(
    tx: &Tx<'_>,
    inflight: &BTreeMap<u64, u64>,
    sink: &str,
    seqs: std::ops::RangeInclusive<u64>,
    max: usize,
) -> Result<Vec<(u64, u32)>, WalError> {
    let mut picked = Vec::new();
    if max == 0 {
        return Ok(picked);
    }
    for row in tx
        .pending
        .range((sink, *seqs.start())..=(sink, *seqs.end()))?
    {
        let (k, v) = row?;
        let seq = k.value().1;
        if inflight.contains_key(&seq) {
            continue;
        }
        picked.push((seq, v.value()));
        if picked.len() >= max {
            break;
        }
    }
    Ok(picked)
}

fn bodies_of(tx: &Tx<'_>, picked: &[(u64, u32)]) -> Result<HashMap<u64, Vec<u8>>, WalError> {
    let mut out = HashMap::with_capacity(picked.len());
    let (Some(&(first, _)), Some(&(last, _))) = (picked.first(), picked.last()) else {
        return Ok(out);
    };
    if last - first < 2 * picked.len() as u64 {
        let mut want = picked.iter().map(|p| p.0).peekable();
        for row in tx.records.range(first..=last)? {
            let (k, v) = row?;
            let seq = k.value();
            while want.peek().is_some_and(|w| *w < seq) {
                want.next();
            }
            if want.peek() == Some(&seq) {
                out.insert(seq, v.value().to_vec());
                want.next();
            }
        }
    } else {
        for &(seq, _) in picked {
            if let Some(b) = tx.records.get(seq)? {
                out.insert(seq, b.value().to_vec());
            }
        }
    }
    Ok(out)
}
