//! `config.apply`: a partial configuration change, validated as a file would be (every
//! problem at once, nothing applied on any), written to `config.applied.toml` and put in force
//! by restarting only what it touches ([`Reconfigure`], implemented by the supervision tree);
//! rolled back when what it restarts does not come up. Also `actor.restart`.
//!
//! Request: `{"command_id", "kind": "config.apply", "change": {<the configuration's shape>},
//! "removed_sinks": {"<name>": "drain" | "drop" | {"move_to": "<sink>"}}}`. A sink left out
//! of a `change.sinks` list is removed; one holding records must say what becomes of them.

use super::{blocking_io, ControlState};
use edge_gateway_config::{apply_change, read_applied, write_applied, Config, ConfigError};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// What becomes of a removed sink's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Delivered first: the sink takes no new records and goes once its backlog is empty.
    Drain,
    /// Deleted, counted and reported.
    Drop,
    /// Queued for another sink instead.
    MoveTo(String),
}

/// What the supervision tree does for the control plane.
pub trait Reconfigure: Send + Sync {
    /// Puts `new` in force, restarting only the actors it changes; on failure everything is
    /// as before and the error says why. The answer lists what was done.
    fn apply(
        &self,
        new: Config,
        removed: Vec<(String, Disposition)>,
    ) -> BoxFuture<'_, Result<Value, String>>;

    /// A planned restart of one supervised actor.
    fn restart<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<(), String>>;

    /// Removes draining sinks whose backlog has been delivered; their names.
    fn finish_drains(&self) -> BoxFuture<'_, Vec<String>>;

    /// After a restart: drains recorded before it carry on (each sink gets its publisher and
    /// a lane again, and takes no new readings).
    fn resume_drains(&self, sinks: Vec<edge_gateway_config::SinkConfig>) -> BoxFuture<'_, ()>;

    /// Re-reads certificates, keys, CA and token files (`force`: even unchanged ones); what
    /// was reloaded or restarted, or (`Err`) the same report when a new file was refused.
    fn reload_tls(&self, force: bool) -> BoxFuture<'_, Result<Value, Value>>;
}

fn problems(e: ConfigError) -> Value {
    match e {
        ConfigError::Invalid(p) => json!({
            "error": "invalid",
            "problems": p.iter().map(|p| json!({"path": p.path, "message": p.message})).collect::<Vec<_>>(),
        }),
        other => {
            json!({"error": "invalid", "problems": [{"path": "(config)", "message": other.to_string()}]})
        }
    }
}

fn problem(path: impl Into<String>, message: impl Into<String>) -> Value {
    json!({"path": path.into(), "message": message.into()})
}

fn disposition(v: &Value) -> Option<Disposition> {
    match v {
        Value::String(s) if s == "drain" => Some(Disposition::Drain),
        Value::String(s) if s == "drop" => Some(Disposition::Drop),
        Value::Object(m) if m.len() == 1 => m
            .get("move_to")
            .and_then(Value::as_str)
            .map(|s| Disposition::MoveTo(s.to_string())),
        _ => None,
    }
}

