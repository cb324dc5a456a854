//! Finished spans to the collector: a bounded queue and one export task.
//!
//! Invariants:
//! - `on_end` never waits and never allocates beyond the queue: a full queue (a dead or slow
//!   collector) drops the span and counts it (`otel_spans_dropped_total`). Ingest never
//!   slows down for traces and memory stays at `max_queue_size` spans.
//! - One export at a time, each bounded by `export_timeout_ms`; a failed export is counted and
//!   its spans are dropped (no retry queue that could grow).
//!
//! (The SDK's own batch processor runs its export on a thread without a tokio reactor, where
//! an async HTTP client panics — `../shared/NOTES-deps.md` — and it exposes no dropped count.)

use super::TraceMetrics;
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The queue's sending half, given to the tracer provider.
#[derive(Debug)]
pub struct BoundedProcessor {
    tx: mpsc::Sender<SpanData>,
    flush: mpsc::UnboundedSender<oneshot::Sender<()>>,
    metrics: TraceMetrics,
}

/// How the export task batches.
#[derive(Debug, Clone, Copy)]
pub struct ExportPlan {
    pub max_queue: usize,
    pub max_batch: usize,
    pub interval: Duration,
    pub timeout: Duration,
}

impl BoundedProcessor {
    /// Starts the export task on the current runtime.
    pub fn start<E: SpanExporter + 'static>(
        exporter: E,
        plan: ExportPlan,
        metrics: TraceMetrics,
    ) -> (BoundedProcessor, Flusher) {
        let (tx, rx) = mpsc::channel(plan.max_queue);
        let (flush, flush_rx) = mpsc::unbounded_channel();
        tokio::spawn(run(exporter, plan, rx, flush_rx, metrics.clone()));
        (
            BoundedProcessor {
                tx,
                flush: flush.clone(),
                metrics,
            },
            Flusher(flush),
        )
    }
}

impl SpanProcessor for BoundedProcessor {
    fn on_start(&self, _: &mut Span, _: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.tx.try_send(span).is_err() {
            self.metrics.dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Asynchronous here (this is called from runtime threads): `Flusher::flush` waits.
        let (done, _) = oneshot::channel();
        let _ = self.flush.send(done);
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Asks the export task to send what it holds, and waits for it.
#[derive(Debug, Clone)]
pub struct Flusher(mpsc::UnboundedSender<oneshot::Sender<()>>);

impl Flusher {
    pub async fn flush(&self, within: Duration) {
        let (done, wait) = oneshot::channel();
        if self.0.send(done).is_ok() {
            let _ = tokio::time::timeout(within, wait).await;
        }
    }
}

async fn run<E: SpanExporter>(
    exporter: E,
    plan: ExportPlan,
    mut rx: mpsc::Receiver<SpanData>,
    mut flush_rx: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    metrics: TraceMetrics,
) {
    let mut tick = tokio::time::interval(plan.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(plan.max_batch);
    loop {
        let mut flushed = None;
        let room = plan.max_batch - batch.len();
        tokio::select! {
            n = rx.recv_many(&mut batch, room) => {
                if n == 0 {
                    break;
                }
                if batch.len() < plan.max_batch {
                    continue;
                }
            }
            _ = tick.tick() => {}
            done = flush_rx.recv() => {
                while let Ok(s) = rx.try_recv() {
                    batch.push(s);
                }
                flushed = done;
            }
        }
        // A flush may hold more than one batch's worth.
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(plan.max_batch));
            let spans = std::mem::replace(&mut batch, rest);
            let n = spans.len() as u64;
            match tokio::time::timeout(plan.timeout, exporter.export(spans)).await {
                Ok(Ok(())) => metrics.exported.inc_by(n),
                Ok(Err(e)) => {
                    metrics.failed.inc_by(n);
                    tracing::debug!(error = %e, spans = n, "span export failed");
                }
                Err(_) => {
                    metrics.failed.inc_by(n);
                    tracing::debug!(spans = n, "span export timed out");
                }
            }
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

/// The OTLP exporter's HTTP client: the gateway's own reqwest (one TLS stack, OpenSSL).
#[derive(Debug)]
pub struct ReqwestClient(pub reqwest::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ReqwestClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let mut req = self
            .0
            .request(parts.method, parts.uri.to_string())
            .body(body);
        for (k, v) in &parts.headers {
            req = req.header(k, v);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        // Bounded: the collector's answer is read only up to 64 KiB.
        let mut body = Vec::new();
        let mut resp = resp;
        while let Some(chunk) = resp.chunk().await? {
            if body.len() + chunk.len() > 64 * 1024 {
                break;
            }
            body.extend_from_slice(&chunk);
        }
        let mut out = http::Response::builder().status(status);
        if let Some(h) = out.headers_mut() {
            *h = headers;
        }
        Ok(out.body(bytes::Bytes::from(body))?)
    }
}
