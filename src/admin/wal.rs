//! The WAL's recovery routes (issue 14): `GET /admin/records/{id}` ("where is my reading?")
//! and `POST /admin/wal/backup`.

use super::{json_status, read_failed, unavailable};
use edge_gateway_actors::wal::WalMsg;
use edge_gateway_supervisors::tree::Handles;
use serde_json::json;
use std::time::Duration;
use warp::http::StatusCode;

/// `GET /admin/records/{id}`: "where is my reading?".
pub(super) async fn find_record(h: &Handles, id: String) -> warp::reply::Response {
    match h
        .wal
        .call(
            |reply| WalMsg::Find { id, reply },
            Some(Duration::from_secs(60)),
        )
        .await
    {
        Ok(Ok(Some(v))) => json_status(serde_json::to_value(v).unwrap_or_default(), StatusCode::OK),
        Ok(Ok(None)) => json_status(
            json!({"error": "not_found", "message": "no record with this WAL seq, correlation id or idempotency key is in the WAL: every sink settled it (delivered or purged), or it never came"}),
            StatusCode::NOT_FOUND,
        ),
        Ok(Err(why)) => read_failed(why),
        Err(e) => unavailable(e),
    }
}

/// `%2F` and the like back to bytes (a key holds `/`); invalid escapes kept as they are.
pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `POST /admin/wal/backup?dest=/absolute/new/file`: a consistent copy of the WAL.
pub(super) async fn backup(
    h: &Handles,
    query: &std::collections::HashMap<String, String>,
) -> warp::reply::Response {
    let Some(dest) = query.get("dest").map(std::path::PathBuf::from) else {
        return json_status(
            json!({"error": "bad_request", "field": "dest", "message": "?dest=/absolute/path/of/a/new/file"}),
            StatusCode::BAD_REQUEST,
        );
    };
    if !dest.is_absolute() {
        return json_status(
            json!({"error": "bad_request", "field": "dest", "message": "dest must be an absolute path"}),
            StatusCode::BAD_REQUEST,
        );
    }
    match h
        .wal
        .call(
            |reply| WalMsg::Backup { dest, reply },
            Some(Duration::from_secs(3600)),
        )
        .await
    {
        Ok(Ok(r)) => {
            tracing::warn!(dest = %r.dest, records = r.records, bytes = r.bytes, "WAL backup written through the admin API");
            json_status(serde_json::to_value(r).unwrap_or_default(), StatusCode::OK)
        }
        Ok(Err(why)) => json_status(
            json!({"error": "backup_failed", "message": why}),
            StatusCode::CONFLICT,
        ),
        Err(e) => unavailable(e),
    }
}

/// `POST /admin/wal/replay?sink=S` with JSON Lines of records (`crate::replay::parse_line`):
/// re-enqueued for S, keys kept; all or none of the chunk.
pub(super) async fn replay(
    h: &Handles,
    query: &std::collections::HashMap<String, String>,
    body: &[u8],
) -> warp::reply::Response {
    let bad = |field: &str, message: String| {
        json_status(
            json!({"error": "bad_request", "field": field, "message": message}),
            StatusCode::BAD_REQUEST,
        )
    };
    let Some(sink) = query.get("sink").cloned() else {
        return bad("sink", "?sink=NAME".into());
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return bad("body", "not UTF-8".into());
    };
    let mut records = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match crate::replay::parse_line(line) {
            Ok(r) => records.push(r),
            Err(e) => return bad("body", format!("line {}: {e}", i + 1)),
        }
    }
    let n = records.len();
    match h
        .wal
        .call(
            |reply| WalMsg::Replay {
                sink: sink.clone(),
                records,
                reply,
            },
            Some(Duration::from_secs(60)),
        )
        .await
    {
        Ok(Ok(stored)) => {
            tracing::warn!(sink = %sink, replayed = stored, "records replayed through the admin API");
            json_status(json!({"replayed": stored}), StatusCode::OK)
        }
        Ok(Err(why)) => json_status(
            json!({"error": "not_replayed", "records": n, "message": why}),
            StatusCode::CONFLICT,
        ),
        Err(e) => unavailable(e),
    }
}
