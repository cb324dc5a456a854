//! Protobuf payloads (issue 15) through the real binary: the same reading sent as JSON, CBOR
//! and Protobuf becomes the same record at the sink; a device publishing Protobuf over MQTT
//! (the field-demo path: edge mosquitto → gateway → upstream mosquitto) is delivered;
//! malformed and truncated messages get the treatment bad JSON gets (400 naming the field over
//! HTTP; kept in the rejected table with the reason over MQTT).

mod common;

use common::mqtt::{self, Device, Subscriber};
use common::sink::RecordingSink;
use common::*;
use edge_gateway_actors::ingest::protobuf::pb;
use prost::Message;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

fn reading(seq: u64) -> pb::Reading {
    let num = |n: f64| pb::Value {
        kind: Some(pb::value::Kind::Number(n)),
    };
    pb::Reading {
        device_time_ms: 1_795_400_000_000,
        seq: Some(seq),
        msg_id: Some(format!("m-{seq}")),
        schema: 1,
        values: HashMap::from([
            ("temp".to_string(), num(21.5)),
            (
                "status".to_string(),
                pb::Value {
                    kind: Some(pb::value::Kind::Text("ok".into())),
                },
            ),
            (
                "pos".to_string(),
                pb::Value {
                    kind: Some(pb::value::Kind::Map(pb::Map {
                        fields: HashMap::from([
                            ("x".to_string(), num(1.0)),
                            ("y".to_string(), num(2.0)),
                        ]),
                    })),
                },
            ),
        ]),
    }
}

/// The same reading as JSON.
fn as_json(seq: u64) -> Value {
    json!({"ts": 1_795_400_000_000u64, "seq": seq, "msg_id": format!("m-{seq}"), "schema": 1,
           "temp": 21.5, "status": "ok", "pos": {"x": 1.0, "y": 2.0}})
}

