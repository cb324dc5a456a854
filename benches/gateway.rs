//! Benchmark harness: prints figures, asserts nothing. Run with
//! `cargo bench --bench gateway` (release build of the gateway binary and of this harness).
//!
//! Sections (each can be picked with an argument: `cargo bench --bench gateway -- wal`):
//! - `wal`:   WalStore append throughput vs a bare redb batched-insert loop on the same disk,
//!   medians of alternating rounds (`BENCH_WAL_ROUNDS`, 5; `BENCH_WAL_SIZES`: records per
//!   commit, e.g. `1000`, default `1,10,100,1000`).
//! - `http`:  durable HTTP ingest through the real binary: records/s and ack latency at
//!   several concurrency levels, single-record and batched requests; p99 at a fixed 1k/s.
//! - `drain`: a backlog of N records (default 1,000,000; `BENCH_BACKLOG`) drained to a local
//!   HTTP sink; RSS before, with the backlog, and after (`BENCH_DRAIN_WAL`: extra `[wal]`
//!   lines, e.g. `history_secs = 0`; `BENCH_HOLD_SECS`: hold the backlog that long first, 6 s).
//!   Before the backlog, the gateway runs in service (`BENCH_WARM` readings, 250,000 by
//!   default, taken and delivered; 0 skips it): the idle size the file after the drain is
//!   compared with.
//! - `sinks`: a backlog (`BENCH_BACKLOG`) drained by one gateway to a local HTTP sink, an
//!   S3-compatible store (`s3s-fs`) and a Kafka broker (tansu), side by side.
//! - `idle`:  RSS of an idle gateway.
//! - `mqtt`:  durable MQTT ingest (PUBACK after commit) beside mosquitto's own rate to an
//!   ack-only subscriber, as a ratio (`BENCH_MQTT_MESSAGES`, default 100,000); and the drain
//!   of a backlog to an upstream mosquitto (`BENCH_MQTT_BACKLOG`, default 100,000; that drain
//!   alone: `upstream`).
//! - `forward`: end to end through two mosquitto brokers, the gateway beside a mosquitto
//!   bridge (persistence on) in the same run (`BENCH_FORWARD_MESSAGES`, default 50,000).
//! - `steady`: sustained ingest with delivery keeping up (`BENCH_STEADY_SECS`, default 60):
//!   the WAL file size and RSS sampled over time, to show they level off.
//! - `protobuf`: MQTT ingest of one reading as JSON and as Protobuf, side by side
//!   (`BENCH_MQTT_MESSAGES`).
//! - `live`: live readings' delivery latency (p50/p99) with no backlog and while a backlog
//!   (`BENCH_BACKLOG`) drains at a ceiling (`BENCH_LIVE_CEILING`, default 20,000/s) with
//!   `delivery.live_first` on.
//! - `traces`: the same HTTP closed loops with traces off, at the default sampler and with
//!   every reading traced, exporting to a local collector (`BENCH_TRACES_SECS`, default 5).

use edge_gateway_actors::wal::{Op, Record, Source, WalLimits, WalStore};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/live.rs"]
mod live;
#[path = "support/mqtt.rs"]
mod mqtt;
#[path = "support/sinks.rs"]
mod sinks;
#[path = "support/traces.rs"]
mod traces;

/// The gateway binary: the one built with this bench, or `BENCH_GATEWAY` (another build, e.g.
/// an older commit's, so two binaries are measured by the same harness in the same run; the
/// `wal` section always measures the store linked into this harness).
fn bin() -> String {
    std::env::var("BENCH_GATEWAY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_edge-gateway").into())
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    println!(
        "edge-gateway benchmark — {} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        bin()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if want("wal") {
        wal_vs_redb();
    }
    if want("idle") {
        rt.block_on(idle());
    }
    if want("http") {
        rt.block_on(http());
    }
    if want("drain") {
        rt.block_on(drain());
    }
    if want("sinks") {
        rt.block_on(sinks::drain());
    }
    if want("mqtt") {
        rt.block_on(mqtt::ingest());
    }
    if want("mqtt") || want("upstream") {
        rt.block_on(mqtt::upstream_drain());
    }
    if want("forward") {
        rt.block_on(mqtt::forward());
    }
    if want("steady") {
        rt.block_on(steady());
    }
    if want("traces") {
        rt.block_on(traces::cost());
    }
    if want("live") {
        rt.block_on(live::latency());
    }
    if want("protobuf") {
        rt.block_on(mqtt::encodings());
    }
}

