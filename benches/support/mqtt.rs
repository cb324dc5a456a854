//! MQTT sections of the benchmark: durable MQTT ingest beside mosquitto's own rate to a
//! subscriber that only acknowledges (same broker, payload and publishers, same run), and the
//! upstream drain of a backlog.

use super::{ingest_batches, Gw};
use edge_gateway_chaos::broker::Broker;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn messages() -> usize {
    std::env::var("BENCH_MQTT_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// `clients` devices publish `n` QoS 1 messages between them as fast as the broker acks.
async fn publish(port: u16, n: usize, clients: usize) {
    publish_with(port, n, clients, |i| {
        serde_json::to_vec(&json!({"seq": i, "temp_c": 21.5})).unwrap()
    })
    .await
}

/// `publish` with payloads padded to `len` bytes (the size of what another path carried).
async fn publish_sized(port: u16, n: usize, clients: usize, len: usize) {
    publish_with(port, n, clients, move |i| {
        let mut p = serde_json::to_vec(&json!({"seq": i, "temp_c": 21.5, "pad": ""})).unwrap();
        let pad = len.saturating_sub(p.len());
        p.splice(p.len() - 2..p.len() - 2, std::iter::repeat_n(b'x', pad));
        p
    })
    .await
}

/// The same reading (`seq`, `temp_c`) as Protobuf (`proto/telemetry.proto`).
fn protobuf_reading(i: usize) -> Vec<u8> {
    use edge_gateway_actors::ingest::protobuf::pb;
    use prost::Message;
    pb::Reading {
        device_time_ms: 0,
        seq: Some(i as u64),
        msg_id: None,
        schema: 0,
        values: std::collections::HashMap::from([(
            "temp_c".to_string(),
            pb::Value {
                kind: Some(pb::value::Kind::Number(21.5)),
            },
        )]),
    }
    .encode_to_vec()
}

async fn publish_with(
    port: u16,
    n: usize,
    clients: usize,
    payload: impl Fn(usize) -> Vec<u8> + Clone + Send + 'static,
) {
    let per = n / clients;
    let mut tasks = vec![];
    for c in 0..clients {
        tasks.push(tokio::spawn(publish_one(port, c, per, payload.clone())));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Device `c` publishes `per` messages at QoS 1 (100 in flight) and returns once all are acked.
async fn publish_one(port: u16, c: usize, per: usize, payload: impl Fn(usize) -> Vec<u8>) {
    let mut o = MqttOptions::new(format!("bench-dev-{c}"), "127.0.0.1", port);
    o.set_inflight(100).set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = AsyncClient::new(o, 200);
    let acks = Arc::new(AtomicUsize::new(0));
    let a2 = acks.clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let poller = tokio::spawn(async move {
        let mut done = Some(done_tx);
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    if a2.fetch_add(1, Ordering::Relaxed) + 1 == per {
                        if let Some(d) = done.take() {
                            let _ = d.send(());
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    });
    let topic = format!("devices/bench-{c}/telemetry");
    for i in 0..per {
        let body = payload(i);
        client
            .publish(&topic, QoS::AtLeastOnce, false, body)
            .await
            .unwrap();
    }
    let _ = done_rx.await;
    poller.abort();
}

/// When a subscriber had its `n` messages, and their payload bytes.
struct Received {
    end: Instant,
    bytes: usize,
}

/// A QoS 1 subscriber that only acknowledges; resolves after `n` messages.
async fn ack_only_subscriber(
    port: u16,
    filter: &str,
    id: &str,
    clean: bool,
    n: usize,
) -> tokio::task::JoinHandle<Received> {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(clean);
    let (client, mut ev) = AsyncClient::new(o, 100);
    let (sub_tx, sub_rx) = tokio::sync::oneshot::channel();
    let filter = filter.to_string();
    let h = tokio::spawn(async move {
        let (mut got, mut bytes) = (0usize, 0usize);
        let mut sub_tx = Some(sub_tx);
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                        .unwrap();
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(t) = sub_tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    got += 1;
                    bytes += p.payload.len();
                    if got >= n {
                        let end = Instant::now();
                        return Received { end, bytes };
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
    let _ = sub_rx.await;
    h
}

/// One un-labelled metric of the gateway (0 when absent).
pub async fn metric(gw: &Gw, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", gw.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Upper bound of the slowest WAL commit, from the histogram's buckets.
async fn max_commit(gw: &Gw) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", gw.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("edge_gateway_wal_commit_seconds_count "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    text.lines()
        .filter_map(|l| l.strip_prefix("edge_gateway_wal_commit_seconds_bucket{le=\""))
        .filter_map(|l| l.split_once("\"} "))
        .filter_map(|(le, n)| Some((le.parse::<f64>().ok()?, n.trim().parse::<f64>().ok()?)))
        .find(|(_, n)| *n >= total)
        .map(|(le, _)| le)
        .unwrap_or(f64::INFINITY)
}

pub async fn ingest() {
    let n = messages();
    // `BENCH_MQTT_CLIENTS`: publisher connections (default 4; 1 shows one connection's bound).
    let clients: usize = std::env::var("BENCH_MQTT_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    println!("\n## MQTT ingest: {n} QoS 1 messages from {clients} publishers through mosquitto");
    let dir = tempfile::tempdir_in(".").unwrap();
    let broker = Broker::plain(dir.path(), false, "").expect("mosquitto");

    // mosquitto alone: to a subscriber that acknowledges on receipt.
    let sub = ack_only_subscriber(
        broker.port,
        "devices/+/telemetry",
        "bench-ack-only",
        true,
        n,
    )
    .await;
    let start = Instant::now();
    publish(broker.port, n, clients).await;
    let end = sub.await.unwrap().end;
    let base = n as f64 / (end - start).as_secs_f64();
    println!("mosquitto -> ack-only subscriber: {base:.0} msg/s");

    // The gateway: PUBACK after the WAL commit. Its sink is unreachable, so delivery costs
    // nothing here; this is ingest alone.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = Gw::start(&format!(
        "[mqtt]\nenabled = true\nbroker = \"mqtt://127.0.0.1:{}\"\n[delivery]\nbackoff_max_ms = 30000\n[[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"http://{dead}/\"\n",
        broker.port
    ));
    while metric(&gw, "edge_gateway_mqtt_session_up").await < 1.0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    publish(broker.port, n, clients).await;
    let name = "edge_gateway_ingest_records_total{result=\"accepted\",source=\"mqtt\"}";
    while metric(&gw, name).await < n as f64
        || metric(&gw, "edge_gateway_mqtt_unacked_messages").await > 0.0
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let durable = n as f64 / start.elapsed().as_secs_f64();
    let commits = metric(&gw, "edge_gateway_wal_commit_seconds_count").await;
    println!(
        "gateway (PUBACK after commit): {durable:.0} msg/s, {commits:.0} commits ({:.0} messages per commit)",
        n as f64 / commits.max(1.0)
    );
    println!(
        "ratio durable / mosquitto alone: {:.0} % (shed {:.0}, connection errors {:.0}, slowest commit <= {:.3} s)",
        100.0 * durable / base,
        metric(&gw, "edge_gateway_mqtt_shed_total").await,
        metric(&gw, "edge_gateway_mqtt_connection_errors_total{client=\"ingest\"}").await,
        max_commit(&gw).await
    );
}

pub async fn upstream_drain() {
    let n = std::env::var("BENCH_MQTT_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000usize);
    let inflight: u16 = std::env::var("BENCH_MQTT_INFLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let batch: usize = std::env::var("BENCH_MQTT_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    println!("\n## Upstream MQTT drain: a {n}-record backlog to an upstream mosquitto");
    let dir = tempfile::tempdir_in(".").unwrap();
    let extra = std::env::var("BENCH_UPSTREAM_CONF")
        .unwrap_or_default()
        .replace("\\n", "\n");
    let mut up = Broker::plain(dir.path(), true, &extra).expect("mosquitto");
    // A persistent subscriber: its session (and what is queued for it) survives the outage.
    let sub = ack_only_subscriber(up.port, "site/#", "bench-upstream-sub", false, n).await;
    sub.abort();
    up.stop();
    let gw = Gw::start(&format!(
        "[http]\nmax_batch = 1000\n[delivery]\nbatch_size = {batch}\nbackoff_initial_ms = 100\nbackoff_max_ms = 200\n[[sinks]]\nname = \"up\"\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{}\"\ntopic_prefix = \"site\"\nmax_in_flight = {inflight}\n",
        up.port
    ));
    ingest_batches(&gw, n, 0, 4, 3).await;
    up.start().expect("mosquitto");
    let start = Instant::now();
    let sub = ack_only_subscriber(up.port, "site/#", "bench-upstream-sub", false, n).await;
    let got = sub.await.unwrap();
    let s = (got.end - start).as_secs_f64();
    let size = got.bytes / n;
    println!(
        "drained {n} upstream in {s:.1} s ({:.0} msg/s, batch_size {batch}, max_in_flight {inflight}, QoS 1, {size}-byte payloads); gateway RSS {:.1} MiB",
        n as f64 / s,
        gw.rss_kib() as f64 / 1024.0
    );
    // mosquitto alone through this very broker (persistence on, a persistent subscriber
    // session, as the drain had), from the `mqtt` section's four publishers: once with their
    // small payloads (that section's baseline), once with payloads the size of the records
    // the drain carried (a broker's cost grows with the bytes it moves).
    for (what, len) in [("small", 0), ("drain-sized", size)] {
        let id = format!("bench-upstream-{what}");
        let sub = ack_only_subscriber(up.port, "devices/+/telemetry", &id, false, n).await;
        let start = Instant::now();
        publish_sized(up.port, n, 4, len).await;
        let got = sub.await.unwrap();
        let same = n as f64 / (got.end - start).as_secs_f64();
        println!(
            "mosquitto alone, same broker, {what} payloads ({} bytes): {same:.0} msg/s; the drain is {:.0} % of it",
            got.bytes / n,
            100.0 * n as f64 / s / same
        );
    }
    // Where the time went: inside the publisher (publish all, every PUBACK back) or between.
    let busy = metric(&gw, "edge_gateway_publish_seconds_sum{sink=\"up\"}").await;
    let batches = metric(&gw, "edge_gateway_publish_seconds_count{sink=\"up\"}").await;
    let commits = metric(&gw, "edge_gateway_wal_commit_seconds_count").await;
    let commit_s = metric(&gw, "edge_gateway_wal_commit_seconds_sum").await;
    println!(
        "publisher busy {busy:.2} s over {batches:.0} attempts ({:.1} ms each); WAL commits {commits:.0}, {commit_s:.2} s in all",
        1000.0 * busy / batches.max(1.0)
    );
}

/// End to end, device -> edge mosquitto -> forwarder -> upstream mosquitto -> subscriber, with
/// the forwarder being (a) a mosquitto bridge with persistence on — what users deploy instead —
/// and (b) the gateway (PUBACK after the WAL commit, mqtt sink to the upstream broker). Same
/// publishers, payloads and subscriber, same run (`BENCH_FORWARD_MESSAGES`, default 50,000).
pub async fn forward() {
    let n: usize = std::env::var("BENCH_FORWARD_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let clients = 4;
    println!("\n## Forward: {n} QoS 1 messages device -> edge mosquitto -> forwarder -> upstream mosquitto -> subscriber");
    // Publishers alone, to an ack-only subscriber on one broker: the bound they set.
    let dir = tempfile::tempdir_in(".").unwrap();
    let b = Broker::plain(&dir.path().join("alone"), false, "").expect("mosquitto");
    let sub = ack_only_subscriber(b.port, "devices/+/telemetry", "fwd-alone", true, n).await;
    let start = Instant::now();
    publish(b.port, n, clients).await;
    let alone = n as f64 / (sub.await.unwrap().end - start).as_secs_f64();
    drop(b);

    // (a) mosquitto bridge, persistence on at both ends.
    let up = Broker::plain(&dir.path().join("bridge-up"), true, "").expect("mosquitto");
    let sub = ack_only_subscriber(up.port, "devices/+/telemetry", "fwd-bridge", true, n).await;
    let bridge_conf = format!(
        "connection upstream\naddress 127.0.0.1:{}\ntopic devices/# out 1\ncleansession false\n\
         bridge_protocol_version mqttv311\nbridge_max_packet_size 0\n",
        up.port
    );
    let edge =
        Broker::plain(&dir.path().join("bridge-edge"), true, &bridge_conf).expect("mosquitto");
    // Published before the bridge is up, messages wait in the edge broker's queue for it.
    let start = Instant::now();
    publish(edge.port, n, clients).await;
    let bridge = n as f64 / (sub.await.unwrap().end - start).as_secs_f64();
    drop((edge, up));

    // (b) the gateway between the two brokers.
    let up = Broker::plain(&dir.path().join("gw-up"), true, "").expect("mosquitto");
    let edge = Broker::plain(&dir.path().join("gw-edge"), false, "").expect("mosquitto");
    let sub = ack_only_subscriber(up.port, "site/#", "fwd-gw", true, n).await;
    // `BENCH_MQTT_INFLIGHT`: the sink's `max_in_flight` (the gateway's default otherwise).
    let inflight = std::env::var("BENCH_MQTT_INFLIGHT")
        .map(|v| format!("max_in_flight = {v}\n"))
        .unwrap_or_default();
    let gw = Gw::start(&format!(
        "[mqtt]\nenabled = true\nbroker = \"mqtt://127.0.0.1:{}\"\n[delivery]\nbatch_size = 500\n\
         [[sinks]]\nname = \"up\"\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{}\"\ntopic_prefix = \"site\"\n{inflight}",
        edge.port, up.port
    ));
    while metric(&gw, "edge_gateway_mqtt_session_up").await < 1.0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    publish(edge.port, n, clients).await;
    let gateway = n as f64 / (sub.await.unwrap().end - start).as_secs_f64();
    println!("| forwarder | msg/s end to end | vs bridge |");
    println!("|---|---|---|");
    println!("| (publishers to one broker, no forwarder) | {alone:.0} | |");
    println!("| mosquitto bridge, persistence on | {bridge:.0} | 100 % |");
    println!(
        "| edge-gateway (durable WAL, PUBACK after commit) | {gateway:.0} | {:.0} % |",
        100.0 * gateway / bridge
    );
}

/// `protobuf` section: MQTT ingest of the same reading as JSON and as Protobuf, side by side
/// (one gateway each, the same publishers, PUBACK after commit).
pub async fn encodings() {
    let n = messages();
    let clients = 4;
    println!("\n## MQTT ingest by payload encoding: {n} QoS 1 messages, {clients} publishers");
    println!("| encoding | payload bytes | msg/s (PUBACK after commit) | gateway CPU µs/msg |");
    println!("|---|---|---|---|");
    let json_size = serde_json::to_vec(&json!({"seq": 12345, "temp_c": 21.5}))
        .unwrap()
        .len();
    for (label, encoding, payload, size) in [
        (
            "JSON",
            "json",
            (|i| serde_json::to_vec(&json!({"seq": i, "temp_c": 21.5})).unwrap())
                as fn(usize) -> Vec<u8>,
            json_size,
        ),
        (
            "Protobuf",
            "protobuf",
            protobuf_reading as fn(usize) -> Vec<u8>,
            protobuf_reading(12345).len(),
        ),
    ] {
        let dir = tempfile::tempdir_in(".").unwrap();
        let broker = Broker::plain(dir.path(), false, "").expect("mosquitto");
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let gw = Gw::start(&format!(
            "[mqtt]\nenabled = true\nbroker = \"mqtt://127.0.0.1:{}\"\n\
             [[mqtt.subscriptions]]\nfilter = \"devices/+/telemetry\"\nencoding = \"{encoding}\"\n\
             [delivery]\nbackoff_max_ms = 30000\n[[sinks]]\nname = \"api\"\ntype = \"http\"\nurl = \"http://{dead}/\"\n",
            broker.port
        ));
        while metric(&gw, "edge_gateway_mqtt_session_up").await < 1.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cpu0 = super::traces::cpu_secs(gw.child.id());
        let start = Instant::now();
        publish_with(broker.port, n, clients, payload).await;
        let name = "edge_gateway_ingest_records_total{result=\"accepted\",source=\"mqtt\"}";
        while metric(&gw, name).await < n as f64
            || metric(&gw, "edge_gateway_mqtt_unacked_messages").await > 0.0
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        let cpu = super::traces::cpu_secs(gw.child.id()) - cpu0;
        println!(
            "| {label} | {size} | {rate:.0} | {:.1} |",
            1e6 * cpu / n as f64
        );
    }
}
