//! A sink's delivery ceiling (`delivery.max_records_per_sec`, issue 14 part 4): after an
//! outage, the backlog goes to the sink no faster than the ceiling — no batch carries more
//! than a second's worth — and all of it arrives. The drain's duration and rate are printed
//! (a measurement, not a test of speed).

mod common;

use common::sink::{Behaviour, RecordingSink};
use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_no_faster_than_the_sinks_ceiling() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::Always(503));
    let cfg = write_config(
        dir.path(),
        &format!(
            "[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 100\n\
             max_records_per_sec = {{ api = 300 }}\n\
             [[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"{}\"\n",
            sink.url()
        ),
    );
    let gw = Gateway::start(&cfg);
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
