//! Control traffic during a campaign (issue 12): an operator sends device commands and
//! configuration changes through the admin API while the faults run; each MQTT device has a
//! command listener (a persistent session on its commands topic that acknowledges what it
//! gets). The oracle: every command the gateway accepted is delivered to its device at least
//! once or expires — never lost silently — and one that expired unpublished never arrives.
//!
//! The operator retries a request the gateway did not answer (killed, restarting) with the
//! same `command_id`, as a backend would: the gateway acts once per id.

use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the operator and the devices saw.
#[derive(Default)]
pub struct CommandLedger {
    /// command_id -> device, for every command the gateway accepted (202/200).
    accepted: BTreeMap<String, String>,
    /// command_id -> times its device received it.
    received: HashMap<String, u32>,
    /// Requests never answered within the operator's patience (not accepted: not judged).
    unanswered: u64,
    configs_applied: u64,
    configs_refused: u64,
}

/// The control part of a campaign's report.
#[derive(Debug, Default, Serialize)]
pub struct CommandReport {
    pub accepted: usize,
    pub acknowledged: usize,
    pub expired: usize,
    /// Accepted, and neither delivered nor expired when the campaign ended.
    pub lost: usize,
    pub delivered_more_than_once: usize,
    pub unanswered_requests: u64,
    pub configs_applied: u64,
    pub configs_refused: u64,
    pub violations: Vec<String>,
}

pub type Shared = Arc<Mutex<CommandLedger>>;

/// Configuration the campaign's gateway needs for device commands.
pub const GATEWAY_CONFIG: &str = "[control]\nlink = true\ndefault_ttl_secs = 30\n";

/// A device's command listener until `stop`.
pub async fn listener(id: String, port: u16, ledger: Shared, stop: Arc<AtomicBool>) {
    let mut o = MqttOptions::new(format!("chaos-cmd-{id}"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5))
        .set_clean_session(false);
    let (client, mut ev) = AsyncClient::new(o, 100);
    let topic = format!("devices/{id}/commands");
    while !stop.load(Ordering::Relaxed) {
        let polled = tokio::time::timeout(Duration::from_millis(500), ev.poll()).await;
        match polled {
            Err(_) => {}
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                let _ = client.try_subscribe(&topic, QoS::AtLeastOnce);
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                if let Some(cid) = v["command_id"].as_str() {
                    *ledger
                        .lock()
                        .expect("ledger")
                        .received
                        .entry(cid.to_string())
                        .or_default() += 1;
                    let ack = json!({"command_id": cid, "status": "done"});
                    let _ = client.try_publish(
                        format!("{topic}/ack"),
                        QoS::AtLeastOnce,
                        false,
                        serde_json::to_vec(&ack).expect("json"),
                    );
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Posts one command until the gateway answers it (or 20 s pass); its answer.
async fn send(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
) -> Option<(u16, Value)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(r) = http
            .post(url)
            .bearer_auth(token)
            .json(body)
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            let s = r.status().as_u16();
            if s != 503 {
                return Some((s, r.json().await.unwrap_or(Value::Null)));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// The operator until `stop`: a device command every ~0.7 s (ttl 3-30 s), a configuration
/// change (the dispatcher's batch size, which restarts the dispatcher) every ~7 s.
pub async fn operator(
    admin: String,
    token: String,
    devices: Vec<String>,
    seed: u64,
    ledger: Shared,
    stop: Arc<AtomicBool>,
) {
    let http = reqwest::Client::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xC0117801);
    let url = format!("{admin}/admin/control");
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let body = if n.is_multiple_of(10) {
            let batch = if (n / 10).is_multiple_of(2) { 500 } else { 200 };
            json!({"command_id": format!("chaos-cfg-{n}"), "kind": "config.apply",
                   "change": {"delivery": {"batch_size": batch}}})
        } else {
            let device = &devices[rng.random_range(0..devices.len())];
            json!({"command_id": format!("chaos-cmd-{n}"), "kind": "device.command",
                   "device_id": device, "payload": {"set_interval_ms": rng.random_range(100..5000)},
                   "ttl_secs": rng.random_range(3..30)})
        };
        let answer = send(&http, &url, &token, &body).await;
        record(&ledger, answer, &body);
        tokio::time::sleep(Duration::from_millis(rng.random_range(400..1000))).await;
    }
}

fn record(ledger: &Shared, answer: Option<(u16, Value)>, body: &Value) {
    let mut l = ledger.lock().expect("ledger");
    {
        match (answer, body["kind"].as_str()) {
            (None, _) => l.unanswered += 1,
            (Some((s, v)), Some("device.command")) if s == 200 || s == 202 => {
                if v["state"] != "failed" {
                    l.accepted.insert(
                        v["command_id"].as_str().unwrap_or_default().to_string(),
                        body["device_id"].as_str().unwrap_or_default().to_string(),
                    );
                }
            }
            (Some((200, v)), Some("config.apply")) if v["state"] == "done" => {
                l.configs_applied += 1
            }
            (Some(_), _) => l.configs_refused += 1,
        }
    }
}

/// Waits (until `deadline`) for every accepted command to be acknowledged or expired, then
/// judges.
pub async fn verdict(
    admin: &str,
    token: &str,
    ledger: &Shared,
    deadline: Instant,
) -> CommandReport {
    let http = reqwest::Client::new();
    let accepted: Vec<(String, String)> = ledger
        .lock()
        .expect("ledger")
        .accepted
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut states: BTreeMap<String, Value> = BTreeMap::new();
    loop {
        for (id, _) in &accepted {
            let settled = states
                .get(id)
                .is_some_and(|r| r["state"] == "acknowledged" || r["state"] == "expired");
            if settled {
                continue;
            }
            if let Ok(r) = http
                .get(format!("{admin}/admin/control/{id}"))
                .bearer_auth(token)
                .send()
                .await
            {
                if let Ok(v) = r.json::<Value>().await {
                    states.insert(id.clone(), v);
                }
            }
        }
        let open = accepted
            .iter()
            .filter(|(id, _)| {
                !states
                    .get(id)
                    .is_some_and(|r| r["state"] == "acknowledged" || r["state"] == "expired")
            })
            .count();
        if open == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let l = ledger.lock().expect("ledger");
    let mut report = CommandReport {
        accepted: accepted.len(),
        unanswered_requests: l.unanswered,
        configs_applied: l.configs_applied,
        configs_refused: l.configs_refused,
        ..Default::default()
    };
    for (id, device) in &accepted {
        let got = l.received.get(id).copied().unwrap_or(0);
        if got > 1 {
            report.delivered_more_than_once += 1;
        }
        let state = states
            .get(id)
            .map(|r| r["state"].as_str().unwrap_or("?").to_string());
        match state.as_deref() {
            Some("acknowledged") => {
                report.acknowledged += 1;
                if got == 0 {
                    report
                        .violations
                        .push(format!("{id}: acknowledged but {device} never received it"));
                }
            }
            Some("expired") => {
                report.expired += 1;
                let unpublished = states[id]["result"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("never published"));
                if unpublished && got > 0 {
                    report.violations.push(format!(
                        "{id}: expired unpublished, yet {device} received it"
                    ));
                }
            }
            other => {
                report.lost += 1;
                report.violations.push(format!(
                    "{id} for {device}: neither delivered nor expired (state {other:?}, received {got}x)"
                ));
            }
        }
    }
    report
}
