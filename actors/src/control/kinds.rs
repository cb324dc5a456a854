//! What each command kind does once it is recorded (`ControlState::act`): ping, config.get,
//! config.apply, sink.pause / sink.resume, actor.restart, tls.reload, dead-letters.requeue.
//! (`device.command` is queued by `device.rs` instead: it completes later.)

use super::command::Command;
use super::{blocking, ControlState};
use crate::wal::WalMsg;
use serde_json::{json, Value};
use std::time::Duration;

impl ControlState {
    pub(super) async fn act(&self, c: Command, request: &Value) -> Result<Value, Value> {
        let a = &self.args;
        match c {
            Command::Ping => {
                let (ready, readiness) = crate::readiness::readiness(
                    &a.directory,
                    &a.metrics,
                    &a.sink_health,
                    a.mqtt.as_ref(),
                );
                // Records pending per sink (every configured sink, 0 when it has none).
                let mut oldest = serde_json::Map::new();
                let mut backlog: serde_json::Map<String, Value> = a
                    .live
                    .sink_names()
                    .into_iter()
                    .map(|s| (s, json!(0)))
                    .collect();
                match a
                    .wal
                    .call(WalMsg::Stats, Some(Duration::from_secs(2)))
                    .await
                {
                    Ok(stats) => {
                        for s in &stats.sinks {
                            backlog.insert(s.sink.clone(), json!(s.pending));
                            oldest.insert(
                                s.sink.clone(),
                                json!(s.oldest_pending_age_ms.map(|ms| ms as f64 / 1000.0)),
                            );
                        }
                    }
                    Err(e) => {
                        backlog.insert("error".into(), json!(e.to_string()));
                    }
                }
                Ok(json!({
                    "result": "pong",
                    "gateway_id": a.gateway_id,
                    "version": a.version,
                    "uptime_secs": a.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
                    "ready": ready,
                    "readiness": readiness,
                    "backlog": backlog,
                    "oldest_pending_age_secs": oldest,
                    "paused_sinks": a.holds.all(),
                }))
            }
            Command::ConfigGet => Ok(json!({"result": "config",
                "config": serde_json::to_value(a.live.get().redacted()).unwrap_or_default()})),
            Command::ConfigApply => self.config_apply(request).await,
            Command::ActorRestart { actor } => match a.reconfigure.restart(&actor).await {
                Ok(()) => Ok(json!({"result": "restarted", "actor": actor})),
                Err(why) => Err(json!({"error": "not_restarted", "actor": actor, "message": why})),
            },
            Command::TlsReload => a.reconfigure.reload_tls(true).await,
            Command::RequeueDead { sink, limit } => {
                let s = sink.clone();
                match a
                    .wal
                    .call(
                        |reply| WalMsg::Requeue {
                            sink: s,
                            limit,
                            filter: Default::default(),
                            reply,
                        },
                        Some(Duration::from_secs(30)),
                    )
                    .await
                {
                    Ok(n) => {
                        tracing::warn!(sink = %sink, requeued = n, "dead letters requeued by a control command");
                        Ok(json!({"result": "requeued", "sink": sink, "requeued": n}))
                    }
                    Err(e) => Err(json!({"error": "unavailable", "message": e.to_string()})),
                }
            }
            Command::SinkPause { ref sink } | Command::SinkResume { ref sink } => {
                let pause = matches!(c, Command::SinkPause { .. });
                let sink = sink.clone();
                // Written first: a pause outlives a restart of the gateway.
                let s = sink.clone();
                blocking(&self.store, move |st| st.set_paused(&s, pause))
                    .await
                    .map_err(|e| json!({"error": "control_store", "message": e.to_string()}))?;
                let changed = a.holds.set(&sink, pause);
                let result = if pause { "paused" } else { "resumed" };
                Ok(json!({"result": result, "sink": sink, "changed": changed}))
            }
            Command::Device(_) => unreachable!("queued by the caller"),
        }
    }
}
