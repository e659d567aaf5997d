//! The `sipedge` command: `run` (the default) starts the edge; more
//! subcommands come with their issues (`tune`, `ctl`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};

use crate::auth::{self, Authenticator, Secret, SeededEntropy, Users};
use crate::config::{Config, FileConfig};
use crate::location::Replica;
use crate::policy::{flood, overload, Policy};
use crate::presence::Presence;
use crate::proxy::guard::{Guard, Shared};
use crate::proxy::location::PartitionRegistry;
use crate::proxy::stateful::{self, Stateful};
use crate::proxy::stateless::{self, Stateless};
use crate::proxy::{Counters, Identity, Service};
use crate::registrar::{Registrar, RegistrarConfig};
use crate::shard::mesh::Mesh;
use crate::shard::ShardIo;
use crate::shard::{self, DriverKind, DriverStats};
use crate::store::{LogConfig, LogStore, Store};

pub mod tune;

/// sipedge: a carrier-grade SIP edge proxy.
#[derive(Debug, Parser)]
#[command(name = "sipedge", version, about)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the edge (the default when no subcommand is given).
    Run(Box<RunArgs>),
    /// Ask a running edge through its control socket: `stats`, `reload`,
    /// `bindings dump`, `bindings lookup AOR`.
    Ctl {
        /// The socket of `run --control`.
        #[arg(long, value_name = "PATH")]
        control: PathBuf,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
        /// The command and its arguments.
        #[arg(required = true, num_args = 1.., trailing_var_arg = true)]
        command: Vec<String>,
    },
    /// Check a config file as `run --config FILE` would read it (and the
    /// users, policy and TLS files it names), without starting anything.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Check this host against a tuning profile (socket buffers, backlog,
    /// io_uring, IRQ placement, open files); `--apply` writes the sysctls.
    Tune {
        /// The profile to compare with.
        #[arg(long, default_value = "tuning/edge.toml")]
        profile: PathBuf,
        /// Write the sysctls that differ, now and in /etc/sysctl.d (needs
        /// root); the old values go to a rollback file.
        #[arg(long)]
        apply: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Flags of `sipedge run`; a `--config` file takes the same keys, flags win.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// Listen address, `udp:IP:PORT`, `tcp:…`, `tls:…`, `ws:…` or `wss:…`
    /// (repeatable). Default udp:127.0.0.1:5060.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,
    /// Number of shards (threads, one per CPU). Default: one per allowed CPU.
    #[arg(long)]
    pub shards: Option<usize>,
    /// A domain this edge serves (repeatable). Default: localhost.
    #[arg(long, value_name = "NAME")]
    pub domain: Vec<String>,
    /// Next hop for requests not for a served domain (stateless: for everything), `sip:HOST:PORT`.
    #[arg(long, value_name = "URI")]
    pub upstream: Option<String>,
    /// Run the stateless relay.
    #[arg(long)]
    pub stateless: bool,
    /// I/O driver: auto (probe io_uring, fall back to mio), uring, mio, or
    /// xdp (AF_XDP on the listen address's interface, `[xdp]`; never chosen by auto).
    #[arg(long, value_name = "auto|uring|mio|xdp")]
    pub io: Option<String>,
    /// Log format: text (default) or json, one object per line (`log_format`).
    #[arg(long, value_name = "text|json")]
    pub log_format: Option<String>,
    /// TOML configuration file with the same keys as these flags.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Address to advertise in Via and Record-Route (for wildcard or NATed binds).
    #[arg(long, value_name = "IP")]
    pub advertise: Option<std::net::IpAddr>,
    /// Add Record-Route in stateless mode.
    #[arg(long)]
    pub record_route: bool,
    /// Directory of the registrar's durable store (default ./sipedge-data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Share bindings with the other edge nodes of the domain through Redis
    /// (or Valkey): `redis://[:password@]HOST:PORT[/DB]`, `rediss://` for TLS
    /// (`[store] url`). Instead of the embedded log in `--data-dir`.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Write counters, latencies and replication lag to this Prometheus
    /// textfile every 10 s (`[metrics] file`, `interval`).
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    /// Serve `/metrics` (Prometheus), `/health` and `/ready` over HTTP on
    /// this address (`[metrics] listen`), e.g. 127.0.0.1:9090.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Open the control socket (`sipedge ctl`) at this path, mode 0600
    /// (`[control] socket`).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Users file (TOML `[[user]]` name, domain, password or ha1_*): served
    /// domains then require digest authentication. Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// PEM certificate chain for `tls:` and `wss:` listeners (`[tls] cert`). Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert` (`[tls] key`).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

impl RunArgs {
    fn as_file_config(&self) -> FileConfig {
        FileConfig {
            listen: (!self.listen.is_empty()).then(|| self.listen.clone()),
            shards: self.shards,
            domain: (!self.domain.is_empty()).then(|| self.domain.clone()),
            upstream: self.upstream.clone(),
            stateless: self.stateless.then_some(true),
            io: self.io.clone(),
            log_level: self.log_level.clone(),
            log_format: self.log_format.clone(),
            advertise: self.advertise,
            record_route: self.record_route.then_some(true),
            parser: None,
            socket: None,
            xdp: None,
            data_dir: self.data_dir.clone(),
            registrar: None,
            store: self.store.as_ref().map(|u| crate::config::StoreSection {
                url: Some(u.clone()),
                ..Default::default()
            }),
            timers: None,
            proxy: None,
            io_tuning: None,
            users: self.users.clone(),
            auth: None,
            policy: None,
            presence: None,
            dispatcher: None,
            group: None,
            flood: None,
            overload: None,
            metrics: (self.metrics_file.is_some() || self.metrics_listen.is_some()).then(|| {
                crate::config::MetricsSection {
                    file: self.metrics_file.clone(),
                    interval: None,
                    listen: self.metrics_listen,
                }
            }),
            control: self
                .control
                .as_ref()
                .map(|p| crate::config::ControlSection {
                    socket: Some(p.clone()),
                }),
            tls: (self.tls_cert.is_some() || self.tls_key.is_some()).then(|| {
                crate::config::TlsSection {
                    cert: self.tls_cert.clone(),
                    key: self.tls_key.clone(),
                    ..Default::default()
                }
            }),
            tcp: None,
        }
    }

    /// The validated configuration: file (if any), then flags.
    pub fn config(&self) -> Result<Config> {
        let file = match &self.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let cpus = shard::affinity::allowed_cpus()
            .map(|c| c.len())
            .unwrap_or(1);
        let mut cfg = file.overridden_by(self.as_file_config()).validate(cpus)?;
        cfg.config_file = self.config.clone();
        Ok(cfg)
    }
}

/// Entry point of the binary.
pub fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        None => run(&RunArgs::default()),
        Some(Command::Run(args)) => run(&args),
        Some(Command::Tune {
            profile,
            apply,
            json,
        }) => tune::run(&profile, apply, json).map(|_| ()),
        Some(Command::Ctl {
            control,
            json,
            command,
        }) => crate::control::client(&control, &command, json),
        Some(Command::CheckConfig { file }) => check_config(&file),
    }
}

