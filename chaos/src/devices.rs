//! Simulated devices and the upstream subscriber.
//!
//! - MQTT device: publishes `{"seq", "value"}` at QoS 1 to `devices/{id}/telemetry` on the edge
//!   broker, one message outstanding at a time; a reading is acknowledged when the broker's
//!   PUBACK for it arrives (rumqttc resends it after a reconnect until then).
//! - HTTP device: POSTs each reading until it gets a 2xx (same `seq`, so a retry is a
//!   duplicate the gateway recognises), then moves on.
//! - Upstream subscriber: a persistent QoS 1 session on the upstream broker that records every
//!   message in the ledger.

use crate::ledger::{Ledger, Reading};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

fn reading(device: &str, seq: u64) -> (Reading, Vec<u8>) {
    let value = crate::value(device, seq);
    let body = serde_json::to_vec(&serde_json::json!({"seq": seq, "value": value})).expect("json");
    (
        Reading {
            device: device.to_string(),
            seq,
            value,
        },
        body,
    )
}

/// Runs an MQTT device until `stop`; returns how many readings it produced.
pub async fn mqtt_device(
    id: String,
    port: u16,
    rate: f64,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut o = MqttOptions::new(format!("chaos-{id}"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5)).set_inflight(10);
    let (client, mut ev) = AsyncClient::new(o, 10);
    let (tx, mut acks) = watch::channel(0u64);
    let poller = tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => tx.send_modify(|n| *n += 1),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut seq = 0u64;
    let topic = format!("devices/{id}/telemetry");
    while !stop.load(Ordering::Relaxed) {
        let (r, body) = reading(&id, seq);
        ledger.lock().expect("ledger").produced(r);
        if client
            .publish(&topic, QoS::AtLeastOnce, false, body)
            .await
            .is_err()
        {
            break;
        }
        let want = seq + 1;
        // Wait for its PUBACK (a broker restart just delays it: rumqttc resends).
        if acks.wait_for(|n| *n >= want).await.is_err() {
            break;
        }
        ledger.lock().expect("ledger").acked(&id, seq);
        seq += 1;
        tokio::time::sleep(period).await;
    }
    poller.abort();
    seq
}

/// Runs an HTTP device until `stop`; returns how many readings it produced.
pub async fn http_device(
    id: String,
    url: String,
    token: String,
    rate: f64,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut seq = 0u64;
    'readings: while !stop.load(Ordering::Relaxed) {
        let (r, body) = reading(&id, seq);
        ledger.lock().expect("ledger").produced(r);
        loop {
            let resp = c
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            if resp.as_ref().is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if stop.load(Ordering::Relaxed) {
                break 'readings; // produced, never acknowledged: the oracle does not count it
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ledger.lock().expect("ledger").acked(&id, seq);
        seq += 1;
        tokio::time::sleep(period).await;
    }
    seq
}

/// The device that sends poison readings (scenario faults `poison_reading`).
pub const POISON_DEVICE: &str = "poison-0";

/// Posts reading `seq` of [`POISON_DEVICE`], marked `"poison": true`, until the gateway takes
/// it (10 s at most); the ledger records it as produced, and as acknowledged and poison once
/// taken.
pub async fn poison_reading(url: &str, token: &str, seq: u64, ledger: &Mutex<Ledger>) -> bool {
    let (r, _) = reading(POISON_DEVICE, seq);
    let body = serde_json::json!({"seq": seq, "value": r.value, "poison": true});
    ledger.lock().expect("ledger").produced(r);
    let c = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let resp = c.post(url).bearer_auth(token).json(&body).send().await;
        if resp.as_ref().is_ok_and(|r| r.status().is_success()) {
            let mut l = ledger.lock().expect("ledger");
            l.acked(POISON_DEVICE, seq);
            l.poison(POISON_DEVICE, seq);
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The upstream subscriber; returns once subscribed.
pub async fn upstream_subscriber(
    port: u16,
    filter: &str,
    ledger: Arc<Mutex<Ledger>>,
) -> tokio::task::JoinHandle<()> {
    let mut o = MqttOptions::new("chaos-upstream-subscriber", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5))
        .set_clean_session(false);
    let (client, mut ev) = AsyncClient::new(o, 100);
    let (sub_tx, mut subbed) = watch::channel(false);
    let filter = filter.to_string();
    let task = tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = sub_tx.send(true);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) {
                        let mut l = ledger.lock().expect("ledger");
                        crate::sink::deliver_record(&mut l, "upstream", &v);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let _ = subbed.wait_for(|s| *s).await;
    task
}
