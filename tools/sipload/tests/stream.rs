//! sipload against itself over stream transports on 127.0.0.1: UAC and UAS
//! as two processes, straight over TCP and over TLS (a CA and a server
//! certificate made here with rcgen), a few hundred calls over several
//! connections, every one of which must succeed; and WS/WSS in one process.
//!
//! Every run is bounded: a small --count, a --duration, and a kill after a
//! deadline.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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

fn json(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad JSON ({e}): {out:?}"))
}

fn n(v: &Value, path: &str) -> u64 {
    let mut cur = v;
    for p in path.split('.') {
        cur = &cur[p];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

/// A CA and a server certificate for 127.0.0.1 signed by it, as PEM files
/// in a fresh directory: (ca.crt, server.crt, server.key).
fn certs(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = std::env::temp_dir().join(format!("sipload-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key")).expect("CA");
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    let cert = params.signed_by(&key, &*ca).expect("server cert");
    let paths = (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).expect("write");
    std::fs::write(&paths.1, cert.pem()).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    paths
}

/// Starts `sipload --role uas --transport T` on an ephemeral port.
fn start_uas(transport: &str, extra: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args([
            "--role",
            "uas",
            "--transport",
            transport,
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
    let prefix = format!("sipload: uas listening on {transport}:");
    let addr = loop {
        let line = lines
            .next()
            .expect("uas exited early")
            .expect("read stderr");
        if let Some(a) = line.strip_prefix(&prefix) {
            break a.trim().parse().expect("address");
        }
    };
    thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn stop(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

/// UAC → UAS as two processes over `transport`: 300 calls over 3
/// connections, all complete, the UAS saw every ACK and BYE, and no
/// request was retransmitted (reliable transport).
fn two_processes(transport: &str, uas_extra: &[&str], uac_extra: &[&str]) {
    let (uas, addr) = start_uas(transport, uas_extra);
    let target = addr.to_string();
    let uac = Command::new(BIN)
        .args([
            "--role",
            "uac",
            "--transport",
            transport,
            "--target",
            &target,
            "--connections",
            "3",
            "--rate",
            "1000",
            "--count",
            "300",
            "--duration",
            "5s",
            "--json",
            "--quiet",
        ])
        .args(uac_extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn uac");
    let (code, out) = finish(uac, Duration::from_secs(30));
    stop(&uas);
    let (_, uas_out) = finish(uas, Duration::from_secs(10));
    let v = json(&out);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(n(&v, "uac.attempted"), 300, "{v}");
    assert_eq!(n(&v, "uac.succeeded"), 300, "{v}");
    assert_eq!(n(&v, "uac.retransmissions"), 0, "{v}");
    let u = json(&uas_out);
    assert_eq!(n(&u, "uas.calls_answered"), 300, "{u}");
    assert_eq!(n(&u, "uas.calls_completed"), 300, "{u}");
    assert_eq!(n(&u, "uas.ack_timeouts"), 0, "{u}");
}

#[test]
fn tcp_uac_to_uas() {
    two_processes("tcp", &[], &[]);
}

#[test]
fn tls_uac_to_uas_verifying_the_certificate() {
    let (ca, cert, key) = certs("tls");
    let (ca, cert, key) = (
        ca.to_string_lossy().into_owned(),
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    two_processes(
        "tls",
        &["--tls-cert", &cert, "--tls-key", &key],
        &["--ca", &ca],
    );
}

#[test]
fn tls_without_trust_fails_every_call() {
    let (_, cert, key) = certs("untrusted");
    let (cert, key) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let (uas, addr) = start_uas("tls", &["--tls-cert", &cert, "--tls-key", &key]);
    let target = addr.to_string();
    // The UAC trusts its own (unrelated) CA: the handshake fails, no call completes.
    let (other_ca, _, _) = certs("other");
    let other_ca = other_ca.to_string_lossy().into_owned();
    let uac = Command::new(BIN)
        .args([
            "--role",
            "uac",
            "--transport",
            "tls",
            "--target",
            &target,
            "--ca",
            &other_ca,
            "--rate",
            "100",
            "--count",
            "5",
            "--duration",
            "2s",
            "--json",
            "--quiet",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn uac");
    let (code, out) = finish(uac, Duration::from_secs(30));
    stop(&uas);
    let _ = finish(uas, Duration::from_secs(10));
    let v = json(&out);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(n(&v, "uac.succeeded"), 0, "{v}");
}

#[test]
fn ws_and_wss_in_one_process() {
    let (_, cert, key) = certs("ws");
    let (cert, key) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    for transport in ["ws", "wss"] {
        let child = Command::new(BIN)
            .args([
                "--transport",
                transport,
                "--uas-listen",
                "127.0.0.1:0",
                "--threads",
                "2",
                "--connections",
                "4",
                "--rate",
                "1000",
                "--count",
                "200",
                "--duration",
                "5s",
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--insecure",
                "--json",
                "--quiet",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let (code, out) = finish(child, Duration::from_secs(30));
        let v = json(&out);
        assert_eq!(code, Some(0), "{transport}: {v}");
        assert_eq!(n(&v, "uac.succeeded"), 200, "{transport}: {v}");
        assert_eq!(n(&v, "uas.calls_completed"), 200, "{transport}: {v}");
    }
}

/// Calls started in bursts of 500 (a 50 ms tick at 10,000/s) over one TLS
/// connection: the UAS answers a few hundred requests per turn, more than a
/// TLS session holds between flushes (64 KiB); nothing may be dropped and
/// no 2xx re-sent. Three bursts: enough to catch the dropped responses (they
/// came back as 2xx re-sent at T1), few enough that a busy 2-core machine
/// drains them well within T1 (5,000 calls queued 600 ms there, and their
/// late ACKs drew 2xx re-sends with nothing lost).
#[test]
fn tls_bursts_over_one_connection_lose_nothing() {
    let (_, cert, key) = certs("burst");
    let (cert, key) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let child = Command::new(BIN)
        .args([
            "--transport",
            "tls",
            "--uas-listen",
            "127.0.0.1:0",
            "--connections",
            "1",
            "--rate",
            "10000",
            "--tick",
            "50ms",
            "--count",
            "1500",
            "--duration",
            "5s",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--insecure",
            "--json",
            "--quiet",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let (code, out) = finish(child, Duration::from_secs(60));
    let v = json(&out);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(n(&v, "uac.succeeded"), 1500, "{v}");
    assert_eq!(n(&v, "uas.calls_completed"), 1500, "{v}");
    assert_eq!(n(&v, "datagrams.send_dropped"), 0, "{v}");
    assert_eq!(n(&v, "uas.retransmissions_sent"), 0, "{v}");
}
