//! Configuration: a TOML file (`--config FILE`) and command-line flags with
//! the same key names, flags winning, validated once into a [`Config`]
//! ("parse, don't validate": nothing downstream re-checks it).
//!
//! ```toml
//! listen = ["udp:127.0.0.1:5060"]
//! shards = 2
//! domain = ["example.test"]
//! upstream = "sip:192.0.2.10:5060"
//! stateless = true
//! io = "auto"            # auto | uring | mio
//! log_level = "info"
//!
//! data_dir = "sipedge-data"   # where the registrar keeps its bindings
//!
//! [parser]               # limits, all optional
//! max_message_size = 65535
//! max_headers = 256
//!
//! [registrar]            # RFC 3261 §10.3 expiry bounds and limits
//! min_expires = 60
//! max_expires = 7200
//! default_expires = 3600
//! max_contacts = 16
//!
//! [store]
//! fsync = false          # true: survive power loss, not just kill -9
//!
//! [timers]               # RFC 3261 T1, T2, T4 in ms; Timer C in s
//! t1 = 500
//!
//! [proxy]
//! max_transactions = 1048576
//!
//! [uring]                # io_uring completion coalescing: fewer wake-ups
//! coalesce_us = 200      # for ≤ this much added latency, when the receive rate
//!                        # brings ≥ 2 datagrams per wait (0: off)
//! ```

use core::net::{IpAddr, SocketAddr};
use std::net::ToSocketAddrs;
use std::path::Path;

use serde::Deserialize;

use crate::sip::ParseConfig;
pub use crate::transport::Transport;

/// One `--listen` address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    /// Its transport.
    pub transport: Transport,
    /// The address to bind.
    pub addr: SocketAddr,
}

impl Listen {
    /// Parses `udp:IP:PORT`, `tcp:`, `tls:`, `ws:`, `wss:` (IPv6 as `udp:[::1]:5060`); a bare `IP:PORT` means UDP.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let (transport, rest) = match s.split_once(':') {
            Some((t, rest)) if Transport::from_token(t).is_some() => {
                (Transport::from_token(t).unwrap_or_default(), rest)
            }
            Some((t, _)) if !t.is_empty() && t.bytes().all(|c| c.is_ascii_alphabetic()) => {
                return Err(ConfigError::UnsupportedTransport(s.to_owned()))
            }
            _ => (Transport::Udp, s),
        };
        let addr = rest
            .parse::<SocketAddr>()
            .map_err(|_| ConfigError::BadListen(s.to_owned()))?;
        Ok(Self { transport, addr })
    }
}

/// Which I/O driver the shards use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoMode {
    /// io_uring when the kernel has what we need, else mio.
    #[default]
    Auto,
    /// io_uring, or fail at start.
    Uring,
    /// mio (epoll) with recvmmsg/sendmmsg.
    Mio,
    /// AF_XDP sockets on the interface's queues (`[xdp]`); never chosen by `auto`.
    Xdp,
}

impl IoMode {
    /// Parses `auto`, `uring`, `mio` or `xdp`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "auto" => Ok(Self::Auto),
            "uring" | "io_uring" => Ok(Self::Uring),
            "mio" | "epoll" => Ok(Self::Mio),
            "xdp" | "af_xdp" => Ok(Self::Xdp),
            _ => Err(ConfigError::BadIo(s.to_owned())),
        }
    }
}

/// A configuration error, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown keys.
    #[error("config file {path}: {source}")]
    Toml {
        /// The path.
        path: String,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A listen address is malformed.
    #[error(
        "bad listen address {0:?}: expected udp:IP:PORT, e.g. udp:127.0.0.1:5060 or udp:[::1]:5060"
    )]
    BadListen(String),
    /// A listen transport this build does not serve yet.
    #[error("listen address {0:?}: unknown transport (udp, tcp, tls, ws or wss)")]
    UnsupportedTransport(String),
    /// The upstream is malformed or does not resolve.
    #[error("bad upstream {0:?}: expected sip:HOST:PORT")]
    BadUpstream(String),
    /// The io mode is unknown.
    #[error("bad io mode {0:?}: expected auto, uring, mio or xdp")]
    BadIo(String),
    /// A log format other than text or json.
    #[error("log_format {0:?}: expected \"text\" or \"json\"")]
    BadLogFormat(String),
    /// Zero shards, or more than 255.
    #[error("shards must be between 1 and 64, got {0}")]
    BadShards(usize),
    /// A `tls:` or `wss:` listener without `--tls-cert` and `--tls-key`.
    #[error(
        "listen address {0} needs a certificate: set --tls-cert and --tls-key (or [tls] cert, key)"
    )]
    NoCertificate(SocketAddr),
    /// `[xdp] mode` is neither "native" nor "skb".
    #[error("[xdp] mode = {0:?}: expected \"native\" or \"skb\"")]
    BadXdpMode(String),
    /// `[proxy] large_requests` is neither "udp" nor "tcp".
    #[error("[proxy] large_requests = {0:?}: expected \"udp\" or \"tcp\"")]
    BadLargeRequests(String),
    /// `[tls] verify_client` is not none, optional or required.
    #[error("[tls] verify_client = {0:?}: expected \"none\", \"optional\" or \"required\"")]
    BadVerifyClient(String),
    /// No listen address.
    #[error("no listen address")]
    NoListen,
    /// A listen address binds the wildcard address without an advertised address.
    #[error("listen address {0} is a wildcard: set `advertise` to the address peers reach us at")]
    WildcardWithoutAdvertise(SocketAddr),
    /// A domain name is empty or malformed.
    #[error("bad domain {0:?}")]
    BadDomain(String),
    /// Timer values that break RFC 3261's relations.
    #[error("bad [timers]: t1 must be > 0, t2 >= t1, and timer_c (s) >= 64*t1")]
    BadTimers,
    /// A `[[dispatcher]]` set that cannot work.
    #[error("[[dispatcher]] {0}")]
    BadDispatcher(String),
}

/// Default io_uring completion coalescing (µs); see [`IoSection`].
pub const DEFAULT_COALESCE_US: u32 = 200;

