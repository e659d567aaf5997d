//! The registrar and the transaction-stateful proxy end to end: the real
//! binary (`sipedge run`, its default mode) serving `example.test` on
//! 127.0.0.1, under each I/O driver, with scripted UAs on UDP sockets that
//! register their own addresses and call, message, fork and cancel through
//! it; and a `kill -9` and restart on the same data directory.
//!
//! Every test gets a fresh data directory and binds port 0; every receive
//! is bounded (3–5 s), and the child process is killed on drop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{drivers_with_xdp, response_to, Msg, Proxy, TempDir, Ua};
use sipedge::sip::HeaderName;

const DOMAIN: &str = "example.test";

/// sipedge as registrar and stateful proxy for example.test under `driver`,
/// its store in `data` (one shard unless `extra` says otherwise).
fn edge(driver: &str, data: &TempDir, extra: &[&str]) -> Proxy {
    let mut args = vec!["--io", driver, "--domain", DOMAIN, "--data-dir", data.arg()];
    if !extra.contains(&"--shards") {
        args.extend_from_slice(&["--shards", "1"]);
    }
    args.extend_from_slice(extra);
    Proxy::start(&args)
}

/// A string unique in this test process (branches, Call-IDs, tags).
fn uniq(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}{}", N.fetch_add(1, Ordering::Relaxed))
}

/// A REGISTER for `user` from `ua`: `contact` is the Contact value (none:
/// a fetch), `expires` the Expires header (none: absent).
fn register(
    ua: &Ua,
    user: &str,
    call_id: &str,
    cseq: u32,
    contact: Option<&str>,
    expires: Option<u32>,
) -> String {
    let mut s = format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch={b};rport\r\nMax-Forwards: 70\r\n\
To: <sip:{user}@{DOMAIN}>\r\nFrom: <sip:{user}@{DOMAIN}>;tag=r{user}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n",
        a = ua.addr,
        b = uniq("z9hG4bKreg"),
    );
    if let Some(c) = contact {
        s.push_str(&format!("Contact: {c}\r\n"));
    }
    if let Some(e) = expires {
        s.push_str(&format!("Expires: {e}\r\n"));
    }
    s.push_str("Content-Length: 0\r\n\r\n");
    s
}

/// The `expires` parameter of a Contact value.
fn expires_param(contact: &str) -> u32 {
    contact
        .split(';')
        .find_map(|p| p.trim().strip_prefix("expires="))
        .unwrap_or_else(|| panic!("no expires in {contact}"))
        .parse()
        .unwrap()
}

/// `ua`'s own contact URI for `user`.
fn contact_of(user: &str, ua: &Ua) -> String {
    format!("sip:{user}@{}", ua.addr)
}

/// Registers `ua`'s own address for `user` for `expires` s; asserts the 200
/// lists that contact with (about) that expiry, and returns it.
fn register_self(p: &Proxy, ua: &Ua, user: &str, expires: u32) -> Msg {
    let contact = format!("<{}>", contact_of(user, ua));
    ua.send(
        &register(ua, user, &uniq("reg-"), 1, Some(&contact), Some(expires)),
        p.addr,
    );
    let ok = ua.expect_response(200, "REGISTER");
    let listed = ok.values(HeaderName::Contact);
    let mine = listed
        .iter()
        .find(|c| c.starts_with(&contact))
        .unwrap_or_else(|| panic!("200 does not list {contact}: {}", ok.text));
    let e = expires_param(mine);
    assert!(
        e <= expires && e + 2 >= expires,
        "expires={e}, asked {expires}: {}",
        ok.text
    );
    assert!(ok.to_tag().is_some(), "the registrar's 200 has a To tag");
    ok
}

/// The calling side of a dialog (RFC 3261 §12.1.2), as a UA keeps it.
struct Leg<'a> {
    ua: &'a Ua,
    from: String,
    to: String,
    call_id: String,
    from_tag: String,
    /// The To tag, once a 2xx established the dialog.
    to_tag: Option<String>,
    /// The remote target (the callee's Contact).
    target: String,
    /// The route set (the 2xx's Record-Route, reversed).
    routes: Vec<String>,
}

