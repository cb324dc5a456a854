//! Opening the WAL file: creating its tables, migrating an older format in the transaction
//! that stamps the new one, refusing a newer one, and rebuilding the in-memory mirrors.

use super::*;

pub(super) fn open_error(path: &Path, source: redb::DatabaseError) -> WalError {
    match source {
        redb::DatabaseError::DatabaseAlreadyOpen => WalError::AlreadyOpen,
        source => WalError::Open {
            path: path.to_path_buf(),
            source,
        },
    }
}

impl WalStore {
    /// Opens (creating if needed) the WAL at `path`. Blocking: call from a blocking thread.
    pub fn open(path: &Path, sinks: Vec<String>, limits: WalLimits) -> Result<WalStore, WalError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| WalError::Storage(e.to_string()))?;
        }
        let db = Database::builder()
            .set_cache_size(limits.cache_bytes)
            .create(path)
            .map_err(|e| open_error(path, e))?;
        // Readings are the operator's data: owner only, whatever the umask.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| WalError::Storage(format!("chmod 600 {}: {e}", path.display())))?;
        }
        Self::from_db(db, path, sinks, limits)
    }

    /// Opens over a caller-supplied storage backend (fault-injection tests); `path` is only
    /// reported in stats.
    #[doc(hidden)]
    pub fn open_with_backend(
        backend: impl redb::StorageBackend,
        path: &Path,
        sinks: Vec<String>,
        limits: WalLimits,
    ) -> Result<WalStore, WalError> {
        let db = Database::builder()
            .set_cache_size(limits.cache_bytes)
            .create_with_backend(backend)
            .map_err(|e| open_error(path, e))?;
        Self::from_db(db, path, sinks, limits)
    }

    fn from_db(
        db: Database,
        path: &Path,
        sinks: Vec<String>,
        limits: WalLimits,
    ) -> Result<WalStore, WalError> {
        let txn = db.begin_write()?;
        // Create every table so readers never meet a missing one.
        txn.open_table(RECORDS)?;
        txn.open_table(TIMES)?;
        txn.open_table(PENDING)?;
        txn.open_table(DEAD)?;
        txn.open_table(REJECTED)?;
        txn.open_table(IDEM)?;
        txn.open_table(DEVICE_USAGE)?;
        txn.open_table(UNLEASED)?;
        txn.open_table(history::runs::ACKS)?;
        let mut meta = Meta::load(&txn)?;
        if meta.format_version > FORMAT_VERSION {
            txn.abort()?;
            return Err(WalError::NewerFormat {
                path: path.to_path_buf(),
                found: meta.format_version,
                supported: FORMAT_VERSION,
            });
        }
        // A file with records but no version is format 1; an empty new file needs no words.
        let migrated_from = match meta.format_version {
            0 if meta.next_seq > 1 => Some(1),
            0 => None,
            v if v < FORMAT_VERSION => Some(v),
            _ => None,
        };
        meta.format_version = FORMAT_VERSION;
        // Format 6 and earlier: idempotency rows per key (5 and earlier) become rows per
        // commit; format 6's rows are packed again.
        let dropped = idem_rows::migrate(&txn, &meta)?;
        // Format 3 and earlier: append times per record (`refs`) become rows per commit.
        times::migrate_refs(&txn)?;
        // Format 4 and earlier: lifecycle rows per record become runs of acks.
        history::runs::migrate_lifecycles(&txn, &mut meta)?;
        let last_time = txn.open_table(TIMES)?.last()?.map(|(_, t)| t.value());
        let devices = if meta.device_usage_v1 == 1 {
            Devices::load(&txn.open_table(DEVICE_USAGE)?)?
        } else {
            let mut d = Devices::scan(&txn.open_table(RECORDS)?)?;
            d.save(&mut txn.open_table(DEVICE_USAGE)?)?;
            meta.device_usage_v1 = 1;
            d
        };
        if meta.clock_ms == 0 {
            meta.clock_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_millis() as u64);
        }
        // The index, read from the rows; their entries recounted as it goes.
        let (idem, entries) = idem_rows::load_index(
            &txn.open_table(IDEM)?,
            meta.next_seq,
            limits.idempotency_max_keys,
        )?;
        meta.idem_keys = entries;
        meta.save(&txn)?;
        // Each configured sink has its open range; a sink that left gets its rows.
        let mut unleased = Unleased::load(&txn.open_table(UNLEASED)?)?;
        {
            let mut tx = Tx::open(&txn)?;
            unleased.reconcile(&mut tx, &sinks, meta.next_seq)?;
            unleased.save(&mut tx.unleased)?;
        }
        txn.commit()?;
        if let Some(from) = migrated_from {
            tracing::warn!(
                from,
                to = FORMAT_VERSION,
                records = meta.records,
                "WAL migrated to the new format; the backlog and dead letters are kept (an \
                 older release can no longer open this file)"
            );
        }
        if let Some(n) = dropped {
            tracing::warn!(
                keys = n,
                "WAL upgraded: idempotency keys are now scoped to the device and checked \
                 against the reading's content; the {n} keys of the old format were dropped \
                 (a retry of a reading accepted before the upgrade is stored again: a \
                 duplicate downstream, never a loss)"
            );
        }
        Ok(WalStore {
            db: std::sync::Arc::new(std::sync::RwLock::new(db)),
            path: path.to_path_buf(),
            sinks,
            limits,
            meta,
            inflight: HashMap::new(),
            unleased,
            last_time,
            history_cursor: (0, 0),
            stored_mark: 0,
            live_from: HashMap::new(),
            expiry_cursor: 0,
            idem,
            idem_buf: IdemBuf::default(),
            devices,
            free_space: free_space_of(path.parent().unwrap_or(Path::new(".")).to_path_buf()),
            file_bytes: std::fs::metadata(path).map_or(0, |m| m.len()),
            compact_floor: 0,
            compact_after_ms: 0,
            compact_ready_at: None,
            dead_events: Vec::new(),
            oldest_pending: BTreeMap::new(),
            tight: false,
            // Only in a build with the `negative-control` feature (never a default): the
            // chaos harness's proof that it can see loss.
            negative_control_non_durable: cfg!(feature = "negative-control"),
        })
    }
}
