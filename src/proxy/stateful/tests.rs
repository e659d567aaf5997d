//! Scenario tests of the stateful proxy over in-memory messages.

use super::*;
use crate::proxy::testutil::identity;
use crate::sip::{parse, HeaderIndex};
use crate::time::Duration;

/// A location with fixed contacts for `bob@example.test`, and `carol` known with none.
struct FixedLocation(Vec<SocketAddr>);

impl Location for FixedLocation {
    fn lookup(&self, aor: &[u8], _wall: u64, out: &mut Targets) -> Found {
        match aor {
            b"bob@example.test" => {
                for a in &self.0 {
                    out.push(format!("sip:bob@{a}").as_bytes(), b"", Some(*a), 1000);
                }
                Found::Contacts
            }
            b"carol@example.test" => Found::NoBindings,
            _ => Found::Unknown,
        }
    }
}

struct H {
    p: Stateful<FixedLocation>,
    out: Outbox,
    now: Instant,
}

const UAC: &str = "10.0.0.1:5062";
const UPSTREAM: &str = "192.0.2.50:5060";

impl H {
    fn new(contacts: &[&str]) -> Self {
        let cfg = Config {
            upstream: Some(UPSTREAM.parse().unwrap()),
            ..Config::default()
        };
        let loc = FixedLocation(contacts.iter().map(|c| c.parse().unwrap()).collect());
        Self {
            p: Stateful::new(identity(), cfg, loc, NoService),
            out: Outbox::new(1 << 20, 64),
            now: Instant::ZERO,
        }
    }

    fn feed(&mut self, data: &str, src: &str) -> Vec<(String, String)> {
        self.out.clear();
        self.p.handle_message(
            self.now,
            data.as_bytes(),
            &Peer::udp(src.parse().unwrap(), SocketId(0)),
            &mut self.out,
        );
        self.drain()
    }

    fn advance(&mut self, d: Duration) -> Vec<(String, String)> {
        self.now += d;
        self.out.clear();
        self.p.handle_timeout(self.now, &mut self.out);
        self.drain()
    }

    fn drain(&self) -> Vec<(String, String)> {
        self.out
            .items()
            .iter()
            .map(|t| {
                (
                    t.peer.remote.to_string(),
                    String::from_utf8_lossy(self.out.bytes(t)).into_owned(),
                )
            })
            .collect()
    }
}

fn invite(ruri: &str, branch: &str) -> String {
    format!(
        "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {UAC};branch={branch}\r\nMax-Forwards: 70\r\nTo: <{ruri}>\r\nFrom: <sip:alice@example.test>;tag=a1\r\nCall-ID: {branch}@c\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{UAC}>\r\nContent-Length: 0\r\n\r\n"
    )
}

fn status(m: &str) -> u16 {
    let mut idx = HeaderIndex::default();
    parse(m.as_bytes(), &mut idx).unwrap().status().unwrap()
}

fn method(m: &str) -> String {
    let mut idx = HeaderIndex::default();
    String::from_utf8_lossy(parse(m.as_bytes(), &mut idx).unwrap().method_bytes()).into_owned()
}

/// The downstream response to a forwarded request.
fn respond(req: &str, code: u16, tag: &str) -> String {
    let mut idx = HeaderIndex::default();
    let m = parse(req.as_bytes(), &mut idx).unwrap();
    let mut out = vec![0u8; 4096];
    let n = sip::response(
        &m,
        &ResponseSpec {
            to_tag: Some(tag.as_bytes()),
            ..ResponseSpec::new(code, "X")
        },
        &mut out,
    )
    .unwrap();
    String::from_utf8(out[..n].to_vec()).unwrap()
}

#[test]
fn forwards_a_call_and_absorbs_retransmissions() {
    let mut h = H::new(&["192.0.2.4:5060"]);
    let inv = invite("sip:bob@example.test", "z9hG4bKc1");
    let out = h.feed(&inv, UAC);
    assert_eq!(out.len(), 2, "{out:#?}");
    assert_eq!((out[0].0.as_str(), status(&out[0].1)), (UAC, 100));
    let (dest, fwd) = (&out[1].0, out[1].1.clone());
    assert_eq!(dest, "192.0.2.4:5060");
    assert!(
        fwd.starts_with("INVITE sip:bob@192.0.2.4:5060 SIP/2.0\r\n"),
        "{fwd}"
    );
    assert!(fwd.contains("Record-Route: <sip:127.0.0.1:5060;lr>\r\n"));
    // The INVITE again: the 100 is replayed; nothing goes downstream.
    let out = h.feed(&inv, UAC);
    assert_eq!(out.len(), 1);
    assert_eq!(status(&out[0].1), 100);
    // 180 and 200 go up; the 200's retransmission too (RFC 6026).
    for code in [180, 200, 200] {
        let out = h.feed(&respond(&fwd, code, "b1"), "192.0.2.4:5060");
        assert_eq!(out.len(), 1, "{code}");
        assert_eq!((out[0].0.as_str(), status(&out[0].1)), (UAC, code));
    }
    // INVITE retransmission after the 2xx: absorbed.
    assert!(h.feed(&inv, UAC).is_empty());
    assert_eq!(h.p.live_transactions(), 1);
    // After Timer L / M the context is gone.
    h.advance(Duration::from_secs(33));
    assert_eq!(h.p.live_transactions(), 0);
}

#[test]
fn failure_is_acked_downstream_and_forwarded_once() {
    let mut h = H::new(&["192.0.2.4:5060"]);
    let out = h.feed(&invite("sip:bob@example.test", "z9hG4bKc2"), UAC);
    let fwd = out[1].1.clone();
    let busy = respond(&fwd, 486, "b2");
    let out = h.feed(&busy, "192.0.2.4:5060");
    assert_eq!(out.len(), 2, "{out:#?}");
    assert_eq!(
        (out[0].0.as_str(), method(&out[0].1)),
        ("192.0.2.4:5060", "ACK".to_owned())
    );
    assert_eq!((out[1].0.as_str(), status(&out[1].1)), (UAC, 486));
    let out = h.feed(&busy, "192.0.2.4:5060");
    assert_eq!(
        out.len(),
        1,
        "a retransmitted final is ACKed again, not forwarded"
    );
    assert_eq!(method(&out[0].1), "ACK");
    // Upstream never ACKs: Timer G retransmits the 486.
    let out = h.advance(Duration::from_millis(500));
    assert_eq!(status(&out[0].1), 486);
}

#[test]
fn times_out_with_408_after_retransmitting() {
    let mut h = H::new(&["192.0.2.4:5060"]);
    h.feed(&invite("sip:bob@example.test", "z9hG4bKc3"), UAC);
    let mut retrans = 0;
    let mut finals = Vec::new();
    for _ in 0..70 {
        for (_, m) in h.advance(Duration::from_millis(500)) {
            if m.starts_with("INVITE") {
                retrans += 1;
            } else {
                finals.push(status(&m));
            }
        }
    }
    assert_eq!(retrans, 6, "Timer A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s");
    assert_eq!(finals.first(), Some(&408));
}

