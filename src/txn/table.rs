//! The transaction table of one shard: slots with generations, a free
//! list, a count of live entries, and the index by server-transaction key
//! (RFC 3261 §17.2.3, see [`super::key`]).
//!
//! ```text
//!  alloc ─► (slot, generation) ─► put(slot, txn) · index(key, slot)
//!  a branch, timer or key names (slot, generation) ─► is_current? ─► take / put back
//!  release(slot) ─► generation + 1 (a stale timer or late response no longer matches),
//!                   slot to the free list, its key out of the index
//! ```
//!
//! Why slots and generations: a response finds its transaction with one
//! array index from the slot and generation in its branch (see
//! `proxy::branch`), and a timer of a transaction that is gone cannot fire
//! into the one that reuses its slot. Generations are 24 bits (they ride in
//! the branch) and never 0.
//!
//! Contract: no panic; memory grows only with the most entries ever live at
//! once (the caller bounds that; the proxy answers 503 past its limit).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// Identity hasher for keys that already are keyed hashes.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Slots of `T` with generations and a key index.
#[derive(Debug)]
pub struct Table<T> {
    // INVARIANT: slots.len() == gens.len(); every index in `free` is < slots.len()
    // and its slot is None; live counts the allocated (not free) slots.
    slots: Vec<Option<T>>,
    gens: Vec<u32>,
    free: Vec<u32>,
    live: usize,
    by_key: HashMap<u64, u32, BuildHasherDefault<KeyHasher>>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            live: 0,
            by_key: HashMap::default(),
        }
    }
}

impl<T> Table<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries allocated and not yet released.
    pub fn live(&self) -> usize {
        self.live
    }

    /// The entries in their slots (not those taken out for the moment).
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }

    /// A free slot and its generation (the slot is empty until [`Table::put`]).
    pub fn alloc(&mut self) -> (u32, u32) {
        self.live += 1;
        if let Some(slot) = self.free.pop() {
            return (slot, self.generation(slot).unwrap_or(1));
        }
        let slot = self.slots.len() as u32;
        self.slots.push(None);
        self.gens.push(1);
        (slot, 1)
    }

    /// The current generation of `slot`.
    pub fn generation(&self, slot: u32) -> Option<u32> {
        self.gens.get(slot as usize).copied()
    }

    /// True when `slot` is at generation `gen` and holds an entry.
    pub fn is_current(&self, slot: u32, gen: u32) -> bool {
        self.generation(slot) == Some(gen) && self.get(slot).is_some()
    }

    /// The entry of `slot`.
    pub fn get(&self, slot: u32) -> Option<&T> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    /// The entry of `slot`, mutably.
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// Takes the entry out of `slot` (the slot stays allocated: put it back
    /// or release it).
    pub fn take(&mut self, slot: u32) -> Option<T> {
        self.slots.get_mut(slot as usize).and_then(Option::take)
    }

    /// Puts an entry into an allocated `slot`.
    pub fn put(&mut self, slot: u32, entry: T) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = Some(entry);
        }
    }

    /// The slot indexed under `key`.
    pub fn find(&self, key: u64) -> Option<u32> {
        self.by_key.get(&key).copied()
    }

    /// Indexes `slot` under `key`.
    pub fn index(&mut self, key: u64, slot: u32) {
        self.by_key.insert(key, slot);
    }

    /// Frees `slot`: its entry (returned) and its index entry `key` (if it
    /// still points here) go, its generation moves on.
    pub fn release(&mut self, slot: u32, key: u64) -> Option<T> {
        let entry = self.take(slot)?;
        if self.by_key.get(&key) == Some(&slot) {
            self.by_key.remove(&key);
        }
        if let Some(g) = self.gens.get_mut(slot as usize) {
            *g = (*g + 1) & 0xff_ffff;
            if *g == 0 {
                *g = 1;
            }
        }
        self.free.push(slot);
        self.live = self.live.saturating_sub(1);
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_with_a_new_generation() {
        let mut t: Table<&str> = Table::new();
        let (a, ga) = t.alloc();
        t.put(a, "a");
        t.index(7, a);
        assert_eq!((t.find(7), t.live()), (Some(a), 1));
        assert!(t.is_current(a, ga));
        assert_eq!(t.release(a, 7), Some("a"));
        assert_eq!((t.find(7), t.live()), (None, 0));
        assert!(!t.is_current(a, ga));
        let (b, gb) = t.alloc();
        assert_eq!(b, a);
        assert_ne!(gb, ga);
        assert!(t.get(b).is_none() && !t.is_current(b, gb));
        t.put(b, "b");
        assert!(t.is_current(b, gb) && !t.is_current(b, ga));
        // A release for a key re-indexed to another slot leaves that index alone.
        t.index(9, b);
        let (c, _) = t.alloc();
        t.put(c, "c");
        t.index(9, c);
        assert_eq!(t.release(b, 9), Some("b"));
        assert_eq!(t.find(9), Some(c));
        assert_eq!(t.release(99, 1), None);
    }

    #[test]
    fn generations_wrap_past_zero() {
        let mut t: Table<()> = Table::new();
        let (s, _) = t.alloc();
        t.gens[s as usize] = 0xff_ffff;
        t.put(s, ());
        t.release(s, 0);
        assert_eq!(t.generation(s), Some(1));
    }
}
