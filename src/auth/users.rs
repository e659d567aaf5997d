//! The users file and the [`UserDirectory`] the verifier reads HA1s from.
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! domain = "example.test"
//! password = "alice-secret"      # or ha1_md5 / ha1_sha256 / ha1_sha512_256 = "<hex>"
//! ```
//!
//! The realm of a domain is its name, so a stored HA1 must be
//! `H(name ":" domain ":" password)`. A password is turned into the three
//! HA1s at load and then dropped; a user given only some HA1s can only
//! answer challenges of those algorithms (offer them, or give the password).
//!
//! [`Users`] is immutable once built: a reload builds a new one and the
//! shards swap their `Arc`. Lookups take `(name, domain)` as bytes and
//! allocate nothing.
//!
//! Why a trait: a later store (Redis) serves the same lookups from a
//! per-shard replica fed by its change stream, as the location service
//! does; the verifier only ever asks [`UserDirectory::ha1`].
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use serde::Deserialize;

use super::digest::{self, HashFn, Hex};
use crate::hash::hash_bytes;

/// Where the verifier gets HA1s from.
pub trait UserDirectory {
    /// The HA1 of user `name` in `realm` (a served domain, lower-case) for
    /// hash function `h`; `None` when the user is unknown or has no secret
    /// usable with `h`. Must not allocate in the steady state.
    fn ha1(&self, name: &[u8], realm: &[u8], h: HashFn) -> Option<Hex>;
}

/// What is wrong with one `[[user]]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UserProblem {
    /// `name` is empty, too long, or holds `"`, `\`, `@`, `:` or a control character.
    #[error("bad name (empty, longer than 128 bytes, or holding '\"', '\\', '@', ':', space or a control character)")]
    BadName,
    /// `domain` is empty, or neither a hostname nor an address.
    #[error("bad domain (not a hostname or an address)")]
    BadDomain,
    /// None of `password`, `ha1_md5`, `ha1_sha256`, `ha1_sha512_256`.
    #[error("no password and no ha1_*")]
    NoSecret,
    /// Both a password and an HA1.
    #[error("password and ha1_* are exclusive")]
    PasswordAndHa1,
    /// `ha1_md5` is not 32 hex digits.
    #[error("ha1_md5 must be 32 hex digits")]
    BadHa1Md5,
    /// `ha1_sha256` is not 64 hex digits.
    #[error("ha1_sha256 must be 64 hex digits")]
    BadHa1Sha256,
    /// `ha1_sha512_256` is not 64 hex digits.
    #[error("ha1_sha512_256 must be 64 hex digits")]
    BadHa1Sha512t256,
    /// The same name and domain appear twice.
    #[error("duplicate of the user on line {first_line}")]
    Duplicate {
        /// Line of the first entry.
        first_line: usize,
    },
}

/// Why a users file was refused.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// Not TOML, or unknown keys, or a missing `name`/`domain` (the message has the line).
    #[error("users file: {0}")]
    Toml(Box<toml::de::Error>),
    /// One entry is invalid.
    #[error("users file line {line} (user #{index}): {problem}")]
    Invalid {
        /// Line of the entry's `name`.
        line: usize,
        /// Position of the entry in the file, from 1.
        index: usize,
        /// What is wrong.
        problem: UserProblem,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    user: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: toml::Spanned<String>,
    domain: String,
    password: Option<String>,
    ha1_md5: Option<String>,
    ha1_sha256: Option<String>,
    ha1_sha512_256: Option<String>,
}

/// One user with their HA1s.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    name: Box<str>,
    domain: Box<str>,
    md5: Option<Hex>,
    sha256: Option<Hex>,
    sha512t256: Option<Hex>,
}

impl User {
    /// A user with a password (HA1s computed for realm = `domain`).
    pub fn with_password(name: &str, domain: &str, password: &str) -> Self {
        let domain = domain.to_ascii_lowercase();
        let h = |f| {
            Some(digest::ha1(
                f,
                name.as_bytes(),
                domain.as_bytes(),
                password.as_bytes(),
            ))
        };
        Self {
            md5: h(HashFn::Md5),
            sha256: h(HashFn::Sha256),
            sha512t256: h(HashFn::Sha512t256),
            name: name.into(),
            domain: domain.into(),
        }
    }

    /// The user name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The domain (lower-case), which is also the realm.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn ha1(&self, h: HashFn) -> Option<Hex> {
        match h {
            HashFn::Md5 => self.md5,
            HashFn::Sha256 => self.sha256,
            HashFn::Sha512t256 => self.sha512t256,
        }
    }
}

