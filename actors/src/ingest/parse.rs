//! Decoding and validating ingest payloads: pure functions, no I/O.
//!
//! A body is one reading (a map) or an array of readings. Well-known optional fields:
//! `schema` (version, default 1), `msg_id`, `seq` (the device's counter), `ts` (device
//! time). Every other field is the device's data, kept as sent.

use crate::wal::{Record, Source};
use serde_json::{Map, Value};

/// Schema versions this gateway understands.
pub const SCHEMAS: &[u64] = &[1];

/// What a refusal means for the sender, whatever the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The message is at fault: retrying it cannot help (HTTP 4xx; MQTT: kept in the
    /// rejected table with the reason and acknowledged).
    Invalid,
    /// The gateway cannot take it now (WAL full, disk full, WAL restarting): try again later
    /// (HTTP 503 + Retry-After; MQTT: the PUBACK is withheld and the message retried).
    Unavailable,
    /// This device holds its share of the WAL; others are unaffected (HTTP 429 +
    /// Retry-After; MQTT: held, then kept in the rejected table past the per-device limit).
    OverQuota,
}

impl RefusalKind {
    /// Worth sending again later (the client should retry, with the same key).
    pub fn is_retryable(self) -> bool {
        !matches!(self, RefusalKind::Invalid)
    }
}

/// A refusal, with what the client needs to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RefusalKind,
    /// HTTP status for HTTP clients; MQTT uses `code` and `message` as the dead-letter reason.
    pub status: u16,
    pub code: &'static str,
    /// The field at fault, as a path (`readings[2].schema`), when there is one.
    pub field: Option<String>,
    pub message: String,
}

impl Rejection {
    /// The message is at fault: a 4xx `status` naming the field.
    pub fn new(
        status: u16,
        code: &'static str,
        field: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        debug_assert!(
            (400..500).contains(&status) && status != 429,
            "a client error; use unavailable/over_quota"
        );
        Rejection {
            kind: RefusalKind::Invalid,
            status,
            code,
            field,
            message: message.into(),
        }
    }

    /// The gateway cannot take it now (503).
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            kind: RefusalKind::Unavailable,
            status: 503,
            code,
            field: None,
            message: message.into(),
        }
    }

    /// This device holds its share of the WAL (429).
    pub fn over_quota(message: impl Into<String>) -> Self {
        Rejection {
            kind: RefusalKind::OverQuota,
            status: 429,
            code: "device_quota",
            field: Some("device_id".into()),
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("error".into(), Value::String(self.code.into()));
        m.insert("message".into(), Value::String(self.message.clone()));
        if let Some(f) = &self.field {
            m.insert("field".into(), Value::String(f.clone()));
        }
        Value::Object(m)
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "invalid {field}: {}", self.message),
            None => write!(f, "invalid: {}", self.message),
        }
    }
}

/// Payload encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Cbor,
    /// `proto/telemetry.proto` (`protobuf.rs`); never guessed.
    Protobuf,
}

impl Encoding {
    /// From a Content-Type header; parameters such as `; charset=utf-8` are ignored.
    pub fn from_content_type(ct: Option<&str>) -> Result<Encoding, Rejection> {
        let Some(ct) = ct else {
            return Err(Rejection::new(
                415,
                "unsupported_media_type",
                Some("content-type".into()),
                "Content-Type is required: application/json, application/cbor or \
                 application/x-protobuf",
            ));
        };
        let base = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match base.as_str() {
            "application/json" => Ok(Encoding::Json),
            "application/cbor" => Ok(Encoding::Cbor),
            "application/x-protobuf"
            | "application/protobuf"
            | "application/vnd.google.protobuf" => Ok(Encoding::Protobuf),
            _ => Err(Rejection::new(
                415,
                "unsupported_media_type",
                Some("content-type".into()),
                format!(
                    "{base:?} is not supported: use application/json, application/cbor or \
                     application/x-protobuf"
                ),
            )),
        }
    }

    /// Guesses from the first byte (MQTT payloads carry no content type): JSON starts with
    /// `{` or `[` after optional whitespace; anything else is tried as CBOR. Protobuf is never
    /// guessed (its bytes can look like CBOR's): a subscription says `encoding = "protobuf"`.
    pub fn sniff(body: &[u8]) -> Encoding {
        match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') | Some(b'[') => Encoding::Json,
            _ => Encoding::Cbor,
        }
    }
}

