//! connload: connection-level load for the stream-transport benches
//! (benches/e2e/idle_conns.sh, benches/e2e/tls_handshakes.sh).
//!
//! ```text
//! connload idle --target IP:PORT [--tls] --count N [--sources 127.0.0.2-127.0.0.201]
//!     opens N connections (TLS: the handshake completes), prints "READY <n>" on
//!     stdout once they are all open (or failed), then holds them, idle, until
//!     SIGTERM/SIGINT or --hold; a TLS client forgets its session state once its
//!     Finished is sent (the server's state is what is measured).
//! connload handshakes --target IP:PORT --count N --duration S [--parallel K]
//!     full TLS 1.3 handshakes, a new TCP connection each, no resumption, at most
//!     K at once; stops at N handshakes or S seconds; prints one JSON line.
//! ```
//!
//! Nonblocking sockets on one mio poll, K connections in progress at a
//! time; every loop is bounded by --count and a deadline. Loopback use: the
//! source addresses (`--sources`) spread connections over many 127.0.0.x
//! so that 100,000 of them do not run out of ephemeral ports.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use socket2::{Domain, Protocol, Socket, Type};

/// Key exchange groups the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Groups {
    /// X25519 only (what OpenSSL 3.0 and rustls have in common).
    X25519,
    /// rustls' default list (X25519MLKEM768 first, then X25519, P-256, P-384).
    Default,
}

#[derive(Debug, Parser)]
#[command(
    version,
    about = "connection-level load: idle connections, TLS handshakes"
)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Open N connections and hold them idle.
    Idle {
        /// Server address.
        #[arg(long)]
        target: SocketAddr,
        /// Complete a TLS handshake on each.
        #[arg(long)]
        tls: bool,
        /// Connections to open.
        #[arg(long)]
        count: usize,
        /// Source addresses, a range of IPv4 addresses `A-B` (default: the kernel's choice).
        #[arg(long)]
        sources: Option<String>,
        /// Connections being opened at once.
        #[arg(long, default_value_t = 256)]
        parallel: usize,
        /// Trust anchors (PEM) for the server's certificate; without it any is accepted.
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
        /// How long to hold them, seconds.
        #[arg(long, default_value_t = 600)]
        hold: u64,
        /// Give up opening after this many seconds.
        #[arg(long, default_value_t = 300)]
        open_timeout: u64,
    },
    /// Full TLS handshakes, one new connection each.
    Handshakes {
        /// Server address.
        #[arg(long)]
        target: SocketAddr,
        /// Stop after this many handshakes.
        #[arg(long)]
        count: u64,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Handshakes in progress at once.
        #[arg(long, default_value_t = 4)]
        parallel: usize,
        /// Trust anchors (PEM) for the server's certificate; without it any is accepted.
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
        /// Key exchange groups offered.
        #[arg(long, value_enum, default_value = "x25519")]
        groups: Groups,
        /// Source addresses, a range `A-B` (spreads the TIME_WAIT sockets).
        #[arg(long)]
        sources: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("connload: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(a: Args) -> Result<()> {
    install_stop_handler();
    match a.mode {
        Mode::Idle {
            target,
            tls,
            count,
            sources,
            parallel,
            ca,
            hold,
            open_timeout,
        } => {
            let cfg = if tls {
                Some(client_config(ca.as_deref(), Groups::X25519)?)
            } else {
                None
            };
            let sources = parse_sources(sources.as_deref())?;
            idle(
                target,
                cfg,
                count,
                &sources,
                parallel.max(1),
                Duration::from_secs(hold),
                Duration::from_secs(open_timeout),
            )
        }
        Mode::Handshakes {
            target,
            count,
            duration,
            parallel,
            ca,
            groups,
            sources,
        } => {
            let cfg = client_config(ca.as_deref(), groups)?;
            let sources = parse_sources(sources.as_deref())?;
            handshakes(
                target,
                cfg,
                count,
                Duration::from_secs_f64(duration),
                parallel.max(1),
                &sources,
            )
        }
    }
}

/// TLS 1.3 only, no resumption (no session cache, no tickets used), X25519 or the default groups.
fn client_config(ca: Option<&std::path::Path>, groups: Groups) -> Result<Arc<ClientConfig>> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if groups == Groups::X25519 {
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?;
    let mut cfg = match ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("cannot read {}", path.display()))?
            {
                roots.add(c.context("bad PEM")?).context("CA certificate")?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert))
            .with_no_client_auth(),
    };
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// Accepts any server certificate (lab use, `--ca` not given); signatures are still checked.
#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `127.0.0.2-127.0.0.201` → the addresses; none → `[]` (the kernel picks).
fn parse_sources(s: Option<&str>) -> Result<Vec<IpAddr>> {
    let Some(s) = s else {
        return Ok(Vec::new());
    };
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: Ipv4Addr = a.trim().parse().context("--sources")?;
    let b: Ipv4Addr = b.trim().parse().context("--sources")?;
    let (a, b) = (u32::from(a), u32::from(b));
    if a > b || b - a > 1 << 20 {
        bail!("--sources: bad range");
    }
    Ok((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))).collect())
}

