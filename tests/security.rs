//! The edge under attack and under policy, end to end: the real binary
//! (`sipedge run`, the stateful proxy with registrar, two shards) on
//! 127.0.0.1 under each I/O driver (sipvicious also under AF_XDP, from the
//! clients' namespace), with real peers where installed and
//! scripted UAs on other loopback addresses (127.0.0.2 … 127.0.0.8: Linux
//! routes all of 127/8 over lo, which gives the tests distinct sources).
//!
//! - SIPp's `[authentication]` REGISTER scenario (tools/sipp/register_auth.xml)
//!   succeeds for every user of a users file, and fails on a wrong password.
//! - pjsua2 (PJSIP) registers with a password, two authenticated users call
//!   each other (the INVITE and the MESSAGE get 407 and are re-sent with
//!   credentials), and a wrong password does not register.
//! - sipvicious (`svwar`, `svcrack`) learns nothing: every extension looks
//!   the same, and a password guessing run hits the failed-auth throttle and
//!   never succeeds, not even when the password is in its dictionary;
//!   `svmap` finds an anonymous device it cannot relay through. The same
//!   enumeration and guessing over TCP, scripted (sipvicious has no TCP).
//! - A flood from one source at 10× its allowed rate is dropped while a
//!   second source registers and calls with ≥ 99% success, and sipedge's
//!   memory stays flat.
//! - The flood limit holds across shards: a source spraying 64 source
//!   ports gets one shard's limit (the listen port is steered by source
//!   address), not one per shard as with `[socket] steer = "hash"`.
//! - The issue's policy example: MESSAGE and INVITE from outside the trusted
//!   networks are refused, except those addressed to support@example.test.
//! - SIGHUP reloads the users file: a call set up before stays up, the old
//!   password stops working and the new one works.
//!
//! Every peer process is bounded (its own timeout, and killed on drop);
//! sipvicious runs only against 127.0.0.1, never with `-R`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    drivers, drivers_with_xdp, free_udp_port, have_peer, have_python_module, peer_command,
    response_to, sipp, sipp_report, tail, wait_line, Msg, Proxy, Reaped, TempDir, Ua,
};
use sipedge::auth::{digest, Algorithm, Qop};
use sipedge::sip::{Credentials, HeaderName};

const DOMAIN: &str = "example.test";

/// sipedge serving example.test with two shards under `driver`, its store
/// in `data`, plus `extra` flags (`--users`, `--config`).
fn edge(driver: &str, data: &TempDir, extra: &[&str]) -> Proxy {
    let mut args = vec![
        "--io",
        driver,
        "--domain",
        DOMAIN,
        "--data-dir",
        data.arg(),
        "--shards",
        "2",
    ];
    args.extend_from_slice(extra);
    Proxy::start(&args)
}

fn peer_file(rel: &str) -> String {
    format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// A string unique in this test process (branches, Call-IDs, tags).
fn uniq(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}{}", N.fetch_add(1, Ordering::Relaxed))
}

/// A users file: `(name, password)` pairs in `domain`.
fn users_toml(domain: &str, users: &[(&str, &str)]) -> String {
    users
        .iter()
        .map(|(n, p)| {
            format!("[[user]]\nname = \"{n}\"\ndomain = \"{domain}\"\npassword = \"{p}\"\n\n")
        })
        .collect()
}

/// One request as a UA writes it; `to_tag` for in-dialog requests, `routes`
/// become Route headers, `extra` are whole header lines.
#[allow(clippy::too_many_arguments)]
fn request(
    ua: SocketAddr,
    method: &str,
    ruri: &str,
    branch: &str,
    (from, from_tag): (&str, &str),
    (to, to_tag): (&str, Option<&str>),
    call_id: &str,
    cseq: u32,
    routes: &[String],
    extra: &str,
    body: &str,
) -> String {
    let mut s = format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {ua};branch={branch};rport\r\nMax-Forwards: 70\r\n"
    );
    for r in routes {
        s.push_str(&format!("Route: {r}\r\n"));
    }
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    s.push_str(&format!(
        "To: <{to}>{to_tag}\r\nFrom: <{from}>;tag={from_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{extra}"
    ));
    if !body.is_empty() {
        s.push_str("Content-Type: text/plain\r\n");
    }
    s.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s
}

/// The credentials line (`Authorization` for a 401, `Proxy-Authorization`
/// for a 407) that answers the first challenge of `resp`, as a client does:
/// its algorithm, qop=auth, nc=1, a fresh cnonce.
fn answer(resp: &Msg, user: &str, password: &str, method: &str, uri: &str) -> String {
    let (challenge, header) = match resp.status() {
        Some(401) => (HeaderName::WwwAuthenticate, "Authorization"),
        Some(407) => (HeaderName::ProxyAuthenticate, "Proxy-Authorization"),
        other => panic!("not a challenge ({other:?}): {}", resp.text),
    };
    let line = resp
        .header(challenge)
        .unwrap_or_else(|| panic!("no challenge header: {}", resp.text));
    let c = Credentials::parse(line.as_bytes()).unwrap();
    let p = |n: &str| {
        c.params
            .get(n.as_bytes())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let (realm, nonce) = (p("realm").unwrap(), p("nonce").unwrap());
    let opaque = p("opaque").unwrap_or_default();
    let alg = p("algorithm").unwrap_or_else(|| "MD5".into());
    let algorithm = Algorithm::from_token(alg.as_bytes()).unwrap();
    let ha1 = digest::ha1(
        algorithm.hash(),
        user.as_bytes(),
        realm.as_bytes(),
        password.as_bytes(),
    );
    let cnonce = uniq("cn");
    let response = digest::response(
        &ha1,
        &digest::Challenge {
            algorithm,
            nonce: nonce.as_bytes(),
            cnonce: cnonce.as_bytes(),
            nc: b"00000001",
            qop: Some(Qop::Auth),
            method: method.as_bytes(),
            uri: uri.as_bytes(),
            body: b"",
        },
    );
    format!(
        "{header}: Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
response=\"{}\", algorithm={alg}, cnonce=\"{cnonce}\", nc=00000001, qop=auth, opaque=\"{opaque}\"\r\n",
        response.as_str()
    )
}

/// The first final response (≥ 200) to `method` of call `call_id` at `ua`.
fn final_response(ua: &Ua, method: &str, call_id: &str) -> Msg {
    ua.expect(&format!("a final response to {method} {call_id}"), |m| {
        m.status().is_some_and(|s| s >= 200)
            && m.method() == method
            && m.header(HeaderName::CallId).as_deref() == Some(call_id)
    })
    .0
}

/// REGISTERs `user`@example.test from `ua`, binding `contact`, and answers
/// one 401 with `password`; returns the final response.
fn register(p: &Proxy, ua: &Ua, user: &str, password: &str, contact: SocketAddr) -> Msg {
    let call_id = uniq("reg-");
    let aor = format!("sip:{user}@{DOMAIN}");
    let from_tag = uniq("rt");
    let contact = format!("Contact: <sip:{user}@{contact}>\r\nExpires: 3600\r\n");
    let req = |cseq: u32, cred: &str| {
        request(
            ua.addr,
            "REGISTER",
            &format!("sip:{DOMAIN}"),
            &uniq("z9hG4bKreg"),
            (&aor, &from_tag),
            (&aor, None),
            &call_id,
            cseq,
            &[],
            &format!("{contact}{cred}"),
            "",
        )
    };
    ua.send(&req(1, ""), p.addr);
    let first = final_response(ua, "REGISTER", &call_id);
    if first.status() != Some(401) {
        return first;
    }
    let cred = answer(&first, user, password, "REGISTER", &format!("sip:{DOMAIN}"));
    ua.send(&req(2, &cred), p.addr);
    final_response(ua, "REGISTER", &call_id)
}

/// The calling side of a dialog (RFC 3261 §12.1.2).
struct Leg<'a> {
    ua: &'a Ua,
    from: String,
    to: String,
    call_id: String,
    from_tag: String,
    to_tag: Option<String>,
    target: String,
    routes: Vec<String>,
}

impl<'a> Leg<'a> {
    /// A leg from URI `from` to URI `to`.
    fn new(ua: &'a Ua, from: &str, to: &str) -> Self {
        Self {
            ua,
            from: from.to_owned(),
            to: to.to_owned(),
            call_id: uniq("call-"),
            from_tag: uniq("ft"),
            to_tag: None,
            target: String::new(),
            routes: Vec::new(),
        }
    }

    /// An out-of-dialog request to the To URI.
    fn initial(&self, method: &str, cseq: u32, branch: &str, extra: &str, body: &str) -> String {
        let contact = format!("Contact: <sip:caller@{}>\r\n{extra}", self.ua.addr);
        request(
            self.ua.addr,
            method,
            &self.to,
            branch,
            (&self.from, &self.from_tag),
            (&self.to, None),
            &self.call_id,
            cseq,
            &[],
            &contact,
            body,
        )
    }

    /// The ACK of a non-2xx final response `resp` to the INVITE sent with `branch` (§17.1.1.3).
    fn ack_failure(&self, branch: &str, cseq: u32, resp: &Msg) -> String {
        let tag = resp.to_tag();
        request(
            self.ua.addr,
            "ACK",
            &self.to,
            branch,
            (&self.from, &self.from_tag),
            (&self.to, tag.as_deref()),
            &self.call_id,
            cseq,
            &[],
            "",
            "",
        )
    }

