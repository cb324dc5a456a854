//! `HttpIngest` actor: the HTTP edge, `POST /ingest/{device_id}`.
//!
//! Mailbox:
//! - `Fail` <- admin API chaos hook. (Requests do not pass through the mailbox: the actor
//!   owns the listener and its accept loop; each connection runs in its own task.)
//!
//! A request is answered 202 only after the WAL commit that holds its readings returned.
//! Every other outcome is an error with a JSON body `{error, message, field?}`:
//! 400 malformed/invalid (field named), 401/403 auth, 404/405 route, 408 body too slow,
//! 411/413 size, 415 content type, 429 + Retry-After when this device holds its share of
//! the WAL (`wal/quota.rs`; other devices unaffected), 503 + Retry-After for backpressure (WAL full, too many
//! requests or body bytes in flight, WAL restarting or commit not confirmed in time).
//!
//! Order of a request, so no client can make the gateway hold more than its budgets:
//! route and device id, auth, then `Content-Length` (required, at most
//! `http.max_body_bytes`), then one of `http.max_in_flight` permits and `Content-Length`
//! bytes of `http.max_in_flight_bytes` — all before a byte of the body is read; then the
//! body, within the request deadline (`http.request_timeout_ms`, which also covers the
//! commit); decoding on this connection's task (see `router.rs`).
//!
//! Failure: the listener is closed and the IngestSupervisor rebinds it; requests already
//! accepted keep running against the router. The predecessor's listener closes
//! asynchronously, so the new instance waits (up to 2 s) for the port rather than failing
//! its start: seen 12 times in a 1-hour chaos campaign before this wait.

use super::auth::AuthCell;

/// Binds `addr`, waiting out a predecessor that still holds the port (its serve loop ends on
/// its own task, after the actor that owned it).
async fn bind_when_free(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, String> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut delay = std::time::Duration::from_millis(5);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(format!("bind {addr}: {e}")),
        }
    }
}
use super::parse::{Encoding, Rejection};
use super::router::{IngestRequest, Router};
use crate::addr::{Addr, Failable};
use crate::metrics::Metrics;
use crate::traces::{IngestSpan, TraceParent};
use crate::wal::{AppendError, AppendOutcome, Source};
use opentelemetry::KeyValue;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use warp::http::StatusCode;
use warp::{Filter, Reply};

pub struct HttpIngest;

pub enum HttpIngestMsg {
    Fail(String),
}

impl Failable for HttpIngestMsg {
    fn fail(reason: String) -> Self {
        HttpIngestMsg::Fail(reason)
    }
}

pub struct HttpIngestArgs {
    pub config: edge_gateway_config::HttpConfig,
    pub auth: AuthCell,
    pub router: Router,
    pub metrics: Arc<Metrics>,
    pub addr: Addr<HttpIngestMsg>,
    /// Where its TLS configuration is registered for reloads.
    pub reloader: crate::reload::Reloader,
    /// The address actually bound; kept across restarts so port 0 is chosen once.
    pub bound: Arc<Mutex<Option<SocketAddr>>>,
}

pub struct HttpIngestState {
    addr: Addr<HttpIngestMsg>,
    shutdown: watch::Sender<bool>,
}

/// What every request handler needs.
struct Ctx {
    cfg: edge_gateway_config::HttpConfig,
    auth: AuthCell,
    router: Router,
    metrics: Arc<Metrics>,
    /// Requests inside the gateway (`http.max_in_flight`).
    permits: Arc<Semaphore>,
    /// Body bytes held by requests inside the gateway (`http.max_in_flight_bytes`).
    body_bytes: Arc<Semaphore>,
}

#[derive(Debug)]
struct ApiError(Rejection);
impl warp::reject::Reject for ApiError {}

