//! Identifiers that carry their call's table position, so a response or an
//! in-dialog request finds its state by decoding a few hex digits instead
//! of looking a string up in a map.
//!
//! ```text
//! branch  z9hG4bK-sl <c> <tt> <ssssss> <gggggggg> <k>     c: client engine, k: transaction in the call
//! Call-ID <c><tt><ssssss><gggggggg>-<run>@sipload          tt: thread, s: slot, g: generation (hex)
//! From tag <c><tt><ssssss><gggggggg>
//! To tag (server) u<tt><ssssss><gggggggg>
//! ```
//! The generation is bumped every time a slot is reused, so a late
//! response for a finished call never touches the call now in its slot.

/// The branch prefix (RFC 3261 magic cookie, then ours).
pub const BRANCH_PREFIX: &[u8] = b"z9hG4bK-sl";
/// Hex digits of a call key (client digit excluded).
pub const KEY_HEX: usize = 16;

/// A call's place: which client engine, thread, slot, generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallKey {
    /// Client engine (0: the load, 1: the server's own registrations).
    pub client: u8,
    /// Worker thread.
    pub thread: u8,
    /// Slot in the thread's call table (24 bits).
    pub slot: u32,
    /// Generation of the slot.
    pub gen: u32,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `v` as `n` lowercase hex digits (the low 4n bits).
#[inline]
pub fn put_hex(out: &mut [u8], v: u64, n: usize) -> Option<()> {
    let out = out.get_mut(..n)?;
    for (i, o) in out.iter_mut().enumerate() {
        let shift = 4 * (n - 1 - i);
        *o = *HEX.get(((v >> shift) & 0xf) as usize)?;
    }
    Some(())
}

/// Reads `s` as hex.
#[inline]
pub fn get_hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v = 0u64;
    for &b in s {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        v = v << 4 | u64::from(d);
    }
    Some(v)
}

impl CallKey {
    /// The 64-bit form: thread (8) | slot (24) | generation (32).
    #[inline]
    pub fn packed(&self) -> u64 {
        u64::from(self.thread) << 56 | u64::from(self.slot & 0xff_ffff) << 32 | u64::from(self.gen)
    }

    /// Writes the client digit and the 16 hex digits (17 bytes).
    #[inline]
    pub fn write(&self, out: &mut [u8]) -> Option<()> {
        *out.first_mut()? = b'0' + self.client;
        put_hex(out.get_mut(1..)?, self.packed(), KEY_HEX)
    }

    /// Reads what [`CallKey::write`] wrote.
    #[inline]
    pub fn read(s: &[u8]) -> Option<Self> {
        let (&c, rest) = s.split_first()?;
        let client = c.checked_sub(b'0').filter(|&c| c < 10)?;
        let v = get_hex(rest.get(..KEY_HEX)?)?;
        Some(Self {
            client,
            thread: (v >> 56) as u8,
            slot: (v >> 32) as u32 & 0xff_ffff,
            gen: v as u32,
        })
    }

    /// Decodes a branch we generated: the key and the transaction digit.
    #[inline]
    pub fn from_branch(branch: &[u8]) -> Option<(Self, u8)> {
        let rest = branch.strip_prefix(BRANCH_PREFIX)?;
        if rest.len() != 1 + KEY_HEX + 1 {
            return None;
        }
        let key = Self::read(rest)?;
        let k = rest.last()?.checked_sub(b'0').filter(|&k| k < 10)?;
        Some((key, k))
    }
}

/// A server-side dialog key (our To tag): `u` + thread | slot | generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DialogKey {
    /// Worker thread.
    pub thread: u8,
    /// Slot in the server table.
    pub slot: u32,
    /// Generation.
    pub gen: u32,
}

impl DialogKey {
    /// Bytes of the tag.
    pub const LEN: usize = 1 + KEY_HEX;

    /// Writes the tag.
    pub fn write(&self, out: &mut [u8]) -> Option<()> {
        *out.first_mut()? = b'u';
        let v = u64::from(self.thread) << 56
            | u64::from(self.slot & 0xff_ffff) << 32
            | u64::from(self.gen);
        put_hex(out.get_mut(1..)?, v, KEY_HEX)
    }

    /// Reads a tag written by [`DialogKey::write`].
    pub fn read(tag: &[u8]) -> Option<Self> {
        let rest = tag.strip_prefix(b"u")?;
        if rest.len() != KEY_HEX {
            return None;
        }
        let v = get_hex(rest)?;
        Some(Self {
            thread: (v >> 56) as u8,
            slot: (v >> 32) as u32 & 0xff_ffff,
            gen: v as u32,
        })
    }
}

/// FNV-1a, 64 bits: the key of a server transaction in the retransmission
/// table (keys are hashes, not strings).
#[inline]
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let k = CallKey {
            client: 1,
            thread: 7,
            slot: 0xab_cdef,
            gen: 0xdead_beef,
        };
        let mut b = [0u8; 17];
        k.write(&mut b).unwrap();
        assert_eq!(&b, b"107abcdefdeadbeef");
        assert_eq!(CallKey::read(&b), Some(k));
        let mut branch = BRANCH_PREFIX.to_vec();
        branch.extend_from_slice(&b);
        branch.push(b'3');
        assert_eq!(CallKey::from_branch(&branch), Some((k, 3)));
        assert_eq!(CallKey::from_branch(b"z9hG4bK-sl1xyz"), None);
        assert_eq!(CallKey::from_branch(b"z9hG4bKother"), None);
        let d = DialogKey {
            thread: 2,
            slot: 5,
            gen: 9,
        };
        let mut t = [0u8; DialogKey::LEN];
        d.write(&mut t).unwrap();
        assert_eq!(DialogKey::read(&t), Some(d));
        assert_eq!(DialogKey::read(b"u12"), None);
    }

    #[test]
    fn hash_separates_parts() {
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }
}
