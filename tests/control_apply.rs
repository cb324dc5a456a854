//! `config.apply` (issue 12): a change checked as a file would be (all problems at once,
//! nothing applied on any), applied under load by restarting only what it touches, kept
//! across a restart, rolled back when what it starts does not come up; removed sinks' records
//! drained, dropped or moved — never left behind silently. Also `actor.restart`.

mod common;

use common::sink::RecordingSink;
use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn http_sink(name: &str, sink: &RecordingSink) -> Value {
    json!({"name": name, "type": "http", "url": sink.url()})
}

fn config(dir: &std::path::Path, a: &RecordingSink) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "[delivery]\nbackoff_initial_ms = 20\nbackoff_max_ms = 100\n\
             [[sinks]]\nname = \"a\"\ntype = \"http\"\nurl = \"{}\"\n",
            a.url()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_change_is_refused_with_every_problem_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let a = RecordingSink::start().await;
    let gw = Gateway::start(&config(dir.path(), &a));
    let (s, v) = command(
        &gw,
        json!({"command_id": "bad-1", "kind": "config.apply", "change": {
            "delivery": {"batch_size": 0},
            "http": {"max_batch": 5},
            "sinks": [{"name": "a", "type": "http", "url": a.url()}, {"name": "x", "type": "http"}],
        }}),
    )
    .await;
    assert_eq!((s, v["state"].as_str()), (400, Some("failed")), "{v}");
    let paths: Vec<&str> = v["result"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["http.max_batch"],
        "not live: refused before anything else: {v}"
    );
    let (s, v) = command(
        &gw,
        json!({"command_id": "bad-2", "kind": "config.apply", "change": {
            "delivery": {"batch_size": 0},
            "sinks": [{"name": "a", "type": "http", "url": a.url()}, {"name": "x", "type": "http"}],
            "routes": [{"devices": "*", "sinks": ["nope"]}],
        }}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let text = v["result"].to_string();
    for want in ["delivery.batch_size", "sinks[1].url", "routes[0].sinks"] {
        assert!(text.contains(want), "{want} in {text}");
    }
    // Removing a sink that holds records needs to say what becomes of them.
    a.set(common::sink::Behaviour::Always(503));
    ingest_seqs(&gw, &["d-1"], 3, 3, 0).await;
    let (s, v) = command(
        &gw,
        json!({"command_id": "bad-3", "kind": "config.apply", "change": {"sinks": [{"name": "z", "type": "file", "path": "z.jsonl"}]}}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["result"].to_string().contains("removed_sinks.a"), "{v}");
    let cfg = command(&gw, json!({"command_id": "get-1", "kind": "config.get"}))
        .await
        .1;
    let sinks = &cfg["result"]["config"]["sinks"];
    assert_eq!(sinks.as_array().unwrap().len(), 1, "nothing changed: {cfg}");
    assert_eq!(cfg["result"]["config"]["delivery"]["batch_size"], 500);
    assert!(!gw.data_dir.join("config.applied.toml").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_adds_a_sink_and_reroutes_a_device_under_load_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (RecordingSink::start().await, RecordingSink::start().await);
    let cfg = config(dir.path(), &a);
    let gw = Gateway::start(&cfg);
    // Load: four devices posting one reading at a time until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, u16)>>> = Arc::default();
    let mut load = Vec::new();
    for d in ["d-1", "d-2", "d-3", "d-4"] {
        let (stop, acked, url, token) = (
            stop.clone(),
            acked.clone(),
            gw.url(&format!("/ingest/{d}")),
            gw.token.clone(),
        );
        load.push(tokio::spawn(async move {
            let c = client();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (s, _) = post_json(&c, &url, &token, &json!({"seq": seq})).await;
                acked.lock().unwrap().push((format!("{d}/seq/{seq}"), s));
                seq += 1;
            }
        }));
    }
    let (s, v) = command(
        &gw,
        json!({"command_id": "apply-1", "kind": "config.apply", "change": {
            "sinks": [http_sink("a", &a), http_sink("b", &b)],
            "routes": [{"devices": "d-1", "sinks": ["b"]}, {"devices": "*", "sinks": ["a"]}],
        }}),
    )
    .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("done")), "{v}");
    assert_eq!(v["result"]["added"], json!(["b"]), "{v}");
    assert_eq!(
        v["result"]["restarted"],
        json!(["dispatcher"]),
        "only the dispatcher: {v}"
    );
    // Keep the load going a little after the change, then stop it.
    let before = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < before + 200 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let statuses: HashSet<u16> = acked.iter().map(|(_, s)| *s).collect();
    assert!(
        statuses.iter().all(|s| *s == 202 || *s == 503),
        "only acks or backpressure: {statuses:?}"
    );
    let keys: HashSet<String> = acked
        .iter()
        .filter(|(_, s)| *s == 202)
        .map(|(k, _)| k.clone())
        .collect();
    // Nothing lost: each acknowledged reading reached a or b.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got: HashSet<String> = a.keys().union(&b.keys()).cloned().collect();
        let missing: Vec<&String> = keys.iter().filter(|k| !got.contains(*k)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} acknowledged readings lost: {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // After the change, d-1 goes to b only; the others stay with a.
    assert!(
        b.keys().iter().any(|k| k.starts_with("d-1/")),
        "d-1 rerouted"
    );
    assert!(
        b.keys().iter().all(|k| k.starts_with("d-1/")),
        "b has d-1 only"
    );
    let tree = gw.admin_get("/admin/tree").await.to_string();
    assert!(tree.contains("publisher:b"), "{tree}");

    // The change survives a restart.
    gw.terminate();
    let gw = Gateway::start(&cfg);
    let got = command(&gw, json!({"command_id": "get-2", "kind": "config.get"}))
        .await
        .1;
    assert_eq!(got["result"]["config"]["sinks"][1]["name"], "b", "{got}");
    assert_eq!(
        got["result"]["config"]["routes"][0]["devices"], "d-1",
        "{got}"
    );
    let (s, _) = post_json(
        &client(),
        &gw.url("/ingest/d-1"),
        &gw.token,
        &json!({"seq": 999_999}),
    )
    .await;
    assert_eq!(s, 202);
    let want: HashSet<String> = ["d-1/seq/999999".to_string()].into();
    b.wait_for_keys(&want, Duration::from_secs(20))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_publisher_does_not_start_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let a = RecordingSink::start().await;
    let gw = Gateway::start(&config(dir.path(), &a));
    // A file sink under a path that is a file: valid configuration, but it cannot open.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "not a directory").unwrap();
    let (s, v) = command(
        &gw,
        json!({"command_id": "apply-bad", "kind": "config.apply", "change": {
            "sinks": [http_sink("a", &a), {"name": "f", "type": "file",
                      "path": blocker.join("out.jsonl").display().to_string()}],
            "routes": [{"devices": "*", "sinks": ["f"]}],
        }}),
    )
    .await;
    assert_eq!((s, v["state"].as_str()), (409, Some("failed")), "{v}");
    assert_eq!(v["result"]["error"], "rolled_back", "{v}");
    assert!(
        v["result"]["message"].as_str().unwrap().contains("\"f\""),
        "{v}"
    );
    // As before: one sink, no route, readings still delivered to a.
    let cfg = command(&gw, json!({"command_id": "get-3", "kind": "config.get"}))
        .await
        .1;
    assert_eq!(
        cfg["result"]["config"]["sinks"].as_array().unwrap().len(),
        1,
        "{cfg}"
    );
    assert_eq!(cfg["result"]["config"]["routes"], json!([]), "{cfg}");
    let keys = ingest_seqs(&gw, &["d-9"], 2, 2, 0).await;
    a.wait_for_keys(&keys, Duration::from_secs(20))
        .await
        .unwrap();
    let applied =
        std::fs::read_to_string(gw.data_dir.join("config.applied.toml")).unwrap_or_default();
    assert!(
        !applied.contains("blocker"),
        "the applied file was put back: {applied}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_sinks_records_are_moved_dropped_or_drained() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        RecordingSink::start().await,
        RecordingSink::start().await,
        RecordingSink::start().await,
    );
    let cfg = write_config(
        dir.path(),
        &format!(
            "[delivery]\nbackoff_initial_ms = 20\nbackoff_max_ms = 100\n\
             [[sinks]]\nname = \"a\"\ntype = \"http\"\nurl = \"{}\"\n\
             [[sinks]]\nname = \"b\"\ntype = \"http\"\nurl = \"{}\"\n\
             [[sinks]]\nname = \"c\"\ntype = \"http\"\nurl = \"{}\"\n",
            a.url(),
            b.url(),
            c.url()
        ),
    );
    let gw = Gateway::start(&cfg);
    // a and b are down: their backlogs wait.
    a.set(common::sink::Behaviour::Always(503));
    b.set(common::sink::Behaviour::Always(503));
    let keys = ingest_seqs(&gw, &["d-1"], 5, 5, 0).await;
    c.wait_for_keys(&keys, Duration::from_secs(20))
        .await
        .unwrap();
    // a's backlog moves to c (delivered there again: c's acknowledgements are not kept per
    // record, so a move may duplicate — never lose), b's is dropped.
    let (s, v) = command(
        &gw,
        json!({"command_id": "rm-1", "kind": "config.apply",
               "change": {"sinks": [http_sink("c", &c)]},
               "removed_sinks": {"a": {"move_to": "c"}, "b": "drop"}}),
    )
    .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("done")), "{v}");
    assert_eq!(
        (
            v["result"]["dropped"].as_u64(),
            v["result"]["moved"].as_u64()
        ),
        (Some(5), Some(5)),
        "{v}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let wal = gw.admin_get("/admin/wal").await;
        if wal["records"] == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "records left for removed sinks: {wal}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Drain: a sink removed with its backlog delivered first, taking nothing new.
    let (d, e) = (RecordingSink::start().await, RecordingSink::start().await);
    let (s, v) = command(
        &gw,
        json!({"command_id": "add-d", "kind": "config.apply",
               "change": {"sinks": [http_sink("c", &c), http_sink("d", &d), http_sink("e", &e)]}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    d.set(common::sink::Behaviour::Always(503));
    let held = ingest_seqs(&gw, &["d-2"], 4, 4, 0).await;
    e.wait_for_keys(&held, Duration::from_secs(20))
        .await
        .unwrap();
    let (s, v) = command(
        &gw,
        json!({"command_id": "drain-d", "kind": "config.apply",
               "change": {"sinks": [http_sink("c", &c), http_sink("e", &e)]},
               "removed_sinks": {"d": "drain"}}),
    )
    .await;
    assert_eq!(
        (s, v["result"]["draining"].clone()),
        (200, json!(["d"])),
        "{v}"
    );
    let later = ingest_seqs(&gw, &["d-3"], 2, 2, 0).await;
    // A SIGKILL in the middle of the drain: the next start carries on with it.
    gw.kill9();
    let gw = Gateway::start(&cfg);
    d.set(common::sink::Behaviour::Ok);
    d.wait_for_keys(&held, Duration::from_secs(30))
        .await
        .expect("d's backlog delivered");
    e.wait_for_keys(&later, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(
        d.keys().iter().all(|k| !k.starts_with("d-3/")),
        "d took nothing new"
    );
    // Once drained, d's publisher goes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while gw
        .admin_get("/admin/tree")
        .await
        .to_string()
        .contains("publisher:d\"")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "d's publisher still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_restart_on_request_and_dead_letters_requeue() {
    let dir = tempfile::tempdir().unwrap();
    let a = RecordingSink::start().await;
    let gw = Gateway::start(&config(dir.path(), &a));
    for (id, actor, ok) in [
        ("r-1", "dispatcher", true),
        ("r-2", "publisher:a", true),
        ("r-3", "nope", false),
        ("r-4", "control", false),
    ] {
        let (s, v) = command(
            &gw,
            json!({"command_id": id, "kind": "actor.restart", "actor": actor}),
        )
        .await;
        assert_eq!(s == 200 && v["state"] == "done", ok, "{actor}: {v}");
    }
    let keys = ingest_seqs(&gw, &["d-1"], 3, 3, 0).await;
    a.wait_for_keys(&keys, Duration::from_secs(20))
        .await
        .unwrap();
    let (s, v) = command(
        &gw,
        json!({"command_id": "q-1", "kind": "dead-letters.requeue", "sink": "a"}),
    )
    .await;
    assert_eq!((s, v["result"]["requeued"].as_u64()), (200, Some(0)), "{v}");
}
