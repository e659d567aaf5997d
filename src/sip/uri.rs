//! SIP, SIPS and tel URIs (RFC 3261 §19.1, §25.1; RFC 3966), decoded into
//! views of the original bytes, with comparison per §19.1.4.
//!
//! ```text
//! sip:user:password@host:port;uri-parameters?headers
//!     └──userinfo───┘ └hostport┘└───params──┘└headers┘
//! ```
//!
//! The host is an IPv4 address, an IPv6 reference (`[…]`, RFC 5118) or a
//! hostname. Escapes (`%HH`) stay as written; [`Uri::user_eq`] and friends
//! compare unescaped. Nothing here allocates or panics.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::error::ValueError;
use super::scan;

/// A URI scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `sip:`
    Sip,
    /// `sips:`
    Sips,
    /// `tel:` (RFC 3966)
    Tel,
}

impl Scheme {
    /// The scheme as written in canonical form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sip => "sip",
            Self::Sips => "sips",
            Self::Tel => "tel",
        }
    }
}

/// The host part of a URI or a Via sent-by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host<'buf> {
    /// A dotted-quad IPv4 address.
    V4(Ipv4Addr),
    /// An IPv6 reference (written with brackets).
    V6(Ipv6Addr),
    /// A hostname (compared case-insensitively).
    Name(&'buf [u8]),
}

impl<'buf> Host<'buf> {
    /// Decodes a host: `[IPv6]`, IPv4 or hostname (RFC 3261 §25.1 `host`).
    pub fn parse(s: &'buf [u8]) -> Result<Self, ValueError> {
        match s.first() {
            None => Err(ValueError::Host),
            Some(b'[') => {
                let inner = s
                    .strip_prefix(b"[")
                    .and_then(|r| r.strip_suffix(b"]"))
                    .ok_or(ValueError::Host)?;
                parse_ipv6(inner).map(Self::V6).ok_or(ValueError::Host)
            }
            Some(_) => {
                // One pass: is it all digits and dots (an IPv4 candidate), is
                // every byte a hostname byte, and is no label empty.
                let mut digits_dots = true;
                let mut hostname = true;
                let mut prev = b'.';
                for &b in s {
                    if b == b'.' {
                        hostname &= prev != b'.';
                    } else {
                        digits_dots &= b.is_ascii_digit();
                        hostname &= scan::is_hostname(b);
                    }
                    prev = b;
                }
                if digits_dots {
                    if let Some(a) = parse_ipv4(s) {
                        return Ok(Self::V4(a));
                    }
                }
                // hostname = *( domainlabel "." ) toplabel [ "." ]
                if !hostname || s.first() == Some(&b'-') {
                    return Err(ValueError::Host);
                }
                // The top label must start with a letter (§25.1): rules out "1.2.3.256".
                let trimmed = s.strip_suffix(b".").unwrap_or(s);
                let top = match trimmed.iter().rposition(|&b| b == b'.') {
                    Some(i) => trimmed.get(i + 1..).unwrap_or_default(),
                    None => trimmed,
                };
                if !top.first().is_some_and(u8::is_ascii_alphabetic) {
                    return Err(ValueError::Host);
                }
                Ok(Self::Name(s))
            }
        }
    }

    /// The address, when the host is a literal one.
    pub fn ip(&self) -> Option<IpAddr> {
        match *self {
            Self::V4(a) => Some(IpAddr::V4(a)),
            Self::V6(a) => Some(IpAddr::V6(a)),
            Self::Name(_) => None,
        }
    }

    /// Equality per §19.1.4: hostnames case-insensitive, addresses by value.
    pub fn matches(&self, other: &Host<'_>) -> bool {
        match (self, other) {
            (Self::Name(a), Host::Name(b)) => a.eq_ignore_ascii_case(b),
            (Self::V4(a), Host::V4(b)) => a == b,
            (Self::V6(a), Host::V6(b)) => a == b,
            _ => false,
        }
    }
}

