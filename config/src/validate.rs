//! Semantic checks, every problem collected before reporting.

use crate::model::{Config, SinkConfig, SinkKind};
use crate::mqtt::{device_level, BrokerAddr, MqttConfig};
use std::fmt;

/// One thing wrong with the configuration, at a dotted path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config is not valid TOML ({origin}): {message}")]
    Syntax { origin: String, message: String },
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
}

fn problem(out: &mut Vec<ConfigProblem>, path: impl Into<String>, message: impl Into<String>) {
    out.push(ConfigProblem {
        path: path.into(),
        message: message.into(),
    });
}

/// Checks what types alone cannot; returns every problem found.
pub fn validate(c: &Config) -> Vec<ConfigProblem> {
    let mut out = Vec::new();
    if c.gateway_id.trim().is_empty() {
        problem(&mut out, "gateway_id", "must not be empty");
    }
    if c.http.max_body_bytes == 0 || c.http.max_body_bytes > u64::from(u32::MAX) {
        problem(&mut out, "http.max_body_bytes", "must be > 0 and < 4 GiB");
    }
    for (path, v) in [
        ("http.max_in_flight", c.http.max_in_flight),
        ("http.max_connections", c.http.max_connections),
        (
            "http.max_connections_per_peer",
            c.http.max_connections_per_peer,
        ),
        ("admin.max_connections", c.admin.max_connections),
        (
            "admin.max_connections_per_peer",
            c.admin.max_connections_per_peer,
        ),
    ] {
        if v == 0 {
            problem(&mut out, path, "must be > 0");
        }
    }
    if c.http.max_in_flight_bytes < c.http.max_body_bytes {
        problem(
            &mut out,
            "http.max_in_flight_bytes",
            "must be >= http.max_body_bytes (else a largest request could never be read)",
        );
    }
    for (path, enabled, listen, tls) in [
        (
            "http.listen",
            c.http.enabled,
            c.http.listen,
            c.http.tls.is_some(),
        ),
        ("admin.listen", true, c.admin.listen, c.admin.tls.is_some()),
    ] {
        if enabled && !tls && !listen.ip().is_loopback() && !c.insecure_listen {
            problem(
                &mut out,
                path,
                format!(
                    "{listen} is reachable from the network without TLS: configure TLS for it \
                     (recommended), or accept cleartext with --insecure-listen \
                     (insecure_listen = true)"
                ),
            );
        }
    }
    if c.http.max_batch == 0 {
        problem(&mut out, "http.max_batch", "must be > 0");
    }
    if c.http.enabled && c.http.listen == c.admin.listen && c.http.listen.port() != 0 {
        problem(&mut out, "admin.listen", "must differ from http.listen");
    }
    if c.wal.max_group == 0 {
        problem(&mut out, "wal.max_group", "must be > 0");
    }
    if c.delivery.batch_size == 0 {
        problem(&mut out, "delivery.batch_size", "must be > 0");
    }
    if c.delivery.max_attempts == 0 {
        problem(&mut out, "delivery.max_attempts", "must be > 0");
    }
    if c.delivery.backoff_initial_ms > c.delivery.backoff_max_ms {
        problem(
            &mut out,
            "delivery.backoff_initial_ms",
            "must be <= delivery.backoff_max_ms",
        );
    }
    for (device, hash) in &c.auth.devices {
        let ok = hash
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            problem(
                &mut out,
                format!("auth.devices.{device}"),
                "must be \"sha256:<64 hex digits>\" (see `edge-gateway token hash`)",
            );
        }
    }
    if c.sinks.is_empty() {
        problem(&mut out, "sinks", "at least one sink is required");
    }
    let mut names = std::collections::HashSet::new();
    for (i, s) in c.sinks.iter().enumerate() {
        let at = |k: &str| format!("sinks[{i}].{k}");
        let name_ok = !s.name.is_empty()
            && s.name.len() <= 64
            && s.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            problem(&mut out, at("name"), "1-64 characters of [A-Za-z0-9_-]");
        }
        if !names.insert(s.name.clone()) {
            problem(
                &mut out,
                at("name"),
                format!("duplicate sink name {:?}", s.name),
            );
        }
        match s.kind {
            SinkKind::File => {
                if s.path.is_none() {
                    problem(&mut out, at("path"), "required for a file sink");
                }
                for (k, set) in [
                    ("url", s.url.is_some()),
                    ("topic", s.topic.is_some()),
                    ("client_id", s.client_id.is_some()),
                    ("protocol", s.protocol.is_some()),
                    ("bearer_token_file", s.bearer_token_file.is_some()),
                    ("ca_file", s.ca_file.is_some()),
                    ("client_cert_file", s.client_cert_file.is_some()),
                    ("client_key_file", s.client_key_file.is_some()),
                    ("max_batch_bytes", s.max_batch_bytes.is_some()),
                    ("max_packet_bytes", s.max_packet_bytes.is_some()),
                    ("ack", s.ack.is_some()),
                ] {
                    if set {
                        problem(&mut out, at(k), "does not apply to a file sink");
                    }
                }
            }
            SinkKind::Http => {
                match &s.url {
                    None => problem(&mut out, at("url"), "required for an http sink"),
                    Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                        problem(&mut out, at("url"), "must start with http:// or https://")
                    }
                    Some(_) => {}
                }
                if s.path.is_some() {
                    problem(&mut out, at("path"), "does not apply to an http sink");
                }
                for (k, set) in [
                    ("topic", s.topic.is_some()),
                    ("topic_prefix", s.topic_prefix.is_some()),
                    ("client_id", s.client_id.is_some()),
                    ("max_in_flight", s.max_in_flight.is_some()),
                    ("protocol", s.protocol.is_some()),
                    ("username", s.username.is_some()),
                    ("password_file", s.password_file.is_some()),
                    ("max_packet_bytes", s.max_packet_bytes.is_some()),
                ] {
                    if set {
                        problem(&mut out, at(k), "does not apply to an http sink");
                    }
                }
                if s.client_cert_file.is_some() != s.client_key_file.is_some() {
                    problem(
                        &mut out,
                        at("client_cert_file"),
                        "client_cert_file and client_key_file go together",
                    );
                }
                if s.timeout_ms == 0 {
                    problem(&mut out, at("timeout_ms"), "must be > 0");
                }
                if s.max_batch_bytes == Some(0) {
                    problem(&mut out, at("max_batch_bytes"), "must be > 0");
                }
            }
            SinkKind::Mqtt => validate_mqtt_sink(&mut out, s, &at),
        }
        if let Some(why) = cleartext_credentials(s) {
            problem(&mut out, at("url"), why);
        }
    }
    if c.mqtt.enabled {
        validate_mqtt(&mut out, &c.mqtt);
    }
    out
}

