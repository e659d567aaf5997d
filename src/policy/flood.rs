//! Flood protection: per-source packet rate limits with a ban period, in the
//! manner of Kamailio's pike module, checked before a datagram is parsed.
//!
//! ```text
//!  datagram from ip ─► exempt (trusted peers)? ─ yes ─► Yes
//!     └► key = keyed hash of ip (IPv6: its /64 by default) ─► GCRA: rate/s, burst
//!          within the rate ─► Yes
//!          over it         ─► ban for `ban` ─► Banned (dropped and counted) until it ends
//! ```
//!
//! Memory is a fixed table per shard ([`super::rate::RateTable`], 24 bytes a
//! source): a sender spraying addresses evicts the most forgiven entries
//! (idle or within their rate) first, never a live ban while an unbanned
//! entry remains in its bucket. The key hash is seeded per process, so a
//! sender cannot aim its addresses at one bucket.
//!
//! Why before parsing: a banned source costs a hash and a table probe, not a
//! parse; the caller drops its datagrams unanswered (answering would feed
//! the flood). Why IPv6 by /64: one host usually owns a whole /64, and
//! per-address limits there are a limit on nothing.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use core::net::IpAddr;
use std::collections::BTreeMap;

use serde::Deserialize;

use super::net::{self, NetSet};
use super::rate::{Gcra, Hit, RateTable};
use crate::hash::hash_bytes;
use crate::time::{Duration, Instant};

/// `[flood]` as written in the config file.
///
/// ```toml
/// [flood]
/// rate = 50            # packets per second per source, sustained
/// burst = 100          # packets a quiet source may send at once
/// ban = 60             # seconds a source over its rate is dropped
/// slots = 65536        # sources tracked per shard
/// ipv6_prefix = 64     # IPv6 sources are limited per prefix of this length
/// exempt = ["trusted"] # network set names from [policy] networks, or CIDRs
/// enabled = true
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloodSection {
    /// Sustained packets per second per source.
    pub rate: Option<u32>,
    /// Burst size.
    pub burst: Option<u32>,
    /// Ban period, seconds.
    pub ban: Option<u64>,
    /// Table size per shard.
    pub slots: Option<usize>,
    /// IPv6 prefix length a limit applies to.
    pub ipv6_prefix: Option<u8>,
    /// Sources never limited.
    pub exempt: Option<Vec<String>>,
    /// Off switch.
    pub enabled: Option<bool>,
}

/// A bad `[flood]` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FloodError {
    /// rate or burst is 0.
    #[error("[flood] rate and burst must be > 0")]
    Rate,
    /// ipv6_prefix is not 1–128.
    #[error("[flood] ipv6_prefix must be 1-128")]
    Prefix,
    /// An exempt entry is neither a network set name nor a CIDR (position from 1).
    #[error("[flood] exempt: entry {0} is not a network set name or an address/CIDR")]
    Exempt(usize),
}

/// Validated flood settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Limit enabled.
    pub enabled: bool,
    /// Sustained packets per second.
    pub rate: u32,
    /// Burst.
    pub burst: u32,
    /// Ban period.
    pub ban: Duration,
    /// Sources tracked per shard.
    pub slots: usize,
    /// IPv6 prefix length limited as one source.
    pub ipv6_prefix: u8,
    /// Sources never limited.
    pub exempt: NetSet,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            rate: 50,
            burst: 100,
            ban: Duration::from_secs(60),
            slots: 65_536,
            ipv6_prefix: 64,
            exempt: NetSet::new(),
        }
    }
}

impl Config {
    /// Validates `[flood]`; `networks` are the named sets of `[policy]`.
    pub fn from_section(
        s: &FloodSection,
        networks: &BTreeMap<String, NetSet>,
    ) -> Result<Self, FloodError> {
        let d = Self::default();
        let rate = s.rate.unwrap_or(d.rate);
        let burst = s.burst.unwrap_or(d.burst);
        if rate == 0 || burst == 0 {
            return Err(FloodError::Rate);
        }
        let ipv6_prefix = s.ipv6_prefix.unwrap_or(d.ipv6_prefix);
        if ipv6_prefix == 0 || ipv6_prefix > 128 {
            return Err(FloodError::Prefix);
        }
        let mut exempt = NetSet::new();
        for (j, e) in s.exempt.iter().flatten().enumerate() {
            match networks.get(e) {
                Some(set) => exempt.extend(set),
                None => exempt.add_cidr(e).map_err(|_| FloodError::Exempt(j + 1))?,
            }
        }
        Ok(Self {
            enabled: s.enabled.unwrap_or(true),
            rate,
            burst,
            ban: s.ban.map_or(d.ban, Duration::from_secs),
            slots: s.slots.unwrap_or(d.slots).max(8),
            ipv6_prefix,
            exempt,
        })
    }
}

/// What [`Flood::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Drop the datagram unanswered.
    Banned,
    /// Go on and parse it.
    Yes,
}

