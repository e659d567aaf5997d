//! SIP URIs and the strings the edge reads as addresses: the URI parser and
//! what routing derives from a URI (the AoR key), the dispatcher's member
//! keys, durations and transports of the config. Nothing may panic; an AoR
//! key is `user@host` with the host lower-cased.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipedge::routing::dispatcher::SetConfig;
use sipedge::sip::Uri;

fuzz_target!(|data: &[u8]| {
    if let Ok(u) = Uri::parse(data) {
        let _ = (u.user, u.host_bytes, u.port);
        let mut buf = [0u8; 512];
        if let Some(key) = sipedge::proxy::stateful::aor_key(&u, &mut buf) {
            let at = key.iter().position(|&b| b == b'@').expect("user@host");
            assert!(!key[at + 1..].iter().any(u8::is_ascii_uppercase));
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = SetConfig::aor_key(s);
        let _ = sipedge::config::parse_duration(s);
        let _ = sipedge::config::upstream_transport(s);
    }
});
