//! The gateway's own outage reports against what the campaign measured (issue 13): every
//! outage the harness made (an upstream broker stopped, then started) must be in the
//! gateway's report — begun within a second of the stop, ended once deliveries could resume
//! (after the start, within the dispatcher's retry backoff), with the backlog peak the
//! harness saw — and the readings' sequence numbers must show no gaps, and the duplicates the
//! ledger counted downstream must be within what the gateway reports as re-sent.

use serde::Serialize;
use serde_json::Value;

/// One outage the harness made.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub sink: String,
    pub down_ms: u64,
    pub up_ms: Option<u64>,
    /// The sink's backlog at its highest, sampled every 250 ms from the stop until the next
    /// fault (or the end of the campaign).
    pub peak_backlog: f64,
}

/// One harness outage beside the gateway's report of it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub window: Window,
    pub gateway_started_ms: Option<u64>,
    pub gateway_ended_ms: Option<u64>,
    pub gateway_drained_ms: Option<u64>,
    pub gateway_peak_backlog: Option<u64>,
    pub gateway_resent: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutageCheck {
    pub rows: Vec<Row>,
    /// Outages the gateway reported for the checked sink, matched or not.
    pub gateway_outages: usize,
    pub ledger_duplicates: u64,
    pub gateway_resent: u64,
    pub device_seq_gaps: f64,
    pub violations: Vec<String>,
}

/// How close the gateway's figures must be.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Start: the gateway dates an outage from the sink's first failed answer.
    pub start_ms: u64,
    /// End: the first delivery after the broker is back, which waits for the dispatcher's
    /// next retry (up to twice `delivery.backoff_max_ms` with its jitter), a connect, and the
    /// tracker's next look (1 s).
    pub end_ms: u64,
    /// Peak: both sides sample (250 ms here, 1 s there): a second of ingest either way, or a
    /// tenth.
    pub peak_records: f64,
}

fn num(v: &Value, k: &str) -> Option<u64> {
    v[k].as_u64()
}

