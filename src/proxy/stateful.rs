//! The transaction-stateful proxy (RFC 3261 §16), the default mode.
//!
//! Every request that is not an ACK or a CANCEL opens a server transaction
//! and one client transaction per target (a fork); the response context
//! picks the best final response (§16.7) and forwards every 2xx.
//!
//! ```text
//!  request ─► retransmission of a live one? ─ yes ─► replay the last response (§17.2)
//!     │ no
//!     ├─ §16.3: Max-Forwards 0 → 483 · loop → 482 · Proxy-Require → 420 · OPTIONS to us → 200
//!     ├─ REGISTER for a served domain ─► registrar hook
//!     ├─ targets (§16.5): first Route left │ served domain → location (404 / 480 / contacts)
//!     │                   │ the Request-URI's address │ the upstream
//!     ├─ table full → 503 Retry-After
//!     └─ server txn (INVITE: 100 Trying) + a client txn per target, forwarded (§16.6)
//!  response ─► our transaction branch? ─ no ─► stateless relay (§16.7: no context)
//!     │ yes: client txn (ACK of non-2xx is built here)
//!     ├─ 1xx (not 100): forward; Timer C; a wanted CANCEL goes now
//!     ├─ 2xx: forward at once (all of them); CANCEL the other forks
//!     └─ 3xx–6xx: keep the best (6xx first, then the lowest class); 6xx cancels the
//!        others; when every fork is final: send the best (503 → 500; none → 408)
//!  CANCEL ─► its INVITE's context? ─ yes: 200, then CANCEL each pending fork (§16.10)
//!                                 └ no: stateless relay
//!  ACK    ─► its INVITE's server txn (non-2xx): absorbed · else (2xx): stateless relay
//! ```
//!
//! Memory: a transaction keeps the request and each forwarded copy only
//! while something may need them (retransmission, ACK, CANCEL, a local
//! final response); once final, it shrinks to its state and the response it
//! may have to replay. The table is bounded ([`Config::max_transactions`]).

use core::net::SocketAddr;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use std::collections::VecDeque;
use std::sync::Arc;

use crate::location::{PartitionState, Record};
use crate::sip::{
    self, emit, Edits, HeaderIndex, HeaderName, MaxForwardsEdit, Message, Method, NewVia,
    ParseConfig, Received, ResponseSpec, Via,
};
use crate::time::Instant;
use crate::transport::{FlowId, Outbox, Peer, SocketId, Transport};
use crate::txn::key::{server_key, KeyMethod};
use crate::txn::{
    Action, Arm, InviteClient, InviteClientState, InviteServer, InviteServerState, NonInviteClient,
    NonInviteClientState, NonInviteServer, NonInviteServerState, TimerConfig, TimerName,
};
use crate::wheel::Wheel;

use super::branch::{self, Branch, TxnRef};
use super::guard::Guard;
use super::{flow, reject, route, stateless, Counters, Identity, Service};

/// A placeholder remote for a send down a flow whose peer has no address
/// we know (a browser's `.invalid` contact): the flow names the connection.
const UNSPECIFIED: SocketAddr =
    SocketAddr::new(core::net::IpAddr::V4(core::net::Ipv4Addr::UNSPECIFIED), 0);
use crate::auth::gate::{gate, Gate, CHALLENGE_BUF};
use crate::policy::overload::{Admission, Load};

/// Settings of the stateful proxy.
#[derive(Debug, Clone)]
pub struct Config {
    /// Next hop for requests not for a served domain that name no address.
    pub upstream: Option<SocketAddr>,
    /// Record-Route dialog-creating requests (on by default).
    pub record_route: bool,
    /// T1, T2, T4 and Timer C.
    pub timers: TimerConfig,
    /// Most live transactions per shard; beyond it, 503.
    pub max_transactions: usize,
    /// Most forks of one request.
    pub max_forks: usize,
    /// Retry-After of the 503 sent when the table is full, in seconds.
    pub retry_after: u32,
    /// Parser limits.
    pub parse: ParseConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            upstream: None,
            record_route: true,
            timers: TimerConfig::default(),
            max_transactions: 1 << 20,
            max_forks: 16,
            retry_after: 5,
            parse: ParseConfig::default(),
        }
    }
}

/// What a location lookup found for an address-of-record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// No such user: 404.
    Unknown,
    /// A user we know, with no live binding: 480.
    NoBindings,
    /// Live bindings, pushed into the [`Targets`].
    Contacts,
}

/// The location service as the proxy sees it: each shard's replica, fed by
/// the partition owners' change records.
pub trait Location {
    /// Looks up `aor` (`user@domain`, domain lower-case) at wall-clock
    /// `wall_us`, pushing each live contact into `out` (highest q first).
    fn lookup(&self, aor: &[u8], wall_us: u64, out: &mut Targets) -> Found;

    /// Applies one change record; `Err(partition)` when records of that
    /// partition were missed and its state must be installed again.
    fn apply(&mut self, record: &Record) -> Result<(), u16> {
        let _ = record;
        Ok(())
    }

    /// Replaces one partition's state (after a gap).
    fn install(&mut self, state: &PartitionState) {
        let _ = state;
    }
}

/// A registrar answer held until its records are durable: (slot, gen, status, bytes).
type Held = (u32, u32, u16, Box<[u8]>);

/// A location service that knows nobody (stateful proxying without a registrar).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLocation;

impl Location for NoLocation {
    fn lookup(&self, _aor: &[u8], _wall_us: u64, _out: &mut Targets) -> Found {
        Found::Unknown
    }
}

/// Who handles a REGISTER for a served domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// This shard's registrar.
    Here,
    /// The registrar of another shard: hand the request over.
    Shard(u16),
    /// Nobody: proxy it like any request.
    Nobody,
}

/// The registrar side of a shard: its partition of the bindings.
pub trait Registry {
    /// Which shard's registrar owns the AoR of REGISTER `msg`.
    fn owner(&self, msg: &Message<'_>) -> Owner;

    /// Handles a REGISTER this shard owns, writing the whole response into
    /// `reply`; returns (length, status), `None` if it wrote nothing.
    #[allow(clippy::too_many_arguments)]
    fn handle_register(
        &mut self,
        now: Instant,
        wall_us: u64,
        msg: &Message<'_>,
        src: &Peer,
        reply: &mut [u8],
    ) -> Option<(usize, u16)>;

    /// Moves the change records made since the last call into `out`.
    fn drain_records(&mut self, out: &mut Vec<Record>) {
        let _ = out;
    }

    /// Binding expiries.
    fn handle_timeout(&mut self, now: Instant, wall_us: u64) {
        let _ = (now, wall_us);
    }

    /// When [`Registry::handle_timeout`] has something to do.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// This registrar's whole partition (for compaction and replica resync).
    fn state(&self) -> Option<PartitionState> {
        None
    }
}

/// No registrar: REGISTERs are proxied like other requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRegistry;

impl Registry for NoRegistry {
    fn owner(&self, _: &Message<'_>) -> Owner {
        Owner::Nobody
    }

    fn handle_register(
        &mut self,
        _: Instant,
        _: u64,
        _: &Message<'_>,
        _: &Peer,
        _: &mut [u8],
    ) -> Option<(usize, u16)> {
        None
    }
}

/// What shards send each other (see [`crate::shard::mesh`]).
#[derive(Debug, Clone)]
pub enum MeshMsg {
    /// A request for a partition the receiver owns, or a response to a
    /// client transaction the receiver owns (it came in on a connection of
    /// the sender's), as it reached the sender.
    Message {
        /// The message.
        bytes: Box<[u8]>,
        /// Where it came from (socket ids are the same on every shard).
        src: Peer,
    },
    /// A message to send on a connection the receiver owns (the sender
    /// found its flow in a binding or a flow token).
    Transmit {
        /// Where it goes.
        peer: Peer,
        /// The bytes.
        bytes: Box<[u8]>,
    },
    /// Change records a partition owner committed, in order.
    Feed(Arc<[Record]>),
    /// A replica missed records of `partition`: its owner sends its state to shard `to`.
    Resync {
        /// The partition.
        partition: u16,
        /// The shard that needs it.
        to: u16,
    },
    /// A partition's whole state, for a replica that missed records.
    State(Arc<PartitionState>),
}

/// One target of a request (§16.5): where to send it and with which Request-URI.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// The new Request-URI (a contact), empty to keep the request's.
    pub uri: Vec<u8>,
    /// Route values to pre-load (from a Path), comma-separated, empty for none.
    pub route: Vec<u8>,
    /// Where to send it (the contact's source address, for NATed UAs), if known.
    pub dest: Option<SocketAddr>,
    /// q value in thousandths.
    pub q: u16,
    /// The transport to send over (from the URI; for a registered
    /// contact, that of `socket`).
    pub transport: Transport,
    /// The listener a registered contact's REGISTER arrived on.
    pub socket: Option<SocketId>,
    /// The connection a registered contact is reached over (RFC 5626).
    pub flow: FlowId,
}

/// A reusable list of targets (its buffers keep their capacity).
#[derive(Debug, Default)]
pub struct Targets {
    items: Vec<Target>,
    len: usize,
}

impl Targets {
    /// Forgets the targets, keeping the buffers.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Adds a target.
    pub fn push(&mut self, uri: &[u8], route: &[u8], dest: Option<SocketAddr>, q: u16) {
        self.push_over(uri, route, dest, q, Transport::Udp, None, FlowId::NONE);
    }

    /// Adds a target reached over `transport` (a registered contact: the
    /// listener its REGISTER came in on and its connection).
    #[allow(clippy::too_many_arguments)]
    pub fn push_over(
        &mut self,
        uri: &[u8],
        route: &[u8],
        dest: Option<SocketAddr>,
        q: u16,
        transport: Transport,
        socket: Option<SocketId>,
        flow: FlowId,
    ) {
        if self.items.len() <= self.len {
            self.items.push(Target::default());
        }
        if let Some(t) = self.items.get_mut(self.len) {
            t.uri.clear();
            t.uri.extend_from_slice(uri);
            t.route.clear();
            t.route.extend_from_slice(route);
            t.dest = dest;
            t.q = q;
            t.transport = transport;
            t.socket = socket;
            t.flow = flow;
            self.len += 1;
        }
    }

    /// The targets.
    pub fn as_slice(&self) -> &[Target] {
        self.items.get(..self.len).unwrap_or_default()
    }

    /// Number of targets.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[derive(Debug, Clone)]
enum Server {
    Invite(InviteServer),
    NonInvite(NonInviteServer),
}

impl Server {
    fn terminated(&self) -> bool {
        match self {
            Self::Invite(s) => s.state() == InviteServerState::Terminated,
            Self::NonInvite(s) => s.state() == NonInviteServerState::Terminated,
        }
    }

    fn can_send(&self, code: u16) -> bool {
        match self {
            Self::Invite(s) => s.can_send(code),
            Self::NonInvite(s) => s.can_send(),
        }
    }

