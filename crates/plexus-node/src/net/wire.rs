//! What nodes say to each other over the cluster links.
//!
//! Each node has exactly one cluster-visible actor, its [`Gateway`](crate::net::gateway),
//! whose message is an opaque byte frame: everything inside is a [`WireFrame`]
//! encoded by `plexus-codec`, size-checked before it is sent. Keeping one
//! remote-visible actor per node keeps ractor_cluster's per-actor proxying
//! cheap.

use plexus_bus::BusFrame;
use plexus_handler::{DiscoveredCommand, ServerStatus};
use plexus_membership::NodeIdentity;
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};

/// The gateway's message: bytes in, dispatched by the receiver.
#[derive(RactorClusterMessage)]
pub enum GatewayMsg {
    /// One encoded [`WireFrame`].
    Frame(Vec<u8>),
    /// Several encoded [`WireFrame`]s for the same node, in order, packed by
    /// [`batch::Packer`]: frames that queued up while the link was busy travel
    /// as one cluster message (one pass through ractor_cluster's actors and
    /// one socket read on each side instead of one per frame).
    Batch(Vec<u8>),
}

/// How [`GatewayMsg::Batch`] packs frames: each frame is its length (u32,
/// little endian) followed by its bytes.
pub mod batch {
    use super::GatewayMsg;

    const PREFIX: usize = 4;

    /// What is wrong with a batch.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum BatchError {
        #[error("batch cut short at byte {at}: a frame header needs {PREFIX} bytes, {left} left")]
        ShortHeader { at: usize, left: usize },
        #[error("batch cut short at byte {at}: the frame says {len} bytes, {left} left")]
        ShortFrame { at: usize, len: usize, left: usize },
        #[error("empty batch")]
        Empty,
    }

    /// The frames of a batch in order, or what is wrong with it. A batch is
    /// checked whole before any of its frames is used, so a damaged one is
    /// dropped entirely rather than half-delivered.
    pub fn split(bytes: &[u8]) -> Result<Vec<&[u8]>, BatchError> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let left = bytes.len() - at;
            let Some(head) = bytes.get(at..at + PREFIX) else {
                return Err(BatchError::ShortHeader { at, left });
            };
            let mut n = [0u8; PREFIX];
            n.copy_from_slice(head);
            let len = u32::from_le_bytes(n) as usize;
            let body = at + PREFIX;
            let Some(frame) = bytes.get(body..body.saturating_add(len)) else {
                return Err(BatchError::ShortFrame {
                    at,
                    len,
                    left: left - PREFIX,
                });
            };
            out.push(frame);
            at = body + len;
        }
        if out.is_empty() {
            return Err(BatchError::Empty);
        }
        Ok(out)
    }

    /// Packs queued frames into as few gateway messages as fit under a size
    /// limit (the peer refuses larger cluster frames). A frame alone, or one
    /// too large to share, goes as [`GatewayMsg::Frame`] without a copy.
    ///
    /// The pending batch is either one frame kept as it is (`single`), or
    /// two or more already packed into `buf`; both empty when none.
    pub struct Packer {
        max_bytes: usize,
        buf: Vec<u8>,
        single: Option<Vec<u8>>,
        out: Vec<GatewayMsg>,
    }

    impl Packer {
        /// A packer whose batches stay at or under `max_bytes`.
        pub fn new(max_bytes: usize) -> Packer {
            Packer {
                max_bytes,
                buf: Vec::new(),
                single: None,
                out: Vec::new(),
            }
        }

        /// Add the next frame.
        pub fn push(&mut self, frame: Vec<u8>) {
            if frame.len() + PREFIX > self.max_bytes || frame.len() > u32::MAX as usize {
                self.flush();
                self.out.push(GatewayMsg::Frame(frame));
                return;
            }
            let pending = self.buf.len() + self.single.as_ref().map_or(0, |f| f.len() + PREFIX);
            if pending + PREFIX + frame.len() > self.max_bytes {
                self.flush();
            }
            if let Some(first) = self.single.take() {
                self.append(&first);
                self.append(&frame);
            } else if self.buf.is_empty() {
                self.single = Some(frame);
            } else {
                self.append(&frame);
            }
        }

        fn append(&mut self, frame: &[u8]) {
            self.buf
                .extend_from_slice(&(frame.len() as u32).to_le_bytes());
            self.buf.extend_from_slice(frame);
        }

        fn flush(&mut self) {
            if let Some(f) = self.single.take() {
                self.out.push(GatewayMsg::Frame(f));
            } else if !self.buf.is_empty() {
                self.out
                    .push(GatewayMsg::Batch(std::mem::take(&mut self.buf)));
            }
        }

        /// The messages to send, in order.
        pub fn finish(mut self) -> Vec<GatewayMsg> {
            self.flush();
            self.out
        }
    }
}

