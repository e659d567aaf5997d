//! The stateless relay (RFC 3261 §16.11): every request is checked, edited
//! and sent on; every response goes back along its Vias. Nothing is
//! remembered between messages, so any shard can relay any message.
//!
//! ```text
//! request ─► parse ─► essentials ─┬─ OPTIONS to us ───────────► 200 (Allow, Supported)
//!   (§16.3)                       ├─ Max-Forwards 0 ──────────► 483
//!                                 ├─ loop (§16.3 step 4) ─────► 482
//!                                 ├─ no next hop ─────────────► 480 (ACK: drop)
//!                                 └─ Route/Request-URI/upstream: add Via (branch §16.11),
//!                                    received/rport, Max-Forwards−1, pop our Route ─► send
//! response ─► parse ─► top Via ours? ─ no ─► drop, count
//!   (§16.7)                          └ yes ─► remove it ─► next Via (§18.2.2) ─► send
//! malformed ─► 400/413/414/416/505 with the precise reason, or drop and count
//! ```
//!
//! Contract: no allocation per message, no panic on any input; every
//! datagram either produces output or increments a counter.

use core::net::SocketAddr;

use crate::policy::flood::{Admit, Flood};
use crate::sip::{
    self, emit, Edits, HeaderIndex, MaxForwardsEdit, Message, Method, NewVia, ParseConfig,
    ParseError, Received, ResponseSpec,
};
use crate::time::Instant;
use crate::transport::{FlowId, Outbox, Peer, PushError, SocketId, Transport};

use super::branch::{self, Hasher};
use super::{reject, route, Counters, Identity, Service};

/// Settings of the stateless relay.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Next hop for requests that name no reachable address (and, with no
    /// location service in this mode, for requests to served domains).
    pub upstream: Option<SocketAddr>,
    /// The upstream's transport.
    pub upstream_transport: Transport,
    /// Add Record-Route (off by default: a stateless relay rarely needs to
    /// stay on the path of the dialog).
    pub record_route: bool,
    /// Parser limits.
    pub parse: ParseConfig,
}

/// The methods a relay passes on, listed in Allow.
pub const ALLOW: &str =
    "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, REGISTER, SUBSCRIBE, NOTIFY, PUBLISH, INFO, PRACK, UPDATE, REFER\r\n";

/// The stateless relay of one shard.
#[derive(Debug)]
pub struct Stateless {
    id: Identity,
    cfg: Config,
    index: HeaderIndex,
    counters: Counters,
    /// Per-source rate limits and bans (`[flood]`), checked before parsing.
    flood: Option<Flood>,
}

impl Stateless {
    /// A relay for the shard described by `id`.
    pub fn new(id: Identity, cfg: Config) -> Self {
        Self {
            index: HeaderIndex::new(cfg.parse.clone()),
            id,
            cfg,
            counters: Counters::default(),
            flood: None,
        }
    }

    /// With per-source flood limits: a banned source's datagrams are
    /// dropped and counted before they are parsed.
    pub fn with_flood(mut self, flood: Flood) -> Self {
        self.flood = Some(flood);
        self
    }

    /// Who this relay is.
    pub fn identity(&self) -> &Identity {
        &self.id
    }
}

impl Service for Stateless {
    fn handle_message(&mut self, now: Instant, data: &[u8], src: &Peer, out: &mut Outbox) {
        let src = *src;
        let Self {
            id,
            cfg,
            index,
            counters,
            flood,
        } = self;
        if data.iter().all(|&b| b == b'\r' || b == b'\n') {
            counters.keepalives += 1;
            return;
        }
        if crate::transport::stun::is_stun(data) {
            return super::stun_keepalive(counters, data, &src, out);
        }
        if let Some(f) = flood {
            if f.admit(now, src.remote.ip()) == Admit::Banned {
                counters.flood_dropped += 1;
                return;
            }
        }
        match sip::parse(data, index) {
            Ok(msg) if msg.is_request() => {
                counters.count_request(msg.method());
                relay_request(id, cfg, counters, &msg, src, out);
            }
            Ok(msg) => {
                counters.count_response(msg.status());
                relay_response(id, counters, &msg, src.local, out);
            }
            Err(e) => {
                counters.parse_errors += 1;
                let mut code = 0;
                let sent = out.push_with(src, |buf| {
                    let n = reject::error_response(data, e, buf)?
                        .ok_or(sip::EmitError::MissingHeader)?;
                    code = reject::status_of(buf);
                    Ok(n)
                });
                match sent {
                    Ok(()) => counters.count_local_response(code),
                    Err(_) => counters.dropped_malformed += 1,
                }
            }
        }
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }
}

