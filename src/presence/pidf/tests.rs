//! Real-world documents (pjsip, Linphone/SIP.js, Asterisk, resiprocate/Bria,
//! the RFC examples), composition, and every error.

use super::*;
use proptest::prelude::*;
use quick_xml::events::Event;
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::reader::NsReader;

/// What pjsua publishes with an "away" RPID activity (pjsip-simple pidf.c
/// and rpid.c: `entity` before `xmlns`, the note in the tuple and in the
/// person, a GUID-like tuple id).
const PJSIP: &str = include_str!("../../../tests/fixtures/pidf/pjsip.xml");

/// Linphone / SIP.js style: a contact with priority, an RPID person on the phone.
const LINPHONE: &str = include_str!("../../../tests/fixtures/pidf/linphone.xml");

/// RFC 3863 §6, the example.
const RFC3863: &str = include_str!("../../../tests/fixtures/pidf/rfc3863.xml");

/// RFC 3863 §4.1 (prefixed form): the PIDF namespace behind a prefix.
const RFC3863_PREFIXED: &str = include_str!("../../../tests/fixtures/pidf/rfc3863-prefixed.xml");

/// RFC 4480 §4, the example (the person's activities hold an `<rpid:note>`).
const RFC4480: &str = include_str!("../../../tests/fixtures/pidf/rfc4480.xml");

/// Asterisk (chan_sip, res_pjsip's pidf supplement): the pre-RFC RPID
/// draft namespaces, ISO-8859-1 declared on ASCII, the note before the
/// tuples, a status holding only an extension element.
const ASTERISK: &str = include_str!("../../../tests/fixtures/pidf/asterisk.xml");

/// resiprocate's test document / Bria: `<ep:activity>away</ep:activity>`, CRLF.
const BRIA: &str = include_str!("../../../tests/fixtures/pidf/bria.xml");

fn parse(s: &str) -> Result<Document, PidfError> {
    Document::parse(s.as_bytes())
}

fn ok(s: &str) -> Document {
    match parse(s) {
        Ok(doc) => doc,
        Err(e) => panic!("{e:?} for\n{s}"),
    }
}

fn compose_str(docs: &[&Document]) -> String {
    let mut out = vec![b'x'; 3];
    compose("sip:bob@example.test", docs, &mut out);
    String::from_utf8(out).unwrap()
}

/// Every element's (namespace, local name) in document order, resolved by
/// quick-xml itself: what "namespace-correct" means for the output.
fn names(xml: &str) -> Vec<(String, String)> {
    let mut reader = NsReader::from_str(xml);
    let mut names = Vec::new();
    loop {
        match reader.read_resolved_event().unwrap() {
            (ns, Event::Start(e) | Event::Empty(e)) => {
                let ns = match ns {
                    ResolveResult::Bound(Namespace(ns)) => ns.to_owned(),
                    ResolveResult::Unbound => String::new(),
                    ResolveResult::Unknown(p) => panic!("unknown prefix {p}"),
                };
                names.push((ns, e.local_name().into_inner().to_owned()));
            }
            (_, Event::Eof) => return names,
            _ => {}
        }
    }
}

fn tuple_ids(doc: &Document) -> Vec<&str> {
    doc.elements
        .iter()
        .filter(|e| e.kind == Kind::Tuple)
        .filter_map(|e| e.id.as_deref())
        .collect()
}

