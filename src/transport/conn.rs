//! The connections of one shard (RFC 3261 §18.3, RFC 5626 flows, RFC 7118):
//! the sans-IO state between a stream socket's bytes and the core's
//! messages. The driver accepts, connects, reads and writes; this table
//! decides everything else.
//!
//! ```text
//!  driver: accept ──► accept(now, listener, transport, remote) ─► FlowId   (limits: total, per IP)
//!  driver: bytes  ──► handle_input(now, flow, bytes, deliver)
//!                       TLS records ─► plaintext ─► WebSocket frames ─► one message each
//!                                             └──► stream framer (Content-Length) ─► messages
//!                       ping CRLFCRLF ─► pong CRLF (RFC 5626 §4.4.1)
//!  core transmit ──► send(now, peer, bytes): the peer's flow, else a connection to its
//!                    address, else (TCP/TLS) a new outbound one: Event::Connect
//!  driver: writable ─► output(flow) / wrote(flow, n)           (write queue bounded)
//!  timers ──► handle_timeout(now): idle connections, slow header blocks (slowloris) closed
//!  closes ──► Event::Close for the driver, poll_closed() for the core (its bindings, RFC 5626)
//! ```
//!
//! Contract: no panic on any input; every buffer bounded by [`ConnLimits`]
//! (a peer that stops reading is disconnected once its write queue is
//! full, never buffered without bound); a connection's buffers are released
//! when it is idle (an idle TCP connection holds a few hundred bytes here).
//!
//! Why the connection state lives here and not in the drivers: mio
//! (readiness) and io_uring (completions) differ only in how bytes move; the
//! framing, TLS, WebSocket, limits and timers are the same, and testable
//! without sockets.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use core::net::{IpAddr, SocketAddr};
use std::collections::{HashMap, VecDeque};

use crate::sip::{HeaderIndex, ParseError};
use crate::time::{Duration, Instant};

use super::stream::{Frame, FrameError, Framer, StreamLimits};
use super::tls::{ClientTls, ServerTls, TlsSession};
use super::ws::{WsLimits, WsServer, WsState};
use super::{FlowId, Peer, SocketId, Transport};

/// Limits of a shard's connections (`[tcp]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections this shard holds at most.
    pub max_connections: usize,
    /// Connections from one IP address at most.
    pub max_per_ip: u32,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// A header block must be complete this long after its first byte (slowloris).
    pub header_timeout: Duration,
    /// Bytes queued for a peer that does not read before it is disconnected.
    pub max_write_queue: usize,
    /// Largest message (header block and body).
    pub max_message: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 200_000,
            max_per_ip: 1024,
            idle_timeout: Duration::from_secs(600),
            header_timeout: Duration::from_secs(10),
            max_write_queue: 256 * 1024,
            max_message: 65_535,
        }
    }
}

/// What the core gets from a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// One whole message.
    Message(&'a [u8]),
    /// The header block of a message that cannot be framed (no
    /// Content-Length, too large…): answer it; the connection closes after.
    Malformed(&'a [u8], ParseError),
}

/// What the driver must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Open a connection to `remote` for `flow` (then [`Connections::connected`]
    /// or [`Connections::connect_failed`]).
    Connect {
        /// The flow it is for.
        flow: FlowId,
        /// Where to.
        remote: SocketAddr,
    },
    /// Close the socket of `flow` (its state is gone already).
    Close(FlowId),
}

/// Why a connection was refused or a send failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    /// The shard holds its maximum of connections.
    #[error("too many connections")]
    TooMany,
    /// That IP address holds its maximum of connections.
    #[error("too many connections from one address")]
    TooManyFromIp,
    /// The flow belongs to another shard: hand the send over.
    #[error("flow of shard {0}")]
    OtherShard(u16),
    /// No connection, and none can be opened (WebSocket peers connect to us).
    #[error("no connection to the peer")]
    NoConnection,
    /// TLS is not configured (no certificate).
    #[error("TLS is not configured")]
    NoTls,
    /// The write queue of the connection is full: it was closed.
    #[error("write queue full")]
    QueueFull,
}

