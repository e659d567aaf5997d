//! The metrics endpoint as an operator's Prometheus sees it: `sipedge run
//! --metrics-listen` serves `/metrics`, read here by a real parser (the
//! Python `prometheus_client` OpenMetrics parser), whose values move with
//! traffic, per shard; `/health` and `/ready`; wrong paths and methods get
//! 404 and 405; a client that sends nothing does not hold the endpoint.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{drivers, have_python_module, Proxy, TempDir, Ua};

/// An HTTP/1.1 request; the status and the body.
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: test\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {out:?}"));
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// Sample `name{labels}` → value, as the OpenMetrics parser of Python's
/// prometheus_client reads `text` (it raises on anything malformed).
fn parse(text: &str) -> HashMap<String, f64> {
    const PY: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        print(f"{fam.type} {s.name}{{{labels}}} {s.value}")
"#;
    let mut child = Command::new("python3")
        .args(["-c", PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let mut it = l.splitn(3, ' ');
            let (_ty, name, v) = (it.next(), it.next().unwrap(), it.next().unwrap());
            (name.to_owned(), v.parse::<f64>().unwrap())
        })
        .collect()
}

/// The sum over shards of sample `name` (`name{shard=…}`).
fn total(m: &HashMap<String, f64>, name: &str) -> f64 {
    total_with(m, name, &[])
}

/// The sum over shards of the samples `name{…}` that carry every label of
/// `labels` (written `key="value"`).
fn total_with(m: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            k.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('{'))
                .is_some_and(|l| labels.iter().all(|want| l.contains(want)))
        })
        .map(|(_, v)| v)
        .sum()
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn register(ua: &Ua, user: &str, to: SocketAddr) -> String {
    format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-m-{user};rport\r\n\
Max-Forwards: 70\r\nTo: <sip:{user}@127.0.0.1>\r\nFrom: <sip:{user}@127.0.0.1>;tag=m{user}\r\n\
Call-ID: metrics-{user}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{user}@{a}>\r\nExpires: 600\r\n\
Content-Length: 0\r\n\r\n",
        a = ua.addr,
    )
    .replace("{to}", &to.to_string())
}

#[test]
fn metrics_endpoint_serves_prometheus_health_and_ready() {
    if !have_python_module("prometheus_client") {
        return;
    }
    for d in drivers() {
        let dir = TempDir::new("metrics");
        let port = free_tcp_port();
        let maddr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut p = Proxy::start(&[
            "--io",
            d,
            "--domain",
            "127.0.0.1",
            "--shards",
            "2",
            "--data-dir",
            dir.arg(),
            "--metrics-listen",
            &maddr.to_string(),
            "--listen",
            "udp:127.0.0.1:0",
            "--listen",
            "tcp:127.0.0.1:0",
        ]);
        assert_eq!(http(maddr, "GET", "/health"), (200, "ok\n".into()), "{d}");
        assert_eq!(http(maddr, "GET", "/ready"), (200, "ready\n".into()), "{d}");
        assert_eq!(http(maddr, "GET", "/nope").0, 404, "{d}");
        assert_eq!(http(maddr, "POST", "/metrics").0, 405, "{d}");

        let (status, body) = http(maddr, "GET", "/metrics");
        assert_eq!(status, 200, "{d}");
        let before = parse(&body);
        // One sample per shard, labelled; the process is ready.
        for shard in ["0", "1"] {
            let k = format!("sipedge_proxy_requests_total{{shard=\"{shard}\"}}");
            assert!(before.contains_key(&k), "{d}: no {k} in\n{body}");
        }
        assert_eq!(before.get("sipedge_ready{}"), Some(&1.0), "{d}");

        // A client that sends nothing holds the endpoint for its timeout
        // (2 s) at most.
        let idle = TcpStream::connect(maddr).unwrap();
        let t0 = Instant::now();
        assert_eq!(http(maddr, "GET", "/health").0, 200, "{d}");
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "{d}: {:?}",
            t0.elapsed()
        );
        drop(idle);

        // Ten REGISTERs: the request and binding counters move (the shards
        // publish about once a second).
        const N: usize = 10;
        let ua = Ua::new();
        for i in 0..N {
            ua.send(&register(&ua, &format!("m{i}"), p.addr), p.addr);
            ua.expect_response(200, "REGISTER");
        }
        // Two idle TCP connections: the gauge by transport counts them.
        let tcp = p.listener("tcp");
        let _conns = [
            TcpStream::connect(tcp).unwrap(),
            TcpStream::connect(tcp).unwrap(),
        ];
        let tcp_open = |m: &HashMap<String, f64>| {
            total_with(m, "sipedge_transport_connections", &["transport=\"tcp\""])
        };
        let deadline = Instant::now() + Duration::from_secs(6);
        let after = loop {
            let m = parse(&http(maddr, "GET", "/metrics").1);
            let moved = total(&m, "sipedge_proxy_requests_total")
                - total(&before, "sipedge_proxy_requests_total");
            let settled = total(&m, "sipedge_registrar_bindings") >= N as f64
                && tcp_open(&m) >= 2.0
                && total(&m, "sipedge_store_records_total") >= N as f64;
            if (moved >= N as f64 && settled) || Instant::now() > deadline {
                break m;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let moved = |name: &str| total(&after, name) - total(&before, name);
        assert!(
            moved("sipedge_proxy_requests_total") >= N as f64,
            "{d}: requests moved by {}",
            moved("sipedge_proxy_requests_total")
        );
        assert!(
            moved("sipedge_shard_datagrams_received_total") >= N as f64,
            "{d}: datagrams moved by {}",
            moved("sipedge_shard_datagrams_received_total")
        );
        assert!(
            moved("sipedge_store_records_total") >= N as f64,
            "{d}: durable records moved by {}",
            moved("sipedge_store_records_total")
        );
        let register = total_with(
            &after,
            "sipedge_proxy_requests_by_method_total",
            &["method=\"REGISTER\""],
        );
        assert!(register >= N as f64, "{d}: REGISTERs by method: {register}");
        // The edge's own 200s, by class; each REGISTER's wait for its answer
        // (store write included) is in the response-time histogram.
        let ok2xx = total_with(
            &after,
            "sipedge_proxy_local_responses_by_class_total",
            &["class=\"2xx\""],
        );
        assert!(ok2xx >= N as f64, "{d}: local 2xx: {ok2xx}");
        let answered = total(&after, "sipedge_proxy_response_seconds_count");
        assert!(answered >= N as f64, "{d}: timed answers: {answered}");
        let bindings = total(&after, "sipedge_registrar_bindings");
        assert_eq!(bindings, N as f64, "{d}: the bindings gauge");
        // The bindings reached the other shard's replica: its lag histogram
        // counted them.
        let lag = total_with(
            &after,
            "sipedge_location_replication_lag_seconds_bucket",
            &["le=\"+Inf\""],
        );
        assert!(lag >= 1.0, "{d}: replication lag samples: {lag}");
        assert_eq!(tcp_open(&after), 2.0, "{d}: TCP connections by transport");
        // Every REGISTER's records went through a timed store append.
        let appends = total(&after, "sipedge_store_append_seconds_count");
        assert!(appends >= 1.0, "{d}: store appends timed: {appends}");
        // The turns that received the REGISTERs were timed, receive to flush.
        let turns = total(&after, "sipedge_shard_turn_seconds_count");
        assert!(turns >= 1.0, "{d}: timed turns: {turns}");
        p.terminate();
        // Gone with the process.
        assert!(
            TcpStream::connect_timeout(&maddr, Duration::from_secs(1)).is_err(),
            "{d}"
        );
    }
}