    /// Takes the dialog state from a 2xx.
    fn established(&mut self, ok: &Msg) {
        self.to_tag = ok.to_tag();
        let contact = ok.header(HeaderName::Contact).expect("2xx Contact");
        self.target = contact
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap()
            .to_owned();
        self.routes = ok
            .values(HeaderName::RecordRoute)
            .into_iter()
            .rev()
            .collect();
    }

    /// An in-dialog request: to the remote target, along the route set.
    fn in_dialog(&self, method: &str, cseq: u32) -> String {
        request(
            self.ua.addr,
            method,
            &self.target,
            &uniq("z9hG4bKdlg"),
            (&self.from, &self.from_tag),
            (&self.to, self.to_tag.as_deref()),
            &self.call_id,
            cseq,
            &self.routes,
            "",
            "",
        )
    }
}

/// One enumeration probe as svwar sends it: `method` for extension `ext`
/// (a REGISTER to the domain, anything else to the user).
struct Probe {
    method: &'static str,
    uri: String,
    ruri: String,
    call_id: String,
    branch: String,
}

impl Probe {
    fn new(method: &'static str, ext: &str) -> Self {
        let uri = format!("sip:{ext}@{DOMAIN}");
        let ruri = if method == "REGISTER" {
            format!("sip:{DOMAIN}")
        } else {
            uri.clone()
        };
        Self {
            method,
            uri,
            ruri,
            call_id: uniq("probe-"),
            branch: uniq("z9hG4bKprobe"),
        }
    }

    /// The request from `ua` with the `contact` line.
    fn request(&self, ua: SocketAddr, contact: &str) -> String {
        let body = if self.method == "MESSAGE" { "hi" } else { "" };
        let u = self.uri.as_str();
        request(
            ua,
            self.method,
            &self.ruri,
            &self.branch,
            (u, "pt"),
            (u, None),
            &self.call_id,
            1,
            &[],
            contact,
            body,
        )
    }

    /// The ACK of final response `r` to an INVITE (none for other methods).
    fn ack(&self, ua: SocketAddr, r: &Msg) -> Option<String> {
        let u = self.uri.as_str();
        (self.method == "INVITE").then(|| {
            request(
                ua,
                "ACK",
                &self.ruri,
                &self.branch,
                (u, "pt"),
                (u, r.to_tag().as_deref()),
                &self.call_id,
                1,
                &[],
                "",
                "",
            )
        })
    }
}

/// Every probe's response `shapes` (extension, shape) alike.
fn assert_alike(what: &str, shapes: &[(String, String)]) {
    let (first_ext, first) = &shapes[0];
    for (ext, s) in &shapes[1..] {
        assert_eq!(
            s, first,
            "{what}: the answers for {ext} and for {first_ext} differ"
        );
    }
}

/// The lines of `text` with what differs between two requests masked: the
/// name `user`, tags, branches, nonces, Call-ID, the client's `port`.
fn shape(text: &str, user: &str, port: u16) -> String {
    fn mask(s: &str, key: &str, stop: &[char]) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find(key) {
            out.push_str(&rest[..i + key.len()]);
            out.push('*');
            let after = &rest[i + key.len()..];
            rest = &after[after.find(stop).unwrap_or(after.len())..];
        }
        out.push_str(rest);
        out
    }
    let mut s = text
        .replace(&format!(":{port}"), ":PORT")
        .replace(&format!("={port}"), "=PORT")
        .replace(&format!("sip:{user}@"), "sip:USER@");
    for (key, stop) in [
        ("tag=", &[';', '>', '\r', ','][..]),
        ("branch=", &[';', '\r', ','][..]),
        ("nonce=\"", &['"'][..]),
        ("Call-ID: ", &['\r'][..]),
    ] {
        s = mask(&s, key, stop);
    }
    s
}

// ---------------------------------------------------------------------------
// SIPp

/// SIPp's digest REGISTER scenario (tools/sipp/register_auth.xml: REGISTER
/// → 401 → REGISTER with `[authentication]` → 200) for 20 users of a users
/// file, then calls from ten of them to another with tools/sipp/uac_auth.xml (INVITE → 407
/// → ACK → INVITE with `[authentication]` → 200 → ACK → BYE) to a SIPp UAS
/// at the users' Contact — against the default `[auth]`: SIPp 3.6 speaks
/// MD5 only and answers the first challenge line, so this is what fails if
/// the default ever offers another algorithm first. The scenario names the
/// AoR after the registrar's address (`sip:user@[remote_ip]`), so sipedge
/// serves 127.0.0.1 as its domain. Every registration and call succeeds
/// (exit 0); the REGISTER scenario with wrong passwords gets a second 401
/// instead of the 200 and fails.
#[test]
fn sipp_register_and_call_with_digest_authentication_by_default() {
    if !have_peer("sipp") {
        return;
    }
    const USERS: usize = 20;
    for d in drivers() {
        let dir = TempDir::new("sec-sipp");
        let pw = |i: usize| format!("pw-{i}-Kq8v!");
        let names: Vec<String> = (0..USERS).map(|i| format!("user{i:02}")).collect();
        let pws: Vec<String> = (0..USERS).map(pw).collect();
        let list: Vec<(&str, &str)> = names
            .iter()
            .zip(&pws)
            .map(|(n, p)| (n.as_str(), p.as_str()))
            .collect();
        let users = dir.write("users.toml", &users_toml("127.0.0.1", &list));
        let mut p = Proxy::start(&[
            "--io",
            d,
            "--domain",
            "127.0.0.1",
            "--data-dir",
            dir.arg(),
            "--shards",
            "2",
            "--users",
            &users,
        ]);
        let contact = free_udp_port();
        let csv = |wrong: bool| {
            let mut s = String::from("SEQUENTIAL\n");
            for (n, p) in &list {
                let p = if wrong { "not-the-password" } else { p };
                s.push_str(&format!(
                    "{n};{p};127.0.0.1:{contact};[authentication username={n} password={p}]\n"
                ));
            }
            s
        };
        let good = dir.write("good.csv", &csv(false));
        let bad = dir.write("bad.csv", &csv(true));
        let run = |name: &str, inf: &str, calls: usize| {
            let mut c = sipp(&dir, name, free_udp_port());
            c.args(["-sf", &peer_file("tools/sipp/register_auth.xml")])
                .args([
                    "-inf",
                    inf,
                    "-m",
                    &calls.to_string(),
                    "-r",
                    "50",
                    "-l",
                    "20",
                ])
                .args(["-timeout", "15s", "-timeout_error", "-max_retrans", "3"])
                .arg(p.addr.to_string());
            Reaped::spawn(&format!("sipp {name}"), &mut c).wait_for(Duration::from_secs(20))
        };
        let st = run("good", &good, USERS);
        assert!(
            st.is_some_and(|s| s.success()),
            "{d}: sipp REGISTER with digest auth: {st:?}\n{}",
            sipp_report(&dir, "good")
        );
        let st = run("bad", &bad, 2);
        assert!(
            st.is_some_and(|s| !s.success()),
            "{d}: wrong passwords must fail: {st:?}\n{}",
            sipp_report(&dir, "bad")
        );
        let err = std::fs::read_to_string(dir.path.join("bad.err")).unwrap_or_default();
        assert!(
            err.contains("401"),
            "{d}: the wrong password got a second 401\n{}",
            sipp_report(&dir, "bad")
        );
        // Calls: user00..user09 call user19, challenged with 407, answered
        // by a SIPp UAS at the registered Contact. SIPp puts
        // sip:[remote_ip]:[remote_port] in the digest's uri unless told
        // (-auth_uri), and sipedge checks it against the Request-URI.
        const CALLS: usize = 10;
        let callee = list[USERS - 1].0;
        let mut calls = String::from("SEQUENTIAL\n");
        for &(n, pw) in &list[..CALLS] {
            calls.push_str(&format!(
                "{n};{callee};[authentication username={n} password={pw}]\n"
            ));
        }
        let auth_uri = format!("{callee}@{}", p.addr);
        let calls = dir.write("calls.csv", &calls);
        let mut uas = Reaped::spawn(
            "sipp uas",
            sipp(&dir, "uas", contact)
                .args(["-sf", &peer_file("tools/sipp/uas.xml")])
                .args(["-timeout", "30s"]),
        );
        std::thread::sleep(Duration::from_millis(300));
        let mut uac = Reaped::spawn(
            "sipp uac_auth",
            sipp(&dir, "uac", free_udp_port())
                .args(["-sf", &peer_file("tools/sipp/uac_auth.xml")])
                .args([
                    "-inf",
                    &calls,
                    "-m",
                    &CALLS.to_string(),
                    "-r",
                    "20",
                    "-l",
                    "10",
                ])
                .args(["-auth_uri", &auth_uri])
                .args(["-timeout", "20s", "-timeout_error", "-max_retrans", "3"])
                .arg(p.addr.to_string()),
        );
        let st = uac.wait_for(Duration::from_secs(30));
        let _ = uas.terminate(Duration::from_secs(2));
        assert!(
            st.is_some_and(|s| s.success()),
            "{d}: sipp INVITE with digest auth: {st:?}\n{}\n{}",
            sipp_report(&dir, "uac"),
            sipp_report(&dir, "uas")
        );
        p.terminate();
        // The 2 wrong answers are counted as failures.
        let failures = p.counter("sipedge_auth_failures_total");
        assert!(failures >= 2, "{d}: {failures} failures");
        // 20 + 2 first REGISTERs, 2 wrong answers and 10 INVITEs were challenged.
        let challenges = p.counter("sipedge_auth_challenges_total");
        assert!(
            challenges >= 34,
            "{d}: {challenges} challenges\n{:#?}",
            p.log
        );
    }
}

