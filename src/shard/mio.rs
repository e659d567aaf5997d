//! The portable driver: mio (epoll) readiness, `recvmmsg` batches in,
//! `sendmmsg` batches out. Used where io_uring is missing or refused, and
//! run by the same integration tests as the io_uring driver.
//!
//! Stream listeners and connections are mio sources too: accepts, reads
//! and writes go through [`super::streams::Streams`], which the io_uring
//! driver shares.
//!
//! One loop turn:
//! ```text
//! poll(timeout = next timer, ≤ 100 ms) ─► for each readable socket: recvmmsg (≤ BUDGET batches)
//!   └► service.handle_message(now, …) per datagram (flush early if the outbox fills)
//!   accepts ─► conns.accept · readable connections ─► read ≤ READ_CHUNK ─► Streams::input
//! service.handle_timeout(now) when due ─► flush: stream transmits into their connections,
//!   sendmmsg the UDP ones grouped by socket ─► connect / close / write the connections
//! ```

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use std::io::{Read as _, Write as _};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::proxy::Service;
use crate::time::Instant;
use crate::transport::conn::Event;
use crate::transport::{FlowId, Outbox, Peer, SocketId, Transport};

use super::streams::{Streams, READ_CHUNK};
use super::sys::{self, RecvBatch, SendBatch};
use super::{
    Clock, DriverStats, Listener, ShardIo, OUTBOX_BYTES, OUTBOX_ITEMS, RECV_BATCH, RECV_BUF,
};

/// Receive batches per socket per turn before the others get a go.
const BUDGET: usize = 8;
/// Reads per connection per turn.
const STREAM_BUDGET: usize = 4;
/// The token of the mesh wake-up eventfd.
const WAKE: Token = Token(usize::MAX);
/// Tokens of stream listeners start here, those of connections above.
const LISTENER_BASE: usize = 1 << 30;
const CONN_BASE: usize = 1 << 31;

/// One stream socket of the driver.
struct StreamSock {
    flow: FlowId,
    sock: TcpStream,
    readable: bool,
    /// Waiting for writability (a write would block, or a connect is under way).
    blocked: bool,
    connecting: bool,
}

/// The mio driver of one shard.
pub struct MioDriver {
    poll: Poll,
    events: Events,
    sockets: Vec<UdpSocket>,
    readable: Vec<bool>,
    recv: RecvBatch,
    send: SendBatch,
    outbox: Outbox,
    stats: DriverStats,
    listeners: Vec<(SocketId, Transport, TcpListener)>,
    /// By connection slot.
    streams: Vec<Option<StreamSock>>,
    /// Slots with bytes to read.
    ready: Vec<u32>,
    /// Listeners whose accept loop stopped at its bound with connections
    /// maybe still queued: accepted again next turn (the listeners are
    /// edge-triggered, so no new event would come for those).
    accept_again: Vec<usize>,
    rbuf: Box<[u8]>,
    streams_state: Option<Streams>,
}

impl MioDriver {
    /// A driver over `sockets` (already bound and nonblocking); socket `i` is [`SocketId`]`(i)`.
    /// `wake` is the mesh eventfd to watch, if the shard has a mesh.
    pub fn new(sockets: Vec<UdpSocket>, wake: Option<RawFd>) -> io::Result<Self> {
        Self::with_streams(sockets, Vec::new(), None, wake)
    }

    /// A driver over UDP `sockets` and stream `listeners`, whose connections
    /// `streams` keeps.
    pub fn with_streams(
        sockets: Vec<UdpSocket>,
        listeners: Vec<Listener>,
        streams: Option<Streams>,
        wake: Option<RawFd>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut ls = Vec::with_capacity(listeners.len());
        for (i, l) in listeners.into_iter().enumerate() {
            let mut tl = TcpListener::from_std(l.socket);
            poll.registry()
                .register(&mut tl, Token(LISTENER_BASE + i), Interest::READABLE)?;
            ls.push((l.id, l.transport, tl));
        }
        for (i, s) in sockets.iter().enumerate() {
            poll.registry().register(
                &mut SourceFd(&s.as_raw_fd()),
                Token(i),
                Interest::READABLE,
            )?;
        }
        if let Some(fd) = wake {
            poll.registry()
                .register(&mut SourceFd(&fd), WAKE, Interest::READABLE)?;
        }
        Ok(Self {
            poll,
            events: Events::with_capacity(64),
            readable: vec![true; sockets.len()],
            sockets,
            recv: RecvBatch::new(RECV_BATCH, RECV_BUF),
            send: SendBatch::new(OUTBOX_ITEMS),
            outbox: Outbox::new(OUTBOX_BYTES, OUTBOX_ITEMS),
            stats: DriverStats::default(),
            listeners: ls,
            streams: Vec::new(),
            ready: Vec::new(),
            accept_again: Vec::new(),
            rbuf: vec![0u8; READ_CHUNK].into_boxed_slice(),
            streams_state: streams,
        })
    }

