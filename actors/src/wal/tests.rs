//! Focused unit tests of WalStore (the model-based property test is `model_tests.rs`).

use super::*;

const SINKS: [&str; 2] = ["a", "b"];

pub(super) fn limits() -> WalLimits {
    WalLimits {
        max_bytes: 1 << 30,
        max_records: 1_000_000,
        max_age_ms: 1 << 40,
        idempotency_window_ms: 1 << 40,
        idempotency_max_keys: u64::MAX,
        dead_retention_ms: 1 << 40,
        max_rejected: 1_000,
        max_attempts: 3,
        lease_ms: 100,
        cache_bytes: 4 << 20,
        // The per-device share has its own tests (`quota.rs`, `idem_tests.rs`); the model
        // here is the WAL without it.
        device_max: Usage::default(),
        device_fair_share: false,
        max_dead_per_sink: u64::MAX,
        min_free_bytes: 0,
        compact_min_bytes: 0,
        compact_settle_ms: 0,
        max_file_bytes: 0,
        history_ms: 0,
        history_max_bytes: 0,
    }
}

pub(crate) fn rec(key: &str, ts: u64) -> Record {
    Record {
        device_id: "dev-1".into(),
        idempotency_key: key.into(),
        correlation_id: format!("corr-{key}"),
        gateway_id: "gw".into(),
        receive_ts_ms: ts,
        source: Source::Http,
        schema: 1,
        msg_id: None,
        device_seq: None,
        device_ts: None,
        data: serde_json::Map::new(),
        clock_synced: true,
        fingerprint: Default::default(),
        encoded: Default::default(),
        route: Default::default(),
        trace: None,
        send_trace: None,
    }
}

fn open(dir: &std::path::Path, l: WalLimits) -> WalStore {
    WalStore::open(
        &dir.join("wal.redb"),
        SINKS.iter().map(|s| s.to_string()).collect(),
        l,
    )
    .unwrap()
}

fn one(store: WalStore, op: Op, now: u64) -> (WalStore, OpResult) {
    let (s, mut r) = store.apply(vec![op], now).unwrap();
    (s, r.pop().unwrap())
}

#[test]
fn group_commit_answers_each_op_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), limits());
    let ops = vec![
        Op::Append(vec![rec("k1", 10)]),
        Op::Append(vec![rec("k2", 10), rec("k3", 10)]),
        Op::Append(vec![rec("k1", 10)]),
    ];
    let (s, r) = s.apply(ops, 10).unwrap();
    assert_eq!(r.len(), 3);
    let seqs: Vec<_> = r
        .iter()
        .flat_map(|r| match r {
            OpResult::Appended(Ok(v)) => v.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        seqs,
        vec![
            AppendOutcome::Stored {
                seq: 1,
                correlation_id: "corr-k1".into(),
                key_conflict: false,
            },
            AppendOutcome::Stored {
                seq: 2,
                correlation_id: "corr-k2".into(),
                key_conflict: false,
            },
            AppendOutcome::Stored {
                seq: 3,
                correlation_id: "corr-k3".into(),
                key_conflict: false,
            },
            AppendOutcome::Duplicate {
                seq: 1,
                correlation_id: "corr-k1".into()
            },
        ]
    );
    let st = s.stats();
    assert_eq!(st.records, 3);
    assert_eq!(
        st.sinks.iter().map(|x| x.pending).collect::<Vec<_>>(),
        vec![3, 3]
    );
}

#[test]
fn duplicates_inside_one_request_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), limits());
    let (s, r) = one(s, Op::Append(vec![rec("x", 1), rec("x", 1)]), 1);
    assert_eq!(
        r,
        OpResult::Appended(Ok(vec![
            AppendOutcome::Stored {
                seq: 1,
                correlation_id: "corr-x".into(),
                key_conflict: false,
            },
            AppendOutcome::Duplicate {
                seq: 1,
                correlation_id: "corr-x".into()
            },
        ]))
    );
    assert_eq!(s.stats().records, 1);
}

