//! "Where is my reading?" (issue 14, part 1): `GET /admin/records/{id}` and `edge-gateway wal
//! show ID` find a record by WAL seq, correlation id or idempotency key, with its state at
//! each sink — pending with attempts, dead with the reason, settled — while the gateway runs
//! (through the admin API) and stopped (from the file).

mod common;

use common::sink::{Behaviour, RecordingSink};
use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

fn show(cfg: &std::path::Path, id: &str) -> (bool, Value, String) {
    let out = Command::new(BIN)
        .args(["wal", "show", id, "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn state<'a>(v: &'a Value, sink: &str) -> &'a Value {
    v["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sink"] == sink)
        .unwrap_or_else(|| panic!("no {sink} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_is_found_by_seq_correlation_id_or_key_with_its_state_per_sink() {
    let dir = tempfile::tempdir().unwrap();
    let api = RecordingSink::start().await;
    api.set(Behaviour::Poison);
    let slow = RecordingSink::start().await;
    slow.set(Behaviour::Always(503));
    let cfg = write_config(
        dir.path(),
        &format!(
            "[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\n\
             [[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"{}\"\n\
             [[sinks]]\nname = \"slow\"\ntype = \"http\"\nurl = \"{}\"\n",
            api.url(),
            slow.url()
        ),
    );
    let gw = Gateway::start(&cfg);
    let c = client();
    let (s, ok) = post_json(
        &c,
        &gw.url("/ingest/d-1"),
        &gw.token,
        &json!({"seq": 1, "t": 2}),
    )
    .await;
    assert_eq!(s, 202);
    let (s, _) = post_json(
        &c,
        &gw.url("/ingest/d-1"),
        &gw.token,
        &json!({"seq": 2, "poison": true}),
    )
    .await;
    assert_eq!(s, 202);
    api.wait_for_keys(
        &HashSet::from(["d-1/seq/1".to_string()]),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    gw.wait_dead_letters("api", 1).await;

    // Running: through the admin API, by key (it holds '/').
    let (found, v, err) = show(&cfg, "d-1/seq/2");
    assert!(found, "{err}");
    assert_eq!(v["record"]["idempotency_key"], "d-1/seq/2", "{v}");
    let dead = state(&v, "api");
    assert_eq!(dead["state"], "dead", "{v}");
    assert!(
        dead["dead"]["reason"].as_str().unwrap().contains("400"),
        "{v}"
    );
    assert_eq!(state(&v, "slow")["state"], "pending", "{v}");
    // By correlation id, and by WAL seq: the same record.
    let corr = ok["correlation_id"].as_str().unwrap();
    let by_corr: Value = gw.admin_get(&format!("/admin/records/{corr}")).await;
    assert_eq!(
        by_corr["record"]["idempotency_key"], "d-1/seq/1",
        "{by_corr}"
    );
    // The api sink acked it: its ack is kept in the history (`wal.history_secs`).
    let api = state(&by_corr, "api");
    assert_eq!(api["state"], "acked", "{by_corr}");
    assert!(api["acked_at_wal_ms"].as_u64().is_some(), "{by_corr}");
    let seq = by_corr["wal_seq"].as_u64().unwrap();
    let by_seq: Value = gw.admin_get(&format!("/admin/records/{seq}")).await;
    assert_eq!(by_seq["record"]["correlation_id"], corr);
    let missing = c
        .get(gw.admin_url("/admin/records/nothing-like-it"))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    let unauth = c
        .get(gw.admin_url("/admin/records/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status().as_u16(), 401);
    assert!(gw.terminate().success());

    // Stopped: from the file.
    let (found, v, _) = show(&cfg, corr);
    assert!(found);
    assert_eq!(v["wal_seq"], seq, "{v}");
    // A sink in an outage uses up no attempts (docs/operations.md).
    assert_eq!(state(&v, "slow")["state"], "pending", "{v}");
    assert_eq!(state(&v, "slow")["attempts"], 0, "{v}");
    let (found, _, err) = show(&cfg, "nothing-like-it");
    assert!(!found && err.contains("not in the WAL"), "{err}");
}

/// The CLI reaches a gateway whose admin listener has TLS: with `--admin-ca-file` it trusts
/// the listener's CA; without it, it says which flag is missing instead of reading a file
/// the gateway holds open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reaches_an_admin_listener_with_tls_through_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki::Pki::new(&dir.path().join("pki"));
    let down = RecordingSink::start().await;
    down.set(Behaviour::Always(503));
    let cfg = write_config(
        dir.path(),
        &format!(
            "[admin.tls]\ncert_file = {:?}\nkey_file = {:?}\n\
             [[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"{}\"\n",
            pki.path("server.pem"),
            pki.path("server.key"),
            down.url()
        ),
    );
    let gw = Gateway::start(&cfg);
    let addr = std::fs::read_to_string(dir.path().join("data/admin.addr")).unwrap();
    assert!(addr.starts_with("https://"), "{addr}");
    let (s, _) = post_json(
        &client(),
        &gw.url("/ingest/d-tls"),
        &gw.token,
        &json!({"seq": 1, "t": 20.5}),
    )
    .await;
    assert_eq!(s, 202);
    let ca = pki.path("ca.pem");
    let (ok, out, err) = cli(
        &cfg,
        &[
            "wal",
            "show",
            "d-tls/seq/1",
            "--admin-ca-file",
            ca.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["record"]["device_id"], "d-tls", "{v}");
    assert_eq!(state(&v, "api")["state"], "pending", "{v}");
    // Without the CA: refused by TLS, and the message names the flag.
    let (ok, _, err) = cli(&cfg, &["wal", "show", "d-tls/seq/1"]);
    assert!(!ok);
    assert!(err.contains("--admin-ca-file"), "{err}");
    // The dead-letter tools go the same way.
    let (ok, out, err) = cli(
        &cfg,
        &[
            "dlq",
            "list",
            "--sink",
            "api",
            "--json",
            "--admin-ca-file",
            ca.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        page["dead_letters"].as_array().map(Vec::len),
        Some(0),
        "{page}"
    );
    drop(gw);
}

/// A graceful stop while a publish hangs costs the reading no attempt: the dispatcher returns
/// its leases with the attempt refunded, durably, before the WAL stops — so a box restarted
/// nightly through a long outage never dead-letters its oldest batch as "max attempts".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_publish_costs_the_reading_no_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let hang = RecordingSink::start().await;
    hang.set(Behaviour::Hang);
    let cfg = write_config(
        dir.path(),
        &format!(
            "[[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"{}\"\ntimeout_ms = 30000\n",
            hang.url()
        ),
    );
    let gw = Gateway::start(&cfg);
    let (s, _) = post_json(
        &client(),
        &gw.url("/ingest/d-stop"),
        &gw.token,
        &json!({"seq": 1, "t": 20.5}),
    )
    .await;
    assert_eq!(s, 202);
    gw.wait_metric(
        "edge_gateway_wal_records{sink=\"api\",state=\"in_flight\"}",
        |v| v >= 1.0,
    )
    .await;
    assert!(gw.terminate().success());
    let (found, v, err) = show(&cfg, "d-stop/seq/1");
    assert!(found, "{err}");
    assert_eq!(state(&v, "api")["state"], "pending", "{v}");
    assert_eq!(state(&v, "api")["attempts"], 0, "{v}");
}
