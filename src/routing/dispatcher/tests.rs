use super::*;

fn dest(port: u16, weight: u32, priority: u32) -> DestConfig {
    DestConfig {
        uri: format!("sip:127.0.0.1:{port}"),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        transport: Transport::Udp,
        weight,
        priority,
        max_load: 0,
    }
}

fn set(algorithm: Algorithm, dests: Vec<DestConfig>) -> SetConfig {
    SetConfig {
        name: "gw".into(),
        domains: vec!["pstn.example.test".into()],
        dests,
        algorithm,
        probe_interval: Duration::from_secs(2),
        probe_timeout: Duration::from_millis(500),
        failures_down: 1,
        successes_up: 2,
        attempts: 3,
        call_timeout: Duration::from_secs(3600),
        fork_timeout: Duration::from_secs(2),
        group: None,
    }
}

fn three(algorithm: Algorithm) -> Dispatcher {
    Dispatcher::new(
        &[set(
            algorithm,
            vec![dest(1, 1, 2), dest(2, 1, 1), dest(3, 1, 3)],
        )],
        Instant::ZERO,
    )
}

fn spread(d: &mut Dispatcher, n: usize, key: impl Fn(usize) -> u64) -> Vec<usize> {
    let mut c = vec![0; 3];
    for i in 0..n {
        if let Some(x) = d.select(0, key(i), &[]) {
            c[usize::from(x)] += 1;
        }
    }
    c
}

#[test]
fn domains_choose_the_set() {
    let d = three(Algorithm::RoundRobin);
    assert_eq!(d.set_for_domain(b"PSTN.example.test"), Some(0));
    assert_eq!(d.set_for_domain(b"pstn.example.test."), Some(0));
    assert_eq!(d.set_for_domain(b"example.test"), None);
}

#[test]
fn round_robin_spreads_evenly_and_skips_the_tried() {
    let mut d = three(Algorithm::RoundRobin);
    assert_eq!(spread(&mut d, 300, |_| 0), [100, 100, 100]);
    let a = d.select(0, 0, &[]).unwrap();
    let b = d.select(0, 0, &[a]).unwrap();
    let c = d.select(0, 0, &[a, b]).unwrap();
    assert!(a != b && b != c && a != c);
    assert_eq!(d.select(0, 0, &[a, b, c]), None);
}

#[test]
fn weighted_follows_the_weights_smoothly() {
    let mut d = Dispatcher::new(
        &[set(
            Algorithm::Weighted,
            vec![dest(1, 3, 0), dest(2, 1, 0), dest(3, 0, 0)],
        )],
        Instant::ZERO,
    );
    // Weight 0 counts as 1: 3:1:1.
    assert_eq!(spread(&mut d, 500, |_| 0), [300, 100, 100]);
    // Smooth: never three of the heavy one in a row within a cycle of 5.
    let seq: Vec<u16> = (0..5).map(|_| d.select(0, 0, &[]).unwrap()).collect();
    assert!(
        seq.windows(3)
            .all(|w| !(w[0] == 0 && w[1] == 0 && w[2] == 0)),
        "{seq:?}"
    );
}

#[test]
fn hash_sticks_and_moves_only_the_dead_ones_calls() {
    let mut d = three(Algorithm::Hash(HashKey::CallId));
    let keys: Vec<u64> = (0..3000u64)
        .map(|i| crate::hash::hash_bytes(7, &i.to_le_bytes()))
        .collect();
    let first: Vec<u16> = keys.iter().map(|&k| d.select(0, k, &[]).unwrap()).collect();
    let again: Vec<u16> = keys.iter().map(|&k| d.select(0, k, &[]).unwrap()).collect();
    assert_eq!(first, again);
    let per: Vec<usize> = (0..3)
        .map(|x| first.iter().filter(|&&f| f == x).count())
        .collect();
    assert!(per.iter().all(|&c| (800..1200).contains(&c)), "{per:?}");
    assert!(d.set_state("gw", "sip:127.0.0.1:2", State::Down));
    for (k, f) in keys.iter().zip(&first) {
        let now = d.select(0, *k, &[]).unwrap();
        if *f != 1 {
            assert_eq!(now, *f, "a call of a live destination moved");
        } else {
            assert_ne!(now, 1);
        }
    }
}

#[test]
fn priority_takes_the_lowest_then_the_next() {
    let mut d = three(Algorithm::Priority);
    assert_eq!(d.select(0, 0, &[]), Some(1));
    assert_eq!(d.select(0, 0, &[1]), Some(0));
    d.set_state("gw", "sip:127.0.0.1:2", State::Down);
    assert_eq!(d.select(0, 0, &[]), Some(0));
}

#[test]
fn least_loaded_takes_the_fewest_calls_and_honours_max_load() {
    let mut d = three(Algorithm::LeastLoaded);
    for _ in 0..3 {
        d.call_started(0, 0);
    }
    d.call_started(0, 2);
    assert_eq!(d.select(0, 0, &[]), Some(1));
    d.call_started(0, 1);
    d.call_started(0, 1);
    assert_eq!(d.select(0, 0, &[]), Some(2));
    let mut cfg = set(Algorithm::LeastLoaded, vec![dest(1, 1, 0)]);
    cfg.dests[0].max_load = 2;
    let mut d = Dispatcher::new(&[cfg], Instant::ZERO);
    d.call_started(0, 0);
    assert_eq!(d.select(0, 0, &[]), Some(0));
    d.call_started(0, 0);
    assert_eq!(d.select(0, 0, &[]), None);
}

