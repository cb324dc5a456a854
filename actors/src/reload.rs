//! Files the gateway re-reads while it runs (`tls.reload`, SIGHUP, or a change on disk; issue
//! 12): listener certificates and keys, client CA files, token files. A new file is checked
//! whole before it replaces the old one: a bad one is refused and the old one stays in force.
//! Connections already open keep what they were made with; new ones get the new files.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Something built from files that can be built again.
pub trait Reload: Send + Sync {
    /// The files it is built from (a change to any of them calls for a reload).
    fn files(&self) -> Vec<PathBuf>;
    /// Builds it again from the files; on error the old one stays.
    fn reload(&self) -> Result<(), String>;
}

/// The files' contents, hashed (a missing file hashes as empty).
pub fn fingerprint(files: &[PathBuf]) -> [u8; 32] {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        h.update(std::fs::read(f).unwrap_or_default());
    }
    h.finalize().into()
}

struct Entry {
    item: Arc<dyn Reload>,
    seen: [u8; 32],
}

/// Everything reloadable, by name (`http_ingest`, `admin`, `tokens`).
#[derive(Clone, Default)]
pub struct Reloader(Arc<Mutex<BTreeMap<String, Entry>>>);

/// What one reload did, per item: `reloaded`, `unchanged`, or the error that kept the old one.
pub type ReloadReport = BTreeMap<String, Result<&'static str, String>>;

impl Reloader {
    /// Registers (or replaces, after a restart of its owner) an item.
    pub fn register(&self, name: &str, item: Arc<dyn Reload>) {
        let seen = fingerprint(&item.files());
        self.0
            .lock()
            .expect("reloader")
            .insert(name.to_string(), Entry { item, seen });
    }

    /// Reloads every item whose files changed (`force`: every item). Blocking (file reads).
    pub fn reload(&self, force: bool) -> ReloadReport {
        let mut out = ReloadReport::new();
        let mut items = self.0.lock().expect("reloader");
        for (name, e) in items.iter_mut() {
            let now = fingerprint(&e.item.files());
            if !force && now == e.seen {
                continue;
            }
            let r = e.item.reload();
            match &r {
                Ok(()) => {
                    e.seen = now;
                    tracing::info!(item = %name, "reloaded from its files");
                }
                Err(why) => {
                    // Remember the bad version: it is reported once, not every poll.
                    e.seen = now;
                    tracing::error!(item = %name, error = %why, "reload refused: the files in use stay");
                }
            }
            out.insert(name.clone(), r.map(|()| "reloaded"));
        }
        if force {
            for name in items.keys() {
                out.entry(name.clone()).or_insert(Ok("unchanged"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Item(PathBuf, AtomicUsize);
    impl Reload for Item {
        fn files(&self) -> Vec<PathBuf> {
            vec![self.0.clone()]
        }
        fn reload(&self) -> Result<(), String> {
            let s = std::fs::read_to_string(&self.0).map_err(|e| e.to_string())?;
            if s.contains("bad") {
                return Err("bad file".into());
            }
            self.1.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    #[test]
    fn only_changed_files_reload_and_a_bad_one_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cert.pem");
        std::fs::write(&f, "v1").unwrap();
        let item = Arc::new(Item(f.clone(), AtomicUsize::new(0)));
        let r = Reloader::default();
        r.register("x", item.clone());
        assert!(r.reload(false).is_empty(), "nothing changed");
        std::fs::write(&f, "v2").unwrap();
        assert_eq!(r.reload(false)["x"], Ok("reloaded"));
        std::fs::write(&f, "bad").unwrap();
        assert!(r.reload(false)["x"].is_err());
        assert!(r.reload(false).is_empty(), "reported once");
        assert_eq!(item.1.load(Ordering::Relaxed), 1);
        assert!(r.reload(true)["x"].is_err(), "forced: tried again");
    }
}
