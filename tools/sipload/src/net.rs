//! Sockets and batched datagram I/O: `recvmmsg`/`sendmmsg` on nonblocking
//! UDP sockets, a `ppoll` wait, CPU pinning and process CPU time.
//!
//! This is the only module with `unsafe` code: each block is a libc call
//! whose pointer arguments point into buffers this module owns and that
//! outlive the call. Nothing here allocates after construction.
//!
//! Why batches: one syscall per datagram costs more CPU than everything
//! else sipload does per message; a batch of up to [`BATCH`] datagrams per
//! call is what lets one core drive tens of thousands of calls per second.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Datagrams per `recvmmsg`/`sendmmsg` call.
pub const BATCH: usize = 64;
/// Largest datagram received; longer ones are truncated and counted as malformed.
pub const RX_BUF: usize = 8192;
/// Largest datagram sent.
pub const TX_BUF: usize = 4096;
/// Socket buffer size asked for (the kernel may cap it at net.core.*mem_max).
const SOCK_BUF: usize = 8 << 20;

/// A socket address in the kernel's own form, copied as is from a received
/// datagram to the reply (no conversion on the hot path).
#[derive(Clone, Copy)]
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
    /// Stream transports: the connection (index in its endpoint), or `u32::MAX`.
    conn: u32,
}

