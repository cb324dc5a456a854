//! Buffer SLO and process metrics (issue 13): how long the oldest undelivered reading has
//! waited per sink, how long until the WAL is full at the current net fill rate (its runway),
//! how long until each sink's backlog is delivered at its current rate (drain ETA), and the
//! process's CPU, memory, file descriptors and threads.
//!
//! Rates are exponentially weighted over the WAL's observations (one per commit group and per
//! maintenance run, at least every second), so a burst does not swing the runway wildly.
//! "Never" is `+Inf` (Prometheus reads it; `< 3600` is false for it).

use crate::metrics::reg;
use crate::wal::WalStats;
use prometheus::{Gauge, GaugeVec, Opts, Registry};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Weight of the newest rate sample.
const ALPHA: f64 = 0.2;
/// Shortest interval that makes a rate sample (shorter ones are folded into the next).
const MIN_DT_SECS: f64 = 0.5;

#[derive(Default)]
struct Rates {
    last: Option<(Instant, u64, u64, HashMap<String, u64>)>,
    /// Net records and bytes per second into the WAL (negative while it drains).
    fill_records: f64,
    fill_bytes: f64,
    /// Acknowledged records per second, per sink.
    delivered: HashMap<String, f64>,
}

/// What the runway is measured against (`wal.max_records`, `wal.max_bytes`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Capacity {
    pub max_records: u64,
    pub max_bytes: u64,
}

pub struct SloMetrics {
    pub oldest_pending_age: GaugeVec,
    pub runway: Gauge,
    pub drain_eta: GaugeVec,
    pub cpu_seconds: Gauge,
    pub rss_bytes: Gauge,
    pub open_fds: Gauge,
    pub threads: Gauge,
    rates: Mutex<Rates>,
    capacity: Mutex<Capacity>,
}

fn ewma(old: f64, new: f64) -> f64 {
    if old == 0.0 {
        new
    } else {
        ALPHA * new + (1.0 - ALPHA) * old
    }
}

/// Seconds to use up `room` at `rate` per second (`+Inf` when not filling).
fn time_to(room: f64, rate: f64) -> f64 {
    if rate > 1e-9 {
        (room / rate).max(0.0)
    } else {
        f64::INFINITY
    }
}

impl SloMetrics {
    pub fn new(r: &Registry) -> SloMetrics {
        let gauge = |name: &str, help: &str| reg(r, Gauge::new(name, help).unwrap());
        let vec = |name: &str, help: &str| {
            reg(r, GaugeVec::new(Opts::new(name, help), &["sink"]).unwrap())
        };
        SloMetrics {
            oldest_pending_age: vec(
                "oldest_pending_age_seconds",
                "How long the oldest reading not yet delivered to the sink has waited (0: none)",
            ),
            runway: gauge(
                "wal_runway_seconds",
                "Seconds until the WAL is full at the current net fill rate (+Inf: not filling)",
            ),
            drain_eta: vec(
                "drain_eta_seconds",
                "Seconds until the sink's backlog is delivered at its current rate (+Inf: not \
                 delivering)",
            ),
            cpu_seconds: gauge("process_cpu_seconds", "CPU time used by the process"),
            rss_bytes: gauge(
                "process_resident_memory_bytes",
                "Resident memory of the process",
            ),
            open_fds: gauge("process_open_fds", "Open file descriptors of the process"),
            threads: gauge("process_threads", "Threads of the process"),
            rates: Mutex::default(),
            capacity: Mutex::default(),
        }
    }

    pub fn set_capacity(&self, c: Capacity) {
        *self.capacity.lock().expect("capacity") = c;
    }

