//! Routing decisions (RFC 3261 §16): the stateless relay ([`stateless`]),
//! and the pieces every proxy mode shares: who we are ([`Identity`]), Via
//! branches ([`branch`]), loose routing and next-hop choice ([`route`]),
//! answers to malformed input ([`reject`]) and the counters ([`Counters`]).
//!
//! Sans-IO: a proxy takes `(now, datagram, source, socket)` and writes what
//! it sends into the caller's [`crate::transport::Outbox`]. It reads
//! no clock and opens no socket.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod branch;
pub mod build;
pub mod flow;
pub mod guard;
pub mod hooks;
pub mod location;
pub mod reject;
pub mod route;
pub mod stateful;
pub mod stateless;

use core::net::{IpAddr, SocketAddr};

use crate::sip::emit::format_ip;
use crate::sip::{Host, Uri};
use crate::time::Instant;
use crate::transport::{FlowId, Outbox, Peer, SocketId, Transport};

/// Answers a STUN Binding request on a UDP flow (RFC 5626 §8.4 keep-alive);
/// anything else that looks like STUN is dropped and counted.
pub(crate) fn stun_keepalive(counters: &mut Counters, data: &[u8], src: &Peer, out: &mut Outbox) {
    let sent = src.transport == Transport::Udp
        && out
            .push_with(*src, |buf| {
                crate::transport::stun::binding_response(data, src.remote, buf)
                    .ok_or(crate::sip::EmitError::BufferFull)
            })
            .is_ok();
    if sent {
        counters.keepalives += 1;
    } else {
        counters.dropped_malformed += 1;
    }
}

/// A question from the operator (`sipedge ctl`), answered by a shard's
/// service at the start of a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// The bindings of this shard's registrar partition (of one AoR key).
    Bindings(Option<Vec<u8>>),
    /// Remove every binding of an AoR key (on the partition that owns it).
    RemoveAor(Vec<u8>),
    /// The sources the flood limiter bans now.
    FloodBans,
    /// Lift the ban of a source.
    Unban(IpAddr),
    /// The dispatcher destinations, their states and loads.
    Dispatcher,
    /// An operator sets a destination's state: (set, URI, state).
    DispatcherSetState(String, String, crate::routing::dispatcher::State),
}

/// A service's answer to a [`Control`] question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAnswer {
    /// The bindings asked for.
    Bindings(Vec<crate::location::Binding>),
    /// Bindings removed.
    Removed(usize),
    /// Banned sources and the seconds left of each ban.
    Bans(Vec<(IpAddr, u64)>),
    /// Whether a ban was lifted.
    Unbanned(bool),
    /// The dispatcher destinations of this shard.
    Dispatcher(Vec<crate::routing::dispatcher::DestStatus>),
    /// Whether such a destination exists.
    StateSet(bool),
    /// This service has no such thing (no registrar, no flood limiter).
    NotHere,
}

/// What a shard runs: the sans-IO service that turns messages and time into
/// messages to send. The shard loop calls it; it calls nothing back.
pub trait Service {
    /// One message (a datagram, or one framed out of a stream) from `peer`
    /// arrived at `now`; whatever it causes to be sent goes into `out`.
    fn handle_message(&mut self, now: Instant, data: &[u8], peer: &Peer, out: &mut Outbox);

    /// The header block of a message a stream could not frame (no
    /// Content-Length, too large…) with the parse error: answer it (the
    /// connection closes after). By default: the status of `error`.
    fn handle_malformed(
        &mut self,
        now: Instant,
        head: &[u8],
        error: crate::sip::ParseError,
        peer: &Peer,
        out: &mut Outbox,
    ) {
        let _ = now;
        let _ = out.push_with(*peer, |buf| {
            reject::error_response(head, error, buf)?.ok_or(crate::sip::EmitError::MissingHeader)
        });
    }

