//! Parses arbitrary bytes as a PIDF body. Nothing may panic; and a body
//! that parses must parse again from `as_bytes()` to an equal Document,
//! compose alone into a document that parses with the same basic status
//! (or is too large: composition copies root declarations into each
//! element), and compose with itself into one that parses (or exceeds the
//! size or element limits, which composing two documents can).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipedge::presence::pidf::{compose, Document, PidfError};

const ENTITY: &str = "sip:fuzz@example.test";

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = Document::parse(data) else {
        return;
    };
    assert_eq!(Document::parse(doc.as_bytes()).as_ref(), Ok(&doc));
    assert!(doc.heap_size() >= doc.as_bytes().len());
    let status = doc.status();
    let _ = status.label();

    let mut out = Vec::new();
    compose(ENTITY, &[&doc], &mut out);
    match Document::parse(&out) {
        Ok(alone) => {
            assert_eq!(alone.status().open, status.open);
            assert_eq!(alone.tuples(), doc.tuples());
        }
        Err(PidfError::TooLarge) => {}
        Err(e) => panic!("{e:?}: {}", String::from_utf8_lossy(&out)),
    }

    compose(ENTITY, &[&doc, &doc], &mut out);
    match Document::parse(&out) {
        Ok(twice) => {
            assert_eq!(twice.status().open, status.open);
            assert_eq!(twice.tuples(), 2 * doc.tuples());
        }
        Err(PidfError::TooLarge | PidfError::TooMany) => {}
        Err(e) => panic!("{e:?}: {}", String::from_utf8_lossy(&out)),
    }
});
