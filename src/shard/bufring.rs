//! The provided-buffer ring of the io_uring driver (IORING_REGISTER_PBUF_RING,
//! kernel 5.19+): `count` receive buffers the kernel picks from for every
//! multishot RECVMSG, handed back in a batch once per loop turn.
//!
//! Ownership: a buffer belongs to the kernel while it is in the published
//! part of the ring, to us from the CQE that names it until [`BufRing::recycle`]
//! puts it back. [`BufRing::take`] borrows `&mut self`, so a buffer cannot be
//! recycled while a slice of it is alive.
//!
//! Layout of a received buffer (RECVMSG multishot): a 16-byte
//! `io_uring_recvmsg_out`, then `msg_namelen` bytes of source address, then
//! the payload ([`RECV_OVERHEAD`] bytes before the payload in all).
#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// `struct io_uring_recvmsg_out`: namelen, controllen, payloadlen, flags.
pub const RECVMSG_OUT_LEN: usize = 16;
/// Space reserved for the source address (sockaddr_in6 covers both families).
pub const NAME_LEN: usize = size_of::<libc::sockaddr_in6>();
/// Bytes of every buffer before the payload.
pub const RECV_OVERHEAD: usize = RECVMSG_OUT_LEN + NAME_LEN;
/// A buffer that holds any UDP payload (65,527 bytes over IPv6) after the header.
pub const BUF_SIZE: u32 = (65_535 + RECV_OVERHEAD) as u32;

fn mmap_anon(len: usize) -> io::Result<*mut u8> {
    // SAFETY: a private anonymous mapping involves no existing memory; MAP_FAILED
    // is checked. The result is page-aligned and zeroed, as registration requires.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p.cast())
    }
}

/// The ring of provided buffers and the memory behind them.
pub struct BufRing {
    // INVARIANT: `ring` maps `ring_len` bytes holding `entries` BufRingEntry;
    // `data` maps `entries * buf_size` bytes; both live until Drop, which the
    // driver runs only after cancelling every request and unregistering the ring.
    ring: *mut BufRingEntry,
    ring_len: usize,
    data: *mut u8,
    data_len: usize,
    buf_size: u32,
    entries: u16,
    mask: u16,
    /// Next ring slot we fill; published to the kernel by `commit`.
    tail: u16,
    published: u16,
    /// Buffers handed to us by CQEs and not yet recycled.
    in_user: u32,
}

impl BufRing {
    /// `entries` (a power of two ≤ 32768) buffers of `buf_size` bytes, all
    /// given to the kernel.
    pub fn new(entries: u16, buf_size: u32) -> io::Result<Self> {
        if !entries.is_power_of_two() || entries > 32_768 || (buf_size as usize) <= RECV_OVERHEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad buffer ring geometry",
            ));
        }
        let page = 4096usize;
        let ring_len = (usize::from(entries) * size_of::<BufRingEntry>()).div_ceil(page) * page;
        let data_len = usize::from(entries) * buf_size as usize;
        let ring = mmap_anon(ring_len)?.cast::<BufRingEntry>();
        let data = match mmap_anon(data_len) {
            Ok(d) => d,
            Err(e) => {
                // SAFETY: `ring` was just mapped with `ring_len` bytes and is unused.
                unsafe { libc::munmap(ring.cast(), ring_len) };
                return Err(e);
            }
        };
        let mut br = Self {
            ring,
            ring_len,
            data,
            data_len,
            buf_size,
            entries,
            mask: entries - 1,
            tail: 0,
            published: 0,
            in_user: u32::from(entries),
        };
        for bid in 0..entries {
            br.recycle(bid);
        }
        br.commit();
        Ok(br)
    }

    /// Address of the ring, for registration.
    pub fn ring_addr(&self) -> u64 {
        self.ring as u64
    }

    /// Number of buffers.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// Buffers the kernel can still fill.
    pub fn available(&self) -> u32 {
        u32::from(self.entries) - self.in_user
    }

    /// Bytes `[0, len)` of buffer `bid`, which a CQE has just handed to us;
    /// `None` for an id or length out of range.
    pub fn take(&mut self, bid: u16, len: usize) -> Option<&[u8]> {
        if bid >= self.entries || len > self.buf_size as usize {
            return None;
        }
        self.in_user += 1;
        // SAFETY: in bounds (checked above). The kernel finished writing this
        // buffer before posting the CQE and will not touch it until `recycle`
        // puts it back, which needs `&mut self` and so cannot run while the
        // returned slice lives.
        Some(unsafe {
            core::slice::from_raw_parts(
                self.data.add(usize::from(bid) * self.buf_size as usize),
                len,
            )
        })
    }

    /// Writes buffer `bid` into the next ring slot (visible after [`BufRing::commit`]).
    pub fn recycle(&mut self, bid: u16) {
        if bid >= self.entries {
            return;
        }
        let idx = usize::from(self.tail & self.mask);
        // SAFETY: idx < entries, inside the mapping. The kernel reads only slots
        // in [head, published tail); this slot is outside that window because at
        // most `entries` buffers exist and the ones we hold are not in the ring.
        // The setters write addr/len/bid only, never `resv`, which for entry 0
        // is the shared tail.
        unsafe {
            let e = &mut *self.ring.add(idx);
            e.set_addr(self.data.add(usize::from(bid) * self.buf_size as usize) as u64);
            e.set_len(self.buf_size);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        self.in_user = self.in_user.saturating_sub(1);
    }

    /// Publishes every recycled buffer with one release store of the tail.
    pub fn commit(&mut self) -> bool {
        if self.tail == self.published {
            return false;
        }
        // SAFETY: `BufRingEntry::tail` is the address of entry 0's `resv` (u16,
        // aligned) inside our live mapping; the kernel reads it with an acquire
        // load, and this release store orders the entry writes before it. We
        // are its only writer.
        unsafe {
            let tail = &*(BufRingEntry::tail(self.ring) as *const AtomicU16);
            tail.store(self.tail, Ordering::Release);
        }
        self.published = self.tail;
        true
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both regions were mapped by `new` with these lengths; the driver
        // unregisters the ring and reaps every request before dropping it.
        unsafe {
            libc::munmap(self.data.cast(), self.data_len);
            libc::munmap(self.ring.cast(), self.ring_len);
        }
    }
}
