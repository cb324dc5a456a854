//! Giving space back (issue 9, part 4): after a backlog drains, a maintenance sweep compacts the
//! file, readers keep working, and a compaction cut by a power loss at any of its steps
//! leaves a file that opens with everything committed.

use super::fault_tests::power_cut;
use super::tests::{limits, rec};
use super::*;
use std::sync::atomic::Ordering;

/// Records of ~1 KiB in the backlog that drains: a file of several MiB.
const BACKLOG: usize = 4_000;

/// `compact_settle_ms` here.
const SETTLE_MS: u64 = 2_000;

fn limits_compacting() -> WalLimits {
    WalLimits {
        compact_min_bytes: 1 << 20,
        compact_settle_ms: SETTLE_MS,
        ..limits()
    }
}

/// Appends `n` records of ~1 KiB in groups, and returns the store.
fn fill(mut store: WalStore, from: usize, n: usize) -> WalStore {
    let body = "x".repeat(1000);
    for chunk in (from..from + n).collect::<Vec<_>>().chunks(500) {
        let batch = chunk
            .iter()
            .map(|i| {
                let mut r = rec(&format!("k{i}"), 1);
                r.data.insert("pad".into(), body.clone().into());
                r
            })
            .collect();
        store = store.apply(vec![Op::Append(batch)], 1).unwrap().0;
    }
    store
}

/// Leases and acks everything pending for sink `s`.
fn drain(mut store: WalStore) -> WalStore {
    loop {
        let lease = Op::Lease {
            sink: "s".into(),
            max: 1000,
            fill: None,
            lanes: None,
        };
        let (s, r) = store.apply(vec![lease], 1).unwrap();
        let OpResult::Leased(batch) = &r[0] else {
            panic!("{r:?}")
        };
        if batch.is_empty() {
            return s;
        }
        let outcomes = batch.iter().map(|l| (l.seq, Outcome::Acked)).collect();
        let settle = Op::Settle {
            sink: "s".into(),
            outcomes,
        };
        store = s.apply(vec![settle], 1).unwrap().0;
    }
}

fn maintain(store: WalStore, now: u64) -> (WalStore, Option<Compacted>) {
    let (s, r) = store.apply(vec![Op::Maintain], now).unwrap();
    let OpResult::Maintained(rep) = &r[0] else {
        panic!("{r:?}")
    };
    (s, rep.compacted)
}

fn open(path: &std::path::Path) -> WalStore {
    WalStore::open(path, vec!["s".into()], limits_compacting()).unwrap()
}

#[test]
fn a_drained_backlog_gives_its_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    let store = fill(open(&path), 0, BACKLOG);
    let (store, none) = maintain(store, 1);
    assert_eq!(none, None, "a full WAL is not compacted");
    let full = store.stats().file_bytes;
    assert!(full > 4 << 20, "{full}");
    let store = drain(store);
    assert_eq!(store.stats().records, 0);

    let reader = store.reader();
    // Not at the first sweep that sees the backlog gone: the tail of a drain looks like that
    // for a moment, and compacting then stalls its last batches.
    let (store, early) = maintain(store, 10);
    assert_eq!(early, None, "compacted before the drain had settled");
    let (store, early) = maintain(store, 10 + SETTLE_MS - 1);
    assert_eq!(early, None, "compacted before the drain had settled");
    let (store, done) = maintain(store, 10 + SETTLE_MS);
    let done = done.expect("compacted after the drain");
    assert_eq!(
        reader.rejected(10).unwrap(),
        vec![],
        "a reader taken before still reads"
    );
    drop(reader);
    assert_eq!(done.before, full);
    assert!(done.after * 4 < done.before, "{done:?}");
    assert_eq!(store.stats().file_bytes, done.after);
    let (store, again) = maintain(store, 20 + 2 * SETTLE_MS);
    assert_eq!(again, None, "nothing more to give back");

    // Still a working WAL: new records go in, come out, and survive a reopen.
    let store = fill(store, BACKLOG, 100);
    drop(store);
    let store = open(&path);
    assert_eq!(store.stats().records, 100);
    assert_eq!(store.dump().unwrap().pending.len(), 100);
}

