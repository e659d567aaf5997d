//! Rate limits in bounded memory: the generic cell rate algorithm (GCRA, a
//! token bucket kept as one timestamp) over a fixed-size, set-associative
//! table of keys. The flood limiter ([`super::flood`]) and the failed-auth
//! throttles ([`crate::auth`]) are both built on it; the source throttle
//! is shared by the shards ([`SharedRate`]).
//!
//! ```text
//!  key (u64, keyed hash) ─► bucket = key & mask ─► WAYS slots { key, tat, banned_until }
//!  event at now:  tat' = max(tat, now) + interval      allowed while tat' - now <= burst·interval
//! ```
//!
//! Why GCRA: one `u64` per key instead of a token count and a refill time,
//! integer arithmetic only, and "how long until the next event is allowed"
//! falls out for free. Why set-associative: the table never grows, a lookup
//! touches one cache line or two, and eviction is a local choice (the slot
//! that is the most forgiven, i.e. the one closest to an empty bucket),
//! with no global list to maintain. Keys are hashed with a seed the caller
//! chooses at random, so a sender cannot aim many keys at one bucket.
//!
//! Contract: no allocation after [`RateTable::new`], no panic.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use crate::time::{Duration, Instant};

/// Slots per bucket.
const WAYS: usize = 8;

/// A rate: `burst` events at once, then one per `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Time one event costs.
    pub interval: Duration,
    /// Events allowed back to back from an idle key (at least 1).
    pub burst: u32,
}

impl Gcra {
    /// `count` events per `per`, all of them allowed at once (a burst of `count`).
    pub fn per(count: u32, per: Duration) -> Self {
        let count = count.max(1);
        Self {
            interval: Duration::from_micros((per.as_micros() / u64::from(count)).max(1)),
            burst: count,
        }
    }

    /// How far ahead of `now` the theoretical arrival time may run.
    fn tolerance(&self) -> u64 {
        self.interval
            .as_micros()
            .saturating_mul(u64::from(self.burst.max(1)))
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The key; 0 marks a free slot.
    key: u64,
    /// Theoretical arrival time, µs.
    tat: u64,
    /// End of a ban, µs (0: none).
    banned_until: u64,
}

/// What [`RateTable::hit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    /// Within the rate.
    Allowed,
    /// The key is banned until the given time.
    Banned(Instant),
    /// Over the rate (and, if the table bans, banned from now on).
    Limited,
}

/// A bounded table of GCRA states.
#[derive(Debug, Clone)]
pub struct RateTable {
    // INVARIANT: buckets.len() is a power of two and mask == buckets.len() - 1.
    buckets: Vec<[Slot; WAYS]>,
    mask: u64,
    gcra: Gcra,
    ban: Duration,
    evictions: u64,
}

impl RateTable {
    /// A table of at least `slots` keys (rounded up to a power of two
    /// buckets), limited by `gcra`; a key over the rate is banned for `ban`
    /// (zero: no ban, only the events over the rate are refused).
    pub fn new(slots: usize, gcra: Gcra, ban: Duration) -> Self {
        let buckets = (slots.max(WAYS) / WAYS).next_power_of_two();
        Self {
            buckets: vec![[Slot::default(); WAYS]; buckets],
            mask: buckets as u64 - 1,
            gcra,
            ban,
            evictions: 0,
        }
    }

    /// Keys the table can hold.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Slots taken over from another key because a bucket was full.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// The rate.
    pub fn gcra(&self) -> Gcra {
        self.gcra
    }

    /// Counts one event of `key` at `now`.
    pub fn hit(&mut self, now: Instant, key: u64) -> Hit {
        let gcra = self.gcra;
        let ban = self.ban;
        let now_us = now.as_micros();
        let Some(slot) = self.slot_mut(now_us, key, true) else {
            return Hit::Allowed;
        };
        if slot.banned_until > now_us {
            return Hit::Banned(Instant::from_micros(slot.banned_until));
        }
        let tat = slot
            .tat
            .max(now_us)
            .saturating_add(gcra.interval.as_micros());
        if tat - now_us > gcra.tolerance() {
            if ban > Duration::ZERO {
                slot.banned_until = now_us.saturating_add(ban.as_micros());
                // The ban is the punishment; the bucket starts empty after it.
                slot.tat = slot.banned_until;
            }
            return Hit::Limited;
        }
        slot.tat = tat;
        Hit::Allowed
    }

    /// True when one more event of `key` at `now` would be over the rate
    /// (or the key is banned). Changes nothing.
    pub fn is_limited(&self, now: Instant, key: u64) -> bool {
        let now_us = now.as_micros();
        let Some(slot) = self.slot(key) else {
            return false;
        };
        if slot.banned_until > now_us {
            return true;
        }
        let tat = slot
            .tat
            .max(now_us)
            .saturating_add(self.gcra.interval.as_micros());
        tat - now_us > self.gcra.tolerance()
    }

