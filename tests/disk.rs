//! The binding log on failing disks (issue 14), with the real binary and
//! real file systems the test mounts itself (root only: a tmpfs of a few
//! hundred KiB for a full disk, the same remounted read-only; a failing
//! `fdatasync` through an `LD_PRELOAD` shim built here with `cc`, since
//! this kernel has no device-mapper for dm-flakey):
//!
//! - full: REGISTER gets 503 with Retry-After, a call to a user registered
//!   before is still routed (from memory), and once space returns a
//!   REGISTER succeeds; after `kill -9` and a torn tail appended to the
//!   log, the restart cuts the tail with one log line and every binding
//!   that was acknowledged is there;
//! - read-only: the same, writes resume after the remount read-write;
//! - failing fsync (`[store] fsync = true`): the same, and the batch whose
//!   fsync failed is not acknowledged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Msg, Proxy, TempDir, Ua};

const DOMAIN: &str = "example.test";

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// `None` (with one line said) where mounting is not allowed; CI runs
    /// as root and requires it (SIPEDGE_REQUIRE_PEERS).
    fn mount(tag: &str, size: &str) -> Option<Self> {
        let dir = TempDir::new(tag);
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var_os("SIPEDGE_REQUIRE_PEERS").is_none(),
                "cannot mount a tmpfs (root needed), and SIPEDGE_REQUIRE_PEERS is set"
            );
            eprintln!("skipping: cannot mount a tmpfs here (the disk tests need root)");
            return None;
        }
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        &self.dir.path
    }

    fn remount(&self, opt: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(&self.dir.path)
            .status()
            .unwrap();
        assert!(st.success(), "remount {opt}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.dir.path)
            .status();
    }
}

fn register(edge: SocketAddr, ua: &Ua, user: &str, n: u32) -> Msg {
    let a = ua.addr;
    ua.send(
        &format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-reg-{user}-{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=r{n}\r\nTo: <sip:{user}@{DOMAIN}>\r\n\
             Call-ID: reg-{user}@test\r\nCSeq: {n} REGISTER\r\nContact: <sip:{user}@{a}>\r\n\
             Expires: 3600\r\nContent-Length: 0\r\n\r\n"
        ),
        edge,
    );
    let (m, _, _) = ua.expect("a final REGISTER response", |m| {
        m.status().is_some_and(|s| s >= 200)
    });
    m
}

/// Calls `user` from `caller`: the INVITE reaches `callee` (answered 486).
fn call_reaches(edge: SocketAddr, caller: &Ua, callee: &Ua, user: &str, n: u32) {
    let a = caller.addr;
    caller.send(
        &format!(
            "INVITE sip:{user}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-inv-{user}-{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:caller@{DOMAIN}>;tag=c{n}\r\nTo: <sip:{user}@{DOMAIN}>\r\n\
             Call-ID: call-{user}-{n}@test\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{a}>\r\n\
             Content-Length: 0\r\n\r\n"
        ),
        edge,
    );
    let (inv, from) = callee.expect_request("INVITE");
    callee.answer(
        &inv,
        &common::response_to(&inv, 486, "Busy Here", "t1", "", ""),
    );
    let _ = from;
    caller.expect_response(486, "INVITE");
}

fn expect_503_retry_after(m: &Msg, what: &str) {
    assert_eq!(m.status(), Some(503), "{what}: {}", m.first_line());
    assert!(
        m.text.contains("\r\nRetry-After: "),
        "{what}: 503 without Retry-After: {}",
        m.text
    );
}

fn edge(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Proxy {
    let data = data.to_string_lossy().into_owned();
    let mut args = vec!["--domain", DOMAIN, "--data-dir", &data, "--shards", "2"];
    args.extend_from_slice(extra);
    Proxy::start_env(&args, env)
}

/// The log files of the store in `data`.
fn logs(data: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect()
}

/// Fills the file system of `dir` to the last byte.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    // Byte by byte up to the very end.
    while f.write_all(&[0]).is_ok() {}
    let _ = f.sync_all();
    path
}

