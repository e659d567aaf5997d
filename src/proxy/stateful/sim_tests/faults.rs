//! Retransmission storms and seeded loss, duplication and reordering.

use super::*;
use crate::sim::{for_each_seed, Fate, Faults, NodeId, Rng};

/// A caller that retransmits every 10 ms (T1 = 10 ms) over a link that
/// triples each datagram, with a slow way back so that many copies go out
/// before the first response arrives. The proxy absorbs them: each request
/// reaches the UAS once per transaction, and every copy of the INVITE that
/// arrives before the 2xx gets the last provisional response replayed.
#[test]
fn sim_retransmission_storm() {
    for_each_seed(50, |seed| {
        let mut rng = Rng::new(seed);
        let uac = UacScript {
            timers: TimerConfig {
                t1: Duration::from_millis(10),
                ..TimerConfig::default()
            },
            ..caller(rng.range(0, 1_000))
        };
        let mut c = Call::new(seed, &[answers(200, rng.range(0, 400))], &[uac]);
        let uac_node = c.uacs[0].node();
        let storm = Faults {
            duplicate: 1.0,
            copies: rng.range(1, 3) as u8,
            latency: Duration::from_millis(1),
            ..Faults::NONE
        };
        let slow = Faults {
            latency: Duration::from_millis(rng.range(100, 300)),
            ..storm
        };
        c.sim.set_link(uac_node, NodeId::PROXY, storm);
        c.sim.set_link(NodeId::PROXY, uac_node, slow);
        c.run();
        c.check();
        let uas = c.uas(0);
        assert_eq!(uas.invite_copies(), 1, "one INVITE reaches the UAS");
        assert_eq!(uas.bye_copies(), 1, "one BYE reaches the UAS");
        let proxy_invites = c
            .sim
            .trace()
            .iter()
            .filter(|r| {
                r.fate == Fate::Sent
                    && r.to == uas_addr(0)
                    && r.method().as_deref() == Some("INVITE")
            })
            .count();
        assert_eq!(proxy_invites, 1, "the proxy had no reason to retransmit");

        // Every INVITE copy before the 2xx is answered by the last provisional (§17.2.1).
        let (mut expected, mut replayed, mut final_sent) = (0, 0, false);
        let mut invite_copies = 0;
        for r in c.sim.trace() {
            let to_proxy =
                r.fate == Fate::Delivered && (r.to == addr(PUBLIC) || r.to == addr(SHARD));
            if to_proxy && r.method().as_deref() == Some("INVITE") {
                invite_copies += 1;
                expected += usize::from(!final_sent);
            }
            if to_proxy && r.status() == Some(180) {
                expected += usize::from(!final_sent);
            }
            if r.fate == Fate::Sent
                && r.from == addr(PUBLIC)
                && r.cseq_method().as_deref() == Some("INVITE")
            {
                match r.status() {
                    Some(100..=199) => replayed += 1,
                    Some(200..=299) => final_sent = true,
                    _ => {}
                }
            }
        }
        assert!(invite_copies >= 3, "a storm: {invite_copies} INVITE copies");
        assert_eq!(
            replayed, expected,
            "one provisional per INVITE copy before the 2xx, plus the 180"
        );
    });
}

/// A UAS with a random behaviour.
fn random_uas(rng: &mut Rng) -> UasScript {
    let ms = |rng: &mut Rng, lo, hi| Duration::from_millis(rng.range(lo, hi));
    let trying = rng.chance(0.7);
    let ring = rng.chance(0.8).then(|| ms(rng, 0, 200));
    let answer = match rng.below(100) {
        0..=39 => Some((ms(rng, 50, 3_000), 200)),
        40..=64 => Some((ms(rng, 50, 1_000), *rng.pick(&[404, 480, 486, 503]))),
        65..=74 => Some((ms(rng, 100, 2_000), 603)),
        _ => None,
    };
    let hangup = rng.chance(0.3).then(|| ms(rng, 0, 3_000));
    UasScript {
        trying,
        ring,
        answer,
        hangup,
        timers: TimerConfig::default(),
    }
}

