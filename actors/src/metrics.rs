//! Prometheus metrics, in one injected registry (never the global one).
//!
//! Every metric is prefixed `edge_gateway_`. Label values are bounded sets: sink names
//! come from config, reasons are categories (see `wal::DeadClass`), never free text.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub struct Metrics {
    pub registry: Registry,
    /// The control plane's (issue 12).
    pub control: crate::control::metrics::ControlMetrics,
    /// Buffer SLOs and the process (issue 13).
    pub slo: crate::slo::SloMetrics,
    /// Certificate expiry (issue 13).
    pub certs: crate::certs::CertMetrics,
    /// Span export (issue 13): exported, dropped, failed.
    pub traces: crate::traces::TraceMetrics,
    /// Per-device health (`/admin/devices`) and its bounded aggregates.
    pub devices: crate::devices::DeviceBook,
    pub device_metrics: crate::devices::DeviceMetrics,
    /// Readings with a field outside its plausible range, by field (`admin.plausible`).
    pub implausible: IntCounterVec,
    /// Progress marks for liveness (`/healthz`), not exported.
    pub pulse: crate::liveness::Pulse,
    /// Readings by source (`http`, `mqtt`) and result (`accepted`, `duplicate`, `rejected`, `unavailable`).
    pub ingest_records: IntCounterVec,
    /// Requests refused for a reason, by `code` (`bad_request`, `unauthorized`, `wal_full`, …).
    pub ingest_rejections: IntCounterVec,
    pub duplicates: IntCounterVec,
    /// Readings stored although their key was taken by other content (device counter reset).
    pub key_conflicts: IntCounterVec,
    /// Open connections by listener (`ingest`, `admin`).
    pub connections_open: IntGaugeVec,
    /// Steps of the system clock of a minute or more seen by the WAL.
    pub clock_jumps: IntCounter,
    /// 1 while appends are refused because the WAL's filesystem is nearly full.
    pub wal_disk_full: IntGauge,
    /// Commits that met a full disk (ENOSPC) and reopened the store in place.
    pub wal_enospc: IntCounter,
    pub wal_compactions: IntCounter,
    pub wal_compacted_bytes: IntCounter,
    /// Connections closed at accept by listener and limit reached.
    pub connections_refused: IntCounterVec,
    /// Records by `state` (`enqueued`, `in_flight`, `dead`) and `sink`.
    pub wal_records: IntGaugeVec,
    /// Records (pending and dead) held for sinks the configuration lacks, by sink.
    pub wal_orphaned_records: IntGaugeVec,
    /// The same, for `/readyz`.
    pub orphaned_sinks: std::sync::Mutex<Vec<crate::wal::OrphanedSink>>,
    pub wal_acked: IntGaugeVec,
    pub wal_file_bytes: IntGauge,
    pub wal_live_bytes: IntGauge,
    pub wal_live_records: IntGauge,
    pub wal_history_bytes: IntGauge,
    pub wal_commit_seconds: Histogram,
    /// Operations folded into one commit (the group-commit factor).
    pub wal_commit_ops: Histogram,
    pub wal_commit_records: Histogram,
    pub backpressure_active: IntGauge,
    pub publish_results: IntCounterVec,
    /// Records delivered after an attempt that may have reached the sink failed: an upper
    /// bound on duplicates downstream (`sinks/resent.rs`).
    pub publish_resent: IntCounterVec,
    /// 1 while a sink is in an outage (its last answer blamed no record and was no delivery).
    pub sink_outage: IntGaugeVec,
    pub publish_seconds: HistogramVec,
    pub retries: IntCounterVec,
    pub dead_lettered: IntCounterVec,
    /// Dead letters deleted, by sink and why (`operator`, `budget`, `retention`).
    pub dead_letters_purged: IntCounterVec,
    pub actor_mailbox_depth: IntGaugeVec,
    pub actor_mailbox_depth_max: IntGaugeVec,
    pub actor_restarts: IntCounterVec,
    pub actor_up: IntGaugeVec,
    pub build_info: IntGaugeVec,
    pub wal_opens: IntCounter,
    /// 1 while the MQTT ingest session is connected and subscribed.
    pub mqtt_session_up: IntGauge,
    /// MQTT messages received and not yet acknowledged to the broker.
    pub mqtt_unacked: IntGauge,
    /// MQTT messages held because their device is over its WAL share.
    pub mqtt_held: IntGauge,
    /// Messages dropped unacknowledged past `mqtt.max_unacked` (the broker redelivers them).
    pub mqtt_shed: IntCounter,
    /// Failed MQTT connections, by client (`ingest` or the sink's name).
    pub mqtt_connection_errors: IntCounterVec,
}

