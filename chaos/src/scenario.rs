//! Scenarios and their seeded fault schedules. The same seed, scenario and duration give the
//! same schedule, so a failing campaign can be replayed.

use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::time::Duration;

/// Named fault mixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Three MQTT devices and upstream broker outages (the reference field demo).
    FieldDemo,
    /// Every actor type failed through the admin API, over and over.
    ActorStorm,
    /// SIGKILL of the gateway and restart.
    Kill9,
    /// The HTTP sink answers 500/429/502, hangs past the timeout, resets connections, has a
    /// body limit; a device sends a reading the API refuses (poison).
    SinkFlap,
    /// All of the above, plus graceful edge-broker restarts.
    Mixed,
    /// Hostile clients beside the honest devices: idle sockets, slow bodies, a flooding
    /// device, keys copied from other devices (issue 8).
    Abuse,
    /// Control traffic (device commands, configuration changes) while the control actor
    /// fails, the gateway is killed and the edge broker restarts (issue 12).
    Control,
}

impl Scenario {
    /// Whether the operator sends commands and configuration changes during the campaign.
    pub fn control_traffic(self) -> bool {
        matches!(self, Scenario::Mixed | Scenario::Control)
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "field-demo" => Scenario::FieldDemo,
            "actor-storm" => Scenario::ActorStorm,
            "kill-9" => Scenario::Kill9,
            "sink-flap" => Scenario::SinkFlap,
            "mixed" => Scenario::Mixed,
            "abuse" => Scenario::Abuse,
            "control" => Scenario::Control,
            _ => {
                return Err(format!(
                "unknown scenario {s:?}: field-demo, actor-storm, kill-9, sink-flap, mixed, abuse, control"
            ))
            }
        })
    }
}

/// Actors the admin API can fail, by their names in the supervision tree.
pub const ACTORS: [&str; 7] = [
    "control",
    "wal",
    "mqtt_session",
    "http_ingest",
    "dispatcher",
    "publisher:analytics",
    "publisher:upstream",
];

/// What the HTTP sink does while faulty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkFault {
    Status(u16),
    /// Never answers (the gateway's sink timeout fires).
    Hang,
    /// Closes each connection with a TCP reset.
    Reset,
    /// A proxy's body limit: `413` for bodies over this many bytes (the gateway must split,
    /// never dead-letter; issue 10).
    BodyLimit(usize),
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    FailActor(String),
    Kill9,
    UpstreamOutage {
        secs: f64,
    },
    EdgeBrokerRestart,
    Sink {
        fault: SinkFault,
        secs: f64,
    },
    Abuse {
        attack: crate::abuse::Attack,
        secs: f64,
    },
    /// One reading the analytics API refuses (`400` for any batch holding it, for ever): it
    /// must be dead-lettered there, alone, and delivered everywhere else (issue 10).
    PoisonReading,
    /// The S3 store killed, restarted after this long (campaigns with `--s3`).
    StoreOutage {
        secs: f64,
    },
}

impl Fault {
    /// The kind, for counting.
    pub fn kind(&self) -> String {
        match self {
            Fault::FailActor(a) => format!("fail_actor:{a}"),
            Fault::Kill9 => "kill9".into(),
            Fault::UpstreamOutage { .. } => "upstream_outage".into(),
            Fault::EdgeBrokerRestart => "edge_broker_restart".into(),
            Fault::Sink { fault, .. } => match fault {
                SinkFault::Status(s) => format!("sink_status_{s}"),
                SinkFault::Hang => "sink_hang".into(),
                SinkFault::Reset => "sink_reset".into(),
                SinkFault::BodyLimit(_) => "sink_body_limit".into(),
            },
            Fault::Abuse { attack, .. } => format!("abuse:{}", attack.name()),
            Fault::PoisonReading => "poison_reading".into(),
            Fault::StoreOutage { .. } => "store_outage".into(),
        }
    }