/// A message between nodes, with the sender's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireFrame {
    /// [`PROTOCOL`] of the sender: checked before anything else is read.
    pub protocol: u16,
    pub from: String,
    pub msg: Wire,
}

impl WireFrame {
    /// A frame of this node's protocol.
    pub fn new(from: String, msg: Wire) -> WireFrame {
        WireFrame {
            protocol: PROTOCOL,
            from,
            msg,
        }
    }
}

/// The node-to-node protocol's version, the first field of every frame.
/// Bump it whenever a type that crosses the wire changes shape: bincode
/// carries no field names, so a node of another version would misread the
/// rest. Versions start above 250 so that a frame's first byte (bincode's
/// varint marker 251 for such a `u16`) tells a versioned frame from one of
/// the releases before versions, which began with the length of the
/// sender's name.
pub const PROTOCOL: u16 = 1004;

/// Why a frame from a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of wire protocol {theirs} from a peer, this node speaks {ours}: the peer runs another Plexus release (nodes of one cluster must run the same protocol)")]
    Protocol { theirs: u16, ours: u16 },
    #[error("frame without a wire protocol version, this node speaks {ours}: the peer runs a Plexus release from before protocol versions")]
    Unversioned { ours: u16 },
    #[error(transparent)]
    Codec(#[from] plexus_codec::CodecError),
}

/// Decode a frame from a peer, its protocol version first: the rest of
/// another version's frame may not decode at all, or decode into nonsense.
pub fn decode_frame(bytes: &[u8], limit: usize) -> Result<WireFrame, FrameError> {
    match bytes.first() {
        Some(&b) if b < 251 => return Err(FrameError::Unversioned { ours: PROTOCOL }),
        _ => {}
    }
    let (protocol, _) = plexus_codec::decode_prefix::<u16>(bytes)?;
    if protocol != PROTOCOL {
        return Err(FrameError::Protocol {
            theirs: protocol,
            ours: PROTOCOL,
        });
    }
    Ok(plexus_codec::decode_limited(bytes, limit)?)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Wire {
    /// "This is who I am" — sent when a link comes up.
    Hello(NodeIdentity),
    /// A SWIM packet.
    Foca(Vec<u8>),
    /// The sender's hosted plugins.
    Announce(NodeAnnounce),
    /// Message bus traffic.
    Bus(Box<BusFrame>),
    /// Replicated state protocol: one encoded
    /// [`StateWire`](crate::actors::state::StateWire).
    State(Vec<u8>),
}

/// A plugin as its host node describes it to the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostedPlugin {
    pub name: String,
    pub version: String,
    pub status: PluginStatus,
    pub handler: String,
    pub agents: Vec<String>,
    /// Command names, then aliases.
    pub commands: Vec<String>,
    pub aliases: Vec<(String, String)>,
    pub restarts: u32,
    /// The plugin's circuit breaker: closed | open | half-open | forced-open.
    pub breaker: String,
    /// Commands its handler discovered at run time (an MCP server's tools,
    /// with description and input schema); their names are in `commands` too.
    pub tools: Vec<DiscoveredCommand>,
    /// The handler's servers (MCP), with state, pid and restarts.
    pub servers: Vec<ServerStatus>,
}

/// A plugin host's state on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginStatus {
    Running,
    Restarting,
    /// Restarted too often; no longer serving.
    Failed,
}

/// Everything a node tells others about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeAnnounce {
    pub identity: NodeIdentity,
    /// Increases with every change on the sender.
    pub seq: u64,
    /// The plugins it runs now.
    pub plugins: Vec<HostedPlugin>,
    /// Its `[node] labels`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The plugins it may host (its catalog, within `--plugins`), with
    /// their `[placement]`: every node computes the placement from these.
    pub offers: Vec<plexus_placement::PluginSpec>,
}

#[cfg(test)]
mod tests {
    use super::batch::{split, BatchError, Packer};
    use super::{decode_frame, FrameError, GatewayMsg, Wire, WireFrame, PROTOCOL};
    use proptest::prelude::*;
    use serde::Serialize;

