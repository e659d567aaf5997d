//! Ethernet frames that carry UDP: the codec of the AF_XDP driver.
//!
//! `parse` reads a received frame (Ethernet II, up to two VLAN tags,
//! IPv4 without fragmentation or IPv6 without extension headers, UDP) into
//! a [`Udp`] view of its addresses and payload; `build` writes a frame
//! around a payload into a caller buffer. Pure: bytes in, bytes out; no
//! allocation, no panic on any input.
//!
//! What is not ours to handle here comes back as a [`Skip`] reason, and the
//! driver counts it: a fragment, an IPv6 extension header, a bad checksum.
//! (The XDP program already passes fragments and non-UDP traffic to the
//! kernel; a frame that reaches this codec anyway is counted and dropped.)
//!
//! Checksums: the IPv4 header checksum is always verified; the UDP checksum
//! is verified when asked (`verify_udp`) and present (IPv4 allows zero,
//! IPv6 does not) — a field holding just the pseudo-header's sum, as a
//! sender on the same host with checksum offload leaves it, is accepted.
//! Built frames carry both checksums.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Ethernet header length (no tag).
pub const ETH_LEN: usize = 14;
/// IPv4 header length (no options; what `build` writes).
pub const IPV4_LEN: usize = 20;
/// IPv6 header length.
pub const IPV6_LEN: usize = 40;
/// UDP header length.
pub const UDP_LEN: usize = 8;

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const ETH_VLAN: u16 = 0x8100;
const ETH_QINQ: u16 = 0x88a8;
const PROTO_UDP: u8 = 17;
const IPV6_FRAGMENT: u8 = 44;

/// Why a frame is not a UDP datagram this codec hands to the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    /// A UDP checksum that does not add up.
    #[error("bad UDP checksum")]
    BadChecksum,
    /// An IPv4 header whose checksum does not add up.
    #[error("bad IPv4 header checksum")]
    BadHeaderChecksum,
    /// A length field that contradicts the frame.
    #[error("inconsistent length")]
    BadLength,
    /// An IP fragment (the kernel reassembles those).
    #[error("IP fragment")]
    Fragment,
    /// Not IPv4 or IPv6 (ARP, LLDP…).
    #[error("not IP")]
    NotIp,
    /// IP, but not UDP.
    #[error("not UDP")]
    NotUdp,
    /// Shorter than its headers.
    #[error("truncated")]
    Truncated,
    /// IPv6 with extension headers, IPv4 with a version or header length this codec does not take.
    #[error("unusual IP header")]
    Unusual,
}

/// The link-layer part of a frame: what a reply needs to go back the way
/// the request came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// The 802.1Q tag control (priority and VLAN id), if tagged once.
    pub vlan: Option<u16>,
}

/// A parsed UDP frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp<'buf> {
    /// Ethernet addresses and tag.
    pub link: Link,
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// The UDP payload.
    pub payload: &'buf [u8],
}

fn be16(b: &[u8], at: usize) -> Result<u16, Skip> {
    match b.get(at..at + 2) {
        Some(&[x, y]) => Ok(u16::from_be_bytes([x, y])),
        _ => Err(Skip::Truncated),
    }
}

fn array<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], Skip> {
    b.get(at..at + N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(Skip::Truncated)
}

/// Parses `frame`; `verify_udp`: check the UDP checksum too.
pub fn parse(frame: &[u8], verify_udp: bool) -> Result<Udp<'_>, Skip> {
    let dst_mac = array::<6>(frame, 0)?;
    let src_mac = array::<6>(frame, 6)?;
    let mut at = 12;
    let mut ethertype = be16(frame, at)?;
    let mut vlan = None;
    let mut tags = 0;
    while ethertype == ETH_VLAN || ethertype == ETH_QINQ {
        tags += 1;
        if tags > 2 {
            return Err(Skip::Unusual);
        }
        let tci = be16(frame, at + 2)?;
        // The inner tag names the VLAN of a QinQ frame.
        vlan = Some(tci);
        at += 4;
        ethertype = be16(frame, at)?;
    }
    if tags == 2 {
        // A reply would need both tags; the kernel path keeps them.
        return Err(Skip::Unusual);
    }
    at += 2;
    let link = Link {
        dst_mac,
        src_mac,
        vlan,
    };
    let ip = frame.get(at..).ok_or(Skip::Truncated)?;
    match ethertype {
        ETH_IPV4 => parse_v4(ip, link, verify_udp),
        ETH_IPV6 => parse_v6(ip, link, verify_udp),
        _ => Err(Skip::NotIp),
    }
}

