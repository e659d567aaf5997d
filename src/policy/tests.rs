//! Policy tables: the issue's example in both spellings, each matcher,
//! the auth state, the implicit rules of a users file, and config errors.

use super::*;
use crate::sip::{parse, HeaderIndex};

const SERVED: &[&str] = &["example.test", "example.org"];

fn compile(text: &str, users: bool) -> Policy {
    let sec: PolicySection = toml::from_str(text).unwrap();
    Policy::compile(&sec, SERVED, users).unwrap()
}

/// (method, Request-URI, From URI, To tag, source, transport).
struct Req<'a> {
    method: &'a str,
    ruri: &'a str,
    from: &'a str,
    to_tag: bool,
    source: &'a str,
    transport: Transport,
}

fn req<'a>(method: &'a str, ruri: &'a str, source: &'a str) -> Req<'a> {
    Req {
        method,
        ruri,
        from: "sip:alice@example.test",
        to_tag: false,
        source,
        transport: Transport::Udp,
    }
}

fn decide(p: &Policy, r: &Req<'_>, auth: AuthState) -> String {
    let tag = if r.to_tag { ";tag=x" } else { "" };
    let text = format!(
        "{m} {u} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nTo: <{u}>{tag}\r\nFrom: <{f}>;tag=1\r\nCall-ID: c\r\nCSeq: 1 {m}\r\nContent-Length: 0\r\n\r\n",
        m = r.method,
        u = r.ruri,
        f = r.from,
    );
    let mut idx = HeaderIndex::default();
    let msg = parse(text.as_bytes(), &mut idx).unwrap();
    let facts = Request::of(&msg, r.source.parse().unwrap(), r.transport, auth);
    let v = p.evaluate(&facts);
    let rule = v.rule.map_or("default".to_owned(), |i| format!("#{i}"));
    match v.decision {
        Decision::Allow => format!("allow {rule}"),
        Decision::Authenticate => format!("auth {rule}"),
        Decision::Deny { status, reason } => format!("deny {status} {reason} {rule}"),
    }
}

const EXAMPLE_NOT: &str = r#"
networks.trusted = ["10.0.0.0/8", "127.0.0.0/8"]

[[rule]]
name = "no calls or IM from the internet, except to the support desk"
method = ["INVITE", "MESSAGE"]
not_source = ["trusted"]
not_uri_user = ["support"]
action = "deny"
reason = "Forbidden (Internal Only)"
"#;

const EXAMPLE_ORDERED: &str = r#"
networks.trusted = ["10.0.0.0/8", "127.0.0.0/8"]

[[rule]]
name = "the support desk takes calls and IM from anywhere"
method = ["INVITE", "MESSAGE"]
uri_user = ["support"]
uri_domain = ["$served"]
action = "require-auth"

[[rule]]
name = "no calls or IM from the internet"
method = ["MESSAGE", "INVITE"]
not_source = ["trusted"]
action = "deny"
reason = "Forbidden (Internal Only)"
"#;

#[test]
fn the_issues_example_both_ways() {
    for (text, deny_rule) in [(EXAMPLE_NOT, "#0"), (EXAMPLE_ORDERED, "#1")] {
        let p = compile(text, false);
        let d = |r: Req<'_>| decide(&p, &r, AuthState::Unknown);
        let denied = format!("deny 403 Forbidden (Internal Only) {deny_rule}");
        // From the internet: INVITE and MESSAGE refused…
        assert_eq!(
            d(req("INVITE", "sip:bob@example.test", "203.0.113.5")),
            denied
        );
        assert_eq!(
            d(req("MESSAGE", "sip:bob@example.org", "203.0.113.5")),
            denied
        );
        assert_eq!(
            d(req("MESSAGE", "sip:bob@example.test", "2001:db8::5")),
            denied
        );
        // … except to support@<domain>.
        let support = d(req("INVITE", "sip:support@example.test", "203.0.113.5"));
        let support_im = d(req("MESSAGE", "sip:support@example.org", "203.0.113.5"));
        assert!(
            !support.starts_with("deny") && !support_im.starts_with("deny"),
            "{support} {support_im}"
        );
        // Other methods from the internet, and everything from inside, go on.
        assert_eq!(
            d(req("REGISTER", "sip:example.test", "203.0.113.5")),
            "allow default"
        );
        assert_eq!(
            d(req("SUBSCRIBE", "sip:bob@example.test", "203.0.113.5")),
            "allow default"
        );
        assert_eq!(
            d(req("INVITE", "sip:bob@example.test", "10.1.2.3")),
            "allow default"
        );
        assert_eq!(
            d(req("MESSAGE", "sip:bob@example.test", "127.0.0.1")),
            "allow default"
        );
        assert_eq!(
            d(req("MESSAGE", "sip:bob@example.test", "::ffff:10.0.0.1")),
            "allow default"
        );
    }
    // The ordered form authenticates the support desk's callers.
    let p = compile(EXAMPLE_ORDERED, false);
    let r = req("INVITE", "sip:support@example.test", "203.0.113.5");
    assert_eq!(decide(&p, &r, AuthState::Unknown), "auth #0");
    assert_eq!(decide(&p, &r, AuthState::Yes), "allow #0");
    assert_eq!(
        decide(&p, &r, AuthState::No),
        "deny 403 Forbidden (Authentication Required) #0"
    );
    // support@ a domain we do not serve is not the support desk.
    assert!(decide(
        &p,
        &req("INVITE", "sip:support@evil.test", "203.0.113.5"),
        AuthState::Unknown
    )
    .starts_with("deny"));
}

