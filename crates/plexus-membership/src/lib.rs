//! Cluster membership: who is in the cluster and whether they answer.
//!
//! SWIM via `foca`, driven sans-IO: [`Membership`] never touches a socket or
//! a clock. The node's Membership actor feeds it packets and timer events and
//! carries out the [`Output`] (packets to send over the cluster links, timers
//! to schedule, member events to publish). Foca packets ride the same
//! ractor_cluster links as everything else, so a partition of the links is a
//! partition of the failure detector too.
//!
//! States: **up** (alive), **unreachable** (suspected: probes and indirect
//! probes went unanswered), **down** (suspicion expired without refutation).
//! A node that restarts comes back with a higher generation; its identity
//! wins the address conflict and replaces the old one.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use bytes::{Buf, BufMut};
use foca::{
    AccumulatingRuntime, Codec, Foca, Header, Member, NoCustomBroadcast, OwnedNotification, State,
};
use rand_foca::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};

pub use foca::Timer;

/// How a node is known in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// Unique node name (the identity's address: one live identity per name).
    pub name: String,
    /// Where its cluster listener is (`host:port`), for reconnects.
    pub cluster_addr: String,
    /// Where its client API is (`host:port`).
    pub api_addr: String,
    /// Bumped on every start (persisted in the data dir) and on rejoin.
    pub generation: u64,
}

impl foca::Identity for NodeIdentity {
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        Some(NodeIdentity {
            generation: self.generation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> String {
        self.name.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// Bincode (through `plexus-codec`) for foca's packets.
#[derive(Debug, Default, Clone, Copy)]
pub struct FocaCodec;

/// A foca packet that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FocaCodecError {
    #[error(transparent)]
    Codec(#[from] plexus_codec::CodecError),
    #[error("packet buffer full")]
    BufferFull,
}

fn put<T: Serialize>(v: &T, mut buf: impl BufMut) -> Result<(), FocaCodecError> {
    let bytes = plexus_codec::encode(v)?;
    if buf.remaining_mut() < bytes.len() {
        return Err(FocaCodecError::BufferFull);
    }
    buf.put_slice(&bytes);
    Ok(())
}

fn take<T: serde::de::DeserializeOwned>(mut buf: impl Buf) -> Result<T, FocaCodecError> {
    let (v, used) = plexus_codec::decode_prefix(buf.chunk())?;
    buf.advance(used);
    Ok(v)
}

impl Codec<NodeIdentity> for FocaCodec {
    type Error = FocaCodecError;

    fn encode_header(
        &mut self,
        header: &Header<NodeIdentity>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        put(header, buf)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<NodeIdentity>, Self::Error> {
        take(buf)
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeIdentity>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        put(member, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<NodeIdentity>, Self::Error> {
        take(buf)
    }
}

/// Failure-detector timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MembershipConfig {
    /// How often a random member is probed.
    pub probe_period: Duration,
    /// How long a probe waits before indirect probes.
    pub probe_rtt: Duration,
    /// How long a member stays unreachable before it is declared down.
    pub suspect_to_down: Duration,
    /// Largest foca packet.
    pub max_packet: usize,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            probe_period: Duration::from_millis(500),
            probe_rtt: Duration::from_millis(200),
            suspect_to_down: Duration::from_secs(3),
            max_packet: 16 * 1024,
        }
    }
}

impl MembershipConfig {
    fn to_foca(&self) -> foca::Config {
        let mut c = foca::Config::new_lan(NonZeroU32::new(8).unwrap_or(NonZeroU32::MIN));
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_rtt;
        c.suspect_to_down_after = self.suspect_to_down;
        c.max_packet_size = NonZeroUsize::new(self.max_packet).unwrap_or(NonZeroUsize::MIN);
        c.remove_down_after = Some(Duration::from_secs(120));
        c.periodic_announce = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(5),
            num_members: NonZeroUsize::MIN,
        });
        c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(5),
            num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
        });
        c
    }
}

/// A member's status as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    Up,
    Unreachable,
    Down,
}

impl std::fmt::Display for MemberStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MemberStatus::Up => "up",
            MemberStatus::Unreachable => "unreachable",
            MemberStatus::Down => "down",
        })
    }
}

/// One row of the membership view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    pub identity: NodeIdentity,
    pub status: MemberStatus,
    /// True for the local node.
    pub local: bool,
}

