//! HTTP Digest authentication as SIP uses it (RFC 3261 §22, RFC 2617,
//! RFC 7616 for SHA-256, RFC 8760 for its use in SIP): the client answers a
//! 401/407 challenge; the server side (for `--uas-auth`) issues challenges
//! and checks answers.
//!
//! ```text
//! HA1      = H(username ":" realm ":" password)            (-sess: H(HA1 ":" nonce ":" cnonce))
//! HA2      = H(method ":" digest-uri)
//! response = H(HA1 ":" nonce ":" nc ":" cnonce ":" qop ":" HA2)   with qop=auth
//!          = H(HA1 ":" nonce ":" HA2)                             without qop (RFC 2069)
//! ```
//! Hex digests are written into fixed buffers; nothing allocates.

use md5::Md5;
use sha2::{Digest, Sha256};
use sipedge::sip::Credentials;

use crate::template::W;

/// The digest algorithm of a challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// MD5 (the default when a challenge names none).
    Md5,
    /// MD5-sess.
    Md5Sess,
    /// SHA-256.
    Sha256,
    /// SHA-256-sess.
    Sha256Sess,
}

impl Algorithm {
    /// Parses an `algorithm` parameter (case-insensitive).
    pub fn parse(s: &[u8]) -> Option<Self> {
        let eq = |t: &[u8]| s.eq_ignore_ascii_case(t);
        Some(if eq(b"MD5") {
            Self::Md5
        } else if eq(b"MD5-sess") {
            Self::Md5Sess
        } else if eq(b"SHA-256") {
            Self::Sha256
        } else if eq(b"SHA-256-sess") {
            Self::Sha256Sess
        } else {
            return None;
        })
    }

    /// The token as written in headers.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Md5Sess => "MD5-sess",
            Self::Sha256 => "SHA-256",
            Self::Sha256Sess => "SHA-256-sess",
        }
    }

    fn is_sess(self) -> bool {
        matches!(self, Self::Md5Sess | Self::Sha256Sess)
    }
}

/// A hex digest (32 chars for MD5, 64 for SHA-256).
#[derive(Clone, Copy)]
pub struct Hex {
    buf: [u8; 64],
    len: usize,
}

impl Hex {
    /// The hex digits.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

fn to_hex(bytes: &[u8]) -> Hex {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut h = Hex {
        buf: [0; 64],
        len: 0,
    };
    for (i, b) in bytes.iter().take(32).enumerate() {
        if let Some(pair) = h.buf.get_mut(2 * i..2 * i + 2) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0xf)];
            h.len = 2 * i + 2;
        }
    }
    h
}

/// H(p0 ":" p1 ":" …) as hex.
fn h(alg: Algorithm, parts: &[&[u8]]) -> Hex {
    fn run<D: Digest>(parts: &[&[u8]]) -> Hex {
        let mut d = D::new();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                d.update(b":");
            }
            d.update(p);
        }
        to_hex(&d.finalize())
    }
    match alg {
        Algorithm::Md5 | Algorithm::Md5Sess => run::<Md5>(parts),
        Algorithm::Sha256 | Algorithm::Sha256Sess => run::<Sha256>(parts),
    }
}

/// The inputs of one digest response.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Algorithm.
    pub alg: Algorithm,
    /// User name.
    pub username: &'a [u8],
    /// Realm.
    pub realm: &'a [u8],
    /// Password.
    pub password: &'a [u8],
    /// Request method.
    pub method: &'a [u8],
    /// digest-uri (the Request-URI).
    pub uri: &'a [u8],
    /// Server nonce.
    pub nonce: &'a [u8],
    /// Nonce count, 8 hex digits (with qop).
    pub nc: &'a [u8],
    /// Client nonce (with qop or -sess).
    pub cnonce: &'a [u8],
    /// `auth` or nothing (RFC 2069 compatibility).
    pub qop: Option<&'a [u8]>,
}

/// The `response` value.
pub fn response(i: &Input<'_>) -> Hex {
    let mut ha1 = h(i.alg, &[i.username, i.realm, i.password]);
    if i.alg.is_sess() {
        ha1 = h(i.alg, &[ha1.as_bytes(), i.nonce, i.cnonce]);
    }
    let ha2 = h(i.alg, &[i.method, i.uri]);
    match i.qop {
        Some(q) => h(
            i.alg,
            &[ha1.as_bytes(), i.nonce, i.nc, i.cnonce, q, ha2.as_bytes()],
        ),
        None => h(i.alg, &[ha1.as_bytes(), i.nonce, ha2.as_bytes()]),
    }
}