/// A local response to `msg` (which parsed), sent to where §18.2.2 says.
#[allow(clippy::too_many_arguments)]
fn respond(
    id: &Identity,
    counters: &mut Counters,
    msg: &Message<'_>,
    src: Peer,
    code: u16,
    reason: &str,
    extra: &[u8],
    out: &mut Outbox,
) {
    if msg.method() == Method::Ack {
        counters.dropped_unroutable += 1;
        return;
    }
    let dest = msg
        .top_via()
        .map(|v| route::reply_peer(&v, &src))
        .unwrap_or(src);
    let tag = local_tag(id, msg);
    let spec = ResponseSpec {
        to_tag: tag.as_bytes().get(branch::PREFIX.len()..),
        received: Some(Received {
            ip: src.remote.ip(),
            port: src.remote.port(),
        }),
        extra,
        ..ResponseSpec::new(code, reason)
    };
    match out.push_with(dest, |buf| sip::response(msg, &spec, buf)) {
        Ok(()) => counters.count_local_response(code),
        Err(_) => counters.dropped_overflow += 1,
    }
}

/// The To tag of our local responses: a function of the request, so its
/// retransmissions get the same tag without any state.
fn local_tag(id: &Identity, msg: &Message<'_>) -> branch::Branch {
    let from_tag = msg.from().ok().and_then(|f| f.tag()).unwrap_or_default();
    let h = Hasher::new(id.secret ^ 0x7a67)
        .write(msg.call_id())
        .write(from_tag)
        .finish();
    branch::Branch::new(id.shard_id, branch::Kind::Stateless, h)
}

