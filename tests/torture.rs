//! The RFC 4475 torture messages (§3.1.1 valid, §3.1.2 invalid, §3.2–§3.4
//! semantics) and the RFC 5118 IPv6 torture messages, byte-exact in
//! `tests/fixtures/torture/` (see the README there for how the RFC's
//! `<allOneLine>`, `<hex>` and `<repeat>` markup was decoded).
//!
//! [`CASES`] holds one row per fixture: what a proxy must do with it and why,
//! in the RFC's words. A `Valid` row must parse, pass `essentials()`, decode
//! every Via and Contact, pass the Proxy-Require check, survive a forwarding
//! edit, and frame the same way on a stream. An `Invalid` row names the first
//! check a server runs that refuses it, the `ParseError` that check gives and
//! the status `ParseError::status()` answers with; every earlier check must
//! pass, so the row pins down *where* the message is refused, not only that
//! it is.
//!
//! The spot checks after the table decode the values each message is about.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sipedge::sip::{
    edit, parse, parse_stream, Contact, Credentials, Edits, HeaderIndex, HeaderName, Host, Message,
    Method, NameAddr, NewVia, ParseError, Scheme, Status, Uri, Via,
};

/// The first check a server runs that refuses a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// `sip::parse` (framing, start line, mandatory headers, CSeq).
    Parse,
    /// `Message::essentials()` (Request-URI, top Via, From, To, Max-Forwards).
    Essentials,
    /// A registrar decoding the To URI as the address-of-record.
    ToUri,
    /// A registrar decoding each Contact value.
    Contact,
    /// A proxy checking Proxy-Require against what it supports (none here).
    ProxyRequire,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Parses, passes `essentials()` and every other check above.
    Valid,
    /// Refused at this stage with this error, answered with this status
    /// (responses are never answered: they are dropped).
    Invalid(Stage, ParseError, u16),
}

use Expect::{Invalid, Valid};
use Stage::{Contact as ContactStage, Essentials, Parse, ProxyRequire, ToUri};

struct Case {
    file: &'static str,
    section: &'static str,
    expect: Expect,
    why: &'static str,
    bytes: &'static [u8],
}

macro_rules! case {
    ($file:literal, $section:literal, $expect:expr, $why:literal) => {
        Case {
            file: $file,
            section: $section,
            expect: $expect,
            why: $why,
            bytes: include_bytes!(concat!("fixtures/torture/", $file, ".sip")),
        }
    };
}

