//! Dispatcher sets: pools of gateways or trunks a request is spread over
//! (what Kamailio's `dispatcher` and OpenSIPS's `load_balancer` do), with
//! health probes, serial failover and exact active-call counts. Sans-IO:
//! the proxy asks it to choose, tells it what happened, and sends the
//! OPTIONS probes it asks for as the edge's own client transactions.
//!
//! ```text
//!  request for a set's domain ─► select(set, key, tried) ─► a destination (or none: 503)
//!     fork answered 408 / 5xx (503: down for its Retry-After) ─► select again, next one
//!  INVITE forwarded ─► load +1 ─► non-2xx final ─► load −1
//!                                └ 2xx ─► a dialog ─► BYE (either side) or call_timeout ─► load −1
//!  every probe_interval: OPTIONS to each destination ─► answered (not 408/5xx) = alive
//!     active ──failures_down probes failed──► down ──a probe answered──► probing
//!     probing ──successes_up answered in a row──► active   probing ──failed──► down
//! ```
//!
//! States: `active` destinations get new calls; `probing` and `down` ones
//! get none (only probes). A destination answering 503 with Retry-After
//! is down until that time, then probing. One dispatcher per shard:
//! probes, states and loads are the shard's own (each shard probes every
//! destination; the control channel and metrics sum the loads).

use core::net::SocketAddr;
use std::collections::{HashMap, VecDeque};

use crate::time::{Duration, Instant};
use crate::transport::Transport;

/// How a set chooses among its active destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// In turn.
    RoundRobin,
    /// In turn, each as often as its weight (smooth weighted round-robin).
    Weighted,
    /// By a hash of the request (consistent: rendezvous hashing, so a
    /// destination going down moves only its own calls).
    Hash(HashKey),
    /// The lowest `priority` value first; the others only when it is out.
    Priority,
    /// The fewest calls in progress (ties: the longest idle, then in turn).
    LeastLoaded,
    /// The one idle the longest (no call in progress, longest since its
    /// last call ended); when all are busy, the least loaded.
    LongestIdle,
    /// Every one at once (a hunt group's ring-all).
    All,
}

/// What [`Algorithm::Hash`] hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKey {
    /// The Call-ID.
    CallId,
    /// The From URI's user.
    FromUser,
    /// The Request-URI's user.
    RuriUser,
}

/// One destination of a set, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestConfig {
    /// Its SIP URI as written (for the control channel and logs).
    pub uri: String,
    /// Where requests go.
    pub addr: SocketAddr,
    /// Over which transport.
    pub transport: Transport,
    /// Share under [`Algorithm::Weighted`] (≥ 1).
    pub weight: u32,
    /// Order under [`Algorithm::Priority`] (lower first).
    pub priority: u32,
    /// Most calls in progress through this shard; 0: no limit.
    pub max_load: u32,
}

/// One set, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetConfig {
    /// Its name.
    pub name: String,
    /// Request-URI domains (lower case) whose requests use the set.
    pub domains: Vec<String>,
    /// The destinations, in order.
    pub dests: Vec<DestConfig>,
    /// How it chooses.
    pub algorithm: Algorithm,
    /// Between two probes of a destination; zero: no probes.
    pub probe_interval: Duration,
    /// A probe not answered within this failed.
    pub probe_timeout: Duration,
    /// Probes failed in a row that take an active destination down.
    pub failures_down: u32,
    /// Probes answered in a row that bring a probing destination back.
    pub successes_up: u32,
    /// Most destinations one request tries (serial failover).
    pub attempts: u32,
    /// A call in progress longer than this is counted as ended (a BYE lost).
    pub call_timeout: Duration,
    /// A destination that has not answered a request at all (not even 100
    /// Trying) by then failed it (408): the request moves on. Zero: only
    /// the transaction timers (Timer B/F, 32 s).
    pub fork_timeout: Duration,
    /// A hunt group: its members are `dests` (`uri` their AoRs, reached
    /// through the location service), not gateways.
    pub group: Option<GroupConfig>,
}

/// What makes a set a hunt group (`[[group]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// The group's own AoR key (`name@domain`): calls to it ring a member.
    pub aor: String,
    /// Ringing a member longer than this without an answer: the next one.
    pub ring_timeout: Duration,
    /// The answer when nobody is free or nobody answered (486 or 480).
    pub nobody: u16,
}