fn parse_v4(ip: &[u8], link: Link, verify_udp: bool) -> Result<Udp<'_>, Skip> {
    let vihl = *ip.first().ok_or(Skip::Truncated)?;
    if vihl >> 4 != 4 {
        return Err(Skip::Unusual);
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < IPV4_LEN {
        return Err(Skip::Unusual);
    }
    let header = ip.get(..ihl).ok_or(Skip::Truncated)?;
    let total = usize::from(be16(ip, 2)?);
    if total < ihl || total > ip.len() {
        return Err(if total > ip.len() {
            Skip::Truncated
        } else {
            Skip::BadLength
        });
    }
    if fold(sum(header, 0)) != 0 {
        return Err(Skip::BadHeaderChecksum);
    }
    let frag = be16(ip, 6)?;
    // More fragments, or an offset: a fragment.
    if frag & 0x3fff != 0 {
        return Err(Skip::Fragment);
    }
    if header.get(9) != Some(&PROTO_UDP) {
        return Err(Skip::NotUdp);
    }
    let src = Ipv4Addr::from(array::<4>(ip, 12)?);
    let dst = Ipv4Addr::from(array::<4>(ip, 16)?);
    let udp = ip.get(ihl..total).ok_or(Skip::Truncated)?;
    let pseudo = u32::from(PROTO_UDP) + sum(&src.octets(), 0) + sum(&dst.octets(), 0);
    parse_udp(
        udp,
        IpAddr::V4(src),
        IpAddr::V4(dst),
        pseudo,
        link,
        verify_udp,
        false,
    )
}

fn parse_v6(ip: &[u8], link: Link, verify_udp: bool) -> Result<Udp<'_>, Skip> {
    let first = *ip.first().ok_or(Skip::Truncated)?;
    if first >> 4 != 6 {
        return Err(Skip::Unusual);
    }
    let len = usize::from(be16(ip, 4)?);
    let next = *ip.get(6).ok_or(Skip::Truncated)?;
    let src = Ipv6Addr::from(array::<16>(ip, 8)?);
    let dst = Ipv6Addr::from(array::<16>(ip, 24)?);
    match next {
        PROTO_UDP => {}
        IPV6_FRAGMENT => return Err(Skip::Fragment),
        // Hop-by-hop, routing, destination options, AH, ESP…: not ours.
        0 | 43 | 50 | 51 | 60 | 135 | 139 | 140 => return Err(Skip::Unusual),
        _ => return Err(Skip::NotUdp),
    }
    let udp = ip
        .get(IPV6_LEN..IPV6_LEN + len)
        .ok_or(if ip.len() < IPV6_LEN + len {
            Skip::Truncated
        } else {
            Skip::BadLength
        })?;
    let pseudo = u32::from(PROTO_UDP) + sum(&src.octets(), 0) + sum(&dst.octets(), 0);
    parse_udp(
        udp,
        IpAddr::V6(src),
        IpAddr::V6(dst),
        pseudo,
        link,
        verify_udp,
        true,
    )
}

