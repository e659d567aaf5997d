//! Stateless nonces (RFC 7616 §3.3, §5.4): the server keeps nothing per
//! nonce it issues; a nonce carries its issue time and is signed.
//!
//! ```text
//! nonce = base64url( body(14) ‖ mac(16) )                      40 characters
//! body  = flags(1) ‖ issuer(2) ‖ issued_ms(6) ‖ serial(5)      big-endian
//! mac   = HMAC-SHA256(K_epoch, body ‖ realm ‖ [source IP, 16 bytes])[..16]
//! K_e   = HMAC-SHA256(secret, "sipedge nonce key" ‖ e),   e = issued_ms / rotation
//! ```
//!
//! - `flags` bit 0: the source address is in the MAC (the nonce only
//!   verifies from the address it was sent to).
//! - `issuer`: the shard (and node) that issued it; its replay table is the
//!   one that knows the nonce counts, so a nonce is only accepted there.
//! - `serial`: a per-issuer counter, so that two challenges in the same
//!   millisecond still get distinct nonces (distinct nonce-count spaces).
//!
//! Why derived keys: the key rotates every `rotation` without any message
//! between shards or nodes: each derives `K_e` from the shared secret and the
//! time, and caches the current and the previous epoch's (a nonce issued
//! just before a rotation still verifies). Older epochs are derived on
//! demand, only to tell a stale nonce from a forged one.
//!
//! Contract: no allocation, no panic; a malformed nonce is an error value.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use core::net::IpAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::time::Duration;

type HmacSha256 = Hmac<Sha256>;

/// Length of a nonce on the wire.
pub const NONCE_LEN: usize = 40;
const BODY_LEN: usize = 14;
const MAC_LEN: usize = 16;
const RAW_LEN: usize = BODY_LEN + MAC_LEN;
const FLAG_BOUND: u8 = 1;
/// Largest issue time a nonce can carry (2^48 ms: year 10889).
const MAX_MS: u64 = (1 << 48) - 1;

/// What a nonce says about itself, once its MAC checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonceInfo {
    /// The issuing shard/node.
    pub issuer: u16,
    /// When it was issued, ms since the Unix epoch.
    pub issued_ms: u64,
    /// The issuer's serial number.
    pub serial: u64,
    /// True when the source address was in the MAC.
    pub bound: bool,
    /// A 64-bit id derived from the MAC (for the replay table).
    pub id: u64,
}

/// Why a nonce did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    /// Not 40 base64url characters, or an unknown version.
    #[error("malformed nonce")]
    Malformed,
    /// The MAC does not match: not ours, another realm, another source, or forged.
    #[error("nonce MAC mismatch")]
    BadMac,
}

/// The server secret (32 bytes), shared by every shard, and by every node
/// that must accept the others' nonces.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; 32]);

impl Secret {
    /// A secret of these bytes.
    pub const fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A secret from a hex string of at least 32 digits (16 bytes); longer
    /// ones are hashed down to 32 bytes. `None` when not hex or too short.
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.trim().as_bytes();
        if s.len() < 32 || !s.len().is_multiple_of(2) || !s.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let mut mac = HmacSha256::new_from_slice(b"sipedge secret").ok()?;
        mac.update(s);
        Some(Self(mac.finalize().into_bytes().into()))
    }

    /// A secret drawn from `entropy`.
    pub fn generate(entropy: &mut dyn super::Entropy) -> Self {
        let mut b = [0u8; 32];
        entropy.fill(&mut b);
        Self(b)
    }

    /// HMAC-SHA256 of `parts` under this secret.
    pub(crate) fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let Ok(mut mac) = HmacSha256::new_from_slice(&self.0) else {
            // HMAC takes keys of any length: this cannot happen.
            return [0; 32];
        };
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }
}

impl core::fmt::Debug for Secret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Issues and verifies nonces: the secret, the rotation period and the keys
/// of the current and previous epochs.
#[derive(Clone)]
pub struct NonceKeys {
    secret: Secret,
    rotation_ms: u64,
    /// (epoch, keyed HMAC state) of the two newest epochs asked for.
    cache: [Option<(u64, HmacSha256)>; 2],
}

impl NonceKeys {
    /// Keys derived from `secret`, rotating every `rotation` (at least 1 s).
    pub fn new(secret: Secret, rotation: Duration) -> Self {
        Self {
            secret,
            rotation_ms: rotation.as_millis().max(1_000),
            cache: [None, None],
        }
    }

