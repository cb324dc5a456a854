//! What the campaign watches while it runs: metrics samples folded over every gateway process
//! (peaks, mailbox depths, restarts, when the backlog caught up), readiness, dead letters.

use crate::gateway::{Gateway, Sample};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Running maxima and sums over every gateway process of the campaign.
#[derive(Default)]
pub struct Watch {
    pub peak_backlog: f64,
    pub peak_rss: f64,
    pub mailbox: BTreeMap<String, f64>,
    /// Restarts of processes already killed, plus the live one's last sample.
    restarts_done: BTreeMap<String, f64>,
    restarts_live: BTreeMap<String, f64>,
    /// Set when the last fault ends; `caught_up` is the first sample after it with a normal
    /// backlog (at most `normal_backlog` records).
    pub last_fault_end: Option<Instant>,
    pub caught_up: Option<Instant>,
    pub normal_backlog: f64,
    /// The outages the campaign made, and the one still growing its peak (until the next
    /// fault begins).
    pub windows: Vec<crate::outages::Window>,
    open_window: Option<usize>,
    /// The most the gateway reported of gaps in devices' `seq`.
    pub seq_gaps: f64,
}

impl Watch {
    /// `normal_backlog`: records in the WAL that count as caught up.
    pub fn new(normal_backlog: f64) -> Watch {
        Watch {
            normal_backlog,
            ..Watch::default()
        }
    }

    pub fn add(&mut self, s: &Sample, rss: f64) {
        self.peak_backlog = self.peak_backlog.max(s.backlog);
        self.seq_gaps = self.seq_gaps.max(s.seq_gaps);
        if let Some(w) = self.open_window.and_then(|i| self.windows.get_mut(i)) {
            let b = s.backlog_by_sink.get(&w.sink).copied().unwrap_or(0.0);
            w.peak_backlog = w.peak_backlog.max(b);
        }
        if self.last_fault_end.is_some()
            && self.caught_up.is_none()
            && s.backlog <= self.normal_backlog
        {
            self.caught_up = Some(Instant::now());
        }
        self.peak_rss = self.peak_rss.max(rss);
        for (a, v) in &s.mailbox_max {
            let e = self.mailbox.entry(a.clone()).or_default();
            *e = e.max(*v);
        }
        self.restarts_live = s.restarts.clone();
    }

    /// A fault begins: the open window's peak is final.
    pub fn fault_begins(&mut self) {
        self.open_window = None;
    }

    /// `sink` goes down now (its broker stopped); its window stays open past `sink_up`.
    pub fn sink_down(&mut self, sink: &str) {
        self.windows.push(crate::outages::Window {
            sink: sink.to_string(),
            down_ms: wall_ms(),
            up_ms: None,
            peak_backlog: 0.0,
        });
        self.open_window = Some(self.windows.len() - 1);
    }

    pub fn sink_up(&mut self) {
        if let Some(w) = self.open_window.and_then(|i| self.windows.get_mut(i)) {
            w.up_ms = Some(wall_ms());
        }
    }

    /// The process is about to die: fold its restart counters into the totals.
    pub fn process_ends(&mut self) {
        for (a, v) in std::mem::take(&mut self.restarts_live) {
            *self.restarts_done.entry(a).or_default() += v;
        }
    }

    pub fn restarts(&self) -> BTreeMap<String, f64> {
        let mut out = self.restarts_done.clone();
        for (a, v) in &self.restarts_live {
            *out.entry(a.clone()).or_default() += v;
        }
        out.retain(|_, v| *v > 0.0);
        out
    }
}

pub async fn wait_ready(c: &reqwest::Client, gw: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = c.get(gw.admin("/readyz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "gateway not ready after 30 s; going on (see {})",
        gw.log_path().display()
    );
}

/// The wall clock, as the gateway dates its outages.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Samples metrics and RSS every 250 ms until `until`.
pub async fn sample_until(c: &reqwest::Client, gw: &Gateway, w: &mut Watch, until: Instant) {
    loop {
        if let Some(s) = gw.sample(c).await {
            w.add(&s, gw.rss_mib());
        }
        let now = Instant::now();
        if now >= until {
            return;
        }
        tokio::time::sleep((until - now).min(Duration::from_millis(250))).await;
    }
}

/// Polls `GET /admin/outages` (it offers nothing to wait on) until every outage the gateway
/// recorded has drained, or `within` passed.
pub async fn outages_settled(c: &reqwest::Client, gw: &Gateway, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let open = match c
            .get(gw.admin("/admin/outages"))
            .bearer_auth(&gw.admin_token)
            .send()
            .await
        {
            Ok(r) => r.json::<serde_json::Value>().await.ok().map(|v| {
                v["outages"]
                    .as_array()
                    .is_none_or(|l| l.iter().any(|o| o["drained_at_ms"].is_null()))
            }),
            Err(_) => None,
        };
        if open == Some(false) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Per sink: (key, reason) of every dead letter.
pub async fn dead_letters(
    c: &reqwest::Client,
    gw: &Gateway,
    sinks: &[&str],
) -> HashMap<String, Vec<(String, String)>> {
    let mut out = HashMap::new();
    for s in sinks {
        let Ok(r) = c
            .get(gw.admin(&format!("/admin/dead-letters/{s}?limit=10000")))
            .bearer_auth(&gw.admin_token)
            .send()
            .await
        else {
            continue;
        };
        let Ok(v) = r.json::<serde_json::Value>().await else {
            continue;
        };
        let rows = v["dead_letters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| {
                Some((
                    d["record"]["idempotency_key"].as_str()?.to_string(),
                    d["reason"].as_str().unwrap_or("").to_string(),
                ))
            })
            .collect();
        out.insert(s.to_string(), rows);
    }
    out
}
