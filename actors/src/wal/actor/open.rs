//! Opening the store from the actor: on the blocking pool, waiting out a predecessor still
//! closing, and after ENOSPC waiting for room rather than failing.

use super::*;

/// Opens the store on the blocking pool, waiting out a predecessor that is still closing.
pub(super) async fn open_store(args: &OpenArgs) -> Result<WalStore, WalError> {
    let mut delay = Duration::from_millis(10);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (path, sinks, limits) = (args.path.clone(), args.sinks.clone(), args.limits.clone());
        let r = tokio::task::spawn_blocking(move || WalStore::open(&path, sinks, limits))
            .await
            .map_err(|e| WalError::Storage(format!("open task: {e}")))?;
        match r {
            Err(WalError::AlreadyOpen) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// Reopens the store after ENOSPC. The reopen commits too (redb's repair, the store's
/// open transaction), so on a disk with not a byte left it waits for room — freed by the
/// operator or another process — instead of failing the actor into a restart loop that
/// would end the process; `/healthz` reports the WAL stalled meanwhile.
pub(super) async fn reopen_on_full_disk(args: &OpenArgs) -> Result<WalStore, WalError> {
    let mut delay = Duration::from_millis(100);
    let mut tries = 0u32;
    loop {
        match open_store(args).await {
            Err(e) if e.is_no_space() => {
                tries += 1;
                if tries == 1 || tries.is_power_of_two() {
                    tracing::error!(
                        error = %e,
                        tries,
                        "the WAL cannot reopen: the disk is full to the last byte; waiting for room \
                         (free space on the WAL's filesystem)"
                    );
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

impl WalState {
    /// `pre_start`: opens the store, makes the reserve, reports orphaned sinks, starts the
    /// maintenance timer (in `Tasks`) and wakes the dispatcher.
    pub(super) async fn start(
        myself: ActorRef<WalMsg>,
        args: WalArgs,
    ) -> Result<WalState, ActorProcessingErr> {
        let open = OpenArgs {
            path: args.path.clone(),
            sinks: args.sinks.clone(),
            limits: args.limits.clone(),
            reserve_bytes: args.reserve_bytes,
            min_free_bytes: args.min_free_bytes,
        };
        let store = open_store(&open).await?;
        let o = open.clone();
        let reserve_missing = !tokio::task::spawn_blocking(move || ensure_reserve(&o))
            .await
            .unwrap_or(false);
        if reserve_missing {
            tracing::warn!(
                path = %open.reserve_path().display(),
                "no room for the WAL's reserve file yet; it is made once the disk has room"
            );
        }
        let reader = store.reader();
        args.metrics.wal_opens.inc();
        args.metrics.slo.set_capacity(crate::slo::Capacity {
            max_records: args.limits.max_records,
            max_bytes: args.limits.max_bytes,
        });
        let stats = store.stats();
        args.metrics.observe_wal(&stats);
        tracing::info!(path = %store.path().display(), records = stats.records, "WAL open");
        for o in &stats.orphaned {
            tracing::error!(
                sink = %o.sink,
                pending = o.pending,
                dead = o.dead,
                "the WAL holds records for sink {:?}, which the configuration no longer has: \
                 nothing delivers them. Stop the gateway and run `edge-gateway wal move-sink {} \
                 <new name>` (a renamed sink) or `edge-gateway wal drop-sink {}` (counted and \
                 logged), or restore the sink",
                o.sink,
                o.sink,
                o.sink
            );
        }
        let clock = WalClock::new(store.clock_ms(), now_ms());
        let mut tasks = crate::tasks::Tasks::default();
        tasks.every(
            args.maintenance_interval,
            myself.clone(),
            args.addr.clone(),
            || WalMsg::Maintain,
        );
        // Wake the dispatcher: recovered records may be waiting.
        args.commits
            .send_modify(|mark| *mark = mark.wrapping_add(1));
        Ok(WalState {
            stall_next: None,
            store: Some(store),
            queue: VecDeque::new(),
            last_stats: stats,
            reader: Some(reader),
            max_group: args.max_group,
            metrics: args.metrics,
            addr: args.addr,
            commits: args.commits,
            clock,
            open,
            reserve_missing,
            tight: false,
            tasks,
        })
    }
}
