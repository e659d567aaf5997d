//! Stream transports (TCP, TLS, WS, WSS): the connections of one worker
//! side, driven by the worker's mio poll with the same turn structure as
//! the UDP path (receive a batch, dispatch, send what was queued).
//!
//! ```text
//!  UAC endpoint: N connections to --target, opened before the load starts;
//!                a call's requests all go on one of them (RawAddr::spread(slot))
//!  UAS endpoint: a listener (SO_REUSEPORT, one per thread) and what it accepted;
//!                a reply goes on the connection its request came on (RawAddr::stream)
//!
//!  read ─► TLS (sipedge TlsSession) ─► WS frames (sipedge WsServer | the small
//!          client codec below) or Content-Length framing (sipedge Framer)
//!       ─► whole messages copied into a StreamRx batch, each with its connection
//!  push ─► the message is built in a scratch buffer ─► WS frame ─► TLS ─► the
//!          connection's output buffer; flush() writes each dirty connection once
//! ```
//!
//! Sockets are nonblocking and registered edge-triggered for reading and
//! writing: a readable connection stays in the read queue until a read
//! would block, a connection with unsent bytes is written again when it
//! becomes writable. Nothing allocates per message once the buffers have
//! grown to the largest read and the largest burst.
//!
//! Why the UAC's WebSocket side is written here: sipedge has the server
//! side only; a client masks its frames (RFC 6455 §5.3) and reads the
//! server's unmasked ones, which takes a few dozen lines.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use sipedge::sip::{HeaderIndex, ParseConfig};
use sipedge::transport::stream::{Frame, Framer, StreamLimits};
use sipedge::transport::tls::{ClientTls, ServerTls, TlsSession};
use sipedge::transport::ws::{WsLimits, WsServer, WsState};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Transport;
use crate::net::{RawAddr, TxBatch, TX_BUF};

/// Bits of a mio token that name the connection; the rest name the endpoint.
pub const CONN_BITS: usize = 24;
/// Token (within an endpoint) of the listener.
const LISTENER: usize = 0;
/// Messages per receive batch before the worker dispatches them.
const RX_BUDGET: usize = 256;
/// Bytes per read.
const READ_BUF: usize = 64 * 1024;

/// Where a worker sends: a UDP socket's batch or a stream endpoint.
// A worker has at most two of these, and the UDP batch is on the hot path:
// kept inline rather than boxed.
#[allow(clippy::large_enum_variant)]
pub enum Tx {
    /// UDP.
    Dgram(TxBatch),
    /// TCP, TLS, WS, WSS.
    Stream(Box<StreamEp>),
}

impl Tx {
    /// Queues one message to `dest`, built by `build` (see [`TxBatch::push`]).
    pub fn push(&mut self, dest: &RawAddr, build: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        match self {
            Self::Dgram(d) => d.push(dest, build),
            Self::Stream(s) => s.push(dest, build),
        }
    }

    /// Queues a copy of `bytes`.
    pub fn push_bytes(&mut self, dest: &RawAddr, bytes: &[u8]) -> bool {
        self.push(dest, |buf| {
            let out = buf.get_mut(..bytes.len())?;
            out.copy_from_slice(bytes);
            Some(bytes.len())
        })
    }

    /// Sends what was queued.
    pub fn flush(&mut self) {
        match self {
            Self::Dgram(d) => d.flush(),
            Self::Stream(s) => s.flush(),
        }
    }

    /// (messages sent, messages dropped).
    pub fn counts(&self) -> (u64, u64) {
        match self {
            Self::Dgram(d) => (d.sent, d.dropped),
            Self::Stream(s) => (s.sent, s.dropped),
        }
    }
}

/// Whole messages received from stream connections in one turn, copied out
/// of the connections' buffers (so the endpoint is free to send replies
/// while they are dispatched).
#[derive(Default)]
pub struct StreamRx {
    buf: Vec<u8>,
    msgs: Vec<(usize, usize, RawAddr)>,
}

