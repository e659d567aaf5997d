//! The crate's hashes, in one place: a small, fast, *stable* hash of byte
//! strings (the partition of an AoR, the replica's table, the rate and
//! throttle tables), and a keyed FNV-style [`Hasher`] for branches, flow
//! tokens and transaction keys.
//!
//! Why our own: the partition of an AoR must be the same in every shard, in
//! every process and after a restart (it names the log file its bindings
//! live in), so the per-process random seed of std's `RandomState` is out;
//! and AoR keys are short (20–40 bytes), where a multiply-fold over 16-byte
//! blocks (the construction of foldhash and wyhash) beats SipHash several
//! times. The table's hasher is keyed with a seed the caller chooses, so
//! lookups of crafted Request-URIs cannot be steered into long probe chains
//! by someone who does not know it.

use core::hash::{BuildHasher, Hasher as StdHasher};

const K0: u64 = 0x9E37_79B9_7F4A_7C15;
const K1: u64 = 0xD6E8_FEB8_6659_FD93;
const K2: u64 = 0xA076_1D64_78BD_642F;

/// The seed of [`partition_of`]: fixed forever (changing it moves every AoR).
const PARTITION_SEED: u64 = 0x5119_ED6E_0000_0001;

/// 64×64→128 multiply, folded to 64 bits.
#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a).wrapping_mul(u128::from(b));
    (p as u64) ^ ((p >> 64) as u64)
}

#[inline(always)]
fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    let n = b.len().min(8);
    if let (Some(dst), Some(src)) = (w.get_mut(..n), b.get(..n)) {
        dst.copy_from_slice(src);
    }
    u64::from_le_bytes(w)
}

/// Hashes `bytes` with `seed`. Stable across processes, platforms and versions
/// of this crate (a test pins its values).
#[inline]
pub fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(K0);
    let mut blocks = bytes.chunks_exact(16);
    for b in &mut blocks {
        let (lo, hi) = b.split_at(8);
        h = fold(word(lo) ^ h, word(hi) ^ K1);
    }
    let rest = blocks.remainder();
    if !rest.is_empty() {
        let (lo, hi) = rest.split_at(rest.len().min(8));
        h = fold(word(lo) ^ h, word(hi) ^ K2);
    }
    fold(h ^ K1, K0 ^ seed)
}

/// The partition that owns `aor_key`: `hash(aor_key) mod partitions`, with a
/// fixed seed so every shard and every restart agree. `partitions == 0` is
/// treated as 1.
#[inline]
pub fn partition_of(aor_key: &[u8], partitions: u16) -> u16 {
    let n = u64::from(partitions.max(1));
    // The remainder is below `partitions`, so it fits in u16.
    (hash_bytes(PARTITION_SEED, aor_key) % n) as u16
}

/// A keyed [`BuildHasher`] for tables of AoR keys (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHash {
    seed: u64,
}

impl KeyHash {
    /// A hasher family keyed with `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { seed }
    }
}

impl Default for KeyHash {
    fn default() -> Self {
        Self::new(K2)
    }
}

impl BuildHasher for KeyHash {
    type Hasher = KeyHasher;

    #[inline]
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher { h: self.seed }
    }
}

/// The [`core::hash::Hasher`] of [`KeyHash`].
#[derive(Debug, Clone)]
pub struct KeyHasher {
    h: u64,
}

impl StdHasher for KeyHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.h = hash_bytes(self.h, bytes);
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.h = fold(self.h ^ v, K1);
    }

    #[inline]
    fn write_usize(&mut self, v: usize) {
        // `[u8]`'s Hash writes its length first; `hash_bytes` mixes the
        // length in already, so a cheap xor is enough here.
        self.h ^= (v as u64).wrapping_mul(K0);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.h
    }
}

/// A keyed FNV-1a-style 64-bit hash with a final avalanche (no allocation,
/// ~1 ns/byte). Not a MAC: the key only makes branches unpredictable across
/// deployments.
#[derive(Debug, Clone, Copy)]
pub struct Hasher(u64);

impl Hasher {
    /// A hasher keyed with `secret`.
    pub fn new(secret: u64) -> Self {
        Self(0xcbf2_9ce4_8422_2325 ^ secret.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// Mixes in `bytes` and a separator (so `ab|c` differs from `a|bc`).
    pub fn write(&mut self, bytes: &[u8]) -> &mut Self {
        let mut h = self.0;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        self.0 = h.wrapping_mul(0x0000_0100_0000_01b3);
        self
    }

    /// Mixes in a number.
    pub fn write_u64(&mut self, v: u64) -> &mut Self {
        self.write(&v.to_le_bytes())
    }

    /// The hash.
    pub fn finish(&self) -> u64 {
        // murmur3 fmix64
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_hash_is_pinned() {
        // These values name log files on disk: they must never change.
        assert_eq!(
            hash_bytes(PARTITION_SEED, b"alice@example.com"),
            0xfbdc_69d8_5cad_bfe7
        );
        assert_eq!(
            partition_of(b"alice@example.com", 7),
            (0xfbdc_69d8_5cad_bfe7u64 % 7) as u16
        );
        assert_eq!(partition_of(b"x", 0), 0);
    }

    #[test]
    fn spreads_keys_over_partitions() {
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            let k = format!("user{i}@example.com");
            counts[usize::from(partition_of(k.as_bytes(), 8))] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn every_byte_matters() {
        let a = hash_bytes(1, b"user12345@example.com");
        for i in 0..21 {
            let mut k = b"user12345@example.com".to_vec();
            k[i] ^= 1;
            assert_ne!(hash_bytes(1, &k), a, "byte {i}");
        }
        assert_ne!(hash_bytes(1, b"a"), hash_bytes(2, b"a"));
        assert_ne!(hash_bytes(1, b"a"), hash_bytes(1, b"a\0"));
    }
}
