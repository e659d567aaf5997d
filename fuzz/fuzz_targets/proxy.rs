//! The sans-IO stateful proxy driven by sequences of operations (in the
//! style of quinn's stream fuzzer): requests from several peers (new
//! INVITEs to a dispatcher set and to an upstream, CANCEL, ACK, BYE, MESSAGE),
//! responses of any status to anything the proxy sent (forwarded requests,
//! CANCELs, dispatcher probes), raw datagrams, and time steps. Invariants:
//! nothing panics; after five quiet minutes every transaction has ended,
//! the timer wheel is bounded, and every dispatcher load is back at zero.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use sipedge::proxy::stateful::{Config, NoLocation, NoService, Stateful};
use sipedge::proxy::{Identity, LocalSocket, Service, SocketRole};
use sipedge::routing::dispatcher::{Algorithm, DestConfig, SetConfig};
use sipedge::sip::{self, HeaderIndex, ResponseSpec};
use sipedge::time::{Duration, Instant};
use sipedge::transport::{Outbox, Peer, SocketId, Transport};

const CALLERS: [&str; 2] = ["10.0.0.1:5060", "10.0.0.2:5062"];
const GATEWAYS: [&str; 2] = ["192.0.2.21:5060", "192.0.2.22:5060"];
const STATUS: [u16; 14] = [100, 180, 183, 200, 202, 302, 404, 408, 480, 486, 487, 500, 503, 603];

fn proxy() -> Stateful {
    let id = Identity {
        shard_id: 0,
        sockets: vec![
            LocalSocket::new("127.0.0.1:5060".parse().unwrap(), SocketRole::Public),
            LocalSocket::new("127.0.0.1:5070".parse().unwrap(), SocketRole::Shard),
        ],
        domains: vec![b"example.test".to_vec().into_boxed_slice()],
        secret: 0x5eed,
        siblings: Vec::new(),
    };
    let set = SetConfig {
        name: "gw".into(),
        domains: vec!["pstn.example.test".into()],
        dests: GATEWAYS
            .iter()
            .map(|g| DestConfig {
                uri: format!("sip:{g}"),
                addr: g.parse().unwrap(),
                transport: Transport::Udp,
                weight: 1,
                priority: 0,
                max_load: 3,
            })
            .collect(),
        algorithm: Algorithm::LeastLoaded,
        probe_interval: Duration::from_secs(2),
        probe_timeout: Duration::from_millis(500),
        failures_down: 2,
        successes_up: 1,
        attempts: 2,
        call_timeout: Duration::from_secs(60),
        fork_timeout: Duration::from_secs(2),
        group: None,
    };
    let cfg = Config {
        upstream: Some("192.0.2.50:5060".parse().unwrap()),
        ..Config::default()
    };
    Stateful::new(id, cfg, NoLocation, NoService).with_dispatcher(&[set])
}

