//! The device-command outbox (pure: no I/O, no clock; the caller passes `now_ms`).
//!
//! Invariants:
//! - A device's commands are published in the order they were queued, one at a time: the
//!   next is handed out only once the broker has acknowledged (PUBACK) the one before it, so
//!   a retry after a lost connection can never overtake a later command.
//! - A command is handed out only before its expiry: an expired command is never published.
//!   One already handed out when it expires stays until its PUBACK or the connection's loss
//!   settles it (then it is `sent`, or expires unpublished).
//! - Every command leaves exactly once: acknowledged by its device, or expired.

use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for its turn (or for a connection).
    Queued,
    /// Handed to the broker connection; no PUBACK yet.
    Publishing,
    /// The broker acknowledged it; waiting for the device's acknowledgement.
    Sent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Queue order (the store's key): per-device order follows it.
    pub seq: u64,
    pub command_id: String,
    pub device_id: String,
    pub expires_at_ms: u64,
    pub stage: Stage,
}

#[derive(Debug, Default)]
pub struct Outbox {
    entries: BTreeMap<u64, Entry>,
    by_id: HashMap<String, u64>,
}

impl Outbox {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, command_id: &str) -> Option<&Entry> {
        self.by_id.get(command_id).and_then(|s| self.entries.get(s))
    }

    pub fn add(&mut self, e: Entry) {
        self.by_id.insert(e.command_id.clone(), e.seq);
        self.entries.insert(e.seq, e);
    }

    fn remove(&mut self, command_id: &str) -> Option<Entry> {
        let seq = self.by_id.remove(command_id)?;
        self.entries.remove(&seq)
    }

    /// The commands to publish now, at most `room` of them, oldest first; each is marked
    /// `Publishing`.
    pub fn due(&mut self, now_ms: u64, room: usize) -> Vec<Entry> {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut picked = Vec::new();
        for e in self.entries.values() {
            if picked.len() >= room {
                break;
            }
            // Only each device's oldest command not yet sent may go.
            if e.stage == Stage::Sent || !seen.insert(e.device_id.as_str()) {
                continue;
            }
            if e.stage == Stage::Queued && e.expires_at_ms > now_ms {
                picked.push(e.seq);
            }
        }
        picked
            .into_iter()
            .map(|s| {
                let e = self.entries.get_mut(&s).expect("picked above");
                e.stage = Stage::Publishing;
                e.clone()
            })
            .collect()
    }

    /// The broker acknowledged the publish: `Sent`. False if it is not publishing (already
    /// acknowledged by its device, say).
    pub fn published(&mut self, command_id: &str) -> bool {
        match self
            .by_id
            .get(command_id)
            .and_then(|s| self.entries.get_mut(s))
        {
            Some(e) if e.stage == Stage::Publishing => {
                e.stage = Stage::Sent;
                true
            }
            _ => false,
        }
    }

    /// The connection was lost: what had no PUBACK is queued again, in its place.
    pub fn lost(&mut self) {
        for e in self.entries.values_mut() {
            if e.stage == Stage::Publishing {
                e.stage = Stage::Queued;
            }
        }
    }

    /// The device acknowledged the command: it leaves. `None` when it is not here, or when
    /// `device_id` is not the device it was for (that device's ack is ignored).
    pub fn acknowledged(&mut self, command_id: &str, device_id: &str) -> Option<Entry> {
        if self.get(command_id)?.device_id != device_id {
            return None;
        }
        self.remove(command_id)
    }

    /// Commands past their expiry that are not publishing now: they leave, each with the
    /// stage it had (`Queued`: never published; `Sent`: its device never acknowledged it).
    pub fn expire(&mut self, now_ms: u64) -> Vec<Entry> {
        let gone: Vec<String> = self
            .entries
            .values()
            .filter(|e| e.expires_at_ms <= now_ms && e.stage != Stage::Publishing)
            .map(|e| e.command_id.clone())
            .collect();
        gone.iter().filter_map(|id| self.remove(id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, device: &str, expires: u64) -> Entry {
        Entry {
            seq,
            command_id: format!("c-{seq}"),
            device_id: device.into(),
            expires_at_ms: expires,
            stage: Stage::Queued,
        }
    }

    fn ids(v: &[Entry]) -> Vec<&str> {
        v.iter().map(|e| e.command_id.as_str()).collect()
    }

    #[test]
    fn one_command_per_device_at_a_time_in_queue_order() {
        let mut o = Outbox::default();
        for (s, d) in [(1, "a"), (2, "a"), (3, "b"), (4, "a")] {
            o.add(entry(s, d, 1000));
        }
        assert_eq!(ids(&o.due(0, 10)), ["c-1", "c-3"]);
        assert!(o.due(0, 10).is_empty(), "nothing more until a PUBACK");
        assert!(o.published("c-1"));
        assert!(!o.published("c-1"), "acknowledged once");
        assert_eq!(ids(&o.due(0, 10)), ["c-2"]);
        // The connection drops before c-2 and c-3 are acknowledged: they go again, c-4 waits.
        o.lost();
        assert_eq!(ids(&o.due(0, 10)), ["c-2", "c-3"]);
        assert!(o.published("c-2"));
        assert_eq!(ids(&o.due(0, 1)), ["c-4"], "room bounds what goes at once");
        assert_eq!(o.len(), 4, "sent commands wait for their device");
    }

    #[test]
    fn an_expired_command_is_never_handed_out() {
        let mut o = Outbox::default();
        o.add(entry(1, "a", 100));
        o.add(entry(2, "a", 500));
        o.add(entry(3, "b", 100));
        assert_eq!(
            ids(&o.due(100, 10)),
            Vec::<&str>::new(),
            "c-1 expired, c-2 waits behind it"
        );
        let gone = o.expire(100);
        assert_eq!(ids(&gone), ["c-1", "c-3"]);
        assert!(gone.iter().all(|e| e.stage == Stage::Queued));
        assert_eq!(ids(&o.due(100, 10)), ["c-2"]);
        // Publishing when it expires: it stays until the PUBACK or the loss settles it.
        assert!(o.expire(600).is_empty());
        o.lost();
        assert_eq!(ids(&o.expire(600)), ["c-2"]);
        assert!(o.is_empty());
    }

    #[test]
    fn only_the_commands_device_can_acknowledge_it() {
        let mut o = Outbox::default();
        o.add(entry(1, "a", 1000));
        o.add(entry(2, "a", 1000));
        o.due(0, 10);
        assert_eq!(
            o.acknowledged("c-1", "b"),
            None,
            "another device's ack is ignored"
        );
        assert_eq!(o.acknowledged("nope", "a"), None);
        // A device may ack before our PUBACK arrives: the command leaves all the same, and its
        // successor is next.
        assert_eq!(o.acknowledged("c-1", "a").unwrap().seq, 1);
        assert!(!o.published("c-1"));
        assert_eq!(ids(&o.due(0, 10)), ["c-2"]);
    }
}
