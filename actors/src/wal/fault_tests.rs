//! Storage faults under the WAL, through a fault-injecting redb backend (as redb's own fuzzer
//! does): a failed fsync or a full disk must make `apply` fail — so nothing is acknowledged —
//! and the file must reopen with everything committed before intact.

use super::tests::limits;
use super::*;
use redb::backends::FileBackend;
use redb::StorageBackend;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Both test disks keep redb's file locks as the real backend does.
macro_rules! delegate_locks {
    () => {
        fn try_lock_range(&self, a: Bound<u64>, b: Bound<u64>) -> Result<bool, redb::BackendError> {
            self.inner.try_lock_range(a, b)
        }
        fn try_lock_shared_range(
            &self,
            a: Bound<u64>,
            b: Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.inner.try_lock_shared_range(a, b)
        }
        fn lock_range(&self, a: Bound<u64>, b: Bound<u64>) -> Result<(), redb::BackendError> {
            self.inner.lock_range(a, b)
        }
        fn lock_shared_range(
            &self,
            a: Bound<u64>,
            b: Bound<u64>,
        ) -> Result<(), redb::BackendError> {
            self.inner.lock_shared_range(a, b)
        }
        fn unlock_range(&self, a: Bound<u64>, b: Bound<u64>) -> Result<(), redb::BackendError> {
            self.inner.unlock_range(a, b)
        }
        fn query_lock_range(
            &self,
            a: Bound<u64>,
            b: Bound<u64>,
        ) -> Result<bool, redb::BackendError> {
            self.inner.query_lock_range(a, b)
        }
    };
}

#[derive(Debug)]
pub(super) struct Faulty {
    inner: FileBackend,
    fail_sync: Arc<AtomicBool>,
    /// Writes and growth fail like ENOSPC.
    disk_full: Arc<AtomicBool>,
}

fn enospc() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::StorageFull,
        "injected: no space left on device",
    )
}

impl StorageBackend for Faulty {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        if self.disk_full.load(Ordering::SeqCst) && len > self.inner.len()? {
            return Err(enospc());
        }
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected: fsync failed"));
        }
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        if self.disk_full.load(Ordering::SeqCst) {
            return Err(enospc());
        }
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }
    delegate_locks!();
}

fn rec(key: &str) -> Record {
    super::tests::rec(key, 1)
}

/// The file under a test backend: read-write, created if missing, never truncated.
fn open_rw(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}

/// A backend over the file at `path`, and its switches: (fail fsync, disk full).
pub(super) fn faulty(path: &std::path::Path) -> (Faulty, Arc<AtomicBool>, Arc<AtomicBool>) {
    let file = open_rw(path);
    let (fail_sync, disk_full) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let backend = Faulty {
        inner: FileBackend::new(file).unwrap(),
        fail_sync: fail_sync.clone(),
        disk_full: disk_full.clone(),
    };
    (backend, fail_sync, disk_full)
}

fn open_faulty(path: &std::path::Path) -> (WalStore, Arc<AtomicBool>, Arc<AtomicBool>) {
    let (backend, fail_sync, disk_full) = faulty(path);
    let store = WalStore::open_with_backend(backend, path, vec!["s".into()], limits()).unwrap();
    (store, fail_sync, disk_full)
}

fn keys_after_reopen(path: &std::path::Path) -> std::collections::BTreeSet<String> {
    let s = WalStore::open(path, vec!["s".into()], limits()).unwrap();
    s.dump().unwrap().idem
}

#[test]
fn a_failed_fsync_fails_the_commit_and_earlier_commits_survive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    let (store, fail_sync, _) = open_faulty(&path);
    let (store, _) = store
        .apply(vec![Op::Append(vec![rec("acked")])], 1)
        .unwrap();
    fail_sync.store(true, Ordering::SeqCst);
    let r = store.apply(vec![Op::Append(vec![rec("not-acked")])], 1);
    assert!(
        r.is_err(),
        "a commit whose fsync failed must not be reported as done"
    );
    // The store is consumed: the only way on is to reopen, as the actor does.
    let keys = keys_after_reopen(&path);
    assert!(keys.contains("acked"), "{keys:?}");
    // "not-acked" may or may not be there (its pages may have reached the file); either is
    // safe: it was never acknowledged, and a retry with the same key is recognised.
}

