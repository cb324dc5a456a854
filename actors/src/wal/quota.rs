//! Per-device quotas inside the WAL budget: one device cannot fill the WAL for everyone.
//!
//! The rule (fair share, on by default): **a device may hold at most as much of the WAL as
//! is left free for everyone else** — `device + total <= limit`, in records and in bytes,
//! after the append. So:
//! - one device flooding alone stops at half the WAL; every other device can still append
//!   until it holds a quarter, and the WAL never fills;
//! - n devices flooding hold at most limit/(n+1) each: there is always room for a newcomer;
//! - an evenly loaded fleet is not held back until the WAL is nearly full (1,000 devices at
//!   the same rate: refused past 99.9 % full; one of them at twice the others' rate: past
//!   99.8 %), unlike a flat share of limit/devices.
//!
//! Absolute caps (`wal.device_max_records`, `wal.device_max_bytes`) apply on top when set.
//!
//! Accounting invariant: `Devices` holds, per device, the records it has in the `records`
//! table and their encoded bytes — the same units as the WAL's limits — changed in the same
//! transaction as the rows (saved to `device_usage` for the devices a commit touched), so
//! it survives restarts without a scan. A file from before this table is scanned once.

use redb::{ReadableTable, TableDefinition};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};

/// device id -> (records, bytes) it holds.
pub const DEVICE_USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("device_usage");

/// Live records and their encoded bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub records: u64,
    pub bytes: u64,
}

impl Usage {
    pub fn plus(self, o: Usage) -> Usage {
        Usage {
            records: self.records.saturating_add(o.records),
            bytes: self.bytes.saturating_add(o.bytes),
        }
    }
}

/// Limits the rule is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimits {
    /// The WAL's own limits (`wal.max_records`, `wal.max_bytes`).
    pub wal: Usage,
    /// Absolute per-device caps; 0 = none.
    pub device_max: Usage,
    /// The fair-share rule (`wal.device_fair_share`).
    pub fair_share: bool,
}

/// The device is over its share: the append was refused whole, nothing stored. Other
/// devices are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "device {device} holds {} records / {} bytes of the WAL, its share is {} / {} while others \
     wait for delivery; retry later",
    holds.records, holds.bytes, share.records, share.bytes
)]
pub struct DeviceQuota {
    pub device: String,
    pub holds: Usage,
    /// What the device could hold at this moment (it shrinks as the WAL fills).
    pub share: Usage,
}

/// Checks an append of `adding` by a device holding `holds`, with `total` in the WAL.
pub fn check(
    limits: &QuotaLimits,
    device: &str,
    holds: Usage,
    adding: Usage,
    total: Usage,
) -> Result<(), DeviceQuota> {
    let after = holds.plus(adding);
    let total_after = total.plus(adding);
    // Fair share: device_after + total_after <= limit, i.e. device_after <= (limit -
    // others) / 2 with others = total_after - device_after: the device may hold no more
    // than stays free after it. Saturating, so a limit already passed gives 0.
    let fair = |limit: u64, total: u64, device: u64| limit.saturating_sub(total - device) / 2;
    let cap = |max: u64| if max == 0 { u64::MAX } else { max };
    let mut share = Usage {
        records: cap(limits.device_max.records),
        bytes: cap(limits.device_max.bytes),
    };
    if limits.fair_share {
        share.records =
            share
                .records
                .min(fair(limits.wal.records, total_after.records, after.records));
        share.bytes = share
            .bytes
            .min(fair(limits.wal.bytes, total_after.bytes, after.bytes));
    }
    if after.records > share.records || after.bytes > share.bytes {
        return Err(DeviceQuota {
            device: device.to_string(),
            holds,
            share,
        });
    }
    Ok(())
}

/// The device id of an encoded record. Runs once per deleted record, so it reads only the
/// first entry of the record's CBOR map — `device_id` is `Record`'s first field — and falls
/// back to a full decode if the bytes are shaped otherwise.
pub fn device_of(record: &[u8]) -> Option<String> {
    device_of_prefix(record).or_else(|| {
        #[derive(Deserialize)]
        struct DeviceOnly {
            device_id: String,
        }
        ciborium::from_reader::<DeviceOnly, _>(record)
            .ok()
            .map(|d| d.device_id)
    })
}

