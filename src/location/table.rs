//! The replica's table: open addressing with linear probing over two
//! parallel arrays, 16-bit tags and block pointers.
//!
//! ```text
//!  hash(key) ─► home = hash & mask, tag = hash >> 48 | 1
//!  tags:   [u16; cap]            0 = empty; 32 tags per cache line: probing is cheap and rarely misses
//!  slots:  [Option<Box<[u8]>>; cap]   the AoR block (its key inside, see replica.rs)
//! ```
//!
//! Why not std's `HashSet` (a SwissTable, which this replaced): both keep
//! control bytes apart from the buckets, but owning the probe lets a batch
//! of lookups be software-pipelined ([`Table::find_batch`]): the tags, the
//! bucket and the block of the next keys are requested while the current
//! key is compared, so the cache misses of several lookups overlap instead
//! of queueing. A random lookup in a table of a million AoRs misses the
//! caches two or three times; overlapping those misses is what makes tens of
//! millions of lookups per second possible on one core.
//!
//! Growth doubles the capacity at a load of 7/8; removal shifts the probe
//! chain back (no tombstones), so a long-lived table never degrades.
//! Nothing here panics; every index is masked or checked.

use super::prefetch::prefetch;
use crate::hash::hash_bytes;

/// One table entry: an AoR block whose first bytes give its key.
pub(crate) trait Keyed {
    /// The key.
    fn key(&self) -> &[u8];
}

#[derive(Clone)]
pub(crate) struct Table<T> {
    seed: u64,
    // INVARIANT: tags.len() == slots.len() == mask + 1, a power of two;
    // tags[i] == 0 exactly when slots[i] is None; len < 7/8 of the capacity.
    tags: Vec<u16>,
    slots: Vec<Option<T>>,
    mask: usize,
    len: usize,
}

#[inline]
fn tag_of(h: u64) -> u16 {
    ((h >> 48) as u16) | 1
}

impl<T: Keyed> Table<T> {
    pub(crate) fn new(seed: u64) -> Self {
        Self::with_capacity(seed, 0)
    }

    pub(crate) fn with_capacity(seed: u64, n: usize) -> Self {
        let cap = (n.saturating_mul(8) / 7 + 1).next_power_of_two().max(16);
        Self {
            seed,
            tags: vec![0; cap],
            slots: (0..cap).map(|_| None).collect(),
            mask: cap - 1,
            len: 0,
        }
    }

