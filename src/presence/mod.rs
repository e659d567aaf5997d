//! SIMPLE presence and IM for the AoRs a shard owns: PUBLISH (RFC 3903)
//! with PIDF/RPID bodies, SUBSCRIBE/NOTIFY (RFC 6665) for the `presence`
//! event package (RFC 3856), and the store of MESSAGEs (RFC 3428) for users
//! with no contact, delivered when they next register — a local service
//! like the registrar, and beside it on the owner shard of each AoR.
//!
//! | module | what |
//! |---|---|
//! | [`pidf`] | PIDF (RFC 3863) with RPID (RFC 4480): parse, validate, compose |
//! | [`server`] | [`Presence`]: publications, subscriptions, NOTIFYs, stored messages |
//! | `codec` | the durable encoding of its entries in the partition feed |
//!
//! Sans-IO: requests, the time and the location's answers go in; responses,
//! requests to originate (NOTIFY, MESSAGE) and feed entries come out.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod codec;
pub mod pidf;
pub mod server;

pub use server::{
    Action, Delivery, Outgoing, Presence, PresenceConfig, PresenceCounters, WatcherRule,
};

#[cfg(test)]
mod tests;

/// A change of a publication, read from one of presence's change records
/// (for observers on other shards: a hunt group skipping busy members).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicationChange<'a> {
    /// A publication of `aor` (entity tag `etag`) now says `label`
    /// (`online`, `busy`, `away` or `offline`, see [`pidf::Status::label`]).
    Put {
        /// The presentity's AoR key.
        aor: &'a [u8],
        /// The publication's entity tag.
        etag: &'a [u8],
        /// Its summary.
        label: &'static str,
    },
    /// The publication is gone (removed or expired).
    Gone {
        /// The presentity's AoR key.
        aor: &'a [u8],
        /// The publication's entity tag.
        etag: &'a [u8],
    },
}

/// The publication change `op` records, if it is one.
pub fn publication_change(op: &crate::location::Op) -> Option<PublicationChange<'_>> {
    use crate::location::Op;
    match op {
        Op::Put(e) if e.kind == codec::kind::PUBLICATION => {
            let label = pidf::Document::parse(&e.value).ok()?.status().label();
            Some(PublicationChange::Put {
                aor: &e.aor,
                etag: &e.key,
                label,
            })
        }
        Op::Del { aor, kind, key } if *kind == codec::kind::PUBLICATION => {
            Some(PublicationChange::Gone { aor, etag: key })
        }
        _ => None,
    }
}