    /// How long the fault lasts once injected (0 for instantaneous ones).
    pub fn duration(&self) -> Duration {
        match self {
            Fault::UpstreamOutage { secs }
            | Fault::StoreOutage { secs }
            | Fault::Sink { secs, .. }
            | Fault::Abuse { secs, .. } => Duration::from_secs_f64(*secs),
            _ => Duration::ZERO,
        }
    }
}

/// A fault and when to inject it, from the start of the campaign.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Planned {
    pub at_secs: f64,
    pub fault: Fault,
}

impl Scenario {
    /// MQTT and HTTP devices this scenario runs.
    pub fn devices(self) -> (usize, usize) {
        match self {
            Scenario::FieldDemo => (3, 0),
            _ => (3, 2),
        }
    }

    /// Mean gap between faults, in seconds.
    fn mean_gap(self) -> f64 {
        match self {
            Scenario::FieldDemo => 8.0,
            Scenario::ActorStorm => 1.5,
            Scenario::Kill9 => 4.0,
            Scenario::SinkFlap => 2.0,
            Scenario::Mixed => 2.5,
            Scenario::Abuse => 2.0,
            Scenario::Control => 3.0,
        }
    }

    /// One fault; `store`: the campaign has an S3 store, whose outages join the sink faults;
    /// `kafka`: a Kafka sink, whose publisher joins the actors failed.
    fn pick(self, rng: &mut impl Rng, store: bool, kafka: bool) -> Fault {
        let actor = |rng: &mut dyn rand::RngCore| {
            // The extra sinks' publishers fail too.
            let mut all = ACTORS.to_vec();
            if store {
                all.push("publisher:archive");
            }
            if kafka {
                all.push("publisher:bus");
            }
            Fault::FailActor(all[rng.random_range(0..all.len())].to_string())
        };
        let sink = |rng: &mut dyn rand::RngCore| {
            let (fault, secs) = match rng.random_range(0..if store { 8 } else { 7 }) {
                6 => return Fault::PoisonReading,
                7 => {
                    return Fault::StoreOutage {
                        secs: round(rng.random_range(3.0..10.0)),
                    }
                }
                0 => (SinkFault::Status(500), 1.0..4.0),
                1 => (SinkFault::Status(429), 1.0..4.0),
                2 => (SinkFault::Hang, 1.0..4.0),
                3 => (SinkFault::Reset, 1.0..4.0),
                // A load balancer with nothing behind it, longer than a few retries (issue 10).
                4 => (SinkFault::Status(502), 5.0..15.0),
                // A 8 KiB proxy limit: most batches of a backlog are split.
                _ => (SinkFault::BodyLimit(8 << 10), 3.0..10.0),
            };
            Fault::Sink {
                fault,
                secs: round(rng.random_range(secs)),
            }
        };
        let outage = |rng: &mut dyn rand::RngCore| Fault::UpstreamOutage {
            secs: round(rng.random_range(3.0..10.0)),
        };
        match self {
            Scenario::FieldDemo => outage(rng),
            Scenario::ActorStorm => actor(rng),
            Scenario::Kill9 => Fault::Kill9,
            Scenario::SinkFlap => sink(rng),
            Scenario::Abuse => {
                let all = crate::abuse::Attack::ALL;
                Fault::Abuse {
                    attack: all[rng.random_range(0..all.len())],
                    secs: round(rng.random_range(6.0..15.0)),
                }
            }
            Scenario::Control => match rng.random_range(0..6) {
                0 | 1 => Fault::FailActor("control".into()),
                2 => Fault::Kill9,
                3 => Fault::EdgeBrokerRestart,
                4 => actor(rng),
                _ => Fault::FailActor("dispatcher".into()),
            },
            Scenario::Mixed => match rng.random_range(0..10) {
                0..=3 => actor(rng),
                4 | 5 => Fault::Kill9,
                6 | 7 => sink(rng),
                8 => outage(rng),
                _ => Fault::EdgeBrokerRestart,
            },
        }
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The schedule of `scenario` for `duration` from `seed`: faults start after a 2 s warm-up,
/// never overlap, and the last one ends before `duration`.
pub fn plan(scenario: Scenario, duration: Duration, seed: u64) -> Vec<Planned> {
    plan_with(scenario, duration, seed, false, false)
}

/// [`plan`] for a campaign that has an S3 store when `store`, a Kafka sink when `kafka`.
pub fn plan_with(
    scenario: Scenario,
    duration: Duration,
    seed: u64,
    store: bool,
    kafka: bool,
) -> Vec<Planned> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let end = duration.as_secs_f64();
    let mut t = 2.0;
    let mut out = Vec::new();
    loop {
        t += round(rng.random_range(0.5..1.5) * scenario.mean_gap());
        let mut fault = scenario.pick(&mut rng, store, kafka);
        if let Fault::Abuse { attack, .. } = &mut fault {
            // Every attack in turn, so a short campaign sees each of them.
            *attack = crate::abuse::Attack::ALL[out.len() % crate::abuse::Attack::ALL.len()];
        }
        if t + fault.duration().as_secs_f64() >= end {
            break;
        }
        out.push(Planned {
            at_secs: t,
            fault: fault.clone(),
        });
        t += fault.duration().as_secs_f64();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_minute_abuse_campaign_mounts_every_attack() {
        let p = plan(Scenario::Abuse, Duration::from_secs(60), 42);
        let kinds: std::collections::BTreeSet<String> = p.iter().map(|p| p.fault.kind()).collect();
        assert_eq!(kinds.len(), crate::abuse::Attack::ALL.len(), "{kinds:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let d = Duration::from_secs(120);
        for s in [Scenario::Mixed, Scenario::Kill9, Scenario::FieldDemo] {
            assert_eq!(plan(s, d, 7), plan(s, d, 7));
            assert_ne!(plan(s, d, 7), plan(s, d, 8), "{s:?}");
        }
    }

    #[test]
    fn faults_fit_the_campaign_and_never_overlap() {
        let d = Duration::from_secs(300);
        let p = plan(Scenario::Mixed, d, 42);
        assert!(p.len() > 50, "{}", p.len());
        let mut end = 0.0;
        for f in &p {
            assert!(
                f.at_secs >= end,
                "{f:?} starts before the previous fault ended"
            );
            end = f.at_secs + f.fault.duration().as_secs_f64();
            assert!(end < 300.0);
        }
        let kinds: std::collections::BTreeSet<_> = p
            .iter()
            .map(|f| f.fault.kind().split(':').next().unwrap().to_string())
            .collect();
        for k in [
            "fail_actor",
            "kill9",
            "upstream_outage",
            "edge_broker_restart",
        ] {
            assert!(kinds.contains(k), "mixed never picked {k}: {kinds:?}");
        }
    }

    #[test]
    fn scenarios_stick_to_their_faults() {
        let d = Duration::from_secs(120);
        assert!(plan(Scenario::Kill9, d, 1)
            .iter()
            .all(|f| f.fault == Fault::Kill9));
        assert!(plan(Scenario::FieldDemo, d, 1)
            .iter()
            .all(|f| matches!(f.fault, Fault::UpstreamOutage { .. })));
        assert!(plan(Scenario::ActorStorm, d, 1)
            .iter()
            .all(|f| matches!(f.fault, Fault::FailActor(_))));
        let control = plan(Scenario::Control, d, 1);
        assert!(control
            .iter()
            .any(|f| f.fault == Fault::FailActor("control".into())));
        assert!(control.iter().any(|f| f.fault == Fault::Kill9));
        let flap = plan(Scenario::SinkFlap, d, 1);
        assert!(flap
            .iter()
            .all(|f| matches!(f.fault, Fault::Sink { .. } | Fault::PoisonReading)));
        assert!(flap.iter().any(|f| f.fault == Fault::PoisonReading));
        assert!(!flap
            .iter()
            .any(|f| matches!(f.fault, Fault::StoreOutage { .. })));
        let with_store = plan_with(Scenario::SinkFlap, d, 1, true, false);
        assert!(with_store
            .iter()
            .any(|f| matches!(f.fault, Fault::StoreOutage { .. })));
    }
}
