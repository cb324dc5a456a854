//! Hostile and buggy HTTP clients against the real binary (issue 8, docs/security.md): each
//! test mounts one attack and asserts the defended outcome *and* that an honest device kept
//! being served — every reading acknowledged to it delivered to the sink.
//!
//! Attackers connect from other loopback addresses (127.0.0.2, …) so per-peer limits tell
//! them from the honest device on 127.0.0.1, as distinct hosts on a LAN would be.

mod common;

use common::sink::{Behaviour, RecordingSink};
use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn config(dir: &std::path::Path, sink: &RecordingSink, extra: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "{extra}\n[[sinks]]\nname = \"analytics\"\ntype = \"http\"\nurl = \"{}\"\n",
            sink.url()
        ),
    )
}

/// A TCP connection from `from` (a loopback address) to `to`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// Reads until the server closes; returns what it sent. Panics past `within`.
async fn read_to_close(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut out))
        .await
        .expect("the server did not close the connection")
        .ok();
    out
}

/// An honest device: posts `n` readings numbered from `from`, retrying 503/429 (as told by
/// Retry-After); returns the keys acknowledged (202).
async fn honest(gw: &Gateway, device: &str, from: u64, n: u64) -> HashSet<String> {
    let c = client();
    let mut acked = HashSet::new();
    for seq in from..from + n {
        loop {
            let (status, _) = post_json(
                &c,
                &gw.url(&format!("/ingest/{device}")),
                &gw.token,
                &json!({"seq": seq, "temp": seq as f64 / 10.0}),
            )
            .await;
            match status {
                202 => {
                    acked.insert(format!("{device}/seq/{seq}"));
                    break;
                }
                503 | 429 => tokio::time::sleep(Duration::from_millis(50)).await,
                other => panic!("honest device got {other}"),
            }
        }
    }
    acked
}

/// POSTs `body` for `device` with the fleet token.
async fn post(gw: &Gateway, device: &str, headers: &[(&str, &str)], body: &Value) -> (u16, Value) {
    post_as(gw, &gw.token, device, headers, body).await
}

/// POSTs `body` for `device` with `token`; returns the status and the JSON answer.
async fn post_as(
    gw: &Gateway,
    token: &str,
    device: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, Value) {
    let mut r = client()
        .post(gw.url(&format!("/ingest/{device}")))
        .bearer_auth(token)
        .json(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Issue 8, first reproduction: a key sent for one device made another device's reading a
/// "duplicate" that was acknowledged and never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_sent_for_one_device_never_hides_another_devices_reading() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    let gw = Gateway::start(&config(dir.path(), &sink, ""));
    let (s, body) = post(
        &gw,
        "attacker",
        &[("idempotency-key", "victim/seq/5")],
        &json!({"x": 1}),
    )
    .await;
    assert_eq!(s, 202, "{body}");
    let (s, body) = post(&gw, "victim", &[], &json!({"seq": 5, "temp": 1})).await;
    assert_eq!((s, &body["duplicate"]), (202, &json!(false)), "{body}");
    assert_eq!(body["accepted"], 1, "{body}");
    // Over msg_id too: the attacker's msg_id names its own device only.
    let (s, _) = post(&gw, "attacker", &[], &json!({"msg_id": "m1", "x": 1})).await;
    assert_eq!(s, 202);
    let (s, body) = post(&gw, "victim", &[], &json!({"msg_id": "m1", "temp": 2})).await;
    assert_eq!((s, &body["duplicate"]), (202, &json!(false)), "{body}");
    let want: HashSet<String> = [
        "victim/seq/5",
        "attacker/key/victim/seq/5",
        "victim/msg/m1",
        "attacker/msg/m1",
    ]
    .map(String::from)
    .into();
    sink.wait_for_keys(&want, Duration::from_secs(20))
        .await
        .unwrap();
}

/// The same with per-device tokens: a device's token opens only its own id, and its keys
/// name only its own readings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_token_cannot_hide_another_devices_reading_either() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    let hash = |t: &str| {
        use sha2::Digest;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(t.as_bytes())))
    };
    let gw = Gateway::start(&config(
        dir.path(),
        &sink,
        &format!(
            "[auth.devices]\nattacker = \"{}\"\nvictim = \"{}\"\n",
            hash("attacker-token"),
            hash("victim-token")
        ),
    ));
    let key = [("idempotency-key", "victim/seq/5")];
    let (s, _) = post_as(&gw, "attacker-token", "attacker", &key, &json!({"x": 1})).await;
    assert_eq!(s, 202);
    let (s, _) = post_as(&gw, "attacker-token", "victim", &[], &json!({"seq": 5})).await;
    assert_eq!(s, 403, "the attacker's token does not open the victim");
    let body = json!({"seq": 5, "temp": 1});
    let (s, b) = post_as(&gw, "victim-token", "victim", &[], &body).await;
    assert_eq!(s, 202);
    assert_eq!(
        (b["accepted"].as_u64(), &b["duplicate"]),
        (Some(1), &json!(false)),
        "{b}"
    );
    let want: HashSet<String> = ["victim/seq/5", "attacker/key/victim/seq/5"]
        .map(String::from)
        .into();
    sink.wait_for_keys(&want, Duration::from_secs(20))
        .await
        .unwrap();
}

