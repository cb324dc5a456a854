//! Messages of devices over their WAL share, held per device (their PUBACKs wait; every
//! other device's keep flowing).
//!
//! Invariants:
//! - Per device, messages leave the queue in arrival order (`pop_front`; a failed retry goes
//!   back to the front).
//! - At most `max_per_device` messages of one device are held: the session's un-acked
//!   messages share one in-flight window at the broker (mosquitto `max_inflight_messages`)
//!   and one queue (`max_queued_bytes`, past which the broker drops what it already
//!   acknowledged to *other* devices). A flooding device must not fill them, so past the
//!   bound its messages overflow and are dead-lettered with reason `device_quota` (payload
//!   kept in the rejected table), then acknowledged. See docs/security.md.

use std::collections::{HashMap, VecDeque};

pub struct HeldQueues<T> {
    queues: HashMap<String, VecDeque<T>>,
    max_per_device: usize,
}

/// What `hold` did with an item.
#[derive(Debug, PartialEq, Eq)]
pub enum Hold<T> {
    Held,
    /// The device already holds `max_per_device`: the caller dead-letters it.
    Overflow(T),
}

impl<T> HeldQueues<T> {
    pub fn new(max_per_device: usize) -> Self {
        HeldQueues {
            queues: HashMap::new(),
            max_per_device: max_per_device.max(1),
        }
    }

    pub fn is_held(&self, device: &str) -> bool {
        self.queues.contains_key(device)
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    pub fn hold(&mut self, device: &str, item: T) -> Hold<T> {
        let q = self.queues.entry(device.to_string()).or_default();
        if q.len() >= self.max_per_device {
            return Hold::Overflow(item);
        }
        q.push_back(item);
        Hold::Held
    }

    /// Puts back an item whose retry failed, ahead of the rest (not bounded: it was held).
    pub fn hold_front(&mut self, device: &str, item: T) {
        self.queues
            .entry(device.to_string())
            .or_default()
            .push_front(item);
    }

    /// The next item of `device`; the device is no longer held once its queue is empty.
    pub fn pop_front(&mut self, device: &str) -> Option<T> {
        let q = self.queues.get_mut(device)?;
        let item = q.pop_front();
        if q.is_empty() {
            self.queues.remove(device);
        }
        item
    }

    pub fn devices(&self) -> Vec<String> {
        self.queues.keys().cloned().collect()
    }

    pub fn held(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_per_device_bound_and_release() {
        let mut h = HeldQueues::new(2);
        assert!(!h.is_held("a"));
        assert_eq!(h.hold("a", 1), Hold::Held);
        assert_eq!(h.hold("a", 2), Hold::Held);
        assert_eq!(h.hold("a", 3), Hold::Overflow(3));
        assert_eq!(h.hold("b", 10), Hold::Held);
        assert!(h.is_held("a") && h.is_held("b"));
        assert_eq!(h.held(), 3);
        let first = h.pop_front("a").unwrap();
        assert_eq!(first, 1);
        h.hold_front("a", first); // its retry failed
        assert_eq!(h.pop_front("a"), Some(1));
        assert_eq!(h.pop_front("a"), Some(2));
        assert!(!h.is_held("a"), "an emptied device is released");
        assert_eq!(h.devices(), vec!["b".to_string()]);
        assert_eq!(h.pop_front("b"), Some(10));
        assert!(h.is_empty());
    }
}
