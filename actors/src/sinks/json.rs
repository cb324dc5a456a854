//! The JSON every sink receives for a record, serialised straight from the leased record
//! (no intermediate `serde_json::Value` per record). `idempotency_key` is stable across
//! redeliveries: downstream de-duplicates on it.

use crate::traces::TraceParentText;
use crate::wal::{Leased, Source};
use serde::{Serialize, Serializer};

/// One record as sent: borrowed from the leased record.
#[derive(Serialize)]
pub struct RecordJson<'a> {
    idempotency_key: &'a str,
    device_id: &'a str,
    gateway_id: &'a str,
    correlation_id: &'a str,
    receive_ts: Rfc3339Millis,
    source: &'a Source,
    schema: u32,
    msg_id: &'a Option<String>,
    seq: Option<u64>,
    ts: &'a Option<serde_json::Value>,
    data: &'a serde_json::Map<String, serde_json::Value>,
    wal_seq: u64,
    /// Left out by sinks whose re-sends must be byte-identical (Kafka, S3: [`write_stable`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt: Option<u32>,
    /// Only when false, so every other record reads as it always did.
    #[serde(skip_serializing_if = "is_true")]
    clock_synced: bool,
    /// The context stored with the record (the ingest span, or the device's own): the same
    /// on every attempt, so re-sends stay byte-identical.
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<TraceParentText>,
}

fn is_true(v: &bool) -> bool {
    *v
}

/// Milliseconds since the epoch, written as RFC 3339 with milliseconds.
struct Rfc3339Millis(u64);

impl Serialize for Rfc3339Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.0);
        s.collect_str(&humantime::format_rfc3339_millis(t))
    }
}

impl<'a> RecordJson<'a> {
    pub fn of(l: &'a Leased) -> Self {
        let r = &l.record;
        RecordJson {
            idempotency_key: &r.idempotency_key,
            device_id: &r.device_id,
            gateway_id: &r.gateway_id,
            correlation_id: &r.correlation_id,
            receive_ts: Rfc3339Millis(r.receive_ts_ms),
            source: &r.source,
            schema: r.schema,
            msg_id: &r.msg_id,
            seq: r.device_seq,
            ts: &r.device_ts,
            data: &r.data,
            wal_seq: l.seq,
            attempt: Some(l.attempts),
            clock_synced: r.clock_synced,
            traceparent: r.trace.map(TraceParentText),
        }
    }
}

/// A batch's records as a JSON array, serialised one by one.
pub struct RecordsJson<'a>(pub &'a [Leased]);

impl Serialize for RecordsJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(RecordJson::of))
    }
}

/// Appends one record's JSON to `out`.
pub fn write_record(out: &mut Vec<u8>, l: &Leased) {
    serde_json::to_writer(out, &RecordJson::of(l)).expect("records always serialise to JSON");
}

/// Appends one record's JSON without `attempt`: the same bytes on every delivery, so a
/// redelivered message or re-put object is byte-identical to the first (Kafka, S3).
pub fn write_stable(out: &mut Vec<u8>, l: &Leased) {
    let mut r = RecordJson::of(l);
    r.attempt = None;
    serde_json::to_writer(out, &r).expect("records always serialise to JSON");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::Record;

    #[test]
    fn a_record_reads_as_the_contract_says() {
        let mut data = serde_json::Map::new();
        data.insert("temp".into(), 21.5.into());
        let l = Leased {
            seq: 7,
            attempts: 2,
            record: Record {
                device_id: "d-1".into(),
                idempotency_key: "d-1/seq/3".into(),
                correlation_id: "c".into(),
                gateway_id: "gw".into(),
                receive_ts_ms: 1_767_225_600_123,
                source: Source::Http,
                schema: 1,
                msg_id: None,
                device_seq: Some(3),
                device_ts: Some("2026-01-01T00:00:00Z".into()),
                data,
                clock_synced: true,
                fingerprint: Default::default(),
                encoded: Default::default(),
                route: Default::default(),
                trace: None,
                send_trace: None,
            },
            live: false,
        };
        let mut out = Vec::new();
        write_record(&mut out, &l);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "idempotency_key": "d-1/seq/3", "device_id": "d-1", "gateway_id": "gw",
                "correlation_id": "c", "receive_ts": "2026-01-01T00:00:00.123Z",
                "source": "http", "schema": 1, "msg_id": null, "seq": 3,
                "ts": "2026-01-01T00:00:00Z", "data": {"temp": 21.5}, "wal_seq": 7, "attempt": 2,
            })
        );
        let mut unsynced = l.clone();
        unsynced.record.clock_synced = false;
        let mut out = Vec::new();
        write_record(&mut out, &unsynced);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["clock_synced"], false);
    }
}
