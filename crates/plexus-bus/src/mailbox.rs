//! A bounded priority mailbox: the highest priority waiting message is
//! delivered first, FIFO within a priority.
//!
//! One FIFO queue per priority level (1..=10) and a bit mask of the
//! non-empty ones: push and pop are O(1) and never move a queued envelope,
//! where a binary heap sifted the (large) envelopes on every operation.
//!
//! Senders and the receiver do not share a lock per message: senders push
//! into an *inbox*; the receiver pops from its *outbox* and moves the whole
//! inbox over (a swap per priority level, under the inbox lock once) when
//! its outbox is empty or the inbox holds a higher priority than the
//! outbox's best. Outbox messages of a level are older than inbox ones of
//! the same level, so the order is exactly that of one queue.

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering as AtOrd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::envelope::{Envelope, MAX_PRIORITY, MIN_PRIORITY};

const LEVELS: usize = MAX_PRIORITY as usize + 1;

#[derive(Default)]
struct Queue {
    levels: [VecDeque<Envelope>; LEVELS],
    /// Bit `p` set when `levels[p]` is not empty.
    nonempty: u16,
    len: usize,
}

/// The highest level set in a mask (0 for none; real levels start at 1).
fn top(mask: u16) -> u16 {
    if mask == 0 {
        0
    } else {
        15 - mask.leading_zeros() as u16
    }
}

impl Queue {
    fn push(&mut self, env: Envelope) {
        let p = env.priority.clamp(MIN_PRIORITY, MAX_PRIORITY) as usize;
        self.levels[p].push_back(env);
        self.nonempty |= 1 << p;
        self.len += 1;
    }

    fn pop(&mut self) -> Option<Envelope> {
        if self.nonempty == 0 {
            return None;
        }
        let p = top(self.nonempty) as usize;
        let env = self.levels[p].pop_front();
        if self.levels[p].is_empty() {
            self.nonempty &= !(1 << p);
        }
        self.len -= 1;
        env
    }

    /// Move everything of `newer` behind what is here, level by level.
    fn absorb(&mut self, newer: &mut Queue) {
        let mut m = newer.nonempty;
        while m != 0 {
            let p = m.trailing_zeros() as usize;
            m &= m - 1;
            if self.levels[p].is_empty() {
                // O(1), and the sender gets this level's buffer back.
                std::mem::swap(&mut self.levels[p], &mut newer.levels[p]);
            } else {
                self.levels[p].append(&mut newer.levels[p]);
            }
        }
        self.nonempty |= newer.nonempty;
        self.len += newer.len;
        newer.nonempty = 0;
        newer.len = 0;
    }

    fn drain(&mut self) -> Vec<Envelope> {
        let mut out = Vec::with_capacity(self.len);
        while let Some(e) = self.pop() {
            out.push(e);
        }
        out
    }
}

/// Keeps what one side writes often off the other side's cache line.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Signal {
    mask: AtomicU16,
    parked: AtomicBool,
    /// [`thread_tag`] of the thread that pushed last (stored only when it
    /// changes, so a steady sender does not dirty the line).
    sender: AtomicU64,
}

/// A number for the current OS thread, unique in the process (never 0).
fn thread_tag() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local!(static TAG: u64 = NEXT.fetch_add(1, AtOrd::Relaxed));
    TAG.with(|t| *t)
}

pub(crate) struct Shared {
    /// Senders' side.
    inbox: Padded<Mutex<Queue>>,
    /// `inbox.nonempty` (stored by senders only when it changes, so the
    /// receiver reads it from its cache) and whether the receiver is parked.
    signal: Padded<Signal>,
    /// Receiver's side (only `len` and `close` lock it besides the receiver).
    outbox: Padded<Mutex<Queue>>,
    /// `outbox.len` after each pop, and at the last move from the inbox
    /// (which only grows it): senders check capacity against the second,
    /// an upper bound, and read the first only near the limit.
    out_len: Padded<AtomicUsize>,
    out_len_at_move: AtomicUsize,
    notify: Notify,
    closed: AtomicBool,
    capacity: usize,
    /// The subscriber's name, for dead-letter reasons.
    pub(crate) owner: Box<str>,
}

/// Why a push failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError {
    Full,
    Closed,
}

/// Clears the receiver's parked flag however its wait ends (also when the
/// waiting future is dropped, e.g. in a `select!`).
struct Parked<'a>(&'a AtomicBool);

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.store(false, AtOrd::Relaxed);
    }
}

impl Shared {
    pub(crate) fn new(capacity: usize, owner: &str) -> Arc<Shared> {
        Arc::new(Shared {
            inbox: Padded(Mutex::new(Queue::default())),
            signal: Padded(Signal {
                mask: AtomicU16::new(0),
                parked: AtomicBool::new(false),
                sender: AtomicU64::new(0),
            }),
            outbox: Padded(Mutex::new(Queue::default())),
            out_len: Padded(AtomicUsize::new(0)),
            out_len_at_move: AtomicUsize::new(0),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
            capacity: capacity.max(1),
            owner: owner.into(),
        })
    }

