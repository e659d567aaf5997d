//! The one loop turn every driver runs. A driver ([`Driver`]) is only I/O:
//! it waits, receives datagrams and stream bytes (handing each to a
//! [`Sink`]), sends the outbox and carries out the connection table's
//! socket requests. Everything else — the order of the core's calls, the
//! mesh, the store, the stream state, the counters — is written once, here.
//!
//! ```text
//! run: wait(timeout = next timer ≤ 100 ms, zero if the driver holds input or mail waits)
//!  turn: service.handle_turn · TLS reload · ShardIo::begin (mesh in)
//!   ─► driver.receive: datagrams ─► service.handle_message
//!                      accepts / connects / EOFs ─► Connections
//!                      stream bytes ─► Streams::input ─► service.handle_message
//!      (the outbox full: stream transmits taken, then driver.flush)
//!   ─► service.handle_timeout when due ─► ShardIo::end (store, mesh out)
//!   ─► flush: Streams::take_transmits, driver.flush (UDP)
//!   ─► Streams::settle (sweeps, closed flows to the service)
//!   ─► driver.stream_io (connect, close, write the connections) ─► publish counters
//! ```
//!
//! Why generic and not `dyn`: the receive path calls the sink once per
//! datagram; monomorphised, the turn costs what the drivers' hand-written
//! loops did (no indirect call per datagram), and a third driver (AF_XDP)
//! implements the same few primitives.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::proxy::Service;
use crate::time::Instant;
use crate::transport::conn::Connections;
use crate::transport::{FlowId, Outbox, Peer, SocketId, Transport};

use super::streams::Streams;
use super::{Clock, DriverStats, ShardIo};

/// The I/O primitives of a driver.
pub trait Driver {
    /// True when the driver already holds input (the next wait must not block).
    fn has_pending(&self) -> bool;

    /// Submits what is queued and waits for I/O, at most `timeout` (zero:
    /// do not block). Returns true when the mesh wake-up fired.
    fn wait(&mut self, timeout: std::time::Duration) -> io::Result<bool>;

    /// The outbox the core writes into now.
    fn outbox(&mut self) -> &mut Outbox;

    /// Hands what has arrived to `sink`: datagrams, accepted and connected
    /// sockets, stream bytes and ends of stream. Before handing an item in,
    /// makes room in the outbox when it is full ([`Sink::take_transmits`]
    /// then [`Driver::flush`]).
    fn receive<K: Sink>(&mut self, now: Instant, sink: &mut K) -> io::Result<()>;

    /// Sends the outbox's datagrams and empties it (its stream transmits
    /// were taken already).
    fn flush(&mut self) -> io::Result<()>;

    /// Carries out the connection table's requests (connect, close) and
    /// writes the bytes it has queued.
    fn stream_io(&mut self, now: Instant, conns: &mut Connections) -> io::Result<()>;

    /// What the driver counted.
    fn stats(&self) -> &DriverStats;
}

/// Where a driver hands what it received.
pub trait Sink {
    /// A datagram from `peer`.
    fn datagram(&mut self, now: Instant, data: &[u8], peer: &Peer, out: &mut Outbox);

    /// Bytes read from `flow`.
    fn stream(&mut self, now: Instant, flow: FlowId, data: &[u8], out: &mut Outbox);

    /// The connection table (None: the shard has no stream listeners).
    fn conns(&mut self) -> Option<&mut Connections>;

    /// Moves the outbox's stream transmits into their connections (the
    /// driver is about to send and clear it).
    fn take_transmits(&mut self, now: Instant, out: &Outbox);

    /// A socket accepted on listener `id` from `remote`: its flow, or None
    /// when refused (the driver closes it).
    fn accept(
        &mut self,
        now: Instant,
        id: SocketId,
        transport: Transport,
        remote: SocketAddr,
    ) -> Option<FlowId> {
        self.conns()?.accept(now, id, transport, remote).ok()
    }

    /// The peer closed `flow` or its socket failed.
    fn eof(&mut self, flow: FlowId) {
        if let Some(c) = self.conns() {
            c.handle_eof(flow);
        }
    }
}

/// The sink of a turn: the service, the stream state and the shard's I/O.
struct TurnSink<'a, S> {
    service: &'a mut S,
    streams: Option<&'a mut Streams>,
    io: &'a mut ShardIo,
}

impl<S: Service> Sink for TurnSink<'_, S> {
    #[inline]
    fn datagram(&mut self, now: Instant, data: &[u8], peer: &Peer, out: &mut Outbox) {
        self.service.handle_message(now, data, peer, out);
    }

    fn stream(&mut self, now: Instant, flow: FlowId, data: &[u8], out: &mut Outbox) {
        if let Some(st) = self.streams.as_deref_mut() {
            st.input(now, flow, data, self.service, out);
        }
    }

    fn conns(&mut self) -> Option<&mut Connections> {
        self.streams.as_deref_mut().map(|s| &mut s.conns)
    }

    fn take_transmits(&mut self, now: Instant, out: &Outbox) {
        if let Some(st) = self.streams.as_deref_mut() {
            st.take_transmits(now, out, self.io);
        }
    }
}

