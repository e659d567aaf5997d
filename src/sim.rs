//! Deterministic simulation: a virtual network and clock that run the
//! sans-IO proxy and scripted user agents in memory (after quinn's `Pair`
//! and smoltcp's netsim / fault injector).
//!
//! ```text
//!            ┌──────────── Sim: one clock, one seeded Rng ─────────────┐
//!  Uac ──► Faults(link) ──► queue (deliver_at, seq) ──► proxy: Service ──► Outbox ──► Faults ──► Uas
//!   ▲                            │ step(): the earliest packet or timer                    │
//!   └──────────── responses ◄────┴──────────────── (poll_timeout of every node) ◄──────────┘
//! ```
//!
//! - [`Sim`] owns the proxy under test (any [`Service`]), the [`Agent`]s
//!   (scripted UAs: [`Uac`], [`Uas`], or a test's own), a virtual clock
//!   ([`Instant`]) and one seeded [`Rng`].
//! - Every datagram crosses a link whose [`Faults`] decide its fate: loss,
//!   duplication, latency and a random extra delay (jitter, which reorders).
//! - [`Sim::step`] delivers the earliest packet or fires the earliest timer
//!   (the proxy's [`Service::poll_timeout`] or an agent's) and jumps the
//!   clock to it; [`Sim::run_until_idle`] is always bounded.
//! - Everything that crosses the network is kept in a trace of [`Record`]s
//!   (time, fate, from, to, bytes), which is what tests assert on.
//! - Every datagram the proxy emits must parse ([`sip::parse`]); the harness
//!   checks it for each one and panics (with the seed) when one does not.
//!
//! Seeds: tests loop over [`seeds`]`(n)`; `SIPEDGE_SEED=n` replays just seed
//! `n`, and `SIPEDGE_SEEDS=m` soaks over `0..m` instead. A panic while a
//! [`Sim`] is alive prints its seed and the tail of its trace, and
//! [`for_each_seed`] prints the seed of any failing iteration
//! (`SIPEDGE_TRACE=all` prints the whole trace).
//!
//! Why our own RNG ([`Rng`], xoshiro256** seeded through SplitMix64) and not
//! ChaCha from `rand_chacha`: the simulation needs reproducibility, not
//! cryptographic strength; twenty lines keep the harness free of a
//! dependency whose output stream could change with a major version, and the
//! same seed gives the same run on every platform.
//!
//! The user agents follow RFC 3261 over UDP and use the crate's own
//! transaction machines ([`crate::txn`]) for their retransmissions, so a
//! lossy network is survivable:
//! - [`Uac`]: INVITE, then ACK of a non-2xx final inside the transaction
//!   (§17.1.1.3); for each 2xx a dialog, an ACK of its own (§13.2.2.4)
//!   resent for each retransmission of that 2xx, and a BYE after a hold (at
//!   once for the extra dialogs of a fork); CANCEL at a scripted time, held
//!   until a provisional response has arrived (§9.1).
//! - [`Uas`]: optional 100, ringing, then a final response after a delay (or
//!   never); 200 to CANCEL and 487 to the INVITE (§9.2); its 2xx
//!   retransmitted with T1 doubling to T2 until the ACK comes (§13.3.1.4);
//!   200 to BYE. Responses go where the top Via says (§18.2.2).
//!
//! Contract: test-only code (behind `cfg(test)` or the `sim` feature); it
//! allocates freely and panics on a broken invariant, by design.

use core::net::SocketAddr;
use std::any::Any;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::marker::PhantomData;
use std::rc::Rc;

use crate::proxy::route;
use crate::proxy::Service;
use crate::sip::{
    self, HeaderIndex, HeaderName, Message, Method, NameAddr, Received, ResponseSpec, Uri,
};
use crate::time::{Duration, Instant};
use crate::transport::{Outbox, Peer, SocketId};
use crate::txn::{
    Action, Arm, InviteClient, InviteServer, InviteServerState, NonInviteClient, NonInviteServer,
    TimerConfig, TimerName,
};

// ---------------------------------------------------------------------------
// Seeds and randomness

/// The seeds a test should run: `0..n`; `0..SIPEDGE_SEEDS` when that is set
/// (a longer soak); only `SIPEDGE_SEED` when that is set (a replay).
pub fn seeds(n: u64) -> impl Iterator<Item = u64> {
    let var = |name| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let (lo, hi) = match (var("SIPEDGE_SEED"), var("SIPEDGE_SEEDS")) {
        (Some(s), _) => (s, s + 1),
        (None, Some(m)) => (0, m),
        (None, None) => (0, n),
    };
    lo..hi
}

/// Runs `f` for each of [`seeds`]`(n)`; a failing seed is printed (with how
/// to replay it) before the panic goes on.
pub fn for_each_seed(n: u64, mut f: impl FnMut(u64)) {
    for seed in seeds(n) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(seed)));
        if let Err(e) = r {
            eprintln!("sim: seed {seed} failed; replay it with SIPEDGE_SEED={seed}");
            std::panic::resume_unwind(e);
        }
    }
}

/// A small, fast, seedable generator: xoshiro256** whose state is filled by
/// SplitMix64 from the seed (the seeding its authors recommend).
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator for `seed`; equal seeds give equal streams.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut split = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Self {
            s: [split(), split(), split(), split()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = &mut self.s;
        let out = s1.wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = *s1 << 17;
        *s2 ^= *s0;
        *s3 ^= *s1;
        *s1 ^= *s2;
        *s0 ^= *s3;
        *s2 ^= t;
        *s3 = s3.rotate_left(45);
        out
    }

    /// A uniform number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Lemire's multiply-shift; the tiny bias is irrelevant here.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo).saturating_add(1))
    }

    /// A uniform float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// A uniform duration in `0..=max`.
    pub fn duration(&mut self, max: Duration) -> Duration {
        Duration::from_micros(self.range(0, max.as_micros()))
    }

    /// One element of `items` (panics when empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let i = self.below(items.len() as u64) as usize;
        &items[i]
    }
}

// ---------------------------------------------------------------------------
// Links

/// What a link does to each datagram (smoltcp's fault injector): each copy is
/// lost with probability `loss`; with probability `duplicate` the datagram is
/// sent `1 + copies` times; each copy arrives after `latency` plus a uniform
/// random `0..=jitter` (so later datagrams can overtake earlier ones).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Probability that one copy is lost.
    pub loss: f64,
    /// Probability that a datagram is duplicated.
    pub duplicate: f64,
    /// Extra copies of a duplicated datagram.
    pub copies: u8,
    /// Fixed one-way delay.
    pub latency: Duration,
    /// Largest random extra delay of one copy (reordering).
    pub jitter: Duration,
}

impl Faults {
    /// A perfect link with 1 ms of latency.
    pub const NONE: Self = Self {
        loss: 0.0,
        duplicate: 0.0,
        copies: 1,
        latency: Duration::from_millis(1),
        jitter: Duration::ZERO,
    };

    /// Random faults drawn from `rng`: loss up to `max_loss`, duplication up
    /// to `max_dup`, jitter up to `max_jitter`, latency 1–20 ms.
    pub fn random(rng: &mut Rng, max_loss: f64, max_dup: f64, max_jitter: Duration) -> Self {
        Self {
            loss: rng.unit() * max_loss,
            duplicate: rng.unit() * max_dup,
            copies: 1,
            latency: Duration::from_millis(rng.range(1, 20)),
            jitter: rng.duration(max_jitter),
        }
    }
}

impl Default for Faults {
    fn default() -> Self {
        Self::NONE
    }
}

/// A node of the simulation: the proxy is [`NodeId::PROXY`]; agents follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

impl NodeId {
    /// The proxy under test.
    pub const PROXY: Self = Self(0);
}

// ---------------------------------------------------------------------------
// Agents

/// A datagram an agent sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Where it goes.
    pub dest: SocketAddr,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// A scripted endpoint: sans-IO like the proxy, on one address.
pub trait Agent: Any {
    /// The agent's address (one UDP socket).
    fn addr(&self) -> SocketAddr;
    /// A datagram from `src` arrived at `now`.
    fn handle_datagram(
        &mut self,
        now: Instant,
        data: &[u8],
        src: SocketAddr,
        out: &mut Vec<Datagram>,
    );
    /// Time reached `now`: fire what is due.
    fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Datagram>);
    /// The earliest pending timer, if any.
    fn poll_timeout(&self) -> Option<Instant>;
    /// For [`Sim::agent`].
    fn as_any(&self) -> &dyn Any;
    /// For [`Sim::agent_mut`].
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// A typed handle to an agent added with [`Sim::add`].
#[derive(Debug)]
pub struct AgentId<A> {
    index: usize,
    kind: PhantomData<fn() -> A>,
}

