//! The XDP program that steers SIP datagrams into the shards' AF_XDP
//! sockets, assembled here from the listen addresses and loaded with the
//! `bpf(2)` system call (no BPF toolchain at build or install time).
//!
//! ```text
//! frame ─► Ethernet (one 802.1Q tag at most)
//!   IPv4, IHL 5, UDP, not a fragment, to a listen address:port ─┐
//!   IPv6, next header UDP, to a listen address:port ──────────────┴► bpf_redirect_map(xsks, rx_queue, PASS)
//!   anything else (ARP, ICMP, TCP, fragments, IPv4 options, other ports) ─► XDP_PASS (the kernel)
//! ```
//!
//! Why assembled and not compiled: the program is ~40 instructions of
//! compares whose constants are the configured addresses; emitting them
//! from Rust needs no clang at install time, no ELF loader, and the bytes
//! are reproducible by construction (`program` is a pure function of the
//! listeners, unit-tested). A queue without a socket in the map falls
//! back to the kernel (the low bits of `bpf_redirect_map`'s flags).
//!
//! Attachment is a BPF link (`BPF_LINK_CREATE`), owned by its descriptor:
//! when the process exits — or is killed — the kernel detaches the program,
//! so no stale program survives us. A program someone attached the old
//! way (netlink) is reported, not removed.
#![allow(unsafe_code)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_SKB_MODE`.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_PASS: i32 = 2;
const HELPER_REDIRECT_MAP: i32 = 51;

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

// Opcode pieces (linux/bpf_common.h, linux/bpf.h).
const LDX_MEM: u8 = 0x61; // BPF_LDX | BPF_MEM; the size is or-ed in per use
const SIZE_W: u8 = 0x00;
const SIZE_H: u8 = 0x08;
const SIZE_B: u8 = 0x10;
const ALU64_K: u8 = 0x07; // BPF_ALU64 | BPF_K
const ALU64_X: u8 = 0x0f; // BPF_ALU64 | BPF_X
const OP_ADD: u8 = 0x00;
const OP_AND: u8 = 0x50;
const OP_MOV: u8 = 0xb0;
const JMP: u8 = 0x05;
const JMP32: u8 = 0x06;
const J_JA: u8 = 0x00;
const J_EQ: u8 = 0x10;
const J_GT: u8 = 0x20;
const J_NE: u8 = 0x50;
const J_K: u8 = 0x00;
const J_X: u8 = 0x08;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const LD_IMM64: u8 = 0x18;
const PSEUDO_MAP_FD: u8 = 1;

/// A jump target not yet placed.
#[derive(Debug, Clone, Copy)]
struct Label(usize);

/// A small assembler: instructions, labels and the jumps to fix up.
#[derive(Debug, Default)]
struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn here(&mut self, l: Label) {
        if let Some(slot) = self.labels.get_mut(l.0) {
            *slot = Some(self.insns.len());
        }
    }

    fn raw(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn {
            code,
            regs: (dst & 0x0f) | (src << 4),
            off,
            imm,
        });
    }

    fn mov(&mut self, dst: u8, src: u8) {
        self.raw(ALU64_X | OP_MOV, dst, src, 0, 0);
    }

    fn movi(&mut self, dst: u8, imm: i32) {
        self.raw(ALU64_K | OP_MOV, dst, 0, 0, imm);
    }

    fn addi(&mut self, dst: u8, imm: i32) {
        self.raw(ALU64_K | OP_ADD, dst, 0, 0, imm);
    }

    fn andi(&mut self, dst: u8, imm: i32) {
        self.raw(ALU64_K | OP_AND, dst, 0, 0, imm);
    }

    fn load(&mut self, size: u8, dst: u8, src: u8, off: i16) {
        self.raw(LDX_MEM | size, dst, src, off, 0);
    }

    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: Label) {
        self.fixups.push((self.insns.len(), to));
        self.raw(code, dst, src, 0, imm);
    }

    /// `if (u32)dst != imm goto to` (32-bit compare: no sign extension).
    fn jne32(&mut self, dst: u8, imm: u32, to: Label) {
        self.jump(JMP32 | J_NE | J_K, dst, 0, imm as i32, to);
    }

    fn jeq32(&mut self, dst: u8, imm: u32, to: Label) {
        self.jump(JMP32 | J_EQ | J_K, dst, 0, imm as i32, to);
    }

    fn jgt_reg(&mut self, dst: u8, src: u8, to: Label) {
        self.jump(JMP | J_GT | J_X, dst, src, 0, to);
    }

    fn ja(&mut self, to: Label) {
        self.jump(JMP | J_JA, 0, 0, 0, to);
    }

    /// `dst = map fd` (a 16-byte instruction).
    fn ld_map(&mut self, dst: u8, fd: RawFd) {
        self.raw(LD_IMM64, dst, PSEUDO_MAP_FD, 0, fd);
        self.raw(0, 0, 0, 0, 0);
    }

    fn finish(mut self) -> Vec<Insn> {
        for (at, l) in self.fixups {
            let target = self.labels.get(l.0).copied().flatten().unwrap_or(at + 1);
            let off = target as i64 - at as i64 - 1;
            if let Some(i) = self.insns.get_mut(at) {
                i.off = off as i16;
            }
        }
        self.insns
    }
}

