//! Access policy: ordered rules from the config, compiled at load into
//! tables a request is checked against without allocating; plus the flood
//! limiter ([`flood`]) and the overload guard ([`overload`]) a shard runs
//! before and around it.
//!
//! | file | owns |
//! |---|---|
//! | here | [`PolicySection`] (TOML) → [`Policy::compile`] → [`Policy::evaluate`] → [`Verdict`] |
//! | [`net`] | [`NetSet`]: CIDR lists as sorted ranges |
//! | [`rate`] | GCRA token buckets in a bounded table |
//! | [`flood`] | per-source packet rate limits and bans, before parsing |
//! | [`overload`] | 503 for new INVITE/REGISTER when a shard is behind |
//!
//! ```toml
//! [policy]
//! default = "allow"                     # or "deny", "require-auth"
//! networks.trusted = ["10.0.0.0/8", "127.0.0.0/8"]
//!
//! [[policy.rule]]                       # first match wins
//! name = "no calls or IM from the internet, except to the support desk"
//! method = ["INVITE", "MESSAGE"]
//! not_source = ["trusted"]              # names from networks, or CIDRs
//! not_uri_user = ["support"]
//! action = "deny"
//! reason = "Forbidden (Internal Only)"
//! ```
//!
//! A rule matches when every field it has matches. List fields match when
//! any element does; their `not_` twins when none does. Fields: `source`,
//! `transport` (udp, tcp, tls, ws, wss), `method`, `from_user`,
//! `from_domain`, `uri_user`, `uri_domain` (the Request-URI's), each with a
//! `not_` twin except transport; `authenticated` and `in_dialog` (a To tag)
//! are booleans. Domains compare case-insensitively; `*.example.com` matches
//! the subdomains of example.com, and `$served` stands for every served
//! domain. Users compare as RFC 3261 §19.1.4 does (case-sensitive, escapes
//! decoded).
//!
//! ```text
//!  Request (source, transport, method, From, R-URI, To tag, auth state)
//!    └► rule 1 … rule n (first whose fields all match) ─► its action │ else the default
//!       action allow        ─► Allow
//!       action deny         ─► Deny { status, reason }
//!       action require-auth ─► Allow if authenticated · Authenticate if not checked yet · Deny 403 if it cannot be
//!       a rule testing `authenticated` while the state is Unknown ─► Authenticate
//! ```
//!
//! The caller starts with [`AuthState::Unknown`]; on `Authenticate` it runs
//! the authenticator and, once authenticated, evaluates again with
//! [`AuthState::Yes`] (two passes at most). [`AuthState::No`] is for when no
//! authentication is possible (no users configured).
//!
//! When a users file is given and `default` is not set, three rules are
//! appended after the configured ones: REGISTER for a served domain
//! requires authentication, and so does any request whose From is in a
//! served domain (initial requests: in-dialog ones follow the route set);
//! an initial request neither from nor to a served domain (nor to one of
//! the edge's addresses) gets 403 — the edge is not an open relay;
//! everything else is allowed (calls from other domains to our users).
//!
//! Reloading: compile a new [`Policy`] and swap the `Arc` the shards hold;
//! a policy is immutable.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod flood;
pub mod net;
pub mod overload;
pub mod rate;

use core::net::IpAddr;
use std::collections::BTreeMap;

use serde::Deserialize;

use crate::sip::{scan, Essentials, Message, Method, Uri};

pub use net::{BadNetwork, NetSet};

pub use crate::transport::Transport;

/// Whether the request's sender is authenticated, as far as the caller knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthState {
    /// It cannot be (no users configured): rules requiring it deny.
    No,
    /// Not checked yet: a rule that depends on it asks for it.
    Unknown,
    /// Authenticated.
    Yes,
}

