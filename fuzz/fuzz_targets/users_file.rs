//! The users file (TOML `[[user]]` entries: name, domain, password or
//! ha1_*): a file an operator or a script writes, read at start and on
//! SIGHUP. Nothing may panic; every user it accepts is found again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipedge::auth::users::Users;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(users) = Users::from_toml(text) {
        let _ = users.len();
        let _ = users.get(b"alice", b"example.test");
    }
});
