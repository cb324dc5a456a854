//! A renamed or removed sink never orphans its backlog silently (issue 14, part 7). Tried as a
//! new user would: a WAL holding 1,001 readings for sink `api`, the config's sink renamed to
//! `analytics`. The gateway names the orphaned sink at start (log, `/readyz`, metric, `wal
//! stats`); `wal move-sink api analytics` carries the readings (and dead letters) over, and
//! they are delivered; `wal drop-sink` deletes them, counted; both audited, both refused while
//! the gateway runs.

mod common;

use common::sink::{Behaviour, RecordingSink};
use common::*;
use serde_json::Value;
use std::time::Duration;

fn http_sink(name: &str, url: &str) -> String {
    format!("[[sinks]]\nname = \"{name}\"\ntype = \"http\"\nurl = \"{url}\"\n")
}

fn wal(cfg: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    cli(cfg, &[&["wal"], args].concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_sinks_backlog_is_named_then_moved_and_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    // `api` answers 503: every reading waits in the WAL.
    sink.set(Behaviour::Always(503));
    let cfg = write_config(
        dir.path(),
        &format!(
            "[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\n{}",
            http_sink("api", &sink.url())
        ),
    );
    let gw = Gateway::start(&cfg);
    let keys = ingest_seqs(&gw, &["d-1"], 1001, 100, 0).await;
    assert!(gw.terminate().success());

    // Renamed in the config while stopped.
    write_config(
        dir.path(),
        &format!(
            "[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\n{}",
            http_sink("analytics", &sink.url())
        ),
    );
    let out = wal(&cfg, &["stats"]);
    let stats: Value = serde_json::from_str(&out.1).unwrap();
    assert_eq!(stats["orphaned"][0]["sink"], "api", "{stats}");
    assert_eq!(stats["orphaned"][0]["pending"], 1001, "{stats}");

    let gw = Gateway::start(&cfg);
    assert!(
        gw.log().lines().any(|l| l.contains("\"level\":\"ERROR\"")
            && l.contains("wal move-sink api")
            && l.contains("1001")),
        "{}",
        gw.log()
    );
    let ready = gw.readyz().await;
    assert_eq!(ready["orphaned_sinks"]["api"]["pending"], 1001, "{ready}");
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "edge_gateway_wal_orphaned_records{sink=\"api\"}"),
        Some(1001.0)
    );
    // Not while the gateway holds the WAL.
    let refused = wal(&cfg, &["move-sink", "api", "analytics"]);
    assert!(!refused.0);
    assert!(refused.2.contains("stop it first"), "{}", refused.2);
    assert!(gw.terminate().success());

    // The wrong way round, and a name not configured: refused with the reason.
    let out = wal(&cfg, &["move-sink", "analytics", "api"]);
    assert!(out.2.contains("still in the configuration"));
    let out = wal(&cfg, &["move-sink", "api", "nowhere"]);
    assert!(out.2.contains("not in the configuration"));

    let out = wal(&cfg, &["move-sink", "api", "analytics"]);
    assert!(out.0, "{}", out.2);
    let moved: Value = serde_json::from_str(&out.1).unwrap();
    assert_eq!(moved["moved"], 1001, "{moved}");
    let audit = std::fs::read_to_string(dir.path().join("data/audit.jsonl")).unwrap();
    assert!(audit.contains("\"action\":\"wal.move-sink\"") && audit.contains("\"moved\":1001"));

    sink.set(Behaviour::Ok);
    let gw = Gateway::start(&cfg);
    sink.wait_for_keys(&keys, Duration::from_secs(60))
        .await
        .unwrap();
    let ready = gw.readyz().await;
    assert!(ready.get("orphaned_sinks").is_none(), "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_sinks_backlog_is_dropped_counted_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::Always(503));
    let cfg = write_config(
        dir.path(),
        &format!(
            "{}[[sinks]]\nname = \"file\"\ntype = \"file\"\npath = \"out.jsonl\"\n",
            http_sink("old", &sink.url())
        ),
    );
    let gw = Gateway::start(&cfg);
    ingest_seqs(&gw, &["d-2"], 40, 10, 0).await;
    assert!(gw.terminate().success());
    write_config(
        dir.path(),
        "[[sinks]]\nname = \"file\"\ntype = \"file\"\npath = \"out.jsonl\"\n",
    );
    let out = wal(&cfg, &["drop-sink", "old"]);
    assert!(out.0, "{}", out.2);
    let v: Value = serde_json::from_str(&out.1).unwrap();
    assert_eq!(v["dropped"], 40, "{v}");
    assert!(out.2.contains("WAL changed from the command line"));
    let again = wal(&cfg, &["drop-sink", "old"]);
    assert!(again.2.contains("holds nothing"));
    let stats: Value = serde_json::from_str(&wal(&cfg, &["stats"]).1).unwrap();
    assert!(stats.get("orphaned").is_none(), "{stats}");
    let audit = std::fs::read_to_string(dir.path().join("data/audit.jsonl")).unwrap();
    assert!(audit.contains("\"action\":\"wal.drop-sink\"") && audit.contains("\"dropped\":40"));
}
