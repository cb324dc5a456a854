//! The alert rules (`deploy/prometheus/`) against promtool and a real Prometheus (issue 13):
//! the rules parse and their unit tests pass; every metric an alert names exists in a real
//! scrape of a running gateway (no alert silently dead because a metric was renamed); the
//! sink-down alert fires during an outage and clears after it.

mod common;

use common::mqtt::free_port;
use common::sink::{Behaviour, RecordingSink};
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy())
        .output()
        .expect("promtool (apt-get install prometheus)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alert_rules_parse_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("10 rules found"), "{checked}");
    promtool(&["test", "rules", "alerts_test.yml"]);
}

/// A Prometheus scraping `target` every second with the shipped rules.
struct Prometheus {
    child: Child,
    url: String,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Prometheus {
        // The shipped rules, with one change: the sink-down alert holds for 2 s instead of
        // its 5 minutes, so the test sees it fire (the hold itself is promtool's unit test).
        let rules = std::fs::read_to_string(deploy().join("alerts.yml")).unwrap();
        let sink_down = "expr: edge_gateway_sink_outage == 1\n        for: 5m";
        assert!(rules.contains(sink_down), "the sink-down rule changed");
        let rules = rules.replace(
            sink_down,
            "expr: edge_gateway_sink_outage == 1\n        for: 2s",
        );
        std::fs::write(dir.join("alerts.yml"), rules).unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [alerts.yml]\n\
                 scrape_configs:\n  - job_name: edge-gateway\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (apt-get install prometheus)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn query(&self, q: &str) -> Vec<Value> {
        let url =
            reqwest::Url::parse_with_params(&format!("{}/api/v1/query", self.url), &[("query", q)])
                .unwrap();
        let r = client().get(url).send().await;
        match r {
            Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null)["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Polls `q` until `ok` holds for its result (Prometheus scrapes and evaluates every
    /// second; there is no event to wait on).
    async fn wait(&self, q: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.query(q).await;
            if ok(&r) {
                return r;
            }
            assert!(tokio::time::Instant::now() < deadline, "{q}: {r:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every `edge_gateway_*` metric an alert expression names.
fn alert_metrics() -> BTreeSet<String> {
    let rules = std::fs::read_to_string(deploy().join("alerts.yml")).unwrap();
    let mut out = BTreeSet::new();
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(i) = rest.find("edge_gateway_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            out.insert(name);
        }
    }
    out
}

/// Every query of every panel of the shipped dashboards, with the dashboard variables
/// resolved as Grafana would for "all gateways".
fn panel_queries() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/dashboards");
    let mut out = Vec::new();
    for f in std::fs::read_dir(dir).unwrap() {
        let path = f.unwrap().path();
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$instance", ".*")
                    .replace("$__rate_interval", "30s");
                out.push((format!("{} / {}", d["title"], p["title"]), expr));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_answers_every_alert_and_panel_and_sees_the_outage() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    let broker = common::mqtt::plain(&dir.path().join("broker"));
    // A CA file on the sink: a certificate whose expiry the gateway exports.
    let pki = common::pki::Pki::new(&dir.path().join("pki"));
    let gw = Gateway::start(&write_config(
        dir.path(),
        &format!(
            "[admin]\nchaos = true\n[delivery]\nbackoff_initial_ms = 20\nbackoff_max_ms = 200\n\
             [mqtt]\nenabled = true\nbroker = \"{}\"\n\
             [[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"{}\"\nca_file = {:?}\n",
            broker.url(),
            sink.url(),
            pki.path("ca.pem").display().to_string()
        ),
    ));
    let prom = Prometheus::start(dir.path(), &gw.admin.to_string());
    // Give every alert's and panel's metric a series: readings over HTTP and MQTT, a refusal,
    // a retry, a dead letter (the API refuses one reading), an actor restart.
    sink.set(Behaviour::FailNext(400, 1));
    ingest_seqs(&gw, &["d-1"], 1, 1, 0).await;
    gw.wait_dead_letters("api", 1).await;
    sink.set(Behaviour::FailNext(503, 2));
    ingest_seqs(&gw, &["d-2"], 5, 5, 0).await;
    let (s, _) = post_json(
        &client(),
        &gw.url("/ingest/bad id"),
        &gw.token,
        &Value::Null,
    )
    .await;
    assert!((400..500).contains(&s));
    let mut device = common::mqtt::Device::connect(broker.port, "m-1", None).await;
    device.publish_seq(0).await;
    let keys: std::collections::HashSet<String> =
        ["m-1/seq/0".to_string(), "d-2/seq/4".to_string()].into();
    sink.wait_for_keys(&keys, Duration::from_secs(20))
        .await
        .unwrap();
    let r = client()
        .post(gw.admin_url("/admin/actors/dispatcher/fail"))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    prom.wait("up{job=\"edge-gateway\"}", |r| {
        r.first().is_some_and(|s| s["value"][1] == "1")
    })
    .await;
    let names = alert_metrics();
    assert!(names.len() >= 8, "{names:?}");
    for name in &names {
        prom.wait(name, |r| !r.is_empty()).await;
    }
    // Every dashboard panel has data: none silently empty because of a renamed metric.
    let panels = panel_queries();
    assert!(panels.len() >= 30, "{}", panels.len());
    for (panel, expr) in &panels {
        let r = prom.wait(expr, |r| !r.is_empty()).await;
        assert!(!r.is_empty(), "{panel}: {expr}");
    }

    // An outage: the sink-down alert goes pending, then fires (after its hold: 2 s here,
    // 5 minutes as shipped, which promtool's unit test covers), and clears when the sink is
    // back.
    sink.set(Behaviour::Always(503));
    ingest_seqs(&gw, &["d-3"], 3, 3, 0).await;
    let firing = prom
        .wait(
            "ALERTS{alertname=\"EdgeGatewaySinkDown\",alertstate=\"firing\"}",
            |r| !r.is_empty(),
        )
        .await;
    assert_eq!(firing[0]["metric"]["sink"], "api", "{firing:?}");
    prom.wait(
        "edge_gateway_oldest_pending_age_seconds{sink=\"api\"} > 0",
        |r| !r.is_empty(),
    )
    .await;
    sink.set(Behaviour::Ok);
    prom.wait("ALERTS{alertname=\"EdgeGatewaySinkDown\"}", |r| {
        r.is_empty()
    })
    .await;
}