    /// The connection `flow` closed (or failed): forget what depends on it.
    fn handle_flow_closed(&mut self, now: Instant, flow: FlowId) {
        let _ = (now, flow);
    }

    /// Time has reached `now`: fire what is due (retransmissions, expiries).
    fn handle_timeout(&mut self, now: Instant, out: &mut Outbox) {
        let _ = (now, out);
    }

    /// A loop turn starts at `now`, with the wall clock (µs since the Unix
    /// epoch) for what must survive a restart (binding expiry, nonce age).
    fn handle_turn(&mut self, now: Instant, wall_us: u64) {
        let _ = (now, wall_us);
    }

    /// The last turn took in `received` datagrams and stream messages: the
    /// queue the shard found waiting (overload control's queue depth).
    fn handle_backlog(&mut self, received: usize) {
        let _ = received;
    }

    /// When [`Service::handle_timeout`] next has something to do.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Cuts a batch: the records that must be durable before what depends
    /// on them is sent go into `batch`. True when a batch was cut (records,
    /// or answers waiting behind earlier batches): the shard submits it to
    /// its store and calls [`Service::persisted`] when it completes, maybe
    /// turns later, once per batch and in the order they were cut.
    fn poll_persist(&mut self, batch: &mut Vec<crate::location::Record>) -> bool {
        let _ = batch;
        false
    }

    /// The oldest batch cut by [`Service::poll_persist`] and not yet
    /// completed is durable (`ok`) or not.
    fn persisted(&mut self, now: Instant, ok: bool, out: &mut Outbox) {
        let _ = (now, ok, out);
    }

    /// The next message for another shard: (shard index, message).
    fn poll_mesh(&mut self) -> Option<(usize, stateful::MeshMsg)> {
        None
    }

    /// A message from another shard.
    fn handle_mesh(&mut self, now: Instant, msg: stateful::MeshMsg, out: &mut Outbox) {
        let _ = (now, msg, out);
    }

    /// The shared store lost its data (Redis restarted empty): write this
    /// shard's partition again.
    fn reseed(&mut self, now: Instant) {
        let _ = now;
    }

    /// Changes other nodes made, from the shared store's stream, for this
    /// shard's partition (the store routed them here by AoR).
    fn handle_remote(&mut self, now: Instant, records: Vec<crate::location::Record>) {
        let _ = (now, records);
    }

    /// Replication lag of the location feed, µs, if this service keeps a replica.
    fn replication_lag(&self) -> Option<&hdrhistogram::Histogram<u64>> {
        None
    }

    /// Time from a new request's arrival to the first response other than
    /// 100 Trying sent back for it (forwarded or the edge's own), µs.
    fn response_time(&self) -> Option<&hdrhistogram::Histogram<u64>> {
        None
    }

    /// The registrar partition this service owns, for store compaction.
    fn partition_state(&self) -> Option<crate::location::PartitionState> {
        None
    }

    /// Answers the operator's question `q` (see [`Control`]).
    fn control(&mut self, now: Instant, q: &Control) -> ControlAnswer {
        let _ = now;
        match q {
            Control::Bindings(aor) => self.partition_state().map_or(ControlAnswer::NotHere, |st| {
                ControlAnswer::Bindings(
                    st.bindings
                        .into_iter()
                        .filter(|b| aor.as_deref().is_none_or(|a| b.aor() == a))
                        .collect(),
                )
            }),
            _ => ControlAnswer::NotHere,
        }
    }

    /// The service's counters.
    fn counters(&self) -> &Counters;
}

/// What a local socket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketRole {
    /// A public listen address (shared by all shards with SO_REUSEPORT):
    /// clients send here, Record-Route names it, and responses to clients leave from it.
    Public,
    /// The shard's own address: named in the Vias the shard adds, so the
    /// responses to what it forwards come back to it.
    Shard,
}