/// `sipedge check-config FILE`: everything `run` validates before it binds
/// (the file, the users file, the policy, the TLS files); one line.
fn check_config(file: &std::path::Path) -> Result<()> {
    let args = RunArgs {
        config: Some(file.to_owned()),
        ..RunArgs::default()
    };
    let cfg = args.config()?;
    let (users, policy) = users_and_policy(&cfg)?;
    auth::Config::from_section(&cfg.auth).context("[auth]")?;
    if let Some(f) = &cfg.flood {
        flood::Config::from_section(f, policy.networks()).context("[flood]")?;
    }
    overload::Config::from_section(&cfg.overload).context("[overload]")?;
    // The certificate files, whenever any is named (the CA serves outbound
    // TLS too), not only with a stream listener.
    if cfg.listen.iter().any(|l| l.transport.is_stream())
        || cfg.tls.cert.is_some()
        || cfg.tls.ca.is_some()
    {
        load_tls(&cfg.tls)?;
    }
    println!(
        "{}: ok ({} listener(s), domains {}, {})",
        file.display(),
        cfg.listen.len(),
        cfg.domains.join(","),
        users.map_or("no users file".to_owned(), |u| format!(
            "{} user(s)",
            u.len()
        ))
    );
    Ok(())
}

type LogFilter =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The running log filter, changed by a reload.
static LOG_FILTER: std::sync::OnceLock<LogFilter> = std::sync::OnceLock::new();

fn init_logging(level: &str, json: bool) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let ok = if json {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.json())
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())))
            .try_init()
    };
    if ok.is_ok() {
        let _ = LOG_FILTER.set(handle);
    }
}

/// A reload's new log level.
fn set_log_level(level: &str) -> Result<()> {
    let f = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| anyhow!("log_level {level:?}: {e}"))?;
    LOG_FILTER
        .get()
        .ok_or_else(|| anyhow!("logging was not set up by this process"))?
        .reload(f)
        .map_err(|e| anyhow!("{e}"))
}

/// Runs the edge until SIGINT or SIGTERM.
pub fn run(args: &RunArgs) -> Result<()> {
    run_with(args, None)
}

