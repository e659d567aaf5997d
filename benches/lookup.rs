//! Location benches: lookups per second on a replica of 1 M bindings (random
//! AoRs), the feed-apply rate, and the memory per binding (the replica's own
//! accounting and the process RSS growth, which includes allocator overhead).
//!
//! Run: `nice cargo bench --bench lookup`. `SIPEDGE_BENCH_BINDINGS=n`
//! changes the table size.
//!
//! Times are the bench thread's CPU time (`/proc/thread-self/schedstat`),
//! not wall time: on a machine shared with other work, time spent
//! descheduled is not the code's. `SIPEDGE_BENCH_WALL=1` measures wall time.
//! Random accesses to a table of a million AoRs are bound by memory latency
//! and TLB misses; `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (transparent huge
//! pages for the heap) shows how much of it is the TLB.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sipedge::location::{Binding, BindingParts, Lookup, Op, Record, Replica};
use sipedge::registrar::{Registrar, RegistrarConfig};
use sipedge::sip::{parse, HeaderIndex};
use sipedge::store::{LogConfig, LogStore, Store};
use sipedge::time::Instant;
use sipedge::transport::{Peer, SocketId};

mod common;
use common::{registers, CpuTime};

const SEED: u64 = 0x5eed_1234_abcd_0001;
const BATCH: usize = 1024;

