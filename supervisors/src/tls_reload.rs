//! `tls.reload` (also SIGHUP, and a poll of the files every `WATCH_EVERY`): certificates, keys,
//! CA and token files read again without a restart of the gateway.
//!
//! - Listeners (HTTP ingest, admin) and token files: rebuilt in place by the [`Reloader`]; new
//!   connections and requests use them, open connections keep theirs.
//! - Clients (the MQTT session, each sink's publisher, the control link): their connections
//!   are made from the files when the actor starts, so an actor whose files changed (by
//!   content) is checked with the new files first and then restarted (a planned restart: the MQTT session's
//!   persistent session and the WAL's leases make it lose nothing).
//!
//! A new file that does not load is refused: the old configuration stays in force, the answer
//! names the file's owner and the error, and it is logged once.

use crate::reconfigure::Reconfigurer;
use edge_gateway_actors::control::ControlMsg;
use edge_gateway_actors::reload::fingerprint;
use edge_gateway_actors::sinks::{check_files, files_of};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::time::Duration;

/// How often the files are looked at for changes.
pub const WATCH_EVERY: Duration = Duration::from_secs(10);

impl Reconfigurer {
    /// Each client-side actor's files: (actor, supervisor, files, check).
    fn clients(&self) -> Vec<(String, Vec<PathBuf>, Result<(), String>)> {
        let cfg = self.parts.live.get();
        let mut out = Vec::new();
        if cfg.mqtt.enabled {
            let files = files_of(&cfg.mqtt);
            let tls = cfg.mqtt.tls.clone().unwrap_or_default();
            let check = edge_gateway_actors::mqtt_options::tls_connector(
                tls.ca_file.as_deref(),
                tls.client_cert_file.as_deref(),
                tls.client_key_file.as_deref(),
            )
            .map(drop)
            .map_err(|e| e.to_string());
            out.push(("mqtt_session".to_string(), files, check));
        }
        if cfg.control.link || cfg.control.requests == edge_gateway_config::RequestDoor::Upstream {
            // The links are made from these at each connection: a reconnection takes them.
            let mut files = files_of(&cfg.control);
            files.extend(files_of(&cfg.mqtt));
            if let Some(door) = &self.upstream_door {
                files.extend(files_of(door));
            }
            out.push(("control link".to_string(), files, Ok(())));
        }
        for s in &cfg.sinks {
            let files = files_of(s);
            if files.is_empty() {
                continue;
            }
            let check = check_files(s, &cfg.gateway_id);
            out.push((format!("publisher:{}", s.name()), files, check));
        }
        out
    }

    pub(crate) async fn reload_tls_now(&self, force: bool) -> Result<Value, Value> {
        let _one = self.lock.lock().await;
        let reloader = self.reloader.clone();
        let server = tokio::task::spawn_blocking(move || reloader.reload(force))
            .await
            .unwrap_or_default();
        let mut report = Map::new();
        let mut refused = Map::new();
        for (name, r) in server {
            match r {
                Ok(what) => {
                    report.insert(name, what.into());
                }
                Err(why) => {
                    refused.insert(name, why.into());
                }
            }
        }
        let mut restarted = Vec::new();
        // Reading the files and building the clients' TLS is blocking I/O: off the workers.
        let clients: Vec<_> = tokio::task::block_in_place(|| {
            self.clients()
                .into_iter()
                .map(|(actor, files, check)| (actor, fingerprint(&files), check))
                .collect()
        });
        for (actor, now, check) in clients {
            let seen = self
                .client_files
                .lock()
                .expect("client files")
                .insert(actor.clone(), now);
            // Clients restart only when their files changed, forced or not: a restart
            // costs a reconnection.
            if seen.is_none_or(|s| s == now) {
                continue;
            }
            if let Err(why) = check {
                tracing::error!(actor = %actor, error = %why, "reload refused: the files in use stay");
                refused.insert(actor, why.into());
                continue;
            }
            if actor == "control link" {
                let _ = self.control.cast(ControlMsg::Relink);
                restarted.push(actor);
                continue;
            }
            match self.restart_now(&actor).await {
                Ok(()) => restarted.push(actor),
                Err(why) => {
                    refused.insert(actor, why.into());
                }
            }
        }
        let v = json!({"result": "reloaded", "listeners_and_tokens": report,
                       "restarted": restarted, "refused": refused});
        if refused.is_empty() {
            Ok(v)
        } else {
            Err(
                json!({"error": "refused", "message": "a new file did not load; the files in use stay for what is listed under refused", "report": v}),
            )
        }
    }

    /// Exports every configured certificate's expiry (`edge_gateway_tls_certificate_expiry_…`).
    pub fn observe_certificates(&self) {
        let cfg = self.parts.live.get();
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        // Every file named; those that hold no certificate (keys, passwords) are skipped.
        let mut add = |owner: &str, v: Vec<PathBuf>| {
            files.extend(v.into_iter().map(|f| (owner.to_string(), f)));
        };
        add(
            "http_ingest",
            cfg.http.tls.as_ref().map(files_of).unwrap_or_default(),
        );
        add(
            "admin",
            cfg.admin.tls.as_ref().map(files_of).unwrap_or_default(),
        );
        if cfg.mqtt.enabled {
            add("mqtt_session", files_of(&cfg.mqtt));
        }
        add("control", files_of(&cfg.control));
        for s in &cfg.sinks {
            add(&format!("publisher:{}", s.name()), files_of(s));
        }
        self.parts
            .metrics
            .certs
            .observe(files.iter().map(|(o, f)| (o.clone(), f.as_path())));
    }

    /// Records the client files as they are at start (a later change is then seen).
    pub fn note_client_files(&self) {
        for (actor, files, _) in self.clients() {
            self.client_files
                .lock()
                .expect("client files")
                .insert(actor, fingerprint(&files));
        }
    }
}
