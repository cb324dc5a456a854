//! OpenTelemetry traces (`[tracing]`, issue 13): where spans go, how many are kept, and the
//! standard `OTEL_*` environment variables that set the same keys.
//!
//! Off unless an endpoint is set. Precedence as for every key: file < `OTEL_*` <
//! `EDGE_GATEWAY__TRACING__*` < `--set`.

use crate::validate::{problem, ConfigProblem};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which spans are kept (the names of `OTEL_TRACES_SAMPLER`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    #[serde(rename = "traceidratio")]
    TraceIdRatio,
    ParentbasedAlwaysOn,
    ParentbasedAlwaysOff,
    #[serde(rename = "parentbased_traceidratio")]
    ParentbasedTraceIdRatio,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TracingConfig {
    /// The OTLP/HTTP traces URL, e.g. `http://collector:4318/v1/traces`. Empty: no spans are
    /// made or exported (a device's `traceparent` is still stored and passed on downstream).
    pub endpoint: String,
    pub service_name: String,
    pub sampler: Sampler,
    /// The ratio for the `*traceidratio` samplers, 0.0–1.0. The default keeps 1 reading in
    /// 100: at 20k readings/s every reading traced costs what docs/operations.md measures.
    pub sampler_arg: f64,
    /// `key=value,key=value` added to the resource (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: String,
    /// `key=value,key=value` sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`), e.g. an
    /// API key; `headers_file` for secrets (one `key=value` per line).
    pub headers: String,
    pub headers_file: Option<PathBuf>,
    /// Finished spans waiting for export; when full, new spans are dropped and counted
    /// (`otel_spans_dropped_total`): a dead collector never grows memory or slows ingest.
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
    pub export_interval_ms: u64,
    pub export_timeout_ms: u64,
    /// TLS to the collector: trusted CA (PEM), and a client certificate for mTLS.
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            endpoint: String::new(),
            service_name: "edge-gateway".into(),
            sampler: Sampler::ParentbasedTraceIdRatio,
            sampler_arg: 0.01,
            resource_attributes: String::new(),
            headers: String::new(),
            headers_file: None,
            max_queue_size: 2048,
            max_export_batch_size: 512,
            export_interval_ms: 1000,
            export_timeout_ms: 10_000,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

impl TracingConfig {
    pub fn enabled(&self) -> bool {
        !self.endpoint.trim().is_empty()
    }
}

/// `key=value,key=value` (the OTel environment format; values may be percent-encoded, which
/// is left as is). Entries without `=` are problems.
pub fn parse_pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split([',', '\n'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| match e.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().into(), v.trim().into())),
            _ => Err(format!("{e:?} is not key=value")),
        })
        .collect()
}

pub(crate) fn validate_tracing(out: &mut Vec<ConfigProblem>, t: &TracingConfig) {
    if t.enabled() {
        match t.endpoint.split_once("://") {
            Some(("http" | "https", rest)) if !rest.is_empty() => {}
            _ => problem(
                out,
                "tracing.endpoint",
                "must be an http:// or https:// URL (OTLP/HTTP), e.g. http://collector:4318/v1/traces",
            ),
        }
    }
    if !(0.0..=1.0).contains(&t.sampler_arg) {
        problem(out, "tracing.sampler_arg", "must be between 0.0 and 1.0");
    }
    if t.service_name.trim().is_empty() {
        problem(out, "tracing.service_name", "must not be empty");
    }
    for (path, s) in [
        ("tracing.resource_attributes", &t.resource_attributes),
        ("tracing.headers", &t.headers),
    ] {
        if let Err(e) = parse_pairs(s) {
            problem(out, path, e);
        }
    }
    for (path, v) in [
        ("tracing.max_queue_size", t.max_queue_size as u64),
        (
            "tracing.max_export_batch_size",
            t.max_export_batch_size as u64,
        ),
        ("tracing.export_interval_ms", t.export_interval_ms),
        ("tracing.export_timeout_ms", t.export_timeout_ms),
    ] {
        if v == 0 {
            problem(out, path, "must be > 0");
        }
    }
    if t.client_cert_file.is_some() != t.client_key_file.is_some() {
        problem(
            out,
            "tracing.client_cert_file",
            "client_cert_file and client_key_file go together",
        );
    }
}

/// The standard OpenTelemetry variables as overrides of `tracing.*`
/// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` wins over `OTEL_EXPORTER_OTLP_ENDPOINT`, to which
/// `/v1/traces` is appended as the specification says; `OTEL_SDK_DISABLED=true` turns traces
/// off). Values are quoted so they stay strings.
pub fn otel_env_overrides(vars: &[(String, String)]) -> Vec<(String, String)> {
    let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let quoted = |v: &str| format!("{v:?}");
    let mut out = Vec::new();
    let endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .map(str::to_string)
        .or_else(|| {
            get("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|b| format!("{}/v1/traces", b.trim_end_matches('/')))
        });
    if let Some(e) = endpoint {
        out.push(("tracing.endpoint".into(), quoted(&e)));
    }
    if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        out.push(("tracing.endpoint".into(), quoted("")));
    }
    for (var, key) in [
        ("OTEL_SERVICE_NAME", "tracing.service_name"),
        ("OTEL_TRACES_SAMPLER", "tracing.sampler"),
        ("OTEL_RESOURCE_ATTRIBUTES", "tracing.resource_attributes"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "tracing.headers"),
    ] {
        if let Some(v) = get(var) {
            out.push((key.into(), quoted(v)));
        }
    }
    if let Some(v) = get("OTEL_TRACES_SAMPLER_ARG") {
        out.push(("tracing.sampler_arg".into(), v.trim().to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn otel_variables_become_tracing_keys() {
        let o = otel_env_overrides(&vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
            ("OTEL_SERVICE_NAME", "gw-7"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
            ("PATH", "/bin"),
        ]));
        assert_eq!(
            o,
            vars(&[
                ("tracing.endpoint", "\"http://c:4318/v1/traces\""),
                ("tracing.service_name", "\"gw-7\""),
                ("tracing.sampler", "\"always_on\""),
                ("tracing.sampler_arg", "0.5"),
            ])
        );
        let o = otel_env_overrides(&vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/x"),
        ]));
        assert_eq!(o, vars(&[("tracing.endpoint", "\"http://t:1/x\"")]));
        let o = otel_env_overrides(&vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ]));
        assert_eq!(
            o.last().unwrap(),
            &("tracing.endpoint".into(), "\"\"".into())
        );
    }

    #[test]
    fn pairs_and_problems() {
        assert_eq!(
            parse_pairs("a=1, b = x=y").unwrap(),
            vec![("a".into(), "1".into()), ("b".into(), "x=y".into())]
        );
        assert!(parse_pairs("a=1,junk").is_err());
        let mut out = Vec::new();
        let t = TracingConfig {
            endpoint: "collector:4318".into(),
            sampler_arg: 1.5,
            max_queue_size: 0,
            client_cert_file: Some("c.pem".into()),
            ..TracingConfig::default()
        };
        validate_tracing(&mut out, &t);
        let paths: Vec<_> = out.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "tracing.endpoint",
                "tracing.sampler_arg",
                "tracing.max_queue_size",
                "tracing.client_cert_file"
            ]
        );
        let mut out = Vec::new();
        validate_tracing(&mut out, &TracingConfig::default());
        assert!(out.is_empty(), "{out:?}");
    }
}
