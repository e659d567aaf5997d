//! The AF_XDP driver: a shard's SIP datagrams come off its NIC queue into
//! memory the shard owns and go back out as frames it builds, without the
//! kernel's UDP stack. Everything else the shard does (TCP, TLS and
//! WebSocket listeners, the mesh wake-up, datagrams the frames path cannot
//! take) runs on the mio driver it wraps, on kernel sockets.
//!
//! ```text
//! NIC queue q ─► XDP program (bpf.rs): UDP to a listen addr:port ─► XSK map[q] ─► this shard's Xsk
//!                                      or to a shard's own port (2+ shards)
//!                                      anything else ───────────────► kernel (ARP, ICMP, TCP, fragments)
//! wait:    epoll (mio) on the kernel sockets, the mesh eventfd and the Xsk
//! receive: mio's (kernel sockets, streams) · Xsk RX ─► frame::parse ─► Sink::datagram
//!          (another shard's port: received as on this shard's socket of the
//!          same id; the core hands a response to the shard that owns it)
//!          (the sender's MAC, checked against the kernel's, for the reply)
//! flush:   each UDP transmit: a known neighbour, on this interface, within the MTU
//!            ─► frame::build into a TX frame ─► TX ring (one kick per flush)
//!          else ─► the kernel socket bound to the same address (counted)
//! ```
//!
//! Set-up ([`prepare`]) runs before the shards start, so anything that
//! stops AF_XDP from working is one error line at start: the interface, its
//! queues, the program's load and attach, each socket's bind. The program
//! stays attached while the returned [`Steering`] lives; the kernel detaches
//! it when the process ends, however it ends (a BPF link).

pub mod bpf;
pub mod netlink;
pub mod xsk;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::config::Config;
use crate::time::{Duration, Instant};
use crate::transport::conn::Connections;
use crate::transport::frame::{self, Link};
use crate::transport::{Outbox, Peer, SocketId, Transmit};

use super::mio::MioDriver;
use super::turn::{Driver, Sink};
use super::{DriverStats, Listener, ShardPlan};

pub use bpf::Steering;
use netlink::Netlink;
use xsk::Xsk;

/// RX descriptors taken per batch, and batches per turn.
const RX_BATCH: u32 = 64;
const RX_BUDGET: usize = 8;
/// The most neighbours remembered (then the table starts over).
const NEIGHBOURS_MAX: usize = 65_536;
/// A learned or resolved neighbour is trusted this long without traffic.
const NEIGHBOUR_TTL: Duration = Duration::from_secs(60);
/// After a failed resolution, the kernel path is used this long before asking again.
const RETRY: Duration = Duration::from_secs(1);
/// Kernel look-ups a second for sources not seen before (or seen with
/// another MAC): beyond it, such a source is answered through the kernel
/// for [`RETRY`] (a flood of forged sources costs no more than this).
const VERIFY_PER_SEC: u32 = 2_000;

/// One shard's share of the AF_XDP set-up, made by [`prepare`].
#[derive(Debug)]
pub struct ShardXdp {
    xsk: Xsk,
    ifindex: u32,
    mac: [u8; 6],
    mtu: usize,
    busy_poll_us: u32,
    /// By socket id: the address the frames path receives for (public,
    /// and with several shards this shard's own).
    served: Vec<Option<SocketAddr>>,
    /// Other shards' own addresses (their Via ports), with the id of the
    /// same socket here: what arrives for them on this queue is received
    /// as on that socket (the core hands it to its shard).
    foreign: Vec<(SocketAddr, SocketId)>,
    /// By socket id: the address frames sent for it carry.
    sources: Vec<Option<SocketAddr>>,
    steering: Arc<Steering>,
}

/// What [`prepare`] set up, for the start line.
#[derive(Debug)]
pub struct Prepared {
    /// The program and its map (drop: detached).
    pub steering: Arc<Steering>,
    /// The interface.
    pub interface: String,
    /// Zero-copy sockets (else the kernel copies).
    pub zero_copy: bool,
    /// Native mode (else generic/skb).
    pub native: bool,
}

