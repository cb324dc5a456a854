//! Hostile and buggy MQTT clients against the real binary and real mosquitto brokers (issue
//! 8, docs/security.md). Each test asserts the defended outcome and that honest devices' readings
//! all arrived.

mod common;

use common::mqtt::{self, tls_transport, Device};
use common::pki::Pki;
use common::sink::{Behaviour, RecordingSink};
use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

fn gateway_config(
    dir: &Path,
    broker_url: &str,
    sink: &RecordingSink,
    extra: &str,
) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    write_config(
        dir,
        &format!(
            "[mqtt]\nenabled = true\nbroker = \"{broker_url}\"\nreconnect_initial_ms = 50\nreconnect_max_ms = 500\n\
             {extra}\n[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 300\nmax_attempts = 1000\n\
             [[sinks]]\nname = \"analytics\"\ntype = \"http\"\nurl = \"{}\"\ntimeout_ms = 5000\n",
            sink.url()
        ),
    )
}

async fn wait_log(gw: &Gateway, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !gw.log().contains(needle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {needle:?} in:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 8, second reproduction, on the shipped edge config: the gateway is down, a device's
/// 50 readings wait in the gateway's session at the broker, and that device connects with
/// its own certificate and the gateway's client id. Before `use_username_as_clientid` the
/// broker handed it the gateway's session and dropped the 50; now it gets its own session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_certificate_cannot_take_over_the_gateway_session() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    for cn in ["gateway@edge-gateway", "device-a"] {
        pki.client(cn);
    }
    let broker = mqtt::shipped_edge(&dir.path().join("edge"), &pki.dir);
    let sink = RecordingSink::start().await;
    let tls = format!(
        "[mqtt.tls]\nca_file = {:?}\nclient_cert_file = {:?}\nclient_key_file = {:?}\n",
        pki.path("ca.pem").display().to_string(),
        pki.path("gateway@edge-gateway.pem").display().to_string(),
        pki.path("gateway@edge-gateway.key").display().to_string()
    );
    let cfg = gateway_config(&dir.path().join("gw"), &broker.tls_url(), &sink, &tls);
    // The gateway subscribes once (its persistent session now exists), then stops.
    let gw = Gateway::start(&cfg);
    wait_log(&gw, "mqtt session subscribed").await;
    gw.terminate();

    let device = || Some(tls_transport(&pki.dir, "ca.pem", Some("device-a")));
    let mut a = Device::connect(broker.port, "device-a", device()).await;
    for seq in 0..50 {
        a.publish_seq(seq).await;
    }
    assert!(
        a.wait_acked(Duration::from_secs(20)).await,
        "50 PUBACKs from the broker"
    );
    // The attack: the device's own certificate, the gateway's client ids (the default one
    // and its certificate name), each proving it is connected by publishing.
    for (i, stolen) in ["edge-gateway-edge-gateway", "gateway@edge-gateway"]
        .iter()
        .enumerate()
    {
        let mut thief = Device::connect_as(broker.port, "device-a", stolen, device()).await;
        thief.publish_seq(1000 + i as u64).await;
        assert!(
            thief.wait_acked(Duration::from_secs(20)).await,
            "connected as {stolen}"
        );
    }

    let gw = Gateway::start(&cfg);
    let want: HashSet<String> = (0..50)
        .chain([1000, 1001])
        .map(|s| format!("device-a/seq/{s}"))
        .collect();
    sink.wait_for_keys(&want, Duration::from_secs(30))
        .await
        .expect("the gateway's session kept every reading");
    drop(gw);
}