pub(crate) fn relay_request(
    id: &Identity,
    cfg: &Config,
    counters: &mut Counters,
    msg: &Message<'_>,
    src: Peer,
    out: &mut Outbox,
) {
    let ess = match msg.essentials() {
        Ok(e) => e,
        Err(e) => {
            counters.parse_errors += 1;
            respond(id, counters, msg, src, e.status(), e.reason(), b"", out);
            return;
        }
    };
    let Some(uri) = ess.uri else {
        return;
    };

    // OPTIONS addressed to us: the probe load balancers send (§11).
    if msg.method() == Method::Options
        && uri.user.is_none()
        && id.is_us(&uri)
        && msg.values(sip::HeaderName::Route).next().is_none()
    {
        respond(id, counters, msg, src, 200, "OK", OPTIONS_EXTRA, out);
        return;
    }
    // §16.3 step 3 and §16.6 step 3.
    if ess.max_forwards == Some(0) {
        counters.too_many_hops += 1;
        respond(id, counters, msg, src, 483, "Too Many Hops", b"", out);
        return;
    }
    // §16.3 step 4.
    if branch::is_loop(id, msg) {
        counters.loops += 1;
        respond(id, counters, msg, src, 482, "Loop Detected", b"", out);
        return;
    }
    let Ok(routing) = route::routing(id, msg) else {
        respond(
            id,
            counters,
            msg,
            src,
            400,
            "Bad Request (Malformed Route)",
            b"",
            out,
        );
        return;
    };
    // Next hop: first Route left, else the Request-URI if it is an address
    // (and not us), else the upstream.
    // After a strict-route fix-up the Request-URI is the one the Route set carried.
    let uri = match routing.request_uri.map(sip::Uri::parse) {
        Some(Ok(u)) => u,
        Some(Err(_)) | None => uri,
    };
    // RFC 5626 §5.3: a flow token of ours sends the request down that flow
    // (an ACK or BYE toward a browser's `.invalid` contact), unless it came from there.
    let token = routing
        .flows
        .iter()
        .find(|(f, _)| !f.is_none() && *f != src.flow)
        .copied();
    let hop = match &routing.next_route {
        Some(r) => route::uri_addr(r).map(|a| (route::uri_transport(r), a)),
        None if id.is_us(&uri) || id.is_served_uri(&uri) => None,
        None => route::uri_addr(&uri).map(|a| (route::uri_transport(&uri), a)),
    };
    let (transport, dest) = match (token, hop) {
        (Some((_, t)), _) => (
            t,
            Some(route::uri_addr(&uri).unwrap_or(SocketAddr::new(
                core::net::IpAddr::V4(core::net::Ipv4Addr::UNSPECIFIED),
                0,
            ))),
        ),
        (None, Some((t, a))) if id.serves(t) => (t, Some(a)),
        (None, Some((_, a))) => (Transport::Udp, Some(a)),
        (None, None) => (cfg.upstream_transport, cfg.upstream),
    };
    let Some(dest) = dest else {
        counters.dropped_unroutable += 1;
        respond(
            id,
            counters,
            msg,
            src,
            480,
            "Temporarily Unavailable (No Route)",
            b"",
            out,
        );
        return;
    };
    if id
        .sockets
        .iter()
        .any(|s| s.addr == dest || s.advertised == dest)
    {
        counters.loops += 1;
        respond(id, counters, msg, src, 482, "Loop Detected", b"", out);
        return;
    }

    let flow = token.map_or(FlowId::NONE, |(f, _)| f);
    let egress = id.egress(transport, dest, src.local);
    let Some(egress_sock) = id.socket(egress) else {
        counters.dropped_unroutable += 1;
        return;
    };
    let to = Peer {
        transport,
        remote: dest,
        local: egress,
        flow,
    };
    let br = branch::stateless(id, msg, &ess.top_via);
    let received = emit::needs_received(&ess.top_via, src.remote.ip()).then_some(Received {
        ip: src.remote.ip(),
        port: src.remote.port(),
    });
    let rr = if cfg.record_route {
        id.public_for(dest.ip(), src.local).map(|s| s.rr_uri())
    } else {
        None
    };
    let mut append_buf = [0u8; 1024];
    let edits = Edits {
        push_via: Some(NewVia {
            transport: transport.via_token(),
            host: egress_sock.via_host(),
            port: egress_sock.advertised.port(),
            branch: br.as_bytes(),
            rport: true,
        }),
        received,
        max_forwards: MaxForwardsEdit::Decrement,
        pop_route: routing.pop_route,
        pop_second_route: routing.pop_second_route,
        pop_last_route: routing.pop_last_route,
        request_uri: routing.request_uri,
        append: routing
            .append_route
            .map_or(&b""[..], |u| route::route_line(u, &mut append_buf)),
        record_route: rr,
        ..Edits::default()
    };
    match out.push_with(to, |buf| sip::edit(msg, &edits, buf)) {
        Ok(()) => counters.requests_forwarded += 1,
        Err(PushError::Emit(_)) => {
            counters.dropped_overflow += 1;
            respond(
                id,
                counters,
                msg,
                src,
                ParseError::MessageTooLarge.status(),
                "Message Too Large",
                b"",
                out,
            );
        }
        Err(PushError::Full(_)) => counters.dropped_overflow += 1,
    }
}

/// Headers of our 200 to OPTIONS.
const OPTIONS_EXTRA: &[u8] = b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, REGISTER, SUBSCRIBE, NOTIFY, PUBLISH, INFO, PRACK, UPDATE, REFER\r\nAccept: application/sdp\r\nSupported: \r\n";