/// An IPv6 address as RFC 4291 writes it, or as RFC 3261's ABNF bug lets it
/// be written: `hexseq ":::" IPv4address`, read as if one colon were not
/// there ("an implementation must tolerate both", RFC 5118 §4.10).
pub(crate) fn parse_ipv6(text: &[u8]) -> Option<Ipv6Addr> {
    let s = core::str::from_utf8(text).ok()?;
    if let Ok(a) = s.parse::<Ipv6Addr>() {
        return Some(a);
    }
    let i = scan::find_seq(b":::", text)?;
    let head = text.get(..i + 2)?;
    let v4 = text.get(i + 3..)?;
    parse_ipv4(v4)?;
    // At most 45 bytes in a valid address; anything longer fails the copy.
    let mut buf = [0u8; 48];
    let n = head.len() + v4.len();
    buf.get_mut(..head.len())?.copy_from_slice(head);
    buf.get_mut(head.len()..n)?.copy_from_slice(v4);
    core::str::from_utf8(buf.get(..n)?).ok()?.parse().ok()
}

/// Strict dotted-quad: four decimal parts of at most three digits, each ≤ 255.
fn parse_ipv4(s: &[u8]) -> Option<Ipv4Addr> {
    let mut parts = [0u8; 4];
    let mut n = 0;
    for part in s.split(|&b| b == b'.') {
        if part.is_empty() || part.len() > 3 {
            return None;
        }
        let v = u8::try_from(scan::parse_u64(part)?).ok()?;
        *parts.get_mut(n)? = v;
        n += 1;
    }
    (n == 4).then(|| Ipv4Addr::from(parts))
}

/// A decoded URI: views into the bytes it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uri<'buf> {
    /// The scheme.
    pub scheme: Scheme,
    /// The user part (still escaped), or the telephone number of a tel URI.
    pub user: Option<&'buf [u8]>,
    /// The password (still escaped).
    pub password: Option<&'buf [u8]>,
    /// The host (for tel URIs, `Host::Name(b"")`).
    pub host: Host<'buf>,
    /// The host as written.
    pub host_bytes: &'buf [u8],
    /// The port, if given.
    pub port: Option<u16>,
    /// The parameters as written, without the first `;` (`a=b;lr`).
    pub params: &'buf [u8],
    /// The headers as written, without the `?` (`subject=x&priority=y`).
    pub headers: &'buf [u8],
    /// The whole URI as written.
    pub raw: &'buf [u8],
}

