//! The location service (RFC 3261 §10, §16.5): bindings of addresses of
//! record to contact addresses, written by one registrar per partition and
//! read, without locks, by every shard.
//!
//! ```text
//!  AoR key ──partition_of(key, N)──► partition p ──► owner shard's Registrar (the one writer)
//!                                                      │ Record{p, seq, op}
//!                                                      ▼
//!                              store.append (durable before the 200) + every shard's Replica::apply
//!                                                      │
//!  proxy: Request-URI ─► AorKey ─► Replica::lookup(key, wall) ─► Unknown (404) │ NoBindings (480) │ Found(targets)
//! ```
//!
//! | file | owns |
//! |---|---|
//! | [`binding`] | [`Binding`]: one contact in one compact heap block; [`Target`], its routing view |
//! | [`feed`] | [`Record`]/[`Op`], their encoding, and [`PartitionState`] (what records add up to) |
//! | [`replica`] | [`Replica`]: the per-shard table, `apply` and `lookup` |
//! | [`crate::hash`] | the stable hash behind [`partition_of`] and the keyed table hash |
//! | `table` | the replica's open-addressing table and its pipelined batch lookup |
//! | `prefetch` | a cache prefetch hint (the only `unsafe` here, justified in its doc) |
//!
//! Sans-IO: no socket, no clock, no thread, no RNG. Time comes in as `wall`
//! (unix µs) because expiries are absolute wall-clock times: they must mean
//! the same after a restart.
//!
//! AoR keys (§10.3 step 5, §19.1.4): `user@host`, the user part unescaped and
//! case-sensitive, the host lower-cased without a trailing dot; the scheme
//! and every URI parameter dropped. [`AorKey`] builds one from a URI without
//! allocating.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod binding;
pub mod feed;
mod prefetch;
pub mod replica;
mod table;

pub use crate::hash::{partition_of, KeyHash};
pub use binding::{Binding, BindingError, BindingParts, Target};
pub use feed::{EmptyAor, Entry, FeedError, Op, PartitionState, Record, StateBuilder};
pub use replica::{Applied, ApplyError, Bindings, Lookup, Replica, Snapshot};

use crate::sip::{scan, Host, Scheme, Uri};

/// Longest AoR key accepted (bytes). Longer ones are refused (the
/// registrar answers 400; a lookup treats them as unknown).
pub const MAX_AOR_LEN: usize = 255;

/// Why a URI gives no AoR key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AorError {
    /// Not a sip: or sips: URI (a tel: URI has no domain of ours).
    #[error("not a SIP URI")]
    Scheme,
    /// No user part.
    #[error("no user part")]
    NoUser,
    /// The host is an address, not a domain name.
    #[error("host is not a domain name")]
    NotADomain,
    /// Longer than [`MAX_AOR_LEN`].
    #[error("address of record too long")]
    TooLong,
    /// A malformed `%HH` escape in the user part.
    #[error("malformed escape in the user part")]
    Escape,
}

/// A normalised AoR key in a fixed buffer: `user@domain` (module doc).
#[derive(Clone, Copy)]
pub struct AorKey {
    // INVARIANT: len <= MAX_AOR_LEN.
    len: u8,
    buf: [u8; MAX_AOR_LEN],
}

