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
//! Where it lives: the phases of a new request in `request` (one
//! function each, in the order a request meets them), responses and the
//! response context in `response`, timers in `timer`, the local-service
//! seam in `local`; the transaction table is [`crate::txn::table`].
//!
//! Memory: a transaction keeps the request and each forwarded copy only
//! while something may need them (retransmission, ACK, CANCEL, a local
//! final response); once final, it shrinks to its state and the response it
//! may have to replay. The table is bounded ([`Config::max_transactions`]).

use core::net::SocketAddr;

use std::collections::VecDeque;
use std::sync::Arc;

use crate::location::{AorKey, PartitionState, Record};
use crate::routing::dispatcher::Dispatcher;
use crate::sip::{
    self, emit, Edits, Essentials, HeaderIndex, HeaderName, MaxForwardsEdit, Message, Method,
    NewVia, ParseConfig, Received, ResponseSpec, Via,
};
use crate::time::Instant;
use crate::transport::{stun, FlowId, Outbox, Peer, SocketId, Transport};
use crate::txn::key::{server_key, KeyMethod};
use crate::txn::table::Table;
use crate::txn::{
    Action, Arm, InviteClient, InviteClientState, InviteServer, InviteServerState, NonInviteClient,
    NonInviteClientState, NonInviteServer, NonInviteServerState, TimerConfig, TimerName,
};
use crate::wheel::Wheel;

use super::branch::{self, Branch, TxnRef};
use super::guard::Guard;
use super::{flow, reject, route, stateless, stun_keepalive, Counters, Identity, Service};

mod dispatch;
mod local;
mod request;
mod response;
mod timer;

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
    /// The upstream's transport.
    pub upstream_transport: Transport,
    /// Record-Route dialog-creating requests (on by default).
    pub record_route: bool,
    /// RFC 3261 §18.1.1: a request over 1300 bytes for a UDP target goes
    /// over TCP (513 without a TCP listener). Off: it goes over UDP.
    pub large_requests_over_tcp: bool,
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
    /// The records go to a store other nodes read (Redis): a binding over a
    /// connection is written there with a Path through this node (its
    /// public UDP address, the flow's token in the user part; RFC 5626
    /// §5.3), so other nodes reach the UA through the connection it keeps here.
    pub shared_store: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            upstream: None,
            upstream_transport: Transport::Udp,
            record_route: true,
            large_requests_over_tcp: false,
            timers: TimerConfig::default(),
            max_transactions: 1 << 20,
            max_forks: 16,
            retry_after: 5,
            parse: ParseConfig::default(),
            shared_store: false,
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

/// A local service: requests for a served domain (no Route left) that the
/// edge answers itself instead of routing them — the registrar today,
/// presence next. Like the registrar, a service is partitioned: each request
/// has an owner shard, and the proxy hands it there over the mesh.
///
/// ```text
///  request ─► serves(method)? ─► for us (served domain, no Route left)? ─► owner(msg)
///     Here ─► handle_request ─► response held until drain_records are durable ─► sent
///     Shard(n) ─► handed to shard n       Nobody ─► routed like any request
///  poll_request ─► the proxy adds its Via and runs a client transaction (§17.1.2)
///     └─► handle_outcome(token, final status; 408 when none came)
/// ```
pub trait LocalService {
    /// True for the methods this service answers (asked first: it is cheap).
    fn serves(&self, method: Method) -> bool;

    /// Which shard's instance owns request `msg`.
    /// `aor` is the AoR key of the To (`AorKey::from_uri` of its URI),
    /// when it has one: the proxy computes it once for the service.
    fn owner(&self, msg: &Message<'_>, ess: &Essentials<'_>, aor: Option<&AorKey>) -> Owner;

    /// Handles a request this shard owns, writing the whole response into
    /// `reply`; returns (length, status), `None` if it wrote nothing. `ess`
    /// are the message's essentials, decoded by the proxy's check phase,
    /// and `aor` the AoR key of its To, as [`LocalService::owner`] got it
    /// (a service does not parse them again).
    #[allow(clippy::too_many_arguments)]
    fn handle_request(
        &mut self,
        now: Instant,
        wall_us: u64,
        msg: &Message<'_>,
        ess: &Essentials<'_>,
        aor: Option<&AorKey>,
        src: &Peer,
        reply: &mut [u8],
    ) -> Option<(usize, u16)>;

