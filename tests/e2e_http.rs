//! End to end through the real binary: concurrent clients POST readings (single and batch,
//! JSON and CBOR); a recording HTTP server plays the analytics API. Every 2xx-acked reading
//! arrives, carrying its idempotency key, at both the HTTP sink and the file sink.

mod common;

use common::sink::RecordingSink;
use common::*;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_reading_reaches_every_sink_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    let cfg = write_config(
        dir.path(),
        &format!("[[sinks]]\nname = \"analytics\"\ntype = \"http\"\nurl = \"{}\"\n[[sinks]]\nname = \"file\"\ntype = \"file\"\npath = \"sink/records.jsonl\"\n", sink.url()),
    );
    let gw = Gateway::start(&cfg);
    let c = client();
    let mut tasks = Vec::new();
    for client_no in 0..8u64 {
        let (c, url, token) = (
            c.clone(),
            gw.url(&format!("/ingest/dev-{client_no}")),
            gw.token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..40u64 {
                let resp = if i % 5 == 0 {
                    // A batch of three readings with device seq numbers.
                    let body = json!([{"seq": i * 10, "t": 1}, {"seq": i * 10 + 1, "t": 2}, {"seq": i * 10 + 2, "t": 3}]);
                    c.post(&url).bearer_auth(&token).json(&body).send().await.unwrap()
                } else if i % 5 == 1 {
                    let mut buf = Vec::new();
                    ciborium::into_writer(&json!({"seq": i * 10, "temp": 20.5}), &mut buf).unwrap();
                    c.post(&url).bearer_auth(&token).header("content-type", "application/cbor").body(buf).send().await.unwrap()
                } else {
                    c.post(&url).bearer_auth(&token).json(&json!({"seq": i * 10, "temp": i})).send().await.unwrap()
                };
                assert_eq!(resp.status().as_u16(), 202);
                let body: serde_json::Value = resp.json().await.unwrap();
                let n = body["records"].as_array().unwrap().len() as u64;
                for k in 0..n {
                    acked.push(format!("dev-{client_no}/seq/{}", i * 10 + k));
                }
            }
            acked
        }));
    }
    let mut acked = HashSet::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), 8 * (32 + 8 * 3));
    sink.wait_for_keys(&acked, Duration::from_secs(60))
        .await
        .unwrap_or_else(|m| {
            panic!(
                "{} acked readings never reached the HTTP sink, e.g. {:?}",
                m.len(),
                &m[..m.len().min(5)]
            )
        });
    // The file sink is fsync'd per batch; wait for its acked count to match via the WAL stats.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stats = gw.admin_get("/admin/wal").await;
        let pending: u64 = stats["sinks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["pending"].as_u64().unwrap())
            .sum();
        if pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sinks never drained: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let in_file = file_sink_keys(&gw.data_dir.join("sink/records.jsonl"));
    let missing: Vec<_> = acked.difference(&in_file).collect();
    assert!(
        missing.is_empty(),
        "missing from the file sink: {:?}",
        &missing[..missing.len().min(5)]
    );
    // Per-device order of first deliveries follows the device's seq.
    for (dev, seqs) in sink.by_device() {
        let mut seen = HashSet::new();
        let firsts: Vec<u64> = seqs.into_iter().filter(|s| seen.insert(*s)).collect();
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "{dev}: out of order {firsts:?}"
        );
    }
    // Fully settled records are deleted.
    let stats = gw.admin_get("/admin/wal").await;
    assert_eq!(stats["records"], 0, "{stats}");
    let status = gw.terminate();
    assert!(status.success(), "clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_name_the_essentials() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&write_config(dir.path(), ""));
    let (s, _) = post_json(
        &client(),
        &gw.url("/ingest/d1"),
        &gw.token,
        &json!({"v": 1}),
    )
    .await;
    assert_eq!(s, 202);
    let text = gw.metrics().await;
    for name in [
        "edge_gateway_ingest_records_total{result=\"accepted\",source=\"http\"} 1",
        "edge_gateway_wal_commit_seconds_count",
        "edge_gateway_wal_commit_records_bucket",
        "edge_gateway_wal_file_bytes",
        "edge_gateway_actor_mailbox_depth{actor=\"wal\"}",
        "edge_gateway_actor_restarts_total{actor=\"publisher:file\"} 0",
        "edge_gateway_backpressure_active 0",
        "edge_gateway_build_info",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    match promtool {
        Ok(mut p) => {
            use std::io::Write;
            p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            let out = p.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) => {
            assert!(
                std::env::var("CI").is_err(),
                "promtool must be installed in CI (apt-get install prometheus): {e}"
            );
            eprintln!("promtool not installed; skipping the promtool check");
        }
    }
    let v: serde_json::Value = client()
        .get(gw.admin_url("/version"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["components"]["wal"], "running");
}