#[test]
fn cancel_reaches_the_fork_and_487_comes_back() {
    let mut h = H::new(&["192.0.2.4:5060"]);
    let inv = invite("sip:bob@example.test", "z9hG4bKc4");
    let fwd = h.feed(&inv, UAC)[1].1.clone();
    let cancel = inv
        .replace(
            "INVITE sip:bob@example.test SIP/2.0",
            "CANCEL sip:bob@example.test SIP/2.0",
        )
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    // Before any provisional: 200 to the CANCEL; the downstream CANCEL waits for a 1xx (§9.1).
    let out = h.feed(&cancel, UAC);
    assert_eq!(out.len(), 1);
    assert_eq!(status(&out[0].1), 200);
    let out = h.feed(&respond(&fwd, 180, "b4"), "192.0.2.4:5060");
    assert_eq!(out.len(), 1);
    assert_eq!(method(&out[0].1), "CANCEL");
    let down_cancel = out[0].1.clone();
    assert!(
        h.feed(&respond(&down_cancel, 200, "b4"), "192.0.2.4:5060")
            .is_empty(),
        "200 to our CANCEL absorbed"
    );
    let out = h.feed(&respond(&fwd, 487, "b4"), "192.0.2.4:5060");
    let codes: Vec<String> = out
        .iter()
        .map(|(_, m)| m.lines().next().unwrap().to_owned())
        .collect();
    assert_eq!(
        codes,
        vec![
            "ACK sip:bob@192.0.2.4:5060 SIP/2.0".to_owned(),
            "SIP/2.0 487 X".to_owned()
        ]
    );
}

/// Regression (found by the simulations): a branch that only ever
/// answers 100 Trying was never CANCELled and never timed out, so its
/// context and the caller's call hung forever.
#[test]
fn a_branch_that_only_says_trying_is_cancelled_and_timed_out() {
    let mut h = H::new(&["192.0.2.4:5060"]);
    let inv = invite("sip:bob@example.test", "z9hG4bKc11");
    let fwd = h.feed(&inv, UAC)[1].1.clone();
    assert!(
        h.feed(&respond(&fwd, 100, "b"), "192.0.2.4:5060")
            .is_empty(),
        "100 is not forwarded"
    );
    let cancel = inv
        .replace(
            "INVITE sip:bob@example.test SIP/2.0",
            "CANCEL sip:bob@example.test SIP/2.0",
        )
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    let out = h.feed(&cancel, UAC);
    let lines: Vec<&str> = out.iter().map(|(_, m)| m.lines().next().unwrap()).collect();
    assert_eq!(
        lines,
        vec!["SIP/2.0 200 OK", "CANCEL sip:bob@192.0.2.4:5060 SIP/2.0"],
        "100 is a provisional response (§9.1)"
    );

    // Nobody cancels: Timer C (from the forward, §16.6 step 11) does.
    let mut h = H::new(&["192.0.2.4:5060"]);
    let fwd = h.feed(&invite("sip:bob@example.test", "z9hG4bKc12"), UAC)[1]
        .1
        .clone();
    h.feed(&respond(&fwd, 100, "b"), "192.0.2.4:5060");
    assert!(h.advance(Duration::from_secs(179)).is_empty());
    let out = h.advance(Duration::from_secs(2));
    assert_eq!(out.len(), 1);
    assert_eq!(method(&out[0].1), "CANCEL");

    // No response at all and a short Timer C: the CANCEL waits for a
    // provisional response (§9.1); Timer B ends the branch with a 408.
    let mut h = H::new(&["192.0.2.4:5060"]);
    h.p.cfg.timers.timer_c = Duration::from_secs(10);
    h.feed(&invite("sip:bob@example.test", "z9hG4bKc13"), UAC);
    let mut sent = Vec::new();
    for _ in 0..66 {
        sent.extend(
            h.advance(Duration::from_millis(500))
                .into_iter()
                .map(|(_, m)| m.lines().next().unwrap().to_owned()),
        );
    }
    assert!(!sent.iter().any(|l| l.starts_with("CANCEL")), "{sent:?}");
    let finals: Vec<&String> = sent.iter().filter(|l| l.starts_with("SIP/2.0")).collect();
    assert!(
        !finals.is_empty() && finals.iter().all(|l| *l == "SIP/2.0 408 Request Timeout"),
        "{finals:?} (Timer G resends it)"
    );
}

/// Regression (found by the simulations): a 2xx on a branch whose client
/// transaction had ended (here by Timer B) was dropped while the context
/// lived; §16.7 step 5 sends every 2xx to an INVITE up.
#[test]
fn a_2xx_after_the_branch_timed_out_is_forwarded() {
    let mut h = H::new(&["192.0.2.4:5060"]);
    let fwd = h.feed(&invite("sip:bob@example.test", "z9hG4bKc14"), UAC)[1]
        .1
        .clone();
    let out: Vec<u16> = (0..65)
        .flat_map(|_| h.advance(Duration::from_millis(500)))
        .filter(|(_, m)| m.starts_with("SIP/2.0"))
        .map(|(_, m)| status(&m))
        .collect();
    assert!(
        !out.is_empty() && out.iter().all(|&c| c == 408),
        "{out:?} (Timer G resends it)"
    );
    assert_eq!(h.p.live_transactions(), 1, "waiting for the ACK of the 408");
    let out = h.feed(&respond(&fwd, 200, "late"), "192.0.2.4:5060");
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!((out[0].0.as_str(), status(&out[0].1)), (UAC, 200));
}

#[test]
fn forks_and_picks_the_best_response() {
    let mut h = H::new(&["192.0.2.4:5060", "192.0.2.5:5060", "192.0.2.6:5060"]);
    let out = h.feed(&invite("sip:bob@example.test", "z9hG4bKc5"), UAC);
    assert_eq!(out.len(), 4, "100 + three forks");
    let forks: Vec<String> = out[1..].iter().map(|(_, m)| m.clone()).collect();
    // 404, 486: held. 302 is best (lowest class) once all are final.
    assert_eq!(
        h.feed(&respond(&forks[0], 404, "x"), "192.0.2.4:5060")
            .len(),
        1,
        "just the ACK"
    );
    assert_eq!(
        h.feed(&respond(&forks[1], 486, "y"), "192.0.2.5:5060")
            .len(),
        1
    );
    let out = h.feed(&respond(&forks[2], 302, "z"), "192.0.2.6:5060");
    assert_eq!(out.len(), 2);
    assert_eq!(status(&out[1].1), 302);
}

