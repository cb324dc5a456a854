//! Appends: classification against the idempotency window, quotas, the rows written (the
//! idempotency rows: `idem_rows/`).

use super::*;

impl WalStore {
    pub(super) fn append(
        &mut self,
        tx: &mut Tx<'_>,
        meta: &mut Meta,
        mut records: Vec<Record>,
        now: u64,
    ) -> Result<Result<Vec<AppendOutcome>, AppendRefused>, WalError> {
        // Pass 1: classify without writing, so a refused append leaves nothing behind. Keys
        // are borrowed from the records (no copies on this serial path); the fingerprint is
        // normally cached by the ingest edge.
        enum Class {
            New(u64),
            Conflict(u64),
            Dup(u64, String),
            DupInBatch(usize),
        }
        let mut classes = Vec::with_capacity(records.len());
        {
            // key -> (index of its latest new reading in this batch, fingerprint)
            let mut seen: HashMap<&str, (usize, u64)> = HashMap::new();
            for (i, r) in records.iter().enumerate() {
                let fp = idem::fingerprint_of(r);
                let key = r.idempotency_key.as_str();
                let class = match seen.get(key) {
                    Some(&(first, f)) if f == fp => Class::DupInBatch(first),
                    Some(_) => Class::Conflict(fp),
                    None => match idem::classify(self.window_row(tx, key, now)?.as_ref(), fp) {
                        idem::Verdict::New => Class::New(fp),
                        idem::Verdict::Conflict => Class::Conflict(fp),
                        idem::Verdict::Duplicate {
                            seq,
                            correlation_id,
                        } => Class::Dup(seq, correlation_id),
                    },
                };
                if let Class::New(_) | Class::Conflict(_) = class {
                    seen.insert(key, (i, fp));
                }
                classes.push(class);
            }
        }
        // A conflicting reading is stored under a derived key (`idem.rs`), but its row in
        // `IDEM` replaces the row of the key it arrived with (`arrived`).
        enum Plan {
            New {
                fp: u64,
                arrived: Option<String>,
                bytes: Vec<u8>,
            },
            Dup(u64, String),
            DupInBatch(usize),
        }
        let (mut new_count, mut new_bytes) = (0u64, 0u64);
        let mut plans = Vec::with_capacity(records.len());
        for (r, class) in records.iter_mut().zip(classes) {
            let (fp, arrived) = match class {
                Class::Dup(seq, corr) => {
                    plans.push(Plan::Dup(seq, corr));
                    continue;
                }
                Class::DupInBatch(first) => {
                    plans.push(Plan::DupInBatch(first));
                    continue;
                }
                Class::New(fp) => (fp, None),
                Class::Conflict(fp) => {
                    let derived = idem::conflict_key(&r.idempotency_key, fp);
                    r.encoded.0 = None; // the stored key changes
                    (fp, Some(std::mem::replace(&mut r.idempotency_key, derived)))
                }
            };
            let bytes = r.take_encoded();
            new_count += 1;
            new_bytes += bytes.len() as u64;
            plans.push(Plan::New { fp, arrived, bytes });
        }
        if new_count > 0 {
            if let Err(full) = self.room_for(meta, new_count, new_bytes) {
                return Ok(Err(full.into()));
            }
        }
        // Per-device share (one request holds one device's readings; checked per device
        // all the same).
        let mut adding: HashMap<&str, Usage> = HashMap::new();
        for (r, plan) in records.iter().zip(&plans) {
            if let Plan::New { bytes, .. } = plan {
                let a = adding.entry(r.device_id.as_str()).or_default();
                a.records += 1;
                a.bytes += bytes.len() as u64;
            }
        }
        let total = Usage {
            records: meta.records,
            bytes: meta.live_bytes,
        };
        let quota = self.limits.quota();
        for (device, add) in &adding {
            if let Err(e) = quota::check(&quota, device, self.devices.get(device), *add, total) {
                return Ok(Err(e.into()));
            }
        }
        // Accepted: each device's share counted once per batch (before pass 2, where a
        // reading no sink wants is released again).
        for (device, add) in adding {
            self.devices.add_usage(device, add);
        }
        // Readings queued for every sink, counted per sink once after the loop.
        let mut for_every = 0u64;
        // Pass 2: write. The records are taken apart as they go (their correlation ids move
        // into the answers).
        let mut out: Vec<AppendOutcome> = Vec::with_capacity(records.len());
        for (r, plan) in records.iter_mut().zip(plans) {
            let outcome = match plan {
                Plan::Dup(seq, correlation_id) => AppendOutcome::Duplicate {
                    seq,
                    correlation_id,
                },
                Plan::DupInBatch(first) => match &out[first] {
                    AppendOutcome::Stored {
                        seq,
                        correlation_id,
                        ..
                    }
                    | AppendOutcome::Duplicate {
                        seq,
                        correlation_id,
                    } => AppendOutcome::Duplicate {
                        seq: *seq,
                        correlation_id: correlation_id.clone(),
                    },
                },
                Plan::New { fp, arrived, bytes } => {
                    let seq = meta.next_seq;
                    meta.next_seq += 1;
                    tx.records.insert(seq, bytes.as_slice())?;
                    // A route naming only sinks the WAL no longer has (routed just before
                    // a config.apply removed them) falls back to every sink: delivered too
                    // widely once, never accepted and delivered nowhere.
                    let known = self.sinks.iter().any(|s| r.route.has(s));
                    if !known && r.route.0.is_some() && !self.sinks.is_empty() {
                        tracing::warn!(device_id = %r.device_id, "a reading routed to removed sinks only: queued for every sink");
                    }
                    // Queued for every sink (the common case): it waits in each sink's open
                    // unleased range, no row. Queued for some: cut out of the ranges, rows.
                    let every = !known || self.sinks.iter().all(|s| r.route.has(s));
                    let routed = if every {
                        for_every += 1;
                        self.sinks.len()
                    } else {
                        let mut routed = 0;
                        for sink in &self.sinks {
                            if r.route.has(sink) {
                                tx.pending.insert((sink.as_str(), seq), 0u32)?;
                                meta.sink(sink).0 += 1;
                                routed += 1;
                            }
                        }
                        self.unleased.remove_all(seq, seq + 1);
                        routed
                    };
                    self.note_appended(tx, seq, now)?;
                    let key = arrived.as_deref().unwrap_or(&r.idempotency_key);
                    self.remember_key(key, seq, &r.correlation_id, fp);
                    meta.records += 1;
                    meta.live_bytes += bytes.len() as u64;
                    if routed == 0 {
                        // Nothing will ever need it; keep the idempotency key only.
                        self.release(tx, meta, seq, None)?;
                    }
                    AppendOutcome::Stored {
                        seq,
                        correlation_id: std::mem::take(&mut r.correlation_id),
                        key_conflict: arrived.is_some(),
                    }
                }
            };
            out.push(outcome);
        }
        if for_every > 0 {
            for sink in &self.sinks {
                meta.sink(sink).0 += for_every;
            }
        }
        Ok(Ok(out))
    }

    /// Whether `records` more records of `bytes` fit the WAL's limits (and its file's).
    pub(super) fn room_for(&self, meta: &Meta, records: u64, bytes: u64) -> Result<(), Full> {
        let file_full =
            self.limits.max_file_bytes > 0 && self.file_bytes >= self.limits.max_file_bytes;
        if meta.records + records > self.limits.max_records
            || meta.live_bytes + bytes > self.limits.max_bytes
            || file_full
        {
            return Err(Full {
                records: meta.records,
                bytes: meta.live_bytes,
                max_records: self.limits.max_records,
                max_bytes: self.limits.max_bytes,
                file_bytes: self.file_bytes,
                max_file_bytes: self.limits.max_file_bytes,
            });
        }
        Ok(())
    }
}
