//! Routing rules (`[[routes]]`, issue 12): each reading is queued for the sinks of the first
//! rule it matches; a reading no rule takes is refused naming why, never accepted and
//! delivered nowhere.

mod common;

use common::sink::RecordingSink;
use common::*;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_go_to_the_sinks_of_their_first_matching_rule() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (RecordingSink::start().await, RecordingSink::start().await);
    let gw = Gateway::start(&write_config(
        dir.path(),
        &format!(
            "[[sinks]]\nname = \"a\"\ntype = \"http\"\nurl = \"{}\"\n\
             [[sinks]]\nname = \"b\"\ntype = \"http\"\nurl = \"{}\"\n\
             [[routes]]\ndevices = \"line-1-*\"\nsinks = [\"a\"]\n\
             [[routes]]\ndevices = \"lab-?\"\nsource = \"http\"\nsinks = [\"a\", \"b\"]\n",
            a.url(),
            b.url()
        ),
    ));
    let line = ingest_seqs(&gw, &["line-1-press"], 3, 3, 0).await;
    let lab = ingest_seqs(&gw, &["lab-1"], 3, 3, 0).await;
    // No rule takes it: refused, naming the field and the fix.
    let (s, v) = post_json(
        &client(),
        &gw.url("/ingest/office-9"),
        &gw.token,
        &json!({"seq": 1}),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (422, Some("no_route")), "{v}");
    assert_eq!(v["field"], "device_id", "{v}");
    assert!(v["message"].as_str().unwrap().contains("[[routes]]"), "{v}");

    let both: HashSet<String> = line.union(&lab).cloned().collect();
    a.wait_for_keys(&both, Duration::from_secs(20))
        .await
        .expect("a has both");
    b.wait_for_keys(&lab, Duration::from_secs(20))
        .await
        .expect("b has the lab's");
    // b's lane is in acceptance order: line-1's readings, accepted first, would be there.
    assert_eq!(b.keys(), lab, "b has nothing of line-1");
    let stats = gw.admin_get("/admin/wal").await;
    let pending_b = stats["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sink"] == "b")
        .map(|s| s["pending"].as_u64().unwrap());
    assert_eq!(pending_b, Some(0), "{stats}");
    let m = gw.metrics().await;
    assert!(m.contains("code=\"no_route\""), "counted: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_naming_no_such_sink_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "typo_in_route = 1\n[[routes]]\nunknown = 2\ndevices = \"a/b\"\nsource = \"coap\"\nsinks = [\"nope\"]\n",
    );
    let out = std::process::Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    for path in [
        "routes.0.unknown",
        "routes[0].devices",
        "routes[0].source",
        "routes[0].sinks",
    ] {
        assert!(text.contains(path), "{path} in {text}");
    }
}
