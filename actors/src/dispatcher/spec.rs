//! What the dispatcher knows of each sink beyond its lane: its lease size and whether it
//! waits for whole objects ([`SinkSpec`]), and whether an operator paused it ([`Holds`]).

use crate::addr::Addr;
use crate::sinks::PublisherMsg;
use crate::wal::Fill;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// Sinks an operator paused (`sink.pause`): no lease is cast for them until resumed, so their
/// backlog waits in the WAL and no attempt is used up. Shared with the control plane; it
/// outlives the dispatcher, so a dispatcher restart keeps a pause (a gateway restart does
/// not: a durable pause comes with `config.apply`).
#[derive(Debug, Clone, Default)]
pub struct Holds(Arc<Mutex<BTreeSet<String>>>);

impl Holds {
    /// Pauses (`true`) or resumes `sink`; whether that changed anything.
    pub fn set(&self, sink: &str, held: bool) -> bool {
        let mut h = self.0.lock().expect("holds lock");
        if held {
            h.insert(sink.to_string())
        } else {
            h.remove(sink)
        }
    }

    pub fn is_held(&self, sink: &str) -> bool {
        self.0.lock().expect("holds lock").contains(sink)
    }

    pub fn all(&self) -> Vec<String> {
        self.0.lock().expect("holds lock").iter().cloned().collect()
    }
}

/// What the dispatcher needs to know of one sink.
#[derive(Clone)]
pub struct SinkSpec {
    pub name: String,
    pub publisher: Addr<PublisherMsg>,
    /// Records per lease, at most.
    pub batch_size: usize,
    /// Wait for full batches (a sink that writes objects).
    pub fill: Option<Fill>,
}
