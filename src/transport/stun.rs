//! STUN keep-alives on SIP's UDP port (RFC 5626 §4.4.2 and §8.4, RFC 5389):
//! a UA using outbound over UDP sends STUN Binding requests to the edge,
//! which answers each with a Binding success response carrying the UA's
//! address as seen (XOR-MAPPED-ADDRESS), so the UA learns whether its NAT
//! binding changed. Nothing else of STUN is served.
//!
//! ```text
//!  datagram ─► first byte 0x00/0x01, magic cookie at 4..8? ─ no ─► SIP
//!     │ yes: a Binding request (0x0001), length fits, attributes skipped
//!     └─► Binding success (0x0101), same transaction id, XOR-MAPPED-ADDRESS
//! ```
//!
//! A SIP message never starts with 0x00 or 0x01, so the test is exact
//! (RFC 5626 §4.4.2, RFC 7983). Contract: no panic, no allocation; a
//! datagram that looks like STUN but is not a well-formed Binding request
//! is dropped by the caller.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use core::net::SocketAddr;

/// The magic cookie of RFC 5389.
const COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// Binding request.
const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
/// Binding success response.
const BINDING_SUCCESS: [u8; 2] = [0x01, 0x01];
/// XOR-MAPPED-ADDRESS.
const XOR_MAPPED_ADDRESS: [u8; 2] = [0x00, 0x20];
/// Length of the STUN header.
const HEADER: usize = 20;
/// The longest response this writes (header + IPv6 XOR-MAPPED-ADDRESS).
pub const MAX_RESPONSE: usize = HEADER + 4 + 20;

/// True when `data` is a STUN message rather than SIP (RFC 7983's first-byte
/// test, with the magic cookie).
pub fn is_stun(data: &[u8]) -> bool {
    matches!(data.first(), Some(0x00 | 0x01)) && data.get(4..8) == Some(&COOKIE[..])
}

/// Writes the Binding success response to the Binding request `req` from
/// `from` into `out`; its length, or `None` when `req` is not a well-formed
/// Binding request (or `out` is too small).
pub fn binding_response(req: &[u8], from: SocketAddr, out: &mut [u8]) -> Option<usize> {
    if !is_stun(req) || req.get(0..2)? != BINDING_REQUEST {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([*req.get(2)?, *req.get(3)?]));
    // The length counts the attributes, a multiple of 4, all present.
    if len % 4 != 0 || req.len() != HEADER + len {
        return None;
    }
    let txid = req.get(8..HEADER)?;
    let port = from.port() ^ 0x2112;
    let (family, addr_len) = match from {
        SocketAddr::V4(_) => (0x01u8, 4usize),
        SocketAddr::V6(_) => (0x02u8, 16usize),
    };
    let attr_len = 4 + addr_len;
    let total = HEADER + 4 + attr_len;
    let out = out.get_mut(..total)?;
    let (head, attr) = out.split_at_mut(HEADER);
    head.get_mut(0..2)?.copy_from_slice(&BINDING_SUCCESS);
    head.get_mut(2..4)?
        .copy_from_slice(&(4 + attr_len as u16).to_be_bytes());
    head.get_mut(4..8)?.copy_from_slice(&COOKIE);
    head.get_mut(8..HEADER)?.copy_from_slice(txid);
    attr.get_mut(0..2)?.copy_from_slice(&XOR_MAPPED_ADDRESS);
    attr.get_mut(2..4)?
        .copy_from_slice(&(attr_len as u16).to_be_bytes());
    *attr.get_mut(4)? = 0;
    *attr.get_mut(5)? = family;
    attr.get_mut(6..8)?.copy_from_slice(&port.to_be_bytes());
    // X-Address: the address XOR the cookie (IPv4) or cookie + txid (IPv6).
    let mut key = [0u8; 16];
    key.get_mut(0..4)?.copy_from_slice(&COOKIE);
    key.get_mut(4..16)?.copy_from_slice(txid);
    let ip = match from {
        SocketAddr::V4(a) => {
            let mut b = [0u8; 16];
            b.get_mut(..4)?.copy_from_slice(&a.ip().octets());
            b
        }
        SocketAddr::V6(a) => a.ip().octets(),
    };
    for (i, d) in attr.get_mut(8..8 + addr_len)?.iter_mut().enumerate() {
        *d = ip.get(i)? ^ key.get(i)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(txid: [u8; 12], attrs: &[u8]) -> Vec<u8> {
        let mut r = vec![0x00, 0x01];
        r.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        r.extend_from_slice(&COOKIE);
        r.extend_from_slice(&txid);
        r.extend_from_slice(attrs);
        r
    }

    #[test]
    fn answers_a_binding_request_with_the_mapped_address() {
        // RFC 5769 §2.2's expected XOR-MAPPED-ADDRESS for 192.0.2.1:32853.
        let txid = [
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        let req = request(txid, &[0x80, 0x22, 0x00, 0x04, b't', b'e', b's', b't']);
        assert!(is_stun(&req));
        let mut out = [0u8; MAX_RESPONSE];
        let n = binding_response(&req, "192.0.2.1:32853".parse().unwrap(), &mut out).unwrap();
        assert_eq!(&out[..4], &[0x01, 0x01, 0x00, 0x0c]);
        assert_eq!(&out[4..20], &req[4..20]);
        assert_eq!(
            &out[20..n],
            &[0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]
        );
        // RFC 5769 §2.3: [2001:db8:1234:5678:11:2233:4455:6677]:32853.
        let n = binding_response(
            &req,
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap(),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            &out[20..n],
            &[
                0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3,
                0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9
            ]
        );
    }

    #[test]
    fn sip_and_malformed_stun_are_not_answered() {
        let from = "192.0.2.1:5060".parse().unwrap();
        let mut out = [0u8; MAX_RESPONSE];
        assert!(!is_stun(b"OPTIONS sip:x SIP/2.0\r\n"));
        assert!(!is_stun(b"\r\n\r\n"));
        let good = request([7; 12], &[]);
        assert!(binding_response(&good, from, &mut out).is_some());
        // Truncated, a length that lies, not a multiple of 4, not a request.
        assert!(binding_response(&good[..19], from, &mut out).is_none());
        let mut lie = good.clone();
        lie[3] = 8;
        assert!(binding_response(&lie, from, &mut out).is_none());
        let odd = request([7; 12], &[1, 2, 3]);
        assert!(binding_response(&odd, from, &mut out).is_none());
        let mut indication = good.clone();
        indication[1] = 0x11;
        assert!(binding_response(&indication, from, &mut out).is_none());
        assert!(binding_response(&good, from, &mut out[..10]).is_none());
        for n in 0..good.len() {
            let _ = binding_response(&good[..n], from, &mut out);
        }
    }
}
