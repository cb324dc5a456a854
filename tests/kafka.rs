//! The Kafka sink against a real Kafka-protocol broker (tansu, started here on a loopback
//! port; memory storage): every acknowledged reading arrives, keyed by its device, with its
//! idempotency key as a header, each device's readings in order; duplicates (after a SIGKILL)
//! only as byte-identical re-sends; a broker that is down holds the backlog, and so do refused
//! credentials; one reading over
//! `max_message_bytes` is dead-lettered alone, naming its size.

mod common;

use common::*;
use edge_gateway_chaos::kafka::{follow, KafkaBroker, Seen};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOPIC: &str = "telemetry";

fn gateway(dir: &Path, broker: &KafkaBroker, extra: &str) -> (std::path::PathBuf, Gateway) {
    let cfg = write_config(
        dir,
        &format!(
            "[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\nbatch_size = 100\n\
             [[sinks]]\nname = \"bus\"\ntype = \"kafka\"\nbrokers = \"{}\"\ntopic = \"{TOPIC}\"\n\
             timeout_ms = 3000\n{extra}\n",
            broker.brokers()
        ),
    );
    let gw = Gateway::start(&cfg);
    (cfg, gw)
}

async fn ingest(gw: &Gateway, devices: &[&str], n: u64) -> HashSet<String> {
    ingest_seqs(gw, devices, n, 50, 0).await
}

/// Polls what the reader saw (a topic has no event to wait on here), 60 s at most, until
/// every key in `want` arrived.
async fn wait_seen(seen: &Arc<Mutex<Vec<Seen>>>, want: &HashSet<String>) -> Vec<Seen> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = seen.lock().unwrap().clone();
        let have: HashSet<&str> = got.iter().map(|s| s.idempotency_key.as_str()).collect();
        let missing = want.iter().filter(|k| !have.contains(k.as_str())).count();
        if missing == 0 {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} of {} readings not on the topic",
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Keyed by device, the payload's key in the header, each device in order of first arrival
/// (one device, one partition), duplicates byte-identical.
fn check(seen: &[Seen], devices: &[&str], n: u64) -> usize {
    let mut first: HashMap<String, Vec<u8>> = HashMap::new();
    let mut order: HashMap<String, Vec<u64>> = HashMap::new();
    let mut duplicates = 0;
    for s in seen {
        let v: serde_json::Value = serde_json::from_slice(&s.payload).unwrap();
        assert_eq!(
            v["idempotency_key"],
            s.idempotency_key.as_str(),
            "header = payload key"
        );
        assert_eq!(v["device_id"], s.key.as_str(), "message key = device");
        match first.get(&s.idempotency_key) {
            Some(p) => {
                assert_eq!(
                    p, &s.payload,
                    "a duplicate must be a byte-identical re-send"
                );
                duplicates += 1;
            }
            None => {
                first.insert(s.idempotency_key.clone(), s.payload.clone());
                order
                    .entry(s.key.clone())
                    .or_default()
                    .push(v["seq"].as_u64().unwrap());
            }
        }
    }
    for d in devices {
        assert_eq!(order[*d], (0..n).collect::<Vec<_>>(), "{d} in order");
    }
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_arrives_keyed_by_device_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = KafkaBroker::start(dir.path(), &[TOPIC]).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    follow(broker.brokers(), TOPIC.into(), seen.clone());
    let (_cfg, gw) = gateway(dir.path(), &broker, "");
    let devices = ["d1", "d2", "d3"];
    let want = ingest(&gw, &devices, 200).await;
    let got = wait_seen(&seen, &want).await;
    assert_eq!(check(&got, &devices, 200), 0, "no faults, no duplicates");
    let wal = gw.admin_get("/admin/wal").await;
    assert_eq!(wal["sinks"][0]["dead"], 0, "{wal}");
    // A device's W3C trace context travels with its reading, as a header (traces off here:
    // passed on unchanged).
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = client()
        .post(gw.url("/ingest/d9"))
        .bearer_auth(&gw.token)
        .header("traceparent", tp)
        .json(&json!({"seq": 1, "t": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let got = wait_seen(&seen, &HashSet::from(["d9/seq/1".to_string()])).await;
    let m = got
        .iter()
        .find(|s| s.idempotency_key == "d9/seq/1")
        .unwrap();
    assert_eq!(m.traceparent, tp);
    assert!(got
        .iter()
        .filter(|s| s.idempotency_key != "d9/seq/1")
        .all(|s| s.traceparent.is_empty()));
}

/// The broker down: held (readiness names it), nothing dead; back: the backlog arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_holds_the_backlog_until_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = KafkaBroker::start(dir.path(), &[TOPIC]).unwrap();
    broker.stop();
    let (_cfg, gw) = gateway(dir.path(), &broker, "");
    let want = ingest(&gw, &["d1", "d2"], 150).await;
    gw.wait_metric("edge_gateway_sink_outage{sink=\"bus\"}", |v| v == 1.0)
        .await;
    let wal = gw.admin_get("/admin/wal").await;
    assert_eq!(wal["sinks"][0]["dead"], 0, "{wal}");
    broker.run(&[TOPIC]).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    follow(broker.brokers(), TOPIC.into(), seen.clone());
    let got = wait_seen(&seen, &want).await;
    check(&got, &["d1", "d2"], 150);
}

/// Credentials the brokers refuse (SASL): the sink is held, readiness names it, nothing is
/// dead-lettered however long it lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_hold_the_sink_and_dead_letter_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = KafkaBroker::start_with(dir.path(), &[], true).unwrap();
    let pw = dir.path().join("kafka.password");
    write_secret(&pw, "not-a-user");
    let extra = format!(
        "sasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"gw\"\n\
         sasl_password_file = {:?}\nallow_insecure = true",
        pw.display().to_string()
    );
    let (_cfg, gw) = gateway(dir.path(), &broker, &extra);
    ingest(&gw, &["d1"], 20).await;
    gw.wait_metric("edge_gateway_sink_outage{sink=\"bus\"}", |v| v == 1.0)
        .await;
    gw.wait_metric(
        "edge_gateway_publish_batches_total{result=\"outage\",sink=\"bus\"}",
        |v| v >= 2.0,
    )
    .await;
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(ready["sinks"]["bus"]["state"], "outage", "{ready}");
    let wal = gw.admin_get("/admin/wal").await;
    assert_eq!(wal["sinks"][0]["dead"], 0, "{wal}");
    assert_eq!(wal["sinks"][0]["pending"], 20, "{wal}");
}

/// SIGKILL while a backlog goes out, twice: nothing lost; what arrives twice is the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_producing_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = KafkaBroker::start(dir.path(), &[TOPIC]).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    follow(broker.brokers(), TOPIC.into(), seen.clone());
    let (cfg, gw) = gateway(dir.path(), &broker, "");
    let devices = ["d1", "d2", "d3", "d4"];
    let want = ingest(&gw, &devices, 500).await;
    let mut gw = Some(gw);
    for _ in 0..2 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while seen.lock().unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "nothing produced");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        gw.take().unwrap().kill9();
        gw = Some(Gateway::start(&cfg));
    }
    let got = wait_seen(&seen, &want).await;
    check(&got, &devices, 500);
}