#[test]
fn a_6xx_cancels_the_others_and_wins() {
    let mut h = H::new(&["192.0.2.4:5060", "192.0.2.5:5060"]);
    let out = h.feed(&invite("sip:bob@example.test", "z9hG4bKc6"), UAC);
    let (f0, f1) = (out[1].1.clone(), out[2].1.clone());
    h.feed(&respond(&f1, 180, "y"), "192.0.2.5:5060");
    let out = h.feed(&respond(&f0, 603, "x"), "192.0.2.4:5060");
    let methods: Vec<String> = out.iter().map(|(_, m)| method(m)).collect();
    assert_eq!(methods, vec!["ACK", "CANCEL"]);
    let out = h.feed(&respond(&f1, 487, "y"), "192.0.2.5:5060");
    assert_eq!(status(&out[1].1), 603);
}

#[test]
fn strict_routers_are_handled_both_ways() {
    let mut h = H::new(&[]);
    // §16.4: a strict router before us put our Record-Route URI in the
    // Request-URI; the real target is the last Route value.
    let bye = format!(
        "BYE sip:127.0.0.1:5060;lr SIP/2.0\r\nVia: SIP/2.0/UDP {UAC};branch=z9hG4bKs1\r\nMax-Forwards: 70\r\n\
Route: <sip:bob@192.0.2.4:5062>\r\nTo: <sip:bob@x>;tag=b\r\nFrom: <sip:a@x>;tag=a\r\nCall-ID: s1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let out = h.feed(&bye, UAC);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].0, "192.0.2.4:5062");
    assert!(
        out[0]
            .1
            .starts_with("BYE sip:bob@192.0.2.4:5062 SIP/2.0\r\n"),
        "{}",
        out[0].1
    );
    assert!(
        !out[0].1.contains("\r\nRoute:"),
        "the last Route value became the Request-URI"
    );
    // §16.6 step 6: the next hop after us is a strict router (no lr).
    let bye = format!(
        "BYE sip:bob@192.0.2.4:5062 SIP/2.0\r\nVia: SIP/2.0/UDP {UAC};branch=z9hG4bKs2\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>, <sip:192.0.2.31:5070>\r\nTo: <sip:bob@x>;tag=b\r\nFrom: <sip:a@x>;tag=a\r\nCall-ID: s2\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let out = h.feed(&bye, UAC);
    assert_eq!(out[0].0, "192.0.2.31:5070");
    let mut idx = HeaderIndex::default();
    let m = parse(out[0].1.as_bytes(), &mut idx).unwrap();
    assert_eq!(m.request_uri_bytes(), b"sip:192.0.2.31:5070");
    let routes: Vec<&[u8]> = m.values(HeaderName::Route).collect();
    assert_eq!(routes, vec![&b"<sip:bob@192.0.2.4:5062>"[..]]);
}

#[test]
fn lookup_outcomes_and_table_limit() {
    let mut h = H::new(&[]);
    let out = h.feed(&invite("sip:nobody@example.test", "z9hG4bKc7"), UAC);
    assert_eq!(status(&out[0].1), 404);
    let out = h.feed(&invite("sip:carol@example.test", "z9hG4bKc8"), UAC);
    assert_eq!(status(&out[0].1), 480);
    let mut h = H::new(&["192.0.2.4:5060"]);
    h.p.cfg.max_transactions = 1;
    h.feed(&invite("sip:bob@example.test", "z9hG4bKc9"), UAC);
    let out = h.feed(&invite("sip:bob@example.test", "z9hG4bKc10"), UAC);
    assert_eq!(status(&out[0].1), 503);
    assert!(out[0].1.contains("Retry-After: 5\r\n"));
}

/// A registrar that answers every REGISTER 200 and counts them.
#[derive(Default)]
struct CountingRegistry(usize);

impl LocalService for CountingRegistry {
    fn serves(&self, method: Method) -> bool {
        method == Method::Register
    }

    fn owner(&self, _: &Message<'_>, _: &Essentials<'_>, _: Option<&AorKey>) -> Owner {
        Owner::Here
    }

    fn handle_request(
        &mut self,
        _: Instant,
        _: u64,
        msg: &Message<'_>,
        _: &Essentials<'_>,
        _: Option<&AorKey>,
        _: &Peer,
        reply: &mut [u8],
    ) -> Option<(usize, u16)> {
        self.0 += 1;
        sip::response(msg, &ResponseSpec::new(200, "OK"), reply)
            .ok()
            .map(|n| (n, 200))
    }
}

/// Store appends complete turns later, in order: each completion
/// releases its own turn's answers (200 on success, 503 with Retry-After on failure)
/// and no other.
#[test]
fn held_answers_are_released_batch_by_batch() {
    let mut p = Stateful::new(
        identity(),
        Config::default(),
        FixedLocation(Vec::new()),
        CountingRegistry::default(),
    );
    let mut out = Outbox::new(1 << 20, 64);
    let mut batch = Vec::new();
    let reg = |i: usize| {
        format!(
            "REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP {UAC};branch=z9hG4bKfifo{i}\r\nMax-Forwards: 70\r\n\
To: <sip:a{i}@example.test>\r\nFrom: <sip:a{i}@example.test>;tag=r\r\nCall-ID: fifo{i}\r\nCSeq: 1 REGISTER\r\n\
Contact: <sip:a@{UAC}>\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let src = Peer::udp(UAC.parse().unwrap(), SocketId(0));
    assert!(!p.poll_persist(&mut batch), "nothing held, no batch");
    // Two turns, each with one REGISTER, cut before either completes.
    for i in 0..2 {
        p.handle_message(Instant::ZERO, reg(i).as_bytes(), &src, &mut out);
        assert!(p.poll_persist(&mut batch));
    }
    assert!(
        out.is_empty(),
        "nothing answered before the store completes"
    );
    p.persisted(Instant::ZERO, true, &mut out);
    let first: Vec<String> = out
        .items()
        .iter()
        .map(|t| String::from_utf8_lossy(out.bytes(t)).into_owned())
        .collect();
    assert_eq!(first.len(), 1, "{first:#?}");
    assert_eq!(status(&first[0]), 200);
    assert!(first[0].contains("Call-ID: fifo0"), "{first:#?}");
    out.clear();
    p.persisted(Instant::ZERO, false, &mut out);
    let second: Vec<String> = out
        .items()
        .iter()
        .map(|t| String::from_utf8_lossy(out.bytes(t)).into_owned())
        .collect();
    assert_eq!(second.len(), 1, "{second:#?}");
    assert_eq!(status(&second[0]), 503);
    assert!(second[0].contains("Retry-After: 5\r\n"), "{}", second[0]);
    assert!(second[0].contains("Call-ID: fifo1"), "{second:#?}");
}

/// Which REGISTERs the registrar gets: for a served domain or for this
/// proxy's own address (with a served AoR), also through us as the
/// outbound proxy (a Route naming only us: regression, those went
/// upstream and got 404); the others are proxied.
#[test]
fn register_for_us_reaches_the_registrar_also_through_our_route() {
    let cases = [
        ("sip:example.test", "", "alice@example.test", true),
        (
            "sip:example.test",
            "Route: <sip:127.0.0.1:5060;lr>\r\n",
            "alice@example.test",
            true,
        ),
        ("sip:127.0.0.1:5060", "", "alice@example.test", true),
        (
            "sip:127.0.0.1",
            "Route: <sip:127.0.0.1;lr>\r\n",
            "alice@example.test",
            true,
        ),
        (
            "sip:example.test",
            "Route: <sip:192.0.2.30:5060;lr>\r\n",
            "alice@example.test",
            false,
        ),
        (
            "sip:example.test",
            "Route: <sip:127.0.0.1:5060;lr>, <sip:192.0.2.30:5060;lr>\r\n",
            "alice@example.test",
            false,
        ),
        ("sip:other.example", "", "alice@other.example", false),
        ("sip:127.0.0.1:5060", "", "alice@other.example", false),
    ];
    for (i, (ruri, route, aor, registrar)) in cases.into_iter().enumerate() {
        let cfg = Config {
            upstream: Some(UPSTREAM.parse().unwrap()),
            ..Config::default()
        };
        let mut p = Stateful::new(
            identity(),
            cfg,
            FixedLocation(Vec::new()),
            CountingRegistry::default(),
        );
        let mut out = Outbox::new(1 << 20, 64);
        let reg = format!(
            "REGISTER {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {UAC};branch=z9hG4bKreg{i}\r\n{route}Max-Forwards: 70\r\n\
To: <sip:{aor}>\r\nFrom: <sip:{aor}>;tag=r\r\nCall-ID: reg{i}\r\nCSeq: 1 REGISTER\r\n\
Contact: <sip:alice@{UAC}>\r\nContent-Length: 0\r\n\r\n"
        );
        p.handle_message(
            Instant::ZERO,
            reg.as_bytes(),
            &Peer::udp(UAC.parse().unwrap(), SocketId(0)),
            &mut out,
        );
        p.persisted(Instant::ZERO, true, &mut out);
        let sent: Vec<(String, String)> = out
            .items()
            .iter()
            .map(|t| {
                (
                    t.peer.remote.to_string(),
                    String::from_utf8_lossy(out.bytes(t)).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            p.local.0,
            usize::from(registrar),
            "{ruri} {route} {aor}: {sent:#?}"
        );
        assert_eq!(sent.len(), 1, "{ruri} {route}: {sent:#?}");
        if registrar {
            assert_eq!((sent[0].0.as_str(), status(&sent[0].1)), (UAC, 200));
        } else {
            assert!(sent[0].1.starts_with("REGISTER "), "proxied: {sent:#?}");
            assert_ne!(sent[0].0, UAC);
        }
    }
}

/// A service that originates a NOTIFY to `to` for each queued token, and
/// records the outcomes.
#[derive(Default)]
struct Notifier {
    queue: Vec<(u64, SocketAddr)>,
    outcomes: Vec<(u64, u16)>,
}

impl LocalService for Notifier {
    fn serves(&self, _: Method) -> bool {
        false
    }

    fn owner(&self, _: &Message<'_>, _: &Essentials<'_>, _: Option<&AorKey>) -> Owner {
        Owner::Nobody
    }

    fn handle_request(
        &mut self,
        _: Instant,
        _: u64,
        _: &Message<'_>,
        _: &Essentials<'_>,
        _: Option<&AorKey>,
        _: &Peer,
        _: &mut [u8],
    ) -> Option<(usize, u16)> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        (!self.queue.is_empty()).then_some(Instant::ZERO)
    }

    fn poll_request(&mut self, buf: &mut [u8]) -> Option<Originated> {
        let (token, to) = self.queue.pop()?;
        let req = format!(
            "NOTIFY sip:bob@{to} SIP/2.0\r\nMax-Forwards: 70\r\n\
From: <sip:alice@example.test>;tag=n{token}\r\nTo: <sip:bob@example.test>;tag=b\r\n\
Call-ID: sub{token}\r\nCSeq: {token} NOTIFY\r\nEvent: presence\r\n\
Subscription-State: active;expires=600\r\nContent-Length: 0\r\n\r\n"
        );
        buf.get_mut(..req.len())?.copy_from_slice(req.as_bytes());
        Some(Originated {
            to: Peer::udp(to, SocketId(0)),
            len: req.len(),
            token,
        })
    }

    fn handle_outcome(&mut self, _: Instant, token: u64, status: u16) {
        self.outcomes.push((token, status));
    }
}

/// A local service's own request runs as a client transaction of the
/// proxy: sent with our Via, retransmitted (Timer E), its final response
/// (not forwarded anywhere) reported to the service; one never answered is
/// reported 408 after Timer F.
#[test]
fn a_local_service_originates_requests_with_client_transactions() {
    let bob: SocketAddr = "192.0.2.7:5060".parse().unwrap();
    let mut p = Stateful::new(
        identity(),
        Config::default(),
        FixedLocation(Vec::new()),
        Notifier {
            queue: vec![(2, bob), (1, bob)],
            ..Notifier::default()
        },
    );
    let mut out = Outbox::new(1 << 20, 64);
    let mut now = Instant::ZERO;
    assert_eq!(p.poll_timeout(), Some(Instant::ZERO));
    p.handle_timeout(now, &mut out);
    let sent: Vec<String> = out
        .items()
        .iter()
        .map(|t| String::from_utf8_lossy(out.bytes(t)).into_owned())
        .collect();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert!(sent
        .iter()
        .all(|m| m.starts_with("NOTIFY sip:bob@192.0.2.7:5060")));
    assert!(
        sent.iter()
            .all(|m| m.contains("\r\nVia: SIP/2.0/UDP 127.0.0.1:")
                && m.contains(";branch=z9hG4bKse")),
        "{sent:#?}"
    );
    assert_eq!(p.counters().requests_originated, 2);
    // Token 1 is answered 200: the answer goes nowhere but to the service.
    let first = sent.iter().find(|m| m.contains("CSeq: 1 NOTIFY")).unwrap();
    let ok = respond(first, 200, "bob");
    out.clear();
    p.handle_message(now, ok.as_bytes(), &Peer::udp(bob, SocketId(0)), &mut out);
    assert!(out.is_empty(), "the 200 is not forwarded");
    assert!(p.poll_timeout().is_some_and(|t| t <= now));
    p.handle_timeout(now, &mut out);
    assert_eq!(p.local.outcomes, vec![(1, 200)]);
    // Token 2 is never answered: retransmitted, then 408 after 64*T1.
    let mut retransmits = 0;
    for _ in 0..200 {
        let Some(t) = p.poll_timeout() else { break };
        now = t.max(now);
        out.clear();
        p.handle_timeout(now, &mut out);
        retransmits += out.len();
        if !p.local.outcomes.iter().any(|o| o.0 == 2) {
            continue;
        }
        break;
    }
    assert!(retransmits >= 5, "Timer E retransmitted ({retransmits})");
    assert_eq!(p.local.outcomes, vec![(1, 200), (2, 408)]);
    assert!(now >= Instant::ZERO + Duration::from_secs(32));
}

/// The response-time histogram takes one sample per transaction: from the
/// request's arrival to the first response other than 100 Trying sent back
/// (the 180 here, not the 200 after it), and for a transaction the edge ends
/// itself, to its own final response (the 408). Responses the edge writes
/// are counted by class, the 100 Trying among them.
#[test]
fn response_time_and_local_responses_by_class() {
    let mut h = H::new(&["192.0.2.4:5060"]);
    let out = h.feed(&invite("sip:bob@example.test", "z9hG4bKrt1"), UAC);
    let fwd = out[1].1.clone();
    h.now += Duration::from_millis(1_500);
    h.feed(&respond(&fwd, 180, "b1"), "192.0.2.4:5060");
    h.now += Duration::from_millis(3_000);
    h.feed(&respond(&fwd, 200, "b1"), "192.0.2.4:5060");
    let rt = h.p.response_time().unwrap();
    assert_eq!(rt.len(), 1);
    let got = rt.max();
    assert!((1_480_000..=1_520_000).contains(&got), "{got} µs");
    assert_eq!(h.p.counters().local_responses_by_class, [1, 0, 0, 0, 0, 0]);

    h.feed(&invite("sip:bob@example.test", "z9hG4bKrt2"), UAC);
    let mut finals = Vec::new();
    for _ in 0..70 {
        for (_, m) in h.advance(Duration::from_millis(500)) {
            if !m.starts_with("INVITE") {
                finals.push(status(&m));
            }
        }
    }
    assert_eq!(finals.first(), Some(&408));
    let rt = h.p.response_time().unwrap();
    assert_eq!(rt.len(), 2);
    assert!(rt.max() >= 30_000_000, "{} µs", rt.max());
    assert_eq!(h.p.counters().local_responses_by_class, [2, 0, 0, 1, 0, 0]);
    assert_eq!(h.p.counters().responses_local, 1, "the 100s are not in it");
}

/// A response with our Via only (a UA that copied the Vias of the wrong
/// request) is not forwarded with no Via at all (§16.7 step 3): the
/// caller gets the proxy's own final answer instead.
#[test]
fn a_response_with_only_our_via_is_not_forwarded() {
    let mut h = H::new(&["192.0.2.4:5060"]);
    let out = h.feed(&invite("sip:bob@example.test", "z9hG4bKv1"), UAC);
    let fwd = out[1].1.clone();
    let ours = fwd
        .split("\r\n")
        .find(|l| l.starts_with("Via:"))
        .unwrap()
        .to_owned();
    let only_ours = respond(&fwd, 486, "b9")
        .split("\r\n")
        .filter(|l| !l.starts_with("Via:"))
        .collect::<Vec<_>>()
        .join("\r\n")
        .replacen("\r\n", &format!("\r\n{ours}\r\n"), 1);
    let out = h.feed(&only_ours, "192.0.2.4:5060");
    for (to, m) in &out {
        assert!(m.contains("Via:"), "sent to {to} without a Via: {m}");
    }
    assert!(
        out.iter().any(|(to, m)| to == UAC && status(m) == 408),
        "{out:#?}"
    );
}

/// The gateway set of the dispatcher tests: three destinations,
/// round-robin, fork_timeout 2 s, probes off.
fn with_gateways(h: &mut H) -> [&'static str; 3] {
    use crate::routing::dispatcher::{Algorithm, DestConfig, SetConfig};
    let gws = ["192.0.2.21:5060", "192.0.2.22:5060", "192.0.2.23:5060"];
    let set = SetConfig {
        name: "gw".into(),
        domains: vec!["pstn.example.test".into()],
        dests: gws
            .iter()
            .map(|g| DestConfig {
                uri: format!("sip:{g}"),
                addr: g.parse().unwrap(),
                transport: Transport::Udp,
                weight: 1,
                priority: 0,
                max_load: 0,
            })
            .collect(),
        algorithm: Algorithm::RoundRobin,
        probe_interval: Duration::ZERO,
        probe_timeout: Duration::from_secs(1),
        failures_down: 2,
        successes_up: 2,
        attempts: 3,
        call_timeout: Duration::from_secs(3600),
        fork_timeout: Duration::from_secs(2),
        group: None,
    };
    h.p.dispatcher = Dispatcher::new(&[set], h.now);
    gws
}

fn loads(h: &H) -> Vec<u32> {
    h.p.dispatcher.status().iter().map(|d| d.load).collect()
}

#[test]
fn a_dispatched_call_fails_over_on_503_and_on_silence_then_its_bye_ends_the_load() {
    let mut h = H::new(&[]);
    let gws = with_gateways(&mut h);
    let inv = invite("sip:123@pstn.example.test", "z9hG4bKd1");
    let out = h.feed(&inv, UAC);
    assert_eq!(out.len(), 2, "{out:#?}");
    assert_eq!(out[1].0, gws[0]);
    // The R-URI is kept (the destination is the next hop).
    assert!(out[1]
        .1
        .starts_with("INVITE sip:123@pstn.example.test SIP/2.0"));
    assert_eq!(loads(&h), [1, 0, 0]);
    // 503 with Retry-After: ACKed there, the call goes to the next one,
    // which is then held down; the caller sees nothing yet.
    let busy = respond(&out[1].1, 503, "g1").replacen(
        "Content-Length",
        "Retry-After: 60\r\nContent-Length",
        1,
    );
    let out = h.feed(&busy, gws[0]);
    let sent: Vec<(&str, String)> = out.iter().map(|(a, m)| (a.as_str(), method(m))).collect();
    assert_eq!(
        sent,
        [(gws[0], "ACK".into()), (gws[1], "INVITE".into())],
        "{out:#?}"
    );
    assert_eq!(loads(&h), [0, 1, 0]);
    assert_eq!(h.p.dispatcher.status()[0].state.name(), "down");
    // The second says nothing at all: after fork_timeout the third gets it.
    let out = h.advance(Duration::from_millis(1900));
    assert!(
        out.iter().all(|(a, _)| a == gws[1]),
        "only retransmissions: {out:#?}"
    );
    let out = h.advance(Duration::from_millis(200));
    let third = out
        .iter()
        .find(|(a, _)| a == gws[2])
        .expect("failover")
        .1
        .clone();
    assert_eq!(loads(&h), [0, 0, 1]);
    // Answered: the caller gets the 200 (one final answer); the call still counts.
    let ok = respond(&third, 200, "g3");
    let out = h.feed(&ok, gws[2]);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].0.as_str(), status(&out[0].1)), (UAC, 200));
    assert_eq!(loads(&h), [0, 0, 1]);
    assert_eq!(h.p.counters().dispatcher_failovers, 2);
    // The BYE (same Call-ID) ends it.
    let bye = inv
        .replacen(
            "INVITE sip:123@pstn.example.test",
            "BYE sip:123@192.0.2.23:5060",
            1,
        )
        .replace("CSeq: 1 INVITE", "CSeq: 2 BYE")
        .replace("branch=z9hG4bKd1", "branch=z9hG4bKd1b");
    let _ = h.feed(&bye, UAC);
    assert_eq!(loads(&h), [0, 0, 0]);
}

#[test]
fn a_dispatched_call_is_not_moved_on_after_a_cancel_or_a_busy() {
    let mut h = H::new(&[]);
    let gws = with_gateways(&mut h);
    // 486 is an answer, not a failure: forwarded, no failover.
    let out = h.feed(&invite("sip:1@pstn.example.test", "z9hG4bKd2"), UAC);
    let out = h.feed(&respond(&out[1].1, 486, "g1"), gws[0]);
    assert!(
        out.iter().any(|(a, m)| a == UAC && status(m) == 486),
        "{out:#?}"
    );
    assert!(!out.iter().any(|(a, m)| a != UAC && method(m) == "INVITE"));
    // A ringing call CANCELed by the caller: 487, the load released, no failover.
    let inv = invite("sip:2@pstn.example.test", "z9hG4bKd3");
    let out = h.feed(&inv, UAC);
    let (gw, fwd) = (out[1].0.clone(), out[1].1.clone());
    let _ = h.feed(&respond(&fwd, 180, "g2"), &gw);
    let cancel = inv
        .replacen("INVITE sip:", "CANCEL sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    let out = h.feed(&cancel, UAC);
    let down_cancel = out
        .iter()
        .find(|(a, m)| *a == gw && method(m) == "CANCEL")
        .unwrap()
        .1
        .clone();
    let _ = h.feed(&respond(&down_cancel, 200, "g2"), &gw);
    let out = h.feed(&respond(&fwd, 487, "g2"), &gw);
    assert!(
        out.iter().any(|(a, m)| a == UAC && status(m) == 487),
        "{out:#?}"
    );
    assert!(
        !out.iter().any(|(_, m)| m.starts_with("INVITE ")),
        "{out:#?}"
    );
    assert_eq!(loads(&h), [0, 0, 0]);
    assert_eq!(h.p.counters().dispatcher_failovers, 0);
}

/// Hunt-group members op1..op3@example.test, one contact each.
struct Members;

const OPS: [&str; 3] = ["192.0.2.31:5060", "192.0.2.32:5060", "192.0.2.33:5060"];

impl Location for Members {
    fn lookup(&self, aor: &[u8], _wall: u64, out: &mut Targets) -> Found {
        for (i, a) in OPS.iter().enumerate() {
            if aor == format!("op{}@example.test", i + 1).as_bytes() {
                out.push(
                    format!("sip:op{}@{a}", i + 1).as_bytes(),
                    b"",
                    Some(a.parse().unwrap()),
                    1000,
                );
                return Found::Contacts;
            }
        }
        Found::Unknown
    }
}

fn help_desk() -> (Stateful<Members>, Outbox) {
    use crate::routing::dispatcher::{Algorithm, DestConfig, GroupConfig, SetConfig};
    let set = SetConfig {
        name: "support".into(),
        domains: vec!["example.test".into()],
        dests: (1..=3)
            .map(|i| DestConfig {
                uri: format!("sip:op{i}@example.test"),
                addr: "0.0.0.0:0".parse().unwrap(),
                transport: Transport::Udp,
                weight: 1,
                priority: 0,
                max_load: 0,
            })
            .collect(),
        algorithm: Algorithm::LeastLoaded,
        probe_interval: Duration::ZERO,
        probe_timeout: Duration::ZERO,
        failures_down: 1,
        successes_up: 1,
        attempts: 3,
        call_timeout: Duration::from_secs(3600),
        fork_timeout: Duration::ZERO,
        group: Some(GroupConfig {
            aor: "support@example.test".into(),
            ring_timeout: Duration::from_secs(10),
            nobody: 486,
        }),
    };
    // One shard (id 0): the group's owner shard is this one.
    let mut id = identity();
    id.shard_id = 0;
    let p = Stateful::new(id, Config::default(), Members, NoService).with_dispatcher(&[set]);
    (p, Outbox::new(1 << 20, 64))
}

fn feed_to(
    p: &mut Stateful<Members>,
    out: &mut Outbox,
    now: Instant,
    data: &str,
    src: &str,
) -> Vec<(String, String)> {
    out.clear();
    p.handle_message(
        now,
        data.as_bytes(),
        &Peer::udp(src.parse().unwrap(), SocketId(0)),
        out,
    );
    out.items()
        .iter()
        .map(|t| {
            (
                t.peer.remote.to_string(),
                String::from_utf8_lossy(out.bytes(t)).into_owned(),
            )
        })
        .collect()
}

#[test]
fn a_hunt_group_rings_the_least_loaded_skips_the_busy_and_moves_on_after_ring_timeout() {
    let (mut p, mut out) = help_desk();
    let mut now = Instant::ZERO;
    // op1 holds two calls, op2 one (direct calls: counted on the members).
    for (k, op) in [(1, "op1"), (2, "op1"), (3, "op2")] {
        let inv = invite(&format!("sip:{op}@example.test"), &format!("z9hG4bKh{k}"));
        let sent = feed_to(&mut p, &mut out, now, &inv, UAC);
        let fwd = sent
            .iter()
            .find(|(_, m)| m.starts_with("INVITE"))
            .unwrap_or_else(|| panic!("{sent:#?}"))
            .clone();
        let sent = feed_to(&mut p, &mut out, now, &respond(&fwd.1, 200, "o"), &fwd.0);
        assert!(sent.iter().any(|(a, m)| a == UAC && status(m) == 200));
    }
    let loads = |p: &Stateful<Members>| {
        p.dispatcher
            .status()
            .iter()
            .map(|d| d.load)
            .collect::<Vec<_>>()
    };
    assert_eq!(loads(&p), [2, 1, 0]);
    // A call to the group rings op3, the least loaded.
    let inv = invite("sip:support@example.test", "z9hG4bKg1");
    let sent = feed_to(&mut p, &mut out, now, &inv, UAC);
    let (to, fwd) = first_invite(&sent);
    assert_eq!(to, OPS[2]);
    assert!(fwd.starts_with("INVITE sip:op3@192.0.2.33:5060 "), "{fwd}");
    // op3 is busy: the next least loaded, op2, rings; the caller sees nothing final.
    let sent = feed_to(&mut p, &mut out, now, &respond(&fwd, 486, "o3"), OPS[2]);
    assert!(
        !sent
            .iter()
            .any(|(a, m)| a == UAC && m.starts_with("SIP/2.0 486")),
        "{sent:#?}"
    );
    let (to, fwd) = first_invite(&sent);
    assert_eq!(to, OPS[1]);
    // op2 rings and does not answer: after ring_timeout it is CANCELed...
    let _ = feed_to(&mut p, &mut out, now, &respond(&fwd, 180, "o2"), OPS[1]);
    now += Duration::from_secs(10);
    out.clear();
    p.handle_timeout(now, &mut out);
    let cancel = out
        .items()
        .iter()
        .map(|t| {
            (
                t.peer.remote.to_string(),
                String::from_utf8_lossy(out.bytes(t)).into_owned(),
            )
        })
        .find(|(_, m)| m.starts_with("CANCEL"))
        .expect("ring_timeout CANCELs the member");
    assert_eq!(cancel.0, OPS[1]);
    // ...and its 487 moves the call on to op1, the last one.
    let _ = feed_to(
        &mut p,
        &mut out,
        now,
        &respond(&cancel.1, 200, "o2"),
        OPS[1],
    );
    let sent = feed_to(&mut p, &mut out, now, &respond(&fwd, 487, "o2"), OPS[1]);
    let (to, fwd) = first_invite(&sent);
    assert_eq!(to, OPS[0]);
    // op1 busy too: nobody is left, the caller gets the group's 486.
    let sent = feed_to(&mut p, &mut out, now, &respond(&fwd, 486, "o1"), OPS[0]);
    assert_answered(&sent, 486);
    assert_eq!(loads(&p), [2, 1, 0]);
}

/// Hooks of the tests below: `sip:block@…` answered 403 by the hook,
/// `sip:hook@…` sent to 192.0.2.41, then (on failure) to 192.0.2.42;
/// what they saw is recorded.
#[derive(Default)]
struct TestHooks {
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl crate::proxy::hooks::RoutingHooks for TestHooks {
    type Ctx = u32;

    fn new_ctx(&mut self) -> u32 {
        0
    }

    fn on_request(
        &mut self,
        req: &crate::proxy::hooks::Request<'_>,
        _: &mut u32,
    ) -> crate::proxy::hooks::Decision {
        if req.ruri_user() == Some(b"block") {
            return crate::proxy::hooks::Decision::Answer(403, "Forbidden By Hook");
        }
        crate::proxy::hooks::Decision::Continue
    }

    fn choose_targets(
        &mut self,
        req: &crate::proxy::hooks::Request<'_>,
        tries: &mut u32,
        t: &mut Targets,
    ) -> bool {
        if req.ruri_user() != Some(b"hook") {
            return false;
        }
        *tries += 1;
        t.push(b"", b"", Some("192.0.2.41:5060".parse().unwrap()), 1000);
        true
    }

    fn on_response(&mut self, status: u16, tries: &mut u32) {
        self.seen
            .lock()
            .unwrap()
            .push(format!("response {status} after {tries}"));
    }

    fn on_failure(&mut self, status: u16, tries: &mut u32, t: &mut Targets) {
        self.seen.lock().unwrap().push(format!("failure {status}"));
        if *tries == 1 {
            *tries += 1;
            t.push(b"", b"", Some("192.0.2.42:5060".parse().unwrap()), 1000);
        }
    }

    fn on_dialog_end(&mut self, call_id: &[u8]) {
        self.seen
            .lock()
            .unwrap()
            .push(format!("bye {}", String::from_utf8_lossy(call_id)));
    }
}

#[test]
fn hooks_answer_choose_targets_see_responses_and_retry_elsewhere() {
    let mut h = H::new(&["192.0.2.4:5060"]);
    let hooks = TestHooks::default();
    let seen = hooks.seen.clone();
    h.p.hooks = Some(Box::new(hooks));
    // Answered by the hook.
    let out = h.feed(&invite("sip:block@example.test", "z9hG4bKk1"), UAC);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].0.as_str(), status(&out[0].1)), (UAC, 403));
    // Not the hook's: the edge's routing (location) as before.
    let out = h.feed(&invite("sip:bob@example.test", "z9hG4bKk2"), UAC);
    assert_eq!(out[1].0, "192.0.2.4:5060");
    // The hook's target; its failure is retried where the hook says.
    let inv = invite("sip:hook@example.test", "z9hG4bKk3");
    let out = h.feed(&inv, UAC);
    assert_eq!(out[1].0, "192.0.2.41:5060");
    let out = h.feed(&respond(&out[1].1, 503, "x1"), "192.0.2.41:5060");
    let retry = out
        .iter()
        .find(|(a, m)| a == "192.0.2.42:5060" && m.starts_with("INVITE"))
        .expect("retried");
    assert!(
        !out.iter().any(|(a, _)| a == UAC),
        "nothing final upstream yet: {out:#?}"
    );
    let out = h.feed(&respond(&retry.1, 486, "x2"), "192.0.2.42:5060");
    assert!(
        out.iter().any(|(a, m)| a == UAC && status(m) == 486),
        "{out:#?}"
    );
    let bye = inv
        .replacen(
            "INVITE sip:hook@example.test",
            "BYE sip:hook@example.test",
            1,
        )
        .replace("CSeq: 1 INVITE", "CSeq: 2 BYE")
        .replace("branch=z9hG4bKk3", "branch=z9hG4bKk3b");
    let _ = h.feed(&bye, UAC);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "response 503 after 1",
            "failure 503",
            "response 486 after 2",
            "failure 486",
            "bye z9hG4bKk3@c"
        ]
    );
}

