//! The delivery subtree's parts, built from the configuration in force ([`Live`]) every time
//! they start: a publisher per sink, and the dispatcher's view of the sinks. A restart — after
//! a failure or for `config.apply` — therefore starts what the configuration says now.

use crate::supervisor::ChildSpec;
use crate::tree::child;
use edge_gateway_actors::addr::{Addr, Directory};
use edge_gateway_actors::dispatcher::SinkSpec;
use edge_gateway_actors::live::Live;
use edge_gateway_actors::metrics::Metrics;
use edge_gateway_actors::sinks::health::SinkHealth;
use edge_gateway_actors::sinks::{Publisher, PublisherArgs, PublisherMsg};
use edge_gateway_actors::wal::Fill;
use edge_gateway_config::{Config, SinkConfig};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct DeliveryParts {
    pub dir: Directory,
    pub metrics: Arc<Metrics>,
    pub health: SinkHealth,
    pub live: Live,
    /// One address per sink name, kept across restarts and re-adds (senders hold it).
    addrs: Arc<Mutex<HashMap<String, Addr<PublisherMsg>>>>,
    /// Removed sinks still delivering their backlog (`config.apply` with `drain`), with the
    /// configuration they had: they keep a publisher and a lane, and take no new records.
    pub draining: Arc<Mutex<BTreeMap<String, SinkConfig>>>,
}

impl DeliveryParts {
    pub fn new(dir: Directory, metrics: Arc<Metrics>, health: SinkHealth, live: Live) -> Self {
        DeliveryParts {
            dir,
            metrics,
            health,
            live,
            addrs: Arc::default(),
            draining: Arc::default(),
        }
    }

    fn addr(&self, sink: &str) -> Addr<PublisherMsg> {
        self.addrs
            .lock()
            .expect("publisher addresses")
            .entry(sink.to_string())
            .or_insert_with(|| Addr::new(format!("publisher:{sink}"), Some("sinks")))
            .clone()
    }

    /// The dispatcher's view of one sink.
    fn sink_spec(&self, cfg: &Config, s: &SinkConfig) -> SinkSpec {
        // Object stores get whole objects: leases wait to fill (bounded by age).
        let (batch_size, fill) = match s {
            SinkConfig::S3(c) => (
                c.max_batch_records,
                Some(Fill {
                    max_bytes: c.max_batch_bytes,
                    max_age_ms: c.max_batch_age_ms,
                }),
            ),
            _ => (cfg.delivery.batch_size, None),
        };
        SinkSpec {
            name: s.name().to_string(),
            publisher: self.addr(s.name()),
            batch_size,
            fill,
        }
    }

    /// Every configured sink and every draining one, as the dispatcher sees them now.
    pub fn sink_specs(&self) -> Vec<SinkSpec> {
        let cfg = self.live.get();
        let draining: Vec<SinkConfig> = self.draining().into_values().collect();
        cfg.sinks
            .iter()
            .chain(&draining)
            .map(|s| self.sink_spec(&cfg, s))
            .collect()
    }

    pub fn draining(&self) -> BTreeMap<String, SinkConfig> {
        self.draining.lock().expect("draining sinks").clone()
    }

    /// The publisher of sink `name`: each start reads the sink's configuration in force.
    pub fn publisher(&self, name: &str) -> ChildSpec {
        let (addr, parts, name) = (self.addr(name), self.clone(), name.to_string());
        let a = addr.clone();
        let find = |cfg: &Config, name: &str| cfg.sinks.iter().find(|s| s.name() == name).cloned();
        // While a change removes the sink, its publisher may restart once more: it keeps
        // the configuration it was made with.
        let made_with = find(&self.live.get(), &name);
        child(&self.dir, addr, move || {
            let cfg = parts.live.get();
            let sink = find(&cfg, &name)
                .or_else(|| parts.draining().get(&name).cloned())
                .or_else(|| made_with.clone())
                .expect("a publisher is made for a configured sink");
            (
                Publisher,
                PublisherArgs {
                    sink,
                    gateway_id: cfg.gateway_id.clone(),
                    data_dir: cfg.data_dir.clone(),
                    batch_size: cfg.delivery.batch_size,
                    metrics: parts.metrics.clone(),
                    health: parts.health.clone(),
                    addr: a.clone(),
                },
            )
        })
    }

    /// Every configured or draining sink's publisher.
    pub fn publishers(&self) -> Vec<ChildSpec> {
        let mut names = self.live.sink_names();
        names.extend(self.draining().into_keys());
        names.iter().map(|n| self.publisher(n)).collect()
    }
}
