//! `config.apply` carried out on the tree (the control plane's [`Reconfigure`]): only what a
//! change touches restarts — a new sink's publisher is added, a changed sink's publisher and
//! the dispatcher's view restart, a removed sink's publisher goes; the WAL, ingest and the
//! MQTT session never restart. Ingest keeps acknowledging throughout: the WAL queues new
//! records for the new sink set in one commit.
//!
//! Order, so that no reading is accepted and delivered nowhere:
//! 1. the configuration in force changes (what restarts from now on reads it);
//! 2. publishers of added sinks start, those of changed sinks restart — if one does not come
//!    up within `START_TIMEOUT`, everything is put back and the change refused;
//! 3. the WAL queues new records for every sink old or new (removals not yet);
//! 4. routing rules change (readings routed before name the old sinks explicitly, so none
//!    of them reaches a new sink);
//! 5. the dispatcher restarts with the new view (its leases are released and re-leased);
//! 6. the WAL takes the removed sinks away: their records dropped or moved (drained ones stay
//!    until delivered);
//! 7. removed sinks' publishers stop.
//!
//! The log level changes before all of it (a bad filter refuses the change untouched).

use crate::delivery::DeliveryParts;
use crate::supervisor::SupervisorMsg;
use edge_gateway_actors::addr::Addr;
use edge_gateway_actors::control::{Disposition, Reconfigure};
use edge_gateway_actors::ingest::routes::{RouteTable, Routes};
use edge_gateway_actors::wal::{Removal, WalMsg};
use edge_gateway_config::{Config, SinkConfig};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long an actor a change (re)starts may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Sets the process's log level (`log.level`), if the binary can.
pub type SetLogLevel = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

pub struct Reconfigurer {
    pub parts: DeliveryParts,
    pub wal: Addr<WalMsg>,
    pub sinks: Addr<SupervisorMsg>,
    pub delivery: Addr<SupervisorMsg>,
    pub routes: RouteTable,
    pub set_log_level: Option<SetLogLevel>,
    /// Supervisors by the children they hold, for `actor.restart` (storage, delivery, ingest).
    pub supervisors: Vec<(Addr<SupervisorMsg>, Vec<String>)>,
    /// One change at a time.
    pub lock: tokio::sync::Mutex<()>,
    /// Listeners' certificates and token files, rebuilt in place (`tls_reload.rs`).
    pub reloader: edge_gateway_actors::reload::Reloader,
    /// Client actors' files as last seen, to tell a change.
    pub client_files: std::sync::Mutex<std::collections::HashMap<String, [u8; 32]>>,
    pub control: Addr<edge_gateway_actors::control::ControlMsg>,
    /// The mqtt sink carrying the upstream request door, if any.
    pub upstream_door: Option<edge_gateway_config::MqttSinkConfig>,
}

async fn sup(
    s: &Addr<SupervisorMsg>,
    msg: impl FnOnce(ractor::RpcReplyPort<Result<(), String>>) -> SupervisorMsg,
) -> Result<(), String> {
    s.call(msg, Some(START_TIMEOUT))
        .await
        .map_err(|e| format!("{}: {e}", s.name()))?
}

fn publisher(name: &str) -> String {
    format!("publisher:{name}")
}

impl Reconfigurer {
    /// Stops a sink's publisher for good; it leaves the tree's listing too.
    async fn remove_publisher(&self, sink: &str) {
        let name = publisher(sink);
        if let Err(e) = sup(&self.sinks, |reply| SupervisorMsg::Remove {
            name: name.clone(),
            reply,
        })
        .await
        {
            tracing::warn!(publisher = %name, error = %e, "removing a publisher");
        }
        self.parts.dir.unregister(&name);
    }

    async fn restart_dispatcher(&self) -> Result<(), String> {
        sup(&self.delivery, |reply| SupervisorMsg::Restart {
            name: "dispatcher".into(),
            spec: None,
            reply,
        })
        .await
    }

    async fn set_wal_sinks(
        &self,
        sinks: Vec<String>,
        removed: Vec<(String, Removal)>,
    ) -> Result<(u64, u64), String> {
        let r = self
            .wal
            .call(
                |reply| WalMsg::SetSinks {
                    sinks,
                    removed,
                    reply,
                },
                Some(Duration::from_secs(60)),
            )
            .await
            .map_err(|e| format!("wal: {e}"))?;
        Ok((r.dropped, r.moved))
    }

