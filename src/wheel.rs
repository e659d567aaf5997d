//! A hierarchical timing wheel for the sans-IO core: transaction timers
//! (Timer A–M, 500 ms to 32 s) and binding expiries (seconds to hours).
//!
//! ```text
//! level 0: 4096 slots × 1 ms     (the next ~4 s)
//! level 1: 4096 slots × 4.096 s  (the next ~4.7 h), cascaded into level 0 as the cursor reaches them
//! overflow: anything later, re-examined once per level-1 lap
//! ```
//!
//! Finding the next deadline is O(1) in the number of timers: a bitmap per
//! level says which slots hold anything, a level-1 slot stands for its lap
//! start (a lower bound) once it holds more than a few entries, and the overflow's least deadline is kept aside.
//! An earlier version took the exact least deadline of the first non-empty
//! level-1 slot after every tick that fired: with 32 s transaction timers at
//! 10,000 a second that slot holds ~40,000 entries, scanned every
//! millisecond — ~10 µs of CPU per call at 5,000 calls/s.
//!
//! Why here and not in `shard/`: the wheel is pure data driven by the `now`
//! the core is given, so the transaction and registrar layers (sans-IO) own
//! one each and tests run them on virtual time.
//!
//! Timers are never cancelled: an item carries whatever its owner needs to
//! tell a stale timer from a live one (a generation number), and the owner
//! ignores stale ones when they fire. Inserting and firing are O(1).
//!
//! Memory follows the timers pending, not the uptime. Level-0 slots keep
//! their capacity (all of them are visited every ~4 s, so that is the peak
//! of one lap). A level-1 slot is visited once per ~4.7 h lap, so one that
//! kept its capacity would hold a full 4 s window of timers' worth of memory
//! for hours, and every slot in turn would: an earlier version grew ~95 KB/s
//! at 500 calls/s until the whole lap had been visited (found by
//! `benches/soak.sh`). A cascaded level-1 slot hands its buffer to a small
//! pool instead, from which the next level-1 slot near the cursor to receive
//! a timer takes it: the steady state still does not allocate.

use crate::time::{Duration, Instant};

const BITS: u32 = 12;
const SLOTS: usize = 1 << BITS;
const MASK: u64 = (SLOTS as u64) - 1;
const WORDS: usize = SLOTS / 64;
/// Level-1 slots up to this size report their exact least deadline; larger
/// ones their lap start.
const EXACT_SCAN: usize = 64;
/// Drained level-1 buffers kept for reuse (transaction timers fill about
/// one level-1 slot per lap of level 0; a few spare cover bursts).
const POOL: usize = 4;
/// Level-1 slots at most this many laps ahead of the cursor take a pooled
/// buffer; farther ones (binding expiries, hours out) start empty, so a
/// large buffer is not parked for hours where few timers go.
const POOL_REACH: u64 = 16;
/// Resolution of level 0.
pub const TICK: Duration = Duration::from_millis(1);

#[derive(Debug, Clone)]
struct Entry<T> {
    at: u64,
    item: T,
}

/// A timing wheel of items of type `T`.
#[derive(Debug, Clone)]
pub struct Wheel<T> {
    level0: Vec<Vec<Entry<T>>>,
    level1: Vec<Vec<Entry<T>>>,
    overflow: Vec<Entry<T>>,
    /// Emptied level-1 buffers, capacity kept, at most [`POOL`].
    spare: Vec<Vec<Entry<T>>>,
    /// Which level-0 / level-1 slots are non-empty, one bit per slot.
    used0: Box<[u64; WORDS]>,
    used1: Box<[u64; WORDS]>,
    /// The least deadline in `overflow`.
    overflow_min: Option<u64>,
    /// Every tick before this one has been fired.
    cursor: u64,
    len: usize,
    /// A lower bound of the earliest deadline (exact after each `expire`).
    earliest: Option<u64>,
}

fn ticks(t: Instant) -> u64 {
    t.as_micros() / TICK.as_micros()
}

