//! Stream transports end to end: the real binary (`sipedge run`, stateful
//! proxy and registrar, two shards) listening on UDP, TCP, TLS, WS and WSS
//! on 127.0.0.1, under each I/O driver, with real peers where installed.
//!
//! - pjsua2 (PJSIP) over TCP and over TLS (the edge's certificate verified):
//!   register with digest authentication, call, hang up, MESSAGE.
//! - Mixed transports: a UDP caller and a TLS callee who hangs up himself
//!   (the BYE crosses from TLS to UDP), a SIP.js caller over WebSocket and a
//!   UDP callee (the BYE crosses from WS to UDP).
//! - SIP.js in Node over WS and WSS: a WSS caller reaches a WS callee, whose
//!   `.invalid` contact is reachable only through its connection (RFC 7118
//!   §5, RFC 5626 flows), then a MESSAGE.
//! - The web phone (`examples/webphone`) in a real headless Chromium: it
//!   registers over WebSocket, sends a MESSAGE to a UDP user, receives that
//!   user's call and MESSAGE.
//! - SIPp over TCP (`-t t1`), UAC and UAS, through the edge.
//! - A request too large for UDP goes to a UDP target over TCP, or 513, with
//!   `[proxy] large_requests = "tcp"` (§18.1.1); over UDP by default.
//! - Hostile streams: framing (split, batched, CRLF keep-alives, no
//!   Content-Length → 400 and close), a header block sent one byte at a time
//!   (slowloris) is cut off, many connections from one address stop at the
//!   per-IP cap, a client that never reads is disconnected with memory
//!   bounded, TLS garbage is dropped, a WebSocket upgrade without the `sip`
//!   subprotocol is refused with 400.
//!
//! Every peer process is bounded (its own timeout, killed on drop) and every
//! loop is bounded in count and time; all traffic stays on 127.0.0.0/8.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    drivers, have_peer, have_python_module, sipp, sipp_report, tail, wait_line, Proxy, Reaped,
    TempDir, Ua,
};

const DOMAIN: &str = "example.test";

/// A test CA and the edge's certificate for 127.0.0.1 and localhost, signed
/// by it: (CA cert, edge cert, edge key) paths.
fn certificate(dir: &TempDir) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "sipedge test CA");
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ca = CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let mut leaf =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = leaf.signed_by(&key, &*ca).unwrap();
    // A client certificate from the same CA, for `verify_client`.
    let mut client = CertificateParams::new(vec!["phone.example.test".to_owned()]).unwrap();
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let client_cert = client.signed_by(&client_key, &*ca).unwrap();
    dir.write("client.pem", &client_cert.pem());
    dir.write("client-key.pem", &client_key.serialize_pem());
    (
        dir.write("ca.pem", &ca.pem()),
        dir.write("cert.pem", &cert.pem()),
        dir.write("key.pem", &key.serialize_pem()),
    )
}

fn users_toml(users: &[(&str, &str)]) -> String {
    users
        .iter()
        .map(|(n, p)| {
            format!("[[user]]\nname = \"{n}\"\ndomain = \"{DOMAIN}\"\npassword = \"{p}\"\n\n")
        })
        .collect()
}

/// The edge on every transport (ports chosen by the kernel), two shards.
struct Edge {
    proxy: Proxy,
    /// The CA that signed its certificate (PEM path).
    ca: String,
}

