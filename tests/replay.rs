//! Replay (issue 14, part 3): a sink that lost data on its side gets it again from what
//! another sink kept (a file sink's output), keys unchanged, paced by `--rate`, through the
//! running gateway; and dead letters exported, then replayed with the gateway stopped.

mod common;

use common::sink::{Behaviour, RecordingSink};
use common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

fn run(args: &[&str], cfg: &std::path::Path) -> (bool, Value, String) {
    let (ok, out, err) = cli(cfg, args);
    (ok, serde_json::from_str(&out).unwrap_or(Value::Null), err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_lost_data_gets_it_again_with_the_same_keys_at_a_set_pace() {
    let dir = tempfile::tempdir().unwrap();
    let api = RecordingSink::start().await;
    let cfg = write_config(
        dir.path(),
        &format!(
            "[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\n\
             [[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"{}\"\n\
             [[sinks]]\nname = \"archive\"\ntype = \"file\"\npath = \"sink/records.jsonl\"\n",
            api.url()
        ),
    );
    let gw = Gateway::start(&cfg);
    let keys = ingest_seqs(&gw, &["d-1", "d-2"], 300, 100, 0).await;
    api.wait_for_keys(&keys, Duration::from_secs(30))
        .await
        .unwrap();
    let archive = gw.data_dir.join("sink/records.jsonl");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while file_sink_keys(&archive).len() < keys.len() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The analytics API lost everything: a fresh one at the same address is not possible
    // here, so a second recording sink stands for "after the loss" — the config points the
    // same sink name at it.
    let fresh = RecordingSink::start().await;
    assert!(gw.terminate().success());
    write_config(
        dir.path(),
        &format!(
            "[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\n\
             [[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"{}\"\n\
             [[sinks]]\nname = \"archive\"\ntype = \"file\"\npath = \"sink/records.jsonl\"\n",
            fresh.url()
        ),
    );
    let gw = Gateway::start(&cfg);
    let (c, a) = (cfg.clone(), archive.display().to_string());
    let (ok, v, err) = tokio::task::spawn_blocking(move || {
        run(&["replay", &a, "--sink", "api", "--rate", "400"], &c)
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(v["replayed"], 600, "{v}");
    assert_eq!(v["skipped"], 0, "{v}");
    // The ceiling held: 600 at 400/s is at least 1.5 s (the pacing sleeps; a lower bound).
    assert!(v["secs"].as_f64().unwrap() >= 1.4, "{v}");
    fresh
        .wait_for_keys(&keys, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(gw.log().contains("records replayed through the admin API"));
    // Only to `api`: the archive did not get them twice.
    let lines = std::fs::read_to_string(&archive).unwrap().lines().count();
    assert_eq!(lines, 600);
    assert!(gw.terminate().success());
    let audit = std::fs::read_to_string(dir.path().join("data/audit.jsonl")).unwrap();
    assert!(audit.contains("\"action\":\"replay\"") && audit.contains("\"replayed\":600"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_exported_then_replayed_with_the_gateway_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let api = RecordingSink::start().await;
    api.set(Behaviour::Always(400));
    let cfg = api_sink_config(dir.path(), &api.url(), "");
    let gw = Gateway::start(&cfg);
    let keys = ingest_seqs(&gw, &["d-9"], 20, 1, 0).await;
    gw.wait_dead_letters("api", 20).await;
    assert!(gw.terminate().success());

    let export = dir.path().join("dead.jsonl");
    let (ok, _, err) = run(
        &[
            "dlq",
            "export",
            "--sink",
            "api",
            "--out",
            export.to_str().unwrap(),
        ],
        &cfg,
    );
    assert!(ok, "{err}");
    // The same export as a CBOR sequence: item for item the JSON lines, and replayable.
    let cbor = dir.path().join("dead.cbor");
    let (ok, _, err) = run(
        &[
            "dlq",
            "export",
            "--sink",
            "api",
            "--format",
            "cbor",
            "--out",
            cbor.to_str().unwrap(),
        ],
        &cfg,
    );
    assert!(ok, "{err}");
    let bytes = std::fs::read(&cbor).unwrap();
    let mut items = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        items.push(ciborium::from_reader::<Value, _>(&mut rest).unwrap());
    }
    let lines: Vec<Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(items.len(), 20);
    assert_eq!(items, lines, "the CBOR items are the JSON lines");
    let (ok, v, err) = run(&["replay", cbor.to_str().unwrap(), "--sink", "api"], &cfg);
    assert!(ok, "{err}");
    assert_eq!(v["replayed"].as_u64(), Some(20), "{v}");
    // A junk line among them is skipped and named, not fatal.
    let mut text = std::fs::read_to_string(&export).unwrap();
    text.push_str("not a record\n");
    std::fs::write(&export, text).unwrap();
    let (ok, v, err) = run(&["replay", export.to_str().unwrap(), "--sink", "api"], &cfg);
    assert!(ok, "{err}");
    assert_eq!(
        (v["replayed"].as_u64(), v["skipped"].as_u64()),
        (Some(20), Some(1)),
        "{v}"
    );
    assert_eq!(v["skipped_lines"][0][0], 21, "{v}");
    // A sink the configuration lacks: refused.
    let (ok, _, err) = run(
        &["replay", export.to_str().unwrap(), "--sink", "nowhere"],
        &cfg,
    );
    assert!(!ok && err.contains("no sink named"), "{err}");

    api.set(Behaviour::Ok);
    let _gw = Gateway::start(&cfg);
    let want: HashSet<String> = keys;
    api.wait_for_keys(&want, Duration::from_secs(30))
        .await
        .unwrap();
}

/// Acked records kept in the WAL's history (`wal.history_secs`, issue 14 parts 1 and 3):
/// `wal show` tells when each sink acked a delivered reading, and `replay --from/--to`
/// re-sends a time range of them to a sink that lost them — through the running gateway,
/// then with it stopped — keys unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_readings_are_shown_with_their_acks_and_replayed_by_time_range() {
    let dir = tempfile::tempdir().unwrap();
    let api = RecordingSink::start().await;
    let cfg = api_sink_config(dir.path(), &api.url(), "");
    let gw = Gateway::start(&cfg);
    let before = now_ms();
    let keys = ingest_seqs(&gw, &["d-1"], 200, 100, 0).await;
    let after = now_ms() + 1;
    api.wait_for_keys(&keys, Duration::from_secs(30))
        .await
        .unwrap();
    // The ack is committed a moment after the sink answered: wait until the WAL says so.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let c = cfg.clone();
        let (ok, v, err) =
            tokio::task::spawn_blocking(move || run(&["wal", "show", "d-1/seq/7"], &c))
                .await
                .unwrap();
        assert!(ok, "{err}");
        if v["sinks"][0]["state"] == "acked" {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(shown["sinks"][0]["attempts"], 1, "{shown}");
    assert!(
        shown["sinks"][0]["acked_at_wal_ms"].as_u64().is_some(),
        "{shown}"
    );
    assert!(shown["settled_at_wal_ms"].as_u64().is_some(), "{shown}");

    // Online: the range holds all 200; a range before them holds none.
    let (c, from, to) = (cfg.clone(), before.to_string(), after.to_string());
    let (ok, v, err) = tokio::task::spawn_blocking(move || {
        run(
            &["replay", "--sink", "api", "--from", &from, "--to", &to],
            &c,
        )
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(v["replayed"], 200, "{v}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while api.deliveries() < 400 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} deliveries",
            api.deliveries()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (c, to) = (cfg.clone(), before.to_string());
    let (ok, v, _) = tokio::task::spawn_blocking(move || {
        run(&["replay", "--sink", "api", "--from", "0", "--to", &to], &c)
    })
    .await
    .unwrap();
    assert!(ok);
    assert_eq!(v["replayed"], 0, "{v}");
    // The history route: the admin token, and bounds that are times.
    let c = client();
    let unauth = c
        .get(gw.admin_url("/admin/wal/history"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status().as_u16(), 401);
    let bad = c
        .get(gw.admin_url("/admin/wal/history?from=yesterday"))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["field"], "from", "{body}");

    // Offline: the gateway stopped, the same range from the file.
    assert!(gw.terminate().success());
    let (c, from) = (cfg.clone(), before.to_string());
    let (ok, v, err) =
        tokio::task::spawn_blocking(move || run(&["replay", "--sink", "api", "--from", &from], &c))
            .await
            .unwrap();
    assert!(ok, "{err}");
    // The first replay's records are kept too once acked: 200 or 400, never fewer.
    assert!(v["replayed"].as_u64().unwrap() >= 200, "{v}");
    let c = cfg.clone();
    let (ok, v, err) = tokio::task::spawn_blocking(move || run(&["wal", "verify"], &c))
        .await
        .unwrap();
    assert!(ok, "{v} {err}");
    let gw = Gateway::start(&cfg);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while api.deliveries() < 600 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} deliveries",
            api.deliveries()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(api.keys(), keys, "the same keys, nothing else");
    drop(gw);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
