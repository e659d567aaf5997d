//! A binding (RFC 3261 §10.2, §10.3): an AoR's contact address with what the
//! registrar and the proxy need to know about it, in one compact heap block.
//!
//! ```text
//! Binding(Box<[u8]>):
//!  0 expires u64 (unix µs) │ 8 id u64 │ 16 reg-id u32 │ 20 flow u32 │ 24 q u16 │ 26 port u16
//! 28 received ip [16]      │ 44 socket u8 │ 45 family u8 │ 46 len(contact) 48 len(path) 50 len(instance) u16
//! ── the first 52 bytes are the routing part that replicas keep (`ROUTE_FIXED`) ──
//! 52 cseq u32 │ 56 len(aor) 58 len(call-id) 60 len(user-agent) u16
//! 62 contact │ path │ instance │ aor │ call-id │ user-agent
//! ```
//!
//! Why one block and not a struct of `String`s: a typical binding is ~200
//! bytes of text; six `String`s would add 144 bytes of headers and six
//! allocations. The block is also the binding's wire and disk form (the feed
//! and the log store write it as is), so encoding costs a copy.
//!
//! Every integer is little-endian. [`Binding::from_bytes`] checks the lengths,
//! so accessors never fail; none panics.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::transport::SocketId;

/// Size of the routing part of a binding (what a replica keeps per binding
/// besides its strings).
pub(crate) const ROUTE_FIXED: usize = 52;
/// Size of the fixed part of a full binding.
const FULL_FIXED: usize = 62;
/// Longest string field (bytes): SIP messages are below 64 KiB.
pub const MAX_FIELD: usize = u16::MAX as usize;

mod at {
    pub(super) const EXPIRES: usize = 0;
    pub(super) const ID: usize = 8;
    pub(super) const REG_ID: usize = 16;
    pub(super) const FLOW: usize = 20;
    pub(super) const Q: usize = 24;
    pub(super) const PORT: usize = 26;
    pub(super) const IP: usize = 28;
    pub(super) const SOCKET: usize = 44;
    pub(super) const FAMILY: usize = 45;
    pub(super) const CONTACT_LEN: usize = 46;
    pub(super) const PATH_LEN: usize = 48;
    pub(super) const INSTANCE_LEN: usize = 50;
    pub(super) const CSEQ: usize = 52;
    pub(super) const AOR_LEN: usize = 56;
    pub(super) const CALL_ID_LEN: usize = 58;
    pub(super) const UA_LEN: usize = 60;
}

/// Why a binding could not be built or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// A string field is longer than [`MAX_FIELD`].
    #[error("binding field too long")]
    TooLong,
    /// The encoded block is shorter than its lengths say, or has bytes left over.
    #[error("binding block malformed")]
    Malformed,
    /// A q value above 1000 (1.0).
    #[error("q value above 1.0")]
    BadQ,
}

/// The fields of a binding, borrowed, to build a [`Binding`] from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingParts<'a> {
    /// Identity of the binding within its partition (the registrar assigns it).
    pub id: u64,
    /// The normalised AoR key (`user@domain`, see [`super::AorKey`]).
    pub aor: &'a [u8],
    /// The contact URI as registered (no angle brackets, no header params).
    pub contact: &'a [u8],
    /// Absolute expiry, unix time in µs.
    pub expires: u64,
    /// q in thousandths (1000 = 1.0).
    pub q: u16,
    /// Call-ID of the REGISTER that last wrote the binding.
    pub call_id: &'a [u8],
    /// Its CSeq number.
    pub cseq: u32,
    /// Source address of that REGISTER (to reach a UA behind NAT).
    pub received: Option<SocketAddr>,
    /// The local socket it arrived on.
    pub socket: SocketId,
    /// A connection/flow id for connection-oriented transports (0: none).
    pub flow: u32,
    /// The Path values (RFC 3327) as one comma-separated list, in order.
    pub path: &'a [u8],
    /// `+sip.instance` (RFC 5626), unquoted (`<urn:uuid:…>`); empty: none.
    pub instance: &'a [u8],
    /// `reg-id` (RFC 5626).
    pub reg_id: Option<u32>,
    /// The User-Agent header value; empty: none.
    pub user_agent: &'a [u8],
}

/// A binding: one contact of an AoR. Immutable; a refresh builds a new one
/// (and `clone_from` copies it into the old one's block when their sizes
/// agree, as for a refresh of the same contact: no allocation).
#[derive(PartialEq, Eq, Hash)]
pub struct Binding {
    // INVARIANT: a valid encoding (checked by `new` / `from_bytes`): at least
    // FULL_FIXED bytes, and exactly FULL_FIXED + the sum of the six lengths.
    bytes: Box<[u8]>,
}

