//! The WAL actor's helpers, tested without the runtime where they can be.

mod read_tests {
    use super::super::{read_answer, WalError};

    #[tokio::test]
    async fn a_failed_read_is_an_answer_not_an_empty_list() {
        let ok = tokio::task::spawn_blocking(|| Ok::<_, WalError>(vec![1])).await;
        assert_eq!(read_answer(ok), Ok(vec![1]));
        let failed = tokio::task::spawn_blocking(|| {
            Err::<Vec<u8>, _>(WalError::Storage("I/O error: Input/output error".into()))
        })
        .await;
        assert_eq!(
            read_answer(failed),
            Err("WAL storage error: I/O error: Input/output error".to_string())
        );
    }
}

mod reserve_tests {
    use super::super::disk::{ensure_reserve, OpenArgs};

    #[test]
    fn the_reserve_is_made_only_with_room_to_spare() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = OpenArgs {
            path: dir.path().join("wal.redb"),
            sinks: vec![],
            limits: crate::wal::tests::limits(),
            reserve_bytes: 3 << 20,
            min_free_bytes: 0,
        };
        assert!(ensure_reserve(&o));
        assert_eq!(std::fs::metadata(o.reserve_path()).unwrap().len(), 3 << 20);
        assert!(ensure_reserve(&o), "already there");
        std::fs::remove_file(o.reserve_path()).unwrap();
        o.min_free_bytes = u64::MAX / 2; // no filesystem has that much to spare
        assert!(!ensure_reserve(&o));
        assert!(!o.reserve_path().exists());
    }
}

mod clock_tests {
    use super::super::WalClock;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn wal_time_is_monotonic_and_jumps_are_seen_not_followed() {
        let wall = 1_577_836_800_000; // a board that booted thinking it is 2020
        let mut c = WalClock::new(5_000, wall);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(c.now_ms(), 15_000);
        assert_eq!(
            c.observe_wall(wall + 10_000),
            None,
            "wall and WAL time moved together"
        );
        // NTP steps the wall clock six years forward: seen, and WAL time does not follow.
        let six_years = 6 * 365 * 86_400_000;
        let step = c.observe_wall(wall + 10_000 + six_years);
        assert_eq!(step, Some(six_years as i64));
        assert_eq!(c.now_ms(), 15_000);
        // And backwards.
        assert_eq!(c.observe_wall(wall + 10_000), Some(-(six_years as i64)));
    }
}

/// The arguments of a WAL actor on `path` with sink `a` and the test limits, no timer to
/// speak of (maintenance hourly), no disk reserve.
fn args(
    path: &std::path::Path,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> super::WalArgs {
    let (commits, _) = tokio::sync::watch::channel(0);
    super::WalArgs {
        path: path.to_path_buf(),
        sinks: vec!["a".into()],
        limits: crate::wal::tests::limits(),
        max_group: 64,
        maintenance_interval: std::time::Duration::from_secs(3600),
        metrics,
        addr: crate::addr::Addr::new("wal", None),
        commits,
        reserve_bytes: 0,
        min_free_bytes: 0,
    }
}

/// A lease of up to 10 records for sink `a`.
fn lease(reply: ractor::RpcReplyPort<Vec<crate::wal::Leased>>) -> super::WalMsg {
    super::WalMsg::Lease {
        sink: "a".into(),
        max: 10,
        fill: None,
        lanes: None,
        reply,
    }
}

mod stop_tests {
    use crate::metrics::Metrics;
    use crate::wal::{Outcome, Wal, WalMsg, WalStore};
    use ractor::{call, Actor};
    use std::sync::Arc;

    /// Found while reading the stop path (session 9): a WAL stopped without the dispatcher
    /// returning its leases first (its supervisor stopping it, say) kept the attempt of every
    /// lease in flight; now its own stop returns them in a final durable commit. (The settles
    /// before the stop were kept without it: redb makes non-durable commits durable when the
    /// database closes cleanly — only a crash loses them, as at-least-once allows.)
    #[tokio::test]
    async fn a_stopped_wal_returns_its_leases_in_a_final_durable_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.redb");
        let args = super::args(&path, Arc::new(Metrics::new()));
        let (wal, handle) = Actor::spawn(None, Wal, args).await.unwrap();
        let records = ["k1", "k2", "k3"]
            .map(|k| crate::wal::tests::rec(k, 0))
            .to_vec();
        call!(wal, |reply| WalMsg::Append { records, reply })
            .unwrap()
            .unwrap();
        let leased = call!(wal, super::lease).unwrap();
        assert_eq!(leased.len(), 3);
        wal.cast(WalMsg::Settle {
            sink: "a".into(),
            outcomes: vec![(1, Outcome::Acked), (2, Outcome::Acked)],
        })
        .unwrap();
        // Queued behind the settle: answered once the settle's (non-durable) commit is done.
        assert!(call!(wal, super::lease).unwrap().is_empty());
        wal.stop(None);
        handle.await.unwrap();

        let store = WalStore::open(&path, vec!["a".into()], crate::wal::tests::limits()).unwrap();
        let pending = store.dump().unwrap().pending;
        assert_eq!(
            pending.into_iter().collect::<Vec<_>>(),
            vec![(("a".to_string(), 3), 0)],
            "the two acked gone, the third back with no attempt counted"
        );
    }
}

