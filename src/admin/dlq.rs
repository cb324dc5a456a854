//! Dead letters through the admin API (issue 14, part 2), every route with the same filters:
//! `reason` (a class as in the metrics), `device` (a glob: `*`, `?`), `since` / `until`
//! (when they died: RFC 3339, or a duration back from now such as `24h`), `older_than`
//! (seconds).
//!
//! - `GET /admin/dead-letters/{sink}?…&after=SEQ&limit=N`: one page (at most 10,000) and the
//!   cursor of the next (`next`, the WAL seq to pass as `after`).
//! - `GET /admin/dead-letters/{sink}/export?…`: every match as JSON Lines, streamed from one
//!   read transaction on a blocking thread through a channel of 16 chunks: memory stays at a
//!   chunk however many there are.
//! - `POST /admin/dead-letters/{sink}/requeue?…&limit=N`: back to Enqueued, attempts reset.
//! - `DELETE /admin/dead-letters/{sink}?…&limit=N`: deleted; counted and logged.

use super::{json_status, read_failed, unavailable};
use edge_gateway_actors::wal::{DeadClass, DeadFilter, WalMsg};
use edge_gateway_supervisors::tree::Handles;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;
use warp::http::StatusCode;
use warp::Reply;

type Query = HashMap<String, String>;

/// The filter and the limit a query asks for (`default_limit` when it sets none); errors
/// name the parameter.
pub fn filter(
    q: &Query,
    default_limit: usize,
    max_limit: usize,
) -> Result<(DeadFilter, usize), (&'static str, String)> {
    let reason = match q.get("reason").map(|r| (r, DeadClass::parse(r))) {
        None => None,
        Some((_, Some(class))) => Some(class),
        Some((r, None)) => {
            let classes = DeadClass::ALL.map(DeadClass::as_str);
            return Err(("reason", format!("{r:?} is not one of {classes:?}")));
        }
    };
    let older_than_ms = match q.get("older_than") {
        None => None,
        Some(s) => match s.parse::<u64>() {
            Ok(secs) => Some(secs.saturating_mul(1000)),
            Err(_) => return Err(("older_than", "must be whole seconds".into())),
        },
    };
    let now = super::now_ms();
    let time = |k: &'static str| match q.get(k) {
        None => Ok(None),
        Some(s) => crate::dlq_tools::when(s, now).map(Some).map_err(|e| (k, e)),
    };
    let (since_ms, until_ms) = (time("since")?, time("until")?);
    let limit = match q.get("limit") {
        None => default_limit,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if n > 0 => n.min(max_limit),
            _ => return Err(("limit", "must be a positive whole number".into())),
        },
    };
    let device = q.get("device").cloned();
    if device
        .as_ref()
        .is_some_and(|d| d.is_empty() || d.len() > 256)
    {
        return Err(("device", "a glob of 1-256 characters".into()));
    }
    Ok((
        DeadFilter {
            reason,
            older_than_ms,
            device,
            since_ms,
            until_ms,
        },
        limit,
    ))
}

fn bad((field, message): (&'static str, String)) -> warp::reply::Response {
    json_status(
        json!({"error": "invalid_query", "field": field, "message": message}),
        StatusCode::BAD_REQUEST,
    )
}

async fn reader(h: &Handles) -> Result<edge_gateway_actors::wal::WalReader, warp::reply::Response> {
    match h
        .wal
        .call(WalMsg::Reader, Some(Duration::from_secs(5)))
        .await
    {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(why)) => Err(read_failed(why)),
        Err(e) => Err(unavailable(e)),
    }
}

pub(super) async fn list(h: &Handles, sink: &str, q: &Query) -> warp::reply::Response {
    let (f, limit) = match filter(q, 100, 10_000) {
        Ok(f) => f,
        Err(e) => return bad(e),
    };
    let after = match q.get("after").map(|a| a.parse::<u64>()) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(_)) => return bad(("after", "a WAL seq (the `next` of a page)".into())),
    };
    let r = match reader(h).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let sink = sink.to_string();
    let page = tokio::task::spawn_blocking(move || r.dead_page(&sink, &f, after, limit)).await;
    match page {
        Ok(Ok((rows, next))) => {
            json_status(json!({"dead_letters": rows, "next": next}), StatusCode::OK)
        }
        Ok(Err(e)) => read_failed(e.to_string()),
        Err(e) => read_failed(e.to_string()),
    }
}

