//! Registrar rules, one scenario per test, on virtual time: every REGISTER
//! is built as text, parsed, handled; assertions are on the response and on
//! the records (what the store and the replicas see).

use super::*;
use crate::location::{Lookup, Replica};
use crate::sip::{parse, HeaderIndex};
use crate::transport::{Peer, SocketId};

const WALL0: u64 = 1_700_000_000_000_000;
const SRC: &str = "198.51.100.7:40000";

struct Response {
    status: u16,
    reason: String,
    text: String,
    contacts: Vec<String>,
}

impl Response {
    fn header(&self, name: &str) -> Option<String> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
    }
}

struct H {
    reg: Registrar,
    now: Instant,
    wall: u64,
    buf: Vec<u8>,
    branch: u32,
    records: Vec<Record>,
}

fn cfg() -> RegistrarConfig {
    RegistrarConfig {
        domains: vec![b"example.com"[..].into()],
        known_retention: Duration::from_secs(600),
        ..RegistrarConfig::default()
    }
}

impl H {
    fn new() -> Self {
        Self::with(cfg())
    }

    fn with(cfg: RegistrarConfig) -> Self {
        Self {
            reg: Registrar::new(cfg, 0, 1, Instant::ZERO),
            now: Instant::ZERO,
            wall: WALL0,
            buf: vec![0; 65_535],
            branch: 0,
            records: Vec::new(),
        }
    }

    /// A REGISTER for `user@example.com` with `call_id`, `cseq` and `extra` header lines.
    fn req(&mut self, user: &str, call_id: &str, cseq: u32, extra: &str) -> Vec<u8> {
        self.branch += 1;
        format!(
            "REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK{};rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:{user}@example.com>\r\n\
From: <sip:{user}@example.com>;tag=abc\r\n\
Call-ID: {call_id}\r\n\
CSeq: {cseq} REGISTER\r\n\
{extra}Content-Length: 0\r\n\r\n",
            self.branch
        )
        .into_bytes()
    }

    fn send(&mut self, raw: &[u8]) -> Result<Response, RegistrarError> {
        let mut idx = HeaderIndex::default();
        let msg = parse(raw, &mut idx).unwrap();
        let reply = self.reg.handle_register(
            self.now,
            self.wall,
            &msg,
            &Peer::udp(SRC.parse().unwrap(), SocketId(1)),
            &mut self.buf,
        )?;
        self.records.extend(self.reg.drain_records());
        let out = &self.buf[..reply.len];
        let mut idx2 = HeaderIndex::default();
        let r = parse(out, &mut idx2).unwrap();
        assert_eq!(r.status(), Some(reply.status));
        assert!(r.to().unwrap().tag().is_some(), "To tag");
        assert!(
            r.top_via().unwrap().received().is_some(),
            "received stamped"
        );
        let text = String::from_utf8(out.to_vec()).unwrap();
        let reason = text.lines().next().unwrap()[12..].to_owned();
        Ok(Response {
            status: reply.status,
            reason,
            contacts: r
                .values(HeaderName::Contact)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect(),
            text,
        })
    }

    fn register(&mut self, user: &str, call_id: &str, cseq: u32, extra: &str) -> Response {
        let raw = self.req(user, call_id, cseq, extra);
        self.send(&raw).unwrap()
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        self.wall += secs * 1_000_000;
        self.reg.handle_timeout(self.now, self.wall);
        self.records.extend(self.reg.drain_records());
    }

    fn ops(&mut self) -> Vec<&'static str> {
        let v = self
            .records
            .iter()
            .map(|r| match r.op {
                Op::Upsert(_) => "upsert",
                Op::Remove { .. } => "remove",
                Op::Forget { .. } => "forget",
                Op::Put(_) | Op::Del { .. } => "service",
            })
            .collect();
        self.records_checked();
        v
    }

    /// Checks the records are the partition's next seqs, then forgets them.
    fn records_checked(&mut self) {
        for w in self.records.windows(2) {
            assert_eq!(w[1].seq, w[0].seq + 1);
        }
        self.records.clear();
    }

    fn contacts_of(&self, user: &str) -> Vec<String> {
        self.reg
            .bindings_of(format!("{user}@example.com").as_bytes())
            .iter()
            .map(|b| String::from_utf8_lossy(b.contact()).into_owned())
            .collect()
    }
}

#[test]
fn add_refresh_remove() {
    let mut h = H::new();
    let r = h.register("alice", "c1", 1, "Contact: <sip:alice@192.0.2.9:5060>\r\n");
    assert_eq!(
        (r.status, r.contacts.clone()),
        (
            200,
            vec!["<sip:alice@192.0.2.9:5060>;expires=3600".to_owned()]
        )
    );
    assert_eq!(r.header("Date").map(|d| d.ends_with(" GMT")), Some(true));
    assert_eq!(h.ops(), ["upsert"]);
    let id = h.reg.bindings_of(b"alice@example.com")[0].id();
    h.advance(100);
    let r = h.register(
        "alice",
        "c1",
        2,
        "Contact: <sip:alice@192.0.2.9:5060>;expires=1800\r\n",
    );
    assert_eq!(r.contacts, ["<sip:alice@192.0.2.9:5060>;expires=1800"]);
    assert_eq!(h.ops(), ["upsert"]);
    let b = &h.reg.bindings_of(b"alice@example.com")[0];
    assert_eq!((b.id(), b.cseq(), b.call_id()), (id, 2, &b"c1"[..]));
    assert_eq!(b.received(), Some(SRC.parse().unwrap()));
    assert_eq!(b.socket(), SocketId(1));
    let r = h.register(
        "alice",
        "c1",
        3,
        "Contact: <sip:alice@192.0.2.9:5060>;expires=0\r\n",
    );
    assert_eq!((r.status, r.contacts.len()), (200, 0));
    assert_eq!(h.ops(), ["remove"]);
    assert_eq!(h.reg.len(), 0);
    assert_eq!(h.reg.aors(), 1, "still known");
}

