//! Sink checks: unknown keys per kind (before deserialising), and what types alone cannot
//! say (after). Paths are `sinks[i].key`.

use super::{HttpSinkConfig, KafkaSinkConfig, MqttSinkConfig, S3SinkConfig, SinkConfig};
use crate::mqtt::BrokerAddr;
use crate::validate::{problem, url_userinfo, ConfigProblem};
use serde::de::{self, Deserialize, Visitor};
use std::collections::HashSet;
use toml::Value;

/// The keys a struct takes: its serde field names, read by a deserializer that only records
/// what `deserialize_struct` is asked for.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe(Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("probe")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> de::Deserializer<'de> for &mut Probe {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut p = Probe(None);
    let _ = T::deserialize(&mut p);
    p.0.unwrap_or(&[])
}

/// The keys a sink of `kind` takes (`type` included), or `None` for an unknown kind.
pub fn keys_of(kind: &str) -> Option<Vec<&'static str>> {
    let fields = match kind {
        "file" => fields_of::<super::FileSinkConfig>(),
        "http" => fields_of::<HttpSinkConfig>(),
        "mqtt" => fields_of::<MqttSinkConfig>(),
        "s3" => fields_of::<S3SinkConfig>(),
        "kafka" => fields_of::<KafkaSinkConfig>(),
        _ => return None,
    };
    Some(
        std::iter::once("type")
            .chain(fields.iter().copied())
            .collect(),
    )
}

/// The keys a sink of `kind` cannot do without.
fn required(kind: &str) -> &'static [&'static str] {
    match kind {
        "file" => &["name", "path"],
        "http" | "mqtt" => &["name", "url"],
        "s3" => &["name", "bucket"],
        "kafka" => &["name", "brokers"],
        _ => &[],
    }
}

/// Reads `sinks`, an array of tables, each checked against its kind's keys first: every key
/// its `type` does not take and every one it needs and lacks is reported, with the sink's
/// index; then each is deserialised on its own, so a wrong value names its sink too.
pub fn parse_sinks(v: Value) -> Result<Vec<SinkConfig>, Vec<ConfigProblem>> {
    let mut out = Vec::new();
    let Value::Array(tables) = v else {
        problem(&mut out, "sinks", "must be an array of tables ([[sinks]])");
        return Err(out);
    };
    let mut sinks = Vec::new();
    for (i, s) in tables.into_iter().enumerate() {
        let at = |k: &str| format!("sinks[{i}].{k}");
        let Some(t) = s.as_table() else {
            problem(&mut out, format!("sinks[{i}]"), "must be a table");
            continue;
        };
        let kind = t.get("type").and_then(Value::as_str).unwrap_or("");
        let Some(keys) = keys_of(kind) else {
            problem(
                &mut out,
                at("type"),
                "required: file, http, mqtt, s3 or kafka",
            );
            continue;
        };
        let before = out.len();
        for k in required(kind).iter().filter(|k| !t.contains_key(**k)) {
            problem(&mut out, at(k), format!("required for a {kind} sink"));
        }
        for k in t.keys().filter(|k| !keys.contains(&k.as_str())) {
            problem(
                &mut out,
                at(k),
                format!(
                    "unknown key for a {kind} sink (it takes: {})",
                    keys.join(", ")
                ),
            );
        }
        if out.len() > before {
            continue;
        }
        match SinkConfig::deserialize(s) {
            Ok(c) => sinks.push(c),
            Err(e) => problem(&mut out, format!("sinks[{i}]"), e.to_string()),
        }
    }
    if out.is_empty() {
        Ok(sinks)
    } else {
        Err(out)
    }
}

