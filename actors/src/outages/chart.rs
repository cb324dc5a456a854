//! The outage chart (`edge-gateway report outages --svg FILE`): for each outage, the sink's
//! backlog over time, and the gateway's ingest rate beside the sink's delivery rate, with the
//! outage shaded and the moment its backlog drained marked — drawn from the gateway's own
//! records (`series.rs`), as plain SVG (no plotting dependency: a few lines and rectangles).

use super::{Report, Sample};
use std::fmt::Write;

const W: f64 = 960.0;
/// Left margin (axis labels), right margin, plot width.
const L: f64 = 80.0;
const R: f64 = 30.0;
const PW: f64 = W - L - R;
/// One outage's block: title, backlog panel, rates panel, time axis, footer.
const BLOCK_H: f64 = 420.0;
const PANEL_H: f64 = 130.0;
/// At most this many outages are drawn (the most recent).
pub const MAX_OUTAGES: usize = 12;

const SHADE: &str = "#e4572e";
const BACKLOG: &str = "#3b6ea5";
const INGEST: &str = "#7a7a7a";
const DELIVERY: &str = "#2a9d5c";

/// The chart of `reports` (oldest first; the last [`MAX_OUTAGES`] are drawn).
pub fn render(reports: &[Report]) -> String {
    let shown = &reports[reports.len().saturating_sub(MAX_OUTAGES)..];
    let h = 60.0 + BLOCK_H * shown.len().max(1) as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(s, r#"<rect width="{W}" height="{h}" fill="white"/>"#);
    text(
        &mut s,
        L,
        30.0,
        16.0,
        "start",
        "edge-gateway: outages, from its own records",
    );
    if shown.is_empty() {
        text(
            &mut s,
            L,
            70.0,
            13.0,
            "start",
            "No outage recorded in this period.",
        );
    }
    for (i, r) in shown.iter().enumerate() {
        block(&mut s, r, 60.0 + BLOCK_H * i as f64);
    }
    s.push_str("</svg>\n");
    s
}

fn block(s: &mut String, r: &Report, top: f64) {
    let title = format!(
        "sink {} — {} from {} ({})",
        r.sink,
        r.kind,
        clock(r.started_at_ms, true),
        r.last_reason.as_deref().unwrap_or(&r.reason)
    );
    text(s, L, top + 14.0, 14.0, "start", &title);
    let samples = &r.samples;
    let t0 = samples
        .first()
        .map_or(r.started_at_ms, |f| f.at_ms.min(r.started_at_ms));
    let t1 = [
        samples.last().map(|l| l.at_ms),
        r.ended_at_ms,
        r.drained_at_ms,
        Some(t0 + 1_000),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(t0 + 1_000);
    let x = |t: u64| L + PW * (t.saturating_sub(t0)) as f64 / (t1 - t0) as f64;
    let backlog_top = top + 40.0;
    let rates_top = backlog_top + PANEL_H + 40.0;
    let bottom = rates_top + PANEL_H;

    // The outage, shaded across both panels; the drain marked.
    let end = r.ended_at_ms.map_or(x(t1), x);
    let _ = write!(
        s,
        r#"<rect x="{:.1}" y="{backlog_top}" width="{:.1}" height="{:.1}" fill="{SHADE}" fill-opacity="0.12"/>"#,
        x(r.started_at_ms),
        (end - x(r.started_at_ms)).max(1.0),
        bottom - backlog_top
    );
    if let Some(d) = r.drained_at_ms {
        let _ = write!(
            s,
            r#"<line x1="{0:.1}" x2="{0:.1}" y1="{backlog_top}" y2="{bottom}" stroke="{DELIVERY}" stroke-dasharray="4 3"/>"#,
            x(d)
        );
        let label = match r.drain_secs {
            Some(secs) => format!("drained {secs:.0} s after"),
            None => "drained".into(),
        };
        text(s, x(d) - 4.0, backlog_top + 12.0, 11.0, "end", &label);
    }

    // Backlog.
    let peak = samples.iter().map(|p| p.pending).max().unwrap_or(0);
    let ymax = nice(peak as f64);
    let yb = |v: f64| backlog_top + PANEL_H - PANEL_H * v / ymax;
    axis(s, backlog_top, ymax, "backlog (records)", &yb);
    if !samples.is_empty() {
        let mut d = format!("M{:.1},{:.1}", x(samples[0].at_ms), yb(0.0));
        for p in samples {
            let _ = write!(d, " L{:.1},{:.1}", x(p.at_ms), yb(p.pending as f64));
        }
        let _ = write!(
            d,
            " L{:.1},{:.1} Z",
            x(samples[samples.len() - 1].at_ms),
            yb(0.0)
        );
        let _ = write!(
            s,
            r#"<path d="{d}" fill="{BACKLOG}" fill-opacity="0.35" stroke="{BACKLOG}" stroke-width="1.5"/>"#
        );
    }

    // Rates: readings accepted (every source) and delivered to this sink, per second.
    let ingest = rates(samples, |p| p.accepted);
    let delivery = rates(samples, |p| p.acked);
    let rmax = nice(
        ingest
            .iter()
            .chain(&delivery)
            .map(|&(_, v)| v)
            .fold(0.0, f64::max),
    );
    let yr = |v: f64| rates_top + PANEL_H - PANEL_H * v / rmax;
    axis(s, rates_top, rmax, "readings/s", &yr);
    for (series, colour) in [(&ingest, INGEST), (&delivery, DELIVERY)] {
        if series.is_empty() {
            continue;
        }
        let pts: Vec<String> = series
            .iter()
            .map(|&(t, v)| format!("{:.1},{:.1}", x(t), yr(v)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            pts.join(" ")
        );
    }

    // Time axis: five labels.
    for k in 0..=4 {
        let t = t0 + (t1 - t0) * k / 4;
        let anchor = match k {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let mut label = clock(t, false);
        if t1 - t0 < 10_000 {
            // A short outage: tenths, so the labels differ.
            label.push_str(&format!(".{}", t % 1000 / 100));
        }
        text(s, x(t), bottom + 16.0, 11.0, anchor, &label);
    }

    // Legend and figures.
    let legend = [
        (SHADE, "outage"),
        (BACKLOG, "backlog"),
        (INGEST, "accepted/s (all sinks)"),
        (DELIVERY, "delivered/s"),
    ];
    let mut lx = L;
    let ly = bottom + 36.0;
    for (colour, name) in legend {
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="{:.1}" width="12" height="12" fill="{colour}" fill-opacity="0.6"/>"#,
            ly - 10.0
        );
        text(s, lx + 16.0, ly, 11.0, "start", name);
        lx += 30.0 + 7.0 * name.len() as f64;
    }
    let figures = format!(
        "lasted {} · backlog {} at start, {} at peak · {} readings held · {} re-sent (upper bound on duplicates)",
        r.duration_secs
            .map_or("(still open)".into(), |d| format!("{d:.0} s")),
        r.backlog_at_start,
        r.backlog_peak.unwrap_or(peak),
        r.readings_held.map_or("?".into(), |n| n.to_string()),
        r.resent.map_or("?".into(), |n| n.to_string()),
    );
    text(s, L, ly + 20.0, 11.0, "start", &figures);
}

/// Per-second rates between consecutive samples, at the later one's time (a fall is a
/// restart: the new value is the rise).
fn rates(samples: &[Sample], v: impl Fn(&Sample) -> u64) -> Vec<(u64, f64)> {
    samples
        .windows(2)
        .filter(|w| w[1].at_ms > w[0].at_ms)
        .map(|w| {
            let (a, b) = (v(&w[0]), v(&w[1]));
            let rise = if b >= a { b - a } else { b };
            let secs = (w[1].at_ms - w[0].at_ms) as f64 / 1000.0;
            (w[1].at_ms, rise as f64 / secs)
        })
        .collect()
}

fn axis(s: &mut String, top: f64, ymax: f64, label: &str, y: &dyn Fn(f64) -> f64) {
    let _ = write!(
        s,
        r##"<rect x="{L}" y="{top}" width="{PW}" height="{PANEL_H}" fill="none" stroke="#bbb"/>"##
    );
    for k in 0..=2 {
        let v = ymax * k as f64 / 2.0;
        let _ = write!(
            s,
            r##"<line x1="{L}" x2="{:.1}" y1="{1:.1}" y2="{1:.1}" stroke="#eee"/>"##,
            L + PW,
            y(v)
        );
        text(s, L - 6.0, y(v) + 4.0, 11.0, "end", &number(v));
    }
    text(s, L, top - 6.0, 12.0, "start", label);
}

/// The smallest of 1, 2, 5 × 10^k at or above `v` (at least 1).
fn nice(v: f64) -> f64 {
    if v <= 1.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

fn number(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v < 10.0 && v.fract() != 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// `2026-11-23 03:40:01Z` (with the date) or `03:40:01`.
fn clock(ms: u64, date: bool) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    let full = humantime::format_rfc3339_seconds(t).to_string();
    if date {
        full.replacen('T', " ", 1)
    } else {
        full.get(11..19).unwrap_or(&full).to_string()
    }
}

fn text(s: &mut String, x: f64, y: f64, size: f64, anchor: &str, body: &str) {
    let _ = write!(
        s,
        r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="{anchor}">{}</text>"#,
        escape(body)
    );
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_s: u64, pending: u64, acked: u64, accepted: u64) -> Sample {
        Sample {
            at_ms: at_s * 1000,
            pending,
            acked,
            accepted,
            resent: 0,
        }
    }

    #[test]
    fn rates_and_scales() {
        let s = [
            sample(0, 0, 0, 0),
            sample(5, 0, 500, 1000),
            sample(10, 0, 10, 2000),
        ];
        assert_eq!(rates(&s, |p| p.acked), vec![(5000, 100.0), (10000, 2.0)]);
        assert_eq!(
            rates(&s, |p| p.accepted),
            vec![(5000, 200.0), (10000, 200.0)]
        );
        assert_eq!(
            (nice(0.0), nice(7.0), nice(120.0), nice(5000.0)),
            (1.0, 10.0, 200.0, 5000.0)
        );
    }

    #[test]
    fn a_chart_names_what_it_shows_and_escapes_what_it_quotes() {
        let r = Report {
            sink: "api<&>".into(),
            kind: "outage".into(),
            reason: "HTTP 503 \"down\"".into(),
            started_at_ms: 1_000,
            ended_at_ms: Some(20_000),
            drained_at_ms: Some(30_000),
            drain_secs: Some(10.0),
            duration_secs: Some(19.0),
            backlog_peak: Some(400),
            samples: vec![
                sample(0, 2, 0, 0),
                sample(10, 400, 0, 100),
                sample(30, 2, 400, 300),
            ],
            ..Default::default()
        };
        let svg = render(&[r]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("sink api&lt;&amp;&gt;"), "{svg}");
        assert!(!svg.contains("api<&>"));
        assert!(svg.contains("drained 10 s after"));
        assert!(svg.contains("400 at peak"));
        assert_eq!(svg.matches("<polyline").count(), 2, "ingest and delivery");
        assert!(render(&[]).contains("No outage recorded"));
    }
}
