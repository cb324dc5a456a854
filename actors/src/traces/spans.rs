//! The spans themselves. Each constructor is a no-op when traces are off (`tracer()` is
//! `None`): one branch, no allocation.
//!
//! Attribute names follow the OpenTelemetry semantic conventions where one exists
//! (`http.request.method`, `http.route`, `http.response.status_code`, `messaging.system`,
//! `messaging.destination.name`, `messaging.operation.type`, `error.type`) plus the gateway's
//! own `device.id`, `sink.name`, `wal.seq`, `publish.attempt`.

use super::{tracer, TraceParent};
use crate::sinks::PublishResult;
use crate::wal::{Leased, Record};
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::Span;
use std::time::SystemTime;

/// At most this many links on one commit span (a group can hold thousands of readings).
const MAX_LINKS: usize = 128;

fn remote(tp: TraceParent) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_bytes(tp.trace_id),
        SpanId::from_bytes(tp.span_id),
        TraceFlags::new(tp.flags),
        true,
        TraceState::NONE,
    ))
}

fn of(sc: &SpanContext) -> TraceParent {
    TraceParent {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
    }
}

/// One ingest request (HTTP) or message (MQTT): the root of a reading's spans in the gateway.
pub struct IngestSpan {
    span: Option<Span>,
    cx: Context,
    incoming: Option<TraceParent>,
}

impl IngestSpan {
    /// `POST /ingest/{device_id}`, parented on the request's `traceparent`.
    pub fn http(device_id: &str, incoming: Option<TraceParent>) -> IngestSpan {
        Self::start(incoming, |t, parent| {
            let mut span = t
                .span_builder("POST /ingest/{device_id}")
                .with_kind(SpanKind::Server)
                .start_with_context(t, parent);
            // Attributes only on kept spans: most are not, and would only allocate.
            if span.is_recording() {
                span.set_attributes([
                    KeyValue::new("http.request.method", "POST"),
                    KeyValue::new("http.route", "/ingest/{device_id}"),
                    KeyValue::new("url.path", format!("/ingest/{device_id}")),
                    KeyValue::new("device.id", device_id.to_string()),
                ]);
            }
            span
        })
    }

    /// `receive {topic}` for a PUBLISH from a device (the ingest session speaks MQTT 3.1.1,
    /// which has no user properties: the span starts a trace).
    pub fn mqtt(topic: &str, device_id: Option<&str>) -> IngestSpan {
        Self::start(None, |t, parent| {
            let mut span = t
                .span_builder("receive")
                .with_kind(SpanKind::Consumer)
                .start_with_context(t, parent);
            // Named and described only when kept: most are not, and would only allocate.
            if span.is_recording() {
                span.update_name(format!("receive {topic}"));
                span.set_attributes([
                    KeyValue::new("messaging.system", "mqtt"),
                    KeyValue::new("messaging.operation.type", "receive"),
                    KeyValue::new("messaging.destination.name", topic.to_string()),
                ]);
                if let Some(d) = device_id {
                    span.set_attribute(KeyValue::new("device.id", d.to_string()));
                }
            }
            span
        })
    }

    fn start(
        incoming: Option<TraceParent>,
        build: impl FnOnce(&opentelemetry_sdk::trace::SdkTracer, &Context) -> Span,
    ) -> IngestSpan {
        let Some(t) = tracer() else {
            return IngestSpan {
                span: None,
                cx: Context::new(),
                incoming,
            };
        };
        let parent = incoming.map(remote).unwrap_or_default();
        let span = build(t, &parent);
        let cx = remote(of(span.span_context()));
        IngestSpan {
            span: Some(span),
            cx,
            incoming,
        }
    }

    /// Whether this request's spans are kept.
    pub fn recording(&self) -> bool {
        self.span.as_ref().is_some_and(|s| s.is_recording())
    }

    /// The context stored with the request's records: this span when it is kept, else the
    /// device's own `traceparent` (passed on downstream unchanged), else none.
    pub fn record_context(&self) -> Option<TraceParent> {
        match &self.span {
            Some(s) if s.is_recording() => Some(of(s.span_context())),
            _ => self.incoming,
        }
    }

    /// `(trace_id, span_id)` for log lines, when the span is kept.
    pub fn log_ids(&self) -> Option<(String, String)> {
        self.recording().then(|| {
            let tp = of(self.span.as_ref().expect("recording").span_context());
            (tp.trace_id_hex(), tp.span_id_hex())
        })
    }

    /// A child step (`decode`, `wal.append`).
    pub fn step(&self, name: &'static str) -> StepSpan {
        match (tracer(), self.recording()) {
            (Some(t), true) => StepSpan(Some(t.span_builder(name).start_with_context(t, &self.cx))),
            _ => StepSpan(None),
        }
    }

    /// Ends the span with the answer given (`status`: HTTP status, 0 for MQTT).
    pub fn finish(mut self, status: u16, error: Option<&str>) {
        if let Some(s) = &mut self.span {
            if status > 0 {
                s.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
            }
            if let Some(e) = error {
                s.set_attribute(KeyValue::new("error.type", e.to_string()));
                if status >= 500 || status == 0 {
                    s.set_status(Status::error(e.to_string()));
                }
            }
            s.end();
        }
    }
}

