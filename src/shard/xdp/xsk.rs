//! One AF_XDP socket: its UMEM (frames this shard owns), and the four
//! rings it shares with the kernel (fill, RX, TX, completion).
//!
//! ```text
//! UMEM frames [0, RX_FRAMES)      : fill ─► kernel writes a frame ─► RX ─► driver reads ─► fill again
//! UMEM frames [RX_FRAMES, FRAMES) : free list ─► driver writes ─► TX ─► kernel sends ─► completion ─► free list
//! ```
//!
//! Ownership of a frame passes with its ring entry: the driver touches a
//! frame only between taking it off RX (or the free list) and handing it
//! to fill (or TX). The rings' producer and consumer words are shared with
//! the kernel and accessed with acquire/release atomics, as libxdp does.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

/// Bytes per UMEM frame (a frame holds one Ethernet frame up to 2 KiB less headroom).
pub const FRAME_SIZE: u32 = 2048;
/// Frames for receiving (fill and RX rings hold this many).
pub const RX_FRAMES: u32 = 2048;
/// Frames for sending (TX and completion rings hold this many).
pub const TX_FRAMES: u32 = 2048;
const FRAMES: u32 = RX_FRAMES + TX_FRAMES;

/// A ring mapped from the socket.
struct Ring {
    // INVARIANT: `producer`, `consumer` and `flags` point into the mapping
    // [map, map + map_len), which lives as long as this Ring; `descs` points
    // to `size` entries of the ring's element type inside it.
    map: *mut libc::c_void,
    map_len: usize,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    descs: *mut u8,
    size: u32,
    /// Our copy of the index we advance (producer for fill/TX, consumer for RX/completion).
    cached: u32,
}

impl Ring {
    /// Maps ring `off` of `fd` at page offset `pgoff`, `size` entries of `elem` bytes.
    fn map(
        fd: RawFd,
        off: &libc::xdp_ring_offset,
        pgoff: u64,
        size: u32,
        elem: usize,
        producer_side: bool,
    ) -> io::Result<Self> {
        let map_len = off.desc as usize + size as usize * elem;
        // SAFETY: a fresh shared mapping of the socket's ring at the offset
        // the kernel named; the result is checked before use.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff as libc::off_t,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = map.cast::<u8>();
        // SAFETY: the offsets come from XDP_MMAP_OFFSETS for this very
        // mapping and lie inside map_len; the words are u32-aligned.
        let (producer, consumer, flags, descs) = unsafe {
            (
                base.add(off.producer as usize).cast::<AtomicU32>(),
                base.add(off.consumer as usize).cast::<AtomicU32>(),
                base.add(off.flags as usize).cast::<AtomicU32>(),
                base.add(off.desc as usize),
            )
        };
        let mut r = Self {
            map,
            map_len,
            producer,
            consumer,
            flags,
            descs,
            size,
            cached: 0,
        };
        r.cached = if producer_side {
            r.prod().load(Ordering::Relaxed)
        } else {
            r.cons().load(Ordering::Relaxed)
        };
        Ok(r)
    }

    fn prod(&self) -> &AtomicU32 {
        // SAFETY: INVARIANT of `producer` (inside the live mapping, aligned).
        unsafe { &*self.producer }
    }

