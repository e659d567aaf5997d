//! Where a message goes next: loose routing of requests (RFC 3261 §16.4,
//! §16.6 steps 6–7, §16.12) and the return path of responses (§18.2.2,
//! RFC 3581 §4).
//!
//! The core resolves no names: a next hop must be an IP literal (a Route or
//! Request-URI naming a host goes to the configured upstream instead), which
//! keeps the hot path free of blocking lookups.

use core::net::SocketAddr;

use crate::sip::{HeaderName, Host, Message, NameAddr, Scheme, Uri, Via};
use crate::transport::{FlowId, Peer, Transport};

use super::{flow, Identity};

/// The transport a URI asks for (RFC 3261 §19.1.4, §26.2): its
/// `transport=` parameter, else TLS for `sips:`, else UDP. `sips:` with
/// `transport=tcp` means TLS; with `transport=ws`, WSS.
pub fn uri_transport(uri: &Uri<'_>) -> Transport {
    let secure = uri.scheme == Scheme::Sips;
    match uri.transport().and_then(Transport::from_bytes) {
        Some(Transport::Tcp | Transport::Tls) if secure => Transport::Tls,
        Some(Transport::Ws | Transport::Wss) if secure => Transport::Wss,
        Some(t) => t,
        None if secure => Transport::Tls,
        None => Transport::Udp,
    }
}

/// The transport of the flow a Route URI of ours names: its `ft` parameter
/// when present (a Path this node wrote for other nodes of a shared store:
/// they reach us over UDP, the flow is a stream), else the URI's transport.
pub fn flow_transport(uri: &Uri<'_>) -> Transport {
    uri.param(b"ft")
        .flatten()
        .and_then(Transport::from_bytes)
        .unwrap_or_else(|| uri_transport(uri))
}

/// Where our own response to a request from `src` goes (§18.2.2): over a
/// stream, back on the connection it came in on; over UDP, as the Via says
/// ([`reply_dest`]).
pub fn reply_peer(via: &Via<'_>, src: &Peer) -> Peer {
    if src.transport.is_stream() {
        return *src;
    }
    Peer::udp(reply_dest(via, src.remote), src.local)
}

/// Where a response relayed by the Via `next` (the one below ours) goes:
/// for a stream transport, a connection to the address the request came
/// from (§18.2.2: `received`/`rport` stamped on that Via); for UDP, as
/// [`response_dest`] says. `local`: the listener to send from.
pub fn response_peer(
    next: &Via<'_>,
    id: &Identity,
    local: crate::transport::SocketId,
) -> Option<Peer> {
    let dest = response_dest(next)?;
    let transport = Transport::from_bytes(next.transport).unwrap_or(Transport::Udp);
    if !transport.is_stream() {
        return Some(Peer::udp(dest, local));
    }
    Some(Peer {
        transport,
        remote: dest,
        local: id.egress(transport, dest, local),
        flow: FlowId::NONE,
    })
}

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

/// Route processing of one request (§16.4, §16.6 steps 6–7): which Route
/// values go, whether the Request-URI changes, and where the request goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Routing<'buf> {
    /// Remove the first Route value (it names us, or it is a strict next hop).
    pub pop_route: bool,
    /// Remove the second Route value too (a strict next hop after ours).
    pub pop_second_route: bool,
    /// Remove the last Route value (strict-route fix-up, §16.4).
    pub pop_last_route: bool,
    /// The new Request-URI: the last Route value after a strict router put our
    /// Record-Route URI in the Request-URI (§16.4), or a strict next hop's URI
    /// (§16.6 step 6).
    pub request_uri: Option<&'buf [u8]>,
    /// The Request-URI to add as the last Route value (strict next hop).
    pub append_route: Option<&'buf [u8]>,
    /// The next hop named by the Route set, if any.
    pub next_route: Option<Uri<'buf>>,
    /// Flow tokens (RFC 5626 §5.3) in the Route values of ours that go: a
    /// request that did not arrive on such a flow is sent down it.
    pub flows: [(FlowId, Transport); 2],
}

