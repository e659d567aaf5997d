//! The thread-per-core runtime: one shard per CPU, pinned, each owning its
//! sockets, its I/O driver, its buffers, its service state and its counters.
//! Nothing on the hot path is shared or locked.
//!
//! ```text
//!            ┌──────────── shard 0 (CPU a) ────────────┐   ┌── shard 1 (CPU b) ──┐
//! :5060 ─┬─► │ public socket (SO_REUSEPORT)             │   │ public socket       │
//!        │   │ shard socket  (own port: in our Vias)    │   │ shard socket        │
//!        │   │ driver: io_uring | mio ─► Service (sans-IO)   │ …                   │
//!        │   └──────────────────────────────────────────┘   └─────────────────────┘
//!        └─ the kernel spreads flows across the public sockets by 4-tuple hash
//! ```
//!
//! Why a shard socket of its own: responses come back to the sent-by of the
//! Via we added, so naming the shard's own port there brings each response
//! to the shard that forwarded the request without any hand-off. Requests
//! from the same client flow (retransmissions, CANCEL, ACK) hash to the same
//! public socket. With one shard, the public socket serves both roles.
//!
//! The driver is chosen at start: io_uring when the kernel supports what we
//! use (probed, as monoio does), else mio.

pub mod affinity;
pub mod bufring;
pub mod control;
pub mod mesh;
pub mod mio;
pub mod remote;
pub mod socket;
pub mod streams;
pub mod sys;
pub mod trim;
pub mod turn;
pub mod uring;
pub mod xdp;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use std::collections::VecDeque;

use crate::config::{Config, IoMode};
use crate::location::Record;
use crate::proxy::stateful::MeshMsg;
use crate::proxy::{Counters, Identity, LocalSocket, Service, SocketRole};
use crate::store::worker::{Done, Worker};
use crate::store::Store;
use crate::time::{Duration, Instant};
use crate::transport::Outbox;

/// Datagrams per receive batch.
pub const RECV_BATCH: usize = 32;
/// Size of each receive buffer: the largest UDP payload.
pub const RECV_BUF: usize = 65_536;
/// Bytes of the per-shard outbox arena.
pub const OUTBOX_BYTES: usize = 2 << 20;
/// Datagrams the outbox holds before a flush.
pub const OUTBOX_ITEMS: usize = 256;
/// The longest a shard sleeps, so it notices a stop request promptly.
pub const MAX_WAIT: Duration = Duration::from_millis(100);

/// The monotonic clock, read once per loop turn and passed to the core.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: std::time::Instant,
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
        }
    }

    /// The wall clock, µs since the Unix epoch (0 if the clock is before it).
    pub fn wall_us(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    /// Time since the epoch.
    pub fn now(&self) -> Instant {
        Instant::from_micros(u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// How long to wait for I/O before the next timer is due (at most [`MAX_WAIT`]).
pub fn wait_for(deadline: Option<Instant>, now: Instant) -> std::time::Duration {
    let d = deadline.map_or(MAX_WAIT, |t| t.saturating_since(now).min(MAX_WAIT));
    d.into()
}

/// What a driver counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Datagrams received.
    pub rx: u64,
    /// Datagrams sent.
    pub tx: u64,
    /// Receive errors (other than would-block).
    pub rx_errors: u64,
    /// Datagrams larger than a receive buffer (dropped).
    pub rx_truncated: u64,
    /// Datagrams the kernel refused to send.
    pub tx_errors: u64,
    /// Datagrams dropped because the socket stayed full.
    pub tx_dropped: u64,
    /// Loop turns.
    pub turns: u64,
    /// Datagrams received from the AF_XDP socket (also in `rx`).
    pub xdp_rx: u64,
    /// Datagrams sent as frames on the AF_XDP socket (also in `tx`).
    pub xdp_tx: u64,
    /// Datagrams the AF_XDP driver sent through a kernel socket instead
    /// (neighbour or route unknown, another interface, larger than the MTU, TX ring full).
    pub xdp_kernel_tx: u64,
    /// Frames the AF_XDP socket delivered that were not ours to take
    /// (bad checksum, truncated, fragment, another port): dropped.
    pub xdp_skipped: u64,
}

impl DriverStats {
    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &Self) {
        self.rx += o.rx;
        self.tx += o.tx;
        self.rx_errors += o.rx_errors;
        self.rx_truncated += o.rx_truncated;
        self.tx_errors += o.tx_errors;
        self.tx_dropped += o.tx_dropped;
        self.turns += o.turns;
        self.xdp_rx += o.xdp_rx;
        self.xdp_tx += o.xdp_tx;
        self.xdp_kernel_tx += o.xdp_kernel_tx;
        self.xdp_skipped += o.xdp_skipped;
    }
}

/// Mesh messages that found the receiver's inbox full and wait for the next turn.
const PENDING_MAX: usize = 4096;

impl core::fmt::Debug for ShardIo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ShardIo")
            .field("mesh", &self.mesh.is_some())
            .field("store", &self.store.is_some())
            .field("partition", &self.partition)
            .field("stats", &self.stats)
            .finish()
    }
}