impl<'buf> Uri<'buf> {
    /// Decodes a URI. Schemes other than sip, sips and tel give
    /// [`ValueError::Scheme`] (a Request-URI with one gets 416).
    pub fn parse(raw: &'buf [u8]) -> Result<Self, ValueError> {
        let colon = scan::find(b':', raw).ok_or(ValueError::Scheme)?;
        let scheme_bytes = raw.get(..colon).unwrap_or_default();
        let rest = raw.get(colon + 1..).unwrap_or_default();
        let scheme = if scheme_bytes.eq_ignore_ascii_case(b"sip") {
            Scheme::Sip
        } else if scheme_bytes.eq_ignore_ascii_case(b"sips") {
            Scheme::Sips
        } else if scheme_bytes.eq_ignore_ascii_case(b"tel") {
            return Self::parse_tel(raw, rest);
        } else {
            // absoluteURI of another scheme: well-formed or not, we do not route it.
            let ok = scheme_bytes.first().is_some_and(u8::is_ascii_alphabetic)
                && scheme_bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
            return Err(if ok {
                ValueError::Scheme
            } else {
                ValueError::Syntax
            });
        };
        if rest
            .iter()
            .any(|&b| b <= b' ' || b >= 0x7f || b == b'"' || b == b'<' || b == b'>')
        {
            return Err(ValueError::Syntax);
        }
        // The userinfo ends at the first '@': an unescaped '@' may appear
        // nowhere else in a SIP URI, while the user part may hold ';', '?'
        // and '/' (RFC 4475 §3.1.1.2 and §3.1.1.9), so neither of those can
        // be searched for first.
        let (userinfo, after) = match scan::find(b'@', rest) {
            Some(at) => (
                Some(rest.get(..at).unwrap_or_default()),
                rest.get(at + 1..).unwrap_or_default(),
            ),
            None => (None, rest),
        };
        // headers after '?' (at least one: `headers = "?" header *( "&" header )`);
        // params after the first ';' of the hostport part.
        let (hostpart, headers) = match scan::find(b'?', after) {
            Some(q) => {
                let h = after.get(q + 1..).unwrap_or_default();
                if h.is_empty() {
                    return Err(ValueError::Param);
                }
                (after.get(..q).unwrap_or_default(), h)
            }
            None => (after, &b""[..]),
        };
        let (hostport, params) = match scan::find(b';', hostpart) {
            Some(i) => (
                hostpart.get(..i).unwrap_or_default(),
                hostpart.get(i + 1..).unwrap_or_default(),
            ),
            None => (hostpart, &b""[..]),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(ui) => {
                let (u, p) = match scan::find(b':', ui) {
                    Some(i) => (
                        ui.get(..i).unwrap_or_default(),
                        Some(ui.get(i + 1..).unwrap_or_default()),
                    ),
                    None => (ui, None),
                };
                if !scan::is_user(u) {
                    return Err(ValueError::Syntax);
                }
                if let Some(p) = p {
                    if !scan::is_password(p) {
                        return Err(ValueError::Syntax);
                    }
                }
                (Some(u), p)
            }
        };
        let (host_bytes, port) = split_hostport(hostport)?;
        let host = Host::parse(host_bytes)?;
        if !params.is_empty() {
            for p in params.split(|&b| b == b';') {
                let (name, value) = match scan::split_once(p, b'=') {
                    Some((n, v)) => (n, Some(v)),
                    None => (p, None),
                };
                if name.is_empty() || !scan::is_paramchars(name) {
                    return Err(ValueError::Param);
                }
                if let Some(v) = value {
                    if !scan::is_paramchars(v) {
                        return Err(ValueError::Param);
                    }
                }
            }
        }
        if !headers.is_empty() {
            for h in headers.split(|&b| b == b'&') {
                let (n, v) = scan::split_once(h, b'=').ok_or(ValueError::Param)?;
                if n.is_empty() || !scan::is_hnv(n) || !scan::is_hnv(v) {
                    return Err(ValueError::Param);
                }
            }
        }
        Ok(Self {
            scheme,
            user,
            password,
            host,
            host_bytes,
            port,
            params,
            headers,
            raw,
        })
    }

    fn parse_tel(raw: &'buf [u8], rest: &'buf [u8]) -> Result<Self, ValueError> {
        let (number, params) = match scan::find(b';', rest) {
            Some(i) => (
                rest.get(..i).unwrap_or_default(),
                rest.get(i + 1..).unwrap_or_default(),
            ),
            None => (rest, &b""[..]),
        };
        let digits = number.strip_prefix(b"+").unwrap_or(number);
        if digits.is_empty()
            || !digits.iter().all(|b| {
                b.is_ascii_hexdigit() || matches!(b, b'-' | b'.' | b'(' | b')' | b'*' | b'#')
            })
        {
            return Err(ValueError::Syntax);
        }
        Ok(Self {
            scheme: Scheme::Tel,
            user: Some(number),
            password: None,
            host: Host::Name(b""),
            host_bytes: b"",
            port: None,
            params,
            headers: b"",
            raw,
        })
    }

