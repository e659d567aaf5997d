//! The portable driver: mio (epoll) readiness, `recvmmsg` batches in,
//! `sendmmsg` batches out. Used where io_uring is missing or refused, and
//! run by the same integration tests as the io_uring driver.
//!
//! Stream listeners and connections are mio sources too. The turn itself
//! (what goes to the core, in which order) is [`super::turn`]'s; this file
//! is the I/O under it:
//! ```text
//! wait:    poll(timeout) ─► readable UDP sockets, listeners, connections noted
//! receive: recvmmsg per readable socket (≤ BUDGET batches) ─► Sink::datagram
//!          accept ─► Sink::accept · read ≤ READ_CHUNK per ready connection ─► Sink::stream
//!          connects that finished ─► Connections::connected / connect_failed
//! flush:   sendmmsg the outbox's datagrams, grouped by socket
//! stream_io: connect / close (Connections::poll_event), write (poll_write) until EAGAIN
//! ```

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};

use std::io::{Read as _, Write as _};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::time::Instant;
use crate::transport::conn::{Connections, Event};
use crate::transport::{FlowId, Outbox, Peer, SocketId, Transport};

use super::streams::READ_CHUNK;
use super::sys::{self, RecvBatch, SendBatch};
use super::turn::{Driver, Sink};
use super::{DriverStats, Listener, OUTBOX_BYTES, OUTBOX_ITEMS, RECV_BATCH, RECV_BUF};

/// Receive batches per socket per turn before the others get a go.
const BUDGET: usize = 8;
/// Reads per connection per turn.
const STREAM_BUDGET: usize = 4;
/// The token of the mesh wake-up eventfd.
const WAKE: Token = Token(usize::MAX);
/// The token of an extra descriptor a wrapping driver watches (AF_XDP).
const EXTRA: Token = Token(usize::MAX - 1);
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
    /// Listeners with connections waiting, from the last wait.
    accepts: Vec<usize>,
    /// By connection slot.
    streams: Vec<Option<StreamSock>>,
    /// Slots with bytes to read.
    ready: Vec<u32>,
    /// Slots with a connect under way.
    connecting: usize,
    rbuf: Box<[u8]>,
}

impl MioDriver {
    /// A driver over `sockets` (already bound and nonblocking); socket `i` is [`SocketId`]`(i)`.
    /// `wake` is the mesh eventfd to watch, if the shard has a mesh.
    pub fn new(sockets: Vec<UdpSocket>, wake: Option<RawFd>) -> io::Result<Self> {
        Self::with_streams(sockets, Vec::new(), wake)
    }

