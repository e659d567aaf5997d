//! Overload control for one shard: when the shard falls behind, new
//! INVITE and REGISTER transactions get 503 with Retry-After (RFC 3261
//! §21.5.4; the local behaviour RFC 7339 builds on), while requests inside
//! dialogs, the transactions already in progress, ACK, CANCEL and OPTIONS go
//! on, so calls up finish cleanly and monitoring still sees a live server.
//!
//! ```text
//!  each loop turn: handle_turn(now, Load { queue_depth, live_transactions })
//!     normal ── queue ≥ queue_high or live ≥ txn_high ──► overloaded (for at least `hold`)
//!     overloaded ── queue ≤ queue_low and live ≤ txn_low, `hold` over ──► normal
//!  each request:  admit(now, method, in_dialog)
//!     not a shed method, or in a dialog ─► Accept
//!     overloaded, or this turn's budget of new ones spent ─► Reject { retry_after }
//! ```
//!
//! Why two signals: the queue depth (datagrams waiting in the ring or the
//! mesh) says the shard is behind *now*; the per-turn budget caps the work
//! one turn may start, so a burst is spread over turns instead of
//! starving the responses and retransmissions already queued behind it.
//! Hysteresis (enter high, leave low, minimum hold) keeps the state from
//! flapping every turn. Retry-After is jittered (deterministically, from a
//! seed) so the refused clients do not all come back in the same second.
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

use crate::sip::Method;
use crate::time::{Duration, Instant};

/// `[overload]` as written in the config file.
///
/// ```toml
/// [overload]
/// new_per_turn = 4096        # new INVITE/REGISTER one loop turn may start
/// queue_high = 16384         # datagrams waiting: enter overload at this depth …
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

/// What [`Overload::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Handle the request.
    Accept,
    /// Answer 503 Service Unavailable with `Retry-After: retry_after`.
    Reject {
        /// Seconds for the Retry-After header.
        retry_after: u32,
    },
}

/// Per-shard counters, named after `sipedge_overload_<what>_total`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverloadCounters {
    /// Requests refused with 503.
    pub rejected: u64,
    /// Times the shard entered overload.
    pub episodes: u64,
}

impl OverloadCounters {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Self) {
        self.rejected += other.rejected;
        self.episodes += other.episodes;
    }

    /// (metric name, value) pairs, for export.
    pub fn pairs(&self) -> [(&'static str, u64); 2] {
        [
            ("sipedge_overload_rejected_total", self.rejected),
            ("sipedge_overload_episodes_total", self.episodes),
        ]
    }
}

/// The per-shard overload guard.
#[derive(Debug, Clone)]
pub struct Overload {
    cfg: Config,
    /// Bitset of the shed methods.
    shed: u16,
    overloaded_since: Option<Instant>,
    budget: u32,
    jitter: u64,
    counters: OverloadCounters,
}

fn bit(m: Method) -> u16 {
    // Discriminants are below 16 (15 variants).
    1u16 << (m as u16 & 15)
}

impl Overload {
    /// A guard with `cfg`; `seed` drives the Retry-After jitter.
    pub fn new(cfg: Config, seed: u64) -> Self {
        Self {
            shed: cfg.methods.iter().fold(0, |acc, &m| acc | bit(m)),
            overloaded_since: None,
            budget: cfg.new_per_turn,
            jitter: seed | 1,
            cfg,
            counters: OverloadCounters::default(),
        }
    }

    /// Start of a loop turn: refills the turn's budget and updates the state.
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

    /// True while the shard is in overload.
    pub fn is_overloaded(&self) -> bool {
        self.overloaded_since.is_some()
    }

    /// Decides for a new request of `method` (`in_dialog`: its To has a tag).
    /// Call it only for requests that would start a transaction (not for
    /// retransmissions of live ones).
    pub fn admit(&mut self, now: Instant, method: Method, in_dialog: bool) -> Admission {
        let _ = now;
        if in_dialog || self.shed & bit(method) == 0 || method == Method::Other {
            return Admission::Accept;
        }
        if self.overloaded_since.is_none() && self.budget > 0 {
            self.budget -= 1;
            return Admission::Accept;
        }
        self.counters.rejected += 1;
        // xorshift64: deterministic jitter of up to half the base value.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let base = self.cfg.retry_after;
        let extra = (self.jitter % (u64::from(base / 2) + 1)) as u32;
        Admission::Reject {
            retry_after: base.saturating_add(extra),
        }
    }

    /// The counters.
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

    fn cfg() -> Config {
        Config {
            new_per_turn: 3,
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
        matches!(a, Admission::Reject { retry_after } if (4..=6).contains(&retry_after))
    }

    #[test]
    fn budget_per_turn() {
        let mut o = Overload::new(cfg(), 7);
        o.handle_turn(at(0), Load::default());
        for _ in 0..3 {
            assert_eq!(o.admit(at(0), Method::Invite, false), Admission::Accept);
        }
        assert!(rejected(o.admit(at(0), Method::Register, false)));
        // Other work goes on: in-dialog, OPTIONS, BYE, ACK, CANCEL.
        assert_eq!(o.admit(at(0), Method::Invite, true), Admission::Accept);
        for m in [
            Method::Options,
            Method::Bye,
            Method::Ack,
            Method::Cancel,
            Method::Message,
            Method::Other,
        ] {
            assert_eq!(o.admit(at(0), m, false), Admission::Accept, "{m:?}");
        }
        o.handle_turn(at(1), Load::default());
        assert_eq!(o.admit(at(1), Method::Invite, false), Admission::Accept);
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
        assert!(rejected(o.admit(at(0), Method::Invite, false)));
        assert_eq!(o.admit(at(0), Method::Options, false), Admission::Accept);
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
        assert_eq!(o.admit(at(700), Method::Invite, false), Admission::Accept);
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
            if let Admission::Reject { retry_after } = o.admit(at(800), Method::Register, false) {
                seen[retry_after as usize] = true;
            }
        }
        assert_eq!(&seen[4..], &[true, true, true]);
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
