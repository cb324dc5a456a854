//! Protobuf payloads (issue 15): `proto/telemetry.proto`, compiled with prost (`build.rs`).
//! A payload is one `Reading` or a `Batch`; each reading becomes the same map a JSON or CBOR
//! reading would (`ts`, `seq`, `msg_id`, `schema`, then the values by name), so validation,
//! enrichment and idempotency are the same from there on.
//!
//! Refused (400 `malformed_body`, naming the field): bytes that are not the schema, a value
//! named like a well-known field, a number that is not finite, a value with nothing set.
//! prost's recursion limit (100) stops hostile nesting before it is converted; the usual
//! nesting limit (`MAX_NESTING`) applies after.

use super::parse::Rejection;
use prost::Message;
use serde_json::{Map, Value};

/// The generated types.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/edge_gateway.telemetry.v1.rs"));
}

/// The names a reading's well-known fields have in the record.
const RESERVED: [&str; 4] = ["ts", "seq", "msg_id", "schema"];

fn bad(field: String, message: String) -> Rejection {
    Rejection::new(400, "malformed_body", Some(field), message)
}

/// A Batch starts with field 1 as a length-delimited Reading; a Reading's field 1 is a
/// varint, so its top level never holds that tag.
const BATCH_TAG: u8 = 0x0a;

/// Decodes a body into its readings.
pub fn decode(body: &[u8]) -> Result<Vec<Map<String, Value>>, Rejection> {
    let readings = if body.first() == Some(&BATCH_TAG) {
        pb::Batch::decode(body)
            .map_err(|e| bad("body".into(), format!("invalid Protobuf Batch: {e}")))?
            .readings
    } else {
        vec![pb::Reading::decode(body)
            .map_err(|e| bad("body".into(), format!("invalid Protobuf Reading: {e}")))?]
    };
    readings
        .into_iter()
        .enumerate()
        .map(|(i, r)| reading(r, i))
        .collect()
}

fn reading(r: pb::Reading, i: usize) -> Result<Map<String, Value>, Rejection> {
    let mut m = Map::new();
    if r.device_time_ms != 0 {
        m.insert("ts".into(), r.device_time_ms.into());
    }
    if let Some(seq) = r.seq {
        m.insert("seq".into(), seq.into());
    }
    if let Some(id) = r.msg_id {
        m.insert("msg_id".into(), id.into());
    }
    if r.schema != 0 {
        m.insert("schema".into(), r.schema.into());
    }
    // In name order, as a JSON map would have them.
    let mut values: Vec<_> = r.values.into_iter().collect();
    values.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in values {
        let field = format!("readings[{i}].values.{k}");
        if RESERVED.contains(&k.as_str()) {
            return Err(bad(
                field,
                format!("{k:?} is a field of the Reading itself: set it there"),
            ));
        }
        m.insert(k, value(v, &field)?);
    }
    Ok(m)
}

fn value(v: pb::Value, field: &str) -> Result<Value, Rejection> {
    use pb::value::Kind;
    Ok(match v.kind {
        Some(Kind::Number(n)) => serde_json::Number::from_f64(n)
            .map(Value::Number)
            .ok_or_else(|| bad(field.into(), format!("{n} is not a finite number")))?,
        Some(Kind::Integer(n)) => n.into(),
        Some(Kind::Text(t)) => t.into(),
        Some(Kind::Flag(b)) => b.into(),
        Some(Kind::Map(inner)) => {
            let mut fields: Vec<_> = inner.fields.into_iter().collect();
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = Map::new();
            for (k, v) in fields {
                let f = format!("{field}.{k}");
                out.insert(k, value(v, &f)?);
            }
            Value::Object(out)
        }
        None => return Err(bad(field.into(), "a value with nothing set".into())),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    pub(crate) fn num(n: f64) -> pb::Value {
        pb::Value {
            kind: Some(pb::value::Kind::Number(n)),
        }
    }

    pub(crate) fn sample(seq: u64) -> pb::Reading {
        pb::Reading {
            device_time_ms: 1_795_400_000_000,
            seq: Some(seq),
            msg_id: None,
            schema: 0,
            values: HashMap::from([
                ("temp".to_string(), num(21.5)),
                (
                    "ok".to_string(),
                    pb::Value {
                        kind: Some(pb::value::Kind::Flag(true)),
                    },
                ),
            ]),
        }
    }

    #[test]
    fn a_reading_and_a_batch_become_the_maps_json_would() {
        let one = decode(&sample(7).encode_to_vec()).unwrap();
        assert_eq!(
            Value::Object(one[0].clone()),
            serde_json::json!({"ts": 1_795_400_000_000u64, "seq": 7, "temp": 21.5, "ok": true})
        );
        let batch = pb::Batch {
            readings: vec![sample(1), sample(2)],
        };
        let two = decode(&batch.encode_to_vec()).unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[1]["seq"], 2);
    }

    #[test]
    fn what_is_refused_names_the_field() {
        let mut r = sample(1);
        r.values.insert("seq".into(), num(1.0));
        let e = decode(&r.encode_to_vec()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("readings[0].values.seq"));
        let mut r = sample(1);
        r.values.insert("x".into(), num(f64::NAN));
        assert!(decode(&r.encode_to_vec())
            .unwrap_err()
            .message
            .contains("finite"));
        let mut r = sample(1);
        r.values.insert("empty".into(), pb::Value { kind: None });
        assert!(decode(&r.encode_to_vec()).is_err());
        // Truncated, and garbage.
        let b = sample(1).encode_to_vec();
        assert!(decode(&b[..b.len() - 3]).is_err());
        assert!(decode(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn schema_evolution_added_and_removed_fields() {
        // Newer firmware: a field this gateway does not know (field 9, a varint, and field
        // 10, a string) is skipped, never refused; the reading is what it knows.
        let mut newer = sample(4).encode_to_vec();
        newer.extend_from_slice(&[0x48, 0x2a, 0x52, 0x02, b'h', b'i']);
        assert_eq!(
            decode(&newer).unwrap(),
            decode(&sample(4).encode_to_vec()).unwrap()
        );
        // Older firmware: fields it never set are simply absent.
        let older = pb::Reading {
            device_time_ms: 0,
            seq: Some(4),
            msg_id: None,
            schema: 0,
            values: HashMap::from([("temp".to_string(), num(21.5))]),
        };
        let m = &decode(&older.encode_to_vec()).unwrap()[0];
        assert_eq!(
            Value::Object(m.clone()),
            serde_json::json!({"seq": 4, "temp": 21.5})
        );
    }

    #[test]
    fn hostile_nesting_is_stopped_by_the_decoder() {
        // 200 maps deep: over prost's recursion limit.
        let mut v = num(1.0);
        for _ in 0..200 {
            v = pb::Value {
                kind: Some(pb::value::Kind::Map(pb::Map {
                    fields: HashMap::from([("a".to_string(), v)]),
                })),
            };
        }
        let mut r = sample(1);
        r.values.insert("deep".into(), v);
        assert!(decode(&r.encode_to_vec()).is_err());
    }
}