/// Counters of the connection table (`sipedge_transport_*_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused (limits).
    pub refused: u64,
    /// Outbound connections opened.
    pub connected: u64,
    /// Outbound connections that failed.
    pub connect_failed: u64,
    /// Connections closed, for any reason.
    pub closed: u64,
    /// Closed for idleness.
    pub idle_closed: u64,
    /// Closed because a header block took too long (slowloris).
    pub slow_closed: u64,
    /// Closed because the peer did not read (write queue full).
    pub overflow_closed: u64,
    /// Closed on a framing, TLS or WebSocket error.
    pub protocol_closed: u64,
    /// Messages received.
    pub messages_in: u64,
    /// Messages sent.
    pub messages_out: u64,
    /// Keep-alive pings answered.
    pub pings: u64,
    /// Sends dropped (no connection possible, no TLS, queue full).
    pub send_dropped: u64,
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
}

impl ConnStats {
    /// (metric name, value) pairs.
    pub fn pairs(&self) -> [(&'static str, u64); 14] {
        [
            ("sipedge_transport_accepted_total", self.accepted),
            ("sipedge_transport_refused_total", self.refused),
            ("sipedge_transport_connected_total", self.connected),
            (
                "sipedge_transport_connect_failed_total",
                self.connect_failed,
            ),
            ("sipedge_transport_closed_total", self.closed),
            ("sipedge_transport_idle_closed_total", self.idle_closed),
            ("sipedge_transport_slow_closed_total", self.slow_closed),
            (
                "sipedge_transport_overflow_closed_total",
                self.overflow_closed,
            ),
            (
                "sipedge_transport_protocol_closed_total",
                self.protocol_closed,
            ),
            ("sipedge_transport_messages_in_total", self.messages_in),
            ("sipedge_transport_messages_out_total", self.messages_out),
            ("sipedge_transport_pings_total", self.pings),
            ("sipedge_transport_send_dropped_total", self.send_dropped),
            (
                "sipedge_transport_tls_handshakes_total",
                self.tls_handshakes,
            ),
        ]
    }

    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &Self) {
        self.accepted += o.accepted;
        self.refused += o.refused;
        self.connected += o.connected;
        self.connect_failed += o.connect_failed;
        self.closed += o.closed;
        self.idle_closed += o.idle_closed;
        self.slow_closed += o.slow_closed;
        self.overflow_closed += o.overflow_closed;
        self.protocol_closed += o.protocol_closed;
        self.messages_in += o.messages_in;
        self.messages_out += o.messages_out;
        self.pings += o.pings;
        self.send_dropped += o.send_dropped;
        self.tls_handshakes += o.tls_handshakes;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Open,
}

/// One connection.
#[derive(Debug)]
struct Conn {
    peer: Peer,
    state: State,
    tls: Option<Box<TlsSession>>,
    ws: Option<Box<WsServer>>,
    framer: Framer,
    /// Bytes to write, in order; the first `inflight` are with the driver.
    out: Vec<u8>,
    inflight: usize,
    last_rx: Instant,
    /// When the pending header block started, if one is incomplete.
    header_since: Option<Instant>,
    /// Close once `out` is written (after answering a malformed message).
    close_after_write: bool,
    handshaken: bool,
    /// Counted in `per_ip` (inbound connections).
    counted: bool,
}

#[derive(Debug, Default)]
struct Slot {
    // INVARIANT: never 0 (a FlowId with generation 0 is NONE's).
    gen: u8,
    conn: Option<Box<Conn>>,
}

/// The connections of one shard.
#[derive(Debug)]
pub struct Connections {
    shard: u16,
    limits: ConnLimits,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    /// Live connections by [`Transport::index`].
    by_transport: [usize; 5],
    by_remote: HashMap<(Transport, SocketAddr), FlowId>,
    per_ip: HashMap<IpAddr, u32>,
    tls_server: Option<ServerTls>,
    tls_client: Option<ClientTls>,
    idx: HeaderIndex,
    plain: Vec<u8>,
    frame: Vec<u8>,
    dirty: Vec<FlowId>,
    events: VecDeque<Event>,
    closed: VecDeque<FlowId>,
    next_sweep: Instant,
    /// What this table counted.
    pub stats: ConnStats,
}

/// How often idle and slow connections are looked for.
const SWEEP: Duration = Duration::from_secs(1);
/// Output capacity kept by an idle connection; above it the buffer is freed.
const KEEP_OUT: usize = 4096;

impl Connections {
    /// The table of shard `shard` (its index goes into every [`FlowId`]).
    pub fn new(shard: u16, limits: ConnLimits) -> Self {
        Self {
            shard,
            limits,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            by_transport: [0; 5],
            by_remote: HashMap::new(),
            per_ip: HashMap::new(),
            tls_server: None,
            tls_client: None,
            idx: HeaderIndex::default(),
            plain: Vec::new(),
            frame: Vec::new(),
            dirty: Vec::new(),
            events: VecDeque::new(),
            closed: VecDeque::new(),
            next_sweep: Instant::ZERO,
            stats: ConnStats::default(),
        }
    }