impl ControlState {
    pub(super) async fn config_apply(&self, request: &Value) -> Result<Value, Value> {
        let a = &self.args;
        let change: toml::Table = match request.get("change") {
            Some(v @ Value::Object(_)) => serde_json::from_value(v.clone()).map_err(|e| {
                json!({"error": "invalid", "problems": [problem("change", format!("not a configuration: {e}"))]})
            })?,
            _ => {
                return Err(
                    json!({"error": "invalid", "problems": [problem("change", "required: an object in the configuration's shape")]}),
                )
            }
        };
        let data_dir = a.live.get().data_dir.clone();
        let (layers, dd) = (a.layers.clone(), data_dir.clone());
        let (before, (new, next)) = blocking_io(move || {
            let applied = read_applied(&dd)?;
            let changed = apply_change(&layers, &applied, &change)?;
            Ok::<_, ConfigError>((applied, changed))
        })
        .await
        .map_err(|e| json!({"error": "invalid", "problems": [problem("(store)", e)]}))?
        .map_err(problems)?;

        // What becomes of removed sinks.
        let old = a.live.sink_names();
        let new_names: Vec<String> = new.sinks.iter().map(|s| s.name().to_string()).collect();
        let asked: BTreeMap<String, Value> = match request.get("removed_sinks") {
            None => BTreeMap::new(),
            Some(Value::Object(m)) => m.clone().into_iter().collect(),
            Some(_) => {
                return Err(
                    json!({"error": "invalid", "problems": [problem("removed_sinks", "an object: sink name -> \"drain\" | \"drop\" | {\"move_to\": sink}")]}),
                )
            }
        };
        let held = self.backlog().await;
        let mut bad = Vec::new();
        let mut removed = Vec::new();
        for (name, v) in &asked {
            if !old.contains(name) || new_names.contains(name) {
                bad.push(problem(
                    format!("removed_sinks.{name}"),
                    "names no sink this change removes",
                ));
            }
            match disposition(v) {
                Some(Disposition::MoveTo(to)) if !new_names.contains(&to) => bad.push(problem(
                    format!("removed_sinks.{name}"),
                    format!("move_to {to:?}: no such sink after this change"),
                )),
                None => bad.push(problem(
                    format!("removed_sinks.{name}"),
                    "\"drain\", \"drop\" or {\"move_to\": sink}",
                )),
                Some(_) => {}
            }
        }
        for name in old.iter().filter(|n| !new_names.contains(n)) {
            match asked.get(name).and_then(disposition) {
                Some(d) => removed.push((name.clone(), d)),
                None => match held.get(name) {
                    Some(n) if *n > 0 => bad.push(problem(
                        "sinks",
                        format!(
                            "removing {name:?}, which holds {n} records: say what becomes of \
                             them, removed_sinks.{name} = \"drain\" | \"drop\" | \
                             {{\"move_to\": sink}}"
                        ),
                    )),
                    _ => removed.push((name.clone(), Disposition::Drop)),
                },
            }
        }
        if !bad.is_empty() {
            return Err(json!({"error": "invalid", "problems": bad}));
        }

        // Written first, so a crash after the change took effect keeps it; put back if the
        // change is rolled back.
        let (dd, n) = (data_dir.clone(), next.clone());
        blocking_io(move || write_applied(&dd, &n))
            .await
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| json!({"error": "not_persisted", "message": e}))?;
        let old_sinks = a.live.get().sinks.clone();
        let drains: Vec<String> = removed
            .iter()
            .filter(|(_, d)| *d == Disposition::Drain)
            .map(|(n, _)| n.clone())
            .collect();
        match a.reconfigure.apply(new, removed).await {
            Ok(mut done) => {
                // Recorded so that a restart carries on with them.
                for name in drains {
                    if let Some(c) = old_sinks.iter().find(|s| s.name() == name).cloned() {
                        let n = name.clone();
                        let r = super::blocking(&self.store, move |s| s.set_draining(&n, Some(&c)))
                            .await;
                        if let Err(e) = r {
                            tracing::error!(sink = %name, error = %e, "drain not recorded: it would not resume after a restart");
                        }
                    }
                }
                done["result"] = "applied".into();
                Ok(done)
            }
            Err(why) => {
                let dd = data_dir;
                let restored = blocking_io(move || write_applied(&dd, &before)).await;
                tracing::error!(reason = %why, "config.apply rolled back");
                Err(json!({"error": "rolled_back", "message": why,
                           "applied_file_restored": matches!(restored, Ok(Ok(())))}))
            }
        }
    }

    /// Records pending or dead per sink (0 for a sink the WAL cannot tell about now).
    pub(super) async fn backlog(&self) -> BTreeMap<String, u64> {
        let stats = self
            .args
            .wal
            .call(
                crate::wal::WalMsg::Stats,
                Some(std::time::Duration::from_secs(5)),
            )
            .await;
        stats
            .map(|s| {
                s.sinks
                    .iter()
                    .map(|k| (k.sink.clone(), k.pending + k.dead))
                    .collect()
            })
            .unwrap_or_default()
    }
}