impl Metrics {
    /// Counts what one commit did with a request's readings (after the fact: these are the
    /// WAL's answers). Both ingest edges call it, so HTTP and MQTT count alike.
    pub fn count_appended(
        &self,
        source: &str,
        device: &str,
        outcomes: &[crate::wal::AppendOutcome],
    ) {
        use crate::wal::AppendOutcome;
        let (mut dups, mut conflicts) = (0u64, 0u64);
        for o in outcomes {
            match o {
                AppendOutcome::Duplicate { .. } => dups += 1,
                AppendOutcome::Stored { key_conflict, .. } => conflicts += u64::from(*key_conflict),
            }
        }
        let total = outcomes.len() as u64;
        self.devices.stored(device, total - dups, dups);
        self.ingest_records
            .with_label_values(&[source, "accepted"])
            .inc_by(total - dups);
        if dups > 0 {
            self.ingest_records
                .with_label_values(&[source, "duplicate"])
                .inc_by(dups);
            self.duplicates.with_label_values(&[source]).inc_by(dups);
        }
        if conflicts > 0 {
            self.key_conflicts
                .with_label_values(&[source])
                .inc_by(conflicts);
            tracing::warn!(
                device_id = device,
                source,
                readings = conflicts,
                "idempotency key reused with other content (device counter reset?); stored \
                 under a derived key, not dropped"
            );
        }
    }
}

