//! Sink faults: 500s then recovery (retried and delivered), 400 (Dead with the reason kept),
//! a sink that hangs (timeouts; the other sink is unaffected), and failures that are not the
//! records' fault (issue 10): a 502 storm longer than all attempts, `Retry-After`, a redirect
//! to a login page and an HTML page with a 200, a 401/404, a 200 without the `ack = "json"`
//! count — none of them uses up an attempt or counts as a delivery; readiness names them.

mod common;

use common::sink::{Behaviour, RecordingSink};
use common::*;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

async fn ingest_n(gw: &Gateway, device: &str, n: usize) -> HashSet<String> {
    let c = client();
    let mut keys = HashSet::new();
    for i in 0..n {
        let (s, _) = post_json(
            &c,
            &gw.url(&format!("/ingest/{device}")),
            &gw.token,
            &json!({"seq": i, "v": i}),
        )
        .await;
        assert_eq!(s, 202);
        keys.insert(format!("{device}/seq/{i}"));
    }
    keys
}

/// A gateway with one http sink `api` at `sink`; `delivery` goes into `[delivery]`.
fn gateway_to(
    sink: &RecordingSink,
    delivery: &str,
    sink_extra: &str,
) -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[delivery]\n{delivery}\n{}",
            http_sink("api", &sink.url(), sink_extra)
        ),
    );
    let gw = Gateway::start(&cfg);
    (dir, gw)
}

fn http_sink(name: &str, url: &str, extra: &str) -> String {
    format!("[[sinks]]\nname = \"{name}\"\ntype = \"http\"\nurl = \"{url}\"\n{extra}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_delivered() {
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::FailNext(500, 3));
    let (_dir, gw) = gateway_to(&sink, "backoff_initial_ms = 20\nbackoff_max_ms = 200", "");
    let keys = ingest_n(&gw, "d1", 20).await;
    sink.wait_for_keys(&keys, Duration::from_secs(30))
        .await
        .unwrap();
    let statuses = sink.statuses();
    assert_eq!(&statuses[..3], &[500, 500, 500], "{statuses:?}");
    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            "edge_gateway_publish_batches_total{result=\"outage\",sink=\"api\"}"
        )
        .unwrap()
            >= 3.0,
        "{m}"
    );
    let wal = gw.admin_get("/admin/wal").await;
    assert_eq!(wal["sinks"][0]["dead"], 0, "{wal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_dead_letter_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::Always(400));
    let cfg = write_config(dir.path(), &http_sink("api", &sink.url(), ""));
    let gw = Gateway::start(&cfg);
    let keys = ingest_n(&gw, "d1", 5).await;
    let dl = gw.wait_dead_letters("api", keys.len()).await;
    for d in dl["dead_letters"].as_array().unwrap() {
        assert_eq!(d["reason"], "HTTP 400");
        assert_eq!(d["attempts"], 1, "a permanent error is not retried");
        assert!(keys.contains(d["record"]["idempotency_key"].as_str().unwrap()));
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "edge_gateway_dead_lettered_total{reason=\"rejected\",sink=\"api\"}"
        ),
        Some(5.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "edge_gateway_wal_records{sink=\"api\",state=\"dead\"}"),
        Some(5.0),
        "{m}"
    );
    assert!(sink.keys().is_empty());
    // The operator fixes the API and replays the dead letters.
    sink.set(Behaviour::Ok);
    let r: serde_json::Value = client()
        .post(gw.admin_url("/admin/dead-letters/api/requeue"))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["requeued"], 5, "{r}");
    sink.wait_for_keys(&keys, Duration::from_secs(30))
        .await
        .unwrap();
    let wal = gw.admin_get("/admin/wal").await;
    assert_eq!(wal["sinks"][0]["dead"], 0, "{wal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_sink_times_out_and_does_not_hold_back_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let slow = RecordingSink::start().await;
    let good = RecordingSink::start().await;
    slow.set(Behaviour::Hang);
    let cfg = write_config(
        dir.path(),
        &format!(
            "[delivery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\n{}{}",
            http_sink("slow", &slow.url(), "timeout_ms = 300"),
            http_sink("good", &good.url(), "")
        ),
    );
    let gw = Gateway::start(&cfg);
    let keys = ingest_n(&gw, "d1", 30).await;
    good.wait_for_keys(&keys, Duration::from_secs(30))
        .await
        .unwrap();
    // The slow sink saw attempts that timed out (outages: no attempt used), and still has
    // everything pending.
    assert!(
        slow.wait_batches(2, Duration::from_secs(30)).await,
        "the slow sink was never retried"
    );
    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            "edge_gateway_publish_batches_total{result=\"outage\",sink=\"slow\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    let wal = gw.admin_get("/admin/wal").await;
    let slow_stats = wal["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sink"] == "slow")
        .unwrap()
        .clone();
    assert_eq!(slow_stats["pending"], 30, "{wal}");
    // It recovers: everything arrives.
    slow.set(Behaviour::Ok);
    slow.wait_for_keys(&keys, Duration::from_secs(30))
        .await
        .unwrap();
}