/// Sets AF_XDP up for `plans`: finds the interface, attaches the program
/// steering the UDP listen addresses, opens and binds one socket per shard
/// (shard i: queue i) and hands each plan its share. Errors are one line
/// for the operator.
pub fn prepare(cfg: &Config, plans: &mut [ShardPlan]) -> Result<Prepared, String> {
    // The public UDP addresses every shard shares (bound: a port 0 in the
    // config is the kernel's choice by now), then each shard's own address
    // (the port in its Vias, with several shards). The latter's datagrams
    // (responses) may arrive on any queue: the shard of that queue receives
    // them as on its own socket of the same id and the core hands them to
    // the shard whose Via they carry (an XSK only takes its queue's frames).
    let udp = |role: crate::proxy::SocketRole| {
        move |l: &&crate::proxy::LocalSocket| {
            l.transport == crate::transport::Transport::Udp && l.role == role
        }
    };
    let listen: Vec<SocketAddr> = plans
        .first()
        .map(|p| {
            p.locals
                .iter()
                .filter(udp(crate::proxy::SocketRole::Public))
                .map(|l| l.addr)
                .collect()
        })
        .unwrap_or_default();
    let own: Vec<(u16, SocketAddr, SocketId)> = plans
        .iter()
        .flat_map(|p| {
            p.locals
                .iter()
                .enumerate()
                .filter(|(_, l)| udp(crate::proxy::SocketRole::Shard)(l))
                .filter_map(move |(i, l)| {
                    let id = SocketId(u8::try_from(i).ok()?);
                    (!l.addr.ip().is_unspecified()).then_some((p.id, l.addr, id))
                })
        })
        .collect();
    // (Only with several shards has a shard an own socket.)
    let steered: Vec<SocketAddr> = listen
        .iter()
        .copied()
        .chain(own.iter().map(|o| o.1))
        .collect();
    let Some(first) = listen.first() else {
        return Err("--io xdp needs a UDP listen address (--listen udp:IP:PORT)".into());
    };
    let name = match &cfg.xdp.interface {
        Some(n) => n.clone(),
        None => {
            if first.ip().is_unspecified() {
                return Err(format!(
                    "--io xdp: listen address {first} names no interface; listen on the interface's address or set [xdp] interface"
                ));
            }
            netlink::interface_of(first.ip())
                .map_err(|e| format!("--io xdp: cannot list interfaces: {e}"))?
                .ok_or_else(|| format!("--io xdp: no interface holds {}", first.ip()))?
        }
    };
    let ifindex =
        netlink::ifindex(&name).ok_or_else(|| format!("--io xdp: no interface {name:?}"))?;
    if name == "lo" {
        return Err(
            "--io xdp: the loopback interface has no XDP queues; use a real or veth interface"
                .into(),
        );
    }
    let mac = netlink::mac_of(&name).unwrap_or([0; 6]);
    let mtu = netlink::mtu_of(&name).unwrap_or(1500);
    let shards = plans.len() as u32;
    let queues = cfg.xdp.queues.unwrap_or(shards);
    if queues != shards {
        return Err(format!(
            "[xdp] queues = {queues} but {shards} shards: each shard serves one queue (set both alike)"
        ));
    }
    let have = netlink::rx_queues(&name) as u32;
    if have < queues {
        return Err(format!(
            "--io xdp: interface {name} has {have} receive queue(s), {queues} needed (one per shard; ethtool -L {name} combined {queues}, or fewer --shards)"
        ));
    }
    if have > queues {
        tracing::warn!(
            "interface {name} has {have} receive queues and {queues} shard(s): datagrams arriving on queues {queues}..{} take the kernel path (ethtool -L {name} combined {queues}, or --shards {have})",
            have - 1
        );
    }
    let mode = if cfg.xdp.skb_mode {
        bpf::XDP_FLAGS_SKB_MODE
    } else {
        bpf::XDP_FLAGS_DRV_MODE
    };
    let steering = Arc::new(
        Steering::attach(ifindex, &steered, queues, mode)
            .map_err(|e| format!("--io xdp on {name}: {e}"))?,
    );
    for plan in plans.iter_mut() {
        let queue = u32::from(plan.id);
        let xsk = Xsk::open(ifindex, queue, cfg.xdp.zero_copy).map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EPERM) => " (needs root or CAP_NET_RAW + CAP_BPF)",
                Some(libc::EOPNOTSUPP) if cfg.xdp.zero_copy => {
                    " (the driver has no zero-copy: set [xdp] zero_copy = false)"
                }
                Some(libc::EAFNOSUPPORT) => " (the kernel has no AF_XDP)",
                _ => "",
            };
            format!("--io xdp: cannot bind an AF_XDP socket to {name} queue {queue}: {e}{hint}")
        })?;
        if cfg.xdp.busy_poll_us > 0 {
            xsk.set_busy_poll(cfg.xdp.busy_poll_us, RX_BATCH)
                .map_err(|e| format!("--io xdp: busy polling: {e}"))?;
        }
        steering.insert(queue, xsk.fd()).map_err(|e| {
            format!("--io xdp: cannot put the socket of queue {queue} in the map: {e}")
        })?;
        let bound: Vec<Option<SocketAddr>> = plan
            .sockets
            .iter()
            .map(|s| s.local_addr().ok().filter(|a| !a.ip().is_unspecified()))
            .collect();
        let served = bound
            .iter()
            .map(|a| a.filter(|a| steered.contains(a)))
            .collect();
        let foreign = own
            .iter()
            .filter(|o| o.0 != plan.id)
            .map(|o| (o.1, o.2))
            .collect();
        plan.xdp = Some(ShardXdp {
            xsk,
            ifindex,
            mac,
            mtu,
            busy_poll_us: cfg.xdp.busy_poll_us,
            served,
            foreign,
            sources: bound,
            steering: steering.clone(),
        });
    }
    Ok(Prepared {
        steering,
        interface: name,
        zero_copy: cfg.xdp.zero_copy,
        native: !cfg.xdp.skb_mode,
    })
}