/// `{ "device_id": <text>, ...` at the start of a CBOR map (definite or indefinite length).
fn device_of_prefix(b: &[u8]) -> Option<String> {
    /// A definite-length text string at `b[at..]`: (its bytes, the offset after it).
    fn text(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let head = *b.get(at)?;
        if head >> 5 != 3 {
            return None;
        }
        let (len, start) = match head & 0x1f {
            n @ 0..=23 => (n as usize, at + 1),
            24 => (*b.get(at + 1)? as usize, at + 2),
            25 => (
                u16::from_be_bytes(b.get(at + 1..at + 3)?.try_into().ok()?) as usize,
                at + 3,
            ),
            _ => return None,
        };
        Some((b.get(start..start + len)?, start + len))
    }
    let head = *b.first()?;
    if head >> 5 != 5 {
        return None;
    }
    let at = match head & 0x1f {
        0..=23 | 31 => 1,
        24 => 2,
        25 => 3,
        _ => return None,
    };
    let (key, at) = text(b, at)?;
    if key != b"device_id" {
        return None;
    }
    let (value, _) = text(b, at)?;
    String::from_utf8(value.to_vec()).ok()
}

/// What every device holds, mirrored in memory; see the module doc.
#[derive(Debug, Clone, Default)]
pub struct Devices {
    usage: HashMap<String, Usage>,
    /// Changed since the last save.
    dirty: HashSet<String>,
}

impl Devices {
    pub fn get(&self, device: &str) -> Usage {
        self.usage.get(device).copied().unwrap_or_default()
    }

    pub fn count(&self) -> u64 {
        self.usage.len() as u64
    }

    pub fn add(&mut self, device: &str, bytes: u64) {
        self.add_usage(device, Usage { records: 1, bytes });
    }

    /// A batch's readings of one device at once (the commit path adds per device, not per
    /// reading).
    pub fn add_usage(&mut self, device: &str, add: Usage) {
        // A device's name is copied once, not per batch.
        let u = match self.usage.get_mut(device) {
            Some(u) => u,
            None => self.usage.entry(device.to_string()).or_default(),
        };
        u.records += add.records;
        u.bytes += add.bytes;
        self.mark(device);
    }

    fn mark(&mut self, device: &str) {
        if !self.dirty.contains(device) {
            self.dirty.insert(device.to_string());
        }
    }

    pub fn remove(&mut self, device: &str, bytes: u64) {
        if let Some(u) = self.usage.get_mut(device) {
            u.records = u.records.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(bytes);
            if u.records == 0 {
                self.usage.remove(device);
            }
            self.mark(device);
        }
    }

    /// Writes the devices changed since the last save (call inside the commit).
    pub fn save(
        &mut self,
        t: &mut redb::Table<'_, &'static str, (u64, u64)>,
    ) -> Result<(), redb::StorageError> {
        for d in self.dirty.drain() {
            match self.usage.get(&d) {
                Some(u) => {
                    t.insert(d.as_str(), (u.records, u.bytes))?;
                }
                None => {
                    t.remove(d.as_str())?;
                }
            }
        }
        Ok(())
    }

