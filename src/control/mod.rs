//! The control socket (`--control PATH`, `[control] socket`) and its client
//! (`sipedge ctl --control PATH …`): a Unix stream socket, mode 0600 (the
//! only control path: nothing on the network), one command per connection.
//!
//! ```text
//!  sipedge ctl ──"bindings dump\n"──► control thread ──► each shard's Inbox (shard::control)
//!              ◄──── one JSON document ────┘        └──► the main loop (reload)
//! ```
//!
//! Commands: `stats` (the counters summed over shards, and the gauges),
//! `bindings dump`, `bindings lookup AOR` (from each owner shard's
//! registrar), `bindings remove AOR` (with records, like an unregistration:
//! durable, replicated), `flood bans`, `flood unban IP`, `dispatcher list`,
//! `dispatcher set-state SET URI active|probing|down`, `reload` (what SIGHUP does: users, policy, presence rules, TLS
//! certificates; the answer says what happened). The answer is always one
//! JSON document; `ctl` prints it as is with `--json`, as text otherwise.
//!
//! Bounds: a command line of at most [`MAX_LINE`] bytes read within
//! [`IO_TIMEOUT`]; one connection at a time; a shard that does not answer
//! within [`SHARD_TIMEOUT`] makes the command fail rather than hang.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{sync_channel, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};

use crate::location::Binding;
use crate::proxy::Counters;
use crate::proxy::{Control as Ask, ControlAnswer};
use crate::shard::control::{Inbox, Request};
use crate::shard::ShardReport;

/// The longest command line read.
pub const MAX_LINE: usize = 4096;
/// Per read and write of a connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a shard may take to answer.
pub const SHARD_TIMEOUT: Duration = Duration::from_secs(3);

/// A reload asked of the main loop; the answer (what was reloaded, or why
/// not) goes back on the channel.
pub type ReloadRequest = SyncSender<Result<String, String>>;

/// What the control thread reaches.
pub struct Control {
    /// The shards' published reports (stats).
    pub slots: Vec<Arc<Mutex<ShardReport>>>,
    /// Each shard's control inbox; empty in stateless mode.
    pub shards: Vec<Arc<Inbox>>,
    /// The main loop, for reloads.
    pub reload: Sender<ReloadRequest>,
}

/// Binds `path` with mode 0600 before anything else runs (so no other
/// thread creates files while the umask is narrowed). A stale socket file
/// (nobody listening) is replaced; a live one is an error.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!("{} is in use by a running sipedge", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let l = crate::shard::sys::with_umask(0o177, || UnixListener::bind(path))
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves `listener` until `stop` is set; removes the socket file then.
pub fn serve(listener: UnixListener, path: PathBuf, ctl: Control, stop: Arc<AtomicBool>) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!("control socket: {e}; not serving");
        return;
    }
    crate::shard::control::accept_loop(
        "control socket",
        &stop,
        || listener.accept().map(|(s, _)| s),
        |s| answer(s, &ctl),
    );
    let _ = std::fs::remove_file(&path);
}

fn answer(s: UnixStream, ctl: &Control) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&s).take(MAX_LINE as u64)).read_line(&mut line)?;
    let v = match run(line.trim(), ctl) {
        Ok(v) => v,
        Err(e) => json!({ "error": format!("{e:#}") }),
    };
    let mut w = &s;
    w.write_all(v.to_string().as_bytes())?;
    w.write_all(b"\n")?;
    w.flush()
}

/// Runs one command line.
pub fn run(line: &str, ctl: &Control) -> Result<Value> {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    match words.as_slice() {
        ["stats"] => Ok(stats(&ctl.slots)),
        ["reload"] => reload(ctl),
        ["bindings", "dump"] => bindings(ctl, None),
        ["bindings", "lookup", aor] => bindings(ctl, Some(aor_key(aor))),
        ["bindings", "remove", aor] => remove(ctl, aor_key(aor)),
        ["flood", "bans"] => bans(ctl),
        ["flood", "unban", ip] => unban(ctl, ip),
        ["dispatcher", "list"] => dispatcher(ctl),
        ["dispatcher", "set-state", set, uri, state] => set_state(ctl, set, uri, state),
        [] => bail!("no command"),
        _ => bail!(
            "unknown command {line:?}: stats, reload, bindings dump | lookup AOR | remove AOR, \
             flood bans | unban IP, dispatcher list | set-state SET URI active|probing|down"
        ),
    }
}