/// What the driver knows of a neighbour.
#[derive(Debug, Clone, Copy)]
enum Neighbour {
    /// Frames to it carry this link header, until then.
    Known(Link, Instant),
    /// Send through the kernel until then (unknown, or not on this interface).
    Kernel(Instant),
}

/// Next-hop MACs, asked of the kernel (route, then neighbour table) and
/// kept while frames keep confirming them.
///
/// A frame's source MAC is not believed on its own: anyone on the link
/// can send one datagram with another host's source IP (a gateway's, a
/// registered phone's) and its own MAC, and frames for that IP would then
/// go to it. So a source seen for the first time, or with a MAC other than
/// the one known, is looked up in the kernel, which stays the authority
/// (its ARP/ND handling, `arp_ignore` and the like apply); a frame that
/// agrees with the entry only extends it. Off-link sources resolve to
/// their gateway's MAC. One exception: when the kernel routes the source
/// through another interface (a VLAN device on this one: tagged frames),
/// the frame's own link header is used, as before.
#[derive(Debug)]
struct Neighbours {
    map: HashMap<IpAddr, Neighbour>,
    nl: Option<Netlink>,
    ifindex: u32,
    mac: [u8; 6],
    /// Look-ups left in this second, and when it started.
    budget: (u32, Instant),
    /// Frames whose source MAC disagreed with the kernel's (counted for the log).
    mismatched: u64,
}

/// What the kernel says of the next hop toward a source.
enum Asked {
    /// On this interface, with this MAC.
    Here(Link),
    /// Routed through another interface (a VLAN device, say).
    Elsewhere,
    /// No route or no usable neighbour entry.
    Unknown,
}

impl Neighbours {
    fn new(ifindex: u32, mac: [u8; 6]) -> Self {
        Self {
            map: HashMap::new(),
            nl: None,
            ifindex,
            mac,
            budget: (VERIFY_PER_SEC, Instant::ZERO),
            mismatched: 0,
        }
    }

