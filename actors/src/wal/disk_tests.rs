//! A nearly full disk refuses appends, never settles (issue 9, part 7): the store's side.

use super::tests::{limits, rec};
use super::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
    let (s, r) = s
        .apply(
            vec![
                Op::Append(vec![rec("k2", 2)]),
                Op::Lease {
                    sink: "a".into(),
                    max: 10,
                    fill: None,
                },
            ],
            2,
        )
        .unwrap();
    assert!(
        matches!(
            &r[0],
            OpResult::Appended(Err(AppendRefused::DiskFull(DiskFull {
                free: 999,
                min_free: 1_000
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
}
