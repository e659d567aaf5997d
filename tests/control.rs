//! `sipedge ctl` against a running edge, through its control socket: the
//! socket is 0600; `stats` and `bindings dump | lookup` answer (as JSON with
//! `--json`) with what REGISTERs made; `reload` reloads, and a broken config
//! on reload is refused while the running one stays; another user cannot
//! connect.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use common::{drivers, Proxy, TempDir, Ua};
use serde_json::Value;

fn ctl(sock: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(["ctl", "--control", sock])
        .args(args)
        .output()
        .unwrap()
}

fn ctl_json(sock: &str, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = ctl(sock, &a);
    assert!(
        out.status.success(),
        "ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn register(ua: &Ua, user: &str, to: SocketAddr) {
    ua.send(
        &format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-c-{user};rport\r\n\
Max-Forwards: 70\r\nTo: <sip:{user}@127.0.0.1>\r\nFrom: <sip:{user}@127.0.0.1>;tag=c{user}\r\n\
Call-ID: ctl-{user}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{user}@{a}>\r\nExpires: 600\r\n\
User-Agent: ctl-test/1\r\nContent-Length: 0\r\n\r\n",
            a = ua.addr
        ),
        to,
    );
    ua.expect_response(200, "REGISTER");
}

#[test]
fn ctl_stats_bindings_reload_and_permissions() {
    for d in drivers() {
        let dir = TempDir::new("ctl");
        let sock = dir.path.join("ctl.sock").to_string_lossy().into_owned();
        let config = dir.write(
            "sipedge.toml",
            "[auth]\nnonce_lifetime = 300\n[flood]\nrate = 20\nburst = 40\nban = 60\n",
        );
        let mut p = Proxy::start(&[
            "--io",
            d,
            "--domain",
            "127.0.0.1",
            "--shards",
            "2",
            "--data-dir",
            dir.arg(),
            "--config",
            &config,
            "--control",
            &sock,
        ]);
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{d}: socket mode {mode:o}");

        let ua = Ua::new();
        for i in 0..5 {
            register(&ua, &format!("u{i}"), p.addr);
        }
        // Every binding, from both shards' registrar partitions.
        let dump = ctl_json(&sock, &["bindings", "dump"]);
        let list = dump["bindings"].as_array().unwrap();
        let mut aors: Vec<&str> = list.iter().map(|b| b["aor"].as_str().unwrap()).collect();
        aors.sort_unstable();
        assert_eq!(
            aors,
            [
                "u0@127.0.0.1",
                "u1@127.0.0.1",
                "u2@127.0.0.1",
                "u3@127.0.0.1",
                "u4@127.0.0.1"
            ],
            "{d}: {dump}"
        );
        assert_eq!(list[0]["user_agent"], "ctl-test/1", "{d}");
        let e = list[0]["expires_in"].as_u64().unwrap();
        assert!((590..=600).contains(&e), "{d}: expires_in {e}");
        // One AoR, written as a URI.
        let one = ctl_json(&sock, &["bindings", "lookup", "sip:u3@127.0.0.1"]);
        let one = one["bindings"].as_array().unwrap();
        assert_eq!(one.len(), 1, "{d}: {one:?}");
        assert_eq!(one[0]["contact"], format!("sip:u3@{}", ua.addr), "{d}");
        // Text output too.
        let text = ctl(&sock, &["bindings", "dump"]);
        assert!(
            String::from_utf8_lossy(&text.stdout).contains("5 binding(s)"),
            "{d}: {}",
            String::from_utf8_lossy(&text.stdout)
        );
        // Stats: the REGISTERs are counted (shards publish about once a second).
        let mut requests = 0;
        for _ in 0..30 {
            let s = ctl_json(&sock, &["stats"]);
            requests = s["counters"]["sipedge_proxy_requests_total"]
                .as_u64()
                .unwrap();
            if requests >= 5 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert!(requests >= 5, "{d}: {requests} requests counted");

        // Remove one AoR: gone from the dump (and, below, after a restart).
        let r = ctl_json(&sock, &["bindings", "remove", "sip:u3@127.0.0.1"]);
        assert_eq!(r["removed"], 1, "{d}: {r}");
        let left = ctl_json(&sock, &["bindings", "dump"]);
        assert_eq!(left["bindings"].as_array().unwrap().len(), 4, "{d}: {left}");
        let again = ctl_json(&sock, &["bindings", "remove", "sip:u3@127.0.0.1"]);
        assert_eq!(again["removed"], 0, "{d}");

        // A source over its rate is banned, listed, and unbanned.
        let flooder = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
        let probe = format!(
            "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-flood\r\n\
Max-Forwards: 70\r\nTo: <sip:127.0.0.1>\r\nFrom: <sip:f@127.0.0.2>;tag=f\r\n\
Call-ID: flood\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            a = flooder.local_addr().unwrap()
        );
        for _ in 0..200 {
            flooder.send_to(probe.as_bytes(), p.addr).unwrap();
        }
        let mut banned = Value::Null;
        for _ in 0..20 {
            banned = ctl_json(&sock, &["flood", "bans"]);
            if !banned["bans"].as_array().unwrap().is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let bans = banned["bans"].as_array().unwrap();
        assert_eq!(bans.len(), 1, "{d}: {banned}");
        assert_eq!(bans[0]["source"], "127.0.0.2", "{d}");
        let left = bans[0]["seconds_left"].as_u64().unwrap();
        assert!((55..=60).contains(&left), "{d}: {left}");
        let un = ctl_json(&sock, &["flood", "unban", "127.0.0.2"]);
        assert_eq!(un["was_banned"], true, "{d}: {un}");
        assert!(
            ctl_json(&sock, &["flood", "bans"])["bans"]
                .as_array()
                .unwrap()
                .is_empty(),
            "{d}"
        );
        assert!(
            !ctl(&sock, &["flood", "unban", "not-an-ip"])
                .status
                .success(),
            "{d}"
        );

        // Reload: fine, then a broken file is refused and the edge still serves.
        let ok = ctl(&sock, &["reload"]);
        assert!(
            ok.status.success(),
            "{d}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert!(
            String::from_utf8_lossy(&ok.stdout).starts_with("reloaded:"),
            "{d}"
        );
        // A restart-only change is refused whole, with what needs the restart.
        std::fs::write(
            &config,
            "[auth]\nnonce_lifetime = 300\n[registrar]\nmax_expires = 900\n[flood]\nrate = 1\nburst = 1\nban = 60\n",
        )
        .unwrap();
        let restart = ctl(&sock, &["reload"]);
        assert!(
            !restart.status.success(),
            "{d}: a restart-only change was accepted"
        );
        assert!(
            String::from_utf8_lossy(&restart.stderr).contains("needs a restart: registrar changed"),
            "{d}: {}",
            String::from_utf8_lossy(&restart.stderr)
        );
        // Nothing of it applied: the flood limit of 1/s is not in force.
        register(&ua, "after-refused-1", p.addr);
        register(&ua, "after-refused-2", p.addr);
        register(&ua, "after-refused-3", p.addr);
        // A new log level and new [flood] limits are applied: a new source
        // gets its burst of 3, then nothing (1/s, banned).
        std::fs::write(
            &config,
            "log_level = \"debug\"\n[auth]\nnonce_lifetime = 300\n[flood]\nrate = 1\nburst = 3\nban = 60\n",
        )
        .unwrap();
        let applied = ctl(&sock, &["reload"]);
        let said = String::from_utf8_lossy(&applied.stdout).into_owned();
        assert!(
            said.contains("log level") && said.contains("[flood]"),
            "{d}: {said} {}",
            String::from_utf8_lossy(&applied.stderr)
        );
        let probe = Ua::new();
        let mut answered = 0;
        for i in 0..6 {
            probe.send(
                &format!(
                    "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-lim{i}\r\n\
Max-Forwards: 70\r\nTo: <sip:127.0.0.1>\r\nFrom: <sip:p@127.0.0.1>;tag=p\r\n\
Call-ID: lim-{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                    a = probe.addr
                ),
                p.addr,
            );
            if probe
                .recv_within(std::time::Duration::from_millis(300))
                .is_some()
            {
                answered += 1;
            }
        }
        assert_eq!(answered, 3, "{d}: the reloaded [flood] burst of 3 holds");
        // Back to the first limits for the rest.
        std::fs::write(
            &config,
            "[auth]\nnonce_lifetime = 300\n[flood]\nrate = 20\nburst = 40\nban = 60\n",
        )
        .unwrap();
        assert!(ctl(&sock, &["reload"]).status.success(), "{d}");
        std::fs::write(&config, "[auth\nnonce_lifetime = ").unwrap();
        let bad = ctl(&sock, &["reload"]);
        assert!(!bad.status.success(), "{d}: a broken config was accepted");
        assert!(
            String::from_utf8_lossy(&bad.stderr).contains("reload refused"),
            "{d}: {}",
            String::from_utf8_lossy(&bad.stderr)
        );
        register(&ua, "after-bad-reload", p.addr);

        // Unknown commands are errors.
        assert!(
            !ctl(&sock, &["bindings", "explode"]).status.success(),
            "{d}"
        );

        // Another user is refused by the socket's mode (needs root to switch).
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if root && common::have_peer("setpriv") {
            let out = Command::new("setpriv")
                .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_sipedge"))
                .args(["ctl", "--control", &sock, "stats"])
                .output()
                .unwrap();
            assert!(!out.status.success(), "{d}: nobody got stats");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
                "{d}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        p.terminate();
        assert!(
            !std::path::Path::new(&sock).exists(),
            "{d}: the socket file is removed at exit"
        );
        // The removal was durable: after a restart, u3 is still gone.
        std::fs::write(&config, "[auth]\nnonce_lifetime = 300\n").unwrap();
        let mut p = Proxy::start(&[
            "--io",
            d,
            "--domain",
            "127.0.0.1",
            "--shards",
            "2",
            "--data-dir",
            dir.arg(),
            "--config",
            &config,
            "--control",
            &sock,
        ]);
        let after = ctl_json(&sock, &["bindings", "dump"]);
        let mut aors: Vec<&str> = after["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["aor"].as_str().unwrap())
            .collect();
        aors.sort_unstable();
        assert_eq!(
            aors,
            [
                "after-bad-reload@127.0.0.1",
                "after-refused-1@127.0.0.1",
                "after-refused-2@127.0.0.1",
                "after-refused-3@127.0.0.1",
                "u0@127.0.0.1",
                "u1@127.0.0.1",
                "u2@127.0.0.1",
                "u4@127.0.0.1"
            ],
            "{d}: {after}"
        );
        p.terminate();
    }
}

/// `sipedge check-config FILE`: a good file (with the users file it names)
/// passes with one line; a broken one, or one naming a missing users file,
/// fails with the reason and exit code 2.
#[test]
fn check_config_accepts_good_files_and_refuses_broken_ones() {
    let dir = TempDir::new("checkcfg");
    let users = dir.write(
        "users.toml",
        "[[user]]\nname = \"alice\"\ndomain = \"example.test\"\npassword = \"pw\"\n",
    );
    let good = dir.write(
        "good.toml",
        &format!(
            "domain = [\"example.test\"]\nusers = \"{users}\"\n[auth]\nnonce_lifetime = 300\n"
        ),
    );
    let check = |f: &str| {
        Command::new(env!("CARGO_BIN_EXE_sipedge"))
            .args(["check-config", f])
            .output()
            .unwrap()
    };
    let out = check(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("ok (1 listener(s), domains example.test, 1 user(s))"));
    for (name, text, why) in [
        ("syntax.toml", "[auth\n", "TOML parse error"),
        ("key.toml", "[auth]\nno_such_key = 1\n", "no_such_key"),
        (
            "users.toml.bad",
            "users = \"/nonexistent/users.toml\"\n",
            "users file",
        ),
        (
            "lifetime.toml",
            "[auth]\nnonce_lifetime = 0\n",
            "nonce_lifetime",
        ),
        ("flood.toml", "[flood]\nrate = 0\n", "[flood]"),
        (
            "overload.toml",
            "[overload]\nqueue_low = 99999\n",
            "[overload]",
        ),
        (
            "ca.toml",
            "[tls]\nca = \"/nonexistent/ca.pem\"\n",
            "/nonexistent/ca.pem",
        ),
    ] {
        let f = dir.write(name, text);
        let out = check(&f);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{name}: {err}");
    }
}

/// `--log-format json`: every log line is one JSON object with a level and
/// a message (what log shippers parse).
#[test]
fn json_log_lines() {
    let dir = TempDir::new("jsonlog");
    let mut p = Proxy::start(&["--data-dir", dir.arg(), "--log-format", "json"]);
    p.terminate();
    let lines: Vec<&String> = p.log.iter().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{:?}", p.log);
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string(), "{l}");
        assert!(v["fields"]["message"].is_string(), "{l}");
    }
}

/// Reloads under call load: SIPp places 300 calls (100/s, each held 300 ms)
/// through the edge to a SIPp UAS registered as `callee`, while `ctl reload`
/// and SIGHUP alternate every 150 ms; every call completes (SIPp exits 0).
#[test]
fn reload_under_call_load_fails_no_call() {
    if !common::have_peer("sipp") {
        return;
    }
    for d in drivers() {
        let dir = TempDir::new("ctl-load");
        let sock = dir.path.join("ctl.sock").to_string_lossy().into_owned();
        let config = dir.write("sipedge.toml", "[flood]\nrate = 2000\nburst = 4000\n");
        let mut p = Proxy::start(&[
            "--io",
            d,
            "--domain",
            "127.0.0.1",
            "--shards",
            "2",
            "--data-dir",
            dir.arg(),
            "--config",
            &config,
            "--control",
            &sock,
        ]);
        let uas_port = common::free_udp_port();
        // The UAS's address registered for `callee`.
        let ua = Ua::new();
        ua.send(
            &format!(
                "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-load;rport\r\n\
Max-Forwards: 70\r\nTo: <sip:callee@127.0.0.1>\r\nFrom: <sip:callee@127.0.0.1>;tag=l\r\n\
Call-ID: load-reg\r\nCSeq: 1 REGISTER\r\nContact: <sip:callee@127.0.0.1:{uas_port}>\r\n\
Expires: 600\r\nContent-Length: 0\r\n\r\n",
                a = ua.addr
            ),
            p.addr,
        );
        ua.expect_response(200, "REGISTER");
        let csv = dir.write("callee.csv", "SEQUENTIAL\ncallee\n");
        let mut uas = common::Reaped::spawn(
            "sipp uas",
            common::sipp(&dir, "uas", uas_port)
                .args([
                    "-sf",
                    &format!("{}/tools/sipp/uas.xml", env!("CARGO_MANIFEST_DIR")),
                ])
                .args(["-timeout", "40s"]),
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut uac = common::Reaped::spawn(
            "sipp uac",
            common::sipp(&dir, "uac", common::free_udp_port())
                .args([
                    "-sf",
                    &format!("{}/tools/sipp/uac_users.xml", env!("CARGO_MANIFEST_DIR")),
                ])
                .args([
                    "-inf", &csv, "-m", "300", "-r", "100", "-l", "100", "-d", "300",
                ])
                .args(["-timeout", "30s", "-timeout_error", "-max_retrans", "5"])
                .arg(p.addr.to_string()),
        );
        // Reload while the calls run: the ctl way and the SIGHUP way.
        let mut reloads = 0;
        let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < until {
            if reloads % 2 == 0 {
                let out = ctl(&sock, &["reload"]);
                assert!(
                    out.status.success(),
                    "{d}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            } else {
                p.signal("HUP");
            }
            reloads += 1;
            std::thread::sleep(std::time::Duration::from_millis(150));
        }
        let st = uac.wait_for(std::time::Duration::from_secs(40));
        let _ = uas.terminate(std::time::Duration::from_secs(2));
        assert!(
            st.is_some_and(|s| s.success()),
            "{d}: calls failed across {reloads} reloads: {st:?}\n{}\n{}",
            common::sipp_report(&dir, "uac"),
            common::sipp_report(&dir, "uas")
        );
        assert!(reloads >= 10, "{d}: only {reloads} reloads");
        p.terminate();
    }
}

/// `sipedge tune --json`: the host report as JSON, with the busy-poll
/// sysctls of the profile and the kernel's UDP error counters.
#[test]
fn tune_reports_as_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(["tune", "--json", "--profile"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/edge.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&str> = v["sysctl"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert!(
        keys.contains(&"net.core.busy_poll") && keys.contains(&"net.core.busy_read"),
        "{keys:?}"
    );
    assert!(v["udp_errors_since_boot"]["RcvbufErrors"].is_u64(), "{v}");
    assert!(v["cpus"].as_array().is_some_and(|c| !c.is_empty()), "{v}");
}

/// A second edge on a port another edge serves is refused (SO_REUSEPORT
/// would let it take half the traffic), with one line and exit code 2.
#[test]
fn a_second_edge_on_a_served_port_is_refused() {
    let dir = TempDir::new("second-edge");
    let mut p = Proxy::start(&[
        "--domain",
        "127.0.0.1",
        "--data-dir",
        dir.arg(),
        "--listen",
        "udp:127.0.0.1:0",
        "--listen",
        "tcp:127.0.0.1:0",
    ]);
    let other = TempDir::new("second-edge-2");
    for listen in [
        format!("udp:{}", p.addr),
        format!("tcp:{}", p.listener("tcp")),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sipedge"))
            .args(["run", "--listen", &listen, "--data-dir", other.arg()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{listen}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("already in use by another process"),
            "{listen}: {err}"
        );
    }
    // The first one still answers.
    let ua = Ua::new();
    register(&ua, "still-served", p.addr);
    p.terminate();
}
