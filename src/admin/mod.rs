//! Admin API on its own listener (loopback by default).
//!
//! Open: `GET /healthz` (liveness: 500 naming what is wedged, see
//! `edge_gateway_actors::liveness`), `/readyz`, `/metrics`, `/version`.
//! Admin token (`Authorization: Bearer …`): `GET /admin/tree`, `GET /admin/wal`,
//! `GET /admin/outages?since=24h` (each period a sink was unreachable or paused),
//! `GET /admin/devices?limit=N&silent_for=10m` (per-device health, most recently seen first),
//! dead letters (`dlq.rs`): `GET /admin/dead-letters/{sink}` (a page), `…/export` (JSON Lines,
//! streamed), `POST …/requeue`, `DELETE /admin/dead-letters/{sink}`, all with the same
//! filters, `GET /admin/rejected?limit=N` (refused
//! MQTT messages with payload and reason, newest first), `GET /admin/mqtt` (the MQTT session's
//! state), `GET /admin/records/{seq | correlation id | idempotency key}` (a record and its state
//! per sink), `POST /admin/wal/backup?dest=/absolute/new/file` (a consistent copy of the WAL
//! beside its commits), and — only with `admin.chaos = true` —
//! `POST /admin/actors/{name}/fail` and `POST /admin/actors/wal/stall?ms=N` (the next WAL
//! commit hangs that long, as on a hung disk). The control plane's door: `POST /admin/control`,
//! `GET /admin/control/{command_id}`, `GET /admin/control?limit=N` (see `control.rs`).

mod control;
mod dlq;
mod tree;
mod wal;

use edge_gateway_actors::addr::SendError;
use edge_gateway_actors::ingest::auth::{ct_eq, hash_token};
use edge_gateway_actors::wal::WalMsg;
use edge_gateway_config::Config;
use edge_gateway_supervisors::tree::Handles;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use warp::http::StatusCode;
use warp::{Filter, Reply};

pub struct AdminServer {
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
}

impl AdminServer {
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }
}

struct Ctx {
    handles: Handles,
    admin_hash: crate::credentials::AdminHash,
    chaos: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn json_status(v: serde_json::Value, s: StatusCode) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(&v), s).into_response()
}

/// `None` when the admin token is right, else the response refusing the request.
fn refused(ctx: &Ctx, header: Option<&str>) -> Option<warp::reply::Response> {
    let token = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    match token {
        Some(t) if ct_eq(&hash_token(t), &ctx.admin_hash.read().expect("admin hash")) => None,
        Some(_) => Some(json_status(
            json!({"error": "forbidden", "message": "wrong admin token"}),
            StatusCode::FORBIDDEN,
        )),
        None => Some(json_status(
            json!({"error": "unauthorized", "message": "admin token required: Authorization: Bearer <token>"}),
            StatusCode::UNAUTHORIZED,
        )),
    }
}

/// Readiness (see [`edge_gateway_actors::readiness`]).
fn readiness(h: &Handles) -> (bool, serde_json::Value) {
    edge_gateway_actors::readiness::readiness(
        &h.directory,
        &h.metrics,
        &h.sink_health,
        h.mqtt.as_ref(),
    )
}

fn refresh_actor_metrics(h: &Handles) {
    let m = &h.metrics;
    for e in h.directory.all() {
        m.actor_mailbox_depth
            .with_label_values(&[e.name()])
            .set(e.depth());
        m.actor_mailbox_depth_max
            .with_label_values(&[e.name()])
            .set(e.max_depth());
        let up = matches!(e.status(), Some(ractor::ActorStatus::Running));
        m.actor_up.with_label_values(&[e.name()]).set(i64::from(up));
        // Touch the restart counter so every actor is listed, restarted or not.
        let _ = m.actor_restarts.with_label_values(&[e.name()]);
    }
}

async fn route(
    ctx: Arc<Ctx>,
    method: warp::http::Method,
    path: warp::path::FullPath,
    authz: Option<String>,
    query: std::collections::HashMap<String, String>,
) -> Result<warp::reply::Response, std::convert::Infallible> {
    let h = &ctx.handles;
    let segs: Vec<&str> = path.as_str().trim_matches('/').split('/').collect();
    let get = method == warp::http::Method::GET;
    let resp = match (get, segs.as_slice()) {
        (true, ["healthz"]) => {
            let problems = {
                let last = h.liveness.lock().expect("liveness").clone();
                edge_gateway_actors::liveness::check(&last, now_ms())
            };
            if problems.is_empty() {
                json_status(json!({"status": "ok"}), StatusCode::OK)
            } else {
                json_status(
                    json!({"status": "wedged", "problems": problems}),
                    StatusCode::INTERNAL_SERVER_ERROR,
                )
            }
        }
        (true, ["readyz"]) => {
            let (ready, body) = readiness(h);
            json_status(
                body,
                if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
            )
        }
        (true, ["version"]) => json_status(
            json!({"version": crate::VERSION, "commit": crate::GIT_COMMIT}),
            StatusCode::OK,
        ),
        (true, ["metrics"]) => {
            refresh_actor_metrics(h);
            if let Ok(stats) = h
                .wal
                .call(WalMsg::Stats, Some(Duration::from_secs(2)))
                .await
            {
                h.metrics.observe_wal(&stats);
            }
            warp::reply::with_header(
                h.metrics.render(),
                "content-type",
                "text/plain; version=0.0.4",
            )
            .into_response()
        }
        (_, ["admin", ..]) => match refused(&ctx, authz.as_deref()) {
            Some(r) => r,
            None if method == warp::http::Method::DELETE => dlq::purge(h, &segs[1..], &query).await,
            None => admin_route(&ctx, get, &segs[1..], &query).await,
        },
        _ => json_status(json!({"error": "not_found"}), StatusCode::NOT_FOUND),
    };
    Ok(resp)
}

