//! A recording analytics API: the sink the gateway delivers to in tests.
//!
//! It keeps every record it accepted, by idempotency key, and can be told to misbehave:
//! answer a status for the next N batches, or hang.

use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use warp::Filter;

#[derive(Clone, Debug, PartialEq)]
pub enum Behaviour {
    Ok,
    /// Answer this status (without recording) for the next `n` batches, then `Ok`.
    FailNext(u16, usize),
    /// Answer this status for every batch.
    Always(u16),
    /// Answer this status for every n-th batch received, `Ok` otherwise.
    FailEvery(u16, usize),
    /// Never answer.
    Hang,
    /// Answer every batch `302 Found` to a login page (a captive portal, a moved API).
    Redirect,
    /// Answer every batch `200 OK` with an HTML login page (something in front of the API).
    HtmlPage,
    /// Answer `status` with `Retry-After: secs` to every batch.
    RetryAfter(u16, u64),
    /// A proxy's body limit: `413` for a request body over this many bytes, else `Ok`.
    BodyLimit(u64),
    /// `400` for a batch holding a record whose data has `"poison": true`, else `Ok`.
    Poison,
    /// A per-record refusal in a 2xx: `200 {"accepted": N}` counting only the records that
    /// are not poison (those are recorded), else `Ok`.
    PoisonAck,
    /// `200` with a JSON body that acknowledges nothing (`{"ok": true}`, no `accepted`): a
    /// proxy's health answer, say. Nothing recorded.
    NoAck,
}

#[derive(Default)]
struct Inner {
    keys: HashSet<String>,
    deliveries: usize,
    batches: usize,
    batch_keys: Vec<String>,
    by_device: HashMap<String, Vec<u64>>,
    statuses: Vec<u16>,
    /// The `traceparent` header of each batch received, and each record's own, by key.
    batch_traces: Vec<String>,
    record_traces: HashMap<String, String>,
    /// Records in each batch accepted, in order.
    batch_sizes: Vec<usize>,
}

fn is_poison(record: &Value) -> bool {
    record["data"]["poison"] == Value::Bool(true)
}

fn has_poison(body: &Value) -> bool {
    body["records"]
        .as_array()
        .is_some_and(|rs| rs.iter().any(is_poison))
}

#[derive(Clone)]
pub struct RecordingSink {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    behaviour: Arc<Mutex<Behaviour>>,
    count: watch::Receiver<usize>,
}