    fn on_send(&mut self, now: Instant, code: u16) -> Arm {
        match self {
            Self::Invite(s) => s.on_send(now, code),
            Self::NonInvite(s) => s.on_send(now, code),
        }
    }
}

#[derive(Debug, Clone)]
enum Client {
    Invite(InviteClient),
    NonInvite(NonInviteClient),
}

impl Client {
    fn terminated(&self) -> bool {
        match self {
            Self::Invite(c) => c.state() == InviteClientState::Terminated,
            Self::NonInvite(c) => c.state() == NonInviteClientState::Terminated,
        }
    }

    fn on_response(&mut self, now: Instant, code: u16) -> (Action, Arm) {
        match self {
            Self::Invite(c) => c.on_response(now, code),
            Self::NonInvite(c) => c.on_response(now, code),
        }
    }

    fn on_timer(&mut self, now: Instant, name: TimerName, at: Instant) -> (Action, Arm) {
        match self {
            Self::Invite(c) => c.on_timer(now, name, at),
            Self::NonInvite(c) => c.on_timer(now, name, at),
        }
    }

    fn terminate(&mut self) {
        match self {
            Self::Invite(c) => c.terminate(),
            Self::NonInvite(c) => c.terminate(),
        }
    }
}

/// One fork: a client transaction and what it needs.
#[derive(Debug)]
struct Fork {
    client: Client,
    /// The forwarded request while it may be retransmitted or cancelled; then
    /// the ACK of its non-2xx final response, for retransmitted finals.
    bytes: Option<Box<[u8]>>,
    to: Peer,
    final_code: Option<u16>,
    provisional: bool,
    cancel_wanted: bool,
    /// Boxed: most forks never send a CANCEL, and every fork of a
    /// transaction lingers 32 s after the call is set up.
    cancel: Option<Box<(NonInviteClient, Box<[u8]>)>>,
    timer_c: Option<Instant>,
}

/// A response context (§16): the server transaction and its forks.
#[derive(Debug)]
struct Txn {
    gen: u32,
    key: u64,
    method: Method,
    server: Server,
    /// The request as received, until a final response has been sent.
    request: Option<Box<[u8]>>,
    src: Peer,
    reply_to: Peer,
    /// The last response sent upstream, replayed on retransmissions.
    last_response: Option<Box<[u8]>>,
    forks: Vec<Fork>,
    /// The best final response so far (§16.7 step 6), ready to send upstream.
    best: Option<(u16, Box<[u8]>)>,
    final_sent: bool,
    cancelled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerTarget {
    Server,
    Fork(u8),
    Cancel(u8),
}

#[derive(Debug, Clone, Copy)]
struct TimerItem {
    slot: u32,
    gen: u32,
    target: TimerTarget,
    name: TimerName,
    at: Instant,
}

/// Identity hasher for keys that already are keyed hashes.
#[derive(Debug, Default, Clone, Copy)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

const SCRATCH: usize = crate::transport::MAX_DATAGRAM;

/// The stateful proxy of one shard.
pub struct Stateful<L: Location = NoLocation, R: Registry = NoRegistry> {
    id: Identity,
    cfg: Config,
    relay: stateless::Config,
    index: Option<HeaderIndex>,
    index2: Option<HeaderIndex>,
    counters: Counters,
    txns: Vec<Option<Txn>>,
    gens: Vec<u32>,
    free: Vec<u32>,
    live: usize,
    by_key: HashMap<u64, u32, BuildHasherDefault<KeyHasher>>,
    wheel: Wheel<TimerItem>,
    fired: Vec<TimerItem>,
    targets: Targets,
    scratch: Vec<u8>,
    /// Where the location service lives.
    pub location: L,
    /// Where REGISTERs for served domains go.
    pub registry: R,
    wall_us: u64,
    /// Number of shards (= partitions).
    shards: u16,
    /// Registrar answers of this turn, waiting for their records to be durable.
    held: Vec<Held>,
    /// Batches handed to the shard to persist and not yet completed, oldest
    /// first: each turn's held answers with that turn's records.
    persisting: VecDeque<(Vec<Held>, Vec<Record>)>,
    /// Messages for other shards.
    mesh_out: VecDeque<(usize, MeshMsg)>,
    /// Replication lag of the records applied from other shards, µs.
    lag: hdrhistogram::Histogram<u64>,
    /// Policy, authentication, flood and overload checks.
    pub guard: Guard,
}

/// A histogram of µs from 1 µs to 60 s at 2 significant digits.
#[allow(clippy::expect_used)]
fn lag_histogram() -> hdrhistogram::Histogram<u64> {
    // INVARIANT: constant bounds that hdrhistogram accepts (low ≥ 1, high ≥ 2·low, sigfig ≤ 5).
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds")
}

/// Most mesh messages queued for sending before handing over fails with 503.
const MESH_OUT_MAX: usize = 65_536;

impl<L: Location, R: Registry> Stateful<L, R> {
    /// A stateful proxy for the shard `id`.
    pub fn new(id: Identity, cfg: Config, location: L, registry: R) -> Self {
        let relay = stateless::Config {
            upstream: cfg.upstream,
            record_route: false,
            parse: cfg.parse.clone(),
        };
        Self {
            index: Some(HeaderIndex::new(cfg.parse.clone())),
            index2: Some(HeaderIndex::new(cfg.parse.clone())),
            id,
            relay,
            counters: Counters::default(),
            txns: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            live: 0,
            by_key: HashMap::default(),
            wheel: Wheel::new(Instant::ZERO),
            fired: Vec::new(),
            targets: Targets::default(),
            scratch: vec![0u8; SCRATCH],
            location,
            registry,
            wall_us: 0,
            shards: 1,
            held: Vec::new(),
            persisting: VecDeque::new(),
            mesh_out: VecDeque::new(),
            lag: lag_histogram(),
            guard: Guard::open(),
            cfg,
        }
    }

    /// Sets the checks (policy, authentication, flood, overload).
    pub fn with_guard(mut self, guard: Guard) -> Self {
        self.guard = guard;
        self
    }

    /// Sets the number of shards (partitions) the feed goes to.
    pub fn with_shards(mut self, shards: u16) -> Self {
        self.shards = shards.max(1);
        self
    }

    /// Replication lag of applied feed records (µs).
    pub fn lag(&self) -> &hdrhistogram::Histogram<u64> {
        &self.lag
    }

    /// Live transactions.
    pub fn live_transactions(&self) -> usize {
        self.live
    }

    /// Who this proxy is.
    pub fn identity(&self) -> &Identity {
        &self.id
    }

    fn arm(&mut self, slot: u32, gen: u32, target: TimerTarget, arm: Arm) {
        for (name, at) in arm.iter() {
            self.wheel.insert(
                at,
                TimerItem {
                    slot,
                    gen,
                    target,
                    name,
                    at,
                },
            );
        }
    }

