//! What a control request asks for: parsed and checked before anything acts (pure).

use serde_json::Value;

/// A command the control plane carries out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Gateway id, version, uptime, readiness, backlog per sink.
    Ping,
    /// The effective configuration, secrets redacted.
    ConfigGet,
    /// Stop leasing for a sink: its backlog waits in the WAL, no attempt is used up.
    SinkPause { sink: String },
    /// Lease again, from the oldest pending record.
    SinkResume { sink: String },
    /// A command for one device, queued durably and published on the edge broker.
    Device(DeviceCommand),
    /// A configuration change (checked in full by `apply.rs`).
    ConfigApply,
    /// A planned restart of one supervised actor (not a failure: no restart budget used).
    ActorRestart { actor: String },
    /// Up to `limit` of a sink's dead letters back to the queue, oldest first.
    RequeueDead { sink: String, limit: usize },
    /// Certificates, keys, CA and token files read again.
    TlsReload,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCommand {
    pub device_id: String,
    /// The JSON object the device receives (the request's `payload`, `command_id` added).
    pub payload: serde_json::Map<String, Value>,
    pub ttl_secs: u64,
}

/// What a request is checked against.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The configured sinks' names.
    pub sinks: Vec<String>,
    /// Whether device commands can be sent (the edge broker is configured).
    pub device_commands: bool,
    pub default_ttl_secs: u64,
    pub max_ttl_secs: u64,
    pub max_command_bytes: usize,
}

/// A request that names what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The kinds this gateway carries out.
pub const KINDS: [&str; 9] = [
    "tls.reload",
    "ping",
    "config.get",
    "config.apply",
    "sink.pause",
    "sink.resume",
    "device.command",
    "dead-letters.requeue",
    "actor.restart",
];

/// A request's `command_id`: 1-128 characters of `[A-Za-z0-9._:-]`.
pub fn command_id(v: &Value) -> Result<&str, Invalid> {
    let id = v
        .get("command_id")
        .ok_or_else(|| invalid("command_id", "required"))?
        .as_str()
        .ok_or_else(|| invalid("command_id", "must be a string"))?;
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b));
    if ok {
        Ok(id)
    } else {
        Err(invalid("command_id", "1-128 characters of [A-Za-z0-9._:-]"))
    }
}

/// The command a request asks for.
pub fn parse(v: &Value, limits: &Limits) -> Result<Command, Invalid> {
    let sinks = &limits.sinks;
    if !v.is_object() {
        return Err(invalid("(request)", "must be a JSON object"));
    }
    let kind = v
        .get("kind")
        .ok_or_else(|| invalid("kind", "required"))?
        .as_str()
        .ok_or_else(|| invalid("kind", "must be a string"))?;
    let sink = || -> Result<String, Invalid> {
        let s = v
            .get("sink")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("sink", "required: a sink's name"))?;
        if sinks.iter().any(|n| n == s) {
            Ok(s.to_string())
        } else {
            Err(invalid(
                "sink",
                format!("no sink named {s:?} (sinks: {})", sinks.join(", ")),
            ))
        }
    };
    match kind {
        "ping" => Ok(Command::Ping),
        "config.get" => Ok(Command::ConfigGet),
        "sink.pause" => Ok(Command::SinkPause { sink: sink()? }),
        "sink.resume" => Ok(Command::SinkResume { sink: sink()? }),
        "device.command" => device_command(v, limits).map(Command::Device),
        "config.apply" => Ok(Command::ConfigApply),
        "tls.reload" => Ok(Command::TlsReload),
        "actor.restart" => {
            let actor = v.get("actor").and_then(Value::as_str).ok_or_else(|| {
                invalid(
                    "actor",
                    "required: a supervised actor's name (see /admin/tree)",
                )
            })?;
            Ok(Command::ActorRestart {
                actor: actor.to_string(),
            })
        }
        "dead-letters.requeue" => {
            let limit = match v.get("limit") {
                None => 1000,
                Some(l) => l
                    .as_u64()
                    .filter(|l| (1..=100_000).contains(l))
                    .ok_or_else(|| invalid("limit", "a whole number, 1 to 100000"))?
                    as usize,
            };
            Ok(Command::RequeueDead {
                sink: sink()?,
                limit,
            })
        }
        other => Err(invalid(
            "kind",
            format!("unknown kind {other:?} (kinds: {})", KINDS.join(", ")),
        )),
    }
}

