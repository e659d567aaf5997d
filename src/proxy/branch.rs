//! Via branches this proxy puts on what it forwards (RFC 3261 §8.1.1.7,
//! §16.6 step 8, §16.11).
//!
//! ```text
//! stateless:    z9hG4bK se 03 l                 9f1c2b7a44d01e6c
//! transaction:  z9hG4bK se 03 t 0000002a 00017 01 9f1c2b7a44d01e6c
//!               └cookie┘└┬┘└┬┘└┬┘└─slot─┘└gen─┘└br┘└── loop hash ───┘
//!                    marker shard kind
//! ```
//!
//! Every branch ends with a 64-bit keyed hash of the request as it reached
//! us (its Request-URI and top Via; for an RFC 2543 request, also From tag,
//! Call-ID and CSeq number). A stateless branch is nothing else, so a
//! retransmission, the matching CANCEL and the ACK of a non-2xx take the
//! same branch as the INVITE (§16.11). A transaction branch also names the
//! slot, generation and fork index of its client transaction, so a response
//! finds it with one array index.
//!
//! The shard id lets any shard tell which shard added the Via. The trailing
//! hash detects loops (§16.3 step 4): a request carrying a Via of ours whose
//! hash is what we would compute from the Via below it, for the same
//! Request-URI, has been here before unchanged; a retargeted request (a
//! spiral) hashes differently.

use crate::sip::{Message, Via};

use super::Identity;
pub use crate::hash::Hasher;

/// The magic cookie and our marker: every branch we add starts with it.
pub const PREFIX: &[u8] = b"z9hG4bKse";
/// Length of a stateless branch.
pub const LEN: usize = PREFIX.len() + 2 + 1 + 16;
/// Length of a transaction branch.
pub const TXN_LEN: usize = PREFIX.len() + 2 + 1 + 8 + 6 + 2 + 16;

/// What kind of element added a branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The stateless relay.
    Stateless,
    /// A client transaction of the stateful proxy.
    Transaction,
}

/// A branch value we generate (fixed size, no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Branch {
    buf: [u8; TXN_LEN],
    len: u8,
}

/// Where a transaction branch points: slot, generation and fork index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnRef {
    /// Shard that owns the transaction.
    pub shard: u16,
    /// Slot in the transaction table.
    pub slot: u32,
    /// Generation of the slot (24 bits).
    pub gen: u32,
    /// Index of the fork within the transaction.
    pub fork: u8,
}

impl Branch {
    /// A stateless branch (also the To tag of stateless local responses).
    pub fn new(shard: u16, kind: Kind, hash: u64) -> Self {
        let mut b = Self {
            buf: [0; TXN_LEN],
            len: 0,
        };
        b.put(PREFIX);
        b.put_hex(u64::from(shard & 0xff), 2);
        b.put(match kind {
            Kind::Stateless => b"l",
            Kind::Transaction => b"t",
        });
        b.put_hex(hash, 16);
        b
    }

    /// A transaction branch naming `r`, ending with `loop_hash`.
    pub fn transaction(r: TxnRef, loop_hash: u64) -> Self {
        let mut b = Self {
            buf: [0; TXN_LEN],
            len: 0,
        };
        b.put(PREFIX);
        b.put_hex(u64::from(r.shard & 0xff), 2);
        b.put(b"t");
        b.put_hex(u64::from(r.slot), 8);
        b.put_hex(u64::from(r.gen & 0xff_ffff), 6);
        b.put_hex(u64::from(r.fork), 2);
        b.put_hex(loop_hash, 16);
        b
    }

    fn put(&mut self, bytes: &[u8]) {
        for &c in bytes {
            if let Some(d) = self.buf.get_mut(usize::from(self.len)) {
                *d = c;
                self.len += 1;
            }
        }
    }

    fn put_hex(&mut self, v: u64, digits: u32) {
        for i in (0..digits).rev() {
            let d = hex_digit(v >> (4 * i));
            self.put(&[d]);
        }
    }

    /// The branch text.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..usize::from(self.len)).unwrap_or_default()
    }
}

const HEX: [u8; 16] = *b"0123456789abcdef";

