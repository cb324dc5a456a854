//! Actors of edge-gateway: one module per supervised element.
#![forbid(unsafe_code)]

pub mod wal;