/// A change the rest of the node reacts to.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberEvent {
    /// A node (or a new generation of it) is up.
    Up(NodeIdentity),
    /// A node is down: its plugins are unavailable.
    Down(NodeIdentity),
    /// This node was declared down by others and rejoined with a new identity.
    Rejoined(NodeIdentity),
}

/// What the caller must do after feeding the protocol.
#[derive(Debug, Default)]
pub struct Output {
    /// Packets to send to members.
    pub send: Vec<(NodeIdentity, Vec<u8>)>,
    /// Timers to fire later (feed back into [`Membership::handle_timer`]).
    pub timers: Vec<(Duration, Timer<NodeIdentity>)>,
    pub events: Vec<MemberEvent>,
}

/// Errors from the protocol (a malformed packet, mostly).
#[derive(Debug, thiserror::Error)]
#[error("membership: {0}")]
pub struct MembershipError(String);

/// The membership protocol state of one node.
pub struct Membership {
    foca: Foca<NodeIdentity, FocaCodec, StdRng, NoCustomBroadcast>,
    runtime: AccumulatingRuntime<NodeIdentity>,
    /// Last known identity per node name, kept after foca forgets down members.
    known: BTreeMap<String, (NodeIdentity, MemberStatus)>,
    /// Newest timer token foca stamped on a timer it scheduled.
    token: Option<foca::TimerToken>,
    /// Suspicions whose `ChangeSuspectToDown` timer foca discarded as stale
    /// (see [`Membership::handle_timer`]), re-armed under the next token.
    orphaned: Vec<(NodeIdentity, foca::Incarnation, foca::TimerToken)>,
    suspect_to_down: Duration,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("me", self.foca.identity())
            .finish()
    }
}

impl Membership {
    /// A new protocol instance for `me`; `seed` makes its randomness replayable.
    pub fn new(me: NodeIdentity, config: &MembershipConfig, seed: u64) -> Membership {
        let foca = Foca::new(me, config.to_foca(), StdRng::seed_from_u64(seed), FocaCodec);
        Membership {
            foca,
            runtime: AccumulatingRuntime::new(),
            known: BTreeMap::new(),
            token: None,
            orphaned: Vec::new(),
            suspect_to_down: config.suspect_to_down,
        }
    }

    /// This node's current identity.
    pub fn identity(&self) -> &NodeIdentity {
        self.foca.identity()
    }

    /// Introduce ourselves to `peer` (after a link to it comes up).
    pub fn announce(&mut self, peer: NodeIdentity) -> Result<Output, MembershipError> {
        if peer.name == self.identity().name {
            return Ok(Output::default());
        }
        self.foca
            .announce(peer, &mut self.runtime)
            .map_err(|e| MembershipError(e.to_string()))?;
        Ok(self.drain())
    }

    /// A packet from the cluster link.
    pub fn handle_data(&mut self, data: &[u8]) -> Result<Output, MembershipError> {
        let r = self
            .foca
            .handle_data(data, &mut self.runtime)
            .map_err(|e| MembershipError(e.to_string()));
        let out = self.drain();
        r.map(|_| out)
    }

    /// A timer scheduled by an earlier [`Output`] fired.
    ///
    /// foca ignores every timer stamped before its timer token changed (it
    /// changes the token when this node is declared down or loses all
    /// members: "little confidence about our own state"). For a
    /// `ChangeSuspectToDown` that means a member suspected before the change
    /// stays suspect forever if it never hears of the suspicion to refute
    /// it: the simulation found peers showing a live node `unreachable` for
    /// good after lossy gossip. So a suspicion whose timer foca discarded is
    /// re-armed under the next token; foca still declares the member down
    /// only if it has not refuted by then.
    pub fn handle_timer(&mut self, timer: Timer<NodeIdentity>) -> Result<Output, MembershipError> {
        let suspicion = match &timer {
            Timer::ChangeSuspectToDown {
                member_id,
                incarnation,
                token,
            } => Some((member_id.clone(), *incarnation, *token)),
            _ => None,
        };
        let r = self
            .foca
            .handle_timer(timer, &mut self.runtime)
            .map_err(|e| MembershipError(e.to_string()));
        if let Some((id, inc, token)) = suspicion {
            if self.still_suspect(&id, inc) {
                self.orphaned.push((id, inc, token));
            }
        }
        let out = self.drain();
        r.map(|_| out)
    }