/// A decoded WWW-Authenticate / Proxy-Authenticate challenge.
#[derive(Debug, Clone, Copy)]
pub struct Challenge<'buf> {
    /// Realm.
    pub realm: &'buf [u8],
    /// Nonce.
    pub nonce: &'buf [u8],
    /// Opaque, echoed back.
    pub opaque: Option<&'buf [u8]>,
    /// Algorithm.
    pub alg: Algorithm,
    /// The server offers qop=auth.
    pub qop_auth: bool,
}

impl<'buf> Challenge<'buf> {
    /// Decodes a Digest challenge; `None` for another scheme, an unknown
    /// algorithm, or a missing realm/nonce.
    pub fn parse(value: &'buf [u8]) -> Option<Self> {
        let c = Credentials::parse(value).ok()?;
        if !c.is_digest() {
            return None;
        }
        let alg = match c.params.get(b"algorithm") {
            Some(a) => Algorithm::parse(a)?,
            None => Algorithm::Md5,
        };
        let qop_auth = c.params.get(b"qop").is_some_and(|q| {
            q.split(|&b| b == b',')
                .any(|t| sipedge::sip::scan::trim(t).eq_ignore_ascii_case(b"auth"))
        });
        Some(Self {
            realm: c.params.get(b"realm")?,
            nonce: c.params.get(b"nonce")?,
            opaque: c.params.get(b"opaque"),
            alg,
            qop_auth,
        })
    }
}

/// Who answers a challenge, for which request.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    /// A 407 (Proxy-Authorization) rather than a 401 (Authorization).
    pub proxy: bool,
    /// User name.
    pub username: &'a [u8],
    /// Password.
    pub password: &'a [u8],
    /// Method of the request.
    pub method: &'a [u8],
    /// Its Request-URI (the digest-uri).
    pub uri: &'a [u8],
    /// Client nonce to use (any token).
    pub cnonce: &'a [u8],
}

/// Writes a whole `Authorization:` / `Proxy-Authorization:` line (CRLF
/// included) answering `ch`.
pub fn write_credentials(out: &mut [u8], ch: &Challenge<'_>, a: &Answer<'_>) -> Option<usize> {
    let Answer {
        proxy,
        username,
        password,
        method,
        uri,
        cnonce,
    } = *a;
    let nc: &[u8] = b"00000001";
    let qop = ch.qop_auth.then_some(&b"auth"[..]);
    let r = response(&Input {
        alg: ch.alg,
        username,
        realm: ch.realm,
        password,
        method,
        uri,
        nonce: ch.nonce,
        nc,
        cnonce,
        qop,
    });
    let mut w = W { out, n: 0 };
    w.put(if proxy {
        b"Proxy-Authorization: Digest username=\""
    } else {
        b"Authorization: Digest username=\""
    })?;
    w.put(username)?;
    w.put(b"\", realm=\"")?;
    w.put(ch.realm)?;
    w.put(b"\", nonce=\"")?;
    w.put(ch.nonce)?;
    w.put(b"\", uri=\"")?;
    w.put(uri)?;
    w.put(b"\", response=\"")?;
    w.put(r.as_bytes())?;
    w.put(b"\", algorithm=")?;
    w.put(ch.alg.as_str().as_bytes())?;
    if qop.is_some() || ch.alg.is_sess() {
        w.put(b", cnonce=\"")?;
        w.put(cnonce)?;
        w.put(b"\"")?;
    }
    if qop.is_some() {
        w.put(b", qop=auth, nc=")?;
        w.put(nc)?;
    }
    if let Some(o) = ch.opaque {
        w.put(b", opaque=\"")?;
        w.put(o)?;
        w.put(b"\"")?;
    }
    w.put(b"\r\n")?;
    Some(w.n)
}