/// Checks every sink; appends problems to `out`.
pub fn validate_sinks(out: &mut Vec<ConfigProblem>, sinks: &[SinkConfig]) {
    if sinks.is_empty() {
        problem(out, "sinks", "at least one sink is required");
    }
    let mut names = HashSet::new();
    for (i, s) in sinks.iter().enumerate() {
        let at = |k: &str| format!("sinks[{i}].{k}");
        let name = s.name();
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            problem(out, at("name"), "1-64 characters of [A-Za-z0-9_-]");
        }
        if !names.insert(name.to_string()) {
            problem(out, at("name"), format!("duplicate sink name {name:?}"));
        }
        match s {
            SinkConfig::File(f) => {
                let name = f.path.file_name().map(|n| n.to_string_lossy().into_owned());
                if name.is_none_or(|n| n.is_empty() || n.starts_with('%')) {
                    problem(
                        out,
                        at("path"),
                        "needs a file name that starts with text (its files are found by it)",
                    );
                }
                if f.path
                    .parent()
                    .is_some_and(|d| d.to_string_lossy().contains('%'))
                {
                    problem(
                        out,
                        at("path"),
                        "placeholders only in the file name (old files are pruned in one directory)",
                    );
                }
                positive(out, &at, "max_file_bytes", f.max_file_bytes);
                positive(out, &at, "max_files", f.max_files as u64);
            }
            SinkConfig::Http(h) => http(out, h, &at),
            SinkConfig::Mqtt(m) => mqtt(out, m, &at),
            SinkConfig::S3(c) => s3(out, c, &at),
            SinkConfig::Kafka(k) => kafka(out, k, &at),
        }
    }
}

fn http(out: &mut Vec<ConfigProblem>, s: &HttpSinkConfig, at: &dyn Fn(&str) -> String) {
    if !(s.url.starts_with("http://") || s.url.starts_with("https://")) {
        problem(out, at("url"), "must start with http:// or https://");
    }
    pair(
        out,
        at,
        s.client_cert_file.is_some(),
        s.client_key_file.is_some(),
    );
    positive(out, at, "timeout_ms", s.timeout_ms);
    if s.max_batch_bytes == Some(0) {
        problem(out, at("max_batch_bytes"), "must be > 0");
    }
    let creds = url_userinfo(&s.url).is_some() || s.bearer_token_file.is_some();
    cleartext(
        out,
        at,
        "url",
        &s.url,
        "http://",
        "https://",
        creds,
        s.allow_insecure,
    );
}

fn mqtt(out: &mut Vec<ConfigProblem>, s: &MqttSinkConfig, at: &dyn Fn(&str) -> String) {
    if let Err(e) = BrokerAddr::parse(&s.url) {
        problem(out, at("url"), e);
    }
    if s.max_packet_bytes == Some(0) {
        problem(out, at("max_packet_bytes"), "must be > 0");
    }
    if let Some(t) = &s.topic {
        if t.is_empty() || t.contains('+') || t.contains('#') {
            problem(
                out,
                at("topic"),
                "must be a non-empty topic name without wildcards",
            );
        }
    }
    if s.max_in_flight == Some(0) {
        problem(out, at("max_in_flight"), "must be > 0");
    }
    pair(
        out,
        at,
        s.client_cert_file.is_some(),
        s.client_key_file.is_some(),
    );
    if s.username.is_some() != s.password_file.is_some() {
        problem(
            out,
            at("username"),
            "username and password_file go together",
        );
    }
    positive(out, at, "timeout_ms", s.timeout_ms);
    let creds = url_userinfo(&s.url).is_some() || s.username.is_some();
    cleartext(
        out,
        at,
        "url",
        &s.url,
        "mqtt://",
        "mqtts://",
        creds,
        s.allow_insecure,
    );
}

