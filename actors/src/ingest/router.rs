//! `IngestRouter` actor: one path from every ingest edge into the WAL.
//!
//! Mailbox:
//! - `Ingest` <- HttpIngest (and later the MQTT session). Reply: a `PendingAppend` whose
//!   receiver resolves after the WAL commit holding the records, or a `Rejection` naming
//!   what is wrong with the input.
//! - `Fail`   <- admin API chaos hook.
//!
//! The router validates, normalises and enriches, then hands the records to the WAL with a
//! reply port that goes straight back to the caller: the router never waits for a commit, so
//! it is never the bottleneck of group commit.
//!
//! Failure: stateless; IngestSupervisor restarts it. Callers whose request was in its mailbox
//! get `SendError::NoReply` and answer 503: nothing was acknowledged.

use super::parse::{decode, to_records, validate_device_id, Encoding, Envelope, Rejection};
use crate::addr::{Addr, Failable};
use crate::metrics::Metrics;
use crate::wal::{AppendReply, Source, WalMsg};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

pub struct IngestRouter;

/// One ingest request as the edge received it.
#[derive(Debug)]
pub struct IngestRequest {
    pub device_id: String,
    pub source: Source,
    pub body: bytes::Bytes,
    /// `None`: detect from the payload (MQTT).
    pub encoding: Option<Encoding>,
    pub idempotency_key: Option<String>,
}

/// Records on their way into the WAL: `commit` resolves when they are durable (or refused).
pub struct PendingAppend {
    pub commit: oneshot::Receiver<AppendReply>,
    pub readings: usize,
}

pub enum IngestRouterMsg {
    Ingest {
        req: IngestRequest,
        reply: RpcReplyPort<Result<PendingAppend, Rejection>>,
    },
    Fail(String),
}

impl Failable for IngestRouterMsg {
    fn fail(reason: String) -> Self {
        IngestRouterMsg::Fail(reason)
    }
}

pub struct IngestRouterArgs {
    pub gateway_id: String,
    pub max_batch: usize,
    pub wal: Addr<WalMsg>,
    pub addr: Addr<IngestRouterMsg>,
    pub metrics: Arc<Metrics>,
}

pub struct IngestRouterState {
    args: IngestRouterArgs,
}

impl IngestRouterState {
    /// Validation and enrichment: everything but the hand-off to the WAL.
    pub fn prepare(
        &self,
        req: IngestRequest,
        now_ms: u64,
    ) -> Result<Vec<crate::wal::Record>, Rejection> {
        validate_device_id(&req.device_id)?;
        let enc = req.encoding.unwrap_or_else(|| Encoding::sniff(&req.body));
        let readings = decode(&req.body, enc, self.args.max_batch)?;
        let env = Envelope {
            device_id: req.device_id,
            source: req.source,
            gateway_id: self.args.gateway_id.clone(),
            receive_ts_ms: now_ms,
            idempotency_key: req.idempotency_key,
        };
        to_records(&env, readings, || uuid::Uuid::new_v4().to_string())
    }

    fn ingest(&self, req: IngestRequest) -> Result<PendingAppend, Rejection> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let records = self.prepare(req, now)?;
        let readings = records.len();
        let (tx, rx) = oneshot::channel();
        self.args
            .wal
            .cast(WalMsg::Append {
                records,
                reply: tx.into(),
            })
            .map_err(|e| Rejection::new(503, "unavailable", None, e.to_string()))?;
        Ok(PendingAppend {
            commit: rx,
            readings,
        })
    }
}

impl Actor for IngestRouter {
    type Msg = IngestRouterMsg;
    type State = IngestRouterState;
    type Arguments = IngestRouterArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: IngestRouterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(IngestRouterState { args })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.args.addr.received();
        match msg {
            IngestRouterMsg::Ingest { req, reply } => {
                // Refusals are counted by the edge that answers the device (it also refuses
                // things the router never sees, e.g. auth), so each is counted once.
                let _ = reply.send(state.ingest(req));
                Ok(())
            }
            IngestRouterMsg::Fail(reason) => Err(format!("failure injected: {reason}").into()),
        }
    }
}
