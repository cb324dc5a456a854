//! Kept history (`store/history.rs`): a settled record stays findable with each sink's ack
//! for `history_ms`, within `history_max_bytes`, and `verify` accepts what it keeps.

use super::tests::{limits, rec};
use super::*;

fn kept(history_ms: u64, history_max_bytes: u64) -> WalLimits {
    WalLimits {
        history_ms,
        history_max_bytes,
        ..limits()
    }
}

fn lease(sink: &str) -> Op {
    Op::Lease {
        sink: sink.into(),
        max: 100,
        fill: None,
        lanes: None,
    }
}

fn ack(sink: &str, seqs: std::ops::RangeInclusive<u64>) -> Op {
    Op::Settle {
        sink: sink.into(),
        outcomes: seqs.map(|s| (s, Outcome::Acked)).collect(),
    }
}

fn run(s: WalStore, ops: Vec<Op>, now: u64) -> WalStore {
    s.apply(ops, now).unwrap().0
}

#[test]
fn an_acked_record_is_kept_with_each_sinks_ack_until_its_time_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    let sinks = vec!["a".to_string(), "b".to_string()];
    let s = WalStore::open(&path, sinks, kept(10_000, 1 << 30)).unwrap();
    let s = run(s, vec![Op::Append(vec![rec("k1", 0), rec("k2", 0)])], 100);
    let s = run(s, vec![lease("a"), lease("b")], 200);
    // Sink a acks both; b holds them: still live, a's ack noted.
    let s = run(s, vec![ack("a", 1..=2)], 300);
    assert_eq!((s.stats().records, s.stats().history_records), (2, 0));
    // b acks k1 only: k1 is settled and kept, no longer live.
    let s = run(s, vec![ack("b", 1..=1)], 400);
    let st = s.stats();
    assert_eq!((st.records, st.history_records), (1, 1));
    assert!(st.history_bytes > 0);
    drop(s);
    let v = WalStore::offline_find(&path, "k1")
        .unwrap()
        .expect("k1 kept");
    assert_eq!(v.settled_at_wal_ms, Some(400));
    let by_sink: Vec<_> = v
        .sinks
        .iter()
        .map(|x| (x.sink.as_str(), x.state, x.attempts, x.acked_at_wal_ms))
        .collect();
    assert_eq!(
        by_sink,
        [
            ("a", "acked", Some(1), Some(300)),
            ("b", "acked", Some(1), Some(400))
        ]
    );
    let v = WalStore::offline_find(&path, "k2")
        .unwrap()
        .expect("k2 live");
    assert_eq!(v.settled_at_wal_ms, None);
    assert_eq!((v.sinks[0].state, v.sinks[1].state), ("acked", "pending"));
    let report = WalStore::verify(&path).unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!((report.records, report.history_records), (1, 1));

    // Kept until 10 s after it settled, then maintenance deletes it (and only it).
    let s = WalStore::open(&path, vec!["a".into(), "b".into()], kept(10_000, 1 << 30)).unwrap();
    let s = run(s, vec![Op::Maintain], 10_399);
    assert_eq!(s.stats().history_records, 1);
    let (s, r) = s.apply(vec![Op::Maintain], 10_400).unwrap();
    let OpResult::Maintained(m) = &r[0] else {
        panic!("{r:?}")
    };
    assert_eq!(m.history_purged, 1);
    let st = s.stats();
    // What stays of the history: sink a's run of acks, which names k2, still held by b.
    assert_eq!(
        (st.records, st.history_records, st.history_bytes),
        (1, 0, 8 + 1 + 20)
    );
    drop(s);
    assert!(WalStore::offline_find(&path, "k1").unwrap().is_none());
    let report = WalStore::verify(&path).unwrap();
    assert!(report.ok(), "{report:?}");
}