    /// Whether foca holds `id` as suspect at incarnation `inc`.
    fn still_suspect(&self, id: &NodeIdentity, inc: foca::Incarnation) -> bool {
        self.foca
            .iter_membership_state()
            .any(|m| m.id() == id && m.state() == State::Suspect && m.incarnation() == inc)
    }

    /// Re-arm orphaned suspicions once foca stamps timers with a new token.
    fn rearm_orphaned(&mut self, out: &mut Output) {
        let Some(now) = self.token else { return };
        let orphaned = std::mem::take(&mut self.orphaned);
        for (id, inc, token) in orphaned {
            if !self.still_suspect(&id, inc) {
                continue;
            }
            if token == now {
                self.orphaned.push((id, inc, token));
                continue;
            }
            let timer = Timer::ChangeSuspectToDown {
                member_id: id,
                incarnation: inc,
                token: now,
            };
            out.timers.push((self.suspect_to_down, timer));
        }
    }

    /// Leave the cluster gracefully.
    pub fn leave(&mut self) -> Output {
        let _ = self.foca.leave_cluster(&mut self.runtime);
        self.drain()
    }

    fn drain(&mut self) -> Output {
        let mut out = Output::default();
        while let Some((to, data)) = self.runtime.to_send() {
            out.send.push((to, data.to_vec()));
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            match &timer {
                Timer::ProbeRandomMember(t)
                | Timer::PeriodicAnnounce(t)
                | Timer::PeriodicAnnounceDown(t)
                | Timer::PeriodicGossip(t)
                | Timer::SendIndirectProbe { token: t, .. }
                | Timer::ChangeSuspectToDown { token: t, .. } => self.token = Some(*t),
                Timer::RemoveDown(_) => {}
            }
            out.timers.push((after, timer));
        }
        self.rearm_orphaned(&mut out);
        while let Some(n) = self.runtime.to_notify() {
            match n {
                OwnedNotification::MemberUp(id) => {
                    self.known
                        .insert(id.name.clone(), (id.clone(), MemberStatus::Up));
                    out.events.push(MemberEvent::Up(id));
                }
                OwnedNotification::MemberDown(id) => {
                    // A down notice for an older generation than we know is stale.
                    let stale = self.known.get(&id.name).is_some_and(|(k, s)| {
                        k.generation > id.generation && *s == MemberStatus::Up
                    });
                    if !stale {
                        self.known
                            .insert(id.name.clone(), (id.clone(), MemberStatus::Down));
                        out.events.push(MemberEvent::Down(id));
                    }
                }
                OwnedNotification::Rename(_, new) => {
                    self.known
                        .insert(new.name.clone(), (new.clone(), MemberStatus::Up));
                    out.events.push(MemberEvent::Up(new));
                }
                OwnedNotification::Rejoin(id) => out.events.push(MemberEvent::Rejoined(id)),
                _ => {}
            }
        }
        out
    }

    /// Every node we know of (including ourselves), by name.
    pub fn view(&self) -> Vec<MemberView> {
        let mut rows: BTreeMap<String, MemberView> = self
            .known
            .values()
            .map(|(id, status)| {
                (
                    id.name.clone(),
                    MemberView {
                        identity: id.clone(),
                        status: *status,
                        local: false,
                    },
                )
            })
            .collect();
        for m in self.foca.iter_membership_state() {
            let status = match m.state() {
                State::Alive => MemberStatus::Up,
                State::Suspect => MemberStatus::Unreachable,
                State::Down => MemberStatus::Down,
            };
            let id = m.id().clone();
            let newer = rows
                .get(&id.name)
                .is_none_or(|r| r.identity.generation <= id.generation);
            if newer {
                rows.insert(
                    id.name.clone(),
                    MemberView {
                        identity: id,
                        status,
                        local: false,
                    },
                );
            }
        }
        let me = self.identity().clone();
        rows.insert(
            me.name.clone(),
            MemberView {
                identity: me,
                status: MemberStatus::Up,
                local: true,
            },
        );
        rows.into_values().collect()
    }

    /// Status of one node by name.
    pub fn status_of(&self, name: &str) -> Option<MemberStatus> {
        self.view()
            .into_iter()
            .find(|m| m.identity.name == name)
            .map(|m| m.status)
    }

    /// Identities of members that are up or unreachable (worth a link).
    pub fn active(&self) -> Vec<NodeIdentity> {
        self.foca.iter_members().map(|m| m.id().clone()).collect()
    }
}

#[cfg(test)]
mod tests;
