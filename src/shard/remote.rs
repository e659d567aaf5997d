//! Changes other nodes made, on their way from the shared store's follower
//! thread (`store::redis`) to the shard that owns their AoR's partition: a
//! bounded queue and the shard's eventfd. The follower waits while the
//! queue is full (it is not a shard thread); the shard drains it at the
//! start of its next turn.
//!
//! ```text
//!  follower thread ──push batch──► Inbox ──notify eventfd──► shard turn: ShardIo::begin
//!                                                              └► service.handle_remote(now, records)
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use super::sys::EventFd;
use crate::location::Record;

/// Batches a shard's inbox holds before the follower waits.
const DEPTH: usize = 1024;

impl crate::store::redis::RemoteSink for Inbox {
    fn push(&self, batch: Vec<Record>) -> Result<(), Vec<Record>> {
        Self::push(self, batch)
    }

    fn reseed(&self) {
        self.reseed.store(true, Ordering::Release);
        self.wake.notify();
    }
}

/// A shard's end of the remote-change path.
#[derive(Debug)]
pub struct Inbox {
    queue: ArrayQueue<Vec<Record>>,
    wake: Arc<EventFd>,
    reseed: AtomicBool,
}

impl Inbox {
    /// An inbox that wakes its shard through `wake`.
    pub fn new(wake: Arc<EventFd>) -> Self {
        Self {
            queue: ArrayQueue::new(DEPTH),
            wake,
            reseed: AtomicBool::new(false),
        }
    }

    /// Hands `batch` to the shard; `Err` (the batch back) when full.
    pub fn push(&self, batch: Vec<Record>) -> Result<(), Vec<Record>> {
        self.queue.push(batch)?;
        self.wake.notify();
        Ok(())
    }

    /// The next batch, for the shard.
    pub fn next(&self) -> Option<Vec<Record>> {
        self.queue.pop()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && !self.reseed.load(Ordering::Acquire)
    }

    /// True once after the follower asked for the partition to be written
    /// again (the shared store lost its data).
    pub fn take_reseed(&self) -> bool {
        self.reseed.load(Ordering::Acquire) && self.reseed.swap(false, Ordering::AcqRel)
    }
}
