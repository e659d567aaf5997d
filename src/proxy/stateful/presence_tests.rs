//! Presence through the whole stateful proxy (in memory): REGISTER,
//! SUBSCRIBE and PUBLISH reach the partition's services, the 200s wait for
//! the store, NOTIFYs go out as client transactions and their answers come
//! back to presence; a MESSAGE to a user with no contact is kept and
//! delivered at the next REGISTER.

use super::*;
use crate::location::Replica;
use crate::presence::{Presence, PresenceConfig};
use crate::proxy::location::PartitionRegistry;
use crate::proxy::testutil::identity;
use crate::registrar::{Registrar, RegistrarConfig};

const WALL0: u64 = 1_700_000_000_000_000;

struct H {
    p: Stateful<Replica, PartitionRegistry>,
    out: Outbox,
    now: Instant,
    n: u32,
}

impl H {
    fn new() -> Self {
        let reg = Registrar::new(
            RegistrarConfig {
                domains: vec![b"example.test"[..].into()],
                ..RegistrarConfig::default()
            },
            0,
            1,
            Instant::ZERO,
        );
        let pres = Presence::new(
            PresenceConfig {
                secret: 9,
                contacts: vec![b"sip:127.0.0.1:5060"[..].into(); 2],
                ..PresenceConfig::default()
            },
            0,
        );
        let mut p = Stateful::new(
            identity(),
            Config::default(),
            Replica::new(1, 0x5eed),
            PartitionRegistry::with_presence(reg, pres, 1, 0),
        );
        p.handle_turn(Instant::ZERO, WALL0);
        Self {
            p,
            out: Outbox::new(64 << 20, 1 << 16),
            now: Instant::ZERO,
            n: 0,
        }
    }

