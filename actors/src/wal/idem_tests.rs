//! The store's idempotency against the hostile and buggy clients of issue 8: keys scoped to
//! the device, content-checked duplicates, key conflicts stored, and the upgrade from the
//! unscoped `idem_by_ts` table.

use super::tests::{limits, rec};
use super::*;
use redb::{ReadableDatabase, ReadableTable};

const SINKS: &[&str] = &["a"];

fn open(path: &std::path::Path) -> WalStore {
    WalStore::open(
        path,
        SINKS.iter().map(|s| s.to_string()).collect(),
        limits(),
    )
    .unwrap()
}

fn reading(device: &str, seq: u64, temp: f64, ts: u64) -> Record {
    let mut r = rec(&format!("{device}/seq/{seq}"), ts);
    r.device_id = device.into();
    r.correlation_id = format!("c-{device}-{seq}-{temp}");
    r.device_seq = Some(seq);
    r.data.insert("temp".into(), serde_json::json!(temp));
    r
}

fn append(s: WalStore, records: Vec<Record>, now: u64) -> (WalStore, Vec<AppendOutcome>) {
    let (s, mut r) = s.apply(vec![Op::Append(records)], now).unwrap();
    match r.pop() {
        Some(OpResult::Appended(Ok(v))) => (s, v),
        other => panic!("{other:?}"),
    }
}

fn stored_keys(s: &WalStore) -> Vec<String> {
    let mut s2 = Vec::new();
    let txn = s.db.begin_read().unwrap();
    for row in txn
        .open_table(super::store::RECORDS_FOR_TESTS)
        .unwrap()
        .iter()
        .unwrap()
    {
        let r = Record::decode(row.unwrap().1.value()).unwrap();
        s2.push(r.idempotency_key);
    }
    s2
}

/// A device that rebooted sends seq 1, 2, 3 again with new values: each is stored (flagged as
/// a key conflict), none answered "duplicate" — the field report of issue 8.
#[test]
fn a_device_counter_reset_is_stored_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("wal.redb"));
    let first: Vec<_> = (1..=3)
        .map(|i| reading("d", i, 20.0 + i as f64, 10))
        .collect();
    let (s, out) = append(s, first, 10);
    assert!(out.iter().all(|o| matches!(
        o,
        AppendOutcome::Stored {
            key_conflict: false,
            ..
        }
    )));
    let after_reboot: Vec<_> = (1..=3)
        .map(|i| reading("d", i, 30.0 + i as f64, 20))
        .collect();
    let (s, out) = append(s, after_reboot.clone(), 20);
    assert!(
        out.iter().all(|o| matches!(
            o,
            AppendOutcome::Stored {
                key_conflict: true,
                ..
            }
        )),
        "{out:?}"
    );
    assert_eq!(s.stats().records, 6);
    let keys = stored_keys(&s);
    assert_eq!(keys.len(), 6);
    assert_eq!(
        keys.iter().collect::<std::collections::HashSet<_>>().len(),
        6,
        "downstream keys stay distinct, so downstream de-duplication keeps them too: {keys:?}"
    );
    // A true retry of the new readings is a duplicate of them.
    let (s, out) = append(s, after_reboot, 30);
    for (i, o) in out.iter().enumerate() {
        match o {
            AppendOutcome::Duplicate { seq, .. } => assert_eq!(*seq, 4 + i as u64),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(s.stats().records, 6);
}

#[test]
fn the_same_key_twice_in_one_request_with_other_content_is_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("wal.redb"));
    let (s, out) = append(
        s,
        vec![
            reading("d", 1, 1.0, 5),
            reading("d", 1, 2.0, 5),
            reading("d", 1, 2.0, 5),
        ],
        5,
    );
    assert!(matches!(
        out[0],
        AppendOutcome::Stored {
            seq: 1,
            key_conflict: false,
            ..
        }
    ));
    assert!(matches!(
        out[1],
        AppendOutcome::Stored {
            seq: 2,
            key_conflict: true,
            ..
        }
    ));
    assert!(
        matches!(out[2], AppendOutcome::Duplicate { seq: 2, .. }),
        "{out:?}"
    );
    assert_eq!(s.stats().records, 2);
}

#[test]
fn keys_of_two_devices_never_meet() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("wal.redb"));
    let (s, _) = append(s, vec![reading("a", 5, 1.0, 5)], 5);
    let (s, out) = append(s, vec![reading("b", 5, 1.0, 5)], 5);
    assert!(matches!(
        out[0],
        AppendOutcome::Stored {
            key_conflict: false,
            ..
        }
    ));
    assert_eq!(s.stats().records, 2);
}

#[test]
fn conflicts_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    let s = open(&path);
    let (s, _) = append(s, vec![reading("d", 1, 1.0, 5)], 5);
    drop(s);
    let s = open(&path);
    let (s, out) = append(s, vec![reading("d", 1, 1.0, 6), reading("d", 1, 9.0, 6)], 6);
    assert!(
        matches!(out[0], AppendOutcome::Duplicate { seq: 1, .. }),
        "{out:?}"
    );
    assert!(
        matches!(
            out[1],
            AppendOutcome::Stored {
                key_conflict: true,
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(s.stats().records, 2);
}

/// A WAL file written before keys were scoped: its records stay deliverable, its old
/// idempotency table is dropped, and the file keeps working.
#[test]
fn a_file_with_the_old_idempotency_table_opens_and_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    let s = open(&path);
    let (s, _) = append(s, vec![reading("d", 1, 1.0, 5)], 5);
    drop(s);
    {
        // What an older release left behind: unscoped keys, no fingerprint.
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let old: redb::TableDefinition<(u64, &str), (u64, &str)> =
                redb::TableDefinition::new(idem::IDEM_V1_NAME);
            let mut t = txn.open_table(old).unwrap();
            t.insert((5, "victim/seq/9"), (1, "c")).unwrap();
        }
        txn.commit().unwrap();
    }
    let s = open(&path);
    assert_eq!(s.stats().records, 1);
    let txn = s.db.begin_read().unwrap();
    assert!(!txn
        .list_tables()
        .unwrap()
        .any(|t| redb::TableHandle::name(&t) == idem::IDEM_V1_NAME));
    drop(txn);
    let (s, leased) = s
        .apply(
            vec![Op::Lease {
                sink: "a".into(),
                max: 10,
            }],
            6,
        )
        .unwrap();
    assert!(matches!(&leased[0], OpResult::Leased(v) if v.len() == 1));
    let (_, out) = append(s, vec![reading("victim", 9, 1.0, 7)], 7);
    assert!(matches!(out[0], AppendOutcome::Stored { .. }));
}