/// Loads `bytes` (network order) the way a little-endian `ldx` reads them.
fn wire16(v: u16) -> u32 {
    u32::from(u16::from_ne_bytes(v.to_be_bytes()))
}

fn wire32(b: [u8; 4]) -> u32 {
    u32::from_ne_bytes(b)
}

/// The program for `listen` (UDP addresses; an unspecified address matches
/// any destination address of its family on that port), redirecting into
/// the XSK map `map_fd`.
pub fn program(listen: &[SocketAddr], map_fd: RawFd) -> Vec<Insn> {
    // r6 = ctx; r2 = data (moves past tags); r3 = data_end; r4 = bound
    // checks; r5, r7 = loaded fields.
    let mut a = Asm::default();
    let pass = a.label();
    let redirect = a.label();
    let v4 = a.label();
    let v6 = a.label();
    let untagged = a.label();
    a.mov(6, 1);
    a.load(SIZE_W, 2, 1, 0);
    a.load(SIZE_W, 3, 1, 4);
    a.mov(4, 2);
    a.addi(4, 14);
    a.jgt_reg(4, 3, pass);
    a.load(SIZE_H, 5, 2, 12);
    a.jne32(5, wire16(0x8100), untagged);
    a.mov(4, 2);
    a.addi(4, 18);
    a.jgt_reg(4, 3, pass);
    a.load(SIZE_H, 5, 2, 16);
    a.addi(2, 4);
    a.here(untagged);
    a.jeq32(5, wire16(0x0800), v4);
    a.jeq32(5, wire16(0x86dd), v6);
    a.ja(pass);

    // IPv4: r2 + 14 is the IP header.
    a.here(v4);
    a.mov(4, 2);
    a.addi(4, 14 + 20 + 8);
    a.jgt_reg(4, 3, pass);
    a.load(SIZE_B, 5, 2, 14);
    a.jne32(5, 0x45, pass);
    a.load(SIZE_B, 5, 2, 14 + 9);
    a.jne32(5, 17, pass);
    a.load(SIZE_H, 5, 2, 14 + 6);
    a.andi(5, wire16(0x3fff) as i32);
    a.jne32(5, 0, pass);
    a.load(SIZE_W, 5, 2, 14 + 16);
    a.load(SIZE_H, 7, 2, 14 + 20 + 2);
    for l in listen {
        let IpAddr::V4(ip) = l.ip() else { continue };
        let next = a.label();
        if !ip.is_unspecified() {
            a.jne32(5, wire32(ip.octets()), next);
        }
        a.jeq32(7, wire16(l.port()), redirect);
        a.here(next);
    }
    a.ja(pass);

    // IPv6 (no extension headers): r2 + 14 is the IP header.
    a.here(v6);
    a.mov(4, 2);
    a.addi(4, 14 + 40 + 8);
    a.jgt_reg(4, 3, pass);
    a.load(SIZE_B, 5, 2, 14 + 6);
    a.jne32(5, 17, pass);
    a.load(SIZE_H, 7, 2, 14 + 40 + 2);
    for l in listen {
        let IpAddr::V6(ip) = l.ip() else { continue };
        let next = a.label();
        a.jne32(7, wire16(l.port()), next);
        if !ip.is_unspecified() {
            let o = ip.octets();
            for (k, w) in o.chunks_exact(4).enumerate() {
                let word = [w[0], w[1], w[2], w[3]];
                a.load(SIZE_W, 5, 2, 14 + 24 + 4 * k as i16);
                a.jne32(5, wire32(word), next);
            }
        }
        a.ja(redirect);
        a.here(next);
    }
    a.ja(pass);

    a.here(redirect);
    a.ld_map(1, map_fd);
    a.load(SIZE_W, 2, 6, 16);
    a.movi(3, XDP_PASS);
    a.raw(CALL, 0, 0, 0, HELPER_REDIRECT_MAP);
    a.raw(EXIT, 0, 0, 0, 0);

    a.here(pass);
    a.movi(0, XDP_PASS);
    a.raw(EXIT, 0, 0, 0, 0);
    a.finish()
}

