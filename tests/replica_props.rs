//! Property: a replica that applies the registrars' feeds in any batching,
//! with duplicates, with records of a partition arriving out of order (the
//! gap is detected, then filled by a later delivery or by a resync of the
//! partition), and across restarts from its own snapshot, ends in the
//! writers' state. Also: a registrar's snapshot is exactly the fold of its
//! own feed (what the store replays), so a restart from the store is too.
//!
//! Second property: the same feeds appended to the embedded log store in
//! any batching, with a compaction at any point, load back after a restart
//! as exactly the writers' state.
//!
//! Everything runs on virtual time; the writers are real `Registrar`s fed
//! real REGISTERs.

use proptest::prelude::*;
use sipedge::location::{partition_of, ApplyError, PartitionState, Record, Replica, StateBuilder};
use sipedge::registrar::{Registrar, RegistrarConfig};
use sipedge::sip::{parse, HeaderIndex};
use sipedge::store::{LogConfig, LogStore, Store};
use sipedge::time::{Duration, Instant};
use sipedge::transport::{Peer, SocketId};

const PARTITIONS: u16 = 3;
const WALL0: u64 = 1_700_000_000_000_000;

#[derive(Debug, Clone)]
enum Action {
    Register {
        user: u8,
        contact: u8,
        call: u8,
        expires: u32,
        instance: bool,
    },
    Unregister {
        user: u8,
        call: u8,
    },
    Advance(u64),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (0u8..6, 0u8..4, 0u8..3, prop::sample::select(vec![0u32, 60, 90, 600, 3600]), any::<bool>())
            .prop_map(|(user, contact, call, expires, instance)| Action::Register { user, contact, call, expires, instance }),
        1 => (0u8..6, 0u8..3).prop_map(|(user, call)| Action::Unregister { user, call }),
        2 => (1u64..400).prop_map(Action::Advance),
    ]
}

/// How the feed reaches the replica.
#[derive(Debug, Clone)]
enum Delivery {
    /// The next `n` records of a partition, in order.
    Batch { partition: u16, n: usize },
    /// An already-delivered record again.
    Duplicate { partition: u16, back: usize },
    /// The record after the next one first (a reordering): a gap.
    Skip { partition: u16, resync: bool },
    /// The replica restarts from its own snapshot.
    Restart,
}

fn delivery() -> impl Strategy<Value = Delivery> {
    prop_oneof![
        6 => (0..PARTITIONS, 1usize..6).prop_map(|(partition, n)| Delivery::Batch { partition, n }),
        2 => (0..PARTITIONS, 0usize..8).prop_map(|(partition, back)| Delivery::Duplicate { partition, back }),
        2 => (0..PARTITIONS, any::<bool>()).prop_map(|(partition, resync)| Delivery::Skip { partition, resync }),
        1 => Just(Delivery::Restart),
    ]
}

struct Writers {
    regs: Vec<Registrar>,
    feeds: Vec<Vec<Record>>,
    cseq: [[u32; 3]; 6],
    now: Instant,
    wall: u64,
    buf: Vec<u8>,
}

impl Writers {
    fn new() -> Self {
        let cfg = RegistrarConfig {
            domains: vec![b"example.com"[..].into()],
            max_contacts: 3,
            known_retention: Duration::from_secs(500),
            ..RegistrarConfig::default()
        };
        Self {
            regs: (0..PARTITIONS)
                .map(|p| Registrar::new(cfg.clone(), p, PARTITIONS, Instant::ZERO))
                .collect(),
            feeds: vec![Vec::new(); usize::from(PARTITIONS)],
            cseq: [[0; 3]; 6],
            now: Instant::ZERO,
            wall: WALL0,
            buf: vec![0; 65_535],
        }
    }

