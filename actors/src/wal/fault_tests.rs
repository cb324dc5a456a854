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

#[derive(Debug)]
struct Faulty {
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
    fn lock_shared_range(&self, a: Bound<u64>, b: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_shared_range(a, b)
    }
    fn unlock_range(&self, a: Bound<u64>, b: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.unlock_range(a, b)
    }
    fn query_lock_range(&self, a: Bound<u64>, b: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.query_lock_range(a, b)
    }
}

fn rec(key: &str) -> Record {
    super::tests::rec(key, 1)
}

fn open_faulty(path: &std::path::Path) -> (WalStore, Arc<AtomicBool>, Arc<AtomicBool>) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    let (fail_sync, disk_full) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let backend = Faulty {
        inner: FileBackend::new(file).unwrap(),
        fail_sync: fail_sync.clone(),
        disk_full: disk_full.clone(),
    };
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
