//! Dead letters at scale (issue 14, part 2): `edge-gateway dlq list | export | requeue |
//! purge` with filters (device glob, reason, time), cursor paging, JSON Lines export —
//! through the running gateway and from the file when it is stopped; requeue and purge
//! counted and audited; an export of many dead letters in bounded memory.

mod common;

use common::sink::{Behaviour, RecordingSink};
use common::*;
use edge_gateway_actors::wal::{Op, Outcome, Record, Source, WalLimits, WalStore};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn dlq(cfg: &Path, args: &[&str]) -> (bool, String, String) {
    cli(cfg, &[&["dlq"], args].concat())
}

async fn poison(gw: &Gateway, device: &str, n: u64) {
    let c = client();
    for i in 0..n {
        let (s, b) = post_json(
            &c,
            &gw.url(&format!("/ingest/{device}")),
            &gw.token,
            &json!({"seq": i, "poison": true}),
        )
        .await;
        assert_eq!(s, 202, "{b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_exported_requeued_and_purged_by_filter() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::Poison);
    let cfg = write_config(
        dir.path(),
        &format!(
            "[delivery]\nbatch_size = 50\nbackoff_initial_ms = 20\nbackoff_max_ms = 100\n\
             [[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"{}\"\n",
            sink.url()
        ),
    );
    let gw = Gateway::start(&cfg);
    for d in ["stm32-1", "stm32-2", "esp-1"] {
        poison(&gw, d, 40).await;
    }
    gw.wait_dead_letters("api", 120).await;

    // Running: paged through the admin API.
    let (ok, out, err) = dlq(
        &cfg,
        &[
            "list", "--sink", "api", "--device", "stm32-*", "--limit", "50", "--json",
        ],
    );
    assert!(ok, "{err}");
    let p1: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p1["dead_letters"].as_array().unwrap().len(), 50);
    let next = p1["next"].as_u64().expect("a next page");
    let (_, out, _) = dlq(
        &cfg,
        &[
            "list",
            "--sink",
            "api",
            "--device",
            "stm32-*",
            "--limit",
            "50",
            "--after",
            &next.to_string(),
            "--json",
        ],
    );
    let p2: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p2["dead_letters"].as_array().unwrap().len(), 30);
    assert!(p2["next"].is_null());
    let (_, table, _) = dlq(&cfg, &["list", "--sink", "api", "--limit", "2"]);
    assert!(
        table.contains("WAL_SEQ") && table.contains("rejected") && table.contains("more: --after")
    );

    // Export of one device's, streamed.
    let file = dir.path().join("esp.jsonl");
    let (ok, _, err) = dlq(
        &cfg,
        &[
            "export",
            "--sink",
            "api",
            "--device",
            "esp-*",
            "--out",
            file.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 40);
    assert!(lines.iter().all(|l| l["record"]["device_id"] == "esp-1"
        && l["class"] == "rejected"
        && l["reason"].as_str().unwrap().contains("400")));
    let (ok, _, err) = dlq(
        &cfg,
        &["export", "--sink", "api", "--out", file.to_str().unwrap()],
    );
    assert!(!ok && err.contains("never overwritten"), "{err}");
    // A time window in the future takes nothing.
    let (_, out, _) = dlq(
        &cfg,
        &[
            "list",
            "--sink",
            "api",
            "--since",
            "2099-01-01T00:00:00Z",
            "--json",
        ],
    );
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["dead_letters"],
        json!([])
    );

    // Requeue one device's after "fixing the sink": delivered.
    sink.set(Behaviour::Ok);
    let (ok, out, err) = dlq(&cfg, &["requeue", "--sink", "api", "--device", "stm32-1"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"requeued\":40"), "{out}");
    let want: HashSet<String> = (0..40).map(|i| format!("stm32-1/seq/{i}")).collect();
    sink.wait_for_keys(&want, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(gw.terminate().success());

    // Stopped: from the file.
    let (ok, out, err) = dlq(
        &cfg,
        &[
            "purge", "--sink", "api", "--device", "stm32-2", "--reason", "rejected",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("\"purged\":40"), "{out}");
    let (_, out, _) = dlq(
        &cfg,
        &["list", "--sink", "api", "--json", "--limit", "1000"],
    );
    let left: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        left["dead_letters"].as_array().unwrap().len(),
        40,
        "esp-1's"
    );
    let (ok, _, err) = dlq(&cfg, &["list", "--sink", "api", "--reason", "nonsense"]);
    assert!(!ok && err.contains("must be one of"), "{err}");
    let audit = std::fs::read_to_string(dir.path().join("data/audit.jsonl")).unwrap();
    assert!(
        audit.contains("\"action\":\"dlq.requeue\"") && audit.contains("\"action\":\"dlq.purge\"")
    );
}

fn record(i: u64) -> Record {
    Record {
        device_id: format!("dev-{}", i % 100),
        idempotency_key: format!("dev-{}/seq/{i}", i % 100),
        correlation_id: format!("c-{i}"),
        gateway_id: "gw".into(),
        receive_ts_ms: 1_800_000_000_000,
        source: Source::Http,
        schema: 1,
        msg_id: None,
        device_seq: Some(i),
        device_ts: None,
        data: serde_json::from_value(json!({"temp": 21.5, "pad": "x".repeat(300)})).unwrap(),
        clock_synced: true,
        fingerprint: Default::default(),
        encoded: Default::default(),
        route: Default::default(),
        trace: None,
        send_trace: None,
    }
}

/// The export's peak resident memory while it writes many dead letters: it streams, so it
/// stays far below the export's size (`EDGE_GATEWAY_DLQ_ROWS`, default 100,000; the figure for
/// 1,000,000 is in docs/benchmarks.md).
#[test]
fn an_export_of_many_dead_letters_streams_in_bounded_memory() {
    let rows: u64 = std::env::var("EDGE_GATEWAY_DLQ_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"http://127.0.0.1:9/\"\n",
    );
    let mut limits = WalLimits::from_config(
        &edge_gateway::config::WalConfig::default(),
        &edge_gateway::config::DeliveryConfig::default(),
    );
    limits.max_records = 10_000_000;
    limits.max_bytes = 8 << 30;
    limits.max_dead_per_sink = 10_000_000;
    let mut s = WalStore::open(
        &dir.path().join("data/wal.redb"),
        vec!["api".into()],
        limits,
    )
    .unwrap();
    for start in (0..rows).step_by(20_000) {
        let end = (start + 20_000).min(rows);
        let recs = (start..end).map(record).collect();
        let lease = Op::Lease {
            sink: "api".into(),
            max: (end - start) as usize,
            fill: None,
            lanes: None,
        };
        let (s2, r) = s.apply(vec![Op::Append(recs), lease], 1).unwrap();
        let seqs: Vec<u64> = match &r[1] {
            edge_gateway_actors::wal::OpResult::Leased(l) => l.iter().map(|l| l.seq).collect(),
            other => panic!("{other:?}"),
        };
        let outcomes = seqs
            .into_iter()
            .map(|q| (q, Outcome::Dead("HTTP 400".into())))
            .collect();
        let (s3, _) = s2
            .apply(
                vec![Op::Settle {
                    sink: "api".into(),
                    outcomes,
                }],
                2,
            )
            .unwrap();
        s = s3;
    }
    drop(s);
    // The baseline: the same binary reading one dead letter.
    let small = peak(&cfg, &["list", "--sink", "api", "--limit", "1"]);
    let out = dir.path().join("all.jsonl");
    let peak_kib = peak(
        &cfg,
        &["export", "--sink", "api", "--out", out.to_str().unwrap()],
    );
    let written = std::fs::metadata(&out).unwrap().len();
    let lines = std::fs::read_to_string(&out).unwrap().lines().count() as u64;
    assert_eq!(lines, rows);
    println!(
        "exported {rows} dead letters: {} MiB written, peak RSS {} MiB (listing one: {} MiB)",
        written >> 20,
        peak_kib >> 10,
        small >> 10
    );
    assert!(small > 0 && peak_kib > 0);
    // Every row, and no more memory than one beyond the page cache (16 MiB) and a buffer.
    assert!(
        peak_kib < small + (24 << 10) && peak_kib * 1024 < written,
        "peak RSS {peak_kib} KiB exporting all, {small} KiB listing one: it grows with the export"
    );
}

/// `edge-gateway dlq ARGS`'s peak resident memory in KiB.
fn peak(cfg: &Path, args: &[&str]) -> u64 {
    let mut child = Command::new(BIN)
        .arg("dlq")
        .args(args)
        .arg("--config")
        .arg(cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // VmHWM is the peak so far: the last reading before the process ends is its peak.
    let mut peak_kib = 0u64;
    while child.try_wait().unwrap().is_none() {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        if let Some(v) = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
        {
            peak_kib = v;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    peak_kib
}
