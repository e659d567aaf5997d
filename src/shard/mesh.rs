//! Shard-to-shard messages: one bounded lock-free inbox per shard (any shard
//! may post to it) and an eventfd to wake its owner when it sleeps.
//!
//! Used for what cannot go to the right shard by itself: a REGISTER that
//! reached a shard which does not own its address-of-record, and the
//! registrar's change feed going to every replica.
//!
//! Wake-ups cost a syscall, so they happen only when the receiver is
//! asleep: the receiver sets `sleeping`, checks its inbox once more, then
//! blocks; a sender that finds `sleeping` set clears it and writes the
//! eventfd. Under load nobody sleeps and nothing is written.
//!
//! A full inbox refuses the message ([`Mesh::send`] returns it): the caller
//! answers 503 or counts the drop; nothing grows without bound.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use super::sys::EventFd;

struct Inbox<M> {
    queue: ArrayQueue<M>,
    sleeping: AtomicBool,
    wake: Arc<EventFd>,
}

/// The mesh as one shard sees it.
pub struct Mesh<M> {
    me: usize,
    inboxes: Arc<[Inbox<M>]>,
}

impl<M> Mesh<M> {
    /// One end per shard, each inbox holding at most `capacity` messages.
    pub fn build(shards: usize, capacity: usize) -> io::Result<Vec<Self>> {
        let inboxes: Arc<[Inbox<M>]> = (0..shards)
            .map(|_| {
                Ok(Inbox {
                    queue: ArrayQueue::new(capacity.max(1)),
                    sleeping: AtomicBool::new(false),
                    wake: Arc::new(EventFd::new()?),
                })
            })
            .collect::<io::Result<Vec<_>>>()?
            .into();
        Ok((0..shards)
            .map(|me| Self {
                me,
                inboxes: inboxes.clone(),
            })
            .collect())
    }

    /// This shard's index.
    pub fn me(&self) -> usize {
        self.me
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.inboxes.len()
    }

    /// True for a mesh of no shards.
    pub fn is_empty(&self) -> bool {
        self.inboxes.is_empty()
    }

    /// Posts `msg` to shard `to`; gives it back if that inbox is full.
    pub fn send(&self, to: usize, msg: M) -> Result<(), M> {
        let Some(inbox) = self.inboxes.get(to) else {
            return Err(msg);
        };
        inbox.queue.push(msg)?;
        if inbox.sleeping.load(Ordering::Acquire) && inbox.sleeping.swap(false, Ordering::AcqRel) {
            inbox.wake.notify();
        }
        Ok(())
    }

    /// The next message for this shard.
    pub fn recv(&self) -> Option<M> {
        self.inboxes.get(self.me)?.queue.pop()
    }

    /// Marks this shard as about to sleep; false (stay awake) when messages
    /// are already waiting.
    pub fn prepare_sleep(&self) -> bool {
        let Some(inbox) = self.inboxes.get(self.me) else {
            return true;
        };
        inbox.sleeping.store(true, Ordering::SeqCst);
        if inbox.queue.is_empty() {
            true
        } else {
            inbox.sleeping.store(false, Ordering::SeqCst);
            false
        }
    }

    /// Called after a wait: clears the flag, and the eventfd when it fired.
    pub fn woke(&self, fired: bool) {
        if let Some(inbox) = self.inboxes.get(self.me) {
            inbox.sleeping.store(false, Ordering::SeqCst);
            if fired {
                inbox.wake.drain();
            }
        }
    }

    /// This shard's wake-up, for another thread that completes its work
    /// (the store): it notifies unconditionally, [`Mesh::woke`] drains it.
    pub fn waker(&self) -> Option<Arc<EventFd>> {
        self.inboxes.get(self.me).map(|i| i.wake.clone())
    }

    /// The eventfd to poll for wake-ups.
    pub fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inboxes.get(self.me).map(|i| i.wake.raw())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_bounded_and_wakes_sleepers() {
        let ends = Mesh::<u32>::build(2, 2).unwrap();
        let (a, b) = (&ends[0], &ends[1]);
        assert!(b.prepare_sleep());
        a.send(1, 7).unwrap();
        // b was asleep: its eventfd is readable now.
        assert!(crate::shard::sys::wait_readable(b.wake_fd().unwrap(), 1000));
        b.woke(true);
        a.send(1, 8).unwrap();
        assert_eq!(a.send(1, 9), Err(9), "bounded");
        assert_eq!((b.recv(), b.recv(), b.recv()), (Some(7), Some(8), None));
        assert!(
            !{
                a.send(1, 1).unwrap();
                b.prepare_sleep()
            },
            "stays awake with mail waiting"
        );
    }
}
