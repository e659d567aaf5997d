//! Transports as the sans-IO core sees them: messages from a [`Peer`] in,
//! [`Transmit`]s addressed to a [`Peer`] out.
//!
//! A [`Peer`] names where a message came from and where a reply goes: the
//! [`Transport`], the remote address, the local listener ([`SocketId`]) and,
//! for stream transports, the connection ([`FlowId`], RFC 5626 flows). UDP,
//! TCP, TLS, WS and WSS differ only below the core: the shard's connection
//! layer ([`conn`]) turns stream bytes into messages and the core's
//! transmits on a stream peer into the bytes of that connection, with the
//! sans-IO codecs [`stream`] (framing), [`tls`] (rustls) and [`ws`] (RFC 7118).
//!
//! The core writes every message it sends into an [`Outbox`] the driver owns:
//! one fixed byte arena and a fixed list of (destination, socket, span). The
//! driver hands the whole batch to the kernel in one submit (io_uring) or one
//! `sendmmsg` (mio), then clears it.
//!
//! Why the core writes into the driver's arena instead of queueing messages
//! for a `poll_transmit` call (quinn's shape): a relay produces its output
//! while the input datagram is still borrowed; writing straight into the
//! send arena saves a copy of every forwarded message.
//!
//! Contract: no allocation after [`Outbox::new`]; a full outbox refuses
//! more with [`OutboxFull`] and the driver flushes before handing in the
//! next datagram (it checks [`Outbox::has_room`]).

pub mod conn;
pub mod frame;
pub mod stream;
pub mod stun;
pub mod tls;
pub mod ws;

use core::net::SocketAddr;

use crate::sip::EmitError;

/// A SIP transport (RFC 3261 §18, RFC 7118).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// UDP.
    #[default]
    Udp,
    /// WebSocket (RFC 7118).
    Ws,
    /// Secure WebSocket.
    Wss,
}

impl Transport {
    /// Every transport, in [`Transport::index`] order.
    pub const ALL: [Self; 5] = [Self::Tcp, Self::Tls, Self::Udp, Self::Ws, Self::Wss];

    /// A dense index, `0..5`.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Reads `udp`, `tcp`, `tls`, `ws`, `wss` (case-insensitive).
    pub fn from_token(t: &str) -> Option<Self> {
        Self::from_bytes(t.as_bytes())
    }

    /// Reads a transport token or `transport=` value (case-insensitive).
    pub fn from_bytes(t: &[u8]) -> Option<Self> {
        Some(match t {
            _ if t.eq_ignore_ascii_case(b"tcp") => Self::Tcp,
            _ if t.eq_ignore_ascii_case(b"tls") => Self::Tls,
            _ if t.eq_ignore_ascii_case(b"udp") => Self::Udp,
            _ if t.eq_ignore_ascii_case(b"ws") => Self::Ws,
            _ if t.eq_ignore_ascii_case(b"wss") => Self::Wss,
            _ => return None,
        })
    }

    /// The Via `sent-protocol` transport token (`UDP`, `TCP`, `TLS`, `WS`, `WSS`).
    pub const fn via_token(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
            Self::Udp => "UDP",
            Self::Ws => "WS",
            Self::Wss => "WSS",
        }
    }

    /// The `transport=` URI parameter value (lower case).
    pub const fn param(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Udp => "udp",
            Self::Ws => "ws",
            Self::Wss => "wss",
        }
    }

    /// True for connection-oriented transports (everything but UDP).
    pub const fn is_stream(self) -> bool {
        !matches!(self, Self::Udp)
    }

    /// True for transports secured by TLS.
    pub const fn is_secure(self) -> bool {
        matches!(self, Self::Tls | Self::Wss)
    }

    /// True for WebSocket transports.
    pub const fn is_websocket(self) -> bool {
        matches!(self, Self::Ws | Self::Wss)
    }

    /// A bit per transport, for sets of transports.
    pub(crate) const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Which of a shard's listeners a message came in on or goes out of: an
/// index into the shard's socket table (see [`crate::proxy::Identity`]),
/// the same on every shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct SocketId(pub u8);

/// A connection (RFC 5626 flow) of a stream transport; [`FlowId::NONE`]
/// for UDP and for "any connection to the peer's address".
///
/// ```text
///  31 .. 26 shard │ 25 .. 8 slot │ 7 .. 0 generation (never 0 in a live id)
/// ```
/// The shard that owns the connection is in the id, so any shard can hand a
/// send on it to its owner over the mesh; the generation keeps a reused slot
/// from answering for a closed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct FlowId(pub u32);

impl FlowId {
    /// No connection.
    pub const NONE: Self = Self(0);
    /// Most shards a flow id can name.
    pub const MAX_SHARDS: u16 = 64;
    /// Most connection slots per shard.
    pub const MAX_SLOTS: u32 = 1 << 18;

    /// The id of slot `slot` (generation `gen`, 1..=255) of shard `shard`.
    pub const fn new(shard: u16, slot: u32, gen: u8) -> Self {
        Self(((shard as u32 & 0x3f) << 26) | ((slot & 0x3_ffff) << 8) | gen as u32)
    }

    /// True for [`FlowId::NONE`].
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }

    /// The shard that owns the connection.
    pub const fn shard(self) -> u16 {
        (self.0 >> 26) as u16
    }

    /// The slot in the owner's connection table.
    pub const fn slot(self) -> u32 {
        (self.0 >> 8) & 0x3_ffff
    }

    /// The generation of the slot.
    pub const fn generation(self) -> u8 {
        (self.0 & 0xff) as u8
    }
}

