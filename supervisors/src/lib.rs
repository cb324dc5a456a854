//! Supervisors of edge-gateway.
//!
//! One generic [`Supervisor`] with a one-for-one strategy and a restart budget, and
//! [`tree::build`], which lays out the gateway's tree:
//!
//! ```text
//! root (one-for-one, 3 restarts / 60 s, then the process exits non-zero)
//! ├── storage   (one-for-one, 5 / 60 s)  └── wal
//! ├── delivery  (one-for-one, 10 / 60 s) ├── sinks (one-for-one, 20 / 60 s) ── publisher:<name> …
//! │                                      └── dispatcher
//! ├── ingest    (one-for-one, 10 / 60 s) ├── http_ingest
//! │                                      └── mqtt_session (if enabled)
//! └── control_plane (one-for-one, 10 / 60 s) └── control
//! ```
//! The delivery subtree's children are made from the live configuration each time they start
//! (`delivery.rs`); `config.apply` adds, restarts and removes them (`reconfigure.rs`).
//! Start order is top to bottom (storage before anything that appends), stop order the
//! reverse (ingest stops accepting first, storage closes last).
#![forbid(unsafe_code)]

mod delivery;
pub mod reconfigure;
mod supervisor;
pub mod tls_reload;
pub mod tree;

pub use supervisor::{
    ChildSpec, RestartBudget, StartFn, Supervisor, SupervisorArgs, SupervisorMsg,
};