/// A span that starts a trace of its own (a control command), kept as the sampler decides.
pub fn root_span(name: String, attrs: Vec<KeyValue>) -> StepSpan {
    StepSpan(tracer().map(|t| {
        t.span_builder(name)
            .with_attributes(attrs)
            .start_with_context(t, &Context::new())
    }))
}

/// A child of an ingest span, or a root (`root_span`); ends when dropped.
pub struct StepSpan(Option<Span>);

impl StepSpan {
    pub fn set(&mut self, kv: KeyValue) {
        if let Some(s) = &mut self.0 {
            s.set_attribute(kv);
        }
    }

    pub fn fail(&mut self, why: &str) {
        if let Some(s) = &mut self.0 {
            s.set_status(Status::error(why.to_string()));
        }
    }
}

impl Drop for StepSpan {
    fn drop(&mut self) {
        if let Some(s) = &mut self.0 {
            s.end();
        }
    }
}

/// The kept contexts among a group's appended records (empty when traces are off).
pub fn kept_contexts<'a>(records: impl Iterator<Item = &'a Record>) -> Vec<TraceParent> {
    if tracer().is_none() {
        return Vec::new();
    }
    records
        .filter_map(|r| r.trace.filter(TraceParent::sampled))
        .collect()
}

/// The WAL's group commit, started at `started` and ending now (see [`group_span`]).
pub fn commit_span(started: SystemTime, kept: &[TraceParent], records: usize, appends: usize) {
    group_span(
        "wal.commit",
        started,
        kept,
        vec![
            KeyValue::new("wal.records", records as i64),
            KeyValue::new("wal.appends", appends as i64),
        ],
    );
}

/// A step that handles many readings at once (a group commit, a lease), started at `started`
/// and ending now: a child of the first kept reading it carried, linked to the others (at most
/// [`MAX_LINKS`]). Nothing when no reading in it is kept.
pub fn group_span(
    name: &'static str,
    started: SystemTime,
    kept: &[TraceParent],
    attrs: Vec<KeyValue>,
) {
    let (Some(t), Some(first)) = (tracer(), kept.first()) else {
        return;
    };
    let links: Vec<_> = kept[1..]
        .iter()
        .take(MAX_LINKS)
        .map(|tp| Link::with_context(remote(*tp).span().span_context().clone()))
        .collect();
    let mut span = t
        .span_builder(name)
        .with_start_time(started)
        .with_links(links)
        .with_attributes(attrs)
        .start_with_context(t, &remote(*first));
    span.end();
}

/// One delivery attempt's spans, one per kept record of the batch.
pub struct PublishSpans(Vec<Span>);

impl PublishSpans {
    /// Starts `publish {sink}` for each kept record (parent: the context stored with it) and
    /// sets the record's `send_trace` to it, which the sink passes on.
    pub fn start(sink: &str, system: &'static str, batch: &mut [Leased]) -> PublishSpans {
        let Some(t) = tracer() else {
            return PublishSpans(Vec::new());
        };
        let mut spans = Vec::new();
        for l in batch.iter_mut() {
            let Some(tp) = l.record.trace.filter(TraceParent::sampled) else {
                continue;
            };
            let span = t
                .span_builder(format!("publish {sink}"))
                .with_kind(SpanKind::Producer)
                .with_attributes([
                    KeyValue::new("messaging.system", system),
                    KeyValue::new("messaging.operation.type", "send"),
                    KeyValue::new("sink.name", sink.to_string()),
                    KeyValue::new("device.id", l.record.device_id.clone()),
                    KeyValue::new("wal.seq", l.seq as i64),
                    KeyValue::new("publish.attempt", i64::from(l.attempts)),
                ])
                .start_with_context(t, &remote(tp));
            l.record.send_trace = Some(of(span.span_context()));
            spans.push(span);
        }
        PublishSpans(spans)
    }

    /// The first kept record's trace id, for the log line of a failed batch.
    pub fn first_trace_id(&self) -> Option<String> {
        self.0.first().map(|s| of(s.span_context()).trace_id_hex())
    }

    /// Ends the spans with the batch's result: an error status and a `retry` or
    /// `dead_letter` event when it failed.
    pub fn finish(self, result: &PublishResult, batch_len: usize) {
        for mut s in self.0 {
            s.set_attribute(KeyValue::new("publish.batch_size", batch_len as i64));
            let (event, why) = match result {
                PublishResult::Delivered => {
                    s.end();
                    continue;
                }
                PublishResult::NotSent => ("held", "held back behind a failed batch"),
                PublishResult::Outage { reason, .. } => ("retry", reason.as_str()),
                PublishResult::Transient(r) => ("retry", r.as_str()),
                PublishResult::Permanent(r) | PublishResult::TooBig(r) if batch_len == 1 => {
                    ("dead_letter", r.as_str())
                }
                PublishResult::Permanent(r) | PublishResult::TooBig(r) => ("split", r.as_str()),
            };
            s.add_event(event, vec![KeyValue::new("reason", why.to_string())]);
            s.set_status(Status::error(why.to_string()));
            s.end();
        }
    }
}
