//! The configuration in force: what the file, the environment and the flags said at start,
//! with the control plane's applied changes (`config.apply`, issue 12) on top. Actors that a
//! change restarts (the dispatcher, the sink publishers, the WAL after a failure) read it when
//! they start, so a restart never brings an old configuration back.

use edge_gateway_config::Config;
use std::sync::{Arc, RwLock};

#[derive(Clone)]
pub struct Live(Arc<RwLock<Arc<Config>>>);

impl Live {
    pub fn new(cfg: Config) -> Live {
        Live(Arc::new(RwLock::new(Arc::new(cfg))))
    }

    pub fn get(&self) -> Arc<Config> {
        self.0.read().expect("live config lock").clone()
    }

    pub fn set(&self, cfg: Config) {
        *self.0.write().expect("live config lock") = Arc::new(cfg);
    }

    /// The configured sinks' names, in order.
    pub fn sink_names(&self) -> Vec<String> {
        self.get()
            .sinks
            .iter()
            .map(|s| s.name().to_string())
            .collect()
    }
}