impl<'a> Leg<'a> {
    fn new(ua: &'a Ua, from_user: &str, to_user: &str) -> Self {
        Self {
            ua,
            from: format!("sip:{from_user}@{DOMAIN}"),
            to: format!("sip:{to_user}@{DOMAIN}"),
            call_id: uniq("call-"),
            from_tag: uniq("ft"),
            to_tag: None,
            target: String::new(),
            routes: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        method: &str,
        uri: &str,
        cseq: u32,
        branch: &str,
        to_tag: Option<&str>,
        routes: &[String],
        body: &str,
    ) -> String {
        let mut s = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch={branch};rport\r\nMax-Forwards: 70\r\n",
            a = self.ua.addr
        );
        for r in routes {
            s.push_str(&format!("Route: {r}\r\n"));
        }
        let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
        s.push_str(&format!(
            "To: <{}>{to_tag}\r\nFrom: <{}>;tag={}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContact: <sip:caller@{}>\r\n",
            self.to, self.from, self.from_tag, self.call_id, self.ua.addr
        ));
        if !body.is_empty() {
            let ct = if method == "INVITE" {
                "application/sdp"
            } else {
                "text/plain"
            };
            s.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        s.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        s
    }

    /// An out-of-dialog request to the AoR.
    fn initial(&self, method: &str, branch: &str, body: &str) -> String {
        self.build(method, &self.to, 1, branch, None, &[], body)
    }

    /// The CANCEL of the INVITE sent with `branch` (§9.1).
    fn cancel(&self, branch: &str) -> String {
        self.build("CANCEL", &self.to, 1, branch, None, &[], "")
    }

    /// The ACK of a non-2xx final response `resp` to the INVITE sent with `branch` (§17.1.1.3).
    fn ack_failure(&self, branch: &str, resp: &Msg) -> String {
        let tag = resp.to_tag();
        self.build("ACK", &self.to, 1, branch, tag.as_deref(), &[], "")
    }

    /// Takes the dialog state from a 2xx (§12.1.2).
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

    /// An in-dialog request (§12.2.1.1): to the remote target, along the route set.
    fn in_dialog(&self, method: &str, cseq: u32) -> String {
        let tag = self.to_tag.clone();
        self.build(
            method,
            &self.target,
            cseq,
            &uniq("z9hG4bKdlg"),
            tag.as_deref(),
            &self.routes,
            "",
        )
    }

    /// Where an in-dialog request is sent: the first route's address.
    fn next_hop(&self) -> SocketAddr {
        let first = self.routes.first().expect("a route set");
        let hostport = first
            .trim_start_matches("<sip:")
            .split([';', '>'])
            .next()
            .unwrap();
        hostport.parse().unwrap()
    }
}

const SDP: &str = "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\n";

/// The callee's answer headers: its Contact.
fn callee_contact(user: &str, ua: &Ua) -> String {
    format!("Contact: <{}>\r\n", contact_of(user, ua))
}

/// A whole call from `alice` to `bob` (both registered), hung up by the
/// caller, with what a user relies on asserted at each step.
fn call_and_hang_up(d: &str, p: &Proxy, alice: &Ua, bob: &Ua) {
    let mut leg = Leg::new(alice, "alice", "bob");
    let branch = uniq("z9hG4bKinv");
    alice.send(&leg.initial("INVITE", &branch, SDP), p.addr);

    // 100 Trying first, from sipedge's public address.
    let (trying, from) = alice
        .recv_within(Duration::from_secs(3))
        .expect("100 Trying");
    assert_eq!(
        (trying.status(), from),
        (Some(100), p.addr),
        "{d}: {}",
        trying.text
    );

    // The INVITE reaches bob's registered contact, record-routed.
    let (inv, _) = bob.expect_request("INVITE");
    assert_eq!(
        inv.request_uri(),
        contact_of("bob", bob),
        "{d}: Request-URI is the contact"
    );
    let rr = inv.values(HeaderName::RecordRoute);
    assert_eq!(
        rr,
        vec![format!("<sip:{};lr>", p.addr)],
        "{d}: {}",
        inv.text
    );
    assert_eq!(inv.max_forwards(), Some(69));
    let vias = inv.values(HeaderName::Via);
    assert_eq!(vias.len(), 2, "{}", inv.text);
    assert!(
        vias[1].starts_with(&format!("SIP/2.0/UDP {};branch={branch}", alice.addr)),
        "{vias:?}"
    );
    assert_eq!(inv.body(), SDP, "body intact");
    assert!(inv.values(HeaderName::Route).is_empty());

    // 180 and 200 come back to alice with sipedge's Via gone.
    let tag = uniq("bt");
    let contact = callee_contact("bob", bob);
    bob.answer(&inv, &response_to(&inv, 180, "Ringing", &tag, &contact, ""));
    let ringing = alice.expect_response(180, "INVITE");
    assert_eq!(ringing.values(HeaderName::Via).len(), 1, "{}", ringing.text);
    bob.answer(&inv, &response_to(&inv, 200, "OK", &tag, &contact, SDP));
    let ok = alice.expect_response(200, "INVITE");
    assert_eq!(ok.values(HeaderName::Via).len(), 1);
    assert_eq!(ok.top_branch(), branch);
    assert_eq!(
        ok.values(HeaderName::RecordRoute),
        rr,
        "the route set reaches the caller"
    );
    assert_eq!(ok.body(), SDP);
    leg.established(&ok);
    assert_eq!(leg.next_hop(), p.addr);

    // ACK and BYE follow the route set through sipedge to bob's contact.
    alice.send(&leg.in_dialog("ACK", 1), leg.next_hop());
    let (ack, _) = bob.expect_request("ACK");
    assert_eq!(ack.request_uri(), contact_of("bob", bob), "{d}");
    assert!(
        ack.values(HeaderName::Route).is_empty(),
        "sipedge removed its own Route: {}",
        ack.text
    );
    assert_eq!(ack.to_tag().as_deref(), Some(tag.as_str()));
    alice.send(&leg.in_dialog("BYE", 2), leg.next_hop());
    let (bye, _) = bob.expect_request("BYE");
    assert_eq!(bye.request_uri(), contact_of("bob", bob));
    assert!(bye.values(HeaderName::Route).is_empty(), "{}", bye.text);
    bob.answer(&bye, &response_to(&bye, 200, "OK", &tag, "", ""));
    let done = alice.expect_response(200, "BYE");
    assert_eq!(done.values(HeaderName::Via).len(), 1);
}

/// Alice and bob register their own sockets; alice calls bob: INVITE with
/// Record-Route to bob, 100/180/200 to alice, ACK and BYE along the route
/// set, 200 to the BYE. With two shards, REGISTERs for AoRs the receiving
/// shard does not own are handed to their owner and calls still find every
/// user from either shard.
#[test]
fn register_two_users_and_call() {
    for d in drivers_with_xdp() {
        for shards in ["1", "2"] {
            let data = TempDir::new("call");
            let mut p = edge(d, &data, &["--shards", shards]);
            let (alice, bob) = (Ua::new(), Ua::new());
            register_self(&p, &alice, "alice", 3600);
            register_self(&p, &bob, "bob", 3600);
            call_and_hang_up(d, &p, &alice, &bob);
            if shards == "2" {
                // More users from more sockets (the kernel spreads the
                // flows over both shards' sockets; each AoR has one owner),
                // then calls between them.
                let users: Vec<(String, Ua)> =
                    (0..12).map(|i| (format!("user{i}"), Ua::new())).collect();
                for (u, ua) in &users {
                    register_self(&p, ua, u, 600);
                }
                for pair in users.chunks(2) {
                    let [(caller, c), (callee, e)] = pair else {
                        unreachable!()
                    };
                    let mut leg = Leg::new(c, caller, callee);
                    let branch = uniq("z9hG4bKx");
                    c.send(&leg.initial("INVITE", &branch, SDP), p.addr);
                    let (inv, _) = e.expect_request("INVITE");
                    assert_eq!(inv.request_uri(), contact_of(callee, e), "{d}");
                    let tag = uniq("t");
                    e.answer(
                        &inv,
                        &response_to(&inv, 200, "OK", &tag, &callee_contact(callee, e), SDP),
                    );
                    let ok = c.expect_response(200, "INVITE");
                    leg.established(&ok);
                    c.send(&leg.in_dialog("ACK", 1), leg.next_hop());
                    e.expect_request("ACK");
                }
                let (clean, _) = p.terminate();
                assert!(clean, "{d}: {:#?}", p.log);
                let handed = p
                    .log
                    .iter()
                    .find_map(|l| l.split("sipedge_registrar_handed_over_total ").nth(1))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                assert!(
                    handed > 0,
                    "{d}: some REGISTERs crossed shards: {:#?}",
                    p.log
                );
                // Each one was taken in by its owner, and counted once as a request.
                let metric = |name: &str| {
                    p.log
                        .iter()
                        .find_map(|l| l.split(name).nth(1))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(0)
                };
                assert_eq!(
                    metric("sipedge_registrar_handed_in_total "),
                    handed,
                    "{d}: {:#?}",
                    p.log
                );
            }
        }
    }
}

/// A MESSAGE to a registered user is routed by location (not
/// record-routed), its 200 comes back, and a retransmission of the MESSAGE
/// gets the 200 again from sipedge without reaching bob twice.
#[test]
fn message_reaches_the_registered_user() {
    for d in drivers_with_xdp() {
        let data = TempDir::new("msg");
        let p = edge(d, &data, &[]);
        let (alice, bob) = (Ua::new(), Ua::new());
        register_self(&p, &bob, "bob", 3600);
        let leg = Leg::new(&alice, "alice", "bob");
        let branch = uniq("z9hG4bKmsg");
        let message = leg.initial("MESSAGE", &branch, "hello bob");
        alice.send(&message, p.addr);
        let (m, _) = bob.expect_request("MESSAGE");
        assert_eq!(m.request_uri(), contact_of("bob", &bob), "{d}");
        assert_eq!(m.body(), "hello bob");
        assert_eq!(
            m.header(HeaderName::ContentType).as_deref(),
            Some("text/plain")
        );
        assert!(
            m.values(HeaderName::RecordRoute).is_empty(),
            "MESSAGE is not record-routed"
        );
        assert_eq!(m.values(HeaderName::Via).len(), 2);
        bob.answer(&m, &response_to(&m, 200, "OK", "bm", "", ""));
        let (ok, from) = alice.recv_within(Duration::from_secs(3)).expect("200");
        assert_eq!(
            (ok.status(), ok.method(), from),
            (Some(200), "MESSAGE".to_owned(), p.addr),
            "{d}: no 100 for a non-INVITE"
        );
        assert_eq!(ok.top_branch(), branch);
        // §17.2.2: the retransmission is answered from the server transaction.
        alice.send(&message, p.addr);
        let again = alice.expect_response(200, "MESSAGE");
        assert_eq!(again.text, ok.text, "{d}: the same 200 replayed");
        bob.expect_silence(Duration::from_millis(200));
    }
}

/// Bob has two phones: the INVITE reaches both; one answers, the other is
/// cancelled (200 to the CANCEL absorbed by sipedge, 487 ACKed by
/// sipedge); alice sees exactly one 200 and no 487. Then bob hangs up: his
/// BYE follows the Record-Route back to alice.
#[test]
fn fork_to_two_contacts_one_answers() {
    for d in drivers_with_xdp() {
        let data = TempDir::new("fork");
        let p = edge(d, &data, &[]);
        let (alice, desk, mobile) = (Ua::new(), Ua::new(), Ua::new());
        register_self(&p, &desk, "bob", 3600);
        let both = register_self(&p, &mobile, "bob", 3600);
        assert_eq!(
            both.values(HeaderName::Contact).len(),
            2,
            "{d}: the 200 lists both: {}",
            both.text
        );

        let mut leg = Leg::new(&alice, "alice", "bob");
        let branch = uniq("z9hG4bKfork");
        alice.send(&leg.initial("INVITE", &branch, SDP), p.addr);
        let (inv_desk, _) = desk.expect_request("INVITE");
        let (inv_mobile, _) = mobile.expect_request("INVITE");
        assert_eq!(inv_desk.request_uri(), contact_of("bob", &desk), "{d}");
        assert_eq!(inv_mobile.request_uri(), contact_of("bob", &mobile));
        assert_ne!(
            inv_desk.top_branch(),
            inv_mobile.top_branch(),
            "one client transaction per fork"
        );
        let (t_desk, t_mobile) = (uniq("desk"), uniq("mobile"));
        desk.answer(
            &inv_desk,
            &response_to(
                &inv_desk,
                180,
                "Ringing",
                &t_desk,
                &callee_contact("bob", &desk),
                "",
            ),
        );
        mobile.answer(
            &inv_mobile,
            &response_to(
                &inv_mobile,
                180,
                "Ringing",
                &t_mobile,
                &callee_contact("bob", &mobile),
                "",
            ),
        );
        alice.expect_response(180, "INVITE");
        alice.expect_response(180, "INVITE");

        // The desk phone answers.
        desk.answer(
            &inv_desk,
            &response_to(
                &inv_desk,
                200,
                "OK",
                &t_desk,
                &callee_contact("bob", &desk),
                SDP,
            ),
        );
        let ok = alice.expect_response(200, "INVITE");
        assert_eq!(ok.to_tag().as_deref(), Some(t_desk.as_str()));

        // The mobile gets a CANCEL for its INVITE, answers 200 and 487, and
        // sipedge ACKs the 487 hop by hop.
        let (cancel, _) = mobile.expect_request("CANCEL");
        assert_eq!(
            cancel.top_branch(),
            inv_mobile.top_branch(),
            "{d}: the CANCEL matches the INVITE"
        );
        assert_eq!(cancel.request_uri(), inv_mobile.request_uri());
        mobile.answer(&cancel, &response_to(&cancel, 200, "OK", &t_mobile, "", ""));
        mobile.answer(
            &inv_mobile,
            &response_to(&inv_mobile, 487, "Request Terminated", &t_mobile, "", ""),
        );
        let (ack487, _) = mobile.expect_request("ACK");
        assert_eq!(
            ack487.top_branch(),
            inv_mobile.top_branch(),
            "{d}: hop-by-hop ACK of the 487"
        );

        // Alice completes the call with the desk phone.
        leg.established(&ok);
        alice.send(&leg.in_dialog("ACK", 1), leg.next_hop());
        let (ack, _) = desk.expect_request("ACK");
        assert_eq!(ack.request_uri(), contact_of("bob", &desk));

        // Alice saw exactly one final response: no second 200, no 487, and
        // not the 200 of sipedge's CANCEL.
        let rest = alice.collect(Duration::from_millis(400));
        let finals: Vec<&str> = rest
            .iter()
            .filter(|m| m.status().is_some_and(|c| c >= 200))
            .map(Msg::first_line)
            .collect();
        assert!(finals.is_empty(), "{d}: alice got more finals: {finals:?}");
        // Neither phone hears anything more (retransmissions aside, none are due).
        let extra: Vec<String> = mobile
            .collect(Duration::from_millis(100))
            .iter()
            .map(|m| m.first_line().to_owned())
            .collect();
        assert!(
            extra.iter().all(|l| l.starts_with("ACK ")),
            "{d}: {extra:?}"
        );

        // The callee hangs up: its BYE goes to alice's Contact along the
        // route set it learnt from the INVITE's Record-Route (§12.1.1).
        let routes: String = inv_desk
            .values(HeaderName::RecordRoute)
            .iter()
            .map(|r| format!("Route: {r}\r\n"))
            .collect();
        let bye = format!(
            "BYE sip:caller@{a} SIP/2.0\r\nVia: SIP/2.0/UDP {b};branch={br};rport\r\nMax-Forwards: 70\r\n{routes}\
From: {to}\r\nTo: {from}\r\nCall-ID: {cid}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
            a = alice.addr,
            b = desk.addr,
            br = uniq("z9hG4bKbye"),
            to = ok.header(HeaderName::To).unwrap(),
            from = inv_desk.header(HeaderName::From).unwrap(),
            cid = leg.call_id,
        );
        desk.send(&bye, p.addr);
        let (bye, _) = alice.expect_request("BYE");
        assert_eq!(
            bye.request_uri(),
            format!("sip:caller@{}", alice.addr),
            "{d}"
        );
        assert!(bye.values(HeaderName::Route).is_empty(), "{}", bye.text);
        assert_eq!(bye.to_tag(), Some(leg.from_tag.clone()));
        alice.answer(&bye, &response_to(&bye, 200, "OK", "", "", ""));
        let done = desk.expect_response(200, "BYE");
        assert_eq!(done.values(HeaderName::Via).len(), 1, "{d}");
    }
}

/// Alice gives up after the 180: her CANCEL gets a 200 from sipedge, bob
/// gets a CANCEL and answers 200 and 487, alice gets the 487 and ACKs it
/// (absorbed by sipedge: bob only sees sipedge's own ACK).
#[test]
fn cancel_after_ringing() {
    for d in drivers_with_xdp() {
        let data = TempDir::new("cancel");
        let p = edge(d, &data, &[]);
        let (alice, bob) = (Ua::new(), Ua::new());
        register_self(&p, &bob, "bob", 3600);
        let leg = Leg::new(&alice, "alice", "bob");
        let branch = uniq("z9hG4bKc");
        alice.send(&leg.initial("INVITE", &branch, SDP), p.addr);
        let (inv, _) = bob.expect_request("INVITE");
        let tag = uniq("bt");
        bob.answer(
            &inv,
            &response_to(&inv, 180, "Ringing", &tag, &callee_contact("bob", &bob), ""),
        );
        alice.expect_response(180, "INVITE");

        alice.send(&leg.cancel(&branch), p.addr);
        let c200 = alice.expect_response(200, "CANCEL");
        assert_eq!(c200.top_branch(), branch, "{d}");
        let (cancel, _) = bob.expect_request("CANCEL");
        assert_eq!(cancel.top_branch(), inv.top_branch(), "{d}");
        assert_eq!(cancel.cseq_number(), inv.cseq_number());
        bob.answer(&cancel, &response_to(&cancel, 200, "OK", &tag, "", ""));
        bob.answer(
            &inv,
            &response_to(&inv, 487, "Request Terminated", &tag, "", ""),
        );
        let (ack, _) = bob.expect_request("ACK");
        assert_eq!(
            ack.top_branch(),
            inv.top_branch(),
            "{d}: sipedge ACKs the 487 itself"
        );

        let r487 = alice.expect_response(487, "INVITE");
        assert_eq!(r487.top_branch(), branch);
        alice.send(&leg.ack_failure(&branch, &r487), p.addr);
        // The CANCEL's 200 from bob is not passed up and alice's ACK is absorbed.
        let up: Vec<String> = alice
            .collect(Duration::from_millis(300))
            .iter()
            .map(|m| m.first_line().to_owned())
            .collect();
        assert!(up.is_empty(), "{d}: alice got {up:?}");
        bob.expect_silence(Duration::from_millis(100));
    }
}

/// What callers and registering UAs are told when something is wrong: 404
/// for a user nobody registered, 480 for one whose binding was removed
/// (Expires: 0) or wiped (`Contact: *`), 423 + Min-Expires for too short an
/// expiry; a fetch lists the current bindings.
#[test]
fn unknown_unavailable_and_registrar_errors() {
    for d in drivers_with_xdp() {
        let data = TempDir::new("errors");
        let p = edge(d, &data, &[]);
        let (alice, carol, dave1, dave2) = (Ua::new(), Ua::new(), Ua::new(), Ua::new());

        // Nobody ever registered "nobody": 404 (no 100 Trying first).
        let leg = Leg::new(&alice, "alice", "nobody");
        let branch = uniq("z9hG4bKu");
        alice.send(&leg.initial("INVITE", &branch, SDP), p.addr);
        let (r, _) = alice.recv_within(Duration::from_secs(3)).expect("404");
        assert_eq!(
            (r.status(), r.method()),
            (Some(404), "INVITE".to_owned()),
            "{d}: {}",
            r.text
        );
        assert!(r.to_tag().is_some());
        alice.send(&leg.ack_failure(&branch, &r), p.addr);
        // A MESSAGE to that user is kept for when it registers (RFC 3428
        // store and forward, the presence issue): 202.
        alice.send(
            &leg.initial("MESSAGE", &uniq("z9hG4bKu"), "anyone?"),
            p.addr,
        );
        alice.expect_response(202, "MESSAGE");

        // Carol registers, then removes her binding: 480 from then on.
        register_self(&p, &carol, "carol", 3600);
        let contact = format!("<{}>", contact_of("carol", &carol));
        carol.send(
            &register(&carol, "carol", &uniq("reg-"), 1, Some(&contact), Some(0)),
            p.addr,
        );
        let gone = carol.expect_response(200, "REGISTER");
        assert!(
            gone.values(HeaderName::Contact).is_empty(),
            "{d}: no binding left: {}",
            gone.text
        );
        let leg = Leg::new(&alice, "alice", "carol");
        alice.send(&leg.initial("INVITE", &uniq("z9hG4bKu"), SDP), p.addr);
        let r = alice.expect_response(480, "INVITE");
        assert!(r.to_tag().is_some(), "{d}");
        carol.expect_silence(Duration::from_millis(100));

        // Too brief: 423 with the minimum (60 s by default), nothing bound.
        carol.send(
            &register(&carol, "carol", &uniq("reg-"), 1, Some(&contact), Some(30)),
            p.addr,
        );
        let brief = carol.expect_response(423, "REGISTER");
        assert_eq!(
            brief.header(HeaderName::MinExpires).as_deref(),
            Some("60"),
            "{d}: {}",
            brief.text
        );
        let with_param = format!("{contact};expires=5");
        carol.send(
            &register(&carol, "carol", &uniq("reg-"), 1, Some(&with_param), None),
            p.addr,
        );
        assert_eq!(
            carol
                .expect_response(423, "REGISTER")
                .header(HeaderName::MinExpires)
                .as_deref(),
            Some("60")
        );
        alice.send(&leg.initial("INVITE", &uniq("z9hG4bKu"), SDP), p.addr);
        alice.expect_response(480, "INVITE");

        // Dave's two phones, listed by a fetch, then `Contact: *` removes both.
        register_self(&p, &dave1, "dave", 3600);
        register_self(&p, &dave2, "dave", 1800);
        dave1.send(
            &register(&dave1, "dave", &uniq("reg-"), 1, None, None),
            p.addr,
        );
        let fetch = dave1.expect_response(200, "REGISTER");
        let listed = fetch.values(HeaderName::Contact);
        assert_eq!(listed.len(), 2, "{d}: {}", fetch.text);
        for (ua, e) in [(&dave1, 3600), (&dave2, 1800)] {
            let mine = format!("<{}>", contact_of("dave", ua));
            let c = listed
                .iter()
                .find(|c| c.starts_with(&mine))
                .unwrap_or_else(|| panic!("{d}: {mine} not in {listed:?}"));
            assert!(expires_param(c) <= e && expires_param(c) + 2 >= e, "{c}");
        }
        let wipe_id = uniq("reg-");
        dave1.send(
            &register(&dave1, "dave", &wipe_id, 1, Some("*"), Some(0)),
            p.addr,
        );
        let wiped = dave1.expect_response(200, "REGISTER");
        assert!(
            wiped.values(HeaderName::Contact).is_empty(),
            "{d}: {}",
            wiped.text
        );
        // `*` with a non-zero expiry is malformed (§10.3 step 6).
        dave1.send(
            &register(&dave1, "dave", &uniq("reg-"), 1, Some("*"), Some(60)),
            p.addr,
        );
        dave1.expect_response(400, "REGISTER");
        let leg = Leg::new(&alice, "alice", "dave");
        alice.send(&leg.initial("INVITE", &uniq("z9hG4bKu"), SDP), p.addr);
        alice.expect_response(480, "INVITE");
        for ua in [&dave1, &dave2] {
            assert!(
                ua.collect(Duration::from_millis(100))
                    .iter()
                    .all(|m| m.method() != "INVITE"),
                "{d}: no INVITE reaches a removed binding"
            );
        }
    }
}

/// `kill -9` and restart on the same data directory: bindings answered 200
/// before the crash (one of them the moment before) still route requests;
/// bindings that expired — while sipedge ran, or while it was down — are not
/// resurrected.
#[test]
fn bindings_survive_kill_9_and_expired_ones_stay_gone() {
    // The drivers run side by side: most of this test is waiting for expiries.
    std::thread::scope(|s| {
        for d in drivers_with_xdp() {
            s.spawn(move || restart_keeps_bindings(d));
        }
    });
}

fn restart_keeps_bindings(d: &str) {
    let data = TempDir::new("restart");
    let cfg = data.write("sipedge.toml", "[registrar]\nmin_expires = 1\n");
    let store = TempDir::new("restart-store");
    let args = ["--shards", "2", "--config", cfg.as_str()];
    let mut p = edge(d, &store, &args);
    let (alice, bob, carol, eve, frank) = (Ua::new(), Ua::new(), Ua::new(), Ua::new(), Ua::new());
    register_self(&p, &bob, "bob", 3600);
    register_self(&p, &eve, "eve", 1);
    // Eve's binding expires while sipedge runs (its removal is logged too).
    std::thread::sleep(Duration::from_millis(1500));
    register_self(&p, &frank, "frank", 2);
    // Carol's 200 arrives right before the crash: it must be durable.
    register_self(&p, &carol, "carol", 3600);
    p.kill9();
    // Frank's expires while sipedge is down.
    std::thread::sleep(Duration::from_millis(2200));

    let mut p = edge(d, &store, &args);
    let loaded = p
        .wait_log("binding(s) loaded", Duration::from_secs(5))
        .unwrap_or_default();
    assert!(
        loaded.contains(" 2 binding(s) loaded"),
        "{d}: only bob's and carol's are live: {loaded}"
    );
    // Bob is reached at his contact, through the restarted edge.
    call_and_hang_up(d, &p, &alice, &bob);
    // A fetch shows bob's binding with its remaining time.
    bob.send(&register(&bob, "bob", &uniq("reg-"), 1, None, None), p.addr);
    let fetch = bob.expect_response(200, "REGISTER");
    let listed = fetch.values(HeaderName::Contact);
    assert_eq!(listed.len(), 1, "{d}: {}", fetch.text);
    assert!(listed[0].starts_with(&format!("<{}>", contact_of("bob", &bob))));
    let left = expires_param(&listed[0]);
    assert!((3590..=3600).contains(&left), "{d}: {left}");
    // Carol, registered the moment before the kill, is reached too.
    let leg = Leg::new(&alice, "alice", "carol");
    alice.send(
        &leg.initial("MESSAGE", &uniq("z9hG4bKr"), "still there?"),
        p.addr,
    );
    let (m, _) = carol.expect_request("MESSAGE");
    assert_eq!(m.request_uri(), contact_of("carol", &carol), "{d}");
    carol.answer(&m, &response_to(&m, 200, "OK", "c", "", ""));
    alice.expect_response(200, "MESSAGE");
    // Eve and frank: known users without bindings (480), never reached.
    for user in ["eve", "frank"] {
        let leg = Leg::new(&alice, "alice", user);
        alice.send(&leg.initial("INVITE", &uniq("z9hG4bKr"), SDP), p.addr);
        let (r, _, _) = alice.expect("a final response", |m| m.status().is_some_and(|c| c >= 200));
        assert!(
            matches!(r.status(), Some(480 | 404)),
            "{d}: {user}: {}",
            r.text
        );
    }
    for ua in [&eve, &frank] {
        assert!(
            ua.collect(Duration::from_millis(100))
                .iter()
                .all(|m| m.method() != "INVITE"),
            "{d}: an expired binding was resurrected"
        );
    }
}

/// Phones configured with the edge as their outbound proxy (REGISTER with
/// `Route: <sip:edge;lr>`) or with the edge's address as the registrar
/// (`REGISTER sip:127.0.0.1:port`) register too, and reach each other.
#[test]
fn register_through_the_edge_as_outbound_proxy_or_at_its_address() {
    for d in drivers_with_xdp() {
        let data = TempDir::new("obp");
        let p = edge(d, &data, &["--shards", "2"]);
        let (alice, bob) = (Ua::new(), Ua::new());
        let plain = |ua: &Ua, user: &str| {
            let contact = format!("<{}>", contact_of(user, ua));
            register(ua, user, &uniq("reg-"), 1, Some(&contact), Some(600))
        };
        let routed = plain(&alice, "alice").replacen(
            "Max-Forwards: 70\r\n",
            &format!("Route: <sip:{};lr>\r\nMax-Forwards: 70\r\n", p.addr),
            1,
        );
        let to_ip = plain(&bob, "bob").replacen(
            &format!("REGISTER sip:{DOMAIN} "),
            &format!("REGISTER sip:{} ", p.addr),
            1,
        );
        for (ua, user, req) in [(&alice, "alice", routed), (&bob, "bob", to_ip)] {
            ua.send(&req, p.addr);
            let ok = ua.expect_response(200, "REGISTER");
            let listed = ok.values(HeaderName::Contact);
            assert!(
                listed
                    .iter()
                    .any(|c| c.starts_with(&format!("<{}>", contact_of(user, ua)))),
                "{d}: {}",
                ok.text
            );
        }
        let leg = Leg::new(&alice, "alice", "bob");
        alice.send(
            &leg.initial("MESSAGE", &uniq("z9hG4bKm"), "via the edge"),
            p.addr,
        );
        let (m, _) = bob.expect_request("MESSAGE");
        assert_eq!(m.body(), "via the edge", "{d}");
        bob.answer(&m, &response_to(&m, 200, "OK", "b", "", ""));
        alice.expect_response(200, "MESSAGE");
        let leg = Leg::new(&bob, "bob", "alice");
        bob.send(
            &leg.initial("MESSAGE", &uniq("z9hG4bKm"), "and back"),
            p.addr,
        );
        let (m, _) = alice.expect_request("MESSAGE");
        assert_eq!(m.request_uri(), contact_of("alice", &alice), "{d}");
        alice.answer(&m, &response_to(&m, 200, "OK", "a", "", ""));
        bob.expect_response(200, "MESSAGE");
    }
}
