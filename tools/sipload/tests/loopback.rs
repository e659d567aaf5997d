//! sipload against itself over 127.0.0.1: every scenario in one process
//! (`--role both`), UAC and UAS as two processes, digest auth, and a lossy
//! relay in between that drops datagrams in a seeded pattern, so the
//! retransmission timers have to recover every call.
//!
//! Every run is bounded: a small --count, a --duration, and a kill after a
//! deadline.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sipload");

/// Waits for `child` at most `limit`, killing it after that; returns (exit code, stdout).
fn finish(mut child: Child, limit: Duration) -> (Option<i32>, String) {
    let deadline = Instant::now() + limit;
    let mut stdout = child.stdout.take();
    let reader = thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = stdout.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let code = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.code(),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    (code, reader.join().unwrap_or_default())
}

/// Runs sipload with `args` (plus --json --quiet) and returns (exit code, report).
fn sipload(args: &[&str], limit: Duration) -> (Option<i32>, Value) {
    let child = Command::new(BIN)
        .args(args)
        .args(["--json", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sipload");
    let (code, out) = finish(child, limit);
    let v: Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad JSON ({e}): {out:?}"));
    (code, v)
}

fn n(v: &Value, path: &str) -> u64 {
    let mut cur = v;
    for p in path.split('.') {
        cur = &cur[p];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

/// Checks the fields every report has, as documented in the README.
fn assert_well_formed(v: &Value) {
    for k in [
        "sipload_version",
        "role",
        "scenario",
        "target",
        "threads",
        "rate_target",
        "elapsed_s",
        "generation_s",
        "datagrams",
        "cpu",
        "failure_rate",
        "passed",
    ] {
        assert!(v.get(k).is_some(), "missing {k} in {v}");
    }
    for k in ["sent", "received", "send_dropped", "malformed"] {
        assert!(v["datagrams"][k].is_u64(), "datagrams.{k} in {v}");
    }
    if let Some(u) = v.get("uac").filter(|u| !u.is_null()) {
        for k in [
            "attempted",
            "succeeded",
            "failed",
            "retransmissions",
            "auth_challenges",
            "stray_responses",
        ] {
            assert!(u[k].is_u64(), "uac.{k} in {v}");
        }
        assert!(u["achieved_rate"].is_f64());
        for k in ["timeout", "unexpected", "send_error", "abandoned"] {
            assert!(u["failures"][k].is_u64(), "uac.failures.{k}");
        }
        assert!(u["failures"]["status"].is_object());
        for (_, l) in u["latency_us"].as_object().expect("latency_us") {
            for k in ["count", "min", "p50", "p90", "p99", "p999", "max"] {
                assert!(l[k].is_u64(), "latency field {k} in {l}");
            }
            assert!(l["p50"].as_u64() <= l["p99"].as_u64());
            assert!(l["p99"].as_u64() <= l["max"].as_u64());
        }
    }
}

fn both(scenario: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "--role",
        "both",
        "--scenario",
        scenario,
        "--uas-listen",
        "127.0.0.1:0",
        "--rate",
        "1000",
        "--count",
        "200",
        "--duration",
        "5s",
    ];
    args.extend_from_slice(extra);
    let (code, v) = sipload(&args, Duration::from_secs(60));
    assert_well_formed(&v);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(n(&v, "uac.attempted"), 200, "{v}");
    assert_eq!(n(&v, "uac.succeeded"), 200, "{v}");
    assert_eq!(n(&v, "uac.failed"), 0, "{v}");
    assert_eq!(v["passed"], Value::Bool(true));
    v
}

#[test]
fn call_in_one_process() {
    let v = both("call", &[]);
    assert_eq!(n(&v, "uac.latency_us.call_setup.count"), 200);
    assert_eq!(n(&v, "uac.latency_us.bye.count"), 200);
    assert_eq!(n(&v, "uas.calls_answered"), 200);
    assert_eq!(n(&v, "uas.calls_confirmed"), 200);
    assert_eq!(n(&v, "uas.calls_completed"), 200);
    // INVITE, 180, 200, ACK, BYE, 200 per call, each sent and received once.
    assert_eq!(n(&v, "datagrams.sent"), 1200);
    assert_eq!(n(&v, "datagrams.received"), 1200);
}

#[test]
fn call_with_two_threads_and_hold() {
    let v = both("call", &["--threads", "2", "--hold", "200ms"]);
    assert_eq!(n(&v, "uas.calls_completed"), 200);
}

#[test]
fn options_message_register() {
    for (s, kind, method) in [
        ("options", "options", "OPTIONS"),
        ("message", "message", "MESSAGE"),
        ("register", "register", "REGISTER"),
    ] {
        let v = both(s, &[]);
        assert_eq!(n(&v, &format!("uac.latency_us.{kind}.count")), 200, "{v}");
        assert_eq!(v["uas"]["requests"][method].as_u64(), Some(200), "{v}");
    }
}

#[test]
fn digest_auth_register_and_call() {
    let v = both(
        "register",
        &["--uas-auth", "--password", "secret", "--users", "50"],
    );
    assert_eq!(n(&v, "uac.auth_challenges"), 200);
    assert_eq!(n(&v, "uas.challenges_sent"), 200);
    assert_eq!(n(&v, "uas.auth_failures"), 0);
    let v = both(
        "call",
        &[
            "--uas-auth",
            "--uas-auth-alg",
            "sha256",
            "--password",
            "secret",
        ],
    );
    assert_eq!(n(&v, "uac.auth_challenges"), 200);
    // The 407 is ACKed, then the INVITE with credentials is ACKed after its 200.
    assert_eq!(v["uas"]["requests"]["ACK"].as_u64(), Some(400));
}

#[test]
fn wrong_password_fails_with_403_and_exit_code() {
    let (uas, addr) = start_uas(&["--uas-auth", "--password", "secret"]);
    let target = addr.to_string();
    let args = |pw: &'static str, extra: &'static [&'static str]| {
        let mut a = vec![
            "--role",
            "uac",
            "--scenario",
            "register",
            "--target",
            &target,
            "--password",
            pw,
            "--count",
            "10",
            "--rate",
            "100",
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        sipload(&a, Duration::from_secs(30))
    };
    let (code, v) = run(args("wrong", &[]));
    assert_well_formed(&v);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(
        v["uac"]["failures"]["status"]["403"].as_u64(),
        Some(10),
        "{v}"
    );
    // --max-failure-rate lets a run with failures pass.
    let (code, v) = run(args("wrong", &["--max-failure-rate", "1"]));
    assert_eq!(code, Some(0), "{v}");
    let (code, v) = run(args("secret", &[]));
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(n(&v, "uac.auth_challenges"), 10);
    stop(&uas);
    let (_, u) = finish(uas, Duration::from_secs(10));
    let u: Value = serde_json::from_str(u.trim()).expect("uas JSON");
    assert_eq!(n(&u, "uas.auth_failures"), 20, "{u}");
}

/// Starts `sipload --role uas` on an ephemeral port; returns it and its address.
fn start_uas(extra: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args([
            "--role",
            "uas",
            "--uas-listen",
            "127.0.0.1:0",
            "--duration",
            "60s",
            "--json",
            "--quiet",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn uas");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("uas exited early")
            .expect("read stderr");
        if let Some(a) = line.strip_prefix("sipload: uas listening on udp:") {
            break a.trim().parse().expect("address");
        }
    };
    // Keep draining stderr so the UAS never blocks on it.
    thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn stop(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

#[test]
fn uac_and_uas_as_two_processes() {
    let (uas, addr) = start_uas(&[]);
    let target = addr.to_string();
    let (code, v) = sipload(
        &[
            "--role",
            "uac",
            "--target",
            &target,
            "--rate",
            "1000",
            "--count",
            "200",
            "--duration",
            "5s",
        ],
        Duration::from_secs(60),
    );
    assert_well_formed(&v);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(n(&v, "uac.succeeded"), 200);
    assert!(v["uas"].is_null());
    stop(&uas);
    let (code, u) = finish(uas, Duration::from_secs(10));
    let u: Value = serde_json::from_str(u.trim()).expect("uas JSON");
    assert_well_formed(&u);
    assert_eq!(code, Some(0), "{u}");
    assert_eq!(n(&u, "uas.calls_completed"), 200);
    assert!(u["uac"].is_null());
}

/// A UDP relay between the UAC and the UAS that drops a seeded ~10% of the
/// datagrams in each direction.
struct LossyRelay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl LossyRelay {
    fn start(upstream: SocketAddr, seed: u64, loss_percent: u64) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind front");
        let back = UdpSocket::bind("127.0.0.1:0").expect("bind back");
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
        }
        let addr = front.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let mut threads = Vec::new();
        for dir in 0..2u64 {
            let (rx, tx) = if dir == 0 {
                (
                    front.try_clone().expect("clone"),
                    back.try_clone().expect("clone"),
                )
            } else {
                (
                    back.try_clone().expect("clone"),
                    front.try_clone().expect("clone"),
                )
            };
            let (stop, dropped, client) = (stop.clone(), dropped.clone(), client.clone());
            // xorshift64*, seeded per direction: the drop pattern is the same on every run.
            let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (dir + 1);
            threads.push(thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = rx.recv_from(&mut buf) else {
                        continue;
                    };
                    state ^= state >> 12;
                    state ^= state << 25;
                    state ^= state >> 27;
                    let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d) % 100;
                    if r < loss_percent {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let dest = if dir == 0 {
                        *client.lock().expect("lock") = Some(from);
                        Some(upstream)
                    } else {
                        *client.lock().expect("lock")
                    };
                    if let Some(d) = dest {
                        let _ = tx.send_to(&buf[..len], d);
                    }
                }
            }));
        }
        Self {
            addr,
            stop,
            dropped,
            threads,
        }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.dropped.load(Ordering::Relaxed)
    }
}

#[test]
fn retransmissions_recover_calls_through_a_lossy_relay() {
    let (uas, addr) = start_uas(&["--t1", "50ms", "--t2", "400ms"]);
    let relay = LossyRelay::start(addr, 7, 10);
    let target = relay.addr.to_string();
    let (code, v) = sipload(
        &[
            "--role",
            "uac",
            "--scenario",
            "call",
            "--target",
            &target,
            "--request-uri",
            &format!("sip:uas@{addr}"),
            "--rate",
            "200",
            "--count",
            "200",
            "--duration",
            "5s",
            "--t1",
            "50ms",
            "--t2",
            "400ms",
        ],
        Duration::from_secs(60),
    );
    let dropped = relay.stop();
    stop(&uas);
    let (_, u) = finish(uas, Duration::from_secs(10));
    let u: Value = serde_json::from_str(u.trim()).expect("uas JSON");
    assert_well_formed(&v);
    assert!(dropped > 50, "the relay dropped only {dropped}");
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(n(&v, "uac.succeeded"), 200, "{v}");
    assert!(n(&v, "uac.retransmissions") > 0, "{v}");
    // Lost ACKs make the UAS re-send its 2xx; lost responses make the UAC
    // retransmit requests, which the UAS absorbs.
    assert!(n(&u, "uas.retransmissions_sent") > 0, "{u}");
    assert!(n(&u, "uas.retransmissions_received") > 0, "{u}");

    // Non-INVITE transactions recover the same way.
    let (uas, addr) = start_uas(&["--t1", "50ms", "--t2", "400ms"]);
    let relay = LossyRelay::start(addr, 11, 10);
    let target = relay.addr.to_string();
    let (code, v) = sipload(
        &[
            "--role",
            "uac",
            "--scenario",
            "message",
            "--target",
            &target,
            "--rate",
            "200",
            "--count",
            "200",
            "--duration",
            "5s",
            "--t1",
            "50ms",
            "--t2",
            "400ms",
        ],
        Duration::from_secs(60),
    );
    relay.stop();
    stop(&uas);
    let _ = finish(uas, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(n(&v, "uac.succeeded"), 200, "{v}");
    assert!(n(&v, "uac.retransmissions") > 0, "{v}");
}

#[test]
fn total_loss_times_out_and_fails_the_run() {
    // Nothing listens at the target: every transaction times out after 64*T1.
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let target = sink.local_addr().expect("addr").to_string();
    let (code, v) = sipload(
        &[
            "--role",
            "uac",
            "--scenario",
            "options",
            "--target",
            &target,
            "--rate",
            "100",
            "--count",
            "5",
            "--t1",
            "10ms",
            "--t2",
            "40ms",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(n(&v, "uac.failures.timeout"), 5, "{v}");
    assert_eq!(v["passed"], Value::Bool(false));
    // Timer E doubles up to T2: 10, 20, 40, 40… ms until 640 ms.
    assert!(n(&v, "uac.retransmissions") >= 5 * 10, "{v}");
}

#[test]
fn uas_registers_its_users_before_the_calls() {
    // Another sipload UAS stands in for the registrar (it challenges, then answers 200).
    let (registrar, raddr) =
        start_uas(&["--uas-auth", "--password", "pw", "--domain", "example.test"]);
    let registrar_addr = raddr.to_string();
    let (code, v) = sipload(
        &[
            "--role",
            "both",
            "--uas-listen",
            "127.0.0.1:0",
            "--uas-register",
            "50",
            "--registrar",
            &registrar_addr,
            "--domain",
            "example.test",
            "--password",
            "pw",
            "--users",
            "50",
            "--request-uri",
            "sip:{user}@example.test",
            "--count",
            "100",
            "--rate",
            "1000",
            "--duration",
            "5s",
        ],
        Duration::from_secs(60),
    );
    assert_well_formed(&v);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(n(&v, "uas_register.succeeded"), 50, "{v}");
    assert_eq!(n(&v, "uas_register.auth_challenges"), 50, "{v}");
    assert_eq!(n(&v, "uac.succeeded"), 100, "{v}");
    stop(&registrar);
    let (_, r) = finish(registrar, Duration::from_secs(10));
    let r: Value = serde_json::from_str(r.trim()).expect("registrar JSON");
    assert_eq!(r["uas"]["requests"]["REGISTER"].as_u64(), Some(100), "{r}");
}

fn have_sipp() -> bool {
    Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// sipload's UAC against SIPp's built-in UAS, and SIPp's UAC against
/// sipload's UAS (skipped when sipp is not installed: apt-get install sip-tester).
#[test]
fn interop_with_sipp() {
    if !have_sipp() {
        eprintln!("sipp not installed: skipping");
        return;
    }
    let port = free_udp_port();
    let sipp_uas = Command::new("sipp")
        .args([
            "-sn",
            "uas",
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-nostdin",
            "-timeout",
            "30",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sipp");
    thread::sleep(Duration::from_millis(500));
    let target = format!("127.0.0.1:{port}");
    let (code, v) = sipload(
        &[
            "--role",
            "uac",
            "--target",
            &target,
            "--rate",
            "500",
            "--count",
            "200",
            "--duration",
            "5s",
        ],
        Duration::from_secs(60),
    );
    stop(&sipp_uas);
    let _ = finish(sipp_uas, Duration::from_secs(5));
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(n(&v, "uac.succeeded"), 200, "{v}");

    let (uas, addr) = start_uas(&[]);
    let dir = std::env::temp_dir().join(format!("sipload-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let uac_port = free_udp_port().to_string();
    let sipp_uac = Command::new("sipp")
        .current_dir(&dir)
        .args([
            "-sn",
            "uac",
            "-i",
            "127.0.0.1",
            "-p",
            &uac_port,
            "-r",
            "500",
            "-m",
            "200",
        ])
        .args([
            "-nostdin",
            "-timeout",
            "30",
            "-timeout_error",
            &addr.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sipp uac");
    let (sipp_code, _) = finish(sipp_uac, Duration::from_secs(40));
    stop(&uas);
    let (_, u) = finish(uas, Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
    let u: Value = serde_json::from_str(u.trim()).expect("uas JSON");
    assert_eq!(sipp_code, Some(0), "sipp's UAC failed calls: {u}");
    assert_eq!(n(&u, "uas.calls_completed"), 200, "{u}");
}
