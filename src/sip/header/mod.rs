//! Typed header values, decoded on demand from the spans of the header
//! index (as ezk does): the parser interns names and finds values; only the
//! layer that needs a Via, a CSeq or a Contact pays for decoding it.
//!
//! Each decoder takes one value (one element of a comma list, see
//! [`super::Message::values`]) and returns a `Copy` view of it, or a
//! [`ValueError`]. None allocates or panics.

mod auth;
mod name;

pub use auth::{AuthParams, Credentials};
pub use name::HeaderName;

use super::error::ValueError;
use super::message::Method;
use super::scan;
use core::net::IpAddr;

use super::uri::{parse_ipv6, Host, Uri};

/// Skips leading LWS.
#[inline]
fn skip_lws(s: &[u8]) -> &[u8] {
    scan::trim_start(s)
}

/// A generic parameter list `*( SEMI generic-param )` as in Via, name-addr
/// and Contact (§25.1): `;name[=value]` with LWS allowed around `;` and `=`,
/// values being tokens, hosts or quoted strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Params<'buf> {
    raw: &'buf [u8],
}

impl<'buf> Params<'buf> {
    /// Checks the whole list and returns it; `raw` starts at the first `;` (or is empty).
    pub fn parse(raw: &'buf [u8]) -> Result<Self, ValueError> {
        let p = Self { raw };
        let mut it = p.iter();
        for item in &mut it {
            item?;
        }
        Ok(p)
    }

    /// The list as written, from its first `;`.
    pub fn as_bytes(&self) -> &'buf [u8] {
        self.raw
    }

    /// Iterator over the parameters.
    pub fn iter(&self) -> ParamIter<'buf> {
        ParamIter { rest: self.raw }
    }

    /// Value of parameter `name` (case-insensitive): `Some(None)` when present
    /// without a value. Quoted values come with their quotes.
    pub fn get(&self, name: &[u8]) -> Option<Option<&'buf [u8]>> {
        self.iter()
            .filter_map(Result::ok)
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

/// Iterator over generic parameters; yields an error once and stops on bad syntax.
#[derive(Debug, Clone)]
pub struct ParamIter<'buf> {
    rest: &'buf [u8],
}

impl<'buf> Iterator for ParamIter<'buf> {
    type Item = Result<(&'buf [u8], Option<&'buf [u8]>), ValueError>;

    fn next(&mut self) -> Option<Self::Item> {
        let s = skip_lws(self.rest);
        if s.is_empty() {
            return None;
        }
        let fail = |this: &mut Self| {
            this.rest = b"";
            Some(Err(ValueError::Param))
        };
        let Some(s) = s.strip_prefix(b";") else {
            return fail(self);
        };
        let s = skip_lws(s);
        let n = scan::token_len(s);
        if n == 0 {
            return fail(self);
        }
        let name = s.get(..n).unwrap_or_default();
        let after = s.get(n..).unwrap_or_default();
        let t = skip_lws(after);
        let Some(v) = t.strip_prefix(b"=") else {
            self.rest = after;
            return Some(Ok((name, None)));
        };
        let v = skip_lws(v);
        let len = if v.first() == Some(&b'"') {
            match scan::quoted_end(v) {
                Some(e) => e,
                None => return fail(self),
            }
        } else {
            // gen-value = token / host / quoted-string; host may be an IPv6 reference.
            scan::gen_value_len(v)
        };
        if len == 0 {
            return fail(self);
        }
        self.rest = v.get(len..).unwrap_or_default();
        Some(Ok((name, v.get(..len))))
    }
}

