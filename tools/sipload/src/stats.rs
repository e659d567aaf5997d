//! Counters and latency histograms: owned by each worker (no sharing on the
//! hot path), merged once at the end into the [`Report`], printed as a table
//! or as one JSON object whose field names are stable (README "JSON report").
//!
//! Progress lines read a few relaxed atomics each worker publishes once per
//! loop turn ([`Progress`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency measured per transaction type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// BYE sent → 200 received.
    Bye,
    /// First INVITE sent → 200 received (includes an auth round trip).
    CallSetup,
    /// MESSAGE → 200.
    Message,
    /// OPTIONS → 200.
    Options,
    /// Initial PUBLISH (no SIP-If-Match) → 200.
    Publish,
    /// Modifying PUBLISH (SIP-If-Match) → 200.
    PublishModify,
    /// First INVITE sent → first 180 received.
    Ringing,
    /// First REGISTER sent → 200 (includes an auth round trip).
    Register,
    /// SUBSCRIBE → 200.
    Subscribe,
}

impl Kind {
    /// How many kinds.
    pub const COUNT: usize = 9;
    /// All, in report order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::CallSetup,
        Self::Ringing,
        Self::Bye,
        Self::Register,
        Self::Message,
        Self::Options,
        Self::Publish,
        Self::PublishModify,
        Self::Subscribe,
    ];

    /// Name in reports.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Bye => "bye",
            Self::CallSetup => "call_setup",
            Self::Message => "message",
            Self::Options => "options",
            Self::Publish => "publish",
            Self::PublishModify => "publish_modify",
            Self::Ringing => "ringing",
            Self::Register => "register",
            Self::Subscribe => "subscribe",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::CallSetup => 0,
            Self::Ringing => 1,
            Self::Bye => 2,
            Self::Register => 3,
            Self::Message => 4,
            Self::Options => 5,
            Self::Publish => 6,
            Self::PublishModify => 7,
            Self::Subscribe => 8,
        }
    }
}

/// NOTIFYs received in held subscriptions (scenario subscribe).
#[derive(Debug, Clone, Default)]
pub struct NotifyStats {
    /// The first NOTIFY of each subscription (the state when it began).
    pub initial: u64,
    /// NOTIFYs after a subscription's first: state changes (a PUBLISH's fan-out).
    pub updates: u64,
    /// NOTIFYs with `Subscription-State: terminated` (the subscription ends).
    pub terminated: u64,
    /// NOTIFYs received again (same CSeq as the last one in the subscription).
    pub retransmissions: u64,
    /// NOTIFYs for no subscription of ours (answered 481).
    pub stray: u64,
    /// Requests other than NOTIFY (answered 405).
    pub other_requests: u64,
    /// Arrival of the last initial NOTIFY, µs since the run's epoch.
    pub last_initial_us: Option<u64>,
    /// Arrival of the first update, µs since the epoch.
    pub first_update_us: Option<u64>,
    /// Arrival of the last update, µs since the epoch.
    pub last_update_us: Option<u64>,
    /// Subscriptions established and not terminated at the end.
    pub active: u64,
}

impl NotifyStats {
    /// Counts a NOTIFY that arrived at `now`; `first`: the subscription's first.
    pub fn record(&mut self, now: u64, first: bool) {
        if first {
            self.initial += 1;
            self.last_initial_us = Some(now);
        } else {
            self.updates += 1;
            self.first_update_us.get_or_insert(now);
            self.last_update_us = Some(now);
        }
    }

    /// Adds another worker's counters.
    pub fn merge(&mut self, o: &Self) {
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.initial += o.initial;
        self.updates += o.updates;
        self.terminated += o.terminated;
        self.retransmissions += o.retransmissions;
        self.stray += o.stray;
        self.other_requests += o.other_requests;
        self.last_initial_us = self.last_initial_us.max(o.last_initial_us);
        self.first_update_us = min(self.first_update_us, o.first_update_us);
        self.last_update_us = self.last_update_us.max(o.last_update_us);
        self.active += o.active;
    }
}