impl SetConfig {
    /// The AoR key of `uri` (`sip:user@Host` → `user@host`), for members.
    pub fn aor_key(uri: &str) -> String {
        let rest = uri
            .strip_prefix("sip:")
            .or_else(|| uri.strip_prefix("sips:"))
            .unwrap_or(uri);
        let rest = rest.split([';', '?', '>']).next().unwrap_or(rest);
        match rest.split_once('@') {
            Some((u, h)) => format!("{u}@{}", h.to_ascii_lowercase()),
            None => rest.to_ascii_lowercase(),
        }
    }
}

/// A destination's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Gets new calls.
    Active,
    /// Answering probes again, not yet trusted with calls.
    Probing,
    /// Gets no calls.
    Down,
}

impl State {
    /// Its name in the control channel and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Probing => "probing",
            Self::Down => "down",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "probing" => Some(Self::Probing),
            "down" => Some(Self::Down),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Dest {
    state: State,
    /// Probes (or transport timeouts) failed in a row.
    fails: u32,
    /// Probes answered in a row (while probing).
    oks: u32,
    /// Calls in progress through this shard.
    load: u32,
    /// Down until then (a 503's Retry-After), then probing.
    down_until: Option<Instant>,
    /// The probe in flight: (sequence, deadline).
    probe: Option<(u32, Instant)>,
    next_probe: Instant,
    /// Smooth weighted round-robin's running weight.
    current: i64,
    /// Calls forwarded to it (attempts).
    calls: u64,
    /// Calls it failed (408 / 5xx / no answer), each moved on.
    failures: u64,
    /// When its last call in progress ended (or the start).
    idle_since: Instant,
}

/// One set's live state.
#[derive(Debug, Clone)]
struct Set {
    cfg: SetConfig,
    dests: Vec<Dest>,
    cursor: usize,
}

/// A destination as the control channel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestStatus {
    /// The set's name.
    pub set: String,
    /// The destination's URI.
    pub uri: String,
    /// Its state.
    pub state: State,
    /// Calls in progress.
    pub load: u32,
    /// Calls forwarded to it.
    pub calls: u64,
    /// Calls it failed.
    pub failures: u64,
}

/// A probe the proxy must send: OPTIONS to `addr` over `transport`, its
/// outcome reported with `token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// What [`Dispatcher::probe_outcome`] names it by.
    pub token: u64,
    /// Where.
    pub addr: SocketAddr,
    /// Over which transport.
    pub transport: Transport,
    /// The set and destination (for the Request-URI).
    pub set: u16,
    /// The destination.
    pub dest: u16,
}

/// A call in progress after its 2xx: which destination carries it.
#[derive(Debug, Clone, Copy)]
struct Dialog {
    set: u16,
    dest: u16,
    expires: Instant,
}

/// Most dialogs tracked per shard; beyond it a 2xx'd call's load is
/// released at once (counted in [`Dispatcher::untracked`]).
const MAX_DIALOGS: usize = 1 << 20;

/// The dispatcher of one shard.
#[derive(Debug, Default)]
pub struct Dispatcher {
    sets: Vec<Set>,
    probes: VecDeque<Probe>,
    seq: u32,
    dialogs: HashMap<u64, Dialog>,
    /// (expiry, Call-ID hash) in arrival order (one timeout per set, so
    /// nearly in expiry order); stale entries are skipped.
    expiries: VecDeque<(Instant, u64)>,
    /// 2xx'd calls not tracked (table full).
    pub untracked: u64,
    /// Requests moved to another destination after a failure.
    pub failovers: u64,
    /// Hunt groups by their AoR key.
    groups: HashMap<String, u16>,
    /// Hunt-group members by AoR key: (set, member) of their first group.
    members: HashMap<String, (u16, u16)>,
    /// The time of the proxy's current turn.
    clock: Instant,
    /// Hunt-group members' publications: AoR key → (entity tag, summary).
    presence: HashMap<String, Vec<Publication>>,
}