    fn on_request(&mut self, now: Instant, msg: &Message<'_>, src: Peer, out: &mut Outbox) {
        let ess = match msg.essentials() {
            Ok(e) => e,
            Err(e) => {
                self.counters.parse_errors += 1;
                self.reply(msg, src, e.status(), e.reason(), b"", out);
                return;
            }
        };
        let via = ess.top_via;
        match msg.method() {
            Method::Ack => return self.on_ack(now, msg, &via, src, out),
            Method::Cancel => return self.on_cancel(now, msg, &via, src, out),
            _ => {}
        }
        let key = server_key(self.id.secret, msg, &via, KeyMethod::of(msg.method()));
        if let Some(&slot) = self.by_key.get(&key) {
            self.on_retransmission(slot, out);
            return;
        }
        let Some(uri) = ess.uri else { return };

        // §16.3 request validation, and OPTIONS to us (§11).
        let has_route = msg.values(HeaderName::Route).next().is_some();
        if msg.method() == Method::Options
            && uri.user.is_none()
            && self.id.is_us(&uri)
            && !has_route
        {
            self.reply(msg, src, 200, "OK", OPTIONS_EXTRA, out);
            return;
        }
        if ess.max_forwards == Some(0) {
            self.counters.too_many_hops += 1;
            self.reply(msg, src, 483, "Too Many Hops", b"", out);
            return;
        }
        if branch::is_loop(&self.id, msg) {
            self.counters.loops += 1;
            self.reply(msg, src, 482, "Loop Detected", b"", out);
            return;
        }
        if let Some(pr) = msg.header(HeaderName::ProxyRequire) {
            let mut extra = [0u8; 512];
            let mut w = sip::Writer::new(&mut extra);
            let ok = w.put(b"Unsupported: ").is_ok() && w.put(pr).is_ok() && w.put(b"\r\n").is_ok();
            let n = if ok { w.len() } else { 0 };
            self.reply(
                msg,
                src,
                420,
                "Bad Extension",
                extra.get(..n).unwrap_or_default(),
                out,
            );
            return;
        }
        let to_tag = ess.to.tag().is_some();
        // New work: overload admission, then (below) policy and authentication.
        if let Some(o) = &mut self.guard.overload {
            if let Admission::Reject { retry_after } = o.admit(now, msg.method(), to_tag) {
                self.counters.overload += 1;
                let mut extra = [0u8; 40];
                let mut w = sip::Writer::new(&mut extra);
                let ok = w.put(b"Retry-After: ").is_ok()
                    && w.put_u64(u64::from(retry_after)).is_ok()
                    && w.put(b"\r\n").is_ok();
                let n = if ok { w.len() } else { 0 };
                let extra = extra.get(..n).unwrap_or_default();
                self.reply(msg, src, 503, "Service Unavailable", extra, out);
                return;
            }
        }
        let register =
            msg.method() == Method::Register && self.is_for_registrar(msg, &uri, &ess.to);
        let owner = if register {
            self.registry.owner(msg)
        } else {
            Owner::Nobody
        };
        // The owner of a REGISTER's AoR authenticates it (its nonces, its throttles).
        let mut authenticated = false;
        if !matches!(owner, Owner::Shard(_)) {
            match self.gate(now, msg, src, out) {
                Some(a) => authenticated = a,
                None => return,
            }
        }
        if register {
            match owner {
                Owner::Here => return self.register_here(now, msg, key, &via, src, out),
                Owner::Shard(to) => {
                    let m = MeshMsg::Message {
                        bytes: msg.as_bytes().into(),
                        src,
                    };
                    if self.mesh_out.len() < MESH_OUT_MAX {
                        self.mesh_out.push_back((usize::from(to), m));
                        self.counters.handed_over += 1;
                    } else {
                        self.counters.overload += 1;
                        self.reply(
                            msg,
                            src,
                            503,
                            "Service Unavailable",
                            b"Retry-After: 1\r\n",
                            out,
                        );
                    }
                    return;
                }
                Owner::Nobody => {}
            }
        }

        // Targets (§16.5).
        let Ok(routing) = route::routing(&self.id, msg) else {
            self.reply(msg, src, 400, "Bad Request (Malformed Route)", b"", out);
            return;
        };
        // After a strict-route fix-up the Request-URI is the one the Route set carried.
        let uri = match routing.request_uri.map(sip::Uri::parse) {
            Some(Ok(u)) => u,
            Some(Err(_)) | None => uri,
        };
        self.targets.clear();
        // RFC 5626 §5.3: a flow token of ours in the Route set sends the
        // request down that flow, unless it came from there.
        let token = routing
            .flows
            .iter()
            .find(|(f, _)| !f.is_none() && *f != src.flow)
            .copied();
        if let Some((flow, transport)) = token {
            let dest = route::uri_addr(&uri).unwrap_or(UNSPECIFIED);
            self.targets
                .push_over(b"", b"", Some(dest), 1000, transport, None, flow);
        } else if let Some(r) = &routing.next_route {
            match route::uri_addr(r) {
                Some(d) => self.targets.push_over(
                    b"",
                    b"",
                    Some(d),
                    1000,
                    route::uri_transport(r),
                    None,
                    FlowId::NONE,
                ),
                None if self.cfg.upstream.is_some() => {
                    self.targets.push(b"", b"", self.cfg.upstream, 1000)
                }
                None => {
                    self.counters.dropped_unroutable += 1;
                    self.reply(
                        msg,
                        src,
                        480,
                        "Temporarily Unavailable (No Route)",
                        b"",
                        out,
                    );
                    return;
                }
            }
        } else if self.id.is_served_uri(&uri) && uri.user.is_some() {
            let mut aor = [0u8; 512];
            let Some(aor) = aor_key(&uri, &mut aor) else {
                self.reply(msg, src, 404, "Not Found", b"", out);
                return;
            };
            match self.location.lookup(aor, self.wall_us, &mut self.targets) {
                Found::Unknown => {
                    self.reply(msg, src, 404, "Not Found", b"", out);
                    return;
                }
                // With authentication on, an unauthenticated caller learns
                // nothing about which users exist: offline and unknown look alike.
                Found::NoBindings if self.guard.auth.is_some() && !authenticated => {
                    self.reply(msg, src, 404, "Not Found", b"", out);
                    return;
                }
                Found::NoBindings => {
                    self.reply(msg, src, 480, "Temporarily Unavailable", b"", out);
                    return;
                }
                Found::Contacts => {}
            }
        } else {
            let (dest, transport) = if self.id.is_us(&uri) || self.id.is_served_uri(&uri) {
                (self.cfg.upstream, Transport::Udp)
            } else {
                match route::uri_addr(&uri) {
                    Some(a) => (Some(a), route::uri_transport(&uri)),
                    None => (self.cfg.upstream, Transport::Udp),
                }
            };
            match dest {
                Some(d) => {
                    self.targets
                        .push_over(b"", b"", Some(d), 1000, transport, None, FlowId::NONE)
                }
                None => {
                    self.counters.dropped_unroutable += 1;
                    let (code, reason) = if self.id.is_us(&uri) {
                        (404, "Not Found")
                    } else {
                        (480, "Temporarily Unavailable (No Route)")
                    };
                    self.reply(msg, src, code, reason, b"", out);
                    return;
                }
            }
        }
        if self.targets.is_empty() {
            self.reply(msg, src, 480, "Temporarily Unavailable", b"", out);
            return;
        }
        if self.live >= self.cfg.max_transactions {
            self.counters.overload += 1;
            let mut extra = [0u8; 40];
            let mut w = sip::Writer::new(&mut extra);
            let ok = w.put(b"Retry-After: ").is_ok()
                && w.put_u64(u64::from(self.cfg.retry_after)).is_ok()
                && w.put(b"\r\n").is_ok();
            let n = if ok { w.len() } else { 0 };
            self.reply(
                msg,
                src,
                503,
                "Service Unavailable",
                extra.get(..n).unwrap_or_default(),
                out,
            );
            return;
        }

        // A new response context.
        let invite = msg.method() == Method::Invite;
        let reply_to = route::reply_peer(&via, &src);
        let (slot, gen) = self.alloc();
        let mut txn = Txn {
            gen,
            key,
            method: msg.method(),
            server: if invite {
                Server::Invite(InviteServer::start(self.cfg.timers, false))
            } else {
                Server::NonInvite(NonInviteServer::start(self.cfg.timers, false))
            },
            request: Some(msg.as_bytes().into()),
            src,
            reply_to,
            last_response: None,
            forks: Vec::with_capacity(self.targets.len().min(self.cfg.max_forks)),
            best: None,
            final_sent: false,
            cancelled: false,
        };
        self.by_key.insert(key, slot);
        self.counters.transactions += 1;
        if invite {
            let spec = ResponseSpec {
                received: Some(Received {
                    ip: src.remote.ip(),
                    port: src.remote.port(),
                }),
                ..ResponseSpec::new(100, "Trying")
            };
            if let Ok(n) = sip::response(msg, &spec, &mut self.scratch) {
                let bytes: Box<[u8]> = self.scratch.get(..n).unwrap_or_default().into();
                self.send(out, reply_to, &bytes);
                txn.last_response = Some(bytes);
            }
        }
        let record_route = self.cfg.record_route
            && !to_tag
            && matches!(
                msg.method(),
                Method::Invite | Method::Subscribe | Method::Refer
            );
        let ingress = self.id.public_for(src.remote.ip(), src.local).cloned();
        let loop_hash = branch::loop_hash(self.id.secret, msg, &via);
        let received = emit::needs_received(&via, src.remote.ip()).then_some(Received {
            ip: src.remote.ip(),
            port: src.remote.port(),
        });
        let n_targets = self.targets.len().min(self.cfg.max_forks);
        for i in 0..n_targets {
            let Some(t) = self.targets.as_slice().get(i).cloned() else {
                break;
            };
            let Some(dest) = t.dest.or(self.cfg.upstream) else {
                continue;
            };
            let mut transport = t.socket.map_or(t.transport, |s| self.id.transport_of(s));
            if !self.id.serves(transport) {
                // No listener of that transport to name in our Via: the
                // best we can do is UDP (counted, as a carrier wants to see it).
                self.counters.transport_fallbacks += 1;
                transport = Transport::Udp;
            }
            let egress = self.id.egress(transport, dest, src.local);
            let Some(egress_sock) = self.id.socket(egress).cloned() else {
                continue;
            };
            let to = Peer {
                transport,
                remote: dest,
                local: egress,
                flow: t.flow,
            };
            // RFC 5658: where the transport changes, or a flow must be
            // named (RFC 5626 §5.3), Record-Route twice: the first value
            // faces the next hop, the second the previous one.
            let mut rr1 = [0u8; 256];
            let mut rr2 = [0u8; 256];
            let (rr, rr_in) = match &ingress {
                Some(ing) if record_route => {
                    if transport == Transport::Udp && src.transport == Transport::Udp {
                        (Some(ing.rr_uri()), None)
                    } else {
                        let out_sock = self
                            .id
                            .public_of(transport, dest.ip())
                            .unwrap_or(&egress_sock);
                        let a = flow::rr_uri(self.id.secret, out_sock, to.flow, &mut rr1);
                        let b = flow::rr_uri(self.id.secret, ing, src.flow, &mut rr2);
                        (Some(a), Some(b))
                    }
                }
                _ => (None, None),
            };
            let br = Branch::transaction(
                TxnRef {
                    shard: self.id.shard_id,
                    slot,
                    gen,
                    fork: i as u8,
                },
                loop_hash,
            );
            let mut route_line = [0u8; 1024];
            let route_len = if t.route.is_empty() {
                0
            } else {
                let mut w = sip::Writer::new(&mut route_line);
                let ok =
                    w.put(b"Route: ").is_ok() && w.put(&t.route).is_ok() && w.put(b"\r\n").is_ok();
                if ok {
                    w.len()
                } else {
                    0
                }
            };
            let mut strict_line = [0u8; 1024];
            let strict = routing
                .append_route
                .map_or(&b""[..], |u| route::route_line(u, &mut strict_line));
            let append_len = route_len + strict.len();
            if let Some(d) = route_line.get_mut(route_len..append_len) {
                d.copy_from_slice(strict);
            }
            let edits = Edits {
                request_uri: if t.uri.is_empty() {
                    routing.request_uri
                } else {
                    Some(t.uri.as_slice())
                },
                push_via: Some(NewVia {
                    transport: transport.via_token(),
                    host: egress_sock.via_host(),
                    port: egress_sock.advertised.port(),
                    branch: br.as_bytes(),
                    rport: true,
                }),
                received,
                max_forwards: MaxForwardsEdit::Decrement,
                record_route: rr,
                record_route2: rr_in,
                pop_route: routing.pop_route,
                pop_second_route: routing.pop_second_route,
                pop_last_route: routing.pop_last_route,
                append: route_line.get(..append_len).unwrap_or_default(),
                ..Edits::default()
            };
            let Ok(n) = sip::edit(msg, &edits, &mut self.scratch) else {
                self.counters.dropped_overflow += 1;
                continue;
            };
            let bytes: Box<[u8]> = self.scratch.get(..n).unwrap_or_default().into();
            self.send(out, to, &bytes);
            self.counters.requests_forwarded += 1;
            let (client, arm) = if invite {
                let (c, a) = InviteClient::start(now, self.cfg.timers, false);
                (Client::Invite(c), a)
            } else {
                let (c, a) = NonInviteClient::start(now, self.cfg.timers, false);
                (Client::NonInvite(c), a)
            };
            self.arm(slot, gen, TimerTarget::Fork(i as u8), arm);
            // §16.6 step 11: Timer C runs from the moment an INVITE is
            // proxied, not from its first provisional response, or a branch
            // that answers only 100 Trying (no Timer B once Proceeding) would
            // hold its context forever.
            let timer_c = invite.then(|| self.arm_timer_c(now, slot, gen, i));
            txn.forks.push(Fork {
                client,
                bytes: Some(bytes),
                to,
                final_code: None,
                provisional: false,
                cancel_wanted: false,
                cancel: None,
                timer_c,
            });
        }
        if txn.forks.is_empty() {
            // Every target failed to be written: answer for them.
            txn.best = None;
            self.put(slot, txn);
            self.finish(now, slot, out);
            return;
        }
        self.put(slot, txn);
    }

    /// True when REGISTER `msg` (Request-URI `uri`, To `to`) is for our
    /// registrar (§10.3): its Request-URI is a served domain, or this proxy
    /// itself for an AoR of a served domain (a phone configured with the
    /// edge's address as its registrar); and it is routed nowhere else. A
    /// Route that names only us (the edge is also the UA's outbound proxy)
    /// is ours to remove first (§16.4), not a reason to proxy the REGISTER:
    /// that sent pjsua2's REGISTERs (outbound proxy = registrar) to the
    /// upstream, which answered 404 without one (found by tests/interop.rs).
    fn is_for_registrar(
        &self,
        msg: &Message<'_>,
        uri: &sip::Uri<'_>,
        to: &sip::NameAddr<'_>,
    ) -> bool {
        let ours = self.id.is_served_uri(uri)
            || (self.id.is_us(uri) && to.uri().is_ok_and(|t| self.id.is_served_uri(&t)));
        ours && route::routing(&self.id, msg).is_ok_and(|r| r.next_route.is_none())
    }

    /// Arms Timer C of INVITE fork `i` at `now` + Timer C; returns its deadline.
    fn arm_timer_c(&mut self, now: Instant, slot: u32, gen: u32, i: usize) -> Instant {
        let c = now + self.cfg.timers.timer_c;
        self.wheel.insert(
            c,
            TimerItem {
                slot,
                gen,
                target: TimerTarget::Fork(i as u8),
                name: TimerName::C,
                at: c,
            },
        );
        c
    }