pub(crate) fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new_custom(Some("edge_gateway".into()), None).expect("valid prefix");
        let lat = vec![
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let counts = prometheus::exponential_buckets(1.0, 2.0, 14).expect("valid buckets");
        Metrics {
            ingest_records: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "ingest_records_total",
                        "Readings received, by source and result",
                    ),
                    &["source", "result"],
                )
                .unwrap(),
            ),
            ingest_rejections: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "ingest_rejections_total",
                        "Ingest requests refused, by source and error code",
                    ),
                    &["source", "code"],
                )
                .unwrap(),
            ),
            duplicates: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "duplicates_total",
                        "Readings whose idempotency key was already stored",
                    ),
                    &["source"],
                )
                .unwrap(),
            ),
            key_conflicts: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "ingest_key_conflicts_total",
                        "Readings stored although their idempotency key was taken, within the \
                         window, by a reading with other content (e.g. a device counter reset)",
                    ),
                    &["source"],
                )
                .unwrap(),
            ),
            wal_disk_full: reg(
                &r,
                IntGauge::new(
                    "wal_disk_full",
                    "1 while appends are refused because the WAL's filesystem is nearly full",
                )
                .unwrap(),
            ),
            wal_enospc: reg(
                &r,
                IntCounter::new(
                    "wal_enospc_total",
                    "WAL commits that met a full disk and reopened the store in place",
                )
                .unwrap(),
            ),
            wal_compactions: reg(
                &r,
                IntCounter::new(
                    "wal_compactions_total",
                    "Times the WAL file was compacted after a backlog drained",
                )
                .unwrap(),
            ),
            wal_compacted_bytes: reg(
                &r,
                IntCounter::new(
                    "wal_compacted_bytes_total",
                    "Bytes the WAL file gave back to the filesystem by compaction",
                )
                .unwrap(),
            ),
            clock_jumps: reg(
                &r,
                IntCounter::new(
                    "clock_jumps_total",
                    "System clock steps of a minute or more (ages follow the WAL's monotonic clock)",
                )
                .unwrap(),
            ),
            connections_open: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("connections_open", "Open connections, by listener"),
                    &["listener"],
                )
                .unwrap(),
            ),
            connections_refused: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "connections_refused_total",
                        "Connections closed at accept because a limit was reached, by \
                         listener and reason",
                    ),
                    &["listener", "reason"],
                )
                .unwrap(),
            ),
            dead_letters_purged: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "dead_letters_purged_total",
                        "Dead letters deleted, by sink and why (operator, budget, retention)",
                    ),
                    &["sink", "why"],
                )
                .unwrap(),
            ),
            wal_orphaned_records: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "wal_orphaned_records",
                        "Records held for a sink the configuration no longer has (renamed or \
                         removed): nothing delivers them until `wal move-sink` or `drop-sink`",
                    ),
                    &["sink"],
                )
                .unwrap(),
            ),
            orphaned_sinks: std::sync::Mutex::new(Vec::new()),
            wal_records: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("wal_records", "WAL entries by state and sink"),
                    &["state", "sink"],
                )
                .unwrap(),
            ),
            wal_acked: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "wal_acked_records",
                        "Records acknowledged by each sink since the WAL was created",
                    ),
                    &["sink"],
                )
                .unwrap(),
            ),
            wal_file_bytes: reg(
                &r,
                IntGauge::new("wal_file_bytes", "Size of the WAL file").unwrap(),
            ),
            wal_live_bytes: reg(
                &r,
                IntGauge::new("wal_live_bytes", "Encoded bytes of records still held").unwrap(),
            ),
            wal_history_bytes: reg(
                &r,
                IntGauge::new(
                    "wal_history_bytes",
                    "Bytes of settled records kept with their lifecycle (wal.history_secs)",
                )
                .unwrap(),
            ),
            wal_live_records: reg(
                &r,
                IntGauge::new(
                    "wal_live_records",
                    "Records still held (pending or dead for some sink)",
                )
                .unwrap(),
            ),
            wal_commit_seconds: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new("wal_commit_seconds", "Time of one WAL group commit")
                        .buckets(lat.clone()),
                )
                .unwrap(),
            ),
            wal_commit_ops: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new("wal_commit_ops", "Operations per WAL group commit")
                        .buckets(counts.clone()),
                )
                .unwrap(),
            ),
            wal_commit_records: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "wal_commit_records",
                        "Records appended per WAL group commit",
                    )
                    .buckets(counts),
                )
                .unwrap(),
            ),
            backpressure_active: reg(
                &r,
                IntGauge::new(
                    "backpressure_active",
                    "1 while the WAL refuses appends for being over a limit",
                )
                .unwrap(),
            ),
            publish_results: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("publish_batches_total", "Sink publish attempts by result"),
                    &["sink", "result"],
                )
                .unwrap(),
            ),
            publish_resent: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "publish_resent_total",
                        "Records delivered after an attempt that may have reached the sink \
                         failed (an upper bound on duplicates downstream), by sink",
                    ),
                    &["sink"],
                )
                .unwrap(),
            ),
            sink_outage: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "sink_outage",
                        "1 while the sink is unreachable, refusing the gateway or answered by \
                         something that is not its API (see /readyz for the reason)",
                    ),
                    &["sink"],
                )
                .unwrap(),
            ),
            publish_seconds: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("publish_seconds", "Time of one sink publish").buckets(lat),
                    &["sink"],
                )
                .unwrap(),
            ),
            retries: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("retries_total", "Records scheduled for another attempt"),
                    &["sink"],
                )
                .unwrap(),
            ),
            dead_lettered: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "dead_lettered_total",
                        "Records dead-lettered, by sink and reason class",
                    ),
                    &["sink", "reason"],
                )
                .unwrap(),
            ),
            actor_mailbox_depth: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "actor_mailbox_depth",
                        "Messages sent to an actor and not yet handled",
                    ),
                    &["actor"],
                )
                .unwrap(),
            ),
            actor_mailbox_depth_max: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("actor_mailbox_depth_max", "Highest mailbox depth seen"),
                    &["actor"],
                )
                .unwrap(),
            ),
            actor_restarts: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("actor_restarts_total", "Restarts by the actor's supervisor"),
                    &["actor"],
                )
                .unwrap(),
            ),
            actor_up: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("actor_up", "1 while the actor is running"),
                    &["actor"],
                )
                .unwrap(),
            ),
            build_info: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("build_info", "Always 1; labels carry the version"),
                    &["version", "commit"],
                )
                .unwrap(),
            ),
            wal_opens: reg(
                &r,
                IntCounter::new(
                    "wal_opens_total",
                    "Times the WAL file was opened (1 + restarts)",
                )
                .unwrap(),
            ),
            mqtt_session_up: reg(
                &r,
                IntGauge::new(
                    "mqtt_session_up",
                    "1 while the MQTT ingest session is connected and subscribed",
                )
                .unwrap(),
            ),
            mqtt_held: reg(
                &r,
                IntGauge::new(
                    "mqtt_held_messages",
                    "MQTT messages held (PUBACK withheld) because their device is over its WAL share",
                )
                .unwrap(),
            ),
            mqtt_unacked: reg(
                &r,
                IntGauge::new(
                    "mqtt_unacked_messages",
                    "MQTT messages received and not yet acknowledged to the broker",
                )
                .unwrap(),
            ),
            mqtt_shed: reg(
                &r,
                IntCounter::new(
                    "mqtt_shed_total",
                    "MQTT messages dropped unacknowledged past mqtt.max_unacked (redelivered by the broker after a reconnect)",
                )
                .unwrap(),
            ),
            mqtt_connection_errors: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "mqtt_connection_errors_total",
                        "Failed or lost MQTT connections, by client (ingest or sink name)",
                    ),
                    &["client"],
                )
                .unwrap(),
            ),
            control: crate::control::metrics::ControlMetrics::new(&r),
            slo: crate::slo::SloMetrics::new(&r),
            pulse: crate::liveness::Pulse::default(),
            certs: crate::certs::CertMetrics::new(&r),
            traces: crate::traces::TraceMetrics::new(&r),
            devices: crate::devices::DeviceBook::new(10_000),
            device_metrics: crate::devices::DeviceMetrics::new(&r),
            implausible: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "readings_implausible_total",
                        "Readings accepted with a field outside its plausible range, by field",
                    ),
                    &["field"],
                )
                .unwrap(),
            ),
            registry: r,
        }
    }

    /// Prometheus text exposition of everything registered (the process figures read now).
    pub fn render(&self) -> String {
        self.slo.observe_process();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.device_metrics.observe(&self.devices, now);
        let mut buf = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        buf
    }

    /// Publishes WAL counts as gauges.
    pub fn observe_wal(&self, s: &crate::wal::WalStats) {
        self.slo.observe(s);
        self.wal_file_bytes.set(s.file_bytes as i64);
        self.wal_live_bytes.set(s.live_bytes as i64);
        self.wal_live_records.set(s.records as i64);
        self.wal_history_bytes.set(s.history_bytes as i64);
        self.wal_orphaned_records.reset();
        for o in &s.orphaned {
            self.wal_orphaned_records
                .with_label_values(&[&o.sink])
                .set((o.pending + o.dead) as i64);
        }
        *self.orphaned_sinks.lock().expect("orphans lock") = s.orphaned.clone();
        for k in &s.sinks {
            self.wal_records
                .with_label_values(&["enqueued", &k.sink])
                .set(k.pending.saturating_sub(k.in_flight) as i64);
            self.wal_records
                .with_label_values(&["in_flight", &k.sink])
                .set(k.in_flight as i64);
            self.wal_records
                .with_label_values(&["dead", &k.sink])
                .set(k.dead as i64);
            self.wal_acked
                .with_label_values(&[&k.sink])
                .set(k.acked_total as i64);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