/// The user info of a URL (`user:pass@`), if any.
pub fn url_userinfo(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.rsplit_once('@').map(|(u, _)| u)
}

/// The URL with its user info replaced, for printing.
pub fn redact_url(url: &str) -> String {
    match url_userinfo(url) {
        Some(u) => url.replacen(&format!("{u}@"), "<redacted>@", 1),
        None => url.to_string(),
    }
}

/// A sink that would send credentials over plain http:// or mqtt:// without saying so.
fn cleartext_credentials(s: &SinkConfig) -> Option<String> {
    let url = s.url.as_deref()?;
    let scheme = ["http://", "mqtt://"]
        .into_iter()
        .find(|p| url.starts_with(p))?;
    let creds = url_userinfo(url).is_some()
        || s.bearer_token_file.is_some()
        || s.username.is_some()
        || s.password_file.is_some();
    (creds && !s.allow_insecure).then(|| {
        format!(
            "sends credentials in cleartext over {scheme}: use {} instead, or set \
             allow_insecure = true on this sink",
            if scheme == "http://" {
                "https://"
            } else {
                "mqtts://"
            }
        )
    })
}

fn validate_mqtt_sink(out: &mut Vec<ConfigProblem>, s: &SinkConfig, at: &dyn Fn(&str) -> String) {
    match &s.url {
        None => problem(
            out,
            at("url"),
            "required for an mqtt sink (mqtt[s]://host:port)",
        ),
        Some(u) => {
            if let Err(e) = BrokerAddr::parse(u) {
                problem(out, at("url"), e);
            }
        }
    }
    if s.max_packet_bytes == Some(0) {
        problem(out, at("max_packet_bytes"), "must be > 0");
    }
    if s.ack.is_some() {
        problem(
            out,
            at("ack"),
            "does not apply to an mqtt sink (its acknowledgement is the broker's PUBACK)",
        );
    }
    for (k, set) in [
        ("path", s.path.is_some()),
        ("bearer_token_file", s.bearer_token_file.is_some()),
        ("max_batch_bytes", s.max_batch_bytes.is_some()),
    ] {
        if set {
            problem(
                out,
                at(k),
                "does not apply to an mqtt sink (see max_packet_bytes)",
            );
        }
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
    if s.client_cert_file.is_some() != s.client_key_file.is_some() {
        problem(
            out,
            at("client_cert_file"),
            "client_cert_file and client_key_file go together",
        );
    }
    if s.username.is_some() != s.password_file.is_some() {
        problem(
            out,
            at("username"),
            "username and password_file go together",
        );
    }
    if s.timeout_ms == 0 {
        problem(out, at("timeout_ms"), "must be > 0");
    }
}

fn validate_mqtt(out: &mut Vec<ConfigProblem>, m: &MqttConfig) {
    if let Err(e) = BrokerAddr::parse(&m.broker) {
        problem(out, "mqtt.broker", e);
    }
    if m.subscriptions.is_empty() {
        problem(
            out,
            "mqtt.subscriptions",
            "at least one subscription is required",
        );
    }
    for (i, sub) in m.subscriptions.iter().enumerate() {
        if let Err(e) = device_level(&sub.filter) {
            problem(out, format!("mqtt.subscriptions[{i}].filter"), e);
        }
    }
    if m.max_unacked == 0 || m.max_unacked > u16::MAX as usize {
        problem(out, "mqtt.max_unacked", "must be 1..=65535");
    }
    if m.max_payload_bytes == 0 {
        problem(out, "mqtt.max_payload_bytes", "must be > 0");
    }
    if m.max_unacked_bytes < m.max_payload_bytes || m.max_unacked_bytes > u32::MAX as usize {
        problem(
            out,
            "mqtt.max_unacked_bytes",
            "must be >= mqtt.max_payload_bytes and < 4 GiB",
        );
    }
    if m.keep_alive_secs < 5 {
        problem(out, "mqtt.keep_alive_secs", "must be >= 5");
    }
    if m.reconnect_initial_ms == 0 || m.reconnect_initial_ms > m.reconnect_max_ms {
        problem(
            out,
            "mqtt.reconnect_initial_ms",
            "must be > 0 and <= mqtt.reconnect_max_ms",
        );
    }
    if m.username.is_some() != m.password_file.is_some() {
        problem(
            out,
            "mqtt.username",
            "username and password_file go together",
        );
    }
    if let Some(t) = &m.tls {
        if t.client_cert_file.is_some() != t.client_key_file.is_some() {
            problem(
                out,
                "mqtt.tls.client_cert_file",
                "client_cert_file and client_key_file go together",
            );
        }
        if !m.broker.starts_with("mqtts://") {
            problem(out, "mqtt.tls", "set, but mqtt.broker is not mqtts://");
        }
    }
}
