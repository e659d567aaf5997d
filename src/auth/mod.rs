//! Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760):
//! challenges, stateless nonces, nonce-count replay protection, the
//! verifier, the users file and failed-auth throttling.
//!
//! | file | owns |
//! |---|---|
//! | [`digest`] | algorithms (MD5, SHA-256, SHA-512-256 and their -sess forms), HA1/HA2/response |
//! | [`nonce`] | stateless nonces: issue time + issuer + serial, HMAC-signed, keys derived per epoch |
//! | [`replay`] | the bounded nonce-count table (highest nc + a 64-count window per nonce) |
//! | [`users`] | the users file, [`Users`], the [`UserDirectory`] trait |
//! | here | [`Authenticator`]: [`Authenticator::check`] a request, [`Authenticator::write_challenge`] |
//! | [`mod@gate`] | policy + authenticator in one call per new request: pass, reply (with the challenge) or drop |
//!
//! ```text
//!  request ─► realm: To host (REGISTER, 401) │ From host (others, 407) ─ not served ─► Forbidden(UnknownRealm)
//!     ├─ no Digest credentials for that realm ─────────────────────────► Challenge { stale: false }
//!     ├─ source or user over its failure rate ─────────────────────────► Throttled (nothing hashed)
//!     ├─ malformed · algorithm/qop not offered · uri ≠ Request-URI
//!     │  · opaque wrong · nonce MAC wrong ────────────────── failure ─► Challenge { stale: false }
//!     ├─ response ≠ H(HA1 or dummy HA1, …) (unknown user too) ─ failure ─► Challenge { stale: false }
//!     ├─ nonce expired, from another issuer, or forgotten by the table ─► Challenge { stale: true }
//!     ├─ nc already used ─────────────────────────── replay, failure ─► Challenge { stale: true }
//!     ├─ user@realm ≠ To (REGISTER) / From (others) ─────────────────────► Forbidden(IdentityMismatch)
//!     └─ Authenticated { user }
//! ```
//!
//! Sans-IO: `now` (monotonic, for the throttles) and `wall` (µs since the
//! Unix epoch, for nonce ages, which must mean the same on every shard and
//! node) are parameters; randomness comes once, at construction, from an
//! [`Entropy`]. No allocation per request: credentials are read in place,
//! hashes run over stack buffers, and the tables are fixed-size.
//!
//! Why these choices:
//! - *No user enumeration.* An unknown user is verified against a dummy
//!   HA1 derived from the secret, with exactly the hashing of a known one,
//!   and every failure gets the same challenge (only the nonce differs).
//!   The throttles are keyed by the user name as sent, known or not.
//! - *A replayed nc gets `stale=true`, not 403.* The replay passed the
//!   digest check, so the sender learns nothing it did not know; an honest
//!   client that resent a request after its transaction ended (or moved to
//!   another shard) recovers with one round trip instead of failing, and
//!   an eavesdropper cannot answer the fresh nonce without the password.
//!   Replays still count as failures, so a replay flood gets throttled.
//! - *Throttled requests are not checked at all* (not even a correct
//!   password gets in), so a guessing run makes progress only at the
//!   throttle's rate; [`ThrottleAction`] says whether the caller drops them
//!   (the default: costs nothing, and a cracking tool waits for timeouts)
//!   or answers them with the usual challenge.
//! - *Nonces name their issuer* (the shard, [`Config::issuer`]): the
//!   nonce-count table is per shard, so a nonce presented to another shard
//!   gets a fresh challenge (`stale=true`) instead of a second life there.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod digest;
pub mod gate;
pub mod nonce;
pub mod replay;
pub mod users;

use core::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::hash::hash_bytes;
use crate::policy::rate::{Gcra, Hit, RateTable, SharedRate};
use crate::sip::{Credentials, EmitError, HeaderName, Host, Message, Method, Uri, Writer};
use crate::time::{Duration, Instant};

pub use digest::{Algorithm, HashFn, Hex, Qop};
pub use gate::{gate, Gate, CHALLENGE_BUF};
pub use nonce::{NonceKeys, Secret, NONCE_LEN};
pub use replay::{NcCheck, ReplayTable};
pub use users::{User, UserDirectory, UserProblem, Users, UsersError};

/// A source of random bytes (the OS's, in the runtime; a seeded generator in tests).
pub trait Entropy {
    /// Fills `out` with random bytes.
    fn fill(&mut self, out: &mut [u8]);
}

/// A deterministic [`Entropy`] (SplitMix64) for tests and simulations.
#[derive(Debug, Clone)]
pub struct SeededEntropy(u64);

impl SeededEntropy {
    /// A generator seeded with `seed`.
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }
}

impl Entropy for SeededEntropy {
    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            for (o, b) in chunk.iter_mut().zip(z.to_le_bytes()) {
                *o = b;
            }
        }
    }
}

/// Which pair of headers a challenge uses (RFC 3261 §22.1, §22.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 407, Proxy-Authenticate / Proxy-Authorization: a proxy authenticating a request.
    Proxy,
    /// 401, WWW-Authenticate / Authorization: a registrar (or UAS) authenticating.
    Www,
}

impl Kind {
    /// 401 for REGISTER (we are its registrar), 407 for everything else.
    pub fn for_method(m: Method) -> Self {
        if m == Method::Register {
            Self::Www
        } else {
            Self::Proxy
        }
    }