fn sys_bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<i64> {
    // SAFETY: `attr` is a 128-byte, 8-aligned buffer laid out as the
    // `union bpf_attr` member of `cmd` (the callers fill it field by field
    // at the kernel's offsets); the kernel reads at most `size` bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            size_of_val(attr) as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

fn lo_hi(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | (u64::from(hi) << 32)
}

fn fd_of(r: i64) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(r).map_err(|_| io::Error::other("bpf returned a bad descriptor"))?;
    // SAFETY: `fd` was just returned by the kernel as a new descriptor that
    // nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The XSK map and the attached program of one interface. Dropping it
/// detaches the program (the link closes).
#[derive(Debug)]
pub struct Steering {
    map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
    /// Instructions loaded.
    pub insns: usize,
}

impl Steering {
    /// Loads the program for `listen`, with an XSK map of `queues` entries,
    /// and attaches it to interface `ifindex` with `mode_flags`
    /// ([`XDP_FLAGS_DRV_MODE`] or [`XDP_FLAGS_SKB_MODE`]).
    pub fn attach(
        ifindex: u32,
        listen: &[SocketAddr],
        queues: u32,
        mode_flags: u32,
    ) -> Result<Self, String> {
        let mut attr = [0u64; 16];
        attr[0] = lo_hi(BPF_MAP_TYPE_XSKMAP, 4);
        attr[1] = lo_hi(4, queues.max(1));
        let map = sys_bpf(BPF_MAP_CREATE, &mut attr)
            .and_then(fd_of)
            .map_err(|e| format!("cannot create the XSK map: {e}"))?;
        let insns = program(listen, map.as_raw_fd());
        let license = c"Dual MIT/GPL";
        let mut log = vec![0u8; 64 * 1024];
        let mut attr = [0u64; 16];
        attr[0] = lo_hi(BPF_PROG_TYPE_XDP, insns.len() as u32);
        attr[1] = insns.as_ptr() as u64;
        attr[2] = license.as_ptr() as u64;
        attr[3] = lo_hi(1, log.len() as u32);
        attr[4] = log.as_mut_ptr() as u64;
        // prog_name at byte 48 (attr[6..8]).
        let mut name = [0u8; 16];
        name[..11].copy_from_slice(b"sipedge_xdp");
        attr[6] = u64::from_ne_bytes([
            name[0], name[1], name[2], name[3], name[4], name[5], name[6], name[7],
        ]);
        attr[7] = u64::from_ne_bytes([
            name[8], name[9], name[10], name[11], name[12], name[13], name[14], name[15],
        ]);
        // prog_ifindex 0, expected_attach_type BPF_XDP at byte 68.
        attr[8] = lo_hi(0, BPF_XDP);
        let prog = match sys_bpf(BPF_PROG_LOAD, &mut attr).and_then(fd_of) {
            Ok(p) => p,
            Err(e) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let why = String::from_utf8_lossy(log.get(..end).unwrap_or_default());
                let last: Vec<&str> = why.lines().rev().take(3).collect();
                return Err(format!(
                    "the kernel refused the XDP program: {e} ({})",
                    last.join(" / ")
                ));
            }
        };
        let mut attr = [0u64; 16];
        attr[0] = lo_hi(prog.as_raw_fd() as u32, ifindex);
        attr[1] = lo_hi(BPF_XDP, mode_flags);
        let link = sys_bpf(BPF_LINK_CREATE, &mut attr)
            .and_then(fd_of)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::EBUSY) || e.raw_os_error() == Some(libc::EEXIST) {
                    format!("another XDP program is attached to the interface ({e}); detach it (ip link set dev IFACE xdp off)")
                } else {
                    format!("cannot attach the XDP program: {e}")
                }
            })?;
        Ok(Self {
            map,
            _prog: prog,
            _link: link,
            insns: insns.len(),
        })
    }

    /// Puts AF_XDP socket `xsk` in the map for receive queue `queue`.
    pub fn insert(&self, queue: u32, xsk: RawFd) -> io::Result<()> {
        let key = queue;
        let value = xsk as u32;
        let mut attr = [0u64; 16];
        attr[0] = u64::from(self.map.as_raw_fd() as u32);
        attr[1] = std::ptr::from_ref(&key) as u64;
        attr[2] = std::ptr::from_ref(&value) as u64;
        sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_inside_the_program_and_it_ends_in_exits() {
        let listen: Vec<SocketAddr> = vec![
            "198.18.0.1:5060".parse().unwrap(),
            "0.0.0.0:5070".parse().unwrap(),
            "[2001:db8::1]:5060".parse().unwrap(),
        ];
        let p = program(&listen, 3);
        assert!(p.len() < 120, "{}", p.len());
        for (i, insn) in p.iter().enumerate() {
            let class = insn.code & 0x07;
            if (class == JMP || class == JMP32) && insn.code != CALL && insn.code != EXIT {
                let t = i as i64 + 1 + i64::from(insn.off);
                assert!(
                    t > i as i64 && (t as usize) < p.len(),
                    "insn {i} jumps to {t}"
                );
            }
        }
        assert_eq!(p.last().unwrap().code, EXIT);
        // Deterministic: the same listeners give the same bytes.
        assert_eq!(p, program(&listen, 3));
        // The port is compared as the wire's bytes read little-endian.
        assert!(p
            .iter()
            .any(|i| i.imm == i32::from(u16::from_ne_bytes(5060u16.to_be_bytes()))));
    }
}
