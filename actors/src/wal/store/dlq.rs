//! Dead letters at scale (issue 14, part 2): filtered, paged by a cursor (the WAL seq of the
//! last one seen), and visited one at a time so an export of a million needs no more memory
//! than one entry. Read beside the writer (one read transaction), or from a file no process
//! holds open.

use super::*;

/// One dead letter as listed and exported.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadRow {
    pub sink: String,
    pub wal_seq: u64,
    pub reason: String,
    pub class: &'static str,
    pub attempts: u32,
    /// WAL time (see "Time" in `store/mod.rs`).
    pub dead_at_ms: u64,
    /// The record as the sinks get it; `None` if it no longer decodes.
    pub record: Option<serde_json::Value>,
}

fn row(sink: &str, seq: u64, entry: &[u8], record: Option<&[u8]>) -> DeadRow {
    let e: Option<DeadEntry> = ciborium::from_reader(entry).ok();
    let record = record.and_then(|b| Record::decode(b).ok()).map(|r| {
        let mut v = serde_json::to_value(&r).unwrap_or_default();
        if let Some(t) = r.trace {
            v["trace"] = serde_json::json!(t.to_string());
        }
        v
    });
    DeadRow {
        sink: sink.to_string(),
        wal_seq: seq,
        reason: e
            .as_ref()
            .map_or("(undecodable entry)".into(), |e| e.reason.clone()),
        class: e.as_ref().map_or("corrupt", |e| e.class().as_str()),
        attempts: e.as_ref().map_or(0, |e| e.attempts),
        dead_at_ms: e.as_ref().map_or(0, |e| e.dead_at_ms),
        record,
    }
}

impl WalReader {
    /// Opens a WAL file no process holds open, for reading only, with a small page cache (16
    /// MiB: a long read streams through it instead of keeping what it read).
    pub fn offline(path: &Path) -> Result<WalReader, WalError> {
        let db = Database::builder()
            .set_cache_size(16 << 20)
            .open(path)
            .map_err(|e| open_error(path, e))?;
        Ok(WalReader(std::sync::Arc::new(std::sync::RwLock::new(db))))
    }

    /// Visits `sink`'s dead letters after WAL seq `after`, oldest first, that `filter` takes,
    /// until `f` answers false. Returns how many were visited. Blocking; holds one read
    /// transaction throughout.
    pub fn dead_each(
        &self,
        sink: &str,
        filter: &DeadFilter,
        after: Option<u64>,
        mut f: impl FnMut(DeadRow) -> bool,
    ) -> Result<u64, WalError> {
        let db = read_db(&self.0);
        let txn = db.begin_read()?;
        let now = txn
            .open_table(META)?
            .get("clock_ms")?
            .map_or(0, |v| v.value());
        let dead = txn.open_table(DEAD)?;
        let records = txn.open_table(RECORDS)?;
        let from = after.map_or(0, |a| a.saturating_add(1));
        let mut n = 0;
        for r in dead.range((sink, from)..=(sink, u64::MAX))? {
            let (k, v) = r?;
            let seq = k.value().1;
            let body = records.get(seq)?;
            let body = body.as_ref().map(|b| b.value());
            let entry: Option<DeadEntry> = ciborium::from_reader(v.value()).ok();
            let device = if filter.needs_device() {
                body.and_then(quota::device_of)
            } else {
                None
            };
            if !filter.matches(entry.as_ref(), device.as_deref(), now) {
                continue;
            }
            n += 1;
            if !f(row(sink, seq, v.value(), body)) {
                break;
            }
        }
        Ok(n)
    }

    /// One page: up to `limit` dead letters after `after`, and the cursor of the next page
    /// (`None`: this was the last).
    pub fn dead_page(
        &self,
        sink: &str,
        filter: &DeadFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<DeadRow>, Option<u64>), WalError> {
        let mut rows = Vec::new();
        let mut more = false;
        self.dead_each(sink, filter, after, |r| {
            if rows.len() == limit {
                more = true;
                return false;
            }
            rows.push(r);
            true
        })?;
        let next = more.then(|| rows.last().map(|r| r.wal_seq)).flatten();
        Ok((rows, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::tests::{limits, rec};

    #[test]
    fn pages_filters_and_globs() {
        assert!(glob("stm32-*", "stm32-7"));
        assert!(glob("*-7", "stm32-7") && glob("s?m32-*", "stm32-") && glob("*", ""));
        assert!(!glob("stm32-?", "stm32-17") && !glob("a*b", "a-c"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.redb");
        let s = WalStore::open(&path, vec!["api".into()], limits()).unwrap();
        let mut recs = Vec::new();
        for i in 0..10u64 {
            let mut r = rec(&format!("k{i}"), 1);
            r.device_id = if i % 2 == 0 { "stm32-a" } else { "esp-b" }.into();
            recs.push(r);
        }
        let (s, _) = s.apply(vec![Op::Append(recs)], 100).unwrap();
        let (s, _) = s
            .apply(
                vec![Op::Lease {
                    sink: "api".into(),
                    max: 10,
                    fill: None,
                    lanes: None,
                }],
                100,
            )
            .unwrap();
        let outcomes = (1..=10)
            .map(|q| (q, Outcome::Dead(format!("400 #{q}"))))
            .collect();
        let (s, _) = s
            .apply(
                vec![Op::Settle {
                    sink: "api".into(),
                    outcomes,
                }],
                200,
            )
            .unwrap();
        let reader = s.reader();
        let all = DeadFilter::default();
        let (p1, next) = reader.dead_page("api", &all, None, 4).unwrap();
        assert_eq!(
            p1.iter().map(|r| r.wal_seq).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        let (p2, next) = reader.dead_page("api", &all, next, 4).unwrap();
        assert_eq!(p2[0].wal_seq, 5);
        let (p3, next) = reader.dead_page("api", &all, next, 4).unwrap();
        assert_eq!((p3.len(), next), (2, None));
        let stm = DeadFilter {
            device: Some("stm32-*".into()),
            ..Default::default()
        };
        let (rows, _) = reader.dead_page("api", &stm, None, 100).unwrap();
        assert_eq!(rows.len(), 5);
        assert!(rows
            .iter()
            .all(|r| r.record.as_ref().unwrap()["device_id"] == "stm32-a"));
        assert_eq!(rows[0].class, "rejected");
        let later = DeadFilter {
            since_ms: Some(201),
            ..Default::default()
        };
        assert_eq!(
            reader.dead_page("api", &later, None, 100).unwrap().0.len(),
            0
        );
        // Requeue and purge take the same filter.
        let (s, r) = s
            .apply(
                vec![Op::Requeue {
                    sink: "api".into(),
                    limit: 100,
                    filter: stm.clone(),
                }],
                300,
            )
            .unwrap();
        assert_eq!(r[0], OpResult::Requeued(5));
        let (_, r) = s
            .apply(
                vec![Op::PurgeDead {
                    sink: "api".into(),
                    filter: DeadFilter {
                        device: Some("esp-*".into()),
                        ..Default::default()
                    },
                    limit: 100,
                }],
                300,
            )
            .unwrap();
        assert!(matches!(r[0], OpResult::Purged { purged: 5, .. }), "{r:?}");
    }
}
