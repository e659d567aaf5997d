//! The presence scenarios against a scripted notifier over 127.0.0.1:
//! PUBLISH (initial, then modifies carrying the last SIP-ETag, also across
//! runs through --etags-out / --etags-in) and SUBSCRIBE (each subscription's
//! first NOTIFY, then a fan-out of one NOTIFY per watcher with a
//! retransmission in it, which must not count twice).
//!
//! The notifier is a thread with one UDP socket that answers the way a
//! presence server does (RFC 3903, RFC 6665), with just enough parsing for
//! sipload's own messages. Every run is bounded by --count, --hold and a kill
//! deadline; the notifier stops when the test ends.

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sipload");

/// What the notifier saw and did.
#[derive(Default)]
struct Seen {
    /// PUBLISH without SIP-If-Match.
    initial: u64,
    /// PUBLISH whose SIP-If-Match was the last SIP-ETag given for its presentity.
    modify_ok: u64,
    /// PUBLISH with a SIP-If-Match we never gave (or an old one).
    modify_bad: u64,
    /// Last SIP-ETag per presentity (Request-URI).
    etags: HashMap<String, String>,
    /// Subscriptions: (watcher address, NOTIFY headers without CSeq).
    dialogs: Vec<(SocketAddr, String)>,
    /// 200s to our NOTIFYs.
    notify_ok: u64,
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.split("\r\n").find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Builds a 200 to `req`, its To tagged `tag` when it has none, plus `extra` lines.
fn ok(req: &str, tag: &str, extra: &str) -> String {
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for l in req.split("\r\n").skip(1) {
        if l.is_empty() {
            break;
        }
        let name = l
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "via" | "from" | "call-id" | "cseq" => out += &format!("{l}\r\n"),
            "to" if l.contains(";tag=") => out += &format!("{l}\r\n"),
            "to" => out += &format!("{l};tag={tag}\r\n"),
            _ => {}
        }
    }
    out + extra + "Content-Length: 0\r\n\r\n"
}

/// Runs the notifier until `stop`; `fanout`: send every subscription one more NOTIFY.
fn notifier(
    sock: UdpSocket,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    fanout: Arc<AtomicBool>,
) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(20)));
    let me = sock.local_addr().unwrap();
    let mut buf = vec![0u8; 65536];
    let mut etag_n = 0u64;
    let mut fanned = false;
    while !stop.load(Ordering::Relaxed) {
        if fanout.load(Ordering::Relaxed) && !fanned {
            fanned = true;
            let dialogs = seen.lock().unwrap().dialogs.clone();
            for (i, (to, hdrs)) in dialogs.iter().enumerate() {
                let n = format!(
                    "NOTIFY sip:w@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKu{i}\r\n{hdrs}CSeq: 2 NOTIFY\r\n\
Subscription-State: active;expires=3600\r\nContent-Length: 0\r\n\r\n"
                );
                sock.send_to(n.as_bytes(), to).unwrap();
                if i == 0 {
                    // A retransmission: the watcher answers it again but counts it once.
                    sock.send_to(n.as_bytes(), to).unwrap();
                }
            }
        }
        let Ok((len, src)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let msg = String::from_utf8_lossy(&buf[..len]).to_string();
        let mut s = seen.lock().unwrap();
        if msg.starts_with("SIP/2.0 200") {
            s.notify_ok += 1;
        } else if msg.starts_with("PUBLISH ") {
            let ruri = msg.split(' ').nth(1).unwrap_or("").to_string();
            match header(&msg, "SIP-If-Match") {
                None => s.initial += 1,
                Some(m) if s.etags.get(&ruri).map(String::as_str) == Some(m) => s.modify_ok += 1,
                Some(_) => s.modify_bad += 1,
            }
            etag_n += 1;
            let etag = format!("e{etag_n}");
            s.etags.insert(ruri, etag.clone());
            let r = ok(
                &msg,
                "srv",
                &format!("SIP-ETag: {etag}\r\nExpires: 3600\r\n"),
            );
            sock.send_to(r.as_bytes(), src).unwrap();
        } else if msg.starts_with("SUBSCRIBE ") {
            let r = ok(&msg, "srv", "Expires: 3600\r\n");
            sock.send_to(r.as_bytes(), src).unwrap();
            // The dialog as the notifier sees it: From and To swap.
            let hdrs = format!(
                "Max-Forwards: 70\r\nFrom: {};tag=srv\r\nTo: {}\r\nCall-ID: {}\r\nEvent: presence\r\n",
                header(&msg, "To").unwrap(),
                header(&msg, "From").unwrap(),
                header(&msg, "Call-ID").unwrap()
            );
            let n = format!(
                "NOTIFY sip:w@{src} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKi{}\r\n{hdrs}CSeq: 1 NOTIFY\r\n\
Subscription-State: active;expires=3600\r\nContent-Length: 0\r\n\r\n",
                s.dialogs.len()
            );
            sock.send_to(n.as_bytes(), src).unwrap();
            s.dialogs.push((src, hdrs));
        }
    }
}

