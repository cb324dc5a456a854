//! Hostile clients for the `abuse` scenario (issue 8): they run beside the honest devices,
//! whose readings the ledger tracks; the oracle must still find 0 of those lost.
//!
//! Abusers use device ids starting with [`ABUSER`] (the ledger ignores their deliveries)
//! and connect from loopback addresses other than 127.0.0.1 (so per-peer limits tell them
//! from the honest devices, as separate hosts on a LAN would be). What each attack saw is
//! counted in [`Outcomes`] for the report.

use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Device ids of abusers start with this; the ledger does not track them.
pub const ABUSER: &str = "abuser-";

/// One attack, run for `secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attack {
    /// Connections that never send a byte, from several addresses.
    IdleSockets,
    /// Requests whose announced body trickles in a byte a second.
    SlowBodies,
    /// One device posting large batches as fast as it is answered.
    FloodingDevice,
    /// Idempotency keys and msg_ids naming honest devices' readings.
    CollidingKeys,
}

impl Attack {
    pub const ALL: [Attack; 4] = [
        Attack::IdleSockets,
        Attack::SlowBodies,
        Attack::FloodingDevice,
        Attack::CollidingKeys,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attack::IdleSockets => "idle_sockets",
            Attack::SlowBodies => "slow_bodies",
            Attack::FloodingDevice => "flooding_device",
            Attack::CollidingKeys => "colliding_keys",
        }
    }

    /// Longest the attack runs past its scheduled duration (slow bodies wait for their 408).
    pub fn overrun(self) -> Duration {
        match self {
            Attack::SlowBodies => Duration::from_secs(30),
            _ => Duration::ZERO,
        }
    }
}

/// What the attacks saw, by `attack/outcome` (e.g. `flooding_device/429`).
#[derive(Clone, Default)]
pub struct Outcomes(Arc<Mutex<BTreeMap<String, u64>>>);

impl Outcomes {
    fn count(&self, attack: Attack, outcome: impl std::fmt::Display) {
        *self
            .0
            .lock()
            .expect("outcomes")
            .entry(format!("{}/{outcome}", attack.name()))
            .or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().expect("outcomes").clone()
    }
}

/// Where the gateway listens and its fleet token.
#[derive(Clone)]
pub struct Target {
    pub http: SocketAddr,
    pub token: String,
}

async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(format!("{from}:0").parse().expect("loopback address"))?;
    s.connect(to).await
}

/// Runs `attack` for `secs` (it stops by itself).
pub async fn run(attack: Attack, secs: f64, t: Target, out: Outcomes) {
    let until = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
    match attack {
        Attack::IdleSockets => idle_sockets(until, &t, &out).await,
        Attack::SlowBodies => slow_bodies(until, &t, &out).await,
        Attack::FloodingDevice => flooding_device(until, &t, &out).await,
        Attack::CollidingKeys => colliding_keys(until, &t, &out).await,
    }
}

/// 4 addresses × 100 silent sockets: each is refused at accept (per-peer cap) or closed by
/// the header timeout; counts which.
async fn idle_sockets(until: tokio::time::Instant, t: &Target, out: &Outcomes) {
    let mut held = Vec::new();
    for host in 1..=4 {
        for _ in 0..100 {
            match connect_from(&format!("127.0.2.{host}"), t.http).await {
                Ok(s) => held.push(s),
                Err(_) => out.count(Attack::IdleSockets, "connect_failed"),
            }
        }
    }
    let opened = tokio::time::Instant::now();
    let waits = held.into_iter().map(|mut s| async move {
        let mut b = [0u8; 64];
        let closed = tokio::time::timeout_at(until, s.read(&mut b)).await;
        (closed, opened.elapsed())
    });
    for (closed, after) in futures::future::join_all(waits).await {
        match closed {
            Ok(_) if after < Duration::from_millis(500) => {
                out.count(Attack::IdleSockets, "closed_at_once")
            }
            Ok(_) => out.count(Attack::IdleSockets, "closed_by_timeout"),
            Err(_) => out.count(Attack::IdleSockets, "still_open"),
        }
    }
}

/// 20 requests announcing 1,000 bytes and sending one a second, until the gateway answers
/// (408 at `http.request_timeout_ms`) or 30 s pass, whatever the attack's own duration.
async fn slow_bodies(_until: tokio::time::Instant, t: &Target, out: &Outcomes) {
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    let tasks = (0..20).map(|i| {
        let t = t.clone();
        async move {
            let Ok(mut s) = connect_from(&format!("127.0.3.{}", 1 + i % 4), t.http).await else {
                return "connect_failed".to_string();
            };
            let head = format!(
                "POST /ingest/{ABUSER}slow-{i} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
                 content-type: application/json\r\ncontent-length: 1000\r\n\r\n",
                t.token
            );
            if s.write_all(head.as_bytes()).await.is_err() {
                return "write_failed".into();
            }
            let mut reply = Vec::new();
            loop {
                let mut b = [0u8; 512];
                tokio::select! {
                    r = s.read(&mut b) => match r {
                        Ok(0) | Err(_) => break,
                        Ok(n) => reply.extend_from_slice(&b[..n]),
                    },
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if tokio::time::Instant::now() > until || s.write_all(b" ").await.is_err() {
                            break;
                        }
                    }
                }
            }
            let text = String::from_utf8_lossy(&reply);
            text.split_whitespace()
                .nth(1)
                .unwrap_or("no_answer")
                .to_string()
        }
    });
    for status in futures::future::join_all(tasks).await {
        out.count(Attack::SlowBodies, status);
    }
}

/// Batches of 200 readings as fast as they are answered; 429 means its share is spent.
async fn flooding_device(until: tokio::time::Instant, t: &Target, out: &Outcomes) {
    let c = reqwest::Client::new();
    let url = format!("http://{}/ingest/{ABUSER}flooder", t.http);
    let mut seq = 0u64;
    while tokio::time::Instant::now() < until {
        let batch: Vec<_> = (0..200)
            .map(|i| serde_json::json!({"seq": seq + i, "junk": "x".repeat(200)}))
            .collect();
        seq += 200;
        match c.post(&url).bearer_auth(&t.token).json(&batch).send().await {
            Ok(r) => {
                let s = r.status().as_u16();
                out.count(Attack::FloodingDevice, s);
                if s == 429 || s == 503 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(_) => out.count(Attack::FloodingDevice, "error"),
        }
    }
}

/// Keys and msg_ids copied from the honest devices' (`http-N/seq/S`, `stm32-N/seq/S`), sent
/// for the abuser's own device id, ahead of and behind what the honest devices send.
async fn colliding_keys(until: tokio::time::Instant, t: &Target, out: &Outcomes) {
    let c = reqwest::Client::new();
    let url = format!("http://{}/ingest/{ABUSER}intruder", t.http);
    let mut n = 0u64;
    while tokio::time::Instant::now() < until {
        let victim = ["http-0", "http-1", "stm32-0"][(n % 3) as usize];
        let seq = n / 3;
        let key = crate::key(victim, seq);
        let r = c
            .post(&url)
            .bearer_auth(&t.token)
            .header("idempotency-key", &key)
            .json(&serde_json::json!({"msg_id": key, "seq": seq, "value": -1.0}))
            .send()
            .await;
        out.count(
            Attack::CollidingKeys,
            r.map_or("error".into(), |r| r.status().as_u16().to_string()),
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