/// Issue 10: a load balancer answering 502 for longer than all attempts would last (here 25
/// tries against `max_attempts = 2`) dead-letters nothing; once the API is back every reading
/// is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_all_attempts_dead_letters_nothing() {
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::Always(502));
    let (_dir, gw) = gateway_to(
        &sink,
        "max_attempts = 2\nbackoff_initial_ms = 10\nbackoff_max_ms = 20",
        "",
    );
    let keys = ingest_n(&gw, "d1", 3).await;
    assert!(sink.wait_batches(25, Duration::from_secs(30)).await);
    let dl = gw.admin_get("/admin/dead-letters/api").await;
    assert_eq!(
        dl["dead_letters"],
        json!([]),
        "an outage is not the records' fault"
    );
    sink.set(Behaviour::Ok);
    sink.wait_for_keys(&keys, Duration::from_secs(30))
        .await
        .unwrap();
    let wal = gw.admin_get("/admin/wal").await;
    assert_eq!(wal["sinks"][0]["dead"], 0, "{wal}");
    assert_eq!(sink.by_device()["d1"], vec![0, 1, 2], "in order");
}

/// Issue 10: a redirect to a login page and a `200` carrying an HTML page are answers from
/// something in front of the API: the sink is held (neither dead-lettered nor counted as
/// delivered) until the API itself answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_or_an_html_page_is_an_outage_not_a_delivery() {
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::Redirect);
    let (_dir, gw) = gateway_to(
        &sink,
        "max_attempts = 2\nbackoff_initial_ms = 10\nbackoff_max_ms = 20",
        "",
    );
    let keys = ingest_n(&gw, "d1", 11).await;
    assert!(sink.wait_batches(10, Duration::from_secs(30)).await);
    sink.set(Behaviour::HtmlPage);
    assert!(sink.wait_batches(20, Duration::from_secs(30)).await);
    let wal = gw.admin_get("/admin/wal").await;
    assert_eq!(
        wal["sinks"][0]["pending"], 11,
        "nothing acked by a login page: {wal}"
    );
    assert_eq!(wal["sinks"][0]["dead"], 0, "nothing dead: {wal}");
    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            "edge_gateway_publish_batches_total{result=\"outage\",sink=\"api\"}"
        )
        .unwrap()
            >= 20.0,
        "{m}"
    );
    assert!(gw.log().contains("login"), "the reason is logged");
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(ready["ready"], true, "ingest is still safe: {ready}");
    assert!(
        ready["sinks"]["api"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("HTML")),
        "readiness names the outage: {ready}"
    );
    gw.wait_metric("edge_gateway_sink_outage{sink=\"api\"}", |v| v == 1.0)
        .await;
    sink.set(Behaviour::Ok);
    sink.wait_for_keys(&keys, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(sink.by_device()["d1"], (0..11).collect::<Vec<u64>>());
    gw.wait_metric("edge_gateway_sink_outage{sink=\"api\"}", |v| v == 0.0)
        .await;
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(ready["sinks"]["api"]["state"], "delivering", "{ready}");
}

/// A wrong token (401) or URL (404) refuses the gateway, not a record: the sink is held,
/// readiness says why, nothing is dead-lettered however long it lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_refusing_the_gateway_holds_it_and_dead_letters_nothing() {
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::Always(401));
    let (_dir, gw) = gateway_to(
        &sink,
        "max_attempts = 2\nbackoff_initial_ms = 10\nbackoff_max_ms = 20",
        "",
    );
    let keys = ingest_n(&gw, "d1", 3).await;
    assert!(sink.wait_batches(10, Duration::from_secs(30)).await);
    sink.set(Behaviour::Always(404));
    assert!(sink.wait_batches(20, Duration::from_secs(30)).await);
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(ready["sinks"]["api"]["state"], "outage", "{ready}");
    assert!(
        ready["sinks"]["api"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("url")),
        "{ready}"
    );
    let wal = gw.admin_get("/admin/wal").await;
    assert_eq!(wal["sinks"][0]["dead"], 0, "{wal}");
    sink.set(Behaviour::Ok);
    sink.wait_for_keys(&keys, Duration::from_secs(30))
        .await
        .unwrap();
}