/// Stream transmits into their connections, then the datagrams out.
fn flush<D: Driver>(
    d: &mut D,
    now: Instant,
    streams: Option<&mut Streams>,
    io: &mut ShardIo,
) -> io::Result<()> {
    if let Some(st) = streams {
        st.take_transmits(now, d.outbox(), io);
    }
    d.flush()
}

/// Runs turns of `d` until `stop` is set, then sends what is left.
pub fn run<D: Driver, S: Service>(
    d: &mut D,
    service: &mut S,
    io: &mut ShardIo,
    mut streams: Option<&mut Streams>,
    stop: &AtomicBool,
) -> io::Result<DriverStats> {
    let clock = Clock::new();
    while !stop.load(Ordering::Relaxed) {
        step(d, service, io, streams.as_deref_mut(), &clock)?;
    }
    let now = clock.now();
    flush(d, now, streams.as_deref_mut(), io)?;
    if let Some(st) = streams {
        d.stream_io(now, &mut st.conns)?;
    }
    // Let the last sends go out.
    d.wait(std::time::Duration::ZERO)?;
    Ok(*d.stats())
}

/// One wait and one turn.
pub fn step<D: Driver, S: Service>(
    d: &mut D,
    service: &mut S,
    io: &mut ShardIo,
    streams: Option<&mut Streams>,
    clock: &Clock,
) -> io::Result<()> {
    let mut timeout = if d.has_pending() {
        std::time::Duration::ZERO
    } else {
        super::wait_for(service.poll_timeout(), clock.now())
    };
    if !timeout.is_zero() && !io.prepare_sleep() {
        timeout = std::time::Duration::ZERO;
    }
    let woken = d.wait(timeout)?;
    io.woke(woken);
    turn(d, service, io, streams, clock)
}

/// One turn after a wait: everything that arrived goes through the core,
/// and everything the core produced goes out.
pub fn turn<D: Driver, S: Service>(
    d: &mut D,
    service: &mut S,
    io: &mut ShardIo,
    mut streams: Option<&mut Streams>,
    clock: &Clock,
) -> io::Result<()> {
    let now = clock.now();
    service.handle_turn(now, clock.wall_us());
    if let Some(st) = streams.as_deref_mut() {
        st.refresh();
    }
    io.begin(now, service, d.outbox());
    let rx_before = d.stats().rx;
    {
        let mut sink = TurnSink {
            service: &mut *service,
            streams: streams.as_deref_mut(),
            io: &mut *io,
        };
        d.receive(now, &mut sink)?;
    }
    if service.poll_timeout().is_some_and(|t| t <= now) {
        if !d.outbox().has_room() {
            flush(d, now, streams.as_deref_mut(), io)?;
        }
        service.handle_timeout(now, d.outbox());
    }
    if !d.outbox().has_room() {
        flush(d, now, streams.as_deref_mut(), io)?;
    }
    io.end(now, service, d.outbox());
    flush(d, now, streams.as_deref_mut(), io)?;
    let received = d.stats().rx.saturating_sub(rx_before);
    service.handle_backlog(usize::try_from(received).unwrap_or(usize::MAX));
    if received != 0 {
        // How long what arrived this turn waited inside the edge before
        // its answers and forwards went out (what the flush sent).
        io.record_turn(clock.now().saturating_since(now));
    }
    let conns = match streams {
        Some(st) => {
            st.settle(now, service);
            d.stream_io(now, &mut st.conns)?;
            Some(&st.conns)
        }
        None => None,
    };
    io.publish(now, service, d.stats(), conns);
    Ok(())
}

