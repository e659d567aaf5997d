//! Overload control for one shard: when the shard falls behind, new
//! INVITE and REGISTER transactions get 503 with Retry-After (RFC 3261
//! §21.5.4; the local behaviour RFC 7339 builds on), while requests inside
//! dialogs, the transactions already in progress, responses, ACK, BYE, CANCEL
//! and OPTIONS go on, so calls up finish cleanly and monitoring still sees a
//! live server. What is shed is shed fairly: a few heavy sources cannot take
//! the capacity from the many light ones.
//!
//! ```text
//!  each loop turn: handle_turn(now, Load { queue_depth, live_transactions })
//!     normal ── queue ≥ queue_high or live ≥ txn_high ──► overloaded (for at least `hold`)
//!     overloaded ── queue ≤ queue_low and live ≤ txn_low, `hold` over ──► normal
//!  each request:  admit(now, method, in_dialog, source ip)
//!     not a shed method, or in a dialog ─► Accept
//!     normal, a token of `rate` left, this turn's budget left ─► Accept
//!     contended (overloaded, no token, or no budget):
//!        the source's admissions this second < capacity / active sources ─► Accept
//!        else ─► Reject { retry_after, reason }
//! ```
//!
//! Why two signals: the queue depth (datagrams waiting in the ring or the
//! mesh) says the shard is behind *now*; the per-turn budget caps the work
//! one turn may start, so a burst is spread over turns instead of
//! starving the responses and retransmissions already queued behind it.
//! `rate` is the capacity an operator measured for a shard (new calls and
//! registrations per second it carries with headroom): above it the shard
//! is contended before it is behind. Hysteresis (enter high, leave low,
//! minimum hold) keeps the state from flapping every turn. Retry-After is
//! jittered (deterministically, from a seed) so the refused clients do not
//! all come back in the same second.
//!
//! Fair share: while contended, a source (an IP address) is still admitted
//! while its admissions in the current second are below the capacity
//! (`rate`, or what the shard admitted in the previous second) divided by
//! the sources active in the previous second. Counts live in a fixed
//! count-min sketch (two rows of 2,048 counters, seeded hash), so a spray of
//! addresses costs no memory; a collision can only make a light source look
//! heavier, never a heavy one lighter.
//!
//! Pure logic: no clock, no I/O; the caller passes `now` and the load.
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

use core::net::IpAddr;

use crate::hash::hash_bytes;
use crate::sip::Method;
use crate::time::{Duration, Instant};

/// `[overload]` as written in the config file.
///
/// ```toml
/// [overload]
/// new_per_turn = 4096        # new INVITE/REGISTER one loop turn may start
/// rate = 0                   # new INVITE/REGISTER per second a shard carries (0: no limit)
/// queue_high = 16384         # datagrams one loop turn took in: enter overload at this …
/// queue_low = 4096           # … and leave it at this one
/// txn_high = 900000          # live transactions: enter overload …
/// txn_low = 800000           # … and leave
/// hold = 1                   # seconds in overload at least
/// retry_after = 5            # seconds, jittered by up to half
/// methods = ["INVITE", "REGISTER"]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverloadSection {
    /// New transactions of the shed methods per loop turn.
    pub new_per_turn: Option<u32>,
    /// New transactions of the shed methods per second per shard (0: none).
    pub rate: Option<u32>,
    /// Queue depth that starts overload.
    pub queue_high: Option<usize>,
    /// Queue depth that ends it.
    pub queue_low: Option<usize>,
    /// Live transactions that start overload.
    pub txn_high: Option<usize>,
    /// Live transactions that end it.
    pub txn_low: Option<usize>,
    /// Minimum seconds in overload.
    pub hold: Option<u64>,
    /// Retry-After seconds.
    pub retry_after: Option<u32>,
    /// Methods refused while overloaded.
    pub methods: Option<Vec<String>>,
}