pub(super) async fn export(h: &Handles, sink: &str, q: &Query) -> warp::reply::Response {
    let (f, _) = match filter(q, usize::MAX, usize::MAX) {
        Ok(f) => f,
        Err(e) => return bad(e),
    };
    let r = match reader(h).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let sink = sink.to_string();
    stream_lines(move |emit| {
        let n = r.dead_each(&sink, &f, None, |row| emit(&row))?;
        tracing::info!(sink = %sink, exported = n, "dead letters exported through the admin API");
        Ok(n)
    })
}

/// `GET /admin/wal/history?from=&to=`: every settled record the history keeps whose
/// `receive_ts` is in `[from, to)` (RFC 3339 or ms since the epoch; default: all), as JSON
/// Lines a `replay` reads, streamed from one read transaction.
pub(super) async fn history(h: &Handles, q: &Query) -> warp::reply::Response {
    let bound = |k: &'static str, default: u64| match q.get(k) {
        None => Ok(default),
        Some(t) => crate::replay::parse_time(t).map_err(|e| (k, e)),
    };
    let (from, to) = match (bound("from", 0), bound("to", u64::MAX)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return bad(e),
    };
    let r = match reader(h).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    stream_lines(move |emit| r.history_each(from, to, |row| emit(&row)))
}

/// The JSON Lines `visit` emits (on a blocking thread: it reads the WAL), streamed as the
/// answer in 60 KiB chunks; `emit` answers false once the client went away.
fn stream_lines<F>(visit: F) -> warp::reply::Response
where
    F: FnOnce(
            &mut dyn FnMut(&dyn erased::Json) -> bool,
        ) -> Result<u64, edge_gateway_actors::wal::WalError>
        + Send
        + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
    tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(64 * 1024);
        let visited = visit(&mut |row| {
            row.write_json(&mut chunk);
            chunk.push(b'\n');
            if chunk.len() >= 60 * 1024 {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(64 * 1024));
                // A client that went away ends the export.
                return tx.blocking_send(Ok(full.into())).is_ok();
            }
            true
        });
        match visited {
            Ok(_) => {
                let _ = tx.blocking_send(Ok(chunk.into()));
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let body = tokio_stream_of(rx);
    warp::reply::with_header(
        warp::reply::stream(body),
        "content-type",
        "application/x-ndjson",
    )
    .into_response()
}

/// Rows of any serialisable type through one `dyn` callback.
mod erased {
    pub trait Json {
        fn write_json(&self, out: &mut Vec<u8>);
    }
    impl<T: serde::Serialize> Json for T {
        fn write_json(&self, out: &mut Vec<u8>) {
            serde_json::to_writer(out, self).expect("JSON");
        }
    }
}

/// A channel as a stream, without another dependency.
fn tokio_stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + Sync + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

pub(super) async fn requeue(h: &Handles, sink: &str, q: &Query) -> warp::reply::Response {
    let (filter, limit) = match filter(q, 1_000, 1_000_000) {
        Ok(f) => f,
        Err(e) => return bad(e),
    };
    let sink = sink.to_string();
    match h
        .wal
        .call(
            |reply| WalMsg::Requeue {
                sink: sink.clone(),
                limit,
                filter,
                reply,
            },
            Some(Duration::from_secs(60)),
        )
        .await
    {
        Ok(n) => {
            tracing::warn!(sink = %sink, requeued = n, "dead letters requeued through the admin API");
            json_status(json!({"requeued": n}), StatusCode::OK)
        }
        Err(e) => unavailable(e),
    }
}

/// `DELETE /admin/dead-letters/{sink}?…`: the operator's purge, counted
/// (`dead_letters_purged_total{why="operator"}`) and logged by the WAL.
pub(super) async fn purge(h: &Handles, segs: &[&str], q: &Query) -> warp::reply::Response {
    let ["dead-letters", sink] = segs else {
        return json_status(json!({"error": "not_found"}), StatusCode::NOT_FOUND);
    };
    if !h.live.sink_names().iter().any(|s| s == sink) {
        return json_status(
            json!({"error": "unknown_sink", "field": "sink", "message": format!("no sink named {sink:?}")}),
            StatusCode::NOT_FOUND,
        );
    }
    let (filter, limit) = match filter(q, 100_000, 1_000_000) {
        Ok(f) => f,
        Err(e) => return bad(e),
    };
    let sink = sink.to_string();
    match h
        .wal
        .call(
            |reply| WalMsg::PurgeDead {
                sink,
                filter,
                limit,
                reply,
            },
            Some(Duration::from_secs(60)),
        )
        .await
    {
        Ok(n) => json_status(json!({"purged": n}), StatusCode::OK),
        Err(e) => unavailable(e),
    }
}