/// Device ids: 1-128 characters of `[A-Za-z0-9._:-]`, so they are safe in topics, paths and logs.
pub fn validate_device_id(id: &str) -> Result<(), Rejection> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(Rejection::new(
            400,
            "invalid_device_id",
            Some("device_id".into()),
            "device id must be 1-128 characters of A-Z a-z 0-9 . _ : -",
        ))
    }
}

/// Deepest nesting of maps and arrays inside one reading (the reading itself is level 1).
/// Far below what the WAL's record decoder accepts (256 levels, with two more for the
/// record around the reading), so nothing accepted can be undecodable later (issue 8).
pub const MAX_NESTING: usize = 32;

/// Nesting depth of a value, without recursion (a hostile body must not blow the stack).
fn depth(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                max = max.max(d);
                stack.extend(a.iter().map(|x| (x, d + 1)));
            }
            Value::Object(m) => {
                max = max.max(d);
                stack.extend(m.values().map(|x| (x, d + 1)));
            }
            _ => max = max.max(d - 1),
        }
    }
    max
}

fn check_nesting(m: &Map<String, Value>, field: impl FnOnce() -> String) -> Result<(), Rejection> {
    let d = 1 + m.values().map(depth).max().unwrap_or(0);
    if d > MAX_NESTING {
        return Err(Rejection::new(
            400,
            "too_deep",
            Some(field()),
            format!(
                "a reading may nest maps and arrays {MAX_NESTING} levels deep; this one nests {d}"
            ),
        ));
    }
    Ok(())
}

/// A batch holds at least one reading and at most `max_batch`.
fn check_batch_len(n: usize, max_batch: usize) -> Result<(), Rejection> {
    if n == 0 {
        return Err(Rejection::new(
            400,
            "empty_batch",
            Some("body".into()),
            "batch holds no readings",
        ));
    }
    if n > max_batch {
        return Err(Rejection::new(
            413,
            "batch_too_large",
            Some("body".into()),
            format!("batch of {n} readings exceeds the limit of {max_batch}"),
        ));
    }
    Ok(())
}

/// Decodes a body into its readings (one map, or an array of maps).
pub fn decode(
    body: &[u8],
    enc: Encoding,
    max_batch: usize,
) -> Result<Vec<Map<String, Value>>, Rejection> {
    if body.is_empty() {
        return Err(Rejection::new(
            400,
            "malformed_body",
            Some("body".into()),
            "body is empty",
        ));
    }
    let v: Value = match enc {
        Encoding::Protobuf => {
            let readings = super::protobuf::decode(body)?;
            check_batch_len(readings.len(), max_batch)?;
            for (i, m) in readings.iter().enumerate() {
                check_nesting(m, || format!("readings[{i}]"))?;
            }
            return Ok(readings);
        }
        Encoding::Json => serde_json::from_slice(body).map_err(|e| {
            Rejection::new(
                400,
                "malformed_body",
                Some("body".into()),
                format!("invalid JSON: {e}"),
            )
        })?,
        Encoding::Cbor => ciborium::from_reader(body).map_err(|e| {
            let hint = match &e {
                ciborium::de::Error::Semantic(..) => {
                    " (map keys must be text; byte strings are not supported)"
                }
                _ => "",
            };
            Rejection::new(
                400,
                "malformed_body",
                Some("body".into()),
                format!("invalid CBOR: {e}{hint}"),
            )
        })?,
    };
    match v {
        Value::Object(m) => {
            check_nesting(&m, || "body".into())?;
            Ok(vec![m])
        }
        Value::Array(items) => {
            check_batch_len(items.len(), max_batch)?;
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Object(m) => {
                        check_nesting(&m, || format!("readings[{i}]"))?;
                        Ok(m)
                    }
                    other => Err(Rejection::new(
                        400,
                        "not_a_map",
                        Some(format!("readings[{i}]")),
                        format!("a reading must be a map, got {}", kind(&other)),
                    )),
                })
                .collect()
        }
        other => Err(Rejection::new(
            400,
            "not_a_map",
            Some("body".into()),
            format!(
                "body must be a reading (map) or an array of readings, got {}",
                kind(&other)
            ),
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a map",
    }
}

