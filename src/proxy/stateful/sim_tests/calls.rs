//! Whole calls and forks (RFC 3261 §16.7: best response, 2xx forwarded at
//! once, the other branches CANCELled after a 2xx or a 6xx).

use super::*;
use crate::sim::{for_each_seed, Fate, Faults, Rng};

/// The messages of one call as they left each node, pinned. INVITE, 100
/// (proxy and UAS), 180, 200, ACK and BYE/200 go end to end through the
/// proxy, which Record-Routes; the ACK of the 2xx and the BYE follow the
/// route set.
#[test]
fn sim_whole_call_trace_is_pinned() {
    let mut c = Call::new(0, &[answers(200, 100)], &[caller(1_000)]);
    c.run();
    c.check();
    let trace = c.sim.trace_text(&[Fate::Sent]);
    let expected = r"
     0.000 send    10.0.0.1:5062 -> 127.0.0.1:5060 INVITE sip:bob@example.test SIP/2.0
     1.000 send    127.0.0.1:5060 -> 10.0.0.1:5062 SIP/2.0 100 Trying
     1.000 send    127.0.0.1:5070 -> 192.0.2.10:5060 INVITE sip:bob@192.0.2.10:5060 SIP/2.0
     2.000 send    192.0.2.10:5060 -> 127.0.0.1:5070 SIP/2.0 100 Trying
    12.000 send    192.0.2.10:5060 -> 127.0.0.1:5070 SIP/2.0 180 Ringing
    13.000 send    127.0.0.1:5060 -> 10.0.0.1:5062 SIP/2.0 180 Ringing
   102.000 send    192.0.2.10:5060 -> 127.0.0.1:5070 SIP/2.0 200 OK
   103.000 send    127.0.0.1:5060 -> 10.0.0.1:5062 SIP/2.0 200 OK
   104.000 send    10.0.0.1:5062 -> 127.0.0.1:5060 ACK sip:bob0@192.0.2.10:5060 SIP/2.0
   105.000 send    127.0.0.1:5070 -> 192.0.2.10:5060 ACK sip:bob0@192.0.2.10:5060 SIP/2.0
  1104.000 send    10.0.0.1:5062 -> 127.0.0.1:5060 BYE sip:bob0@192.0.2.10:5060 SIP/2.0
  1105.000 send    127.0.0.1:5070 -> 192.0.2.10:5060 BYE sip:bob0@192.0.2.10:5060 SIP/2.0
  1106.000 send    192.0.2.10:5060 -> 127.0.0.1:5070 SIP/2.0 200 OK
  1107.000 send    127.0.0.1:5060 -> 10.0.0.1:5062 SIP/2.0 200 OK
";
    assert_eq!(format!("\n{trace}"), expected, "\n{trace}");
    let uas = c.uas(0);
    assert_eq!(
        (
            uas.invite_copies(),
            uas.acks(),
            uas.bye_copies(),
            uas.ack_timeouts()
        ),
        (1, 1, 1, 0)
    );
    // The dialog's route set is the proxy's Record-Route.
    let ack = c
        .sim
        .trace()
        .iter()
        .find(|r| r.method().as_deref() == Some("ACK"))
        .unwrap();
    assert!(String::from_utf8_lossy(&ack.bytes).contains("Route: <sip:127.0.0.1:5060;lr>\r\n"));
}

/// Whole calls with random answer delays, hold times and jittery links: the
/// same end every time.
#[test]
fn sim_whole_calls_over_seeds() {
    for_each_seed(200, |seed| {
        let mut rng = Rng::new(seed);
        // Either side may hang up first, or both at once (crossing BYEs).
        let uas = UasScript {
            hangup: rng
                .chance(0.5)
                .then(|| Duration::from_millis(rng.range(0, 5_000))),
            ..answers(200, rng.range(0, 3_000))
        };
        let mut c = Call::new(seed, &[uas], &[caller(rng.range(0, 5_000))]);
        c.sim.set_faults(Faults {
            latency: Duration::from_millis(rng.range(1, 30)),
            jitter: Duration::from_millis(rng.range(0, 20)),
            ..Faults::NONE
        });
        c.run();
        c.check();
        assert_eq!(c.uac(0).outcome(), Outcome::Answered);
        assert_eq!(c.uac(0).dialogs().len(), 1);
        let uas = c.uas(0);
        let hung_up = !uas.bye_finals().is_empty();
        let ended_by_uas = c.uac(0).dialogs()[0].ended_by_remote;
        assert_eq!(hung_up, ended_by_uas, "the UAC saw the UAS's BYE");
        assert_eq!(uas.invite_transactions(), 1);
        assert_eq!(uas.ack_timeouts(), 0);
        assert!(uas.bye_transactions() <= 1);
    });
}

