//! Parses arbitrary bytes as a datagram and as the front of a stream, then
//! exercises everything a proxy does with a parsed message: `essentials()`,
//! every comma-separated value of every header, the typed decoders (Via,
//! Contact, Route, Record-Route, From/To URIs, CSeq, credentials) and a
//! typical forwarding edit. Nothing may panic; and when `essentials()`
//! accepted the input, the edited message must parse again with the edit
//! visible in it.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use sipedge::sip::{
    edit, parse, parse_stream, scan, Contact, Credentials, Edits, HeaderIndex, HeaderName,
    MaxForwardsEdit, Message, NameAddr, NewVia, ParseError, Received, Status, Uri, Via,
};

const BRANCH: &[u8] = b"z9hG4bKfuzz0001";

fuzz_target!(|data: &[u8]| {
    let mut index = HeaderIndex::default();
    if let Ok(msg) = parse(data, &mut index) {
        exercise(&msg);
    }
    let mut index = HeaderIndex::default();
    if let Ok(Status::Complete(msg)) = parse_stream(data, &mut index) {
        assert!(msg.len() <= data.len());
        exercise(&msg);
    }
});

fn exercise(msg: &Message<'_>) {
    let buf = msg.buf();
    let essentials = msg.essentials();

    // Every value of every header line, and the per-name iterators.
    for e in msg.headers() {
        let value = e.value.of(buf);
        for v in scan::CommaValues::new(value) {
            assert!(!v.is_empty());
        }
        if e.name != HeaderName::Other {
            let _ = msg.values(e.name).count();
        }
        match e.name {
            HeaderName::Authorization
            | HeaderName::ProxyAuthorization
            | HeaderName::WwwAuthenticate
            | HeaderName::ProxyAuthenticate => {
                if let Ok(c) = Credentials::parse(value) {
                    let _ = c.params.iter().count();
                    let _ = c.params.get(b"nonce");
                }
            }
            _ => {}
        }
    }
    for v in msg.values(HeaderName::Via) {
        if let Ok(via) = Via::parse(v) {
            let _ = (
                via.branch(),
                via.rport(),
                via.received_addr(),
                via.ttl(),
                via.maddr(),
            );
        }
    }
    for v in msg.values(HeaderName::Contact) {
        if let Ok(Contact::Addr(na)) = Contact::parse(v) {
            let _ = (Contact::Addr(na).q(), Contact::Addr(na).expires());
            uri(na.uri());
        }
    }
    for name in [HeaderName::Route, HeaderName::RecordRoute, HeaderName::Path] {
        for v in msg.values(name) {
            if let Ok(na) = NameAddr::parse(v) {
                uri(na.uri());
            }
        }
    }
    if let Ok(f) = msg.from() {
        uri(f.uri());
    }
    if let Ok(t) = msg.to() {
        uri(t.uri());
    }
    let _ = (
        msg.request_uri(),
        msg.expires(),
        msg.check_proxy_require(&[b"path"]),
    );

    // A typical forward: our Via on top (with rport), received/rport stamped
    // on the sender's, Max-Forwards decremented, Record-Route added, the
    // first Route (ours) removed; a response loses its top Via.
    let is_request = msg.is_request();
    let vias = msg.values(HeaderName::Via).count();
    let edits = if is_request {
        Edits {
            push_via: Some(NewVia {
                transport: "UDP",
                host: b"192.0.2.1",
                port: 5060,
                branch: BRANCH,
                rport: true,
            }),
            received: Some(Received {
                ip: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
                port: 5099,
            }),
            record_route: Some(b"sip:192.0.2.1:5060;lr"),
            pop_route: msg.header(HeaderName::Route).is_some(),
            ..Edits::default()
        }
    } else {
        Edits {
            pop_via: vias > 1,
            max_forwards: MaxForwardsEdit::Keep,
            ..Edits::default()
        }
    };
    let mut out = vec![0u8; buf.len() + 512];
    let written = edit(msg, &edits, &mut out);
    let Ok(ess) = essentials else {
        return;
    };
    let n = match written {
        Ok(n) => n,
        Err(e) => panic!("essentials() accepted the message but edit failed: {e}"),
    };
    let cfg = msg.index().config();
    let mut index = HeaderIndex::new(cfg.clone());
    match parse(&out[..n], &mut index) {
        Ok(fwd) => {
            assert_eq!(fwd.call_id(), ess.call_id);
            assert_eq!(fwd.cseq(), ess.cseq);
            assert_eq!(fwd.body(), msg.body());
            if is_request {
                let top = fwd.top_via().expect("our Via decodes");
                assert_eq!(top.branch(), Some(BRANCH));
                let mf = ess.max_forwards.map_or(70, |m| m.saturating_sub(1));
                assert_eq!(fwd.max_forwards(), Ok(Some(mf)));
                fwd.essentials()
                    .expect("a forwarded request keeps its essentials");
            }
        }
        // The edit adds up to three lines, one Via and some bytes: at the
        // limits that is legitimately too much (a proxy answers 483/513).
        Err(ParseError::TooManyHeaders) if msg.headers().len() + 3 > cfg.max_headers => {}
        Err(ParseError::TooManyVias) if vias + 1 > cfg.max_vias => {}
        Err(ParseError::MessageTooLarge) if n > cfg.max_message_size => {}
        Err(e) => panic!(
            "essentials() accepted the message but its forward does not parse: {e}\n{:?}",
            String::from_utf8_lossy(&out[..n])
        ),
    }
}

fn uri(u: Result<Uri<'_>, sipedge::sip::ValueError>) {
    if let Ok(u) = u {
        let _ = (
            u.params().count(),
            u.transport(),
            u.maddr(),
            u.port_or_default(),
        );
        let _ = u.equivalent(&u);
        let _ = u.user_eq(b"alice");
    }
}