/// The file form: every key optional, names as on the command line.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `listen = ["udp:127.0.0.1:5060"]`
    pub listen: Option<Vec<String>>,
    /// `shards = 2`
    pub shards: Option<usize>,
    /// `domain = ["example.test"]`
    pub domain: Option<Vec<String>>,
    /// `upstream = "sip:192.0.2.10:5060"`
    pub upstream: Option<String>,
    /// `stateless = true`
    pub stateless: Option<bool>,
    /// `io = "auto"`
    pub io: Option<String>,
    /// `log_level = "info"`
    pub log_level: Option<String>,
    /// `log_format = "text"` or `"json"` (one JSON object per line).
    pub log_format: Option<String>,
    /// `advertise = "203.0.113.5"`: the address put in Via and Record-Route.
    pub advertise: Option<IpAddr>,
    /// `record_route = true`
    pub record_route: Option<bool>,
    /// `[parser]` limits.
    pub parser: Option<ParserSection>,
    /// `[socket]` settings.
    pub socket: Option<SocketSection>,
    /// `data_dir = "sipedge-data"`: the registrar's durable store.
    pub data_dir: Option<std::path::PathBuf>,
    /// `[registrar]` settings.
    pub registrar: Option<RegistrarSection>,
    /// `[store]` settings.
    pub store: Option<StoreSection>,
    /// `[timers]` settings.
    pub timers: Option<TimersSection>,
    /// `[proxy]` settings.
    pub proxy: Option<ProxySection>,
    /// `[uring]` settings.
    #[serde(rename = "uring")]
    pub io_tuning: Option<IoSection>,
    /// `[xdp]` settings.
    pub xdp: Option<XdpSection>,
    /// `users = "users.toml"`: the users file; when given, served domains
    /// require digest authentication.
    pub users: Option<std::path::PathBuf>,
    /// `[auth]`: digest authentication.
    pub auth: Option<crate::auth::AuthSection>,
    /// `[policy]`: access rules.
    pub policy: Option<crate::policy::PolicySection>,
    /// `[flood]`: per-source rate limits.
    pub flood: Option<crate::policy::flood::FloodSection>,
    /// `[overload]`: admission of new work.
    pub overload: Option<crate::policy::overload::OverloadSection>,
    /// `[metrics]`: the Prometheus textfile export.
    pub metrics: Option<MetricsSection>,
    /// `[control]`: the `sipedge ctl` socket.
    pub control: Option<ControlSection>,
    /// `[tls]`: certificates.
    pub tls: Option<TlsSection>,
    /// `[tcp]`: connection limits.
    pub tcp: Option<TcpSection>,
    /// `[presence]`: PUBLISH, SUBSCRIBE/NOTIFY and stored MESSAGEs.
    pub presence: Option<crate::presence::PresenceConfig>,
    /// `[[dispatcher]]`: sets of gateways requests for their domains are spread over.
    pub dispatcher: Option<Vec<DispatcherSection>>,
    /// `[[group]]`: hunt groups (`sip:NAME@DOMAIN` rings one member).
    pub group: Option<Vec<GroupSection>>,
}

/// `[[group]]`: a hunt group — a call to `sip:NAME@DOMAIN` rings one of the
/// registered `members` (all of its contacts), chosen by `strategy`; no
/// answer within `ring_timeout`, busy or unavailable: the next member;
/// nobody free: `nobody` (486 or 480).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSection {
    /// The group's user part.
    pub name: String,
    /// Its domain (a served domain).
    pub domain: String,
    /// The members' AoRs (`sip:op1@example.test`), users of served domains.
    pub members: Vec<String>,
    /// `least-loaded` (default), `round-robin`, `longest-idle`, `ring-all`.
    pub strategy: Option<String>,
    /// Ringing a member this long without an answer: the next (default `"15s"`).
    pub ring_timeout: Option<String>,
    /// Calls in progress a member takes at most (0, default: no limit).
    pub max_calls: Option<u32>,
    /// The answer when nobody is free or nobody answered: 486 (default) or 480.
    pub nobody: Option<u16>,
    /// A call in progress longer than this stops counting (default `"2h"`).
    pub call_timeout: Option<String>,
}

impl GroupSection {
    /// The validated group, as a set of the dispatcher.
    pub fn build(&self) -> Result<crate::routing::dispatcher::SetConfig, ConfigError> {
        use crate::routing::dispatcher::{Algorithm, DestConfig, GroupConfig, SetConfig};
        let bad =
            |what: String| ConfigError::BadDispatcher(format!("[[group]] {:?}: {what}", self.name));
        if self.name.is_empty() || self.name.contains(['@', ':', ' ']) {
            return Err(bad("needs a name (a user part)".into()));
        }
        if self.members.is_empty() || self.members.len() > 256 {
            return Err(bad("needs 1 to 256 members".into()));
        }
        let algorithm = match self.strategy.as_deref() {
            None | Some("least-loaded") => Algorithm::LeastLoaded,
            Some("round-robin") => Algorithm::RoundRobin,
            Some("longest-idle") => Algorithm::LongestIdle,
            Some("ring-all") => Algorithm::All,
            Some(o) => {
                return Err(bad(format!(
                "strategy = {o:?}: expected least-loaded, round-robin, longest-idle or ring-all"
            )))
            }
        };
        let nobody = self.nobody.unwrap_or(486);
        if nobody != 486 && nobody != 480 {
            return Err(bad(format!("nobody = {nobody}: expected 486 or 480")));
        }
        let dur = |key: &str, v: &Option<String>, default: crate::time::Duration| match v {
            None => Ok(default),
            Some(s) => parse_duration(s)
                .ok_or_else(|| bad(format!("{key} = {s:?}: expected e.g. \"15s\""))),
        };
        let ring_timeout = dur(
            "ring_timeout",
            &self.ring_timeout,
            crate::time::Duration::from_secs(15),
        )?;
        if ring_timeout == crate::time::Duration::ZERO {
            return Err(bad("ring_timeout must be above 0".into()));
        }
        let mut dests = Vec::with_capacity(self.members.len());
        for m in &self.members {
            let key = SetConfig::aor_key(m);
            if !m.starts_with("sip:") || !key.contains('@') {
                return Err(bad(format!("member {m:?}: expected sip:USER@DOMAIN")));
            }
            dests.push(DestConfig {
                uri: m.clone(),
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                transport: Transport::Udp,
                weight: 1,
                priority: 0,
                max_load: self.max_calls.unwrap_or(0),
            });
        }
        let domain = self.domain.to_ascii_lowercase();
        Ok(SetConfig {
            name: self.name.clone(),
            domains: vec![domain.clone()],
            attempts: u32::try_from(dests.len()).unwrap_or(256),
            dests,
            algorithm,
            probe_interval: crate::time::Duration::ZERO,
            probe_timeout: crate::time::Duration::ZERO,
            failures_down: 1,
            successes_up: 1,
            call_timeout: dur(
                "call_timeout",
                &self.call_timeout,
                crate::time::Duration::from_secs(7200),
            )?,
            fork_timeout: crate::time::Duration::ZERO,
            group: Some(GroupConfig {
                aor: format!("{}@{domain}", self.name),
                ring_timeout,
                nobody,
            }),
        })
    }
}