    /// The status of the challenge.
    pub const fn status(self) -> u16 {
        match self {
            Self::Proxy => 407,
            Self::Www => 401,
        }
    }

    /// The reason phrase of the challenge.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Proxy => "Proxy Authentication Required",
            Self::Www => "Unauthorized",
        }
    }

    /// The challenge header's name.
    pub const fn challenge_header(self) -> &'static str {
        match self {
            Self::Proxy => "Proxy-Authenticate",
            Self::Www => "WWW-Authenticate",
        }
    }

    /// The credentials header.
    pub const fn credentials_header(self) -> HeaderName {
        match self {
            Self::Proxy => HeaderName::ProxyAuthorization,
            Self::Www => HeaderName::Authorization,
        }
    }
}

/// What to do with a request from a throttled source or for a throttled user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ThrottleAction {
    /// Answer with the usual challenge (the request is not checked).
    Challenge,
    /// Send nothing.
    #[default]
    Drop,
}

/// `[auth]` as written in the config file. Durations are in seconds.
///
/// ```toml
/// [auth]
/// algorithms = ["MD5", "SHA-256"]   # offered in this order; also SHA-512-256 and the -sess forms
/// strongest_first = ["Linphone"]    # User-Agent prefixes offered the non-MD5 ones first
/// qop = ["auth"]                    # add "auth-int" to offer it too
/// nonce_lifetime = 300
/// key_rotation = 3600               # >= nonce_lifetime
/// bind_source = false               # nonces verify only from the address they were sent to
/// secret = "<64 hex digits>"        # shared by the nodes of one domain; random per process if absent
/// replay_slots = 65536              # nonces remembered per shard (32 bytes each)
/// throttle_slots = 65536            # sources and users tracked per shard, each
/// source_failures = 10              # failures per source allowed at once …
/// source_window = 60                # … and refilled over this many seconds
/// user_failures = 20
/// user_window = 600
/// throttle_action = "drop"          # or "challenge"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Algorithm tokens, in the order offered.
    pub algorithms: Option<Vec<String>>,
    /// User-Agent prefixes (case-insensitive) whose requests are offered the
    /// configured algorithms other than MD5 first.
    pub strongest_first: Option<Vec<String>>,
    /// `auth` and optionally `auth-int`.
    pub qop: Option<Vec<String>>,
    /// Seconds a nonce stays valid.
    pub nonce_lifetime: Option<u64>,
    /// Seconds between nonce key rotations.
    pub key_rotation: Option<u64>,
    /// Bind nonces to the source address.
    pub bind_source: Option<bool>,
    /// The nonce secret, hex.
    pub secret: Option<String>,
    /// Nonce-count table size per shard.
    pub replay_slots: Option<usize>,
    /// Throttle table size per shard.
    pub throttle_slots: Option<usize>,
    /// Failures per source before throttling.
    pub source_failures: Option<u32>,
    /// Seconds over which a source's failure allowance refills.
    pub source_window: Option<u64>,
    /// Failures per user name before throttling.
    pub user_failures: Option<u32>,
    /// Seconds over which a user's failure allowance refills.
    pub user_window: Option<u64>,
    /// `drop` or `challenge`.
    pub throttle_action: Option<String>,
}

/// A bad `[auth]` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    /// An unknown algorithm token (position in the list).
    #[error("[auth] algorithms: entry {0} is not MD5, SHA-256, SHA-512-256 or a -sess form")]
    Algorithm(usize),
    /// An empty algorithm list, or one naming an algorithm twice.
    #[error("[auth] algorithms: must be non-empty and without repeats")]
    Algorithms,
    /// A qop list without `auth`, or with another token.
    #[error("[auth] qop: must hold \"auth\" and optionally \"auth-int\"")]
    Qop,
    /// A nonce lifetime of 0, or a rotation shorter than the lifetime.
    #[error("[auth] nonce_lifetime must be > 0 and key_rotation >= nonce_lifetime")]
    Lifetime,
    /// A secret that is not at least 32 hex digits.
    #[error("[auth] secret: at least 32 hex digits")]
    Secret,
    /// A zero failure count or window.
    #[error("[auth] *_failures and *_window must be > 0")]
    Throttle,
    /// Neither `drop` nor `challenge`.
    #[error("[auth] throttle_action: \"drop\" or \"challenge\"")]
    ThrottleAction,
}