/// One socket of a shard (a UDP socket or a stream listener), as the core knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSocket {
    /// The bound address.
    pub addr: SocketAddr,
    /// Its transport.
    pub transport: Transport,
    /// Its role.
    pub role: SocketRole,
    /// The address advertised in Via/Record-Route (the bound one unless configured).
    pub advertised: SocketAddr,
    /// `host` of the advertised address as it goes in a Via (`[…]` for IPv6).
    via_host: Box<[u8]>,
    /// The Record-Route URI of this socket, e.g. `sip:192.0.2.1:5060;lr`
    /// (with `;transport=tcp` and so on for stream listeners).
    rr_uri: Box<[u8]>,
}

impl LocalSocket {
    /// A UDP socket bound to `addr`, advertised as itself.
    pub fn new(addr: SocketAddr, role: SocketRole) -> Self {
        Self::advertised(addr, role, addr)
    }

    /// A UDP socket bound to `addr` and advertised as `advertised` (NAT, 0.0.0.0 binds).
    pub fn advertised(addr: SocketAddr, role: SocketRole, advertised: SocketAddr) -> Self {
        Self::listener(Transport::Udp, addr, role, advertised)
    }

    /// A socket of `transport` bound to `addr` and advertised as `advertised`.
    pub fn listener(
        transport: Transport,
        addr: SocketAddr,
        role: SocketRole,
        advertised: SocketAddr,
    ) -> Self {
        let mut tmp = [0u8; 48];
        let n = format_ip(advertised.ip(), &mut tmp);
        let host = tmp.get(..n).unwrap_or_default();
        let mut rr = b"sip:".to_vec();
        rr.extend_from_slice(host);
        rr.extend_from_slice(format!(":{};lr", advertised.port()).as_bytes());
        if transport != Transport::Udp {
            rr.extend_from_slice(b";transport=");
            rr.extend_from_slice(transport.param().as_bytes());
        }
        Self {
            addr,
            transport,
            role,
            advertised,
            via_host: host.into(),
            rr_uri: rr.into_boxed_slice(),
        }
    }

    /// The host of the advertised address as it goes in a URI.
    pub fn uri_host(&self) -> &[u8] {
        &self.via_host
    }

    /// The host as it goes in a Via sent-by.
    pub fn via_host(&self) -> &[u8] {
        &self.via_host
    }

    /// The Record-Route URI naming this socket.
    pub fn rr_uri(&self) -> &[u8] {
        &self.rr_uri
    }
}

/// Who this shard is: its sockets, the domains the edge serves, and the
/// secret that keys its branch hashes.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The shard's index (goes into branches).
    pub shard_id: u16,
    /// The shard's sockets; [`SocketId`] indexes this list.
    pub sockets: Vec<LocalSocket>,
    /// Domains this edge serves, lower-case.
    pub domains: Vec<Box<[u8]>>,
    /// Key of the branch hash (the same on every shard, so any shard can
    /// recognise and recompute a branch).
    pub secret: u64,
    /// The other shards' own UDP addresses (the ports in their Vias, bound
    /// and advertised): ours too. With the AF_XDP driver a response to
    /// another shard's Via port can arrive on this shard's queue; it is
    /// recognised as ours and handed to that shard.
    pub siblings: Vec<SocketAddr>,
}

impl Identity {
    /// The socket with this id.
    pub fn socket(&self, id: SocketId) -> Option<&LocalSocket> {
        self.sockets.get(usize::from(id.0))
    }

    /// True when `host:port` names one of our sockets (port defaults to 5060).
    pub fn is_local_addr(&self, host: &Host<'_>, port: Option<u16>) -> bool {
        let Some(ip) = host.ip() else {
            return false;
        };
        let port = port.unwrap_or(5060);
        self.sockets.iter().any(|s| {
            (s.advertised.ip() == ip && s.advertised.port() == port)
                || (s.addr.ip() == ip && s.addr.port() == port)
        }) || self
            .siblings
            .iter()
            .any(|a| a.ip() == ip && a.port() == port)
    }