impl Clone for Binding {
    fn clone(&self) -> Self {
        Self {
            bytes: self.bytes.clone(),
        }
    }

    /// Reuses this binding's block when `source`'s is the same size.
    fn clone_from(&mut self, source: &Self) {
        self.bytes.clone_from(&source.bytes);
    }
}

#[inline]
pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| <[u8; 2]>::try_from(s).ok())
        .map_or(0, u16::from_le_bytes)
}

#[inline]
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map_or(0, u32::from_le_bytes)
}

#[inline]
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map_or(0, u64::from_le_bytes)
}

fn len16(s: &[u8]) -> Result<u16, BindingError> {
    u16::try_from(s.len()).map_err(|_| BindingError::TooLong)
}

impl Binding {
    /// Encodes `p`.
    pub fn new(p: &BindingParts<'_>) -> Result<Self, BindingError> {
        if p.q > 1000 {
            return Err(BindingError::BadQ);
        }
        let lens = [
            len16(p.contact)?,
            len16(p.path)?,
            len16(p.instance)?,
            len16(p.aor)?,
            len16(p.call_id)?,
            len16(p.user_agent)?,
        ];
        let total = FULL_FIXED + lens.iter().map(|&l| usize::from(l)).sum::<usize>();
        let mut b = Vec::with_capacity(total);
        b.extend_from_slice(&p.expires.to_le_bytes());
        b.extend_from_slice(&p.id.to_le_bytes());
        b.extend_from_slice(&p.reg_id.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&p.flow.to_le_bytes());
        b.extend_from_slice(&p.q.to_le_bytes());
        let (ip, port, family) = encode_addr(p.received);
        b.extend_from_slice(&port.to_le_bytes());
        b.extend_from_slice(&ip);
        b.push(p.socket.0);
        b.push(family);
        for l in lens.iter().take(3) {
            b.extend_from_slice(&l.to_le_bytes());
        }
        b.extend_from_slice(&p.cseq.to_le_bytes());
        for l in lens.iter().skip(3) {
            b.extend_from_slice(&l.to_le_bytes());
        }
        for s in [
            p.contact,
            p.path,
            p.instance,
            p.aor,
            p.call_id,
            p.user_agent,
        ] {
            b.extend_from_slice(s);
        }
        debug_assert_eq!(b.len(), total);
        Ok(Self {
            bytes: b.into_boxed_slice(),
        })
    }

    /// Decodes a block written by [`Binding::as_bytes`], checking its lengths.
    pub fn from_bytes(b: &[u8]) -> Result<Self, BindingError> {
        if b.len() < FULL_FIXED {
            return Err(BindingError::Malformed);
        }
        let strings: usize = [
            at::CONTACT_LEN,
            at::PATH_LEN,
            at::INSTANCE_LEN,
            at::AOR_LEN,
            at::CALL_ID_LEN,
            at::UA_LEN,
        ]
        .iter()
        .map(|&o| usize::from(u16_at(b, o)))
        .sum();
        if b.len() != FULL_FIXED + strings {
            return Err(BindingError::Malformed);
        }
        if u16_at(b, at::Q) > 1000 || !matches!(b.get(at::FAMILY), Some(0 | 4 | 6)) {
            return Err(BindingError::Malformed);
        }
        Ok(Self { bytes: b.into() })
    }

    /// The encoded block (the feed and disk form).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Heap bytes this binding holds.
    pub fn heap_size(&self) -> usize {
        self.bytes.len()
    }

    /// A copy with another id and expiry (everything else kept).
    pub fn with_id_expires(&self, id: u64, expires: u64) -> Self {
        let mut bytes = self.bytes.clone();
        if let Some(s) = bytes.get_mut(at::ID..at::ID + 8) {
            s.copy_from_slice(&id.to_le_bytes());
        }
        if let Some(s) = bytes.get_mut(at::EXPIRES..at::EXPIRES + 8) {
            s.copy_from_slice(&expires.to_le_bytes());
        }
        Self { bytes }
    }

    /// A copy for another node: its connection (flow) and local socket mean
    /// nothing there, so they are cleared (the node sends from its first
    /// socket to the contact or its received address).
    pub fn for_another_node(&self) -> Self {
        let mut bytes = self.bytes.clone();
        if let Some(s) = bytes.get_mut(at::FLOW..at::FLOW + 4) {
            s.copy_from_slice(&0u32.to_le_bytes());
        }
        if let Some(s) = bytes.get_mut(at::SOCKET) {
            *s = 0;
        }
        Self { bytes }
    }