#[rustfmt::skip]
const CASES: &[Case] = &[
    // ---- RFC 4475 §3.1.1: valid messages -------------------------------------------------
    case!("wsinv", "4475 3.1.1.1", Valid, "\"All elements should treat this as a well-formed request\" (folding, LWS, compact forms, odd case)"),
    case!("intmeth", "4475 3.1.1.2", Valid, "\"wider range of characters\": token method, quoted NUL, UTF-8 params; a proxy forwards it"),
    case!("esc01", "4475 3.1.1.3", Valid, "\"A parser must accept this as a well-formed message\" (% HEX HEX in URIs)"),
    case!("escnull", "4475 3.1.1.4", Valid, "\"The message is well formed - parsers must accept this message\" (%00 in user parts)"),
    case!("esc02", "4475 3.1.1.5", Valid, "\"A parser should accept this message as well formed\": % is no escape in methods, names, display names"),
    case!("lwsdisp", "4475 3.1.1.6", Valid, "\"Elements should accept this request as well formed\" (no LWS before <)"),
    case!("longreq", "4475 3.1.1.7", Valid, "\"This well-formed request contains header fields with many values and values that are very long\""),
    case!("dblreq", "4475 3.1.1.8", Valid, "extra octets after the body \"are just spurious noise that must be ignored\" (§18.3)"),
    case!("semiuri", "4475 3.1.1.9", Valid, "\"Receiving elements will accept this as a well-formed message\"; user part is user;par=u%40example.net"),
    case!("transports", "4475 3.1.1.10", Valid, "\"Parsers must accept this message as well formed\" (SCTP, TLS, UNKNOWN transports)"),
    case!("mpart01", "4475 3.1.1.11", Valid, "\"Parsers must accept this message as well formed\"; the binary body holds NULs"),
    case!("unreason", "4475 3.1.1.12", Valid, "\"This response is well formed.  A parser must accept this message\" (UTF-8 reason)"),
    case!("noreason", "4475 3.1.1.13", Valid, "\"This well-formed response contains no reason phrase.  A parser must accept this message\""),
    // ---- RFC 4475 §3.1.2: invalid messages -----------------------------------------------
    case!("badinv01", "4475 3.1.2.1", Invalid(Essentials, ParseError::Via, 400), "\"syntactically invalid... should respond with a 400\"; the empty Via params are hit first"),
    case!("clerr", "4475 3.1.2.2", Invalid(Parse, ParseError::BodyTruncated, 400), "\"When sent over UDP... should respond with a 400 Bad Request error\""),
    case!("ncl", "4475 3.1.2.3", Invalid(Parse, ParseError::ContentLength, 400), "\"negative value for Content-Length... should respond with an error\""),
    case!("scalar02", "4475 3.1.2.4", Invalid(Parse, ParseError::CSeq, 400), "\"should respond with a 400 Bad Request due to the CSeq error\""),
    case!("scalarlg", "4475 3.1.2.5", Invalid(Parse, ParseError::CSeq, 400), "a response: \"An element receiving this response will simply discard it\" (never answered)"),
    case!("quotbal", "4475 3.1.2.6", Invalid(Essentials, ParseError::HeaderValue, 400), "\"unterminated quote in the display name of the To field... return a 400\""),
    case!("ltgtruri", "4475 3.1.2.7", Invalid(Essentials, ParseError::RequestUri, 400), "\"It is reasonable always to reject a request with this error with a 400\""),
    case!("lwsruri", "4475 3.1.2.8", Invalid(Parse, ParseError::RequestLine, 400), "\"illegal LWS within the Request-URI... should respond with a 400\""),
    case!("lwsstart", "4475 3.1.2.9", Invalid(Parse, ParseError::RequestLine, 400), "\"It is acceptable to reject this request as malformed\"; strict mode does"),
    case!("trws", "4475 3.1.2.10", Invalid(Parse, ParseError::RequestLine, 400), "\"It is acceptable to reject this request as malformed\" (SP before CRLF)"),
    case!("escruri", "4475 3.1.2.11", Invalid(Essentials, ParseError::RequestUri, 400), "\"acceptable for an element to reject this request with a 400\" (headers in Request-URI)"),
    case!("baddate", "4475 3.1.2.12", Valid, "decided: a proxy never reads Date, and the RFC says an element \"could ignore this value altogether\""),
    case!("regbadct", "4475 3.1.2.13", Invalid(ContactStage, ParseError::HeaderValue, 400), "\"reasonable for an element receiving this request to respond with a 400\" (? outside <>)"),
    case!("badaspec", "4475 3.1.2.14", Invalid(Essentials, ParseError::HeaderValue, 400), "\"It is reasonable to reject this request with a 400 Bad Request response\" (SP in addr-spec)"),
    case!("baddn", "4475 3.1.2.15", Invalid(Essentials, ParseError::HeaderValue, 400), "\"reasonable always to reject this kind of error with a 400\" (unquoted non-token display name)"),
    case!("badvers", "4475 3.1.2.16", Invalid(Parse, ParseError::Version, 505), "\"should respond to the request with a 505 Version Not Supported error\""),
    case!("mismatch01", "4475 3.1.2.17", Invalid(Parse, ParseError::CSeqMethodMismatch, 400), "\"Any element receiving this request will respond with a 400 Bad Request\""),
    case!("mismatch02", "4475 3.1.2.18", Invalid(Parse, ParseError::ExtensionMethodMismatch, 501), "\"should respond with a 501... choosing a 501 (particularly at proxies)\" over the acceptable 400"),
    case!("bigcode", "4475 3.1.2.19", Invalid(Parse, ParseError::StatusLine, 400), "a response with code > 699: \"An element receiving this response should simply drop it\""),
    // ---- RFC 4475 §3.2: transaction layer ------------------------------------------------
    case!("badbranch", "4475 3.2.1", Valid, "\"A parser must not break\"; the transaction layer decides (branch is exactly the cookie)"),
    // ---- RFC 4475 §3.3: application layer ------------------------------------------------
    case!("insuf", "4475 3.3.1", Invalid(Parse, ParseError::MissingHeader, 400), "no To, From or Call-ID: \"should respond with a 400 Bad Request\""),
    case!("unkscm", "4475 3.3.2", Invalid(Essentials, ParseError::UnsupportedUriScheme, 416), "unknown Request-URI scheme: \"should respond with a 416 (Unsupported URI Scheme)\""),
    case!("novelsc", "4475 3.3.3", Invalid(Essentials, ParseError::UnsupportedUriScheme, 416), "soap.beep: Request-URI scheme this proxy cannot route, 416"),
    case!("unksm2", "4475 3.3.4", Invalid(ToUri, ParseError::UnsupportedUriScheme, 416), "well-formed; a proxy forwards it, a registrar refuses the isbn: AoR with 416"),
    case!("bext01", "4475 3.3.5", Invalid(ProxyRequire, ParseError::BadExtension, 420), "\"a proxy... will respond with a 420 (Bad Extension)\" naming the Proxy-Require options"),
    case!("invut", "4475 3.3.6", Valid, "unknown Content-Type: a UAS answers 415; a proxy forwards the body untouched"),
    case!("regaut01", "4475 3.3.7", Valid, "unknown Authorization scheme: the registrar challenges with 401; it parses"),
    case!("multi01", "4475 3.3.8", Invalid(Parse, ParseError::DuplicateHeader, 400), "\"multiple values for single-value header fields... should respond with a 400\""),
    case!("mcl01", "4475 3.3.9", Invalid(Parse, ParseError::ContentLength, 400), "two different Content-Lengths: \"There's no way to know how many octets\", 400"),
    case!("bcast", "4475 3.3.10", Valid, "a well-formed 200; the transport must not send to the 255.255.255.255 Via (checked below)"),
    case!("zeromf", "4475 3.3.11", Valid, "Max-Forwards 0 on OPTIONS: the proxy answers it itself or with 483; it parses"),
    case!("cparam01", "4475 3.3.12", Valid, "Contact without <>: unknownparam is a header parameter, not a URI parameter"),
    case!("cparam02", "4475 3.3.13", Valid, "Contact in <>: unknownparam is a URI parameter"),
    case!("regescrt", "4475 3.3.14", Valid, "an escaped Route header in a Contact URI in <> is legal; the registrar stores it"),
    // ---- RFC 4475 §3.4: backward compatibility -------------------------------------------
    case!("sdp01", "4475 3.4.1", Valid, "Accept names no SDP type: a UAS answers 406; a proxy forwards it"),
    case!("inv2543", "4475 3.4.2", Valid, "RFC 2543 request (no branch cookie, no Max-Forwards, no Content-Length) is accepted"),
    // ---- RFC 5118: IPv6 ------------------------------------------------------------------
    case!("ipv6-good", "5118 4.1", Valid, "IPv6 reference in the Request-URI, Via and Contact: well formed"),
    case!("ipv6-bad", "5118 4.2", Invalid(Essentials, ParseError::RequestUri, 400), "IPv6 address without brackets in the Request-URI: \"should be rejected with a 400\""),
    case!("port-ambiguous", "5118 4.3", Valid, "\"From a parsing perspective, the request is completely well formed\": [2001:db8::10:5070] has no port"),
    case!("port-unambiguous", "5118 4.4", Valid, "[2001:db8::10]:5070 is an address and a port"),
    case!("via-received-param-with-delim", "5118 4.5", Valid, "received=[IPv6] is not RFC 3261 ABNF but must be tolerated"),
    case!("via-received-param-no-delim", "5118 4.5", Valid, "received=IPv6 without brackets is RFC 3261 ABNF"),
    case!("ipv6-in-sdp", "5118 4.6", Valid, "IPv6 in the SDP body; the SIP layer forwards the body as it is"),
    case!("mult-ip-in-header", "5118 4.7", Valid, "IPv6 and IPv4 Vias in one message"),
    case!("mult-ip-in-sdp", "5118 4.8", Valid, "IPv4 and IPv6 c= lines in one body"),
    case!("ipv4-mapped-ipv6", "5118 4.9", Valid, "::ffff:192.0.2.10 in Via and Contact is an IPv6 reference"),
    case!("ipv6-bug-abnf-3-colons", "5118 4.10", Valid, "\"an implementation must tolerate both of the above constructs\" (RFC 3261 ABNF bug ':::')"),
    case!("ipv6-correct-abnf-2-colons", "5118 4.10", Valid, "the RFC 4291 form of the same address"),
];

