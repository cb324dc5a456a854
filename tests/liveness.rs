//! `/healthz` is a real liveness probe (issue 13): 200 while the gateway makes progress, 500
//! naming what is wedged — here a WAL whose commit hangs (as on a hung disk) past
//! `admin.liveness_stall_secs` — and 200 again once it moves. (The other causes, an actor
//! that stays down and a runtime that stops running the monitor, are unit-tested in
//! `actors/src/liveness.rs`: neither can be made to happen to a healthy process from outside.)

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

async fn healthz(gw: &Gateway) -> (u16, Value) {
    let r = client().get(gw.admin_url("/healthz")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_wal_makes_healthz_fail_and_recovering_makes_it_pass() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&write_config(
        dir.path(),
        "[admin]\nchaos = true\nliveness_stall_secs = 2\n",
    ));
    assert_eq!(healthz(&gw).await.0, 200);
    // The next commit hangs 6 s; a reading arrives and waits for it.
    let r = client()
        .post(gw.admin_url("/admin/actors/wal/stall?ms=6000"))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let url = gw.url("/ingest/d-1");
    let token = gw.token.clone();
    let post =
        tokio::spawn(async move { post_json(&client(), &url, &token, &json!({"seq": 1})).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let wedged = loop {
        let (s, v) = healthz(&gw).await;
        if s == 500 {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never 500: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        wedged["problems"][0].as_str().unwrap().contains("WAL"),
        "{wedged}"
    );
    // The commit finishes: the reading is acknowledged, and the gateway is alive again.
    let (s, _) = post.await.unwrap();
    assert!(s == 202 || s == 503, "{s}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while healthz(&gw).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "still 500");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Without the chaos switch, the hook is refused.
    let dir2 = tempfile::tempdir().unwrap();
    let plain = Gateway::start(&write_config(dir2.path(), ""));
    let r = client()
        .post(plain.admin_url("/admin/actors/wal/stall?ms=1000"))
        .bearer_auth(&plain.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}