impl<A> AgentId<A> {
    /// The agent's node.
    pub fn node(&self) -> NodeId {
        NodeId(self.index + 1)
    }
}

impl<A> Clone for AgentId<A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A> Copy for AgentId<A> {}

// ---------------------------------------------------------------------------
// The trace

/// What happened to a datagram at one point of its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// A copy arrived at its node.
    Delivered,
    /// A copy was dropped by the link.
    Lost,
    /// A node sent it (one record per send, before the link's faults).
    Sent,
    /// Nobody lives at the destination address.
    Unroutable,
}

/// One entry of the trace.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it happened.
    pub at: Instant,
    /// What happened.
    pub fate: Fate,
    /// The sending address.
    pub from: SocketAddr,
    /// The destination address.
    pub to: SocketAddr,
    /// The datagram.
    pub bytes: Rc<[u8]>,
}

impl Record {
    /// The start line (without CRLF), lossily decoded.
    pub fn first_line(&self) -> String {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(self.bytes.len());
        String::from_utf8_lossy(&self.bytes[..end]).into_owned()
    }

    /// The status code, for a response.
    pub fn status(&self) -> Option<u16> {
        let rest = self.bytes.strip_prefix(b"SIP/2.0 ")?;
        std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()
    }

    /// The method, for a request.
    pub fn method(&self) -> Option<String> {
        if self.bytes.starts_with(b"SIP/") {
            return None;
        }
        let end = self.bytes.iter().position(|&b| b == b' ')?;
        Some(String::from_utf8_lossy(&self.bytes[..end]).into_owned())
    }

    /// The CSeq method (requests and responses), from the raw text.
    pub fn cseq_method(&self) -> Option<String> {
        let v = header_value(&self.bytes, "CSeq")?;
        v.split_whitespace().nth(1).map(str::to_owned)
    }

    /// The top Via branch, from the raw text.
    pub fn branch(&self) -> Option<String> {
        let v = header_value(&self.bytes, "Via")?;
        let b = v
            .split(';')
            .find_map(|p| p.trim().strip_prefix("branch="))?;
        Some(
            b.split(|c: char| c == ',' || c.is_whitespace())
                .next()
                .unwrap_or(b)
                .to_owned(),
        )
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fate = match self.fate {
            Fate::Delivered => "recv",
            Fate::Lost => "LOST",
            Fate::Sent => "send",
            Fate::Unroutable => "NOWHERE",
        };
        let ms = self.at.as_micros() as f64 / 1000.0;
        write!(
            f,
            "{ms:>10.3} {fate:<7} {} -> {} {}",
            self.from,
            self.to,
            self.first_line()
        )
    }
}

/// The first value of header `name` (full name, case-insensitive) in raw SIP text.
fn header_value(bytes: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    for line in text.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':')?;
        if n.trim().eq_ignore_ascii_case(name) {
            return Some(v.trim().to_owned());
        }
    }
    None
}

// ---------------------------------------------------------------------------
// The simulation

#[derive(Debug)]
struct InFlight {
    at: Instant,
    seq: u64,
    from: SocketAddr,
    to: SocketAddr,
    bytes: Rc<[u8]>,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for InFlight {}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Proxy(SocketId),
    Agent(usize),
}

/// Wall-clock time of the virtual epoch (2024-01-01), for [`Service::handle_wall_clock`].
const WALL_EPOCH_US: u64 = 1_704_067_200_000_000;

/// Consecutive timer firings that leave a node's deadline in the past before
/// the harness calls it a stuck timer.
const STALL_LIMIT: u32 = 16;

/// A deterministic network of one proxy under test and scripted agents.
pub struct Sim<P: Service> {
    seed: u64,
    now: Instant,
    rng: Rng,
    proxy: P,
    proxy_addrs: Vec<SocketAddr>,
    outbox: Outbox,
    agents: Vec<Box<dyn Agent>>,
    addrs: HashMap<SocketAddr, Endpoint>,
    faults: Faults,
    links: HashMap<(NodeId, NodeId), Faults>,
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    trace: Vec<Record>,
    scratch: Vec<Datagram>,
    index: HeaderIndex,
    steps: u64,
    stalls: u32,
}