/// The lower-case hex digit of the low nibble of `v`.
#[inline]
fn hex_digit(v: u64) -> u8 {
    HEX.get((v & 0xf) as usize).copied().unwrap_or(b'0')
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &c| {
        crate::sip::scan::hex(c).map(|d| acc << 4 | u64::from(d))
    })
}

/// The transaction a branch of ours names (`None` for other branches).
pub fn txn_ref(branch: &[u8]) -> Option<TxnRef> {
    let rest = branch.strip_prefix(PREFIX)?;
    if branch.len() != TXN_LEN || rest.get(2) != Some(&b't') {
        return None;
    }
    Some(TxnRef {
        shard: parse_hex(rest.get(..2)?)? as u16,
        slot: parse_hex(rest.get(3..11)?)? as u32,
        gen: parse_hex(rest.get(11..17)?)? as u32,
        fork: parse_hex(rest.get(17..19)?)? as u8,
    })
}

/// The shard that added `branch`, if it is one of ours.
pub fn shard_of(branch: &[u8]) -> Option<u16> {
    let rest = branch.strip_prefix(PREFIX)?;
    let ok = match rest.get(2) {
        Some(b'l') => branch.len() == LEN,
        Some(b't') => branch.len() == TXN_LEN,
        _ => false,
    };
    if !ok {
        return None;
    }
    Some(parse_hex(rest.get(..2)?)? as u16)
}

/// The loop hash at the end of one of our branches.
fn loop_hash_of(branch: &[u8]) -> Option<&[u8]> {
    shard_of(branch)?;
    branch.get(branch.len() - 16..)
}

/// True when `branch` looks like one we generate.
pub fn is_ours(branch: &[u8]) -> bool {
    shard_of(branch).is_some()
}

/// The stateless branch for `msg` arriving with top Via `via` (§16.11).
pub fn stateless(id: &Identity, msg: &Message<'_>, via: &Via<'_>) -> Branch {
    Branch::new(id.shard_id, Kind::Stateless, loop_hash(id.secret, msg, via))
}

/// The hash every branch of ours ends with: a function of the request as it
/// reached us with top Via `via`.
pub fn loop_hash(secret: u64, msg: &Message<'_>, via: &Via<'_>) -> u64 {
    let mut h = Hasher::new(secret);
    h.write(msg.request_uri_bytes());
    match via.branch() {
        Some(b) if b.starts_with(b"z9hG4bK") => {
            h.write(b)
                .write(via.host_bytes)
                .write_u64(u64::from(via.port.unwrap_or(0)));
        }
        _ => {
            let from_tag = msg.from().ok().and_then(|f| f.tag()).unwrap_or_default();
            h.write(via.raw)
                .write(from_tag)
                .write(msg.call_id())
                .write_u64(u64::from(msg.cseq().number));
        }
    }
    h.finish()
}