/// Server side: checks `Authorization` credentials against `password` for
/// a request with `method`. Returns the user name on success.
pub fn verify<'buf>(
    value: &'buf [u8],
    realm: &[u8],
    password: &[u8],
    method: &[u8],
) -> Option<&'buf [u8]> {
    let c = Credentials::parse(value).ok()?;
    if !c.is_digest() {
        return None;
    }
    let p = c.params;
    let alg = match p.get(b"algorithm") {
        Some(a) => Algorithm::parse(a)?,
        None => Algorithm::Md5,
    };
    if p.get(b"realm")? != realm {
        return None;
    }
    let username = p.get(b"username")?;
    let qop = p.get(b"qop");
    let want = response(&Input {
        alg,
        username,
        realm,
        password,
        method,
        uri: p.get(b"uri")?,
        nonce: p.get(b"nonce")?,
        nc: p.get(b"nc").unwrap_or_default(),
        cnonce: p.get(b"cnonce").unwrap_or_default(),
        qop,
    });
    (p.get(b"response")?.eq_ignore_ascii_case(want.as_bytes())).then_some(username)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2617 §3.5.
    #[test]
    fn rfc2617_example() {
        let r = response(&Input {
            alg: Algorithm::Md5,
            username: b"Mufasa",
            realm: b"testrealm@host.com",
            password: b"Circle Of Life",
            method: b"GET",
            uri: b"/dir/index.html",
            nonce: b"dcd98b7102dd2f0e8b11d0f600bfb0c093",
            nc: b"00000001",
            cnonce: b"0a4f113b",
            qop: Some(b"auth"),
        });
        assert_eq!(r.as_bytes(), b"6629fae49393a05397450978507c4ef1");
    }

    /// RFC 7616 §3.9.1, both algorithms.
    #[test]
    fn rfc7616_examples() {
        let mut i = Input {
            alg: Algorithm::Md5,
            username: b"Mufasa",
            realm: b"http-auth@example.org",
            password: b"Circle of Life",
            method: b"GET",
            uri: b"/dir/index.html",
            nonce: b"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            nc: b"00000001",
            cnonce: b"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            qop: Some(b"auth"),
        };
        assert_eq!(response(&i).as_bytes(), b"8ca523f5e9506fed4657c9700eebdbec");
        i.alg = Algorithm::Sha256;
        i.cnonce = b"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        assert_eq!(
            response(&i).as_bytes(),
            &b"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"[..]
        );
    }

    /// RFC 2069 form (no qop): HA1:nonce:HA2.
    #[test]
    fn without_qop() {
        let r = response(&Input {
            alg: Algorithm::Md5,
            username: b"Mufasa",
            realm: b"testrealm@host.com",
            password: b"CircleOfLife",
            method: b"GET",
            uri: b"/dir/index.html",
            nonce: b"dcd98b7102dd2f0e8b11d0f600bfb0c093",
            nc: b"",
            cnonce: b"",
            qop: None,
        });
        // RFC 2069 §2.4 example, as corrected by its erratum (the printed value is wrong).
        assert_eq!(r.as_bytes(), b"1949323746fe6a43ef61f9606e7febea");
    }

    #[test]
    fn answer_then_verify_round_trip() {
        for (alg, qop) in [
            ("MD5", true),
            ("SHA-256", true),
            ("MD5-sess", true),
            ("MD5", false),
        ] {
            let chal = format!(
                "Digest realm=\"example.test\", nonce=\"abc123\", algorithm={alg}{}, opaque=\"xyz\"",
                if qop { ", qop=\"auth,auth-int\"" } else { "" }
            );
            let ch = Challenge::parse(chal.as_bytes()).unwrap();
            assert_eq!(ch.qop_auth, qop);
            let mut out = [0u8; 512];
            let n = write_credentials(
                &mut out,
                &ch,
                &Answer {
                    proxy: false,
                    username: b"user1",
                    password: b"secret",
                    method: b"REGISTER",
                    uri: b"sip:example.test",
                    cnonce: b"c0ffee",
                },
            )
            .unwrap();
            let line = &out[..n];
            let value = line.strip_prefix(b"Authorization: ").unwrap();
            let value = &value[..value.len() - 2];
            assert_eq!(
                verify(value, b"example.test", b"secret", b"REGISTER"),
                Some(&b"user1"[..])
            );
            assert_eq!(verify(value, b"example.test", b"wrong", b"REGISTER"), None);
            assert_eq!(verify(value, b"other", b"secret", b"REGISTER"), None);
        }
        assert!(Challenge::parse(b"Basic realm=\"x\"").is_none());
        assert!(Challenge::parse(b"Digest realm=\"x\", nonce=\"y\", algorithm=SHA-512").is_none());
        assert!(Challenge::parse(b"Digest nonce=\"y\"").is_none());
    }
}