impl StreamRx {
    /// Forgets the last batch (keeps the memory).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.msgs.clear();
    }

    fn push(&mut self, m: &[u8], from: RawAddr) {
        let start = self.buf.len();
        self.buf.extend_from_slice(m);
        self.msgs.push((start, m.len(), from));
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    /// Message `i`: bytes, connection, and "truncated" (always false).
    pub fn get(&self, i: usize) -> Option<(&[u8], &RawAddr, bool)> {
        let (start, len, from) = self.msgs.get(i)?;
        Some((self.buf.get(*start..start + len)?, from, false))
    }
}

/// The WebSocket layer of one connection.
enum Ws {
    None,
    Client(WsClient),
    Server(WsServer),
}

/// One connection.
struct Conn {
    sock: TcpStream,
    tls: Option<TlsSession>,
    ws: Ws,
    framer: Framer,
    /// Bytes for the socket (ciphertext under TLS), from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    /// TLS and WebSocket handshakes are done: SIP may flow.
    ready: bool,
    /// In the endpoint's dirty list.
    dirty: bool,
    /// In the endpoint's read queue.
    readable: bool,
}

impl Conn {
    fn new(sock: TcpStream, transport: Transport, tls: Option<TlsSession>, client: bool) -> Self {
        let ws = match (transport.is_ws(), client) {
            (false, _) => Ws::None,
            (true, true) => Ws::Client(WsClient::default()),
            (true, false) => Ws::Server(WsServer::new(WsLimits::default())),
        };
        let mut c = Self {
            sock,
            tls,
            ws,
            framer: Framer::new(StreamLimits::default()),
            out: Vec::new(),
            out_pos: 0,
            ready: false,
            dirty: false,
            readable: false,
        };
        c.update_ready();
        c
    }

    fn update_ready(&mut self) {
        let tls_done = self.tls.as_ref().is_none_or(|t| !t.is_handshaking());
        let ws_open = match &self.ws {
            Ws::None => true,
            Ws::Client(c) => c.open,
            Ws::Server(s) => s.state() == WsState::Open,
        };
        self.ready = tls_done && ws_open;
    }

    /// Queues bytes that go inside TLS (if any): SIP, WS frames, the WS upgrade.
    ///
    /// Under TLS the records are moved to `out` at once: the session bounds
    /// what it holds between `poll_output` calls (64 KiB), and a UAS answering
    /// a batch of 256 requests writes more than that in one turn.
    fn send_plain(&mut self, bytes: &[u8]) -> bool {
        match self.tls.as_mut() {
            Some(t) => {
                let ok = t.write(bytes).is_ok();
                t.poll_output(&mut self.out);
                ok
            }
            None => {
                self.out.extend_from_slice(bytes);
                true
            }
        }
    }

