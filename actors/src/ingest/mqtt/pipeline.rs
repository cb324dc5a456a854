//! From a received PUBLISH to its PUBACK: submit through the router (or, refused, to the WAL's
//! rejected table), wait for the commit, acknowledge — in arrival order.
//!
//! Invariants:
//! - A message is acknowledged only after the commit that holds it (as records, or as a
//!   rejected entry) returned. Anything else — WAL full or restarting — leaves
//!   it un-acknowledged and retried from memory; the memory is bounded by the un-acked
//!   permits (`mqtt.max_unacked`), and past that the broker holds the rest.
//! - PUBACKs leave in the order the PUBLISHes arrived (MQTT 3.1.1, 4.6.0-2): one task
//!   settles items strictly in order.
//! - Commits keep arrival order across a refusal: once a message has to be retried (refused
//!   at hand-over, e.g. the WAL restarting, or at commit, e.g. WAL full or restarting),
//!   `holding` is set and later arrivals are not submitted by the actor but `Held` for the ack
//!   task, which submits them one by one behind the retried one; `holding` clears when the
//!   ack task's queue is empty. A WAL restart sets `holding` too, when the actor next hands a
//!   message over (`Ctx::wal_restarted`): what the failed instance held unanswered is retried
//!   first. (Messages already handed over when a *commit* is refused for a full WAL can still
//!   commit ahead of it if the WAL frees space in between — a window of one group commit.)
//! - A device over its WAL share (`wal/quota.rs`) is held alone (`held.rs`): its messages
//!   wait, in order, and are retried; every other device's PUBACKs keep leaving. PUBACKs
//!   then leave out of arrival order *across* devices, never within one (the order MQTT
//!   promises is per topic; mosquitto matches PUBACKs by packet id).

