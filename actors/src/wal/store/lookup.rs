//! "Where is my reading?" (issue 14, part 1): a record found by its WAL sequence number,
//! correlation id or idempotency key, with its state at each sink the WAL knows.
//!
//! By sequence number it is one lookup; by correlation id or key it is a scan of the stored
//! records (no index is kept for them: each would cost every append a row), about a second per
//! million records. What the WAL holds is found: records still held by a sink, and records
//! every sink settled while their history is kept (`wal.history_secs`, `history.rs`), with
//! each sink's ack: when, after how many attempts.

use super::*;
use serde::Serialize;

/// One sink's view of a record.
#[derive(Debug, Clone, Serialize)]
pub struct SinkState {
    pub sink: String,
    /// `pending` (enqueued or in flight: leases are in the writer's memory), `dead`, `acked`
    /// (its ack is in the kept history), or `settled` (no row: delivered, or never routed to
    /// this sink).
    pub state: &'static str,
    /// Deliveries tried so far (pending and dead), or that it took (acked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// WAL time of the ack (acked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acked_at_wal_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead: Option<DeadEntry>,
}

/// A record and where it stands.
#[derive(Debug, Clone, Serialize)]
pub struct RecordView {
    pub wal_seq: u64,
    /// WAL time of its append (see "Time" in `store/mod.rs`).
    pub appended_at_wal_ms: Option<u64>,
    pub record: serde_json::Value,
    pub sinks: Vec<SinkState>,
    /// WAL time the last sink settled it (kept history only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settled_at_wal_ms: Option<u64>,
}

/// Finds `id` in `txn`: a number is tried as a WAL sequence number first, then every stored
/// record's correlation id and idempotency key are compared.
pub(super) fn find(txn: &redb::ReadTransaction, id: &str) -> Result<Option<RecordView>, WalError> {
    let records = txn.open_table(RECORDS)?;
    let mut found = None;
    if let Ok(seq) = id.parse::<u64>() {
        if let Some(b) = records.get(seq)? {
            found = Some((seq, b.value().to_vec()));
        }
    }
    if found.is_none() {
        for row in records.iter()? {
            let (k, v) = row?;
            if let Ok(r) = Record::decode(v.value()) {
                if r.correlation_id == id || r.idempotency_key == id {
                    found = Some((k.value(), v.value().to_vec()));
                    break;
                }
            }
        }
    }
    let Some((seq, body)) = found else {
        return Ok(None);
    };
    let record = match Record::decode(&body) {
        Ok(r) => {
            let mut v = serde_json::to_value(&r).unwrap_or_default();
            if let Some(t) = r.trace {
                v["trace"] = serde_json::json!(t.to_string());
            }
            v
        }
        Err(e) => serde_json::json!({"undecodable": e}),
    };
    let appended = match times::table(txn)? {
        Some(t) => times::appended_at(&t, seq)?,
        None => None,
    };
    let (pending, dead) = (txn.open_table(PENDING)?, txn.open_table(DEAD)?);
    let unleased = unleased::table(txn)?;
    let acks = match history::runs::table(txn)? {
        Some(t) => history::runs::acks_of(&t, seq)?,
        None => Vec::new(),
    };
    let mut out = Vec::new();
    for sink in history::known_sinks(txn)? {
        let ack = acks.iter().rev().find(|a| a.sink == sink);
        let p = match pending.get((sink.as_str(), seq))? {
            Some(v) => Some(v.value()),
            None => match &unleased {
                Some(t) => unleased::table_contains(t, &sink, seq)?.then_some(0),
                None => None,
            },
        };
        let d = dead
            .get((sink.as_str(), seq))?
            .and_then(|v| ciborium::from_reader::<DeadEntry, _>(v.value()).ok());
        let state = match (&p, &d, ack) {
            (Some(_), _, _) => "pending",
            (None, Some(_), _) => "dead",
            (None, None, Some(_)) => "acked",
            (None, None, None) => "settled",
        };
        let acked = (state == "acked").then_some(ack).flatten();
        out.push(SinkState {
            sink,
            state,
            attempts: p
                .or(d.as_ref().map(|e| e.attempts))
                .or(acked.map(|a| a.attempts)),
            acked_at_wal_ms: acked.map(|a| a.at_ms),
            dead: d,
        });
    }
    let held = out
        .iter()
        .any(|s| s.state == "pending" || s.state == "dead");
    Ok(Some(RecordView {
        wal_seq: seq,
        appended_at_wal_ms: appended,
        record,
        sinks: out,
        settled_at_wal_ms: history::settled_at(&acks).filter(|_| !held),
    }))
}

impl WalReader {
    /// The record `id` names, beside the running writer. Blocking.
    pub fn find(&self, id: &str) -> Result<Option<RecordView>, WalError> {
        let db = read_db(&self.0);
        let txn = db.begin_read()?;
        find(&txn, id)
    }
}

impl WalStore {
    /// The record `id` names in a WAL file no process holds open.
    pub fn offline_find(path: &Path, id: &str) -> Result<Option<RecordView>, WalError> {
        let db = Database::open(path).map_err(|e| open_error(path, e))?;
        let txn = db.begin_read()?;
        find(&txn, id)
    }
}
