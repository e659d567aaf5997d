//! What the AF_XDP driver asks the kernel about the network: the interface
//! that holds an address, its MAC, the route to a destination and the
//! neighbour (MAC) of a next hop — over rtnetlink, synchronously. Only
//! called at start and when a destination's MAC is not known yet (then
//! the datagram goes through the kernel socket, which resolves it).
//!
//! Why by hand and not a crate: two requests (RTM_GETROUTE, RTM_GETNEIGH)
//! and their replies' three attributes; the rust-netlink crates bring an
//! async runtime or a generic message model for what is ~150 lines here.
#![allow(unsafe_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// REACHABLE | STALE | DELAY | PROBE | NOARP | PERMANENT.
const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;

/// The way to a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The outgoing interface.
    pub oif: u32,
    /// The next hop: the gateway, or the destination itself when on-link.
    pub next_hop: IpAddr,
    /// The preferred source address, if the route names one.
    pub src: Option<IpAddr>,
}

/// An rtnetlink socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

fn family(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

fn octets(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn ip_from(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b)
            .ok()
            .map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        16 => <[u8; 16]>::try_from(b)
            .ok()
            .map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        _ => None,
    }
}

fn push_attr(msg: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    msg.extend_from_slice(&(len as u16).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(data);
    while !msg.len().is_multiple_of(4) {
        msg.push(0);
    }
}

/// The attributes after a fixed header of `fixed` bytes: (type, value).
fn attrs(body: &[u8], fixed: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = fixed;
    std::iter::from_fn(move || {
        let hdr = body.get(at..at + 4)?;
        let len = usize::from(u16::from_ne_bytes([hdr[0], hdr[1]]));
        let kind = u16::from_ne_bytes([hdr[2], hdr[3]]) & 0x3fff;
        if len < 4 {
            return None;
        }
        let val = body.get(at + 4..at + len)?;
        at += (len + 3) & !3;
        Some((kind, val))
    })
}

impl Netlink {
    /// Opens a NETLINK_ROUTE socket.
    pub fn open() -> io::Result<Self> {
        // SAFETY: socket(2); checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: `tv` is a live timeval of the size passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&tv).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        Ok(Self {
            fd,
            seq: 1,
            buf: vec![0u8; 16 * 1024],
        })
    }

    /// Sends one request (`kind`, body) and returns the body of the reply of `want` type.
    fn request(&mut self, kind: u16, body: &[u8], want: u16) -> io::Result<Option<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(16 + body.len());
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: `msg` is live for the call; the kernel address is zeroed (the kernel).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: `msg` and `sa` are live and sized as passed.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                std::ptr::from_ref(&sa).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        for _ in 0..8 {
            // SAFETY: `buf` is live and writable for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let data = self.buf.get(..n as usize).unwrap_or_default();
            let mut at = 0;
            while let Some(h) = data.get(at..at + 16) {
                let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
                let ty = u16::from_ne_bytes([h[4], h[5]]);
                let seq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
                if len < 16 {
                    break;
                }
                let body = data.get(at + 16..at + len).unwrap_or_default();
                if seq == self.seq {
                    if ty == want {
                        return Ok(Some(body.to_vec()));
                    }
                    if ty == NLMSG_ERROR {
                        let code = body
                            .get(..4)
                            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        return if code == 0 || code == -libc::ENOENT || code == -libc::ENETUNREACH {
                            Ok(None)
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        };
                    }
                }
                at += (len + 3) & !3;
            }
        }
        Ok(None)
    }

    /// The route the kernel would use to reach `dst` (None: unreachable).
    pub fn route(&mut self, dst: IpAddr) -> io::Result<Option<Route>> {
        let a = octets(&dst);
        let mut body = vec![
            family(&dst),
            (a.len() * 8) as u8,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        push_attr(&mut body, RTA_DST, &a);
        let Some(reply) = self.request(RTM_GETROUTE, &body, RTM_NEWROUTE)? else {
            return Ok(None);
        };
        let mut oif = None;
        let mut gw = None;
        let mut src = None;
        for (k, v) in attrs(&reply, 12) {
            match k {
                RTA_OIF => {
                    oif = v
                        .get(..4)
                        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                }
                RTA_GATEWAY => gw = ip_from(v),
                RTA_PREFSRC => src = ip_from(v),
                _ => {}
            }
        }
        Ok(oif.map(|oif| Route {
            oif,
            next_hop: gw.unwrap_or(dst),
            src,
        }))
    }

    /// The MAC of neighbour `ip` on interface `ifindex`, if the kernel has
    /// a usable entry.
    pub fn neighbour(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<Option<[u8; 6]>> {
        let a = octets(&ip);
        let mut body = vec![family(&ip), 0, 0, 0];
        body.extend_from_slice(&(ifindex as i32).to_ne_bytes());
        body.extend_from_slice(&[0, 0, 0, 0]);
        push_attr(&mut body, NDA_DST, &a);
        let Some(reply) = self.request(RTM_GETNEIGH, &body, RTM_NEWNEIGH)? else {
            return Ok(None);
        };
        let state = reply
            .get(8..10)
            .map_or(0, |b| u16::from_ne_bytes([b[0], b[1]]));
        if state & NUD_USABLE == 0 {
            return Ok(None);
        }
        let mac = attrs(&reply, 12)
            .find(|(k, _)| *k == NDA_LLADDR)
            .and_then(|(_, v)| <[u8; 6]>::try_from(v).ok());
        Ok(mac)
    }
}

/// The interface that holds `ip` (its name), from getifaddrs.
pub fn interface_of(ip: IpAddr) -> io::Result<Option<String>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, live
        // until freeifaddrs; its fields are valid C data.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it names.
            let fam = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            let addr = if fam == libc::AF_INET {
                // SAFETY: family AF_INET: a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))))
            } else if fam == libc::AF_INET6 {
                // SAFETY: family AF_INET6: a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
            } else {
                None
            };
            if addr == Some(ip) {
                // SAFETY: ifa_name is a NUL-terminated string of the list.
                let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
                found = Some(name.to_string_lossy().into_owned());
                break;
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

/// The index of interface `name` (None: no such interface).
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The MAC address of interface `name`.
pub fn mac_of(name: &str) -> Option<[u8; 6]> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).ok()?;
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    Some(mac)
}

/// The MTU of interface `name`.
pub fn mtu_of(name: &str) -> Option<usize> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The receive queues of interface `name`.
pub fn rx_queues(name: &str) -> usize {
    std::fs::read_dir(format!("/sys/class/net/{name}/queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_and_routed() {
        assert_eq!(
            interface_of("127.0.0.1".parse().unwrap())
                .unwrap()
                .as_deref(),
            Some("lo")
        );
        let lo = ifindex("lo").unwrap();
        let mut nl = Netlink::open().unwrap();
        let r = nl.route("127.0.0.1".parse().unwrap()).unwrap().unwrap();
        assert_eq!(r.oif, lo);
        assert_eq!(r.next_hop, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert!(mtu_of("lo").unwrap() > 1500);
    }

    #[test]
    fn attributes_are_read_without_overrun() {
        let mut m = vec![0u8; 12];
        push_attr(&mut m, RTA_OIF, &7u32.to_ne_bytes());
        push_attr(&mut m, RTA_GATEWAY, &[198, 18, 0, 1]);
        let got: Vec<_> = attrs(&m, 12).collect();
        assert_eq!(got.len(), 2);
        // A length past the end stops the walk.
        m.extend_from_slice(&[200, 0, 1, 0]);
        assert_eq!(attrs(&m, 12).count(), 2);
    }
}
