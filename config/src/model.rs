//! The configuration structs: the public face of every component. Defaults live here only.

use crate::sink::SinkConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The whole gateway configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Stamped on every record so downstream can tell which gateway took it in.
    pub gateway_id: String,
    /// Holds the WAL, generated tokens and the file sink's output.
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub admin: AdminConfig,
    pub auth: AuthConfig,
    pub wal: WalConfig,
    pub delivery: DeliveryConfig,
    /// Device telemetry over MQTT (off unless enabled).
    pub mqtt: crate::mqtt::MqttConfig,
    /// Read by `layers` one by one (see `sink::validate::parse_sinks`), not by serde here.
    #[serde(skip_deserializing)]
    pub sinks: Vec<SinkConfig>,
    /// Routing rules (`route.rs`); none: every reading goes to every sink.
    pub routes: Vec<crate::route::RouteConfig>,
    pub log: LogConfig,
    pub control: crate::control::ControlConfig,
    /// OpenTelemetry traces (`traces.rs`); off unless an endpoint is set.
    pub tracing: crate::traces::TracingConfig,
    /// Accept a listener without TLS on an address other than loopback (`--insecure-listen`).
    /// Off: such a config is refused at start, so cleartext tokens and readings never cross
    /// a network by accident (the container image's default command included).
    pub insecure_listen: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            gateway_id: "edge-gateway".into(),
            data_dir: PathBuf::from("./data"),
            http: HttpConfig::default(),
            admin: AdminConfig::default(),
            auth: AuthConfig::default(),
            wal: WalConfig::default(),
            delivery: DeliveryConfig::default(),
            mqtt: crate::mqtt::MqttConfig::default(),
            sinks: vec![SinkConfig::default_file()],
            routes: Vec::new(),
            log: LogConfig::default(),
            control: crate::control::ControlConfig::default(),
            tracing: crate::traces::TracingConfig::default(),
            insecure_listen: false,
        }
    }
}

impl Config {
    /// The configuration with every secret-bearing value replaced (token hashes, credentials
    /// inside URLs), for printing and for `config.get`. Secrets themselves live in files;
    /// their paths are not secret.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        for v in c.auth.devices.values_mut() {
            *v = "sha256:<redacted>".into();
        }
        for s in &mut c.sinks {
            if let Some(u) = s.url_mut() {
                *u = crate::redact_url(u);
            }
        }
        c.mqtt.broker = crate::redact_url(&c.mqtt.broker);
        c
    }
}

/// HTTP ingest listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct HttpConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Bodies above this are refused with 413 before they are read in full.
    pub max_body_bytes: u64,
    /// Most readings accepted in one request (an array body).
    pub max_batch: usize,
    /// A connection that has not delivered a whole request head within this — after
    /// connecting, or after its previous response (idle keep-alive) — is closed (slowloris,
    /// idle sockets). With TLS the handshake has the same budget.
    pub header_read_timeout_ms: u64,
    /// Whole-request budget, body read and WAL commit included; past it the client gets 503.
    pub request_timeout_ms: u64,
    /// Seconds sent in `Retry-After` with a 503.
    pub retry_after_secs: u64,
    /// Requests handled at once; more get 503 + Retry-After (bounds memory under overload).
    pub max_in_flight: usize,
    /// Body bytes held by requests in flight, at most (taken from `Content-Length` before the
    /// body is read); a request that does not fit gets 503 + Retry-After.
    pub max_in_flight_bytes: u64,
    /// Open connections, at most; past it new ones are closed at once (metric + log line).
    /// With the admin listener's own cap this keeps the process under a Raspberry Pi's
    /// 1,024 file descriptors (see docs/operations.md).
    pub max_connections: usize,
    /// Open connections from one peer address, at most.
    pub max_connections_per_peer: usize,
    /// TLS for the ingest listener (off when unset).
    pub tls: Option<TlsConfig>,
}

