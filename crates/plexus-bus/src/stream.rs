//! Streamed responses: a request answered by a sequence of parts, in order,
//! with backpressure across the cluster.
//!
//! The requester opens a stream with [`Bus::request_stream`] (a request
//! envelope whose `metadata.stream_window` is set) and reads parts from the
//! [`StreamReceiver`]. The responder takes the request's [`StreamSender`]
//! with [`Bus::stream_for`] and sends parts; dropping the sender ends the
//! stream.
//!
//! - **Local** (both ends on this node): one bounded channel of `window`
//!   parts; a full channel makes the sender wait.
//! - **Across nodes**: credit-based. The sender starts with `window`
//!   credits, spends one per [`BusFrame::StreamPart`], and waits when it has
//!   none; the receiver hands credits back in batches of `window / 2` as the
//!   consumer takes parts ([`BusFrame::StreamCredit`]). The receiver's
//!   channel holds `window` parts, so a sender that keeps to its credits is
//!   never refused. Parts travel on the one link between the two nodes, so
//!   they arrive in order.
//! - **Cancel**: dropping the receiver closes the local channel, or sends
//!   [`BusFrame::StreamCancel`]: the sender's next `send` fails and the
//!   producer stops. A part for a stream the receiver no longer has is
//!   answered with a cancel too. A peer that goes down ends its streams on
//!   both sides ([`Bus::peer_down`]).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use compact_str::CompactString;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Semaphore};
use uuid::Uuid;

use crate::{now_ms, Bus, BusError, BusFrame, Envelope, Inner, MessageKind};

/// Parts in flight per stream when the caller does not say.
pub const DEFAULT_WINDOW: u32 = 32;

/// The streams of one node, both directions.
#[derive(Default)]
pub(crate) struct Streams {
    /// Streams this node reads: the node that sends, and the channel's
    /// sending end (taken by a local responder).
    incoming: Mutex<HashMap<Uuid, Incoming>>,
    /// Streams this node sends to another node: that node and the credits.
    outgoing: Mutex<HashMap<Uuid, Outgoing>>,
}

struct Incoming {
    node: CompactString,
    /// Taken by a local responder: the channel then ends when it drops.
    tx: Option<mpsc::Sender<Vec<u8>>>,
}

struct Outgoing {
    node: CompactString,
    credits: Arc<Semaphore>,
}

impl Streams {
    /// Streams open in either direction.
    pub(crate) fn open(&self) -> usize {
        self.incoming.lock().len() + self.outgoing.lock().len()
    }
}

/// Why a part could not be sent: the receiver went away (the client
/// disconnected, or its node is down). The producer should stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stream's receiver is gone")]
pub struct StreamGone;

/// The responder's end of a stream.
pub struct StreamSender {
    inner: SenderKind,
}

enum SenderKind {
    /// The receiver is on this node.
    Local(mpsc::Sender<Vec<u8>>),
    /// The receiver is on `node`.
    Remote {
        id: Uuid,
        node: CompactString,
        credits: Arc<Semaphore>,
        bus: Weak<Inner>,
    },
    /// The receiver was gone before the responder took the stream.
    Gone,
}

impl StreamSender {
    /// Send the next part, waiting while the receiver is `window` parts
    /// behind. Fails once the receiver is gone.
    pub async fn send(&self, part: Vec<u8>) -> Result<(), StreamGone> {
        match &self.inner {
            SenderKind::Local(tx) => tx.send(part).await.map_err(|_| StreamGone),
            SenderKind::Remote {
                id,
                node,
                credits,
                bus,
            } => {
                credits.acquire().await.map_err(|_| StreamGone)?.forget();
                send_frame(bus, node, BusFrame::StreamPart { id: *id, part })
            }
            SenderKind::Gone => Err(StreamGone),
        }
    }

    /// Send a part without waiting: for an answer that is the stream's first
    /// and only part (a refusal before anything ran), which always has room.
    pub fn try_send(&self, part: Vec<u8>) -> Result<(), StreamGone> {
        match &self.inner {
            SenderKind::Local(tx) => tx.try_send(part).map_err(|_| StreamGone),
            SenderKind::Remote {
                id,
                node,
                credits,
                bus,
            } => {
                credits.try_acquire().map_err(|_| StreamGone)?.forget();
                send_frame(bus, node, BusFrame::StreamPart { id: *id, part })
            }
            SenderKind::Gone => Err(StreamGone),
        }
    }