/// After a failure: users bob0, bob1, … register until one is refused with
/// 503 + Retry-After (a file system may still take the rest of a page);
/// alice's refresh is refused the same way; a call to `alice` (registered
/// before) is still routed, from memory; `restore` gives the disk back; then
/// `bob` registers. Returns the users acknowledged with 200.
fn outage(
    p: &Proxy,
    alice: &Ua,
    bob: &Ua,
    caller: &Ua,
    break_it: impl FnOnce(),
    restore: impl FnOnce(),
) -> Vec<String> {
    assert_eq!(register(p.addr, alice, "alice", 1).status(), Some(200));
    let mut acked = vec!["alice".to_owned()];
    break_it();
    let mut refused = None;
    for i in 0..200 {
        let user = format!("bob{i}");
        let m = register(p.addr, bob, &user, 1);
        if m.status() == Some(200) {
            acked.push(user);
        } else {
            refused = Some(m);
            break;
        }
    }
    let refused = refused.expect("a REGISTER refused while the store fails");
    expect_503_retry_after(&refused, "REGISTER while the store fails");
    // alice's refreshes too (her partition may have had room left).
    let refresh = (2..200)
        .map(|n| register(p.addr, alice, "alice", n))
        .find(|m| m.status() != Some(200))
        .expect("a refresh refused while the store fails");
    expect_503_retry_after(&refresh, "a refresh while the store fails");
    call_reaches(p.addr, caller, alice, "alice", 1);
    restore();
    // Writes resume (the first try may meet the end of the outage).
    let mut n = 1000;
    loop {
        let m = register(p.addr, bob, "bob", n);
        if m.status() == Some(200) {
            break;
        }
        assert!(
            n < 1005,
            "REGISTER after the disk came back: {}",
            m.first_line()
        );
        n += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    acked.push("bob".to_owned());
    call_reaches(p.addr, caller, bob, "bob", 2);
    acked
}

/// Restarts on `data` and checks every acknowledged binding is back: a call
/// to each reaches its UA (alice, or bob for the others).
fn all_survive(data: &Path, acked: &[String], alice: &Ua, bob: &Ua, caller: &Ua) -> Proxy {
    let p = edge(data, &[], &[]);
    std::thread::sleep(Duration::from_millis(200));
    for (n, user) in acked.iter().enumerate() {
        let ua = if user == "alice" { alice } else { bob };
        call_reaches(p.addr, caller, ua, user, 10 + n as u32);
    }
    p
}

#[test]
fn a_full_disk_refuses_registers_routes_from_memory_and_recovers() {
    let Some(fs) = Tmpfs::mount("disk-full", "512k") else {
        return;
    };
    let data = fs.path().join("data");
    let (alice, bob, caller) = (Ua::new(), Ua::new(), Ua::new());
    let mut p = edge(&data, &[], &[]);
    let root = fs.path().to_path_buf();
    let acked = outage(
        &p,
        &alice,
        &bob,
        &caller,
        || {
            fill(&root);
        },
        || std::fs::remove_file(root.join("filler")).unwrap(),
    );
    p.terminate();
    assert!(
        p.counter("sipedge_registrar_store_failures_total") >= 2,
        "{:#?}",
        p.log
    );
    // kill -9, then a torn tail on every log: each is cut back with one
    // line, and nothing acknowledged is lost.
    let mut p = edge(&data, &[], &[]);
    p.kill9();
    for log in logs(&data) {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(&[0x40, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3])
            .unwrap();
    }
    let mut p = all_survive(&data, &acked, &alice, &bob, &caller);
    let cut = p
        .log
        .iter()
        .filter(|l| l.contains("torn or corrupt tail"))
        .count();
    assert_eq!(cut, logs(&data).len(), "one line per log cut: {:#?}", p.log);
    p.terminate();
}

/// A data directory on a read-only file system at start: one clear line
/// and exit code 2, not a half-started edge.
#[test]
fn a_read_only_data_dir_at_start_is_refused() {
    let Some(fs) = Tmpfs::mount("disk-ro", "4m") else {
        return;
    };
    std::fs::create_dir(fs.path().join("data")).unwrap();
    fs.remount("ro");
    let out = Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(["run", "--listen", "udp:127.0.0.1:0", "--domain", DOMAIN])
        .arg("--data-dir")
        .arg(fs.path().join("data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("Read-only file system") && err.contains("data"),
        "{err}"
    );
    fs.remount("rw");
}

/// Builds the fault shim: while the file named by SIPEDGE_FAULT exists,
/// `fdatasync`/`fsync` fail with EIO when it holds "fsync", and writes to
/// regular files fail with EROFS when it holds "erofs" (a file system the
/// kernel turned read-only under the edge: a tmpfs cannot be remounted
/// read-only while a file is open for writing, and this kernel has no
/// device-mapper to fail a real device).
fn fault_shim(dir: &TempDir) -> Option<PathBuf> {
    let src = dir.write(
        "fault.c",
        r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>
static int fault(const char *kind) {
    const char *p = getenv("SIPEDGE_FAULT");
    if (!p) return 0;
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char buf[16] = {0};
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    return n > 0 && strncmp(buf, kind, strlen(kind)) == 0;
}
static int regular(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
}
int fdatasync(int fd) {
    if (fault("fsync")) { errno = EIO; return -1; }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
int fsync(int fd) {
    if (fault("fsync")) { errno = EIO; return -1; }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}
ssize_t write(int fd, const void *b, size_t n) {
    if (regular(fd) && fault("erofs")) { errno = EROFS; return -1; }
    ssize_t (*real)(int, const void *, size_t) =
        (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    return real(fd, b, n);
}
ssize_t writev(int fd, const struct iovec *v, int n) {
    if (regular(fd) && fault("erofs")) { errno = EROFS; return -1; }
    ssize_t (*real)(int, const struct iovec *, int) =
        (ssize_t (*)(int, const struct iovec *, int))dlsym(RTLD_NEXT, "writev");
    return real(fd, v, n);
}
"#,
    );
    let so = dir.path.join("fault.so");
    let ok = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("SIPEDGE_REQUIRE_PEERS").is_none(),
            "cannot build the fault shim with cc"
        );
        eprintln!("skipping: no C compiler for the fault shim");
        return None;
    }
    Some(so)
}

/// The outage and recovery with `fault` ("fsync" or "erofs") injected.
fn injected(fault: &str, config: &str) {
    let dir = TempDir::new(&format!("disk-{fault}"));
    let Some(shim) = fault_shim(&dir) else {
        return;
    };
    let data = dir.path.join("data");
    let trigger = dir.path.join("fault-now");
    let config = dir.write("edge.toml", config);
    let (alice, bob, caller) = (Ua::new(), Ua::new(), Ua::new());
    let shim = shim.to_string_lossy().into_owned();
    let trig = trigger.to_string_lossy().into_owned();
    let mut p = edge(
        &data,
        &["--config", &config],
        &[("LD_PRELOAD", &shim), ("SIPEDGE_FAULT", &trig)],
    );
    let acked = outage(
        &p,
        &alice,
        &bob,
        &caller,
        || std::fs::write(&trigger, fault).unwrap(),
        || std::fs::remove_file(&trigger).unwrap(),
    );
    p.kill9();
    all_survive(&data, &acked, &alice, &bob, &caller).terminate();
}

#[test]
fn a_read_only_file_system_under_the_edge_refuses_registers_and_recovers() {
    injected("erofs", "");
}

#[test]
fn a_failing_fsync_is_not_acknowledged_and_writes_resume() {
    injected("fsync", "[store]\nfsync = true\n");
}