/// Validated authentication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Offered algorithms, in order; the only ones accepted.
    ///
    /// MD5 comes first by default: deployed clients (SIPp 3.6, svcrack,
    /// SIP.js, many phones) read only the first `WWW-Authenticate` and give
    /// up when it is not MD5, while RFC 8760 clients take the first one they
    /// support — so with SHA-256 first the former fail, and with MD5 first
    /// the latter use MD5. An operator whose clients all speak SHA-256 puts
    /// it first; [`Config::strongest_first`] does it for chosen clients.
    pub algorithms: Vec<Algorithm>,
    /// User-Agent prefixes, lower case, whose requests get the algorithms
    /// other than MD5 and MD5-sess first (the configured order otherwise kept).
    pub strongest_first: Vec<Box<[u8]>>,
    /// Offer and accept qop=auth-int as well as auth.
    pub auth_int: bool,
    /// How long a nonce is valid.
    pub nonce_lifetime: Duration,
    /// How often the nonce key changes.
    pub key_rotation: Duration,
    /// Bind nonces to the source address.
    pub bind_source: bool,
    /// The configured secret, if any (else the caller draws one, once per process).
    pub secret: Option<Secret>,
    /// This shard's (and node's) issuer id, put in its nonces.
    pub issuer: u16,
    /// Nonce-count table size.
    pub replay_slots: usize,
    /// Size of each throttle table.
    pub throttle_slots: usize,
    /// Failure rate allowed per source address.
    pub per_source: Gcra,
    /// Failure rate allowed per user name.
    pub per_user: Gcra,
    /// What the caller does with throttled requests.
    pub throttle_action: ThrottleAction,
    /// How far in the future a nonce's issue time may be (clock skew between nodes).
    pub max_skew: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            algorithms: vec![Algorithm::Md5, Algorithm::Sha256],
            strongest_first: Vec::new(),
            auth_int: false,
            nonce_lifetime: Duration::from_secs(300),
            key_rotation: Duration::from_secs(3600),
            bind_source: false,
            secret: None,
            issuer: 0,
            replay_slots: 65_536,
            throttle_slots: 65_536,
            per_source: Gcra::per(10, Duration::from_secs(60)),
            per_user: Gcra::per(20, Duration::from_secs(600)),
            throttle_action: ThrottleAction::Drop,
            max_skew: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// Validates `[auth]` over the defaults.
    pub fn from_section(s: &AuthSection) -> Result<Self, AuthConfigError> {
        let d = Self::default();
        let algorithms = match &s.algorithms {
            None => d.algorithms,
            Some(list) => {
                let mut out: Vec<Algorithm> = Vec::with_capacity(list.len());
                for (i, t) in list.iter().enumerate() {
                    let a =
                        Algorithm::from_token(t.as_bytes()).ok_or(AuthConfigError::Algorithm(i))?;
                    if out.contains(&a) {
                        return Err(AuthConfigError::Algorithms);
                    }
                    out.push(a);
                }
                if out.is_empty() {
                    return Err(AuthConfigError::Algorithms);
                }
                out
            }
        };
        let auth_int = match &s.qop {
            None => false,
            Some(list) => {
                let q: Option<Vec<Qop>> =
                    list.iter().map(|t| Qop::from_token(t.as_bytes())).collect();
                let q = q.ok_or(AuthConfigError::Qop)?;
                if !q.contains(&Qop::Auth) {
                    return Err(AuthConfigError::Qop);
                }
                q.contains(&Qop::AuthInt)
            }
        };
        let lifetime = s
            .nonce_lifetime
            .map_or(d.nonce_lifetime, Duration::from_secs);
        let rotation = s
            .key_rotation
            .map_or(d.key_rotation.max(lifetime), Duration::from_secs);
        if lifetime == Duration::ZERO || rotation < lifetime {
            return Err(AuthConfigError::Lifetime);
        }
        let secret = match &s.secret {
            None => None,
            Some(h) => Some(Secret::from_hex(h).ok_or(AuthConfigError::Secret)?),
        };
        let gcra = |n: Option<u32>, w: Option<u64>, def: Gcra| -> Result<Gcra, AuthConfigError> {
            match (n, w) {
                (None, None) => Ok(def),
                (Some(0), _) | (_, Some(0)) => Err(AuthConfigError::Throttle),
                (n, w) => {
                    let n = n.unwrap_or(def.burst);
                    let w = w.map_or(
                        def.interval.saturating_mul(u64::from(def.burst)),
                        Duration::from_secs,
                    );
                    Ok(Gcra::per(n, w))
                }
            }
        };
        let throttle_action = match s.throttle_action.as_deref() {
            None | Some("drop") => ThrottleAction::Drop,
            Some("challenge") => ThrottleAction::Challenge,
            Some(_) => return Err(AuthConfigError::ThrottleAction),
        };
        let strongest_first = s
            .strongest_first
            .iter()
            .flatten()
            .map(|p| {
                p.trim()
                    .to_ascii_lowercase()
                    .into_bytes()
                    .into_boxed_slice()
            })
            .filter(|p| !p.is_empty())
            .collect();
        Ok(Self {
            algorithms,
            strongest_first,
            auth_int,
            nonce_lifetime: lifetime,
            key_rotation: rotation,
            bind_source: s.bind_source.unwrap_or(d.bind_source),
            secret,
            issuer: d.issuer,
            replay_slots: s.replay_slots.unwrap_or(d.replay_slots).max(8),
            throttle_slots: s.throttle_slots.unwrap_or(d.throttle_slots).max(8),
            per_source: gcra(s.source_failures, s.source_window, d.per_source)?,
            per_user: gcra(s.user_failures, s.user_window, d.per_user)?,
            throttle_action,
            max_skew: d.max_skew,
        })
    }
}

/// Index of a realm (a served domain) in the [`Authenticator`]'s list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RealmId(pub u16);

/// Why an authenticated-or-not request is refused outright (403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Valid credentials, but for another user than the To (REGISTER) or From.
    IdentityMismatch,
    /// The request claims a domain we do not serve: nobody here can vouch for it.
    UnknownRealm,
}

impl Refusal {
    /// The reason phrase of the 403.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::IdentityMismatch => "Forbidden (Identity Mismatch)",
            Self::UnknownRealm => "Forbidden (Unknown Domain)",
        }
    }
}