/// The callee hangs up: its BYE follows the route set (the proxy's
/// Record-Route) to the caller's Contact, and the 200 comes back the same way.
#[test]
fn sim_callee_hangs_up() {
    let uas = UasScript {
        hangup: Some(Duration::from_millis(500)),
        ..answers(200, 100)
    };
    let mut c = Call::new(0, &[uas], &[caller(5_000)]);
    c.run();
    c.check();
    assert!(c.uac(0).dialogs()[0].ended_by_remote);
    assert_eq!(
        c.uac(0).dialogs()[0].bye_final,
        None,
        "the caller sent no BYE"
    );
    assert_eq!(c.uas(0).bye_finals(), vec![Some(200)]);
    let byes: Vec<String> = c
        .sim
        .trace()
        .iter()
        .filter(|r| r.fate == Fate::Sent && r.cseq_method().as_deref() == Some("BYE"))
        .map(|r| format!("{} -> {} {}", r.from, r.to, r.first_line()))
        .collect();
    assert_eq!(
        byes,
        vec![
            "192.0.2.10:5060 -> 127.0.0.1:5060 BYE sip:alice@10.0.0.1:5062 SIP/2.0",
            "127.0.0.1:5070 -> 10.0.0.1:5062 BYE sip:alice@10.0.0.1:5062 SIP/2.0",
            "10.0.0.1:5062 -> 127.0.0.1:5070 SIP/2.0 200 OK",
            // Back from the socket the BYE came in on.
            "127.0.0.1:5060 -> 192.0.2.10:5060 SIP/2.0 200 OK",
        ]
    );
}

/// Two or three contacts, one answers 200: the UAC gets exactly one dialog;
/// every other fork is CANCELled and answers 487, which goes no further.
#[test]
fn sim_fork_one_answers() {
    for_each_seed(200, |seed| {
        let mut rng = Rng::new(seed);
        let n = rng.range(2, 3) as usize;
        let winner = rng.below(n as u64) as usize;
        let scripts: Vec<UasScript> = (0..n)
            .map(|i| {
                if i == winner {
                    answers(200, rng.range(50, 2_000))
                } else {
                    UasScript {
                        // Some forks only ever say 100 Trying.
                        ring: rng
                            .chance(0.5)
                            .then(|| Duration::from_millis(rng.range(1, 40))),
                        ..UasScript::never()
                    }
                }
            })
            .collect();
        let mut c = Call::new(seed, &scripts, &[caller(500)]);
        c.sim.set_faults(Faults {
            jitter: Duration::from_millis(rng.range(0, 20)),
            ..Faults::NONE
        });
        c.run();
        c.check();
        let uac = c.uac(0);
        assert_eq!(uac.outcome(), Outcome::Answered);
        assert_eq!(uac.dialogs().len(), 1);
        assert_eq!(uac.dialogs()[0].tag, format!("bob{winner}-0"));
        for i in 0..n {
            let uas = c.uas(i);
            assert_eq!(uas.invite_transactions(), 1);
            if i == winner {
                assert_eq!(uas.finals_sent(), vec![Some(200)]);
                assert_eq!(uas.cancel_transactions(), 0);
            } else {
                assert_eq!(uas.cancel_transactions(), 1, "fork {i} was not cancelled");
                assert_eq!(uas.finals_sent(), vec![Some(487)]);
                assert_eq!(uas.ack_timeouts(), 0, "the proxy ACKs the 487");
            }
        }
        let to_uac: Vec<u16> = uac
            .responses()
            .iter()
            .map(|r| r.1)
            .filter(|&c| c >= 200)
            .collect();
        assert!(to_uac.iter().all(|&c| c == 200), "{to_uac:?}");
    });
}

