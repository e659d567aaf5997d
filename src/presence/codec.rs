//! The byte encoding of presence's durable entries (the values of
//! [`crate::location::Entry`]): length-prefixed fields in a fixed order.
//! Decoding is total: a malformed value is `None`, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::transport::{FlowId, Peer, SocketId, Transport};

/// The entry kinds presence writes (the registrar writes none).
pub(crate) mod kind {
    /// A publication: key = its entity tag, value = the PIDF document.
    pub(crate) const PUBLICATION: u8 = 0x21;
    /// A subscription: key = its dialog key, value = [`super::super::server`]'s fields.
    pub(crate) const SUBSCRIPTION: u8 = 0x22;
    /// A stored MESSAGE: key = its id (big-endian u64).
    pub(crate) const MESSAGE: u8 = 0x23;
}

/// Appends fields to a value.
pub(crate) struct Writer<'a>(pub(crate) &'a mut Vec<u8>);

impl Writer<'_> {
    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.0.extend_from_slice(b);
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    pub(crate) fn peer(&mut self, p: &Peer) -> &mut Self {
        self.u8(transport_code(p.transport));
        match p.remote.ip() {
            IpAddr::V4(a) => {
                self.u8(4);
                self.0.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                self.u8(6);
                self.0.extend_from_slice(&a.octets());
            }
        }
        self.0.extend_from_slice(&p.remote.port().to_le_bytes());
        self.u8(p.local.0);
        self.0.extend_from_slice(&p.flow.0.to_le_bytes());
        self
    }
}

/// Reads fields back, in the order written.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    pub(crate) fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(n)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    pub(crate) fn peer(&mut self) -> Option<Peer> {
        let transport = transport_of(self.u8()?)?;
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(self.take(4)?).ok()?)),
            6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(self.take(16)?).ok()?)),
            _ => return None,
        };
        let port = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        let local = SocketId(self.u8()?);
        let flow = FlowId(u32::from_le_bytes(self.take(4)?.try_into().ok()?));
        Some(Peer {
            transport,
            remote: SocketAddr::new(ip, port),
            local,
            flow,
        })
    }
}

fn transport_code(t: Transport) -> u8 {
    match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
        Transport::Ws => 3,
        Transport::Wss => 4,
    }
}

fn transport_of(c: u8) -> Option<Transport> {
    Some(match c {
        0 => Transport::Udp,
        1 => Transport::Tcp,
        2 => Transport::Tls,
        3 => Transport::Ws,
        4 => Transport::Wss,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_truncation_is_none() {
        let peer = Peer {
            transport: Transport::Wss,
            remote: "[::1]:5061".parse().unwrap(),
            local: SocketId(3),
            flow: FlowId(77),
        };
        let mut v = Vec::new();
        Writer(&mut v).bytes(b"abc").u64(42).u8(7).peer(&peer);
        let mut r = Reader(&v);
        assert_eq!(r.bytes(), Some(&b"abc"[..]));
        assert_eq!(r.u64(), Some(42));
        assert_eq!(r.u8(), Some(7));
        assert_eq!(r.peer(), Some(peer));
        for cut in 0..v.len() {
            let mut r = Reader(&v[..cut]);
            let all = r.bytes().is_some() && r.u64().is_some() && r.u8().is_some();
            assert!(!(all && r.peer().is_some()), "cut at {cut}");
        }
    }
}
