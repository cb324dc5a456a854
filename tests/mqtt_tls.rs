//! The edge broker as shipped (`config/mosquitto/edge.conf`): TLS with client certificates and
//! per-device ACLs, against the gateway's MQTT session.

mod common;

use common::mqtt::{self, free_port, tls_transport, Broker, Device, Subscriber};
use common::pki::Pki;
use common::sink::RecordingSink;
use common::*;
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

fn config(dir: &Path, broker: &Broker, sink: &RecordingSink, tls: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    write_config(
        dir,
        &format!(
            "[mqtt]\nenabled = true\nbroker = \"{}\"\nreconnect_initial_ms = 50\nreconnect_max_ms = 500\n\
             [mqtt.tls]\n{tls}\n[[sinks]]\nname = \"analytics\"\ntype = \"http\"\nurl = \"{}\"\n",
            broker.tls_url(),
            sink.url()
        ),
    )
}

fn tls_lines(pki: &Pki, ca: &str, identity: Option<&str>) -> String {
    let mut s = format!("ca_file = {:?}\n", pki.path(ca).display().to_string());
    if let Some(cn) = identity {
        s.push_str(&format!(
            "client_cert_file = {:?}\nclient_key_file = {:?}\n",
            pki.path(&format!("{cn}.pem")).display().to_string(),
            pki.path(&format!("{cn}.key")).display().to_string()
        ));
    }
    s
}

/// Waits until the gateway logged `needle`; returns the log.
async fn wait_log(gw: &Gateway, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = gw.log();
        if log.contains(needle) {
            return log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {needle:?} in log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn readyz(gw: &Gateway) -> (u16, serde_json::Value) {
    let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_per_device_acls_on_the_shipped_edge_broker() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    for cn in ["gateway@edge-gateway", "device-a", "device-b"] {
        pki.client(cn);
    }
    let broker = mqtt::shipped_edge(&dir.path().join("edge"), &pki.dir);
    let sink = RecordingSink::start().await;

    // Without a client certificate: refused, said clearly, not ready.
    let gw = Gateway::start(&config(
        &dir.path().join("g1"),
        &broker,
        &sink,
        &tls_lines(&pki, "ca.pem", None),
    ));
    let log = wait_log(&gw, "mqtt connection to the edge broker failed").await;
    let (status, body) = readyz(&gw).await;
    assert_eq!(status, 503, "{body}");
    assert_ne!(
        body["components"]["mqtt_session_connection"], "connected",
        "{body}"
    );
    assert!(
        body["components"]["mqtt_session_last_error"].is_string(),
        "{body}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("edge broker failed"))
        .unwrap();
    assert!(
        line.contains("client_cert_file"),
        "the log line says what to set: {line}"
    );
    // HTTP ingest is not held up by the MQTT session.
    let (status, _) = post_json(
        &client(),
        &gw.url("/ingest/http-dev"),
        &gw.token,
        &serde_json::json!({"seq": 1}),
    )
    .await;
    assert_eq!(status, 202);
    gw.terminate();

    // A broker certificate from a CA we do not trust: refused, naming the verification.
    let gw = Gateway::start(&config(
        &dir.path().join("g2"),
        &broker,
        &sink,
        &tls_lines(&pki, "other-ca.pem", Some("gateway@edge-gateway")),
    ));
    let log = wait_log(&gw, "mqtt connection to the edge broker failed").await;
    let line = log
        .lines()
        .find(|l| l.contains("edge broker failed"))
        .unwrap();
    assert!(
        line.contains("certificate verify failed") && line.contains("ca_file"),
        "{line}"
    );
    assert_eq!(readyz(&gw).await.0, 503);
    gw.terminate();

    // With its certificate: connected, and devices are held to their own topics.
    let gw = Gateway::start(&config(
        &dir.path().join("g3"),
        &broker,
        &sink,
        &tls_lines(&pki, "ca.pem", Some("gateway@edge-gateway")),
    ));
    wait_log(&gw, "mqtt session subscribed").await;
    assert_eq!(readyz(&gw).await.0, 200);
    let mut a = Device::connect(
        broker.port,
        "device-a",
        Some(tls_transport(&pki.dir, "ca.pem", Some("device-a"))),
    )
    .await;
    let mut b = Device::connect(
        broker.port,
        "device-b",
        Some(tls_transport(&pki.dir, "ca.pem", Some("device-b"))),
    )
    .await;
    a.publish_seq(0).await;
    b.publish_seq(0).await;
    // Device A (its own certificate) tries to publish as device B. MQTT 3.1.1 has no way to
    // say "denied": mosquitto acknowledges the message and drops it.
    let mut spoof = Device::connect_as(
        broker.port,
        "device-a",
        "dev-device-a-2",
        Some(tls_transport(&pki.dir, "ca.pem", Some("device-a"))),
    )
    .await;
    spoof
        .publish_raw(
            "devices/device-b/telemetry",
            br#"{"seq": 1, "spoofed": true}"#.to_vec(),
        )
        .await;
    assert!(
        spoof.wait_acked(Duration::from_secs(10)).await,
        "the broker handled it"
    );
    drop(spoof);
    a.publish_seq(2).await;
    let want: HashSet<String> = ["device-a/seq/0", "device-a/seq/2", "device-b/seq/0"]
        .into_iter()
        .map(String::from)
        .collect();
    sink.wait_for_keys(&want, Duration::from_secs(20))
        .await
        .expect("devices over mTLS");
    // The broker handled the spoofed message before A's seq 2, which has arrived: had it
    // been forwarded, it would be here too.
    assert!(!sink.keys().contains("device-b/seq/1"), "{:?}", sink.keys());

    // Upstream over mutual TLS too: the mqtt sink presents the gateway's certificate to an
    // upstream broker that requires one (a plain listener beside it for the test's subscriber).
    gw.terminate();
    let tls_port = free_port();
    let up = mqtt::plain_with(
        &dir.path().join("upstream"),
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            pki.path("ca.pem").display(),
            pki.path("server.pem").display(),
            pki.path("server.key").display()
        ),
    );
    let subscriber = Subscriber::start(up.port, "up/#").await;
    let g4 = dir.path().join("g4");
    let cfg = config(
        &g4,
        &broker,
        &sink,
        &tls_lines(&pki, "ca.pem", Some("gateway@edge-gateway")),
    );
    let text = std::fs::read_to_string(&cfg).unwrap()
        + &format!(
            "[[sinks]]\nname = \"upstream\"\ntype = \"mqtt\"\nurl = \"mqtts://127.0.0.1:{tls_port}\"\ntopic_prefix = \"up\"\n{}",
            tls_lines(&pki, "ca.pem", Some("gateway@edge-gateway"))
        );
    std::fs::write(&cfg, text).unwrap();
    let gw = Gateway::start(&cfg);
    wait_log(&gw, "mqtt session subscribed").await;
    a.publish_seq(10).await;
    let want: HashSet<String> = ["device-a/seq/10".to_string()].into();
    subscriber
        .wait_for_keys(&want, Duration::from_secs(20))
        .await
        .expect("upstream over mTLS");

    // A device without a certificate cannot even connect.
    let mut c = Device::connect(
        broker.port,
        "device-c",
        Some(tls_transport(&pki.dir, "ca.pem", None)),
    )
    .await;
    c.publish_seq(0).await;
    assert!(!c.wait_acked(Duration::from_millis(500)).await);
}