    fn cons(&self) -> &AtomicU32 {
        // SAFETY: INVARIANT of `consumer`.
        unsafe { &*self.consumer }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: INVARIANT of `flags`.
        unsafe { &*self.flags }.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    /// Consumer side: entries ready (at most `max`).
    fn ready(&self, max: u32) -> u32 {
        let prod = self.prod().load(Ordering::Acquire);
        prod.wrapping_sub(self.cached).min(max)
    }

    /// Consumer side: gives `n` entries back to the kernel.
    fn release(&mut self, n: u32) {
        self.cached = self.cached.wrapping_add(n);
        self.cons().store(self.cached, Ordering::Release);
    }

    /// Producer side: free entries.
    fn free(&self) -> u32 {
        let cons = self.cons().load(Ordering::Acquire);
        self.size - self.cached.wrapping_sub(cons)
    }

    /// Producer side: publishes `n` entries written after `cached`.
    fn submit(&mut self, n: u32) {
        self.cached = self.cached.wrapping_add(n);
        self.prod().store(self.cached, Ordering::Release);
    }

    fn u64_at(&self, idx: u32) -> *mut u64 {
        // SAFETY: idx & (size - 1) < size entries of 8 bytes (fill and
        // completion rings), inside the mapping by INVARIANT.
        unsafe {
            self.descs
                .add((idx & (self.size - 1)) as usize * 8)
                .cast::<u64>()
        }
    }

    fn desc_at(&self, idx: u32) -> *mut libc::xdp_desc {
        // SAFETY: as u64_at, with 16-byte descriptors (RX and TX rings).
        unsafe {
            self.descs
                .add((idx & (self.size - 1)) as usize * 16)
                .cast::<libc::xdp_desc>()
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe {
            libc::munmap(self.map, self.map_len);
        }
    }
}

/// An AF_XDP socket bound to one queue, with its UMEM.
pub struct Xsk {
    // Rings before the socket and the UMEM: they are unmapped first.
    fill: Ring,
    comp: Ring,
    rx: Ring,
    tx: Ring,
    fd: OwnedFd,
    // INVARIANT: `umem` is FRAMES × FRAME_SIZE bytes, mapped private and
    // anonymous, registered with the socket, alive until drop (after the socket).
    umem: *mut u8,
    umem_len: usize,
    free_tx: Vec<u64>,
    /// RX frames back from the driver that the fill ring had no room for yet.
    refill: Vec<u64>,
    /// TX descriptors written but not yet submitted.
    tx_pending: u32,
    /// Zero-copy mode (else the kernel copies).
    pub zero_copy: bool,
}

// SAFETY: the socket, its mappings and its UMEM are owned by this value
// alone and used by one thread at a time (the shard it is moved into).
unsafe impl Send for Xsk {}

impl std::fmt::Debug for Xsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xsk")
            .field("fd", &self.fd.as_raw_fd())
            .field("zero_copy", &self.zero_copy)
            .finish()
    }
}

