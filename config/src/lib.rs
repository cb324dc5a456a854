//! Typed configuration for edge-gateway.
//!
//! Layers, lowest to highest: embedded defaults < TOML file < environment
//! (`EDGE_GATEWAY__SECTION__KEY=value`) < command-line overrides (`section.key=value`).
//! Every layer is merged into one TOML tree first, then deserialised once, so a value's
//! type is checked the same way wherever it came from.
//!
//! Unknown keys are errors. They are collected with `serde_ignored` (rather than
//! `deny_unknown_fields`, which stops at the first) so that every unknown key and every
//! semantic error is reported in one go by [`ConfigError::Invalid`].

mod applied;
mod control;
mod layers;
mod model;
mod mqtt;
mod route;
mod sink;
mod traces;
mod validate;

pub use applied::*;
pub use control::*;
pub use layers::{apply_override, env_overrides, load, load_with, LoadOptions};
pub use model::*;
pub use mqtt::*;
pub use route::*;
pub use sink::*;
pub use traces::*;
pub use validate::{redact_url, url_userinfo, ConfigError, ConfigProblem};

#[cfg(test)]
mod tests;