/// A bad `[overload]` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OverloadError {
    /// A low watermark above its high one, or a zero budget.
    #[error("[overload] needs new_per_turn > 0, queue_low <= queue_high and txn_low <= txn_high")]
    Watermarks,
    /// A method that is not a known one (position from 1); ACK, CANCEL and OPTIONS are never shed.
    #[error("[overload] methods: entry {0} is not a sheddable method (ACK, CANCEL and OPTIONS are never shed)")]
    Method(usize),
}

/// Validated overload settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// New transactions of the shed methods per loop turn.
    pub new_per_turn: u32,
    /// New transactions of the shed methods per second (0: no limit).
    pub rate: u32,
    /// Queue depth that starts overload.
    pub queue_high: usize,
    /// Queue depth that ends it.
    pub queue_low: usize,
    /// Live transactions that start overload.
    pub txn_high: usize,
    /// Live transactions that end it.
    pub txn_low: usize,
    /// Minimum time in overload.
    pub hold: Duration,
    /// Retry-After, seconds (a random extra of up to half is added).
    pub retry_after: u32,
    /// Methods shed (out of dialog only).
    pub methods: Vec<Method>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            new_per_turn: 4096,
            rate: 0,
            queue_high: 16_384,
            queue_low: 4096,
            txn_high: 900_000,
            txn_low: 800_000,
            hold: Duration::from_secs(1),
            retry_after: 5,
            methods: vec![Method::Invite, Method::Register],
        }
    }
}

impl Config {
    /// Validates `[overload]` over the defaults.
    pub fn from_section(s: &OverloadSection) -> Result<Self, OverloadError> {
        let d = Self::default();
        let methods = match &s.methods {
            None => d.methods,
            Some(list) => {
                let mut out = Vec::with_capacity(list.len());
                for (j, m) in list.iter().enumerate() {
                    let m = Method::from_bytes(m.as_bytes());
                    if matches!(
                        m,
                        Method::Ack | Method::Cancel | Method::Options | Method::Other
                    ) {
                        return Err(OverloadError::Method(j + 1));
                    }
                    out.push(m);
                }
                out
            }
        };
        let c = Self {
            new_per_turn: s.new_per_turn.unwrap_or(d.new_per_turn),
            rate: s.rate.unwrap_or(d.rate),
            queue_high: s.queue_high.unwrap_or(d.queue_high),
            queue_low: s.queue_low.unwrap_or(d.queue_low),
            txn_high: s.txn_high.unwrap_or(d.txn_high),
            txn_low: s.txn_low.unwrap_or(d.txn_low),
            hold: s.hold.map_or(d.hold, Duration::from_secs),
            retry_after: s.retry_after.unwrap_or(d.retry_after).max(1),
            methods,
        };
        if c.new_per_turn == 0 || c.queue_low > c.queue_high || c.txn_low > c.txn_high {
            return Err(OverloadError::Watermarks);
        }
        Ok(c)
    }
}

/// How loaded the shard is at the start of a loop turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Load {
    /// Datagrams received and not yet handled (ring backlog, mesh queue).
    pub queue_depth: usize,
    /// Live transactions.
    pub live_transactions: usize,
}

/// Why a request was shed (the `reason` label of
/// `sipedge_proxy_shed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// Over `rate`, and the source over its fair share.
    Rate = 0,
    /// This turn's budget of new transactions spent, source over its share.
    TurnBudget = 1,
    /// Overloaded by the queue or transaction watermarks, source over its share.
    Overloaded = 2,
    /// The hard cap on live transactions (`max_transactions`).
    MaxTransactions = 3,
    /// The mesh to another shard full.
    MeshFull = 4,
}

impl ShedReason {
    /// Every reason, in label order.
    pub const ALL: [Self; 5] = [
        Self::Rate,
        Self::TurnBudget,
        Self::Overloaded,
        Self::MaxTransactions,
        Self::MeshFull,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rate => "rate",
            Self::TurnBudget => "turn_budget",
            Self::Overloaded => "overloaded",
            Self::MaxTransactions => "max_transactions",
            Self::MeshFull => "mesh_full",
        }
    }
}

