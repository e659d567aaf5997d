//! Digest verification cost per request: `Authenticator::check` on a parsed
//! REGISTER carrying valid credentials, i.e. credentials parse + nonce MAC
//! check + HA2 + response + constant-time compare + nonce-count table,
//! for SHA-256 and MD5; and the cost of writing a challenge.
//!
//! Each request answers its own nonce with nc=1; the bench cycles over a
//! ring of them and clears the nonce-count table when it wraps (a 32 KiB
//! memset per 256 checks, amortised into the figure).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sipedge::auth::{
    self, digest, Algorithm, Authenticator, Config, Kind, Outcome, Qop, RealmId, Secret,
    SeededEntropy, User, Users,
};
use sipedge::policy::rate::Gcra;
use sipedge::sip::{parse, Credentials, HeaderIndex, ParseConfig};
use sipedge::time::{Duration, Instant};

/// Counts allocations, to prove `check` makes none.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed through.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed through.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const RING: usize = 256;
const WALL: u64 = 1_700_000_000_000_000;

fn authenticator(alg: Algorithm) -> Authenticator {
    let users = Users::from_users(vec![User::with_password(
        "alice",
        "example.test",
        "alice-secret",
    )])
    .unwrap();
    let cfg = Config {
        algorithms: vec![alg],
        replay_slots: 1024,
        ..Config::default()
    };
    Authenticator::new(
        cfg,
        &["example.test"],
        Arc::new(users),
        &Secret::new([9; 32]),
        &mut SeededEntropy::new(3),
    )
}

/// A REGISTER of alice answering a fresh challenge of `a`.
fn request(a: &mut Authenticator, alg: Algorithm, i: usize) -> Vec<u8> {
    request_as(a, alg, i, "alice", "alice-secret")
}

/// A REGISTER of `user` with `password` answering a fresh challenge of `a`.
fn request_as(
    a: &mut Authenticator,
    alg: Algorithm,
    i: usize,
    user: &str,
    password: &str,
) -> Vec<u8> {
    let src = "192.0.2.10:5060".parse().unwrap();
    let mut ch = [0u8; 512];
    let n = a
        .challenge(WALL, Kind::Www, RealmId(0), false, src, None, &mut ch)
        .unwrap();
    let line = std::str::from_utf8(&ch[..n]).unwrap();
    let c = Credentials::parse(line.split_once(": ").unwrap().1.trim_end().as_bytes()).unwrap();
    let nonce = std::str::from_utf8(c.params.get(b"nonce").unwrap())
        .unwrap()
        .to_owned();
    let opaque = std::str::from_utf8(c.params.get(b"opaque").unwrap())
        .unwrap()
        .to_owned();
    let ha1 = digest::ha1(
        alg.hash(),
        user.as_bytes(),
        b"example.test",
        password.as_bytes(),
    );
    let cnonce = format!("{i:016x}");
    let resp = digest::response(
        &ha1,
        &digest::Challenge {
            algorithm: alg,
            nonce: nonce.as_bytes(),
            cnonce: cnonce.as_bytes(),
            nc: b"00000001",
            qop: Some(Qop::Auth),
            method: b"REGISTER",
            uri: b"sip:example.test",
            body: b"",
        },
    );
    format!(
        "REGISTER sip:example.test SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-{i};rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:{user}@example.test>\r\n\
From: <sip:{user}@example.test>;tag={i}\r\n\
Call-ID: bench-{i}@192.0.2.10\r\n\
CSeq: 2 REGISTER\r\n\
Contact: <sip:alice@192.0.2.10:5060>;expires=3600\r\n\
Authorization: Digest username=\"{user}\", realm=\"example.test\", nonce=\"{nonce}\", uri=\"sip:example.test\", response=\"{}\", algorithm={}, cnonce=\"{cnonce}\", nc=00000001, qop=auth, opaque=\"{opaque}\"\r\n\
Content-Length: 0\r\n\r\n",
        resp.as_str(),
        alg.as_str(),
    )
    .into_bytes()
}