/// §16.3 step 4 for the stateless relay: true when `msg` carries a Via of
/// ours whose branch equals the stateless branch of the same request as it
/// was when it reached us (the Via below it, the same Request-URI).
pub fn is_loop(id: &Identity, msg: &Message<'_>) -> bool {
    let mut vias = msg.values(crate::sip::HeaderName::Via);
    let Some(mut upper) = vias.next() else {
        return false;
    };
    for lower in vias {
        // Only under a Via of ours with a loop hash is the lower one decoded:
        // any other Via is decoded once, as the upper of its pair (decoding
        // both of every pair decoded each Via twice).
        let ours = Via::parse(upper).ok().and_then(|u| {
            let h = u.branch().and_then(loop_hash_of)?;
            id.is_local_addr(&u.host, u.port).then_some(h)
        });
        if let Some(h) = ours {
            if let Ok(l) = Via::parse(lower) {
                let again = Branch::new(0, Kind::Stateless, loop_hash(id.secret, msg, &l));
                if loop_hash_of(again.as_bytes()) == Some(h) {
                    return true;
                }
            }
        }
        upper = lower;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::testutil::identity;
    use crate::sip::{parse, HeaderIndex};

    #[test]
    fn branch_layout() {
        let b = Branch::new(3, Kind::Stateless, 0x0123_4567_89ab_cdef);
        assert_eq!(b.as_bytes(), b"z9hG4bKse03l0123456789abcdef");
        assert_eq!(shard_of(b.as_bytes()), Some(3));
        assert_eq!(shard_of(b"z9hG4bKse03l0123"), None);
        assert_eq!(shard_of(b"z9hG4bKabc"), None);
        let r = TxnRef {
            shard: 2,
            slot: 42,
            gen: 0x17,
            fork: 1,
        };
        let t = Branch::transaction(r, 0x9f1c_2b7a_44d0_1e6c);
        assert_eq!(
            t.as_bytes(),
            b"z9hG4bKse02t0000002a00001701 9f1c2b7a44d01e6c"
                .as_slice()
                .iter()
                .filter(|&&c| c != b' ')
                .copied()
                .collect::<Vec<u8>>()
                .as_slice()
        );
        assert_eq!(txn_ref(t.as_bytes()), Some(r));
        assert_eq!(shard_of(t.as_bytes()), Some(2));
        assert_eq!(txn_ref(b.as_bytes()), None);
        assert_eq!(loop_hash_of(t.as_bytes()), Some(&b"9f1c2b7a44d01e6c"[..]));
    }

    fn req(method: &str, cseq_method: &str, to_tag: &str) -> Vec<u8> {
        format!(
            "{method} sip:bob@192.0.2.9 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKclient1\r\n\
To: <sip:bob@x>{to_tag}\r\nFrom: <sip:a@x>;tag=f\r\nCall-ID: c1\r\nCSeq: 7 {cseq_method}\r\nMax-Forwards: 70\r\n\r\n"
        )
        .into_bytes()
    }

    fn branch_of(m: &[u8]) -> Branch {
        let mut idx = HeaderIndex::default();
        let msg = parse(m, &mut idx).unwrap();
        stateless(&identity(), &msg, &msg.top_via().unwrap())
    }

    #[test]
    fn invite_cancel_and_ack_share_a_branch() {
        let invite = branch_of(&req("INVITE", "INVITE", ""));
        assert_eq!(invite, branch_of(&req("INVITE", "INVITE", "")));
        assert_eq!(invite, branch_of(&req("CANCEL", "CANCEL", "")));
        assert_eq!(invite, branch_of(&req("ACK", "ACK", ";tag=t")));
        let other = req("INVITE", "INVITE", "");
        let other = String::from_utf8(other)
            .unwrap()
            .replace("z9hG4bKclient1", "z9hG4bKclient2");
        assert_ne!(invite, branch_of(other.as_bytes()));
    }

    #[test]
    fn detects_a_loop_but_not_a_spiral() {
        let id = identity();
        let first = req("INVITE", "INVITE", "");
        let b = branch_of(&first);
        let looped = String::from_utf8(first.clone()).unwrap().replace(
            "Via: SIP/2.0/UDP 10.0.0.1",
            &format!(
                "Via: SIP/2.0/UDP 127.0.0.1:5070;branch={}\r\nVia: SIP/2.0/UDP 10.0.0.1",
                String::from_utf8_lossy(b.as_bytes())
            ),
        );
        let mut idx = HeaderIndex::default();
        let msg = parse(looped.as_bytes(), &mut idx).unwrap();
        assert!(is_loop(&id, &msg));
        // The same loop back through another proxy: found under its Via.
        let via_other = looped.replacen(
            "Via: ",
            "Via: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKother\r\nVia: ",
            1,
        );
        let mut idx = HeaderIndex::default();
        let msg = parse(via_other.as_bytes(), &mut idx).unwrap();
        assert_eq!(msg.values(crate::sip::HeaderName::Via).count(), 3);
        assert!(is_loop(&id, &msg));
        // Retargeted (a spiral): a new Request-URI, so not a loop.
        let spiral = looped.replace("INVITE sip:bob@192.0.2.9", "INVITE sip:bob@192.0.2.10");
        let mut idx = HeaderIndex::default();
        let msg = parse(spiral.as_bytes(), &mut idx).unwrap();
        assert!(!is_loop(&id, &msg));
        let mut idx = HeaderIndex::default();
        let msg = parse(&first, &mut idx).unwrap();
        assert!(!is_loop(&id, &msg));
    }
}
