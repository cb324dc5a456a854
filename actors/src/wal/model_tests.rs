//! WalStore against an in-memory model (proptest): random appends, leases, settles,
//! requeues, maintenance runs, clock advances and crashes, under random limits — the
//! retention of undelivered records (`max_age_ms`), of dead letters (`dead_retention_ms`),
//! the idempotency window and its key cap, and the WAL's record limit (issue 9, part 2: the
//! model the watermark representation must keep passing) — and groups of operations in one
//! commit, whose durability is that of the most durable operation in them.
//!
//! After every step the store's rows equal the model's; after a crash they equal the model's
//! or the last durable state's, never anything else.

use super::tests::{limits, rec};
use super::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};

const SINKS: [&str; 2] = ["a", "b"];
const MAX_ATTEMPTS: u32 = 3;
const LEASE_MS: u64 = 100;

#[derive(Debug, Clone)]
enum MOp {
    Append(Vec<u8>),
    /// Readings a routing rule sends to one sink only (they cut the unleased ranges).
    AppendTo(Vec<u8>, usize),
    Lease(usize, usize),
    Settle(usize, u8),
    Advance(u64),
    Maintain,
    Requeue(usize),
    Crash,
    /// Several of the above in one commit (no `Crash`, `Advance` or nested group).
    Group(Vec<MOp>),
}

fn step() -> impl Strategy<Value = MOp> {
    prop_oneof![
        4 => proptest::collection::vec(0u8..24, 1..4).prop_map(MOp::Append),
        1 => (proptest::collection::vec(0u8..24, 1..3), 0usize..2).prop_map(|(k, s)| MOp::AppendTo(k, s)),
        3 => (0usize..2, 1usize..5).prop_map(|(s, m)| MOp::Lease(s, m)),
        3 => (0usize..2, 0u8..5).prop_map(|(s, o)| MOp::Settle(s, o)),
        1 => Just(MOp::Maintain),
        1 => (0usize..2).prop_map(MOp::Requeue),
    ]
}

fn mop() -> impl Strategy<Value = MOp> {
    prop_oneof![
        13 => step(),
        2 => (1u64..80).prop_map(MOp::Advance),
        1 => Just(MOp::Crash),
        2 => proptest::collection::vec(step(), 2..5).prop_map(MOp::Group),
    ]
}

/// The limits under test: each either off (as large as the test can reach) or small enough
/// to be met within a run.
#[derive(Debug, Clone, Copy)]
struct Limits {
    window: u64,
    cap: u64,
    max_age: u64,
    dead_retention: u64,
    max_records: u64,
    history_ms: u64,
    history_max_bytes: u64,
}

fn limits_strategy() -> impl Strategy<Value = Limits> {
    let off = 1u64 << 40;
    (
        prop_oneof![Just(off), 30u64..200],
        prop_oneof![Just(u64::MAX), 3u64..12],
        prop_oneof![Just(off), 50u64..300],
        prop_oneof![Just(off), 50u64..300],
        prop_oneof![Just(1_000_000u64), 4u64..20],
        // Kept history: off, or kept a while within a few records' bytes or plenty. The
        // model has none: what the store keeps must never show in its live state.
        prop_oneof![
            Just((0u64, 0u64)),
            (30u64..300, prop_oneof![Just(1u64 << 30), 200u64..2_000])
        ],
    )
        .prop_map(
            |(
                window,
                cap,
                max_age,
                dead_retention,
                max_records,
                (history_ms, history_max_bytes),
            )| {
                Limits {
                    window,
                    cap,
                    max_age,
                    dead_retention,
                    max_records,
                    history_ms,
                    history_max_bytes,
                }
            },
        )
}