    #[inline]
    pub(crate) fn hash(&self, key: &[u8]) -> u64 {
        hash_bytes(self.seed, key)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn capacity(&self) -> usize {
        self.tags.len()
    }

    /// Index of `key`'s entry.
    #[inline]
    fn find_from(&self, key: &[u8], h: u64, mut i: usize) -> Option<usize> {
        let tag = tag_of(h);
        loop {
            let t = *self.tags.get(i)?;
            if t == 0 {
                return None;
            }
            if t == tag
                && self
                    .slots
                    .get(i)
                    .and_then(Option::as_ref)
                    .is_some_and(|b| b.key() == key)
            {
                return Some(i);
            }
            i = (i + 1) & self.mask;
        }
    }

    #[inline]
    pub(crate) fn get(&self, key: &[u8]) -> Option<&T> {
        let h = self.hash(key);
        let i = self.find_from(key, h, h as usize & self.mask)?;
        self.slots.get(i)?.as_ref()
    }

    /// The entry of `key`, to change in place (its key must stay the same).
    #[inline]
    pub(crate) fn get_mut(&mut self, key: &[u8]) -> Option<&mut T> {
        let h = self.hash(key);
        let i = self.find_from(key, h, h as usize & self.mask)?;
        self.slots.get_mut(i)?.as_mut()
    }

    /// Looks up every key of `keys`, calling `f(i, entry)` in order, with the
    /// memory accesses of later keys issued while earlier ones complete:
    /// stage 1 hashes key `i + 2·AHEAD` and prefetches its tag and bucket,
    /// stage 2 finds key `i + AHEAD`'s candidate and prefetches its block,
    /// stage 3 compares key `i` and answers.
    pub(crate) fn find_batch<'a>(
        &'a self,
        keys: &[&[u8]],
        mut f: impl FnMut(usize, Option<&'a T>),
    ) {
        // Distance between the stages, in keys; RING holds more than 2 × AHEAD.
        const AHEAD: usize = 8;
        const RING: usize = 32;
        let mut hashes = [0u64; RING];
        let mut first = [usize::MAX; RING];
        let n = keys.len();
        for step in 0..n + 2 * AHEAD {
            // Stage 1: hash, prefetch the tag and the bucket.
            if let Some(k) = keys.get(step) {
                let h = self.hash(k);
                let home = h as usize & self.mask;
                if let Some(s) = hashes.get_mut(step % RING) {
                    *s = h;
                }
                prefetch(self.tags.as_ptr().wrapping_add(home));
                prefetch(self.slots.as_ptr().wrapping_add(home));
            }
            // Stage 2: find the first tag match, prefetch its block (two lines:
            // the key and the first binding).
            if let Some(b) = step.checked_sub(AHEAD).filter(|&b| b < n) {
                let h = hashes.get(b % RING).copied().unwrap_or(0);
                let tag = tag_of(h);
                let mut i = h as usize & self.mask;
                let cand = loop {
                    match self.tags.get(i).copied() {
                        Some(0) | None => break usize::MAX,
                        Some(t) if t == tag => break i,
                        Some(_) => i = (i + 1) & self.mask,
                    }
                };
                if let Some(Some(e)) = self.slots.get(cand) {
                    let p = e.key().as_ptr();
                    prefetch(p);
                    prefetch(p.wrapping_add(64));
                }
                if let Some(s) = first.get_mut(b % RING) {
                    *s = cand;
                }
            }
            // Stage 3: compare and answer.
            if let Some(c) = step.checked_sub(2 * AHEAD).filter(|&c| c < n) {
                let key = keys.get(c).copied().unwrap_or_default();
                let h = hashes.get(c % RING).copied().unwrap_or(0);
                let cand = first.get(c % RING).copied().unwrap_or(usize::MAX);
                let found = if cand == usize::MAX {
                    None
                } else {
                    self.find_from(key, h, cand)
                };
                f(c, found.and_then(|i| self.slots.get(i)?.as_ref()));
            }
        }
    }

    /// Inserts `v`, returning the entry it replaces (same key).
    pub(crate) fn insert(&mut self, v: T) -> Option<T> {
        let h = self.hash(v.key());
        if let Some(i) = self.find_from(v.key(), h, h as usize & self.mask) {
            return self.slots.get_mut(i)?.replace(v);
        }
        if (self.len + 1) * 8 > self.capacity() * 7 {
            self.grow(self.capacity() * 2);
        }
        self.place(h, v);
        self.len += 1;
        None
    }

    /// Puts `v` (hash `h`, not present) in the first free slot of its chain.
    fn place(&mut self, h: u64, v: T) {
        let mut i = h as usize & self.mask;
        loop {
            match self.tags.get_mut(i) {
                Some(t) if *t == 0 => {
                    *t = tag_of(h);
                    if let Some(s) = self.slots.get_mut(i) {
                        *s = Some(v);
                    }
                    return;
                }
                Some(_) => i = (i + 1) & self.mask,
                // The table is never full (load ≤ 7/8) and indices are masked.
                None => return,
            }
        }
    }

    fn grow(&mut self, cap: usize) {
        let old = core::mem::take(&mut self.slots);
        self.tags = vec![0; cap];
        self.slots = (0..cap).map(|_| None).collect();
        self.mask = cap - 1;
        for v in old.into_iter().flatten() {
            let h = self.hash(v.key());
            self.place(h, v);
        }
    }

    /// Makes room for `extra` more entries without growing.
    pub(crate) fn reserve(&mut self, extra: usize) {
        let want = (self.len + extra).saturating_mul(8) / 7 + 1;
        if want > self.capacity() {
            self.grow(want.next_power_of_two());
        }
    }

    /// Removes `key`'s entry, shifting the rest of its probe chain back.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<T> {
        let h = self.hash(key);
        let mut hole = self.find_from(key, h, h as usize & self.mask)?;
        let out = self.slots.get_mut(hole)?.take();
        if let Some(t) = self.tags.get_mut(hole) {
            *t = 0;
        }
        self.len -= 1;
        let mut j = (hole + 1) & self.mask;
        loop {
            if self.tags.get(j).copied().unwrap_or(0) == 0 {
                break;
            }
            let home = self
                .slots
                .get(j)
                .and_then(Option::as_ref)
                .map_or(j, |v| self.hash(v.key()) as usize & self.mask);
            // The entry at j may move to the hole if its home is not in (hole, j].
            let dist_home = j.wrapping_sub(home) & self.mask;
            let dist_hole = j.wrapping_sub(hole) & self.mask;
            if dist_home >= dist_hole {
                let v = self.slots.get_mut(j).and_then(Option::take);
                let t = self.tags.get(j).copied().unwrap_or(0);
                if let Some(s) = self.slots.get_mut(hole) {
                    *s = v;
                }
                if let Some(x) = self.tags.get_mut(hole) {
                    *x = t;
                }
                if let Some(x) = self.tags.get_mut(j) {
                    *x = 0;
                }
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        out
    }

    /// Keeps the entries for which `keep` is true.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let cap = self.capacity();
        let old = core::mem::take(&mut self.slots);
        self.tags = vec![0; cap];
        self.slots = (0..cap).map(|_| None).collect();
        self.len = 0;
        for v in old.into_iter().flatten() {
            if keep(&v) {
                let h = self.hash(v.key());
                self.place(h, v);
                self.len += 1;
            }
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Clone, Debug, PartialEq)]
    struct E(Vec<u8>, u32);
    impl Keyed for E {
        fn key(&self) -> &[u8] {
            &self.0
        }
    }

    #[test]
    fn behaves_like_a_map() {
        let mut t: Table<E> = Table::new(3);
        let mut m: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut x = 12345u64;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = format!("k{}", x % 3000).into_bytes();
            match x % 4 {
                0 => assert_eq!(t.remove(&k).map(|e| e.1), m.remove(&k)),
                _ => assert_eq!(t.insert(E(k.clone(), step)).map(|e| e.1), m.insert(k, step)),
            }
            assert_eq!(t.len(), m.len());
        }
        for (k, v) in &m {
            assert_eq!(t.get(k).map(|e| e.1), Some(*v));
        }
        let keys: Vec<Vec<u8>> = (0..4000).map(|i| format!("k{i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let mut seen = 0;
        t.find_batch(&refs, |i, e| {
            assert_eq!(i, seen);
            seen += 1;
            assert_eq!(e.map(|e| e.1), m.get(&keys[i]).copied());
        });
        assert_eq!(seen, 4000);
        t.retain(|e| e.1 % 2 == 0);
        m.retain(|_, v| *v % 2 == 0);
        assert_eq!(t.len(), m.len());
        assert_eq!(t.iter().count(), m.len());
        for (k, v) in &m {
            assert_eq!(t.get(k).map(|e| e.1), Some(*v));
        }
        t.reserve(100_000);
        assert!(t.capacity() >= 100_000 * 8 / 7);
        for (k, v) in &m {
            assert_eq!(t.get(k).map(|e| e.1), Some(*v));
        }
    }
}
