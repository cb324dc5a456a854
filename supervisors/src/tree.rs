//! The gateway's supervision tree, built from the configuration.

use crate::delivery::DeliveryParts;
use crate::reconfigure::{Reconfigurer, SetLogLevel};
use crate::supervisor::{ChildSpec, RestartBudget, Supervisor, SupervisorArgs, SupervisorMsg};
use edge_gateway_actors::addr::{Addr, Directory, Failable};
use edge_gateway_actors::control::{Control, ControlArgs, ControlMsg};
use edge_gateway_actors::dispatcher::{Dispatcher, DispatcherArgs, DispatcherMsg, Holds};
use edge_gateway_actors::ingest::auth::AuthCell;
use edge_gateway_actors::ingest::http::{HttpIngest, HttpIngestArgs, HttpIngestMsg};
use edge_gateway_actors::ingest::mqtt::{
    MqttSession, MqttSessionArgs, MqttSessionMsg, SessionStatus,
};
use edge_gateway_actors::ingest::router::Router;
use edge_gateway_actors::ingest::routes::{RouteTable, Routes};
use edge_gateway_actors::live::Live;
use edge_gateway_actors::metrics::Metrics;
use edge_gateway_actors::reload::Reloader;
use edge_gateway_actors::sinks::health::SinkHealth;
use edge_gateway_actors::wal::{Wal, WalArgs, WalLimits, WalMsg};
use edge_gateway_config::{Config, LoadOptions};
use ractor::{Actor, ActorCell};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Handles the rest of the gateway (admin API, `run`) needs into the tree.
#[derive(Clone)]
pub struct Handles {
    pub directory: Directory,
    pub metrics: Arc<Metrics>,
    pub wal: Addr<WalMsg>,
    pub root: Addr<SupervisorMsg>,
    /// The HTTP ingest address actually bound (port 0 resolved).
    pub http_bound: Arc<Mutex<Option<SocketAddr>>>,
    /// The configuration in force (the sinks it names change with `config.apply`).
    pub live: Live,
    /// Live changes: `config.apply`, restarts, reloads (SIGHUP and the file watch use it).
    pub reconfigure: Arc<Reconfigurer>,
    /// The liveness monitor's last verdict (`/healthz`): when, and what is wedged.
    pub liveness: Arc<Mutex<(u64, Vec<String>)>>,
    /// Each sink's outage, if any (for `/readyz`).
    pub sink_health: SinkHealth,
    pub control: Addr<ControlMsg>,
    /// The MQTT ingest session's state, when MQTT is enabled.
    pub mqtt: Option<Arc<Mutex<SessionStatus>>>,
}

/// A child spec for actor `A`: each (re)start builds fresh arguments and re-binds `addr`.
pub(crate) fn child<A, F>(dir: &Directory, addr: Addr<A::Msg>, make: F) -> ChildSpec
where
    A: Actor,
    A::Msg: Failable,
    F: Fn() -> (A, A::Arguments) + Send + Sync + 'static,
{
    dir.register(Arc::new(addr.clone()));
    let make = Arc::new(make);
    ChildSpec {
        entry: Arc::new(addr.clone()),
        start: Arc::new(move |sup: ActorCell| {
            let (addr, make) = (addr.clone(), make.clone());
            Box::pin(async move {
                let (actor, args) = make();
                let (r, _join) = Actor::spawn_linked(None, actor, args, sup).await?;
                addr.bind(r.clone());
                Ok(r.get_cell())
            })
        }),
    }
}

fn supervisor(
    dir: &Directory,
    metrics: &Arc<Metrics>,
    addr: Addr<SupervisorMsg>,
    budget: RestartBudget,
    children: Vec<ChildSpec>,
) -> ChildSpec {
    supervisor_of(dir, metrics, addr, budget, move || children.clone())
}

/// A supervisor whose children are made when it (re)starts.
fn supervisor_of(
    dir: &Directory,
    metrics: &Arc<Metrics>,
    addr: Addr<SupervisorMsg>,
    budget: RestartBudget,
    children: impl Fn() -> Vec<ChildSpec> + Send + Sync + 'static,
) -> ChildSpec {
    let m = metrics.clone();
    let a = addr.clone();
    child(dir, addr, move || {
        (
            Supervisor,
            SupervisorArgs {
                children: children(),
                budget: budget.clone(),
                addr: a.clone(),
                metrics: m.clone(),
            },
        )
    })
}