/// What a shard does around the datagrams of a turn: messages from other
/// shards, the durable store of its registrar partition, messages to other
/// shards. Both drivers call [`ShardIo::begin`] before the datagrams of a
/// turn and [`ShardIo::end`] before flushing the outbox.
pub struct ShardIo {
    /// Where this shard publishes its counters about once a second.
    pub metrics: Option<Arc<std::sync::Mutex<ShardReport>>>,
    last_publish: Instant,
    mesh: Option<mesh::Mesh<MeshMsg>>,
    /// The partition's store, on a thread of its own.
    store: Option<Worker>,
    /// The store's wake-up when there is no mesh to share one with.
    store_wake: Option<Arc<sys::EventFd>>,
    partition: u16,
    batch: Vec<Record>,
    pending: VecDeque<(usize, MeshMsg)>,
    /// Questions from the control socket.
    control: Option<Arc<control::Inbox>>,
    /// Changes other nodes made (shared store), for this shard's partition.
    remote: Option<Arc<remote::Inbox>>,
    /// When each append in flight was submitted (they complete in order).
    submitted: VecDeque<Instant>,
    /// Store append latency, µs (submit to completion: the fsync included
    /// when `[store] fsync`); published with the counters.
    store_latency: Option<hdrhistogram::Histogram<u64>>,
    /// Receive-to-flush time of the turns that received something, µs.
    turn_latency: Option<hdrhistogram::Histogram<u64>>,
    /// What this I/O counted.
    pub stats: IoStats,
}

/// Counters of [`ShardIo`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Store appends that failed.
    pub store_errors: u64,
    /// Records appended.
    pub records: u64,
    /// Compactions done.
    pub compactions: u64,
    /// Mesh messages sent.
    pub mesh_sent: u64,
    /// Mesh messages dropped (receiver stalled, pending queue full).
    pub mesh_dropped: u64,
}

