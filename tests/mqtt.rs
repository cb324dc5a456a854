//! MQTT both ways with real mosquitto brokers: devices -> edge broker -> gateway (PUBACK after
//! the WAL commit) -> HTTP sink and an upstream broker.

mod common;

use common::mqtt::{self, Broker, Device, Subscriber};
use common::sink::RecordingSink;
use common::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const DEVICES: [&str; 3] = ["stm32-a", "stm32-b", "stm32-c"];

fn key(device: &str, seq: u64) -> String {
    format!("{device}/seq/{seq}")
}

/// `mqtt_extra` goes into the `[mqtt]` section.
fn gateway_config(
    dir: &std::path::Path,
    edge: &Broker,
    sink: &RecordingSink,
    upstream: Option<&Broker>,
    mqtt_extra: &str,
) -> std::path::PathBuf {
    let mut c = format!(
        "[mqtt]\nenabled = true\nbroker = \"{}\"\nreconnect_initial_ms = 50\nreconnect_max_ms = 500\n{mqtt_extra}\
         [delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\nlease_timeout_ms = 5000\n\
         [[sinks]]\nname = \"analytics\"\ntype = \"http\"\nurl = \"{}\"\ntimeout_ms = 5000\n",
        edge.client_url(),
        sink.url()
    );
    if let Some(up) = upstream {
        c.push_str(&format!(
            "[[sinks]]\nname = \"upstream\"\ntype = \"mqtt\"\nurl = \"{}\"\ntopic_prefix = \"site-1\"\ntimeout_ms = 3000\n",
            up.url()
        ));
    }
    write_config(dir, &c)
}

/// Waits for `/readyz` to answer 200 (the MQTT session connected and subscribed).
async fn wait_ready(gw: &Gateway) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
        if r.status() == 200 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway not ready: {}\nlog:\n{}",
            r.text().await.unwrap(),
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_in_order(by_device: &HashMap<String, Vec<u64>>, n: u64) {
    for d in DEVICES {
        let seqs = by_device
            .get(d)
            .unwrap_or_else(|| panic!("nothing from {d}"));
        assert_eq!(
            seqs,
            &(0..n).collect::<Vec<_>>(),
            "order of first delivery of {d}"
        );
    }
}

