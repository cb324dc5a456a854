//! Which subscription a topic came through, and the device id it names. Pure; unit-tested.

use crate::ingest::parse::{validate_device_id, Encoding, Rejection};
use edge_gateway_config::{device_level, MqttSubscription, PayloadEncoding};

/// The session's topic filters, parsed once.
#[derive(Debug, Clone)]
pub struct Subscriptions {
    subs: Vec<Sub>,
}

#[derive(Debug, Clone)]
struct Sub {
    filter: String,
    levels: Vec<String>,
    device_level: usize,
    encoding: Option<Encoding>,
}

impl Subscriptions {
    /// Filters were checked by config validation; a bad one here is a programming error
    /// reported as `Err`.
    pub fn new(subs: &[MqttSubscription]) -> Result<Subscriptions, String> {
        let subs = subs
            .iter()
            .map(|s| {
                Ok(Sub {
                    filter: s.filter.clone(),
                    levels: s.filter.split('/').map(str::to_string).collect(),
                    device_level: device_level(&s.filter)
                        .map_err(|e| format!("{}: {e}", s.filter))?,
                    encoding: match s.encoding {
                        PayloadEncoding::Auto => None,
                        PayloadEncoding::Json => Some(Encoding::Json),
                        PayloadEncoding::Cbor => Some(Encoding::Cbor),
                        PayloadEncoding::Protobuf => Some(Encoding::Protobuf),
                    },
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Subscriptions { subs })
    }

    pub fn filters(&self) -> impl Iterator<Item = &str> {
        self.subs.iter().map(|s| s.filter.as_str())
    }

    /// The device id (validated like HTTP's path segment) and the payload encoding (`None`:
    /// detect) for a message on `topic`.
    pub fn route(&self, topic: &str) -> Result<(String, Option<Encoding>), Rejection> {
        let levels: Vec<&str> = topic.split('/').collect();
        for s in &self.subs {
            let matches = levels.len() == s.levels.len()
                && s.levels
                    .iter()
                    .zip(&levels)
                    .all(|(f, t)| f == "+" || f == t);
            if matches {
                let device = levels[s.device_level];
                validate_device_id(device).map_err(|mut r| {
                    r.field = Some("topic".into());
                    r
                })?;
                return Ok((device.to_string(), s.encoding));
            }
        }
        Err(Rejection::new(
            400,
            "unknown_topic",
            Some("topic".into()),
            format!("topic {topic:?} matches no subscription"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs() -> Subscriptions {
        Subscriptions::new(&[
            MqttSubscription::default(),
            MqttSubscription {
                filter: "site/+/cbor".into(),
                encoding: PayloadEncoding::Cbor,
            },
        ])
        .unwrap()
    }

    #[test]
    fn device_id_and_encoding_come_from_the_matching_filter() {
        let s = subs();
        assert_eq!(
            s.route("devices/pump-7/telemetry").unwrap(),
            ("pump-7".into(), None)
        );
        assert_eq!(
            s.route("site/d1/cbor").unwrap(),
            ("d1".into(), Some(Encoding::Cbor))
        );
    }

    #[test]
    fn bad_device_ids_and_unknown_topics_are_refused_naming_the_topic() {
        let s = subs();
        let r = s.route("devices/bad id!/telemetry").unwrap_err();
        assert_eq!(
            (r.code, r.field.as_deref()),
            ("invalid_device_id", Some("topic"))
        );
        let r = s.route("devices/a/b/telemetry").unwrap_err();
        assert_eq!(r.code, "unknown_topic");
        let r = s.route("devices//telemetry").unwrap_err();
        assert_eq!(r.field.as_deref(), Some("topic"));
    }
}
