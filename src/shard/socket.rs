//! The shard's UDP sockets (socket2): SO_REUSEPORT on the public port so the
//! kernel spreads flows across shards, large receive and send buffers (with a
//! warning when the kernel caps them), nonblocking.
//!
//! Steering by source: by default the kernel picks a reuseport group's
//! socket by a hash of the 4-tuple, so a flooder that sprays source ports
//! reaches every shard, and each shard's flood and failed-auth tables give
//! it the limit once per shard. [`steer_by_source`] attaches a classic BPF
//! program (SO_ATTACH_REUSEPORT_CBPF) to the group that picks the socket —
//! the shard, since shards bind in order — from the source address alone
//! (an IPv6 source by the prefix the flood limiter keys on, at most /64):
//!
//! ```text
//!  A = saddr (IPv4) | saddr[0..4] & m0 ^ saddr[4..8] & m1 (IPv6)
//!  A = (A * 0x9e3779b1) >> 16;  A %= sockets;  return A
//! ```
//!
//! The program reads the IP header through SKF_NET_OFF, so the same one
//! serves UDP datagrams and TCP SYNs.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Buffer sizes the kernel granted (it reports twice what it books).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// SO_RCVBUF as read back.
    pub recv: usize,
    /// SO_SNDBUF as read back.
    pub send: usize,
}

/// Binds a nonblocking UDP socket on `addr`; `reuse_port` for the shared public port.
pub fn bind_udp(
    addr: SocketAddr,
    reuse_port: bool,
    recv_buf: usize,
    send_buf: usize,
) -> io::Result<(UdpSocket, Granted)> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = s.set_recv_buffer_size(recv_buf);
    let _ = s.set_send_buffer_size(send_buf);
    s.bind(&addr.into())?;
    let granted = Granted {
        recv: s.recv_buffer_size()?,
        send: s.send_buffer_size()?,
    };
    Ok((s.into(), granted))
}

/// A TCP socket for `addr` (IPv6 only for an IPv6 address) with
/// SO_REUSEADDR (a port whose old connections linger in TIME_WAIT binds).
fn tcp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    Ok(s)
}

/// Binds a nonblocking TCP listener on `addr` with SO_REUSEPORT (every
/// shard listens on the public port; the kernel spreads connections).
pub fn bind_tcp(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let s = tcp_socket(addr)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s.into())
}

/// Binds and drops a TCP socket on `addr` without SO_REUSEPORT: fails with
/// `AddrInUse` where any socket is bound there already (a socket in
/// TIME_WAIT does not count: SO_REUSEADDR).
pub fn probe_tcp(addr: SocketAddr) -> io::Result<()> {
    tcp_socket(addr)?.bind(&addr.into())
}

/// Classic BPF opcodes (linux/filter.h).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20)
const BPF_ALU_AND_K: u16 = 0x04 | 0x50; // BPF_ALU | BPF_AND | BPF_K
const BPF_ALU_XOR_X: u16 = 0x04 | 0xa0 | 0x08; // BPF_ALU | BPF_XOR | BPF_X
const BPF_ALU_MUL_K: u16 = 0x04 | 0x20; // BPF_ALU | BPF_MUL | BPF_K
const BPF_ALU_RSH_K: u16 = 0x04 | 0x70; // BPF_ALU | BPF_RSH | BPF_K
const BPF_ALU_MOD_K: u16 = 0x04 | 0x90; // BPF_ALU | BPF_MOD | BPF_K
const BPF_MISC_TAX: u16 = 0x07; // BPF_MISC | BPF_TAX
const BPF_RET_A: u16 = 0x06 | 0x10; // BPF_RET | BPF_A