    /// The secret the keys derive from.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// The keyed HMAC state for the epoch of `ms`.
    fn key(&mut self, ms: u64) -> Option<HmacSha256> {
        let epoch = ms / self.rotation_ms;
        for (e, k) in self.cache.iter().flatten() {
            if *e == epoch {
                return Some(k.clone());
            }
        }
        let key = self
            .secret
            .mac(&[b"sipedge nonce key", &epoch.to_be_bytes()]);
        let mac = HmacSha256::new_from_slice(&key).ok()?;
        // Keep the two newest epochs: the current one and the one before.
        let newest = self.cache.iter().flatten().map(|(e, _)| *e).max();
        if newest.is_none_or(|n| epoch + 1 >= n) {
            let oldest = match &self.cache {
                [None, _] => 0,
                [_, None] => 1,
                [Some((a, _)), Some((b, _))] => usize::from(b < a),
            };
            if let Some(slot) = self.cache.get_mut(oldest) {
                *slot = Some((epoch, mac.clone()));
            }
        }
        Some(mac)
    }

    /// Writes a nonce issued at `wall_ms` by `issuer` with `serial` for
    /// `realm`, bound to `source` when given.
    pub fn issue(
        &mut self,
        wall_ms: u64,
        issuer: u16,
        serial: u64,
        realm: &[u8],
        source: Option<IpAddr>,
        out: &mut [u8; NONCE_LEN],
    ) {
        let mut raw = [0u8; RAW_LEN];
        let ms = wall_ms.min(MAX_MS);
        let mut body = [0u8; BODY_LEN];
        let [f, i0, i1, t0, t1, t2, t3, t4, t5, s0, s1, s2, s3, s4] = &mut body;
        *f = if source.is_some() { FLAG_BOUND } else { 0 };
        [*i0, *i1] = issuer.to_be_bytes();
        let [_, _, a, b, c, d, e, g] = ms.to_be_bytes();
        [*t0, *t1, *t2, *t3, *t4, *t5] = [a, b, c, d, e, g];
        let [_, _, _, a, b, c, d, e] = serial.to_be_bytes();
        [*s0, *s1, *s2, *s3, *s4] = [a, b, c, d, e];
        let mac = self.mac(ms, &body, realm, source);
        let (b, m) = raw.split_at_mut(BODY_LEN);
        b.copy_from_slice(&body);
        m.copy_from_slice(mac.get(..MAC_LEN).unwrap_or(&[0; MAC_LEN]));
        base64url_encode(&raw, out);
    }