// ---------------------------------------------------------------------------
// pjsua2

/// Two pjsua2 (PJSIP) user agents with passwords, sipedge with a users file
/// (its default challenge, MD5 then SHA-256): bob and alice register (401,
/// then 200), alice calls bob (407, the INVITE again with credentials, bob
/// answers, both CONFIRMED), hangs up, and sends bob a MESSAGE (407, then
/// 200). A third pjsua2 with a wrong password does not register.
#[test]
fn pjsua2_registers_and_calls_with_digest_authentication() {
    if !have_python_module("pjsua2") {
        return;
    }
    let script = peer_file("tests/peers/pjsua_ua.py");
    for d in drivers() {
        let dir = TempDir::new("sec-pjsua");
        let users = dir.write(
            "users.toml",
            &users_toml(
                DOMAIN,
                &[("alice", "alice-Secret-1"), ("bob", "bob-Secret-2")],
            ),
        );
        let p = edge(d, &dir, &["--users", &users]);
        let proxy = p.addr.to_string();
        let ua = |role: &str, password: &str, log: &str| {
            let mut c = Command::new("python3");
            c.arg(&script)
                .args(["--role", role, "--proxy", &proxy, "--domain", DOMAIN])
                .args(["--timeout", "20", "--password", password])
                .arg("--log")
                .arg(dir.path.join(log))
                .stdin(Stdio::null())
                .stderr(Stdio::null());
            c
        };
        let report = |log: &str, lines: &[String]| {
            format!(
                "--- said:\n{}\n--- PJSIP log {log}:\n{}",
                lines.join("\n"),
                tail(&dir.path.join(log), 80)
            )
        };

        // A wrong password: registration refused, the process says so.
        let (mut wrong, wrong_rx) =
            Reaped::spawn_lines("pjsua2 wrong", &mut ua("bob", "bob-guess", "wrong.log"));
        let st = wrong.wait_for(Duration::from_secs(20));
        let said: Vec<String> = wrong_rx.try_iter().collect();
        assert!(
            st.is_some_and(|s| s.code() == Some(1))
                && said.iter().any(|l| l.contains("registration 401")),
            "{d}: a wrong password must not register: {st:?}\n{}",
            report("wrong.log", &said)
        );

        let (mut bob, bob_rx) =
            Reaped::spawn_lines("pjsua2 bob", &mut ua("bob", "bob-Secret-2", "bob.log"));
        let mut bob_said = Vec::new();
        assert!(
            wait_line(
                &bob_rx,
                "bob: registration 200",
                Duration::from_secs(15),
                &mut bob_said
            ),
            "{d}: bob did not register\n{}",
            report("bob.log", &bob_said)
        );
        let (mut alice, alice_rx) = Reaped::spawn_lines(
            "pjsua2 alice",
            &mut ua("alice", "alice-Secret-1", "alice.log"),
        );
        let alice_st = alice.wait_for(Duration::from_secs(30));
        let alice_said: Vec<String> = alice_rx.try_iter().collect();
        let bob_st = bob.wait_for(Duration::from_secs(10));
        bob_said.extend(bob_rx.try_iter());
        let both = format!(
            "{}\n{}",
            report("alice.log", &alice_said),
            report("bob.log", &bob_said)
        );
        assert!(
            alice_st.is_some_and(|s| s.success()) && bob_st.is_some_and(|s| s.success()),
            "{d}: alice {alice_st:?}, bob {bob_st:?}\n{both}"
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
            (
                &bob_said,
                "bob: MESSAGE from <sip:alice@example.test>: hello bob, from pjsua2",
            ),
        ] {
            assert!(
                said.iter().any(|l| l.contains(want)),
                "{d}: no {want:?}\n{both}"
            );
        }
        // The challenges happened and were answered: 401 to REGISTER, 407 to
        // INVITE and MESSAGE, each request sent again with credentials.
        let log = std::fs::read_to_string(dir.path.join("alice.log")).unwrap_or_default();
        for want in [
            "SIP/2.0 401 Unauthorized",
            "Authorization: Digest username=\"alice\"",
            "SIP/2.0 407 Proxy Authentication Required",
            "Proxy-Authorization: Digest username=\"alice\"",
        ] {
            assert!(log.contains(want), "{d}: alice's log has no {want:?}");
        }
        let authorized = |method: &str| {
            log.split(&format!("{method} sip:bob@{DOMAIN} SIP/2.0"))
                .skip(1)
                .any(|m| {
                    // PJSIP logs each message up to "--end msg--", LF-separated.
                    let m = m.split("--end msg--").next().unwrap_or_default();
                    let head = m.replace("\r\n", "\n");
                    head.split("\n\n")
                        .next()
                        .is_some_and(|h| h.contains("\nProxy-Authorization: Digest"))
                })
        };
        for method in ["INVITE", "MESSAGE"] {
            assert!(
                authorized(method),
                "{d}: {method} (re-)sent with credentials\n{both}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// sipvicious

/// The command of sipvicious tool `tool` (pip installs `sipvicious_svwar`,
/// older packages `svwar`), if installed.
fn sipvicious(tool: &str) -> Option<String> {
    let long = format!("sipvicious_{tool}");
    for name in [long.as_str(), tool] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {name}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if found {
            return Some(name.to_owned());
        }
    }
    // Neither: skip, or fail when peers are required.
    have_peer(&long);
    None
}

/// svcrack (run by `c`, a `sh` from [`peer_command`], as a client on `ip`)
/// against `user` with the passwords of `dict`; its output lines
/// (stderr merged in). Ends when it says it ran out of passwords (plus a
/// second for late answers), cracked one, or after 20 s. (sipvicious 0.3.8
/// ignores `-b`: its socket is bound to 0.0.0.0, so it sends from
/// 127.0.0.1; `-x` only sets the address it writes in its Via.)
fn svcrack(
    (mut c, ip): (Command, &str),
    tool: &str,
    target: SocketAddr,
    dir: &TempDir,
    user: &str,
    dict: &[String],
) -> Vec<String> {
    let file = dir.write(&format!("dict-{user}.txt"), &(dict.join("\n") + "\n"));
    let cmd = format!(
        "exec {tool} -v -u {user} -d {file} --domain {DOMAIN} -x {ip} -P {port} -p {port_to} --maximumtime 5 {host} 2>&1",
        port = free_udp_port(),
        port_to = target.port(),
        host = target.ip(),
    );
    c.args(["-c", &cmd])
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null());
    let (mut run, rx) = Reaped::spawn_lines(&format!("svcrack {user}"), &mut c);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                let done = l.contains("no more passwords") || l.contains("The password for");
                lines.push(l);
                if done {
                    // Answers still in flight would come within this.
                    let grace = Instant::now() + Duration::from_secs(1);
                    while let Some(left) = grace.checked_duration_since(Instant::now()) {
                        match rx.recv_timeout(left) {
                            Ok(l) => lines.push(l),
                            Err(_) => break,
                        }
                    }
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = run.terminate(Duration::from_secs(1));
    lines.extend(rx.try_iter());
    lines
}

/// sipvicious against an edge with users 1000, 1003 (registered) and 1007
/// (strong passwords) and a failed-auth throttle of 10 failures per source
/// (then one a minute; requests with credentials from a throttled source
/// are dropped unchecked, the default action):
///
/// - Scripted probes: REGISTER, INVITE, OPTIONS and MESSAGE for existing,
///   registered and missing extensions get the same response (only tags,
///   nonces and names differ); so do a wrong password and an unknown user.
/// - `svwar --force` (REGISTER and INVITE scans over 1000–1010) reports no
///   extension: existing and missing ones look alike.
/// - `svcrack` works against sipedge (a control run with the password 4th
///   in its list cracks it: the negative results below are not the tool
///   failing), but with 200 wrong passwords it finds nothing and hits the
///   throttle (≥ 150 guesses dropped unchecked); with the right password at
///   position 100 of its list it still finds nothing, because by then its
///   source is throttled and not even a right answer is checked.
/// - The attack does not lock the users out: from another address, both
///   attacked users register with their passwords.
/// - `svmap` finds a SIP device (it answers, as a server must) that names
///   no product or version, and cannot use it as a relay: its OPTIONS for
///   a host that is not ours (from a domain that is not ours) gets 403
///   Not Relaying instead of being forwarded back at it, as it was before.
///
/// sipvicious 0.3.8 ignores `-b` (its sockets bind 0.0.0.0), so all its
/// runs come from 127.0.0.1, one source for the throttle. Under `--io xdp`
/// the tools run in the clients' namespace (198.18.0.2, the one source).
#[test]
fn sipvicious_learns_nothing() {
    let (Some(svwar), Some(svcrack_tool)) = (sipvicious("svwar"), sipvicious("svcrack")) else {
        return;
    };
    let pw_1000 = "Xk9-vQ2-strong-pw-7Lm";
    let pw_1003 = "another-Strong-pw-93";
    let pw_1007 = "ZZ-1007-long-and-random-4q";
    for d in drivers_with_xdp() {
        common::clients_for(d);
        let dir = TempDir::new("sec-vicious");
        let users = dir.write(
            "users.toml",
            &users_toml(
                DOMAIN,
                &[("1000", pw_1000), ("1003", pw_1003), ("1007", pw_1007)],
            ),
        );
        // svcrack speaks MD5 only and answers the first challenge line (the
        // default offers MD5 first). A source may fail 10 times, then once
        // per minute (the default refills in 60 s: a slow run would get a
        // guess checked meanwhile).
        let config = dir.write(
            "sipedge.toml",
            "[auth]\nsource_failures = 10\nsource_window = 600\n",
        );
        let mut p = edge(d, &dir, &["--users", &users, "--config", &config]);
        let phone = Ua::new();
        let reg = register(&p, &phone, "1003", pw_1003, phone.addr);
        assert_eq!(reg.status(), Some(200), "{d}: {}", reg.text);

        // svmap: found, anonymous, not a relay.
        if let Some(svmap) = sipvicious("svmap") {
            let out = dir.path.join("svmap.out");
            let err = dir.path.join("svmap.err");
            let (mut c, _) = peer_command(d, &svmap);
            c.args([
                "-vv",
                "-p",
                &p.addr.port().to_string(),
                &p.addr.ip().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap());
            let st = Reaped::spawn("svmap", &mut c).wait_for(Duration::from_secs(30));
            let out = std::fs::read_to_string(&out).unwrap_or_default();
            let err = std::fs::read_to_string(&err).unwrap_or_default();
            let said = format!("{d}: svmap: {st:?}\n--- stdout:\n{out}\n--- stderr:\n{err}");
            assert!(st.is_some(), "{said}");
            let row = out
                .lines()
                .find(|l| l.contains(&p.addr.to_string()))
                .unwrap_or_else(|| panic!("svmap should list the edge\n{said}"));
            assert!(row.contains("unknown"), "no product or version: {said}");
            assert!(err.contains("403 Forbidden (Not Relaying)"), "{said}");
            assert!(!err.contains("received our own packet"), "{said}");
        }

        // Scripted probes: one shape per method, whoever is asked for.
        let probe = Ua::on("127.0.0.8");
        for method in ["REGISTER", "INVITE", "OPTIONS", "MESSAGE"] {
            let mut shapes: Vec<(String, String)> = Vec::new();
            for ext in ["1000", "1003", "1001", "4711", "1007"] {
                let pr = Probe::new(method, ext);
                let contact = format!("Contact: <sip:{ext}@{}>\r\n", probe.addr);
                probe.send(&pr.request(probe.addr, &contact), p.addr);
                let r = final_response(&probe, method, &pr.call_id);
                if let Some(ack) = pr.ack(probe.addr, &r) {
                    probe.send(&ack, p.addr);
                }
                shapes.push((ext.to_owned(), shape(&r.text, ext, probe.addr.port())));
            }
            assert_alike(&format!("{d}: {method}"), &shapes);
        }
        // A wrong password for an existing user and any password for a
        // missing one: the same new challenge.
        let wrong = register(&p, &probe, "1000", "guess", probe.addr);
        let unknown = register(&p, &probe, "4711", "guess", probe.addr);
        assert_eq!(wrong.status(), Some(401), "{d}: {}", wrong.text);
        assert_eq!(
            shape(&wrong.text, "1000", probe.addr.port()),
            shape(&unknown.text, "4711", probe.addr.port()),
            "{d}: a wrong password and an unknown user look alike"
        );

        // svwar, REGISTER and INVITE scans.
        for method in ["REGISTER", "INVITE"] {
            let name = format!("svwar-{method}");
            let out = dir.path.join(format!("{name}.out"));
            let err = dir.path.join(format!("{name}.err"));
            let (mut c, ip) = peer_command(d, &svwar);
            c.args(["-vv", "--force", "-m", method, "-e", "1000-1010"])
                .args(["--domain", DOMAIN, "-x", ip])
                .args(["-P", &free_udp_port().to_string()])
                .args(["-p", &p.addr.port().to_string(), "--maximumtime", "5"])
                .arg(p.addr.ip().to_string())
                .stdin(Stdio::null())
                .stdout(File::create(&out).unwrap())
                .stderr(File::create(&err).unwrap());
            let st = Reaped::spawn(&name, &mut c).wait_for(Duration::from_secs(20));
            let out = std::fs::read_to_string(&out).unwrap_or_default();
            let err = std::fs::read_to_string(&err).unwrap_or_default();
            let said = format!("{d}: {name}: {st:?}\n--- stdout:\n{out}\n--- stderr:\n{err}");
            assert!(st.is_some(), "{said}");
            // It got answers (its baseline is the challenge)…
            assert!(err.contains("Bad user = ('SIP/2.0 40"), "{said}");
            // …and found no extension: no table row, no "exists".
            assert!(err.contains("found nothing"), "{said}");
            for word in ["exists", "reqauth", "noauth", "weird"] {
                assert!(!out.contains(word) && !err.contains(word), "{said}");
            }
        }

        // svcrack: the control run cracks a password at position 4.
        let control: Vec<String> = ["123456", "password", "1003", pw_1003]
            .map(String::from)
            .to_vec();
        let lines = svcrack(
            peer_command(d, "sh"),
            &svcrack_tool,
            p.addr,
            &dir,
            "1003",
            &control,
        );
        let cracked = format!("The password for 1003 is {pw_1003}");
        assert!(
            lines.iter().any(|l| l.contains(&cracked)),
            "{d}: the control run should crack 1003:\n{}",
            lines.join("\n")
        );
        // Two guessing runs at once (from the same source as the control
        // run, which spent 3 of its 10 failures): 200 wrong passwords
        // against 1000; the right one at position 100 for 1007.
        let wrong: Vec<String> = (0..200).map(|i| format!("guess-{i}")).collect();
        let mut with_right = wrong.clone();
        with_right[99] = pw_1007.to_owned();
        let started = Instant::now();
        // Made here: the clients' namespace belongs to this thread.
        let (sh_a, sh_b) = (peer_command(d, "sh"), peer_command(d, "sh"));
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| svcrack(sh_a, &svcrack_tool, p.addr, &dir, "1000", &wrong));
            let b = s.spawn(|| svcrack(sh_b, &svcrack_tool, p.addr, &dir, "1007", &with_right));
            (a.join().unwrap(), b.join().unwrap())
        });
        let took = started.elapsed();
        for (user, lines) in [("1000", &a), ("1007", &b)] {
            let said = format!("{d}: svcrack {user} ({took:?}):\n{}", lines.join("\n"));
            assert!(
                !lines.iter().any(|l| l.contains("The password for")),
                "{said}"
            );
            if !lines.iter().any(|l| l.contains("no more passwords")) {
                p.terminate();
                panic!("{said}\n{:#?}", p.log);
            }
        }
        // The throttled source gets nothing, even with the right password.
        let attacker = Ua::new();
        let call_id = uniq("reg-");
        let aor = format!("sip:1000@{DOMAIN}");
        let req = |cseq: u32, cred: &str| {
            request(
                attacker.addr,
                "REGISTER",
                &format!("sip:{DOMAIN}"),
                &uniq("z9hG4bKreg"),
                (&aor, "at"),
                (&aor, None),
                &call_id,
                cseq,
                &[],
                cred,
                "",
            )
        };
        attacker.send(&req(1, ""), p.addr);
        let ch = final_response(&attacker, "REGISTER", &call_id);
        let cred = answer(&ch, "1000", pw_1000, "REGISTER", &format!("sip:{DOMAIN}"));
        attacker.send(&req(2, &cred), p.addr);
        if let Some((m, _)) = attacker.recv_within(Duration::from_millis(1500)) {
            p.terminate();
            panic!(
                "{d}: the throttled source got {}\n{a:#?}\n{b:#?}\n{:#?}",
                m.text, p.log
            );
        }
        // The users themselves are not locked out.
        let phone = Ua::on("127.0.0.7");
        for (user, pw) in [("1000", pw_1000), ("1007", pw_1007)] {
            let r = register(&p, &phone, user, pw, phone.addr);
            assert_eq!(r.status(), Some(200), "{d}: {user}: {}", r.text);
        }
        p.terminate();
        let throttled = p.counter("sipedge_auth_throttled_total");
        assert!(
            throttled >= 2 * 150,
            "{d}: {throttled} guesses dropped by the throttle\n{:#?}",
            p.log
        );
        eprintln!("{d}: svcrack runs took {took:?}; {throttled} guesses dropped unchecked");
    }
}

// ---------------------------------------------------------------------------
// The same attacks over TCP (sipvicious speaks UDP only: its maintainers say
// its code "doesn't really work for anything but UDP"), scripted.

/// A SIP client on one TCP connection from its own loopback address.
struct TcpUa {
    s: std::net::TcpStream,
    addr: SocketAddr,
    buf: Vec<u8>,
}

impl TcpUa {
    fn connect(from: &str, to: SocketAddr) -> Self {
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let local = SocketAddr::new(from.parse().unwrap(), 0);
        sock.bind(&local.into()).unwrap();
        sock.connect_timeout(&to.into(), Duration::from_secs(3))
            .unwrap();
        let s: std::net::TcpStream = sock.into();
        let addr = s.local_addr().unwrap();
        Self {
            s,
            addr,
            buf: Vec::new(),
        }
    }

    /// Sends a request built by [`request`] (its Via says TCP).
    fn send(&mut self, msg: &str) {
        use std::io::Write;
        let msg = msg.replacen("Via: SIP/2.0/UDP ", "Via: SIP/2.0/TCP ", 1);
        self.s.write_all(msg.as_bytes()).unwrap();
    }

    /// The next message within `wait`, if any (None too when the edge closed).
    fn recv_within(&mut self, wait: Duration) -> Option<Msg> {
        use std::io::Read;
        let end = Instant::now() + wait;
        loop {
            if let Some(h) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..h]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.trim()
                            .eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if self.buf.len() >= h + 4 + len {
                    let m: Vec<u8> = self.buf.drain(..h + 4 + len).collect();
                    return Some(Msg::new(String::from_utf8_lossy(&m).into_owned()));
                }
            }
            let left = end.checked_duration_since(Instant::now())?;
            self.s
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return None,
            }
        }
    }

    /// The final response to `method` of `call_id` within `wait`.
    fn final_response(&mut self, method: &str, call_id: &str, wait: Duration) -> Option<Msg> {
        let end = Instant::now() + wait;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            let m = self.recv_within(left)?;
            if m.status().is_some_and(|s| s >= 200)
                && m.method() == method
                && m.header(HeaderName::CallId).as_deref() == Some(call_id)
            {
                return Some(m);
            }
        }
        None
    }
}