    /// Iterator over the URI parameters as (name, value) pairs.
    pub fn params(&self) -> UriParams<'buf> {
        UriParams { rest: self.params }
    }

    /// The value of parameter `name` (case-insensitive): `Some(None)` when it is
    /// present without a value (like `lr`), `None` when absent.
    pub fn param(&self, name: &[u8]) -> Option<Option<&'buf [u8]>> {
        self.params()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// True when the URI has the `lr` parameter (a loose router, §16.4).
    pub fn is_loose_router(&self) -> bool {
        self.param(b"lr").is_some()
    }

    /// The `maddr` parameter, if any.
    pub fn maddr(&self) -> Option<&'buf [u8]> {
        self.param(b"maddr").flatten()
    }

    /// The `transport` parameter, if any.
    pub fn transport(&self) -> Option<&'buf [u8]> {
        self.param(b"transport").flatten()
    }

    /// The port to use: the explicit one, or 5060 (sip) / 5061 (sips).
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(match self.scheme {
            Scheme::Sips => 5061,
            _ => 5060,
        })
    }

    /// The user part compared to `other` as §19.1.4 wants (case-sensitive, escapes decoded).
    ///
    /// `other` is the *decoded* user (`b"I have spaces"`, `b"null-\0-null"`):
    /// a `%` in it is a percent sign, not an escape.
    pub fn user_eq(&self, other: &[u8]) -> bool {
        self.user.is_some_and(|u| scan::unescaped_eq(u, other))
    }

    /// URI equivalence per RFC 3261 §19.1.4: scheme, user and password
    /// (case-sensitive, escapes decoded), host (case-insensitive), port;
    /// the parameters user, ttl, method, maddr and transport must match when
    /// either side has them; other parameters only when both have them;
    /// headers must match.
    pub fn equivalent(&self, other: &Uri<'_>) -> bool {
        if self.scheme != other.scheme
            || !opt_escaped_eq(self.user, other.user)
            || !opt_escaped_eq(self.password, other.password)
            || !self.host.matches(&other.host)
            || self.port != other.port
        {
            return false;
        }
        for special in [&b"user"[..], b"ttl", b"method", b"maddr", b"transport"] {
            match (self.param(special), other.param(special)) {
                (None, None) => {}
                (Some(a), Some(b)) => {
                    if !opt_escaped_eq_ci(a, b) {
                        return false;
                    }
                }
                _ => return false,
            }
        }
        for (name, value) in self.params() {
            if let Some(v) = other.param(name) {
                if !opt_escaped_eq_ci(value, v) {
                    return false;
                }
            }
        }
        // Headers: every header on either side must be on the other with the same value.
        let mine = HeaderPairs { rest: self.headers };
        let theirs = HeaderPairs {
            rest: other.headers,
        };
        if mine.clone().count() != theirs.clone().count() {
            return false;
        }
        for (n, v) in mine {
            let found = HeaderPairs {
                rest: other.headers,
            }
            .any(|(n2, v2)| scan::escaped_eq(n, n2, true) && scan::escaped_eq(v, v2, false));
            if !found {
                return false;
            }
        }
        true
    }
}

fn opt_escaped_eq(a: Option<&[u8]>, b: Option<&[u8]>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => scan::escaped_eq(a, b, false),
        _ => false,
    }
}

fn opt_escaped_eq_ci(a: Option<&[u8]>, b: Option<&[u8]>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => scan::escaped_eq(a, b, true),
        _ => false,
    }
}

/// Splits `host[:port]`, the host possibly an IPv6 reference.
pub(crate) fn split_hostport(s: &[u8]) -> Result<(&[u8], Option<u16>), ValueError> {
    let (host, port) = if s.first() == Some(&b'[') {
        let close = scan::find(b']', s).ok_or(ValueError::Host)?;
        let host = s.get(..=close).unwrap_or_default();
        match s.get(close + 1..).unwrap_or_default() {
            [] => (host, None),
            [b':', port @ ..] => (host, Some(port)),
            _ => return Err(ValueError::Host),
        }
    } else {
        match scan::split_once(s, b':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(scan::parse_u16(p).ok_or(ValueError::Number)?),
    };
    Ok((host, port))
}

/// Iterator over `;`-separated URI parameters.
#[derive(Debug, Clone)]
pub struct UriParams<'buf> {
    rest: &'buf [u8],
}

impl<'buf> Iterator for UriParams<'buf> {
    type Item = (&'buf [u8], Option<&'buf [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let (p, rest) = match scan::find(b';', self.rest) {
            Some(i) => (
                self.rest.get(..i).unwrap_or_default(),
                self.rest.get(i + 1..).unwrap_or_default(),
            ),
            None => (self.rest, &b""[..]),
        };
        self.rest = rest;
        Some(match scan::split_once(p, b'=') {
            Some((n, v)) => (n, Some(v)),
            None => (p, None),
        })
    }
}

#[derive(Debug, Clone)]
struct HeaderPairs<'buf> {
    rest: &'buf [u8],
}

