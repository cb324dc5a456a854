//! The record the WAL stores and the types that cross its mailbox.
//!
//! Records are encoded with CBOR (ciborium). The encoding is the WAL's on-disk format: add
//! fields only as `Option` / `#[serde(default)]` so older files keep decoding.

use serde::{Deserialize, Serialize};

/// Where a record came in.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Http,
    Mqtt,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Mqtt => "mqtt",
        }
    }
}

/// One accepted reading, normalised and enriched by the ingest router.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub device_id: String,
    /// Stable across redeliveries; downstream de-duplicates on it.
    pub idempotency_key: String,
    pub correlation_id: String,
    pub gateway_id: String,
    /// Gateway wall-clock time of receipt, milliseconds since the Unix epoch.
    pub receive_ts_ms: u64,
    pub source: Source,
    pub schema: u32,
    #[serde(default)]
    pub msg_id: Option<String>,
    /// The device's own counter, when it sent one.
    #[serde(default)]
    pub device_seq: Option<u64>,
    /// The device's own timestamp, kept as sent.
    #[serde(default)]
    pub device_ts: Option<serde_json::Value>,
    /// Every other field of the reading, kept as sent.
    pub data: serde_json::Map<String, serde_json::Value>,
    /// False when the gateway's wall clock read earlier than this release could run
    /// ([`CLOCK_FLOOR_MS`]) at receipt: `receive_ts_ms` is then not a real date (a board that
    /// booted without a battery-backed clock, before NTP). Stored only when false.
    #[serde(default = "synced", skip_serializing_if = "is_synced")]
    pub clock_synced: bool,
    /// Cache of the content fingerprint (`wal/idem.rs`), filled by the ingest edge on its own
    /// task so the WAL's serial commit path does not compute it. Never stored.
    #[serde(skip)]
    pub fingerprint: FingerprintCache,
    /// Cache of the record's encoding (`encode`), made by the ingest edge on its own task so
    /// the WAL's serial commit path only copies it. Never stored. Filled last, like the
    /// fingerprint; the WAL drops it if it changes a stored field (a conflicting key).
    #[serde(skip)]
    pub encoded: EncodedCache,
    /// The sinks this reading is queued for, chosen by the routing rules at ingest. Never
    /// stored: the WAL's pending rows are the record of it.
    #[serde(skip)]
    pub route: Route,
    /// The trace context the reading's later spans join (`traces`): the ingest span when it
    /// was kept, else the device's own `traceparent`. Stored (25 bytes) so a delivery after a
    /// restart or a long outage still joins the reading's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::traces::TraceParent>,
    /// The context a sink passes on for this attempt (`traces::PublishSpans`): the publish
    /// span's when it is kept. Never stored.
    #[serde(skip)]
    pub send_trace: Option<crate::traces::TraceParent>,
}

/// A reading's sinks, by name (`None`: every sink). Names, not positions: the sink set can
/// change while readings are on their way to the WAL, and a name the WAL no longer has
/// simply queues nothing. Equal to any other: it is not content (the same reading routed
/// differently is the same reading).
#[derive(Debug, Clone, Default)]
pub struct Route(pub Option<std::sync::Arc<[String]>>);

impl Route {
    /// Whether the sink is in the route.
    pub fn has(&self, sink: &str) -> bool {
        self.0.as_ref().is_none_or(|s| s.iter().any(|n| n == sink))
    }
}

impl PartialEq for Route {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// No wall clock running this release can read earlier than 2026-01-01T00:00:00Z; one that
/// does has not been set yet. (Raise it with each release.)
pub const CLOCK_FLOOR_MS: u64 = 1_767_225_600_000;

fn synced() -> bool {
    true
}

fn is_synced(v: &bool) -> bool {
    *v
}

/// A cached `idem::fingerprint` of the record it sits in (`None`: compute it). It must be
/// filled only once the content fields are final (`ingest::parse::to_records` does it last).
/// Equal to any other: it caches the fields, it is not one.
#[derive(Debug, Clone, Copy, Default)]
pub struct FingerprintCache(pub Option<u64>);

impl PartialEq for FingerprintCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A cached [`Record::encode`] of the record it sits in (`None`: encode it). Equal to any
/// other: it caches the fields, it is not one.
#[derive(Debug, Clone, Default)]
pub struct EncodedCache(pub Option<Vec<u8>>);

impl PartialEq for EncodedCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        ciborium::into_writer(self, &mut out).expect("encoding to a Vec cannot fail");
        out
    }

    /// The encoding the ingest edge cached (taken: the WAL writes it once), else `encode`.
    pub fn take_encoded(&mut self) -> Vec<u8> {
        self.encoded.0.take().unwrap_or_else(|| self.encode())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        ciborium::from_reader(bytes).map_err(|e| e.to_string())
    }

    /// What a sink sends as this record's `traceparent`.
    pub fn outgoing_trace(&self) -> Option<crate::traces::TraceParent> {
        self.send_trace.or(self.trace)
    }
}

