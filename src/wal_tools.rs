//! Offline WAL tools for the operator (issue 14): carry a renamed sink's records over, or drop
//! a removed sink's, with the gateway stopped. Each change is counted, logged and appended to
//! `data/audit.jsonl` (fsync'd) — what was done to readings, by whom is the host's business.

use crate::online::{admin_request, url_segment, AdminAccess, OnlineError};
use edge_gateway_actors::wal::{
    Op, OpResult, OrphanedSink, Removal, SinksChanged, WalError, WalLimits, WalStats, WalStore,
};
use edge_gateway_config::Config;
use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum WalToolError {
    #[error(
        "the WAL is open in a running gateway: stop it first (while it runs, remove the sink \
         with `config.apply` and a disposition: drop or move_to)"
    )]
    Running,
    #[error(
        "sink {0:?} is still in the configuration: its records are delivered; remove it from \
         the configuration first"
    )]
    StillConfigured(String),
    #[error("sink {0:?} is not in the configuration: add it first, so something delivers them")]
    NotConfigured(String),
    #[error("the WAL holds nothing for sink {0:?}")]
    Nothing(String),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("audit log {path}: {source}")]
    Audit {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn configured(cfg: &Config) -> Vec<String> {
    cfg.sinks.iter().map(|s| s.name().to_string()).collect()
}

fn open(cfg: &Config) -> Result<WalStore, WalToolError> {
    let limits = WalLimits::from_config(&cfg.wal, &cfg.delivery);
    WalStore::open(&cfg.data_dir.join("wal.redb"), configured(cfg), limits).map_err(|e| match e {
        WalError::AlreadyOpen => WalToolError::Running,
        e => WalToolError::Wal(e),
    })
}

/// Counts by state and sink, read without the writer, and the sinks the WAL holds records for
/// that `cfg` lacks.
pub fn stats(cfg: &Config) -> Result<WalStats, WalError> {
    let mut s = WalStore::offline_stats(&cfg.data_dir.join("wal.redb"))?;
    let names = configured(cfg);
    s.orphaned = s
        .sinks
        .iter()
        .filter(|k| !names.contains(&k.sink) && (k.pending > 0 || k.dead > 0))
        .map(|k| OrphanedSink {
            sink: k.sink.clone(),
            pending: k.pending,
            dead: k.dead,
        })
        .collect();
    Ok(s)
}

/// `from`'s pending records and dead letters become `to`'s (a renamed sink).
pub fn move_sink(cfg: &Config, from: &str, to: &str) -> Result<SinksChanged, WalToolError> {
    let names = configured(cfg);
    if names.iter().any(|n| n == from) {
        return Err(WalToolError::StillConfigured(from.into()));
    }
    if !names.iter().any(|n| n == to) {
        return Err(WalToolError::NotConfigured(to.into()));
    }
    change(cfg, from, Removal::Rename(to.into()), "wal.move-sink")
}

/// `sink`'s pending records and dead letters are deleted.
pub fn drop_sink(cfg: &Config, sink: &str) -> Result<SinksChanged, WalToolError> {
    if configured(cfg).iter().any(|n| n == sink) {
        return Err(WalToolError::StillConfigured(sink.into()));
    }
    change(cfg, sink, Removal::Drop, "wal.drop-sink")
}

fn change(
    cfg: &Config,
    sink: &str,
    how: Removal,
    action: &str,
) -> Result<SinksChanged, WalToolError> {
    let store = open(cfg)?;
    let held = store
        .stats()
        .sinks
        .iter()
        .find(|k| k.sink == sink)
        .is_some_and(|k| k.pending > 0 || k.dead > 0);
    if !held {
        return Err(WalToolError::Nothing(sink.into()));
    }
    let now = store.clock_ms();
    let op = Op::Sinks {
        sinks: configured(cfg),
        removed: vec![(sink.to_string(), how.clone())],
    };
    let (_, results) = store.apply(vec![op], now)?;
    let changed = match results.into_iter().next() {
        Some(OpResult::SinksSet(c)) => c,
        _ => SinksChanged::default(),
    };
    let to = match &how {
        Removal::Rename(t) | Removal::MoveTo(t) => Some(t.as_str()),
        Removal::Drop => None,
    };
    tracing::warn!(
        action,
        sink,
        to,
        moved = changed.moved,
        moved_dead = changed.moved_dead,
        dropped = changed.dropped,
        "WAL changed from the command line"
    );
    audit(
        &cfg.data_dir,
        action,
        serde_json::json!({
            "sink": sink,
            "to": to,
            "moved": changed.moved,
            "moved_dead": changed.moved_dead,
            "dropped": changed.dropped,
        }),
    )?;
    Ok(changed)
}

/// `wal verify`: the WAL's pages and invariants (gateway stopped).
pub fn verify(
    cfg: &Config,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<edge_gateway_actors::wal::VerifyReport, WalToolError> {
    WalStore::verify_with(&cfg.data_dir.join("wal.redb"), progress).map_err(|e| match e {
        WalError::AlreadyOpen => WalToolError::Running,
        e => WalToolError::Wal(e),
    })
}

/// `wal compact` (gateway stopped).
pub fn compact(cfg: &Config) -> Result<edge_gateway_actors::wal::Compacted, WalToolError> {
    WalStore::offline_compact(&cfg.data_dir.join("wal.redb")).map_err(|e| match e {
        WalError::AlreadyOpen => WalToolError::Running,
        e => WalToolError::Wal(e),
    })
}

/// `wal repair` (gateway stopped): quarantines what cannot be kept, recomputes the rest;
/// logged and audited.
pub fn repair(
    cfg: &Config,
    quarantine: Option<&Path>,
) -> Result<edge_gateway_actors::wal::RepairReport, WalToolError> {
    let q = quarantine.map_or_else(|| cfg.data_dir.join("quarantine.jsonl"), Path::to_path_buf);
    let r = WalStore::offline_repair(&cfg.data_dir.join("wal.redb"), &q).map_err(|e| match e {
        WalError::AlreadyOpen => WalToolError::Running,
        e => WalToolError::Wal(e),
    })?;
    tracing::warn!(
        records_quarantined = r.records_quarantined,
        rows_quarantined = r.rows_quarantined,
        times_added = r.times_added,
        counters_fixed = r.counters_fixed,
        quarantine = %q.display(),
        "WAL repaired from the command line"
    );
    audit(
        &cfg.data_dir,
        "wal.repair",
        serde_json::json!({
            "report": r,
        }),
    )?;
    Ok(r)
}

/// The report for a terminal.
pub fn verify_text(r: &edge_gateway_actors::wal::VerifyReport) -> String {
    let mut out = format!(
        "{}: {} records, {} pending rows, {} dead rows, {} delivered records kept as history\n",
        r.path, r.records, r.pending_rows, r.dead_rows, r.history_records
    );
    if r.ok() {
        out.push_str("OK: every page and every invariant checked holds\n");
        return out;
    }
    for p in &r.problems {
        out.push_str(&format!("PROBLEM [{}] {}\n", p.kind, p.detail));
    }
    if r.problems_not_listed > 0 {
        out.push_str(&format!("… and {} more\n", r.problems_not_listed));
    }
    out.push_str(
        "NOT OK: keep a copy of the file; see docs/operations.md, \"The WAL file is corrupt\"\n",
    );
    out
}

/// Where `wal backup` takes its copy from.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupVia {
    /// The gateway was stopped: the file was read directly.
    File,
    /// Through the running gateway's admin API (`POST /admin/wal/backup`).
    Gateway(String),
}

/// `wal backup DEST`: a consistent copy of the WAL at `dest` (a new file). With the gateway
/// stopped, from the file; while it runs, through its admin API (found in `data/admin.addr`),
/// beside its commits.
pub fn backup(
    cfg: &Config,
    dest: &Path,
    access: &AdminAccess,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(edge_gateway_actors::wal::BackupReport, BackupVia), OnlineError> {
    let dest = std::path::absolute(dest).map_err(|e| WalError::Storage(e.to_string()))?;
    match WalStore::offline_backup(&cfg.data_dir.join("wal.redb"), &dest, progress) {
        Ok(r) => return Ok((r, BackupVia::File)),
        Err(WalError::AlreadyOpen) => {}
        Err(e) => return Err(e.into()),
    }
    let (status, body) = admin_request(
        cfg,
        access,
        reqwest::Method::POST,
        "/admin/wal/backup",
        &[("dest", dest.display().to_string())],
    )?;
    if !(200..300).contains(&status) {
        return Err(OnlineError::Refused(format!("HTTP {status}: {body}")));
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| OnlineError::Refused(format!("{e}: {body}")))?;
    let report = edge_gateway_actors::wal::BackupReport {
        dest: v["dest"].as_str().unwrap_or_default().to_string(),
        records: v["records"].as_u64().unwrap_or(0),
        bytes: v["bytes"].as_u64().unwrap_or(0),
        millis: v["millis"].as_u64().unwrap_or(0),
    };
    let base = std::fs::read_to_string(cfg.data_dir.join("admin.addr")).unwrap_or_default();
    Ok((report, BackupVia::Gateway(base.trim().to_string())))
}

/// `wal show ID`: the record a WAL seq, correlation id or idempotency key names, with its state
/// per sink — from the file when the gateway is stopped, else through its admin API.
pub fn show(
    cfg: &Config,
    id: &str,
    access: &AdminAccess,
) -> Result<Option<serde_json::Value>, OnlineError> {
    match WalStore::offline_find(&cfg.data_dir.join("wal.redb"), id) {
        Ok(v) => return Ok(v.map(|v| serde_json::to_value(v).unwrap_or_default())),
        Err(WalError::AlreadyOpen) => {}
        Err(e) => return Err(e.into()),
    }
    let (status, body) = admin_request(
        cfg,
        access,
        reqwest::Method::GET,
        &format!("/admin/records/{}", url_segment(id)),
        &[],
    )?;
    match status {
        404 => Ok(None),
        200 => serde_json::from_str(&body)
            .map(Some)
            .map_err(|e| OnlineError::Refused(format!("{e}: {body}"))),
        s => Err(OnlineError::Refused(format!("HTTP {s}: {body}"))),
    }
}

/// Appends one line to `data/audit.jsonl`, durably: when, what, who (`$USER`), and `details`
/// (a JSON object) merged in.
pub fn audit(
    data_dir: &Path,
    action: &str,
    details: serde_json::Value,
) -> Result<(), WalToolError> {
    let mut line = serde_json::json!({
        "at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "action": action,
        "user": std::env::var("USER").unwrap_or_default(),
    });
    if let (Some(l), serde_json::Value::Object(d)) = (line.as_object_mut(), details) {
        l.extend(d);
    }
    let path = data_dir.join("audit.jsonl");
    let err = |source| WalToolError::Audit {
        path: path.display().to_string(),
        source,
    };
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o640);
    let mut f = o.open(&path).map_err(err)?;
    let mut buf = serde_json::to_vec(&line).expect("JSON");
    buf.push(b'\n');
    f.write_all(&buf).map_err(err)?;
    f.sync_data().map_err(err)
}
