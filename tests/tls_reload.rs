//! `tls.reload` (issue 12): a listener's certificate and a token file rotated without a
//! restart — by the command, and by the file watch — and a bad new file refused with the old
//! one kept in force.

mod common;

use common::pki::Pki;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// A fresh client (no pooled connection) trusting only `ca`.
fn trusting(ca: &Path) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap()])
        .build()
        .unwrap()
}

/// Whether a new TLS connection trusting `ca` reaches the ingest listener.
async fn handshake_ok(gw: &Gateway, ca: &Path) -> bool {
    let url = format!("https://127.0.0.1:{}/ingest/d-1", gw.http.port());
    trusting(ca)
        .post(url)
        .bearer_auth(&gw.token)
        .json(&json!({"seq": 1}))
        .send()
        .await
        .is_ok()
}

async fn reload(gw: &Gateway, token: &str, id: &str) -> (u16, Value) {
    command_as(gw, token, json!({"command_id": id, "kind": "tls.reload"})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_tokens_rotate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (
        Pki::new(&dir.path().join("one")),
        Pki::new(&dir.path().join("two")),
    );
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let install = |pki: &Pki| {
        for f in ["server.pem", "server.key"] {
            std::fs::copy(pki.path(f), live.join(f)).unwrap();
        }
    };
    install(&one);
    let admin_token = live.join("admin.token");
    write_secret(&admin_token, "first-admin-token-0123456789");
    let gw = Gateway::start(&write_config(
        dir.path(),
        &format!(
            "[admin]\ntoken_file = {:?}\n[http.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            admin_token.display().to_string(),
            live.join("server.pem").display().to_string(),
            live.join("server.key").display().to_string()
        ),
    ));
    assert!(handshake_ok(&gw, &one.path("ca.pem")).await);
    assert!(!handshake_ok(&gw, &two.path("ca.pem")).await);

    // Rotated by the command.
    install(&two);
    let (s, v) = reload(&gw, "first-admin-token-0123456789", "t-1").await;
    assert_eq!((s, v["state"].as_str()), (200, Some("done")), "{v}");
    assert_eq!(
        v["result"]["listeners_and_tokens"]["http_ingest"], "reloaded",
        "{v}"
    );
    assert!(
        handshake_ok(&gw, &two.path("ca.pem")).await,
        "new connections get the new certificate"
    );
    assert!(!handshake_ok(&gw, &one.path("ca.pem")).await);

    // A bad new file is refused; the certificate in force stays.
    std::fs::write(live.join("server.pem"), "not a certificate").unwrap();
    let (s, v) = reload(&gw, "first-admin-token-0123456789", "t-2").await;
    assert_eq!(
        (s, v["result"]["error"].as_str()),
        (409, Some("refused")),
        "{v}"
    );
    assert!(
        v["result"]["report"]["refused"]["http_ingest"].is_string(),
        "{v}"
    );
    assert!(
        handshake_ok(&gw, &two.path("ca.pem")).await,
        "the old one still served"
    );

    // The admin token file rotated: the old token no longer opens the admin API.
    write_secret(&admin_token, "second-admin-token-0123456789");
    install(&one);
    let (s, v) = reload(&gw, "first-admin-token-0123456789", "t-3").await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = reload(&gw, "first-admin-token-0123456789", "t-4").await;
    assert_eq!(s, 403, "the old admin token is refused");
    let (s, _) = reload(&gw, "second-admin-token-0123456789", "t-4").await;
    assert_eq!(s, 200);

    // Rotated on disk alone: the file watch picks it up (it looks every 10 s).
    install(&two);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !handshake_ok(&gw, &two.path("ca.pem")).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watch did not reload"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_sessions_client_certificate_rotates_and_a_bad_one_is_refused() {
    use common::mqtt::{self, tls_transport, Device};
    use common::sink::RecordingSink;
    use std::collections::HashSet;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    for cn in ["gateway@edge-gateway", "device-a"] {
        pki.client(cn);
    }
    let broker = mqtt::shipped_edge(&dir.path().join("edge"), &pki.dir);
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let install = || {
        for f in ["gateway@edge-gateway.pem", "gateway@edge-gateway.key"] {
            std::fs::copy(pki.path(f), live.join(f)).unwrap();
        }
    };
    install();
    let sink = RecordingSink::start().await;
    std::fs::create_dir_all(dir.path().join("gw")).unwrap();
    let p = |f: &Path| format!("{:?}", f.display().to_string());
    let gw = Gateway::start(&write_config(
        &dir.path().join("gw"),
        &format!(
            "[mqtt]\nenabled = true\nbroker = \"{}\"\nreconnect_initial_ms = 50\nreconnect_max_ms = 500\n\
             [mqtt.tls]\nca_file = {}\nclient_cert_file = {}\nclient_key_file = {}\n\
             [[sinks]]\nname = \"a\"\ntype = \"http\"\nurl = \"{}\"\n",
            broker.tls_url(),
            p(&pki.path("ca.pem")),
            p(&live.join("gateway@edge-gateway.pem")),
            p(&live.join("gateway@edge-gateway.key")),
            sink.url()
        ),
    ));
    gw.wait_metric("edge_gateway_mqtt_session_up", |v| v == 1.0)
        .await;
    let mut dev = Device::connect(
        broker.port,
        "device-a",
        Some(tls_transport(&pki.dir, "ca.pem", Some("device-a"))),
    )
    .await;
    let mut seq = 0;
    let delivered =
        |n: u64| -> HashSet<String> { (0..n).map(|i| format!("device-a/seq/{i}")).collect() };
    dev.publish_seq(seq).await;
    seq += 1;
    sink.wait_for_keys(&delivered(seq), Duration::from_secs(20))
        .await
        .unwrap();

    // A new certificate for the same identity: checked, then the session restarts with it.
    pki.client("gateway@edge-gateway");
    install();
    let (s, v) = reload(&gw, &gw.admin_token, "m-1").await;
    assert_eq!((s, v["state"].as_str()), (200, Some("done")), "{v}");
    assert_eq!(v["result"]["restarted"], json!(["mqtt_session"]), "{v}");
    dev.publish_seq(seq).await;
    seq += 1;
    sink.wait_for_keys(&delivered(seq), Duration::from_secs(20))
        .await
        .unwrap();

    // A broken one: refused, nothing restarted, readings still flow.
    std::fs::write(live.join("gateway@edge-gateway.pem"), "garbage").unwrap();
    let (s, v) = reload(&gw, &gw.admin_token, "m-2").await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["result"]["report"]["refused"]["mqtt_session"].is_string(),
        "{v}"
    );
    dev.publish_seq(seq).await;
    seq += 1;
    sink.wait_for_keys(&delivered(seq), Duration::from_secs(20))
        .await
        .unwrap();
}