/// A record handed to a sink: its WAL position, how many times it has been leased, the record.
#[derive(Debug, Clone, PartialEq)]
pub struct Leased {
    pub seq: u64,
    /// Includes this lease: the first delivery attempt has `attempts == 1`.
    pub attempts: u32,
    pub record: Record,
    /// Leased from the live lane (see [`Lanes`]); false for the backlog and without lanes.
    pub live: bool,
}

/// A lease as the WAL's commit thread makes it: the record's stored bytes, not yet decoded.
/// The WAL actor decodes them on a task of its own while the next group commits
/// ([`LeasedBody::decode`]), so the serial commit path does not pay for CBOR decoding (a
/// quarter of its time in a 1 M drain). A body that does not decode is settled
/// [`Outcome::Corrupt`].
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedBody {
    pub seq: u64,
    pub attempts: u32,
    pub body: Vec<u8>,
    pub live: bool,
}

impl LeasedBody {
    /// The lease with its record, or why its bytes are not one.
    pub fn decode(self) -> Result<Leased, String> {
        let record = Record::decode(&self.body).map_err(|e| format!("corrupt record: {e}"))?;
        Ok(Leased {
            seq: self.seq,
            attempts: self.attempts,
            record,
            live: self.live,
        })
    }

    /// Decodes a batch: the leases, and a `Corrupt` settle for each body that is not one.
    pub fn decode_all(batch: Vec<LeasedBody>) -> (Vec<Leased>, Vec<(u64, Outcome)>) {
        let mut bad = Vec::new();
        let ok = batch
            .into_iter()
            .filter_map(|b| {
                let seq = b.seq;
                b.decode()
                    .map_err(|e| bad.push((seq, Outcome::Corrupt(e))))
                    .ok()
            })
            .collect();
        (ok, bad)
    }
}

/// A live-first lease (`delivery.live_first`): records accepted since the sink's split are
/// leased first, in order, up to the lease's `max`; older ones — the backlog — fill what is
/// left, in order, at most `backlog_max` (what the sink's ceiling grants) and, in a batch
/// that carries live records, no more than it carries (a live batch stays quick to send). The split is the
/// WAL's head when the sink first leases with lanes, and moves to the head again when a lease
/// asks (`split_now`: the dispatcher asks when a sink's pause ends, so what piled up during
/// an outage joins the backlog). Held in memory: after a restart everything is backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lanes {
    pub backlog_max: usize,
    pub split_now: bool,
}

/// A lease that waits for a full batch (a sink that writes objects, not requests): records
/// are leased only once `max` of them or `max_bytes` of their stored bodies are pending for
/// the sink, or the oldest has waited `max_age_ms` (WAL time) since it was accepted;
/// otherwise the lease is empty and nothing changes. The lease is also cut at `max_bytes`
/// (at least one record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    pub max_bytes: u64,
    pub max_age_ms: u64,
}

/// What happened to one appended record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    Stored {
        seq: u64,
        correlation_id: String,
        /// The key was taken, within the window, by a reading with other content (a device
        /// whose counter restarted): stored under a derived key (see `idem.rs`).
        key_conflict: bool,
    },
    /// The idempotency key was seen within the window with the same content; nothing was
    /// stored.
    Duplicate { seq: u64, correlation_id: String },
}

/// How a sink's attempt at a record ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Acked,
    /// Transient failure: back to Enqueued, unless attempts are used up (then Dead).
    Retry(String),
    /// Refused by the sink for good: Dead, [`DeadReason::Refused`] with the sink's answer.
    Dead(String),
    /// Never sent (held back behind a failed batch): back to Enqueued and the lease's attempt
    /// is given back.
    Release,
    /// Its stored bytes did not decode (found when a lease was decoded, off the commit
    /// thread): Dead, [`DeadReason::Corrupt`].
    Corrupt(String),
}

/// Why a record was dead-lettered for a sink: decided where it happens, stored with its class,
/// shown as text, counted by class — never parsed back from the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadReason {
    /// Older than `wal.max_age_secs` and still not delivered.
    Expired,
    /// Leased `attempts` times without a delivery; the last failure, if the sink gave one
    /// (none: its publisher kept dying on it).
    MaxAttempts {
        attempts: u32,
        last_error: Option<String>,
    },
    /// The record's bytes no longer decode, or are missing.
    Corrupt(String),
    /// The sink refused it for good (an answer that blames the record, e.g. HTTP 400).
    Refused(String),
}

