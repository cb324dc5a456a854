//! `Control` actor: the control plane — operators' commands to the gateway and to devices,
//! recorded durably, each acting once (issue 12).
//!
//! Mailbox:
//! - `Command` <- admin API `POST /admin/control` (reply: the command's record, and whether it
//!   was a duplicate)
//! - `Get`     <- admin API `GET /admin/control/{command_id}`
//! - `List`    <- admin API `GET /admin/control?limit=N` (the audit trail, newest first)
//! - `Link`    <- its control link's event-loop task (`link.rs`): connected, a publish's packet
//!   id, a PUBACK, a device's acknowledgement or an MQTT request (`mqtt_door.rs`), the loss
//! - `Tick`    <- its timer, every second: device commands expire (`device.rs`), the link
//!   reconnects after its backoff
//! - `Relink`  <- the tree's reloader (`tls.reload`, SIGHUP, files changed): the link
//!   reconnects, reading its certificate files again
//! - `Fail`    <- admin API chaos hook
//!
//! A command is recorded (`accepted`, or `queued` for a device command; fsync'd in
//! `control.redb`) before it acts and recorded again with its result: a `command_id` seen
//! before answers its first record and acts no more, across restarts. Store I/O runs on the
//! blocking pool. Commands are handled one at a time: the mailbox is the queue, and the door
//! waits for its answer.
//!
//! Failure: the ControlSupervisor restarts it alone; ingest and delivery never depend on it.
//! A command in flight when it fails gets no answer (its door reports the failure); its record
//! stays `accepted` and a retry with the same `command_id` answers that record. The device
//! command queue is read back from the store by the next instance; messages the link had not
//! acknowledged come back from the broker.

mod apply;
pub mod command;
mod device;
mod kinds;
pub mod link;
mod links;
pub mod metrics;
mod mqtt_door;
pub mod outbox;
pub mod signed;
pub mod store;

use crate::addr::{Addr, Directory, Failable};
use crate::dispatcher::Holds;
use crate::ingest::mqtt::SessionStatus;
use crate::metrics::Metrics;
use crate::sinks::health::SinkHealth;
use crate::wal::WalMsg;
use command::{Command, Invalid, Limits};
use edge_gateway_config::{ControlConfig, MqttConfig};
use link::LinkNote;
use links::{Role, Slot};
use opentelemetry::KeyValue;
use outbox::Outbox;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use store::{CommandRecord, ControlStore, StoreError};

pub use apply::{Disposition, Reconfigure};

pub struct Control;

/// How a command reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Admin,
    Mqtt,
}

impl Door {
    fn name(self) -> &'static str {
        match self {
            Door::Admin => "admin",
            Door::Mqtt => "mqtt",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("control store task: {0}")]
    Task(String),
}

/// A command's answer: its record and whether this request was a repeat of an earlier one.
#[derive(Debug, Clone)]
pub struct Answer {
    pub record: CommandRecord,
    pub duplicate: bool,
}

pub enum ControlMsg {
    Command {
        door: Door,
        request: Value,
        reply: RpcReplyPort<Result<Answer, ControlError>>,
    },
    Get {
        command_id: String,
        reply: RpcReplyPort<Result<Option<CommandRecord>, ControlError>>,
    },
    List {
        limit: usize,
        reply: RpcReplyPort<Result<Vec<CommandRecord>, ControlError>>,
    },
    /// From the control link of this generation.
    Link(u64, LinkNote),
    Tick,
    /// Its link's files changed (`tls.reload`): reconnect with them now.
    Relink,
    Fail(String),
}

impl Failable for ControlMsg {
    fn fail(reason: String) -> Self {
        ControlMsg::Fail(reason)
    }
}

/// What the commands read and act on.
#[derive(Clone)]
pub struct ControlArgs {
    pub store_path: PathBuf,
    pub control: ControlConfig,
    /// The edge broker (`[mqtt]`), when the control link is on: device commands go there.
    pub edge: Option<MqttConfig>,
    /// The mqtt sink whose broker carries the request door (`control.requests = "upstream"`).
    pub upstream: Option<edge_gateway_config::MqttSinkConfig>,
    pub gateway_id: String,
    pub version: String,
    pub started: SystemTime,
    /// The configuration in force (`config.get`, redacted; the sinks commands may name).
    pub live: crate::live::Live,
    /// Where the configuration came from, to check a change against (`config.apply`).
    pub layers: edge_gateway_config::LoadOptions,
    pub reconfigure: Arc<dyn Reconfigure>,
    pub holds: Holds,
    pub wal: Addr<WalMsg>,
    pub directory: Directory,
    pub metrics: Arc<Metrics>,
    pub sink_health: SinkHealth,
    pub mqtt: Option<Arc<Mutex<SessionStatus>>>,
    pub addr: Addr<ControlMsg>,
}

