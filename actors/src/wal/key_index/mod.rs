//! The in-memory index of idempotency keys: key -> the id of its row in `idem_v4` (the seq of
//! the row's first entry; `store/idem_rows/`).
//!
//! A commit's keys share one row, keyed by its id, so inserts are sequential and keys leave
//! from the front; a lookup by key needs this index to find the row. It holds up to
//! `wal.idempotency_max_keys` entries (250,000 by default), so it is kept small: 8 bytes an
//! entry (a 32-bit hash of the key, a 32-bit offset of the row id from `base`) where the
//! first version held 16, and the table is sized once for the cap (4 MiB at the default)
//! instead of doubling: `slots.rs`, whose deletions leave no tombstones — a `HashMap` at its
//! cap, a key leaving for each arriving, doubled anyway (4.7 → 9.4 MiB).
//!
//! Invariants:
//! - The index is a hint, confirmed against the row: `get` names a row, and the caller reads
//!   it, which holds the key itself. A wrong hint (two keys with one hash, or an entry
//!   dropped) can only make a duplicate look new — stored twice, which at-least-once allows —
//!   never a new reading look like a duplicate.
//! - The hash is keyed per process (`RandomState`), so no client can craft keys that aim at
//!   another key's entry; the index is rebuilt from the rows at every open.
//! - An offset fits 32 bits (4 Gi readings). When an id does not fit, `base` moves forward to
//!   half that range before it, and the entries older than the new base (at least 2 Gi
//!   readings ago: far outside any sensible key cap; the default is 250,000) are dropped —
//!   their duplicates would look new, as above.

use std::hash::BuildHasher;

mod slots;
use slots::Slots;

/// Offsets are kept within this many ids after a rebase (half the 32-bit range).
const REBASE_KEEP: u64 = 1 << 31;

pub struct KeyIndex {
    hasher: std::collections::hash_map::RandomState,
    base: u64,
    map: Slots,
}

impl KeyIndex {
    /// An empty index for rows from id `base` on, sized for `cap` entries up to 256 Ki (the
    /// default cap fits; a larger cap grows the table as keys come, and an idle gateway does
    /// not pay for it).
    pub fn new(base: u64, cap: u64) -> KeyIndex {
        let reserve = cap.min(1 << 18) as usize;
        KeyIndex {
            hasher: Default::default(),
            base,
            map: Slots::with_room_for(reserve),
        }
    }

    fn hash(&self, key: &str) -> u32 {
        self.hasher.hash_one(key) as u32
    }

    /// The id of `key`'s row, if the index has one.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.map
            .get(self.hash(key))
            .map(|d| self.base + u64::from(d))
    }

    /// `key`'s row is now `id`; the id the index named for its hash before, if any.
    pub fn insert(&mut self, key: &str, id: u64) -> Option<u64> {
        if id < self.base {
            // Row ids never go back; tests (and a hand-edited file) may.
            self.rebase(id);
        } else if id - self.base > u64::from(u32::MAX) {
            self.rebase(id - REBASE_KEEP);
        }
        let old = self.map.insert(self.hash(key), (id - self.base) as u32);
        old.map(|d| self.base + u64::from(d))
    }

    /// Forgets `key` if its entry names row `id` (the row is being deleted).
    pub fn remove_if(&mut self, key: &str, id: u64) {
        let base = self.base;
        self.map
            .remove_unless(self.hash(key), |d| base + u64::from(d) != id);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Moves the base; the entries whose id no longer fits an offset from it are dropped.
    fn rebase(&mut self, base: u64) {
        let old = self.base;
        self.map.retain_map(|d| {
            let id = old + u64::from(d);
            id.checked_sub(base).and_then(|n| u32::try_from(n).ok())
        });
        self.base = base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_its_latest_row_and_is_forgotten_only_for_that_row() {
        let mut ix = KeyIndex::new(1_000, 16);
        assert_eq!(ix.get("a"), None);
        assert_eq!(ix.insert("a", 1_500), None);
        assert_eq!(ix.insert("a", 2_000), Some(1_500));
        assert_eq!(ix.get("a"), Some(2_000));
        ix.remove_if("a", 1_500); // an older row of the key: the entry stays
        assert_eq!(ix.get("a"), Some(2_000));
        ix.remove_if("a", 2_000);
        assert_eq!(ix.get("a"), None);
        assert!(ix.is_empty());
    }

    #[test]
    fn ids_past_the_32_bit_range_move_the_base_and_drop_only_the_oldest() {
        let day = 86_400_000u64;
        let mut ix = KeyIndex::new(0, 16);
        ix.insert("old", day);
        ix.insert("recent", 40 * day);
        // 60 days after the base: past 49.7 days, so the base moves to ~35 days.
        ix.insert("new", 60 * day);
        assert_eq!(ix.get("new"), Some(60 * day));
        assert_eq!(ix.get("recent"), Some(40 * day));
        assert_eq!(
            ix.get("old"),
            None,
            "older than 24.8 days before the newest"
        );
        assert_eq!(ix.len(), 2);
        // And again much later: each insert keeps working.
        ix.insert("later", 400 * day);
        assert_eq!(ix.get("later"), Some(400 * day));
        assert_eq!(ix.get("new"), None);
    }

    #[test]
    fn an_id_before_the_base_moves_the_base_back() {
        let mut ix = KeyIndex::new(5_000, 4);
        ix.insert("b", 6_000);
        ix.insert("a", 10);
        assert_eq!(ix.get("a"), Some(10));
        assert_eq!(ix.get("b"), Some(6_000));
    }
}
