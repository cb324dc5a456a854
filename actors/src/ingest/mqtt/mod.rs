//! `MqttSession` actor: device telemetry from the edge broker into the WAL, each message
//! acknowledged (PUBACK) only after the commit that holds it.
//!
//! Mailbox:
//! - `Message` <- its event-loop task (`poll.rs`): one PUBLISH with its un-acked permit.
//!   The actor routes it (topic -> device id, then the router: the same validation
//!   and enrichment as HTTP, on this actor's task; refused messages go to the WAL's rejected table with their
//!   payload and reason) and hands the pending commit to its ack task (`pipeline.rs`),
//!   which acknowledges in arrival order.
//! - `Fail`    <- admin API chaos hook.
//!
//! Session: persistent (`clean_session = false`, stable client id), QoS 1 subscriptions
//! renewed on every connect, so what the gateway has not acknowledged is redelivered after
//! a crash, a restart or a reconnect.
//!
//! Failure: the IngestSupervisor restarts it. Dropping its state ends both tasks and the
//! connection (ractor skips `post_stop` on failure, so this is done in `Drop`); every message not yet acknowledged stays with the broker and comes back to
//! the next instance (a duplicate if its commit had already happened — never a loss). A
//! broker outage never stops the actor: the event-loop task reconnects with backoff while
//! HTTP ingest carries on.

mod held;
mod pipeline;
mod poll;
pub mod topics;

use crate::addr::{Addr, Failable};
use crate::ingest::router::Router;
use crate::metrics::Metrics;
use crate::mqtt_options::{options, ClientSettings};
use crate::tasks::Tasks;
use crate::wal::WalMsg;
use edge_gateway_config::MqttConfig;
use pipeline::{Ctx, Item};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rumqttc::{AsyncClient, Publish};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use topics::Subscriptions;

pub struct MqttSession;

/// The session as readiness and the admin API see it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionStatus {
    /// `connecting`, `subscribing`, `connected`, `subscription_refused`, `disconnected`.
    pub state: &'static str,
    pub broker: String,
    pub last_error: Option<String>,
    pub since_ms: u64,
}

impl SessionStatus {
    pub fn new(broker: &str) -> Arc<Mutex<SessionStatus>> {
        Arc::new(Mutex::new(SessionStatus {
            state: "connecting",
            broker: broker.to_string(),
            last_error: None,
            since_ms: pipeline::now_ms(),
        }))
    }
}

pub enum MqttSessionMsg {
    Message(Box<(Publish, poll::Unacked, u64)>),
    Fail(String),
}

impl Failable for MqttSessionMsg {
    fn fail(reason: String) -> Self {
        MqttSessionMsg::Fail(reason)
    }
}

pub struct MqttSessionArgs {
    pub config: MqttConfig,
    pub gateway_id: String,
    pub router: Router,
    pub wal: Addr<WalMsg>,
    pub metrics: Arc<Metrics>,
    pub addr: Addr<MqttSessionMsg>,
    /// Outlives restarts: readiness reads it.
    pub status: Arc<Mutex<SessionStatus>>,
}

pub struct MqttSessionState {
    ctx: Ctx,
    items: mpsc::UnboundedSender<Item>,
    addr: Addr<MqttSessionMsg>,
    /// The poll and ack tasks: they end with the state, so a failed session's connection is
    /// gone before its successor connects with the same client id.
    tasks: Tasks,
    client: AsyncClient,
}

/// The client id the session uses unless configured: stable, so the broker keeps the session.
pub fn client_id(cfg: &MqttConfig, gateway_id: &str) -> String {
    cfg.client_id
        .clone()
        .unwrap_or_else(|| format!("edge-gateway-{gateway_id}"))
}