/// Admission of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go on.
    Accept,
    /// Answer 503 with this Retry-After.
    Reject {
        /// Seconds.
        retry_after: u32,
        /// Why.
        reason: ShedReason,
    },
}

/// What the overload guard did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverloadCounters {
    /// Requests refused with 503.
    pub rejected: u64,
    /// Times the shard entered overload.
    pub episodes: u64,
}

impl OverloadCounters {
    /// Sums another shard's counters into these.
    pub fn add(&mut self, other: &Self) {
        self.rejected += other.rejected;
        self.episodes += other.episodes;
    }

    /// Metric names and values.
    pub fn pairs(&self) -> [(&'static str, u64); 2] {
        [
            ("sipedge_overload_rejected_total", self.rejected),
            ("sipedge_overload_episodes_total", self.episodes),
        ]
    }
}

/// Counters per sketch row.
const SLOTS: usize = 2048;
/// The fair-share window.
const WINDOW: Duration = Duration::from_secs(1);
/// Token units per admission (tokens are kept in millionths).
const UNIT: i64 = 1_000_000;

/// Admissions per source in the current window: a count-min sketch.
#[derive(Debug, Clone)]
struct Sources {
    counts: Vec<u32>,
    window: u64,
    /// Sources seen (first admission) in this window and the previous one.
    active_now: u32,
    active_prev: u32,
    /// Admissions in this window and the previous one.
    admitted_now: u32,
    admitted_prev: u32,
    seed: u64,
}

impl Sources {
    fn new(seed: u64) -> Self {
        Self {
            counts: vec![0; 2 * SLOTS],
            window: 0,
            active_now: 0,
            active_prev: 0,
            admitted_now: 0,
            admitted_prev: 0,
            seed,
        }
    }

    fn roll(&mut self, now: Instant) {
        let w = now.as_micros() / WINDOW.as_micros().max(1);
        if w == self.window {
            return;
        }
        let (active, admitted) = if w == self.window + 1 {
            (self.active_now, self.admitted_now)
        } else {
            (0, 0)
        };
        self.active_prev = active;
        self.admitted_prev = admitted;
        self.active_now = 0;
        self.admitted_now = 0;
        self.window = w;
        self.counts.iter_mut().for_each(|c| *c = 0);
    }

    fn slots(&self, ip: IpAddr) -> (usize, usize) {
        let h = match ip {
            IpAddr::V4(a) => hash_bytes(self.seed, &a.octets()),
            IpAddr::V6(a) => hash_bytes(self.seed, &a.octets()),
        };
        let a = (h as usize) % SLOTS;
        let b = SLOTS + ((h >> 32) as usize) % SLOTS;
        (a, b)
    }

    /// This window's admissions of `ip` (never fewer than the truth).
    fn count(&self, ip: IpAddr) -> u32 {
        let (a, b) = self.slots(ip);
        let x = self.counts.get(a).copied().unwrap_or(0);
        let y = self.counts.get(b).copied().unwrap_or(0);
        x.min(y)
    }

    fn admitted(&mut self, ip: IpAddr) {
        if self.count(ip) == 0 {
            self.active_now = self.active_now.saturating_add(1);
        }
        self.admitted_now = self.admitted_now.saturating_add(1);
        let (a, b) = self.slots(ip);
        for i in [a, b] {
            if let Some(c) = self.counts.get_mut(i) {
                *c = c.saturating_add(1);
            }
        }
    }

