//! The S3 sink against a real S3-compatible store (`s3s-fs`, started here on a loopback
//! port): every acknowledged reading arrives exactly once across the objects, in per-device
//! order; a store that is down holds the sink and the backlog goes up once it is back; wrong
//! credentials hold the sink and dead-letter nothing; SIGKILL while objects go up loses
//! nothing and makes no second copy (a retry re-puts the same key); an object over
//! `multipart_bytes` goes up in parts.

mod common;

use common::*;
use edge_gateway_chaos::store::{Store, StoredObject, ACCESS_KEY, SECRET_KEY};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

const BUCKET: &str = "telemetry";

/// An `[[sinks]]` table for `store`, its credentials in files under `dir`.
fn s3_sink(store: &Store, dir: &Path, secret: &str, extra: &str) -> String {
    let (ak, sk) = (dir.join("s3.key"), dir.join("s3.secret"));
    write_secret(&ak, ACCESS_KEY);
    write_secret(&sk, secret);
    format!(
        "[[sinks]]\nname = \"archive\"\ntype = \"s3\"\nbucket = \"{BUCKET}\"\n\
         endpoint = \"{}\"\nforce_path_style = true\nregion = \"us-east-1\"\n\
         access_key_id_file = {:?}\nsecret_access_key_file = {:?}\nallow_insecure = true\n\
         key_prefix = \"edge/\"\ntimeout_ms = 5000\n{extra}\n",
        store.endpoint(),
        ak.display().to_string(),
        sk.display().to_string(),
    )
}

fn gateway(dir: &Path, store: &Store, secret: &str, extra: &str) -> (std::path::PathBuf, Gateway) {
    let cfg = write_config(
        dir,
        &format!(
            "[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\n{}",
            s3_sink(store, dir, secret, extra)
        ),
    );
    let gw = Gateway::start(&cfg);
    (cfg, gw)
}

async fn ingest(gw: &Gateway, devices: &[&str], n: u64, per_request: u64) -> HashSet<String> {
    ingest_seqs(gw, devices, n, per_request, 100).await
}

/// What arrived: deliveries per key, and per device the seqs in object order (objects in
/// the order of their first WAL seq, records in object order).
struct Arrived {
    count: HashMap<String, usize>,
    by_device: HashMap<String, Vec<u64>>,
    objects: Vec<StoredObject>,
}