    fn register(&mut self, user: u8, call: u8, contact_lines: &str) {
        let aor = format!("user{user}@example.com");
        let p = partition_of(aor.as_bytes(), PARTITIONS);
        let c = &mut self.cseq[usize::from(user)][usize::from(call)];
        *c += 1;
        let raw = format!(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{user}x{call}x{c}\r\n\
To: <sip:{aor}>\r\nFrom: <sip:{aor}>;tag=t\r\nCall-ID: call{call}-{user}\r\nCSeq: {c} REGISTER\r\n\
{contact_lines}Content-Length: 0\r\n\r\n"
        );
        let mut idx = HeaderIndex::default();
        let msg = parse(raw.as_bytes(), &mut idx).expect("a valid REGISTER");
        let reg = &mut self.regs[usize::from(p)];
        reg.handle_register(
            self.now,
            self.wall,
            &msg,
            &Peer::udp("192.0.2.1:5060".parse().unwrap(), SocketId(0)),
            &mut self.buf,
        )
        .expect("answered");
        self.feeds[usize::from(p)].extend(reg.drain_records());
    }

    fn act(&mut self, a: &Action) {
        match *a {
            Action::Register {
                user,
                contact,
                call,
                expires,
                instance,
            } => {
                let inst = if instance {
                    format!(";+sip.instance=\"<urn:uuid:{user}-{contact}>\";reg-id=1")
                } else {
                    String::new()
                };
                self.register(
                    user,
                    call,
                    &format!(
                        "Contact: <sip:u{user}@10.0.{call}.{contact}>;expires={expires}{inst}\r\n"
                    ),
                );
            }
            Action::Unregister { user, call } => {
                self.register(user, call, "Contact: *\r\nExpires: 0\r\n")
            }
            Action::Advance(secs) => {
                self.now += Duration::from_secs(secs);
                self.wall += secs * 1_000_000;
                for (p, reg) in self.regs.iter_mut().enumerate() {
                    reg.handle_timeout(self.now, self.wall);
                    self.feeds[p].extend(reg.drain_records());
                }
            }
        }
    }

    fn states(&self) -> Vec<PartitionState> {
        self.regs.iter().map(Registrar::snapshot).collect()
    }
}