impl RawAddr {
    /// The kernel form of `addr`.
    pub fn from_std(addr: SocketAddr) -> Self {
        let sa = SockAddr::from(addr);
        let mut out = Self::empty();
        let len = (sa.len() as usize).min(mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: `sa.as_ptr()` points to `sa.len()` initialised bytes of a
        // sockaddr; `out.storage` is a sockaddr_storage, large enough for any
        // sockaddr, and `len` is capped at its size. The two do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                sa.as_ptr().cast::<u8>(),
                (&mut out.storage as *mut libc::sockaddr_storage).cast::<u8>(),
                len,
            );
        }
        out.len = len as libc::socklen_t;
        out
    }

    /// No address: the datagram goes to the socket's connected peer.
    pub fn connected() -> Self {
        Self::empty()
    }

    fn empty() -> Self {
        Self {
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            storage: unsafe { mem::zeroed() },
            len: 0,
            conn: u32::MAX,
        }
    }

    /// Stream transports: connection `conn` of the endpoint a message came on.
    pub fn stream(conn: u32) -> Self {
        let mut a = Self::empty();
        a.conn = conn;
        a
    }

    /// Stream transports, UAC: any connection, the same one for the same `key`.
    pub fn spread(key: u32) -> Self {
        let mut a = Self::empty();
        a.conn = SPREAD | (key & !SPREAD);
        a
    }

    /// The stream connection this address names, if any.
    pub fn conn(&self) -> Option<u32> {
        (self.conn & SPREAD == 0).then_some(self.conn)
    }

    /// The key of a [`RawAddr::spread`] address.
    pub fn spread_key(&self) -> Option<u32> {
        (self.conn != u32::MAX && self.conn & SPREAD != 0).then_some(self.conn & !SPREAD)
    }

    /// The address as a std type, if it is IPv4 or IPv6.
    #[cfg(test)]
    pub fn to_std(self) -> Option<SocketAddr> {
        match i32::from(self.storage.ss_family) {
            libc::AF_INET if self.len as usize >= mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family is AF_INET and the length covers a
                // sockaddr_in, which sockaddr_storage is aligned for.
                let sin = unsafe {
                    &*(&self.storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()
                };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddr::V4(std::net::SocketAddrV4::new(
                    ip,
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 if self.len as usize >= mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above, for AF_INET6 and sockaddr_in6.
                let sin6 = unsafe {
                    &*(&self.storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
                };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// The bit of `RawAddr::conn` that marks a spread key rather than a connection.
const SPREAD: u32 = 1 << 31;

/// Opens a nonblocking UDP socket bound to `addr`, with large buffers;
/// `reuse_port` lets several threads bind the same address (the kernel
/// spreads flows across them by 4-tuple hash).
pub fn udp_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    // Best effort: a kernel cap is reported by `buffer_sizes`, not an error.
    let _ = s.set_recv_buffer_size(SOCK_BUF);
    let _ = s.set_send_buffer_size(SOCK_BUF);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// (receive, send) buffer sizes the kernel granted, to warn when capped.
pub fn buffer_sizes(s: &Socket) -> (usize, usize) {
    (
        s.recv_buffer_size().unwrap_or(0),
        s.send_buffer_size().unwrap_or(0),
    )
}

/// The local address of a bound socket.
pub fn local_addr(s: &Socket) -> io::Result<SocketAddr> {
    s.local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("socket has no IP address"))
}

/// The source IP the kernel would pick to reach `target` (no packet is sent).
pub fn route_source(target: SocketAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(any)?;
    s.connect(target)?;
    Ok(s.local_addr()?.ip())
}

/// A batch of received datagrams: buffers and headers owned here, reused.
pub struct RxBatch {
    bufs: Box<[u8]>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    addrs: Vec<RawAddr>,
    count: usize,
}

impl RxBatch {
    /// A batch of [`BATCH`] buffers of [`RX_BUF`] bytes.
    pub fn new() -> Self {
        Self {
            bufs: vec![0u8; BATCH * RX_BUF].into_boxed_slice(),
            iov: (0..BATCH)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            // SAFETY: mmsghdr is plain old data; all-zero is a valid value
            // (null pointers, zero lengths) that `recv` fills before use.
            hdrs: (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect(),
            addrs: (0..BATCH).map(|_| RawAddr::empty()).collect(),
            count: 0,
        }
    }

    /// Receives up to [`BATCH`] datagrams without blocking; returns how many
    /// (0 when none is waiting).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.count = 0;
        let base = self.bufs.as_mut_ptr();
        for i in 0..BATCH {
            let (Some(iov), Some(h), Some(a)) = (
                self.iov.get_mut(i),
                self.hdrs.get_mut(i),
                self.addrs.get_mut(i),
            ) else {
                break;
            };
            // SAFETY: i < BATCH, so i * RX_BUF + RX_BUF <= bufs.len(): the
            // pointer stays inside the allocation.
            iov.iov_base = unsafe { base.add(i * RX_BUF) }.cast();
            iov.iov_len = RX_BUF;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_name = (&mut a.storage as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: `hdrs` holds BATCH initialised headers whose iovecs and
        // names point into `bufs` and `addrs`, owned by self and alive and
        // unaliased for the duration of the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                // A previous send's ICMP error (port unreachable) surfaces here.
                io::ErrorKind::ConnectionRefused => Ok(0),
                _ => Err(e),
            };
        }
        self.count = n as usize;
        for (h, a) in self.hdrs.iter().zip(self.addrs.iter_mut()).take(self.count) {
            a.len = h.msg_hdr.msg_namelen;
        }
        Ok(self.count)
    }

    /// Datagram `i` of the last `recv`: bytes, source, and whether it was truncated.
    pub fn get(&self, i: usize) -> Option<(&[u8], &RawAddr, bool)> {
        if i >= self.count {
            return None;
        }
        let h = self.hdrs.get(i)?;
        let len = (h.msg_len as usize).min(RX_BUF);
        let buf = self.bufs.get(i * RX_BUF..i * RX_BUF + len)?;
        let trunc = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        Some((buf, self.addrs.get(i)?, trunc))
    }
}

/// Outgoing datagrams of one socket, sent with one `sendmmsg` per [`BATCH`].
pub struct TxBatch {
    fd: RawFd,
    bufs: Box<[u8]>,
    lens: [usize; BATCH],
    dests: Vec<RawAddr>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    count: usize,
    /// Datagrams the kernel refused (buffer full for too long, or an error).
    pub dropped: u64,
    /// Datagrams sent.
    pub sent: u64,
}

impl TxBatch {
    /// The socket.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// An empty batch for socket `fd`.
    pub fn new(fd: RawFd) -> Self {
        Self {
            fd,
            bufs: vec![0u8; BATCH * TX_BUF].into_boxed_slice(),
            lens: [0; BATCH],
            dests: (0..BATCH).map(|_| RawAddr::empty()).collect(),
            iov: (0..BATCH)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            // SAFETY: mmsghdr is plain old data; all-zero is valid and `flush`
            // fills every field it uses.
            hdrs: (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect(),
            count: 0,
            dropped: 0,
            sent: 0,
        }
    }

    /// Builds one datagram to `dest` with `build`, which writes into the
    /// buffer it is given and returns the length, or `None` to send nothing.
    /// Returns whether a datagram was queued.
    pub fn push(&mut self, dest: &RawAddr, build: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        if self.count == BATCH {
            self.flush();
        }
        let i = self.count;
        let Some(buf) = self.bufs.get_mut(i * TX_BUF..(i + 1) * TX_BUF) else {
            return false;
        };
        let Some(len) = build(buf).filter(|&l| l > 0 && l <= TX_BUF) else {
            return false;
        };
        if let (Some(l), Some(d)) = (self.lens.get_mut(i), self.dests.get_mut(i)) {
            *l = len;
            *d = *dest;
            self.count += 1;
            true
        } else {
            false
        }
    }

    /// Queues a copy of `bytes`.
    #[cfg(test)]
    pub fn push_bytes(&mut self, dest: &RawAddr, bytes: &[u8]) -> bool {
        self.push(dest, |buf| {
            let out = buf.get_mut(..bytes.len())?;
            out.copy_from_slice(bytes);
            Some(bytes.len())
        })
    }

    /// Sends everything queued. A full socket buffer is waited on for a
    /// few milliseconds; after that the rest is dropped and counted (the
    /// protocol's retransmissions then recover or fail the calls).
    pub fn flush(&mut self) {
        let total = self.count;
        if total == 0 {
            return;
        }
        let base = self.bufs.as_mut_ptr();
        for i in 0..total {
            let (Some(iov), Some(h), Some(d), Some(&len)) = (
                self.iov.get_mut(i),
                self.hdrs.get_mut(i),
                self.dests.get_mut(i),
                self.lens.get(i),
            ) else {
                break;
            };
            // SAFETY: i < BATCH, so the TX_BUF bytes at i * TX_BUF are inside `bufs`.
            iov.iov_base = unsafe { base.add(i * TX_BUF) }.cast();
            iov.iov_len = len;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            if d.len == 0 {
                // A connected socket: the kernel uses the peer (and its cached route).
                h.msg_hdr.msg_name = std::ptr::null_mut();
            } else {
                h.msg_hdr.msg_name = (&mut d.storage as *mut libc::sockaddr_storage).cast();
            }
            h.msg_hdr.msg_namelen = d.len;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
        }
        let mut done = 0usize;
        let mut waits = 0;
        while done < total {
            // SAFETY: hdrs[done..total] were initialised above and point into
            // `bufs`, `iov` and `dests`, owned by self and alive for the call.
            let n = unsafe {
                libc::sendmmsg(
                    self.fd,
                    self.hdrs.as_mut_ptr().add(done),
                    (total - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                done += n as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock if waits < 10 => {
                    waits += 1;
                    let _ = wait(&[self.fd], libc::POLLOUT, Some(Duration::from_millis(1)));
                }
                _ => {
                    // Skip the datagram at the head (an ICMP error for an
                    // earlier send, or a full buffer for too long).
                    self.dropped += 1;
                    done += 1;
                }
            }
        }
        self.sent += total as u64;
        self.count = 0;
    }
}

/// Waits until one of `fds` is ready for `events` or `timeout` passes
/// (`None`: forever). Returns how many are ready.
pub fn wait(fds: &[RawFd], events: libc::c_short, timeout: Option<Duration>) -> io::Result<usize> {
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 4];
    let n = fds.len().min(pfds.len());
    for (p, &fd) in pfds.iter_mut().zip(fds) {
        p.fd = fd;
        p.events = events;
    }
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
    });
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `pfds` has at least `n` initialised entries; `tsp` is null or
    // points to a timespec alive for the call; no signal mask is passed.
    let r = unsafe { libc::ppoll(pfds.as_mut_ptr(), n as libc::nfds_t, tsp, std::ptr::null()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(r as usize)
}

/// The raw fd of a socket.
pub fn fd(s: &Socket) -> RawFd {
    s.as_raw_fd()
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::other("CPU number out of range"));
    }
    // SAFETY: `set` is a valid cpu_set_t and cpu < CPU_SETSIZE (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is initialised and its size is passed.
    let r = unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPU time (user, system) this process has used so far.
pub fn process_cpu() -> (Duration, Duration) {
    // SAFETY: rusage is plain old data; all-zero is valid and getrusage fills it.
    let mut ru: libc::rusage = unsafe { mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the call.
    let r = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if r != 0 {
        return (Duration::ZERO, Duration::ZERO);
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// Installs SIGINT/SIGTERM handlers that set a flag, read with [`stop_requested`].
/// A second signal exits at once.
pub fn install_stop_handler() {
    extern "C" fn on_signal(_: libc::c_int) {
        if STOP.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(130) };
        }
    }
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches an atomic and calls _exit, both
        // async-signal-safe.
        unsafe { libc::signal(sig, handler) };
    }
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True once SIGINT or SIGTERM arrived.
pub fn stop_requested() -> bool {
    STOP.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_addr_round_trips() {
        for a in ["127.0.0.1:5060", "[::1]:5070"] {
            let sa: SocketAddr = a.parse().unwrap();
            assert_eq!(RawAddr::from_std(sa).to_std(), Some(sa));
        }
    }

    #[test]
    fn batch_send_and_receive_over_loopback() {
        let a = udp_socket("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let b = udp_socket("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let dest = RawAddr::from_std(local_addr(&b).unwrap());
        let mut tx = TxBatch::new(fd(&a));
        for i in 0..100u8 {
            assert!(tx.push_bytes(&dest, &[i; 10]));
        }
        tx.flush();
        assert_eq!(tx.sent, 100);
        let mut rx = RxBatch::new();
        let mut got = 0;
        for _ in 0..100 {
            let _ = wait(&[fd(&b)], libc::POLLIN, Some(Duration::from_millis(100)));
            let n = rx.recv(fd(&b)).unwrap();
            for i in 0..n {
                let (buf, from, trunc) = rx.get(i).unwrap();
                assert_eq!(buf.len(), 10);
                assert!(!trunc);
                assert_eq!(from.to_std(), Some(local_addr(&a).unwrap()));
            }
            got += n;
            if got == 100 {
                break;
            }
        }
        assert_eq!(got, 100);
    }
}
