//! S3 sink: a batch becomes one object of JSON Lines (the record JSON every sink receives),
//! compressed, put with a `Content-MD5` the store verifies; its records are Acked only after
//! the PUT (or the multipart upload's completion) succeeded. The dispatcher leases whole
//! objects for it (`wal::Fill`: `max_batch_records`, `max_batch_bytes`, or
//! `max_batch_age_ms` after the oldest record was accepted).
//!
//! Keys are deterministic for the batch (see [`object`]): a retry re-puts the same key.
//! Objects over `multipart_bytes` go up in parts of that size; a failed upload is aborted.
//!
//! What an answer means ([`classify`]): 5xx, `SlowDown`, 429, timeouts and unreachable
//! stores are outages (no attempt used up); `AccessDenied`, `InvalidAccessKeyId`,
//! `SignatureDoesNotMatch`, `NoSuchBucket` and other 401/403/404 refuse the gateway, not a
//! record: outages too — the sink holds, `/readyz` and `edge_gateway_sink_outage` say why,
//! and records wait until `wal.max_age_secs` (a decision: dead-lettering a whole archive
//! for a revoked key would be worse); `EntityTooLarge` is too big (split); a refused
//! checksum (`BadDigest`) counts an attempt; other 4xx blame the batch (bisected).

mod classify;
pub mod object;

use super::PublishResult;
use crate::ingest::auth::read_secret;
use crate::wal::Leased;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use edge_gateway_config::S3SinkConfig;
use std::collections::HashMap;
use std::time::Duration;

/// The settings every object carries, on a `PutObject` or a `CreateMultipartUpload` (their
/// builders are different types with the same setters).
macro_rules! object_settings {
    ($req:expr, $sink:expr, $o:expr, $records:expr) => {
        $req.bucket(&$sink.cfg.bucket)
            .key(&$o.key)
            .content_type("application/x-ndjson")
            .set_metadata(Some($sink.metadata($o, $records)))
            .set_content_encoding(
                object::content_encoding($sink.cfg.compression).map(str::to_string),
            )
            .set_storage_class($sink.cfg.storage_class.as_deref().map(Into::into))
            .set_server_side_encryption($sink.cfg.server_side_encryption.as_deref().map(Into::into))
            .set_ssekms_key_id($sink.cfg.sse_kms_key_id.clone())
    };
}

pub struct S3Sink {
    client: Client,
    cfg: S3SinkConfig,
    gateway_id: String,
}