    /// A frame from `ip` arrived with `link` (already turned around: its
    /// source MAC as the destination).
    fn learn(&mut self, now: Instant, ip: IpAddr, link: Link) {
        match self.map.get_mut(&ip) {
            Some(Neighbour::Known(known, until)) if known.dst_mac == link.dst_mac => {
                *until = now + NEIGHBOUR_TTL;
                return;
            }
            Some(Neighbour::Kernel(until)) if *until > now => return,
            _ => {}
        }
        if now.saturating_since(self.budget.1) >= Duration::from_secs(1) {
            self.budget = (VERIFY_PER_SEC, now);
        }
        let entry = if self.budget.0 == 0 {
            // Out of look-ups: a known (kernel-confirmed) entry stays as it
            // is — a flood of forged MACs must not demote it — and a new
            // source takes the kernel path for now.
            if matches!(self.map.get(&ip), Some(Neighbour::Known(_, until)) if *until > now) {
                return;
            }
            Neighbour::Kernel(now + RETRY)
        } else {
            self.budget.0 -= 1;
            match self.ask(ip) {
                Asked::Here(kernel) => {
                    if kernel.dst_mac != link.dst_mac {
                        self.mismatched += 1;
                        tracing::debug!(
                            "xdp: a frame from {ip} came from MAC {:02x?}, the kernel says {:02x?}: using the kernel's",
                            link.dst_mac,
                            kernel.dst_mac
                        );
                    }
                    Neighbour::Known(kernel, now + NEIGHBOUR_TTL)
                }
                Asked::Elsewhere => Neighbour::Known(link, now + NEIGHBOUR_TTL),
                Asked::Unknown => Neighbour::Kernel(now + RETRY),
            }
        };
        if self.map.len() >= NEIGHBOURS_MAX && !self.map.contains_key(&ip) {
            self.map.clear();
        }
        self.map.insert(ip, entry);
    }

    fn resolve(&mut self, now: Instant, ip: IpAddr) -> Option<Link> {
        match self.map.get(&ip) {
            Some(Neighbour::Known(link, until)) if *until > now => return Some(*link),
            Some(Neighbour::Kernel(until)) if *until > now => return None,
            _ => {}
        }
        let found = match self.ask(ip) {
            Asked::Here(link) => Some(link),
            Asked::Elsewhere | Asked::Unknown => None,
        };
        if self.map.len() >= NEIGHBOURS_MAX {
            self.map.clear();
        }
        let entry = match found {
            Some(link) => Neighbour::Known(link, now + NEIGHBOUR_TTL),
            None => Neighbour::Kernel(now + RETRY),
        };
        self.map.insert(ip, entry);
        found
    }

    fn ask(&mut self, ip: IpAddr) -> Asked {
        if self.nl.is_none() {
            self.nl = Netlink::open().ok();
        }
        let Some(nl) = self.nl.as_mut() else {
            return Asked::Unknown;
        };
        let Ok(Some(route)) = nl.route(ip) else {
            return Asked::Unknown;
        };
        if route.oif != self.ifindex {
            return Asked::Elsewhere;
        }
        match nl.neighbour(self.ifindex, route.next_hop) {
            Ok(Some(mac)) => Asked::Here(Link {
                dst_mac: mac,
                src_mac: self.mac,
                vlan: None,
            }),
            _ => Asked::Unknown,
        }
    }
}

/// The AF_XDP driver of one shard.
pub struct XdpDriver {
    inner: MioDriver,
    xsk: Xsk,
    served: Vec<Option<SocketAddr>>,
    foreign: Vec<(SocketAddr, SocketId)>,
    sources: Vec<Option<SocketAddr>>,
    neighbours: Neighbours,
    /// Largest IP packet (the interface's MTU).
    mtu: usize,
    rx: Vec<(u64, u32)>,
    kernel: Vec<Transmit>,
    /// The RX ring had more than a turn's budget.
    rx_more: bool,
    ip_id: u16,
    now: Instant,
    busy_poll: bool,
    /// After a wake-up with fewer than a batch of frames, wait this long
    /// for more before the turn (`[uring] coalesce_us`: the same bound on
    /// added latency as the io_uring driver's).
    coalesce: std::time::Duration,
    _steering: Arc<Steering>,
}

