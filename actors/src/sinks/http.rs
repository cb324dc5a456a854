//! HTTP sink: POSTs a batch as JSON to the analytics API.
//!
//! Body: `{"gateway_id": …, "records": [record, …]}`; header `Idempotency-Key` is a hash of
//! the batch's record keys, so a retried batch carries the same key. Classification
//! ([`classify`]): a 2xx is a delivery — unless its body is an HTML page, which is something
//! in front of the API (a captive portal, a proxy's login) and an outage; 408, 429, 5xx,
//! connect errors and timeouts are outages (no attempt used up; `Retry-After` in seconds is
//! honoured); 413/414/431, or a body over `max_batch_bytes` (checked before sending), is "too
//! big": the lane splits the batch; a 3xx is an outage of the sink's address (redirects are
//! not followed: a moved API or a login page must not swallow readings); 401, 403, 404, 405
//! and 407 refuse the gateway, not a record (a wrong token or URL): outages too, held until
//! the configuration is fixed; any other status blames the batch (permanent: bisected).
//!
//! With `ack = "json"` a 2xx is a delivery only when its body is `{"accepted": N, …}` with N
//! the number of records sent ([`json_ack`]): fewer blames the batch (bisected down to the
//! record the API refused), no such body is an interception (an outage).

use super::{json::RecordsJson, PublishResult};
use crate::ingest::auth::read_secret;
use crate::wal::Leased;
use edge_gateway_config::{HttpAck, HttpSinkConfig};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The request body, serialised in one pass.
#[derive(serde::Serialize)]
struct Body<'a> {
    gateway_id: &'a str,
    records: RecordsJson<'a>,
}

pub struct HttpSink {
    client: reqwest::Client,
    url: String,
    bearer: Option<String>,
    gateway_id: String,
    max_batch_bytes: u64,
    ack: HttpAck,
    /// The last request failed to connect: nothing of it reached the sink.
    last_unsent: bool,
}

impl HttpSink {
    pub fn new(cfg: &HttpSinkConfig, gateway_id: &str) -> Result<HttpSink, String> {
        let url = cfg.url.clone();
        let b = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.timeout_ms.min(5_000)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(4);
        let b = with_tls(
            b,
            cfg.ca_file.as_deref(),
            cfg.client_cert_file
                .as_deref()
                .zip(cfg.client_key_file.as_deref()),
        )?;
        let bearer = match &cfg.bearer_token_file {
            Some(p) => Some(
                read_secret(p).map_err(|e| format!("bearer_token_file {}: {e}", p.display()))?,
            ),
            None => None,
        };
        Ok(HttpSink {
            client: b.build().map_err(|e| format!("http client: {e}"))?,
            url,
            bearer,
            gateway_id: gateway_id.to_string(),
            max_batch_bytes: cfg
                .max_batch_bytes
                .unwrap_or(edge_gateway_config::DEFAULT_HTTP_MAX_BATCH_BYTES),
            ack: cfg.ack.unwrap_or(HttpAck::Status),
            last_unsent: false,
        })
    }

    /// Whether the last request may have reached the API (a failed connect cannot have
    /// made a duplicate: `sinks/resent.rs`).
    pub fn last_sent_any(&self) -> bool {
        !self.last_unsent
    }

