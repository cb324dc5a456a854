//! Gateway presence on an upstream broker (issue 12, part 4).

/// `gateways/{gateway_id}/status`: published retained (`online`, QoS 0) on every connection,
/// with a retained Last Will of `offline` (QoS 1), so a backend sees a dead gateway within
/// one keep-alive (`presence = true`).
pub(super) struct Presence {
    pub topic: String,
    pub online: Vec<u8>,
    pub offline: Vec<u8>,
}

impl Presence {
    pub fn new(gateway_id: &str) -> Presence {
        static STARTED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let started = STARTED.get_or_init(|| {
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
        });
        let state = |s: &str| {
            serde_json::to_vec(&serde_json::json!({
                "state": s,
                "gateway_id": gateway_id,
                "version": env!("CARGO_PKG_VERSION"),
                "started_at": started,
            }))
            .expect("presence serialises")
        };
        Presence {
            topic: format!("gateways/{gateway_id}/status"),
            online: state("online"),
            offline: state("offline"),
        }
    }
}
