//! MQTT settings: the device-facing session (ingest) and the pieces an `mqtt` sink shares.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The MQTT session that subscribes to device telemetry on the edge broker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MqttConfig {
    pub enabled: bool,
    /// `mqtt://host:port` or `mqtts://host:port` (TLS; the host name is what the broker's
    /// certificate is checked against).
    pub broker: String,
    /// Stable across restarts so the broker keeps the session (and what it has not yet had
    /// acknowledged). Unset: `edge-gateway-<gateway_id>`.
    pub client_id: Option<String>,
    /// Topic filters, each with exactly one `+` level: the device id.
    pub subscriptions: Vec<MqttSubscription>,
    pub keep_alive_secs: u64,
    /// Messages received and not yet acknowledged, at most: bounds the session's memory.
    /// Past it messages are left unacknowledged with the broker, which redelivers them
    /// after a reconnect (see the MQTT session's `poll.rs`).
    pub max_unacked: usize,
    /// Payload bytes of messages received and not yet acknowledged, at most (same shedding).
    pub max_unacked_bytes: usize,
    /// Messages of one device held while it is over its WAL share (`wal.device_fair_share`),
    /// at most; past it they are dead-lettered (`device_quota`, payload kept) and
    /// acknowledged, so one device cannot fill the broker's in-flight window for all.
    pub max_held_per_device: usize,
    /// Larger payloads are dead-lettered (`payload_too_large`), never parsed. The session
    /// reads packets up to this plus 64 KiB (topic and header); the edge broker's
    /// `max_packet_size` must stay below that (the shipped config does).
    pub max_payload_bytes: usize,
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
    pub username: Option<String>,
    /// File holding the password (never the password itself in the config).
    pub password_file: Option<PathBuf>,
    /// TLS settings; with an `mqtts://` broker and no `tls`, the system's CAs are trusted.
    pub tls: Option<MqttTlsConfig>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            enabled: false,
            broker: "mqtt://127.0.0.1:1883".into(),
            client_id: None,
            subscriptions: vec![MqttSubscription::default()],
            keep_alive_secs: 30,
            max_unacked: 32_768,
            max_unacked_bytes: 64 * 1024 * 1024,
            max_held_per_device: 100,
            max_payload_bytes: 256 * 1024,
            reconnect_initial_ms: 200,
            reconnect_max_ms: 30_000,
            username: None,
            password_file: None,
            tls: None,
        }
    }
}

/// One subscription of the ingest session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MqttSubscription {
    pub filter: String,
    pub encoding: PayloadEncoding,
}

impl Default for MqttSubscription {
    fn default() -> Self {
        MqttSubscription {
            filter: "devices/+/telemetry".into(),
            encoding: PayloadEncoding::Auto,
        }
    }
}

/// How MQTT payloads are decoded.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum PayloadEncoding {
    /// JSON if the payload starts with `{` or `[` (after whitespace), else CBOR.
    #[default]
    Auto,
    Json,
    Cbor,
    /// `proto/telemetry.proto`: a Reading or a Batch (never guessed by `auto`).
    Protobuf,
}

/// TLS to an MQTT broker: CA to trust (PEM) and, for mutual TLS, a client certificate and
/// its key (PEM, PKCS#8 or traditional).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct MqttTlsConfig {
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

/// A broker address taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerAddr {
    /// `mqtt://host[:1883]` or `mqtts://host[:8883]`; IPv6 hosts in brackets.
    pub fn parse(url: &str) -> Result<BrokerAddr, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err("must start with mqtt:// or mqtts://".into());
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('?') {
            return Err("must be mqtt[s]://host[:port] with no path".into());
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, p) = r.split_once(']').ok_or("unclosed [ in IPv6 host")?;
            (h.to_string(), p.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err("host is empty".into());
        }
        let port = match port {
            None => default_port,
            Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
        };
        Ok(BrokerAddr { tls, host, port })
    }
}

/// Where the device id sits in a topic filter: the index of its single `+` level.
pub fn device_level(filter: &str) -> Result<usize, String> {
    let levels: Vec<&str> = filter.split('/').collect();
    if levels.iter().any(|l| l.contains('#')) {
        return Err("`#` is not allowed: the device id must sit at a fixed level".into());
    }
    let plus: Vec<usize> = (0..levels.len()).filter(|&i| levels[i] == "+").collect();
    if levels.iter().any(|l| l.contains('+') && *l != "+") {
        return Err("`+` must be a whole level".into());
    }
    match plus.as_slice() {
        [i] => Ok(*i),
        _ => Err("needs exactly one `+` level (the device id)".into()),
    }
}

/// Fills an upstream topic template: `{prefix}`, `{device_id}`, `{gateway_id}`. One pass
/// (it runs per published reading), values inserted as they are.
pub fn render_topic(template: &str, prefix: &str, device_id: &str, gateway_id: &str) -> String {
    let mut out = String::with_capacity(template.len() + prefix.len() + device_id.len());
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let (value, len) = [
            ("{prefix}", prefix),
            ("{device_id}", device_id),
            ("{gateway_id}", gateway_id),
        ]
        .into_iter()
        .find(|(name, _)| rest.starts_with(name))
        .map_or(("{", 1), |(name, value)| (value, name.len()));
        out.push_str(value);
        rest = &rest[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses() {
        assert_eq!(
            BrokerAddr::parse("mqtts://broker.local").unwrap(),
            BrokerAddr {
                tls: true,
                host: "broker.local".into(),
                port: 8883
            }
        );
        assert_eq!(
            BrokerAddr::parse("mqtt://127.0.0.1:1999").unwrap().port,
            1999
        );
        assert_eq!(BrokerAddr::parse("mqtt://[::1]:7").unwrap().host, "::1");
        assert!(BrokerAddr::parse("tcp://x").is_err());
        assert!(BrokerAddr::parse("mqtt://x:y").is_err());
        assert!(BrokerAddr::parse("mqtt://x/topic").is_err());
    }

    #[test]
    fn device_levels() {
        assert_eq!(device_level("devices/+/telemetry"), Ok(1));
        assert_eq!(device_level("+/t"), Ok(0));
        assert!(device_level("devices/#").is_err());
        assert!(device_level("devices/+/x/+").is_err());
        assert!(device_level("devices/a+/x").is_err());
        assert!(device_level("devices/telemetry").is_err());
    }

    #[test]
    fn topics() {
        assert_eq!(
            render_topic("{prefix}/{device_id}/telemetry", "site-1", "d7", "gw"),
            "site-1/d7/telemetry"
        );
        assert_eq!(
            render_topic("{gateway_id}/{x}/{device_id}{prefix}{", "p", "d", "g"),
            "g/{x}/dp{"
        );
        // A value is inserted as it is, never expanded again.
        assert_eq!(
            render_topic("{prefix}/t", "{device_id}", "d", "g"),
            "{device_id}/t"
        );
        assert_eq!(render_topic("plain", "p", "d", "g"), "plain");
    }
}