#[test]
fn idempotency_key_forgotten_after_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits();
    l.idempotency_window_ms = 1_000;
    let s = open(dir.path(), l);
    let (s, _) = one(s, Op::Append(vec![rec("k", 0)]), 0);
    let (s, r) = one(s, Op::Append(vec![rec("k", 500)]), 500);
    assert!(
        matches!(r, OpResult::Appended(Ok(ref v)) if matches!(v[0], AppendOutcome::Duplicate { .. }))
    );
    let (s, r) = one(s, Op::Maintain, 2_000);
    assert_eq!(
        r,
        OpResult::Maintained(MaintainReport {
            idempotency_purged: 1,
            ..Default::default()
        })
    );
    let (s, r) = one(s, Op::Append(vec![rec("k", 2_000)]), 2_000);
    assert!(
        matches!(r, OpResult::Appended(Ok(ref v)) if matches!(v[0], AppendOutcome::Stored { seq: 2, .. }))
    );
    assert_eq!(s.stats().idempotency_keys, 1);
}

/// The cap is kept at a commit's granularity (format 6: a commit's keys share one row,
/// `store/idem_rows/`): past it the oldest commits' keys go, never the newest commit's.
#[test]
fn idempotency_keys_beyond_the_count_limit_are_forgotten_oldest_commit_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits();
    l.idempotency_max_keys = 2;
    let mut s = open(dir.path(), l.clone());
    for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
        s = one(s, Op::Append(vec![rec(k, i as u64 + 1)]), i as u64 + 1).0;
    }
    assert_eq!(
        s.stats().idempotency_keys,
        2,
        "the cap holds as commits add keys"
    );
    let (s, r) = one(s, Op::Append(vec![rec("a", 4), rec("c", 4)]), 4);
    let OpResult::Appended(Ok(v)) = r else {
        panic!()
    };
    assert!(
        matches!(v[0], AppendOutcome::Stored { .. }),
        "a was the oldest, forgotten"
    );
    assert!(
        matches!(v[1], AppendOutcome::Duplicate { .. }),
        "c is still remembered"
    );
    // One commit of more keys than the cap keeps them all; everything older goes.
    let (s, _) = one(
        s,
        Op::Append(vec![rec("d", 5), rec("e", 5), rec("f", 5)]),
        5,
    );
    assert_eq!(s.stats().idempotency_keys, 3);
    let (s, r) = one(s, Op::Append(vec![rec("d", 6), rec("c", 6)]), 6);
    let OpResult::Appended(Ok(v)) = r else {
        panic!()
    };
    assert!(matches!(v[0], AppendOutcome::Duplicate { .. }), "{v:?}");
    assert!(matches!(v[1], AppendOutcome::Stored { .. }), "{v:?}");
    assert_eq!(
        s.stats().idempotency_keys,
        1,
        "d, e and f went: c's commit is newer"
    );
    // Reopened: the index is rebuilt from the rows alone.
    drop(s);
    let s = open(dir.path(), l);
    let (_, r) = one(s, Op::Append(vec![rec("c", 7), rec("e", 7)]), 7);
    let OpResult::Appended(Ok(v)) = r else {
        panic!()
    };
    assert!(matches!(v[0], AppendOutcome::Duplicate { .. }), "{v:?}");
    assert!(matches!(v[1], AppendOutcome::Stored { .. }), "{v:?}");
}

#[test]
fn full_wal_refuses_the_whole_append_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits();
    l.max_records = 2;
    let s = open(dir.path(), l);
    let (s, _) = one(s, Op::Append(vec![rec("a", 0)]), 0);
    let (s, r) = one(s, Op::Append(vec![rec("b", 0), rec("c", 0)]), 0);
    assert!(
        matches!(
            r,
            OpResult::Appended(Err(AppendRefused::Full(Full { records: 1, .. })))
        ),
        "{r:?}"
    );
    assert_eq!(s.count_rows().unwrap().0, 1);
    // Draining makes room again.
    let (s, _) = one(
        s,
        Op::Lease {
            sink: "a".into(),
            max: 10,
            fill: None,
            lanes: None,
        },
        0,
    );
    let (s, _) = one(
        s,
        Op::Lease {
            sink: "b".into(),
            max: 10,
            fill: None,
            lanes: None,
        },
        0,
    );
    let (s, _) = one(
        s,
        Op::Settle {
            sink: "a".into(),
            outcomes: vec![(1, Outcome::Acked)],
        },
        0,
    );
    let (s, _) = one(
        s,
        Op::Settle {
            sink: "b".into(),
            outcomes: vec![(1, Outcome::Acked)],
        },
        0,
    );
    assert_eq!(s.stats().records, 0);
    let (_, r) = one(s, Op::Append(vec![rec("b", 0), rec("c", 0)]), 0);
    assert!(matches!(r, OpResult::Appended(Ok(_))));
}

