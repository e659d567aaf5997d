//! Property tests of the SIP message layer.
//!
//! - Generated well-formed requests and responses (random header order,
//!   compact names, random name case, folding, several Vias per line,
//!   display names quoted or not, escaped user parts, parameters, bodies)
//!   parse, and `essentials()` returns the values they were built from.
//! - A forwarding edit with random [`Edits`] re-parses with every edit
//!   visible, and every header line the edit did not touch is in the output
//!   byte for byte, in its original order.
//! - Random byte mutations of those messages never panic the parser, the
//!   decoders or the editor.
//!
//! Case counts are small (the suite runs in debug in CI); raise them with
//! `PROPTEST_CASES=10000 cargo test --release --test sip_props`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;
use sipedge::sip::{
    edit, parse, parse_stream, scan, Contact, Edits, HeaderIndex, HeaderName, MaxForwardsEdit,
    Message, NameAddr, NewVia, Received, Status, Via,
};

// ---- the message model -------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Addr {
    display: Option<String>,
    /// User part as written (may hold %HH escapes) and as it decodes.
    user: (String, Vec<u8>),
    host: String,
    angle: bool,
    tag: Option<String>,
}

impl Addr {
    fn render(&self, fold_params: bool) -> String {
        let uri = format!("sip:{}@{}", self.user.0, self.host);
        let mut s = match (&self.display, self.angle || self.display.is_some()) {
            (Some(d), _) => format!("{d} <{uri}>"),
            (None, true) => format!("<{uri}>"),
            (None, false) => uri,
        };
        if let Some(t) = &self.tag {
            s.push_str(if fold_params { "\r\n ;tag=" } else { ";tag=" });
            s.push_str(t);
        }
        s
    }
}

#[derive(Debug, Clone)]
struct ViaSpec {
    transport: &'static str,
    host: String,
    port: Option<u16>,
    branch: String,
    rport: bool,
}

impl ViaSpec {
    fn render(&self) -> String {
        let mut s = format!("SIP/2.0/{} {}", self.transport, self.host);
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        s.push_str(";branch=");
        s.push_str(&self.branch);
        if self.rport {
            s.push_str(";rport");
        }
        s
    }
}

/// How one header line is written.
#[derive(Debug, Clone, Copy)]
struct Style {
    compact: bool,
    /// Bit i set: upper-case the i-th letter of the name.
    case: u32,
    /// 0 `": "`, 1 `":"`, 2 `" : "`, 3 `":\t"`, 4 `":\r\n "` (folded after the colon).
    sep: u8,
    /// Fold inside the value where the grammar allows LWS.
    fold: bool,
    /// Sort key: the header order.
    key: u16,
}

#[derive(Debug, Clone)]
struct Spec {
    request: bool,
    method: &'static str,
    ruri: String,
    status: u16,
    vias: Vec<ViaSpec>,
    /// `true` at i: Via i starts a new line (the first always does).
    via_breaks: Vec<bool>,
    to: Addr,
    from: Addr,
    call_id: String,
    cseq: u32,
    max_forwards: Option<u8>,
    contact: Option<Addr>,
    routes: Vec<String>,
    record_routes: Vec<String>,
    extras: Vec<(String, String)>,
    body: String,
    styles: Vec<Style>,
}

/// One rendered header line and what it is.
struct Line {
    name: HeaderName,
    text: String,
    key: u16,
}

