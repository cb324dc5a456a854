//! A campaign: start everything, produce and inject faults on the schedule, stop producing,
//! wait for the backlog to drain, ask the gateway for its dead letters, judge, report.

use crate::archive;
use crate::broker::Broker;
use crate::bus;
use crate::devices;
use crate::gateway::Gateway;
use crate::kafka::KafkaBroker;
use crate::ledger::{Ledger, Verdict};
use crate::scenario::{plan_with, Fault, Planned, Scenario};
use crate::sink::Sink;
use crate::store::Store;
use crate::watch::{dead_letters, sample_until, wait_ready, Watch};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Options {
    pub scenario: Scenario,
    pub duration: Duration,
    /// Readings per second per device.
    pub rate: f64,
    pub seed: u64,
    pub gateway_bin: PathBuf,
    pub work_dir: PathBuf,
    /// Longest wait for the backlog after the last fault.
    pub drain_timeout: Duration,
    /// Add an S3 archive sink (an `s3s-fs` store whose objects the oracle reads back); its
    /// outages join the sink faults.
    pub s3: bool,
    /// Add a Kafka sink (a tansu broker whose topic the oracle reads back).
    pub kafka: bool,
    /// Where the gateway's outage chart is written (`report outages --svg`).
    pub chart: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub seed: u64,
    pub duration_secs: f64,
    pub rate_per_device: f64,
    pub devices: BTreeMap<&'static str, usize>,
    #[serde(flatten)]
    pub verdict: Verdict,
    pub violations: Vec<String>,
    pub dead_lettered_by_reason: BTreeMap<String, u64>,
    pub faults_injected: BTreeMap<String, u64>,
    pub gateway_kills: u64,
    pub actor_restarts: BTreeMap<String, f64>,
    pub peak_wal_backlog: f64,
    /// From the end of the last fault until every acknowledged reading was at every sink (or
    /// dead-lettered); `null` if it never got there.
    pub drain_after_last_fault_secs: Option<f64>,
    /// From the moment devices stopped producing until everything was delivered.
    pub drain_after_producers_stopped_secs: Option<f64>,
    /// From the end of the last fault until the WAL backlog was back to normal (at most one
    /// second of production) while devices were still producing: delivery resumed and
    /// caught up.
    pub caught_up_after_last_fault_secs: Option<f64>,
    pub max_mailbox_depth: BTreeMap<String, f64>,
    pub gateway_peak_rss_mib: f64,
    pub schedule: Vec<Planned>,
    /// Scenario `abuse`: what the hostile clients saw, by `attack/outcome`.
    pub abuse_outcomes: BTreeMap<String, u64>,
    /// Scenarios with control traffic: the device commands' fate.
    pub commands: Option<crate::commands::CommandReport>,
    /// The gateway's own outage reports (`report outages --json`).
    pub gateway_outages: Vec<serde_json::Value>,
    /// `field-demo`: those reports against the outages the campaign made.
    pub outage_check: Option<crate::outages::OutageCheck>,
    /// `edge-gateway wal verify` on the WAL the campaign left (must pass).
    pub wal_verify: String,
    pub gateway_log: String,
}

/// `delivery.backoff_max_ms` of the campaign's gateway: how long a sink that is back may wait
/// for its next try.
const BACKOFF_MAX_MS: u64 = 2000;

fn attack_kind_overrun(f: &Fault) -> Duration {
    match f {
        Fault::Abuse { attack, .. } => attack.overrun(),
        _ => Duration::ZERO,
    }
}