impl ShardIo {
    /// No mesh, no store (one shard, no registrar).
    pub fn none() -> Self {
        Self {
            metrics: None,
            last_publish: Instant::ZERO,
            mesh: None,
            store: None,
            store_wake: None,
            partition: 0,
            batch: Vec::new(),
            pending: VecDeque::new(),
            control: None,
            remote: None,
            submitted: VecDeque::new(),
            store_latency: None,
            turn_latency: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2).ok(),
            stats: IoStats::default(),
        }
    }

    /// A shard's I/O: its end of the mesh and its partition's store (moved
    /// to a store thread: appends complete in a later turn; the thread
    /// wakes the shard through the mesh's eventfd or one of its own).
    pub fn new(
        mesh: Option<mesh::Mesh<MeshMsg>>,
        store: Option<Box<dyn Store + Send>>,
        partition: u16,
    ) -> io::Result<Self> {
        let (store, store_wake, control, remote) = match store {
            Some(store) => {
                let (waker, own) = match mesh.as_ref().and_then(mesh::Mesh::waker) {
                    Some(w) => (w, None),
                    None => {
                        let w = Arc::new(sys::EventFd::new()?);
                        (w.clone(), Some(w))
                    }
                };
                let control = Arc::new(control::Inbox::new(waker.clone()));
                let remote = Arc::new(remote::Inbox::new(waker.clone()));
                let wake = Box::new(move || waker.notify());
                (
                    Some(Worker::spawn(store, partition, wake)?),
                    own,
                    Some(control),
                    Some(remote),
                )
            }
            None => (None, None, None, None),
        };
        Ok(Self {
            metrics: None,
            last_publish: Instant::ZERO,
            mesh,
            store,
            store_wake,
            partition,
            batch: Vec::new(),
            pending: VecDeque::new(),
            control,
            remote,
            submitted: VecDeque::new(),
            store_latency: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2).ok(),
            turn_latency: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2).ok(),
            stats: IoStats::default(),
        })
    }

    /// Records how long a turn that received something took, receive to flush.
    pub fn record_turn(&mut self, d: Duration) {
        if let Some(h) = &mut self.turn_latency {
            let _ = h.record(d.as_micros().max(1));
        }
    }

    /// This shard's end of the control path (shards with a store only).
    pub fn control(&self) -> Option<Arc<control::Inbox>> {
        self.control.clone()
    }

    /// The eventfd other shards write to wake this one.
    pub fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        self.mesh
            .as_ref()
            .and_then(mesh::Mesh::wake_fd)
            .or_else(|| self.store_wake.as_ref().map(|w| w.raw()))
    }

    /// Before blocking: false when the shard must not sleep (mail or a
    /// store completion waiting).
    pub fn prepare_sleep(&self) -> bool {
        self.mesh.as_ref().is_none_or(mesh::Mesh::prepare_sleep)
            && self.pending.is_empty()
            && self.control.as_ref().is_none_or(|c| !c.pending())
            && self.remote.as_ref().is_none_or(|r| r.is_empty())
            && self.store.as_ref().is_none_or(|w| !w.has_done())
    }

    /// After a wait; `fired` when the wake-up eventfd was readable.
    pub fn woke(&self, fired: bool) {
        if let Some(m) = &self.mesh {
            m.woke(fired);
        }
        if let (Some(w), true) = (&self.store_wake, fired) {
            w.drain();
        }
    }

    /// This shard's end of the remote-change path (with a store).
    pub fn remote(&self) -> Option<Arc<remote::Inbox>> {
        self.remote.clone()
    }

    /// Appends submitted to the store and not yet completed.
    pub fn store_in_flight(&self) -> usize {
        self.store.as_ref().map_or(0, Worker::in_flight)
    }

    /// Hands the store's completions (the answers that waited for them) and
    /// the messages from other shards to the service (as many as the
    /// outbox has room for).
    pub fn begin<S: Service>(&mut self, now: Instant, service: &mut S, out: &mut Outbox) {
        if let Some(r) = &self.remote {
            if r.take_reseed() {
                service.reseed(now);
            }
            for _ in 0..64 {
                match r.next() {
                    Some(batch) => service.handle_remote(now, batch),
                    None => break,
                }
            }
        }
        if let Some(c) = &self.control {
            while let Some(r) = c.next() {
                let answer = service.control(now, &r.query);
                // The asker may have given up: nothing to do then.
                let _ = r.reply.try_send(answer);
            }
        }
        if let Some(w) = &mut self.store {
            while let Some(done) = w.poll_done() {
                match done {
                    Done::Appended { records, result } => {
                        if let (Some(t), Some(h)) =
                            (self.submitted.pop_front(), self.store_latency.as_mut())
                        {
                            let _ = h.record(now.saturating_since(t).as_micros().max(1));
                        }
                        let ok = match result {
                            Ok(()) => {
                                self.stats.records += records as u64;
                                true
                            }
                            Err(e) => {
                                self.stats.store_errors += 1;
                                // An outage fails every turn's batch: log the 1st, 2nd, 4th…
                                if self.stats.store_errors.is_power_of_two() {
                                    tracing::error!(
                                        "store append failed ({} so far): {e}",
                                        self.stats.store_errors
                                    );
                                }
                                false
                            }
                        };
                        service.persisted(now, ok, out);
                    }
                    Done::Compacted(Ok(())) => self.stats.compactions += 1,
                    Done::Compacted(Err(e)) => tracing::warn!("store compaction failed: {e}"),
                }
            }
        }
        let Some(m) = &self.mesh else { return };
        for _ in 0..1024 {
            if !out.has_room() {
                break;
            }
            match m.recv() {
                Some(msg) => service.handle_mesh(now, msg, out),
                None => break,
            }
        }
    }

    /// About once a second: copies the counters where the main thread reads
    /// them (the one lock a shard takes, off the datagram path).
    pub fn publish<S: Service>(
        &mut self,
        now: Instant,
        service: &S,
        driver: &DriverStats,
        conns: Option<&crate::transport::conn::Connections>,
    ) {
        let Some(m) = &self.metrics else { return };
        if now.saturating_since(self.last_publish) < Duration::from_secs(1) {
            return;
        }
        self.last_publish = now;
        if let Ok(mut r) = m.lock() {
            r.id = self.partition;
            r.driver = *driver;
            r.service = service.counters().clone();
            r.io = self.stats;
            if let Some(c) = conns {
                r.conn = c.stats;
                r.connections = c.len();
                r.connections_by_transport = c.by_transport();
            }
            copy_histogram(&mut r.lag, service.replication_lag());
            copy_histogram(&mut r.response_time, service.response_time());
            copy_histogram(&mut r.turn_latency, self.turn_latency.as_ref());
            copy_histogram(&mut r.store_latency, self.store_latency.as_ref());
        }
    }

    /// Queues a message for shard `to` (sent at the end of the turn, with
    /// the service's own).
    pub fn hand_over(&mut self, to: usize, msg: MeshMsg) {
        if self.mesh.is_none() {
            self.stats.mesh_dropped += 1;
        } else if self.pending.len() < PENDING_MAX {
            self.pending.push_back((to, msg));
        } else {
            self.stats.mesh_dropped += 1;
        }
    }

    /// Submits what the service must persist to the store (it completes
    /// in a later turn, [`ShardIo::begin`]); without a store, lets the
    /// service release it at once. Submits a compaction when the store
    /// asked for one, and sends the service's mesh messages.
    pub fn end<S: Service>(&mut self, now: Instant, service: &mut S, out: &mut Outbox) {
        self.batch.clear();
        if service.poll_persist(&mut self.batch) {
            match &mut self.store {
                Some(w) => {
                    if w.append(core::mem::take(&mut self.batch)) {
                        self.submitted.push_back(now);
                    } else {
                        self.stats.store_errors += 1;
                        tracing::error!("store thread gone: append refused");
                        service.persisted(now, false, out);
                    }
                }
                None => service.persisted(now, true, out),
            }
        }
        if let Some(w) = &mut self.store {
            if w.take_compaction_wish() {
                if let Some(state) = service.partition_state() {
                    w.compact(state);
                }
            }
        }
        let Some(m) = &self.mesh else {
            while service.poll_mesh().is_some() {}
            return;
        };
        let mut retry = self.pending.len();
        while let Some((to, msg)) = if retry > 0 {
            retry -= 1;
            self.pending.pop_front()
        } else {
            service.poll_mesh()
        } {
            match m.send(to, msg) {
                Ok(()) => self.stats.mesh_sent += 1,
                Err(msg) if self.pending.len() < PENDING_MAX => self.pending.push_back((to, msg)),
                Err(_) => self.stats.mesh_dropped += 1,
            }
        }
    }
}