/// The facts a rule looks at, taken from a request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Source address of the packet.
    pub source: IpAddr,
    /// Transport.
    pub transport: Transport,
    /// Method.
    pub method: Method,
    /// The method token (for extension methods).
    pub method_bytes: &'a [u8],
    /// The From URI, when it is a SIP/SIPS/tel URI.
    pub from: Option<Uri<'a>>,
    /// The Request-URI.
    pub uri: Option<Uri<'a>>,
    /// True when the To has a tag (a request inside a dialog).
    pub in_dialog: bool,
    /// What the caller knows of authentication.
    pub auth: AuthState,
    /// True when the Request-URI names this edge by one of its addresses
    /// (`$served` matches it in `uri_domain`: a trunk or a phone may
    /// address the edge by IP).
    pub uri_is_us: bool,
}

impl<'a> Request<'a> {
    /// The facts of request `msg` from `source`.
    pub fn of(msg: &Message<'a>, source: IpAddr, transport: Transport, auth: AuthState) -> Self {
        Self {
            source,
            transport,
            method: msg.method(),
            method_bytes: msg.method_bytes(),
            from: msg.from().ok().and_then(|f| f.uri().ok()),
            uri: msg.request_uri().ok(),
            in_dialog: msg.to().ok().is_some_and(|t| t.tag().is_some()),
            auth,
            uri_is_us: false,
        }
    }

    /// The facts of request `msg`, whose essentials `ess` the caller has
    /// decoded already (the proxy's check phase): the same facts as
    /// [`Request::of`] for a request whose essentials decode, with only the
    /// From URI decoded here (From, To and the Request-URI are not parsed
    /// again).
    pub fn of_essentials(
        msg: &Message<'a>,
        ess: &Essentials<'a>,
        source: IpAddr,
        transport: Transport,
        auth: AuthState,
    ) -> Self {
        Self {
            source,
            transport,
            method: msg.method(),
            method_bytes: msg.method_bytes(),
            from: ess.from.uri().ok(),
            uri: ess.uri,
            in_dialog: ess.to.tag().is_some(),
            auth,
            uri_is_us: false,
        }
    }
}

/// What the policy decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'p> {
    /// Go on.
    Allow,
    /// Authenticate the request, then evaluate again with the result.
    Authenticate,
    /// Refuse with this status and reason phrase.
    Deny {
        /// The status (403 unless configured).
        status: u16,
        /// The reason phrase.
        reason: &'p str,
    },
}

/// A decision and the rule that made it (`None`: the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'p> {
    /// The decision.
    pub decision: Decision<'p>,
    /// Index of the deciding rule.
    pub rule: Option<u16>,
}

/// `[policy]` as written in the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// `allow`, `deny` or `require-auth`, when no rule matches.
    pub default: Option<String>,
    /// Named network sets, e.g. `networks.trusted = ["10.0.0.0/8"]`.
    #[serde(default)]
    pub networks: BTreeMap<String, Vec<String>>,
    /// The rules, in order.
    #[serde(default)]
    pub rule: Vec<RuleSection>,
}

/// One `[[policy.rule]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    /// A name, for logs.
    pub name: Option<String>,
    /// Source networks (names or CIDRs): any.
    pub source: Option<Vec<String>>,
    /// Source networks: none.
    pub not_source: Option<Vec<String>>,
    /// Transports: any.
    pub transport: Option<Vec<String>>,
    /// Methods: any.
    pub method: Option<Vec<String>>,
    /// Methods: none.
    pub not_method: Option<Vec<String>>,
    /// From users: any.
    pub from_user: Option<Vec<String>>,
    /// From users: none.
    pub not_from_user: Option<Vec<String>>,
    /// From domains: any.
    pub from_domain: Option<Vec<String>>,
    /// From domains: none.
    pub not_from_domain: Option<Vec<String>>,
    /// Request-URI users: any.
    pub uri_user: Option<Vec<String>>,
    /// Request-URI users: none.
    pub not_uri_user: Option<Vec<String>>,
    /// Request-URI domains: any.
    pub uri_domain: Option<Vec<String>>,
    /// Request-URI domains: none.
    pub not_uri_domain: Option<Vec<String>>,
    /// Authenticated (true) or not (false).
    pub authenticated: Option<bool>,
    /// Inside a dialog (To tag) or not.
    pub in_dialog: Option<bool>,
    /// `allow`, `deny` or `require-auth`.
    pub action: String,
    /// Reason phrase of a deny.
    pub reason: Option<String>,
    /// Status of a deny (400–699; 403 by default).
    pub status: Option<u16>,
}