/// Issue 8 / RELIABILITY.md field condition: a device rebooted and its counter restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebooted_device_counter_is_stored_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    let gw = Gateway::start(&config(dir.path(), &sink, ""));
    for seq in 1..=3 {
        let (s, b) = post(
            &gw,
            "stm32",
            &[],
            &json!({"seq": seq, "ts": 1000 + seq, "t": 20}),
        )
        .await;
        assert_eq!((s, &b["duplicate"]), (202, &json!(false)), "{b}");
    }
    // Reboot: the counter starts again, with new values and new device time.
    let after: Vec<Value> = (1..=3)
        .map(|seq| json!({"seq": seq, "ts": 5000 + seq, "t": 30}))
        .collect();
    for r in &after {
        let (s, b) = post(&gw, "stm32", &[], r).await;
        assert_eq!(s, 202, "{b}");
        assert_eq!(
            (b["accepted"].as_u64(), &b["key_conflict"]),
            (Some(1), &json!(true)),
            "{b}"
        );
    }
    // A true retry (same key, same content) is still a duplicate.
    let (s, b) = post(&gw, "stm32", &[], &after[0]).await;
    assert_eq!((s, &b["duplicate"]), (202, &json!(true)), "{b}");
    gw.wait_metric(
        "edge_gateway_ingest_key_conflicts_total{source=\"http\"}",
        |v| v == 3.0,
    )
    .await;
    sink.wait_for_keys(
        &(1..=3).map(|s| format!("stm32/seq/{s}")).collect(),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sink.by_device().get("stm32").map_or(0, Vec::len) < 6 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", sink.keys());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        sink.keys().len(),
        6,
        "six distinct keys downstream: {:?}",
        sink.keys()
    );
}

/// Issue 8: fifty sockets that send nothing were all still open 25 s later. Now: per-peer cap
/// at accept, header timeout from the first byte (HTTP/1.1 only, no sniffing), idle
/// keep-alive closed; the honest device and the admin API are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_are_capped_and_closed_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    let gw = Gateway::start(&config(
        dir.path(),
        &sink,
        "[http]\nheader_read_timeout_ms = 1000\nmax_connections = 100\nmax_connections_per_peer = 10\n",
    ));
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(connect_from("127.0.0.2", gw.http).await);
    }
    // An HTTP/2 client (prior knowledge) gets no HTTP/2 and no unbounded wait either.
    let mut h2 = connect_from("127.0.0.3", gw.http).await;
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // The honest device and the probes are served while the sockets are held.
    let acked = honest(&gw, "honest", 0, 20).await;
    let r = client().get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let m = gw
        .wait_metric(
            "edge_gateway_connections_refused_total{listener=\"ingest\",reason=\"max_connections_per_peer\"}",
            |v| v >= 40.0,
        )
        .await;
    assert!(gw.log().contains("connection refused: limit reached"));
    // Every silent socket is closed: refused at once, or cut by the header timeout.
    for s in &mut idle {
        read_to_close(s, Duration::from_secs(10)).await;
    }
    read_to_close(&mut h2, Duration::from_secs(10)).await;
    // Idle keep-alive: one request, then silence: closed after the header timeout too.
    let mut ka = connect_from("127.0.0.4", gw.admin).await;
    ka.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = read_to_close(&mut ka, Duration::from_secs(10)).await;
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 200"));
    sink.wait_for_keys(&acked, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(metric(&m, "edge_gateway_connections_open{listener=\"ingest\"}").is_some());
}

