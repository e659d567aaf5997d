//! Shared harness of the integration tests: the real `sipedge` binary on
//! 127.0.0.1 (port 0, discovered from its startup line), run under each
//! I/O driver, and scripted UAs on plain UDP sockets.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sipedge::sip::{self, HeaderIndex, HeaderName};

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
    /// Its public listen address.
    pub addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    /// Everything it logged so far.
    pub log: Vec<String>,
}

impl Proxy {
    /// Starts `sipedge run` with `args` (plus `--listen udp:127.0.0.1:0` unless
    /// given) and waits for its startup line.
    pub fn start(args: &[&str]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sipedge"));
        cmd.arg("run");
        if !args.iter().any(|a| *a == "--listen") {
            cmd.args(["--listen", "udp:127.0.0.1:0"]);
        }
        cmd.args(args)
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
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("sipedge did not start: {log:#?}"));
            log.push(line.clone());
            if let Some(rest) = line.split("listen=udp:").nth(1) {
                let a = rest.split([' ', ',']).next().unwrap();
                break a.parse().unwrap();
            }
        };
        Self {
            child: Some(child),
            addr,
            lines: rx,
            log,
        }
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
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
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
        let (n, from) = recv_retrying(&self.sock, &mut buf).unwrap_or_else(|e| panic!("{} got nothing: {e}", self.addr));
        (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
    }

    /// Receives, expecting nothing within `wait`.
    pub fn expect_silence(&self, wait: Duration) {
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let mut buf = vec![0u8; 65_536];
        let r = recv_retrying(&self.sock, &mut buf);
        self.sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        if let Ok((n, from)) = r {
            panic!("expected silence, got from {from}: {}", String::from_utf8_lossy(&buf[..n]));
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
        self.with(|m| m.header(name).map(|v| String::from_utf8_lossy(v).into_owned()))
    }

    /// The top Via's branch.
    pub fn top_branch(&self) -> String {
        self.with(|m| String::from_utf8_lossy(m.top_via().unwrap().branch().unwrap()).into_owned())
    }

    /// The To tag.
    pub fn to_tag(&self) -> Option<String> {
        self.with(|m| m.to().unwrap().tag().map(|t| String::from_utf8_lossy(t).into_owned()))
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
