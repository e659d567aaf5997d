//! `sipedge tune`: compares this host with a profile from `tuning/` and says
//! what differs and why it matters; `--apply` writes the sysctls.
//!
//! It reads: the CPUs this process may use, which CPUs take the network
//! interrupts, socket-buffer and backlog sysctls, the open-file limit, and
//! whether io_uring works (the same probe `sipedge run` uses).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Deserialize;

/// A host profile (`tuning/*.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Kernel settings.
    #[serde(default)]
    pub sysctl: Vec<Sysctl>,
    /// Process limits.
    pub limits: Option<Limits>,
}

/// One sysctl of a profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sysctl {
    /// Dotted name, e.g. `net.core.rmem_max`.
    pub key: String,
    /// The host value must be at least this.
    pub min: Option<u64>,
    /// The host value must be exactly this.
    pub eq: Option<u64>,
    /// Why it matters.
    pub why: String,
}

/// Process limits of a profile.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Open files.
    pub nofile: Option<u64>,
}

/// The verdict on one setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// As the profile wants.
    Ok,
    /// Differs: the value to write.
    Change(u64),
    /// Only reported.
    Info,
    /// Could not be read.
    Unknown,
}

/// One row of the report.
#[derive(Debug, Clone)]
pub struct Row {
    /// Setting name.
    pub key: String,
    /// Value on this host.
    pub current: String,
    /// What the profile wants.
    pub wanted: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why it matters.
    pub why: String,
}

fn sysctl_path(root: &Path, key: &str) -> PathBuf {
    root.join("sys").join(key.replace('.', "/"))
}

/// Compares the sysctls of `profile` with the host whose /proc is at `root`.
pub fn check(profile: &Profile, root: &Path) -> Vec<Row> {
    profile
        .sysctl
        .iter()
        .map(|s| {
            let raw = std::fs::read_to_string(sysctl_path(root, &s.key)).ok();
            let current = raw
                .as_deref()
                .map(str::trim)
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "));
            let value = current.as_deref().and_then(|v| v.parse::<u64>().ok());
            let (wanted, verdict) = match (s.min, s.eq, value) {
                (_, _, None) if current.is_none() => (want_text(s), Verdict::Unknown),
                (Some(m), _, Some(v)) => (
                    format!(">= {m}"),
                    if v >= m {
                        Verdict::Ok
                    } else {
                        Verdict::Change(m)
                    },
                ),
                (_, Some(e), Some(v)) => (
                    format!("= {e}"),
                    if v == e {
                        Verdict::Ok
                    } else {
                        Verdict::Change(e)
                    },
                ),
                _ => (want_text(s), Verdict::Info),
            };
            Row {
                key: s.key.clone(),
                current: current.unwrap_or_else(|| "(absent)".to_owned()),
                wanted,
                verdict,
                why: s.why.clone(),
            }
        })
        .collect()
}

fn want_text(s: &Sysctl) -> String {
    match (s.min, s.eq) {
        (Some(m), _) => format!(">= {m}"),
        (_, Some(e)) => format!("= {e}"),
        _ => "-".to_owned(),
    }
}