impl<P: Service> Sim<P> {
    /// A simulation of `proxy`, whose sockets (by [`SocketId`]) are `proxy_addrs`.
    pub fn new(seed: u64, proxy: P, proxy_addrs: &[SocketAddr]) -> Self {
        let addrs = proxy_addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (*a, Endpoint::Proxy(SocketId(i as u8))))
            .collect();
        Self {
            seed,
            now: Instant::ZERO,
            rng: Rng::new(seed),
            proxy,
            proxy_addrs: proxy_addrs.to_vec(),
            outbox: Outbox::new(1 << 20, 256),
            agents: Vec::new(),
            addrs,
            faults: Faults::NONE,
            links: HashMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            trace: Vec::new(),
            scratch: Vec::new(),
            index: HeaderIndex::default(),
            steps: 0,
            stalls: 0,
        }
    }

    /// The seed this run was built from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The simulation's random generator (draw scenario parameters from it,
    /// so a seed fixes the whole run).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// The proxy under test.
    pub fn proxy(&self) -> &P {
        &self.proxy
    }

    /// The proxy under test, mutably.
    pub fn proxy_mut(&mut self) -> &mut P {
        &mut self.proxy
    }

    /// Sets the faults of every link without a faults of its own.
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// Sets the faults of the link `from → to` (one direction).
    pub fn set_link(&mut self, from: NodeId, to: NodeId, faults: Faults) {
        self.links.insert((from, to), faults);
    }

    /// Adds an agent; its address must be unused.
    pub fn add<A: Agent>(&mut self, agent: A) -> AgentId<A> {
        let index = self.agents.len();
        let prev = self.addrs.insert(agent.addr(), Endpoint::Agent(index));
        assert!(prev.is_none(), "sim: address {} is taken", agent.addr());
        self.agents.push(Box::new(agent));
        AgentId {
            index,
            kind: PhantomData,
        }
    }

    /// The agent behind `id`.
    pub fn agent<A: Agent>(&self, id: AgentId<A>) -> &A {
        self.agents[id.index]
            .as_any()
            .downcast_ref()
            .expect("AgentId matches the agent's type")
    }

    /// The agent behind `id`, mutably.
    pub fn agent_mut<A: Agent>(&mut self, id: AgentId<A>) -> &mut A {
        self.agents[id.index]
            .as_any_mut()
            .downcast_mut()
            .expect("AgentId matches the agent's type")
    }

    /// Everything that happened on the network, in order.
    pub fn trace(&self) -> &[Record] {
        &self.trace
    }

    /// The trace as text, one record per line; `fates` selects which records.
    pub fn trace_text(&self, fates: &[Fate]) -> String {
        let mut s = String::new();
        for r in self.trace.iter().filter(|r| fates.contains(&r.fate)) {
            s.push_str(&r.to_string());
            s.push('\n');
        }
        s
    }

    /// Datagrams on their way.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Sends `bytes` from `from` to `to` now, through the link's faults (to
    /// script a peer by hand).
    pub fn inject(&mut self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let node = self.node_of(from).unwrap_or(NodeId(usize::MAX));
        self.transmit(node, from, to, bytes);
    }

    /// The earliest timer of any node: (deadline, node).
    fn next_timer(&self) -> Option<(Instant, NodeId)> {
        let mut best = self.proxy.poll_timeout().map(|t| (t, NodeId::PROXY));
        for (i, a) in self.agents.iter().enumerate() {
            if let Some(t) = a.poll_timeout() {
                if best.is_none_or(|(b, _)| t < b) {
                    best = Some((t, NodeId(i + 1)));
                }
            }
        }
        best
    }

    /// When the next event happens, if any.
    pub fn next_event(&self) -> Option<Instant> {
        let pkt = self.queue.peek().map(|Reverse(p)| p.at);
        let timer = self.next_timer().map(|(t, _)| t);
        match (pkt, timer) {
            (Some(p), Some(t)) => Some(p.min(t)),
            (p, t) => p.or(t),
        }
    }

    /// Delivers the earliest datagram or fires the earliest timer (a
    /// datagram first on a tie), jumping the clock to it. False when nothing
    /// is left to do.
    pub fn step(&mut self) -> bool {
        let pkt = self.queue.peek().map(|Reverse(p)| p.at);
        let timer = self.next_timer();
        match (pkt, timer) {
            (None, None) => return false,
            (Some(p), Some((t, node))) if t < p => self.fire(t, node),
            (Some(_), _) => self.deliver(),
            (None, Some((t, node))) => self.fire(t, node),
        }
        self.steps += 1;
        true
    }

    /// Steps until nothing is in flight and no timer is pending, at most
    /// `max_steps` times. True when the network went idle.
    pub fn run_until_idle(&mut self, max_steps: usize) -> bool {
        for _ in 0..max_steps {
            if !self.step() {
                return true;
            }
        }
        self.next_event().is_none()
    }

    /// Steps through every event due at or before `t` (at most `max_steps`),
    /// then sets the clock to `t`. True when all of them ran.
    pub fn run_until(&mut self, t: Instant, max_steps: usize) -> bool {
        for _ in 0..max_steps {
            match self.next_event() {
                Some(e) if e <= t => {
                    self.step();
                }
                _ => {
                    self.now = self.now.max(t);
                    return true;
                }
            }
        }
        false
    }

    /// [`Sim::run_until`] `now + d`.
    pub fn run_for(&mut self, d: Duration, max_steps: usize) -> bool {
        let t = self.now + d;
        self.run_until(t, max_steps)
    }

    fn node_of(&self, addr: SocketAddr) -> Option<NodeId> {
        self.addrs.get(&addr).map(|e| match e {
            Endpoint::Proxy(_) => NodeId::PROXY,
            Endpoint::Agent(i) => NodeId(i + 1),
        })
    }

    fn fire(&mut self, t: Instant, node: NodeId) {
        self.now = self.now.max(t);
        let now = self.now;
        let after = if node == NodeId::PROXY {
            self.proxy.handle_turn(now, WALL_EPOCH_US + now.as_micros());
            self.proxy.handle_timeout(now, &mut self.outbox);
            self.flush_proxy();
            self.proxy.poll_timeout()
        } else {
            let mut out = core::mem::take(&mut self.scratch);
            let a = &mut self.agents[node.0 - 1];
            a.handle_timeout(now, &mut out);
            let after = a.poll_timeout();
            self.flush_agent(node, &mut out);
            self.scratch = out;
            after
        };
        // A timer that fires must move the node's deadline past now, or the
        // run would spin without time moving.
        if after.is_some_and(|d| d <= now) {
            self.stalls += 1;
            assert!(
                self.stalls < STALL_LIMIT,
                "sim: node {node:?} keeps its deadline {after:?} at or before now {now:?} after firing"
            );
        } else {
            self.stalls = 0;
        }
    }

    fn deliver(&mut self) {
        let Some(Reverse(p)) = self.queue.pop() else {
            return;
        };
        self.now = self.now.max(p.at);
        let now = self.now;
        self.trace.push(Record {
            at: now,
            fate: Fate::Delivered,
            from: p.from,
            to: p.to,
            bytes: p.bytes.clone(),
        });
        match self.addrs.get(&p.to).copied() {
            Some(Endpoint::Proxy(sock)) => {
                self.proxy.handle_turn(now, WALL_EPOCH_US + now.as_micros());
                self.proxy.handle_message(
                    now,
                    &p.bytes,
                    &Peer::udp(p.from, sock),
                    &mut self.outbox,
                );
                self.flush_proxy();
            }
            Some(Endpoint::Agent(i)) => {
                let mut out = core::mem::take(&mut self.scratch);
                self.agents[i].handle_datagram(now, &p.bytes, p.from, &mut out);
                self.flush_agent(NodeId(i + 1), &mut out);
                self.scratch = out;
            }
            None => {}
        }
    }

    fn flush_proxy(&mut self) {
        let sent: Vec<(SocketAddr, SocketAddr, Vec<u8>)> = self
            .outbox
            .items()
            .iter()
            .map(|t| {
                let src = *self
                    .proxy_addrs
                    .get(usize::from(t.peer.local.0))
                    .unwrap_or_else(|| {
                        panic!("sim: the proxy sent from unknown socket {:?}", t.peer.local)
                    });
                (src, t.peer.remote, self.outbox.bytes(t).to_vec())
            })
            .collect();
        self.outbox.clear();
        for (src, dest, bytes) in sent {
            if let Err(e) = sip::parse(&bytes, &mut self.index) {
                panic!(
                    "sim: the proxy emitted a datagram that does not parse ({e:?}) to {dest}:\n{}",
                    String::from_utf8_lossy(&bytes)
                );
            }
            self.transmit(NodeId::PROXY, src, dest, &bytes);
        }
    }

    fn flush_agent(&mut self, node: NodeId, out: &mut Vec<Datagram>) {
        let src = self.agents[node.0 - 1].addr();
        for d in out.drain(..) {
            self.transmit(node, src, d.dest, &d.bytes);
        }
    }

    fn transmit(&mut self, from: NodeId, src: SocketAddr, dest: SocketAddr, bytes: &[u8]) {
        let bytes: Rc<[u8]> = bytes.into();
        let now = self.now;
        self.trace.push(Record {
            at: now,
            fate: Fate::Sent,
            from: src,
            to: dest,
            bytes: bytes.clone(),
        });
        let Some(to) = self.node_of(dest) else {
            self.trace.push(Record {
                at: now,
                fate: Fate::Unroutable,
                from: src,
                to: dest,
                bytes,
            });
            return;
        };
        let f = self.links.get(&(from, to)).copied().unwrap_or(self.faults);
        let copies = if self.rng.chance(f.duplicate) {
            1 + usize::from(f.copies)
        } else {
            1
        };
        for _ in 0..copies {
            if self.rng.chance(f.loss) {
                self.trace.push(Record {
                    at: now,
                    fate: Fate::Lost,
                    from: src,
                    to: dest,
                    bytes: bytes.clone(),
                });
                continue;
            }
            let at = now + f.latency + self.rng.duration(f.jitter);
            self.seq += 1;
            self.queue.push(Reverse(InFlight {
                at,
                seq: self.seq,
                from: src,
                to: dest,
                bytes: bytes.clone(),
            }));
        }
    }
}

