//! The Gateway: this node's one cluster-visible actor. It decodes frames from
//! peers and hands them to the actor or service they are for.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ractor::{pg, Actor, ActorProcessingErr, ActorRef};

use crate::actors::membership::MembershipMsg;
use crate::actors::registry::RegistryMsg;
use crate::actors::state::StateMsg;
use crate::ctx::{gateway_group, NodeCtx};
use crate::net::links::LinkInbox;
use crate::net::wire::{self, batch, FrameError, GatewayMsg, Wire, WireFrame};

pub struct Gateway;

impl Actor for Gateway {
    type Msg = GatewayMsg;
    type State = Arc<NodeCtx>;
    type Arguments = Arc<NodeCtx>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Arc<NodeCtx>,
    ) -> Result<Arc<NodeCtx>, ActorProcessingErr> {
        pg::join(gateway_group(ctx.name()), vec![myself.get_cell()]);
        Ok(ctx)
    }

    async fn handle(
        &self,
        _me: ActorRef<Self::Msg>,
        msg: GatewayMsg,
        ctx: &mut Arc<NodeCtx>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            GatewayMsg::Frame(bytes) => {
                count_in(ctx, 1, bytes.len());
                receive(ctx, &bytes);
            }
            GatewayMsg::Batch(bytes) => match batch::split(&bytes) {
                Ok(frames) => {
                    count_in(ctx, frames.len() as u64, bytes.len());
                    for f in frames {
                        receive(ctx, f);
                    }
                }
                Err(e) => {
                    // It still arrived: counted like a malformed lone frame
                    // (bytes and message in, one bad frame), no frames.
                    count_in(ctx, 0, bytes.len());
                    ctx.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, len = bytes.len(), "dropped a malformed batch of frames from a peer");
                }
            },
        }
        Ok(())
    }
}

fn count_in(ctx: &NodeCtx, frames: u64, bytes: usize) {
    ctx.stats.frames_in.fetch_add(frames, Ordering::Relaxed);
    ctx.stats.messages_in.fetch_add(1, Ordering::Relaxed);
    ctx.stats
        .bytes_in
        .fetch_add(bytes as u64, Ordering::Relaxed);
}

/// Decode one frame and hand it on.
fn receive(ctx: &NodeCtx, bytes: &[u8]) {
    match wire::decode_frame(bytes, ctx.config.max_frame_bytes) {
        Ok(frame) => dispatch(ctx, frame),
        Err(e @ (FrameError::Protocol { .. } | FrameError::Unversioned { .. })) => {
            // A peer of another release sends a frame every probe period:
            // log at 1, 2, 4, 8, ... of them, count them all.
            let n = ctx
                .stats
                .protocol_mismatches
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            if n.is_power_of_two() {
                tracing::warn!(error = %e, frames_refused = n, "refused a frame of another wire protocol");
            }
        }
        Err(e) => {
            // A peer speaking garbage must not take the node down.
            ctx.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, len = bytes.len(), "dropped a malformed frame from a peer");
        }
    }
}

fn dispatch(ctx: &NodeCtx, frame: WireFrame) {
    // An actor between restarts misses the frame: peers repeat what matters
    // (SWIM probes, announces, gossip rounds).
    let a = &ctx.actors;
    match frame.msg {
        Wire::Hello(id) => a.membership.cast(MembershipMsg::Hello(id)),
        Wire::Foca(p) => a.membership.cast(MembershipMsg::Packet(p)),
        Wire::Announce(ann) => a.registry.cast(RegistryMsg::Announce(ann)),
        Wire::Bus(f) => {
            ctx.bus.handle_frame(&frame.from, *f);
            true
        }
        Wire::State(bytes) => a.state.cast(StateMsg::Peer {
            from: frame.from,
            bytes,
        }),
    };
}

/// The node's [`LinkInbox`]: link changes to its Membership actor, frames
/// to its Gateway.
pub struct NodeInbox(pub std::sync::Weak<NodeCtx>);

impl LinkInbox for NodeInbox {
    fn link_up(&self, peer: String) {
        if let Some(ctx) = self.0.upgrade() {
            ctx.actors.membership.cast(MembershipMsg::LinkUp(peer));
        }
    }

    fn link_down(&self, peer: String) {
        if let Some(ctx) = self.0.upgrade() {
            ctx.actors.membership.cast(MembershipMsg::LinkDown(peer));
        }
    }

    fn frame(&self, bytes: Vec<u8>) -> bool {
        self.0
            .upgrade()
            .is_some_and(|ctx| ctx.actors.gateway.cast(GatewayMsg::Frame(bytes)))
    }
}