fn edge(driver: &str, dir: &TempDir, extra: &[&str]) -> Edge {
    let (ca, cert, key) = certificate(dir);
    let mut args = vec![
        "--io",
        driver,
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
        "--listen",
        "ws:127.0.0.1:0",
        "--listen",
        "wss:127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    args.extend_from_slice(extra);
    Edge {
        proxy: Proxy::start(&args),
        ca,
    }
}

fn peer_file(rel: &str) -> String {
    format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// True when the JavaScript peers can run (Node and `npm ci --prefix tests/peers`).
fn have_node_peers() -> bool {
    if !have_peer("node") {
        return false;
    }
    let ok = std::path::Path::new(&peer_file("tests/peers/node_modules/sip.js")).exists();
    if !ok {
        assert!(
            std::env::var_os("SIPEDGE_REQUIRE_PEERS").is_none(),
            "tests/peers/node_modules is missing: run `npm ci --prefix tests/peers`"
        );
        eprintln!("skipping: tests/peers/node_modules missing (npm ci --prefix tests/peers)");
    }
    ok
}

/// A pjsua2 UA (`tests/peers/pjsua_ua.py`) of `role` over `transport`.
fn pjsua(dir: &TempDir, e: &Edge, role: &str, transport: &str, extra: &[&str]) -> Command {
    let proxy = e.proxy.listener(transport).to_string();
    let name = extra
        .windows(2)
        .find(|w| w[0] == "--user")
        .map_or(role, |w| w[1]);
    let mut c = Command::new("python3");
    c.arg(peer_file("tests/peers/pjsua_ua.py"))
        .args(["--role", role, "--proxy", &proxy, "--domain", DOMAIN])
        .args(["--transport", transport, "--ca", &e.ca, "--timeout", "25"])
        .args(extra)
        .arg("--log")
        .arg(dir.path.join(format!("{name}.log")))
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// A SIP.js UA in Node (`tests/peers/sipjs_ua.mjs`).
fn sipjs(dir: &TempDir, e: &Edge, transport: &str, user: &str, extra: &[&str]) -> Command {
    let url = format!("{transport}://{}", e.proxy.listener(transport));
    let mut c = Command::new("node");
    c.arg(peer_file("tests/peers/sipjs_ua.mjs"))
        .args(["--server", &url, "--user", user, "--domain", DOMAIN])
        .args(["--ca", &e.ca, "--timeout", "25", "--name", user])
        .args(extra)
        .arg("--log")
        .arg(dir.path.join(format!("{user}.log")))
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// SIP.js alice over `transport` calls bob (hangs up after 0.5 s), then
/// sends him `text`; both alice runs and `bob` must end with status 0.
/// Returns alice's call run and every report.
fn sipjs_call_then_message(
    d: &str,
    dir: &TempDir,
    e: &Edge,
    transport: &str,
    bob: &mut Run,
    text: &str,
) -> (Run, String) {
    let alice = |role: &[&str]| {
        let mut r = Run::start("alice", &mut sipjs(dir, e, transport, "alice", role));
        let ok = r.finish(Duration::from_secs(30));
        (r, ok)
    };
    let (call, call_ok) = alice(&["--role", "call", "--target", "bob", "--hold", "0.5"]);
    let (msg, msg_ok) = alice(&["--role", "message", "--target", "bob", "--text", text]);
    let bob_ok = bob.finish(Duration::from_secs(15));
    let all = format!(
        "{}\n{}\n{}",
        call.report(dir, "alice.log"),
        msg.report(dir, "alice.log"),
        bob.report(dir, "bob.log")
    );
    assert!(
        call_ok && msg_ok && bob_ok,
        "{d}: {call_ok} {msg_ok} {bob_ok}\n{all}"
    );
    (call, all)
}

/// One peer process and what it printed.
struct Run {
    name: String,
    proc: Reaped,
    rx: mpsc::Receiver<String>,
    said: Vec<String>,
}

impl Run {
    fn start(name: &str, cmd: &mut Command) -> Self {
        let (proc, rx) = Reaped::spawn_lines(name, cmd);
        Self {
            name: name.to_owned(),
            proc,
            rx,
            said: Vec::new(),
        }
    }

    fn wait_line(&mut self, needle: &str, limit: Duration) -> bool {
        wait_line(&self.rx, needle, limit, &mut self.said)
    }

    /// Waits for the exit; true on status 0.
    fn finish(&mut self, limit: Duration) -> bool {
        let st = self.proc.wait_for(limit);
        self.said.extend(self.rx.try_iter());
        st.is_some_and(|s| s.success())
    }

    fn said(&self, needle: &str) -> bool {
        self.said.iter().any(|l| l.contains(needle))
    }

    fn report(&self, dir: &TempDir, log: &str) -> String {
        format!(
            "--- {} said:\n{}\n--- its log {log}:\n{}",
            self.name,
            self.said.join("\n"),
            tail(&dir.path.join(log), 60)
        )
    }
}

/// Runs a callee (ready once it printed `ready`) and a caller to their end;
/// panics with both reports unless both exit 0 and said what `want` lists.
fn call_pair(
    what: &str,
    dir: &TempDir,
    callee: (&str, &mut Command, &str, &str),
    caller: (&str, &mut Command, &str),
    want: &[(bool, &str)],
) {
    let (callee_name, callee_cmd, ready, callee_log) = callee;
    let (caller_name, caller_cmd, caller_log) = caller;
    let mut b = Run::start(callee_name, callee_cmd);
    let up = b.wait_line(ready, Duration::from_secs(15));
    assert!(
        up,
        "{what}: the callee did not register\n{}",
        b.report(dir, callee_log)
    );
    let mut a = Run::start(caller_name, caller_cmd);
    let a_ok = a.finish(Duration::from_secs(30));
    let b_ok = b.finish(Duration::from_secs(15));
    let both = format!(
        "{}\n{}",
        a.report(dir, caller_log),
        b.report(dir, callee_log)
    );
    assert!(
        a_ok && b_ok,
        "{what}: caller ok={a_ok} callee ok={b_ok}\n{both}"
    );
    for (callee_side, line) in want {
        let r = if *callee_side { &b } else { &a };
        assert!(r.said(line), "{what}: no {line:?}\n{both}");
    }
}

/// pjsua2 over TCP and over TLS: both UAs register with digest
/// authentication, alice calls bob, hangs up, and sends him a MESSAGE.
#[test]
fn pjsua2_over_tcp_and_tls_registers_calls_and_messages() {
    if !have_python_module("pjsua2") {
        return;
    }
    for d in drivers() {
        for transport in ["tcp", "tls"] {
            let dir = TempDir::new(&format!("streams-pjsua-{transport}"));
            let users = dir.write(
                "users.toml",
                &users_toml(&[("alice", "alice-Secret-1"), ("bob", "bob-Secret-2")]),
            );
            let e = edge(d, &dir, &["--users", &users]);
            call_pair(
                &format!("{d} {transport}"),
                &dir,
                (
                    "bob",
                    &mut pjsua(&dir, &e, "bob", transport, &["--password", "bob-Secret-2"]),
                    "bob: registration 200",
                    "bob.log",
                ),
                (
                    "alice",
                    &mut pjsua(
                        &dir,
                        &e,
                        "alice",
                        transport,
                        &["--password", "alice-Secret-1"],
                    ),
                    "alice.log",
                ),
                &[
                    (false, "alice: registration 200"),
                    (false, "alice: call CONFIRMED"),
                    (false, "alice: MESSAGE status 200"),
                    (true, "bob: incoming call from <sip:alice@example.test>"),
                    (true, "bob: call DISCONNECTED"),
                    (
                        true,
                        "bob: MESSAGE from <sip:alice@example.test>: hello bob, from pjsua2",
                    ),
                ],
            );
            // The UAs' messages crossed the edge on their own transport.
            let alice = std::fs::read_to_string(dir.path.join("alice.log")).unwrap_or_default();
            let via = format!("Via: SIP/2.0/{}", transport.to_uppercase());
            assert!(
                alice.contains(&via),
                "{d} {transport}: no {via} in alice's log"
            );
            let listener = e.proxy.listener(transport);
            let rr = format!("@{listener};");
            let rrs: Vec<&str> = alice
                .lines()
                .filter(|l| l.starts_with("Record-Route:"))
                .collect();
            assert!(
                rrs.iter()
                    .any(|l| l.contains(&rr) && l.contains(&format!("transport={transport}"))),
                "{d} {transport}: the edge's Record-Route names its {transport} listener ({rr}): {rrs:#?}"
            );
        }
    }
}

/// A UDP caller and a TLS callee: the INVITE crosses from UDP to TLS (double
/// Record-Route, RFC 5658), the callee hangs up himself, and his BYE
/// crosses back to UDP; then the caller's MESSAGE reaches him over TLS.
#[test]
fn udp_caller_tls_callee_bye_from_the_callee() {
    if !have_python_module("pjsua2") {
        return;
    }
    for d in drivers() {
        let dir = TempDir::new("streams-udp-tls");
        let e = edge(d, &dir, &[]);
        call_pair(
            &format!("{d} udp→tls"),
            &dir,
            (
                "bob",
                &mut pjsua(&dir, &e, "bob", "tls", &["--hangup", "0.5"]),
                "bob: registration 200",
                "bob.log",
            ),
            (
                "alice",
                &mut pjsua(&dir, &e, "alice", "udp", &["--hold", "30"]),
                "alice.log",
            ),
            &[
                (false, "alice: call CONFIRMED"),
                (false, "alice: call DISCONNECTED"),
                (false, "alice: MESSAGE status 200"),
                (true, "bob: hanging up"),
                (true, "bob: call DISCONNECTED (200"),
                (true, "bob: MESSAGE from <sip:alice@example.test>"),
            ],
        );
        let alice = std::fs::read_to_string(dir.path.join("alice.log")).unwrap_or_default();
        assert!(
            alice.contains("BYE sip:alice@"),
            "{d}: the callee's BYE reached the UDP caller\n{}",
            tail(&dir.path.join("alice.log"), 60)
        );
        let udp = e.proxy.listener("udp");
        let tls = e.proxy.listener("tls");
        let bob = std::fs::read_to_string(dir.path.join("bob.log")).unwrap_or_default();
        assert!(
            bob.contains(&format!("{tls};lr;transport=tls>"))
                && bob.contains(&format!("{udp};lr>")),
            "{d}: double Record-Route (TLS side, UDP side) in the INVITE to bob\n{}",
            tail(&dir.path.join("bob.log"), 80)
        );
    }
}

/// SIP.js over WS calls a pjsua2 UA over UDP and hangs up (the BYE crosses
/// from WS to UDP), then sends it a MESSAGE.
#[test]
fn ws_caller_udp_callee() {
    if !have_python_module("pjsua2") || !have_node_peers() {
        return;
    }
    for d in drivers() {
        let dir = TempDir::new("streams-ws-udp");
        let e = edge(d, &dir, &[]);
        let mut bob = Run::start("bob", &mut pjsua(&dir, &e, "bob", "udp", &[]));
        assert!(
            bob.wait_line("bob: registration 200", Duration::from_secs(15)),
            "{d}: bob did not register\n{}",
            bob.report(&dir, "bob.log")
        );
        let (call, all) = sipjs_call_then_message(d, &dir, &e, "ws", &mut bob, "hi bob, from ws");
        assert!(
            call.said("alice: call DISCONNECTED (BYE sent, 200"),
            "{all}"
        );
        assert!(bob.said("bob: call DISCONNECTED"), "{all}");
        assert!(
            bob.said("bob: MESSAGE from <sip:alice@example.test>: hi bob, from ws"),
            "{all}"
        );
    }
}

/// SIP.js in Node: a WS callee registered with a `.invalid` contact (and
/// RFC 5626 outbound) is called from WSS; the caller hangs up; then a
/// MESSAGE from WSS reaches the WS user.
#[test]
fn sipjs_wss_caller_ws_callee_and_message() {
    if !have_node_peers() {
        return;
    }
    for d in drivers() {
        let dir = TempDir::new("streams-sipjs");
        let e = edge(d, &dir, &[]);
        let mut bob = Run::start(
            "bob",
            &mut sipjs(
                &dir,
                &e,
                "ws",
                "bob",
                &[
                    "--role",
                    "register",
                    "--outbound",
                    "--expect-calls",
                    "1",
                    "--expect-messages",
                    "1",
                ],
            ),
        );
        assert!(
            bob.wait_line("bob: registered", Duration::from_secs(15)),
            "{d}: bob did not register\n{}",
            bob.report(&dir, "bob.log")
        );
        let (_call, all) = sipjs_call_then_message(d, &dir, &e, "wss", &mut bob, "hello over wss");
        assert!(
            bob.said("bob: incoming call from sip:alice@example.test"),
            "{all}"
        );
        assert!(
            bob.said("bob: MESSAGE from sip:alice@example.test: hello over wss"),
            "{all}"
        );
        let bob_log = std::fs::read_to_string(dir.path.join("bob.log")).unwrap_or_default();
        assert!(
            bob_log.contains(".invalid;transport=ws"),
            "{d}: bob's contact is a .invalid WebSocket one"
        );
        assert!(
            bob_log.contains("Require: outbound") && bob_log.contains("Flow-Timer: 120"),
            "{d}: RFC 5626 outbound accepted, with the keep-alive interval"
        );
    }
}

/// The web phone in headless Chromium registers over WebSocket, sends a
/// MESSAGE to a UDP user (pjsua2), who then calls it (auto-answered) and
/// sends it a MESSAGE back.
#[test]
fn webphone_in_chromium_messages_and_receives_a_call() {
    if !have_node_peers() || !have_peer("chromium") || !have_python_module("pjsua2") {
        return;
    }
    for d in drivers() {
        let dir = TempDir::new("streams-browser");
        let e = edge(d, &dir, &[]);
        let mut alice = Run::start(
            "alice",
            &mut pjsua(
                &dir,
                &e,
                "alice",
                "udp",
                &["--target", "carol", "--wait-message", "--hold", "0.5"],
            ),
        );
        assert!(
            alice.wait_line("alice: registration 200", Duration::from_secs(15)),
            "{d}: alice did not register\n{}",
            alice.report(&dir, "alice.log")
        );
        let url = format!("ws://{}", e.proxy.listener("ws"));
        let shot = dir.path.join("webphone.png");
        let mut browser = Run::start(
            "browser",
            Command::new("node")
                .arg(peer_file("tests/peers/browser.mjs"))
                .args(["--server", &url, "--user", "carol", "--domain", DOMAIN])
                .args([
                    "--autoanswer",
                    "--expect-calls",
                    "1",
                    "--expect-messages",
                    "1",
                ])
                .args([
                    "--message-to",
                    "sip:alice@example.test",
                    "--text",
                    "hi alice",
                ])
                .args(["--timeout", "40"])
                .arg("--screenshot")
                .arg(&shot)
                .stdin(Stdio::null())
                .stderr(Stdio::null()),
        );
        let browser_ok = browser.finish(Duration::from_secs(50));
        let alice_ok = alice.finish(Duration::from_secs(15));
        let all = format!(
            "{}\n{}",
            browser.report(&dir, "none"),
            alice.report(&dir, "alice.log")
        );
        assert!(
            browser_ok && alice_ok,
            "{d}: browser {browser_ok} alice {alice_ok}\n{all}"
        );
        for line in [
            "browser: registered",
            "browser: message status 200",
            "browser: incoming call from",
            "browser: call CONFIRMED",
            "browser: message from sip:alice@example.test: hello carol, from pjsua2",
        ] {
            assert!(browser.said(line), "{d}: no {line:?}\n{all}");
        }
        assert!(
            alice.said("alice: MESSAGE from <sip:carol@example.test>: hi alice"),
            "{all}"
        );
        assert!(alice.said("alice: call CONFIRMED"), "{all}");
    }
}

/// SIPp's built-in UAC and UAS over TCP (`-t t1`), through the edge (the
/// UAS is its upstream over TCP): every call completes.
#[test]
fn sipp_over_tcp_through_the_edge() {
    if !have_peer("sipp") {
        return;
    }
    for d in drivers() {
        let dir = TempDir::new("streams-sipp");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut uas = sipp(&dir, "uas", port);
        uas.args(["-sn", "uas", "-t", "t1", "-timeout", "40s"]);
        let mut uas = Reaped::spawn("sipp uas", &mut uas);
        std::thread::sleep(Duration::from_millis(300));
        let upstream = format!("sip:127.0.0.1:{port};transport=tcp");
        let e = edge(d, &dir, &["--upstream", &upstream]);
        let target = e.proxy.listener("tcp").to_string();
        let mut uac = sipp(&dir, "uac", 0);
        uac.args(["-sn", "uac", "-t", "t1", "-m", "200", "-r", "100"])
            .args(["-timeout", "30s", &target]);
        let st = Reaped::spawn("sipp uac", &mut uac).wait_for(Duration::from_secs(35));
        let report = sipp_report(&dir, "uac");
        assert!(
            st.is_some_and(|s| s.success()),
            "{d}: sipp over TCP: {st:?}\n{report}"
        );
        uas.terminate(Duration::from_secs(5));
    }
}

/// `[proxy] large_requests = "tcp"` (RFC 3261 §18.1.1): a request over 1300
/// bytes for a UA registered over UDP goes to it over TCP (the UA listens on
/// both, as RFC 3261 requires), and is answered 513 by an edge without a
/// TCP listener; by default it goes over UDP, as Kamailio sends it — except a
/// MESSAGE outside a dialog, which always goes over TCP (RFC 3428 §6).
#[test]
fn large_request_to_a_udp_target_goes_over_tcp() {
    for d in drivers() {
        let dir = TempDir::new("streams-large");
        let cfg = dir.write("sipedge.toml", "[proxy]\nlarge_requests = \"tcp\"\n");
        let e = edge(d, &dir, &["--config", &cfg]);
        let udp = e.proxy.listener("udp");
        // Bob: UDP socket and TCP listener on the same port.
        let bob = Ua::new();
        let tcp = std::net::TcpListener::bind(bob.addr).unwrap();
        register_udp(&bob, "bob", udp);
        // Alice, over UDP, sends bob a 2 KB MESSAGE.
        let alice = Ua::new();
        let body = "x".repeat(2000);
        alice.send(&large_message(&alice, &body, 1), udp);
        let (mut conn, _) = accept_within(&tcp, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{d}: the large MESSAGE did not come over TCP"));
        let req = read_message(&mut conn, Duration::from_secs(5)).expect("a request on TCP");
        assert!(req.starts_with("MESSAGE sip:bob@"), "{d}: {req}");
        assert!(
            req.contains("Via: SIP/2.0/TCP"),
            "{d}: our Via names TCP\n{req}"
        );
        assert!(req.ends_with(&body), "{d}: whole body");
        // Bob answers on that connection; alice gets the 200 over UDP.
        let resp = response_over(&req, 200, "OK");
        conn.write_all(resp.as_bytes()).unwrap();
        let got = alice.expect_response(200, "MESSAGE");
        assert_eq!(got.status(), Some(200));
        drop(e);

        // The default: over UDP.
        let dir = TempDir::new("streams-large-udp");
        let e = edge(d, &dir, &[]);
        let udp = e.proxy.listener("udp");
        register_udp(&bob, "bob", udp);
        alice.send(&large_request("INVITE", &alice, &body, 2), udp);
        let (m, _) = bob.expect_request("INVITE");
        assert!(m.body().ends_with(&body), "{d}: the whole INVITE over UDP");
        // … but a MESSAGE outside a dialog still goes over TCP.
        alice.send(&large_message(&alice, &body, 4), udp);
        let (mut conn, _) = accept_within(&tcp, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{d}: by default the large MESSAGE came over TCP too"));
        let req = read_message(&mut conn, Duration::from_secs(5)).expect("a request on TCP");
        assert!(req.starts_with("MESSAGE sip:bob@"), "{d}: {req}");
        assert!(req.ends_with(&body), "{d}: whole body");
        drop(e);

        // §18.1.1 with no TCP listener to send it from: 513.
        let dir = TempDir::new("streams-large-513");
        let cfg = dir.write("sipedge.toml", "[proxy]\nlarge_requests = \"tcp\"\n");
        let p = Proxy::start(&[
            "--io",
            d,
            "--domain",
            DOMAIN,
            "--data-dir",
            dir.arg(),
            "--config",
            &cfg,
        ]);
        register_udp(&bob, "bob", p.addr);
        alice.send(&large_message(&alice, &body, 3), p.addr);
        let got = alice.expect_response(513, "MESSAGE");
        assert_eq!(got.status(), Some(513), "{d}");
    }
}

fn register_udp(ua: &Ua, user: &str, edge: SocketAddr) {
    ua.send(
        &format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-r{p}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=r1\r\nTo: <sip:{user}@{DOMAIN}>\r\n\
             Call-ID: reg-{p}@x\r\nCSeq: 1 REGISTER\r\nContact: <sip:{user}@{a}>\r\n\
             Expires: 300\r\nContent-Length: 0\r\n\r\n",
            a = ua.addr,
            p = edge.port()
        ),
        edge,
    );
    let ok = ua.expect_response(200, "REGISTER");
    assert_eq!(ok.status(), Some(200));
}

fn large_message(from: &Ua, body: &str, n: u32) -> String {
    large_request("MESSAGE", from, body, n)
}

fn large_request(method: &str, from: &Ua, body: &str, n: u32) -> String {
    format!(
        "{method} sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-m{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=m{n}\r\nTo: <sip:bob@{DOMAIN}>\r\n\
         Call-ID: msg-large-{n}@x\r\nCSeq: 1 {method}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len(),
        a = from.addr
    )
}

fn accept_within(l: &std::net::TcpListener, limit: Duration) -> Option<(TcpStream, SocketAddr)> {
    l.set_nonblocking(true).unwrap();
    let end = Instant::now() + limit;
    while Instant::now() < end {
        match l.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false).unwrap();
                return Some((s, a));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    None
}

/// Reads one Content-Length framed message from `s`.
fn read_message(s: &mut TcpStream, limit: Duration) -> Option<String> {
    read_messages(s, 1, limit).pop()
}

/// Reads `n` Content-Length framed messages from `s` (fewer if it closes or
/// `limit` passes).
fn read_messages(s: &mut TcpStream, n: usize, limit: Duration) -> Vec<String> {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let end = Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut got = Vec::new();
    while Instant::now() < end && got.len() < n {
        if let Some(hdr_end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..hdr_end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    (n.eq_ignore_ascii_case("content-length") || n == "l")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= hdr_end + 4 + len {
                let m: Vec<u8> = buf.drain(..hdr_end + 4 + len).collect();
                got.push(String::from_utf8_lossy(&m).into_owned());
                continue;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    got
}

/// An OPTIONS over a new TLS connection to `tls` (rustls, trusting the CA
/// in `ca`): the response head, or why the handshake failed.
fn tls_options(tls: SocketAddr, ca: &str) -> Result<String, String> {
    tls_options_as(tls, ca, None)
}

/// [`tls_options`], presenting the client certificate and key in `client`.
fn tls_options_as(
    tls: SocketAddr,
    ca: &str,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    {
        use rustls::pki_types::pem::PemObject as _;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        None => config.with_no_client_auth(),
        Some((cert, key)) => {
            use rustls::pki_types::pem::PemObject as _;
            let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
            config.with_client_auth_cert(chain, key).unwrap()
        }
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(tls).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let me = sock.local_addr().unwrap();
    let mut t = rustls::StreamOwned::new(conn, sock);
    let req = options(tls, me, 1).replace("SIP/2.0/TCP", "SIP/2.0/TLS");
    t.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(3);
    while find(&got, b"\r\n\r\n").is_none() && Instant::now() < end {
        match t.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A response to `req` (its Vias, From, To with a tag, Call-ID, CSeq).
fn response_over(req: &str, code: u16, reason: &str) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for l in req.lines() {
        let lower = l.to_ascii_lowercase();
        if lower.starts_with("via:")
            || lower.starts_with("from:")
            || lower.starts_with("call-id:")
            || lower.starts_with("cseq:")
        {
            out.push_str(l);
            out.push_str("\r\n");
        } else if lower.starts_with("to:") {
            out.push_str(l);
            out.push_str(";tag=uas1\r\n");
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

fn options(to: SocketAddr, from: SocketAddr, n: usize) -> String {
    format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/TCP {from};branch=z9hG4bK-o{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{DOMAIN}>;tag=o{n}\r\nTo: <sip:{to}>\r\n\
         Call-ID: opt-{n}@x\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Another client on a new TCP connection still gets its OPTIONS answered.
fn assert_served(d: &str, tcp: SocketAddr, n: usize) {
    let mut ok = TcpStream::connect(tcp).unwrap();
    let me = ok.local_addr().unwrap();
    ok.write_all(options(tcp, me, n).as_bytes()).unwrap();
    let r = read_message(&mut ok, Duration::from_secs(3)).unwrap_or_default();
    assert!(
        r.starts_with("SIP/2.0 200"),
        "{d}: another client served: {r:?}"
    );
}

/// Stops the edge (SIGTERM) and reads counter `name` from its stop lines.
fn counter_at_stop(e: Edge, name: &str) -> u64 {
    let mut p = e.proxy;
    p.terminate();
    p.counter(name)
}

/// True when the peer closed `s` within `limit` (EOF or reset).
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let end = Instant::now() + limit;
    let mut buf = [0u8; 65536];
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Framing over TCP: a message split at many points and two in one write
/// are each answered on the connection, a double-CRLF ping gets its CRLF
/// pong (RFC 5626 §4.4.1), a message without Content-Length gets 400 and
/// the connection is closed.
#[test]
fn tcp_framing_keepalive_and_missing_content_length() {
    for d in drivers() {
        let dir = TempDir::new("streams-framing");
        let e = edge(d, &dir, &[]);
        let tcp = e.proxy.listener("tcp");
        let mut s = TcpStream::connect(tcp).unwrap();
        s.set_nodelay(true).unwrap();
        let me = s.local_addr().unwrap();
        // A ping: CRLF CRLF → CRLF.
        s.write_all(b"\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut pong = [0u8; 2];
        s.read_exact(&mut pong).unwrap();
        assert_eq!(&pong, b"\r\n", "{d}: pong");
        // One message in pieces.
        let m1 = options(tcp, me, 1);
        for piece in m1.as_bytes().chunks(7) {
            s.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        let r1 = read_message(&mut s, Duration::from_secs(3)).expect("answer to a split message");
        assert!(
            r1.starts_with("SIP/2.0 200") && r1.contains("CSeq: 1 OPTIONS"),
            "{d}: {r1}"
        );
        // Two messages and a ping in one write.
        let both = format!("{}\r\n\r\n{}", options(tcp, me, 2), options(tcp, me, 3));
        s.write_all(both.as_bytes()).unwrap();
        let got = read_messages(&mut s, 2, Duration::from_secs(3)).concat();
        assert!(
            got.contains("CSeq: 2 OPTIONS") && got.contains("CSeq: 3 OPTIONS"),
            "{d}: {got}"
        );
        // No Content-Length on a stream: 400, then the connection closes.
        let bad = options(tcp, me, 4).replace("Content-Length: 0\r\n", "");
        s.write_all(bad.as_bytes()).unwrap();
        let r4 = read_message(&mut s, Duration::from_secs(3)).unwrap_or_default();
        assert!(r4.starts_with("SIP/2.0 400"), "{d}: {r4:?}");
        assert!(
            closed_within(&mut s, Duration::from_secs(3)),
            "{d}: closed after the 400"
        );
    }
}

/// A header block sent one byte every 200 ms (slowloris) is cut off after
/// `[tcp] header_timeout`, while another client is still served.
#[test]
fn slowloris_is_cut_off() {
    for d in drivers() {
        let dir = TempDir::new("streams-slow");
        let cfg = dir.write("sipedge.toml", "[tcp]\nheader_timeout = 2\n");
        let e = edge(d, &dir, &["--config", &cfg]);
        let tcp = e.proxy.listener("tcp");
        let mut slow = TcpStream::connect(tcp).unwrap();
        slow.set_nodelay(true).unwrap();
        let me = slow.local_addr().unwrap();
        let msg = options(tcp, me, 1);
        let t0 = Instant::now();
        let mut cut = false;
        for b in msg.as_bytes().iter().take(60) {
            if slow.write_all(&[*b]).is_err()
                || closed_within(&mut slow, Duration::from_millis(200))
            {
                cut = true;
                break;
            }
        }
        let took = t0.elapsed();
        assert!(
            cut,
            "{d}: a 1-byte-per-200-ms header block was not cut off in {took:?}"
        );
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
            "{d}: cut after {took:?} (header_timeout 2 s)"
        );
        assert_served(d, tcp, 2);
        assert_eq!(
            counter_at_stop(e, "sipedge_transport_slow_closed_total"),
            1,
            "{d}: counted"
        );
    }
}

/// Many connections from one address stop at `[tcp] max_per_ip`; another
/// address still connects and is served.
#[test]
fn per_ip_connection_cap_holds() {
    for d in drivers() {
        let dir = TempDir::new("streams-perip");
        let cfg = dir.write("sipedge.toml", "[tcp]\nmax_per_ip = 4\n");
        let e = edge(d, &dir, &["--config", &cfg]);
        let tcp = e.proxy.listener("tcp");
        let flood_ip: SocketAddr = "127.0.0.5:0".parse().unwrap();
        let mut conns = Vec::new();
        for _ in 0..12 {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.bind(&flood_ip.into()).unwrap();
            sock.connect(&tcp.into()).unwrap();
            let s: TcpStream = sock.into();
            conns.push(s);
        }
        // Two shards each hold up to 4 from that address; the rest are closed.
        std::thread::sleep(Duration::from_millis(300));
        let mut open = 0;
        for s in &mut conns {
            let me = s.local_addr().unwrap();
            let alive = s.write_all(options(tcp, me, 1).as_bytes()).is_ok()
                && read_message(s, Duration::from_secs(2)).is_some();
            if alive {
                open += 1;
            }
        }
        assert!(
            (4..=8).contains(&open),
            "{d}: {open} of 12 connections from one address were served (cap 4 per shard)"
        );
        let other =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        other
            .bind(&"127.0.0.6:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        other.connect(&tcp.into()).unwrap();
        let mut other: TcpStream = other.into();
        let me = other.local_addr().unwrap();
        other.write_all(options(tcp, me, 9).as_bytes()).unwrap();
        let r = read_message(&mut other, Duration::from_secs(3)).unwrap_or_default();
        assert!(
            r.starts_with("SIP/2.0 200"),
            "{d}: another address served: {r:?}"
        );
        assert_eq!(
            counter_at_stop(e, "sipedge_transport_refused_total"),
            12 - open as u64,
            "{d}: every refused connection counted"
        );
    }
}

/// A client that sends requests and never reads their answers is
/// disconnected once its write queue is full; sipedge's memory stays
/// bounded and other clients are served.
#[test]
fn a_client_that_never_reads_is_disconnected() {
    for d in drivers() {
        let dir = TempDir::new("streams-noread");
        let cfg = dir.write("sipedge.toml", "[tcp]\nmax_write_queue = 65536\n");
        let e = edge(d, &dir, &["--config", &cfg]);
        let tcp = e.proxy.listener("tcp");
        let rss0 = e.proxy.rss_kib();
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&tcp.into()).unwrap();
        let mut s: TcpStream = sock.into();
        s.set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let me = s.local_addr().unwrap();
        let mut batch = String::new();
        for n in 0..50 {
            batch.push_str(&options(tcp, me, n + 1));
        }
        // Up to 20,000 requests (~8 MB of answers), or until the edge hangs up.
        let t0 = Instant::now();
        let mut sent = 0;
        let mut cut = false;
        while sent < 20_000 && t0.elapsed() < Duration::from_secs(20) {
            match s.write_all(batch.as_bytes()) {
                Ok(()) => sent += 50,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => {
                    cut = true;
                    break;
                }
            }
        }
        // Whatever the write side saw, the edge must have hung up: reading
        // drains what was queued, then EOF or reset.
        let closed = cut || closed_within(&mut s, Duration::from_secs(10));
        assert!(
            closed,
            "{d}: a client that never reads was not disconnected ({sent} sent)"
        );
        let rss1 = e.proxy.rss_kib();
        assert!(
            rss1 < rss0 + 32 * 1024,
            "{d}: RSS grew from {rss0} KiB to {rss1} KiB"
        );
        assert_served(d, tcp, 1);
        assert_eq!(
            counter_at_stop(e, "sipedge_transport_overflow_closed_total"),
            1,
            "{d}: counted as a reader that did not read"
        );
    }
}

/// Garbage on the TLS port is dropped (the connection closes); a real TLS
/// client is then served; a WebSocket upgrade without the `sip` subprotocol
/// is refused with 400, one with it switches protocols.
#[test]
fn tls_garbage_and_websocket_without_sip_are_refused() {
    for d in drivers() {
        let dir = TempDir::new("streams-garbage");
        let e = edge(d, &dir, &[]);
        let tls = e.proxy.listener("tls");
        let mut g = TcpStream::connect(tls).unwrap();
        let mut junk = vec![0u8; 4096];
        let mut x: u32 = 0x1234_5678;
        for b in &mut junk {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        let _ = g.write_all(&junk);
        assert!(
            closed_within(&mut g, Duration::from_secs(3)),
            "{d}: TLS garbage closed"
        );

        // A real TLS client (rustls, verifying the edge's certificate).
        let got = tls_options(tls, &e.ca).unwrap();
        assert!(
            got.starts_with("SIP/2.0 200"),
            "{d}: OPTIONS over TLS: {got:?}"
        );

        let ws = e.proxy.listener("ws");
        let upgrade = |proto: Option<&str>| {
            let mut s = TcpStream::connect(ws).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let p = proto.map_or(String::new(), |p| {
                format!("Sec-WebSocket-Protocol: {p}\r\n")
            });
            let req = format!(
                "GET / HTTP/1.1\r\nHost: {ws}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{p}\r\n"
            );
            s.write_all(req.as_bytes()).unwrap();
            let mut buf = vec![0u8; 2048];
            let n = s.read(&mut buf).unwrap_or(0);
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        let chat = upgrade(Some("chat"));
        assert!(
            chat.starts_with("HTTP/1.1 400"),
            "{d}: chat subprotocol: {chat:?}"
        );
        let none = upgrade(None);
        assert!(
            none.starts_with("HTTP/1.1 400"),
            "{d}: no subprotocol: {none:?}"
        );
        let sip = upgrade(Some("sip"));
        assert!(
            sip.starts_with("HTTP/1.1 101") && sip.contains("Sec-WebSocket-Protocol: sip"),
            "{d}: sip subprotocol: {sip:?}"
        );
    }
}

/// When the WebSocket connection a browser registered over closes, its
/// binding goes with it (its `.invalid` contact is reachable only through
/// that connection): a MESSAGE to him is at once kept for his next
/// registration (202, as for any user without a contact), not sent into the
/// dead connection or left to time out.
#[test]
fn a_closed_websocket_takes_its_binding_along() {
    if !have_node_peers() {
        return;
    }
    for d in drivers() {
        let dir = TempDir::new("streams-flowclose");
        let e = edge(d, &dir, &[]);
        let udp = e.proxy.listener("udp");
        let mut bob = Run::start(
            "bob",
            &mut sipjs(&dir, &e, "ws", "bob", &["--role", "register"]),
        );
        assert!(
            bob.wait_line("bob: registered", Duration::from_secs(15)),
            "{d}: bob did not register\n{}",
            bob.report(&dir, "bob.log")
        );
        let alice = Ua::new();
        let message = |n: u32| {
            format!(
                "MESSAGE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-fc{n}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=fc{n}\r\nTo: <sip:bob@{DOMAIN}>\r\n\
                 Call-ID: fc-{n}@x\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n\
                 Content-Length: 2\r\n\r\nhi",
                a = alice.addr
            )
        };
        alice.send(&message(0), udp);
        let ok = alice.expect_response(200, "MESSAGE");
        assert_eq!(
            ok.status(),
            Some(200),
            "{d}: bob reachable over his WebSocket"
        );
        // The browser goes away without unregistering (SIGKILL).
        drop(bob);
        let t0 = Instant::now();
        let mut last = None;
        for n in 1..=30 {
            alice.send(&message(n), udp);
            let finals: Vec<u16> = alice
                .collect(Duration::from_millis(300))
                .iter()
                .filter_map(|m| m.status())
                .filter(|&c| c >= 200)
                .collect();
            last = finals.first().copied();
            if last == Some(202) {
                break;
            }
        }
        assert_eq!(
            last,
            Some(202),
            "{d}: a MESSAGE to bob after his WebSocket closed ({:?} later)",
            t0.elapsed()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{d}: took {:?}",
            t0.elapsed()
        );
    }
}

/// SIGHUP reloads the certificate: new TLS connections get the new one
/// (verified against its CA), and no longer the old one.
#[test]
fn sighup_reloads_the_tls_certificate() {
    for d in drivers() {
        let dir = TempDir::new("streams-reload");
        let e = edge(d, &dir, &[]);
        let tls = e.proxy.listener("tls");
        let first = tls_options(tls, &e.ca).unwrap();
        assert!(first.starts_with("SIP/2.0 200"), "{d}: {first:?}");
        // A new CA and certificate replace the files in place.
        let next = TempDir::new("streams-reload-next");
        let (ca2, cert2, key2) = certificate(&next);
        std::fs::copy(&cert2, dir.path.join("cert.pem")).unwrap();
        std::fs::copy(&key2, dir.path.join("key.pem")).unwrap();
        e.proxy.signal("HUP");
        let t0 = Instant::now();
        let mut now_new = Err(String::new());
        while t0.elapsed() < Duration::from_secs(5) {
            now_new = tls_options(tls, &ca2);
            if now_new
                .as_deref()
                .is_ok_and(|r| r.starts_with("SIP/2.0 200"))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            now_new
                .as_deref()
                .is_ok_and(|r| r.starts_with("SIP/2.0 200")),
            "{d}: the new certificate after SIGHUP: {now_new:?}"
        );
        let old = tls_options(tls, &e.ca);
        assert!(
            old.is_err(),
            "{d}: the old CA no longer verifies the edge: {old:?}"
        );
    }
}

/// `[tls] verify_client = "required"` with `ca`: a client without a
/// certificate, or with one the CA did not sign, gets no service; one with
/// a certificate from the CA does.
#[test]
fn client_certificates_required() {
    for d in drivers() {
        let dir = TempDir::new("streams-mtls");
        // The config's CA is the one edge() makes in the same folder.
        let ca_path = dir.path.join("ca.pem");
        let cfg = dir.write(
            "sipedge.toml",
            &format!(
                "[tls]\nca = \"{}\"\nverify_client = \"required\"\n",
                ca_path.display()
            ),
        );
        let e = edge(d, &dir, &["--config", &cfg]);
        let tls = e.proxy.listener("tls");
        let with = tls_options_as(
            tls,
            &e.ca,
            Some((
                &dir.path.join("client.pem"),
                &dir.path.join("client-key.pem"),
            )),
        );
        assert!(
            with.as_deref().is_ok_and(|r| r.starts_with("SIP/2.0 200")),
            "{d}: with a client certificate: {with:?}"
        );
        let without = tls_options(tls, &e.ca);
        assert!(
            !without.as_deref().is_ok_and(|r| r.starts_with("SIP/2.0")),
            "{d}: without a client certificate: {without:?}"
        );
        let other = TempDir::new("streams-mtls-other");
        certificate(&other);
        let rogue = tls_options_as(
            tls,
            &e.ca,
            Some((
                &other.path.join("client.pem"),
                &other.path.join("client-key.pem"),
            )),
        );
        assert!(
            !rogue.as_deref().is_ok_and(|r| r.starts_with("SIP/2.0")),
            "{d}: a certificate from another CA: {rogue:?}"
        );
    }
}

/// RFC 5626 §8.4: a UA using outbound over UDP keeps its flow alive with
/// STUN Binding requests; the edge answers each with the address it sees.
#[test]
fn stun_keepalive_on_the_udp_port() {
    for d in drivers() {
        let dir = TempDir::new("streams-stun");
        let e = edge(d, &dir, &[]);
        let ua = Ua::new();
        let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        req.extend_from_slice(b"sipedge-ka01");
        ua.sock.send_to(&req, e.proxy.listener("udp")).unwrap();
        let mut buf = [0u8; 256];
        let (n, _) = ua.sock.recv_from(&mut buf).expect("a STUN response");
        let r = &buf[..n];
        assert_eq!(&r[..2], &[0x01, 0x01], "{d}: Binding success");
        assert_eq!(&r[8..20], b"sipedge-ka01", "{d}: same transaction id");
        assert_eq!(&r[20..22], &[0x00, 0x20], "{d}: XOR-MAPPED-ADDRESS");
        let port = u16::from_be_bytes([r[26], r[27]]) ^ 0x2112;
        let ip = [r[28] ^ 0x21, r[29] ^ 0x12, r[30] ^ 0xa4, r[31] ^ 0x42];
        let seen = SocketAddr::from((ip, port));
        assert_eq!(seen, ua.addr, "{d}: the address the edge sees");
    }
}