/// `[[dispatcher]]`: a set of destinations (gateways, trunks) that the
/// requests whose Request-URI domain is one of `domains` are spread over,
/// with health probes and serial failover ([`crate::routing::dispatcher`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatcherSection {
    /// The set's name (control channel, metrics).
    pub name: String,
    /// Request-URI domains that use the set.
    pub domains: Vec<String>,
    /// `"sip:HOST:PORT[;transport=…]"`, or `{ uri, weight, priority, max_load }`.
    pub destinations: Vec<DestinationEntry>,
    /// `round-robin` (default), `weighted`, `hash`, `priority`, `least-loaded`.
    pub algorithm: Option<String>,
    /// What `hash` hashes: `call-id` (default), `from-user`, `ruri-user`.
    pub hash: Option<String>,
    /// Between OPTIONS probes of each destination (`"2s"`, `"500ms"`;
    /// `"0s"`: none). Default 10 s.
    pub probe_interval: Option<String>,
    /// A probe unanswered this long failed (default 1 s, at most the interval).
    pub probe_timeout: Option<String>,
    /// Probes failed in a row that take a destination down (default 2).
    pub failures_down: Option<u32>,
    /// Probes answered in a row that bring it back (default 2).
    pub successes_up: Option<u32>,
    /// Most destinations one request tries, serially (default 3).
    pub attempts: Option<u32>,
    /// A call in progress longer than this counts as ended (default `"2h"`).
    pub call_timeout: Option<String>,
    /// A destination silent this long after a request (not even 100
    /// Trying) failed it and the request moves on (default `"2s"`; `"0s"`:
    /// wait for the transaction timeout, 32 s).
    pub fork_timeout: Option<String>,
}

/// A destination: its URI alone, or a table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DestinationEntry {
    /// `"sip:127.0.0.1:35081"`
    Uri(String),
    /// `{ uri = "sip:…", weight = 2, priority = 1, max_load = 100 }`
    Table(DestinationTable),
}

/// A destination as a table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationTable {
    /// `sip:HOST:PORT[;transport=udp|tcp|tls]` (a name is resolved once, at start).
    pub uri: String,
    /// Share under `weighted` (default 1).
    pub weight: Option<u32>,
    /// Order under `priority`, lower first (default 0).
    pub priority: Option<u32>,
    /// Most calls in progress per shard; 0 (default): no limit.
    pub max_load: Option<u32>,
}

/// `"2s"`, `"500ms"`, `"1m"`, `"2h"` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<crate::time::Duration> {
    use crate::time::Duration;
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit.trim() {
        "" | "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "m" | "min" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        _ => None,
    }
}

impl DispatcherSection {
    /// The validated set.
    pub fn build(&self) -> Result<crate::routing::dispatcher::SetConfig, ConfigError> {
        use crate::routing::dispatcher::{Algorithm, DestConfig, HashKey, SetConfig};
        let bad = |what: String| ConfigError::BadDispatcher(format!("{:?}: {what}", self.name));
        if self.name.is_empty() {
            return Err(ConfigError::BadDispatcher("a set needs a name".into()));
        }
        if self.domains.is_empty() {
            return Err(bad("needs at least one domain".into()));
        }
        if self.destinations.is_empty() || self.destinations.len() > 256 {
            return Err(bad("needs 1 to 256 destinations".into()));
        }
        let hash = match self.hash.as_deref() {
            None | Some("call-id") => HashKey::CallId,
            Some("from-user") => HashKey::FromUser,
            Some("ruri-user") => HashKey::RuriUser,
            Some(o) => {
                return Err(bad(format!(
                    "hash = {o:?}: expected call-id, from-user or ruri-user"
                )))
            }
        };
        let algorithm = match self.algorithm.as_deref() {
            None | Some("round-robin") => Algorithm::RoundRobin,
            Some("weighted") => Algorithm::Weighted,
            Some("hash") => Algorithm::Hash(hash),
            Some("priority") => Algorithm::Priority,
            Some("least-loaded") => Algorithm::LeastLoaded,
            Some(o) => {
                return Err(bad(format!(
                "algorithm = {o:?}: expected round-robin, weighted, hash, priority or least-loaded"
            )))
            }
        };
        let dur = |key: &str, v: &Option<String>, default: crate::time::Duration| match v {
            None => Ok(default),
            Some(s) => parse_duration(s)
                .ok_or_else(|| bad(format!("{key} = {s:?}: expected e.g. \"2s\" or \"500ms\""))),
        };
        let probe_interval = dur(
            "probe_interval",
            &self.probe_interval,
            crate::time::Duration::from_secs(10),
        )?;
        let probe_timeout = dur(
            "probe_timeout",
            &self.probe_timeout,
            crate::time::Duration::from_secs(1).min(probe_interval),
        )?;
        if probe_interval != crate::time::Duration::ZERO
            && (probe_timeout > probe_interval || probe_timeout == crate::time::Duration::ZERO)
        {
            return Err(bad(
                "probe_timeout must be above 0 and at most probe_interval".into(),
            ));
        }
        let mut dests = Vec::with_capacity(self.destinations.len());
        for d in &self.destinations {
            let (uri, weight, priority, max_load) = match d {
                DestinationEntry::Uri(u) => (u.as_str(), 1, 0, 0),
                DestinationEntry::Table(t) => (
                    t.uri.as_str(),
                    t.weight.unwrap_or(1),
                    t.priority.unwrap_or(0),
                    t.max_load.unwrap_or(0),
                ),
            };
            if weight == 0 {
                return Err(bad(format!("{uri}: weight must be at least 1")));
            }
            let addr = parse_upstream(uri)
                .map_err(|_| bad(format!("bad destination {uri:?}: expected sip:HOST:PORT")))?;
            let transport =
                upstream_transport(uri).map_err(|_| bad(format!("bad transport in {uri:?}")))?;
            dests.push(DestConfig {
                uri: uri.to_owned(),
                addr,
                transport,
                weight,
                priority,
                max_load,
            });
        }
        Ok(SetConfig {
            name: self.name.clone(),
            domains: self
                .domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            dests,
            algorithm,
            probe_interval,
            probe_timeout,
            failures_down: self.failures_down.unwrap_or(2).max(1),
            successes_up: self.successes_up.unwrap_or(2).max(1),
            attempts: self.attempts.unwrap_or(3).clamp(1, 16),
            call_timeout: dur(
                "call_timeout",
                &self.call_timeout,
                crate::time::Duration::from_secs(7200),
            )?,
            fork_timeout: dur(
                "fork_timeout",
                &self.fork_timeout,
                crate::time::Duration::from_secs(2),
            )?,
            group: None,
        })
    }
}