/// Which part of the policy an error is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// `networks.<name>`, by position in name order.
    Network(usize),
    /// `[[policy.rule]]` number n (from 1).
    Rule(usize),
    /// `default`.
    Default,
}

impl core::fmt::Display for Place {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Network(i) => write!(f, "[policy] network set #{}", i + 1),
            Self::Rule(i) => write!(f, "[[policy.rule]] #{i}"),
            Self::Default => f.write_str("[policy] default"),
        }
    }
}

/// What is wrong in a `[policy]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// An entry is neither a network set name nor a CIDR.
    #[error("{0}: entry {1} is not a network set name or an address/CIDR")]
    Network(Place, usize),
    /// An unknown transport.
    #[error("{0}: entry {1} is not udp, tcp, tls, ws or wss")]
    Transport(Place, usize),
    /// A method that is not a token.
    #[error("{0}: entry {1} is not a method token")]
    Method(Place, usize),
    /// An empty user or domain, or one with spaces.
    #[error("{0}: entry {1} is not a user or domain")]
    Value(Place, usize),
    /// An action other than allow, deny, require-auth.
    #[error("{0}: action must be allow, deny or require-auth")]
    Action(Place),
    /// A reason phrase with control characters, or a status outside 400–699.
    #[error("{0}: reason must be printable text and status 400-699")]
    Reason(Place),
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Allow,
    Deny { status: u16, reason: Box<str> },
    RequireAuth,
}

/// Methods as a bitset of the interned ones, plus extension tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct MethodSet {
    bits: u16,
    others: Vec<Box<[u8]>>,
}

impl MethodSet {
    fn contains(&self, m: Method, bytes: &[u8]) -> bool {
        match method_bit(m) {
            Some(b) => self.bits & b != 0,
            None => self.others.iter().any(|o| **o == *bytes),
        }
    }
}

fn method_bit(m: Method) -> Option<u16> {
    let i = match m {
        Method::Ack => 0,
        Method::Bye => 1,
        Method::Cancel => 2,
        Method::Info => 3,
        Method::Invite => 4,
        Method::Message => 5,
        Method::Notify => 6,
        Method::Options => 7,
        Method::Prack => 8,
        Method::Publish => 9,
        Method::Refer => 10,
        Method::Register => 11,
        Method::Subscribe => 12,
        Method::Update => 13,
        Method::Other => return None,
    };
    Some(1 << i)
}

/// Domains: exact names and `*.suffix` patterns, lower-case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct DomainSet {
    exact: Vec<Box<[u8]>>,
    /// Suffixes with their leading dot (`.example.com`).
    suffixes: Vec<Box<[u8]>>,
    /// `$served` was listed: a URI naming this edge's own address matches.
    served: bool,
}

impl DomainSet {
    fn contains(&self, uri: Option<&Uri<'_>>, is_us: bool) -> bool {
        if self.served && is_us {
            return true;
        }
        let Some(u) = uri else { return false };
        let h = u.host_bytes;
        let h = h.strip_suffix(b".").unwrap_or(h);
        if h.is_empty() {
            return false;
        }
        self.exact.iter().any(|d| d.eq_ignore_ascii_case(h))
            || self.suffixes.iter().any(|s| {
                h.len() > s.len()
                    && h.get(h.len() - s.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(s))
            })
    }
}

/// Users, compared with the URI's escapes decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct UserSet(Vec<Box<[u8]>>);

