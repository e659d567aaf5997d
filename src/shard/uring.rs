//! The io_uring driver: one ring per shard, one multishot RECVMSG per socket
//! into a shared provided-buffer ring ([`super::bufring`]), one SENDMSG per
//! outgoing datagram pointing straight into the outbox arena, and one
//! `io_uring_enter` per loop turn that both submits the turn's sends and
//! waits for the next datagram or timer (EXT_ARG timeout) — two when the
//! wait coalesces (`[uring] coalesce_us`, while the receive rate brings at
//! least two datagrams per wait): the sends are submitted and settled
//! first, so that their completions do not end the wait.
//!
//! ```text
//! turn: arm recvs ─► enter(submit sends, wait ≥ 1 + sends, timeout = next timer)
//!   ─► reap CQEs: sends free their outbox; recvs join the backlog
//!   ─► each datagram: service.handle_datagram(now, …) into outbox[cur]; buffer recycled
//!   ─► publish recycled buffers (one tail store) ─► timers ─► flush: SENDMSG per item of
//!      outbox[cur], switch to the other outbox (waiting for its sends if any are in flight)
//! ```
//!
//! Buffer ownership (monoio's rule): a receive buffer is the kernel's until
//! its CQE, then ours until recycled; an outbox and the `msghdr`s of its
//! sends are the kernel's from the SENDMSG submission until every one of its
//! send CQEs has been reaped, and only then cleared for reuse. Two outboxes
//! alternate, so the core writes into one while the other's sends finish.
//! Dropping the driver cancels every request and reaps it before any memory
//! is released.
//!
//! Stream listeners (TCP, TLS, WS, WSS; their state is the turn's
//! [`Connections`]):
//! ```text
//! listener ─ multishot ACCEPT ─► Sink::accept ─► connection id (user_data)
//! connection ─ multishot RECV (buffer group 1, re-armed on ENOBUFS or when
//!              it ends) ─► Sink::stream · 0 / error ─► Sink::eof, close
//! table output ─► copied (≤ SEND_CHUNK) into the connection's own buffer ─► SEND;
//!              a short write continues from that buffer at its CQE
//! Event::Connect ─► socket + CONNECT (address boxed in the connection)
//! Event::Close / EOF ─► ASYNC_CANCEL(fd, all) ─► every CQE in ─► CLOSE ─► id reusable
//! ```
//! A connection's buffers (its send buffer, its connect address) are freed
//! only when its count of requests in flight is back to zero, after the
//! CLOSE: the kernel never reads freed memory, and an id is never reused
//! while a completion may still name it. A peer that does not read holds
//! at most one SEND (≤ SEND_CHUNK) here beyond the table's bounded queue.
//!
//! The turn (what goes to the core, in which order) is [`super::turn`]'s;
//! the driver implements its [`Driver`] primitives.
//!
//! Probed at start ([`probe`]): io_uring setup, the opcodes, EXT_ARG, the
//! buffer ring and a live multishot receive on loopback; on any failure
//! `--io auto` uses mio. [`probe_streams`] does the same for the stream
//! side (a shard with stream listeners runs mio without it, with a warning).
#![allow(unsafe_code)]

use std::io;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};

use io_uring::types::{CancelBuilder, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::time::{Duration, Instant};
use crate::transport::conn::{Connections, Event};
use crate::transport::{FlowId, Outbox, Peer, SocketId, Transport};

use super::bufring::{BufRing, BUF_SIZE, NAME_LEN};
use super::sys::{from_storage, to_storage};
use super::turn::{Driver, Sink};
use super::{DriverStats, Listener, OUTBOX_BYTES, OUTBOX_ITEMS};

const KIND_MASK: u64 = 0xff << 56;
const RECV: u64 = 1 << 56;
const SEND: u64 = 2 << 56;
const WAKE: u64 = 3 << 56;
/// A listener's multishot ACCEPT (low bits: listener index).
const ACCEPT: u64 = 4 << 56;
/// A connection's multishot RECV (low 32 bits: connection id, as below).
const SRECV: u64 = 5 << 56;
/// A connection's SEND.
const SSEND: u64 = 6 << 56;
/// An outbound connection's CONNECT.
const CONNECT: u64 = 7 << 56;
/// The cancel of a closing connection's requests.
const CANCEL: u64 = 8 << 56;
/// The CLOSE of a connection's socket.
const CLOSE: u64 = 9 << 56;
/// The stream receive buffers' group (the UDP one is [`BGID`]).
const BGID_STREAM: u16 = 1;
/// Stream receive buffers per shard, and their size.
const STREAM_BUFFERS: u16 = 64;
const STREAM_BUF_SIZE: u32 = super::streams::READ_CHUNK as u32;
/// Bytes of one SEND on a connection: the most the driver holds beyond
/// what the connection table bounds.
const SEND_CHUNK: usize = 64 * 1024;
/// How long a listener whose accept failed waits before it is armed again.
const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);
/// Send buffer capacity a connection keeps between writes.
const KEEP_SEND: usize = 4096;
/// No connection in `by_slot`.
const NO_CONN: u32 = u32::MAX;
/// Receive buffers per shard (the ring covers one loop turn; SO_RCVBUF absorbs bursts).
const RECV_BUFFERS: u16 = 128;
/// With coalescing, the completions a wait returns for at most (a batch that fills returns early).
const COALESCE_BATCH: usize = 64;
const BGID: u16 = 0;

#[derive(Clone, Copy)]
struct Cqe {
    user_data: u64,
    res: i32,
    flags: u32,
}

/// Header, iovec and address of one SENDMSG, alive until its CQE.
struct SendHdr {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_storage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    Connecting,
    Open,
    /// Its requests are being cancelled, then its socket closed.
    Closing,
}

/// The driver's side of one stream connection.
struct UConn {
    flow: FlowId,
    /// The socket, until its CLOSE is submitted.
    sock: Option<TcpStream>,
    state: ConnState,
    recv_armed: bool,
    // INVARIANT: while `sending`, `out` is neither resized nor dropped: the
    // SEND in flight reads `out[sent..]`.
    out: Vec<u8>,
    sent: usize,
    sending: bool,
    // INVARIANT: boxed, untouched from the CONNECT's submission to its CQE.
    addr: Box<libc::sockaddr_storage>,
    /// Requests submitted whose last CQE has not arrived; the connection
    /// (and its buffers) is freed only at zero, after its CLOSE.
    ops: u32,
}

