//! The Gateway: this node's one cluster-visible actor. It decodes frames from
//! peers and hands them to the actor or service they are for.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ractor::{pg, Actor, ActorProcessingErr, ActorRef};

use crate::ctx::{gateway_group, local_actor, NodeCtx};
use crate::membership_actor::MembershipMsg;
use crate::registry::RegistryMsg;
use crate::state_actor::StateMsg;
use crate::wire::{self, batch, FrameError, GatewayMsg, Wire, WireFrame};

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
    let node = ctx.name();
    match frame.msg {
        Wire::Hello(id) => cast_named(node, "membership", MembershipMsg::Hello(id)),
        Wire::Foca(p) => cast_named(node, "membership", MembershipMsg::Packet(p)),
        Wire::Announce(a) => cast_named(node, "registry", RegistryMsg::Announce(a)),
        Wire::Bus(f) => ctx.bus.handle_frame(&frame.from, *f),
        Wire::State(bytes) => cast_named(
            node,
            "state",
            StateMsg::Peer {
                from: frame.from,
                bytes,
            },
        ),
    }
}

/// Cast to a node-local actor by role name; a missing actor (restarting) drops the message.
pub fn cast_named<M: ractor::Message>(node: &str, role: &str, msg: M) {
    if let Some(r) = local_actor::<M>(node, role) {
        if let Err(e) = r.cast(msg) {
            tracing::debug!(role, error = %e, "local actor unavailable");
        }
    } else {
        tracing::debug!(role, "local actor not running; message dropped");
    }
}