    /// True when `host` is a domain this edge serves (a configured domain
    /// may also be an address, for an edge with no DNS name).
    pub fn is_served_domain(&self, host: &Host<'_>) -> bool {
        match host {
            Host::Name(n) => {
                let n = n.strip_suffix(b".").unwrap_or(n);
                self.domains.iter().any(|d| d.eq_ignore_ascii_case(n))
            }
            Host::V4(_) | Host::V6(_) => self.domains.iter().any(|d| {
                d.first()
                    .is_some_and(|c| c.is_ascii_digit() || *c == b'[' || *c == b':')
                    && Host::parse(d).is_ok_and(|h| h.matches(host))
            }),
        }
    }

    /// True when `uri` is in a domain this edge serves. A domain that is an
    /// address matches only with no port or one of ours: `sip:127.0.0.1:5080`
    /// is a UA at that address, not our domain.
    pub fn is_served_uri(&self, uri: &Uri<'_>) -> bool {
        self.is_served_domain(&uri.host)
            && (matches!(uri.host, Host::Name(_))
                || uri
                    .port
                    .is_none_or(|p| self.sockets.iter().any(|s| s.advertised.port() == p)))
    }

    /// True when `uri` designates this proxy itself (our address, or a served
    /// domain with no user part and no port, or a port of ours), as §16.4 asks
    /// of a Route value or a Request-URI after strict routing.
    pub fn is_us(&self, uri: &Uri<'_>) -> bool {
        if self.is_local_addr(&uri.host, uri.port) {
            return true;
        }
        self.is_served_domain(&uri.host)
            && uri.user.is_none()
            && uri
                .port
                .is_none_or(|p| self.sockets.iter().any(|s| s.advertised.port() == p))
    }

    /// The socket to send to `dest` over UDP from: the shard socket of the
    /// same address family (so responses come back to this shard), else a public one.
    pub fn egress_for(&self, dest: SocketAddr, arrived: SocketId) -> SocketId {
        self.egress(Transport::Udp, dest, arrived)
    }

    /// The socket to send to `dest` over `transport` from (for streams: the
    /// listener named in our Via and Record-Route; the connection itself
    /// comes from an ephemeral port or is the one the peer opened).
    pub fn egress(&self, transport: Transport, dest: SocketAddr, arrived: SocketId) -> SocketId {
        let family = |a: &SocketAddr| a.is_ipv4();
        let pick = |role: SocketRole| {
            self.sockets.iter().position(|s| {
                s.role == role && s.transport == transport && family(&s.addr) == family(&dest)
            })
        };
        let i = pick(SocketRole::Shard)
            .or_else(|| pick(SocketRole::Public))
            .unwrap_or(usize::from(arrived.0));
        SocketId(u8::try_from(i).unwrap_or(arrived.0))
    }

    /// The public socket of the same family as `ip`, for Record-Route.
    pub fn public_for(&self, ip: IpAddr, arrived: SocketId) -> Option<&LocalSocket> {
        let arrived_sock = self.socket(arrived);
        if let Some(s) = arrived_sock.filter(|s| s.role == SocketRole::Public) {
            return Some(s);
        }
        let transport = arrived_sock.map_or(Transport::Udp, |s| s.transport);
        self.sockets
            .iter()
            .find(|s| {
                s.role == SocketRole::Public
                    && s.transport == transport
                    && s.addr.is_ipv4() == ip.is_ipv4()
            })
            .or(arrived_sock)
    }

    /// The public listener of `transport` in the family of `ip`.
    pub fn public_of(&self, transport: Transport, ip: IpAddr) -> Option<&LocalSocket> {
        self.sockets.iter().find(|s| {
            s.role == SocketRole::Public
                && s.transport == transport
                && s.addr.is_ipv4() == ip.is_ipv4()
        })
    }