/// Why a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Still in flight when the run ended.
    Abandoned,
    /// A message could not be built or sent.
    SendError,
    /// A final response 300–699 (and not a challenge we could answer).
    Status(u16),
    /// Timer B/F fired (no final response within 64*T1).
    Timeout,
    /// A response that makes no sense for the call's state (a 2xx without
    /// Contact, a second challenge, a route set too big…).
    Unexpected,
}

/// Counters of one client engine (the load, or the UAS's registrations).
#[derive(Debug, Clone)]
pub struct ClientStats {
    /// Calls started.
    pub attempted: u64,
    /// Calls that completed.
    pub succeeded: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Requests sent again by a retransmission timer (plus ACKs re-sent for
    /// retransmitted 2xx).
    pub retransmissions: u64,
    /// 401/407 challenges answered.
    pub auth_challenges: u64,
    /// Responses for no live transaction (late retransmissions, strays).
    pub stray_responses: u64,
    /// Failures by reason.
    pub timeout: u64,
    /// Failures: unexpected message.
    pub unexpected: u64,
    /// Failures: send error.
    pub send_error: u64,
    /// Failures: in flight at the end.
    pub abandoned: u64,
    /// Failures by status code (index: code - 300).
    pub status: Vec<u64>,
    /// Latency histograms in µs, by [`Kind`].
    pub hist: Vec<Histogram<u64>>,
    /// When the first call started, µs since the run's epoch.
    pub first_start_us: Option<u64>,
    /// NOTIFYs (scenario subscribe).
    pub notify: NotifyStats,
}

impl ClientStats {
    /// Empty counters.
    pub fn new() -> Self {
        Self {
            attempted: 0,
            succeeded: 0,
            failed: 0,
            retransmissions: 0,
            auth_challenges: 0,
            stray_responses: 0,
            timeout: 0,
            unexpected: 0,
            send_error: 0,
            abandoned: 0,
            status: vec![0; 400],
            hist: (0..Kind::COUNT)
                .map(|_| {
                    // 1 µs .. 1 h at 3 significant digits; bounds are constants, so this cannot fail.
                    Histogram::new_with_bounds(1, 3_600_000_000, 3)
                        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
                })
                .collect(),
            first_start_us: None,
            notify: NotifyStats::default(),
        }
    }

    /// Records a latency.
    #[inline]
    pub fn record(&mut self, kind: Kind, micros: u64) {
        if let Some(h) = self.hist.get_mut(kind.index()) {
            h.saturating_record(micros.max(1));
        }
    }

    /// Records a failure.
    pub fn fail(&mut self, why: Failure) {
        self.failed += 1;
        match why {
            Failure::Abandoned => self.abandoned += 1,
            Failure::SendError => self.send_error += 1,
            Failure::Status(c) => {
                if let Some(n) = self.status.get_mut(usize::from(c.saturating_sub(300))) {
                    *n += 1;
                }
            }
            Failure::Timeout => self.timeout += 1,
            Failure::Unexpected => self.unexpected += 1,
        }
    }

