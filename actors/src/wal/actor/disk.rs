//! The WAL file's reserve: space set aside so settles keep committing on a full disk.

use crate::wal::WalLimits;
use std::path::PathBuf;

/// Everything needed to (re)open the store and keep its reserve file.
#[derive(Clone)]
pub(super) struct OpenArgs {
    pub(super) path: PathBuf,
    pub(super) sinks: Vec<String>,
    pub(super) limits: WalLimits,
    pub(super) reserve_bytes: u64,
    pub(super) min_free_bytes: u64,
}

impl OpenArgs {
    pub(super) fn reserve_path(&self) -> PathBuf {
        self.path.with_extension("reserve")
    }
}

/// Makes the reserve file if it is missing and the filesystem can spare it with
/// `min_free_bytes` to go; true if it is in place. Blocking.
pub(super) fn ensure_reserve(o: &OpenArgs) -> bool {
    use std::io::Write;
    if o.reserve_bytes == 0 {
        return true;
    }
    let path = o.reserve_path();
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= o.reserve_bytes) {
        return true;
    }
    let dir = o
        .path
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let free = (crate::wal::store::free_space_of(dir))().unwrap_or(0);
    // Room for the reserve and as much again beyond `min_free_bytes`: made back the moment
    // its own size is free, it would take again exactly what its release gave delivery.
    if free
        < o.reserve_bytes
            .saturating_mul(2)
            .saturating_add(o.min_free_bytes)
    {
        return false;
    }
    let made = (|| {
        let mut f = std::fs::File::create(&path)?;
        // Blocks reserved without writing them, where the filesystem can; else zeros.
        let flags = rustix::fs::FallocateFlags::empty();
        if rustix::fs::fallocate(&f, flags, 0, o.reserve_bytes).is_ok() {
            return f.sync_all();
        }
        let chunk = vec![0u8; 1 << 20];
        let mut left = o.reserve_bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        f.sync_all()
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    made.is_ok()
}