impl core::fmt::Debug for User {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "User({}@{})", self.name, self.domain)
    }
}

/// An immutable set of users, looked up by (name, domain) without allocation.
#[derive(Debug, Clone, Default)]
pub struct Users {
    users: Vec<User>,
    // INVARIANT: index.len() is 0 or a power of two ≥ 2·users.len(); a slot
    // holds 0 (free) or 1 + an index into users.
    index: Vec<u32>,
}

const SEED: u64 = 0x05e4_5eed_0a07_4001;
const MAX_NAME: usize = 128;
const MAX_DOMAIN: usize = 255;

impl Users {
    /// Reads a users file.
    pub fn from_toml(text: &str) -> Result<Self, UsersError> {
        let file: File = toml::from_str(text).map_err(|e| UsersError::Toml(Box::new(e)))?;
        let mut users = Vec::with_capacity(file.user.len());
        let mut lines = Vec::with_capacity(file.user.len());
        // Line numbers for messages, counted on from the previous entry's:
        // counting from the top for each entry made a 100,000-user file
        // take minutes to load.
        let mut at = LineCursor::default();
        for (i, e) in file.user.into_iter().enumerate() {
            let line = at.line_of(text, e.name.span().start);
            let fail = |problem| UsersError::Invalid {
                line,
                index: i + 1,
                problem,
            };
            let name = e.name.into_inner();
            if !valid_name(&name) {
                return Err(fail(UserProblem::BadName));
            }
            let Some(domain) = canonical_domain(&e.domain) else {
                return Err(fail(UserProblem::BadDomain));
            };
            let any_ha1 =
                e.ha1_md5.is_some() || e.ha1_sha256.is_some() || e.ha1_sha512_256.is_some();
            let user = match (e.password, any_ha1) {
                (Some(_), true) => return Err(fail(UserProblem::PasswordAndHa1)),
                (None, false) => return Err(fail(UserProblem::NoSecret)),
                (Some(p), false) => User::with_password(&name, &domain, &p),
                (None, true) => {
                    let read = |v: Option<String>, h: HashFn, problem| match v {
                        None => Ok(None),
                        Some(s) => Hex::parse(s.trim().as_bytes())
                            .filter(|x| x.fits(h))
                            .map(Some)
                            .ok_or(fail(problem)),
                    };
                    User {
                        md5: read(e.ha1_md5, HashFn::Md5, UserProblem::BadHa1Md5)?,
                        sha256: read(e.ha1_sha256, HashFn::Sha256, UserProblem::BadHa1Sha256)?,
                        sha512t256: read(
                            e.ha1_sha512_256,
                            HashFn::Sha512t256,
                            UserProblem::BadHa1Sha512t256,
                        )?,
                        name: name.into(),
                        domain: domain.into(),
                    }
                }
            };
            users.push(user);
            lines.push(line);
        }
        Self::build(users).map_err(|(dup, first)| UsersError::Invalid {
            line: lines.get(dup).copied().unwrap_or(0),
            index: dup + 1,
            problem: UserProblem::Duplicate {
                first_line: lines.get(first).copied().unwrap_or(0),
            },
        })
    }

    /// A set of these users; `Err((i, j))` when user `i` repeats user `j`.
    pub fn from_users(users: Vec<User>) -> Result<Self, (usize, usize)> {
        Self::build(users)
    }

    fn build(users: Vec<User>) -> Result<Self, (usize, usize)> {
        let size = (users.len() * 2).max(2).next_power_of_two();
        let mut index = vec![0u32; size];
        let mask = size - 1;
        for (i, u) in users.iter().enumerate() {
            let mut at =
                (key_hash(u.name.as_bytes(), u.domain.as_bytes()).unwrap_or(0) as usize) & mask;
            while let Some(slot) = index.get_mut(at) {
                if *slot == 0 {
                    *slot = i as u32 + 1;
                    break;
                }
                let j = *slot as usize - 1;
                if users
                    .get(j)
                    .is_some_and(|o| o.name == u.name && o.domain == u.domain)
                {
                    return Err((i, j));
                }
                at = (at + 1) & mask;
            }
        }
        Ok(Self { users, index })
    }

    /// The user `name` of `domain` (name case-sensitive, domain not).
    pub fn get(&self, name: &[u8], domain: &[u8]) -> Option<&User> {
        let mask = self.index.len().checked_sub(1)?;
        let domain = domain.strip_suffix(b".").unwrap_or(domain);
        let mut at = (key_hash(name, domain)? as usize) & mask;
        // INVARIANT: the index is at most half full, so a free slot ends every probe.
        loop {
            let slot = *self.index.get(at)?;
            if slot == 0 {
                return None;
            }
            let u = self.users.get(slot as usize - 1)?;
            if u.name.as_bytes() == name && u.domain.as_bytes().eq_ignore_ascii_case(domain) {
                return Some(u);
            }
            at = (at + 1) & mask;
        }
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Every user, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.users.iter()
    }
}