    fn string(&self, index: usize) -> &[u8] {
        let lens = [
            at::CONTACT_LEN,
            at::PATH_LEN,
            at::INSTANCE_LEN,
            at::AOR_LEN,
            at::CALL_ID_LEN,
            at::UA_LEN,
        ];
        let mut start = FULL_FIXED;
        for (i, &o) in lens.iter().enumerate() {
            let len = usize::from(u16_at(&self.bytes, o));
            if i == index {
                return self.bytes.get(start..start + len).unwrap_or_default();
            }
            start += len;
        }
        &[]
    }

    /// The routing view of this binding.
    pub fn target(&self) -> Target<'_> {
        let fixed = self.bytes.get(..ROUTE_FIXED).unwrap_or_default();
        let n = usize::from(u16_at(fixed, at::CONTACT_LEN))
            + usize::from(u16_at(fixed, at::PATH_LEN))
            + usize::from(u16_at(fixed, at::INSTANCE_LEN));
        Target {
            fixed,
            strings: self
                .bytes
                .get(FULL_FIXED..FULL_FIXED + n)
                .unwrap_or_default(),
        }
    }

    /// The routing part (fixed bytes and the contact/path/instance strings),
    /// as a replica stores it.
    pub(crate) fn route_parts(&self) -> (&[u8], &[u8]) {
        let t = self.target();
        (t.fixed, t.strings)
    }

    /// Identity of the binding within its partition.
    pub fn id(&self) -> u64 {
        u64_at(&self.bytes, at::ID)
    }

    /// The AoR key.
    pub fn aor(&self) -> &[u8] {
        self.string(3)
    }

    /// The contact URI.
    pub fn contact(&self) -> &[u8] {
        self.string(0)
    }

    /// Absolute expiry, unix µs.
    pub fn expires(&self) -> u64 {
        u64_at(&self.bytes, at::EXPIRES)
    }

    /// q in thousandths.
    pub fn q(&self) -> u16 {
        u16_at(&self.bytes, at::Q)
    }

    /// Call-ID of the REGISTER that last wrote it.
    pub fn call_id(&self) -> &[u8] {
        self.string(4)
    }

    /// CSeq number of that REGISTER.
    pub fn cseq(&self) -> u32 {
        u32_at(&self.bytes, at::CSEQ)
    }

    /// Source address of that REGISTER.
    pub fn received(&self) -> Option<SocketAddr> {
        self.target().received()
    }

    /// Local socket it arrived on.
    pub fn socket(&self) -> SocketId {
        self.target().socket()
    }

    /// Connection/flow id (0: none).
    pub fn flow(&self) -> u32 {
        u32_at(&self.bytes, at::FLOW)
    }

    /// Path values, comma-separated.
    pub fn path(&self) -> &[u8] {
        self.string(1)
    }

    /// `+sip.instance`, unquoted; empty when none.
    pub fn instance(&self) -> &[u8] {
        self.string(2)
    }

    /// `reg-id`.
    pub fn reg_id(&self) -> Option<u32> {
        Some(u32_at(&self.bytes, at::REG_ID)).filter(|&r| r != 0)
    }

    /// User-Agent; empty when none.
    pub fn user_agent(&self) -> &[u8] {
        self.string(5)
    }
}

impl fmt::Debug for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        f.debug_struct("Binding")
            .field("id", &self.id())
            .field("aor", &s(self.aor()))
            .field("contact", &s(self.contact()))
            .field("expires", &self.expires())
            .field("q", &self.q())
            .field("call_id", &s(self.call_id()))
            .field("cseq", &self.cseq())
            .field("received", &self.received())
            .field("socket", &self.socket())
            .field("path", &s(self.path()))
            .field("instance", &s(self.instance()))
            .field("reg_id", &self.reg_id())
            .finish()
    }
}

fn encode_addr(a: Option<SocketAddr>) -> ([u8; 16], u16, u8) {
    match a {
        None => ([0; 16], 0, 0),
        Some(SocketAddr::V4(v4)) => {
            let mut ip = [0u8; 16];
            if let Some(d) = ip.get_mut(..4) {
                d.copy_from_slice(&v4.ip().octets());
            }
            (ip, v4.port(), 4)
        }
        Some(SocketAddr::V6(v6)) => (v6.ip().octets(), v6.port(), 6),
    }
}

