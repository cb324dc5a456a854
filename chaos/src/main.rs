//! `chaos`: run a fault-injection campaign against the real gateway binary and judge it.
//!
//! Exit status: 0 pass; 1 acknowledged readings lost; 2 another oracle violation (payload
//! altered, a delivery never produced, order of first deliveries, no drain). With
//! `--expect-loss` (the negative control): 0 only if loss was seen.

use clap::Parser;
use edge_gateway_chaos::run::{run, Options};
use edge_gateway_chaos::scenario::Scenario;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "chaos",
    about = "Fault injection with a loss ledger for edge-gateway"
)]
struct Args {
    /// field-demo, actor-storm, kill-9, sink-flap, mixed or abuse.
    #[arg(long, default_value = "mixed")]
    scenario: Scenario,
    /// How long faults are injected (then the backlog drains), e.g. `60s`, `1h`.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Readings per second per device.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Seed of the fault schedule (random if unset; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// The gateway binary (default: `edge-gateway` next to this one).
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// Where the JSON report goes.
    #[arg(long, default_value = "chaos-report.json")]
    report: PathBuf,
    /// Keep brokers' and the gateway's files here instead of a temporary directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Longest wait for the backlog to drain after the last fault.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Negative control: succeed only if loss is seen.
    #[arg(long)]
    expect_loss: bool,
    /// Add an S3 archive sink on an `s3s-fs` store (read back by the oracle); the store's
    /// outages join the sink faults.
    #[arg(long)]
    s3: bool,
    /// Add a Kafka sink on a tansu broker (its topic read back by the oracle).
    #[arg(long)]
    kafka: bool,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let seed = a.seed.unwrap_or_else(rand::random);
    let gateway_bin = match a.gateway {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("edge-gateway"))
            .ok_or_else(|| anyhow::anyhow!("no directory for the chaos binary"))?,
    };
    anyhow::ensure!(
        gateway_bin.exists(),
        "gateway binary {} not found (build it: cargo build --release --workspace, or pass --gateway)",
        gateway_bin.display()
    );
    let tmp = tempfile::tempdir()?;
    let work_dir = a
        .work_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    eprintln!(
        "chaos: scenario {:?}, {:?}, {} readings/s per device, seed {seed}, gateway {}",
        a.scenario,
        a.duration,
        a.rate,
        gateway_bin.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(run(Options {
        scenario: a.scenario,
        duration: a.duration,
        rate: a.rate,
        seed,
        gateway_bin,
        work_dir,
        drain_timeout: a.drain_timeout,
        s3: a.s3,
        kafka: a.kafka,
        chart: a.report.with_extension("svg"),
    }))?;
    std::fs::write(&a.report, serde_json::to_vec_pretty(&report)?)?;
    print_summary(&report);
    eprintln!(
        "report: {} (outage chart: {})",
        a.report.display(),
        a.report.with_extension("svg").display()
    );
    let code = if a.expect_loss {
        if report.verdict.lost > 0 {
            eprintln!("negative control: loss seen, as it must be");
            0
        } else {
            eprintln!("negative control FAILED: a gateway that loses data was not caught");
            1
        }
    } else if report.verdict.lost > 0 {
        1
    } else if !report.violations.is_empty() {
        2
    } else {
        0
    };
    std::process::exit(code);
}

fn print_summary(r: &edge_gateway_chaos::run::Report) {
    let v = &r.verdict;
    println!(
        "scenario {:?}, seed {}, {:.0} s",
        r.scenario, r.seed, r.duration_secs
    );
    println!(
        "readings: produced {}, acknowledged {}",
        v.produced, v.acknowledged
    );
    for (name, s) in &v.sinks {
        println!(
            "  sink {name}: delivered {} ({} deliveries, {} duplicates), dead-lettered {}, LOST {}",
            s.delivered_unique, s.deliveries, s.duplicates, s.dead_lettered, s.lost
        );
    }
    println!("lost (must be 0): {}", v.lost);
    println!("faults: {:?}", r.faults_injected);
    if !r.abuse_outcomes.is_empty() {
        println!("abuse outcomes: {:?}", r.abuse_outcomes);
    }
    if let Some(c) = &r.commands {
        println!(
            "device commands: accepted {}, acknowledged {}, expired {}, LOST {} (delivered more \
             than once: {}); config changes applied {}, refused {}; requests unanswered {}",
            c.accepted,
            c.acknowledged,
            c.expired,
            c.lost,
            c.delivered_more_than_once,
            c.configs_applied,
            c.configs_refused,
            c.unanswered_requests
        );
    }
    println!(
        "gateway kills survived: {}; actor restarts: {:?}",
        r.gateway_kills, r.actor_restarts
    );
    println!(
        "peak WAL backlog {:.0}; drained {} after the last fault ({} after producers stopped); gateway peak RSS {:.1} MiB",
        r.peak_wal_backlog,
        r.drain_after_last_fault_secs
            .map_or("never".into(), |s| format!("{s:.1} s")),
        r.drain_after_producers_stopped_secs
            .map_or("never".into(), |s| format!("{s:.1} s")),
        r.gateway_peak_rss_mib
    );
    println!(
        "caught up (backlog back to normal) {} after the last fault",
        r.caught_up_after_last_fault_secs
            .map_or("never".into(), |s| format!("{s:.1} s"))
    );
    println!("max mailbox depth: {:?}", r.max_mailbox_depth);
    if !r.dead_lettered_by_reason.is_empty() {
        println!("dead-lettered by reason: {:?}", r.dead_lettered_by_reason);
    }
    for v in &r.violations {
        println!("VIOLATION: {v}");
    }
    println!(
        "verdict: {}",
        if v.lost == 0 && r.violations.is_empty() {
            "PASS"
        } else {
            "FAIL"
        }
    );
}
