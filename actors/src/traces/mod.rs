//! OpenTelemetry traces (issue 13): the spans a reading leaves on its way through the gateway,
//! exported over OTLP/HTTP (protobuf) to a collector.
//!
//! A reading's trace: the ingest span (`POST /ingest/{device_id}` or `receive devices/…`),
//! parented on the device's `traceparent` when it sent one, with children `decode` and
//! `wal.append`; the WAL's group commit is a span of its own, linked to the readings it
//! carried (`wal.commit`); each delivery attempt to each sink is a `publish {sink}` span whose
//! parent is the ingest span — found through the context **stored with the record in the
//! WAL**, so an attempt after a restart or a long outage still joins the reading's trace. The
//! sinks pass that span on: `traceparent` header (http), user property (MQTT 5), Kafka header,
//! and each record's JSON carries its stored `traceparent`.
//!
//! Not an actor: spans are made on the tasks that do the work, and the export runs on its own
//! task behind a bounded queue (`export.rs`). Off (no spans, no cost beyond a branch) unless
//! `tracing.endpoint` is set; a device's `traceparent` is stored and passed on regardless.

mod context;
mod export;
mod spans;

pub use context::{TraceParent, TraceParentText};
pub use spans::{
    commit_span, group_span, kept_contexts, root_span, IngestSpan, PublishSpans, StepSpan,
};

use crate::metrics::reg;
use edge_gateway_config::{parse_pairs, Sampler as SamplerConfig, TracingConfig};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanExporter as _};
use opentelemetry_sdk::Resource;
use prometheus::{IntCounter, Registry};
use std::sync::OnceLock;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("tracing: {0}")]
    Config(String),
    #[error("tracing: the OTLP exporter: {0}")]
    Exporter(String),
}

/// Counted whether or not traces are on (0 when off), so dashboards have the series.
#[derive(Debug, Clone)]
pub struct TraceMetrics {
    pub exported: IntCounter,
    pub dropped: IntCounter,
    pub failed: IntCounter,
}

impl TraceMetrics {
    pub fn new(r: &Registry) -> TraceMetrics {
        let c = |n: &str, h: &str| reg(r, IntCounter::new(n, h).expect("valid metric"));
        TraceMetrics {
            exported: c("otel_spans_exported_total", "Spans the collector accepted."),
            dropped: c(
                "otel_spans_dropped_total",
                "Spans dropped because the export queue was full (a slow or dead collector).",
            ),
            failed: c(
                "otel_spans_export_failed_total",
                "Spans in exports that failed or timed out (not retried).",
            ),
        }
    }
}

struct Traces {
    tracer: SdkTracer,
    flusher: export::Flusher,
    _provider: SdkTracerProvider,
}

static TRACES: OnceLock<Traces> = OnceLock::new();

/// The tracer, when traces are on.
fn tracer() -> Option<&'static SdkTracer> {
    TRACES.get().map(|t| &t.tracer)
}

pub fn enabled() -> bool {
    TRACES.get().is_some()
}

/// Starts the exporter (on the current runtime) when `cfg` has an endpoint. Once per process.
pub fn init(cfg: &TracingConfig, metrics: &TraceMetrics) -> Result<bool, TraceError> {
    if !cfg.enabled() {
        return Ok(false);
    }
    let mut headers: std::collections::HashMap<String, String> = parse_pairs(&cfg.headers)
        .map_err(TraceError::Config)?
        .into_iter()
        .collect();
    if let Some(p) = &cfg.headers_file {
        let text = crate::ingest::auth::read_secret(p)
            .map_err(|e| TraceError::Config(format!("headers_file {}: {e}", p.display())))?;
        headers.extend(parse_pairs(&text).map_err(TraceError::Config)?);
    }
    let client = crate::sinks::http::with_tls(
        reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.export_timeout_ms))
            .redirect(reqwest::redirect::Policy::none()),
        cfg.ca_file.as_deref(),
        cfg.client_cert_file
            .as_deref()
            .zip(cfg.client_key_file.as_deref()),
    )
    .and_then(|b| b.build().map_err(|e| e.to_string()))
    .map_err(TraceError::Config)?;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(export::ReqwestClient(client))
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(cfg.endpoint.trim())
        .with_timeout(Duration::from_millis(cfg.export_timeout_ms))
        .with_headers(headers)
        .build()
        .map_err(|e| TraceError::Exporter(e.to_string()))?;
    let resource = Resource::builder_empty()
        .with_service_name(cfg.service_name.clone())
        .with_attributes(
            parse_pairs(&cfg.resource_attributes)
                .map_err(TraceError::Config)?
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v)),
        )
        .with_attributes([KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))])
        .build();
    exporter.set_resource(&resource);
    let (processor, flusher) = export::BoundedProcessor::start(
        exporter,
        export::ExportPlan {
            max_queue: cfg.max_queue_size,
            max_batch: cfg.max_export_batch_size,
            interval: Duration::from_millis(cfg.export_interval_ms),
            timeout: Duration::from_millis(cfg.export_timeout_ms),
        },
        metrics.clone(),
    );
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler(cfg.sampler, cfg.sampler_arg))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("edge-gateway");
    TRACES
        .set(Traces {
            tracer,
            flusher,
            _provider: provider,
        })
        .map_err(|_| TraceError::Config("already started".into()))?;
    Ok(true)
}

fn sampler(s: SamplerConfig, arg: f64) -> Sampler {
    let ratio = || Box::new(Sampler::TraceIdRatioBased(arg));
    match s {
        SamplerConfig::AlwaysOn => Sampler::AlwaysOn,
        SamplerConfig::AlwaysOff => Sampler::AlwaysOff,
        SamplerConfig::TraceIdRatio => Sampler::TraceIdRatioBased(arg),
        SamplerConfig::ParentbasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        SamplerConfig::ParentbasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        SamplerConfig::ParentbasedTraceIdRatio => Sampler::ParentBased(ratio()),
    }
}

/// Sends the spans still queued (at shutdown), waiting at most `within`.
pub async fn flush(within: Duration) {
    if let Some(t) = TRACES.get() {
        t.flusher.flush(within).await;
    }
}