    /// Checks `nonce` for `realm` arriving from `source`.
    pub fn open(
        &mut self,
        nonce: &[u8],
        realm: &[u8],
        source: IpAddr,
    ) -> Result<NonceInfo, NonceError> {
        let raw = base64url_decode(nonce).ok_or(NonceError::Malformed)?;
        let (body, mac) = raw.split_at(BODY_LEN);
        let [f, i0, i1, t0, t1, t2, t3, t4, t5, s0, s1, s2, s3, s4] =
            <[u8; BODY_LEN]>::try_from(body).map_err(|_| NonceError::Malformed)?;
        if f & !FLAG_BOUND != 0 {
            return Err(NonceError::Malformed);
        }
        let bound = f & FLAG_BOUND != 0;
        let issued_ms = u64::from_be_bytes([0, 0, t0, t1, t2, t3, t4, t5]);
        let want = self.mac(issued_ms, body, realm, bound.then_some(source));
        let ok = want.get(..MAC_LEN).unwrap_or_default().ct_eq(mac);
        if !bool::from(ok) {
            return Err(NonceError::BadMac);
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(mac.get(..8).unwrap_or(&[0; 8]));
        Ok(NonceInfo {
            issuer: u16::from_be_bytes([i0, i1]),
            issued_ms,
            serial: u64::from_be_bytes([0, 0, 0, s0, s1, s2, s3, s4]),
            bound,
            id: u64::from_le_bytes(id),
        })
    }

    fn mac(&mut self, ms: u64, body: &[u8], realm: &[u8], source: Option<IpAddr>) -> [u8; 32] {
        let Some(mut mac) = self.key(ms) else {
            return [0; 32];
        };
        mac.update(body);
        mac.update(realm);
        if let Some(ip) = source {
            let v6 = match ip.to_canonical() {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            mac.update(&v6.octets());
        }
        mac.finalize().into_bytes().into()
    }
}

impl core::fmt::Debug for NonceKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NonceKeys")
            .field("rotation_ms", &self.rotation_ms)
            .finish_non_exhaustive()
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64url_encode(raw: &[u8; RAW_LEN], out: &mut [u8; NONCE_LEN]) {
    let sym = |v: u32| B64.get((v & 63) as usize).copied().unwrap_or(b'A');
    for (src, dst) in raw.chunks_exact(3).zip(out.chunks_exact_mut(4)) {
        if let ([a, b, c], [w, x, y, z]) = (src, dst) {
            let v = u32::from(*a) << 16 | u32::from(*b) << 8 | u32::from(*c);
            *w = sym(v >> 18);
            *x = sym(v >> 12);
            *y = sym(v >> 6);
            *z = sym(v);
        }
    }
}

fn base64url_decode(s: &[u8]) -> Option<[u8; RAW_LEN]> {
    if s.len() != NONCE_LEN {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        }))
    };
    let mut raw = [0u8; RAW_LEN];
    for (src, dst) in s.chunks_exact(4).zip(raw.chunks_exact_mut(3)) {
        if let ([w, x, y, z], [a, b, c]) = (src, dst) {
            let v = val(*w)? << 18 | val(*x)? << 12 | val(*y)? << 6 | val(*z)?;
            [*a, *b, *c] = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
        }
    }
    Some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: IpAddr = IpAddr::V4(core::net::Ipv4Addr::new(192, 0, 2, 7));

    fn keys() -> NonceKeys {
        NonceKeys::new(Secret::new([7; 32]), Duration::from_secs(600))
    }

    fn issue(k: &mut NonceKeys, ms: u64, realm: &[u8], bind: bool) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        k.issue(ms, 3, 99, realm, bind.then_some(SRC), &mut n);
        n
    }

    #[test]
    fn round_trip() {
        let mut k = keys();
        let n = issue(&mut k, 1_700_000_000_123, b"example.test", false);
        assert!(n
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_'));
        let info = k.open(&n, b"example.test", SRC).unwrap();
        assert_eq!(info.issuer, 3);
        assert_eq!(info.serial, 99);
        assert_eq!(info.issued_ms, 1_700_000_000_123);
        assert!(!info.bound);
        // An unbound nonce verifies from anywhere; never for another realm.
        assert!(k
            .open(&n, b"example.test", "10.0.0.1".parse().unwrap())
            .is_ok());
        assert_eq!(k.open(&n, b"other.test", SRC), Err(NonceError::BadMac));
        // Every flipped character breaks it.
        for i in 0..NONCE_LEN {
            let mut m = n;
            m[i] = if m[i] == b'A' { b'B' } else { b'A' };
            assert!(k.open(&m, b"example.test", SRC).is_err(), "char {i}");
        }
        assert_eq!(
            k.open(b"short", b"example.test", SRC),
            Err(NonceError::Malformed)
        );
        assert_eq!(
            k.open(&[b'!'; NONCE_LEN], b"example.test", SRC),
            Err(NonceError::Malformed)
        );
    }

    #[test]
    fn bound_nonces_verify_only_from_their_source() {
        let mut k = keys();
        let n = issue(&mut k, 5_000, b"r", true);
        assert!(k.open(&n, b"r", SRC).unwrap().bound);
        assert_eq!(
            k.open(&n, b"r", "192.0.2.8".parse().unwrap()),
            Err(NonceError::BadMac)
        );
        // The IPv4-mapped form of the same address is the same source.
        assert!(k
            .open(&n, b"r", "::ffff:192.0.2.7".parse().unwrap())
            .is_ok());
    }

    #[test]
    fn rotation_keeps_the_previous_key_and_shards_agree() {
        let mut a = keys();
        let mut b = keys();
        let rot = 600_000;
        // Issued just before a rotation, checked just after it.
        let n = issue(&mut a, 10 * rot - 1, b"r", false);
        let m = issue(&mut a, 10 * rot + 1, b"r", false);
        assert!(a.open(&n, b"r", SRC).is_ok());
        assert!(a.open(&m, b"r", SRC).is_ok());
        // Another shard (same secret) verifies what the first issued.
        assert!(b.open(&n, b"r", SRC).is_ok());
        // Epochs far back are derived on demand (to tell stale from forged).
        let old = issue(&mut b, rot, b"r", false);
        assert!(a.open(&old, b"r", SRC).is_ok());
        // Another secret verifies nothing.
        let mut c = NonceKeys::new(Secret::new([8; 32]), Duration::from_secs(600));
        assert_eq!(c.open(&n, b"r", SRC), Err(NonceError::BadMac));
        // Distinct epochs use distinct keys: the same body and realm, another MAC.
        let x = issue(&mut a, 10 * rot - 1, b"r", false);
        assert_eq!(x, n, "deterministic for the same inputs");
    }

    #[test]
    fn secrets_from_hex() {
        assert!(Secret::from_hex("00112233445566778899aabbccddeeff").is_some());
        assert!(Secret::from_hex("0011").is_none());
        assert!(Secret::from_hex("zz112233445566778899aabbccddeeff").is_none());
        assert_ne!(
            Secret::from_hex("00112233445566778899aabbccddeeff"),
            Secret::from_hex("00112233445566778899aabbccddeef0")
        );
    }
}