    /// Moves the change records made since the last call into `out`.
    fn drain_records(&mut self, out: &mut Vec<Record>) {
        let _ = out;
    }

    /// A change another node made (from the shared store's stream), for
    /// this shard's partition: applied and re-emitted as a `remote` record.
    fn apply_remote(&mut self, now: Instant, wall_us: u64, commit: u64, op: &crate::location::Op) {
        let _ = (now, wall_us, commit, op);
    }

    /// The shared store lost its data: write every binding held again.
    fn reseed(&mut self, wall_us: u64) {
        let _ = wall_us;
    }

    /// Binding expiries.
    fn handle_timeout(&mut self, now: Instant, wall_us: u64) {
        let _ = (now, wall_us);
    }

    /// When [`LocalService::handle_timeout`] has something to do.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// This registrar's whole partition (for compaction and replica resync).
    fn state(&self) -> Option<PartitionState> {
        None
    }

    /// The connection `flow` (of any shard) closed: drop what was bound to it.
    fn handle_flow_closed(&mut self, now: Instant, wall_us: u64, flow: FlowId) {
        let _ = (now, wall_us, flow);
    }

    /// An operator removes every binding of `aor` (the AoR key) from this
    /// partition; how many were removed.
    fn remove_aor(&mut self, now: Instant, wall_us: u64, aor: &[u8]) -> usize {
        let _ = (now, wall_us, aor);
        0
    }

    /// A request this service originates (a NOTIFY), written whole into
    /// `buf` without a Via (the proxy adds its own, with the branch of the
    /// client transaction it runs for it). Asked after every
    /// [`LocalService::handle_timeout`]; report queued requests through
    /// [`LocalService::poll_timeout`].
    fn poll_request(&mut self, buf: &mut [u8]) -> Option<Originated> {
        let _ = buf;
        None
    }

    /// The final status of the originated request `token` (408 when none came).
    fn handle_outcome(&mut self, now: Instant, token: u64, status: u16) {
        let _ = (now, token, status);
    }

    /// Which shard keeps a MESSAGE for `aor`, a served user with no
    /// contact, when this service stores such messages; `None`: it does not
    /// (the sender gets 480).
    fn offline_owner(&self, msg: &Message<'_>, aor: &[u8]) -> Option<Owner> {
        let _ = (msg, aor);
        None
    }

    /// Handles a MESSAGE [`LocalService::offline_owner`] gave this shard,
    /// like [`LocalService::handle_request`].
    #[allow(clippy::too_many_arguments)]
    fn handle_offline(
        &mut self,
        now: Instant,
        wall_us: u64,
        msg: &Message<'_>,
        ess: &Essentials<'_>,
        src: &Peer,
        reply: &mut [u8],
    ) -> Option<(usize, u16)> {
        let _ = (now, wall_us, msg, ess, src, reply);
        None
    }

    /// The oldest batch of records taken by `drain_records` is durable (or
    /// failed to be, `ok` false); `records` false for a batch that had none.
    fn handle_persisted(&mut self, ok: bool, records: bool) {
        let _ = (ok, records);
    }

    /// Presence's watcher rules were reloaded (SIGHUP).
    fn set_watchers(&mut self, rules: &crate::proxy::guard::Watchers) {
        let _ = rules;
    }

    /// Copies the service's counters into the proxy's (once per turn).
    fn export(&self, counters: &mut Counters) {
        let _ = counters;
    }
}

/// A request a [`LocalService`] originates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Originated {
    /// Where it goes (a flow, for a UA reached over its connection).
    pub to: Peer,
    /// Its length in the buffer.
    pub len: usize,
    /// What [`LocalService::handle_outcome`] names it by.
    pub token: u64,
}

/// No registrar: REGISTERs are proxied like other requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoService;

impl LocalService for NoService {
    fn serves(&self, _: Method) -> bool {
        false
    }