impl UserSet {
    fn contains(&self, uri: Option<&Uri<'_>>) -> bool {
        let Some(user) = uri.and_then(|u| u.user) else {
            return false;
        };
        self.0.iter().any(|u| scan::unescaped_eq(user, u))
    }
}

/// A list matcher and its negation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Test<T> {
    Any(T),
    None(T),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    name: Box<str>,
    source: Vec<Test<NetSet>>,
    transports: u8,
    methods: Vec<Test<MethodSet>>,
    from_user: Vec<Test<UserSet>>,
    from_domain: Vec<Test<DomainSet>>,
    uri_user: Vec<Test<UserSet>>,
    uri_domain: Vec<Test<DomainSet>>,
    authenticated: Option<bool>,
    in_dialog: Option<bool>,
    action: Action,
}

/// Does a rule match: no, yes, or only the auth state can tell.
enum Match {
    No,
    NeedAuth,
    Yes,
}

fn all<T>(tests: &[Test<T>], f: impl Fn(&T) -> bool) -> bool {
    tests.iter().all(|t| match t {
        Test::Any(s) => f(s),
        Test::None(s) => !f(s),
    })
}

impl Rule {
    fn matches(&self, r: &Request<'_>) -> Match {
        let ok = all(&self.source, |s| s.contains(r.source))
            && (self.transports == 0 || self.transports & r.transport.bit() != 0)
            && all(&self.methods, |m| m.contains(r.method, r.method_bytes))
            && all(&self.from_user, |u| u.contains(r.from.as_ref()))
            && all(&self.from_domain, |d| d.contains(r.from.as_ref(), false))
            && all(&self.uri_user, |u| u.contains(r.uri.as_ref()))
            && all(&self.uri_domain, |d| {
                d.contains(r.uri.as_ref(), r.uri_is_us)
            })
            && self.in_dialog.is_none_or(|want| want == r.in_dialog);
        if !ok {
            return Match::No;
        }
        match (self.authenticated, r.auth) {
            (None, _) => Match::Yes,
            (Some(_), AuthState::Unknown) => Match::NeedAuth,
            (Some(want), AuthState::Yes) => bool_match(want),
            (Some(want), AuthState::No) => bool_match(!want),
        }
    }
}

fn bool_match(b: bool) -> Match {
    if b {
        Match::Yes
    } else {
        Match::No
    }
}

/// A compiled, immutable policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<Rule>,
    default: Action,
    networks: BTreeMap<String, NetSet>,
}

impl Default for Policy {
    /// Allows everything.
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            default: Action::Allow,
            networks: BTreeMap::new(),
        }
    }
}

const DEFAULT_REASON: &str = "Forbidden";
const AUTH_IMPOSSIBLE: &str = "Forbidden (Authentication Required)";

impl Policy {
    /// Compiles `[policy]` for the `served` domains; `users` says whether a
    /// users file is loaded (see the module doc for what that adds).
    pub fn compile<S: AsRef<str>>(
        sec: &PolicySection,
        served: &[S],
        users: bool,
    ) -> Result<Self, PolicyError> {
        let served: Vec<Box<[u8]>> = served
            .iter()
            .map(|d| lower(d.as_ref().trim_end_matches('.')))
            .collect();
        let mut networks = BTreeMap::new();
        for (i, (name, list)) in sec.networks.iter().enumerate() {
            let mut set = NetSet::new();
            for (j, n) in list.iter().enumerate() {
                set.add_cidr(n)
                    .map_err(|_| PolicyError::Network(Place::Network(i), j + 1))?;
            }
            networks.insert(name.clone(), set);
        }
        let mut rules = Vec::with_capacity(sec.rule.len() + 2);
        for (i, r) in sec.rule.iter().enumerate() {
            rules.push(compile_rule(r, Place::Rule(i + 1), &networks, &served)?);
        }
        let default = match sec.default.as_deref() {
            Some(a) => action(a, None, None, Place::Default)?,
            None => {
                if users {
                    for implicit in implicit_rules() {
                        rules.push(compile_rule(&implicit, Place::Default, &networks, &served)?);
                    }
                }
                Action::Allow
            }
        };
        Ok(Self {
            rules,
            default,
            networks,
        })
    }