/// The forwarding edit a stateless proxy makes.
fn forward_edits() -> Edits<'static> {
    Edits {
        push_via: Some(NewVia {
            transport: "UDP",
            host: b"192.0.2.99",
            port: 5060,
            branch: b"z9hG4bKtorture1",
            rport: true,
        }),
        record_route: Some(b"sip:192.0.2.99:5060;lr"),
        ..Edits::default()
    }
}

/// Runs the stages in order; `Ok` when all pass, else the first failure.
fn judge(msg: &Message<'_>) -> Result<(), (Stage, ParseError)> {
    msg.essentials().map_err(|e| (Essentials, e))?;
    if msg.is_request() && msg.method() == Method::Register {
        let to = msg.to().map_err(|e| (ToUri, e))?;
        to.uri()
            .map_err(|e| (ToUri, e.in_header(ParseError::HeaderValue)))?;
    }
    for v in msg.values(HeaderName::Contact) {
        Contact::parse(v).map_err(|e| (ContactStage, e.in_header(ParseError::HeaderValue)))?;
    }
    if msg.is_request() {
        msg.check_proxy_require(&[])
            .map_err(|e| (ProxyRequire, e))?;
    }
    Ok(())
}

#[test]
fn every_fixture_behaves_as_its_row_says() {
    let mut index = HeaderIndex::default();
    let mut failures = Vec::new();
    for c in CASES {
        let outcome = match parse(c.bytes, &mut index) {
            Err(e) => Err((Parse, e)),
            Ok(msg) => judge(&msg),
        };
        let ok = match (c.expect, outcome) {
            (Valid, Ok(())) => true,
            (Invalid(stage, error, status), Err((s, e))) => {
                stage == s && error == e && e.status() == status
            }
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{} (RFC {}): expected {:?}, got {:?} — {}",
                c.file, c.section, c.expect, outcome, c.why
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn the_table_covers_every_fixture_once() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/torture");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".sip").map(str::to_owned)
        })
        .collect();
    on_disk.sort();
    let mut in_table: Vec<String> = CASES.iter().map(|c| c.file.to_owned()).collect();
    in_table.sort();
    assert_eq!(on_disk, in_table);
    // RFC 4475 has 49 messages (13 + 19 + 1 + 14 + 2), RFC 5118 twelve.
    assert_eq!(
        CASES
            .iter()
            .filter(|c| c.section.starts_with("4475"))
            .count(),
        49
    );
    assert_eq!(
        CASES
            .iter()
            .filter(|c| c.section.starts_with("5118"))
            .count(),
        12
    );
    let valid = CASES.iter().filter(|c| c.expect == Valid).count();
    assert_eq!((valid, CASES.len() - valid), (35, 26));
}

