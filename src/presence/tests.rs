//! Presence rules, one scenario per test, on virtual time: requests built
//! as text, parsed and handled; the NOTIFYs polled and answered like the
//! proxy would; assertions on responses, NOTIFYs and feed entries.

use super::server::*;
use crate::location::{Entry, Op};
use crate::sip::{parse, HeaderIndex};
use crate::time::{Duration, Instant};
use crate::transport::{FlowId, Peer, SocketId, Transport};

const WALL0: u64 = 1_700_000_000_000_000;

fn pidf(entity: &str, id: &str, basic: &str, note: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"{entity}\"><tuple id=\"{id}\"><status><basic>{basic}</basic></status><note>{note}</note></tuple></presence>"
    )
}

struct Resp {
    status: u16,
    text: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        self.text.lines().find_map(|l| {
            l.strip_prefix(&format!("{name}: "))
                .map(|v| v.trim().to_owned())
        })
    }
}

struct H {
    p: Presence,
    now: Instant,
    wall: u64,
    n: u32,
    /// Whether each user is registered (the registrar's answer).
    registered: Vec<String>,
    ops: Vec<Op>,
}

fn peer(port: u16) -> Peer {
    Peer::udp(format!("127.0.0.1:{port}").parse().unwrap(), SocketId(0))
}

fn cfg() -> PresenceConfig {
    PresenceConfig {
        secret: 7,
        contacts: vec![b"sip:127.0.0.1:5060"[..].into()],
        ..PresenceConfig::default()
    }
}

impl H {
    fn new() -> Self {
        Self::with(cfg())
    }

    fn with(cfg: PresenceConfig) -> Self {
        Self {
            p: Presence::new(cfg, 0),
            now: Instant::ZERO,
            wall: WALL0,
            n: 0,
            registered: vec!["bob@example.test".into(), "alice@example.test".into()],
            ops: Vec::new(),
        }
    }

    fn request(&mut self, text: &str, src: Peer) -> Resp {
        let mut idx = HeaderIndex::default();
        let msg = parse(text.as_bytes(), &mut idx).expect("test request parses");
        let mut buf = vec![0u8; 65_535];
        let to = msg
            .to()
            .ok()
            .and_then(|t| t.uri().ok())
            .and_then(|u| crate::location::AorKey::from_uri(&u).ok())
            .map(|k| String::from_utf8_lossy(k.as_bytes()).into_owned())
            .unwrap_or_default();
        let registered = self.registered.contains(&to);
        let (n, status) = self
            .p
            .handle_request(self.now, self.wall, &msg, &src, registered, &mut buf)
            .expect("an answer");
        self.persist();
        Resp {
            status,
            text: String::from_utf8_lossy(&buf[..n]).into_owned(),
        }
    }

    /// The turn's changes become durable (drain, seal, persisted).
    fn persist(&mut self) {
        let mut ops = Vec::new();
        self.p.drain_ops(&mut ops);
        let any = !ops.is_empty();
        self.ops.extend(ops);
        if any {
            self.p.seal();
            self.p.persisted(true);
        }
    }

    fn publish(&mut self, user: &str, extra: &str, body: &str) -> Resp {
        self.n += 1;
        let n = self.n;
        let ct = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/pidf+xml\r\n".to_owned()
        };
        let text = format!(
            "PUBLISH sip:{user}@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKp{n}\r\nMax-Forwards: 70\r\nFrom: <sip:{user}@example.test>;tag=f{n}\r\nTo: <sip:{user}@example.test>\r\nCall-ID: pub{n}\r\nCSeq: {n} PUBLISH\r\n{extra}{ct}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.request(&text, peer(5070))
    }

    fn publish_state(&mut self, user: &str, id: &str, basic: &str, note: &str) -> String {
        let body = pidf(&format!("sip:{user}@example.test"), id, basic, note);
        let r = self.publish(user, "Event: presence\r\nExpires: 600\r\n", &body);
        assert_eq!(r.status, 200, "{}", r.text);
        r.header("SIP-ETag").expect("SIP-ETag")
    }

    fn subscribe(&mut self, watcher: &str, user: &str, call: &str, extra: &str) -> Resp {
        self.n += 1;
        let n = self.n;
        let text = format!(
            "SUBSCRIBE sip:{user}@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKs{n}\r\nMax-Forwards: 70\r\nFrom: <sip:{watcher}>;tag=w-{call}\r\nTo: <sip:{user}@example.test>{extra}\r\nCall-ID: {call}\r\nCSeq: {n} SUBSCRIBE\r\nContact: <sip:w@127.0.0.1:5080>\r\nEvent: presence\r\nContent-Length: 0\r\n\r\n"
        );
        self.request(&text, peer(5080))
    }

