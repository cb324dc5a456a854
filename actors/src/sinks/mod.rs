//! `Publisher` actor: delivers leased batches to one configured sink.
//!
//! Mailbox:
//! - `Publish` <- Dispatcher (reply: `Delivered`, `Transient(reason)` or `Permanent(reason)`
//!   for the whole batch)
//! - `Resume`  <- Dispatcher (cast: send again after a failure; see below)
//! - `Fail`    <- admin API chaos hook
//! - `Done`    <- the MQTT sink's own task (a batch's answer, in batch order)
//!
//! One batch at a time per sink — except MQTT, whose task streams the next batch while the
//! last PUBACKs of one are out (`mqtt/pipeline.rs`; it keeps the rules below itself): a slow
//! or hanging sink holds only its own publisher (and its per-request timeout bounds that),
//! never ingest or another sink. After a batch fails,
//! the publisher answers `NotSent` to every batch until the dispatcher sends `Resume`: batches
//! queued behind a failed one would otherwise overtake it and break per-device order of first
//! delivery. The dispatcher sends `Resume` just before the first batch leased after the
//! failure, so the mailbox order decides which batches are held back.
//!
//! Failure: the SinksSupervisor restarts the publisher alone. The dispatcher's call fails
//! at once (reply port dropped), the batch counts as a transient failure, and its records
//! return to Enqueued in the WAL.

pub mod file;
pub mod health;
pub mod http;
pub mod json;
pub mod kafka;
pub mod mqtt;
pub mod resent;
pub mod s3;
pub mod utc;

use crate::addr::{Addr, Failable};
use crate::metrics::Metrics;
use crate::traces::PublishSpans;
use crate::wal::Leased;
use edge_gateway_config::SinkConfig;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::path::PathBuf;
use std::sync::Arc;

/// How a batch went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishResult {
    Delivered,
    /// Failed in a way that may blame the batch (a request that broke part way, a publisher
    /// that crashed or stopped answering while holding it): retried, and the attempt counts.
    Transient(String),
    /// Will fail again: other 4xx. A single record is dead-lettered with this reason; a batch
    /// is split until the refused record is alone (the lane bisects).
    Permanent(String),
    /// Too big as a whole (413/414/431, over the sink's `max_batch_bytes`): split; a single
    /// record still too big is dead-lettered with this reason, which names the size.
    TooBig(String),
    /// Held back behind a failed batch; never sent.
    NotSent,
    /// The sink is not taking anything — unreachable, timing out, answering 408/429/5xx (a
    /// load balancer with nothing behind it), redirecting, or answered by something that is
    /// not the API (an HTML page with a 2xx: a captive portal). Nothing blames the records, so
    /// no attempt is used up: the sink backs off (at least `retry_after_ms` when the sink said
    /// so) and the records wait in the WAL (until `wal.max_age_secs`) however long it lasts.
    Outage {
        reason: String,
        retry_after_ms: Option<u64>,
    },
}

impl PublishResult {
    pub fn outage(reason: impl Into<String>) -> Self {
        PublishResult::Outage {
            reason: reason.into(),
            retry_after_ms: None,
        }
    }
}

pub enum PublisherMsg {
    Publish {
        batch: Vec<Leased>,
        reply: RpcReplyPort<PublishResult>,
    },
    Resume,
    Fail(String),
    /// The MQTT sink's task answered a batch.
    Done(mqtt::Done),
}

impl Failable for PublisherMsg {
    fn fail(reason: String) -> Self {
        PublisherMsg::Fail(reason)
    }
}

pub struct Publisher;

/// Whether a publisher for `sink` would start with the files on disk now, without starting
/// it (a reload checks new certificates before restarting anything). A file sink is not
/// checked (it has no credentials). Kafka builds its client, which connects in the background.
pub fn check_files(sink: &SinkConfig, gateway_id: &str) -> Result<(), String> {
    match sink {
        SinkConfig::File(_) => Ok(()),
        SinkConfig::Http(c) => http::HttpSink::new(c, gateway_id).map(drop),
        SinkConfig::Mqtt(c) => mqtt::MqttSink::check(c, gateway_id),
        SinkConfig::Kafka(c) => kafka::KafkaSink::new(c, gateway_id).map(drop),
        SinkConfig::S3(_) => files_of(sink).iter().try_for_each(|f| {
            std::fs::read(f)
                .map(drop)
                .map_err(|e| format!("{}: {e}", f.display()))
        }),
    }
}