impl Limits {
    fn wal(&self) -> WalLimits {
        WalLimits {
            idempotency_window_ms: self.window,
            idempotency_max_keys: self.cap,
            max_age_ms: self.max_age,
            dead_retention_ms: self.dead_retention,
            max_records: self.max_records,
            max_attempts: MAX_ATTEMPTS,
            lease_ms: LEASE_MS,
            history_ms: self.history_ms,
            history_max_bytes: self.history_max_bytes,
            ..limits()
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Model {
    lim: Option<Limits>,
    next_seq: u64,
    pending: BTreeMap<(String, u64), u32>,
    /// (sink, seq) -> when it died.
    dead: BTreeMap<(String, u64), u64>,
    /// seq -> (rows naming it, when it was appended).
    refs: BTreeMap<u64, (u32, u64)>,
    records: BTreeSet<u64>,
    /// key -> (when stored, seq, id of its row): the newest entry of each key.
    idem: BTreeMap<String, (u64, u64, u64)>,
    /// The idempotency rows, one per commit that stored readings (format 6): (id, time,
    /// keys); their entries; and the keys of the commit in progress, (id, keys).
    idem_rows: std::collections::VecDeque<(u64, u64, Vec<String>)>,
    idem_entries: u64,
    idem_buf: Option<(u64, Vec<String>)>,
    /// Records below this seq were examined for expiry since the store opened.
    expiry_cursor: u64,
    /// Leases in memory: (sink, seq) -> deadline; and the order they were handed out.
    inflight: BTreeMap<(String, u64), u64>,
    leased: Vec<(String, u64)>,
}

/// What one operation is expected to answer (checked against the store's result).
#[derive(Debug)]
enum Want {
    Appended(Result<Vec<(bool, u64)>, ()>),
    Leased(Vec<(u64, u32)>),
    Requeued(usize),
    Any,
}

impl Model {
    fn lim(&self) -> Limits {
        self.lim.expect("set at start")
    }

    fn unref(&mut self, seq: u64) {
        let n = &mut self.refs.get_mut(&seq).expect("a row names it").0;
        *n -= 1;
        if *n == 0 {
            self.refs.remove(&seq);
            self.records.remove(&seq);
        }
    }

    fn kill(&mut self, sink: &str, seq: u64, now: u64) {
        self.pending.remove(&(sink.to_string(), seq));
        self.inflight.remove(&(sink.to_string(), seq));
        self.dead.insert((sink.to_string(), seq), now);
    }

    fn dump(&self) -> Dump {
        Dump {
            pending: self.pending.clone(),
            dead: self.dead.keys().cloned().collect(),
            records: self.records.clone(),
            idem: self.idem.keys().cloned().collect(),
        }
    }

    /// The end of a commit: its keys become one row; past the cap the oldest rows go, never
    /// the newest.
    fn commit(&mut self, now: u64) {
        let Some((id, keys)) = self.idem_buf.take() else {
            return;
        };
        self.idem_entries += keys.len() as u64;
        self.idem_rows.push_back((id, now, keys));
        while self.idem_entries > self.lim().cap && self.idem_rows.len() > 1 {
            self.forget_oldest_row();
        }
    }

    fn forget_oldest_row(&mut self) {
        let (id, _, keys) = self.idem_rows.pop_front().expect("a row");
        self.idem_entries -= keys.len() as u64;
        for k in keys {
            if self.idem.get(&k).is_some_and(|e| e.2 == id) {
                self.idem.remove(&k);
            }
        }
    }

    /// Applies `op` to the model; the store's operation and the answer expected of it.
    fn apply(&mut self, op: &MOp, now: u64) -> Option<(Op, Want)> {
        Some(match op {
            MOp::Append(keys) => {
                let recs: Vec<Record> = keys.iter().map(|k| rec(&format!("k{k}"), now)).collect();
                (Op::Append(recs), self.append(keys, &SINKS, now))
            }
            MOp::AppendTo(keys, si) => {
                let sink = SINKS[*si];
                let route = Route(Some(std::sync::Arc::from(vec![sink.to_string()])));
                let recs: Vec<Record> = keys
                    .iter()
                    .map(|k| Record {
                        route: route.clone(),
                        ..rec(&format!("k{k}"), now)
                    })
                    .collect();
                (Op::Append(recs), self.append(keys, &[sink], now))
            }
            MOp::Lease(si, max) => {
                let sink = SINKS[*si];
                let want = self.lease(sink, *max, now);
                let op = Op::Lease {
                    sink: sink.into(),
                    max: *max,
                    fill: None,
                    lanes: None,
                };
                (op, Want::Leased(want))
            }
            MOp::Settle(si, o) => {
                let sink = SINKS[*si];
                let pos = self.leased.iter().position(|(s, _)| s == sink)?;
                let (_, seq) = self.leased.remove(pos);
                let outcome = match o {
                    0 => Outcome::Acked,
                    1 => Outcome::Retry("t".into()),
                    2 => Outcome::Dead("p".into()),
                    3 => Outcome::Release,
                    // The actor's settle for a leased body that did not decode.
                    _ => Outcome::Corrupt("c".into()),
                };
                self.settle(sink, seq, &outcome, now);
                let op = Op::Settle {
                    sink: sink.into(),
                    outcomes: vec![(seq, outcome)],
                };
                (op, Want::Any)
            }
            MOp::Requeue(si) => {
                let sink = SINKS[*si];
                let back: Vec<(String, u64)> = self
                    .dead
                    .keys()
                    .filter(|(k, _)| k == sink)
                    .take(2)
                    .cloned()
                    .collect();
                let n = back.len();
                for k in back {
                    self.dead.remove(&k);
                    self.pending.insert(k, 0);
                }
                let op = Op::Requeue {
                    sink: sink.into(),
                    limit: 2,
                    filter: Default::default(),
                };
                (op, Want::Requeued(n))
            }
            MOp::Maintain => {
                self.maintain(now);
                (Op::Maintain, Want::Any)
            }
            MOp::Advance(_) | MOp::Crash | MOp::Group(_) => unreachable!("not a store operation"),
        })
    }

    fn append(&mut self, keys: &[u8], sinks: &[&str], now: u64) -> Want {
        let lim = self.lim();
        // Pass 1, as the store: classify; a refused append changes nothing.
        let mut plan: Vec<Result<u64, usize>> = Vec::new(); // Ok(dup of seq) | Err(new #n)
        let mut first_new: HashMap<String, usize> = HashMap::new();
        let mut new = 0usize;
        for k in keys {
            let key = format!("k{k}");
            let in_window = self
                .idem
                .get(&key)
                .filter(|(ts, _, _)| ts.saturating_add(lim.window) > now)
                .map(|&(_, seq, _)| seq);
            match (first_new.get(&key), in_window) {
                (Some(&n), _) => plan.push(Err(n)),
                (None, Some(seq)) => plan.push(Ok(seq)),
                (None, None) => {
                    first_new.insert(key, new);
                    plan.push(Err(new));
                    new += 1;
                }
            }
        }
        if new > 0 && self.records.len() as u64 + new as u64 > lim.max_records {
            return Want::Appended(Err(()));
        }
        let mut seqs = Vec::new();
        let mut out = Vec::new();
        for (k, p) in keys.iter().zip(plan) {
            match p {
                Ok(seq) => out.push((false, seq)),
                Err(n) if n < seqs.len() => out.push((false, seqs[n])),
                Err(_) => {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    seqs.push(seq);
                    out.push((true, seq));
                    self.records.insert(seq);
                    self.refs.insert(seq, (sinks.len() as u32, now));
                    for sink in sinks {
                        self.pending.insert((sink.to_string(), seq), 0);
                    }
                    let (row, keys) = self.idem_buf.get_or_insert((seq, Vec::new()));
                    keys.push(format!("k{k}"));
                    let row = *row;
                    self.idem.insert(format!("k{k}"), (now, seq, row));
                }
            }
        }
        Want::Appended(Ok(out))
    }

    fn lease(&mut self, sink: &str, max: usize, now: u64) -> Vec<(u64, u32)> {
        self.inflight.retain(|_, d| *d > now);
        let mut want = Vec::new();
        let mut to_dead = Vec::new();
        let range = (sink.to_string(), 0)..=(sink.to_string(), u64::MAX);
        for ((sk, seq), att) in self.pending.range(range) {
            if self.inflight.contains_key(&(sk.clone(), *seq)) {
                continue;
            }
            if *att >= MAX_ATTEMPTS {
                to_dead.push(*seq);
            } else {
                want.push((*seq, att + 1));
            }
            if want.len() + to_dead.len() >= max {
                break;
            }
        }
        for seq in to_dead {
            self.kill(sink, seq, now);
        }
        for &(seq, att) in &want {
            self.pending.insert((sink.into(), seq), att);
            self.inflight.insert((sink.into(), seq), now + LEASE_MS);
            self.leased.push((sink.into(), seq));
        }
        want
    }

    fn settle(&mut self, sink: &str, seq: u64, outcome: &Outcome, now: u64) {
        self.inflight.remove(&(sink.to_string(), seq));
        let Some(&att) = self.pending.get(&(sink.to_string(), seq)) else {
            return;
        };
        match outcome {
            Outcome::Acked => {
                self.pending.remove(&(sink.to_string(), seq));
                self.unref(seq);
            }
            Outcome::Retry(_) if att >= MAX_ATTEMPTS => self.kill(sink, seq, now),
            Outcome::Retry(_) => {}
            Outcome::Dead(_) | Outcome::Corrupt(_) => self.kill(sink, seq, now),
            Outcome::Release => {
                self.pending
                    .insert((sink.to_string(), seq), att.saturating_sub(1));
            }
        }
    }

    /// The store's sweep, in its order: idempotency window, expiry, dead-letter retention.
    fn maintain(&mut self, now: u64) {
        let lim = self.lim();
        let cutoff = now.saturating_sub(lim.window);
        let newest = self.idem_rows.back().map(|r| r.0);
        while let Some(&(id, at, _)) = self.idem_rows.front() {
            if !(at < cutoff || (self.idem_entries > lim.cap && Some(id) != newest)) {
                break;
            }
            self.forget_oldest_row();
        }
        let age_cutoff = now.saturating_sub(lim.max_age);
        let old: Vec<u64> = self
            .refs
            .range(self.expiry_cursor..)
            .take_while(|(_, (_, ts))| *ts < age_cutoff)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in old {
            for sink in SINKS {
                if self.pending.contains_key(&(sink.to_string(), seq)) {
                    self.kill(sink, seq, now);
                }
            }
            self.expiry_cursor = seq + 1;
        }
        let dead_cutoff = now.saturating_sub(lim.dead_retention);
        for sink in SINKS {
            let range = (sink.to_string(), 0)..=(sink.to_string(), u64::MAX);
            let gone: Vec<u64> = self
                .dead
                .range(range)
                .take_while(|(_, at)| **at < dead_cutoff)
                .map(|((_, seq), _)| *seq)
                .collect();
            for seq in gone {
                self.dead.remove(&(sink.to_string(), seq));
                self.unref(seq);
            }
        }
    }
}

fn check(want: &Want, got: &OpResult) -> Result<(), TestCaseError> {
    match (want, got) {
        (Want::Appended(Err(())), OpResult::Appended(Err(AppendRefused::Full(_)))) => {}
        (Want::Appended(Ok(w)), OpResult::Appended(Ok(out))) => {
            let got: Vec<(bool, u64)> = out
                .iter()
                .map(|o| match o {
                    AppendOutcome::Stored { seq, .. } => (true, *seq),
                    AppendOutcome::Duplicate { seq, .. } => (false, *seq),
                })
                .collect();
            prop_assert_eq!(&got, w);
        }
        (Want::Leased(w), OpResult::Leased(got)) => {
            let got: Vec<(u64, u32)> = got.iter().map(|l| (l.seq, l.attempts)).collect();
            prop_assert_eq!(&got, w);
        }
        (Want::Requeued(n), OpResult::Requeued(got)) => prop_assert_eq!(n, got),
        (Want::Any, _) => {}
        (w, g) => prop_assert!(false, "wanted {:?}, the store answered {:?}", w, g),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model(lim in limits_strategy(), ops in proptest::collection::vec(mop(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.redb");
        let open = || WalStore::open(&path, SINKS.iter().map(|s| s.to_string()).collect(), lim.wal()).unwrap();
        let mut store = Some(open());
        let mut m = Model { lim: Some(lim), next_seq: 1, ..Default::default() };
        // What the last durable commit held: a crash may go back to it, never further.
        let mut durable = m.clone();
        let mut now = 0u64;
        for op in ops {
            let s = store.take().unwrap();
            match &op {
                MOp::Advance(d) => {
                    now += d;
                    store = Some(s);
                }
                MOp::Crash => {
                    // Copy the file as a crash would leave it, then continue from the copy.
                    let crashed = dir.path().join("crashed.redb");
                    std::fs::copy(&path, &crashed).unwrap();
                    drop(s);
                    std::fs::rename(&crashed, &path).unwrap();
                    let s2 = open();
                    let got = s2.dump().unwrap();
                    if got != m.dump() {
                        // Non-durable settles may be lost, nothing durable may.
                        prop_assert_eq!(&got, &durable.dump(), "after a crash the WAL must hold at least the last durable state");
                        m = durable.clone();
                    }
                    m.expiry_cursor = 0;
                    m.inflight.clear();
                    m.leased.clear();
                    durable = m.clone();
                    store = Some(s2);
                }
                MOp::Group(steps) => {
                    let mut ops = Vec::new();
                    let mut wants = Vec::new();
                    for st in steps {
                        if let Some((o, w)) = m.apply(st, now) {
                            ops.push(o);
                            wants.push(w);
                        }
                    }
                    if ops.is_empty() {
                        store = Some(s);
                        continue;
                    }
                    let is_durable = steps.iter().any(|st| matches!(st, MOp::Append(_) | MOp::AppendTo(..) | MOp::Maintain | MOp::Requeue(_)));
                    let (s2, results) = s.apply(ops, now).unwrap();
                    m.commit(now);
                    prop_assert_eq!(results.len(), wants.len());
                    for (w, r) in wants.iter().zip(&results) {
                        check(w, r)?;
                    }
                    if is_durable {
                        durable = m.clone();
                    }
                    store = Some(s2);
                }
                single => {
                    let Some((o, w)) = m.apply(single, now) else {
                        store = Some(s);
                        continue;
                    };
                    let (s2, mut r) = s.apply(vec![o], now).unwrap();
                    m.commit(now);
                    check(&w, &r.pop().unwrap())?;
                    if matches!(single, MOp::Append(_) | MOp::AppendTo(..) | MOp::Maintain | MOp::Requeue(_)) {
                        durable = m.clone();
                    }
                    store = Some(s2);
                }
            }
            let s = store.as_ref().unwrap();
            prop_assert_eq!(s.dump().unwrap(), m.dump());
            let st = s.stats();
            prop_assert_eq!(st.records, m.records.len() as u64);
            for ss in &st.sinks {
                prop_assert_eq!(ss.pending, m.pending.keys().filter(|(k, _)| *k == ss.sink).count() as u64);
                prop_assert_eq!(ss.dead, m.dead.keys().filter(|(k, _)| *k == ss.sink).count() as u64);
            }
        }
        // Every table's invariants hold at the end, kept history's counters included.
        drop(store);
        let report = WalStore::verify(&path).unwrap();
        prop_assert!(report.ok(), "{:?}", report.problems);
    }
}