impl<T> Wheel<T> {
    /// An empty wheel whose time starts at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            level0: (0..SLOTS).map(|_| Vec::new()).collect(),
            level1: (0..SLOTS).map(|_| Vec::new()).collect(),
            overflow: Vec::new(),
            spare: Vec::new(),
            used0: Box::new([0; WORDS]),
            used1: Box::new([0; WORDS]),
            overflow_min: None,
            cursor: ticks(now),
            len: 0,
            earliest: None,
        }
    }

    /// Number of timers pending.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `item` to fire at `at` (rounded up to the next tick; a time
    /// in the past fires at the next [`Wheel::expire`]).
    pub fn insert(&mut self, at: Instant, item: T) {
        let t = ticks(at + Duration::from_micros(TICK.as_micros() - 1)).max(self.cursor);
        self.len += 1;
        self.earliest = Some(self.earliest.map_or(t, |e| e.min(t)));
        self.place(Entry { at: t, item });
    }

    fn place(&mut self, e: Entry<T>) {
        let delta = e.at.saturating_sub(self.cursor);
        if delta < SLOTS as u64 {
            let i = (e.at & MASK) as usize;
            if let Some(s) = self.level0.get_mut(i) {
                s.push(e);
                set(&mut self.used0, i);
            }
        } else if delta < (SLOTS as u64) << BITS {
            let i = ((e.at >> BITS) & MASK) as usize;
            if let Some(s) = self.level1.get_mut(i) {
                if s.capacity() == 0
                    && (e.at >> BITS).saturating_sub(self.cursor >> BITS) <= POOL_REACH
                {
                    if let Some(buf) = self.spare.pop() {
                        *s = buf;
                    }
                }
                s.push(e);
                set(&mut self.used1, i);
            }
        } else {
            self.overflow_min = Some(self.overflow_min.map_or(e.at, |m| m.min(e.at)));
            self.overflow.push(e);
        }
    }

    /// Entries the wheel has room for without allocating (its slots',
    /// overflow's and pool's capacities): what it holds in memory.
    pub fn capacity(&self) -> usize {
        let slots = |l: &Vec<Vec<Entry<T>>>| l.iter().map(Vec::capacity).sum::<usize>();
        slots(&self.level0) + slots(&self.level1) + self.overflow.capacity() + slots(&self.spare)
    }

    /// When the earliest pending timer fires (a lower bound: waking at this
    /// time and calling [`Wheel::expire`] is always correct).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.earliest
            .map(|t| Instant::from_micros(t.saturating_mul(TICK.as_micros())))
    }

    /// Fires every timer due at or before `now`, in deadline order, calling `fire` for each.
    pub fn expire(&mut self, now: Instant, mut fire: impl FnMut(Instant, T)) {
        let target = ticks(now);
        loop {
            let due = match self.earliest {
                Some(e) if self.len > 0 && e <= target => e.max(self.cursor),
                _ => break,
            };
            // Nothing is due before `due` (earliest is a lower bound): skip there.
            self.jump_to(due);
            let t = self.cursor;
            if t & MASK == 0 {
                self.cascade(t);
            }
            let mut fired_any = false;
            let i = (t & MASK) as usize;
            if let Some(s) = self.level0.get_mut(i) {
                let mut k = 0;
                while k < s.len() {
                    if s.get(k).is_some_and(|e| e.at <= t) {
                        let e = s.swap_remove(k);
                        self.len -= 1;
                        fired_any = true;
                        fire(Instant::from_micros(e.at * TICK.as_micros()), e.item);
                    } else {
                        k += 1;
                    }
                }
                if s.is_empty() {
                    clear(&mut self.used0, i);
                }
            }
            // Through jump_to, not `cursor = t + 1`: when t + 1 is a level-0
            // lap boundary its level-1 slot must be cascaded now. Skipping it
            // (as a bare increment did) left those timers in level 1 until
            // the next level-1 lap, ~4.6 h later, while scan_earliest kept
            // reporting them due: the loop then ran the cursor past `now`,
            // one tick and one full scan at a time (a hang, found by the
            // simulations in src/sim.rs).
            self.jump_to(t + 1);
            if fired_any || self.earliest.is_some_and(|e| e <= t) {
                self.earliest = if self.len == 0 {
                    None
                } else {
                    self.scan_earliest()
                };
            }
        }
        if self.len == 0 {
            self.earliest = None;
        }
        if self.cursor <= target {
            self.jump_to(target + 1);
        }
    }

    /// Moves the cursor to `to` (≤ the earliest deadline), cascading every
    /// level-1 boundary crossed on the way.
    fn jump_to(&mut self, to: u64) {
        while self.cursor < to {
            let next_boundary = (self.cursor | MASK) + 1;
            if next_boundary > to {
                self.cursor = to;
                break;
            }
            self.cursor = next_boundary;
            self.cascade(next_boundary);
        }
    }

    /// At a level-0 lap boundary `t`: move the level-1 slot that starts now
    /// into level 0, and once per level-1 lap, bring overflow entries closer.
    fn cascade(&mut self, t: u64) {
        let idx = ((t >> BITS) & MASK) as usize;
        if idx == 0 && !self.overflow.is_empty() {
            let over = core::mem::take(&mut self.overflow);
            self.overflow_min = None;
            for e in over {
                self.place(e);
            }
        }
        if let Some(s) = self.level1.get_mut(idx) {
            if !s.is_empty() {
                let mut moved = core::mem::take(s);
                clear(&mut self.used1, idx);
                for e in moved.drain(..) {
                    self.place(e);
                }
                // Everything went to level 0 (it is due within this lap):
                // the buffer goes to the pool for the next slot to fill,
                // not back to this one (visited again in ~4.7 h).
                if self.spare.len() < POOL {
                    self.spare.push(moved);
                }
            }
        }
    }

    /// The earliest pending deadline, or a lower bound of it: the least of
    /// the first non-empty level-0 slot from the cursor (exact), the first
    /// non-empty level-1 slot after the cursor's (exact when it holds at most
    /// [`EXACT_SCAN`] entries, else its lap start: a lower bound — waking
    /// there cascades the slot, and the next scan is exact), and the
    /// overflow's least deadline.
    ///
    /// Why level 1 too and not level 0 first: level 0 spans the next 4096
    /// ticks, which reach into the next lap, while a level-1 slot of that
    /// lap can hold a deadline inserted when it was more than a lap away and
    /// due before anything in level 0. Taking level 0 alone reported such a
    /// timer, and fired it, up to a lap late.
    fn scan_earliest(&self) -> Option<u64> {
        let l0 = next_set(&self.used0, (self.cursor & MASK) as usize).and_then(|k| {
            let t = self.cursor + k as u64;
            self.level0
                .get((t & MASK) as usize)
                .and_then(|s| s.iter().map(|e| e.at).min())
        });
        let here = self.cursor >> BITS;
        let first = ((here + 1) & MASK) as usize;
        let l1 = next_set(&self.used1, first).map(|k| {
            let lap = here + 1 + k as u64;
            match self.level1.get((lap & MASK) as usize) {
                // Small slots: the exact least deadline, cheaply.
                Some(s) if s.len() <= EXACT_SCAN => {
                    s.iter().map(|e| e.at).min().unwrap_or(lap << BITS)
                }
                _ => lap << BITS,
            }
        });
        [l0, l1, self.overflow_min].into_iter().flatten().min()
    }
}