/// What svwar and svcrack do, over TCP, against an edge with users 1000
/// and 1003 (registered) and a failed-auth throttle of 10 failures per
/// source, under each driver:
///
/// - enumeration: REGISTER, INVITE, OPTIONS and MESSAGE for existing,
///   registered and missing extensions get the same answer (only tags,
///   nonces and names differ);
/// - guessing: 30 wrong passwords from one address for six user names
///   (owned by both shards: each authenticates its own AoRs), each
///   answering a fresh challenge: at most the throttle's 10 are checked
///   (401) — the shards share it —, the rest are dropped unchecked and
///   counted; then the right password for 1000 from that address gets no
///   answer either; the user, from another address, still registers.
#[test]
fn attacks_over_tcp_learn_nothing_and_are_throttled() {
    let pw_1000 = "Xk9-vQ2-strong-pw-7Lm";
    let pw_1003 = "another-Strong-pw-93";
    for d in drivers() {
        let dir = TempDir::new("sec-tcp-attack");
        let users = dir.write(
            "users.toml",
            &users_toml(DOMAIN, &[("1000", pw_1000), ("1003", pw_1003)]),
        );
        let config = dir.write(
            "sipedge.toml",
            "[auth]\nsource_failures = 10\nsource_window = 600\n",
        );
        let mut p = edge(
            d,
            &dir,
            &[
                "--users",
                &users,
                "--config",
                &config,
                "--listen",
                "udp:127.0.0.1:0",
                "--listen",
                "tcp:127.0.0.1:0",
            ],
        );
        let tcp = p.listener("tcp");
        let phone = Ua::new();
        let reg = register(&p, &phone, "1003", pw_1003, phone.addr);
        assert_eq!(reg.status(), Some(200), "{d}: {}", reg.text);

        // Enumeration.
        let mut probe = TcpUa::connect("127.0.0.9", tcp);
        for method in ["REGISTER", "INVITE", "OPTIONS", "MESSAGE"] {
            let mut shapes: Vec<(String, String)> = Vec::new();
            for ext in ["1000", "1003", "1001", "4711"] {
                let pr = Probe::new(method, ext);
                let contact = format!("Contact: <sip:{ext}@{};transport=tcp>\r\n", probe.addr);
                probe.send(&pr.request(probe.addr, &contact));
                let r = probe
                    .final_response(method, &pr.call_id, Duration::from_secs(3))
                    .unwrap_or_else(|| panic!("{d}: no answer to {method} for {ext} over TCP"));
                if let Some(ack) = pr.ack(probe.addr, &r) {
                    probe.send(&ack);
                }
                shapes.push((ext.to_owned(), shape(&r.text, ext, probe.addr.port())));
            }
            assert_alike(&format!("{d}: {method} over TCP"), &shapes);
        }

        // Guessing.
        let mut guesser = TcpUa::connect("127.0.0.10", tcp);
        let ruri = format!("sip:{DOMAIN}");
        let attempt = |ua: &mut TcpUa, user: &str, password: &str, wait: Duration| -> Option<Msg> {
            let call_id = uniq("guess-");
            let aor = format!("sip:{user}@{DOMAIN}");
            let at = ua.addr;
            let req = |cseq: u32, cred: &str| {
                request(
                    at,
                    "REGISTER",
                    &ruri,
                    &uniq("z9hG4bKguess"),
                    (&aor, "g"),
                    (&aor, None),
                    &call_id,
                    cseq,
                    &[],
                    &format!("Contact: <sip:{user}@{at};transport=tcp>\r\n{cred}"),
                    "",
                )
            };
            ua.send(&req(1, ""));
            let ch = ua
                .final_response("REGISTER", &call_id, Duration::from_secs(3))
                .unwrap_or_else(|| panic!("{d}: no challenge over TCP"));
            assert_eq!(ch.status(), Some(401), "{d}: {}", ch.text);
            let cred = answer(&ch, user, password, "REGISTER", &ruri);
            ua.send(&req(2, &cred));
            ua.final_response("REGISTER", &call_id, wait)
        };
        let (mut checked, mut dropped) = (0, 0);
        // Names spread over the AoR owners (both shards authenticate).
        let names = ["1000", "1003", "1001", "4711", "2000", "2001"];
        for i in 0..30 {
            let user = names[i % names.len()];
            match attempt(
                &mut guesser,
                user,
                &format!("guess-{i}"),
                Duration::from_millis(400),
            ) {
                Some(r) => {
                    assert_ne!(r.status(), Some(200), "{d}: {}", r.text);
                    checked += 1;
                }
                None => dropped += 1,
            }
        }
        assert!(
            checked <= 10 && dropped >= 20,
            "{d}: {checked} guesses checked, {dropped} dropped"
        );
        let right = attempt(&mut guesser, "1000", pw_1000, Duration::from_millis(1500));
        assert!(
            right.is_none(),
            "{d}: the throttled source got {:?}",
            right.map(|m| m.text)
        );
        // The user is not locked out.
        let other = Ua::on("127.0.0.7");
        let r = register(&p, &other, "1000", pw_1000, other.addr);
        assert_eq!(r.status(), Some(200), "{d}: {}", r.text);
        p.terminate();
        let throttled = p.counter("sipedge_auth_throttled_total");
        assert!(
            throttled >= 21,
            "{d}: {throttled} guesses dropped unchecked"
        );
        eprintln!("{d}: over TCP {checked} guesses checked, {dropped} + 1 dropped");
    }
}

