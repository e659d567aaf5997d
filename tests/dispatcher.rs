//! Dispatcher sets (`[[dispatcher]]`) with real SIPp gateways on loopback:
//!
//! - round-robin spreads SIPp calls evenly over two SIPp UAS gateways and
//!   every load counter is back at zero after the calls;
//! - weighted 3:1 sends three calls to one for each to the other;
//! - hash on the Call-ID sends every request of a Call-ID to one gateway;
//! - a gateway killed: its probes mark it down within three intervals, and
//!   calls made meanwhile and after all complete (the silent one is left
//!   after `fork_timeout`), none failed;
//! - a gateway answering 503 with Retry-After: the call completes on the
//!   next one (the caller sees one 200), the busy one is down for a while;
//! - least-loaded with calls held: loads follow, then return to zero (and
//!   after answered, refused and failed-over calls in the tests above);
//! - 20 ringing calls CANCELed by the caller: each gets its 487, and every
//!   load is back at zero;
//! - a hunt group of pjsua2 operators holding different numbers of calls:
//!   the least loaded rings first, a busy one is skipped, one not answering
//!   is left after ring_timeout, and the call is answered.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    free_udp_port, have_peer, response_to, sipp, sipp_report, Gateway, Proxy, Reaped, TempDir, Ua,
    SIPP,
};
use serde_json::Value;

/// The edge with `sets` (TOML of `[[dispatcher]]` tables) and a control socket.
fn edge(dir: &TempDir, sets: &str) -> (Proxy, String) {
    edge_with(dir, 2, sets)
}

/// [`edge`] with `shards` shards.
fn edge_with(dir: &TempDir, shards: u32, sets: &str) -> (Proxy, String) {
    let config = dir.write(
        "edge.toml",
        &format!("domain = [\"example.test\"]\nshards = {shards}\n{sets}"),
    );
    let sock = dir.path.join("ctl.sock").to_string_lossy().into_owned();
    let data = dir.path.join("data").to_string_lossy().into_owned();
    let p = Proxy::start(&["--config", &config, "--control", &sock, "--data-dir", &data]);
    (p, sock)
}

fn ctl(sock: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(["ctl", "--control", sock, "--json"])
        .args(args)
        .output()
        .unwrap()
}