/// A TLS listener: server certificate and key (PEM); with `client_ca_file`, clients must
/// present a certificate signed by that CA (mutual TLS).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: "127.0.0.1:8080".parse().expect("literal address"),
            max_body_bytes: 1024 * 1024,
            max_batch: 1000,
            header_read_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
            retry_after_secs: 1,
            max_in_flight: 256,
            max_in_flight_bytes: 32 * 1024 * 1024,
            max_connections: 512,
            max_connections_per_peer: 64,
            tls: None,
        }
    }
}

/// Admin API listener: health, metrics, supervision tree, chaos hooks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// File holding the admin bearer token. Unset: `<data_dir>/admin.token`, generated on first start.
    pub token_file: Option<PathBuf>,
    /// Enables `POST /admin/actors/{name}/fail`. Off by default: only the chaos harness wants it.
    pub chaos: bool,
    /// `/healthz` answers 500 once the gateway has been wedged this long: the WAL holding
    /// work without finishing a commit, or an actor not running.
    pub liveness_stall_secs: u64,
    /// Devices whose health `GET /admin/devices` keeps (the least recently seen forgotten).
    pub max_tracked_devices: usize,
    /// Plausible ranges of reading fields, `{ temp_c = [-40.0, 125.0] }`: a reading with a
    /// number outside its field's range is still accepted, and counted against its device
    /// (`GET /admin/devices`) and in `edge_gateway_readings_implausible_total{field}`.
    pub plausible: std::collections::BTreeMap<String, [f64; 2]>,
    /// TLS for the admin listener (off when unset).
    pub tls: Option<TlsConfig>,
    /// Open connections, at most: the admin API's own budget, so probes and metrics stay
    /// reachable while ingest is flooded.
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:8081".parse().expect("literal address"),
            token_file: None,
            chaos: false,
            liveness_stall_secs: 60,
            max_tracked_devices: 10_000,
            plausible: std::collections::BTreeMap::new(),
            tls: None,
            max_connections: 32,
            max_connections_per_peer: 16,
        }
    }
}

/// Ingest authentication. There are no default credentials: see the README.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct AuthConfig {
    /// File holding a token accepted for any device. Unset and no `devices`:
    /// `<data_dir>/ingest.token`, generated on first start.
    pub ingest_token_file: Option<PathBuf>,
    /// Per-device token hashes: `device_id = "sha256:<hex>"` (see `edge-gateway token hash`).
    pub devices: std::collections::BTreeMap<String, String>,
}