    /// Whether the receiver is known to be gone.
    pub fn is_closed(&self) -> bool {
        match &self.inner {
            SenderKind::Local(tx) => tx.is_closed(),
            SenderKind::Remote { credits, .. } => credits.is_closed(),
            SenderKind::Gone => true,
        }
    }
}

impl Drop for StreamSender {
    fn drop(&mut self) {
        if let SenderKind::Remote { id, node, bus, .. } = &self.inner {
            if let Some(inner) = bus.upgrade() {
                inner.streams.outgoing.lock().remove(id);
                let _ = send_frame(bus, node, BusFrame::StreamEnd { id: *id });
            }
        }
    }
}

fn send_frame(bus: &Weak<Inner>, node: &str, frame: BusFrame) -> Result<(), StreamGone> {
    let inner = bus.upgrade().ok_or(StreamGone)?;
    let sink = inner.sink.read().clone().ok_or(StreamGone)?;
    sink.send(node, frame).map_err(|e| {
        tracing::debug!(%node, error = %e, "stream frame not sent");
        StreamGone
    })
}

/// The requester's end of a stream. Dropping it cancels the stream.
pub struct StreamReceiver {
    id: Uuid,
    /// The node that sends; `None` when it is this node.
    remote: Option<CompactString>,
    rx: mpsc::Receiver<Vec<u8>>,
    bus: Weak<Inner>,
    /// Parts taken since credits were last handed back.
    taken: u32,
    window: u32,
    ended: bool,
}

impl StreamReceiver {
    /// The next part; `None` once the sender ended the stream (or its node
    /// went down).
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        let part = self.rx.recv().await;
        match &part {
            Some(_) => {
                if let Some(node) = &self.remote {
                    self.taken += 1;
                    if self.taken >= (self.window / 2).max(1) {
                        let n = std::mem::take(&mut self.taken);
                        let _ =
                            send_frame(&self.bus, node, BusFrame::StreamCredit { id: self.id, n });
                    }
                }
            }
            None => self.ended = true,
        }
        part
    }

    /// The node the parts come from (`None`: this node).
    pub fn remote(&self) -> Option<&str> {
        self.remote.as_deref()
    }
}

impl Drop for StreamReceiver {
    fn drop(&mut self) {
        let Some(inner) = self.bus.upgrade() else {
            return;
        };
        let open = inner.streams.incoming.lock().remove(&self.id).is_some();
        if let (Some(node), true) = (&self.remote, open && !self.ended) {
            let _ = send_frame(&self.bus, node, BusFrame::StreamCancel { id: self.id });
        }
    }
}

impl Bus {
    /// Send a request to the subscriber on node `node` whose answer is a
    /// stream of at most `window` parts in flight. The request itself is
    /// routed as [`Bus::request_to`] does; `NoRoute` when `node` has no
    /// subscriber for it. The caller bounds its wait on each part.
    pub fn request_stream(
        &self,
        mut env: Envelope,
        timeout: Duration,
        node: &str,
        window: u32,
    ) -> Result<StreamReceiver, BusError> {
        let window = window.max(1);
        env.kind = MessageKind::Request;
        env.metadata.timeout_ms = Some(timeout.as_millis() as u64);
        env.metadata.stream_window = Some(window);
        if env.metadata.expires_at_ms.is_none() {
            env.metadata.expires_at_ms = Some(now_ms() + timeout.as_millis() as u64);
        }
        let id = env.message_id;
        let topic = env.topic.to_string();
        let destination = env.destination.to_string();
        let (tx, rx) = mpsc::channel(window as usize);
        let local = node == self.inner.node.as_str();
        self.inner.streams.incoming.lock().insert(
            id,
            Incoming {
                node: CompactString::from(node),
                tx: Some(tx),
            },
        );
        let receiver = StreamReceiver {
            id,
            remote: (!local).then(|| CompactString::from(node)),
            rx,
            bus: Arc::downgrade(&self.inner),
            taken: 0,
            window,
            ended: false,
        };
        let mut receiver = receiver;
        match self.publish_on(env, Some(node)) {
            Ok(r) if r.local > 0 || !r.remote_nodes.is_empty() => Ok(receiver),
            Ok(_) => {
                receiver.ended = true;
                Err(BusError::NoRoute { topic, destination })
            }
            Err(e) => {
                receiver.ended = true;
                Err(e)
            }
        }
    }