/// Matches each window to the gateway outage of its sink that began nearest its stop, while
/// its broker was down.
pub fn check(
    windows: &[Window],
    reports: &[Value],
    ledger_duplicates: u64,
    device_seq_gaps: f64,
    tol: Tolerance,
) -> OutageCheck {
    let mut violations = Vec::new();
    let mut rows = Vec::new();
    let sinks: std::collections::BTreeSet<&str> = windows.iter().map(|w| w.sink.as_str()).collect();
    let mine: Vec<&Value> = reports
        .iter()
        .filter(|r| r["sink"].as_str().is_some_and(|s| sinks.contains(s)))
        .collect();
    for w in windows {
        let found = mine
            .iter()
            .filter(|r| r["sink"] == w.sink.as_str())
            .filter_map(|r| num(r, "started_at_ms").map(|s| (s, *r)))
            // Begun while the broker was down (or within the tolerance around it).
            .filter(|(s, _)| {
                *s + tol.start_ms >= w.down_ms
                    && *s <= w.up_ms.unwrap_or(u64::MAX).saturating_add(tol.start_ms)
            })
            .min_by_key(|(s, _)| s.abs_diff(w.down_ms))
            .map(|(_, r)| r);
        let row = Row {
            window: w.clone(),
            gateway_started_ms: found.and_then(|r| num(r, "started_at_ms")),
            gateway_ended_ms: found.and_then(|r| num(r, "ended_at_ms")),
            gateway_drained_ms: found.and_then(|r| num(r, "drained_at_ms")),
            gateway_peak_backlog: found.and_then(|r| num(r, "backlog_peak")),
            gateway_resent: found.and_then(|r| num(r, "resent")),
        };
        let what = format!("outage of {} at {} ms", w.sink, w.down_ms);
        match row.gateway_started_ms {
            None => violations.push(format!("{what}: not in the gateway's report")),
            Some(s) if s.abs_diff(w.down_ms) > tol.start_ms => violations.push(format!(
                "{what}: the gateway dates it {} ms away",
                s as i64 - w.down_ms as i64
            )),
            Some(_) => {}
        }
        if let (Some(up), Some(end)) = (w.up_ms, row.gateway_ended_ms) {
            // Nothing can be delivered before the broker is back (100 ms for the two clocks'
            // reads of one machine's wall clock).
            if end + 100 < up || end > up + tol.end_ms {
                violations.push(format!(
                    "{what}: back at {up} ms, the gateway ended it at {end} ms"
                ));
            }
        } else if w.up_ms.is_some() && row.gateway_started_ms.is_some() {
            violations.push(format!("{what}: over, the gateway's report never ended it"));
        }
        // A drain cut short by the sink's next outage is not over, and rightly never dated.
        let next_began = row.gateway_ended_ms.is_some_and(|end| {
            mine.iter().any(|r| {
                r["sink"] == w.sink.as_str() && num(r, "started_at_ms").is_some_and(|s| s >= end)
            })
        });
        if row.gateway_started_ms.is_some() && row.gateway_drained_ms.is_none() && !next_began {
            violations.push(format!("{what}: the gateway never saw its backlog drain"));
        }
        if let Some(p) = row.gateway_peak_backlog {
            let allowed = tol.peak_records.max(w.peak_backlog / 10.0);
            if (p as f64 - w.peak_backlog).abs() > allowed {
                violations.push(format!(
                    "{what}: backlog peak {p} reported, {} seen (± {allowed:.0})",
                    w.peak_backlog
                ));
            }
        }
        rows.push(row);
    }
    if device_seq_gaps > 0.0 {
        violations.push(format!(
            "the gateway saw {device_seq_gaps} gaps in devices' seq (none were made)"
        ));
    }
    let gateway_resent: u64 = mine.iter().filter_map(|r| num(r, "resent")).sum();
    if ledger_duplicates > gateway_resent {
        violations.push(format!(
            "{ledger_duplicates} duplicates downstream, the gateway reports {gateway_resent} re-sent"
        ));
    }
    OutageCheck {
        rows,
        gateway_outages: mine.len(),
        ledger_duplicates,
        gateway_resent,
        device_seq_gaps,
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TOL: Tolerance = Tolerance {
        start_ms: 1_000,
        end_ms: 3_000,
        peak_records: 60.0,
    };

    fn window(down: u64, up: u64, peak: f64) -> Window {
        Window {
            sink: "upstream".into(),
            down_ms: down,
            up_ms: Some(up),
            peak_backlog: peak,
        }
    }

    fn report(start: u64, end: u64, peak: u64, resent: u64) -> Value {
        json!({"sink": "upstream", "started_at_ms": start, "ended_at_ms": end,
               "drained_at_ms": end + 500, "backlog_peak": peak, "resent": resent})
    }

    #[test]
    fn matching_reports_pass() {
        let c = check(
            &[window(10_000, 15_000, 300.0), window(30_000, 34_000, 250.0)],
            &[
                report(10_200, 16_500, 310, 4),
                report(30_100, 34_900, 240, 0),
            ],
            3,
            0.0,
            TOL,
        );
        assert!(c.violations.is_empty(), "{:?}", c.violations);
        assert_eq!((c.gateway_outages, c.gateway_resent), (2, 4));
    }

    #[test]
    fn a_drain_cut_short_by_the_next_outage_is_not_a_mismatch() {
        let mut first = report(10_200, 16_500, 310, 4);
        first["drained_at_ms"] = Value::Null;
        let c = check(
            &[window(10_000, 15_000, 300.0), window(17_000, 20_000, 250.0)],
            &[first.clone(), report(17_050, 21_000, 240, 0)],
            0,
            0.0,
            TOL,
        );
        assert!(c.violations.is_empty(), "{:?}", c.violations);
        // The last one never drained: that is one.
        let c = check(&[window(10_000, 15_000, 300.0)], &[first], 0, 0.0, TOL);
        assert!(
            c.violations[0].contains("never saw its backlog drain"),
            "{:?}",
            c.violations
        );
    }

    #[test]
    fn each_mismatch_is_named() {
        let c = check(
            &[window(10_000, 15_000, 300.0), window(30_000, 34_000, 250.0)],
            // Late by 2 s, ended before the broker was back, peak far off; the second missing.
            &[report(12_000, 14_000, 900, 1)],
            5,
            2.0,
            TOL,
        );
        let v = c.violations.join("\n");
        for needle in [
            "dates it 2000 ms away",
            "ended it at 14000 ms",
            "backlog peak 900",
            "at 30000 ms: not in the gateway's report",
            "gaps in devices' seq",
            "5 duplicates downstream, the gateway reports 1 re-sent",
        ] {
            assert!(v.contains(needle), "{needle:?} not in:\n{v}");
        }
    }
}