    /// The ban period.
    pub fn ban(&self) -> Duration {
        self.ban
    }

    /// Forgets `key` (its rate and any ban).
    pub fn forget(&mut self, key: u64) {
        let key = key.max(1);
        let b = self.bucket_of(key);
        if let Some(s) = self
            .buckets
            .get_mut(b)
            .and_then(|bucket| bucket.iter_mut().find(|s| s.key == key))
        {
            *s = Slot::default();
        }
    }

    /// Forgets every key.
    pub fn clear(&mut self) {
        for b in &mut self.buckets {
            *b = [Slot::default(); WAYS];
        }
    }

    fn bucket_of(&self, key: u64) -> usize {
        // The key is a keyed hash: its low bits are as good as any.
        (key & self.mask) as usize
    }

    fn slot(&self, key: u64) -> Option<&Slot> {
        let key = key.max(1);
        self.buckets
            .get(self.bucket_of(key))?
            .iter()
            .find(|s| s.key == key)
    }

    /// The slot of `key`, taking one over when `insert` (a free one, else
    /// the most forgiven: not banned, smallest `tat`).
    fn slot_mut(&mut self, now_us: u64, key: u64, insert: bool) -> Option<&mut Slot> {
        let key = key.max(1);
        let b = self.bucket_of(key);
        let bucket = self.buckets.get_mut(b)?;
        if let Some(i) = bucket.iter().position(|s| s.key == key) {
            return bucket.get_mut(i);
        }
        if !insert {
            return None;
        }
        // A free slot, or one whose state is the same as an empty one.
        let idle = |s: &Slot| s.key == 0 || (s.tat <= now_us && s.banned_until <= now_us);
        let victim = match bucket.iter().position(idle) {
            Some(i) => i,
            None => {
                self.evictions += 1;
                // Rank: unbanned before banned, then the smallest tat (the
                // most forgiven), then the soonest end of ban.
                bucket
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| (s.banned_until > now_us, s.banned_until, s.tat))
                    .map_or(0, |(i, _)| i)
            }
        };
        let slot = bucket.get_mut(victim)?;
        *slot = Slot {
            key,
            tat: now_us,
            banned_until: 0,
        };
        Some(slot)
    }
}

/// Rows of a [`SharedRate`].
const SHARED_ROWS: usize = 2;

/// A GCRA rate per key shared by every shard of a process, lock-free: the
/// failed-auth throttle of a source address must hold however many shards
/// see its attempts (a REGISTER is authenticated by the shard that owns its
/// AoR, so a guesser naming many users reaches every shard).
///
/// ```text
///  key bytes ─► two seeded hashes ─► one AtomicU64 TAT per row (count-min)
///  hit:        each row: tat' = max(tat, now) + interval, kept unless over the burst (CAS loop)
///  is_limited: the least row's tat' − now > burst · interval
/// ```
///
/// Why count-min and not [`RateTable`]'s keyed slots: a slot's key and
/// timestamp cannot be replaced together atomically without a lock, while a
/// cell shared by colliding keys only ever makes a source look busier —
/// and it would have to collide in both rows. Failures are rare events, so
/// the cells are quiet. Shards pass their own `now`; their clocks' epochs
/// differ by the milliseconds between their starts, nothing next to
/// throttle windows of seconds to minutes.
///
/// Contract: no allocation after [`SharedRate::new`], no panic.
#[derive(Debug)]
pub struct SharedRate {
    // INVARIANT: cells.len() == SHARED_ROWS * (mask + 1), mask + 1 a power of two.
    cells: Box<[core::sync::atomic::AtomicU64]>,
    mask: u64,
    seeds: [u64; SHARED_ROWS],
    gcra: Gcra,
}

impl SharedRate {
    /// A table of `slots` cells per row (rounded up to a power of two),
    /// limited by `gcra`, its hashes seeded from `seed`.
    pub fn new(slots: usize, gcra: Gcra, seed: u64) -> Self {
        let per_row = slots.max(64).next_power_of_two();
        Self {
            cells: (0..per_row * SHARED_ROWS)
                .map(|_| core::sync::atomic::AtomicU64::new(0))
                .collect(),
            mask: per_row as u64 - 1,
            seeds: [seed, seed.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15],
            gcra,
        }
    }

    /// Cells per row.
    pub fn capacity(&self) -> usize {
        (self.mask + 1) as usize
    }

    fn cell(&self, row: usize, key: &[u8]) -> Option<&core::sync::atomic::AtomicU64> {
        let seed = self.seeds.get(row).copied().unwrap_or(0);
        let i = (crate::hash::hash_bytes(seed, key) & self.mask) as usize;
        self.cells.get(row * self.capacity() + i)
    }