/// The io_uring driver of one shard. Not `Send`: create it on the shard's thread
/// (the ring is set up single-issuer).
pub struct UringDriver {
    // Field order is drop order: the ring goes before the memory it referenced.
    ring: IoUring,
    sockets: Vec<UdpSocket>,
    bufs: BufRing,
    /// Stream listeners: (socket id, transport, listener); `accept_armed` by index.
    listeners: Vec<(SocketId, Transport, TcpListener)>,
    accept_armed: Vec<bool>,
    /// After an accept error (EMFILE, ENFILE, ENOMEM…), a listener is
    /// armed again only after this (else it would fail at once, every turn).
    accept_pause: Vec<Option<std::time::Instant>>,
    /// The stream receive buffers (with listeners only).
    sbufs: Option<BufRing>,
    /// Connections by driver id (in user_data); an id is reused only after
    /// its connection's CLOSE completed.
    conns: Vec<Option<UConn>>,
    free: Vec<u32>,
    /// Flow slot → driver id of its live connection.
    by_slot: Vec<u32>,
    /// Connections whose multishot receive must be armed.
    rearm: Vec<u32>,
    // INVARIANT: boxed, alive as long as the ring; the kernel reads only its
    // namelen/controllen for multishot receives.
    recv_hdr: Box<libc::msghdr>,
    armed: Vec<bool>,
    outboxes: [Outbox; 2],
    // INVARIANT: hdrs[o][i] stays untouched while inflight[o] > 0.
    hdrs: [Box<[SendHdr]>; 2],
    inflight: [u32; 2],
    cur: usize,
    /// Sends pushed since the last enter (they complete inline during it).
    queued: u32,
    backlog: Vec<Cqe>,
    /// The mesh eventfd, watched by a multishot poll while `wake_armed`.
    wake_fd: Option<RawFd>,
    wake_armed: bool,
    /// A wake-up CQE arrived since the last turn.
    woken: bool,
    /// Completion coalescing: the kernel returns once this long has passed
    /// with at least one completion, or when a batch is full (0: off).
    coalesce_us: u32,
    /// The receive rate estimate that gates coalescing: datagrams since
    /// `rate_since`, and whether the last window's rate made it worth it.
    rate_since: Instant,
    rate_rx: u64,
    coalescing: bool,
    stats: DriverStats,
}

/// How often the receive rate that gates coalescing is re-estimated.
const RATE_WINDOW: Duration = Duration::from_millis(10);
/// Coalesce only when the rate says a wait of `coalesce_us` gathers at
/// least this many more datagrams. Below it, the wait gathers about one: it
/// costs a timer wake-up and latency and saves nothing (measured with SIPp
/// REGISTERs at 5,000/s — one datagram per 200 µs — 9.5/11.5 µs per REGISTER
/// coalesced, 7.6/8.8 not; calls at 5,000/s bring ~6 datagrams per 200 µs,
/// where coalescing saves a third).
const COALESCE_MIN_EXPECTED: u64 = 2;

fn send_hdrs() -> Box<[SendHdr]> {
    (0..OUTBOX_ITEMS)
        .map(|_| SendHdr {
            // SAFETY: all-zero is valid for these C structs; each is filled before use.
            hdr: unsafe { core::mem::zeroed() },
            iov: libc::iovec {
                iov_base: core::ptr::null_mut(),
                iov_len: 0,
            },
            // SAFETY: as above.
            addr: unsafe { core::mem::zeroed() },
        })
        .collect()
}

fn build_ring(entries: u32, cq: u32) -> io::Result<IoUring> {
    let mut b = IoUring::builder();
    b.setup_cqsize(cq)
        .setup_clamp()
        .setup_single_issuer()
        .setup_defer_taskrun();
    match b.build(entries) {
        Ok(r) => Ok(r),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // Kernels before 6.1: no DEFER_TASKRUN.
            let mut b = IoUring::builder();
            b.setup_cqsize(cq).setup_clamp().setup_coop_taskrun();
            b.build(entries)
        }
        Err(e) => Err(e),
    }
}

impl UringDriver {
    /// A driver over `sockets` (bound, nonblocking); socket `i` is [`SocketId`]`(i)`.
    pub fn new(sockets: Vec<UdpSocket>) -> io::Result<Self> {
        Self::with_buffers(sockets, Vec::new(), None, RECV_BUFFERS)
    }

    /// A driver over UDP `sockets` and stream `listeners` (their
    /// connections are the turn's [`super::streams::Streams`]'); `wake` is
    /// the mesh eventfd to watch, if the shard has a mesh.
    pub fn with_streams(
        sockets: Vec<UdpSocket>,
        listeners: Vec<Listener>,
        wake: Option<RawFd>,
    ) -> io::Result<Self> {
        Self::with_buffers(sockets, listeners, wake, RECV_BUFFERS)
    }

