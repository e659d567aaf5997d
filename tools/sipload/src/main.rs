//! sipload: a SIP load generator (UAC, UAS, or both in one process) over
//! UDP, built to cost little CPU per call so it is not the bottleneck when
//! it measures a proxy. See README.md for flags, scenarios and the JSON
//! report.
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the command line and the validated [`config::Config`] |
//! | [`worker`] | one thread's loop: sockets, engines, timers |
//! | [`client`] | the UAC: rate schedule, call table, RFC 3261 client transactions |
//! | [`server`] | the UAS: answers, 2xx retransmission until ACK, challenges |
//! | [`template`] | pre-built messages patched per call |
//! | [`digest`] | digest auth (MD5, SHA-256) |
//! | [`id`] | call keys carried in branch / Call-ID / tags |
//! | [`wheel`] | the timer wheel |
//! | [`net`] | recvmmsg/sendmmsg batches, ppoll, pinning (the only unsafe code) |
//! | [`stream`] | TCP, TLS, WS and WSS connections on a mio poll |
//! | [`stats`] | counters, histograms, the report |
#![deny(unsafe_code)]
#![deny(
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc,
    unsafe_op_in_unsafe_fn
)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod client;
mod config;
mod digest;
mod id;
mod net;
mod server;
mod stats;
mod stream;
mod template;
mod wheel;
mod worker;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use sipedge::sip::Method;
use sipedge::transport::tls::{ClientTls, ClientVerify, ServerSettings, ServerTls};

use crate::client::{Client, Flow, Schedule, Templates};
use crate::config::{Args, Config, Role, Scenario, Transport};
use crate::stats::{ClientReport, Cpu, Datagrams, Kind, Progress, Report, WorkerStats};
use crate::stream::StreamEp;
use crate::template::Template;
use crate::worker::{Endpoint, Shared, Worker};

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sipload: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(&cfg) {
        Ok(report) => {
            if cfg.json {
                match serde_json::to_string(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("sipload: {e}"),
                }
            } else {
                print!("{}", report.table());
            }
            if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("sipload: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `ip:port`, with brackets for IPv6.
fn host_port(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v) => v.to_string(),
        SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
    }
}

/// The local address of an endpoint: the UDP socket's, the listener's, or
/// the first connection's.
fn endpoint_addr(e: &Endpoint) -> Result<SocketAddr> {
    Ok(match e {
        Endpoint::Udp(s) => net::local_addr(s)?,
        Endpoint::Stream(s) => s
            .local_addr()
            .ok_or_else(|| anyhow::anyhow!("no connection to the target"))?,
    })
}

/// A typical audio offer/answer (≈ 230 bytes, like a softphone's).
fn sdp(ip: IpAddr, port: u16) -> String {
    let (fam, addr) = match ip {
        IpAddr::V4(v) => ("IP4", v.to_string()),
        IpAddr::V6(v) => ("IP6", v.to_string()),
    };
    format!(
        "v=0\r\no=sipload 1 1 IN {fam} {addr}\r\ns=sipload\r\nc=IN {fam} {addr}\r\nt=0 0\r\n\
m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
    )
}

/// The message templates of one engine (see client::Templates).
struct Texts<'a> {
    scenario: Scenario,
    local: SocketAddr,
    domain: &'a str,
    ruri: &'a str,
    run: &'a str,
    expires: u32,
    transport: Transport,
    pres_prefix: &'a str,
}