async fn post(gw: &Gateway, device: &str, ct: &str, body: Vec<u8>) -> (u16, Value) {
    let r = client()
        .post(gw.url(&format!("/ingest/{device}")))
        .bearer_auth(&gw.token)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_cbor_and_protobuf_of_one_reading_are_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[[sinks]]\nname = \"file\"\ntype = \"file\"\npath = \"sink/records.jsonl\"\n",
    );
    let gw = Gateway::start(&cfg);
    let mut cbor = Vec::new();
    ciborium::into_writer(&as_json(1), &mut cbor).unwrap();
    assert_eq!(
        post(
            &gw,
            "d-json",
            "application/json",
            serde_json::to_vec(&as_json(1)).unwrap()
        )
        .await
        .0,
        202
    );
    assert_eq!(post(&gw, "d-cbor", "application/cbor", cbor).await.0, 202);
    assert_eq!(
        post(
            &gw,
            "d-pb",
            "application/x-protobuf",
            reading(1).encode_to_vec()
        )
        .await
        .0,
        202
    );
    // A batch of two.
    let batch = pb::Batch {
        readings: vec![reading(2), reading(3)],
    };
    let (s, b) = post(&gw, "d-pb", "application/x-protobuf", batch.encode_to_vec()).await;
    assert_eq!((s, b["accepted"].as_u64()), (202, Some(2)), "{b}");

    let path = gw.data_dir.join("sink/records.jsonl");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let records: Vec<Value> = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let rs: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if rs.len() == 5 {
            break rs;
        }
        assert!(tokio::time::Instant::now() < deadline, "{rs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // What the device sent, as the sink sees it: equal whatever the encoding.
    let content = |r: &Value| {
        json!([
            r["seq"],
            r["ts"],
            r["msg_id"],
            r["schema"],
            r["data"],
            r["source"]
        ])
    };
    let by_device = |d: &str, seq: u64| {
        records
            .iter()
            .find(|r| r["device_id"] == d && r["seq"] == seq)
            .unwrap_or_else(|| panic!("{d} {seq} in {records:?}"))
    };
    let j = by_device("d-json", 1);
    assert_eq!(content(j), content(by_device("d-cbor", 1)));
    assert_eq!(content(j), content(by_device("d-pb", 1)));
    assert_eq!(by_device("d-pb", 1)["idempotency_key"], "d-pb/msg/m-1");
    assert_eq!(by_device("d-pb", 3)["data"]["pos"]["y"], 2.0);

    // Malformed and truncated: 400 naming the field; a reading that reuses a Reading field's
    // name as a value: 400 naming it.
    let good = reading(9).encode_to_vec();
    for (body, field) in [
        (good[..good.len() - 4].to_vec(), "body"),
        (vec![0xff; 16], "body"),
    ] {
        let (s, b) = post(&gw, "d-pb", "application/x-protobuf", body).await;
        assert_eq!((s, b["field"].as_str()), (400, Some(field)), "{b}");
    }
    let mut r = reading(9);
    r.values.insert(
        "seq".into(),
        pb::Value {
            kind: Some(pb::value::Kind::Integer(1)),
        },
    );
    let (s, b) = post(&gw, "d-pb", "application/x-protobuf", r.encode_to_vec()).await;
    assert_eq!(
        (s, b["field"].as_str()),
        (400, Some("readings[0].values.seq")),
        "{b}"
    );
    let (s, b) = post(&gw, "d-pb", "application/grpc", good).await;
    assert_eq!(s, 415, "{b}");
    assert!(b["message"]
        .as_str()
        .unwrap()
        .contains("application/x-protobuf"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_publishing_protobuf_over_mqtt_reaches_the_upstream_broker() {
    let dir = tempfile::tempdir().unwrap();
    let edge = mqtt::plain(&dir.path().join("edge"));
    let up = mqtt::plain(&dir.path().join("upstream"));
    let subscriber = Subscriber::start(up.port, "site-1/+/telemetry").await;
    let sink = RecordingSink::start().await;
    let cfg = write_config(
        dir.path(),
        &format!(
            "[mqtt]\nenabled = true\nbroker = \"{}\"\nreconnect_initial_ms = 50\nreconnect_max_ms = 500\n\
             [[mqtt.subscriptions]]\nfilter = \"devices/+/telemetry\"\nencoding = \"protobuf\"\n\
             [[sinks]]\nname = \"analytics\"\ntype = \"http\"\nurl = \"{}\"\n\
             [[sinks]]\nname = \"upstream\"\ntype = \"mqtt\"\nurl = \"{}\"\ntopic_prefix = \"site-1\"\n",
            edge.client_url(),
            sink.url(),
            up.url()
        ),
    );
    let gw = Gateway::start(&cfg);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while client()
        .get(gw.admin_url("/readyz"))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        assert!(tokio::time::Instant::now() < deadline, "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut d = Device::connect(edge.port, "stm32-pb", None).await;
    for seq in 0..20 {
        d.publish_raw("devices/stm32-pb/telemetry", reading(seq).encode_to_vec())
            .await;
    }
    // A truncated one: acknowledged to the broker, kept in the rejected table with the reason.
    let good = reading(99).encode_to_vec();
    d.publish_raw(
        "devices/stm32-pb/telemetry",
        good[..good.len() / 2].to_vec(),
    )
    .await;
    let keys: HashSet<String> = (0..20).map(|s| format!("stm32-pb/msg/m-{s}")).collect();
    sink.wait_for_keys(&keys, Duration::from_secs(30))
        .await
        .unwrap();
    subscriber
        .wait_for_keys(&keys, Duration::from_secs(30))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rej = gw.admin_get("/admin/rejected").await;
        if let Some(r) = rej["rejected"].as_array().and_then(|a| a.first()) {
            assert!(
                r["message"].as_str().unwrap_or("").contains("Protobuf"),
                "{r}"
            );
            assert_eq!(r["code"], "malformed_body", "{r}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{rej}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