    /// On failure the envelope comes back (boxed: it is large) for dead-lettering.
    pub(crate) fn push(&self, env: Envelope) -> Result<(), (PushError, Box<Envelope>)> {
        if self.closed.load(AtOrd::Acquire) {
            return Err((PushError::Closed, Box::new(env)));
        }
        {
            let mut q = self.inbox.lock();
            if q.len + self.out_len_at_move.load(AtOrd::Acquire) >= self.capacity
                && q.len + self.out_len.load(AtOrd::Acquire) >= self.capacity
            {
                return Err((PushError::Full, Box::new(env)));
            }
            let me = thread_tag();
            if self.signal.sender.load(AtOrd::Relaxed) != me {
                self.signal.sender.store(me, AtOrd::Relaxed);
            }
            let before = q.nonempty;
            q.push(env);
            if q.nonempty != before {
                self.signal.mask.store(q.nonempty, AtOrd::SeqCst);
            }
        }
        // Pairs with the receiver's fence in `wait`: either it sees the
        // mask or we see it parked. A receiver that is not parked (busy, or
        // watching the mask) needs no wake-up at all.
        fence(AtOrd::SeqCst);
        if self.signal.parked.load(AtOrd::SeqCst) {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// Move the inbox to the outbox if it holds something the outbox
    /// should deliver first (or the outbox is empty).
    fn refill(&self, out: &mut Queue) {
        let mask = self.signal.mask.load(AtOrd::Acquire);
        if mask != 0 && top(mask) > top(out.nonempty) {
            let mut inb = self.inbox.lock();
            out.absorb(&mut inb);
            self.signal.mask.store(0, AtOrd::Release);
            // Before the inbox lock is released, so senders never see the
            // moved messages in neither count.
            self.out_len.store(out.len, AtOrd::Release);
            self.out_len_at_move.store(out.len, AtOrd::Release);
        }
    }

    pub(crate) fn try_pop(&self) -> Option<Envelope> {
        let mut out = self.outbox.lock();
        self.refill(&mut out);
        let e = out.pop();
        self.out_len.store(out.len, AtOrd::Release);
        e
    }

    /// Move up to `max` waiting messages, highest priority first, into
    /// `out` under one lock; how many.
    pub(crate) fn pop_many(&self, buf: &mut Vec<Envelope>, max: usize) -> usize {
        let mut out = self.outbox.lock();
        let mut n = 0;
        while n < max {
            self.refill(&mut out);
            match out.pop() {
                Some(e) => buf.push(e),
                None => break,
            }
            n += 1;
        }
        self.out_len.store(out.len, AtOrd::Release);
        n
    }

    pub(crate) fn len(&self) -> usize {
        let out = self.outbox.lock();
        let inb = self.inbox.lock();
        out.len + inb.len
    }

    pub(crate) fn close(&self) -> Vec<Envelope> {
        self.closed.store(true, AtOrd::Release);
        self.notify.notify_one();
        let mut out = self.outbox.lock();
        {
            let mut inb = self.inbox.lock();
            out.absorb(&mut inb);
            self.signal.mask.store(0, AtOrd::Release);
        }
        let left = out.drain();
        self.out_len.store(0, AtOrd::Release);
        self.out_len_at_move.store(0, AtOrd::Release);
        left
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
            self.wait().await;
        }
    }

    /// Wait for up to `max` messages (at least one); 0 once closed and drained.
    pub(crate) async fn recv_many(&self, out: &mut Vec<Envelope>, max: usize) -> usize {
        loop {
            let n = self.pop_many(out, max.max(1));
            if n > 0 {
                return n;
            }
            if self.is_closed() {
                return 0;
            }
            self.wait().await;
        }
    }

    fn ready(&self) -> bool {
        self.signal.mask.load(AtOrd::SeqCst) != 0 || self.is_closed()
    }

    /// Wait until a message may be waiting (or the mailbox closed); the
    /// outbox is empty when this is called.
    ///
    /// A receiver that parks on every empty queue costs a wake-up per
    /// message (a futex or eventfd call on the sender's side and a context
    /// switch on ours: 20 % of the in-node profile). So first watch the
    /// inbox for [`SPIN`]: under steady traffic from another thread the
    /// next message comes within it and nobody sleeps; an idle subscriber
    /// pays [`SPIN`] of CPU after its last message. (Yielding to the runtime
    /// instead of spinning made tokio wake its other worker and move the
    /// task between threads.)
    ///
    /// Spinning only helps when the sender runs on another thread at the
    /// same time. When the last sender ran on this thread (tokio woke us on
    /// its worker, so the sender task is queued behind us) or the runtime
    /// has a single thread, no sender can run while we spin: park at once.
    async fn wait(&self) {
        if self.worth_spinning() {
            let start = Instant::now();
            loop {
                for _ in 0..32 {
                    std::hint::spin_loop();
                }
                if self.ready() {
                    return;
                }
                if start.elapsed() >= SPIN {
                    break;
                }
            }
        }
        self.signal.parked.store(true, AtOrd::SeqCst);
        let _parked = Parked(&self.signal.parked);
        fence(AtOrd::SeqCst);
        if self.ready() {
            return;
        }
        // notify_one stores a permit if we are not waiting yet, so a push
        // between the check above and the await is not missed.
        self.notify.notified().await;
    }

    /// Whether a sender could push while this thread spins (see [`Self::wait`]).
    fn worth_spinning(&self) -> bool {
        if self.signal.sender.load(AtOrd::Relaxed) == thread_tag() {
            return false;
        }
        tokio::runtime::Handle::try_current().is_ok_and(|h| {
            h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                && h.metrics().num_workers() > 1
        })
    }
}

/// How long a receiver watches an empty mailbox before it parks.
const SPIN: Duration = Duration::from_micros(20);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::MessageKind;