fn header_name(name: HeaderName, style: Style) -> String {
    let base: String = match (style.compact, name.compact()) {
        (true, Some(c)) => (c as char).to_string(),
        _ => name.as_str().to_owned(),
    };
    base.chars()
        .enumerate()
        .map(|(i, c)| {
            if style.case & (1 << (i % 32)) != 0 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

fn line(name: &str, value: &str, style: Style) -> String {
    let sep = match style.sep {
        0 => ": ",
        1 => ":",
        2 => " : ",
        3 => ":\t",
        _ => ":\r\n ",
    };
    format!("{name}{sep}{value}\r\n")
}

impl Spec {
    fn style(&self, i: usize) -> Style {
        self.styles[i % self.styles.len()]
    }

    fn lines(&self) -> Vec<Line> {
        let mut lines = Vec::new();
        let mut n = 0;
        let mut push =
            |lines: &mut Vec<Line>, name: HeaderName, value: String, raw_name: Option<&str>| {
                let style = self.style(n);
                n += 1;
                let nm = raw_name.map_or_else(|| header_name(name, style), str::to_owned);
                lines.push(Line {
                    name,
                    text: line(&nm, &value, style),
                    key: style.key,
                });
            };
        // Vias, several per line where via_breaks says so.
        let mut current = String::new();
        for (i, v) in self.vias.iter().enumerate() {
            if i > 0 && self.via_breaks[i] {
                push(
                    &mut lines,
                    HeaderName::Via,
                    std::mem::take(&mut current),
                    None,
                );
            }
            if !current.is_empty() {
                current.push_str(if self.style(i).fold { " ,\r\n\t" } else { ", " });
            }
            current.push_str(&v.render());
        }
        push(&mut lines, HeaderName::Via, current, None);
        let fold_to = self.style(20).fold;
        push(&mut lines, HeaderName::To, self.to.render(fold_to), None);
        let fold_from = self.style(21).fold;
        push(
            &mut lines,
            HeaderName::From,
            self.from.render(fold_from),
            None,
        );
        push(&mut lines, HeaderName::CallId, self.call_id.clone(), None);
        let method = if self.request { self.method } else { "INVITE" };
        let cseq_sep = if self.style(22).fold { "\r\n  " } else { " " };
        push(
            &mut lines,
            HeaderName::CSeq,
            format!("{}{cseq_sep}{method}", self.cseq),
            None,
        );
        if let Some(mf) = self.max_forwards {
            push(&mut lines, HeaderName::MaxForwards, mf.to_string(), None);
        }
        if let Some(c) = &self.contact {
            push(&mut lines, HeaderName::Contact, c.render(false), None);
        }
        for r in &self.routes {
            push(&mut lines, HeaderName::Route, format!("<{r}>"), None);
        }
        for r in &self.record_routes {
            push(&mut lines, HeaderName::RecordRoute, format!("<{r}>"), None);
        }
        for (name, value) in &self.extras {
            push(&mut lines, HeaderName::Other, value.clone(), Some(name));
        }
        if !self.body.is_empty() {
            push(
                &mut lines,
                HeaderName::ContentType,
                "text/plain".to_owned(),
                None,
            );
        }
        push(
            &mut lines,
            HeaderName::ContentLength,
            self.body.len().to_string(),
            None,
        );

        // Shuffle by key, keeping Vias, Routes and Record-Routes in their order.
        for name in [HeaderName::Via, HeaderName::Route, HeaderName::RecordRoute] {
            let mut keys: Vec<u16> = lines
                .iter()
                .filter(|l| l.name == name)
                .map(|l| l.key)
                .collect();
            keys.sort_unstable();
            let mut it = keys.into_iter();
            for l in lines.iter_mut().filter(|l| l.name == name) {
                l.key = it.next().unwrap();
            }
        }
        lines.sort_by_key(|l| l.key);
        lines
    }

    fn render(&self) -> (Vec<u8>, Vec<Line>) {
        let mut s = if self.request {
            format!("{} {} SIP/2.0\r\n", self.method, self.ruri)
        } else {
            format!("SIP/2.0 {} Whatever It Is\r\n", self.status)
        };
        let lines = self.lines();
        for l in &lines {
            s.push_str(&l.text);
        }
        s.push_str("\r\n");
        s.push_str(&self.body);
        (s.into_bytes(), lines)
    }
}

// ---- strategies --------------------------------------------------------------------------

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9.!%*_+`'~-]{0,11}"
}

fn hostname() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,8}(\\.[a-z][a-z0-9]{0,6}){0,3}",
        (1u8..=254, 0u8..=255, 0u8..=255, 1u8..=254)
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        Just("[2001:db8::9:1]".to_owned()),
    ]
}

/// A user part: unreserved characters and %HH escapes, with what it decodes to.
fn user() -> impl Strategy<Value = (String, Vec<u8>)> {
    proptest::collection::vec(
        prop_oneof![
            3 => "[a-zA-Z0-9._~-]".prop_map(|c| (c.clone(), c.into_bytes())),
            1 => any::<u8>().prop_map(|b| (format!("%{b:02X}"), vec![b])),
        ],
        1..10,
    )
    .prop_map(|parts| {
        let mut raw = String::new();
        let mut dec = Vec::new();
        for (r, d) in parts {
            raw.push_str(&r);
            dec.extend(d);
        }
        (raw, dec)
    })
}

fn display() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        "[A-Za-z][A-Za-z0-9]{0,6}( [A-Za-z0-9.]{1,6}){0,2}".prop_map(Some),
        // A quoted string with quoted-pairs and commas.
        "[A-Za-z ,;<>@:]{0,10}".prop_map(|s| Some(format!("\"{s} \\\"x\\\\\""))),
    ]
}

fn addr(tag: bool) -> impl Strategy<Value = Addr> {
    (display(), user(), hostname(), any::<bool>(), token()).prop_map(
        move |(display, user, host, angle, t)| Addr {
            display,
            user,
            host,
            angle,
            tag: tag.then_some(t),
        },
    )
}

fn via() -> impl Strategy<Value = ViaSpec> {
    (
        prop_oneof![Just("UDP"), Just("TCP"), Just("TLS"), Just("WS")],
        hostname(),
        proptest::option::of(1u16..),
        "[a-zA-Z0-9]{1,12}",
        any::<bool>(),
    )
        .prop_map(|(transport, host, port, b, rport)| ViaSpec {
            transport,
            host,
            port,
            branch: format!("z9hG4bK{b}"),
            rport,
        })
}

fn style() -> impl Strategy<Value = Style> {
    (
        any::<bool>(),
        any::<u32>(),
        0u8..5,
        any::<bool>(),
        any::<u16>(),
    )
        .prop_map(|(compact, case, sep, fold, key)| Style {
            compact,
            case,
            sep,
            fold,
            key,
        })
}

fn uri() -> impl Strategy<Value = String> {
    (hostname(), any::<bool>())
        .prop_map(|(h, lr)| format!("sip:{h}{}", if lr { ";lr" } else { "" }))
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        (
            any::<bool>(),
            prop_oneof![
                Just("INVITE"),
                Just("REGISTER"),
                Just("OPTIONS"),
                Just("BYE"),
                Just("MESSAGE"),
                Just("NEWMETHOD")
            ],
            (user(), hostname()).prop_map(|(u, h)| format!("sip:{}@{h}", u.0)),
            100u16..700,
        ),
        (
            proptest::collection::vec(via(), 1..5),
            proptest::collection::vec(any::<bool>(), 5),
        ),
        (addr(false), addr(true)),
        "[a-zA-Z0-9.!%*_+`'~()<>:/?{}-]{1,20}(@[a-z0-9.]{1,12})?",
        0u32..(1 << 31),
        proptest::option::of(any::<u8>()),
        proptest::option::of(addr(false)),
        proptest::collection::vec(uri(), 0..3),
        proptest::collection::vec(uri(), 0..3),
        proptest::collection::vec(("X-[A-Za-z0-9-]{1,10}", "[ -~]{0,30}"), 0..4),
        "[ -~\\r\\n]{0,80}",
        proptest::collection::vec(style(), 24),
    )
        .prop_map(
            |(
                (request, method, ruri, status),
                (vias, via_breaks),
                (mut to, from),
                call_id,
                cseq,
                max_forwards,
                contact,
                routes,
                record_routes,
                extras,
                body,
                styles,
            )| {
                if !request {
                    to.tag = Some("resp1".to_owned());
                }
                Spec {
                    request,
                    method,
                    ruri,
                    status,
                    vias,
                    via_breaks,
                    to,
                    from,
                    call_id,
                    cseq,
                    max_forwards,
                    contact,
                    routes,
                    record_routes,
                    // Trailing spaces would be LWS around the value: keep values trimmed.
                    // Names made unique (header names compare without case).
                    extras: extras
                        .into_iter()
                        .enumerate()
                        .map(|(i, (n, v))| (format!("{n}-{i}"), v.trim().to_owned()))
                        .collect(),
                    body,
                    styles,
                }
            },
        )
}

#[derive(Debug, Clone, Copy)]
struct EditSpec {
    request_uri: bool,
    push_via: bool,
    received: bool,
    record_route: bool,
    pop_route: bool,
    keep_max_forwards: bool,
    append: bool,
}

fn edit_spec() -> impl Strategy<Value = EditSpec> {
    any::<[bool; 7]>().prop_map(|b| EditSpec {
        request_uri: b[0],
        push_via: b[1],
        received: b[2],
        record_route: b[3],
        pop_route: b[4],
        keep_max_forwards: b[5],
        append: b[6],
    })
}

// ---- helpers -----------------------------------------------------------------------------

fn find_from(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    scan::find_seq(needle, hay.get(from..)?).map(|i| from + i)
}

fn check_essentials(spec: &Spec, msg: &Message<'_>) {
    let e = msg.essentials().unwrap();
    assert_eq!(e.call_id, spec.call_id.as_bytes());
    assert_eq!(e.cseq.number, spec.cseq);
    assert_eq!(e.max_forwards, spec.max_forwards);
    assert_eq!(e.top_via.branch(), Some(spec.vias[0].branch.as_bytes()));
    assert_eq!(e.top_via.port, spec.vias[0].port);
    assert_eq!(e.top_via.rport(), spec.vias[0].rport.then_some(None));
    for (got, want) in [(e.to, &spec.to), (e.from, &spec.from)] {
        assert_eq!(got.display_name, want.display.as_deref().map(str::as_bytes));
        assert_eq!(got.tag(), want.tag.as_deref().map(str::as_bytes));
        let u = got.uri().unwrap();
        assert!(u.user_eq(&want.user.1), "{:?} vs {:?}", u.user, want.user);
        assert_eq!(u.host_bytes, want.host.as_bytes());
    }
    let vias: Vec<Via<'_>> = msg
        .values(HeaderName::Via)
        .map(|v| Via::parse(v).unwrap())
        .collect();
    assert_eq!(vias.len(), spec.vias.len());
    for (v, s) in vias.iter().zip(&spec.vias) {
        assert_eq!(v.branch(), Some(s.branch.as_bytes()));
        assert_eq!(v.host_bytes, s.host.as_bytes());
        assert_eq!(v.transport, s.transport.as_bytes());
    }
    if let Some(c) = &spec.contact {
        let Contact::Addr(na) = Contact::parse(msg.header(HeaderName::Contact).unwrap()).unwrap()
        else {
            panic!("star")
        };
        assert!(na.uri().unwrap().user_eq(&c.user.1));
    }
    let routes: Vec<&[u8]> = msg.values(HeaderName::Route).collect();
    assert_eq!(routes.len(), spec.routes.len());
    for (name, value) in &spec.extras {
        assert_eq!(msg.header_raw(name.as_bytes()), Some(value.as_bytes()));
    }
    assert_eq!(msg.body(), spec.body.as_bytes());
}

/// Everything a proxy might do with a message; must not panic whatever the bytes.
fn exercise(msg: &Message<'_>) {
    let _ = msg.essentials();
    for e in msg.headers() {
        for v in scan::CommaValues::new(e.value.of(msg.buf())) {
            match e.name {
                HeaderName::Via => {
                    let _ = Via::parse(v).map(|v| (v.branch(), v.received_addr(), v.rport()));
                }
                HeaderName::Contact => {
                    let _ = Contact::parse(v).map(|c| (c.q(), c.expires()));
                }
                HeaderName::Route | HeaderName::RecordRoute | HeaderName::To | HeaderName::From => {
                    let _ = NameAddr::parse(v).map(|n| n.uri().map(|u| u.equivalent(&u)));
                }
                _ => {}
            }
        }
    }
    let mut out = vec![0u8; msg.buf().len() + 512];
    let edits = Edits {
        push_via: Some(NewVia {
            transport: "UDP",
            host: b"192.0.2.1",
            port: 5060,
            branch: b"z9hG4bKprop",
            rport: true,
        }),
        received: Some(Received {
            ip: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
            port: 5099,
        }),
        record_route: Some(b"sip:192.0.2.1;lr"),
        pop_route: true,
        ..Edits::default()
    };
    let _ = edit(msg, &edits, &mut out);
    let _ = edit(
        msg,
        &Edits {
            pop_via: true,
            ..Edits::default()
        },
        &mut out,
    );
}

/// `PROPTEST_CASES` when set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---- properties --------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(192), ..ProptestConfig::default() })]

    #[test]
    fn generated_messages_parse_to_their_values(spec in spec()) {
        let (bytes, _) = spec.render();
        let mut index = HeaderIndex::default();
        let msg = parse(&bytes, &mut index)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
        assert_eq!(msg.is_request(), spec.request);
        check_essentials(&spec, &msg);
        // The same bytes on a stream frame to the whole message.
        let mut sidx = HeaderIndex::default();
        match parse_stream(&bytes, &mut sidx) {
            Ok(Status::Complete(m)) => assert_eq!(m.len(), bytes.len()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn edits_apply_and_untouched_lines_stay_byte_identical(spec in spec(), es in edit_spec()) {
        let (bytes, lines) = spec.render();
        let mut index = HeaderIndex::default();
        let msg = parse(&bytes, &mut index).unwrap();
        let request = spec.request;
        let pop_via = !request && spec.vias.len() > 1;
        let via_line = lines.iter().position(|l| l.name == HeaderName::Via);
        let route_line = lines.iter().position(|l| l.name == HeaderName::Route);
        let mf_line = lines.iter().position(|l| l.name == HeaderName::MaxForwards);
        let new_ruri = b"sip:bob@192.0.2.44:5062;transport=udp";
        let edits = Edits {
            request_uri: (request && es.request_uri).then_some(&new_ruri[..]),
            push_via: (request && es.push_via).then_some(NewVia {
                transport: "TCP",
                host: b"proxy.example.net",
                port: 5061,
                branch: b"z9hG4bKedited1",
                rport: true,
            }),
            pop_via,
            received: (request && es.received).then_some(Received {
                ip: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
                port: 5099,
            }),
            max_forwards: if es.keep_max_forwards || !request {
                MaxForwardsEdit::Keep
            } else {
                MaxForwardsEdit::Decrement
            },
            record_route: es.record_route.then_some(&b"sip:192.0.2.1:5060;lr"[..]),
            record_route2: None,
            pop_route: es.pop_route && !spec.routes.is_empty(),
            pop_second_route: false,
            pop_last_route: false,
            append: if es.append { b"X-Edited: yes\r\n" } else { b"" },
        };
        let mut out = vec![0u8; bytes.len() + 1024];
        let n = edit(&msg, &edits, &mut out).unwrap();
        let out = &out[..n];
        let mut idx2 = HeaderIndex::default();
        let fwd = parse(out, &mut idx2)
            .unwrap_or_else(|e| panic!("{e}:\n{}", String::from_utf8_lossy(out)));
        fwd.essentials().unwrap();

        // The edits are there.
        if let Some(u) = edits.request_uri {
            assert_eq!(fwd.request_uri_bytes(), u);
        } else if request {
            assert_eq!(fwd.request_uri_bytes(), spec.ruri.as_bytes());
        }
        let vias: Vec<Via<'_>> = fwd.values(HeaderName::Via).map(|v| Via::parse(v).unwrap()).collect();
        let mut expect_vias: Vec<&[u8]> = spec.vias.iter().map(|v| v.branch.as_bytes()).collect();
        if edits.push_via.is_some() {
            expect_vias.insert(0, b"z9hG4bKedited1");
        }
        if pop_via {
            expect_vias.remove(0);
        }
        let got_vias: Vec<&[u8]> = vias.iter().map(|v| v.branch().unwrap()).collect();
        assert_eq!(got_vias, expect_vias);
        if edits.received.is_some() {
            let sender = vias[usize::from(edits.push_via.is_some())];
            assert_eq!(sender.received_addr(), Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7))));
            assert_eq!(sender.rport(), spec.vias[0].rport.then_some(Some(5099)));
        }
        let want_mf = match edits.max_forwards {
            MaxForwardsEdit::Decrement => Some(spec.max_forwards.map_or(70, |m| m.saturating_sub(1))),
            MaxForwardsEdit::Keep => spec.max_forwards,
        };
        assert_eq!(fwd.max_forwards(), Ok(want_mf));
        let routes: Vec<&[u8]> = fwd.values(HeaderName::Route).collect();
        let skip = usize::from(edits.pop_route);
        let want_routes: Vec<String> = spec.routes.iter().skip(skip).map(|r| format!("<{r}>")).collect();
        assert_eq!(routes, want_routes.iter().map(String::as_bytes).collect::<Vec<_>>());
        let rrs: Vec<&[u8]> = fwd.values(HeaderName::RecordRoute).collect();
        assert_eq!(rrs.len(), spec.record_routes.len() + usize::from(es.record_route));
        if es.record_route {
            assert_eq!(rrs[0], b"<sip:192.0.2.1:5060;lr>");
        }
        assert_eq!(fwd.header_raw(b"x-edited"), es.append.then_some(&b"yes"[..]));
        assert_eq!(fwd.body(), spec.body.as_bytes());

        // Every line the edit did not touch is in the output, byte for byte, in order.
        let touched = |i: usize| {
            (Some(i) == via_line && (edits.received.is_some() || pop_via))
                || (Some(i) == route_line && edits.pop_route)
                || (Some(i) == mf_line && edits.max_forwards == MaxForwardsEdit::Decrement)
        };
        let mut at = 0;
        for (i, l) in lines.iter().enumerate() {
            if touched(i) {
                continue;
            }
            match find_from(out, l.text.as_bytes(), at) {
                Some(p) => at = p + l.text.len(),
                None => panic!("line {i} {:?} lost or moved:\n{}", l.text, String::from_utf8_lossy(out)),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(512), ..ProptestConfig::default() })]

    #[test]
    fn mutated_messages_never_panic(
        spec in spec(),
        muts in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..6, any::<u8>()), 1..8),
    ) {
        let (mut bytes, _) = spec.render();
        for (at, op, b) in muts {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = b,
                1 => bytes.insert(i, b),
                2 => { bytes.remove(i); }
                3 => bytes.truncate(i),
                4 => bytes.insert(i, if b % 2 == 0 { b'\r' } else { b'\n' }),
                _ => bytes.insert(i, b",;:<>\"\\ "[usize::from(b % 8)]),
            }
        }
        let mut index = HeaderIndex::default();
        if let Ok(m) = parse(&bytes, &mut index) {
            exercise(&m);
        }
        let mut index = HeaderIndex::default();
        if let Ok(Status::Complete(m)) = parse_stream(&bytes, &mut index) {
            assert!(m.len() <= bytes.len());
            exercise(&m);
        }
    }
}

#[test]
#[ignore = "prints generated messages for eyeballing"]
fn show_samples() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..3 {
        let s = spec().new_tree(&mut runner).unwrap().current();
        println!("{}\n-----", String::from_utf8_lossy(&s.render().0));
    }
}