/// What a lookup returns for one live binding: where to send a request for
/// the AoR. A view into a replica block (or a [`Binding`]); `Copy`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    // INVARIANT: fixed.len() == ROUTE_FIXED; strings holds contact, path and
    // instance back to back, with the lengths the fixed part gives.
    fixed: &'a [u8],
    strings: &'a [u8],
}

impl<'a> Target<'a> {
    pub(crate) fn from_parts(fixed: &'a [u8], strings: &'a [u8]) -> Self {
        Self { fixed, strings }
    }

    pub(crate) fn fixed(&self) -> &'a [u8] {
        self.fixed
    }

    pub(crate) fn strings(&self) -> &'a [u8] {
        self.strings
    }

    /// Identity of the binding within its partition.
    pub fn id(&self) -> u64 {
        u64_at(self.fixed, at::ID)
    }

    /// Absolute expiry, unix µs.
    pub fn expires(&self) -> u64 {
        u64_at(self.fixed, at::EXPIRES)
    }

    /// Seconds left at `wall` (rounded up), 0 when expired.
    pub fn expires_in(&self, wall: u64) -> u64 {
        self.expires().saturating_sub(wall).div_ceil(1_000_000)
    }

    /// q in thousandths.
    pub fn q(&self) -> u16 {
        u16_at(self.fixed, at::Q)
    }

    /// The contact URI (the Request-URI of a request sent to this binding).
    pub fn contact(&self) -> &'a [u8] {
        let n = usize::from(u16_at(self.fixed, at::CONTACT_LEN));
        self.strings.get(..n).unwrap_or_default()
    }

    /// Path values (RFC 3327), comma-separated: they become the Route set.
    pub fn path(&self) -> &'a [u8] {
        let c = usize::from(u16_at(self.fixed, at::CONTACT_LEN));
        let n = usize::from(u16_at(self.fixed, at::PATH_LEN));
        self.strings.get(c..c + n).unwrap_or_default()
    }

    /// `+sip.instance`, unquoted; empty when none.
    pub fn instance(&self) -> &'a [u8] {
        let c = usize::from(u16_at(self.fixed, at::CONTACT_LEN))
            + usize::from(u16_at(self.fixed, at::PATH_LEN));
        let n = usize::from(u16_at(self.fixed, at::INSTANCE_LEN));
        self.strings.get(c..c + n).unwrap_or_default()
    }

    /// `reg-id` (RFC 5626).
    pub fn reg_id(&self) -> Option<u32> {
        Some(u32_at(self.fixed, at::REG_ID)).filter(|&r| r != 0)
    }

    /// Connection/flow id (0: none).
    pub fn flow(&self) -> u32 {
        u32_at(self.fixed, at::FLOW)
    }

    /// Source address of the REGISTER: send here to reach a UA behind NAT.
    pub fn received(&self) -> Option<SocketAddr> {
        let port = u16_at(self.fixed, at::PORT);
        let ip = self
            .fixed
            .get(at::IP..at::IP + 16)
            .and_then(|s| <[u8; 16]>::try_from(s).ok())?;
        match self.fixed.get(at::FAMILY) {
            Some(4) => {
                let [a, b, c, d, ..] = ip;
                Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port))
            }
            Some(6) => Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
            _ => None,
        }
    }

    /// The local socket the REGISTER arrived on.
    pub fn socket(&self) -> SocketId {
        SocketId(self.fixed.get(at::SOCKET).copied().unwrap_or(0))
    }
}

