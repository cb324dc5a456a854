//! SIGKILL the gateway at random moments under concurrent load, restart it, repeat; then
//! check that every reading acknowledged with a 2xx was delivered at least once.
//!
//! `EDGE_GATEWAY_CRASH_ITERATIONS` (default 10) sets the number of kills;
//! `EDGE_GATEWAY_CRASH_SEED` replays a schedule.

mod common;

use common::sink::{Behaviour, RecordingSink};
use common::*;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Readings of ~1 KiB, so the WAL file grows enough between kills to be compacted.
static PAD: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| "0123456789abcdef".repeat(60));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_acknowledged() {
    let iterations: usize = std::env::var("EDGE_GATEWAY_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("EDGE_GATEWAY_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test: {iterations} kills, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    let cfg = write_config(
        dir.path(),
        // The sink is down half the time (503: an outage, no attempts used), so a backlog
        // builds and drains; compaction on a small file, at once (no settle), with frequent
        // sweeps, so kills land during compactions too.
        &format!("[wal]\ncompact_min_bytes = 262144\ncompact_settle_ms = 0\nmaintenance_interval_ms = 100\n[delivery]\nbatch_size = 50\nlease_timeout_ms = 2000\nbackoff_max_ms = 200\n[[sinks]]\nname = \"analytics\"\ntype = \"http\"\nurl = \"{}\"\ntimeout_ms = 2000\n", sink.url()),
    );
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut total_requests = 0usize;
    let mut compactions = 0usize;
    for it in 0..iterations {
        sink.set(if it % 4 < 2 {
            Behaviour::Always(503)
        } else {
            Behaviour::Ok
        });
        let gw = Gateway::start(&cfg);
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for c in 0..4 {
            let (url, token, acked, stop) = (
                gw.url(&format!("/ingest/dev-{c}")),
                gw.token.clone(),
                acked.clone(),
                stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let client = client();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("it{it}-c{c}-{n}");
                    let body = if n.is_multiple_of(4) {
                        json!([{"msg_id": format!("{key}-a"), "v": n, "pad": *PAD}, {"msg_id": format!("{key}-b"), "v": n, "pad": *PAD}])
                    } else {
                        json!({"msg_id": key, "v": n, "pad": *PAD})
                    };
                    n += 1;
                    let (status, _) = post_json(&client, &url, &token, &body).await;
                    match status {
                        202 => {
                            let mut a = acked.lock().unwrap();
                            if body.is_array() {
                                a.insert(format!("dev-{c}/msg/{key}-a"));
                                a.insert(format!("dev-{c}/msg/{key}-b"));
                            } else {
                                a.insert(format!("dev-{c}/msg/{key}"));
                            }
                        }
                        0 => break, // connection refused/reset: the process is gone
                        503 => continue,
                        other => panic!("unexpected status {other}"),
                    }
                }
                n
            }));
        }
        // A random moment to kill at: this sleep picks the moment, it waits for nothing.
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..600))).await;
        compactions += gw.log().matches("WAL file compacted").count();
        gw.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            total_requests += t.await.unwrap();
        }
    }
    sink.set(Behaviour::Ok);
    let gw = Gateway::start(&cfg);
    let acked = acked.lock().unwrap().clone();
    eprintln!("crash test: {} requests, {} readings acknowledged, {} deliveries seen before the final drain, {compactions} compactions logged before a kill", total_requests, acked.len(), sink.deliveries());
    assert!(
        acked.len() > iterations,
        "the load produced too little to mean anything"
    );
    let result = sink.wait_for_keys(&acked, Duration::from_secs(120)).await;
    if let Err(missing) = &result {
        panic!(
            "LOST {} acknowledged readings (seed {seed}), e.g. {:?}\n{}",
            missing.len(),
            &missing[..missing.len().min(10)],
            gw.log()
        );
    }
    let received = sink.keys();
    let never_produced: Vec<_> = received.iter().filter(|k| !k.starts_with("dev-")).collect();
    assert!(
        never_produced.is_empty(),
        "delivered but never produced: {never_produced:?}"
    );
    eprintln!(
        "crash test: 0 lost of {} acknowledged; {} deliveries ({} duplicates)",
        acked.len(),
        sink.deliveries(),
        sink.deliveries() - received.len()
    );
    assert!(gw.terminate().success());
}
