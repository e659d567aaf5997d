//! The command line ([`Args`], clap) and the validated run description
//! ([`Config`]) the workers read: parse, don't validate.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};

use crate::digest::Algorithm;

/// Which side(s) of the calls this process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Both: the UAC sends to --target, the UAS listens on --uas-listen.
    Both,
    /// Only originate (to --target).
    Uac,
    /// Only answer (on --uas-listen), until SIGINT/SIGTERM or --duration.
    Uas,
}

/// What one unit of load is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// INVITE → 1xx → 200 → ACK → (hold) → BYE → 200.
    Call,
    /// MESSAGE (short text body) → 200.
    Message,
    /// OPTIONS → 200.
    Options,
    /// PUBLISH (RFC 3903) of presentity `--presentity-prefix`*i*, a PIDF
    /// body: the first for a presentity is an initial publication, later
    /// ones modify it (SIP-If-Match: the SIP-ETag of the last 2xx) → 200.
    Publish,
    /// REGISTER (user*i*, digest auth when challenged) → 200.
    Register,
    /// SUBSCRIBE (RFC 6665, Event: presence) of watcher user*i* to presentity
    /// i mod --presentities → 200; the subscription is then held, and every
    /// NOTIFY in it is answered 200 and counted with its arrival time.
    Subscribe,
}

impl Scenario {
    /// Name as on the command line and in the JSON report.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Message => "message",
            Self::Options => "options",
            Self::Publish => "publish",
            Self::Register => "register",
            Self::Subscribe => "subscribe",
        }
    }

    /// A presence scenario (PUBLISH or SUBSCRIBE).
    pub fn is_presence(self) -> bool {
        matches!(self, Self::Publish | Self::Subscribe)
    }
}

/// The transport of every SIP message of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// UDP datagrams (recvmmsg/sendmmsg).
    Udp,
    /// TCP with Content-Length framing (RFC 3261 §18.3).
    Tcp,
    /// TLS over TCP (rustls).
    Tls,
    /// WebSocket (RFC 7118) over TCP.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

impl Transport {
    /// Name in a Via header (RFC 3261 §20.42, RFC 7118 §5.2).
    pub fn via(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
            Self::Ws => "WS",
            Self::Wss => "WSS",
        }
    }

    /// Lowercase name, as in a URI's `transport=` parameter and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Ws => "ws",
            Self::Wss => "wss",
        }
    }

    /// A connection-oriented transport (framed on a byte stream).
    pub fn is_stream(self) -> bool {
        self != Self::Udp
    }

    /// Carried over TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Tls | Self::Wss)
    }

    /// Carried in WebSocket frames.
    pub fn is_ws(self) -> bool {
        matches!(self, Self::Ws | Self::Wss)
    }
}

/// Digest algorithm offered by --uas-auth challenges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthAlg {
    /// MD5.
    Md5,
    /// SHA-256.
    Sha256,
}