    /// The named network sets (for the flood limiter's exemptions).
    pub fn networks(&self) -> &BTreeMap<String, NetSet> {
        &self.networks
    }

    /// Number of rules (implicit ones included).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there is no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The name of rule `i`.
    pub fn rule_name(&self, i: u16) -> &str {
        self.rules.get(usize::from(i)).map_or("", |r| &r.name)
    }

    /// Decides for request `r`. Allocation-free.
    pub fn evaluate(&self, r: &Request<'_>) -> Verdict<'_> {
        for (i, rule) in self.rules.iter().enumerate() {
            let rule_no = u16::try_from(i).ok();
            match rule.matches(r) {
                Match::No => continue,
                Match::NeedAuth => {
                    return Verdict {
                        decision: Decision::Authenticate,
                        rule: rule_no,
                    }
                }
                Match::Yes => {
                    return Verdict {
                        decision: act(&rule.action, r.auth),
                        rule: rule_no,
                    }
                }
            }
        }
        Verdict {
            decision: act(&self.default, r.auth),
            rule: None,
        }
    }
}

fn act(a: &Action, auth: AuthState) -> Decision<'_> {
    match a {
        Action::Allow => Decision::Allow,
        Action::Deny { status, reason } => Decision::Deny {
            status: *status,
            reason,
        },
        Action::RequireAuth => match auth {
            AuthState::Yes => Decision::Allow,
            AuthState::Unknown => Decision::Authenticate,
            AuthState::No => Decision::Deny {
                status: 403,
                reason: AUTH_IMPOSSIBLE,
            },
        },
    }
}

fn implicit_rules() -> [RuleSection; 3] {
    let list = |v: &[&str]| Some(v.iter().map(|s| (*s).to_owned()).collect());
    [
        RuleSection {
            name: Some("registrations for served domains are authenticated".into()),
            method: list(&["REGISTER"]),
            uri_domain: list(&["$served"]),
            action: "require-auth".into(),
            ..RuleSection::default()
        },
        RuleSection {
            name: Some("requests from served domains are authenticated".into()),
            from_domain: list(&["$served"]),
            // Initial requests only: in-dialog ones follow the route set we
            // recorded (Kamailio's reference config does the same).
            in_dialog: Some(false),
            action: "require-auth".into(),
            ..RuleSection::default()
        },
        RuleSection {
            // Not an open relay: a request from a stranger to a stranger
            // would use the edge to reach (or scan, or reflect traffic at)
            // any host; Kamailio's reference config refuses it the same way.
            name: Some("requests neither from nor to a served domain are not relayed".into()),
            not_from_domain: list(&["$served"]),
            not_uri_domain: list(&["$served"]),
            in_dialog: Some(false),
            action: "deny".into(),
            reason: Some(NOT_RELAYING.into()),
            ..RuleSection::default()
        },
    ]
}

/// The reason phrase of the 403 for a request the edge will not relay.
pub const NOT_RELAYING: &str = "Forbidden (Not Relaying)";

fn lower(s: &str) -> Box<[u8]> {
    s.to_ascii_lowercase().into_bytes().into_boxed_slice()
}

fn action(
    a: &str,
    reason: Option<&str>,
    status: Option<u16>,
    at: Place,
) -> Result<Action, PolicyError> {
    Ok(match a {
        "allow" => Action::Allow,
        "require-auth" | "require_auth" => Action::RequireAuth,
        "deny" => {
            let reason = reason.unwrap_or(DEFAULT_REASON);
            let status = status.unwrap_or(403);
            // A reason phrase goes on the status line: no CR, LF or other control.
            if reason.is_empty()
                || reason.chars().any(char::is_control)
                || !(400..=699).contains(&status)
            {
                return Err(PolicyError::Reason(at));
            }
            Action::Deny {
                status,
                reason: reason.into(),
            }
        }
        _ => return Err(PolicyError::Action(at)),
    })
}

