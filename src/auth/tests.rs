//! Every path of the verifier, driven like a client would: take the
//! challenge we write, answer it, and check what the next request gets.

use super::*;
use crate::sip::{parse, HeaderIndex, ResponseSpec};

const T0: u64 = 1_700_000_000_000_000; // wall clock, µs
const SRC: &str = "192.0.2.10:5060";

fn src() -> SocketAddr {
    SRC.parse().unwrap()
}

fn at(s: u64) -> Instant {
    Instant::from_micros(s * 1_000_000)
}

fn users() -> Arc<Users> {
    let text = format!(
        r#"
[[user]]
name = "alice"
domain = "example.test"
password = "alice-secret"

[[user]]
name = "bob"
domain = "example.test"
ha1_md5 = "{}"
"#,
        digest::ha1(HashFn::Md5, b"bob", b"example.test", b"bob-secret").as_str()
    );
    Arc::new(Users::from_toml(&text).unwrap())
}

fn auth_with(cfg: Config) -> Authenticator {
    Authenticator::new(
        cfg,
        &["example.test", "other.test"],
        users(),
        &Secret::new([42; 32]),
        &mut SeededEntropy::new(1),
    )
}

/// SHA-256 offered first (the default offers MD5 first: see
/// `default_offers_md5_first_and_the_strongest_to_chosen_clients`), so the
/// first line these tests answer is the stronger one.
fn auth() -> Authenticator {
    auth_with(Config {
        algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
        ..Config::default()
    })
}