mod decode_tests {
    use crate::metrics::Metrics;
    use crate::wal::{Wal, WalStore};
    use ractor::{call, Actor};
    use std::sync::Arc;

    /// Leases are decoded off the commit thread (session 13); a stored body that is not a
    /// record is still dead-lettered, now by the actor's `Corrupt` settle, and counted under
    /// the `corrupt` class, while the rest of its batch is delivered.
    #[tokio::test]
    async fn a_leased_body_that_does_not_decode_is_dead_lettered_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.redb");
        let limits = crate::wal::tests::limits();
        let store = WalStore::open(&path, vec!["a".into()], limits.clone()).unwrap();
        let records = ["k1", "k2", "k3"].map(|k| crate::wal::tests::rec(k, 0));
        // Appended at the wall clock's time, as the actor would (older would expire).
        let now = super::super::now_ms();
        let (store, _) = store
            .apply(vec![crate::wal::Op::Append(records.to_vec())], now)
            .unwrap();
        drop(store);
        {
            const RECORDS: redb::TableDefinition<u64, &[u8]> =
                redb::TableDefinition::new("records");
            let db = redb::Database::open(&path).unwrap();
            let t = db.begin_write().unwrap();
            t.open_table(RECORDS)
                .unwrap()
                .insert(2, b"\xff not cbor".as_slice())
                .unwrap();
            t.commit().unwrap();
        }
        let metrics = Arc::new(Metrics::new());
        let args = super::args(&path, metrics.clone());
        let (wal, handle) = Actor::spawn(None, Wal, args).await.unwrap();
        let leased = call!(wal, super::lease).unwrap();
        let seqs: Vec<u64> = leased.iter().map(|l| l.seq).collect();
        assert_eq!(
            seqs,
            vec![1, 3],
            "the corrupt body is not handed to the sink"
        );
        assert_eq!(leased[1].record.idempotency_key, "k3");
        // The `Corrupt` settle was cast before the lease was answered: this call is queued
        // behind it, and answered after its commit.
        assert!(call!(wal, super::lease).unwrap().is_empty());
        let corrupt = metrics.dead_lettered.with_label_values(&["a", "corrupt"]);
        assert_eq!(corrupt.get(), 1);
        wal.stop(None);
        handle.await.unwrap();
        let store = WalStore::open(&path, vec!["a".into()], limits).unwrap();
        let dump = store.dump().unwrap();
        assert_eq!(
            dump.dead.into_iter().collect::<Vec<_>>(),
            vec![("a".to_string(), 2)]
        );
        assert_eq!(
            dump.pending.into_keys().collect::<Vec<_>>(),
            vec![("a".to_string(), 1), ("a".to_string(), 3)],
            "the two good ones back to Enqueued at the stop"
        );
    }
}

/// A group that does not commit answers every caller in it with an error, never an ack:
/// the jobs come back from the store with the answers made before the failure.
mod group_failure_tests {
    use super::super::*;
    use crate::wal::fault_tests::faulty;
    use std::sync::atomic::Ordering;

    #[tokio::test]
    async fn every_caller_of_a_group_that_did_not_commit_gets_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.redb");
        let (backend, fail_sync, _) = faulty(&path);
        let limits = crate::wal::tests::limits();
        let store = WalStore::open_with_backend(backend, &path, vec!["a".into()], limits).unwrap();
        let (mut jobs, mut answers) = (Vec::new(), Vec::new());
        for k in ["k1", "k2"] {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let records = vec![crate::wal::tests::rec(k, 0)];
            jobs.push(Job::Append {
                records,
                reply: tx.into(),
            });
            answers.push(rx);
        }
        let (tx, replayed) = tokio::sync::oneshot::channel();
        jobs.push(Job::Replay {
            sink: "a".into(),
            records: vec![crate::wal::tests::rec("k3", 0)],
            reply: tx.into(),
        });
        fail_sync.store(true, Ordering::SeqCst);
        let failed = match store.apply_with(jobs, 1, true, |a, job| job.run(a)) {
            Err(f) => f,
            Ok(_) => panic!("a commit whose fsync failed must not succeed"),
        };
        assert!(
            failed.error.to_string().contains("fsync failed"),
            "{}",
            failed.error
        );
        // Applied in the transaction, then its commit failed: all three were answered there.
        assert_eq!((failed.answered.len(), failed.rest.len()), (3, 0));
        for a in failed.answered {
            a.fail("WAL commit failed");
        }
        for rx in answers {
            match rx.await.unwrap() {
                Err(AppendError::Unavailable(why)) => assert_eq!(why, "WAL commit failed"),
                other => panic!("an append of a failed group was answered {other:?}"),
            }
        }
        assert_eq!(
            replayed.await.unwrap(),
            Err("not replayed: WAL commit failed".to_string())
        );
    }

    #[tokio::test]
    async fn a_job_never_applied_fails_with_the_reason() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job::Append {
            records: vec![crate::wal::tests::rec("k1", 0)],
            reply: tx.into(),
        };
        job.fail("WAL stopped");
        assert!(
            matches!(rx.await.unwrap(), Err(AppendError::Unavailable(w)) if w == "WAL stopped")
        );
    }
}
