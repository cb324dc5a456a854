//! Sink configuration: one struct per kind, selected by `type` (a tagged enum), so each sink
//! takes only the keys that mean something for it. `[[sinks]]` tables are checked against
//! their kind's keys before they are deserialised ([`validate::unknown_keys`]): every unknown
//! key is reported, with the keys that kind takes.

pub(crate) mod validate;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One sink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    /// JSON Lines appended to a local file (fsync before Acked).
    File(FileSinkConfig),
    /// Batches POSTed to an HTTP API.
    Http(HttpSinkConfig),
    /// QoS 1 publishes to an upstream broker; Acked only after its PUBACK.
    Mqtt(MqttSinkConfig),
    /// Batches as objects (JSON Lines, compressed) in an S3-compatible store.
    S3(S3SinkConfig),
    /// Each record a message on a Kafka topic (idempotent producer, `acks=all`).
    Kafka(KafkaSinkConfig),
}

impl SinkConfig {
    /// Unique; names the publisher actor and the sink's progress in the WAL.
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::File(c) => &c.name,
            SinkConfig::Http(c) => &c.name,
            SinkConfig::Mqtt(c) => &c.name,
            SinkConfig::S3(c) => &c.name,
            SinkConfig::Kafka(c) => &c.name,
        }
    }

    /// The `type` key's value.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::File(_) => "file",
            SinkConfig::Http(_) => "http",
            SinkConfig::Mqtt(_) => "mqtt",
            SinkConfig::S3(_) => "s3",
            SinkConfig::Kafka(_) => "kafka",
        }
    }

    /// The sink's URL or endpoint, where it has one (printed redacted).
    pub fn url_mut(&mut self) -> Option<&mut String> {
        match self {
            SinkConfig::File(_) => None,
            SinkConfig::Http(c) => Some(&mut c.url),
            SinkConfig::Mqtt(c) => Some(&mut c.url),
            SinkConfig::S3(c) => c.endpoint.as_mut(),
            SinkConfig::Kafka(_) => None,
        }
    }

    /// The embedded default: JSON Lines under the data directory.
    pub fn default_file() -> Self {
        SinkConfig::File(FileSinkConfig {
            name: "file".into(),
            path: PathBuf::from("sink/records.jsonl"),
            max_file_bytes: default_max_file_bytes(),
            max_files: default_max_files(),
        })
    }
}

/// `type = "file"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileSinkConfig {
    pub name: String,
    /// Output path, relative to `data_dir` unless absolute; `%Y`, `%m`, `%d`, `%H` (UTC, at
    /// write time) start a new file each day or hour, e.g. `sink/records-%Y-%m-%d.jsonl`.
    pub path: PathBuf,
    /// A file that would grow past this is renamed aside and a new one started.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Files of this sink kept (the current one included); older ones are deleted.
    #[serde(default = "default_max_files")]
    pub max_files: usize,
}

fn default_max_file_bytes() -> u64 {
    64 << 20
}

fn default_max_files() -> usize {
    8
}

/// `type = "http"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HttpSinkConfig {
    pub name: String,
    /// Where batches are POSTed.
    pub url: String,
    /// Per-request timeout.
    #[serde(default = "default_sink_timeout_ms")]
    pub timeout_ms: u64,
    /// A file holding a bearer token sent as `Authorization`.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS, with `client_key_file`.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Send credentials (URL user info, bearer token) over plain `http://`. Refused unless
    /// set: credentials in cleartext are readable by anyone on the path.
    #[serde(default)]
    pub allow_insecure: bool,
    /// The largest request body sent, in bytes (default [`DEFAULT_HTTP_MAX_BATCH_BYTES`],
    /// under nginx's default 1 MiB `client_max_body_size`). A batch over it is split; one
    /// record alone over it is dead-lettered, its size named.
    #[serde(default)]
    pub max_batch_bytes: Option<u64>,
    /// What counts as delivered. `status` (default): a 2xx that is not an HTML page.
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

/// `type = "mqtt"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MqttSinkConfig {
    pub name: String,
    /// The upstream broker, `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// How long a batch's PUBACKs may take.
    #[serde(default = "default_sink_timeout_ms")]
    pub timeout_ms: u64,
    /// Topic template; `{prefix}`, `{device_id}`, `{gateway_id}` are filled in (default
    /// [`DEFAULT_SINK_TOPIC`]).
    #[serde(default)]
    pub topic: Option<String>,
    /// What `{prefix}` stands for (default: the gateway id).
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// Client id (default `<gateway_id>-<sink name>`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Publishes awaiting their PUBACK, at most (bounds the load on the broker).
    #[serde(default)]
    pub max_in_flight: Option<u16>,
    /// `v3.1.1` (default) or `v5` (the idempotency key also travels as a user property, and
    /// the broker's announced maximum packet size is honoured).
    #[serde(default)]
    pub protocol: Option<MqttProtocol>,
    /// User name, with `password_file`.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Send a password over plain `mqtt://`. Refused unless set.
    #[serde(default)]
    pub allow_insecure: bool,
    /// The upstream broker's maximum packet size (mosquitto `max_packet_size`, AWS IoT
    /// Core 128 KiB), when it has one: a reading that would make a bigger PUBLISH is dead-
    /// lettered alone, its size named, instead of making the broker drop the connection again
    /// and again while its neighbours wait.
    #[serde(default)]
    pub max_packet_bytes: Option<u64>,
    /// Publish a retained `gateways/{gateway_id}/status` (`online`) on each connection, with a
    /// retained Last Will of `offline`. Off by default: the broker's ACL must allow that topic,
    /// and a broker that refuses a Last Will's topic refuses the whole connection (mosquitto
    /// resets it), which would stop delivery.
    #[serde(default)]
    pub presence: bool,
}

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

