//! What a commit's results say, turned into metrics and logs; answers to reads.

use super::*;

pub(super) const REOPENING: &str = "the WAL is being reopened after a full disk; try again shortly";

/// A read on the blocking pool, as an answer: its rows or why there are none.
pub(super) fn read_answer<T>(
    joined: Result<Result<T, WalError>, tokio::task::JoinError>,
) -> Result<T, String> {
    match joined {
        Ok(Ok(rows)) => Ok(rows),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("read task: {e}")),
    }
}

/// Disk state after a commit: the gauge, and a try at the reserve once there is room again
/// (on the blocking pool; the answer comes back as `ReserveMade`).
pub(super) fn note_disk(myself: &ActorRef<WalMsg>, state: &mut WalState, answers: &[Answer]) {
    for a in answers {
        if let Answer::Appended(_, r) = a {
            state
                .metrics
                .wal_disk_full
                .set(i64::from(matches!(r, Err(AppendRefused::DiskFull(_)))));
        }
    }
    let maintained = answers.iter().any(|a| a.maintained().is_some());
    if state.reserve_missing && maintained {
        state.reserve_missing = false; // one try in flight at a time
        let (o, me, addr) = (state.open.clone(), myself.clone(), state.addr.clone());
        state.tasks.push(tokio::spawn(async move {
            let made = tokio::task::spawn_blocking(move || ensure_reserve(&o))
                .await
                .unwrap_or(false);
            addr.note_sent();
            let _ = me.cast(WalMsg::ReserveMade(made));
        }));
    }
}

pub(super) fn note_settles(m: &Metrics, sink: &str, outcomes: &[(u64, Outcome)]) {
    let retries = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Retry(_)))
        .count();
    if retries > 0 {
        m.retries.with_label_values(&[sink]).inc_by(retries as u64);
    }
}

/// True when a sweep in `answers` left work for another one right away: always for urgent
/// work, for kept history over its cap only when no delivery is queued (`delivering`), so a
/// drain's commits are not interleaved with trimming what the drain itself pushed over the
/// cap (the maintenance timer still trims a sweep's worth each tick).
pub(super) fn sweep_has_more(answers: &[Answer], delivering: bool) -> bool {
    answers.iter().any(|a| {
        a.maintained()
            .is_some_and(|rep| rep.more || (rep.history_more && !delivering))
    })
}

/// What a maintenance commit reports: purges (dead letters are counted from the store's
/// events, see `Committed`) and compactions.
pub(super) fn note_maintenance(m: &Metrics, answers: &[Answer]) {
    for a in answers {
        if let Some(rep) = a.maintained() {
            for (sink, n) in &rep.dead_over_budget {
                m.dead_letters_purged
                    .with_label_values(&[sink, "budget"])
                    .inc_by(*n);
                tracing::warn!(
                    sink = %sink,
                    purged = n,
                    "oldest dead letters purged: the sink holds more than wal.max_dead_letters"
                );
            }
            if let Some(c) = rep.compacted {
                m.wal_compactions.inc();
                m.wal_compacted_bytes
                    .inc_by(c.before.saturating_sub(c.after));
                tracing::info!(
                    before = c.before,
                    after = c.after,
                    millis = c.millis,
                    "WAL file compacted"
                );
            }
            if rep.dead_purged > 0 {
                m.dead_letters_purged
                    .with_label_values(&["*", "retention"])
                    .inc_by(rep.dead_purged);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::MaintainReport;

    #[test]
    fn history_trimming_goes_on_at_once_only_when_no_delivery_waits() {
        let answer = |more, history_more| {
            vec![Answer::Cast(OpResult::Maintained(MaintainReport {
                more,
                history_more,
                ..Default::default()
            }))]
        };
        assert!(sweep_has_more(&answer(true, false), true), "urgent: always");
        assert!(sweep_has_more(&answer(false, true), false));
        assert!(
            !sweep_has_more(&answer(false, true), true),
            "paced by the timer"
        );
        assert!(!sweep_has_more(&answer(false, false), false));
    }
}