/// A publication record of `aor` (entity tag `etag`) with RPID activity
/// `activity` (an empty one: plain online), as presence's partition owner
/// feeds it to the shards.
fn publication(aor: &str, etag: &str, activity: &str) -> Record {
    let act = if activity.is_empty() {
        String::new()
    } else {
        format!("<rpid:activities><rpid:{activity}/></rpid:activities>")
    };
    let doc = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
         xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" \
         entity=\"sip:{aor}\"><tuple id=\"t\"><status><basic>open</basic></status></tuple>\
         <dm:person id=\"p\">{act}</dm:person></presence>"
    );
    Record {
        partition: 0,
        seq: 1,
        commit: 0,
        op: crate::location::Op::Put(crate::location::Entry {
            kind: 0x21, // presence's publication entries (presence::codec::kind)
            key: etag.as_bytes().into(),
            aor: aor.as_bytes().into(),
            expires: 0,
            value: doc.into_bytes().into(),
        }),
        remote: false,
    }
}

#[test]
fn a_hunt_group_skips_members_whose_presence_is_busy_or_away() {
    let (mut p, mut out) = help_desk();
    let now = Instant::ZERO;
    let feed = |p: &mut Stateful<Members>, out: &mut Outbox, r: Record| {
        out.clear();
        p.handle_mesh(now, MeshMsg::Feed(Arc::from(vec![r])), out);
    };
    // op1 on the phone, op2 away: op3 rings although all are idle.
    feed(
        &mut p,
        &mut out,
        publication("op1@example.test", "e1", "on-the-phone"),
    );
    feed(
        &mut p,
        &mut out,
        publication("op2@example.test", "e2", "away"),
    );
    let inv = invite("sip:support@example.test", "z9hG4bKp1");
    let sent = feed_to(&mut p, &mut out, now, &inv, UAC);
    let (to, fwd) = first_invite(&sent);
    assert_eq!(to, OPS[2]);
    // op3 busy: nobody else may ring (op1 busy, op2 away): the group's 486.
    let sent = feed_to(&mut p, &mut out, now, &respond(&fwd, 486, "o3"), OPS[2]);
    assert_answered(&sent, 486);
    // op2 back online (a second device's publication): it rings now.
    feed(&mut p, &mut out, publication("op2@example.test", "e3", ""));
    let sent = feed_to(
        &mut p,
        &mut out,
        now,
        &invite("sip:support@example.test", "z9hG4bKp2"),
        UAC,
    );
    let rung: Vec<&str> = sent
        .iter()
        .filter(|(_, m)| m.starts_with("INVITE"))
        .map(|(a, _)| a.as_str())
        .collect();
    assert_eq!(
        rung,
        [OPS[1]],
        "least loaded first (op2 ties with op3, earlier in turn)"
    );
}

