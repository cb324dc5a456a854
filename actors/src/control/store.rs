//! The control plane's durable record of commands (`control.redb` in the data directory):
//! each command by `command_id` — who sent it, when, what, its state and result — and their
//! order, newest last. It answers duplicates (a `command_id` seen before returns its record and
//! nothing acts again, across restarts) and is the audit trail. At most `max_commands` are
//! kept; the oldest beyond it are removed in the transaction that adds a new one.
//!
//! Blocking (redb, fsync): called from `spawn_blocking` only.

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// command_id -> JSON `CommandRecord`.
const COMMANDS: TableDefinition<&str, &[u8]> = TableDefinition::new("commands");
/// order (increasing) -> command_id.
const ORDER: TableDefinition<u64, &str> = TableDefinition::new("order");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("control store: {0}")]
    Redb(String),
    #[error("control store: corrupt record of {0}")]
    Corrupt(String),
}

fn redb_err<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Redb(e.to_string())
}

/// One command as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub command_id: String,
    pub kind: String,
    /// Which door it came through: `admin` (the admin API) or `mqtt`.
    pub door: String,
    /// RFC 3339, when the gateway took it.
    pub received_at: String,
    /// `accepted` (recorded, acting), `done` or `failed`.
    pub state: String,
    /// The request as sent.
    pub request: serde_json::Value,
    /// The answer (`done`) or the error (`failed`).
    #[serde(default)]
    pub result: serde_json::Value,
    #[serde(default)]
    pub finished_at: Option<String>,
}

pub struct ControlStore {
    db: Database,
    max_commands: usize,
}

impl ControlStore {
    pub fn open(path: &Path, max_commands: usize) -> Result<ControlStore, StoreError> {
        let db = Database::create(path).map_err(redb_err)?;
        let txn = db.begin_write().map_err(redb_err)?;
        txn.open_table(COMMANDS).map_err(redb_err)?;
        txn.open_table(ORDER).map_err(redb_err)?;
        txn.commit().map_err(redb_err)?;
        Ok(ControlStore { db, max_commands })
    }

    pub fn get(&self, command_id: &str) -> Result<Option<CommandRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(redb_err)?;
        let t = txn.open_table(COMMANDS).map_err(redb_err)?;
        let Some(v) = t.get(command_id).map_err(redb_err)? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|_| StoreError::Corrupt(command_id.to_string()))
    }

    /// Records a new command (a duplicate `command_id` is the caller's to check first) or
    /// replaces an existing one's record in place (its state moved on). Durable on return.
    pub fn put(&self, r: &CommandRecord) -> Result<(), StoreError> {
        let body = serde_json::to_vec(r).expect("records serialise");
        let txn = self.db.begin_write().map_err(redb_err)?;
        {
            let mut commands = txn.open_table(COMMANDS).map_err(redb_err)?;
            let new = commands
                .insert(r.command_id.as_str(), body.as_slice())
                .map_err(redb_err)?
                .is_none();
            if new {
                let mut order = txn.open_table(ORDER).map_err(redb_err)?;
                let next = order
                    .last()
                    .map_err(redb_err)?
                    .map_or(0, |(k, _)| k.value() + 1);
                order
                    .insert(next, r.command_id.as_str())
                    .map_err(redb_err)?;
                while order.len().map_err(redb_err)? as usize > self.max_commands {
                    let Some((_, id)) = order.pop_first().map_err(redb_err)? else {
                        break;
                    };
                    commands.remove(id.value()).map_err(redb_err)?;
                }
            }
        }
        txn.commit().map_err(redb_err)
    }

    /// The newest `limit` commands, newest first.
    pub fn list(&self, limit: usize) -> Result<Vec<CommandRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(redb_err)?;
        let order = txn.open_table(ORDER).map_err(redb_err)?;
        let commands = txn.open_table(COMMANDS).map_err(redb_err)?;
        let mut out = Vec::new();
        for row in order.iter().map_err(redb_err)?.rev().take(limit) {
            let (_, id) = row.map_err(redb_err)?;
            if let Some(v) = commands.get(id.value()).map_err(redb_err)? {
                out.push(
                    serde_json::from_slice(v.value())
                        .map_err(|_| StoreError::Corrupt(id.value().to_string()))?,
                );
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, state: &str) -> CommandRecord {
        CommandRecord {
            command_id: id.into(),
            kind: "ping".into(),
            door: "admin".into(),
            received_at: "2026-11-22T23:00:00Z".into(),
            state: state.into(),
            request: serde_json::json!({"command_id": id, "kind": "ping"}),
            result: serde_json::Value::Null,
            finished_at: None,
        }
    }

    #[test]
    fn commands_survive_reopening_in_order_and_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.redb");
        {
            let s = ControlStore::open(&path, 3).unwrap();
            for i in 0..5 {
                s.put(&rec(&format!("c-{i}"), "accepted")).unwrap();
            }
            // A state change replaces the record in place, not as a newer command.
            s.put(&rec("c-2", "done")).unwrap();
        }
        let s = ControlStore::open(&path, 3).unwrap();
        let ids: Vec<String> = s
            .list(10)
            .unwrap()
            .into_iter()
            .map(|r| r.command_id)
            .collect();
        assert_eq!(ids, ["c-4", "c-3", "c-2"], "newest first, the oldest gone");
        assert_eq!(s.get("c-2").unwrap().unwrap().state, "done");
        assert_eq!(s.get("c-0").unwrap(), None);
    }
}
