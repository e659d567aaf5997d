//! `examples/sipedge.toml`, the sample configuration, stays true:
//!
//! - as shipped, `sipedge check-config` accepts it, and its uncommented
//!   values are the built-in defaults (the file runs like no file);
//! - with every `# key = value` line (and `# [table]` header) uncommented, and
//!   the files it names written to a temporary directory, `check-config`
//!   still accepts it (the config structs deny unknown fields, so every
//!   documented key is a real one), and so do the sections `check-config`
//!   does not validate (`[flood]`, `[overload]`);
//! - every field of every config struct appears in it (the list below is
//!   kept by hand from the structs; a new field must be added to it and to
//!   the sample).
//!
//! No network, no listening socket: `check-config` binds nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sipedge::config::FileConfig;
use sipedge::policy::{flood, overload, Policy};

/// The keys each table accepts, read from the structs: "" is the top level,
/// a table's own name is a key of its parent, and `[[a.b]]` entries are the
/// table "a.b". Keep in step with the structs named.
const KEYS: &[(&str, &[&str])] = &[
    // src/config.rs `FileConfig` (`io_tuning` is renamed `uring`).
    (
        "",
        &[
            "listen",
            "shards",
            "domain",
            "upstream",
            "stateless",
            "io",
            "log_level",
            "log_format",
            "advertise",
            "record_route",
            "parser",
            "socket",
            "data_dir",
            "registrar",
            "store",
            "timers",
            "proxy",
            "uring",
            "users",
            "auth",
            "policy",
            "flood",
            "overload",
            "metrics",
            "control",
            "tls",
            "tcp",
            "presence",
            "dispatcher",
            "group",
        ],
    ),
    // src/config.rs `ParserSection`.
    (
        "parser",
        &[
            "max_message_size",
            "max_headers",
            "max_header_line",
            "max_uri_len",
            "max_vias",
        ],
    ),
    // src/config.rs `SocketSection`.
    ("socket", &["recv_buffer", "send_buffer", "steer"]),
    // src/config.rs `RegistrarSection`.
    (
        "registrar",
        &[
            "min_expires",
            "max_expires",
            "default_expires",
            "max_contacts",
            "max_bindings",
            "outbound",
            "flow_timer",
        ],
    ),
    // src/config.rs `StoreSection`.
    (
        "store",
        &[
            "fsync",
            "url",
            "node",
            "prefix",
            "stream_max",
            "follow_window_ms",
            "tls_ca",
        ],
    ),
    // src/config.rs `TimersSection`.
    ("timers", &["t1", "t2", "t4", "timer_c"]),
    // src/config.rs `ProxySection`.
    (
        "proxy",
        &["max_transactions", "record_route", "large_requests"],
    ),
    // src/config.rs `IoSection`.
    ("uring", &["coalesce_us"]),
    // src/auth/mod.rs `AuthSection`.
    (
        "auth",
        &[
            "algorithms",
            "strongest_first",
            "qop",
            "nonce_lifetime",
            "key_rotation",
            "bind_source",
            "secret",
            "replay_slots",
            "throttle_slots",
            "source_failures",
            "source_window",
            "user_failures",
            "user_window",
            "throttle_action",
        ],
    ),
    // src/policy/mod.rs `PolicySection`.
    ("policy", &["default", "networks", "rule"]),
    // src/policy/mod.rs `RuleSection`.
    (
        "policy.rule",
        &[
            "name",
            "source",
            "not_source",
            "transport",
            "method",
            "not_method",
            "from_user",
            "not_from_user",
            "from_domain",
            "not_from_domain",
            "uri_user",
            "not_uri_user",
            "uri_domain",
            "not_uri_domain",
            "authenticated",
            "in_dialog",
            "action",
            "reason",
            "status",
        ],
    ),
    // src/policy/flood.rs `FloodSection`.
    (
        "flood",
        &[
            "rate",
            "burst",
            "ban",
            "slots",
            "ipv6_prefix",
            "exempt",
            "enabled",
        ],
    ),
    // src/policy/overload.rs `OverloadSection`.
    (
        "overload",
        &[
            "new_per_turn",
            "rate",
            "queue_high",
            "queue_low",
            "txn_high",
            "txn_low",
            "hold",
            "retry_after",
            "methods",
        ],
    ),
    // src/config.rs `MetricsSection`.
    ("metrics", &["file", "interval", "listen"]),
    // src/config.rs `ControlSection`.
    ("control", &["socket"]),
    // src/config.rs `TlsSection`.
    (
        "tls",
        &["cert", "key", "ca", "verify_client", "verify_server", "sni"],
    ),
    // src/config.rs `SniSection`.
    ("tls.sni", &["domain", "cert", "key"]),
    // src/config.rs `TcpSection`.
    (
        "tcp",
        &[
            "max_connections",
            "max_per_ip",
            "idle_timeout",
            "header_timeout",
            "max_write_queue",
        ],
    ),
    // src/presence/server.rs `PresenceConfig` (`secret` and `contacts` are
    // `#[serde(skip)]`: not keys).
    (
        "presence",
        &[
            "enabled",
            "min_expires",
            "max_expires",
            "default_expires",
            "offline_when_unregistered",
            "notify_interval_ms",
            "max_publications",
            "max_watchers",
            "max_subscriptions",
            "max_presentities",
            "others",
            "rule",
            "store_messages",
            "max_messages_per_user",
            "max_messages",
            "max_message_body",
            "message_expires",
        ],
    ),
    // src/config.rs `DispatcherSection` (destination tables are inline).
    (
        "dispatcher",
        &[
            "name",
            "domains",
            "destinations",
            "algorithm",
            "hash",
            "probe_interval",
            "probe_timeout",
            "failures_down",
            "successes_up",
            "attempts",
            "call_timeout",
            "fork_timeout",
        ],
    ),
    // src/config.rs `GroupSection`.
    (
        "group",
        &[
            "name",
            "domain",
            "members",
            "strategy",
            "ring_timeout",
            "max_calls",
            "nobody",
            "call_timeout",
        ],
    ),
    // src/presence/server.rs `WatcherRule`.
    (
        "presence.rule",
        &[
            "watcher_user",
            "watcher_domain",
            "presentity_user",
            "action",
        ],
    ),
];

