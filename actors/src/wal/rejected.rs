//! Rejected input kept for inspection: MQTT messages that failed validation are stored here,
//! raw payload and reason, before the broker gets its PUBACK, so nothing a device sent
//! disappears without a trace.
//!
//! Bounded twice: by count (`wal.max_rejected`, oldest dropped first) and by age
//! (`wal.dead_retention_secs`). Payloads are kept up to [`MAX_KEPT_PAYLOAD`] bytes; the
//! original length is recorded.

use super::record::Source;
use serde::{Deserialize, Serialize};

/// id -> CBOR `Rejected`; ids increase, so the front is the oldest.
pub(crate) const REJECTED: redb::TableDefinition<u64, &[u8]> =
    redb::TableDefinition::new("rejected");

/// Bytes of a refused payload kept; enough to see what a device sent.
pub const MAX_KEPT_PAYLOAD: usize = 64 * 1024;

/// One refused message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rejected {
    pub received_ms: u64,
    pub source: Source,
    /// Where it came from: the MQTT topic.
    pub origin: String,
    /// Machine-readable reason (`invalid_json`, `payload_too_large`, `invalid_device_id`, ...).
    pub code: String,
    /// The field at fault, when there is one.
    pub field: Option<String>,
    pub message: String,
    /// The payload as received, cut at [`MAX_KEPT_PAYLOAD`] bytes.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub payload_len: u64,
    /// WAL time (`store/mod.rs`, "Time") when it was kept: retention follows this, not the wall
    /// clock. 0 in entries from before it existed (then `received_ms` is used).
    #[serde(default)]
    pub kept_ms: u64,
}

impl Rejected {
    /// Builds an entry, keeping at most [`MAX_KEPT_PAYLOAD`] bytes of `payload`.
    pub fn new(
        received_ms: u64,
        source: Source,
        origin: String,
        code: &str,
        field: Option<String>,
        message: String,
        payload: &[u8],
    ) -> Rejected {
        Rejected {
            received_ms,
            source,
            origin,
            code: code.to_string(),
            field,
            message,
            payload: payload[..payload.len().min(MAX_KEPT_PAYLOAD)].to_vec(),
            payload_len: payload.len() as u64,
            kept_ms: 0,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 128);
        ciborium::into_writer(self, &mut out).expect("encoding to a Vec cannot fail");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        ciborium::from_reader(bytes).map_err(|e| e.to_string())
    }

    /// JSON for the admin API: the payload as text when it is UTF-8, else hex.
    pub fn to_json(&self, id: u64) -> serde_json::Value {
        let mut v = serde_json::json!({
            "id": id,
            "received_ts": humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.received_ms)
            ).to_string(),
            "source": self.source,
            "origin": self.origin,
            "code": self.code,
            "field": self.field,
            "message": self.message,
            "payload_len": self.payload_len,
            "payload_truncated": (self.payload.len() as u64) < self.payload_len,
        });
        match std::str::from_utf8(&self.payload) {
            Ok(t) => v["payload_text"] = t.into(),
            Err(_) => v["payload_hex"] = hex::encode(&self.payload).into(),
        }
        v
    }
}
