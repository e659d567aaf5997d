//! Real SIP clients through sipedge's registrar and stateful proxy, under
//! each I/O driver with two shards (AF_XDP too where the kernel allows it:
//! sipedge in one network namespace, the clients in another, see
//! tests/common/netns.rs): SIPp's REGISTER scenario for many users
//! and its route-set aware calls to them (tools/sipp/register_domain.xml,
//! uac_users_domain.xml and uas.xml), and two pjsua2 (PJSIP) user agents
//! that register, call, hang up and send a MESSAGE
//! (tests/peers/pjsua_ua.py). A missing peer skips its test, unless
//! SIPEDGE_REQUIRE_PEERS is set (CI), which makes it a failure.
//!
//! Every peer process is bounded (its own timeout, and killed on drop).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{
    drivers_with_xdp, free_udp_port, have_peer, have_python_module, peer_command, sipp_for,
    sipp_report, tail, wait_line, Proxy, Reaped, TempDir, Ua,
};
use sipedge::sip::HeaderName;

const DOMAIN: &str = "example.test";

fn edge(driver: &str, data: &TempDir, shards: &str) -> Proxy {
    Proxy::start(&[
        "--io",
        driver,
        "--domain",
        DOMAIN,
        "--data-dir",
        data.arg(),
        "--shards",
        shards,
    ])
}