    fn with_buffers(
        sockets: Vec<UdpSocket>,
        listeners: Vec<Listener>,
        wake: Option<RawFd>,
        buffers: u16,
    ) -> io::Result<Self> {
        let sq = 512u32;
        // Each recv CQE holds a buffer and each send CQE an outbox item, so at
        // most buffers + 2 × items (+ the recvs' final CQEs) can be pending: the
        // completion queue cannot overflow (an overflow would end the multishots).
        // Stream requests can (one per connection): an overflow ends a
        // multishot, which is then armed again.
        let streams = if listeners.is_empty() {
            0
        } else {
            u32::from(STREAM_BUFFERS) + 256
        };
        let cq =
            (u32::from(buffers) + 2 * OUTBOX_ITEMS as u32 + 64 + sockets.len() as u32 + streams)
                .max(2 * sq)
                .next_power_of_two();
        let ring = build_ring(sq, cq)?;
        let bufs = BufRing::new(buffers, BUF_SIZE)?;
        // SAFETY: the ring memory is a page-aligned mapping of `buffers` entries
        // that outlives the registration (Drop unregisters before `bufs` goes).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.ring_addr(),
                bufs.entries(),
                BGID,
                0,
            )?;
        }
        let sbufs = if listeners.is_empty() {
            None
        } else {
            let b = BufRing::new(STREAM_BUFFERS, STREAM_BUF_SIZE)?;
            // SAFETY: as above, for the stream group; Drop unregisters it too.
            unsafe {
                ring.submitter().register_buf_ring_with_flags(
                    b.ring_addr(),
                    b.entries(),
                    BGID_STREAM,
                    0,
                )?;
            }
            Some(b)
        };
        // SAFETY: all-zero is a valid msghdr.
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { core::mem::zeroed() });
        recv_hdr.msg_namelen = NAME_LEN as libc::socklen_t;
        Ok(Self {
            ring,
            armed: vec![false; sockets.len()],
            sockets,
            bufs,
            accept_armed: vec![false; listeners.len()],
            accept_pause: vec![None; listeners.len()],
            listeners: listeners
                .into_iter()
                .map(|l| (l.id, l.transport, l.socket))
                .collect(),
            sbufs,
            conns: Vec::new(),
            free: Vec::new(),
            by_slot: Vec::new(),
            rearm: Vec::new(),
            recv_hdr,
            outboxes: [
                Outbox::new(OUTBOX_BYTES, OUTBOX_ITEMS),
                Outbox::new(OUTBOX_BYTES, OUTBOX_ITEMS),
            ],
            hdrs: [send_hdrs(), send_hdrs()],
            inflight: [0, 0],
            cur: 0,
            queued: 0,
            backlog: Vec::with_capacity(cq as usize),
            wake_fd: wake,
            wake_armed: false,
            woken: false,
            coalesce_us: 0,
            rate_since: Instant::ZERO,
            rate_rx: 0,
            coalescing: false,
            stats: DriverStats::default(),
        })
    }

    /// Pushes an SQE, flushing the submission queue first if it is full.
    ///
    /// # Safety
    /// Every pointer in `sqe` must stay valid until its CQE is reaped.
    unsafe fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        // SAFETY: forwarded to the caller.
        if unsafe { self.ring.submission().push(sqe) }.is_ok() {
            return Ok(());
        }
        self.ring.submit()?;
        // SAFETY: forwarded to the caller.
        unsafe { self.ring.submission().push(sqe) }
            .map_err(|_| io::Error::other("submission queue full"))
    }

    fn arm(&mut self) -> io::Result<()> {
        if let (Some(fd), false) = (self.wake_fd, self.wake_armed) {
            let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(WAKE);
            // SAFETY: a poll request holds no pointer; the eventfd outlives the
            // ring (the mesh owns it for the life of the process).
            unsafe { self.push(&sqe)? };
            self.wake_armed = true;
        }
        if self.bufs.available() == 0 {
            // Re-arming with no buffer would end at once with ENOBUFS.
            return Ok(());
        }
        for i in 0..self.sockets.len() {
            if self.armed.get(i).copied().unwrap_or(true) {
                continue;
            }
            let Some(fd) = self.sockets.get(i).map(AsRawFd::as_raw_fd) else {
                continue;
            };
            let sqe = opcode::RecvMsgMulti::new(types::Fd(fd), &*self.recv_hdr, BGID)
                .build()
                .user_data(RECV | i as u64);
            // SAFETY: `recv_hdr` is boxed and lives as long as the ring; the
            // buffers belong to the registered group, mapped until Drop has
            // cancelled this request.
            unsafe { self.push(&sqe)? };
            if let Some(a) = self.armed.get_mut(i) {
                *a = true;
            }
        }
        Ok(())
    }

    /// Coalesce completions: once `us` µs of a wait have passed with at
    /// least one completion, return; until then, wait for a batch. Needs
    /// IORING_FEAT_MIN_TIMEOUT (6.12); ignored (returns false) without it.
    ///
    /// Why: on a loaded host every sleep/wake costs more CPU than handling a
    /// datagram (about 20 µs here against about 2 µs); at a few thousand calls
    /// per second a call's six messages each cost a wake-up. Waiting 200 µs
    /// for company turns six wake-ups per call into about one, at the price of
    /// at most that much added latency per message, and none when idle (the
    /// minimum counts from the start of the wait).
    pub fn set_coalesce(&mut self, us: u32) -> bool {
        if us > 0 && !self.ring.params().is_feature_min_timeout() {
            return false;
        }
        self.coalesce_us = us;
        true
    }

    /// Counts this turn's datagrams; once a window has passed, decides
    /// whether the next waits coalesce: when `rate × coalesce_us` is at
    /// least [`COALESCE_MIN_EXPECTED`] datagrams.
    fn estimate_rate(&mut self, now: Instant) {
        self.rate_rx += self.backlog.len() as u64;
        let span = now.saturating_since(self.rate_since);
        if span < RATE_WINDOW {
            return;
        }
        let expected_x_span = self.rate_rx * u64::from(self.coalesce_us);
        self.coalescing = self.coalesce_us > 0
            && expected_x_span >= COALESCE_MIN_EXPECTED * span.as_micros().max(1);
        self.rate_since = now;
        self.rate_rx = 0;
    }

    /// Submits what is queued and waits for at least one more completion or `wait`.
    fn enter(&mut self, wait: std::time::Duration) -> io::Result<()> {
        let batch = if self.coalescing && !wait.is_zero() {
            COALESCE_BATCH
        } else {
            1
        };
        if batch > 1 && self.queued > 0 {
            // Send first, then wait. A coalescing wait that also submits
            // sends finds their completions (posted inline, before it
            // sleeps) in the ring when its minimum expires, and returns
            // for them alone: a timer wake-up with nothing to do, one per
            // turn that sent anything (measured: 1–1.5 µs per REGISTER at
            // 5,000/s, 1.2 µs per call).
            // Settled here, they cannot end the wait.
            match self.ring.submitter().submit() {
                Ok(_) => {}
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN) => {}
                    _ => return Err(e),
                },
            }
            self.queued = 0;
            self.reap();
            if !self.backlog.is_empty() {
                return Ok(());
            }
        }
        let want = batch + self.queued as usize;
        self.queued = 0;
        let ts = Timespec::from(wait);
        let args = SubmitArgs::new().timespec(&ts).min_wait_usec(if batch > 1 {
            self.coalesce_us
        } else {
            0
        });
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// Moves every available completion into the backlog, settling sends at once.
    fn reap(&mut self) {
        let Self {
            ring,
            backlog,
            inflight,
            stats,
            armed,
            wake_armed,
            woken,
            ..
        } = self;
        for c in ring.completion() {
            let user_data = c.user_data();
            match user_data & KIND_MASK {
                SEND => {
                    let ob = ((user_data >> 32) & 1) as usize;
                    if let Some(n) = inflight.get_mut(ob) {
                        *n = n.saturating_sub(1);
                    }
                    if c.result() < 0 {
                        stats.tx_errors += 1;
                    } else {
                        stats.tx += 1;
                    }
                }
                RECV => {
                    if !cqueue::more(c.flags()) {
                        if let Some(a) = armed.get_mut((user_data & 0xffff) as usize) {
                            *a = false;
                        }
                    }
                    backlog.push(Cqe {
                        user_data,
                        res: c.result(),
                        flags: c.flags(),
                    });
                }
                WAKE => {
                    *woken = true;
                    if !cqueue::more(c.flags()) || c.result() < 0 {
                        *wake_armed = false;
                    }
                }
                // Stream requests: settled in order by `receive`.
                _ => backlog.push(Cqe {
                    user_data,
                    res: c.result(),
                    flags: c.flags(),
                }),
            }
        }
    }

    /// Queues a SENDMSG for every datagram of the current outbox, then
    /// switches to the other one, waiting for its earlier sends to finish.
    fn flush(&mut self) -> io::Result<()> {
        let ob = self.cur;
        let n = self.outboxes.get(ob).map_or(0, Outbox::len);
        if n == 0 {
            return Ok(());
        }
        for i in 0..n {
            let sqe = {
                let Self {
                    outboxes,
                    hdrs,
                    sockets,
                    ..
                } = &mut *self;
                let (Some(outbox), Some(h)) = (
                    outboxes.get(ob),
                    hdrs.get_mut(ob).and_then(|h| h.get_mut(i)),
                ) else {
                    continue;
                };
                let Some(t) = outbox.items().get(i) else {
                    continue;
                };
                if t.peer.transport.is_stream() {
                    // Taken into its connection already (Sink::take_transmits).
                    continue;
                }
                let Some(fd) = sockets
                    .get(usize::from(t.peer.local.0))
                    .map(AsRawFd::as_raw_fd)
                else {
                    continue;
                };
                let bytes = outbox.bytes(t);
                let namelen = to_storage(&t.peer.remote, &mut h.addr);
                h.iov = libc::iovec {
                    iov_base: bytes.as_ptr() as *mut libc::c_void,
                    iov_len: bytes.len(),
                };
                // SAFETY: all-zero is a valid msghdr; the fields set below are the only ones used.
                h.hdr = unsafe { core::mem::zeroed() };
                h.hdr.msg_name = (&mut h.addr as *mut libc::sockaddr_storage).cast();
                h.hdr.msg_namelen = namelen;
                h.hdr.msg_iov = &mut h.iov;
                h.hdr.msg_iovlen = 1;
                opcode::SendMsg::new(types::Fd(fd), &h.hdr)
                    .build()
                    .user_data(SEND | (ob as u64) << 32 | i as u64)
            };
            // SAFETY: the msghdr, iovec and address live in hdrs[ob][i] and the
            // bytes in outboxes[ob]'s arena; neither is touched again until
            // inflight[ob] returns to zero (INVARIANT on `hdrs`), and Drop reaps
            // every send before freeing them.
            unsafe { self.push(&sqe)? };
            if let Some(c) = self.inflight.get_mut(ob) {
                *c += 1;
            }
            self.queued += 1;
        }
        self.cur = ob ^ 1;
        // The other outbox is ours again once its sends have completed.
        let mut spins = 0;
        while self.inflight.get(self.cur).copied().unwrap_or(0) > 0 {
            self.ring.submitter().submit_and_wait(1)?;
            self.queued = 0;
            self.reap();
            spins += 1;
            if spins > 10_000 {
                return Err(io::Error::other("sends never completed"));
            }
        }
        if let Some(o) = self.outboxes.get_mut(self.cur) {
            o.clear();
        }
        Ok(())
    }

    fn datagram<K: Sink>(&mut self, c: Cqe, now: Instant, sink: &mut K) -> io::Result<()> {
        if c.res < 0 {
            if c.res != -libc::ENOBUFS && c.res != -libc::ECANCELED {
                self.stats.rx_errors += 1;
            }
            return Ok(());
        }
        let Some(bid) = cqueue::buffer_select(c.flags) else {
            self.stats.rx_errors += 1;
            return Ok(());
        };
        self.make_room(now, sink)?;
        let socket = SocketId((c.user_data & 0xff) as u8);
        let Self {
            bufs,
            recv_hdr,
            outboxes,
            cur,
            stats,
            ..
        } = self;
        if let (Some(buf), Some(out)) = (bufs.take(bid, c.res as usize), outboxes.get_mut(*cur)) {
            match RecvMsgOut::parse(buf, recv_hdr) {
                Ok(msg) => {
                    stats.rx += 1;
                    let src = parse_name(msg.name_data());
                    match src {
                        Some(_) if msg.is_payload_truncated() => stats.rx_truncated += 1,
                        Some(src) => {
                            sink.datagram(now, msg.payload_data(), &Peer::udp(src, socket), out)
                        }
                        None => stats.rx_errors += 1,
                    }
                }
                Err(()) => stats.rx_errors += 1,
            }
        }
        self.bufs.recycle(bid);
        Ok(())
    }

    /// Makes room in the current outbox: its stream transmits to `sink`,
    /// its datagrams out.
    fn make_room<K: Sink>(&mut self, now: Instant, sink: &mut K) -> io::Result<()> {
        match self.outboxes.get(self.cur) {
            Some(o) if !o.has_room() => {
                sink.take_transmits(now, o);
                self.flush()
            }
            _ => Ok(()),
        }
    }

    /// A completion of a stream request (accept, receive, send, connect,
    /// cancel, close).
    fn stream_cqe<K: Sink>(&mut self, c: Cqe, now: Instant, sink: &mut K) -> io::Result<()> {
        let id = (c.user_data & 0xffff_ffff) as u32;
        match c.user_data & KIND_MASK {
            ACCEPT => self.accepted(id as usize, c, now, sink),
            SRECV => self.stream_received(id, c, now, sink)?,
            SSEND => self.stream_sent(id, c, sink)?,
            CONNECT => self.stream_connected(id, c, now, sink),
            CANCEL | CLOSE => {
                if let Some(Some(u)) = self.conns.get_mut(id as usize) {
                    u.ops = u.ops.saturating_sub(1);
                }
            }
            _ => return Ok(()),
        }
        self.settle_conn(id, c.user_data & KIND_MASK)
    }

    /// A socket accepted on listener `l` (multishot: re-armed when it ended).
    fn accepted<K: Sink>(&mut self, l: usize, c: Cqe, now: Instant, sink: &mut K) {
        if !cqueue::more(c.flags) {
            if let Some(a) = self.accept_armed.get_mut(l) {
                *a = false;
            }
        }
        if c.res < 0 {
            if c.res != -libc::ECANCELED {
                self.stats.rx_errors += 1;
                if let Some(p) = self.accept_pause.get_mut(l) {
                    *p = Some(std::time::Instant::now() + ACCEPT_PAUSE);
                }
            }
            return;
        }
        // SAFETY: a successful ACCEPT's result is a new descriptor that
        // nothing else owns; the TcpStream becomes its only owner.
        let sock = unsafe { TcpStream::from_raw_fd(c.res) };
        let Some((sid, transport)) = self.listeners.get(l).map(|(i, t, _)| (*i, *t)) else {
            return;
        };
        let Ok(remote) = sock.peer_addr() else { return };
        // Refused: dropping the socket closes it.
        let Some(flow) = sink.accept(now, sid, transport, remote) else {
            return;
        };
        let _ = sock.set_nodelay(true);
        self.adopt(flow, sock, ConnState::Open);
    }

    /// Takes `sock` as the socket of `flow`.
    fn adopt(&mut self, flow: FlowId, sock: TcpStream, state: ConnState) -> u32 {
        let u = UConn {
            flow,
            sock: Some(sock),
            state,
            recv_armed: false,
            out: Vec::new(),
            sent: 0,
            sending: false,
            // SAFETY: all-zero is a valid sockaddr_storage.
            addr: Box::new(unsafe { core::mem::zeroed() }),
            ops: 0,
        };
        let id = match self.free.pop() {
            Some(id) => {
                if let Some(slot) = self.conns.get_mut(id as usize) {
                    *slot = Some(u);
                }
                id
            }
            None => {
                self.conns.push(Some(u));
                (self.conns.len() - 1) as u32
            }
        };
        let slot = flow.slot() as usize;
        if self.by_slot.len() <= slot {
            self.by_slot.resize(slot + 1, NO_CONN);
        }
        if let Some(b) = self.by_slot.get_mut(slot) {
            *b = id;
        }
        if state == ConnState::Open {
            self.rearm.push(id);
        }
        id
    }

    /// The live connection of `flow`.
    fn lookup(&self, flow: FlowId) -> Option<u32> {
        let id = *self.by_slot.get(flow.slot() as usize)?;
        match self.conns.get(id as usize) {
            Some(Some(u)) if u.flow == flow && u.state != ConnState::Closing => Some(id),
            _ => None,
        }
    }

    /// Bytes (or the end) of a connection's multishot receive.
    fn stream_received<K: Sink>(
        &mut self,
        id: u32,
        c: Cqe,
        now: Instant,
        sink: &mut K,
    ) -> io::Result<()> {
        let last = !cqueue::more(c.flags);
        let (flow, open) = match self.conns.get_mut(id as usize) {
            Some(Some(u)) => {
                if last {
                    u.recv_armed = false;
                    u.ops = u.ops.saturating_sub(1);
                }
                (u.flow, u.state == ConnState::Open)
            }
            _ => (FlowId::NONE, false),
        };
        if let Some(bid) = cqueue::buffer_select(c.flags) {
            let len = usize::try_from(c.res).unwrap_or(0);
            if open && len > 0 {
                self.make_room(now, sink)?;
            }
            let Self {
                sbufs,
                outboxes,
                cur,
                stats,
                ..
            } = self;
            if let Some(b) = sbufs.as_mut() {
                if let (Some(data), Some(out)) = (b.take(bid, len), outboxes.get_mut(*cur)) {
                    if open && len > 0 {
                        stats.rx += 1;
                        sink.stream(now, flow, data, out);
                    }
                }
                b.recycle(bid);
            }
        }
        if !open {
            return Ok(());
        }
        if c.res > 0 || c.res == -libc::ENOBUFS {
            // More to come: a multishot that ended (buffers ran out, the
            // completion queue was full) is armed again before the next wait.
            if last {
                self.rearm.push(id);
            }
        } else if c.res != -libc::ECANCELED {
            // End of stream or a socket error.
            if c.res < 0 {
                self.stats.rx_errors += 1;
            }
            sink.eof(flow);
            self.close_conn(id);
        }
        Ok(())
    }

    /// A SEND of a connection completed: the bytes written are the
    /// table's to drop; a short write is continued from the owned buffer.
    fn stream_sent<K: Sink>(&mut self, id: u32, c: Cqe, sink: &mut K) -> io::Result<()> {
        let Some(Some(u)) = self.conns.get_mut(id as usize) else {
            return Ok(());
        };
        u.ops = u.ops.saturating_sub(1);
        u.sending = false;
        if u.state != ConnState::Open {
            return Ok(());
        }
        let flow = u.flow;
        let n = match usize::try_from(c.res) {
            Ok(n) if n > 0 => n,
            _ => {
                self.stats.tx_errors += 1;
                sink.eof(flow);
                self.close_conn(id);
                return Ok(());
            }
        };
        self.stats.tx += 1;
        u.sent = (u.sent + n).min(u.out.len());
        let more = u.sent < u.out.len();
        if !more {
            u.out.clear();
            u.sent = 0;
            if u.out.capacity() > KEEP_SEND {
                // An idle connection keeps a small buffer, not its largest write.
                u.out = Vec::new();
            }
        }
        if let Some(t) = sink.conns() {
            t.wrote(flow, n);
        }
        if more {
            self.submit_send(id)?;
        }
        Ok(())
    }

    /// A CONNECT of an outbound connection completed.
    fn stream_connected<K: Sink>(&mut self, id: u32, c: Cqe, now: Instant, sink: &mut K) {
        let Some(Some(u)) = self.conns.get_mut(id as usize) else {
            return;
        };
        u.ops = u.ops.saturating_sub(1);
        if u.state != ConnState::Connecting {
            return;
        }
        let flow = u.flow;
        if c.res == 0 {
            u.state = ConnState::Open;
            self.rearm.push(id);
            if let Some(t) = sink.conns() {
                t.connected(now, flow);
            }
        } else {
            if let Some(t) = sink.conns() {
                t.connect_failed(flow);
            }
            self.close_conn(id);
        }
    }

    /// Submits a SEND of connection `id`'s unsent owned bytes.
    fn submit_send(&mut self, id: u32) -> io::Result<()> {
        let Some(Some(u)) = self.conns.get_mut(id as usize) else {
            return Ok(());
        };
        let (Some(sock), Some(rest)) = (u.sock.as_ref(), u.out.get(u.sent..)) else {
            return Ok(());
        };
        if rest.is_empty() || u.sending {
            return Ok(());
        }
        let sqe = opcode::Send::new(
            types::Fd(sock.as_raw_fd()),
            rest.as_ptr(),
            u32::try_from(rest.len()).unwrap_or(u32::MAX),
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(SSEND | u64::from(id));
        u.sending = true;
        u.ops += 1;
        // SAFETY: the bytes are `u.out[u.sent..]`, a heap buffer the
        // connection owns; while `sending` it is neither resized nor
        // dropped (INVARIANT on `UConn::out`), and the connection is freed
        // only once `ops` is back to zero, after this SEND's CQE.
        unsafe { self.push(&sqe) }
    }

    /// Closes connection `id`: its requests are cancelled first and the
    /// socket closed once their completions are in ([`Self::settle_conn`]);
    /// the slot is reused only after the CLOSE completes.
    fn close_conn(&mut self, id: u32) {
        let Some(Some(u)) = self.conns.get_mut(id as usize) else {
            return;
        };
        if u.state == ConnState::Closing {
            return;
        }
        u.state = ConnState::Closing;
        let flow = u.flow;
        if let Some(b) = self.by_slot.get_mut(flow.slot() as usize) {
            if *b == id {
                *b = NO_CONN;
            }
        }
        let Some(Some(u)) = self.conns.get_mut(id as usize) else {
            return;
        };
        if u.ops == 0 {
            return;
        }
        let Some(fd) = u.sock.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        u.ops += 1;
        let sqe = opcode::AsyncCancel2::new(CancelBuilder::fd(types::Fd(fd)).all())
            .build()
            .user_data(CANCEL | u64::from(id));
        // SAFETY: a cancel request holds no pointer; the descriptor stays
        // open (owned by the connection) until every request on it is done.
        if unsafe { self.push(&sqe) }.is_err() {
            if let Some(Some(u)) = self.conns.get_mut(id as usize) {
                u.ops -= 1;
            }
        }
    }

    /// After a completion for connection `id`: a closing connection whose
    /// requests are all done has its socket closed, then its slot freed.
    fn settle_conn(&mut self, id: u32, kind: u64) -> io::Result<()> {
        if kind == ACCEPT {
            return Ok(());
        }
        let Some(Some(u)) = self.conns.get_mut(id as usize) else {
            return Ok(());
        };
        if u.state != ConnState::Closing || u.ops > 0 {
            return Ok(());
        }
        match u.sock.take() {
            Some(sock) => {
                let fd = sock.into_raw_fd();
                u.ops += 1;
                let sqe = opcode::Close::new(types::Fd(fd))
                    .build()
                    .user_data(CLOSE | u64::from(id));
                // SAFETY: a close request holds no pointer; the descriptor
                // was released from its owner just above, and no request
                // on it is left (ops was zero).
                if unsafe { self.push(&sqe) }.is_err() {
                    // SAFETY: we own `fd` (released above) and nothing uses it.
                    unsafe { libc::close(fd) };
                    self.free_conn(id);
                }
            }
            None => self.free_conn(id),
        }
        Ok(())
    }

    fn free_conn(&mut self, id: u32) {
        if let Some(slot) = self.conns.get_mut(id as usize) {
            *slot = None;
            self.free.push(id);
        }
    }

    /// Arms what must be armed before a wait: the mesh wake-up, the UDP
    /// receives, the listeners' accepts, the connections' receives.
    fn arm_streams(&mut self) -> io::Result<()> {
        for l in 0..self.listeners.len() {
            if self.accept_armed.get(l).copied().unwrap_or(true) {
                continue;
            }
            if let Some(p) = self.accept_pause.get_mut(l) {
                match *p {
                    Some(t) if std::time::Instant::now() < t => continue,
                    _ => *p = None,
                }
            }
            let Some(fd) = self.listeners.get(l).map(|(_, _, s)| s.as_raw_fd()) else {
                continue;
            };
            let sqe = opcode::AcceptMulti::new(types::Fd(fd))
                .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
                .build()
                .user_data(ACCEPT | l as u64);
            // SAFETY: an accept without an address holds no pointer; the
            // listener outlives the ring (Drop cancels and reaps first).
            unsafe { self.push(&sqe)? };
            if let Some(a) = self.accept_armed.get_mut(l) {
                *a = true;
            }
        }
        if self.rearm.is_empty() || self.sbufs.as_ref().is_none_or(|b| b.available() == 0) {
            // Arming with no buffer would end at once with ENOBUFS.
            return Ok(());
        }
        let mut rearm = core::mem::take(&mut self.rearm);
        for id in rearm.drain(..) {
            let Some(Some(u)) = self.conns.get_mut(id as usize) else {
                continue;
            };
            if u.state != ConnState::Open || u.recv_armed {
                continue;
            }
            let Some(fd) = u.sock.as_ref().map(AsRawFd::as_raw_fd) else {
                continue;
            };
            u.recv_armed = true;
            u.ops += 1;
            let sqe = opcode::RecvMulti::new(types::Fd(fd), BGID_STREAM)
                .build()
                .user_data(SRECV | u64::from(id));
            // SAFETY: the buffers belong to the registered stream group,
            // mapped until Drop has cancelled and reaped this request.
            unsafe { self.push(&sqe)? };
        }
        self.rearm = rearm;
        Ok(())
    }

    /// Connects and closes the connection table asked for.
    fn apply_events(&mut self, conns: &mut Connections) -> io::Result<()> {
        while let Some(ev) = conns.poll_event() {
            match ev {
                Event::Connect { flow, remote } => {
                    let Ok(sock) = connect_socket(remote) else {
                        conns.connect_failed(flow);
                        continue;
                    };
                    let fd = sock.as_raw_fd();
                    let id = self.adopt(flow, sock, ConnState::Connecting);
                    let Some(Some(u)) = self.conns.get_mut(id as usize) else {
                        continue;
                    };
                    let len = to_storage(&remote, &mut u.addr);
                    let sqe = opcode::Connect::new(
                        types::Fd(fd),
                        (&*u.addr as *const libc::sockaddr_storage).cast(),
                        len,
                    )
                    .build()
                    .user_data(CONNECT | u64::from(id));
                    u.ops += 1;
                    // SAFETY: the address is boxed in the connection and
                    // not touched until the CONNECT's CQE; the connection
                    // is freed only after it (ops).
                    unsafe { self.push(&sqe)? };
                }
                Event::Close(flow) => {
                    if let Some(id) = self.lookup(flow) {
                        self.close_conn(id);
                        self.settle_conn(id, CLOSE)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Copies what the table has queued for each writable connection into
    /// the connection's own buffer (at most [`SEND_CHUNK`], one SEND in
    /// flight per connection) and submits it.
    fn write_streams(&mut self, conns: &mut Connections) -> io::Result<()> {
        while let Some(flow) = conns.poll_write() {
            let Some(id) = self.lookup(flow) else {
                continue;
            };
            let Some(Some(u)) = self.conns.get_mut(id as usize) else {
                continue;
            };
            if u.sending || u.state != ConnState::Open {
                // Its completion puts the flow back on the write list.
                continue;
            }
            let data = conns.output(flow);
            let n = data.len().min(SEND_CHUNK);
            let Some(chunk) = data.get(..n) else { continue };
            if n == 0 {
                continue;
            }
            u.out.clear();
            u.out.extend_from_slice(chunk);
            u.sent = 0;
            conns.lend(flow, n);
            self.submit_send(id)?;
        }
        Ok(())
    }
}

/// A nonblocking TCP socket for an outbound connection to `remote`.
fn connect_socket(remote: std::net::SocketAddr) -> io::Result<TcpStream> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(remote),
        socket2::Type::STREAM.nonblocking().cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    s.set_nodelay(true)?;
    Ok(s.into())
}

impl Driver for UringDriver {
    fn has_pending(&self) -> bool {
        !self.backlog.is_empty()
    }

    fn wait(&mut self, timeout: std::time::Duration) -> io::Result<bool> {
        self.arm()?;
        self.arm_streams()?;
        self.enter(timeout)?;
        self.stats.turns += 1;
        self.reap();
        Ok(core::mem::take(&mut self.woken))
    }

    fn outbox(&mut self) -> &mut Outbox {
        let cur = self.cur & 1;
        &mut self.outboxes[cur]
    }

    fn receive<K: Sink>(&mut self, now: Instant, sink: &mut K) -> io::Result<()> {
        self.estimate_rate(now);
        let mut backlog = core::mem::take(&mut self.backlog);
        for c in backlog.drain(..) {
            if c.user_data & KIND_MASK == RECV {
                self.datagram(c, now, sink)?;
            } else {
                self.stream_cqe(c, now, sink)?;
            }
        }
        // Completions reaped while flushing early wait for the next turn.
        backlog.append(&mut self.backlog);
        self.backlog = backlog;
        self.bufs.commit();
        if let Some(b) = &mut self.sbufs {
            b.commit();
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Self::flush(self)
    }

    fn stream_io(&mut self, _now: Instant, conns: &mut Connections) -> io::Result<()> {
        self.apply_events(conns)?;
        self.write_streams(conns)?;
        self.apply_events(conns)
    }

    fn stats(&self) -> &DriverStats {
        &self.stats
    }
}

/// A sink that drops everything (the driver's own wind-down and probe).
struct Discard;

impl Sink for Discard {
    fn datagram(&mut self, _: Instant, _: &[u8], _: &Peer, _: &mut Outbox) {}
    fn stream(&mut self, _: Instant, _: FlowId, _: &[u8], _: &mut Outbox) {}
    fn conns(&mut self) -> Option<&mut Connections> {
        None
    }
    fn take_transmits(&mut self, _: Instant, _: &Outbox) {}
}

/// Reads the (possibly unaligned) source address the kernel put after the header.
fn parse_name(name: &[u8]) -> Option<std::net::SocketAddr> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let n = name.len().min(size_of::<libc::sockaddr_storage>());
    // SAFETY: copies n ≤ size_of(sockaddr_storage) bytes from a live slice into
    // our own aligned storage; the regions do not overlap.
    unsafe {
        core::ptr::copy_nonoverlapping(
            name.as_ptr(),
            (&mut ss as *mut libc::sockaddr_storage).cast::<u8>(),
            n,
        );
    }
    from_storage(&ss, n as libc::socklen_t)
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        // The kernel holds its own reference to each socket: closing them does
        // not stop the multishot receives. Cancel everything, then reap until
        // the final CQEs are in (with DEFER_TASKRUN, cancelled requests are only
        // freed by task work run inside an enter).
        let _ = self
            .ring
            .submitter()
            .register_sync_cancel(Some(Timespec::new().sec(1)), CancelBuilder::any());
        // A connection's completions close its socket (CLOSE) once all are in.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let ts = Timespec::new().nsec(10_000_000);
        while (self.armed.iter().any(|&a| a)
            || self.wake_armed
            || self.inflight.iter().any(|&n| n > 0)
            || self.accept_armed.iter().any(|&a| a)
            || self.conns.iter().flatten().any(|u| u.ops > 0))
            && std::time::Instant::now() < deadline
        {
            let _ = self
                .ring
                .submitter()
                .submit_with_args(1, &SubmitArgs::new().timespec(&ts));
            self.reap();
            let mut backlog = core::mem::take(&mut self.backlog);
            for c in backlog.drain(..) {
                if c.user_data & KIND_MASK != RECV {
                    let _ = self.stream_cqe(c, Instant::ZERO, &mut Discard);
                }
            }
        }
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
        if self.sbufs.is_some() {
            let _ = self.ring.submitter().unregister_buf_ring(BGID_STREAM);
        }
    }
}

/// Checks that this kernel offers what the driver needs: io_uring itself
/// (not disabled by sysctl, seccomp or a container policy), RECVMSG and
/// SENDMSG, EXT_ARG waits, a provided-buffer ring, and a multishot RECVMSG
/// that really delivers a datagram on loopback (the opcode probe cannot see
/// the multishot flag).
pub fn probe() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|e| format!("io_uring_setup: {e}"))?;
    let mut p = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("probe: {e}"))?;
    for (code, name) in [
        (opcode::RecvMsg::CODE, "RECVMSG"),
        (opcode::SendMsg::CODE, "SENDMSG"),
    ] {
        if !p.is_supported(code) {
            return Err(format!("opcode {name} unsupported"));
        }
    }
    if !ring.params().is_feature_ext_arg() {
        return Err("IORING_FEAT_EXT_ARG unsupported".to_owned());
    }
    drop(ring);
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = sock.local_addr().map_err(|e| e.to_string())?;
    let mut d = UringDriver::with_buffers(vec![sock], Vec::new(), None, 4)
        .map_err(|e| format!("driver: {e}"))?;
    let peer = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let peer_addr = peer.local_addr().map_err(|e| e.to_string())?;
    peer.send_to(PROBE, addr).map_err(|e| e.to_string())?;
    let mut seen = Seen {
        ok: false,
        want: peer_addr,
        conns: None,
    };
    for _ in 0..20 {
        d.wait(std::time::Duration::from_millis(50))
            .and_then(|_| d.receive(Instant::ZERO, &mut seen))
            .map_err(|e| format!("multishot recvmsg: {e}"))?;
        if seen.ok {
            return Ok(());
        }
    }
    Err("multishot recvmsg delivered nothing within 1 s".to_owned())
}

