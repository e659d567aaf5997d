//! Deterministic simulations of the stateful proxy (shared/STYLE.md, "Tests
//! → Deterministic simulation"): scripted RFC 3261 user agents talk through
//! [`Stateful`] over the virtual network of [`crate::sim`].
//!
//! | file | scenarios |
//! |---|---|
//! | `calls.rs` | whole calls; forks of two and three contacts: one answers, all fail, one 6xx |
//! | `cancel.rs` | CANCEL before the answer, CANCEL crossing a 200, forks that never answer |
//! | `faults.rs` | a retransmission storm; seeded loss, duplication and reordering |
//!
//! Every test asserts on what crossed the network and on what the agents
//! saw, never on the proxy's private state; the one number read from the
//! proxy is [`Stateful::live_transactions`], which must come back to 0.
//! `SIPEDGE_SEED=n cargo test sim_` replays one seed.

mod calls;
mod cancel;
mod faults;

use core::net::SocketAddr;
use std::collections::BTreeMap;

use crate::proxy::branch;
use crate::proxy::stateful::{Config, Found, Location, NoService, Stateful, Targets};
use crate::proxy::testutil::identity;
use crate::sim::{AgentId, Fate, Outcome, Sim, Uac, UacScript, Uas, UasScript};
use crate::time::{Duration, Instant};
use crate::txn::TimerConfig;

/// The proxy's public socket (SocketId 0) and its shard socket (SocketId 1), as in `testutil::identity`.
const PUBLIC: &str = "127.0.0.1:5060";
const SHARD: &str = "127.0.0.1:5070";
/// The AoR every UAC calls.
const BOB: &str = "sip:bob@example.test";
/// Steps any one run may take (far more than any scenario needs).
const MAX_STEPS: usize = 200_000;

/// `bob@example.test` has the given contacts (their source addresses too).
struct StaticLocation(Vec<SocketAddr>);

impl Location for StaticLocation {
    fn lookup(&self, aor: &[u8], _wall_us: u64, out: &mut Targets) -> Found {
        if aor != b"bob@example.test" {
            return Found::Unknown;
        }
        if self.0.is_empty() {
            return Found::NoBindings;
        }
        for a in &self.0 {
            out.push(format!("sip:bob@{a}").as_bytes(), b"", Some(*a), 1000);
        }
        Found::Contacts
    }
}

type Proxy = Stateful<StaticLocation, NoService>;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn uac_addr(i: usize) -> SocketAddr {
    addr(&format!("10.0.0.{}:5062", i + 1))
}

fn uas_addr(i: usize) -> SocketAddr {
    addr(&format!("192.0.2.{}:5060", i + 10))
}

/// One simulated call: the sim, its UACs and the UASes bob is registered at.
struct Call {
    sim: Sim<Proxy>,
    /// The proxy's timers (for the retransmission checks).
    timers: TimerConfig,
    uacs: Vec<AgentId<Uac>>,
    uases: Vec<AgentId<Uas>>,
}

impl Call {
    /// A proxy for which bob has one contact per script, a UAS on each, and one UAC per UAC script.
    fn new(seed: u64, uas: &[UasScript], uac: &[UacScript]) -> Self {
        Self::with_config(seed, Config::default(), uas, uac)
    }

    /// [`Call::new`] with the proxy configured by `cfg`.
    fn with_config(seed: u64, cfg: Config, uas: &[UasScript], uac: &[UacScript]) -> Self {
        let contacts: Vec<SocketAddr> = (0..uas.len()).map(uas_addr).collect();
        let timers = cfg.timers;
        let proxy = Stateful::new(identity(), cfg, StaticLocation(contacts), NoService);
        let mut sim = Sim::new(seed, proxy, &[addr(PUBLIC), addr(SHARD)]);
        let uases = uas
            .iter()
            .enumerate()
            .map(|(i, s)| sim.add(Uas::new(uas_addr(i), &format!("bob{i}"), *s)))
            .collect();
        let uacs = uac
            .iter()
            .enumerate()
            .map(|(i, s)| sim.add(Uac::new(uac_addr(i), addr(PUBLIC), s.clone())))
            .collect();
        Self {
            sim,
            timers,
            uacs,
            uases,
        }
    }

    fn uac(&self, i: usize) -> &Uac {
        self.sim.agent(self.uacs[i])
    }

    fn uas(&self, i: usize) -> &Uas {
        self.sim.agent(self.uases[i])
    }

    /// Runs until nothing is left to happen (every timer of every node ran out).
    fn run(&mut self) {
        assert!(
            self.sim.run_until_idle(MAX_STEPS),
            "the simulation did not go idle in {MAX_STEPS} steps"
        );
    }