#[test]
fn each_matcher() {
    let p = compile(
        r#"
networks.office = ["192.0.2.0/24"]

[[rule]]
transport = ["tls", "wss"]
action = "allow"

[[rule]]
source = ["office", "198.51.100.7"]
method = ["PUBLISH"]
action = "deny"
status = 488
reason = "Not Here"

[[rule]]
from_user = ["spammer", "x%20y"]
action = "deny"

[[rule]]
from_domain = ["*.evil.test"]
not_from_domain = ["good.evil.test"]
action = "deny"
reason = "Evil"

[[rule]]
not_method = ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "MESSAGE", "PUBLISH", "FOO"]
action = "deny"
reason = "Method"

[[rule]]
in_dialog = true
action = "allow"

[[rule]]
method = ["MESSAGE"]
authenticated = false
action = "deny"
reason = "Sign In"

[[rule]]
uri_domain = ["example.org"]
not_uri_user = ["open"]
action = "require-auth"
"#,
        false,
    );
    let d = |r: Req<'_>| decide(&p, &r, AuthState::Unknown);
    let mut tls = req("MESSAGE", "sip:a@example.test", "203.0.113.1");
    tls.transport = Transport::Tls;
    assert_eq!(d(tls), "allow #0");
    assert_eq!(
        d(req("PUBLISH", "sip:a@example.test", "192.0.2.200")),
        "deny 488 Not Here #1"
    );
    assert_eq!(
        d(req("PUBLISH", "sip:a@example.test", "198.51.100.7")),
        "deny 488 Not Here #1"
    );
    assert_eq!(
        d(req("PUBLISH", "sip:a@example.test", "198.51.100.8")),
        "allow default"
    );
    let mut spam = req("INVITE", "sip:a@example.test", "203.0.113.1");
    spam.from = "sip:spammer@example.test";
    assert_eq!(d(spam), "deny 403 Forbidden #2");
    let mut escaped = req("INVITE", "sip:a@example.test", "203.0.113.1");
    escaped.from = "sip:x%2520y@example.test";
    assert_eq!(
        d(escaped),
        "deny 403 Forbidden #2",
        "users compare unescaped"
    );
    let mut evil = req("INVITE", "sip:a@example.test", "203.0.113.1");
    evil.from = "sip:a@Mail.EVIL.test.";
    assert_eq!(d(evil), "deny 403 Evil #3");
    let mut good = req("INVITE", "sip:a@example.test", "203.0.113.1");
    good.from = "sip:a@good.evil.test";
    assert_eq!(d(good), "allow default");
    let mut bare = req("INVITE", "sip:a@example.test", "203.0.113.1");
    bare.from = "sip:a@evil.test";
    assert_eq!(d(bare), "allow default", "*.evil.test is subdomains only");
    assert_eq!(
        d(req("SUBSCRIBE", "sip:a@example.test", "203.0.113.1")),
        "deny 403 Method #4"
    );
    assert_eq!(
        d(req("FOO", "sip:a@example.test", "203.0.113.1")),
        "allow default"
    );
    assert_eq!(
        d(req("BAR", "sip:a@example.test", "203.0.113.1")),
        "deny 403 Method #4"
    );
    let mut dialog = req("MESSAGE", "sip:a@example.test", "203.0.113.1");
    dialog.to_tag = true;
    assert_eq!(d(dialog), "allow #5");
    // `authenticated` asks for authentication, then decides on it.
    let msg = req("MESSAGE", "sip:a@example.test", "203.0.113.1");
    assert_eq!(decide(&p, &msg, AuthState::Unknown), "auth #6");
    assert_eq!(decide(&p, &msg, AuthState::Yes), "allow default");
    assert_eq!(decide(&p, &msg, AuthState::No), "deny 403 Sign In #6");
    assert_eq!(
        d(req("INVITE", "sip:a@example.org", "203.0.113.1")),
        "auth #7"
    );
    assert_eq!(
        d(req("INVITE", "sip:open@example.org", "203.0.113.1")),
        "allow default"
    );
    assert_eq!(p.len(), 8);
    assert_eq!(p.rule_name(0), "");
}

