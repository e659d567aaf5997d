//! The SIP message layer: parser, typed header views, URIs and the editor
//! (RFC 3261 §7, §19, §20, §25; RFC 3581; RFC 5118).
//!
//! Pure functions over bytes: no I/O, no clock, no allocation per message.
//!
//! | file | owns |
//! |---|---|
//! | [`scan`] | memchr-based delimiter search, character classes, the comma splitter |
//! | [`message`] | [`parse`] / [`parse_stream`], [`Message<'buf>`](Message), the [`HeaderIndex`] |
//! | [`header`] | on-demand decoders: [`Via`], [`NameAddr`], [`CSeq`], [`Contact`], [`Credentials`] |
//! | [`uri`] | [`Uri`] and [`Host`], comparison per §19.1.4 |
//! | [`emit`] | forwarding edits and responses into a caller buffer |
//! | [`error`] | [`ParseError`] (each maps to a status code) and [`ValueError`] |
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod emit;
pub mod error;
pub mod header;
pub mod message;
pub mod scan;
pub mod uri;

pub use emit::{
    edit, response, Edits, EmitError, MaxForwardsEdit, NewVia, Received, ResponseSpec, Writer,
};
pub use error::{ParseError, ValueError};
pub use header::{CSeq, Contact, ContactParams, Credentials, HeaderName, NameAddr, Params, Via};
pub use message::{
    parse, parse_stream, Essentials, HeaderEntry, HeaderIndex, Message, Method, ParseConfig, Span,
    StartLine, Status,
};
pub use uri::{Host, Scheme, Uri};
