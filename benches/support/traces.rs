//! `traces` section: what OpenTelemetry spans cost at ingest. The same closed loops with
//! traces off, at the default sampler (parent-based, 1 % of new traces) and with every
//! reading traced (`always_on`), exporting to a local collector that accepts everything:
//! readings/s, latency, and the gateway's CPU per reading (from /proc, user + system).

use super::{accept_all_sink, closed_loop, pct, Gw};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The process's CPU seconds so far (utime + stime, at 100 ticks/s).
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

pub async fn cost() {
    println!("\n## Traces: the cost of spans at ingest (release binary, local OTLP collector)");
    let sink = accept_all_sink(Arc::new(AtomicBool::new(true))).await;
    let collector = accept_all_sink(Arc::new(AtomicBool::new(true))).await;
    let secs: u64 = std::env::var("BENCH_TRACES_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    println!("| traces | connections × readings/request | readings/s | p50 ms | p99 ms | gateway CPU µs/reading | spans exported | spans dropped |");
    println!("|---|---|---|---|---|---|---|---|");
    let endpoint = format!("http://{collector}/v1/traces");
    for (label, tracing) in [
        ("off", String::new()),
        (
            "default sampler (1 %)",
            format!("[tracing]\nendpoint = \"{endpoint}\"\n"),
        ),
        (
            "every reading (always_on)",
            format!("[tracing]\nendpoint = \"{endpoint}\"\nsampler = \"always_on\"\n"),
        ),
    ] {
        let gw = Gw::start(&format!(
            "[http]\nmax_batch = 1000\nmax_connections_per_peer = 512\n\
             [[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"http://{sink}/\"\n{tracing}"
        ));
        for (conc, per) in [(64usize, 1usize), (16, 100)] {
            let pid = gw.child.id();
            let (cpu0, exp0, drop0) = (
                cpu_secs(pid),
                super::mqtt::metric(&gw, "edge_gateway_otel_spans_exported_total").await,
                super::mqtt::metric(&gw, "edge_gateway_otel_spans_dropped_total").await,
            );
            let (rate, lat) = closed_loop(&gw, conc, per, secs).await;
            let readings = rate * secs as f64;
            let cpu = cpu_secs(pid) - cpu0;
            // Let the last export go out before counting.
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            let exported =
                super::mqtt::metric(&gw, "edge_gateway_otel_spans_exported_total").await - exp0;
            let dropped =
                super::mqtt::metric(&gw, "edge_gateway_otel_spans_dropped_total").await - drop0;
            println!(
                "| {label} | {conc} × {per} | {rate:.0} | {:.2} | {:.2} | {:.1} | {exported:.0} | {dropped:.0} |",
                pct(&lat, 0.5),
                pct(&lat, 0.99),
                1e6 * cpu / readings.max(1.0),
            );
        }
    }
}
