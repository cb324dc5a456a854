//! The control plane over MQTT (issue 12), against real mosquitto brokers: pings and device
//! commands through both doors, device acknowledgements, a command surviving a broker
//! outage and a SIGKILL, expiry, duplicates, signed requests, and the shipped ACL keeping
//! each device to its own commands.

mod common;

use common::mqtt::{self, tls_transport, Broker};
use common::mqtt_client::Listener;
use common::pki::Pki;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const REQUEST: &str = "gateways/edge-gateway/control/request";
const RESPONSE: &str = "gateways/edge-gateway/control/response";

fn config(dir: &Path, broker: &Broker, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    write_config(
        dir,
        &format!(
            "[mqtt]\nenabled = true\nbroker = \"{}\"\nreconnect_initial_ms = 50\n\
             reconnect_max_ms = 500\n[control]\nlink = true\nrequests = \"edge\"\n{extra}",
            broker.client_url()
        ),
    )
}

/// Polls the command's record until `ok` holds (the gateway changes it; no event to wait on
/// from outside); the record, or a panic naming the last one seen.
async fn wait_state(gw: &Gateway, id: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = gw.admin_get(&format!("/admin/control/{id}")).await;
        if ok(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn with_id(id: &'static str) -> impl Fn(&Value) -> bool {
    move |v: &Value| v["command_id"] == id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_and_device_commands_through_both_doors() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mqtt::plain(&dir.path().join("broker"));
    let gw = Gateway::start(&config(&dir.path().join("gw"), &broker, ""));
    gw.wait_metric("edge_gateway_control_link_up{link=\"edge\"}", |v| v == 1.0)
        .await;
    let device = Listener::start(broker.port, "dev-s-1", "devices/s-1/commands", None, true).await;
    let backend = Listener::start(broker.port, "backend", RESPONSE, None, false).await;

    // A ping over MQTT, answered on the response topic; its repeat answers the first record.
    let ping = json!({"command_id": "m-1", "kind": "ping"});
    backend.publish(REQUEST, &ping).await;
    let pong = backend
        .wait_for(Duration::from_secs(20), with_id("m-1"))
        .await
        .expect("pong");
    assert_eq!(pong["result"]["result"], "pong", "{pong}");
    assert_eq!(
        (pong["door"].as_str(), pong["duplicate"].as_bool()),
        (Some("mqtt"), Some(false))
    );
    backend.publish(REQUEST, &ping).await;
    let again = backend
        .wait_for(Duration::from_secs(20), |v| {
            v["command_id"] == "m-1" && v["duplicate"] == true
        })
        .await
        .expect("the repeat answered");
    assert_eq!(
        again["received_at"], pong["received_at"],
        "the first record"
    );
    // Invalid over MQTT: answered naming the field.
    backend
        .publish(
            REQUEST,
            &json!({"command_id": "m-bad", "kind": "device.command"}),
        )
        .await;
    let bad = backend
        .wait_for(Duration::from_secs(20), with_id("m-bad"))
        .await
        .unwrap();
    assert_eq!(bad["result"]["field"], "device_id", "{bad}");

    // A device command from the admin API: queued (202, a status URL), published, answered.
    let (s, v) = command(
        &gw,
        json!({"command_id": "c-42", "kind": "device.command",
        "device_id": "s-1", "payload": {"led": "on"}, "ttl_secs": 600}),
    )
    .await;
    assert_eq!((s, v["state"].as_str()), (202, Some("queued")), "{v}");
    assert_eq!(v["status_url"], "/admin/control/c-42", "{v}");
    let got = device
        .wait_for(Duration::from_secs(20), with_id("c-42"))
        .await
        .unwrap_or_else(|| panic!("delivered; log:\n{}", gw.log()));
    assert_eq!(got["led"], "on", "{got}");
    assert!(got["expires_at"].is_string(), "{got}");
    let done = wait_state(&gw, "c-42", |v| v["state"] == "acknowledged").await;
    assert_eq!(done["result"]["device_status"], "done", "{done}");
    assert!(done["result"]["sent_at"].is_string(), "{done}");
    // A duplicate acts once: the next command to the same device comes after any repeat of
    // c-42 (one command per device at a time, in order), and there is none.
    let (s, v) = command(
        &gw,
        json!({"command_id": "c-42", "kind": "device.command",
        "device_id": "s-1", "payload": {"led": "on"}}),
    )
    .await;
    assert_eq!((s, v["duplicate"].as_bool()), (200, Some(true)), "{v}");

    // A device command over MQTT: each state change answered on the response topic.
    backend
        .publish(
            REQUEST,
            &json!({"command_id": "m-2", "kind": "device.command",
        "device_id": "s-1", "payload": {"reboot": true}}),
        )
        .await;
    backend
        .wait_for(Duration::from_secs(20), |v| {
            v["command_id"] == "m-2" && v["state"] == "acknowledged"
        })
        .await
        .expect("acknowledged, answered over MQTT");
    let states: Vec<String> = backend
        .messages
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["command_id"] == "m-2")
        .map(|(_, v)| v["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["queued", "sent", "acknowledged"]);
    assert_eq!(device.count(with_id("c-42")), 1, "c-42 acted once");
    assert_eq!(device.count(with_id("m-2")), 1);

    // An ack for a command of another device, or an unknown one, changes nothing.
    backend
        .publish(
            "devices/s-9/commands/ack",
            &json!({"command_id": "m-2", "status": "x"}),
        )
        .await;
    gw.wait_metric(
        "edge_gateway_control_device_acks_ignored_total{reason=\"unknown\"}",
        |v| v >= 1.0,
    )
    .await;
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "edge_gateway_control_device_commands_total{state=\"acknowledged\"}"
        ),
        Some(2.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_survives_a_broker_outage_and_a_sigkill_and_an_expired_one_never_goes() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = mqtt::plain(&dir.path().join("broker"));
    let cfg = config(&dir.path().join("gw"), &broker, "");
    let gw = Gateway::start(&cfg);
    gw.wait_metric("edge_gateway_control_link_up{link=\"edge\"}", |v| v == 1.0)
        .await;
    // Devices with persistent sessions: the broker queues their commands while they are away.
    let s2 = Listener::start(broker.port, "dev-s-2", "devices/s-2/commands", None, true).await;
    let s3 = Listener::start(broker.port, "dev-s-3", "devices/s-3/commands", None, true).await;

    broker.stop();
    gw.wait_metric("edge_gateway_control_link_up{link=\"edge\"}", |v| v == 0.0)
        .await;
    for (id, dev, ttl) in [("k-1", "s-2", 600), ("k-2", "s-2", 600), ("x-1", "s-3", 1)] {
        let (s, v) = command(
            &gw,
            json!({"command_id": id, "kind": "device.command",
            "device_id": dev, "payload": {"n": id}, "ttl_secs": ttl}),
        )
        .await;
        assert_eq!((s, v["state"].as_str()), (202, Some("queued")), "{v}");
    }
    let x = wait_state(&gw, "x-1", |v| v["state"] == "expired").await;
    assert!(
        x["result"]["reason"]
            .as_str()
            .unwrap()
            .contains("never published"),
        "{x}"
    );
    gw.kill9();

    // Back without the broker, then the broker returns: k-1 then k-2 reach s-2, x-1 never
    // reaches s-3.
    let gw = Gateway::start(&cfg);
    assert_eq!(gw.admin_get("/admin/control/k-1").await["state"], "queued");
    broker.start().unwrap();
    wait_state(&gw, "k-2", |v| v["state"] == "acknowledged").await;
    let order: Vec<Value> = s2
        .messages
        .lock()
        .unwrap()
        .iter()
        .map(|(_, v)| v["command_id"].clone())
        .collect();
    assert_eq!(
        order.first(),
        Some(&json!("k-1")),
        "in queue order: {order:?}"
    );
    assert!(order.contains(&json!("k-2")), "{order:?}");
    let (s, _) = command(
        &gw,
        json!({"command_id": "x-2", "kind": "device.command",
        "device_id": "s-3"}),
    )
    .await;
    assert_eq!(s, 202);
    s3.wait_for(Duration::from_secs(20), with_id("x-2"))
        .await
        .expect("s-3 is reachable");
    assert_eq!(
        s3.count(with_id("x-1")),
        0,
        "an expired command is never delivered"
    );
    assert_eq!(gw.admin_get("/admin/control/x-1").await["state"], "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_secret_only_signed_requests_are_taken() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mqtt::plain(&dir.path().join("broker"));
    let secret = dir.path().join("control.secret");
    write_secret(&secret, "s3cret-for-tests");
    let gw = Gateway::start(&config(
        &dir.path().join("gw"),
        &broker,
        &format!("hmac_secret_file = {:?}\n", secret.display().to_string()),
    ));
    gw.wait_metric("edge_gateway_control_link_up{link=\"edge\"}", |v| v == 1.0)
        .await;
    let backend = Listener::start(broker.port, "backend", RESPONSE, None, false).await;
    // Unsigned: refused, counted, answered with the reason, and not recorded (it cannot take
    // the command_id from the signed request that follows).
    backend
        .publish(REQUEST, &json!({"command_id": "s-1", "kind": "ping"}))
        .await;
    let r = backend
        .wait_for(Duration::from_secs(20), with_id("s-1"))
        .await
        .unwrap();
    assert_eq!(r["error"], "unsigned", "{r}");
    let body = r#"{"command_id":"s-1","kind":"ping"}"#;
    let mac =
        edge_gateway_actors::control::signed::hmac_sha256(b"s3cret-for-tests", body.as_bytes());
    let forged = edge_gateway_actors::control::signed::hmac_sha256(b"guess", body.as_bytes());
    backend
        .publish(
            REQUEST,
            &json!({"signed": body, "hmac_sha256": hex::encode(forged)}),
        )
        .await;
    backend
        .publish(
            REQUEST,
            &json!({"signed": body, "hmac_sha256": hex::encode(mac)}),
        )
        .await;
    let pong = backend
        .wait_for(Duration::from_secs(20), |v| {
            v["command_id"] == "s-1" && v["state"] == "done"
        })
        .await
        .expect("the signed request answered");
    assert_eq!(pong["result"]["result"], "pong");
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "edge_gateway_control_requests_refused_total{reason=\"unsigned\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "edge_gateway_control_requests_refused_total{reason=\"bad_signature\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_shipped_broker_a_device_reads_only_its_own_commands() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    for cn in [
        "gateway@edge-gateway",
        "gateway-control@edge-gateway",
        "device-a",
        "device-b",
    ] {
        pki.client(cn);
    }
    let broker = mqtt::shipped_edge(&dir.path().join("edge"), &pki.dir);
    let p = |f: &str| format!("{:?}", pki.path(f).display().to_string());
    let gw = Gateway::start(&config(
        &dir.path().join("gw"),
        &broker,
        &format!(
            "client_cert_file = {}\nclient_key_file = {}\n\
             [mqtt.tls]\nca_file = {}\nclient_cert_file = {}\nclient_key_file = {}\n",
            p("gateway-control@edge-gateway.pem"),
            p("gateway-control@edge-gateway.key"),
            p("ca.pem"),
            p("gateway@edge-gateway.pem"),
            p("gateway@edge-gateway.key"),
        ),
    ));
    gw.wait_metric("edge_gateway_control_link_up{link=\"edge\"}", |v| v == 1.0)
        .await;
    let tls = |cn: &str| Some(tls_transport(&pki.dir, "ca.pem", Some(cn)));
    // Device A subscribes to device B's commands: the broker may grant the subscription, but
    // its ACL never lets B's commands through to A. (A's client id is its certificate's name,
    // so this is A's own session; A's real client takes it over afterwards.)
    let snoop = Listener::start(
        broker.port,
        "device-a",
        "devices/device-b/commands",
        tls("device-a"),
        false,
    )
    .await;
    let b = Listener::start(
        broker.port,
        "device-b",
        "devices/device-b/commands",
        tls("device-b"),
        true,
    )
    .await;
    let (s, v) = command(
        &gw,
        json!({"command_id": "b-1", "kind": "device.command", "device_id": "device-b"}),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    wait_state(&gw, "b-1", |v| v["state"] == "acknowledged").await;
    assert_eq!(b.count(with_id("b-1")), 1);
    assert_eq!(
        snoop.count(|_| true),
        0,
        "nothing of device B's reached device A"
    );
    drop(snoop);
    let a = Listener::start(
        broker.port,
        "device-a",
        "devices/device-a/commands",
        tls("device-a"),
        true,
    )
    .await;
    let (s, v) = command(
        &gw,
        json!({"command_id": "a-1", "kind": "device.command", "device_id": "device-a"}),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    wait_state(&gw, "a-1", |v| v["state"] == "acknowledged").await;
    assert_eq!((a.count(with_id("a-1")), a.count(with_id("b-1"))), (1, 0));
    // Device A cannot acknowledge device B's commands either: its ack to B's topic is
    // dropped by the broker (and would be ignored by the gateway, the command being B's).
    let (s, _) = command(
        &gw,
        json!({"command_id": "b-2", "kind": "device.command", "device_id": "device-b"}),
    )
    .await;
    assert_eq!(s, 202);
    wait_state(&gw, "b-2", |v| v["state"] == "acknowledged").await;
    assert_eq!(
        gw.admin_get("/admin/control/b-2").await["result"]["device_status"],
        "done"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_control_topics_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mqtt::plain(&dir.path().join("broker"));
    let gw = Gateway::start(&config(&dir.path().join("gw"), &broker, ""));
    gw.wait_metric("edge_gateway_control_link_up{link=\"edge\"}", |v| v == 1.0)
        .await;
    let backend = Listener::start(broker.port, "backend", RESPONSE, None, false).await;
    let raw = |topic: &'static str, body: Vec<u8>| {
        let c = backend.client.clone();
        async move {
            c.publish(topic, rumqttc::QoS::AtLeastOnce, false, body)
                .await
                .unwrap()
        }
    };
    // Requests: not JSON, over 64 KiB, an unknown kind, no command_id.
    raw(REQUEST, b"\xff\xfe not json".to_vec()).await;
    raw(REQUEST, vec![b' '; 70 * 1024]).await;
    backend
        .publish(REQUEST, &json!({"command_id": "k-1", "kind": "reboot"}))
        .await;
    backend.publish(REQUEST, &json!({"kind": "ping"})).await;
    let unknown = backend
        .wait_for(Duration::from_secs(20), with_id("k-1"))
        .await
        .unwrap();
    assert_eq!(unknown["result"]["field"], "kind", "{unknown}");
    backend
        .wait_for(Duration::from_secs(20), |v| v["field"] == "command_id")
        .await
        .expect("answered naming command_id");
    gw.wait_metric(
        "edge_gateway_control_requests_refused_total{reason=\"too_large\"}",
        |v| v == 1.0,
    )
    .await;
    gw.wait_metric(
        "edge_gateway_control_requests_refused_total{reason=\"not_json\"}",
        |v| v == 1.0,
    )
    .await;
    // Device acks: malformed, for an unknown command, and a flood of them: counted and
    // ignored; the gateway goes on answering.
    raw("devices/s-1/commands/ack", b"nope".to_vec()).await;
    for i in 0..500 {
        backend
            .publish(
                "devices/s-1/commands/ack",
                &json!({"command_id": format!("ghost-{i}")}),
            )
            .await;
    }
    // Each at least once (a flood past what the link keeps is shed and redelivered).
    gw.wait_metric(
        "edge_gateway_control_device_acks_ignored_total{reason=\"unknown\"}",
        |v| v >= 500.0,
    )
    .await;
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "edge_gateway_control_device_acks_ignored_total{reason=\"malformed\"}"
        ),
        Some(1.0),
        "{m}"
    );
    backend
        .publish(REQUEST, &json!({"command_id": "k-2", "kind": "ping"}))
        .await;
    let pong = backend
        .wait_for(Duration::from_secs(20), with_id("k-2"))
        .await
        .expect("still answering");
    assert_eq!(pong["result"]["result"], "pong");
    // Nothing of it was recorded but the two valid-id requests.
    let all = gw.admin_get("/admin/control?limit=10").await;
    assert_eq!(all["commands"].as_array().unwrap().len(), 2, "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_door_on_the_upstream_broker_commands_devices_on_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let edge = mqtt::plain(&dir.path().join("edge"));
    let cloud = mqtt::plain(&dir.path().join("cloud"));
    std::fs::create_dir_all(dir.path().join("gw")).unwrap();
    let gw = Gateway::start(&write_config(
        &dir.path().join("gw"),
        &format!(
            "[mqtt]\nenabled = true\nbroker = \"{}\"\nreconnect_initial_ms = 50\nreconnect_max_ms = 500\n\
             [control]\nlink = true\nrequests = \"upstream\"\n\
             [[sinks]]\nname = \"cloud\"\ntype = \"mqtt\"\nurl = \"{}\"\n",
            edge.url(),
            cloud.url()
        ),
    ));
    gw.wait_metric("edge_gateway_control_link_up{link=\"upstream\"}", |v| {
        v == 1.0
    })
    .await;
    gw.wait_metric("edge_gateway_control_link_up{link=\"edge\"}", |v| v == 1.0)
        .await;
    let device = Listener::start(edge.port, "dev-s-1", "devices/s-1/commands", None, true).await;
    let backend = Listener::start(cloud.port, "backend", RESPONSE, None, false).await;
    // On the edge broker the request topic is not listened to.
    let edge_backend = Listener::start(edge.port, "edge-backend", RESPONSE, None, false).await;
    edge_backend
        .publish(REQUEST, &json!({"command_id": "e-1", "kind": "ping"}))
        .await;
    backend
        .publish(
            REQUEST,
            &json!({"command_id": "u-1", "kind": "device.command",
                                   "device_id": "s-1", "payload": {"x": 1}}),
        )
        .await;
    device
        .wait_for(Duration::from_secs(20), with_id("u-1"))
        .await
        .expect("the device got the backend's command");
    backend
        .wait_for(Duration::from_secs(20), |v| {
            v["command_id"] == "u-1" && v["state"] == "acknowledged"
        })
        .await
        .expect("its fate answered upstream");
    let ids = command_ids(&gw, 10).await;
    assert_eq!(ids, ["u-1"], "the edge broker's request topic is no door");
    assert_eq!(edge_backend.count(|_| true), 0);
}