impl std::fmt::Debug for XdpDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpDriver").field("xsk", &self.xsk).finish()
    }
}

impl XdpDriver {
    /// The driver over `x`, with the kernel sockets and listeners of the
    /// shard (UDP `sockets` stay open for what the frames path cannot take).
    pub fn new(
        x: ShardXdp,
        sockets: Vec<UdpSocket>,
        listeners: Vec<Listener>,
        wake: Option<RawFd>,
        coalesce_us: u32,
    ) -> io::Result<Self> {
        let mut inner = MioDriver::with_streams(sockets, listeners, wake)?;
        inner.watch_extra(x.xsk.fd())?;
        Ok(Self {
            inner,
            neighbours: Neighbours::new(x.ifindex, x.mac),
            xsk: x.xsk,
            served: x.served,
            foreign: x.foreign,
            sources: x.sources,
            mtu: x.mtu,
            rx: Vec::with_capacity(RX_BATCH as usize),
            kernel: Vec::new(),
            rx_more: true,
            ip_id: 0,
            now: Instant::ZERO,
            busy_poll: x.busy_poll_us > 0,
            coalesce: std::time::Duration::from_micros(u64::from(coalesce_us)),
            _steering: x.steering,
        })
    }

    fn socket_of(&self, dst: SocketAddr) -> Option<SocketId> {
        self.served
            .iter()
            .position(|s| *s == Some(dst))
            .and_then(|i| u8::try_from(i).ok())
            .map(SocketId)
            .or_else(|| {
                self.foreign
                    .iter()
                    .find(|(a, _)| *a == dst)
                    .map(|&(_, id)| id)
            })
    }

    /// Sends the outbox's datagrams: frames where the path is known, the
    /// kernel sockets for the rest; then empties it.
    fn send_outbox(&mut self) {
        self.kernel.clear();
        let now = self.now;
        let n = self.inner.outbox().items().len();
        let mut framed = 0u64;
        for i in 0..n {
            let out = self.inner.outbox();
            let Some(t) = out.items().get(i).copied() else {
                break;
            };
            if t.peer.transport.is_stream() {
                continue;
            }
            let src = self
                .sources
                .get(usize::from(t.peer.local.0))
                .copied()
                .flatten();
            let bytes = out.bytes(&t);
            let sent = match src {
                Some(src)
                    if src.is_ipv4() == t.peer.remote.is_ipv4()
                        && bytes.len()
                            + if src.is_ipv4() {
                                frame::IPV4_LEN
                            } else {
                                frame::IPV6_LEN
                            }
                            + frame::UDP_LEN
                            <= self.mtu =>
                {
                    match self.neighbours.resolve(now, t.peer.remote.ip()) {
                        Some(link) => {
                            self.ip_id = self.ip_id.wrapping_add(1);
                            let id = self.ip_id;
                            let dst = t.peer.remote;
                            self.xsk
                                .send_with(|buf| frame::build(buf, &link, src, dst, bytes, id).ok())
                        }
                        None => false,
                    }
                }
                _ => false,
            };
            if sent {
                framed += 1;
            } else {
                self.kernel.push(t);
            }
        }
        if framed > 0 {
            if self.xsk.submit_tx().is_err() {
                self.inner.stats_mut().tx_errors += 1;
            }
            let st = self.inner.stats_mut();
            st.tx += framed;
            st.xdp_tx += framed;
        }
        if !self.kernel.is_empty() {
            self.inner.stats_mut().xdp_kernel_tx += self.kernel.len() as u64;
            self.inner.send_items(&self.kernel);
        }
        self.inner.outbox().clear();
    }