    /// Runs the shard loop until `stop` is set.
    pub fn run<S: Service>(
        &mut self,
        service: &mut S,
        io: &mut ShardIo,
        stop: &AtomicBool,
    ) -> io::Result<DriverStats> {
        let clock = Clock::new();
        while !stop.load(Ordering::Relaxed) {
            let now = clock.now();
            let mut timeout = if self.readable.iter().any(|&r| r) || !self.accept_again.is_empty() {
                std::time::Duration::ZERO
            } else {
                super::wait_for(service.poll_timeout(), now)
            };
            if !timeout.is_zero() && !io.prepare_sleep() {
                timeout = std::time::Duration::ZERO;
            }
            match self.poll.poll(&mut self.events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.stats.turns += 1;
            let mut woken = false;
            let mut accepts = std::mem::take(&mut self.accept_again);
            for ev in self.events.iter() {
                let t = ev.token().0;
                if ev.token() == WAKE {
                    woken = true;
                } else if t >= CONN_BASE {
                    let slot = (t - CONN_BASE) as u32;
                    if let Some(Some(s)) = self.streams.get_mut(slot as usize) {
                        if (ev.is_readable() || ev.is_read_closed() || ev.is_error()) && !s.readable
                        {
                            s.readable = true;
                            self.ready.push(slot);
                        }
                        if ev.is_writable() || ev.is_error() {
                            s.blocked = false;
                        }
                    }
                } else if t >= LISTENER_BASE {
                    if !accepts.contains(&(t - LISTENER_BASE)) {
                        accepts.push(t - LISTENER_BASE);
                    }
                } else if let Some(r) = self.readable.get_mut(t) {
                    *r = true;
                }
            }
            io.woke(woken);
            let now = clock.now();
            service.handle_turn(now, clock.wall_us());
            if let Some(st) = &mut self.streams_state {
                st.refresh();
            }
            io.begin(now, service, &mut self.outbox);
            for i in 0..self.sockets.len() {
                self.drain(i, service, io, now);
            }
            for l in accepts {
                if self.accept(l, now) {
                    self.accept_again.push(l);
                }
            }
            self.read_streams(service, io, now);
            self.connecting_done(now);
            if service.poll_timeout().is_some_and(|t| t <= now) {
                if !self.outbox.has_room() {
                    self.flush(now, io);
                }
                service.handle_timeout(now, &mut self.outbox);
            }
            if !self.outbox.has_room() {
                self.flush(now, io);
            }
            io.end(now, service, &mut self.outbox);
            self.flush(now, io);
            if let Some(st) = &mut self.streams_state {
                st.settle(now, service);
            }
            self.stream_io();
            io.publish(now, service, &self.stats);
        }
        self.flush(clock.now(), io);
        self.stream_io();
        Ok(self.stats)
    }

    /// Accepts what listener `l` has waiting (each refused one is closed at
    /// once), at most 256; true when it stopped at that bound (more may wait).
    fn accept(&mut self, l: usize, now: Instant) -> bool {
        for _ in 0..256 {
            let Some((id, transport, listener)) = self.listeners.get(l) else {
                return false;
            };
            let (sock, remote) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        self.stats.rx_errors += 1;
                    }
                    return false;
                }
            };
            let (id, transport) = (*id, *transport);
            let Some(st) = &mut self.streams_state else {
                continue;
            };
            let Ok(flow) = st.conns.accept(now, id, transport, remote) else {
                continue;
            };
            let _ = sock.set_nodelay(true);
            self.adopt(flow, sock, false);
            // Data may have come with the connection.
            let slot = flow.slot();
            if let Some(Some(s)) = self.streams.get_mut(slot as usize) {
                s.readable = true;
                self.ready.push(slot);
            }
        }
        true
    }

    /// Registers `sock` as the socket of `flow`.
    fn adopt(&mut self, flow: FlowId, mut sock: TcpStream, connecting: bool) {
        let slot = flow.slot() as usize;
        let token = Token(CONN_BASE + slot);
        if self
            .poll
            .registry()
            .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
            .is_err()
        {
            if let Some(st) = &mut self.streams_state {
                st.conns.handle_eof(flow);
            }
            return;
        }
        if self.streams.len() <= slot {
            self.streams.resize_with(slot + 1, || None);
        }
        if let Some(s) = self.streams.get_mut(slot) {
            *s = Some(StreamSock {
                flow,
                sock,
                readable: false,
                blocked: connecting,
                connecting,
            });
        }
    }

    /// Reads every ready connection (a few chunks each), messages to the service.
    fn read_streams<S: Service>(&mut self, service: &mut S, io: &mut ShardIo, now: Instant) {
        let ready = core::mem::take(&mut self.ready);
        let mut again = Vec::new();
        for slot in ready {
            let mut eof = false;
            let mut more = false;
            for n in 0..STREAM_BUDGET {
                if !self.outbox.has_room() {
                    self.flush(now, io);
                }
                let Some(Some(s)) = self.streams.get_mut(slot as usize) else {
                    break;
                };
                if s.connecting {
                    break;
                }
                let flow = s.flow;
                match s.sock.read(&mut self.rbuf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(k) => {
                        self.stats.rx += 1;
                        if let (Some(st), Some(data)) =
                            (&mut self.streams_state, self.rbuf.get(..k))
                        {
                            st.input(now, flow, data, service, &mut self.outbox);
                        }
                        if k < self.rbuf.len() {
                            break;
                        }
                        more = n + 1 == STREAM_BUDGET;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
            let Some(Some(s)) = self.streams.get_mut(slot as usize) else {
                continue;
            };
            if eof {
                let flow = s.flow;
                self.drop_stream(slot);
                if let Some(st) = &mut self.streams_state {
                    st.conns.handle_eof(flow);
                }
            } else if more {
                again.push(slot);
            } else {
                s.readable = false;
            }
        }
        self.ready = again;
    }

    /// Connects that finished (writable) become open, or failed.
    fn connecting_done(&mut self, now: Instant) {
        for slot in 0..self.streams.len() {
            let Some(Some(s)) = self.streams.get_mut(slot) else {
                continue;
            };
            if !s.connecting || s.blocked {
                continue;
            }
            let flow = s.flow;
            match s.sock.take_error() {
                Ok(None) if s.sock.peer_addr().is_ok() => {
                    s.connecting = false;
                    if let Some(st) = &mut self.streams_state {
                        st.conns.connected(now, flow);
                    }
                }
                Ok(None) => {
                    // Not yet: wait for the next writable event.
                    s.blocked = true;
                }
                _ => {
                    self.drop_stream(slot as u32);
                    if let Some(st) = &mut self.streams_state {
                        st.conns.connect_failed(flow);
                    }
                }
            }
        }
    }

    fn drop_stream(&mut self, slot: u32) {
        if let Some(s) = self.streams.get_mut(slot as usize) {
            if let Some(mut ss) = s.take() {
                let _ = self.poll.registry().deregister(&mut ss.sock);
            }
        }
    }

    /// Acts on the connections' requests (connect, close) and writes what they have queued.
    fn stream_io(&mut self) {
        self.apply_events();
        self.write_streams();
        self.apply_events();
    }

    /// Connects and closes the connection table asked for.
    fn apply_events(&mut self) {
        loop {
            let Some(st) = &mut self.streams_state else {
                return;
            };
            let Some(ev) = st.conns.poll_event() else {
                break;
            };
            match ev {
                Event::Connect { flow, remote } => match TcpStream::connect(remote) {
                    Ok(sock) => {
                        let _ = sock.set_nodelay(true);
                        self.adopt(flow, sock, true);
                    }
                    Err(_) => st.conns.connect_failed(flow),
                },
                Event::Close(flow) => {
                    if self
                        .streams
                        .get(flow.slot() as usize)
                        .is_some_and(|s| s.as_ref().is_some_and(|s| s.flow == flow))
                    {
                        self.drop_stream(flow.slot());
                    }
                }
            }
        }
    }

    /// Writes what the connections have queued, until a socket would block.
    fn write_streams(&mut self) {
        let Some(st) = &mut self.streams_state else {
            return;
        };
        let mut blocked = Vec::new();
        while let Some(flow) = st.conns.poll_write() {
            let Some(Some(s)) = self.streams.get_mut(flow.slot() as usize) else {
                continue;
            };
            if s.flow != flow || s.connecting {
                continue;
            }
            if s.blocked {
                blocked.push(flow);
                continue;
            }
            let mut failed = false;
            loop {
                let data = st.conns.output(flow);
                if data.is_empty() {
                    break;
                }
                match s.sock.write(data) {
                    Ok(n) => {
                        self.stats.tx += 1;
                        st.conns.wrote(flow, n);
                        if st.conns.peer(flow).is_none() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        s.blocked = true;
                        blocked.push(flow);
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                self.stats.tx_errors += 1;
                if let Some(mut ss) = self
                    .streams
                    .get_mut(flow.slot() as usize)
                    .and_then(Option::take)
                {
                    let _ = self.poll.registry().deregister(&mut ss.sock);
                }
                st.conns.handle_eof(flow);
            }
        }
        // Still to write once writable: back on the list for the next turns.
        for f in blocked {
            st.conns.requeue(f);
        }
    }

    /// Receives from socket `i` until it would block or the budget is spent.
    fn drain<S: Service>(&mut self, i: usize, service: &mut S, io: &mut ShardIo, now: Instant) {
        if !self.readable.get(i).copied().unwrap_or(false) {
            return;
        }
        let Some(fd) = self.sockets.get(i).map(AsRawFd::as_raw_fd) else {
            return;
        };
        let id = SocketId(u8::try_from(i).unwrap_or(u8::MAX));
        for _ in 0..BUDGET {
            let n = match self.recv.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        self.stats.rx_errors += 1;
                    }
                    if let Some(r) = self.readable.get_mut(i) {
                        *r = false;
                    }
                    return;
                }
            };
            for j in 0..n {
                if !self.outbox.has_room() {
                    self.flush(now, io);
                }
                let Some((data, src, truncated)) = self.recv.get(j) else {
                    continue;
                };
                self.stats.rx += 1;
                match src {
                    Some(_) if truncated => self.stats.rx_truncated += 1,
                    Some(src) => {
                        service.handle_message(now, data, &Peer::udp(src, id), &mut self.outbox)
                    }
                    None => self.stats.rx_errors += 1,
                }
            }
            if n < RECV_BATCH {
                if let Some(r) = self.readable.get_mut(i) {
                    *r = false;
                }
                return;
            }
        }
    }

    /// Sends everything queued, in order: stream transmits into their
    /// connections, then one `sendmmsg` per run of UDP datagrams from the same socket.
    fn flush(&mut self, now: Instant, io: &mut ShardIo) {
        if let Some(st) = &mut self.streams_state {
            st.take_transmits(now, &self.outbox, io);
        }
        let mut start = 0;
        loop {
            let items = self.outbox.items();
            let Some(first) = items.get(start) else { break };
            if first.peer.transport.is_stream() {
                start += 1;
                continue;
            }
            let sock = first.peer.local;
            let run = items
                .get(start..)
                .unwrap_or_default()
                .iter()
                .take_while(|t| t.peer.local == sock && !t.peer.transport.is_stream())
                .count();
            match self
                .sockets
                .get(usize::from(sock.0))
                .map(AsRawFd::as_raw_fd)
            {
                Some(fd) => self.send_run(fd, start, run),
                None => self.stats.tx_errors += run as u64,
            }
            start += run;
        }
        self.outbox.clear();
    }

    /// Sends items `start..start+len` through `fd`, waiting briefly for room
    /// when the socket buffer is full, and skipping a datagram the kernel refuses.
    fn send_run(&mut self, fd: RawFd, start: usize, len: usize) {
        let mut done = 0;
        let mut waits = 0;
        while done < len {
            let Some(items) = self.outbox.items().get(start + done..start + len) else {
                return;
            };
            match self.send.send(fd, &self.outbox, items) {
                Ok(n) => {
                    done += n;
                    self.stats.tx += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    waits += 1;
                    if waits > 20 || !sys::wait_writable(fd, 5) {
                        self.stats.tx_dropped += (len - done) as u64;
                        return;
                    }
                }
                Err(_) => {
                    // The first datagram of the run was refused (unreachable, too big…): skip it.
                    done += 1;
                    self.stats.tx_errors += 1;
                }
            }
        }
    }
}