    /// The invariants every call must end with, whatever the network did:
    /// - the UAC has a final response: 2xx (then a BYE answered 200 on every
    ///   dialog) or one failure, never both and never two different failures;
    /// - the proxy's own retransmissions keep to Timers A and E (§17.1.1.2,
    ///   §17.1.2.2), and it CANCELs a branch only after a provisional
    ///   response came from it (§9.1, §16.10);
    /// - the proxy holds no transaction any more.
    fn check(&self) {
        self.check_proxy_requests();
        for (i, _) in self.uacs.iter().enumerate() {
            let uac = self.uac(i);
            assert!(uac.is_done(), "uac {i} did not finish: {:?}", uac.outcome());
            let wire: Vec<u16> = uac
                .responses()
                .iter()
                .map(|r| r.1)
                .filter(|&c| c >= 200)
                .collect();
            let ok = wire.iter().any(|c| (200..300).contains(c));
            let mut failures: Vec<u16> = wire.iter().copied().filter(|&c| c >= 300).collect();
            failures.sort_unstable();
            failures.dedup();
            assert!(
                !ok || failures.is_empty(),
                "uac {i}: both a 2xx and a failure: {wire:?}"
            );
            assert!(failures.len() <= 1, "uac {i}: different failures: {wire:?}");
            match uac.outcome() {
                Outcome::Answered => {
                    for d in uac.dialogs() {
                        assert!(
                            d.bye_final == Some(200) || d.ended_by_remote,
                            "uac {i}: dialog {} did not end: its BYE got {:?}",
                            d.tag,
                            d.bye_final
                        );
                    }
                    assert!(
                        uac.finals().iter().all(|c| (200..300).contains(c)),
                        "{:?}",
                        uac.finals()
                    );
                }
                Outcome::Failed(_) => {
                    assert_eq!(uac.finals().len(), 1, "uac {i}: {:?}", uac.finals())
                }
                o => panic!("uac {i}: {o:?}"),
            }
        }
        for (i, _) in self.uacs.iter().enumerate() {
            let v = self.uac(i).violations();
            assert!(v.is_empty(), "uac {i}: {v:#?}");
        }
        for (j, _) in self.uases.iter().enumerate() {
            let v = self.uas(j).violations();
            assert!(v.is_empty(), "uas {j}: {v:#?}");
            let byes = self.uas(j).bye_finals();
            assert!(
                byes.iter().all(|b| *b == Some(200)),
                "uas {j}: its BYEs got {byes:?}"
            );
        }
        assert_eq!(
            self.sim.proxy().live_transactions(),
            0,
            "the proxy still holds transactions"
        );
    }
}

impl Call {
    /// Checks the requests the proxy sent on its client transactions (those
    /// with a transaction branch of its own; ACKs and stateless relays aside).
    fn check_proxy_requests(&self) {
        let (t1, t2) = (self.timers.t1, self.timers.t2);
        // (dest, branch, method) → send times.
        let mut sends: BTreeMap<(SocketAddr, String, String), Vec<Instant>> = BTreeMap::new();
        for r in self.sim.trace() {
            if r.fate != Fate::Sent || r.from != addr(SHARD) {
                continue;
            }
            let (Some(method), Some(br)) = (r.method(), r.branch()) else {
                continue;
            };
            if method == "ACK" || branch::txn_ref(br.as_bytes()).is_none() {
                continue;
            }
            if method == "CANCEL" {
                // §9.1: a provisional response on that branch came first.
                let had_1xx = self.sim.trace().iter().any(|p| {
                    p.fate == Fate::Delivered
                        && p.at <= r.at
                        && p.from == r.to
                        && p.status().is_some_and(|c| c < 200)
                        && p.branch().as_deref() == Some(br.as_str())
                });
                assert!(had_1xx, "CANCEL before any provisional response: {r}");
            }
            sends.entry((r.to, br, method)).or_default().push(r.at);
        }
        for ((dest, br, method), times) in sends {
            let invite = method == "INVITE";
            let max = if invite { 7 } else { 11 };
            assert!(
                times.len() <= max,
                "{method} to {dest} ({br}) sent {} times",
                times.len()
            );
            let mut interval = t1;
            for w in times.windows(2) {
                let gap = w[1] - w[0];
                // The wheel rounds each deadline up to its 1 ms tick.
                let ok = gap >= interval && gap <= interval + Duration::from_millis(2);
                assert!(ok, "{method} to {dest}: retransmitted after {gap:?}, expected {interval:?}: {times:?}");
                interval = interval.saturating_mul(2);
                if !invite {
                    interval = interval.min(t2);
                }
            }
        }
    }
}

/// A UAS that answers `code` after `after` ms.
fn answers(code: u16, after_ms: u64) -> UasScript {
    UasScript::answer(code, Duration::from_millis(after_ms))
}

/// A UAC calling bob, hanging up after `hold_ms`.
fn caller(hold_ms: u64) -> UacScript {
    UacScript {
        hold: Duration::from_millis(hold_ms),
        ..UacScript::call(BOB)
    }
}