#[test]
fn fixtures_are_wire_bytes() {
    // Every header line ends in CRLF (the RFCs' markup decoded, LF made CRLF).
    for c in CASES {
        let end = c
            .bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("{}: no blank line", c.file));
        let head = &c.bytes[..end + 2];
        for (i, &b) in head.iter().enumerate() {
            if b == b'\n' {
                assert_eq!(head[i - 1], b'\r', "{}: bare LF at {i}", c.file);
            }
            if b == b'\r' {
                assert_eq!(head.get(i + 1), Some(&b'\n'), "{}: bare CR at {i}", c.file);
            }
        }
    }
}

#[test]
fn valid_messages_forward_and_frame_on_streams() {
    let mut index = HeaderIndex::default();
    let mut out = vec![0u8; 16 * 1024];
    for c in CASES.iter().filter(|c| c.expect == Valid) {
        let msg = parse(c.bytes, &mut index).unwrap();
        // Every Via, Route and Record-Route value decodes.
        for v in msg.values(HeaderName::Via) {
            Via::parse(v).unwrap_or_else(|e| panic!("{}: Via {e}", c.file));
        }
        for h in [HeaderName::Route, HeaderName::RecordRoute] {
            for v in msg.values(h) {
                NameAddr::parse(v).unwrap_or_else(|e| panic!("{}: {h:?} {e}", c.file));
            }
        }
        // A forwarding edit re-parses, with every original header line kept.
        let edits = if msg.is_request() {
            forward_edits()
        } else {
            // A response whose only Via is ours ends here; others go up one hop.
            Edits {
                pop_via: msg.values(HeaderName::Via).count() > 1,
                max_forwards: sipedge::sip::MaxForwardsEdit::Keep,
                ..Edits::default()
            }
        };
        let n = edit(&msg, &edits, &mut out).unwrap_or_else(|e| panic!("{}: {e}", c.file));
        let forwarded = out[..n].to_vec();
        let mut idx2 = HeaderIndex::default();
        let fwd = parse(&forwarded, &mut idx2).unwrap_or_else(|e| panic!("{}: {e}", c.file));
        fwd.essentials()
            .unwrap_or_else(|e| panic!("{}: forwarded: {e}", c.file));
        assert_eq!(fwd.body(), msg.body(), "{}", c.file);
        if msg.is_request() {
            let mf = msg
                .max_forwards()
                .unwrap()
                .map_or(70, |m| m.saturating_sub(1));
            assert_eq!(fwd.max_forwards(), Ok(Some(mf)), "{}", c.file);
            assert_eq!(
                fwd.top_via().unwrap().branch(),
                Some(&b"z9hG4bKtorture1"[..])
            );
        }
        // On a stream the message frames to the same length (when it says its length).
        if msg.header(HeaderName::ContentLength).is_some() {
            let mut sidx = HeaderIndex::default();
            match parse_stream(c.bytes, &mut sidx) {
                Ok(Status::Complete(m)) => assert_eq!(m.len(), msg.len(), "{}", c.file),
                other => panic!("{}: stream {other:?}", c.file),
            }
        }
    }
}

fn load(name: &str) -> &'static [u8] {
    CASES
        .iter()
        .find(|c| c.file == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
        .bytes
}