/// `sip:Alice@Example.COM;x` → `Alice@example.com` (the registrar's AoR key:
/// user as written, host lower case).
pub fn aor_key(aor: &str) -> Vec<u8> {
    let a = aor
        .strip_prefix("sips:")
        .or_else(|| aor.strip_prefix("sip:"))
        .unwrap_or(aor);
    let a = a.split([';', '?', '>']).next().unwrap_or(a);
    match a.split_once('@') {
        Some((u, h)) => format!("{u}@{}", h.to_ascii_lowercase()).into_bytes(),
        None => a.to_ascii_lowercase().into_bytes(),
    }
}

fn stats(slots: &[Arc<Mutex<ShardReport>>]) -> Value {
    let mut c = Counters::default();
    let mut conn = crate::transport::conn::ConnStats::default();
    let (mut connections, mut rx, mut tx, mut records) = (0usize, 0u64, 0u64, 0u64);
    for s in slots {
        let Ok(r) = s.lock() else { continue };
        c.add(&r.service);
        conn.add(&r.conn);
        connections += r.connections;
        rx += r.driver.rx;
        tx += r.driver.tx;
        records += r.io.records;
    }
    let mut m = serde_json::Map::new();
    for (name, v) in c
        .pairs()
        .into_iter()
        .chain(c.presence.pairs())
        .chain(c.auth_pairs())
        .chain(conn.pairs())
    {
        m.insert(name.to_owned(), json!(v));
    }
    m.insert("sipedge_shard_datagrams_received_total".into(), json!(rx));
    m.insert("sipedge_shard_datagrams_sent_total".into(), json!(tx));
    m.insert("sipedge_store_records_total".into(), json!(records));
    m.insert("sipedge_transport_connections".into(), json!(connections));
    m.insert(
        "sipedge_txn_transactions_live".into(),
        json!(c.transactions_live),
    );
    m.insert("sipedge_txn_timers".into(), json!(c.timers_live));
    m.insert("sipedge_registrar_bindings".into(), json!(c.bindings));
    m.insert("sipedge_registrar_timers".into(), json!(c.registrar_timers));
    m.insert(
        "sipedge_presence_subscriptions".into(),
        json!(c.subscriptions),
    );
    for method in crate::sip::Method::ALL {
        if let Some(&n) = c.requests_by_method.get(method.index()).filter(|n| **n > 0) {
            m.insert(
                format!(
                    "sipedge_proxy_requests_by_method_total{{method=\"{}\"}}",
                    method.as_str()
                ),
                json!(n),
            );
        }
    }
    for reason in crate::policy::overload::ShedReason::ALL {
        if let Some(&n) = c.shed_by_reason.get(reason as usize).filter(|n| **n > 0) {
            m.insert(
                format!("sipedge_proxy_shed_total{{reason=\"{}\"}}", reason.as_str()),
                json!(n),
            );
        }
    }
    for (by, what) in [
        (&c.responses_by_class, "responses_by_class"),
        (&c.local_responses_by_class, "local_responses_by_class"),
    ] {
        for (i, &n) in by.iter().enumerate().filter(|(_, n)| **n > 0) {
            m.insert(
                format!("sipedge_proxy_{what}_total{{class=\"{}xx\"}}", i + 1),
                json!(n),
            );
        }
    }
    json!({ "shards": slots.len(), "counters": m })
}

fn reload(ctl: &Control) -> Result<Value> {
    let (tx, rx) = sync_channel(1);
    ctl.reload
        .send(tx)
        .map_err(|_| anyhow!("the process is shutting down"))?;
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(what)) => Ok(json!({ "reloaded": what })),
        Ok(Err(why)) => bail!("reload refused, the running configuration stays: {why}"),
        Err(_) => bail!("no answer from the main loop"),
    }
}

fn binding_json(b: &Binding, wall: u64) -> Value {
    let s = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    json!({
        "aor": s(b.aor()),
        "contact": s(b.contact()),
        "expires_in": b.expires().saturating_sub(wall) / 1_000_000,
        "q": f64::from(b.q()) / 1000.0,
        "received": b.received().map(|a| a.to_string()),
        "path": s(b.path()),
        "instance": s(b.instance()),
        "reg_id": b.reg_id(),
        "call_id": s(b.call_id()),
        "cseq": b.cseq(),
        "user_agent": s(b.user_agent()),
        "flow": b.flow(),
    })
}