/// The driver a shard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    /// io_uring: multishot recvmsg into a provided-buffer ring, batched sends.
    Uring,
    /// mio: epoll readiness, recvmmsg/sendmmsg.
    Mio,
    /// AF_XDP sockets (with mio for kernel sockets and streams).
    Xdp,
}

impl DriverKind {
    /// Resolves `--io`: `auto` probes io_uring and falls back to mio.
    pub fn choose(mode: IoMode) -> Result<(Self, Option<String>), String> {
        match mode {
            IoMode::Mio => Ok((Self::Mio, None)),
            IoMode::Xdp => Ok((Self::Xdp, None)),
            IoMode::Uring => uring::probe().map(|()| (Self::Uring, None)),
            IoMode::Auto => match uring::probe() {
                Ok(()) => Ok((Self::Uring, None)),
                Err(why) => Ok((Self::Mio, Some(why))),
            },
        }
    }

    /// Name for logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Uring => "io_uring",
            Self::Mio => "mio",
            Self::Xdp => "af_xdp",
        }
    }
}

/// The sockets and placement of one shard, bound before its thread starts
/// (so a port in use is reported at once, with its address).
#[derive(Debug)]
pub struct ShardPlan {
    /// Shard index.
    pub id: u16,
    /// CPU to pin to.
    pub cpu: Option<usize>,
    /// Bound UDP sockets; index = [`crate::transport::SocketId`].
    pub sockets: Vec<UdpSocket>,
    /// Stream listeners, with their ids (after the UDP sockets') and transports.
    pub listeners: Vec<Listener>,
    /// What the core knows of each socket.
    pub locals: Vec<LocalSocket>,
    /// Mesh end and store of this shard.
    pub io: Option<ShardIo>,
    /// io_uring completion coalescing, µs (0: off).
    pub coalesce_us: u32,
    /// Limits of stream connections.
    pub conn: crate::transport::conn::ConnLimits,
    /// TLS configurations (set by the caller when a listener needs them).
    pub tls: Option<Arc<streams::TlsReload>>,
    /// The AF_XDP socket and interface of this shard (`--io xdp`), from [`xdp::prepare`].
    pub xdp: Option<xdp::ShardXdp>,
}

