//! Transports as the sans-IO core sees them: datagrams in, [`Transmit`]s out.
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

use core::net::SocketAddr;

use crate::sip::EmitError;

/// Which of a shard's sockets a datagram came in on or goes out of: an
/// index into the shard's socket table (see [`crate::proxy::Identity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct SocketId(pub u8);

/// One datagram to send, its bytes in the [`Outbox`] arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where it goes.
    pub dest: SocketAddr,
    /// Which local socket sends it.
    pub socket: SocketId,
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
        dest: SocketAddr,
        socket: SocketId,
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
            dest,
            socket,
            offset: self.used as u32,
            len: len as u32,
        });
        self.used += len;
        Ok(())
    }

    /// Queues a copy of `bytes`.
    pub fn push(
        &mut self,
        dest: SocketAddr,
        socket: SocketId,
        bytes: &[u8],
    ) -> Result<(), PushError> {
        self.push_with(dest, socket, |out| {
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
        o.push(a, SocketId(0), b"hello").unwrap();
        o.push(a, SocketId(1), b"world").unwrap();
        assert!(!o.has_room());
        assert_eq!(
            o.push(a, SocketId(0), b"x"),
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
