//! The control plane's admin-API door (issue 12, first part): commands recorded durably and
//! answered once per `command_id` (across restarts too), `ping`, `config.get`, `sink.pause` /
//! `sink.resume`, refusals naming the field, the audit trail.

mod common;

use common::sink::RecordingSink;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn gateway(dir: &std::path::Path, sink: &RecordingSink) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "[delivery]\nbackoff_initial_ms = 20\nbackoff_max_ms = 100\n\
             [[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"{}\"\n",
            sink.url()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_config_and_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    let gw = Gateway::start(&gateway(dir.path(), &sink));
    let (s, v) = command(&gw, json!({"command_id": "c-1", "kind": "ping"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "done", "{v}");
    assert_eq!(v["result"]["result"], "pong", "{v}");
    assert_eq!(v["result"]["gateway_id"], "edge-gateway", "{v}");
    assert_eq!(v["result"]["backlog"]["api"], 0, "{v}");
    assert!(
        v["result"]["oldest_pending_age_secs"]["api"].is_null(),
        "nothing pending: {v}"
    );
    assert!(
        v["result"]["readiness"]["components"]["control"] == "running",
        "{v}"
    );
    let (s, v) = command(&gw, json!({"command_id": "c-2", "kind": "config.get"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["config"]["sinks"][0]["name"], "api", "{v}");
    // Refused, naming the field; recorded all the same.
    let (s, v) = command(
        &gw,
        json!({"command_id": "c-3", "kind": "sink.pause", "sink": "nope"}),
    )
    .await;
    assert_eq!((s, v["state"].as_str()), (400, Some("failed")), "{v}");
    assert_eq!(v["result"]["field"], "sink", "{v}");
    let (s, v) = command(&gw, json!({"kind": "ping"})).await;
    assert_eq!((s, v["field"].as_str()), (400, Some("command_id")), "{v}");
    let r = client()
        .post(gw.admin_url("/admin/control"))
        .json(&json!({"command_id": "c-4", "kind": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the admin token is required");
    let one = gw.admin_get("/admin/control/c-1").await;
    assert_eq!(one["kind"], "ping", "{one}");
    assert_eq!(one["door"], "admin", "{one}");
    let ids = command_ids(&gw, 10).await;
    assert_eq!(ids, ["c-3", "c-2", "c-1"], "newest first");
}

/// A paused sink's readings wait in the WAL; resumed, they arrive in order. A repeated
/// `command_id` answers its first record and acts no more — after a restart too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_act_once_per_command_id_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    let cfg = gateway(dir.path(), &sink);
    let gw = Gateway::start(&cfg);
    let (s, v) = command(
        &gw,
        json!({"command_id": "p-1", "kind": "sink.pause", "sink": "api"}),
    )
    .await;
    assert_eq!(
        (s, v["result"]["changed"].as_bool()),
        (200, Some(true)),
        "{v}"
    );
    let c = client();
    for i in 0..20 {
        let (s, _) = post_json(&c, &gw.url("/ingest/d1"), &gw.token, &json!({"seq": i})).await;
        assert_eq!(s, 202);
    }
    // Nothing goes out while paused: an absence, so a bounded look rather than an event.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.deliveries(), 0, "paused");
    let wal = gw.admin_get("/admin/wal").await;
    assert_eq!(wal["sinks"][0]["pending"], 20, "{wal}");
    // The backlog's SLO figures: its oldest reading's wait, in the metrics and the ping.
    gw.wait_metric(
        "edge_gateway_oldest_pending_age_seconds{sink=\"api\"}",
        |v| v >= 1.0,
    )
    .await;
    let m = gw.metrics().await;
    for name in [
        "edge_gateway_wal_runway_seconds",
        "edge_gateway_drain_eta_seconds{sink=\"api\"}",
        "edge_gateway_process_resident_memory_bytes",
        "edge_gateway_process_open_fds",
        "edge_gateway_process_threads",
        "edge_gateway_process_cpu_seconds",
    ] {
        assert!(metric(&m, name).is_some(), "{name} in {m}");
    }
    assert_eq!(
        metric(&m, "edge_gateway_drain_eta_seconds{sink=\"api\"}"),
        Some(f64::INFINITY),
        "paused: never"
    );
    let (_, ping) = command(&gw, json!({"command_id": "c-p", "kind": "ping"})).await;
    assert!(
        ping["result"]["oldest_pending_age_secs"]["api"]
            .as_f64()
            .unwrap()
            >= 1.0,
        "{ping}"
    );
    let (s, v) = command(
        &gw,
        json!({"command_id": "r-1", "kind": "sink.resume", "sink": "api"}),
    )
    .await;
    assert_eq!(
        (s, v["result"]["changed"].as_bool()),
        (200, Some(true)),
        "{v}"
    );
    let keys = (0..20).map(|i| format!("d1/seq/{i}")).collect();
    sink.wait_for_keys(&keys, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(sink.by_device()["d1"], (0..20).collect::<Vec<u64>>());
    // The pause again, by its id: answered from the record, not carried out.
    let (s, v) = command(
        &gw,
        json!({"command_id": "p-1", "kind": "sink.pause", "sink": "api"}),
    )
    .await;
    assert_eq!((s, v["duplicate"].as_bool()), (200, Some(true)), "{v}");
    let (_, ping) = command(&gw, json!({"command_id": "c-9", "kind": "ping"})).await;
    assert_eq!(
        ping["result"]["paused_sinks"],
        json!([]),
        "not paused again: {ping}"
    );
    // Across a restart.
    assert!(gw.terminate().success());
    let gw = Gateway::start(&cfg);
    let (s, v) = command(
        &gw,
        json!({"command_id": "p-1", "kind": "sink.pause", "sink": "api"}),
    )
    .await;
    assert_eq!((s, v["duplicate"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(v["result"]["result"], "paused", "the first answer: {v}");
    let (_, ping) = command(&gw, json!({"command_id": "c-10", "kind": "ping"})).await;
    assert_eq!(ping["result"]["paused_sinks"], json!([]), "{ping}");
    // A pause outlives a restart (a sink paused for maintenance stays paused).
    let (s, _) = command(
        &gw,
        json!({"command_id": "p-2", "kind": "sink.pause", "sink": "api"}),
    )
    .await;
    assert_eq!(s, 200);
    assert!(gw.terminate().success());
    let gw = Gateway::start(&cfg);
    let (_, ping) = command(&gw, json!({"command_id": "c-11", "kind": "ping"})).await;
    assert_eq!(ping["result"]["paused_sinks"], json!(["api"]), "{ping}");
    let (s, v) = command(
        &gw,
        json!({"command_id": "r-2", "kind": "sink.resume", "sink": "api"}),
    )
    .await;
    assert_eq!(
        (s, v["result"]["changed"].as_bool()),
        (200, Some(true)),
        "{v}"
    );
}

/// Attacks on the door (docs/security.md row 27): no token, a wrong one, a body over 64 KiB,
/// not JSON, an absurd `command_id` — each refused with a clear answer, nothing recorded,
/// and the gateway goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_door_refuses_what_it_must() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    let gw = Gateway::start(&gateway(dir.path(), &sink));
    let c = client();
    let url = gw.admin_url("/admin/control");
    let ping = json!({"command_id": "x-1", "kind": "ping"});
    let r = c
        .post(&url)
        .bearer_auth("wrong")
        .json(&ping)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let big = json!({"command_id": "x-2", "kind": "ping", "pad": "x".repeat(70 * 1024)});
    let r = c
        .post(&url)
        .bearer_auth(&gw.admin_token)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    // A fresh connection: the server closes the one whose body it refused unread, and a
    // pooled client may not have seen the close yet.
    let r = client()
        .post(&url)
        .bearer_auth(&gw.admin_token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["field"], "(request)", "{v}");
    let long = json!({"command_id": "c".repeat(129), "kind": "ping"});
    let (s, v) = command(&gw, long).await;
    assert_eq!((s, v["field"].as_str()), (400, Some("command_id")), "{v}");
    let all = gw.admin_get("/admin/control").await;
    assert_eq!(all["commands"], json!([]), "nothing recorded: {all}");
    let (s, _) = command(&gw, ping).await;
    assert_eq!(s, 200, "still answering");
}