/// Asks every shard `q` and collects their answers (in shard order).
fn ask_all(ctl: &Control, q: &Ask) -> Result<Vec<ControlAnswer>> {
    if ctl.shards.is_empty() {
        bail!("no shard answers control questions (stateless mode)");
    }
    let mut waits = Vec::with_capacity(ctl.shards.len());
    for (i, inbox) in ctl.shards.iter().enumerate() {
        let (tx, rx) = sync_channel(1);
        inbox
            .ask(Request {
                query: q.clone(),
                reply: tx,
            })
            .map_err(|_| anyhow!("shard {i} is busy with other control requests"))?;
        waits.push(rx);
    }
    waits
        .into_iter()
        .enumerate()
        .map(|(i, rx)| {
            rx.recv_timeout(SHARD_TIMEOUT)
                .map_err(|_| anyhow!("shard {i} did not answer within {SHARD_TIMEOUT:?}"))
        })
        .collect()
}

fn bindings(ctl: &Control, aor: Option<Vec<u8>>) -> Result<Value> {
    let wall = crate::shard::Clock::new().wall_us();
    let mut all = Vec::new();
    for a in ask_all(ctl, &Ask::Bindings(aor))? {
        if let ControlAnswer::Bindings(list) = a {
            all.extend(
                list.iter()
                    .filter(|b| b.expires() > wall)
                    .map(|b| binding_json(b, wall)),
            );
        }
    }
    Ok(json!({ "bindings": all }))
}

fn remove(ctl: &Control, aor: Vec<u8>) -> Result<Value> {
    let removed: usize = ask_all(ctl, &Ask::RemoveAor(aor.clone()))?
        .into_iter()
        .map(|a| match a {
            ControlAnswer::Removed(n) => n,
            _ => 0,
        })
        .sum();
    Ok(json!({ "aor": String::from_utf8_lossy(&aor), "removed": removed }))
}

fn bans(ctl: &Control) -> Result<Value> {
    let mut all: Vec<(std::net::IpAddr, u64)> = Vec::new();
    let mut any = false;
    for a in ask_all(ctl, &Ask::FloodBans)? {
        if let ControlAnswer::Bans(list) = a {
            any = true;
            for (ip, left) in list {
                match all.iter_mut().find(|(i, _)| *i == ip) {
                    Some(e) => e.1 = e.1.max(left),
                    None => all.push((ip, left)),
                }
            }
        }
    }
    if !any {
        bail!("flood protection is off ([flood] not configured)");
    }
    let list: Vec<Value> = all
        .iter()
        .map(|(ip, left)| json!({ "source": ip.to_string(), "seconds_left": left }))
        .collect();
    Ok(json!({ "bans": list }))
}

fn unban(ctl: &Control, ip: &str) -> Result<Value> {
    let ip: std::net::IpAddr = ip
        .parse()
        .with_context(|| format!("{ip:?} is not an IP address"))?;
    let mut lifted = false;
    let mut any = false;
    for a in ask_all(ctl, &Ask::Unban(ip))? {
        if let ControlAnswer::Unbanned(was) = a {
            any = true;
            lifted |= was;
        }
    }
    if !any {
        bail!("flood protection is off ([flood] not configured)");
    }
    Ok(json!({ "source": ip.to_string(), "was_banned": lifted }))
}