impl RecordingSink {
    pub async fn start() -> RecordingSink {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let behaviour = Arc::new(Mutex::new(Behaviour::Ok));
        let (tx, rx) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let (i2, b2) = (inner.clone(), behaviour.clone());
        let route = warp::post()
            .and(warp::header::optional::<String>("idempotency-key"))
            .and(warp::header::optional::<u64>("content-length"))
            .and(warp::header::optional::<String>("traceparent"))
            .and(warp::body::json())
            .and_then(
                move |batch_key: Option<String>,
                      length: Option<u64>,
                      trace: Option<String>,
                      body: Value| {
                    let (inner, behaviour, tx) = (i2.clone(), b2.clone(), tx.clone());
                    async move {
                        let nth = {
                            let mut g = inner.lock().unwrap();
                            g.batches += 1;
                            g.batch_traces.extend(trace);
                            g.batches
                        };
                        let b = behaviour.lock().unwrap().clone();
                        let intercepted = match b {
                            Behaviour::Redirect => Some(
                                warp::http::Response::builder()
                                    .status(302)
                                    .header("location", "https://portal.example/login")
                                    .body("moved".to_string()),
                            ),
                            Behaviour::HtmlPage => Some(
                                warp::http::Response::builder()
                                    .status(200)
                                    .header("content-type", "text/html; charset=utf-8")
                                    .body("<html><body>Please log in</body></html>".to_string()),
                            ),
                            Behaviour::RetryAfter(s, secs) => Some(
                                warp::http::Response::builder()
                                    .status(s)
                                    .header("retry-after", secs.to_string())
                                    .body("later".to_string()),
                            ),
                            Behaviour::BodyLimit(max) if length.unwrap_or(0) > max => Some(
                                warp::http::Response::builder()
                                    .status(413)
                                    .body("413 Request Entity Too Large".to_string()),
                            ),
                            Behaviour::NoAck => Some(
                                warp::http::Response::builder()
                                    .status(200)
                                    .header("content-type", "application/json")
                                    .body("{\"ok\":true}".to_string()),
                            ),
                            Behaviour::Poison if has_poison(&body) => Some(
                                warp::http::Response::builder()
                                    .status(400)
                                    .body("bad record".to_string()),
                            ),
                            _ => None,
                        };
                        if let Some(resp) = intercepted {
                            let resp = resp.unwrap();
                            inner.lock().unwrap().statuses.push(resp.status().as_u16());
                            return Ok::<_, warp::Rejection>(resp);
                        }
                        let fail = match b {
                            Behaviour::Ok
                            | Behaviour::BodyLimit(_)
                            | Behaviour::Poison
                            | Behaviour::PoisonAck => None,
                            Behaviour::FailNext(s, n) => {
                                *behaviour.lock().unwrap() = if n <= 1 {
                                    Behaviour::Ok
                                } else {
                                    Behaviour::FailNext(s, n - 1)
                                };
                                Some(s)
                            }
                            Behaviour::Always(s) => Some(s),
                            Behaviour::FailEvery(s, n) => (nth % n == 0).then_some(s),
                            Behaviour::Hang => {
                                futures::future::pending::<()>().await;
                                None
                            }
                            Behaviour::Redirect
                            | Behaviour::HtmlPage
                            | Behaviour::NoAck
                            | Behaviour::RetryAfter(..) => {
                                unreachable!("answered above")
                            }
                        };
                        let mut g = inner.lock().unwrap();
                        if let Some(s) = fail {
                            g.statuses.push(s);
                            return Ok(warp::http::Response::builder()
                                .status(s)
                                .body("failing on purpose".to_string())
                                .unwrap());
                        }
                        g.statuses.push(200);
                        g.batch_keys.push(batch_key.unwrap_or_default());
                        let mut accepted = 0;
                        for r in body["records"].as_array().cloned().unwrap_or_default() {
                            if b == Behaviour::PoisonAck && is_poison(&r) {
                                continue;
                            }
                            accepted += 1;
                            g.deliveries += 1;
                            if let Some(k) = r["idempotency_key"].as_str() {
                                g.keys.insert(k.to_string());
                                if let Some(t) = r["traceparent"].as_str() {
                                    g.record_traces.insert(k.to_string(), t.to_string());
                                }
                            }
                            if let (Some(d), Some(s)) = (r["device_id"].as_str(), r["seq"].as_u64())
                            {
                                g.by_device.entry(d.to_string()).or_default().push(s);
                            }
                        }
                        g.batch_sizes.push(accepted);
                        let n = g.keys.len();
                        drop(g);
                        tx.send_replace(n);
                        Ok(warp::http::Response::builder()
                            .status(200)
                            .header("content-type", "application/json")
                            .body(format!("{{\"ok\":true,\"accepted\":{accepted}}}"))
                            .unwrap())
                    }
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        RecordingSink {
            addr,
            inner,
            behaviour,
            count: rx,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/telemetry", self.addr)
    }

    pub fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    pub fn keys(&self) -> HashSet<String> {
        self.inner.lock().unwrap().keys.clone()
    }

    pub fn deliveries(&self) -> usize {
        self.inner.lock().unwrap().deliveries
    }

    /// Records in each batch accepted, in order.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.inner.lock().unwrap().batch_sizes.clone()
    }

    /// `traceparent` headers of the batches received (delivered or not), in order.
    pub fn batch_traces(&self) -> Vec<String> {
        self.inner.lock().unwrap().batch_traces.clone()
    }

    /// The `traceparent` in the JSON of the delivered record with this key.
    pub fn record_trace(&self, key: &str) -> Option<String> {
        self.inner.lock().unwrap().record_traces.get(key).cloned()
    }

    pub fn statuses(&self) -> Vec<u16> {
        self.inner.lock().unwrap().statuses.clone()
    }

    pub fn by_device(&self) -> HashMap<String, Vec<u64>> {
        self.inner.lock().unwrap().by_device.clone()
    }

    /// Waits until every key in `want` has been received; returns the missing ones on timeout.
    pub async fn wait_for_keys(
        &self,
        want: &HashSet<String>,
        timeout: Duration,
    ) -> Result<(), Vec<String>> {
        let mut rx = self.count.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let missing: Vec<String> = {
                let g = self.inner.lock().unwrap();
                want.iter()
                    .filter(|k| !g.keys.contains(*k))
                    .cloned()
                    .collect()
            };
            if missing.is_empty() {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(missing),
            }
        }
    }

    /// Waits until at least `n` batches were received (answered or not).
    pub async fn wait_batches(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.count.clone();
        loop {
            if self.inner.lock().unwrap().batches >= n {
                return true;
            }
            // Failed batches do not move the key count: poll the counter at a short interval.
            let _ = tokio::time::timeout(Duration::from_millis(20), rx.changed()).await;
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
        }
    }
}
