//! The shard's UDP sockets (socket2): SO_REUSEPORT on the public port so the
//! kernel spreads flows across shards, large receive and send buffers (with a
//! warning when the kernel caps them), nonblocking.

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
}
