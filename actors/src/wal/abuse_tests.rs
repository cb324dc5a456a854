//! The store against the hostile and buggy clients of issue 8: keys scoped to the device,
//! content-checked duplicates, key conflicts stored, the upgrade from the unscoped
//! `idem_by_ts` table; per-device shares; the dead-letter budget and the operator's purge.

use super::tests::{limits, rec};
use super::*;
use redb::{ReadableDatabase, ReadableTable};

const SINKS: &[&str] = &["a"];

fn open(path: &std::path::Path) -> WalStore {
    open_with(path, limits())
}

fn open_with(path: &std::path::Path, l: WalLimits) -> WalStore {
    WalStore::open(path, SINKS.iter().map(|s| s.to_string()).collect(), l).unwrap()
}

type Appended = Result<Vec<AppendOutcome>, AppendRefused>;

fn try_append(s: WalStore, records: Vec<Record>, now: u64) -> (WalStore, Appended) {
    let (s, mut r) = s.apply(vec![Op::Append(records)], now).unwrap();
    match r.pop() {
        Some(OpResult::Appended(v)) => (s, v),
        other => panic!("{other:?}"),
    }
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
    let txn = s.db.read().unwrap().begin_read().unwrap();
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
    let txn = s.db.read().unwrap().begin_read().unwrap();
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
                fill: None,
                lanes: None,
            }],
            6,
        )
        .unwrap();
    assert!(matches!(&leased[0], OpResult::Leased(v) if v.len() == 1));
    let (_, out) = append(s, vec![reading("victim", 9, 1.0, 7)], 7);
    assert!(matches!(out[0], AppendOutcome::Stored { .. }));
}

fn fair(max_records: u64) -> WalLimits {
    let mut l = limits();
    l.max_records = max_records;
    l.device_fair_share = true;
    l
}

/// One device floods while another sends now and then: the flood stops at half the WAL, the
/// other device is never refused, and the flooder is admitted again once delivery frees room.
#[test]
fn a_flooding_device_is_held_at_its_share_and_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    let mut s = open_with(&path, fair(100));
    let mut flooded = 0;
    let mut honest = 0;
    for i in 0..200u64 {
        let (s2, r) = try_append(s, vec![reading("flooder", i, 1.0, 5)], 5);
        s = s2;
        match r {
            Ok(_) => flooded += 1,
            Err(AppendRefused::DeviceQuota(q)) => assert_eq!(q.device, "flooder"),
            Err(e) => panic!("{e}"),
        }
        if i % 10 == 0 {
            let (s2, r) = try_append(s, vec![reading("honest", i, 1.0, 5)], 5);
            s = s2;
            assert!(r.is_ok(), "the bystander was refused: {r:?}");
            honest += 1;
        }
    }
    // It stopped at i = 47 with the bystander holding 5: 47 + (47 + 5) <= 100 < 48 + (48 + 5).
    assert_eq!(flooded, 47, "half of what the bystander leaves");
    assert_eq!(s.device_usage("flooder").records, 47);
    assert_eq!(s.device_usage("honest").records, honest);
    assert!(s.stats().records < 100, "the WAL never filled");
    // Usage survives a reopen, then delivery frees the flooder's room.
    drop(s);
    let s = open_with(&path, fair(100));
    assert_eq!(s.device_usage("flooder").records, 47);
    assert_eq!(s.stats().devices, 2);
    let s = settle_all(s, Outcome::Acked, 6);
    assert_eq!(s.device_usage("flooder"), Usage::default());
    assert_eq!(s.stats().devices, 0);
    let (_, r) = try_append(s, vec![reading("flooder", 999, 1.0, 7)], 7);
    assert!(r.is_ok());
}

/// A file written before `device_usage` existed is scanned once on open.
#[test]
fn device_usage_is_rebuilt_for_an_older_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    let s = open(&path);
    let (s, _) = append(
        s,
        vec![
            reading("a", 1, 1.0, 5),
            reading("a", 2, 1.0, 5),
            reading("b", 1, 1.0, 5),
        ],
        5,
    );
    let bytes_a = s.device_usage("a").bytes;
    drop(s);
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.delete_table(quota::DEVICE_USAGE).unwrap();
        let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
        txn.open_table(meta)
            .unwrap()
            .remove("device_usage_v1")
            .unwrap();
        txn.commit().unwrap();
    }
    let s = open(&path);
    assert_eq!(
        s.device_usage("a"),
        Usage {
            records: 2,
            bytes: bytes_a
        }
    );
    assert_eq!(s.device_usage("b").records, 1);
}

/// Leases everything of sink `a` and settles each lease with `outcome`.
fn settle_all(s: WalStore, outcome: Outcome, now: u64) -> WalStore {
    let (s, r) = s
        .apply(
            vec![Op::Lease {
                sink: "a".into(),
                max: 100,
                fill: None,
                lanes: None,
            }],
            now,
        )
        .unwrap();
    let OpResult::Leased(leased) = &r[0] else {
        panic!("{r:?}")
    };
    let outcomes = leased.iter().map(|l| (l.seq, outcome.clone())).collect();
    s.apply(
        vec![Op::Settle {
            sink: "a".into(),
            outcomes,
        }],
        now,
    )
    .unwrap()
    .0
}

fn kill_all(s: WalStore, reason: &str, now: u64) -> WalStore {
    settle_all(s, Outcome::Dead(reason.into()), now)
}