    /// The NOTIFYs ready now, each answered `status`.
    fn notifies(&mut self, status: u16) -> Vec<String> {
        self.p.handle_timeout(self.now, self.wall);
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65_535];
        while let Some(o) = self.p.poll_request(&mut buf) {
            out.push((String::from_utf8_lossy(&buf[..o.len]).into_owned(), o.token));
        }
        for (_, token) in &out {
            self.p.handle_outcome(self.now, *token, status);
        }
        self.persist();
        out.into_iter().map(|(t, _)| t).collect()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.wall += d.as_micros();
    }
}

fn state_of(notify: &str) -> String {
    notify
        .lines()
        .find_map(|l| l.strip_prefix("Subscription-State: "))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn publish_refresh_modify_remove() {
    let mut h = H::new();
    let etag = h.publish_state("bob", "t1", "open", "here");
    // Refresh: SIP-If-Match, no body → a new entity tag.
    let r = h.publish(
        "bob",
        &format!("Event: presence\r\nSIP-If-Match: {etag}\r\nExpires: 600\r\n"),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let etag2 = r.header("SIP-ETag").unwrap();
    assert_ne!(etag, etag2);
    // The old tag is gone: 412.
    let r = h.publish(
        "bob",
        &format!("Event: presence\r\nSIP-If-Match: {etag}\r\n"),
        "",
    );
    assert_eq!(r.status, 412);
    // Modify with a body.
    let body = pidf("sip:bob@example.test", "t1", "closed", "gone");
    let r = h.publish(
        "bob",
        &format!("Event: presence\r\nSIP-If-Match: {etag2}\r\nExpires: 600\r\n"),
        &body,
    );
    assert_eq!(r.status, 200);
    let etag3 = r.header("SIP-ETag").unwrap();
    // Remove.
    let r = h.publish(
        "bob",
        &format!("Event: presence\r\nSIP-If-Match: {etag3}\r\nExpires: 0\r\n"),
        "",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Expires").as_deref(), Some("0"));
    assert_eq!(h.p.presentities(), 0, "nothing lingers");
    // Durable: puts and deletes, ending with nothing live.
    let puts = h.ops.iter().filter(|o| matches!(o, Op::Put(_))).count();
    let dels = h.ops.iter().filter(|o| matches!(o, Op::Del { .. })).count();
    assert_eq!((puts, dels), (3, 3));
}

#[test]
fn publish_errors() {
    let mut h = H::new();
    let body = pidf("sip:bob@example.test", "t1", "open", "");
    // 489: no Event, or another package.
    assert_eq!(h.publish("bob", "Expires: 600\r\n", &body).status, 489);
    let r = h.publish("bob", "Event: dialog\r\n", &body);
    assert_eq!(r.status, 489);
    assert_eq!(r.header("Allow-Events").as_deref(), Some("presence"));
    // 423 below the minimum, with Min-Expires.
    let r = h.publish("bob", "Event: presence\r\nExpires: 10\r\n", &body);
    assert_eq!(r.status, 423);
    assert_eq!(r.header("Min-Expires").as_deref(), Some("60"));
    // Above the maximum: lowered.
    let r = h.publish("bob", "Event: presence\r\nExpires: 999999\r\n", &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Expires").as_deref(), Some("3600"));
    // Unknown entity tag: 412.
    let r = h.publish(
        "bob",
        "Event: presence\r\nSIP-If-Match: 0123456789abcdef\r\n",
        "",
    );
    assert_eq!(r.status, 412);
    // Malformed PIDF: 400, nothing stored.
    let before = h.ops.len();
    let r = h.publish("bob", "Event: presence\r\n", "<not-xml");
    assert_eq!(r.status, 400);
    assert_eq!(h.ops.len(), before, "nothing stored");
    // An initial publication without a body: 400.
    assert_eq!(h.publish("bob", "Event: presence\r\n", "").status, 400);
}

#[test]
fn publication_expires_and_watchers_see_it() {
    let mut h = H::new();
    let r = h.subscribe("alice@example.test", "bob", "c1", "");
    assert_eq!(r.status, 200, "{}", r.text);
    let n = h.notifies(200);
    assert_eq!(n.len(), 1);
    assert!(n[0].contains(">closed<"), "{}", n[0]);
    let body = pidf("sip:bob@example.test", "t1", "open", "");
    let r = h.publish("bob", "Event: presence\r\nExpires: 60\r\n", &body);
    assert_eq!(r.status, 200);
    let n = h.notifies(200);
    assert_eq!(n.len(), 1);
    assert!(n[0].contains(">open<"), "{}", n[0]);
    h.advance(Duration::from_secs(61));
    let n = h.notifies(200);
    assert_eq!(n.len(), 1, "expiry notified");
    assert!(n[0].contains(">closed<"), "{}", n[0]);
    assert_eq!(h.p.counters().publications_expired, 1);
}

#[test]
fn subscribe_notify_refresh_and_unsubscribe() {
    let mut h = H::new();
    h.publish_state("bob", "t1", "open", "hi");
    let r = h.subscribe("alice@example.test", "bob", "c1", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Expires").as_deref(), Some("3600"));
    assert_eq!(r.header("Contact").as_deref(), Some("<sip:127.0.0.1:5060>"));
    let to = r.header("To").unwrap();
    let tag = to.split(";tag=").nth(1).unwrap().to_owned();
    let n = h.notifies(200);
    assert_eq!(n.len(), 1);
    let first = &n[0];
    assert!(first.starts_with("NOTIFY sip:w@127.0.0.1:5080 SIP/2.0\r\n"));
    assert!(state_of(first).starts_with("active;expires="), "{first}");
    assert!(first.contains("Event: presence"));
    assert!(first.contains(&format!("From: <sip:bob@example.test>;tag={tag}")));
    assert!(first.contains("To: <sip:alice@example.test>;tag=w-c1"));
    assert!(first.contains("CSeq: 1 NOTIFY"));
    assert!(first.contains(">open<"));
    // Refresh in the dialog, with a shorter Expires: 200 and a NOTIFY (CSeq 2).
    let r = h.subscribe(
        "alice@example.test",
        "bob",
        "c1",
        &format!(";tag={tag}\r\nExpires: 120"),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("Expires").as_deref(), Some("120"));
    let n = h.notifies(200);
    assert_eq!(n.len(), 1);
    assert!(n[0].contains("CSeq: 2 NOTIFY"));
    assert_eq!(state_of(&n[0]), "active;expires=120");
    // A refresh naming another tag: 481.
    let r = h.subscribe("alice@example.test", "bob", "c1", ";tag=nope");
    assert_eq!(r.status, 481);
    // Unsubscribe: 200, a final NOTIFY, terminated.
    let r = h.subscribe(
        "alice@example.test",
        "bob",
        "c1",
        &format!(";tag={tag}\r\nExpires: 0"),
    );
    assert_eq!(r.status, 200);
    let n = h.notifies(200);
    assert_eq!(n.len(), 1);
    assert!(state_of(&n[0]).starts_with("terminated"), "{}", n[0]);
    assert_eq!(h.p.subscriptions(), 0);
    // Later changes: no NOTIFY.
    h.publish_state("bob", "t2", "closed", "");
    assert!(h.notifies(200).is_empty());
}

#[test]
fn subscribe_errors() {
    let mut h = H::new();
    let r = h.subscribe("alice@example.test", "bob", "c1", "\r\nExpires: 5");
    assert_eq!(r.status, 423);
    assert_eq!(r.header("Min-Expires").as_deref(), Some("60"));
    let r = h.subscribe("alice@example.test", "bob", "c2", "\r\nExpires: 99999");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Expires").as_deref(),
        Some("3600"),
        "never longer than asked or max"
    );
    let r = h.subscribe("alice@example.test", "bob", "c3", "\r\nExpires: 300");
    assert_eq!(r.header("Expires").as_deref(), Some("300"));
    // Another domain: denied by default.
    let r = h.subscribe("mallory@evil.test", "bob", "c4", "");
    assert_eq!(r.status, 403);
}

#[test]
fn subscription_expiry_terminates_with_timeout() {
    let mut h = H::new();
    let r = h.subscribe("alice@example.test", "bob", "c1", "\r\nExpires: 60");
    assert_eq!(r.status, 200);
    assert_eq!(h.notifies(200).len(), 1);
    h.advance(Duration::from_secs(61));
    let n = h.notifies(200);
    assert_eq!(n.len(), 1);
    assert_eq!(state_of(&n[0]), "terminated;reason=timeout");
    assert_eq!(h.p.subscriptions(), 0);
    assert_eq!(h.p.counters().subscriptions_expired, 1);
}

#[test]
fn a_notify_answered_481_or_unanswered_removes_the_subscription() {
    for status in [481, 408] {
        let mut h = H::new();
        h.subscribe("alice@example.test", "bob", "c1", "");
        assert_eq!(h.notifies(status).len(), 1);
        assert_eq!(h.p.subscriptions(), 0, "{status} removes");
        h.publish_state("bob", "t1", "open", "");
        assert!(h.notifies(200).is_empty(), "{status}: no NOTIFY after");
        // Removed durably too.
        assert!(h.ops.iter().any(|o| matches!(o, Op::Del { .. })));
    }
    // Another failure (a 500) keeps it.
    let mut h = H::new();
    h.subscribe("alice@example.test", "bob", "c1", "");
    assert_eq!(h.notifies(500).len(), 1);
    assert_eq!(h.p.subscriptions(), 1);
}

#[test]
fn two_devices_compose_and_one_going_offline_keeps_the_user_open() {
    let mut h = H::new();
    h.subscribe("alice@example.test", "bob", "c1", "");
    h.notifies(200);
    let e1 = h.publish_state("bob", "desk", "open", "at my desk");
    h.notifies(200);
    h.publish_state("bob", "mobile", "open", "on the road");
    let n = h.notifies(200);
    assert_eq!(n.len(), 1);
    assert!(n[0].contains("desk") && n[0].contains("mobile"), "{}", n[0]);
    // The desk phone goes offline: mobile still open.
    let body = pidf("sip:bob@example.test", "desk", "closed", "");
    let r = h.publish(
        "bob",
        &format!("Event: presence\r\nSIP-If-Match: {e1}\r\nExpires: 600\r\n"),
        &body,
    );
    assert_eq!(r.status, 200);
    let n = h.notifies(200);
    assert!(
        n[0].contains(">open<") && n[0].contains(">closed<"),
        "{}",
        n[0]
    );
}

#[test]
fn a_user_with_no_contact_is_shown_offline() {
    let mut h = H::new();
    h.registered.clear();
    h.publish_state("bob", "t1", "open", "");
    h.subscribe("alice@example.test", "bob", "c1", "");
    let n = h.notifies(200);
    assert!(
        n[0].contains(">closed<"),
        "stale publication hidden: {}",
        n[0]
    );
    // bob registers: watchers see him open.
    h.p.location_changed(b"bob@example.test", true, &[]);
    let n = h.notifies(200);
    assert_eq!(n.len(), 1);
    assert!(n[0].contains(">open<"), "{}", n[0]);
    // Configurable: off, the publication shows whatever the registrar says.
    let mut h = H::with(PresenceConfig {
        offline_when_unregistered: false,
        ..cfg()
    });
    h.registered.clear();
    h.publish_state("bob", "t1", "open", "");
    h.subscribe("alice@example.test", "bob", "c1", "");
    assert!(h.notifies(200)[0].contains(">open<"));
}

#[test]
fn pending_until_a_rule_allows_it() {
    let mut h = H::with(PresenceConfig {
        others: Action::Pending,
        ..cfg()
    });
    h.publish_state("bob", "t1", "open", "");
    let r = h.subscribe("carol@partner.test", "bob", "c1", "");
    assert_eq!(r.status, 200);
    let n = h.notifies(200);
    assert!(state_of(&n[0]).starts_with("pending"), "{}", n[0]);
    assert!(!n[0].contains("<presence"), "no state while pending");
    h.p.set_rules(
        vec![WatcherRule {
            watcher_domain: vec!["partner.test".into()],
            action: Action::Allow,
            ..WatcherRule::default()
        }],
        Action::Pending,
    );
    let n = h.notifies(200);
    assert_eq!(n.len(), 1);
    assert!(state_of(&n[0]).starts_with("active"), "{}", n[0]);
    assert!(n[0].contains(">open<"));
    // A deny rule terminates it.
    h.p.set_rules(
        vec![WatcherRule {
            watcher_domain: vec!["partner.test".into()],
            action: Action::Deny,
            ..WatcherRule::default()
        }],
        Action::Pending,
    );
    let n = h.notifies(200);
    assert_eq!(state_of(&n[0]), "terminated;reason=rejected");
    assert_eq!(h.p.subscriptions(), 0);
}

#[test]
fn the_notify_interval_ends_on_the_latest_state() {
    let mut h = H::with(PresenceConfig {
        notify_interval_ms: 1_000,
        ..cfg()
    });
    h.subscribe("alice@example.test", "bob", "c1", "");
    assert_eq!(h.notifies(200).len(), 1);
    let e = h.publish_state("bob", "t1", "open", "first");
    let mut etag = e;
    let mut sent = Vec::new();
    for note in ["second", "third", "fourth"] {
        h.advance(Duration::from_millis(100));
        let body = pidf("sip:bob@example.test", "t1", "open", note);
        let r = h.publish(
            "bob",
            &format!("Event: presence\r\nSIP-If-Match: {etag}\r\nExpires: 600\r\n"),
            &body,
        );
        etag = r.header("SIP-ETag").unwrap();
        sent.extend(h.notifies(200));
    }
    assert!(sent.is_empty(), "throttled within the interval: {sent:?}");
    h.advance(Duration::from_millis(800));
    let n = h.notifies(200);
    assert_eq!(n.len(), 1, "one NOTIFY after the interval");
    assert!(
        n[0].contains("fourth"),
        "ends on the latest state: {}",
        n[0]
    );
    h.advance(Duration::from_secs(5));
    assert!(h.notifies(200).is_empty());
}

#[test]
fn the_first_notify_waits_for_durability() {
    let mut h = H::new();
    let mut idx = HeaderIndex::default();
    let text = "SUBSCRIBE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK1\r\nFrom: <sip:alice@example.test>;tag=a\r\nTo: <sip:bob@example.test>\r\nCall-ID: d1\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:a@127.0.0.1:5080>\r\nEvent: presence\r\nContent-Length: 0\r\n\r\n";
    let msg = parse(text.as_bytes(), &mut idx).unwrap();
    let mut buf = vec![0u8; 65_535];
    let (_, status) =
        h.p.handle_request(h.now, h.wall, &msg, &peer(5080), true, &mut buf)
            .unwrap();
    assert_eq!(status, 200);
    let mut ops = Vec::new();
    h.p.drain_ops(&mut ops);
    h.p.seal();
    assert!(h.p.poll_request(&mut buf).is_none(), "not before the 200");
    h.p.persisted(true);
    h.p.handle_timeout(h.now, h.wall);
    assert!(h.p.poll_request(&mut buf).is_some());
}

#[test]
fn a_restart_keeps_publications_and_subscriptions_and_notifies_watchers() {
    let mut h = H::new();
    h.publish_state("bob", "t1", "open", "before");
    h.subscribe("alice@example.test", "bob", "c1", "");
    let first = h.notifies(200).remove(0);
    // Fold the ops like the store does.
    let mut b = crate::location::StateBuilder::new(0);
    for (i, op) in h.ops.iter().enumerate() {
        b.apply(&crate::location::Record {
            remote: false,
            partition: 0,
            seq: i as u64 + 1,
            commit: 0,
            op: op.clone(),
        });
    }
    let state = b.finish(h.wall);
    let entries: Vec<Entry> = state.entries;
    assert_eq!(entries.len(), 2);
    let mut p = Presence::from_entries(cfg(), 0, &entries, Instant::ZERO, h.wall + 1_000_000);
    p.set_registered(b"bob@example.test", true);
    p.handle_timeout(Instant::ZERO, h.wall + 1_000_000);
    let mut buf = vec![0u8; 65_535];
    let o = p
        .poll_request(&mut buf)
        .expect("watchers notified after a restart");
    let text = String::from_utf8_lossy(&buf[..o.len]).into_owned();
    assert!(text.contains(">open<") && text.contains("before"), "{text}");
    let cseq = |t: &str| -> u32 {
        t.lines()
            .find_map(|l| l.strip_prefix("CSeq: "))
            .and_then(|v| v.split(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    assert!(cseq(&text) > cseq(&first), "CSeq goes on increasing");
    let keys = |v: &[Entry]| {
        v.iter()
            .map(|e| (e.kind, e.key.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&p.entries()), keys(&entries), "the same state");
    let mut ops = Vec::new();
    p.drain_ops(&mut ops);
    assert!(
        ops.iter()
            .any(|o| matches!(o, Op::Put(e) if e.kind == entries[1].kind)),
        "the subscription's CSeq base is written again"
    );
}

#[test]
fn a_closed_flow_removes_its_subscriptions() {
    let mut h = H::new();
    let text = "SUBSCRIBE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/WS x.invalid;branch=z9hG4bK1\r\nFrom: <sip:alice@example.test>;tag=a\r\nTo: <sip:bob@example.test>\r\nCall-ID: d1\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:a@x.invalid;transport=ws>\r\nEvent: presence\r\nContent-Length: 0\r\n\r\n";
    let ws = Peer {
        transport: Transport::Ws,
        remote: "127.0.0.1:40000".parse().unwrap(),
        local: SocketId(0),
        flow: FlowId(9),
    };
    assert_eq!(h.request(text, ws).status, 200);
    h.p.handle_flow_closed(FlowId(9));
    assert_eq!(h.p.subscriptions(), 0);
}

fn message(user: &str, n: u32) -> String {
    let body = format!("hello {n}");
    format!(
        "MESSAGE sip:{user}@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKm{n}\r\nFrom: <sip:alice@example.test>;tag=m{n}\r\nTo: <sip:{user}@example.test>\r\nCall-ID: msg{n}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn an_offline_message_is_kept_and_delivered_at_the_next_register() {
    let mut h = H::with(PresenceConfig {
        max_messages_per_user: 2,
        ..cfg()
    });
    let mut buf = vec![0u8; 65_535];
    let mut statuses = Vec::new();
    for n in 1..=3 {
        let text = message("bob", n);
        let mut idx = HeaderIndex::default();
        let msg = parse(text.as_bytes(), &mut idx).unwrap();
        let (_, s) =
            h.p.handle_offline_message(h.now, h.wall, &msg, &peer(5090), &[], &mut buf)
                .unwrap();
        statuses.push(s);
    }
    assert_eq!(statuses, [202, 202, 480], "bounded per user");
    h.persist();
    assert_eq!(h.p.stored_messages(), 2);
    let target = Delivery {
        to: peer(6000),
        target: b"sip:bob@127.0.0.1:6000"[..].into(),
        route: b""[..].into(),
    };
    h.p.location_changed(b"bob@example.test", true, std::slice::from_ref(&target));
    h.p.handle_timeout(h.now, h.wall);
    let mut sent = Vec::new();
    while let Some(o) = h.p.poll_request(&mut buf) {
        sent.push((String::from_utf8_lossy(&buf[..o.len]).into_owned(), o.token));
    }
    assert_eq!(sent.len(), 2);
    assert!(sent[0]
        .0
        .starts_with("MESSAGE sip:bob@127.0.0.1:6000 SIP/2.0"));
    assert!(sent[0].0.contains("From: <sip:alice@example.test>;tag=m1"));
    assert!(sent[0].0.contains("Date: "));
    assert!(sent[0].0.ends_with("hello 1"));
    // A REGISTER refresh while they are in flight does not send them twice.
    h.p.location_changed(b"bob@example.test", true, &[target]);
    assert!(h.p.poll_request(&mut buf).is_none());
    // One delivered, one failed: the failed one stays for the next time.
    h.p.handle_outcome(h.now, sent[0].1, 200);
    h.p.handle_outcome(h.now, sent[1].1, 408);
    h.persist();
    assert_eq!(h.p.stored_messages(), 1);
    assert_eq!(h.p.counters().messages_delivered, 1);
    // Stored messages expire.
    h.advance(Duration::from_secs(8 * 86_400));
    h.p.handle_timeout(h.now, h.wall);
    assert_eq!(h.p.stored_messages(), 0);
}

#[test]
fn an_unsubscribe_while_a_notify_is_in_flight_still_gets_its_final_notify() {
    let mut h = H::new();
    let r = h.subscribe("alice@example.test", "bob", "c1", "");
    let tag = r
        .header("To")
        .unwrap()
        .split(";tag=")
        .nth(1)
        .unwrap()
        .to_owned();
    h.notifies(200);
    h.publish_state("bob", "t1", "open", "");
    // The NOTIFY of the change goes out and is not answered yet.
    h.p.handle_timeout(h.now, h.wall);
    let mut buf = vec![0u8; 65_535];
    let o = h.p.poll_request(&mut buf).expect("a NOTIFY in flight");
    let r = h.subscribe(
        "alice@example.test",
        "bob",
        "c1",
        &format!(";tag={tag}\r\nExpires: 0"),
    );
    assert_eq!(r.status, 200);
    h.p.handle_outcome(h.now, o.token, 200);
    let n = h.notifies(200);
    assert_eq!(n.len(), 1, "the final NOTIFY after the one in flight");
    assert!(state_of(&n[0]).starts_with("terminated"), "{}", n[0]);
    assert_eq!(h.p.subscriptions(), 0);
}