    /// Counts one event of `key` at `now` (over the rate: not counted, as
    /// [`RateTable`] without a ban).
    pub fn hit(&self, now: Instant, key: &[u8]) {
        use core::sync::atomic::Ordering::Relaxed;
        let now_us = now.as_micros();
        let (interval, tolerance) = (self.gcra.interval.as_micros(), self.gcra.tolerance());
        for row in 0..SHARED_ROWS {
            let Some(c) = self.cell(row, key) else {
                continue;
            };
            let _ = c.fetch_update(Relaxed, Relaxed, |tat| {
                let next = tat.max(now_us).saturating_add(interval);
                (next - now_us <= tolerance).then_some(next)
            });
        }
    }

    /// True when one more event of `key` at `now` would be over the rate.
    pub fn is_limited(&self, now: Instant, key: &[u8]) -> bool {
        use core::sync::atomic::Ordering::Relaxed;
        let now_us = now.as_micros();
        let least = (0..SHARED_ROWS)
            .filter_map(|row| self.cell(row, key))
            .map(|c| c.load(Relaxed))
            .min()
            .unwrap_or(0);
        least
            .max(now_us)
            .saturating_add(self.gcra.interval.as_micros())
            - now_us
            > self.gcra.tolerance()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> Instant {
        Instant::from_micros(s * 1_000_000)
    }

    #[test]
    fn burst_then_one_per_interval() {
        // 10 per 60 s: 10 at once, then one every 6 s.
        let mut t = RateTable::new(64, Gcra::per(10, Duration::from_secs(60)), Duration::ZERO);
        for i in 0..10 {
            assert!(!t.is_limited(at(0), 7), "event {i}");
            assert_eq!(t.hit(at(0), 7), Hit::Allowed, "event {i}");
        }
        assert!(t.is_limited(at(0), 7));
        assert_eq!(t.hit(at(0), 7), Hit::Limited);
        assert!(t.is_limited(at(5), 7));
        assert_eq!(t.hit(at(6), 7), Hit::Allowed);
        assert_eq!(t.hit(at(6), 7), Hit::Limited);
        // Other keys are untouched; after a minute the bucket is full again.
        assert_eq!(t.hit(at(6), 8), Hit::Allowed);
        for _ in 0..10 {
            assert_eq!(t.hit(at(70), 7), Hit::Allowed);
        }
    }

    #[test]
    fn bans_last_their_period() {
        let mut t = RateTable::new(
            64,
            Gcra::per(5, Duration::from_secs(1)),
            Duration::from_secs(30),
        );
        for _ in 0..5 {
            assert_eq!(t.hit(at(0), 1), Hit::Allowed);
        }
        assert_eq!(t.hit(at(0), 1), Hit::Limited);
        assert_eq!(t.hit(at(1), 1), Hit::Banned(at(30)));
        assert_eq!(t.hit(at(29), 1), Hit::Banned(at(30)));
        assert!(t.is_limited(at(29), 1));
        assert_eq!(t.hit(at(30), 1), Hit::Allowed);
    }

    #[test]
    fn memory_is_bounded_and_bans_survive_churn() {
        let mut t = RateTable::new(
            1024,
            Gcra::per(1, Duration::from_secs(1)),
            Duration::from_secs(60),
        );
        let cap = t.capacity();
        assert_eq!(cap, 1024);
        // Ban key 42.
        assert_eq!(t.hit(at(0), 42), Hit::Allowed);
        assert_eq!(t.hit(at(0), 42), Hit::Limited);
        // A million other keys, each sending within its rate.
        let mut k = 1u64;
        for _ in 0..1_000_000 {
            k = k
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            t.hit(at(1), k);
        }
        assert_eq!(t.capacity(), cap);
        assert!(t.evictions() > 0);
        // Unbanned, forgiven entries were evicted first: the ban holds.
        assert_eq!(t.hit(at(2), 42), Hit::Banned(at(60)));
    }

    #[test]
    fn a_shared_rate_adds_up_over_threads_and_refills() {
        let t = std::sync::Arc::new(SharedRate::new(
            1024,
            Gcra::per(10, Duration::from_secs(60)),
            1,
        ));
        let now = Instant::from_micros(5_000_000);
        std::thread::scope(|s| {
            for _ in 0..2 {
                let t = t.clone();
                s.spawn(move || {
                    for _ in 0..5 {
                        t.hit(now, b"10.0.0.1");
                    }
                });
            }
        });
        assert!(t.is_limited(now, b"10.0.0.1"));
        assert!(!t.is_limited(now, b"10.0.0.2"));
        // Over the rate, hits are not counted: one interval later, one more.
        t.hit(now, b"10.0.0.1");
        assert!(!t.is_limited(now + Duration::from_secs(6), b"10.0.0.1"));
        assert!(t.is_limited(now + Duration::from_secs(5), b"10.0.0.1"));
    }
}
