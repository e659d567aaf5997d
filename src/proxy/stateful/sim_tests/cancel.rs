//! CANCEL (RFC 3261 §9, §16.10): before the answer, crossing a 200, and the
//! proxy's own CANCEL when Timer C fires (§16.8).

use super::*;
use crate::sim::{for_each_seed, Faults, Rng};

/// The caller gives up while it rings: 200 to the CANCEL, the CANCEL reaches
/// the UAS, whose 487 comes back to the UAC.
#[test]
fn sim_cancel_before_the_answer() {
    let uac = UacScript {
        cancel_after: Some(Duration::from_millis(800)),
        ..caller(500)
    };
    let mut c = Call::new(0, &[answers(200, 5_000)], &[uac]);
    c.run();
    c.check();
    let uac = c.uac(0);
    assert_eq!(uac.outcome(), Outcome::Failed(487));
    assert_eq!(uac.cancel_final(), Some(200));
    let uas = c.uas(0);
    assert_eq!(uas.cancel_transactions(), 1);
    assert_eq!(uas.finals_sent(), vec![Some(487)]);
    assert_eq!(uas.ack_timeouts(), 0);
}

/// The CANCEL and the 200 cross: the caller ends with a dialog (and hangs
/// up) or with 487, and nothing hangs. Over seeds, both outcomes happen.
#[test]
fn sim_cancel_crossing_a_200() {
    let mut answered = 0;
    let mut cancelled = 0;
    for_each_seed(200, |seed| {
        let mut rng = Rng::new(seed);
        let n = rng.range(1, 2) as usize;
        let answer_at = 1_000;
        // The CANCEL leaves within ±30 ms of the 200 (links of 1–20 ms).
        let cancel_at = answer_at - 30 + rng.range(0, 60);
        let scripts: Vec<UasScript> = (0..n).map(|_| answers(200, answer_at)).collect();
        let uac = UacScript {
            cancel_after: Some(Duration::from_millis(cancel_at)),
            ..caller(300)
        };
        let mut c = Call::new(seed, &scripts, &[uac]);
        c.sim.set_faults(Faults {
            latency: Duration::from_millis(rng.range(1, 20)),
            jitter: Duration::from_millis(rng.range(0, 10)),
            ..Faults::NONE
        });
        c.run();
        c.check();
        match c.uac(0).outcome() {
            Outcome::Answered => answered += 1,
            Outcome::Failed(487) => cancelled += 1,
            o => panic!("{o:?}"),
        }
    });
    if crate::sim::seeds(2).count() > 1 {
        assert!(
            answered > 0 && cancelled > 0,
            "answered {answered}, cancelled {cancelled}"
        );
    }
}

/// A fork that rings forever: Timer C fires (§16.6 step 11, §16.8) and the
/// proxy CANCELs it; the caller gets the 487.
#[test]
fn sim_timer_c_cancels_a_fork_that_rings_forever() {
    let mut c = Call::new(0, &[UasScript::never()], &[caller(0)]);
    c.run();
    c.check();
    assert_eq!(c.uac(0).outcome(), Outcome::Failed(487));
    assert_eq!(c.uas(0).cancel_transactions(), 1);
    let cancel = c
        .sim
        .trace()
        .iter()
        .find(|r| r.method().as_deref() == Some("CANCEL"))
        .expect("a CANCEL");
    assert!(
        cancel.at >= Instant::ZERO + Duration::from_secs(180),
        "Timer C is 3 min"
    );
}

/// A fork that only ever says 100 Trying is a pending transaction like any
/// other: Timer C runs from the moment the INVITE is forwarded (§16.6 step
/// 11), 100 counts as the provisional response a CANCEL waits for (§9.1),
/// and a caller's CANCEL reaches it.
#[test]
fn sim_a_fork_that_only_says_trying_is_cancelled() {
    let only_trying = UasScript {
        ring: None,
        ..UasScript::never()
    };
    // Nobody cancels: Timer C does.
    let mut c = Call::new(0, &[only_trying], &[caller(0)]);
    c.run();
    c.check();
    assert_eq!(c.uac(0).outcome(), Outcome::Failed(487));
    assert_eq!(c.uas(0).cancel_transactions(), 1);
    // The caller cancels: the CANCEL goes down at once.
    let uac = UacScript {
        cancel_after: Some(Duration::from_millis(500)),
        ..caller(0)
    };
    let mut c = Call::new(0, &[only_trying], &[uac]);
    c.run();
    c.check();
    assert_eq!(c.uac(0).outcome(), Outcome::Failed(487));
    let cancel = c
        .sim
        .trace()
        .iter()
        .find(|r| r.method().as_deref() == Some("CANCEL") && r.from == addr(SHARD))
        .expect("a CANCEL from the proxy");
    assert!(
        cancel.at < Instant::ZERO + Duration::from_secs(1),
        "{cancel}"
    );
}