/// Runs the probes of `d` answering each by `answer(dest)` (None: no
/// answer) for `secs` seconds in 100 ms steps, from `t`; returns the time.
fn run(
    d: &mut Dispatcher,
    mut t: Instant,
    secs: u64,
    answer: impl Fn(u16) -> Option<u16>,
) -> Instant {
    let end = t + Duration::from_secs(secs);
    while t < end {
        d.handle_timeout(t);
        while let Some(p) = d.poll_probe() {
            if let Some(code) = answer(p.dest) {
                d.probe_outcome(p.token, code);
            }
        }
        t += Duration::from_millis(100);
    }
    t
}

#[test]
fn probes_take_a_silent_destination_down_within_three_intervals_and_back() {
    let mut d = three(Algorithm::RoundRobin);
    let t = run(&mut d, Instant::ZERO, 5, |_| Some(200));
    assert!(d.status().iter().all(|s| s.state == State::Active));
    // Destination 1 stops answering: down within 3 intervals (6 s).
    let t = run(&mut d, t, 6, |x| (x != 1).then_some(200));
    assert_eq!(d.status()[1].state, State::Down);
    assert_eq!(spread(&mut d, 10, |_| 0)[1], 0);
    // It answers again: probing after one probe, active after two.
    let t = run(&mut d, t, 2, |_| Some(200));
    assert_ne!(d.status()[1].state, State::Down);
    let _ = run(&mut d, t, 4, |_| Some(200));
    assert_eq!(d.status()[1].state, State::Active);
    // A 5xx to a probe is a failure too; a 404 is an answer.
    let mut d = three(Algorithm::RoundRobin);
    let _ = run(&mut d, Instant::ZERO, 3, |x| {
        Some(if x == 0 { 500 } else { 404 })
    });
    let st: Vec<State> = d.status().iter().map(|s| s.state).collect();
    assert_eq!(st, [State::Down, State::Active, State::Active]);
}

#[test]
fn a_late_probe_answer_is_not_counted_twice() {
    let mut d = three(Algorithm::RoundRobin);
    let mut t = Instant::ZERO;
    let mut late = Vec::new();
    while t < Instant::ZERO + Duration::from_secs(3) {
        d.handle_timeout(t);
        while let Some(p) = d.poll_probe() {
            late.push(p.token);
        }
        t += Duration::from_millis(100);
    }
    // Let the last ones time out too (new probes go out, unanswered).
    d.handle_timeout(t + Duration::from_millis(600));
    while d.poll_probe().is_some() {}
    // Every probe timed out: down; answers now are stale and ignored.
    assert!(
        d.status().iter().all(|s| s.state == State::Down),
        "{:?}",
        d.status()
    );
    for tok in late {
        d.probe_outcome(tok, 200);
    }
    assert!(d.status().iter().all(|s| s.state == State::Down));
}

#[test]
fn a_503_with_retry_after_holds_the_destination_down_that_long() {
    let mut d = three(Algorithm::RoundRobin);
    d.failed(Instant::ZERO, 0, 2, 503, Some(5));
    assert_eq!(d.status()[2].state, State::Down);
    // Probes answered meanwhile do not bring it back before the time.
    let t = run(&mut d, Instant::ZERO, 4, |_| Some(200));
    assert_eq!(d.status()[2].state, State::Down);
    let _ = run(&mut d, t, 6, |_| Some(200));
    assert_eq!(d.status()[2].state, State::Active);
    // A 500 moves the call on but leaves the state alone.
    d.failed(Instant::ZERO, 0, 0, 500, None);
    assert_eq!(d.status()[0].state, State::Active);
}

#[test]
fn loads_return_to_zero_after_any_mix_of_outcomes() {
    let mut d = three(Algorithm::LeastLoaded);
    let mut t = Instant::ZERO;
    let mut answered = Vec::new();
    for i in 0..3000u64 {
        let x = d.select(0, 0, &[]).unwrap();
        d.call_started(0, x);
        match i % 5 {
            0 | 1 => {
                d.call_answered(t, 0, x, i);
                answered.push(i);
            }
            2 => d.call_failed(0, x), // CANCEL / 487
            3 => d.call_failed(0, x), // 5xx
            _ => {
                // A second attempt of a call already answered (same Call-ID).
                d.call_answered(t, 0, x, i - 1);
            }
        }
        t += Duration::from_millis(1);
    }
    assert!(d.status().iter().map(|s| s.load).sum::<u32>() > 0);
    // Half end with a BYE, a BYE for an unknown call changes nothing, the rest time out.
    for c in answered.iter().step_by(2) {
        assert!(d.dialog_ended(*c));
    }
    assert!(!d.dialog_ended(u64::MAX));
    d.handle_timeout(t + Duration::from_secs(3601));
    assert_eq!(d.dialogs(), 0);
    assert!(d.status().iter().all(|s| s.load == 0), "{:?}", d.status());
}
