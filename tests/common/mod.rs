//! Shared harness of the integration tests: the real `sipedge` binary on
//! 127.0.0.1 (port 0, discovered from its startup line), run under each
//! I/O driver, and scripted UAs on plain UDP sockets.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sipedge::sip::{self, HeaderIndex, HeaderName};

pub mod netns;

/// The drivers every integration test runs under.
pub const DRIVERS: [&str; 2] = ["mio", "uring"];

/// True when io_uring is usable here (so `--io uring` must work).
pub fn uring_available() -> bool {
    sipedge::shard::uring::probe().is_ok()
}

/// The drivers to test on this machine: both where io_uring works; mio
/// alone otherwise (CI sets SIPEDGE_REQUIRE_URING=1 to make that a failure).
pub fn drivers() -> Vec<&'static str> {
    if uring_available() {
        DRIVERS.to_vec()
    } else {
        assert!(
            std::env::var_os("SIPEDGE_REQUIRE_URING").is_none(),
            "io_uring required but unavailable: {:?}",
            sipedge::shard::uring::probe()
        );
        vec!["mio"]
    }
}

/// [`drivers`], plus `xdp` where this machine can run it (root, network
/// namespaces, veth): its proxy runs in a namespace of the test's own on a
/// veth pair, and [`Ua::new`] puts the clients at the other end.
pub fn drivers_with_xdp() -> Vec<&'static str> {
    let mut d = drivers();
    if netns::xdp_available() {
        d.push("xdp");
    }
    d
}

/// Puts this thread's next clients ([`Ua::new`], [`Ua::on`]) where a
/// proxy under driver `d` can reach them (for tests that make their UAs
/// before the proxy).
pub fn clients_for(d: &str) {
    netns::set_clients_in_net(d == "xdp");
}

/// A peer program (`sipp`, `python3`…) and the address it should bind: in
/// the clients' namespace under `xdp` (see [`clients_for`]), else on 127.0.0.1.
pub fn peer_command(d: &str, program: &str) -> (Command, &'static str) {
    if d == "xdp" {
        (netns::Net::exec(&netns::net().b, program), netns::CLIENT_IP)
    } else {
        (Command::new(program), "127.0.0.1")
    }
}

/// True when an external peer program is installed; when it is missing and
/// SIPEDGE_REQUIRE_PEERS is set (CI), the test fails instead of skipping.
pub fn have_peer(program: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var_os("SIPEDGE_REQUIRE_PEERS").is_none(),
            "{program} is required (SIPEDGE_REQUIRE_PEERS is set) but not installed"
        );
        eprintln!("skipping: {program} not installed");
    }
    found
}

/// A running sipedge process.
pub struct Proxy {
    child: Option<Child>,
    /// Its public UDP listen address (else its first listener's).
    pub addr: SocketAddr,
    /// Every listener: (transport, address).
    pub listen: Vec<(String, SocketAddr)>,
    lines: mpsc::Receiver<String>,
    /// Everything it logged so far.
    pub log: Vec<String>,
}

impl Proxy {
    /// Starts `sipedge run` with `args` (plus `--listen udp:127.0.0.1:0` unless
    /// given) and waits for its startup line.
    pub fn start(args: &[&str]) -> Self {
        Self::start_env(args, &[])
    }