/// With the ingest listener at its global cap, the admin API keeps its own budget: probes
/// and metrics answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ingest_listener_leaves_the_admin_api_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    let gw = Gateway::start(&config(
        dir.path(),
        &sink,
        "[http]\nheader_read_timeout_ms = 2000\nmax_connections = 20\nmax_connections_per_peer = 20\n",
    ));
    let mut held = Vec::new();
    for i in 0..30 {
        held.push(connect_from(&format!("127.0.1.{}", i + 1), gw.http).await);
    }
    gw.wait_metric(
        "edge_gateway_connections_refused_total{listener=\"ingest\",reason=\"max_connections\"}",
        |v| v >= 10.0,
    )
    .await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = client().get(gw.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    // Once the header timeout cut them, ingest serves again.
    for s in &mut held {
        read_to_close(s, Duration::from_secs(10)).await;
    }
    let acked = honest(&gw, "honest", 0, 5).await;
    sink.wait_for_keys(&acked, Duration::from_secs(20))
        .await
        .unwrap();
}

/// Slow bodies: the permit and the byte budget are taken before the body is read, the
/// request deadline covers the body, and a slow sender is cut with 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_are_cut_and_pay_their_budget_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    let gw = Gateway::start(&config(
        dir.path(),
        &sink,
        "[http]\nrequest_timeout_ms = 1500\nmax_body_bytes = 1024\nmax_in_flight_bytes = 2048\n",
    ));
    let mut slow = Vec::new();
    for i in 0..2 {
        let mut s = connect_from(&format!("127.0.0.{}", 10 + i), gw.http).await;
        let head = format!(
            "POST /ingest/slow-{i} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: 1024\r\n\r\n{{",
            gw.token
        );
        s.write_all(head.as_bytes()).await.unwrap();
        slow.push(s);
    }
    // Both announced 1 KiB: the 2 KiB budget is spent before a byte of their bodies arrived,
    // so a third request waits its turn (503 + Retry-After) instead of adding memory.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let r = client()
            .post(gw.url("/ingest/third"))
            .bearer_auth(&gw.token)
            .json(&json!({"x": 1}))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            assert!(r.headers().contains_key("retry-after"));
            break r.json::<Value>().await.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never refused: {}",
            r.status()
        );
    };
    assert_eq!(refused["error"], "overloaded", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("bytes"),
        "{refused}"
    );
    // The slow senders are answered 408 at the deadline, with a JSON body naming the field.
    for s in &mut slow {
        let reply =
            String::from_utf8_lossy(&read_to_close(s, Duration::from_secs(10)).await).to_string();
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
        assert!(
            reply.contains("\"body_timeout\"") && reply.contains("\"field\":\"body\""),
            "{reply}"
        );
    }
    let acked = honest(&gw, "honest", 0, 10).await;
    sink.wait_for_keys(&acked, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(!sink.by_device().contains_key("slow-0"));
}

/// Bodies refused before they cost: over the size limit (413, unread), without a length
/// (411), nested deeper than the stored form allows (400 `too_deep`, never accepted and
/// later dead-lettered as corrupt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_unframed_and_too_deep_bodies_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    let gw = Gateway::start(&config(
        dir.path(),
        &sink,
        "[http]\nmax_body_bytes = 65536\n",
    ));
    // 10 MB announced, nothing sent: answered at once.
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    let head = format!(
        "POST /ingest/big HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 10000000\r\n\r\n",
        gw.token
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(
        reply.starts_with("HTTP/1.1 413") && reply.contains("payload_too_large"),
        "{reply}"
    );
    // Chunked, no length.
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    let head = format!(
        "POST /ingest/chunky HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n",
        gw.token
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(
        reply.starts_with("HTTP/1.1 411") && reply.contains("content-length"),
        "{reply}"
    );
    // CBOR nested 256 deep: ciborium parses it as a body, but not inside the stored record;
    // accepted before, then dead-lettered as `corrupt record`. Refused now, not stored.
    let mut deep = Value::from(1);
    for _ in 0..256 {
        deep = json!({ "d": deep });
    }
    let mut cbor = Vec::new();
    ciborium::into_writer(&deep, &mut cbor).unwrap();
    let r = client()
        .post(gw.url("/ingest/deep"))
        .bearer_auth(&gw.token)
        .header("content-type", "application/cbor")
        .body(cbor)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        (b["error"].as_str(), b["field"].as_str()),
        (Some("too_deep"), Some("body")),
        "{b}"
    );
    let wal = gw.admin_get("/admin/wal").await;
    assert_eq!(wal["records"], 0, "{wal}");
    let acked = honest(&gw, "honest", 0, 5).await;
    sink.wait_for_keys(&acked, Duration::from_secs(20))
        .await
        .unwrap();
    let dead = gw.admin_get("/admin/dead-letters/analytics").await;
    assert_eq!(
        dead["dead_letters"],
        json!([]),
        "nothing accepted turned out undeliverable"
    );
}