fn set(bits: &mut [u64; WORDS], i: usize) {
    if let Some(w) = bits.get_mut(i / 64) {
        *w |= 1 << (i % 64);
    }
}

fn clear(bits: &mut [u64; WORDS], i: usize) {
    if let Some(w) = bits.get_mut(i / 64) {
        *w &= !(1 << (i % 64));
    }
}

/// The distance `k` in `0..SLOTS` of the first set bit at `(from + k) % SLOTS`.
fn next_set(bits: &[u64; WORDS], from: usize) -> Option<usize> {
    let (w0, b0) = (from / 64, from % 64);
    for step in 0..=WORDS {
        let w = (w0 + step) % WORDS;
        let mut word = bits.get(w).copied().unwrap_or(0);
        if step == 0 {
            word &= !0u64 << b0;
        } else if step == WORDS {
            // Back at the first word: only the bits before `from`.
            word &= !(!0u64 << b0);
        }
        if word != 0 {
            let pos = w * 64 + word.trailing_zeros() as usize;
            return Some((pos + SLOTS - from) % SLOTS);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(v: u64) -> Instant {
        Instant::from_micros(v * 1_000)
    }

    /// Transaction-like load (two 32 s timers a millisecond) for 20 minutes
    /// of virtual time: the wheel's memory stays near what one minute
    /// needed. When level-1 slots kept their buffers, every slot the cursor
    /// passed added a 4 s window's worth (~300 slots here: 17× as much, measured).
    #[test]
    fn memory_follows_the_pending_timers_not_the_uptime() {
        let mut w = Wheel::new(Instant::ZERO);
        let mut fired = 0u64;
        let mut after_warmup = 0;
        for t in 0..20 * 60_000u64 {
            w.insert(ms(t + 32_000), t);
            w.insert(ms(t + 32_500), t);
            w.expire(ms(t), |_, _| fired += 1);
            if t == 60_000 {
                after_warmup = w.capacity();
            }
        }
        // Every timer due by the last millisecond fired.
        assert_eq!(fired, (20 * 60_000 - 32_000) + (20 * 60_000 - 32_500));
        assert!(w.len() <= 2 * 32_501, "{}", w.len());
        let end = w.capacity();
        assert!(
            end <= after_warmup + after_warmup / 4,
            "capacity {after_warmup} entries after a minute, {end} after 20"
        );
    }

    #[test]
    fn fires_in_order_across_levels() {
        let mut w = Wheel::new(Instant::ZERO);
        for (at, id) in [
            (500, 1),
            (4_000, 2),
            (32_000, 3),
            (3_600_000, 4),
            (40_000_000, 5),
            (1, 6),
        ] {
            w.insert(ms(at), id);
        }
        assert_eq!(w.len(), 6);
        assert_eq!(w.next_deadline(), Some(ms(1)));
        let mut fired = Vec::new();
        w.expire(ms(499), |_, i| fired.push(i));
        assert_eq!(fired, vec![6]);
        w.expire(ms(32_000), |_, i| fired.push(i));
        assert_eq!(fired, vec![6, 1, 2, 3]);
        assert_eq!(w.next_deadline(), Some(ms(3_600_000)));
        w.expire(ms(50_000_000), |_, i| fired.push(i));
        assert_eq!(fired, vec![6, 1, 2, 3, 4, 5]);
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    /// Regression: a call of `expire` that ends on the last tick of a
    /// level-0 lap must still cascade the next lap's level-1 slot.
    #[test]
    fn a_lap_boundary_reached_by_firing_is_cascaded() {
        let mut w = Wheel::new(Instant::ZERO);
        w.insert(ms(4_095), 1);
        w.insert(ms(5_000), 2);
        let mut fired = Vec::new();
        w.expire(ms(4_095), |_, i| fired.push(i));
        assert_eq!(fired, vec![1]);
        assert_eq!(w.next_deadline(), Some(ms(5_000)));
        w.expire(ms(4_999), |_, i| fired.push(i));
        assert_eq!(fired, vec![1]);
        w.expire(ms(5_000), |_, i| fired.push(i));
        assert_eq!(fired, vec![1, 2]);
        assert!(w.is_empty());
    }

    /// A crowded level-1 slot (more than EXACT_SCAN entries) reports its lap
    /// start as a lower bound; its timers still fire in order, none early.
    #[test]
    fn a_crowded_level1_slot_fires_in_order_and_never_early() {
        let mut w = Wheel::new(Instant::ZERO);
        // 500 timers in the lap starting at 32,768 ms, inserted in reverse.
        for i in (0..500u64).rev() {
            w.insert(ms(33_000 + i * 7), i);
        }
        w.insert(ms(100), 1_000);
        let bound = w.next_deadline();
        assert_eq!(bound, Some(ms(100)));
        let mut fired = Vec::new();
        let mut now = 0;
        while now < 40_000 {
            let before = fired.len();
            w.expire(ms(now), |at, i| fired.push((at, i)));
            for &(at, _) in &fired[before..] {
                assert!(at <= ms(now), "fired early: {at:?} at {now} ms");
            }
            let next = w.next_deadline().map_or(40_000, |d| d.as_micros() / 1_000);
            assert!(next > now, "the deadline must move forward");
            now = next;
        }
        let order: Vec<u64> = fired.iter().map(|&(_, i)| i).collect();
        let mut want = vec![1_000];
        want.extend(0..500);
        assert_eq!(order, want);
        assert!(w.is_empty());
    }

    #[test]
    fn past_deadlines_fire_next() {
        let mut w = Wheel::new(ms(10_000));
        w.insert(ms(5), "late");
        let mut fired = Vec::new();
        w.expire(ms(10_000), |_, i| fired.push(i));
        assert_eq!(fired, vec!["late"]);
    }

    /// Regression: the earliest deadline was taken from the first non-empty
    /// level-0 slot alone, so a level-1 timer due before it (a deadline in
    /// the next lap, inserted when it was more than a lap away) was
    /// reported, and fired, up to a lap (4 s) late.
    #[test]
    fn a_level1_timer_before_a_level0_one_is_the_earliest() {
        let mut w = Wheel::new(Instant::ZERO);
        w.insert(ms(4_196), "level 1");
        w.expire(ms(4_000), |_, _| {});
        w.insert(ms(7_000), "level 0, later");
        w.insert(ms(4_050), "level 0, sooner");
        let mut fired = Vec::new();
        w.expire(ms(4_050), |_, i| fired.push(i));
        assert_eq!(w.next_deadline(), Some(ms(4_196)));
        w.expire(ms(4_196), |_, i| fired.push(i));
        assert_eq!(fired, vec!["level 0, sooner", "level 1"]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Inserts and expiries interleaved, against a sorted model: each
        /// timer fires in the first `expire` whose `now` reaches its
        /// deadline (rounded up to the tick), in deadline order, and
        /// `next_deadline` is never later than the earliest pending one.
        #[test]
        fn matches_a_model_with_interleaved_inserts(
            ops in proptest::collection::vec((0u64..3, 0u64..40_000_000), 1..300),
        ) {
            let mut w = Wheel::new(Instant::ZERO);
            let mut pending: Vec<(u64, usize)> = Vec::new();
            let mut now = 0u64;
            let mut id = 0usize;
            for (kind, v) in ops {
                if kind < 2 {
                    // A deadline from now to ~11 h ahead (all three levels), in µs.
                    let at = now + v * 1_000 / if kind == 0 { 1 } else { 1_000 };
                    w.insert(Instant::from_micros(at), id);
                    pending.push((at.div_ceil(1_000), id));
                    id += 1;
                } else {
                    now += v % 5_000_000;
                    let mut fired = Vec::new();
                    w.expire(Instant::from_micros(now), |at, i| fired.push((at.as_micros() / 1_000, i)));
                    let tick = now / 1_000;
                    let mut due: Vec<(u64, usize)> = pending.iter().copied().filter(|(t, _)| *t <= tick).collect();
                    pending.retain(|(t, _)| *t > tick);
                    due.sort_unstable();
                    let mut got = fired.clone();
                    got.sort_unstable();
                    prop_assert_eq!(&got, &due, "at {} ms", tick);
                    prop_assert!(fired.windows(2).all(|p| p[0].0 <= p[1].0), "in order: {:?}", fired);
                }
                if let Some(min) = pending.iter().map(|(t, _)| *t).min() {
                    let next = w.next_deadline().map(|d| d.as_micros() / 1_000);
                    prop_assert!(next.is_some_and(|n| n <= min), "next {:?} > earliest {}", next, min);
                }
                prop_assert_eq!(w.len(), pending.len());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the deadlines and however time advances, every timer
        /// fires exactly once, not before its deadline, and in order.
        #[test]
        fn fires_each_timer_once_in_order(
            deadlines in proptest::collection::vec(0u64..20_000_000, 1..200),
            steps in proptest::collection::vec(1u64..3_000_000, 1..60),
        ) {
            let mut w = Wheel::new(Instant::ZERO);
            for (i, d) in deadlines.iter().enumerate() {
                w.insert(Instant::from_micros(*d * 1_000), i);
            }
            let mut now = 0u64;
            let mut fired: Vec<(u64, usize)> = Vec::new();
            for s in steps.iter().chain(std::iter::once(&30_000_000)) {
                now += s;
                let mut last = 0;
                w.expire(ms(now), |at, i| {
                    assert!(at.as_micros() >= last);
                    last = at.as_micros();
                    fired.push((now, i));
                });
            }
            prop_assert_eq!(fired.len(), deadlines.len());
            let mut seen = vec![false; deadlines.len()];
            for (t, i) in fired {
                prop_assert!(!seen[i]);
                seen[i] = true;
                prop_assert!(deadlines[i] <= t, "fired early");
            }
        }
    }
}
