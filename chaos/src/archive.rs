//! The S3 archive sink of a `--s3` campaign: its store, its `[[sinks]]` table, and the
//! follower that reads back what arrived in the store into the ledger.

use crate::ledger::Ledger;
use crate::store::{Store, ACCESS_KEY, SECRET_KEY};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SINK: &str = "archive";
pub const BUCKET: &str = "chaos-archive";

/// The sink's config: small objects (100 records or 1 s), credentials in files in `dir`.
pub fn sink_config(store: &Store, dir: &Path) -> std::io::Result<String> {
    let (ak, sk) = (dir.join("s3.key"), dir.join("s3.secret"));
    for (p, v) in [(&ak, ACCESS_KEY), (&sk, SECRET_KEY)] {
        std::fs::write(p, v)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(format!(
        "[[sinks]]\nname = \"{SINK}\"\ntype = \"s3\"\nbucket = \"{BUCKET}\"\nendpoint = \"{}\"\n\
         force_path_style = true\nregion = \"us-east-1\"\naccess_key_id_file = {:?}\n\
         secret_access_key_file = {:?}\nallow_insecure = true\nmax_batch_records = 100\n\
         max_batch_age_ms = 1000\ntimeout_ms = 5000\n",
        store.endpoint(),
        ak.display().to_string(),
        sk.display().to_string()
    ))
}

/// Reads the store every 250 ms until aborted; each record of each object goes into the
/// ledger once per object key (an object put again under its key is the same delivery; the
/// same reading in two objects is a duplicate).
pub fn follow(store_root: &Path, ledger: Arc<Mutex<Ledger>>) -> tokio::task::JoinHandle<()> {
    let reader = Store::reader(store_root);
    tokio::spawn(async move {
        let mut seen: HashSet<(String, String)> = HashSet::new();
        loop {
            if let Ok(objects) = reader.objects(BUCKET) {
                let mut l = ledger.lock().expect("ledger");
                for o in objects {
                    for r in &o.records {
                        let key = r["idempotency_key"].as_str().unwrap_or("").to_string();
                        if seen.insert((o.key.clone(), key)) {
                            crate::sink::deliver_record(&mut l, SINK, r);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}
