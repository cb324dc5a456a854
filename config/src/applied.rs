//! Changes applied by the control plane (`config.apply`, issue 12), kept in
//! `<data_dir>/config.applied.toml` so they survive a restart.
//!
//! Precedence, lowest first: embedded defaults < the file < **applied changes** < environment
//! < command-line flags. A change may not touch a key the environment or a flag sets (it would
//! be undone at the next start): such a change is refused, naming the key. Only the keys in
//! [`LIVE_KEYS`] can be applied without a restart; any other is refused too, so what the
//! gateway runs is always what `config.get` says.

use crate::layers::{load_with, LoadOptions};
use crate::model::Config;
use crate::validate::{ConfigError, ConfigProblem};
use std::io::Write;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// What `config.apply` may change while the gateway runs (a table name covers its keys).
pub const LIVE_KEYS: [&str; 9] = [
    "sinks",
    "routes",
    "log.level",
    "delivery.batch_size",
    "delivery.backoff_initial_ms",
    "delivery.backoff_max_ms",
    "delivery.poll_interval_ms",
    "delivery.max_records_per_sec",
    "delivery.live_first",
];

pub const APPLIED_FILE: &str = "config.applied.toml";

pub fn applied_path(data_dir: &Path) -> PathBuf {
    data_dir.join(APPLIED_FILE)
}

/// The applied changes, if any (an unreadable file is an error: starting without them would
/// silently run an older configuration).
pub fn read_applied(data_dir: &Path) -> Result<Table, ConfigError> {
    let path = applied_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.parse::<Table>().map_err(|e| ConfigError::Syntax {
            origin: path.display().to_string(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Table::new()),
        Err(source) => Err(ConfigError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Replaces the applied changes atomically: a crash leaves the old file or the new one.
pub fn write_applied(data_dir: &Path, applied: &Table) -> std::io::Result<()> {
    let path = applied_path(data_dir);
    let tmp = path.with_extension("toml.tmp");
    let text = format!(
        "# Written by edge-gateway (config.apply): changes applied over the configuration \
         file.\n# Precedence: file < this < environment < flags. Delete it to drop them.\n{}",
        toml::to_string(applied).map_err(std::io::Error::other)?
    );
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// Dotted paths of every leaf `t` sets (arrays are leaves).
fn leaves(t: &Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in t {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(inner) => leaves(inner, &path, out),
            _ => out.push(path),
        }
    }
}

fn live(path: &str) -> bool {
    LIVE_KEYS
        .iter()
        .any(|k| path == *k || path.starts_with(&format!("{k}.")))
}

/// `over` merged into `base`: tables key by key, anything else replaced.
pub fn merge(base: &mut Table, over: &Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The configuration `change` would make, and the applied changes to keep for it; every
/// problem at once, nothing applied on any. `applied` is what was applied before.
pub fn apply_change(
    opts: &LoadOptions,
    applied: &Table,
    change: &Table,
) -> Result<(Config, Table), ConfigError> {
    let mut problems = Vec::new();
    let mut paths = Vec::new();
    leaves(change, "", &mut paths);
    let pinned: Vec<String> = opts
        .env
        .iter()
        .map(|(k, _)| k.clone())
        .chain(opts.overrides.iter().map(|o| {
            o.split_once('=')
                .map_or(o.as_str(), |(k, _)| k)
                .trim()
                .to_string()
        }))
        .collect();
    for p in &paths {
        if !live(p) {
            problems.push(ConfigProblem {
                path: p.clone(),
                message: format!(
                    "cannot be applied while the gateway runs (live: {}); change the file and \
                     restart",
                    LIVE_KEYS.join(", ")
                ),
            });
        } else if let Some(pin) = pinned
            .iter()
            .find(|k| *k == p || k.starts_with(&format!("{p}.")) || p.starts_with(&format!("{k}.")))
        {
            problems.push(ConfigProblem {
                path: p.clone(),
                message: format!(
                    "set by the environment or a flag ({pin}), which take precedence: it would \
                     be undone at the next start"
                ),
            });
        }
    }
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    let mut next = applied.clone();
    merge(&mut next, change);
    let cfg = load_with(opts, Some(&next))?;
    Ok((cfg, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> Table {
        s.parse().unwrap()
    }

    #[test]
    fn changes_merge_over_the_file_and_under_env_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gw.toml");
        std::fs::write(
            &file,
            "[delivery]\nbatch_size = 10\nbackoff_max_ms = 999\n[log]\nlevel = \"info\"\n",
        )
        .unwrap();
        let opts = LoadOptions {
            file: Some(file),
            env: vec![("log.level".into(), "debug".into())],
            overrides: vec![],
        };
        let (cfg, applied) = apply_change(
            &opts,
            &Table::new(),
            &table("[delivery]\nbatch_size = 50\n"),
        )
        .unwrap();
        assert_eq!(cfg.delivery.batch_size, 50, "the change");
        assert_eq!(cfg.delivery.backoff_max_ms, 999, "the file, untouched");
        assert_eq!(cfg.log.level, "debug", "the environment");
        assert_eq!(applied, table("[delivery]\nbatch_size = 50\n"));
        // Refused, every problem at once: not live, pinned by the environment, invalid.
        let e = apply_change(
            &opts,
            &applied,
            &table("gateway_id = \"x\"\n[log]\nlevel = \"trace\"\n[http]\nmax_batch = 0\n"),
        )
        .unwrap_err()
        .to_string();
        for want in ["gateway_id", "log.level", "http.max_batch"] {
            assert!(e.contains(want), "{want} in {e}");
        }
        // Valid keys, invalid values: the same validation as a file.
        let e = apply_change(&opts, &applied, &table("[delivery]\nbatch_size = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("delivery.batch_size"), "{e}");
    }

    #[test]
    fn the_applied_file_is_replaced_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_applied(dir.path()).unwrap().is_empty());
        let t = table("[[routes]]\ndevices = \"*\"\nsinks = [\"a\"]\n");
        write_applied(dir.path(), &t).unwrap();
        assert_eq!(read_applied(dir.path()).unwrap(), t);
    }
}
