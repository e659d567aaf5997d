//! Presence documents: PIDF (RFC 3863) with RPID (RFC 4480) and the data model's person and device (RFC 4479), parsed, summarised and composed without I/O.
pub mod pidf;
