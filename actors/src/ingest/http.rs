//! `HttpIngest` actor: the HTTP edge, `POST /ingest/{device_id}`.
//!
//! Mailbox:
//! - `Fail` <- admin API chaos hook. (Requests do not pass through the mailbox: the actor
//!   owns the listener and its accept loop; each connection runs in its own task.)
//!
//! A request is answered 202 only after the WAL commit that holds its readings returned.
//! Every other outcome is an error with a JSON body `{error, message, field?}`:
//! 400 malformed/invalid (field named), 401/403 auth, 404/405 route, 411/413 size,
//! 415 content type, 503 + Retry-After for backpressure (WAL full, too many requests in
//! flight, WAL restarting or commit not confirmed in time).
//!
//! Failure: the listener is closed and the IngestSupervisor rebinds it; requests already
//! accepted keep running against the router. The predecessor's listener closes
//! asynchronously, so the new instance waits (up to 2 s) for the port rather than failing
//! its start: seen 12 times in a 1-hour chaos campaign before this wait.

use super::auth::Auth;

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
use super::router::{IngestRequest, IngestRouterMsg};
use crate::addr::{Addr, Failable};
use crate::metrics::Metrics;
use crate::wal::{AppendError, AppendOutcome, Source};
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
    pub auth: Arc<Auth>,
    pub router: Addr<IngestRouterMsg>,
    pub metrics: Arc<Metrics>,
    pub addr: Addr<HttpIngestMsg>,
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
    auth: Arc<Auth>,
    router: Addr<IngestRouterMsg>,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
}

#[derive(Debug)]
struct ApiError(Rejection);
impl warp::reject::Reject for ApiError {}

fn reply_rejection(r: &Rejection, retry_after: u64) -> warp::reply::Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp =
        warp::reply::with_status(warp::reply::json(&r.to_json()), status).into_response();
    if r.status == 503 {
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
    Rejection::new(503, code, None, msg)
}

async fn handle_ingest(
    ctx: Arc<Ctx>,
    device_id: String,
    content_type: Option<String>,
    idempotency_key: Option<String>,
    body: bytes::Bytes,
) -> Result<warp::reply::Response, warp::Rejection> {
    let retry = ctx.cfg.retry_after_secs;
    let m = &ctx.metrics;
    let Ok(_permit) = ctx.permits.clone().try_acquire_owned() else {
        m.ingest_rejections
            .with_label_values(&["http", "overloaded"])
            .inc();
        return Ok(reply_rejection(
            &unavailable("overloaded", "too many requests in flight; retry later"),
            retry,
        ));
    };
    let result = ingest(&ctx, device_id, content_type, idempotency_key, body).await;
    Ok(match result {
        Ok(outcomes) => {
            let dups = outcomes
                .iter()
                .filter(|o| matches!(o, AppendOutcome::Duplicate { .. }))
                .count();
            m.ingest_records
                .with_label_values(&["http", "accepted"])
                .inc_by((outcomes.len() - dups) as u64);
            if dups > 0 {
                m.ingest_records
                    .with_label_values(&["http", "duplicate"])
                    .inc_by(dups as u64);
                m.duplicates
                    .with_label_values(&["http"])
                    .inc_by(dups as u64);
            }
            let records: Vec<_> = outcomes
                .iter()
                .map(|o| match o {
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
            }
            body["records"] = serde_json::Value::Array(records);
            warp::reply::with_status(warp::reply::json(&body), StatusCode::ACCEPTED).into_response()
        }
        Err(r) => {
            let result = if r.status == 503 {
                "unavailable"
            } else {
                "rejected"
            };
            m.ingest_records.with_label_values(&["http", result]).inc();
            // Every refusal is counted once, here or in `recover`: the router only reports.
            m.ingest_rejections
                .with_label_values(&["http", r.code])
                .inc();
            reply_rejection(&r, retry)
        }
    })
}

async fn ingest(
    ctx: &Ctx,
    device_id: String,
    content_type: Option<String>,
    idempotency_key: Option<String>,
    body: bytes::Bytes,
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
    let budget = Duration::from_millis(ctx.cfg.request_timeout_ms);
    let deadline = tokio::time::Instant::now() + budget;
    let req = IngestRequest {
        device_id,
        source: Source::Http,
        body,
        encoding: Some(encoding),
        idempotency_key,
    };
    let pending = ctx
        .router
        .call(|reply| IngestRouterMsg::Ingest { req, reply }, Some(budget))
        .await
        .map_err(|e| unavailable("unavailable", format!("ingest router: {e}")))??;
    match tokio::time::timeout_at(deadline, pending.commit).await {
        Ok(Ok(Ok(outcomes))) => Ok(outcomes),
        Ok(Ok(Err(AppendError::Full(f)))) => Err(unavailable("wal_full", format!("backpressure: {f}"))),
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
    } else if err.find::<warp::reject::PayloadTooLarge>().is_some() {
        Rejection::new(
            413,
            "payload_too_large",
            Some("body".into()),
            "body exceeds http.max_body_bytes",
        )
    } else if err.find::<warp::reject::LengthRequired>().is_some() {
        Rejection::new(
            411,
            "length_required",
            Some("content-length".into()),
            "Content-Length is required",
        )
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
    let max_body = ctx.cfg.max_body_bytes;
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
                    .check(&device, authz.as_deref())
                    .map(|()| device)
                    .map_err(|r| warp::reject::custom(ApiError(r)))
            },
        );
    with_ctx
        .and(authorized)
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(warp::body::content_length_limit(max_body))
        .and(warp::body::bytes())
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
            cfg: args.config.clone(),
            auth: args.auth,
            router: args.router,
            metrics: args.metrics,
        });
        let tls = match &args.config.tls {
            Some(t) => Some(crate::serve::TlsAcceptor::new(t)?),
            None => None,
        };
        let (tx, rx) = watch::channel(false);
        let hrt = Duration::from_millis(args.config.header_read_timeout_ms);
        tokio::spawn(crate::serve::serve(listener, routes(ctx), hrt, tls, rx));
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