    /// Writes what is queued; Err: the connection is broken.
    fn flush(&mut self) -> io::Result<()> {
        if let Some(t) = self.tls.as_mut() {
            t.poll_output(&mut self.out);
        }
        while self.out_pos < self.out.len() {
            let pending = self.out.get(self.out_pos..).unwrap_or_default();
            match self.sock.write(pending) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(())
    }

    /// Handles the bytes of one read; whole SIP messages go to `rx`.
    fn input(
        &mut self,
        data: &[u8],
        plain: &mut Vec<u8>,
        ctl: &mut Vec<u8>,
        idx: &mut HeaderIndex,
        rx: &mut StreamRx,
        from: RawAddr,
    ) -> Result<(), ()> {
        let data = match self.tls.as_mut() {
            Some(t) => {
                plain.clear();
                // Handshake records this produces are sent by the caller's flush.
                t.handle_input(data, plain).map_err(|e| {
                    if std::env::var_os("SIPLOAD_DEBUG").is_some() {
                        eprintln!("sipload: TLS: {e}");
                    }
                })?;
                plain.as_slice()
            }
            None => data,
        };
        ctl.clear();
        match &mut self.ws {
            Ws::None => self
                .framer
                .handle_input(data, idx, &mut |f| {
                    if let Frame::Message(m) = f {
                        rx.push(m, from);
                    }
                })
                .map_err(|_| ())?,
            Ws::Server(s) => s
                .handle_input(data, ctl, &mut |m| rx.push(m, from))
                .map_err(|_| ())?,
            Ws::Client(c) => c.input(data, &mut |m| rx.push(m, from))?,
        }
        if !ctl.is_empty() {
            // The 101, pongs, Close frames.
            let ctl_bytes = std::mem::take(ctl);
            let ok = self.send_plain(&ctl_bytes);
            *ctl = ctl_bytes;
            if !ok {
                return Err(());
            }
        }
        self.update_ready();
        Ok(())
    }

    fn wants_flush(&self) -> bool {
        self.out_pos < self.out.len() || self.tls.as_ref().is_some_and(TlsSession::wants_output)
    }
}

/// What an endpoint is for.
enum Side {
    /// Connections opened to the target.
    Client,
    /// A listener and the connections it accepted.
    Server(TcpListener, Option<ServerTls>),
}

/// The stream connections of one worker side.
pub struct StreamEp {
    transport: Transport,
    side: Side,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Client: connections ready for SIP, in round-robin order.
    open: Vec<usize>,
    rr: usize,
    /// Client: connections opened (ready or not yet).
    opened: usize,
    registry: Option<Registry>,
    ep: usize,
    dirty: Vec<usize>,
    readq: Vec<usize>,
    rbuf: Box<[u8]>,
    scratch: Box<[u8]>,
    frame: Vec<u8>,
    plain: Vec<u8>,
    ctl: Vec<u8>,
    idx: HeaderIndex,
    ws_mask: u32,
    /// Messages queued.
    pub sent: u64,
    /// Messages that found no usable connection.
    pub dropped: u64,
    /// Connections that closed or failed during the run.
    pub closed: u64,
}

impl StreamEp {
    fn new(transport: Transport, side: Side) -> Self {
        Self {
            transport,
            side,
            conns: Vec::new(),
            free: Vec::new(),
            open: Vec::new(),
            rr: 0,
            opened: 0,
            registry: None,
            ep: 0,
            dirty: Vec::new(),
            readq: Vec::new(),
            rbuf: vec![0u8; READ_BUF].into_boxed_slice(),
            scratch: vec![0u8; TX_BUF].into_boxed_slice(),
            frame: Vec::new(),
            plain: Vec::new(),
            ctl: Vec::new(),
            idx: HeaderIndex::new(ParseConfig {
                allow_bare_lf: true,
                ..ParseConfig::default()
            }),
            ws_mask: 0x9e37_79b9,
            sent: 0,
            dropped: 0,
            closed: 0,
        }
    }

    /// A UAS endpoint listening on `addr` (`reuse_port` for one listener per thread).
    pub fn listen(
        transport: Transport,
        addr: SocketAddr,
        reuse_port: bool,
        tls: Option<ServerTls>,
    ) -> Result<Self> {
        let domain = if addr.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        if reuse_port {
            s.set_reuse_port(true)?;
        }
        s.bind(&addr.into())?;
        s.listen(4096)?;
        s.set_nonblocking(true)?;
        let l = TcpListener::from_std(s.into());
        Ok(Self::new(transport, Side::Server(l, tls)))
    }