use super::held::{HeldQueues, Hold};
use super::topics::Subscriptions;
use crate::addr::Addr;
use crate::ingest::parse::{Encoding, RefusalKind, Rejection};
use crate::ingest::router::{IngestRequest, Router};
use crate::metrics::Metrics;
use crate::traces::IngestSpan;
use crate::wal::{AppendError, AppendReply, Rejected, Source, WalMsg};
use rumqttc::{AsyncClient, Publish};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// What the pipeline needs, shared by the actor (first submit) and the ack task (retries).
#[derive(Clone)]
pub struct Ctx {
    pub router: Router,
    pub wal: Addr<WalMsg>,
    pub subs: Arc<Subscriptions>,
    pub max_payload: usize,
    pub metrics: Arc<Metrics>,
    /// Set while a message waits for a retry: later ones queue behind it (see above).
    pub holding: Arc<std::sync::atomic::AtomicBool>,
    /// Devices whose messages are held (mirror of the ack task's `HeldQueues`): the actor
    /// holds their later messages too instead of submitting them, so per-device order holds.
    pub held_devices: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// `mqtt.max_held_per_device`.
    pub max_held_per_device: usize,
    /// The WAL instance (`Addr::generation`) the actor last handed a message to.
    pub wal_generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Ctx {
    /// Whether the WAL was replaced since the actor last handed a message over. Messages
    /// handed to the instance that died may never commit; the ack task retries them in
    /// arrival order, so a later message must not go to the new instance ahead of them: this
    /// sets `holding`, and the caller holds the message behind them (found by a chaos
    /// campaign, seed 2038: a WAL failure, then a device's reading 4102 stored before its
    /// 4100 and 4101, which had been handed to the failed instance).
    pub fn wal_restarted(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.wal.generation();
        if self.wal_generation.swap(now, SeqCst) == now {
            return false;
        }
        self.holding.store(true, SeqCst);
        true
    }

    pub fn is_held(&self, device: Option<&str>) -> bool {
        device.is_some_and(|d| self.held_devices.lock().expect("held lock").contains(d))
    }
}

/// One received message on its way to its PUBACK.
pub struct Item {
    pub publish: Publish,
    /// From the topic; `None` if it names no device (refused, never quota-held).
    pub device: Option<String>,
    /// Held until the PUBACK is queued: bounds messages and bytes in memory.
    pub permit: super::poll::Unacked,
    pub received_ms: u64,
    pub pending: Pending,
}

pub enum Pending {
    Append(oneshot::Receiver<AppendReply>),
    Reject(oneshot::Receiver<Result<u64, AppendError>>, Rejection),
    /// Not handed over (WAL not running, WAL full): submit again.
    Retry(String),
    /// Not submitted yet: it arrived behind a message that is being retried.
    Held,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Hands one message to the WAL through the router; a refused one goes to the WAL's rejected table. A
/// message that could not be handed over sets `holding` at once, so the actor holds the ones
/// after it (the ack task may be busy with earlier commits for a while before it gets here).
pub async fn submit(ctx: &Ctx, p: &Publish, received_ms: u64) -> Pending {
    let pending = try_submit(ctx, p, received_ms).await;
    if matches!(pending, Pending::Retry(_)) {
        ctx.holding.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    pending
}

async fn try_submit(ctx: &Ctx, p: &Publish, received_ms: u64) -> Pending {
    let refused = match route(ctx, p) {
        Err(r) => r,
        Ok((device_id, encoding)) => {
            // The span covers receipt to hand-over; the commit is waited for by the ack task
            // (`wal.commit` links back to it).
            let span = IngestSpan::mqtt(&p.topic, Some(&device_id));
            let req = IngestRequest {
                device_id,
                source: Source::Mqtt,
                body: p.payload.clone(),
                encoding,
                idempotency_key: None,
                trace: span.record_context(),
            };
            let submitted = {
                let _decode = span.step("decode");
                ctx.router.submit(req)
            };
            match &submitted {
                Ok(_) => span.finish(0, None),
                Err(rej) => span.finish(0, Some(rej.code)),
            }
            match submitted {
                Ok(pending) => return Pending::Append(pending.commit),
                Err(rej) if rej.kind == RefusalKind::Unavailable => {
                    return Pending::Retry(rej.message)
                }
                Err(rej) => rej,
            }
        }
    };
    reject(ctx, p, received_ms, refused)
}

/// Keeps a refused message in the WAL's rejected table (raw payload and reason).
fn reject(ctx: &Ctx, p: &Publish, received_ms: u64, refused: Rejection) -> Pending {
    let mut refused = refused;
    if refused.field.as_deref() == Some("body") {
        refused.field = Some("payload".into()); // MQTT has payloads, not bodies
    }
    let entry = Rejected::new(
        received_ms,
        Source::Mqtt,
        p.topic.clone(),
        refused.code,
        refused.field.clone(),
        refused.message.clone(),
        &p.payload,
    );
    let (tx, rx) = oneshot::channel();
    match ctx.wal.cast(WalMsg::Reject {
        entry,
        reply: tx.into(),
    }) {
        Ok(()) => Pending::Reject(rx, refused),
        Err(e) => Pending::Retry(e.to_string()),
    }
}

fn route(ctx: &Ctx, p: &Publish) -> Result<(String, Option<Encoding>), Rejection> {
    let routed = ctx.subs.route(&p.topic)?;
    if p.payload.len() > ctx.max_payload {
        return Err(Rejection::new(
            413,
            "payload_too_large",
            Some("payload".into()),
            format!(
                "payload is {} bytes; mqtt.max_payload_bytes is {}",
                p.payload.len(),
                ctx.max_payload
            ),
        ));
    }
    Ok(routed)
}

/// How waiting for an item's commit ended.
enum Settled {
    Durable,
    /// Its device is over its WAL share: hold it (and its device's later messages).
    DeviceQuota(String),
}

/// Waits for the item's commit, re-submitting until it holds — unless its device is over
/// its share, which is for the caller to hold.
async fn settle(ctx: &Ctx, item: &mut Item) -> Settled {
    let mut delay = Duration::from_millis(50);
    let mut attempts = 0u32;
    loop {
        let pending = std::mem::replace(&mut item.pending, Pending::Retry(String::new()));
        let why = match pending {
            Pending::Append(rx) => match rx.await {
                Ok(Ok(outcomes)) => {
                    let device = ctx
                        .subs
                        .route(&item.publish.topic)
                        .map(|(d, _)| d)
                        .unwrap_or_default();
                    ctx.metrics.count_appended("mqtt", &device, &outcomes);
                    return Settled::Durable;
                }
                Ok(Err(AppendError::DeviceQuota(q))) => return Settled::DeviceQuota(q.to_string()),
                Ok(Err(AppendError::Full(f))) => f.to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "WAL stopped before the commit".to_string(),
            },
            Pending::Reject(rx, refused) => match rx.await {
                Ok(Ok(id)) => {
                    ctx.metrics
                        .ingest_records
                        .with_label_values(&["mqtt", "rejected"])
                        .inc();
                    ctx.metrics
                        .ingest_rejections
                        .with_label_values(&["mqtt", refused.code])
                        .inc();
                    if let Ok((device, _)) = ctx.subs.route(&item.publish.topic) {
                        ctx.metrics.devices.refused(&device, refused.code, now_ms());
                    }
                    tracing::warn!(
                        topic = %item.publish.topic,
                        code = refused.code,
                        field = refused.field.as_deref().unwrap_or(""),
                        reason = %refused.message,
                        rejected_id = id,
                        "mqtt message refused; kept in the rejected table and acknowledged"
                    );
                    return Settled::Durable;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "WAL stopped before the commit".to_string(),
            },
            Pending::Retry(why) => why,
            Pending::Held => {
                item.pending = submit(ctx, &item.publish, item.received_ms).await;
                continue;
            }
        };
        ctx.holding.store(true, std::sync::atomic::Ordering::SeqCst);
        attempts += 1;
        if attempts == 1 || attempts.is_multiple_of(20) {
            tracing::warn!(
                topic = %item.publish.topic,
                attempts,
                reason = %why,
                "mqtt message not yet durable; holding its PUBACK and retrying"
            );
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
        item.pending = submit(ctx, &item.publish, item.received_ms).await;
    }
}

/// One attempt for a held item: durable, or why not (it stays held).
async fn retry_held(ctx: &Ctx, item: &mut Item) -> Result<(), String> {
    if matches!(item.pending, Pending::Held | Pending::Retry(_)) {
        item.pending = try_submit(ctx, &item.publish, item.received_ms).await;
    }
    match std::mem::replace(&mut item.pending, Pending::Held) {
        Pending::Append(rx) => match rx.await {
            Ok(Ok(outcomes)) => {
                let device = item.device.as_deref().unwrap_or_default();
                ctx.metrics.count_appended("mqtt", device, &outcomes);
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("WAL stopped before the commit".into()),
        },
        other => {
            // Refused on the way in (it was accepted before, so only by a restarting WAL):
            // settle as any message.
            item.pending = other;
            match settle(ctx, item).await {
                Settled::Durable => Ok(()),
                Settled::DeviceQuota(why) => Err(why),
            }
        }
    }
}

/// A held device's message past `max_held_per_device`: kept with its payload and the reason
/// in the rejected table, so it can be acknowledged without filling the broker's window.
async fn dead_letter_over_quota(ctx: &Ctx, item: &mut Item, why: &str) {
    loop {
        let refusal = Rejection::over_quota(format!(
            "more than mqtt.max_held_per_device ({}) messages of this device held: {why}",
            ctx.max_held_per_device
        ));
        item.pending = reject(ctx, &item.publish, item.received_ms, refusal);
        if let Settled::Durable = settle(ctx, item).await {
            return;
        }
    }
}

/// Queues the PUBACK of a durable item; false once the client is gone.
async fn ack(ctx: &Ctx, client: &AsyncClient, item: Item) -> bool {
    // May wait for room in rumqttc's request channel; the event loop never waits on us, so
    // it drains.
    if client.ack(&item.publish).await.is_err() {
        return false;
    }
    ctx.metrics.mqtt_unacked.dec();
    drop(item.permit);
    true
}

fn mirror(ctx: &Ctx, held: &HeldQueues<Item>) {
    let mut set = ctx.held_devices.lock().expect("held lock");
    set.clear();
    set.extend(held.devices());
    ctx.metrics.mqtt_held.set(held.held() as i64);
}

/// The ack task: settles items in arrival order (per device when one is held) and queues
/// each PUBACK. Ends when the channel closes (the session stopped) or the client is gone.
pub async fn ack_in_order(ctx: Ctx, mut items: mpsc::UnboundedReceiver<Item>, client: AsyncClient) {
    let mut held = HeldQueues::new(ctx.max_held_per_device);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick(), if !held.is_empty() => {
                for device in held.devices() {
                    while let Some(mut item) = held.pop_front(&device) {
                        if retry_held(&ctx, &mut item).await.is_err() {
                            held.hold_front(&device, item);
                            break;
                        }
                        if !ack(&ctx, &client, item).await {
                            return;
                        }
                    }
                }
                mirror(&ctx, &held);
            }
            next = items.recv() => {
                let Some(mut item) = next else { return };
                let device = item.device.clone().unwrap_or_default();
                if held.is_held(&device) {
                    if let Hold::Overflow(mut item) = held.hold(&device, item) {
                        dead_letter_over_quota(&ctx, &mut item, "device over its WAL share").await;
                        if !ack(&ctx, &client, item).await {
                            return;
                        }
                    }
                } else {
                    match settle(&ctx, &mut item).await {
                        Settled::Durable => {
                            if !ack(&ctx, &client, item).await {
                                return;
                            }
                        }
                        Settled::DeviceQuota(why) => {
                            tracing::warn!(
                                device_id = %device,
                                reason = %why,
                                "device over its WAL share: holding its PUBACKs (other devices unaffected)"
                            );
                            item.pending = Pending::Held;
                            let _ = held.hold(&device, item);
                            mirror(&ctx, &held);
                        }
                    }
                }
                if items.is_empty() {
                    ctx.holding
                        .store(false, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    }
}
