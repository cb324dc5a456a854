//! The record the WAL stores and the types that cross its mailbox.
//!
//! Records are encoded with CBOR (ciborium). The encoding is the WAL's on-disk format: add
//! fields only as `Option` / `#[serde(default)]` so older files keep decoding.

use serde::{Deserialize, Serialize};

/// Where a record came in.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Http,
    Mqtt,
}

/// One accepted reading, normalised and enriched by the ingest router.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub device_id: String,
    /// Stable across redeliveries; downstream de-duplicates on it.
    pub idempotency_key: String,
    pub correlation_id: String,
    pub gateway_id: String,
    /// Gateway wall-clock time of receipt, milliseconds since the Unix epoch.
    pub receive_ts_ms: u64,
    pub source: Source,
    pub schema: u32,
    #[serde(default)]
    pub msg_id: Option<String>,
    /// The device's own counter, when it sent one.
    #[serde(default)]
    pub device_seq: Option<u64>,
    /// The device's own timestamp, kept as sent.
    #[serde(default)]
    pub device_ts: Option<serde_json::Value>,
    /// Every other field of the reading, kept as sent.
    pub data: serde_json::Map<String, serde_json::Value>,
    /// False when the gateway's wall clock read earlier than this release could run
    /// ([`CLOCK_FLOOR_MS`]) at receipt: `receive_ts_ms` is then not a real date (a board that
    /// booted without a battery-backed clock, before NTP). Stored only when false.
    #[serde(default = "synced", skip_serializing_if = "is_synced")]
    pub clock_synced: bool,
    /// Cache of the content fingerprint (`wal/idem.rs`), filled by the ingest edge on its own
    /// task so the WAL's serial commit path does not compute it. Never stored.
    #[serde(skip)]
    pub fingerprint: FingerprintCache,
}

/// No wall clock running this release can read earlier than 2026-01-01T00:00:00Z; one that
/// does has not been set yet. (Raise it with each release.)
pub const CLOCK_FLOOR_MS: u64 = 1_767_225_600_000;

fn synced() -> bool {
    true
}

fn is_synced(v: &bool) -> bool {
    *v
}

/// A cached `idem::fingerprint` of the record it sits in (`None`: compute it). It must be
/// filled only once the content fields are final (`ingest::parse::to_records` does it last).
/// Equal to any other: it caches the fields, it is not one.
#[derive(Debug, Clone, Copy, Default)]
pub struct FingerprintCache(pub Option<u64>);

impl PartialEq for FingerprintCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        ciborium::into_writer(self, &mut out).expect("encoding to a Vec cannot fail");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        ciborium::from_reader(bytes).map_err(|e| e.to_string())
    }
}

/// A record handed to a sink: its WAL position, how many times it has been leased, the record.
#[derive(Debug, Clone, PartialEq)]
pub struct Leased {
    pub seq: u64,
    /// Includes this lease: the first delivery attempt has `attempts == 1`.
    pub attempts: u32,
    pub record: Record,
}

/// What happened to one appended record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    Stored {
        seq: u64,
        correlation_id: String,
        /// The key was taken, within the window, by a reading with other content (a device
        /// whose counter restarted): stored under a derived key (see `idem.rs`).
        key_conflict: bool,
    },
    /// The idempotency key was seen within the window with the same content; nothing was
    /// stored.
    Duplicate { seq: u64, correlation_id: String },
}

/// How a sink's attempt at a record ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Acked,
    /// Transient failure: back to Enqueued, unless attempts are used up (then Dead).
    Retry(String),
    /// Permanent failure: Dead with this reason.
    Dead(String),
    /// Never sent (held back behind a failed batch): back to Enqueued and the lease's attempt
    /// is given back.
    Release,
}

/// A dead-lettered record's entry for one sink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeadEntry {
    pub reason: String,
    pub attempts: u32,
    pub dead_at_ms: u64,
}

/// Counts by state and sink, as the WAL holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WalStats {
    /// Records stored and not yet deleted (any sink still pending or dead).
    pub records: u64,
    /// Bytes of encoded records counted against `wal.max_bytes`.
    pub live_bytes: u64,
    pub file_bytes: u64,
    pub sinks: Vec<SinkStats>,
    pub idempotency_keys: u64,
    /// Refused messages kept for inspection.
    pub rejected: u64,
    /// Devices holding records (see `quota.rs`).
    pub devices: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SinkStats {
    pub sink: String,
    /// Enqueued + InFlight.
    pub pending: u64,
    pub in_flight: u64,
    pub dead: u64,
    pub acked_total: u64,
}