pub(crate) fn relay_response(
    id: &Identity,
    counters: &mut Counters,
    msg: &Message<'_>,
    socket: SocketId,
    out: &mut Outbox,
) {
    let mut vias = msg.values(sip::HeaderName::Via);
    let top = vias.next().and_then(|v| sip::Via::parse(v).ok());
    let Some(top) = top else {
        counters.dropped_malformed += 1;
        return;
    };
    // §16.7 step 3 / §18.1.2: the top Via must be one we added.
    let ours = top.branch().is_some_and(branch::is_ours) && id.is_local_addr(&top.host, top.port);
    if !ours {
        counters.dropped_not_ours += 1;
        return;
    }
    let Some(next) = vias.next().and_then(|v| sip::Via::parse(v).ok()) else {
        // A response to a request we originated: a relay originates none.
        counters.dropped_not_ours += 1;
        return;
    };
    let Some(mut to) = route::response_peer(&next, id, socket) else {
        counters.dropped_unroutable += 1;
        return;
    };
    if !to.transport.is_stream() {
        to.local = id
            .public_for(to.remote.ip(), socket)
            .and_then(|s| id.sockets.iter().position(|x| x == s))
            .and_then(|i| u8::try_from(i).ok())
            .map_or(socket, SocketId);
    }
    let edits = Edits {
        pop_via: true,
        max_forwards: MaxForwardsEdit::Keep,
        ..Edits::default()
    };
    match out.push_with(to, |buf| sip::edit(msg, &edits, buf)) {
        Ok(()) => counters.responses_forwarded += 1,
        Err(_) => counters.dropped_overflow += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::testutil::identity;
    use crate::sip::{parse, HeaderName};

    struct Harness {
        relay: Stateless,
        out: Outbox,
    }

    impl Harness {
        fn new(upstream: Option<&str>) -> Self {
            Self {
                relay: Stateless::new(
                    identity(),
                    Config {
                        upstream: upstream.map(|u| u.parse().unwrap()),
                        ..Config::default()
                    },
                ),
                out: Outbox::new(1 << 20, 64),
            }
        }

        /// Feeds one datagram; returns what went out as (dest, socket, bytes).
        fn feed(&mut self, data: &[u8], src: &str) -> Vec<(SocketAddr, SocketId, Vec<u8>)> {
            self.out.clear();
            self.relay.handle_message(
                Instant::ZERO,
                data,
                &Peer::udp(src.parse().unwrap(), SocketId(0)),
                &mut self.out,
            );
            self.out
                .items()
                .iter()
                .map(|t| (t.peer.remote, t.peer.local, self.out.bytes(t).to_vec()))
                .collect()
        }
    }

    fn invite(extra: &str) -> Vec<u8> {
        format!(
            "INVITE sip:bob@192.0.2.9:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bKc1;rport\r\n\
{extra}To: <sip:bob@x>\r\nFrom: <sip:a@x>;tag=f1\r\nCall-ID: call1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn status_of(bytes: &[u8]) -> u16 {
        let mut idx = HeaderIndex::default();
        parse(bytes, &mut idx).unwrap().status().unwrap()
    }

    #[test]
    fn relays_a_request_and_its_response() {
        let mut h = Harness::new(None);
        let sent = h.feed(&invite("Max-Forwards: 70\r\n"), "10.0.0.1:40000");
        assert_eq!(sent.len(), 1);
        let (dest, sock, bytes) = &sent[0];
        assert_eq!(dest.to_string(), "192.0.2.9:5080");
        assert_eq!(*sock, SocketId(1), "forwarded from the shard socket");
        let mut idx = HeaderIndex::default();
        let fwd = parse(bytes, &mut idx).unwrap();
        let vias: Vec<&[u8]> = fwd.values(HeaderName::Via).collect();
        assert!(vias[0].starts_with(b"SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKse01l"));
        assert_eq!(
            vias[1],
            b"SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bKc1;received=10.0.0.1;rport=40000"
        );
        assert_eq!(fwd.max_forwards(), Ok(Some(69)));
        // The retransmission takes the same branch.
        let again = h.feed(&invite("Max-Forwards: 70\r\n"), "10.0.0.1:40000");
        assert_eq!(again[0].2, *bytes);

        // The response comes back through us to the client's rport.
        let our_via = String::from_utf8_lossy(vias[0]).to_string();
        let client_via = String::from_utf8_lossy(vias[1]).to_string();
        let resp = format!(
            "SIP/2.0 180 Ringing\r\nVia: {our_via}\r\nVia: {client_via}\r\nTo: <sip:bob@x>;tag=t\r\nFrom: <sip:a@x>;tag=f1\r\nCall-ID: call1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        );
        let back = h.feed(resp.as_bytes(), "192.0.2.9:5080");
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0.to_string(), "10.0.0.1:40000");
        assert_eq!(
            back[0].1,
            SocketId(0),
            "responses leave from the public socket"
        );
        let mut idx = HeaderIndex::default();
        let r = parse(&back[0].2, &mut idx).unwrap();
        assert_eq!(r.values(HeaderName::Via).count(), 1);
        assert_eq!(h.relay.counters().responses_forwarded, 1);
    }

    #[test]
    fn refuses_what_it_must() {
        let mut h = Harness::new(None);
        let sent = h.feed(&invite("Max-Forwards: 0\r\n"), "10.0.0.1:40000");
        assert_eq!(status_of(&sent[0].2), 483);
        assert_eq!(sent[0].0.to_string(), "10.0.0.1:40000");
        // Not ours: dropped and counted.
        let resp = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.9.9.9;branch=z9hG4bKx\r\nVia: SIP/2.0/UDP 10.0.0.1\r\nTo: <sip:b@x>;tag=t\r\nFrom: <sip:a@x>;tag=f\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n";
        assert!(h.feed(resp, "10.9.9.9:5060").is_empty());
        assert_eq!(h.relay.counters().dropped_not_ours, 1);
        // Malformed: a precise 400 to the source.
        let bad = String::from_utf8(invite("Max-Forwards: 70\r\n"))
            .unwrap()
            .replace("CSeq: 1 INVITE", "CSeq: 1 BYE");
        let sent = h.feed(bad.as_bytes(), "10.0.0.1:40000");
        assert_eq!(status_of(&sent[0].2), 400);
        // Garbage: dropped and counted.
        assert!(h.feed(b"\x16\x03\x01garbage", "10.0.0.1:40000").is_empty());
        assert_eq!(h.relay.counters().dropped_malformed, 1);
        // A hostname we cannot resolve and no upstream: 480.
        let host = String::from_utf8(invite(""))
            .unwrap()
            .replace("192.0.2.9:5080", "elsewhere.example");
        let sent = h.feed(host.as_bytes(), "10.0.0.1:40000");
        assert_eq!(status_of(&sent[0].2), 480);
        // Keep-alives are counted, not answered.
        assert!(h.feed(b"\r\n\r\n", "10.0.0.1:40000").is_empty());
        assert_eq!(h.relay.counters().keepalives, 1);
    }

    #[test]
    fn answers_options_to_itself() {
        let mut h = Harness::new(Some("192.0.2.50:5060"));
        let opt = b"OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bKo1\r\nTo: <sip:127.0.0.1>\r\nFrom: <sip:lb@x>;tag=9\r\nCall-ID: o1\r\nCSeq: 5 OPTIONS\r\nMax-Forwards: 0\r\n\r\n";
        let sent = h.feed(opt, "10.0.0.1:5062");
        assert_eq!(sent.len(), 1);
        let mut idx = HeaderIndex::default();
        let r = parse(&sent[0].2, &mut idx).unwrap();
        assert_eq!(r.status(), Some(200));
        assert!(r.header(HeaderName::Allow).is_some());
        assert!(r.header(HeaderName::Supported).is_some());
        assert!(r.to().unwrap().tag().is_some());
        assert_eq!(sent[0].0.to_string(), "10.0.0.1:5062");
    }

    #[test]
    fn loose_routes_and_uses_the_upstream() {
        let mut h = Harness::new(Some("192.0.2.50:5060"));
        let routed = invite("Route: <sip:127.0.0.1:5060;lr>, <sip:192.0.2.77:5090;lr>\r\n");
        let sent = h.feed(&routed, "10.0.0.1:40000");
        assert_eq!(sent[0].0.to_string(), "192.0.2.77:5090");
        let mut idx = HeaderIndex::default();
        let m = parse(&sent[0].2, &mut idx).unwrap();
        let routes: Vec<&[u8]> = m.values(HeaderName::Route).collect();
        assert_eq!(routes, vec![&b"<sip:192.0.2.77:5090;lr>"[..]]);
        let served = String::from_utf8(invite(""))
            .unwrap()
            .replace("192.0.2.9:5080", "example.test");
        let sent = h.feed(served.as_bytes(), "10.0.0.1:40000");
        assert_eq!(sent[0].0.to_string(), "192.0.2.50:5060");
        assert_eq!(sent[0].0.to_string(), "192.0.2.50:5060");
        // A request aimed at ourselves with no upstream left to send it to would loop.
        let mut h = Harness::new(None);
        let me = String::from_utf8(invite(""))
            .unwrap()
            .replace("192.0.2.9:5080", "127.0.0.1:5060");
        let sent = h.feed(me.as_bytes(), "10.0.0.1:40000");
        assert_eq!(status_of(&sent[0].2), 480);
    }
}