#[test]
fn a_users_file_makes_served_domains_authenticate() {
    let p = compile("", true);
    let d = |r: Req<'_>| decide(&p, &r, AuthState::Unknown);
    assert_eq!(p.len(), 3);
    assert_eq!(
        d(req("REGISTER", "sip:example.test", "203.0.113.1")),
        "auth #0"
    );
    assert_eq!(
        d(req("INVITE", "sip:x@elsewhere.test", "203.0.113.1")),
        "auth #1"
    );
    let mut inbound = req("INVITE", "sip:alice@example.test", "203.0.113.1");
    inbound.from = "sip:carol@elsewhere.test";
    assert_eq!(
        d(inbound),
        "allow default",
        "calls from other domains to our users"
    );
    // Not an open relay: a stranger to a stranger is refused, in any
    // method, unless inside a dialog we recorded…
    for m in ["INVITE", "OPTIONS", "MESSAGE", "REGISTER", "SUBSCRIBE"] {
        let mut relay = req(m, "sip:100@198.51.100.7", "203.0.113.1");
        relay.from = "sip:100@1.1.1.1";
        assert_eq!(d(relay), "deny 403 Forbidden (Not Relaying) #2", "{m}");
    }
    let mut in_dialog = req("BYE", "sip:bob@198.51.100.7", "203.0.113.1");
    in_dialog.from = "sip:carol@elsewhere.test";
    in_dialog.to_tag = true;
    assert_eq!(d(in_dialog), "allow default");
    // …and a Request-URI naming the edge's own address counts as served
    // (a trunk addressing the edge by IP).
    let text = "INVITE sip:+15551234@192.0.2.10:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nTo: <sip:+15551234@192.0.2.10>\r\nFrom: <sip:+1444@carrier.test>;tag=1\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let mut idx = HeaderIndex::default();
    let msg = parse(text.as_bytes(), &mut idx).unwrap();
    let mut facts = Request::of(
        &msg,
        "203.0.113.1".parse().unwrap(),
        Transport::Udp,
        AuthState::Unknown,
    );
    assert!(matches!(p.evaluate(&facts).decision, Decision::Deny { .. }));
    facts.uri_is_us = true;
    assert!(matches!(p.evaluate(&facts).decision, Decision::Allow));
    assert_eq!(
        decide(
            &p,
            &req("REGISTER", "sip:example.test", "203.0.113.1"),
            AuthState::Yes
        ),
        "allow #0"
    );
    // A configured default replaces the implicit rules.
    let p = compile("default = \"deny\"", true);
    assert_eq!(p.len(), 0);
    assert_eq!(
        decide(
            &p,
            &req("OPTIONS", "sip:example.test", "10.0.0.1"),
            AuthState::Unknown
        ),
        "deny 403 Forbidden default"
    );
    // Without a users file nothing is implied.
    assert!(compile("", false).is_empty());
    let p = compile("default = \"require-auth\"", false);
    assert_eq!(
        decide(
            &p,
            &req("OPTIONS", "sip:example.test", "10.0.0.1"),
            AuthState::Unknown
        ),
        "auth default"
    );
    assert_eq!(
        Policy::default()
            .evaluate(&Request {
                source: "10.0.0.1".parse().unwrap(),
                transport: Transport::Udp,
                method: Method::Invite,
                method_bytes: b"INVITE",
                from: None,
                uri: None,
                in_dialog: false,
                auth: AuthState::No,
                uri_is_us: false,
            })
            .decision,
        Decision::Allow
    );
}