/// (state, load, calls) of each destination, by URI.
fn destinations(sock: &str) -> Vec<(String, String, u64, u64)> {
    let out = ctl(sock, &["dispatcher", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["uri"].as_str().unwrap().to_owned(),
                d["state"].as_str().unwrap().to_owned(),
                d["load"].as_u64().unwrap(),
                d["calls"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn loads_settle_to_zero(sock: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let d = destinations(sock);
        if d.iter().all(|x| x.2 == 0) {
            return;
        }
        assert!(Instant::now() < deadline, "loads not back to zero: {d:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `calls` SIPp calls to users of pstn.example.test through `edge`
/// (`hold_ms` between 200 and BYE); asserts they all succeeded.
fn calls(dir: &TempDir, name: &str, edge: SocketAddr, calls: u32, rate: u32, hold_ms: u32) {
    let port = free_udp_port();
    let mut c = sipp(dir, name, port);
    c.args(["-sf", &format!("{SIPP}/uac_users_domain.xml")])
        .args(["-key", "domain", "pstn.example.test"])
        .args(["-inf", &format!("{SIPP}/users.csv")])
        .args(["-m", &calls.to_string(), "-r", &rate.to_string()])
        .args([
            "-d",
            &hold_ms.to_string(),
            "-timeout",
            "60s",
            "-timeout_error",
        ])
        .arg(edge.to_string());
    let status = c.status().unwrap();
    assert!(status.success(), "{name}: {}", sipp_report(dir, name));
}

fn have_peers() -> bool {
    have_peer("sipp")
}

/// Two SIPp gateways (uas.xml) and an edge whose set "gw" for
/// pstn.example.test lists them, with the set keys `keys` (TOML lines).
fn two_gateways(dir: &TempDir, keys: &str) -> (Gateway, Gateway, Proxy, String) {
    let (a, b) = (
        Gateway::start(dir, "gwa", "uas.xml", &[]),
        Gateway::start(dir, "gwb", "uas.xml", &[]),
    );
    let (p, sock) = edge(
        dir,
        &format!(
            "[[dispatcher]]\nname = \"gw\"\ndomains = [\"pstn.example.test\"]\n\
             destinations = [\"{}\", \"{}\"]\n{keys}",
            a.uri(),
            b.uri()
        ),
    );
    (a, b, p, sock)
}

#[test]
fn round_robin_spreads_calls_and_loads_return_to_zero() {
    if !have_peers() {
        return;
    }
    let dir = TempDir::new("ds-rr");
    let (a, b, p, sock) = two_gateways(
        &dir,
        "algorithm = \"round-robin\"\nprobe_interval = \"2s\"\n",
    );
    calls(&dir, "uac", p.addr, 40, 40, 0);
    let (na, nb) = (a.completed(20), b.completed(20));
    assert_eq!(na + nb, 40);
    // Two shards each keep their own turn: even within one call per shard.
    assert!(na.abs_diff(nb) <= 2, "{na} vs {nb}");
    loads_settle_to_zero(&sock);
    assert!(destinations(&sock).iter().all(|d| d.1 == "active"));
}

#[test]
fn weighted_follows_the_weights() {
    if !have_peers() {
        return;
    }
    let dir = TempDir::new("ds-w");
    let (a, b) = (
        Gateway::start(&dir, "gwa", "uas.xml", &[]),
        Gateway::start(&dir, "gwb", "uas.xml", &[]),
    );
    let (p, sock) = edge(
        &dir,
        &format!(
            "[[dispatcher]]\nname = \"gw\"\ndomains = [\"pstn.example.test\"]\n\
             destinations = [{{ uri = \"{}\", weight = 3 }}, {{ uri = \"{}\", weight = 1 }}]\n\
             algorithm = \"weighted\"\n",
            a.uri(),
            b.uri()
        ),
    );
    calls(&dir, "uac", p.addr, 80, 80, 0);
    let (na, nb) = (a.completed(60), b.completed(20));
    assert_eq!(na + nb, 80);
    assert!((56..=64).contains(&na), "{na} vs {nb}");
    loads_settle_to_zero(&sock);
}

/// An INVITE from `ua` for `user@pstn.example.test` with `call_id`.
fn invite(ua: &Ua, edge: SocketAddr, call_id: &str, cseq: u32) {
    let branch = format!("z9hG4bK{call_id}{cseq}");
    ua.send(
        &format!(
            "INVITE sip:bob@pstn.example.test SIP/2.0\r\n\
             Via: SIP/2.0/UDP {};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:alice@example.test>;tag=a{cseq}\r\nTo: <sip:bob@pstn.example.test>\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:alice@{}>\r\n\
             Content-Length: 0\r\n\r\n",
            ua.addr, ua.addr
        ),
        edge,
    );
}

#[test]
fn hash_keeps_each_call_id_on_one_gateway() {
    let dir = TempDir::new("ds-hash");
    // Gateways here are plain sockets that note the Call-IDs they get.
    let gws = [Ua::new(), Ua::new(), Ua::new()];
    let (p, _sock) = edge(
        &dir,
        &format!(
            "[[dispatcher]]\nname = \"gw\"\ndomains = [\"pstn.example.test\"]\n\
             destinations = [\"sip:{}\", \"sip:{}\", \"sip:{}\"]\nalgorithm = \"hash\"\n\
             hash = \"call-id\"\nprobe_interval = \"0s\"\n",
            gws[0].addr, gws[1].addr, gws[2].addr
        ),
    );
    let caller = Ua::new();
    let mut seen: Vec<Vec<String>> = vec![Vec::new(); 3];
    for round in 1..=3 {
        for c in 0..12 {
            invite(&caller, p.addr, &format!("call{c}"), round);
        }
        for (i, g) in gws.iter().enumerate() {
            for m in g.collect(Duration::from_millis(300)) {
                if m.method() == "INVITE" {
                    // Busy: a final answer that is not a failure (no failover).
                    g.answer(&m, &response_to(&m, 486, "Busy Here", "gw", "", ""));
                    let id = m.header(sipedge::sip::HeaderName::CallId).unwrap();
                    let key = format!("{id}/{}", m.cseq_number());
                    if !seen[i].contains(&key) {
                        seen[i].push(key); // not a retransmission
                    }
                }
            }
        }
    }
    let total: usize = seen.iter().map(Vec::len).sum();
    assert_eq!(total, 36, "{seen:?}");
    let call = |x: &String| x.split('/').next().unwrap().to_owned();
    for (i, ids) in seen.iter().enumerate() {
        for id in ids.iter().map(call) {
            for (j, other) in seen.iter().enumerate() {
                assert!(
                    i == j || !other.iter().any(|o| call(o) == id),
                    "{id} went to {i} and {j}"
                );
            }
        }
    }
    assert!(
        seen.iter().filter(|s| !s.is_empty()).count() >= 2,
        "{seen:?}"
    );
}

#[test]
fn a_killed_gateway_is_marked_down_by_probes_and_no_call_fails() {
    if !have_peers() {
        return;
    }
    let dir = TempDir::new("ds-down");
    let keys = "probe_interval = \"1s\"\nprobe_timeout = \"500ms\"\n\
                failures_down = 2\nfork_timeout = \"1s\"\n";
    let (mut a, b, p, sock) = two_gateways(&dir, keys);
    calls(&dir, "warm", p.addr, 10, 20, 0);
    assert!(destinations(&sock).iter().all(|d| d.1 == "active"));
    let uri_a = a.uri();
    a.kill();
    let killed = Instant::now();
    // Calls right away: those sent to the dead one move on after fork_timeout.
    calls(&dir, "during", p.addr, 10, 20, 0);
    loop {
        let d = destinations(&sock);
        if d.iter().any(|x| x.0 == uri_a && x.1 == "down") {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(3) + Duration::from_millis(700),
            "not down within three probe intervals: {d:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let calls_to = |uri: &str| -> u64 {
        destinations(&sock)
            .iter()
            .filter(|x| x.0 == uri)
            .map(|x| x.3)
            .sum()
    };
    let (a0, b0) = (calls_to(&uri_a), calls_to(&b.uri()));
    calls(&dir, "after", p.addr, 20, 40, 0);
    assert_eq!(calls_to(&uri_a), a0, "a call went to the dead gateway");
    assert_eq!(calls_to(&b.uri()), b0 + 20);
    loads_settle_to_zero(&sock);
}

#[test]
fn a_503_moves_the_call_to_the_next_gateway() {
    if !have_peers() {
        return;
    }
    let dir = TempDir::new("ds-503");
    let busy = Gateway::start(&dir, "busy", "uas_503.xml", &["-key", "retry_after", "30"]);
    let good = Gateway::start(&dir, "good", "uas.xml", &[]);
    // One shard: a destination's health is each shard's own (a 503 seen on
    // one shard takes the destination down there).
    let (p, sock) = edge_with(
        &dir,
        1,
        &format!(
            "[[dispatcher]]\nname = \"gw\"\ndomains = [\"pstn.example.test\"]\n\
             destinations = [{{ uri = \"{}\", priority = 1 }}, {{ uri = \"{}\", priority = 2 }}]\n\
             algorithm = \"priority\"\nprobe_interval = \"1s\"\n",
            busy.uri(),
            good.uri()
        ),
    );
    // The first call meets the 503 and completes on the next gateway.
    calls(&dir, "first", p.addr, 1, 1, 0);
    assert_eq!(good.completed(1), 1);
    assert_eq!(busy.completed(1), 1, "the busy gateway was tried first");
    let d = destinations(&sock);
    assert!(
        d.iter().any(|x| x.0 == busy.uri() && x.1 == "down"),
        "{d:?}"
    );
    // Down for its Retry-After (probes answered meanwhile do not count):
    // the next calls go straight to the good one.
    std::thread::sleep(Duration::from_millis(2500));
    calls(&dir, "next", p.addr, 5, 10, 0);
    assert_eq!(good.completed(6), 6);
    let d = destinations(&sock);
    let busy_calls: u64 = d.iter().filter(|x| x.0 == busy.uri()).map(|x| x.3).sum();
    assert_eq!(busy_calls, 1, "{d:?}");
    assert_eq!(busy.stat("SuccessfulCall(C)"), 1);
    loads_settle_to_zero(&sock);
}

#[test]
fn least_loaded_follows_calls_held_and_returns_to_zero() {
    if !have_peers() {
        return;
    }
    let dir = TempDir::new("ds-ll");
    let (a, b, p, sock) = two_gateways(&dir, "algorithm = \"least-loaded\"\n");
    // 8 calls held 3 s, in the background.
    let port = free_udp_port();
    let mut held = sipp(&dir, "held", port);
    held.args(["-sf", &format!("{SIPP}/uac_users_domain.xml")])
        .args(["-key", "domain", "pstn.example.test"])
        .args(["-inf", &format!("{SIPP}/users.csv")])
        .args(["-m", "8", "-r", "20", "-d", "3000"])
        .arg(p.addr.to_string())
        .stdout(Stdio::null());
    let mut held = Reaped::spawn("sipp", &mut held);
    std::thread::sleep(Duration::from_millis(1500));
    let d = destinations(&sock);
    let loads: Vec<u64> = d.iter().map(|x| x.2).collect();
    assert_eq!(loads.iter().sum::<u64>(), 8, "{d:?}");
    // Per shard each is the least loaded in turn: at most one apart per shard.
    assert!(loads[0].abs_diff(loads[1]) <= 2, "{d:?}");
    let st = held.wait_for(Duration::from_secs(30)).unwrap();
    assert!(st.success(), "{}", sipp_report(&dir, "held"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.stat("SuccessfulCall(C)") + b.stat("SuccessfulCall(C)") < 8 {
        assert!(
            Instant::now() < deadline,
            "the gateways did not complete 8 calls"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    loads_settle_to_zero(&sock);
}

/// A gateway that rings and never answers: CANCELs are answered 200 and
/// the INVITE 487; everything else (ACK) is absorbed. Runs until `stop`.
fn ringing_gateway(g: Ua, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::Ordering;
    let mut invites: Vec<common::Msg> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Some((m, _)) = g.recv_within(Duration::from_millis(100)) else {
            continue;
        };
        match m.method().as_str() {
            "INVITE" => {
                g.answer(&m, &response_to(&m, 180, "Ringing", "gw", "", ""));
                invites.push(m);
            }
            "CANCEL" => {
                g.answer(&m, &response_to(&m, 200, "OK", "gw", "", ""));
                let id = m.header(sipedge::sip::HeaderName::CallId);
                if let Some(i) = invites
                    .iter()
                    .position(|x| x.header(sipedge::sip::HeaderName::CallId) == id)
                {
                    let inv = invites.swap_remove(i);
                    g.answer(
                        &inv,
                        &response_to(&inv, 487, "Request Terminated", "gw", "", ""),
                    );
                }
            }
            _ => {}
        }
    }
}

#[test]
fn after_cancelled_calls_every_load_is_zero() {
    let dir = TempDir::new("ds-churn");
    let ring = Ua::new();
    let ring_addr = ring.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let t = std::thread::spawn(move || ringing_gateway(ring, s2));
    let (p, sock) = edge(
        &dir,
        &format!(
            "[[dispatcher]]\nname = \"gw\"\ndomains = [\"pstn.example.test\"]\n\
             destinations = [{{ uri = \"sip:{ring_addr}\", max_load = 100 }}]\nprobe_interval = \"0s\"\n"
        ),
    );
    let caller = Ua::new();
    for c in 0..20 {
        invite(&caller, p.addr, &format!("churn{c}"), 1);
    }
    // All 20 ringing: 20 calls in progress.
    let deadline = Instant::now() + Duration::from_secs(5);
    while destinations(&sock)[0].2 < 20 {
        assert!(Instant::now() < deadline, "{:?}", destinations(&sock));
        std::thread::sleep(Duration::from_millis(50));
    }
    // The caller CANCELs each.
    for c in 0..20 {
        caller.send(
            &format!(
                "CANCEL sip:bob@pstn.example.test SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {};branch=z9hG4bKchurn{c}1;rport\r\nMax-Forwards: 70\r\n\
                 From: <sip:alice@example.test>;tag=a1\r\nTo: <sip:bob@pstn.example.test>\r\n\
                 Call-ID: churn{c}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
                caller.addr
            ),
            p.addr,
        );
    }
    let got = caller.collect(Duration::from_secs(2));
    let mut terminated: Vec<String> = got
        .iter()
        .filter(|m| m.status() == Some(487))
        .filter_map(|m| m.header(sipedge::sip::HeaderName::CallId))
        .collect();
    terminated.sort();
    terminated.dedup(); // 487s are retransmitted until ACKed
    assert_eq!(terminated.len(), 20, "{terminated:?}");
    loads_settle_to_zero(&sock);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    t.join().unwrap();
}

/// A pjsua2 operator (tests/peers/pjsua_operator.py) registered at the edge.
fn operator(
    dir: &TempDir,
    user: &str,
    mode: &str,
    edge: SocketAddr,
) -> (Reaped, mpsc::Receiver<String>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/pjsua_operator.py");
    let (r, rx) = Reaped::spawn_lines(
        "pjsua_operator.py",
        Command::new("python3")
            .arg(script)
            .args(["--user", user, "--mode", mode, "--proxy", &edge.to_string()])
            .args(["--ring", "0.2", "--timeout", "60"])
            .stdin(Stdio::piped())
            .stderr(std::fs::File::create(dir.path.join(format!("{user}.err"))).unwrap()),
    );
    (r, rx)
}

/// Every line `rx` sends within `wait`, appended to `seen`.
fn lines(rx: &mpsc::Receiver<String>, wait: Duration, seen: &mut Vec<String>) {
    let deadline = Instant::now() + wait;
    while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        seen.push(l);
    }
}

fn count(seen: &[String], what: &str) -> usize {
    seen.iter().filter(|l| l.contains(what)).count()
}

/// The help desk: four pjsua2 operators, op1 holding two calls, op2 one, op3
/// busy (486), op4 never answering. A call to sip:support@example.test
/// rings the least loaded first — op3 and op4 (no call; op3 first in
/// turn) —, skips busy op3, leaves op4 after ring_timeout (CANCEL, 487),
/// and is answered by op2, the next least loaded; op1 never rings.
#[test]
fn a_hunt_group_of_pjsua2_operators_rings_the_least_loaded_and_moves_on() {
    if !have_peers() || !common::have_python_module("pjsua2") {
        return;
    }
    let dir = TempDir::new("ds-hunt");
    let (p, sock) = edge(
        &dir,
        "[[group]]\nname = \"support\"\ndomain = \"example.test\"\n\
         members = [\"sip:op1@example.test\", \"sip:op2@example.test\", \
         \"sip:op3@example.test\", \"sip:op4@example.test\"]\n\
         strategy = \"least-loaded\"\nring_timeout = \"2s\"\n",
    );
    let ops: Vec<_> = [
        ("op1", "answer"),
        ("op2", "answer"),
        ("op3", "busy"),
        ("op4", "noanswer"),
    ]
    .iter()
    .map(|(u, m)| operator(&dir, u, m, p.addr))
    .collect();
    let mut seen: Vec<Vec<String>> = vec![Vec::new(); 4];
    for (i, (_, rx)) in ops.iter().enumerate() {
        assert!(
            common::wait_line(rx, "registered", Duration::from_secs(10), &mut seen[i]),
            "op{} did not register: {:?}",
            i + 1,
            seen[i]
        );
    }
    // Calls held 20 s directly to op1 (two) and op2 (one).
    let held_users = dir.write("held.csv", "SEQUENTIAL\nop1;x;x;x\nop1;x;x;x\nop2;x;x;x\n");
    let port = free_udp_port();
    let mut held = sipp(&dir, "held", port);
    held.args(["-sf", &format!("{SIPP}/uac_users_domain.xml")])
        .args(["-key", "domain", "example.test", "-inf", &held_users])
        .args(["-m", "3", "-r", "10", "-d", "20000"])
        .arg(p.addr.to_string());
    let _held = Reaped::spawn("sipp", &mut held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&seen[0], "confirmed") < 2 || count(&seen[1], "confirmed") < 1 {
        assert!(Instant::now() < deadline, "held calls not up: {seen:?}");
        for (i, (_, rx)) in ops.iter().enumerate() {
            lines(rx, Duration::from_millis(50), &mut seen[i]);
        }
    }
    let loads: Vec<(String, u64)> = destinations(&sock)
        .into_iter()
        .map(|d| (d.0, d.2))
        .collect();
    assert_eq!(
        loads.iter().map(|l| l.1).collect::<Vec<_>>(),
        [2, 1, 0, 0],
        "{loads:?}"
    );
    // The call to the group.
    let group = dir.write("group.csv", "SEQUENTIAL\nsupport;x;x;x\n");
    let port = free_udp_port();
    let status = sipp(&dir, "caller", port)
        .args(["-sf", &format!("{SIPP}/uac_users_domain.xml")])
        .args(["-key", "domain", "example.test", "-inf", &group])
        .args(["-m", "1", "-d", "500", "-timeout", "30s", "-timeout_error"])
        .arg(p.addr.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "{}", sipp_report(&dir, "caller"));
    for (i, (_, rx)) in ops.iter().enumerate() {
        lines(rx, Duration::from_millis(300), &mut seen[i]);
    }
    assert_eq!(
        count(&seen[2], "incoming"),
        1,
        "busy op3 rang first: {seen:?}"
    );
    assert_eq!(count(&seen[3], "incoming"), 1, "op4 rang next: {seen:?}");
    assert_eq!(
        count(&seen[3], " 487"),
        1,
        "op4 was CANCELed after ring_timeout: {seen:?}"
    );
    assert_eq!(
        count(&seen[1], "incoming"),
        2,
        "op2 answered the group call: {seen:?}"
    );
    assert_eq!(
        count(&seen[0], "incoming"),
        2,
        "op1 (two calls) never rang: {seen:?}"
    );
    for (r, _) in ops {
        drop(r);
    }
}
