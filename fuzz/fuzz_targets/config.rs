//! The config file (`sipedge run --config`, `check-config`, SIGHUP): TOML
//! parsing and validation. Nothing may panic. Inputs that name things
//! validation would touch outside the process (host names it resolves,
//! files it reads) are only parsed, not validated: the fuzzer stays off the
//! network and the file system.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipedge::config::FileConfig;

const OUTSIDE: &[&str] = &[
    "upstream",
    "destinations",
    "users",
    "tls",
    "cert",
    "key",
    "ca",
    "file",
    "url",
    "socket",
    "data_dir",
    "networks",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = FileConfig::from_toml(text) else {
        return;
    };
    if OUTSIDE.iter().any(|k| text.contains(k)) {
        return;
    }
    let _ = cfg.validate(2);
});