/// `ack = "json"`: a `200` that does not count the batch (`{"ok": true}` from a proxy) is no
/// delivery — held, nothing dead; the API's own `{"accepted": N}` is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_json_ack_only_the_apis_count_is_a_delivery() {
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::NoAck);
    let (_dir, gw) = gateway_to(
        &sink,
        "max_attempts = 2\nbackoff_initial_ms = 10\nbackoff_max_ms = 20",
        "ack = \"json\"",
    );
    let keys = ingest_n(&gw, "d1", 5).await;
    assert!(sink.wait_batches(10, Duration::from_secs(30)).await);
    let wal = gw.admin_get("/admin/wal").await;
    assert_eq!(wal["sinks"][0]["pending"], 5, "{wal}");
    assert_eq!(wal["sinks"][0]["dead"], 0, "{wal}");
    let ready = gw.admin_get("/readyz").await;
    assert!(
        ready["sinks"]["api"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("accepted")),
        "{ready}"
    );
    sink.set(Behaviour::Ok);
    sink.wait_for_keys(&keys, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(sink.by_device()["d1"], (0..5).collect::<Vec<u64>>());
}

/// A sink that says `Retry-After: 2` is not asked again sooner, however short the backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::RetryAfter(503, 2));
    let (_dir, gw) = gateway_to(&sink, "backoff_initial_ms = 10\nbackoff_max_ms = 20", "");
    let keys = ingest_n(&gw, "d1", 1).await;
    assert!(sink.wait_batches(1, Duration::from_secs(30)).await);
    // Without Retry-After the 10-20 ms backoff would have asked ~50 times in this second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sink.statuses(), vec![503], "asked again before Retry-After");
    sink.set(Behaviour::Ok);
    sink.wait_for_keys(&keys, Duration::from_secs(30))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_sink_still_gets_each_devices_readings_first_in_order() {
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::FailEvery(503, 3));
    let (_dir, gw) = gateway_to(
        &sink,
        "batch_size = 7\nbackoff_initial_ms = 5\nbackoff_max_ms = 20\nmax_attempts = 100",
        "",
    );
    // Three devices in parallel, each sending its readings in seq order.
    let mut tasks = vec![];
    for d in 0..3 {
        let (url, token) = (gw.url(&format!("/ingest/dev-{d}")), gw.token.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut keys = HashSet::new();
            for i in 0..60u64 {
                let (s, _) = post_json(&c, &url, &token, &json!({"seq": i})).await;
                assert_eq!(s, 202);
                keys.insert(format!("dev-{d}/seq/{i}"));
            }
            keys
        }));
    }
    let mut keys = HashSet::new();
    for t in tasks {
        keys.extend(t.await.unwrap());
    }
    sink.wait_for_keys(&keys, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        sink.statuses().contains(&503),
        "the sink did fail along the way"
    );
    for (dev, seqs) in sink.by_device() {
        let mut seen = HashSet::new();
        let firsts: Vec<u64> = seqs.into_iter().filter(|s| seen.insert(*s)).collect();
        assert_eq!(
            firsts,
            (0..60).collect::<Vec<u64>>(),
            "{dev}: first deliveries out of order"
        );
    }
}

/// Each seq once, where it was first delivered.
fn first_deliveries(seqs: &[u64]) -> Vec<u64> {
    let mut seen = HashSet::new();
    seqs.iter().copied().filter(|s| seen.insert(*s)).collect()
}

/// Posts `n` readings of ~2.5 KiB for `device`, one request each; `poison` marks one of them.
async fn ingest_big(gw: &Gateway, device: &str, n: u64, poison: Option<u64>) -> HashSet<String> {
    let c = client();
    let pad = "x".repeat(2500);
    let mut keys = HashSet::new();
    for i in 0..n {
        let mut body = json!({"seq": i, "pad": pad});
        if poison == Some(i) {
            body["poison"] = true.into();
        }
        let (s, _) = post_json(&c, &gw.url(&format!("/ingest/{device}")), &gw.token, &body).await;
        assert_eq!(s, 202);
        keys.insert(format!("{device}/seq/{i}"));
    }
    keys
}