pub async fn run(o: Options) -> anyhow::Result<Report> {
    let schedule = plan_with(o.scenario, o.duration, o.seed, o.s3, o.kafka);
    let mut sinks = vec!["analytics", "upstream"];
    let mut store = None;
    if o.s3 {
        store = Some(Store::start(&o.work_dir.join("store"), archive::BUCKET)?);
        sinks.push(archive::SINK);
    }
    let broker = if o.kafka {
        sinks.push(bus::SINK);
        Some(KafkaBroker::start(
            &o.work_dir.join("kafka"),
            &[bus::TOPIC],
        )?)
    } else {
        None
    };
    let ledger = Arc::new(Mutex::new(Ledger::new(&sinks)));
    let mut edge = Broker::plain(&o.work_dir.join("edge"), true, "")?;
    let mut upstream = Broker::plain(&o.work_dir.join("upstream"), true, "")?;
    let subscriber = devices::upstream_subscriber(upstream.port, "chaos/#", ledger.clone()).await;
    let sink = Sink::start(ledger.clone(), "analytics").await?;
    let extra = format!(
        "[admin]\nchaos = true\n\
         [mqtt]\nenabled = true\nbroker = \"{}\"\nreconnect_initial_ms = 50\nreconnect_max_ms = 1000\n\
         [delivery]\nbackoff_initial_ms = 100\nbackoff_max_ms = {BACKOFF_MAX_MS}\nlease_timeout_ms = 5000\nmax_attempts = 100\n\
         [[sinks]]\nname = \"analytics\"\ntype = \"http\"\nurl = \"{}\"\ntimeout_ms = 2000\n\
         [[sinks]]\nname = \"upstream\"\ntype = \"mqtt\"\nurl = \"{}\"\ntopic_prefix = \"chaos\"\ntimeout_ms = 5000\n{}",
        edge.url(),
        sink.url(),
        upstream.url(),
        // A WAL small enough that a flooding device meets its share within a minute.
        if o.scenario == Scenario::Abuse { "[wal]\nmax_records = 20000\n" } else { "" },
    ) + if o.scenario.control_traffic() { crate::commands::GATEWAY_CONFIG } else { "" }
        + &match &store {
        Some(s) => archive::sink_config(s, &o.work_dir)?,
        None => String::new(),
    } + &broker.as_ref().map(bus::sink_config).unwrap_or_default();
    let followers: Vec<_> = store
        .as_ref()
        .map(|s| archive::follow(&s.root, ledger.clone()))
        .into_iter()
        .chain(broker.as_ref().map(|b| bus::follow_into(b, ledger.clone())))
        .collect();
    let abuse_outcomes = crate::abuse::Outcomes::default();
    let mut gw = Gateway::start(&o.gateway_bin, &o.work_dir.join("gateway"), &extra)?;
    let http = reqwest::Client::new();
    wait_ready(&http, &gw).await;

    // Devices.
    let stop = Arc::new(AtomicBool::new(false));
    let (n_mqtt, n_http) = o.scenario.devices();
    let mut device_tasks = Vec::new();
    for i in 0..n_mqtt {
        device_tasks.push(tokio::spawn(devices::mqtt_device(
            format!("stm32-{i}"),
            edge.port,
            o.rate,
            ledger.clone(),
            stop.clone(),
        )));
    }
    for i in 0..n_http {
        let id = format!("http-{i}");
        device_tasks.push(tokio::spawn(devices::http_device(
            id.clone(),
            gw.ingest_url(&id),
            gw.token.clone(),
            o.rate,
            ledger.clone(),
            stop.clone(),
        )));
    }

    // Control traffic: an operator and a command listener per MQTT device.
    let commands = crate::commands::Shared::default();
    let mut control_tasks = Vec::new();
    let listeners_stop = Arc::new(AtomicBool::new(false));
    if o.scenario.control_traffic() {
        let ids: Vec<String> = (0..n_mqtt).map(|i| format!("stm32-{i}")).collect();
        for id in &ids {
            control_tasks.push(tokio::spawn(crate::commands::listener(
                id.clone(),
                edge.port,
                commands.clone(),
                listeners_stop.clone(),
            )));
        }
        let op_stop = stop.clone();
        control_tasks.push(tokio::spawn(crate::commands::operator(
            gw.admin(""),
            gw.admin_token.clone(),
            ids,
            o.seed,
            commands.clone(),
            op_stop,
        )));
    }

    // Faults, on the schedule.
    let mut watch = Watch::new((o.rate * (n_mqtt + n_http) as f64).max(20.0));
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    let mut kills = 0u64;
    let start = Instant::now();
    let mut last_fault_end = start;
    for p in &schedule {
        let at = start + Duration::from_secs_f64(p.at_secs);
        sample_until(&http, &gw, &mut watch, at).await;
        eprintln!(
            "[{:>6.1}s] {}",
            start.elapsed().as_secs_f64(),
            p.fault.kind()
        );
        *faults.entry(p.fault.kind()).or_default() += 1;
        watch.fault_begins();
        match &p.fault {
            Fault::FailActor(name) => {
                let r = http
                    .post(gw.admin(&format!("/admin/actors/{name}/fail")))
                    .bearer_auth(&gw.admin_token)
                    .send()
                    .await;
                if !r.as_ref().is_ok_and(|r| r.status().is_success()) {
                    eprintln!("  could not fail {name}: {:?}", r.map(|r| r.status()));
                }
            }
            Fault::Kill9 => {
                if let Some(s) = gw.sample(&http).await {
                    watch.add(&s, gw.rss_mib());
                }
                watch.process_ends();
                gw.kill9();
                kills += 1;
                gw.run()?;
            }
            Fault::UpstreamOutage { .. } => {
                watch.sink_down("upstream");
                upstream.stop();
                sample_until(&http, &gw, &mut watch, Instant::now() + p.fault.duration()).await;
                upstream.start()?;
                watch.sink_up();
            }
            Fault::EdgeBrokerRestart => {
                edge.stop();
                edge.start()?;
            }
            Fault::StoreOutage { .. } => {
                if let Some(s) = store.as_mut() {
                    s.stop();
                    sample_until(&http, &gw, &mut watch, Instant::now() + p.fault.duration()).await;
                    s.run()?;
                }
            }
            Fault::PoisonReading => {
                let url = gw.ingest_url(devices::POISON_DEVICE);
                let seq = faults.get("poison_reading").copied().unwrap_or(1) - 1;
                if !devices::poison_reading(&url, &gw.token, seq, &ledger).await {
                    eprintln!("  poison reading {seq} not accepted in 10 s");
                }
            }
            Fault::Abuse { attack, secs } => {
                let target = crate::abuse::Target {
                    http: format!("127.0.0.1:{}", gw.http_port).parse()?,
                    token: gw.token.clone(),
                };
                let attack = tokio::spawn(crate::abuse::run(
                    *attack,
                    *secs,
                    target,
                    abuse_outcomes.clone(),
                ));
                sample_until(&http, &gw, &mut watch, Instant::now() + p.fault.duration()).await;
                let overrun = attack_kind_overrun(&p.fault);
                let _ = tokio::time::timeout(overrun + Duration::from_secs(10), attack).await;
            }
            Fault::Sink { fault, .. } => {
                sink.set(Some(*fault));
                sample_until(&http, &gw, &mut watch, Instant::now() + p.fault.duration()).await;
                sink.set(None);
            }
        }
        last_fault_end = Instant::now();
    }
    watch.last_fault_end = Some(last_fault_end);
    sample_until(&http, &gw, &mut watch, start + o.duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in device_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    // The operator has stopped; the command listeners go on until the commands are judged.

    // Drain: wait until every acknowledged reading is at every sink or dead-lettered there.
    let stopped = Instant::now();
    let deadline = Instant::now() + o.drain_timeout;
    let mut dead = dead_letters(&http, &gw, &sinks).await;
    let drained_at = loop {
        if let Some(s) = gw.sample(&http).await {
            watch.add(&s, gw.rss_mib());
        }
        let keys: HashMap<String, HashSet<String>> = dead
            .iter()
            .map(|(s, rows)| (s.clone(), rows.iter().map(|(k, _)| k.clone()).collect()))
            .collect();
        let missing: usize = {
            let l = ledger.lock().expect("ledger");
            sinks
                .iter()
                .map(|s| l.missing(s, keys.get(*s).unwrap_or(&HashSet::new())).len())
                .sum()
        };
        if missing == 0 {
            break Some(Instant::now());
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        dead = dead_letters(&http, &gw, &sinks).await;
    };
    subscriber.abort();
    for f in followers {
        f.abort();
    }
    let command_report = if o.scenario.control_traffic() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let r = crate::commands::verdict(&gw.admin(""), &gw.admin_token, &commands, deadline).await;
        listeners_stop.store(true, Ordering::Relaxed);
        for t in control_tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        Some(r)
    } else {
        None
    };

    let keys: HashMap<String, HashSet<String>> = dead
        .iter()
        .map(|(s, rows)| (s.clone(), rows.iter().map(|(k, _)| k.clone()).collect()))
        .collect();
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for rows in dead.values() {
        for (_, reason) in rows {
            *by_reason.entry(reason.clone()).or_default() += 1;
        }
    }
    let verdict = ledger.lock().expect("ledger").verdict(&keys);
    let mut violations = verdict.violations();
    if drained_at.is_none() && verdict.lost == 0 {
        violations.push("backlog did not drain in time".into());
    }
    if let Some(c) = &command_report {
        violations.extend(c.violations.iter().map(|v| format!("command {v}")));
    }
    let log = gw.log_path().display().to_string();
    // The gateway's outage evidence, once its tracker has seen every backlog drain.
    crate::watch::outages_settled(&http, &gw, Duration::from_secs(10)).await;
    gw.stop();
    // The WAL the campaign leaves behind passes every check (issue 14).
    let wal_verify = match gw.verify_wal() {
        Ok((true, report)) => report,
        Ok((false, report)) => {
            violations.push(format!("wal verify failed: {report}"));
            report
        }
        Err(e) => {
            violations.push(format!("wal verify did not run: {e}"));
            e.to_string()
        }
    };
    let gateway_outages = gw.outage_reports(&o.chart).unwrap_or_else(|e| {
        violations.push(format!("report outages failed: {e}"));
        Vec::new()
    });
    let outage_check = (o.scenario == Scenario::FieldDemo).then(|| {
        let dups = verdict.sinks.get("upstream").map_or(0, |s| s.duplicates);
        crate::outages::check(
            &watch.windows,
            &gateway_outages,
            dups,
            watch.seq_gaps,
            crate::outages::Tolerance {
                start_ms: 1_000,
                // The retry after the broker is back waits up to twice the backoff (its
                // jitter), then a connect, then the tracker's next look (1 s).
                end_ms: 2 * BACKOFF_MAX_MS + 2_000,
                peak_records: o.rate * (n_mqtt + n_http) as f64 * 1.5,
            },
        )
    });
    if let Some(c) = &outage_check {
        violations.extend(c.violations.iter().map(|v| format!("outage report: {v}")));
    }
    Ok(Report {
        scenario: o.scenario,
        seed: o.seed,
        duration_secs: o.duration.as_secs_f64(),
        rate_per_device: o.rate,
        devices: BTreeMap::from([("mqtt", n_mqtt), ("http", n_http)]),
        violations,
        verdict,
        dead_lettered_by_reason: by_reason,
        faults_injected: faults,
        gateway_kills: kills,
        actor_restarts: watch.restarts(),
        peak_wal_backlog: watch.peak_backlog,
        drain_after_last_fault_secs: drained_at
            .map(|t| t.saturating_duration_since(last_fault_end).as_secs_f64()),
        drain_after_producers_stopped_secs: drained_at
            .map(|t| t.saturating_duration_since(stopped).as_secs_f64()),
        caught_up_after_last_fault_secs: watch
            .caught_up
            .map(|t| t.saturating_duration_since(last_fault_end).as_secs_f64()),
        max_mailbox_depth: watch.mailbox,
        gateway_peak_rss_mib: watch.peak_rss,
        schedule,
        abuse_outcomes: abuse_outcomes.snapshot(),
        commands: command_report,
        gateway_outages,
        outage_check,
        wal_verify,
        gateway_log: log,
    })
}
