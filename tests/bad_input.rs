//! Bad input gets the right 4xx with a clear JSON message naming what is wrong; the process
//! stays up and nothing is half-written.

mod common;

use common::*;
use serde_json::{json, Value};

async fn send(
    gw: &Gateway,
    device: &str,
    token: Option<&str>,
    ct: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut r = client()
        .post(gw.url(&format!("/ingest/{device}")))
        .body(body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(ct) = ct {
        r = r.header("content-type", ct);
    }
    let resp = r.send().await.unwrap();
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_clearly_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // One per-device token configured: the fleet token is not generated then.
    let hash = format!("sha256:{}", hex_sha256("device-one-secret"));
    let cfg = write_config(
        dir.path(),
        &format!("[http]\nmax_body_bytes = 1024\nmax_batch = 3\n[auth.devices]\nd1 = \"{hash}\"\n"),
    );
    let gw = Gateway::start(&cfg);
    assert!(
        !gw.data_dir.join("ingest.token").exists(),
        "no fleet token when devices are configured"
    );
    let tok = Some("device-one-secret");
    let json_ct = Some("application/json");
    // (what, (status, body) received, status wanted, error code wanted, field wanted)
    type Case<'a> = (&'a str, (u16, Value), u16, &'a str, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            send(&gw, "d1", tok, json_ct, b"{\"t\":".to_vec()).await,
            400,
            "malformed_body",
            Some("body"),
        ),
        (
            "malformed CBOR",
            send(&gw, "d1", tok, Some("application/cbor"), vec![0xbf, 0x61]).await,
            400,
            "malformed_body",
            Some("body"),
        ),
        (
            "not a map",
            send(&gw, "d1", tok, json_ct, b"42".to_vec()).await,
            400,
            "not_a_map",
            Some("body"),
        ),
        (
            "bad reading in batch",
            send(&gw, "d1", tok, json_ct, br#"[{"a":1},"x"]"#.to_vec()).await,
            400,
            "not_a_map",
            Some("readings[1]"),
        ),
        (
            "unknown schema",
            send(&gw, "d1", tok, json_ct, br#"{"schema":7}"#.to_vec()).await,
            400,
            "unknown_schema",
            Some("schema"),
        ),
        (
            "bad seq",
            send(&gw, "d1", tok, json_ct, br#"{"seq":"x"}"#.to_vec()).await,
            400,
            "invalid_field",
            Some("seq"),
        ),
        (
            "batch too large",
            send(&gw, "d1", tok, json_ct, br#"[{},{},{},{}]"#.to_vec()).await,
            413,
            "batch_too_large",
            Some("body"),
        ),
        (
            "oversized body",
            send(
                &gw,
                "d1",
                tok,
                json_ct,
                format!("{{\"x\":\"{}\"}}", "a".repeat(2000)).into_bytes(),
            )
            .await,
            413,
            "payload_too_large",
            Some("body"),
        ),
        (
            "wrong content type",
            send(&gw, "d1", tok, Some("text/plain"), b"{}".to_vec()).await,
            415,
            "unsupported_media_type",
            Some("content-type"),
        ),
        (
            "no content type",
            send(&gw, "d1", tok, None, b"{}".to_vec()).await,
            415,
            "unsupported_media_type",
            Some("content-type"),
        ),
        (
            "bad device id",
            send(&gw, "bad%20id", tok, json_ct, b"{}".to_vec()).await,
            400,
            "invalid_device_id",
            Some("device_id"),
        ),
        (
            "missing token",
            send(&gw, "d1", None, json_ct, b"{}".to_vec()).await,
            401,
            "unauthorized",
            Some("authorization"),
        ),
        (
            "wrong token",
            send(&gw, "d1", Some("guess"), json_ct, b"{}".to_vec()).await,
            403,
            "forbidden",
            Some("authorization"),
        ),
        (
            "token of another device",
            send(&gw, "d2", tok, json_ct, b"{}".to_vec()).await,
            403,
            "forbidden",
            Some("authorization"),
        ),
    ];
    for (what, (status, body), want_status, want_code, want_field) in cases {
        assert_eq!(status, want_status, "{what}: {body}");
        assert_eq!(body["error"], want_code, "{what}: {body}");
        assert_eq!(body["field"].as_str(), want_field, "{what}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
    }
    let n_cases = 14.0;
    let r = client().get(gw.url("/nope")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = client().get(gw.url("/ingest/d1")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    // Each refusal is counted exactly once, by its code.
    let m = gw.metrics().await;
    let counted: f64 = m
        .lines()
        .filter(|l| l.starts_with("edge_gateway_ingest_rejections_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, n_cases + 2.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "edge_gateway_ingest_rejections_total{code=\"forbidden\",source=\"http\"}"
        ),
        Some(2.0)
    );
    // Nothing was stored, and the process is up and ready.
    let wal = gw.admin_get("/admin/wal").await;
    assert_eq!(wal["records"], 0, "{wal}");
    let r = client().get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // And a good request still works.
    let (s, body) = send(
        &gw,
        "d1",
        tok,
        json_ct,
        serde_json::to_vec(&json!({"temp": 1})).unwrap(),
    )
    .await;
    assert_eq!(s, 202, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_cut_off_and_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[http]\nheader_read_timeout_ms = 300\n");
    let gw = Gateway::start(&cfg);
    // Slowloris: send half a request line and stall.
    let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    s.write_all(b"POST /ingest/d1 HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (status, _) = post_json(
        &client(),
        &gw.url("/ingest/d1"),
        &gw.token,
        &json!({"v": 1}),
    )
    .await;
    assert_eq!(status, 202, "others are served meanwhile");
    let mut buf = Vec::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the server should close a connection whose headers never finish"
    );
}

fn hex_sha256(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}