#[test]
fn several_contacts_per_aor_and_fetch() {
    let mut h = H::new();
    let r = h.register(
        "bob",
        "c1",
        1,
        "Contact: <sip:bob@192.0.2.1>;q=0.5, <sip:bob@192.0.2.2>;q=0.125\r\nExpires: 600\r\n",
    );
    assert_eq!(
        r.contacts,
        [
            "<sip:bob@192.0.2.1>;expires=600;q=0.5",
            "<sip:bob@192.0.2.2>;expires=600;q=0.125"
        ]
    );
    h.advance(10);
    let r = h.register("bob", "c2", 1, "m: <sip:bob@192.0.2.3>\r\n");
    assert_eq!(r.contacts.len(), 3);
    assert!(r
        .contacts
        .contains(&"<sip:bob@192.0.2.1>;expires=590;q=0.5".to_owned()));
    assert_eq!(h.ops(), ["upsert", "upsert", "upsert"]);
    // Fetch: no Contact, no change.
    let r = h.register("bob", "c3", 1, "");
    assert_eq!((r.status, r.contacts.len()), (200, 3));
    assert!(h.ops().is_empty());
    // Fetch of an unknown AoR: 200 with nothing, and it stays unknown.
    let r = h.register("nobody", "c4", 1, "");
    assert_eq!((r.status, r.contacts.len()), (200, 0));
    assert_eq!(h.reg.aors(), 1);
    // Same URI compared per §19.1.4 (host case, default params): a refresh.
    let r = h.register(
        "bob",
        "c2",
        2,
        "Contact: <sip:bob@192.0.2.3;Foo=1>;expires=100\r\n",
    );
    assert_eq!(r.contacts.len(), 3);
    assert_eq!(h.ops(), ["upsert"]);
}

#[test]
fn expiry_rules() {
    // (Contact expires param, Expires header, config min) → granted or status.
    type Case<'a> = (
        Option<u64>,
        Option<u32>,
        u32,
        Result<u64, (u16, Option<&'a str>)>,
    );
    let cases: &[Case<'_>] = &[
        (Some(100), Some(200), 60, Ok(100)),
        (None, Some(200), 60, Ok(200)),
        (None, None, 60, Ok(3600)),
        (Some(99_999), None, 60, Ok(7200)),
        (Some(99_999_999_999), None, 60, Ok(7200)),
        (None, Some(30), 60, Err((423, Some("60")))),
        (Some(59), Some(3600), 60, Err((423, Some("60")))),
        (Some(60), None, 60, Ok(60)),
        // §10.3: 423 only below one hour; 3700 < min 4000 is raised instead.
        (Some(3700), None, 4000, Ok(4000)),
        (Some(100), None, 4000, Err((423, Some("4000")))),
    ];
    for &(param, header, min, want) in cases {
        let mut h = H::with(RegistrarConfig {
            min_expires: min,
            max_expires: 7200.max(min),
            ..cfg()
        });
        let mut extra = String::from("Contact: <sip:carol@192.0.2.4>");
        if let Some(p) = param {
            extra += &format!(";expires={p}");
        }
        extra += "\r\n";
        if let Some(e) = header {
            extra += &format!("Expires: {e}\r\n");
        }
        let r = h.register("carol", "c1", 1, &extra);
        match want {
            Ok(secs) => {
                assert_eq!(r.status, 200, "{extra}");
                let b = &h.reg.bindings_of(b"carol@example.com")[0];
                assert_eq!(b.expires(), WALL0 + secs * 1_000_000, "{extra}");
            }
            Err((code, min_hdr)) => {
                assert_eq!(r.status, code, "{extra}");
                assert_eq!(r.header("Min-Expires").as_deref(), min_hdr, "{extra}");
                assert!(h.reg.is_empty());
                assert!(h.ops().is_empty());
            }
        }
    }
}

#[test]
fn call_id_and_cseq_ordering() {
    let mut h = H::new();
    h.register("dave", "c1", 5, "Contact: <sip:dave@192.0.2.5>\r\n");
    h.ops();
    for (call_id, cseq, want) in [
        ("c1", 4, 500),
        ("c1", 5, 500),
        ("c1", 6, 200),
        ("c2", 1, 200),
        ("c2", 1, 500),
    ] {
        let r = h.register("dave", call_id, cseq, "Contact: <sip:dave@192.0.2.5>\r\n");
        assert_eq!(r.status, want, "{call_id} {cseq}");
        if want == 500 {
            assert_eq!(r.reason, "Server Internal Error (Out-Of-Order CSeq)");
            assert_eq!(r.header("Retry-After"), None);
        }
    }
    // A stale request aborts the whole REGISTER, other contacts included.
    let r = h.register(
        "dave",
        "c2",
        1,
        "Contact: <sip:dave@192.0.2.5>, <sip:dave@192.0.2.6>\r\n",
    );
    assert_eq!(r.status, 500);
    assert_eq!(h.contacts_of("dave"), ["sip:dave@192.0.2.5"]);
}

