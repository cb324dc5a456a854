//! `sinks` section: one backlog drained by the same gateway, in the same run, to a local HTTP
//! sink, an S3-compatible store (`s3s-fs` on loopback) and a Kafka-protocol broker (tansu,
//! memory storage): records/s per sink, and objects/s for S3.

use super::{accept_all_sink, ingest_batches, Gw};
use edge_gateway_chaos::kafka::KafkaBroker;
use edge_gateway_chaos::store::{Store, ACCESS_KEY, SECRET_KEY};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub async fn drain() {
    let n: usize = std::env::var("BENCH_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    println!("\n## Backlog drain to http, S3 (s3s-fs) and Kafka (tansu), one gateway: {n} records");
    let dir = tempfile::tempdir_in(".").unwrap();
    let mut store = Store::start(dir.path(), "bench").unwrap();
    store.stop();
    let mut broker = KafkaBroker::start(&dir.path().join("kafka"), &["bench"]).unwrap();
    broker.stop();
    let (ak, sk) = (dir.path().join("ak"), dir.path().join("sk"));
    for (p, v) in [(&ak, ACCESS_KEY), (&sk, SECRET_KEY)] {
        std::fs::write(p, v).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let up = Arc::new(AtomicBool::new(false));
    let sink = accept_all_sink(up.clone()).await;
    let gw = Gw::start(&format!(
        "[http]\nmax_batch = 1000\n[delivery]\nbatch_size = 1000\nbackoff_initial_ms = 100\nbackoff_max_ms = 200\n\
         [[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"http://{sink}/\"\n\
         [[sinks]]\nname = \"archive\"\ntype = \"s3\"\nbucket = \"bench\"\nendpoint = \"{}\"\n\
         force_path_style = true\nregion = \"us-east-1\"\naccess_key_id_file = {:?}\n\
         secret_access_key_file = {:?}\nallow_insecure = true\nmax_batch_age_ms = 1000\n\
         [[sinks]]\nname = \"bus\"\ntype = \"kafka\"\nbrokers = \"{}\"\ntopic = \"bench\"\n",
        store.endpoint(),
        ak.display().to_string(),
        sk.display().to_string(),
        broker.brokers()
    ));
    let c = reqwest::Client::new();
    ingest_batches(&gw, n, 0, 8, 1).await;
    up.store(true, Ordering::Relaxed);
    store.run().unwrap();
    broker.run(&["bench"]).unwrap();
    let start = Instant::now();
    let mut done: [Option<f64>; 3] = [None, None, None];
    let mut peak_rss = 0;
    while done.iter().any(Option::is_none) {
        let wal = gw.wal(&c).await;
        peak_rss = peak_rss.max(gw.rss_kib());
        for (name, d) in ["api", "archive", "bus"].iter().zip(done.iter_mut()) {
            let pending = wal["sinks"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["sink"] == *name))
                .and_then(|x| x["pending"].as_u64());
            if d.is_none() && pending == Some(0) {
                *d = Some(start.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let objects = store.objects("bench").unwrap();
    let stored: u64 = walk_bytes(&store.root.join("bench"));
    println!("| sink | drained in | records/s | objects | objects/s |");
    println!("|---|---|---|---|---|");
    let (h, s, k) = (done[0].unwrap(), done[1].unwrap(), done[2].unwrap());
    println!(
        "| http (batches of 1,000) | {h:.1} s | {:.0} | — | — |",
        n as f64 / h
    );
    println!(
        "| s3 (gzip, up to 10,000 records / 8 MiB) | {s:.1} s | {:.0} | {} | {:.1} |",
        n as f64 / s,
        objects.len(),
        objects.len() as f64 / s
    );
    println!(
        "| kafka (lz4, acks=all, idempotent; batches of 1,000) | {k:.1} s | {:.0} | — | — |",
        n as f64 / k
    );
    println!(
        "stored {:.1} MiB compressed ({:.0} bytes/record); peak RSS while draining {:.1} MiB",
        stored as f64 / 1048576.0,
        stored as f64 / n as f64,
        peak_rss as f64 / 1024.0
    );
}

fn walk_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        total += if p.is_dir() {
            walk_bytes(&p)
        } else {
            e.metadata().map(|m| m.len()).unwrap_or(0)
        };
    }
    total
}