impl<P: Service> Drop for Sim<P> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SIPEDGE_TRACE=all prints the whole trace instead of its tail.
            let all = std::env::var("SIPEDGE_TRACE").is_ok_and(|v| v == "all");
            let tail = if all {
                0
            } else {
                self.trace.len().saturating_sub(80)
            };
            eprintln!(
                "sim: panic at t={:.3} ms with seed {}; replay with SIPEDGE_SEED={}\n-- the last {} trace records --",
                self.now.as_micros() as f64 / 1000.0,
                self.seed,
                self.seed,
                self.trace.len() - tail
            );
            for r in &self.trace[tail..] {
                eprintln!("{r}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers shared by the agents

/// Pending timers of an agent: (deadline, what). Stale entries are harmless:
/// the transaction machines ignore timers that are no longer armed.
#[derive(Debug)]
struct Timers<K> {
    items: Vec<(Instant, K)>,
}

impl<K: Copy> Timers<K> {
    fn new() -> Self {
        Self { items: Vec::new() }
    }

    fn add(&mut self, at: Instant, k: K) {
        self.items.push((at, k));
    }

    fn arm(&mut self, arm: Arm, k: impl Fn(TimerName) -> K) {
        for (name, at) in arm.iter() {
            self.items.push((at, k(name)));
        }
    }

    fn next(&self) -> Option<Instant> {
        self.items.iter().map(|(t, _)| *t).min()
    }

    /// The timers due at `now`, earliest first (insertion order on ties).
    fn take_due(&mut self, now: Instant) -> Vec<(Instant, K)> {
        let mut due: Vec<(Instant, K)> = Vec::new();
        self.items.retain(|&(t, k)| {
            if t <= now {
                due.push((t, k));
                false
            } else {
                true
            }
        });
        due.sort_by_key(|(t, _)| *t);
        due
    }
}

/// Parses `data` and runs `f` on the message (None when it does not parse).
fn with_msg<R>(data: &[u8], f: impl FnOnce(&Message<'_>) -> R) -> Option<R> {
    let mut idx = HeaderIndex::default();
    let msg = sip::parse(data, &mut idx).ok()?;
    Some(f(&msg))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The fields of a message the agents act on, owned.
#[derive(Debug, Clone)]
struct Summary {
    method: Method,
    code: Option<u16>,
    branch: String,
    call_id: String,
    cseq_method: Method,
    from: String,
    from_tag: Option<String>,
    to: String,
    to_tag: Option<String>,
    contact: Option<String>,
    record_route: Vec<String>,
    request_uri: String,
    cseq: u32,
    vias: Vec<String>,
    routes: Vec<String>,
}

fn summary(data: &[u8]) -> Option<Summary> {
    with_msg(data, |m| {
        let via = m.top_via().ok()?;
        let to = m.to().ok()?;
        let from = m.from().ok()?;
        let contact = m
            .header(HeaderName::Contact)
            .and_then(|c| NameAddr::parse(c).ok())
            .map(|c| text(c.uri_bytes));
        Some(Summary {
            method: m.method(),
            code: m.status(),
            branch: text(via.branch().unwrap_or_default()),
            call_id: text(m.call_id()),
            cseq_method: m.cseq().method,
            from: text(m.header(HeaderName::From).unwrap_or_default()),
            from_tag: from.tag().map(text),
            to: text(m.header(HeaderName::To).unwrap_or_default()),
            to_tag: to.tag().map(text),
            contact,
            record_route: m.values(HeaderName::RecordRoute).map(text).collect(),
            request_uri: text(m.request_uri_bytes()),
            cseq: m.cseq().number,
            vias: m.values(HeaderName::Via).map(text).collect(),
            routes: m.values(HeaderName::Route).map(text).collect(),
        })
    })
    .flatten()
}

/// What is wrong with `req`, an ACK of a non-2xx final (`to` is that final's
/// To) or a CANCEL (`to` is None: the INVITE's To), as a copy of `invite`
/// (§17.1.1.3, §9.1): the same Request-URI, one Via equal to the INVITE's
/// top one, Call-ID, From, CSeq number and Route; for the CANCEL, its To.
fn same_transaction(req: &Summary, invite: &Summary, to: Option<&str>) -> Vec<String> {
    let mut bad = Vec::new();
    let what = if to.is_some() { "ACK" } else { "CANCEL" };
    let mut check = |ok: bool, field: &str, got: &dyn fmt::Debug, want: &dyn fmt::Debug| {
        if !ok {
            bad.push(format!(
                "{what}: {field} is {got:?}, the INVITE's is {want:?}"
            ));
        }
    };
    check(
        req.request_uri == invite.request_uri,
        "Request-URI",
        &req.request_uri,
        &invite.request_uri,
    );
    check(
        req.vias.len() == 1 && req.vias.first() == invite.vias.first(),
        "Via",
        &req.vias,
        &invite.vias.first(),
    );
    check(
        req.call_id == invite.call_id,
        "Call-ID",
        &req.call_id,
        &invite.call_id,
    );
    check(req.from == invite.from, "From", &req.from, &invite.from);
    check(
        req.cseq == invite.cseq,
        "CSeq number",
        &req.cseq,
        &invite.cseq,
    );
    check(
        req.routes == invite.routes,
        "Route",
        &req.routes,
        &invite.routes,
    );
    let want_to = to.unwrap_or(&invite.to);
    check(req.to == want_to, "To", &req.to, &want_to);
    bad
}

fn push(out: &mut Vec<Datagram>, dest: SocketAddr, bytes: &[u8]) {
    out.push(Datagram {
        dest,
        bytes: bytes.to_vec(),
    });
}

/// A response ready to send: (destination, bytes).
type Reply = (SocketAddr, Vec<u8>);

/// A response to `req` (from `src`), to where §18.2.2 says, with To tag
/// `tag` and, for 101–299 to an INVITE, `contact` and the request's
/// Record-Route (§12.1.1).
fn respond(req: &[u8], src: SocketAddr, code: u16, tag: &str, contact: &str) -> Option<Reply> {
    with_msg(req, |m| {
        let via = m.top_via().ok()?;
        let dest = route::reply_dest(&via, src);
        let mut extra = Vec::new();
        if (101..300).contains(&code) && m.method() == Method::Invite {
            extra.extend_from_slice(format!("Contact: <{contact}>\r\n").as_bytes());
            for e in m
                .headers()
                .iter()
                .filter(|e| e.name == HeaderName::RecordRoute)
            {
                extra.extend_from_slice(e.line.of(m.buf()));
            }
        }
        let reason = match code {
            100 => "Trying",
            180 => "Ringing",
            200 => "OK",
            481 => "Call/Transaction Does Not Exist",
            486 => "Busy Here",
            487 => "Request Terminated",
            _ => "Scripted",
        };
        let spec = ResponseSpec {
            to_tag: Some(tag.as_bytes()),
            received: Some(Received {
                ip: src.ip(),
                port: src.port(),
            }),
            extra: &extra,
            ..ResponseSpec::new(code, reason)
        };
        let mut buf = vec![0u8; 8192];
        let n = sip::response(m, &spec, &mut buf).ok()?;
        buf.truncate(n);
        Some((dest, buf))
    })
    .flatten()
}

/// The address a URI (`sip:…`, or a `<sip:…;lr>` route value) designates.
fn uri_dest(uri: &str) -> Option<SocketAddr> {
    let raw = uri.trim();
    let inner = match NameAddr::parse(raw.as_bytes()) {
        Ok(na) => text(na.uri_bytes),
        Err(_) => raw.to_owned(),
    };
    route::uri_addr(&Uri::parse(inner.as_bytes()).ok()?)
}

// ---------------------------------------------------------------------------
// The UAC

/// What a [`Uac`] does.
#[derive(Debug, Clone)]
pub struct UacScript {
    /// Request-URI (and To) of the INVITE.
    pub target: String,
    /// When to send the INVITE.
    pub start: Duration,
    /// Send a CANCEL this long after the INVITE (held until a provisional
    /// response has arrived, §9.1), unless a final response came first.
    pub cancel_after: Option<Duration>,
    /// Time between the ACK of the first 2xx and its BYE.
    pub hold: Duration,
    /// The UAC's T1/T2/T4 (a small T1 makes it retransmit aggressively).
    pub timers: TimerConfig,
}

impl UacScript {
    /// A call to `target` at time 0, hung up after one second.
    pub fn call(target: &str) -> Self {
        Self {
            target: target.to_owned(),
            start: Duration::ZERO,
            cancel_after: None,
            hold: Duration::from_secs(1),
            timers: TimerConfig::default(),
        }
    }
}

/// A dialog the UAC established from one 2xx (a fork's answer).
#[derive(Debug, Clone)]
pub struct UacDialog {
    /// The remote tag (the To tag of the 2xx).
    pub tag: String,
    /// When its first 2xx arrived.
    pub answered_at: Instant,
    /// ACKs sent for it (one per 2xx received, retransmissions included).
    pub acks_sent: u32,
    /// Status of the final response to its BYE, once there is one.
    pub bye_final: Option<u16>,
    /// The BYE transaction timed out (Timer F).
    pub bye_timed_out: bool,
    /// The other side hung up (its BYE arrived and was answered 200).
    pub ended_by_remote: bool,
    remote_target: String,
    route: Vec<String>,
    to: String,
    ack: Vec<u8>,
    dest: SocketAddr,
    bye: Option<UacBye>,
}

#[derive(Debug, Clone)]
struct UacBye {
    txn: NonInviteClient,
    branch: String,
    bytes: Vec<u8>,
    dest: SocketAddr,
}

/// How a call ended at the UAC, as its transaction user saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No final response yet.
    Pending,
    /// At least one 2xx: a dialog.
    Answered,
    /// A non-2xx final response.
    Failed(u16),
    /// Timer B fired with no final response.
    TimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UacTimer {
    Start,
    Cancel,
    Invite(TimerName),
    CancelTxn(TimerName),
    SendBye(usize),
    Bye(usize, TimerName),
}

/// A user agent client that makes one call (see the module doc).
#[derive(Debug)]
pub struct Uac {
    addr: SocketAddr,
    proxy: SocketAddr,
    script: UacScript,
    call_id: String,
    from_tag: String,
    branches: u32,
    timers: Timers<UacTimer>,
    invite: Option<InviteClient>,
    invite_req: Vec<u8>,
    invite_branch: String,
    ack: Option<Vec<u8>>,
    provisional: bool,
    cancel_pending: bool,
    cancel: Option<(NonInviteClient, Vec<u8>)>,
    dialogs: Vec<UacDialog>,
    responses: Vec<(Instant, u16, Option<String>)>,
    finals: Vec<u16>,
    failure: Option<u16>,
    cancel_final: Option<u16>,
    cancel_sent: bool,
    timed_out: bool,
    /// What the responses it received got wrong (see [`Uac::violations`]).
    violations: Vec<String>,
    /// Server transactions of requests from the other side (its BYEs): branch, machine, response.
    servers: Vec<(String, NonInviteServer, Option<Reply>)>,
}

impl Uac {
    /// A UAC at `addr` that sends everything to `proxy` (its outbound proxy).
    pub fn new(addr: SocketAddr, proxy: SocketAddr, script: UacScript) -> Self {
        let mut timers = Timers::new();
        timers.add(Instant::ZERO + script.start, UacTimer::Start);
        let call_id = format!("call-{}-{}", addr.ip(), addr.port()).replace([':', '.'], "-");
        Self {
            addr,
            proxy,
            from_tag: format!("a{}", addr.port()),
            call_id,
            script,
            branches: 0,
            timers,
            invite: None,
            invite_req: Vec::new(),
            invite_branch: String::new(),
            ack: None,
            provisional: false,
            cancel_pending: false,
            cancel: None,
            dialogs: Vec::new(),
            responses: Vec::new(),
            finals: Vec::new(),
            failure: None,
            cancel_final: None,
            cancel_sent: false,
            timed_out: false,
            violations: Vec::new(),
            servers: Vec::new(),
        }
    }

    /// The call's Call-ID.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// How the call ended so far.
    pub fn outcome(&self) -> Outcome {
        if !self.dialogs.is_empty() {
            Outcome::Answered
        } else if let Some(c) = self.failure {
            Outcome::Failed(c)
        } else if self.timed_out {
            Outcome::TimedOut
        } else {
            Outcome::Pending
        }
    }

    /// Every response to the INVITE that arrived: (time, status, To tag).
    pub fn responses(&self) -> &[(Instant, u16, Option<String>)] {
        &self.responses
    }

    /// The final responses the transaction layer passed up: each non-2xx
    /// final, and the first 2xx of each dialog.
    pub fn finals(&self) -> &[u16] {
        &self.finals
    }

    /// The dialogs (one per 2xx To tag); the first is the call.
    pub fn dialogs(&self) -> &[UacDialog] {
        &self.dialogs
    }

    /// What the responses it received got wrong: more than our one Via
    /// (the proxy must remove its own, §16.7 step 3), another Call-ID, or a
    /// final response to the INVITE without a To tag (§8.2.6.2). Empty when
    /// all was right.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// True when a CANCEL was sent.
    pub fn cancel_sent(&self) -> bool {
        self.cancel_sent
    }

    /// The final response to the CANCEL, if any.
    pub fn cancel_final(&self) -> Option<u16> {
        self.cancel_final
    }

    /// True when the call is over: a final response arrived and every dialog's BYE has its answer.
    pub fn is_done(&self) -> bool {
        match self.outcome() {
            Outcome::Pending => false,
            Outcome::Answered => self
                .dialogs
                .iter()
                .all(|d| d.bye_final.is_some() || d.bye_timed_out || d.ended_by_remote),
            Outcome::Failed(_) | Outcome::TimedOut => true,
        }
    }

    fn new_branch(&mut self) -> String {
        self.branches += 1;
        format!("z9hG4bK{}.{}", self.call_id, self.branches)
    }

    fn final_seen(&self) -> bool {
        !self.dialogs.is_empty() || self.failure.is_some() || self.timed_out
    }

    fn send_invite(&mut self, now: Instant, out: &mut Vec<Datagram>) {
        let branch = self.new_branch();
        let (a, t) = (self.addr, &self.script.target);
        let req = format!(
            "INVITE {t} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch={branch};rport\r\nMax-Forwards: 70\r\nTo: <{t}>\r\nFrom: <sip:alice@example.test>;tag={tag}\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{a}>\r\nContent-Length: 0\r\n\r\n",
            tag = self.from_tag,
            cid = self.call_id,
        );
        self.invite_req = req.into_bytes();
        self.invite_branch = branch;
        let (txn, arm) = InviteClient::start(now, self.script.timers, false);
        self.invite = Some(txn);
        self.timers.arm(arm, UacTimer::Invite);
        push(out, self.proxy, &self.invite_req);
        if let Some(d) = self.script.cancel_after {
            self.timers.add(now + d, UacTimer::Cancel);
        }
    }

    /// The ACK or CANCEL of the INVITE (§17.1.1.3, §9.1): same branch, Request-URI, From, Call-ID, CSeq number.
    fn in_txn_request(&self, method: &str, to: &str) -> Vec<u8> {
        let (a, t) = (self.addr, &self.script.target);
        format!(
            "{method} {t} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch={b};rport\r\nMax-Forwards: 70\r\nTo: {to}\r\nFrom: <sip:alice@example.test>;tag={tag}\r\nCall-ID: {cid}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n",
            b = self.invite_branch,
            tag = self.from_tag,
            cid = self.call_id,
        )
        .into_bytes()
    }

    fn send_cancel(&mut self, now: Instant, out: &mut Vec<Datagram>) {
        if self.cancel.is_some() || self.final_seen() {
            return;
        }
        let to = format!("<{}>", self.script.target);
        let bytes = self.in_txn_request("CANCEL", &to);
        let (txn, arm) = NonInviteClient::start(now, self.script.timers, false);
        self.timers.arm(arm, UacTimer::CancelTxn);
        push(out, self.proxy, &bytes);
        self.cancel = Some((txn, bytes));
        self.cancel_pending = false;
        self.cancel_sent = true;
    }

    /// An in-dialog request (ACK of a 2xx, BYE) on dialog `d` with a new branch.
    fn dialog_request(&mut self, d: usize, method: &str, cseq: u32) -> (String, Vec<u8>) {
        let branch = self.new_branch();
        let dlg = &self.dialogs[d];
        let mut routes = String::new();
        for r in &dlg.route {
            routes.push_str("Route: ");
            routes.push_str(r);
            routes.push_str("\r\n");
        }
        let bytes = format!(
            "{method} {rt} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch={branch};rport\r\nMax-Forwards: 70\r\n{routes}To: {to}\r\nFrom: <sip:alice@example.test>;tag={tag}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            rt = dlg.remote_target,
            a = self.addr,
            to = dlg.to,
            tag = self.from_tag,
            cid = self.call_id,
        );
        (branch, bytes.into_bytes())
    }

    fn on_2xx(&mut self, now: Instant, s: &Summary, code: u16, out: &mut Vec<Datagram>) {
        let tag = s.to_tag.clone().unwrap_or_default();
        if let Some(d) = self.dialogs.iter_mut().find(|d| d.tag == tag) {
            // §13.2.2.4: the ACK again for each retransmission of the 2xx.
            d.acks_sent += 1;
            let (dest, ack) = (d.dest, d.ack.clone());
            push(out, dest, &ack);
            return;
        }
        let remote_target = s
            .contact
            .clone()
            .unwrap_or_else(|| self.script.target.clone());
        let route: Vec<String> = s.record_route.iter().rev().cloned().collect();
        let dest = route
            .first()
            .map_or_else(|| uri_dest(&remote_target), |r| uri_dest(r))
            .unwrap_or(self.proxy);
        self.dialogs.push(UacDialog {
            tag,
            answered_at: now,
            acks_sent: 1,
            bye_final: None,
            bye_timed_out: false,
            ended_by_remote: false,
            remote_target,
            route,
            to: s.to.clone(),
            ack: Vec::new(),
            dest,
            bye: None,
        });
        let d = self.dialogs.len() - 1;
        let (_, ack) = self.dialog_request(d, "ACK", 1);
        push(out, dest, &ack);
        self.dialogs[d].ack = ack;
        self.finals.push(code);
        // The call is the first dialog; the others of a fork are ended at once.
        let at = if d == 0 { now + self.script.hold } else { now };
        self.timers.add(at, UacTimer::SendBye(d));
    }

    fn send_bye(&mut self, now: Instant, d: usize, out: &mut Vec<Datagram>) {
        if self.dialogs[d].bye.is_some() || self.dialogs[d].ended_by_remote {
            return;
        }
        let (branch, bytes) = self.dialog_request(d, "BYE", 2);
        let (txn, arm) = NonInviteClient::start(now, self.script.timers, false);
        self.timers.arm(arm, |n| UacTimer::Bye(d, n));
        let dest = self.dialogs[d].dest;
        push(out, dest, &bytes);
        self.dialogs[d].bye = Some(UacBye {
            txn,
            branch,
            bytes,
            dest,
        });
    }

    /// A request from the other side: a BYE (200 when it names one of our
    /// dialogs, else 481); retransmissions get the same response again.
    fn on_request(
        &mut self,
        now: Instant,
        data: &[u8],
        src: SocketAddr,
        s: &Summary,
        out: &mut Vec<Datagram>,
    ) {
        if s.method == Method::Ack {
            return;
        }
        if let Some((_, server, last)) = self.servers.iter_mut().find(|(b, _, _)| *b == s.branch) {
            if server.on_request() == Action::RetransmitResponse {
                if let Some((dest, bytes)) = last.clone() {
                    out.push(Datagram { dest, bytes });
                }
            }
            return;
        }
        let remote = s.from_tag.as_deref().unwrap_or_default();
        let dialog = (s.method == Method::Bye && s.call_id == self.call_id)
            .then(|| self.dialogs.iter_mut().find(|d| d.tag == remote))
            .flatten();
        let code = match dialog {
            Some(d) => {
                d.ended_by_remote = true;
                200
            }
            None if s.method == Method::Bye => 481,
            None => 501,
        };
        let tag = s.to_tag.clone().unwrap_or_else(|| self.from_tag.clone());
        let contact = format!("sip:alice@{}", self.addr);
        let resp = respond(data, src, code, &tag, &contact);
        let mut server = NonInviteServer::start(self.script.timers, false);
        if let Some((dest, bytes)) = &resp {
            push(out, *dest, bytes);
            // Timer J only ends the transaction; this agent keeps it to replay the response.
            let _ = server.on_send(now, code);
        }
        self.servers.push((s.branch.clone(), server, resp));
    }
}

impl Agent for Uac {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn handle_datagram(
        &mut self,
        now: Instant,
        data: &[u8],
        src: SocketAddr,
        out: &mut Vec<Datagram>,
    ) {
        let Some(s) = summary(data) else { return };
        let Some(code) = s.code else {
            self.on_request(now, data, src, &s, out);
            return;
        };
        let line = format!("{code} to {:?} {}", s.cseq_method, s.branch);
        if s.vias.len() != 1 {
            self.violations.push(format!("{line}: Vias {:?}", s.vias));
        }
        if s.call_id != self.call_id {
            self.violations
                .push(format!("{line}: Call-ID {}", s.call_id));
        }
        if s.cseq_method == Method::Invite && code >= 200 && s.to_tag.is_none() {
            self.violations.push(format!("{line}: no To tag"));
        }
        match s.cseq_method {
            Method::Invite if s.branch == self.invite_branch => {
                self.responses.push((now, code, s.to_tag.clone()));
                let Some(txn) = self.invite.as_mut() else {
                    return;
                };
                let (action, arm) = txn.on_response(now, code);
                self.timers.arm(arm, UacTimer::Invite);
                match (action, code) {
                    (_, 200..=299) => self.on_2xx(now, &s, code, out),
                    (Action::PassResponse, 101..=199) | (Action::PassResponse, 100) => {
                        self.provisional = true;
                        if self.cancel_pending {
                            self.send_cancel(now, out);
                        }
                    }
                    (Action::AckAndPass, _) => {
                        let ack = self.in_txn_request("ACK", &s.to);
                        push(out, self.proxy, &ack);
                        self.ack = Some(ack);
                        self.finals.push(code);
                        if self.failure.is_none() {
                            self.failure = Some(code);
                        }
                    }
                    (Action::Ack, _) => {
                        if let Some(ack) = self.ack.clone() {
                            push(out, self.proxy, &ack);
                        }
                    }
                    _ => {}
                }
            }
            Method::Cancel if s.branch == self.invite_branch => {
                if let Some((txn, _)) = self.cancel.as_mut() {
                    let (action, arm) = txn.on_response(now, code);
                    self.timers.arm(arm, UacTimer::CancelTxn);
                    if action == Action::PassResponse && code >= 200 {
                        self.cancel_final = Some(code);
                    }
                }
            }
            Method::Bye => {
                let Some(d) = self
                    .dialogs
                    .iter()
                    .position(|d| d.bye.as_ref().is_some_and(|b| b.branch == s.branch))
                else {
                    return;
                };
                let dlg = &mut self.dialogs[d];
                if let Some(b) = dlg.bye.as_mut() {
                    let (action, arm) = b.txn.on_response(now, code);
                    self.timers.arm(arm, |n| UacTimer::Bye(d, n));
                    if action == Action::PassResponse && code >= 200 {
                        dlg.bye_final = Some(code);
                    }
                }
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Datagram>) {
        for (at, k) in self.timers.take_due(now) {
            match k {
                UacTimer::Start => self.send_invite(now, out),
                UacTimer::Cancel => {
                    if !self.final_seen() {
                        if self.provisional {
                            self.send_cancel(now, out);
                        } else {
                            self.cancel_pending = true;
                        }
                    }
                }
                UacTimer::Invite(name) => {
                    let Some(txn) = self.invite.as_mut() else {
                        continue;
                    };
                    let (action, arm) = txn.on_timer(now, name, at);
                    self.timers.arm(arm, UacTimer::Invite);
                    match action {
                        Action::RetransmitRequest => push(out, self.proxy, &self.invite_req),
                        Action::Timeout => self.timed_out = true,
                        _ => {}
                    }
                }
                UacTimer::CancelTxn(name) => {
                    let Some((txn, bytes)) = self.cancel.as_mut() else {
                        continue;
                    };
                    let (action, arm) = txn.on_timer(now, name, at);
                    self.timers.arm(arm, UacTimer::CancelTxn);
                    if action == Action::RetransmitRequest {
                        let b = bytes.clone();
                        push(out, self.proxy, &b);
                    }
                }
                UacTimer::SendBye(d) => self.send_bye(now, d, out),
                UacTimer::Bye(d, name) => {
                    let dlg = &mut self.dialogs[d];
                    let Some(b) = dlg.bye.as_mut() else { continue };
                    let (action, arm) = b.txn.on_timer(now, name, at);
                    self.timers.arm(arm, |n| UacTimer::Bye(d, n));
                    match action {
                        Action::RetransmitRequest => {
                            let (dest, bytes) = (b.dest, b.bytes.clone());
                            push(out, dest, &bytes);
                        }
                        Action::Timeout => dlg.bye_timed_out = true,
                        _ => {}
                    }
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

// ---------------------------------------------------------------------------
// The UAS

/// What a [`Uas`] does with each INVITE.
#[derive(Debug, Clone, Copy)]
pub struct UasScript {
    /// Send 100 Trying at once.
    pub trying: bool,
    /// Send 180 Ringing this long after the INVITE.
    pub ring: Option<Duration>,
    /// Send this final status this long after the INVITE (None: never answer).
    pub answer: Option<(Duration, u16)>,
    /// Hang up (send BYE) this long after the ACK of our 2xx (None: wait for the caller's BYE).
    pub hangup: Option<Duration>,
    /// The UAS's T1/T2/T4.
    pub timers: TimerConfig,
}

impl UasScript {
    /// 100 at once, 180 after 10 ms, `code` after `after`.
    pub fn answer(code: u16, after: Duration) -> Self {
        Self {
            trying: true,
            ring: Some(Duration::from_millis(10)),
            answer: Some((after, code)),
            hangup: None,
            timers: TimerConfig::default(),
        }
    }

    /// 100 at once, 180 after 10 ms, and never a final response.
    pub fn never() -> Self {
        Self {
            trying: true,
            ring: Some(Duration::from_millis(10)),
            answer: None,
            hangup: None,
            timers: TimerConfig::default(),
        }
    }
}

#[derive(Debug)]
struct UasInvite {
    branch: String,
    call_id: String,
    tag: String,
    request: Vec<u8>,
    src: SocketAddr,
    server: InviteServer,
    last: Option<Reply>,
    final_code: Option<u16>,
    acked: bool,
    ok_interval: Duration,
    ok_next: Option<Instant>,
    ok_deadline: Instant,
    /// The caller's BYE arrived.
    ended_by_remote: bool,
    /// Our BYE, once we hang up.
    bye: Option<UacBye>,
    bye_final: Option<u16>,
}

#[derive(Debug)]
struct UasNonInvite {
    branch: String,
    method: Method,
    server: NonInviteServer,
    last: Option<Reply>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UasTimer {
    Ring(usize),
    Answer(usize),
    Server(usize, TimerName),
    Resend2xx(usize),
    NonInvite(usize, TimerName),
    Hangup(usize),
    Bye(usize, TimerName),
}

/// A user agent server answering every INVITE by its [`UasScript`] (see the module doc).
#[derive(Debug)]
pub struct Uas {
    addr: SocketAddr,
    name: String,
    script: UasScript,
    timers: Timers<UasTimer>,
    invites: Vec<UasInvite>,
    others: Vec<UasNonInvite>,
    invite_copies: u32,
    cancel_copies: u32,
    bye_copies: u32,
    acks: u32,
    ack_timeouts: u32,
    violations: Vec<String>,
}

impl Uas {
    /// A UAS at `addr`; `name` is the user part of its Contact and its tags' prefix.
    pub fn new(addr: SocketAddr, name: &str, script: UasScript) -> Self {
        Self {
            addr,
            name: name.to_owned(),
            script,
            timers: Timers::new(),
            invites: Vec::new(),
            others: Vec::new(),
            invite_copies: 0,
            cancel_copies: 0,
            bye_copies: 0,
            acks: 0,
            ack_timeouts: 0,
            violations: Vec::new(),
        }
    }

    /// INVITE datagrams received (retransmissions and duplicates included).
    pub fn invite_copies(&self) -> u32 {
        self.invite_copies
    }

    /// INVITE transactions (distinct branches).
    pub fn invite_transactions(&self) -> usize {
        self.invites.len()
    }

    /// The final status sent on each INVITE transaction (None: none yet).
    pub fn finals_sent(&self) -> Vec<Option<u16>> {
        self.invites.iter().map(|t| t.final_code).collect()
    }

    /// CANCEL datagrams received.
    pub fn cancel_copies(&self) -> u32 {
        self.cancel_copies
    }

    /// CANCEL transactions (distinct branches).
    pub fn cancel_transactions(&self) -> usize {
        self.others
            .iter()
            .filter(|t| t.method == Method::Cancel)
            .count()
    }

    /// BYE datagrams received.
    pub fn bye_copies(&self) -> u32 {
        self.bye_copies
    }

    /// BYE transactions (distinct branches).
    pub fn bye_transactions(&self) -> usize {
        self.others
            .iter()
            .filter(|t| t.method == Method::Bye)
            .count()
    }

    /// The final response to each BYE this UAS sent (None: none yet).
    pub fn bye_finals(&self) -> Vec<Option<u16>> {
        self.invites
            .iter()
            .filter(|t| t.bye.is_some())
            .map(|t| t.bye_final)
            .collect()
    }

    /// What the requests it received got wrong (an ACK or CANCEL that does
    /// not copy its INVITE as §17.1.1.3 and §9.1 say); empty when all was right.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// ACKs of a 2xx received.
    pub fn acks(&self) -> u32 {
        self.acks
    }

    /// 2xx never ACKed in 64×T1, and non-2xx finals whose Timer H fired.
    pub fn ack_timeouts(&self) -> u32 {
        self.ack_timeouts
    }

    /// A response to `req` with our Contact on 101–299 to an INVITE.
    fn response(&self, req: &[u8], src: SocketAddr, code: u16, tag: &str) -> Option<Reply> {
        let contact = format!("sip:{}@{}", self.name, self.addr);
        respond(req, src, code, tag, &contact)
    }

    /// Sends `code` on INVITE transaction `i`.
    fn send_invite_response(&mut self, now: Instant, i: usize, code: u16, out: &mut Vec<Datagram>) {
        let t = &self.invites[i];
        let Some((dest, bytes)) = self.response(&t.request, t.src, code, &t.tag) else {
            return;
        };
        let t = &mut self.invites[i];
        if !t.server.can_send(code) {
            return;
        }
        out.push(Datagram {
            dest,
            bytes: bytes.clone(),
        });
        let arm = t.server.on_send(now, code);
        self.timers.arm(arm, |n| UasTimer::Server(i, n));
        t.last = Some((dest, bytes));
        if code >= 200 {
            t.final_code = Some(code);
        }
        if (200..300).contains(&code) {
            // §13.3.1.4: the UAS core retransmits the 2xx, T1 doubling to T2, until the ACK.
            let cfg = self.script.timers;
            t.ok_interval = cfg.t1;
            t.ok_next = Some(now + cfg.t1);
            t.ok_deadline = now + cfg.t1x64();
            self.timers.add(now + cfg.t1, UasTimer::Resend2xx(i));
        }
    }

    fn on_invite(
        &mut self,
        now: Instant,
        data: &[u8],
        src: SocketAddr,
        s: &Summary,
        out: &mut Vec<Datagram>,
    ) {
        self.invite_copies += 1;
        if let Some(t) = self.invites.iter_mut().find(|t| t.branch == s.branch) {
            if t.server.on_request() == Action::RetransmitResponse {
                if let Some((dest, bytes)) = t.last.clone() {
                    out.push(Datagram { dest, bytes });
                }
            }
            return;
        }
        let i = self.invites.len();
        self.invites.push(UasInvite {
            branch: s.branch.clone(),
            call_id: s.call_id.clone(),
            tag: format!("{}-{}", self.name, i),
            request: data.to_vec(),
            src,
            server: InviteServer::start(self.script.timers, false),
            last: None,
            final_code: None,
            acked: false,
            ok_interval: Duration::ZERO,
            ok_next: None,
            ok_deadline: Instant::ZERO,
            ended_by_remote: false,
            bye: None,
            bye_final: None,
        });
        if self.script.trying {
            self.send_invite_response(now, i, 100, out);
        }
        if let Some(d) = self.script.ring {
            self.timers.add(now + d, UasTimer::Ring(i));
        }
        if let Some((d, _)) = self.script.answer {
            self.timers.add(now + d, UasTimer::Answer(i));
        }
    }

    fn on_ack(&mut self, now: Instant, s: &Summary) {
        if let Some(i) = self.invites.iter().position(|t| t.branch == s.branch) {
            let t = &mut self.invites[i];
            if t.final_code.is_some_and(|c| c >= 300) {
                if let (Some(inv), Some((_, resp))) = (summary(&t.request), &t.last) {
                    let to = summary(resp).map(|r| r.to).unwrap_or_default();
                    self.violations.extend(same_transaction(s, &inv, Some(&to)));
                }
                let (_, arm) = t.server.on_ack(now);
                self.timers.arm(arm, |n| UasTimer::Server(i, n));
                return;
            }
        }
        // The ACK of a 2xx: a transaction of its own, matched to the dialog.
        self.acks += 1;
        let tag = s.to_tag.as_deref().unwrap_or_default();
        if let Some(i) = self
            .invites
            .iter()
            .position(|t| t.call_id == s.call_id && t.tag == tag)
        {
            let t = &mut self.invites[i];
            if !t.acked {
                if let Some(d) = self.script.hangup {
                    self.timers.add(now + d, UasTimer::Hangup(i));
                }
            }
            t.acked = true;
            t.ok_next = None;
        }
    }

    /// Hangs up dialog `i` (§15.1.1): a BYE along the route set (the
    /// Record-Route of the INVITE, in order) to the caller's Contact.
    fn hang_up(&mut self, now: Instant, i: usize, out: &mut Vec<Datagram>) {
        let t = &self.invites[i];
        if t.bye.is_some() || t.ended_by_remote {
            return;
        }
        let Some(inv) = summary(&t.request) else {
            return;
        };
        let target = inv.contact.clone().unwrap_or_default();
        let mut routes = String::new();
        for r in &inv.record_route {
            routes.push_str("Route: ");
            routes.push_str(r);
            routes.push_str("\r\n");
        }
        let dest = inv
            .record_route
            .first()
            .map_or_else(|| uri_dest(&target), |r| uri_dest(r))
            .unwrap_or(t.src);
        let branch = format!("z9hG4bK{}.bye{}", self.name, i);
        let bytes = format!(
            "BYE {target} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch={branch};rport\r\nMax-Forwards: 70\r\n{routes}From: {from};tag={tag}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
            a = self.addr,
            from = inv.to,
            tag = t.tag,
            to = inv.from,
            cid = inv.call_id,
        )
        .into_bytes();
        let (txn, arm) = NonInviteClient::start(now, self.script.timers, false);
        self.timers.arm(arm, |n| UasTimer::Bye(i, n));
        push(out, dest, &bytes);
        self.invites[i].bye = Some(UacBye {
            txn,
            branch,
            bytes,
            dest,
        });
    }

    fn on_non_invite(
        &mut self,
        now: Instant,
        data: &[u8],
        src: SocketAddr,
        s: &Summary,
        out: &mut Vec<Datagram>,
    ) {
        match s.method {
            Method::Cancel => self.cancel_copies += 1,
            Method::Bye => self.bye_copies += 1,
            _ => {}
        }
        if let Some(t) = self
            .others
            .iter_mut()
            .find(|t| t.branch == s.branch && t.method == s.method)
        {
            if t.server.on_request() == Action::RetransmitResponse {
                if let Some((dest, bytes)) = t.last.clone() {
                    out.push(Datagram { dest, bytes });
                }
            }
            return;
        }
        let (code, cancel_of) = match s.method {
            // §9.2: the CANCEL matches the INVITE with the same top Via branch.
            Method::Cancel => match self.invites.iter().position(|t| t.branch == s.branch) {
                Some(i) => {
                    if let Some(inv) = summary(&self.invites[i].request) {
                        self.violations.extend(same_transaction(s, &inv, None));
                    }
                    (200, Some(i))
                }
                None => (481, None),
            },
            Method::Bye => {
                let tag = s.to_tag.as_deref().unwrap_or_default();
                let known = self.invites.iter_mut().find(|t| {
                    t.call_id == s.call_id && t.tag == tag && t.final_code.is_some_and(|c| c < 300)
                });
                if let Some(t) = known {
                    t.ended_by_remote = true;
                    (200, None)
                } else {
                    (481, None)
                }
            }
            _ => (501, None),
        };
        let j = self.others.len();
        let tag = s
            .to_tag
            .clone()
            .unwrap_or_else(|| format!("{}-x", self.name));
        let resp = self.response(data, src, code, &tag);
        let mut server = NonInviteServer::start(self.script.timers, false);
        if let Some((dest, bytes)) = &resp {
            out.push(Datagram {
                dest: *dest,
                bytes: bytes.clone(),
            });
            let arm = server.on_send(now, code);
            self.timers.arm(arm, |n| UasTimer::NonInvite(j, n));
        }
        self.others.push(UasNonInvite {
            branch: s.branch.clone(),
            method: s.method,
            server,
            last: resp,
        });
        if let Some(i) = cancel_of {
            // §9.2: a pending INVITE is answered 487.
            if self.invites[i].server.state() == InviteServerState::Proceeding {
                self.send_invite_response(now, i, 487, out);
            }
        }
    }
}

impl Agent for Uas {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn handle_datagram(
        &mut self,
        now: Instant,
        data: &[u8],
        src: SocketAddr,
        out: &mut Vec<Datagram>,
    ) {
        let Some(s) = summary(data) else { return };
        if let Some(code) = s.code {
            // Only our BYEs get responses.
            let Some(i) = self
                .invites
                .iter()
                .position(|t| t.bye.as_ref().is_some_and(|b| b.branch == s.branch))
            else {
                return;
            };
            let t = &mut self.invites[i];
            if let Some(b) = t.bye.as_mut() {
                let (action, arm) = b.txn.on_response(now, code);
                self.timers.arm(arm, |n| UasTimer::Bye(i, n));
                if action == Action::PassResponse && code >= 200 {
                    t.bye_final = Some(code);
                }
            }
            return;
        }
        match s.method {
            Method::Invite => self.on_invite(now, data, src, &s, out),
            Method::Ack => self.on_ack(now, &s),
            _ => self.on_non_invite(now, data, src, &s, out),
        }
    }

    fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Datagram>) {
        for (at, k) in self.timers.take_due(now) {
            match k {
                UasTimer::Ring(i) => {
                    if self.invites[i].server.state() == InviteServerState::Proceeding {
                        self.send_invite_response(now, i, 180, out);
                    }
                }
                UasTimer::Answer(i) => {
                    let code = self.script.answer.map_or(200, |(_, c)| c);
                    if self.invites[i].server.state() == InviteServerState::Proceeding {
                        self.send_invite_response(now, i, code, out);
                    }
                }
                UasTimer::Server(i, name) => {
                    let t = &mut self.invites[i];
                    let (action, arm) = t.server.on_timer(now, name, at);
                    self.timers.arm(arm, |n| UasTimer::Server(i, n));
                    match action {
                        Action::RetransmitResponse => {
                            if let Some((dest, bytes)) = t.last.clone() {
                                out.push(Datagram { dest, bytes });
                            }
                        }
                        Action::AckTimeout => self.ack_timeouts += 1,
                        _ => {}
                    }
                }
                UasTimer::Resend2xx(i) => {
                    let t = &mut self.invites[i];
                    if t.acked || t.ok_next != Some(at) {
                        continue;
                    }
                    if now >= t.ok_deadline {
                        // §13.3.1.4 would have the UAS send a BYE; the scenarios count it.
                        t.ok_next = None;
                        self.ack_timeouts += 1;
                        continue;
                    }
                    if let Some((dest, bytes)) = t.last.clone() {
                        out.push(Datagram { dest, bytes });
                    }
                    t.ok_interval = t.ok_interval.saturating_mul(2).min(self.script.timers.t2);
                    let next = now + t.ok_interval;
                    t.ok_next = Some(next);
                    self.timers.add(next, UasTimer::Resend2xx(i));
                }
                UasTimer::Hangup(i) => self.hang_up(now, i, out),
                UasTimer::Bye(i, name) => {
                    let Some(b) = self.invites[i].bye.as_mut() else {
                        continue;
                    };
                    let (action, arm) = b.txn.on_timer(now, name, at);
                    self.timers.arm(arm, |n| UasTimer::Bye(i, n));
                    if action == Action::RetransmitRequest {
                        let (dest, bytes) = (b.dest, b.bytes.clone());
                        push(out, dest, &bytes);
                    }
                }
                UasTimer::NonInvite(j, name) => {
                    self.others[j].server.on_timer(name, at);
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_spread() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(Rng::new(8).next_u64(), xs[0]);
        let mut r = Rng::new(1);
        let hits = (0..10_000).filter(|_| r.chance(0.25)).count();
        assert!((2_200..2_800).contains(&hits), "{hits}");
        assert!((0..1000).all(|_| r.range(3, 5) >= 3 && r.range(3, 5) <= 5));
        assert!(!r.chance(0.0));
    }

    #[test]
    fn seeds_default_to_the_range() {
        if std::env::var("SIPEDGE_SEED").is_err() && std::env::var("SIPEDGE_SEEDS").is_err() {
            assert_eq!(seeds(3).collect::<Vec<_>>(), vec![0, 1, 2]);
        }
    }

    #[test]
    fn an_ack_or_cancel_must_copy_its_invite() {
        let inv = "INVITE sip:b@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nTo: <sip:b@x>\r\nFrom: <sip:a@x>;tag=1\r\nCall-ID: c\r\nCSeq: 7 INVITE\r\n\r\n";
        let inv = summary(inv.as_bytes()).unwrap();
        let good = "CANCEL sip:b@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nTo: <sip:b@x>\r\nFrom: <sip:a@x>;tag=1\r\nCall-ID: c\r\nCSeq: 7 CANCEL\r\n\r\n";
        assert!(same_transaction(&summary(good.as_bytes()).unwrap(), &inv, None).is_empty());
        let bad = good
            .replace("CSeq: 7", "CSeq: 8")
            .replace("sip:b@192.0.2.1 SIP", "sip:b@x SIP");
        assert_eq!(
            same_transaction(&summary(bad.as_bytes()).unwrap(), &inv, None).len(),
            2
        );
        let ack = good
            .replace("CANCEL", "ACK")
            .replace("<sip:b@x>", "<sip:b@x>;tag=9");
        let ack = summary(ack.as_bytes()).unwrap();
        assert!(same_transaction(&ack, &inv, Some("<sip:b@x>;tag=9")).is_empty());
        assert_eq!(
            same_transaction(&ack, &inv, None).len(),
            1,
            "the To of the final"
        );
    }

    #[test]
    fn record_helpers_read_raw_text() {
        let r = Record {
            at: Instant::ZERO,
            fate: Fate::Sent,
            from: "10.0.0.1:5060".parse().unwrap(),
            to: "10.0.0.2:5060".parse().unwrap(),
            bytes: b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx;rport\r\nCSeq: 1 INVITE\r\n\r\n"[..].into(),
        };
        assert_eq!(r.status(), Some(180));
        assert_eq!(r.method(), None);
        assert_eq!(r.cseq_method().as_deref(), Some("INVITE"));
        assert_eq!(r.branch().as_deref(), Some("z9hG4bKx"));
        assert_eq!(r.first_line(), "SIP/2.0 180 Ringing");
    }
}
