//! REGISTER benches: what a shard spends per REGISTER of a new binding and
//! per refresh of an existing one, without I/O.
//!
//! | id | what it measures, per REGISTER |
//! |---|---|
//! | `register/new` | parse, essentials and the To's AoR key (as the proxy's check phase; the key gives the owner shard), `Registrar::handle_register_with` (checks, state, records, the 200 written), the records cloned into the store batch (as `poll_persist` does), `Replica::apply` of each |
//! | `register/refresh` | the same for a re-REGISTER of the same contact (same Call-ID, CSeq + 1) half an expiry later |
//! | `apply/new`, `apply/refresh` | `Replica::apply` of those records alone |
//!
//! Each round starts from a registrar and replica in the state before the
//! round (built outside the timing): empty for `new`, holding the 10,000
//! bindings for `refresh`. A refresh should cost less than a new binding:
//! it finds its AoR and binding instead of creating them.
//!
//! Times are the bench thread's CPU time (see `common`).
//!
//! Run: `nice cargo bench --bench register`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::Measurement;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sipedge::location::{AorKey, Record, Replica};
use sipedge::registrar::{Registrar, RegistrarConfig};
use sipedge::sip::{parse, HeaderIndex};
use sipedge::time::Instant;
use sipedge::transport::{Peer, SocketId};

mod common;
use common::{registers, CpuTime};

const SEED: u64 = 0x5eed_1234_abcd_0001;
/// Users per round.
const USERS: usize = 10_000;
/// Unix µs of the first REGISTERs.
const WALL: u64 = 1_700_000_000_000_000;
/// A refresh comes half an expiry (3600 s) later.
const LATER_S: u64 = 1_800;

/// What one shard holds for its partition: the writer and its replica.
struct Shard {
    registrar: Registrar,
    replica: Replica,
    index: HeaderIndex,
    reply: Vec<u8>,
    /// The store batch of a turn (cleared each REGISTER: no I/O here).
    batch: Vec<Record>,
    records: Vec<Record>,
}

impl Shard {
    fn new() -> Self {
        let cfg = RegistrarConfig {
            domains: vec![b"example.com"[..].into()],
            ..RegistrarConfig::default()
        };
        Self {
            registrar: Registrar::new(cfg, 0, 1, Instant::ZERO),
            replica: Replica::new(1, SEED),
            index: HeaderIndex::default(),
            reply: vec![0u8; 65_535],
            batch: Vec::new(),
            records: Vec::new(),
        }
    }

    /// One REGISTER as the shard handles it; true on a 200.
    fn register(&mut self, msg: &[u8], later_s: u64) -> bool {
        let src: std::net::SocketAddr = ([198, 51, 100, 7], 40_000).into();
        let now = Instant::ZERO + sipedge::time::Duration::from_secs(later_s);
        let wall = WALL + later_s * 1_000_000;
        let Ok(m) = parse(msg, &mut self.index) else {
            return false;
        };
        // The proxy's check phase decodes them for every request, and hands
        // them to the registrar.
        let Ok(ess) = m.essentials() else {
            return false;
        };
        // The owner shard of the AoR (LocalService::owner), from the key the
        // check phase computes once for the owner and the registrar.
        let aor = ess.to.uri().ok().and_then(|u| AorKey::from_uri(&u).ok());
        black_box(aor.map(|k| k.partition(1)));
        let src = Peer::udp(src, SocketId(0));
        let ok = self
            .registrar
            .handle_register_with(now, wall, &m, &ess, aor.as_ref(), &src, &mut self.reply)
            .is_ok_and(|r| r.status == 200);
        self.records.clear();
        self.records.extend(self.registrar.drain_records());
        self.batch.clear();
        self.batch.extend(self.records.iter().cloned());
        for r in &self.records {
            self.replica.apply(r).unwrap();
        }
        ok
    }

    fn run(&mut self, msgs: &[Vec<u8>], later_s: u64) {
        for m in msgs {
            assert!(self.register(m, later_s));
        }
    }
}

/// Times `iters` REGISTERs from `msgs`, rounds of `msgs.len()` each from a
/// state `setup` builds (untimed).
fn timed(
    iters: u64,
    msgs: &[Vec<u8>],
    later_s: u64,
    setup: impl Fn() -> Shard,
    clock: &CpuTime,
) -> u64 {
    let mut left = iters as usize;
    let mut total = 0;
    while left > 0 {
        let mut shard = setup();
        let n = left.min(msgs.len());
        let t = clock.start();
        for m in &msgs[..n] {
            black_box(shard.register(black_box(m), later_s));
        }
        total += clock.end(t);
        left -= n;
        drop(black_box(shard));
    }
    total
}

/// Times `iters` replica applies of `recs`, rounds from `setup`'s replica.
fn timed_apply(iters: u64, recs: &[Record], setup: impl Fn() -> Replica, clock: &CpuTime) -> u64 {
    let mut left = iters as usize;
    let mut total = 0;
    while left > 0 {
        let mut replica = setup();
        let n = left.min(recs.len());
        let t = clock.start();
        for r in &recs[..n] {
            black_box(replica.apply(black_box(r)).unwrap());
        }
        total += clock.end(t);
        left -= n;
        drop(black_box(replica));
    }
    total
}

fn bench_register(c: &mut Criterion<CpuTime>) {
    let first = registers(USERS, 1);
    let refresh = registers(USERS, 2);
    let registered = {
        let mut s = Shard::new();
        s.run(&first, 0);
        s
    };
    let state = || {
        let mut s = Shard::new();
        s.run(&first, 0);
        s
    };
    let clock = CpuTime::new();

    let mut g = c.benchmark_group("register");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(6));
    g.bench_function("new", |b| {
        b.iter_custom(|iters| timed(iters, &first, 0, Shard::new, &clock));
    });
    g.bench_function("refresh", |b| {
        b.iter_custom(|iters| timed(iters, &refresh, LATER_S, state, &clock));
    });
    g.finish();

    // The records of each kind, and the replica alone applying them.
    let mut s = Shard::new();
    let mut new_recs = Vec::new();
    for m in &first {
        s.register(m, 0);
        new_recs.extend(s.records.iter().cloned());
    }
    let mut refresh_recs = Vec::new();
    for m in &refresh {
        s.register(m, LATER_S);
        refresh_recs.extend(s.records.iter().cloned());
    }
    assert_eq!(new_recs.len(), USERS);
    assert_eq!(refresh_recs.len(), USERS);
    let base = registered.replica.clone();
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("new", |b| {
        b.iter_custom(|iters| timed_apply(iters, &new_recs, || Replica::new(1, SEED), &clock));
    });
    g.bench_function("refresh", |b| {
        b.iter_custom(|iters| timed_apply(iters, &refresh_recs, || base.clone(), &clock));
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime::new());
    targets = bench_register
}
criterion_main!(benches);