    /// A REGISTER for this shard's partition: a server transaction (so
    /// retransmissions are absorbed or answered again, never re-applied), the
    /// registrar's answer held until its records are durable.
    #[allow(clippy::too_many_arguments)]
    fn register_here(
        &mut self,
        _now: Instant,
        msg: &Message<'_>,
        key: u64,
        via: &Via<'_>,
        src: Peer,
        out: &mut Outbox,
    ) {
        if self.live >= self.cfg.max_transactions {
            self.counters.overload += 1;
            self.reply(
                msg,
                src,
                503,
                "Service Unavailable",
                b"Retry-After: 5\r\n",
                out,
            );
            return;
        }
        let Some((n, code)) =
            self.registry
                .handle_register(_now, self.wall_us, msg, &src, &mut self.scratch)
        else {
            self.counters.dropped_overflow += 1;
            return;
        };
        let (slot, gen) = self.alloc();
        self.by_key.insert(key, slot);
        self.counters.transactions += 1;
        let txn = Txn {
            gen,
            key,
            method: Method::Register,
            server: Server::NonInvite(NonInviteServer::start(self.cfg.timers, false)),
            request: Some(msg.as_bytes().into()),
            src,
            reply_to: route::reply_peer(via, &src),
            last_response: None,
            forks: Vec::new(),
            best: None,
            final_sent: false,
            cancelled: false,
        };
        self.put(slot, txn);
        self.held.push((
            slot,
            gen,
            code,
            self.scratch.get(..n).unwrap_or_default().into(),
        ));
    }

    /// The shard persisted (or failed to persist) the records it took with
    /// `poll_persist`: release the held registrar answers (500 on failure),
    /// apply the records here and send them to every other shard.
    fn release(&mut self, now: Instant, ok: bool, out: &mut Outbox) {
        // A batch cut by poll_persist; without one, this turn's answers.
        let (held, records) = self
            .persisting
            .pop_front()
            .unwrap_or_else(|| (core::mem::take(&mut self.held), Vec::new()));
        for (slot, gen, code, bytes) in held {
            if self.gens.get(slot as usize).copied() != Some(gen) {
                continue;
            }
            let Some(mut txn) = self.take(slot) else {
                continue;
            };
            let (bytes, code) = if ok {
                (Some(bytes), code)
            } else {
                self.counters.store_failures += 1;
                (self.local_final(&txn, 500), 500)
            };
            if let Some(b) = bytes {
                self.send(out, txn.reply_to, &b);
                self.counters.responses_local += 1;
                txn.last_response = Some(b);
            }
            txn.final_sent = true;
            txn.request = None;
            let arm = txn.server.on_send(now, code);
            self.arm(slot, gen, TimerTarget::Server, arm);
            self.put(slot, txn);
        }
        if ok && !records.is_empty() {
            let records: Arc<[Record]> = records.into();
            for r in records.iter() {
                if let Err(p) = self.location.apply(r) {
                    self.request_resync(p);
                }
            }
            for to in 0..usize::from(self.shards) {
                if to != usize::from(self.id.shard_id) {
                    self.mesh_out
                        .push_back((to, MeshMsg::Feed(records.clone())));
                }
            }
        }
    }

    fn request_resync(&mut self, partition: u16) {
        self.counters.resyncs += 1;
        self.mesh_out.push_back((
            usize::from(partition),
            MeshMsg::Resync {
                partition,
                to: self.id.shard_id,
            },
        ));
    }

    /// Policy and authentication of a new request. `Some(authenticated)`
    /// to go on; `None` when it was answered (403, 401/407) or dropped.
    fn gate(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        src: Peer,
        out: &mut Outbox,
    ) -> Option<bool> {
        let mut extra = [0u8; CHALLENGE_BUF];
        let g = gate(
            now,
            self.wall_us,
            &self.guard.policy,
            self.guard.auth.as_mut(),
            msg,
            src.remote,
            src.transport,
            &mut extra,
        );
        match g {
            Gate::Pass { user, .. } => Some(user.is_some()),
            Gate::Drop => {
                self.counters.auth_throttled += 1;
                None
            }
            Gate::Reply {
                status,
                reason,
                extra: n,
            } => {
                // The reason borrows the policy inside `self`: copy it to the stack.
                let mut rbuf = [0u8; 128];
                let len = reason.len().min(rbuf.len());
                if let (Some(d), Some(s)) = (rbuf.get_mut(..len), reason.as_bytes().get(..len)) {
                    d.copy_from_slice(s);
                }
                let reason = core::str::from_utf8(rbuf.get(..len).unwrap_or_default())
                    .unwrap_or("Forbidden");
                match status {
                    401 | 407 => self.counters.auth_challenges += 1,
                    _ => self.counters.policy_denied += 1,
                }
                self.reply(
                    msg,
                    src,
                    status,
                    reason,
                    extra.get(..n).unwrap_or_default(),
                    out,
                );
                None
            }
        }
    }

    fn on_retransmission(&mut self, slot: u32, out: &mut Outbox) {
        let Some(txn) = self.txns.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        self.counters.retransmissions_absorbed += 1;
        let action = match &mut txn.server {
            Server::Invite(s) => s.on_request(),
            Server::NonInvite(s) => s.on_request(),
        };
        if action == Action::RetransmitResponse {
            if let Some(r) = txn.last_response.clone() {
                let to = txn.reply_to;
                self.send(out, to, &r);
            }
        }
    }

    fn on_ack(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        via: &Via<'_>,
        src: Peer,
        out: &mut Outbox,
    ) {
        let key = server_key(self.id.secret, msg, via, KeyMethod::Invite);
        if let Some(&slot) = self.by_key.get(&key) {
            let gen = self.gens.get(slot as usize).copied().unwrap_or(0);
            let Some(txn) = self.txns.get_mut(slot as usize).and_then(Option::as_mut) else {
                return;
            };
            if let Server::Invite(s) = &mut txn.server {
                let (action, arm) = s.on_ack(now);
                self.arm(slot, gen, TimerTarget::Server, arm);
                if action != Action::PassRequest {
                    self.counters.acks_absorbed += 1;
                    self.maybe_free(slot);
                    return;
                }
            }
        }
        // The ACK of a final response we sent without a transaction (a 401,
        // 407, 403, 404, 480, 483…) carries our local To tag: absorb it.
        let ours = msg.to().ok().and_then(|t| t.tag()).is_some_and(|t| {
            local_tag(&self.id, msg)
                .as_bytes()
                .get(branch::PREFIX.len()..)
                == Some(t)
        });
        if ours {
            self.counters.acks_absorbed += 1;
            return;
        }
        // The ACK of a 2xx is a transaction of its own: relay it statelessly.
        stateless::relay_request(&self.id, &self.relay, &mut self.counters, msg, src, out);
    }

    fn on_cancel(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        via: &Via<'_>,
        src: Peer,
        out: &mut Outbox,
    ) {
        let key = server_key(self.id.secret, msg, via, KeyMethod::Invite);
        let Some(&slot) = self.by_key.get(&key) else {
            // §16.10: no context: forward the CANCEL statelessly.
            stateless::relay_request(&self.id, &self.relay, &mut self.counters, msg, src, out);
            return;
        };
        self.reply(msg, src, 200, "OK", b"", out);
        self.counters.cancels += 1;
        let Some(mut txn) = self.take(slot) else {
            return;
        };
        if !txn.final_sent && txn.method == Method::Invite {
            txn.cancelled = true;
            for i in 0..txn.forks.len() {
                self.cancel_fork(now, slot, &mut txn, i, out);
            }
        }
        self.put(slot, txn);
        self.maybe_free(slot);
    }

    /// Sends a CANCEL down fork `i` now if it has had a provisional response,
    /// or notes that one is wanted when it does (§9.1, §16.10).
    fn cancel_fork(&mut self, now: Instant, slot: u32, txn: &mut Txn, i: usize, out: &mut Outbox) {
        let gen = txn.gen;
        let Some(fork) = txn.forks.get_mut(i) else {
            return;
        };
        if fork.final_code.is_some()
            || fork.cancel.is_some()
            || !matches!(fork.client, Client::Invite(_))
        {
            return;
        }
        if !fork.provisional {
            fork.cancel_wanted = true;
            return;
        }
        let Some(req) = fork.bytes.as_deref() else {
            return;
        };
        let Some(mut idx) = self.index2.take() else {
            return;
        };
        let built = match sip::parse(req, &mut idx) {
            Ok(m) => super::build::ack_or_cancel(&m, Method::Cancel, None, &mut self.scratch).ok(),
            Err(_) => None,
        };
        self.index2 = Some(idx);
        let Some(n) = built else { return };
        let bytes: Box<[u8]> = self.scratch.get(..n).unwrap_or_default().into();
        let to = fork.to;
        let (c, arm) = NonInviteClient::start(now, self.cfg.timers, false);
        fork.cancel = Some(Box::new((c, bytes.clone())));
        fork.cancel_wanted = false;
        self.send(out, to, &bytes);
        self.arm(slot, gen, TimerTarget::Cancel(i as u8), arm);
    }

    fn on_response(&mut self, now: Instant, msg: &Message<'_>, src: Peer, out: &mut Outbox) {
        let Ok(via) = msg.top_via() else {
            self.counters.dropped_malformed += 1;
            return;
        };
        let Some(code) = msg.status() else { return };
        let r = via.branch().and_then(branch::txn_ref);
        let found = r.filter(|r| {
            r.shard == self.id.shard_id
                && self.gens.get(r.slot as usize).copied() == Some(r.gen)
                && self.txns.get(r.slot as usize).is_some_and(Option::is_some)
                && self.id.is_local_addr(&via.host, via.port)
        });
        if let Some(r) = r.filter(|r| {
            r.shard != self.id.shard_id
                && r.shard < self.shards
                && self.id.is_local_addr(&via.host, via.port)
        }) {
            // A response to another shard's client transaction came in on a
            // connection this shard owns (stream listeners are shared by
            // every shard, unlike the per-shard UDP sockets in our Vias).
            if self.mesh_out.len() < MESH_OUT_MAX {
                let m = MeshMsg::Message {
                    bytes: msg.as_bytes().into(),
                    src,
                };
                self.mesh_out.push_back((usize::from(r.shard), m));
                self.counters.responses_handed_over += 1;
            } else {
                self.counters.overload += 1;
            }
            return;
        }
        let Some(r) = found else {
            if r.is_some() && msg.cseq().method == Method::Cancel {
                // The answer to a CANCEL of ours whose context is gone: nobody upstream wants it.
                self.counters.dropped_not_ours += 1;
                return;
            }
            // §16.7: no response context: forward statelessly (or drop if not ours).
            stateless::relay_response(&self.id, &mut self.counters, msg, src.local, out);
            return;
        };
        let slot = r.slot;
        let fork_i = usize::from(r.fork);
        let Some(mut txn) = self.take(slot) else {
            return;
        };
        if fork_i >= txn.forks.len() {
            self.put(slot, txn);
            self.counters.dropped_not_ours += 1;
            return;
        }
        if msg.cseq().method == Method::Cancel {
            if let Some(f) = txn.forks.get_mut(fork_i) {
                if let Some((c, _)) = f.cancel.as_deref_mut() {
                    let (_, arm) = c.on_response(now, code);
                    self.arm(slot, txn.gen, TimerTarget::Cancel(fork_i as u8), arm);
                }
            }
            self.put(slot, txn);
            self.maybe_free(slot);
            return;
        }
        let (action, arm) = match txn.forks.get_mut(fork_i) {
            Some(f) => f.client.on_response(now, code),
            None => (Action::None, Arm::NONE),
        };
        self.arm(slot, txn.gen, TimerTarget::Fork(fork_i as u8), arm);
        let ended = txn.forks.get(fork_i).is_some_and(|f| f.client.terminated());
        if action == Action::None
            && ended
            && txn.method == Method::Invite
            && (200..300).contains(&code)
        {
            // §16.7 step 5: every 2xx to an INVITE goes up, also on a branch
            // whose client transaction is over (Timer B, its CANCEL's Timer F,
            // or Timer M): dropping it left the callee retransmitting an
            // answer nobody would ACK while this context lived (found by the
            // simulations).
            self.forward_up(msg, &txn, out);
        }
        match action {
            Action::AckAndPass | Action::Ack => {
                self.send_ack(&mut txn, fork_i, msg, out);
                if action == Action::AckAndPass {
                    self.pass_response(now, slot, &mut txn, fork_i, code, msg, out);
                }
            }
            Action::PassResponse => self.pass_response(now, slot, &mut txn, fork_i, code, msg, out),
            _ => {}
        }
        self.put(slot, txn);
        self.finish(now, slot, out);
    }