#[test]
fn sinks_progress_independently_and_record_deleted_when_all_done() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), limits());
    let (s, _) = one(s, Op::Append(vec![rec("a", 0), rec("b", 0)]), 0);
    let (s, r) = one(
        s,
        Op::Lease {
            sink: "a".into(),
            max: 10,
            fill: None,
            lanes: None,
        },
        0,
    );
    let OpResult::Leased(l) = r else { panic!() };
    assert_eq!(
        l.iter().map(|x| (x.seq, x.attempts)).collect::<Vec<_>>(),
        vec![(1, 1), (2, 1)]
    );
    let (s, _) = one(
        s,
        Op::Settle {
            sink: "a".into(),
            outcomes: vec![(1, Outcome::Acked), (2, Outcome::Acked)],
        },
        0,
    );
    assert_eq!(s.stats().records, 2, "sink b still needs both");
    let (s, _) = one(
        s,
        Op::Lease {
            sink: "b".into(),
            max: 1,
            fill: None,
            lanes: None,
        },
        0,
    );
    let (s, _) = one(
        s,
        Op::Settle {
            sink: "b".into(),
            outcomes: vec![(1, Outcome::Dead("400 bad".into()))],
        },
        0,
    );
    let (s, _) = one(
        s,
        Op::Lease {
            sink: "b".into(),
            max: 1,
            fill: None,
            lanes: None,
        },
        0,
    );
    let (s, _) = one(
        s,
        Op::Settle {
            sink: "b".into(),
            outcomes: vec![(2, Outcome::Acked)],
        },
        0,
    );
    assert_eq!(
        s.count_rows().unwrap(),
        (1, 0, 1),
        "record 1 kept for its dead letter"
    );
    let dl = s.dead_letters("b", 10).unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].1.reason, "400 bad");
    assert_eq!(dl[0].2.as_ref().unwrap().idempotency_key, "a");
}

#[test]
fn requeue_moves_dead_letters_back_with_attempts_reset() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), limits());
    let (s, _) = one(s, Op::Append(vec![rec("a", 0), rec("b", 0)]), 0);
    let (s, _) = one(
        s,
        Op::Lease {
            sink: "a".into(),
            max: 10,
            fill: None,
            lanes: None,
        },
        0,
    );
    let outcomes = vec![
        (1, Outcome::Dead("400".into())),
        (2, Outcome::Dead("400".into())),
    ];
    let (s, _) = one(
        s,
        Op::Settle {
            sink: "a".into(),
            outcomes,
        },
        0,
    );
    let (s, r) = one(
        s,
        Op::Requeue {
            sink: "a".into(),
            limit: 1,
            filter: Default::default(),
        },
        0,
    );
    assert_eq!(r, OpResult::Requeued(1));
    let st = s.stats();
    assert_eq!((st.sinks[0].pending, st.sinks[0].dead), (1, 1));
    let (s, r) = one(
        s,
        Op::Lease {
            sink: "a".into(),
            max: 10,
            fill: None,
            lanes: None,
        },
        0,
    );
    assert!(
        matches!(r, OpResult::Leased(ref v) if v.len() == 1 && v[0].seq == 1 && v[0].attempts == 1),
        "{r:?}"
    );
    let (s, _) = one(
        s,
        Op::Settle {
            sink: "a".into(),
            outcomes: vec![(1, Outcome::Acked)],
        },
        0,
    );
    let (s, _) = one(
        s,
        Op::Lease {
            sink: "b".into(),
            max: 10,
            fill: None,
            lanes: None,
        },
        0,
    );
    let (s, _) = one(
        s,
        Op::Settle {
            sink: "b".into(),
            outcomes: vec![(1, Outcome::Acked), (2, Outcome::Acked)],
        },
        0,
    );
    assert_eq!(
        s.count_rows().unwrap(),
        (1, 0, 1),
        "record 1 deleted, 2 kept by its dead letter"
    );
}

