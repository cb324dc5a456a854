//! Actors of edge-gateway: one module per supervised element.
//!
//! Layout:
//! - [`addr`]: stable, measured addresses (mailbox depth, restarts) and the directory.
//! - [`wal`]: the write-ahead log (redb) — store, record format, actor.
//! - [`ingest`]: payload parsing, auth, the router actor and the HTTP edge.
//! - [`dispatcher`]: leases records per sink and settles publish outcomes.
//! - [`sinks`]: one publisher actor per configured sink (file, http).
//! - [`metrics`]: the Prometheus registry every actor reports into.
#![forbid(unsafe_code)]

pub mod addr;
pub mod certs;
pub mod control;
pub mod devices;
pub mod dispatcher;
pub mod ingest;
pub mod live;
pub mod liveness;
pub mod metrics;
pub mod mqtt_options;
pub mod outages;
pub mod readiness;
pub mod reload;
pub mod serve;
pub mod sinks;
pub mod slo;
pub mod tasks;
pub mod traces;
pub mod wal;