/// Where a message came from, or where one goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The transport.
    pub transport: Transport,
    /// The remote address.
    pub remote: SocketAddr,
    /// The local listener (for UDP: the socket that sends).
    pub local: SocketId,
    /// The connection, for stream transports; NONE: any connection to
    /// `remote` over `transport`, opened if there is none.
    pub flow: FlowId,
}

impl Peer {
    /// A UDP peer at `remote`, sent to from socket `local`.
    pub const fn udp(remote: SocketAddr, local: SocketId) -> Self {
        Self {
            transport: Transport::Udp,
            remote,
            local,
            flow: FlowId::NONE,
        }
    }
}

/// One message to send, its bytes in the [`Outbox`] arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where it goes.
    pub peer: Peer,
    /// Offset of the bytes in the arena.
    pub offset: u32,
    /// Length of the bytes.
    pub len: u32,
}

/// The outbox is full: flush it before queueing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("outbox full")]
pub struct OutboxFull;

/// A batch of datagrams to send, in a fixed arena the caller owns.
#[derive(Debug)]
pub struct Outbox {
    // INVARIANT: used <= arena.len(); every Transmit's span lies in [0, used).
    arena: Box<[u8]>,
    used: usize,
    // INVARIANT: items.len() <= max_items == items.capacity() at construction.
    items: Vec<Transmit>,
    max_items: usize,
}

/// The largest datagram the core writes (a UDP payload limit).
pub const MAX_DATAGRAM: usize = 65_535;

impl Outbox {
    /// An outbox of `arena_bytes` (at least one maximal datagram) and `max_items` datagrams.
    pub fn new(arena_bytes: usize, max_items: usize) -> Self {
        Self {
            arena: vec![0u8; arena_bytes.max(MAX_DATAGRAM)].into_boxed_slice(),
            used: 0,
            items: Vec::with_capacity(max_items.max(1)),
            max_items: max_items.max(1),
        }
    }

    /// True when one more maximal datagram fits.
    pub fn has_room(&self) -> bool {
        self.items.len() < self.max_items && self.arena.len() - self.used >= MAX_DATAGRAM
    }

    /// Queues a datagram written by `write` into the free part of the arena
    /// (at most [`MAX_DATAGRAM`] bytes); `write` returns the length it wrote.
    pub fn push_with(
        &mut self,
        peer: Peer,
        write: impl FnOnce(&mut [u8]) -> Result<usize, EmitError>,
    ) -> Result<(), PushError> {
        if self.items.len() >= self.max_items {
            return Err(PushError::Full(OutboxFull));
        }
        let end = (self.used + MAX_DATAGRAM).min(self.arena.len());
        let space = self
            .arena
            .get_mut(self.used..end)
            .ok_or(PushError::Full(OutboxFull))?;
        let len = write(space).map_err(PushError::Emit)?;
        if len > space_len(self.used, end) {
            return Err(PushError::Emit(EmitError::BufferFull));
        }
        self.items.push(Transmit {
            peer,
            offset: self.used as u32,
            len: len as u32,
        });
        self.used += len;
        Ok(())
    }

    /// Queues a copy of `bytes`.
    pub fn push(&mut self, peer: Peer, bytes: &[u8]) -> Result<(), PushError> {
        self.push_with(peer, |out| {
            let dst = out.get_mut(..bytes.len()).ok_or(EmitError::BufferFull)?;
            dst.copy_from_slice(bytes);
            Ok(bytes.len())
        })
    }

    /// The queued datagrams.
    pub fn items(&self) -> &[Transmit] {
        &self.items
    }

    /// The bytes of a queued datagram.
    pub fn bytes(&self, t: &Transmit) -> &[u8] {
        self.arena
            .get(t.offset as usize..t.offset as usize + t.len as usize)
            .unwrap_or_default()
    }

    /// The whole arena (drivers point send buffers into it).
    pub fn arena(&self) -> &[u8] {
        &self.arena
    }

    /// Number of queued datagrams.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Drops the first `n` queued datagrams (sent), keeping the rest in order.
    pub fn consume(&mut self, n: usize) {
        if n >= self.items.len() {
            self.clear();
        } else {
            self.items.drain(..n);
        }
    }

    /// Forgets everything queued.
    pub fn clear(&mut self) {
        self.items.clear();
        self.used = 0;
    }
}

fn space_len(used: usize, end: usize) -> usize {
    end - used
}

/// Why a datagram could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The outbox has no room; flush first.
    #[error(transparent)]
    Full(OutboxFull),
    /// The message did not fit in one datagram, or could not be written.
    #[error(transparent)]
    Emit(EmitError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_and_refuses_when_full() {
        let mut o = Outbox::new(MAX_DATAGRAM * 2, 2);
        let a: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        assert!(o.has_room());
        o.push(Peer::udp(a, SocketId(0)), b"hello").unwrap();
        o.push(Peer::udp(a, SocketId(1)), b"world").unwrap();
        assert!(!o.has_room());
        assert_eq!(
            o.push(Peer::udp(a, SocketId(0)), b"x"),
            Err(PushError::Full(OutboxFull))
        );
        let items: Vec<&[u8]> = o.items().iter().map(|t| o.bytes(t)).collect();
        assert_eq!(items, vec![&b"hello"[..], &b"world"[..]]);
        o.consume(1);
        assert_eq!(o.len(), 1);
        assert_eq!(o.bytes(&o.items()[0]), b"world");
        o.clear();
        assert!(o.is_empty() && o.has_room());
    }
}