/// A stream listener of a shard.
#[derive(Debug)]
pub struct Listener {
    /// Its id in the shard's socket table.
    pub id: crate::transport::SocketId,
    /// TCP, TLS, WS or WSS.
    pub transport: crate::transport::Transport,
    /// The bound, listening, nonblocking socket.
    pub socket: std::net::TcpListener,
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// Another process serves the address already (SO_REUSEPORT would let
    /// us share it and split its traffic with that process).
    #[error("cannot bind {0}: already in use by another process (a second sipedge?)")]
    InUse(SocketAddr),
    /// The CPU set could not be read.
    #[error("cannot read the CPU affinity mask: {0}")]
    Affinity(io::Error),
    /// The requested driver is unavailable.
    #[error("io_uring unavailable: {0}")]
    Driver(String),
    /// A thread could not be spawned.
    #[error("cannot start shard thread: {0}")]
    Spawn(io::Error),
}

/// How long start-up waits for a port's previous holder to let it go.
const PORT_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// With more than one shard and `[socket] steer = "source"` (the default),
/// makes the reuseport group of `sock` (shard 0's, bound first: the group's
/// sockets are the shards in order) pick the shard by the source address.
fn steer(
    cfg: &Config,
    sock: &impl std::os::fd::AsRawFd,
    bound: SocketAddr,
) -> Result<(), StartError> {
    if cfg.shards < 2 || cfg.steer != crate::config::Steer::Source {
        return Ok(());
    }
    let prefix = cfg.flood.as_ref().and_then(|f| f.ipv6_prefix).unwrap_or(64);
    let n = u32::try_from(cfg.shards).unwrap_or(u32::MAX);
    socket::steer_by_source(sock.as_raw_fd(), bound.is_ipv6(), prefix, n).map_err(|source| {
        StartError::Bind {
            addr: bound,
            source,
        }
    })
}