async fn devices(port: u16) -> Vec<Device> {
    let mut out = Vec::new();
    for d in DEVICES {
        out.push(Device::connect(port, d, None).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_reach_the_http_sink_and_the_upstream_broker() {
    let dir = tempfile::tempdir().unwrap();
    let edge = mqtt::plain(&dir.path().join("edge"));
    let up = mqtt::plain(&dir.path().join("upstream"));
    let subscriber = Subscriber::start(up.port, "site-1/+/telemetry").await;
    let sink = RecordingSink::start().await;
    let gw = Gateway::start(&gateway_config(dir.path(), &edge, &sink, Some(&up), ""));
    wait_ready(&gw).await;

    let n = 300u64;
    let mut devs = devices(edge.port).await;
    let mut want = HashSet::new();
    for seq in 0..n {
        for d in devs.iter_mut() {
            d.publish_seq(seq).await;
            want.insert(key(&d.id, seq));
        }
    }
    for d in &devs {
        assert!(d.wait_acked(Duration::from_secs(20)).await, "broker acks");
    }
    sink.wait_for_keys(&want, Duration::from_secs(30))
        .await
        .expect("every message at the http sink");
    subscriber
        .wait_for_keys(&want, Duration::from_secs(30))
        .await
        .expect("every message upstream");
    assert_in_order(&sink.by_device(), n);
    assert_in_order(&subscriber.first_arrival_order(), n);
    // Topic template and payload as published.
    let (topic, v) = subscriber.seen.lock().unwrap().messages[0].clone();
    assert_eq!(
        topic,
        format!("site-1/{}/telemetry", v["device_id"].as_str().unwrap())
    );
    assert_eq!(v["source"], "mqtt");
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "edge_gateway_ingest_records_total{result=\"accepted\",source=\"mqtt\"}"
        ),
        Some((n * 3) as f64)
    );
    assert_eq!(metric(&m, "edge_gateway_mqtt_session_up"), Some(1.0));
    // Every message acknowledged to the broker once committed.
    gw.wait_metric("edge_gateway_mqtt_unacked_messages", |v| v == 0.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_devices_publish_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let edge = mqtt::plain(&dir.path().join("edge"));
    let sink = RecordingSink::start().await;
    let cfg = gateway_config(dir.path(), &edge, &sink, None, "");
    let gw = Gateway::start(&cfg);
    wait_ready(&gw).await; // the persistent session's subscription exists from here on
    let mut gw = Some(gw);

    let mut devs = devices(edge.port).await;
    let mut want = HashSet::new();
    let (kills, per_round) = (4u64, 250u64);
    for round in 0..kills {
        for i in 0..per_round {
            let seq = round * per_round + i;
            for d in devs.iter_mut() {
                d.publish_seq(seq).await;
                want.insert(key(&d.id, seq));
            }
            if i == per_round / 2 {
                gw.take().unwrap().kill9(); // mid-stream
            }
        }
        gw = Some(Gateway::start(&cfg));
    }
    for d in &devs {
        assert!(d.wait_acked(Duration::from_secs(30)).await, "broker acks");
    }
    let missing = sink.wait_for_keys(&want, Duration::from_secs(60)).await;
    assert!(
        missing.is_ok(),
        "{} of {} published messages lost after {kills} SIGKILLs: {:?}\nlast gateway's log:\n{}",
        missing.as_ref().unwrap_err().len(),
        want.len(),
        missing
            .as_ref()
            .unwrap_err()
            .iter()
            .take(10)
            .collect::<Vec<_>>(),
        gw.as_ref().map(|g| g.log()).unwrap_or_default()
    );
    eprintln!(
        "{kills} kills, {} messages published, {} deliveries ({} duplicates), 0 lost",
        want.len(),
        sink.deliveries(),
        sink.deliveries() - want.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_demo_upstream_outage_backlog_drains_in_order() {
    // Three STM32-class devices over MQTT/TLS with their own certificates, to the edge broker
    // as shipped (mTLS, per-device ACLs); the gateway forwards to an upstream broker.
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki::Pki::new(&dir.path().join("pki"));
    for cn in ["gateway@edge-gateway", DEVICES[0], DEVICES[1], DEVICES[2]] {
        pki.client(cn);
    }
    let edge = mqtt::shipped_edge(&dir.path().join("edge"), &pki.dir);
    let mut up = mqtt::plain(&dir.path().join("upstream"));
    let subscriber = Subscriber::start(up.port, "site-1/+/telemetry").await;
    let sink = RecordingSink::start().await;
    let tls = format!(
        "[mqtt.tls]\nca_file = {:?}\nclient_cert_file = {:?}\nclient_key_file = {:?}\n",
        pki.path("ca.pem").display().to_string(),
        pki.path("gateway@edge-gateway.pem").display().to_string(),
        pki.path("gateway@edge-gateway.key").display().to_string()
    );
    let gw = Gateway::start(&gateway_config(dir.path(), &edge, &sink, Some(&up), &tls));
    wait_ready(&gw).await;
    let mut devs = Vec::new();
    for d in DEVICES {
        let t = common::mqtt::tls_transport(&pki.dir, "ca.pem", Some(d));
        devs.push(Device::connect(edge.port, d, Some(t)).await);
    }
    let mut want = HashSet::new();
    let mut published: HashMap<String, serde_json::Value> = HashMap::new();
    let seq = 450u64;
    for s in 0..50 {
        for d in devs.iter_mut() {
            d.publish_seq(s).await;
            want.insert(key(&d.id, s));
        }
    }
    subscriber
        .wait_for_keys(&want, Duration::from_secs(30))
        .await
        .expect("before the outage");

    // Outage: ingest keeps acknowledging, the upstream backlog grows.
    up.stop();
    for s in 50..seq {
        for d in devs.iter_mut() {
            d.publish_seq(s).await;
            want.insert(key(&d.id, s));
        }
    }
    for d in &devs {
        assert!(d.wait_acked(Duration::from_secs(20)).await);
    }
    // Everything reached the HTTP sink during the outage: ingest never stopped.
    sink.wait_for_keys(&want, Duration::from_secs(30))
        .await
        .expect("ingest during the outage");
    let m = gw.metrics().await;
    let backlog = metric(
        &m,
        "edge_gateway_wal_records{sink=\"upstream\",state=\"enqueued\"}",
    )
    .unwrap_or(0.0)
        + metric(
            &m,
            "edge_gateway_wal_records{sink=\"upstream\",state=\"in_flight\"}",
        )
        .unwrap_or(0.0);
    assert!(
        backlog >= 1000.0,
        "upstream backlog during the outage: {backlog}\n{m}"
    );
    assert!(
        metric(
            &m,
            "edge_gateway_publish_batches_total{result=\"outage\",sink=\"upstream\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{}",
        m.lines()
            .filter(|l| l.contains("upstream"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    up.start().unwrap();
    subscriber
        .wait_for_keys(&want, Duration::from_secs(60))
        .await
        .expect("backlog drained upstream");
    assert_in_order(&subscriber.first_arrival_order(), seq);
    // Payloads exactly as published.
    for (_, v) in subscriber.seen.lock().unwrap().messages.iter() {
        let s = v["seq"].as_u64().unwrap();
        published.insert(key(v["device_id"].as_str().unwrap(), s), v["data"].clone());
        assert_eq!(
            v["data"]["temp_c"].as_f64().unwrap(),
            20.0 + (s % 10) as f64 / 10.0
        );
    }
    assert_eq!(published.len(), want.len());
    // The outage used up no delivery attempts: nothing was dead-lettered.
    let stats = gw.admin_get("/admin/wal").await;
    assert!(
        stats["sinks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["dead"] == 0),
        "{stats}"
    );
    // And the backlog metric returns to zero.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stats = gw.admin_get("/admin/wal").await;
        let up_pending = stats["sinks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["sink"] == "upstream")
            .unwrap()["pending"]
            .as_u64()
            .unwrap();
        if up_pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backlog stuck at {up_pending}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_kept_with_a_reason_counted_and_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let edge = mqtt::plain(&dir.path().join("edge"));
    let sink = RecordingSink::start().await;
    let gw = Gateway::start(
        &gateway_config(dir.path(), &edge, &sink, None, "max_payload_bytes = 1024\n").to_path_buf(),
    );
    wait_ready(&gw).await;
    let mut bad = Device::connect(edge.port, "bad", None).await;
    let mut good = Device::connect(edge.port, "stm32-a", None).await;
    good.publish_seq(0).await;
    bad.publish_raw("devices/bad/telemetry", b"{\"seq\": 1, \"temp\"".to_vec())
        .await;
    bad.publish_raw("devices/bad/telemetry", vec![0xa1, 0x63, 0x66, 0x6f])
        .await; // truncated CBOR map
    bad.publish_raw("devices/bad/telemetry", vec![b' '; 2000])
        .await;
    bad.publish_raw("devices/bad$id/telemetry", b"{\"seq\": 1}".to_vec())
        .await;
    bad.publish_raw("devices/bad/telemetry", b"{\"seq\": \"one\"}".to_vec())
        .await;
    good.publish_seq(1).await;
    assert!(bad.wait_acked(Duration::from_secs(10)).await);
    let want: HashSet<String> = [key("stm32-a", 0), key("stm32-a", 1)].into();
    sink.wait_for_keys(&want, Duration::from_secs(20))
        .await
        .expect("the good device is undisturbed");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let rejected = loop {
        let r = gw.admin_get("/admin/rejected").await;
        if r["rejected"].as_array().unwrap().len() >= 5 {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "rejected: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rows = rejected["rejected"].as_array().unwrap();
    let codes: Vec<&str> = rows
        .iter()
        .rev()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "malformed_body",
            "malformed_body",
            "payload_too_large",
            "invalid_device_id",
            "invalid_field"
        ],
        "{rejected}"
    );
    let too_large = &rows[2];
    assert_eq!(too_large["payload_len"], 2000);
    assert_eq!(rows[4]["payload_text"], "{\"seq\": 1, \"temp\"");
    assert_eq!(rows[4]["field"], "payload");
    assert_eq!(rows[1]["origin"], "devices/bad$id/telemetry");
    assert_eq!(rows[1]["field"], "topic");
    assert!(
        rows[0]["field"].as_str().unwrap().contains("seq"),
        "{}",
        rows[0]
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "edge_gateway_ingest_rejections_total{code=\"payload_too_large\",source=\"mqtt\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "edge_gateway_ingest_records_total{result=\"rejected\",source=\"mqtt\"}"
        ),
        Some(5.0)
    );
    assert!(gw.log().contains("mqtt message refused"));
    // Nothing of it reached a sink.
    assert!(
        sink.keys().iter().all(|k| k.starts_with("stm32-a/")),
        "{:?}",
        sink.keys()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_wal_withholds_pubacks_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let edge = mqtt::plain(&dir.path().join("edge"));
    let sink = RecordingSink::start().await;
    sink.set(common::sink::Behaviour::Always(503));
    // 50 records fit in the WAL; the session keeps at most 20 messages un-acked.
    let cfg = gateway_config(dir.path(), &edge, &sink, None, "max_unacked = 20\n")
        .display()
        .to_string();
    // The global limit, not the per-device share (three devices would stop at 75 %: that
    // path is tests/security_mqtt.rs).
    let text = std::fs::read_to_string(&cfg).unwrap()
        + "[wal]\nmax_records = 50\ndevice_fair_share = false\n";
    let text = text.replace("[delivery]\n", "[delivery]\nmax_attempts = 1000\n");
    std::fs::write(&cfg, text).unwrap();
    let gw = Gateway::start(std::path::Path::new(&cfg));
    wait_ready(&gw).await;
    let mut devs = devices(edge.port).await;
    let mut want = HashSet::new();
    for seq in 0..100 {
        for d in devs.iter_mut() {
            d.publish_seq(seq).await;
            want.insert(key(&d.id, seq));
        }
    }
    // The WAL fills, the session holds 20 messages un-acknowledged and sheds the rest.
    gw.wait_metric("edge_gateway_backpressure_active", |v| v == 1.0)
        .await;
    gw.wait_metric("edge_gateway_mqtt_shed_total", |v| v > 0.0)
        .await;
    let m = gw
        .wait_metric("edge_gateway_mqtt_unacked_messages", |v| v >= 1.0)
        .await;
    assert!(metric(&m, "edge_gateway_mqtt_unacked_messages").unwrap() <= 20.0);
    assert_eq!(metric(&m, "edge_gateway_wal_live_records"), Some(50.0));
    assert!(gw.log().contains("holding its PUBACK"));

    // The sink recovers: the WAL drains, the held messages commit, the shed ones come back.
    sink.set(common::sink::Behaviour::Ok);
    sink.wait_for_keys(&want, Duration::from_secs(60))
        .await
        .expect("every message once the WAL had room");
    assert_in_order(&sink.by_device(), 100);
    eprintln!(
        "{}",
        gw.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("edge_gateway_mqtt"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_actors_during_mqtt_ingest_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let edge = mqtt::plain(&dir.path().join("edge"));
    let up = mqtt::plain(&dir.path().join("upstream"));
    let subscriber = Subscriber::start(up.port, "site-1/+/telemetry").await;
    let sink = RecordingSink::start().await;
    let cfg = gateway_config(dir.path(), &edge, &sink, Some(&up), "");
    append_config(&cfg, "[admin]\nchaos = true\n");
    let gw = Gateway::start(&cfg);
    wait_ready(&gw).await;
    let mut devs = devices(edge.port).await;
    let mut want = HashSet::new();
    let actors = [
        "mqtt_session",
        "wal",
        "dispatcher",
        "publisher:upstream",
        "mqtt_session",
    ];
    let per = 100u64;
    for (round, actor) in actors.iter().enumerate() {
        for i in 0..per {
            let seq = round as u64 * per + i;
            for d in devs.iter_mut() {
                d.publish_seq(seq).await;
                want.insert(key(&d.id, seq));
            }
            if i == per / 2 {
                let status = client()
                    .post(gw.admin_url(&format!("/admin/actors/{actor}/fail")))
                    .bearer_auth(&gw.admin_token)
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_eq!(status, 202, "fail {actor}");
            }
        }
    }
    sink.wait_for_keys(&want, Duration::from_secs(60))
        .await
        .expect("every message at the http sink");
    subscriber
        .wait_for_keys(&want, Duration::from_secs(60))
        .await
        .expect("every message upstream");
    let tree = gw.admin_get("/admin/tree").await.to_string();
    assert!(tree.contains("mqtt_session"), "{tree}");
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "edge_gateway_actor_restarts_total{actor=\"mqtt_session\"}"
        ),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_upstream_carries_the_key_as_a_user_property_and_refusals_dead_letter() {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let dir = tempfile::tempdir().unwrap();
    let edge = mqtt::plain(&dir.path().join("edge"));
    // Upstream lets this gateway write only stm32-a's topic (anonymous ACL).
    let acl = dir.path().join("upstream.acl");
    std::fs::write(&acl, "topic write site-1/stm32-a/telemetry\ntopic read #\n").unwrap();
    let up = mqtt::plain_with(
        &dir.path().join("upstream"),
        &format!("acl_file {}\n", acl.display()),
    );
    // An MQTT 5 subscriber upstream, keeping each message's user properties.
    let mut o = MqttOptions::new("v5-subscriber", "127.0.0.1", up.port);
    o.set_keep_alive(Duration::from_secs(10));
    let (client, mut ev) = AsyncClient::new(o, 100);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (subbed_tx, subbed) = tokio::sync::oneshot::channel();
    let mut subbed_tx = Some(subbed_tx);
    let task = tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(P5::ConnAck(_))) => {
                    client
                        .try_subscribe("site-1/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                        .unwrap();
                }
                Ok(Event::Incoming(P5::SubAck(_))) => {
                    if let Some(t) = subbed_tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(Event::Incoming(P5::Publish(p))) => {
                    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                    let props = p
                        .properties
                        .map(|pr| pr.user_properties)
                        .unwrap_or_default();
                    let _ = tx.send((v, props));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    subbed.await.unwrap();
    let sink = RecordingSink::start().await;
    let cfg = gateway_config(dir.path(), &edge, &sink, Some(&up), "");
    // Every reading traced: its publish span travels upstream as a user property.
    let collector = common::otlp::Collector::start().await;
    append_config(
        &cfg,
        &format!(
            "protocol = \"v5\"\n[tracing]\nendpoint = \"{}/v1/traces\"\nsampler = \"always_on\"\n",
            collector.endpoint()
        ),
    );
    let gw = Gateway::start(&cfg);
    wait_ready(&gw).await;

    let mut a = Device::connect(edge.port, "stm32-a", None).await;
    for seq in 0..5 {
        a.publish_seq(seq).await;
    }
    for seq in 0..5 {
        let (v, props) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("upstream message")
            .unwrap();
        assert_eq!(v["seq"], seq);
        let key = v["idempotency_key"].as_str().unwrap();
        assert_eq!(key, self::key("stm32-a", seq));
        assert!(
            props.contains(&("idempotency_key".to_string(), key.to_string())),
            "{props:?}"
        );
        // The record's stored context (the MQTT receive span) and this attempt's publish
        // span: one trace.
        let stored = v["traceparent"].as_str().unwrap().to_string();
        let sent = props
            .iter()
            .find(|(k, _)| k == "traceparent")
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("no traceparent: {props:?}"));
        assert_eq!(stored[..35], sent[..35], "same trace id");
        let (trace, receive_span) = (stored[3..35].to_string(), stored[36..52].to_string());
        let spans = collector
            .wait_for(Duration::from_secs(20), |s| {
                s.iter()
                    .any(|p| p.name == "publish upstream" && sent.contains(&p.span_id))
            })
            .await;
        let receive = spans.iter().find(|s| s.span_id == receive_span).unwrap();
        assert_eq!(receive.name, "receive devices/stm32-a/telemetry");
        assert_eq!(receive.trace_id, trace);
        assert_eq!(receive.attrs["messaging.system"], "mqtt");
    }
    // The upstream broker refuses stm32-b's topic with reason NotAuthorized: dead-lettered
    // with that reason, not retried forever.
    let mut b = Device::connect(edge.port, "stm32-b", None).await;
    b.publish_seq(0).await;
    let dead = gw.wait_dead_letters("upstream", 1).await;
    let row = &dead["dead_letters"][0];
    assert!(
        row["reason"].as_str().unwrap().contains("NotAuthorized"),
        "{row}"
    );
    assert_eq!(row["record"]["device_id"], "stm32-b");
    task.abort();
}

/// A restarted publisher starts by holding batches back (`NotSent`); a batch leased after a
/// held one must not be published ahead of it. Found by the chaos harness (`actor-storm`):
/// before the fix, 5 of 6 runs of this test saw a later reading reach the upstream broker
/// first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_restarts_keep_the_order_of_first_delivery_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let edge = mqtt::plain(&dir.path().join("edge"));
    let up = mqtt::plain(&dir.path().join("upstream"));
    let subscriber = Subscriber::start(up.port, "site-1/+/telemetry").await;
    let sink = RecordingSink::start().await;
    let cfg = gateway_config(dir.path(), &edge, &sink, Some(&up), "");
    append_config(&cfg, "[admin]\nchaos = true\n");
    let gw = Gateway::start(&cfg);
    wait_ready(&gw).await;
    let mut d = Device::connect(edge.port, "stm32-a", None).await;
    let mut want = HashSet::new();
    for seq in 0..600u64 {
        d.publish_seq(seq).await;
        want.insert(key("stm32-a", seq));
        assert!(d.wait_acked(Duration::from_secs(10)).await);
        if seq % 40 == 20 {
            let status = client()
                .post(gw.admin_url("/admin/actors/publisher:upstream/fail"))
                .bearer_auth(&gw.admin_token)
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 202);
        }
    }
    subscriber
        .wait_for_keys(&want, Duration::from_secs(30))
        .await
        .expect("every reading upstream");
    let order = subscriber.first_arrival_order();
    assert_eq!(order["stm32-a"], (0..600).collect::<Vec<_>>());
}

/// Issue 10: an upstream broker with a 4 KiB maximum packet size, one 8 KiB reading among
/// small ones from another device, in the same batches. Before, the big one made the broker drop
/// the connection again and again: 0 of 20 small readings delivered in 170 s, and a small one
/// that shared its batches was dead-lettered. Now (with `max_packet_bytes` set) the batch is
/// split until the big reading is alone; it alone is dead-lettered, its size named, and every
/// small reading arrives upstream, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reading_too_big_for_the_upstream_broker_is_isolated() {
    too_big_is_isolated(
        "max_packet_bytes = 4096",
        "the sink's max_packet_bytes 4096",
    )
    .await;
}

/// The same against an MQTT 5 broker with no `max_packet_bytes` configured: the limit the
/// broker announces in its CONNACK is learnt and applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_brokers_announced_packet_limit_is_learnt() {
    too_big_is_isolated(
        "protocol = \"v5\"",
        "the broker's announced maximum packet size 4096",
    )
    .await;
}

/// An upstream broker refusing packets over 4 KiB; `sink_extra` configures the mqtt sink; the
/// big reading's dead letter must name `limit`.
async fn too_big_is_isolated(sink_extra: &str, limit: &str) {
    let dir = tempfile::tempdir().unwrap();
    let up = mqtt::plain_with(&dir.path().join("upstream"), "max_packet_size 4096\n");
    let sink = RecordingSink::start().await;
    let cfg = write_config(
        dir.path(),
        &format!(
            "[delivery]\nbackoff_initial_ms = 20\nbackoff_max_ms = 200\n\
             [[sinks]]\nname = \"analytics\"\ntype = \"http\"\nurl = \"{}\"\n\
             [[sinks]]\nname = \"upstream\"\ntype = \"mqtt\"\nurl = \"{}\"\ntopic_prefix = \"site-1\"\n\
             timeout_ms = 3000\n{sink_extra}\n",
            sink.url(),
            up.url()
        ),
    );
    let sub = Subscriber::start(up.port, "site-1/#").await;
    let gw = Gateway::start(&cfg);
    let c = client();
    // Small readings before and after the big one, so they share the sink's batches.
    let requests = [
        (
            "small",
            serde_json::json!((0..10)
                .map(|i| serde_json::json!({"seq": i, "t": 20}))
                .collect::<Vec<_>>()),
        ),
        (
            "big",
            serde_json::json!({"seq": 0, "blob": "x".repeat(8192)}),
        ),
        (
            "small",
            serde_json::json!((10..20)
                .map(|i| serde_json::json!({"seq": i, "t": 20}))
                .collect::<Vec<_>>()),
        ),
    ];
    for (device, body) in &requests {
        let (s, _) = post_json(&c, &gw.url(&format!("/ingest/{device}")), &gw.token, body).await;
        assert_eq!(s, 202);
    }
    let small: HashSet<String> = (0..20).map(|i| key("small", i)).collect();
    sub.wait_for_keys(&small, Duration::from_secs(30))
        .await
        .expect("every small reading delivered upstream");
    let order = sub.first_arrival_order();
    assert_eq!(order["small"], (0..20).collect::<Vec<u64>>(), "in order");
    // The big one: dead for upstream alone, with its size; delivered to the HTTP sink.
    let dl = gw.wait_dead_letters("upstream", 1).await;
    let dead = dl["dead_letters"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dl}");
    assert_eq!(dead[0]["record"]["idempotency_key"], "big/seq/0");
    let reason = dead[0]["reason"].as_str().unwrap();
    assert!(reason.contains(limit), "{reason}");
    sink.wait_for_keys(
        &small.iter().cloned().chain([key("big", 0)]).collect(),
        Duration::from_secs(30),
    )
    .await
    .expect("the HTTP sink takes them all");
}

/// Gateway presence (issue 12, part 4): on connecting to the upstream broker the gateway
/// publishes a retained `gateways/{id}/status` `online`; killed, its Last Will says `offline`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_broker_sees_the_gateway_come_and_go() {
    let dir = tempfile::tempdir().unwrap();
    let up = mqtt::plain(&dir.path().join("upstream"));
    let cfg = write_config(
        dir.path(),
        &format!(
            "gateway_id = \"line-3\"\n[[sinks]]\nname = \"upstream\"\ntype = \"mqtt\"\nurl = \"{}\"\n\
             presence = true\n",
            up.url()
        ),
    );
    let sub = Subscriber::start(up.port, "gateways/#").await;
    let state = |sub: &Subscriber| -> Vec<String> {
        sub.seen
            .lock()
            .unwrap()
            .messages
            .iter()
            .filter(|(t, _)| t == "gateways/line-3/status")
            .map(|(_, v)| v["state"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let gw = Gateway::start(&cfg);
    // Polls the subscriber's record (a broker has no event to wait on here), 20 s at most.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while state(&sub) != ["online"] {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", state(&sub));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.kill9();
    while state(&sub) != ["online", "offline"] {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", state(&sub));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