/// What [`Authenticator::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'buf> {
    /// Valid credentials of `user` in `realm`, matching the From (or To).
    Authenticated {
        /// The user name, as in the credentials.
        user: &'buf [u8],
        /// The realm.
        realm: RealmId,
    },
    /// Answer 401/407 with [`Authenticator::write_challenge`].
    Challenge {
        /// The realm to challenge for.
        realm: RealmId,
        /// The credentials were right but the nonce was not usable any more.
        stale: bool,
    },
    /// Answer 403 with [`Refusal::reason`].
    Forbidden(Refusal),
    /// Too many failures from this source or for this user: apply
    /// [`Authenticator::throttle_action`] (nothing was checked).
    Throttled {
        /// The realm, for a challenge.
        realm: RealmId,
    },
}

/// Per-shard counters, named after the `sipedge_auth_<what>_total` metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthCounters {
    /// Requests authenticated.
    pub authenticated: u64,
    /// Challenges written.
    pub challenges: u64,
    /// Credentials that failed (wrong password, unknown user, bad nonce, malformed, replay).
    pub failures: u64,
    /// 403s for an identity mismatch or a foreign domain.
    pub forbidden: u64,
    /// Replayed nonce-counts refused.
    pub replays: u64,
    /// Correct credentials with a stale nonce.
    pub stale: u64,
    /// Requests refused unchecked by the throttles.
    pub throttled: u64,
}

impl AuthCounters {
    /// Adds `other` into `self` (scrape-time summing across shards).
    pub fn add(&mut self, other: &Self) {
        self.authenticated += other.authenticated;
        self.challenges += other.challenges;
        self.failures += other.failures;
        self.forbidden += other.forbidden;
        self.replays += other.replays;
        self.stale += other.stale;
        self.throttled += other.throttled;
    }

    /// (metric name, value) pairs, for export.
    pub fn pairs(&self) -> [(&'static str, u64); 7] {
        [
            ("sipedge_auth_authenticated_total", self.authenticated),
            ("sipedge_auth_challenges_total", self.challenges),
            ("sipedge_auth_failures_total", self.failures),
            ("sipedge_auth_forbidden_total", self.forbidden),
            ("sipedge_auth_replays_total", self.replays),
            ("sipedge_auth_stale_total", self.stale),
            ("sipedge_auth_throttled_total", self.throttled),
        ]
    }
}

#[derive(Debug, Clone)]
struct Realm {
    name: Box<[u8]>,
    opaque: [u8; 16],
}

impl Realm {
    fn new(name: &str, secret: &Secret) -> Self {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let mac = secret.mac(&[b"sipedge opaque", name.as_bytes()]);
        let mut opaque = [0u8; 16];
        hex_into(mac.get(..8).unwrap_or_default(), &mut opaque);
        Self {
            name: name.into_bytes().into_boxed_slice(),
            opaque,
        }
    }
}

/// Nonce keys a reload replaced: a nonce they signed is answered with a
/// stale challenge (never accepted) until `until_ms`, so that clients
/// re-authenticate without seeing a failure.
#[derive(Clone)]
struct Retired {
    keys: NonceKeys,
    opaques: Vec<[u8; 16]>,
    until_ms: u64,
}

/// The digest parameters of one credentials value, read in one pass.
#[derive(Debug, Default, Clone, Copy)]
struct Fields<'b> {
    username: Option<&'b [u8]>,
    realm: Option<&'b [u8]>,
    nonce: Option<&'b [u8]>,
    uri: Option<&'b [u8]>,
    response: Option<&'b [u8]>,
    algorithm: Option<&'b [u8]>,
    cnonce: Option<&'b [u8]>,
    nc: Option<&'b [u8]>,
    qop: Option<&'b [u8]>,
    opaque: Option<&'b [u8]>,
    userhash: Option<&'b [u8]>,
}

impl<'b> Fields<'b> {
    /// Reads the parameters; `None` on a repeated one or bad syntax.
    fn read(c: &Credentials<'b>) -> Option<Self> {
        let mut f = Self::default();
        for p in c.params.iter() {
            let (name, value) = p.ok()?;
            let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
            let slot = if is(b"username") {
                &mut f.username
            } else if is(b"realm") {
                &mut f.realm
            } else if is(b"nonce") {
                &mut f.nonce
            } else if is(b"uri") {
                &mut f.uri
            } else if is(b"response") {
                &mut f.response
            } else if is(b"algorithm") {
                &mut f.algorithm
            } else if is(b"cnonce") {
                &mut f.cnonce
            } else if is(b"nc") {
                &mut f.nc
            } else if is(b"qop") {
                &mut f.qop
            } else if is(b"opaque") {
                &mut f.opaque
            } else if is(b"userhash") {
                &mut f.userhash
            } else {
                continue;
            };
            if slot.replace(value).is_some() {
                return None;
            }
        }
        Some(f)
    }
}

/// The per-shard digest authenticator. See the module doc for the flow.
pub struct Authenticator<D: UserDirectory = Users> {
    cfg: Config,
    users: Arc<D>,
    keys: NonceKeys,
    realms: Vec<Realm>,
    /// The keys and opaques before a reload changed the secret or the
    /// rotation, until the nonces they signed have expired.
    retired: Option<Retired>,
    replay: ReplayTable,
    by_source: Sources,
    by_user: RateTable,
    /// Seed of the throttle keys (drawn at construction).
    seed: u64,
    /// Next nonce serial (40 bits used).
    serial: u64,
    /// Dummy HA1s for unknown users: MD5, SHA-256, SHA-512-256.
    dummy: [Hex; 3],
    counters: AuthCounters,
}

