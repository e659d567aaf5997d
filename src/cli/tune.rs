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

/// Loads a profile file.
pub fn load(path: &Path) -> Result<Profile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read profile {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("profile {}", path.display()))
}

/// Runs `sipedge tune`: prints the report; with `apply`, writes what differs.
pub fn run(profile_path: &Path, apply: bool) -> Result<bool> {
    let profile = load(profile_path)?;
    let proc_root = Path::new("/proc");
    let rows = check(&profile, proc_root);
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
        for r in &rows {
            if let Verdict::Change(v) = r.verdict {
                let path = sysctl_path(proc_root, &r.key);
                match std::fs::write(&path, v.to_string()) {
                    Ok(()) => println!("applied: {} = {v}", r.key),
                    Err(e) => println!("could not set {} ({e}); run as root", r.key),
                }
            }
        }
    } else if differs {
        println!("\n`sipedge tune --apply` writes the sysctls marked CHANGE (as root; not persistent across reboots: copy them to /etc/sysctl.d/ for that).");
    }
    Ok(differs)
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
        std::fs::remove_dir_all(&root).unwrap();
    }
}