fn insn(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// Offset `k` into the network (IP) header, as a load's `k`.
fn net(k: i32) -> u32 {
    // SKF_NET_OFF is negative: the kernel reads the two's complement.
    (libc::SKF_NET_OFF + k) as u32
}

/// The program of [`steer_by_source`]: the socket index from the source
/// address (an IPv6 one by its first `ipv6_prefix` bits, at most 64).
pub fn steer_program(ipv6: bool, ipv6_prefix: u8, sockets: u32) -> Vec<libc::sock_filter> {
    let mut p = Vec::with_capacity(8);
    if ipv6 {
        let bits = u32::from(ipv6_prefix.min(64));
        let mask = |b: u32| -> u32 {
            match b {
                0 => 0,
                32.. => u32::MAX,
                b => u32::MAX << (32 - b),
            }
        };
        p.push(insn(BPF_LD_W_ABS, net(8)));
        p.push(insn(BPF_ALU_AND_K, mask(bits)));
        p.push(insn(BPF_MISC_TAX, 0));
        p.push(insn(BPF_LD_W_ABS, net(12)));
        p.push(insn(BPF_ALU_AND_K, mask(bits.saturating_sub(32))));
        p.push(insn(BPF_ALU_XOR_X, 0));
    } else {
        p.push(insn(BPF_LD_W_ABS, net(12)));
    }
    p.push(insn(BPF_ALU_MUL_K, 0x9e37_79b1));
    p.push(insn(BPF_ALU_RSH_K, 16));
    p.push(insn(BPF_ALU_MOD_K, sockets.max(1)));
    p.push(insn(BPF_RET_A, 0));
    p
}

/// Makes the reuseport group of `sock` (bound, and for TCP listening) pick
/// its socket by the source address: socket `i` of the group (in bind
/// order) gets the sources that hash to `i` of `sockets`.
pub fn steer_by_source(
    sock: std::os::fd::RawFd,
    ipv6: bool,
    ipv6_prefix: u8,
    sockets: u32,
) -> io::Result<()> {
    let prog = steer_program(ipv6, ipv6_prefix, sockets);
    super::sys::attach_reuseport_cbpf(sock, &prog)
}

/// The address a listener is bound to.
pub fn tcp_local_addr(s: &std::net::TcpListener) -> io::Result<SocketAddr> {
    s.local_addr()
}

/// The address a socket is bound to.
pub fn local_addr(s: &UdpSocket) -> io::Result<SocketAddr> {
    SockRef::from(s)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an inet socket"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn reuse_port_lets_two_shards_share_a_port() {
        let (a, g) = bind_udp("127.0.0.1:0".parse().unwrap(), true, 1 << 20, 1 << 20).unwrap();
        let addr = local_addr(&a).unwrap();
        let (b, _) = bind_udp(addr, true, 1 << 20, 1 << 20).unwrap();
        assert_eq!(local_addr(&b).unwrap(), addr);
        assert!(g.recv > 0 && g.send > 0);
        // Without SO_REUSEPORT the port is taken.
        assert!(bind_udp(addr, false, 1 << 16, 1 << 16).is_err());
    }

    /// Two sockets in a group steered by source: every datagram from one
    /// address lands on one socket, whatever its source port; over many
    /// addresses both sockets get some.
    #[test]
    fn steering_by_source_keeps_an_address_on_one_socket() {
        let (a, _) = bind_udp("127.0.0.1:0".parse().unwrap(), true, 1 << 20, 1 << 20).unwrap();
        let addr = local_addr(&a).unwrap();
        steer_by_source(a.as_raw_fd(), false, 64, 2).unwrap();
        let (b, _) = bind_udp(addr, true, 1 << 20, 1 << 20).unwrap();
        let count = |s: &UdpSocket| {
            let mut buf = [0u8; 64];
            let mut n = 0;
            while s.recv_from(&mut buf).is_ok() {
                n += 1;
            }
            n
        };
        let mut split = Vec::new();
        for host in 2..12u8 {
            for _ in 0..20 {
                let c = UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, 0, host), 0)).unwrap();
                c.send_to(b"x", addr).unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            let (na, nb) = (count(&a), count(&b));
            assert_eq!(na + nb, 20, "127.0.0.{host}: {na} + {nb}");
            assert!(na == 0 || nb == 0, "127.0.0.{host} split: {na} / {nb}");
            split.push(na > 0);
        }
        assert!(split.contains(&true) && split.contains(&false), "{split:?}");
    }

    #[test]
    fn steering_program_shapes() {
        assert_eq!(steer_program(false, 64, 4).len(), 5);
        let p = steer_program(true, 48, 4);
        assert_eq!(p.len(), 10);
        // /48: all of the first word, the top 16 bits of the second.
        assert_eq!((p[1].k, p[4].k), (u32::MAX, 0xffff_0000));
        let p = steer_program(true, 128, 3);
        assert_eq!((p[4].k, p[8].k), (u32::MAX, 3));
    }
}
