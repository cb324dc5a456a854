//! The configuration structs: the public face of every component. Defaults live here only.

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
    pub sinks: Vec<SinkConfig>,
    pub log: LogConfig,
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
            log: LogConfig::default(),
            insecure_listen: false,
        }
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
    /// Most idempotency keys remembered; past it the oldest are forgotten first. Bounds the
    /// WAL file under sustained load (each key costs ~150 bytes on disk).
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
    /// Appends are refused (503 `wal_full`, MQTT PUBACKs held) while the WAL *file* is at
    /// least this big, whatever its rows hold: the file is what the disk pays for. Delivery
    /// frees pages and compaction gives them back, then appends resume. 0: no limit.
    pub max_file_bytes: u64,
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
            cache_bytes: 32 * 1024 * 1024,
            device_fair_share: true,
            device_max_records: 0,
            device_max_bytes: 0,
            max_dead_letters: 100_000,
            min_free_bytes: 64 * 1024 * 1024,
            reserve_bytes: 16 * 1024 * 1024,
            compact_min_bytes: 16 * 1024 * 1024,
            max_file_bytes: 2 << 30,
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
        }
    }
}

/// The kinds of sink.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    File,
    Http,
    /// QoS 1 publishes to an upstream broker; Acked only after its PUBACK.
    Mqtt,
}

/// One sink. Fields that do not apply to its `type` are refused by validation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SinkConfig {
    /// Unique; names the publisher actor and the sink's progress in the WAL.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: SinkKind,
    /// file: output path, relative to `data_dir` unless absolute.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// http: where batches are POSTed.
    #[serde(default)]
    pub url: Option<String>,
    /// http: per-request timeout.
    #[serde(default = "default_sink_timeout_ms")]
    pub timeout_ms: u64,
    /// http: file holding a bearer token sent as `Authorization`.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// http: extra CA certificate (PEM) to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// http: client certificate (PEM) for mTLS, with `client_key_file`.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// http, mqtt: client private key (PEM) for mTLS.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// mqtt: topic template; `{prefix}`, `{device_id}`, `{gateway_id}` are filled in.
    #[serde(default)]
    pub topic: Option<String>,
    /// mqtt: what `{prefix}` stands for (default: the gateway id).
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// mqtt: client id (default `<gateway_id>-<sink name>`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// mqtt: publishes awaiting their PUBACK, at most (bounds the load on the broker).
    #[serde(default)]
    pub max_in_flight: Option<u16>,
    /// mqtt: `v3.1.1` (default) or `v5` (the idempotency key also travels as a user property).
    #[serde(default)]
    pub protocol: Option<MqttProtocol>,
    /// mqtt: user name, with `password_file`.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// http, mqtt: send credentials (URL user info, bearer token, MQTT password) over plain
    /// `http://` / `mqtt://`. Refused unless set: credentials in cleartext are readable by
    /// anyone on the path.
    #[serde(default)]
    pub allow_insecure: bool,
    /// http: the largest request body sent, in bytes (default [`DEFAULT_HTTP_MAX_BATCH_BYTES`],
    /// under nginx's default 1 MiB `client_max_body_size`). A batch over it is split; one
    /// record alone over it is dead-lettered, its size named.
    #[serde(default)]
    pub max_batch_bytes: Option<u64>,
    /// mqtt: the upstream broker's maximum packet size (mosquitto `max_packet_size`, AWS IoT
    /// Core 128 KiB), when it has one: a reading that would make a bigger PUBLISH is dead-
    /// lettered alone, its size named, instead of making the broker drop the connection again
    /// and again while its neighbours wait.
    #[serde(default)]
    pub max_packet_bytes: Option<u64>,
    /// http: what counts as delivered. `status` (default): a 2xx that is not an HTML page.
    /// `json`: a 2xx whose JSON body says `{"accepted": N}` with N the batch's record count —
    /// for APIs that answer so, a proxy's or portal's 2xx is then never taken for a delivery.
    #[serde(default)]
    pub ack: Option<HttpAck>,
}

/// What an http sink takes as the API's acknowledgement of a batch.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HttpAck {
    Status,
    Json,
}

/// Default `max_batch_bytes` of an http sink: 900 KiB.
pub const DEFAULT_HTTP_MAX_BATCH_BYTES: u64 = 900 * 1024;

/// MQTT protocol version of an mqtt sink.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum MqttProtocol {
    #[serde(rename = "v3.1.1")]
    V311,
    #[serde(rename = "v5")]
    V5,
}

/// Default upstream topic template of an mqtt sink.
pub const DEFAULT_SINK_TOPIC: &str = "{prefix}/{device_id}/telemetry";

fn default_sink_timeout_ms() -> u64 {
    10_000
}

impl SinkConfig {
    /// The embedded default: JSON Lines under the data directory.
    pub fn default_file() -> Self {
        SinkConfig {
            name: "file".into(),
            kind: SinkKind::File,
            path: Some(PathBuf::from("sink/records.jsonl")),
            url: None,
            timeout_ms: default_sink_timeout_ms(),
            bearer_token_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            topic: None,
            topic_prefix: None,
            client_id: None,
            max_in_flight: None,
            protocol: None,
            username: None,
            password_file: None,
            allow_insecure: false,
            max_batch_bytes: None,
            max_packet_bytes: None,
            ack: None,
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
