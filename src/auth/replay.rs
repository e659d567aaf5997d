//! Nonce-count replay protection in bounded memory (RFC 7616 §3.4, §5.9).
//!
//! A nonce enters the table the first time it authenticates a request, and
//! the table remembers, per nonce, the highest nonce-count seen and a
//! 64-bit window of the counts just below it (the anti-replay window of
//! IPsec, RFC 4303 §3.4.3), so requests that overtake each other on UDP
//! are still accepted once each.
//!
//! ```text
//!  nonce id ─► bucket (id & mask) ─► 8 entries { id, issued_ms, max_nc, window }
//!                                   + watermark_ms: the newest issue time ever evicted
//!  nc > max_nc               → accept, slide the window
//!  max_nc-64 < nc <= max_nc  → accept once (bit), then Replayed
//!  nc <= max_nc-64           → Replayed
//!  id absent, issued_ms <= watermark → Forgotten (maybe used, then evicted: stale)
//!  id absent, issued_ms >  watermark → never used: insert (evicting if full)
//! ```
//!
//! Why a watermark per bucket: when a full bucket must evict a nonce, a
//! later request with that nonce must not be taken for a first use. Every
//! evicted nonce was issued at or before its bucket's watermark, so a nonce
//! that is absent and newer than the watermark was never seen. The cost of
//! an eviction is that other unused nonces as old as the evicted one get a
//! stale challenge and one more round trip; memory never grows and no
//! replay is ever accepted. Expired nonces are evicted first and raise no
//! watermark (their age makes them stale anyway).
//!
//! Only requests whose response digest was correct reach this table, so a
//! sender without a password cannot fill it.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

const WAYS: usize = 8;
const WINDOW: u32 = 64;

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    /// Nonce id; 0 marks a free entry.
    id: u64,
    issued_ms: u64,
    max_nc: u32,
    /// Bit i set: nonce-count `max_nc - i` was used.
    window: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    entries: [Entry; WAYS],
    watermark_ms: u64,
}

/// What the table says about one (nonce, nc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NcCheck {
    /// First use of this count: recorded.
    Fresh,
    /// The nonce may have been used and then evicted: treat it as stale.
    Forgotten,
    /// This count (or one too old for the window) was already used.
    Replayed,
}

/// The per-shard nonce-count table.
#[derive(Debug, Clone)]
pub struct ReplayTable {
    // INVARIANT: buckets.len() is a power of two, mask == buckets.len() - 1.
    buckets: Vec<Bucket>,
    mask: u64,
    evictions: u64,
}

impl ReplayTable {
    /// A table of at least `slots` nonces (rounded up to whole buckets, a
    /// power of two of them): 32 bytes each.
    pub fn new(slots: usize) -> Self {
        let n = (slots.max(WAYS) / WAYS).next_power_of_two();
        Self {
            buckets: vec![Bucket::default(); n],
            mask: n as u64 - 1,
            evictions: 0,
        }
    }

    /// Nonces the table holds at most.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Live nonces evicted to make room (each may cost a client a stale round trip).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Nonces in the table now.
    pub fn len(&self) -> usize {
        self.buckets
            .iter()
            .flat_map(|b| b.entries.iter())
            .filter(|e| e.id != 0)
            .count()
    }

    /// True when no nonce is in the table.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything (every nonce in use becomes stale).
    pub fn clear(&mut self) {
        for b in &mut self.buckets {
            let w = b
                .entries
                .iter()
                .map(|e| e.issued_ms)
                .max()
                .unwrap_or(0)
                .max(b.watermark_ms);
            *b = Bucket {
                watermark_ms: w,
                ..Bucket::default()
            };
        }
    }

    /// Forgets every nonce issued at or before `ms`: each becomes stale
    /// (as after an eviction), so none can be replayed. For a reload that
    /// resized the table or lengthened the nonce lifetime.
    pub fn forget_issued_until(&mut self, ms: u64) {
        self.clear();
        for b in &mut self.buckets {
            b.watermark_ms = b.watermark_ms.max(ms);
        }
    }

    /// Forgets everything, watermarks included: used nonces become new
    /// again. For benches only.
    #[doc(hidden)]
    pub fn reset_for_bench(&mut self) {
        for b in &mut self.buckets {
            *b = Bucket::default();
        }
    }