/// A Via value (§20.42): `SIP/2.0/UDP host:port;branch=…;received=…;rport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'buf> {
    /// The transport (`UDP`, `TCP`, `TLS`, `WS`, `WSS`, `SCTP`…), as written.
    pub transport: &'buf [u8],
    /// The sent-by host.
    pub host: Host<'buf>,
    /// The sent-by host as written.
    pub host_bytes: &'buf [u8],
    /// The sent-by port, if given.
    pub port: Option<u16>,
    /// The parameters.
    pub params: Params<'buf>,
    /// The whole value as written.
    pub raw: &'buf [u8],
    // The parameters every layer asks for, found in the one pass that
    // checks the list (first occurrence, as `Params::get`).
    branch: Option<&'buf [u8]>,
    received: Option<&'buf [u8]>,
    maddr: Option<&'buf [u8]>,
    rport: Option<Option<u16>>,
    ttl: Option<u8>,
}

impl<'buf> Via<'buf> {
    /// Decodes one Via value.
    pub fn parse(raw: &'buf [u8]) -> Result<Self, ValueError> {
        // sent-protocol = protocol-name SLASH protocol-version SLASH transport, SLASH = SWS "/" SWS
        let (transport, s) = match raw.get(..8) {
            // Fast path: the form every UA sends.
            Some(p) if p.eq_ignore_ascii_case(b"SIP/2.0/") => {
                take_token(raw.get(8..).unwrap_or_default())?
            }
            _ => {
                let (name, s) = take_token(skip_lws(raw))?;
                let s = expect(skip_lws(s), b'/')?;
                let (version, s) = take_token(skip_lws(s))?;
                let s = expect(skip_lws(s), b'/')?;
                let (transport, s) = take_token(skip_lws(s))?;
                if !name.eq_ignore_ascii_case(b"SIP") || version != b"2.0" {
                    return Err(ValueError::Syntax);
                }
                (transport, s)
            }
        };
        // LWS then sent-by = host [ COLON port ]
        let s = skip_lws(s);
        let host_len = if s.first() == Some(&b'[') {
            scan::find(b']', s).ok_or(ValueError::Host)? + 1
        } else {
            scan::hostname_len(s)
        };
        let host_bytes = s.get(..host_len).unwrap_or_default();
        let host = Host::parse(host_bytes)?;
        let mut s = s.get(host_len..).unwrap_or_default();
        let mut port = None;
        let t = skip_lws(s);
        if let Some(p) = t.strip_prefix(b":") {
            let p = skip_lws(p);
            let n = p.iter().take_while(|b| b.is_ascii_digit()).count();
            port = Some(
                p.get(..n)
                    .and_then(scan::parse_u16)
                    .ok_or(ValueError::Number)?,
            );
            s = p.get(n..).unwrap_or_default();
        }
        let params = Params { raw: s };
        let mut via = Self {
            transport,
            host,
            host_bytes,
            port,
            params,
            raw,
            branch: None,
            received: None,
            maddr: None,
            rport: None,
            ttl: None,
        };
        let (mut seen_branch, mut seen_received, mut seen_maddr) = (false, false, false);
        for item in params.iter() {
            let (name, value) = item?;
            match name.len() {
                6 if !seen_branch && name.eq_ignore_ascii_case(b"branch") => {
                    seen_branch = true;
                    via.branch = value;
                }
                8 if !seen_received && name.eq_ignore_ascii_case(b"received") => {
                    seen_received = true;
                    let rcv = value.ok_or(ValueError::Param)?;
                    if Host::parse(rcv).is_err() && parse_ipv6(rcv).is_none() {
                        return Err(ValueError::Host);
                    }
                    via.received = Some(rcv);
                }
                5 if via.rport.is_none() && name.eq_ignore_ascii_case(b"rport") => {
                    via.rport = Some(match value {
                        None => None,
                        Some(r) => Some(scan::parse_u16(r).ok_or(ValueError::Param)?),
                    });
                }
                5 if !seen_maddr && name.eq_ignore_ascii_case(b"maddr") => {
                    seen_maddr = true;
                    via.maddr = value;
                }
                3 if via.ttl.is_none() && name.eq_ignore_ascii_case(b"ttl") => {
                    let t = value
                        .and_then(scan::parse_u64)
                        .and_then(|t| u8::try_from(t).ok())
                        .ok_or(ValueError::Param)?;
                    via.ttl = Some(t);
                }
                _ => {}
            }
        }
        Ok(via)
    }