fn compile_rule(
    r: &RuleSection,
    at: Place,
    networks: &BTreeMap<String, NetSet>,
    served: &[Box<[u8]>],
) -> Result<Rule, PolicyError> {
    let nets = |list: &[String]| -> Result<NetSet, PolicyError> {
        let mut set = NetSet::new();
        for (j, n) in list.iter().enumerate() {
            match networks.get(n) {
                Some(named) => set.extend(named),
                None => set
                    .add_cidr(n)
                    .map_err(|_| PolicyError::Network(at, j + 1))?,
            }
        }
        Ok(set)
    };
    let methods = |list: &[String]| -> Result<MethodSet, PolicyError> {
        let mut set = MethodSet::default();
        for (j, m) in list.iter().enumerate() {
            let b = m.as_bytes();
            if !scan::is_token_str(b) || b.is_empty() {
                return Err(PolicyError::Method(at, j + 1));
            }
            match method_bit(Method::from_bytes(b)) {
                Some(bit) => set.bits |= bit,
                None => set.others.push(b.into()),
            }
        }
        Ok(set)
    };
    let users = |list: &[String]| -> Result<UserSet, PolicyError> {
        let mut set = UserSet::default();
        for (j, u) in list.iter().enumerate() {
            if u.is_empty() || u.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(PolicyError::Value(at, j + 1));
            }
            set.0.push(u.as_bytes().into());
        }
        Ok(set)
    };
    let domains = |list: &[String]| -> Result<DomainSet, PolicyError> {
        let mut set = DomainSet::default();
        for (j, d) in list.iter().enumerate() {
            let d = d.trim_end_matches('.');
            if d == "$served" {
                set.exact.extend(served.iter().cloned());
                set.served = true;
            } else if let Some(suffix) = d.strip_prefix('*') {
                if !suffix.starts_with('.') || suffix.len() < 2 {
                    return Err(PolicyError::Value(at, j + 1));
                }
                set.suffixes.push(lower(suffix));
            } else if d.is_empty() || d.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(PolicyError::Value(at, j + 1));
            } else {
                set.exact.push(lower(d));
            }
        }
        Ok(set)
    };
    fn pair<T, E>(
        any: &Option<Vec<String>>,
        none: &Option<Vec<String>>,
        f: impl Fn(&[String]) -> Result<T, E>,
    ) -> Result<Vec<Test<T>>, E> {
        let mut out = Vec::new();
        if let Some(l) = any {
            out.push(Test::Any(f(l)?));
        }
        if let Some(l) = none {
            out.push(Test::None(f(l)?));
        }
        Ok(out)
    }
    let mut transports = 0u8;
    for (j, t) in r.transport.iter().flatten().enumerate() {
        transports |= Transport::from_token(t)
            .ok_or(PolicyError::Transport(at, j + 1))?
            .bit();
    }
    Ok(Rule {
        name: r.name.as_deref().unwrap_or("").into(),
        source: pair(&r.source, &r.not_source, nets)?,
        transports,
        methods: pair(&r.method, &r.not_method, methods)?,
        from_user: pair(&r.from_user, &r.not_from_user, users)?,
        from_domain: pair(&r.from_domain, &r.not_from_domain, domains)?,
        uri_user: pair(&r.uri_user, &r.not_uri_user, users)?,
        uri_domain: pair(&r.uri_domain, &r.not_uri_domain, domains)?,
        authenticated: r.authenticated,
        in_dialog: r.in_dialog,
        action: action(&r.action, r.reason.as_deref(), r.status, at)?,
    })
}

#[cfg(test)]
mod tests;