    pub async fn publish(&mut self, batch: &[Leased]) -> PublishResult {
        self.last_unsent = false;
        let mut h = Sha256::new();
        for l in batch {
            h.update(l.record.idempotency_key.as_bytes());
            h.update([0u8]);
        }
        let key = hex::encode(h.finalize());
        let body = Body {
            gateway_id: &self.gateway_id,
            records: RecordsJson(batch),
        };
        let body = serde_json::to_vec(&body).expect("records always serialise to JSON");
        // Too big for this sink: the lane splits the batch; a record alone too big is dead.
        if body.len() as u64 > self.max_batch_bytes {
            return PublishResult::TooBig(too_big(batch.len(), body.len(), "max_batch_bytes"));
        }
        let mut req = self
            .client
            .post(&self.url)
            .header("idempotency-key", key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(t) = &self.bearer {
            req = req.bearer_auth(t);
        }
        // One request per batch: it continues the first traced record's trace (each record's
        // own context is in its JSON).
        if let Some(t) = batch.iter().find_map(|l| l.record.outgoing_trace()) {
            req = req.header("traceparent", t.to_string());
        }
        match req.send().await {
            Ok(resp) => {
                let header = |h: reqwest::header::HeaderName| {
                    resp.headers().get(h).and_then(|v| v.to_str().ok())
                };
                let status = resp.status().as_u16();
                let result = classify(
                    status,
                    &Headers {
                        content_type: header(reqwest::header::CONTENT_TYPE),
                        location: header(reqwest::header::LOCATION),
                        retry_after: header(reqwest::header::RETRY_AFTER),
                    },
                );
                if result != PublishResult::Delivered || self.ack == HttpAck::Status {
                    return result;
                }
                match resp.bytes().await {
                    Ok(body) => json_ack(status, &body, batch.len()),
                    Err(e) => PublishResult::outage(format!("HTTP {status}, body unread: {e}")),
                }
            }
            // Refused, unroutable, reset or timed out: the sink's trouble, not the records'.
            Err(e) if e.is_connect() => {
                self.last_unsent = true;
                PublishResult::outage(format!("connect: {e}"))
            }
            Err(e) if e.is_timeout() => PublishResult::outage(format!("timeout: {e}")),
            Err(e) => PublishResult::outage(format!("request failed: {e}")),
        }
    }
}

/// A client that trusts `ca` (PEM) besides the system's roots and, with `identity`
/// (certificate, key: PEM), presents a client certificate (mTLS).
pub fn with_tls(
    mut b: reqwest::ClientBuilder,
    ca: Option<&std::path::Path>,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<reqwest::ClientBuilder, String> {
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
        b = b.add_root_certificate(cert);
    }
    if let Some((c, k)) = identity {
        let cert =
            std::fs::read(c).map_err(|e| format!("client_cert_file {}: {e}", c.display()))?;
        let key = std::fs::read(k).map_err(|e| format!("client_key_file {}: {e}", k.display()))?;
        let id = reqwest::Identity::from_pkcs8_pem(&cert, &key)
            .map_err(|e| format!("client identity: {e}"))?;
        b = b.identity(id);
    }
    Ok(b)
}

/// The answer's headers that decide what it means.
#[derive(Debug, Default)]
pub struct Headers<'a> {
    pub content_type: Option<&'a str>,
    pub location: Option<&'a str>,
    pub retry_after: Option<&'a str>,
}

/// What an answer means for the batch (see the module doc).
pub fn classify(status: u16, h: &Headers<'_>) -> PublishResult {
    match status {
        200..=299 if h.content_type.is_some_and(is_html) => PublishResult::outage(format!(
            "HTTP {status} with an HTML page: something in front of the API answered (a captive \
             portal or a proxy's login?), not the API; held until the API answers"
        )),
        200..=299 => PublishResult::Delivered,
        300..=399 => PublishResult::outage(format!(
            "HTTP {status} redirect to {}: the sink's URL does not answer itself (the API moved, \
             or a login page?); held until it does — fix `url` if it moved",
            h.location.unwrap_or("(no Location)")
        )),
        413 | 414 | 431 => PublishResult::TooBig(format!("HTTP {status}: refused as too large")),
        401 | 403 | 407 => PublishResult::outage(format!(
            "HTTP {status}: the sink refuses the gateway's credentials (bearer_token_file, \
             client certificate); held until they are fixed"
        )),
        404 | 405 => PublishResult::outage(format!(
            "HTTP {status}: no API at the sink's url; held until `url` is fixed"
        )),
        408 | 429 | 500..=599 => PublishResult::Outage {
            reason: format!("HTTP {status}"),
            retry_after_ms: h.retry_after.and_then(retry_after_ms),
        },
        _ => PublishResult::Permanent(format!("HTTP {status}")),
    }
}

