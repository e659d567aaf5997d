//! The Digest computation itself (RFC 7616 §3.4, RFC 2617 §3.2.2, RFC 8760
//! for SIP): algorithms, HA1, HA2 and the request-digest, as lower-case hex
//! in fixed stack buffers.
//!
//! ```text
//! HA1      = H(username ":" realm ":" password)          (stored, or from the password)
//! HA1-sess = H(HA1 ":" nonce ":" cnonce)                 (the -sess algorithms)
//! HA2      = H(method ":" digest-uri)                    (qop=auth)
//!          | H(method ":" digest-uri ":" H(body))        (qop=auth-int)
//! response = H(HA1 ":" nonce ":" nc ":" cnonce ":" qop ":" HA2)
//! ```
//!
//! Contract: no allocation, no panic; every value is a [`Hex`] of 32 or 64
//! bytes. Both sides use these functions: the verifier in [`super`], and
//! tests, benches and the load generator as a client.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use md5::Md5;
use sha2::digest::Digest as _;
use sha2::{Sha256, Sha512_256};

/// A digest algorithm as named in the `algorithm` parameter (RFC 7616 §3.3,
/// RFC 8760 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5` (RFC 2617; kept for old clients).
    Md5,
    /// `MD5-sess`.
    Md5Sess,
    /// `SHA-256` (RFC 7616; what RFC 8760 asks SIP to prefer).
    Sha256,
    /// `SHA-256-sess`.
    Sha256Sess,
    /// `SHA-512-256`.
    Sha512t256,
    /// `SHA-512-256-sess`.
    Sha512t256Sess,
}

/// The hash function under an [`Algorithm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashFn {
    /// MD5: 16 bytes, 32 hex digits.
    Md5,
    /// SHA-256: 32 bytes, 64 hex digits.
    Sha256,
    /// SHA-512/256: 32 bytes, 64 hex digits.
    Sha512t256,
}

impl Algorithm {
    /// Every algorithm, in the order a default configuration offers them.
    pub const ALL: [Self; 6] = [
        Self::Sha256,
        Self::Sha512t256,
        Self::Md5,
        Self::Sha256Sess,
        Self::Sha512t256Sess,
        Self::Md5Sess,
    ];

    /// Reads the `algorithm` token (case-insensitive, RFC 7616 §3.3).
    pub fn from_token(t: &[u8]) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str().as_bytes().eq_ignore_ascii_case(t))
    }

    /// The token as it goes in a challenge.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Md5Sess => "MD5-sess",
            Self::Sha256 => "SHA-256",
            Self::Sha256Sess => "SHA-256-sess",
            Self::Sha512t256 => "SHA-512-256",
            Self::Sha512t256Sess => "SHA-512-256-sess",
        }
    }

    /// The hash function.
    pub const fn hash(self) -> HashFn {
        match self {
            Self::Md5 | Self::Md5Sess => HashFn::Md5,
            Self::Sha256 | Self::Sha256Sess => HashFn::Sha256,
            Self::Sha512t256 | Self::Sha512t256Sess => HashFn::Sha512t256,
        }
    }

    /// True for the `-sess` variants (HA1 mixes in the nonce and cnonce).
    pub const fn is_session(self) -> bool {
        matches!(
            self,
            Self::Md5Sess | Self::Sha256Sess | Self::Sha512t256Sess
        )
    }
}

impl HashFn {
    /// Length of a value in hex digits.
    pub const fn hex_len(self) -> usize {
        match self {
            Self::Md5 => 32,
            Self::Sha256 | Self::Sha512t256 => 64,
        }
    }
}

/// A hash value in lower-case hex: HA1, HA2 or a response.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Hex {
    // INVARIANT: len is 32 or 64 and bytes[..len] are lower-case hex digits.
    bytes: [u8; 64],
    len: u8,
}