async fn admin_route(
    ctx: &Ctx,
    get: bool,
    segs: &[&str],
    query: &std::collections::HashMap<String, String>,
) -> warp::reply::Response {
    let h = &ctx.handles;
    match (get, segs) {
        (true, ["tree"]) => json_status(tree::render(&h.directory), StatusCode::OK),
        (true, ["control"]) => {
            let limit = query
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100usize)
                .min(10_000);
            control::list(ctx, limit).await
        }
        (true, ["control", id]) => control::get(ctx, id).await,
        (true, ["wal"]) => match h
            .wal
            .call(WalMsg::Stats, Some(Duration::from_secs(5)))
            .await
        {
            Ok(s) => json_status(serde_json::to_value(s).unwrap_or_default(), StatusCode::OK),
            Err(e) => unavailable(e),
        },
        (true, ["dead-letters", sink]) => dlq::list(h, sink, query).await,
        (true, ["dead-letters", sink, "export"]) => dlq::export(h, sink, query).await,
        (true, ["wal", "history"]) => dlq::history(h, query).await,
        (true, ["rejected"]) => {
            let limit = query
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100usize)
                .min(10_000);
            match h
                .wal
                .call(
                    |reply| WalMsg::Rejected { limit, reply },
                    Some(Duration::from_secs(5)),
                )
                .await
            {
                Ok(Err(why)) => read_failed(why),
                Ok(Ok(rows)) => {
                    let items: Vec<_> = rows.iter().map(|(id, r)| r.to_json(*id)).collect();
                    json_status(json!({"rejected": items}), StatusCode::OK)
                }
                Err(e) => unavailable(e),
            }
        }
        (true, ["mqtt"]) => match &h.mqtt {
            Some(m) => {
                let st = m.lock().expect("status lock").clone();
                json_status(serde_json::to_value(st).unwrap_or_default(), StatusCode::OK)
            }
            None => json_status(json!({"enabled": false}), StatusCode::OK),
        },
        (true, ["records", id]) => wal::find_record(h, wal::percent_decode(id)).await,
        (true, ["records"]) => match query.get("id") {
            Some(id) => wal::find_record(h, id.clone()).await,
            None => json_status(
                json!({"error": "bad_request", "field": "id", "message": "GET /admin/records/{id} or /admin/records?id=…"}),
                StatusCode::BAD_REQUEST,
            ),
        },
        (false, ["wal", "backup"]) => wal::backup(h, query).await,
        (false, ["dead-letters", sink, "requeue"]) => dlq::requeue(h, sink, query).await,
        (true, ["devices"]) => {
            let limit = query
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(1000usize)
                .min(100_000);
            let silent = query
                .get("silent_for")
                .and_then(|v| humantime::parse_duration(v).ok())
                .map(|d| d.as_millis() as u64);
            let list = h.metrics.devices.list(limit, silent, now_ms());
            json_status(json!({"devices": list}), StatusCode::OK)
        }
        (true, ["outages"]) => {
            let since_ms = query
                .get("since")
                .and_then(|v| humantime::parse_duration(v).ok())
                .map_or(0, |d| now_ms().saturating_sub(d.as_millis() as u64));
            let dd = h.live.get().data_dir.clone();
            match tokio::task::spawn_blocking(move || crate::outage_reports(&dd, since_ms)).await {
                Ok(Ok(r)) => json_status(json!({"outages": r}), StatusCode::OK),
                Ok(Err(e)) => json_status(
                    json!({"error": "unreadable", "message": e.to_string()}),
                    StatusCode::SERVICE_UNAVAILABLE,
                ),
                Err(e) => json_status(
                    json!({"error": "unavailable", "message": e.to_string()}),
                    StatusCode::SERVICE_UNAVAILABLE,
                ),
            }
        }
        (false, ["actors", "wal", "stall"]) => {
            if !ctx.chaos {
                return json_status(
                    json!({"error": "forbidden", "message": "chaos hooks are off (admin.chaos = false)"}),
                    StatusCode::FORBIDDEN,
                );
            }
            let ms = query
                .get("ms")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1000)
                .min(600_000);
            match h.wal.cast(WalMsg::Stall(Duration::from_millis(ms))) {
                Ok(()) => json_status(json!({"stalled_ms": ms}), StatusCode::ACCEPTED),
                Err(e) => unavailable(e),
            }
        }
        (false, ["actors", name, "fail"]) => {
            if !ctx.chaos {
                return json_status(
                    json!({"error": "forbidden", "message": "chaos hooks are off (admin.chaos = false)"}),
                    StatusCode::FORBIDDEN,
                );
            }
            match h.directory.get(name) {
                None => json_status(
                    json!({"error": "not_found", "message": format!("no actor named {name:?}")}),
                    StatusCode::NOT_FOUND,
                ),
                Some(e) => {
                    if e.inject_failure("admin API request".into()) {
                        tracing::warn!(actor = %name, "failure injected through the admin API");
                        json_status(json!({"failed": name}), StatusCode::ACCEPTED)
                    } else {
                        json_status(
                            json!({"error": "not_running", "message": format!("{name} is not running")}),
                            StatusCode::CONFLICT,
                        )
                    }
                }
            }
        }
        _ => json_status(json!({"error": "not_found"}), StatusCode::NOT_FOUND),
    }
}

