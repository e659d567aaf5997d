//! Batched datagram syscalls for the mio driver: `recvmmsg` into owned
//! buffers and `sendmmsg` out of the [`Outbox`] arena, plus the sockaddr
//! conversions both need.
//!
//! Why a module of its own with `unsafe`: these are raw libc calls over
//! arrays of `mmsghdr` that point into buffers this module owns; keeping
//! them here (beside `uring`, `bufring` and `affinity`, the other modules
//! allowed unsafe code) leaves the drivers themselves safe.
#![allow(unsafe_code)]

use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::io;
use std::os::fd::RawFd;

use crate::transport::{Outbox, Transmit};

/// SO_ATTACH_REUSEPORT_CBPF (asm-generic/socket.h; the libc crate has it
/// for Android only).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// Attaches the classic BPF program `prog` to the reuseport group of `fd`
/// (it picks the group's socket for each datagram or connection).
pub fn attach_reuseport_cbpf(fd: RawFd, prog: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        // The kernel only reads the program (it copies it in).
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `prog`, alive for the call, with its length;
    // the option length is the size of `fprog`; the kernel copies both.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Converts a kernel socket address to a `SocketAddr` (`None` for other families).
pub fn from_storage(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family is AF_INET and the kernel wrote at least a
            // sockaddr_in; sockaddr_storage is large and aligned enough for it.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for AF_INET6 and sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes `addr` into `ss`, returning the length to pass to the kernel.
pub fn to_storage(addr: &SocketAddr, ss: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe {
                core::ptr::write(
                    (ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>(),
                    sin,
                )
            };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe {
                core::ptr::write(
                    (ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>(),
                    sin6,
                )
            };
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// An eventfd: a counter another thread bumps to wake a shard out of its
/// poll (mio) or its ring wait (io_uring).
#[derive(Debug)]
pub struct EventFd {
    // INVARIANT: a valid eventfd owned by this value, closed on drop.
    fd: std::os::fd::OwnedFd,
}

impl EventFd {
    /// A nonblocking eventfd.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; we check the result.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own exclusively.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// The descriptor, to register with a poller.
    pub fn raw(&self) -> RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.fd)
    }

    /// Wakes the waiter.
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        let _ = unsafe { libc::write(self.raw(), (&one as *const u64).cast(), 8) };
    }

    /// Clears the counter (after a wake-up).
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a valid u64; nonblocking.
        let _ = unsafe { libc::read(self.raw(), (&mut v as *mut u64).cast(), 8) };
    }
}

/// Waits up to `ms` milliseconds for `fd` to become readable.
pub fn wait_readable(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd and we pass a count of 1.
    let rc = unsafe { libc::poll(&mut p, 1, ms) };
    rc > 0 && p.revents & libc::POLLIN != 0
}

/// Waits up to `ms` milliseconds for `fd` to become writable.
pub fn wait_writable(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd and we pass a count of 1.
    let rc = unsafe { libc::poll(&mut p, 1, ms) };
    rc > 0 && p.revents & libc::POLLOUT != 0
}

/// A batch of receive buffers and the `mmsghdr`s that point into them.
pub struct RecvBatch {
    // INVARIANT: bufs.len() == n * size; iovs[i] points at bufs[i*size..(i+1)*size];
    // hdrs[i] points at iovs[i] and addrs[i]. All four are boxed slices, never
    // resized, so the pointers stay valid for the life of the batch.
    bufs: Box<[u8]>,
    size: usize,
    addrs: Box<[libc::sockaddr_storage]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

impl RecvBatch {
    /// `n` buffers of `size` bytes.
    pub fn new(n: usize, size: usize) -> Self {
        let n = n.max(1);
        let mut bufs = vec![0u8; n * size].into_boxed_slice();
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut addrs: Box<[libc::sockaddr_storage]> =
            (0..n).map(|_| unsafe { core::mem::zeroed() }).collect();
        let base = bufs.as_mut_ptr();
        let mut iovs: Box<[libc::iovec]> = (0..n)
            .map(|i| libc::iovec {
                // SAFETY: i*size < n*size = bufs.len(): in bounds of the allocation.
                iov_base: unsafe { base.add(i * size) }.cast(),
                iov_len: size,
            })
            .collect();
        let iov_base = iovs.as_mut_ptr();
        let addr_base = addrs.as_mut_ptr();
        let hdrs: Box<[libc::mmsghdr]> = (0..n)
            .map(|i| {
                // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
                let mut h: libc::mmsghdr = unsafe { core::mem::zeroed() };
                // SAFETY: i < n = iovs.len() = addrs.len().
                h.msg_hdr.msg_iov = unsafe { iov_base.add(i) };
                h.msg_hdr.msg_iovlen = 1;
                // SAFETY: as above.
                h.msg_hdr.msg_name = unsafe { addr_base.add(i) }.cast();
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h
            })
            .collect();
        Self {
            bufs,
            size,
            addrs,
            iovs,
            hdrs,
        }
    }

    /// Receives up to a batch from `fd` (nonblocking); returns how many arrived.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for h in self.hdrs.iter_mut() {
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        let n = self.hdrs.len() as libc::c_uint;
        // SAFETY: hdrs holds n valid mmsghdrs whose iovecs and names point into
        // buffers owned by self (INVARIANT above), writable for their stated lengths.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n,
                libc::MSG_DONTWAIT,
                core::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }

    /// Datagram `i` of the last receive: (payload, source, truncated).
    pub fn get(&self, i: usize) -> Option<(&[u8], Option<SocketAddr>, bool)> {
        let h = self.hdrs.get(i)?;
        let len = (h.msg_len as usize).min(self.size);
        let data = self.bufs.get(i * self.size..i * self.size + len)?;
        let src = from_storage(self.addrs.get(i)?, h.msg_hdr.msg_namelen);
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let _ = &self.iovs;
        Some((data, src, truncated))
    }
}

/// `mmsghdr`s for sending out of an [`Outbox`].
pub struct SendBatch {
    addrs: Box<[libc::sockaddr_storage]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

impl SendBatch {
    /// Room for `n` datagrams per call.
    pub fn new(n: usize) -> Self {
        let n = n.max(1);
        Self {
            // SAFETY: all-zero is a valid sockaddr_storage / iovec / mmsghdr.
            addrs: (0..n).map(|_| unsafe { core::mem::zeroed() }).collect(),
            // SAFETY: as above.
            iovs: (0..n).map(|_| unsafe { core::mem::zeroed() }).collect(),
            // SAFETY: as above.
            hdrs: (0..n).map(|_| unsafe { core::mem::zeroed() }).collect(),
        }
    }

    /// Sends `items` (all for the socket `fd`) whose bytes are in `outbox`;
    /// returns how many the kernel took (fewer than asked when its buffer is
    /// full: the caller waits for writability and sends the rest).
    pub fn send(&mut self, fd: RawFd, outbox: &Outbox, items: &[Transmit]) -> io::Result<usize> {
        let n = items.len().min(self.hdrs.len());
        let arena = outbox.arena();
        for (i, t) in items.iter().take(n).enumerate() {
            let (Some(ss), Some(iov), Some(h)) = (
                self.addrs.get_mut(i),
                self.iovs.get_mut(i),
                self.hdrs.get_mut(i),
            ) else {
                break;
            };
            let namelen = to_storage(&t.peer.remote, ss);
            let bytes = arena
                .get(t.offset as usize..t.offset as usize + t.len as usize)
                .unwrap_or_default();
            iov.iov_base = bytes.as_ptr() as *mut libc::c_void;
            iov.iov_len = bytes.len();
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_name = (ss as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = namelen;
            h.msg_hdr.msg_control = core::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: the first n mmsghdrs point at addresses and iovecs owned by
        // self and at bytes of `outbox`, which the borrow keeps alive and
        // unchanged for the duration of the call; the kernel only reads them.
        let rc = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }
}

/// Runs `f` with the process's file-creation mask set to `mask`, then puts
/// the old one back. The mask is process-wide: call it only while no other
/// thread creates files (at start-up, before the shards run).
pub fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask only swaps an integer in the process's state; it cannot fail.
    let old = unsafe { libc::umask(mask as libc::mode_t) };
    let out = f();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::SocketId;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn sockaddr_round_trip() {
        for a in ["127.0.0.1:5060", "[::1]:5061", "[2001:db8::1]:1"] {
            let a: SocketAddr = a.parse().unwrap();
            // SAFETY: all-zero is a valid sockaddr_storage.
            let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
            let len = to_storage(&a, &mut ss);
            assert_eq!(from_storage(&ss, len), Some(a));
        }
    }

    #[test]
    fn batches_through_a_socket_pair() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dest = rx.local_addr().unwrap();
        let mut out = Outbox::new(1 << 17, 8);
        for i in 0..5u8 {
            out.push(crate::transport::Peer::udp(dest, SocketId(0)), &[i; 10])
                .unwrap();
        }
        let mut sb = SendBatch::new(8);
        assert_eq!(sb.send(tx.as_raw_fd(), &out, out.items()).unwrap(), 5);
        let mut rb = RecvBatch::new(4, 2048);
        let mut got = Vec::new();
        for _ in 0..100 {
            match rb.recv(rx.as_raw_fd()) {
                Ok(n) => {
                    for i in 0..n {
                        let (d, src, trunc) = rb.get(i).unwrap();
                        assert_eq!(src, Some(tx.local_addr().unwrap()));
                        assert!(!trunc);
                        got.push(d.to_vec());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
            if got.len() == 5 {
                break;
            }
        }
        assert_eq!(got, (0..5u8).map(|i| vec![i; 10]).collect::<Vec<_>>());
    }
}
