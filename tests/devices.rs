//! Per-device health (issue 13): `GET /admin/devices` shows, for each device, when it was last
//! seen, what it sent and what became of it, the readings missing from its `seq`, its clock's
//! skew, stuck values and its last refusal — kept across a restart — and the metrics carry
//! only bounded aggregates, never a device id.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_devices_health_is_shown_and_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[admin.plausible]\ntemp = [-40, 85]\n");
    let gw = Gateway::start(&cfg);
    let c = client();
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // seq 0, 1, 2, then 6 (3-5 missing), its clock 2 minutes behind; the same value 12 times.
    for seq in [0u64, 1, 2, 6, 7, 8, 9, 10, 11, 12, 13, 14] {
        let body = json!({"seq": seq, "ts": now_s - 120, "temp": 21.5});
        let (s, v) = post_json(&c, &gw.url("/ingest/press-1"), &gw.token, &body).await;
        assert_eq!(s, 202, "{v}");
    }
    let (s, _) = post_json(
        &c,
        &gw.url("/ingest/press-1"),
        &gw.token,
        &json!({"seq": 14, "ts": now_s - 120, "temp": 21.5}),
    )
    .await;
    assert_eq!(s, 202, "a duplicate");
    let (s, _) = post_json(&c, &gw.url("/ingest/press-1"), &gw.token, &json!([])).await;
    assert_eq!(s, 400, "refused");
    ingest_seqs(&gw, &["other"], 3, 3, 0).await;
    // A reading out of its plausible range: accepted, and counted.
    let (s, _) = post_json(
        &c,
        &gw.url("/ingest/oven-2"),
        &gw.token,
        &json!({"seq": 1, "temp": 412.0}),
    )
    .await;
    assert_eq!(s, 202);

    // Behind the admin token, like every /admin route.
    for path in ["/admin/devices", "/admin/outages"] {
        let r = client().get(gw.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let v = gw.admin_get("/admin/devices").await;
    let d: &Value = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == "press-1")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(d["accepted"], 12, "{d}");
    assert_eq!(d["duplicates"], 1, "{d}");
    assert_eq!(d["refused"], 1, "{d}");
    assert_eq!(d["seq_gaps"], 3, "{d}");
    assert_eq!(d["missing"], json!([[3, 5]]), "{d}");
    assert!(d["clock_skew_ms"].as_i64().unwrap() >= 119_000, "{d}");
    assert_eq!(d["stuck"], true, "{d}");
    assert_eq!(d["implausible"], 0, "{d}");
    assert_eq!(d["source"], "http");
    assert!(d["last_refusal"][0].is_string(), "{d}");

    let m = gw.metrics().await;
    assert_eq!(metric(&m, "edge_gateway_devices_tracked"), Some(3.0), "{m}");
    assert_eq!(
        metric(
            &m,
            "edge_gateway_readings_implausible_total{field=\"temp\"}"
        ),
        Some(1.0),
        "{m}"
    );
    let oven = gw.admin_get("/admin/devices?limit=1").await;
    assert_eq!(
        oven["devices"][0]["last_implausible"],
        json!(["temp", 412.0]),
        "{oven}"
    );
    assert_eq!(metric(&m, "edge_gateway_devices_stuck"), Some(1.0));
    assert_eq!(metric(&m, "edge_gateway_devices_clock_skewed"), Some(1.0));
    assert_eq!(metric(&m, "edge_gateway_devices_seq_gaps"), Some(3.0));
    assert!(!m.contains("press-1"), "no device id in the metrics");

    // Kept across a (graceful) restart.
    assert!(gw.terminate().success());
    let gw = Gateway::start(&cfg);
    let v = gw.admin_get("/admin/devices?limit=1").await;
    assert_eq!(v["devices"].as_array().unwrap().len(), 1, "{v}");
    let v = gw.admin_get("/admin/devices").await;
    let ids: Vec<&str> = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"press-1") && ids.contains(&"other") && ids.contains(&"oven-2"),
        "{v}"
    );
    let silent = gw.admin_get("/admin/devices?silent_for=1h").await;
    assert_eq!(silent["devices"], json!([]), "none silent for an hour");
}
