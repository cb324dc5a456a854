//! `live` section (issue 14 part 4): delivery latency of live readings — ingest to arrival at
//! the sink — with no backlog, and while a backlog (`BENCH_BACKLOG`, default 1,000,000)
//! drains at a ceiling (`BENCH_LIVE_CEILING`, default 20,000/s) with `delivery.live_first`
//! on. Live readings go at 20/s for `BENCH_LIVE_SECS` (default 30) in each phase, one per
//! request, each carrying its send time in µs.

use super::{ingest_batches, pct, request, Gw, RawConn};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// What the timing sink saw: latencies of live readings, and backlog records received.
#[derive(Default)]
struct Seen {
    live: Mutex<Vec<Duration>>,
    backlog: AtomicU64,
}

/// An HTTP sink that answers 200 while `up` (503 otherwise) and times every live reading.
async fn timing_sink(up: Arc<AtomicBool>, seen: Arc<Seen>) -> std::net::SocketAddr {
    use warp::Filter;
    let route = warp::post()
        .and(warp::body::bytes())
        .map(move |b: bytes::Bytes| {
            if !up.load(Ordering::Relaxed) {
                return warp::http::StatusCode::SERVICE_UNAVAILABLE;
            }
            let at = now_us();
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
            let records = v["records"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let mut live = Vec::new();
            let mut backlog = 0;
            for r in records {
                match r["data"]["sent_us"].as_u64() {
                    Some(sent) => live.push(Duration::from_micros(at.saturating_sub(sent))),
                    None => backlog += 1,
                }
            }
            seen.backlog.fetch_add(backlog, Ordering::Relaxed);
            seen.live.lock().unwrap().extend(live);
            warp::http::StatusCode::OK
        });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(l).run());
    a
}

/// Sends one live reading every 50 ms for `secs`; returns how many were sent.
async fn live_readings(gw: &Gw, secs: u64) -> usize {
    let mut conn = RawConn::connect(gw.http).await;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut n = 0;
    while Instant::now() < end {
        tick.tick().await;
        let body = serde_json::to_vec(&serde_json::json!({"seq": n, "sent_us": now_us()})).unwrap();
        assert_eq!(
            conn.roundtrip(&request("/ingest/live-1", &gw.token, &body))
                .await,
            202
        );
        n += 1;
    }
    n
}

/// Waits until `n` live readings arrived (or 30 s), then reports their latency.
async fn report(label: &str, seen: &Seen, n: usize) -> f64 {
    let end = Instant::now() + Duration::from_secs(30);
    while seen.live.lock().unwrap().len() < n && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut l = std::mem::take(&mut *seen.live.lock().unwrap());
    l.sort();
    println!(
        "| {label} | {} of {n} | {:.1} | {:.1} | {:.1} |",
        l.len(),
        pct(&l, 0.5),
        pct(&l, 0.99),
        pct(&l, 1.0)
    );
    pct(&l, 0.99)
}

pub async fn latency() {
    let n: usize = std::env::var("BENCH_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let ceiling: u64 = std::env::var("BENCH_LIVE_CEILING")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let secs: u64 = std::env::var("BENCH_LIVE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    println!("\n## Live first: live readings' delivery latency, without and with a {n}-record backlog draining at {ceiling}/s");
    let up = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(Seen::default());
    let sink = timing_sink(up.clone(), seen.clone()).await;
    let gw = Gw::start(&format!(
        "[http]\nmax_batch = 1000\n[delivery]\nbatch_size = 1000\nbackoff_initial_ms = 100\n\
         backoff_max_ms = 200\nlive_first = true\nmax_records_per_sec = {{ api = {ceiling} }}\n\
         [[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"http://{sink}/\"\n"
    ));
    println!("| phase | live readings delivered | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    let sent = live_readings(&gw, secs).await;
    let calm = report("no backlog", &seen, sent).await;

    up.store(false, Ordering::Relaxed);
    let started = Instant::now();
    ingest_batches(&gw, n, 0, 8, 10).await;
    let ingest_s = started.elapsed().as_secs_f64();
    up.store(true, Ordering::Relaxed);
    // The backlog starts at the sink's next retry.
    while seen.backlog.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (b0, t0) = (seen.backlog.load(Ordering::Relaxed), Instant::now());
    let sent = live_readings(&gw, secs).await;
    let drained = seen.backlog.load(Ordering::Relaxed) - b0;
    let rate = drained as f64 / t0.elapsed().as_secs_f64();
    let busy = report("backlog draining", &seen, sent).await;
    println!(
        "backlog ingested in {ingest_s:.1} s; drained at {rate:.0} records/s while live readings went \
         ({} of {n} delivered by the end); live p99 {:.1}x the no-backlog figure",
        seen.backlog.load(Ordering::Relaxed),
        busy / calm.max(0.001)
    );
}
