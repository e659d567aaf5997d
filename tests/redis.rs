//! Several edge nodes serving one domain through one real Redis
//! (`redis-server` on loopback, started and removed by each test):
//!
//! - three nodes (2, 1 and 2 shards): a UA registered on A is reached by a
//!   request that arrives on B or C; unregistered through B, A and C stop
//!   routing to it;
//! - a registration storm on a node killed with SIGKILL half-way: every
//!   REGISTER that was answered 200 is seen by the other node and by a node
//!   started afterwards (from the snapshot);
//! - Redis killed: requests through any node still reach registered users,
//!   REGISTER is refused with 503 and Retry-After (and reaches no other
//!   node); Redis back: REGISTER works again and every node catches up;
//! - Redis restarted empty: the nodes write what they hold again, and a
//!   node started afterwards finds it;
//! - a node restarted: snapshot plus stream give it the same bindings as
//!   its peer (compared dumps);
//! - a UA registered over TCP on A (its connection kept there) is reached
//!   through B: the binding other nodes read has a Path through A with the
//!   flow's token (RFC 5626), so B sends to A and A down the connection;
//! - snapshots of 999, 1,000 and 1,001 AoRs (the SCAN batch is 1,000) load
//!   whole;
//! - `rediss://` with a password and a private CA (`[store] tls_ca`); a node
//!   that does not trust the CA refuses to start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{drivers, have_peer, response_to, Msg, Proxy, Reaped, TempDir, Ua};
use serde_json::Value;

const DOMAIN: &str = "example.test";

/// A redis-server on a free loopback port, its files in `dir`
/// (append-only file, fsync always: a restart keeps what it acknowledged).
struct Redis {
    proc: Reaped,
    port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    fn start(dir: &Path) -> Self {
        let port = free_tcp_port();
        Self::start_on(dir, port)
    }