    /// True when this shard has a listener of `transport`.
    pub fn serves(&self, transport: Transport) -> bool {
        self.sockets.iter().any(|s| s.transport == transport)
    }

    /// The transport of socket `id` (UDP if unknown).
    pub fn transport_of(&self, id: SocketId) -> Transport {
        self.socket(id).map_or(Transport::Udp, |s| s.transport)
    }
}

/// Per-shard counters: owned by the shard, written without atomics, summed
/// on scrape. Named after the `sipedge_proxy_<what>_total` metrics they feed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests received and parsed.
    pub requests: u64,
    /// Responses received and parsed.
    pub responses: u64,
    /// Requests forwarded.
    pub requests_forwarded: u64,
    /// Responses forwarded.
    pub responses_forwarded: u64,
    /// Responses this proxy generated (errors, OPTIONS, 483, …).
    pub responses_local: u64,
    /// Datagrams that did not parse.
    pub parse_errors: u64,
    /// Malformed datagrams dropped without an answer (no way to route one).
    pub dropped_malformed: u64,
    /// Responses dropped because their top Via is not ours.
    pub dropped_not_ours: u64,
    /// Messages dropped because no next hop could be found.
    pub dropped_unroutable: u64,
    /// Messages dropped because the outbox was full or the message too big.
    pub dropped_overflow: u64,
    /// Keep-alives (CRLF) received.
    pub keepalives: u64,
    /// Requests refused with 483 (Max-Forwards exhausted).
    pub too_many_hops: u64,
    /// Requests refused with 482 (loop).
    pub loops: u64,
    /// Requests (and, between shards, responses) shed under overload: 503
    /// with Retry-After, or dropped where no answer is due.
    pub overload: u64,
    /// What [`Counters::overload`] counts, by reason
    /// ([`crate::policy::overload::ShedReason`] order).
    pub shed_by_reason: [u64; 5],
    /// Server transactions created.
    pub transactions: u64,
    /// Request retransmissions absorbed by a server transaction.
    pub retransmissions_absorbed: u64,
    /// Requests retransmitted by a client transaction.
    pub retransmissions_sent: u64,
    /// ACKs of non-2xx responses absorbed.
    pub acks_absorbed: u64,
    /// CANCELs matched to their INVITE.
    pub cancels: u64,
    /// REGISTERs handed to the shard owning their AoR.
    pub handed_over: u64,
    /// REGISTERs taken over from another shard (counted there in `requests`).
    pub handed_in: u64,
    /// Responses that came in on a connection of this shard for another
    /// shard's client transaction, handed to it.
    pub responses_handed_over: u64,
    /// Responses taken over from another shard (counted there in `responses`).
    pub responses_handed_in: u64,
    /// Registrar answers turned into 500 because the store write failed.
    pub store_failures: u64,
    /// Replica resyncs requested after a gap in a feed.
    pub resyncs: u64,
    /// Datagrams dropped before parsing because their source is banned (flood).
    pub flood_dropped: u64,
    /// 401/407 challenges sent.
    pub auth_challenges: u64,
    /// Requests dropped by failed-authentication throttling.
    pub auth_throttled: u64,
    /// Requests refused by the policy (or a failed identity check).
    pub policy_denied: u64,
    /// Requests sent over UDP because we have no listener of the transport their target asked for.
    pub transport_fallbacks: u64,
    /// Requests over 1300 bytes sent over TCP instead of UDP (RFC 3261 §18.1.1).
    pub transport_upgrades: u64,
    /// Requests a local service originated (NOTIFY), each with a client transaction.
    pub requests_originated: u64,
    /// Requests for a dispatcher set none of whose destinations could take them (503).
    pub dispatcher_unavailable: u64,
    /// Requests moved to another destination of their set after a failure.
    pub dispatcher_failovers: u64,
    /// Presence's own counters (the shard's partition).
    pub presence: crate::presence::PresenceCounters,
    /// Transactions live at the end of the last loop turn (a gauge, not a total).
    pub transactions_live: u64,
    /// Timers on the transaction wheel at the end of the last loop turn,
    /// live and stale (a gauge: it follows the load, never the uptime).
    pub timers_live: u64,
    /// Requests received, by method ([`crate::sip::Method::index`]).
    pub requests_by_method: [u64; crate::sip::Method::COUNT],
    /// Responses received, by class: 1xx at 0 … 6xx at 5.
    pub responses_by_class: [u64; 6],
    /// Responses the edge wrote itself (100 Trying, challenges, refusals,
    /// registrar and presence answers, 408/487/500 for a transaction), by
    /// class: 1xx at 0 … 6xx at 5.
    pub local_responses_by_class: [u64; 6],
    /// Bindings this shard's registrar partition holds (a gauge).
    pub bindings: u64,
    /// Timers on this shard's registrar wheel: binding expiries and AoR
    /// retention (a gauge: about one per binding, never per REGISTER).
    pub registrar_timers: u64,
    /// Subscriptions this shard's presence partition holds (a gauge).
    pub subscriptions: u64,
    /// The authenticator's own counters (a copy, taken each turn).
    pub auth: crate::auth::AuthCounters,
}

