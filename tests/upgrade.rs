//! Upgrades keep the backlog (issue 9, part 9): an edge box is often upgraded while its uplink
//! is down. Each fixture was written by an older release (`tests/fixtures/make-wal-fixture.sh`
//! says how to make them again): 40 readings of two devices pending for sink `archive`, which
//! was down, and the same 40 dead-lettered on sink `audit`, which answered 400. This release
//! opens each, migrates it to its format in one transaction, delivers every pending reading and
//! still shows every dead letter.
//! - `wal-v1.redb`: the release before issue 9 (commit 7c6a1e7, WAL format 1);
//! - `wal-v2.redb`: the release before the unleased ranges (commit 17ae16d, WAL format 2);
//! - `wal-v5.redb`: the release before idempotency rows per commit (commit 16740b0, WAL
//!   format 5: a row per key in `idem_v2`).
//! - `wal-v6.redb`: the release before the tighter idempotency entries (commit e60a78d, WAL
//!   format 6: rows per commit in `idem_v3`).

mod common;

use common::sink::{Behaviour, RecordingSink};
use common::*;
use std::time::Duration;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_of_the_release_before_issue_9_is_migrated_and_delivered() {
    // Keys as that release made them: the client's header as given, else device/seq.
    migrates_and_delivers("wal-v1.redb", |i| match i % 2 {
        0 => format!("fixture-{i}"),
        _ => format!("sensor-1/seq/{i}"),
    })
    .await
    .terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_of_the_previous_release_is_migrated_and_delivered() {
    // Keys scoped to the device (issue 8).
    migrates_and_delivers("wal-v2.redb", |i| match i % 2 {
        0 => format!("sensor-0/key/fixture-{i}"),
        _ => format!("sensor-1/seq/{i}"),
    })
    .await
    .terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_with_a_row_per_idempotency_key_is_migrated_and_keeps_its_keys() {
    keeps_its_keys("wal-v5.redb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_with_loosely_packed_idempotency_rows_is_migrated_and_keeps_its_keys() {
    keeps_its_keys("wal-v6.redb").await;
}

async fn keeps_its_keys(fixture: &str) {
    let gw = migrates_and_delivers(fixture, |i| match i % 2 {
        0 => format!("sensor-0/key/fixture-{i}"),
        _ => format!("sensor-1/seq/{i}"),
    })
    .await;
    // The keys came over (packed one row per commit, format 7's way): a device retrying a
    // reading the old release acknowledged is answered as a duplicate, not stored again. The
    // body is the fixture's (`make-wal-fixture.sh`), byte for byte the same content.
    let send = |temp: u64| {
        let c = client();
        let (url, token) = (gw.url("/ingest/sensor-0"), gw.token.clone());
        async move {
            let body = serde_json::json!({"seq": 2, "ts": "2026-11-20T10:00:00Z", "temp": temp});
            let r = c
                .post(url)
                .bearer_auth(token)
                .header("Idempotency-Key", "fixture-2")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    let answer = send(22).await;
    assert_eq!(answer["duplicate"], true, "{answer}");
    // With the correlation id that reading was acknowledged with (a UUID, packed as 16 bytes
    // since format 7): read back from its dead letter, which holds the reading as stored.
    let dead = gw.admin_get("/admin/dead-letters/audit?limit=100").await;
    let original = dead["dead_letters"]
        .as_array()
        .expect("dead letters")
        .iter()
        .find(|d| d["record"]["idempotency_key"] == "sensor-0/key/fixture-2")
        .map(|d| d["record"]["correlation_id"].clone())
        .expect("the reading's dead letter");
    assert_eq!(answer["correlation_id"], original, "{answer}");
    // Other content under the same key is a conflict, stored (never dropped).
    let answer = send(99).await;
    assert_eq!(answer["key_conflict"], true, "{answer}");
    gw.terminate();
}

async fn migrates_and_delivers(fixture: &str, key_of: fn(u64) -> String) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::copy(
        format!("{FIXTURES}/{fixture}"),
        dir.path().join("data/wal.redb"),
    )
    .unwrap();
    let archive = RecordingSink::start().await;
    archive.set(Behaviour::Ok);
    // Format 1 rows hold wall-clock times, so the fixture's readings and dead letters age with
    // the calendar: weeks after it was made they are past the default `max_age` and dead-letter
    // retention (7 days each) and go, as they would have in that release. The test is about
    // the upgrade, not about age.
    let cfg = write_config(
        dir.path(),
        &format!(
            "gateway_id = \"fixture-gw\"\n\
             [wal]\nmax_age_secs = 315360000\ndead_retention_secs = 315360000\n\
             [[sinks]]\nname = \"archive\"\ntype = \"http\"\nurl = \"{}\"\n\
             [[sinks]]\nname = \"audit\"\ntype = \"file\"\npath = \"sink/audit.jsonl\"\n",
            archive.url()
        ),
    );
    let gw = Gateway::start(&cfg);
    assert!(
        gw.log().contains("WAL migrated to the new format"),
        "the migration is logged: {}",
        gw.log()
    );
    let keys = (1..=40u64).map(key_of).collect();
    archive
        .wait_for_keys(&keys, Duration::from_secs(60))
        .await
        .expect("every pending reading delivered after the upgrade");
    let want: std::collections::HashMap<&str, Vec<u64>> = [
        ("sensor-0", (1..=40).filter(|i| i % 2 == 0).collect()),
        ("sensor-1", (1..=40).filter(|i| i % 2 == 1).collect()),
    ]
    .into();
    let got = archive.by_device();
    for (device, seqs) in &want {
        let mut have = got.get(*device).cloned().unwrap_or_default();
        have.sort_unstable();
        have.dedup();
        assert_eq!(
            &have, seqs,
            "{device}: every pending reading delivered once at least"
        );
    }
    let dead = gw.admin_get("/admin/dead-letters/audit?limit=100").await;
    let dead = dead["dead_letters"]
        .as_array()
        .expect("dead letters")
        .clone();
    assert_eq!(dead.len(), 40, "every dead letter kept");
    assert!(
        dead.iter()
            .all(|d| d["reason"].as_str().unwrap().contains("400")
                && d["record"]["device_id"].as_str().is_some()),
        "reasons and records readable: {:?}",
        dead.first()
    );
    let wal = gw.admin_get("/admin/wal").await;
    assert_eq!(wal["sinks"][0]["sink"], "archive", "{wal}");
    // New readings after the upgrade go the new way (unleased ranges) beside the old rows.
    let fresh = ingest_seqs(&gw, &["sensor-9"], 5, 5, 0).await;
    archive
        .wait_for_keys(&fresh, Duration::from_secs(60))
        .await
        .expect("readings taken after the upgrade delivered too");
    gw.terminate();

    // Opened again: already at this release's format, nothing to migrate.
    let gw = Gateway::start(&cfg);
    assert!(!gw.log().contains("WAL migrated"), "{}", gw.log());
    gw
}

/// A WAL written by a newer release stops the gateway at start with a message
/// naming both versions; the file is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_from_a_newer_release_stops_the_gateway_with_a_clear_message() {
    use edge_gateway_actors::wal::FORMAT_VERSION;
    use redb::{Database, TableDefinition};
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    Gateway::start(&cfg).terminate();
    let wal = dir.path().join("data/wal.redb");
    {
        let db = Database::open(&wal).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("format_version", FORMAT_VERSION + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let out = Gateway::command(&cfg).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "format version {}, newer than this gateway's {FORMAT_VERSION}",
            FORMAT_VERSION + 1
        )),
        "{text}"
    );
}