/// Checks what the stream side needs on top of [`probe`]: the ACCEPT,
/// RECV, SEND, CONNECT, CLOSE and ASYNC_CANCEL opcodes, and a multishot
/// ACCEPT and a multishot RECV into a buffer ring that really deliver on
/// loopback (kernel 6.0+; the opcode probe cannot see the multishot flags).
pub fn probe_streams() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|e| format!("io_uring_setup: {e}"))?;
    let mut p = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("probe: {e}"))?;
    for (code, name) in [
        (opcode::AcceptMulti::CODE, "ACCEPT"),
        (opcode::RecvMulti::CODE, "RECV"),
        (opcode::Send::CODE, "SEND"),
        (opcode::Connect::CODE, "CONNECT"),
        (opcode::Close::CODE, "CLOSE"),
        (opcode::AsyncCancel2::CODE, "ASYNC_CANCEL"),
    ] {
        if !p.is_supported(code) {
            return Err(format!("opcode {name} unsupported"));
        }
    }
    drop(ring);
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let listener = Listener {
        id: SocketId(0),
        transport: Transport::Tcp,
        socket: l,
    };
    let mut d = UringDriver::with_buffers(Vec::new(), vec![listener], None, 4)
        .map_err(|e| format!("driver: {e}"))?;
    let mut client = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    io::Write::write_all(&mut client, PROBE).map_err(|e| e.to_string())?;
    let mut seen = Seen {
        ok: false,
        want: client.local_addr().map_err(|e| e.to_string())?,
        conns: Some(Connections::new(0, Default::default())),
    };
    for _ in 0..20 {
        d.wait(std::time::Duration::from_millis(50))
            .and_then(|_| d.receive(Instant::ZERO, &mut seen))
            .map_err(|e| format!("multishot accept/recv: {e}"))?;
        if seen.ok {
            return Ok(());
        }
    }
    Err("multishot accept and recv delivered nothing within 1 s".to_owned())
}

