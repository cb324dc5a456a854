//! `edge-gateway dlq list | export | requeue | purge` (issue 14, part 2): a sink's dead letters,
//! filtered, with the gateway stopped (from the WAL file) or running (through its admin API,
//! `crate::online`). Export streams JSON Lines: a million entries need no more memory than
//! one chunk. Requeue and purge print their counts, log a warning and are audited.

use crate::online::{admin_request, AdminAccess, OnlineError};
use crate::wal_tools::audit;
use edge_gateway_actors::wal::{
    DeadClass, DeadFilter, DeadRow, Op, OpResult, WalError, WalLimits, WalReader, WalStore,
};
use edge_gateway_config::Config;
use std::io::Write;

/// The filters, as given on the command line (times as RFC 3339 or a duration back).
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub device: Option<String>,
    pub reason: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
}

impl Filters {
    /// As the admin API's query.
    fn query(&self) -> Vec<(&'static str, String)> {
        [
            ("device", &self.device),
            ("reason", &self.reason),
            ("since", &self.since),
            ("until", &self.until),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }

    /// As the store's filter.
    pub fn filter(&self) -> Result<DeadFilter, String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let time = |s: &Option<String>| s.as_deref().map(|s| when(s, now)).transpose();
        Ok(DeadFilter {
            reason: match &self.reason {
                None => None,
                Some(r) => Some(DeadClass::parse(r).ok_or_else(|| {
                    format!(
                        "--reason {r:?} must be one of {:?}",
                        DeadClass::ALL.map(DeadClass::as_str)
                    )
                })?),
            },
            device: self.device.clone(),
            since_ms: time(&self.since)?,
            until_ms: time(&self.until)?,
            older_than_ms: None,
        })
    }
}

/// RFC 3339, or a duration back from `now_ms`.
pub fn when(s: &str, now_ms: u64) -> Result<u64, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64));
    }
    humantime::parse_duration(s)
        .map(|d| now_ms.saturating_sub(d.as_millis() as u64))
        .map_err(|_| format!("{s:?} is neither a time (RFC 3339) nor a duration back (24h)"))
}

fn reader(cfg: &Config) -> Result<Option<WalReader>, OnlineError> {
    match WalReader::offline(&cfg.data_dir.join("wal.redb")) {
        Ok(r) => Ok(Some(r)),
        Err(WalError::AlreadyOpen) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn bad(e: String) -> OnlineError {
    OnlineError::Refused(e)
}

/// One page of `sink`'s dead letters and the cursor of the next.
pub fn list(
    cfg: &Config,
    access: &AdminAccess,
    sink: &str,
    f: &Filters,
    after: Option<u64>,
    limit: usize,
) -> Result<serde_json::Value, OnlineError> {
    if let Some(r) = reader(cfg)? {
        let (rows, next) = r.dead_page(sink, &f.filter().map_err(bad)?, after, limit)?;
        return Ok(serde_json::json!({"dead_letters": rows, "next": next}));
    }
    let mut q = f.query();
    q.push(("limit", limit.to_string()));
    if let Some(a) = after {
        q.push(("after", a.to_string()));
    }
    let path = format!("/admin/dead-letters/{}", crate::online::url_segment(sink));
    let (status, body) = admin_request(cfg, access, reqwest::Method::GET, &path, &q)?;
    if status != 200 {
        return Err(OnlineError::Refused(format!("HTTP {status}: {body}")));
    }
    serde_json::from_str(&body).map_err(|e| OnlineError::Refused(format!("{e}: {body}")))
}

/// Every match as JSON Lines into `out`; the count written. `progress` is called with the
/// running count (for a terminal's progress line).
pub fn export(
    cfg: &Config,
    access: &AdminAccess,
    sink: &str,
    f: &Filters,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, OnlineError> {
    if let Some(r) = reader(cfg)? {
        let mut n = 0u64;
        let mut failed = None;
        r.dead_each(sink, &f.filter().map_err(bad)?, None, |row: DeadRow| {
            if let Err(e) = crate::replay::json_line(&mut *out, &row) {
                failed = Some(e);
                return false;
            }
            n += 1;
            if n.is_multiple_of(10_000) {
                progress(n);
            }
            true
        })?;
        if let Some(e) = failed {
            return Err(OnlineError::Refused(format!("writing the export: {e}")));
        }
        out.flush()
            .map_err(|e| OnlineError::Refused(format!("writing the export: {e}")))?;
        return Ok(n);
    }
    let path = format!(
        "/admin/dead-letters/{}/export",
        crate::online::url_segment(sink)
    );
    crate::online::admin_stream(cfg, access, &path, &f.query(), out, progress)
}

/// Requeue (`purge: false`) or purge up to `limit` matches; the count.
pub fn change(
    cfg: &Config,
    access: &AdminAccess,
    sink: &str,
    f: &Filters,
    limit: usize,
    purge: bool,
) -> Result<usize, OnlineError> {
    let filter = f.filter().map_err(bad)?;
    let action = if purge { "dlq.purge" } else { "dlq.requeue" };
    let limits = WalLimits::from_config(&cfg.wal, &cfg.delivery);
    let sinks = cfg.sinks.iter().map(|s| s.name().to_string()).collect();
    let n = match WalStore::open(&cfg.data_dir.join("wal.redb"), sinks, limits) {
        Ok(store) => {
            let now = store.clock_ms();
            let op = if purge {
                Op::PurgeDead {
                    sink: sink.into(),
                    filter,
                    limit,
                }
            } else {
                Op::Requeue {
                    sink: sink.into(),
                    limit,
                    filter,
                }
            };
            let (_, results) = store.apply(vec![op], now)?;
            match results.first() {
                Some(OpResult::Purged { purged, .. }) => *purged,
                Some(OpResult::Requeued(n)) => *n,
                _ => 0,
            }
        }
        Err(WalError::AlreadyOpen) => {
            let mut q = f.query();
            q.push(("limit", limit.to_string()));
            let seg = crate::online::url_segment(sink);
            let (method, path) = if purge {
                (
                    reqwest::Method::DELETE,
                    format!("/admin/dead-letters/{seg}"),
                )
            } else {
                (
                    reqwest::Method::POST,
                    format!("/admin/dead-letters/{seg}/requeue"),
                )
            };
            let (status, body) = admin_request(cfg, access, method, &path, &q)?;
            if status != 200 {
                return Err(OnlineError::Refused(format!("HTTP {status}: {body}")));
            }
            let v: serde_json::Value = serde_json::from_str(&body)
                .map_err(|e| OnlineError::Refused(format!("{e}: {body}")))?;
            v[if purge { "purged" } else { "requeued" }]
                .as_u64()
                .unwrap_or(0) as usize
        }
        Err(e) => return Err(e.into()),
    };
    tracing::warn!(
        action,
        sink,
        count = n,
        "dead letters changed from the command line"
    );
    audit(
        &cfg.data_dir,
        action,
        serde_json::json!({
            "sink": sink,
            "filters": f.query().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            "count": n,
        }),
    )
    .map_err(|e| OnlineError::Refused(e.to_string()))?;
    Ok(n)
}
