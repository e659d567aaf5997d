//! The AF_XDP driver's frame codec (src/transport/frame.rs): any bytes a
//! NIC queue delivers parse to a UDP view or a named reason, never a
//! panic; a parsed frame rebuilt from its view parses back to the same
//! addresses and payload (checksums recomputed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipedge::transport::frame;

fuzz_target!(|data: &[u8]| {
    for verify in [false, true] {
        let Ok(u) = frame::parse(data, verify) else {
            continue;
        };
        if u.src.is_ipv4() != u.dst.is_ipv4() {
            continue;
        }
        let mut buf = vec![0u8; data.len() + 64];
        let n = frame::build(&mut buf, &u.link, u.src, u.dst, u.payload, 1).expect("fits");
        let again = frame::parse(&buf[..n], true).expect("a built frame parses");
        assert_eq!((again.link, again.src, again.dst, again.payload), (u.link, u.src, u.dst, u.payload));
    }
});