impl S3Sink {
    /// Credentials: `access_key_id_file` + `secret_access_key_file`, else the AWS chain
    /// (environment, shared profile, container or instance role).
    pub async fn new(cfg: &S3SinkConfig, gateway_id: &str) -> Result<S3Sink, String> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = &cfg.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let (Some(id), Some(secret)) = (&cfg.access_key_id_file, &cfg.secret_access_key_file) {
            let id =
                read_secret(id).map_err(|e| format!("access_key_id_file {}: {e}", id.display()))?;
            let secret = read_secret(secret)
                .map_err(|e| format!("secret_access_key_file {}: {e}", secret.display()))?;
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret,
                None,
                None,
                "edge-gateway-files",
            ));
        }
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            use aws_smithy_http_client::tls;
            let ctx = tls::TlsContext::builder()
                .with_trust_store(tls::TrustStore::default().with_pem_certificate(pem))
                .build()
                .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            loader = loader.http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(tls::Provider::Rustls(
                        tls::rustls_provider::CryptoMode::AwsLc,
                    ))
                    .tls_context(ctx)
                    .build_https(),
            );
        }
        let shared = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(cfg.force_path_style)
            // The lane retries, with backoff and the failure rules every sink shares.
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_millis(cfg.timeout_ms.min(5_000)))
                    .operation_attempt_timeout(Duration::from_millis(cfg.timeout_ms))
                    .build(),
            );
        if shared.region().is_none() {
            b = b.region(Region::new("us-east-1"));
        }
        if let Some(e) = &cfg.endpoint {
            b = b.endpoint_url(e);
        }
        Ok(S3Sink {
            client: Client::from_conf(b.build()),
            cfg: cfg.clone(),
            gateway_id: gateway_id.to_string(),
        })
    }

    pub async fn publish(&mut self, batch: Vec<Leased>) -> PublishResult {
        let (prefix, gw, c) = (
            self.cfg.key_prefix.clone(),
            self.gateway_id.clone(),
            self.cfg.compression,
        );
        let records = batch.len();
        // JSON and compression are CPU work: off the async workers; the batch is dropped there
        // once its object is built.
        let built =
            tokio::task::spawn_blocking(move || object::build(&batch, &prefix, &gw, c)).await;
        let obj = match built {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return PublishResult::Transient(format!("building the object: {e}")),
            Err(e) => return PublishResult::Transient(format!("building the object: {e}")),
        };
        let result = if obj.body.len() as u64 > self.cfg.multipart_bytes {
            self.put_multipart(&obj, records).await
        } else {
            self.put(&obj, records).await
        };
        match result {
            Ok(()) => {
                tracing::debug!(sink = %self.cfg.name, key = %obj.key, records, bytes = obj.body.len(), "object stored");
                PublishResult::Delivered
            }
            Err(r) => r,
        }
    }

    async fn put(&self, o: &object::Object, records: usize) -> Result<(), PublishResult> {
        let req = object_settings!(self.client.put_object(), self, o, records)
            .content_md5(&o.content_md5)
            .body(ByteStream::from(o.body.clone()));
        req.send()
            .await
            .map(|_| ())
            .map_err(|e| classify::classify(&e, records))
    }

    fn metadata(&self, o: &object::Object, records: usize) -> HashMap<String, String> {
        HashMap::from([
            ("gateway-id".into(), self.gateway_id.clone()),
            ("records".into(), records.to_string()),
            ("first-seq".into(), o.first_seq.to_string()),
            ("last-seq".into(), o.last_seq.to_string()),
        ])
    }

    /// Parts of `multipart_bytes`, each with its own `Content-MD5`; any failure aborts the
    /// upload (nothing half-written stays in the bucket, and the parts stop costing).
    async fn put_multipart(&self, o: &object::Object, records: usize) -> Result<(), PublishResult> {
        let req = object_settings!(self.client.create_multipart_upload(), self, o, records);
        let created = req
            .send()
            .await
            .map_err(|e| classify::classify(&e, records))?;
        let Some(id) = created.upload_id() else {
            return Err(PublishResult::outage(
                "CreateMultipartUpload without an upload id",
            ));
        };
        let result = self.upload_parts(o, id, records).await;
        if result.is_err() {
            let abort = self
                .client
                .abort_multipart_upload()
                .bucket(&self.cfg.bucket)
                .key(&o.key)
                .upload_id(id)
                .send()
                .await;
            if let Err(e) = abort {
                tracing::warn!(sink = %self.cfg.name, key = %o.key, error = %e, "multipart upload not aborted (a lifecycle rule for incomplete uploads cleans it up)");
            }
        }
        result
    }

    async fn upload_parts(
        &self,
        o: &object::Object,
        id: &str,
        records: usize,
    ) -> Result<(), PublishResult> {
        let mut parts = Vec::new();
        for (i, chunk) in o.body.chunks(self.cfg.multipart_bytes as usize).enumerate() {
            let n = i as i32 + 1;
            use md5::Digest;
            let md5 = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                md5::Md5::digest(chunk),
            );
            let part = self
                .client
                .upload_part()
                .bucket(&self.cfg.bucket)
                .key(&o.key)
                .upload_id(id)
                .part_number(n)
                .content_md5(md5)
                .body(ByteStream::from(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| classify::classify(&e, records))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(n)
                    .set_e_tag(part.e_tag().map(str::to_string))
                    .build(),
            );
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(&o.key)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify::classify(&e, records))
    }
}
