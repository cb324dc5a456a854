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
pub const KINDS: [&str; 4] = ["ping", "config.get", "sink.pause", "sink.resume"];

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

/// The command a request asks for; `sinks` are the configured sink names.
pub fn parse(v: &Value, sinks: &[String]) -> Result<Command, Invalid> {
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
        other => Err(invalid(
            "kind",
            format!("unknown kind {other:?} (kinds: {})", KINDS.join(", ")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_are_checked_and_errors_name_the_field() {
        let sinks = vec!["api".to_string()];
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
}