fn arrived(store: &Store) -> Arrived {
    let mut objects = store.objects(BUCKET).unwrap();
    let first_seq = |o: &StoredObject| -> u64 {
        let name = o.key.rsplit('/').next().unwrap();
        name.split('-').next().unwrap().parse().unwrap()
    };
    objects.sort_by_key(first_seq);
    let mut count = HashMap::new();
    let mut by_device: HashMap<String, Vec<u64>> = HashMap::new();
    for o in &objects {
        for r in &o.records {
            *count
                .entry(r["idempotency_key"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
            by_device
                .entry(r["device_id"].as_str().unwrap().to_string())
                .or_default()
                .push(r["seq"].as_u64().unwrap());
        }
    }
    Arrived {
        count,
        by_device,
        objects,
    }
}

/// Polls the store's files (a store has no event to wait on), 60 s at most, until every key
/// in `want` is in some object.
async fn wait_arrived(store: &Store, want: &HashSet<String>) -> Arrived {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let a = arrived(store);
        let missing = want.iter().filter(|k| !a.count.contains_key(*k)).count();
        if missing == 0 {
            return a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} of {} readings not in the store",
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each acknowledged reading exactly once, each device's readings in order.
fn assert_once_in_order(a: &Arrived, want: &HashSet<String>, devices: &[&str], n: u64) {
    let twice: Vec<_> = a.count.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        twice.is_empty(),
        "{} readings in two objects or twice in one, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    assert_eq!(a.count.len(), want.len(), "nothing else arrived");
    for d in devices {
        assert_eq!(a.by_device[*d], (0..n).collect::<Vec<_>>(), "{d} in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_arrives_once_in_objects_of_the_configured_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::start(dir.path(), BUCKET).unwrap();
    let (_cfg, gw) = gateway(
        dir.path(),
        &store,
        SECRET_KEY,
        "max_batch_records = 50\nmax_batch_age_ms = 300",
    );
    let devices = ["d1", "d2", "d3"];
    let want = ingest(&gw, &devices, 60, 20).await;
    let a = wait_arrived(&store, &want).await;
    assert_once_in_order(&a, &want, &devices, 60);
    // 180 readings: full objects of 50, and what the age closed.
    assert!(a.objects.iter().all(|o| o.records.len() <= 50));
    assert!(
        a.objects.iter().any(|o| o.records.len() == 50),
        "full objects"
    );
    for o in &a.objects {
        assert!(o.key.starts_with("edge/"), "{}", o.key);
        assert!(
            o.key.contains("/dt=") && o.key.ends_with(".jsonl.gz"),
            "{}",
            o.key
        );
    }
    let wal = gw.admin_get("/admin/wal").await;
    assert_eq!(wal["sinks"][0]["pending"], 0, "all acked: {wal}");
}

/// The store down: readiness names the outage, nothing is dead-lettered; back: the backlog
/// goes up, every reading once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_holds_the_backlog_until_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::start(dir.path(), BUCKET).unwrap();
    store.stop();
    let (_cfg, gw) = gateway(
        dir.path(),
        &store,
        SECRET_KEY,
        "max_batch_records = 100\nmax_batch_age_ms = 200",
    );
    let devices = ["d1", "d2"];
    let want = ingest(&gw, &devices, 150, 50).await;
    gw.wait_metric("edge_gateway_sink_outage{sink=\"archive\"}", |v| v == 1.0)
        .await;
    let ready = gw.admin_get("/readyz").await;
    assert!(
        ready["sinks"]["archive"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("S3")),
        "{ready}"
    );
    store.run().unwrap();
    let a = wait_arrived(&store, &want).await;
    assert_once_in_order(&a, &want, &devices, 150);
    let wal = gw.admin_get("/admin/wal").await;
    assert_eq!(wal["sinks"][0]["dead"], 0, "{wal}");
}

/// Wrong credentials refuse the gateway, not the readings: held, nothing dead; with the right
/// ones (after a restart) everything goes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_hold_the_sink_and_dead_letter_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::start(dir.path(), BUCKET).unwrap();
    let extra = "max_batch_records = 20\nmax_batch_age_ms = 200";
    let (_cfg, gw) = gateway(dir.path(), &store, "not-the-secret", extra);
    let want = ingest(&gw, &["d1"], 40, 20).await;
    gw.wait_metric(
        "edge_gateway_publish_batches_total{result=\"outage\",sink=\"archive\"}",
        |v| v >= 3.0,
    )
    .await;
    let ready = gw.admin_get("/readyz").await;
    let reason = ready["sinks"]["archive"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("refuses the gateway"), "{ready}");
    let wal = gw.admin_get("/admin/wal").await;
    assert_eq!(wal["sinks"][0]["dead"], 0, "{wal}");
    assert!(arrived(&store).count.is_empty());
    gw.terminate();
    let (_cfg, _gw) = gateway(dir.path(), &store, SECRET_KEY, extra);
    let a = wait_arrived(&store, &want).await;
    assert_once_in_order(&a, &want, &["d1"], 40);
}

/// SIGKILL while a backlog goes up, twice: after the restarts every reading is in exactly one
/// object — an object put before the kill but not yet settled is put again under the same
/// key, never as a second copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_uploading_loses_nothing_and_copies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::start(dir.path(), BUCKET).unwrap();
    store.stop();
    let extra = "max_batch_records = 100\nmax_batch_age_ms = 200";
    let (cfg, gw) = gateway(dir.path(), &store, SECRET_KEY, extra);
    let devices = ["d1", "d2", "d3", "d4"];
    let want = ingest(&gw, &devices, 500, 100).await;
    store.run().unwrap();
    let mut gw = Some(gw);
    for _ in 0..2 {
        // Kill as soon as some objects are up and others are not.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while arrived(&store).objects.is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "nothing uploaded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        gw.take().unwrap().kill9();
        gw = Some(Gateway::start(&cfg));
    }
    let a = wait_arrived(&store, &want).await;
    assert_once_in_order(&a, &want, &devices, 500);
}

/// An object over `multipart_bytes` (5 MiB, S3's smallest part) goes up in parts and reads
/// back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_object_goes_up_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::start(dir.path(), BUCKET).unwrap();
    store.stop();
    let (_cfg, gw) = gateway(
        dir.path(),
        &store,
        SECRET_KEY,
        // Full at exactly the 2,600 readings (never closed early by age): one object.
        "compression = \"none\"\nmax_batch_records = 2600\nmax_batch_bytes = 33554432\n\
         max_batch_age_ms = 600000\nmultipart_bytes = 5242880",
    );
    let want = ingest_seqs(&gw, &["big"], 2600, 100, 2500).await;
    store.run().unwrap();
    let a = wait_arrived(&store, &want).await;
    assert_once_in_order(&a, &want, &["big"], 2600);
    assert_eq!(a.objects.len(), 1, "one object of ~6.5 MiB");
}
