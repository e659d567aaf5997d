//! Parse benches: sipedge against rsip (the peer crate) on the same bytes,
//! in one criterion group so the per-message ratio can be read off.
//!
//! | id | what it measures |
//! |---|---|
//! | `parse/sipedge/<msg>` | `sip::parse` + `Message::essentials()` (Request-URI, top Via, From, To, CSeq, Max-Forwards decoded): what a proxy does with every message |
//! | `parse/rsip/<msg>` | `rsip::SipMessage::try_from(&[u8])`: rsip's parse, which splits every header into an owned `String` and decodes nothing typed |
//! | `facts/of_message`, `facts/of_essentials` | the policy's facts of the REGISTER (`policy::Request`): From, To and the Request-URI parsed from the message again, or taken from the essentials the proxy's check phase decoded |
//! | `parse/response/ok200` | `sip::parse` + the top Via: what the stateful proxy decodes of a response |
//! | `parse/loop/invite_3_vias` | `proxy::branch::is_loop` (§16.3 loop check) on the INVITE carrying the 200 OK's three Vias, none ours |
//! | `parse/forward/invite` | parse + essentials + the stateless forward edit (new Via with branch and rport, Max-Forwards decremented, Record-Route) into a reused buffer |
//!
//! Messages (`tests/fixtures/bench/`): an INVITE with SDP (916 bytes), a
//! REGISTER with a digest Authorization (803 bytes) and a 200 OK with three
//! Vias and two Record-Routes (886 bytes). Throughput is bytes of message.
//!
//! Run: `cargo bench --bench parse` (profile.bench: lto, one codegen unit).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sipedge::proxy::{branch, Identity};
use sipedge::sip::{edit, parse, Edits, HeaderIndex, HeaderName, NewVia};

const INVITE: &[u8] = include_bytes!("../tests/fixtures/bench/invite.sip");
const REGISTER: &[u8] = include_bytes!("../tests/fixtures/bench/register.sip");
const OK200: &[u8] = include_bytes!("../tests/fixtures/bench/ok200.sip");

fn bench_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    let mut index = HeaderIndex::default();
    for (name, msg) in [("invite", INVITE), ("register", REGISTER), ("ok200", OK200)] {
        // Both sides must accept the message, or the comparison means nothing.
        parse(msg, &mut index).unwrap().essentials().unwrap();
        rsip::SipMessage::try_from(msg).unwrap();

        group.throughput(Throughput::Bytes(msg.len() as u64));
        group.bench_function(format!("sipedge/{name}"), |b| {
            b.iter(|| {
                let m = parse(black_box(msg), &mut index).unwrap();
                let e = m.essentials().unwrap();
                black_box((e.cseq.number, e.top_via.branch(), e.from.tag()));
            });
        });
        group.bench_function(format!("rsip/{name}"), |b| {
            b.iter(|| black_box(rsip::SipMessage::try_from(black_box(msg)).unwrap()));
        });
    }

    // What the stateful proxy decodes of a response (response.rs): the top
    // Via only, not the essentials.
    group.throughput(Throughput::Bytes(OK200.len() as u64));
    group.bench_function("response/ok200", |b| {
        b.iter(|| {
            let m = parse(black_box(OK200), &mut index).unwrap();
            let via = m.top_via().unwrap();
            black_box((m.status(), via.branch()));
        });
    });

    // The §16.3 loop check of a request that crossed two proxies (the
    // three Vias of the 200 OK), none of them ours: what every such
    // request costs before it is forwarded.
    let invite3 = String::from_utf8(INVITE.to_vec())
        .unwrap()
        .replace(
            "Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport\r\n",
            &String::from_utf8(OK200.to_vec())
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("Via:"))
                .map(|l| format!("{l}\r\n"))
                .collect::<String>(),
        )
        .into_bytes();
    let id = Identity {
        shard_id: 0,
        sockets: Vec::new(),
        domains: Vec::new(),
        secret: 7,
        siblings: Vec::new(),
    };
    {
        let m = parse(&invite3, &mut index).unwrap();
        assert_eq!(m.values(HeaderName::Via).count(), 3);
        assert!(!branch::is_loop(&id, &m));
    }
    group.throughput(Throughput::Bytes(invite3.len() as u64));
    group.bench_function("loop/invite_3_vias", |b| {
        let m = parse(&invite3, &mut index).unwrap();
        b.iter(|| black_box(branch::is_loop(&id, black_box(&m))));
    });

    let edits = Edits {
        push_via: Some(NewVia {
            transport: "UDP",
            host: b"192.0.2.1",
            port: 5060,
            branch: b"z9hG4bK.proxy.7f3a2b19",
            rport: true,
        }),
        record_route: Some(b"sip:192.0.2.1:5060;lr"),
        ..Edits::default()
    };
    let mut out = vec![0u8; 4096];
    group.throughput(Throughput::Bytes(INVITE.len() as u64));
    group.bench_function("forward/invite", |b| {
        b.iter(|| {
            let m = parse(black_box(INVITE), &mut index).unwrap();
            let e = m.essentials().unwrap();
            black_box(e.max_forwards);
            black_box(edit(&m, &edits, &mut out).unwrap())
        });
    });
    group.finish();
}

/// The policy's facts of a REGISTER, taken from the message (parsing
/// From, To and the Request-URI again) or from the essentials the proxy's
/// check phase decoded.
fn bench_facts(c: &mut Criterion) {
    use sipedge::policy::{AuthState, Request, Transport};
    let mut index = HeaderIndex::default();
    let m = parse(REGISTER, &mut index).unwrap();
    let ess = m.essentials().unwrap();
    let src = std::net::IpAddr::from([198, 51, 100, 7]);
    let mut g = c.benchmark_group("facts");
    g.throughput(Throughput::Elements(1));
    g.bench_function("of_message", |b| {
        b.iter(|| {
            black_box(Request::of(
                black_box(&m),
                src,
                Transport::Udp,
                AuthState::No,
            ))
        });
    });
    g.bench_function("of_essentials", |b| {
        b.iter(|| {
            black_box(Request::of_essentials(
                black_box(&m),
                black_box(&ess),
                src,
                Transport::Udp,
                AuthState::No,
            ))
        });
    });
    g.finish();
}

criterion_group!(benches, bench_parse, bench_facts);
criterion_main!(benches);
