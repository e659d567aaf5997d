//! The parser and the editor allocate nothing per message (DESIGN.md: "no
//! allocation on that path in the steady state").
//!
//! A counting `#[global_allocator]` wraps the system allocator; counting is
//! per thread (a `const` thread-local, which itself never allocates), so the
//! other tests of this binary, running on their own threads, do not disturb
//! the count. Each test builds its `HeaderIndex` and output buffer first (the
//! only allocations a shard makes, once), warms up, then asserts that a
//! thousand rounds of parse → essentials → decoders → edit allocate nothing.
// The counting allocator is the one place this test needs `unsafe`.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use sipedge::sip::{
    edit, parse, parse_stream, Contact, Credentials, Edits, HeaderIndex, HeaderName, NameAddr,
    NewVia, Received, ResponseSpec, Status, Via,
};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees are ours; the counter is a `const`
// thread-local `Cell`, whose access neither allocates nor re-enters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded as is; `ptr` came from this allocator, i.e. from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is; `ptr` came from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread while `f` runs.
fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

const INVITE: &[u8] = include_bytes!("fixtures/bench/invite.sip");
const REGISTER: &[u8] = include_bytes!("fixtures/bench/register.sip");
const OK200: &[u8] = include_bytes!("fixtures/bench/ok200.sip");

/// What a proxy reads from every message: parse, essentials, every Via,
/// Contact and Record-Route decoded, credentials when present.
fn read_all(msg: &[u8], index: &mut HeaderIndex) -> usize {
    let m = parse(msg, index).unwrap();
    let e = m.essentials().unwrap();
    black_box(&e);
    let mut n = 0;
    for v in m.values(HeaderName::Via) {
        n += Via::parse(v).unwrap().branch().map_or(0, <[u8]>::len);
    }
    for v in m.values(HeaderName::Contact) {
        black_box(Contact::parse(v).unwrap());
    }
    for v in m.values(HeaderName::RecordRoute) {
        n += NameAddr::parse(v).unwrap().uri().unwrap().host_bytes.len();
    }
    if let Some(a) = m.header(HeaderName::Authorization) {
        let c = Credentials::parse(a).unwrap();
        n += c.params.get(b"response").unwrap().len();
    }
    if let Some(uri) = e.uri {
        n += uri.host_bytes.len();
    }
    n + m.headers().len()
}

#[test]
fn parsing_allocates_nothing() {
    let mut index = HeaderIndex::default();
    for msg in [INVITE, REGISTER, OK200] {
        read_all(msg, &mut index); // warm-up
    }
    for (name, msg) in [
        ("INVITE", INVITE),
        ("REGISTER", REGISTER),
        ("200 OK", OK200),
    ] {
        let n = allocations(|| {
            for _ in 0..1000 {
                black_box(read_all(black_box(msg), &mut index));
            }
        });
        assert_eq!(n, 0, "{name}: {n} allocations in 1000 parses");
    }
    // Streams too: a message and the start of the next.
    let mut two = INVITE.to_vec();
    two.extend_from_slice(&REGISTER[..100]);
    let n = allocations(|| {
        for _ in 0..1000 {
            match parse_stream(black_box(&two), &mut index) {
                Ok(Status::Complete(m)) => assert_eq!(m.len(), INVITE.len()),
                other => panic!("{other:?}"),
            }
        }
    });
    assert_eq!(n, 0, "parse_stream: {n} allocations");
}

#[test]
fn editing_into_a_preallocated_buffer_allocates_nothing() {
    let mut index = HeaderIndex::default();
    let mut out = vec![0u8; 4096];
    let forward = Edits {
        push_via: Some(NewVia {
            transport: "UDP",
            host: b"192.0.2.1",
            port: 5060,
            branch: b"z9hG4bKproxy0001",
            rport: true,
        }),
        received: Some(Received {
            ip: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
            port: 5099,
        }),
        record_route: Some(b"sip:192.0.2.1:5060;lr"),
        ..Edits::default()
    };
    let upstream = Edits {
        pop_via: true,
        max_forwards: sipedge::sip::MaxForwardsEdit::Keep,
        ..Edits::default()
    };
    let mut round = |out: &mut [u8]| -> usize {
        let mut total = 0;
        for (msg, edits) in [(INVITE, &forward), (REGISTER, &forward), (OK200, &upstream)] {
            let m = parse(msg, &mut index).unwrap();
            m.essentials().unwrap();
            total += edit(&m, edits, out).unwrap();
        }
        // And a response built from a request (the 100 Trying / 4xx path).
        let m = parse(INVITE, &mut index).unwrap();
        let spec = ResponseSpec {
            to_tag: Some(b"as83kd9"),
            received: forward.received,
            ..ResponseSpec::new(486, "Busy Here")
        };
        total + sipedge::sip::response(&m, &spec, out).unwrap()
    };
    round(&mut out); // warm-up
    let n = allocations(|| {
        for _ in 0..1000 {
            black_box(round(black_box(&mut out)));
        }
    });
    assert_eq!(n, 0, "{n} allocations in 1000 edit rounds");
}

#[test]
fn the_counter_counts() {
    // Guards the guard: a Vec push must be seen.
    let n = allocations(|| {
        black_box(vec![1u8, 2, 3]);
    });
    assert!(n >= 1);
}
