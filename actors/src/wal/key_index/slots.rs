//! The index's table: open addressing with linear probing and backward-shift deletion, one
//! `u64` a slot (`hash << 32 | offset`, 0 empty).
//!
//! Why not `HashMap`: a hashbrown table marks a removed entry with a tombstone and, when an
//! insert finds no room left, rehashes in place only while it is at most half full — else it
//! doubles. The index lives at its cap (250,000 keys by default) with a key leaving for every
//! key arriving, so the tombstones filled the table sized for the cap and it doubled, from 4.7
//! to 9.4 MiB (heaptrack, holding 1 M vs 3 M readings, docs/benchmarks.md "Session 16"): the
//! memory grew with the traffic seen, not with the keys held. Backward-shift deletion leaves no
//! tombstones, so the table keeps its size while the keys it holds stay under its load limit.
//!
//! Invariants: a slot's stored hash has its top bit set (so 0 is free: 31 bits of the hash
//! are compared — a collision only makes the index's hint name another row, which the caller's
//! check against the row catches); every entry sits in the run of full slots that starts at
//! or before its home slot and reaches it without a free slot between; `len` counts the full
//! slots and stays at most three quarters of them (doubling past that).

/// A hash as stored: the top bit set, so no entry is 0.
fn stored(hash: u32) -> u32 {
    hash | 0x8000_0000
}

pub(super) struct Slots {
    slots: Vec<u64>,
    len: usize,
}

impl Slots {
    /// Room for `items` entries at a load of at most one half.
    pub(super) fn with_room_for(items: usize) -> Slots {
        Slots {
            slots: vec![0; (items.max(4) * 2).next_power_of_two()],
            len: 0,
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, h: u32) -> usize {
        // The hash is keyed and random: its low bits are as good as any.
        h as usize & self.mask()
    }

    fn find(&self, h: u32) -> Option<usize> {
        let mut i = self.home(h);
        loop {
            match self.slots[i] {
                0 => return None,
                s if (s >> 32) as u32 == h => return Some(i),
                _ => i = (i + 1) & self.mask(),
            }
        }
    }

    pub(super) fn get(&self, hash: u32) -> Option<u32> {
        self.find(stored(hash)).map(|i| self.slots[i] as u32)
    }

    /// Sets `hash`'s offset; the one it had, if any.
    pub(super) fn insert(&mut self, hash: u32, offset: u32) -> Option<u32> {
        let h = stored(hash);
        let slot = u64::from(h) << 32 | u64::from(offset);
        if let Some(i) = self.find(h) {
            let old = self.slots[i] as u32;
            self.slots[i] = slot;
            return Some(old);
        }
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let mut i = self.home(h);
        while self.slots[i] != 0 {
            i = (i + 1) & self.mask();
        }
        self.slots[i] = slot;
        self.len += 1;
        None
    }

    /// Removes `hash`'s entry if `keep(offset)` is false.
    pub(super) fn remove_unless(&mut self, hash: u32, keep: impl FnOnce(u32) -> bool) {
        let Some(mut i) = self.find(stored(hash)) else {
            return;
        };
        if keep(self.slots[i] as u32) {
            return;
        }
        self.len -= 1;
        // Backward shift: pull each later entry of the run back into the hole when the hole
        // lies between its home and where it sits, until a free slot ends the run.
        let mask = self.mask();
        loop {
            self.slots[i] = 0;
            let mut j = i;
            loop {
                j = (j + 1) & mask;
                let s = self.slots[j];
                if s == 0 {
                    return;
                }
                let home = self.home((s >> 32) as u32);
                if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(i) & mask) {
                    self.slots[i] = s;
                    i = j;
                    break;
                }
            }
        }
    }

    /// Keeps the entries for which `f` returns a new offset, dropping the others; the table
    /// keeps its size.
    pub(super) fn retain_map(&mut self, mut f: impl FnMut(u32) -> Option<u32>) {
        let empty = Slots {
            slots: vec![0; self.slots.len()],
            len: 0,
        };
        let old = std::mem::replace(self, empty);
        for s in old.slots.into_iter().filter(|&s| s != 0) {
            if let Some(offset) = f(s as u32) {
                self.insert((s >> 32) as u32, offset);
            }
        }
    }

    fn grow(&mut self) {
        let old = std::mem::take(&mut self.slots);
        self.slots = vec![0; old.len() * 2];
        self.len = 0;
        for s in old.into_iter().filter(|&s| s != 0) {
            self.insert((s >> 32) as u32, s as u32);
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(super) fn slots(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    /// Random inserts, removals and lookups against a `HashMap`, with hashes from a small
    /// range so runs collide and wrap around the table's end.
    #[test]
    fn the_table_answers_as_a_map_does_under_churn_and_never_grows_at_its_cap() {
        for seed in 0..20u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut t = Slots::with_room_for(64);
            let size = t.slots();
            let mut model: HashMap<u32, u32> = HashMap::new();
            for step in 0..20_000u32 {
                // Hashes that differ in their top bit are one hash to the table.
                let h = rng.random_range(0..200u32) << 24 | rng.random_range(0..4u32);
                match rng.random_range(0..3) {
                    0 if model.len() < 64 => {
                        assert_eq!(
                            t.insert(h, step),
                            model.insert(stored(h), step),
                            "seed {seed}"
                        );
                    }
                    1 => {
                        let gone = model.get(&stored(h)).is_some_and(|&o| o % 2 == 0);
                        t.remove_unless(h, |o| o % 2 != 0);
                        if gone {
                            model.remove(&stored(h));
                        }
                    }
                    _ => assert_eq!(t.get(h), model.get(&stored(h)).copied(), "seed {seed}"),
                }
                assert_eq!(t.len(), model.len());
            }
            for (&h, &o) in &model {
                assert_eq!(t.get(h), Some(o));
            }
            assert_eq!(t.slots(), size, "at most its cap held: never grew");
        }
    }

    #[test]
    fn past_three_quarters_it_doubles_and_keeps_every_entry() {
        let mut t = Slots::with_room_for(4);
        assert_eq!(t.slots(), 8);
        for h in 0..100u32 {
            t.insert(h * 7919, h);
        }
        assert!(t.slots() >= 128 && t.len() == 100);
        for h in 0..100u32 {
            assert_eq!(t.get(h * 7919), Some(h));
        }
        t.retain_map(|o| (o % 3 == 0).then_some(o + 1));
        assert_eq!(t.len(), 34);
        assert_eq!(t.get(3 * 7919), Some(4));
        assert_eq!(t.get(7919), None);
    }
}