    /// Puts `old` back after step 2 failed: publishers started are removed, restarted ones
    /// restart again (reading `old`).
    async fn roll_back(&self, old: Arc<Config>, started: &[String], restarted: &[String]) {
        self.parts.live.set((*old).clone());
        for n in started {
            self.remove_publisher(n).await;
        }
        for n in restarted {
            let _ = sup(&self.sinks, |reply| SupervisorMsg::Restart {
                name: publisher(n),
                spec: None,
                reply,
            })
            .await;
        }
    }

    async fn apply_now(
        &self,
        new: Config,
        removed: Vec<(String, Disposition)>,
    ) -> Result<Value, String> {
        let _one = self.lock.lock().await;
        let old = self.parts.live.get();
        let by_name = |c: &Config| -> BTreeMap<String, SinkConfig> {
            c.sinks
                .iter()
                .map(|s| (s.name().to_string(), s.clone()))
                .collect()
        };
        let (was, now) = (by_name(&old), by_name(&new));
        let added: Vec<String> = now
            .keys()
            .filter(|n| !was.contains_key(*n))
            .cloned()
            .collect();
        let changed: Vec<String> = now
            .iter()
            .filter(|(n, s)| was.get(*n).is_some_and(|w| w != *s))
            .map(|(n, _)| n.clone())
            .collect();
        let sinks_changed = !added.is_empty() || !changed.is_empty() || !removed.is_empty();
        let view_changed = sinks_changed || old.delivery != new.delivery;

        // The log level first: the one step that can fail on its own input.
        let level_changed = old.log.level != new.log.level;
        if level_changed {
            match &self.set_log_level {
                Some(set) => set(&new.log.level).map_err(|e| format!("log.level: {e}"))?,
                None => return Err("log.level: this process cannot change its log level".into()),
            }
        }
        // 1-2.
        self.parts.live.set(new.clone());
        for (n, d) in &removed {
            if *d == Disposition::Drain {
                if let Some(c) = was.get(n) {
                    self.parts
                        .draining
                        .lock()
                        .expect("draining")
                        .insert(n.clone(), c.clone());
                }
            }
        }
        let (mut started, mut restarted) = (Vec::new(), Vec::new());
        let mut failure = None;
        for n in &added {
            match sup(&self.sinks, |reply| SupervisorMsg::Add {
                spec: self.parts.publisher(n),
                reply,
            })
            .await
            {
                Ok(()) => started.push(n.clone()),
                Err(e) => {
                    failure = Some(format!("sink {n:?} did not start: {e}"));
                    break;
                }
            }
        }
        if failure.is_none() {
            for n in &changed {
                restarted.push(n.clone());
                if let Err(e) = sup(&self.sinks, |reply| SupervisorMsg::Restart {
                    name: publisher(n),
                    spec: None,
                    reply,
                })
                .await
                {
                    failure = Some(format!("sink {n:?} did not restart: {e}"));
                    break;
                }
            }
        }
        if let Some(why) = failure {
            for (n, _) in &removed {
                self.parts.draining.lock().expect("draining").remove(n);
            }
            if level_changed {
                if let Some(set) = &self.set_log_level {
                    let _ = set(&old.log.level);
                }
            }
            self.roll_back(old, &started, &restarted).await;
            return Err(format!("{why}; the change was rolled back"));
        }

        // 3-7.
        let new_names: Vec<String> = new.sinks.iter().map(|s| s.name().to_string()).collect();
        let (mut dropped, mut moved) = (0, 0);
        if sinks_changed {
            let mut all = new_names.clone();
            all.extend(was.keys().filter(|n| !now.contains_key(*n)).cloned());
            self.set_wal_sinks(all, Vec::new()).await?;
        }
        self.routes.set(Routes::new(&new.routes, &new_names));
        if view_changed {
            self.restart_dispatcher().await?;
        }
        if sinks_changed {
            let gone: Vec<(String, Removal)> = removed
                .iter()
                .filter_map(|(n, d)| match d {
                    Disposition::Drain => None,
                    Disposition::Drop => Some((n.clone(), Removal::Drop)),
                    Disposition::MoveTo(t) => Some((n.clone(), Removal::MoveTo(t.clone()))),
                })
                .collect();
            (dropped, moved) = self.set_wal_sinks(new_names, gone).await?;
        }
        for (n, d) in &removed {
            if *d != Disposition::Drain {
                self.remove_publisher(n).await;
            }
        }
        tracing::warn!(added = ?added, changed = ?changed, removed = ?removed, dropped, moved, "configuration change applied");
        Ok(json!({
            "added": added,
            "restarted": changed.iter().map(|n| publisher(n)).chain(view_changed.then(|| "dispatcher".to_string())).collect::<Vec<_>>(),
            "removed": removed.iter().filter(|(_, d)| *d != Disposition::Drain).map(|(n, _)| n).collect::<Vec<_>>(),
            "draining": removed.iter().filter(|(_, d)| *d == Disposition::Drain).map(|(n, _)| n).collect::<Vec<_>>(),
            "dropped": dropped,
            "moved": moved,
        }))
    }

