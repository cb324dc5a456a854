//! Live-first leases ([`Lanes`]): records accepted after the sink's split go first and are
//! not held by the backlog's grant; the backlog fills the rest of the batch; each lane is
//! served in seq order; the split moves to the head when a lease asks.

use super::tests::{limits, rec};
use super::*;

fn lease(max: usize, backlog_max: usize, split_now: bool) -> Op {
    Op::Lease {
        sink: "a".into(),
        max,
        fill: None,
        lanes: Some(Lanes {
            backlog_max,
            split_now,
        }),
    }
}

/// (seq, live) of what a lease handed out.
fn got(r: &OpResult) -> Vec<(u64, bool)> {
    let OpResult::Leased(v) = r else {
        panic!("{r:?}")
    };
    v.iter().map(|l| (l.seq, l.live)).collect()
}

fn append(s: WalStore, keys: std::ops::Range<u32>) -> WalStore {
    let recs = keys.map(|k| rec(&format!("k{k}"), 0)).collect();
    s.apply(vec![Op::Append(recs)], 0).unwrap().0
}

fn ack(s: WalStore, seqs: &[u64]) -> WalStore {
    let outcomes = seqs.iter().map(|q| (*q, Outcome::Acked)).collect();
    let settle = Op::Settle {
        sink: "a".into(),
        outcomes,
    };
    s.apply(vec![settle], 0).unwrap().0
}

#[test]
fn live_records_go_first_and_the_backlog_fills_within_its_grant() {
    let dir = tempfile::tempdir().unwrap();
    let s = WalStore::open(&dir.path().join("wal.redb"), vec!["a".into()], limits()).unwrap();
    // Seqs 1..=10 are in the WAL before the first lane lease: backlog.
    let s = append(s, 0..10);
    // The first lease sets the split at the head (11): nothing live yet, 3 of the backlog.
    let (s, r) = s.apply(vec![lease(5, 3, false)], 0).unwrap();
    assert_eq!(got(&r[0]), [(1, false), (2, false), (3, false)]);
    // Two live readings arrive; the ceiling grants no backlog now: the live ones go anyway.
    let s = append(s, 10..12);
    let (s, r) = s.apply(vec![lease(5, 0, false)], 0).unwrap();
    assert_eq!(got(&r[0]), [(11, true), (12, true)]);
    // Live first, then the backlog in order after what is in flight — no more of it than
    // the batch carries live records.
    let s = append(s, 12..13);
    let (s, r) = s.apply(vec![lease(4, 10, false)], 0).unwrap();
    assert_eq!(got(&r[0]), [(4, false), (13, true)]);
    let s = ack(s, &[1, 2, 3, 4, 11, 12, 13]);
    // 14 and 15 pile up during an outage; when it ends the split moves to the head (16):
    // they join 5..=10 in the backlog, behind it.
    let s = append(s, 13..15);
    let (s, r) = s.apply(vec![lease(10, 2, true)], 0).unwrap();
    assert_eq!(got(&r[0]), [(5, false), (6, false)]);
    let s = append(s, 15..16);
    let (s, r) = s.apply(vec![lease(10, 10, false)], 0).unwrap();
    assert_eq!(got(&r[0]), [(7, false), (16, true)]);
    let (_, r) = s.apply(vec![lease(10, 10, false)], 0).unwrap();
    assert_eq!(
        got(&r[0]),
        [
            (8, false),
            (9, false),
            (10, false),
            (14, false),
            (15, false)
        ],
        "each lane in seq order"
    );
}