    pub fn load(
        t: &impl ReadableTable<&'static str, (u64, u64)>,
    ) -> Result<Devices, redb::StorageError> {
        let mut usage = HashMap::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let (records, bytes) = v.value();
            usage.insert(k.value().to_string(), Usage { records, bytes });
        }
        Ok(Devices {
            usage,
            dirty: HashSet::new(),
        })
    }

    /// Rebuilds from the records themselves (a file written before `device_usage`).
    pub fn scan(
        records: &impl ReadableTable<u64, &'static [u8]>,
    ) -> Result<Devices, redb::StorageError> {
        let mut d = Devices::default();
        for row in records.iter()? {
            let (_, v) = row?;
            let bytes = v.value();
            let device = device_of(bytes).unwrap_or_default();
            d.add(&device, bytes.len() as u64);
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(records: u64) -> QuotaLimits {
        QuotaLimits {
            wal: Usage {
                records,
                bytes: u64::MAX / 4,
            },
            device_max: Usage::default(),
            fair_share: true,
        }
    }

    fn u(records: u64) -> Usage {
        Usage {
            records,
            bytes: records,
        }
    }

    /// Appends one record at a time for `device` until refused; returns what it holds.
    fn flood(l: &QuotaLimits, held: &mut HashMap<&'static str, u64>, device: &'static str) -> u64 {
        loop {
            let total: u64 = held.values().sum();
            let holds = held.get(device).copied().unwrap_or(0);
            if check(l, device, u(holds), u(1), u(total)).is_err() {
                return holds;
            }
            *held.entry(device).or_default() += 1;
        }
    }

    #[test]
    fn a_lone_flooder_stops_at_half_and_a_bystander_still_fits() {
        let l = limits(1000);
        let mut held = HashMap::new();
        assert_eq!(flood(&l, &mut held, "flooder"), 500);
        // The bystander is never refused while it holds less than a quarter.
        for i in 0..250 {
            let total: u64 = held.values().sum();
            let holds = held.get("honest").copied().unwrap_or(0);
            assert!(
                check(&l, "honest", u(holds), u(1), u(total)).is_ok(),
                "refused at {i}"
            );
            *held.entry("honest").or_default() += 1;
        }
        // And the flooder, now over its share, stays refused.
        let total: u64 = held.values().sum();
        assert!(check(&l, "flooder", u(500), u(1), u(total)).is_err());
    }

    #[test]
    fn n_flooders_leave_room_for_a_newcomer() {
        let l = limits(10_000);
        let mut held = HashMap::new();
        for _ in 0..3 {
            for d in ["a", "b", "c"] {
                flood(&l, &mut held, d);
            }
        }
        let total: u64 = held.values().sum();
        assert!(total < 10_000, "the WAL never fills: {held:?}");
        assert!(check(&l, "new", u(0), u(1), u(total)).is_ok());
    }

    #[test]
    fn an_even_fleet_is_not_held_back_until_nearly_full() {
        let l = limits(100_000);
        // 100 devices holding 900 each (90 % full): each may still append.
        assert!(check(&l, "d", u(900), u(1), u(90_000)).is_ok());
        // One holding twice the others' share at 95 % full: still fits.
        assert!(check(&l, "fast", u(1_900), u(1), u(95_000)).is_ok());
    }

    #[test]
    fn absolute_caps_and_fair_share_off() {
        let mut l = limits(1000);
        l.device_max = Usage {
            records: 10,
            bytes: 0,
        };
        assert!(check(&l, "d", u(9), u(1), u(9)).is_ok());
        let e = check(&l, "d", u(10), u(1), u(10)).unwrap_err();
        assert_eq!(e.share.records, 10);
        l.device_max = Usage::default();
        l.fair_share = false;
        assert!(check(&l, "d", u(900), u(1), u(900)).is_ok());
    }

    #[test]
    fn bytes_count_like_records() {
        let l = QuotaLimits {
            wal: Usage {
                records: u64::MAX / 4,
                bytes: 1000,
            },
            device_max: Usage::default(),
            fair_share: true,
        };
        let big = Usage {
            records: 1,
            bytes: 400,
        };
        assert!(check(&l, "d", Usage::default(), big, Usage::default()).is_ok());
        assert!(check(&l, "d", big, big, big).is_err(), "800 + 800 > 1000");
    }

    #[test]
    fn device_of_reads_the_id_only() {
        let mut r = crate::wal::tests::rec("k", 1);
        let bytes = r.encode();
        assert_eq!(
            device_of_prefix(&bytes).as_deref(),
            Some("dev-1"),
            "the fast path"
        );
        assert_eq!(device_of(&bytes).as_deref(), Some("dev-1"));
        r.device_id = "d".repeat(128); // longest id: a one-byte length
        assert_eq!(device_of_prefix(&r.encode()), Some(r.device_id.clone()));
        assert_eq!(device_of(b"garbage"), None);
        assert_eq!(device_of(&[]), None);
        // Another shape (fields in another order): the full decode answers.
        let mut other = Vec::new();
        ciborium::into_writer(&serde_json::json!({"a": 1, "device_id": "x"}), &mut other).unwrap();
        assert_eq!(device_of_prefix(&other), None);
        assert_eq!(device_of(&other).as_deref(), Some("x"));
    }
}