impl Actor for MqttSession {
    type Msg = MqttSessionMsg;
    type State = MqttSessionState;
    type Arguments = MqttSessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: MqttSessionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let cfg = &args.config;
        let subs = Subscriptions::new(&cfg.subscriptions)?;
        let tls = cfg.tls.clone().unwrap_or_default();
        let mut opts = options(&ClientSettings {
            broker: &cfg.broker,
            client_id: client_id(cfg, &args.gateway_id),
            keep_alive: Duration::from_secs(cfg.keep_alive_secs),
            clean_session: false,
            ca_file: tls.ca_file.as_deref(),
            client_cert_file: tls.client_cert_file.as_deref(),
            client_key_file: tls.client_key_file.as_deref(),
            username: cfg.username.as_deref(),
            password_file: cfg.password_file.as_deref(),
            inflight: 100,
            max_incoming_packet: crate::mqtt_options::ingest_packet_limit(cfg.max_payload_bytes),
        })?;
        opts.set_manual_acks(true)
            .set_request_channel_capacity(cfg.max_unacked + 64);
        let (client, mut events) = AsyncClient::new(opts, cfg.max_unacked + 64);
        events.set_network_options(crate::mqtt_options::network_options());
        let ctx = Ctx {
            router: args.router,
            wal_generation: Arc::new(args.wal.generation().into()),
            wal: args.wal,
            subs: Arc::new(subs),
            max_payload: cfg.max_payload_bytes,
            metrics: args.metrics.clone(),
            holding: Arc::default(),
            held_devices: Arc::default(),
            max_held_per_device: cfg.max_held_per_device,
        };
        let (items_tx, items_rx) = mpsc::unbounded_channel();
        // Un-acked gauge restarts from zero with the session: what the old one held is
        // back with the broker.
        args.metrics.mqtt_unacked.set(0);
        {
            let mut s = args.status.lock().expect("status lock");
            s.state = "connecting";
        }
        let poller = poll::Poller {
            events,
            client: client.clone(),
            filters: ctx.subs.filters().map(str::to_string).collect(),
            myself,
            addr: args.addr.clone(),
            permits: Arc::new(Semaphore::new(cfg.max_unacked)),
            bytes: Arc::new(Semaphore::new(cfg.max_unacked_bytes)),
            status: args.status.clone(),
            metrics: args.metrics.clone(),
            reconnect_initial: Duration::from_millis(cfg.reconnect_initial_ms),
            reconnect_max: Duration::from_millis(cfg.reconnect_max_ms),
            max_unacked: cfg.max_unacked,
            bytes_budget: cfg.max_unacked_bytes,
            tls: cfg.broker.starts_with("mqtts://"),
            client_cert: tls.client_cert_file.is_some(),
        };
        let mut tasks = Tasks::default();
        tasks.push(tokio::spawn(poller.run()));
        tasks.push(tokio::spawn(pipeline::ack_in_order(
            ctx.clone(),
            items_rx,
            client.clone(),
        )));
        tracing::info!(broker = %cfg.broker, filters = ?cfg.subscriptions.iter().map(|s| &s.filter).collect::<Vec<_>>(), "mqtt session starting");
        Ok(MqttSessionState {
            ctx,
            items: items_tx,
            addr: args.addr,
            tasks,
            client,
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = state.client.try_disconnect();
        state.tasks.abort_all();
        state.ctx.metrics.mqtt_session_up.set(0);
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.addr.received();
        match msg {
            MqttSessionMsg::Message(m) => {
                let (publish, permit, received_ms) = *m;
                let device = state.ctx.subs.route(&publish.topic).ok().map(|(d, _)| d);
                let pending = if state.ctx.wal_restarted()
                    || state.ctx.holding.load(std::sync::atomic::Ordering::SeqCst)
                    || state.ctx.is_held(device.as_deref())
                {
                    pipeline::Pending::Held
                } else {
                    pipeline::submit(&state.ctx, &publish, received_ms).await
                };
                let item = Item {
                    publish,
                    device,
                    permit,
                    received_ms,
                    pending,
                };
                state.items.send(item).map_err(|_| "mqtt ack task ended")?;
                Ok(())
            }
            MqttSessionMsg::Fail(reason) => Err(format!("failure injected: {reason}").into()),
        }
    }
}