/// A request; `cred` is a whole header line (with CRLF) or "".
fn request(method: &str, ruri: &str, from: &str, to: &str, cred: &str) -> Vec<u8> {
    format!(
        "{method} {ruri} SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-1\r\n\
Max-Forwards: 70\r\n\
To: <sip:{to}>\r\n\
From: <sip:{from}>;tag=ft\r\n\
Call-ID: call-1\r\n\
CSeq: 1 {method}\r\n\
Contact: <sip:x@192.0.2.10>\r\n\
{cred}Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn register(user: &str, cred: &str) -> Vec<u8> {
    let aor = format!("{user}@example.test");
    request("REGISTER", "sip:example.test", &aor, &aor, cred)
}

fn invite(from: &str, cred: &str) -> Vec<u8> {
    request(
        "INVITE",
        "sip:carol@example.test",
        from,
        "carol@example.test",
        cred,
    )
}

/// What `check` says about `bytes` (owned, so the message can go).
fn check_at(
    a: &mut Authenticator,
    now: Instant,
    wall: u64,
    bytes: &[u8],
    from: SocketAddr,
) -> String {
    let mut idx = HeaderIndex::default();
    let m = parse(bytes, &mut idx).unwrap();
    let kind = Kind::for_method(m.method());
    match a.check(now, wall, &m, kind, from) {
        Outcome::Authenticated { user, realm } => {
            format!(
                "ok {}@{}",
                String::from_utf8_lossy(user),
                String::from_utf8_lossy(a.realm_name(realm))
            )
        }
        Outcome::Challenge { stale, .. } => format!("challenge stale={stale}"),
        Outcome::Forbidden(r) => format!("forbidden {r:?}"),
        Outcome::Throttled { .. } => "throttled".into(),
    }
}

fn check(a: &mut Authenticator, bytes: &[u8]) -> String {
    check_at(a, at(0), T0, bytes, src())
}

/// The challenge lines for a fresh challenge at `wall`.
fn challenge(a: &mut Authenticator, kind: Kind, wall: u64, stale: bool) -> String {
    let mut buf = [0u8; 1024];
    let n = a
        .challenge(wall, kind, RealmId(0), stale, src(), None, &mut buf)
        .unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

struct Answer<'a> {
    user: &'a str,
    password: &'a str,
    method: &'a str,
    uri: &'a str,
    nc: u32,
    /// Index of the challenge line to answer (0: the first algorithm offered).
    line: usize,
    qop: Qop,
    body: &'a [u8],
}

impl<'a> Answer<'a> {
    fn new(user: &'a str, password: &'a str, method: &'a str, uri: &'a str) -> Self {
        Self {
            user,
            password,
            method,
            uri,
            nc: 1,
            line: 0,
            qop: Qop::Auth,
            body: b"",
        }
    }
}

/// The credentials header line a client would send for challenge `lines`.
fn answer(lines: &str, kind: Kind, ans: &Answer<'_>) -> String {
    let line = lines.split("\r\n").nth(ans.line).unwrap();
    let value = line.split_once(": ").unwrap().1;
    let c = Credentials::parse(value.as_bytes()).unwrap();
    let p = |n: &str| String::from_utf8(c.params.get(n.as_bytes()).unwrap().to_vec()).unwrap();
    let (realm, nonce, opaque, alg) = (p("realm"), p("nonce"), p("opaque"), p("algorithm"));
    let algorithm = Algorithm::from_token(alg.as_bytes()).unwrap();
    let ha1 = digest::ha1(
        algorithm.hash(),
        ans.user.as_bytes(),
        realm.as_bytes(),
        ans.password.as_bytes(),
    );
    let nc = format!("{:08x}", ans.nc);
    let resp = digest::response(
        &ha1,
        &digest::Challenge {
            algorithm,
            nonce: nonce.as_bytes(),
            cnonce: b"0a4f113b",
            nc: nc.as_bytes(),
            qop: Some(ans.qop),
            method: ans.method.as_bytes(),
            uri: ans.uri.as_bytes(),
            body: ans.body,
        },
    );
    let header = match kind {
        Kind::Www => "Authorization",
        Kind::Proxy => "Proxy-Authorization",
    };
    format!(
        "{header}: Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{}\", response=\"{}\", algorithm={alg}, cnonce=\"0a4f113b\", nc={nc}, qop={}, opaque=\"{opaque}\"\r\n",
        ans.user,
        ans.uri,
        resp.as_str(),
        ans.qop.as_str(),
    )
}

fn alice_register(a: &mut Authenticator, wall: u64) -> String {
    let ch = challenge(a, Kind::Www, wall, false);
    answer(
        &ch,
        Kind::Www,
        &Answer::new("alice", "alice-secret", "REGISTER", "sip:example.test"),
    )
}

/// The nonce of a credentials or challenge line, replaced by `N`.
fn mask_nonce(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("nonce=\"") {
        out.push_str(&rest[..i + 7]);
        let after = &rest[i + 7..];
        let end = after.find('"').unwrap();
        out.push('N');
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[test]
fn challenge_lines() {
    let mut a = auth();
    assert_eq!(
        check(&mut a, &register("alice", "")),
        "challenge stale=false"
    );
    let ch = challenge(&mut a, Kind::Www, T0, false);
    let opaque = {
        let c = Credentials::parse(
            ch.lines()
                .next()
                .unwrap()
                .split_once(": ")
                .unwrap()
                .1
                .as_bytes(),
        )
        .unwrap();
        String::from_utf8(c.params.get(b"opaque").unwrap().to_vec()).unwrap()
    };
    assert_eq!(
        mask_nonce(&ch),
        format!(
            "WWW-Authenticate: Digest realm=\"example.test\", nonce=\"N\", opaque=\"{opaque}\", algorithm=SHA-256, qop=\"auth\"\r\n\
WWW-Authenticate: Digest realm=\"example.test\", nonce=\"N\", opaque=\"{opaque}\", algorithm=MD5, qop=\"auth\"\r\n"
        )
    );
    let nonces: Vec<&str> = ch
        .split("nonce=\"")
        .skip(1)
        .map(|s| &s[..NONCE_LEN])
        .collect();
    assert_eq!(nonces[0], nonces[1], "one nonce for every algorithm");
    // A stale proxy challenge, with the algorithms in the configured order.
    let mut b = auth_with(Config {
        algorithms: vec![Algorithm::Md5, Algorithm::Sha512t256, Algorithm::Sha256Sess],
        auth_int: true,
        ..Config::default()
    });
    let ch = challenge(&mut b, Kind::Proxy, T0, true);
    let lines: Vec<&str> = ch.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("Proxy-Authenticate: Digest realm=\"example.test\""));
    assert!(
        lines[0].ends_with("algorithm=MD5, qop=\"auth,auth-int\", stale=true"),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("algorithm=SHA-512-256,"));
    assert!(lines[2].contains("algorithm=SHA-256-sess,"));
    // Each challenge gets a fresh nonce.
    assert_ne!(
        challenge(&mut b, Kind::Proxy, T0, false),
        challenge(&mut b, Kind::Proxy, T0, false)
    );
    // A buffer too small is an error, not a partial header.
    let mut small = [0u8; 40];
    assert_eq!(
        b.challenge(T0, Kind::Proxy, RealmId(0), false, src(), None, &mut small),
        Err(EmitError::BufferFull)
    );
    assert_eq!(a.counters().challenges, 1);
}

#[test]
fn register_succeeds_with_sha256_and_md5() {
    let mut a = auth();
    let cred = alice_register(&mut a, T0);
    assert!(cred.contains("algorithm=SHA-256"));
    assert_eq!(
        check(&mut a, &register("alice", &cred)),
        "ok alice@example.test"
    );
    // MD5: the second line of the challenge; bob has only an MD5 HA1.
    let ch = challenge(&mut a, Kind::Www, T0, false);
    let mut ans = Answer::new("bob", "bob-secret", "REGISTER", "sip:example.test");
    ans.line = 1;
    let cred = answer(&ch, Kind::Www, &ans);
    assert!(cred.contains("algorithm=MD5"));
    assert_eq!(
        check(&mut a, &register("bob", &cred)),
        "ok bob@example.test"
    );
    // bob answering SHA-256 cannot succeed (no SHA-256 HA1): the same as a wrong password.
    ans.line = 0;
    let cred = answer(&challenge(&mut a, Kind::Www, T0, false), Kind::Www, &ans);
    assert_eq!(
        check(&mut a, &register("bob", &cred)),
        "challenge stale=false"
    );
    assert_eq!(a.counters().authenticated, 2);
}

#[test]
fn invite_is_challenged_with_407_and_succeeds() {
    let mut a = auth();
    let mut idx = HeaderIndex::default();
    let bytes = invite("alice@example.test", "");
    let m = parse(&bytes, &mut idx).unwrap();
    assert_eq!(Kind::for_method(m.method()), Kind::Proxy);
    // Authorization (not Proxy-) is not looked at for a 407.
    let www = answer(
        &challenge(&mut a, Kind::Www, T0, false),
        Kind::Www,
        &Answer::new("alice", "alice-secret", "INVITE", "sip:carol@example.test"),
    );
    assert_eq!(
        check(&mut a, &invite("alice@example.test", &www)),
        "challenge stale=false"
    );
    let ch = challenge(&mut a, Kind::Proxy, T0, false);
    let cred = answer(
        &ch,
        Kind::Proxy,
        &Answer::new("alice", "alice-secret", "INVITE", "sip:carol@example.test"),
    );
    assert!(cred.starts_with("Proxy-Authorization: "));
    assert_eq!(
        check(&mut a, &invite("alice@example.test", &cred)),
        "ok alice@example.test"
    );
    assert_eq!(a.counters().failures, 0);
}

#[test]
fn wrong_password_is_a_failure() {
    let mut a = auth();
    let ch = challenge(&mut a, Kind::Www, T0, false);
    let cred = answer(
        &ch,
        Kind::Www,
        &Answer::new("alice", "guess", "REGISTER", "sip:example.test"),
    );
    assert_eq!(
        check(&mut a, &register("alice", &cred)),
        "challenge stale=false"
    );
    assert_eq!(a.counters().failures, 1);
    assert_eq!(a.counters().authenticated, 0);
}

#[test]
fn expired_nonce_is_stale_only_with_the_right_password() {
    let mut a = auth();
    let cred = alice_register(&mut a, T0);
    let later = T0 + 301 * 1_000_000;
    assert_eq!(
        check_at(&mut a, at(301), later, &register("alice", &cred), src()),
        "challenge stale=true"
    );
    assert_eq!(a.counters().stale, 1);
    // Within the lifetime it works (the one above did not use up nc=1).
    assert_eq!(
        check_at(
            &mut a,
            at(299),
            T0 + 299 * 1_000_000,
            &register("alice", &cred),
            src()
        ),
        "ok alice@example.test"
    );
    // A wrong password with an expired nonce is just a failure.
    let ch = challenge(&mut a, Kind::Www, T0, false);
    let bad = answer(
        &ch,
        Kind::Www,
        &Answer::new("alice", "nope", "REGISTER", "sip:example.test"),
    );
    assert_eq!(
        check_at(
            &mut a,
            at(400),
            T0 + 400 * 1_000_000,
            &register("alice", &bad),
            src()
        ),
        "challenge stale=false"
    );
    // A nonce from the future (beyond the allowed skew) is stale too.
    let ahead = alice_register(&mut a, T0 + 460 * 1_000_000);
    assert_eq!(
        check_at(
            &mut a,
            at(400),
            T0 + 400 * 1_000_000,
            &register("alice", &ahead),
            src()
        ),
        "challenge stale=true"
    );
}

#[test]
fn replayed_nc_is_refused_and_counts_move_on() {
    let mut a = auth();
    let ch = challenge(&mut a, Kind::Www, T0, false);
    let mut ans = Answer::new("alice", "alice-secret", "REGISTER", "sip:example.test");
    let first = answer(&ch, Kind::Www, &ans);
    assert_eq!(
        check(&mut a, &register("alice", &first)),
        "ok alice@example.test"
    );
    assert_eq!(
        check(&mut a, &register("alice", &first)),
        "challenge stale=true"
    );
    assert_eq!(a.counters().replays, 1);
    ans.nc = 3;
    let third = answer(&ch, Kind::Www, &ans);
    ans.nc = 2;
    let second = answer(&ch, Kind::Www, &ans);
    assert_eq!(
        check(&mut a, &register("alice", &third)),
        "ok alice@example.test"
    );
    assert_eq!(
        check(&mut a, &register("alice", &second)),
        "ok alice@example.test",
        "reordered"
    );
    assert_eq!(
        check(&mut a, &register("alice", &second)),
        "challenge stale=true"
    );
    assert_eq!(
        check(&mut a, &register("alice", &third)),
        "challenge stale=true"
    );
}

#[test]
fn the_replay_table_is_bounded_and_never_lets_a_replay_in() {
    let mut a = auth_with(Config {
        replay_slots: 16,
        per_source: Gcra::per(1000, Duration::from_secs(60)),
        per_user: Gcra::per(1000, Duration::from_secs(60)),
        ..Config::default()
    });
    assert_eq!(a.replay_table().capacity(), 16);
    let mut creds = Vec::new();
    for i in 0..200u64 {
        let cred = alice_register(&mut a, T0 + i * 1_000);
        assert_eq!(
            check(&mut a, &register("alice", &cred)),
            "ok alice@example.test",
            "{i}"
        );
        creds.push(cred);
    }
    assert!(a.replay_table().len() <= 16);
    assert!(a.replay_table().evictions() > 0);
    for cred in &creds {
        assert_eq!(
            check(&mut a, &register("alice", cred)),
            "challenge stale=true"
        );
    }
    // A nonce issued now is still good.
    let cred = alice_register(&mut a, T0 + 300_000);
    assert_eq!(
        check(&mut a, &register("alice", &cred)),
        "ok alice@example.test"
    );
}

#[test]
fn wrong_realm() {
    let mut a = auth();
    // Credentials for another realm only: as if there were none.
    let ch = challenge(&mut a, Kind::Www, T0, false)
        .replace("realm=\"example.test\"", "realm=\"elsewhere.test\"");
    let cred = answer(
        &ch,
        Kind::Www,
        &Answer::new("alice", "alice-secret", "REGISTER", "sip:example.test"),
    );
    assert_eq!(
        check(&mut a, &register("alice", &cred)),
        "challenge stale=false"
    );
    assert_eq!(a.counters().failures, 0);
    // A nonce issued for other.test, presented for example.test: its MAC fails.
    let mut buf = [0u8; 1024];
    let n = a
        .challenge(T0, Kind::Www, RealmId(1), false, src(), None, &mut buf)
        .unwrap();
    let other = String::from_utf8(buf[..n].to_vec())
        .unwrap()
        .replace("realm=\"other.test\"", "realm=\"example.test\"");
    let cred = answer(
        &other,
        Kind::Www,
        &Answer::new("alice", "alice-secret", "REGISTER", "sip:example.test"),
    );
    assert_eq!(
        check(&mut a, &register("alice", &cred)),
        "challenge stale=false"
    );
    assert_eq!(a.counters().failures, 1);
    // A From in a domain we do not serve cannot be authenticated here.
    assert_eq!(
        check(&mut a, &invite("mallory@evil.test", "")),
        "forbidden UnknownRealm"
    );
}

#[test]
fn identity_must_match_from_or_to() {
    let mut a = auth();
    // alice's valid credentials on an INVITE claiming to be from bob.
    let ch = challenge(&mut a, Kind::Proxy, T0, false);
    let cred = answer(
        &ch,
        Kind::Proxy,
        &Answer::new("alice", "alice-secret", "INVITE", "sip:carol@example.test"),
    );
    assert_eq!(
        check(&mut a, &invite("bob@example.test", &cred)),
        "forbidden IdentityMismatch"
    );
    // alice registering bob's AoR.
    let cred = alice_register(&mut a, T0);
    let bytes = request(
        "REGISTER",
        "sip:example.test",
        "alice@example.test",
        "bob@example.test",
        &cred,
    );
    assert_eq!(check(&mut a, &bytes), "forbidden IdentityMismatch");
    assert_eq!(a.counters().forbidden, 2);
    assert_eq!(
        Refusal::IdentityMismatch.reason(),
        "Forbidden (Identity Mismatch)"
    );
}

/// A served domain may be an address (an edge with no DNS name: SIPp's
/// register_auth.xml registers `sip:user@[remote_ip]`). Its realm is the
/// address in canonical text, and its users authenticate like any others
/// (before the fix, an address host had no realm: 403 UnknownRealm).
#[test]
fn address_domain_is_a_realm() {
    let users = Users::from_toml(
        "[[user]]\nname = \"alice\"\ndomain = \"127.0.0.1\"\npassword = \"pw\"\n\n\
         [[user]]\nname = \"bob\"\ndomain = \"[2001:db8::1]\"\npassword = \"pw\"\n",
    )
    .unwrap();
    let mut a = Authenticator::new(
        Config::default(),
        &["127.0.0.1", "[2001:db8::1]"],
        Arc::new(users),
        &Secret::new([42; 32]),
        &mut SeededEntropy::new(1),
    );
    for (user, host, realm) in [
        ("alice", "127.0.0.1", RealmId(0)),
        ("bob", "[2001:DB8:0::1]", RealmId(1)),
    ] {
        let aor = format!("{user}@{host}");
        let ruri = format!("sip:{host}");
        let bytes = request("REGISTER", &ruri, &aor, &aor, "");
        assert_eq!(check(&mut a, &bytes), "challenge stale=false", "{aor}");
        let mut buf = [0u8; 1024];
        let n = a
            .challenge(T0, Kind::Www, realm, false, src(), None, &mut buf)
            .unwrap();
        let ch = String::from_utf8(buf[..n].to_vec()).unwrap();
        let cred = answer(&ch, Kind::Www, &Answer::new(user, "pw", "REGISTER", &ruri));
        let bytes = request("REGISTER", &ruri, &aor, &aor, &cred);
        let want = format!("ok {user}@{}", String::from_utf8_lossy(a.realm_name(realm)));
        assert_eq!(check(&mut a, &bytes), want, "{aor}");
    }
    assert_eq!(a.realm_name(RealmId(1)), b"[2001:db8::1]");
}

#[test]
fn unknown_user_and_wrong_password_look_the_same() {
    let mut a = auth();
    let respond = |a: &mut Authenticator, user: &str| -> String {
        let ch = challenge(a, Kind::Www, T0, false);
        let cred = answer(
            &ch,
            Kind::Www,
            &Answer::new(user, "wrong", "REGISTER", "sip:example.test"),
        );
        let bytes = register(user, &cred);
        let mut idx = HeaderIndex::default();
        let m = parse(&bytes, &mut idx).unwrap();
        let Outcome::Challenge { realm, stale } = a.check(at(0), T0, &m, Kind::Www, src()) else {
            panic!("not a challenge");
        };
        let mut extra = [0u8; 1024];
        let n = a
            .challenge(T0, Kind::Www, realm, stale, src(), None, &mut extra)
            .unwrap();
        let spec = ResponseSpec {
            extra: &extra[..n],
            to_tag: Some(b"tag1"),
            ..ResponseSpec::new(Kind::Www.status(), Kind::Www.reason())
        };
        let mut out = [0u8; 2048];
        let n = crate::sip::response(&m, &spec, &mut out).unwrap();
        mask_nonce(core::str::from_utf8(&out[..n]).unwrap()).replace(user, "USER")
    };
    let known = respond(&mut a, "alice");
    let unknown = respond(&mut a, "mallory");
    assert_eq!(known, unknown);
    assert!(known.starts_with("SIP/2.0 401 Unauthorized\r\n"));
    assert_eq!(a.counters().failures, 2);
    // The same holds without credentials at all, for any user.
    assert_eq!(
        check(&mut a, &register("nobody", "")),
        check(&mut a, &register("alice", ""))
    );
}

#[test]
fn nonces_survive_a_key_rotation_and_other_shards_issue_their_own() {
    let cfg = Config {
        nonce_lifetime: Duration::from_secs(300),
        key_rotation: Duration::from_secs(300),
        ..Config::default()
    };
    let mut a = auth_with(cfg.clone());
    // Issued 10 s before a rotation boundary, used 10 s after it.
    let boundary = (T0 / 300_000_000 + 1) * 300_000_000;
    let cred = alice_register(&mut a, boundary - 10_000_000);
    assert_eq!(
        check_at(
            &mut a,
            at(20),
            boundary + 10_000_000,
            &register("alice", &cred),
            src()
        ),
        "ok alice@example.test"
    );
    // A nonce of shard 1 presented to shard 0 (same secret): right password, so stale.
    let mut other = auth_with(Config { issuer: 1, ..cfg });
    let cred = alice_register(&mut other, T0);
    assert_eq!(
        check(&mut a, &register("alice", &cred)),
        "challenge stale=true"
    );
    assert_eq!(
        check(&mut other, &register("alice", &cred)),
        "ok alice@example.test"
    );
}

#[test]
fn bound_nonces_and_uri_and_opaque_checks() {
    let mut a = auth_with(Config {
        bind_source: true,
        ..Config::default()
    });
    let cred = alice_register(&mut a, T0);
    let elsewhere: SocketAddr = "198.51.100.1:5060".parse().unwrap();
    assert_eq!(
        check_at(&mut a, at(0), T0, &register("alice", &cred), elsewhere),
        "challenge stale=false"
    );
    assert_eq!(
        check(&mut a, &register("alice", &cred)),
        "ok alice@example.test"
    );
    // digest-uri must name the Request-URI (equivalent forms are fine).
    let ch = challenge(&mut a, Kind::Www, T0, false);
    let cred = answer(
        &ch,
        Kind::Www,
        &Answer::new("alice", "alice-secret", "REGISTER", "sip:other.test"),
    );
    assert_eq!(
        check(&mut a, &register("alice", &cred)),
        "challenge stale=false"
    );
    let cred = answer(
        &ch,
        Kind::Www,
        &Answer::new("alice", "alice-secret", "REGISTER", "sip:EXAMPLE.test"),
    );
    assert_eq!(
        check(&mut a, &register("alice", &cred)),
        "ok alice@example.test"
    );
    // A wrong opaque.
    let ch = challenge(&mut a, Kind::Www, T0, false);
    let cred = answer(
        &ch,
        Kind::Www,
        &Answer::new("alice", "alice-secret", "REGISTER", "sip:example.test"),
    );
    let bad = cred.replace("opaque=\"", "opaque=\"x");
    assert_eq!(
        check(&mut a, &register("alice", &bad)),
        "challenge stale=false"
    );
}

#[test]
fn malformed_or_unoffered_credentials_fail() {
    let mut a = auth_with(Config {
        per_source: Gcra::per(100, Duration::from_secs(60)),
        algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
        ..Config::default()
    });
    let ch = challenge(&mut a, Kind::Www, T0, false);
    let good = answer(
        &ch,
        Kind::Www,
        &Answer::new("alice", "alice-secret", "REGISTER", "sip:example.test"),
    );
    let cases = [
        good.replace("qop=auth", "qop=auth-int"), // not offered
        good.replace(", qop=auth", ""),           // RFC 2069 form: no nc, no replay protection
        good.replace(", cnonce=\"0a4f113b\"", ""),
        good.replace("nc=00000001", "nc=xyz"),
        good.replace("algorithm=SHA-256", "algorithm=SHA-1"),
        good.replace("algorithm=SHA-256", "algorithm=SHA-512-256"), // not offered by default
        good.replace(
            "username=\"alice\"",
            "username=\"alice\", username=\"alice\"",
        ),
        good.replace("response=\"", "response=\"0"),
        good.replace("nonce=\"", "nonce=\"A"),
        good.replace("\r\n", ", userhash=true\r\n"),
        good.replace("Digest ", "Digest ,,=\""),
    ];
    for (i, c) in cases.iter().enumerate() {
        assert_eq!(
            check(&mut a, &register("alice", c)),
            "challenge stale=false",
            "case {i}: {c}"
        );
    }
    assert_eq!(
        a.counters().failures,
        cases.len() as u64 - 1,
        "the unparsable one is as good as none"
    );
    // The good one still works (none of the above used its nc).
    assert_eq!(
        check(&mut a, &register("alice", &good)),
        "ok alice@example.test"
    );
}

#[test]
fn sess_algorithms_and_auth_int() {
    let mut a = auth_with(Config {
        algorithms: vec![
            Algorithm::Sha256Sess,
            Algorithm::Md5Sess,
            Algorithm::Sha512t256,
        ],
        auth_int: true,
        ..Config::default()
    });
    let ch = challenge(&mut a, Kind::Www, T0, false);
    for line in 0..3 {
        let mut ans = Answer::new("alice", "alice-secret", "REGISTER", "sip:example.test");
        ans.line = line;
        ans.nc = line as u32 + 1;
        assert_eq!(
            check(&mut a, &register("alice", &answer(&ch, Kind::Www, &ans))),
            "ok alice@example.test",
            "line {line}"
        );
    }
    // auth-int covers the body (empty here).
    let mut ans = Answer::new("alice", "alice-secret", "REGISTER", "sip:example.test");
    ans.qop = Qop::AuthInt;
    ans.nc = 9;
    assert_eq!(
        check(&mut a, &register("alice", &answer(&ch, Kind::Www, &ans))),
        "ok alice@example.test"
    );
    ans.body = b"v=0";
    ans.nc = 10;
    assert_eq!(
        check(&mut a, &register("alice", &answer(&ch, Kind::Www, &ans))),
        "challenge stale=false"
    );
}

#[test]
fn guessing_is_throttled_per_source_and_per_user() {
    // 10 failures per 60 s per source: after 10, one guess per 6 s is checked.
    let mut a = auth();
    let mut now = 0u64;
    let guess = |a: &mut Authenticator, now: u64, user: &str, pw: &str, from: SocketAddr| {
        let wall = T0 + now * 1_000_000;
        let ch = challenge(a, Kind::Www, wall, false);
        let cred = answer(
            &ch,
            Kind::Www,
            &Answer::new(user, pw, "REGISTER", "sip:example.test"),
        );
        check_at(a, at(now), wall, &register(user, &cred), from)
    };
    for _ in 0..10 {
        assert_eq!(
            guess(&mut a, now, "alice", "wrong", src()),
            "challenge stale=false"
        );
    }
    // Throttled: even the right password is not checked.
    assert_eq!(
        guess(&mut a, now, "alice", "alice-secret", src()),
        "throttled"
    );
    // An unknown user from the same source: the same answer (nothing tells them apart).
    assert_eq!(guess(&mut a, now, "zed", "x", src()), "throttled");
    // Requests without credentials are still challenged (registrations must go on).
    assert_eq!(
        check(&mut a, &register("alice", "")),
        "challenge stale=false"
    );
    now += 6;
    assert_eq!(
        guess(&mut a, now, "alice", "wrong", src()),
        "challenge stale=false"
    );
    assert_eq!(guess(&mut a, now, "alice", "wrong", src()), "throttled");
    // A minute of guessing at 60 a second: about one guess in 6 s is checked.
    let mut checked = 0;
    for i in 0..3_600u64 {
        let t = now + 7 + i / 60;
        if guess(&mut a, t, "carol", "wrong", src()) != "throttled" {
            checked += 1;
        }
    }
    assert!(checked <= 12, "{checked}");
    assert!(a.counters().throttled > 3_000);

    // Per user: 20 failures from 20 sources, then the user is throttled
    // everywhere, known or not.
    let mut b = auth();
    for user in ["alice", "zed"] {
        for i in 0..20u8 {
            let from: SocketAddr = format!("198.51.100.{i}:5060").parse().unwrap();
            assert_eq!(
                guess(&mut b, 0, user, "wrong", from),
                "challenge stale=false"
            );
        }
        let fresh: SocketAddr = "203.0.113.1:5060".parse().unwrap();
        assert_eq!(
            guess(&mut b, 0, user, "wrong", fresh),
            "throttled",
            "{user}"
        );
    }
    assert_eq!(b.throttle_action(), ThrottleAction::Drop);
}

/// Two shards (two authenticators) given one shared source table: a
/// source's failures add up across them, so a guesser naming users owned
/// by different shards meets one limit (separately each shard allowed 10,
/// 20 in all); other sources are not affected.
#[test]
fn the_source_throttle_holds_across_shards_that_share_it() {
    let guess = |a: &mut Authenticator, user: &str, pw: &str, from: SocketAddr| {
        let ch = challenge(a, Kind::Www, T0, false);
        let cred = answer(
            &ch,
            Kind::Www,
            &Answer::new(user, pw, "REGISTER", "sip:example.test"),
        );
        check_at(a, at(0), T0, &register(user, &cred), from)
    };
    let cfg = Config {
        algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
        ..Config::default()
    };
    for shared in [false, true] {
        let table = Arc::new(SharedRate::new(cfg.throttle_slots, cfg.per_source, 7));
        let mut shards = [auth_with(cfg.clone()), auth_with(cfg.clone())];
        if shared {
            for a in &mut shards {
                a.share_sources(table.clone());
            }
        }
        let mut checked = 0;
        for i in 0..40 {
            // Users spread over the shards (as AoR owners are).
            let (a, user) = (&mut shards[i % 2], ["alice", "bob", "carol", "dave"][i % 4]);
            if guess(a, user, "wrong", src()) != "throttled" {
                checked += 1;
            }
        }
        assert_eq!(checked, if shared { 10 } else { 20 }, "shared: {shared}");
        let other: SocketAddr = "198.51.100.77:5060".parse().unwrap();
        assert_eq!(
            guess(&mut shards[1], "alice", "alice-secret", other),
            "ok alice@example.test"
        );
    }
}

#[test]
fn config_from_section() {
    let s: AuthSection = toml::from_str(
        r#"
algorithms = ["MD5", "sha-256", "SHA-512-256-sess"]
qop = ["auth", "auth-int"]
nonce_lifetime = 120
bind_source = true
secret = "00112233445566778899aabbccddeeff"
source_failures = 5
source_window = 50
throttle_action = "challenge"
"#,
    )
    .unwrap();
    let c = Config::from_section(&s).unwrap();
    assert_eq!(
        c.algorithms,
        vec![Algorithm::Md5, Algorithm::Sha256, Algorithm::Sha512t256Sess]
    );
    assert!(c.auth_int && c.bind_source && c.secret.is_some());
    assert_eq!(c.nonce_lifetime, Duration::from_secs(120));
    assert_eq!(c.key_rotation, Duration::from_secs(3600));
    assert_eq!(c.per_source, Gcra::per(5, Duration::from_secs(50)));
    assert_eq!(c.per_user, Config::default().per_user);
    assert_eq!(c.throttle_action, ThrottleAction::Challenge);
    assert_eq!(
        Config::from_section(&AuthSection::default()),
        Ok(Config::default())
    );
    let bad =
        |t: &str| Config::from_section(&toml::from_str::<AuthSection>(t).unwrap()).unwrap_err();
    assert_eq!(
        bad("algorithms = [\"MD5\", \"SHA-1\"]"),
        AuthConfigError::Algorithm(1)
    );
    assert_eq!(bad("algorithms = []"), AuthConfigError::Algorithms);
    assert_eq!(
        bad("algorithms = [\"MD5\", \"md5\"]"),
        AuthConfigError::Algorithms
    );
    assert_eq!(bad("qop = [\"auth-int\"]"), AuthConfigError::Qop);
    assert_eq!(bad("nonce_lifetime = 0"), AuthConfigError::Lifetime);
    assert_eq!(
        bad("nonce_lifetime = 600\nkey_rotation = 300"),
        AuthConfigError::Lifetime
    );
    assert_eq!(bad("secret = \"abc\""), AuthConfigError::Secret);
    assert_eq!(bad("user_failures = 0"), AuthConfigError::Throttle);
    assert_eq!(
        bad("throttle_action = \"tarpit\""),
        AuthConfigError::ThrottleAction
    );
    assert!(
        toml::from_str::<AuthSection>("nonce_lifetme = 3").is_err(),
        "unknown keys are refused"
    );
}

#[test]
fn reloading_users_keeps_nonces() {
    let mut a = auth();
    let cred = alice_register(&mut a, T0);
    let new = Users::from_toml(
        "[[user]]\nname = \"alice\"\ndomain = \"example.test\"\npassword = \"alice-secret\"\n",
    )
    .unwrap();
    a.set_users(Arc::new(new));
    assert_eq!(a.users().len(), 1);
    assert_eq!(
        check(&mut a, &register("alice", &cred)),
        "ok alice@example.test"
    );
    let gone = Users::from_toml("").unwrap();
    a.set_users(Arc::new(gone));
    let cred = alice_register(&mut a, T0);
    assert_eq!(
        check(&mut a, &register("alice", &cred)),
        "challenge stale=false"
    );
}

/// Deployed clients (SIPp 3.6, svcrack, SIP.js) answer only the first
/// challenge line and only MD5: the default offers MD5 first. Clients named
/// in `strongest_first` (a User-Agent prefix, any case) get the other
/// configured algorithms first, in their configured order.
#[test]
fn default_offers_md5_first_and_the_strongest_to_chosen_clients() {
    let algs = |ch: &str| -> Vec<String> {
        ch.lines()
            .map(|l| {
                l.split("algorithm=")
                    .nth(1)
                    .unwrap()
                    .split(',')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let cfg = Config::from_section(&AuthSection::default()).unwrap();
    assert_eq!(cfg.algorithms, vec![Algorithm::Md5, Algorithm::Sha256]);
    let mut a = auth_with(cfg);
    assert_eq!(
        algs(&challenge(&mut a, Kind::Www, T0, false)),
        ["MD5", "SHA-256"]
    );
    let cfg = Config::from_section(&AuthSection {
        algorithms: Some(vec![
            "MD5".into(),
            "SHA-512-256".into(),
            "MD5-sess".into(),
            "SHA-256".into(),
        ]),
        strongest_first: Some(vec!["Linphone".into(), " ".into()]),
        ..AuthSection::default()
    })
    .unwrap();
    assert_eq!(
        cfg.strongest_first,
        vec![b"linphone".to_vec().into_boxed_slice()]
    );
    let mut a = auth_with(cfg);
    let mut ch = |ua: Option<&[u8]>| {
        let mut buf = [0u8; 2048];
        let n = a
            .challenge(T0, Kind::Proxy, RealmId(0), false, src(), ua, &mut buf)
            .unwrap();
        algs(std::str::from_utf8(&buf[..n]).unwrap())
    };
    assert_eq!(ch(None), ["MD5", "SHA-512-256", "MD5-sess", "SHA-256"]);
    assert_eq!(
        ch(Some(b"sipp register_auth.xml")),
        ["MD5", "SHA-512-256", "MD5-sess", "SHA-256"]
    );
    assert_eq!(
        ch(Some(b"LINPHONE-Desktop/5.2")),
        ["SHA-512-256", "SHA-256", "MD5", "MD5-sess"]
    );
    assert_eq!(
        ch(Some(b"Linph")),
        ["MD5", "SHA-512-256", "MD5-sess", "SHA-256"]
    );
}

/// A reload of `[auth]` applies at once and never lets a replay in: the
/// counts of nonces in use survive a reload that keeps the table; a resized
/// table or a longer lifetime makes every earlier nonce stale (not fresh); a
/// new secret makes the old nonces stale (a clean re-challenge, not a failure)
/// until they would have expired.
#[test]
fn reconfigure_is_replay_safe() {
    let secret = Secret::new([42; 32]);
    let base = Config {
        algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
        ..Config::default()
    };
    // Settings that leave the tables alone: a used count stays used.
    let mut a = auth();
    let cred = alice_register(&mut a, T0);
    assert_eq!(
        check(&mut a, &register("alice", &cred)),
        "ok alice@example.test"
    );
    a.reconfigure(
        Config {
            algorithms: vec![Algorithm::Md5, Algorithm::Sha256],
            nonce_lifetime: Duration::from_secs(200),
            ..base.clone()
        },
        &secret,
        T0 / 1_000,
    );
    assert_eq!(
        check(&mut a, &register("alice", &cred)),
        "challenge stale=true"
    );
    assert_eq!(a.counters().replays, 1);
    assert!(challenge(&mut a, Kind::Www, T0, false)
        .starts_with("WWW-Authenticate: Digest realm=\"example.test\", nonce=\""));
    assert!(challenge(&mut a, Kind::Www, T0, false).contains("algorithm=MD5"));

    // A longer lifetime: a nonce issued before the reload is stale, used or not.
    let mut a = auth();
    let used = alice_register(&mut a, T0);
    let unused = alice_register(&mut a, T0);
    assert_eq!(
        check(&mut a, &register("alice", &used)),
        "ok alice@example.test"
    );
    a.reconfigure(
        Config {
            nonce_lifetime: Duration::from_secs(900),
            key_rotation: Duration::from_secs(3600),
            ..base.clone()
        },
        &secret,
        T0 / 1_000,
    );
    assert_eq!(
        check(&mut a, &register("alice", &used)),
        "challenge stale=true"
    );
    assert_eq!(
        check(&mut a, &register("alice", &unused)),
        "challenge stale=true"
    );
    assert_eq!(a.counters().replays, 0, "stale, not taken for replays");
    let fresh = alice_register(&mut a, T0 + 1_000);
    assert_eq!(
        check_at(&mut a, at(1), T0 + 2_000, &register("alice", &fresh), src()),
        "ok alice@example.test"
    );

    // A resized table: the same.
    let mut a = auth();
    let used = alice_register(&mut a, T0);
    assert_eq!(
        check(&mut a, &register("alice", &used)),
        "ok alice@example.test"
    );
    a.reconfigure(
        Config {
            replay_slots: 1024,
            ..base.clone()
        },
        &secret,
        T0 / 1_000,
    );
    assert_eq!(a.replay_table().capacity(), 1024);
    assert_eq!(
        check(&mut a, &register("alice", &used)),
        "challenge stale=true"
    );

    // A new secret: old nonces are stale until they expire, then failures;
    // a wrong password with an old nonce is a failure at once.
    let mut a = auth();
    let old = alice_register(&mut a, T0);
    let ch = challenge(&mut a, Kind::Www, T0, false);
    let bad = answer(
        &ch,
        Kind::Www,
        &Answer::new("alice", "nope", "REGISTER", "sip:example.test"),
    );
    a.reconfigure(base.clone(), &Secret::new([7; 32]), T0 / 1_000);
    assert_eq!(
        check(&mut a, &register("alice", &old)),
        "challenge stale=true"
    );
    assert_eq!(a.counters().failures, 0);
    assert_eq!(
        check(&mut a, &register("alice", &bad)),
        "challenge stale=false"
    );
    assert_eq!(a.counters().failures, 1);
    let late = T0 + 400 * 1_000_000;
    assert_eq!(
        check_at(&mut a, at(400), late, &register("alice", &old), src()),
        "challenge stale=false"
    );
    let new = alice_register(&mut a, late);
    assert_eq!(
        check_at(&mut a, at(400), late, &register("alice", &new), src()),
        "ok alice@example.test"
    );
    // The issuer id is the shard's, whatever the reloaded settings say.
    assert_eq!(a.config().issuer, 0);
}