// ---------------------------------------------------------------- wal vs bare redb

fn rec(i: u64) -> Record {
    let mut data = serde_json::Map::new();
    data.insert("temp".into(), json!(21.5));
    data.insert("humidity".into(), json!(40));
    let mut r = Record {
        device_id: format!("dev-{}", i % 100),
        idempotency_key: if std::env::var("BENCH_SEQ_KEYS").is_ok() {
            format!("k-{i:012}")
        } else {
            format!("dev-{}/seq/{}", i % 100, i / 100)
        },
        // What the ingest edge makes: a v4 UUID's text (deterministic here).
        correlation_id: uuid::Uuid::from_u128(
            u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835),
        )
        .to_string(),
        gateway_id: "gw".into(),
        receive_ts_ms: 1_700_000_000_000 + i,
        source: Source::Http,
        schema: 1,
        msg_id: None,
        device_seq: Some(i),
        device_ts: None,
        data,
        clock_synced: true,
        fingerprint: Default::default(),
        encoded: Default::default(),
        route: Default::default(),
        trace: None,
        send_trace: None,
    };
    // As the ingest edge does, on its own task: the WAL's commit path finds both cached.
    r.fingerprint.0 = Some(edge_gateway_actors::wal::idem::fingerprint(&r));
    r.encoded.0 = Some(r.encode());
    r
}