/// One publication of a member: (entity tag, summary label).
type Publication = (Box<[u8]>, &'static str);

/// The tag of probe tokens among the edge's originated requests.
pub const PROBE_TOKEN: u64 = 1 << 63;

impl Dispatcher {
    /// The sets of `cfgs`, every destination active, first probes spread
    /// over the first interval from `now`.
    pub fn new(cfgs: &[SetConfig], now: Instant) -> Self {
        let sets = cfgs
            .iter()
            .map(|c| {
                let n = c.dests.len().max(1) as u64;
                Set {
                    dests: (0..c.dests.len())
                        .map(|i| Dest {
                            state: State::Active,
                            fails: 0,
                            oks: 0,
                            load: 0,
                            down_until: None,
                            probe: None,
                            next_probe: now
                                + Duration::from_micros(
                                    c.probe_interval.as_micros() * (i as u64 + 1) / n,
                                ),
                            current: 0,
                            calls: 0,
                            failures: 0,
                            idle_since: now,
                        })
                        .collect(),
                    cfg: c.clone(),
                    cursor: 0,
                }
            })
            .collect::<Vec<Set>>();
        let mut groups = HashMap::new();
        let mut members = HashMap::new();
        for (si, s) in sets.iter().enumerate() {
            let (Some(g), Ok(si)) = (&s.cfg.group, u16::try_from(si)) else {
                continue;
            };
            groups.insert(g.aor.clone(), si);
            for (di, d) in s.cfg.dests.iter().enumerate() {
                if let Ok(di) = u16::try_from(di) {
                    members
                        .entry(SetConfig::aor_key(&d.uri))
                        .or_insert((si, di));
                }
            }
        }
        Self {
            sets,
            groups,
            members,
            clock: now,
            ..Self::default()
        }
    }

    /// The proxy's clock, once per turn (for members' idle times).
    pub fn set_now(&mut self, now: Instant) {
        self.clock = now;
    }

    /// The hunt group whose own AoR key is `aor`.
    pub fn group_for(&self, aor: &[u8]) -> Option<u16> {
        if self.groups.is_empty() {
            return None; // no hashing per INVITE on an edge without groups
        }
        self.groups.get(core::str::from_utf8(aor).ok()?).copied()
    }

    /// The (group, member) a served user's AoR key is a member of (its first group).
    pub fn member_of(&self, aor: &[u8]) -> Option<(u16, u16)> {
        if self.members.is_empty() {
            return None;
        }
        self.members.get(core::str::from_utf8(aor).ok()?).copied()
    }

    /// True when hunt groups have members (whose presence matters).
    pub fn has_members(&self) -> bool {
        !self.members.is_empty()
    }

    /// A publication of a hunt-group member changed: `label` its summary
    /// (`online`, `busy`, `away`, `offline`), `None` when it is gone.
    pub fn member_presence(&mut self, aor: &[u8], etag: &[u8], label: Option<&'static str>) {
        let Ok(aor) = core::str::from_utf8(aor) else {
            return;
        };
        if !self.members.contains_key(aor) {
            return;
        }
        let pubs = self.presence.entry(aor.to_owned()).or_default();
        pubs.retain(|(e, _)| &e[..] != etag);
        if let Some(l) = label {
            pubs.push((etag.into(), l));
        }
        if pubs.is_empty() {
            self.presence.remove(aor);
        }
    }

    /// A hunt-group member may be rung as far as presence says: it
    /// published nothing, or one of its devices says `online`.
    pub fn available(&self, set: u16, dest: u16) -> bool {
        let Some(d) = self.dest(set, dest) else {
            return false;
        };
        self.presence
            .get(&SetConfig::aor_key(&d.uri))
            .is_none_or(|pubs| pubs.iter().any(|(_, l)| *l == "online"))
    }

    /// True when set `set` is a hunt group.
    pub fn is_group(&self, set: u16) -> bool {
        self.config(set).is_some_and(|c| c.group.is_some())
    }

    /// True when no set is configured.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// The set serving Request-URI host `host` (compared case-insensitively).
    pub fn set_for_domain(&self, host: &[u8]) -> Option<u16> {
        let host = host.strip_suffix(b".").unwrap_or(host);
        self.sets
            .iter()
            .position(|s| {
                s.cfg.group.is_none()
                    && s.cfg
                        .domains
                        .iter()
                        .any(|d| d.as_bytes().eq_ignore_ascii_case(host))
            })
            .and_then(|i| u16::try_from(i).ok())
    }

    /// Set `set`'s configuration.
    pub fn config(&self, set: u16) -> Option<&SetConfig> {
        self.sets.get(usize::from(set)).map(|s| &s.cfg)
    }

    /// A destination's configuration.
    pub fn dest(&self, set: u16, dest: u16) -> Option<&DestConfig> {
        self.config(set)?.dests.get(usize::from(dest))
    }

    /// Chooses a destination of `set` for a request whose hash key hashes
    /// to `key`, none of `tried`: an active one under its limit, by the
    /// set's algorithm. `None`: nobody can take it.
    pub fn select(&mut self, set: u16, key: u64, tried: &[u16]) -> Option<u16> {
        self.select_where(set, key, tried, |_| true)
    }

    /// [`Dispatcher::select`] among the destinations `usable` also accepts
    /// (a hunt group: the members registered now).
    pub fn select_where(
        &mut self,
        set: u16,
        key: u64,
        tried: &[u16],
        usable: impl Fn(usize) -> bool,
    ) -> Option<u16> {
        let s = self.sets.get_mut(usize::from(set))?;
        let eligible = |i: usize, d: &Dest, c: &DestConfig| {
            d.state == State::Active
                && (c.max_load == 0 || d.load < c.max_load)
                && !tried.iter().any(|&t| usize::from(t) == i)
                && usable(i)
        };
        let n = s.dests.len();
        let mut pick = None;
        match s.cfg.algorithm {
            Algorithm::RoundRobin => {
                for k in 0..n {
                    let i = (s.cursor + k) % n;
                    if let (Some(d), Some(c)) = (s.dests.get(i), s.cfg.dests.get(i)) {
                        if eligible(i, d, c) {
                            pick = Some(i);
                            s.cursor = (i + 1) % n;
                            break;
                        }
                    }
                }
            }
            Algorithm::Weighted => {
                // Smooth weighted round-robin (as nginx): each eligible one
                // gains its weight, the largest is chosen and pays the total.
                let mut total = 0i64;
                let mut best: Option<(usize, i64)> = None;
                for (i, (d, c)) in s.dests.iter_mut().zip(&s.cfg.dests).enumerate() {
                    if eligible(i, d, c) {
                        d.current += i64::from(c.weight.max(1));
                        total += i64::from(c.weight.max(1));
                        if best.is_none_or(|b| d.current > b.1) {
                            best = Some((i, d.current));
                        }
                    }
                }
                let chosen = best.map(|(i, _)| i);
                if let Some(d) = chosen.and_then(|i| s.dests.get_mut(i)) {
                    d.current -= total;
                }
                return chosen.and_then(|i| u16::try_from(i).ok()).inspect(|&i| {
                    Self::started(s, i);
                });
            }
            Algorithm::Hash(_) => {
                // Rendezvous hashing: the highest score of (key, destination).
                let mut best: Option<(usize, u64)> = None;
                for (i, (d, c)) in s.dests.iter().zip(&s.cfg.dests).enumerate() {
                    if eligible(i, d, c) {
                        let score = crate::hash::hash_bytes(key, c.uri.as_bytes());
                        if best.is_none_or(|b| score > b.1) {
                            best = Some((i, score));
                        }
                    }
                }
                pick = best.map(|b| b.0);
            }
            Algorithm::Priority => {
                let mut best: Option<(usize, u32)> = None;
                for (i, (d, c)) in s.dests.iter().zip(&s.cfg.dests).enumerate() {
                    if eligible(i, d, c) && best.is_none_or(|b| c.priority < b.1) {
                        best = Some((i, c.priority));
                    }
                }
                pick = best.map(|b| b.0);
            }
            Algorithm::LeastLoaded | Algorithm::LongestIdle | Algorithm::All => {
                // (load, idle since): the least loaded, then the one idle the
                // longest; longest-idle is the same order (an idle member has
                // load 0, and among those the oldest idle time wins).
                let mut best: Option<(usize, u32, Instant)> = None;
                for k in 0..n {
                    let i = (s.cursor + k) % n;
                    if let (Some(d), Some(c)) = (s.dests.get(i), s.cfg.dests.get(i)) {
                        if eligible(i, d, c)
                            && best.is_none_or(|b| (d.load, d.idle_since) < (b.1, b.2))
                        {
                            best = Some((i, d.load, d.idle_since));
                        }
                    }
                }
                pick = best.map(|b| b.0);
                if let Some(i) = pick {
                    s.cursor = (i + 1) % n;
                }
            }
        }
        let pick = pick.and_then(|i| u16::try_from(i).ok())?;
        Self::started(s, pick);
        Some(pick)
    }

    fn started(s: &mut Set, i: u16) {
        if let Some(d) = s.dests.get_mut(usize::from(i)) {
            d.calls += 1;
        }
    }

    /// A call (an INVITE) went to `dest`: one more in progress.
    pub fn call_started(&mut self, set: u16, dest: u16) {
        if let Some(d) = self.dest_mut(set, dest) {
            d.load += 1;
        }
    }

    /// A call that went to `dest` ended before it was answered (a non-2xx
    /// final, CANCEL, no answer).
    pub fn call_failed(&mut self, set: u16, dest: u16) {
        let now = self.clock;
        if let Some(d) = self.dest_mut(set, dest) {
            d.load = d.load.saturating_sub(1);
            if d.load == 0 {
                d.idle_since = now;
            }
        }
    }

    /// The call with Call-ID hash `call` was answered 2xx by `dest`: it
    /// stays in progress until [`Dispatcher::dialog_ended`] or its
    /// `call_timeout`. A second 2xx for the same call (forked downstream)
    /// is one call.
    pub fn call_answered(&mut self, now: Instant, set: u16, dest: u16, call: u64) {
        if self.dialogs.contains_key(&call) {
            self.call_failed(set, dest);
            return;
        }
        if self.dialogs.len() >= MAX_DIALOGS {
            self.untracked += 1;
            self.call_failed(set, dest);
            return;
        }
        let timeout = self
            .config(set)
            .map_or(Duration::from_secs(3600), |c| c.call_timeout);
        let expires = now + timeout;
        self.dialogs.insert(call, Dialog { set, dest, expires });
        self.expiries.push_back((expires, call));
    }

    /// The dialog with Call-ID hash `call` ended (a BYE): true when it was
    /// one of ours.
    pub fn dialog_ended(&mut self, call: u64) -> bool {
        match self.dialogs.remove(&call) {
            Some(d) => {
                self.call_failed(d.set, d.dest);
                true
            }
            None => false,
        }
    }

    /// Dialogs tracked (calls answered and in progress).
    pub fn dialogs(&self) -> usize {
        self.dialogs.len()
    }

    /// A request sent to `dest` failed with `code` (408 for no answer at
    /// all): counted; a 503 with `retry_after` seconds takes it down for
    /// that long; a 408 counts like a failed probe.
    pub fn failed(
        &mut self,
        now: Instant,
        set: u16,
        dest: u16,
        code: u16,
        retry_after: Option<u32>,
    ) {
        let down_after = self.config(set).map_or(1, |c| c.failures_down.max(1));
        let Some(d) = self.dest_mut(set, dest) else {
            return;
        };
        d.failures += 1;
        match (code, retry_after) {
            (503, Some(secs)) if secs > 0 => {
                d.state = State::Down;
                d.oks = 0;
                d.down_until = Some(now + Duration::from_secs(u64::from(secs.min(3600))));
            }
            (408, _) => {
                d.fails += 1;
                if d.fails >= down_after && d.state != State::Down {
                    d.state = State::Down;
                    d.oks = 0;
                }
            }
            _ => {}
        }
    }

    /// A request sent to `dest` succeeded (any answer but 408/5xx): the
    /// failed-in-a-row count starts again.
    pub fn succeeded(&mut self, set: u16, dest: u16) {
        if let Some(d) = self.dest_mut(set, dest) {
            d.fails = 0;
        }
    }

    /// An operator sets a destination's state (`sipedge ctl dispatcher
    /// set-state`); false when there is no such destination.
    pub fn set_state(&mut self, set: &str, uri: &str, state: State) -> bool {
        let mut found = false;
        for s in &mut self.sets {
            if s.cfg.name != set {
                continue;
            }
            for (d, c) in s.dests.iter_mut().zip(&s.cfg.dests) {
                if c.uri == uri {
                    d.state = state;
                    d.fails = 0;
                    d.oks = 0;
                    d.down_until = None;
                    found = true;
                }
            }
        }
        found
    }

    /// Every destination's state and counts.
    pub fn status(&self) -> Vec<DestStatus> {
        self.sets
            .iter()
            .flat_map(|s| {
                s.dests.iter().zip(&s.cfg.dests).map(|(d, c)| DestStatus {
                    set: s.cfg.name.clone(),
                    uri: c.uri.clone(),
                    state: d.state,
                    load: d.load,
                    calls: d.calls,
                    failures: d.failures,
                })
            })
            .collect()
    }

    fn dest_mut(&mut self, set: u16, dest: u16) -> Option<&mut Dest> {
        self.sets
            .get_mut(usize::from(set))?
            .dests
            .get_mut(usize::from(dest))
    }

    /// Probes due, probe deadlines passed, 503 holds over, dialogs timed out.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut seq = self.seq;
        for (si, s) in self.sets.iter_mut().enumerate() {
            let (interval, down_after) = (s.cfg.probe_interval, s.cfg.failures_down.max(1));
            for (di, d) in s.dests.iter_mut().enumerate() {
                if d.down_until.is_some_and(|t| t <= now) {
                    d.down_until = None;
                    d.state = State::Probing;
                    d.oks = 0;
                }
                if let Some((_, deadline)) = d.probe {
                    if deadline <= now {
                        d.probe = None;
                        Self::probe_failed(d, down_after);
                    }
                }
                if interval == Duration::ZERO || d.next_probe > now {
                    continue;
                }
                d.next_probe = now + interval;
                if d.probe.is_some() {
                    continue;
                }
                let Some(c) = s.cfg.dests.get(di) else {
                    continue;
                };
                seq = seq.wrapping_add(1);
                d.probe = Some((seq, now + s.cfg.probe_timeout));
                if let (Ok(set), Ok(dest)) = (u16::try_from(si), u16::try_from(di)) {
                    self.probes.push_back(Probe {
                        token: PROBE_TOKEN
                            | (u64::from(set) << 48)
                            | (u64::from(dest) << 32)
                            | u64::from(seq),
                        addr: c.addr,
                        transport: c.transport,
                        set,
                        dest,
                    });
                }
            }
        }
        self.seq = seq;
        while let Some(&(at, call)) = self.expiries.front() {
            if at > now {
                break;
            }
            self.expiries.pop_front();
            if self.dialogs.get(&call).is_some_and(|d| d.expires == at) {
                self.dialog_ended(call);
            }
        }
    }

    fn probe_failed(d: &mut Dest, down_after: u32) {
        d.fails += 1;
        d.oks = 0;
        match d.state {
            State::Active if d.fails >= down_after => d.state = State::Down,
            State::Probing => d.state = State::Down,
            _ => {}
        }
    }

    /// The next probe to send.
    pub fn poll_probe(&mut self) -> Option<Probe> {
        self.probes.pop_front()
    }

    /// A probe's final status (408 when none came).
    pub fn probe_outcome(&mut self, token: u64, status: u16) {
        let set = ((token >> 48) & 0x7fff) as u16;
        let dest = ((token >> 32) & 0xffff) as u16;
        let seq = token as u32;
        let (down_after, up_after) = match self.config(set) {
            Some(c) => (c.failures_down.max(1), c.successes_up.max(1)),
            None => return,
        };
        let Some(d) = self.dest_mut(set, dest) else {
            return;
        };
        if d.probe.is_none_or(|(s, _)| s != seq) {
            return; // answered after its deadline: already counted as failed
        }
        d.probe = None;
        if status == 408 || (500..600).contains(&status) {
            Self::probe_failed(d, down_after);
            return;
        }
        d.fails = 0;
        match d.state {
            State::Down if d.down_until.is_none() => {
                d.state = State::Probing;
                d.oks = 1;
                if d.oks >= up_after {
                    d.state = State::Active;
                }
            }
            State::Probing => {
                d.oks += 1;
                if d.oks >= up_after {
                    d.state = State::Active;
                }
            }
            _ => {}
        }
    }

    /// When [`Dispatcher::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = self.expiries.front().map(|e| e.0);
        let mut min = |t: Instant| {
            next = Some(next.map_or(t, |n| n.min(t)));
        };
        for s in &self.sets {
            for d in &s.dests {
                if s.cfg.probe_interval != Duration::ZERO {
                    min(d.next_probe);
                }
                if let Some((_, t)) = d.probe {
                    min(t);
                }
                if let Some(t) = d.down_until {
                    min(t);
                }
            }
        }
        next
    }
}

#[cfg(test)]
mod tests;