    /// Sends (or re-sends) the ACK of the non-2xx final response `msg` on fork `i`.
    fn send_ack(&mut self, txn: &mut Txn, i: usize, msg: &Message<'_>, out: &mut Outbox) {
        let Some(fork) = txn.forks.get_mut(i) else {
            return;
        };
        let is_ack = fork.final_code.is_some();
        if !is_ack {
            // First final: build the ACK from the forwarded request and keep it instead.
            let Some(req) = fork.bytes.as_deref() else {
                return;
            };
            let Some(mut idx) = self.index2.take() else {
                return;
            };
            let to = msg.header(HeaderName::To);
            let built = match sip::parse(req, &mut idx) {
                Ok(m) => super::build::ack_or_cancel(&m, Method::Ack, to, &mut self.scratch).ok(),
                Err(_) => None,
            };
            self.index2 = Some(idx);
            let Some(n) = built else { return };
            fork.bytes = Some(self.scratch.get(..n).unwrap_or_default().into());
        }
        if let Some(ack) = fork.bytes.clone() {
            let to = fork.to;
            self.send(out, to, &ack);
        }
    }

    /// §16.7: what the response context does with a response a fork passed up.
    #[allow(clippy::too_many_arguments)]
    fn pass_response(
        &mut self,
        now: Instant,
        slot: u32,
        txn: &mut Txn,
        i: usize,
        code: u16,
        msg: &Message<'_>,
        out: &mut Outbox,
    ) {
        let invite = txn.method == Method::Invite;
        let gen = txn.gen;
        match code {
            100..=199 => {
                // 100 Trying is a provisional response too: a CANCEL waiting
                // for one goes now (§9.1). It is neither forwarded (§16.7
                // step 5) nor resets Timer C (§16.7 step 2: 101–199 only).
                if invite && code > 100 && txn.forks.get(i).is_some_and(|f| f.final_code.is_none())
                {
                    let c = self.arm_timer_c(now, slot, gen, i);
                    if let Some(f) = txn.forks.get_mut(i) {
                        f.timer_c = Some(c);
                    }
                }
                let wanted = match txn.forks.get_mut(i) {
                    Some(f) => {
                        f.provisional = true;
                        f.cancel_wanted
                    }
                    None => false,
                };
                if wanted {
                    self.cancel_fork(now, slot, txn, i, out);
                } else if code > 100 && !txn.final_sent && txn.server.can_send(code) {
                    if let Some(bytes) = self.forward_up(msg, txn, out) {
                        txn.last_response = Some(bytes);
                    }
                }
            }
            200..=299 => {
                if let Some(f) = txn.forks.get_mut(i) {
                    f.final_code = Some(code);
                    f.bytes = None;
                    f.timer_c = None;
                }
                if invite {
                    // Every 2xx goes up, at once (§16.7 step 5).
                    self.forward_up(msg, txn, out);
                    // Accepted (RFC 6026) absorbs INVITE retransmissions
                    // without answering them: the last 1xx is not needed
                    // for the 32 s the transaction lingers.
                    txn.last_response = None;
                    if !txn.final_sent {
                        txn.final_sent = true;
                        txn.request = None;
                        let arm = txn.server.on_send(now, code);
                        self.arm(slot, gen, TimerTarget::Server, arm);
                        for j in 0..txn.forks.len() {
                            if j != i {
                                self.cancel_fork(now, slot, txn, j, out);
                            }
                        }
                    }
                } else if !txn.final_sent {
                    if let Some(bytes) = self.forward_up(msg, txn, out) {
                        txn.last_response = Some(bytes);
                    }
                    txn.final_sent = true;
                    txn.request = None;
                    let arm = txn.server.on_send(now, code);
                    self.arm(slot, gen, TimerTarget::Server, arm);
                }
            }
            _ => {
                if let Some(f) = txn.forks.get_mut(i) {
                    f.final_code = Some(code);
                    f.timer_c = None;
                    if !invite {
                        // Completed (Timer K) only absorbs retransmitted
                        // responses: the forwarded request is done with.
                        f.bytes = None;
                    }
                }
                let better = txn.best.as_ref().is_none_or(|(b, _)| rank(code) < rank(*b));
                if better && !txn.final_sent {
                    let edits = Edits {
                        pop_via: true,
                        max_forwards: MaxForwardsEdit::Keep,
                        ..Edits::default()
                    };
                    if let Ok(n) = sip::edit(msg, &edits, &mut self.scratch) {
                        txn.best = Some((code, self.scratch.get(..n).unwrap_or_default().into()));
                    }
                }
                if (600..700).contains(&code) && invite {
                    for j in 0..txn.forks.len() {
                        if j != i {
                            self.cancel_fork(now, slot, txn, j, out);
                        }
                    }
                }
            }
        }
    }

    /// Forwards `msg` upstream with our Via removed; returns the bytes sent.
    fn forward_up(&mut self, msg: &Message<'_>, txn: &Txn, out: &mut Outbox) -> Option<Box<[u8]>> {
        let edits = Edits {
            pop_via: true,
            max_forwards: MaxForwardsEdit::Keep,
            ..Edits::default()
        };
        let n = sip::edit(msg, &edits, &mut self.scratch).ok()?;
        let bytes: Box<[u8]> = self.scratch.get(..n).unwrap_or_default().into();
        self.send(out, txn.reply_to, &bytes);
        self.counters.responses_forwarded += 1;
        Some(bytes)
    }

    /// When every fork is final and nothing was sent up yet: send the best (§16.7 step 6).
    fn finish(&mut self, now: Instant, slot: u32, out: &mut Outbox) {
        let Some(mut txn) = self.take(slot) else {
            return;
        };
        let all_final = txn.forks.iter().all(|f| f.final_code.is_some());
        if !txn.final_sent && all_final {
            let (code, local) = match &txn.best {
                Some((503, _)) => (500, true),
                Some((c, _)) => (*c, false),
                None if txn.cancelled => (487, true),
                None => (408, true),
            };
            let bytes = if local {
                self.local_final(&txn, code)
            } else {
                txn.best.take().map(|(_, b)| b)
            };
            if let Some(b) = bytes {
                self.send(out, txn.reply_to, &b);
                if local {
                    self.counters.responses_local += 1;
                } else {
                    self.counters.responses_forwarded += 1;
                }
                txn.last_response = Some(b);
            }
            txn.final_sent = true;
            txn.request = None;
            txn.best = None;
            let arm = txn.server.on_send(now, code);
            self.arm(slot, txn.gen, TimerTarget::Server, arm);
        }
        self.put(slot, txn);
        self.maybe_free(slot);
    }

    /// A final response of our own to the transaction's request.
    fn local_final(&mut self, txn: &Txn, code: u16) -> Option<Box<[u8]>> {
        let req = txn.request.as_deref()?;
        let mut idx = self.index2.take()?;
        let reason = match code {
            408 => "Request Timeout",
            487 => "Request Terminated",
            500 => "Server Internal Error",
            _ => "Error",
        };
        let built = match sip::parse(req, &mut idx) {
            Ok(m) => {
                let tag = local_tag(&self.id, &m);
                let spec = ResponseSpec {
                    to_tag: tag.as_bytes().get(branch::PREFIX.len()..),
                    received: Some(Received {
                        ip: txn.src.remote.ip(),
                        port: txn.src.remote.port(),
                    }),
                    ..ResponseSpec::new(code, reason)
                };
                sip::response(&m, &spec, &mut self.scratch).ok()
            }
            Err(_) => None,
        };
        self.index2 = Some(idx);
        built.map(|n| self.scratch.get(..n).unwrap_or_default().into())
    }

    fn on_timer(&mut self, now: Instant, item: TimerItem, out: &mut Outbox) {
        if self.gens.get(item.slot as usize).copied() != Some(item.gen) {
            return;
        }
        let slot = item.slot;
        let Some(mut txn) = self.take(slot) else {
            return;
        };
        match item.target {
            TimerTarget::Server => {
                let (action, arm) = match &mut txn.server {
                    Server::Invite(s) => s.on_timer(now, item.name, item.at),
                    Server::NonInvite(s) => (s.on_timer(item.name, item.at), Arm::NONE),
                };
                self.arm(slot, txn.gen, TimerTarget::Server, arm);
                if action == Action::RetransmitResponse {
                    if let Some(r) = txn.last_response.clone() {
                        self.send(out, txn.reply_to, &r);
                    }
                }
                if txn.server.terminated() {
                    txn.last_response = None;
                }
            }
            TimerTarget::Fork(i) => {
                let i = usize::from(i);
                if item.name == TimerName::C {
                    let live = txn
                        .forks
                        .get(i)
                        .is_some_and(|f| f.timer_c == Some(item.at) && f.final_code.is_none());
                    if live {
                        // §16.8: Timer C fired: CANCEL the fork. With no
                        // provisional response yet the CANCEL waits for one
                        // (§9.1) and Timer B ends the branch with its 408.
                        // Why not a 408 at once, as §16.8 words it: Timer C
                        // only beats Timer B when configured below 64×T1
                        // (§16.6 wants it above 3 min), and an immediate 408
                        // let the branch's late 2xx reach the caller after
                        // the 408 (found by the simulations).
                        self.cancel_fork(now, slot, &mut txn, i, out);
                    }
                } else {
                    let (action, arm) = match txn.forks.get_mut(i) {
                        Some(f) => f.client.on_timer(now, item.name, item.at),
                        None => (Action::None, Arm::NONE),
                    };
                    self.arm(slot, txn.gen, TimerTarget::Fork(i as u8), arm);
                    match action {
                        Action::RetransmitRequest => {
                            if let Some(f) = txn.forks.get(i) {
                                if let Some(b) = f.bytes.clone() {
                                    self.counters.retransmissions_sent += 1;
                                    self.send(out, f.to, &b);
                                }
                            }
                        }
                        Action::Timeout => {
                            if let Some(f) = txn.forks.get_mut(i) {
                                f.final_code = Some(408);
                                f.bytes = None;
                                f.timer_c = None;
                                if let Some((c, _)) = f.cancel.as_deref_mut() {
                                    c.terminate();
                                }
                            }
                        }
                        Action::Terminate => {
                            if let Some(f) = txn.forks.get_mut(i) {
                                f.bytes = None;
                            }
                        }
                        _ => {}
                    }
                }
            }
            TimerTarget::Cancel(i) => {
                let i = usize::from(i);
                let mut resend = None;
                let mut gave_up = false;
                if let Some(f) = txn.forks.get_mut(i) {
                    if let Some((c, bytes)) = f.cancel.as_deref_mut() {
                        let (action, arm) = c.on_timer(now, item.name, item.at);
                        match action {
                            Action::RetransmitRequest => resend = Some((f.to, bytes.clone())),
                            Action::Timeout => gave_up = true,
                            _ => {}
                        }
                        for (name, at) in arm.iter() {
                            self.wheel.insert(
                                at,
                                TimerItem {
                                    slot,
                                    gen: txn.gen,
                                    target: TimerTarget::Cancel(i as u8),
                                    name,
                                    at,
                                },
                            );
                        }
                    }
                    if gave_up && f.final_code.is_none() {
                        // §16.8: no final response to a CANCELed fork: behave as if 408.
                        f.final_code = Some(408);
                        f.client.terminate();
                        f.bytes = None;
                    }
                }
                if let Some((to, b)) = resend {
                    self.send(out, to, &b);
                }
            }
        }
        self.put(slot, txn);
        self.finish(now, slot, out);
    }