    /// Checks and records count `nc` (≥ 1) of nonce `id`, issued at
    /// `issued_ms`; entries issued before `expired_before_ms` are dead.
    pub fn check(&mut self, id: u64, issued_ms: u64, nc: u32, expired_before_ms: u64) -> NcCheck {
        let id = id.max(1);
        if nc == 0 {
            return NcCheck::Replayed;
        }
        let Some(bucket) = self.buckets.get_mut((id & self.mask) as usize) else {
            return NcCheck::Forgotten;
        };
        if let Some(e) = bucket.entries.iter_mut().find(|e| e.id == id) {
            return slide(e, nc);
        }
        if issued_ms <= bucket.watermark_ms {
            return NcCheck::Forgotten;
        }
        let free = bucket
            .entries
            .iter()
            .position(|e| e.id == 0 || e.issued_ms < expired_before_ms);
        let at = match free {
            Some(i) => i,
            None => {
                // Evict the oldest; if the newcomer is older still, it is the one forgotten.
                let (i, oldest) = bucket
                    .entries
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| e.issued_ms)
                    .map_or((0, 0), |(i, e)| (i, e.issued_ms));
                if issued_ms < oldest {
                    return NcCheck::Forgotten;
                }
                bucket.watermark_ms = bucket.watermark_ms.max(oldest);
                self.evictions += 1;
                i
            }
        };
        let Some(e) = bucket.entries.get_mut(at) else {
            return NcCheck::Forgotten;
        };
        *e = Entry {
            id,
            issued_ms,
            max_nc: 0,
            window: 0,
        };
        slide(e, nc)
    }
}

fn slide(e: &mut Entry, nc: u32) -> NcCheck {
    if nc > e.max_nc {
        let shift = nc - e.max_nc;
        e.window = if shift >= WINDOW {
            0
        } else {
            e.window << shift
        };
        e.window |= 1;
        e.max_nc = nc;
        return NcCheck::Fresh;
    }
    let back = e.max_nc - nc;
    if back >= WINDOW {
        return NcCheck::Replayed;
    }
    let bit = 1u64 << back;
    if e.window & bit != 0 {
        return NcCheck::Replayed;
    }
    e.window |= bit;
    NcCheck::Fresh
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_accepted_once_in_any_order() {
        let mut t = ReplayTable::new(64);
        assert_eq!(t.check(5, 1000, 1, 0), NcCheck::Fresh);
        assert_eq!(t.check(5, 1000, 1, 0), NcCheck::Replayed);
        assert_eq!(t.check(5, 1000, 3, 0), NcCheck::Fresh);
        assert_eq!(
            t.check(5, 1000, 2, 0),
            NcCheck::Fresh,
            "overtaken on the way"
        );
        assert_eq!(t.check(5, 1000, 2, 0), NcCheck::Replayed);
        assert_eq!(t.check(5, 1000, 100, 0), NcCheck::Fresh);
        assert_eq!(
            t.check(5, 1000, 37, 0),
            NcCheck::Fresh,
            "the window's oldest"
        );
        assert_eq!(t.check(5, 1000, 37, 0), NcCheck::Replayed);
        assert_eq!(
            t.check(5, 1000, 36, 0),
            NcCheck::Replayed,
            "just out of the window"
        );
        assert_eq!(
            t.check(5, 1000, 30, 0),
            NcCheck::Replayed,
            "older than the window"
        );
        assert_eq!(t.check(5, 1000, 0, 0), NcCheck::Replayed);
        // Another nonce has its own counts.
        assert_eq!(t.check(6, 1000, 1, 0), NcCheck::Fresh);
    }

    #[test]
    fn bounded_and_never_accepts_a_replay() {
        let mut t = ReplayTable::new(1024);
        let cap = t.capacity();
        let mut used = Vec::new();
        let mut id = 1u64;
        for i in 0..100_000u64 {
            id = id
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            assert_eq!(t.check(id, 10_000 + i, 1, 0), NcCheck::Fresh);
            used.push((id, 10_000 + i));
        }
        assert!(t.len() <= cap);
        assert_eq!(t.capacity(), cap);
        assert!(t.evictions() > 0);
        // Replaying any of them: refused, or stale; never accepted.
        for &(id, ms) in &used {
            assert_ne!(t.check(id, ms, 1, 0), NcCheck::Fresh);
        }
        // A nonce issued after everything evicted is still fresh.
        assert_eq!(t.check(0xdead_beef, 1_000_000, 1, 0), NcCheck::Fresh);
    }

    #[test]
    fn expired_entries_make_room_without_a_watermark() {
        let mut t = ReplayTable::new(8);
        for id in 1..=8u64 {
            assert_eq!(t.check(id << 1, id, 1, 0), NcCheck::Fresh);
        }
        // All eight are older than 100: the newcomer takes a dead slot.
        assert_eq!(t.check(100 << 1, 50, 1, 100), NcCheck::Fresh);
        assert_eq!(t.evictions(), 0);
        // A ninth live one evicts the oldest live entry and sets the watermark.
        let mut t = ReplayTable::new(8);
        for id in 1..=8u64 {
            assert_eq!(t.check(id << 1, 1000 + id, 1, 0), NcCheck::Fresh);
        }
        assert_eq!(t.check(9 << 1, 2000, 1, 0), NcCheck::Fresh);
        assert_eq!(t.evictions(), 1);
        assert_eq!(t.check(1 << 1, 1001, 2, 0), NcCheck::Forgotten);
        assert_eq!(
            t.check(77 << 1, 1000, 1, 0),
            NcCheck::Forgotten,
            "as old as the evicted"
        );
        assert_eq!(t.check(78 << 1, 1500, 1, 0), NcCheck::Fresh);
        t.clear();
        assert_eq!(t.check(9 << 1, 2000, 2, 0), NcCheck::Forgotten);
        assert!(t.is_empty());
    }
}
