//! edge-gateway chaos harness: starts brokers, the gateway, a recording sink and simulated
//! devices on loopback, injects faults on a seeded schedule, keeps a ledger of every reading
//! acknowledged and every delivery seen, and checks with an oracle that nothing acknowledged
//! was lost.
//!
//! - [`scenario`]: named fault mixes and the seeded schedule (pure, unit-tested).
//! - [`ledger`]: what was produced, acknowledged and delivered, and the oracle's verdict
//!   (pure, unit-tested).
//! - [`sink`]: the recording HTTP analytics sink, with switchable faults.
//! - [`broker`], [`gateway`]: the processes under test and their fault hooks.
//! - [`kafka`]: a Kafka-protocol broker (tansu) and a reader following a topic; [`bus`]: the
//!   Kafka sink of a `--kafka` campaign.
//! - [`store`]: an S3-compatible store (`s3s-fs`) and what arrived in it; [`archive`]: the
//!   S3 sink of a `--s3` campaign and the follower reading it back into the ledger.
//! - [`devices`]: MQTT and HTTP devices numbering their readings with `seq`.
//! - [`commands`]: control traffic (device commands, configuration changes) and its oracle,
//!   in the `control` and `mixed` scenarios.
//! - [`abuse`]: hostile clients (idle sockets, slow bodies, a flooding device, colliding
//!   keys) for the `abuse` scenario, beside the honest devices.
//! - [`outages`]: the gateway's own outage reports against the outages the campaign made
//!   (`field-demo`).
//! - [`run`]: the campaign: start, inject, drain, judge, report; [`watch`]: what it samples
//!   meanwhile.

pub mod abuse;
pub mod archive;
pub mod broker;
pub mod bus;
pub mod commands;
pub mod devices;
pub mod gateway;
pub mod kafka;
pub mod ledger;
pub mod outages;
pub mod process;
pub mod run;
pub mod scenario;
pub mod sink;
pub mod store;
pub mod watch;

/// A reading's stable key, as the gateway derives it from `(device_id, seq)`.
pub fn key(device: &str, seq: u64) -> String {
    format!("{device}/seq/{seq}")
}

/// The value a device sends for `seq`: lets the oracle check payloads arrived intact.
pub fn value(device: &str, seq: u64) -> f64 {
    let h = device
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    ((h ^ seq.wrapping_mul(2_654_435_761)) % 100_000) as f64 / 100.0
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}