    #[test]
    fn a_frame_of_this_protocol_decodes_and_others_are_named() {
        let f = WireFrame::new("node1".into(), Wire::Foca(vec![1, 2, 3]));
        let bytes = plexus_codec::encode(&f).unwrap();
        assert_eq!(
            bytes[0], 251,
            "a versioned frame starts with the u16 marker"
        );
        assert_eq!(decode_frame(&bytes, 1 << 20).unwrap(), f);

        let mut other = f.clone();
        other.protocol = PROTOCOL + 1;
        let e = decode_frame(&plexus_codec::encode(&other).unwrap(), 1 << 20).unwrap_err();
        assert!(
            matches!(e, FrameError::Protocol { theirs, ours } if theirs == PROTOCOL + 1 && ours == PROTOCOL),
            "{e}"
        );
        assert!(e.to_string().contains(&format!("{}", PROTOCOL + 1)), "{e}");

        // What releases before protocol versions sent.
        #[derive(Serialize)]
        struct Unversioned {
            from: String,
            msg: Wire,
        }
        let old = Unversioned {
            from: "node1".into(),
            msg: Wire::Foca(vec![1]),
        };
        let e = decode_frame(&plexus_codec::encode(&old).unwrap(), 1 << 20).unwrap_err();
        assert!(matches!(e, FrameError::Unversioned { .. }), "{e}");

        // Garbage after a correct version is still malformed, not a panic.
        let mut bad = bytes.clone();
        bad.truncate(5);
        assert!(matches!(
            decode_frame(&bad, 1 << 20),
            Err(FrameError::Codec(_))
        ));
        assert!(matches!(
            decode_frame(&[], 1 << 20),
            Err(FrameError::Codec(_))
        ));
    }

    /// The frames the messages carry, in order.
    fn unpack(msgs: &[GatewayMsg]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for m in msgs {
            match m {
                GatewayMsg::Frame(f) => out.push(f.clone()),
                GatewayMsg::Batch(b) => {
                    for f in split(b).expect("a packed batch splits") {
                        out.push(f.to_vec());
                    }
                }
            }
        }
        out
    }

    fn size(m: &GatewayMsg) -> usize {
        match m {
            GatewayMsg::Frame(f) | GatewayMsg::Batch(f) => f.len(),
        }
    }

    #[test]
    fn a_lone_frame_goes_as_a_frame_and_several_as_one_batch() {
        let mut p = Packer::new(1024);
        p.push(b"one".to_vec());
        let msgs = p.finish();
        assert!(matches!(msgs.as_slice(), [GatewayMsg::Frame(f)] if f == b"one"));

        let mut p = Packer::new(1024);
        for f in [&b"a"[..], b"bb", b""] {
            p.push(f.to_vec());
        }
        let msgs = p.finish();
        assert_eq!(msgs.len(), 1);
        assert!(matches!(msgs[0], GatewayMsg::Batch(_)));
        assert_eq!(unpack(&msgs), vec![b"a".to_vec(), b"bb".to_vec(), vec![]]);
    }

    #[test]
    fn damaged_batches_are_refused_whole_with_where() {
        assert_eq!(split(&[]), Err(BatchError::Empty));
        assert_eq!(
            split(&[1, 0, 0, 0, 9, 2, 0]),
            Err(BatchError::ShortHeader { at: 5, left: 2 })
        );
        assert_eq!(
            split(&[1, 0, 0, 0, 9, 5, 0, 0, 0, 1]),
            Err(BatchError::ShortFrame {
                at: 5,
                len: 5,
                left: 1
            })
        );
        assert_eq!(
            split(&[255, 255, 255, 255]),
            Err(BatchError::ShortFrame {
                at: 0,
                len: u32::MAX as usize,
                left: 0
            })
        );
    }

    proptest! {
        /// Whatever the frames and the limit: every frame arrives once, in
        /// order, and no batch is over the limit (a frame too big to share
        /// goes alone).
        #[test]
        fn packing_keeps_every_frame_in_order_within_the_limit(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..40),
            limit in 8usize..1200,
        ) {
            let mut p = Packer::new(limit);
            for f in &frames {
                p.push(f.clone());
            }
            let msgs = p.finish();
            prop_assert_eq!(unpack(&msgs), frames.clone());
            for m in &msgs {
                if let GatewayMsg::Batch(_) = m {
                    prop_assert!(size(m) <= limit, "batch of {} over {}", size(m), limit);
                }
            }
            prop_assert!(msgs.len() <= frames.len());
        }

        /// Bytes from a peer: never a panic, only frames or an error.
        #[test]
        fn any_bytes_split_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(frames) = split(&bytes) {
                let total: usize = frames.iter().map(|f| f.len() + 4).sum();
                prop_assert_eq!(total, bytes.len());
            }
        }
    }
}