fn verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("digest");
    g.throughput(Throughput::Elements(1));
    let src = "192.0.2.10:5060".parse().unwrap();
    for alg in [Algorithm::Sha256, Algorithm::Md5] {
        let mut a = authenticator(alg);
        let bufs: Vec<Vec<u8>> = (0..RING).map(|i| request(&mut a, alg, i)).collect();
        let mut idx: Vec<HeaderIndex> = (0..RING)
            .map(|_| {
                HeaderIndex::new(ParseConfig {
                    max_headers: 16,
                    ..ParseConfig::default()
                })
            })
            .collect();
        let msgs: Vec<_> = bufs
            .iter()
            .zip(idx.iter_mut())
            .map(|(b, i)| parse(b, i).unwrap())
            .collect();
        // Every request is good once.
        for m in &msgs {
            assert!(matches!(
                a.check(Instant::ZERO, WALL, m, Kind::Www, src),
                Outcome::Authenticated { .. }
            ));
        }
        // And again after a reset: the bench measures the success path.
        a.bench_reset_replay_table();
        for m in &msgs {
            assert!(matches!(
                a.check(Instant::ZERO, WALL, m, Kind::Www, src),
                Outcome::Authenticated { .. }
            ));
        }
        // No allocation per request: a third pass, counted.
        a.bench_reset_replay_table();
        let before = ALLOCS.load(Ordering::Relaxed);
        for m in &msgs {
            black_box(a.check(Instant::ZERO, WALL, m, Kind::Www, src));
        }
        assert_eq!(ALLOCS.load(Ordering::Relaxed), before, "check allocated");
        let mut i = 0;
        g.bench_function(format!("verify/{}", alg.as_str()), |b| {
            b.iter(|| {
                if i == 0 {
                    a.bench_reset_replay_table();
                }
                let m = &msgs[i];
                i = (i + 1) % RING;
                let out = a.check(Instant::ZERO, black_box(WALL), black_box(m), Kind::Www, src);
                debug_assert!(matches!(out, Outcome::Authenticated { .. }));
                black_box(out);
            })
        });
    }
    // Failures: a wrong password and an unknown user cost the same (the
    // unknown user is checked against a dummy HA1). Throttles opened wide.
    for (name, user, password) in [
        ("fail-wrong-password/SHA-256", "alice", "guess"),
        ("fail-unknown-user/SHA-256", "nobody", "guess"),
    ] {
        let a = authenticator(Algorithm::Sha256);
        let mut wide = a.config().clone();
        wide.per_source = Gcra::per(u32::MAX, Duration::from_secs(1));
        wide.per_user = Gcra::per(u32::MAX, Duration::from_secs(1));
        let users = a.users().clone();
        let mut a = Authenticator::new(
            wide,
            &["example.test"],
            users,
            &Secret::new([9; 32]),
            &mut SeededEntropy::new(3),
        );
        let bufs: Vec<Vec<u8>> = (0..RING)
            .map(|i| request_as(&mut a, Algorithm::Sha256, i, user, password))
            .collect();
        let mut idx: Vec<HeaderIndex> = (0..RING).map(|_| HeaderIndex::default()).collect();
        let msgs: Vec<_> = bufs
            .iter()
            .zip(idx.iter_mut())
            .map(|(b, i)| parse(b, i).unwrap())
            .collect();
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                let m = &msgs[i];
                i = (i + 1) % RING;
                let out = a.check(Instant::ZERO, black_box(WALL), black_box(m), Kind::Www, src);
                assert!(matches!(out, Outcome::Challenge { stale: false, .. }));
            })
        });
    }
    let mut a = authenticator(Algorithm::Sha256);
    let mut out = [0u8; 512];
    g.bench_function("challenge/SHA-256", |b| {
        b.iter(|| {
            a.challenge(
                black_box(WALL),
                Kind::Www,
                RealmId(0),
                false,
                src,
                None,
                &mut out,
            )
            .unwrap()
        })
    });
    let ha1 = digest::ha1(
        auth::HashFn::Sha256,
        b"alice",
        b"example.test",
        b"alice-secret",
    );
    g.bench_function("response-only/SHA-256", |b| {
        b.iter(|| {
            digest::response(
                black_box(&ha1),
                &digest::Challenge {
                    algorithm: Algorithm::Sha256,
                    nonce: b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                    cnonce: b"0123456789abcdef",
                    nc: b"00000001",
                    qop: Some(Qop::Auth),
                    method: b"REGISTER",
                    uri: b"sip:example.test",
                    body: b"",
                },
            )
        })
    });
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
