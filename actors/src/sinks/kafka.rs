//! Kafka sink: each record one message (the record JSON every sink receives) on the topic its
//! template names, keyed by device id (a device's readings stay in one partition, in order),
//! with headers `idempotency_key`, `correlation_id`, `gateway_id`. The producer is librdkafka's
//! idempotent one with `acks=all`: a batch is delivered when every message of it is
//! acknowledged by the partition's in-sync replicas.
//!
//! What an error means ([`classify`]): a message over `max_message_bytes` (checked before
//! sending) or refused as too large is too big (split; alone, dead-lettered naming its size);
//! brokers down, timeouts, leader elections, missing replicas, a missing topic and refused
//! credentials are outages (no attempt used up; refusals hold the sink, named in `/readyz`);
//! an invalid record blames the batch (bisected).

use super::{json::write_stable, PublishResult};
use crate::ingest::auth::read_secret;
use crate::wal::Leased;
use edge_gateway_config::KafkaSinkConfig;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
    gateway_id: String,
    max_message_bytes: u64,
}

impl KafkaSink {
    pub fn new(cfg: &KafkaSinkConfig, gateway_id: &str) -> Result<KafkaSink, String> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &cfg.brokers)
            .set(
                "client.id",
                cfg.client_id
                    .clone()
                    .unwrap_or_else(|| format!("{gateway_id}-{}", cfg.name)),
            )
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &cfg.compression)
            .set("message.timeout.ms", cfg.timeout_ms.to_string())
            .set(
                "message.max.bytes",
                (cfg.max_message_bytes + 4096).to_string(),
            )
            .set("linger.ms", "5");
        let tls = cfg.tls || cfg.ca_file.is_some() || cfg.client_cert_file.is_some();
        let protocol = match (tls, cfg.sasl_mechanism.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        c.set("security.protocol", protocol);
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        if let Some(ca) = &cfg.ca_file {
            c.set("ssl.ca.location", path(ca));
        }
        if let (Some(cert), Some(key)) = (&cfg.client_cert_file, &cfg.client_key_file) {
            c.set("ssl.certificate.location", path(cert))
                .set("ssl.key.location", path(key));
        }
        if let (Some(m), Some(u), Some(p)) = (
            &cfg.sasl_mechanism,
            &cfg.sasl_username,
            &cfg.sasl_password_file,
        ) {
            let password =
                read_secret(p).map_err(|e| format!("sasl_password_file {}: {e}", p.display()))?;
            c.set("sasl.mechanism", m)
                .set("sasl.username", u)
                .set("sasl.password", password);
        }
        let producer: FutureProducer = c.create().map_err(|e| format!("kafka producer: {e}"))?;
        Ok(KafkaSink {
            producer,
            topic: cfg.topic.clone(),
            gateway_id: gateway_id.to_string(),
            max_message_bytes: cfg.max_message_bytes,
        })
    }

    pub async fn publish(&mut self, batch: &[Leased]) -> PublishResult {
        let mut payloads = Vec::with_capacity(batch.len());
        for l in batch {
            let mut p = Vec::with_capacity(256);
            write_stable(&mut p, l);
            if p.len() as u64 > self.max_message_bytes {
                return PublishResult::TooBig(too_big(
                    batch.len(),
                    p.len(),
                    self.max_message_bytes,
                ));
            }
            payloads.push(p);
        }
        // Every message queued first (in batch order: librdkafka keeps a partition's order),
        // then every acknowledgement awaited.
        let mut pending = Vec::with_capacity(batch.len());
        for (l, p) in batch.iter().zip(&payloads) {
            let topic = self
                .topic
                .replace("{device_id}", &l.record.device_id)
                .replace("{gateway_id}", &self.gateway_id);
            let trace = l.record.outgoing_trace().map(|t| t.to_string());
            let mut headers = OwnedHeaders::new()
                .insert(Header {
                    key: "idempotency_key",
                    value: Some(l.record.idempotency_key.as_str()),
                })
                .insert(Header {
                    key: "correlation_id",
                    value: Some(l.record.correlation_id.as_str()),
                })
                .insert(Header {
                    key: "gateway_id",
                    value: Some(self.gateway_id.as_str()),
                });
            if let Some(t) = &trace {
                headers = headers.insert(Header {
                    key: "traceparent",
                    value: Some(t.as_str()),
                });
            }
            let record = FutureRecord::to(&topic)
                .key(l.record.device_id.as_str())
                .payload(p.as_slice())
                .headers(headers);
            match self.producer.send_result(record) {
                Ok(f) => pending.push(f),
                Err((e, _)) => return classify(&e, batch.len(), p.len()),
            }
        }
        let mut first_error = None;
        for f in pending {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, m))) => {
                    use rdkafka::Message;
                    let size = m.payload().map_or(0, <[u8]>::len);
                    first_error.get_or_insert_with(|| classify(&e, batch.len(), size));
                }
                Err(_) => {
                    first_error
                        .get_or_insert_with(|| PublishResult::outage("kafka producer closed"));
                }
            }
        }
        first_error.unwrap_or(PublishResult::Delivered)
    }
}

fn too_big(records: usize, bytes: usize, max: u64) -> String {
    if records == 1 {
        format!("record too large for Kafka: {bytes} bytes as JSON, over the sink's max_message_bytes {max}")
    } else {
        format!("a record of the batch is {bytes} bytes, over the sink's max_message_bytes {max}")
    }
}

/// What a producer error means for the batch.
pub fn classify(e: &KafkaError, records: usize, size: usize) -> PublishResult {
    use RDKafkaErrorCode as C;
    let what = format!("Kafka: {e}");
    match e.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge) => PublishResult::TooBig(if records == 1 {
            format!("record too large for the broker ({size} bytes): {what}")
        } else {
            what
        }),
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::UnknownTopic
            | C::UnknownTopicOrPartition,
        ) => PublishResult::outage(format!(
            "{what} — the brokers refuse the gateway (credentials, ACL or topic); held until fixed"
        )),
        Some(C::InvalidRecord | C::InvalidMessage) => PublishResult::Permanent(what),
        // Everything else is the brokers' state — down, electing, short of replicas, slow,
        // our queue full — or a fatal producer error that a restart of the publisher clears.
        Some(C::Fatal) => PublishResult::Transient(what),
        _ => PublishResult::outage(what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_producer_error_means() {
        let e = |c| KafkaError::MessageProduction(c);
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::MessageSizeTooLarge), 1, 9000),
            PublishResult::TooBig(r) if r.contains("9000")
        ));
        for c in [
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::LeaderNotAvailable,
            RDKafkaErrorCode::QueueFull,
        ] {
            assert!(
                matches!(classify(&e(c), 5, 10), PublishResult::Outage { .. }),
                "{c:?}"
            );
        }
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::TopicAuthorizationFailed), 5, 10),
            PublishResult::Outage { reason, .. } if reason.contains("refuse")
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::InvalidRecord), 5, 10),
            PublishResult::Permanent(_)
        ));
    }
}