impl UserDirectory for Users {
    fn ha1(&self, name: &[u8], realm: &[u8], h: HashFn) -> Option<Hex> {
        self.get(name, realm)?.ha1(h)
    }
}

/// Hash of (name, lower-case domain); `None` for a domain too long to be one.
fn key_hash(name: &[u8], domain: &[u8]) -> Option<u64> {
    let mut lower = [0u8; MAX_DOMAIN];
    let d = lower.get_mut(..domain.len())?;
    for (o, &b) in d.iter_mut().zip(domain) {
        *o = b.to_ascii_lowercase();
    }
    Some(hash_bytes(hash_bytes(SEED, name), d))
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_NAME
        && n.bytes()
            .all(|b| b > b' ' && b != 0x7f && !matches!(b, b'"' | b'\\' | b'@' | b':'))
}

/// A hostname in lower case, or an address (a served domain may be one,
/// for an edge with no DNS name) in the canonical text config and the
/// authenticator's realms use: `127.0.0.1`, `[2001:db8::1]`.
fn canonical_domain(d: &str) -> Option<String> {
    if d.is_empty() || d.len() > MAX_DOMAIN {
        return None;
    }
    if let Ok(ip) = d
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<core::net::IpAddr>()
    {
        return Some(match ip {
            core::net::IpAddr::V4(a) => a.to_string(),
            core::net::IpAddr::V6(a) => format!("[{a}]"),
        });
    }
    let d = d.to_ascii_lowercase();
    matches!(
        crate::sip::Host::parse(d.as_bytes()),
        Ok(crate::sip::Host::Name(_))
    )
    .then_some(d)
}

/// 1-based line of byte `offset` of `text`.
/// The 1-based line of byte offsets, read in increasing order (any order
/// works; going back restarts from the top).
#[derive(Default)]
struct LineCursor {
    offset: usize,
    newlines: usize,
}

impl LineCursor {
    fn line_of(&mut self, text: &str, offset: usize) -> usize {
        if offset < self.offset {
            *self = Self::default();
        }
        let seen = text
            .as_bytes()
            .get(self.offset..offset)
            .map_or(0, |b| memchr::memchr_iter(b'\n', b).count());
        self.offset = offset;
        self.newlines += seen;
        self.newlines + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[user]]
name = "alice"
domain = "Example.Test"
password = "alice-secret"

[[user]]
name = "bob"
domain = "example.test"
ha1_md5 = "0123456789ABCDEF0123456789abcdef"

[[user]]
name = "alice"
domain = "other.test"
ha1_sha256 = "0000000000000000000000000000000000000000000000000000000000000001"
ha1_sha512_256 = "0000000000000000000000000000000000000000000000000000000000000002"
"#;