const PROBE: &[u8] = b"sipedge-probe";

/// The probes' sink: notes the bytes it expects.
struct Seen {
    ok: bool,
    want: std::net::SocketAddr,
    conns: Option<Connections>,
}

impl Sink for Seen {
    fn datagram(&mut self, _: Instant, data: &[u8], src: &Peer, _: &mut Outbox) {
        self.ok |= data == PROBE && src.remote == self.want;
    }

    fn stream(&mut self, _: Instant, flow: FlowId, data: &[u8], _: &mut Outbox) {
        let from = self.conns.as_ref().and_then(|c| c.peer(flow));
        self.ok |= data == PROBE && from.is_some_and(|p| p.remote == self.want);
    }

    fn conns(&mut self) -> Option<&mut Connections> {
        self.conns.as_mut()
    }

    fn take_transmits(&mut self, _: Instant, _: &Outbox) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{Counters, Service};
    use crate::shard::turn::testkit::{self, serve, Answer};
    use crate::shard::{turn, ShardIo};
    use crate::transport::conn::ConnLimits;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// Echoes every datagram back to its source from the socket it came in on.
    struct Echo(Counters);

    impl Service for Echo {
        fn handle_message(&mut self, _: Instant, data: &[u8], src: &Peer, out: &mut Outbox) {
            let _ = out.push(*src, data);
        }
        fn counters(&self) -> &Counters {
            &self.0
        }
    }