/// An outage (the sink answers 503) while `n` big readings come in — `poison` marks one —
/// then the sink behaves as `then`: the backlog goes out in `batch_size`-record batches.
async fn backlog_then(
    then: Behaviour,
    delivery: &str,
    sink_extra: &str,
    n: u64,
    poison: Option<u64>,
) -> (tempfile::TempDir, RecordingSink, Gateway, HashSet<String>) {
    let sink = RecordingSink::start().await;
    sink.set(Behaviour::Always(503));
    let (dir, gw) = gateway_to(
        &sink,
        &format!("backoff_initial_ms = 10\nbackoff_max_ms = 50\n{delivery}"),
        sink_extra,
    );
    let keys = ingest_big(&gw, "d1", n, poison).await;
    sink.set(then);
    (dir, sink, gw, keys)
}

/// Issue 10: after an outage the backlog goes out in 500-record batches of ~1.3 MiB; a proxy in
/// front of the API refuses bodies over 1 MiB with 413. The batches are split, never dead-
/// lettered: every reading arrives, in order. (The gateway's own `max_batch_bytes` is raised
/// here so the proxy's 413 is what it meets; by default it splits before sending.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_limit_after_an_outage_splits_batches_and_delivers_everything() {
    let (_dir, sink, gw, keys) = backlog_then(
        Behaviour::BodyLimit(1 << 20),
        "batch_size = 500\nmax_attempts = 2",
        "max_batch_bytes = 10485760",
        600,
        None,
    )
    .await;
    sink.wait_for_keys(&keys, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(sink.statuses().contains(&413), "{:?}", sink.statuses());
    let wal = gw.admin_get("/admin/wal").await;
    assert_eq!(wal["sinks"][0]["dead"], 0, "too big is not bad: {wal}");
    let first = first_deliveries(&sink.by_device()["d1"]);
    assert_eq!(first, (0..600).collect::<Vec<u64>>(), "in order");
}

/// With the default `max_batch_bytes` (900 KiB) the gateway splits before sending: the same
/// proxy never has to refuse anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_batch_byte_limit_stays_under_a_1_mib_proxy() {
    let (_dir, sink, gw, keys) = backlog_then(
        Behaviour::BodyLimit(1 << 20),
        "batch_size = 500",
        "",
        600,
        None,
    )
    .await;
    sink.wait_for_keys(&keys, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!sink.statuses().contains(&413), "{:?}", sink.statuses());
    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            "edge_gateway_publish_batches_total{result=\"too_big\",sink=\"api\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "split before sending: {m}"
    );
}

/// Issue 10: the API refuses a whole batch with 400 because of one record in it. The batch is
/// bisected until that record is alone: only it is dead-lettered (with the API's answer), every
/// other reading is delivered, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poison_record_in_a_batch_is_dead_lettered_alone() {
    poison_isolated(Behaviour::Poison, "", "HTTP 400").await;
}

/// A backlog of 50 readings in batches of 64 after an outage, reading 17 refused by the sink
/// as `then` does it: only reading 17 is dead-lettered, with `reason`; the rest arrive in order.
async fn poison_isolated(then: Behaviour, sink_extra: &str, reason: &str) {
    let (_dir, sink, gw, mut keys) =
        backlog_then(then, "batch_size = 64", sink_extra, 50, Some(17)).await;
    keys.remove("d1/seq/17");
    sink.wait_for_keys(&keys, Duration::from_secs(60))
        .await
        .unwrap();
    let dl = gw.wait_dead_letters("api", 1).await;
    let d = &dl["dead_letters"][0];
    assert_eq!(d["record"]["idempotency_key"], "d1/seq/17", "{dl}");
    assert_eq!(d["reason"], reason, "{dl}");
    assert_eq!(dl["dead_letters"].as_array().unwrap().len(), 1, "{dl}");
    let first = first_deliveries(&sink.by_device()["d1"]);
    let want: Vec<u64> = (0..50).filter(|i| *i != 17).collect();
    assert_eq!(first, want, "the rest delivered, in order");
}

/// Issue 10, `ack = "json"`: the API takes every record of a batch but one and says so in a
/// 200 (`{"accepted": 63}` of 64). The batch is bisected until the refused record is alone;
/// only it is dead-lettered, with the count as the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_api_leaves_out_of_its_json_ack_is_dead_lettered_alone() {
    poison_isolated(
        Behaviour::PoisonAck,
        "ack = \"json\"",
        "the sink accepted 0 of 1 records (ack = \"json\")",
    )
    .await;
}
