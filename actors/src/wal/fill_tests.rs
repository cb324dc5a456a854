//! Leases that wait for a full batch ([`Fill`]): nothing is leased (and no attempt counted)
//! until the batch is full by records or bytes, or its oldest record has waited long enough.

use super::tests::{limits, rec};
use super::*;

fn keys(r: &OpResult) -> Vec<String> {
    let OpResult::Leased(v) = r else {
        panic!("{r:?}")
    };
    v.iter().map(|l| l.record.idempotency_key.clone()).collect()
}

fn lease(max: usize, max_bytes: u64) -> Op {
    Op::Lease {
        sink: "a".into(),
        max,
        fill: Some(Fill {
            max_bytes,
            max_age_ms: 1_000,
        }),
        lanes: None,
    }
}

#[test]
fn a_fill_lease_waits_for_records_bytes_or_age() {
    let dir = tempfile::tempdir().unwrap();
    let s = WalStore::open(&dir.path().join("wal.redb"), vec!["a".into()], limits()).unwrap();
    let (s, _) = s
        .apply(vec![Op::Append(vec![rec("k1", 0), rec("k2", 0)])], 100)
        .unwrap();
    // Two pending, room for three, 1 MiB, accepted 400 ms ago: not yet.
    let (s, r) = s.apply(vec![lease(3, 1 << 20)], 500).unwrap();
    assert!(keys(&r[0]).is_empty());
    assert_eq!(s.stats().sinks[0].in_flight, 0, "nothing leased");
    // Full by records.
    let (s, r) = s.apply(vec![lease(2, 1 << 20)], 500).unwrap();
    assert_eq!(keys(&r[0]), ["k1", "k2"]);
    let (s, _) = s
        .apply(
            vec![Op::Settle {
                sink: "a".into(),
                outcomes: vec![(1, Outcome::Release), (2, Outcome::Release)],
            }],
            500,
        )
        .unwrap();
    // Full by bytes: one body is over 10 bytes, so the lease is cut to the first record.
    let (s, r) = s.apply(vec![lease(3, 10)], 500).unwrap();
    assert_eq!(keys(&r[0]), ["k1"]);
    // Old enough: the 1 s age is reached at WAL time 1,100 for records accepted at 100 (k1's
    // 100 ms lease has expired by then: it is pending again).
    let (s, r) = s.apply(vec![lease(5, 1 << 20)], 1_099).unwrap();
    assert!(keys(&r[0]).is_empty(), "the oldest waited 999 ms");
    let (_, r) = s.apply(vec![lease(5, 1 << 20)], 1_100).unwrap();
    assert_eq!(keys(&r[0]), ["k1", "k2"]);
}