/// Every file a configuration names (keys ending in `_file`), read from its serialised form so
/// no kind's file is forgotten.
pub fn files_of(v: &impl serde::Serialize) -> Vec<std::path::PathBuf> {
    fn walk(v: &serde_json::Value, out: &mut Vec<std::path::PathBuf>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match v {
                        serde_json::Value::String(s) if k.ends_with("_file") => out.push(s.into()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&serde_json::to_value(v).unwrap_or_default(), &mut out);
    out
}

pub struct PublisherArgs {
    pub sink: SinkConfig,
    pub gateway_id: String,
    pub data_dir: PathBuf,
    /// `delivery.batch_size`: the most records one `Publish` carries.
    pub batch_size: usize,
    pub metrics: Arc<Metrics>,
    /// Outlives the actor: an outage spans publisher restarts.
    pub health: health::SinkHealth,
    pub addr: Addr<PublisherMsg>,
}

enum SinkImpl {
    File(file::FileSink),
    Http(http::HttpSink),
    Mqtt(mqtt::MqttPipe),
    S3(Box<s3::S3Sink>),
    Kafka(Box<kafka::KafkaSink>),
}

impl SinkImpl {
    /// Whether the last publish may have reached the sink (conservative: yes unless the
    /// sink knows nothing left).
    fn last_sent_any(&self) -> bool {
        match self {
            SinkImpl::Http(s) => s.last_sent_any(),
            SinkImpl::File(_) | SinkImpl::Mqtt(_) | SinkImpl::S3(_) | SinkImpl::Kafka(_) => true,
        }
    }

    /// `messaging.system` of its spans.
    fn system(&self) -> &'static str {
        match self {
            SinkImpl::File(_) => "file",
            SinkImpl::Http(_) => "http",
            SinkImpl::Mqtt(_) => "mqtt",
            SinkImpl::S3(_) => "s3",
            SinkImpl::Kafka(_) => "kafka",
        }
    }
}

pub struct PublisherState {
    name: String,
    sink: SinkImpl,
    metrics: Arc<Metrics>,
    health: health::SinkHealth,
    addr: Addr<PublisherMsg>,
    /// A batch failed and no `Resume` came since (the MQTT task keeps its own).
    holding: bool,
    resent: resent::Resent,
    /// Batches handed to the MQTT task, oldest first, with their tickets.
    jobs: std::collections::VecDeque<(u64, Job)>,
    next_ticket: u64,
}

/// A batch being published: what its answer needs.
struct Job {
    reply: RpcReplyPort<PublishResult>,
    spans: PublishSpans,
    seqs: Vec<u64>,
    records: usize,
    started: tokio::time::Instant,
}

impl Job {
    fn start(
        name: &str,
        system: &'static str,
        batch: &mut [Leased],
        reply: RpcReplyPort<PublishResult>,
    ) -> Job {
        Job {
            spans: PublishSpans::start(name, system, batch),
            seqs: batch.iter().map(|l| l.seq).collect(),
            records: batch.len(),
            started: tokio::time::Instant::now(),
            reply,
        }
    }
}

impl Actor for Publisher {
    type Msg = PublisherMsg;
    type State = PublisherState;
    type Arguments = PublisherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: PublisherArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let sink = match &args.sink {
            SinkConfig::File(c) => SinkImpl::File(file::FileSink::open(c, &args.data_dir).await?),
            SinkConfig::Http(c) => SinkImpl::Http(http::HttpSink::new(c, &args.gateway_id)?),
            SinkConfig::Mqtt(c) => {
                let sink = mqtt::MqttSink::new(c, &args.gateway_id, args.batch_size)?;
                let addr = args.addr.clone();
                SinkImpl::Mqtt(mqtt::MqttPipe::start(sink, move |done| {
                    addr.note_sent();
                    let _ = myself.cast(PublisherMsg::Done(done));
                }))
            }
            SinkConfig::S3(c) => {
                SinkImpl::S3(Box::new(s3::S3Sink::new(c, &args.gateway_id).await?))
            }
            SinkConfig::Kafka(c) => {
                SinkImpl::Kafka(Box::new(kafka::KafkaSink::new(c, &args.gateway_id)?))
            }
        };
        args.health.register(args.sink.name(), &args.metrics);
        Ok(PublisherState {
            name: args.sink.name().to_string(),
            sink,
            metrics: args.metrics,
            health: args.health,
            addr: args.addr,
            // A fresh instance holds until the dispatcher's first `Resume`: a batch forwarded
            // to it before the dispatcher saw its predecessor fail must not overtake.
            holding: true,
            resent: resent::Resent::default(),
            jobs: Default::default(),
            next_ticket: 0,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.addr.received();
        match msg {
            PublisherMsg::Resume => {
                state.holding = false;
                if let SinkImpl::Mqtt(p) = &state.sink {
                    p.send(mqtt::Cmd::Resume);
                }
                Ok(())
            }
            PublisherMsg::Publish { mut batch, reply }
                if matches!(state.sink, SinkImpl::Mqtt(_)) =>
            {
                // The MQTT task answers in turn, holding after a failure itself.
                let job = Job::start(&state.name, "mqtt", &mut batch, reply);
                let ticket = state.next_ticket;
                let submitted = match &state.sink {
                    SinkImpl::Mqtt(p) => p.send(mqtt::Cmd::Submit { ticket, batch }),
                    _ => false,
                };
                if !submitted {
                    return Err("the MQTT sink's task is gone".into());
                }
                state.next_ticket += 1;
                state.jobs.push_back((ticket, job));
                Ok(())
            }
            PublisherMsg::Publish { reply, .. } if state.holding => {
                let _ = reply.send(PublishResult::NotSent);
                Ok(())
            }
            PublisherMsg::Publish { mut batch, reply } => {
                let job = Job::start(&state.name, state.sink.system(), &mut batch, reply);
                let result = match &mut state.sink {
                    SinkImpl::File(s) => s.publish(&batch).await,
                    SinkImpl::Http(s) => s.publish(&batch).await,
                    // Moved, not copied: an object's batch is large, and built off the runtime.
                    SinkImpl::S3(s) => s.publish(batch).await,
                    SinkImpl::Kafka(s) => s.publish(&batch).await,
                    SinkImpl::Mqtt(_) => unreachable!("its own task publishes"),
                };
                state.holding = !matches!(result, PublishResult::Delivered);
                let sent_any = state.sink.last_sent_any();
                conclude(state, job, result, sent_any);
                Ok(())
            }
            PublisherMsg::Done(done) => {
                match state.jobs.pop_front() {
                    Some((ticket, job)) if ticket == done.ticket => {
                        conclude(state, job, done.result, done.sent_any)
                    }
                    other => {
                        return Err(format!(
                            "the MQTT task answered batch {} out of turn (expected {:?})",
                            done.ticket,
                            other.map(|(t, _)| t)
                        )
                        .into())
                    }
                }
                Ok(())
            }
            PublisherMsg::Fail(reason) => Err(format!("failure injected: {reason}").into()),
        }
    }
}

/// A batch's answer: counted, observed for the sink's health and the `resent` bound, logged
/// if it failed, its spans ended, and sent back to the dispatcher.
fn conclude(state: &mut PublisherState, job: Job, result: PublishResult, sent_any: bool) {
    let label = match &result {
        PublishResult::Delivered => "delivered",
        PublishResult::NotSent => "not_sent",
        PublishResult::Outage { .. } => "outage",
        PublishResult::TooBig(_) => "too_big",
        PublishResult::Transient(_) => "transient_error",
        PublishResult::Permanent(_) => "permanent_error",
    };
    let m = &state.metrics;
    m.publish_results
        .with_label_values(&[&state.name, label])
        .inc();
    if result != PublishResult::NotSent {
        m.publish_seconds
            .with_label_values(&[&state.name])
            .observe(job.started.elapsed().as_secs_f64());
    }
    state.health.observe(&state.name, &result, m);
    if matches!(result, PublishResult::Outage { .. }) {
        state
            .health
            .note_trace(&state.name, job.spans.first_trace_id());
    }
    let resent = state.resent.observe(&job.seqs, &result, sent_any);
    if resent > 0 {
        m.publish_resent
            .with_label_values(&[&state.name])
            .inc_by(resent);
    }
    if !matches!(result, PublishResult::Delivered | PublishResult::NotSent) {
        // The first kept record's trace leads from this line to the attempt's spans.
        let trace_id = job.spans.first_trace_id();
        let records = job.records;
        tracing::warn!(sink = %state.name, records, result = ?result, trace_id, "publish failed");
    }
    job.spans.finish(&result, job.records);
    let _ = job.reply.send(result);
}