/// Keys whose value names a file that must exist: (table, key).
const FILE_KEYS: &[(&str, &str)] = &[
    ("", "users"),
    ("tls", "cert"),
    ("tls", "key"),
    ("tls", "ca"),
    ("tls.sni", "cert"),
    ("tls.sni", "key"),
];

fn sample_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sipedge.toml")
}

fn sample() -> String {
    std::fs::read_to_string(sample_path()).unwrap()
}

fn check_config(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .arg("check-config")
        .arg(path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn assert_ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains(": ok"),
        "check-config refused {what}: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A bare TOML key (dotted allowed) at the start of `s`, followed by ` = `.
fn key_of(s: &str) -> Option<&str> {
    let (k, _) = s.split_once(" = ")?;
    let ok = !k.is_empty()
        && k.split('.').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    ok.then_some(k)
}

/// The table a `[a.b]` or `[[a.b]]` header opens, and whether it is an array entry.
fn header_of(s: &str) -> Option<(&str, bool)> {
    let (name, rest, array) = if let Some(r) = s.strip_prefix("[[") {
        let (n, rest) = r.split_once("]]")?;
        (n, rest, true)
    } else {
        let (n, rest) = s.strip_prefix('[')?.split_once(']')?;
        (n, rest, false)
    };
    let rest = rest.trim_start();
    let ok = key_of(&format!("{name} = ")).is_some() && (rest.is_empty() || rest.starts_with('#'));
    ok.then_some((name, array))
}

/// A line with a commented-out setting (`# key = value`, `# [table]`)
/// uncommented; any other line as it is.
fn uncomment(line: &str) -> &str {
    match line.strip_prefix("# ") {
        Some(rest) if key_of(rest).is_some() || header_of(rest).is_some() => rest,
        _ => line,
    }
}

/// `line` (a `key = value` line) with its value replaced.
fn with_value(line: &str, value: &str) -> String {
    let key = key_of(line).unwrap();
    format!("{key} = {value}")
}

/// Every key of the sample, commented out or not, by table.
fn sample_keys(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut table = String::new();
    for line in text.lines() {
        let line = uncomment(line);
        if let Some((name, _)) = header_of(line) {
            let (parent, own) = name.rsplit_once('.').unwrap_or(("", name));
            keys.entry(parent.to_owned())
                .or_default()
                .insert(own.to_owned());
            name.clone_into(&mut table);
        } else if let Some(k) = key_of(line) {
            let first = k.split('.').next().unwrap_or(k);
            keys.entry(table.clone())
                .or_default()
                .insert(first.to_owned());
        }
    }
    keys
}

/// A directory under the system's temporary one, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "sipedge-sample-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn sample_passes_check_config() {
    let out = check_config(Path::new("examples/sipedge.toml"));
    let stdout = assert_ok(&out, "examples/sipedge.toml");
    assert!(stdout.contains("no users file"), "{stdout}");
}

/// The sample as shipped is the defaults: validated, it equals no file at all.
#[test]
fn sample_values_are_the_defaults() {
    let text = sample();
    let file = FileConfig::from_toml(&text).unwrap();
    assert!(file.users.is_none() && file.flood.is_none() && file.upstream.is_none());
    let registrar = file.registrar.unwrap_or_default();
    let sample = file.validate(3).unwrap();
    let none = FileConfig::default().validate(3).unwrap();
    let settings = |c: &sipedge::config::Config| {
        format!(
            "{:?}",
            (
                (
                    &c.listen,
                    c.shards,
                    &c.domains,
                    c.upstream,
                    c.upstream_transport,
                    c.stateless,
                    c.io,
                    &c.log_level,
                    c.log_json,
                    c.advertise,
                    c.record_route,
                ),
                (
                    &c.parse,
                    c.recv_buffer,
                    c.send_buffer,
                    &c.data_dir,
                    c.fsync,
                    &c.timers,
                    c.max_transactions,
                    c.stateful_record_route,
                    c.large_requests_over_tcp,
                    c.coalesce_us,
                ),
                (
                    &c.users,
                    &c.presence,
                    &c.flood,
                    &c.metrics,
                    c.metrics_listen,
                    &c.control_socket,
                    c.conn,
                    (&c.tls.cert, &c.tls.key, &c.tls.ca, &c.tls.sni),
                    c.tls.verify_client.as_deref().unwrap_or("none"),
                    c.tls.verify_server.unwrap_or(true),
                ),
            )
        )
    };
    assert_eq!(settings(&sample), settings(&none));
    assert_eq!(
        sipedge::auth::Config::from_section(&sample.auth).unwrap(),
        sipedge::auth::Config::from_section(&none.auth).unwrap()
    );
    assert_eq!(
        overload::Config::from_section(&sample.overload).unwrap(),
        overload::Config::from_section(&none.overload).unwrap()
    );
    for users in [false, true] {
        assert_eq!(
            Policy::compile(&sample.policy, &sample.domains, users).unwrap(),
            Policy::compile(&none.policy, &none.domains, users).unwrap()
        );
    }
    // `[registrar]` is resolved when the shards start (src/cli/mod.rs), over
    // `RegistrarConfig::default()` except `outbound`, which defaults to true.
    let d = sipedge::registrar::RegistrarConfig::default();
    assert_eq!(
        (
            registrar.min_expires,
            registrar.max_expires,
            registrar.default_expires,
            registrar.max_contacts,
            registrar.max_bindings,
            registrar.outbound,
            registrar.flow_timer,
        ),
        (
            Some(d.min_expires),
            Some(d.max_expires),
            Some(d.default_expires),
            Some(d.max_contacts),
            Some(d.max_bindings),
            Some(true),
            Some(d.flow_timer),
        )
    );
}

/// Every commented-out key uncommented, the files it names written: still valid.
#[test]
fn sample_with_everything_uncommented_passes_check_config() {
    let dir = TempDir::new("all");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let sni = rcgen::generate_simple_self_signed(vec!["example.test".into()]).unwrap();
    let mut files: BTreeMap<(&str, &str), PathBuf> = BTreeMap::new();
    files.insert(
        ("", "users"),
        dir.write(
            "users.toml",
            "[[user]]\nname = \"alice\"\ndomain = \"localhost\"\npassword = \"alice-secret\"\n",
        ),
    );
    files.insert(("tls", "cert"), dir.write("cert.pem", &ck.cert.pem()));
    files.insert(
        ("tls", "key"),
        dir.write("key.pem", &ck.signing_key.serialize_pem()),
    );
    files.insert(("tls", "ca"), dir.write("ca.pem", &ck.cert.pem()));
    files.insert(("tls.sni", "cert"), dir.write("sni.pem", &sni.cert.pem()));
    files.insert(
        ("tls.sni", "key"),
        dir.write("sni.key.pem", &sni.signing_key.serialize_pem()),
    );
    assert_eq!(files.len(), FILE_KEYS.len());

    let mut text = String::new();
    let mut table = String::new();
    let mut uncommented = 0;
    let mut rewritten = BTreeSet::new();
    for line in sample().lines() {
        let new = uncomment(line);
        if new.len() != line.len() {
            uncommented += 1;
        }
        if let Some((name, _)) = header_of(new) {
            name.clone_into(&mut table);
        }
        let key = key_of(new).unwrap_or_default();
        let out = if let Some(path) = files.get(&(table.as_str(), key)) {
            rewritten.insert((table.clone(), key.to_owned()));
            with_value(new, &format!("{:?}", path.display().to_string()))
        } else if table.is_empty() && key == "listen" {
            // A TLS listener too, so that check-config reads the [tls] files.
            with_value(new, r#"["udp:127.0.0.1:5060", "tls:127.0.0.1:5061"]"#)
        } else {
            new.to_owned()
        };
        text.push_str(&out);
        text.push('\n');
    }
    assert_eq!(
        rewritten.len(),
        FILE_KEYS.len(),
        "file keys found: {rewritten:?}"
    );
    assert!(uncommented > 40, "only {uncommented} lines uncommented");
    let path = dir.write("all.toml", &text);

    let out = check_config(&path);
    let stdout = assert_ok(&out, &format!("the uncommented sample:\n{text}"));
    assert!(stdout.contains("2 listener(s)"), "{stdout}");
    assert!(stdout.contains("1 user(s)"), "{stdout}");

    // What check-config leaves to `run`, and proof that the commented-out
    // sections really were switched on.
    let cfg = FileConfig::from_toml(&text).unwrap().validate(2).unwrap();
    assert!(cfg.upstream.is_some() && cfg.advertise.is_some() && cfg.users.is_some());
    assert!(cfg.metrics.is_some() && cfg.metrics_listen.is_some());
    assert!(cfg.control_socket.is_some());
    assert_eq!(cfg.shards, 4);
    assert!(cfg.policy.default.is_some());
    assert_eq!(cfg.policy.rule.len(), 1);
    assert_eq!(cfg.presence.rule.len(), 1);
    assert_eq!(cfg.tls.sni.len(), 1);
    assert!(cfg.tls.ca.is_some());
    assert_eq!(
        cfg.dispatcher.len(),
        2,
        "a [[dispatcher]] set and a [[group]]"
    );
    assert!(cfg.dispatcher[1].group.is_some());
    assert_eq!(cfg.dispatcher[0].dests.len(), 2);
    let auth = sipedge::auth::Config::from_section(&cfg.auth).unwrap();
    assert!(auth.secret.is_some());
    let policy = Policy::compile(&cfg.policy, &cfg.domains, true).unwrap();
    let f = flood::Config::from_section(cfg.flood.as_ref().unwrap(), policy.networks()).unwrap();
    assert!(
        !f.exempt.is_empty(),
        "exempt = [\"trusted\"] names [policy] networks"
    );
    overload::Config::from_section(&cfg.overload).unwrap();
}

/// Every field of every config struct is in the sample, and nothing else.
#[test]
fn sample_documents_every_key() {
    let found = sample_keys(&sample());
    let mut problems = Vec::new();
    for (table, expected) in KEYS {
        let have = found.get(*table).cloned().unwrap_or_default();
        for k in *expected {
            if !have.contains(*k) {
                problems.push(format!("missing: [{table}] {k}"));
            }
        }
        for k in &have {
            if !expected.contains(&k.as_str()) {
                problems.push(format!("not a key: [{table}] {k}"));
            }
        }
    }
    for table in found.keys() {
        if !KEYS.iter().any(|(t, _)| t == table) {
            problems.push(format!("unknown table: [{table}]"));
        }
    }
    assert!(problems.is_empty(), "examples/sipedge.toml: {problems:#?}");
}

/// The helpers above recognise settings and only settings.
#[test]
fn recogniser_tells_settings_from_prose() {
    assert_eq!(uncomment("# users = \"/x\""), "users = \"/x\"");
    assert_eq!(uncomment("# [[policy.rule]]"), "[[policy.rule]]");
    assert_eq!(uncomment("# [flood]"), "[flood]");
    assert_eq!(
        uncomment("# networks.trusted = [\"10.0.0.0/8\"]"),
        "networks.trusted = [\"10.0.0.0/8\"]"
    );
    for prose in [
        "# Default: none (off).",
        "# the nodes serving one domain. Default: none (random per process, so nonces",
        "#   sipedge check-config examples/sipedge.toml",
        "# runs exactly like no file at all. Commented-out keys (`# key = value`) are",
        "#",
    ] {
        assert_eq!(uncomment(prose), prose);
    }
    assert_eq!(header_of("[tls] # x"), Some(("tls", false)));
    assert_eq!(header_of("[[tls.sni]]"), Some(("tls.sni", true)));
    assert_eq!(header_of("[not a header]"), None);
}