#[test]
fn the_oldest_go_first_past_the_bytes_and_all_of_it_when_history_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    let s = WalStore::open(&path, vec!["a".into()], kept(1 << 40, 1 << 30)).unwrap();
    let recs = (0..10).map(|i| rec(&format!("k{i}"), 0)).collect();
    let s = run(s, vec![Op::Append(recs), lease("a")], 100);
    let s = run(s, vec![ack("a", 1..=10)], 200);
    let st = s.stats();
    assert_eq!((st.records, st.history_records), (0, 10));
    let per = st.history_bytes / 10;
    drop(s);
    // Room for four: the six oldest go.
    let s = WalStore::open(&path, vec!["a".into()], kept(1 << 40, 4 * per + per / 2)).unwrap();
    let s = run(s, vec![Op::Maintain], 300);
    assert_eq!(s.stats().history_records, 4);
    drop(s);
    assert!(WalStore::offline_find(&path, "k5").unwrap().is_none());
    assert!(WalStore::offline_find(&path, "k6").unwrap().is_some());
    // History turned off: what was kept goes at the next maintenance; new acks keep nothing.
    let s = WalStore::open(&path, vec!["a".into()], kept(0, 1 << 30)).unwrap();
    let s = run(s, vec![Op::Maintain], 400);
    let s = run(s, vec![Op::Append(vec![rec("k10", 0)]), lease("a")], 500);
    let s = run(s, vec![ack("a", 11..=11)], 600);
    let st = s.stats();
    assert_eq!(
        (st.records, st.history_records, st.history_bytes),
        (0, 0, 0)
    );
    drop(s);
    assert!(WalStore::verify(&path).unwrap().ok());
}

#[test]
fn a_long_run_of_records_still_held_does_not_stall_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    let sinks = vec!["a".to_string(), "b".to_string()];
    let s = WalStore::open(&path, sinks, kept(1_000, 1 << 30)).unwrap();
    // 2,500 records sink a acked and b still holds (a row each), then one both acked.
    let recs = (0..2_501).map(|i| rec(&format!("k{i}"), 0)).collect();
    let many = |sink: &str| Op::Lease {
        sink: sink.into(),
        max: 3_000,
        fill: None,
        lanes: None,
    };
    let s = run(s, vec![Op::Append(recs), many("a"), many("b")], 100);
    let s = run(s, vec![ack("a", 1..=2_501), ack("b", 2_501..=2_501)], 200);
    assert_eq!(s.stats().history_records, 1);
    // Its time is up: the first sweep's budget goes on held rows, the next gets to it.
    let (s, r) = s.apply(vec![Op::Maintain], 5_000).unwrap();
    let OpResult::Maintained(m) = &r[0] else {
        panic!("{r:?}")
    };
    // Age only, nothing came in since: another sweep is due, but not urgent.
    assert!(m.history_more && !m.more, "{m:?}");
    let s = run(s, vec![Op::Maintain], 5_001);
    assert_eq!(s.stats().history_records, 0);
    assert_eq!(s.stats().records, 2_500);
}

/// Session 13: in a 1 M drain a quarter of the commit thread went to trimming the records the
/// drain itself pushed over `history_max_bytes`, sweep after sweep between its leases and
/// settles. That trimming is now reported as `history_more` (the actor paces it while
/// deliveries are queued) as long as the stored total (live + kept) is not above what it was
/// when history was last within its cap; more stored since makes it urgent (`more`) again.
#[test]
fn trimming_what_a_drain_pushed_over_the_cap_waits_unless_more_came_in() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    let s = WalStore::open(&path, vec!["a".into()], kept(1 << 40, 2_000)).unwrap();
    let recs = |from: usize, n: usize| (from..from + n).map(|i| rec(&format!("k{i}"), 0)).collect();
    // A backlog of 5,000, history empty: the sweep takes the stored total as its mark.
    let s = run(s, vec![Op::Append(recs(0, 5_000)), Op::Maintain], 100);
    let lease = Op::Lease {
        sink: "a".into(),
        max: 5_000,
        fill: None,
        lanes: None,
    };
    // Drained: all 5,000 kept, far over the 2,000-byte cap; the sweep trims its budget.
    let s = run(s, vec![lease, ack("a", 1..=5_000)], 200);
    let maintain = |s: WalStore, now| {
        let (s, r) = s.apply(vec![Op::Maintain], now).unwrap();
        let OpResult::Maintained(m) = r[0].clone() else {
            panic!("{r:?}")
        };
        (s, m)
    };
    let (s, m) = maintain(s, 300);
    assert_eq!(m.history_purged, 2_000, "one sweep's budget");
    assert!(
        m.history_more && !m.more,
        "what the drain moved may wait: {m:?}"
    );
    // 2,500 new records: the stored total is over the mark, the rest of the trim is urgent.
    let s = run(s, vec![Op::Append(recs(5_000, 2_500))], 400);
    let (s, m) = maintain(s, 500);
    assert_eq!(m.history_purged, 2_000, "one sweep's budget");
    assert!(m.more, "more came in since: {m:?}");
    // The rest fits one sweep, down to the cap: nothing more either way.
    let (s, m) = maintain(s, 600);
    assert!(!m.more && !m.history_more, "{m:?}");
    assert!(s.stats().history_bytes <= 2_000, "{:?}", s.stats());
    drop(s);
    assert!(WalStore::verify(&path).unwrap().ok());
}