/// Completed calls leave nothing on the timer wheel once their
/// transactions are gone: Timer C (180 s) is checked at most 4 s ahead, so a
/// call answered in a second does not keep a 180 s entry (issue 14: ~10 %
/// of a busy edge's memory).
#[test]
fn completed_calls_leave_no_timer_c_behind() {
    let mut h = H::new(&["192.0.2.4:5060"]);
    for k in 0..200 {
        let out = h.feed(
            &invite("sip:bob@example.test", &format!("z9hG4bKtc{k}")),
            UAC,
        );
        let fwd = out[1].1.clone();
        let _ = h.feed(&respond(&fwd, 180, "b"), "192.0.2.4:5060");
        let out = h.feed(&respond(&fwd, 200, "b"), "192.0.2.4:5060");
        assert_eq!(status(&out[0].1), 200);
        h.advance(Duration::from_millis(5));
    }
    for _ in 0..40 {
        h.advance(Duration::from_secs(1));
    }
    assert_eq!(h.p.live_transactions(), 0);
    assert_eq!(
        h.p.timers(),
        0,
        "timers left on the wheel after the calls ended"
    );
}

/// The first INVITE the proxy sent: (where, the message).
fn first_invite(sent: &[(String, String)]) -> (String, String) {
    sent.iter()
        .find(|(_, m)| m.starts_with("INVITE"))
        .unwrap_or_else(|| panic!("no INVITE sent: {sent:#?}"))
        .clone()
}

