//! `Router`: one path from every ingest edge into the WAL — validate, normalise, enrich, hand
//! over. Not an actor: it is called on the caller's task (each HTTP connection's, the MQTT
//! session's), so decoding one large body never makes other devices' readings wait in a
//! shared mailbox, and a router has no state to lose. (It was an actor until issue 8: every
//! payload of every device waited in its single mailbox while one was decoded.)
//!
//! The router never waits for the WAL: it casts the records with a reply port that goes
//! straight back to the caller, so the WAL sees many appends at once (group commit).

use super::parse::{decode, to_records, validate_device_id, Encoding, Envelope, Rejection};
use crate::addr::Addr;
use crate::wal::{AppendReply, Record, Source, WalMsg};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// One ingest request as the edge received it.
#[derive(Debug)]
pub struct IngestRequest {
    pub device_id: String,
    pub source: Source,
    pub body: bytes::Bytes,
    /// `None`: detect from the payload (MQTT).
    pub encoding: Option<Encoding>,
    pub idempotency_key: Option<String>,
    /// The trace context its records store (`traces::IngestSpan::record_context`).
    pub trace: Option<crate::traces::TraceParent>,
}

/// Records on their way into the WAL: `commit` resolves when they are durable (or refused).
pub struct PendingAppend {
    pub commit: oneshot::Receiver<AppendReply>,
    pub readings: usize,
}

/// Shared by the ingest edges (cheap to clone).
#[derive(Clone)]
pub struct Router {
    pub gateway_id: String,
    pub max_batch: usize,
    pub wal: Addr<WalMsg>,
    pub routes: super::routes::RouteTable,
    /// Per-device health is noted as readings come in (`crate::devices`).
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Router {
    /// Validation and enrichment: everything but the hand-off to the WAL.
    pub fn prepare(&self, req: IngestRequest, now_ms: u64) -> Result<Vec<Record>, Rejection> {
        validate_device_id(&req.device_id)?;
        let enc = req.encoding.unwrap_or_else(|| Encoding::sniff(&req.body));
        let readings = decode(&req.body, enc, self.max_batch)?;
        let env = Envelope {
            device_id: req.device_id,
            source: req.source,
            gateway_id: self.gateway_id.clone(),
            receive_ts_ms: now_ms,
            idempotency_key: req.idempotency_key,
            trace: req.trace,
        };
        let mut records = to_records(&env, readings, || uuid::Uuid::new_v4().to_string())?;
        let routes = self.routes.current();
        for (i, r) in records.iter_mut().enumerate() {
            r.route = routes.route(r).map_err(|_| {
                let at = if i == 0 {
                    String::new()
                } else {
                    format!(" (reading {i})")
                };
                Rejection::new(
                    422,
                    "no_route",
                    Some("device_id".into()),
                    format!(
                        "no routing rule takes device {:?} from {} with schema {}{at}: add a \
                         [[routes]] rule (or a catch-all, devices = \"*\")",
                        r.device_id,
                        r.source.as_str(),
                        r.schema
                    ),
                )
            })?;
        }
        Ok(records)
    }

    /// Prepares the request and hands its records to the WAL. An `Unavailable` rejection means nothing
    /// was handed over (the WAL is restarting): retry.
    pub fn submit(&self, req: IngestRequest) -> Result<PendingAppend, Rejection> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let records = self.prepare(req, now)?;
        for (field, _) in self.metrics.devices.saw(&records) {
            self.metrics.implausible.with_label_values(&[&field]).inc();
        }
        let readings = records.len();
        let (tx, rx) = oneshot::channel();
        self.wal
            .cast(WalMsg::Append {
                records,
                reply: tx.into(),
            })
            .map_err(|e| Rejection::unavailable("unavailable", e.to_string()))?;
        Ok(PendingAppend {
            commit: rx,
            readings,
        })
    }
}