    fn env(p: u8, n: u8) -> Envelope {
        Envelope::new(MessageKind::Event, "t", "s", vec![n]).with_priority(p)
    }

    #[test]
    fn highest_priority_first_then_fifo_and_bounded() {
        let m = Shared::new(5, "o");
        for (p, n) in [(1, 0), (10, 1), (5, 2), (10, 3), (1, 4)] {
            assert!(m.push(env(p, n)).is_ok());
        }
        assert!(matches!(m.push(env(5, 9)), Err((PushError::Full, _))));
        assert_eq!(m.len(), 5);
        let got: Vec<(u8, u8)> = std::iter::from_fn(|| m.try_pop())
            .map(|e| (e.priority, e.payload[0]))
            .collect();
        assert_eq!(got, vec![(10, 1), (10, 3), (5, 2), (1, 0), (1, 4)]);
        assert_eq!(m.len(), 0);
        m.push(env(3, 7)).unwrap();
        assert_eq!(m.close().len(), 1);
        assert!(matches!(m.push(env(3, 8)), Err((PushError::Closed, _))));
    }

    #[test]
    fn a_newer_higher_priority_overtakes_what_the_receiver_already_moved() {
        let m = Shared::new(100, "o");
        for (p, n) in [(3, 0), (3, 1), (5, 2)] {
            m.push(env(p, n)).unwrap();
        }
        // The first pop moves everything to the outbox.
        assert_eq!(m.try_pop().map(|e| e.payload[0]), Some(2));
        m.push(env(3, 3)).unwrap();
        m.push(env(9, 4)).unwrap();
        let got: Vec<u8> = std::iter::from_fn(|| m.try_pop())
            .map(|e| e.payload[0])
            .collect();
        assert_eq!(got, vec![4, 0, 1, 3]);
    }

    #[test]
    fn capacity_counts_both_sides() {
        let m = Shared::new(3, "o");
        for n in 0..3 {
            m.push(env(5, n)).unwrap();
        }
        assert!(m.try_pop().is_some());
        m.push(env(5, 3)).unwrap();
        assert!(matches!(m.push(env(5, 4)), Err((PushError::Full, _))));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn the_receiver_spins_only_while_a_sender_on_another_thread_could_push() {
        let m = Shared::new(10, "o");
        let two = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let from_elsewhere = m.clone();
        std::thread::spawn(move || from_elsewhere.push(env(5, 0)).unwrap())
            .join()
            .unwrap();
        // Outside any runtime there is nothing to spin for.
        assert!(!m.worth_spinning());
        let m2 = m.clone();
        assert!(two.block_on(async move {
            tokio::spawn(async move { m2.worth_spinning() })
                .await
                .unwrap()
        }));
        // A sender on the receiver's own thread is queued behind it.
        let m2 = m.clone();
        assert!(!two.block_on(async move {
            tokio::spawn(async move {
                m2.push(env(5, 1)).unwrap();
                m2.worth_spinning()
            })
            .await
            .unwrap()
        }));
        // One worker, or a current-thread runtime: no sender runs meanwhile.
        let elsewhere = m.clone();
        std::thread::spawn(move || elsewhere.push(env(5, 2)).unwrap())
            .join()
            .unwrap();
        let one = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let m2 = m.clone();
        assert!(!one.block_on(async move {
            tokio::spawn(async move { m2.worth_spinning() })
                .await
                .unwrap()
        }));
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(!current.block_on(async { m.worth_spinning() }));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_parked_receiver_gets_every_message_in_order_from_another_thread() {
        let m = Shared::new(1 << 20, "o");
        let tx = m.clone();
        const N: u32 = 200_000;
        let sender = std::thread::spawn(move || {
            for i in 0..N {
                let mut e = env(5, 0);
                e.payload = i.to_le_bytes().to_vec();
                while tx.push(e.clone()).is_err() {}
                if i % 1000 == 0 {
                    // Let the receiver park now and then.
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
            }
        });
        for i in 0..N {
            let e = m.recv().await.unwrap();
            assert_eq!(e.payload, i.to_le_bytes().to_vec());
        }
        sender.join().unwrap();
    }
}