    fn drain_xsk<K: Sink>(&mut self, now: Instant, sink: &mut K) {
        if self.busy_poll {
            // With SO_PREFER_BUSY_POLL a receive call runs the queue's NAPI
            // here, in this thread, for up to `busy_poll` µs.
            self.xsk.wake_rx();
        }
        self.xsk.reap();
        self.rx_more = false;
        for batch in 0..RX_BUDGET {
            self.rx.clear();
            self.xsk.take_rx(RX_BATCH, &mut self.rx);
            let n = self.rx.len();
            for i in 0..n {
                if !self.inner.outbox().has_room() {
                    sink.take_transmits(now, self.inner.outbox());
                    self.send_outbox();
                }
                let Some(&(addr, len)) = self.rx.get(i) else {
                    break;
                };
                let data = self.xsk.frame(addr, len);
                let u = match frame::parse(data, true) {
                    Ok(u) => u,
                    Err(why) => {
                        tracing::debug!("xdp: a frame skipped: {why}");
                        self.inner.stats_mut().xdp_skipped += 1;
                        continue;
                    }
                };
                let Some(id) = self.socket_of(u.dst) else {
                    tracing::debug!(
                        "xdp: a frame for {} from {}: no socket of ours",
                        u.dst,
                        u.src
                    );
                    self.inner.stats_mut().xdp_skipped += 1;
                    continue;
                };
                self.neighbours.learn(
                    now,
                    u.src.ip(),
                    Link {
                        dst_mac: u.link.src_mac,
                        src_mac: u.link.dst_mac,
                        vlan: u.link.vlan,
                    },
                );
                let st = self.inner.stats_mut();
                st.rx += 1;
                st.xdp_rx += 1;
                sink.datagram(now, u.payload, &Peer::udp(u.src, id), self.inner.outbox());
            }
            // Taken before the frames are read; given back after.
            let rx = core::mem::take(&mut self.rx);
            self.xsk.recycle(&rx);
            self.rx = rx;
            if n < RX_BATCH as usize {
                break;
            }
            self.rx_more = batch + 1 == RX_BUDGET;
        }
        // Frames the fill ring had no room for last time.
        self.xsk.recycle(&[]);
        if self.xsk.fill_needs_wakeup() {
            self.xsk.wake_rx();
        }
    }
}

impl Driver for XdpDriver {
    fn has_pending(&self) -> bool {
        self.rx_more || self.inner.has_pending()
    }

    fn wait(&mut self, timeout: std::time::Duration) -> io::Result<bool> {
        let woken = self.inner.wait(timeout)?;
        let waiting = self.xsk.rx_waiting();
        if !timeout.is_zero() && !self.coalesce.is_zero() && (1..RX_BATCH).contains(&waiting) {
            // Woken by a few frames: let more arrive, so that one turn
            // (one kick, one pass of the core) serves them together.
            std::thread::sleep(self.coalesce);
        }
        Ok(woken)
    }

    fn outbox(&mut self) -> &mut Outbox {
        self.inner.outbox()
    }

    fn receive<K: Sink>(&mut self, now: Instant, sink: &mut K) -> io::Result<()> {
        self.now = now;
        // Kernel sockets and streams first (an outbox that fills up there
        // is sent by mio, through the kernel sockets), then the frames.
        self.inner.receive(now, sink)?;
        self.drain_xsk(now, sink);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_outbox();
        Ok(())
    }

    fn stream_io(&mut self, now: Instant, conns: &mut Connections) -> io::Result<()> {
        self.inner.stream_io(now, conns)
    }

    fn stats(&self) -> &DriverStats {
        self.inner.stats()
    }
}

impl Drop for XdpDriver {
    fn drop(&mut self) {
        if let Some(s) = xsk::statistics(self.xsk.fd()) {
            let (rx, fill, refill) = self.xsk.ring_levels();
            tracing::debug!(
                "af_xdp socket: rx_dropped={} rx_invalid={} tx_invalid={} rx_ring_full={} fill_empty={} tx_ring_empty={} rx_waiting={rx} fill_free={fill} refill={refill} rx_more={}",
                s[0], s[1], s[2], s[3], s[4], s[5], self.rx_more
            );
        }
        if self.neighbours.mismatched > 0 {
            tracing::warn!(
                "af_xdp: {} frame(s) came with a source MAC other than the kernel's neighbour entry for their source IP (forged, or a host that moved); the kernel's was used",
                self.neighbours.mismatched
            );
        }
    }
}