#[test]
fn wildcard_rules() {
    let mut h = H::new();
    h.register("erin", "c1", 1, "Contact: <sip:erin@192.0.2.1>\r\n");
    h.register("erin", "c2", 7, "Contact: <sip:erin@192.0.2.2>\r\n");
    h.ops();
    let cases: &[(&str, u16, &str)] = &[
        (
            "Contact: *\r\n",
            400,
            "Bad Request (Wildcard Contact Without Expires: 0)",
        ),
        (
            "Contact: *\r\nExpires: 3600\r\n",
            400,
            "Bad Request (Wildcard Contact Without Expires: 0)",
        ),
        (
            "Contact: *, <sip:erin@192.0.2.3>\r\nExpires: 0\r\n",
            400,
            "Bad Request (Wildcard Contact With Other Contacts)",
        ),
        (
            "Contact: <sip:erin@192.0.2.3>\r\nContact: *\r\nExpires: 0\r\n",
            400,
            "Bad Request (Wildcard Contact With Other Contacts)",
        ),
    ];
    for (extra, code, reason) in cases {
        let r = h.register("erin", "c9", 1, extra);
        assert_eq!((r.status, r.reason.as_str()), (*code, *reason), "{extra}");
    }
    // c2's binding has CSeq 7: a `*` with c2 and CSeq 7 is stale.
    let r = h.register("erin", "c2", 7, "Contact: *\r\nExpires: 0\r\n");
    assert_eq!(r.status, 500);
    assert_eq!(h.reg.len(), 2);
    let r = h.register("erin", "c2", 8, "Contact: *\r\nExpires: 0\r\n");
    assert_eq!((r.status, r.contacts.len()), (200, 0));
    assert_eq!(h.ops(), ["remove", "remove"]);
    assert!(h.reg.is_empty());
}

#[test]
fn path_is_stored_and_echoed_when_supported() {
    let mut h = H::new();
    let r = h.register(
        "fay",
        "c1",
        1,
        "Path: <sip:edge1.example.net;lr;ob>\r\nPath: <sip:edge2.example.net;lr>\r\nSupported: path\r\nContact: <sip:fay@10.0.0.1>\r\n",
    );
    assert_eq!(
        r.header("Path").as_deref(),
        Some("<sip:edge1.example.net;lr;ob>, <sip:edge2.example.net;lr>")
    );
    let b = &h.reg.bindings_of(b"fay@example.com")[0];
    assert_eq!(
        b.path(),
        b"<sip:edge1.example.net;lr;ob>, <sip:edge2.example.net;lr>"
    );
    let r = h.register(
        "fay",
        "c1",
        2,
        "Path: <sip:edge1.example.net;lr>\r\nContact: <sip:fay@10.0.0.1>\r\n",
    );
    assert_eq!((r.status, r.header("Path")), (200, None));
    assert_eq!(
        h.reg.bindings_of(b"fay@example.com")[0].path(),
        b"<sip:edge1.example.net;lr>"
    );
    let mut strict = H::with(RegistrarConfig {
        path_mode: PathMode::Strict,
        ..cfg()
    });
    let r = strict.register(
        "fay",
        "c1",
        1,
        "Path: <sip:edge1.example.net;lr>\r\nContact: <sip:fay@10.0.0.1>\r\n",
    );
    assert_eq!(
        (r.status, r.header("Unsupported").as_deref()),
        (420, Some("path"))
    );
    let r = strict.register(
        "fay",
        "c1",
        2,
        "Path: <sip:e;lr>\r\nSupported: path\r\nContact: <sip:fay@10.0.0.1>\r\n",
    );
    assert_eq!(r.status, 200);
    let r = h.register(
        "fay",
        "c1",
        3,
        "Path: <sip:edge1.example.net;lr\r\nContact: <sip:fay@10.0.0.1>\r\n",
    );
    assert_eq!(
        (r.status, r.reason.as_str()),
        (400, "Bad Request (Malformed Path)")
    );
}

const INSTANCE: &str = "+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\"";

#[test]
fn instance_and_reg_id_replace_instead_of_piling_up() {
    let mut h = H::new();
    let r = h.register(
        "gus",
        "c1",
        1,
        &format!("Contact: <sip:gus@10.0.0.1:5060>;{INSTANCE};reg-id=1\r\n"),
    );
    assert_eq!(
        r.contacts,
        [format!(
            "<sip:gus@10.0.0.1:5060>;expires=3600;{INSTANCE};reg-id=1"
        )]
    );
    let id = h.reg.bindings_of(b"gus@example.com")[0].id();
    // The device rebooted: new Call-ID, new port, same instance and reg-id.
    let r = h.register(
        "gus",
        "c2",
        1,
        &format!("Contact: <sip:gus@10.0.0.1:5062>;{INSTANCE};reg-id=1\r\n"),
    );
    assert_eq!(r.contacts.len(), 1);
    let b = &h.reg.bindings_of(b"gus@example.com")[0];
    assert_eq!((b.id(), b.contact()), (id, &b"sip:gus@10.0.0.1:5062"[..]));
    assert_eq!(
        b.instance(),
        b"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"
    );
    assert_eq!(b.reg_id(), Some(1));
    assert_eq!(h.ops(), ["upsert", "upsert"]);
    // A second flow (reg-id 2) is a second binding.
    h.register(
        "gus",
        "c3",
        1,
        &format!("Contact: <sip:gus@10.0.0.1:5064>;{INSTANCE};reg-id=2\r\n"),
    );
    assert_eq!(h.reg.len(), 2);
    // Instance matching is case-insensitive (a URN).
    let lower = INSTANCE.replace("AABBCCDDEEFF", "aabbccddeeff");
    h.register(
        "gus",
        "c4",
        1,
        &format!("Contact: <sip:gus@10.0.0.9>;{lower};reg-id=2\r\n"),
    );
    assert_eq!(h.reg.len(), 2);
    // Removal by instance.
    let r = h.register(
        "gus",
        "c5",
        1,
        &format!("Contact: <sip:gus@whatever>;{INSTANCE};reg-id=2;expires=0\r\n"),
    );
    assert_eq!(r.contacts.len(), 1);
}

