//! A nearly full disk refuses appends, never settles (issue 9, part 7): the store's side.

use super::tests::{limits, rec};
use super::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// An append of `k2` and a lease of sink `a`, in one commit at time 2.
fn append_beside_a_lease(s: WalStore) -> (WalStore, Vec<OpResult>) {
    let lease = Op::Lease {
        sink: "a".into(),
        max: 10,
        fill: None,
        lanes: None,
    };
    s.apply(vec![Op::Append(vec![rec("k2", 2)]), lease], 2)
        .unwrap()
}

#[test]
fn appends_wait_for_room_while_settles_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits();
    l.min_free_bytes = 1_000;
    let mut s = WalStore::open(&dir.path().join("wal.redb"), vec!["a".into()], l).unwrap();
    let free = Arc::new(AtomicU64::new(10_000));
    let probe = free.clone();
    s.set_free_space(Arc::new(move || Some(probe.load(Ordering::SeqCst))));
    let (s, r) = s.apply(vec![Op::Append(vec![rec("k1", 1)])], 1).unwrap();
    assert!(matches!(&r[0], OpResult::Appended(Ok(_))));
    // The disk fills: appends refused whole, nothing stored ...
    free.store(999, Ordering::SeqCst);
    let (s, r) = append_beside_a_lease(s);
    assert!(
        matches!(
            &r[0],
            OpResult::Appended(Err(AppendRefused::DiskFull(DiskFull {
                free: 999,
                min_free: 1_000,
                reserve_in_use: false,
            })))
        ),
        "{r:?}"
    );
    assert_eq!(s.stats().records, 1);
    // ... while delivery settles and frees the record in the same commit as a refused append.
    let OpResult::Leased(leased) = &r[1] else {
        panic!("{r:?}")
    };
    let acks = leased.iter().map(|l| (l.seq, Outcome::Acked)).collect();
    let (s, r) = s
        .apply(
            vec![
                Op::Settle {
                    sink: "a".into(),
                    outcomes: acks,
                },
                Op::Append(vec![rec("k3", 3)]),
            ],
            3,
        )
        .unwrap();
    assert!(matches!(&r[0], OpResult::Settled { acked: 1, .. }), "{r:?}");
    assert!(matches!(
        &r[1],
        OpResult::Appended(Err(AppendRefused::DiskFull(_)))
    ));
    assert_eq!(s.stats().records, 0);
    // Room again: appends resume by themselves.
    free.store(5_000, Ordering::SeqCst);
    let (_, r) = s.apply(vec![Op::Append(vec![rec("k3", 4)])], 4).unwrap();
    assert!(matches!(&r[0], OpResult::Appended(Ok(_))));
}

#[test]
fn enospc_is_told_apart_from_other_storage_errors() {
    assert!(
        WalError::Storage("I/O error: No space left on device (os error 28)".into()).is_no_space()
    );
    assert!(!WalError::Storage("I/O error: Input/output error (os error 5)".into()).is_no_space());
    assert!(!WalError::AlreadyOpen.is_no_space());
    let open = WalError::Open {
        path: "wal.redb".into(),
        source: redb::DatabaseError::Storage(redb::StorageError::Io(
            std::io::Error::from_raw_os_error(28),
        )),
    };
    assert!(open.is_no_space(), "{open}");
}

#[test]
fn tight_after_enospc_appends_wait_whatever_min_free_says_and_settles_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits();
    l.min_free_bytes = 0; // the guard off, as a misconfigured box has it
    let s = WalStore::open(&dir.path().join("wal.redb"), vec!["a".into()], l).unwrap();
    let (mut s, r) = s.apply(vec![Op::Append(vec![rec("k1", 1)])], 1).unwrap();
    assert!(matches!(&r[0], OpResult::Appended(Ok(_))));
    s.set_tight(true);
    let (s, r) = append_beside_a_lease(s);
    let OpResult::Appended(Err(AppendRefused::DiskFull(d))) = &r[0] else {
        panic!("{r:?}")
    };
    assert!(d.reserve_in_use);
    assert!(d.to_string().contains("reserve is in use"), "{d}");
    let OpResult::Leased(leased) = &r[1] else {
        panic!("{r:?}")
    };
    let acks = leased.iter().map(|l| (l.seq, Outcome::Acked)).collect();
    let (mut s, r) = s
        .apply(
            vec![Op::Settle {
                sink: "a".into(),
                outcomes: acks,
            }],
            3,
        )
        .unwrap();
    assert!(matches!(&r[0], OpResult::Settled { acked: 1, .. }), "{r:?}");
    s.set_tight(false);
    let (_, r) = s.apply(vec![Op::Append(vec![rec("k3", 4)])], 4).unwrap();
    assert!(matches!(&r[0], OpResult::Appended(Ok(_))));
}