impl Counters {
    /// The authenticator's counters not already among [`Counters::pairs`].
    pub fn auth_pairs(&self) -> [(&'static str, u64); 5] {
        [
            ("sipedge_auth_authenticated_total", self.auth.authenticated),
            ("sipedge_auth_failures_total", self.auth.failures),
            ("sipedge_auth_forbidden_total", self.auth.forbidden),
            ("sipedge_auth_replays_total", self.auth.replays),
            ("sipedge_auth_stale_total", self.auth.stale),
        ]
    }

    /// Counts a request (or a response between shards) shed for `reason`.
    #[inline]
    pub fn shed(&mut self, reason: crate::policy::overload::ShedReason) {
        self.overload += 1;
        if let Some(c) = self.shed_by_reason.get_mut(reason as usize) {
            *c += 1;
        }
    }

    /// Counts a request of `method` received.
    #[inline]
    pub fn count_request(&mut self, method: crate::sip::Method) {
        self.requests += 1;
        if let Some(c) = self.requests_by_method.get_mut(method.index()) {
            *c += 1;
        }
    }

    /// Counts a final response of `status` the edge wrote itself
    /// (`responses_local`, and its class).
    #[inline]
    pub fn count_local_response(&mut self, status: u16) {
        self.responses_local += 1;
        self.count_local_class(status);
    }

    /// Counts the class of a response the edge wrote itself, alone (a 100
    /// Trying, which `responses_local` leaves out).
    #[inline]
    pub fn count_local_class(&mut self, status: u16) {
        let class = usize::from(status / 100).wrapping_sub(1);
        if let Some(c) = self.local_responses_by_class.get_mut(class) {
            *c += 1;
        }
    }

    /// Counts a response of `status` received.
    #[inline]
    pub fn count_response(&mut self, status: Option<u16>) {
        self.responses += 1;
        let class = usize::from(status.unwrap_or(0) / 100).wrapping_sub(1);
        if let Some(c) = self.responses_by_class.get_mut(class) {
            *c += 1;
        }
    }
}

impl Counters {
    /// Adds `other` into `self` (scrape-time summing across shards).
    pub fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.responses += other.responses;
        self.requests_forwarded += other.requests_forwarded;
        self.responses_forwarded += other.responses_forwarded;
        self.responses_local += other.responses_local;
        self.parse_errors += other.parse_errors;
        self.dropped_malformed += other.dropped_malformed;
        self.dropped_not_ours += other.dropped_not_ours;
        self.dropped_unroutable += other.dropped_unroutable;
        self.dropped_overflow += other.dropped_overflow;
        self.keepalives += other.keepalives;
        self.too_many_hops += other.too_many_hops;
        self.loops += other.loops;
        self.overload += other.overload;
        self.transactions += other.transactions;
        self.retransmissions_absorbed += other.retransmissions_absorbed;
        self.retransmissions_sent += other.retransmissions_sent;
        self.acks_absorbed += other.acks_absorbed;
        self.cancels += other.cancels;
        self.handed_over += other.handed_over;
        self.handed_in += other.handed_in;
        self.responses_handed_over += other.responses_handed_over;
        self.responses_handed_in += other.responses_handed_in;
        self.store_failures += other.store_failures;
        self.resyncs += other.resyncs;
        self.flood_dropped += other.flood_dropped;
        self.auth_challenges += other.auth_challenges;
        self.auth_throttled += other.auth_throttled;
        self.policy_denied += other.policy_denied;
        self.transport_fallbacks += other.transport_fallbacks;
        self.transport_upgrades += other.transport_upgrades;
        self.requests_originated += other.requests_originated;
        self.dispatcher_unavailable += other.dispatcher_unavailable;
        self.dispatcher_failovers += other.dispatcher_failovers;
        self.presence.add(&other.presence);
        self.transactions_live += other.transactions_live;
        self.timers_live += other.timers_live;
        for (a, b) in self
            .requests_by_method
            .iter_mut()
            .zip(other.requests_by_method)
        {
            *a += b;
        }
        for (a, b) in self
            .responses_by_class
            .iter_mut()
            .zip(other.responses_by_class)
        {
            *a += b;
        }
        for (a, b) in self
            .local_responses_by_class
            .iter_mut()
            .zip(other.local_responses_by_class)
        {
            *a += b;
        }
        for (a, b) in self.shed_by_reason.iter_mut().zip(other.shed_by_reason) {
            *a += b;
        }
        self.bindings += other.bindings;
        self.registrar_timers += other.registrar_timers;
        self.subscriptions += other.subscriptions;
        self.auth.add(&other.auth);
    }

