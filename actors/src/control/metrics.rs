//! The control plane's metrics. Labels are bounded sets: kinds, doors and states are the
//! control plane's own words, never request text.

use crate::metrics::reg;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub struct ControlMetrics {
    /// Commands taken, by door and the state they were answered in.
    pub commands: IntCounterVec,
    /// MQTT requests refused before they were read (`unsigned`, `bad_signature`, `not_json`).
    pub refused: IntCounterVec,
    /// Device commands reaching a state (`queued`, `sent`, `acknowledged`, `expired`).
    pub device_commands: IntCounterVec,
    /// Device acknowledgements not applied (`unknown`, `other_device`, `malformed`).
    pub acks_ignored: IntCounterVec,
    /// Device commands queued or awaiting their device.
    pub outbox: IntGauge,
    /// 1 while a control link (`edge`, `upstream`) is connected.
    pub link_up: IntGaugeVec,
    pub link_errors: IntCounterVec,
}

impl ControlMetrics {
    pub fn new(r: &Registry) -> Self {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).unwrap(),
            )
        };
        ControlMetrics {
            commands: vec(
                "control_commands_total",
                "Control commands taken, by door and the state they were answered in",
                &["door", "state"],
            ),
            refused: vec(
                "control_requests_refused_total",
                "MQTT control requests refused before they were read, by reason",
                &["reason"],
            ),
            device_commands: vec(
                "control_device_commands_total",
                "Device commands reaching a state",
                &["state"],
            ),
            acks_ignored: vec(
                "control_device_acks_ignored_total",
                "Device acknowledgements not applied, by reason",
                &["reason"],
            ),
            outbox: reg(
                r,
                IntGauge::new(
                    "control_device_outbox",
                    "Device commands queued or awaiting their device's acknowledgement",
                )
                .unwrap(),
            ),
            link_up: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "control_link_up",
                        "1 while the control link (edge, upstream) is connected",
                    ),
                    &["link"],
                )
                .unwrap(),
            ),
            link_errors: vec(
                "control_link_errors_total",
                "Connection losses of the control links",
                &["link"],
            ),
        }
    }
}