/// sipload: a SIP load generator (UAC, UAS, or both) over UDP, TCP, TLS, WS or WSS.
///
/// Durations take a unit: 500ms, 20s, 2m (a bare number is seconds).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Args {
    /// Side(s) to play.
    #[arg(long, value_enum, default_value = "both")]
    pub role: Role,
    /// What to send.
    #[arg(long, value_enum, default_value = "call")]
    pub scenario: Scenario,
    /// Where every UAC request goes (the proxy under test, used as outbound
    /// proxy). Default with --role both: the UAS's own address (no proxy).
    #[arg(long)]
    pub target: Option<String>,
    /// UAS listen address (port 0: any free port, printed on stderr).
    #[arg(long, default_value = "127.0.0.1:5080")]
    pub uas_listen: String,
    /// Source IP of the UAC sockets (default: the kernel's route to --target).
    #[arg(long)]
    pub local_ip: Option<IpAddr>,
    /// Target rate: calls (or transactions) per second, all threads together.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Linear ramp from 0 to --rate over this time.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub ramp: Duration,
    /// How long to start new calls (the run then waits for the ones in
    /// flight). Default 10s for uac/both; for uas, how long to serve (1h).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after starting this many calls (whichever of --count and
    /// --duration comes first).
    #[arg(long)]
    pub count: Option<u64>,
    /// Worker threads, each with its own sockets.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Pin worker i to CPU list[i % len]: e.g. `0`, `2,3`, `0-3`.
    #[arg(long)]
    pub cpu: Option<String>,
    /// Calls start in bursts on multiples of this interval (fewer wake-ups,
    /// bigger sendmmsg batches); 0 paces each call on its own.
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    pub tick: Duration,
    /// After a datagram, keep polling the sockets this long before sleeping
    /// (a wake-up costs more CPU than a few empty polls); 0: sleep at once.
    #[arg(long, default_value = "0us", value_parser = parse_duration)]
    pub spin: Duration,
    /// Most calls in flight at once (all threads together).
    #[arg(long, default_value_t = 20_000)]
    pub max_inflight: u32,
    /// Time between the 200 to INVITE and the BYE; subscribe: how long the
    /// subscriptions are held once all are established.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub hold: Duration,
    /// Users `user0`..`user{N-1}`, used in turn (From of calls and messages,
    /// the REGISTER AoR, `{user}` in --request-uri).
    #[arg(long, default_value_t = 1000)]
    pub users: u32,
    /// Prefix of user names.
    #[arg(long, default_value = "user")]
    pub user_prefix: String,
    /// SIP domain of the users (default: the target's host).
    #[arg(long)]
    pub domain: Option<String>,
    /// Password of every user: answer 401/407 challenges with digest auth.
    #[arg(long)]
    pub password: Option<String>,
    /// Request-URI of calls, MESSAGE and OPTIONS; `{user}` is replaced by
    /// the user name. Default: `sip:uas@<UAS address or target>`.
    #[arg(long)]
    pub request_uri: Option<String>,
    /// Expires of REGISTER, PUBLISH and SUBSCRIBE, seconds.
    #[arg(long, default_value_t = 3600)]
    pub expires: u32,
    /// Presence: presentities `pres0`..`pres{N-1}` (--presentity-prefix);
    /// publish: the presentity of PUBLISH number i is i mod N; subscribe:
    /// watcher i subscribes to presentity i mod N.
    #[arg(long, default_value_t = 1)]
    pub presentities: u32,
    /// Prefix of presentity names.
    #[arg(long, default_value = "pres")]
    pub presentity_prefix: String,
    /// Publish: read the SIP-ETag of each presentity from this file (as
    /// written by --etags-out), so the first PUBLISH of each is a modify.
    #[arg(long)]
    pub etags_in: Option<std::path::PathBuf>,
    /// Publish: write the last SIP-ETag of each presentity to this file at
    /// the end (one `index etag` line each).
    #[arg(long)]
    pub etags_out: Option<std::path::PathBuf>,
    /// Subscribe: end the run once this many NOTIFYs beyond each
    /// subscription's first have arrived (the fan-out of a PUBLISH), or
    /// --hold after the last subscription was established, whichever is first.
    #[arg(long)]
    pub expect_notifies: Option<u64>,
    /// RFC 3261 T1 (retransmission base).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub t1: Duration,
    /// RFC 3261 T2 (retransmission cap for non-INVITE).
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    pub t2: Duration,
    /// The UAS first registers N users (user<0>..) with Contact at its own
    /// listen address, before the load starts.
    #[arg(long, default_value_t = 0)]
    pub uas_register: u32,
    /// Where the UAS sends its REGISTERs (default: --target).
    #[arg(long)]
    pub registrar: Option<String>,
    /// Rate of the UAS's registrations, per second.
    #[arg(long, default_value_t = 1000.0)]
    pub uas_register_rate: f64,
    /// The UAS challenges REGISTER (401) and INVITE/MESSAGE/OPTIONS (407)
    /// and checks the answers against --password.
    #[arg(long)]
    pub uas_auth: bool,
    /// Algorithm of --uas-auth challenges.
    #[arg(long, value_enum, default_value = "md5")]
    pub uas_auth_alg: AuthAlg,
    /// The UAS forgets a confirmed dialog that saw no BYE after this long.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub uas_dialog_timeout: Duration,
    /// Do not connect() the UAC sockets to --target (then responses may
    /// come from any address; sends cost a route lookup each).
    #[arg(long)]
    pub no_connect: bool,
    /// Transport of every message: the UAC's connections to --target and
    /// the UAS's listener on --uas-listen.
    #[arg(long, value_enum, default_value = "udp")]
    pub transport: Transport,
    /// Stream transports: UAC connections to --target, all threads
    /// together (default: one per thread); requests are spread over them.
    #[arg(long)]
    pub connections: Option<usize>,
    /// TLS (tls, wss): the UAS's certificate chain (PEM).
    #[arg(long)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// TLS (tls, wss): the UAS's private key (PEM).
    #[arg(long)]
    pub tls_key: Option<std::path::PathBuf>,
    /// TLS (tls, wss): trust anchors (PEM) for the target's certificate.
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,
    /// TLS (tls, wss): accept any certificate from the target (lab use).
    #[arg(long)]
    pub insecure: bool,
    /// Print one JSON object (see README) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Exit 0 while failed/attempted is at most this (0: any failure fails the run).
    #[arg(long, default_value_t = 0.0)]
    pub max_failure_rate: f64,
}

