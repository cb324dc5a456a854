//! File sink: JSON Lines, fsync'd before the batch counts as delivered.
//!
//! The embedded default, so the gateway does its whole job on one machine. A crash between
//! write and settle repeats lines on redelivery; `idempotency_key` tells them apart.

use super::{json::write_record, PublishResult};
use crate::wal::Leased;
use edge_gateway_config::FileSinkConfig;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub struct FileSink {
    path: PathBuf,
    file: Arc<Mutex<std::fs::File>>,
}

impl FileSink {
    pub async fn open(cfg: &FileSinkConfig, data_dir: &Path) -> Result<FileSink, String> {
        let rel = cfg.path.clone();
        let path = if rel.is_absolute() {
            rel
        } else {
            data_dir.join(rel)
        };
        let p = path.clone();
        let file = tokio::task::spawn_blocking(move || {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut o = std::fs::OpenOptions::new();
            o.create(true).append(true);
            // Owner and group (a shipper reading it); never others.
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o640);
            o.open(&p)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("open {}: {e}", path.display()))?;
        Ok(FileSink {
            path,
            file: Arc::new(Mutex::new(file)),
        })
    }

    pub async fn publish(&mut self, batch: &[Leased]) -> PublishResult {
        let mut buf = Vec::with_capacity(batch.len() * 256);
        for l in batch {
            write_record(&mut buf, l);
            buf.push(b'\n');
        }
        let file = self.file.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut f = file
                .lock()
                .map_err(|_| std::io::Error::other("file sink lock poisoned"))?;
            f.write_all(&buf)?;
            f.sync_data()
        })
        .await;
        match written {
            Ok(Ok(())) => PublishResult::Delivered,
            // A disk that refuses the write blames no record.
            Ok(Err(e)) => PublishResult::outage(format!("write {}: {e}", self.path.display())),
            Err(e) => PublishResult::Transient(format!("write task: {e}")),
        }
    }
}