    /// A local response to `msg` (no transaction), sent where §18.2.2 says.
    #[allow(clippy::too_many_arguments)]
    fn reply(
        &mut self,
        msg: &Message<'_>,
        src: Peer,
        code: u16,
        reason: &str,
        extra: &[u8],
        out: &mut Outbox,
    ) {
        if msg.method() == Method::Ack {
            return;
        }
        let dest = msg
            .top_via()
            .map(|v| route::reply_peer(&v, &src))
            .unwrap_or(src);
        let tag = local_tag(&self.id, msg);
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
            Ok(()) => self.counters.responses_local += 1,
            Err(_) => self.counters.dropped_overflow += 1,
        }
    }

    fn send(&mut self, out: &mut Outbox, to: Peer, bytes: &[u8]) {
        if out.push(to, bytes).is_err() {
            self.counters.dropped_overflow += 1;
        }
    }

    fn alloc(&mut self) -> (u32, u32) {
        self.live += 1;
        if let Some(slot) = self.free.pop() {
            let gen = self.gens.get(slot as usize).copied().unwrap_or(0);
            return (slot, gen);
        }
        let slot = self.txns.len() as u32;
        self.txns.push(None);
        self.gens.push(1);
        (slot, 1)
    }

    fn take(&mut self, slot: u32) -> Option<Txn> {
        self.txns.get_mut(slot as usize).and_then(Option::take)
    }

    fn put(&mut self, slot: u32, txn: Txn) {
        if let Some(s) = self.txns.get_mut(slot as usize) {
            *s = Some(txn);
        }
    }

    /// Frees the context once its server transaction and every client
    /// transaction (and CANCEL) are over.
    fn maybe_free(&mut self, slot: u32) {
        let done = self
            .txns
            .get(slot as usize)
            .and_then(Option::as_ref)
            .is_some_and(|t| {
                t.server.terminated()
                    && t.forks.iter().all(|f| {
                        f.client.terminated()
                            && f.cancel.as_deref().is_none_or(|(c, _)| {
                                matches!(
                                    c.state(),
                                    NonInviteClientState::Completed
                                        | NonInviteClientState::Terminated
                                )
                            })
                    })
            });
        if !done {
            return;
        }
        if let Some(t) = self.take(slot) {
            if self.by_key.get(&t.key) == Some(&slot) {
                self.by_key.remove(&t.key);
            }
            if let Some(g) = self.gens.get_mut(slot as usize) {
                *g = (*g + 1) & 0xff_ffff;
                if *g == 0 {
                    *g = 1;
                }
            }
            self.free.push(slot);
            self.live = self.live.saturating_sub(1);
        }
    }
}

/// The rank of a final response for §16.7 step 6 (lower is better): 6xx
/// first, then the lowest class.
fn rank(code: u16) -> u16 {
    match code {
        600..=699 => 0,
        300..=399 => 1,
        400..=499 => 2,
        _ => 3,
    }
}

/// The AoR key of a Request-URI: `user@host`, host lower-cased, user as written.
pub fn aor_key<'a>(uri: &sip::Uri<'_>, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    let user = uri.user?;
    let host = uri.host_bytes;
    let n = user.len() + 1 + host.len();
    let out = buf.get_mut(..n)?;
    let (u, rest) = out.split_at_mut(user.len());
    u.copy_from_slice(user);
    let (at, h) = rest.split_at_mut(1);
    at.copy_from_slice(b"@");
    for (d, s) in h.iter_mut().zip(host.iter()) {
        *d = s.to_ascii_lowercase();
    }
    let h = h.strip_suffix(b".").map_or(n, |_| n - 1);
    buf.get(..h)
}

/// A To tag for our local responses: a function of the request.
fn local_tag(id: &Identity, msg: &Message<'_>) -> Branch {
    let from_tag = msg.from().ok().and_then(|f| f.tag()).unwrap_or_default();
    let h = branch::Hasher::new(id.secret ^ 0x7a67)
        .write(msg.call_id())
        .write(from_tag)
        .finish();
    Branch::new(id.shard_id, branch::Kind::Stateless, h)
}

/// Headers of our 200 to OPTIONS.
const OPTIONS_EXTRA: &[u8] = b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, REGISTER, SUBSCRIBE, NOTIFY, PUBLISH, INFO, PRACK, UPDATE, REFER\r\nAccept: application/sdp\r\nSupported: path\r\n";

impl<L: Location, R: Registry> Service for Stateful<L, R> {
    fn handle_message(&mut self, now: Instant, data: &[u8], src: &Peer, out: &mut Outbox) {
        let src = *src;
        if data.iter().all(|&b| b == b'\r' || b == b'\n') {
            self.counters.keepalives += 1;
            return;
        }
        if let Some(f) = &mut self.guard.flood {
            if f.admit(now, src.remote.ip()) == crate::policy::flood::Admit::Banned {
                self.counters.flood_dropped += 1;
                return;
            }
        }
        let Some(mut idx) = self.index.take() else {
            return;
        };
        match sip::parse(data, &mut idx) {
            Ok(msg) if msg.is_request() => {
                self.counters.requests += 1;
                self.on_request(now, &msg, src, out);
            }
            Ok(msg) => {
                self.counters.responses += 1;
                self.on_response(now, &msg, src, out);
            }
            Err(e) => {
                self.counters.parse_errors += 1;
                let sent = out.push_with(src, |buf| {
                    reject::error_response(data, e, buf)?.ok_or(sip::EmitError::MissingHeader)
                });
                match sent {
                    Ok(()) => self.counters.responses_local += 1,
                    Err(_) => self.counters.dropped_malformed += 1,
                }
            }
        }
        self.index = Some(idx);
    }

