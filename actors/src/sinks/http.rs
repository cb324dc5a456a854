//! HTTP sink: POSTs a batch as JSON to the analytics API.
//!
//! Body: `{"gateway_id": …, "records": [record, …]}`; header `Idempotency-Key` is a hash of
//! the batch's record keys, so a retried batch carries the same key. Classification:
//! 2xx delivered; connect errors unreachable (no attempt used up); timeouts, 408, 429 and 5xx
//! transient; any other status permanent. Redirects are not followed (a 3xx is permanent: the URL is wrong).

use super::{json::RecordsJson, PublishResult};
use crate::ingest::auth::read_secret;
use crate::wal::Leased;
use edge_gateway_config::SinkConfig;
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
}

impl HttpSink {
    pub fn new(cfg: &SinkConfig, gateway_id: &str) -> Result<HttpSink, String> {
        let url = cfg.url.clone().ok_or("http sink without url")?;
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.timeout_ms.min(5_000)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(4);
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
        if let (Some(c), Some(k)) = (&cfg.client_cert_file, &cfg.client_key_file) {
            let cert =
                std::fs::read(c).map_err(|e| format!("client_cert_file {}: {e}", c.display()))?;
            let key =
                std::fs::read(k).map_err(|e| format!("client_key_file {}: {e}", k.display()))?;
            let id = reqwest::Identity::from_pkcs8_pem(&cert, &key)
                .map_err(|e| format!("client identity: {e}"))?;
            b = b.identity(id);
        }
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
        })
    }

    pub async fn publish(&mut self, batch: &[Leased]) -> PublishResult {
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
        let mut req = self
            .client
            .post(&self.url)
            .header("idempotency-key", key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(t) = &self.bearer {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(resp) => classify(resp.status().as_u16()),
            // Refused, unroutable or timed out while connecting: nothing of the request left.
            Err(e) if e.is_connect() => PublishResult::Unreachable(format!("connect: {e}")),
            Err(e) if e.is_timeout() => PublishResult::Transient(format!("timeout: {e}")),
            Err(e) => PublishResult::Transient(format!("request failed: {e}")),
        }
    }
}

/// The retry policy by status code.
pub fn classify(status: u16) -> PublishResult {
    match status {
        200..=299 => PublishResult::Delivered,
        408 | 429 | 500..=599 => PublishResult::Transient(format!("HTTP {status}")),
        _ => PublishResult::Permanent(format!("HTTP {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(classify(202), PublishResult::Delivered);
        for s in [408, 429, 500, 503] {
            assert!(matches!(classify(s), PublishResult::Transient(_)), "{s}");
        }
        for s in [301, 400, 401, 404, 422] {
            assert!(matches!(classify(s), PublishResult::Permanent(_)), "{s}");
        }
    }
}