/// `[metrics]`: counters, gauges and the replication lag in the Prometheus
/// text format, served over HTTP (`listen`: `/metrics`, `/health`,
/// `/ready`) and/or written as a textfile (for node_exporter's textfile
/// collector, or `cat`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// The file to write (atomically replaced).
    pub file: Option<std::path::PathBuf>,
    /// Seconds between writes (default 10).
    pub interval: Option<u64>,
    /// Address of the HTTP endpoint (`--metrics-listen`), e.g. 127.0.0.1:9090.
    pub listen: Option<SocketAddr>,
}

/// `[control]`: the Unix socket `sipedge ctl` talks to (mode 0600; the only
/// control path, nothing on the network).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// Its path (`--control`).
    pub socket: Option<std::path::PathBuf>,
}

/// `[tls]`: certificates for `tls:` and `wss:` listeners and for outbound TLS.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain (`--tls-cert`).
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key (`--tls-key`).
    pub key: Option<std::path::PathBuf>,
    /// PEM CA certificates: client certificates are checked against them,
    /// and so are the servers we connect to.
    pub ca: Option<std::path::PathBuf>,
    /// `none`, `optional` or `required` (default none).
    pub verify_client: Option<String>,
    /// Check the certificates of servers we connect to (default true; with
    /// no `ca`, nothing is trusted and outbound TLS fails).
    pub verify_server: Option<bool>,
    /// A certificate per served domain, chosen by SNI.
    #[serde(default)]
    pub sni: Vec<SniSection>,
}

/// One `[[tls.sni]]` entry.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SniSection {
    /// The domain (as the client names it in SNI).
    pub domain: String,
    /// Its PEM certificate chain.
    pub cert: std::path::PathBuf,
    /// Its PEM private key.
    pub key: std::path::PathBuf,
}

/// `[tcp]`: limits of stream connections (TCP, TLS, WS, WSS).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TcpSection {
    /// Connections per shard at most (default 200000).
    pub max_connections: Option<usize>,
    /// Connections from one IP address per shard at most (default 1024).
    pub max_per_ip: Option<u32>,
    /// Seconds without traffic before a connection is closed (default 600).
    pub idle_timeout: Option<u64>,
    /// Seconds a header block may take to arrive (slowloris; default 10).
    pub header_timeout: Option<u64>,
    /// Bytes queued for a peer that does not read before it is cut off (default 262144).
    pub max_write_queue: Option<usize>,
}

/// `[uring]`: io_uring driver tuning.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoSection {
    /// io_uring completion coalescing in µs: after this long with at least
    /// one completion, a wait returns (0: off). Fewer wake-ups at moderate
    /// load for at most this much added latency per message.
    pub coalesce_us: Option<u32>,
}

/// `[xdp]`: the AF_XDP driver (`io = "xdp"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpSection {
    /// The interface (default: the one that holds the UDP listen address).
    pub interface: Option<String>,
    /// Receive queues served, 0 to N-1, one per shard (default: the shard count).
    pub queues: Option<u32>,
    /// `"native"` (the driver's XDP hook; default) or `"skb"` (generic, any interface).
    pub mode: Option<String>,
    /// Require zero-copy (the NIC driver must support it); default false: the kernel copies.
    pub zero_copy: Option<bool>,
    /// Busy polling for this many µs per wait (SO_PREFER_BUSY_POLL); 0 (default): off.
    pub busy_poll: Option<u32>,
}

/// The validated `[xdp]` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XdpConfig {
    /// The interface, if named.
    pub interface: Option<String>,
    /// Queues (None: one per shard).
    pub queues: Option<u32>,
    /// Generic (skb) mode instead of native.
    pub skb_mode: bool,
    /// Require zero-copy.
    pub zero_copy: bool,
    /// Busy polling, µs (0: off).
    pub busy_poll_us: u32,
}

/// `[registrar]`: expiry bounds (seconds) and limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrarSection {
    /// Shortest expiry accepted; below it, 423 Interval Too Brief.
    pub min_expires: Option<u32>,
    /// Longest expiry granted.
    pub max_expires: Option<u32>,
    /// Expiry when the REGISTER names none.
    pub default_expires: Option<u32>,
    /// Most bindings per address-of-record.
    pub max_contacts: Option<u16>,
    /// Most bindings per shard.
    pub max_bindings: Option<usize>,
    /// RFC 5626 outbound: `Require: outbound` and `Flow-Timer` for a REGISTER
    /// with `Supported: outbound` and an instance + reg-id (default true).
    pub outbound: Option<bool>,
    /// The `Flow-Timer` of those answers, seconds (default 120): how often the
    /// UA should send its CRLF keep-alive; keep `[tcp] idle_timeout` above it.
    pub flow_timer: Option<u32>,
}