#[test]
fn real_world_documents() {
    /// (document, open, activities, note, label, tuples)
    type Case<'a> = (
        &'a str,
        bool,
        &'a [&'a str],
        Option<&'a str>,
        &'a str,
        usize,
    );
    let cases: &[Case<'_>] = &[
        (PJSIP, true, &["away"], Some("Idle"), "away", 1),
        (LINPHONE, true, &["on-the-phone"], None, "busy", 1),
        (
            RFC3863,
            true,
            &[],
            Some("Don't Disturb Please!"),
            "online",
            2,
        ),
        (RFC3863_PREFIXED, true, &[], None, "online", 1),
        (
            RFC4480,
            true,
            &["away"],
            Some("Don't Disturb Please!"),
            "away",
            3,
        ),
        (
            ASTERISK,
            false,
            &["away"],
            Some("Unavailable"),
            "offline",
            2,
        ),
        (BRIA, true, &["away"], Some("Away"), "away", 1),
    ];
    for &(body, open, activities, note, label, tuples) in cases {
        let doc = ok(body);
        let status = doc.status();
        assert_eq!(status.open, open, "{body}");
        assert_eq!(status.activities, activities, "{body}");
        assert_eq!(status.note.as_deref(), note, "{body}");
        assert_eq!(status.label(), label, "{body}");
        assert_eq!(doc.tuples(), tuples, "{body}");
        assert_eq!(Document::parse(doc.as_bytes()), Ok(doc.clone()));
        assert!(doc.heap_size() >= body.len());
    }
    assert_eq!(ok(ASTERISK).basic(), Some(Basic::Closed));
    assert_eq!(ok(PJSIP).basic(), Some(Basic::Open));
}

#[test]
fn pjsip_unknown_activity_and_busy() {
    let busy = PJSIP.replace("<rpid:away />", "<rpid:busy/>");
    assert_eq!(ok(&busy).status().label(), "busy");
    let unknown = PJSIP.replace("<rpid:away />", "<rpid:unknown/>");
    let status = ok(&unknown).status();
    assert_eq!(status.activities, ["unknown"]);
    assert_eq!(status.label(), "online");
}