    /// Sets the TLS configurations (at start and on reload: new
    /// connections use them, established ones keep theirs).
    pub fn set_tls(&mut self, server: Option<ServerTls>, client: Option<ClientTls>) {
        self.tls_server = server;
        self.tls_client = client;
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Live connections by [`Transport::index`].
    pub fn by_transport(&self) -> [usize; 5] {
        self.by_transport
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The peer of `flow`, if it is live.
    pub fn peer(&self, flow: FlowId) -> Option<Peer> {
        self.conn(flow).map(|c| c.peer)
    }

    fn conn(&self, flow: FlowId) -> Option<&Conn> {
        if flow.is_none() || flow.shard() != self.shard {
            return None;
        }
        let s = self.slots.get(flow.slot() as usize)?;
        (s.gen == flow.generation())
            .then_some(s.conn.as_deref())
            .flatten()
    }

    fn conn_mut(&mut self, flow: FlowId) -> Option<&mut Conn> {
        if flow.is_none() || flow.shard() != self.shard {
            return None;
        }
        let s = self.slots.get_mut(flow.slot() as usize)?;
        if s.gen != flow.generation() {
            return None;
        }
        s.conn.as_deref_mut()
    }

    fn alloc(&mut self, conn: Conn) -> Option<FlowId> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                let s = u32::try_from(self.slots.len()).ok()?;
                if s >= FlowId::MAX_SLOTS {
                    return None;
                }
                self.slots.push(Slot { gen: 1, conn: None });
                s
            }
        };
        let s = self.slots.get_mut(slot as usize)?;
        let flow = FlowId::new(self.shard, slot, s.gen);
        let mut conn = conn;
        conn.peer.flow = flow;
        self.by_remote
            .insert((conn.peer.transport, conn.peer.remote), flow);
        let t = conn.peer.transport.index();
        s.conn = Some(Box::new(conn));
        self.live += 1;
        if let Some(n) = self.by_transport.get_mut(t) {
            *n += 1;
        }
        Some(flow)
    }

    fn new_conn(&self, now: Instant, peer: Peer, state: State) -> Conn {
        Conn {
            peer,
            state,
            tls: None,
            ws: if peer.transport.is_websocket() {
                Some(Box::new(WsServer::new(WsLimits {
                    max_frame: self.limits.max_message.max(1024),
                    max_message: self.limits.max_message.max(1024),
                    ..WsLimits::default()
                })))
            } else {
                None
            },
            framer: Framer::new(StreamLimits {
                max_message: self.limits.max_message,
                ..StreamLimits::default()
            }),
            out: Vec::new(),
            inflight: 0,
            last_rx: now,
            header_since: None,
            close_after_write: false,
            handshaken: false,
            counted: false,
        }
    }

