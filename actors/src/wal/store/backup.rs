//! `edge-gateway wal backup DEST` (issue 14): a consistent copy of the WAL, taken from one read
//! transaction — so while the gateway runs, beside its commits, it holds exactly what some
//! commit held: every reading acknowledged before the backup began. Leases are not copied (they
//! live in memory): restored, in-flight records are delivered again (duplicates, same keys).
//!
//! Written to `DEST.partial`, synced, then renamed: a backup interrupted part way never looks
//! like a finished one. `DEST` must not exist.

use super::*;
use redb::ReadTransaction;
use serde::Serialize;

/// What a backup wrote.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub dest: String,
    pub records: u64,
    pub bytes: u64,
    pub millis: u64,
}

/// Rows copied so far of how many, for a progress display.
struct Copied<'a> {
    done: u64,
    total: u64,
    progress: &'a mut dyn FnMut(u64, u64),
}

fn copy<K: redb::Key + 'static, V: redb::Value + 'static>(
    src: &ReadTransaction,
    dst: &WriteTransaction,
    def: TableDefinition<K, V>,
    c: &mut Copied<'_>,
) -> Result<u64, WalError> {
    let from = src.open_table(def)?;
    let mut to = dst.open_table(def)?;
    let mut n = 0;
    for row in from.iter()? {
        let (k, v) = row?;
        to.insert(k.value(), v.value())?;
        n += 1;
        c.done += 1;
        if c.done.is_multiple_of(PROGRESS_EVERY) {
            (c.progress)(c.done, c.total);
        }
    }
    Ok(n)
}

/// Rows of every table a backup copies.
fn rows(src: &ReadTransaction) -> Result<u64, WalError> {
    Ok(src.open_table(RECORDS)?.len()?
        + times::table(src)?.map_or(Ok(0), |t| t.len())?
        + src.open_table(PENDING)?.len()?
        + src.open_table(DEAD)?.len()?
        + src.open_table(META)?.len()?
        + src.open_table(REJECTED)?.len()?
        + match src.open_table(IDEM) {
            Ok(t) => t.len()?,
            Err(_) => 0,
        }
        + match src.open_table(IDEM_V3) {
            Ok(t) => t.len()?,
            Err(_) => 0,
        }
        + match src.open_table(idem::IDEM_V2) {
            Ok(t) => t.len()?,
            Err(_) => 0,
        }
        + src.open_table(DEVICE_USAGE)?.len()?
        + history::runs::table(src)?.map_or(Ok(0), |t| t.len())?
        + match src.open_table(history::runs::HISTORY_V4) {
            Ok(t) => t.len()?,
            Err(_) => 0,
        }
        + unleased::table(src)?.map_or(Ok(0), |t| t.len())?)
}

fn storage(what: &str, e: impl std::fmt::Display) -> WalError {
    WalError::Storage(format!("{what}: {e}"))
}

/// Copies every table of `src`'s snapshot into a new WAL file at `dest`.
pub(super) fn write(
    src: &ReadTransaction,
    dest: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<BackupReport, WalError> {
    let started = std::time::Instant::now();
    if dest.exists() {
        return Err(WalError::Storage(format!(
            "{} exists: a backup never overwrites a file",
            dest.display()
        )));
    }
    let partial = dest.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let db = Database::create(&partial).map_err(|e| storage("creating the backup", e))?;
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| storage("durability", e))?;
    let mut c = Copied {
        done: 0,
        total: rows(src)?,
        progress,
    };
    (c.progress)(0, c.total);
    let records = copy(src, &txn, RECORDS, &mut c)?;
    if times::table(src)?.is_some() {
        copy(src, &txn, TIMES, &mut c)?;
    }
    // A file not opened since an older release still has its per-record times there.
    let has = |name: &str| -> Result<bool, WalError> {
        Ok(src
            .list_tables()?
            .any(|t| redb::TableHandle::name(&t) == name))
    };
    if has("refs")? {
        copy(src, &txn, times::REFS, &mut c)?;
    }
    // And its lifecycle rows (format 4 and earlier).
    if has("history")? {
        copy(src, &txn, history::runs::HISTORY_V4, &mut c)?;
    }
    copy(src, &txn, PENDING, &mut c)?;
    copy(src, &txn, DEAD, &mut c)?;
    copy(src, &txn, META, &mut c)?;
    copy(src, &txn, REJECTED, &mut c)?;
    // Idempotency rows: a row per commit (packed as format 7 or 6), or per key in a file of
    // format 5 or earlier.
    if has("idem_v4")? {
        copy(src, &txn, IDEM, &mut c)?;
    }
    if has("idem_v3")? {
        copy(src, &txn, IDEM_V3, &mut c)?;
    }
    if has(idem::IDEM_V2_NAME)? {
        copy(src, &txn, idem::IDEM_V2, &mut c)?;
    }
    copy(src, &txn, DEVICE_USAGE, &mut c)?;
    if history::runs::table(src)?.is_some() {
        copy(src, &txn, history::runs::ACKS, &mut c)?;
    }
    if unleased::table(src)?.is_some() {
        copy(src, &txn, UNLEASED, &mut c)?;
    }
    (c.progress)(c.done, c.total);
    txn.commit()?;
    drop(db);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| storage("chmod 600", e))?;
    }
    std::fs::File::open(&partial)
        .and_then(|f| f.sync_all())
        .map_err(|e| storage("syncing the backup", e))?;
    std::fs::rename(&partial, dest).map_err(|e| storage("renaming the backup", e))?;
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| storage("syncing the backup's directory", e))?;
    }
    Ok(BackupReport {
        dest: dest.display().to_string(),
        records,
        bytes: std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0),
        millis: started.elapsed().as_millis() as u64,
    })
}

impl WalReader {
    /// A consistent copy of the WAL at `dest`, beside the running writer. Blocking.
    pub fn backup(&self, dest: &Path) -> Result<BackupReport, WalError> {
        let db = read_db(&self.0);
        let txn = db.begin_read()?;
        write(&txn, dest, &mut |_, _| {})
    }
}

impl WalStore {
    /// A copy of a WAL file no process holds open.
    pub fn offline_backup(
        path: &Path,
        dest: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<BackupReport, WalError> {
        let db = Database::open(path).map_err(|e| open_error(path, e))?;
        let txn = db.begin_read()?;
        write(&txn, dest, progress)
    }
}
