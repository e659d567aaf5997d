//! The architecture as a check (shared/DESIGN.md, "arrows only point
//! down"): every module of `src/` has a layer; a module may use only modules
//! of lower layers (and itself), and the sans-IO core — everything below
//! `store` and `shard` — uses no sockets, files, threads, processes,
//! environment or clocks: time and bytes are its inputs.
//!
//! The scan reads the source text: `crate::NAME` paths in code (comments,
//! doc comments and `#[cfg(test)]` modules skipped) and a list of I/O paths.
//! Test-only files (`tests.rs`, `tests/` and `*_tests/` folders) are exempt.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// (module, layer): a module may use modules of a strictly lower layer.
const LAYERS: &[(&str, u8)] = &[
    ("time", 0),
    ("hash", 1),
    ("wheel", 1),
    ("sip", 2),
    ("transport", 3),
    ("txn", 3),
    ("policy", 4),
    ("auth", 5),
    ("location", 6),
    ("registrar", 7),
    ("presence", 8),
    ("routing", 9),
    ("proxy", 10),
    ("store", 11),
    ("sim", 12),
    // The validated settings: data the runtime reads (shard::plan).
    ("config", 13),
    ("shard", 14),
    ("metrics", 15),
    ("control", 15),
    ("cli", 16),
];

/// Modules that must stay sans-IO.
const SANS_IO: &[&str] = &[
    "time",
    "hash",
    "wheel",
    "sip",
    "transport",
    "txn",
    "policy",
    "auth",
    "location",
    "registrar",
    "presence",
    "routing",
    "proxy",
];

/// Paths that mean I/O, threads or a clock.
const IO_PATHS: &[&str] = &[
    "std::net::UdpSocket",
    "std::net::TcpStream",
    "std::net::TcpListener",
    "UdpSocket::",
    "TcpStream::",
    "TcpListener::",
    "std::fs",
    "std::thread",
    "std::process",
    "std::env",
    "std::io::stdin",
    "Instant::now",
    "SystemTime::now",
    "std::time::Instant",
    "mio::",
    "io_uring::",
    "libc::",
    "socket2::",
    "thread_rng",
    "OsRng",
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// The code lines of a source file: comments dropped, and everything from
/// a `#[cfg(test)]` module on.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            if let Some((_, next)) = lines.peek() {
                let n = next.trim_start();
                if n.starts_with("mod ") || n.starts_with("pub(crate) mod ") {
                    break;
                }
            }
            continue;
        }
        if t.starts_with("//") {
            continue;
        }
        let code = match t.find("//") {
            Some(k) if !t[..k].contains('"') => &t[..k],
            _ => t,
        };
        out.push((i + 1, code.to_owned()));
    }
    out
}

/// The violations in one file of module `module`.
fn check_file(module: &str, file: &str, text: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let own = layer(module);
    for (n, line) in code_lines(text) {
        let mut rest = line.as_str();
        while let Some(k) = rest.find("crate::") {
            let after = &rest[k + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &after[name.len()..];
            if name == module || name.is_empty() {
                continue;
            }
            match (own, layer(&name)) {
                (Some(a), Some(b)) if b < a => {}
                (Some(_), Some(_)) => bad.push(format!(
                    "{file}:{n}: {module} uses crate::{name}, a layer not below it"
                )),
                _ => bad.push(format!(
                    "{file}:{n}: crate::{name} from {module}: a module without a layer (add it to LAYERS)"
                )),
            }
        }
        if SANS_IO.contains(&module) {
            for p in IO_PATHS {
                if line.contains(p) {
                    bad.push(format!("{file}:{n}: sans-IO module {module} uses {p}"));
                }
            }
        }
    }
    bad
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name()
                .is_some_and(|n| n == "tests" || n.to_string_lossy().ends_with("_tests"))
            {
                continue;
            }
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs")
            && p.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(p);
        }
    }
}

#[test]
fn arrows_point_down_and_the_core_does_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut bad = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if matches!(module.as_str(), "lib" | "main") {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        *seen.entry(module.clone()).or_default() += 1;
        if layer(&module).is_none() {
            bad.push(format!(
                "{}: module {module} has no layer (add it to LAYERS)",
                rel.display()
            ));
            continue;
        }
        bad.extend(check_file(&module, &rel.display().to_string(), &text));
    }
    for m in ["sip", "txn", "transport", "proxy", "shard", "registrar"] {
        assert!(
            seen.contains_key(m),
            "the scan found no files of {m}: {seen:?}"
        );
    }
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
}

/// The checker itself flags what it must (so the test above can fail).
#[test]
fn the_checker_flags_arrows_up_and_io() {
    let up = "use crate::proxy::branch::Hasher;\n";
    assert_eq!(check_file("txn", "txn/key.rs", up).len(), 1);
    let io = "let s = std::net::UdpSocket::bind(a)?;\nlet t = Instant::now();\n";
    assert_eq!(check_file("registrar", "registrar/mod.rs", io).len(), 3);
    let fine = "use crate::sip::Message; // crate::shard is above\n/// crate::cli\n";
    assert!(check_file("txn", "txn/key.rs", fine).is_empty());
    let test_mod = "use crate::sip::X;\n#[cfg(test)]\nmod tests {\n use crate::shard::Y;\n}\n";
    assert!(check_file("txn", "txn/key.rs", test_mod).is_empty());
    let unknown = "use crate::nowhere::X;\n";
    assert_eq!(check_file("proxy", "proxy/mod.rs", unknown).len(), 1);
}