/// The failed-auth throttle of source addresses: this shard's own, or the
/// one every shard shares ([`Authenticator::share_sources`]).
enum Sources {
    /// Keyed by a hash seeded per authenticator.
    Own(RateTable),
    /// Keyed by the address bytes (the table hashes them).
    Shared(Arc<SharedRate>),
}

impl Sources {
    fn own(cfg: &Config) -> Self {
        Self::Own(RateTable::new(
            cfg.throttle_slots,
            cfg.per_source,
            Duration::ZERO,
        ))
    }

    fn is_limited(&self, now: Instant, seed: u64, ip: IpAddr) -> bool {
        match self {
            Self::Own(t) => t.is_limited(now, hash_bytes(seed, &source_bytes(ip))),
            Self::Shared(t) => t.is_limited(now, &source_bytes(ip)),
        }
    }

    fn hit(&mut self, now: Instant, seed: u64, ip: IpAddr) {
        match self {
            Self::Own(t) => {
                let _: Hit = t.hit(now, hash_bytes(seed, &source_bytes(ip)));
            }
            Self::Shared(t) => t.hit(now, &source_bytes(ip)),
        }
    }
}

/// A source address as throttle key bytes (IPv4 as IPv4-mapped IPv6).
fn source_bytes(ip: IpAddr) -> [u8; 16] {
    match ip.to_canonical() {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
    .octets()
}

impl<D: UserDirectory> core::fmt::Debug for Authenticator<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Authenticator")
            .field("cfg", &self.cfg)
            .field("realms", &self.realms.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl<D: UserDirectory> Authenticator<D> {
    /// An authenticator for `realms` (the served domains), reading `users`,
    /// signing nonces with `secret` (the same on every shard).
    pub fn new<R: AsRef<str>>(
        cfg: Config,
        realms: &[R],
        users: Arc<D>,
        secret: &Secret,
        entropy: &mut dyn Entropy,
    ) -> Self {
        let realms = realms
            .iter()
            .map(|r| Realm::new(r.as_ref(), secret))
            .collect();
        let mut r = [0u8; 16];
        entropy.fill(&mut r);
        let [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p] = r;
        Self {
            keys: NonceKeys::new(secret.clone(), cfg.key_rotation),
            realms,
            retired: None,
            replay: ReplayTable::new(cfg.replay_slots),
            by_source: Sources::own(&cfg),
            by_user: RateTable::new(cfg.throttle_slots, cfg.per_user, Duration::ZERO),
            seed: u64::from_le_bytes([a, b, c, d, e, f, g, h]),
            serial: u64::from_le_bytes([i, j, k, l, m, n, o, p]) & ((1 << 40) - 1),
            dummy: dummies(secret),
            users,
            cfg,
            counters: AuthCounters::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The counters.
    pub fn counters(&self) -> &AuthCounters {
        &self.counters
    }

    /// What the caller does with [`Outcome::Throttled`].
    pub fn throttle_action(&self) -> ThrottleAction {
        self.cfg.throttle_action
    }

    /// Applies reloaded `[auth]` settings (`cfg`; the issuer id is kept) and
    /// nonce `secret` at wall-clock `wall_ms`, without ever accepting a
    /// replayed nonce-count:
    ///
    /// - algorithms, qop, `strongest_first`, source binding and the throttle
    ///   action apply to the next challenge and check;
    /// - a new secret or rotation period retires the old keys: a nonce they
    ///   signed draws a stale challenge (one round trip, no failure counted)
    ///   until it would have expired anyway;
    /// - a resized nonce-count table, or a longer nonce lifetime (which would
    ///   revive nonces whose counts were dropped as expired), forgets every
    ///   nonce issued until now: each draws one stale challenge;
    /// - resized or re-rated throttle tables start empty.
    pub fn reconfigure(&mut self, cfg: Config, secret: &Secret, wall_ms: u64) {
        let cfg = Config {
            issuer: self.cfg.issuer,
            ..cfg
        };
        if self.keys.secret() != secret || cfg.key_rotation != self.cfg.key_rotation {
            let lifetime = self.cfg.nonce_lifetime.max(cfg.nonce_lifetime);
            let until_ms = wall_ms
                .saturating_add(lifetime.as_millis())
                .saturating_add(self.cfg.max_skew.as_millis());
            let old = core::mem::replace(
                &mut self.keys,
                NonceKeys::new(secret.clone(), cfg.key_rotation),
            );
            let opaques = self.realms.iter().map(|r| r.opaque).collect();
            self.retired = Some(Retired {
                keys: old,
                opaques,
                until_ms,
            });
            for r in &mut self.realms {
                let name = String::from_utf8_lossy(&r.name).into_owned();
                *r = Realm::new(&name, secret);
            }
            self.dummy = dummies(secret);
        }
        if cfg.replay_slots != self.cfg.replay_slots {
            self.replay = ReplayTable::new(cfg.replay_slots);
            self.replay.forget_issued_until(wall_ms);
        } else if cfg.nonce_lifetime > self.cfg.nonce_lifetime {
            self.replay.forget_issued_until(wall_ms);
        }
        // A shared table is replaced by whoever shares it (`share_sources`).
        if matches!(self.by_source, Sources::Own(_))
            && (cfg.throttle_slots != self.cfg.throttle_slots
                || cfg.per_source != self.cfg.per_source)
        {
            self.by_source = Sources::own(&cfg);
        }
        if cfg.throttle_slots != self.cfg.throttle_slots || cfg.per_user != self.cfg.per_user {
            self.by_user = RateTable::new(cfg.throttle_slots, cfg.per_user, Duration::ZERO);
        }
        self.cfg = cfg;
    }

    /// Counts failures by source in `table`, shared with the other shards,
    /// instead of this shard's own table: a source's failures then add up
    /// whichever shard checks them (REGISTERs are checked by the shard that
    /// owns the AoR). Give every shard the same table, built for the
    /// current `[auth]` (`throttle_slots`, `source_failures`, `source_window`).
    pub fn share_sources(&mut self, table: Arc<SharedRate>) {
        self.by_source = Sources::Shared(table);
    }

    /// Replaces the user directory (a reload); nonces and tables are kept.
    pub fn set_users(&mut self, users: Arc<D>) {
        self.users = users;
    }

    /// The user directory.
    pub fn users(&self) -> &Arc<D> {
        &self.users
    }

    /// The nonce-count table (for its size and evictions).
    pub fn replay_table(&self) -> &ReplayTable {
        &self.replay
    }

    /// Forgets every nonce-count *and* every eviction watermark, so that
    /// used nonces are accepted again: for benches that cycle over a fixed
    /// set of requests, never for a server.
    #[doc(hidden)]
    pub fn bench_reset_replay_table(&mut self) {
        self.replay.reset_for_bench();
    }

    /// The name of realm `id`.
    pub fn realm_name(&self, id: RealmId) -> &[u8] {
        self.realms
            .get(usize::from(id.0))
            .map_or(&b""[..], |r| &r.name)
    }

    /// The realm of a served domain `host`.
    pub fn realm_of(&self, host: &Host<'_>) -> Option<RealmId> {
        // A served domain may be an address (an edge with no DNS name): its
        // realm is the address in canonical form, as config and location keep it.
        let mut text = [0u8; 48];
        let n = host_text(host, &mut text);
        let i = self
            .realms
            .iter()
            .position(|r| r.name.eq_ignore_ascii_case(n))?;
        u16::try_from(i).ok().map(RealmId)
    }

    /// The realm a request is authenticated in: the To host for a
    /// registration (the AoR's domain), the From host otherwise.
    pub fn realm_for(&self, msg: &Message<'_>, kind: Kind) -> Option<RealmId> {
        self.realm_of(&identity_uri(msg, kind)?.host)
    }

    /// Checks the credentials of `msg` (which arrived from `src`) for the
    /// challenge kind `kind`. See the module doc.
    pub fn check<'buf>(
        &mut self,
        now: Instant,
        wall: u64,
        msg: &Message<'buf>,
        kind: Kind,
        src: SocketAddr,
    ) -> Outcome<'buf> {
        // Decoded once: its host names the realm, and it must name the
        // authenticated user at the end.
        let who = identity_uri(msg, kind);
        let Some(realm) = who.as_ref().and_then(|u| self.realm_of(&u.host)) else {
            self.counters.forbidden += 1;
            return Outcome::Forbidden(Refusal::UnknownRealm);
        };
        let Some(r) = self.realms.get(usize::from(realm.0)) else {
            return Outcome::Forbidden(Refusal::UnknownRealm);
        };
        // Our realm's Digest credentials; others' are for the hops after us (§22.3).
        let creds = msg
            .named(kind.credentials_header())
            .filter_map(|e| Credentials::parse(e.value.of(msg.buf())).ok())
            .find(|c| {
                c.is_digest()
                    && c.params
                        .get(b"realm")
                        .is_some_and(|x| x.eq_ignore_ascii_case(&r.name))
            });
        let Some(creds) = creds else {
            return Outcome::Challenge {
                realm,
                stale: false,
            };
        };
        let fields = Fields::read(&creds);
        let user = fields.and_then(|f| f.username).unwrap_or_default();
        let user_key = self.user_key(user, &r.name);
        if self.by_source.is_limited(now, self.seed, src.ip())
            || self.by_user.is_limited(now, user_key)
        {
            self.counters.throttled += 1;
            return Outcome::Throttled { realm };
        }
        match self.verify(wall, msg, realm, fields, src) {
            Verified::Ok => {}
            Verified::Failed => {
                self.fail(now, src.ip(), user_key);
                return Outcome::Challenge {
                    realm,
                    stale: false,
                };
            }
            Verified::Stale => {
                self.counters.stale += 1;
                return Outcome::Challenge { realm, stale: true };
            }
            Verified::Replayed => {
                self.counters.replays += 1;
                self.fail(now, src.ip(), user_key);
                return Outcome::Challenge { realm, stale: true };
            }
        }
        if !who.is_some_and(|u| identity_matches(&u, user, self.realm_name(realm))) {
            self.counters.forbidden += 1;
            return Outcome::Forbidden(Refusal::IdentityMismatch);
        }
        self.counters.authenticated += 1;
        Outcome::Authenticated { user, realm }
    }

    fn fail(&mut self, now: Instant, ip: IpAddr, user_key: u64) {
        self.counters.failures += 1;
        // Over the rate or not, the failure is counted; the next attempt is
        // what `is_limited` refuses.
        self.by_source.hit(now, self.seed, ip);
        let _: Hit = self.by_user.hit(now, user_key);
    }

    fn user_key(&self, user: &[u8], realm: &[u8]) -> u64 {
        hash_bytes(hash_bytes(self.seed ^ 0x55, user), realm)
    }

    /// The digest check proper: everything but the throttles and the identity.
    fn verify(
        &mut self,
        wall: u64,
        msg: &Message<'_>,
        realm: RealmId,
        fields: Option<Fields<'_>>,
        src: SocketAddr,
    ) -> Verified {
        let Some(f) = fields else {
            return Verified::Failed;
        };
        let Some(r) = self.realms.get(usize::from(realm.0)) else {
            return Verified::Failed;
        };
        let (
            Some(username),
            Some(nonce),
            Some(uri),
            Some(response),
            Some(cnonce),
            Some(nc),
            Some(qop),
        ) = (
            f.username, f.nonce, f.uri, f.response, f.cnonce, f.nc, f.qop,
        )
        else {
            return Verified::Failed;
        };
        // Offered algorithm, qop, and no userhash (we never offer it).
        let algorithm = match f.algorithm {
            None => Algorithm::Md5,
            Some(t) => match Algorithm::from_token(t) {
                Some(a) => a,
                None => return Verified::Failed,
            },
        };
        if !self.cfg.algorithms.contains(&algorithm)
            || f.userhash.is_some_and(|u| u.eq_ignore_ascii_case(b"true"))
            || username.is_empty()
            || cnonce.is_empty()
        {
            return Verified::Failed;
        }
        let qop = match Qop::from_token(qop) {
            Some(Qop::AuthInt) if !self.cfg.auth_int => return Verified::Failed,
            Some(q) => q,
            None => return Verified::Failed,
        };
        let Some(count) = parse_nc(nc) else {
            return Verified::Failed;
        };
        if !uri_matches(uri, msg.request_uri_bytes()) {
            return Verified::Failed;
        }
        let wall_ms = wall / 1_000;
        // A nonce of the keys a reload retired: checked like any other, but
        // at best stale.
        let (info, retired) = match self.keys.open(nonce, &r.name, src.ip()) {
            Ok(info) if f.opaque.is_none_or(|o| o == r.opaque) => (info, false),
            Ok(_) => return Verified::Failed,
            Err(_) => {
                let Some(old) = self.retired.as_mut().filter(|o| wall_ms <= o.until_ms) else {
                    return Verified::Failed;
                };
                let opaque = old.opaques.get(usize::from(realm.0));
                if f.opaque.is_some_and(|o| opaque.is_none_or(|x| o != &x[..])) {
                    return Verified::Failed;
                }
                match old.keys.open(nonce, &r.name, src.ip()) {
                    Ok(info) => (info, true),
                    Err(_) => return Verified::Failed,
                }
            }
        };
        // The response, against a dummy HA1 when the user is unknown (same work).
        let h = algorithm.hash();
        let found = self.users.ha1(username, &r.name, h).filter(|x| x.fits(h));
        let dummy = match h {
            HashFn::Md5 => self.dummy[0],
            HashFn::Sha256 => self.dummy[1],
            HashFn::Sha512t256 => self.dummy[2],
        };
        let ha1 = found.unwrap_or(dummy);
        let expect = digest::response(
            &ha1,
            &digest::Challenge {
                algorithm,
                nonce,
                cnonce,
                nc,
                qop: Some(qop),
                method: msg.method_bytes(),
                uri,
                body: msg.body(),
            },
        );
        let mut got = [0u8; 64];
        let same = match got.get_mut(..response.len()) {
            Some(g) if response.len() == expect.as_bytes().len() => {
                for (o, b) in g.iter_mut().zip(response) {
                    *o = b.to_ascii_lowercase();
                }
                expect.as_bytes().ct_eq(g)
            }
            // The length is the algorithm's, not a secret.
            _ => subtle::Choice::from(0),
        };
        if !bool::from(same & subtle::Choice::from(u8::from(found.is_some()))) {
            return Verified::Failed;
        }
        // Right credentials: is the nonce still usable, here?
        if retired {
            return Verified::Stale;
        }
        let lifetime = self.cfg.nonce_lifetime.as_millis();
        let expired = info.issued_ms.saturating_add(lifetime) < wall_ms;
        let future = info.issued_ms > wall_ms.saturating_add(self.cfg.max_skew.as_millis());
        if expired || future || info.issuer != self.cfg.issuer {
            return Verified::Stale;
        }
        match self.replay.check(
            info.id,
            info.issued_ms,
            count,
            wall_ms.saturating_sub(lifetime),
        ) {
            NcCheck::Fresh => Verified::Ok,
            NcCheck::Forgotten => Verified::Stale,
            NcCheck::Replayed => Verified::Replayed,
        }
    }

    /// Writes the challenge header lines (one per offered algorithm, all
    /// with one fresh nonce) for `realm`, e.g.
    /// `WWW-Authenticate: Digest realm="example.test", nonce="…", opaque="…", algorithm=SHA-256, qop="auth"`.
    #[allow(clippy::too_many_arguments)]
    pub fn write_challenge(
        &mut self,
        wall: u64,
        kind: Kind,
        realm: RealmId,
        stale: bool,
        src: SocketAddr,
        user_agent: Option<&[u8]>,
        w: &mut Writer<'_>,
    ) -> Result<(), EmitError> {
        let Some(r) = self.realms.get(usize::from(realm.0)) else {
            return Err(EmitError::MissingHeader);
        };
        let mut nonce = [0u8; NONCE_LEN];
        let serial = self.serial;
        self.serial = (self.serial + 1) & ((1 << 40) - 1);
        self.keys.issue(
            wall / 1_000,
            self.cfg.issuer,
            serial,
            &r.name,
            self.cfg.bind_source.then_some(src.ip()),
            &mut nonce,
        );
        let strongest_first = user_agent.is_some_and(|ua| {
            self.cfg.strongest_first.iter().any(|p| {
                ua.get(..p.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(p))
            })
        });
        let is_md5 = |a: &Algorithm| matches!(a, Algorithm::Md5 | Algorithm::Md5Sess);
        let order = self
            .cfg
            .algorithms
            .iter()
            .filter(|a| !strongest_first || !is_md5(a))
            .chain(
                self.cfg
                    .algorithms
                    .iter()
                    .filter(|a| strongest_first && is_md5(a)),
            );
        for a in order {
            w.put_str(kind.challenge_header())?;
            w.put(b": Digest realm=\"")?;
            w.put(&r.name)?;
            w.put(b"\", nonce=\"")?;
            w.put(&nonce)?;
            w.put(b"\", opaque=\"")?;
            w.put(&r.opaque)?;
            w.put(b"\", algorithm=")?;
            w.put_str(a.as_str())?;
            w.put(if self.cfg.auth_int {
                &b", qop=\"auth,auth-int\""[..]
            } else {
                b", qop=\"auth\""
            })?;
            if stale {
                w.put(b", stale=true")?;
            }
            w.put(b"\r\n")?;
        }
        self.counters.challenges += 1;
        Ok(())
    }

    /// [`Authenticator::write_challenge`] into `out`; returns the length,
    /// for the `extra` of a locally built response.
    #[allow(clippy::too_many_arguments)]
    pub fn challenge(
        &mut self,
        wall: u64,
        kind: Kind,
        realm: RealmId,
        stale: bool,
        src: SocketAddr,
        user_agent: Option<&[u8]>,
        out: &mut [u8],
    ) -> Result<usize, EmitError> {
        let mut w = Writer::new(out);
        self.write_challenge(wall, kind, realm, stale, src, user_agent, &mut w)?;
        Ok(w.len())
    }
}

/// The dummy HA1s (MD5, SHA-256, SHA-512-256) checked for unknown users.
fn dummies(secret: &Secret) -> [Hex; 3] {
    let mac = secret.mac(&[b"sipedge dummy ha1"]);
    [
        digest::hash(HashFn::Md5, &mac),
        digest::hash(HashFn::Sha256, &mac),
        digest::hash(HashFn::Sha512t256, &mac),
    ]
}

enum Verified {
    Ok,
    Failed,
    Replayed,
    Stale,
}

/// `nc`: 1 to 8 hex digits (RFC 7616 says exactly 8; some clients write fewer).
fn parse_nc(nc: &[u8]) -> Option<u32> {
    if nc.is_empty() || nc.len() > 8 {
        return None;
    }
    nc.iter().try_fold(0u32, |acc, &b| {
        Some(acc << 4 | u32::from(crate::sip::scan::hex(b)?))
    })
}

/// RFC 7616 §3.4.6: the digest-uri names the Request-URI's resource. Equal
/// bytes, or equivalent SIP URIs (§19.1.4).
fn uri_matches(digest_uri: &[u8], request_uri: &[u8]) -> bool {
    if digest_uri == request_uri {
        return true;
    }
    match (Uri::parse(digest_uri), Uri::parse(request_uri)) {
        (Ok(a), Ok(b)) => a.equivalent(&b),
        _ => false,
    }
}

/// The URI that names the realm and the identity of a request: the To's
/// for `Www` (a REGISTER), the From's for `Proxy`.
fn identity_uri<'buf>(msg: &Message<'buf>, kind: Kind) -> Option<Uri<'buf>> {
    match kind {
        Kind::Www => msg.to(),
        Kind::Proxy => msg.from(),
    }
    .ok()?
    .uri()
    .ok()
}

