//! A hashed timer wheel with 1 ms ticks and lazy cancellation.
//!
//! An entry names a call slot, its generation and the deadline it was armed
//! for; the owner keeps the deadline of the one timer each slot has and
//! ignores an entry whose slot, generation or deadline no longer match. So
//! re-arming or finishing a call costs nothing here, and firing is O(1) per
//! entry. Deadlines beyond one turn of the wheel stay in their bucket until
//! their turn comes (the bucket keeps them).
//!
//! Buckets keep their capacity, so a steady load allocates nothing.

/// Ticks in one turn of the wheel (a power of two: 65.5 s at 1 ms).
const SLOTS: usize = 1 << 16;

/// Who owns a timer entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A client call of client engine `n`.
    Client(u8),
    /// A server dialog.
    Server,
}

/// One armed timer.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// Deadline, µs since the run started.
    pub at: u64,
    /// Call slot.
    pub slot: u32,
    /// Generation of the slot when armed.
    pub gen: u32,
    /// Which table the slot is in.
    pub owner: Owner,
}

/// The wheel.
pub struct Wheel {
    buckets: Vec<Vec<Entry>>,
    /// Next tick to process (ms since start).
    cursor: u64,
    len: usize,
    /// Scratch for the bucket being processed (kept to reuse its capacity).
    spare: Vec<Entry>,
}

impl Wheel {
    /// An empty wheel starting at time 0.
    pub fn new() -> Self {
        Self {
            buckets: (0..SLOTS).map(|_| Vec::new()).collect(),
            cursor: 0,
            len: 0,
            spare: Vec::new(),
        }
    }

    /// Arms a timer.
    pub fn insert(&mut self, e: Entry) {
        // An entry due before the cursor fires on the next tick processed.
        let tick = (e.at / 1000).max(self.cursor);
        if let Some(b) = self.buckets.get_mut(tick as usize & (SLOTS - 1)) {
            b.push(e);
            self.len += 1;
        }
    }

    /// Entries armed (including ones that will turn out to be stale).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Calls `fire` for every entry due at or before `now` (µs). Entries
    /// `fire` arms again go into later buckets, never the one being processed.
    pub fn advance(&mut self, now: u64, mut fire: impl FnMut(&mut Self, Entry)) {
        let now_tick = now / 1000;
        // After a long stall, one turn covers every bucket.
        let end = now_tick.min(self.cursor + SLOTS as u64);
        while self.cursor <= end {
            let idx = self.cursor as usize & (SLOTS - 1);
            let mut batch = std::mem::take(&mut self.spare);
            if let Some(b) = self.buckets.get_mut(idx) {
                std::mem::swap(b, &mut batch);
            }
            self.cursor += 1;
            for e in batch.drain(..) {
                self.len -= 1;
                if e.at / 1000 <= now_tick {
                    fire(self, e);
                } else {
                    // A later turn of the wheel.
                    self.insert(e);
                }
            }
            self.spare = batch;
        }
        if self.cursor <= now_tick {
            self.cursor = now_tick + 1;
        }
    }

    /// The earliest tick that may hold a due entry, as µs, or `None` when empty.
    /// (An upper bound on how long the loop may sleep.)
    pub fn next_deadline(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        // Scan ahead a bounded number of buckets; beyond that, wake anyway.
        for off in 0..64u64 {
            let t = self.cursor + off;
            if self
                .buckets
                .get(t as usize & (SLOTS - 1))
                .is_some_and(|b| !b.is_empty())
            {
                return Some(t * 1000);
            }
        }
        Some((self.cursor + 64) * 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(at: u64, slot: u32) -> Entry {
        Entry {
            at,
            slot,
            gen: 0,
            owner: Owner::Server,
        }
    }

    #[test]
    fn fires_in_tick_order_and_only_when_due() {
        let mut w = Wheel::new();
        w.insert(e(5_000, 1));
        w.insert(e(1_500, 2));
        w.insert(e(100_000_000, 3)); // beyond one turn
        let mut got = Vec::new();
        w.advance(1_999, |_, x| got.push(x.slot));
        assert_eq!(got, vec![2]);
        w.advance(6_000, |_, x| got.push(x.slot));
        assert_eq!(got, vec![2, 1]);
        w.advance(70_000_000, |_, x| got.push(x.slot));
        assert_eq!(got, vec![2, 1]);
        assert_eq!(w.len(), 1);
        w.advance(100_000_999, |_, x| got.push(x.slot));
        assert_eq!(got, vec![2, 1, 3]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn rearming_from_the_callback_goes_later() {
        let mut w = Wheel::new();
        w.insert(e(1_000, 1));
        let mut n = 0;
        w.advance(10_000, |w, x| {
            n += 1;
            if n < 3 {
                w.insert(e(x.at + 2_000, 1));
            }
        });
        assert_eq!(n, 3);
        assert_eq!(w.next_deadline(), None);
    }
}
