//! Where a message goes next: loose routing of requests (RFC 3261 §16.4,
//! §16.6 steps 6–7, §16.12) and the return path of responses (§18.2.2,
//! RFC 3581 §4).
//!
//! The core resolves no names: a next hop must be an IP literal (a Route or
//! Request-URI naming a host goes to the configured upstream instead), which
//! keeps the hot path free of blocking lookups.

use core::net::SocketAddr;

use crate::sip::{HeaderName, Host, Message, NameAddr, Uri, Via};

use super::Identity;

/// Where a response goes (§18.2.2, unreliable transport): to `received` if
/// present (with `rport` if filled in, else the sent-by port), else to
/// `maddr`, else to sent-by, which must then be an address. `None` when the
/// Via names a host we would have to resolve.
pub fn response_dest(via: &Via<'_>) -> Option<SocketAddr> {
    let port = match via.rport() {
        Some(Some(p)) => p,
        _ => via.port.unwrap_or(5060),
    };
    if let Some(r) = via.received() {
        let ip = Host::parse(r).ok()?.ip()?;
        return Some(SocketAddr::new(ip, port));
    }
    if let Some(m) = via.maddr() {
        let ip = Host::parse(m).ok()?.ip()?;
        return Some(SocketAddr::new(ip, via.port.unwrap_or(5060)));
    }
    Some(SocketAddr::new(via.host.ip()?, port))
}

/// Where our own response to a request goes: like [`response_dest`] for the
/// Via as we would stamp it with `received`/`rport` from the packet source.
pub fn reply_dest(via: &Via<'_>, src: SocketAddr) -> SocketAddr {
    if via.rport().is_some() {
        return src;
    }
    SocketAddr::new(src.ip(), via.port.unwrap_or(5060))
}

/// The address a URI designates, if it is a literal one: `maddr` first,
/// then the host, with the URI's port or the scheme's default.
pub fn uri_addr(uri: &Uri<'_>) -> Option<SocketAddr> {
    let port = uri.port_or_default();
    if let Some(m) = uri.maddr() {
        return Host::parse(m)
            .ok()?
            .ip()
            .map(|ip| SocketAddr::new(ip, port));
    }
    uri.host.ip().map(|ip| SocketAddr::new(ip, port))
}

/// Route processing of one request (§16.4): whether its first Route names us
/// (and must go), and the URI it must be sent to next (the first Route left,
/// or the Request-URI).
#[derive(Debug, Clone, Copy)]
pub struct Routing<'buf> {
    /// The first Route value names this proxy: remove it.
    pub pop_route: bool,
    /// The first Route value after that, if any: the next hop (§16.6 step 7).
    pub next_route: Option<Uri<'buf>>,
}

/// Route decisions for `msg`. A Route value that does not decode is an error
/// the caller answers with 400.
pub fn routing<'buf>(
    id: &Identity,
    msg: &Message<'buf>,
) -> Result<Routing<'buf>, crate::sip::ValueError> {
    let mut routes = msg.values(HeaderName::Route);
    let Some(first) = routes.next() else {
        return Ok(Routing {
            pop_route: false,
            next_route: None,
        });
    };
    let first = NameAddr::parse(first)?.uri()?;
    if !id.is_us(&first) {
        return Ok(Routing {
            pop_route: false,
            next_route: Some(first),
        });
    }
    let next_route = match routes.next() {
        Some(v) => Some(NameAddr::parse(v)?.uri()?),
        None => None,
    };
    Ok(Routing {
        pop_route: true,
        next_route,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::testutil::identity;
    use crate::sip::{parse, HeaderIndex};

    fn via(s: &str) -> Via<'_> {
        Via::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn response_destinations() {
        let d = |s| response_dest(&via(s)).map(|a| a.to_string());
        assert_eq!(d("SIP/2.0/UDP 10.0.0.1"), Some("10.0.0.1:5060".into()));
        assert_eq!(d("SIP/2.0/UDP 10.0.0.1:5070"), Some("10.0.0.1:5070".into()));
        assert_eq!(
            d("SIP/2.0/UDP host.example;received=10.0.0.2"),
            Some("10.0.0.2:5060".into())
        );
        assert_eq!(
            d("SIP/2.0/UDP 10.0.0.1:5070;received=10.0.0.2;rport=6000"),
            Some("10.0.0.2:6000".into())
        );
        assert_eq!(
            d("SIP/2.0/UDP host.example:5070;received=[2001:db8::1]"),
            Some("[2001:db8::1]:5070".into())
        );
        assert_eq!(d("SIP/2.0/UDP host.example"), None);
        let src: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        assert_eq!(
            reply_dest(&via("SIP/2.0/UDP 10.0.0.1:5070;rport"), src),
            src
        );
        assert_eq!(
            reply_dest(&via("SIP/2.0/UDP 10.0.0.1:5070"), src).to_string(),
            "192.0.2.7:5070"
        );
    }

    #[test]
    fn loose_routing() {
        let m = b"INVITE sip:bob@192.0.2.9 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
Route: <sip:127.0.0.1:5060;lr>, <sip:192.0.2.20:5062;lr>\r\nTo: <sip:b@x>\r\nFrom: <sip:a@x>;tag=1\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n";
        let mut idx = HeaderIndex::default();
        let msg = parse(m, &mut idx).unwrap();
        let r = routing(&identity(), &msg).unwrap();
        assert!(r.pop_route);
        assert_eq!(
            uri_addr(&r.next_route.unwrap()).unwrap().to_string(),
            "192.0.2.20:5062"
        );
        let m2 = String::from_utf8_lossy(m).replace("<sip:127.0.0.1:5060;lr>, ", "");
        let mut idx = HeaderIndex::default();
        let msg = parse(m2.as_bytes(), &mut idx).unwrap();
        let r = routing(&identity(), &msg).unwrap();
        assert!(!r.pop_route);
        assert!(r.next_route.is_some());
        let u = Uri::parse(b"sip:bob@192.0.2.9;maddr=192.0.2.10").unwrap();
        assert_eq!(uri_addr(&u).unwrap().to_string(), "192.0.2.10:5060");
        assert_eq!(
            uri_addr(&Uri::parse(b"sips:bob@[::1]").unwrap())
                .unwrap()
                .to_string(),
            "[::1]:5061"
        );
        assert_eq!(uri_addr(&Uri::parse(b"sip:bob@example.com").unwrap()), None);
    }
}