    #[test]
    fn echoes_bursts_on_two_sockets_without_loss() {
        if let Err(why) = probe() {
            eprintln!("skipping: io_uring unavailable: {why}");
            return;
        }
        let socks: Vec<UdpSocket> = (0..2)
            .map(|_| {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect();
        let addrs: Vec<_> = socks.iter().map(|s| s.local_addr().unwrap()).collect();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let server = std::thread::spawn(move || {
            let mut d = UringDriver::with_buffers(socks, Vec::new(), None, 8).unwrap();
            let mut echo = Echo(Counters::default());
            turn::run(&mut d, &mut echo, &mut ShardIo::none(), None, &stop2).unwrap()
        });
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut got = 0usize;
        let total = 600usize;
        let mut buf = vec![0u8; 70_000];
        // Bursts larger than the 8-buffer ring: ENOBUFS and re-arming must lose nothing.
        for burst in 0..(total / 60) {
            for i in 0..60 {
                let size = if i == 0 { 60_000 } else { 100 + i };
                let payload = vec![(burst * 60 + i) as u8; size];
                client.send_to(&payload, addrs[i % 2]).unwrap();
            }
            for _ in 0..60 {
                let (n, from) = loop {
                    // io_uring task work (the probe ran on this thread) may interrupt a timed receive.
                    match client.recv_from(&mut buf) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        r => break r.unwrap(),
                    }
                };
                assert!(addrs.contains(&from));
                assert!(n == 60_000 || (100..160).contains(&n));
                got += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let stats = server.join().unwrap();
        assert_eq!(got, total);
        assert_eq!(stats.rx as usize, total);
        assert_eq!(stats.tx as usize, total);
        assert_eq!(stats.rx_truncated, 0);
    }

    fn stream_server(limits: ConnLimits, answer: Answer) -> Option<testkit::Server> {
        if let Err(why) = probe_streams() {
            eprintln!("skipping: io_uring streams unavailable: {why}");
            return None;
        }
        Some(serve(
            |l| UringDriver::with_streams(Vec::new(), l, None).unwrap(),
            |d: &UringDriver| d.conns.iter().flatten().count(),
            limits,
            answer,
        ))
    }

    #[test]
    fn serves_tcp_messages_split_and_batched() {
        if let Some(s) = stream_server(ConnLimits::default(), Answer::Echo) {
            testkit::split_and_batched(s);
        }
    }

    #[test]
    fn forgets_a_peer_that_closes_mid_message() {
        if let Some(s) = stream_server(ConnLimits::default(), Answer::Echo) {
            testkit::closed_mid_message(s);
        }
    }

    #[test]
    fn drops_a_peer_that_never_reads() {
        if let Some(s) = stream_server(testkit::small_queue(), Answer::Pad(32 * 1024)) {
            testkit::never_reads(s);
        }
    }

    #[test]
    fn connects_out_and_serves_the_outbound_connection() {
        let up = testkit::upstream();
        let to = up.local_addr().unwrap();
        if let Some(s) = stream_server(ConnLimits::default(), Answer::Forward(to)) {
            testkit::connects_out(s, up);
        }
    }

    #[test]
    fn continues_short_writes_to_a_slow_reader() {
        if let Some(s) = stream_server(testkit::big_queue(), Answer::Pad(60_000)) {
            testkit::slow_reader(s, 60_000);
        }
    }
}