    /// The `received` address: RFC 3261's grammar writes an IPv6 one bare,
    /// implementations often bracket it; both are read (RFC 5118 §4.5).
    /// `None` when absent or a hostname.
    pub fn received_addr(&self) -> Option<IpAddr> {
        let r = self.received()?;
        match Host::parse(r) {
            Ok(h) => h.ip(),
            Err(_) => parse_ipv6(r).map(IpAddr::V6),
        }
    }

    /// The `branch` parameter.
    #[inline]
    pub fn branch(&self) -> Option<&'buf [u8]> {
        self.branch
    }

    /// The `received` parameter.
    #[inline]
    pub fn received(&self) -> Option<&'buf [u8]> {
        self.received
    }

    /// The `rport` parameter: `Some(None)` when present without a value (the
    /// client asks for it, RFC 3581), `Some(Some(port))` when filled in.
    #[inline]
    pub fn rport(&self) -> Option<Option<u16>> {
        self.rport
    }

    /// The `maddr` parameter.
    #[inline]
    pub fn maddr(&self) -> Option<&'buf [u8]> {
        self.maddr
    }

    /// The `ttl` parameter.
    #[inline]
    pub fn ttl(&self) -> Option<u8> {
        self.ttl
    }

    /// True when the branch has the RFC 3261 magic cookie `z9hG4bK`.
    pub fn has_magic_cookie(&self) -> bool {
        self.branch().is_some_and(|b| b.starts_with(b"z9hG4bK"))
    }
}

fn take_token(s: &[u8]) -> Result<(&[u8], &[u8]), ValueError> {
    let n = scan::token_len(s);
    if n == 0 {
        return Err(ValueError::Syntax);
    }
    Ok((
        s.get(..n).unwrap_or_default(),
        s.get(n..).unwrap_or_default(),
    ))
}

fn expect(s: &[u8], c: u8) -> Result<&[u8], ValueError> {
    match s.split_first() {
        Some((&b, rest)) if b == c => Ok(rest),
        _ => Err(ValueError::Syntax),
    }
}

/// A name-addr or addr-spec with header parameters, as in From, To, Contact,
/// Route, Record-Route, Reply-To (§20.10, §25.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'buf> {
    /// The display name as written (quoted string with quotes, or tokens), if any.
    pub display_name: Option<&'buf [u8]>,
    /// The URI as written (inside the angle brackets, if any).
    pub uri_bytes: &'buf [u8],
    /// True when the URI was in angle brackets.
    pub angle: bool,
    /// The header parameters after the URI (tag, q, expires…).
    pub params: Params<'buf>,
    /// The whole value as written.
    pub raw: &'buf [u8],
    // The `tag` parameter, found in the pass that checks the parameters.
    tag: Option<&'buf [u8]>,
}