// ---------------------------------------------------------------------------
// Flood

/// What a legitimate client saw.
#[derive(Debug, Default)]
struct Outcomes {
    /// (start, success) per call or registration.
    results: Vec<(Instant, bool)>,
    /// What went wrong, for the failure message.
    failures: Vec<String>,
}

impl Outcomes {
    fn rate(&self, from: Instant, to: Instant) -> (usize, usize) {
        let window: Vec<bool> = self
            .results
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|&(_, ok)| ok)
            .collect();
        (window.iter().filter(|&&ok| ok).count(), window.len())
    }
}

/// A UAS on `ua` until `stop`: 200 to INVITE (its Contact, the
/// Record-Route copied), BYE and anything else; nothing to ACK.
fn uas(ua: Ua, stop: Arc<AtomicBool>) -> u64 {
    let mut answered = 0;
    let contact = format!("Contact: <sip:uas@{}>\r\n", ua.addr);
    while !stop.load(Ordering::Relaxed) {
        let Some((m, _)) = ua.recv_within(Duration::from_millis(50)) else {
            continue;
        };
        if m.status().is_some() || m.method() == "ACK" {
            continue;
        }
        let tag = format!(
            "u{}",
            m.header(HeaderName::CallId).unwrap_or_default().len()
        );
        let extra = if m.method() == "INVITE" {
            &contact[..]
        } else {
            ""
        };
        ua.answer(&m, &response_to(&m, 200, "OK", &tag, extra, ""));
        answered += 1;
    }
    answered
}