#[test]
fn retries_end_dead_after_max_attempts_with_last_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), limits());
    let (mut s, _) = one(s, Op::Append(vec![rec("a", 0)]), 0);
    for _ in 0..3 {
        let (s2, _) = one(
            s,
            Op::Lease {
                sink: "a".into(),
                max: 1,
                fill: None,
                lanes: None,
            },
            0,
        );
        let (s2, _) = one(
            s2,
            Op::Settle {
                sink: "a".into(),
                outcomes: vec![(1, Outcome::Retry("503".into()))],
            },
            0,
        );
        s = s2;
    }
    let dl = s.dead_letters("a", 10).unwrap();
    assert_eq!(dl.len(), 1);
    assert!(
        dl[0].1.reason.contains("max attempts (3)") && dl[0].1.reason.contains("503"),
        "{:?}",
        dl[0].1
    );
}

#[test]
fn unsettled_leases_count_as_attempts_so_poison_records_end_dead() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), limits());
    let (s2, _) = one(s, Op::Append(vec![rec("a", 0)]), 0);
    s = s2;
    // The publisher "crashes" each time: lease, reopen (no settle).
    for _ in 0..3 {
        let (s2, r) = one(
            s,
            Op::Lease {
                sink: "a".into(),
                max: 1,
                fill: None,
                lanes: None,
            },
            0,
        );
        assert!(matches!(r, OpResult::Leased(ref v) if v.len() == 1));
        let (s2, _) = one(s2, Op::Maintain, 0); // make the attempt durable
        drop(s2);
        s = open(dir.path(), limits());
    }
    let (s, r) = one(
        s,
        Op::Lease {
            sink: "a".into(),
            max: 1,
            fill: None,
            lanes: None,
        },
        0,
    );
    assert_eq!(r, OpResult::Leased(vec![]));
    assert_eq!(s.stats().sinks[0].dead, 1);
}

#[test]
fn expired_records_become_dead_and_stay_inspectable() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits();
    l.max_age_ms = 1_000;
    let s = open(dir.path(), l);
    let (s, _) = one(s, Op::Append(vec![rec("old", 0)]), 0);
    let (s, _) = one(s, Op::Append(vec![rec("new", 1_500)]), 1_500);
    let (s, r) = one(s, Op::Maintain, 1_600);
    assert_eq!(
        r,
        OpResult::Maintained(MaintainReport {
            expired: 2,
            ..Default::default()
        })
    );
    assert_eq!(s.dead_letters("a", 10).unwrap()[0].1.reason, "expired");
    assert_eq!(s.stats().sinks[0].pending, 1);
}

#[test]
fn rejected_messages_are_kept_newest_first_and_bounded_by_count_and_age() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits();
    l.max_rejected = 3;
    l.dead_retention_ms = 1_000;
    let s = open(dir.path(), l.clone());
    let rej = |n: u64, at: u64| {
        Op::Reject(Rejected::new(
            at,
            Source::Mqtt,
            format!("devices/d{n}/telemetry"),
            "invalid_json",
            None,
            format!("bad {n}"),
            &vec![b'x'; 70_000],
        ))
    };
    let (s, r) = one(s, rej(1, 0), 0);
    assert_eq!(r, OpResult::Rejected(1));
    // Retention follows WAL time of keeping (the `now` of the commit), not `received_ms`.
    let (s, _) = one(s, rej(2, 10), 10);
    let (s, _) = one(s, rej(3, 20), 20);
    let (mut s, _) = one(s, rej(4, 900), 900);
    assert_eq!(s.stats().rejected, 4);
    // Over the cap: the oldest goes first.
    (s, _) = one(s, Op::Maintain, 900);
    let kept = s.reader().rejected(10).unwrap();
    assert_eq!(
        kept.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [4, 3, 2]
    );
    assert_eq!(kept[0].1.payload.len(), rejected::MAX_KEPT_PAYLOAD);
    assert_eq!(kept[0].1.payload_len, 70_000);
    // Past retention: only the young one stays, and the count survives a reopen.
    (s, _) = one(s, Op::Maintain, 1_500);
    assert_eq!(s.stats().rejected, 1);
    drop(s);
    let s = open(dir.path(), l);
    assert_eq!(s.stats().rejected, 1);
    assert_eq!(s.reader().rejected(10).unwrap()[0].1.message, "bad 4");
}