    /// One turn: `data` from `src`, the store append, timers; what went out.
    fn turn(&mut self, data: Option<(&str, SocketAddr)>) -> Vec<(SocketAddr, String)> {
        self.out.clear();
        self.p.handle_turn(self.now, WALL0);
        if let Some((d, src)) = data {
            self.p.handle_message(
                self.now,
                d.as_bytes(),
                &Peer::udp(src, SocketId(0)),
                &mut self.out,
            );
        }
        let mut batch = Vec::new();
        if self.p.poll_persist(&mut batch) {
            self.p.persisted(self.now, true, &mut self.out);
        }
        for _ in 0..1_000 {
            if self.p.poll_timeout().is_none_or(|t| t > self.now) {
                break;
            }
            self.p.handle_timeout(self.now, &mut self.out);
        }
        self.out
            .items()
            .iter()
            .map(|t| {
                (
                    t.peer.remote,
                    String::from_utf8_lossy(self.out.bytes(t)).into_owned(),
                )
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn request(
        &mut self,
        method: &str,
        ruri: &str,
        from: &str,
        to: &str,
        src: SocketAddr,
        extra: &str,
        body: &str,
    ) -> Vec<(SocketAddr, String)> {
        self.n += 1;
        let n = self.n;
        let text = format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bKt{n}\r\nMax-Forwards: 70\r\nFrom: <sip:{from}>;tag=f{n}\r\nTo: <sip:{to}>\r\nCall-ID: call{n}\r\nCSeq: 1 {method}\r\nContact: <sip:{}@{src}>\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            from.split('@').next().unwrap_or_default(),
            body.len()
        );
        self.turn(Some((&text, src)))
    }
}

fn ok_to(req: &str) -> String {
    let keep: Vec<&str> = req
        .lines()
        .filter(|l| {
            ["Via:", "From:", "To:", "Call-ID:", "CSeq:"]
                .iter()
                .any(|h| l.starts_with(h))
        })
        .collect();
    format!(
        "SIP/2.0 200 OK\r\n{}\r\nContent-Length: 0\r\n\r\n",
        keep.join("\r\n")
    )
}

#[test]
fn presence_and_stored_messages_through_the_proxy() {
    let mut h = H::new();
    let bob: SocketAddr = "192.0.2.10:5060".parse().unwrap();
    let r = h.request(
        "REGISTER",
        "sip:example.test",
        "bob@example.test",
        "bob@example.test",
        bob,
        "Expires: 600\r\n",
        "",
    );
    assert!(r[0].1.starts_with("SIP/2.0 200"), "{r:?}");
    // 500 watchers subscribe: each gets a 200 and then its first NOTIFY.
    let watchers: Vec<SocketAddr> = (0..500)
        .map(|i| {
            format!("198.51.100.{}:{}", 1 + i % 200, 6000 + i)
                .parse()
                .unwrap()
        })
        .collect();
    let mut notifies = Vec::new();
    for (i, w) in watchers.iter().enumerate() {
        let sent = h.request(
            "SUBSCRIBE",
            "sip:bob@example.test",
            &format!("w{i}@example.test"),
            "bob@example.test",
            *w,
            "Event: presence\r\nExpires: 600\r\n",
            "",
        );
        assert!(sent[0].1.starts_with("SIP/2.0 200"), "{sent:?}");
        assert_eq!(sent[0].0, *w);
        let n: Vec<_> = sent.into_iter().skip(1).collect();
        assert_eq!(n.len(), 1, "one NOTIFY after the 200");
        assert!(n[0].1.starts_with("NOTIFY "));
        notifies.extend(n);
    }
    for (src, n) in &notifies {
        let r = h.turn(Some((&ok_to(n), *src)));
        assert!(r.is_empty(), "the 200 to a NOTIFY goes nowhere: {r:?}");
    }
    // bob publishes: every watcher gets a NOTIFY with the new state.
    let pidf = "<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:bob@example.test\"><tuple id=\"a\"><status><basic>open</basic></status><note>lunch</note></tuple></presence>";
    let r = h.request(
        "PUBLISH",
        "sip:bob@example.test",
        "bob@example.test",
        "bob@example.test",
        bob,
        "Event: presence\r\nExpires: 600\r\nContent-Type: application/pidf+xml\r\n",
        pidf,
    );
    assert!(r[0].1.starts_with("SIP/2.0 200"), "{:?}", r[0]);
    let mut fan: Vec<(SocketAddr, String)> = r.into_iter().skip(1).collect();
    for _ in 0..100 {
        if fan.len() >= watchers.len() {
            break;
        }
        fan.extend(h.turn(None));
    }
    assert_eq!(fan.len(), watchers.len(), "a NOTIFY to every watcher");
    assert!(fan
        .iter()
        .all(|(_, n)| n.contains("lunch") && n.contains("CSeq: 2 NOTIFY")));
    for (src, n) in &fan {
        h.turn(Some((&ok_to(n), *src)));
    }
    h.turn(None);
    assert_eq!(h.p.counters().presence.notifies, 1_000);
    assert_eq!(h.p.counters().presence.notify_failures, 0);
    // A MESSAGE to carol, who has no contact: 202, delivered when she registers.
    let alice: SocketAddr = "192.0.2.20:5060".parse().unwrap();
    let carol: SocketAddr = "192.0.2.30:5060".parse().unwrap();
    let r = h.request(
        "MESSAGE",
        "sip:carol@example.test",
        "alice@example.test",
        "carol@example.test",
        alice,
        "Content-Type: text/plain\r\n",
        "see you",
    );
    assert_eq!(r.len(), 1);
    assert!(r[0].1.starts_with("SIP/2.0 202"), "{r:?}");
    let r = h.request(
        "REGISTER",
        "sip:example.test",
        "carol@example.test",
        "carol@example.test",
        carol,
        "Expires: 600\r\n",
        "",
    );
    assert!(r[0].1.starts_with("SIP/2.0 200"), "{r:?}");
    let m: Vec<_> = r
        .iter()
        .filter(|(_, m)| m.starts_with("MESSAGE "))
        .collect();
    assert_eq!(m.len(), 1, "{r:?}");
    assert_eq!(m[0].0, carol);
    assert!(m[0].1.ends_with("see you") && m[0].1.contains("From: <sip:alice@example.test>"));
    let delivered = ok_to(&m[0].1);
    h.turn(Some((&delivered, carol)));
    h.turn(None);
    assert_eq!(h.p.counters().presence.messages_delivered, 1);
}