/// Route decisions for `msg`. A Route value that does not decode is an error
/// the caller answers with 400.
pub fn routing<'buf>(
    id: &Identity,
    msg: &Message<'buf>,
) -> Result<Routing<'buf>, crate::sip::ValueError> {
    let mut r = Routing::default();
    let n = msg.values(HeaderName::Route).count();
    if n == 0 {
        return Ok(r);
    }
    let mut usable = n;
    // §16.4: a strict router before us put our Record-Route URI in the
    // Request-URI; the real one is the last Route value.
    let ruri_is_us = msg
        .request_uri()
        .is_ok_and(|u| u.user.is_none() && id.is_local_addr(&u.host, u.port));
    if ruri_is_us {
        if let Some(last) = msg.values(HeaderName::Route).nth(n - 1) {
            let na = NameAddr::parse(last)?;
            // A last Route naming us is an outbound-proxy Route, not a strict
            // router's leftover: nothing to fix up.
            if !id.is_us(&na.uri()?) {
                r.request_uri = Some(na.uri_bytes);
                r.pop_last_route = true;
                usable = n - 1;
            }
        }
    }
    let mut values = msg.values(HeaderName::Route).take(usable);
    let mut next = values.next();
    if let Some(first) = next {
        let u = NameAddr::parse(first)?.uri()?;
        if id.is_us(&u) {
            r.pop_route = true;
            r.flows[0] = (flow::from_uri(id, &u), flow_transport(&u));
            next = values.next();
            // RFC 5658: a double Record-Route of ours (one per transport or
            // flow) comes back as two Route values naming us.
            if let Some(second) = next {
                let u2 = NameAddr::parse(second)?.uri()?;
                if id.is_us(&u2) {
                    r.pop_second_route = true;
                    r.flows[1] = (flow::from_uri(id, &u2), flow_transport(&u2));
                    next = values.next();
                }
            }
        }
    }
    let Some(next) = next else {
        return Ok(r);
    };
    let na = NameAddr::parse(next)?;
    let uri = na.uri()?;
    if !uri.is_loose_router() && !r.pop_second_route {
        // §16.6 step 6: a strict router gets the request with its URI as the
        // Request-URI; the Request-URI moves to the end of the Route set.
        r.append_route = Some(r.request_uri.unwrap_or(msg.request_uri_bytes()));
        r.request_uri = Some(na.uri_bytes);
        if r.pop_route {
            r.pop_second_route = true;
        } else {
            r.pop_route = true;
        }
    }
    r.next_route = Some(uri);
    Ok(r)
}

/// Writes `Route: <uri>\r\n` into `buf`; returns the line (empty if it does not fit).
pub fn route_line<'a>(uri: &[u8], buf: &'a mut [u8]) -> &'a [u8] {
    let mut w = crate::sip::Writer::new(buf);
    let ok = w.put(b"Route: <").is_ok() && w.put(uri).is_ok() && w.put(b">\r\n").is_ok();
    let n = if ok { w.len() } else { 0 };
    buf.get(..n).unwrap_or_default()
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
        // §16.4: a strict router put our RR URI in the Request-URI.
        let fix = b"BYE sip:127.0.0.1:5060;lr SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
Route: <sip:192.0.2.30;lr>, <sip:bob@192.0.2.4:5062>\r\nTo: <sip:b@x>;tag=9\r\nFrom: <sip:a@x>;tag=1\r\nCall-ID: c\r\nCSeq: 2 BYE\r\n\r\n";
        let mut idx = HeaderIndex::default();
        let msg = parse(fix, &mut idx).unwrap();
        let r = routing(&identity(), &msg).unwrap();
        assert_eq!(r.request_uri, Some(&b"sip:bob@192.0.2.4:5062"[..]));
        assert!(r.pop_last_route && !r.pop_route);
        assert_eq!(
            uri_addr(&r.next_route.unwrap()).unwrap().to_string(),
            "192.0.2.30:5060"
        );
        // §16.6 step 6: the next hop after us is a strict router.
        let strict = b"BYE sip:bob@192.0.2.4:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
Route: <sip:127.0.0.1:5060;lr>, <sip:192.0.2.31>\r\nTo: <sip:b@x>;tag=9\r\nFrom: <sip:a@x>;tag=1\r\nCall-ID: c\r\nCSeq: 2 BYE\r\n\r\n";
        let mut idx = HeaderIndex::default();
        let msg = parse(strict, &mut idx).unwrap();
        let r = routing(&identity(), &msg).unwrap();
        assert!(r.pop_route && r.pop_second_route);
        assert_eq!(r.request_uri, Some(&b"sip:192.0.2.31"[..]));
        assert_eq!(r.append_route, Some(&b"sip:bob@192.0.2.4:5062"[..]));
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