/// The WAL could not read what was asked: a 503 with the reason, never an empty 200.
fn read_failed(why: String) -> warp::reply::Response {
    json_status(
        json!({"error": "unavailable", "message": format!("WAL read failed: {why}")}),
        StatusCode::SERVICE_UNAVAILABLE,
    )
}

fn unavailable(e: SendError) -> warp::reply::Response {
    json_status(
        json!({"error": "unavailable", "message": e.to_string()}),
        StatusCode::SERVICE_UNAVAILABLE,
    )
}

/// Binds the admin listener and serves it until [`AdminServer::stop`].
pub async fn start(
    cfg: &Config,
    handles: Handles,
    admin_hash: crate::credentials::AdminHash,
    reloader: &edge_gateway_actors::reload::Reloader,
) -> Result<AdminServer, String> {
    let listener = tokio::net::TcpListener::bind(cfg.admin.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", cfg.admin.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(addr = %addr, chaos = cfg.admin.chaos, "admin API listening");
    let ctx_metrics = handles.metrics.clone();
    let ctx = Arc::new(Ctx {
        handles,
        admin_hash,
        chaos: cfg.admin.chaos,
    });
    let control_ctx = ctx.clone();
    // POST /admin/control carries a body (a command, 64 KiB at most); every other route none.
    let control_post = warp::post()
        .and(warp::path!("admin" / "control"))
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::content_length_limit(64 * 1024))
        .and(warp::body::bytes())
        .then(
            move |authz: Option<String>, body: warp::hyper::body::Bytes| {
                let ctx = control_ctx.clone();
                async move {
                    match refused(&ctx, authz.as_deref()) {
                        Some(r) => r,
                        None => control::post(&ctx, &body).await,
                    }
                }
            },
        );
    // POST /admin/wal/replay?sink=S carries JSON Lines (a chunk of records, 8 MiB at most).
    let replay_ctx = ctx.clone();
    let replay_post = warp::post()
        .and(warp::path!("admin" / "wal" / "replay"))
        .and(warp::header::optional::<String>("authorization"))
        .and(
            warp::query::<std::collections::HashMap<String, String>>()
                .or(warp::any().map(Default::default))
                .unify(),
        )
        .and(warp::body::content_length_limit(8 << 20))
        .and(warp::body::bytes())
        .then(
            move |authz: Option<String>,
                  q: std::collections::HashMap<String, String>,
                  body: warp::hyper::body::Bytes| {
                let ctx = replay_ctx.clone();
                async move {
                    match refused(&ctx, authz.as_deref()) {
                        Some(r) => r,
                        None => wal::replay(&ctx.handles, &q, &body).await,
                    }
                }
            },
        );
    let filter = warp::any()
        .map(move || ctx.clone())
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::header::optional::<String>("authorization"))
        .and(
            warp::query::<std::collections::HashMap<String, String>>()
                .or(warp::any().map(Default::default))
                .unify(),
        )
        .and_then(route);
    let filter = control_post
        .or(replay_post)
        .unify()
        .or(filter)
        .unify()
        .recover(|_r: warp::Rejection| async {
            Ok::<_, std::convert::Infallible>(json_status(
                json!({"error": "bad_request"}),
                StatusCode::BAD_REQUEST,
            ))
        })
        .unify();
    let tls = match &cfg.admin.tls {
        Some(t) => Some(edge_gateway_actors::serve::TlsAcceptor::new(t)?),
        None => None,
    };
    if let Some(t) = &tls {
        reloader.register("admin", Arc::new(t.clone()));
    }
    let (tx, rx) = watch::channel(false);
    let limits = edge_gateway_actors::serve::Limits {
        listener: "admin",
        header_read_timeout: Duration::from_millis(cfg.http.header_read_timeout_ms),
        max_connections: cfg.admin.max_connections,
        max_per_peer: cfg.admin.max_connections_per_peer,
    };
    let metrics = Some(ctx_metrics);
    tokio::spawn(edge_gateway_actors::serve::serve(
        listener, filter, limits, metrics, tls, rx,
    ));
    Ok(AdminServer { addr, shutdown: tx })
}
