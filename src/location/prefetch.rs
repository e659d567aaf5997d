//! A cache prefetch hint: the one `unsafe` line of the location service.
//!
//! Why: a batch of lookups in a table of a million AoRs spends its time
//! waiting for DRAM (the bucket, then the block: two dependent misses per
//! key). Issuing a prefetch for the next keys' bucket and block lets those
//! misses overlap; a plain load cannot do that as well, because a load that
//! misses holds up the reorder buffer until its data arrives, while a
//! prefetch retires at once. Measured in `benches/lookup.rs` (1 M bindings,
//! CPU time): 3.2 M lookups/s with loads, 8.5 M/s with prefetches.
//!
//! Stable Rust has no safe prefetch yet (`core::hint::prefetch_read` is
//! unstable), hence the intrinsic. Elsewhere than x86-64, and under miri,
//! this is a no-op.
#![allow(unsafe_code)]

/// Hints the CPU to bring the cache line at `p` into L1. Never faults,
/// whatever `p` is; reads nothing architecturally.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: PREFETCHT0 is a hint: it never faults, has no architectural
    // effect and does not dereference `p` in the language sense; `sse` is
    // part of the x86-64 baseline, so the instruction always exists.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = p;
}