fn templates(t: &Texts<'_>, user_prefix: &str) -> Result<Templates> {
    let local = host_port(t.local);
    let domain = t.domain;
    let run = t.run;
    let via = format!(
        "Via: SIP/2.0/{} {local};branch=z9hG4bK-sl{{key}}{{k}};rport\r\n",
        t.transport.via()
    );
    let uri_params = if t.transport.is_stream() {
        format!(";transport={}", t.transport.as_str())
    } else {
        String::new()
    };
    let from = format!("From: <sip:{{user}}@{domain}>;tag={{key}}\r\n");
    let call_id = format!("Call-ID: {{key}}-{run}@sipload\r\n");
    let (ruri, to_uri) = match t.scenario {
        Scenario::Register => (format!("sip:{domain}"), format!("sip:{{user}}@{domain}")),
        // The presentity publishes its own state (RFC 3903 §4.1: the AoR in
        // the Request-URI; From and To name it too).
        Scenario::Publish => (
            format!("sip:{{pres}}@{domain}"),
            format!("sip:{{pres}}@{domain}"),
        ),
        _ => (t.ruri.to_string(), t.ruri.to_string()),
    };
    let from = match t.scenario {
        Scenario::Publish => format!("From: <sip:{{pres}}@{domain}>;tag={{key}}\r\n"),
        _ => from,
    };
    let (method, initial) = match t.scenario {
        Scenario::Call => {
            let body = sdp(t.local.ip(), 6000);
            (
                Method::Invite,
                format!(
                    "INVITE {ruri} SIP/2.0\r\n{via}Max-Forwards: 70\r\n{from}To: <{to_uri}>\r\n{call_id}\
CSeq: {{cseq}} INVITE\r\nContact: <sip:{{user}}@{local}{uri_params}>\r\n{{auth}}Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{body}",
                    body.len()
                ),
            )
        }
        Scenario::Register => (
            Method::Register,
            format!(
                "REGISTER {ruri} SIP/2.0\r\n{via}Max-Forwards: 70\r\n{from}To: <{to_uri}>\r\n{call_id}\
CSeq: {{cseq}} REGISTER\r\nContact: <sip:{{user}}@{local}{uri_params}>\r\nExpires: {}\r\n{{auth}}Content-Length: 0\r\n\r\n",
                t.expires
            ),
        ),
        Scenario::Message => {
            let body = "Hello from sipload: a short instant message.";
            (
                Method::Message,
                format!(
                    "MESSAGE {ruri} SIP/2.0\r\n{via}Max-Forwards: 70\r\n{from}To: <{to_uri}>\r\n{call_id}\
CSeq: {{cseq}} MESSAGE\r\n{{auth}}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ),
            )
        }
        Scenario::Publish => {
            // A PIDF document (RFC 3863) naming its presentity; the note
            // differs per request, so every PUBLISH is a change of state.
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n\
<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:{{pres}}@{domain}\">\r\n\
<tuple id=\"sipload\"><status><basic>open</basic></status><note>{{key}}</note></tuple>\r\n\
</presence>\r\n"
            );
            (
                Method::Publish,
                format!(
                    "PUBLISH {ruri} SIP/2.0\r\n{via}Max-Forwards: 70\r\n{from}To: <{to_uri}>\r\n{call_id}\
CSeq: {{cseq}} PUBLISH\r\nEvent: presence\r\nExpires: {}\r\n{{extra}}{{auth}}Content-Type: application/pidf+xml\r\n\
Content-Length: {{clen}}\r\n\r\n{body}",
                    t.expires
                ),
            )
        }
        Scenario::Subscribe => (
            Method::Subscribe,
            format!(
                "SUBSCRIBE {ruri} SIP/2.0\r\n{via}Max-Forwards: 70\r\n{from}To: <{to_uri}>\r\n{call_id}\
CSeq: {{cseq}} SUBSCRIBE\r\nContact: <sip:{{user}}@{local}{uri_params}>\r\nEvent: presence\r\n\
Accept: application/pidf+xml\r\nExpires: {}\r\n{{auth}}Content-Length: 0\r\n\r\n",
                t.expires
            ),
        ),
        Scenario::Options => (
            Method::Options,
            format!(
                "OPTIONS {ruri} SIP/2.0\r\n{via}Max-Forwards: 70\r\n{from}To: <{to_uri}>\r\n{call_id}\
CSeq: {{cseq}} OPTIONS\r\n{{auth}}Accept: application/sdp\r\nContent-Length: 0\r\n\r\n"
            ),
        ),
    };
    let in_dialog = |m: &str, auth: &str| {
        format!(
            "{m} {{ruri}} SIP/2.0\r\n{via}Max-Forwards: 70\r\n{{route}}{from}To: <{to_uri}>{{totag}}\r\n{call_id}\
CSeq: {{cseq}} {m}\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    };
    let ack_non2xx = format!(
        "ACK {ruri} SIP/2.0\r\n{via}Max-Forwards: 70\r\n{from}To: <{to_uri}>{{totag}}\r\n{call_id}\
CSeq: {{cseq}} ACK\r\nContent-Length: 0\r\n\r\n"
    );
    let compile = |text: &str| -> Result<Template> {
        Ok(Template::compile(text, user_prefix)?.with_pres_prefix(t.pres_prefix))
    };
    Ok(Templates {
        initial: compile(&initial)?,
        initial_ruri: compile(&ruri)?,
        method,
        ack_2xx: compile(&in_dialog("ACK", ""))?,
        ack_non2xx: compile(&ack_non2xx)?,
        bye: compile(&in_dialog("BYE", "{auth}"))?,
    })
}

/// Shares `total` among `n` threads: thread `t`'s part.
fn share(total: u64, n: usize, t: usize) -> u64 {
    let n = n as u64;
    let t = t as u64;
    if total == u64::MAX {
        return u64::MAX;
    }
    total / n + u64::from(t < total % n)
}

fn run(cfg: &Config) -> Result<Report> {
    let mut cfg = cfg.clone();
    net::install_stop_handler();
    let epoch = Instant::now();
    let epoch_unix_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let run_id = format!(
        "{:08x}",
        (std::process::id() as u64) << 16
            ^ (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0)
                & 0xffff_ffff)
    );
    let secret = id::fnv1a(&[run_id.as_bytes(), &epoch.elapsed().as_nanos().to_le_bytes()]);

    // Sockets first, in this thread, so a port in use is a clear error.
    let tr = cfg.transport;
    let mut uas_socks: Vec<Endpoint> = Vec::new();
    let mut uas_addr = cfg.uas_listen;
    if cfg.has_uas() {
        let server_tls = match (&cfg.tls_server, tr.is_tls()) {
            (Some((cert, key)), true) => Some(
                ServerTls::new(&ServerSettings {
                    cert_pem: cert,
                    key_pem: key,
                    ca_pem: None,
                    verify_client: ClientVerify::None,
                    sni: Vec::new(),
                })
                .map_err(|e| anyhow::anyhow!("--tls-cert/--tls-key: {e}"))?,
            ),
            _ => None,
        };
        let listen = |addr: SocketAddr, reuse: bool| -> Result<Endpoint> {
            let what = || format!("cannot listen on {}:{addr}", tr.as_str());
            Ok(if tr.is_stream() {
                Endpoint::Stream(Box::new(
                    StreamEp::listen(tr, addr, reuse, server_tls.clone()).with_context(what)?,
                ))
            } else {
                Endpoint::Udp(net::udp_socket(addr, reuse).with_context(what)?)
            })
        };
        // SO_REUSEPORT would let a second process share the port silently:
        // bind once without it first, so "port in use" is an error.
        if cfg.threads > 1 && uas_addr.port() != 0 {
            drop(listen(uas_addr, false)?);
        }
        for t in 0..cfg.threads {
            let s = listen(uas_addr, cfg.threads > 1)?;
            if t == 0 {
                uas_addr = endpoint_addr(&s)?;
            }
            uas_socks.push(s);
        }
        eprintln!(
            "sipload: uas listening on {}:{}",
            tr.as_str(),
            host_port(uas_addr)
        );
        if cfg.target_is_uas {
            cfg.target = uas_addr;
        }
    }
    let cfg = &cfg;
    let mut uac_socks: Vec<Endpoint> = Vec::new();
    if cfg.has_uac() {
        let client_tls = if tr.is_tls() {
            Some(
                ClientTls::new(cfg.ca.as_deref(), !cfg.insecure, None)
                    .map_err(|e| anyhow::anyhow!("--ca: {e}"))?,
            )
        } else {
            None
        };
        for t in 0..cfg.threads {
            if tr.is_stream() {
                let n = share(cfg.connections as u64, cfg.threads, t) as usize;
                uac_socks.push(Endpoint::Stream(Box::new(StreamEp::connect(
                    tr,
                    cfg.local_ip,
                    cfg.target,
                    n,
                    client_tls.as_ref(),
                )?)));
                continue;
            }
            let s = net::udp_socket(SocketAddr::new(cfg.local_ip, 0), false)
                .with_context(|| format!("cannot open a UDP socket on {}", cfg.local_ip))?;
            if !cfg.no_connect {
                // Every datagram of the load goes to the target: a connected
                // socket skips the route lookup on each send and each receive.
                s.connect(&cfg.target.into())
                    .with_context(|| format!("cannot connect a UDP socket to {}", cfg.target))?;
            }
            uac_socks.push(Endpoint::Udp(s));
        }
    }
    if let Some(Endpoint::Udp(s)) = uac_socks.first().or(uas_socks.first()) {
        let (r, w) = net::buffer_sizes(s);
        if r < (4 << 20) || w < (4 << 20) {
            eprintln!(
                "sipload: socket buffers capped by the kernel (rcv {r}, snd {w} bytes); \
raise net.core.rmem_max/wmem_max for bursts without loss"
            );
        }
    }
    let ruri = cfg.request_uri.clone().unwrap_or_else(|| match cfg.role {
        _ if cfg.scenario.is_presence() => format!("sip:{{pres}}@{}", cfg.domain),
        Role::Uac => format!("sip:uas@{}", host_port(cfg.target)),
        _ => format!("sip:uas@{}", host_port(uas_addr)),
    });
    let t1 = cfg.t1.as_micros() as u64;
    let t2 = cfg.t2.as_micros() as u64;
    let shared = Arc::new(Shared::default());
    let flow = match cfg.scenario {
        Scenario::Call => Flow::Call,
        Scenario::Register => Flow::Single(Kind::Register),
        Scenario::Message => Flow::Single(Kind::Message),
        Scenario::Options => Flow::Single(Kind::Options),
        Scenario::Publish => Flow::Single(Kind::Publish),
        Scenario::Subscribe => Flow::Subscribe,
    };
    let drain = cfg.t1 * 64 + cfg.hold + Duration::from_secs(2);
    let mut progress = Vec::new();
    let mut handles = Vec::new();
    let mut uac_iter = uac_socks.into_iter();
    let mut uas_iter = uas_socks.into_iter();
    for t in 0..cfg.threads {
        let mut socks = Vec::new();
        let mut load = None;
        let mut register = None;
        let mut server = None;
        let mut server_sock = None;
        if let Some(s) = uac_iter.next() {
            let local = endpoint_addr(&s)?;
            let texts = Texts {
                scenario: cfg.scenario,
                local,
                domain: &cfg.domain,
                ruri: &ruri,
                run: &run_id,
                expires: cfg.expires,
                transport: tr,
                pres_prefix: &cfg.presentity_prefix,
            };
            load = Some(Client::new(client::Setup {
                index: 0,
                thread: t as u8,
                threads: cfg.threads as u32,
                flow,
                dest: if cfg.no_connect {
                    net::RawAddr::from_std(cfg.target)
                } else {
                    net::RawAddr::connected()
                },
                sock: socks.len(),
                t1,
                t2,
                reliable: tr.is_stream(),
                hold: cfg.hold.as_micros() as u64,
                users: cfg.users,
                presentities: cfg.presentities,
                expect_notifies: cfg.expect_notifies,
                etags_in: cfg.etags_in.clone(),
                etags_out: cfg.etags_out.clone(),
                user_prefix: cfg.user_prefix.clone(),
                password: cfg.password.as_ref().map(|p| p.as_bytes().to_vec()),
                templates: templates(&texts, &cfg.user_prefix)?,
                schedule: Schedule {
                    rate: cfg.rate / cfg.threads as f64,
                    ramp_us: cfg.ramp.as_micros() as f64,
                    duration_us: cfg.duration.as_micros() as u64,
                    count: share(cfg.count, cfg.threads, t),
                    max_inflight: (cfg.max_inflight / cfg.threads as u32).max(1),
                },
            }));
            socks.push(s);
        }
        if let Some(s) = uas_iter.next() {
            let local = endpoint_addr(&s)?;
            server_sock = Some(socks.len());
            server = Some(server::Server::new(server::Setup {
                thread: t as u8,
                contact: if tr.is_stream() {
                    format!(
                        "Contact: <sip:uas@{};transport={}>\r\n",
                        host_port(local),
                        tr.as_str()
                    )
                } else {
                    format!("Contact: <sip:uas@{}>\r\n", host_port(local))
                }
                .into_bytes(),
                sdp: sdp(local.ip(), 16000).into_bytes(),
                t1,
                t2,
                dialog_timeout: cfg.uas_dialog_timeout.as_micros() as u64,
                auth: cfg.uas_auth.clone(),
                secret,
            }));
            if cfg.uas_register > 0 {
                let texts = Texts {
                    scenario: Scenario::Register,
                    local,
                    domain: &cfg.domain,
                    ruri: &ruri,
                    run: &run_id,
                    expires: cfg.expires,
                    transport: tr,
                    pres_prefix: &cfg.presentity_prefix,
                };
                register = Some(Client::new(client::Setup {
                    index: 1,
                    thread: t as u8,
                    threads: cfg.threads as u32,
                    flow: Flow::Single(Kind::Register),
                    dest: net::RawAddr::from_std(cfg.registrar),
                    sock: socks.len(),
                    t1,
                    t2,
                    reliable: tr.is_stream(),
                    hold: 0,
                    users: cfg.uas_register,
                    presentities: 1,
                    expect_notifies: None,
                    etags_in: None,
                    etags_out: None,
                    user_prefix: cfg.user_prefix.clone(),
                    password: cfg.password.as_ref().map(|p| p.as_bytes().to_vec()),
                    templates: templates(&texts, &cfg.user_prefix)?,
                    schedule: Schedule {
                        rate: cfg.uas_register_rate / cfg.threads as f64,
                        ramp_us: 0.0,
                        duration_us: 3_600_000_000,
                        count: share(u64::from(cfg.uas_register), cfg.threads, t),
                        max_inflight: (cfg.max_inflight / cfg.threads as u32).max(1),
                    },
                }));
                shared.registering.fetch_add(1, Ordering::AcqRel);
            }
            socks.push(s);
        }
        if load.is_some() {
            shared.loading.fetch_add(1, Ordering::AcqRel);
        }
        let p = Arc::new(Progress::default());
        progress.push(p.clone());
        let w = Worker {
            thread: t as u8,
            socks,
            load,
            register,
            server_sock,
            server,
            cpu: cfg.cpus.as_ref().and_then(|c| c.get(t % c.len()).copied()),
            serve_for: cfg.duration,
            tick_us: (cfg.tick.as_micros() as u64).max(1),
            spin_us: cfg.spin.as_micros() as u64,
            drain,
            progress: p,
            shared: shared.clone(),
            epoch,
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("sipload-{t}"))
                .spawn(move || w.run())
                .context("cannot start a worker thread")?,
        );
    }

    // Progress lines, once a second, until every worker is done.
    let mut last = (0u64, Instant::now());
    let mut next = Instant::now() + Duration::from_secs(1);
    while handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        if Instant::now() < next {
            continue;
        }
        next += Duration::from_secs(1);
        if cfg.quiet {
            continue;
        }
        let sum = |f: fn(&Progress) -> u64| progress.iter().map(|p| f(p)).sum::<u64>();
        let attempted = sum(|p| p.attempted.load(Ordering::Relaxed));
        let now = Instant::now();
        let rate =
            (attempted - last.0.min(attempted)) as f64 / now.duration_since(last.1).as_secs_f64();
        last = (attempted, now);
        let notify = if cfg.scenario == Scenario::Subscribe {
            format!(
                "  notify {} + {}",
                sum(|p| p.notify_initial.load(Ordering::Relaxed)),
                sum(|p| p.notify_updates.load(Ordering::Relaxed))
            )
        } else {
            String::new()
        };
        eprintln!(
            "[{:7.1}s] rate {:8.0}/s  attempted {:9}  ok {:9}  failed {:6}  inflight {:6}  retrans {:6}  uas answered {:9}{notify}",
            epoch.elapsed().as_secs_f64(),
            rate,
            attempted,
            sum(|p| p.succeeded.load(Ordering::Relaxed)),
            sum(|p| p.failed.load(Ordering::Relaxed)),
            sum(|p| p.inflight.load(Ordering::Relaxed)),
            sum(|p| p.retransmissions.load(Ordering::Relaxed)),
            sum(|p| p.answered.load(Ordering::Relaxed)),
        );
    }
    let mut total = WorkerStats::new();
    for h in handles {
        match h.join() {
            Ok(s) => total.merge(&s),
            Err(_) => anyhow::bail!("a worker thread panicked"),
        }
    }
    let elapsed = epoch.elapsed().as_secs_f64();
    let (user, sys) = net::process_cpu();
    let times = Times {
        elapsed,
        user,
        sys,
        epoch_unix_us,
    };
    Ok(report(cfg, &total, uas_addr, &times))
}

