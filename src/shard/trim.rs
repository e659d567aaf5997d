//! Giving the heap back after a burst of transactions.
//!
//! Every transaction keeps its request and its last response on the heap
//! for up to 32 s (Timer J over UDP), so a burst — 10,000 SUBSCRIBEs a
//! second while watchers come up, a registration storm after an outage —
//! leaves hundreds of megabytes freed but still resident: the allocator
//! keeps freed chunks between the long-lived ones (bindings, subscriptions)
//! and only gives back the top of its heap. glibc's `malloc_trim(0)` also
//! returns the whole free pages inside it (`MADV_DONTNEED`).
//!
//! [`Trimmer`] decides when: after the live transactions of the process
//! fell to half of their peak since the last trim (a burst ended; that peak
//! at least [`Trimmer::MIN_PEAK`]) or after a store compaction (it copies a
//! partition's state and frees the copy), and never sooner than
//! [`Trimmer::MIN_GAP`] after the last trim. Under steady load the count stays flat, so nothing
//! is trimmed; a trim walks the allocator's free lists while holding each
//! arena's lock in turn (1–40 ms measured with a million subscriptions), which is why
//! it runs on the main thread and seldom.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

/// When to trim (module doc).
#[derive(Debug, Default)]
pub struct Trimmer {
    peak: u64,
    last: Option<Instant>,
    compactions: u64,
    /// A compaction finished since the last trim.
    compacted: bool,
    /// Trims done.
    pub trims: u64,
}

impl Trimmer {
    /// The smallest peak of live transactions worth a trim.
    pub const MIN_PEAK: u64 = 10_000;
    /// The shortest time between two trims.
    pub const MIN_GAP: Duration = Duration::from_secs(10);

    /// Takes the live transaction count and the store compactions done so
    /// far at `now`; true when a trim is due (the caller then calls
    /// [`release_free_memory`]). A compaction copies a partition's whole
    /// state (a million subscriptions: hundreds of megabytes) and frees it
    /// when written: a trim follows each one, at the same minimum gap.
    pub fn observe(&mut self, live: u64, compactions: u64, now: Instant) -> bool {
        self.peak = self.peak.max(live);
        if compactions > self.compactions {
            self.compactions = compactions;
            self.compacted = true;
        }
        let burst_over = self.peak >= Self::MIN_PEAK && live.saturating_mul(2) <= self.peak;
        let due = (burst_over || self.compacted)
            && self
                .last
                .is_none_or(|t| now.saturating_duration_since(t) >= Self::MIN_GAP);
        if due {
            self.compacted = false;
            self.peak = live;
            self.last = Some(now);
            self.trims += 1;
        }
        due
    }
}

/// Returns the allocator's free pages to the kernel (glibc `malloc_trim`);
/// false where the C library has no such call.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers; it only walks glibc's own
        // arenas under their locks and is safe to call from any thread.
        unsafe { libc::malloc_trim(0) };
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_a_burst_has_drained_and_never_under_steady_load() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut t = Trimmer::default();
        // Steady load: a flat count never trims, however long.
        for s in 0..100 {
            assert!(!t.observe(50_000, 0, at(s)));
        }
        // The burst ends: a trim at half the peak, not before.
        assert!(!t.observe(30_000, 0, at(100)));
        assert!(t.observe(25_000, 0, at(101)));
        // Draining further: the next one waits for the gap and half again.
        assert!(!t.observe(12_000, 0, at(105)));
        assert!(t.observe(12_000, 0, at(111)));
        assert!(!t.observe(7_000, 0, at(122)));
        assert!(t.observe(6_000, 0, at(122)));
        // Below the minimum peak nothing is worth it.
        assert!(!t.observe(0, 0, at(200)));
        assert_eq!(t.trims, 3);
        let mut small = Trimmer::default();
        assert!(!small.observe(9_999, 0, at(0)));
        assert!(!small.observe(0, 0, at(60)));
    }

    #[test]
    fn trims_after_each_compaction_at_the_minimum_gap() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut t = Trimmer::default();
        assert!(!t.observe(100, 0, at(0)));
        assert!(t.observe(100, 1, at(1)));
        // Another one soon after waits for the gap, then is not forgotten.
        assert!(!t.observe(100, 2, at(5)));
        assert!(!t.observe(100, 2, at(8)));
        assert!(t.observe(100, 2, at(11)));
        assert!(!t.observe(100, 2, at(30)));
    }
}