/// `ack = "json"`: what a 2xx's body says about a batch of `sent` records.
pub fn json_ack(status: u16, body: &[u8], sent: usize) -> PublishResult {
    let accepted = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("accepted").and_then(serde_json::Value::as_u64));
    match accepted {
        Some(n) if n == sent as u64 => PublishResult::Delivered,
        Some(n) => PublishResult::Permanent(format!(
            "the sink accepted {n} of {sent} records (ack = \"json\")"
        )),
        None => PublishResult::outage(format!(
            "HTTP {status} without the acknowledgement `ack = \"json\"` asks for (a JSON body \
             with \"accepted\"): not the API answering? held until it does"
        )),
    }
}

/// The reason a batch (or a record alone) is too big, naming its size.
fn too_big(records: usize, bytes: usize, limit: &str) -> String {
    if records == 1 {
        format!("record too large: {bytes} bytes as JSON, over the sink's {limit}")
    } else {
        format!("batch of {records} records is {bytes} bytes, over the sink's {limit}")
    }
}

fn is_html(content_type: &str) -> bool {
    let ct = content_type.trim_start().to_ascii_lowercase();
    ct.starts_with("text/html") || ct.starts_with("application/xhtml")
}

/// `Retry-After` in its seconds form (an HTTP date is ignored: the backoff applies).
fn retry_after_ms(v: &str) -> Option<u64> {
    v.trim().parse::<u64>().ok().map(|s| s.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_an_answer_means() {
        let none = Headers::default();
        assert_eq!(classify(202, &none), PublishResult::Delivered);
        let json = Headers {
            content_type: Some("application/json"),
            ..Default::default()
        };
        assert_eq!(classify(200, &json), PublishResult::Delivered);
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(
                classify(s, &none),
                PublishResult::Outage {
                    reason: format!("HTTP {s}"),
                    retry_after_ms: None
                },
                "{s}: an outage, not the records' fault"
            );
        }
        let later = Headers {
            retry_after: Some("120"),
            ..Default::default()
        };
        assert!(matches!(
            classify(429, &later),
            PublishResult::Outage {
                retry_after_ms: Some(120_000),
                ..
            }
        ));
        let portal = Headers {
            content_type: Some("text/html; charset=utf-8"),
            ..Default::default()
        };
        assert!(
            matches!(classify(200, &portal), PublishResult::Outage { reason, .. } if reason.contains("HTML")),
            "a login page is not a delivery"
        );
        let moved = Headers {
            location: Some("https://login.example/"),
            ..Default::default()
        };
        assert!(
            matches!(classify(302, &moved), PublishResult::Outage { reason, .. } if reason.contains("login.example")),
            "a redirect holds the sink, it does not dead-letter"
        );
        for s in [400, 409, 422] {
            assert!(
                matches!(classify(s, &none), PublishResult::Permanent(_)),
                "{s}"
            );
        }
        for s in [401, 403, 404, 405, 407] {
            assert!(
                matches!(classify(s, &none), PublishResult::Outage { .. }),
                "{s} refuses the gateway, not a record"
            );
        }
        for s in [413, 414, 431] {
            assert!(
                matches!(classify(s, &none), PublishResult::TooBig(_)),
                "{s}: split, not bad"
            );
        }
    }

    #[test]
    fn a_json_acknowledgement_must_count_the_batch() {
        assert_eq!(
            json_ack(200, br#"{"accepted": 3}"#, 3),
            PublishResult::Delivered
        );
        assert!(
            matches!(json_ack(200, br#"{"accepted": 2, "errors": []}"#, 3), PublishResult::Permanent(r) if r.contains("2 of 3")),
            "fewer accepted blames the batch: bisected"
        );
        for body in [&br#"{"ok": true}"#[..], b"<html>log in</html>", b""] {
            assert!(
                matches!(json_ack(200, body, 3), PublishResult::Outage { .. }),
                "no acknowledgement is not a delivery: {body:?}"
            );
        }
    }
}