/// Clocks of a finished run.
struct Times {
    /// Wall time, s.
    elapsed: f64,
    /// Process user CPU.
    user: Duration,
    /// Process system CPU.
    sys: Duration,
    /// The run's epoch as Unix time, µs.
    epoch_unix_us: u64,
}

fn report(cfg: &Config, st: &WorkerStats, uas_addr: SocketAddr, times: &Times) -> Report {
    let (elapsed, user, sys) = (times.elapsed, times.user, times.sys);
    let epoch_unix_us = times.epoch_unix_us;
    let gen_s = st.generation_us as f64 / 1e6;
    let uac = cfg.has_uac().then(|| {
        ClientReport::new(
            &st.client[0],
            gen_s,
            epoch_unix_us,
            cfg.scenario == Scenario::Subscribe,
        )
    });
    let reg_s = st.register_generation_us as f64 / 1e6;
    let uas_register = (cfg.uas_register > 0)
        .then(|| ClientReport::new(&st.client[1], reg_s, epoch_unix_us, false));
    let uas = cfg.has_uas().then(|| st.server.clone());
    let mut attempted = 0u64;
    let mut failed = 0u64;
    if cfg.has_uac() {
        attempted += st.client[0].attempted;
        failed += st.client[0].failed;
    }
    if cfg.uas_register > 0 {
        attempted += st.client[1].attempted;
        failed += st.client[1].failed;
    }
    if cfg.has_uas() {
        attempted += st.server.calls_answered;
        failed += st.server.ack_timeouts;
    }
    let failure_rate = if attempted > 0 {
        failed as f64 / attempted as f64
    } else {
        0.0
    };
    let completed = if cfg.has_uac() {
        st.client[0].succeeded
    } else if st.server.calls_completed > 0 {
        st.server.calls_completed
    } else {
        st.server.requests.values().sum()
    };
    let cpu_s = user.as_secs_f64() + sys.as_secs_f64();
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    Report {
        sipload_version: env!("CARGO_PKG_VERSION"),
        role: match cfg.role {
            Role::Both => "both",
            Role::Uac => "uac",
            Role::Uas => "uas",
        },
        scenario: cfg.scenario.as_str(),
        target: host_port(cfg.target),
        uas_listen: cfg.has_uas().then(|| host_port(uas_addr)),
        threads: cfg.threads,
        rate_target: cfg.rate,
        elapsed_s: r3(elapsed),
        epoch_unix_us,
        generation_s: r3(gen_s),
        uac,
        uas,
        uas_register,
        datagrams: Datagrams {
            sent: st.sent,
            received: st.received,
            send_dropped: st.send_dropped,
            malformed: st.malformed,
        },
        cpu: Cpu {
            user_s: r3(user.as_secs_f64()),
            system_s: r3(sys.as_secs_f64()),
            us_per_call: if completed > 0 {
                r3(cpu_s * 1e6 / completed as f64)
            } else {
                0.0
            },
        },
        failure_rate,
        passed: failure_rate <= cfg.max_failure_rate && (attempted > 0 || !cfg.has_uac()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        for (total, n) in [(10u64, 3usize), (200, 4), (1, 2)] {
            let s: u64 = (0..n).map(|t| share(total, n, t)).sum();
            assert_eq!(s, total);
        }
    }

    #[test]
    fn templates_parse_as_sip() {
        let local: SocketAddr = "127.0.0.1:5555".parse().unwrap_or_else(|_| unreachable!());
        for scenario in [
            Scenario::Call,
            Scenario::Register,
            Scenario::Message,
            Scenario::Options,
            Scenario::Publish,
            Scenario::Subscribe,
        ] {
            let t = templates(
                &Texts {
                    scenario,
                    local,
                    domain: "example.test",
                    ruri: "sip:{user}@example.test",
                    run: "abcd",
                    expires: 60,
                    transport: Transport::Udp,
                    pres_prefix: "pres",
                },
                "user",
            )
            .unwrap_or_else(|e| unreachable!("{e}"));
            let mut out = [0u8; 4096];
            let ctx = template::Ctx {
                key: b"00000000000000001",
                k: 0,
                cseq: 1,
                user: 3,
                ruri: b"sip:uas@127.0.0.1:5080",
                to_tag: b"t1",
                route: b"Route: <sip:127.0.0.1:5060;lr>\r\n",
                auth: b"",
                pres: 42,
                extra: b"SIP-If-Match: abc\r\n",
            };
            for tpl in [&t.initial, &t.ack_2xx, &t.ack_non2xx, &t.bye] {
                let n = tpl.render(&mut out, &ctx).unwrap_or(0);
                let mut idx = sipedge::sip::HeaderIndex::default();
                let m = sipedge::sip::parse(&out[..n], &mut idx);
                assert!(
                    m.is_ok(),
                    "{:?}\n{}",
                    m.err(),
                    String::from_utf8_lossy(&out[..n])
                );
            }
        }
    }
}
