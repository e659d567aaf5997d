//! What a shard checks before it works for a request (RFC 3261 §22,
//! RFC 7616; the issue's access policy, flood and overload protection):
//!
//! ```text
//! datagram ─► flood: source banned? ── yes ─► drop (counted), before parsing
//!    │ no
//!    ▼ parse, §16.3 checks, retransmission?
//! new request ─► overload: new INVITE/REGISTER over budget? ── yes ─► 503 Retry-After
//!    │ no
//!    ▼
//! policy ─► allow ─────────────────────────────► route
//!        ├► deny ──────────────────────────────► 403 (the rule's reason)
//!        └► require-auth ─► digest check ─ ok ─► policy again ─► route
//!                                 ├ no/stale credentials ─► 401/407 challenge
//!                                 ├ identity ≠ From/To ───► 403
//!                                 └ throttled ────────────► drop (or challenge)
//! ```
//!
//! The users file and the policy are shared, immutable and swapped whole on
//! SIGHUP: each shard checks a generation counter once per loop turn (one
//! uncontended load) and picks up the new `Arc`s when it moved. The nonce
//! secret is kept across reloads, so outstanding challenges stay valid; a
//! reloaded `[auth]` is applied to each shard's authenticator in place
//! (see [`Authenticator::reconfigure`]: nonces in use stay replay-safe).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::auth::{Authenticator, Users};
use crate::policy::flood::Flood;
use crate::policy::overload::Overload;
use crate::policy::Policy;

/// The reloadable part, shared by every shard.
#[derive(Debug)]
pub struct Shared {
    gen: AtomicU64,
    current: Mutex<(Option<Arc<Users>>, Arc<Policy>)>,
    watchers: Mutex<Option<Arc<Watchers>>>,
    limits: Mutex<Option<Arc<Limits>>>,
    auth: Mutex<Option<Arc<AuthSettings>>>,
}

/// `[auth]` as reloaded, with the nonce secret (the configured one, or the
/// one drawn at start when none is configured): each shard's authenticator
/// takes them with [`Authenticator::reconfigure`], which keeps it replay-safe.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The validated settings (each shard keeps its issuer id).
    pub cfg: crate::auth::Config,
    /// The nonce secret.
    pub secret: crate::auth::Secret,
    /// The failed-auth throttle of source addresses, one for every shard
    /// (see [`crate::auth::Authenticator::share_sources`]).
    pub sources: Arc<crate::policy::rate::SharedRate>,
}

impl AuthSettings {
    /// Settings `cfg` with `secret`, keeping the shared source throttle of
    /// `running` when its size and rate are unchanged (a reload keeps the
    /// sources' failure counts, as it keeps each shard's tables).
    pub fn new(
        cfg: crate::auth::Config,
        secret: crate::auth::Secret,
        running: Option<&Self>,
        seed: u64,
    ) -> Self {
        let sources = match running {
            Some(r)
                if r.cfg.throttle_slots == cfg.throttle_slots
                    && r.cfg.per_source == cfg.per_source =>
            {
                r.sources.clone()
            }
            _ => Arc::new(crate::policy::rate::SharedRate::new(
                cfg.throttle_slots,
                cfg.per_source,
                seed,
            )),
        };
        Self {
            cfg,
            secret,
            sources,
        }
    }
}

/// `[flood]` and `[overload]` as reloaded: each shard builds its limiter
/// afresh from them (sources' rates and bans start over; so does the
/// overload state), seeding its hash with `seed`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The flood limits (`None`: off).
    pub flood: Option<crate::policy::flood::Config>,
    /// The overload admission settings.
    pub overload: crate::policy::overload::Config,
    /// A random seed for the limiters' keyed hashes.
    pub seed: u64,
}

/// Presence's watcher rules as reloaded (`[[presence.rule]]`, `[presence] others`).
#[derive(Debug, Clone, Default)]
pub struct Watchers {
    /// The rules, in order.
    pub rules: Vec<crate::presence::WatcherRule>,
    /// Watchers of another domain when no rule matched.
    pub others: crate::presence::Action,
}

impl Shared {
    /// The first users and policy.
    pub fn new(users: Option<Arc<Users>>, policy: Arc<Policy>) -> Self {
        Self {
            gen: AtomicU64::new(1),
            current: Mutex::new((users, policy)),
            watchers: Mutex::new(None),
            limits: Mutex::new(None),
            auth: Mutex::new(None),
        }
    }

    /// The `[auth]` settings published last (at start, then by reloads).
    pub fn auth_settings(&self) -> Option<Arc<AuthSettings>> {
        self.auth.lock().ok().and_then(|a| a.clone())
    }