#[test]
fn contacts_per_aor_are_bounded() {
    let mut h = H::with(RegistrarConfig {
        max_contacts: 2,
        ..cfg()
    });
    h.register(
        "hal",
        "c1",
        1,
        "Contact: <sip:hal@10.0.0.1>;expires=100\r\n",
    );
    h.register(
        "hal",
        "c2",
        1,
        "Contact: <sip:hal@10.0.0.2>;expires=3000\r\n",
    );
    h.ops();
    // A third evicts the binding closest to expiry.
    let r = h.register("hal", "c3", 1, "Contact: <sip:hal@10.0.0.3>\r\n");
    assert_eq!((r.status, r.contacts.len()), (200, 2));
    assert_eq!(
        h.contacts_of("hal"),
        ["sip:hal@10.0.0.2", "sip:hal@10.0.0.3"]
    );
    assert_eq!(h.ops(), ["remove", "upsert"]);
    assert_eq!(h.reg.counters().evicted, 1);
    // More new contacts in one request than allowed: 403, nothing changes.
    let r = h.register(
        "hal",
        "c4",
        1,
        "Contact: <sip:hal@10.0.1.1>, <sip:hal@10.0.1.2>, <sip:hal@10.0.1.3>\r\n",
    );
    assert_eq!(
        (r.status, r.reason.as_str()),
        (403, "Forbidden (Too Many Contacts)")
    );
    assert_eq!(h.reg.len(), 2);
}

#[test]
fn partition_total_is_bounded() {
    let mut h = H::with(RegistrarConfig {
        max_bindings: 2,
        retry_after: 17,
        ..cfg()
    });
    h.register("u1", "c1", 1, "Contact: <sip:u1@10.0.0.1>\r\n");
    h.register("u2", "c2", 1, "Contact: <sip:u2@10.0.0.1>\r\n");
    let r = h.register("u3", "c3", 1, "Contact: <sip:u3@10.0.0.1>\r\n");
    assert_eq!(
        (r.status, r.header("Retry-After").as_deref()),
        (503, Some("17"))
    );
    // Refreshes and removals still work when full.
    assert_eq!(
        h.register("u1", "c1", 2, "Contact: <sip:u1@10.0.0.1>\r\n")
            .status,
        200
    );
    assert_eq!(
        h.register("u1", "c1", 3, "Contact: <sip:u1@10.0.0.1>;expires=0\r\n")
            .status,
        200
    );
    assert_eq!(
        h.register("u3", "c3", 2, "Contact: <sip:u3@10.0.0.1>\r\n")
            .status,
        200
    );
}

#[test]
fn malformed_requests_get_precise_answers() {
    let cases: &[(&str, &str, u16, &str)] = &[
        (
            "alice",
            "Contact: <sip:alice@10.0.0.1\r\n",
            400,
            "Bad Request (Malformed Contact)",
        ),
        (
            "alice",
            "Contact: <sip:alice@10.0.0.1>;q=2\r\n",
            400,
            "Bad Request (Malformed Contact)",
        ),
        (
            "alice",
            "Contact: <sip:alice@10.0.0.1>;expires=soon\r\n",
            400,
            "Bad Request (Malformed Contact)",
        ),
        (
            "alice",
            "Contact: <mailto:alice@example.com>\r\n",
            400,
            "Bad Request (Unsupported Contact URI Scheme)",
        ),
        (
            "alice",
            "Contact: <tel:+15551234>\r\n",
            400,
            "Bad Request (Unsupported Contact URI Scheme)",
        ),
        (
            "alice",
            "Contact: <sip:alice@10.0.0.1:99999>\r\n",
            400,
            "Bad Request (Malformed Contact URI)",
        ),
        (
            "alice",
            "Contact: <sip:alice@10.0.0.1>\r\nExpires: -5\r\n",
            400,
            "Bad Request (Malformed Expires)",
        ),
        (
            "alice",
            "Contact: <sip:alice@10.0.0.1>;reg-id=0;+sip.instance=\"<urn:x>\"\r\n",
            400,
            "Bad Request (Malformed reg-id)",
        ),
        (
            "alice",
            "Contact: <sip:alice@10.0.0.1>;+sip.instance\r\n",
            400,
            "Bad Request (Malformed +sip.instance)",
        ),
        (
            "alice",
            "Require: path, foo\r\nContact: <sip:alice@10.0.0.1>\r\n",
            420,
            "Bad Extension",
        ),
        (
            "alice",
            "Require: outbound\r\nContact: <sip:alice@10.0.0.1>\r\n",
            420,
            "Bad Extension",
        ),
    ];
    for (user, extra, code, reason) in cases {
        let mut h = H::new();
        let raw = h.req(user, "c1", 1, extra);
        if let Err(e) = parse(&raw, &mut HeaderIndex::default()) {
            // The parser itself refuses it: the shard answers e.status().
            assert_eq!(e.status(), *code, "{extra}");
            continue;
        }
        let r = h.send(&raw).unwrap();
        assert_eq!((r.status, r.reason.as_str()), (*code, *reason), "{extra}");
        assert!(h.reg.is_empty(), "{extra}");
    }
    let mut h = H::new();
    let r = h.register("alice", "c1", 1, "Require: foo\r\n");
    assert_eq!(r.header("Unsupported").as_deref(), Some("foo"));
    // AoRs not ours: 404.
    for to in [
        "<sip:alice@other.org>",
        "<tel:+15551234>",
        "<sip:example.com>",
        "<sip:alice@192.0.2.1>",
        "<mailto:a@example.com>",
    ] {
        let raw = String::from_utf8(h.req("x", "c1", 1, "Contact: <sip:a@10.0.0.1>\r\n"))
            .unwrap()
            .replace("To: <sip:x@example.com>", &format!("To: {to}"));
        let r = h.send(raw.as_bytes()).unwrap();
        assert_eq!(r.status, 404, "{to}");
    }
    let raw = String::from_utf8(h.req("x", "c1", 1, ""))
        .unwrap()
        .replace("To: <sip:x@example.com>", "To: <sip:x@example.com:99999>");
    assert_eq!(h.send(raw.as_bytes()).unwrap().status, 400);
    // Not a REGISTER.
    let raw = String::from_utf8(h.req("x", "c1", 1, ""))
        .unwrap()
        .replace("REGISTER", "OPTIONS");
    assert!(matches!(
        h.send(raw.as_bytes()),
        Err(RegistrarError::NotRegister)
    ));
    // A buffer too small for the response.
    let raw = h.req("x", "c1", 1, "");
    let mut idx = HeaderIndex::default();
    let msg = parse(&raw, &mut idx).unwrap();
    let mut tiny = [0u8; 10];
    assert_eq!(
        h.reg.handle_register(
            h.now,
            h.wall,
            &msg,
            &Peer::udp(SRC.parse().unwrap(), SocketId(0)),
            &mut tiny
        ),
        Err(RegistrarError::Emit(EmitError::BufferFull))
    );
}