    /// A source's share of `capacity` admissions per window.
    fn share(&self, capacity: u32) -> u32 {
        let active = self.active_prev.max(self.active_now).max(1);
        capacity / active
    }
}

/// One shard's overload guard.
#[derive(Debug, Clone)]
pub struct Overload {
    cfg: Config,
    /// Bit set of shed methods.
    shed: u16,
    overloaded_since: Option<Instant>,
    budget: u32,
    /// Tokens of `rate`, in millionths, and when they were last topped up;
    /// negative after fair-share admissions beyond the rate (at most a
    /// second of it), so the heavy sources find none.
    tokens: i64,
    topped: Instant,
    sources: Sources,
    jitter: u64,
    counters: OverloadCounters,
}

fn bit(m: Method) -> u16 {
    // Discriminants are below 16 (15 variants).
    1u16 << (m as u16 & 15)
}

impl Overload {
    /// A guard in the normal state.
    pub fn new(cfg: Config, seed: u64) -> Self {
        Self {
            shed: cfg.methods.iter().fold(0, |acc, &m| acc | bit(m)),
            overloaded_since: None,
            budget: cfg.new_per_turn,
            tokens: i64::from(Self::burst(&cfg)) * UNIT,
            topped: Instant::ZERO,
            sources: Sources::new(seed.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15),
            jitter: seed | 1,
            cfg,
            counters: OverloadCounters::default(),
        }
    }

    /// Tokens a quiet shard may spend at once: a fifth of a second of `rate`.
    fn burst(cfg: &Config) -> u32 {
        (cfg.rate / 5).max(1)
    }

    /// Once per loop turn: a new budget, and the state from the load.
    pub fn handle_turn(&mut self, now: Instant, load: Load) {
        self.budget = self.cfg.new_per_turn;
        let high =
            load.queue_depth >= self.cfg.queue_high || load.live_transactions >= self.cfg.txn_high;
        let low =
            load.queue_depth <= self.cfg.queue_low && load.live_transactions <= self.cfg.txn_low;
        match self.overloaded_since {
            None if high => {
                self.overloaded_since = Some(now);
                self.counters.episodes += 1;
            }
            Some(since) if low && now.saturating_since(since) >= self.cfg.hold => {
                self.overloaded_since = None;
            }
            _ => {}
        }
    }

    /// Whether the shard is in overload.
    pub fn is_overloaded(&self) -> bool {
        self.overloaded_since.is_some()
    }

    /// Takes a token of `rate`; true when there was one (or no rate is set).
    fn token(&mut self, now: Instant) -> bool {
        if self.cfg.rate == 0 {
            return true;
        }
        let elapsed = now.saturating_since(self.topped).as_micros();
        self.topped = now;
        let cap = i64::from(Self::burst(&self.cfg)) * UNIT;
        let earned =
            i64::try_from(elapsed.saturating_mul(u64::from(self.cfg.rate))).unwrap_or(i64::MAX);
        self.tokens = self.tokens.saturating_add(earned).min(cap);
        if self.tokens >= UNIT {
            self.tokens -= UNIT;
            true
        } else {
            false
        }
    }

    /// Admission of one request from `src`: `in_dialog` for a request with a To tag.
    pub fn admit(
        &mut self,
        now: Instant,
        method: Method,
        in_dialog: bool,
        src: IpAddr,
    ) -> Admission {
        if in_dialog || self.shed & bit(method) == 0 || method == Method::Other {
            return Admission::Accept;
        }
        self.sources.roll(now);
        let contended = if self.overloaded_since.is_some() {
            Some(ShedReason::Overloaded)
        } else if self.budget == 0 {
            Some(ShedReason::TurnBudget)
        } else if !self.token(now) {
            Some(ShedReason::Rate)
        } else {
            None
        };
        let Some(reason) = contended else {
            self.budget = self.budget.saturating_sub(1);
            self.sources.admitted(src);
            return Admission::Accept;
        };
        // Contended: a source below its fair share still gets in.
        let capacity = if self.cfg.rate > 0 {
            self.cfg.rate
        } else {
            self.sources.admitted_prev
        };
        if self.sources.count(src) < self.sources.share(capacity) {
            self.sources.admitted(src);
            if self.cfg.rate > 0 {
                let debt = -i64::from(self.cfg.rate) * UNIT;
                self.tokens = self.tokens.saturating_sub(UNIT).max(debt);
            }
            return Admission::Accept;
        }
        self.counters.rejected += 1;
        Admission::Reject {
            retry_after: self.retry_after(),
            reason,
        }
    }

