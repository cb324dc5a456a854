//! Actor failure: failing the http sink's publisher through the admin API while load runs.
//! Ingest keeps answering 202 throughout, the restart count rises, nothing is lost. Then the
//! same for the WAL itself: requests during its restart may get 503, never a false ack.

mod common;

use common::sink::RecordingSink;
use common::*;
use serde_json::json;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<HashSet<String>>>,
    statuses: Arc<Mutex<Vec<u16>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn start_load(gw: &Gateway, clients: usize) -> Load {
    let load = Load {
        stop: Arc::default(),
        acked: Arc::default(),
        statuses: Arc::default(),
        tasks: vec![],
    };
    let mut tasks = vec![];
    for c in 0..clients {
        let (url, token, stop, acked, statuses) = (
            gw.url(&format!("/ingest/dev-{c}")),
            gw.token.clone(),
            load.stop.clone(),
            load.acked.clone(),
            load.statuses.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (s, _) = post_json(&client, &url, &token, &json!({"seq": n, "v": n})).await;
                statuses.lock().unwrap().push(s);
                if s == 202 {
                    acked.lock().unwrap().insert(format!("dev-{c}/seq/{n}"));
                    n += 1;
                }
            }
        }));
    }
    Load { tasks, ..load }
}

impl Load {
    async fn finish(self) -> (HashSet<String>, Vec<u16>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let a = self.acked.lock().unwrap().clone();
        let s = self.statuses.lock().unwrap().clone();
        (a, s)
    }
}

async fn fail(gw: &Gateway, actor: &str) -> u16 {
    client()
        .post(gw.admin_url(&format!("/admin/actors/{actor}/fail")))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn restarts(tree: &serde_json::Value, name: &str) -> Option<u64> {
    if tree["name"] == name {
        return tree["restarts"].as_u64();
    }
    tree["children"]
        .as_array()?
        .iter()
        .find_map(|c| restarts(c, name))
}

async fn wait_restarts(gw: &Gateway, name: &str, at_least: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let tree = gw.admin_get("/admin/tree").await;
        let ready = client()
            .get(gw.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
            == 200;
        if restarts(&tree, name).unwrap_or(0) >= at_least && ready {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} not restarted: {tree}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_the_sink_publisher_never_disturbs_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    let cfg = write_config(
        dir.path(),
        &format!("[admin]\nchaos = true\n[delivery]\nbackoff_initial_ms = 20\nbackoff_max_ms = 100\n[[sinks]]\nname = \"analytics\"\ntype = \"http\"\nurl = \"{}\"\n", sink.url()),
    );
    let gw = Gateway::start(&cfg);
    let load = start_load(&gw, 4);
    for i in 1..=3 {
        assert!(sink.wait_batches(i * 2, Duration::from_secs(20)).await);
        assert_eq!(fail(&gw, "publisher:analytics").await, 202);
        wait_restarts(&gw, "publisher:analytics", i as u64).await;
    }
    let (acked, statuses) = load.finish().await;
    assert!(
        statuses.iter().all(|s| *s == 202),
        "ingest answered other than 202 while a sink failed: {:?}",
        statuses.iter().filter(|s| **s != 202).collect::<Vec<_>>()
    );
    assert!(!acked.is_empty());
    sink.wait_for_keys(&acked, Duration::from_secs(60))
        .await
        .unwrap_or_else(|m| panic!("lost {}", m.len()));
    let tree = gw.admin_get("/admin/tree").await;
    assert_eq!(restarts(&tree, "publisher:analytics"), Some(3), "{tree}");
    assert_eq!(restarts(&tree, "wal"), Some(0));
    assert_eq!(restarts(&tree, "http_ingest"), Some(0));
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "edge_gateway_actor_restarts_total{actor=\"publisher:analytics\"}"
        ),
        Some(3.0)
    );
}

/// The control plane fails alone (issue 12): ingest answers 202 throughout, readiness never
/// waits on it, and after each restart it answers commands again from its durable record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_the_control_actor_never_disturbs_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    let cfg = write_config(
        dir.path(),
        &format!("[admin]\nchaos = true\n[[sinks]]\nname = \"analytics\"\ntype = \"http\"\nurl = \"{}\"\n", sink.url()),
    );
    let gw = Gateway::start(&cfg);
    let ping = serde_json::json!({"command_id": "before", "kind": "ping"});
    let url = gw.admin_url("/admin/control");
    let (s, _) = post_json(&client(), &url, &gw.admin_token, &ping).await;
    assert_eq!(s, 200);
    let load = start_load(&gw, 3);
    for i in 1..=3 {
        assert_eq!(fail(&gw, "control").await, 202);
        let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
        assert_eq!(
            r.status().as_u16(),
            200,
            "ready while the control actor restarts"
        );
        wait_restarts(&gw, "control", i).await;
    }
    let (acked, statuses) = load.finish().await;
    assert!(!acked.is_empty());
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    let (s, v) = post_json(&client(), &url, &gw.admin_token, &ping).await;
    assert_eq!((s, v["duplicate"].as_bool()), (200, Some(true)), "{v}");
    sink.wait_for_keys(&acked, Duration::from_secs(60))
        .await
        .unwrap_or_else(|m| panic!("lost {}", m.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_each_actor_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    let cfg = write_config(
        dir.path(),
        &format!("[admin]\nchaos = true\n[delivery]\nbackoff_initial_ms = 20\nbackoff_max_ms = 100\nlease_timeout_ms = 1000\n[[sinks]]\nname = \"analytics\"\ntype = \"http\"\nurl = \"{}\"\n", sink.url()),
    );
    let gw = Gateway::start(&cfg);
    let load = start_load(&gw, 3);
    for actor in [
        "wal",
        "dispatcher",
        "http_ingest",
        "publisher:analytics",
        "sinks",
    ] {
        assert!(sink.wait_batches(1, Duration::from_secs(20)).await);
        assert_eq!(fail(&gw, actor).await, 202, "{actor}");
        wait_restarts(&gw, actor, 1).await;
    }
    let (acked, statuses) = load.finish().await;
    // During a WAL or router restart a request may be refused (503) or, for the listener,
    // not connect (0); it is never acknowledged without being stored.
    assert!(
        statuses.iter().all(|s| matches!(s, 202 | 503 | 0)),
        "{:?}",
        statuses
            .iter()
            .filter(|s| !matches!(s, 202 | 503 | 0))
            .collect::<Vec<_>>()
    );
    sink.wait_for_keys(&acked, Duration::from_secs(60))
        .await
        .unwrap_or_else(|m| {
            panic!(
                "lost {} acknowledged readings: {:?}",
                m.len(),
                &m[..m.len().min(5)]
            )
        });
    let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_hooks_are_off_by_default_and_need_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&write_config(dir.path(), ""));
    assert_eq!(fail(&gw, "wal").await, 403);
    let r = client()
        .post(gw.admin_url("/admin/actors/wal/fail"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client()
        .get(gw.admin_url("/admin/tree"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
}
