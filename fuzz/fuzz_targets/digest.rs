//! Digest credentials as a client writes them (Authorization /
//! Proxy-Authorization): the header value's parser and every field the
//! authenticator reads from it (algorithm, hex values, nonce). Nothing
//! may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipedge::auth::digest::{Algorithm, Hex};
use sipedge::sip::Credentials;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Credentials::parse(data) {
        let _ = c.is_digest();
        for param in c.params.iter() {
            let _ = param;
        }
        for field in [
            &b"username"[..],
            b"realm",
            b"nonce",
            b"uri",
            b"response",
            b"algorithm",
            b"cnonce",
            b"opaque",
            b"qop",
            b"nc",
        ] {
            if let Some(v) = c.params.get(field) {
                let _ = Algorithm::from_token(v);
                let _ = Hex::parse(v);
            }
        }
    }
    let _ = Hex::parse(data);
});