/// Per-shard counters, named after `sipedge_flood_<what>_total`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FloodCounters {
    /// Datagrams dropped because their source was banned (or went over its rate).
    pub dropped: u64,
    /// Bans started.
    pub bans: u64,
    /// Sources evicted from a full table bucket.
    pub evictions: u64,
}

impl FloodCounters {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Self) {
        self.dropped += other.dropped;
        self.bans += other.bans;
        self.evictions += other.evictions;
    }

    /// (metric name, value) pairs, for export.
    pub fn pairs(&self) -> [(&'static str, u64); 3] {
        [
            ("sipedge_flood_dropped_total", self.dropped),
            ("sipedge_flood_bans_total", self.bans),
            ("sipedge_flood_evictions_total", self.evictions),
        ]
    }
}

/// The per-shard flood limiter.
#[derive(Debug, Clone)]
pub struct Flood {
    enabled: bool,
    table: RateTable,
    exempt: NetSet,
    /// Mask applied to IPv6 sources (not IPv4-mapped ones).
    v6_mask: u128,
    seed: u64,
    counters: FloodCounters,
    /// The latest bans, for the operator (`sipedge ctl flood bans`): the
    /// table keeps hashed keys only. Bounded: the oldest go first.
    recent: std::collections::VecDeque<(IpAddr, Instant)>,
}

/// Bans remembered for listing.
const RECENT_BANS: usize = 1024;

impl Flood {
    /// A limiter with `cfg`, its keys hashed with `seed` (draw it at random).
    pub fn new(cfg: &Config, seed: u64) -> Self {
        let interval = Duration::from_micros((1_000_000 / u64::from(cfg.rate.max(1))).max(1));
        let prefix = u32::from(cfg.ipv6_prefix.clamp(1, 128));
        Self {
            enabled: cfg.enabled,
            table: RateTable::new(
                cfg.slots,
                Gcra {
                    interval,
                    burst: cfg.burst.max(1),
                },
                cfg.ban,
            ),
            exempt: cfg.exempt.clone(),
            v6_mask: if prefix >= 128 {
                u128::MAX
            } else {
                !(u128::MAX >> prefix)
            },
            seed,
            counters: FloodCounters::default(),
            recent: std::collections::VecDeque::new(),
        }
    }

    /// Counts one datagram from `ip` at `now`.
    #[inline]
    pub fn admit(&mut self, now: Instant, ip: IpAddr) -> Admit {
        if !self.enabled {
            return Admit::Yes;
        }
        let k = net::key(ip);
        let is_v4 = k >> 32 == 0xffff;
        let k = if is_v4 { k } else { k & self.v6_mask };
        if !self.exempt.is_empty() && self.exempt.contains(ip) {
            return Admit::Yes;
        }
        let before = self.table.evictions();
        let hit = self.table.hit(now, hash_bytes(self.seed, &k.to_le_bytes()));
        self.counters.evictions += self.table.evictions() - before;
        match hit {
            Hit::Allowed => Admit::Yes,
            Hit::Banned(_) => {
                self.counters.dropped += 1;
                Admit::Banned
            }
            Hit::Limited => {
                self.counters.bans += 1;
                self.counters.dropped += 1;
                if self.recent.len() >= RECENT_BANS {
                    self.recent.pop_front();
                }
                self.recent.push_back((ip, now + self.table.ban()));
                Admit::Banned
            }
        }
    }

    /// True when `ip` is banned now (changes nothing).
    pub fn is_banned(&self, now: Instant, ip: IpAddr) -> bool {
        let k = net::key(ip);
        let k = if k >> 32 == 0xffff {
            k
        } else {
            k & self.v6_mask
        };
        self.enabled
            && self
                .table
                .is_limited(now, hash_bytes(self.seed, &k.to_le_bytes()))
    }

    /// The sources banned at `now` among the latest bans, with the seconds
    /// left of each (a source banned again is listed once).
    pub fn bans(&self, now: Instant) -> Vec<(IpAddr, u64)> {
        let mut out: Vec<(IpAddr, u64)> = Vec::new();
        for &(ip, until) in self.recent.iter().rev() {
            if until > now && self.is_banned(now, ip) && !out.iter().any(|(i, _)| *i == ip) {
                out.push((
                    ip,
                    until.saturating_since(now).as_micros().div_ceil(1_000_000),
                ));
            }
        }
        out
    }

    /// Lifts the ban of `ip` (its rate state starts afresh); true when it was banned.
    pub fn unban(&mut self, now: Instant, ip: IpAddr) -> bool {
        let was = self.is_banned(now, ip);
        let k = net::key(ip);
        let k = if k >> 32 == 0xffff {
            k
        } else {
            k & self.v6_mask
        };
        self.table.forget(hash_bytes(self.seed, &k.to_le_bytes()));
        self.recent.retain(|(i, _)| *i != ip);
        was
    }

    /// Sources the table tracks at most.
    pub fn capacity(&self) -> usize {
        self.table.capacity()
    }

