//! The portable driver: mio (epoll) readiness, `recvmmsg` batches in,
//! `sendmmsg` batches out. Used where io_uring is missing or refused, and
//! run by the same integration tests as the io_uring driver.
//!
//! One loop turn:
//! ```text
//! poll(timeout = next timer, ≤ 100 ms) ─► for each readable socket: recvmmsg (≤ BUDGET batches)
//!   └► service.handle_datagram(now, …) per datagram (flush early if the outbox fills)
//! service.handle_timeout(now) when due ─► sendmmsg the outbox, grouped by socket
//! ```

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::proxy::Service;
use crate::transport::{Outbox, Peer, SocketId};

use super::sys::{self, RecvBatch, SendBatch};
use super::{Clock, DriverStats, ShardIo, OUTBOX_BYTES, OUTBOX_ITEMS, RECV_BATCH, RECV_BUF};

/// Receive batches per socket per turn before the others get a go.
const BUDGET: usize = 8;
/// The token of the mesh wake-up eventfd.
const WAKE: Token = Token(usize::MAX);

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
}

impl MioDriver {
    /// A driver over `sockets` (already bound and nonblocking); socket `i` is [`SocketId`]`(i)`.
    /// `wake` is the mesh eventfd to watch, if the shard has a mesh.
    pub fn new(sockets: Vec<UdpSocket>, wake: Option<RawFd>) -> io::Result<Self> {
        let poll = Poll::new()?;
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
            let mut timeout = if self.readable.iter().any(|&r| r) {
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
            for ev in self.events.iter() {
                if ev.token() == WAKE {
                    woken = true;
                } else if let Some(r) = self.readable.get_mut(ev.token().0) {
                    *r = true;
                }
            }
            io.woke(woken);
            let now = clock.now();
            service.handle_turn(now, clock.wall_us());
            io.begin(now, service, &mut self.outbox);
            for i in 0..self.sockets.len() {
                self.drain(i, service, now);
            }
            if service.poll_timeout().is_some_and(|t| t <= now) {
                if !self.outbox.has_room() {
                    self.flush();
                }
                service.handle_timeout(now, &mut self.outbox);
            }
            if !self.outbox.has_room() {
                self.flush();
            }
            io.end(now, service, &mut self.outbox);
            self.flush();
            io.publish(now, service, &self.stats);
        }
        self.flush();
        Ok(self.stats)
    }

    /// Receives from socket `i` until it would block or the budget is spent.
    fn drain<S: Service>(&mut self, i: usize, service: &mut S, now: crate::time::Instant) {
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
                    self.flush();
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

    /// Sends everything queued, in order, one `sendmmsg` per run of the same socket.
    fn flush(&mut self) {
        let mut start = 0;
        loop {
            let items = self.outbox.items();
            let Some(first) = items.get(start) else { break };
            let sock = first.peer.local;
            let run = items
                .get(start..)
                .unwrap_or_default()
                .iter()
                .take_while(|t| t.peer.local == sock)
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