fn parse_udp(
    udp: &[u8],
    src: IpAddr,
    dst: IpAddr,
    pseudo: u32,
    link: Link,
    verify: bool,
    v6: bool,
) -> Result<Udp<'_>, Skip> {
    let sport = be16(udp, 0)?;
    let dport = be16(udp, 2)?;
    let len = usize::from(be16(udp, 4)?);
    let check = be16(udp, 6)?;
    if len < UDP_LEN || len > udp.len() {
        return Err(if len > udp.len() {
            Skip::Truncated
        } else {
            Skip::BadLength
        });
    }
    let datagram = udp.get(..len).ok_or(Skip::Truncated)?;
    if check == 0 && v6 {
        return Err(Skip::BadChecksum);
    }
    // The pseudo-header's length is UDP's own (len ≤ u16::MAX).
    let pseudo = pseudo + u32::from(be16(udp, 4)?);
    // A checksum field holding only the pseudo-header's sum is what a
    // local sender with checksum offload leaves (a veth from a namespace of
    // the same host: CHECKSUM_PARTIAL); the kernel trusts those, so do we.
    if verify && check != 0 && fold(sum(datagram, pseudo)) != 0 && check != !fold(pseudo) {
        return Err(Skip::BadChecksum);
    }
    Ok(Udp {
        link,
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        payload: datagram.get(UDP_LEN..).ok_or(Skip::Truncated)?,
    })
}

/// The header bytes `build` writes before a payload from `src`.
pub const fn header_len(link: &Link, src: &SocketAddr) -> usize {
    let l2 = if link.vlan.is_some() {
        ETH_LEN + 4
    } else {
        ETH_LEN
    };
    let l3 = if src.is_ipv4() { IPV4_LEN } else { IPV6_LEN };
    l2 + l3 + UDP_LEN
}

/// Why `build` wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// Source and destination are of different families.
    #[error("address families differ")]
    Family,
    /// The frame does not fit the buffer (or UDP's length field).
    #[error("too large")]
    TooLarge,
}

/// Writes a frame carrying `payload` from `src` to `dst` into `buf`;
/// returns its length. `ip_id` is the IPv4 identification (DF is set).
pub fn build(
    buf: &mut [u8],
    link: &Link,
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
    ip_id: u16,
) -> Result<usize, BuildError> {
    let hl = header_len(link, &src);
    let udp_len = UDP_LEN + payload.len();
    let total = hl + payload.len();
    if total > buf.len() || udp_len > usize::from(u16::MAX) {
        return Err(BuildError::TooLarge);
    }
    let (Some(out), Some(body)) = ({
        let (h, rest) = buf.split_at_mut(hl);
        (Some(h), rest.get_mut(..payload.len()))
    }) else {
        return Err(BuildError::TooLarge);
    };
    body.copy_from_slice(payload);
    let mut w = Writer { buf: out, at: 0 };
    w.put(&link.dst_mac);
    w.put(&link.src_mac);
    if let Some(tci) = link.vlan {
        w.put(&ETH_VLAN.to_be_bytes());
        w.put(&tci.to_be_bytes());
    }
    // udp_len ≤ u16::MAX, checked above.
    let ulen = u16::try_from(udp_len).map_err(|_| BuildError::TooLarge)?;
    let pseudo = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            w.put(&ETH_IPV4.to_be_bytes());
            let start = w.at;
            let tot = u16::try_from(IPV4_LEN + udp_len).map_err(|_| BuildError::TooLarge)?;
            w.put(&[0x45, 0]);
            w.put(&tot.to_be_bytes());
            w.put(&ip_id.to_be_bytes());
            w.put(&[0x40, 0, 64, PROTO_UDP, 0, 0]);
            w.put(&s.octets());
            w.put(&d.octets());
            let c = fold(w.sum_from(start));
            w.patch(start + 10, &c.to_be_bytes());
            u32::from(PROTO_UDP) + sum(&s.octets(), 0) + sum(&d.octets(), 0)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            w.put(&ETH_IPV6.to_be_bytes());
            w.put(&[0x60, 0, 0, 0]);
            w.put(&ulen.to_be_bytes());
            w.put(&[PROTO_UDP, 64]);
            w.put(&s.octets());
            w.put(&d.octets());
            u32::from(PROTO_UDP) + sum(&s.octets(), 0) + sum(&d.octets(), 0)
        }
        _ => return Err(BuildError::Family),
    };
    let uh = w.at;
    w.put(&src.port().to_be_bytes());
    w.put(&dst.port().to_be_bytes());
    w.put(&ulen.to_be_bytes());
    w.put(&[0, 0]);
    let s = sum(
        w.buf.get(uh..).unwrap_or_default(),
        pseudo + u32::from(ulen),
    );
    let c = match fold(sum(payload, s)) {
        // RFC 768: a computed zero is sent as all ones.
        0 => 0xffff,
        c => c,
    };
    w.patch(uh + 6, &c.to_be_bytes());
    Ok(total)
}

