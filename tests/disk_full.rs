//! A full disk stops ingest, never delivery (issue 9, part 7; RELIABILITY.md field
//! condition). Before: data dir on a 24 MiB filesystem, sink down, 42,900 readings
//! acknowledged until the disk filled; when the sink came back every commit — settles and
//! deletes too — failed with ENOSPC, the WAL restarted until the budgets ran out and the
//! process exited: 0 delivered.
//!
//! Here on a real 24 MiB tmpfs the test mounts (skipped, saying so, where mounting is not
//! permitted): fill it through ingest until the gateway refuses (503 `disk_full`), then let
//! another file take the last bytes, bring the sink back — every acknowledged reading
//! delivered, no crash loop — and ingest resumes by itself. Then, with the guard off, readings
//! until a commit meets ENOSPC: refused, the reserve released, the store reopened in place,
//! appends refused until the reserve is back (its room is for settles), everything
//! acknowledged delivered.
//!
//! A CI run once lost the gateway in part two (the reopen after a second ENOSPC met the
//! full disk and failed the actor into a restart loop). Since then the reserve's room goes
//! to settles only: appends wait, every commit is durable so freed pages are reused at
//! once, and a reopen that meets ENOSPC waits for room instead of failing.

mod common;

use common::sink::{Behaviour, RecordingSink};
use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A tmpfs of `mib` MiB at a fresh directory, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(mib: u64) -> Option<SmallFs> {
        let dir = tempfile::tempdir().ok()?.keep();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallFs(dir))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

async fn post_batch(gw: &Gateway, from: u64) -> (u16, Value) {
    let body: Vec<Value> = (from..from + 100)
        .map(|s| json!({"seq": s, "pad": "x".repeat(200)}))
        .collect();
    let r = client()
        .post(gw.url("/ingest/board"))
        .bearer_auth(&gw.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn keys(from: u64) -> impl Iterator<Item = String> {
    (from..from + 100).map(|s| format!("board/seq/{s}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_ingest_never_delivery() {
    let Some(fs) = SmallFs::mount(24) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)");
        return;
    };
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::Always(503));
    let cfg = write_config(
        &fs.0,
        &format!(
            "[wal]\nmin_free_bytes = 4194304\nreserve_bytes = 2097152\nmaintenance_interval_ms = 200\n\
             [delivery]\nmax_attempts = 10000\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\n\
             [[sinks]]\nname = \"analytics\"\ntype = \"http\"\nurl = \"{}\"\n",
            sink.url()
        ),
    );
    let gw = Gateway::start(&cfg);
    assert!(
        fs.0.join("data/wal.reserve").exists(),
        "the reserve is made at start"
    );
    // Fill through ingest until the gateway refuses.
    let mut acked = HashSet::new();
    let mut next = 0u64;
    let refusal = loop {
        let (status, body) = post_batch(&gw, next).await;
        match status {
            202 => acked.extend(keys(next)),
            503 if body["error"] == "disk_full" => break body,
            other => panic!("{other}: {body}"),
        }
        next += 100;
        assert!(next < 1_000_000, "the disk never filled");
    };
    assert!(
        acked.len() > 1000,
        "{} acknowledged before the disk filled",
        acked.len()
    );
    eprintln!(
        "{} readings acknowledged before `disk_full`: {refusal}",
        acked.len()
    );
    let ready = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "readiness says why");
    assert!(ready.text().await.unwrap().contains("wal_disk"));

    // Another process takes the last bytes: commits meet ENOSPC inside the WAL.
    let filler = fs.0.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 64 << 20]); // fails part-way: the disk is full
                                                          // The sink comes back: delivery frees space even so, and nothing restarts in a loop.
    sink.set(Behaviour::Ok);
    sink.wait_for_keys(&acked, Duration::from_secs(90))
        .await
        .expect("every acknowledged reading delivered from a full disk");
    let m = gw.metrics().await;
    // Whether a settle needs the file to grow here depends on the free pages redb holds
    // (often it does: ENOSPC, the reserve released, the store reopened); the second part
    // below meets ENOSPC every time.
    let enospc = metric(&m, "edge_gateway_wal_enospc_total").unwrap_or(0.0);
    eprintln!("commits that met ENOSPC while delivering: {enospc}");
    let wal_restarts =
        metric(&m, "edge_gateway_actor_restarts_total{actor=\"wal\"}").unwrap_or(0.0);
    assert!(
        wal_restarts == 0.0,
        "no crash loop: {wal_restarts} WAL restarts\n{}",
        gw.log()
    );

    // The filler goes (the operator cleans up): ingest resumes by itself.
    std::fs::remove_file(&filler).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = post_batch(&gw, next).await;
        if status == 202 {
            acked.extend(keys(next));
            break;
        }
        assert_eq!(body["error"], "disk_full", "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "ingest never resumed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sink.wait_for_keys(&acked, Duration::from_secs(30))
        .await
        .unwrap();
    gw.terminate();

    // Part two, ENOSPC every time: the free-space guard off (`min_free_bytes = 0`, as a
    // misconfigured box would have it), the sink down, a filler taking the last bytes, and
    // readings posted until a commit meets the full disk. That commit's readings are refused
    // (never acknowledged), the reserve goes, the store reopens in place — no restart — and
    // once the sink is back every reading acknowledged in either part is delivered.
    let _ = std::fs::remove_file(fs.0.join("filler"));
    let cfg2 = fs.0.join("gateway-noguard.toml");
    std::fs::write(
        &cfg2,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("min_free_bytes = 4194304", "min_free_bytes = 0"),
    )
    .unwrap();
    sink.set(Behaviour::Always(503));
    let gw = Gateway::start(&cfg2);
    let _ = std::fs::write(fs.0.join("filler"), vec![0u8; 64 << 20]); // to the last byte
    let mut enospc = 0.0;
    for _ in 0..2_000 {
        next += 100;
        let (status, body) = post_batch(&gw, next).await;
        match status {
            202 => acked.extend(keys(next)),
            503 => {
                enospc =
                    metric(&gw.metrics().await, "edge_gateway_wal_enospc_total").unwrap_or(0.0);
                if enospc >= 1.0 {
                    break;
                }
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(enospc >= 1.0, "a commit met the full disk");
    // Until the reserve is back its room is the settles': appends wait, guard or no guard.
    let (status, body) = post_batch(&gw, next + 100).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "disk_full", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("reserve is in use"),
        "{body}"
    );
    sink.set(Behaviour::Ok);
    if let Err(missing) = sink.wait_for_keys(&acked, Duration::from_secs(90)).await {
        let mut gw = gw;
        let wal = if gw.alive() {
            gw.admin_get("/admin/wal").await
        } else {
            json!("the gateway has exited")
        };
        let log = gw.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "{} acknowledged readings not delivered after ENOSPC, e.g. {:?}\nWAL: {wal}\nlog (newest first): {tail:#?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
    let m = gw.metrics().await;
    let wal_restarts =
        metric(&m, "edge_gateway_actor_restarts_total{actor=\"wal\"}").unwrap_or(0.0);
    assert!(
        wal_restarts == 0.0,
        "no crash loop after ENOSPC: {wal_restarts} WAL restarts\n{}",
        gw.log()
    );
    drop(gw);
    assert!(Path::new(&fs.0).exists());
}
