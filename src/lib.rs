//! edge-gateway: device telemetry from the edge to the cloud, never losing what it acknowledged.
//!
//! # Layout
//! - `config/` (crate `edge-gateway-config`): typed configuration and its layers.
//! - `actors/` (crate `edge-gateway-actors`): the WAL, ingest router, HTTP edge, dispatcher,
//!   sink publishers — each a ractor actor with its logic in a plain state type.
//! - `supervisors/` (crate `edge-gateway-supervisors`): the supervision tree and restart budgets.
//! - this crate: [`run`] wires config, credentials, the tree and the [`admin`] API together;
//!   `main.rs` is only the command line.
//!
//! # The promise
//! A reading is acknowledged (HTTP 202) only after the WAL commit holding it returned from
//! an fsync'd redb transaction. Everything downstream is at-least-once, keyed by a stable
//! idempotency key.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cbor_seq;
mod credentials;
pub mod dlq_tools;
pub mod online;
pub mod replay;
pub mod wal_tools;

pub use credentials::{resolve_credentials, Credentials, CredentialsError};
pub use edge_gateway_config as config;

use edge_gateway_config::Config;
use edge_gateway_supervisors::{tree, Supervisor};
use std::future::Future;
use std::sync::Arc;

/// `sha256` of a token, as `auth.devices` wants it.
pub fn token_hash(token: &str) -> [u8; 32] {
    edge_gateway_actors::ingest::auth::hash_token(token)
}