/// A harness that runs any driver with stream listeners in a thread, for
/// the drivers' own tests.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod testkit {
    use std::io::{Read as _, Write as _};
    use std::net::{SocketAddr, TcpStream};
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::Duration;

    use super::*;
    use crate::proxy::Counters;
    use crate::shard::{socket, Listener};
    use crate::transport::conn::{ConnLimits, ConnStats};

    /// How the test service answers a message.
    #[derive(Debug, Clone, Copy)]
    pub(crate) enum Answer {
        /// With the message itself.
        Echo,
        /// With this many bytes of a pattern (byte i is i mod 251).
        Pad(usize),
        /// Messages from elsewhere go to this address over TCP (a new
        /// outbound connection); its own come back to it.
        Forward(SocketAddr),
    }

    struct Echo {
        counters: Counters,
        messages: u64,
        answer: Answer,
        pad: Vec<u8>,
    }

    impl Service for Echo {
        fn handle_message(&mut self, _: Instant, data: &[u8], peer: &Peer, out: &mut Outbox) {
            self.messages += 1;
            let _ = match self.answer {
                Answer::Echo => out.push(*peer, data),
                Answer::Pad(_) => out.push(*peer, &self.pad),
                Answer::Forward(to) if peer.remote != to => out.push(
                    Peer {
                        transport: Transport::Tcp,
                        remote: to,
                        local: SocketId(0),
                        flow: FlowId::NONE,
                    },
                    data,
                ),
                Answer::Forward(_) => out.push(*peer, data),
            };
        }

        fn counters(&self) -> &Counters {
            &self.counters
        }
    }

    /// What the server saw, read after its last turn.
    #[derive(Debug)]
    pub(crate) struct Outcome {
        pub(crate) conn: ConnStats,
        /// Connections still in the table.
        pub(crate) live: usize,
        /// Connections the driver still holds.
        pub(crate) driver_live: usize,
        pub(crate) messages: u64,
    }

    /// A server on a TCP listener of 127.0.0.1.
    pub(crate) struct Server {
        pub(crate) addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<Outcome>>,
    }

    impl Server {
        /// Stops the server after `settle` more of its turns' time.
        pub(crate) fn finish(mut self, settle: Duration) -> Outcome {
            std::thread::sleep(settle);
            self.stop.store(true, Ordering::Relaxed);
            self.thread.take().unwrap().join().unwrap()
        }
    }

    /// Runs the driver `make` builds (on the server thread) over one TCP
    /// listener; `live` counts the driver's connections.
    pub(crate) fn serve<D, M, L>(make: M, live: L, limits: ConnLimits, answer: Answer) -> Server
    where
        D: Driver,
        M: FnOnce(Vec<Listener>) -> D + Send + 'static,
        L: Fn(&D) -> usize + Send + 'static,
    {
        let l = socket::bind_tcp("127.0.0.1:0".parse().unwrap(), 64).unwrap();
        // Accepted sockets inherit a small send buffer: writes end short.
        socket2::SockRef::from(&l)
            .set_send_buffer_size(8192)
            .unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let listener = Listener {
                id: SocketId(0),
                transport: Transport::Tcp,
                socket: l,
            };
            let mut d = make(vec![listener]);
            let mut st = Streams::new(Connections::new(0, limits), None);
            let mut svc = Echo {
                counters: Counters::default(),
                messages: 0,
                answer,
                pad: match answer {
                    Answer::Pad(n) => (0..n).map(|i| (i % 251) as u8).collect(),
                    _ => Vec::new(),
                },
            };
            let mut io = ShardIo::none();
            let clock = Clock::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !stop2.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                step(&mut d, &mut svc, &mut io, Some(&mut st), &clock).unwrap();
            }
            Outcome {
                conn: st.conns.stats,
                live: st.conns.len(),
                driver_live: live(&d),
                messages: svc.messages,
            }
        });
        Server {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn message(conn: usize, n: usize) -> Vec<u8> {
        format!(
            "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5099;branch=z9hG4bK{conn}x{n}\r\n\
             To: <sip:a@localhost>\r\nFrom: <sip:a@localhost>;tag=1\r\nCall-ID: c{conn}\r\n\
             CSeq: {n} REGISTER\r\nContent-Length: 4\r\n\r\nbody"
        )
        .into_bytes()
    }

    fn client(addr: SocketAddr) -> TcpStream {
        let c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        c
    }

    fn read_exactly(c: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        let mut at = 0;
        while at < n {
            match c.read(&mut got[at..]) {
                Ok(0) => panic!("closed after {at} of {n} bytes"),
                Ok(k) => at += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read after {at} of {n} bytes: {e}"),
            }
        }
        got
    }

    /// Several connections; on each, one message split across three writes
    /// and two in one write: each comes back, in order, on its own connection.
    pub(crate) fn split_and_batched(s: Server) {
        let mut cs: Vec<TcpStream> = (0..4).map(|_| client(s.addr)).collect();
        for (i, c) in cs.iter_mut().enumerate() {
            let m = message(i, 1);
            c.write_all(&m[..10]).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        for (i, c) in cs.iter_mut().enumerate() {
            let m = message(i, 1);
            c.write_all(&m[10..m.len() - 6]).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        for (i, c) in cs.iter_mut().enumerate() {
            let m = message(i, 1);
            c.write_all(&m[m.len() - 6..]).unwrap();
            let mut two = message(i, 2);
            two.extend_from_slice(&message(i, 3));
            c.write_all(&two).unwrap();
        }
        for (i, c) in cs.iter_mut().enumerate() {
            let mut want = message(i, 1);
            want.extend_from_slice(&message(i, 2));
            want.extend_from_slice(&message(i, 3));
            let got = read_exactly(c, want.len());
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "connection {i}"
            );
        }
        drop(cs);
        let o = s.finish(Duration::from_millis(300));
        assert_eq!(o.messages, 12, "{o:?}");
        assert_eq!(o.conn.accepted, 4, "{o:?}");
        assert_eq!((o.live, o.driver_live), (0, 0), "{o:?}");
    }

    /// A peer that closes in the middle of a message: the half is dropped
    /// with the connection, and another connection is served as before.
    pub(crate) fn closed_mid_message(s: Server) {
        let mut a = client(s.addr);
        let m = message(0, 1);
        a.write_all(&m[..m.len() / 2]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(a);
        let mut b = client(s.addr);
        let m = message(1, 1);
        b.write_all(&m).unwrap();
        assert_eq!(read_exactly(&mut b, m.len()), m);
        drop(b);
        let o = s.finish(Duration::from_millis(300));
        assert_eq!(o.messages, 1, "{o:?}");
        assert_eq!(o.conn.closed, 2, "{o:?}");
        assert_eq!((o.live, o.driver_live), (0, 0), "{o:?}");
    }

    /// A peer that never reads its answers: once the write queue passes its
    /// bound, the connection is dropped and its memory released.
    pub(crate) fn never_reads(s: Server) {
        let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        c.set_recv_buffer_size(4096).unwrap();
        c.connect(&s.addr.into()).unwrap();
        let mut c: TcpStream = c.into();
        c.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut sent = 0;
        for n in 0..2000 {
            if c.write_all(&message(0, n)).is_err() {
                break;
            }
            sent += 1;
        }
        let o = s.finish(Duration::from_millis(500));
        assert!(sent > 0);
        // The answers that were still coming after the close go to the
        // client's address on new outbound connections (the table's
        // choice), which fail or overflow too.
        assert!(o.conn.overflow_closed >= 1, "{o:?}");
        assert_eq!(o.conn.accepted, 1, "{o:?}");
        assert_eq!((o.live, o.driver_live), (0, 0), "{o:?}");
        drop(c);
    }

    /// An upstream for [`connects_out`] (give its address to [`Answer::Forward`]).
    pub(crate) fn upstream() -> std::net::TcpListener {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap()
    }

    /// A message from a client goes upstream over a connection the driver
    /// opens (CONNECT); upstream's answer on it comes back on it.
    pub(crate) fn connects_out(s: Server, up: std::net::TcpListener) {
        let mut c = client(s.addr);
        let m = message(0, 1);
        c.write_all(&m).unwrap();
        let (mut u, _) = up.accept().unwrap();
        u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(read_exactly(&mut u, m.len()), m);
        let m2 = message(0, 2);
        u.write_all(&m2).unwrap();
        assert_eq!(read_exactly(&mut u, m2.len()), m2);
        drop((c, u));
        let o = s.finish(Duration::from_millis(300));
        assert_eq!(o.messages, 2, "{o:?}");
        assert_eq!((o.conn.accepted, o.conn.connected), (1, 1), "{o:?}");
        assert_eq!((o.live, o.driver_live), (0, 0), "{o:?}");
    }

    /// A client that reads slowly through a small receive buffer: the
    /// server's writes end short and are continued; every byte arrives,
    /// in order.
    pub(crate) fn slow_reader(s: Server, pad: usize) {
        let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        c.set_recv_buffer_size(4096).unwrap();
        c.connect(&s.addr.into()).unwrap();
        let mut c: TcpStream = c.into();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = 8;
        for i in 0..n {
            c.write_all(&message(0, i)).unwrap();
        }
        let want: Vec<u8> = (0..pad).map(|i| (i % 251) as u8).collect();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::with_capacity(n * pad);
        while got.len() < n * pad {
            match c.read(&mut buf) {
                Ok(0) => panic!("closed after {} of {} bytes", got.len(), n * pad),
                Ok(k) => got.extend_from_slice(&buf[..k]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read after {} bytes: {e}", got.len()),
            }
            if got.len() % (64 * 1024) < 4096 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        for (i, chunk) in got.chunks(pad).enumerate() {
            assert!(chunk == want.as_slice(), "answer {i} differs");
        }
        drop(c);
        let o = s.finish(Duration::from_millis(300));
        assert_eq!(o.messages, n as u64, "{o:?}");
        assert_eq!((o.live, o.driver_live), (0, 0), "{o:?}");
    }

    /// The limits of [`slow_reader`]: room for every answer.
    pub(crate) fn big_queue() -> ConnLimits {
        ConnLimits {
            max_write_queue: 4 << 20,
            ..ConnLimits::default()
        }
    }

    /// The limits of [`never_reads`]: a small write queue.
    pub(crate) fn small_queue() -> ConnLimits {
        ConnLimits {
            max_write_queue: 64 * 1024,
            ..ConnLimits::default()
        }
    }
}