#[test]
fn dead_letters_over_their_budget_are_purged_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits();
    l.max_dead_per_sink = 3;
    let s = open_with(&dir.path().join("wal.redb"), l);
    let (s, _) = append(s, (1..=5).map(|i| reading("d", i, 1.0, 5)).collect(), 5);
    let s = kill_all(s, "invalid payload", 6);
    assert_eq!(s.stats().sinks[0].dead, 5);
    let (s, r) = s.apply(vec![Op::Maintain], 7).unwrap();
    let OpResult::Maintained(rep) = &r[0] else {
        panic!()
    };
    assert_eq!(rep.dead_over_budget, vec![("a".to_string(), 2)]);
    let left: Vec<u64> = s
        .dead_letters("a", 10)
        .unwrap()
        .iter()
        .map(|d| d.0)
        .collect();
    assert_eq!(left, vec![3, 4, 5]);
    assert_eq!(
        s.stats().records,
        3,
        "purged dead letters free their records"
    );
}

#[test]
fn the_operator_purges_dead_letters_by_reason_and_age() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("wal.redb"));
    let (s, _) = append(s, (1..=2).map(|i| reading("d", i, 1.0, 5)).collect(), 5);
    let s = kill_all(s, "invalid payload", 10);
    let (s, _) = append(s, (3..=4).map(|i| reading("d", i, 1.0, 20)).collect(), 20);
    let s = kill_all(s, "HTTP 422", 30);
    let purge = |filter: DeadFilter| Op::PurgeDead {
        sink: "a".into(),
        filter,
        limit: 100,
    };
    let (s, r) = s
        .apply(
            vec![purge(DeadFilter {
                reason: Some(DeadClass::Expired),
                older_than_ms: None,
                ..Default::default()
            })],
            40,
        )
        .unwrap();
    assert_eq!(
        r[0],
        OpResult::Purged {
            sink: "a".into(),
            purged: 0
        },
        "none expired: the sink refused them all"
    );
    let (s, r) = s
        .apply(
            vec![purge(DeadFilter {
                reason: Some(DeadClass::Rejected),
                older_than_ms: Some(15),
                ..Default::default()
            })],
            40,
        )
        .unwrap();
    assert_eq!(
        r[0],
        OpResult::Purged {
            sink: "a".into(),
            purged: 2
        }
    );
    let left: Vec<u64> = s
        .dead_letters("a", 10)
        .unwrap()
        .iter()
        .map(|d| d.0)
        .collect();
    assert_eq!(left, vec![3, 4]);
    let (s, r) = s.apply(vec![purge(DeadFilter::default())], 40).unwrap();
    assert_eq!(
        r[0],
        OpResult::Purged {
            sink: "a".into(),
            purged: 2
        }
    );
    assert_eq!(s.stats().records, 0);
    assert_eq!(s.stats().sinks[0].dead, 0);
}

/// Issue 9 / RELIABILITY.md field condition: a board booted with a 2020 clock, took readings,
/// then NTP set it to 2026. Ages follow WAL time (the `now` the actor passes, monotonic), not
/// the readings' wall-clock `receive_ts_ms`: nothing expires because the clock jumped.
#[test]
fn ages_follow_wal_time_not_the_readings_wall_clock() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits();
    l.max_age_ms = 60_000;
    let s = open_with(&dir.path().join("wal.redb"), l);
    let t = 1_000_000;
    let mut r = reading("d", 1, 1.0, 1_577_836_800_000); // 2020-01-01, a clock not yet set
    r.clock_synced = false;
    let (s, _) = append(s, vec![r], t);
    // Minutes later in WAL time: not expired, whatever the readings' dates say.
    let (s, res) = s.apply(vec![Op::Maintain], t + 30_000).unwrap();
    assert!(
        matches!(&res[0], OpResult::Maintained(m) if m.expired == 0),
        "{res:?}"
    );
    // The idempotency window too: a retry within it is still a duplicate.
    let mut retry = reading("d", 1, 1.0, 1_767_225_600_000);
    retry.clock_synced = true;
    let (s, out) = append(s, vec![retry], t + 40_000);
    assert!(matches!(out[0], AppendOutcome::Duplicate { .. }), "{out:?}");
    // Expiry still happens, after max_age of WAL time.
    let (s, res) = s.apply(vec![Op::Maintain], t + 61_000).unwrap();
    assert!(
        matches!(&res[0], OpResult::Maintained(m) if m.expired == 1),
        "{res:?}"
    );
    assert!(s.clock_ms() >= t + 61_000, "WAL time is committed");
}

/// Dead letters are counted from what the commit did (STYLE: count after the fact),
/// including the ones killed at lease time, which were never counted before.
#[test]
fn every_dead_letter_is_reported_once_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits();
    l.max_attempts = 1;
    let s = open_with(&dir.path().join("wal.redb"), l);
    let (s, _) = append(s, (1..=3).map(|i| reading("d", i, 1.0, 5)).collect(), 5);
    // Leased once and never settled: the next lease kills them (attempts used up).
    let lease = || Op::Lease {
        sink: "a".into(),
        max: 10,
        fill: None,
        lanes: None,
    };
    let (s, _) = s.apply(vec![lease()], 6).unwrap();
    let (mut s, r) = s.apply(vec![Op::ReleaseLeases, lease()], 7).unwrap();
    assert!(
        matches!(&r[1], OpResult::Leased(v) if v.is_empty()),
        "{r:?}"
    );
    let events = s.take_dead_events();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events
        .iter()
        .all(|(sink, class)| sink == "a" && *class == DeadClass::MaxAttempts));
    assert!(s.take_dead_events().is_empty(), "reported once");
}