    fn owner(&self, _: &Message<'_>, _: &Essentials<'_>, _: Option<&AorKey>) -> Owner {
        Owner::Nobody
    }

    fn handle_request(
        &mut self,
        _: Instant,
        _: u64,
        _: &Message<'_>,
        _: &Essentials<'_>,
        _: Option<&AorKey>,
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
    /// A connection of the sender's closed: each registrar partition drops
    /// the bindings made over it.
    FlowClosed(FlowId),
    /// A BYE ended the dialog with this Call-ID hash: the shard whose
    /// dispatcher counts it as a call in progress releases it.
    DialogEnded(u64),
    /// A request for the receiver's local service, already checked,
    /// admitted and authorized by the sender (a MESSAGE to be stored for a
    /// user with no contact).
    Local {
        /// The request.
        bytes: Box<[u8]>,
        /// Where it came from.
        src: Peer,
    },
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
    /// No server transaction: a request a local service originated; its
    /// final status goes back to the service under this token.
    Local(u64),
    /// No server transaction: a dispatcher's OPTIONS probe; its final
    /// status goes back to the dispatcher under this token.
    Probe(u64),
}

impl Server {
    fn terminated(&self) -> bool {
        match self {
            Self::Invite(s) => s.state() == InviteServerState::Terminated,
            Self::NonInvite(s) => s.state() == NonInviteServerState::Terminated,
            Self::Local(_) | Self::Probe(_) => true,
        }
    }

    fn can_send(&self, code: u16) -> bool {
        match self {
            Self::Invite(s) => s.can_send(code),
            Self::NonInvite(s) => s.can_send(),
            Self::Local(_) | Self::Probe(_) => true,
        }
    }