    /// The counters.
    pub fn counters(&self) -> &FloodCounters {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Instant {
        Instant::from_micros(v * 1_000)
    }

    fn flood(rate: u32, burst: u32, ban: u64) -> Flood {
        let cfg = Config {
            rate,
            burst,
            ban: Duration::from_secs(ban),
            slots: 4096,
            ..Config::default()
        };
        Flood::new(&cfg, 0x5eed)
    }

    #[test]
    fn bans_are_listed_and_lifted() {
        let mut f = flood(10, 2, 30);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for _ in 0..5 {
            f.admit(ms(0), a);
        }
        f.admit(ms(0), b);
        assert_eq!(f.bans(ms(1_000)), vec![(a, 29)]);
        assert!(f.unban(ms(1_000), a));
        assert!(f.bans(ms(1_000)).is_empty());
        assert_eq!(
            f.admit(ms(1_000), a),
            Admit::Yes,
            "a fresh bucket after the unban"
        );
        assert!(!f.unban(ms(1_000), b), "b was never banned");
    }

    #[test]
    fn over_the_rate_is_banned_for_the_period() {
        let mut f = flood(10, 20, 30);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        // 100 packets/s from a (10× its rate), 5/s from b, for 10 s.
        let (mut a_ok, mut b_ok) = (0, 0);
        for t in 0..10_000u64 {
            if t % 10 == 0 && f.admit(ms(t), a) == Admit::Yes {
                a_ok += 1;
            }
            if t % 200 == 0 && f.admit(ms(t), b) == Admit::Yes {
                b_ok += 1;
            }
        }
        assert_eq!(b_ok, 50, "the polite source loses nothing");
        // a got its burst plus what trickled in before it went over: then a 30 s ban.
        assert!((20..=25).contains(&a_ok), "{a_ok}");
        assert_eq!(f.counters().bans, 1);
        assert_eq!(f.counters().dropped, 1000 - a_ok);
        assert!(f.is_banned(ms(10_000), a));
        assert!(f.is_banned(ms(29_000), a));
        // After the ban: a fresh bucket.
        assert!(!f.is_banned(ms(40_000), a));
        assert_eq!(f.admit(ms(40_000), a), Admit::Yes);
    }

    #[test]
    fn ipv6_is_limited_per_prefix_and_exempt_nets_are_not_limited() {
        let mut f = flood(1, 2, 10);
        for i in 0..3u16 {
            let ip = IpAddr::V6(core::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, i));
            let want = if i < 2 { Admit::Yes } else { Admit::Banned };
            assert_eq!(f.admit(ms(0), ip), want, "{ip}");
        }
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(f.admit(ms(0), other), Admit::Yes, "another /64");

        let mut nets = BTreeMap::new();
        let mut trusted = NetSet::new();
        trusted.add_cidr("10.0.0.0/8").unwrap();
        nets.insert("trusted".to_owned(), trusted);
        let sec = FloodSection {
            rate: Some(1),
            burst: Some(1),
            exempt: Some(vec!["trusted".into(), "192.0.2.1".into()]),
            ..FloodSection::default()
        };
        let mut f = Flood::new(&Config::from_section(&sec, &nets).unwrap(), 1);
        for _ in 0..100 {
            assert_eq!(f.admit(ms(0), "10.9.9.9".parse().unwrap()), Admit::Yes);
            assert_eq!(f.admit(ms(0), "192.0.2.1".parse().unwrap()), Admit::Yes);
        }
        assert_eq!(f.admit(ms(0), "192.0.2.2".parse().unwrap()), Admit::Yes);
        assert_eq!(f.admit(ms(0), "192.0.2.2".parse().unwrap()), Admit::Banned);
        let bad = FloodSection {
            exempt: Some(vec!["nope".into()]),
            ..FloodSection::default()
        };
        assert_eq!(
            Config::from_section(&bad, &nets),
            Err(FloodError::Exempt(1))
        );
        let zero = FloodSection {
            rate: Some(0),
            ..FloodSection::default()
        };
        assert_eq!(Config::from_section(&zero, &nets), Err(FloodError::Rate));
    }

    #[test]
    fn memory_is_flat_under_a_spray_of_sources() {
        let mut f = flood(5, 5, 60);
        let cap = f.capacity();
        let bad: IpAddr = "203.0.113.9".parse().unwrap();
        for _ in 0..6 {
            f.admit(ms(0), bad);
        }
        assert!(f.is_banned(ms(0), bad));
        // A million spoofed sources, one packet each.
        for i in 0..1_000_000u32 {
            f.admit(ms(1), IpAddr::V4(i.into()));
        }
        assert_eq!(f.capacity(), cap);
        assert!(f.counters().evictions > 0);
        assert!(
            f.is_banned(ms(2), bad),
            "bans outlive the churn of polite sources"
        );
        let off = Flood::new(
            &Config {
                enabled: false,
                ..Config::default()
            },
            0,
        );
        assert!(!off.is_banned(ms(0), bad));
    }
}