pub struct ControlState {
    store: Arc<ControlStore>,
    args: ControlArgs,
    limits: Limits,
    /// `control.hmac_secret_file`'s bytes, read at start.
    secret: Option<Vec<u8>>,
    outbox: Outbox,
    /// Each queued device command's topic and payload.
    bodies: HashMap<String, (String, Vec<u8>)>,
    /// Publishes of each queued device command by this instance, not yet written down.
    publishes: HashMap<String, u64>,
    /// The control plane's MQTT connections (`links.rs`).
    slots: Vec<Slot>,
    /// Sinks in an outage or draining after one (`crate::outages`), fed at each tick.
    outages: crate::outages::Tracker,
    /// Which looks are kept as samples for the outage charts.
    outage_series: crate::outages::Series,
    generation: u64,
    myself: ActorRef<ControlMsg>,
    _tasks: crate::tasks::Tasks,
}

/// Runs blocking work (files, fsync) on the blocking pool.
async fn blocking_io<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())
}

/// Runs a store operation on the blocking pool.
async fn blocking<T: Send + 'static>(
    store: &Arc<ControlStore>,
    f: impl FnOnce(&ControlStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ControlError> {
    let s = store.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| ControlError::Task(e.to_string()))?
        .map_err(ControlError::from)
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl ControlState {
    /// Counts a command taken, by its door and the state it was answered in.
    fn count(&self, door: Door, state: &str) {
        self.args
            .metrics
            .control
            .commands
            .with_label_values(&[door.name(), state])
            .inc();
    }

    async fn command(&mut self, door: Door, request: Value) -> Result<Answer, ControlError> {
        let id = command::command_id(&request)?.to_string();
        let key = id.clone();
        if let Some(record) = blocking(&self.store, move |s| s.get(&key)).await? {
            return Ok(Answer {
                record,
                duplicate: true,
            });
        }
        self.limits.sinks = self.args.live.sink_names();
        let parsed = command::parse(&request, &self.limits);
        let mut record = CommandRecord {
            command_id: id,
            kind: request["kind"].as_str().unwrap_or("").to_string(),
            door: door.name().into(),
            received_at: now_rfc3339(),
            state: "accepted".into(),
            request,
            result: Value::Null,
            finished_at: None,
        };
        // Refusals are recorded too: the audit trail shows what was asked and why not.
        let outcome = match parsed {
            Ok(Command::Device(d)) => {
                let record = self.queue_device(record, d).await?;
                self.count(door, &record.state);
                return Ok(Answer {
                    record,
                    duplicate: false,
                });
            }
            Err(e) => Err(json!({"error": "invalid", "field": e.field, "message": e.message})),
            Ok(c) => {
                let r = record.clone();
                blocking(&self.store, move |s| s.put(&r)).await?;
                self.act(c, &record.request).await
            }
        };
        record.finished_at = Some(now_rfc3339());
        (record.state, record.result) = match outcome {
            Ok(v) => ("done".into(), v),
            Err(v) => ("failed".into(), v),
        };
        let r = record.clone();
        blocking(&self.store, move |s| s.put(&r)).await?;
        self.count(door, &record.state);
        tracing::info!(command_id = %record.command_id, kind = %record.kind, door = %record.door, state = %record.state, "control command");
        Ok(Answer {
            record,
            duplicate: false,
        })
    }
}

impl ControlState {
    async fn on_link(&mut self, generation: u64, note: LinkNote) -> Result<(), ControlError> {
        let Some(i) = self.slot_of(generation) else {
            // A dropped link's note: an inbound message of it goes unacknowledged and the
            // broker redelivers it on the current connection.
            return Ok(());
        };
        let role = self.slots[i].role;
        match note {
            LinkNote::Connected => self.link_connected(i),
            LinkNote::Sent(pkid) => {
                if let Some(l) = self.slots[i].link.as_mut() {
                    l.sent(pkid);
                }
            }
            LinkNote::Acked(pkid) => {
                let what = self.slots[i].link.as_mut().and_then(|l| l.acked(pkid));
                if let Some(what) = what {
                    self.on_puback(what).await?;
                }
            }
            LinkNote::Inbound(p, _permit) => {
                self.on_inbound(role, &p).await?;
                // Acknowledged once handled, on the connection it came by, if still that one.
                if let Some(i) = self.slot_of(generation) {
                    if let Some(l) = &self.slots[i].link {
                        let _ = l.client.try_ack(&p);
                    }
                }
            }
            LinkNote::Refused(why) => {
                tracing::error!(link = role.name(), reason = %why, "control link")
            }
            LinkNote::Lost(why) => self.link_lost(i, &why),
        }
        Ok(())
    }
}

impl Actor for Control {
    type Msg = ControlMsg;
    type State = ControlState;
    type Arguments = ControlArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ControlArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (path, max) = (args.store_path.clone(), args.control.max_commands);
        let store = tokio::task::spawn_blocking(move || ControlStore::open(&path, max)).await??;
        let secret = match &args.control.hmac_secret_file {
            Some(f) => Some(
                std::fs::read(f)
                    .map(|s| s.trim_ascii().to_vec())
                    .map_err(|e| format!("control.hmac_secret_file {}: {e}", f.display()))?,
            ),
            None => None,
        };
        let limits = Limits {
            sinks: args.live.sink_names(),
            device_commands: args.edge.is_some(),
            default_ttl_secs: args.control.default_ttl_secs,
            max_ttl_secs: args.control.max_ttl_secs,
            max_command_bytes: args.control.max_command_bytes,
        };
        if let Some(m) = &args.edge {
            let shared = args.control.client_cert_file.is_none()
                && args.control.username.is_none()
                && (m.username.is_some()
                    || m.tls.as_ref().is_some_and(|t| t.client_cert_file.is_some()));
            if shared {
                tracing::warn!("the control link uses the ingest session's identity: on a broker that makes identities client ids (use_username_as_clientid, as config/mosquitto/edge.conf does) the two take each other's session over; give the link its own (control.client_cert_file / control.username)");
            }
        }
        let mut tasks = crate::tasks::Tasks::default();
        tasks.every(
            Duration::from_secs(1),
            myself.clone(),
            args.addr.clone(),
            || ControlMsg::Tick,
        );
        let mut state = ControlState {
            store: Arc::new(store),
            args,
            limits,
            secret,
            outbox: Outbox::default(),
            bodies: HashMap::new(),
            publishes: HashMap::new(),
            slots: Vec::new(),
            outages: crate::outages::Tracker::default(),
            outage_series: crate::outages::Series::default(),
            generation: 0,
            myself,
            _tasks: tasks,
        };
        if state.args.edge.is_some() {
            state.slots.push(Slot::new(Role::Edge));
        }
        if state.args.upstream.is_some() {
            state.slots.push(Slot::new(Role::Upstream));
        }
        state.load_queue().await?;
        let dd = state.args.live.get().data_dir.clone();
        let recorded = blocking_io(move || crate::outages::log::reports(&dd, 0))
            .await
            .map_err(ControlError::Task)?
            .unwrap_or_default();
        state.outages = crate::outages::Tracker::resume(&recorded);
        // Drains recorded before a restart carry on.
        let draining = blocking(&state.store, |s| s.draining()).await?;
        if !draining.is_empty() {
            state.args.reconfigure.resume_drains(draining).await;
        }
        // Pauses recorded by earlier runs hold again (a removed sink's is harmless).
        for sink in blocking(&state.store, |s| s.paused()).await? {
            if state.args.holds.set(&sink, true) {
                tracing::warn!(sink = %sink, "sink paused by an earlier sink.pause; resume it with sink.resume");
            }
        }
        state.tick().await?;
        Ok(state)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.args.addr.received();
        match msg {
            ControlMsg::Command {
                door,
                request,
                reply,
            } => {
                let kind = request["kind"].as_str().unwrap_or("unknown").to_string();
                let mut span = crate::traces::root_span(
                    format!("control {kind}"),
                    vec![
                        KeyValue::new("control.kind", kind),
                        KeyValue::new("control.door", door.name()),
                        KeyValue::new(
                            "control.command_id",
                            request["command_id"].as_str().unwrap_or("").to_string(),
                        ),
                    ],
                );
                let answer = state.command(door, request).await;
                match &answer {
                    Ok(a) => span.set(KeyValue::new("control.state", a.record.state.clone())),
                    Err(e) => span.fail(&e.to_string()),
                }
                let _ = reply.send(answer);
            }
            ControlMsg::Get { command_id, reply } => {
                let _ = reply.send(blocking(&state.store, move |s| s.get(&command_id)).await);
            }
            ControlMsg::List { limit, reply } => {
                let _ = reply.send(blocking(&state.store, move |s| s.list(limit)).await);
            }
            ControlMsg::Link(generation, note) => state.on_link(generation, note).await?,
            ControlMsg::Tick => state.tick().await?,
            ControlMsg::Relink => {
                // What had no PUBACK goes again on the new connections.
                state.relink();
                state.tick().await?;
            }
            ControlMsg::Fail(reason) => return Err(format!("failure injected: {reason}").into()),
        }
        Ok(())
    }
}