    /// A driver over UDP `sockets` and stream `listeners` (their
    /// connections are the turn's [`super::streams::Streams`]').
    pub fn with_streams(
        sockets: Vec<UdpSocket>,
        listeners: Vec<Listener>,
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
            accepts: (0..ls.len()).collect(),
            listeners: ls,
            streams: Vec::new(),
            ready: Vec::new(),
            connecting: 0,
            rbuf: vec![0u8; READ_CHUNK].into_boxed_slice(),
        })
    }

    /// Also wakes a wait when `fd` becomes readable (an AF_XDP socket; the
    /// wrapping driver reads its ring after every wait).
    pub fn watch_extra(&mut self, fd: RawFd) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), EXTRA, Interest::READABLE)
    }

    /// Counters, for a wrapping driver to add its own to.
    pub fn stats_mut(&mut self) -> &mut DriverStats {
        &mut self.stats
    }

    /// Sends `items` (datagrams of the outbox) through the kernel sockets,
    /// grouped by socket; the outbox is not cleared.
    pub fn send_items(&mut self, items: &[crate::transport::Transmit]) {
        send_runs(
            &mut self.send,
            &self.outbox,
            &mut self.stats,
            &self.sockets,
            items,
        );
    }

    /// Makes room in the outbox: its stream transmits to `sink`, its datagrams out.
    fn make_room<K: Sink>(&mut self, now: Instant, sink: &mut K) {
        if !self.outbox.has_room() {
            sink.take_transmits(now, &self.outbox);
            self.send_outbox();
        }
    }

    /// Accepts what listener `l` has waiting (each refused one is closed at
    /// once), at most 256; true when it stopped at that bound (more may wait:
    /// found by benches/e2e/idle_conns.sh, 1,818 of 10,000 connections left
    /// in the kernel's accept queue for good).
    fn accept<K: Sink>(&mut self, l: usize, now: Instant, sink: &mut K) -> bool {
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
            let Some(flow) = sink.accept(now, id, transport, remote) else {
                continue;
            };
            let _ = sock.set_nodelay(true);
            if !self.adopt(flow, sock, false) {
                sink.eof(flow);
                continue;
            }
            // Data may have come with the connection.
            let slot = flow.slot();
            if let Some(Some(s)) = self.streams.get_mut(slot as usize) {
                s.readable = true;
                self.ready.push(slot);
            }
        }
        true
    }

    /// Registers `sock` as the socket of `flow` (false: it could not be).
    fn adopt(&mut self, flow: FlowId, mut sock: TcpStream, connecting: bool) -> bool {
        let slot = flow.slot() as usize;
        let token = Token(CONN_BASE + slot);
        if self
            .poll
            .registry()
            .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
            .is_err()
        {
            return false;
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
        if connecting {
            self.connecting += 1;
        }
        true
    }

    /// Reads every ready connection (a few chunks each), messages to the service.
    fn read_streams<K: Sink>(&mut self, now: Instant, sink: &mut K) {
        let ready = core::mem::take(&mut self.ready);
        let mut again = Vec::new();
        for slot in ready {
            let mut eof = false;
            let mut more = false;
            for n in 0..STREAM_BUDGET {
                self.make_room(now, sink);
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
                        if let Some(data) = self.rbuf.get(..k) {
                            sink.stream(now, flow, data, &mut self.outbox);
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
                sink.eof(flow);
            } else if more {
                again.push(slot);
            } else {
                s.readable = false;
            }
        }
        self.ready = again;
    }

    /// Connects that finished (writable) become open, or failed.
    fn connecting_done<K: Sink>(&mut self, now: Instant, sink: &mut K) {
        if self.connecting == 0 {
            return;
        }
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
                    self.connecting -= 1;
                    if let Some(c) = sink.conns() {
                        c.connected(now, flow);
                    }
                }
                Ok(None) => {
                    // Not yet: wait for the next writable event.
                    s.blocked = true;
                }
                _ => {
                    self.drop_stream(slot as u32);
                    if let Some(c) = sink.conns() {
                        c.connect_failed(flow);
                    }
                }
            }
        }
    }

    fn drop_stream(&mut self, slot: u32) {
        if let Some(s) = self.streams.get_mut(slot as usize) {
            if let Some(mut ss) = s.take() {
                if ss.connecting {
                    self.connecting -= 1;
                }
                let _ = self.poll.registry().deregister(&mut ss.sock);
            }
        }
    }

    /// Connects and closes the connection table asked for.
    fn apply_events(&mut self, conns: &mut Connections) {
        while let Some(ev) = conns.poll_event() {
            match ev {
                Event::Connect { flow, remote } => match TcpStream::connect(remote) {
                    Ok(sock) => {
                        let _ = sock.set_nodelay(true);
                        if !self.adopt(flow, sock, true) {
                            conns.connect_failed(flow);
                        }
                    }
                    Err(_) => conns.connect_failed(flow),
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
    fn write_streams(&mut self, st: &mut Connections) {
        let mut blocked = Vec::new();
        while let Some(flow) = st.poll_write() {
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
                let data = st.output(flow);
                if data.is_empty() {
                    break;
                }
                match s.sock.write(data) {
                    Ok(n) => {
                        self.stats.tx += 1;
                        st.wrote(flow, n);
                        if st.peer(flow).is_none() {
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
                self.drop_stream(flow.slot());
                st.handle_eof(flow);
            }
        }
        // Still to write once writable: back on the list for the next turns.
        for f in blocked {
            st.requeue(f);
        }
    }

    /// Receives from socket `i` until it would block or the budget is spent.
    fn drain<K: Sink>(&mut self, i: usize, now: Instant, sink: &mut K) {
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
                self.make_room(now, sink);
                let Some((data, src, truncated)) = self.recv.get(j) else {
                    continue;
                };
                self.stats.rx += 1;
                match src {
                    Some(_) if truncated => self.stats.rx_truncated += 1,
                    Some(src) => sink.datagram(now, data, &Peer::udp(src, id), &mut self.outbox),
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

    /// Sends the outbox's datagrams (stream transmits were taken), one
    /// `sendmmsg` per run of datagrams from the same socket, and clears it.
    fn send_outbox(&mut self) {
        send_runs(
            &mut self.send,
            &self.outbox,
            &mut self.stats,
            &self.sockets,
            self.outbox.items(),
        );
        self.outbox.clear();
    }
}

/// Sends the datagrams among `items` (of `outbox`; stream transmits are
/// skipped) through their sockets, a run of consecutive items of one
/// socket per `sendmmsg` series.
fn send_runs(
    send: &mut SendBatch,
    outbox: &Outbox,
    stats: &mut DriverStats,
    sockets: &[UdpSocket],
    items: &[crate::transport::Transmit],
) {
    let mut start = 0;
    while let Some(first) = items.get(start) {
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
        let run_items = items.get(start..start + run).unwrap_or_default();
        match sockets.get(usize::from(sock.0)).map(AsRawFd::as_raw_fd) {
            Some(fd) => send_slice(send, outbox, stats, fd, run_items),
            None => stats.tx_errors += run as u64,
        }
        start += run;
    }
}

/// Sends `items` (of `outbox`) on socket `fd` in `sendmmsg` batches,
/// waiting a little while the socket is full.
fn send_slice(
    send: &mut SendBatch,
    outbox: &Outbox,
    stats: &mut DriverStats,
    fd: RawFd,
    items: &[crate::transport::Transmit],
) {
    let len = items.len();
    let mut done = 0;
    let mut waits = 0;
    while done < len {
        let Some(rest) = items.get(done..) else {
            return;
        };
        match send.send(fd, outbox, rest) {
            Ok(n) => {
                done += n;
                stats.tx += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                waits += 1;
                if waits > 20 || !sys::wait_writable(fd, 5) {
                    stats.tx_dropped += (len - done) as u64;
                    return;
                }
            }
            Err(_) => {
                done += 1;
                stats.tx_errors += 1;
            }
        }
    }
}

impl Driver for MioDriver {
    fn has_pending(&self) -> bool {
        self.readable.iter().any(|&r| r) || !self.ready.is_empty() || !self.accepts.is_empty()
    }

    fn wait(&mut self, timeout: std::time::Duration) -> io::Result<bool> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(false),
            Err(e) => return Err(e),
        }
        self.stats.turns += 1;
        let mut woken = false;
        for ev in self.events.iter() {
            let t = ev.token().0;
            if ev.token() == WAKE {
                woken = true;
            } else if ev.token() == EXTRA {
                // The wrapping driver's: it looks at its ring itself.
            } else if t >= CONN_BASE {
                let slot = (t - CONN_BASE) as u32;
                if let Some(Some(s)) = self.streams.get_mut(slot as usize) {
                    if (ev.is_readable() || ev.is_read_closed() || ev.is_error()) && !s.readable {
                        s.readable = true;
                        self.ready.push(slot);
                    }
                    if ev.is_writable() || ev.is_error() {
                        s.blocked = false;
                    }
                }
            } else if t >= LISTENER_BASE {
                self.accepts.push(t - LISTENER_BASE);
            } else if let Some(r) = self.readable.get_mut(t) {
                *r = true;
            }
        }
        Ok(woken)
    }

    fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    fn receive<K: Sink>(&mut self, now: Instant, sink: &mut K) -> io::Result<()> {
        for i in 0..self.sockets.len() {
            self.drain(i, now, sink);
        }
        let mut accepts = core::mem::take(&mut self.accepts);
        let mut again = Vec::new();
        for &l in &accepts {
            if self.accept(l, now, sink) {
                // Stopped at its bound with connections maybe still queued:
                // the listener is edge-triggered, so no new event would
                // come for those; accept again next turn.
                again.push(l);
            }
        }
        accepts.clear();
        accepts.extend(again);
        self.accepts = accepts;
        self.read_streams(now, sink);
        self.connecting_done(now, sink);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_outbox();
        Ok(())
    }

    fn stream_io(&mut self, _now: Instant, conns: &mut Connections) -> io::Result<()> {
        self.apply_events(conns);
        self.write_streams(conns);
        self.apply_events(conns);
        Ok(())
    }

    fn stats(&self) -> &DriverStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::turn::testkit::{self, serve, Answer};
    use crate::transport::conn::ConnLimits;

    fn server(limits: ConnLimits, answer: Answer) -> testkit::Server {
        serve(
            |l| MioDriver::with_streams(Vec::new(), l, None).unwrap(),
            |d: &MioDriver| d.streams.iter().flatten().count(),
            limits,
            answer,
        )
    }

    #[test]
    fn serves_tcp_messages_split_and_batched() {
        testkit::split_and_batched(server(ConnLimits::default(), Answer::Echo));
    }

    #[test]
    fn forgets_a_peer_that_closes_mid_message() {
        testkit::closed_mid_message(server(ConnLimits::default(), Answer::Echo));
    }

    #[test]
    fn drops_a_peer_that_never_reads() {
        testkit::never_reads(server(testkit::small_queue(), Answer::Pad(32 * 1024)));
    }

    #[test]
    fn connects_out_and_serves_the_outbound_connection() {
        let up = testkit::upstream();
        let to = up.local_addr().unwrap();
        testkit::connects_out(server(ConnLimits::default(), Answer::Forward(to)), up);
    }

    #[test]
    fn continues_short_writes_to_a_slow_reader() {
        testkit::slow_reader(server(testkit::big_queue(), Answer::Pad(60_000)), 60_000);
    }
}