/// The caller got a final `code`.
fn assert_answered(sent: &[(String, String)], code: u16) {
    assert!(
        sent.iter().any(|(a, m)| a == UAC && status(m) == code),
        "{sent:#?}"
    );
}

/// A branch CANCELed whose CANCEL is answered but whose INVITE never gets
/// a final response ends 64*T1 after the CANCEL, as a 408 (§9.1): the
/// caller gets its 487 and the context goes (found by the proxy fuzzer).
#[test]
fn a_cancelled_branch_that_never_answers_the_invite_ends() {
    let mut h = H::new(&["192.0.2.4:5060"]);
    let inv = invite("sip:bob@example.test", "z9hG4bKcx");
    let out = h.feed(&inv, UAC);
    let fwd = out[1].1.clone();
    let _ = h.feed(&respond(&fwd, 180, "b"), "192.0.2.4:5060");
    let cancel = inv
        .replacen("INVITE sip:", "CANCEL sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    let out = h.feed(&cancel, UAC);
    let down = out
        .iter()
        .find(|(a, m)| a == "192.0.2.4:5060" && m.starts_with("CANCEL"))
        .expect("CANCEL downstream")
        .1
        .clone();
    // The callee answers the CANCEL (here with a 408) and never the INVITE.
    let _ = h.feed(&respond(&down, 408, "b"), "192.0.2.4:5060");
    let mut got = Vec::new();
    for _ in 0..40 {
        got.extend(h.advance(Duration::from_secs(1)));
    }
    assert!(
        got.iter().any(|(a, m)| a == UAC && status(m) == 487),
        "{got:#?}"
    );
    for _ in 0..40 {
        h.advance(Duration::from_secs(1));
    }
    assert_eq!(h.p.live_transactions(), 0);
}

/// Timer C fires on a ringing branch: its CANCEL goes, is answered 200, and
/// the INVITE never gets a final response. The branch ends 64*T1 after the
/// CANCEL as a 408 — before, Timer C's own check had fired and nothing was
/// left on the wheel to find the new deadline, and the transaction stayed
/// forever (found by the proxy fuzzer in its 30-minute run).
#[test]
fn timer_c_cancel_answered_without_a_487_ends() {
    let mut h = H::new(&["192.0.2.4:5060"]);
    let inv = invite("sip:bob@example.test", "z9hG4bKtc");
    let out = h.feed(&inv, UAC);
    let fwd = out[1].1.clone();
    let _ = h.feed(&respond(&fwd, 180, "b"), "192.0.2.4:5060");
    let mut down = None;
    for _ in 0..200 {
        for (a, m) in h.advance(Duration::from_secs(1)) {
            if a == "192.0.2.4:5060" && m.starts_with("CANCEL") && down.is_none() {
                down = Some(m);
            }
        }
        if down.is_some() {
            break;
        }
    }
    let down = down.expect("Timer C sends a CANCEL downstream");
    let _ = h.feed(&respond(&down, 200, "b"), "192.0.2.4:5060");
    let mut got = Vec::new();
    for _ in 0..80 {
        got.extend(h.advance(Duration::from_secs(1)));
    }
    assert!(
        got.iter().any(|(a, m)| a == UAC && status(m) == 408),
        "the caller gets its 408: {got:#?}"
    );
    assert_eq!(
        h.p.live_transactions(),
        0,
        "{:#?}",
        h.p.describe_transactions()
    );
}