/// `[store]`: durability, and the shared store of several nodes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// fdatasync each batch (survives power loss; kill -9 is survived without it).
    pub fsync: Option<bool>,
    /// `redis://[:password@]host:port[/db]` or `rediss://…` (`--store`):
    /// bindings written through Redis and shared with the other nodes
    /// using it, instead of the embedded log.
    pub url: Option<String>,
    /// This node's name among them (default: host name and first port).
    pub node: Option<String>,
    /// Key prefix in Redis (default `sipedge`).
    pub prefix: Option<String>,
    /// Approximate length of the change stream (default 1,000,000 entries).
    pub stream_max: Option<usize>,
    /// ms the change-stream follower gathers changes before reading again
    /// (default 2; 0 reads each change as it comes).
    pub follow_window_ms: Option<u64>,
    /// PEM file of the CA that signs Redis's certificate (`rediss://`).
    pub tls_ca: Option<std::path::PathBuf>,
}

/// `[timers]`: RFC 3261 timer base values.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimersSection {
    /// T1 in ms (RTT estimate).
    pub t1: Option<u64>,
    /// T2 in ms.
    pub t2: Option<u64>,
    /// T4 in ms.
    pub t4: Option<u64>,
    /// Timer C in s.
    pub timer_c: Option<u64>,
}

/// `[proxy]`: the stateful proxy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// Most live transactions per shard; beyond it, 503.
    pub max_transactions: Option<usize>,
    /// Record-Route dialog-creating requests (default true).
    pub record_route: Option<bool>,
    /// A request over 1300 bytes for a UDP target: `"udp"` (the default:
    /// sent over UDP, fragmented by IP, as Kamailio and OpenSIPS do) or
    /// `"tcp"` (RFC 3261 §18.1.1: over TCP, or 513 without a TCP listener).
    pub large_requests: Option<String>,
}

/// `[parser]`: message limits.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParserSection {
    /// Largest message, bytes.
    pub max_message_size: Option<usize>,
    /// Most header lines.
    pub max_headers: Option<usize>,
    /// Longest header line.
    pub max_header_line: Option<usize>,
    /// Longest Request-URI.
    pub max_uri_len: Option<usize>,
    /// Most Via values.
    pub max_vias: Option<usize>,
}

/// How the kernel picks a shard for a datagram or a connection on a shared
/// listen port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Steer {
    /// By the source address (a reuseport BPF program): a source's
    /// datagrams all reach one shard, so per-source limits (flood, failed
    /// authentication) hold across shards; a trunk from one address is
    /// served by one shard.
    #[default]
    Source,
    /// By the kernel's 4-tuple hash: the source ports of one address spread
    /// over the shards, and so do the per-source limits (once per shard).
    Hash,
}

/// `[socket]`: buffer sizes and steering.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketSection {
    /// `"source"` (default) or `"hash"`: how shards share a listen port.
    pub steer: Option<Steer>,
    /// SO_RCVBUF asked for, bytes.
    pub recv_buffer: Option<usize>,
    /// SO_SNDBUF asked for, bytes.
    pub send_buffer: Option<usize>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen addresses.
    pub listen: Vec<Listen>,
    /// Number of shards (threads), each pinned to one allowed CPU.
    pub shards: usize,
    /// Served domains, lower-case.
    pub domains: Vec<String>,
    /// Next hop for what is not ours.
    pub upstream: Option<SocketAddr>,
    /// Its transport (`;transport=` of `upstream`, UDP by default).
    pub upstream_transport: Transport,
    /// Run the stateless relay.
    pub stateless: bool,
    /// I/O driver choice.
    pub io: IoMode,
    /// Log filter (`info`, `debug`, `sipedge=trace`…).
    pub log_level: String,
    /// Log lines as JSON objects.
    pub log_json: bool,
    /// Address advertised in Via/Record-Route instead of the bound one.
    pub advertise: Option<IpAddr>,
    /// Add Record-Route in stateless mode.
    pub record_route: bool,
    /// Parser limits.
    pub parse: ParseConfig,
    /// SO_RCVBUF to ask for.
    pub recv_buffer: usize,
    /// SO_SNDBUF to ask for.
    pub send_buffer: usize,
    /// How shards share a listen port.
    pub steer: Steer,
    /// The registrar's durable store.
    pub data_dir: std::path::PathBuf,
    /// fdatasync each store batch.
    pub fsync: bool,
    /// The shared store (`--store redis://…`); `None`: the embedded log.
    /// An empty `node` is filled in at start (host name and first port).
    pub redis: Option<crate::store::redis::RedisConfig>,
    /// Registrar bounds.
    pub registrar: RegistrarSection,
    /// RFC 3261 timers.
    pub timers: crate::txn::TimerConfig,
    /// Most live transactions per shard.
    pub max_transactions: usize,
    /// Record-Route in stateful mode.
    pub stateful_record_route: bool,
    /// `[proxy] large_requests = "tcp"`: RFC 3261 §18.1.1 for requests over 1300 bytes.
    pub large_requests_over_tcp: bool,
    /// io_uring completion coalescing, µs.
    pub coalesce_us: u32,
    /// `[xdp]`: the AF_XDP driver's settings.
    pub xdp: XdpConfig,
    /// The users file, if any.
    pub users: Option<std::path::PathBuf>,
    /// `[auth]` as written.
    pub auth: crate::auth::AuthSection,
    /// `[policy]` as written (compiled at start and on SIGHUP).
    pub policy: crate::policy::PolicySection,
    /// `[presence]` (defaults without it).
    pub presence: crate::presence::PresenceConfig,
    /// `[flood]`, if given (off without it).
    pub flood: Option<crate::policy::flood::FloodSection>,
    /// `[overload]` as written (on, with defaults, without it).
    pub overload: crate::policy::overload::OverloadSection,
    /// The config file, for SIGHUP reloads.
    pub config_file: Option<std::path::PathBuf>,
    /// The metrics file and its interval.
    pub metrics: Option<(std::path::PathBuf, std::time::Duration)>,
    /// The metrics HTTP endpoint's address.
    pub metrics_listen: Option<SocketAddr>,
    /// The control socket's path.
    pub control_socket: Option<std::path::PathBuf>,
    /// `[tls]` as written (files read at start and on SIGHUP).
    pub tls: TlsSection,
    /// Stream connection limits.
    pub conn: crate::transport::conn::ConnLimits,
    /// `[[dispatcher]]` sets.
    pub dispatcher: Vec<crate::routing::dispatcher::SetConfig>,
}

