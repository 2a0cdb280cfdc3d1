//! A bounded priority mailbox: the highest priority waiting message is
//! delivered first, FIFO within a priority.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering as AtOrd};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::envelope::Envelope;

struct Item {
    priority: u8,
    seq: u64,
    env: Envelope,
}

impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        self.priority == o.priority && self.seq == o.seq
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    fn cmp(&self, o: &Self) -> Ordering {
        self.priority
            .cmp(&o.priority)
            .then_with(|| o.seq.cmp(&self.seq))
    }
}

struct Queue {
    heap: BinaryHeap<Item>,
    seq: u64,
}

pub(crate) struct Shared {
    queue: Mutex<Queue>,
    notify: Notify,
    closed: AtomicBool,
    capacity: usize,
}

/// Why a push failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError {
    Full,
    Closed,
}

impl Shared {
    pub(crate) fn new(capacity: usize) -> Arc<Shared> {
        Arc::new(Shared {
            queue: Mutex::new(Queue {
                heap: BinaryHeap::new(),
                seq: 0,
            }),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
            capacity: capacity.max(1),
        })
    }

    /// On failure the envelope comes back (boxed: it is large) for dead-lettering.
    pub(crate) fn push(&self, env: Envelope) -> Result<(), (PushError, Box<Envelope>)> {
        if self.closed.load(AtOrd::Acquire) {
            return Err((PushError::Closed, Box::new(env)));
        }
        {
            let mut q = self.queue.lock();
            if q.heap.len() >= self.capacity {
                return Err((PushError::Full, Box::new(env)));
            }
            q.seq += 1;
            let seq = q.seq;
            q.heap.push(Item {
                priority: env.priority,
                seq,
                env,
            });
        }
        self.notify.notify_one();
        Ok(())
    }

    pub(crate) fn try_pop(&self) -> Option<Envelope> {
        self.queue.lock().heap.pop().map(|i| i.env)
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.lock().heap.len()
    }

    pub(crate) fn close(&self) -> Vec<Envelope> {
        self.closed.store(true, AtOrd::Release);
        self.notify.notify_one();
        let mut q = self.queue.lock();
        std::mem::take(&mut q.heap)
            .into_iter()
            .map(|i| i.env)
            .collect()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(AtOrd::Acquire)
    }

    /// Wait for the next message; `None` once closed and drained.
    pub(crate) async fn recv(&self) -> Option<Envelope> {
        loop {
            if let Some(e) = self.try_pop() {
                return Some(e);
            }
            if self.is_closed() {
                return None;
            }
            // Single consumer: notify_one stores a permit if we are not yet
            // waiting, so a push between try_pop and here is not missed.
            self.notify.notified().await;
        }
    }
}