    /// Adds another worker's counters.
    pub fn merge(&mut self, o: &Self) {
        self.attempted += o.attempted;
        self.succeeded += o.succeeded;
        self.failed += o.failed;
        self.retransmissions += o.retransmissions;
        self.auth_challenges += o.auth_challenges;
        self.stray_responses += o.stray_responses;
        self.timeout += o.timeout;
        self.unexpected += o.unexpected;
        self.send_error += o.send_error;
        self.abandoned += o.abandoned;
        for (a, b) in self.status.iter_mut().zip(&o.status) {
            *a += b;
        }
        for (a, b) in self.hist.iter_mut().zip(&o.hist) {
            // Same bounds on both sides, so this cannot fail.
            let _ = a.add(b);
        }
        self.first_start_us = match (self.first_start_us, o.first_start_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.notify.merge(&o.notify);
    }
}

/// Counters of the UAS.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerStats {
    /// Requests received, by method (retransmissions included).
    pub requests: BTreeMap<String, u64>,
    /// INVITEs answered with 180 and 200.
    pub calls_answered: u64,
    /// 200s to INVITE confirmed by an ACK.
    pub calls_confirmed: u64,
    /// Dialogs ended by a BYE.
    pub calls_completed: u64,
    /// Retransmitted requests absorbed (answered with the last response).
    pub retransmissions_received: u64,
    /// 2xx retransmitted because no ACK came (Timer G-like).
    pub retransmissions_sent: u64,
    /// 2xx never acknowledged within 64*T1 (a failure).
    pub ack_timeouts: u64,
    /// Confirmed dialogs dropped after --uas-dialog-timeout without a BYE.
    pub dialog_timeouts: u64,
    /// 401/407 challenges sent (--uas-auth).
    pub challenges_sent: u64,
    /// Credentials that did not check out (answered 403).
    pub auth_failures: u64,
    /// Requests answered 501, or responses nobody expected.
    pub unexpected: u64,
}

impl ServerStats {
    /// Counts a request by method.
    pub fn count_method(&mut self, m: sipedge::sip::Method) {
        let name = match m.as_str() {
            "" => "other",
            s => s,
        };
        if let Some(n) = self.requests.get_mut(name) {
            *n += 1;
        } else {
            self.requests.insert(name.to_string(), 1);
        }
    }

    /// Adds another worker's counters.
    pub fn merge(&mut self, o: &Self) {
        for (k, v) in &o.requests {
            *self.requests.entry(k.clone()).or_default() += v;
        }
        self.calls_answered += o.calls_answered;
        self.calls_confirmed += o.calls_confirmed;
        self.calls_completed += o.calls_completed;
        self.retransmissions_received += o.retransmissions_received;
        self.retransmissions_sent += o.retransmissions_sent;
        self.ack_timeouts += o.ack_timeouts;
        self.dialog_timeouts += o.dialog_timeouts;
        self.challenges_sent += o.challenges_sent;
        self.auth_failures += o.auth_failures;
        self.unexpected += o.unexpected;
    }
}

/// Everything one worker counted.
#[derive(Debug, Clone)]
pub struct WorkerStats {
    /// Client engines: 0 the load, 1 the UAS's registrations.
    pub client: [ClientStats; 2],
    /// The UAS.
    pub server: ServerStats,
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams received.
    pub received: u64,
    /// Datagrams the kernel refused.
    pub send_dropped: u64,
    /// Datagrams that did not parse (or were truncated).
    pub malformed: u64,
    /// Micro-seconds the worker spent generating load (first to last call started).
    pub generation_us: u64,
    /// The same for the UAS's registrations.
    pub register_generation_us: u64,
}

impl WorkerStats {
    /// Empty.
    pub fn new() -> Self {
        Self {
            client: [ClientStats::new(), ClientStats::new()],
            server: ServerStats::default(),
            sent: 0,
            received: 0,
            send_dropped: 0,
            malformed: 0,
            generation_us: 0,
            register_generation_us: 0,
        }
    }

    /// Adds another worker's counters.
    pub fn merge(&mut self, o: &Self) {
        for (a, b) in self.client.iter_mut().zip(&o.client) {
            a.merge(b);
        }
        self.server.merge(&o.server);
        self.sent += o.sent;
        self.received += o.received;
        self.send_dropped += o.send_dropped;
        self.malformed += o.malformed;
        self.generation_us = self.generation_us.max(o.generation_us);
        self.register_generation_us = self.register_generation_us.max(o.register_generation_us);
    }
}

/// What each worker publishes for the progress line, on its own cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Progress {
    /// Calls started.
    pub attempted: AtomicU64,
    /// Calls succeeded.
    pub succeeded: AtomicU64,
    /// Calls failed.
    pub failed: AtomicU64,
    /// Retransmissions sent.
    pub retransmissions: AtomicU64,
    /// Calls in flight.
    pub inflight: AtomicU64,
    /// UAS: INVITEs answered + non-INVITE requests answered.
    pub answered: AtomicU64,
    /// Subscribe: initial NOTIFYs received.
    pub notify_initial: AtomicU64,
    /// Subscribe: NOTIFYs after a subscription's first.
    pub notify_updates: AtomicU64,
}

