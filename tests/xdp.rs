//! What only the AF_XDP driver has: the frames path really carries the
//! traffic, what it cannot carry (IP fragments, TCP, a message over the
//! MTU) still works through the kernel, IPv6, the program is gone after a
//! kill -9 and a restart works, and a clear refusal where AF_XDP cannot run.
//! The edge, relay and interop tests run under xdp too (tests/edge.rs,
//! tests/relay.rs), in the same two-namespace topology
//! (tests/common/netns.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::netns;
use common::{Proxy, TempDir, Ua};

fn options(ua: &Ua, to: SocketAddr, n: usize, pad: usize) -> String {
    let via = if ua.addr.is_ipv6() {
        format!("[{}]:{}", ua.addr.ip(), ua.addr.port())
    } else {
        ua.addr.to_string()
    };
    let body = "x".repeat(pad);
    format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bKx{n};rport\r\nMax-Forwards: 70\r\n\
To: <sip:{to}>\r\nFrom: <sip:probe@example.test>;tag=p{n}\r\nCall-ID: opt-{n}-{}\r\nCSeq: 1 OPTIONS\r\n\
Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        ua.addr.port(),
        body.len()
    )
}

/// `af_xdp: received=R sent=S sent_by_kernel=K skipped=X` from the stop log.
fn xdp_counts(p: &Proxy) -> [u64; 4] {
    let line = p
        .log
        .iter()
        .rev()
        .find(|l| l.contains("af_xdp: received="))
        .unwrap_or_else(|| panic!("no af_xdp line: {:#?}", p.log));
    let mut out = [0u64; 4];
    for (i, key) in ["received=", "sent=", "sent_by_kernel=", "skipped="]
        .iter()
        .enumerate()
    {
        out[i] = line
            .split(key)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
    }
    out
}

fn xdp_proxy(dir: &TempDir, extra: &[&str]) -> Proxy {
    let mut args = vec![
        "--io",
        "xdp",
        "--data-dir",
        dir.arg(),
        "--log-level",
        "info,sipedge::shard::xdp=debug",
    ];
    args.extend_from_slice(extra);
    Proxy::start(&args)
}

/// 200 OPTIONS from 20 sources, two shards on a two-queue veth: every one
/// answered, all of them through the AF_XDP sockets (nothing through the
/// kernel, nothing skipped).
#[test]
fn options_go_through_the_frames_path_both_ways() {
    if !netns::xdp_available() {
        return;
    }
    let dir = TempDir::new("xdp-frames");
    let mut p = xdp_proxy(&dir, &["--shards", "2"]);
    assert!(
        p.log
            .iter()
            .any(|l| l.contains("af_xdp on ") && l.contains("native mode")),
        "{:#?}",
        p.log
    );
    let uas: Vec<Ua> = (0..20).map(|_| Ua::new()).collect();
    let mut answered = 0;
    for i in 0..200 {
        let ua = &uas[i % uas.len()];
        ua.send(&options(ua, p.addr, i, 0), p.addr);
        let (m, from) = ua.recv_within(Duration::from_secs(2)).expect("an answer");
        assert_eq!((m.status(), from), (Some(200), p.addr), "{}", m.text);
        answered += 1;
    }
    assert_eq!(answered, 200);
    p.terminate();
    let [rx, tx, kernel, skipped] = xdp_counts(&p);
    assert_eq!((rx, tx, kernel, skipped), (200, 200, 0, 0), "{:#?}", p.log);
}