    /// (metric name, value) pairs, for export.
    pub fn pairs(&self) -> [(&'static str, u64); 34] {
        [
            ("sipedge_proxy_requests_total", self.requests),
            ("sipedge_proxy_responses_total", self.responses),
            (
                "sipedge_proxy_requests_forwarded_total",
                self.requests_forwarded,
            ),
            (
                "sipedge_proxy_responses_forwarded_total",
                self.responses_forwarded,
            ),
            ("sipedge_proxy_responses_local_total", self.responses_local),
            ("sipedge_proxy_parse_errors_total", self.parse_errors),
            (
                "sipedge_proxy_dropped_malformed_total",
                self.dropped_malformed,
            ),
            (
                "sipedge_proxy_dropped_not_ours_total",
                self.dropped_not_ours,
            ),
            (
                "sipedge_proxy_dropped_unroutable_total",
                self.dropped_unroutable,
            ),
            (
                "sipedge_proxy_dropped_overflow_total",
                self.dropped_overflow,
            ),
            ("sipedge_proxy_keepalives_total", self.keepalives),
            ("sipedge_proxy_too_many_hops_total", self.too_many_hops),
            ("sipedge_proxy_loops_total", self.loops),
            ("sipedge_proxy_overload_total", self.overload),
            ("sipedge_txn_transactions_total", self.transactions),
            (
                "sipedge_txn_retransmissions_absorbed_total",
                self.retransmissions_absorbed,
            ),
            (
                "sipedge_txn_retransmissions_sent_total",
                self.retransmissions_sent,
            ),
            ("sipedge_txn_acks_absorbed_total", self.acks_absorbed),
            ("sipedge_proxy_cancels_total", self.cancels),
            ("sipedge_registrar_handed_over_total", self.handed_over),
            ("sipedge_registrar_handed_in_total", self.handed_in),
            (
                "sipedge_proxy_responses_handed_over_total",
                self.responses_handed_over,
            ),
            (
                "sipedge_proxy_responses_handed_in_total",
                self.responses_handed_in,
            ),
            (
                "sipedge_registrar_store_failures_total",
                self.store_failures,
            ),
            ("sipedge_location_resyncs_total", self.resyncs),
            ("sipedge_flood_dropped_total", self.flood_dropped),
            ("sipedge_auth_challenges_total", self.auth_challenges),
            ("sipedge_auth_throttled_total", self.auth_throttled),
            ("sipedge_policy_denied_total", self.policy_denied),
            (
                "sipedge_proxy_transport_fallbacks_total",
                self.transport_fallbacks,
            ),
            (
                "sipedge_proxy_transport_upgrades_total",
                self.transport_upgrades,
            ),
            (
                "sipedge_proxy_requests_originated_total",
                self.requests_originated,
            ),
            (
                "sipedge_dispatcher_unavailable_total",
                self.dispatcher_unavailable,
            ),
            (
                "sipedge_dispatcher_failovers_total",
                self.dispatcher_failovers,
            ),
        ]
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// One public socket on 127.0.0.1:5060 and a shard socket on :5070, serving `example.test`.
    pub(crate) fn identity() -> Identity {
        Identity {
            shard_id: 1,
            sockets: vec![
                LocalSocket::new("127.0.0.1:5060".parse().unwrap(), SocketRole::Public),
                LocalSocket::new("127.0.0.1:5070".parse().unwrap(), SocketRole::Shard),
            ],
            domains: vec![b"example.test".to_vec().into_boxed_slice()],
            secret: 0x5eed,
            siblings: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::identity;
    use super::*;

    #[test]
    fn knows_its_addresses_and_domains() {
        let id = identity();
        let us = |s: &str| id.is_us(&Uri::parse(s.as_bytes()).unwrap());
        assert!(us("sip:127.0.0.1:5060;lr"));
        assert!(us("sip:127.0.0.1:5070"));
        assert!(us("sip:127.0.0.1"), "no port means 5060");
        assert!(!us("sip:127.0.0.1:5080"));
        assert!(us("sip:example.test;lr"));
        assert!(us("sip:EXAMPLE.test."));
        assert!(!us("sip:alice@example.test"));
        assert!(!us("sip:other.test"));
        assert_eq!(
            id.egress_for("127.0.0.1:9".parse().unwrap(), SocketId(0)),
            SocketId(1)
        );
        let mut by_ip = identity();
        by_ip.domains.push(b"192.0.2.1".to_vec().into_boxed_slice());
        by_ip
            .domains
            .push(b"[2001:db8::1]".to_vec().into_boxed_slice());
        let served = |s: &str| by_ip.is_served_domain(&Uri::parse(s.as_bytes()).unwrap().host);
        assert!(served("sip:a@192.0.2.1"));
        assert!(served("sip:a@[2001:DB8::1]"));
        assert!(!served("sip:a@192.0.2.2"));
        let served_uri = |s: &str| by_ip.is_served_uri(&Uri::parse(s.as_bytes()).unwrap());
        assert!(served_uri("sip:a@192.0.2.1:5060"));
        assert!(
            !served_uri("sip:192.0.2.1:5080"),
            "a UA at our domain's address"
        );
        assert!(
            served_uri("sip:a@example.test:5080"),
            "names match whatever the port"
        );
        assert!(!identity().is_served_domain(&Uri::parse(b"sip:a@192.0.2.1").unwrap().host));
        assert_eq!(id.sockets[0].rr_uri(), b"sip:127.0.0.1:5060;lr");
        let v6 = LocalSocket::new("[::1]:5060".parse().unwrap(), SocketRole::Public);
        assert_eq!(v6.via_host(), b"[::1]");
        assert_eq!(v6.rr_uri(), b"sip:[::1]:5060;lr");
    }
}