/// Parses `500ms`, `20s`, `2m`, `1h`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (e.g. 500ms, 20s, 2m)"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("not a duration: {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// Parses a CPU list: `0`, `1,3`, `0-3`, `0-1,4`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: usize = a.trim().parse().with_context(|| format!("bad CPU {a:?}"))?;
            let b: usize = b.trim().parse().with_context(|| format!("bad CPU {b:?}"))?;
            if a > b {
                bail!("bad CPU range {part:?}");
            }
            out.extend(a..=b);
        } else {
            out.push(part.parse().with_context(|| format!("bad CPU {part:?}"))?);
        }
    }
    if out.is_empty() {
        bail!("empty CPU list");
    }
    Ok(out)
}

fn resolve(s: &str) -> Result<SocketAddr> {
    let s = s.trim();
    let s = ["udp:", "tcp:", "tls:", "ws:", "wss:"]
        .iter()
        .find_map(|p| s.strip_prefix(p))
        .unwrap_or(s);
    let s = s.strip_prefix("sip:").unwrap_or(s);
    s.to_socket_addrs()
        .with_context(|| format!("cannot resolve {s:?} (want HOST:PORT)"))?
        .next()
        .ok_or_else(|| anyhow!("{s:?} resolves to no address"))
}

/// Reads an --etags-out file: `index etag` per line.
fn read_etags(text: &[u8]) -> Result<Vec<(u32, String)>> {
    let text = std::str::from_utf8(text).context("not UTF-8")?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (i, tag) = line
            .split_once(' ')
            .ok_or_else(|| anyhow!("line {}: want `index etag`", n + 1))?;
        let i: u32 = i
            .parse()
            .with_context(|| format!("line {}: bad index", n + 1))?;
        let tag = tag.trim();
        if tag.is_empty() || tag.bytes().any(|b| b <= b' ' || b == 0x7f) {
            bail!("line {}: bad etag", n + 1);
        }
        out.push((i, tag.to_string()));
    }
    Ok(out)
}

/// How the UAS challenges.
#[derive(Debug, Clone)]
pub struct UasAuth {
    /// Realm (the domain).
    pub realm: String,
    /// Password of every user.
    pub password: String,
    /// Algorithm offered.
    pub alg: Algorithm,
}

/// A validated run description.
#[derive(Debug, Clone)]
pub struct Config {
    /// Role.
    pub role: Role,
    /// Scenario.
    pub scenario: Scenario,
    /// Where UAC requests go.
    pub target: SocketAddr,
    /// No --target with --role both: the target is the UAS's bound address.
    pub target_is_uas: bool,
    /// The UAS listen address (port may be 0 until bound).
    pub uas_listen: SocketAddr,
    /// Source IP of the UAC.
    pub local_ip: IpAddr,
    /// Calls per second, all threads.
    pub rate: f64,
    /// Ramp time.
    pub ramp: Duration,
    /// Generation time (uac) or serving time (uas).
    pub duration: Duration,
    /// Most calls to start.
    pub count: u64,
    /// Worker threads.
    pub threads: usize,
    /// CPUs to pin to.
    pub cpus: Option<Vec<usize>>,
    /// Generation tick.
    pub tick: Duration,
    /// Busy-poll time after traffic.
    pub spin: Duration,
    /// Most calls in flight, all threads.
    pub max_inflight: u32,
    /// Hold time.
    pub hold: Duration,
    /// Number of users.
    pub users: u32,
    /// User name prefix.
    pub user_prefix: String,
    /// Domain.
    pub domain: String,
    /// Password for answering challenges.
    pub password: Option<String>,
    /// Request-URI (may hold `{user}`); None: computed once the UAS port is known.
    pub request_uri: Option<String>,
    /// REGISTER, PUBLISH and SUBSCRIBE expiry.
    pub expires: u32,
    /// Presentities.
    pub presentities: u32,
    /// Presentity name prefix.
    pub presentity_prefix: String,
    /// Publish: SIP-ETags to start from (presentity index, etag).
    pub etags_in: Option<Vec<(u32, String)>>,
    /// Publish: where to write the SIP-ETags at the end.
    pub etags_out: Option<std::path::PathBuf>,
    /// Subscribe: NOTIFYs beyond the first of each subscription that end the run.
    pub expect_notifies: Option<u64>,
    /// T1.
    pub t1: Duration,
    /// T2.
    pub t2: Duration,
    /// UAS registrations.
    pub uas_register: u32,
    /// Where they go.
    pub registrar: SocketAddr,
    /// Their rate.
    pub uas_register_rate: f64,
    /// UAS challenges.
    pub uas_auth: Option<UasAuth>,
    /// UAS dialog timeout.
    pub uas_dialog_timeout: Duration,
    /// Leave the UAC sockets unconnected.
    pub no_connect: bool,
    /// Transport.
    pub transport: Transport,
    /// UAC connections, all threads (stream transports).
    pub connections: usize,
    /// UAS certificate and key, PEM bytes (tls, wss with a UAS).
    pub tls_server: Option<(Vec<u8>, Vec<u8>)>,
    /// UAC trust anchors, PEM bytes.
    pub ca: Option<Vec<u8>>,
    /// UAC accepts any server certificate.
    pub insecure: bool,
    /// JSON report.
    pub json: bool,
    /// No progress lines.
    pub quiet: bool,
    /// Failure rate that still exits 0.
    pub max_failure_rate: f64,
}

