//! Decodes arbitrary bytes as what another node (or a Redis someone else
//! can write to) hands a node: a feed record (`r` of a stream entry) and a
//! binding (a `b…` field of an AoR's hash). Nothing may panic; what decodes
//! re-encodes to bytes that decode to the same value, and a binding made
//! for another node still decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipedge::location::{Binding, Record};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Record::decode(data) {
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(Record::decode(&out).as_ref(), Ok(&r));
        let _ = r.op.aor();
    }
    if let Ok(b) = Binding::from_bytes(data) {
        assert_eq!(b.as_bytes(), data);
        let other = b.for_another_node();
        let again = Binding::from_bytes(other.as_bytes()).expect("still a binding");
        assert_eq!((again.flow(), again.id(), again.aor()), (0, b.id(), b.aor()));
        let _ = b.target();
    }
});