    fn handle_timeout(&mut self, now: Instant, out: &mut Outbox) {
        if self.registry.poll_timeout().is_some_and(|t| t <= now) {
            self.registry.handle_timeout(now, self.wall_us);
        }
        let mut fired = core::mem::take(&mut self.fired);
        self.wheel.expire(now, |_, item| fired.push(item));
        for item in fired.drain(..) {
            self.on_timer(now, item, out);
        }
        self.fired = fired;
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match (self.wheel.next_deadline(), self.registry.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn poll_persist(&mut self, batch: &mut Vec<Record>) -> bool {
        let mut records = Vec::new();
        self.registry.drain_records(&mut records);
        if records.is_empty() && self.held.is_empty() {
            return false;
        }
        batch.extend(records.iter().cloned());
        self.persisting
            .push_back((core::mem::take(&mut self.held), records));
        true
    }

    fn persisted(&mut self, now: Instant, ok: bool, out: &mut Outbox) {
        self.release(now, ok, out);
    }

    fn poll_mesh(&mut self) -> Option<(usize, MeshMsg)> {
        self.mesh_out.pop_front()
    }

    fn handle_mesh(&mut self, now: Instant, msg: MeshMsg, out: &mut Outbox) {
        match msg {
            MeshMsg::Message { bytes, src } => {
                // Already admitted (flood) and counted by the shard that received it.
                let Some(mut idx) = self.index.take() else {
                    return;
                };
                match sip::parse(&bytes, &mut idx) {
                    Ok(msg) if msg.is_request() => {
                        self.counters.handed_in += 1;
                        self.on_request(now, &msg, src, out);
                    }
                    Ok(msg) => {
                        // Only a response whose branch names this shard is
                        // handed over, so it cannot bounce back.
                        self.counters.responses_handed_in += 1;
                        self.on_response(now, &msg, src, out);
                    }
                    Err(_) => {}
                }
                self.index = Some(idx);
            }
            MeshMsg::Feed(records) => {
                for r in records.iter() {
                    let _ = self
                        .lag
                        .record(self.wall_us.saturating_sub(r.commit).max(1));
                    if let Err(p) = self.location.apply(r) {
                        self.request_resync(p);
                        break;
                    }
                }
            }
            MeshMsg::Resync { partition, to } => {
                if let Some(state) = self.registry.state().filter(|s| s.partition == partition) {
                    self.mesh_out
                        .push_back((usize::from(to), MeshMsg::State(Arc::new(state))));
                }
            }
            MeshMsg::State(state) => self.location.install(&state),
            // A send on a connection this shard owns: the shard loop takes
            // stream transmits from the outbox to their connections.
            MeshMsg::Transmit { peer, bytes } => self.send(out, peer, &bytes),
        }
    }

    fn replication_lag(&self) -> Option<&hdrhistogram::Histogram<u64>> {
        Some(&self.lag)
    }

    fn partition_state(&self) -> Option<PartitionState> {
        self.registry.state()
    }

    fn handle_turn(&mut self, now: Instant, wall_us: u64) {
        self.wall_us = wall_us;
        self.guard.refresh();
        if let Some(o) = &mut self.guard.overload {
            o.handle_turn(
                now,
                Load {
                    queue_depth: 0,
                    live_transactions: self.live,
                },
            );
        }
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }
}

// Deterministic simulations of whole calls through this proxy (src/sim.rs).
#[cfg(test)]
#[path = "tests/sim/mod.rs"]
mod sim_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::testutil::identity;
    use crate::sip::{parse, HeaderIndex};
    use crate::time::Duration;

    /// A location with fixed contacts for `bob@example.test`, and `carol` known with none.
    struct FixedLocation(Vec<SocketAddr>);

    impl Location for FixedLocation {
        fn lookup(&self, aor: &[u8], _wall: u64, out: &mut Targets) -> Found {
            match aor {
                b"bob@example.test" => {
                    for a in &self.0 {
                        out.push(format!("sip:bob@{a}").as_bytes(), b"", Some(*a), 1000);
                    }
                    Found::Contacts
                }
                b"carol@example.test" => Found::NoBindings,
                _ => Found::Unknown,
            }
        }
    }

    struct H {
        p: Stateful<FixedLocation>,
        out: Outbox,
        now: Instant,
    }

    const UAC: &str = "10.0.0.1:5062";
    const UPSTREAM: &str = "192.0.2.50:5060";

    impl H {
        fn new(contacts: &[&str]) -> Self {
            let cfg = Config {
                upstream: Some(UPSTREAM.parse().unwrap()),
                ..Config::default()
            };
            let loc = FixedLocation(contacts.iter().map(|c| c.parse().unwrap()).collect());
            Self {
                p: Stateful::new(identity(), cfg, loc, NoRegistry),
                out: Outbox::new(1 << 20, 64),
                now: Instant::ZERO,
            }
        }

        fn feed(&mut self, data: &str, src: &str) -> Vec<(String, String)> {
            self.out.clear();
            self.p.handle_message(
                self.now,
                data.as_bytes(),
                &Peer::udp(src.parse().unwrap(), SocketId(0)),
                &mut self.out,
            );
            self.drain()
        }

        fn advance(&mut self, d: Duration) -> Vec<(String, String)> {
            self.now += d;
            self.out.clear();
            self.p.handle_timeout(self.now, &mut self.out);
            self.drain()
        }

        fn drain(&self) -> Vec<(String, String)> {
            self.out
                .items()
                .iter()
                .map(|t| {
                    (
                        t.peer.remote.to_string(),
                        String::from_utf8_lossy(self.out.bytes(t)).into_owned(),
                    )
                })
                .collect()
        }
    }

    fn invite(ruri: &str, branch: &str) -> String {
        format!(
            "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {UAC};branch={branch}\r\nMax-Forwards: 70\r\nTo: <{ruri}>\r\nFrom: <sip:alice@example.test>;tag=a1\r\nCall-ID: {branch}@c\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{UAC}>\r\nContent-Length: 0\r\n\r\n"
        )
    }

    fn status(m: &str) -> u16 {
        let mut idx = HeaderIndex::default();
        parse(m.as_bytes(), &mut idx).unwrap().status().unwrap()
    }

    fn method(m: &str) -> String {
        let mut idx = HeaderIndex::default();
        String::from_utf8_lossy(parse(m.as_bytes(), &mut idx).unwrap().method_bytes()).into_owned()
    }

    /// The downstream response to a forwarded request.
    fn respond(req: &str, code: u16, tag: &str) -> String {
        let mut idx = HeaderIndex::default();
        let m = parse(req.as_bytes(), &mut idx).unwrap();
        let mut out = vec![0u8; 4096];
        let n = sip::response(
            &m,
            &ResponseSpec {
                to_tag: Some(tag.as_bytes()),
                ..ResponseSpec::new(code, "X")
            },
            &mut out,
        )
        .unwrap();
        String::from_utf8(out[..n].to_vec()).unwrap()
    }

    #[test]
    fn forwards_a_call_and_absorbs_retransmissions() {
        let mut h = H::new(&["192.0.2.4:5060"]);
        let inv = invite("sip:bob@example.test", "z9hG4bKc1");
        let out = h.feed(&inv, UAC);
        assert_eq!(out.len(), 2, "{out:#?}");
        assert_eq!((out[0].0.as_str(), status(&out[0].1)), (UAC, 100));
        let (dest, fwd) = (&out[1].0, out[1].1.clone());
        assert_eq!(dest, "192.0.2.4:5060");
        assert!(
            fwd.starts_with("INVITE sip:bob@192.0.2.4:5060 SIP/2.0\r\n"),
            "{fwd}"
        );
        assert!(fwd.contains("Record-Route: <sip:127.0.0.1:5060;lr>\r\n"));
        // The INVITE again: the 100 is replayed; nothing goes downstream.
        let out = h.feed(&inv, UAC);
        assert_eq!(out.len(), 1);
        assert_eq!(status(&out[0].1), 100);
        // 180 and 200 go up; the 200's retransmission too (RFC 6026).
        for code in [180, 200, 200] {
            let out = h.feed(&respond(&fwd, code, "b1"), "192.0.2.4:5060");
            assert_eq!(out.len(), 1, "{code}");
            assert_eq!((out[0].0.as_str(), status(&out[0].1)), (UAC, code));
        }
        // INVITE retransmission after the 2xx: absorbed.
        assert!(h.feed(&inv, UAC).is_empty());
        assert_eq!(h.p.live_transactions(), 1);
        // After Timer L / M the context is gone.
        h.advance(Duration::from_secs(33));
        assert_eq!(h.p.live_transactions(), 0);
    }

    #[test]
    fn failure_is_acked_downstream_and_forwarded_once() {
        let mut h = H::new(&["192.0.2.4:5060"]);
        let out = h.feed(&invite("sip:bob@example.test", "z9hG4bKc2"), UAC);
        let fwd = out[1].1.clone();
        let busy = respond(&fwd, 486, "b2");
        let out = h.feed(&busy, "192.0.2.4:5060");
        assert_eq!(out.len(), 2, "{out:#?}");
        assert_eq!(
            (out[0].0.as_str(), method(&out[0].1)),
            ("192.0.2.4:5060", "ACK".to_owned())
        );
        assert_eq!((out[1].0.as_str(), status(&out[1].1)), (UAC, 486));
        let out = h.feed(&busy, "192.0.2.4:5060");
        assert_eq!(
            out.len(),
            1,
            "a retransmitted final is ACKed again, not forwarded"
        );
        assert_eq!(method(&out[0].1), "ACK");
        // Upstream never ACKs: Timer G retransmits the 486.
        let out = h.advance(Duration::from_millis(500));
        assert_eq!(status(&out[0].1), 486);
    }

    #[test]
    fn times_out_with_408_after_retransmitting() {
        let mut h = H::new(&["192.0.2.4:5060"]);
        h.feed(&invite("sip:bob@example.test", "z9hG4bKc3"), UAC);
        let mut retrans = 0;
        let mut finals = Vec::new();
        for _ in 0..70 {
            for (_, m) in h.advance(Duration::from_millis(500)) {
                if m.starts_with("INVITE") {
                    retrans += 1;
                } else {
                    finals.push(status(&m));
                }
            }
        }
        assert_eq!(retrans, 6, "Timer A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s");
        assert_eq!(finals.first(), Some(&408));
    }

    #[test]
    fn cancel_reaches_the_fork_and_487_comes_back() {
        let mut h = H::new(&["192.0.2.4:5060"]);
        let inv = invite("sip:bob@example.test", "z9hG4bKc4");
        let fwd = h.feed(&inv, UAC)[1].1.clone();
        let cancel = inv
            .replace(
                "INVITE sip:bob@example.test SIP/2.0",
                "CANCEL sip:bob@example.test SIP/2.0",
            )
            .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
        // Before any provisional: 200 to the CANCEL; the downstream CANCEL waits for a 1xx (§9.1).
        let out = h.feed(&cancel, UAC);
        assert_eq!(out.len(), 1);
        assert_eq!(status(&out[0].1), 200);
        let out = h.feed(&respond(&fwd, 180, "b4"), "192.0.2.4:5060");
        assert_eq!(out.len(), 1);
        assert_eq!(method(&out[0].1), "CANCEL");
        let down_cancel = out[0].1.clone();
        assert!(
            h.feed(&respond(&down_cancel, 200, "b4"), "192.0.2.4:5060")
                .is_empty(),
            "200 to our CANCEL absorbed"
        );
        let out = h.feed(&respond(&fwd, 487, "b4"), "192.0.2.4:5060");
        let codes: Vec<String> = out
            .iter()
            .map(|(_, m)| m.lines().next().unwrap().to_owned())
            .collect();
        assert_eq!(
            codes,
            vec![
                "ACK sip:bob@192.0.2.4:5060 SIP/2.0".to_owned(),
                "SIP/2.0 487 X".to_owned()
            ]
        );
    }

    /// Regression (found by the simulations): a branch that only ever
    /// answers 100 Trying was never CANCELled and never timed out, so its
    /// context and the caller's call hung forever.
    #[test]
    fn a_branch_that_only_says_trying_is_cancelled_and_timed_out() {
        let mut h = H::new(&["192.0.2.4:5060"]);
        let inv = invite("sip:bob@example.test", "z9hG4bKc11");
        let fwd = h.feed(&inv, UAC)[1].1.clone();
        assert!(
            h.feed(&respond(&fwd, 100, "b"), "192.0.2.4:5060")
                .is_empty(),
            "100 is not forwarded"
        );
        let cancel = inv
            .replace(
                "INVITE sip:bob@example.test SIP/2.0",
                "CANCEL sip:bob@example.test SIP/2.0",
            )
            .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
        let out = h.feed(&cancel, UAC);
        let lines: Vec<&str> = out.iter().map(|(_, m)| m.lines().next().unwrap()).collect();
        assert_eq!(
            lines,
            vec!["SIP/2.0 200 OK", "CANCEL sip:bob@192.0.2.4:5060 SIP/2.0"],
            "100 is a provisional response (§9.1)"
        );

        // Nobody cancels: Timer C (from the forward, §16.6 step 11) does.
        let mut h = H::new(&["192.0.2.4:5060"]);
        let fwd = h.feed(&invite("sip:bob@example.test", "z9hG4bKc12"), UAC)[1]
            .1
            .clone();
        h.feed(&respond(&fwd, 100, "b"), "192.0.2.4:5060");
        assert!(h.advance(Duration::from_secs(179)).is_empty());
        let out = h.advance(Duration::from_secs(2));
        assert_eq!(out.len(), 1);
        assert_eq!(method(&out[0].1), "CANCEL");

        // No response at all and a short Timer C: the CANCEL waits for a
        // provisional response (§9.1); Timer B ends the branch with a 408.
        let mut h = H::new(&["192.0.2.4:5060"]);
        h.p.cfg.timers.timer_c = Duration::from_secs(10);
        h.feed(&invite("sip:bob@example.test", "z9hG4bKc13"), UAC);
        let mut sent = Vec::new();
        for _ in 0..66 {
            sent.extend(
                h.advance(Duration::from_millis(500))
                    .into_iter()
                    .map(|(_, m)| m.lines().next().unwrap().to_owned()),
            );
        }
        assert!(!sent.iter().any(|l| l.starts_with("CANCEL")), "{sent:?}");
        let finals: Vec<&String> = sent.iter().filter(|l| l.starts_with("SIP/2.0")).collect();
        assert!(
            !finals.is_empty() && finals.iter().all(|l| *l == "SIP/2.0 408 Request Timeout"),
            "{finals:?} (Timer G resends it)"
        );
    }

    /// Regression (found by the simulations): a 2xx on a branch whose client
    /// transaction had ended (here by Timer B) was dropped while the context
    /// lived; §16.7 step 5 sends every 2xx to an INVITE up.
    #[test]
    fn a_2xx_after_the_branch_timed_out_is_forwarded() {
        let mut h = H::new(&["192.0.2.4:5060"]);
        let fwd = h.feed(&invite("sip:bob@example.test", "z9hG4bKc14"), UAC)[1]
            .1
            .clone();
        let out: Vec<u16> = (0..65)
            .flat_map(|_| h.advance(Duration::from_millis(500)))
            .filter(|(_, m)| m.starts_with("SIP/2.0"))
            .map(|(_, m)| status(&m))
            .collect();
        assert!(
            !out.is_empty() && out.iter().all(|&c| c == 408),
            "{out:?} (Timer G resends it)"
        );
        assert_eq!(h.p.live_transactions(), 1, "waiting for the ACK of the 408");
        let out = h.feed(&respond(&fwd, 200, "late"), "192.0.2.4:5060");
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!((out[0].0.as_str(), status(&out[0].1)), (UAC, 200));
    }

    #[test]
    fn forks_and_picks_the_best_response() {
        let mut h = H::new(&["192.0.2.4:5060", "192.0.2.5:5060", "192.0.2.6:5060"]);
        let out = h.feed(&invite("sip:bob@example.test", "z9hG4bKc5"), UAC);
        assert_eq!(out.len(), 4, "100 + three forks");
        let forks: Vec<String> = out[1..].iter().map(|(_, m)| m.clone()).collect();
        // 404, 486: held. 302 is best (lowest class) once all are final.
        assert_eq!(
            h.feed(&respond(&forks[0], 404, "x"), "192.0.2.4:5060")
                .len(),
            1,
            "just the ACK"
        );
        assert_eq!(
            h.feed(&respond(&forks[1], 486, "y"), "192.0.2.5:5060")
                .len(),
            1
        );
        let out = h.feed(&respond(&forks[2], 302, "z"), "192.0.2.6:5060");
        assert_eq!(out.len(), 2);
        assert_eq!(status(&out[1].1), 302);
    }

    #[test]
    fn a_6xx_cancels_the_others_and_wins() {
        let mut h = H::new(&["192.0.2.4:5060", "192.0.2.5:5060"]);
        let out = h.feed(&invite("sip:bob@example.test", "z9hG4bKc6"), UAC);
        let (f0, f1) = (out[1].1.clone(), out[2].1.clone());
        h.feed(&respond(&f1, 180, "y"), "192.0.2.5:5060");
        let out = h.feed(&respond(&f0, 603, "x"), "192.0.2.4:5060");
        let methods: Vec<String> = out.iter().map(|(_, m)| method(m)).collect();
        assert_eq!(methods, vec!["ACK", "CANCEL"]);
        let out = h.feed(&respond(&f1, 487, "y"), "192.0.2.5:5060");
        assert_eq!(status(&out[1].1), 603);
    }

    #[test]
    fn strict_routers_are_handled_both_ways() {
        let mut h = H::new(&[]);
        // §16.4: a strict router before us put our Record-Route URI in the
        // Request-URI; the real target is the last Route value.
        let bye = format!(
            "BYE sip:127.0.0.1:5060;lr SIP/2.0\r\nVia: SIP/2.0/UDP {UAC};branch=z9hG4bKs1\r\nMax-Forwards: 70\r\n\
Route: <sip:bob@192.0.2.4:5062>\r\nTo: <sip:bob@x>;tag=b\r\nFrom: <sip:a@x>;tag=a\r\nCall-ID: s1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        );
        let out = h.feed(&bye, UAC);
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].0, "192.0.2.4:5062");
        assert!(
            out[0]
                .1
                .starts_with("BYE sip:bob@192.0.2.4:5062 SIP/2.0\r\n"),
            "{}",
            out[0].1
        );
        assert!(
            !out[0].1.contains("\r\nRoute:"),
            "the last Route value became the Request-URI"
        );
        // §16.6 step 6: the next hop after us is a strict router (no lr).
        let bye = format!(
            "BYE sip:bob@192.0.2.4:5062 SIP/2.0\r\nVia: SIP/2.0/UDP {UAC};branch=z9hG4bKs2\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>, <sip:192.0.2.31:5070>\r\nTo: <sip:bob@x>;tag=b\r\nFrom: <sip:a@x>;tag=a\r\nCall-ID: s2\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        );
        let out = h.feed(&bye, UAC);
        assert_eq!(out[0].0, "192.0.2.31:5070");
        let mut idx = HeaderIndex::default();
        let m = parse(out[0].1.as_bytes(), &mut idx).unwrap();
        assert_eq!(m.request_uri_bytes(), b"sip:192.0.2.31:5070");
        let routes: Vec<&[u8]> = m.values(HeaderName::Route).collect();
        assert_eq!(routes, vec![&b"<sip:bob@192.0.2.4:5062>"[..]]);
    }

    #[test]
    fn lookup_outcomes_and_table_limit() {
        let mut h = H::new(&[]);
        let out = h.feed(&invite("sip:nobody@example.test", "z9hG4bKc7"), UAC);
        assert_eq!(status(&out[0].1), 404);
        let out = h.feed(&invite("sip:carol@example.test", "z9hG4bKc8"), UAC);
        assert_eq!(status(&out[0].1), 480);
        let mut h = H::new(&["192.0.2.4:5060"]);
        h.p.cfg.max_transactions = 1;
        h.feed(&invite("sip:bob@example.test", "z9hG4bKc9"), UAC);
        let out = h.feed(&invite("sip:bob@example.test", "z9hG4bKc10"), UAC);
        assert_eq!(status(&out[0].1), 503);
        assert!(out[0].1.contains("Retry-After: 5\r\n"));
    }

    /// A registrar that answers every REGISTER 200 and counts them.
    #[derive(Default)]
    struct CountingRegistry(usize);

    impl Registry for CountingRegistry {
        fn owner(&self, _: &Message<'_>) -> Owner {
            Owner::Here
        }

        fn handle_register(
            &mut self,
            _: Instant,
            _: u64,
            msg: &Message<'_>,
            _: &Peer,
            reply: &mut [u8],
        ) -> Option<(usize, u16)> {
            self.0 += 1;
            sip::response(msg, &ResponseSpec::new(200, "OK"), reply)
                .ok()
                .map(|n| (n, 200))
        }
    }

    /// Store appends complete turns later, in order: each completion
    /// releases its own turn's answers (200 on success, 500 on failure)
    /// and no other.
    #[test]
    fn held_answers_are_released_batch_by_batch() {
        let mut p = Stateful::new(
            identity(),
            Config::default(),
            FixedLocation(Vec::new()),
            CountingRegistry::default(),
        );
        let mut out = Outbox::new(1 << 20, 64);
        let mut batch = Vec::new();
        let reg = |i: usize| {
            format!(
                "REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP {UAC};branch=z9hG4bKfifo{i}\r\nMax-Forwards: 70\r\n\
To: <sip:a{i}@example.test>\r\nFrom: <sip:a{i}@example.test>;tag=r\r\nCall-ID: fifo{i}\r\nCSeq: 1 REGISTER\r\n\
Contact: <sip:a@{UAC}>\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let src = Peer::udp(UAC.parse().unwrap(), SocketId(0));
        assert!(!p.poll_persist(&mut batch), "nothing held, no batch");
        // Two turns, each with one REGISTER, cut before either completes.
        for i in 0..2 {
            p.handle_message(Instant::ZERO, reg(i).as_bytes(), &src, &mut out);
            assert!(p.poll_persist(&mut batch));
        }
        assert!(
            out.is_empty(),
            "nothing answered before the store completes"
        );
        p.persisted(Instant::ZERO, true, &mut out);
        let first: Vec<String> = out
            .items()
            .iter()
            .map(|t| String::from_utf8_lossy(out.bytes(t)).into_owned())
            .collect();
        assert_eq!(first.len(), 1, "{first:#?}");
        assert_eq!(status(&first[0]), 200);
        assert!(first[0].contains("Call-ID: fifo0"), "{first:#?}");
        out.clear();
        p.persisted(Instant::ZERO, false, &mut out);
        let second: Vec<String> = out
            .items()
            .iter()
            .map(|t| String::from_utf8_lossy(out.bytes(t)).into_owned())
            .collect();
        assert_eq!(second.len(), 1, "{second:#?}");
        assert_eq!(status(&second[0]), 500);
        assert!(second[0].contains("Call-ID: fifo1"), "{second:#?}");
    }

    /// Which REGISTERs the registrar gets: for a served domain or for this
    /// proxy's own address (with a served AoR), also through us as the
    /// outbound proxy (a Route naming only us: regression, those went
    /// upstream and got 404); the others are proxied.
    #[test]
    fn register_for_us_reaches_the_registrar_also_through_our_route() {
        let cases = [
            ("sip:example.test", "", "alice@example.test", true),
            (
                "sip:example.test",
                "Route: <sip:127.0.0.1:5060;lr>\r\n",
                "alice@example.test",
                true,
            ),
            ("sip:127.0.0.1:5060", "", "alice@example.test", true),
            (
                "sip:127.0.0.1",
                "Route: <sip:127.0.0.1;lr>\r\n",
                "alice@example.test",
                true,
            ),
            (
                "sip:example.test",
                "Route: <sip:192.0.2.30:5060;lr>\r\n",
                "alice@example.test",
                false,
            ),
            (
                "sip:example.test",
                "Route: <sip:127.0.0.1:5060;lr>, <sip:192.0.2.30:5060;lr>\r\n",
                "alice@example.test",
                false,
            ),
            ("sip:other.example", "", "alice@other.example", false),
            ("sip:127.0.0.1:5060", "", "alice@other.example", false),
        ];
        for (i, (ruri, route, aor, registrar)) in cases.into_iter().enumerate() {
            let cfg = Config {
                upstream: Some(UPSTREAM.parse().unwrap()),
                ..Config::default()
            };
            let mut p = Stateful::new(
                identity(),
                cfg,
                FixedLocation(Vec::new()),
                CountingRegistry::default(),
            );
            let mut out = Outbox::new(1 << 20, 64);
            let reg = format!(
                "REGISTER {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {UAC};branch=z9hG4bKreg{i}\r\n{route}Max-Forwards: 70\r\n\
To: <sip:{aor}>\r\nFrom: <sip:{aor}>;tag=r\r\nCall-ID: reg{i}\r\nCSeq: 1 REGISTER\r\n\
Contact: <sip:alice@{UAC}>\r\nContent-Length: 0\r\n\r\n"
            );
            p.handle_message(
                Instant::ZERO,
                reg.as_bytes(),
                &Peer::udp(UAC.parse().unwrap(), SocketId(0)),
                &mut out,
            );
            p.persisted(Instant::ZERO, true, &mut out);
            let sent: Vec<(String, String)> = out
                .items()
                .iter()
                .map(|t| {
                    (
                        t.peer.remote.to_string(),
                        String::from_utf8_lossy(out.bytes(t)).into_owned(),
                    )
                })
                .collect();
            assert_eq!(
                p.registry.0,
                usize::from(registrar),
                "{ruri} {route} {aor}: {sent:#?}"
            );
            assert_eq!(sent.len(), 1, "{ruri} {route}: {sent:#?}");
            if registrar {
                assert_eq!((sent[0].0.as_str(), status(&sent[0].1)), (UAC, 200));
            } else {
                assert!(sent[0].1.starts_with("REGISTER "), "proxied: {sent:#?}");
                assert_ne!(sent[0].0, UAC);
            }
        }
    }
}