impl Hex {
    /// Reads a stored value (users file, directory): 32 or 64 hex digits,
    /// either case; `None` otherwise.
    pub fn parse(s: &[u8]) -> Option<Self> {
        if s.len() != 32 && s.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 64];
        for (d, &c) in bytes.iter_mut().zip(s) {
            if !c.is_ascii_hexdigit() {
                return None;
            }
            *d = c.to_ascii_lowercase();
        }
        Some(Self {
            bytes,
            len: s.len() as u8,
        })
    }

    /// The hex digits.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }

    /// The hex digits as text.
    pub fn as_str(&self) -> &str {
        // INVARIANT: only ASCII hex digits are ever stored.
        core::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// True when this value has the length `h` produces.
    pub fn fits(&self, h: HashFn) -> bool {
        usize::from(self.len) == h.hex_len()
    }

    fn from_raw(raw: &[u8]) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut bytes = [0u8; 64];
        let n = raw.len().min(32);
        for (pair, &b) in bytes.chunks_exact_mut(2).zip(raw.iter().take(n)) {
            if let [hi, lo] = pair {
                *hi = DIGITS.get(usize::from(b >> 4)).copied().unwrap_or(b'0');
                *lo = DIGITS.get(usize::from(b & 15)).copied().unwrap_or(b'0');
            }
        }
        Self {
            bytes,
            len: (n * 2) as u8,
        }
    }
}

impl core::fmt::Debug for Hex {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A running hash of one of the three functions.
#[derive(Clone)]
pub(crate) enum Hasher {
    Md5(Md5),
    Sha256(Sha256),
    Sha512t256(Sha512_256),
}

impl Hasher {
    pub(crate) fn new(h: HashFn) -> Self {
        match h {
            HashFn::Md5 => Self::Md5(Md5::new()),
            HashFn::Sha256 => Self::Sha256(Sha256::new()),
            HashFn::Sha512t256 => Self::Sha512t256(Sha512_256::new()),
        }
    }

    #[inline]
    pub(crate) fn update(&mut self, b: &[u8]) {
        match self {
            Self::Md5(h) => h.update(b),
            Self::Sha256(h) => h.update(b),
            Self::Sha512t256(h) => h.update(b),
        }
    }

    /// Feeds `parts` separated by colons.
    fn colon_joined(mut self, parts: &[&[u8]]) -> Hex {
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                self.update(b":");
            }
            self.update(p);
        }
        self.finish()
    }

    pub(crate) fn finish(self) -> Hex {
        match self {
            Self::Md5(h) => Hex::from_raw(&h.finalize()),
            Self::Sha256(h) => Hex::from_raw(&h.finalize()),
            Self::Sha512t256(h) => Hex::from_raw(&h.finalize()),
        }
    }
}

/// `H(data)` in hex.
pub fn hash(h: HashFn, data: &[u8]) -> Hex {
    let mut s = Hasher::new(h);
    s.update(data);
    s.finish()
}

/// HA1 from a password: `H(username ":" realm ":" password)`.
pub fn ha1(h: HashFn, username: &[u8], realm: &[u8], password: &[u8]) -> Hex {
    Hasher::new(h).colon_joined(&[username, realm, password])
}

/// The quality of protection a response was computed with (RFC 7616 §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qop {
    /// `auth`: method and URI only.
    Auth,
    /// `auth-int`: the body too.
    AuthInt,
}

impl Qop {
    /// Reads a `qop` token.
    pub fn from_token(t: &[u8]) -> Option<Self> {
        if t.eq_ignore_ascii_case(b"auth") {
            Some(Self::Auth)
        } else if t.eq_ignore_ascii_case(b"auth-int") {
            Some(Self::AuthInt)
        } else {
            None
        }
    }

    /// The token.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::AuthInt => "auth-int",
        }
    }
}

/// What a request-digest covers besides HA1.
#[derive(Debug, Clone, Copy)]
pub struct Challenge<'a> {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The server's nonce.
    pub nonce: &'a [u8],
    /// The client's nonce (with a qop, or a -sess algorithm).
    pub cnonce: &'a [u8],
    /// The nonce count, as the 8 hex digits written.
    pub nc: &'a [u8],
    /// The qop, `None` for RFC 2069 compatibility (never accepted by the verifier).
    pub qop: Option<Qop>,
    /// The request method.
    pub method: &'a [u8],
    /// The digest-uri.
    pub uri: &'a [u8],
    /// The body (used by auth-int only).
    pub body: &'a [u8],
}

