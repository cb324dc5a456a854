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
/// Device commands not finished yet (`queued` or `sent`): queue order -> command_id.
const QUEUE: TableDefinition<u64, &str> = TableDefinition::new("device_queue");

/// Paused sinks (`sink.pause`): sink name -> unit. They stay paused across restarts.
const PAUSED: TableDefinition<&str, ()> = TableDefinition::new("paused_sinks");
/// Sinks removed with `drain` whose backlog is not delivered yet: name -> their configuration
/// (JSON), so a restart carries on with the drain.
const DRAINING: TableDefinition<&str, &[u8]> = TableDefinition::new("draining_sinks");

/// States of a device command not finished yet; its record is never pruned in them.
pub const UNFINISHED: [&str; 3] = ["accepted", "queued", "sent"];

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
        txn.open_table(QUEUE).map_err(redb_err)?;
        txn.open_table(PAUSED).map_err(redb_err)?;
        txn.open_table(DRAINING).map_err(redb_err)?;
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
        self.write(r, |_| Ok(()))
    }

    /// Records a new device command and queues it; its queue position is returned. Durable on
    /// return.
    pub fn enqueue(&self, r: &CommandRecord) -> Result<u64, StoreError> {
        let mut seq = 0;
        self.write(r, |txn| {
            let mut q = txn.open_table(QUEUE).map_err(redb_err)?;
            seq = q
                .last()
                .map_err(redb_err)?
                .map_or(1, |(k, _)| k.value() + 1);
            q.insert(seq, r.command_id.as_str()).map_err(redb_err)?;
            Ok(())
        })?;
        Ok(seq)
    }

    /// Records a device command's new state; `done` takes it off the queue (acknowledged,
    /// expired or failed). Durable on return.
    pub fn update_queued(&self, seq: u64, r: &CommandRecord, done: bool) -> Result<(), StoreError> {
        self.write(r, |txn| {
            if done {
                txn.open_table(QUEUE)
                    .map_err(redb_err)?
                    .remove(seq)
                    .map_err(redb_err)?;
            }
            Ok(())
        })
    }

    /// Records a sink paused (or not). Durable on return.
    pub fn set_paused(&self, sink: &str, paused: bool) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(redb_err)?;
        {
            let mut t = txn.open_table(PAUSED).map_err(redb_err)?;
            if paused {
                t.insert(sink, ()).map_err(redb_err)?;
            } else {
                t.remove(sink).map_err(redb_err)?;
            }
        }
        txn.commit().map_err(redb_err)
    }

    /// The sinks recorded as paused.
    pub fn paused(&self) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read().map_err(redb_err)?;
        let t = txn.open_table(PAUSED).map_err(redb_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(redb_err)? {
            out.push(row.map_err(redb_err)?.0.value().to_string());
        }
        Ok(out)
    }

    /// Records a sink as draining (with its configuration) or drained (`None`).
    pub fn set_draining(
        &self,
        sink: &str,
        cfg: Option<&edge_gateway_config::SinkConfig>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(redb_err)?;
        {
            let mut t = txn.open_table(DRAINING).map_err(redb_err)?;
            match cfg {
                Some(c) => {
                    let body = serde_json::to_vec(c).expect("configs serialise");
                    t.insert(sink, body.as_slice()).map_err(redb_err)?;
                }
                None => {
                    t.remove(sink).map_err(redb_err)?;
                }
            }
        }
        txn.commit().map_err(redb_err)
    }

    /// The sinks recorded as draining, with their configurations.
    pub fn draining(&self) -> Result<Vec<edge_gateway_config::SinkConfig>, StoreError> {
        let txn = self.db.begin_read().map_err(redb_err)?;
        let t = txn.open_table(DRAINING).map_err(redb_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(redb_err)? {
            let (k, v) = row.map_err(redb_err)?;
            out.push(
                serde_json::from_slice(v.value())
                    .map_err(|_| StoreError::Corrupt(k.value().to_string()))?,
            );
        }
        Ok(out)
    }

    /// The queued device commands with their positions, oldest first.
    pub fn queue(&self) -> Result<Vec<(u64, CommandRecord)>, StoreError> {
        let txn = self.db.begin_read().map_err(redb_err)?;
        let q = txn.open_table(QUEUE).map_err(redb_err)?;
        let commands = txn.open_table(COMMANDS).map_err(redb_err)?;
        let mut out = Vec::new();
        for row in q.iter().map_err(redb_err)? {
            let (seq, id) = row.map_err(redb_err)?;
            let Some(v) = commands.get(id.value()).map_err(redb_err)? else {
                return Err(StoreError::Corrupt(id.value().to_string()));
            };
            let r = serde_json::from_slice(v.value())
                .map_err(|_| StoreError::Corrupt(id.value().to_string()))?;
            out.push((seq.value(), r));
        }
        Ok(out)
    }

    /// One transaction: the record, `more`, and (for a new command) its place in the order
    /// and the pruning of the oldest finished commands beyond `max_commands`.
    fn write(
        &self,
        r: &CommandRecord,
        more: impl FnOnce(&redb::WriteTransaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
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
                let excess =
                    (order.len().map_err(redb_err)? as usize).saturating_sub(self.max_commands);
                if excess > 0 {
                    // The oldest finished ones go; an unfinished device command stays until
                    // it is (their number is bounded by control.max_device_commands).
                    let mut gone = Vec::new();
                    for row in order.iter().map_err(redb_err)? {
                        if gone.len() == excess {
                            break;
                        }
                        let (k, id) = row.map_err(redb_err)?;
                        let unfinished = commands
                            .get(id.value())
                            .map_err(redb_err)?
                            .and_then(|v| serde_json::from_slice::<CommandRecord>(v.value()).ok())
                            .is_some_and(|c| {
                                c.kind == "device.command" && UNFINISHED.contains(&c.state.as_str())
                            });
                        if !unfinished {
                            gone.push((k.value(), id.value().to_string()));
                        }
                    }
                    for (k, id) in gone {
                        order.remove(k).map_err(redb_err)?;
                        commands.remove(id.as_str()).map_err(redb_err)?;
                    }
                }
            }
        }
        more(&txn)?;
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
        s.set_paused("api", true).unwrap();
        s.set_paused("lake", true).unwrap();
        s.set_paused("lake", false).unwrap();
        drop(s);
        let s = ControlStore::open(&path, 3).unwrap();
        assert_eq!(s.paused().unwrap(), ["api"]);
    }
}