impl<'buf> NameAddr<'buf> {
    /// Decodes a name-addr / addr-spec. The URI is checked for shape here and
    /// decoded by [`NameAddr::uri`]; URIs of schemes other than sip, sips and
    /// tel are accepted here (a From may carry any absoluteURI).
    pub fn parse(raw: &'buf [u8]) -> Result<Self, ValueError> {
        let s = skip_lws(raw);
        if s.is_empty() {
            return Err(ValueError::Empty);
        }
        let (display_name, rest) = match s.first() {
            Some(b'"') => {
                let end = scan::quoted_end(s).ok_or(ValueError::Quote)?;
                let rest = skip_lws(s.get(end..).unwrap_or_default());
                if rest.first() != Some(&b'<') {
                    return Err(ValueError::Angle);
                }
                (s.get(..end), rest)
            }
            _ => match scan::find(b'<', s) {
                Some(lt) => {
                    let dn = scan::trim(s.get(..lt).unwrap_or_default());
                    // display-name = *(token LWS) / quoted-string
                    if !dn.iter().all(|&b| scan::is_token(b) || scan::is_lws(b)) {
                        return Err(ValueError::Syntax);
                    }
                    let dn = (!dn.is_empty()).then_some(dn);
                    (dn, s.get(lt..).unwrap_or_default())
                }
                None => (None, s),
            },
        };
        let (uri_bytes, angle, after) = if let Some(inner) = rest.strip_prefix(b"<") {
            let gt = scan::find(b'>', inner).ok_or(ValueError::Angle)?;
            let uri = inner.get(..gt).unwrap_or_default();
            (uri, true, inner.get(gt + 1..).unwrap_or_default())
        } else {
            // addr-spec: the URI ends at the first ';' or LWS (its params are
            // header params). A URI with a '?' (or ',') must be in angle
            // brackets (§20.10; RFC 4475 §3.1.2.13).
            let n = rest
                .iter()
                .take_while(|&&b| b != b';' && !scan::is_lws(b))
                .count();
            let uri = rest.get(..n).unwrap_or_default();
            if scan::find2(b'?', b',', uri).is_some() {
                return Err(ValueError::Syntax);
            }
            (uri, false, rest.get(n..).unwrap_or_default())
        };
        if uri_bytes.is_empty() || scan::find(b':', uri_bytes).is_none() {
            return Err(ValueError::Syntax);
        }
        if uri_bytes.iter().any(|&b| b <= b' ' || b == 0x7f) {
            return Err(ValueError::Syntax);
        }
        let params = Params { raw: after };
        let mut tag = None;
        let mut seen_tag = false;
        for item in params.iter() {
            let (name, value) = item?;
            if !seen_tag && name.eq_ignore_ascii_case(b"tag") {
                seen_tag = true;
                tag = value;
            }
        }
        Ok(Self {
            display_name,
            uri_bytes,
            angle,
            params,
            raw,
            tag,
        })
    }

    /// The decoded URI (sip, sips or tel).
    pub fn uri(&self) -> Result<Uri<'buf>, ValueError> {
        Uri::parse(self.uri_bytes)
    }

    /// The `tag` parameter (§19.3).
    #[inline]
    pub fn tag(&self) -> Option<&'buf [u8]> {
        self.tag
    }
}

/// A CSeq value (§20.16): a sequence number below 2^31 and a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'buf> {
    /// The sequence number (at most 2^31 - 1).
    pub number: u32,
    /// The method, interned.
    pub method: Method,
    /// The method as written.
    pub method_bytes: &'buf [u8],
}

impl<'buf> CSeq<'buf> {
    /// Decodes `1*DIGIT LWS Method`.
    pub fn parse(raw: &'buf [u8]) -> Result<Self, ValueError> {
        let s = skip_lws(raw);
        let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
        let number = s
            .get(..n)
            .and_then(scan::parse_u32)
            .filter(|&v| v < 1 << 31)
            .ok_or(ValueError::Number)?;
        let rest = s.get(n..).unwrap_or_default();
        let m = skip_lws(rest);
        if m.len() == rest.len() {
            return Err(ValueError::Syntax);
        }
        let m = scan::trim_end(m);
        if !scan::is_token_str(m) {
            return Err(ValueError::Syntax);
        }
        Ok(Self {
            number,
            method: Method::from_bytes(m),
            method_bytes: m,
        })
    }
}

/// One Contact value (§20.10): `*`, or a name-addr with q / expires / instance params.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contact<'buf> {
    /// `Contact: *` (only valid in a REGISTER with Expires: 0).
    Star,
    /// A contact address.
    Addr(NameAddr<'buf>),
}

