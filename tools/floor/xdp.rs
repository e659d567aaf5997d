//! floor_xdp: the physical floor of a UDP relay on AF_XDP, for
//! `benches/e2e/xdp.sh` — what `floor.c` is for kernel sockets.
//!
//! It does what a stateless relay on frames must at least do with a
//! datagram, and nothing else: take the frame off the RX ring, parse
//! Ethernet/IP/UDP (checksums verified, as the kernel would), pick the
//! destination, build a new frame (headers and checksums) around the same
//! payload in a TX frame, hand it to the TX ring, give the RX frame back.
//! No SIP parsing. It uses sipedge's own pieces (the XDP program, the
//! socket and rings, the frame codec), so the gap between it and
//! `sipedge --io xdp` is the SIP work and the shard's turn.
//!
//! Routing, as in `floor.c`: a datagram from UPSTREAM goes to the last
//! client seen; any other makes its sender the client and goes to UPSTREAM.
//! Next-hop MACs are the ones the frames arrived with (the bench's peers
//! are on the link).
//!
//! ```text
//! floor_xdp IFACE LISTEN_IP:PORT UPSTREAM_IP:PORT [GATHER_US]
//! ```
//! One socket on queue 0 (give the interface one queue). With a
//! `GATHER_US` above 0, after a wake-up with fewer than a batch of frames it
//! sleeps that long first, as sipedge's drivers coalesce wake-ups
//! (`[uring] coalesce_us`).
//! On SIGINT/SIGTERM it prints `floor mode=X datagrams=N batches=M` and
//! exits 0. Build: `cargo build --release --example floor_xdp`.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use sipedge::shard::xdp::{bpf, netlink, xsk::Xsk, Steering};
use sipedge::transport::frame::{self, Link};

const BATCH: u32 = 64;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: floor_xdp IFACE LISTEN_IP:PORT UPSTREAM_IP:PORT [GATHER_US]";
    let (Some(iface), Some(listen), Some(upstream)) = (args.get(1), args.get(2), args.get(3))
    else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let (Ok(listen), Ok(upstream)) = (listen.parse::<SocketAddr>(), upstream.parse::<SocketAddr>())
    else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let gather = Duration::from_micros(args.get(4).and_then(|g| g.parse().ok()).unwrap_or(0));
    match run(iface, listen, upstream, gather) {
        Ok((dgrams, batches)) => {
            println!("floor mode=X datagrams={dgrams} batches={batches}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("floor_xdp: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(
    iface: &str,
    listen: SocketAddr,
    upstream: SocketAddr,
    gather: Duration,
) -> Result<(u64, u64), String> {
    let ifindex = netlink::ifindex(iface).ok_or_else(|| format!("no interface {iface:?}"))?;
    let steering = Steering::attach(ifindex, &[listen], 1, bpf::XDP_FLAGS_DRV_MODE)?;
    let mut xsk = Xsk::open(ifindex, 0, false).map_err(|e| format!("AF_XDP socket: {e}"))?;
    steering
        .insert(0, xsk.fd())
        .map_err(|e| format!("XSK map: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| e.to_string())?;
    }
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let fd = xsk.fd();
    poll.registry()
        .register(&mut SourceFd(&fd), Token(0), Interest::READABLE)
        .map_err(|e| e.to_string())?;
    let mut events = Events::with_capacity(4);
    let mut links: HashMap<IpAddr, Link> = HashMap::new();
    let mut client: Option<SocketAddr> = None;
    let mut rx = Vec::with_capacity(BATCH as usize);
    let (mut dgrams, mut batches, mut ip_id) = (0u64, 0u64, 0u16);
    while !stop.load(Ordering::Relaxed) {
        if xsk.rx_waiting() == 0 {
            // Interrupted by a signal: the loop checks `stop`.
            let _ = poll.poll(&mut events, Some(Duration::from_millis(100)));
            let waiting = xsk.rx_waiting();
            if waiting == 0 {
                continue;
            }
            if !gather.is_zero() && waiting < BATCH {
                std::thread::sleep(gather);
            }
        }
        xsk.reap();
        rx.clear();
        xsk.take_rx(BATCH, &mut rx);
        let mut sent = 0u32;
        for &(addr, len) in &rx {
            let data = xsk.frame(addr, len);
            let Ok(u) = frame::parse(data, true) else {
                continue;
            };
            let back = Link {
                dst_mac: u.link.src_mac,
                src_mac: u.link.dst_mac,
                vlan: u.link.vlan,
            };
            links.insert(u.src.ip(), back);
            let to = if u.src == upstream {
                match client {
                    Some(c) => c,
                    None => continue,
                }
            } else {
                client = Some(u.src);
                upstream
            };
            let Some(link) = links.get(&to.ip()).copied() else {
                continue;
            };
            // Where the payload sits in the frame: the TX frame is built
            // from the RX frame's bytes directly (one copy).
            let at = u.payload.as_ptr() as usize - data.as_ptr() as usize;
            let payload = at..at + u.payload.len();
            ip_id = ip_id.wrapping_add(1);
            let id = ip_id;
            if xsk.send_from(addr, len, |rx, buf| {
                let p = rx.get(payload)?;
                frame::build(buf, &link, listen, to, p, id).ok()
            }) {
                sent += 1;
            }
        }
        xsk.recycle(&rx);
        if xsk.fill_needs_wakeup() {
            xsk.wake_rx();
        }
        if sent > 0 {
            xsk.submit_tx().map_err(|e| format!("TX: {e}"))?;
            dgrams += u64::from(sent);
            batches += 1;
        }
    }
    Ok((dgrams, batches))
}
