//! The access gate a proxy runs on each new request: the policy, then the
//! authenticator when the policy asks for it, then the policy again with
//! the result. One call, one answer: pass, reply (with the challenge header
//! lines already written), or drop.
//!
//! ```text
//!  ACK, CANCEL ─────────────────────────────────────────► Pass (never challenged, §22.1)
//!  policy(auth = Unknown | No)
//!     ├ Allow ──────────────────────────────────────────► Pass { user: None }
//!     ├ Deny { status, reason } ────────────────────────► Reply
//!     └ Authenticate ─► check
//!          ├ Authenticated ─► policy(auth = Yes) ─ Allow ► Pass { user } · Deny ► Reply
//!          ├ Challenge ─────────────────────────────────► Reply 401/407 + challenge lines
//!          ├ Forbidden ─────────────────────────────────► Reply 403
//!          └ Throttled ─ Drop ──────────────────────────► Drop · Challenge ► Reply 401/407
//! ```
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use core::net::SocketAddr;

use super::{Authenticator, Kind, Outcome, RealmId, ThrottleAction, UserDirectory};
use crate::policy::{AuthState, Decision, Policy, Request, Transport};
use crate::sip::{Essentials, Message, Method};
use crate::time::Instant;

/// A buffer this large always holds the challenge lines (six algorithms,
/// a 255-byte realm).
pub const CHALLENGE_BUF: usize = 2048;

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate<'buf, 'p> {
    /// Send nothing (a throttled request, [`ThrottleAction::Drop`]).
    Drop,
    /// Go on with it.
    Pass {
        /// The authenticated user, if the request was authenticated.
        user: Option<&'buf [u8]>,
        /// The policy rule that let it through (`None`: the default).
        rule: Option<u16>,
    },
    /// Answer it locally with this status and reason, adding the first
    /// `extra` bytes of the caller's buffer as header lines (the challenge).
    Reply {
        /// Status code (401, 407, 403, or a rule's).
        status: u16,
        /// Reason phrase.
        reason: &'p str,
        /// Bytes of header lines written into the buffer.
        extra: usize,
    },
}

/// Runs the policy and, when it asks, the authenticator on new request
/// `msg` from `src`, whose essentials `ess` the caller has decoded (they
/// are not parsed again). `auth` is `None` when no users are configured;
/// `uri_is_us` says the Request-URI names one of the edge's own addresses
/// (see [`Request::uri_is_us`]). The challenge lines of a 401/407 go into
/// `extra` (size it [`CHALLENGE_BUF`]).
#[allow(clippy::too_many_arguments)]
pub fn gate<'buf, 'p, D: UserDirectory>(
    now: Instant,
    wall: u64,
    policy: &'p Policy,
    auth: Option<&mut Authenticator<D>>,
    msg: &Message<'buf>,
    ess: &Essentials<'buf>,
    src: SocketAddr,
    transport: Transport,
    uri_is_us: bool,
    extra: &mut [u8],
) -> Gate<'buf, 'p> {
    if matches!(msg.method(), Method::Ack | Method::Cancel) {
        return Gate::Pass {
            user: None,
            rule: None,
        };
    }
    let state = if auth.is_some() {
        AuthState::Unknown
    } else {
        AuthState::No
    };
    let mut facts = Request::of_essentials(msg, ess, src.ip(), transport, state);
    facts.uri_is_us = uri_is_us;
    let first = policy.evaluate(&facts);
    let a = match (first.decision, auth) {
        (Decision::Allow, _) => {
            return Gate::Pass {
                user: None,
                rule: first.rule,
            }
        }
        (Decision::Deny { status, reason }, _) => {
            return Gate::Reply {
                status,
                reason,
                extra: 0,
            }
        }
        (Decision::Authenticate, Some(a)) => a,
        // Not reachable: with AuthState::No the policy never asks.
        (Decision::Authenticate, None) => {
            return Gate::Reply {
                status: 403,
                reason: "Forbidden (Authentication Required)",
                extra: 0,
            }
        }
    };
    let kind = Kind::for_method(msg.method());
    match a.check(now, wall, msg, kind, src) {
        Outcome::Authenticated { user, .. } => {
            facts.auth = AuthState::Yes;
            let second = policy.evaluate(&facts);
            match second.decision {
                Decision::Allow | Decision::Authenticate => Gate::Pass {
                    user: Some(user),
                    rule: second.rule,
                },
                Decision::Deny { status, reason } => Gate::Reply {
                    status,
                    reason,
                    extra: 0,
                },
            }
        }
        Outcome::Challenge { realm, stale } => challenge(a, wall, msg, realm, stale, src, extra),
        Outcome::Forbidden(r) => Gate::Reply {
            status: 403,
            reason: r.reason(),
            extra: 0,
        },
        Outcome::Throttled { realm } => match a.throttle_action() {
            ThrottleAction::Drop => Gate::Drop,
            ThrottleAction::Challenge => challenge(a, wall, msg, realm, false, src, extra),
        },
    }
}