#[test]
fn config_errors_name_their_place() {
    let err = |text: &str| {
        let sec: PolicySection = toml::from_str(text).unwrap();
        Policy::compile(&sec, SERVED, false).unwrap_err()
    };
    assert_eq!(
        err("networks.a = [\"10.0.0.0/8\", \"bad\"]"),
        PolicyError::Network(Place::Network(0), 2)
    );
    assert_eq!(
        err("[[rule]]\nsource = [\"nope\"]\naction = \"allow\""),
        PolicyError::Network(Place::Rule(1), 1)
    );
    assert_eq!(
        err("[[rule]]\naction = \"allow\"\n[[rule]]\ntransport = [\"udp\", \"sctp\"]\naction = \"allow\""),
        PolicyError::Transport(Place::Rule(2), 2)
    );
    assert_eq!(
        err("[[rule]]\nmethod = [\"IN VITE\"]\naction = \"allow\""),
        PolicyError::Method(Place::Rule(1), 1)
    );
    assert_eq!(
        err("[[rule]]\nfrom_user = [\"\"]\naction = \"allow\""),
        PolicyError::Value(Place::Rule(1), 1)
    );
    assert_eq!(
        err("[[rule]]\nuri_domain = [\"*example.test\"]\naction = \"allow\""),
        PolicyError::Value(Place::Rule(1), 1)
    );
    assert_eq!(
        err("[[rule]]\naction = \"permit\""),
        PolicyError::Action(Place::Rule(1))
    );
    assert_eq!(
        err("[[rule]]\naction = \"deny\"\nreason = \"a\\r\\nX-Injected: 1\""),
        PolicyError::Reason(Place::Rule(1))
    );
    assert_eq!(
        err("[[rule]]\naction = \"deny\"\nstatus = 200"),
        PolicyError::Reason(Place::Rule(1))
    );
    assert_eq!(
        err("default = \"maybe\""),
        PolicyError::Action(Place::Default)
    );
    assert!(toml::from_str::<PolicySection>("[[rule]]\naction = \"allow\"\nsourse = []").is_err());
    assert_eq!(
        PolicyError::Network(Place::Rule(3), 2).to_string(),
        "[[policy.rule]] #3: entry 2 is not a network set name or an address/CIDR"
    );
}

#[test]
fn evaluation_does_not_allocate_per_request_shape() {
    // Many rules and a large network set: still one pass, binary searches.
    let mut text = String::from("networks.big = [");
    for i in 0..1000 {
        text.push_str(&format!("\"10.{}.{}.0/24\",", i / 256, i % 256));
    }
    text.push_str("]\n");
    for i in 0..50 {
        text.push_str(&format!(
            "[[rule]]\nsource = [\"big\"]\nuri_user = [\"u{i}\"]\naction = \"deny\"\n"
        ));
    }
    let p = compile(&text, false);
    assert_eq!(
        decide(
            &p,
            &req("INVITE", "sip:u49@example.test", "10.3.231.9"),
            AuthState::Unknown
        ),
        "deny 403 Forbidden #49"
    );
    assert_eq!(
        decide(
            &p,
            &req("INVITE", "sip:u49@example.test", "10.3.232.9"),
            AuthState::Unknown
        ),
        "allow default"
    );
    assert_eq!(p.networks().len(), 1);
}

#[test]
fn facts_from_essentials_equal_facts_from_the_message() {
    for (ruri, to, from) in [
        (
            "sip:bob@example.test",
            "<sip:bob@example.test>",
            "<sip:alice@example.test>;tag=1",
        ),
        (
            "sips:bob@example.org",
            "<sip:bob@example.org>;tag=9",
            "\"A\" <tel:+15551234>;tag=1",
        ),
        (
            "sip:example.test",
            "sip:bob@example.test;tag=x",
            "<mailto:a@b>;tag=1",
        ),
    ] {
        let text = format!(
            "REGISTER {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nTo: {to}\r\nFrom: {from}\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
        );
        let mut idx = HeaderIndex::default();
        let msg = parse(text.as_bytes(), &mut idx).unwrap();
        let ess = msg.essentials().unwrap();
        let src = "192.0.2.1".parse().unwrap();
        let a = Request::of(&msg, src, Transport::Tcp, AuthState::Unknown);
        let b = Request::of_essentials(&msg, &ess, src, Transport::Tcp, AuthState::Unknown);
        let view = |r: &Request<'_>| {
            format!(
                "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
                r.source, r.transport, r.method, r.method_bytes, r.from, r.uri, r.in_dialog, r.auth
            )
        };
        assert_eq!(view(&a), view(&b), "{text}");
    }
}