/// The mqtt sink carrying the control plane's request door, with `control.requests =
/// "upstream"` (validation made sure there is one).
fn upstream_door(cfg: &Config) -> Option<edge_gateway_config::MqttSinkConfig> {
    if cfg.control.requests != edge_gateway_config::RequestDoor::Upstream {
        return None;
    }
    let mqtt: Vec<&edge_gateway_config::MqttSinkConfig> = cfg
        .sinks
        .iter()
        .filter_map(|s| match s {
            edge_gateway_config::SinkConfig::Mqtt(m) => Some(m),
            _ => None,
        })
        .collect();
    let names: Vec<String> = mqtt.iter().map(|m| m.name.clone()).collect();
    let name = cfg.control.door_sink(&names).ok()?;
    mqtt.into_iter().find(|m| m.name == name).cloned()
}

/// Builds the tree; spawn the returned root with `Actor::spawn(None, Supervisor, args)`.
pub fn build(
    cfg: &Config,
    auth: AuthCell,
    reloader: Reloader,
    metrics: Arc<Metrics>,
    layers: LoadOptions,
    set_log_level: Option<SetLogLevel>,
) -> (SupervisorArgs, Handles) {
    let dir = Directory::default();
    let minute = Duration::from_secs(60);
    let root = Addr::<SupervisorMsg>::new("root", None);
    dir.register(Arc::new(root.clone()));
    let live = Live::new(cfg.clone());
    let (commits_tx, commits_rx) = watch::channel(0u64);

    // storage
    let wal = Addr::<WalMsg>::new("wal", Some("storage"));
    let wal_spec = {
        let (wal_addr, m, cfg, live, tx) = (
            wal.clone(),
            metrics.clone(),
            cfg.clone(),
            live.clone(),
            commits_tx.clone(),
        );
        child(&dir, wal.clone(), move || {
            (
                Wal,
                WalArgs {
                    path: cfg.data_dir.join("wal.redb"),
                    sinks: live.sink_names(),
                    limits: WalLimits::from_config(&cfg.wal, &cfg.delivery),
                    max_group: cfg.wal.max_group,
                    maintenance_interval: Duration::from_millis(cfg.wal.maintenance_interval_ms),
                    metrics: m.clone(),
                    addr: wal_addr.clone(),
                    commits: tx.clone(),
                    reserve_bytes: cfg.wal.reserve_bytes,
                    min_free_bytes: cfg.wal.min_free_bytes,
                },
            )
        })
    };
    let storage_addr = Addr::<SupervisorMsg>::new("storage", Some("root"));
    let storage = supervisor(
        &dir,
        &metrics,
        storage_addr.clone(),
        RestartBudget::new(5, minute),
        vec![wal_spec],
    );

    // delivery: publishers and the dispatcher's view are made from the live configuration
    // at each start (delivery.rs), so config.apply and restarts agree.
    let sink_health = SinkHealth::default();
    let holds = Holds::default();
    let parts = DeliveryParts::new(
        dir.clone(),
        metrics.clone(),
        sink_health.clone(),
        live.clone(),
    );
    let sinks_addr = Addr::<SupervisorMsg>::new("sinks", Some("delivery"));
    let sinks = {
        let p = parts.clone();
        supervisor_of(
            &dir,
            &metrics,
            sinks_addr.clone(),
            RestartBudget::new(20, minute),
            move || p.publishers(),
        )
    };
    let dispatcher = {
        let addr = Addr::<DispatcherMsg>::new("dispatcher", Some("delivery"));
        let (a, w, h, p) = (addr.clone(), wal.clone(), holds.clone(), parts.clone());
        child(&dir, addr, move || {
            (
                Dispatcher,
                DispatcherArgs {
                    sinks: p.sink_specs(),
                    holds: h.clone(),
                    wal: w.clone(),
                    commits: commits_rx.clone(),
                    config: p.live.get().delivery.clone(),
                    addr: a.clone(),
                },
            )
        })
    };
    let delivery_addr = Addr::<SupervisorMsg>::new("delivery", Some("root"));
    let delivery = supervisor(
        &dir,
        &metrics,
        delivery_addr.clone(),
        RestartBudget::new(10, minute),
        vec![sinks, dispatcher],
    );

    // ingest
    // Not an actor: validation and enrichment run on each edge's own task (router.rs).
    let routes = RouteTable::new(Routes::new(&cfg.routes, &live.sink_names()));
    let router = Router {
        gateway_id: cfg.gateway_id.clone(),
        max_batch: cfg.http.max_batch,
        wal: wal.clone(),
        routes: routes.clone(),
        metrics: metrics.clone(),
    };
    let http_bound = Arc::new(Mutex::new(None));
    let mut ingest_children = Vec::new();
    if cfg.http.enabled {
        let addr = Addr::<HttpIngestMsg>::new("http_ingest", Some("ingest"));
        let (a, m, r, hc, b, rl) = (
            addr.clone(),
            metrics.clone(),
            router.clone(),
            cfg.http.clone(),
            http_bound.clone(),
            reloader.clone(),
        );
        ingest_children.push(child(&dir, addr, move || {
            (
                HttpIngest,
                HttpIngestArgs {
                    config: hc.clone(),
                    auth: auth.clone(),
                    router: r.clone(),
                    metrics: m.clone(),
                    addr: a.clone(),
                    bound: b.clone(),
                    reloader: rl.clone(),
                },
            )
        }));
    }
    let mqtt_status = cfg
        .mqtt
        .enabled
        .then(|| SessionStatus::new(&cfg.mqtt.broker));
    if let Some(status) = &mqtt_status {
        let addr = Addr::<MqttSessionMsg>::new("mqtt_session", Some("ingest"));
        let (a, m, r, w, mc, gw, st) = (
            addr.clone(),
            metrics.clone(),
            router.clone(),
            wal.clone(),
            cfg.mqtt.clone(),
            cfg.gateway_id.clone(),
            status.clone(),
        );
        ingest_children.push(child(&dir, addr, move || {
            (
                MqttSession,
                MqttSessionArgs {
                    config: mc.clone(),
                    gateway_id: gw.clone(),
                    router: r.clone(),
                    wal: w.clone(),
                    metrics: m.clone(),
                    addr: a.clone(),
                    status: st.clone(),
                },
            )
        }));
    }
    let ingest_addr = Addr::<SupervisorMsg>::new("ingest", Some("root"));
    let ingest_names: Vec<String> = ingest_children
        .iter()
        .map(|c| c.entry.name().to_string())
        .collect();
    let ingest = supervisor(
        &dir,
        &metrics,
        ingest_addr.clone(),
        RestartBudget::new(10, minute),
        ingest_children,
    );

    // control: commands recorded in their own file; nothing else depends on it.
    let control_addr = Addr::<ControlMsg>::new("control", Some("control_plane"));
    let reconfigure = Arc::new(Reconfigurer {
        parts: parts.clone(),
        wal: wal.clone(),
        sinks: sinks_addr.clone(),
        delivery: delivery_addr.clone(),
        routes,
        set_log_level,
        supervisors: vec![
            (storage_addr, vec!["wal".into()]),
            (delivery_addr, vec!["dispatcher".into(), "sinks".into()]),
            (ingest_addr, ingest_names),
        ],
        lock: tokio::sync::Mutex::new(()),
        reloader: reloader.clone(),
        client_files: Default::default(),
        control: control_addr.clone(),
        upstream_door: upstream_door(cfg),
    });
    reconfigure.note_client_files();
    let control_args = ControlArgs {
        store_path: cfg.data_dir.join("control.redb"),
        control: cfg.control.clone(),
        edge: (cfg.mqtt.enabled && cfg.control.link).then(|| cfg.mqtt.clone()),
        upstream: upstream_door(cfg),
        gateway_id: cfg.gateway_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started: std::time::SystemTime::now(),
        live: live.clone(),
        layers,
        reconfigure: reconfigure.clone(),
        holds,
        wal: wal.clone(),
        directory: dir.clone(),
        metrics: metrics.clone(),
        sink_health: sink_health.clone(),
        mqtt: mqtt_status.clone(),
        addr: control_addr.clone(),
    };
    let control_spec = child(&dir, control_addr.clone(), move || {
        (Control, control_args.clone())
    });
    let control_plane = supervisor(
        &dir,
        &metrics,
        Addr::new("control_plane", Some("root")),
        RestartBudget::new(10, minute),
        vec![control_spec],
    );

    let args = SupervisorArgs {
        children: vec![storage, delivery, ingest, control_plane],
        budget: RestartBudget::new(3, minute),
        addr: root.clone(),
        metrics: metrics.clone(),
    };
    let handles = Handles {
        directory: dir,
        metrics,
        wal,
        root,
        http_bound,
        live,
        reconfigure,
        liveness: Arc::new(Mutex::new((0, Vec::new()))),
        sink_health,
        mqtt: mqtt_status,
        control: control_addr,
    };
    (args, handles)
}
