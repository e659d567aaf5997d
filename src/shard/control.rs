//! Questions from the control socket (`sipedge ctl`) to a shard: pushed on
//! a bounded queue, answered at the start of the shard's next turn (the
//! shard's eventfd wakes it), over a channel the asker waits on. A shard
//! never blocks on it: a full queue refuses the question; a reply nobody
//! waits for any more is dropped.
//!
//! ```text
//!  ctl thread ──push Request──► Inbox ──notify eventfd──► shard turn: ShardIo::begin
//!      ▲                                                    └► service.control(now, &q)
//!      └──────────── reply (a ControlAnswer) ◄──────────────────┘
//! ```

use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use super::sys::EventFd;
use crate::proxy::{Control, ControlAnswer};

/// A question and where its answer goes.
#[derive(Debug)]
pub struct Request {
    /// The question.
    pub query: Control,
    /// Where the answer goes.
    pub reply: SyncSender<ControlAnswer>,
}

/// A shard's end of the control path.
#[derive(Debug)]
pub struct Inbox {
    queue: ArrayQueue<Request>,
    wake: Arc<EventFd>,
}

impl Inbox {
    /// An inbox that wakes its shard through `wake`.
    pub fn new(wake: Arc<EventFd>) -> Self {
        Self {
            queue: ArrayQueue::new(16),
            wake,
        }
    }

    /// Asks; `Err` (the request back) when the queue is full.
    pub fn ask(&self, r: Request) -> Result<(), Request> {
        self.queue.push(r)?;
        self.wake.notify();
        Ok(())
    }

    /// The next question, for the shard.
    pub fn next(&self) -> Option<Request> {
        self.queue.pop()
    }

    /// True when a question waits.
    pub fn pending(&self) -> bool {
        !self.queue.is_empty()
    }
}

/// Accepts one connection at a time from a non-blocking listener and
/// answers it, until `stop` is set (checked every 50–200 ms). Shared by the
/// metrics endpoint and the control socket.
pub fn accept_loop<S>(
    what: &str,
    stop: &std::sync::atomic::AtomicBool,
    mut accept: impl FnMut() -> std::io::Result<S>,
    mut answer: impl FnMut(S) -> std::io::Result<()>,
) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match accept() {
            Ok(s) => {
                if let Err(e) = answer(s) {
                    tracing::debug!("{what}: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => {
                tracing::warn!("{what}: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
}