#[test]
fn aor_of_another_partition_is_handed_back() {
    let mut reg = Registrar::new(cfg(), 0, 16, Instant::ZERO);
    let user = (0..100)
        .map(|i| format!("u{i}"))
        .find(|u| partition_of(format!("{u}@example.com").as_bytes(), 16) != 0)
        .unwrap();
    let owner = partition_of(format!("{user}@example.com").as_bytes(), 16);
    let mut h = H::new();
    let raw = h.req(&user, "c1", 1, "Contact: <sip:a@10.0.0.1>\r\n");
    let mut idx = HeaderIndex::default();
    let msg = parse(&raw, &mut idx).unwrap();
    assert_eq!(register_partition(&msg, 16), Some(owner));
    let mut buf = [0u8; 2048];
    assert_eq!(
        reg.handle_register(
            Instant::ZERO,
            WALL0,
            &msg,
            &Peer::udp(SRC.parse().unwrap(), SocketId(0)),
            &mut buf
        ),
        Err(RegistrarError::WrongPartition { owner })
    );
    assert_eq!(reg.counters().requests, 0);
}

#[test]
fn bindings_expire_on_time_and_aors_are_forgotten() {
    let mut h = H::new();
    h.register("ivy", "c1", 1, "Contact: <sip:ivy@10.0.0.1>;expires=60\r\n");
    h.register(
        "ivy",
        "c2",
        1,
        "Contact: <sip:ivy@10.0.0.2>;expires=120\r\n",
    );
    h.ops();
    assert_eq!(
        h.reg.poll_timeout(),
        Some(Instant::ZERO + Duration::from_secs(60))
    );
    h.advance(59);
    assert!(h.ops().is_empty());
    // Refreshing 10.0.0.1 moves its expiry; the old timer fires and is ignored.
    h.register(
        "ivy",
        "c1",
        2,
        "Contact: <sip:ivy@10.0.0.1>;expires=100\r\n",
    );
    h.ops();
    h.advance(2);
    assert!(h.ops().is_empty());
    assert_eq!(h.reg.len(), 2);
    h.advance(100);
    assert_eq!(h.ops(), ["remove", "remove"]);
    assert_eq!(h.reg.aors(), 1);
    let r = h.register("ivy", "c3", 1, "");
    assert_eq!(r.contacts.len(), 0);
    // Retention (600 s in these tests), then Forget.
    h.advance(599);
    assert!(h.ops().is_empty());
    h.advance(2);
    assert_eq!(h.ops(), ["forget"]);
    assert_eq!(h.reg.aors(), 0);
    assert_eq!(h.reg.poll_timeout(), None);
}

/// A binding refreshed many times keeps one expiry timer (the pending one
/// re-arms for the rest when it fires), and still expires on time: at the
/// last refresh's expiry, or sooner when a refresh shortens it.
#[test]
fn refreshes_keep_one_timer_per_binding() {
    let mut h = H::new();
    for cseq in 1..=100 {
        h.register(
            "lea",
            "c1",
            cseq,
            "Contact: <sip:lea@10.0.0.1>;expires=3600\r\n",
        );
        h.advance(60);
    }
    h.ops();
    assert_eq!(h.reg.timers(), 1);
    // The last refresh was 60 s ago: 3540 s left, not a second fewer.
    h.advance(3539);
    assert_eq!((h.reg.len(), h.ops()), (1, vec![]));
    h.advance(2);
    assert_eq!((h.reg.len(), h.ops()), (0, vec!["remove"]));
    // A refresh that shortens the expiry is held to it.
    h.register(
        "lea",
        "c2",
        1,
        "Contact: <sip:lea@10.0.0.2>;expires=3600\r\n",
    );
    h.advance(10);
    h.register("lea", "c2", 2, "Contact: <sip:lea@10.0.0.2>;expires=60\r\n");
    h.advance(59);
    assert_eq!(h.reg.len(), 1);
    h.advance(2);
    assert_eq!(h.reg.len(), 0);
}

#[test]
fn re_registration_cancels_the_forget_timer() {
    let mut h = H::new();
    h.register("jo", "c1", 1, "Contact: <sip:jo@10.0.0.1>;expires=60\r\n");
    h.register("jo", "c1", 2, "Contact: <sip:jo@10.0.0.1>;expires=0\r\n");
    h.advance(300);
    h.register("jo", "c1", 3, "Contact: <sip:jo@10.0.0.1>;expires=3600\r\n");
    h.advance(400);
    h.ops();
    assert_eq!(h.reg.len(), 1);
    assert_eq!(h.reg.aors(), 1);
    // Removing again starts a fresh retention from now.
    h.register("jo", "c1", 4, "Contact: *\r\nExpires: 0\r\n");
    h.advance(599);
    assert_eq!(h.ops(), ["remove"]);
    h.advance(2);
    assert_eq!(h.ops(), ["forget"]);
}