/// [`run`] with routing hooks (sipedge embedded in another program: see
/// [`crate::proxy::hooks`] and `examples/least_loaded.rs`); each shard gets
/// its own instance from `hooks`. Hooks need the stateful proxy.
pub fn run_with(args: &RunArgs, hooks: Option<crate::proxy::hooks::HookFactory>) -> Result<()> {
    let cfg = args.config()?;
    if hooks.is_some() && cfg.stateless {
        bail!("routing hooks need the transaction-stateful proxy (not --stateless)");
    }
    init_logging(&cfg.log_level, cfg.log_json);
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("cannot install signal handlers")?;
    }
    let (driver, fallback) = DriverKind::choose(cfg.io).map_err(|e| anyhow!("--io uring: {e}"))?;
    let mut warnings = Vec::new();
    let mut plans = shard::plan(&cfg, &mut warnings)?;
    // Held until the shards stop: dropping it detaches the XDP program.
    let xdp = if driver == DriverKind::Xdp {
        Some(shard::xdp::prepare(&cfg, &mut plans).map_err(|e| anyhow!(e))?)
    } else {
        None
    };
    let secret = startup_secret();
    let listen: Vec<String> = plans
        .first()
        .map(|p| {
            p.locals
                .iter()
                .filter(|l| l.role == crate::proxy::SocketRole::Public)
                .map(|l| format!("{}:{}", l.transport.param(), l.addr))
                .collect()
        })
        .unwrap_or_default();
    let cpus: Vec<String> = plans
        .iter()
        .filter_map(|p| p.cpu.map(|c| c.to_string()))
        .collect();
    let mode = if cfg.stateless {
        "stateless relay"
    } else {
        "transaction-stateful proxy"
    };
    // Logged once the shards run (after the store and users file are loaded).
    let started = format!(
        "sipedge {} started: io={} shards={} (cpus {}) listen={} mode={} domains={} upstream={}",
        env!("CARGO_PKG_VERSION"),
        driver.name(),
        plans.len(),
        cpus.join(","),
        listen.join(","),
        mode,
        cfg.domains.join(","),
        cfg.upstream
            .map_or_else(|| "none".to_owned(), |u| u.to_string()),
    );
    if let Some(why) = fallback {
        tracing::info!("io_uring not used ({why}); running the mio driver");
    }
    if let Some(x) = &xdp {
        tracing::info!(
            "af_xdp on {} ({} mode, {}): XDP program of {} instructions steers UDP to the listen addresses",
            x.interface,
            if x.native { "native" } else { "skb" },
            if x.zero_copy { "zero-copy" } else { "copy" },
            x.steering.insns
        );
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let slots: Vec<Arc<std::sync::Mutex<shard::ShardReport>>> =
        plans.iter().map(|_| Arc::default()).collect();
    for (p, s) in plans.iter_mut().zip(&slots) {
        p.io.get_or_insert_with(ShardIo::none).metrics = Some(s.clone());
    }
    let health = Arc::new(crate::metrics::Health::default());
    let reports = crate::metrics::Reports::new(slots.clone(), health.clone());
    // Bound before the shards start: a taken port or socket fails start-up,
    // not later (and the umask the control socket is made with is not
    // changed under another thread).
    let control_listener = cfg
        .control_socket
        .as_deref()
        .map(crate::control::bind)
        .transpose()?;
    let metrics_listener = cfg
        .metrics_listen
        .map(|a| {
            std::net::TcpListener::bind(a)
                .with_context(|| format!("cannot listen for metrics on {a}"))
        })
        .transpose()?;
    let tls = if cfg.listen.iter().any(|l| l.transport.is_stream()) {
        let (server, client) = load_tls(&cfg.tls)?;
        let t = shard::streams::TlsReload::new(server, client);
        for p in plans.iter_mut() {
            p.tls = Some(t.clone());
        }
        Some(t)
    } else {
        None
    };
    let mut shared: Option<Arc<Shared>> = None;
    let mut control_inboxes = Vec::new();
    let handles = if cfg.stateless {
        let relay_cfg = stateless::Config {
            upstream: cfg.upstream,
            upstream_transport: cfg.upstream_transport,
            record_route: cfg.record_route,
            parse: cfg.parse.clone(),
        };
        // `[flood]` applies to the relay too (the other checks need the
        // stateful proxy: answering 401/403 is a transaction's job).
        let flood_cfg = match &cfg.flood {
            Some(f) => {
                let policy =
                    Policy::compile(&cfg.policy, &cfg.domains, false).context("[policy]")?;
                Some(flood::Config::from_section(f, policy.networks()).context("[flood]")?)
            }
            None => None,
        };
        spawn_with(plans, driver, &cfg, secret, &stop, move |id| {
            let relay = Stateless::new(id, relay_cfg.clone());
            match &flood_cfg {
                Some(f) => relay.with_flood(flood::Flood::new(f, os_random())),
                None => relay,
            }
        })?
    } else {
        let (h, s, inboxes) =
            start_stateful(plans, driver, &cfg, secret, &stop, &health, hooks.as_ref())?;
        shared = Some(s);
        control_inboxes = inboxes;
        h
    };
    tracing::info!("{started}");
    let metrics_stop = Arc::new(AtomicBool::new(false));
    let metrics_thread = match metrics_listener {
        Some(l) => {
            let addr = l.local_addr().ok();
            let (r, h, st) = (reports.clone(), health.clone(), metrics_stop.clone());
            let t = std::thread::Builder::new()
                .name("sipedge-metrics".into())
                .spawn(move || crate::metrics::http::serve(l, r, h, st))
                .context("cannot start the metrics thread")?;
            if let Some(a) = addr {
                tracing::info!("metrics on http://{a}/metrics (and /health, /ready)");
            }
            Some(t)
        }
        None => None,
    };
    let (reload_tx, reload_rx) = std::sync::mpsc::channel::<crate::control::ReloadRequest>();
    let control_thread = match (control_listener, &cfg.control_socket) {
        (Some(l), Some(path)) => {
            let ctl = crate::control::Control {
                slots: slots.clone(),
                shards: control_inboxes,
                reload: reload_tx,
            };
            let (p, st) = (path.clone(), metrics_stop.clone());
            let t = std::thread::Builder::new()
                .name("sipedge-control".into())
                .spawn(move || crate::control::serve(l, p, ctl, st))
                .context("cannot start the control thread")?;
            tracing::info!("control socket {}", path.display());
            Some(t)
        }
        _ => {
            drop(reload_tx);
            None
        }
    };
    health.ready.store(true, Ordering::Release);
    // Wait for the shards; reload users and policy on SIGHUP meanwhile.
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .context("cannot install the SIGHUP handler")?;
    let mut running_limits = format!("{:?}{:?}", cfg.flood, cfg.overload);
    let mut running_auth = format!("{:?}", cfg.auth);
    let mut last_metrics = std::time::Instant::now();
    let (mut trimmer, mut last_trim_check) = (shard::trim::Trimmer::default(), last_metrics);
    while !handles.iter().all(std::thread::JoinHandle::is_finished) {
        if handles.iter().any(std::thread::JoinHandle::is_finished) {
            health.shard_down.store(true, Ordering::Release);
        }
        if last_trim_check.elapsed() >= std::time::Duration::from_secs(1) {
            last_trim_check = std::time::Instant::now();
            let (live, compactions) = slots
                .iter()
                .filter_map(|s| {
                    s.lock()
                        .ok()
                        .map(|r| (r.service.transactions_live, r.io.compactions))
                })
                .fold((0, 0), |(l, c), (a, b)| (l + a, c + b));
            if trimmer.observe(live, compactions, last_trim_check)
                && shard::trim::release_free_memory()
            {
                tracing::info!(
                    "heap trimmed after a burst or a compaction ({live} live transactions) in {:?}",
                    last_trim_check.elapsed()
                );
            }
        }
        if let Some((file, every)) = &cfg.metrics {
            if last_metrics.elapsed() >= *every {
                last_metrics = std::time::Instant::now();
                if let Err(e) = crate::metrics::write_file(&reports, file) {
                    tracing::warn!("cannot write metrics to {}: {e}", file.display());
                }
            }
        }
        let from_ctl = reload_rx.try_recv().ok();
        if hup.swap(false, Ordering::Relaxed) || from_ctl.is_some() {
            let who = if from_ctl.is_some() {
                "ctl reload"
            } else {
                "SIGHUP"
            };
            // Everything is read and checked first, then applied at once:
            // a reload changes all it may or nothing.
            let prepared = (|| -> Result<_> {
                let c = args.config()?;
                let blocked = cfg.restart_only_changes(&c);
                if !blocked.is_empty() {
                    return Err(anyhow!("needs a restart: {} changed", blocked.join(", ")));
                }
                let up = match &shared {
                    Some(_) => Some(users_and_policy(&c)?),
                    None => None,
                };
                let limits = match &up {
                    Some((_, policy))
                        if format!("{:?}{:?}", c.flood, c.overload) != running_limits =>
                    {
                        Some(crate::proxy::guard::Limits {
                            flood: match &c.flood {
                                Some(f) => Some(
                                    flood::Config::from_section(f, policy.networks())
                                        .context("[flood]")?,
                                ),
                                None => None,
                            },
                            overload: overload::Config::from_section(&c.overload)
                                .context("[overload]")?,
                            seed: os_random(),
                        })
                    }
                    _ => None,
                };
                let auth = match &shared {
                    Some(s) if format!("{:?}", c.auth) != running_auth => {
                        let cfg = auth::Config::from_section(&c.auth).context("[auth]")?;
                        let running = s.auth_settings();
                        // The configured secret; without one, the one in use
                        // (drawn at start), unless it was a configured one
                        // just removed: then a fresh one.
                        let secret = match (&cfg.secret, &running) {
                            (Some(x), _) => x.clone(),
                            (None, Some(r)) if r.cfg.secret.is_none() => r.secret.clone(),
                            (None, _) => Secret::generate(&mut SeededEntropy::new(os_random())),
                        };
                        Some(crate::proxy::guard::AuthSettings::new(
                            cfg,
                            secret,
                            running.as_deref(),
                            os_random(),
                        ))
                    }
                    _ => None,
                };
                let certs = match &tls {
                    Some(_) => Some(load_tls(&c.tls)?),
                    None => None,
                };
                Ok((c, up, limits, auth, certs))
            })();
            let mut done: Vec<&str> = Vec::new();
            let mut refused: Vec<String> = Vec::new();
            match prepared {
                Ok((c, up, limits, auth, certs)) => {
                    if let (Some(s), Some(a)) = (&shared, auth) {
                        s.publish_auth(a);
                        running_auth = format!("{:?}", c.auth);
                        done.push("[auth]");
                        tracing::info!("{who}: [auth] reloaded (nonces in use stay replay-safe; some may draw one stale challenge)");
                    }
                    if let (Some(s), Some((users, policy))) = (&shared, up) {
                        s.publish_watchers(crate::proxy::guard::Watchers {
                            rules: c.presence.rule.clone(),
                            others: c.presence.others,
                        });
                        if let Some(l) = limits {
                            s.publish_limits(l);
                            running_limits = format!("{:?}{:?}", c.flood, c.overload);
                            done.push("[flood] and [overload]");
                            tracing::info!("{who}: [flood] and [overload] reloaded (rates and bans start afresh)");
                        }
                        s.publish(users, policy);
                        done.push("users, policy, presence watcher rules");
                        tracing::info!(
                            "{who}: users and policy reloaded (presence watcher rules too)"
                        );
                    }
                    if let (Some(t), Some((server, client))) = (&tls, certs) {
                        t.set(server, client);
                        done.push("TLS certificates");
                        tracing::info!("{who}: TLS certificates reloaded");
                    }
                    if c.log_level != cfg.log_level {
                        match set_log_level(&c.log_level) {
                            Ok(()) => {
                                done.push("log level");
                                tracing::info!("{who}: log level now {}", c.log_level);
                            }
                            Err(e) => refused.push(format!("log level: {e:#}")),
                        }
                    }
                    if done.is_empty() {
                        tracing::info!("{who}: nothing to reload in stateless mode");
                    }
                }
                Err(e) => {
                    tracing::error!(
                        "{who}: reload refused, the running configuration stays: {e:#}"
                    );
                    refused.push(format!("{e:#}"));
                }
            }
            if let Some(answer) = from_ctl {
                let _ = answer.try_send(if refused.is_empty() {
                    Ok(if done.is_empty() {
                        "nothing (stateless mode)".to_owned()
                    } else {
                        done.join("; ")
                    })
                } else {
                    Err(refused.join("; "))
                });
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    health.ready.store(false, Ordering::Release);
    metrics_stop.store(true, Ordering::Relaxed);
    if let Some(t) = metrics_thread {
        let _ = t.join();
    }
    if let Some(t) = control_thread {
        let _ = t.join();
    }
    let mut driver_total = DriverStats::default();
    let mut counters = Counters::default();
    let mut conn = crate::transport::conn::ConnStats::default();
    let mut failed = false;
    let mut lag: Option<hdrhistogram::Histogram<u64>> = None;
    for h in handles {
        match h.join() {
            Ok(Ok(r)) => {
                driver_total.add(&r.driver);
                counters.add(&r.service);
                conn.add(&r.conn);
                if let Some(l) = &r.lag {
                    match &mut lag {
                        Some(total) => {
                            let _ = hdrhistogram::Histogram::add(total, l);
                        }
                        None => lag = Some(l.clone()),
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::error!("shard failed: {e}");
                failed = true;
                stop.store(true, Ordering::Relaxed);
            }
            Err(_) => {
                tracing::error!("shard thread panicked");
                failed = true;
                stop.store(true, Ordering::Relaxed);
            }
        }
    }
    if let Some(l) = &lag {
        if !l.is_empty() {
            tracing::info!(
                "sipedge_location_replication_lag_seconds p50={:.6} p99={:.6} max={:.6} (records={})",
                l.value_at_quantile(0.5) as f64 / 1e6,
                l.value_at_quantile(0.99) as f64 / 1e6,
                l.max() as f64 / 1e6,
                l.len()
            );
        }
    }
    tracing::info!(
        "stopped: rx={} tx={} turns={} rx_errors={} tx_errors={} tx_dropped={}",
        driver_total.rx,
        driver_total.tx,
        driver_total.turns,
        driver_total.rx_errors,
        driver_total.tx_errors,
        driver_total.tx_dropped
    );
    if driver == DriverKind::Xdp {
        tracing::info!(
            "af_xdp: received={} sent={} sent_by_kernel={} skipped={}",
            driver_total.xdp_rx,
            driver_total.xdp_tx,
            driver_total.xdp_kernel_tx,
            driver_total.xdp_skipped
        );
    }
    for (name, v) in counters
        .pairs()
        .into_iter()
        .chain(counters.presence.pairs())
        .chain(counters.auth_pairs())
        .chain(conn.pairs())
    {
        if v > 0 {
            tracing::info!("{name} {v}");
        }
    }
    if failed {
        return Err(anyhow!("a shard failed"));
    }
    Ok(())
}

/// This node's name in a shared store when `[store] node` is not set: the
/// host name and the first listener's port.
fn default_node_name(cfg: &Config) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "sipedge".to_owned());
    match cfg.listen.first().map_or(5060, |l| l.addr.port()) {
        // An ephemeral port names nothing stable: the process does.
        0 => format!("{host}:pid{}", std::process::id()),
        port => format!("{host}:{port}"),
    }
}

/// `url` without its password, for the log.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// The stateful edge: opens the registrar's store, loads every partition,
/// and gives each shard its registrar partition, a replica of all of them,
/// its store and its end of the mesh.
fn start_stateful(
    mut plans: Vec<shard::ShardPlan>,
    driver: DriverKind,
    cfg: &Config,
    secret: u64,
    stop: &Arc<AtomicBool>,
    health: &crate::metrics::Health,
    hooks: Option<&crate::proxy::hooks::HookFactory>,
) -> Result<(Handles, Arc<Shared>, Vec<Arc<shard::control::Inbox>>)> {
    let n = u16::try_from(plans.len()).unwrap_or(u16::MAX);
    let mut inboxes = Vec::with_capacity(plans.len());
    let mut remotes = Vec::with_capacity(plans.len());
    let wall = shard::Clock::new().wall_us();
    let redis = cfg.redis.clone().map(|mut r| {
        if r.node.is_empty() {
            r.node = default_node_name(cfg);
        }
        r
    });
    let (states, mut stores, follow_from) = match &redis {
        Some(r) => {
            let t0 = std::time::Instant::now();
            let (states, pos) = crate::store::redis::load(r, n, wall)
                .with_context(|| format!("cannot load the bindings from {}", redact(&r.url)))?;
            let bindings: usize = states.iter().map(|s| s.bindings.len()).sum();
            tracing::info!(
                "shared store {} (node {:?}): {bindings} binding(s) loaded in {:?}, following its change stream from {}",
                redact(&r.url),
                r.node,
                t0.elapsed(),
                pos.0
            );
            let status = Arc::new(crate::store::redis::Status::default());
            status.up.store(true, Ordering::Relaxed);
            let _ = health.shared_store.set(status.clone());
            let stores: Vec<Option<Box<dyn Store + Send>>> = (0..n)
                .map(|_| {
                    Some(Box::new(crate::store::redis::RedisStore::new(
                        r.clone(),
                        status.clone(),
                    )) as Box<dyn Store + Send>)
                })
                .collect();
            (states, stores, Some((r.clone(), pos, status)))
        }
        None => {
            let log_cfg = LogConfig {
                data_dir: cfg.data_dir.clone(),
                fsync: cfg.fsync,
                ..LogConfig::default()
            };
            let mut store = LogStore::open(&log_cfg, n).with_context(|| {
                format!(
                    "cannot open the registrar store in {}",
                    cfg.data_dir.display()
                )
            })?;
            let states = store.load(wall).with_context(|| {
                format!(
                    "cannot load the registrar store in {}",
                    cfg.data_dir.display()
                )
            })?;
            let bindings: usize = states.iter().map(|s| s.bindings.len()).sum();
            tracing::info!(
                "registrar store {}: {} partition(s), {bindings} binding(s) loaded",
                cfg.data_dir.display(),
                states.len()
            );
            for r in store.reports() {
                tracing::debug!("store report: {r:?}");
                if r.discarded_bytes > 0 {
                    // A crash mid-write, or a corrupt block: the tail after
                    // the last good frame was cut (it was never acknowledged).
                    tracing::warn!(
                        "registrar store {}: partition {}: a torn or corrupt tail of {} byte(s) cut after frame {} (seq {})",
                        cfg.data_dir.display(),
                        r.partition,
                        r.discarded_bytes,
                        r.frames,
                        r.seq
                    );
                }
            }
            let stores: Vec<Option<Box<dyn Store + Send>>> = store
                .split()
                .into_iter()
                .map(|s| Some(Box::new(s) as Box<dyn Store + Send>))
                .collect();
            (states, stores, None)
        }
    };
    let mut meshes: Vec<Option<Mesh<stateful::MeshMsg>>> = if n > 1 {
        Mesh::build(usize::from(n), 65_536)?
            .into_iter()
            .map(Some)
            .collect()
    } else {
        Vec::new()
    };
    for (i, plan) in plans.iter_mut().enumerate() {
        let store = stores.get_mut(i).and_then(Option::take);
        let mesh = meshes.get_mut(i).and_then(Option::take);
        let metrics = plan.io.take().and_then(|io| io.metrics);
        let mut io = ShardIo::new(mesh, store, plan.id)?;
        io.metrics = metrics;
        inboxes.extend(io.control());
        remotes.extend(io.remote());
        plan.io = Some(io);
    }
    if let Some((r, pos, status)) = follow_from {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("sipedge-follow".into())
            .spawn(move || crate::store::redis::follow(&r, pos, &remotes, &status, &stop))
            .context("cannot start the Redis follower thread")?;
    }
    let reg = &cfg.registrar;
    let d = RegistrarConfig::default();
    let reg_cfg = RegistrarConfig {
        domains: cfg
            .domains
            .iter()
            .map(|x| x.as_bytes().to_vec().into_boxed_slice())
            .collect(),
        min_expires: reg.min_expires.unwrap_or(d.min_expires),
        max_expires: reg.max_expires.unwrap_or(d.max_expires),
        default_expires: reg.default_expires.unwrap_or(d.default_expires),
        max_contacts: reg.max_contacts.unwrap_or(d.max_contacts),
        max_bindings: reg.max_bindings.unwrap_or(d.max_bindings),
        outbound: reg.outbound.unwrap_or(true),
        flow_timer: reg.flow_timer.unwrap_or(d.flow_timer).max(1),
        tag_secret: secret,
        ..d
    };
    let sec = Security::load(cfg, redis.as_ref())?;
    let proxy_cfg = stateful::Config {
        upstream: cfg.upstream,
        upstream_transport: cfg.upstream_transport,
        record_route: cfg.stateful_record_route,
        large_requests_over_tcp: cfg.large_requests_over_tcp,
        timers: cfg.timers,
        max_transactions: cfg.max_transactions,
        parse: cfg.parse.clone(),
        shared_store: redis.is_some(),
        ..stateful::Config::default()
    };
    let now = crate::time::Instant::ZERO;
    let mut failure = None;
    let handles = spawn_with(plans, driver, cfg, secret, stop, |id| {
        let me = id.shard_id;
        let replica = Replica::from_states(n, secret, &states).unwrap_or_else(|e| {
            failure.get_or_insert(format!("replica of shard {me}: {e}"));
            Replica::new(n, secret)
        });
        let state = states
            .iter()
            .find(|s| s.partition == me)
            .cloned()
            .unwrap_or_else(|| crate::location::PartitionState {
                partition: me,
                ..Default::default()
            });
        let mut pres_cfg = cfg.presence.clone();
        pres_cfg.secret = secret ^ 0x7072_6573_656e_6365;
        pres_cfg.contacts = id.sockets.iter().map(contact_uri).collect();
        let presence = Presence::from_entries(pres_cfg, me, &state.entries, now, wall);
        let registrar = Registrar::from_state(reg_cfg.clone(), n, state, now, wall);
        let guard = sec.guard(me, &cfg.domains);
        let p = Stateful::new(
            id,
            proxy_cfg.clone(),
            replica,
            PartitionRegistry::with_presence(registrar, presence, n, me),
        )
        .with_shards(n)
        .with_guard(guard)
        .with_dispatcher(&cfg.dispatcher);
        match hooks {
            Some(f) => p.with_hooks(f(me)),
            None => p,
        }
    })?;
    if let Some(f) = failure {
        stop.store(true, Ordering::Relaxed);
        return Err(anyhow!("cannot start: {f}"));
    }
    Ok((handles, sec.shared.clone(), inboxes))
}

/// Reads the `[tls]` files: the server configuration (when a certificate is
/// set) and the client one for outbound TLS.
fn load_tls(
    t: &crate::config::TlsSection,
) -> Result<(
    Option<crate::transport::tls::ServerTls>,
    Option<crate::transport::tls::ClientTls>,
)> {
    use crate::transport::tls::{ClientTls, ClientVerify, ServerSettings, ServerTls, SniCert};
    let read = |p: &std::path::Path| {
        std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let ca = t.ca.as_deref().map(read).transpose()?;
    let server = match (&t.cert, &t.key) {
        (Some(c), Some(k)) => {
            let cert = read(c)?;
            let key = read(k)?;
            let sni_files = t
                .sni
                .iter()
                .map(|s| Ok((s.domain.clone(), read(&s.cert)?, read(&s.key)?)))
                .collect::<Result<Vec<_>>>()?;
            let settings = ServerSettings {
                cert_pem: &cert,
                key_pem: &key,
                ca_pem: ca.as_deref(),
                verify_client: match t.verify_client.as_deref() {
                    Some("required") => ClientVerify::Required,
                    Some("optional") => ClientVerify::Optional,
                    _ => ClientVerify::None,
                },
                sni: sni_files
                    .iter()
                    .map(|(d, c, k)| SniCert {
                        domain: d,
                        cert_pem: c,
                        key_pem: k,
                    })
                    .collect(),
            };
            Some(ServerTls::new(&settings).context("[tls]")?)
        }
        _ => None,
    };
    let client = ClientTls::new(ca.as_deref(), t.verify_server.unwrap_or(true), None)
        .context("[tls] client")?;
    Ok((server, Some(client)))
}

/// The security set-up shared by the shards: users, policy, the nonce
/// secret, and the settings each shard builds its checks from.
struct Security {
    users: Option<Arc<Users>>,
    policy: Arc<Policy>,
    secret: Secret,
    auth: auth::Config,
    flood: Option<flood::Config>,
    overload: overload::Config,
    shared: Arc<Shared>,
    /// The failed-auth throttle of sources the shards share.
    sources: Arc<crate::policy::rate::SharedRate>,
}

/// 64 random bits from the OS (seeds and secrets are not hot-path values).
fn os_random() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        return startup_secret();
    }
    u64::from_le_bytes(b)
}

/// Reads the users file and compiles the policy (at start and on SIGHUP).
fn users_and_policy(cfg: &Config) -> Result<(Option<Arc<Users>>, Arc<Policy>)> {
    let users = match &cfg.users {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read users file {}", path.display()))?;
            let users = Users::from_toml(&text)
                .with_context(|| format!("users file {}", path.display()))?;
            Some(Arc::new(users))
        }
        None => None,
    };
    let policy = Policy::compile(&cfg.policy, &cfg.domains, users.is_some()).context("[policy]")?;
    Ok((users, Arc::new(policy)))
}

impl Security {
    fn load(cfg: &Config, redis: Option<&crate::store::redis::RedisConfig>) -> Result<Self> {
        let (users, policy) = users_and_policy(cfg)?;
        let auth = auth::Config::from_section(&cfg.auth).context("[auth]")?;
        let secret = match (auth.secret.clone(), redis) {
            (Some(s), _) => s,
            // Nodes sharing a store share a nonce secret: a challenge from
            // one verifies on another.
            (None, Some(r)) => {
                let mut mine = [0u8; 32];
                for c in mine.chunks_mut(8) {
                    c.copy_from_slice(&os_random().to_le_bytes());
                }
                let got = crate::store::redis::shared_secret(r, &mine)
                    .context("cannot read the shared nonce secret from Redis")?;
                Secret::new(got)
            }
            (None, None) => {
                let mut seed = SeededEntropy::new(os_random());
                Secret::generate(&mut seed)
            }
        };
        let flood = match &cfg.flood {
            Some(f) => Some(flood::Config::from_section(f, policy.networks()).context("[flood]")?),
            None => None,
        };
        let overload = overload::Config::from_section(&cfg.overload).context("[overload]")?;
        if let Some(u) = &users {
            tracing::info!("digest authentication on: {} user(s)", u.len());
        }
        let shared = Arc::new(Shared::new(users.clone(), policy.clone()));
        let settings =
            crate::proxy::guard::AuthSettings::new(auth.clone(), secret.clone(), None, os_random());
        let sources = settings.sources.clone();
        shared.publish_auth(settings);
        Ok(Self {
            shared,
            users,
            policy,
            secret,
            auth,
            flood,
            overload,
            sources,
        })
    }

    /// The checks of shard `me`.
    fn guard(&self, me: u16, domains: &[String]) -> Guard {
        let auth = self.users.as_ref().map(|u| {
            let cfg = auth::Config {
                issuer: me,
                ..self.auth.clone()
            };
            let mut entropy = SeededEntropy::new(os_random());
            let mut a = Authenticator::new(cfg, domains, u.clone(), &self.secret, &mut entropy);
            a.share_sources(self.sources.clone());
            a
        });
        Guard::new(
            self.policy.clone(),
            auth,
            self.flood
                .as_ref()
                .map(|f| flood::Flood::new(f, os_random())),
            Some(overload::Overload::new(self.overload.clone(), os_random())),
            Some(self.shared.clone()),
        )
    }
}

type Handles = Vec<std::thread::JoinHandle<std::io::Result<shard::ShardReport>>>;

fn spawn_with<S, F>(
    plans: Vec<shard::ShardPlan>,
    driver: DriverKind,
    cfg: &Config,
    secret: u64,
    stop: &Arc<AtomicBool>,
    make: F,
) -> Result<Handles>
where
    S: Service + Send + 'static,
    F: FnMut(Identity) -> S,
{
    Ok(shard::spawn(
        plans,
        driver,
        cfg,
        secret,
        stop.clone(),
        make,
    )?)
}

/// A per-process secret for branch and tag hashes (not a key that protects
/// anything: it makes our branches unpredictable across restarts).
fn startup_secret() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// Our Contact URI for dialogs on listener `s` (presence subscriptions).
fn contact_uri(s: &crate::proxy::LocalSocket) -> Box<[u8]> {
    let mut u = b"sip:".to_vec();
    u.extend_from_slice(s.uri_host());
    u.extend_from_slice(format!(":{}", s.advertised.port()).as_bytes());
    if s.transport != crate::transport::Transport::Udp {
        u.extend_from_slice(b";transport=");
        u.extend_from_slice(s.transport.param().as_bytes());
    }
    u.into()
}