struct Server {
    addr: String,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    fanout: Arc<AtomicBool>,
}

impl Server {
    fn start() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let fanout = Arc::new(AtomicBool::new(false));
        let (s, st, f) = (seen.clone(), stop.clone(), fanout.clone());
        thread::spawn(move || notifier(sock, s, st, f));
        Self {
            addr,
            seen,
            stop,
            fanout,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits for `child` at most `limit` (killing it after that); returns its exit code and report.
fn finish(mut child: Child, limit: Duration) -> (Option<i32>, Value) {
    let deadline = Instant::now() + limit;
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
    let mut out = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut out);
    let v = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad JSON ({e}): {out:?}"));
    (code, v)
}

/// Starts `sipload --role uac` at `rate` per second.
fn spawn(rate: &str, args: &[&str]) -> Child {
    Command::new(BIN)
        .args(["--role", "uac", "--json", "--quiet", "--rate", rate])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sipload")
}

fn n(v: &Value, path: &str) -> u64 {
    let mut cur = v;
    for p in path.split('.') {
        cur = &cur[p];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

#[test]
fn publish_modifies_with_the_last_etag_across_runs() {
    let srv = Server::start();
    let dir = std::env::temp_dir().join(format!("sipload-etags-{}", std::process::id()));
    let etags = dir.to_string_lossy().to_string();
    let args = [
        "--scenario",
        "publish",
        "--target",
        &srv.addr,
        "--presentities",
        "5",
    ];
    // 100/s over 5 presentities: a presentity's next PUBLISH starts 50 ms
    // after its last, long after that one's 200 brought the SIP-ETag.
    let child = spawn(
        "100",
        &[&args[..], &["--count", "15", "--etags-out", &etags]].concat(),
    );
    let (code, v) = finish(child, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(n(&v, "uac.succeeded"), 15);
    assert_eq!(n(&v, "uac.latency_us.publish.count"), 5);
    assert_eq!(n(&v, "uac.latency_us.publish_modify.count"), 10);
    assert!(v["uac"]["first_start_unix_us"].as_u64().unwrap() >= n(&v, "epoch_unix_us"));
    let saved = std::fs::read_to_string(&dir).unwrap();
    assert_eq!(saved.lines().count(), 5, "{saved}");
    // A second process picks up where the first left off: modifies only.
    let child = spawn(
        "100",
        &[&args[..], &["--count", "5", "--etags-in", &etags]].concat(),
    );
    let (code, v) = finish(child, Duration::from_secs(20));
    let _ = std::fs::remove_file(&dir);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(n(&v, "uac.latency_us.publish_modify.count"), 5);
    let s = srv.seen.lock().unwrap();
    assert_eq!((s.initial, s.modify_ok, s.modify_bad), (5, 15, 0));
}

#[test]
fn subscribe_counts_the_first_notify_then_the_fanout_once() {
    let srv = Server::start();
    let child = spawn(
        "2000",
        &[
            "--scenario",
            "subscribe",
            "--target",
            &srv.addr,
            "--presentities",
            "3",
            "--users",
            "20",
            "--count",
            "20",
            "--hold",
            "20s",
            "--expect-notifies",
            "20",
        ],
    );
    // Once every watcher has its subscription and its first NOTIFY, the state changes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.seen.lock().unwrap().notify_ok < 20 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    srv.fanout.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let (code, v) = finish(child, Duration::from_secs(30));
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "did not end on --expect-notifies"
    );
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(n(&v, "uac.succeeded"), 20);
    assert_eq!(n(&v, "uac.notify.initial"), 20);
    assert_eq!(n(&v, "uac.notify.updates"), 20);
    assert_eq!(n(&v, "uac.notify.retransmissions"), 1);
    assert_eq!(n(&v, "uac.notify.stray"), 0);
    assert_eq!(n(&v, "uac.notify.active_subscriptions"), 20);
    assert!(n(&v, "uac.notify.last_update_unix_us") >= n(&v, "uac.notify.first_update_unix_us"));
    let s = srv.seen.lock().unwrap();
    // Every NOTIFY answered, the retransmission too.
    assert_eq!(s.notify_ok, 41);
    // Watchers are spread over the presentities: Request-URIs pres0..pres2.
    assert_eq!(s.dialogs.len(), 20);
}
