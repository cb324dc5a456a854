//! Ingest: payload parsing, the router actor, the HTTP and MQTT edges.
pub mod auth;
#[cfg(test)]
mod fuzz_tests;
pub mod http;
pub mod mqtt;
pub mod parse;
pub mod protobuf;
pub mod router;
pub mod routes;