/// The authenticated `user@realm` is the To (REGISTER, RFC 3261 §10.3 step
/// 6's check done by the registrar) or the From of the request: `uri`,
/// from [`identity_uri`].
fn identity_matches(uri: &Uri<'_>, user: &[u8], realm: &[u8]) -> bool {
    let mut text = [0u8; 48];
    let host_ok = host_text(&uri.host, &mut text).eq_ignore_ascii_case(realm);
    host_ok && uri.user_eq(user)
}

/// A host as a realm compares: a name without its trailing dot, an address
/// in canonical text (`127.0.0.1`, `[2001:db8::1]`), as served domains are kept.
fn host_text<'a>(host: &Host<'a>, buf: &'a mut [u8; 48]) -> &'a [u8] {
    let ip = match *host {
        Host::Name(n) => return n.strip_suffix(b".").unwrap_or(n),
        Host::V4(a) => IpAddr::V4(a),
        Host::V6(a) => IpAddr::V6(a),
    };
    let n = crate::sip::emit::format_ip(ip, buf);
    buf.get(..n).unwrap_or_default()
}

fn hex_into(raw: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, &b) in out.chunks_exact_mut(2).zip(raw) {
        if let [hi, lo] = pair {
            *hi = DIGITS.get(usize::from(b >> 4)).copied().unwrap_or(b'0');
            *lo = DIGITS.get(usize::from(b & 15)).copied().unwrap_or(b'0');
        }
    }
}

#[cfg(test)]
mod tests;
