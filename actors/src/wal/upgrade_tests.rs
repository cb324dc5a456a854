//! The WAL's format version (issue 9, part 9): a file of the previous release (format 1, the
//! checked-in fixture) is migrated in one transaction — a crash during it leaves format 1 and
//! the next open migrates again — and a file of a newer release is refused, not misread.

use super::fault_tests::faulty;
use super::tests::limits;
use super::*;
use redb::{Database, ReadableDatabase, TableDefinition};
use std::sync::atomic::Ordering;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/wal-v1.redb");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

fn sinks() -> Vec<String> {
    vec!["archive".into(), "audit".into()]
}

/// `format_version` as saved in the file (None: format 1, which saved none).
fn saved_version(path: &std::path::Path) -> Option<u64> {
    let db = Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(META).unwrap();
    t.get("format_version").unwrap().map(|v| v.value())
}

fn fixture_copy(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("wal.redb");
    std::fs::copy(FIXTURE, &path).unwrap();
    path
}

#[test]
fn a_migration_that_does_not_commit_leaves_format_1_and_the_next_open_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture_copy(&dir);
    assert_eq!(saved_version(&path), None, "the fixture is format 1");
    // The migration's commit fails (as if the process died before its fsync returned).
    let (backend, fail_sync, _) = faulty(&path);
    fail_sync.store(true, Ordering::SeqCst);
    let r = WalStore::open_with_backend(backend, &path, sinks(), limits());
    let e = r.expect_err("a migration that did not commit must not open");
    assert!(e.to_string().contains("fsync failed"), "{e}");
    assert_eq!(saved_version(&path), None, "still format 1, whole");

    let store = WalStore::open(&path, sinks(), limits()).unwrap();
    let stats = store.stats();
    let by_sink: std::collections::BTreeMap<_, _> = stats
        .sinks
        .iter()
        .map(|s| (s.sink.as_str(), (s.pending, s.dead)))
        .collect();
    assert_eq!(by_sink["archive"], (40, 0), "{stats:?}");
    assert_eq!(by_sink["audit"], (0, 40), "{stats:?}");
    assert_eq!(stats.records, 40);
    let dead = store.dead_letters("audit", 100).unwrap();
    assert_eq!(dead.len(), 40);
    assert!(
        dead.iter()
            .all(|d| d.1.reason.contains("HTTP 400") && d.2.is_some()),
        "{:?}",
        dead[0]
    );
    // Every pending record leases and decodes.
    let (store, results) = store
        .apply(
            vec![Op::Lease {
                sink: "archive".into(),
                max: 100,
                fill: None,
                lanes: None,
            }],
            store_now(),
        )
        .unwrap();
    let OpResult::Leased(leased) = &results[0] else {
        panic!("{results:?}");
    };
    assert_eq!(leased.len(), 40);
    assert!(leased
        .iter()
        .all(|l| l.record.device_id.starts_with("sensor-")));
    drop(store);
    assert_eq!(saved_version(&path), Some(FORMAT_VERSION));
}

fn store_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn a_wal_from_a_newer_release_is_refused_with_both_versions_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    drop(WalStore::open(&path, sinks(), limits()).unwrap());
    assert_eq!(saved_version(&path), Some(FORMAT_VERSION));
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("format_version", FORMAT_VERSION + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let e = WalStore::open(&path, sinks(), limits()).unwrap_err();
    assert!(
        matches!(e, WalError::NewerFormat { found, supported, .. }
            if found == FORMAT_VERSION + 1 && supported == FORMAT_VERSION),
        "{e}"
    );
    assert!(e.to_string().contains("newer"), "{e}");
    assert!(matches!(
        WalStore::offline_stats(&path),
        Err(WalError::NewerFormat { .. })
    ));
    assert_eq!(
        saved_version(&path),
        Some(FORMAT_VERSION + 1),
        "refusing wrote nothing"
    );
}

/// Format 5 kept a row per idempotency key; format 6 packs a commit's keys into one row
/// (`store/idem_rows/`). The conversion is part of the opening transaction: when it does
/// not commit the file is format 5, whole, and the next open converts it — every key kept.
#[test]
fn idempotency_rows_of_format_5_are_packed_by_a_migration_a_crash_cannot_tear() {
    idempotency_rows_migrate("wal-v5.redb", 5, "idem_v2");
}

/// Format 6's rows (`idem_v3`) are packed again, tighter (`idem_v4`), in the same way.
#[test]
fn idempotency_rows_of_format_6_are_packed_again_by_a_migration_a_crash_cannot_tear() {
    idempotency_rows_migrate("wal-v6.redb", 6, "idem_v3");
}

fn idempotency_rows_migrate(fixture: &str, format: u64, old: &str) {
    let fixture = format!("{}/../tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    std::fs::copy(fixture, &path).unwrap();
    assert_eq!(saved_version(&path), Some(format));
    let tables = |path: &std::path::Path| -> Vec<String> {
        let db = Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        txn.list_tables()
            .unwrap()
            .map(|t| redb::TableHandle::name(&t).to_string())
            .collect()
    };
    assert!(tables(&path).contains(&old.to_string()));

    let (backend, fail_sync, _) = faulty(&path);
    fail_sync.store(true, Ordering::SeqCst);
    assert!(WalStore::open_with_backend(backend, &path, sinks(), limits()).is_err());
    assert_eq!(saved_version(&path), Some(format), "still the old format");
    assert!(tables(&path).contains(&old.to_string()), "whole");

    let store = WalStore::open(&path, sinks(), limits()).unwrap();
    assert_eq!(store.stats().idempotency_keys, 40, "one key per reading");
    let keys = store.dump().unwrap().idem;
    assert_eq!(keys.len(), 40);
    for i in 1..=40u64 {
        let key = match i % 2 {
            0 => format!("sensor-0/key/fixture-{i}"),
            _ => format!("sensor-1/seq/{i}"),
        };
        assert!(keys.contains(&key), "{key} kept: {keys:?}");
    }
    drop(store);
    assert_eq!(saved_version(&path), Some(FORMAT_VERSION));
    let after = tables(&path);
    assert!(!after.contains(&old.to_string()), "{after:?}");
    assert!(after.contains(&"idem_v4".to_string()), "{after:?}");
    assert!(WalStore::verify(&path).unwrap().ok());
}