/// The request-digest for `c` given the stored or computed HA1 (RFC 7616 §3.4.1).
pub fn response(ha1: &Hex, c: &Challenge<'_>) -> Hex {
    let h = c.algorithm.hash();
    let session;
    let ha1 = if c.algorithm.is_session() {
        session = Hasher::new(h).colon_joined(&[ha1.as_bytes(), c.nonce, c.cnonce]);
        &session
    } else {
        ha1
    };
    let ha2 = match c.qop {
        Some(Qop::AuthInt) => {
            let body = hash(h, c.body);
            Hasher::new(h).colon_joined(&[c.method, c.uri, body.as_bytes()])
        }
        _ => Hasher::new(h).colon_joined(&[c.method, c.uri]),
    };
    match c.qop {
        Some(q) => Hasher::new(h).colon_joined(&[
            ha1.as_bytes(),
            c.nonce,
            c.nc,
            c.cnonce,
            q.as_str().as_bytes(),
            ha2.as_bytes(),
        ]),
        None => Hasher::new(h).colon_joined(&[ha1.as_bytes(), c.nonce, ha2.as_bytes()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_example() {
        // RFC 2617 §3.5.
        let ha1 = ha1(
            HashFn::Md5,
            b"Mufasa",
            b"testrealm@host.com",
            b"Circle Of Life",
        );
        let r = response(
            &ha1,
            &Challenge {
                algorithm: Algorithm::Md5,
                nonce: b"dcd98b7102dd2f0e8b11d0f600bfb0c093",
                cnonce: b"0a4f113b",
                nc: b"00000001",
                qop: Some(Qop::Auth),
                method: b"GET",
                uri: b"/dir/index.html",
                body: b"",
            },
        );
        assert_eq!(r.as_str(), "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn rfc7616_examples() {
        // RFC 7616 §3.9.1 (both the SHA-256 and the MD5 response).
        let c = |algorithm| Challenge {
            algorithm,
            nonce: b"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            cnonce: b"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            nc: b"00000001",
            qop: Some(Qop::Auth),
            method: b"GET",
            uri: b"/dir/index.html",
            body: b"",
        };
        let realm = b"http-auth@example.org";
        let sha = ha1(HashFn::Sha256, b"Mufasa", realm, b"Circle of Life");
        assert_eq!(
            response(&sha, &c(Algorithm::Sha256)).as_str(),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        let md5 = ha1(HashFn::Md5, b"Mufasa", realm, b"Circle of Life");
        assert_eq!(
            response(&md5, &c(Algorithm::Md5)).as_str(),
            "8ca523f5e9506fed4657c9700eebdbec"
        );
    }

    #[test]
    fn session_and_auth_int_change_the_response() {
        let ha1 = ha1(HashFn::Sha512t256, b"u", b"r", b"p");
        assert_eq!(ha1.as_bytes().len(), 64);
        let base = Challenge {
            algorithm: Algorithm::Sha512t256,
            nonce: b"n",
            cnonce: b"c",
            nc: b"00000001",
            qop: Some(Qop::Auth),
            method: b"INVITE",
            uri: b"sip:bob@example.test",
            body: b"v=0\r\n",
        };
        let plain = response(&ha1, &base);
        let sess = response(
            &ha1,
            &Challenge {
                algorithm: Algorithm::Sha512t256Sess,
                ..base
            },
        );
        let int = response(
            &ha1,
            &Challenge {
                qop: Some(Qop::AuthInt),
                ..base
            },
        );
        assert_ne!(plain, sess);
        assert_ne!(plain, int);
        // -sess by hand: H(HA1:nonce:cnonce) replaces HA1.
        let sess_ha1 = hash(
            HashFn::Sha512t256,
            format!("{}:n:c", ha1.as_str()).as_bytes(),
        );
        assert_eq!(response(&sess_ha1, &base), sess);
    }

    #[test]
    fn tokens_and_hex() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::from_token(a.as_str().as_bytes()), Some(a));
        }
        assert_eq!(Algorithm::from_token(b"sha-256"), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::from_token(b"SHA-1"), None);
        assert!(Hex::parse(b"ABCDEF0123456789abcdef0123456789").is_some());
        assert!(Hex::parse(b"abc").is_none());
        assert!(Hex::parse(b"zbcdef0123456789abcdef0123456789").is_none());
        assert_eq!(
            Hex::parse(b"ABCDEF0123456789abcdef0123456789").map(|h| h.fits(HashFn::Md5)),
            Some(true)
        );
    }
}