impl DeadReason {
    pub fn class(&self) -> DeadClass {
        match self {
            DeadReason::Expired => DeadClass::Expired,
            DeadReason::MaxAttempts { .. } => DeadClass::MaxAttempts,
            DeadReason::Corrupt(_) => DeadClass::Corrupt,
            DeadReason::Refused(_) => DeadClass::Rejected,
        }
    }
}

impl std::fmt::Display for DeadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeadReason::Expired => f.write_str("expired"),
            DeadReason::MaxAttempts {
                attempts,
                last_error: Some(e),
            } => write!(f, "max attempts ({attempts}) reached; last error: {e}"),
            DeadReason::MaxAttempts {
                attempts,
                last_error: None,
            } => write!(
                f,
                "max attempts ({attempts}) reached without a settled delivery"
            ),
            DeadReason::Corrupt(e) => f.write_str(e),
            DeadReason::Refused(e) => f.write_str(e),
        }
    }
}

/// The bounded set of dead-letter classes: metric label values and purge filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadClass {
    Expired,
    MaxAttempts,
    Corrupt,
    /// Refused by the sink.
    Rejected,
}

impl DeadClass {
    pub const ALL: [DeadClass; 4] = [
        DeadClass::Expired,
        DeadClass::MaxAttempts,
        DeadClass::Corrupt,
        DeadClass::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadClass::Expired => "expired",
            DeadClass::MaxAttempts => "max_attempts",
            DeadClass::Corrupt => "corrupt",
            DeadClass::Rejected => "rejected",
        }
    }

    /// The class a filter names (`expired`, `max_attempts`, `corrupt`, `rejected`).
    pub fn parse(s: &str) -> Option<DeadClass> {
        DeadClass::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Rows written before the class was stored (WAL format 1) carry only the text, whose
    /// forms were fixed; read once, here, for them alone.
    fn of_format_1_text(reason: &str) -> DeadClass {
        if reason == "expired" {
            DeadClass::Expired
        } else if reason.starts_with("max attempts") {
            DeadClass::MaxAttempts
        } else if reason.starts_with("corrupt") || reason.starts_with("record body") {
            DeadClass::Corrupt
        } else {
            DeadClass::Rejected
        }
    }
}

/// A dead-lettered record's entry for one sink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeadEntry {
    /// The reason as text ([`DeadReason`]'s `Display`).
    pub reason: String,
    pub attempts: u32,
    pub dead_at_ms: u64,
    /// The reason's class; absent in rows of WAL format 1 (see [`DeadEntry::class`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<DeadClass>,
}

impl DeadEntry {
    pub fn new(reason: &DeadReason, attempts: u32, dead_at_ms: u64) -> DeadEntry {
        DeadEntry {
            reason: reason.to_string(),
            attempts,
            dead_at_ms,
            class: Some(reason.class()),
        }
    }

    pub fn class(&self) -> DeadClass {
        self.class
            .unwrap_or_else(|| DeadClass::of_format_1_text(&self.reason))
    }
}

/// Counts by state and sink, as the WAL holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WalStats {
    /// Records stored and not yet deleted (any sink still pending or dead).
    pub records: u64,
    /// Bytes of encoded records counted against `wal.max_bytes`.
    pub live_bytes: u64,
    pub file_bytes: u64,
    pub sinks: Vec<SinkStats>,
    /// Idempotency entries held (`store/idem_rows/`): a key stored again counts again until
    /// its older entry's row goes.
    pub idempotency_keys: u64,
    /// Refused messages kept for inspection.
    pub rejected: u64,
    /// Devices holding records (see `quota.rs`).
    pub devices: u64,
    /// Settled records kept with their lifecycle (`wal.history_secs`), and their bytes: not
    /// in `records` / `live_bytes`, given up first when space is short.
    pub history_records: u64,
    pub history_bytes: u64,
    /// Sinks the WAL holds records for that the configuration no longer has (renamed or
    /// removed while the gateway was stopped): nothing delivers them until an operator moves
    /// or drops them (`edge-gateway wal move-sink` / `drop-sink`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub orphaned: Vec<OrphanedSink>,
}

/// A sink the WAL holds records for and the configuration lacks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OrphanedSink {
    pub sink: String,
    pub pending: u64,
    pub dead: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SinkStats {
    pub sink: String,
    /// Enqueued + InFlight.
    pub pending: u64,
    pub in_flight: u64,
    pub dead: u64,
    pub acked_total: u64,
    /// How long the oldest pending record has waited (WAL time, as of the last maintenance
    /// run: up to `wal.maintenance_interval_ms` stale); `None` when nothing is pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_pending_age_ms: Option<u64>,
}