    /// The stream a request asks to be answered on, for its responder:
    /// `None` when the request is not a stream request. Take it once (a
    /// second call finds the stream taken and returns a closed sender).
    pub fn stream_for(&self, request: &Envelope) -> Option<StreamSender> {
        let window = request.metadata.stream_window?;
        let id = request.message_id;
        let local = request.source_node == self.inner.node || request.source_node.is_empty();
        let inner = if local {
            // The receiver keeps its entry; the channel ends when this
            // sender drops.
            match self
                .inner
                .streams
                .incoming
                .lock()
                .get_mut(&id)
                .and_then(|i| i.tx.take())
            {
                Some(tx) => SenderKind::Local(tx),
                None => SenderKind::Gone,
            }
        } else {
            let credits = Arc::new(Semaphore::new(window as usize));
            match self.inner.streams.outgoing.lock().entry(id) {
                std::collections::hash_map::Entry::Occupied(_) => SenderKind::Gone,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Outgoing {
                        node: request.source_node.clone(),
                        credits: credits.clone(),
                    });
                    SenderKind::Remote {
                        id,
                        node: request.source_node.clone(),
                        credits,
                        bus: Arc::downgrade(&self.inner),
                    }
                }
            }
        };
        Some(StreamSender { inner })
    }

    /// A stream frame from `from` arrived over the cluster link.
    pub(crate) fn handle_stream_frame(&self, from: &str, frame: BusFrame) {
        let streams = &self.inner.streams;
        match frame {
            BusFrame::StreamPart { id, part } => {
                let refused = {
                    let mut incoming = streams.incoming.lock();
                    match incoming.get(&id) {
                        Some(i) if i.node != from => {
                            tracing::warn!(peer = from, %id, "refused a stream part from a node the stream does not come from");
                            return;
                        }
                        Some(Incoming { tx: None, .. }) => true,
                        Some(Incoming { tx: Some(tx), .. }) => match tx.try_send(part) {
                            Ok(()) => false,
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                tracing::warn!(peer = from, %id, "stream part beyond the credits given; the stream is cancelled");
                                incoming.remove(&id);
                                true
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {
                                incoming.remove(&id);
                                true
                            }
                        },
                        // The receiver is gone.
                        None => true,
                    }
                };
                if refused {
                    let _ = send_frame(
                        &Arc::downgrade(&self.inner),
                        from,
                        BusFrame::StreamCancel { id },
                    );
                }
            }
            BusFrame::StreamEnd { id } => {
                let mut incoming = streams.incoming.lock();
                if incoming.get(&id).is_some_and(|i| i.node == from) {
                    incoming.remove(&id);
                }
            }
            BusFrame::StreamCredit { id, n } => {
                if let Some(o) = streams.outgoing.lock().get(&id) {
                    if o.node == from {
                        // add_permits panics past MAX_PERMITS.
                        let room = Semaphore::MAX_PERMITS - o.credits.available_permits();
                        o.credits.add_permits((n as usize).min(room));
                    }
                }
            }
            BusFrame::StreamCancel { id } => {
                if let Some(o) = streams.outgoing.lock().get(&id) {
                    if o.node == from {
                        o.credits.close();
                    }
                }
            }
            _ => {}
        }
    }

    /// End the streams to and from `node` (it is down): its receivers see
    /// the end, its senders' next `send` fails.
    pub(crate) fn streams_peer_down(&self, node: &str) {
        let streams = &self.inner.streams;
        streams.incoming.lock().retain(|_, i| i.node != node);
        streams.outgoing.lock().retain(|_, o| {
            if o.node == node {
                o.credits.close();
                false
            } else {
                true
            }
        });
    }

    /// Streams open on this node, in either direction.
    pub fn open_streams(&self) -> usize {
        self.inner.streams.open()
    }
}
