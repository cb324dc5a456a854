//! File sink: JSON Lines, fsync'd before the batch counts as delivered.
//!
//! The embedded default, so the gateway does its whole job on one machine — and so it must
//! not be what fills the disk. `path` is a template (`%Y`, `%m`, `%d`, `%H`, UTC, at write
//! time: `records-%Y-%m-%d.jsonl` starts a file a day); a file that would grow past
//! `max_file_bytes` is rotated first (renamed `{stem}.{unix_ms}.{ext}`); after each new file
//! only the newest `max_files` of the sink's own files ([`is_family`]: names the template
//! renders, and those renamed aside) are kept. Output is bounded by `max_file_bytes ×
//! max_files` (defaults: 64 MiB × 8).
//!
//! A crash between write and settle repeats lines on redelivery; `idempotency_key` tells them
//! apart. A write that fails (a full disk) blames no record: an outage.

use super::{json::write_record, utc::Civil, PublishResult};
use crate::wal::Leased;
use edge_gateway_config::FileSinkConfig;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub struct FileSink {
    files: Arc<Mutex<Files>>,
}

/// The sink's files: the template and limits, and the file written now.
struct Files {
    /// Absolute path template.
    template: PathBuf,
    max_file_bytes: u64,
    max_files: usize,
    current: Option<Current>,
}

struct Current {
    path: PathBuf,
    file: File,
    bytes: u64,
}

impl FileSink {
    pub async fn open(cfg: &FileSinkConfig, data_dir: &Path) -> Result<FileSink, String> {
        let template = if cfg.path.is_absolute() {
            cfg.path.clone()
        } else {
            data_dir.join(&cfg.path)
        };
        let mut files = Files {
            template,
            max_file_bytes: cfg.max_file_bytes,
            max_files: cfg.max_files,
            current: None,
        };
        // Open (and create the directory) now: a sink that cannot write fails at start-up.
        let files = tokio::task::spawn_blocking(move || files.target(Civil::now()).map(|_| files))
            .await
            .map_err(|e| e.to_string())??;
        Ok(FileSink {
            files: Arc::new(Mutex::new(files)),
        })
    }

    pub async fn publish(&mut self, batch: &[Leased]) -> PublishResult {
        let mut buf = Vec::with_capacity(batch.len() * 256);
        for l in batch {
            write_record(&mut buf, l);
            buf.push(b'\n');
        }
        let files = self.files.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut f = files
                .lock()
                .map_err(|_| "file sink lock poisoned".to_string())?;
            f.write(&buf, Civil::now())
        })
        .await;
        match written {
            Ok(Ok(())) => PublishResult::Delivered,
            // A disk that refuses the write blames no record.
            Ok(Err(e)) => PublishResult::outage(e),
            Err(e) => PublishResult::Transient(format!("write task: {e}")),
        }
    }
}

impl Files {
    /// Appends `buf` to the file for `now`, rotating and pruning as needed; fsyncs it.
    fn write(&mut self, buf: &[u8], now: Civil) -> Result<(), String> {
        self.target(now)?;
        let full = self
            .current
            .as_ref()
            .is_some_and(|c| c.bytes > 0 && c.bytes + buf.len() as u64 > self.max_file_bytes);
        if full {
            self.rotate()?;
            self.target(now)?;
        }
        let c = self.current.as_mut().expect("opened by target");
        let r = c.file.write_all(buf).and_then(|()| c.file.sync_data());
        r.map_err(|e| format!("write {}: {e}", c.path.display()))?;
        c.bytes += buf.len() as u64;
        Ok(())
    }

    /// Makes the current file the one the template names for `now` (a new one after the
    /// hour or day turned), pruning the family when a new file starts.
    fn target(&mut self, now: Civil) -> Result<(), String> {
        let path = PathBuf::from(now.render(&self.template.to_string_lossy()));
        if self.current.as_ref().is_some_and(|c| c.path == path) {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        let mut o = OpenOptions::new();
        o.create(true).append(true);
        // Owner and group (a shipper reading it); never others.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o640);
        let file = o
            .open(&path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.current = Some(Current { path, file, bytes });
        self.prune();
        Ok(())
    }

    /// Renames the current file aside (`{stem}.{unix_ms}.{ext}`); the next write opens a new
    /// one under the template's name.
    fn rotate(&mut self) -> Result<(), String> {
        let Some(c) = self.current.take() else {
            return Ok(());
        };
        let name = c.path.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        let (stem, ext) = match name.rsplit_once('.') {
            Some((s, e)) => (s.to_string(), format!(".{e}")),
            None => (name.clone(), String::new()),
        };
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut n = ms;
        let aside = loop {
            let p = c.path.with_file_name(format!("{stem}.{n}{ext}"));
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        std::fs::rename(&c.path, &aside)
            .map_err(|e| format!("rotate {}: {e}", c.path.display()))?;
        Ok(())
    }

    /// Deletes the oldest files of the sink's family beyond `max_files` (never the current
    /// one). Best effort: a file that cannot be listed or removed is left, and logged.
    fn prune(&self) {
        let Some(current) = &self.current else { return };
        let (Some(dir), Some(tname)) = (self.template.parent(), self.template.file_name()) else {
            return;
        };
        let tname = tname.to_string_lossy();
        // Placeholders are only in the file name (validation): one directory holds the family.
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut family: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| is_family(&tname, &e.file_name().to_string_lossy()))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .filter(|(_, p)| *p != current.path)
            .collect();
        family.sort();
        let keep_old = self.max_files.saturating_sub(1);
        let excess = family.len().saturating_sub(keep_old);
        for (_, p) in family.into_iter().take(excess) {
            match std::fs::remove_file(&p) {
                Ok(()) => {
                    tracing::info!(file = %p.display(), "file sink: oldest output removed (max_files)")
                }
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "file sink: old output not removed")
                }
            }
        }
    }
}

