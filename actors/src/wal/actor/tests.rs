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
