//! Flow tokens (RFC 5626 §5.2, §5.3): the connection a UA reached us over,
//! written into the user part of our Record-Route URI facing it, so that
//! in-dialog requests toward it go down that connection (a browser's
//! `.invalid` contact, a phone behind NAT on TCP or TLS).
//!
//! ```text
//!  sip:f<flow: 8 hex><mac: 8 hex>@192.0.2.1:5066;lr;transport=ws
//! ```
//! The MAC is keyed with the edge's secret, so a forged token names no
//! flow. A request that arrives on the flow its token names is *from* that
//! UA: the token is ignored and the request routed as usual (§5.3).
//!
//! Pure: no allocation, no I/O.

use crate::sip::Uri;
use crate::transport::FlowId;

use super::{branch, Identity, LocalSocket};

/// Length of a token: `f` + 16 hex digits.
pub const TOKEN_LEN: usize = 17;

fn mac(secret: u64, flow: FlowId) -> u32 {
    let h = branch::Hasher::new(secret ^ 0x5eed_f10e)
        .write(&flow.0.to_le_bytes())
        .finish();
    (h >> 32) as u32
}

fn hex8(v: u32, out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, d) in out.iter_mut().take(8).enumerate() {
        let nib = (v >> (28 - 4 * i)) & 0xf;
        *d = HEX.get(nib as usize).copied().unwrap_or(b'0');
    }
}

fn unhex8(s: &[u8]) -> Option<u32> {
    if s.len() != 8 {
        return None;
    }
    s.iter().try_fold(0u32, |acc, &c| {
        let d = (c as char).to_digit(16)?;
        Some((acc << 4) | d)
    })
}

/// The token of `flow`.
pub fn token(secret: u64, flow: FlowId) -> [u8; TOKEN_LEN] {
    let mut t = [b'f'; TOKEN_LEN];
    if let Some(a) = t.get_mut(1..9) {
        hex8(flow.0, a);
    }
    if let Some(b) = t.get_mut(9..17) {
        hex8(mac(secret, flow), b);
    }
    t
}

/// The flow a token names, if it is one of ours.
pub fn parse(secret: u64, user: &[u8]) -> Option<FlowId> {
    let rest = user.strip_prefix(b"f")?;
    let flow = FlowId(unhex8(rest.get(..8)?)?);
    let m = unhex8(rest.get(8..)?)?;
    (!flow.is_none() && m == mac(secret, flow)).then_some(flow)
}

/// The flow named by the user part of `uri` (one of our Route values).
pub fn from_uri(id: &Identity, uri: &Uri<'_>) -> FlowId {
    uri.user
        .and_then(|u| parse(id.secret, u))
        .unwrap_or(FlowId::NONE)
}

/// Writes the Record-Route URI of `sock`, with the token of `flow` unless
/// it is NONE, into `buf`; returns it (empty if it does not fit).
pub fn rr_uri<'a>(secret: u64, sock: &LocalSocket, flow: FlowId, buf: &'a mut [u8]) -> &'a [u8] {
    let rr = sock.rr_uri();
    if flow.is_none() {
        let n = rr.len().min(buf.len());
        if let (Some(d), Some(s)) = (buf.get_mut(..n), rr.get(..n)) {
            d.copy_from_slice(s);
        }
        return buf.get(..n).unwrap_or_default();
    }
    // `sip:` + token + `@` + the rest of our URI.
    let rest = rr.get(4..).unwrap_or_default();
    let n = 4 + TOKEN_LEN + 1 + rest.len();
    let Some(out) = buf.get_mut(..n) else {
        return &[];
    };
    let (scheme, tail) = out.split_at_mut(4);
    scheme.copy_from_slice(b"sip:");
    let (tok, tail) = tail.split_at_mut(TOKEN_LEN);
    tok.copy_from_slice(&token(secret, flow));
    let (at, tail) = tail.split_at_mut(1);
    at.copy_from_slice(b"@");
    tail.copy_from_slice(rest);
    buf.get(..n).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::SocketRole;
    use crate::transport::Transport;

    #[test]
    fn tokens_round_trip_and_resist_forgery() {
        let f = FlowId::new(3, 1234, 7);
        let t = token(42, f);
        assert_eq!(parse(42, &t), Some(f));
        assert_eq!(parse(43, &t), None, "another edge's secret");
        let mut forged = t;
        forged[16] = if forged[16] == b'0' { b'1' } else { b'0' };
        assert_eq!(parse(42, &forged), None);
        assert_eq!(parse(42, b"alice"), None);
        assert_eq!(parse(42, b"f"), None);
        assert_eq!(parse(42, b"fzzzzzzzzzzzzzzzz"), None);
        let sock = LocalSocket::listener(
            Transport::Ws,
            "127.0.0.1:5066".parse().unwrap(),
            SocketRole::Public,
            "127.0.0.1:5066".parse().unwrap(),
        );
        let mut buf = [0u8; 128];
        let uri = rr_uri(42, &sock, f, &mut buf).to_vec();
        let s = String::from_utf8(uri.clone()).unwrap();
        assert!(
            s.starts_with("sip:f") && s.ends_with("@127.0.0.1:5066;lr;transport=ws"),
            "{s}"
        );
        let u = Uri::parse(&uri).unwrap();
        assert_eq!(u.user.and_then(|u| parse(42, u)), Some(f));
        let mut buf = [0u8; 128];
        assert_eq!(
            rr_uri(42, &sock, FlowId::NONE, &mut buf),
            b"sip:127.0.0.1:5066;lr;transport=ws"
        );
    }
}