#[test]
fn wall_clock_stepping_back_delays_expiry() {
    let mut h = H::new();
    h.register("kim", "c1", 1, "Contact: <sip:kim@10.0.0.1>;expires=60\r\n");
    h.ops();
    // Monotonic time reaches the deadline but wall time went back 30 s.
    h.now += Duration::from_secs(61);
    h.wall += 31 * 1_000_000;
    h.reg.handle_timeout(h.now, h.wall);
    assert_eq!(h.reg.len(), 1);
    h.advance(30);
    assert_eq!(h.reg.len(), 0);
}

#[test]
fn outbound_answers_when_enabled() {
    let mut h = H::with(RegistrarConfig {
        outbound: true,
        ..cfg()
    });
    let contact = format!("Contact: <sip:lee@10.0.0.1>;{INSTANCE};reg-id=1\r\n");
    let r = h.register(
        "lee",
        "c1",
        1,
        &format!("Supported: outbound, path\r\n{contact}"),
    );
    assert_eq!(
        (r.status, r.header("Require").as_deref()),
        (200, Some("outbound"))
    );
    assert_eq!(
        r.header("Flow-Timer").as_deref(),
        Some("120"),
        "RFC 5626 §5.4"
    );
    let r = h.register(
        "lee",
        "c1",
        2,
        &format!("Supported: outbound, path\r\nPath: <sip:edge;lr>\r\n{contact}"),
    );
    assert_eq!(r.status, 439);
    let r = h.register(
        "lee",
        "c1",
        3,
        &format!("Supported: outbound, path\r\nPath: <sip:edge;lr;ob>\r\n{contact}"),
    );
    assert_eq!(
        (r.status, r.header("Require").as_deref()),
        (200, Some("outbound"))
    );
    let r = h.register(
        "lee",
        "c1",
        4,
        &format!("Require: outbound\r\nSupported: outbound\r\n{contact}"),
    );
    assert_eq!(r.status, 200);
    // Without Supported: outbound, nothing outbound is said.
    let r = h.register("lee", "c1", 5, &contact);
    assert_eq!((r.status, r.header("Require")), (200, None));
}

#[test]
fn restart_from_snapshot_keeps_bindings_and_timers() {
    let mut h = H::new();
    h.register("max", "c1", 1, "Contact: <sip:max@10.0.0.1>;expires=60\r\n");
    h.register(
        "max",
        "c2",
        1,
        "Contact: <sip:max@10.0.0.2>;expires=600\r\n",
    );
    h.register("ned", "c3", 1, "Contact: <sip:ned@10.0.0.3>;expires=0\r\n");
    h.register("ned", "c3", 2, "Contact: <sip:ned@10.0.0.3>;expires=60\r\n");
    h.register("ned", "c3", 3, "Contact: <sip:ned@10.0.0.3>;expires=0\r\n");
    h.ops();
    let state = h.reg.snapshot();
    assert_eq!(state.bindings.len(), 2);
    assert_eq!(state.empty.len(), 1);
    let seq = h.reg.seq();
    // Restart 30 s later on a new monotonic clock.
    let wall = h.wall + 30_000_000;
    let now = Instant::from_micros(5_000_000);
    let mut r2 = Registrar::from_state(cfg(), 1, state.clone(), now, wall);
    assert_eq!((r2.seq(), r2.len(), r2.aors()), (seq, 2, 2));
    assert_eq!(r2.snapshot(), state);
    r2.handle_timeout(now + Duration::from_secs(31), wall + 31_000_000);
    let recs: Vec<Record> = r2.drain_records().collect();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].seq, seq + 1);
    assert!(matches!(&recs[0].op, Op::Remove { aor, .. } if &**aor == b"max@example.com"));
    // ned is forgotten 600 s after it became empty.
    r2.handle_timeout(now + Duration::from_secs(571), wall + 571_000_000);
    assert!(r2
        .drain_records()
        .any(|r| matches!(r.op, Op::Forget { .. })));
}

