//! The control plane's configuration (`[control]`, issue 12): the audit trail's size, the MQTT
//! door for operators' requests, and device commands on the edge broker.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where the control plane listens for requests over MQTT.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RequestDoor {
    /// Requests only through the admin API (the default: an MQTT door trusts the broker's
    /// ACL, which the operator has to set up first — docs/security.md).
    #[default]
    Off,
    /// `request_topic` on the edge broker (`[mqtt]`), over the control link.
    Edge,
    /// `request_topic` on an mqtt sink's broker (`requests_sink`, or the only mqtt sink): where
    /// an operator's backend usually is.
    Upstream,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ControlConfig {
    /// Commands kept in the audit trail (`control.redb`); the oldest finished ones beyond it
    /// are removed. A `command_id` is recognised as a duplicate while its record is kept.
    pub max_commands: usize,
    /// The control link: the control plane's own connection to the edge broker (`[mqtt]`'s
    /// broker and TLS), for device commands and the MQTT door. Off by default: on a broker
    /// that makes identities client ids (the shipped config) it needs its own identity (below),
    /// or it and the ingest session would take each other's session over.
    pub link: bool,
    /// The MQTT door for requests (`off`, `edge` or `upstream`).
    pub requests: RequestDoor,
    /// With `requests = "upstream"`: the mqtt sink whose broker (address, TLS, credentials)
    /// carries the door; unset: the only mqtt sink.
    pub requests_sink: Option<String>,
    /// Where requests arrive and answers go (`{gateway_id}` is replaced).
    pub request_topic: String,
    pub response_topic: String,
    /// With a secret, a request over MQTT must be signed (HMAC-SHA256, see docs/operations.md);
    /// anything else is refused, counted and never recorded.
    pub hmac_secret_file: Option<PathBuf>,
    /// Where a device's commands are published (`{device_id}`, `{gateway_id}` replaced); a
    /// device acknowledges on the same topic with `/ack` appended.
    pub device_topic: String,
    /// A `device.command` without `ttl_secs` expires after this; none may ask for more than
    /// `max_ttl_secs`.
    pub default_ttl_secs: u64,
    pub max_ttl_secs: u64,
    /// Device commands queued or awaiting their device's acknowledgement, at most; more are
    /// refused (the queue lives in `control.redb`, not in memory alone).
    pub max_device_commands: usize,
    /// Largest `payload` of a device command, as JSON.
    pub max_command_bytes: usize,
    /// The control link's client id on the edge broker (default: the ingest session's id
    /// with `-control`). A broker that takes client ids from identities
    /// (`use_username_as_clientid`, the shipped config) needs the link to have its own
    /// identity: `username`/`password_file` or `client_cert_file`/`client_key_file` here
    /// replace `[mqtt]`'s for the link.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            max_commands: 10_000,
            link: false,
            requests: RequestDoor::Off,
            requests_sink: None,
            request_topic: "gateways/{gateway_id}/control/request".into(),
            response_topic: "gateways/{gateway_id}/control/response".into(),
            hmac_secret_file: None,
            device_topic: "devices/{device_id}/commands".into(),
            default_ttl_secs: 3600,
            max_ttl_secs: 7 * 24 * 3600,
            max_device_commands: 1000,
            max_command_bytes: 16 * 1024,
            client_id: None,
            username: None,
            password_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

impl ControlConfig {
    /// The problems in this section, as `(path, message)`; `mqtt_enabled`: whether `[mqtt]`
    /// configures an edge broker for the control link.
    pub fn problems(&self, mqtt_enabled: bool) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut p = |path: &str, m: &str| out.push((format!("control.{path}"), m.to_string()));
        if self.max_commands == 0 {
            p("max_commands", "must be > 0");
        }
        if self.requests == RequestDoor::Edge && !mqtt_enabled {
            p(
                "requests",
                "\"edge\" needs the edge broker: set mqtt.enabled = true",
            );
        }
        for (k, t) in [
            ("request_topic", &self.request_topic),
            ("response_topic", &self.response_topic),
            ("device_topic", &self.device_topic),
        ] {
            if t.is_empty() || t.contains(['+', '#']) {
                p(k, "must be a topic name (no wildcards)");
            }
        }
        if !self.device_topic.contains("{device_id}") {
            p("device_topic", "must contain {device_id}");
        }
        if self.default_ttl_secs == 0 || self.default_ttl_secs > self.max_ttl_secs {
            p(
                "default_ttl_secs",
                "must be > 0 and <= control.max_ttl_secs",
            );
        }
        if self.max_device_commands == 0 {
            p("max_device_commands", "must be > 0");
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            p(
                "client_cert_file",
                "client_cert_file and client_key_file go together",
            );
        }
        out
    }

    /// The mqtt sink carrying the upstream request door, among `mqtt_sinks` (names).
    pub fn door_sink<'a>(&self, mqtt_sinks: &'a [String]) -> Result<&'a str, String> {
        match &self.requests_sink {
            Some(n) => mqtt_sinks
                .iter()
                .find(|s| *s == n)
                .map(String::as_str)
                .ok_or_else(|| format!("no mqtt sink named {n:?}")),
            None if mqtt_sinks.len() == 1 => Ok(&mqtt_sinks[0]),
            None => Err(format!(
                "\"upstream\" needs an mqtt sink: set control.requests_sink to one of {mqtt_sinks:?}"
            )),
        }
    }

    /// The topic filter the link subscribes to for device acknowledgements.
    pub fn ack_filter(&self, gateway_id: &str) -> String {
        format!(
            "{}/ack",
            self.device_topic
                .replace("{gateway_id}", gateway_id)
                .replace("{device_id}", "+")
        )
    }

    /// The device a topic acknowledges for, if it is an ack topic.
    pub fn ack_device<'a>(&self, gateway_id: &str, topic: &'a str) -> Option<&'a str> {
        let t = self.device_topic.replace("{gateway_id}", gateway_id);
        let (head, tail) = t.split_once("{device_id}")?;
        let rest = topic.strip_prefix(head)?;
        let rest = rest.strip_suffix("/ack")?;
        let device = rest.strip_suffix(tail)?;
        (!device.is_empty() && !device.contains('/')).then_some(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_topics_name_their_device() {
        let c = ControlConfig::default();
        assert_eq!(c.ack_filter("gw"), "devices/+/commands/ack");
        assert_eq!(c.ack_device("gw", "devices/s-1/commands/ack"), Some("s-1"));
        assert_eq!(c.ack_device("gw", "devices/s-1/commands"), None);
        assert_eq!(c.ack_device("gw", "devices//commands/ack"), None);
        assert_eq!(c.ack_device("gw", "devices/a/b/commands/ack"), None);
        let c = ControlConfig {
            device_topic: "{gateway_id}/dev/{device_id}/cmd".into(),
            ..Default::default()
        };
        assert_eq!(c.ack_filter("gw"), "gw/dev/+/cmd/ack");
        assert_eq!(c.ack_device("gw", "gw/dev/x/cmd/ack"), Some("x"));
        assert!(ControlConfig::default().problems(false).is_empty());
        let bad = ControlConfig {
            requests: RequestDoor::Edge,
            device_topic: "devices/+/commands".into(),
            ..Default::default()
        };
        let paths: Vec<String> = bad.problems(false).into_iter().map(|p| p.0).collect();
        assert_eq!(
            paths,
            [
                "control.requests",
                "control.device_topic",
                "control.device_topic"
            ]
        );
    }
}
