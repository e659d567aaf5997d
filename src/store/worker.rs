//! A store behind a thread: operations are submitted and complete later,
//! so a shard never waits on disk (DESIGN: "a store operation is submitted
//! and completes later").
//!
//! ```text
//!  shard turn N:  Worker::append(records) ─► ops channel ─► store thread: store.append
//!                                                              │ (in order, one at a time)
//!  shard turn N+k: Worker::poll_done ◄─ done queue ◄───────────┘ + wake() (the shard's eventfd)
//!                   └► service.persisted(ok): the batch's 200s go out only now
//! ```
//!
//! Completions come back in submission order (one thread, one FIFO), which
//! is what lets the service release its held answers batch by batch.
//! Compaction: after an append the thread asks the store whether it wants
//! one and raises a flag; the shard then submits its partition's snapshot,
//! which follows every append it has submitted so far.
//!
//! Dropping the worker closes the channel; the thread finishes what was
//! submitted (every append the shard handed over reaches the store) and is
//! joined.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_queue::SegQueue;

use crate::location::{PartitionState, Record};

use super::{Store, StoreError};

/// An operation for the store thread.
#[derive(Debug)]
enum Op {
    Append(Vec<Record>),
    Compact(PartitionState),
}

/// A completed operation.
#[derive(Debug)]
pub enum Done {
    /// An append of this many records, durable or not.
    Appended {
        /// Records in the batch.
        records: usize,
        /// Whether they are durable.
        result: Result<(), StoreError>,
    },
    /// A compaction.
    Compacted(Result<(), StoreError>),
}

/// The shard's handle on its store thread.
pub struct Worker {
    // INVARIANT: Some until Drop, which closes it to stop the thread.
    ops: Option<mpsc::Sender<Op>>,
    done: Arc<SegQueue<Done>>,
    wants_compaction: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Appends submitted and not yet polled back.
    in_flight: usize,
}

impl core::fmt::Debug for Worker {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Worker")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl Worker {
    /// Moves `store` (partition `partition`'s) to a thread of its own;
    /// `wake` is called after each completion is queued.
    pub fn spawn(
        mut store: Box<dyn Store + Send>,
        partition: u16,
        wake: Box<dyn Fn() + Send>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Op>();
        let done = Arc::new(SegQueue::new());
        let wants = Arc::new(AtomicBool::new(false));
        let (done2, wants2) = (done.clone(), wants.clone());
        let thread = std::thread::Builder::new()
            .name(format!("store-{partition}"))
            .spawn(move || loop {
                let op = match rx.recv_timeout(std::time::Duration::from_millis(500)) {
                    Ok(op) => op,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        store.idle();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                };
                {
                    let d = match op {
                        Op::Append(records) => {
                            let result = store.append(&records);
                            if result.is_ok() && store.wants_compaction(partition) {
                                wants2.store(true, Ordering::Release);
                            }
                            Done::Appended {
                                records: records.len(),
                                result,
                            }
                        }
                        Op::Compact(state) => Done::Compacted(store.compact(&state)),
                    };
                    done2.push(d);
                    wake();
                }
            })?;
        Ok(Self {
            ops: Some(tx),
            done,
            wants_compaction: wants,
            thread: Some(thread),
            in_flight: 0,
        })
    }

    /// Submits an append of `records` (false: the thread is gone; nothing
    /// was submitted).
    pub fn append(&mut self, records: Vec<Record>) -> bool {
        let ok = self
            .ops
            .as_ref()
            .is_some_and(|tx| tx.send(Op::Append(records)).is_ok());
        if ok {
            self.in_flight += 1;
        }
        ok
    }

    /// Submits a compaction to `state` (after the appends submitted so far).
    pub fn compact(&mut self, state: PartitionState) {
        if let Some(tx) = &self.ops {
            let _ = tx.send(Op::Compact(state));
        }
    }

    /// True once after the store asked for a compaction.
    pub fn take_compaction_wish(&self) -> bool {
        self.wants_compaction.load(Ordering::Acquire)
            && self.wants_compaction.swap(false, Ordering::AcqRel)
    }

    /// The next completion, in submission order.
    pub fn poll_done(&mut self) -> Option<Done> {
        let d = self.done.pop()?;
        if matches!(d, Done::Appended { .. }) {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        Some(d)
    }

    /// True when a completion waits.
    pub fn has_done(&self) -> bool {
        !self.done.is_empty()
    }

    /// Appends submitted whose completion has not been polled.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.ops.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::location::PartitionState;

    /// A store that counts appends and fails when asked to.
    struct Counting {
        appended: Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl Store for Counting {
        fn load(&mut self, _: u64) -> Result<Vec<PartitionState>, StoreError> {
            Ok(Vec::new())
        }
        fn append(&mut self, records: &[Record]) -> Result<(), StoreError> {
            self.appended.lock().unwrap().push(records.len());
            Ok(())
        }
        fn wants_compaction(&self, _: u16) -> bool {
            true
        }
        fn compact(&mut self, _: &PartitionState) -> Result<(), StoreError> {
            Ok(())
        }
    }

    #[test]
    fn completes_in_order_and_finishes_on_drop() {
        let appended = Arc::new(std::sync::Mutex::new(Vec::new()));
        let wakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let w2 = wakes.clone();
        let mut w = Worker::spawn(
            Box::new(Counting {
                appended: appended.clone(),
            }),
            0,
            Box::new(move || {
                w2.fetch_add(1, Ordering::Relaxed);
            }),
        )
        .unwrap();
        for _ in 0..5 {
            assert!(w.append(Vec::new()));
        }
        assert_eq!(w.in_flight(), 5);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut got = 0;
        while got < 5 && std::time::Instant::now() < deadline {
            match w.poll_done() {
                Some(Done::Appended { result, .. }) => {
                    assert!(result.is_ok());
                    got += 1;
                }
                Some(Done::Compacted(_)) => {}
                None => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
        assert_eq!(got, 5);
        assert_eq!(w.in_flight(), 0);
        assert!(w.take_compaction_wish());
        assert!(wakes.load(Ordering::Relaxed) >= 5);
        w.append(Vec::new());
        drop(w);
        assert_eq!(appended.lock().unwrap().len(), 6);
    }
}