    /// The driver accepted a connection from `remote` on listener `local`.
    /// Err: refused (the driver closes the socket at once).
    pub fn accept(
        &mut self,
        now: Instant,
        local: SocketId,
        transport: Transport,
        remote: SocketAddr,
    ) -> Result<FlowId, ConnError> {
        if self.live >= self.limits.max_connections {
            self.stats.refused += 1;
            return Err(ConnError::TooMany);
        }
        let n = self.per_ip.get(&remote.ip()).copied().unwrap_or(0);
        if n >= self.limits.max_per_ip {
            self.stats.refused += 1;
            return Err(ConnError::TooManyFromIp);
        }
        let peer = Peer {
            transport,
            remote,
            local,
            flow: FlowId::NONE,
        };
        let mut conn = self.new_conn(now, peer, State::Open);
        if transport.is_secure() {
            let Some(cfg) = &self.tls_server else {
                self.stats.refused += 1;
                return Err(ConnError::NoTls);
            };
            match TlsSession::server(cfg) {
                Ok(s) => conn.tls = Some(Box::new(s)),
                Err(_) => {
                    self.stats.refused += 1;
                    return Err(ConnError::NoTls);
                }
            }
        }
        conn.counted = true;
        let flow = self.alloc(conn).ok_or(ConnError::TooMany)?;
        *self.per_ip.entry(remote.ip()).or_insert(0) += 1;
        self.stats.accepted += 1;
        Ok(flow)
    }

    /// An outbound connection of `flow` is established.
    pub fn connected(&mut self, now: Instant, flow: FlowId) {
        let Some(c) = self.conn_mut(flow) else { return };
        c.state = State::Open;
        c.last_rx = now;
        let has_out = !c.out.is_empty() || c.tls.as_ref().is_some_and(|t| t.wants_output());
        if let Some(t) = c.tls.as_deref_mut() {
            t.poll_output(&mut c.out);
        }
        self.stats.connected += 1;
        if has_out || self.conn(flow).is_some_and(|c| !c.out.is_empty()) {
            self.dirty.push(flow);
        }
    }

    /// An outbound connection of `flow` could not be opened.
    pub fn connect_failed(&mut self, flow: FlowId) {
        self.stats.connect_failed += 1;
        self.remove(flow, false);
    }

    /// The peer closed `flow` (end of stream) or its socket failed.
    pub fn handle_eof(&mut self, flow: FlowId) {
        self.remove(flow, false);
    }

    /// Closes `flow` from our side (the driver gets [`Event::Close`]).
    pub fn close(&mut self, flow: FlowId) {
        self.remove(flow, true);
    }

