//! The backing store of the location service: where a partition's feed
//! becomes durable, and where the state comes back from at startup.
//!
//! ```text
//!  shard (owner of partition p), once per loop turn:
//!    registrar.drain_records() ─► worker::Worker::append(turn_records) ─► store thread: store.append
//!  a later turn: Worker::poll_done ─► service.persisted ─► the batch's 200s ─► feed the replicas
//!  startup:
//!    LogStore::open(cfg, N) ─► load(wall) ─► Vec<PartitionState> ─► Registrar::from_state / Replica::from_states
//!                          └─► split() ─► one LogStore per partition, moved to its owner shard
//!  when wants_compaction(p): store.compact(&registrar.snapshot())
//! ```
//!
//! The [`Store`] trait is what the shared store ([`redis`]) implements too:
//! it appends the same records (the ones this node wrote: a record marked
//! `remote` is already there), and its follower thread hands the records
//! other nodes wrote to the shard owning their AoR, whose registrar applies
//! them and feeds them to this node's replicas like its own.
//!
//! This module does I/O (files, fsync); the registrar and the replicas stay
//! sans-IO. The embedded implementation is [`log::LogStore`].

pub mod log;
pub mod redis;
pub mod worker;

pub use log::{LogConfig, LogStore, PartitionReport};

use crate::location::{FeedError, PartitionState, Record};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file system refused (disk full, permissions…).
    #[error("store I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Another process holds the data directory.
    #[error("the data directory is locked by another process")]
    Locked,
    /// A record of a partition this store does not hold.
    #[error("partition {partition} is not held by this store")]
    NotOwned {
        /// The partition.
        partition: u16,
    },
    /// `append` or `compact` before `load`.
    #[error("store used before load()")]
    NotLoaded,
    /// A compaction snapshot that is not at the log's last seq.
    #[error("snapshot at seq {snapshot}, log at seq {log}")]
    StaleSnapshot {
        /// The snapshot's seq.
        snapshot: u64,
        /// The log's last appended seq.
        log: u64,
    },
    /// The MANIFEST file is unreadable.
    #[error("unreadable MANIFEST in the data directory")]
    Manifest,
    /// A file that is not a sipedge log where one was expected.
    #[error("not a sipedge log file")]
    NotALog,
    /// A record could not be decoded.
    #[error("record: {0}")]
    Feed(#[from] FeedError),
    /// The shared store (Redis) refused or could not be reached.
    #[error("shared store: {0}")]
    Shared(String),
}

/// A durable home for the location feed (module doc).
pub trait Store {
    /// Loads the state of every partition this store holds, dropping the
    /// bindings expired at `wall` (unix µs). Call once, before the others.
    fn load(&mut self, wall: u64) -> Result<Vec<PartitionState>, StoreError>;

    /// Makes `records` durable, in order. Call once per loop turn with all
    /// the records of the turn, and release the turn's 200s only after it
    /// returns `Ok`. On `Err`, nothing of the batch counts as written: answer
    /// the turn's REGISTERs with 503 (Retry-After) instead.
    fn append(&mut self, records: &[Record]) -> Result<(), StoreError>;

    /// True when `partition`'s storage should be compacted.
    fn wants_compaction(&self, partition: u16) -> bool;

    /// Replaces `state.partition`'s storage with `state` (the registrar's
    /// snapshot, taken after the last `append`).
    fn compact(&mut self, state: &PartitionState) -> Result<(), StoreError>;

    /// Called by the store thread when no operation came for a while (about
    /// every 500 ms): a store that keeps a backlog retries it here.
    fn idle(&mut self) {}
}