impl Progress {
    /// Publishes (relaxed stores: a progress line may be a turn behind).
    pub fn publish(&self, c: &ClientStats, inflight: u64, answered: u64) {
        self.attempted.store(c.attempted, Ordering::Relaxed);
        self.succeeded.store(c.succeeded, Ordering::Relaxed);
        self.failed.store(c.failed, Ordering::Relaxed);
        self.retransmissions
            .store(c.retransmissions, Ordering::Relaxed);
        self.inflight.store(inflight, Ordering::Relaxed);
        self.answered.store(answered, Ordering::Relaxed);
        self.notify_initial
            .store(c.notify.initial, Ordering::Relaxed);
        self.notify_updates
            .store(c.notify.updates, Ordering::Relaxed);
    }
}

/// Latency percentiles of one kind, µs.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Minimum.
    pub min: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Maximum.
    pub max: u64,
}

/// Failures by reason.
#[derive(Debug, Clone, Serialize)]
pub struct Failures {
    /// No final response within 64*T1.
    pub timeout: u64,
    /// A message that made no sense in the call's state.
    pub unexpected: u64,
    /// A message could not be built or sent.
    pub send_error: u64,
    /// Still in flight when the run ended.
    pub abandoned: u64,
    /// Final responses 300–699 by code.
    pub status: BTreeMap<String, u64>,
}

/// NOTIFYs in the report (scenario subscribe). Times are µs since the
/// Unix epoch (`_unix_us`), so another process's send time compares.
#[derive(Debug, Clone, Serialize)]
pub struct NotifyReport {
    /// The first NOTIFY of each subscription.
    pub initial: u64,
    /// NOTIFYs after a subscription's first.
    pub updates: u64,
    /// NOTIFYs with `Subscription-State: terminated`.
    pub terminated: u64,
    /// NOTIFYs received again (same CSeq), not counted above.
    pub retransmissions: u64,
    /// NOTIFYs for no subscription of ours (answered 481).
    pub stray: u64,
    /// Requests other than NOTIFY (answered 405).
    pub other_requests: u64,
    /// Subscriptions established and not terminated at the end.
    pub active_subscriptions: u64,
    /// Arrival of the last initial NOTIFY.
    pub last_initial_unix_us: Option<u64>,
    /// Arrival of the first update.
    pub first_update_unix_us: Option<u64>,
    /// Arrival of the last update.
    pub last_update_unix_us: Option<u64>,
    /// (updates - 1) / (last - first update), per second: the rate they arrived at.
    pub update_rate: Option<f64>,
}

impl NotifyReport {
    /// The report of `n`, with times shifted by the run's epoch (Unix µs).
    pub fn new(n: &NotifyStats, epoch_unix_us: u64) -> Self {
        let unix = |t: Option<u64>| t.map(|t| t + epoch_unix_us);
        let update_rate = match (n.first_update_us, n.last_update_us) {
            (Some(a), Some(b)) if b > a && n.updates > 1 => {
                Some(((n.updates - 1) as f64 * 1e6 / (b - a) as f64).round())
            }
            _ => None,
        };
        Self {
            initial: n.initial,
            updates: n.updates,
            terminated: n.terminated,
            retransmissions: n.retransmissions,
            stray: n.stray,
            other_requests: n.other_requests,
            active_subscriptions: n.active,
            last_initial_unix_us: unix(n.last_initial_us),
            first_update_unix_us: unix(n.first_update_us),
            last_update_unix_us: unix(n.last_update_us),
            update_rate,
        }
    }
}

/// The client part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct ClientReport {
    /// Calls started.
    pub attempted: u64,
    /// Calls completed.
    pub succeeded: u64,
    /// Calls failed.
    pub failed: u64,
    /// attempted / generation time, per second.
    pub achieved_rate: f64,
    /// Retransmissions sent.
    pub retransmissions: u64,
    /// Challenges answered.
    pub auth_challenges: u64,
    /// Responses for no live transaction.
    pub stray_responses: u64,
    /// Failures by reason.
    pub failures: Failures,
    /// Latency by kind, µs (kinds with no sample are left out).
    pub latency_us: BTreeMap<String, Latency>,
    /// When the first call (request) started, µs since the Unix epoch.
    pub first_start_unix_us: Option<u64>,
    /// NOTIFYs received (scenario subscribe only).
    pub notify: Option<NotifyReport>,
}

