//! `edge-gateway replay FILE --sink NAME [--rate N]` (issue 14, part 3): records re-enqueued for
//! one sink from JSON Lines — a dead-letter export (`dlq export`: `{"record": {…}, …}` per
//! line) or what a sink received (a file sink's lines, an http sink's records: `{"idempotency_key",
//! "device_id", "receive_ts", "data", …}`) — keeping their idempotency keys, so a sink that
//! already has them de-duplicates. At most `rate` records a second; in chunks of 500, each
//! committed before the next is read (an interrupted replay has replayed whole chunks only;
//! the count printed says how far it got). Through the running gateway's admin API, or into
//! the file when it is stopped.

use crate::online::{AdminAccess, OnlineError};
use edge_gateway_actors::traces::TraceParent;
use edge_gateway_actors::wal::{Op, OpResult, Record, Source, WalError, WalLimits, WalStore};
use edge_gateway_config::Config;
use serde_json::Value;
use std::io::BufRead;

/// Records per commit (and per request to a running gateway).
pub const CHUNK: usize = 500;

/// One line of an export or of a sink's output, as a record.
pub fn parse_line(line: &str) -> Result<Record, String> {
    let mut v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    // A dead-letter export nests the record; its trace context is text there.
    let nested = v.get("record").is_some_and(Value::is_object);
    let mut r = if nested { v["record"].take() } else { v };
    let text = |r: &Value, k: &str| r[k].as_str().map(str::to_string);
    let trace = text(&r, "trace")
        .or_else(|| text(&r, "traceparent"))
        .and_then(|t| TraceParent::parse(&t));
    let record = if nested {
        if let Some(o) = r.as_object_mut() {
            o.remove("trace");
        }
        serde_json::from_value::<Record>(r).map_err(|e| format!("not a record: {e}"))?
    } else {
        // A sink's JSON (`sinks/json.rs`).
        let receive_ts_ms = text(&r, "receive_ts")
            .and_then(|t| humantime::parse_rfc3339_weak(&t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        let source = match r["source"].as_str() {
            Some("mqtt") => Source::Mqtt,
            _ => Source::Http,
        };
        Record {
            device_id: text(&r, "device_id").ok_or("no device_id")?,
            idempotency_key: text(&r, "idempotency_key").ok_or("no idempotency_key")?,
            correlation_id: text(&r, "correlation_id").unwrap_or_default(),
            gateway_id: text(&r, "gateway_id").unwrap_or_default(),
            receive_ts_ms,
            source,
            schema: r["schema"].as_u64().unwrap_or(1) as u32,
            msg_id: text(&r, "msg_id"),
            device_seq: r["seq"].as_u64(),
            device_ts: r.get("ts").filter(|t| !t.is_null()).cloned(),
            data: r["data"].as_object().cloned().ok_or("no data object")?,
            clock_synced: r["clock_synced"].as_bool().unwrap_or(true),
            fingerprint: Default::default(),
            encoded: Default::default(),
            route: Default::default(),
            trace: None,
            send_trace: None,
        }
    };
    edge_gateway_actors::ingest::parse::validate_device_id(&record.device_id)
        .map_err(|e| e.message)?;
    if record.idempotency_key.is_empty() || record.idempotency_key.len() > 512 {
        return Err("idempotency_key must be 1-512 characters".into());
    }
    Ok(Record { trace, ..record })
}

/// A time bound: RFC 3339 (`2026-11-23T04:00:00Z`) or milliseconds since the epoch.
pub fn parse_time(t: &str) -> Result<u64, String> {
    if let Ok(ms) = t.parse::<u64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(t)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .ok_or_else(|| format!("{t:?} is not an RFC 3339 time nor milliseconds since the epoch"))
}

/// `row` as one line of JSON Lines.
pub fn json_line(out: &mut dyn std::io::Write, row: &impl serde::Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, row).map_err(std::io::Error::other)?;
    out.write_all(b"\n")
}

/// The settled records the WAL's history keeps whose `receive_ts` is in `[from, to)`, as
/// JSON Lines into `out` (what `replay` reads): from the file when no gateway holds it,
/// else through the running gateway's admin API (`GET /admin/wal/history`).
pub fn export_history(
    cfg: &Config,
    access: &AdminAccess,
    from: u64,
    to: u64,
    out: &mut dyn std::io::Write,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, OnlineError> {
    let r = match edge_gateway_actors::wal::WalReader::offline(&cfg.data_dir.join("wal.redb")) {
        Ok(r) => r,
        Err(WalError::AlreadyOpen) => {
            let q = [("from", from.to_string()), ("to", to.to_string())];
            return crate::online::admin_stream(
                cfg,
                access,
                "/admin/wal/history",
                &q,
                out,
                progress,
            );
        }
        Err(e) => return Err(e.into()),
    };
    let mut failed = None;
    let n = r.history_each(from, to, |row| {
        if let Err(e) = json_line(&mut *out, &row) {
            failed = Some(e);
            return false;
        }
        true
    })?;
    if let Some(e) = failed.or_else(|| out.flush().err()) {
        return Err(OnlineError::Refused(format!("writing the history: {e}")));
    }
    progress(n);
    Ok(n)
}

/// What a replay did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Replayed {
    pub replayed: u64,
    /// Lines that are not records, with their line numbers (the first 20).
    pub skipped: u64,
    pub skipped_lines: Vec<(u64, String)>,
}

/// Replays `input` for `sink`, at most `rate` records a second (`None`: as fast as the WAL
/// commits). `progress` is called after each chunk with the running count.
pub fn replay(
    cfg: &Config,
    access: &AdminAccess,
    mut input: impl BufRead,
    sink: &str,
    rate: Option<f64>,
    progress: &mut dyn FnMut(u64),
) -> Result<Replayed, OnlineError> {
    if !cfg.sinks.iter().any(|s| s.name() == sink) {
        return Err(OnlineError::Refused(format!(
            "no sink named {sink:?} in the configuration"
        )));
    }
    let limits = WalLimits::from_config(&cfg.wal, &cfg.delivery);
    let names = cfg.sinks.iter().map(|s| s.name().to_string()).collect();
    let mut store = match WalStore::open(&cfg.data_dir.join("wal.redb"), names, limits) {
        Ok(s) => Some(s),
        Err(WalError::AlreadyOpen) => None,
        Err(e) => return Err(e.into()),
    };
    let mut out = Replayed::default();
    let started = std::time::Instant::now();
    let mut chunk: Vec<(Record, String)> = Vec::with_capacity(CHUNK);
    // A `dlq export --format cbor` file, or JSON Lines (an export, a sink's output).
    let cbor = crate::cbor_seq::is_cbor(&mut input)
        .map_err(|e| OnlineError::Refused(format!("reading the input: {e}")))?;
    let mut lines: Box<dyn Iterator<Item = std::io::Result<String>> + '_> = if cbor {
        Box::new(crate::cbor_seq::lines(input))
    } else {
        Box::new(input.lines())
    };
    let mut n = 0u64;
    loop {
        let line = lines
            .next()
            .transpose()
            .map_err(|e| OnlineError::Refused(format!("reading the input: {e}")))?;
        let done = line.is_none();
        if let Some(line) = line {
            n += 1;
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(&line) {
                Ok(r) => chunk.push((r, line)),
                Err(e) => {
                    out.skipped += 1;
                    if out.skipped_lines.len() < 20 {
                        out.skipped_lines.push((n, e));
                    }
                }
            }
        }
        if chunk.len() == CHUNK || (done && !chunk.is_empty()) {
            let batch = std::mem::take(&mut chunk);
            let count = batch.len();
            match store.take() {
                Some(s) => {
                    let now = s.clock_ms();
                    let op = Op::Replay {
                        sink: sink.to_string(),
                        records: batch.into_iter().map(|(r, _)| r).collect(),
                    };
                    let (s, results) = s.apply(vec![op], now)?;
                    store = Some(s);
                    if let Some(OpResult::Replayed(Err(why))) = results.first() {
                        return Err(OnlineError::Refused(why.clone()));
                    }
                }
                None => {
                    let body: String = batch.iter().map(|(_, l)| format!("{l}\n")).collect();
                    let (status, answer) = crate::online::admin_post(
                        cfg,
                        access,
                        "/admin/wal/replay",
                        &[("sink", sink.to_string())],
                        body,
                    )?;
                    if status != 200 {
                        return Err(OnlineError::Refused(format!("HTTP {status}: {answer}")));
                    }
                }
            }
            out.replayed += count as u64;
            progress(out.replayed);
            // The ceiling: never ahead of `rate` a second since the start.
            if let Some(rate) = rate.filter(|r| *r > 0.0) {
                let due = std::time::Duration::from_secs_f64(out.replayed as f64 / rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        if done {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_shapes_of_line_are_records_with_their_keys() {
        let sink_line = r#"{"idempotency_key":"d-1/seq/5","device_id":"d-1","gateway_id":"gw","correlation_id":"c","receive_ts":"2026-11-23T04:00:00.123Z","source":"mqtt","schema":1,"msg_id":null,"seq":5,"ts":null,"data":{"t":20.5},"wal_seq":9,"attempt":2,"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#;
        let r = parse_line(sink_line).unwrap();
        assert_eq!(
            (r.idempotency_key.as_str(), r.device_seq, r.source),
            ("d-1/seq/5", Some(5), Source::Mqtt)
        );
        assert_eq!(r.receive_ts_ms, 1_795_406_400_123);
        assert!(r.trace.is_some());
        let export_line = format!(
            r#"{{"sink":"api","wal_seq":3,"reason":"HTTP 400","class":"rejected","attempts":1,"dead_at_ms":1,"record":{}}}"#,
            serde_json::to_string(&serde_json::json!({"device_id":"d-2","idempotency_key":"d-2/seq/1","correlation_id":"c2","gateway_id":"gw","receive_ts_ms":7,"source":"http","schema":1,"msg_id":null,"device_seq":1,"device_ts":null,"data":{"v":1},"trace":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})).unwrap()
        );
        let r = parse_line(&export_line).unwrap();
        assert_eq!((r.device_id.as_str(), r.receive_ts_ms), ("d-2", 7));
        assert!(r.trace.is_some());
        for bad in [
            "",
            "nope",
            r#"{"device_id":"x"}"#,
            r#"{"device_id":"a b","idempotency_key":"k","data":{}}"#,
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }
}