fn s3(out: &mut Vec<ConfigProblem>, s: &S3SinkConfig, at: &dyn Fn(&str) -> String) {
    // S3's bucket naming rules, the part that matters for a key in a URL.
    let bucket_ok = (3..=63).contains(&s.bucket.len())
        && s.bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !bucket_ok {
        problem(out, at("bucket"), "3-63 characters of [a-z0-9.-]");
    }
    if let Some(e) = &s.endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            problem(out, at("endpoint"), "must start with http:// or https://");
        }
        let creds = s.access_key_id_file.is_some();
        cleartext(
            out,
            at,
            "endpoint",
            e,
            "http://",
            "https://",
            creds,
            s.allow_insecure,
        );
    }
    if s.access_key_id_file.is_some() != s.secret_access_key_file.is_some() {
        problem(
            out,
            at("access_key_id_file"),
            "access_key_id_file and secret_access_key_file go together",
        );
    }
    if s.key_prefix.starts_with('/') {
        problem(out, at("key_prefix"), "must not start with '/'");
    }
    positive(out, at, "timeout_ms", s.timeout_ms);
    positive(out, at, "max_batch_records", s.max_batch_records as u64);
    positive(out, at, "max_batch_bytes", s.max_batch_bytes);
    positive(out, at, "max_batch_age_ms", s.max_batch_age_ms);
    if s.multipart_bytes < 5 << 20 {
        problem(
            out,
            at("multipart_bytes"),
            "must be >= 5242880 (S3's smallest part)",
        );
    }
    if s.sse_kms_key_id.is_some() && s.server_side_encryption.as_deref() != Some("aws:kms") {
        problem(
            out,
            at("sse_kms_key_id"),
            "needs server_side_encryption = \"aws:kms\"",
        );
    }
    if let Some(e) = &s.server_side_encryption {
        if e != "AES256" && e != "aws:kms" {
            problem(out, at("server_side_encryption"), "AES256 or aws:kms");
        }
    }
}

fn kafka(out: &mut Vec<ConfigProblem>, s: &KafkaSinkConfig, at: &dyn Fn(&str) -> String) {
    let ok = !s.brokers.is_empty()
        && s.brokers.split(',').all(|b| {
            b.trim()
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        });
    if !ok {
        problem(out, at("brokers"), "host:port[,host:port…]");
    }
    if s.topic.is_empty() || s.topic.len() > 249 {
        problem(out, at("topic"), "1-249 characters");
    }
    if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&s.compression.as_str()) {
        problem(out, at("compression"), "none, gzip, snappy, lz4 or zstd");
    }
    positive(out, at, "timeout_ms", s.timeout_ms);
    positive(out, at, "max_message_bytes", s.max_message_bytes);
    pair(
        out,
        at,
        s.client_cert_file.is_some(),
        s.client_key_file.is_some(),
    );
    match s.sasl_mechanism.as_deref() {
        None => {
            if s.sasl_username.is_some() || s.sasl_password_file.is_some() {
                problem(out, at("sasl_mechanism"), "required with sasl_username");
            }
        }
        Some("PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") => {
            if s.sasl_username.is_none() || s.sasl_password_file.is_none() {
                problem(
                    out,
                    at("sasl_username"),
                    "sasl_username and sasl_password_file are required with sasl_mechanism",
                );
            }
            let tls = s.tls || s.ca_file.is_some() || s.client_cert_file.is_some();
            if !tls && !s.allow_insecure {
                problem(
                    out,
                    at("sasl_mechanism"),
                    "sends credentials in cleartext without TLS: set tls = true (or ca_file), \
                     or allow_insecure = true on this sink",
                );
            }
        }
        Some(_) => problem(
            out,
            at("sasl_mechanism"),
            "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
        ),
    }
}

fn positive(out: &mut Vec<ConfigProblem>, at: &dyn Fn(&str) -> String, key: &str, v: u64) {
    if v == 0 {
        problem(out, at(key), "must be > 0");
    }
}

fn pair(out: &mut Vec<ConfigProblem>, at: &dyn Fn(&str) -> String, cert: bool, key: bool) {
    if cert != key {
        problem(
            out,
            at("client_cert_file"),
            "client_cert_file and client_key_file go together",
        );
    }
}

/// Credentials over a cleartext scheme, unless `allow_insecure` says so.
#[allow(clippy::too_many_arguments)]
fn cleartext(
    out: &mut Vec<ConfigProblem>,
    at: &dyn Fn(&str) -> String,
    key: &str,
    url: &str,
    plain: &str,
    secure: &str,
    creds: bool,
    allow_insecure: bool,
) {
    if creds && url.starts_with(plain) && !allow_insecure {
        problem(
            out,
            at(key),
            format!(
                "sends credentials in cleartext over {plain}: use {secure} instead, or set \
                 allow_insecure = true on this sink"
            ),
        );
    }
}