/// `type = "s3"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct S3SinkConfig {
    pub name: String,
    pub bucket: String,
    /// The bucket's region (default: the AWS chain's — `AWS_REGION`, the profile — or
    /// `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// An S3-compatible store's URL (MinIO, Ceph, Garage); AWS's endpoint when unset.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible stores need.
    #[serde(default)]
    pub force_path_style: bool,
    /// Prepended to every object key.
    #[serde(default)]
    pub key_prefix: String,
    #[serde(default)]
    pub compression: S3Compression,
    /// E.g. `STANDARD_IA`, `GLACIER_IR` (the store's default when unset).
    #[serde(default)]
    pub storage_class: Option<String>,
    /// Server-side encryption: `AES256` or `aws:kms` (with `sse_kms_key_id`).
    #[serde(default)]
    pub server_side_encryption: Option<String>,
    #[serde(default)]
    pub sse_kms_key_id: Option<String>,
    /// Static credentials from files (an edge box without an instance role); the AWS chain
    /// (environment, profile, container/instance role) when unset.
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust, for a private endpoint.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Per-request timeout.
    #[serde(default = "default_s3_timeout_ms")]
    pub timeout_ms: u64,
    /// An object closes at this many records…
    #[serde(default = "default_s3_max_batch_records")]
    pub max_batch_records: usize,
    /// …or this many bytes of JSON Lines (before compression)…
    #[serde(default = "default_s3_max_batch_bytes")]
    pub max_batch_bytes: u64,
    /// …or this long after its first record was accepted, whichever comes first.
    #[serde(default = "default_s3_max_batch_age_ms")]
    pub max_batch_age_ms: u64,
    /// Objects larger than this (compressed) go up in parts of this size (S3's minimum part
    /// is 5 MiB).
    #[serde(default = "default_s3_multipart_bytes")]
    pub multipart_bytes: u64,
    /// Plain `http://` endpoint with static credentials. Refused unless set.
    #[serde(default)]
    pub allow_insecure: bool,
}

/// `type = "kafka"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KafkaSinkConfig {
    pub name: String,
    /// `host:port[,host:port…]` (librdkafka's `bootstrap.servers`).
    pub brokers: String,
    /// Topic template; `{device_id}` and `{gateway_id}` are filled in.
    #[serde(default = "default_kafka_topic")]
    pub topic: String,
    /// Client id (default `<gateway_id>-<sink name>`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// `none`, `gzip`, `snappy`, `lz4` (default) or `zstd`.
    #[serde(default = "default_kafka_compression")]
    pub compression: String,
    /// How long a batch's acknowledgements may take (librdkafka's `message.timeout.ms`).
    #[serde(default = "default_kafka_timeout_ms")]
    pub timeout_ms: u64,
    /// The largest message sent (the broker's `message.max.bytes`, 1 MB by default): a
    /// reading over it is dead-lettered alone, its size named.
    #[serde(default = "default_kafka_max_message_bytes")]
    pub max_message_bytes: u64,
    /// TLS to the brokers (implied by `ca_file` or a client certificate).
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// SASL: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`, with `sasl_username` and
    /// `sasl_password_file`.
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    #[serde(default)]
    pub sasl_password_file: Option<PathBuf>,
    /// SASL without TLS. Refused unless set.
    #[serde(default)]
    pub allow_insecure: bool,
}

fn default_kafka_topic() -> String {
    "telemetry".into()
}

fn default_kafka_compression() -> String {
    "lz4".into()
}

fn default_kafka_timeout_ms() -> u64 {
    30_000
}

fn default_kafka_max_message_bytes() -> u64 {
    1_000_000
}

/// How S3 objects are compressed.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum S3Compression {
    #[default]
    Gzip,
    Zstd,
    None,
}

impl S3Compression {
    /// The object key's extension after `.jsonl`.
    pub fn extension(self) -> &'static str {
        match self {
            S3Compression::Gzip => ".gz",
            S3Compression::Zstd => ".zst",
            S3Compression::None => "",
        }
    }
}

fn default_sink_timeout_ms() -> u64 {
    10_000
}

fn default_s3_timeout_ms() -> u64 {
    30_000
}

fn default_s3_max_batch_records() -> usize {
    10_000
}

fn default_s3_max_batch_bytes() -> u64 {
    8 << 20
}

fn default_s3_max_batch_age_ms() -> u64 {
    60_000
}

fn default_s3_multipart_bytes() -> u64 {
    16 << 20
}