    fn start_on(dir: &Path, port: u16) -> Self {
        let proc = Reaped::spawn(
            "redis-server",
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--dir", dir.to_str().unwrap()])
                .args([
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--save",
                    "",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            proc,
            port,
            dir: dir.to_owned(),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL (once: `kill -KILL 0` would take the whole process group).
    fn kill(&mut self) {
        let pid = self.proc.id();
        if pid != 0 {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let _ = self.proc.wait_for(Duration::from_secs(5));
        }
    }

    /// Started again on the same port and files.
    fn restart(mut self) -> Self {
        self.kill();
        let dir = self.dir.clone();
        Self::start_on(&dir, self.port)
    }

    fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

/// The body of an HTTP GET.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A node: `sipedge run` on the shared store, with a control socket.
struct Node {
    p: Proxy,
    sock: String,
}

fn node(dir: &TempDir, name: &str, redis: &Redis, shards: &str, driver: &str) -> Node {
    node_with(dir, name, redis, shards, driver, &[])
}

fn node_with(
    dir: &TempDir,
    name: &str,
    redis: &Redis,
    shards: &str,
    driver: &str,
    extra: &[&str],
) -> Node {
    let sock = dir.path.join(format!("{name}.sock"));
    let sock = sock.to_str().unwrap().to_owned();
    let data = dir.path.join(format!("{name}-data"));
    let url = redis.url();
    let mut args = vec![
        "--io",
        driver,
        "--domain",
        DOMAIN,
        "--shards",
        shards,
        "--store",
        &url,
        "--data-dir",
        data.to_str().unwrap(),
        "--control",
        &sock,
    ];
    args.extend_from_slice(extra);
    let p = Proxy::start(&args);
    Node { p, sock }
}

fn ctl(sock: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(["ctl", "--control", sock, "--json"])
        .args(args)
        .output()
        .unwrap()
}

/// Every (AoR, contact) a node's registrar partitions hold.
fn dump(n: &Node) -> BTreeSet<(String, String)> {
    let out = ctl(&n.sock, &["bindings", "dump"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["aor"].as_str().unwrap().to_owned(),
                b["contact"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Waits (bounded) until `cond` holds of `n`'s dump.
fn dump_until(
    n: &Node,
    wait: Duration,
    cond: impl Fn(&BTreeSet<(String, String)>) -> bool,
) -> BTreeSet<(String, String)> {
    let deadline = Instant::now() + wait;
    loop {
        let d = dump(n);
        if cond(&d) || Instant::now() > deadline {
            return d;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn aors(d: &BTreeSet<(String, String)>) -> BTreeSet<String> {
    d.iter().map(|(a, _)| a.clone()).collect()
}

/// A REGISTER of `user` binding `ua`'s address with `expires`; its
/// Call-ID and CSeq from `call_id`, `cseq`.
fn register_text(ua: &Ua, user: &str, expires: u32, call_id: &str, cseq: u32) -> String {
    format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-{call_id}-{cseq}\r\n\
Max-Forwards: 70\r\nTo: <sip:{user}@{DOMAIN}>\r\nFrom: <sip:{user}@{DOMAIN}>;tag=r{cseq}\r\n\
Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{a}>\r\nExpires: {expires}\r\n\
Content-Length: 0\r\n\r\n",
        a = ua.addr
    )
}

fn register(ua: &Ua, user: &str, to: SocketAddr, expires: u32, cseq: u32) -> Msg {
    ua.send(
        &register_text(ua, user, expires, &format!("reg-{user}"), cseq),
        to,
    );
    ua.expect(&format!("a final response to REGISTER {user}"), |m| {
        m.status().is_some_and(|s| s >= 200) && m.method() == "REGISTER"
    })
    .0
}

/// A MESSAGE from `from` to `user` through `via`.
fn message(from: &Ua, user: &str, via: SocketAddr, id: &str) {
    from.send(
        &format!(
            "MESSAGE sip:{user}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-m{id}\r\n\
Max-Forwards: 70\r\nTo: <sip:{user}@{DOMAIN}>\r\nFrom: <sip:caller@{DOMAIN}>;tag=m{id}\r\n\
Call-ID: msg-{id}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
            a = from.addr
        ),
        via,
    );
}

/// `to` receives the MESSAGE and answers 200; `from` gets the 200.
fn message_reaches(from: &Ua, to: &Ua, user: &str, via: SocketAddr, id: &str) {
    message(from, user, via, id);
    let (m, _) = to.expect_request("MESSAGE");
    to.answer(&m, &response_to(&m, 200, "OK", "u", "", ""));
    from.expect_response(200, "MESSAGE");
}

/// An INVITE to `user` through `via`: its final response.
fn invite_status(from: &Ua, user: &str, via: SocketAddr, id: &str) -> u16 {
    from.send(
        &format!(
            "INVITE sip:{user}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-i{id}\r\n\
Max-Forwards: 70\r\nTo: <sip:{user}@{DOMAIN}>\r\nFrom: <sip:caller@{DOMAIN}>;tag=i{id}\r\n\
Call-ID: inv-{id}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{a}>\r\nContent-Length: 0\r\n\r\n",
            a = from.addr
        ),
        via,
    );
    let (m, _, _) = from.expect("a final response to the INVITE", |m| {
        m.status().is_some_and(|s| s >= 200)
    });
    m.status().unwrap()
}

#[test]
fn registered_on_one_node_reached_through_the_others() {
    if !have_peer("redis-server") {
        return;
    }
    for d in drivers() {
        let dir = TempDir::new("redis-x");
        let redis = Redis::start(&dir.path);
        let a = node(&dir, "a", &redis, "2", d);
        let b = node(&dir, "b", &redis, "1", d);
        let c = node(&dir, "c", &redis, "2", d);
        let (alice, caller) = (Ua::new(), Ua::new());
        assert_eq!(
            register(&alice, "alice", a.p.addr, 600, 1).status(),
            Some(200)
        );
        let want = (
            "alice@example.test".to_owned(),
            format!("sip:alice@{}", alice.addr),
        );
        for n in [&b, &c] {
            let seen = dump_until(n, Duration::from_secs(3), |x| x.contains(&want));
            assert!(seen.contains(&want), "{d}: {seen:?}");
        }
        message_reaches(&caller, &alice, "alice", b.p.addr, &format!("{d}b"));
        message_reaches(&caller, &alice, "alice", c.p.addr, &format!("{d}c"));

        // Unregistered through B: A and C stop routing to her.
        assert_eq!(
            register(&alice, "alice", b.p.addr, 0, 2).status(),
            Some(200)
        );
        for n in [&a, &c] {
            let seen = dump_until(n, Duration::from_secs(3), |x| !x.contains(&want));
            assert!(!seen.contains(&want), "{d}: {seen:?}");
        }
        assert_eq!(
            invite_status(&caller, "alice", a.p.addr, &format!("{d}a")),
            480,
            "{d}"
        );
        assert_eq!(
            invite_status(&caller, "alice", c.p.addr, &format!("{d}c")),
            480,
            "{d}"
        );
        alice.expect_silence(Duration::from_millis(200));
    }
}

/// The AoR a 200 to a REGISTER answered (from its To), if it is one.
fn ok_aor(m: &Msg) -> Option<String> {
    if m.status() != Some(200) {
        return None;
    }
    let to = m.header(sipedge::sip::HeaderName::To)?;
    let user = to.split(['<', ':', '@']).nth(2)?;
    Some(format!("{user}@{DOMAIN}"))
}

#[test]
fn a_node_killed_mid_storm_loses_no_acknowledged_binding() {
    if !have_peer("redis-server") {
        return;
    }
    let dir = TempDir::new("redis-kill");
    let redis = Redis::start(&dir.path);
    let mut a = node(&dir, "a", &redis, "2", "auto");
    let b = node(&dir, "b", &redis, "2", "auto");
    // 600 users registered as fast as A answers; A is killed once 300
    // were answered.
    const USERS: usize = 600;
    let ua = Arc::new(Ua::new());
    let target = a.p.addr;
    let sender = {
        let ua = ua.clone();
        std::thread::spawn(move || {
            for i in 0..USERS {
                ua.send(
                    &register_text(&ua, &format!("s{i}"), 600, &format!("st-{i}"), 1),
                    target,
                );
                if i % 50 == 49 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
    };
    let mut answered = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while answered.len() < USERS / 2 && Instant::now() < deadline {
        if let Some((m, _)) = ua.recv_within(Duration::from_millis(500)) {
            answered.extend(ok_aor(&m));
        }
    }
    a.p.kill9();
    sender.join().unwrap();
    // Answers already on their way count too.
    while let Some((m, _)) = ua.recv_within(Duration::from_millis(200)) {
        answered.extend(ok_aor(&m));
    }
    assert!(
        answered.len() >= USERS / 2,
        "only {} answered",
        answered.len()
    );
    let seen = aors(&dump_until(&b, Duration::from_secs(5), |x| {
        answered.is_subset(&aors(x))
    }));
    let lost: Vec<_> = answered.difference(&seen).collect();
    assert!(
        lost.is_empty(),
        "B lacks {} acknowledged: {lost:?}",
        lost.len()
    );
    // A node started now, from the snapshot, has them too.
    let c = node(&dir, "c", &redis, "1", "auto");
    let fresh = aors(&dump(&c));
    let lost: Vec<_> = answered.difference(&fresh).collect();
    assert!(
        lost.is_empty(),
        "C lacks {} acknowledged: {lost:?}",
        lost.len()
    );
    drop(a);
}

#[test]
fn redis_down_calls_still_route_register_is_refused_then_all_catch_up() {
    if !have_peer("redis-server") {
        return;
    }
    let dir = TempDir::new("redis-down");
    let mut redis = Redis::start(&dir.path);
    let metrics = format!("127.0.0.1:{}", free_tcp_port());
    let mut a = node_with(
        &dir,
        "a",
        &redis,
        "2",
        "auto",
        &["--metrics-listen", &metrics],
    );
    let b = node(&dir, "b", &redis, "2", "auto");
    let (alice, bob, caller) = (Ua::new(), Ua::new(), Ua::new());
    let up = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let body = http_get(&metrics, "/metrics");
            if body.contains(&format!("\nsipedge_store_shared_up {want}\n"))
                || Instant::now() > deadline
            {
                return body;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(up("1").contains("sipedge_store_shared_up 1"));
    assert_eq!(
        register(&alice, "alice", a.p.addr, 600, 1).status(),
        Some(200)
    );
    let want = (
        "alice@example.test".to_owned(),
        format!("sip:alice@{}", alice.addr),
    );
    assert!(dump_until(&b, Duration::from_secs(3), |x| x.contains(&want)).contains(&want));

    redis.kill();
    assert!(
        a.p.wait_log("ALARM: Redis unreachable", Duration::from_secs(5))
            .is_some(),
        "{:#?}",
        a.p.log
    );
    assert!(up("0").contains("sipedge_store_shared_up 0"));
    // Calls still route, through either node.
    message_reaches(&caller, &alice, "alice", a.p.addr, "down-a");
    message_reaches(&caller, &alice, "alice", b.p.addr, "down-b");
    // REGISTER is refused cleanly, fast (bob on A, dave on B).
    let dave = Ua::new();
    for (n, user, ua) in [(&a, "bob", &bob), (&b, "dave", &dave)] {
        let t0 = Instant::now();
        let r = register(ua, user, n.p.addr, 600, 10);
        assert_eq!(r.status(), Some(503), "{}", r.text);
        assert!(r.text.contains("\r\nRetry-After: 5\r\n"), "{}", r.text);
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    }
    // The refused REGISTERs reached no other node (they wait, in order,
    // in A's backlog, and are written once Redis is back).
    std::thread::sleep(Duration::from_millis(300));
    assert!(!aors(&dump(&b)).contains("bob@example.test"));
    assert!(!aors(&dump(&a)).contains("dave@example.test"));

    // Back (same files): REGISTER works again once the store reconnects,
    // and the other node sees it.
    let redis = redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut cseq = 20;
    let ok = loop {
        cseq += 1;
        let r = register(&bob, "bob", a.p.addr, 600, cseq);
        if r.status() == Some(200) || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(ok.status(), Some(200), "{}", ok.text);
    let bob_b = (
        "bob@example.test".to_owned(),
        format!("sip:bob@{}", bob.addr),
    );
    let seen = dump_until(&b, Duration::from_secs(10), |x| x.contains(&bob_b));
    assert!(seen.contains(&bob_b), "{seen:?}");
    message_reaches(&caller, &bob, "bob", b.p.addr, "back-b");
    assert!(up("1").contains("sipedge_store_shared_up 1"));
    // What Redis acknowledged before the kill is still there.
    let mut c = redis.conn();
    let n: usize = redis::cmd("HLEN")
        .arg("sipedge:loc:alice@example.test")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn a_restarted_node_sees_what_its_peer_sees() {
    if !have_peer("redis-server") {
        return;
    }
    let dir = TempDir::new("redis-restart");
    let redis = Redis::start(&dir.path);
    let a = node(&dir, "a", &redis, "2", "auto");
    let mut b = node(&dir, "b", &redis, "2", "auto");
    let ua = Ua::new();
    for i in 0..40 {
        let via = if i % 2 == 0 { a.p.addr } else { b.p.addr };
        assert_eq!(
            register(&ua, &format!("r{i}"), via, 600, 1).status(),
            Some(200)
        );
    }
    for i in (0..40).step_by(5) {
        assert_eq!(
            register(&ua, &format!("r{i}"), a.p.addr, 0, 2).status(),
            Some(200)
        );
    }
    let want = dump_until(&a, Duration::from_secs(3), |x| x.len() == 32);
    assert_eq!(want.len(), 32);
    b.p.terminate();
    // Changes while B is down come from the stream after its restart.
    for i in 40..45 {
        assert_eq!(
            register(&ua, &format!("r{i}"), a.p.addr, 600, 1).status(),
            Some(200)
        );
    }
    assert_eq!(register(&ua, "r1", a.p.addr, 0, 3).status(), Some(200));
    let want = dump_until(&a, Duration::from_secs(3), |x| x.len() == 36);
    let b = node(&dir, "b2", &redis, "1", "auto");
    let got = dump_until(&b, Duration::from_secs(5), |x| *x == want);
    assert_eq!(got, want);
}

#[test]
fn snapshots_of_999_1000_and_1001_aors_load_whole() {
    if !have_peer("redis-server") {
        return;
    }
    use sipedge::location::{Binding, BindingParts, Op, Record};
    use sipedge::store::redis::{RedisConfig, RedisStore, Status};
    use sipedge::store::Store;
    let dir = TempDir::new("redis-snap");
    let redis = Redis::start(&dir.path);
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    for n in [999usize, 1000, 1001] {
        let mut c = redis.conn();
        let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
        let cfg = RedisConfig::new(&redis.url(), "writer");
        let mut store = RedisStore::new(cfg.clone(), Arc::new(Status::default()));
        let records: Vec<Record> = (0..n)
            .map(|i| {
                let aor = format!("u{i}@{DOMAIN}");
                let contact = format!("sip:u{i}@127.0.0.1:5999");
                let b = Binding::new(&BindingParts {
                    aor: aor.as_bytes(),
                    contact: contact.as_bytes(),
                    expires: wall + 600_000_000,
                    id: i as u64 + 1,
                    call_id: b"c",
                    cseq: 1,
                    q: 1000,
                    received: None,
                    socket: sipedge::transport::SocketId(0),
                    flow: 0,
                    path: b"",
                    instance: b"",
                    reg_id: None,
                    user_agent: b"",
                })
                .unwrap();
                Record {
                    partition: 0,
                    seq: i as u64 + 1,
                    commit: wall,
                    op: Op::Upsert(b),
                    remote: false,
                }
            })
            .collect();
        // A failed write stays in the store's backlog (a read with a
        // timeout can fail with EINTR on a machine that stops and continues
        // processes): flushing it again must then succeed.
        if let Err(e) = store.append(&records) {
            eprintln!("append: {e}; flushing the backlog again");
            std::thread::sleep(Duration::from_millis(200));
            store.append(&[]).unwrap();
        }
        assert_eq!(store.backlog(), 0);
        for partitions in [1u16, 3] {
            let (states, _) = sipedge::store::redis::load(&cfg, partitions, wall).unwrap();
            let total: usize = states.iter().map(|s| s.bindings.len()).sum();
            assert_eq!(total, n, "{n} AoRs into {partitions} partition(s)");
        }
        let node = node(&dir, &format!("n{n}"), &redis, "2", "auto");
        assert_eq!(dump(&node).len(), n);
    }
}

#[test]
fn a_ua_on_a_connection_of_one_node_is_reached_through_another() {
    use std::io::{Read, Write};
    if !have_peer("redis-server") {
        return;
    }
    for d in drivers() {
        let dir = TempDir::new("redis-flow");
        let redis = Redis::start(&dir.path);
        let listen = ["--listen", "udp:127.0.0.1:0", "--listen", "tcp:127.0.0.1:0"];
        let a = node_with(&dir, "a", &redis, "2", d, &listen);
        let b = node(&dir, "b", &redis, "1", d);
        let mut tcp = TcpStream::connect(a.p.listener("tcp")).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let me = tcp.local_addr().unwrap();
        write!(
            tcp,
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch=z9hG4bK-tcpreg\r\n\
Max-Forwards: 70\r\nTo: <sip:tom@{DOMAIN}>\r\nFrom: <sip:tom@{DOMAIN}>;tag=t1\r\n\
Call-ID: tcp-reg\r\nCSeq: 1 REGISTER\r\nContact: <sip:tom@{me};transport=tcp>\r\n\
Expires: 600\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut got = Vec::new();
        let read_until = |tcp: &mut TcpStream, got: &mut Vec<u8>, needle: &str| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !String::from_utf8_lossy(got).contains(needle) && Instant::now() < deadline {
                let mut buf = [0u8; 4096];
                match tcp.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                }
            }
            String::from_utf8_lossy(got).into_owned()
        };
        let text = read_until(&mut tcp, &mut got, "\r\n\r\n");
        assert!(text.starts_with("SIP/2.0 200 OK\r\n"), "{d}: {text}");
        got.clear();
        let want = (
            "tom@example.test".to_owned(),
            format!("sip:tom@{me};transport=tcp"),
        );
        let seen = dump_until(&b, Duration::from_secs(3), |x| x.contains(&want));
        assert!(seen.contains(&want), "{d}: {seen:?}");
        // A MESSAGE through B arrives on tom's connection to A.
        let caller = Ua::new();
        message(&caller, "tom", b.p.addr, &format!("flow{d}"));
        let text = read_until(&mut tcp, &mut got, "\r\n\r\nhi");
        assert!(text.starts_with("MESSAGE sip:tom@"), "{d}: {text}");
        // Answered on the connection: the 200 goes back through A and B.
        let req = text.split("\r\n\r\n").next().unwrap();
        let mut resp = String::from("SIP/2.0 200 OK\r\n");
        for l in req.lines().skip(1) {
            let name = l.split(':').next().unwrap_or("").to_ascii_lowercase();
            if ["via", "from", "call-id", "cseq"].contains(&name.as_str()) {
                resp.push_str(l);
                resp.push_str("\r\n");
            } else if name == "to" {
                resp.push_str(l);
                resp.push_str(";tag=tom\r\n");
            }
        }
        resp.push_str("Content-Length: 0\r\n\r\n");
        tcp.write_all(resp.as_bytes()).unwrap();
        caller.expect_response(200, "MESSAGE");
    }
}

#[test]
fn redis_restarted_empty_is_filled_again_by_the_nodes() {
    if !have_peer("redis-server") {
        return;
    }
    let dir = TempDir::new("redis-empty");
    let first = dir.path.join("first");
    let second = dir.path.join("second");
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();
    let mut redis = Redis::start(&first);
    let a = node(&dir, "a", &redis, "2", "auto");
    let b = node(&dir, "b", &redis, "1", "auto");
    let (alice, caller) = (Ua::new(), Ua::new());
    for (i, user) in ["alice", "amy", "ann"].iter().enumerate() {
        let via = if i % 2 == 0 { a.p.addr } else { b.p.addr };
        assert_eq!(register(&alice, user, via, 600, 1).status(), Some(200));
    }
    redis.kill();
    let port = redis.port;
    let redis = Redis::start_on(&second, port);
    let mut c = redis.conn();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut keys: Vec<String> = Vec::new();
    while Instant::now() < deadline {
        keys = redis::cmd("KEYS")
            .arg("sipedge:loc:*")
            .query(&mut c)
            .unwrap();
        if keys.len() == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    keys.sort();
    assert_eq!(
        keys,
        [
            "sipedge:loc:alice@example.test",
            "sipedge:loc:amy@example.test",
            "sipedge:loc:ann@example.test"
        ]
    );
    // A node started now finds them; calls through it reach the UA.
    let n = node(&dir, "c", &redis, "2", "auto");
    let seen = aors(&dump(&n));
    assert!(
        ["alice", "amy", "ann"]
            .iter()
            .all(|u| seen.contains(&format!("{u}@example.test"))),
        "{seen:?}"
    );
    message_reaches(&caller, &alice, "amy", n.p.addr, "reseeded");
}

/// `rediss://` with a password, to a Redis that speaks only TLS with a
/// certificate from a private CA (`[store] tls_ca`): two nodes share a
/// binding through it; a node that trusts only the public roots cannot
/// write (its REGISTER is refused 503), so the CA is what let them in.
#[test]
fn nodes_share_bindings_through_redis_over_tls_with_a_password() {
    if !have_peer("redis-server") {
        return;
    }
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = TempDir::new("redis-tls");
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &*ca)
        .unwrap();
    let ca_pem = dir.write("ca.pem", &ca.pem());
    let cert_pem = dir.write("redis.pem", &cert.pem());
    let key_pem = dir.write("redis-key.pem", &key.serialize_pem());
    let port = free_tcp_port();
    let _redis = Reaped::spawn(
        "redis-server",
        Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--tls-cert-file", &cert_pem, "--tls-key-file", &key_pem])
            .args(["--tls-auth-clients", "no", "--requirepass", "s3cret"])
            .args(["--dir", dir.path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server (TLS) did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("rediss://:s3cret@127.0.0.1:{port}");
    let config = dir.write(
        "edge.toml",
        &format!("[store]\nurl = \"{url}\"\ntls_ca = \"{ca_pem}\"\n"),
    );
    let start = |name: &str, config: &str| {
        let data = dir.path.join(format!("{name}-data"));
        let sock = dir.path.join(format!("{name}.sock"));
        let sock = sock.to_str().unwrap().to_owned();
        let p = Proxy::start(&[
            "--config",
            config,
            "--domain",
            DOMAIN,
            "--shards",
            "1",
            "--data-dir",
            data.to_str().unwrap(),
            "--control",
            &sock,
        ]);
        Node { p, sock }
    };
    let a = start("a", &config);
    let b = start("b", &config);
    let (alice, caller) = (Ua::new(), Ua::new());
    assert_eq!(
        register(&alice, "alice", a.p.addr, 600, 1).status(),
        Some(200)
    );
    let want = (
        "alice@example.test".to_owned(),
        format!("sip:alice@{}", alice.addr),
    );
    let seen = dump_until(&b, Duration::from_secs(3), |x| x.contains(&want));
    assert!(seen.contains(&want), "{seen:?}");
    message_reaches(&caller, &alice, "alice", b.p.addr, "tls");

    // Without the CA (public roots only) the TLS handshake fails: a node
    // cannot load the bindings and does not start, saying why.
    let untrusting = dir.write("plain.toml", &format!("[store]\nurl = \"{url}\"\n"));
    let out = Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args([
            "run",
            "--config",
            &untrusting,
            "--listen",
            "udp:127.0.0.1:0",
        ])
        .args(["--domain", DOMAIN, "--shards", "1", "--data-dir"])
        .arg(dir.path.join("c-data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(!err.contains("s3cret"), "the password is not logged: {err}");
}
