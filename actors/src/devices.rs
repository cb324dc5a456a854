//! Per-device health (`GET /admin/devices`, issue 13): when each device was last seen, what it
//! sent and what became of it, gaps in its `seq`, its clock's skew against the gateway's, and
//! whether its readings are stuck on one value. Never per-device metric labels (the
//! cardinality of a fleet): only bounded aggregates are metrics.
//!
//! Bounded: at most `cap` devices, the least recently seen forgotten first. Kept across
//! restarts by a snapshot (`data/devices.json`, written every minute and at shutdown).

use crate::metrics::reg;
use crate::wal::Record;
use prometheus::{IntGauge, Registry};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Mutex;

/// Missing `seq` ranges kept per device.
const RANGES: usize = 5;
/// The same values this many times in a row: stuck.
const STUCK_RUN: u32 = 10;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceHealth {
    pub device_id: String,
    /// `http` or `mqtt`, the latest.
    pub source: String,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Readings received (before the WAL's answer), accepted (stored), duplicates.
    pub received: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub refused: u64,
    /// The latest refusal's code and when.
    pub last_refusal: Option<(String, u64)>,
    pub last_seq: Option<u64>,
    /// Readings missing from `seq` (skipped numbers), and the latest missing ranges.
    pub seq_gaps: u64,
    pub missing: VecDeque<(u64, u64)>,
    /// Times `seq` went backwards by more than a retry would (a restarted counter).
    pub seq_restarts: u64,
    /// Gateway receive time minus the device's own timestamp (ms), the latest; when it sent
    /// one as epoch seconds or milliseconds.
    pub clock_skew_ms: Option<i64>,
    /// Readings in a row with the same values, and whether that makes it stuck.
    pub same_values: u32,
    pub stuck: bool,
    /// Readings with a field outside its plausible range (`admin.plausible`), and the latest
    /// such field and value.
    pub implausible: u64,
    pub last_implausible: Option<(String, f64)>,
    #[serde(skip)]
    last_values: u64,
}

/// Hashes a JSON value in place (the ingest path: no serialisation, no allocation).
fn hash_value(v: &serde_json::Value, h: &mut impl Hasher) {
    use serde_json::Value;
    std::mem::discriminant(v).hash(h);
    match v {
        Value::Null => {}
        Value::Bool(b) => b.hash(h),
        Value::Number(n) => n.as_f64().map(f64::to_bits).hash(h),
        Value::String(s) => s.hash(h),
        Value::Array(a) => a.iter().for_each(|x| hash_value(x, h)),
        Value::Object(m) => m.iter().for_each(|(k, x)| {
            k.hash(h);
            hash_value(x, h);
        }),
    }
}

/// A device's timestamp as epoch milliseconds, when it is a number of seconds or ms.
fn device_ms(v: &serde_json::Value) -> Option<i64> {
    let x = v.as_f64()?;
    if x > 1e12 {
        Some(x as i64)
    } else if x > 1e9 {
        Some((x * 1000.0) as i64)
    } else {
        None
    }
}

impl DeviceHealth {
    fn saw(&mut self, r: &Record) {
        self.received += 1;
        self.last_seen_ms = self.last_seen_ms.max(r.receive_ts_ms);
        if self.first_seen_ms == 0 {
            self.first_seen_ms = r.receive_ts_ms;
        }
        self.source = r.source.as_str().to_string();
        if let Some(seq) = r.device_seq {
            match self.last_seq {
                Some(last) if seq == last + 1 => {}
                Some(last) if seq > last + 1 => {
                    self.seq_gaps += seq - last - 1;
                    self.missing.push_back((last + 1, seq - 1));
                    while self.missing.len() > RANGES {
                        self.missing.pop_front();
                    }
                }
                // A retry or a reordering (seq not far behind) changes nothing.
                Some(last) if seq + 1000 < last || seq == 0 => self.seq_restarts += 1,
                _ => {}
            }
            if self
                .last_seq
                .is_none_or(|l| seq > l || seq + 1000 < l || seq == 0)
            {
                self.last_seq = Some(seq);
            }
        }
        if let Some(ms) = r.device_ts.as_ref().and_then(device_ms) {
            self.clock_skew_ms = Some(r.receive_ts_ms as i64 - ms);
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (k, v) in &r.data {
            k.hash(&mut h);
            hash_value(v, &mut h);
        }
        let values = h.finish();
        if values == self.last_values && self.received > 1 {
            self.same_values += 1;
        } else {
            self.same_values = 1;
            self.last_values = values;
        }
        self.stuck = self.same_values >= STUCK_RUN;
    }
}

/// Every tracked device; cheap to share.
pub struct DeviceBook {
    cap: std::sync::atomic::AtomicUsize,
    map: Mutex<HashMap<String, DeviceHealth>>,
    /// field -> [low, high] (`admin.plausible`).
    ranges: Mutex<std::collections::BTreeMap<String, [f64; 2]>>,
}

/// Bounded aggregates for the metrics.
#[derive(Debug, Default, PartialEq)]
pub struct Aggregates {
    pub tracked: u64,
    pub silent: u64,
    pub stuck: u64,
    pub skewed: u64,
    pub seq_gaps: u64,
}

impl DeviceBook {
    pub fn new(cap: usize) -> DeviceBook {
        DeviceBook {
            cap: std::sync::atomic::AtomicUsize::new(cap.max(1)),
            map: Mutex::default(),
            ranges: Mutex::default(),
        }
    }

    pub fn set_ranges(&self, ranges: std::collections::BTreeMap<String, [f64; 2]>) {
        *self.ranges.lock().expect("ranges") = ranges;
    }

    /// The fields of `r` outside their plausible range, with their values.
    pub fn implausible(&self, r: &Record) -> Vec<(String, f64)> {
        let ranges = self.ranges.lock().expect("ranges");
        ranges
            .iter()
            .filter_map(|(field, [lo, hi])| {
                let v = r.data.get(field)?.as_f64()?;
                (v < *lo || v > *hi).then(|| (field.clone(), v))
            })
            .collect()
    }

    /// At most this many devices are tracked (`admin.max_tracked_devices`).
    pub fn set_cap(&self, cap: usize) {
        self.cap
            .store(cap.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    fn cap(&self) -> usize {
        self.cap.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Readings received (validated, on their way to the WAL); the implausible fields seen.
    pub fn saw(&self, records: &[Record]) -> Vec<(String, f64)> {
        let mut flagged = Vec::new();
        let bad: Vec<Vec<(String, f64)>> = records.iter().map(|r| self.implausible(r)).collect();
        let mut m = self.map.lock().expect("device book");
        for (r, bad) in records.iter().zip(bad) {
            let d = m
                .entry(r.device_id.clone())
                .or_insert_with(|| DeviceHealth {
                    device_id: r.device_id.clone(),
                    ..Default::default()
                });
            d.saw(r);
            if let Some(last) = bad.last() {
                d.implausible += 1;
                d.last_implausible = Some(last.clone());
            }
            flagged.extend(bad);
        }
        let cap = self.cap();
        if m.len() > cap {
            // Forget the least recently seen (a scan, only when over the cap).
            let mut by_age: Vec<(u64, String)> = m
                .values()
                .map(|d| (d.last_seen_ms, d.device_id.clone()))
                .collect();
            by_age.sort();
            for (_, id) in by_age.into_iter().take(m.len() - cap) {
                m.remove(&id);
            }
        }
        flagged
    }

    /// What the WAL answered for a device's readings.
    pub fn stored(&self, device: &str, accepted: u64, duplicates: u64) {
        if let Some(d) = self.map.lock().expect("device book").get_mut(device) {
            d.accepted += accepted;
            d.duplicates += duplicates;
        }
    }

    /// A refusal of an authenticated device's message (a device whose every message is
    /// refused is tracked too: that is the one to look at).
    pub fn refused(&self, device: &str, code: &str, now_ms: u64) {
        let mut m = self.map.lock().expect("device book");
        if !m.contains_key(device) && m.len() >= self.cap() {
            return;
        }
        let d = m.entry(device.to_string()).or_insert_with(|| DeviceHealth {
            device_id: device.to_string(),
            first_seen_ms: now_ms,
            ..Default::default()
        });
        d.refused += 1;
        d.last_seen_ms = d.last_seen_ms.max(now_ms);
        d.last_refusal = Some((code.to_string(), now_ms));
    }

    /// The devices, most recently seen first; `silent_for_ms`: only those not seen for that
    /// long.
    pub fn list(&self, limit: usize, silent_for_ms: Option<u64>, now_ms: u64) -> Vec<DeviceHealth> {
        let m = self.map.lock().expect("device book");
        let mut v: Vec<DeviceHealth> = m
            .values()
            .filter(|d| silent_for_ms.is_none_or(|s| now_ms.saturating_sub(d.last_seen_ms) >= s))
            .cloned()
            .collect();
        v.sort_by_key(|d| std::cmp::Reverse(d.last_seen_ms));
        v.truncate(limit);
        v
    }

    pub fn aggregates(&self, now_ms: u64, silent_ms: u64, skew_ms: i64) -> Aggregates {
        let m = self.map.lock().expect("device book");
        let mut a = Aggregates {
            tracked: m.len() as u64,
            ..Default::default()
        };
        for d in m.values() {
            a.silent += u64::from(now_ms.saturating_sub(d.last_seen_ms) >= silent_ms);
            a.stuck += u64::from(d.stuck);
            a.skewed += u64::from(d.clock_skew_ms.is_some_and(|s| s.abs() >= skew_ms));
            a.seq_gaps += d.seq_gaps;
        }
        a
    }

    /// Writes the snapshot (atomically: beside, then renamed).
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let v: Vec<DeviceHealth> = self
            .map
            .lock()
            .expect("device book")
            .values()
            .cloned()
            .collect();
        let path = data_dir.join("devices.json");
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&v).map_err(std::io::Error::other)?)?;
        std::fs::rename(tmp, path)
    }

    /// Reads the snapshot, if any (a broken one is ignored: this is evidence, not data).
    pub fn load(&self, data_dir: &Path) {
        let Ok(bytes) = std::fs::read(data_dir.join("devices.json")) else {
            return;
        };
        let Ok(v) = serde_json::from_slice::<Vec<DeviceHealth>>(&bytes) else {
            tracing::warn!("data/devices.json unreadable: per-device health starts afresh");
            return;
        };
        let mut m = self.map.lock().expect("device book");
        for d in v.into_iter().take(self.cap()) {
            m.insert(d.device_id.clone(), d);
        }
    }
}

/// The bounded aggregates as gauges.
pub struct DeviceMetrics {
    pub tracked: IntGauge,
    pub silent: IntGauge,
    pub stuck: IntGauge,
    pub skewed: IntGauge,
    pub seq_gaps: IntGauge,
}

/// Not seen for this long: silent. A clock off by this much: skewed.
pub const SILENT_MS: u64 = 10 * 60 * 1000;
pub const SKEW_MS: i64 = 60 * 1000;

impl DeviceMetrics {
    pub fn new(r: &Registry) -> DeviceMetrics {
        let g = |n: &str, h: &str| reg(r, IntGauge::new(n, h).unwrap());
        DeviceMetrics {
            tracked: g(
                "devices_tracked",
                "Devices seen (at most admin.max_tracked_devices)",
            ),
            silent: g("devices_silent", "Tracked devices not seen for 10 minutes"),
            stuck: g(
                "devices_stuck",
                "Devices whose last 10 readings carried the same values",
            ),
            skewed: g(
                "devices_clock_skewed",
                "Devices whose own timestamps are a minute or more off the gateway's clock",
            ),
            seq_gaps: g(
                "devices_seq_gaps",
                "Readings missing from tracked devices' seq numbers, summed",
            ),
        }
    }

    pub fn observe(&self, book: &DeviceBook, now_ms: u64) {
        let a = book.aggregates(now_ms, SILENT_MS, SKEW_MS);
        self.tracked.set(a.tracked as i64);
        self.silent.set(a.silent as i64);
        self.stuck.set(a.stuck as i64);
        self.skewed.set(a.skewed as i64);
        self.seq_gaps.set(a.seq_gaps as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(seq: u64, at: u64, temp: f64) -> Record {
        let mut r = crate::wal::tests::rec(&format!("d/{seq}"), at);
        r.device_id = "d".into();
        r.device_seq = Some(seq);
        r.device_ts = Some(serde_json::json!((at - 2_000) / 1000));
        r.data = serde_json::json!({"temp": temp})
            .as_object()
            .unwrap()
            .clone();
        r
    }

    #[test]
    fn gaps_restarts_skew_and_stuck_values() {
        let book = DeviceBook::new(2);
        let base = 1_800_000_000_000;
        for (i, seq) in [0, 1, 2, 5, 6, 6, 9].into_iter().enumerate() {
            book.saw(&[reading(seq, base + i as u64 * 1000, 20.0)]);
        }
        let d = &book.list(10, None, base)[0];
        assert_eq!(
            (d.seq_gaps, d.missing.clone()),
            (4, VecDeque::from([(3, 4), (7, 8)]))
        );
        assert_eq!(d.clock_skew_ms, Some(2_000));
        assert!(!d.stuck, "7 in a row");
        for i in 0..5 {
            book.saw(&[reading(10 + i, base + 10_000, 20.0)]);
        }
        assert!(book.list(10, None, base)[0].stuck);
        book.saw(&[reading(0, base + 20_000, 21.0)]);
        assert_eq!(book.list(10, None, base)[0].seq_restarts, 1);
        // Bounded: the least recently seen goes.
        let mut other = reading(0, base + 30_000, 1.0);
        other.device_id = "e".into();
        book.saw(&[other.clone()]);
        other.device_id = "f".into();
        book.saw(&[other]);
        let ids: Vec<String> = book
            .list(10, None, base)
            .into_iter()
            .map(|d| d.device_id)
            .collect();
        assert_eq!(ids.len(), 2);
        assert!(!ids.contains(&"d".to_string()), "{ids:?}");
        book.set_ranges([("temp".to_string(), [-40.0, 85.0])].into());
        let mut hot = reading(1, base + 40_000, 120.0);
        hot.device_id = "f".into();
        assert_eq!(book.saw(&[hot]), vec![("temp".to_string(), 120.0)]);
        let f = book.list(1, None, base).remove(0);
        assert_eq!(
            (f.implausible, f.last_implausible),
            (1, Some(("temp".into(), 120.0)))
        );
        let a = book.aggregates(base + 700_000, 600_000, 60_000);
        assert_eq!((a.tracked, a.silent), (2, 2));
        let dir = tempfile::tempdir().unwrap();
        book.save(dir.path()).unwrap();
        let again = DeviceBook::new(10);
        again.load(dir.path());
        assert_eq!(again.list(10, None, base).len(), 2);
    }
}