/// A client on `ua` registering users `user0…` (Contact: the UAS at `uas`)
/// and calling them through `proxy` until `until`: `calls` calls and
/// `regs` registrations per second, each request retransmitted every
/// 500 ms until answered, 8 s for each to succeed.
fn legit_load(
    ua: &Ua,
    proxy: SocketAddr,
    uas: SocketAddr,
    users: usize,
    calls: u32,
    regs: u32,
    until: Instant,
) -> Outcomes {
    enum Step {
        Register,
        Invite,
        Bye { ack: String },
    }
    struct Live {
        step: Step,
        text: String,
        start: Instant,
        last: Instant,
        answered: bool,
    }
    let mut out = Outcomes::default();
    let mut live: HashMap<String, Live> = HashMap::new();
    let (call_gap, reg_gap) = (
        Duration::from_secs(1) / calls,
        Duration::from_secs(1) / regs,
    );
    let t0 = Instant::now();
    let (mut next_call, mut next_reg) = (t0, t0 + reg_gap / 2);
    let (mut n_call, mut n_reg) = (0usize, 0usize);
    let me = format!("sip:caller@{DOMAIN}");
    loop {
        let now = Instant::now();
        if now < until {
            while next_call <= now {
                let user = format!("user{}", n_call % users);
                let to = format!("sip:{user}@{DOMAIN}");
                let call_id = uniq("flood-call-");
                let text = request(
                    ua.addr,
                    "INVITE",
                    &to,
                    &uniq("z9hG4bKinv"),
                    (&me, "c"),
                    (&to, None),
                    &call_id,
                    1,
                    &[],
                    &format!("Contact: <sip:caller@{}>\r\n", ua.addr),
                    "",
                );
                ua.send(&text, proxy);
                live.insert(
                    call_id,
                    Live {
                        step: Step::Invite,
                        text,
                        start: now,
                        last: now,
                        answered: false,
                    },
                );
                n_call += 1;
                next_call += call_gap;
            }
            while next_reg <= now {
                let user = format!("user{}", n_reg % users);
                let aor = format!("sip:{user}@{DOMAIN}");
                let call_id = uniq("flood-reg-");
                let text = request(
                    ua.addr,
                    "REGISTER",
                    &format!("sip:{DOMAIN}"),
                    &uniq("z9hG4bKreg"),
                    (&aor, "r"),
                    (&aor, None),
                    &call_id,
                    1,
                    &[],
                    &format!("Contact: <sip:{user}@{uas}>\r\nExpires: 3600\r\n"),
                    "",
                );
                ua.send(&text, proxy);
                live.insert(
                    call_id,
                    Live {
                        step: Step::Register,
                        text,
                        start: now,
                        last: now,
                        answered: false,
                    },
                );
                n_reg += 1;
                next_reg += reg_gap;
            }
        } else if live.is_empty() {
            return out;
        }
        // Timers: retransmit what is unanswered, fail what is too old.
        let mut dead = Vec::new();
        for (id, l) in &mut live {
            if now.duration_since(l.start) > Duration::from_secs(8) {
                dead.push(id.clone());
            } else if !l.answered && now.duration_since(l.last) >= Duration::from_millis(500) {
                ua.send(&l.text, proxy);
                l.last = now;
            }
        }
        for id in dead {
            let l = live.remove(&id).unwrap();
            out.results.push((l.start, false));
            out.failures.push(format!("{id}: timed out"));
        }
        let Some((m, _)) = ua.recv_within(Duration::from_millis(2)) else {
            continue;
        };
        let (Some(status), Some(id)) = (m.status(), m.header(HeaderName::CallId)) else {
            continue;
        };
        let Some(l) = live.get_mut(&id) else {
            continue;
        };
        let done = match (&l.step, m.method().as_str(), status) {
            (Step::Invite, "INVITE", 100..=199) => {
                l.answered = true;
                None
            }
            (Step::Invite, "INVITE", 200..=299) => {
                let to = m.header(HeaderName::To).unwrap();
                let to_uri = to
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_owned();
                let to_tag = m.to_tag();
                let target = m.header(HeaderName::Contact).unwrap();
                let target = target
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_owned();
                let routes: Vec<String> = m
                    .values(HeaderName::RecordRoute)
                    .into_iter()
                    .rev()
                    .collect();
                let build = |method: &str, cseq: u32| {
                    request(
                        ua.addr,
                        method,
                        &target,
                        &uniq("z9hG4bKdlg"),
                        (&me, "c"),
                        (&to_uri, to_tag.as_deref()),
                        &id,
                        cseq,
                        &routes,
                        "",
                        "",
                    )
                };
                let (ack, bye) = (build("ACK", 1), build("BYE", 2));
                ua.send(&ack, proxy);
                ua.send(&bye, proxy);
                l.step = Step::Bye { ack };
                l.text = bye;
                l.last = now;
                l.answered = false;
                None
            }
            // The 200 again: our ACK was lost.
            (Step::Bye { ack }, "INVITE", 200..=299) => {
                ua.send(ack, proxy);
                None
            }
            (Step::Invite, "INVITE", _) => Some(false),
            (Step::Bye { .. }, "BYE", 200..=299) => Some(true),
            (Step::Register, "REGISTER", 200..=299) => Some(true),
            (Step::Bye { .. }, "BYE", 300..) | (Step::Register, "REGISTER", 300..) => Some(false),
            _ => None,
        };
        if let Some(ok) = done {
            let l = live.remove(&id).unwrap();
            out.results.push((l.start, ok));
            if !ok {
                out.failures.push(format!("{id}: {}", m.first_line()));
            }
        }
    }
}

/// A flooder on 127.0.0.2 (four sockets): `pps` datagrams per second for
/// `dur` at `target`, a mix of OPTIONS, INVITE and REGISTER for random
/// users and garbage; returns how many went out.
fn flooder(target: SocketAddr, pps: u32, dur: Duration) -> u64 {
    let socks: Vec<UdpSocket> = (0..4)
        .map(|_| UdpSocket::bind("127.0.0.2:0").unwrap())
        .collect();
    let start = Instant::now();
    let tick = Duration::from_millis(10);
    let per_tick = u64::from(pps / 100);
    let (mut sent, mut n) = (0u64, 0u64);
    let mut next = start;
    while next < start + dur {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        for _ in 0..per_tick {
            let sock = &socks[(n % 4) as usize];
            let a = sock.local_addr().unwrap();
            let msg = match n % 4 {
                0 => format!("OPTIONS sip:x{n}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKf{n}\r\nMax-Forwards: 70\r\nTo: <sip:x{n}@{DOMAIN}>\r\nFrom: <sip:f@evil.test>;tag={n}\r\nCall-ID: f{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"),
                1 => format!("INVITE sip:user{n}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKf{n}\r\nMax-Forwards: 70\r\nTo: <sip:user{n}@{DOMAIN}>\r\nFrom: <sip:f@evil.test>;tag={n}\r\nCall-ID: f{n}\r\nCSeq: 1 INVITE\r\nContact: <sip:f@{a}>\r\nContent-Length: 0\r\n\r\n"),
                2 => format!("REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKf{n}\r\nMax-Forwards: 70\r\nTo: <sip:r{n}@{DOMAIN}>\r\nFrom: <sip:r{n}@{DOMAIN}>;tag={n}\r\nCall-ID: f{n}\r\nCSeq: 1 REGISTER\r\nContact: <sip:r{n}@{a}>\r\nContent-Length: 0\r\n\r\n"),
                _ => format!("\u{1}\u{2}garbage {n} {}", "x".repeat((n % 700) as usize)),
            };
            if sock.send_to(msg.as_bytes(), target).is_ok() {
                sent += 1;
            }
            n += 1;
        }
        next += tick;
    }
    sent
}

/// `[flood]` at 100 datagrams/s per source (burst 200, ban 10 s), with no
/// source exempt. One source (127.0.0.2) sends 1,000/s (10× its rate) for
/// 10 s; meanwhile a second one (127.0.0.3) registers users whose contact
/// is a UAS on a third (127.0.0.4) and calls them, 20 calls and 2
/// registrations per second, as it did for 2 s before. Its success rate
/// stays ≥ 99% (before, during and after the flood), sipedge counts the
/// flood as dropped, and its resident memory after the flood is within
/// 10 MiB of what it was after the warm-up.
#[test]
fn flood_from_one_source_spares_another() {
    const RATE: u32 = 100;
    const FLOOD: Duration = Duration::from_secs(10);
    for d in drivers() {
        let dir = TempDir::new("sec-flood");
        let config = dir.write(
            "sipedge.toml",
            &format!("[flood]\nrate = {RATE}\nburst = {}\nban = 10\n", 2 * RATE),
        );
        let mut p = edge(d, &dir, &["--config", &config]);
        let stop = Arc::new(AtomicBool::new(false));
        let uas_ua = Ua::on("127.0.0.4");
        let uas_addr = uas_ua.addr;
        let uas_thread = {
            let stop = stop.clone();
            std::thread::spawn(move || uas(uas_ua, stop))
        };
        let client = Ua::on("127.0.0.3");
        // The callees: user0…user9 at the UAS.
        for i in 0..10 {
            let aor = format!("sip:user{i}@{DOMAIN}");
            let call_id = uniq("flood-reg-");
            client.send(
                &request(
                    client.addr,
                    "REGISTER",
                    &format!("sip:{DOMAIN}"),
                    &uniq("z9hG4bKreg"),
                    (&aor, "r"),
                    (&aor, None),
                    &call_id,
                    1,
                    &[],
                    &format!("Contact: <sip:user{i}@{uas_addr}>\r\nExpires: 3600\r\n"),
                    "",
                ),
                p.addr,
            );
            let r = final_response(&client, "REGISTER", &call_id);
            assert_eq!(r.status(), Some(200), "{d}: {}", r.text);
        }

        // Warm-up: every table the legitimate load needs has grown.
        let warm = legit_load(
            &client,
            p.addr,
            uas_addr,
            10,
            20,
            2,
            Instant::now() + Duration::from_secs(2),
        );
        let rss_before = p.rss_kib();

        let flood_start = Instant::now();
        let target = p.addr;
        let flood = std::thread::spawn(move || flooder(target, 10 * RATE, FLOOD));
        let load = legit_load(
            &client,
            p.addr,
            uas_addr,
            10,
            20,
            2,
            flood_start + FLOOD + Duration::from_secs(1),
        );
        let sent = flood.join().unwrap();
        let flood_end = flood_start + FLOOD;
        let rss_after = p.rss_kib();
        stop.store(true, Ordering::Relaxed);
        let answered = uas_thread.join().unwrap();
        p.terminate();

        let (ok_w, n_w) = warm.rate(flood_start - Duration::from_secs(60), flood_start);
        let (ok_f, n_f) = load.rate(flood_start, flood_end);
        let (ok_a, n_a) = load.rate(flood_end, flood_end + Duration::from_secs(60));
        let dropped = p.counter("sipedge_flood_dropped_total");
        let summary = format!(
            "{d}: legit ok {ok_w}/{n_w} before, {ok_f}/{n_f} during, {ok_a}/{n_a} after the flood; \
flood sent {sent}, dropped {dropped}; uas answered {answered}; RSS {rss_before} KiB → {rss_after} KiB"
        );
        eprintln!("{summary}");
        let failures = [&warm.failures[..], &load.failures[..]].concat();
        for (ok, n) in [(ok_w, n_w), (ok_f, n_f), (ok_a, n_a)] {
            assert!(
                n > 0 && ok * 100 >= n * 99,
                "{summary}\nfailures: {failures:#?}"
            );
        }
        assert!(n_f >= 200, "{summary}: the load ran during the flood");
        assert!(
            sent >= u64::from(9 * RATE) * FLOOD.as_secs(),
            "{summary}: the flood was sent"
        );
        // Two shards may each let a burst (and the rate) through; the rest is dropped.
        assert!(
            dropped + 4 * u64::from(2 * RATE) >= sent * 9 / 10,
            "{summary}\n{:#?}",
            p.log
        );
        assert!(
            rss_after <= rss_before + 10 * 1024,
            "{summary}: memory grew"
        );
    }
}