/// Parses fixture `name` into `index` and runs `f` on it.
fn with<R>(name: &str, f: impl FnOnce(&Message<'_>) -> R) -> R {
    let mut index = HeaderIndex::default();
    let msg = parse(load(name), &mut index).unwrap_or_else(|e| panic!("{name}: {e}"));
    f(&msg)
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

#[test]
fn wsinv_unusual_whitespace() {
    with("wsinv", |m| {
        let e = m.essentials().unwrap();
        assert_eq!(
            m.request_uri_bytes(),
            b"sip:vivekg@chair-dnrc.example.com;unknownparam"
        );
        assert_eq!(e.uri.unwrap().param(b"unknownparam"), Some(None));
        assert_eq!(e.to.tag(), Some(&b"1918181833n"[..]));
        assert_eq!(e.from.tag(), Some(&b"98asjd8"[..]));
        assert_eq!(e.from.display_name, Some(&br#""J Rosenberg \\\"""#[..]));
        assert_eq!(e.max_forwards, Some(68));
        assert_eq!((e.cseq.number, e.cseq.method), (9, Method::Invite));
        // Three Vias over two lines (long and compact names), folded everywhere.
        let vias: Vec<Via<'_>> = m
            .values(HeaderName::Via)
            .map(|v| Via::parse(v).unwrap())
            .collect();
        assert_eq!(vias.len(), 3);
        assert_eq!(vias[0].transport, b"UDP");
        assert_eq!(vias[0].host, Host::V4(Ipv4Addr::new(192, 0, 2, 2)));
        assert_eq!(vias[0].branch(), Some(&b"390skdjuw"[..]));
        assert!(!vias[0].has_magic_cookie());
        assert_eq!(vias[1].transport, b"TCP");
        assert_eq!(vias[1].host, Host::Name(b"spindle.example.com"));
        assert_eq!(vias[1].branch(), Some(&b"z9hG4bK9ikj8"[..]));
        assert_eq!(vias[2].host, Host::V4(Ipv4Addr::new(192, 168, 255, 111)));
        assert_eq!(vias[2].branch(), Some(&b"z9hG4bK30239"[..]));
        // Empty Subject (compact `s`), an unknown header with a folded value.
        assert_eq!(m.header(HeaderName::Subject), Some(&b""[..]));
        assert_eq!(
            m.header_raw(b"newfangledheader"),
            Some(&b"newfangled value\r\n continued newfangled value"[..])
        );
        assert_eq!(
            m.header_raw(b"UnknownHeaderWithUnusualValue"),
            Some(&b";;,,;;,;"[..])
        );
        let Contact::Addr(c) = Contact::parse(m.header(HeaderName::Contact).unwrap()).unwrap()
        else {
            panic!()
        };
        assert_eq!(c.display_name, Some(&br#""Quoted string \"\"""#[..]));
        assert_eq!(c.params.get(b"newparam"), Some(Some(&b"newvalue"[..])));
        assert_eq!(c.params.get(b"secondparam"), Some(None));
        assert_eq!(Contact::Addr(c).q(), Some(330));
        let route = NameAddr::parse(m.header(HeaderName::Route).unwrap()).unwrap();
        let ru = route.uri().unwrap();
        assert!(ru.is_loose_router());
        assert_eq!(ru.param(b"unknownwith"), Some(Some(&b"value"[..])));
        assert_eq!(m.body().len(), 150);
    });
}

#[test]
fn intmeth_wide_character_range() {
    with("intmeth", |m| {
        assert_eq!(m.method(), Method::Other);
        assert_eq!(
            m.method_bytes(),
            b"!interesting-Method0123456789_*+`.%indeed'~"
        );
        let u = m.request_uri().unwrap();
        assert_eq!(
            u.user,
            Some(&b"1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"[..])
        );
        assert_eq!(
            u.password,
            Some(&b"&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"[..])
        );
        assert_eq!(u.host, Host::Name(b"example.com"));
        assert_eq!(u.headers, b"");
        let to = m.to().unwrap();
        assert_eq!(
            to.display_name,
            Some(&b"\"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f\""[..])
        );
        assert_eq!(to.uri().unwrap().user, u.user);
        let from = m.from().unwrap();
        assert_eq!(
            from.display_name,
            Some(&b"token1~` token2'+_ token3*%!.-"[..])
        );
        assert_eq!(from.tag(), Some(&b"_token~1'+`*%!-."[..]));
        assert_eq!(
            from.params.get(b"fromParam''~+*_!.-%"),
            Some(Some("\"работающий\"".as_bytes()))
        );
        assert_eq!(
            m.call_id(),
            br#"intmeth.word%ZK-!.*_+'@word`~)(><:\/"][?}{"#
        );
        assert_eq!(
            m.top_via().unwrap().branch(),
            Some(&b"z9hG4bK-.!%66*_+`'~"[..])
        );
        assert_eq!(m.max_forwards(), Ok(Some(255)));
        assert_eq!(
            m.header_raw(b"extensionHeader-!.%*+_`'~"),
            Some("\u{feff}大停電".as_bytes())
        );
    });
}

#[test]
fn esc01_escaped_uris() {
    with("esc01", |m| {
        let u = m.request_uri().unwrap();
        assert_eq!(u.user, Some(&b"sips%3Auser%40example.com"[..]));
        assert!(u.user_eq(b"sips:user@example.com"));
        assert_eq!(u.host, Host::Name(b"example.net"));
        let to = m.to().unwrap().uri().unwrap();
        assert!(to.user_eq(b"user"));
        let from = m.from().unwrap().uri().unwrap();
        assert!(from.user_eq(b"I have spaces"));
        let Contact::Addr(c) = Contact::parse(m.header(HeaderName::Contact).unwrap()).unwrap()
        else {
            panic!()
        };
        let cu = c.uri().unwrap();
        assert!(cu.user_eq(b"caller"));
        // `n%61me=v%61lue%25%34%31`: value%41, not valueA (no recursive unescaping).
        let params: Vec<_> = cu.params().collect();
        assert_eq!(
            params,
            vec![
                (&b"%6C%72"[..], None),
                (&b"n%61me"[..], Some(&b"v%61lue%25%34%31"[..]))
            ]
        );
        let mut out = Vec::new();
        assert!(sipedge::sip::scan::unescape_into(
            b"v%61lue%25%34%31",
            &mut out
        ));
        assert_eq!(out, b"value%41");
        // Compact forms `i` and `C`.
        assert_eq!(m.call_id(), b"esc01.239409asdfakjkn23onasd0-3234");
        assert_eq!(
            m.header(HeaderName::ContentType),
            Some(&b"application/sdp"[..])
        );
    });
}

#[test]
fn escnull_escaped_nulls() {
    with("escnull", |m| {
        let to = m.to().unwrap().uri().unwrap();
        assert!(to.user_eq(b"null-\0-null"));
        assert!(!to.user_eq(b"null-"));
        let users: Vec<Vec<u8>> = m
            .values(HeaderName::Contact)
            .map(|v| {
                let Contact::Addr(c) = Contact::parse(v).unwrap() else {
                    panic!()
                };
                let mut out = Vec::new();
                assert!(sipedge::sip::scan::unescape_into(
                    c.uri().unwrap().user.unwrap(),
                    &mut out
                ));
                out
            })
            .collect();
        // Two distinct contacts: "\0" and "\0\0".
        assert_eq!(users, vec![vec![0u8], vec![0u8, 0]]);
        assert_eq!(m.header(HeaderName::ContentLength), Some(&b"0"[..]));
    });
}

#[test]
fn esc02_percent_is_no_escape_here() {
    with("esc02", |m| {
        assert_eq!(m.method(), Method::Other);
        assert_eq!(m.method_bytes(), b"RE%47IST%45R");
        assert_eq!(m.to().unwrap().display_name, Some(&br#""%Z%45""#[..]));
        assert_eq!(m.values(HeaderName::Contact).count(), 2);
        assert_eq!(
            m.header_raw(b"C%6Fntact"),
            Some(&b"<sip:alias2@host2.example.com>"[..])
        );
        assert_eq!(
            m.top_via().unwrap().branch(),
            Some(&b"z9hG4bK209%fzsnel234"[..])
        );
    });
}

#[test]
fn lwsdisp_and_semiuri() {
    with("lwsdisp", |m| {
        let f = m.from().unwrap();
        assert_eq!(f.display_name, Some(&b"caller"[..]));
        assert_eq!(f.uri_bytes, b"sip:caller@example.com");
        assert_eq!(f.tag(), Some(&b"323"[..]));
    });
    with("semiuri", |m| {
        let u = m.request_uri().unwrap();
        assert_eq!(u.user, Some(&b"user;par=u%40example.net"[..]));
        assert!(u.user_eq(b"user;par=u@example.net"));
        assert_eq!(u.host, Host::Name(b"example.com"));
        assert_eq!(u.params, b"");
        assert_eq!(m.values(HeaderName::Accept).count(), 6);
    });
}

#[test]
fn longreq_long_values() {
    with("longreq", |m| {
        let to = m.to().unwrap();
        let dn = format!(
            "\"I have a user name of {} proportion\"",
            "extreme".repeat(10)
        );
        assert_eq!(to.display_name, Some(dn.as_bytes()));
        let tu = to.uri().unwrap();
        assert_eq!(tu.port, Some(6000));
        let long = format!("very{}value", "long".repeat(20));
        assert_eq!(tu.param(b"unknownparam1"), Some(Some(long.as_bytes())));
        let name = format!("longparam{}", "name".repeat(25));
        assert_eq!(tu.param(name.as_bytes()), Some(Some(&b"shortvalue"[..])));
        let from = m.from().unwrap();
        let tag = format!("12{}424", "982".repeat(50));
        assert_eq!(from.tag(), Some(tag.as_bytes()));
        assert!(from
            .uri()
            .unwrap()
            .user_eq("amazinglylongcallername".repeat(5).as_bytes()));
        assert_eq!(
            m.call_id(),
            format!("longreq.one{}longcallid", "really".repeat(20)).as_bytes()
        );
        // 34 Vias over 34 lines and 14 spellings of the name.
        let vias: Vec<Via<'_>> = m
            .values(HeaderName::Via)
            .map(|v| Via::parse(v).unwrap())
            .collect();
        assert_eq!(vias.len(), 34);
        for (i, v) in vias.iter().take(33).enumerate() {
            assert_eq!(
                v.host_bytes,
                format!("sip{}.example.com", 33 - i).as_bytes()
            );
        }
        let last = vias[33];
        assert_eq!(last.received(), Some(&b"192.0.2.5"[..]));
        assert_eq!(
            last.branch(),
            Some(format!("very{}branchvalue", "long".repeat(50)).as_bytes())
        );
        let name = format!("Unknown-{}-Name", "Long".repeat(20));
        assert!(m
            .header_raw(name.as_bytes())
            .unwrap()
            .starts_with(b"unknown-long"));
        assert_eq!(m.body().len(), 150);
    });
}

#[test]
fn dblreq_ignores_trailing_octets() {
    with("dblreq", |m| {
        assert_eq!(m.method(), Method::Register);
        assert_eq!(m.body(), b"");
        assert!(m.len() < load("dblreq").len());
        // Forwarding drops the INVITE-looking noise.
        let mut out = vec![0u8; 2048];
        let n = edit(m, &forward_edits(), &mut out).unwrap();
        assert!(!out[..n].windows(6).any(|w| w == b"INVITE"));
    });
}

#[test]
fn transports_mpart01_and_reasons() {
    with("transports", |m| {
        let t: Vec<&[u8]> = m
            .values(HeaderName::Via)
            .map(|v| Via::parse(v).unwrap().transport)
            .collect();
        assert_eq!(t, vec![&b"UDP"[..], b"SCTP", b"TLS", b"UNKNOWN", b"TCP"]);
    });
    with("mpart01", |m| {
        assert_eq!(m.method(), Method::Message);
        assert_eq!(m.body().len(), 553);
        assert!(m.body().contains(&0));
        let v = m.top_via().unwrap();
        assert_eq!((v.port, v.rport()), (Some(5070), Some(None)));
    });
    with("unreason", |m| {
        let sipedge::sip::StartLine::Response { code, reason } = m.start_line() else {
            panic!()
        };
        assert_eq!(code, 200);
        assert_eq!(
            reason,
            "= 2**3 * 5**2 но сто девяносто девять - простое".as_bytes()
        );
    });
    with("noreason", |m| {
        let sipedge::sip::StartLine::Response { code, reason } = m.start_line() else {
            panic!()
        };
        assert_eq!((code, reason), (100, &b""[..]));
    });
}

#[test]
fn semantics_of_sections_3_2_to_3_4() {
    with("badbranch", |m| {
        let v = m.top_via().unwrap();
        assert_eq!(v.branch(), Some(&b"z9hG4bK"[..]));
    });
    with("unksm2", |m| {
        assert_eq!(m.to().unwrap().uri(), Err(sipedge::sip::ValueError::Scheme));
        assert_eq!(m.from().unwrap().uri_bytes, b"http://www.example.com");
    });
    with("bext01", |m| {
        assert_eq!(
            m.unsupported_proxy_require(&[]),
            Some(&b"noProxiesSupportThis"[..])
        );
        assert_eq!(
            m.check_proxy_require(&[b"noproxiessupportthis", b"NORDOANYPROXIESSUPPORTTHIS"]),
            Ok(())
        );
        // Require is for the UAS, not the proxy.
        assert_eq!(m.values(HeaderName::Require).count(), 2);
    });
    with("regaut01", |m| {
        let c = Credentials::parse(m.header(HeaderName::Authorization).unwrap()).unwrap();
        assert_eq!(c.scheme, b"NoOneKnowsThisScheme");
        assert!(!c.is_digest());
        assert_eq!(c.params.get(b"opaque-data"), Some(&b"here"[..]));
    });
    with("bcast", |m| {
        let vias: Vec<Via<'_>> = m
            .values(HeaderName::Via)
            .map(|v| Via::parse(v).unwrap())
            .collect();
        assert_eq!(vias[1].host.ip(), Some(IpAddr::V4(Ipv4Addr::BROADCAST)));
    });
    with("zeromf", |m| assert_eq!(m.max_forwards(), Ok(Some(0))));
    with("cparam01", |m| {
        let Contact::Addr(c) = Contact::parse(m.header(HeaderName::Contact).unwrap()).unwrap()
        else {
            panic!()
        };
        assert!(!c.angle);
        assert_eq!(c.params.get(b"unknownparam"), Some(None));
        assert_eq!(c.uri().unwrap().params, b"");
    });
    with("cparam02", |m| {
        let Contact::Addr(c) = Contact::parse(m.header(HeaderName::Contact).unwrap()).unwrap()
        else {
            panic!()
        };
        assert_eq!(c.params.get(b"unknownparam"), None);
        assert_eq!(c.uri().unwrap().param(b"unknownparam"), Some(None));
    });
    with("regescrt", |m| {
        let Contact::Addr(c) = Contact::parse(m.header(HeaderName::Contact).unwrap()).unwrap()
        else {
            panic!()
        };
        assert_eq!(c.uri().unwrap().headers, b"Route=%3Csip:sip.example.com%3E");
    });
    with("inv2543", |m| {
        let e = m.essentials().unwrap();
        assert_eq!(e.max_forwards, None);
        assert_eq!(e.top_via.branch(), None);
        assert_eq!(m.header(HeaderName::ContentLength), None);
        assert!(m.body().starts_with(b"v=0\r\n") && m.body().ends_with(b"RTP/AVP 0\r\n"));
    });
}

#[test]
fn rfc5118_ipv6_references() {
    let uri_of = |name: &str| -> (Host<'static>, Option<u16>) {
        let mut index = HeaderIndex::default();
        let m = parse(load(name), &mut index).unwrap();
        let u = m.request_uri().unwrap();
        let host = match u.host {
            Host::V6(a) => Host::V6(a),
            Host::V4(a) => Host::V4(a),
            Host::Name(_) => panic!("{name}: a name"),
        };
        (host, u.port)
    };
    assert_eq!(uri_of("ipv6-good"), (Host::V6(v6("2001:db8::10")), None));
    assert_eq!(
        uri_of("port-ambiguous"),
        (Host::V6(v6("2001:db8::10:5070")), None)
    );
    assert_eq!(
        uri_of("port-unambiguous"),
        (Host::V6(v6("2001:db8::10")), Some(5070))
    );
    assert_eq!(
        uri_of("ipv6-bug-abnf-3-colons"),
        (Host::V6(v6("2001:db8::192.0.2.1")), None)
    );
    assert_eq!(
        uri_of("ipv6-correct-abnf-2-colons"),
        (Host::V6(v6("2001:db8::192.0.2.1")), None)
    );
    with("ipv6-good", |m| {
        let v = m.top_via().unwrap();
        assert_eq!(v.host, Host::V6(v6("2001:db8::9:1")));
        let Contact::Addr(c) = Contact::parse(m.header(HeaderName::Contact).unwrap()).unwrap()
        else {
            panic!()
        };
        assert_eq!(c.uri().unwrap().host, Host::V6(v6("2001:db8::1")));
    });
    with("ipv6-bad", |m| {
        assert_eq!(m.request_uri_bytes(), b"sip:2001:db8::10");
        assert_eq!(m.request_uri().err(), Some(ParseError::RequestUri));
    });
    for name in [
        "via-received-param-with-delim",
        "via-received-param-no-delim",
    ] {
        with(name, |m| {
            let v = m.top_via().unwrap();
            assert_eq!(
                v.received_addr(),
                Some(IpAddr::V6(v6("2001:db8::9:255"))),
                "{name}"
            );
            assert!(v.branch().unwrap().starts_with(b"z9hG4bKas3"));
        });
    }
    with("mult-ip-in-header", |m| {
        let vias: Vec<Via<'_>> = m
            .values(HeaderName::Via)
            .map(|v| Via::parse(v).unwrap())
            .collect();
        assert_eq!(
            (vias[0].host, vias[0].port),
            (Host::V6(v6("2001:db8::9:1")), Some(6050))
        );
        assert_eq!(vias[1].host, Host::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(
            vias[2].received_addr(),
            Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200)))
        );
    });
    with("ipv4-mapped-ipv6", |m| {
        let v = m.top_via().unwrap();
        assert_eq!(
            (v.host, v.port),
            (Host::V6(v6("::ffff:192.0.2.10")), Some(19823))
        );
        let Contact::Addr(c) = Contact::parse(m.header(HeaderName::Contact).unwrap()).unwrap()
        else {
            panic!()
        };
        let u = c.uri().unwrap();
        assert_eq!(
            (u.scheme, u.host),
            (Scheme::Sip, Host::V6(v6("::ffff:192.0.2.2")))
        );
    });
    with("ipv6-in-sdp", |m| {
        assert!(m.body().windows(15).any(|w| w == b"IN IP6 2001:db8"));
        let u: Uri<'_> = m.to().unwrap().uri().unwrap();
        assert_eq!(u.host, Host::V6(v6("2001:db8::10")));
    });
}