fn device_command(v: &Value, limits: &Limits) -> Result<DeviceCommand, Invalid> {
    if !limits.device_commands {
        return Err(invalid(
            "kind",
            "device commands need the control link to the edge broker: set control.link = true (and mqtt.enabled = true)",
        ));
    }
    let device_id = v
        .get("device_id")
        .ok_or_else(|| invalid("device_id", "required"))?
        .as_str()
        .ok_or_else(|| invalid("device_id", "must be a string"))?;
    crate::ingest::parse::validate_device_id(device_id)
        .map_err(|r| invalid("device_id", r.message))?;
    let mut payload = match v.get("payload") {
        None => serde_json::Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(invalid("payload", "must be a JSON object")),
    };
    let size = serde_json::to_vec(&payload).map_or(usize::MAX, |b| b.len());
    if size > limits.max_command_bytes {
        return Err(invalid(
            "payload",
            format!(
                "{size} bytes as JSON, over control.max_command_bytes ({})",
                limits.max_command_bytes
            ),
        ));
    }
    let ttl_secs = match v.get("ttl_secs") {
        None => limits.default_ttl_secs,
        Some(t) => match t.as_u64() {
            Some(t) if (1..=limits.max_ttl_secs).contains(&t) => t,
            _ => {
                return Err(invalid(
                    "ttl_secs",
                    format!("a whole number of seconds, 1 to {}", limits.max_ttl_secs),
                ))
            }
        },
    };
    payload.insert("command_id".into(), v["command_id"].clone());
    Ok(DeviceCommand {
        device_id: device_id.to_string(),
        payload,
        ttl_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_are_checked_and_errors_name_the_field() {
        let sinks = Limits {
            sinks: vec!["api".to_string()],
            device_commands: true,
            default_ttl_secs: 60,
            max_ttl_secs: 600,
            max_command_bytes: 100,
        };
        assert_eq!(command_id(&json!({"command_id": "c-1"})), Ok("c-1"));
        for bad in [
            json!({}),
            json!({"command_id": 7}),
            json!({"command_id": "a b"}),
            json!({"command_id": ""}),
        ] {
            assert_eq!(command_id(&bad).unwrap_err().field, "command_id", "{bad}");
        }
        assert_eq!(parse(&json!({"kind": "ping"}), &sinks), Ok(Command::Ping));
        assert_eq!(
            parse(&json!({"kind": "sink.pause", "sink": "api"}), &sinks),
            Ok(Command::SinkPause { sink: "api".into() })
        );
        let e = parse(&json!({"kind": "sink.pause", "sink": "nope"}), &sinks).unwrap_err();
        assert_eq!(e.field, "sink");
        assert!(e.message.contains("api"), "{e}");
        let e = parse(&json!({"kind": "reboot"}), &sinks).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.contains("ping")),
            ("kind", true)
        );
        assert_eq!(parse(&json!([1]), &sinks).unwrap_err().field, "(request)");
    }

    #[test]
    fn device_commands_are_checked() {
        let mut limits = Limits {
            sinks: vec![],
            device_commands: true,
            default_ttl_secs: 60,
            max_ttl_secs: 600,
            max_command_bytes: 100,
        };
        let req = json!({"command_id": "c-9", "kind": "device.command", "device_id": "s-1",
                         "payload": {"led": "on"}});
        let Ok(Command::Device(d)) = parse(&req, &limits) else {
            panic!("a device command")
        };
        assert_eq!(d.device_id, "s-1");
        assert_eq!(d.ttl_secs, 60, "the default ttl");
        assert_eq!(
            Value::Object(d.payload),
            json!({"led": "on", "command_id": "c-9"})
        );
        let field = |extra: Value| {
            let mut r = req.clone();
            for (k, v) in extra.as_object().unwrap() {
                r[k] = v.clone();
            }
            parse(&r, &limits).unwrap_err().field
        };
        assert_eq!(field(json!({"device_id": "a/b"})), "device_id");
        assert_eq!(field(json!({"device_id": 7})), "device_id");
        assert_eq!(field(json!({"payload": [1]})), "payload");
        assert_eq!(field(json!({"payload": {"x": "y".repeat(200)}})), "payload");
        assert_eq!(field(json!({"ttl_secs": 0})), "ttl_secs");
        assert_eq!(field(json!({"ttl_secs": 601})), "ttl_secs");
        assert_eq!(field(json!({"ttl_secs": "10"})), "ttl_secs");
        limits.device_commands = false;
        assert_eq!(parse(&req, &limits).unwrap_err().field, "kind");
    }
}