#[test]
fn lenient_forms() {
    let bom = format!("\u{FEFF}{PJSIP}");
    let doc = ok(&bom);
    assert_eq!(doc.as_bytes(), PJSIP.as_bytes(), "the BOM is not kept");
    // Leading whitespace before the declaration, no declaration, no entity.
    ok(&format!("\r\n{PJSIP}"));
    ok(
        r#"<presence xmlns="urn:ietf:params:xml:ns:pidf"><tuple id="a"><status><basic>OPEN</basic></status></tuple></presence>"#,
    );
    // No tuple: an empty presence and a person-only publication.
    let empty = ok(r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@b"/>"#);
    assert_eq!(empty.tuples(), 0);
    assert_eq!(empty.basic(), None);
    assert_eq!(empty.status().label(), "offline");
    ok(
        r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"><dm:person id="p"><rpid:activities><rpid:vacation/></rpid:activities></dm:person></presence>"#,
    );
    // Entities, character references and CDATA in a note.
    let doc = ok(
        r#"<presence xmlns="urn:ietf:params:xml:ns:pidf"><tuple id="a&amp;b"><status><basic>open</basic></status><note> Tom &amp; Jerry&#x2019;s <![CDATA[<cafe>]]> </note></tuple><!-- c --><?pi x?></presence>"#,
    );
    assert_eq!(
        doc.status().note.as_deref(),
        Some("Tom & Jerry\u{2019}s <cafe>")
    );
    assert_eq!(tuple_ids(&doc), ["a&b"]);
}

#[test]
fn note_is_bounded() {
    let long = "é".repeat(MAX_NOTE);
    let doc = ok(&PJSIP.replace("<note>Idle</note>", &format!("<note>{long}</note>")));
    let note = doc.status().note.unwrap();
    assert!(note.len() <= MAX_NOTE && note.len() >= MAX_NOTE - 1);
}

#[test]
fn activities_are_bounded_and_deduplicated() {
    let mut many = String::from("<rpid:away/><rpid:away/>");
    for i in 0..40 {
        many.push_str(&format!("<rpid:act{i}/>"));
    }
    many.push_str(&format!("<rpid:{}/>", "x".repeat(MAX_ACTIVITY_LEN + 1)));
    let doc = ok(&PJSIP.replace("<rpid:away />", &many));
    let activities = doc.status().activities;
    assert_eq!(activities.len(), MAX_ACTIVITIES);
    assert_eq!(activities.first().map(String::as_str), Some("away"));
    assert_eq!(activities.iter().filter(|a| *a == "away").count(), 1);
}

#[test]
fn labels() {
    let status = |open, activities: &[&str]| Status {
        open,
        activities: activities.iter().map(|a| (*a).to_owned()).collect(),
        note: None,
    };
    let cases: &[(bool, &[&str], &str)] = &[
        (false, &[], "offline"),
        (false, &["busy"], "offline"),
        (true, &[], "online"),
        (true, &["unknown"], "online"),
        (true, &["working", "tv"], "online"),
        (true, &["away"], "away"),
        (true, &["vacation"], "away"),
        (true, &["sleeping"], "away"),
        (true, &["busy"], "busy"),
        (true, &["on-the-phone"], "busy"),
        (true, &["meeting"], "busy"),
        (true, &["away", "meeting"], "busy"),
    ];
    for &(open, activities, label) in cases {
        assert_eq!(status(open, activities).label(), label, "{activities:?}");
    }
    assert_eq!(Status::default().label(), "offline");
}

#[test]
fn compose_two_devices() {
    let pjsip = ok(PJSIP);
    let linphone = ok(LINPHONE);
    let out = compose_str(&[&pjsip, &linphone]);
    assert!(out.starts_with(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:bob@example.test\">"
    ));
    let doc = ok(&out);
    // Both tuples, the second id made unique; both persons.
    assert_eq!(tuple_ids(&doc), ["0e4a1f52c7", "0e4a1f52c7-2"]);
    let status = doc.status();
    assert!(status.open);
    assert_eq!(status.activities, ["away", "on-the-phone"]);
    assert_eq!(status.label(), "busy");
    // Each copied element carries its root's declarations.
    assert!(out.contains(r#"<dm:person id="pj5f1c9a2e" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid">"#), "{out}");
    let names = names(&out);
    let count = |ns: &str, local: &str| names.iter().filter(|(n, l)| n == ns && l == local).count();
    assert_eq!(count(NS_PIDF, "tuple"), 2);
    assert_eq!(count(NS_PIDF, "basic"), 2);
    assert_eq!(count(NS_DATA_MODEL, "person"), 2);
    assert_eq!(count(NS_RPID, "activities"), 2);
    assert_eq!(count(NS_RPID, "on-the-phone"), 1);
    // Composition is deterministic and idempotent in shape.
    assert_eq!(compose_str(&[&pjsip, &linphone]), out);
}

#[test]
fn compose_keeps_namespaces_of_prefixed_and_foreign_roots() {
    let prefixed = ok(RFC3863_PREFIXED);
    let rfc = ok(RFC3863);
    // A root whose default namespace is not PIDF: its unprefixed children
    // must keep meaning that namespace, and children of a root without a
    // default namespace must keep meaning none.
    let other_default = ok(
        r#"<p:presence xmlns:p="urn:ietf:params:xml:ns:pidf" xmlns="http://example.com/x" xml:lang="de"><p:tuple id="sg89ae"><p:status><p:basic>closed</p:basic><flag/></p:status><p:note>hallo</p:note></p:tuple><ext id="e"/></p:presence>"#,
    );
    let no_default = ok(
        r#"<p:presence xmlns:p="urn:ietf:params:xml:ns:pidf"><p:tuple id="t"><p:status><p:basic>open</p:basic><flag/></p:status></p:tuple></p:presence>"#,
    );
    let out = compose_str(&[&prefixed, &rfc, &other_default, &no_default]);
    let doc = ok(&out);
    assert_eq!(
        tuple_ids(&doc),
        ["sg89ae", "bs35r9", "eg92n8", "sg89ae-2", "t"]
    );
    assert!(
        out.contains(
            r#"<impp:tuple id="sg89ae" xmlns:impp="urn:ietf:params:xml:ns:pidf" xmlns="">"#
        ),
        "{out}"
    );
    assert!(out.contains(r#"<p:tuple id="sg89ae-2" xmlns:p="urn:ietf:params:xml:ns:pidf" xml:lang="de" xmlns="http://example.com/x">"#), "{out}");
    assert!(
        out.contains(r#"<p:tuple id="t" xmlns:p="urn:ietf:params:xml:ns:pidf" xmlns="">"#),
        "{out}"
    );
    let names = names(&out);
    let flags: Vec<&str> = names
        .iter()
        .filter(|(_, l)| l == "flag")
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(flags, ["http://example.com/x", ""]);
    assert!(names.contains(&("http://example.com/x".into(), "ext".into())));
    // RFC 3863's own extension namespaces travel with its tuple.
    assert!(names.contains(&("urn:ietf:params:xml:ns:pidf:im".into(), "im".into())));
    // Notes follow the tuples; the presence-level note of RFC 3863 is kept.
    assert!(out.contains(r#"<note xmlns:im="urn:ietf:params:xml:ns:pidf:im" xmlns:myex="http://id.example.com/presence/">I'll be in Tokyo next week</note>"#), "{out}");
}

#[test]
fn compose_order_ids_and_escaping() {
    // Ids unique across kinds and against generated ones; the element's own
    // declarations win over its root's.
    let a = ok(
        r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"><dm:person id="x" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"/><tuple id="x"><status><basic>open</basic></status></tuple><tuple id="x-2"><status><basic>open</basic></status></tuple></presence>"#,
    );
    let out = {
        let mut out = Vec::new();
        compose("sip:a&b@<x>\"'\u{1}", &[&a, &a], &mut out);
        String::from_utf8(out).unwrap()
    };
    assert!(
        out.contains(r#"entity="sip:a&amp;b@&lt;x&gt;&quot;&apos;""#),
        "{out}"
    );
    let doc = ok(&out);
    assert_eq!(tuple_ids(&doc), ["x", "x-2", "x-3", "x-2-2"]);
    let person_ids: Vec<&str> = doc
        .elements
        .iter()
        .filter(|e| e.kind == Kind::Person)
        .filter_map(|e| e.id.as_deref())
        .collect();
    assert_eq!(person_ids, ["x-4", "x-5"]);
    // Every element carries the root's dm declaration, the persons their
    // own only once.
    assert_eq!(out.matches("xmlns:dm=").count(), 6, "{out}");
    assert_eq!(
        out.matches(r#"<dm:person id="x-4" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"/>"#)
            .count(),
        1,
        "{out}"
    );
    // An unknown element of the PIDF namespace is accepted but not composed.
    let unknown = ok(
        r#"<presence xmlns="urn:ietf:params:xml:ns:pidf"><bogus/><tuple id="a"><status><basic>open</basic></status></tuple></presence>"#,
    );
    assert!(!compose_str(&[&unknown]).contains("bogus"));
}

#[test]
fn closed_and_empty_composition() {
    let mut out = Vec::new();
    closed("sip:bob@example.test", &mut out);
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:bob@example.test\">"));
    let doc = ok(&text);
    assert_eq!(doc.tuples(), 1);
    assert_eq!(doc.basic(), Some(Basic::Closed));
    assert_eq!(doc.status().label(), "offline");
    let mut again = vec![1, 2, 3];
    compose("sip:bob@example.test", &[], &mut again);
    assert_eq!(again, out, "no documents: the closed document, stable");
}

#[test]
fn errors() {
    let pidf = |inner: &str| {
        format!(r#"<presence xmlns="urn:ietf:params:xml:ns:pidf">{inner}</presence>"#)
    };
    let tuple = r#"<tuple id="a"><status><basic>open</basic></status></tuple>"#;
    let oversized = PJSIP.replace(
        "</presence>",
        &format!("<!--{}--></presence>", "x".repeat(MAX_BODY)),
    );
    let deep = pidf(&format!(
        "{}{}",
        "<x>".repeat(MAX_DEPTH),
        "</x>".repeat(MAX_DEPTH)
    ));
    let just_deep_enough = pidf(&format!(
        "{}{}",
        "<x>".repeat(MAX_DEPTH - 1),
        "</x>".repeat(MAX_DEPTH - 1)
    ));
    let too_many = pidf(&tuple.repeat(MAX_ELEMENTS + 1));
    let just_enough = pidf(&tuple.repeat(MAX_ELEMENTS));
    let big_root = format!(
        r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:z="{}">{tuple}</presence>"#,
        "z".repeat(MAX_ROOT_TAG)
    );
    ok(&just_deep_enough);
    ok(&just_enough);
    let cases: Vec<(String, PidfError)> = vec![
        (oversized, PidfError::TooLarge),
        (big_root, PidfError::TooLarge),
        (deep, PidfError::TooDeep),
        (too_many, PidfError::TooMany),
        // DTDs and entities.
        (
            format!(r#"<!DOCTYPE presence [<!ENTITY x "y">]>{}"#, pidf(tuple)),
            PidfError::Malformed,
        ),
        (
            format!("<!DOCTYPE presence>{}", pidf(tuple)),
            PidfError::Malformed,
        ),
        (
            pidf(r#"<tuple id="a"><status><basic>open</basic></status><note>&x;</note></tuple>"#),
            PidfError::Malformed,
        ),
        (
            pidf(r#"<tuple id="&x;"><status><basic>open</basic></status></tuple>"#),
            PidfError::Malformed,
        ),
        (
            pidf(r#"<tuple id="a"><status><basic>open</basic></status><note>&#1;</note></tuple>"#),
            PidfError::Malformed,
        ),
        (
            pidf(r#"<tuple id="a"><status><basic>open</basic></status><note>a & b</note></tuple>"#),
            PidfError::Malformed,
        ),
        // Not PIDF.
        (
            r#"<presence entity="sip:a@b"><tuple id="a"/></presence>"#.into(),
            PidfError::NotPidf,
        ),
        (
            r#"<presence xmlns="urn:ietf:params:xml:ns:cpim-pidf"/>"#.into(),
            PidfError::NotPidf,
        ),
        (
            r#"<p:presence xmlns:p="urn:ietf:params:xml:ns:pidf:rpid"/>"#.into(),
            PidfError::NotPidf,
        ),
        (
            r#"<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info"/>"#.into(),
            PidfError::NotPidf,
        ),
        // PIDF rules.
        (
            pidf(r#"<tuple><status><basic>open</basic></status></tuple>"#),
            PidfError::Malformed,
        ),
        (
            pidf(r#"<tuple id=""><status><basic>open</basic></status></tuple>"#),
            PidfError::Malformed,
        ),
        (
            pidf(r#"<tuple id="a"><contact>sip:a@b</contact></tuple>"#),
            PidfError::Malformed,
        ),
        (pidf(r#"<tuple id="a"/>"#), PidfError::Malformed),
        (
            pidf(r#"<tuple id="a"><status/></tuple>"#),
            PidfError::Malformed,
        ),
        (
            pidf(r#"<tuple id="a"><status> </status></tuple>"#),
            PidfError::Malformed,
        ),
        (
            pidf(r#"<tuple id="a"><status><basic>opened</basic></status></tuple>"#),
            PidfError::Malformed,
        ),
        (
            pidf(r#"<tuple id="a"><status><basic/></status></tuple>"#),
            PidfError::Malformed,
        ),
        // Not (namespace-)well-formed.
        (pidf(r#"<x:tuple id="a"/>"#), PidfError::Malformed),
        (
            pidf(r#"<tuple id="a" y:z="1"><status><basic>open</basic></status></tuple>"#),
            PidfError::Malformed,
        ),
        (
            pidf(r#"<tuple id="a" id="b"><status><basic>open</basic></status></tuple>"#),
            PidfError::Malformed,
        ),
        (
            pidf(r#"<tuple id="a" xmlns:q=""><status><basic>open</basic></status></tuple>"#),
            PidfError::Malformed,
        ),
        (
            pidf(r#"<tuple id="a<"><status><basic>open</basic></status></tuple>"#),
            PidfError::Malformed,
        ),
        (pidf(r#"<tu"ple id="a"/>"#), PidfError::Malformed),
        (
            pidf(r#"<tuple id=a><status><basic>open</basic></status></tuple>"#),
            PidfError::Malformed,
        ),
        (
            pidf(r#"<tuple id="a"><status><basic>open</basic></status></tupel>"#),
            PidfError::Malformed,
        ),
        (
            format!("{}{}", pidf(tuple), pidf(tuple)),
            PidfError::Malformed,
        ),
        (format!("{}trailing", pidf(tuple)), PidfError::Malformed),
        (format!("leading{}", pidf(tuple)), PidfError::Malformed),
        (
            format!("{}<!-- a -- b -->", pidf(tuple)),
            PidfError::Malformed,
        ),
        (
            format!("{}<?xml version=\"1.0\"?>", pidf(tuple)),
            PidfError::Malformed,
        ),
        (
            format!("<!-- c --><?xml version=\"1.0\"?>{}", pidf(tuple)),
            PidfError::Malformed,
        ),
        (
            format!("<?xml version=\"1.1\"?>{}", pidf(tuple)),
            PidfError::Malformed,
        ),
        (
            format!(
                "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>{}",
                pidf("<note>caf\u{e9}</note>")
            ),
            PidfError::Malformed,
        ),
        (pidf("<note>\u{7}</note>"), PidfError::Malformed),
        // Truncated, empty, garbage.
        (PJSIP[..PJSIP.len() / 2].into(), PidfError::Malformed),
        (
            PJSIP.trim_end().trim_end_matches("</presence>").into(),
            PidfError::Malformed,
        ),
        (String::new(), PidfError::Malformed),
        ("   \r\n".into(), PidfError::Malformed),
        ("hello, world".into(), PidfError::Malformed),
        ("<".into(), PidfError::Malformed),
        ("<presence".into(), PidfError::Malformed),
        ("{\"presence\": \"open\"}".into(), PidfError::Malformed),
    ];
    for (body, error) in &cases {
        assert_eq!(parse(body), Err(*error), "{body}");
    }
    // Not UTF-8 (a UTF-16 BOM, Latin-1 bytes).
    assert_eq!(
        Document::parse(b"\xFF\xFE<\0p\0"),
        Err(PidfError::Malformed)
    );
    assert_eq!(
        Document::parse(
            b"<presence xmlns=\"urn:ietf:params:xml:ns:pidf\"><note>caf\xE9</note></presence>"
        ),
        Err(PidfError::Malformed)
    );
}

/// Every prefix of a valid document parses to an error or (past the root's
/// end) to the same document, without panicking.
#[test]
fn truncations_never_panic() {
    for body in [
        PJSIP,
        LINPHONE,
        RFC3863,
        RFC3863_PREFIXED,
        RFC4480,
        ASTERISK,
        BRIA,
    ] {
        let bytes = body.as_bytes();
        let root_end = body.rfind('>').unwrap() + 1;
        let full = Document::parse(bytes).unwrap();
        for cut in 0..=bytes.len() {
            let result = Document::parse(&bytes[..cut]);
            if cut < root_end {
                assert_eq!(result, Err(PidfError::Malformed), "cut at {cut}");
            } else {
                assert_eq!(
                    result.map(|d| d.status()),
                    Ok(full.status()),
                    "cut at {cut}"
                );
            }
        }
    }
}

proptest! {
    /// Random damage to real documents: parse never panics; what it accepts
    /// round-trips through as_bytes, and composes into a document it accepts.
    #[test]
    fn damaged_documents(
        which in 0usize..7,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let base = [PJSIP, LINPHONE, RFC3863, RFC3863_PREFIXED, RFC4480, ASTERISK, BRIA][which];
        let mut bytes = base.as_bytes().to_vec();
        for (at, byte, op) in edits {
            let at = at % (bytes.len() + 1);
            match op {
                0 => bytes.insert(at, byte),
                1 if at < bytes.len() => { bytes.remove(at); }
                _ if at < bytes.len() => bytes[at] = byte,
                _ => {}
            }
        }
        if let Ok(doc) = Document::parse(&bytes) {
            prop_assert_eq!(Document::parse(doc.as_bytes()), Ok(doc.clone()));
            let mut out = Vec::new();
            compose("sip:p@example.test", &[&doc, &doc], &mut out);
            let composed = Document::parse(&out);
            prop_assert!(composed.is_ok(), "{:?}\n{}", composed, String::from_utf8_lossy(&out));
        }
    }
}