fn peer_file(rel: &str) -> String {
    format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// SIPp's REGISTER scenario binds 100 users of example.test to a SIPp UAS
/// (a third-party registration: the REGISTERs come from another port than
/// the contact); every one gets its 200, and a fetch lists the UAS as the
/// contact. Then SIPp's route-set aware UAC makes 100 calls to those users
/// through sipedge (INVITE by location, Record-Route, ACK and BYE along the
/// route set) to tools/sipp/uas.xml: every call succeeds.
#[test]
fn sipp_register_scenario_then_calls_to_registered_users() {
    if !have_peer("sipp") {
        return;
    }
    const USERS: usize = 100;
    const CALLS: usize = 100;
    for d in drivers_with_xdp() {
        common::clients_for(d);
        let dir = TempDir::new("sipp");
        let p = edge(d, &dir, "2");
        let (uas_port, reg_port, uac_port) = (free_udp_port(), free_udp_port(), free_udp_port());
        let ip = peer_command(d, "sipp").1;
        let mut csv = String::from("SEQUENTIAL\n# user;password;contact host:port\n");
        for i in 0..USERS {
            csv.push_str(&format!("user{i:03};pw;{ip}:{uas_port}\n"));
        }
        let users = dir.write("users.csv", &csv);

        let mut reg = Reaped::spawn(
            "sipp register",
            sipp_for(d, &dir, "register", reg_port)
                .0
                .args([
                    "-sf",
                    &peer_file("tools/sipp/register_domain.xml"),
                    "-key",
                    "domain",
                    DOMAIN,
                ])
                .args([
                    "-inf",
                    &users,
                    "-m",
                    &USERS.to_string(),
                    "-r",
                    "500",
                    "-l",
                    "100",
                ])
                .args(["-timeout", "20s", "-timeout_error", "-max_retrans", "3"])
                .arg(p.addr.to_string()),
        );
        let st = reg.wait_for(Duration::from_secs(30));
        assert!(
            st.is_some_and(|s| s.success()),
            "{d}: sipp REGISTER scenario: {st:?}\n{}",
            sipp_report(&dir, "register")
        );

        // A fetch for one of them lists the UAS's address.
        let ua = Ua::new();
        ua.send(
            &format!(
                "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKfetch;rport\r\nMax-Forwards: 70\r\n\
To: <sip:user042@{DOMAIN}>\r\nFrom: <sip:user042@{DOMAIN}>;tag=f\r\nCall-ID: fetch-1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
                a = ua.addr
            ),
            p.addr,
        );
        let fetch = ua.expect_response(200, "REGISTER");
        let listed = fetch.values(HeaderName::Contact);
        assert_eq!(listed.len(), 1, "{d}: {}", fetch.text);
        assert!(
            listed[0].starts_with(&format!("<sip:user042@{ip}:{uas_port}>;expires=")),
            "{d}: {listed:?}"
        );

        let mut uas = Reaped::spawn(
            "sipp uas",
            sipp_for(d, &dir, "uas", uas_port)
                .0
                .args(["-sf", &peer_file("tools/sipp/uas.xml")])
                .args(["-timeout", "40s"]),
        );
        std::thread::sleep(Duration::from_millis(300));
        let mut uac = Reaped::spawn(
            "sipp uac",
            sipp_for(d, &dir, "uac", uac_port)
                .0
                .args([
                    "-sf",
                    &peer_file("tools/sipp/uac_users_domain.xml"),
                    "-key",
                    "domain",
                    DOMAIN,
                ])
                .args([
                    "-inf",
                    &users,
                    "-m",
                    &CALLS.to_string(),
                    "-r",
                    "100",
                    "-l",
                    "50",
                ])
                .args(["-timeout", "30s", "-timeout_error", "-recv_timeout", "5000"])
                .arg(p.addr.to_string()),
        );
        let st = uac.wait_for(Duration::from_secs(40));
        let _ = uas.terminate(Duration::from_secs(2));
        assert!(
            st.is_some_and(|s| s.success()),
            "{d}: sipp UAC calls: {st:?}\n{}\n{}",
            sipp_report(&dir, "uac"),
            sipp_report(&dir, "uas")
        );
        let screen = std::fs::read_to_string(dir.path.join("uac.out")).unwrap_or_default();
        eprintln!(
            "{d}: {}",
            screen
                .lines()
                .filter(|l| l.contains("Successful call") || l.contains("Failed call"))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
}

/// Two pjsua2 user agents (PJSIP 2.15, null audio device, UDP on
/// 127.0.0.1) with sipedge as registrar and outbound proxy: bob and alice
/// register (200), alice calls bob, bob auto-answers, both reach CONFIRMED,
/// alice hangs up and bob sees DISCONNECTED; then alice's MESSAGE reaches
/// bob and gets its 200.
#[test]
fn pjsua2_register_call_hang_up_and_message() {
    if !have_python_module("pjsua2") {
        return;
    }
    for d in drivers_with_xdp() {
        common::clients_for(d);
        let dir = TempDir::new("pjsua");
        let p = edge(d, &dir, "2");
        let proxy = p.addr.to_string();
        let alice_log = pjsua2_pair(d, &dir, &proxy, &[]);
        // The in-dialog requests followed sipedge's Record-Route.
        let rr = format!("Record-Route: <sip:{proxy};lr>");
        assert!(alice_log.contains(&rr), "{d}: the 200 carried {rr}");
        let bye_routed = alice_log.split("BYE sip:").skip(1).any(|m| {
            m.lines()
                .take(12)
                .any(|l| l == format!("Route: <sip:{proxy};lr>"))
        });
        assert!(
            bye_routed,
            "{d}: alice's BYE went through sipedge\n{}",
            tail(&dir.path.join("alice.log"), 80)
        );
    }
}

/// The same call and MESSAGE over TCP and over TLS (pjsua2 verifying the
/// edge's certificate), under each driver with two shards: the stream
/// listeners' accept, framing, writes and flows on both drivers.
#[test]
fn pjsua2_over_tcp_and_tls() {
    if !have_python_module("pjsua2") {
        return;
    }
    let ck = rcgen::generate_simple_self_signed(vec![
        "localhost".into(),
        "127.0.0.1".into(),
        common::netns::PROXY_IP.into(),
    ])
    .unwrap();
    for d in drivers_with_xdp() {
        common::clients_for(d);
        let dir = TempDir::new("pjsua-streams");
        let cert = dir.write("cert.pem", &ck.cert.pem());
        let key = dir.write("key.pem", &ck.signing_key.serialize_pem());
        let p = Proxy::start(&[
            "--io",
            d,
            "--domain",
            DOMAIN,
            "--data-dir",
            dir.arg(),
            "--shards",
            "2",
            "--listen",
            "udp:127.0.0.1:0",
            "--listen",
            "tcp:127.0.0.1:0",
            "--listen",
            "tls:127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ]);
        assert!(
            !p.log.iter().any(|l| l.contains("runs the mio driver")),
            "{d}: {:#?}",
            p.log
        );
        for transport in ["tcp", "tls"] {
            let proxy = listen_addr(&p, transport);
            let _ = pjsua2_pair(d, &dir, &proxy, &["--transport", transport, "--ca", &cert]);
        }
    }
}

/// The address of `p`'s `transport` listener, from its startup line.
fn listen_addr(p: &Proxy, transport: &str) -> String {
    let tag = format!("{transport}:");
    p.log
        .iter()
        .find_map(|l| {
            let list = l.split("listen=").nth(1)?.split(' ').next()?;
            list.split(',')
                .find_map(|x| x.strip_prefix(tag.as_str()).map(str::to_owned))
        })
        .unwrap_or_else(|| panic!("no {transport} listener in {:#?}", p.log))
}

/// bob registers and waits; alice registers, calls bob, hangs up and sends
/// a MESSAGE, through `proxy` (`extra`: pjsua_ua.py options). Asserts what
/// each says; returns alice's PJSIP log.
fn pjsua2_pair(d: &str, dir: &TempDir, proxy: &str, extra: &[&str]) -> String {
    let script = peer_file("tests/peers/pjsua_ua.py");
    let ua = |role: &str| {
        let (mut c, ip) = peer_command(d, "python3");
        c.arg(&script)
            .args([
                "--role",
                role,
                "--proxy",
                proxy,
                "--domain",
                DOMAIN,
                "--timeout",
                "20",
                "--bind",
                ip,
            ])
            .args(extra)
            .arg("--log")
            .arg(dir.path.join(format!("{role}.log")))
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    let report = |role: &str, lines: &[String]| {
        format!(
            "--- {role} said:\n{}\n--- {role}'s PJSIP log:\n{}",
            lines.join("\n"),
            tail(&dir.path.join(format!("{role}.log")), 80)
        )
    };

    let (mut bob, bob_rx) = Reaped::spawn_lines("pjsua2 bob", &mut ua("bob"));
    let mut bob_said = Vec::new();
    let registered = wait_line(
        &bob_rx,
        "bob: registration 200",
        Duration::from_secs(15),
        &mut bob_said,
    );
    assert!(
        registered,
        "{d} {extra:?}: bob did not register\n{}",
        report("bob", &bob_said)
    );

    let (mut alice, alice_rx) = Reaped::spawn_lines("pjsua2 alice", &mut ua("alice"));
    let alice_st = alice.wait_for(Duration::from_secs(30));
    let alice_said: Vec<String> = alice_rx.try_iter().collect();
    let bob_st = bob.wait_for(Duration::from_secs(10));
    bob_said.extend(bob_rx.try_iter());
    let both = format!(
        "{}\n{}",
        report("alice", &alice_said),
        report("bob", &bob_said)
    );
    assert!(
        alice_st.is_some_and(|s| s.success()),
        "{d} {extra:?}: alice {alice_st:?}\n{both}"
    );
    assert!(
        bob_st.is_some_and(|s| s.success()),
        "{d} {extra:?}: bob {bob_st:?}\n{both}"
    );
    for (said, want) in [
        (&alice_said, "alice: registration 200"),
        (&alice_said, "alice: call CONFIRMED"),
        (&alice_said, "alice: call DISCONNECTED"),
        (&alice_said, "alice: MESSAGE status 200"),
        (
            &bob_said,
            "bob: incoming call from <sip:alice@example.test>",
        ),
        (&bob_said, "bob: call CONFIRMED"),
        (&bob_said, "bob: call DISCONNECTED"),
        (
            &bob_said,
            "bob: MESSAGE from <sip:alice@example.test>: hello bob, from pjsua2",
        ),
    ] {
        assert!(
            said.iter().any(|l| l.contains(want)),
            "{d} {extra:?}: no {want:?}\n{both}"
        );
    }
    std::fs::read_to_string(dir.path.join("alice.log")).unwrap_or_default()
}