fn challenge<'buf, 'p, D: UserDirectory>(
    a: &mut Authenticator<D>,
    wall: u64,
    msg: &Message<'_>,
    realm: RealmId,
    stale: bool,
    src: SocketAddr,
    extra: &mut [u8],
) -> Gate<'buf, 'p> {
    let kind = Kind::for_method(msg.method());
    let ua = msg.header_raw(b"User-Agent");
    match a.challenge(wall, kind, realm, stale, src, ua, extra) {
        Ok(n) => Gate::Reply {
            status: kind.status(),
            reason: kind.reason(),
            extra: n,
        },
        Err(_) => Gate::Reply {
            status: 500,
            reason: "Server Internal Error",
            extra: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::{digest, Config, Credentials, Qop, Secret, SeededEntropy, Users};
    use crate::policy::PolicySection;
    use crate::sip::{parse, HeaderIndex};

    const WALL: u64 = 1_700_000_000_000_000;

    fn setup(policy: &str, cfg: Config) -> (Policy, Authenticator) {
        let sec: PolicySection = toml::from_str(policy).unwrap();
        let p = Policy::compile(&sec, &["example.test"], true).unwrap();
        let users = Users::from_toml(
            "[[user]]\nname = \"alice\"\ndomain = \"example.test\"\npassword = \"pw\"\n\
             [[user]]\nname = \"support\"\ndomain = \"example.test\"\npassword = \"pw2\"\n",
        )
        .unwrap();
        let a = Authenticator::new(
            cfg,
            &["example.test"],
            Arc::new(users),
            &Secret::new([1; 32]),
            &mut SeededEntropy::new(9),
        );
        (p, a)
    }

    fn msg(method: &str, ruri: &str, from: &str, cred: &str) -> Vec<u8> {
        let to = if method == "REGISTER" { from } else { ruri };
        format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nTo: <{to}>\r\nFrom: <{from}>;tag=1\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n{cred}Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    /// Runs the gate; returns a summary and the challenge lines.
    fn run(p: &Policy, a: Option<&mut Authenticator>, bytes: &[u8], src: &str) -> (String, String) {
        let mut idx = HeaderIndex::default();
        let m = parse(bytes, &mut idx).unwrap();
        let ess = m.essentials().unwrap();
        let mut extra = [0u8; CHALLENGE_BUF];
        let g = gate(
            Instant::ZERO,
            WALL,
            p,
            a,
            &m,
            &ess,
            src.parse().unwrap(),
            Transport::Udp,
            false,
            &mut extra,
        );
        match g {
            Gate::Drop => ("drop".into(), String::new()),
            Gate::Pass { user, .. } => (
                format!(
                    "pass {}",
                    user.map_or("-".into(), |u| String::from_utf8_lossy(u).into_owned())
                ),
                String::new(),
            ),
            Gate::Reply {
                status,
                reason,
                extra: n,
            } => (
                format!("{status} {reason}"),
                String::from_utf8(extra[..n].to_vec()).unwrap(),
            ),
        }
    }

    fn credentials(
        challenge: &str,
        header: &str,
        user: &str,
        pw: &str,
        method: &str,
        uri: &str,
    ) -> String {
        let value = challenge
            .lines()
            .next()
            .unwrap()
            .split_once(": ")
            .unwrap()
            .1;
        let c = Credentials::parse(value.as_bytes()).unwrap();
        let nonce = String::from_utf8(c.params.get(b"nonce").unwrap().to_vec()).unwrap();
        let ha1 = digest::ha1(
            digest::HashFn::Sha256,
            user.as_bytes(),
            b"example.test",
            pw.as_bytes(),
        );
        let r = digest::response(
            &ha1,
            &digest::Challenge {
                algorithm: digest::Algorithm::Sha256,
                nonce: nonce.as_bytes(),
                cnonce: b"c1",
                nc: b"00000001",
                qop: Some(Qop::Auth),
                method: method.as_bytes(),
                uri: uri.as_bytes(),
                body: b"",
            },
        );
        format!(
            "{header}: Digest username=\"{user}\", realm=\"example.test\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{}\", algorithm=SHA-256, cnonce=\"c1\", nc=00000001, qop=auth\r\n",
            r.as_str()
        )
    }

    const EXAMPLE: &str = r#"
networks.trusted = ["10.0.0.0/8", "127.0.0.0/8"]
[[rule]]
method = ["INVITE", "MESSAGE"]
not_source = ["trusted"]
not_uri_user = ["support"]
action = "deny"
reason = "Forbidden (Internal Only)"
"#;

    #[test]
    fn register_then_call_through_the_gate() {
        let (p, mut a) = setup(EXAMPLE, Config::default());
        // REGISTER: 401 with the challenge, then 200-bound with credentials.
        let reg = msg("REGISTER", "sip:example.test", "sip:alice@example.test", "");
        let (r, ch) = run(&p, Some(&mut a), &reg, "203.0.113.1:5060");
        assert_eq!(r, "401 Unauthorized");
        assert!(ch.starts_with("WWW-Authenticate: Digest realm=\"example.test\""));
        let cred = credentials(
            &ch,
            "Authorization",
            "alice",
            "pw",
            "REGISTER",
            "sip:example.test",
        );
        let reg = msg(
            "REGISTER",
            "sip:example.test",
            "sip:alice@example.test",
            &cred,
        );
        assert_eq!(
            run(&p, Some(&mut a), &reg, "203.0.113.1:5060").0,
            "pass alice"
        );
        // INVITE from the internet: refused before any authentication.
        let inv = msg(
            "INVITE",
            "sip:bob@example.test",
            "sip:alice@example.test",
            "",
        );
        assert_eq!(
            run(&p, Some(&mut a), &inv, "203.0.113.1:5060").0,
            "403 Forbidden (Internal Only)"
        );
        // From inside: 407, then through.
        let (r, ch) = run(&p, Some(&mut a), &inv, "10.0.0.5:5060");
        assert_eq!(r, "407 Proxy Authentication Required");
        let cred = credentials(
            &ch,
            "Proxy-Authorization",
            "alice",
            "pw",
            "INVITE",
            "sip:bob@example.test",
        );
        let inv = msg(
            "INVITE",
            "sip:bob@example.test",
            "sip:alice@example.test",
            &cred,
        );
        assert_eq!(run(&p, Some(&mut a), &inv, "10.0.0.5:5060").0, "pass alice");
        // To the support desk from the internet: allowed by the policy, authenticated as usual.
        let sup = msg(
            "MESSAGE",
            "sip:support@example.test",
            "sip:alice@example.test",
            "",
        );
        assert_eq!(
            run(&p, Some(&mut a), &sup, "203.0.113.1:5060").0,
            "407 Proxy Authentication Required"
        );
        // From another domain to the support desk: no authentication possible or needed.
        let ext = msg(
            "INVITE",
            "sip:support@example.test",
            "sip:carol@elsewhere.test",
            "",
        );
        assert_eq!(run(&p, Some(&mut a), &ext, "203.0.113.1:5060").0, "pass -");
        // ACK and CANCEL pass untouched.
        let ack = msg("ACK", "sip:bob@example.test", "sip:alice@example.test", "");
        assert_eq!(run(&p, Some(&mut a), &ack, "203.0.113.1:5060").0, "pass -");
        // Without users (no authenticator) nothing asks for authentication.
        let p0 =
            Policy::compile(&toml::from_str(EXAMPLE).unwrap(), &["example.test"], false).unwrap();
        let inv = msg(
            "INVITE",
            "sip:bob@example.test",
            "sip:alice@example.test",
            "",
        );
        assert_eq!(
            run(&p0, None::<&mut Authenticator>, &inv, "10.0.0.5:5060").0,
            "pass -"
        );
    }

    #[test]
    fn identity_mismatch_and_throttle_actions() {
        let (p, mut a) = setup("", Config::default());
        let reg = msg(
            "REGISTER",
            "sip:example.test",
            "sip:support@example.test",
            "",
        );
        let (_, ch) = run(&p, Some(&mut a), &reg, "203.0.113.1:5060");
        let cred = credentials(
            &ch,
            "Authorization",
            "alice",
            "pw",
            "REGISTER",
            "sip:example.test",
        );
        let reg = msg(
            "REGISTER",
            "sip:example.test",
            "sip:support@example.test",
            &cred,
        );
        assert_eq!(
            run(&p, Some(&mut a), &reg, "203.0.113.1:5060").0,
            "403 Forbidden (Identity Mismatch)"
        );
        // Ten wrong guesses, then the source is dropped (default) or challenged.
        for action in [ThrottleAction::Drop, ThrottleAction::Challenge] {
            let (p, mut a) = setup(
                "",
                Config {
                    throttle_action: action,
                    ..Config::default()
                },
            );
            let mut last = String::new();
            for _ in 0..11 {
                let reg = msg("REGISTER", "sip:example.test", "sip:alice@example.test", "");
                let (_, ch) = run(&p, Some(&mut a), &reg, "203.0.113.1:5060");
                let cred = credentials(
                    &ch,
                    "Authorization",
                    "alice",
                    "nope",
                    "REGISTER",
                    "sip:example.test",
                );
                let reg = msg(
                    "REGISTER",
                    "sip:example.test",
                    "sip:alice@example.test",
                    &cred,
                );
                last = run(&p, Some(&mut a), &reg, "203.0.113.1:5060").0;
            }
            let want = match action {
                ThrottleAction::Drop => "drop",
                ThrottleAction::Challenge => "401 Unauthorized",
            };
            assert_eq!(last, want);
            assert_eq!(a.counters().throttled, 1);
        }
    }
}