impl ClientReport {
    /// Builds the report of `c` over a generation time in seconds; the run
    /// began at `epoch_unix_us`; `notify`: include the NOTIFY counts.
    pub fn new(c: &ClientStats, generation_s: f64, epoch_unix_us: u64, notify: bool) -> Self {
        let mut status = BTreeMap::new();
        for (i, &n) in c.status.iter().enumerate() {
            if n > 0 {
                status.insert((300 + i).to_string(), n);
            }
        }
        let mut latency_us = BTreeMap::new();
        for k in Kind::ALL {
            let Some(h) = c.hist.get(k.index()) else {
                continue;
            };
            if h.is_empty() {
                continue;
            }
            latency_us.insert(
                k.as_str().to_string(),
                Latency {
                    count: h.len(),
                    min: h.min(),
                    mean: (h.mean() * 10.0).round() / 10.0,
                    p50: h.value_at_quantile(0.50),
                    p90: h.value_at_quantile(0.90),
                    p99: h.value_at_quantile(0.99),
                    p999: h.value_at_quantile(0.999),
                    max: h.max(),
                },
            );
        }
        Self {
            attempted: c.attempted,
            succeeded: c.succeeded,
            failed: c.failed,
            achieved_rate: if generation_s > 0.0 {
                (c.attempted as f64 / generation_s * 10.0).round() / 10.0
            } else {
                0.0
            },
            retransmissions: c.retransmissions,
            auth_challenges: c.auth_challenges,
            stray_responses: c.stray_responses,
            failures: Failures {
                timeout: c.timeout,
                unexpected: c.unexpected,
                send_error: c.send_error,
                abandoned: c.abandoned,
                status,
            },
            latency_us,
            first_start_unix_us: c.first_start_us.map(|t| t + epoch_unix_us),
            notify: notify.then(|| NotifyReport::new(&c.notify, epoch_unix_us)),
        }
    }
}

/// Datagram counters.
#[derive(Debug, Clone, Serialize)]
pub struct Datagrams {
    /// Sent.
    pub sent: u64,
    /// Received.
    pub received: u64,
    /// Refused by the kernel.
    pub send_dropped: u64,
    /// Received but unparseable.
    pub malformed: u64,
}

/// Process CPU time.
#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    /// User time, s.
    pub user_s: f64,
    /// System time, s.
    pub system_s: f64,
    /// (user + system) / completed calls (UAC succeeded, else UAS calls
    /// completed or requests answered), µs.
    pub us_per_call: f64,
}