/// A cursor over a header buffer sized by `header_len` (writes past its
/// end are dropped, which `build`'s size check rules out).
struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) {
        if let Some(d) = self.buf.get_mut(self.at..self.at + b.len()) {
            d.copy_from_slice(b);
        }
        self.at += b.len();
    }

    fn patch(&mut self, at: usize, b: &[u8]) {
        if let Some(d) = self.buf.get_mut(at..at + b.len()) {
            d.copy_from_slice(b);
        }
    }

    fn sum_from(&self, start: usize) -> u32 {
        sum(self.buf.get(start..self.at).unwrap_or_default(), 0)
    }
}

/// The one's-complement sum of `data` as 16-bit big-endian words (an odd
/// last byte padded with zero), added to `init`: at most 0xffff, not complemented.
pub fn sum(data: &[u8], init: u32) -> u32 {
    let mut acc = u64::from(init);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let v = u64::from_be_bytes(w);
        acc += (v >> 32) + (v & 0xffff_ffff);
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        acc += u64::from(u16::from_be_bytes([
            c.first().copied().unwrap_or(0),
            c.get(1).copied().unwrap_or(0),
        ]));
    }
    if let Some(&b) = rest.remainder().first() {
        acc += u64::from(b) << 8;
    }
    // Fold to 16 bits (end-around carry), so that callers can add a few
    // sums without overflow before `fold`.
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    u32::try_from(acc).unwrap_or(u32::MAX)
}