    /// [`Proxy::start`] with environment variables `env` set for it.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let xdp = args.windows(2).any(|w| w == ["--io", "xdp"]);
        netns::set_clients_in_net(xdp);
        let mut cmd = if xdp {
            netns::Net::exec(&netns::net().a, env!("CARGO_BIN_EXE_sipedge"))
        } else {
            Command::new(env!("CARGO_BIN_EXE_sipedge"))
        };
        let loopback = if xdp { netns::PROXY_IP } else { "127.0.0.1" };
        cmd.arg("run");
        cmd.envs(env.iter().copied());
        if !args.contains(&"--listen") {
            cmd.args(["--listen", &format!("udp:{loopback}:0")]);
        }
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if xdp {
                    a.replace("127.0.0.1", loopback)
                } else {
                    (*a).to_owned()
                }
            })
            .collect();
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn sipedge");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut log = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr: Vec<(String, SocketAddr)> = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("sipedge did not start: {log:#?}"));
            log.push(line.clone());
            if let Some(rest) = line.split(" listen=").nth(1) {
                let list = rest.split(' ').next().unwrap();
                break list
                    .split(',')
                    .map(|l| {
                        let (t, a) = l.split_once(':').unwrap();
                        (t.to_owned(), a.parse::<SocketAddr>().unwrap())
                    })
                    .collect::<Vec<_>>();
            }
        };
        Self {
            child: Some(child),
            addr: addr
                .iter()
                .find(|(t, _)| t == "udp")
                .or(addr.first())
                .unwrap()
                .1,
            listen: addr,
            lines: rx,
            log,
        }
    }

    /// The address of its listener of `transport` (`udp`, `tcp`, `tls`, `ws`, `wss`).
    pub fn listener(&self, transport: &str) -> SocketAddr {
        self.listen
            .iter()
            .find(|(t, _)| t == transport)
            .unwrap_or_else(|| panic!("no {transport} listener in {:?}", self.listen))
            .1
    }

    /// Sends SIGTERM and waits for the exit; returns (exit success, time taken).
    pub fn terminate(&mut self) -> (bool, Duration) {
        let mut child = self.child.take().unwrap();
        let t0 = Instant::now();
        // SAFETY-free: kill(1) via the command line keeps the test free of unsafe.
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = t0 + Duration::from_secs(5);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.log.push(l);
                }
                return (st.success(), t0.elapsed());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("sipedge did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Log lines so far (drains the pipe without blocking).
    pub fn drain_log(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.log.push(l);
        }
        &self.log
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A scripted user agent: one UDP socket on 127.0.0.1.
pub struct Ua {
    /// Its socket.
    pub sock: UdpSocket,
    /// Its address.
    pub addr: SocketAddr,
}

impl Ua {
    /// A UA on an ephemeral port.
    pub fn new() -> Self {
        let sock = if netns::clients_in_net() {
            netns::udp_in(&netns::net().b, &format!("{}:0", netns::CLIENT_IP))
        } else {
            UdpSocket::bind("127.0.0.1:0").unwrap()
        };
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let addr = sock.local_addr().unwrap();
        Self { sock, addr }
    }

    /// Sends `msg` to `to`.
    pub fn send(&self, msg: &str, to: SocketAddr) {
        self.sock.send_to(msg.as_bytes(), to).unwrap();
    }

    /// Receives one datagram (panics after 3 s).
    pub fn recv(&self) -> (String, SocketAddr) {
        let mut buf = vec![0u8; 65_536];
        let (n, from) = recv_retrying(&self.sock, &mut buf)
            .unwrap_or_else(|e| panic!("{} got nothing: {e}", self.addr));
        (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
    }

    /// Receives, expecting nothing within `wait`.
    pub fn expect_silence(&self, wait: Duration) {
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let mut buf = vec![0u8; 65_536];
        let r = recv_retrying(&self.sock, &mut buf);
        self.sock
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        if let Ok((n, from)) = r {
            panic!(
                "expected silence, got from {from}: {}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
    }
}

/// `recv_from`, retried when a signal interrupts it. (This test process runs
/// the io_uring probe; io_uring task work can interrupt a blocking receive
/// that has a timeout with EINTR.)
pub fn recv_retrying(sock: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    loop {
        match sock.recv_from(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Parsed view helpers for assertions.
pub struct Msg {
    /// The raw text.
    pub text: String,
}

impl Msg {
    /// Wraps a received message.
    pub fn new(text: String) -> Self {
        Self { text }
    }

    fn with<T>(&self, f: impl FnOnce(&sip::Message<'_>) -> T) -> T {
        let mut idx = HeaderIndex::default();
        let m = sip::parse(self.text.as_bytes(), &mut idx)
            .unwrap_or_else(|e| panic!("unparsable {e}: {}", self.text));
        f(&m)
    }

    /// The status code (responses).
    pub fn status(&self) -> Option<u16> {
        self.with(|m| m.status())
    }

    /// The method (requests) or CSeq method.
    pub fn method(&self) -> String {
        self.with(|m| String::from_utf8_lossy(m.method_bytes()).into_owned())
    }

    /// All values of a header.
    pub fn values(&self, name: HeaderName) -> Vec<String> {
        self.with(|m| {
            m.values(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect()
        })
    }

    /// The first value of a header.
    pub fn header(&self, name: HeaderName) -> Option<String> {
        self.with(|m| {
            m.header(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
    }

    /// The top Via's branch.
    pub fn top_branch(&self) -> String {
        self.with(|m| String::from_utf8_lossy(m.top_via().unwrap().branch().unwrap()).into_owned())
    }

    /// The To tag.
    pub fn to_tag(&self) -> Option<String> {
        self.with(|m| {
            m.to()
                .unwrap()
                .tag()
                .map(|t| String::from_utf8_lossy(t).into_owned())
        })
    }

    /// The Request-URI.
    pub fn request_uri(&self) -> String {
        self.with(|m| String::from_utf8_lossy(m.request_uri_bytes()).into_owned())
    }

    /// Max-Forwards.
    pub fn max_forwards(&self) -> Option<u8> {
        self.with(|m| m.max_forwards().unwrap())
    }
}

// ---------------------------------------------------------------------------
// Helpers of the registrar / stateful-proxy tests (tests/edge.rs, tests/interop.rs).

/// A fresh directory under the system temp dir (unique per process and
/// call), removed with everything in it on drop.
pub struct TempDir {
    /// Its path.
    pub path: std::path::PathBuf,
}

impl TempDir {
    /// Creates `sipedge-<tag>-<pid>-<n>-<nanos>` under `std::env::temp_dir()`.
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "sipedge-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self { path }
    }

    /// The path as a command-line argument.
    pub fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Writes `name` in the directory with `text`; returns its path.
    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.path.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl Proxy {
    /// SIGKILLs the process (no signal handler, no flush, no clean-up: a
    /// crash) and reaps it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap(); // std sends SIGKILL
        let st = child.wait().unwrap();
        assert!(!st.success(), "killed by SIGKILL: {st:?}");
    }

    /// Waits (bounded) until a log line contains `needle`; returns it.
    pub fn wait_log(&mut self, needle: &str, wait: Duration) -> Option<String> {
        if let Some(l) = self.log.iter().find(|l| l.contains(needle)) {
            return Some(l.clone());
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            self.log.push(line.clone());
            if line.contains(needle) {
                return Some(line);
            }
        }
    }
}

impl Ua {
    /// Receives one datagram within `wait`, or `None`.
    pub fn recv_within(&self, wait: Duration) -> Option<(Msg, SocketAddr)> {
        self.sock
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = vec![0u8; 65_536];
        let r = recv_retrying(&self.sock, &mut buf);
        self.sock
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        r.ok().map(|(n, from)| {
            (
                Msg::new(String::from_utf8_lossy(&buf[..n]).into_owned()),
                from,
            )
        })
    }

    /// Receives until a message satisfies `want` (within 5 s), skipping and
    /// returning the others it saw on the way (retransmissions, 100 Trying).
    pub fn expect(&self, what: &str, want: impl Fn(&Msg) -> bool) -> (Msg, SocketAddr, Vec<Msg>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((m, from)) = self.recv_within(left) else {
                let seen: Vec<&str> = skipped.iter().map(|m: &Msg| m.first_line()).collect();
                panic!("{}: no {what} within 5 s; saw {seen:#?}", self.addr);
            };
            if want(&m) {
                return (m, from, skipped);
            }
            skipped.push(m);
        }
    }

    /// Waits for the request `method`, skipping other messages.
    pub fn expect_request(&self, method: &str) -> (Msg, SocketAddr) {
        let (m, from, _) = self.expect(method, |m| m.status().is_none() && m.method() == method);
        (m, from)
    }

    /// Waits for a `code` response to `method`, skipping other messages.
    pub fn expect_response(&self, code: u16, method: &str) -> Msg {
        self.expect(&format!("{code} to {method}"), |m| {
            m.status() == Some(code) && m.method() == method
        })
        .0
    }

    /// Everything received during `wait`.
    pub fn collect(&self, wait: Duration) -> Vec<Msg> {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return got;
            }
            match self.recv_within(left) {
                Some((m, _)) => got.push(m),
                None => return got,
            }
        }
    }

    /// Sends a response to `req` where RFC 3261 §18.2.2 / RFC 3581 say: the
    /// top Via's received/rport, else its sent-by.
    pub fn answer(&self, req: &Msg, resp: &str) {
        self.send(resp, req.top_via_dest());
    }
}

impl Msg {
    /// The start line.
    pub fn first_line(&self) -> &str {
        self.text.split("\r\n").next().unwrap_or_default()
    }

    /// Where a response to this request goes: the top Via's
    /// received (else host) and rport (else port).
    pub fn top_via_dest(&self) -> SocketAddr {
        let via = self.values(HeaderName::Via).into_iter().next().unwrap();
        let mut parts = via.split(';');
        let sent_by = parts
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned();
        let (mut host, mut port) = match sent_by.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse::<u16>().unwrap()),
            None => (sent_by.clone(), 5060),
        };
        for p in parts {
            match p.trim().split_once('=') {
                Some(("received", v)) => host = v.to_owned(),
                Some(("rport", v)) => port = v.parse().unwrap(),
                _ => {}
            }
        }
        format!("{host}:{port}").parse().unwrap()
    }

    /// The CSeq number.
    pub fn cseq_number(&self) -> u32 {
        self.header(HeaderName::CSeq)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The body (after the blank line).
    pub fn body(&self) -> &str {
        self.text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }
}

/// A response to `req` as a UA writes it: its Vias, From, Call-ID and CSeq,
/// its To with `to_tag` added (unless it has one), its Record-Route copied
/// for a dialog-creating response (§12.1.1), `extra` header lines (each
/// ending in CRLF) and `body`.
pub fn response_to(
    req: &Msg,
    code: u16,
    reason: &str,
    to_tag: &str,
    extra: &str,
    body: &str,
) -> String {
    let mut s = format!("SIP/2.0 {code} {reason}\r\n");
    for v in req.values(HeaderName::Via) {
        s.push_str(&format!("Via: {v}\r\n"));
    }
    if code > 100 && code < 300 {
        for rr in req.values(HeaderName::RecordRoute) {
            s.push_str(&format!("Record-Route: {rr}\r\n"));
        }
    }
    let to = req.header(HeaderName::To).unwrap();
    let to = if to.contains("tag=") || code == 100 {
        to
    } else {
        format!("{to};tag={to_tag}")
    };
    s.push_str(&format!(
        "To: {to}\r\nFrom: {}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        req.header(HeaderName::From).unwrap(),
        req.header(HeaderName::CallId).unwrap(),
        req.header(HeaderName::CSeq).unwrap(),
        body.len()
    ));
    s
}

/// A child process (a peer program) that is killed and reaped on drop, so a
/// failing test never leaves it running.
pub struct Reaped {
    child: Option<Child>,
    /// What it is, for messages.
    pub name: String,
}

impl Reaped {
    /// Spawns `cmd`.
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
        Self {
            child: Some(child),
            name: name.to_owned(),
        }
    }

    /// Takes charge of a child already spawned.
    pub fn adopt(name: &str, child: Child) -> Self {
        Self {
            child: Some(child),
            name: name.to_owned(),
        }
    }

    /// Spawns `cmd` with its stdout read line by line into the returned channel.
    pub fn spawn_lines(name: &str, cmd: &mut Command) -> (Self, mpsc::Receiver<String>) {
        let mut r = Self::spawn(name, cmd.stdout(Stdio::piped()));
        let stdout = r.child.as_mut().unwrap().stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (r, rx)
    }

    /// Its stdin, when it was spawned with `Stdio::piped()` (once).
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.as_mut()?.stdin.take()
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether it is still running (never waits).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits up to `limit` for the exit; kills it (and returns `None`) when
    /// it takes longer.
    pub fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then up to `limit` for the exit (SIGKILL after it).
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.wait_for(limit)
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A UDP port on 127.0.0.1 that was free a moment ago (for peers that must
/// be told their port before they bind it).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// True when `python3` can import `module`; when it cannot and
/// SIPEDGE_REQUIRE_PEERS is set (CI), the test fails instead of skipping.
pub fn have_python_module(module: &str) -> bool {
    let found = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var_os("SIPEDGE_REQUIRE_PEERS").is_none(),
            "python3 module {module} is required (SIPEDGE_REQUIRE_PEERS is set) but cannot be imported"
        );
        eprintln!("skipping: python3 cannot import {module}");
    }
    found
}

/// The last `n` lines of a file (for failure messages).
pub fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A SIPp command on 127.0.0.1:`port`, its screen output into `dir/name.out`
/// and its errors into `dir/name.err`.
pub fn sipp(dir: &TempDir, name: &str, port: u16) -> Command {
    sipp_for("mio", dir, name, port).0
}

/// [`sipp`] for a proxy under driver `d`: in the clients' namespace under
/// `xdp` (see [`peer_command`]); with the address SIPp binds.
pub fn sipp_for(d: &str, dir: &TempDir, name: &str, port: u16) -> (Command, &'static str) {
    let (mut c, ip) = peer_command(d, "sipp");
    c.args(["-i", ip, "-p", &port.to_string(), "-nostdin"])
        .args([
            "-trace_err",
            "-error_file",
            &dir.path.join(format!("{name}.err")).to_string_lossy(),
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path.join(format!("{name}.out"))).unwrap())
        .stderr(Stdio::null());
    (c, ip)
}

/// Waits up to `limit` for a line containing `want` from a peer, keeping
/// every line seen (for failure messages).
pub fn wait_line(
    rx: &mpsc::Receiver<String>,
    want: &str,
    limit: Duration,
    seen: &mut Vec<String>,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let hit = l.contains(want);
                seen.push(l);
                if hit {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
}

/// What SIPp printed and logged, for a failure message.
pub fn sipp_report(dir: &TempDir, name: &str) -> String {
    format!(
        "--- {name} screen:\n{}\n--- {name} errors:\n{}",
        tail(&dir.path.join(format!("{name}.out")), 40),
        tail(&dir.path.join(format!("{name}.err")), 40)
    )
}

// ---------------------------------------------------------------------------
// Helpers of the security tests (tests/security.rs).

impl Proxy {
    /// The process id (`None` once it was stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends signal `sig` (a kill(1) name, e.g. "HUP") to the process.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().expect("sipedge is running").to_string();
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig} {pid}: {st:?}");
    }

    /// Its resident set size in KiB (VmRSS of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.pid().expect("sipedge is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
    }

    /// The value of counter `name` in the log (its stop line `name N`), or 0.
    pub fn counter(&self, name: &str) -> u64 {
        self.log
            .iter()
            .rev()
            .find_map(|l| {
                let rest = l.split(&format!("{name} ")).nth(1)?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or(0)
    }
}

impl Ua {
    /// A UA on `ip` (any of 127.0.0.0/8: Linux routes the whole block over
    /// lo), so that tests can have sources with distinct addresses.
    pub fn on(ip: &str) -> Self {
        let sock = if netns::clients_in_net() {
            // 127.0.0.N ↦ 198.18.0.N+1 (2..9 are on the clients' end).
            let n: u8 = ip
                .rsplit('.')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            let mapped = format!("198.18.0.{}:0", n.saturating_add(1).clamp(2, 9));
            netns::udp_in(&netns::net().b, &mapped)
        } else {
            UdpSocket::bind((ip, 0)).unwrap()
        };
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let addr = sock.local_addr().unwrap();
        Self { sock, addr }
    }
}

// ---------------------------------------------------------------------------
// SIPp gateways (tests/dispatcher.rs, tests/embed.rs).

/// The SIPp scenarios of tools/sipp.
pub const SIPP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/sipp");

/// A SIPp gateway: `scenario` (uas.xml unless said), answering OPTIONS
/// probes (`-aa`), its statistics written every second.
pub struct Gateway {
    proc: Reaped,
    /// Its UDP port on 127.0.0.1.
    pub port: u16,
    stat: std::path::PathBuf,
}

impl Gateway {
    pub fn start(dir: &TempDir, name: &str, scenario: &str, extra: &[&str]) -> Self {
        let port = free_udp_port();
        let stat = dir.path.join(format!("{name}.csv"));
        let proc = Reaped::spawn(
            "sipp",
            sipp(dir, name, port)
                .args(["-sf", &format!("{SIPP}/{scenario}"), "-aa"])
                .args(["-trace_stat", "-fd", "1", "-stf"])
                .arg(&stat)
                .args(extra),
        );
        std::thread::sleep(Duration::from_millis(300));
        Self { proc, port, stat }
    }

    pub fn uri(&self) -> String {
        format!("sip:127.0.0.1:{}", self.port)
    }

    /// A cumulative column of SIPp's statistics file (last line).
    pub fn stat(&self, column: &str) -> u64 {
        let text = std::fs::read_to_string(&self.stat).unwrap_or_default();
        let mut lines = text.lines();
        let Some(head) = lines.next() else { return 0 };
        let Some(i) = head.split(';').position(|c| c == column) else {
            return 0;
        };
        lines
            .last()
            .and_then(|l| l.split(';').nth(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Calls it completed (INVITE … BYE), once the figure has settled.
    pub fn completed(&self, want: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let n = self.stat("SuccessfulCall(C)");
            if n >= want || Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn kill(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.proc.id().to_string()])
            .status();
        let _ = self.proc.wait_for(Duration::from_secs(5));
    }
}
