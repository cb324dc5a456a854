//! Semantic checks, every problem collected before reporting.

use crate::model::{Config, SinkKind};
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
    if c.http.max_body_bytes == 0 {
        problem(&mut out, "http.max_body_bytes", "must be > 0");
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
                    ("bearer_token_file", s.bearer_token_file.is_some()),
                    ("ca_file", s.ca_file.is_some()),
                    ("client_cert_file", s.client_cert_file.is_some()),
                    ("client_key_file", s.client_key_file.is_some()),
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
            }
        }
    }
    out
}
