//! Time that jumps (issue 9, RELIABILITY.md field condition): a board boots without a
//! battery-backed clock, takes readings with a 2020 date, then NTP steps the clock six years
//! forward — and later, a bad time source steps it back. Before, every reading taken before
//! the step was dead-lettered as `expired` minutes after it was acknowledged (0 of 1,000
//! delivered). Now ages follow the WAL's monotonic clock, carried across restarts, and the
//! readings with an impossible date are delivered marked `clock_synced: false`.
//!
//! libfaketime (Debian's `faketime`) is preloaded with a timestamp file it re-reads on every
//! call, so the test moves the gateway's wall clock while it runs; the monotonic clock is left
//! alone, as on a real board. Skipped, saying so, where libfaketime is not installed.

mod common;

use common::sink::{Behaviour, RecordingSink};
use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn set_clock(file: &Path, spec: &str) {
    std::fs::write(file, spec).unwrap();
}

async fn ingest(gw: &Gateway, device: &str, seqs: std::ops::Range<u64>) -> HashSet<String> {
    let c = client();
    let mut acked = HashSet::new();
    for chunk in seqs.collect::<Vec<_>>().chunks(100) {
        let body: Vec<Value> = chunk.iter().map(|s| json!({"seq": s, "t": 20})).collect();
        let r = c
            .post(gw.url(&format!("/ingest/{device}")))
            .bearer_auth(&gw.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        acked.extend(chunk.iter().map(|s| format!("{device}/seq/{s}")));
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_survive_clock_jumps_both_ways_and_a_restart() {
    if !Path::new(LIBFAKETIME).exists() {
        eprintln!("SKIPPED: {LIBFAKETIME} not installed (Debian package faketime)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("faketime");
    let clock_s = clock.display().to_string();
    let env = [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", clock_s.as_str()),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::Always(503));
    // Readings older than an hour expire: a six-year step must not make them so.
    let cfg = write_config(
        dir.path(),
        &format!(
            "[wal]\nmax_age_secs = 3600\nmaintenance_interval_ms = 100\n\
             [delivery]\nmax_attempts = 1000\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\n\
             [[sinks]]\nname = \"analytics\"\ntype = \"http\"\nurl = \"{}\"\n\
             [[sinks]]\nname = \"file\"\ntype = \"file\"\npath = \"sink/records.jsonl\"\n",
            sink.url()
        ),
    );
    // Booted without a set clock: it reads 2020.
    set_clock(&clock, "-2190d");
    let gw = Gateway::start_with_env(&cfg, &env);
    let mut acked = ingest(&gw, "board", 0..300).await;
    // NTP steps it six years forward.
    set_clock(&clock, "+0");
    gw.wait_metric("edge_gateway_clock_jumps_total", |v| v >= 1.0)
        .await;
    acked.extend(ingest(&gw, "board", 300..600).await);
    // A bad time source steps it back again.
    set_clock(&clock, "-2190d");
    gw.wait_metric("edge_gateway_clock_jumps_total", |v| v >= 2.0)
        .await;
    acked.extend(ingest(&gw, "board", 600..900).await);
    // Maintenance ran many times meanwhile: nothing expired.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let wal = gw.admin_get("/admin/wal").await;
    assert_eq!(wal["records"], 900, "{wal}");
    assert!(gw.log().contains("the system clock jumped"));
    gw.terminate();

    // Restarted with the right clock and the sink back: every reading delivered.
    set_clock(&clock, "+0");
    let gw = Gateway::start_with_env(&cfg, &env);
    sink.set(Behaviour::Ok);
    sink.wait_for_keys(&acked, Duration::from_secs(60))
        .await
        .expect("every acknowledged reading delivered");
    let dead = gw.admin_get("/admin/dead-letters/analytics").await;
    assert_eq!(dead["dead_letters"], json!([]), "nothing expired");
    // The readings taken with the impossible date say so.
    let flagged = gw_records_flagged(&gw).await;
    assert_eq!(
        flagged, 600,
        "0..300 and 600..900 were taken with a 2020 clock"
    );
}

/// Readings the file sink wrote with `clock_synced: false`.
async fn gw_records_flagged(gw: &Gateway) -> usize {
    let path = gw.data_dir.join("sink/records.jsonl");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let keys: HashSet<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["clock_synced"] == json!(false))
            .filter_map(|v| v["idempotency_key"].as_str().map(str::to_string))
            .collect();
        let all = file_sink_keys(&path);
        if all.len() >= 900 || tokio::time::Instant::now() > deadline {
            return keys.len();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