    /// The listener's address (UAS endpoints).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.side {
            Side::Server(l, _) => l.local_addr().ok(),
            Side::Client => self
                .conns
                .iter()
                .flatten()
                .next()
                .and_then(|c| c.sock.local_addr().ok()),
        }
    }

    /// A UAC endpoint with `n` connections from `local_ip` to `target`
    /// (connected here; TLS and WebSocket handshakes then run in the loop).
    pub fn connect(
        transport: Transport,
        local_ip: std::net::IpAddr,
        target: SocketAddr,
        n: usize,
        tls: Option<&ClientTls>,
    ) -> Result<Self> {
        let mut ep = Self::new(transport, Side::Client);
        for _ in 0..n {
            let domain = if target.is_ipv4() {
                Domain::IPV4
            } else {
                Domain::IPV6
            };
            let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            s.bind(&SocketAddr::new(local_ip, 0).into())?;
            s.connect_timeout(&target.into(), Duration::from_secs(5))
                .with_context(|| format!("cannot connect to {}:{target}", transport.as_str()))?;
            s.set_tcp_nodelay(true)?;
            s.set_nonblocking(true)?;
            let sock = TcpStream::from_std(s.into());
            let session = match tls {
                Some(cfg) => Some(
                    TlsSession::client_ip(cfg, target.ip())
                        .map_err(|e| anyhow::anyhow!("TLS client session: {e}"))?,
                ),
                None => None,
            };
            let mut c = Conn::new(sock, transport, session, true);
            if transport.is_ws() {
                let req = WsClient::upgrade_request(target);
                c.send_plain(req.as_bytes());
            }
            c.dirty = true;
            let i = ep.conns.len();
            if c.ready {
                ep.open.push(i);
            }
            ep.conns.push(Some(c));
            ep.dirty.push(i);
            ep.opened += 1;
        }
        Ok(ep)
    }

    /// Registers the sockets with the worker's poll as endpoint `ep`.
    pub fn register(&mut self, registry: &Registry, ep: usize) -> io::Result<()> {
        self.ep = ep;
        if let Side::Server(l, _) = &mut self.side {
            registry.register(l, Token(ep << CONN_BITS | LISTENER), Interest::READABLE)?;
        }
        for (i, c) in self.conns.iter_mut().enumerate() {
            if let Some(c) = c {
                registry.register(
                    &mut c.sock,
                    Token(ep << CONN_BITS | (i + 1)),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                c.readable = true;
                self.readq.push(i);
            }
        }
        self.registry = Some(registry.try_clone()?);
        Ok(())
    }

    /// Client: every connection opened is ready for SIP or gone.
    pub fn all_ready(&self) -> bool {
        matches!(self.side, Side::Server(..))
            || self.open.len() + self.closed as usize >= self.opened
    }

    /// A readiness event for connection token `t` of this endpoint.
    pub fn on_event(&mut self, t: usize, ev: &Event) {
        if t == LISTENER {
            self.accept();
            return;
        }
        let i = t - 1;
        let Some(Some(c)) = self.conns.get_mut(i) else {
            return;
        };
        if (ev.is_readable() || ev.is_read_closed() || ev.is_error()) && !c.readable {
            c.readable = true;
            self.readq.push(i);
        }
        if ev.is_writable() && !c.dirty {
            c.dirty = true;
            self.dirty.push(i);
        }
    }

    fn accept(&mut self) {
        loop {
            let Side::Server(l, tls) = &mut self.side else {
                return;
            };
            let (mut sock, _) = match l.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let _ = sock.set_nodelay(true);
            let session = match tls {
                Some(cfg) => match TlsSession::server(cfg) {
                    Ok(s) => Some(s),
                    Err(_) => continue,
                },
                None => None,
            };
            let i = self.free.pop().unwrap_or(self.conns.len());
            let Some(reg) = self.registry.as_ref() else {
                return;
            };
            if reg
                .register(
                    &mut sock,
                    Token(self.ep << CONN_BITS | (i + 1)),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                continue;
            }
            let mut c = Conn::new(sock, self.transport, session, false);
            c.readable = true;
            self.readq.push(i);
            if i == self.conns.len() {
                self.conns.push(Some(c));
            } else if let Some(slot) = self.conns.get_mut(i) {
                *slot = Some(c);
            }
        }
    }

    fn close(&mut self, i: usize) {
        if let Some(slot) = self.conns.get_mut(i) {
            if let Some(mut c) = slot.take() {
                if let Some(r) = self.registry.as_ref() {
                    let _ = r.deregister(&mut c.sock);
                }
                self.closed += 1;
                self.free.push(i);
                self.open.retain(|&o| o != i);
                if matches!(self.side, Side::Client) {
                    eprintln!(
                        "sipload: {} connection {i} to the target closed",
                        self.transport.as_str()
                    );
                }
            }
        }
    }

    /// Reads the readable connections into `rx` (up to a budget); returns
    /// (messages, whether connections are left to read).
    pub fn recv(&mut self, rx: &mut StreamRx) -> (usize, bool) {
        let before = rx.len();
        let mut k = 0;
        while k < self.readq.len() {
            if rx.len() - before >= RX_BUDGET {
                break;
            }
            let Some(&i) = self.readq.get(k) else {
                break;
            };
            let mut drop_it = false;
            let mut done = false;
            if let Some(Some(c)) = self.conns.get_mut(i) {
                let was_ready = c.ready;
                loop {
                    if rx.len() - before >= RX_BUDGET {
                        break;
                    }
                    match c.sock.read(&mut self.rbuf) {
                        Ok(0) => {
                            drop_it = true;
                            break;
                        }
                        Ok(n) => {
                            let data = self.rbuf.get(..n).unwrap_or_default();
                            if c.input(
                                data,
                                &mut self.plain,
                                &mut self.ctl,
                                &mut self.idx,
                                rx,
                                RawAddr::stream(i as u32),
                            )
                            .is_err()
                            {
                                drop_it = true;
                                break;
                            }
                            if c.wants_flush() && !c.dirty {
                                c.dirty = true;
                                self.dirty.push(i);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            done = true;
                            break;
                        }
                        Err(_) => {
                            drop_it = true;
                            break;
                        }
                    }
                }
                if !was_ready && c.ready && matches!(self.side, Side::Client) {
                    self.open.push(i);
                }
                if done || drop_it {
                    c.readable = false;
                }
            } else {
                done = true;
            }
            if drop_it {
                self.close(i);
            }
            if done || drop_it {
                self.readq.swap_remove(k);
            } else {
                k += 1;
            }
        }
        (rx.len() - before, !self.readq.is_empty())
    }

    /// Queues one message on `dest`'s connection, or on the next ready one.
    pub fn push(&mut self, dest: &RawAddr, build: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        let i = match dest.conn() {
            Some(c) => c as usize,
            None => {
                if self.open.is_empty() {
                    self.dropped += 1;
                    return false;
                }
                let k = match dest.spread_key() {
                    Some(k) => k as usize,
                    None => {
                        self.rr = self.rr.wrapping_add(1);
                        self.rr
                    }
                };
                self.open.get(k % self.open.len()).copied().unwrap_or(0)
            }
        };
        let Some(Some(c)) = self.conns.get_mut(i) else {
            self.dropped += 1;
            return false;
        };
        let Some(n) = build(&mut self.scratch).filter(|&l| l > 0 && l <= TX_BUF) else {
            return false;
        };
        let msg = self.scratch.get(..n).unwrap_or_default();
        let ok = match &c.ws {
            Ws::None => c.send_plain(msg),
            Ws::Client(_) => {
                self.frame.clear();
                self.ws_mask ^= self.ws_mask << 13;
                self.ws_mask ^= self.ws_mask >> 17;
                self.ws_mask ^= self.ws_mask << 5;
                WsClient::encode(msg, self.ws_mask, &mut self.frame);
                c.send_plain(&self.frame)
            }
            Ws::Server(s) => {
                self.frame.clear();
                s.encode(msg, &mut self.frame);
                c.send_plain(&self.frame)
            }
        };
        if !ok {
            self.dropped += 1;
            return false;
        }
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(i);
        }
        self.sent += 1;
        true
    }

    /// Writes every connection with something queued.
    pub fn flush(&mut self) {
        let mut k = 0;
        while k < self.dirty.len() {
            let i = self.dirty.get(k).copied().unwrap_or(usize::MAX);
            k += 1;
            let Some(Some(c)) = self.conns.get_mut(i) else {
                continue;
            };
            c.dirty = false;
            if c.flush().is_err() {
                self.close(i);
            }
        }
        self.dirty.clear();
    }
}