/// The soft open-file limit of this process, from /proc/self/limits.
pub fn nofile(root: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(root.join("self/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// CPUs serving the interrupts of the network interfaces: each interface of
/// `sys/class/net` (not `lo`) is matched, by its name or its device's name
/// (e.g. `virtio2`), to the lines of /proc/interrupts.
pub fn network_irq_cpus(proc_root: &Path, sys_root: &Path) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(proc_root.join("interrupts")) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(dir) = std::fs::read_dir(sys_root.join("class/net")) {
        for e in dir.flatten() {
            let ifname = e.file_name().to_string_lossy().into_owned();
            if ifname == "lo" {
                continue;
            }
            if let Ok(dev) = std::fs::read_link(e.path().join("device")) {
                if let Some(d) = dev.file_name() {
                    names.push(format!("{}-", d.to_string_lossy()));
                }
            }
            names.push(ifname);
        }
    }
    text.lines()
        .filter(|l| {
            names.iter().any(|n| {
                l.split_whitespace()
                    .last()
                    .is_some_and(|last| last.starts_with(n.as_str()))
            })
        })
        .filter_map(|l| {
            let irq = l.split(':').next()?.trim().to_owned();
            irq.parse::<u32>().ok()?;
            let name = l.split_whitespace().last()?.to_owned();
            let cpus =
                std::fs::read_to_string(proc_root.join("irq").join(&irq).join("smp_affinity_list"))
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_else(|_| "?".to_owned());
            Some((format!("irq {irq} {name}"), cpus))
        })
        .collect()
}

/// The kernel's UDP counters since boot (/proc/net/snmp): `(name, value)`
/// for InErrors, RcvbufErrors, SndbufErrors and MemErrors, the evidence that
/// receive buffers are too small (datagrams dropped before any process saw
/// them).
pub fn udp_errors(proc_root: &Path) -> Vec<(String, u64)> {
    let Ok(text) = std::fs::read_to_string(proc_root.join("net/snmp")) else {
        return Vec::new();
    };
    let mut udp = text.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return Vec::new();
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter(|(n, _)| {
            matches!(
                *n,
                "InErrors" | "RcvbufErrors" | "SndbufErrors" | "MemErrors"
            )
        })
        .filter_map(|(n, v)| Some((n.to_owned(), v.parse().ok()?)))
        .collect()
}

/// What `--apply` writes to persist the changes: the `sysctl.d` file (the
/// values wanted) and a rollback file (the values found), both in
/// `sysctl.conf` syntax; `None` when nothing differs.
pub fn persistent_files(rows: &[Row]) -> Option<(String, String)> {
    let changes: Vec<&Row> = rows
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Change(_)))
        .collect();
    if changes.is_empty() {
        return None;
    }
    let mut conf = String::from(
        "# Written by `sipedge tune --apply` (profile values; see tuning/*.toml for why).\n",
    );
    let mut back = String::from(
        "# The values `sipedge tune --apply` replaced: `sysctl -p THIS_FILE` puts them back\n\
         # (then remove the sysctl.d file it wrote).\n",
    );
    for r in changes {
        if let Verdict::Change(v) = r.verdict {
            let _ = writeln!(conf, "{} = {v}", r.key);
            let _ = writeln!(back, "{} = {}", r.key, r.current);
        }
    }
    Some((conf, back))
}

/// Loads a profile file.
pub fn load(path: &Path) -> Result<Profile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read profile {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("profile {}", path.display()))
}

/// Where `--apply` makes the changes last.
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/60-sipedge.conf";
/// Where `--apply` keeps the values it replaced.
pub const ROLLBACK_FILE: &str = "/etc/sipedge/sysctl-rollback.conf";

/// The report as JSON (`--json`).
fn json_report(rows: &[Row], udp: &[(String, u64)], nofile: Option<u64>) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "key": r.key,
                "current": r.current,
                "wanted": r.wanted,
                "verdict": match r.verdict {
                    Verdict::Ok => "ok",
                    Verdict::Change(_) => "change",
                    Verdict::Info => "info",
                    Verdict::Unknown => "unknown",
                },
                "set_to": match r.verdict { Verdict::Change(v) => Some(v), _ => None },
                "why": r.why,
            })
        })
        .collect();
    let udp: serde_json::Map<String, serde_json::Value> = udp
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::json!(v)))
        .collect();
    serde_json::json!({
        "cpus": crate::shard::affinity::allowed_cpus().unwrap_or_default(),
        "io_uring": crate::shard::uring::probe().is_ok(),
        "sysctl": rows,
        "udp_errors_since_boot": udp,
        "open_files": nofile,
    })
}

