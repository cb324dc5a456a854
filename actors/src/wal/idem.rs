//! Idempotency: which appended readings are retries of readings already stored.
//!
//! Invariants:
//! - A key is looked up under the device it arrived for. Every key the ingest edge makes
//!   starts with `{device_id}/` (`/key/` client header, `/msg/` msg_id, `/seq/` device
//!   counter; device ids hold no `/`), or is a fresh UUID. So no input sent for device A can
//!   name, and so hide, a reading of device B — neither here nor in a downstream system that
//!   de-duplicates on the key.
//! - A key is a duplicate only if the content is the same too: the [`fingerprint`] of what
//!   the device sent (schema, msg_id, seq, ts and its fields; not the gateway's enrichment).
//!   The same key with other content is a *key conflict* — typically a device whose counter
//!   restarted after a reboot. The reading is stored, never dropped, under the key suffixed
//!   with its fingerprint ([`conflict_key`]) so downstream de-duplication keeps it too, and
//!   the key's row then names the newer reading (a retry of it is a duplicate).
//!
//! On-disk: `idem_v4` (format 7, `store/idem_rows/`) holds a commit's keys in one row; it
//! replaced `idem_v3` (the same rows, packed looser: converted on open) and `idem_v2` (a row
//! per key, converted on open), which replaced `idem_by_ts` (which
//! held unscoped keys and no fingerprint). Opening a format-1 file drops `idem_by_ts` (see
//! docs/decisions.md): a retry, after the upgrade, of a reading accepted before it is stored
//! again — a duplicate, which at-least-once allows, never a loss.

use super::record::Record;
use redb::TableDefinition;
use sha2::{Digest, Sha256};

/// Format 2 to 5: (receive_ts_ms, key) -> (seq, correlation_id, content fingerprint), a row
/// per key. Format 6 packs a commit's keys into one row (`store/idem_rows/`); opening an
/// older file converts these rows and drops the table.
pub const IDEM_V2: TableDefinition<(u64, &str), (u64, &str, u64)> =
    TableDefinition::new(IDEM_V2_NAME);
pub const IDEM_V2_NAME: &str = "idem_v2";

/// The table of format 1, dropped on open.
pub const IDEM_V1_NAME: &str = "idem_by_ts";

/// The record's fingerprint: cached by the ingest edge, else computed.
pub fn fingerprint_of(r: &Record) -> u64 {
    r.fingerprint.0.unwrap_or_else(|| fingerprint(r))
}

/// What the device sent, hashed: stable across processes and releases (it is stored). The
/// CBOR is written straight into the hasher (no buffer).
pub fn fingerprint(r: &Record) -> u64 {
    let content = (r.schema, &r.msg_id, r.device_seq, &r.device_ts, &r.data);
    let mut h = HashWriter(Sha256::new());
    ciborium::into_writer(&content, &mut h).expect("hashing cannot fail");
    let digest = h.0.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes of a 32-byte digest"))
}

/// Feeds written bytes to the hash.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The downstream key of a reading whose key was already taken by other content.
pub fn conflict_key(key: &str, fingerprint: u64) -> String {
    format!("{key}~{fingerprint:016x}")
}

/// A key's row within the window, as the store found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub seq: u64,
    pub correlation_id: String,
    pub fingerprint: u64,
}

/// How one appended reading relates to what the window holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Key unknown (or forgotten): store it under its key.
    New,
    /// Same key, same content: a retry. Store nothing; answer with the stored reading.
    Duplicate { seq: u64, correlation_id: String },
    /// Same key, other content: store it under [`conflict_key`].
    Conflict,
}

pub fn classify(seen: Option<&Seen>, fingerprint: u64) -> Verdict {
    match seen {
        None => Verdict::New,
        Some(s) if s.fingerprint == fingerprint => Verdict::Duplicate {
            seq: s.seq,
            correlation_id: s.correlation_id.clone(),
        },
        Some(_) => Verdict::Conflict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::Source;

    fn rec(device: &str, seq: u64, temp: f64, ts: u64) -> Record {
        let mut data = serde_json::Map::new();
        data.insert("temp".into(), serde_json::json!(temp));
        Record {
            device_id: device.into(),
            idempotency_key: format!("{device}/seq/{seq}"),
            correlation_id: "c".into(),
            gateway_id: "gw".into(),
            receive_ts_ms: 1,
            source: Source::Http,
            schema: 1,
            msg_id: None,
            device_seq: Some(seq),
            device_ts: Some(serde_json::json!(ts)),
            data,
            clock_synced: true,
            fingerprint: Default::default(),
            encoded: Default::default(),
            route: Default::default(),
            trace: None,
            send_trace: None,
        }
    }

    #[test]
    fn fingerprint_ignores_enrichment_and_sees_content() {
        let a = rec("d", 1, 20.5, 100);
        let mut enriched = a.clone();
        enriched.correlation_id = "other".into();
        enriched.receive_ts_ms = 99;
        enriched.gateway_id = "gw2".into();
        enriched.idempotency_key = "x".into();
        assert_eq!(fingerprint(&a), fingerprint(&enriched));
        assert_ne!(fingerprint(&a), fingerprint(&rec("d", 1, 20.6, 100)));
        assert_ne!(fingerprint(&a), fingerprint(&rec("d", 1, 20.5, 101)));
        assert_ne!(fingerprint(&a), fingerprint(&rec("d", 2, 20.5, 100)));
    }

    #[test]
    fn fingerprint_is_stable_across_releases() {
        // Stored on disk: a change here turns every retry in the window into a conflict.
        assert_eq!(fingerprint(&rec("d", 1, 20.5, 100)), 0xeba1_574e_19d2_a25c);
    }

    #[test]
    fn verdicts() {
        let seen = Seen {
            seq: 7,
            correlation_id: "c7".into(),
            fingerprint: 42,
        };
        assert_eq!(classify(None, 1), Verdict::New);
        assert_eq!(
            classify(Some(&seen), 42),
            Verdict::Duplicate {
                seq: 7,
                correlation_id: "c7".into()
            }
        );
        assert_eq!(classify(Some(&seen), 43), Verdict::Conflict);
        assert_eq!(conflict_key("d/seq/1", 0xab), "d/seq/1~00000000000000ab");
    }
}