/// Format 4 kept a CBOR lifecycle per record (`history: seq -> row`); written here as that
/// release wrote it, not with this release's types.
#[test]
fn format_4s_lifecycle_rows_become_runs_of_acks_with_the_counters_kept() {
    use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
    const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
    const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
    const ACKS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("acks");
    let cbor = |v: serde_json::Value| {
        let mut b = Vec::new();
        ciborium::into_writer(&v, &mut b).unwrap();
        b
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    let sinks = vec!["a".to_string(), "b".to_string()];
    // k1 settled (a at 300, b at 400, after 2 attempts); k2 acked by a, pending at b.
    let s = WalStore::open(&path, sinks.clone(), kept(10_000, 1 << 30)).unwrap();
    let s = run(s, vec![Op::Append(vec![rec("k1", 0), rec("k2", 0)])], 100);
    let s = run(s, vec![lease("a"), lease("b")], 200);
    drop(s);
    // What format 4 held then: the same rows with the acks as lifecycles, b's row of k1 gone.
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_write().unwrap();
    let row1 = cbor(serde_json::json!({"settled_at_ms": 400, "acked": [
        {"sink": "a", "attempts": 1, "at_ms": 300}, {"sink": "b", "attempts": 2, "at_ms": 400}]}));
    let row2 = cbor(serde_json::json!({"acked": [{"sink": "a", "attempts": 1, "at_ms": 300}]}));
    {
        let len1 = txn
            .open_table(RECORDS)
            .unwrap()
            .get(1)
            .unwrap()
            .unwrap()
            .value()
            .len() as u64;
        let mut pending: redb::Table<(&str, u64), u32> =
            txn.open_table(TableDefinition::new("pending")).unwrap();
        for (sink, seq) in [("a", 1), ("a", 2), ("b", 1)] {
            pending.remove((sink, seq)).unwrap();
        }
        let mut h = txn.open_table(HISTORY).unwrap();
        h.insert(1, row1.as_slice()).unwrap();
        h.insert(2, row2.as_slice()).unwrap();
        let mut m = txn.open_table(META).unwrap();
        let live = m.get("live_bytes").unwrap().unwrap().value();
        for (k, v) in [
            ("format_version", 4),
            ("records", 1),
            ("live_bytes", live - len1),
            ("history_records", 1),
            ("history_bytes", len1 + row1.len() as u64),
            ("pending/a", 0),
            ("pending/b", 1),
            ("acked/a", 2),
            ("acked/b", 1),
        ] {
            m.insert(k, v).unwrap();
        }
    }
    txn.delete_table(ACKS).unwrap();
    txn.commit().unwrap();
    drop(db);

    let s = WalStore::open(&path, sinks, kept(10_000, 1 << 30)).unwrap();
    assert_eq!((s.stats().records, s.stats().history_records), (1, 1));
    drop(s);
    let report = WalStore::verify(&path).unwrap();
    assert!(report.ok(), "{report:?}");
    let v = WalStore::offline_find(&path, "k1").unwrap().unwrap();
    assert_eq!(v.settled_at_wal_ms, Some(400));
    let acks: Vec<_> = v
        .sinks
        .iter()
        .map(|x| (x.sink.as_str(), x.state, x.attempts, x.acked_at_wal_ms))
        .collect();
    assert_eq!(
        acks,
        [
            ("a", "acked", Some(1), Some(300)),
            ("b", "acked", Some(2), Some(400))
        ]
    );
    let v = WalStore::offline_find(&path, "k2").unwrap().unwrap();
    assert_eq!((v.sinks[0].state, v.sinks[1].state), ("acked", "pending"));
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    assert!(txn.open_table(HISTORY).is_err(), "the lifecycle table goes");
    assert_eq!(txn.open_table(ACKS).unwrap().len().unwrap(), 3);
}
