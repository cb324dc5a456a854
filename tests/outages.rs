//! Outage reports (issue 13): each period a sink was unreachable or paused, recorded by the
//! gateway itself — start, end, reason, backlog at start and peak, readings held, drain time —
//! listed at `GET /admin/outages` and by `edge-gateway report outages`, surviving a SIGKILL in
//! the middle of the outage.

mod common;

use common::sink::{Behaviour, RecordingSink};
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

async fn outages(gw: &Gateway, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = gw.admin_get("/admin/outages").await;
        let list = v["outages"].as_array().cloned().unwrap_or_default();
        if ok(&list) {
            return list;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_reported_with_its_backlog_and_drain_across_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    let cfg = write_config(
        dir.path(),
        &format!(
            "[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\n\
             [[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"{}\"\n",
            sink.url()
        ),
    );
    let gw = Gateway::start(&cfg);
    let first = ingest_seqs(&gw, &["d-1"], 5, 5, 0).await;
    sink.wait_for_keys(&first, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(outages(&gw, |_| true).await.is_empty());

    sink.set(Behaviour::Always(503));
    ingest_seqs(&gw, &["d-2"], 20, 10, 0).await;
    let open = outages(&gw, |l| !l.is_empty()).await;
    assert_eq!(open[0]["sink"], "api");
    assert_eq!(open[0]["kind"], "outage");
    assert!(
        open[0]["reason"].as_str().unwrap().contains("503"),
        "{open:?}"
    );
    assert!(open[0]["ended_at_ms"].is_null());

    // SIGKILL in the middle: the outage is still the one open outage after the restart.
    gw.kill9();
    let gw = Gateway::start(&cfg);
    ingest_seqs(&gw, &["d-3"], 10, 10, 0).await;
    // An absence (no second outage opened), so a bounded look: a few runs of the tracker.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still = outages(&gw, |l| !l.is_empty()).await;
    assert_eq!(still.len(), 1, "{still:?}");

    sink.set(Behaviour::Ok);
    let done = outages(&gw, |l| l[0]["drained_at_ms"].is_number()).await;
    let r = &done[0];
    assert!(r["backlog_peak"].as_u64().unwrap() >= 30, "{r}");
    assert!(r["readings_held"].as_u64().unwrap() >= 30, "{r}");
    assert!(r["duration_secs"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["drain_secs"].as_f64().unwrap() >= 0.0, "{r}");

    // A pause is reported too.
    let (s, _) = command(
        &gw,
        json!({"command_id": "p-1", "kind": "sink.pause", "sink": "api"}),
    )
    .await;
    assert_eq!(s, 200);
    let both = outages(&gw, |l| l.len() == 2).await;
    assert_eq!(both[1]["kind"], "paused", "{both:?}");
    assert!(gw.terminate().success());

    // Read with the gateway stopped.
    let out = std::process::Command::new(BIN)
        .args(["report", "outages", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("SINK") && table.contains("paused") && table.contains("HTTP 503"),
        "{table}"
    );
    let out = run_ok(
        std::process::Command::new(BIN)
            .args(["report", "outages", "--json", "--since", "1h", "--config"])
            .arg(&cfg),
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    assert!(v[0]["resent"].is_number(), "{v}");

    // The chart, drawn from the gateway's own samples, renders (librsvg, as a viewer would).
    let svg = dir.path().join("outages.svg");
    run_ok(
        std::process::Command::new(BIN)
            .args(["report", "outages", "--svg"])
            .arg(&svg)
            .arg("--config")
            .arg(&cfg),
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("sink api — outage from"), "{text}");
    assert!(text.contains("drained"), "{text}");
    assert!(
        text.matches("<polyline").count() >= 2,
        "the drained outage has its ingest and delivery rates: {text}"
    );
    let png = dir.path().join("outages.png");
    let rendered = std::process::Command::new("rsvg-convert")
        .arg("-o")
        .arg(&png)
        .arg(&svg)
        .output()
        .expect("rsvg-convert (Debian's librsvg2-bin; .ci/test installs it)");
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let head = std::fs::read(&png).unwrap();
    assert_eq!(&head[1..4], b"PNG");
}