/// Whether `name` is a file this sink wrote: one the template names (`%Y` four digits,
/// `%m` `%d` `%H` two), or such a file rotated aside (`.{unix ms}` before its extension).
/// Nothing else in the directory is ever deleted.
fn is_family(template: &str, name: &str) -> bool {
    if fits(template, name) {
        return true;
    }
    let (t_stem, ext) = template.rsplit_once('.').unwrap_or((template, ""));
    let rest = if ext.is_empty() {
        Some(name)
    } else {
        name.strip_suffix(&format!(".{ext}"))
    };
    rest.and_then(|r| r.rsplit_once('.'))
        .is_some_and(|(stem, n)| {
            // Rotated names carry Unix milliseconds: 13 digits or more.
            n.len() >= 13 && n.bytes().all(|b| b.is_ascii_digit()) && fits(t_stem, stem)
        })
}

/// Whether the template could have rendered `name`.
fn fits(template: &str, name: &str) -> bool {
    let (mut t, mut n) = (template.chars(), name);
    while let Some(c) = t.next() {
        let digits = match c {
            '%' => match t.next() {
                Some('Y') => 4,
                Some('m' | 'd' | 'H') => 2,
                Some('%') => {
                    let Some(r) = n.strip_prefix('%') else {
                        return false;
                    };
                    n = r;
                    continue;
                }
                _ => return false,
            },
            c => {
                let Some(r) = n.strip_prefix(c) else {
                    return false;
                };
                n = r;
                continue;
            }
        };
        if n.len() < digits || !n.as_bytes()[..digits].iter().all(u8::is_ascii_digit) {
            return false;
        }
        n = &n[digits..];
    }
    n.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, template: &str, max_file_bytes: u64, max_files: usize) -> Files {
        Files {
            template: dir.join(template),
            max_file_bytes,
            max_files,
            current: None,
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn files_rotate_by_size_and_only_the_newest_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = files(dir.path(), "records.jsonl", 100, 3);
        let now = Civil::from_ms(0);
        for _ in 0..10 {
            f.write(&[b'x'; 60], now).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5)); // distinct mtimes
        }
        let n = names(dir.path());
        assert_eq!(n.len(), 3, "{n:?}");
        assert!(n.contains(&"records.jsonl".to_string()));
        let total: u64 = n
            .iter()
            .map(|x| std::fs::metadata(dir.path().join(x)).unwrap().len())
            .sum();
        assert!(total <= 3 * 100, "bounded: {total}");
        // Files the sink did not write are never touched, even with names like its own.
        for other in ["other.txt", "records.backup.jsonl", "records.jsonl.gz"] {
            std::fs::write(dir.path().join(other), "keep").unwrap();
        }
        f.write(&[b'x'; 60], now).unwrap();
        f.write(&[b'x'; 60], now).unwrap();
        let n = names(dir.path());
        for other in ["other.txt", "records.backup.jsonl", "records.jsonl.gz"] {
            assert!(n.contains(&other.to_string()), "{other} kept: {n:?}");
        }
    }

    #[test]
    fn only_the_sinks_own_names_are_its_family() {
        for (t, name, yes) in [
            ("records.jsonl", "records.jsonl", true),
            ("records.jsonl", "records.1795386600000.jsonl", true),
            ("records.jsonl", "records.backup.jsonl", false),
            ("records.jsonl", "records.jsonl.gz", false),
            ("records-%Y-%m-%d.jsonl", "records-2026-11-22.jsonl", true),
            (
                "records-%Y-%m-%d.jsonl",
                "records-2026-11-22.1795386600000.jsonl",
                true,
            ),
            ("records-%Y-%m-%d.jsonl", "records-2026-11.jsonl", false),
            ("syslog", "syslog.1", false),
            ("syslog", "syslog.1795386600000", true),
            ("syslog", "syslog.1.gz", false),
        ] {
            assert_eq!(is_family(t, name), yes, "{t} / {name}");
        }
    }

    #[test]
    fn a_dated_template_starts_a_file_a_day() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = files(dir.path(), "records-%Y-%m-%d.jsonl", 1 << 20, 2);
        let day = 86_400_000;
        for d in 0..4 {
            f.write(b"{}\n", Civil::from_ms(d * day)).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(
            names(dir.path()),
            ["records-1970-01-03.jsonl", "records-1970-01-04.jsonl"]
        );
    }
}