    /// Retry-After: the base value plus a deterministic jitter of up to half.
    fn retry_after(&mut self) -> u32 {
        // xorshift64.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let base = self.cfg.retry_after;
        let extra = (self.jitter % (u64::from(base / 2) + 1)) as u32;
        base.saturating_add(extra)
    }

    /// What it did.
    pub fn counters(&self) -> &OverloadCounters {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_micros(ms * 1_000)
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn cfg() -> Config {
        Config {
            new_per_turn: 3,
            rate: 0,
            queue_high: 100,
            queue_low: 10,
            txn_high: 1000,
            txn_low: 500,
            hold: Duration::from_millis(500),
            retry_after: 4,
            methods: vec![Method::Invite, Method::Register],
        }
    }

    fn rejected(a: Admission) -> bool {
        matches!(a, Admission::Reject { retry_after, .. } if (4..=6).contains(&retry_after))
    }

    #[test]
    fn budget_per_turn() {
        let mut o = Overload::new(cfg(), 7);
        o.handle_turn(at(0), Load::default());
        for _ in 0..3 {
            assert_eq!(
                o.admit(at(0), Method::Invite, false, ip(1)),
                Admission::Accept
            );
        }
        assert!(rejected(o.admit(at(0), Method::Register, false, ip(1))));
        // Other work goes on: in-dialog, OPTIONS, BYE, ACK, CANCEL.
        assert_eq!(
            o.admit(at(0), Method::Invite, true, ip(1)),
            Admission::Accept
        );
        for m in [
            Method::Options,
            Method::Bye,
            Method::Ack,
            Method::Cancel,
            Method::Message,
            Method::Other,
        ] {
            assert_eq!(o.admit(at(0), m, false, ip(1)), Admission::Accept, "{m:?}");
        }
        o.handle_turn(at(1), Load::default());
        assert_eq!(
            o.admit(at(1), Method::Invite, false, ip(1)),
            Admission::Accept
        );
        assert_eq!(o.counters().rejected, 1);
        assert!(!o.is_overloaded());
    }

    #[test]
    fn queue_depth_with_hysteresis() {
        let mut o = Overload::new(cfg(), 7);
        o.handle_turn(
            at(0),
            Load {
                queue_depth: 150,
                live_transactions: 0,
            },
        );
        assert!(o.is_overloaded());
        assert!(rejected(o.admit(at(0), Method::Invite, false, ip(1))));
        assert_eq!(
            o.admit(at(0), Method::Options, false, ip(1)),
            Admission::Accept
        );
        // Between the watermarks: still overloaded.
        o.handle_turn(
            at(600),
            Load {
                queue_depth: 50,
                live_transactions: 0,
            },
        );
        assert!(o.is_overloaded());
        // Low, but the hold is not over: still overloaded.
        let mut p = Overload::new(cfg(), 7);
        p.handle_turn(
            at(0),
            Load {
                queue_depth: 150,
                live_transactions: 0,
            },
        );
        p.handle_turn(
            at(100),
            Load {
                queue_depth: 0,
                live_transactions: 0,
            },
        );
        assert!(p.is_overloaded());
        // Low and the hold over: normal again.
        o.handle_turn(
            at(700),
            Load {
                queue_depth: 5,
                live_transactions: 0,
            },
        );
        assert!(!o.is_overloaded());
        assert_eq!(
            o.admit(at(700), Method::Invite, false, ip(1)),
            Admission::Accept
        );
        // Live transactions are a signal too.
        o.handle_turn(
            at(800),
            Load {
                queue_depth: 0,
                live_transactions: 1000,
            },
        );
        assert!(o.is_overloaded());
        assert_eq!(o.counters().episodes, 2);
        // The jitter spreads Retry-After over 4..=6.
        let mut seen = [false; 7];
        for _ in 0..100 {
            if let Admission::Reject { retry_after, .. } =
                o.admit(at(800), Method::Register, false, ip(1))
            {
                seen[retry_after as usize] = true;
            }
        }
        assert_eq!(&seen[4..], &[true, true, true]);
    }

    #[test]
    fn rate_spares_the_light_sources() {
        // Capacity 100/s; four heavy sources offer 120/s each, one light
        // source 10/s: 5× the capacity. Over 10 s the light one is always
        // admitted, the heavy ones share what is left, the total stays near
        // the capacity, and what is shed is counted as `Rate`.
        let mut o = Overload::new(
            Config {
                rate: 100,
                new_per_turn: 1000,
                ..cfg()
            },
            11,
        );
        let (mut light, mut heavy, mut shed_rate) = (0u32, 0u32, 0u32);
        for ms in 0..10_000u64 {
            o.handle_turn(at(ms), Load::default());
            if ms % 100 == 0 {
                assert_eq!(
                    o.admit(at(ms), Method::Invite, false, ip(200)),
                    Admission::Accept
                );
                light += 1;
            }
            // 480/s: one of the heavy sources every ~2 ms.
            if ms % 25 < 12 {
                let h = ip(1 + (ms % 4) as u8);
                match o.admit(at(ms), Method::Invite, false, h) {
                    Admission::Accept => heavy += 1,
                    Admission::Reject { reason, .. } => {
                        assert_eq!(reason, ShedReason::Rate);
                        shed_rate += 1;
                    }
                }
            }
        }
        assert_eq!(light, 100);
        assert!((800..=1100).contains(&heavy), "heavy admitted {heavy}");
        assert!(shed_rate > 3500, "shed {shed_rate}");
        // In-dialog requests and OPTIONS are never shed, even now.
        assert_eq!(
            o.admit(at(10_000), Method::Invite, true, ip(1)),
            Admission::Accept
        );
        assert_eq!(
            o.admit(at(10_000), Method::Options, false, ip(1)),
            Admission::Accept
        );
    }

    #[test]
    fn overloaded_shares_what_was_carried() {
        // No rate: in overload, a source that was not among the heavy ones
        // still gets its share of what the shard carried the second before.
        let mut o = Overload::new(cfg(), 3);
        for ms in 0..1000u64 {
            o.handle_turn(at(ms), Load::default());
            assert_eq!(
                o.admit(at(ms), Method::Register, false, ip(1)),
                Admission::Accept
            );
            if ms % 10 == 0 {
                assert_eq!(
                    o.admit(at(ms), Method::Register, false, ip(2)),
                    Admission::Accept
                );
            }
        }
        o.handle_turn(
            at(1000),
            Load {
                queue_depth: 0,
                live_transactions: 5000,
            },
        );
        assert!(o.is_overloaded());
        // 1,100 carried by two sources: a share of 550 each in this second.
        let mut first = 0;
        for _ in 0..600 {
            if o.admit(at(1000), Method::Register, false, ip(1)) == Admission::Accept {
                first += 1;
            }
        }
        assert_eq!(first, 550);
        assert!(matches!(
            o.admit(at(1001), Method::Invite, false, ip(1)),
            Admission::Reject {
                reason: ShedReason::Overloaded,
                ..
            }
        ));
        assert_eq!(
            o.admit(at(1001), Method::Invite, false, ip(2)),
            Admission::Accept
        );
    }

    #[test]
    fn config() {
        assert_eq!(
            Config::from_section(&OverloadSection::default()),
            Ok(Config::default())
        );
        let s = OverloadSection {
            methods: Some(vec!["INVITE".into(), "SUBSCRIBE".into(), "OPTIONS".into()]),
            ..OverloadSection::default()
        };
        assert_eq!(Config::from_section(&s), Err(OverloadError::Method(3)));
        let s = OverloadSection {
            queue_low: Some(10),
            queue_high: Some(5),
            ..OverloadSection::default()
        };
        assert_eq!(Config::from_section(&s), Err(OverloadError::Watermarks));
        let s: OverloadSection =
            toml::from_str("new_per_turn = 10\nmethods = [\"INVITE\"]\nretry_after = 2").unwrap();
        let c = Config::from_section(&s).unwrap();
        assert_eq!((c.new_per_turn, c.retry_after, c.methods.len()), (10, 2, 1));
    }
}