    /// Publishes `[auth]` settings: at start (what the shards' authenticators
    /// are built with), then on reloads; shards apply them at their next turn.
    pub fn publish_auth(&self, a: AuthSettings) {
        if let Ok(mut c) = self.auth.lock() {
            *c = Some(Arc::new(a));
        }
        self.gen.fetch_add(1, Ordering::Release);
    }

    /// Publishes reloaded `[flood]` and `[overload]` settings.
    pub fn publish_limits(&self, l: Limits) {
        if let Ok(mut c) = self.limits.lock() {
            *c = Some(Arc::new(l));
        }
        self.gen.fetch_add(1, Ordering::Release);
    }

    /// Publishes reloaded watcher rules; shards take them at their next turn.
    pub fn publish_watchers(&self, w: Watchers) {
        if let Ok(mut c) = self.watchers.lock() {
            *c = Some(Arc::new(w));
        }
        self.gen.fetch_add(1, Ordering::Release);
    }

    /// Publishes new users and policy (SIGHUP); shards take them at their next turn.
    pub fn publish(&self, users: Option<Arc<Users>>, policy: Arc<Policy>) {
        if let Ok(mut c) = self.current.lock() {
            *c = (users, policy);
        }
        self.gen.fetch_add(1, Ordering::Release);
    }

    fn snapshot(&self) -> Option<(Option<Arc<Users>>, Arc<Policy>)> {
        self.current.lock().ok().map(|c| c.clone())
    }
}

/// A shard's checks.
#[derive(Debug)]
pub struct Guard {
    /// The access policy.
    pub policy: Arc<Policy>,
    /// Digest authentication, when a users file is configured.
    pub auth: Option<Authenticator<Users>>,
    /// Per-source rate limits.
    pub flood: Option<Flood>,
    /// New-work admission.
    pub overload: Option<Overload>,
    /// Watcher rules reloaded since the start (presence takes them).
    pub watchers: Option<Arc<Watchers>>,
    shared: Option<Arc<Shared>>,
    seen: u64,
    limits_seen: Option<Arc<Limits>>,
    auth_seen: Option<Arc<AuthSettings>>,
}

impl Guard {
    /// No checks: every request is allowed (the default without `[policy]`,
    /// users, `[flood]` or `[overload]`).
    pub fn open() -> Self {
        Self {
            policy: Arc::new(Policy::default()),
            auth: None,
            flood: None,
            overload: None,
            watchers: None,
            shared: None,
            seen: 0,
            limits_seen: None,
            auth_seen: None,
        }
    }

    /// Checks built at start, following `shared` for reloads.
    pub fn new(
        policy: Arc<Policy>,
        auth: Option<Authenticator<Users>>,
        flood: Option<Flood>,
        overload: Option<Overload>,
        shared: Option<Arc<Shared>>,
    ) -> Self {
        let seen = shared.as_ref().map_or(0, |s| s.gen.load(Ordering::Acquire));
        let auth_seen = shared.as_ref().and_then(|s| s.auth_settings());
        Self {
            policy,
            auth,
            flood,
            overload,
            watchers: None,
            shared,
            seen,
            limits_seen: None,
            auth_seen,
        }
    }

    /// Once per loop turn (at wall-clock `wall_us`): takes reloaded users,
    /// policy, limits, watcher rules and `[auth]` settings, if any.
    pub fn refresh(&mut self, wall_us: u64) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        let gen = shared.gen.load(Ordering::Acquire);
        if gen == self.seen {
            return false;
        }
        self.seen = gen;
        let Some((users, policy)) = shared.snapshot() else {
            return false;
        };
        self.policy = policy;
        if let Some(w) = shared.watchers.lock().ok().and_then(|w| w.clone()) {
            self.watchers = Some(w);
        }
        if let Some(l) = shared.limits.lock().ok().and_then(|l| l.clone()) {
            if self
                .limits_seen
                .as_ref()
                .is_none_or(|seen| !Arc::ptr_eq(seen, &l))
            {
                self.flood = l.flood.as_ref().map(|f| Flood::new(f, l.seed));
                self.overload = Some(Overload::new(l.overload.clone(), l.seed.rotate_left(17)));
                self.limits_seen = Some(l);
            }
        }
        if let (Some(a), Some(u)) = (&mut self.auth, users) {
            a.set_users(u);
        }
        if let (Some(a), Some(new)) = (&mut self.auth, shared.auth_settings()) {
            if self
                .auth_seen
                .as_ref()
                .is_none_or(|seen| !Arc::ptr_eq(seen, &new))
            {
                a.reconfigure(new.cfg.clone(), &new.secret, wall_us / 1_000);
                a.share_sources(new.sources.clone());
                self.auth_seen = Some(new);
            }
        }
        true
    }
}