#[test]
fn a_full_disk_refuses_appends_without_acking_and_recovers_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    let (mut store, _, disk_full) = open_faulty(&path);
    // Commit enough to have pages to reuse later.
    for i in 0..20 {
        let batch: Vec<Record> = (0..50).map(|j| rec(&format!("k{i}-{j}"))).collect();
        store = store.apply(vec![Op::Append(batch)], 1).unwrap().0;
    }
    disk_full.store(true, Ordering::SeqCst);
    let big: Vec<Record> = (0..2000).map(|j| rec(&format!("full-{j}"))).collect();
    let r = store.apply(vec![Op::Append(big)], 1);
    assert!(
        r.is_err(),
        "writes fail: no acknowledgement while the disk is full"
    );
    // Space comes back; the WAL reopens with all 1,000 committed records and takes appends.
    let keys = keys_after_reopen(&path);
    assert_eq!(keys.iter().filter(|k| k.starts_with('k')).count(), 1000);
    assert!(
        !keys.iter().any(|k| k.starts_with("full-")),
        "a failed write left no half-committed keys"
    );
    let s = WalStore::open(&path, vec!["s".into()], limits()).unwrap();
    let (s, r) = s.apply(vec![Op::Append(vec![rec("after")])], 2).unwrap();
    assert!(
        matches!(&r[0], OpResult::Appended(Ok(v)) if matches!(v[0], AppendOutcome::Stored { .. }))
    );
    assert_eq!(s.stats().records, 1001);
}

// ---- power loss -----------------------------------------------------------------------

/// A disk that forgets what was not synced when the power goes (as LazyFS does for Jepsen):
/// writes stay in a volatile overlay until `sync_data` flushes them; `cut` drops the overlay
/// and makes the device dead until reopened from the file. It models losing *all* unsynced
/// writes, not a torn or reordered subset of them.
#[derive(Debug)]
pub(super) struct PowerCut {
    inner: FileBackend,
    volatile: std::sync::Mutex<Vec<(u64, Vec<u8>)>>,
    cut: Arc<AtomicBool>,
    /// Syncs allowed before the power goes by itself, at the start of the next one (negative:
    /// no limit).
    syncs_left: Arc<std::sync::atomic::AtomicI64>,
}

/// A power-loss disk over the file at `path`: (backend, cut switch, syncs left before the
/// power goes by itself; -1 = never).
pub(super) fn power_cut(
    path: &std::path::Path,
) -> (PowerCut, Arc<AtomicBool>, Arc<std::sync::atomic::AtomicI64>) {
    let file = open_rw(path);
    let cut = Arc::new(AtomicBool::new(false));
    let syncs_left = Arc::new(std::sync::atomic::AtomicI64::new(-1));
    let backend = PowerCut {
        inner: FileBackend::new(file).unwrap(),
        volatile: Default::default(),
        cut: cut.clone(),
        syncs_left: syncs_left.clone(),
    };
    (backend, cut, syncs_left)
}

impl PowerCut {
    fn dead(&self) -> Result<(), std::io::Error> {
        if self.cut.load(Ordering::SeqCst) {
            Err(std::io::Error::other("injected: power is off"))
        } else {
            Ok(())
        }
    }
}

impl StorageBackend for PowerCut {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.dead()?;
        self.inner.read(offset, out)?;
        // Unsynced writes are visible to the running process, later ones winning.
        let end = offset + out.len() as u64;
        for (o, d) in self.volatile.lock().unwrap().iter() {
            let (wo, we) = (*o, *o + d.len() as u64);
            if wo < end && we > offset {
                let from = wo.max(offset);
                let to = we.min(end);
                out[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&d[(from - wo) as usize..(to - wo) as usize]);
            }
        }
        Ok(())
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.dead()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.dead()?;
        if self.syncs_left.load(Ordering::SeqCst) == 0 {
            self.cut.store(true, Ordering::SeqCst);
            self.volatile.lock().unwrap().clear();
            return self.dead();
        }
        let _ = self
            .syncs_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n > 0).then(|| n - 1)
            });
        let pending = std::mem::take(&mut *self.volatile.lock().unwrap());
        for (o, d) in pending {
            self.inner.write(o, &d)?;
        }
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.dead()?;
        self.volatile.lock().unwrap().push((offset, data.to_vec()));
        Ok(())
    }
    fn close(&self) -> Result<(), std::io::Error> {
        // Power is off: nothing volatile reaches the file.
        self.volatile.lock().unwrap().clear();
        self.inner.close()
    }
    delegate_locks!();
}