/// Every fork fails: the UAC gets one final response, the best by §16.7
/// step 6 (the lowest class; a 503 becomes 500), once.
#[test]
fn sim_fork_all_fail_gets_the_best() {
    const CODES: [u16; 7] = [302, 404, 480, 486, 500, 503, 504];
    for_each_seed(200, |seed| {
        let mut rng = Rng::new(seed);
        let n = rng.range(2, 3) as usize;
        let codes: Vec<u16> = (0..n).map(|_| *rng.pick(&CODES)).collect();
        let scripts: Vec<UasScript> = codes
            .iter()
            .map(|&code| answers(code, rng.range(0, 1_000)))
            .collect();
        let mut c = Call::new(seed, &scripts, &[caller(500)]);
        c.sim.set_faults(Faults {
            jitter: Duration::from_millis(rng.range(0, 20)),
            ..Faults::NONE
        });
        c.run();
        c.check();
        let best_class = codes.iter().map(|c| c / 100).min().unwrap();
        let Outcome::Failed(got) = c.uac(0).outcome() else {
            panic!("{:?}", c.uac(0).outcome())
        };
        let candidates: Vec<u16> = codes
            .iter()
            .filter(|&&c| c / 100 == best_class)
            .map(|&c| if c == 503 { 500 } else { c })
            .collect();
        assert!(candidates.contains(&got), "codes {codes:?}: got {got}");
        let finals: Vec<u16> = c
            .uac(0)
            .responses()
            .iter()
            .map(|r| r.1)
            .filter(|&c| c >= 200)
            .collect();
        assert_eq!(
            finals,
            vec![got],
            "one final response, not retransmitted: the UAC ACKs it"
        );
        for i in 0..n {
            assert_eq!(
                c.uas(i).ack_timeouts(),
                0,
                "fork {i}: the proxy ACKs every failure"
            );
        }
    });
}

/// A 6xx ends the fork: the others are CANCELled (487) and the 6xx is the
/// UAC's only final response.
#[test]
fn sim_fork_6xx_wins() {
    for_each_seed(200, |seed| {
        let mut rng = Rng::new(seed);
        let n = rng.range(2, 3) as usize;
        let decliner = rng.below(n as u64) as usize;
        let code = *rng.pick(&[600, 603, 604, 606]);
        let scripts: Vec<UasScript> = (0..n)
            .map(|i| {
                if i == decliner {
                    answers(code, rng.range(20, 1_000))
                } else if rng.chance(0.5) {
                    UasScript::never()
                } else {
                    // Would answer, but far later than the 6xx.
                    answers(200, 5_000)
                }
            })
            .collect();
        let mut c = Call::new(seed, &scripts, &[caller(500)]);
        c.sim.set_faults(Faults {
            jitter: Duration::from_millis(rng.range(0, 10)),
            ..Faults::NONE
        });
        c.run();
        c.check();
        assert_eq!(c.uac(0).outcome(), Outcome::Failed(code));
        for i in (0..n).filter(|&i| i != decliner) {
            assert_eq!(c.uas(i).cancel_transactions(), 1, "fork {i}");
            assert_eq!(c.uas(i).finals_sent(), vec![Some(487)], "fork {i}");
        }
    });
}

/// No binding and unknown users are answered by the proxy itself.
#[test]
fn sim_unknown_and_unregistered_users() {
    let mut c = Call::new(0, &[], &[UacScript::call("sip:nobody@example.test")]);
    c.run();
    c.check();
    assert_eq!(c.uac(0).outcome(), Outcome::Failed(404));
    let mut c = Call::new(0, &[], &[caller(0)]);
    c.run();
    c.check();
    assert_eq!(c.uac(0).outcome(), Outcome::Failed(480));
}