/// Runs `sipedge tune`: prints the report (as JSON with `json`); with
/// `apply`, writes what differs, live and persistently, keeping a rollback.
pub fn run(profile_path: &Path, apply: bool, json: bool) -> Result<bool> {
    let profile = load(profile_path)?;
    let proc_root = Path::new("/proc");
    let rows = check(&profile, proc_root);
    let udp = udp_errors(proc_root);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json_report(&rows, &udp, nofile(proc_root)))?
        );
        let differs = rows.iter().any(|r| matches!(r.verdict, Verdict::Change(_)));
        if apply {
            apply_changes(&rows)?;
        }
        return Ok(differs);
    }
    let mut out = String::new();
    let cpus = crate::shard::affinity::allowed_cpus().unwrap_or_default();
    let _ = writeln!(out, "sipedge tune — profile {}\n", profile_path.display());
    let _ = writeln!(
        out,
        "CPUs this process may use: {} ({})  → `sipedge run` starts {} shard(s), one pinned per CPU",
        cpus.len(),
        cpus.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        cpus.len()
    );
    match crate::shard::uring::probe() {
        Ok(()) => {
            let _ = writeln!(out, "io_uring: available (the io_uring driver is used)");
        }
        Err(why) => {
            let _ = writeln!(out, "io_uring: unavailable ({why}); the mio driver is used");
        }
    }
    let irqs = network_irq_cpus(proc_root, Path::new("/sys"));
    if irqs.is_empty() {
        let _ = writeln!(out, "network interrupts: none found in /proc/interrupts");
    } else {
        let _ = writeln!(
            out,
            "network interrupts (keep them off the shards' CPUs when you can spare one):"
        );
        for (name, cpus) in &irqs {
            let _ = writeln!(out, "  {name:<40} CPUs {cpus}");
        }
    }
    if !udp.is_empty() {
        let list: Vec<String> = udp.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            out,
            "UDP errors since boot (/proc/net/snmp): {}",
            list.join(", ")
        );
        if let Some((_, n)) = udp
            .iter()
            .find(|(k, _)| k == "RcvbufErrors")
            .filter(|(_, n)| *n > 0)
        {
            let _ = writeln!(
                out,
                "  {n} datagrams were dropped for a full receive buffer: raise net.core.rmem_max (and [socket] recv_buffer)"
            );
        }
    }
    let _ = writeln!(out, "\n{:<34} {:>22} {:>14}", "setting", "now", "wanted");
    let mut differs = false;
    for r in &rows {
        let mark = match r.verdict {
            Verdict::Ok => "ok",
            Verdict::Change(_) => {
                differs = true;
                "CHANGE"
            }
            Verdict::Info => "info",
            Verdict::Unknown => "unknown",
        };
        let _ = writeln!(
            out,
            "{:<34} {:>22} {:>14}  {mark}",
            r.key, r.current, r.wanted
        );
        if matches!(r.verdict, Verdict::Change(_)) {
            let _ = writeln!(out, "    why: {}", r.why);
        }
    }
    if let Some(want) = profile.limits.and_then(|l| l.nofile) {
        let have = nofile(proc_root);
        let ok = have.is_some_and(|h| h >= want);
        let _ = writeln!(
            out,
            "{:<34} {:>22} {:>14}  {}",
            "open files (ulimit -n)",
            have.map_or_else(|| "?".to_owned(), |h| h.to_string()),
            format!(">= {want}"),
            if ok { "ok" } else { "CHANGE" }
        );
        if !ok {
            differs = true;
            let _ = writeln!(out, "    why: every TCP/TLS/WebSocket connection is an open file; raise LimitNOFILE in the service unit or `ulimit -n`");
        }
    }
    print!("{out}");
    if apply {
        apply_changes(&rows)?;
    } else if differs {
        println!("\n`sipedge tune --apply` writes the sysctls marked CHANGE (as root): now, and in {SYSCTL_FILE} for the next boots, keeping the old values in {ROLLBACK_FILE}.");
    }
    Ok(differs)
}