/// The power goes at the k-th fsync of the compaction (k = 0, 1, 2, ...: every step of it
/// in turn): the file opens with every committed record, and takes appends again.
#[test]
fn power_lost_at_any_step_of_a_compaction_loses_nothing_committed() {
    // A drained backlog with 300 records still pending, committed: made once, copied per run.
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("template.redb");
    let store = drain(fill(open(&template), 0, BACKLOG));
    drop(fill(store, BACKLOG, 300));
    let mut k = 0;
    loop {
        let path = dir.path().join(format!("wal-{k}.redb"));
        std::fs::copy(&template, &path).unwrap();
        let (backend, _, syncs_left) = power_cut(&path);
        let store =
            WalStore::open_with_backend(backend, &path, vec!["s".into()], limits_compacting())
                .unwrap();
        // A first sweep sees the backlog gone; the compaction runs at the one after.
        let (store, early) = maintain(store, 1);
        assert_eq!(early, None);
        // The sweep's own commit syncs once; the power goes at the k-th sync after it.
        syncs_left.store(1 + k, Ordering::SeqCst);
        let finished = match store.apply(vec![Op::Maintain], 1 + SETTLE_MS) {
            Ok((s, r)) => {
                let done = matches!(&r[0], OpResult::Maintained(rep) if rep.compacted.is_some());
                drop(s);
                done && syncs_left.load(Ordering::SeqCst) != 0
            }
            Err(_) => false,
        };
        let store = open(&path);
        let d = store.dump().unwrap();
        assert_eq!(
            d.pending.len(),
            300,
            "power lost at sync {k} of the compaction"
        );
        assert!(d.idem.contains(&format!("k{BACKLOG}")));
        let store = fill(store, 2 * BACKLOG, 10);
        assert_eq!(drain(store).stats().records, 0);
        if finished || k > 40 {
            assert!(k > 0, "the compaction must have been cut at least once");
            eprintln!("compaction cut at each of its first {k} fsyncs");
            break;
        }
        k += 1;
    }
}

/// `wal.max_file_bytes` follows the file, not the rows: at the limit appends are refused
/// (nothing stored, nothing acknowledged) while delivery goes on; once the backlog drained
/// and the sweep compacted the file, appends are taken again.
#[test]
fn a_file_at_its_limit_refuses_appends_until_compaction_gives_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    let limits = WalLimits {
        max_file_bytes: 3 << 20,
        ..limits_compacting()
    };
    let mut store = WalStore::open(&path, vec!["s".into()], limits.clone()).unwrap();
    let mut i = 0;
    let refused = loop {
        let mut r = rec(&format!("k{i}"), 1);
        r.data.insert("pad".into(), "x".repeat(1000).into());
        let (s, res) = store.apply(vec![Op::Append(vec![r])], 1).unwrap();
        store = s;
        match &res[0] {
            OpResult::Appended(Ok(_)) => i += 1,
            OpResult::Appended(Err(AppendRefused::Full(f))) => break f.clone(),
            other => panic!("{other:?}"),
        }
        assert!(i < 100_000, "never refused");
    };
    assert!(refused.file_bytes >= 3 << 20, "{refused}");
    assert!(refused.to_string().contains("file"), "{refused}");
    let stored = store.stats().records;
    assert_eq!(stored, i as u64, "nothing of the refused append stored");
    // Delivery is not refused: the backlog drains, the sweep compacts, appends resume.
    // At the limit the compaction does not wait for the drain to settle: appends wait for it.
    let store = drain(store);
    let (store, done) = maintain(store, 1);
    assert!(done.is_some_and(|c| c.after < 3 << 20), "{done:?}");
    let (_, res) = store
        .apply(vec![Op::Append(vec![rec("after", 1)])], 1)
        .unwrap();
    assert!(matches!(&res[0], OpResult::Appended(Ok(_))), "{res:?}");
}
