//! # sipedge
//!
//! A carrier-grade SIP edge proxy: thread-per-core shards pinned to CPUs,
//! io_uring (with a mio fallback), and a sans-IO core that tests drive
//! deterministically.
//!
//! ## Layers (arrows only point down)
//!
//! | layer | owns |
//! |---|---|
//! | [`sip`] | message model, zero-copy parser, URIs, typed headers, the editor |
//! | [`proxy`] | routing: the stateless relay, loose routing, branches, local answers |
//! | [`auth`] | digest authentication: challenges, stateless nonces, replay table, users file, throttles |
//! | [`policy`] | access rules, per-source flood limits and bans, overload shedding |
//! | [`presence`] | PIDF/RPID presence documents: parse, validate, summarise, compose |
//! | [`transport`] | the [`transport::Outbox`] the core writes datagrams into |
//! | [`shard`] | thread-per-core runtime: pinning, SO_REUSEPORT sockets, io_uring and mio drivers |
//! | [`config`], [`cli`] | TOML + flags → a validated [`config::Config`]; the `sipedge` command |
//! | [`time`] | µs-resolution `Instant`/`Duration` the core takes as input |
//!
//! ## The path of one datagram
//!
//! ```text
//! socket ─► shard driver (io_uring multishot recvmsg / mio recvmmsg)
//!            └► sip::parse (memchr scan into the shard's HeaderIndex; zero copy)
//!               └► core handle(now, msg, source) ─► transmits into driver-owned buffers
//!                  └► driver batches the sends: one submit per loop turn
//! ```
#![deny(unsafe_code)]
#![deny(
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc,
    unsafe_op_in_unsafe_fn
)]
#![warn(missing_docs)]

pub mod auth;
pub mod cli;
pub mod config;
pub mod control;
pub mod hash;
pub mod location;
pub mod metrics;
pub mod policy;
pub mod presence;
pub mod proxy;
pub mod registrar;
pub mod routing;
pub mod shard;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod sip;
pub mod store;
pub mod time;
pub mod transport;
pub mod txn;
pub mod wheel;