/// Random forks (1–3 contacts, random behaviours), one or two callers that
/// may CANCEL, and every link with its own loss (≤ 20 %), duplication
/// (≤ 10 %) and reordering jitter (≤ 100 ms). Every call ends, with one
/// outcome, and the proxy's table empties.
#[test]
fn sim_seeded_loss_duplication_reordering() {
    let mut tally = [0usize; 2];
    for_each_seed(200, |seed| {
        let mut rng = Rng::new(seed ^ 0x5151);
        let n_uas = rng.range(1, 3) as usize;
        let scripts: Vec<UasScript> = (0..n_uas).map(|_| random_uas(&mut rng)).collect();
        let n_uac = rng.range(1, 2) as usize;
        let uacs: Vec<UacScript> = (0..n_uac)
            .map(|_| UacScript {
                start: Duration::from_millis(rng.range(0, 500)),
                cancel_after: rng
                    .chance(0.3)
                    .then(|| Duration::from_millis(rng.range(0, 4_000))),
                hold: Duration::from_millis(rng.range(0, 3_000)),
                ..UacScript::call(BOB)
            })
            .collect();
        let mut c = Call::new(seed, &scripts, &uacs);
        let nodes: Vec<NodeId> = c
            .uacs
            .iter()
            .map(|a| a.node())
            .chain(c.uases.iter().map(|a| a.node()))
            .collect();
        for n in nodes {
            let up = Faults::random(&mut rng, 0.2, 0.1, Duration::from_millis(100));
            let down = Faults::random(&mut rng, 0.2, 0.1, Duration::from_millis(100));
            c.sim.set_link(n, NodeId::PROXY, up);
            c.sim.set_link(NodeId::PROXY, n, down);
        }
        c.run();
        c.check();
        for i in 0..n_uac {
            match c.uac(i).outcome() {
                Outcome::Answered => tally[0] += 1,
                _ => tally[1] += 1,
            }
        }
    });
    if crate::sim::seeds(2).count() > 1 {
        assert!(
            tally[0] > 20 && tally[1] > 20,
            "answered / failed: {tally:?}"
        );
    }
}

/// Several calls over a minute through one proxy with a short Timer C
/// (1–10 s, so it fires while branches ring and crosses their answers) and
/// a random T1, over lossy, duplicating, reordering links: every call still
/// ends with one outcome and the table empties (slots and their timers are
/// reused across calls).
#[test]
fn sim_many_calls_short_timer_c() {
    for_each_seed(100, |seed| {
        let mut rng = Rng::new(seed ^ 0xc0c0);
        let mut cfg = Config::default();
        cfg.timers.timer_c = Duration::from_millis(rng.range(1_000, 10_000));
        cfg.timers.t1 = Duration::from_millis(rng.range(100, 500));
        let n_uas = rng.range(1, 3) as usize;
        let scripts: Vec<UasScript> = (0..n_uas).map(|_| random_uas(&mut rng)).collect();
        let n_uac = rng.range(3, 6) as usize;
        let uacs: Vec<UacScript> = (0..n_uac)
            .map(|_| UacScript {
                start: Duration::from_millis(rng.range(0, 60_000)),
                cancel_after: rng
                    .chance(0.2)
                    .then(|| Duration::from_millis(rng.range(0, 4_000))),
                hold: Duration::from_millis(rng.range(0, 3_000)),
                ..UacScript::call(BOB)
            })
            .collect();
        let mut c = Call::with_config(seed, cfg, &scripts, &uacs);
        let nodes: Vec<NodeId> = c
            .uacs
            .iter()
            .map(|a| a.node())
            .chain(c.uases.iter().map(|a| a.node()))
            .collect();
        for n in nodes {
            let up = Faults::random(&mut rng, 0.2, 0.1, Duration::from_millis(100));
            let down = Faults::random(&mut rng, 0.2, 0.1, Duration::from_millis(100));
            c.sim.set_link(n, NodeId::PROXY, up);
            c.sim.set_link(NodeId::PROXY, n, down);
        }
        c.run();
        c.check();
    });
}