/// Folds a sum to 16 bits and complements it (0: the sum checks out).
pub fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !u16::try_from(s).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINK: Link = Link {
        dst_mac: [2, 0, 0, 0, 0, 2],
        src_mac: [2, 0, 0, 0, 0, 1],
        vlan: None,
    };

    fn v4(a: [u8; 4], p: u16) -> SocketAddr {
        SocketAddr::from((a, p))
    }

    fn v6(last: u16, p: u16) -> SocketAddr {
        SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last), p))
    }

    fn frame(link: &Link, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let n = build(&mut buf, link, src, dst, payload, 7).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn build_then_parse_is_the_identity() {
        let p = b"OPTIONS sip:a@b SIP/2.0\r\n\r\n";
        for link in [
            LINK,
            Link {
                vlan: Some(0x2064),
                ..LINK
            },
        ] {
            for (s, d) in [
                (v4([198, 18, 0, 2], 5070), v4([198, 18, 0, 1], 5060)),
                (v6(2, 5070), v6(1, 5060)),
            ] {
                for payload in [&p[..], b"", b"x"] {
                    let f = frame(&link, s, d, payload);
                    assert_eq!(f.len(), header_len(&link, &s) + payload.len());
                    let u = parse(&f, true).unwrap();
                    assert_eq!((u.link, u.src, u.dst, u.payload), (link, s, d, payload));
                }
            }
        }
    }

    /// The Internet checksum as RFC 1071 defines it.
    #[test]
    fn checksums_follow_rfc_1071() {
        let f = frame(
            &LINK,
            v4([198, 18, 0, 2], 40000),
            v4([198, 18, 0, 1], 5060),
            b"ping",
        );
        // The header checksum field makes the header sum to 0xffff.
        assert_eq!(fold(sum(&f[14..34], 0)), 0);
        // RFC 1071's example: 0001 f203 f4f5 f6f7 sums to ddf2 (folded, before complement).
        assert_eq!(
            !fold(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0)),
            0xddf2
        );
        // Odd lengths pad with zero.
        assert_eq!(!fold(sum(&[0x12], 0)), 0x1200);
    }

    #[test]
    fn damaged_frames_are_named() {
        let s = v4([198, 18, 0, 2], 5070);
        let d = v4([198, 18, 0, 1], 5060);
        let good = frame(&LINK, s, d, b"INVITE");
        // Every truncation is an error, never a panic.
        for n in 0..good.len() {
            assert!(parse(&good[..n], true).is_err(), "{n}");
        }
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(parse(&bad, true), Err(Skip::BadChecksum));
        assert!(parse(&bad, false).is_ok());
        // An offloaded (partial) checksum: the pseudo-header's sum alone.
        let mut partial = good.clone();
        let pseudo = 17 + sum(&[198, 18, 0, 2, 198, 18, 0, 1], 0) + (8 + 6);
        partial[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&(!fold(pseudo)).to_be_bytes());
        assert!(parse(&partial, true).is_ok());
        *partial.last_mut().unwrap() ^= 1;
        assert!(
            parse(&partial, true).is_ok(),
            "partial sums cover no payload"
        );
        let mut bad = good.clone();
        bad[14 + 8] = 1; // TTL
        assert_eq!(parse(&bad, true), Err(Skip::BadHeaderChecksum));
        // UDP checksum 0 over IPv4: none sent, accepted.
        let mut none = good.clone();
        none[14 + 20 + 6] = 0;
        none[14 + 20 + 7] = 0;
        assert!(parse(&none, true).is_ok());
        // Over IPv6 a zero checksum is invalid.
        let mut six = frame(&LINK, v6(2, 5070), v6(1, 5060), b"x");
        six[14 + 40 + 6] = 0;
        six[14 + 40 + 7] = 0;
        assert_eq!(parse(&six, true), Err(Skip::BadChecksum));
        // An IPv4 fragment (MF set; header checksum fixed up).
        let mut frag = good.clone();
        frag[14 + 6] = 0x20;
        refix_v4(&mut frag);
        assert_eq!(parse(&frag, true), Err(Skip::Fragment));
        let mut frag = good.clone();
        frag[14 + 6] = 0x00;
        frag[14 + 7] = 0x10; // offset 16×8
        refix_v4(&mut frag);
        assert_eq!(parse(&frag, true), Err(Skip::Fragment));
        // IPv6 fragment header and hop-by-hop options.
        let mut f6 = frame(&LINK, v6(2, 5070), v6(1, 5060), b"x");
        f6[14 + 6] = 44;
        assert_eq!(parse(&f6, true), Err(Skip::Fragment));
        f6[14 + 6] = 0;
        assert_eq!(parse(&f6, true), Err(Skip::Unusual));
        // TCP, ARP.
        let mut tcp = good.clone();
        tcp[14 + 9] = 6;
        refix_v4(&mut tcp);
        assert_eq!(parse(&tcp, true), Err(Skip::NotUdp));
        let mut arp = good.clone();
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert_eq!(parse(&arp, true), Err(Skip::NotIp));
        // A UDP length past the IP payload.
        let mut long = good.clone();
        long[14 + 20 + 5] = 200;
        assert_eq!(parse(&long, false), Err(Skip::Truncated));
        // A double tag is left to the kernel.
        let mut qinq = good[..12].to_vec();
        qinq.extend_from_slice(&[0x88, 0xa8, 0, 10, 0x81, 0x00, 0, 20]);
        qinq.extend_from_slice(&good[12..]);
        assert_eq!(parse(&qinq, true), Err(Skip::Unusual));
        // Trailing Ethernet padding past the IP length is ignored.
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 18]);
        assert_eq!(parse(&padded, true).unwrap().payload, b"INVITE");
    }

    #[test]
    fn build_refuses_what_does_not_fit() {
        let mut small = [0u8; 60];
        let s = v4([198, 18, 0, 2], 1);
        assert_eq!(
            build(&mut small, &LINK, s, s, &[0; 40], 0),
            Err(BuildError::TooLarge)
        );
        assert_eq!(
            build(&mut [0u8; 200], &LINK, s, v6(1, 1), b"x", 0),
            Err(BuildError::Family)
        );
    }

    fn refix_v4(f: &mut [u8]) {
        f[24] = 0;
        f[25] = 0;
        let c = fold(sum(&f[14..34], 0));
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }
}
