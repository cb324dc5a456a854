//! OpenTelemetry traces (issue 13) through the real binary: an OTLP/HTTP receiver decodes
//! what the gateway exports (`ExportTraceServiceRequest`, protobuf) and a recording HTTP sink
//! shows what is passed on downstream.

mod common;

use common::otlp::{Collector, Span};
use common::sink::{Behaviour, RecordingSink};
use common::*;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const DEVICE_SPAN: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE}-{DEVICE_SPAN}-01")
}

fn sink_config(sink: &RecordingSink) -> String {
    format!(
        "[[sinks]]\nname = \"analytics\"\ntype = \"http\"\nurl = \"{}\"\n\
         [delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\n",
        sink.url()
    )
}

async fn post(gw: &Gateway, device: &str, body: serde_json::Value, tp: Option<&str>) -> u16 {
    let mut req = client()
        .post(gw.url(&format!("/ingest/{device}")))
        .bearer_auth(&gw.token)
        .json(&body);
    if let Some(t) = tp {
        req = req.header("traceparent", t);
    }
    req.send().await.unwrap().status().as_u16()
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found = named(spans, name);
    assert_eq!(found.len(), 1, "one {name:?} span expected: {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_with_a_traceparent_is_one_trace_from_ingest_to_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start().await;
    let sink = RecordingSink::start().await;
    let cfg = write_config(dir.path(), &sink_config(&sink));
    // The standard variables, as an operator would set them.
    let gw = Gateway::start_with_env(
        &cfg,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint()),
            ("OTEL_SERVICE_NAME", "gw-under-test"),
            ("OTEL_TRACES_SAMPLER", "parentbased_always_off"),
        ],
    );
    assert_eq!(
        post(
            &gw,
            "d-1",
            json!({"seq": 1, "t": 20.5}),
            Some(&traceparent())
        )
        .await,
        202
    );
    // Not sampled by its parent: nothing exported, the context still passed on.
    let unsampled = format!("00-{}-{DEVICE_SPAN}-00", "1".repeat(32));
    assert_eq!(
        post(&gw, "d-1", json!({"seq": 2, "t": 20.6}), Some(&unsampled)).await,
        202
    );
    let want: HashSet<String> = ["d-1/seq/1".into(), "d-1/seq/2".into()].into();
    sink.wait_for_keys(&want, Duration::from_secs(30))
        .await
        .unwrap();

    let spans = collector
        .wait_for(Duration::from_secs(30), |s| {
            !named(s, "publish analytics").is_empty() && !named(s, "wal.commit").is_empty()
        })
        .await;
    assert!(
        spans.iter().all(|s| s.trace_id == TRACE),
        "only the sampled reading's trace is exported: {spans:#?}"
    );
    assert!(spans.iter().all(|s| s.service == "gw-under-test"));
    let ingest = one(&spans, "POST /ingest/{device_id}");
    assert_eq!(
        ingest.parent_span_id, DEVICE_SPAN,
        "the device's span is the parent"
    );
    assert_eq!(ingest.attrs["http.response.status_code"], "202");
    assert_eq!(ingest.attrs["device.id"], "d-1");
    for step in ["decode", "wal.append", "wal.commit", "dispatcher.lease"] {
        assert_eq!(one(&spans, step).parent_span_id, ingest.span_id, "{step}");
    }
    let seq = &one(&spans, "wal.append").attrs["wal.seq"];
    let publish = one(&spans, "publish analytics");
    assert_eq!(publish.parent_span_id, ingest.span_id);
    assert_eq!(publish.attrs["sink.name"], "analytics");
    assert_eq!(publish.attrs["messaging.system"], "http");
    assert_eq!(&publish.attrs["wal.seq"], seq);
    assert_eq!(publish.attrs["publish.attempt"], "1");
    assert!(collector
        .content_types()
        .iter()
        .all(|c| c.as_deref() == Some("application/x-protobuf")));

    // Downstream: the request continues the publish span; each record carries the context
    // stored with it (the ingest span), the unsampled one its device's own.
    let headers = sink.batch_traces();
    assert!(
        headers.contains(&format!("00-{TRACE}-{}-01", publish.span_id)),
        "{headers:?}"
    );
    assert_eq!(
        sink.record_trace("d-1/seq/1").unwrap(),
        format!("00-{TRACE}-{}-01", ingest.span_id)
    );
    assert_eq!(sink.record_trace("d-1/seq/2").unwrap(), unsampled);
    gw.wait_metric("edge_gateway_otel_spans_exported_total", |v| v >= 5.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_after_an_outage_and_a_sigkill_joins_the_readings_trace() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start().await;
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::Always(503));
    let cfg = write_config(
        dir.path(),
        &format!(
            "{}[tracing]\nendpoint = \"{}/v1/traces\"\nexport_interval_ms = 100\n",
            sink_config(&sink),
            collector.endpoint()
        ),
    );
    let gw = Gateway::start(&cfg);
    assert_eq!(
        post(&gw, "d-7", json!({"seq": 7, "t": 1}), Some(&traceparent())).await,
        202
    );
    let spans = collector
        .wait_for(Duration::from_secs(30), |s| {
            named(s, "publish analytics")
                .iter()
                .any(|p| p.events.contains(&"retry".to_string()))
        })
        .await;
    let ingest = one(&spans, "POST /ingest/{device_id}").clone();
    // The failed attempt's log line leads to the trace.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !gw
        .log()
        .lines()
        .any(|l| l.contains("publish failed") && l.contains(TRACE))
    {
        assert!(tokio::time::Instant::now() < deadline, "{}", gw.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The outage report leads to the same trace.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = gw.admin_get("/admin/outages").await;
        if let Some(o) = v["outages"].as_array().and_then(|l| l.first()) {
            assert_eq!(o["trace_id"], TRACE, "{v}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.kill9();

    sink.set(Behaviour::Ok);
    let gw = Gateway::start(&cfg);
    let want: HashSet<String> = ["d-7/seq/7".into()].into();
    sink.wait_for_keys(&want, Duration::from_secs(30))
        .await
        .unwrap();
    let spans = collector
        .wait_for(Duration::from_secs(30), |s| {
            named(s, "publish analytics")
                .iter()
                .any(|p| p.events.is_empty())
        })
        .await;
    let delivered = named(&spans, "publish analytics")
        .into_iter()
        .find(|p| p.events.is_empty())
        .unwrap();
    assert_eq!(delivered.trace_id, TRACE);
    assert_eq!(
        delivered.parent_span_id, ingest.span_id,
        "the context came back from the WAL after the SIGKILL"
    );
    assert!(
        sink.batch_traces()
            .contains(&format!("00-{TRACE}-{}-01", delivered.span_id)),
        "{:?}",
        sink.batch_traces()
    );
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_spans_not_readings() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    // A port nothing listens on: every export fails; a tiny queue fills at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/v1/traces", closed.local_addr().unwrap());
    drop(closed);
    let cfg = write_config(
        dir.path(),
        &format!(
            "{}[tracing]\nendpoint = \"{dead}\"\nsampler = \"always_on\"\nmax_queue_size = 8\n\
             max_export_batch_size = 4\nexport_interval_ms = 5000\n",
            sink_config(&sink)
        ),
    );
    let gw = Gateway::start(&cfg);
    let mut want = HashSet::new();
    for i in 0..200u64 {
        // Hostile and broken headers are ignored, never refused.
        let tp = match i % 3 {
            0 => Some("x".repeat(8000)),
            1 => Some("00-zz-yy-01".to_string()),
            _ => None,
        };
        assert_eq!(
            post(&gw, "d-2", json!({"seq": i, "t": 1}), tp.as_deref()).await,
            202
        );
        want.insert(format!("d-2/seq/{i}"));
    }
    sink.wait_for_keys(&want, Duration::from_secs(60))
        .await
        .unwrap();
    gw.wait_metric("edge_gateway_otel_spans_dropped_total", |v| v > 0.0)
        .await;
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "edge_gateway_otel_spans_exported_total"),
        Some(0.0)
    );
    // Sampled by the gateway itself: a fresh trace per request, passed on downstream.
    let t = sink
        .record_trace("d-2/seq/0")
        .expect("a context of its own");
    assert!(!t.contains(TRACE) && t.ends_with("-01"), "{t}");
}