/// What the router knows about the request besides its readings.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub device_id: String,
    pub source: Source,
    pub gateway_id: String,
    pub receive_ts_ms: u64,
    /// The client's `Idempotency-Key` header (HTTP) or its MQTT equivalent.
    pub idempotency_key: Option<String>,
    /// Stored with each record (`traces`).
    pub trace: Option<crate::traces::TraceParent>,
}

/// Validates readings and turns them into records (enrichment included).
/// `new_id` yields fresh correlation ids (injected so tests are deterministic).
pub fn to_records(
    env: &Envelope,
    readings: Vec<Map<String, Value>>,
    mut new_id: impl FnMut() -> String,
) -> Result<Vec<Record>, Rejection> {
    let batch = readings.len() > 1;
    let at = |i: usize, f: &str| {
        if batch {
            format!("readings[{i}].{f}")
        } else {
            f.to_string()
        }
    };
    let mut out = Vec::with_capacity(readings.len());
    for (i, mut data) in readings.into_iter().enumerate() {
        let schema = match data.remove("schema") {
            None => 1,
            Some(Value::Number(n)) if n.as_u64().is_some_and(|v| SCHEMAS.contains(&v)) => {
                n.as_u64().unwrap_or(1)
            }
            Some(v) => {
                return Err(Rejection::new(
                    400,
                    "unknown_schema",
                    Some(at(i, "schema")),
                    format!("schema version {v} is not supported (known: {SCHEMAS:?})"),
                ))
            }
        };
        let msg_id = match data.remove("msg_id") {
            None => None,
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Some(s),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => {
                return Err(Rejection::new(
                    400,
                    "invalid_field",
                    Some(at(i, "msg_id")),
                    "msg_id must be a non-empty string of at most 256 characters, or a number",
                ))
            }
        };
        let device_seq = match data.remove("seq") {
            None => None,
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
            Some(_) => {
                return Err(Rejection::new(
                    400,
                    "invalid_field",
                    Some(at(i, "seq")),
                    "seq must be a non-negative integer",
                ))
            }
        };
        let device_ts = match data.remove("ts") {
            None => None,
            Some(v @ (Value::Number(_) | Value::String(_))) => Some(v),
            Some(_) => {
                return Err(Rejection::new(
                    400,
                    "invalid_field",
                    Some(at(i, "ts")),
                    "ts must be a number (epoch) or a string (RFC 3339)",
                ))
            }
        };
        let correlation_id = new_id();
        // Key precedence: client header, then msg_id, then (device, seq); else the
        // correlation id, which is stored and so stays stable across redeliveries. Every
        // key a client chooses is scoped to the device it was sent for (device ids hold no
        // `/`), so no client can name another device's reading (see `wal/idem.rs`).
        let idempotency_key = match (&env.idempotency_key, &msg_id, device_seq) {
            (Some(h), _, _) if batch => format!("{}/key/{h}#{i}", env.device_id),
            (Some(h), _, _) => format!("{}/key/{h}", env.device_id),
            (None, Some(m), _) => format!("{}/msg/{m}", env.device_id),
            (None, None, Some(s)) => format!("{}/seq/{s}", env.device_id),
            (None, None, None) => correlation_id.clone(),
        };
        let mut record = Record {
            device_id: env.device_id.clone(),
            idempotency_key,
            correlation_id,
            gateway_id: env.gateway_id.clone(),
            receive_ts_ms: env.receive_ts_ms,
            source: env.source,
            schema: schema as u32,
            msg_id,
            device_seq,
            device_ts,
            data,
            clock_synced: env.receive_ts_ms >= crate::wal::CLOCK_FLOOR_MS,
            fingerprint: Default::default(),
            encoded: Default::default(),
            route: Default::default(),
            trace: env.trace,
            send_trace: None,
        };
        // Last, once the content is final; on this (the caller's) task, not the WAL's.
        record.fingerprint.0 = Some(crate::wal::idem::fingerprint(&record));
        record.encoded.0 = Some(record.encode());
        out.push(record);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(key: Option<&str>) -> Envelope {
        Envelope {
            device_id: "dev-1".into(),
            source: Source::Http,
            gateway_id: "gw".into(),
            receive_ts_ms: 42,
            idempotency_key: key.map(str::to_string),
            trace: None,
        }
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("c{n}")
        }
    }

    #[test]
    fn keys_follow_header_then_msg_id_then_seq_then_correlation() {
        let body = br#"[{"msg_id":"m1","t":1},{"seq":7},{"x":1}]"#;
        let r = to_records(&env(None), decode(body, Encoding::Json, 10).unwrap(), ids()).unwrap();
        let keys: Vec<_> = r.iter().map(|r| r.idempotency_key.as_str()).collect();
        assert_eq!(keys, ["dev-1/msg/m1", "dev-1/seq/7", "c3"]);
        assert_eq!(r[1].device_seq, Some(7));
        assert!(
            !r[1].data.contains_key("seq"),
            "well-known fields are lifted out of data"
        );
        let r = to_records(
            &env(Some("h")),
            decode(body, Encoding::Json, 10).unwrap(),
            ids(),
        )
        .unwrap();
        assert_eq!(r[0].idempotency_key, "dev-1/key/h#0");
        let r = to_records(
            &env(Some("h")),
            decode(br#"{"a":1}"#, Encoding::Json, 10).unwrap(),
            ids(),
        )
        .unwrap();
        assert_eq!(r[0].idempotency_key, "dev-1/key/h");
    }

    #[test]
    fn readings_taken_before_the_clock_floor_are_marked() {
        let body = br#"{"seq":1}"#;
        let mut e = env(None);
        e.receive_ts_ms = 1_577_836_800_000; // 2020
        let r = to_records(&e, decode(body, Encoding::Json, 10).unwrap(), ids()).unwrap();
        assert!(!r[0].clock_synced);
        e.receive_ts_ms = crate::wal::CLOCK_FLOOR_MS;
        let r = to_records(&e, decode(body, Encoding::Json, 10).unwrap(), ids()).unwrap();
        assert!(r[0].clock_synced);
    }

    #[test]
    fn errors_name_the_field() {
        let e = to_records(
            &env(None),
            decode(br#"[{"a":1},{"schema":9}]"#, Encoding::Json, 10).unwrap(),
            ids(),
        )
        .unwrap_err();
        assert_eq!(
            (e.status, e.field.as_deref()),
            (400, Some("readings[1].schema"))
        );
        let e = decode(br#"[1]"#, Encoding::Json, 10).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("readings[0]"));
        let e = decode(br#"{"a":"#, Encoding::Json, 10).unwrap_err();
        assert_eq!(e.code, "malformed_body");
        let e = decode(br#"[{},{},{}]"#, Encoding::Json, 2).unwrap_err();
        assert_eq!(e.status, 413);
        let e = to_records(
            &env(None),
            decode(br#"{"seq":-1}"#, Encoding::Json, 10).unwrap(),
            ids(),
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("seq"));
    }

    #[test]
    fn cbor_round_trips_and_garbage_is_refused() {
        let mut buf = Vec::new();
        ciborium::into_writer(&serde_json::json!({"temp": 21.5, "seq": 3}), &mut buf).unwrap();
        assert_eq!(Encoding::sniff(&buf), Encoding::Cbor);
        let r = to_records(&env(None), decode(&buf, Encoding::Cbor, 10).unwrap(), ids()).unwrap();
        assert_eq!(r[0].data["temp"], serde_json::json!(21.5));
        assert_eq!(
            decode(&[0xff, 0x00], Encoding::Cbor, 10).unwrap_err().code,
            "malformed_body"
        );
    }

    #[test]
    fn device_ids_and_content_types() {
        assert!(validate_device_id("sensor-01.a_b:c").is_ok());
        assert!(validate_device_id("").is_err());
        assert!(validate_device_id("a/b").is_err());
        assert!(validate_device_id(&"x".repeat(129)).is_err());
        assert_eq!(
            Encoding::from_content_type(Some("application/json; charset=utf-8")),
            Ok(Encoding::Json)
        );
        assert_eq!(
            Encoding::from_content_type(Some("text/plain"))
                .unwrap_err()
                .status,
            415
        );
        assert_eq!(Encoding::from_content_type(None).unwrap_err().status, 415);
    }
}