impl fmt::Debug for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        f.debug_struct("Target")
            .field("id", &self.id())
            .field("contact", &s(self.contact()))
            .field("expires", &self.expires())
            .field("q", &self.q())
            .field("received", &self.received())
            .field("socket", &self.socket())
            .field("path", &s(self.path()))
            .field("instance", &s(self.instance()))
            .field("reg_id", &self.reg_id())
            .finish()
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// A typical binding: `sip:<user>@192.0.2.x:5060;transport=udp`, an
    /// instance, a Call-ID and a User-Agent.
    pub(crate) fn binding(aor: &str, id: u64, expires: u64) -> Binding {
        let contact = format!(
            "sip:{}@192.0.2.7:5060;transport=udp",
            aor.split('@').next().unwrap_or("")
        );
        Binding::new(&BindingParts {
            id,
            aor: aor.as_bytes(),
            contact: contact.as_bytes(),
            expires,
            q: 1000,
            call_id: b"a84b4c76e66710@pc33.atlanta.example.com",
            cseq: 1,
            received: Some("198.51.100.4:40123".parse().unwrap()),
            socket: SocketId(0),
            flow: 0,
            path: b"",
            instance: b"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>",
            reg_id: Some(1),
            user_agent: b"Linphone/5.2",
        })
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_from_reuses_a_block_of_the_same_size() {
        use super::testutil::binding;
        let mut old = binding("alice@example.com", 1, 100);
        let at = old.as_bytes().as_ptr();
        // A refresh: same strings, new expiry.
        let refresh = binding("alice@example.com", 1, 900);
        old.clone_from(&refresh);
        assert_eq!(old, refresh);
        assert_eq!(old.as_bytes().as_ptr(), at, "the block was reallocated");
        // Another size: a new block, equal to the source.
        let longer = binding("alice.smith@example.com", 1, 900);
        old.clone_from(&longer);
        assert_eq!(old, longer);
    }

    #[test]
    fn round_trips_every_field() {
        let p = BindingParts {
            id: 77,
            aor: b"alice@example.com",
            contact: b"sip:alice@[2001:db8::1]:5062;transport=tcp",
            expires: 1_700_000_000_000_000,
            q: 500,
            call_id: b"cid-1",
            cseq: 42,
            received: Some("[2001:db8::9]:40000".parse().unwrap()),
            socket: SocketId(3),
            flow: 9,
            path: b"<sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
            instance: b"<urn:uuid:1>",
            reg_id: Some(2),
            user_agent: b"UA/1",
        };
        let b = Binding::new(&p).unwrap();
        assert_eq!(b.id(), 77);
        assert_eq!(b.aor(), p.aor);
        assert_eq!(b.contact(), p.contact);
        assert_eq!(b.expires(), p.expires);
        assert_eq!(b.q(), 500);
        assert_eq!(b.call_id(), b"cid-1");
        assert_eq!(b.cseq(), 42);
        assert_eq!(b.received(), p.received);
        assert_eq!(b.socket(), SocketId(3));
        assert_eq!(b.flow(), 9);
        assert_eq!(b.path(), p.path);
        assert_eq!(b.instance(), p.instance);
        assert_eq!(b.reg_id(), Some(2));
        assert_eq!(b.user_agent(), b"UA/1");
        let t = b.target();
        assert_eq!(t.contact(), p.contact);
        assert_eq!(t.path(), p.path);
        assert_eq!(t.instance(), p.instance);
        assert_eq!(t.received(), p.received);
        assert_eq!(t.expires_in(p.expires - 1_500_000), 2);
        assert_eq!(Binding::from_bytes(b.as_bytes()), Ok(b.clone()));
        let v4 = Binding::new(&BindingParts {
            received: Some("192.0.2.1:5060".parse().unwrap()),
            reg_id: None,
            ..p
        })
        .unwrap();
        assert_eq!(v4.received(), Some("192.0.2.1:5060".parse().unwrap()));
        assert_eq!(v4.reg_id(), None);
        let none = Binding::new(&BindingParts {
            received: None,
            ..p
        })
        .unwrap();
        assert_eq!(none.received(), None);
        let moved = b.with_id_expires(5, 6);
        assert_eq!(
            (moved.id(), moved.expires(), moved.contact()),
            (5, 6, p.contact)
        );
    }

    #[test]
    fn rejects_malformed_blocks() {
        let b = testutil::binding("bob@example.com", 1, 2);
        let bytes = b.as_bytes();
        assert_eq!(
            Binding::from_bytes(&bytes[..10]),
            Err(BindingError::Malformed)
        );
        assert_eq!(
            Binding::from_bytes(&bytes[..bytes.len() - 1]),
            Err(BindingError::Malformed)
        );
        let mut long = bytes.to_vec();
        long.push(0);
        assert_eq!(Binding::from_bytes(&long), Err(BindingError::Malformed));
        let mut bad_q = bytes.to_vec();
        bad_q[at::Q] = 0xff;
        bad_q[at::Q + 1] = 0xff;
        assert_eq!(Binding::from_bytes(&bad_q), Err(BindingError::Malformed));
        let big = vec![b'x'; 70_000];
        let p = BindingParts {
            id: 1,
            aor: b"a@b",
            contact: &big,
            expires: 0,
            q: 0,
            call_id: b"",
            cseq: 0,
            received: None,
            socket: SocketId(0),
            flow: 0,
            path: b"",
            instance: b"",
            reg_id: None,
            user_agent: b"",
        };
        assert_eq!(Binding::new(&p), Err(BindingError::TooLong));
        assert_eq!(
            Binding::new(&BindingParts {
                contact: b"sip:x",
                q: 1001,
                ..p
            }),
            Err(BindingError::BadQ)
        );
    }
}