    fn remove(&mut self, flow: FlowId, tell_driver: bool) {
        let Some(s) = self.slots.get_mut(flow.slot() as usize) else {
            return;
        };
        if s.gen != flow.generation() || flow.shard() != self.shard {
            return;
        }
        let Some(c) = s.conn.take() else { return };
        s.gen = s.gen.wrapping_add(1).max(1);
        self.free.push(flow.slot());
        self.live = self.live.saturating_sub(1);
        if let Some(n) = self.by_transport.get_mut(c.peer.transport.index()) {
            *n = n.saturating_sub(1);
        }
        let key = (c.peer.transport, c.peer.remote);
        if self.by_remote.get(&key) == Some(&flow) {
            self.by_remote.remove(&key);
        }
        if c.counted {
            let ip = c.peer.remote.ip();
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
        self.stats.closed += 1;
        self.closed.push_back(flow);
        if tell_driver {
            self.events.push_back(Event::Close(flow));
        }
    }

    /// Bytes read from `flow`; each message goes to `deliver` with its peer.
    pub fn handle_input(
        &mut self,
        now: Instant,
        flow: FlowId,
        data: &[u8],
        deliver: &mut dyn FnMut(Input<'_>, &Peer),
    ) {
        let Self {
            slots,
            idx,
            plain,
            frame,
            stats,
            limits,
            shard,
            ..
        } = self;
        if flow.is_none() || flow.shard() != *shard {
            return;
        }
        let Some(c) = slots
            .get_mut(flow.slot() as usize)
            .filter(|s| s.gen == flow.generation())
            .and_then(|s| s.conn.as_deref_mut())
        else {
            return;
        };
        if c.close_after_write {
            // Answered and closing: the rest of the stream is not read.
            return;
        }
        c.last_rx = now;
        let peer = c.peer;
        let mut failed = false;
        let mut answer_pending = false;
        // TLS records → plaintext.
        let bytes: &[u8] = match c.tls.as_deref_mut() {
            Some(t) => {
                plain.clear();
                let r = t.handle_input(data, plain);
                t.poll_output(&mut c.out);
                if !c.handshaken && !t.is_handshaking() {
                    c.handshaken = true;
                    stats.tls_handshakes += 1;
                }
                if r.is_err() || t.is_closed() {
                    failed = true;
                }
                plain
            }
            None => data,
        };
        let mut pings = 0u32;
        let mut messages = 0u64;
        if let Some(ws) = c.ws.as_deref_mut() {
            frame.clear();
            let r = ws.handle_input(bytes, frame, &mut |m| {
                messages += 1;
                deliver(Input::Message(m), &peer);
            });
            // Handshake answers, pongs and closes go out (encrypted for wss).
            match c.tls.as_deref_mut() {
                Some(t) if !frame.is_empty() => {
                    let _ = t.write(frame);
                    t.poll_output(&mut c.out);
                }
                _ => c.out.extend_from_slice(frame),
            }
            if r.is_err() {
                c.close_after_write = true;
                stats.protocol_closed += 1;
            }
            if ws.state() == WsState::Closed {
                c.close_after_write = true;
            }
        } else if !bytes.is_empty() {
            let r = c.framer.handle_input(bytes, idx, &mut |f| match f {
                Frame::Message(m) => {
                    messages += 1;
                    deliver(Input::Message(m), &peer);
                }
                Frame::Ping => pings += 1,
                Frame::Pong => {}
            });
            if let Err(e) = r {
                stats.protocol_closed += 1;
                c.close_after_write = true;
                if let Some(head) = c.framer.rejected_head() {
                    let pe = match e {
                        FrameError::Malformed(pe) => pe,
                        FrameError::NoContentLength => ParseError::ContentLength,
                        FrameError::HeaderBlockTooLarge | FrameError::TooLarge => {
                            ParseError::MessageTooLarge
                        }
                    };
                    deliver(Input::Malformed(head, pe), &peer);
                    answer_pending = true;
                }
            }
            c.header_since = if c.framer.in_header_block() {
                c.header_since.or(Some(now))
            } else {
                None
            };
        }
        if pings > 0 {
            stats.pings += u64::from(pings);
            for _ in 0..pings {
                match c.tls.as_deref_mut() {
                    Some(t) => {
                        let _ = t.write(b"\r\n");
                        t.poll_output(&mut c.out);
                    }
                    None => c.out.extend_from_slice(b"\r\n"),
                }
            }
        }
        stats.messages_in += messages;
        let _ = limits;
        let dirty = !c.out.is_empty();
        if failed {
            stats.protocol_closed += 1;
            c.close_after_write = true;
        }
        // A malformed message's answer comes from the core later in the
        // turn: the connection closes once it is written (or at the next
        // sweep if there is none).
        let close_now = c.close_after_write && c.out.is_empty() && !answer_pending;
        if dirty {
            self.dirty.push(flow);
        }
        if close_now {
            self.close(flow);
        }
    }

    /// Queues `bytes` (one message) to `peer`: on its flow, else on a
    /// connection to its address, else on a new outbound connection (TCP,
    /// TLS). Err: nothing was queued (counted).
    pub fn send(&mut self, now: Instant, peer: &Peer, bytes: &[u8]) -> Result<(), ConnError> {
        let r = self.try_send(now, peer, bytes);
        if let Err(e) = r {
            if !matches!(e, ConnError::OtherShard(_)) {
                self.stats.send_dropped += 1;
            }
        }
        r
    }

    fn try_send(&mut self, now: Instant, peer: &Peer, bytes: &[u8]) -> Result<(), ConnError> {
        let mut flow = peer.flow;
        if !flow.is_none() && flow.shard() != self.shard {
            return Err(ConnError::OtherShard(flow.shard()));
        }
        if self.conn(flow).is_none() {
            flow = match self.by_remote.get(&(peer.transport, peer.remote)) {
                Some(&f) => f,
                // A send down a connection that is gone: its remote is the
                // peer's ephemeral port, where nothing listens; opening a
                // connection there would only fail (or be refused by a
                // peer that was just dropped for not reading).
                None if !flow.is_none() => return Err(ConnError::NoConnection),
                None => self.open(now, peer)?,
            };
        }
        let max = self.limits.max_write_queue;
        let Self { slots, frame, .. } = self;
        let Some(c) = slots
            .get_mut(flow.slot() as usize)
            .filter(|s| s.gen == flow.generation())
            .and_then(|s| s.conn.as_deref_mut())
        else {
            return Err(ConnError::NoConnection);
        };
        let ok = match (c.ws.as_deref(), c.tls.as_deref_mut()) {
            (Some(ws), tls) => {
                if ws.state() != WsState::Open {
                    return Err(ConnError::NoConnection);
                }
                frame.clear();
                ws.encode(bytes, frame);
                match tls {
                    Some(t) => {
                        let r = t.write(frame).is_ok();
                        t.poll_output(&mut c.out);
                        r
                    }
                    None => {
                        c.out.extend_from_slice(frame);
                        true
                    }
                }
            }
            (None, Some(t)) => {
                let r = t.write(bytes).is_ok();
                if c.state == State::Open {
                    t.poll_output(&mut c.out);
                }
                r
            }
            (None, None) => {
                c.out.extend_from_slice(bytes);
                true
            }
        };
        if !ok || c.out.len() > max {
            self.stats.overflow_closed += 1;
            self.close(flow);
            return Err(ConnError::QueueFull);
        }
        self.stats.messages_out += 1;
        if c.state == State::Open {
            self.dirty.push(flow);
        }
        Ok(())
    }

    /// A new outbound connection to `peer` (TCP or TLS).
    fn open(&mut self, now: Instant, peer: &Peer) -> Result<FlowId, ConnError> {
        if peer.transport.is_websocket() {
            return Err(ConnError::NoConnection);
        }
        if self.live >= self.limits.max_connections {
            return Err(ConnError::TooMany);
        }
        let mut conn = self.new_conn(now, *peer, State::Connecting);
        if peer.transport.is_secure() {
            let cfg = self.tls_client.as_ref().ok_or(ConnError::NoTls)?;
            let s = TlsSession::client_ip(cfg, peer.remote.ip()).map_err(|_| ConnError::NoTls)?;
            conn.tls = Some(Box::new(s));
        }
        let flow = self.alloc(conn).ok_or(ConnError::TooMany)?;
        self.events.push_back(Event::Connect {
            flow,
            remote: peer.remote,
        });
        Ok(flow)
    }

    /// The next thing the driver must do.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next connection with bytes to write (each at most once per call
    /// round; the driver calls [`Connections::output`] and then
    /// [`Connections::wrote`]).
    pub fn poll_write(&mut self) -> Option<FlowId> {
        while let Some(f) = self.dirty.pop() {
            if self
                .conn(f)
                .is_some_and(|c| c.state == State::Open && c.out.len() > c.inflight)
            {
                return Some(f);
            }
        }
        None
    }

    /// Puts `flow` back on the write list (its socket would block now).
    pub fn requeue(&mut self, flow: FlowId) {
        if self.conn(flow).is_some() {
            self.dirty.push(flow);
        }
    }

    /// The bytes of `flow` not yet handed to the driver.
    pub fn output(&self, flow: FlowId) -> &[u8] {
        self.conn(flow)
            .and_then(|c| c.out.get(c.inflight..))
            .unwrap_or_default()
    }

    /// The number of bytes of `flow` handed to the driver and not yet
    /// written. The table may move its buffer (a later send can grow it):
    /// a driver whose send outlives the call (io_uring) copies the bytes.
    pub fn in_flight(&self, flow: FlowId) -> usize {
        self.conn(flow).map_or(0, |c| c.inflight)
    }

    /// Marks `n` more bytes of `flow`'s output as handed to the driver (io_uring).
    pub fn lend(&mut self, flow: FlowId, n: usize) {
        if let Some(c) = self.conn_mut(flow) {
            c.inflight = (c.inflight + n).min(c.out.len());
        }
    }

    /// `n` bytes of `flow`'s output were written (from the front; an
    /// io_uring completion returns its lent bytes first).
    pub fn wrote(&mut self, flow: FlowId, n: usize) {
        let Some(c) = self.conn_mut(flow) else { return };
        let n = n.min(c.out.len());
        c.out.drain(..n);
        c.inflight = c.inflight.saturating_sub(n);
        let done = c.out.is_empty();
        if done && c.out.capacity() > KEEP_OUT {
            c.out = Vec::new();
        }
        let close = done && c.close_after_write;
        let more = !done && c.inflight < c.out.len();
        if close {
            self.close(flow);
        } else if more {
            self.dirty.push(flow);
        }
    }

    /// A flow the core must forget (its bindings, RFC 5626 §5.4).
    pub fn poll_closed(&mut self) -> Option<FlowId> {
        self.closed.pop_front()
    }

    /// When [`Connections::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.live > 0).then_some(self.next_sweep)
    }

    /// Closes idle connections and those whose header block is too slow.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP;
        let mut doomed = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            let Some(c) = s.conn.as_deref() else { continue };
            let idle = now.saturating_since(c.last_rx) >= self.limits.idle_timeout
                || (c.close_after_write && c.out.is_empty());
            let slow = c
                .header_since
                .is_some_and(|t| now.saturating_since(t) >= self.limits.header_timeout)
                || (c.tls.as_ref().is_some_and(|t| t.is_handshaking())
                    && now.saturating_since(c.last_rx) >= self.limits.header_timeout);
            if idle || slow {
                doomed.push((FlowId::new(self.shard, i as u32, s.gen), slow));
            }
        }
        for (f, slow) in doomed {
            if slow {
                self.stats.slow_closed += 1;
            } else {
                self.stats.idle_closed += 1;
            }
            self.close(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: &str = "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5099;branch=z9hG4bK1\r\nTo: <sip:a@localhost>\r\nFrom: <sip:a@localhost>;tag=1\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";

    fn table() -> Connections {
        Connections::new(
            2,
            ConnLimits {
                max_per_ip: 2,
                ..ConnLimits::default()
            },
        )
    }

    fn remote(p: u16) -> SocketAddr {
        SocketAddr::new("127.0.0.1".parse().unwrap(), p)
    }

    fn feed(t: &mut Connections, f: FlowId, data: &[u8]) -> Vec<(String, Peer, bool)> {
        let mut got = Vec::new();
        t.handle_input(Instant::ZERO, f, data, &mut |i, p| match i {
            Input::Message(m) => got.push((String::from_utf8_lossy(m).into_owned(), *p, true)),
            Input::Malformed(m, _) => {
                got.push((String::from_utf8_lossy(m).into_owned(), *p, false))
            }
        });
        got
    }

    #[test]
    fn frames_messages_and_answers_pings() {
        let mut t = table();
        let f = t
            .accept(Instant::ZERO, SocketId(1), Transport::Tcp, remote(4000))
            .unwrap();
        assert_eq!(f.shard(), 2);
        let two = format!("\r\n\r\n{REG}{REG}");
        let got = feed(&mut t, f, &two.as_bytes()[..50]);
        assert!(got.is_empty());
        let got = feed(&mut t, f, &two.as_bytes()[50..]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1.flow, f);
        assert_eq!(got[0].1.transport, Transport::Tcp);
        assert_eq!(t.poll_write(), Some(f));
        assert_eq!(t.output(f), b"\r\n", "the pong");
        t.wrote(f, 2);
        assert_eq!(t.poll_write(), None);
        // A response to the peer goes down the same connection.
        t.send(Instant::ZERO, &got[0].1, b"SIP/2.0 200 OK\r\n\r\n")
            .unwrap();
        assert_eq!(t.poll_write(), Some(f));
        assert_eq!(t.output(f), b"SIP/2.0 200 OK\r\n\r\n");
    }

    #[test]
    fn limits_per_ip_and_bad_framing_close() {
        let mut t = table();
        let a = t
            .accept(Instant::ZERO, SocketId(1), Transport::Tcp, remote(1))
            .unwrap();
        t.accept(Instant::ZERO, SocketId(1), Transport::Tcp, remote(2))
            .unwrap();
        assert_eq!(
            t.accept(Instant::ZERO, SocketId(1), Transport::Tcp, remote(3)),
            Err(ConnError::TooManyFromIp)
        );
        let bad = REG.replace("Content-Length: 0\r\n", "");
        let got = feed(&mut t, a, bad.as_bytes());
        assert_eq!(got.len(), 1);
        assert!(!got[0].2, "delivered as malformed for a 400");
        // The 400 is written, then the connection closes.
        t.send(Instant::ZERO, &got[0].1, b"SIP/2.0 400 Bad Request\r\n\r\n")
            .unwrap();
        assert_eq!(t.poll_write(), Some(a));
        let n = t.output(a).len();
        t.wrote(a, n);
        assert_eq!(t.poll_event(), Some(Event::Close(a)));
        assert_eq!(t.poll_closed(), Some(a));
        assert!(t
            .accept(Instant::ZERO, SocketId(1), Transport::Tcp, remote(3))
            .is_ok());
    }

    #[test]
    fn slow_header_blocks_and_idle_connections_close() {
        let mut t = table();
        let slow = t
            .accept(Instant::ZERO, SocketId(1), Transport::Tcp, remote(1))
            .unwrap();
        let idle = t
            .accept(Instant::ZERO, SocketId(1), Transport::Tcp, remote(2))
            .unwrap();
        feed(&mut t, slow, b"REGISTER sip:localhost SIP/2.0\r\nVia: ");
        t.handle_timeout(Instant::ZERO + Duration::from_secs(11));
        assert_eq!(t.poll_event(), Some(Event::Close(slow)));
        assert_eq!(t.stats.slow_closed, 1);
        assert_eq!(t.len(), 1);
        t.handle_timeout(Instant::ZERO + Duration::from_secs(601));
        assert_eq!(t.poll_event(), Some(Event::Close(idle)));
        assert!(t.is_empty());
    }

    #[test]
    fn a_peer_that_never_reads_is_disconnected() {
        let mut t = table();
        let f = t
            .accept(Instant::ZERO, SocketId(1), Transport::Tcp, remote(1))
            .unwrap();
        let peer = t.peer(f).unwrap();
        let msg = vec![b'x'; 10_000];
        let mut sent = 0;
        while t.send(Instant::ZERO, &peer, &msg).is_ok() {
            sent += 1;
            assert!(sent < 100, "the queue must be bounded");
        }
        assert_eq!(t.stats.overflow_closed, 1);
        assert!(t.peer(f).is_none());
        // What is still addressed to that connection is dropped, not sent
        // over a new connection to the peer's ephemeral port.
        while t.poll_event().is_some() {}
        assert_eq!(
            t.send(Instant::ZERO, &peer, b"SIP/2.0 200 OK\r\n\r\n"),
            Err(ConnError::NoConnection)
        );
        assert_eq!(t.poll_event(), None, "no connection opened");
    }

    #[test]
    fn sends_open_outbound_connections_or_hand_over() {
        let mut t = table();
        let p = Peer {
            transport: Transport::Tcp,
            remote: remote(5080),
            local: SocketId(1),
            flow: FlowId::NONE,
        };
        t.send(Instant::ZERO, &p, b"INVITE").unwrap();
        let Some(Event::Connect { flow, remote: r }) = t.poll_event() else {
            panic!("no connect");
        };
        assert_eq!(r, remote(5080));
        assert_eq!(t.poll_write(), None, "nothing written before connected");
        t.send(Instant::ZERO, &p, b"ACK").unwrap();
        t.connected(Instant::ZERO, flow);
        assert_eq!(t.poll_write(), Some(flow));
        assert_eq!(t.output(flow), b"INVITEACK");
        let other = Peer {
            flow: FlowId::new(5, 1, 1),
            ..p
        };
        assert_eq!(
            t.send(Instant::ZERO, &other, b"x"),
            Err(ConnError::OtherShard(5))
        );
        let ws = Peer {
            transport: Transport::Ws,
            ..p
        };
        assert_eq!(
            t.send(Instant::ZERO, &ws, b"x"),
            Err(ConnError::NoConnection)
        );
    }
}