/// Creates the data directory owner-only (0700) if it does not exist; an existing one is
/// the operator's (e.g. a container volume) and left as it is.
fn create_data_dir(dir: &std::path::Path) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Deletes dead letters of `sink` matching `filter` from a WAL no process holds open (the
/// CLI's `dead-letters purge`; a running gateway takes `DELETE /admin/dead-letters/{sink}`).
pub fn purge_dead_letters(
    cfg: &Config,
    sink: &str,
    filter: edge_gateway_actors::wal::DeadFilter,
    limit: usize,
) -> Result<usize, edge_gateway_actors::wal::WalError> {
    use edge_gateway_actors::wal::{Op, OpResult, WalLimits, WalStore};
    let sinks = cfg.sinks.iter().map(|s| s.name().to_string()).collect();
    let limits = WalLimits::from_config(&cfg.wal, &cfg.delivery);
    let store = WalStore::open(&cfg.data_dir.join("wal.redb"), sinks, limits)?;
    // WAL time (ages never follow the wall clock): where the gateway's clock stopped.
    let now = store.clock_ms();
    let op = Op::PurgeDead {
        sink: sink.to_string(),
        filter,
        limit,
    };
    let (_, results) = store.apply(vec![op], now)?;
    let purged = match results.first() {
        Some(OpResult::Purged { purged, .. }) => *purged,
        _ => 0,
    };
    tracing::warn!(sink, purged, "dead letters purged from the command line");
    Ok(purged)
}

/// WAL counts from a file no process holds open.
pub use edge_gateway_actors::wal::{DeadClass, DeadFilter};

/// The outages recorded in `data_dir` overlapping `since_ms` onwards (`report outages`).
pub fn outage_reports(
    data_dir: &std::path::Path,
    since_ms: u64,
) -> std::io::Result<Vec<edge_gateway_actors::outages::Report>> {
    edge_gateway_actors::outages::log::reports(data_dir, since_ms)
}

/// The outages as a table for a terminal.
pub fn outage_table(reports: &[edge_gateway_actors::outages::Report]) -> String {
    let when = |ms: u64| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string()
    };
    let secs = |s: Option<f64>| {
        s.map_or("-".to_string(), |s| {
            humantime::format_duration(std::time::Duration::from_secs(s.round() as u64)).to_string()
        })
    };
    let mut out = format!(
        "{:<12} {:<7} {:<20} {:<10} {:>8} {:>8} {:>10} {:>7}  {}\n",
        "SINK", "KIND", "STARTED", "LASTED", "BACKLOG", "PEAK", "DRAINED IN", "RESENT", "REASON"
    );
    for r in reports {
        let lasted = match r.ended_at_ms {
            Some(_) => secs(r.duration_secs),
            None => "ongoing".into(),
        };
        let drained = match (r.ended_at_ms, r.drained_at_ms) {
            (Some(_), None) => "draining".into(),
            _ => secs(r.drain_secs),
        };
        out.push_str(&format!(
            "{:<12} {:<7} {:<20} {:<10} {:>8} {:>8} {:>10} {:>7}  {}\n",
            r.sink,
            r.kind,
            when(r.started_at_ms),
            lasted,
            r.backlog_at_start,
            r.backlog_peak.map_or("-".into(), |p| p.to_string()),
            drained,
            r.resent.map_or("-".into(), |n| n.to_string()),
            r.last_reason.as_deref().unwrap_or(&r.reason)
        ));
    }
    if reports.is_empty() {
        out.push_str("(no outage recorded)\n");
    }
    out
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_COMMIT: &str = env!("EDGE_GATEWAY_GIT_COMMIT");

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("cannot create data directory {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error("supervision tree failed to start: {0}")]
    Start(String),
    #[error("http.tls: {0}")]
    Tls(String),
    #[error("admin API: {0}")]
    Admin(String),
    #[error(transparent)]
    Traces(#[from] edge_gateway_actors::traces::TraceError),
    #[error("the supervision tree gave up (restart budget exhausted); see the log for the failing actor")]
    TreeFailed,
}

/// Every second: is the gateway wedged? (`/healthz`; `edge_gateway_actors::liveness`). The
/// verdict's age is itself the runtime's heartbeat.
async fn monitor_liveness(h: tree::Handles, stall_ms: u64) {
    let mut m = edge_gateway_actors::liveness::Monitor::default();
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut runs = 0u64;
    loop {
        every.tick().await;
        runs += 1;
        if runs.is_multiple_of(60) {
            // Per-device health survives a restart (a SIGKILL loses at most a minute of it).
            let (metrics, dd) = (h.metrics.clone(), h.live.get().data_dir.clone());
            let _ = tokio::task::spawn_blocking(move || metrics.devices.save(&dd)).await;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        m.run(&h.directory, &h.metrics.pulse, now, stall_ms);
        let verdict = m.last.lock().expect("liveness").clone();
        if !verdict.1.is_empty() {
            tracing::error!(problems = ?verdict.1, "wedged: /healthz answers 500");
        }
        *h.liveness.lock().expect("liveness") = verdict;
    }
}

/// Reloads certificates and token files on SIGHUP (all of them) and when they change on disk
/// (polled every `WATCH_EVERY`).
async fn watch_files(r: Arc<edge_gateway_supervisors::reconfigure::Reconfigurer>) {
    use edge_gateway_actors::control::Reconfigure;
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    tokio::task::block_in_place(|| r.observe_certificates());
    let mut every = tokio::time::interval(edge_gateway_supervisors::tls_reload::WATCH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let forced = tokio::select! {
            _ = every.tick() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        #[cfg(not(unix))]
        let forced = {
            every.tick().await;
            false
        };
        if forced {
            tracing::info!("SIGHUP: reloading certificates and token files");
        }
        tokio::task::block_in_place(|| r.observe_certificates());
        match r.reload_tls(forced).await {
            Ok(v) if forced || v["restarted"].as_array().is_some_and(|a| !a.is_empty()) => {
                tracing::info!(report = %v, "certificates and token files reloaded")
            }
            Ok(_) => {}
            Err(v) => {
                tracing::error!(report = %v, "a reloaded file was refused; the files in use stay")
            }
        }
    }
}

/// Runs the gateway until `shutdown` resolves, then stops it in order: ingest first, the WAL
/// last. Returns an error if the tree gave up on its own.
pub async fn run(
    config: Config,
    layers: config::LoadOptions,
    set_log_level: Option<edge_gateway_supervisors::reconfigure::SetLogLevel>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    create_data_dir(&config.data_dir)
        .map_err(|e| RunError::DataDir(config.data_dir.display().to_string(), e))?;
    let creds = resolve_credentials(&config)?;
    // Fail fast on unreadable certificates rather than in a restart loop of the listener.
    if let Some(t) = &config.http.tls {
        edge_gateway_actors::serve::TlsAcceptor::new(t).map_err(RunError::Tls)?;
    }
    let metrics = Arc::new(edge_gateway_actors::metrics::Metrics::new());
    metrics.devices.set_cap(config.admin.max_tracked_devices);
    metrics.devices.set_ranges(config.admin.plausible.clone());
    for field in config.admin.plausible.keys() {
        let _ = metrics.implausible.with_label_values(&[field]);
    }
    metrics.devices.load(&config.data_dir);
    // Reads a headers file: off the workers (the export task it spawns needs the runtime,
    // which `block_in_place` keeps).
    if tokio::task::block_in_place(|| {
        edge_gateway_actors::traces::init(&config.tracing, &metrics.traces)
    })? {
        tracing::info!(
            endpoint = %config::redact_url(&config.tracing.endpoint),
            sampler = ?config.tracing.sampler,
            ratio = config.tracing.sampler_arg,
            "exporting traces over OTLP/HTTP"
        );
    }
    metrics
        .build_info
        .with_label_values(&[VERSION, GIT_COMMIT])
        .set(1);
    // Listener certificates and token files are re-read by `tls.reload`, on SIGHUP and when
    // they change on disk (supervisors/src/tls_reload.rs).
    let reloader = edge_gateway_actors::reload::Reloader::default();
    let ingest_auth = edge_gateway_actors::ingest::auth::AuthCell::new(creds.ingest.clone());
    let admin_hash: credentials::AdminHash = Arc::new(std::sync::RwLock::new(creds.admin_hash));
    reloader.register(
        "tokens",
        Arc::new(credentials::TokenFiles {
            config: config.clone(),
            ingest: ingest_auth.clone(),
            admin: admin_hash.clone(),
        }),
    );
    let (root_args, handles) = tree::build(
        &config,
        ingest_auth,
        reloader.clone(),
        metrics.clone(),
        layers,
        set_log_level,
    );
    let root_addr = handles.root.clone();
    let (root, root_join) = ractor::Actor::spawn(None, Supervisor, root_args)
        .await
        .map_err(|e| RunError::Start(e.to_string()))?;
    root_addr.bind(root.clone());
    let admin = admin::start(&config, handles.clone(), admin_hash, &reloader)
        .await
        .map_err(RunError::Admin)?;
    // Where the command line finds the running gateway (`wal backup`): the admin address.
    let scheme = if config.admin.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let addr_file = config.data_dir.join("admin.addr");
    let written = tokio::task::block_in_place(|| {
        std::fs::write(&addr_file, format!("{scheme}://{}\n", admin.addr))
    });
    if let Err(e) = written {
        tracing::warn!(path = %addr_file.display(), error = %e, "admin address not written");
    }
    let reloads = tokio::spawn(watch_files(handles.reconfigure.clone()));
    // The verdict starts fresh: the monitor's first run is on its way.
    *handles.liveness.lock().expect("liveness") = (
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        Vec::new(),
    );
    let liveness = tokio::spawn(monitor_liveness(
        handles.clone(),
        config.admin.liveness_stall_secs.saturating_mul(1000),
    ));
    if cfg!(feature = "negative-control") {
        tracing::error!(
            "NEGATIVE-CONTROL BUILD: WAL commits are not durable; a crash loses acknowledged \
             records. Only for proving the chaos harness sees loss."
        );
    }
    tracing::info!(
        version = VERSION,
        commit = GIT_COMMIT,
        http = %handles.http_bound.lock().ok().and_then(|g| *g).map_or_else(|| "disabled".to_string(), |a| a.to_string()),
        admin = %admin.addr,
        tls = config.http.tls.is_some(),
        data_dir = %config.data_dir.display(),
        mqtt = %if config.mqtt.enabled { config.mqtt.broker.as_str() } else { "disabled" },
        "edge-gateway ready"
    );
    tokio::pin!(root_join);
    let tree_failed = tokio::select! {
        _ = shutdown => false,
        _ = &mut root_join => true,
    };
    reloads.abort();
    liveness.abort();
    if tree_failed {
        admin.stop();
        return Err(RunError::TreeFailed);
    }
    tracing::info!("shutting down: ingest first, WAL last");
    root.stop(Some("shutdown".into()));
    let _ = root_join.await;
    if let Err(e) = tokio::task::block_in_place(|| handles.metrics.devices.save(&config.data_dir)) {
        tracing::warn!(error = %e, "per-device health not saved");
    }
    edge_gateway_actors::traces::flush(std::time::Duration::from_secs(3)).await;
    admin.stop();
    tracing::info!("stopped");
    Ok(())
}