fn reply_rejection(r: &Rejection, retry_after: u64) -> warp::reply::Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp =
        warp::reply::with_status(warp::reply::json(&r.to_json()), status).into_response();
    if r.kind.is_retryable() {
        resp.headers_mut().insert("retry-after", retry_after.into());
    }
    if r.status == 401 {
        resp.headers_mut().insert(
            "www-authenticate",
            warp::http::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

fn unavailable(code: &'static str, msg: impl Into<String>) -> Rejection {
    Rejection::unavailable(code, msg)
}

/// The request's span (`traces`) around the handling: parented on a valid `traceparent`
/// header (an invalid one is ignored, as W3C asks), and log lines within carry its ids.
#[allow(clippy::too_many_arguments)]
async fn handle_ingest<S, B>(
    ctx: Arc<Ctx>,
    device_id: String,
    content_type: Option<String>,
    idempotency_key: Option<String>,
    content_length: Option<u64>,
    traceparent: Option<String>,
    body: S,
) -> Result<warp::reply::Response, warp::Rejection>
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Send,
    B: bytes::Buf,
{
    use tracing::Instrument;
    let span = IngestSpan::http(
        &device_id,
        traceparent.as_deref().and_then(TraceParent::parse),
    );
    let log_span = match span.log_ids() {
        Some((trace_id, span_id)) => tracing::info_span!("ingest", %trace_id, %span_id),
        None => tracing::Span::none(),
    };
    let result = handle_request(
        ctx,
        &span,
        device_id,
        content_type,
        idempotency_key,
        content_length,
        body,
    )
    .instrument(log_span)
    .await;
    match &result {
        Ok(resp) => {
            let status = resp.status();
            let error = (status.as_u16() >= 400).then(|| status.as_str().to_string());
            span.finish(status.as_u16(), error.as_deref());
        }
        // A rejection warp answers (its JSON is made by `recover`).
        Err(_) => span.finish(400, Some("rejected")),
    }
    result
}

async fn handle_request<S, B>(
    ctx: Arc<Ctx>,
    span: &IngestSpan,
    device_id: String,
    content_type: Option<String>,
    idempotency_key: Option<String>,
    content_length: Option<u64>,
    body: S,
) -> Result<warp::reply::Response, warp::Rejection>
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Send,
    B: bytes::Buf,
{
    let retry = ctx.cfg.retry_after_secs;
    let m = &ctx.metrics;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ctx.cfg.request_timeout_ms);
    let len = match content_length {
        None => {
            return Err(warp::reject::custom(ApiError(Rejection::new(
                411,
                "length_required",
                Some("content-length".into()),
                "Content-Length is required",
            ))))
        }
        Some(n) if n > ctx.cfg.max_body_bytes => {
            return Err(warp::reject::custom(ApiError(too_large())))
        }
        Some(n) => n,
    };
    let overloaded = |what: &str| {
        m.ingest_rejections
            .with_label_values(&["http", "overloaded"])
            .inc();
        Ok(reply_rejection(
            &unavailable(
                "overloaded",
                format!("too many {what} in flight; retry later"),
            ),
            retry,
        ))
    };
    let Ok(_permit) = ctx.permits.clone().try_acquire_owned() else {
        return overloaded("requests");
    };
    // `len` <= max_body_bytes <= max_in_flight_bytes, and max_body_bytes < 4 GiB (both
    // validated), so it fits the u32 permit count and the budget.
    let Ok(_bytes) = ctx
        .body_bytes
        .clone()
        .try_acquire_many_owned(u32::try_from(len).unwrap_or(u32::MAX))
    else {
        return overloaded("request bytes");
    };
    let body = match read_body(body, len, deadline).await {
        Ok(b) => b,
        Err(r) => {
            m.ingest_rejections
                .with_label_values(&["http", r.code])
                .inc();
            return Ok(reply_rejection(&r, retry));
        }
    };
    let result = ingest(
        &ctx,
        span,
        device_id.clone(),
        content_type,
        idempotency_key,
        body,
        deadline,
    )
    .await;
    Ok(match result {
        Ok(outcomes) => {
            m.count_appended("http", &device_id, &outcomes);
            let dups = outcomes
                .iter()
                .filter(|o| matches!(o, AppendOutcome::Duplicate { .. }))
                .count();
            let records: Vec<_> = outcomes
                .iter()
                .map(|o| match o {
                    AppendOutcome::Stored {
                        correlation_id,
                        key_conflict: true,
                        ..
                    } => {
                        json!({"correlation_id": correlation_id, "duplicate": false, "key_conflict": true})
                    }
                    AppendOutcome::Stored { correlation_id, .. } => {
                        json!({"correlation_id": correlation_id, "duplicate": false})
                    }
                    AppendOutcome::Duplicate { correlation_id, .. } => {
                        json!({"correlation_id": correlation_id, "duplicate": true})
                    }
                })
                .collect();
            let mut body = json!({"accepted": outcomes.len() - dups, "duplicates": dups});
            if records.len() == 1 {
                body["correlation_id"] = records[0]["correlation_id"].clone();
                body["duplicate"] = records[0]["duplicate"].clone();
                if let Some(c) = records[0].get("key_conflict") {
                    body["key_conflict"] = c.clone();
                }
            }
            body["records"] = serde_json::Value::Array(records);
            warp::reply::with_status(warp::reply::json(&body), StatusCode::ACCEPTED).into_response()
        }
        Err(r) => {
            let result = if r.kind.is_retryable() {
                "unavailable"
            } else {
                "rejected"
            };
            m.ingest_records.with_label_values(&["http", result]).inc();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            m.devices.refused(&device_id, r.code, now);
            // Every refusal is counted once, here or in `recover`: the router only reports.
            m.ingest_rejections
                .with_label_values(&["http", r.code])
                .inc();
            reply_rejection(&r, retry)
        }
    })
}

fn too_large() -> Rejection {
    Rejection::new(
        413,
        "payload_too_large",
        Some("body".into()),
        "body exceeds http.max_body_bytes",
    )
}

/// Reads exactly the announced body before `deadline` (hyper enforces the framing).
async fn read_body<S, B>(
    body: S,
    len: u64,
    deadline: tokio::time::Instant,
) -> Result<bytes::Bytes, Rejection>
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Send,
    B: bytes::Buf,
{
    use futures::StreamExt;
    let read = async {
        let mut buf = bytes::BytesMut::with_capacity(len as usize);
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let mut chunk = chunk.map_err(|e| {
                Rejection::new(
                    400,
                    "bad_request",
                    Some("body".into()),
                    format!("reading the body: {e}"),
                )
            })?;
            if (buf.len() + chunk.remaining()) as u64 > len {
                return Err(too_large());
            }
            while chunk.has_remaining() {
                let c = chunk.chunk();
                buf.extend_from_slice(c);
                let n = c.len();
                chunk.advance(n);
            }
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout_at(deadline, read).await {
        Ok(r) => r,
        Err(_) => Err(Rejection::new(
            408,
            "body_timeout",
            Some("body".into()),
            "the body did not arrive within http.request_timeout_ms",
        )),
    }
}

async fn ingest(
    ctx: &Ctx,
    span: &IngestSpan,
    device_id: String,
    content_type: Option<String>,
    idempotency_key: Option<String>,
    body: bytes::Bytes,
    deadline: tokio::time::Instant,
) -> Result<Vec<AppendOutcome>, Rejection> {
    let encoding = Encoding::from_content_type(content_type.as_deref())?;
    if let Some(k) = &idempotency_key {
        if k.is_empty() || k.len() > 256 {
            return Err(Rejection::new(
                400,
                "invalid_header",
                Some("idempotency-key".into()),
                "Idempotency-Key must be 1-256 characters",
            ));
        }
    }
    let req = IngestRequest {
        device_id,
        source: Source::Http,
        body,
        encoding: Some(encoding),
        idempotency_key,
        trace: span.record_context(),
    };
    let pending = {
        let _decode = span.step("decode");
        ctx.router.submit(req)?
    };
    let mut append = span.step("wal.append");
    append.set(KeyValue::new("wal.records", pending.readings as i64));
    let committed = tokio::time::timeout_at(deadline, pending.commit).await;
    match &committed {
        Ok(Ok(Ok(outcomes))) => {
            if let Some(AppendOutcome::Stored { seq, .. } | AppendOutcome::Duplicate { seq, .. }) =
                outcomes.first()
            {
                append.set(KeyValue::new("wal.seq", *seq as i64));
            }
        }
        _ => append.fail("not committed"),
    }
    match committed {
        Ok(Ok(Ok(outcomes))) => Ok(outcomes),
        Ok(Ok(Err(AppendError::Full(f)))) => Err(unavailable("wal_full", format!("backpressure: {f}"))),
        Ok(Ok(Err(AppendError::DiskFull(d)))) => Err(unavailable("disk_full", format!("backpressure: {d}"))),
        Ok(Ok(Err(AppendError::DeviceQuota(q)))) => Err(Rejection::over_quota(format!(
            "backpressure for this device only: {q}"
        ))),
        Ok(Ok(Err(AppendError::Unavailable(e)))) => Err(unavailable("unavailable", e)),
        Ok(Err(_)) => Err(unavailable("unavailable", "WAL restarted before the commit; nothing was acknowledged, retry")),
        Err(_) => Err(unavailable("commit_timeout",
            "commit not confirmed in time; retry with the same Idempotency-Key (a duplicate is detected)")),
    }
}

/// Turns warp's own rejections into the same JSON error shape.
async fn recover(
    err: warp::Rejection,
    metrics: Arc<Metrics>,
) -> Result<warp::reply::Response, std::convert::Infallible> {
    let r = if let Some(ApiError(r)) = err.find::<ApiError>() {
        r.clone()
    } else if err.find::<warp::reject::InvalidHeader>().is_some() {
        Rejection::new(400, "invalid_header", None, format!("{err:?}"))
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        Rejection::new(
            405,
            "method_not_allowed",
            None,
            "use POST /ingest/{device_id}",
        )
    } else if err.is_not_found() {
        Rejection::new(404, "not_found", None, "use POST /ingest/{device_id}")
    } else {
        Rejection::new(400, "bad_request", None, format!("{err:?}"))
    };
    metrics
        .ingest_rejections
        .with_label_values(&["http", r.code])
        .inc();
    Ok(reply_rejection(&r, 1))
}

fn routes(
    ctx: Arc<Ctx>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible> + Clone {
    let with_ctx = {
        let ctx = ctx.clone();
        warp::any().map(move || ctx.clone())
    };
    let authorized = warp::path!("ingest" / String)
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(with_ctx.clone())
        .and_then(
            |device: String, authz: Option<String>, ctx: Arc<Ctx>| async move {
                // Device id before auth, so a bad id is a 400 whatever the token.
                super::parse::validate_device_id(&device)
                    .map_err(|r| warp::reject::custom(ApiError(r)))?;
                ctx.auth
                    .get()
                    .check(&device, authz.as_deref())
                    .map(|()| device)
                    .map_err(|r| warp::reject::custom(ApiError(r)))
            },
        );
    with_ctx
        .and(authorized)
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::header::optional::<String>("traceparent"))
        .and(warp::body::stream())
        .and_then(handle_ingest)
        .recover(move |e| recover(e, ctx.metrics.clone()))
        .unify()
}

impl Actor for HttpIngest {
    type Msg = HttpIngestMsg;
    type State = HttpIngestState;
    type Arguments = HttpIngestArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: HttpIngestArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let want = args
            .bound
            .lock()
            .expect("bound lock")
            .unwrap_or(args.config.listen);
        let listener = bind_when_free(want).await?;
        let local = listener.local_addr()?;
        *args.bound.lock().expect("bound lock") = Some(local);
        tracing::info!(addr = %local, tls = args.config.tls.is_some(), mtls = args.config.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some()), "http ingest listening");
        let ctx = Arc::new(Ctx {
            permits: Arc::new(Semaphore::new(args.config.max_in_flight)),
            body_bytes: Arc::new(Semaphore::new(
                usize::try_from(args.config.max_in_flight_bytes)
                    .unwrap_or(usize::MAX)
                    .min(Semaphore::MAX_PERMITS),
            )),
            cfg: args.config.clone(),
            auth: args.auth,
            router: args.router,
            metrics: args.metrics,
        });
        let tls = match &args.config.tls {
            Some(t) => Some(crate::serve::TlsAcceptor::new(t)?),
            None => None,
        };
        if let Some(t) = &tls {
            args.reloader.register("http_ingest", Arc::new(t.clone()));
        }
        let (tx, rx) = watch::channel(false);
        let limits = crate::serve::Limits {
            listener: "ingest",
            header_read_timeout: Duration::from_millis(args.config.header_read_timeout_ms),
            max_connections: args.config.max_connections,
            max_per_peer: args.config.max_connections_per_peer,
        };
        let metrics = Some(ctx.metrics.clone());
        tokio::spawn(crate::serve::serve(
            listener,
            routes(ctx),
            limits,
            metrics,
            tls,
            rx,
        ));
        Ok(HttpIngestState {
            addr: args.addr,
            shutdown: tx,
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = state.shutdown.send(true);
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.addr.received();
        match msg {
            HttpIngestMsg::Fail(reason) => Err(format!("failure injected: {reason}").into()),
        }
    }
}
