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
//! Probed at start ([`probe`]): io_uring setup, the opcodes, EXT_ARG, the
//! buffer ring and a live multishot receive on loopback; on any failure
//! `--io auto` uses mio.
#![allow(unsafe_code)]

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use io_uring::types::{CancelBuilder, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::proxy::{Counters, Service};
use crate::time::{Duration, Instant};
use crate::transport::{Outbox, Peer, SocketId};

use super::bufring::{BufRing, BUF_SIZE, NAME_LEN};
use super::sys::{from_storage, to_storage};
use super::{Clock, DriverStats, ShardIo, OUTBOX_BYTES, OUTBOX_ITEMS};

const KIND_MASK: u64 = 0xff << 56;
const RECV: u64 = 1 << 56;
const SEND: u64 = 2 << 56;
const WAKE: u64 = 3 << 56;
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

/// The io_uring driver of one shard. Not `Send`: create it on the shard's thread
/// (the ring is set up single-issuer).
pub struct UringDriver {
    // Field order is drop order: the ring goes before the memory it referenced.
    ring: IoUring,
    sockets: Vec<UdpSocket>,
    bufs: BufRing,
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
    wake_fd: Option<std::os::fd::RawFd>,
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
        Self::with_buffers(sockets, RECV_BUFFERS)
    }

    fn with_buffers(sockets: Vec<UdpSocket>, buffers: u16) -> io::Result<Self> {
        let sq = 512u32;
        // Each recv CQE holds a buffer and each send CQE an outbox item, so at
        // most buffers + 2 × items (+ the recvs' final CQEs) can be pending: the
        // completion queue cannot overflow (an overflow would end the multishots).
        let cq = (u32::from(buffers) + 2 * OUTBOX_ITEMS as u32 + 64 + sockets.len() as u32)
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
        // SAFETY: all-zero is a valid msghdr.
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { core::mem::zeroed() });
        recv_hdr.msg_namelen = NAME_LEN as libc::socklen_t;
        Ok(Self {
            ring,
            armed: vec![false; sockets.len()],
            sockets,
            bufs,
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
            wake_fd: None,
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
                _ => {}
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

    /// One loop turn; `timeout` bounds the wait.
    fn turn<S: Service>(
        &mut self,
        service: &mut S,
        io: &mut ShardIo,
        clock: &Clock,
        timeout: std::time::Duration,
    ) -> io::Result<()> {
        self.arm()?;
        let wait = if self.backlog.is_empty() && (timeout.is_zero() || io.prepare_sleep()) {
            timeout
        } else {
            std::time::Duration::ZERO
        };
        self.enter(wait)?;
        self.stats.turns += 1;
        self.reap();
        io.woke(core::mem::take(&mut self.woken));
        let now = clock.now();
        self.estimate_rate(now);
        service.handle_turn(now, clock.wall_us());
        if let Some(o) = self.outboxes.get_mut(self.cur) {
            io.begin(now, service, o);
        }
        let mut backlog = core::mem::take(&mut self.backlog);
        for c in backlog.drain(..) {
            self.datagram(c, service, now)?;
        }
        self.backlog = backlog;
        self.bufs.commit();
        if service.poll_timeout().is_some_and(|t| t <= now) {
            if !self.outboxes.get(self.cur).is_some_and(Outbox::has_room) {
                self.flush()?;
            }
            if let Some(o) = self.outboxes.get_mut(self.cur) {
                service.handle_timeout(now, o);
            }
        }
        if !self.outboxes.get(self.cur).is_some_and(Outbox::has_room) {
            self.flush()?;
        }
        if let Some(o) = self.outboxes.get_mut(self.cur) {
            io.end(now, service, o);
        }
        io.publish(now, service, &self.stats);
        self.flush()
    }

    fn datagram<S: Service>(&mut self, c: Cqe, service: &mut S, now: Instant) -> io::Result<()> {
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
        if !self.outboxes.get(self.cur).is_some_and(Outbox::has_room) {
            self.flush()?;
        }
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
                        Some(src) => service.handle_message(
                            now,
                            msg.payload_data(),
                            &Peer::udp(src, socket),
                            out,
                        ),
                        None => stats.rx_errors += 1,
                    }
                }
                Err(()) => stats.rx_errors += 1,
            }
        }
        self.bufs.recycle(bid);
        Ok(())
    }

    /// Runs the shard loop until `stop` is set.
    pub fn run<S: Service>(
        &mut self,
        service: &mut S,
        io: &mut ShardIo,
        stop: &AtomicBool,
    ) -> io::Result<DriverStats> {
        let clock = Clock::new();
        self.wake_fd = io.wake_fd();
        while !stop.load(Ordering::Relaxed) {
            let timeout = super::wait_for(service.poll_timeout(), clock.now());
            self.turn(service, io, &clock, timeout)?;
        }
        self.flush()?;
        // Let the last sends go out.
        let _ = self.ring.submitter().submit();
        self.reap();
        Ok(self.stats)
    }
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
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let ts = Timespec::new().nsec(10_000_000);
        while (self.armed.iter().any(|&a| a)
            || self.wake_armed
            || self.inflight.iter().any(|&n| n > 0))
            && std::time::Instant::now() < deadline
        {
            let _ = self
                .ring
                .submitter()
                .submit_with_args(1, &SubmitArgs::new().timespec(&ts));
            self.reap();
            self.backlog.clear();
        }
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
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
    let mut d = UringDriver::with_buffers(vec![sock], 4).map_err(|e| format!("driver: {e}"))?;
    let peer = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let peer_addr = peer.local_addr().map_err(|e| e.to_string())?;
    peer.send_to(b"sipedge-probe", addr)
        .map_err(|e| e.to_string())?;
    let mut seen = Seen {
        ok: false,
        want: peer_addr,
        counters: Counters::default(),
    };
    let clock = Clock::new();
    for _ in 0..20 {
        d.turn(
            &mut seen,
            &mut ShardIo::none(),
            &clock,
            std::time::Duration::from_millis(50),
        )
        .map_err(|e| format!("multishot recvmsg: {e}"))?;
        if seen.ok {
            return Ok(());
        }
    }
    Err("multishot recvmsg delivered nothing within 1 s".to_owned())
}

/// The probe's service: notes the datagram it expects.
struct Seen {
    ok: bool,
    want: std::net::SocketAddr,
    counters: Counters,
}

impl Service for Seen {
    fn handle_message(&mut self, _: Instant, data: &[u8], src: &Peer, _: &mut Outbox) {
        self.ok |= data == b"sipedge-probe" && src.remote == self.want;
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            let mut d = UringDriver::with_buffers(socks, 8).unwrap();
            let mut echo = Echo(Counters::default());
            d.run(&mut echo, &mut ShardIo::none(), &stop2).unwrap()
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
}