fn bindings_wanted() -> usize {
    std::env::var("SIPEDGE_BENCH_BINDINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn aor(i: usize) -> String {
    format!("user{i:07}@example.com")
}

/// A typical softphone binding: contact with transport param, an RFC 5626
/// instance and reg-id, a Call-ID, a User-Agent, no Path.
fn binding(i: usize, id: u64) -> Binding {
    let a = aor(i);
    let contact = format!(
        "sip:user{i:07}@10.{}.{}.{}:5060;transport=udp",
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255
    );
    let instance = format!("<urn:uuid:{i:08x}-0000-1000-8000-aabbccddeeff>");
    let call_id = format!("{i:016x}-7f3a9c@10.0.0.1");
    Binding::new(&BindingParts {
        id,
        aor: a.as_bytes(),
        contact: contact.as_bytes(),
        expires: u64::MAX / 2,
        q: 1000,
        call_id: call_id.as_bytes(),
        cseq: 1,
        received: Some(std::net::SocketAddr::from((
            [203, 0, 113, (i & 255) as u8],
            40_000 + (i % 20_000) as u16,
        ))),
        socket: SocketId(0),
        flow: 0,
        path: b"",
        instance: instance.as_bytes(),
        reg_id: Some(1),
        user_agent: b"Linphone/5.2.0 (belle-sip/5.2.0)",
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn record(partition: u16, seq: u64, b: Binding) -> Record {
    Record {
        remote: false,
        partition,
        seq,
        commit: 0,
        op: Op::Upsert(b),
    }
}

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<usize>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

/// xorshift64*: a deterministic shuffle without an RNG crate.
struct Xs(u64);
impl Xs {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Random query keys, laid out flat in query order (so reading the keys is
/// sequential and the cost measured is the table's).
struct Queries {
    bytes: Vec<u8>,
    spans: Vec<(u32, u16)>,
}

impl Queries {
    fn new(n: usize, count: usize, hit: bool) -> Self {
        let count = count.next_power_of_two();
        let mut rng = Xs(0x1234_5678);
        let mut bytes = Vec::new();
        let mut spans = Vec::with_capacity(count);
        for _ in 0..count {
            let i = (rng.next() % n as u64) as usize;
            let k = if hit {
                aor(i)
            } else {
                format!("nobody{i:07}@example.com")
            };
            spans.push((bytes.len() as u32, k.len() as u16));
            bytes.extend_from_slice(k.as_bytes());
        }
        Self { bytes, spans }
    }

    fn key(&self, i: usize) -> &[u8] {
        // spans.len() is a power of two: a mask, not a division.
        let (at, len) = self.spans[i & (self.spans.len() - 1)];
        &self.bytes[at as usize..at as usize + usize::from(len)]
    }
}

fn build(n: usize, partitions: u16) -> Replica {
    let mut r = Replica::new(partitions, SEED);
    let mut seqs = vec![0u64; usize::from(partitions)];
    for i in 0..n {
        let p = sipedge::location::partition_of(aor(i).as_bytes(), partitions);
        let s = &mut seqs[usize::from(p)];
        *s += 1;
        r.apply(&record(p, *s, binding(i, *s)))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    r
}

fn bench_lookup(c: &mut Criterion<CpuTime>) {
    let n = bindings_wanted();
    let before = rss_bytes();
    let replica = build(n, 2);
    let after = rss_bytes();
    let sample = binding(1, 1);
    println!(
        "replica: {} bindings, {} AoRs; accounted {:.1} B/binding (block {} B for a typical binding of {} B full); RSS growth {:.1} B/binding",
        replica.len(),
        replica.aors(),
        replica.heap_bytes() as f64 / replica.len() as f64,
        6 + sample.aor().len() + 52 + sample.contact().len() + sample.instance().len(),
        sample.as_bytes().len(),
        after.saturating_sub(before) as f64 / replica.len() as f64,
    );
    let wall = 1_000_000;
    let mut g = c.benchmark_group("lookup");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.measurement_time(Duration::from_secs(5));
    g.sample_size(30);
    for (name, hit) in [("hit_1M", true), ("miss_1M", false)] {
        let q = Queries::new(n, 4 * n.max(1), hit);
        let mut at = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut sum = 0usize;
                for _ in 0..BATCH {
                    match replica.lookup(q.key(at), wall) {
                        Lookup::Found(mut it) => sum += it.next().map_or(0, |t| t.contact().len()),
                        Lookup::NoBindings => sum += 1,
                        Lookup::Unknown => sum += 2,
                    }
                    at += 1;
                }
                black_box(sum)
            });
        });
    }
    let q = Queries::new(n, 4 * n.max(1), true);
    let mut at = 0usize;
    g.bench_function("hit_1M_batch", |b| {
        b.iter(|| {
            let keys: Vec<&[u8]> = (0..BATCH).map(|i| q.key(at + i)).collect();
            at += BATCH;
            let mut sum = 0usize;
            replica.lookup_batch(&keys, wall, |_, l| match l {
                Lookup::Found(mut it) => sum += it.next().map_or(0, |t| t.contact().len()),
                Lookup::NoBindings => sum += 1,
                Lookup::Unknown => sum += 2,
            });
            black_box(sum)
        });
    });
    // A table that fits in the caches: the cost of the code path itself.
    let small = build(10_000, 2);
    let q = Queries::new(10_000, 40_000, true);
    let mut at = 0usize;
    g.bench_function("hit_10k_cached", |b| {
        b.iter(|| {
            let mut sum = 0usize;
            for _ in 0..BATCH {
                match small.lookup(q.key(at), wall) {
                    Lookup::Found(mut it) => sum += it.next().map_or(0, |t| t.contact().len()),
                    Lookup::NoBindings => sum += 1,
                    Lookup::Unknown => sum += 2,
                }
                at += 1;
            }
            black_box(sum)
        });
    });
    g.finish();
}

fn bench_apply(c: &mut Criterion<CpuTime>) {
    let n = 100_000;
    let records: Vec<Record> = (0..n)
        .map(|i| record(0, i as u64 + 1, binding(i, i as u64 + 1)))
        .collect();
    // Refreshes of existing AoRs (the steady state: re-REGISTERs).
    let refresh: Vec<Record> = (0..n)
        .map(|i| record(0, (n + i) as u64 + 1, binding(i, i as u64 + 1)))
        .collect();
    let mut g = c.benchmark_group("feed_apply");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("insert_100k", |b| {
        b.iter_batched(
            || Replica::new(1, SEED),
            |mut r| {
                for rec in &records {
                    let _ = r.apply(rec);
                }
                r
            },
            BatchSize::PerIteration,
        );
    });
    let mut base = Replica::new(1, SEED);
    for rec in &records {
        let _ = base.apply(rec);
    }
    g.bench_function("refresh_100k", |b| {
        b.iter_batched(
            || base.clone(),
            |mut r| {
                for rec in &refresh {
                    let _ = r.apply(rec);
                }
                r
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

fn registrar_cfg() -> RegistrarConfig {
    RegistrarConfig {
        domains: vec![b"example.com"[..].into()],
        ..RegistrarConfig::default()
    }
}

/// Parse + registrar + 200 written, per REGISTER; and the store's append.
fn bench_registrar(c: &mut Criterion<CpuTime>) {
    let n = 50_000;
    let first = registers(n, 1);
    let refresh = registers(n, 2);
    let src: std::net::SocketAddr = "198.51.100.7:40000"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let wall = 1_700_000_000_000_000;
    let run = |reg: &mut Registrar, msgs: &[Vec<u8>], idx: &mut HeaderIndex, out: &mut [u8]| {
        let mut ok = 0;
        for m in msgs {
            let Ok(msg) = parse(m, idx) else { continue };
            if let Ok(r) =
                reg.handle_register(Instant::ZERO, wall, &msg, &Peer::udp(src, SocketId(0)), out)
            {
                ok += usize::from(r.status == 200);
            }
            reg.drain_records().for_each(drop);
        }
        ok
    };
    let mut g = c.benchmark_group("registrar");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    let mut idx = HeaderIndex::default();
    let mut out = vec![0u8; 65_535];
    g.bench_function("register_new_50k", |b| {
        b.iter_batched(
            || Registrar::new(registrar_cfg(), 0, 1, Instant::ZERO),
            |mut reg| {
                assert_eq!(run(&mut reg, &first, &mut idx, &mut out), n);
                reg
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("register_refresh_50k", |b| {
        b.iter_batched(
            || {
                let mut reg = Registrar::new(registrar_cfg(), 0, 1, Instant::ZERO);
                let mut idx = HeaderIndex::default();
                let mut out = vec![0u8; 65_535];
                run(&mut reg, &first, &mut idx, &mut out);
                reg
            },
            |mut reg| {
                assert_eq!(run(&mut reg, &refresh, &mut idx, &mut out), n);
                reg
            },
            BatchSize::PerIteration,
        );
    });
    // The store: one append per "loop turn" of 64 records, no fsync.
    let dir = std::env::temp_dir().join(format!("sipedge-bench-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = LogConfig {
        data_dir: dir.clone(),
        compact_min_bytes: u64::MAX,
        ..LogConfig::default()
    };
    if let Ok(mut store) = LogStore::open(&cfg, 1) {
        if store.load(0).is_ok() {
            let mut seq = 0u64;
            let batch: Vec<Binding> = (0..64).map(|i| binding(i, i as u64 + 1)).collect();
            g.throughput(Throughput::Elements(64));
            g.bench_function("store_append_64", |b| {
                b.iter(|| {
                    let recs: Vec<Record> = batch
                        .iter()
                        .map(|x| {
                            seq += 1;
                            record(0, seq, x.clone())
                        })
                        .collect();
                    store.append(&recs).unwrap_or_else(|e| panic!("{e}"));
                });
            });
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime::new());
    targets = bench_lookup, bench_apply, bench_registrar
}
criterion_main!(benches);