    pub(crate) async fn restart_now(&self, actor: &str) -> Result<(), String> {
        if actor == "control" {
            return Err("the control plane cannot restart itself from a command; use the chaos hook or restart the gateway".into());
        }
        let s = if actor.starts_with("publisher:") {
            &self.sinks
        } else {
            match self
                .supervisors
                .iter()
                .find(|(_, children)| children.iter().any(|c| c == actor))
            {
                Some((s, _)) => s,
                None => {
                    return Err(format!(
                        "no supervised actor named {actor:?} (see /admin/tree)"
                    ))
                }
            }
        };
        sup(s, |reply| SupervisorMsg::Restart {
            name: actor.to_string(),
            spec: None,
            reply,
        })
        .await
    }

    async fn resume_drains_now(&self, sinks: Vec<SinkConfig>) {
        let _one = self.lock.lock().await;
        let configured = self.parts.live.sink_names();
        let mut resumed = Vec::new();
        for s in sinks {
            let name = s.name().to_string();
            // Re-added to the configuration meanwhile, or already draining: nothing to do.
            if configured.contains(&name) || self.parts.draining().contains_key(&name) {
                continue;
            }
            self.parts
                .draining
                .lock()
                .expect("draining")
                .insert(name.clone(), s);
            match sup(&self.sinks, |reply| SupervisorMsg::Add {
                spec: self.parts.publisher(&name),
                reply,
            })
            .await
            {
                Ok(()) => resumed.push(name),
                Err(e) => {
                    tracing::error!(sink = %name, error = %e, "a drain could not resume: its backlog waits in the WAL");
                    self.parts.draining.lock().expect("draining").remove(&name);
                }
            }
        }
        if !resumed.is_empty() {
            let _ = self.restart_dispatcher().await;
            tracing::warn!(sinks = ?resumed, "drains resumed after a restart");
        }
    }

    async fn finish_drains_now(&self) -> Vec<String> {
        let draining = self.parts.draining();
        if draining.is_empty() {
            return Vec::new();
        }
        let Ok(stats) = self
            .wal
            .call(WalMsg::Stats, Some(Duration::from_secs(5)))
            .await
        else {
            return Vec::new();
        };
        let _one = self.lock.lock().await;
        let done: Vec<String> = draining
            .keys()
            .filter(|n| {
                stats
                    .sinks
                    .iter()
                    .find(|s| &s.sink == *n)
                    .is_none_or(|s| s.pending == 0)
            })
            .cloned()
            .collect();
        if done.is_empty() {
            return done;
        }
        for n in &done {
            self.parts.draining.lock().expect("draining").remove(n);
        }
        // The WAL already queues nothing new for them; their dead letters stay to be seen.
        let _ = self.restart_dispatcher().await;
        for n in &done {
            self.remove_publisher(n).await;
        }
        done
    }
}

impl Reconfigure for Reconfigurer {
    fn apply(
        &self,
        new: Config,
        removed: Vec<(String, Disposition)>,
    ) -> BoxFuture<'_, Result<Value, String>> {
        Box::pin(self.apply_now(new, removed))
    }

    fn restart<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.restart_now(actor))
    }

    fn finish_drains(&self) -> BoxFuture<'_, Vec<String>> {
        Box::pin(self.finish_drains_now())
    }

    fn resume_drains(&self, sinks: Vec<SinkConfig>) -> BoxFuture<'_, ()> {
        Box::pin(self.resume_drains_now(sinks))
    }

    fn reload_tls(&self, force: bool) -> BoxFuture<'_, Result<Value, Value>> {
        Box::pin(self.reload_tls_now(force))
    }
}