/// The client side of RFC 6455 for one connection: the upgrade, masked
/// frames out, the server's unmasked frames in.
#[derive(Default)]
struct WsClient {
    /// The 101 arrived.
    open: bool,
    /// Bytes not yet consumed (a partial response head or frame).
    pending: Vec<u8>,
    /// A fragmented message in progress.
    message: Vec<u8>,
}

impl WsClient {
    fn upgrade_request(target: SocketAddr) -> String {
        format!(
            "GET / HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: c2lwbG9hZC1zaXBsb2FkLQ==\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Protocol: sip\r\n\r\n"
        )
    }

    /// One masked FIN text frame.
    fn encode(payload: &[u8], mask: u32, out: &mut Vec<u8>) {
        out.push(0x81);
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let m = mask.to_be_bytes();
        out.extend_from_slice(&m);
        out.extend(payload.iter().zip(m.iter().cycle()).map(|(b, k)| b ^ k));
    }

    fn input(&mut self, data: &[u8], deliver: &mut dyn FnMut(&[u8])) -> Result<(), ()> {
        self.pending.extend_from_slice(data);
        let mut at = 0;
        if !self.open {
            let Some(end) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                return if self.pending.len() > 8192 {
                    Err(())
                } else {
                    Ok(())
                };
            };
            if !self.pending.starts_with(b"HTTP/1.1 101") {
                return Err(());
            }
            self.open = true;
            at = end + 4;
        }
        loop {
            let rest = self.pending.get(at..).unwrap_or_default();
            let (Some(&b0), Some(&b1)) = (rest.first(), rest.get(1)) else {
                break;
            };
            let (len, mut hdr) = match b1 & 0x7f {
                126 => match rest.get(2..4) {
                    Some(l) => (usize::from(u16::from_be_bytes([l[0], l[1]])), 4),
                    None => break,
                },
                127 => match rest.get(2..10).and_then(|l| <[u8; 8]>::try_from(l).ok()) {
                    Some(l) => (u64::from_be_bytes(l) as usize, 10),
                    None => break,
                },
                l => (usize::from(l), 2),
            };
            let mask = if b1 & 0x80 != 0 {
                let m = rest.get(hdr..hdr + 4).map(|m| [m[0], m[1], m[2], m[3]]);
                hdr += 4;
                m
            } else {
                None
            };
            if len > 1 << 20 {
                return Err(());
            }
            let Some(payload) = rest.get(hdr..hdr + len) else {
                break;
            };
            let fin = b0 & 0x80 != 0;
            match b0 & 0x0f {
                0x0..=0x2 => {
                    match mask {
                        Some(m) => self
                            .message
                            .extend(payload.iter().zip(m.iter().cycle()).map(|(b, k)| b ^ k)),
                        None => self.message.extend_from_slice(payload),
                    }
                    if fin {
                        deliver(&self.message);
                        self.message.clear();
                    }
                }
                0x8 => return Err(()),
                _ => {} // ping, pong: nothing to do for a load generator
            }
            at += hdr + len;
        }
        self.pending.drain(..at.min(self.pending.len()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_client_reads_unmasked_frames_after_the_101() {
        let mut c = WsClient::default();
        let mut got = Vec::new();
        let mut input = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        input.extend_from_slice(&[0x81, 3]);
        input.extend_from_slice(b"abc");
        input.extend_from_slice(&[0x81, 126, 0, 200]);
        input.extend_from_slice(&[b'x'; 200]);
        for chunk in input.chunks(7) {
            c.input(chunk, &mut |m| got.push(m.to_vec())).unwrap();
        }
        assert!(c.open);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], b"abc");
        assert_eq!(got[1].len(), 200);
    }

    #[test]
    fn ws_client_frames_are_masked_and_decode_back() {
        let mut out = Vec::new();
        WsClient::encode(&[7u8; 300], 0x0102_0304, &mut out);
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1], 0x80 | 126);
        let mut c = WsClient {
            open: true,
            ..WsClient::default()
        };
        let mut got = Vec::new();
        c.input(&out, &mut |m| got.push(m.to_vec())).unwrap();
        assert_eq!(got, vec![vec![7u8; 300]]);
    }
}