#[test]
fn replica_fed_by_the_registrar_answers_lookups() {
    let mut h = H::new();
    let mut replica = Replica::new(1, 9);
    h.register("pat", "c1", 1, "Contact: <sip:pat@10.0.0.1>;q=0.4\r\n");
    h.register("pat", "c2", 1, "Contact: <sip:pat@10.0.0.2>;q=0.9\r\n");
    h.register(
        "quinn",
        "c3",
        1,
        "Contact: <sip:quinn@10.0.0.3>;expires=60\r\n",
    );
    h.advance(61);
    for r in &h.records {
        replica.apply(r).unwrap();
    }
    let contacts = |l: Lookup<'_>| match l {
        Lookup::Found(it) => it
            .map(|t| String::from_utf8_lossy(t.contact()).into_owned())
            .collect::<Vec<_>>(),
        Lookup::NoBindings => vec!["480".into()],
        Lookup::Unknown => vec!["404".into()],
    };
    assert_eq!(
        contacts(replica.lookup(b"pat@example.com", h.wall)),
        ["sip:pat@10.0.0.2", "sip:pat@10.0.0.1"]
    );
    assert_eq!(
        contacts(replica.lookup(b"quinn@example.com", h.wall)),
        ["480"]
    );
    assert_eq!(
        contacts(replica.lookup(b"rob@example.com", h.wall)),
        ["404"]
    );
    let from_writer = Replica::from_states(1, 3, &[h.reg.snapshot()]).unwrap();
    assert_eq!(from_writer.canonical(), replica.canonical());
    match replica.lookup(b"pat@example.com", h.wall) {
        Lookup::Found(mut it) => {
            let t = it.next().unwrap();
            assert_eq!(t.received(), Some(SRC.parse().unwrap()));
            assert_eq!(t.socket(), SocketId(1));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn q_values_format() {
    for (q, s) in [
        (1000, "1"),
        (0, "0"),
        (500, "0.5"),
        (50, "0.05"),
        (125, "0.125"),
        (5, "0.005"),
        (990, "0.99"),
    ] {
        let mut out = Vec::new();
        put_q(&mut out, q);
        assert_eq!(std::str::from_utf8(&out).unwrap(), s);
    }
}

/// Where a binding is reached: the REGISTER's source behind a NAT (Via
/// sent-by is not the source) or for a contact without an IP address; the
/// contact itself for a direct or a third-party registration (regression:
/// every binding used to be reached at the REGISTER's source, so a SIPp
/// REGISTER client binding its UAS's address got the calls itself).
#[test]
fn binding_reached_at_source_only_behind_nat() {
    let src: SocketAddr = SRC.parse().unwrap();
    let cases: [(&str, &str, Option<SocketAddr>); 5] = [
        // NATed phone: private Via and contact, public source.
        ("192.0.2.9:5060", "sip:a@192.0.2.9:5060", Some(src)),
        // Direct, registering itself.
        ("198.51.100.7:40000", "sip:a@198.51.100.7:40000", None),
        // Direct, third party: the contact is elsewhere.
        ("198.51.100.7:40000", "sip:a@203.0.113.5:5080", None),
        // Via without a port means 5060: not the source port here.
        ("198.51.100.7", "sip:a@203.0.113.5", Some(src)),
        // A contact with a host name: only the source can be used.
        ("198.51.100.7:40000", "sip:a@phone.example.net", Some(src)),
    ];
    for (i, (via, contact, want)) in cases.into_iter().enumerate() {
        let mut h = H::new();
        let user = format!("u{i}");
        let raw = String::from_utf8(h.req(&user, "c1", 1, &format!("Contact: <{contact}>\r\n")))
            .unwrap()
            .replace("192.0.2.9:5060", via);
        let r = h.send(raw.as_bytes()).unwrap();
        assert_eq!(r.status, 200, "{via} {contact}");
        let b = &h.reg.bindings_of(format!("{user}@example.com").as_bytes())[0];
        assert_eq!(b.received(), want, "{via} {contact}");
        let mut replica = Replica::new(1, 3);
        for rec in &h.records {
            replica.apply(rec).unwrap();
        }
        match replica.lookup(format!("{user}@example.com").as_bytes(), h.wall) {
            Lookup::Found(mut it) => {
                assert_eq!(it.next().unwrap().received(), want, "{via} {contact}")
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn bindings_over_a_closed_flow_are_removed() {
    use crate::transport::{FlowId, Transport};
    let mut h = H::new();
    let over = |flow: u32| Peer {
        transport: Transport::Ws,
        remote: "127.0.0.1:40000".parse().unwrap(),
        local: SocketId(3),
        flow: FlowId(flow),
    };
    let reg = |h: &mut H, user: &str, flow: u32| {
        let raw = h.req(
            user,
            &format!("{user}-cid"),
            1,
            &format!("Contact: <sip:{user}@abc.invalid;transport=ws>\r\nExpires: 300\r\n"),
        );
        let mut idx = HeaderIndex::default();
        let msg = parse(&raw, &mut idx).unwrap();
        let r = h
            .reg
            .handle_register(h.now, h.wall, &msg, &over(flow), &mut h.buf)
            .unwrap();
        assert_eq!(r.status, 200);
        h.records.extend(h.reg.drain_records());
    };
    reg(&mut h, "alice", 0x0100_0101);
    reg(&mut h, "bob", 0x0100_0201);
    reg(&mut h, "carol", 0x0100_0101);
    h.ops();
    // Another flow closing, or none, changes nothing.
    h.reg.handle_flow_closed(h.now, h.wall, 0x0100_0301);
    h.reg.handle_flow_closed(h.now, h.wall, 0);
    h.records.extend(h.reg.drain_records());
    assert!(h.ops().is_empty());
    // alice's and carol's flow closes: their bindings go, with records; bob's stays.
    h.reg.handle_flow_closed(h.now, h.wall, 0x0100_0101);
    h.records.extend(h.reg.drain_records());
    assert_eq!(h.ops(), vec!["remove", "remove"]);
    assert!(h.contacts_of("alice").is_empty() && h.contacts_of("carol").is_empty());
    assert_eq!(h.contacts_of("bob").len(), 1);
    assert_eq!(h.reg.counters().flow_closed, 2);
    // Closing it again is a no-op; the emptied AoRs are forgotten later.
    h.reg.handle_flow_closed(h.now, h.wall, 0x0100_0101);
    h.records.extend(h.reg.drain_records());
    assert!(h.ops().is_empty());
    // An hour on: bob's binding expires, alice and carol are forgotten.
    h.advance(3600);
    assert_eq!(h.ops(), vec!["remove", "forget", "forget"]);
}

/// Changes another node made (from the shared store's stream): applied to
/// the writer's state, re-emitted as `remote` records with the writer's
/// commit time, the node-local flow and socket cleared; an older refresh of
/// the same binding (same Call-ID, lower CSeq) and an expired one skipped;
/// a Remove of what is not held emits nothing.
#[test]
fn changes_of_other_nodes_are_applied_and_marked_remote() {
    use crate::location::BindingParts;
    let mut h = H::new();
    let binding = |cseq: u32, expires: u64| {
        Binding::new(&BindingParts {
            id: 7,
            aor: b"alice@example.com",
            contact: b"sip:alice@192.0.2.1:5060",
            expires,
            q: 1000,
            call_id: b"c1",
            cseq,
            received: None,
            socket: SocketId(3),
            flow: 9,
            path: b"",
            instance: b"",
            reg_id: None,
            user_agent: b"",
        })
        .unwrap()
    };
    let commit = WALL0 - 5_000;
    let later = WALL0 + 600_000_000;
    assert!(h
        .reg
        .apply_remote(h.now, h.wall, commit, &Op::Upsert(binding(2, later))));
    let held = h.reg.bindings_of(b"alice@example.com");
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].flow(), held[0].socket()), (0, SocketId(0)));
    let recs: Vec<Record> = h.reg.drain_records().collect();
    assert_eq!(recs.len(), 1);
    assert!(recs[0].remote);
    assert_eq!((recs[0].seq, recs[0].commit), (1, commit));
    // Older (CSeq 1 < 2) and expired: skipped.
    assert!(!h
        .reg
        .apply_remote(h.now, h.wall, commit, &Op::Upsert(binding(1, later))));
    assert!(!h
        .reg
        .apply_remote(h.now, h.wall, commit, &Op::Upsert(binding(3, WALL0 - 1))));
    assert_eq!(h.reg.pending_records(), 0);
    // Removed; removed again: nothing.
    let rm = Op::Remove {
        aor: b"alice@example.com"[..].into(),
        id: 7,
    };
    assert!(h.reg.apply_remote(h.now, h.wall, commit, &rm));
    assert!(!h.reg.apply_remote(h.now, h.wall, commit, &rm));
    assert!(h.reg.bindings_of(b"alice@example.com").is_empty());
    let recs: Vec<Record> = h.reg.drain_records().collect();
    assert_eq!(recs.len(), 1);
    assert!(recs[0].remote && recs[0].seq == 2);
    // Forgotten: the AoR is unknown again.
    let forget = Op::Forget {
        aor: b"alice@example.com"[..].into(),
    };
    assert!(h.reg.apply_remote(h.now, h.wall, commit, &forget));
    assert_eq!(h.reg.aors(), 0);
    assert!(h.reg.drain_records().all(|r| r.remote));
}

/// With the essentials (and the AoR key) the proxy decoded, the registrar
/// answers and records exactly as when it decodes To, the top Via and the
/// AoR itself: new bindings,
/// refreshes, NAT and direct sources (the top Via decides `received`), a
/// malformed To.
#[test]
fn essentials_from_the_caller_change_nothing() {
    let run = |with: u8| {
        let mut h = H::new();
        let mut out = Vec::new();
        for (user, via_host, cseq) in [
            ("alice", "192.0.2.9:5060", 1),
            ("alice", "192.0.2.9:5060", 2),
            ("bob", "198.51.100.7:40000", 1),
            ("bob", "198.51.100.7:40000", 2),
        ] {
            let raw = format!(
                "REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP {via_host};branch=z9hG4bK{user}{cseq};rport\r\n\
To: <sip:{user}@example.com>\r\nFrom: <sip:{user}@example.com>;tag=abc\r\n\
Call-ID: {user}-1\r\nCSeq: {cseq} REGISTER\r\n\
Contact: <sip:{user}@192.0.2.9:5060>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
            );
            let mut idx = HeaderIndex::default();
            let msg = parse(raw.as_bytes(), &mut idx).unwrap();
            let src = Peer::udp(SRC.parse().unwrap(), SocketId(1));
            let reply = if with > 0 {
                let ess = msg.essentials().unwrap();
                // As the proxy computes it for the owner (with = 2), or not (1).
                let aor = (with == 2).then(|| AorKey::from_uri(&ess.to.uri().unwrap()).unwrap());
                h.reg.handle_register_with(
                    h.now,
                    h.wall,
                    &msg,
                    &ess,
                    aor.as_ref(),
                    &src,
                    &mut h.buf,
                )
            } else {
                h.reg.handle_register(h.now, h.wall, &msg, &src, &mut h.buf)
            }
            .unwrap();
            out.push(String::from_utf8_lossy(&h.buf[..reply.len]).into_owned());
            out.extend(h.reg.drain_records().map(|r| format!("{r:?}")));
            h.advance(60);
        }
        out
    };
    let (a, b, c) = (run(0), run(1), run(2));
    assert_eq!(a, b);
    assert_eq!(a, c);
    // Both cases of the top Via are in there: alice registers from behind a
    // NAT (reached at the source), bob directly (reached at his contact).
    let upserts = |user: &str| -> Vec<&String> {
        a.iter()
            .filter(|r| r.contains("Upsert") && r.contains(&format!("aor: \"{user}@")))
            .collect()
    };
    assert_eq!(upserts("alice").len(), 2);
    assert!(upserts("alice")
        .iter()
        .all(|r| r.contains("received: Some(198.51.100.7:40000)")));
    assert_eq!(upserts("bob").len(), 2);
    assert!(upserts("bob").iter().all(|r| r.contains("received: None")));
    // A To that does not decode: 400 on the registrar's own path.
    let mut h = H::new();
    let raw = h.req("carol", "c-1", 1, "Contact: <sip:carol@192.0.2.9>\r\n");
    let raw = String::from_utf8(raw)
        .unwrap()
        .replace("To: <sip:carol@example.com>", "To: <sip:carol@example.com");
    let mut idx = HeaderIndex::default();
    let msg = parse(raw.as_bytes(), &mut idx).unwrap();
    let src = Peer::udp(SRC.parse().unwrap(), SocketId(1));
    let reply = h.reg.handle_register(h.now, h.wall, &msg, &src, &mut h.buf);
    assert_eq!(reply.unwrap().status, 400);
}
