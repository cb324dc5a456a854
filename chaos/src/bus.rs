//! The Kafka sink of a `--kafka` campaign: its broker (tansu), its `[[sinks]]` table, and the
//! follower that reads the topic back into the ledger. tansu runs on memory storage here, so
//! its outages are not among the faults: a restarted broker forgets what it acknowledged, a
//! loss of the broker's, not the gateway's (tests/kafka.rs covers a broker that is down).

use crate::kafka::{follow, KafkaBroker, Seen};
use crate::ledger::Ledger;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SINK: &str = "bus";
pub const TOPIC: &str = "chaos-telemetry";

pub fn sink_config(broker: &KafkaBroker) -> String {
    format!(
        "[[sinks]]\nname = \"{SINK}\"\ntype = \"kafka\"\nbrokers = \"{}\"\ntopic = \"{TOPIC}\"\n\
         timeout_ms = 5000\n",
        broker.brokers()
    )
}

/// Follows the topic; every 250 ms moves what was read into the ledger (each message a
/// delivery: a re-send is a duplicate).
pub fn follow_into(
    broker: &KafkaBroker,
    ledger: Arc<Mutex<Ledger>>,
) -> tokio::task::JoinHandle<()> {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    follow(broker.brokers(), TOPIC.into(), seen.clone());
    tokio::spawn(async move {
        loop {
            let batch = std::mem::take(&mut *seen.lock().expect("seen"));
            if !batch.is_empty() {
                let mut l = ledger.lock().expect("ledger");
                for s in batch {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&s.payload) {
                        crate::sink::deliver_record(&mut l, SINK, &v);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}