/// The whole report (the `--json` object).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// sipload version.
    pub sipload_version: &'static str,
    /// Role.
    pub role: &'static str,
    /// Scenario.
    pub scenario: &'static str,
    /// Where UAC requests went.
    pub target: String,
    /// Where the UAS listened.
    pub uas_listen: Option<String>,
    /// Threads.
    pub threads: usize,
    /// Target rate, per second.
    pub rate_target: f64,
    /// Wall time of the run, s.
    pub elapsed_s: f64,
    /// When the run began, µs since the Unix epoch.
    pub epoch_unix_us: u64,
    /// Time spent starting calls, s.
    pub generation_s: f64,
    /// The load (roles uac, both).
    pub uac: Option<ClientReport>,
    /// The UAS (roles uas, both).
    pub uas: Option<ServerStats>,
    /// The UAS's own registrations (--uas-register).
    pub uas_register: Option<ClientReport>,
    /// Datagrams.
    pub datagrams: Datagrams,
    /// CPU.
    pub cpu: Cpu,
    /// Failed / attempted (UAC, UAS registrations, UAS ACK timeouts over calls answered).
    pub failure_rate: f64,
    /// failure_rate <= --max-failure-rate (the exit code is 0 exactly then).
    pub passed: bool,
}

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "sipload {}  role={} scenario={} target={} threads={} rate={}/s  elapsed {:.2}s",
            self.sipload_version,
            self.role,
            self.scenario,
            self.target,
            self.threads,
            self.rate_target,
            self.elapsed_s
        );
        let client = |s: &mut String, title: &str, c: &ClientReport| {
            let _ = writeln!(s, "\n{title}");
            let _ = writeln!(
                s,
                "  attempted {:>10}   succeeded {:>10}   failed {:>8}   achieved {:.1}/s",
                c.attempted, c.succeeded, c.failed, c.achieved_rate
            );
            let _ = writeln!(
                s,
                "  retransmissions {:>6}   auth challenges {:>8}   stray responses {:>6}",
                c.retransmissions, c.auth_challenges, c.stray_responses
            );
            if c.failed > 0 {
                let f = &c.failures;
                let mut line = format!(
                    "  failures: timeout {}  unexpected {}  send_error {}  abandoned {}",
                    f.timeout, f.unexpected, f.send_error, f.abandoned
                );
                for (code, n) in &f.status {
                    let _ = write!(line, "  {code}: {n}");
                }
                let _ = writeln!(s, "{line}");
            }
            if let Some(n) = &c.notify {
                let _ = writeln!(
                    s,
                    "  NOTIFY initial {:>8}   updates {:>8}   retransmitted {:>6}   terminated {:>6}   stray {:>6}   active subscriptions {}",
                    n.initial, n.updates, n.retransmissions, n.terminated, n.stray, n.active_subscriptions
                );
                if let (Some(a), Some(b)) = (n.first_update_unix_us, n.last_update_unix_us) {
                    let _ = writeln!(
                        s,
                        "  updates arrived over {:.3} ms ({}/s)",
                        b.saturating_sub(a) as f64 / 1e3,
                        n.update_rate.map_or("-".to_string(), |r| format!("{r:.0}"))
                    );
                }
            }
            if !c.latency_us.is_empty() {
                let _ = writeln!(
                    s,
                    "  {:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}   (µs)",
                    "latency", "count", "p50", "p90", "p99", "p99.9", "max"
                );
                for k in Kind::ALL {
                    if let Some(l) = c.latency_us.get(k.as_str()) {
                        let _ = writeln!(
                            s,
                            "  {:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                            k.as_str(),
                            l.count,
                            l.p50,
                            l.p90,
                            l.p99,
                            l.p999,
                            l.max
                        );
                    }
                }
            }
        };
        if let Some(c) = &self.uas_register {
            client(&mut s, "UAS registrations", c);
        }
        if let Some(c) = &self.uac {
            client(&mut s, "UAC", c);
        }
        if let Some(u) = &self.uas {
            let _ = writeln!(
                s,
                "\nUAS (listening on {})",
                self.uas_listen.as_deref().unwrap_or("-")
            );
            let reqs: Vec<String> = u.requests.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(s, "  requests: {}", reqs.join(", "));
            let _ = writeln!(
                s,
                "  calls answered {}  confirmed {}  completed {}  ack timeouts {}  dialog timeouts {}",
                u.calls_answered, u.calls_confirmed, u.calls_completed, u.ack_timeouts, u.dialog_timeouts
            );
            let _ = writeln!(
                s,
                "  retransmissions received {}  2xx retransmitted {}  challenges {}  auth failures {}  unexpected {}",
                u.retransmissions_received,
                u.retransmissions_sent,
                u.challenges_sent,
                u.auth_failures,
                u.unexpected
            );
        }
        let d = &self.datagrams;
        let _ = writeln!(
            s,
            "\ndatagrams sent {}  received {}  send dropped {}  malformed {}",
            d.sent, d.received, d.send_dropped, d.malformed
        );
        let _ = writeln!(
            s,
            "cpu user {:.3}s  system {:.3}s  {:.2} µs per call",
            self.cpu.user_s, self.cpu.system_s, self.cpu.us_per_call
        );
        let _ = writeln!(
            s,
            "failure rate {:.5}  {}",
            self.failure_rate,
            if self.passed { "PASS" } else { "FAIL" }
        );
        s
    }
}