impl Config {
    /// What differs between the running configuration (`self`) and `new` that
    /// a reload cannot apply (it needs a restart). A reload applies the users
    /// file, the policy, the presence watcher rules, `[auth]`, `[flood]`,
    /// `[overload]`, the TLS certificates and the log level; it refuses,
    /// whole, a file that changes anything else.
    pub fn restart_only_changes(&self, new: &Self) -> Vec<&'static str> {
        let mut out = Vec::new();
        macro_rules! differ {
            ($($f:ident),* $(,)?) => {
                $(
                    if format!("{:?}", self.$f) != format!("{:?}", new.$f) {
                        out.push(stringify!($f));
                    }
                )*
            };
        }
        differ!(
            listen,
            shards,
            domains,
            upstream,
            upstream_transport,
            stateless,
            io,
            log_json,
            advertise,
            record_route,
            parse,
            recv_buffer,
            send_buffer,
            steer,
            data_dir,
            fsync,
            redis,
            registrar,
            timers,
            max_transactions,
            stateful_record_route,
            large_requests_over_tcp,
            coalesce_us,
            metrics,
            metrics_listen,
            control_socket,
            conn,
            dispatcher,
        );
        // A users file can change (users are reloaded), not appear or go:
        // the authenticators are built at start.
        if self.users.is_some() != new.users.is_some() {
            out.push("users (a users file added or removed)");
        }
        let settings = |p: &crate::presence::PresenceConfig| {
            let mut p = p.clone();
            p.rule = Vec::new();
            p.others = crate::presence::Action::default();
            format!("{p:?}")
        };
        if settings(&self.presence) != settings(&new.presence) {
            out.push("presence (other than its watcher rules)");
        }
        out
    }
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Toml { source, .. } => ConfigError::Toml {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Toml {
            path: String::new(),
            source: Box::new(e),
        })
    }

    /// `self` with every key that `over` sets taken from `over`.
    pub fn overridden_by(self, over: Self) -> Self {
        Self {
            listen: over.listen.or(self.listen),
            shards: over.shards.or(self.shards),
            domain: over.domain.or(self.domain),
            upstream: over.upstream.or(self.upstream),
            stateless: over.stateless.or(self.stateless),
            io: over.io.or(self.io),
            log_level: over.log_level.or(self.log_level),
            log_format: over.log_format.or(self.log_format),
            advertise: over.advertise.or(self.advertise),
            record_route: over.record_route.or(self.record_route),
            parser: over.parser.or(self.parser),
            socket: over.socket.or(self.socket),
            data_dir: over.data_dir.or(self.data_dir),
            registrar: over.registrar.or(self.registrar),
            store: match (over.store, self.store) {
                (Some(o), Some(f)) => Some(StoreSection {
                    fsync: o.fsync.or(f.fsync),
                    url: o.url.or(f.url),
                    node: o.node.or(f.node),
                    prefix: o.prefix.or(f.prefix),
                    stream_max: o.stream_max.or(f.stream_max),
                    follow_window_ms: o.follow_window_ms.or(f.follow_window_ms),
                    tls_ca: o.tls_ca.or(f.tls_ca),
                }),
                (o, f) => o.or(f),
            },
            timers: over.timers.or(self.timers),
            proxy: over.proxy.or(self.proxy),
            io_tuning: over.io_tuning.or(self.io_tuning),
            xdp: over.xdp.or(self.xdp),
            users: over.users.or(self.users),
            auth: over.auth.or(self.auth),
            policy: over.policy.or(self.policy),
            presence: over.presence.or(self.presence),
            dispatcher: over.dispatcher.or(self.dispatcher),
            group: over.group.or(self.group),
            flood: over.flood.or(self.flood),
            overload: over.overload.or(self.overload),
            control: over.control.or(self.control),
            metrics: match (over.metrics, self.metrics) {
                (Some(o), Some(f)) => Some(MetricsSection {
                    file: o.file.or(f.file),
                    interval: o.interval.or(f.interval),
                    listen: o.listen.or(f.listen),
                }),
                (o, f) => o.or(f),
            },
            tls: match (over.tls, self.tls) {
                (Some(o), Some(f)) => Some(TlsSection {
                    cert: o.cert.or(f.cert),
                    key: o.key.or(f.key),
                    ..f
                }),
                (o, f) => o.or(f),
            },
            tcp: over.tcp.or(self.tcp),
        }
    }

    /// Validates into a [`Config`]; `cpus` is the number of CPUs this process may use.
    pub fn validate(self, cpus: usize) -> Result<Config, ConfigError> {
        let listen = self
            .listen
            .unwrap_or_else(|| vec!["udp:127.0.0.1:5060".to_owned()])
            .iter()
            .map(|s| Listen::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        if listen.is_empty() {
            return Err(ConfigError::NoListen);
        }
        if self.advertise.is_none() {
            if let Some(l) = listen.iter().find(|l| l.addr.ip().is_unspecified()) {
                return Err(ConfigError::WildcardWithoutAdvertise(l.addr));
            }
        }
        let tls_section = self.tls.clone().unwrap_or_default();
        if let Some(l) = listen.iter().find(|l| l.transport.is_secure()) {
            if tls_section.cert.is_none() || tls_section.key.is_none() {
                return Err(ConfigError::NoCertificate(l.addr));
            }
        }
        if let Some(v) = &tls_section.verify_client {
            if !matches!(v.as_str(), "none" | "optional" | "required") {
                return Err(ConfigError::BadVerifyClient(v.clone()));
            }
        }
        // One shard per allowed CPU by default, up to the most a flow token
        // can name (a bigger host starts with that many, not an error).
        let max = usize::from(crate::transport::FlowId::MAX_SHARDS);
        let shards = self.shards.unwrap_or(cpus.clamp(1, max));
        if !(1..=max).contains(&shards) {
            return Err(ConfigError::BadShards(shards));
        }
        let domains = self
            .domain
            .unwrap_or_else(|| vec!["localhost".to_owned()])
            .into_iter()
            .map(|d| {
                // An address may stand for the domain of an edge with no DNS name.
                if let Ok(ip) = d
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                {
                    return Ok(match ip {
                        IpAddr::V4(a) => a.to_string(),
                        IpAddr::V6(a) => format!("[{a}]"),
                    });
                }
                let ok = !d.is_empty()
                    && d.len() <= 253
                    && d.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                if ok {
                    Ok(d.to_ascii_lowercase())
                } else {
                    Err(ConfigError::BadDomain(d))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let upstream = self.upstream.as_deref().map(parse_upstream).transpose()?;
        let upstream_transport = match self.upstream.as_deref() {
            Some(u) => upstream_transport(u)?,
            None => Transport::Udp,
        };
        let io = self
            .io
            .as_deref()
            .map(IoMode::parse)
            .transpose()?
            .unwrap_or_default();
        let p = self.parser.unwrap_or_default();
        let d = ParseConfig::default();
        let parse = ParseConfig {
            max_message_size: p.max_message_size.unwrap_or(d.max_message_size).min(65_535),
            max_headers: p.max_headers.unwrap_or(d.max_headers),
            max_header_line: p.max_header_line.unwrap_or(d.max_header_line),
            max_uri_len: p.max_uri_len.unwrap_or(d.max_uri_len),
            max_vias: p.max_vias.unwrap_or(d.max_vias),
            ..d
        };
        let s = self.socket.unwrap_or_default();
        let t = self.timers.unwrap_or_default();
        let dt = crate::txn::TimerConfig::default();
        let ms = |v: Option<u64>, d: crate::time::Duration| {
            v.map_or(d, crate::time::Duration::from_millis)
        };
        let timers = crate::txn::TimerConfig {
            t1: ms(t.t1, dt.t1),
            t2: ms(t.t2, dt.t2),
            t4: ms(t.t4, dt.t4),
            timer_c: t
                .timer_c
                .map_or(dt.timer_c, crate::time::Duration::from_secs),
        };
        if timers.t1.as_micros() == 0 || timers.t2 < timers.t1 || timers.timer_c < timers.t1x64() {
            return Err(ConfigError::BadTimers);
        }
        let proxy = self.proxy.unwrap_or_default();
        let mut dispatcher = self
            .dispatcher
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(DispatcherSection::build)
            .collect::<Result<Vec<_>, _>>()?;
        for g in self.group.as_deref().unwrap_or_default() {
            let set = g.build()?;
            let member_domains_served = set.dests.iter().all(|d| {
                let key = crate::routing::dispatcher::SetConfig::aor_key(&d.uri);
                key.split_once('@')
                    .is_some_and(|(_, h)| domains.iter().any(|x| x == h))
            });
            if !set.domains.iter().all(|d| domains.contains(d)) || !member_domains_served {
                return Err(ConfigError::BadDispatcher(format!(
                    "[[group]] {:?}: its domain and its members' must be served domains",
                    g.name
                )));
            }
            dispatcher.push(set);
        }
        if self.stateless == Some(true) && !dispatcher.is_empty() {
            return Err(ConfigError::BadDispatcher(
                "needs the transaction-stateful proxy (not stateless = true)".into(),
            ));
        }
        for (i, a) in dispatcher.iter().enumerate() {
            if dispatcher.iter().skip(i + 1).any(|b| b.name == a.name) {
                return Err(ConfigError::BadDispatcher(format!(
                    "{:?}: two sets of that name",
                    a.name
                )));
            }
            if let Some(d) = a
                .domains
                .iter()
                .find(|d| a.group.is_none() && domains.contains(d))
            {
                return Err(ConfigError::BadDispatcher(format!(
                    "{:?}: {d} is a served domain (its users are routed by the registrar)",
                    a.name
                )));
            }
        }
        Ok(Config {
            listen,
            shards,
            domains,
            upstream,
            upstream_transport,
            stateless: self.stateless.unwrap_or(false),
            io,
            log_level: self.log_level.unwrap_or_else(|| "info".to_owned()),
            log_json: match self.log_format.as_deref() {
                None | Some("text") => false,
                Some("json") => true,
                Some(other) => return Err(ConfigError::BadLogFormat(other.to_owned())),
            },
            advertise: self.advertise,
            record_route: self.record_route.unwrap_or(false),
            parse,
            recv_buffer: s.recv_buffer.unwrap_or(4 << 20),
            send_buffer: s.send_buffer.unwrap_or(4 << 20),
            steer: s.steer.unwrap_or_default(),
            data_dir: self.data_dir.unwrap_or_else(|| "sipedge-data".into()),
            fsync: self.store.as_ref().and_then(|st| st.fsync).unwrap_or(false),
            redis: self.store.as_ref().and_then(|st| {
                let url = st.url.clone()?;
                let node = st.node.clone().unwrap_or_default();
                let mut r = crate::store::redis::RedisConfig::new(&url, &node);
                if let Some(p) = &st.prefix {
                    r.prefix.clone_from(p);
                }
                if let Some(m) = st.stream_max {
                    r.stream_max = m.max(1000);
                }
                if let Some(w) = st.follow_window_ms {
                    r.follow_window_ms = w.min(1000);
                }
                r.tls_ca.clone_from(&st.tls_ca);
                Some(r)
            }),
            registrar: self.registrar.unwrap_or_default(),
            timers,
            max_transactions: proxy.max_transactions.unwrap_or(1 << 20).max(1),
            stateful_record_route: proxy.record_route.unwrap_or(true),
            large_requests_over_tcp: match proxy.large_requests.as_deref() {
                None | Some("udp") => false,
                Some("tcp") => true,
                Some(other) => return Err(ConfigError::BadLargeRequests(other.to_owned())),
            },
            coalesce_us: self
                .io_tuning
                .and_then(|i| i.coalesce_us)
                .unwrap_or(DEFAULT_COALESCE_US)
                .min(100_000),
            xdp: {
                let x = self.xdp.clone().unwrap_or_default();
                XdpConfig {
                    interface: x.interface,
                    queues: x.queues,
                    skb_mode: match x.mode.as_deref() {
                        None | Some("native" | "drv") => false,
                        Some("skb" | "generic") => true,
                        Some(other) => return Err(ConfigError::BadXdpMode(other.to_owned())),
                    },
                    zero_copy: x.zero_copy.unwrap_or(false),
                    busy_poll_us: x.busy_poll.unwrap_or(0).min(10_000),
                }
            },
            users: self.users,
            auth: self.auth.unwrap_or_default(),
            policy: self.policy.unwrap_or_default(),
            presence: self.presence.unwrap_or_default(),
            flood: self.flood,
            overload: self.overload.unwrap_or_default(),
            config_file: None,
            metrics_listen: self.metrics.as_ref().and_then(|m| m.listen),
            control_socket: self.control.and_then(|c| c.socket),
            metrics: self.metrics.and_then(|m| {
                let every = std::time::Duration::from_secs(m.interval.unwrap_or(10).max(1));
                m.file.map(|f| (f, every))
            }),
            conn: {
                let t = self.tcp.unwrap_or_default();
                let d = crate::transport::conn::ConnLimits::default();
                crate::transport::conn::ConnLimits {
                    max_connections: t.max_connections.unwrap_or(d.max_connections),
                    max_per_ip: t.max_per_ip.unwrap_or(d.max_per_ip),
                    idle_timeout: t
                        .idle_timeout
                        .map_or(d.idle_timeout, crate::time::Duration::from_secs),
                    header_timeout: t
                        .header_timeout
                        .map_or(d.header_timeout, crate::time::Duration::from_secs),
                    max_write_queue: t.max_write_queue.unwrap_or(d.max_write_queue),
                    max_message: d.max_message,
                }
            },
            tls: tls_section,
            dispatcher,
        })
    }
}

/// The transport of an upstream URI: its `;transport=` parameter, TLS for
/// `sips:`, else UDP.
pub fn upstream_transport(s: &str) -> Result<Transport, ConfigError> {
    let mut params = s.split(';');
    let base = params.next().unwrap_or_default();
    let mut t = if base.starts_with("sips:") {
        Transport::Tls
    } else {
        Transport::Udp
    };
    for p in params {
        if let Some(v) = p.strip_prefix("transport=") {
            t = Transport::from_token(v).ok_or_else(|| ConfigError::BadUpstream(s.to_owned()))?;
        }
    }
    Ok(t)
}

/// Parses `sip:HOST:PORT` (or `HOST:PORT`), resolving a name once, at start.
pub fn parse_upstream(s: &str) -> Result<SocketAddr, ConfigError> {
    let bad = || ConfigError::BadUpstream(s.to_owned());
    let rest = s
        .strip_prefix("sip:")
        .or_else(|| s.strip_prefix("sips:"))
        .unwrap_or(s);
    let rest = rest.split(';').next().unwrap_or(rest);
    if let Ok(a) = rest.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = rest
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, 5060));
    }
    let with_port = if rest.contains(':') {
        rest.to_owned()
    } else {
        format!("{rest}:5060")
    };
    with_port
        .to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_embedded_default() {
        let c = FileConfig::default().validate(2).unwrap();
        assert_eq!(c.listen, vec![Listen::parse("udp:127.0.0.1:5060").unwrap()]);
        assert_eq!(c.shards, 2);
        assert_eq!(c.domains, vec!["localhost".to_owned()]);
        assert_eq!(c.io, IoMode::Auto);
        assert_eq!(c.upstream, None);
    }

    #[test]
    fn file_then_flags() {
        let file = FileConfig::from_toml(
            "listen = [\"udp:[::1]:5070\"]\nshards = 3\ndomain = [\"Example.Test\"]\nupstream = \"sip:192.0.2.1:5080\"\nio = \"mio\"\n[parser]\nmax_headers = 64\n",
        )
        .unwrap();
        let flags = FileConfig {
            shards: Some(1),
            ..FileConfig::default()
        };
        let c = file.overridden_by(flags).validate(8).unwrap();
        assert_eq!(c.shards, 1);
        assert_eq!(c.listen[0].addr.to_string(), "[::1]:5070");
        assert_eq!(c.domains, vec!["example.test".to_owned()]);
        assert_eq!(c.upstream.unwrap().to_string(), "192.0.2.1:5080");
        assert_eq!(c.io, IoMode::Mio);
        assert_eq!(c.parse.max_headers, 64);
    }

    #[test]
    fn errors_are_clear() {
        assert!(FileConfig::from_toml("bogus = 1").is_err());
        let bad = |f: FileConfig| f.validate(1).unwrap_err().to_string();
        assert!(bad(FileConfig {
            listen: Some(vec!["sctp:1.2.3.4:5060".into()]),
            ..Default::default()
        })
        .contains("unknown transport"));
        assert!(bad(FileConfig {
            listen: Some(vec!["udp:nonsense".into()]),
            ..Default::default()
        })
        .contains("bad listen"));
        assert!(bad(FileConfig {
            shards: Some(0),
            ..Default::default()
        })
        .contains("between 1 and 64"));
        assert!(bad(FileConfig {
            io: Some("poll".into()),
            ..Default::default()
        })
        .contains("auto, uring, mio or xdp"));
        assert!(bad(FileConfig {
            xdp: Some(XdpSection {
                mode: Some("turbo".into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .contains("[xdp] mode"));
        assert!(bad(FileConfig {
            listen: Some(vec!["udp:0.0.0.0:5060".into()]),
            ..Default::default()
        })
        .contains("advertise"));
        assert_eq!(
            parse_upstream("sip:127.0.0.1:15080").unwrap().to_string(),
            "127.0.0.1:15080"
        );
        assert_eq!(
            parse_upstream("sip:127.0.0.1").unwrap().to_string(),
            "127.0.0.1:5060"
        );
        assert!(parse_upstream("sip:no-such-host.invalid:5060").is_err());
        assert_eq!(
            parse_upstream("sip:127.0.0.1:5080;transport=tcp")
                .unwrap()
                .to_string(),
            "127.0.0.1:5080"
        );
        assert_eq!(
            upstream_transport("sip:127.0.0.1:5080;transport=tcp").unwrap(),
            Transport::Tcp
        );
        assert_eq!(
            upstream_transport("sips:127.0.0.1:5081").unwrap(),
            Transport::Tls
        );
        assert_eq!(upstream_transport("sip:127.0.0.1").unwrap(), Transport::Udp);
        assert!(upstream_transport("sip:127.0.0.1;transport=sctp").is_err());
    }
}