    fn on_send(&mut self, now: Instant, code: u16) -> Arm {
        match self {
            Self::Invite(s) => s.on_send(now, code),
            Self::NonInvite(s) => s.on_send(now, code),
            Self::Local(_) | Self::Probe(_) => Arm::NONE,
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
    /// The dispatcher destination (set, destination) it went to.
    dest: Option<(u16, u16)>,
    /// It counts as a call in progress on `dest` (an INVITE not final yet).
    loaded: bool,
    /// A hunt group's ring_timeout cancelled it: its end moves the call on.
    rang_out: bool,
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
    /// When the request arrived, until the first response other than 100
    /// Trying goes back for it (`None` for the edge's own requests).
    started: Option<Instant>,
    /// Routed by a dispatcher set: (set, hash key), for failover.
    dispatch: Option<(u16, u64)>,
    /// The routing hooks' context of this request.
    ctx: Option<Box<dyn core::any::Any + Send>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerTarget {
    Server,
    Fork(u8),
    Cancel(u8),
    /// A dispatched fork's `fork_timeout`: no response at all by then is a
    /// failed destination (408), and the request moves on.
    NoAnswer(u8),
}

#[derive(Debug, Clone, Copy)]
struct TimerItem {
    slot: u32,
    gen: u32,
    target: TimerTarget,
    name: TimerName,
    at: Instant,
}

const SCRATCH: usize = crate::transport::MAX_DATAGRAM;

/// How far ahead a fork's Timer C is checked (see `arm_timer_c`).
const TIMER_C_CHECK: crate::time::Duration = crate::time::Duration::from_secs(4);

/// The largest request sent over UDP to a peer whose path MTU is unknown
/// (RFC 3261 §18.1.1); larger ones go over TCP.
const UDP_MAX_REQUEST: usize = 1300;

/// The stateful proxy of one shard.
pub struct Stateful<L: Location = NoLocation, S: LocalService = NoService> {
    id: Identity,
    cfg: Config,
    relay: stateless::Config,
    index: Option<HeaderIndex>,
    index2: Option<HeaderIndex>,
    counters: Counters,
    txns: Table<Txn>,
    wheel: Wheel<TimerItem>,
    fired: Vec<TimerItem>,
    /// Final statuses of originated requests, for the local service
    /// (`false`) or the dispatcher's probes (`true`).
    outcomes: Vec<(bool, u64, u16)>,
    /// Scratch: a request a local service originates.
    originated: Vec<u8>,
    targets: Targets,
    scratch: Vec<u8>,
    /// Where the location service lives.
    pub location: L,
    /// Where REGISTERs for served domains go.
    pub local: S,
    wall_us: u64,
    /// Datagrams and stream messages the last turn took in.
    backlog: usize,
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
    /// Request arrival to first response (other than 100 Trying) sent back, µs.
    response_time: hdrhistogram::Histogram<u64>,
    /// Policy, authentication, flood and overload checks.
    pub guard: Guard,
    /// Dispatcher sets.
    pub dispatcher: Dispatcher,
    /// The route phase's dispatcher choice for the request being handled:
    /// (set, destination, hash key), taken by the forward phase.
    dispatched: Option<(u16, u16, u64)>,
    /// With `dispatched`: the destination (member) of each target, when
    /// they differ (a hunt group member's contacts, ring-all).
    target_dests: Vec<u16>,
    /// With `dispatched`: the request may move on to another destination
    /// (false for a direct call to a hunt-group member: only counted).
    dispatch_moves: bool,
    /// Routing hooks of an embedding program.
    hooks: Option<Box<dyn crate::proxy::hooks::DynHooks>>,
    /// The hooks' context of the request being handled, until forwarded.
    pending_ctx: Option<Box<dyn core::any::Any + Send>>,
}

/// A histogram of µs from 1 µs to 60 s at 2 significant digits.
#[allow(clippy::expect_used)]
fn lag_histogram() -> hdrhistogram::Histogram<u64> {
    // INVARIANT: constant bounds that hdrhistogram accepts (low ≥ 1, high ≥ 2·low, sigfig ≤ 5).
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds")
}

/// Most mesh messages queued for sending before handing over fails with 503.
const MESH_OUT_MAX: usize = 65_536;

impl<L: Location, S: LocalService> Stateful<L, S> {
    /// A stateful proxy for the shard `id`.
    pub fn new(id: Identity, cfg: Config, location: L, local: S) -> Self {
        let relay = stateless::Config {
            upstream: cfg.upstream,
            upstream_transport: cfg.upstream_transport,
            record_route: false,
            parse: cfg.parse.clone(),
        };
        Self {
            index: Some(HeaderIndex::new(cfg.parse.clone())),
            index2: Some(HeaderIndex::new(cfg.parse.clone())),
            id,
            relay,
            counters: Counters::default(),
            txns: Table::new(),
            wheel: Wheel::new(Instant::ZERO),
            fired: Vec::new(),
            outcomes: Vec::new(),
            originated: vec![0u8; SCRATCH],
            targets: Targets::default(),
            scratch: vec![0u8; SCRATCH],
            location,
            local,
            wall_us: 0,
            backlog: 0,
            shards: 1,
            held: Vec::new(),
            persisting: VecDeque::new(),
            mesh_out: VecDeque::new(),
            lag: lag_histogram(),
            response_time: lag_histogram(),
            guard: Guard::open(),
            dispatcher: Dispatcher::default(),
            dispatched: None,
            target_dests: Vec::new(),
            dispatch_moves: false,
            hooks: None,
            pending_ctx: None,
            cfg,
        }
    }

    /// Sets the routing hooks (an embedding program's, see [`crate::proxy::hooks`]).
    pub fn with_hooks(mut self, hooks: Box<dyn crate::proxy::hooks::DynHooks>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// Sets the dispatcher sets.
    pub fn with_dispatcher(mut self, sets: &[crate::routing::dispatcher::SetConfig]) -> Self {
        self.dispatcher = Dispatcher::new(sets, Instant::ZERO);
        self
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
        self.txns.live()
    }

    /// The live transactions, one line each (method, states, forks): for
    /// fuzzers' and tests' failure messages.
    pub fn describe_transactions(&self) -> Vec<String> {
        self.txns
            .values()
            .map(|t| {
                let forks: Vec<String> = t
                    .forks
                    .iter()
                    .map(|f| {
                        format!(
                            "fork to {} final {:?} terminated {} cancel {} timer_c {:?} loaded {}",
                            f.to.remote,
                            f.final_code,
                            f.client.terminated(),
                            f.cancel.as_ref().map_or("none", |c| {
                                if c.0.state() == NonInviteClientState::Terminated {
                                    "ended"
                                } else {
                                    "live"
                                }
                            }),
                            f.timer_c,
                            f.loaded
                        )
                    })
                    .collect();
                format!(
                    "{:?} key {:x} server {:?} final_sent {} cancelled {} best {:?} forks [{}]",
                    t.method,
                    t.key,
                    t.server,
                    t.final_sent,
                    t.cancelled,
                    t.best.as_ref().map(|b| b.0),
                    forks.join("; ")
                )
            })
            .collect()
    }

    /// Timers on the wheel (live and stale ones not yet fired).
    pub fn timers(&self) -> usize {
        self.wheel.len()
    }

    /// Who this proxy is.
    pub fn identity(&self) -> &Identity {
        &self.id
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
            Ok(()) => self.counters.count_local_response(code),
            Err(_) => self.counters.dropped_overflow += 1,
        }
    }

    /// The copy of `r` other nodes get (see [`Config::shared_store`]): a
    /// binding over one of this node's connections, with no Path of its own,
    /// gets a Path to this node naming the flow, and no flow.
    fn for_other_nodes(&self, r: &Record) -> Record {
        let crate::location::Op::Upsert(b) = &r.op else {
            return r.clone();
        };
        if r.remote || b.flow() == 0 || !b.path().is_empty() {
            return r.clone();
        }
        let Some(sock) =
            self.id.sockets.iter().find(|s| {
                s.transport == Transport::Udp && s.role == crate::proxy::SocketRole::Public
            })
        else {
            return r.clone();
        };
        let mut uri = [0u8; 256];
        let uri = flow::rr_uri(self.id.secret, sock, FlowId(b.flow()), &mut uri);
        if uri.is_empty() {
            return r.clone();
        }
        // The flow's own transport rides in `ft` (route::flow_transport).
        let ft = self
            .id
            .sockets
            .get(usize::from(b.socket().0))
            .map_or(Transport::Udp, |s| s.transport);
        let mut path = Vec::with_capacity(uri.len() + 16);
        path.push(b'<');
        path.extend_from_slice(uri);
        path.extend_from_slice(b";ob;ft=");
        path.extend_from_slice(ft.param().as_bytes());
        path.push(b'>');
        let parts = crate::location::BindingParts {
            id: b.id(),
            aor: b.aor(),
            contact: b.contact(),
            expires: b.expires(),
            q: b.q(),
            call_id: b.call_id(),
            cseq: b.cseq(),
            received: b.received(),
            socket: SocketId(0),
            flow: 0,
            path: &path,
            instance: b.instance(),
            reg_id: b.reg_id(),
            user_agent: b.user_agent(),
        };
        match crate::location::Binding::new(&parts) {
            Ok(shared) => Record {
                partition: r.partition,
                seq: r.seq,
                commit: r.commit,
                op: crate::location::Op::Upsert(shared),
                remote: false,
            },
            Err(_) => r.clone(),
        }
    }

    /// Records, once per transaction, how long its request waited for the
    /// response now being sent back.
    fn answered(&mut self, now: Instant, txn: &mut Txn) {
        if let Some(t0) = txn.started.take() {
            let _ = self
                .response_time
                .record(now.saturating_since(t0).as_micros().max(1));
        }
    }

    fn send(&mut self, out: &mut Outbox, to: Peer, bytes: &[u8]) {
        if out.push(to, bytes).is_err() {
            self.counters.dropped_overflow += 1;
        }
    }

    fn alloc(&mut self) -> (u32, u32) {
        self.txns.alloc()
    }

    fn take(&mut self, slot: u32) -> Option<Txn> {
        self.txns.take(slot)
    }

    fn put(&mut self, slot: u32, txn: Txn) {
        self.txns.put(slot, txn);
    }

    /// Frees the context once its server transaction and every client
    /// transaction (and CANCEL) are over.
    fn maybe_free(&mut self, slot: u32) {
        let done = self.txns.get(slot).is_some_and(|t| {
            t.server.terminated()
                && t.forks.iter().all(|f| {
                    f.client.terminated()
                        && f.cancel.as_deref().is_none_or(|(c, _)| {
                            matches!(
                                c.state(),
                                NonInviteClientState::Completed | NonInviteClientState::Terminated
                            )
                        })
                })
        });
        if !done {
            return;
        }
        if let Some(key) = self.txns.get(slot).map(|t| t.key) {
            self.txns.release(slot, key);
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

impl<L: Location, S: LocalService> Service for Stateful<L, S> {
    fn handle_message(&mut self, now: Instant, data: &[u8], src: &Peer, out: &mut Outbox) {
        let src = *src;
        if data.iter().all(|&b| b == b'\r' || b == b'\n') {
            self.counters.keepalives += 1;
            return;
        }
        if stun::is_stun(data) {
            return stun_keepalive(&mut self.counters, data, &src, out);
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
                self.counters.count_request(msg.method());
                self.on_request(now, &msg, src, out);
            }
            Ok(msg) => {
                self.counters.count_response(msg.status());
                self.on_response(now, &msg, src, out);
            }
            Err(e) => {
                self.counters.parse_errors += 1;
                let mut code = 0;
                let sent = out.push_with(src, |buf| {
                    let n = reject::error_response(data, e, buf)?
                        .ok_or(sip::EmitError::MissingHeader)?;
                    code = reject::status_of(buf);
                    Ok(n)
                });
                match sent {
                    Ok(()) => self.counters.count_local_response(code),
                    Err(_) => self.counters.dropped_malformed += 1,
                }
            }
        }
        self.index = Some(idx);
    }

    fn handle_timeout(&mut self, now: Instant, out: &mut Outbox) {
        if self.local.poll_timeout().is_some_and(|t| t <= now) {
            self.local.handle_timeout(now, self.wall_us);
        }
        if self.dispatcher.poll_timeout().is_some_and(|t| t <= now) {
            self.dispatcher.handle_timeout(now);
        }
        let mut fired = core::mem::take(&mut self.fired);
        self.wheel.expire(now, |_, item| fired.push(item));
        for item in fired.drain(..) {
            self.on_timer(now, item, out);
        }
        self.fired = fired;
        self.originate(now, out);
        self.report_outcomes(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if !self.outcomes.is_empty() {
            // Outcomes of originated requests wait for the service: at once.
            return Some(Instant::ZERO);
        }
        [
            self.wheel.next_deadline(),
            self.local.poll_timeout(),
            self.dispatcher.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn poll_persist(&mut self, batch: &mut Vec<Record>) -> bool {
        let mut records = Vec::new();
        self.local.drain_records(&mut records);
        if records.is_empty() && self.held.is_empty() {
            return false;
        }
        if self.cfg.shared_store {
            batch.extend(records.iter().map(|r| self.for_other_nodes(r)));
        } else {
            batch.extend(records.iter().cloned());
        }
        self.persisting
            .push_back((core::mem::take(&mut self.held), records));
        true
    }

    fn persisted(&mut self, now: Instant, ok: bool, out: &mut Outbox) {
        self.release(now, ok, out);
    }

    fn handle_flow_closed(&mut self, now: Instant, flow: FlowId) {
        // Every partition may hold bindings over this connection.
        for to in 0..usize::from(self.shards) {
            if to == usize::from(self.id.shard_id) {
                self.local.handle_flow_closed(now, self.wall_us, flow);
            } else if self.mesh_out.len() < MESH_OUT_MAX {
                self.mesh_out.push_back((to, MeshMsg::FlowClosed(flow)));
            } else {
                self.counters
                    .shed(crate::policy::overload::ShedReason::MeshFull);
            }
        }
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
                    self.observe_presence(r);
                    if let Err(p) = self.location.apply(r) {
                        self.request_resync(p);
                        break;
                    }
                }
            }
            MeshMsg::Resync { partition, to } => {
                if let Some(state) = self.local.state().filter(|s| s.partition == partition) {
                    self.mesh_out
                        .push_back((usize::from(to), MeshMsg::State(Arc::new(state))));
                }
            }
            MeshMsg::State(state) => self.location.install(&state),
            MeshMsg::FlowClosed(flow) => self.local.handle_flow_closed(now, self.wall_us, flow),
            MeshMsg::DialogEnded(call) => {
                self.dispatcher.dialog_ended(call);
            }
            MeshMsg::Local { bytes, src } => {
                let Some(mut idx) = self.index.take() else {
                    return;
                };
                if let Ok(msg) = sip::parse(&bytes, &mut idx) {
                    if let Ok(ess) = msg.essentials() {
                        self.counters.handed_in += 1;
                        let key = server_key(
                            self.id.secret,
                            &msg,
                            &ess.top_via,
                            KeyMethod::of(msg.method()),
                        );
                        match self.txns.find(key) {
                            Some(slot) => self.on_retransmission(slot, out),
                            None => self.local_here(now, &msg, &ess, None, key, src, true, out),
                        }
                    }
                }
                self.index = Some(idx);
            }
            // A send on a connection this shard owns: the shard loop takes
            // stream transmits from the outbox to their connections.
            MeshMsg::Transmit { peer, bytes } => self.send(out, peer, &bytes),
        }
    }

    fn replication_lag(&self) -> Option<&hdrhistogram::Histogram<u64>> {
        Some(&self.lag)
    }

    fn reseed(&mut self, _now: Instant) {
        self.local.reseed(self.wall_us);
    }

    fn handle_remote(&mut self, now: Instant, records: Vec<Record>) {
        for r in &records {
            self.local.apply_remote(now, self.wall_us, r.commit, &r.op);
        }
    }

    fn response_time(&self) -> Option<&hdrhistogram::Histogram<u64>> {
        Some(&self.response_time)
    }

    fn partition_state(&self) -> Option<PartitionState> {
        self.local.state()
    }

    fn control(&mut self, now: Instant, q: &crate::proxy::Control) -> crate::proxy::ControlAnswer {
        use crate::proxy::{Control, ControlAnswer};
        match q {
            Control::Bindings(aor) => self.local.state().map_or(ControlAnswer::NotHere, |st| {
                ControlAnswer::Bindings(
                    st.bindings
                        .into_iter()
                        .filter(|b| aor.as_deref().is_none_or(|a| b.aor() == a))
                        .collect(),
                )
            }),
            Control::RemoveAor(aor) => {
                ControlAnswer::Removed(self.local.remove_aor(now, self.wall_us, aor))
            }
            Control::FloodBans => self
                .guard
                .flood
                .as_ref()
                .map_or(ControlAnswer::NotHere, |f| ControlAnswer::Bans(f.bans(now))),
            Control::Dispatcher if self.dispatcher.is_empty() => ControlAnswer::NotHere,
            Control::Dispatcher => ControlAnswer::Dispatcher(self.dispatcher.status()),
            Control::DispatcherSetState(set, uri, state) => {
                ControlAnswer::StateSet(self.dispatcher.set_state(set, uri, *state))
            }
            Control::Unban(ip) => self
                .guard
                .flood
                .as_mut()
                .map_or(ControlAnswer::NotHere, |f| {
                    ControlAnswer::Unbanned(f.unban(now, *ip))
                }),
        }
    }

    fn handle_backlog(&mut self, received: usize) {
        self.backlog = received;
    }

    fn handle_turn(&mut self, now: Instant, wall_us: u64) {
        self.wall_us = wall_us;
        self.dispatcher.set_now(now);
        self.local.export(&mut self.counters);
        if self.guard.refresh(wall_us) {
            if let Some(w) = self.guard.watchers.clone() {
                self.local.set_watchers(&w);
            }
        }
        self.counters.transactions_live = self.txns.live() as u64;
        self.counters.timers_live = self.wheel.len() as u64;
        if let Some(a) = &self.guard.auth {
            self.counters.auth.clone_from(a.counters());
        }
        if let Some(o) = &mut self.guard.overload {
            o.handle_turn(
                now,
                Load {
                    queue_depth: self.backlog,
                    live_transactions: self.txns.live(),
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
mod sim_tests;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod presence_tests;