/// A device's counter restarts after a reboot, over MQTT: the new readings are stored too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebooted_mqtt_device_is_stored_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let edge = mqtt::plain(&dir.path().join("edge"));
    let sink = RecordingSink::start().await;
    let gw = Gateway::start(&gateway_config(dir.path(), &edge.client_url(), &sink, ""));
    wait_log(&gw, "mqtt session subscribed").await;
    let mut d = Device::connect(edge.port, "stm32", None).await;
    for (boot, temp) in [(0, 20.0), (1, 30.0)] {
        for seq in 1..=3u64 {
            let body = json!({"seq": seq, "ts": 1000 * (boot + 1) + seq, "t": temp});
            d.publish_raw(
                "devices/stm32/telemetry",
                serde_json::to_vec(&body).unwrap(),
            )
            .await;
        }
    }
    gw.wait_metric(
        "edge_gateway_ingest_key_conflicts_total{source=\"mqtt\"}",
        |v| v == 3.0,
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sink.keys().len() < 6 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", sink.keys());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sink.by_device()["stm32"].len(), 6);
}

/// One MQTT device floods while the sink is down. Its PUBACKs are held (at most
/// `max_held_per_device`; past that its messages are kept in the rejected table with reason
/// `device_quota` and acknowledged); every other device keeps being acknowledged. Once the
/// sink is back, every reading of the honest device arrives, and every one of the flooder's
/// is either delivered or kept with its reason — nothing vanished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_mqtt_device_is_held_alone() {
    let dir = tempfile::tempdir().unwrap();
    let edge = mqtt::plain(&dir.path().join("edge"));
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::Always(503));
    let cfg = gateway_config(
        dir.path(),
        &edge.client_url(),
        &sink,
        "max_held_per_device = 20\n[wal]\nmax_records = 300\n",
    );
    let gw = Gateway::start(&cfg);
    wait_log(&gw, "mqtt session subscribed").await;
    let mut flooder = Device::connect(edge.port, "flooder", None).await;
    let mut honest = Device::connect(edge.port, "honest", None).await;
    const FLOOD: u64 = 400;
    for seq in 0..FLOOD {
        flooder.publish_seq(seq).await;
    }
    gw.wait_metric("edge_gateway_mqtt_held_messages", |v| v >= 1.0)
        .await;
    for seq in 0..30 {
        honest.publish_seq(seq).await;
    }
    // Every honest message is acknowledged by the gateway while the flooder's are held: the
    // only un-acked messages left are held ones.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = gw.metrics().await;
        let unacked = metric(&m, "edge_gateway_mqtt_unacked_messages").unwrap_or(-1.0);
        let held = metric(&m, "edge_gateway_mqtt_held_messages").unwrap_or(-2.0);
        let accepted = metric(
            &m,
            "edge_gateway_ingest_records_total{result=\"accepted\",source=\"mqtt\"}",
        )
        .unwrap_or(0.0);
        if unacked == held && held <= 20.0 && accepted >= 30.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "unacked {unacked}, held {held}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wal = gw.admin_get("/admin/wal").await;
    assert!(
        wal["records"].as_u64().unwrap() < 300,
        "the WAL never filled: {wal}"
    );

    sink.set(Behaviour::Ok);
    let want: HashSet<String> = (0..30).map(|s| format!("honest/seq/{s}")).collect();
    sink.wait_for_keys(&want, Duration::from_secs(30))
        .await
        .unwrap();
    // The flooder: each reading delivered, or kept with reason device_quota.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let delivered: HashSet<u64> = sink
            .by_device()
            .get("flooder")
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let rejected = gw.admin_get("/admin/rejected?limit=10000").await;
        let kept: HashSet<u64> = rejected["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["code"] == "device_quota")
            .filter_map(|r| serde_json::from_str::<Value>(r["payload_text"].as_str()?).ok())
            .filter_map(|p| p["seq"].as_u64())
            .collect();
        let missing: Vec<u64> = (0..FLOOD)
            .filter(|s| !delivered.contains(s) && !kept.contains(s))
            .collect();
        if missing.is_empty() {
            eprintln!(
                "flooder: {} delivered, {} kept as device_quota",
                delivered.len(),
                kept.len()
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "flooder readings unaccounted for: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