impl<'buf> Contact<'buf> {
    /// Decodes one Contact value.
    pub fn parse(raw: &'buf [u8]) -> Result<Self, ValueError> {
        if scan::trim(raw) == b"*" {
            return Ok(Self::Star);
        }
        let na = NameAddr::parse(raw)?;
        // The first q and the first expires must be valid (one pass; the
        // list's syntax was checked by `NameAddr::parse`).
        let (mut q, mut expires) = (false, false);
        for (name, value) in na.params.iter().flatten() {
            if !q && name.eq_ignore_ascii_case(b"q") {
                q = true;
                parse_qvalue(value.ok_or(ValueError::Param)?)?;
            } else if !expires && name.eq_ignore_ascii_case(b"expires") {
                expires = true;
                parse_delta_seconds(value.ok_or(ValueError::Param)?)?;
            }
        }
        Ok(Self::Addr(na))
    }

    /// The parameters a registrar reads, in one pass over the list (a
    /// `Params::get` per parameter would walk it, quoted instance and
    /// all, once each). All `None` for `*`.
    pub fn params(&self) -> ContactParams<'buf> {
        let mut p = ContactParams::default();
        let Self::Addr(na) = self else {
            return p;
        };
        let (mut q, mut expires) = (false, false);
        for (name, value) in na.params.iter().flatten() {
            match name.len() {
                1 if !q && name.eq_ignore_ascii_case(b"q") => {
                    q = true;
                    p.q = value.and_then(|v| parse_qvalue(v).ok());
                }
                6 if p.reg_id.is_none() && name.eq_ignore_ascii_case(b"reg-id") => {
                    p.reg_id = Some(value);
                }
                7 if !expires && name.eq_ignore_ascii_case(b"expires") => {
                    expires = true;
                    p.expires = value.and_then(|v| parse_delta_seconds(v).ok());
                }
                13 if p.instance.is_none() && name.eq_ignore_ascii_case(b"+sip.instance") => {
                    p.instance = Some(value);
                }
                _ => {}
            }
        }
        p
    }

    /// The `q` value in thousandths (1000 = 1.0); `None` when absent.
    pub fn q(&self) -> Option<u16> {
        match self {
            Self::Star => None,
            Self::Addr(na) => na
                .params
                .get(b"q")
                .flatten()
                .and_then(|q| parse_qvalue(q).ok()),
        }
    }

    /// The `expires` parameter, in seconds.
    pub fn expires(&self) -> Option<u32> {
        match self {
            Self::Star => None,
            Self::Addr(na) => na
                .params
                .get(b"expires")
                .flatten()
                .and_then(|e| parse_delta_seconds(e).ok()),
        }
    }
}

/// The parameters of a Contact that a registrar reads (RFC 3261 §10.3,
/// RFC 5626 §4.2), from [`Contact::params`]: the first occurrence of each,
/// as [`Params::get`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContactParams<'buf> {
    /// `q` in thousandths, when present and valid (as [`Contact::q`]).
    pub q: Option<u16>,
    /// `expires` in seconds, when present and valid (as [`Contact::expires`]).
    pub expires: Option<u32>,
    /// `+sip.instance` as written, quotes included; `Some(None)`: present
    /// without a value.
    pub instance: Option<Option<&'buf [u8]>>,
    /// `reg-id` as written; `Some(None)`: present without a value.
    pub reg_id: Option<Option<&'buf [u8]>>,
}