    /// Folds one WAL observation in.
    pub fn observe(&self, s: &WalStats) {
        for k in &s.sinks {
            self.oldest_pending_age
                .with_label_values(&[&k.sink])
                .set(k.oldest_pending_age_ms.unwrap_or(0) as f64 / 1000.0);
        }
        let now = Instant::now();
        let acked: HashMap<String, u64> = s
            .sinks
            .iter()
            .map(|k| (k.sink.clone(), k.acked_total))
            .collect();
        let mut r = self.rates.lock().expect("rates");
        if let Some((t, records, bytes, before)) = &r.last {
            let dt = now.duration_since(*t).as_secs_f64();
            if dt < MIN_DT_SECS {
                return;
            }
            let fr = (s.records as f64 - *records as f64) / dt;
            let fb = (s.live_bytes as f64 - *bytes as f64) / dt;
            let delivered: Vec<(String, f64)> = acked
                .iter()
                .map(|(k, a)| {
                    let d = a.saturating_sub(before.get(k).copied().unwrap_or(*a)) as f64 / dt;
                    (k.clone(), d)
                })
                .collect();
            r.fill_records = ewma(r.fill_records, fr);
            r.fill_bytes = ewma(r.fill_bytes, fb);
            for (k, d) in delivered {
                let e = r.delivered.entry(k).or_default();
                *e = ewma(*e, d);
            }
        }
        r.last = Some((now, s.records, s.live_bytes, acked));
        let c = *self.capacity.lock().expect("capacity");
        let by_records = time_to(
            c.max_records.saturating_sub(s.records) as f64,
            r.fill_records,
        );
        let by_bytes = time_to(
            c.max_bytes.saturating_sub(s.live_bytes) as f64,
            r.fill_bytes,
        );
        self.runway.set(by_records.min(by_bytes));
        for k in &s.sinks {
            let eta = if k.pending == 0 {
                0.0
            } else {
                time_to(
                    k.pending as f64,
                    r.delivered.get(&k.sink).copied().unwrap_or(0.0),
                )
            };
            self.drain_eta.with_label_values(&[&k.sink]).set(eta);
        }
    }

    /// Reads the process's figures from `/proc/self` (Linux; elsewhere they stay 0).
    pub fn observe_process(&self) {
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may hold spaces) in parentheses.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime, stime: fields 14 and 15 of stat, 12 and 13 after the name; in USER_HZ
            // (100 on every Linux ABI).
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            self.cpu_seconds.set((ticks(11) + ticks(12)) / 100.0);
            self.threads.set(ticks(17));
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            let kb = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
            if let Some(kb) = kb {
                self.rss_bytes.set(kb * 1024.0);
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::SinkStats;

    fn stats(records: u64, pending: u64, acked: u64) -> WalStats {
        WalStats {
            records,
            live_bytes: records * 100,
            sinks: vec![SinkStats {
                sink: "api".into(),
                pending,
                acked_total: acked,
                oldest_pending_age_ms: (pending > 0).then_some(4_000),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn runway_and_drain_follow_the_rates() {
        let m = SloMetrics::new(&Registry::new());
        m.set_capacity(Capacity {
            max_records: 10_000,
            max_bytes: 1 << 30,
        });
        m.observe(&stats(0, 0, 0));
        assert_eq!(m.runway.get(), f64::INFINITY, "not filling");
        // Pretend a second passed: 1,000 records in, none delivered.
        m.rates.lock().unwrap().last.as_mut().unwrap().0 -= std::time::Duration::from_secs(1);
        m.observe(&stats(1_000, 1_000, 0));
        let runway = m.runway.get();
        assert!(
            (8.9..=9.1).contains(&runway),
            "9,000 left at 1,000/s: {runway}"
        );
        assert_eq!(m.drain_eta.with_label_values(&["api"]).get(), f64::INFINITY);
        assert_eq!(m.oldest_pending_age.with_label_values(&["api"]).get(), 4.0);
        // Then the sink delivers 500/s while nothing comes in.
        m.rates.lock().unwrap().last.as_mut().unwrap().0 -= std::time::Duration::from_secs(1);
        m.observe(&stats(500, 500, 500));
        let eta = m.drain_eta.with_label_values(&["api"]).get();
        assert!(eta.is_finite() && eta > 0.0, "{eta}");
        m.observe_process();
        assert!(m.rss_bytes.get() > 0.0 && m.threads.get() >= 1.0 && m.open_fds.get() >= 3.0);
    }
}