    #[test]
    fn parses_and_looks_up() {
        let u = Users::from_toml(FILE).unwrap();
        assert_eq!(u.len(), 3);
        let alice = u.get(b"alice", b"EXAMPLE.test.").unwrap();
        assert_eq!(alice.domain(), "example.test");
        assert_eq!(
            u.ha1(b"alice", b"example.test", HashFn::Md5),
            Some(digest::ha1(
                HashFn::Md5,
                b"alice",
                b"example.test",
                b"alice-secret"
            ))
        );
        assert!(u
            .ha1(b"alice", b"example.test", HashFn::Sha512t256)
            .is_some());
        assert!(
            u.get(b"Alice", b"example.test").is_none(),
            "names are case-sensitive"
        );
        assert_eq!(
            u.ha1(b"bob", b"example.test", HashFn::Md5)
                .unwrap()
                .as_str(),
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(u.ha1(b"bob", b"example.test", HashFn::Sha256), None);
        assert!(u.ha1(b"alice", b"other.test", HashFn::Sha256).is_some());
        assert_eq!(u.ha1(b"alice", b"other.test", HashFn::Md5), None);
        assert!(u.get(b"carol", b"example.test").is_none());
        assert!(u.get(b"alice", &[b'a'; 300]).is_none());
        assert!(Users::from_toml("").unwrap().is_empty());
        assert!(Users::default().get(b"a", b"b").is_none());
    }

    #[test]
    fn errors_name_the_line() {
        let err = |text: &str| Users::from_toml(text).unwrap_err().to_string();
        let one = |body: &str| format!("# users\n\n[[user]]\n{body}\n");
        let cases = [
            (one("name = \"\"\ndomain = \"x.test\"\npassword = \"p\""), "line 4 (user #1): bad name"),
            (one("name = \"a b\"\ndomain = \"x.test\"\npassword = \"p\""), "line 4 (user #1): bad name"),
            (one("name = \"a\"\ndomain = \"x!y\"\npassword = \"p\""), "line 4 (user #1): bad domain"),
            (one("name = \"a\"\ndomain = \"1.2.3\"\npassword = \"p\""), "bad domain"),
            (one("name = \"a\"\ndomain = \"x.test\""), "line 4 (user #1): no password"),
            (
                one("name = \"a\"\ndomain = \"x.test\"\npassword = \"p\"\nha1_md5 = \"00\""),
                "exclusive",
            ),
            (one("name = \"a\"\ndomain = \"x.test\"\nha1_md5 = \"00\""), "ha1_md5 must be 32"),
            (
                one("name = \"a\"\ndomain = \"x.test\"\nha1_sha256 = \"0123456789abcdef0123456789abcdef\""),
                "ha1_sha256 must be 64",
            ),
            (
                one("name = \"a\"\ndomain = \"x.test\"\nha1_sha512_256 = \"zz\""),
                "ha1_sha512_256 must be 64",
            ),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "{e} / want {want}");
        }
        // Duplicates name both lines.
        let dup = "[[user]]\nname = \"a\"\ndomain = \"x.test\"\npassword = \"p\"\n\n[[user]]\nname = \"a\"\ndomain = \"X.TEST\"\npassword = \"q\"\n";
        assert_eq!(
            err(dup),
            "users file line 7 (user #2): duplicate of the user on line 2"
        );
        // Far down a long file the lines are still right (counted on from
        // entry to entry, not from the top each time).
        let mut long = String::new();
        for i in 0..3000 {
            long.push_str(&format!(
                "[[user]]\nname = \"u{i}\"\ndomain = \"x.test\"\npassword = \"p\"\n"
            ));
        }
        long.push_str("[[user]]\nname = \"u17\"\ndomain = \"x.test\"\npassword = \"p\"\n");
        assert_eq!(
            err(&long),
            "users file line 12002 (user #3001): duplicate of the user on line 70"
        );
        // TOML-level errors carry their own line (unknown key, missing field).
        let e = err("[[user]]\nname = \"a\"\ndomain = \"x.test\"\npasword = \"p\"\n");
        assert!(e.contains("line 4") && e.contains("pasword"), "{e}");
        let e = err("[[user]]\nname = \"a\"\npassword = \"p\"\n");
        assert!(e.contains("domain"), "{e}");
    }

    /// A served domain may be an address (an edge with no DNS name, e.g.
    /// SIPp's `sip:user@[remote_ip]`): its users are kept under the
    /// address's canonical text, which is the realm the authenticator uses.
    #[test]
    fn address_domains_in_canonical_form() {
        let text = "[[user]]\nname = \"a\"\ndomain = \"127.0.0.1\"\npassword = \"p\"\n\n\
                    [[user]]\nname = \"b\"\ndomain = \"2001:DB8:0::1\"\npassword = \"p\"\n\n\
                    [[user]]\nname = \"c\"\ndomain = \"[::1]\"\npassword = \"p\"\n";
        let u = Users::from_toml(text).unwrap();
        assert_eq!(u.get(b"a", b"127.0.0.1").unwrap().domain(), "127.0.0.1");
        assert_eq!(
            u.get(b"b", b"[2001:db8::1]").unwrap().domain(),
            "[2001:db8::1]"
        );
        assert_eq!(u.get(b"c", b"[::1]").unwrap().domain(), "[::1]");
        assert_eq!(
            u.ha1(b"a", b"127.0.0.1", HashFn::Md5),
            Some(digest::ha1(HashFn::Md5, b"a", b"127.0.0.1", b"p"))
        );
    }

    #[test]
    fn many_users() {
        let users: Vec<User> = (0..5000)
            .map(|i| User::with_password(&format!("u{i}"), "example.test", "pw"))
            .collect();
        let set = Users::from_users(users).unwrap();
        for i in (0..5000).step_by(97) {
            assert!(set
                .get(format!("u{i}").as_bytes(), b"example.test")
                .is_some());
        }
        assert!(set.get(b"u5000", b"example.test").is_none());
        let again = vec![
            User::with_password("x", "a.test", "1"),
            User::with_password("x", "A.test", "2"),
        ];
        assert_eq!(Users::from_users(again).unwrap_err(), (1, 0));
    }
}