/// Every destination: its state on each shard (`state`: theirs when they
/// agree, else `mixed`), and its loads and counts summed over the shards.
fn dispatcher(ctl: &Control) -> Result<Value> {
    /// (set, URI, each shard's state, load, calls, failures)
    type Row = (String, String, Vec<&'static str>, u64, u64, u64);
    let mut rows: Vec<Row> = Vec::new();
    let mut any = false;
    for a in ask_all(ctl, &Ask::Dispatcher)? {
        let ControlAnswer::Dispatcher(list) = a else {
            continue;
        };
        any = true;
        for d in list {
            let i = match rows.iter().position(|r| r.0 == d.set && r.1 == d.uri) {
                Some(i) => i,
                None => {
                    rows.push((d.set.clone(), d.uri.clone(), Vec::new(), 0, 0, 0));
                    rows.len() - 1
                }
            };
            if let Some(r) = rows.get_mut(i) {
                r.2.push(d.state.name());
                r.3 += u64::from(d.load);
                r.4 += d.calls;
                r.5 += d.failures;
            }
        }
    }
    if !any {
        bail!("no dispatcher set configured ([[dispatcher]])");
    }
    let list: Vec<Value> = rows
        .iter()
        .map(|(set, uri, states, load, calls, failures)| {
            let first = states.first().copied().unwrap_or("down");
            let state = if states.iter().all(|s| *s == first) {
                first
            } else {
                "mixed"
            };
            json!({ "set": set, "uri": uri, "state": state, "shard_states": states,
                    "load": load, "calls": calls, "failures": failures })
        })
        .collect();
    Ok(json!({ "destinations": list }))
}

fn set_state(ctl: &Control, set: &str, uri: &str, state: &str) -> Result<Value> {
    let st = crate::routing::dispatcher::State::parse(state)
        .with_context(|| format!("{state:?}: expected active, probing or down"))?;
    let q = Ask::DispatcherSetState(set.to_owned(), uri.to_owned(), st);
    let found = ask_all(ctl, &q)?
        .iter()
        .any(|a| matches!(a, ControlAnswer::StateSet(true)));
    if !found {
        bail!("no destination {uri} in a dispatcher set {set:?}");
    }
    Ok(json!({ "set": set, "uri": uri, "state": state }))
}

/// `sipedge ctl`: sends `command` to the socket at `path`, prints the answer
/// (as JSON with `json`); an error answer is an `Err`.
pub fn client(path: &Path, command: &[String], json_out: bool) -> Result<()> {
    let mut s = UnixStream::connect(path)
        .with_context(|| format!("cannot connect to the control socket {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(format!("{}\n", command.join(" ")).as_bytes())?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let v: Value = serde_json::from_str(text.trim()).context("not a JSON answer")?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("{e}");
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if let Some(c) = v.get("counters").and_then(Value::as_object) {
        for (k, n) in c {
            println!("{k} {n}");
        }
    } else if let Some(list) = v.get("bindings").and_then(Value::as_array) {
        for b in list {
            let f = |k: &str| {
                b.get(k).map_or(String::new(), |x| {
                    x.to_string().trim_matches('"').to_owned()
                })
            };
            println!(
                "{}\t{}\texpires {}s\tq={}\t{}",
                f("aor"),
                f("contact"),
                f("expires_in"),
                f("q"),
                f("user_agent")
            );
        }
        println!("{} binding(s)", list.len());
    } else if let Some(list) = v.get("bans").and_then(Value::as_array) {
        for b in list {
            println!(
                "{}\t{}s left",
                b.get("source").and_then(Value::as_str).unwrap_or(""),
                b.get("seconds_left").unwrap_or(&Value::Null)
            );
        }
        println!("{} banned source(s)", list.len());
    } else if let Some(list) = v.get("destinations").and_then(Value::as_array) {
        for d in list {
            let f = |k: &str| {
                d.get(k).map_or(String::new(), |x| {
                    x.to_string().trim_matches('"').to_owned()
                })
            };
            println!(
                "{}\t{}\t{}\tload {}\tcalls {}\tfailures {}",
                f("set"),
                f("uri"),
                f("state"),
                f("load"),
                f("calls"),
                f("failures")
            );
        }
    } else if let Some(n) = v.get("removed") {
        println!("{n} binding(s) removed");
    } else if let Some(w) = v.get("was_banned") {
        println!(
            "{}",
            if w == &Value::Bool(true) {
                "unbanned"
            } else {
                "was not banned"
            }
        );
    } else if let Some(r) = v.get("reloaded").and_then(Value::as_str) {
        println!("reloaded: {r}");
    } else {
        println!("{v}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aor_keys() {
        assert_eq!(aor_key("sip:Alice@Example.COM"), b"Alice@example.com");
        assert_eq!(aor_key("sips:bob@x.test;transport=tls"), b"bob@x.test");
        assert_eq!(aor_key("carol@Y.test"), b"carol@y.test");
    }

    #[test]
    fn unknown_and_empty_commands_are_errors() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let ctl = Control {
            slots: vec![Arc::default()],
            shards: Vec::new(),
            reload: tx,
        };
        assert!(run("", &ctl).is_err());
        assert!(run("bindings", &ctl).is_err());
        assert!(run("rm -rf /", &ctl).is_err());
        assert!(run("bindings dump", &ctl).is_err(), "no shard answers");
        assert!(run("flood unban 999.1.1.1", &ctl).is_err());
        let v = run("stats", &ctl).unwrap();
        assert_eq!(v["shards"], 1);
        assert!(v["counters"]["sipedge_proxy_requests_total"].is_u64());
    }
}