fn setsockopt<T>(fd: RawFd, level: i32, opt: i32, v: &T) -> io::Result<()> {
    // SAFETY: `v` is a live T of size_of::<T>() bytes for the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            std::ptr::from_ref(v).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Xsk {
    /// Opens a socket on queue `queue` of interface `ifindex`.
    /// `zero_copy`: require zero-copy (else the kernel copies).
    pub fn open(ifindex: u32, queue: u32, zero_copy: bool) -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem_len = (FRAMES * FRAME_SIZE) as usize;
        // SAFETY: a fresh anonymous mapping; checked below.
        let umem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                umem_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if umem == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let umem = umem.cast::<u8>();
        // From here the UMEM is unmapped on error by this guard.
        struct Guard(*mut u8, usize);
        impl Drop for Guard {
            fn drop(&mut self) {
                // SAFETY: the mapping made above, unmapped once (the guard
                // is forgotten once an Xsk owns it).
                unsafe {
                    libc::munmap(self.0.cast(), self.1);
                }
            }
        }
        let guard = Guard(umem, umem_len);
        let reg = libc::xdp_umem_reg {
            addr: umem as u64,
            len: umem_len as u64,
            chunk_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        let s = fd.as_raw_fd();
        setsockopt(s, libc::SOL_XDP, libc::XDP_UMEM_REG, &reg)?;
        setsockopt(s, libc::SOL_XDP, libc::XDP_UMEM_FILL_RING, &RX_FRAMES)?;
        setsockopt(s, libc::SOL_XDP, libc::XDP_UMEM_COMPLETION_RING, &TX_FRAMES)?;
        setsockopt(s, libc::SOL_XDP, libc::XDP_RX_RING, &RX_FRAMES)?;
        setsockopt(s, libc::SOL_XDP, libc::XDP_TX_RING, &TX_FRAMES)?;
        // SAFETY: xdp_mmap_offsets is plain integers; zero is a valid value.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `off` and `len` are live and sized for the option.
        let r = unsafe {
            libc::getsockopt(
                s,
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                std::ptr::from_mut(&mut off).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let fill = Ring::map(
            s,
            &off.fr,
            libc::XDP_UMEM_PGOFF_FILL_RING,
            RX_FRAMES,
            8,
            true,
        )?;
        let comp = Ring::map(
            s,
            &off.cr,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
            TX_FRAMES,
            8,
            false,
        )?;
        let rx = Ring::map(
            s,
            &off.rx,
            libc::XDP_PGOFF_RX_RING as u64,
            RX_FRAMES,
            16,
            false,
        )?;
        let tx = Ring::map(
            s,
            &off.tx,
            libc::XDP_PGOFF_TX_RING as u64,
            TX_FRAMES,
            16,
            true,
        )?;
        let mut x = Self {
            fill,
            comp,
            rx,
            tx,
            fd,
            umem,
            umem_len,
            free_tx: (RX_FRAMES..FRAMES)
                .map(|f| u64::from(f * FRAME_SIZE))
                .collect(),
            refill: Vec::with_capacity(RX_FRAMES as usize),
            tx_pending: 0,
            zero_copy,
        };
        std::mem::forget(guard);
        // Every RX frame to the kernel before binding.
        for i in 0..RX_FRAMES {
            let at = x.fill.cached.wrapping_add(i);
            // SAFETY: fill ring entry `at` is ours to write (the ring is empty).
            unsafe { x.fill.u64_at(at).write(u64::from(i * FRAME_SIZE)) };
        }
        x.fill.submit(RX_FRAMES);
        let flags = libc::XDP_USE_NEED_WAKEUP
            | if zero_copy {
                libc::XDP_ZEROCOPY
            } else {
                libc::XDP_COPY
            };
        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `sa` is a live sockaddr_xdp of the size passed.
        let r = unsafe {
            libc::bind(
                s,
                std::ptr::from_ref(&sa).cast(),
                size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(x)
    }

    /// The socket's descriptor (for the XSK map and poll).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Busy polling: `usecs` of SO_BUSY_POLL with SO_PREFER_BUSY_POLL and a budget of `budget`.
    pub fn set_busy_poll(&self, usecs: u32, budget: u32) -> io::Result<()> {
        let s = self.fd();
        setsockopt(
            s,
            libc::SOL_SOCKET,
            69, /* SO_PREFER_BUSY_POLL */
            &1i32,
        )?;
        setsockopt(s, libc::SOL_SOCKET, libc::SO_BUSY_POLL, &(usecs as i32))?;
        setsockopt(
            s,
            libc::SOL_SOCKET,
            70, /* SO_BUSY_POLL_BUDGET */
            &(budget as i32),
        )
    }

    /// Received frames waiting (at most `max`): their (UMEM address, length)
    /// into `out`. The caller reads them with [`Xsk::frame`], then gives them
    /// back with [`Xsk::recycle`].
    pub fn take_rx(&mut self, max: u32, out: &mut Vec<(u64, u32)>) {
        let n = self.rx.ready(max);
        for i in 0..n {
            let at = self.rx.cached.wrapping_add(i);
            // SAFETY: entry `at` is between the consumer and the producer the
            // kernel published (acquire), so it is written and ours to read.
            let d = unsafe { self.rx.desc_at(at).read() };
            out.push((d.addr, d.len));
        }
        self.rx.release(n);
    }

    /// The bytes of a received frame (an address from [`Xsk::take_rx`] not yet recycled).
    pub fn frame(&self, addr: u64, len: u32) -> &[u8] {
        let end = addr.saturating_add(u64::from(len));
        if end > self.umem_len as u64 || addr >= u64::from(RX_FRAMES * FRAME_SIZE) {
            return &[];
        }
        // SAFETY: [addr, end) lies inside an RX frame of the UMEM (checked
        // above); the kernel wrote it before publishing the RX entry and will
        // not touch it until the frame is recycled into the fill ring, which
        // needs &mut self while this borrow lives.
        unsafe { std::slice::from_raw_parts(self.umem.add(addr as usize), len as usize) }
    }

    /// Gives received frames back to the kernel (through the fill ring).
    /// The kernel publishes how far it read the fill ring lazily, so the
    /// ring may not have room for all of them yet: those wait in
    /// `refill` for the next call (a frame is never lost).
    pub fn recycle(&mut self, frames: &[(u64, u32)]) {
        let chunk = u64::from(FRAME_SIZE);
        self.refill
            .extend(frames.iter().map(|(addr, _)| addr - addr % chunk));
        let n = (self.refill.len() as u32).min(self.fill.free());
        for i in 0..n {
            let Some(base) = self.refill.pop() else { break };
            let at = self.fill.cached.wrapping_add(i);
            // SAFETY: `at` is a free fill entry (n ≤ free), ours to write.
            unsafe { self.fill.u64_at(at).write(base) };
        }
        self.fill.submit(n);
    }

    /// True when the kernel wants a syscall to refill (need_wakeup on the fill ring).
    pub fn fill_needs_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }

    /// Takes back frames the kernel finished sending.
    pub fn reap(&mut self) {
        let n = self.comp.ready(TX_FRAMES);
        for i in 0..n {
            let at = self.comp.cached.wrapping_add(i);
            // SAFETY: a published completion entry, ours to read.
            let addr = unsafe { self.comp.u64_at(at).read() };
            self.free_tx.push(addr - addr % u64::from(FRAME_SIZE));
        }
        self.comp.release(n);
    }

    /// Writes one frame with `fill` (given a FRAME_SIZE buffer, returns the
    /// length written, or None to give the frame back) and queues it on
    /// TX. Returns false when no frame or TX slot is free, or `fill` declined.
    pub fn send_with(&mut self, fill: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        self.send_from(0, 0, |_, buf| fill(buf))
    }

    /// As [`Xsk::send_with`], with `fill` also given the bytes of the
    /// received frame (`addr`, `len`) from [`Xsk::take_rx`], not yet
    /// recycled: a frame forwarded with one copy.
    pub fn send_from(
        &mut self,
        addr: u64,
        len: u32,
        fill: impl FnOnce(&[u8], &mut [u8]) -> Option<usize>,
    ) -> bool {
        let end = addr.saturating_add(u64::from(len));
        let rx_ok = end <= u64::from(RX_FRAMES * FRAME_SIZE) && end <= self.umem_len as u64;
        let (rx_addr, rx_len) = if rx_ok { (addr, len) } else { (0, 0) };
        if self.free_tx.is_empty() || self.tx.free() <= self.tx_pending {
            self.reap();
            if self.free_tx.is_empty() || self.tx.free() <= self.tx_pending {
                return false;
            }
        }
        let Some(addr) = self.free_tx.pop() else {
            return false;
        };
        // SAFETY: `addr` is a TX frame from the free list: the kernel is done
        // with it (completion) or never had it, and nothing else references it.
        let buf = unsafe {
            std::slice::from_raw_parts_mut(self.umem.add(addr as usize), FRAME_SIZE as usize)
        };
        // SAFETY: [rx_addr, rx_addr + rx_len) lies inside the RX frames of
        // the UMEM (checked above), disjoint from the TX frame `buf`; the
        // kernel does not write an RX frame between publishing it on RX and
        // its recycling into the fill ring, which needs &mut self.
        let rx =
            unsafe { std::slice::from_raw_parts(self.umem.add(rx_addr as usize), rx_len as usize) };
        let Some(len) = fill(rx, buf) else {
            self.free_tx.push(addr);
            return false;
        };
        let at = self.tx.cached.wrapping_add(self.tx_pending);
        // SAFETY: a free TX entry (checked against free() above), ours to write.
        unsafe {
            self.tx.desc_at(at).write(libc::xdp_desc {
                addr,
                len: len as u32,
                options: 0,
            });
        }
        self.tx_pending += 1;
        true
    }

    /// Publishes queued TX frames and wakes the kernel to send them.
    pub fn submit_tx(&mut self) -> io::Result<()> {
        if self.tx_pending > 0 {
            self.tx.submit(self.tx_pending);
            self.tx_pending = 0;
        }
        if self.tx.needs_wakeup() {
            self.kick()?;
        }
        Ok(())
    }

    /// A zero-length send: the kernel processes the TX ring.
    pub fn kick(&self) -> io::Result<()> {
        // SAFETY: sendto with no data on our own socket.
        let r = unsafe {
            libc::sendto(
                self.fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            // The ring is busy or full: the next kick sends it.
            if matches!(
                e.raw_os_error(),
                Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN)
            ) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }

    /// Received frames waiting on the RX ring.
    pub fn rx_waiting(&self) -> u32 {
        self.rx.ready(u32::MAX)
    }

    /// (RX entries waiting, fill entries free, frames waiting to refill) — for diagnostics.
    pub fn ring_levels(&self) -> (u32, u32, usize) {
        (self.rx.ready(u32::MAX), self.fill.free(), self.refill.len())
    }

    /// A zero-length receive: the kernel takes the fill ring (need_wakeup)
    /// and, with busy polling, runs the queue's NAPI in this thread.
    pub fn wake_rx(&self) {
        // SAFETY: a zero-length, non-blocking recvfrom on our own socket.
        unsafe {
            libc::recvfrom(
                self.fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
    }
}

impl Drop for Xsk {
    fn drop(&mut self) {
        // SAFETY: the UMEM mapping made in `open`, unmapped once; no slice
        // of it outlives `self` (they borrow it). The kernel pinned the
        // pages at registration and keeps its own reference until the
        // socket (closed when the fields drop, after this) is released.
        unsafe {
            libc::munmap(self.umem.cast(), self.umem_len);
        }
    }
}

/// Reads XDP_STATISTICS: (rx dropped, rx invalid, tx invalid, rx ring full, fill ring empty, tx ring empty).
pub fn statistics(fd: RawFd) -> Option<[u64; 6]> {
    let mut v = [0u64; 6];
    let mut len = size_of_val(&v) as libc::socklen_t;
    // SAFETY: `v` and `len` are live and sized for the option (the kernel
    // writes at most len bytes).
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_XDP,
            libc::XDP_STATISTICS,
            v.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (r == 0).then_some(v)
}