fn request(method: &str, ruri: &str, from: &str, call: u8, cseq: u32, branch: u32) -> String {
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{call}x{branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:a@example.test>;tag=f{call}\r\nTo: <{ruri}>\r\n\
         Call-ID: c{call}@fuzz\r\nCSeq: {cseq} {method}\r\nContact: <sip:a@{from}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// A response with `code` to `req` (a request the proxy sent).
fn respond(req: &[u8], code: u16, tag: u8) -> Option<Vec<u8>> {
    let mut idx = HeaderIndex::default();
    let m = sip::parse(req, &mut idx).ok()?;
    if !m.is_request() {
        return None;
    }
    let tag = format!("t{tag}");
    let mut buf = vec![0u8; 8192];
    let spec = ResponseSpec {
        to_tag: Some(tag.as_bytes()),
        ..ResponseSpec::new(code, "Fuzz")
    };
    let n = sip::response(&m, &spec, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

fuzz_target!(|data: &[u8]| {
    let mut p = proxy();
    let mut out = Outbox::new(1 << 20, 1024);
    let mut now = Instant::ZERO;
    let mut sent: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let mut bytes = data.iter().copied();
    let mut branch = 0u32;
    let collect = |out: &mut Outbox, sent: &mut Vec<(SocketAddr, Vec<u8>)>| {
        for t in out.items() {
            let b = out.bytes(t);
            if !b.starts_with(b"SIP/2.0") {
                if sent.len() >= 64 {
                    sent.remove(0);
                }
                sent.push((t.peer.remote, b.to_vec()));
            }
        }
        out.clear();
    };
    let feed = |p: &mut Stateful, out: &mut Outbox, now: Instant, msg: &[u8], from: &str| {
        let peer = Peer::udp(from.parse().unwrap(), SocketId(0));
        p.handle_message(now, msg, &peer, out);
    };
    for _ in 0..512 {
        let Some(op) = bytes.next() else { break };
        let arg = bytes.next().unwrap_or(0);
        let from = CALLERS[usize::from(arg & 1)];
        let call = arg % 16;
        branch += 1;
        match op % 9 {
            0 => {
                let r = request("INVITE", "sip:123@pstn.example.test", from, call, 1, 0);
                feed(&mut p, &mut out, now, r.as_bytes(), from);
            }
            1 => {
                let r = request("INVITE", "sip:bob@other.test", from, call, 1, 0);
                feed(&mut p, &mut out, now, r.as_bytes(), from);
            }
            2 => {
                let r = request("CANCEL", "sip:123@pstn.example.test", from, call, 1, 0);
                feed(&mut p, &mut out, now, r.as_bytes(), from);
            }
            3 => {
                let r = request("ACK", "sip:123@pstn.example.test", from, call, 1, branch);
                feed(&mut p, &mut out, now, r.as_bytes(), from);
            }
            4 => {
                let r = request("BYE", "sip:123@pstn.example.test", from, call, 2, branch);
                feed(&mut p, &mut out, now, r.as_bytes(), from);
            }
            5 => {
                let r = request("MESSAGE", "sip:123@pstn.example.test", from, call, 1, branch);
                feed(&mut p, &mut out, now, r.as_bytes(), from);
            }
            6 => {
                // A response to something the proxy sent.
                if !sent.is_empty() {
                    let (to, req) = sent[usize::from(arg) % sent.len()].clone();
                    let code = STATUS[usize::from(bytes.next().unwrap_or(0)) % STATUS.len()];
                    if let Some(resp) = respond(&req, code, call) {
                        let to = to.to_string();
                        let src = if GATEWAYS.contains(&to.as_str()) { to } else { GATEWAYS[0].to_owned() };
                        feed(&mut p, &mut out, now, &resp, &src);
                    }
                }
            }
            7 => {
                now += Duration::from_millis(u64::from(arg) * 50);
                p.handle_timeout(now, &mut out);
            }
            _ => {
                let n = usize::from(arg);
                let raw: Vec<u8> = bytes.by_ref().take(n).collect();
                feed(&mut p, &mut out, now, &raw, from);
            }
        }
        collect(&mut out, &mut sent);
    }
    // Five quiet minutes: every transaction ends, every load returns. The
    // dispatcher keeps probing: its OPTIONS are answered at once, so each
    // probe's transaction ends Timer K (T4, 5 s) after its 200.
    let mut probes: Vec<Instant> = Vec::new();
    for _ in 0..600 {
        now += Duration::from_millis(500);
        p.handle_timeout(now, &mut out);
        let answers: Vec<(SocketAddr, Vec<u8>)> = out
            .items()
            .iter()
            .filter(|t| out.bytes(t).starts_with(b"OPTIONS "))
            .filter_map(|t| Some((t.peer.remote, respond(out.bytes(t), 200, 0)?)))
            .collect();
        out.clear();
        for (gw, resp) in answers {
            probes.push(now);
            feed(&mut p, &mut out, now, &resp, &gw.to_string());
            out.clear();
        }
    }
    let recent = probes
        .iter()
        .filter(|&&t| now.saturating_since(t) < Duration::from_millis(5500))
        .count();
    assert!(
        p.live_transactions() <= recent,
        "{} transactions outlived their timers ({recent} probes in their Timer K): {:#?}",
        p.live_transactions(),
        p.describe_transactions()
    );
    assert!(p.dispatcher.status().iter().all(|d| d.load == 0), "{:?}", p.dispatcher.status());
    assert!(p.timers() < 256, "{} timers left", p.timers());
});
