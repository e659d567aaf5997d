//! Matching requests to server transactions (RFC 3261 §17.2.3) and
//! responses to client transactions (§17.1.3).
//!
//! A server key is a keyed 64-bit hash of what §17.2.3 compares: for an RFC
//! 3261 request, the top Via branch and sent-by and the method (ACK matching
//! INVITE); for an RFC 2543 request, the Request-URI, From tag, To tag (none
//! for the INVITE and its CANCEL), Call-ID, CSeq number and the top Via.
//!
//! Why a hash and no stored key: the table compares 8 bytes instead of
//! variable strings, and the key is secret, so nobody can aim collisions at
//! it; an accidental collision among 2^16 live transactions has a
//! probability near 2^-33.

use crate::hash::Hasher;
use crate::sip::{Message, Method, Via};

/// Which server transaction a request belongs to, by method (§17.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMethod {
    /// INVITE, and the ACK of its non-2xx final response.
    Invite,
    /// CANCEL (a transaction of its own, same branch as the INVITE).
    Cancel,
    /// Any other method (its CSeq method is part of the key).
    Other,
}

impl KeyMethod {
    /// The key method of a request method.
    pub fn of(m: Method) -> Self {
        match m {
            Method::Invite | Method::Ack => Self::Invite,
            Method::Cancel => Self::Cancel,
            _ => Self::Other,
        }
    }
}

/// The server-transaction key of `msg` (whose top Via is `via`) for `kind`.
pub fn server_key(secret: u64, msg: &Message<'_>, via: &Via<'_>, kind: KeyMethod) -> u64 {
    let mut h = Hasher::new(secret ^ 0x5e4e_7e4b);
    h.write_u64(kind as u64);
    if kind == KeyMethod::Other {
        h.write(msg.method_bytes());
    }
    match via.branch() {
        Some(b) if b.starts_with(b"z9hG4bK") => {
            h.write(b)
                .write(via.host_bytes)
                .write_u64(u64::from(via.port.unwrap_or(0)));
        }
        _ => {
            let from_tag = msg.from().ok().and_then(|f| f.tag()).unwrap_or_default();
            // The ACK of a non-2xx carries the To tag of the response; the
            // INVITE had none, so the To tag cannot be part of an INVITE key.
            let to_tag = if kind == KeyMethod::Other {
                msg.to().ok().and_then(|t| t.tag()).unwrap_or_default()
            } else {
                b""
            };
            h.write(msg.request_uri_bytes())
                .write(from_tag)
                .write(to_tag)
                .write(msg.call_id())
                .write_u64(u64::from(msg.cseq().number))
                .write(via.raw);
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::{parse, HeaderIndex};

    fn key_of(m: &str, kind: KeyMethod) -> u64 {
        let mut idx = HeaderIndex::default();
        let msg = parse(m.as_bytes(), &mut idx).unwrap();
        server_key(7, &msg, &msg.top_via().unwrap(), kind)
    }

    fn req(method: &str, branch: &str, to_tag: &str) -> String {
        format!(
            "{method} sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch={branch}\r\nTo: <sip:b@h>{to_tag}\r\nFrom: <sip:a@h>;tag=f\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n\r\n"
        )
    }

    #[test]
    fn ack_matches_invite_and_cancel_is_its_own() {
        let inv = key_of(&req("INVITE", "z9hG4bK1", ""), KeyMethod::Invite);
        assert_eq!(
            inv,
            key_of(&req("ACK", "z9hG4bK1", ";tag=x"), KeyMethod::Invite)
        );
        assert_eq!(
            inv,
            key_of(&req("CANCEL", "z9hG4bK1", ""), KeyMethod::Invite),
            "CANCEL finds its INVITE"
        );
        assert_ne!(
            inv,
            key_of(&req("CANCEL", "z9hG4bK1", ""), KeyMethod::Cancel)
        );
        assert_ne!(
            inv,
            key_of(&req("INVITE", "z9hG4bK2", ""), KeyMethod::Invite)
        );
        assert_ne!(
            key_of(&req("BYE", "z9hG4bK1", ";tag=x"), KeyMethod::Other),
            key_of(&req("INFO", "z9hG4bK1", ";tag=x"), KeyMethod::Other)
        );
        // RFC 2543 (no magic cookie): the ACK still matches its INVITE.
        assert_eq!(
            key_of(&req("INVITE", "old1", ""), KeyMethod::Invite),
            key_of(&req("ACK", "old1", ";tag=x"), KeyMethod::Invite)
        );
    }
}
