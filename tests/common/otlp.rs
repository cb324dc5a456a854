//! An OTLP/HTTP traces receiver: decodes each `ExportTraceServiceRequest` (protobuf) with
//! the `opentelemetry-proto` types and keeps the spans, as a collector would.

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warp::Filter;

/// A span as received, ids in lower-case hex.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub attrs: HashMap<String, String>,
    pub events: Vec<String>,
    pub links: Vec<(String, String)>,
    pub service: String,
}

#[derive(Clone)]
pub struct Collector {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    requests: Arc<Mutex<Vec<Option<String>>>>,
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

impl Collector {
    pub async fn start() -> Collector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (s2, r2) = (spans.clone(), requests.clone());
        let route = warp::post()
            .and(warp::path!("v1" / "traces"))
            .and(warp::header::optional::<String>("content-type"))
            .and(warp::body::bytes())
            .map(move |ct: Option<String>, body: bytes::Bytes| {
                r2.lock().unwrap().push(ct);
                let req = ExportTraceServiceRequest::decode(body).expect("a valid OTLP request");
                let mut out = s2.lock().unwrap();
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .map(|kv| text(&kv.value))
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            out.push(Span {
                                name: s.name,
                                trace_id: hex::encode(&s.trace_id),
                                span_id: hex::encode(&s.span_id),
                                parent_span_id: hex::encode(&s.parent_span_id),
                                attrs: s
                                    .attributes
                                    .iter()
                                    .map(|kv| (kv.key.clone(), text(&kv.value)))
                                    .collect(),
                                events: s.events.iter().map(|e| e.name.clone()).collect(),
                                links: s
                                    .links
                                    .iter()
                                    .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                                    .collect(),
                                service: service.clone(),
                            });
                        }
                    }
                }
                warp::http::Response::builder()
                    .status(200)
                    .header("content-type", "application/x-protobuf")
                    .body(ExportTraceServiceResponse::default().encode_to_vec())
                    .unwrap()
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        Collector {
            addr,
            spans,
            requests,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    pub fn content_types(&self) -> Vec<Option<String>> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits (polling the received spans, not the clock) until `ok` holds for them.
    pub async fn wait_for(&self, within: Duration, ok: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let spans = self.spans();
            if ok(&spans) {
                return spans;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("the collector never saw the spans asked for; it has:\n{spans:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