/// Binds every shard's sockets per `cfg`: the public sockets with
/// SO_REUSEPORT on each listen address, and with more than one shard, a
/// shard socket per listen address on an ephemeral port of the same IP.
pub fn plan(cfg: &Config, warnings: &mut Vec<String>) -> Result<Vec<ShardPlan>, StartError> {
    let cpus = affinity::allowed_cpus().map_err(StartError::Affinity)?;
    let mut plans = Vec::with_capacity(cfg.shards);
    // The first shard binds port 0 listeners; the others reuse the port it got.
    // UDP sockets first (their ids index the drivers' socket lists), then
    // the stream listeners.
    let mut listen_addrs: Vec<SocketAddr> = cfg
        .listen
        .iter()
        .filter(|l| !l.transport.is_stream())
        .map(|l| l.addr)
        .collect();
    let mut stream_addrs: Vec<(crate::transport::Transport, SocketAddr)> = cfg
        .listen
        .iter()
        .filter(|l| l.transport.is_stream())
        .map(|l| (l.transport, l.addr))
        .collect();
    // SO_REUSEPORT lets any process of the same user join a port: a second
    // sipedge started by mistake would silently take half the traffic, and
    // so would the sockets of a predecessor killed a moment ago (io_uring
    // releases them asynchronously, after the process is gone): its share of
    // the datagrams would be lost. A probe bound without SO_REUSEPORT fails
    // while anyone holds the port; a dying holder lets go within
    // PORT_RELEASE_WAIT, a live one does not.
    let probe = |addr: SocketAddr, stream: bool| -> Result<(), StartError> {
        let deadline = std::time::Instant::now() + PORT_RELEASE_WAIT;
        loop {
            let r = if stream {
                socket::probe_tcp(addr)
            } else {
                socket::bind_udp(addr, false, 1 << 12, 1 << 12).map(drop)
            };
            match r {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    if std::time::Instant::now() >= deadline {
                        return Err(StartError::InUse(addr));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(source) => return Err(StartError::Bind { addr, source }),
            }
        }
    };
    for addr in listen_addrs.iter().filter(|a| a.port() != 0) {
        probe(*addr, false)?;
    }
    for (_, addr) in stream_addrs.iter().filter(|(_, a)| a.port() != 0) {
        probe(*addr, true)?;
    }
    for id in 0..cfg.shards {
        let mut sockets = Vec::new();
        let mut locals = Vec::new();
        let mut listeners = Vec::new();
        for addr in listen_addrs.iter_mut() {
            let (sock, granted) = socket::bind_udp(*addr, true, cfg.recv_buffer, cfg.send_buffer)
                .map_err(|source| StartError::Bind {
                addr: *addr,
                source,
            })?;
            let bound = socket::local_addr(&sock).map_err(|source| StartError::Bind {
                addr: *addr,
                source,
            })?;
            *addr = bound;
            if id == 0 {
                steer(cfg, &sock, bound)?;
            }
            if id == 0 && granted.recv < cfg.recv_buffer {
                warnings.push(format!(
                    "SO_RCVBUF on {bound}: asked {} KiB, kernel granted {} KiB (raise net.core.rmem_max; see `sipedge tune`)",
                    cfg.recv_buffer / 1024,
                    granted.recv / 2 / 1024
                ));
            }
            let advertised = SocketAddr::new(cfg.advertise.unwrap_or(bound.ip()), bound.port());
            locals.push(LocalSocket::advertised(
                bound,
                SocketRole::Public,
                advertised,
            ));
            sockets.push(sock);
            if cfg.shards > 1 {
                let own = SocketAddr::new(bound.ip(), 0);
                let (s2, _) = socket::bind_udp(own, false, cfg.recv_buffer, cfg.send_buffer)
                    .map_err(|source| StartError::Bind { addr: own, source })?;
                let b2 = socket::local_addr(&s2)
                    .map_err(|source| StartError::Bind { addr: own, source })?;
                let adv2 = SocketAddr::new(cfg.advertise.unwrap_or(b2.ip()), b2.port());
                locals.push(LocalSocket::advertised(b2, SocketRole::Shard, adv2));
                sockets.push(s2);
            }
        }
        for (transport, addr) in stream_addrs.iter_mut() {
            let l = socket::bind_tcp(*addr, 4096).map_err(|source| StartError::Bind {
                addr: *addr,
                source,
            })?;
            let bound = socket::tcp_local_addr(&l).map_err(|source| StartError::Bind {
                addr: *addr,
                source,
            })?;
            *addr = bound;
            if id == 0 {
                steer(cfg, &l, bound)?;
            }
            let advertised = SocketAddr::new(cfg.advertise.unwrap_or(bound.ip()), bound.port());
            let sid = crate::transport::SocketId(u8::try_from(locals.len()).unwrap_or(u8::MAX));
            locals.push(LocalSocket::listener(
                *transport,
                bound,
                SocketRole::Public,
                advertised,
            ));
            listeners.push(Listener {
                id: sid,
                transport: *transport,
                socket: l,
            });
        }
        plans.push(ShardPlan {
            id: id as u16,
            cpu: cpus.get(id % cpus.len().max(1)).copied(),
            sockets,
            listeners,
            locals,
            io: None,
            coalesce_us: cfg.coalesce_us,
            conn: cfg.conn,
            tls: None,
            xdp: None,
        });
    }
    Ok(plans)
}

/// The identity of shard `plan` serving `cfg`, among `plans` (all of them).
pub fn identity(cfg: &Config, plan: &ShardPlan, plans: &[ShardPlan], secret: u64) -> Identity {
    Identity {
        shard_id: plan.id,
        sockets: plan.locals.clone(),
        siblings: siblings(plan.id, plans),
        domains: cfg
            .domains
            .iter()
            .map(|d| d.as_bytes().to_vec().into_boxed_slice())
            .collect(),
        secret,
    }
}

/// The own UDP addresses (bound and advertised) of every shard but `id`.
pub fn siblings(id: u16, plans: &[ShardPlan]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for p in plans.iter().filter(|p| p.id != id) {
        for l in p.locals.iter().filter(|l| {
            l.transport == crate::transport::Transport::Udp && l.role == SocketRole::Shard
        }) {
            out.push(l.addr);
            if l.advertised != l.addr {
                out.push(l.advertised);
            }
        }
    }
    out
}

/// Copies `src` into `dst`, reusing `dst`'s allocation once it has one.
fn copy_histogram(
    dst: &mut Option<hdrhistogram::Histogram<u64>>,
    src: Option<&hdrhistogram::Histogram<u64>>,
) {
    let Some(src) = src else { return };
    match dst {
        Some(d) => {
            d.reset();
            let _ = d.add(src);
        }
        None => *dst = Some(src.clone()),
    }
}

/// What a shard thread returns when it stops.
#[derive(Debug, Clone, Default)]
pub struct ShardReport {
    /// Shard index.
    pub id: u16,
    /// Driver counters.
    pub driver: DriverStats,
    /// Service counters.
    pub service: Counters,
    /// Mesh and store counters.
    pub io: IoStats,
    /// Connection-table counters (stream transports).
    pub conn: crate::transport::conn::ConnStats,
    /// Open stream connections.
    pub connections: usize,
    /// Open stream connections by [`crate::transport::Transport::index`].
    pub connections_by_transport: [usize; 5],
    /// Replication lag of the location feed (µs), if the service keeps a replica.
    pub lag: Option<hdrhistogram::Histogram<u64>>,
    /// Request arrival to the first response (other than 100 Trying) sent
    /// back (µs), if the service keeps transactions.
    pub response_time: Option<hdrhistogram::Histogram<u64>>,
    /// Store append latency (µs), if the shard has a store.
    pub store_latency: Option<hdrhistogram::Histogram<u64>>,
    /// Receive-to-flush time of turns that received something (µs).
    pub turn_latency: Option<hdrhistogram::Histogram<u64>>,
}

/// Starts one thread per plan, each pinned to its CPU, running the service
/// `make` builds for it (on this thread, from the shard's identity) on
/// `driver` until `stop` is set.
pub fn spawn<S, F>(
    plans: Vec<ShardPlan>,
    driver: DriverKind,
    cfg: &Config,
    secret: u64,
    stop: Arc<AtomicBool>,
    mut make: F,
) -> Result<Vec<JoinHandle<io::Result<ShardReport>>>, StartError>
where
    S: Service + Send + 'static,
    F: FnMut(Identity) -> S,
{
    let mut handles = Vec::with_capacity(plans.len());
    let identities: Vec<Identity> = plans
        .iter()
        .map(|p| identity(cfg, p, &plans, secret))
        .collect();
    for (plan, id) in plans.into_iter().zip(identities) {
        let service = make(id);
        let stop = stop.clone();
        let h = std::thread::Builder::new()
            .name(format!("shard-{}", plan.id))
            .spawn(move || run_shard(plan, driver, service, &stop))
            .map_err(StartError::Spawn)?;
        handles.push(h);
    }
    Ok(handles)
}

fn run_shard<S: Service>(
    plan: ShardPlan,
    driver: DriverKind,
    mut service: S,
    stop: &AtomicBool,
) -> io::Result<ShardReport> {
    if let Some(cpu) = plan.cpu {
        if let Err(e) = affinity::pin_current_thread(cpu) {
            tracing::warn!(shard = plan.id, cpu, "cannot pin shard: {e}");
        }
    }
    let shard_id = plan.id;
    let mut io = plan.io.unwrap_or_else(ShardIo::none);
    let mut streams = (!plan.listeners.is_empty()).then(|| {
        streams::Streams::new(
            crate::transport::conn::Connections::new(plan.id, plan.conn),
            plan.tls.clone(),
        )
    });
    // io_uring serves stream sockets where the kernel has what it needs
    // (multishot accept and recv: 6.0); else the shard falls back to mio.
    let stream_probe = if driver == DriverKind::Uring && !plan.listeners.is_empty() {
        uring::probe_streams()
    } else {
        Ok(())
    };
    let stats = match driver {
        DriverKind::Xdp => {
            let Some(x) = plan.xdp else {
                return Err(io::Error::other("af_xdp: the shard was not prepared"));
            };
            let mut d = xdp::XdpDriver::new(
                x,
                plan.sockets,
                plan.listeners,
                io.wake_fd(),
                plan.coalesce_us,
            )?;
            turn::run(&mut d, &mut service, &mut io, streams.as_mut(), stop)?
        }
        DriverKind::Mio => {
            let mut d = mio::MioDriver::with_streams(plan.sockets, plan.listeners, io.wake_fd())?;
            turn::run(&mut d, &mut service, &mut io, streams.as_mut(), stop)?
        }
        DriverKind::Uring if stream_probe.is_err() => {
            let why = stream_probe.err().unwrap_or_default();
            tracing::warn!(
                shard = plan.id,
                "io_uring cannot serve stream sockets here ({why}): this shard runs the mio driver"
            );
            let mut d = mio::MioDriver::with_streams(plan.sockets, plan.listeners, io.wake_fd())?;
            turn::run(&mut d, &mut service, &mut io, streams.as_mut(), stop)?
        }
        DriverKind::Uring => {
            let mut d =
                uring::UringDriver::with_streams(plan.sockets, plan.listeners, io.wake_fd())?;
            if !d.set_coalesce(plan.coalesce_us) {
                tracing::warn!(
                    "io coalescing needs kernel 6.12 (IORING_FEAT_MIN_TIMEOUT); running without it"
                );
            }
            turn::run(&mut d, &mut service, &mut io, streams.as_mut(), stop)?
        }
    };
    Ok(ShardReport {
        id: shard_id,
        driver: stats,
        service: service.counters().clone(),
        io: io.stats,
        conn: streams.as_ref().map(|s| s.conns.stats).unwrap_or_default(),
        connections: streams.as_ref().map_or(0, |s| s.conns.len()),
        connections_by_transport: streams.as_ref().map_or([0; 5], |s| s.conns.by_transport()),
        lag: service.replication_lag().cloned(),
        response_time: service.response_time().cloned(),
        store_latency: io.store_latency.clone(),
        turn_latency: io.turn_latency.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_no_longer_than_the_next_timer() {
        let now = Instant::from_micros(1_000);
        assert_eq!(wait_for(None, now), std::time::Duration::from_millis(100));
        assert_eq!(
            wait_for(Some(Instant::from_micros(3_000)), now),
            std::time::Duration::from_millis(2)
        );
        assert_eq!(
            wait_for(Some(Instant::ZERO), now),
            std::time::Duration::ZERO
        );
    }
}