/// Parses a qvalue (`0`, `1`, `0.5`, `0.125`, `1.000`) into thousandths.
pub fn parse_qvalue(s: &[u8]) -> Result<u16, ValueError> {
    let (int, frac) = match scan::split_once(s, b'.') {
        Some((i, f)) => (i, f),
        None => (s, &b""[..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return Err(ValueError::Number);
    }
    let mut thousandths = 0u16;
    for (i, &d) in frac.iter().enumerate() {
        thousandths += u16::from(d - b'0') * [100, 10, 1].get(i).copied().unwrap_or(0);
    }
    match int {
        b"0" => Ok(thousandths),
        b"1" if thousandths == 0 => Ok(1000),
        _ => Err(ValueError::Number),
    }
}

/// Parses delta-seconds; values beyond 2^32-1 saturate (§20.19 says so for Expires).
pub fn parse_delta_seconds(s: &[u8]) -> Result<u32, ValueError> {
    let s = scan::trim(s);
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return Err(ValueError::Number);
    }
    // Leading zeros do not count toward the length limit.
    let digits = s.iter().skip_while(|&&b| b == b'0').count();
    if digits > 10 {
        return Ok(u32::MAX);
    }
    Ok(scan::parse_u64(s)
        .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
        .unwrap_or(u32::MAX))
}

/// Parses Max-Forwards (`1*DIGIT`, 0–255).
pub fn parse_max_forwards(s: &[u8]) -> Result<u8, ValueError> {
    scan::parse_u64(scan::trim(s))
        .and_then(|v| u8::try_from(v).ok())
        .ok_or(ValueError::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_variants() {
        let v = Via::parse(
            b"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK74bf9;received=10.0.0.1;rport=5070",
        )
        .unwrap();
        assert_eq!(v.transport, b"UDP");
        assert_eq!(v.host, Host::V4("192.0.2.1".parse().unwrap()));
        assert_eq!(v.port, Some(5060));
        assert_eq!(v.branch(), Some(&b"z9hG4bK74bf9"[..]));
        assert_eq!(v.received(), Some(&b"10.0.0.1"[..]));
        assert_eq!(v.rport(), Some(Some(5070)));
        assert!(v.has_magic_cookie());
        let v = Via::parse(
            b"SIP / 2.0 / TCP\r\n  [2001:db8::9]:5061 ; branch = z9hG4bKx ; rport ; ttl=16",
        )
        .unwrap();
        assert_eq!(v.transport, b"TCP");
        assert_eq!(v.port, Some(5061));
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.ttl(), Some(16));
        assert_eq!(v.branch(), Some(&b"z9hG4bKx"[..]));
        let v = Via::parse(b"SIP/2.0/UDP host.example.com;received=[2001:db8::1]").unwrap();
        assert_eq!(v.received(), Some(&b"[2001:db8::1]"[..]));
        assert_eq!(v.received_addr(), Some("2001:db8::1".parse().unwrap()));
        let v =
            Via::parse(b"SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3")
                .unwrap();
        assert_eq!(v.received_addr(), Some("2001:db8::9:255".parse().unwrap()));
        assert_eq!(v.branch(), Some(&b"z9hG4bKas3"[..]));
        for bad in [
            &b"SIP/2.0 UDP host"[..],
            b"SIP/2.0/UDP",
            b"SIP/2.0/UDP host:99999",
            b"SIP/2.0/UDP host;branch=",
            b"SIP/2.0/UDP host;ttl=300",
            b"SIP/2.0/UDP host garbage",
            b"HTTP/1.1/UDP host",
            b"SIP/2.0/UDP host;received=not_an_ip..",
        ] {
            assert!(Via::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(b"\"Alice \\\"A\\\" Liddell\" <sip:alice@atlanta.com>;tag=88sja8x")
            .unwrap();
        assert_eq!(n.display_name, Some(&b"\"Alice \\\"A\\\" Liddell\""[..]));
        assert_eq!(n.uri_bytes, b"sip:alice@atlanta.com");
        assert_eq!(n.tag(), Some(&b"88sja8x"[..]));
        let n = NameAddr::parse(b"Bob Smith <sip:bob@b.com;transport=tcp>").unwrap();
        assert_eq!(n.display_name, Some(&b"Bob Smith"[..]));
        assert_eq!(n.uri().unwrap().transport(), Some(&b"tcp"[..]));
        let n = NameAddr::parse(b"sip:carol@c.com;tag=5").unwrap();
        assert!(!n.angle);
        assert_eq!(n.uri_bytes, b"sip:carol@c.com");
        assert_eq!(n.tag(), Some(&b"5"[..]));
        let n = NameAddr::parse(b"<sip:x@y>").unwrap();
        assert_eq!(n.display_name, None);
        for bad in [
            &b""[..],
            b"<sip:x@y",
            b"\"unterminated <sip:x@y>",
            b"\"a\" sip:x@y",
            b"<sip:x@y> junk",
            b"sip:x@y?Route=%3Csip:z%3E",
        ] {
            assert!(
                NameAddr::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn cseq_and_numbers() {
        let c = CSeq::parse(b"  4711   INVITE ").unwrap();
        assert_eq!((c.number, c.method), (4711, Method::Invite));
        assert!(CSeq::parse(b"2147483648 INVITE").is_err());
        assert!(CSeq::parse(b"1INVITE").is_err());
        assert!(CSeq::parse(b"INVITE").is_err());
        assert_eq!(parse_qvalue(b"0.5"), Ok(500));
        assert_eq!(parse_qvalue(b"1.000"), Ok(1000));
        assert_eq!(parse_qvalue(b"0.125"), Ok(125));
        assert!(parse_qvalue(b"1.5").is_err());
        assert!(parse_qvalue(b"0.1234").is_err());
        assert_eq!(parse_delta_seconds(b"3600"), Ok(3600));
        assert_eq!(parse_delta_seconds(b"99999999999999"), Ok(u32::MAX));
        assert!(parse_delta_seconds(b"-1").is_err());
        assert_eq!(parse_max_forwards(b"70"), Ok(70));
        assert!(parse_max_forwards(b"256").is_err());
    }

    #[test]
    fn contact_star_and_params() {
        assert_eq!(Contact::parse(b" * ").unwrap(), Contact::Star);
        let c = Contact::parse(b"<sip:a@1.2.3.4:5060>;q=0.7;expires=3600;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\";reg-id=1").unwrap();
        assert_eq!(c.q(), Some(700));
        assert_eq!(c.expires(), Some(3600));
        let Contact::Addr(na) = c else { panic!() };
        assert_eq!(na.params.get(b"reg-id"), Some(Some(&b"1"[..])));
        assert!(Contact::parse(b"<sip:a@b>;q=2").is_err());
    }

    #[test]
    fn contact_params_in_one_pass_agree_with_get() {
        for raw in [
            &b"<sip:a@b>"[..],
            b" * ",
            b"<sip:a@b>;q=0.7;expires=3600;+sip.instance=\"<urn:uuid:1>\";reg-id=1",
            b"<sip:a@b>;REG-ID=2;+SIP.Instance=\"<urn:x>\";Q=1;EXPIRES=0",
            // The first occurrence counts (a later invalid one is not looked at).
            b"<sip:a@b>;q=0.5;q=9;expires=10;expires=x;reg-id=3;reg-id=4",
            b"<sip:a@b>;+sip.instance;reg-id;x=\"q=1\"",
            b"sip:a@b;expires=99999999999;q=0",
            b"\"A, B\" <sip:a@b;q=0.1>;tag=1;expiresx=1;qq=1",
        ] {
            let c = Contact::parse(raw).unwrap();
            let p = c.params();
            let (instance, reg_id) = match c {
                Contact::Addr(na) => (na.params.get(b"+sip.instance"), na.params.get(b"reg-id")),
                Contact::Star => (None, None),
            };
            let want = ContactParams {
                q: c.q(),
                expires: c.expires(),
                instance,
                reg_id,
            };
            assert_eq!(p, want, "{}", String::from_utf8_lossy(raw));
        }
        let p = Contact::parse(b"<sip:a@b>;q=0.5;q=9;reg-id=3;reg-id=4")
            .unwrap()
            .params();
        assert_eq!((p.q, p.reg_id), (Some(500), Some(Some(&b"3"[..]))));
        // Contact::parse still refuses a bad first q or expires.
        assert!(Contact::parse(b"<sip:a@b>;expires=x").is_err());
        assert!(Contact::parse(b"<sip:a@b>;q").is_err());
        assert!(Contact::parse(b"<sip:a@b>;q=1;q=x").is_ok());
    }
}