impl Config {
    /// Validates the command line.
    pub fn from_args(a: Args) -> Result<Self> {
        let uas_listen = resolve(&a.uas_listen).context("--uas-listen")?;
        let target = match (&a.target, a.role) {
            (Some(t), _) => resolve(t).context("--target")?,
            (None, Role::Both) => uas_listen,
            (None, Role::Uas) => uas_listen,
            (None, Role::Uac) => bail!("--role uac needs --target HOST:PORT"),
        };
        let registrar = match &a.registrar {
            Some(r) => resolve(r).context("--registrar")?,
            None if a.uas_register > 0 && a.target.is_none() => {
                bail!("--uas-register needs --registrar HOST:PORT (or --target)")
            }
            None => target,
        };
        if a.role == Role::Uac && a.uas_register > 0 {
            bail!("--uas-register needs --role uas or both");
        }
        if !(a.rate.is_finite() && a.rate > 0.0) {
            bail!("--rate must be positive");
        }
        if !(a.uas_register_rate.is_finite() && a.uas_register_rate > 0.0) {
            bail!("--uas-register-rate must be positive");
        }
        if a.threads == 0 || a.threads > 64 {
            bail!("--threads must be 1..=64");
        }
        if a.users == 0 {
            bail!("--users must be at least 1");
        }
        if a.max_inflight < a.threads as u32 {
            bail!("--max-inflight must be at least --threads");
        }
        if a.t1.is_zero() || a.t2 < a.t1 {
            bail!("need 0 < --t1 <= --t2");
        }
        if !(0.0..=1.0).contains(&a.max_failure_rate) {
            bail!("--max-failure-rate is a fraction in 0..=1");
        }
        let duration = a.duration.unwrap_or(match a.role {
            Role::Uas => Duration::from_secs(3600),
            _ => Duration::from_secs(10),
        });
        let local_ip = match a.local_ip {
            Some(ip) => ip,
            None => crate::net::route_source(target)
                .with_context(|| format!("no route to --target {target}"))?,
        };
        let domain = a.domain.unwrap_or_else(|| match target.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        });
        for (name, v) in [
            ("--domain", &domain),
            ("--user-prefix", &a.user_prefix),
            ("--presentity-prefix", &a.presentity_prefix),
        ] {
            if v.is_empty() || v.bytes().any(|b| b <= b' ' || b"{}<>\"@;".contains(&b)) {
                bail!("{name} {v:?} has characters not allowed there");
            }
        }
        if let Some(u) = &a.request_uri {
            if !(u.starts_with("sip:") || u.starts_with("sips:")) || u.bytes().any(|b| b <= b' ') {
                bail!("--request-uri {u:?} is not a sip: URI");
            }
            if u.replace("{user}", "")
                .replace("{pres}", "")
                .contains(['{', '}'])
            {
                bail!("--request-uri: only {{user}} and {{pres}} may appear in braces");
            }
        }
        if let Some(p) = &a.password {
            if p.contains(['"', '\r', '\n']) {
                bail!("--password may not hold quotes or line breaks");
            }
        }
        let uas_auth = if a.uas_auth {
            let Some(password) = a.password.clone() else {
                bail!("--uas-auth needs --password");
            };
            Some(UasAuth {
                realm: domain.clone(),
                password,
                alg: match a.uas_auth_alg {
                    AuthAlg::Md5 => Algorithm::Md5,
                    AuthAlg::Sha256 => Algorithm::Sha256,
                },
            })
        } else {
            None
        };
        let cpus = a.cpu.as_deref().map(parse_cpu_list).transpose()?;
        let connections = a.connections.unwrap_or(a.threads);
        if a.transport.is_stream() && a.role != Role::Uas && connections < a.threads {
            bail!("--connections must be at least --threads");
        }
        let read = |p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let tls_server = match (&a.tls_cert, &a.tls_key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together"),
        };
        if a.transport.is_tls() && a.role != Role::Uac && tls_server.is_none() {
            bail!(
                "--transport {} with a UAS needs --tls-cert and --tls-key",
                a.transport.as_str()
            );
        }
        if a.transport.is_tls() && a.role != Role::Uas && a.ca.is_none() && !a.insecure {
            bail!(
                "--transport {} needs --ca FILE or --insecure",
                a.transport.as_str()
            );
        }
        if a.transport.is_stream() && a.uas_register > 0 {
            bail!("--uas-register is for UDP only");
        }
        if a.transport.is_stream() && a.no_connect {
            bail!("--no-connect is for UDP only");
        }
        if a.scenario.is_presence() {
            if a.transport.is_stream() {
                bail!("--scenario {} is for UDP only", a.scenario.as_str());
            }
            if a.role != Role::Uac {
                bail!("--scenario {} needs --role uac", a.scenario.as_str());
            }
        }
        if a.presentities == 0 {
            bail!("--presentities must be at least 1");
        }
        if (a.etags_in.is_some() || a.etags_out.is_some())
            && (a.scenario != Scenario::Publish || a.threads != 1)
        {
            bail!("--etags-in/--etags-out are for --scenario publish with --threads 1");
        }
        if a.expect_notifies.is_some() && a.scenario != Scenario::Subscribe {
            bail!("--expect-notifies is for --scenario subscribe");
        }
        let etags_in = match &a.etags_in {
            Some(p) => Some(read_etags(&read(p)?).with_context(|| format!("{}", p.display()))?),
            None => None,
        };
        let ca = a.ca.as_deref().map(read).transpose()?;
        Ok(Self {
            role: a.role,
            scenario: a.scenario,
            target,
            target_is_uas: a.target.is_none(),
            uas_listen,
            local_ip,
            rate: a.rate,
            ramp: a.ramp,
            duration,
            count: a.count.unwrap_or(u64::MAX),
            threads: a.threads,
            cpus,
            tick: a.tick,
            spin: a.spin,
            max_inflight: a.max_inflight,
            hold: a.hold,
            users: a.users,
            user_prefix: a.user_prefix,
            domain,
            password: a.password,
            request_uri: a.request_uri,
            expires: a.expires,
            presentities: a.presentities,
            presentity_prefix: a.presentity_prefix,
            etags_in,
            etags_out: a.etags_out,
            expect_notifies: a.expect_notifies,
            t1: a.t1,
            t2: a.t2,
            uas_register: a.uas_register,
            registrar,
            uas_register_rate: a.uas_register_rate,
            uas_auth,
            uas_dialog_timeout: a.uas_dialog_timeout,
            // NOTIFYs may come from another address than --target: a connected
            // socket would not receive them.
            no_connect: a.no_connect || a.scenario == Scenario::Subscribe,
            transport: a.transport,
            connections,
            tls_server,
            ca,
            insecure: a.insecure,
            json: a.json,
            quiet: a.quiet,
            max_failure_rate: a.max_failure_rate,
        })
    }

    /// True when this process originates load.
    pub fn has_uac(&self) -> bool {
        self.role != Role::Uas
    }

    /// True when this process answers.
    pub fn has_uas(&self) -> bool {
        self.role != Role::Uac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("").is_err());
    }

    #[test]
    fn defaults_validate() {
        let a = Args::parse_from(["sipload", "--uas-listen", "127.0.0.1:0", "--count", "5"]);
        let c = Config::from_args(a).unwrap();
        assert_eq!(c.target, c.uas_listen);
        assert_eq!(c.domain, "127.0.0.1");
        assert_eq!(c.count, 5);
        let a = Args::parse_from(["sipload", "--role", "uac"]);
        assert!(Config::from_args(a).is_err());
    }
}