/// One device floods while the sink is down: it is refused alone (429 + Retry-After, naming
/// `device_id`), the WAL never fills, and a device publishing normally is never refused and
/// loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_device_is_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::Always(503));
    let gw = Gateway::start(&config(dir.path(), &sink, "[wal]\nmax_records = 400\n"));
    let c = client();
    let mut flooder_acked = HashSet::new();
    let mut refusal = None;
    let mut honest_acked = HashSet::new();
    for batch in 0..60u64 {
        let readings: Vec<Value> = (0..10).map(|i| json!({"seq": batch * 10 + i})).collect();
        let r = c
            .post(gw.url("/ingest/flooder"))
            .bearer_auth(&gw.token)
            .json(&readings)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            202 => flooder_acked.extend((0..10).map(|i| format!("flooder/seq/{}", batch * 10 + i))),
            429 => {
                assert!(r.headers().contains_key("retry-after"));
                refusal = Some(r.json::<Value>().await.unwrap());
            }
            other => panic!("flooder got {other}"),
        }
        // The honest device, one reading per flooder batch: never refused.
        let (s, b) = post_json(
            &c,
            &gw.url("/ingest/honest"),
            &gw.token,
            &json!({"seq": batch}),
        )
        .await;
        assert_eq!(s, 202, "the honest device was refused: {b}");
        honest_acked.insert(format!("honest/seq/{batch}"));
    }
    let refusal = refusal.expect("the flooder was never refused");
    assert_eq!(
        (refusal["error"].as_str(), refusal["field"].as_str()),
        (Some("device_quota"), Some("device_id")),
        "{refusal}"
    );
    let wal = gw.admin_get("/admin/wal").await;
    assert!(
        wal["records"].as_u64().unwrap() < 400,
        "the WAL never filled: {wal}"
    );
    assert!(
        flooder_acked.len() <= 200,
        "at most half: {}",
        flooder_acked.len()
    );
    sink.set(Behaviour::Ok);
    let all: HashSet<String> = flooder_acked.union(&honest_acked).cloned().collect();
    sink.wait_for_keys(&all, Duration::from_secs(30))
        .await
        .unwrap();
}

/// Dead letters have their own budget (oldest purged, counted), and the operator purges them
/// through the admin API (token required, filters checked) and the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_have_a_budget_and_can_be_purged() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::Always(400));
    let cfg = config(
        dir.path(),
        &sink,
        "[wal]\nmax_dead_letters = 5\nmaintenance_interval_ms = 100\n",
    );
    let gw = Gateway::start(&cfg);
    honest(&gw, "bad", 0, 8).await;
    gw.wait_metric(
        "edge_gateway_dead_letters_purged_total{sink=\"analytics\",why=\"budget\"}",
        |v| v >= 3.0,
    )
    .await;
    let dead = gw.admin_get("/admin/dead-letters/analytics").await;
    assert_eq!(dead["dead_letters"].as_array().unwrap().len(), 5, "{dead}");
    let del = |q: &str, token: Option<&str>| {
        let mut r = client().delete(gw.admin_url(&format!("/admin/dead-letters/{q}")));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(del("analytics", None).await.unwrap().status(), 401);
    let r = del("analytics?reason=bogus", Some(&gw.admin_token))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "reason");
    assert_eq!(
        del("nosuch", Some(&gw.admin_token)).await.unwrap().status(),
        404
    );
    let r = del("analytics?reason=expired", Some(&gw.admin_token))
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["purged"], 0);
    let r = del("analytics?limit=2", Some(&gw.admin_token))
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["purged"], 2);
    gw.wait_metric(
        "edge_gateway_dead_letters_purged_total{sink=\"analytics\",why=\"operator\"}",
        |v| v == 2.0,
    )
    .await;
    assert!(gw.log().contains("dead letters purged by the operator"));
    gw.terminate();
    // The CLI, on the stopped gateway's WAL.
    let out = std::process::Command::new(BIN)
        .args(["dead-letters", "purge", "--sink", "analytics", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["purged"], 3, "{v}");
}