impl<'buf> Iterator for HeaderPairs<'buf> {
    type Item = (&'buf [u8], &'buf [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.rest.is_empty() {
            let (h, rest) = match scan::find(b'&', self.rest) {
                Some(i) => (
                    self.rest.get(..i).unwrap_or_default(),
                    self.rest.get(i + 1..).unwrap_or_default(),
                ),
                None => (self.rest, &b""[..]),
            };
            self.rest = rest;
            if let Some(pair) = scan::split_once(h, b'=') {
                return Some(pair);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri<'_> {
        match Uri::parse(s.as_bytes()) {
            Ok(u) => u,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn decodes_the_parts() {
        let u = uri("sips:alice:secret@[2001:db8::10]:5061;transport=tcp;lr?subject=project%20x&priority=urgent");
        assert_eq!(u.scheme, Scheme::Sips);
        assert_eq!(u.user, Some(&b"alice"[..]));
        assert_eq!(u.password, Some(&b"secret"[..]));
        assert_eq!(u.host, Host::V6("2001:db8::10".parse().unwrap()));
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.transport(), Some(&b"tcp"[..]));
        assert!(u.is_loose_router());
        assert_eq!(u.headers, b"subject=project%20x&priority=urgent");
        let u = uri("sip:192.0.2.4");
        assert_eq!(u.host, Host::V4(Ipv4Addr::new(192, 0, 2, 4)));
        assert_eq!(u.port_or_default(), 5060);
        let u = uri("tel:+1-201-555-0123;phone-context=example.com");
        assert_eq!(u.scheme, Scheme::Tel);
        assert_eq!(u.user, Some(&b"+1-201-555-0123"[..]));
        let u = uri("sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com");
        assert_eq!(
            u.user,
            Some(&b"1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"[..])
        );
        assert_eq!(
            u.password,
            Some(&b"&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"[..])
        );
        assert_eq!(u.headers, b"");
        let u = uri("sip:user@[2001:db8:::192.0.2.1]");
        assert_eq!(u.host, Host::V6("2001:db8::192.0.2.1".parse().unwrap()));
        let u = uri("sip:user;par=u%40example.net@example.com");
        assert_eq!(u.user, Some(&b"user;par=u%40example.net"[..]));
        assert_eq!(u.host, Host::Name(b"example.com"));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "sip:",
            "sip:user@",
            "sip:a@b:99999",
            "sip:a@[::1",
            "sip:a@[::1]x",
            "sip:a b@c",
            "sip:a@1.2.3.256",
            "sip:a@-host",
            "sip:a@b..c",
            "sip:a@b;=x",
            "sip:a@b?",
            "sip:a@[2001:db8:::1]",
            "sip:a@[1:2:3:4:5:6:7:::1.2.3.4]",
            "tel:",
            "nocolon",
        ] {
            assert!(Uri::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(Uri::parse(b"http://x"), Err(ValueError::Scheme));
        assert_eq!(Uri::parse(b"mailto:a@b"), Err(ValueError::Scheme));
    }

    #[test]
    fn equivalence_per_19_1_4() {
        let eq = |a: &str, b: &str| uri(a).equivalent(&uri(b));
        // The RFC's own examples of equivalent URIs.
        assert!(eq(
            "sip:%61lice@atlanta.com;transport=TCP",
            "sip:alice@AtLanTa.CoM;Transport=tcp"
        ));
        assert!(eq(
            "sip:carol@chicago.com",
            "sip:carol@chicago.com;newparam=5"
        ));
        assert!(eq(
            "sip:carol@chicago.com;security=on",
            "sip:carol@chicago.com;newparam=5"
        ));
        assert!(eq(
            "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
            "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"
        ));
        assert!(eq(
            "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
            "sip:alice@atlanta.com?priority=urgent&subject=project%20x"
        ));
        // And its non-equivalent ones.
        assert!(!eq(
            "SIP:ALICE@AtLanTa.CoM;Transport=udp",
            "sip:alice@AtLanTa.CoM;Transport=UDP"
        ));
        assert!(!eq("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"));
        assert!(!eq(
            "sip:bob@biloxi.com",
            "sip:bob@biloxi.com;transport=udp"
        ));
        assert!(!eq(
            "sip:bob@biloxi.com",
            "sip:bob@biloxi.com:6000;transport=tcp"
        ));
        assert!(!eq(
            "sip:carol@chicago.com",
            "sip:carol@chicago.com?Subject=next%20meeting"
        ));
        assert!(!eq("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"));
        assert!(!eq(
            "sip:carol@chicago.com;security=on",
            "sip:carol@chicago.com;security=off"
        ));
    }
}