/// What the frames path does not carry still works, through the kernel:
/// a MESSAGE of 4,000 bytes arrives as IP fragments (the program passes
/// them; the kernel reassembles for the shard's socket) and its answer
/// over the MTU leaves through the kernel socket; OPTIONS over TCP (the
/// program passes TCP); and IPv6 through the frames path.
#[test]
fn fragments_tcp_and_ipv6() {
    if !netns::xdp_available() {
        return;
    }
    let dir = TempDir::new("xdp-kernel");
    let v6 = format!("udp:[{}]:0", netns::PROXY_IP6);
    netns::set_clients_in_net(true);
    let uas = Ua::on("127.0.0.2");
    let upstream = format!("sip:{}", uas.addr);
    let mut p = xdp_proxy(
        &dir,
        &[
            "--stateless",
            "--upstream",
            &upstream,
            "--shards",
            "2",
            "--listen",
            "udp:127.0.0.1:0",
            "--listen",
            "tcp:127.0.0.1:0",
            "--listen",
            &v6,
        ],
    );
    // A 4,000-byte MESSAGE comes in as IP fragments and goes on to the
    // upstream over the MTU; the answer comes back as a frame.
    let ua = Ua::new();
    let body = "y".repeat(4000);
    let msg = format!(
        "MESSAGE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKbig1;rport\r\nMax-Forwards: 70\r\n\
To: <sip:bob@example.test>\r\nFrom: <sip:alice@example.test>;tag=a\r\nCall-ID: big-1\r\nCSeq: 1 MESSAGE\r\n\
Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len(),
        a = ua.addr
    );
    ua.send(&msg, p.addr);
    let (m, _) = uas.expect_request("MESSAGE");
    assert_eq!(m.body(), body, "the whole body arrived");
    uas.answer(&m, &common::response_to(&m, 200, "OK", "b", "", ""));
    let ok = ua.expect_response(200, "MESSAGE");
    assert_eq!(ok.values(sipedge::sip::HeaderName::Via).len(), 1);

    // TCP, from the clients' namespace.
    let tcp = p.listener("tcp");
    let got = netns::in_ns(&netns::net().b, move || {
        let mut s = std::net::TcpStream::connect_timeout(&tcp, Duration::from_secs(3)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let local = s.local_addr().unwrap();
        let req = format!(
            "OPTIONS sip:{tcp} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKtcp1\r\nMax-Forwards: 70\r\n\
To: <sip:{tcp}>\r\nFrom: <sip:t@example.test>;tag=t\r\nCall-ID: tcp-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    assert!(got.starts_with("SIP/2.0 200 OK"), "{got}");

    // IPv6 over the frames path.
    let p6 = p
        .listen
        .iter()
        .find(|(t, a)| t == "udp" && a.is_ipv6())
        .unwrap()
        .1;
    let sock6 = netns::udp_in(&netns::net().b, &format!("[{}]:0", netns::CLIENT_IP6));
    sock6
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let ua6 = Ua {
        addr: sock6.local_addr().unwrap(),
        sock: sock6,
    };
    for i in 0..5 {
        ua6.send(&options(&ua6, p6, 10 + i, 0), p6);
        let (m, from) = ua6
            .recv_within(Duration::from_secs(3))
            .expect("IPv6 answer");
        assert_eq!((m.status(), from), (Some(200), p6), "{}", m.text);
    }
    p.terminate();
    let [rx, tx, kernel, skipped] = xdp_counts(&p);
    // In as frames: the IPv6 OPTIONS (the upstream's 200 comes to the
    // shard's own port, through the kernel); out as frames: the relayed
    // 200 and the IPv6 answers (the first may go through the kernel while
    // the neighbour is looked up); the MESSAGE over the MTU through the kernel.
    assert!(rx >= 5 && tx >= 5, "{:#?}", p.log);
    assert!(
        kernel >= 1,
        "the 4,000-byte MESSAGE is over the MTU: {:#?}",
        p.log
    );
    assert_eq!(skipped, 0);
}

/// kill -9 while traffic flows: the kernel detaches the program with the
/// process (no program left on the interface), and a new process on the
/// same address attaches its own and answers again.
#[test]
fn kill_9_mid_traffic_then_restart() {
    if !netns::xdp_available() {
        return;
    }
    let dir = TempDir::new("xdp-kill");
    let port = {
        let u = Ua::new();
        u.addr.port()
    };
    let listen = format!("udp:127.0.0.1:{port}");
    let mut p = xdp_proxy(&dir, &["--shards", "2", "--listen", &listen]);
    let net = netns::net();
    assert!(
        net.proxy_link().contains("prog/xdp"),
        "{}",
        net.proxy_link()
    );
    let to = p.addr;
    let ua = Ua::new();
    let sender = ua.sock.try_clone().unwrap();
    let from = ua.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let traffic = std::thread::spawn(move || {
        let fake = Ua {
            sock: sender,
            addr: from,
        };
        let mut i = 0;
        let t0 = Instant::now();
        while !s2.load(std::sync::atomic::Ordering::Relaxed)
            && t0.elapsed() < Duration::from_secs(10)
            && i < 200_000
        {
            let _ = fake.sock.send_to(options(&fake, to, i, 0).as_bytes(), to);
            i += 1;
            if i % 64 == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        i
    });
    std::thread::sleep(Duration::from_millis(300));
    p.kill9();
    let deadline = Instant::now() + Duration::from_secs(3);
    while net.proxy_link().contains("prog/xdp") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !net.proxy_link().contains("prog/xdp"),
        "a program outlived its process: {}",
        net.proxy_link()
    );
    // The storm ends before the restart. (Attaching while a storm runs on
    // the same veth queue sometimes left that queue silent here — nothing
    // reached the socket, no drop counted — a veth NAPI matter left open.)
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = traffic.join().unwrap();
    assert!(sent > 100, "{sent}");
    let mut p = xdp_proxy(&dir, &["--shards", "2", "--listen", &listen]);
    std::thread::sleep(Duration::from_millis(200));
    // Drain what the storm left, then ask again.
    while ua.recv_within(Duration::from_millis(50)).is_some() {}
    let probe = Ua::new();
    for i in 0..20 {
        probe.send(&options(&probe, p.addr, 900_000 + i, 0), p.addr);
        let Some((m, _)) = probe.recv_within(Duration::from_secs(2)) else {
            p.terminate();
            panic!("no answer after restart: {:#?}", p.log);
        };
        assert_eq!(m.status(), Some(200));
    }
    p.terminate();
    assert!(xdp_counts(&p)[0] >= 20, "{:#?}", p.log);
    assert!(!net.proxy_link().contains("prog/xdp"));
}

/// Where AF_XDP cannot run — the loopback interface has no XDP queues, an
/// interface that does not exist — sipedge says so in one line and exits 2.
#[test]
fn refused_in_one_line() {
    for (args, want) in [
        (
            vec!["--io", "xdp", "--listen", "udp:127.0.0.1:0"],
            "loopback interface has no XDP queues",
        ),
        (
            vec![
                "--io",
                "xdp",
                "--listen",
                "udp:0.0.0.0:0",
                "--advertise",
                "192.0.2.1",
            ],
            "names no interface",
        ),
    ] {
        let dir = TempDir::new("xdp-refused");
        let out = Command::new(env!("CARGO_BIN_EXE_sipedge"))
            .arg("run")
            .args(&args)
            .args(["--data-dir", dir.arg()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(
            err.trim().lines().filter(|l| l.contains("xdp")).count(),
            1,
            "{err}"
        );
    }
}

/// One datagram with bob's source IP and another MAC (what anyone on the
/// link can send) does not divert what the edge sends to bob: a source
/// MAC is checked against the kernel's neighbour entry before it is used.
/// bob registers; after the kernel path's retry time his next request makes
/// the edge learn him (the kernel knows his MAC from ARP by then); the
/// forged frame comes; alice's MESSAGE to bob still reaches him, and the
/// edge says at stop that one frame disagreed with the kernel.
#[test]
fn a_forged_source_mac_does_not_divert_a_contact() {
    if !netns::xdp_available() {
        return;
    }
    let dir = TempDir::new("xdp-forged-mac");
    let mut p = xdp_proxy(&dir, &["--domain", "example.test"]);
    let bob = Ua::on("127.0.0.2");
    let alice = Ua::new();
    let register = format!(
        "REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP {b};branch=z9hG4bKreg1;rport\r\nMax-Forwards: 70\r\n\
To: <sip:bob@example.test>\r\nFrom: <sip:bob@example.test>;tag=r1\r\nCall-ID: reg-forged\r\nCSeq: 1 REGISTER\r\n\
Contact: <sip:bob@{b}>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n",
        b = bob.addr
    );
    bob.send(&register, p.addr);
    bob.expect_response(200, "REGISTER");
    // Past the kernel path's retry (1 s), bob is learned from his next frame.
    std::thread::sleep(Duration::from_millis(1300));
    bob.send(&options(&bob, p.addr, 1, 0), p.addr);
    bob.expect_response(200, "OPTIONS");

    // The forged frame: bob's IP and port, a MAC that is nobody's.
    let mac_line = netns::net().proxy_link();
    let proxy_mac = mac_line
        .split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no MAC in {mac_line}"));
    let dst_mac: Vec<u8> = proxy_mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    let forged = sipedge::transport::frame::Link {
        dst_mac: dst_mac.try_into().unwrap(),
        src_mac: [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01],
        vlan: None,
    };
    let payload = options(&bob, p.addr, 2, 0);
    let mut frame = vec![0u8; 2048];
    let n = sipedge::transport::frame::build(
        &mut frame,
        &forged,
        bob.addr,
        p.addr,
        payload.as_bytes(),
        7,
    )
    .unwrap();
    let hex: String = frame[..n].iter().map(|b| format!("{b:02x}")).collect();
    let send = "import socket, sys\n\
ifname = [n for _, n in socket.if_nameindex() if n != 'lo'][0]\n\
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
s.bind((ifname, 0))\n\
s.send(bytes.fromhex(sys.argv[1]))\n";
    let st = netns::Net::exec(&netns::net().b, "python3")
        .args(["-c", send, &hex])
        .status()
        .unwrap();
    assert!(st.success(), "python3 could not send the forged frame");
    // The forged OPTIONS is answered (to the forged MAC: lost); drain bob.
    std::thread::sleep(Duration::from_millis(300));
    while bob.recv_within(Duration::from_millis(100)).is_some() {}

    let message = format!(
        "MESSAGE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKmsg1;rport\r\nMax-Forwards: 70\r\n\
To: <sip:bob@example.test>\r\nFrom: <sip:alice@example.test>;tag=m1\r\nCall-ID: msg-forged\r\nCSeq: 1 MESSAGE\r\n\
Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
        a = alice.addr
    );
    alice.send(&message, p.addr);
    let got = bob.recv_within(Duration::from_secs(3));
    assert!(
        got.as_ref()
            .is_some_and(|(m, _)| m.text.starts_with("MESSAGE sip:bob@")),
        "bob did not get alice's MESSAGE after the forged frame: {:?}",
        got.map(|(m, _)| m.text)
    );
    p.terminate();
    assert!(
        p.log
            .iter()
            .any(|l| l.contains("1 frame(s) came with a source MAC other than")),
        "{:#?}",
        p.log
    );
}

/// With two shards the Via port of each shard is steered too: what the
/// proxy forwards comes back as frames whichever queue it lands on, and a
/// response on the other shard's queue is received there and handed to
/// the shard whose transaction it answers. 40 MESSAGEs from 10 clients
/// through the stateful proxy to a UAS: all answered, and every datagram
/// the proxy received came through the AF_XDP sockets (before, the
/// responses to the shards' own ports went through the kernel).
#[test]
fn two_shards_receive_their_responses_as_frames() {
    if !netns::xdp_available() {
        return;
    }
    let dir = TempDir::new("xdp-two-shards");
    common::clients_for("xdp");
    let uas = Ua::on("127.0.0.2");
    let upstream = format!("sip:{}", uas.addr);
    let mut p = xdp_proxy(
        &dir,
        &[
            "--shards",
            "2",
            "--upstream",
            &upstream,
            "--domain",
            "example.test",
        ],
    );
    let clients: Vec<Ua> = (0..10).map(|_| Ua::new()).collect();
    for i in 0..40 {
        let ua = &clients[i % clients.len()];
        let message = format!(
            "MESSAGE sip:someone@example.net SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKm2s{i};rport\r\nMax-Forwards: 70\r\n\
To: <sip:someone@example.net>\r\nFrom: <sip:c{i}@example.test>;tag=t{i}\r\nCall-ID: two-shards-{i}\r\nCSeq: 1 MESSAGE\r\n\
Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
            a = ua.addr
        );
        ua.send(&message, p.addr);
        let Some((req, from)) = uas.recv_within(Duration::from_secs(2)) else {
            let got = ua
                .recv_within(Duration::from_millis(200))
                .map(|(m, _)| m.text);
            p.terminate();
            panic!(
                "message {i} not forwarded; the client got {got:?}\n{:#?}",
                p.log
            );
        };
        assert_eq!(req.method(), "MESSAGE", "{}", req.text);
        uas.send(&common::response_to(&req, 200, "OK", "u", "", ""), from);
        let got = ua.recv_within(Duration::from_secs(3));
        if !got.as_ref().is_some_and(|(m, _)| {
            m.status() == Some(200) && m.text.contains(&format!("Call-ID: two-shards-{i}"))
        }) {
            p.terminate();
            panic!(
                "the 200 to message {i} did not come back: {:?}\n{:#?}",
                got.map(|(m, _)| m.text),
                p.log
            );
        }
    }
    p.terminate();
    let [received, _, _, skipped] = xdp_counts(&p);
    let rx: u64 = p
        .log
        .iter()
        .rev()
        .find_map(|l| {
            l.split("stopped: rx=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no stop line: {:#?}", p.log));
    // 40 requests and 40 responses, every one off an AF_XDP socket.
    assert_eq!((rx, received, skipped), (80, 80, 0), "{:#?}", p.log);
    eprintln!(
        "responses handed to the other shard: {}",
        p.counter("sipedge_proxy_responses_handed_over_total")
    );
}