/// One reading over `max_message_bytes` among small ones: dead-lettered alone, naming its size;
/// every other reading arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reading_too_big_for_kafka_is_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let broker = KafkaBroker::start(dir.path(), &[TOPIC]).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    follow(broker.brokers(), TOPIC.into(), seen.clone());
    let (_cfg, gw) = gateway(dir.path(), &broker, "max_message_bytes = 4096");
    let c = client();
    let mut body: Vec<_> = (0..30).map(|i| json!({"seq": i})).collect();
    body[12] = json!({"seq": 12, "blob": "x".repeat(8192)});
    let (s, _) = post_json(&c, &gw.url("/ingest/d1"), &gw.token, &json!(body)).await;
    assert_eq!(s, 202);
    let want: HashSet<String> = (0..30)
        .filter(|i| *i != 12)
        .map(|i| format!("d1/seq/{i}"))
        .collect();
    let got = wait_seen(&seen, &want).await;
    let dl = gw.wait_dead_letters("bus", 1).await;
    let d = &dl["dead_letters"][0];
    assert_eq!(d["record"]["idempotency_key"], "d1/seq/12", "{dl}");
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("max_message_bytes 4096"),
        "{dl}"
    );
    let order: Vec<u64> = got
        .iter()
        .map(|s| {
            serde_json::from_slice::<serde_json::Value>(&s.payload).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let mut firsts = Vec::new();
    for s in order {
        if !firsts.contains(&s) {
            firsts.push(s);
        }
    }
    assert_eq!(firsts, (0..30).filter(|i| *i != 12).collect::<Vec<_>>());
}