#[test]
fn released_leases_are_leased_again_first_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), limits());
    let (s, _) = one(s, Op::Append(vec![rec("a", 0), rec("b", 0)]), 0);
    let lease = |max| Op::Lease {
        sink: "a".into(),
        max,
        fill: None,
        lanes: None,
    };
    let (s, _) = one(s, lease(1), 0); // a dispatcher holds "a", then dies
    let (s, _) = one(s, Op::Append(vec![rec("c", 0)]), 0);
    let (s, r) = s.apply(vec![Op::ReleaseLeases, lease(5)], 1).unwrap();
    assert_eq!(r[0], OpResult::LeasesReleased(1));
    let OpResult::Leased(v) = &r[1] else {
        panic!("{r:?}")
    };
    let keys: Vec<&str> = v
        .iter()
        .map(|l| l.record.idempotency_key.as_str())
        .collect();
    assert_eq!(
        keys,
        ["a", "b", "c"],
        "the released record first, long before its lease expiry"
    );
    assert_eq!(
        v[0].attempts, 2,
        "the dead dispatcher's attempt still counts"
    );
    assert_eq!(s.stats().sinks[0].in_flight, 3);
}

#[test]
fn a_graceful_stop_returns_leases_with_their_attempt_refunded_durably() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), limits());
    let (s, _) = one(s, Op::Append(vec![rec("a", 0), rec("b", 0)]), 0);
    let lease = || Op::Lease {
        sink: "a".into(),
        max: 1,
        fill: None,
        lanes: None,
    };
    let (s, _) = one(s, lease(), 0);
    let (s, r) = one(s, Op::StopLeases, 1);
    assert_eq!(r, OpResult::LeasesReleased(1));
    assert_eq!(s.stats().sinks[0].in_flight, 0);
    // Durable: reopened (a restart), the record's attempt is not counted.
    drop(s);
    let s = open(dir.path(), limits());
    assert_eq!(s.dump().unwrap().pending[&("a".to_string(), 1)], 0);
    let (_, r) = one(s, lease(), 2);
    let OpResult::Leased(v) = &r else {
        panic!("{r:?}")
    };
    assert_eq!((v[0].seq, v[0].attempts), (1, 1), "its first attempt again");
}

#[test]
fn lease_expiry_makes_records_leasable_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), limits());
    let (s, _) = one(s, Op::Append(vec![rec("a", 0)]), 0);
    let (s, r) = one(
        s,
        Op::Lease {
            sink: "a".into(),
            max: 5,
            fill: None,
            lanes: None,
        },
        0,
    );
    assert!(matches!(r, OpResult::Leased(ref v) if v.len() == 1));
    let (s, r) = one(
        s,
        Op::Lease {
            sink: "a".into(),
            max: 5,
            fill: None,
            lanes: None,
        },
        50,
    );
    assert_eq!(r, OpResult::Leased(vec![]), "still in flight");
    let (_, r) = one(
        s,
        Op::Lease {
            sink: "a".into(),
            max: 5,
            fill: None,
            lanes: None,
        },
        100,
    );
    assert!(matches!(r, OpResult::Leased(ref v) if v.len() == 1 && v[0].attempts == 2));
}

/// The ingest edge caches each record's encoding so the commit path only copies it; a reading
/// whose key conflicts is stored under a derived key, so its cached bytes must not be used.
#[test]
fn a_conflicting_reading_is_stored_with_its_derived_key_despite_a_cached_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), limits());
    let cached = |mut r: Record| {
        r.encoded.0 = Some(r.encode());
        r
    };
    let first = cached(rec("dev-1/seq/1", 10));
    let mut second = rec("dev-1/seq/1", 10);
    second.data.insert("temp".into(), serde_json::json!(99)); // other content, same key
    let second = cached(second);
    let (s, r) = one(s, Op::Append(vec![first]), 10);
    assert!(matches!(r, OpResult::Appended(Ok(_))), "{r:?}");
    let (s, r) = one(s, Op::Append(vec![second]), 11);
    let OpResult::Appended(Ok(out)) = r else {
        panic!("{r:?}")
    };
    assert!(
        matches!(
            out[0],
            AppendOutcome::Stored {
                key_conflict: true,
                ..
            }
        ),
        "{out:?}"
    );
    let lease = Op::Lease {
        sink: SINKS[0].into(),
        max: 10,
        fill: None,
        lanes: None,
    };
    let (_s, r) = one(s, lease, 12);
    let OpResult::Leased(got) = r else {
        panic!("{r:?}")
    };
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].record.idempotency_key, "dev-1/seq/1");
    assert_ne!(
        got[1].record.idempotency_key, "dev-1/seq/1",
        "stored under its derived key"
    );
    assert_eq!(got[1].record.data["temp"], 99);
}