/// Runs appends (acknowledged when `apply` returns) mixed with leases and settles, cuts the
/// power after `cut_after` operations, reopens the file and returns (acknowledged, lost).
fn power_cut_run(seed: u64, cut_after: usize, break_durability: bool) -> (usize, Vec<String>) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.redb");
    let (backend, cut, _) = power_cut(&path);
    let mut store =
        WalStore::open_with_backend(backend, &path, vec!["s".into()], limits()).unwrap();
    if break_durability {
        store.break_durability_for_negative_control();
    }
    let mut acked: Vec<String> = Vec::new();
    let mut leased: Vec<u64> = Vec::new();
    let mut n = 0;
    for op_no in 0..cut_after {
        let op = match rng.random_range(0..4) {
            0 | 1 => {
                let k: Vec<Record> = (0..rng.random_range(1..20))
                    .map(|_| {
                        n += 1;
                        rec(&format!("k{n}"))
                    })
                    .collect();
                Op::Append(k)
            }
            2 => Op::Lease {
                sink: "s".into(),
                max: 10,
                fill: None,
                lanes: None,
            },
            _ => Op::Settle {
                sink: "s".into(),
                outcomes: leased.drain(..).map(|q| (q, Outcome::Acked)).collect(),
            },
        };
        let keys: Vec<String> = match &op {
            Op::Append(v) => v.iter().map(|r| r.idempotency_key.clone()).collect(),
            _ => vec![],
        };
        let (s, results) = store.apply(vec![op], op_no as u64).unwrap();
        store = s;
        match &results[0] {
            OpResult::Appended(Ok(_)) => acked.extend(keys), // the ack
            OpResult::Leased(v) => leased.extend(v.iter().map(|l| l.seq)),
            _ => {}
        }
    }
    cut.store(true, Ordering::SeqCst);
    drop(store);
    // Power back: reopen the plain file. Every acknowledged key must be there, either still
    // pending or already acked by the sink (then its idempotency row remains).
    let reopened = WalStore::open(&path, vec!["s".into()], limits()).unwrap();
    let present = reopened.dump().unwrap().idem;
    let lost = acked
        .iter()
        .filter(|k| !present.contains(*k))
        .cloned()
        .collect();
    (acked.len(), lost)
}

#[test]
fn power_loss_never_loses_an_acknowledged_append() {
    let mut acked_total = 0;
    for seed in 0..40u64 {
        let (acked, lost) = power_cut_run(seed, 5 + (seed as usize * 7) % 60, false);
        assert!(
            lost.is_empty(),
            "seed {seed}: {} of {acked} acknowledged appends lost: {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        acked_total += acked;
    }
    eprintln!("power loss: 40 cuts, {acked_total} acknowledged appends, 0 lost");
    assert!(
        acked_total > 500,
        "the runs acknowledged too little to mean anything: {acked_total}"
    );
}

#[test]
fn negative_control_power_loss_catches_acks_before_fsync() {
    // The same runs with appends committed without fsync: the check above must see loss.
    let runs: Vec<(usize, usize)> = (0..40u64)
        .map(|seed| {
            let (acked, lost) = power_cut_run(seed, 5 + (seed as usize * 7) % 60, true);
            (acked, lost.len())
        })
        .collect();
    let lost_runs = runs.iter().filter(|(_, l)| *l > 0).count();
    let lost: usize = runs.iter().map(|(_, l)| l).sum();
    let acked: usize = runs.iter().map(|(a, _)| a).sum();
    eprintln!(
        "negative control: {lost_runs} of 40 cuts lost acknowledged appends ({lost} of {acked})"
    );
    assert!(
        lost_runs > 0,
        "the power-loss check cannot see a non-durable ack: it proves nothing"
    );
}