/// A nonblocking connect from `src` (if any) to `target`.
fn connect(target: SocketAddr, src: Option<IpAddr>) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    if let Some(ip) = src {
        // Source address and port only: many sources each have their own ports.
        let _ = s.set_reuse_address(true);
        s.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match s.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

/// One connection being opened.
struct Opening {
    sock: TcpStream,
    tls: Option<ClientConnection>,
    connected: bool,
    started: Instant,
}

enum Step {
    Pending,
    Done,
    Failed,
}

/// Drives one connection: TCP connect, then the TLS handshake (if any).
fn drive(o: &mut Opening) -> Step {
    if !o.connected {
        match o.sock.take_error() {
            Ok(Some(_)) | Err(_) => return Step::Failed,
            Ok(None) => {}
        }
        match o.sock.peer_addr() {
            Ok(_) => o.connected = true,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Step::Pending,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => return Step::Pending,
            Err(_) => return Step::Failed,
        }
    }
    let Some(tls) = o.tls.as_mut() else {
        return Step::Done;
    };
    loop {
        let mut progress = false;
        while tls.wants_write() {
            match tls.write_tls(&mut o.sock) {
                Ok(0) => return Step::Failed,
                Ok(_) => progress = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Failed,
            }
        }
        if !tls.is_handshaking() && !tls.wants_write() {
            return Step::Done;
        }
        if tls.wants_read() {
            match tls.read_tls(&mut o.sock) {
                Ok(0) => return Step::Failed,
                Ok(_) => {
                    if tls.process_new_packets().is_err() {
                        // Send the alert, then give up.
                        let _ = tls.write_tls(&mut o.sock);
                        return Step::Failed;
                    }
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Failed,
            }
        }
        if !progress {
            return Step::Pending;
        }
    }
}

/// Opens connections, `parallel` at a time, until `total` are done (or
/// failed, or `deadline`); `on_done` gets each finished one.
struct Opener {
    poll: Poll,
    events: Events,
    slots: Vec<Option<Opening>>,
    target: SocketAddr,
    cfg: Option<Arc<ClientConfig>>,
    sources: Vec<IpAddr>,
    next_src: usize,
    started: u64,
    failed: u64,
    errors: u64,
}

impl Opener {
    fn new(
        target: SocketAddr,
        cfg: Option<Arc<ClientConfig>>,
        sources: &[IpAddr],
        parallel: usize,
    ) -> Result<Self> {
        Ok(Self {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            slots: (0..parallel).map(|_| None).collect(),
            target,
            cfg,
            sources: sources.to_vec(),
            next_src: 0,
            started: 0,
            failed: 0,
            errors: 0,
        })
    }

    fn start(&mut self, i: usize) -> bool {
        let src = if self.sources.is_empty() {
            None
        } else {
            self.next_src = (self.next_src + 1) % self.sources.len();
            self.sources.get(self.next_src).copied()
        };
        let mut sock = match connect(self.target, src) {
            Ok(s) => s,
            Err(e) => {
                self.errors += 1;
                if self.errors <= 3 {
                    eprintln!("connload: connect: {e}");
                }
                return false;
            }
        };
        if self
            .poll
            .registry()
            .register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)
            .is_err()
        {
            return false;
        }
        let tls = match &self.cfg {
            Some(cfg) => {
                match ClientConnection::new(cfg.clone(), ServerName::from(self.target.ip())) {
                    Ok(c) => Some(c),
                    Err(_) => return false,
                }
            }
            None => None,
        };
        self.started += 1;
        if let Some(s) = self.slots.get_mut(i) {
            *s = Some(Opening {
                sock,
                tls,
                connected: false,
                started: Instant::now(),
            });
        }
        true
    }

    /// Runs until `want` connections have been started and finished or
    /// `deadline`; each finished one goes to `done`.
    fn run(
        &mut self,
        want: u64,
        deadline: Instant,
        mut done: impl FnMut(TcpStream, Duration),
    ) -> Result<()> {
        let mut finished = 0u64;
        for i in 0..self.slots.len() {
            if self.started < want && !self.start(i) && self.errors > 100 {
                bail!("too many connect errors");
            }
        }
        while finished + self.failed < self.started || self.started < want {
            if stop_requested() || Instant::now() > deadline {
                break;
            }
            self.poll
                .poll(&mut self.events, Some(Duration::from_millis(100)))?;
            let ready: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
            for i in ready {
                let Some(Some(o)) = self.slots.get_mut(i) else {
                    continue;
                };
                let step = drive(o);
                if matches!(step, Step::Pending) {
                    continue;
                }
                let Some(mut o) = self.slots.get_mut(i).and_then(Option::take) else {
                    continue;
                };
                let _ = self.poll.registry().deregister(&mut o.sock);
                match step {
                    Step::Done => {
                        finished += 1;
                        done(o.sock, o.started.elapsed());
                    }
                    _ => self.failed += 1,
                }
                if self.started < want && !self.start(i) && self.errors > 100 {
                    bail!("too many connect errors");
                }
            }
            // Slots left empty by connect errors get another try.
            if self.started < want {
                for i in 0..self.slots.len() {
                    if self.slots.get(i).is_some_and(Option::is_none)
                        && self.started < want
                        && !self.start(i)
                        && self.errors > 100
                    {
                        bail!("too many connect errors");
                    }
                }
            }
        }
        Ok(())
    }
}

fn idle(
    target: SocketAddr,
    cfg: Option<Arc<ClientConfig>>,
    count: usize,
    sources: &[IpAddr],
    parallel: usize,
    hold: Duration,
    open_timeout: Duration,
) -> Result<()> {
    let t0 = Instant::now();
    let mut held: Vec<TcpStream> = Vec::with_capacity(count);
    let mut op = Opener::new(target, cfg, sources, parallel.min(count.max(1)))?;
    op.run(count as u64, t0 + open_timeout, |s, _| held.push(s))?;
    eprintln!(
        "connload: {} connections open to {target} in {:.1} s ({} failed, {} connect errors)",
        held.len(),
        t0.elapsed().as_secs_f64(),
        op.failed,
        op.errors
    );
    println!("READY {}", held.len());
    let _ = io::stdout().flush();
    let end = Instant::now() + hold;
    let mut buf = [0u8; 4096];
    let mut closed = 0usize;
    while Instant::now() < end && !stop_requested() {
        std::thread::sleep(Duration::from_millis(200));
        // Drain what servers send (TLS 1.3 tickets) now and then; count closes.
        if closed == 0 {
            for s in held.iter_mut() {
                if let Ok(0) = s.read(&mut buf) {
                    closed += 1;
                }
            }
            if closed > 0 {
                eprintln!("connload: the server closed {closed} of the idle connections");
            }
        }
    }
    drop(held);
    Ok(())
}

fn handshakes(
    target: SocketAddr,
    cfg: Arc<ClientConfig>,
    count: u64,
    duration: Duration,
    parallel: usize,
    sources: &[IpAddr],
) -> Result<()> {
    let t0 = Instant::now();
    let cpu0 = process_cpu();
    let mut lat: Vec<u64> = Vec::new();
    let mut op = Opener::new(target, Some(cfg), sources, parallel)?;
    op.run(count, t0 + duration, |s, d| {
        lat.push(d.as_micros() as u64);
        drop(s);
    })?;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = process_cpu() - cpu0;
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let done = lat.len() as f64;
    println!(
        "{{\"handshakes\":{},\"failed\":{},\"connect_errors\":{},\"elapsed_s\":{:.3},\"per_s\":{:.1},\"client_cpu_s\":{:.3},\"latency_us\":{{\"p50\":{},\"p99\":{}}}}}",
        lat.len(),
        op.failed,
        op.errors,
        elapsed,
        if elapsed > 0.0 { done / elapsed } else { 0.0 },
        cpu,
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}

/// User + system CPU seconds of this process.
fn process_cpu() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    (tick(11) + tick(12)) / 100.0
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn stop_requested() -> bool {
    STOP.load(std::sync::atomic::Ordering::Relaxed)
}

#[allow(unsafe_code)]
fn install_stop_handler() {
    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, handler) };
    }
}
