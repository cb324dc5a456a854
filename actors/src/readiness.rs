//! Readiness, as `/readyz` and the control plane's `ping` report it: every actor in the tree
//! running (the control plane's excepted: it is listed, but readings never wait on it), the
//! WAL's disk not full, the MQTT session connected when MQTT is on. The body
//! names each component's state and each sink's (delivering, or in an outage since when and
//! why).

use crate::addr::Directory;
use crate::ingest::mqtt::SessionStatus;
use crate::metrics::Metrics;
use crate::sinks::health::SinkHealth;
use serde_json::json;
use std::sync::{Arc, Mutex};

/// `(ready, body)`.
pub fn readiness(
    directory: &Directory,
    metrics: &Metrics,
    sink_health: &SinkHealth,
    mqtt: Option<&Arc<Mutex<SessionStatus>>>,
) -> (bool, serde_json::Value) {
    let mut ready = true;
    let mut comps = serde_json::Map::new();
    for e in directory.all() {
        let running = matches!(e.status(), Some(ractor::ActorStatus::Running));
        // The control plane is listed but does not gate readiness: readings never wait on it.
        let essential = !matches!(e.name(), "control" | "control_plane");
        ready &= running || !essential;
        comps.insert(
            e.name().to_string(),
            json!(if running { "running" } else { "down" }),
        );
    }
    // Not ready to take readings while the disk is nearly full (delivery goes on).
    if metrics.wal_disk_full.get() == 1 {
        ready = false;
        comps.insert(
            "wal_disk".into(),
            json!("full: appends refused until delivery frees space (wal.min_free_bytes)"),
        );
    }
    // A sink in an outage does not make the gateway unready — its readings wait in the WAL,
    // and taking new ones is still safe — but readiness says which and why.
    let mut sinks = serde_json::Map::new();
    for (name, outage) in sink_health.snapshot() {
        let v = match outage {
            None => json!({"state": "delivering"}),
            Some(o) => json!({
                "state": "outage",
                "since": humantime::format_rfc3339_seconds(o.since).to_string(),
                "for_secs": o.since.elapsed().map(|d| d.as_secs()).unwrap_or(0),
                "reason": o.reason,
            }),
        };
        sinks.insert(name, v);
    }
    if let Some(m) = mqtt {
        let st = m.lock().expect("status lock").clone();
        ready &= st.state == "connected";
        comps.insert("mqtt_session_connection".into(), json!(st.state));
        if let Some(e) = st.last_error {
            comps.insert("mqtt_session_last_error".into(), json!(e));
        }
    }
    let mut body = json!({"ready": ready, "components": comps, "sinks": sinks});
    // Records no sink delivers do not stop ingest, but the operator must decide: named here.
    let orphaned = metrics.orphaned_sinks.lock().expect("orphans lock").clone();
    if !orphaned.is_empty() {
        body["orphaned_sinks"] = orphaned
            .iter()
            .map(|o| {
                (
                    o.sink.clone(),
                    json!({
                        "pending": o.pending,
                        "dead": o.dead,
                        "action": format!(
                            "not in the configuration: nothing delivers these; stop the gateway, \
                             then `edge-gateway wal move-sink {0} NEW` or `wal drop-sink {0}`",
                            o.sink
                        ),
                    }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    (ready, body)
}
