//! sipedge as a library: `examples/least_loaded.rs` (a help-desk proxy with
//! its own routing hook) runs calls end to end with SIPp — a call held on
//! operator A makes the next calls to `sip:desk@…` ring operator B, the
//! least loaded, not A in turn; once A's call ended, A is the least loaded
//! again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_udp_port, have_peer, sipp, sipp_report, Gateway, Reaped, TempDir, SIPP};

/// The example binary, built by `cargo test` beside this test's.
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples").join("least_loaded")
}

/// `calls` SIPp calls to sip:desk@EDGE, held `hold_ms`, one at a time.
fn call_desk(dir: &TempDir, name: &str, edge: SocketAddr, calls: u32, hold_ms: u32) -> Command {
    let mut c = sipp(dir, name, free_udp_port());
    c.args(["-sf", &format!("{SIPP}/uac.xml"), "-s", "desk"])
        .args(["-m", &calls.to_string(), "-l", "1", "-r", "10"])
        .args([
            "-d",
            &hold_ms.to_string(),
            "-timeout",
            "30s",
            "-timeout_error",
        ])
        .arg(edge.to_string());
    c
}

#[test]
fn the_embedded_help_desk_rings_the_least_loaded_operator() {
    if !have_peer("sipp") {
        return;
    }
    let exe = example();
    assert!(
        exe.exists(),
        "{} not built (cargo test builds examples)",
        exe.display()
    );
    let dir = TempDir::new("embed");
    let (a, b) = (
        Gateway::start(&dir, "opa", "uas.xml", &[]),
        Gateway::start(&dir, "opb", "uas.xml", &[]),
    );
    let mut child = Command::new(&exe)
        .args(["--listen", "udp:127.0.0.1:0", "--data-dir"])
        .arg(dir.path.join("data"))
        .args(["--operator", &format!("127.0.0.1:{}", a.port)])
        .args(["--operator", &format!("127.0.0.1:{}", b.port)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(10);
    let edge: SocketAddr = loop {
        assert!(Instant::now() < deadline, "the example did not start");
        let line = log.next().unwrap().unwrap();
        if let Some(rest) = line.split(" listen=udp:").nth(1) {
            break rest.split([' ', ',']).next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in log {});
    let _edge = Reaped::adopt("least_loaded", child);

    // A call held 4 s: operator A (both idle; the first wins ties).
    let mut held = call_desk(&dir, "held", edge, 1, 4000);
    let mut held = Reaped::spawn("sipp", &mut held);
    std::thread::sleep(Duration::from_millis(800));
    // Two short calls meanwhile: both to B (A holds one), not A then B.
    let st = call_desk(&dir, "short", edge, 2, 100).status().unwrap();
    assert!(st.success(), "{}", sipp_report(&dir, "short"));
    assert_eq!(b.completed(2), 2, "B took both calls while A was busy");
    let st = held.wait_for(Duration::from_secs(20)).unwrap();
    assert!(st.success(), "{}", sipp_report(&dir, "held"));
    assert_eq!(a.completed(1), 1);
    // A's call ended (its BYE): A and B are idle again; A wins the tie.
    let st = call_desk(&dir, "after", edge, 1, 100).status().unwrap();
    assert!(st.success(), "{}", sipp_report(&dir, "after"));
    assert_eq!(a.completed(2), 2, "A was the least loaded again");
    assert_eq!(b.completed(2), 2);
}