impl AorKey {
    /// The key of `uri` (a To header's or a Request-URI's).
    pub fn from_uri(uri: &Uri<'_>) -> Result<Self, AorError> {
        if !matches!(uri.scheme, Scheme::Sip | Scheme::Sips) {
            return Err(AorError::Scheme);
        }
        let user = uri.user.filter(|u| !u.is_empty()).ok_or(AorError::NoUser)?;
        // An address as domain (an edge with no DNS name) is kept in its
        // canonical text form, so `sip:a@127.000.0.1` is not a different AoR… and
        // `[2001:DB8::1]` equals `[2001:db8::1]`.
        let mut ip_text = [0u8; 48];
        let host = match uri.host {
            Host::Name(n) => n.strip_suffix(b".").unwrap_or(n),
            Host::V4(a) => {
                let n = crate::sip::emit::format_ip(core::net::IpAddr::V4(a), &mut ip_text);
                ip_text.get(..n).unwrap_or_default()
            }
            Host::V6(a) => {
                let n = crate::sip::emit::format_ip(core::net::IpAddr::V6(a), &mut ip_text);
                ip_text.get(..n).unwrap_or_default()
            }
        };
        let mut k = Self {
            len: 0,
            buf: [0; MAX_AOR_LEN],
        };
        let mut i = 0;
        while let Some(&c) = user.get(i) {
            let (byte, step) = if c == b'%' {
                let h = user.get(i + 1).copied().and_then(scan::hex);
                let l = user.get(i + 2).copied().and_then(scan::hex);
                match (h, l) {
                    (Some(h), Some(l)) => (h << 4 | l, 3),
                    _ => return Err(AorError::Escape),
                }
            } else {
                (c, 1)
            };
            k.push(byte)?;
            i += step;
        }
        k.push(b'@')?;
        for &c in host {
            k.push(c.to_ascii_lowercase())?;
        }
        Ok(k)
    }

    /// A key from bytes already normalised (tests, tools).
    pub fn from_normalised(key: &[u8]) -> Result<Self, AorError> {
        let mut k = Self {
            len: 0,
            buf: [0; MAX_AOR_LEN],
        };
        for &c in key {
            k.push(c)?;
        }
        Ok(k)
    }

    #[inline]
    fn push(&mut self, c: u8) -> Result<(), AorError> {
        let slot = self
            .buf
            .get_mut(usize::from(self.len))
            .ok_or(AorError::TooLong)?;
        *slot = c;
        self.len += 1;
        Ok(())
    }

    /// The key bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..usize::from(self.len)).unwrap_or_default()
    }

    /// The domain part (after the last `@`).
    pub fn domain(&self) -> &[u8] {
        let k = self.as_bytes();
        match k.iter().rposition(|&c| c == b'@') {
            Some(at) => k.get(at + 1..).unwrap_or_default(),
            None => k,
        }
    }

    /// The partition that owns this AoR.
    pub fn partition(&self, partitions: u16) -> u16 {
        partition_of(self.as_bytes(), partitions)
    }
}

impl core::fmt::Debug for AorKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "AorKey({})", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl PartialEq for AorKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for AorKey {}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Result<String, AorError> {
        let u = Uri::parse(s.as_bytes()).unwrap();
        AorKey::from_uri(&u).map(|k| String::from_utf8(k.as_bytes().to_vec()).unwrap())
    }

    #[test]
    fn normalises_aors() {
        let cases: &[(&str, Result<&str, AorError>)] = &[
            ("sip:alice@example.com", Ok("alice@example.com")),
            ("sips:alice@EXAMPLE.com.", Ok("alice@example.com")),
            (
                "sip:Alice@Example.COM;transport=tcp;user=phone",
                Ok("Alice@example.com"),
            ),
            (
                "sip:%61lice:secret@example.com:5070",
                Ok("alice@example.com"),
            ),
            (
                "sip:+15551234;npdi@example.com;user=phone",
                Ok("+15551234;npdi@example.com"),
            ),
            ("sip:example.com", Err(AorError::NoUser)),
            ("sip:alice@192.0.2.1", Ok("alice@192.0.2.1")),
            ("sip:alice@[2001:DB8:0::1]:5060", Ok("alice@[2001:db8::1]")),
            ("tel:+15551234", Err(AorError::Scheme)),
        ];
        for (uri, want) in cases {
            assert_eq!(key(uri).as_deref().map_err(|e| *e), *want, "{uri}");
        }
        let long = format!("sip:{}@example.com", "u".repeat(250));
        assert_eq!(key(&long), Err(AorError::TooLong));
        let k = AorKey::from_normalised(b"bob@biloxi.example.com").unwrap();
        assert_eq!(k.domain(), b"biloxi.example.com");
        assert_eq!(k.partition(4), partition_of(b"bob@biloxi.example.com", 4));
    }
}
