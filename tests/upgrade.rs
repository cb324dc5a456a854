//! Upgrades keep the backlog (issue 9, part 9): an edge box is often upgraded while its uplink
//! is down. `tests/fixtures/wal-v1.redb` was written by the release before issue 9 (commit
//! 7c6a1e7, WAL format 1; `tests/fixtures/make-wal-v1.sh` says how to make it again): 40
//! readings of two devices pending for sink `archive`, which was down, and the same 40
//! dead-lettered on sink `audit`, which answered 400. This release opens it, migrates it to
//! format 2 in one transaction, delivers every pending reading and still shows every dead
//! letter.

mod common;

use common::sink::{Behaviour, RecordingSink};
use common::*;
use std::time::Duration;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/wal-v1.redb");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_of_the_previous_release_is_migrated_and_delivered() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::copy(FIXTURE, dir.path().join("data/wal.redb")).unwrap();
    let archive = RecordingSink::start().await;
    archive.set(Behaviour::Ok);
    let cfg = write_config(
        dir.path(),
        &format!(
            "gateway_id = \"fixture-gw\"\n\
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
    // Keys as the old release made them: the client's header as given, else device/seq.
    let keys = (1..=40u64)
        .map(|i| match i % 2 {
            0 => format!("fixture-{i}"),
            _ => format!("sensor-1/seq/{i}"),
        })
        .collect();
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
    gw.terminate();

    // Opened again: already format 2, nothing to migrate.
    let gw = Gateway::start(&cfg);
    assert!(!gw.log().contains("WAL migrated"), "{}", gw.log());
    gw.terminate();
}

/// A WAL written by a newer release (format 3 here) stops the gateway at start with a message
/// naming both versions; the file is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_from_a_newer_release_stops_the_gateway_with_a_clear_message() {
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
            .insert("format_version", 3)
            .unwrap();
        txn.commit().unwrap();
    }
    let out = Gateway::command(&cfg).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("format version 3, newer than this gateway's 2"),
        "{text}"
    );
}
