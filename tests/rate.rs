//! A sink's delivery ceiling (`delivery.max_records_per_sec`, issue 14 part 4): after an
//! outage, the backlog goes to the sink no faster than the ceiling — no batch carries more
//! than a second's worth — and all of it arrives. The drain's duration and rate are printed
//! (a measurement, not a test of speed).

mod common;

use common::sink::{Behaviour, RecordingSink};
use common::*;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// A gateway whose one http sink (`api`) answers 503 until told otherwise, retrying every
/// 50-100 ms, with `delivery` lines added to its `[delivery]`.
async fn in_outage(delivery: &str) -> (tempfile::TempDir, RecordingSink, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::Always(503));
    let cfg = api_sink_config(
        dir.path(),
        &sink.url(),
        &format!("[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 100\n{delivery}"),
    );
    let gw = Gateway::start(&cfg);
    (dir, sink, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_no_faster_than_the_sinks_ceiling() {
    let (dir, sink, gw) = in_outage("max_records_per_sec = { api = 300 }\n").await;
    let keys = ingest_seqs(&gw, &["d-1", "d-2"], 750, 250, 0).await;
    sink.set(Behaviour::Ok);
    let started = Instant::now();
    sink.wait_for_keys(&keys, Duration::from_secs(60))
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    let sizes = sink.batch_sizes();
    println!(
        "1,500 records drained at a 300/s ceiling in {secs:.2} s ({:.0}/s), {} batches, largest {}",
        1500.0 / secs,
        sizes.len(),
        sizes.iter().max().unwrap()
    );
    assert!(
        sizes.iter().all(|&n| n <= 300),
        "a batch over the ceiling's second: {sizes:?}"
    );
    drop(gw);

    // A ceiling for a sink that does not exist is refused at start.
    let bad = write_config(
        dir.path(),
        "[delivery]\nmax_records_per_sec = { nowhere = 10 }\n",
    );
    let out = std::process::Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("delivery.max_records_per_sec.nowhere"));
}

/// Live first (`delivery.live_first`): readings that arrive while a backlog drains at its
/// ceiling overtake it; each lane keeps the device's order of first delivery. The ceiling
/// here (5/s for a 200-record backlog, ~40 s) leaves the backlog far from drained when the
/// live readings arrive, so "they overtook it" does not depend on the machine's speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_readings_overtake_a_backlog_draining_at_its_ceiling() {
    let (_dir, sink, gw) =
        in_outage("max_records_per_sec = { api = 5 }\nlive_first = true\n").await;
    // Taken in during the outage: when it ends they are the backlog.
    let backlog = ingest_seqs(&gw, &["d-1"], 200, 100, 0).await;
    sink.set(Behaviour::Ok);
    let first: HashSet<String> = ["d-1/seq/0".to_string()].into();
    sink.wait_for_keys(&first, Duration::from_secs(30))
        .await
        .unwrap();
    // Live: the same device's next readings, and another device's.
    let c = client();
    let mut live = HashSet::new();
    for (d, seqs) in [("d-1", 1000..1010), ("d-2", 0..10)] {
        let body: Vec<_> = seqs
            .clone()
            .map(|i| serde_json::json!({"seq": i, "v": i}))
            .collect();
        let url = gw.url(&format!("/ingest/{d}"));
        let (s, b) = post_json(&c, &url, &gw.token, &serde_json::json!(body)).await;
        assert_eq!(s, 202, "{b}");
        live.extend(seqs.map(|i| format!("{d}/seq/{i}")));
    }
    sink.wait_for_keys(&live, Duration::from_secs(30))
        .await
        .unwrap();
    let got = sink.keys();
    let drained = backlog.iter().filter(|k| got.contains(*k)).count();
    assert!(
        drained < backlog.len(),
        "the live readings waited for the whole backlog ({drained} of 200 delivered before them)"
    );
    // Per device and lane, first deliveries in acceptance order.
    let order = sink.by_device();
    let mut seen = HashSet::new();
    let first_d1: Vec<u64> = order["d-1"]
        .iter()
        .copied()
        .filter(|s| seen.insert(*s))
        .collect();
    let backlog_lane: Vec<u64> = first_d1.iter().copied().filter(|s| *s < 1000).collect();
    let live_lane: Vec<u64> = first_d1.iter().copied().filter(|s| *s >= 1000).collect();
    assert!(
        backlog_lane.windows(2).all(|w| w[0] < w[1]),
        "{backlog_lane:?}"
    );
    assert_eq!(live_lane, (1000..1010).collect::<Vec<_>>());
    let mut seen = HashSet::new();
    let d2: Vec<u64> = order["d-2"]
        .iter()
        .copied()
        .filter(|s| seen.insert(*s))
        .collect();
    assert_eq!(d2, (0..10).collect::<Vec<_>>());
    println!("live readings delivered with {drained} of 200 backlog records ahead of them");
}