// ---------------------------------------------------------------------------
// Policy

/// The issue's policy example, with a users file (so the default rules
/// after it authenticate requests from our own domain):
///
/// ```toml
/// [policy]
/// networks.trusted = ["127.0.0.2/32"]
/// [[policy.rule]]
/// method = ["INVITE", "MESSAGE"]
/// not_source = ["trusted"]
/// not_uri_user = ["support"]
/// action = "deny"
/// ```
///
/// From 127.0.0.3 (outside): MESSAGE and INVITE to bob get 403 with the
/// rule's reason and never reach him, also from a local user (no challenge
/// first: the deny comes before authentication); to support they are
/// routed to support's phone; OPTIONS to bob (not in the rule) is routed.
/// From 127.0.0.2 (trusted): MESSAGE and INVITE to bob are routed; from a
/// local user they are challenged first (407) and routed with credentials.
/// One source (127.0.0.2) spraying 64 source ports sends 1,000 OPTIONS in
/// 2 s to a two-shard edge whose `[flood]` allows 50/s, burst 100. Steered
/// by source (the default), both shards see it as one source on one shard:
/// about the burst is answered. With `[socket] steer = "hash"` its ports
/// spread over both shards and each gives it the burst: about twice as many.
#[test]
fn flood_limit_holds_across_shards_for_a_port_sprayer() {
    for d in drivers() {
        let mut answered_by = Vec::new();
        for steer in ["source", "hash"] {
            let data = TempDir::new("flood-steer");
            let cfg = data.write(
                "edge.toml",
                &format!(
                    "[socket]\nsteer = \"{steer}\"\n[flood]\nrate = 50\nburst = 100\nban = 10\n"
                ),
            );
            let mut p = edge(d, &data, &["--config", &cfg]);
            let target = p.addr;
            let socks: Vec<UdpSocket> = (0..64)
                .map(|_| {
                    let s = UdpSocket::bind("127.0.0.2:0").unwrap();
                    s.set_nonblocking(true).unwrap();
                    s
                })
                .collect();
            let mut buf = [0u8; 4096];
            let mut answered = 0u32;
            let mut drain = |socks: &[UdpSocket], answered: &mut u32| {
                for s in socks {
                    while let Ok((n, _)) = s.recv_from(&mut buf) {
                        if buf[..n].starts_with(b"SIP/2.0 200") {
                            *answered += 1;
                        }
                    }
                }
            };
            let start = Instant::now();
            for n in 0..1000u32 {
                let s = &socks[(n % 64) as usize];
                let a = s.local_addr().unwrap();
                let msg = format!(
                    "OPTIONS sip:{target} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKsp{n}\r\n\
                     Max-Forwards: 70\r\nTo: <sip:{target}>\r\nFrom: <sip:f@evil.test>;tag=s{n}\r\n\
                     Call-ID: sp{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
                );
                s.send_to(msg.as_bytes(), target).unwrap();
                if n % 50 == 49 {
                    drain(&socks, &mut answered);
                    let next = start + Duration::from_millis(u64::from(n + 1) * 2);
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            }
            std::thread::sleep(Duration::from_millis(300));
            drain(&socks, &mut answered);
            p.terminate();
            let dropped = p.counter("sipedge_flood_dropped_total");
            eprintln!("{d} steer={steer}: {answered} of 1000 answered, {dropped} dropped");
            answered_by.push(answered);
        }
        let (source, hash) = (answered_by[0], answered_by[1]);
        assert!(
            (80..=160).contains(&source),
            "{d}: steered by source, {source} of 1000 answered (one shard's limit: ~100-150)"
        );
        assert!(
            hash >= source + 60,
            "{d}: steered by hash, {hash} answered (two shards' limits), by source {source}"
        );
    }
}

#[test]
fn policy_refuses_im_and_calls_from_outside_except_to_support() {
    for d in drivers() {
        let dir = TempDir::new("sec-policy");
        let users = dir.write(
            "users.toml",
            &users_toml(
                DOMAIN,
                &[
                    ("alice", "alice-pw-x1"),
                    ("bob", "bob-pw-x2"),
                    ("support", "support-pw-x3"),
                ],
            ),
        );
        let config = dir.write(
            "sipedge.toml",
            r#"
[policy]
networks.trusted = ["127.0.0.2/32"]

[[policy.rule]]
name = "no calls or IM from the internet, except to the support desk"
method = ["INVITE", "MESSAGE"]
not_source = ["trusted"]
not_uri_user = ["support"]
action = "deny"
reason = "Forbidden (Internal Only)"
"#,
        );
        let mut p = edge(d, &dir, &["--users", &users, "--config", &config]);
        let (bob, support) = (Ua::new(), Ua::new());
        for (ua, user, pw) in [
            (&bob, "bob", "bob-pw-x2"),
            (&support, "support", "support-pw-x3"),
        ] {
            let r = register(&p, ua, user, pw, ua.addr);
            assert_eq!(r.status(), Some(200), "{d}: {user}: {}", r.text);
        }
        let outside = Ua::on("127.0.0.3");
        let trusted = Ua::on("127.0.0.2");
        let mallory = "sip:mallory@internet.test";
        let partner = "sip:partner@partner.test";
        let alice = format!("sip:alice@{DOMAIN}");

        // Refused: no 100, a 403 with the rule's reason, nothing reaches bob.
        for (from, method) in [
            (mallory, "MESSAGE"),
            (mallory, "INVITE"),
            (alice.as_str(), "MESSAGE"),
            (alice.as_str(), "INVITE"),
        ] {
            let leg = Leg::new(&outside, from, &format!("sip:bob@{DOMAIN}"));
            let branch = uniq("z9hG4bKout");
            outside.send(&leg.initial(method, 1, &branch, "", "hello"), p.addr);
            let (r, _) = outside
                .recv_within(Duration::from_secs(3))
                .unwrap_or_else(|| panic!("{d}: no answer to {method} from {from}"));
            assert_eq!(
                r.first_line(),
                "SIP/2.0 403 Forbidden (Internal Only)",
                "{d}: {method} from {from} outside: {}",
                r.text
            );
            if method == "INVITE" {
                outside.send(&leg.ack_failure(&branch, 1, &r), p.addr);
            }
        }
        bob.expect_silence(Duration::from_millis(300));

        // Routed: to support from outside, OPTIONS to bob from outside,
        // everything to bob from the trusted network.
        let routed = |ua: &Ua,
                      callee: &Ua,
                      from: &str,
                      user: &str,
                      method: &str,
                      cred: Option<(&str, &str)>| {
            let leg = Leg::new(ua, from, &format!("sip:{user}@{DOMAIN}"));
            let mut branch = uniq("z9hG4bKok");
            let mut cseq = 1;
            ua.send(&leg.initial(method, cseq, &branch, "", "hello"), p.addr);
            if let Some((name, pw)) = cred {
                let ch = final_response(ua, method, &leg.call_id);
                assert_eq!(
                    ch.status(),
                    Some(407),
                    "{d}: {method} from {from}: {}",
                    ch.text
                );
                if method == "INVITE" {
                    ua.send(&leg.ack_failure(&branch, cseq, &ch), p.addr);
                }
                let c = answer(&ch, name, pw, method, &leg.to);
                branch = uniq("z9hG4bKok");
                cseq += 1;
                ua.send(&leg.initial(method, cseq, &branch, &c, "hello"), p.addr);
            }
            let (req, _) = callee.expect_request(method);
            assert_eq!(
                req.header(HeaderName::CallId).as_deref(),
                Some(leg.call_id.as_str())
            );
            // An INVITE is declined (no dialog to clean up), the rest accepted.
            let (code, reason) = if method == "INVITE" {
                (486, "Busy Here")
            } else {
                (200, "OK")
            };
            callee.answer(&req, &response_to(&req, code, reason, "callee", "", ""));
            let r = final_response(ua, method, &leg.call_id);
            assert_eq!(
                r.status(),
                Some(code),
                "{d}: {method} from {from} to {user}: {}",
                r.text
            );
            if method == "INVITE" {
                ua.send(&leg.ack_failure(&branch, cseq, &r), p.addr);
            }
        };
        for method in ["MESSAGE", "INVITE"] {
            routed(&outside, &support, mallory, "support", method, None);
            routed(&trusted, &bob, partner, "bob", method, None);
            routed(
                &trusted,
                &bob,
                &alice,
                "bob",
                method,
                Some(("alice", "alice-pw-x1")),
            );
        }
        routed(&outside, &bob, mallory, "bob", "OPTIONS", None);
        p.terminate();
        let denied = p.counter("sipedge_policy_denied_total");
        assert!(denied >= 4, "{d}: {denied} denied\n{:#?}", p.log);
    }
}

// ---------------------------------------------------------------------------
// SIGHUP

/// A call is set up between two authenticated users (alice's INVITE
/// answered with 407, then with her credentials); alice's password is
/// changed in the users file and sipedge gets SIGHUP. The call stays up:
/// alice's BYE reaches bob along the route set and his 200 comes back.
/// Then alice's old password is refused (a new 401, for REGISTER; a new
/// 407, for INVITE) and the new one registers.
#[test]
fn sighup_reloads_users_without_dropping_calls() {
    for d in drivers() {
        let dir = TempDir::new("sec-hup");
        let (old, new) = ("alice-old-Secret", "alice-new-Secret");
        let users_path = dir.path.join("users.toml");
        let write_users = |alice_pw: &str| {
            // Written aside and renamed: the reload never reads half a file.
            let text = users_toml(DOMAIN, &[("alice", alice_pw), ("bob", "bob-Secret")]);
            std::fs::write(dir.path.join("users.tmp"), text).unwrap();
            std::fs::rename(dir.path.join("users.tmp"), &users_path).unwrap();
        };
        write_users(old);
        let mut p = edge(d, &dir, &["--users", users_path.to_str().unwrap()]);
        let (alice, bob) = (Ua::new(), Ua::new());
        assert_eq!(
            register(&p, &bob, "bob", "bob-Secret", bob.addr).status(),
            Some(200)
        );
        assert_eq!(
            register(&p, &alice, "alice", old, alice.addr).status(),
            Some(200)
        );

        // alice calls bob: 407, then the INVITE with her credentials.
        let mut leg = Leg::new(
            &alice,
            &format!("sip:alice@{DOMAIN}"),
            &format!("sip:bob@{DOMAIN}"),
        );
        let branch = uniq("z9hG4bKinv");
        alice.send(&leg.initial("INVITE", 1, &branch, "", ""), p.addr);
        let ch = final_response(&alice, "INVITE", &leg.call_id);
        assert_eq!(ch.status(), Some(407), "{d}: {}", ch.text);
        alice.send(&leg.ack_failure(&branch, 1, &ch), p.addr);
        let cred = answer(&ch, "alice", old, "INVITE", &leg.to);
        alice.send(
            &leg.initial("INVITE", 2, &uniq("z9hG4bKinv"), &cred, ""),
            p.addr,
        );
        let (inv, _) = bob.expect_request("INVITE");
        let contact = format!("Contact: <sip:bob@{}>\r\n", bob.addr);
        bob.answer(&inv, &response_to(&inv, 200, "OK", "bob-tag", &contact, ""));
        let ok = final_response(&alice, "INVITE", &leg.call_id);
        assert_eq!(ok.status(), Some(200), "{d}: {}", ok.text);
        leg.established(&ok);
        alice.send(&leg.in_dialog("ACK", 2), p.addr);
        bob.expect_request("ACK");

        // New password, SIGHUP.
        write_users(new);
        p.signal("HUP");
        assert!(
            p.wait_log("SIGHUP: users and policy reloaded", Duration::from_secs(5))
                .is_some(),
            "{d}: no reload\n{:#?}",
            p.log
        );

        // The call is still up: the BYE goes through and is answered.
        alice.send(&leg.in_dialog("BYE", 3), p.addr);
        let (bye, _) = bob.expect_request("BYE");
        bob.answer(&bye, &response_to(&bye, 200, "OK", "bob-tag", "", ""));
        let done = final_response(&alice, "BYE", &leg.call_id);
        assert_eq!(done.status(), Some(200), "{d}: {}", done.text);

        // The old password no longer works; the new one does.
        let r = register(&p, &alice, "alice", old, alice.addr);
        assert_eq!(r.status(), Some(401), "{d}: old password: {}", r.text);
        let leg2 = Leg::new(
            &alice,
            &format!("sip:alice@{DOMAIN}"),
            &format!("sip:bob@{DOMAIN}"),
        );
        let branch = uniq("z9hG4bKinv");
        alice.send(&leg2.initial("MESSAGE", 1, &branch, "", "hi"), p.addr);
        let ch = final_response(&alice, "MESSAGE", &leg2.call_id);
        let cred = answer(&ch, "alice", old, "MESSAGE", &leg2.to);
        alice.send(
            &leg2.initial("MESSAGE", 2, &uniq("z9hG4bKmsg"), &cred, "hi"),
            p.addr,
        );
        let again = final_response(&alice, "MESSAGE", &leg2.call_id);
        assert_eq!(
            again.status(),
            Some(407),
            "{d}: old password: {}",
            again.text
        );
        bob.expect_silence(Duration::from_millis(200));
        let r = register(&p, &alice, "alice", new, alice.addr);
        assert_eq!(r.status(), Some(200), "{d}: new password: {}", r.text);
    }
}

/// SIGHUP reloads `[auth]` in place and stays replay-safe: after a reload
/// that changes the algorithm order and the nonce secret, a credentials line
/// that was already used is not accepted again, one issued before the reload
/// and never used draws a stale challenge (a clean retry, not a failure),
/// the new challenges offer the new order, and the new credentials register.
#[test]
fn sighup_reloads_auth_settings_replay_safe() {
    for d in drivers() {
        let dir = TempDir::new("sec-auth-hup");
        let users = dir.write("users.toml", &users_toml(DOMAIN, &[("alice", "alice-Pw1")]));
        let config = |secret: &str, algs: &str| {
            let text = format!("[auth]\nsecret = \"{secret}\"\nalgorithms = [{algs}]\n");
            std::fs::write(dir.path.join("sipedge.tmp"), text).unwrap();
            std::fs::rename(dir.path.join("sipedge.tmp"), dir.path.join("sipedge.toml")).unwrap();
            dir.path.join("sipedge.toml").to_string_lossy().into_owned()
        };
        let file = config(&"ab".repeat(16), "\"MD5\", \"SHA-256\"");
        let mut p = edge(d, &dir, &["--users", &users, "--config", &file]);
        let ua = Ua::new();
        let aor = format!("sip:alice@{DOMAIN}");
        let call_id = uniq("reg-");
        let mut cseq = 0;
        let to = p.addr;
        let mut send = |cred: &str| -> Msg {
            cseq += 1;
            let req = request(
                ua.addr,
                "REGISTER",
                &format!("sip:{DOMAIN}"),
                &uniq("z9hG4bKreg"),
                (&aor, "at"),
                (&aor, None),
                &call_id,
                cseq,
                &[],
                &format!("Contact: <sip:alice@{}>\r\nExpires: 600\r\n{cred}", ua.addr),
                "",
            );
            ua.send(&req, to);
            final_response(&ua, "REGISTER", &call_id)
        };
        let uri = format!("sip:{DOMAIN}");
        let ch = send("");
        assert_eq!(ch.status(), Some(401), "{d}: {}", ch.text);
        let first = ch.header(HeaderName::WwwAuthenticate).unwrap();
        assert!(first.contains("algorithm=MD5"), "{d}: {first}");
        let used = answer(&ch, "alice", "alice-Pw1", "REGISTER", &uri);
        assert_eq!(send(&used).status(), Some(200), "{d}");
        let unused = answer(&send(""), "alice", "alice-Pw1", "REGISTER", &uri);

        config(&"cd".repeat(16), "\"SHA-256\", \"MD5\"");
        p.signal("HUP");
        assert!(
            p.wait_log("SIGHUP: [auth] reloaded", Duration::from_secs(5))
                .is_some(),
            "{d}: no [auth] reload\n{:#?}",
            p.log
        );
        // Shards take a reload at their next loop turn: until the answer
        // shows the new order, it has not reached the shard that answers.
        let mut stale = send(&used);
        for _ in 0..20 {
            let now = stale
                .header(HeaderName::WwwAuthenticate)
                .unwrap_or_default();
            if now.contains("algorithm=SHA-256") {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            stale = send(&used);
        }
        assert_eq!(
            stale.status(),
            Some(401),
            "{d}: a used nonce-count was accepted again"
        );
        let line = stale.header(HeaderName::WwwAuthenticate).unwrap();
        assert!(
            line.contains("algorithm=SHA-256") && line.contains("stale=true"),
            "{d}: {line}"
        );
        let again = send(&unused);
        assert_eq!(again.status(), Some(401), "{d}: {}", again.text);
        assert!(
            again
                .header(HeaderName::WwwAuthenticate)
                .unwrap()
                .contains("stale=true"),
            "{d}: {}",
            again.text
        );
        let fresh = answer(&again, "alice", "alice-Pw1", "REGISTER", &uri);
        assert!(fresh.contains("algorithm=SHA-256"), "{d}: {fresh}");
        assert_eq!(send(&fresh).status(), Some(200), "{d}");

        // A change that needs a restart is refused whole: the order stays.
        std::fs::write(
            dir.path.join("sipedge.toml"),
            format!(
                "[auth]\nsecret = \"{}\"\nalgorithms = [\"MD5\"]\n[registrar]\nmax_expires = 900\n",
                "cd".repeat(16)
            ),
        )
        .unwrap();
        p.signal("HUP");
        assert!(
            p.wait_log("needs a restart: registrar changed", Duration::from_secs(5))
                .is_some(),
            "{d}\n{:#?}",
            p.log
        );
        let ch = send("");
        assert!(
            ch.header(HeaderName::WwwAuthenticate)
                .unwrap()
                .contains("algorithm=SHA-256"),
            "{d}: {}",
            ch.text
        );
    }
}