/// `--apply`: the rollback file first (so nothing is changed that cannot be
/// put back), then the persistent file, then the live values.
fn apply_changes(rows: &[Row]) -> Result<()> {
    let Some((conf, back)) = persistent_files(rows) else {
        println!("nothing to apply");
        return Ok(());
    };
    let rollback = Path::new(ROLLBACK_FILE);
    if let Some(dir) = rollback.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // An earlier rollback file holds the host's original values: keep it.
    if !rollback.exists() {
        std::fs::write(rollback, back)
            .with_context(|| format!("cannot write {ROLLBACK_FILE} (run as root)"))?;
    }
    std::fs::write(SYSCTL_FILE, conf)
        .with_context(|| format!("cannot write {SYSCTL_FILE} (run as root)"))?;
    println!("wrote {SYSCTL_FILE} (rollback: {ROLLBACK_FILE})");
    for r in rows {
        if let Verdict::Change(v) = r.verdict {
            let path = sysctl_path(Path::new("/proc"), &r.key);
            match std::fs::write(&path, v.to_string()) {
                Ok(()) => println!("applied: {} = {v}", r.key),
                Err(e) => println!(
                    "could not set {} now ({e}); it applies at the next boot",
                    r.key
                ),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_a_fake_proc() {
        let root = std::env::temp_dir().join(format!("sipedge-tune-{}", std::process::id()));
        std::fs::create_dir_all(root.join("sys/net/core")).unwrap();
        std::fs::create_dir_all(root.join("sys/kernel")).unwrap();
        std::fs::write(root.join("sys/net/core/rmem_max"), "212992\n").unwrap();
        std::fs::write(root.join("sys/net/core/wmem_max"), "16777216\n").unwrap();
        std::fs::write(root.join("sys/kernel/io_uring_disabled"), "2\n").unwrap();
        std::fs::create_dir_all(root.join("self")).unwrap();
        std::fs::write(root.join("self/limits"), "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n").unwrap();
        let profile: Profile = toml::from_str(
            &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/edge.toml"))
                .unwrap(),
        )
        .unwrap();
        let rows = check(&profile, &root);
        let get = |k: &str| rows.iter().find(|r| r.key == k).unwrap().verdict.clone();
        assert_eq!(get("net.core.rmem_max"), Verdict::Change(4_194_304));
        assert_eq!(get("net.core.wmem_max"), Verdict::Ok);
        assert_eq!(get("kernel.io_uring_disabled"), Verdict::Change(0));
        assert_eq!(get("net.core.netdev_max_backlog"), Verdict::Unknown);
        assert_eq!(nofile(&root), Some(1024));
        // The persistent file sets what differs; the rollback holds what was there.
        let (conf, back) = persistent_files(&rows).unwrap();
        assert!(conf.contains("net.core.rmem_max = 4194304\n"), "{conf}");
        assert!(conf.contains("kernel.io_uring_disabled = 0\n"), "{conf}");
        assert!(!conf.contains("wmem_max"), "{conf}");
        assert!(back.contains("net.core.rmem_max = 212992\n"), "{back}");
        assert!(back.contains("kernel.io_uring_disabled = 2\n"), "{back}");
        // UDP counters from /proc/net/snmp.
        std::fs::create_dir_all(root.join("net")).unwrap();
        std::fs::write(
            root.join("net/snmp"),
            "Ip: Forwarding\nIp: 1\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\nUdp: 10 0 7 10 7 0 0 0 0\n",
        )
        .unwrap();
        assert_eq!(
            udp_errors(&root),
            vec![
                ("InErrors".to_owned(), 7),
                ("RcvbufErrors".to_owned(), 7),
                ("SndbufErrors".to_owned(), 0),
                ("MemErrors".to_owned(), 0)
            ]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