fn wal_vs_redb() {
    // Rounds of bare redb and the WAL alternate, each on a fresh file, and the medians are
    // compared: on this shared 2-core machine one pass of each measured the pair up to 30 %
    // apart from one run to the next (sessions 15–16), most of it the disk's mood between the
    // two passes. `BENCH_WAL_ROUNDS` (5 by default).
    let rounds: usize = std::env::var("BENCH_WAL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    println!("\n## WAL append vs bare redb (Immediate durability, same disk; median of {rounds} alternating rounds)");
    println!("| records/commit | bare redb rec/s | WalStore rec/s | ratio | ratio per round |");
    println!("|---|---|---|---|---|");
    // `BENCH_WAL_SIZES`: records per commit, comma-separated (a profile of one size).
    let sizes: Vec<usize> = std::env::var("BENCH_WAL_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10, 100, 1000]);
    for per_commit in sizes {
        let total = (per_commit * 300).clamp(2_000, 100_000) as u64;
        let (mut bare, mut wal, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let b = bare_round(per_commit, total);
            let w = wal_round(per_commit, total);
            ratios.push(format!("{:.0}", 100.0 * w / b));
            bare.push(b);
            wal.push(w);
        }
        let (bare, wal) = (median(&mut bare), median(&mut wal));
        println!(
            "| {per_commit} | {bare:.0} | {wal:.0} | {:.0} % | {} |",
            100.0 * wal / bare,
            ratios.join(" / ")
        );
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Bare redb: the same encoded record bytes, one table, insert + commit. Records per second.
fn bare_round(per_commit: usize, total: u64) -> f64 {
    let dir = tempfile::tempdir_in(".").unwrap();
    let db = redb::Database::create(dir.path().join("bare.redb")).unwrap();
    let t: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("r");
    let bodies: Vec<Vec<u8>> = (0..total).map(|i| rec(i).encode()).collect();
    let start = Instant::now();
    for chunk in (0..total).collect::<Vec<_>>().chunks(per_commit) {
        let txn = db.begin_write().unwrap();
        {
            let mut tab = txn.open_table(t).unwrap();
            for &i in chunk {
                tab.insert(i, bodies[i as usize].as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// The WAL: one sink, idempotency keys, counters — what the gateway really writes. Records
/// per second.
fn wal_round(per_commit: usize, total: u64) -> f64 {
    let dir = tempfile::tempdir_in(".").unwrap();
    let limits = WalLimits {
        max_bytes: u64::MAX,
        max_records: u64::MAX,
        max_age_ms: u64::MAX / 2,
        idempotency_window_ms: 3_600_000,
        idempotency_max_keys: u64::MAX,
        dead_retention_ms: u64::MAX / 2,
        max_rejected: 10_000,
        max_attempts: 10,
        lease_ms: 60_000,
        cache_bytes: 32 << 20,
        device_max: edge_gateway_actors::wal::Usage::default(),
        device_fair_share: true,
        max_dead_per_sink: u64::MAX,
        min_free_bytes: 0,
        compact_min_bytes: 0,
        compact_settle_ms: 0,
        max_file_bytes: 0,
        history_ms: 0,
        history_max_bytes: 0,
    };
    let mut store =
        Some(WalStore::open(&dir.path().join("wal.redb"), vec!["s".into()], limits).unwrap());
    let groups: Vec<Vec<Record>> = (0..total)
        .collect::<Vec<_>>()
        .chunks(per_commit)
        .map(|c| c.iter().map(|&i| rec(i)).collect())
        .collect();
    let start = Instant::now();
    for g in groups {
        let ops = vec![Op::Append(g)];
        // WAL time as the actor passes it: a monotonic clock in ms (`actor/clock.rs`).
        let now = 1_700_000_000_000 + start.elapsed().as_millis() as u64;
        let (s, _) = store.take().unwrap().apply(ops, now).unwrap();
        store = Some(s);
    }
    total as f64 / start.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------- the real binary

struct Gw {
    child: Child,
    http: SocketAddr,
    admin: SocketAddr,
    token: String,
    admin_token: String,
    _dir: tempfile::TempDir,
}

impl Gw {
    fn start(extra: &str) -> Gw {
        let dir = tempfile::tempdir_in(".").unwrap();
        let cfg = dir.path().join("g.toml");
        std::fs::write(&cfg, format!("data_dir = {:?}\n[log]\nlevel = \"warn,edge_gateway=info,edge_gateway_actors::ingest=info\"\n{extra}", dir.path().join("data").display().to_string())).unwrap();
        let mut child = Command::new(bin())
            .args([
                "run",
                "--http-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--config",
            ])
            .arg(&cfg)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "edge-gateway ready" {
                        let _ = tx.send(v);
                    }
                }
            }
        });
        let v = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("gateway ready");
        let data = PathBuf::from(v["data_dir"].as_str().unwrap());
        let read = |f: &str| {
            std::fs::read_to_string(data.join(f))
                .unwrap()
                .trim()
                .to_string()
        };
        Gw {
            http: v["http"].as_str().unwrap().parse().unwrap(),
            admin: v["admin"].as_str().unwrap().parse().unwrap(),
            token: read("ingest.token"),
            admin_token: read("admin.token"),
            child,
            _dir: dir,
        }
    }

    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    async fn wal(&self, c: &reqwest::Client) -> serde_json::Value {
        c.get(format!("http://{}/admin/wal", self.admin))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn idle() {
    println!("\n## Idle RSS");
    let gw = Gw::start("");
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "idle RSS after 3 s: {:.1} MiB",
        gw.rss_kib() as f64 / 1024.0
    );
}

/// One keep-alive connection speaking just enough HTTP/1.1: the bench's client must cost
/// less CPU than the server it measures, on the same two cores (reqwest did not).
struct RawConn {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
}

impl RawConn {
    async fn connect(addr: SocketAddr) -> RawConn {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        RawConn {
            stream: tokio::io::BufReader::new(s),
        }
    }

    /// False when the server has closed the connection (reads EOF without blocking).
    async fn alive(&mut self) -> bool {
        use tokio::io::AsyncBufReadExt;
        match tokio::time::timeout(Duration::ZERO, self.stream.fill_buf()).await {
            Ok(Ok(buf)) => !buf.is_empty(),
            Ok(Err(_)) => false,
            Err(_) => true, // nothing to read: still open
        }
    }

    /// Sends a prepared request; returns the status code.
    async fn roundtrip(&mut self, req: &[u8]) -> u16 {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        self.stream.get_mut().write_all(req).await.unwrap();
        let mut line = String::new();
        self.stream.read_line(&mut line).await.unwrap();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut len = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).await.unwrap();
        status
    }
}

fn request(path: &str, token: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!("POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    r.extend_from_slice(body);
    r
}

/// Closed loop: `conc` connections, each sending `per_req` readings per request, for `secs`.
async fn closed_loop(gw: &Gw, conc: usize, per_req: usize, secs: u64) -> (f64, Vec<Duration>) {
    let stop = Arc::new(AtomicBool::new(false));
    let records = Arc::new(AtomicUsize::new(0));
    let body = if per_req == 1 {
        json!({"temp": 21.5, "humidity": 40})
    } else {
        serde_json::Value::Array(
            (0..per_req)
                .map(|i| json!({"temp": 21.5, "i": i}))
                .collect(),
        )
    };
    let body = serde_json::to_vec(&body).unwrap();
    let mut tasks = vec![];
    for c in 0..conc {
        let (stop, records) = (stop.clone(), records.clone());
        let req = request(&format!("/ingest/dev-{c}"), &gw.token, &body);
        let addr = gw.http;
        tasks.push(tokio::spawn(async move {
            let mut conn = RawConn::connect(addr).await;
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let status = conn.roundtrip(&req).await;
                assert_eq!(status, 202);
                lat.push(t.elapsed());
                records.fetch_add(per_req, Ordering::Relaxed);
            }
            lat
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = vec![];
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let rate = records.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    (rate, lat)
}

async fn http() {
    println!("\n## Durable HTTP ingest through the release binary (raw HTTP/1.1 client on the same 2 cores)");
    // A sink that accepts everything, so delivery runs as it would in production.
    let sink = accept_all_sink(Arc::new(AtomicBool::new(true))).await;
    // One load generator on one address: the per-peer cap (64 by default) would refuse it.
    let gw = Gw::start(&format!("[http]\nmax_batch = 1000\nmax_connections_per_peer = 512\n[[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"http://{sink}/\"\n"));
    open_loop(&gw, "fresh gateway").await;
    println!("| connections | readings/request | readings/s | p50 ms | p99 ms | commits | mean commit ms | mean ops/commit |");
    println!("|---|---|---|---|---|---|---|---|");
    let levels: Vec<(usize, usize)> = std::env::var("BENCH_LEVELS")
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|p| p.split_once('x'))
                .map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap()))
                .collect()
        })
        .unwrap_or_else(|| vec![(1, 1), (16, 1), (64, 1), (128, 1), (16, 100), (32, 100)]);
    let c = reqwest::Client::new();
    for (conc, per) in levels {
        let before = commit_stats(&c, &gw).await;
        let (rate, lat) = closed_loop(&gw, conc, per, 5).await;
        let after = commit_stats(&c, &gw).await;
        let (n, secs, ops) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
        println!(
            "| {conc} | {per} | {rate:.0} | {:.2} | {:.2} | {n:.0} | {:.2} | {:.1} |",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            1000.0 * secs / n.max(1.0),
            ops / n.max(1.0)
        );
    }
}

async fn open_loop(gw: &Gw, label: &str) {
    // Open loop at 1k requests/s: a request is issued every millisecond on a free connection.
    let conns: Vec<_> = futures::future::join_all((0..64).map(|_| RawConn::connect(gw.http))).await;
    let pool = Arc::new(tokio::sync::Mutex::new(conns));
    let req = Arc::new(request("/ingest/dev-open", &gw.token, br#"{"temp":1}"#));
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = vec![];
    let start = Instant::now();
    for _ in 0..10_000 {
        ticker.tick().await;
        let (pool, req, addr) = (pool.clone(), req.clone(), gw.http);
        let issued = Instant::now();
        tasks.push(tokio::spawn(async move {
            let pooled = pool.lock().await.pop();
            // A stall can hold every pooled connection: open another rather than wait.
            let mut conn = match pooled {
                Some(c) => c,
                None => RawConn::connect(addr).await,
            };
            // Pooled connections idle past the server's header-read timeout are closed by it.
            if !conn.alive().await {
                conn = RawConn::connect(addr).await;
            }
            let status = conn.roundtrip(&req).await;
            pool.lock().await.push(conn);
            assert_eq!(status, 202);
            issued.elapsed()
        }));
    }
    let mut lat = vec![];
    for t in tasks {
        lat.push(t.await.unwrap());
    }
    lat.sort();
    let text = reqwest::get(format!("http://{}/metrics", gw.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let bucket = |le: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "edge_gateway_wal_commit_seconds_bucket{{le=\"{le}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let all = bucket("+Inf");
    println!(
        "WAL commits so far: {all}; slower than 10 ms: {}, than 50 ms: {}, than 100 ms: {}",
        all - bucket("0.01"),
        all - bucket("0.05"),
        all - bucket("0.1")
    );
    println!("\nopen loop ({label}), 10,000 single-reading requests at 1k/s (achieved {:.0}/s): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms", 10_000.0 / start.elapsed().as_secs_f64(), pct(&lat, 0.5), pct(&lat, 0.99), pct(&lat, 1.0));
}

/// (commits, seconds spent committing, operations committed) from the gateway's metrics.
async fn commit_stats(c: &reqwest::Client, gw: &Gw) -> (f64, f64, f64) {
    let text = c
        .get(format!("http://{}/metrics", gw.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let get = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        get("edge_gateway_wal_commit_seconds_count"),
        get("edge_gateway_wal_commit_seconds_sum"),
        get("edge_gateway_wal_commit_ops_sum"),
    )
}

/// A local analytics API that answers 200 to everything while `up`, 503 otherwise.
async fn accept_all_sink(up: Arc<AtomicBool>) -> SocketAddr {
    use warp::Filter;
    let route = warp::post()
        .and(warp::body::bytes())
        .map(move |_b: bytes::Bytes| {
            if up.load(Ordering::Relaxed) {
                warp::http::StatusCode::OK
            } else {
                warp::http::StatusCode::SERVICE_UNAVAILABLE
            }
        });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(l).run());
    a
}

/// Ingests `n` readings in 1,000-reading requests over `conns` connections, spread over
/// `devices` device ids (`dev-0`…), device seqs from `seq_from` on; every request must get its
/// 202.
async fn ingest_batches(gw: &Gw, n: usize, seq_from: usize, conns: usize, devices: usize) {
    let per = 1000;
    let reqs = n.div_ceil(per);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = vec![];
    for _ in 0..conns {
        let (next, addr, token) = (next.clone(), gw.http, gw.token.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = RawConn::connect(addr).await;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= reqs {
                    break;
                }
                let body: Vec<_> = (0..per)
                    .map(|k| json!({"seq": seq_from + i * per + k, "temp": 21.5}))
                    .collect();
                let req = request(
                    &format!("/ingest/dev-{}", i % devices),
                    &token,
                    &serde_json::to_vec(&body).unwrap(),
                );
                assert_eq!(conn.roundtrip(&req).await, 202);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn drain() {
    let n: usize = std::env::var("BENCH_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    println!("\n## Backlog drain: {n} records to a local HTTP sink");
    let up = Arc::new(AtomicBool::new(false));
    let sink = accept_all_sink(up.clone()).await;
    // `BENCH_DRAIN_WAL`: lines for `[wal]`, e.g. `history_secs = 0` to measure what kept
    // history costs.
    let wal_extra = std::env::var("BENCH_DRAIN_WAL").unwrap_or_default();
    if !wal_extra.is_empty() {
        println!("[wal] {wal_extra}");
    }
    let gw = Gw::start(&format!("[http]\nmax_batch = 1000\n[delivery]\nbatch_size = 1000\nbackoff_initial_ms = 100\nbackoff_max_ms = 200\n[wal]\n{wal_extra}\n[[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"http://{sink}/\"\n"));
    let c = reqwest::Client::new();
    let fresh_file = gw.wal(&c).await["file_bytes"].as_f64().unwrap();
    // The size a gateway in service idles at: `BENCH_WARM` readings (250,000 by default, the
    // idempotency window's key cap; 0 skips this) taken and delivered with the sink up, then
    // quiet for 3 s. Its file holds the window's keys and the kept history, as the file after
    // the drain will; a fresh file holds neither.
    let warm: usize = std::env::var("BENCH_WARM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250_000);
    let idle_file = if warm > 0 {
        up.store(true, Ordering::Relaxed);
        ingest_batches(&gw, warm, 1 << 40, 8, 1).await;
        while gw.wal(&c).await["sinks"][0]["pending"].as_u64() != Some(0) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        up.store(false, Ordering::Relaxed);
        let file = gw.wal(&c).await["file_bytes"].as_f64().unwrap();
        println!(
            "in service: {warm} readings taken and delivered, then idle 3 s: WAL file {:.1} MiB (fresh {:.1} MiB)",
            file / 1048576.0,
            fresh_file / 1048576.0
        );
        file
    } else {
        fresh_file
    };
    let rss0 = gw.rss_kib();
    let start = Instant::now();
    ingest_batches(&gw, n, 0, 8, 1).await;
    let ingest_s = start.elapsed().as_secs_f64();
    let wal = gw.wal(&c).await;
    let rss_backlog = gw.rss_kib();
    println!("ingested {n} in {ingest_s:.1} s ({:.0} rec/s); WAL file {:.1} MiB, live {:.1} MiB; RSS {:.1} MiB (before ingest {:.1} MiB)",
        n as f64 / ingest_s, wal["file_bytes"].as_f64().unwrap() / 1048576.0, wal["live_bytes"].as_f64().unwrap() / 1048576.0, rss_backlog as f64 / 1024.0, rss0 as f64 / 1024.0);
    // `BENCH_HOLD_SECS` (6 by default): keep the backlog this long before the sink comes up,
    // RSS sampled each second — what the held backlog settles at once the burst's freed pages
    // are returned (the binary trims every 5 s), and time to inspect the process.
    let hold: u64 = std::env::var("BENCH_HOLD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    for s in 1..=hold {
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!(
            "holding (pid {}), {s} s: RSS {:.1} MiB",
            gw.child.id(),
            gw.rss_kib() as f64 / 1024.0
        );
    }
    up.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let mut peak_rss = 0;
    loop {
        let wal = gw.wal(&c).await;
        peak_rss = peak_rss.max(gw.rss_kib());
        if wal["sinks"][0]["pending"].as_u64() == Some(0) {
            let s = start.elapsed().as_secs_f64();
            println!("drained {n} in {s:.1} s ({:.0} rec/s); peak RSS while draining {:.1} MiB; WAL file after drain {:.1} MiB", n as f64 / s, peak_rss as f64 / 1024.0, wal["file_bytes"].as_f64().unwrap() / 1048576.0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Space given back: the file within 2x of its idle size, within a minute, no restart.
    let drained = Instant::now();
    loop {
        let file = gw.wal(&c).await["file_bytes"].as_f64().unwrap();
        let waited = drained.elapsed();
        if file <= 2.0 * idle_file.max(1.0) || waited >= Duration::from_secs(60) {
            println!(
                "WAL file {:.1} s after the drain: {:.1} MiB (idle in service {:.1} MiB, fresh {:.1} MiB, compactions {:.0}); RSS {:.1} MiB",
                waited.as_secs_f64(),
                file / 1048576.0,
                idle_file / 1048576.0,
                fresh_file / 1048576.0,
                mqtt::metric(&gw, "edge_gateway_wal_compactions_total").await,
                gw.rss_kib() as f64 / 1024.0
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn steady() {
    let secs: u64 = std::env::var("BENCH_STEADY_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    println!("\n## Steady state: {secs} s of ingest (8 connections x 10 readings/request) with delivery keeping up");
    let sink = accept_all_sink(Arc::new(AtomicBool::new(true))).await;
    let gw = Arc::new(Gw::start(&format!(
        "[[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"http://{sink}/\"\n"
    )));
    let c = reqwest::Client::new();
    let load = {
        let gw = gw.clone();
        tokio::spawn(async move { closed_loop(&gw, 8, 10, secs).await })
    };
    println!("| t (s) | WAL file MiB | live records | RSS MiB |");
    println!("|---|---|---|---|");
    let step = (secs / 6).max(1);
    for t in (step..=secs).step_by(step as usize) {
        tokio::time::sleep(Duration::from_secs(step)).await;
        let w = gw.wal(&c).await;
        println!(
            "| {t} | {:.1} | {} | {:.1} |",
            w["file_bytes"].as_f64().unwrap() / 1048576.0,
            w["records"],
            gw.rss_kib() as f64 / 1024.0
        );
    }
    let (rate, _) = load.await.unwrap();
    println!("sustained {rate:.0} readings/s");
}
