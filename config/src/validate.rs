//! Semantic checks, every problem collected before reporting.

use crate::model::Config;
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

pub(crate) fn problem(
    out: &mut Vec<ConfigProblem>,
    path: impl Into<String>,
    message: impl Into<String>,
) {
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
    let sink_names: Vec<String> = c.sinks.iter().map(|s| s.name().to_string()).collect();
    for (path, m) in crate::route::route_problems(&c.routes, &sink_names) {
        problem(&mut out, &path, m);
    }
    for (field, [lo, hi]) in &c.admin.plausible {
        // NaN is no bound either.
        if !matches!(
            lo.partial_cmp(hi),
            Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
        ) {
            problem(
                &mut out,
                format!("admin.plausible.{field}"),
                "[low, high] with low <= high",
            );
        }
    }
    for (path, m) in c.control.problems(c.mqtt.enabled) {
        problem(&mut out, &path, m);
    }
    if c.control.requests == crate::control::RequestDoor::Upstream {
        let mqtt: Vec<String> = c
            .sinks
            .iter()
            .filter(|s| matches!(s, crate::sink::SinkConfig::Mqtt(_)))
            .map(|s| s.name().to_string())
            .collect();
        if let Err(m) = c.control.door_sink(&mqtt) {
            problem(&mut out, "control.requests_sink", m);
        }
    }
    if c.wal.max_group == 0 {
        problem(&mut out, "wal.max_group", "must be > 0");
    }
    for (sink, rate) in &c.delivery.max_records_per_sec {
        let path = format!("delivery.max_records_per_sec.{sink}");
        if !c.sinks.iter().any(|s| s.name() == sink) {
            problem(&mut out, &path, "names no configured sink");
        }
        if !(rate.is_finite() && *rate >= 0.1) {
            problem(&mut out, &path, "must be at least 0.1 records a second");
        }
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
    crate::sink::validate::validate_sinks(&mut out, &c.sinks);
    if c.mqtt.enabled {
        validate_mqtt(&mut out, &c.mqtt);
    }
    crate::traces::validate_tracing(&mut out, &c.tracing);
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
