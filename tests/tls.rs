//! TLS on the network edges: the ingest listener with mutual TLS (a client needs a certificate
//! from the configured CA; a wrong CA fails), and the http sink's TLS client with a client
//! certificate — exercised by forwarding from one gateway to another over mTLS.

mod common;

use common::pki::openssl;
use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

/// A CA, a server certificate for 127.0.0.1, a client certificate, and an unrelated CA.
fn make_pki(dir: &Path) {
    let day = ["-days", "2"];
    openssl(
        dir,
        &[
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=test-ca",
            ][..],
            &day,
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-extfile",
                "san.ext",
            ][..],
            &day,
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            "/CN=gateway-a",
        ],
    );
    openssl(
        dir,
        &[
            &[
                "x509",
                "-req",
                "-in",
                "client.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "client.pem",
            ][..],
            &day,
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "other.key",
                "-out",
                "other.pem",
                "-subj",
                "/CN=other-ca",
            ][..],
            &day,
        ]
        .concat(),
    );
}

fn tls_client(pki: &Path, ca: &str, with_identity: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_certs_only([
            reqwest::Certificate::from_pem(&std::fs::read(pki.join(ca)).unwrap()).unwrap(),
        ]);
    if with_identity {
        let id = reqwest::Identity::from_pkcs8_pem(
            &std::fs::read(pki.join("client.pem")).unwrap(),
            &std::fs::read(pki.join("client.key")).unwrap(),
        )
        .unwrap();
        b = b.identity(id);
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_on_ingest_and_on_the_http_sink() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let p = |f: &str| pki.path().join(f).display().to_string();

    // Gateway B: ingest over mutual TLS.
    let dir_b = tempfile::tempdir().unwrap();
    let cfg_b = write_config(
        dir_b.path(),
        &format!(
            "[http.tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n",
            p("server.pem"),
            p("server.key"),
            p("ca.pem")
        ),
    );
    let b = Gateway::start(&cfg_b);
    let url_b = format!("https://{}/ingest/d1", b.http);

    let ok = tls_client(pki.path(), "ca.pem", true);
    let r = ok
        .post(&url_b)
        .bearer_auth(&b.token)
        .json(&json!({"v": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);

    let no_cert = tls_client(pki.path(), "ca.pem", false);
    let e = no_cert
        .post(&url_b)
        .bearer_auth(&b.token)
        .json(&json!({"v": 2}))
        .send()
        .await;
    assert!(
        e.is_err(),
        "a client without a certificate must be refused: {e:?}"
    );

    let wrong_ca = tls_client(pki.path(), "other.pem", true);
    let e = wrong_ca
        .post(&url_b)
        .bearer_auth(&b.token)
        .json(&json!({"v": 3}))
        .send()
        .await;
    assert!(
        e.is_err(),
        "a server certificate from another CA must be refused: {e:?}"
    );

    let plain = client()
        .post(format!("http://{}/ingest/d1", b.http))
        .bearer_auth(&b.token)
        .json(&json!({"v": 4}))
        .send()
        .await;
    assert!(
        plain.is_err() || plain.unwrap().status().as_u16() != 202,
        "plain HTTP is not accepted on a TLS listener"
    );

    // Gateway A forwards to B through its http sink, with B's CA, a client cert and B's token.
    let dir_a = tempfile::tempdir().unwrap();
    write_secret(&dir_a.path().join("b.token"), &b.token);
    let cfg_a = write_config(
        dir_a.path(),
        &format!(
            "[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\n[[sinks]]\nname = \"upstream\"\ntype = \"http\"\nurl = \"https://{}/ingest/gw-a\"\nca_file = {:?}\nclient_cert_file = {:?}\nclient_key_file = {:?}\nbearer_token_file = {:?}\n",
            b.http, p("ca.pem"), p("client.pem"), p("client.key"), dir_a.path().join("b.token").display().to_string()
        ),
    );
    let a = Gateway::start(&cfg_a);
    let mut want = HashSet::new();
    for i in 0..5 {
        let (s, _) = post_json(
            &client(),
            &a.url("/ingest/sensor"),
            &a.token,
            &json!({"seq": i, "t": 20 + i}),
        )
        .await;
        assert_eq!(s, 202);
        want.insert(format!("sensor/seq/{i}"));
    }
    // B's file sink holds A's batches: each line's data.records carry A's idempotency keys.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text =
            std::fs::read_to_string(b.data_dir.join("sink/records.jsonl")).unwrap_or_default();
        let got: HashSet<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["device_id"] == "gw-a")
            .flat_map(|v| v["data"]["records"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r["idempotency_key"].as_str().map(str::to_string))
            .collect();
        if want.is_subset(&got) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "A's readings never reached B over mTLS; A's log:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Without a client certificate, A's sink cannot deliver: a transient failure, retried.
    let dir_c = tempfile::tempdir().unwrap();
    let cfg_c = write_config(
        dir_c.path(),
        &format!("[[sinks]]\nname = \"upstream\"\ntype = \"http\"\nurl = \"https://{}/ingest/gw-c\"\nca_file = {:?}\n", b.http, p("ca.pem")),
    );
    let c = Gateway::start(&cfg_c);
    let (s, _) = post_json(
        &client(),
        &c.url("/ingest/sensor"),
        &c.token,
        &json!({"v": 1}),
    )
    .await;
    assert_eq!(s, 202);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = c.metrics().await;
        if metric(
            &m,
            "edge_gateway_publish_batches_total{result=\"outage\",sink=\"upstream\"}",
        )
        .unwrap_or(0.0)
            >= 1.0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed attempt recorded:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wal = c.admin_get("/admin/wal").await;
    assert_eq!(
        wal["sinks"][0]["pending"], 1,
        "kept for retry, not dropped: {wal}"
    );
}
