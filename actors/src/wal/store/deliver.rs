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
    ) -> Result<Vec<LeasedBody>, WalError> {
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
        let next_seq = meta.next_seq;
        let unleased = &self.unleased;
        let (mut leased_now, mut bodies, live_from, picks) = match (split, lanes) {
            (Some(split), Some(l)) => {
                let live = pick(
                    tx,
                    unleased,
                    inflight,
                    sink,
                    split..=u64::MAX,
                    max,
                    next_seq,
                )?;
                // A batch that carries live records takes no more backlog than it carries
                // live ones, so the backlog does not make it slow to send.
                let mut room = max.saturating_sub(live.rows.len()).min(l.backlog_max);
                if !live.rows.is_empty() {
                    room = room.min(live.rows.len());
                }
                let range = 0..=split.saturating_sub(1);
                let mut backlog = pick(tx, unleased, inflight, sink, range, room, next_seq)?;
                let mut live = live;
                // The batch in seq order (backlog first).
                let mut bodies = bodies_of(tx, &mut backlog)?;
                bodies.extend(bodies_of(tx, &mut live)?);
                let mut rows = std::mem::take(&mut backlog.rows);
                rows.append(&mut live.rows);
                (rows, bodies, split, vec![backlog, live])
            }
            _ => {
                let mut picked = pick(tx, unleased, inflight, sink, 0..=u64::MAX, max, next_seq)?;
                let bodies = bodies_of(tx, &mut picked)?;
                let rows = std::mem::take(&mut picked.rows);
                (rows, bodies, u64::MAX, vec![picked])
            }
        };
        if let Some(f) = fill {
            if !filled(tx, &mut leased_now, &bodies, max, f, now)? {
                return Ok(Vec::new());
            }
        }
        // What was taken from the unleased ranges leaves them; from here on it has a row.
        for p in &picks {
            let kept: Vec<u64> = leased_now
                .iter()
                .filter(|(seq, _, unleased)| *unleased && p.lo <= *seq && *seq <= p.hi)
                .map(|(seq, ..)| *seq)
                .collect();
            let upto = if p.unleased_all_seen && kept.len() == p.unleased_found {
                p.hi.saturating_add(1).min(next_seq)
            } else {
                kept.last().map_or(p.lo, |s| s + 1)
            };
            self.unleased.remove(sink, p.lo, upto);
        }
        let mut out = Vec::with_capacity(leased_now.len());
        for (seq, attempts, _) in leased_now {
            if attempts >= self.limits.max_attempts {
                // Leased that often without a settle: its publisher keeps dying on it.
                let reason = DeadReason::MaxAttempts {
                    attempts,
                    last_error: None,
                };
                self.kill(tx, meta, sink, seq, attempts, reason, now)?;
                continue;
            }
            // Decoded by the caller, off this thread (`LeasedBody`); a body that is not a
            // record comes back as an `Outcome::Corrupt` settle.
            let Some(body) = bodies.remove(&seq) else {
                let reason = DeadReason::Corrupt("record body missing".into());
                self.kill(tx, meta, sink, seq, attempts, reason, now)?;
                continue;
            };
            tx.pending.insert((sink, seq), attempts + 1)?;
            self.inflight
                .entry(sink.to_string())
                .or_default()
                .insert(seq, now.saturating_add(self.limits.lease_ms));
            out.push(LeasedBody {
                seq,
                attempts: attempts + 1,
                body,
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
        let mut runs = history::runs::Runs::default();
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
                    if self.limits.keeps_history() {
                        self.keep_acked(tx, meta, sink, seq)?;
                        runs.push(seq, attempts, now);
                    } else {
                        self.release(tx, meta, seq, Some(sink))?;
                    }
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
                Outcome::Corrupt(e) => {
                    self.kill(tx, meta, sink, seq, attempts, DeadReason::Corrupt(e), now)?;
                    dead += 1;
                }
            }
        }
        self.keep_runs(tx, meta, sink, runs)?;
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
            // The dead row's hold passes to the pending row: the record stays.
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
        self.unleased.remove(sink, seq, seq + 1);
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

    /// `except`'s hold on `seq` is gone (its row was removed; `None`: nobody's yet): if no
    /// other sink holds it, the record is deleted. With one sink, no lookup at all.
    pub(super) fn release(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        seq: u64,
        except: Option<&str>,
    ) -> Result<(), WalError> {
        if self.held_elsewhere(tx, meta, seq, except)? {
            return Ok(());
        }
        if let Some(body) = tx.records.remove(seq)? {
            let body = body.value();
            meta.live_bytes = meta.live_bytes.saturating_sub(body.len() as u64);
            let device = quota::device_of(body).unwrap_or_default();
            self.devices.remove(&device, body.len() as u64);
            meta.records = meta.records.saturating_sub(1);
        }
        // Acks other sinks kept of it: their runs go with the history sweep.
        Ok(())
    }
}

/// Whether a [`Fill`] lease goes ahead with `picked` (cut at `max_bytes` first): a full
/// batch, by records or bytes, or an oldest record that has waited long enough.
fn filled(
    tx: &Tx<'_>,
    picked: &mut Vec<(u64, u32, bool)>,
    bodies: &HashMap<u64, Vec<u8>>,
    max: usize,
    f: Fill,
    now: u64,
) -> Result<bool, WalError> {
    let Some(&(oldest, ..)) = picked.first() else {
        return Ok(false);
    };
    let mut full = picked.len() >= max;
    let mut bytes = 0u64;
    for (i, (seq, ..)) in picked.iter().enumerate() {
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
    let accepted = times::appended_at(&tx.times, oldest)?.unwrap_or(0);
    Ok(full || now.saturating_sub(accepted) >= f.max_age_ms)
}

/// What a lease asks for (see [`Op::Lease`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ask {
    pub max: usize,
    pub fill: Option<Fill>,
    pub lanes: Option<Lanes>,
}

/// What one lane's scan found: up to `max` of the sink's pending records in `lo..=hi`, in
/// order, skipping those in flight.
#[derive(Debug, Clone)]
struct Pick {
    lo: u64,
    hi: u64,
    /// (seq, attempts so far, from the unleased ranges).
    rows: Vec<(u64, u32, bool)>,
    /// Bodies of the unleased records found, read in the same scan.
    bodies: HashMap<u64, Vec<u8>>,
    /// How many unleased records the scan found, and whether it saw every one in the range.
    unleased_found: usize,
    unleased_all_seen: bool,
}

/// Merges the sink's `pending` rows (leased before) with its unleased ranges (read straight
/// from the record table in key order), lowest seqs first.
fn pick(
    tx: &Tx<'_>,
    unleased: &Unleased,
    inflight: &BTreeMap<u64, u64>,
    sink: &str,
    seqs: std::ops::RangeInclusive<u64>,
    max: usize,
    next_seq: u64,
) -> Result<Pick, WalError> {
    let (lo, hi) = (*seqs.start(), *seqs.end());
    let mut out = Pick {
        lo,
        hi,
        rows: Vec::new(),
        bodies: HashMap::new(),
        unleased_found: 0,
        unleased_all_seen: true,
    };
    if max == 0 {
        out.unleased_all_seen = false;
        return Ok(out);
    }
    // The rows between the leases in flight: a backlog's first leases are rows at the
    // front (up to `PIPELINE` batches of them), which a scan would walk and skip on every
    // lease; the in-flight seqs come in runs, so the gaps between the runs are few.
    let mut leased_before: Vec<(u64, u32)> = Vec::new();
    let mut from = Some(lo);
    'gaps: while let Some(start) = from.filter(|s| *s <= hi) {
        let run = inflight.range(start..=hi).next().map(|(s, _)| *s);
        let rows = match run {
            Some(r) => tx.pending.range((sink, start)..(sink, r))?,
            None => tx.pending.range((sink, start)..=(sink, hi))?,
        };
        for row in rows {
            let (k, v) = row?;
            leased_before.push((k.value().1, v.value()));
            if leased_before.len() >= max {
                break 'gaps;
            }
        }
        // Past the run of consecutive in-flight seqs that ended the gap.
        from = run.and_then(|r| {
            let mut next = r;
            for (&seq, _) in inflight.range(r..) {
                if seq != next {
                    break;
                }
                next = next.checked_add(1)?;
            }
            Some(next)
        });
    }
    let mut fresh: Vec<(u64, Vec<u8>)> = Vec::new();
    'ranges: for (s, e) in unleased.within(sink, lo, hi.saturating_add(1).min(next_seq)) {
        for row in tx.records.range(s..e)? {
            if fresh.len() >= max {
                out.unleased_all_seen = false;
                break 'ranges;
            }
            let (k, v) = row?;
            fresh.push((k.value(), v.value().to_vec()));
        }
    }
    // The two lists are sorted and disjoint: take the lowest `max` of both.
    let (mut a, mut b) = (
        leased_before.into_iter().peekable(),
        fresh.into_iter().peekable(),
    );
    while out.rows.len() < max {
        let from_rows = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.0 < y.0,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if from_rows {
            let (seq, attempts) = a.next().expect("peeked");
            out.rows.push((seq, attempts, false));
        } else {
            let (seq, body) = b.next().expect("peeked");
            out.rows.push((seq, 0, true));
            out.bodies.insert(seq, body);
            out.unleased_found += 1;
        }
    }
    if b.peek().is_some() {
        out.unleased_all_seen = false;
    }
    Ok(out)
}

/// The encoded records of `p`'s rows, by seq (a missing one is absent): the unleased ones
/// were read by the scan (moved out of `p`, not copied); the others in key order — one range scan over the record table
/// when they are dense (a backlog), lookups when they are sparse (records other sinks hold).
fn bodies_of(tx: &Tx<'_>, p: &mut Pick) -> Result<HashMap<u64, Vec<u8>>, WalError> {
    let mut out = std::mem::take(&mut p.bodies);
    let picked: Vec<u64> = p.rows.iter().filter(|r| !r.2).map(|r| r.0).collect();
    let (Some(&first), Some(&last)) = (picked.first(), picked.last()) else {
        return Ok(out);
    };
    if last - first < 2 * picked.len() as u64 {
        let mut want = picked.iter().copied().peekable();
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
        for seq in picked {
            if let Some(b) = tx.records.get(seq)? {
                out.insert(seq, b.value().to_vec());
            }
        }
    }
    Ok(out)
}
