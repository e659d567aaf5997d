//! The AF_XDP test network: two network namespaces joined by a veth pair
//! (two queues each way), made by the test thread that first needs them
//! and removed when it ends. sipedge runs in `a` on 198.18.0.1 (and
//! 2001:2::1), the test's clients in `b` on 198.18.0.2–9 (and 2001:2::2);
//! nothing else is on that link (RFC 2544's benchmarking range, RFC 5180's
//! for IPv6).
#![allow(
    unsafe_code,
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::cell::RefCell;
use std::net::UdpSocket;
use std::process::Command;
use std::rc::Rc;
use std::sync::OnceLock;

/// The proxy's side.
pub const PROXY_IP: &str = "198.18.0.1";
/// The clients' first address.
pub const CLIENT_IP: &str = "198.18.0.2";
/// The proxy's IPv6 address.
pub const PROXY_IP6: &str = "2001:2::1";
/// The clients' IPv6 address.
pub const CLIENT_IP6: &str = "2001:2::2";

/// The two namespaces of one test thread.
#[derive(Debug)]
pub struct Net {
    /// sipedge's namespace.
    pub a: String,
    /// The clients' namespace.
    pub b: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

impl Net {
    fn create(tag: usize) -> Option<Self> {
        delete_stale();
        let pid = std::process::id();
        let a = format!("sxa{pid}t{tag}");
        let b = format!("sxb{pid}t{tag}");
        let (va, vb) = (format!("xa{pid}{tag}"), format!("xb{pid}{tag}"));
        let va: String = va.chars().take(15).collect();
        let vb: String = vb.chars().take(15).collect();
        let net = Self { a, b };
        let ok = ip(&["netns", "add", &net.a])
            && ip(&["netns", "add", &net.b])
            && ip(&[
                "link",
                "add",
                &va,
                "numtxqueues",
                "2",
                "numrxqueues",
                "2",
                "type",
                "veth",
                "peer",
                "name",
                &vb,
                "numtxqueues",
                "2",
                "numrxqueues",
                "2",
            ])
            && ip(&["link", "set", &va, "netns", &net.a])
            && ip(&["link", "set", &vb, "netns", &net.b])
            && ip(&["-n", &net.a, "addr", "add", "198.18.0.1/24", "dev", &va])
            && ip(&[
                "-n",
                &net.a,
                "addr",
                "add",
                "2001:2::1/64",
                "dev",
                &va,
                "nodad",
            ])
            && (2..=9).all(|i| {
                ip(&[
                    "-n",
                    &net.b,
                    "addr",
                    "add",
                    &format!("198.18.0.{i}/24"),
                    "dev",
                    &vb,
                ])
            })
            && ip(&[
                "-n",
                &net.b,
                "addr",
                "add",
                "2001:2::2/64",
                "dev",
                &vb,
                "nodad",
            ])
            && ip(&["-n", &net.a, "link", "set", &va, "up"])
            && ip(&["-n", &net.b, "link", "set", &vb, "up"])
            && ip(&["-n", &net.a, "link", "set", "lo", "up"])
            && ip(&["-n", &net.b, "link", "set", "lo", "up"]);
        ok.then_some(net)
    }

    /// The veth end in `a` (sipedge's interface).
    pub fn proxy_link(&self) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.a, "-o", "link", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.contains(": lo:"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A command run inside namespace `ns`.
    pub fn exec(ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }
}

/// Deletes namespace `ns` (and the veth end in it), retrying: concurrent
/// deletions of other namespaces can make one fail for a moment (EBUSY).
fn delete(ns: &str) {
    for _ in 0..20 {
        ip(&["netns", "del", ns]);
        if !std::path::Path::new(&format!("/var/run/netns/{ns}")).exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!("could not delete network namespace {ns}");
}

/// Deletes the namespaces of test processes that are gone (killed before
/// they could clean up).
fn delete_stale() {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name
            .strip_prefix("sxa")
            .or_else(|| name.strip_prefix("sxb"))
        else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('t') else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            delete(&name);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting the namespaces deletes the veth pair with them.
        delete(&self.a);
        delete(&self.b);
    }
}

/// True when this machine can run the AF_XDP tests: root, network
/// namespaces, veth and an XDP program on it. When it cannot and
/// SIPEDGE_REQUIRE_XDP is set (CI), that is a failure instead of a skip.
pub fn xdp_available() -> bool {
    static OK: OnceLock<Result<(), String>> = OnceLock::new();
    let r = OK.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let Some(n) = Net::create(999) else {
            return Err("cannot create network namespaces and a veth pair".into());
        };
        drop(n);
        Ok(())
    });
    match r {
        Ok(()) => true,
        Err(why) => {
            assert!(
                std::env::var_os("SIPEDGE_REQUIRE_XDP").is_none(),
                "AF_XDP tests required (SIPEDGE_REQUIRE_XDP) but impossible here: {why}"
            );
            eprintln!("skipping the AF_XDP variant: {why}");
            false
        }
    }
}

thread_local! {
    static NET: RefCell<Option<Rc<Net>>> = const { RefCell::new(None) };
    static CLIENTS_IN_NET: RefCell<bool> = const { RefCell::new(false) };
}

/// This thread's network (made on first use).
pub fn net() -> Rc<Net> {
    NET.with(|n| {
        let mut n = n.borrow_mut();
        if let Some(net) = n.as_ref() {
            return net.clone();
        }
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let tag = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let net = Rc::new(Net::create(tag).expect("create the test network"));
        *n = Some(net.clone());
        net
    })
}

/// Whether this thread's clients live in the test network (set while an
/// `--io xdp` proxy is the one under test).
pub fn set_clients_in_net(on: bool) {
    CLIENTS_IN_NET.with(|c| *c.borrow_mut() = on);
}

/// True while clients belong in the test network.
pub fn clients_in_net() -> bool {
    CLIENTS_IN_NET.with(|c| *c.borrow())
}

/// Runs `f` on a thread inside namespace `ns` (sockets it makes stay there).
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this (new, single-purpose) thread with a
        // namespace descriptor that is open for the call.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// A UDP socket bound in namespace `ns` to `addr`.
pub fn udp_in(ns: &str, addr: &str) -> UdpSocket {
    let addr = addr.to_owned();
    in_ns(ns, move || UdpSocket::bind(&addr).unwrap())
}
