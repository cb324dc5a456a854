//! `edge-gateway wal backup` (issue 14, part 5): taken while devices post, through the running
//! gateway's admin API (the command line finds it in `data/admin.addr`), the copy verifies and
//! restores to a gateway that delivers every reading acknowledged before the backup began;
//! with the gateway stopped it copies the file; it never overwrites a file.

mod common;

use common::sink::{Behaviour, RecordingSink};
use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn wal(cfg: &Path, args: &[&str]) -> (bool, String, String) {
    cli(cfg, &[&["wal"], args].concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_to_a_gateway_that_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::Always(503));
    let sinks = format!(
        "[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\n\
         [[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"{}\"\n",
        sink.url()
    );
    let cfg = write_config(dir.path(), &sinks);
    let gw = Gateway::start(&cfg);
    let mut before = ingest_seqs(&gw, &["d-1", "d-2"], 250, 50, 0).await;

    // Devices keep posting while the backup is taken.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (acked, stop, url, token) = (
            acked.clone(),
            stop.clone(),
            gw.url("/ingest/live"),
            gw.token.clone(),
        );
        tokio::spawn(async move {
            let c = client();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (s, _) = post_json(&c, &url, &token, &json!({"seq": seq, "v": 1})).await;
                if s == 202 {
                    acked.lock().unwrap().push(format!("live/seq/{seq}"));
                }
                seq += 1;
            }
        })
    };
    while acked.lock().unwrap().len() < 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Everything acknowledged by now must be in the backup.
    before.extend(acked.lock().unwrap().iter().cloned());
    let dest = dir.path().join("backup.redb");
    let (c, d) = (cfg.clone(), dest.display().to_string());
    let (ok, out, err) = tokio::task::spawn_blocking(move || wal(&c, &["backup", &d]))
        .await
        .unwrap();
    assert!(ok, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["via"]["gateway"].is_string(),
        "through the running gateway: {v}"
    );
    assert!(
        v["backup"]["records"].as_u64().unwrap() >= before.len() as u64,
        "{v}"
    );
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(gw
        .log()
        .contains("WAL backup written through the admin API"));

    // Only with the admin token; only to an absolute path.
    let c = client();
    let url = gw.admin_url("/admin/wal/backup?dest=/tmp/x.redb");
    assert_eq!(c.post(&url).send().await.unwrap().status().as_u16(), 401);
    let rel = gw.admin_url("/admin/wal/backup?dest=x.redb");
    let r = c
        .post(&rel)
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // Never over an existing file.
    let (c, d) = (cfg.clone(), dest.display().to_string());
    let (ok, _, err) = tokio::task::spawn_blocking(move || wal(&c, &["backup", &d]))
        .await
        .unwrap();
    assert!(!ok && err.contains("never overwrites"), "{err}");
    assert!(gw.terminate().success());

    // Stopped: copied from the file.
    let (ok, out, err) = wal(
        &cfg,
        &["backup", dir.path().join("offline.redb").to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert!(out.contains("\"via\":\"file\""), "{out}");

    // Restored into a new gateway: it verifies, and everything acknowledged before the backup
    // is delivered.
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir2.path().join("data")).unwrap();
    std::fs::copy(&dest, dir2.path().join("data/wal.redb")).unwrap();
    let cfg2 = write_config(dir2.path(), &sinks);
    let (ok, out, _) = wal(&cfg2, &["verify"]);
    assert!(ok, "{out}");
    sink.set(Behaviour::Ok);
    let _gw2 = Gateway::start(&cfg2);
    let want: HashSet<String> = before;
    sink.wait_for_keys(&want, Duration::from_secs(60))
        .await
        .unwrap();
}