/// Write-ahead log limits and retention.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct WalConfig {
    /// Live (not yet settled) record bytes above which ingest gets backpressure.
    pub max_bytes: u64,
    /// Live records above which ingest gets backpressure.
    pub max_records: u64,
    /// Records older than this that are still undelivered become Dead with reason `expired`.
    pub max_age_secs: u64,
    /// How long an idempotency key is remembered.
    pub idempotency_window_secs: u64,
    /// Most idempotency keys remembered; past it the oldest commits' keys are forgotten first
    /// (never the newest commit's). Bounds the WAL file under sustained load (each key costs
    /// its length plus ~60 bytes on disk, in one row per commit).
    pub idempotency_max_keys: u64,
    /// How long dead-lettered records (and rejected MQTT messages) are kept for inspection.
    pub dead_retention_secs: u64,
    /// Rejected MQTT messages kept, at most (raw payload up to 64 KiB each).
    pub max_rejected: u64,
    /// Most operations folded into one commit.
    pub max_group: usize,
    /// Period of retention sweeps.
    pub maintenance_interval_ms: u64,
    /// redb page cache. Bounds the WAL's memory whatever the backlog (redb's default is 1 GiB).
    pub cache_bytes: u64,
    /// Fair share: a device may hold at most as much of the WAL as is left free for the
    /// others (HTTP 429 / MQTT PUBACK held for that device only). One flooding device thus
    /// stops at half the WAL and the others keep being acknowledged.
    pub device_fair_share: bool,
    /// Absolute per-device caps on top (0 = none).
    pub device_max_records: u64,
    pub device_max_bytes: u64,
    /// Dead letters kept per sink, at most; past it the oldest are purged (counted, logged).
    pub max_dead_letters: u64,
    /// Appends are refused (503 `disk_full`, MQTT PUBACKs held) while the WAL's filesystem
    /// has less free than this, so settles, deletes and maintenance — which free space —
    /// always find room. 0: no check.
    pub min_free_bytes: u64,
    /// A file of this size kept beside the WAL and deleted if a commit still meets a full
    /// disk (another process filled it), so delivery can go on; recreated once space is back.
    pub reserve_bytes: u64,
    /// The WAL file is compacted (given back to the filesystem) once it is at least this big
    /// and more than twice what its rows occupy, e.g. after a backlog drained. 0: never.
    pub compact_min_bytes: u64,
    /// How long (ms) the file must have looked drained before it is compacted: the tail of a
    /// drain looks drained for a moment, and compacting then stalls its last batches. Not
    /// waited for when the file is at `max_file_bytes` (appends wait for the compaction).
    pub compact_settle_ms: u64,
    /// Appends are refused (503 `wal_full`, MQTT PUBACKs held) while the WAL *file* is at
    /// least this big, whatever its rows hold: the file is what the disk pays for. Delivery
    /// frees pages and compaction gives them back, then appends resume. 0: no limit.
    pub max_file_bytes: u64,
    /// A record every sink settled is kept this long with its lifecycle (each sink's ack:
    /// when, after how many attempts), for `wal show` and `replay --from/--to`. 0: deleted
    /// at once. Given up first when space is short (see `history_max_bytes`).
    pub history_secs: u64,
    /// At most this much kept history (record bodies and lifecycle rows); oldest go first.
    pub history_max_bytes: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            max_bytes: 1 << 30,
            max_records: 10_000_000,
            max_age_secs: 7 * 24 * 3600,
            idempotency_window_secs: 3600,
            idempotency_max_keys: 250_000,
            dead_retention_secs: 7 * 24 * 3600,
            max_rejected: 10_000,
            max_group: 4096,
            maintenance_interval_ms: 1_000,
            cache_bytes: 8 * 1024 * 1024,
            device_fair_share: true,
            device_max_records: 0,
            device_max_bytes: 0,
            max_dead_letters: 100_000,
            min_free_bytes: 64 * 1024 * 1024,
            reserve_bytes: 16 * 1024 * 1024,
            compact_min_bytes: 16 * 1024 * 1024,
            compact_settle_ms: 2_000,
            max_file_bytes: 2 << 30,
            history_secs: 3600,
            history_max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Dispatcher behaviour shared by all sinks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DeliveryConfig {
    /// Records leased and published per batch.
    pub batch_size: usize,
    /// Delivery attempts per record before it is dead-lettered.
    pub max_attempts: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// A lease not settled within this returns to Enqueued (its publisher died or hung).
    pub lease_timeout_ms: u64,
    /// Idle poll period; appends also wake the dispatcher at once.
    pub poll_interval_ms: u64,
    /// A ceiling per sink, in records a second (`{ api = 500 }`): a backlog drains at most
    /// this fast after an outage, so a sink that just came back is not flooded. No entry: as
    /// fast as the sink takes them.
    pub max_records_per_sec: std::collections::BTreeMap<String, f64>,
    /// Live first: readings accepted since a sink's last outage (or since the start) are
    /// leased ahead of its backlog and without its ceiling; the backlog fills what is left of
    /// each batch. Order of first delivery is kept per device within each lane, not across
    /// them (each delivered record carries `wal_seq` to reorder by). Off: one lane, strict
    /// acceptance order.
    pub live_first: bool,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            batch_size: 500,
            max_attempts: 10,
            backoff_initial_ms: 200,
            backoff_max_ms: 30_000,
            lease_timeout_ms: 60_000,
            poll_interval_ms: 200,
            max_records_per_sec: std::collections::BTreeMap::new(),
            live_first: false,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `edge_gateway_actors=debug`.
    pub level: String,
    /// JSON lines (default) or human-readable text.
    pub json: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            json: true,
        }
    }
}
