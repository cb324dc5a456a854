//! Ingest: payload parsing, the router actor, and the HTTP edge.
pub mod auth;
pub mod http;
pub mod parse;
pub mod router;