/// The state of partition `p` after its first `k` records.
fn fold(feed: &[Record], p: u16, k: usize) -> PartitionState {
    let mut b = StateBuilder::new(p);
    for r in &feed[..k] {
        b.apply(r);
    }
    b.finish(0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn replica_converges_to_the_writers(
        actions in prop::collection::vec(action(), 1..60),
        deliveries in prop::collection::vec(delivery(), 0..80),
        seed in any::<u64>(),
    ) {
        let mut w = Writers::new();
        for a in &actions {
            w.act(a);
        }
        let states = w.states();
        // The writer's snapshot is the fold of its feed (what a store replays).
        for (p, feed) in w.feeds.iter().enumerate() {
            let p16 = p as u16;
            prop_assert_eq!(&fold(feed, p16, feed.len()), &states[p]);
            for (i, r) in feed.iter().enumerate() {
                prop_assert_eq!(r.seq, i as u64 + 1);
            }
        }
        let oracle = Replica::from_states(PARTITIONS, 1, &states).unwrap();

        let mut replica = Replica::new(PARTITIONS, seed);
        // Next record to deliver in order, per partition.
        let mut next = vec![0usize; usize::from(PARTITIONS)];
        let mut restarts = 0u64;
        for d in &deliveries {
            match *d {
                Delivery::Batch { partition, n } => {
                    let p = usize::from(partition);
                    let feed = &w.feeds[p];
                    let end = (next[p] + n).min(feed.len());
                    for r in &feed[next[p]..end] {
                        prop_assert!(replica.apply(r).is_ok());
                    }
                    next[p] = next[p].max(end);
                }
                Delivery::Duplicate { partition, back } => {
                    let p = usize::from(partition);
                    if next[p] > 0 {
                        let r = &w.feeds[p][next[p] - 1 - back.min(next[p] - 1)];
                        prop_assert_eq!(replica.apply(r), Ok(sipedge::location::Applied::Duplicate));
                    }
                }
                Delivery::Skip { partition, resync } => {
                    let p = usize::from(partition);
                    let feed = &w.feeds[p];
                    if next[p] + 1 < feed.len() {
                        let later = &feed[next[p] + 1];
                        let before = replica.canonical();
                        let gap = replica.apply(later);
                        prop_assert_eq!(gap, Err(ApplyError::Gap {
                            partition,
                            expected: next[p] as u64 + 1,
                            got: next[p] as u64 + 2,
                        }));
                        prop_assert_eq!(replica.canonical(), before, "a gap changes nothing");
                        if resync {
                            // Resync the partition from the writer's state two records on.
                            replica.install(&fold(feed, partition, next[p] + 2)).unwrap();
                            next[p] += 2;
                        }
                        // Otherwise the missing record comes later, in a Batch.
                    }
                }
                Delivery::Restart => {
                    let snap = replica.snapshot();
                    prop_assert_eq!(snap.version(), replica.version());
                    restarts += 1;
                    replica = Replica::from_snapshot(&snap, seed ^ restarts);
                }
            }
            // Whatever happened, the replica holds a prefix of each feed.
            for p in 0..PARTITIONS {
                prop_assert_eq!(replica.version()[usize::from(p)], next[usize::from(p)] as u64);
            }
        }
        // Drain the rest, with every record delivered twice.
        for (p, feed) in w.feeds.iter().enumerate() {
            for r in &feed[next[p]..] {
                prop_assert!(replica.apply(r).is_ok());
                prop_assert_eq!(replica.apply(r), Ok(sipedge::location::Applied::Duplicate));
            }
        }
        prop_assert_eq!(replica.canonical(), oracle.canonical());
        prop_assert_eq!(replica.len(), oracle.len());
        prop_assert_eq!(replica.aors(), oracle.aors());
        let seqs: Vec<u64> = w.regs.iter().map(Registrar::seq).collect();
        prop_assert_eq!(replica.version(), &seqs[..]);
        // Lookups agree too.
        for user in 0..6 {
            let key = format!("user{user}@example.com");
            let a: Vec<Vec<u8>> = match replica.lookup(key.as_bytes(), w.wall) {
                sipedge::location::Lookup::Found(it) => it.map(|t| t.contact().to_vec()).collect(),
                sipedge::location::Lookup::NoBindings => vec![b"480".to_vec()],
                sipedge::location::Lookup::Unknown => vec![b"404".to_vec()],
            };
            let b: Vec<Vec<u8>> = match oracle.lookup(key.as_bytes(), w.wall) {
                sipedge::location::Lookup::Found(it) => it.map(|t| t.contact().to_vec()).collect(),
                sipedge::location::Lookup::NoBindings => vec![b"480".to_vec()],
                sipedge::location::Lookup::Unknown => vec![b"404".to_vec()],
            };
            prop_assert_eq!(a, b);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn store_restart_loads_the_writers_state(
        actions in prop::collection::vec(action(), 1..60),
        chunks in prop::collection::vec(1usize..9, 1..40),
        compact_after in 0usize..40,
        case in any::<u32>(),
    ) {
        let mut w = Writers::new();
        for a in &actions {
            w.act(a);
        }
        let dir = std::env::temp_dir().join(format!("sipedge-replica-props-{}-{case}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = LogConfig { data_dir: dir.clone(), ..LogConfig::default() };
        {
            let mut store = LogStore::open(&cfg, PARTITIONS).unwrap();
            prop_assert!(store.load(WALL0).unwrap().iter().all(|s| s.seq == 0));
            let mut stores = store.split();
            for (p, feed) in w.feeds.iter().enumerate() {
                let mut at = 0;
                for (turn, n) in chunks.iter().cycle().enumerate() {
                    if at >= feed.len() {
                        break;
                    }
                    let end = (at + n).min(feed.len());
                    stores[p].append(&feed[at..end]).unwrap();
                    at = end;
                    if turn == compact_after {
                        // The writer's state at this point is the fold of the records so far.
                        let mut b = StateBuilder::new(p as u16);
                        for r in &feed[..at] {
                            b.apply(r);
                        }
                        stores[p].compact(&b.finish(0)).unwrap();
                    }
                }
            }
        }
        let mut store = LogStore::open(&cfg, PARTITIONS).unwrap();
        let loaded = store.load(w.wall).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        prop_assert_eq!(&loaded, &w.states());
        // And a registrar restarted from it continues the feed where it stopped.
        for (p, st) in loaded.into_iter().enumerate() {
            let r = Registrar::from_state(RegistrarConfig::default(), PARTITIONS, st, w.now, w.wall);
            prop_assert_eq!(r.seq(), w.regs[p].seq());
            prop_assert_eq!(r.len(), w.regs[p].len());
        }
    }
}
