//! The replication coordinator on a fake clock and a fake network: quorums
//! over every known member, timeouts, read repair, lease votes and the
//! stale-promise retry, and that nothing a `Ready` sends or answers goes
//! out before its change is durable.

use std::collections::{BTreeMap, BTreeSet};

use plexus_state::{
    Access, Consistency, Coordinator, CoordinatorConfig, Kind, Lease, LeaseAcquireRequest,
    LeaseRequest, LeaseVote, LocalOp, Member, Operation, ReadRequest, Ready, Replica, Reply, ReqId,
    RequestError, StateError, StateWire, StoreConfig, Timer, View, WriteRequest,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

const T0: u64 = 1_700_000_000_000;
const TIMEOUT: u64 = 800;
const TTL: u64 = 10_000;

/// One node: its coordinator and its in-memory replica.
struct Node {
    coord: Coordinator,
    replica: Replica,
}

/// A fake cluster: nodes, a message queue, the replies and timers seen.
struct Net {
    now: u64,
    nodes: BTreeMap<String, Node>,
    /// `(from, to, message)` not delivered yet.
    queue: Vec<(String, String, StateWire)>,
    /// `(node, request, reply)` in the order they were given.
    replies: Vec<(String, ReqId, Reply)>,
    /// `(node, timer, after_ms)` set so far.
    timers: Vec<(String, Timer, u64)>,
    rng: StdRng,
}

fn live(names: &[&str]) -> Vec<Member> {
    names.iter().map(|n| Member::live(*n)).collect()
}

impl Net {
    /// Nodes `names`, each knowing all of them as live members.
    fn new(names: &[&str]) -> Net {
        let mut net = Net {
            now: T0,
            nodes: BTreeMap::new(),
            queue: vec![],
            replies: vec![],
            timers: vec![],
            rng: StdRng::seed_from_u64(7),
        };
        for n in names {
            let mut coord = Coordinator::new(*n, CoordinatorConfig::default(), T0);
            coord.set_members(Some(live(names)));
            let replica = Replica::new(*n, StoreConfig::default());
            net.nodes.insert(n.to_string(), Node { coord, replica });
        }
        net
    }

    fn node(&mut self, n: &str) -> &mut Node {
        self.nodes.get_mut(n).expect("node")
    }

    fn set_members(&mut self, n: &str, members: Option<Vec<Member>>) {
        self.node(n).coord.set_members(members);
    }

    /// Perform `ready` as the node shell does, checking the durability
    /// contract: `persist` names exactly what changed in the replica, which
    /// is "committed" here (taken) before anything is sent or answered.
    fn absorb(&mut self, n: &str, ready: Ready) {
        let changes = self.node(n).replica.take_changes();
        assert_eq!(
            ready.persist.keys, changes.keys,
            "{n}: persist names the changed keys"
        );
        assert_eq!(
            ready.persist.leases, changes.leases,
            "{n}: persist names the changed leases"
        );
        assert_eq!(
            ready.persist.audit_records,
            changes.audit.len(),
            "{n}: audit records"
        );
        for t in ready.timers {
            self.timers.push((n.to_string(), t.timer, t.after_ms));
        }
        for m in ready.messages {
            // Through the codec, as on the wire.
            let bytes = plexus_codec::encode_limited(&m.msg, 1 << 24).expect("encode");
            let msg: StateWire = plexus_codec::decode_limited(&bytes, 1 << 24).expect("decode");
            assert_eq!(msg, m.msg);
            self.queue.push((n.to_string(), m.to, msg));
        }
        for (id, r) in ready.replies {
            self.replies.push((n.to_string(), id, r));
        }
    }

    fn write(&mut self, n: &str, key: &str, op: LocalOp, level: Consistency) -> ReqId {
        self.write_req(
            n,
            WriteRequest {
                plugin: "alpha".into(),
                by: String::new(),
                key: key.into(),
                op,
                access: None,
                ttl_ms: None,
                kind: None,
                consistency: level,
                timeout_ms: TIMEOUT,
            },
        )
    }

    fn write_req(&mut self, n: &str, w: WriteRequest) -> ReqId {
        let now = self.now;
        let node = self.node(n);
        let (id, ready) = node.coord.write(now, w, &mut node.replica);
        self.absorb(n, ready);
        id
    }

    fn read(&mut self, n: &str, key: &str, level: Consistency) -> ReqId {
        let now = self.now;
        let node = self.node(n);
        let q = ReadRequest {
            plugin: "alpha".into(),
            key: key.into(),
            consistency: level,
            timeout_ms: TIMEOUT,
        };
        let (id, ready) = node.coord.read(now, q, &mut node.replica);
        self.absorb(n, ready);
        id
    }

    fn acquire(&mut self, n: &str, name: &str, holder: &str) -> ReqId {
        let now = self.now;
        let node = self.node(n);
        let q = LeaseAcquireRequest {
            name: name.into(),
            holder: holder.into(),
            ttl_ms: TTL,
            timeout_ms: TIMEOUT,
        };
        let (id, ready) = node.coord.acquire_lease(now, q, &mut node.replica);
        self.absorb(n, ready);
        id
    }

    /// Fire request `id`'s deadline on node `n`.
    fn expire(&mut self, n: &str, id: ReqId) {
        let now = self.now;
        let node = self.node(n);
        let ready = node.coord.expire(now, id, &mut node.replica);
        self.absorb(n, ready);
    }

    /// Feed `from`'s message `msg` to `to`.
    fn inject(&mut self, from: &str, to: &str, msg: StateWire) {
        let now = self.now;
        let node = self.node(to);
        let ready = node.coord.on_message(now, from, msg, &mut node.replica);
        self.absorb(to, ready);
    }

    /// Take the queued messages matching `pick` out of the queue.
    fn take(
        &mut self,
        pick: impl Fn(&str, &str, &StateWire) -> bool,
    ) -> Vec<(String, String, StateWire)> {
        let (picked, rest) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|(f, t, m)| pick(f, t, m));
        self.queue = rest;
        picked
    }

    /// Deliver the queued messages matching `pick` (and what they cause,
    /// while it matches too) until none is left.
    fn deliver(&mut self, pick: impl Fn(&str, &str, &StateWire) -> bool) {
        loop {
            let batch = self.take(&pick);
            if batch.is_empty() {
                return;
            }
            for (f, t, m) in batch {
                self.inject(&f, &t, m);
            }
        }
    }

    /// Deliver everything (messages to unknown nodes are dropped).
    fn deliver_all(&mut self) {
        loop {
            let batch = std::mem::take(&mut self.queue);
            if batch.is_empty() {
                return;
            }
            for (f, t, m) in batch {
                if self.nodes.contains_key(&t) {
                    self.inject(&f, &t, m);
                }
            }
        }
    }

    /// Replies to request `id` of node `n`.
    fn replies_to(&self, n: &str, id: ReqId) -> Vec<Reply> {
        self.replies
            .iter()
            .filter(|(m, i, _)| m == n && *i == id)
            .map(|(_, _, r)| r.clone())
            .collect()
    }

    /// The one reply to `id`, if any (more than one is a failure).
    fn reply(&self, n: &str, id: ReqId) -> Option<Reply> {
        let mut r = self.replies_to(n, id);
        assert!(
            r.len() <= 1,
            "{n} answered request {id} more than once: {r:?}"
        );
        r.pop()
    }

    fn value(&self, n: &str, key: &str) -> Option<View> {
        self.nodes[n]
            .replica
            .store()
            .get("alpha", key, self.now)
            .expect("get")
    }
}

fn put(v: &str) -> LocalOp {
    LocalOp::Put(format!("\"{v}\""))
}

fn is_to(to: &'static str) -> impl Fn(&str, &str, &StateWire) -> bool {
    move |_, t, _| t == to
}

fn from_or_to(n: &'static str) -> impl Fn(&str, &str, &StateWire) -> bool {
    move |f, t, _| f == n || t == n
}

fn write_ok(r: Option<Reply>) -> plexus_state::WriteOutcome {
    match r {
        Some(Reply::Write(Ok(w))) => w,
        other => panic!("expected a successful write, got {other:?}"),
    }
}

fn write_err(r: Option<Reply>) -> RequestError {
    match r {
        Some(Reply::Write(Err(e))) => e,
        other => panic!("expected a failed write, got {other:?}"),
    }
}

fn read_ok(r: Option<Reply>) -> plexus_state::ReadOutcome {
    match r {
        Some(Reply::Read(Ok(x))) => x,
        other => panic!("expected a successful read, got {other:?}"),
    }
}

fn lease_ok(r: Option<Reply>) -> Lease {
    match r {
        Some(Reply::Lease(Ok(l))) => l,
        other => panic!("expected a granted lease, got {other:?}"),
    }
}

fn lease_err(r: Option<Reply>) -> RequestError {
    match r {
        Some(Reply::Lease(Err(e))) => e,
        other => panic!("expected a refused lease, got {other:?}"),
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ------------------------------------------------------------------ writes

#[test]
fn a_local_write_is_answered_at_once_after_it_is_durable_and_pushed_to_live_peers() {
    let mut net = Net::new(&["a", "b", "c"]);
    net.set_members(
        "a",
        Some(vec![
            Member::live("a"),
            Member::live("b"),
            Member::unreachable("c"),
        ]),
    );
    let now = net.now;
    let node = net.node("a");
    let (id, ready) = node.coord.write(
        now,
        WriteRequest {
            plugin: "alpha".into(),
            by: String::new(),
            key: "k".into(),
            op: put("v"),
            access: None,
            ttl_ms: None,
            kind: None,
            consistency: Consistency::Local,
            timeout_ms: TIMEOUT,
        },
        &mut node.replica,
    );
    // The reply acknowledges the write: the key is in what must be durable first.
    assert!(ready.persist.keys.contains("k"), "{:?}", ready.persist);
    assert_eq!(ready.events.len(), 2, "the implicit creation and the put");
    let to: Vec<&str> = ready.messages.iter().map(|m| m.to.as_str()).collect();
    assert_eq!(to, ["b"], "eager push only to live peers");
    assert!(matches!(ready.messages[0].msg, StateWire::Gossip(_)));
    assert!(ready.timers.is_empty());
    net.absorb("a", ready);
    let w = write_ok(net.reply("a", id));
    assert_eq!((w.required, w.acked_by.clone()), (1, names(&["a"])));
    assert_eq!(w.ops, ["put"]);
    net.deliver_all();
    assert!(net.value("b", "k").is_some(), "b got the pushed delta");
    assert!(
        net.value("c", "k").is_none(),
        "c is unreachable: gossip repairs it later"
    );
}

#[test]
fn a_majority_write_needs_acks_of_a_majority_of_every_known_member() {
    let mut net = Net::new(&["a", "b", "c", "d", "e"]);
    // c, d and e are known but unreachable: they still count.
    let view = vec![
        Member::live("a"),
        Member::live("b"),
        Member::unreachable("c"),
        Member::unreachable("d"),
        Member::unreachable("e"),
    ];
    net.set_members("a", Some(view));
    let id = net.write("a", "k", put("v"), Consistency::Majority);
    // The state goes to every other member, reachable or not.
    let to: BTreeSet<String> = net.queue.iter().map(|(_, t, _)| t.clone()).collect();
    assert_eq!(to, names(&["b", "c", "d", "e"]).into_iter().collect());
    assert!(net
        .timers
        .contains(&("a".into(), Timer::Expire(id), TIMEOUT)));
    // b acks: 2 of 3.
    net.deliver(from_or_to("b"));
    assert_eq!(
        net.reply("a", id),
        None,
        "2 acks of 5 members are not a majority"
    );
    // c acks: 3 of 3.
    net.deliver(from_or_to("c"));
    let w = write_ok(net.reply("a", id));
    assert_eq!(w.required, 3);
    assert_eq!(w.acked_by, names(&["a", "b", "c"]));
    assert_eq!(w.consistency, Consistency::Majority);
    // d and e ack late: ignored, no second reply.
    net.deliver_all();
    assert_eq!(net.replies_to("a", id).len(), 1);
    assert_eq!(net.node("a").coord.pending_len(), 0);
}

#[test]
fn an_all_write_waits_for_every_member() {
    let mut net = Net::new(&["a", "b", "c"]);
    let id = net.write("a", "k", put("v"), Consistency::All);
    net.deliver(from_or_to("b"));
    assert_eq!(net.reply("a", id), None);
    net.deliver(from_or_to("c"));
    let w = write_ok(net.reply("a", id));
    assert_eq!((w.required, w.acked_by), (3, names(&["a", "b", "c"])));
}

#[test]
fn a_write_times_out_naming_how_many_acks_arrived_and_from_whom() {
    let mut net = Net::new(&["a", "b", "c", "d", "e"]);
    let id = net.write("a", "k", put("v"), Consistency::Majority);
    net.deliver(from_or_to("b"));
    net.now += TIMEOUT;
    net.expire("a", id);
    let e = write_err(net.reply("a", id));
    assert_eq!(
        e,
        RequestError::NotConfirmed {
            what: Operation::Write,
            level: Consistency::Majority,
            timeout_ms: TIMEOUT,
            required: 3,
            acked_by: names(&["a", "b"]),
        }
    );
    assert_eq!(
        e.to_string(),
        "write at consistency majority not confirmed within 800 ms: 2 of 3 required acks arrived (from a, b); the change stays applied where it reached and gossip spreads it"
    );
    // The write stays applied where it reached; later acks change nothing.
    assert!(net.value("a", "k").is_some() && net.value("b", "k").is_some());
    net.deliver_all();
    net.expire("a", id);
    assert_eq!(net.replies_to("a", id).len(), 1);
}

#[test]
fn duplicate_acks_count_once() {
    let mut net = Net::new(&["a", "b", "c", "d", "e"]);
    let id = net.write("a", "k", put("v"), Consistency::Majority);
    let acks = {
        net.deliver(is_to("b"));
        net.take(|f, _, _| f == "b")
    };
    assert_eq!(acks.len(), 1);
    let (_, _, ack) = acks[0].clone();
    assert!(
        matches!(ack, StateWire::WriteAck { ok: true, .. }),
        "{ack:?}"
    );
    for _ in 0..3 {
        net.inject("b", "a", ack.clone());
    }
    assert_eq!(net.reply("a", id), None, "b counted once: 2 of 3");
    net.expire("a", id);
    assert!(matches!(
        write_err(net.reply("a", id)),
        RequestError::NotConfirmed { acked_by, .. } if acked_by == names(&["a", "b"])
    ));
}

#[test]
fn acks_from_nodes_outside_the_members_are_ignored() {
    let mut net = Net::new(&["a", "b", "c"]);
    let id = net.write("a", "k", put("v"), Consistency::Majority);
    let wire = match &net.queue[0].2 {
        StateWire::Write { id, .. } => *id,
        other => panic!("{other:?}"),
    };
    for stranger in ["x", "y", "z"] {
        let ack = StateWire::WriteAck {
            id: wire,
            ok: true,
            reason: None,
        };
        net.inject(stranger, "a", ack);
    }
    assert_eq!(
        net.reply("a", id),
        None,
        "three strangers are no majority of a, b, c"
    );
    net.expire("a", id);
    assert!(matches!(
        write_err(net.reply("a", id)),
        RequestError::NotConfirmed { acked_by, required: 2, .. } if acked_by == names(&["a"])
    ));
}

#[test]
fn an_ack_under_another_requests_id_does_not_count() {
    let mut net = Net::new(&["a", "b", "c"]);
    let first = net.write("a", "k", put("v"), Consistency::Majority);
    let second = net.write("a", "j", put("w"), Consistency::Majority);
    // b acks the first write only.
    let to_b = net.take(is_to("b"));
    let first_write = to_b
        .iter()
        .find(|(_, _, m)| matches!(m, StateWire::Write { key, .. } if key == "k"))
        .cloned()
        .expect("write of k");
    net.inject("a", "b", first_write.2);
    net.deliver(|f, _, _| f == "b");
    assert!(write_ok(net.reply("a", first))
        .acked_by
        .contains(&"b".to_string()));
    assert_eq!(net.reply("a", second), None);
}

#[test]
fn a_refused_write_fails_once_the_level_cannot_be_reached() {
    let mut net = Net::new(&["a", "b", "c"]);
    let id = net.write("a", "k", put("v"), Consistency::All);
    let wire = match &net.queue[0].2 {
        StateWire::Write { id, .. } => *id,
        other => panic!("{other:?}"),
    };
    net.inject(
        "b",
        "a",
        StateWire::WriteAck {
            id: wire,
            ok: false,
            reason: Some("disk full".into()),
        },
    );
    // All needs b: it can no longer be reached, so no need to wait.
    assert!(matches!(
        write_err(net.reply("a", id)),
        RequestError::NotConfirmed { required: 3, .. }
    ));
}

#[test]
fn membership_changes_mid_request_do_not_change_its_quorum() {
    // Grown: d and e join after the write started; the quorum stays 2 of 3
    // and their answers do not count.
    let mut net = Net::new(&["a", "b", "c", "d", "e"]);
    net.set_members("a", Some(live(&["a", "b", "c"])));
    let id = net.write("a", "k", put("v"), Consistency::All);
    net.set_members("a", Some(live(&["a", "b", "c", "d", "e"])));
    let wire = match &net.queue[0].2 {
        StateWire::Write { id, .. } => *id,
        other => panic!("{other:?}"),
    };
    for n in ["d", "e"] {
        let ack = StateWire::WriteAck {
            id: wire,
            ok: true,
            reason: None,
        };
        net.inject(n, "a", ack);
    }
    net.deliver(from_or_to("b"));
    assert_eq!(
        net.reply("a", id),
        None,
        "d and e were not members when it started"
    );
    net.deliver(from_or_to("c"));
    let w = write_ok(net.reply("a", id));
    assert_eq!((w.required, w.acked_by), (3, names(&["a", "b", "c"])));

    // Shrunk: the view loses b and c mid-request; their acks still count.
    let mut net = Net::new(&["a", "b", "c"]);
    let id = net.write("a", "k", put("v"), Consistency::All);
    net.set_members("a", Some(live(&["a"])));
    net.deliver_all();
    assert_eq!(
        write_ok(net.reply("a", id)).acked_by,
        names(&["a", "b", "c"])
    );

    // A new request uses the new view.
    net.set_members("a", Some(live(&["a", "b", "c", "d", "e"])));
    let id = net.write("a", "k", put("w"), Consistency::Majority);
    net.deliver(from_or_to("b"));
    assert_eq!(net.reply("a", id), None, "2 of 5 members");
}

#[test]
fn without_a_membership_view_only_local_requests_are_served() {
    let mut net = Net::new(&["a", "b"]);
    net.set_members("a", None);
    let id = net.write("a", "k", put("v"), Consistency::Majority);
    assert_eq!(
        write_err(net.reply("a", id)),
        RequestError::NoMembershipView
    );
    assert!(
        net.value("a", "k").is_none(),
        "refused before anything was applied"
    );
    let id = net.read("a", "k", Consistency::All);
    assert!(matches!(
        net.reply("a", id),
        Some(Reply::Read(Err(RequestError::NoMembershipView)))
    ));
    let id = net.acquire("a", "job", "x");
    assert_eq!(
        lease_err(net.reply("a", id)),
        RequestError::NoMembershipView
    );
    assert!(net.node("a").replica.leases().get("job").is_none());
    let id = net.write("a", "k", put("v"), Consistency::Local);
    assert_eq!(write_ok(net.reply("a", id)).required, 1);
    // An empty view is no view either.
    net.set_members("a", Some(vec![]));
    let id = net.write("a", "k", put("v"), Consistency::Majority);
    assert_eq!(
        write_err(net.reply("a", id)),
        RequestError::NoMembershipView
    );
}

#[test]
fn a_one_node_cluster_reaches_majority_and_all_at_once() {
    let mut net = Net::new(&["a"]);
    for level in [Consistency::Majority, Consistency::All] {
        let id = net.write("a", "k", put("v"), level);
        assert_eq!(write_ok(net.reply("a", id)).acked_by, names(&["a"]));
        let id = net.read("a", "k", level);
        assert_eq!(read_ok(net.reply("a", id)).acked_by, names(&["a"]));
    }
    assert!(net.queue.is_empty());
    assert_eq!(net.node("a").coord.pending_len(), 0);
}

#[test]
fn a_peer_acks_a_write_only_once_its_merge_is_durable_and_covers_it() {
    let mut net = Net::new(&["a", "b", "c"]);
    net.write("a", "k", put("v"), Consistency::Majority);
    let (_, _, write) = net.take(is_to("b")).pop().expect("write to b");
    let now = net.now;
    let b = net.node("b");
    let ready = b.coord.on_message(now, "a", write.clone(), &mut b.replica);
    assert!(
        ready.persist.keys.contains("k"),
        "the merge is committed before the ack"
    );
    assert_eq!(ready.events.len(), 1, "the merged change is published");
    assert!(matches!(
        ready.messages.as_slice(),
        [m] if m.to == "a" && matches!(m.msg, StateWire::WriteAck { ok: true, .. })
    ));
    net.absorb("b", ready);

    // A write whose version the merged state does not cover is refused.
    let StateWire::Write {
        id,
        key,
        state,
        gen,
        mut version,
    } = write
    else {
        unreachable!()
    };
    let dot = version.inc("zz".to_string());
    crdts::CmRDT::apply(&mut version, dot);
    let ready = {
        let b = net.node("b");
        b.coord.on_message(
            now,
            "a",
            StateWire::Write {
                id,
                key,
                state,
                gen,
                version,
            },
            &mut b.replica,
        )
    };
    assert!(matches!(
        ready.messages.as_slice(),
        [m] if matches!(&m.msg, StateWire::WriteAck { ok: false, reason: Some(r), .. } if r.contains("does not cover"))
    ));
    net.absorb("b", ready);
}

#[test]
fn a_write_refused_here_sends_nothing_and_says_why() {
    let mut net = Net::new(&["a", "b", "c"]);
    // The type asked for cannot take the op: 409, nothing created.
    let id = net.write_req(
        "a",
        WriteRequest {
            plugin: "alpha".into(),
            by: String::new(),
            key: "k".into(),
            op: LocalOp::Incr(1),
            access: None,
            ttl_ms: None,
            kind: Some(Kind::Lww),
            consistency: Consistency::Majority,
            timeout_ms: TIMEOUT,
        },
    );
    let e = write_err(net.reply("a", id));
    assert_eq!(
        e.to_string(),
        "a lww cannot take `incr` (use --field for a map)"
    );
    assert!(net.queue.is_empty());
    assert!(net.value("a", "k").is_none());
    // The key holds another type: the store's type mismatch.
    let id = net.write("a", "c", LocalOp::Incr(1), Consistency::Local);
    write_ok(net.reply("a", id));
    net.deliver_all();
    let id = net.write("a", "c", put("v"), Consistency::Majority);
    assert!(matches!(
        write_err(net.reply("a", id)),
        RequestError::State(StateError::TypeMismatch { .. })
    ));
    assert!(net.queue.is_empty(), "a refused write is not replicated");
    // Too large: refused before an implicit creation.
    let id = net.write_req(
        "a",
        WriteRequest {
            plugin: "alpha".into(),
            by: String::new(),
            key: "big".into(),
            op: LocalOp::Put("x".repeat(70_000)),
            access: Some(Access::Private),
            ttl_ms: None,
            kind: None,
            consistency: Consistency::Local,
            timeout_ms: TIMEOUT,
        },
    );
    assert!(matches!(
        write_err(net.reply("a", id)),
        RequestError::State(StateError::TooLarge { what: "value", .. })
    ));
    assert!(net.node("a").replica.store().state("big").is_none());
}

#[test]
fn a_meta_change_applied_before_a_refused_value_change_is_published_and_durable() {
    let mut net = Net::new(&["a"]);
    let id = net.write("a", "s", LocalOp::Add(vec!["m".into()]), Consistency::Local);
    write_ok(net.reply("a", id));
    // Owner changes the access and puts a register value into a set.
    let now = net.now;
    let a = net.node("a");
    let (id, ready) = a.coord.write(
        now,
        WriteRequest {
            plugin: "alpha".into(),
            by: String::new(),
            key: "s".into(),
            op: put("v"),
            access: Some(Access::Private),
            ttl_ms: None,
            kind: None,
            consistency: Consistency::Local,
            timeout_ms: TIMEOUT,
        },
        &mut a.replica,
    );
    assert_eq!(ready.events.len(), 1, "the access change happened");
    assert!(ready.persist.keys.contains("s"));
    net.absorb("a", ready);
    assert!(matches!(
        write_err(net.reply("a", id)),
        RequestError::State(StateError::TypeMismatch { .. })
    ));
}

// ------------------------------------------------------------------- reads

#[test]
fn a_majority_read_repairs_and_sees_a_majority_write() {
    let mut net = Net::new(&["a", "b", "c"]);
    let w = net.write("a", "k", put("v"), Consistency::Majority);
    // Only b gets the write; c misses it.
    net.take(is_to("c"));
    net.deliver(from_or_to("b"));
    write_ok(net.reply("a", w));
    assert!(net.value("c", "k").is_none());
    // c reads at majority; only a answers (b is slow).
    let r = net.read("c", "k", Consistency::Majority);
    let to: BTreeSet<String> = net.queue.iter().map(|(_, t, _)| t.clone()).collect();
    assert_eq!(to, names(&["a", "b"]).into_iter().collect());
    net.take(is_to("b"));
    net.deliver(from_or_to("a"));
    let x = read_ok(net.reply("c", r));
    assert_eq!(x.view, View::Lww(Some("\"v\"".into())));
    assert_eq!((x.required, x.acked_by), (2, names(&["a", "c"])));
    assert_eq!(x.info.owner, "alpha");
    // Read repair: c now holds the key (and it was persisted: `absorb`
    // checked the ready that merged it named the key).
    assert_eq!(net.value("c", "k"), Some(View::Lww(Some("\"v\"".into()))));
}

#[test]
fn a_read_times_out_naming_the_answers() {
    let mut net = Net::new(&["a", "b", "c"]);
    let r = net.read("a", "k", Consistency::All);
    net.deliver(from_or_to("b"));
    assert_eq!(net.reply("a", r), None);
    net.expire("a", r);
    let e = match net.reply("a", r) {
        Some(Reply::Read(Err(e))) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        e.to_string(),
        "read at consistency all not confirmed within 800 ms: 2 of 3 required acks arrived (from a, b)"
    );
}

#[test]
fn a_read_of_a_key_no_replica_has_is_not_found() {
    let mut net = Net::new(&["a", "b", "c"]);
    let r = net.read("a", "nope", Consistency::Majority);
    net.deliver_all();
    assert!(matches!(
        net.reply("a", r),
        Some(Reply::Read(Err(RequestError::State(StateError::NotFound(k))))) if k == "nope"
    ));
}

#[test]
fn a_read_answer_that_cannot_be_merged_counts_as_a_refusal() {
    let mut net = Net::new(&["a", "b", "c"]);
    let id = net.write("a", "k", put("v"), Consistency::Local);
    write_ok(net.reply("a", id));
    let r = net.read("a", "k", Consistency::All);
    let wire = match &net.queue.last().expect("read req").2 {
        StateWire::ReadReq { id, .. } => *id,
        other => panic!("{other:?}"),
    };
    // b answers with a state that is invalid for the key (empty creations).
    let mut bad = net.nodes["a"]
        .replica
        .store()
        .state("k")
        .cloned()
        .expect("state");
    if let plexus_state::Body::Live(l) = &mut bad.body {
        l.creations.clear();
    }
    net.inject(
        "b",
        "a",
        StateWire::ReadResp {
            id: wire,
            state: Some(bad),
        },
    );
    assert!(matches!(
        net.reply("a", r),
        Some(Reply::Read(Err(RequestError::NotConfirmed {
            what: Operation::Read,
            ..
        })))
    ));
}

// ------------------------------------------------------------------ leases

#[test]
fn a_lease_needs_votes_of_a_majority_of_every_member() {
    let mut net = Net::new(&["a", "b", "c", "d", "e"]);
    let now = net.now;
    let a = net.node("a");
    let q = LeaseAcquireRequest {
        name: "job".into(),
        holder: "x@a".into(),
        ttl_ms: TTL,
        timeout_ms: TIMEOUT,
    };
    let (id, ready) = a.coord.acquire_lease(now, q, &mut a.replica);
    // a's own grant is durable before the requests go out.
    assert!(ready.persist.leases.contains("job"));
    assert_eq!(ready.messages.len(), 4);
    net.absorb("a", ready);
    net.deliver(from_or_to("b"));
    assert_eq!(net.reply("a", id), None, "2 of 5");
    net.deliver(from_or_to("c"));
    let l = lease_ok(net.reply("a", id));
    assert_eq!(
        (l.holder.as_str(), l.token, l.expires_at_ms),
        ("x@a", 1, T0 + TTL)
    );
    net.deliver_all();
    assert_eq!(net.replies_to("a", id).len(), 1);
}

#[test]
fn an_acceptor_votes_only_once_its_grant_is_durable() {
    let mut net = Net::new(&["a", "b", "c"]);
    let req = LeaseRequest {
        name: "job".into(),
        holder: "x@a".into(),
        token: 1,
        ttl_ms: TTL,
    };
    let now = net.now;
    let b = net.node("b");
    let ready = b.coord.on_message(
        now,
        "a",
        StateWire::LeaseReq {
            id: 9,
            req: req.clone(),
        },
        &mut b.replica,
    );
    assert!(ready.persist.leases.contains("job"));
    assert!(matches!(
        ready.messages.as_slice(),
        [m] if m.msg == StateWire::LeaseVote { id: 9, vote: LeaseVote::Granted }
    ));
    net.absorb("b", ready);
    // A refusal changes nothing to persist.
    let other = LeaseRequest {
        holder: "y@c".into(),
        ..req
    };
    let b = net.node("b");
    let ready = b.coord.on_message(
        now,
        "c",
        StateWire::LeaseReq { id: 3, req: other },
        &mut b.replica,
    );
    assert!(ready.persist.is_empty());
    assert!(matches!(
        &ready.messages[0].msg,
        StateWire::LeaseVote { id: 3, vote: LeaseVote::Refused { current: Some(l) } } if l.holder == "x@a"
    ));
    net.absorb("b", ready);
}

/// Give node `n` a promise of `name` to `holder` under `token`, voted at
/// `at` (its expiry is `at + TTL` on that node's clock).
fn promise(net: &mut Net, n: &str, holder: &str, token: u64, at: u64) {
    let req = LeaseRequest {
        name: "job".into(),
        holder: holder.into(),
        token,
        ttl_ms: TTL,
    };
    let node = net.node(n);
    assert_eq!(node.replica.leases_mut().vote(&req, at), LeaseVote::Granted);
    node.replica.take_changes();
}

/// The `LeaseReq`s in the queue: `(to, token)`.
fn lease_reqs(net: &Net) -> Vec<(String, u64)> {
    net.queue
        .iter()
        .filter_map(|(_, t, m)| match m {
            StateWire::LeaseReq { req, .. } => Some((t.clone(), req.token)),
            _ => None,
        })
        .collect()
}

/// Deliver everything (at most 20 rounds: a coordinator that retried
/// forever would not stop); the `LeaseReq`s delivered, `(to, token)`, in
/// order.
fn deliver_counting_lease_reqs(net: &mut Net) -> Vec<(String, u64)> {
    let mut sent = vec![];
    for _ in 0..20 {
        let batch = std::mem::take(&mut net.queue);
        if batch.is_empty() {
            break;
        }
        for (f, t, m) in batch {
            if let StateWire::LeaseReq { req, .. } = &m {
                sent.push((t.clone(), req.token));
            }
            net.inject(&f, &t, m);
        }
    }
    sent
}

#[test]
fn a_refusal_for_another_nodes_promise_is_retried_once_with_a_token_above_every_reported_one() {
    let mut net = Net::new(&["a", "b", "c"]);
    // b and c promised to y under tokens 3 and 5, long ago on their clocks.
    promise(&mut net, "b", "y@b", 3, T0 - 2 * TTL);
    promise(&mut net, "c", "y@b", 5, T0 - 2 * TTL);
    let id = net.acquire("a", "job", "x@a");
    assert_eq!(lease_reqs(&net), [("b".into(), 1), ("c".into(), 1)]);
    // Both refuse token 1, reporting 3 and 5: a retries with 6.
    net.deliver(|_, _, m| !matches!(m, StateWire::LeaseReq { req, .. } if req.token != 1));
    assert_eq!(net.reply("a", id), None, "retried, not answered");
    assert_eq!(lease_reqs(&net), [("b".into(), 6), ("c".into(), 6)]);
    // Their promises expired on their own clocks: granted.
    net.deliver_all();
    let l = lease_ok(net.reply("a", id));
    assert_eq!((l.holder.as_str(), l.token), ("x@a", 6));
}

#[test]
fn the_stale_promise_retry_happens_once_then_409_names_the_highest_promise() {
    let mut net = Net::new(&["a", "b", "c"]);
    // b and c promised to y, and their promises still run on their clocks.
    promise(&mut net, "b", "y@b", 4, T0);
    promise(&mut net, "c", "y@b", 4, T0);
    let id = net.acquire("a", "job", "x@a");
    net.deliver_all();
    // One retry (token 5), refused again: 409 (`the_retry_is_sent_exactly_once`
    // counts the attempts).
    let e = lease_err(net.reply("a", id));
    assert_eq!(
        e,
        RequestError::LeaseRefused {
            name: "job".into(),
            holder: "y@b".into(),
            token: 4,
        }
    );
    assert_eq!(
        e.to_string(),
        "lease `job` not granted: a majority of the nodes refused; the highest promise they reported is to `y@b` (token 4)"
    );
    let b = &net.nodes["b"].replica;
    assert_eq!(
        b.leases().get("job").map(|l| l.token),
        Some(4),
        "b still promises 4"
    );
    assert_eq!(net.node("a").coord.pending_len(), 0);
}

#[test]
fn the_retry_is_sent_exactly_once() {
    let mut net = Net::new(&["a", "b", "c"]);
    promise(&mut net, "b", "y@b", 4, T0);
    promise(&mut net, "c", "y@b", 4, T0);
    let id = net.acquire("a", "job", "x@a");
    let sent = deliver_counting_lease_reqs(&mut net);
    assert_eq!(
        sent,
        [
            ("b".into(), 1),
            ("c".into(), 1),
            ("b".into(), 5),
            ("c".into(), 5)
        ]
    );
    lease_err(net.reply("a", id));
}

#[test]
fn this_nodes_own_unexpired_promise_is_not_retried_and_409_says_held_for_how_long() {
    let mut net = Net::new(&["a", "b", "c"]);
    let first = net.acquire("a", "job", "x@a");
    net.deliver_all();
    assert_eq!(lease_ok(net.reply("a", first)).token, 1);
    net.now += 1_000;
    let id = net.acquire("a", "job", "z@a");
    let sent = deliver_counting_lease_reqs(&mut net);
    assert_eq!(sent, [("b".into(), 2), ("c".into(), 2)], "no retry");
    let e = lease_err(net.reply("a", id));
    assert_eq!(
        e,
        RequestError::LeaseHeld {
            name: "job".into(),
            holder: "x@a".into(),
            token: 1,
            remaining_ms: TTL - 1_000,
        }
    );
    assert_eq!(
        e.to_string(),
        "lease `job` is held by `x@a` (token 1) for another 9000 ms"
    );
}

#[test]
fn a_renewal_keeps_the_token() {
    let mut net = Net::new(&["a", "b", "c"]);
    let first = net.acquire("a", "job", "x@a");
    net.deliver_all();
    assert_eq!(lease_ok(net.reply("a", first)).token, 1);
    net.now += 1_000;
    let again = net.acquire("a", "job", "x@a");
    net.deliver_all();
    let l = lease_ok(net.reply("a", again));
    assert_eq!((l.token, l.expires_at_ms), (1, net.now + TTL));
}

#[test]
fn a_lease_that_times_out_is_not_retried_and_409_says_no_majority() {
    let mut net = Net::new(&["a", "b", "c"]);
    let id = net.acquire("a", "job", "x@a");
    net.queue.clear();
    net.now += TIMEOUT;
    net.expire("a", id);
    let e = lease_err(net.reply("a", id));
    assert_eq!(
        e.to_string(),
        "lease `job` not granted: no majority of the cluster voted for it within 800 ms"
    );
    assert_eq!(lease_reqs(&net), []);
}

#[test]
fn the_original_deadline_bounds_the_retry() {
    let mut net = Net::new(&["a", "b", "c"]);
    promise(&mut net, "b", "y@b", 3, T0 - 2 * TTL);
    promise(&mut net, "c", "y@b", 3, T0 - 2 * TTL);
    let id = net.acquire("a", "job", "x@a");
    // The first attempt is refused; the retry's votes never arrive.
    net.deliver(|f, _, m| {
        f != "a" || matches!(m, StateWire::LeaseReq { req, .. } if req.token == 1)
    });
    assert_eq!(lease_reqs(&net).len(), 2, "retry sent");
    net.queue.clear();
    // One deadline for the whole request: no new timer was set.
    let expires: Vec<_> = net
        .timers
        .iter()
        .filter(|(_, t, _)| *t == Timer::Expire(id))
        .collect();
    assert_eq!(expires.len(), 1);
    net.expire("a", id);
    assert!(matches!(
        lease_err(net.reply("a", id)),
        RequestError::LeaseNoMajority { .. }
    ));
}

#[test]
fn lease_votes_from_unknown_nodes_or_for_the_first_attempt_after_a_retry_are_ignored() {
    let mut net = Net::new(&["a", "b", "c"]);
    promise(&mut net, "b", "y@b", 3, T0 - 2 * TTL);
    promise(&mut net, "c", "y@b", 3, T0 - 2 * TTL);
    let id = net.acquire("a", "job", "x@a");
    let first_wire = match &net.queue[0].2 {
        StateWire::LeaseReq { id, .. } => *id,
        other => panic!("{other:?}"),
    };
    // Strangers grant: ignored.
    for s in ["x", "y"] {
        net.inject(
            s,
            "a",
            StateWire::LeaseVote {
                id: first_wire,
                vote: LeaseVote::Granted,
            },
        );
    }
    assert_eq!(net.reply("a", id), None);
    net.deliver_all();
    let l = lease_ok(net.reply("a", id));
    assert_eq!(l.token, 4);
    // A late grant for the first attempt changes nothing.
    net.inject(
        "b",
        "a",
        StateWire::LeaseVote {
            id: first_wire,
            vote: LeaseVote::Granted,
        },
    );
    assert_eq!(net.replies_to("a", id).len(), 1);
}

#[test]
fn release_ends_the_promise_here_and_tells_every_other_member() {
    let mut net = Net::new(&["a", "b", "c"]);
    let id = net.acquire("a", "job", "x@a");
    net.deliver_all();
    let l = lease_ok(net.reply("a", id));
    let now = net.now + 10;
    let a = net.node("a");
    let (rid, ready) = a
        .coord
        .release_lease(now, "job", "x@a", l.token, &mut a.replica);
    assert!(ready.persist.leases.contains("job"));
    assert_eq!(ready.messages.len(), 2);
    net.absorb("a", ready);
    assert_eq!(net.reply("a", rid), Some(Reply::Released(Ok(true))));
    net.now = now;
    net.deliver_all();
    // Free again at once for someone else, with a higher token.
    let id = net.acquire("b", "job", "y@b");
    net.deliver_all();
    assert_eq!(lease_ok(net.reply("b", id)).token, 2);
}

// ------------------------------------------------------ gossip and timers

#[test]
fn start_sets_the_gossip_and_purge_timers() {
    let c = Coordinator::new("a", CoordinatorConfig::default(), T0);
    let r = c.start();
    let timers: Vec<_> = r.timers.iter().map(|t| (t.timer, t.after_ms)).collect();
    assert_eq!(timers, [(Timer::Gossip, 500), (Timer::Purge, 1_000)]);
}

#[test]
fn a_gossip_round_goes_to_fanout_random_live_peers_and_sets_the_next_one() {
    let mut net = Net::new(&["a", "b", "c", "d", "e"]);
    net.set_members(
        "a",
        Some(vec![
            Member::live("a"),
            Member::live("b"),
            Member::live("c"),
            Member::live("d"),
            Member::unreachable("e"),
        ]),
    );
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let now = net.now;
        let a = net.nodes.get_mut("a").expect("a");
        let ready = a
            .coord
            .on_timer(now, Timer::Gossip, &mut a.replica, &mut net.rng);
        assert!(ready.gossip_round);
        assert_eq!(ready.messages.len(), 2, "fanout 2");
        assert!(ready
            .messages
            .iter()
            .all(|m| matches!(m.msg, StateWire::Gossip(_))));
        let to: BTreeSet<&str> = ready.messages.iter().map(|m| m.to.as_str()).collect();
        assert_eq!(to.len(), 2, "two distinct peers");
        seen.extend(to.iter().map(|s| s.to_string()));
        assert_eq!(ready.timers[0].timer, Timer::Gossip);
        assert_eq!(ready.timers[0].after_ms, 500);
        net.absorb("a", ready);
    }
    assert_eq!(
        seen,
        names(&["b", "c", "d"]).into_iter().collect(),
        "random over every live peer, never e or a"
    );
    // Without a view, or alone: no round, but the next one is set.
    net.set_members("a", None);
    let now = net.now;
    let a = net.nodes.get_mut("a").expect("a");
    let ready = a
        .coord
        .on_timer(now, Timer::Gossip, &mut a.replica, &mut net.rng);
    assert!(!ready.gossip_round && ready.messages.is_empty());
    assert_eq!(ready.timers.len(), 1);
    net.absorb("a", ready);
}

#[test]
fn gossip_repairs_what_a_replica_missed() {
    let mut net = Net::new(&["a", "b"]);
    let id = net.write("a", "k", put("v"), Consistency::Local);
    write_ok(net.reply("a", id));
    net.queue.clear(); // the eager push is lost
    assert!(net.value("b", "k").is_none());
    let a = net.nodes.get_mut("a").expect("a");
    let ready = a.coord.gossip_tick(&a.replica, &mut net.rng);
    net.absorb("a", ready);
    net.deliver_all();
    assert_eq!(net.value("b", "k"), Some(View::Lww(Some("\"v\"".into()))));
}

#[test]
fn purge_turns_long_expired_entries_into_tombstones_and_sets_the_next_purge() {
    let mut net = Net::new(&["a"]);
    let id = net.write_req(
        "a",
        WriteRequest {
            plugin: "alpha".into(),
            by: String::new(),
            key: "k".into(),
            op: put("v"),
            access: None,
            ttl_ms: Some(100),
            kind: None,
            consistency: Consistency::Local,
            timeout_ms: TIMEOUT,
        },
    );
    write_ok(net.reply("a", id));
    let later = net.now + 100 + 60_000 + 1;
    let a = net.node("a");
    let ready = a.coord.purge_tick(later, &mut a.replica);
    assert_eq!(ready.events.len(), 1);
    assert!(ready.persist.keys.contains("k"));
    assert_eq!(ready.timers[0].timer, Timer::Purge);
    net.absorb("a", ready);
}

#[test]
fn a_restarted_coordinator_does_not_reuse_wire_ids() {
    let mut net = Net::new(&["a", "b", "c"]);
    net.write("a", "k", put("v"), Consistency::Majority);
    let first = match &net.queue[0].2 {
        StateWire::Write { id, .. } => *id,
        other => panic!("{other:?}"),
    };
    net.queue.clear();
    // A restart one millisecond later.
    let mut c = Coordinator::new("a", CoordinatorConfig::default(), T0 + 1);
    c.set_members(Some(live(&["a", "b", "c"])));
    let a = net.node("a");
    let (_, ready) = c.write(
        T0 + 1,
        WriteRequest {
            plugin: "alpha".into(),
            by: String::new(),
            key: "k".into(),
            op: put("w"),
            access: None,
            ttl_ms: None,
            kind: None,
            consistency: Consistency::Majority,
            timeout_ms: TIMEOUT,
        },
        &mut a.replica,
    );
    let second = match &ready.messages[0].msg {
        StateWire::Write { id, .. } => *id,
        other => panic!("{other:?}"),
    };
    assert!(second > first, "{second} after {first}");
    net.absorb("a", ready);
}

// ------------------------------------------------------------ the wire

/// `StateWire` as `plexus-node` defined it before it moved here: the moved
/// type must encode to the same bytes (no protocol bump needed).
mod former {
    use plexus_state::{EntryState, Gen, GossipMsg, LeaseRequest, LeaseVote, Version};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum StateWire {
        Gossip(GossipMsg),
        Write {
            id: u64,
            key: String,
            state: EntryState,
            gen: Gen,
            version: Version,
        },
        WriteAck {
            id: u64,
            ok: bool,
            reason: Option<String>,
        },
        ReadReq {
            id: u64,
            key: String,
        },
        ReadResp {
            id: u64,
            state: Option<EntryState>,
        },
        LeaseReq {
            id: u64,
            req: LeaseRequest,
        },
        LeaseVote {
            id: u64,
            vote: LeaseVote,
        },
        LeaseRelease {
            name: String,
            holder: String,
            token: u64,
        },
    }
}

#[test]
fn the_wire_encoding_is_the_one_plexus_node_used() {
    let mut net = Net::new(&["a", "b", "c"]);
    let id = net.write("a", "k", put("v"), Consistency::Local);
    write_ok(net.reply("a", id));
    let state = net.nodes["a"]
        .replica
        .store()
        .state("k")
        .cloned()
        .expect("state");
    let digest = net.nodes["a"].replica.store().gossip_digest();
    let req = LeaseRequest {
        name: "job".into(),
        holder: "x@a".into(),
        token: 3,
        ttl_ms: TTL,
    };
    let lease = Lease {
        name: "job".into(),
        holder: "y".into(),
        token: 2,
        expires_at_ms: T0,
    };
    let pairs = vec![
        (
            StateWire::Gossip(digest.clone()),
            former::StateWire::Gossip(digest),
        ),
        (
            StateWire::Write {
                id: 1 << 60,
                key: "k".into(),
                state: state.clone(),
                gen: state.gen,
                version: state.version.clone(),
            },
            former::StateWire::Write {
                id: 1 << 60,
                key: "k".into(),
                state: state.clone(),
                gen: state.gen,
                version: state.version.clone(),
            },
        ),
        (
            StateWire::WriteAck {
                id: 7,
                ok: false,
                reason: Some("no".into()),
            },
            former::StateWire::WriteAck {
                id: 7,
                ok: false,
                reason: Some("no".into()),
            },
        ),
        (
            StateWire::ReadReq {
                id: 8,
                key: "k".into(),
            },
            former::StateWire::ReadReq {
                id: 8,
                key: "k".into(),
            },
        ),
        (
            StateWire::ReadResp {
                id: 9,
                state: Some(state.clone()),
            },
            former::StateWire::ReadResp {
                id: 9,
                state: Some(state),
            },
        ),
        (
            StateWire::LeaseReq {
                id: 10,
                req: req.clone(),
            },
            former::StateWire::LeaseReq { id: 10, req },
        ),
        (
            StateWire::LeaseVote {
                id: 11,
                vote: LeaseVote::Refused {
                    current: Some(lease.clone()),
                },
            },
            former::StateWire::LeaseVote {
                id: 11,
                vote: LeaseVote::Refused {
                    current: Some(lease),
                },
            },
        ),
        (
            StateWire::LeaseRelease {
                name: "job".into(),
                holder: "x".into(),
                token: 4,
            },
            former::StateWire::LeaseRelease {
                name: "job".into(),
                holder: "x".into(),
                token: 4,
            },
        ),
    ];
    for (new, old) in pairs {
        let a = plexus_codec::encode_limited(&new, 1 << 20).expect("encode");
        let b = plexus_codec::encode_limited(&old, 1 << 20).expect("encode");
        assert_eq!(a, b, "{new:?}");
        let back: StateWire = plexus_codec::decode_limited(&b, 1 << 20).expect("decode");
        assert_eq!(back, new);
    }
}

#[test]
fn malformed_wire_bytes_are_an_error_not_a_panic() {
    for bytes in [&[][..], &[200, 1, 2][..], &[1, 255, 255, 255, 255, 255][..]] {
        assert!(plexus_codec::decode_limited::<StateWire>(bytes, 1 << 20).is_err());
    }
}

// ------------------------------------------------------- property tests

mod props {
    use super::*;
    use proptest::prelude::*;

    /// Expected end of a counted request, per the model.
    #[derive(Debug, PartialEq)]
    enum End {
        Reached(Vec<String>),
        Failed(Vec<String>),
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Acks and refusals in any order, with duplicates and strangers:
        /// the request ends exactly when the distinct members that acked
        /// reach `n/2+1` (`majority`) or `n` (`all`) of all `n` members, or
        /// when too many refused, or at the deadline; once, naming who acked.
        #[test]
        fn a_quorum_is_counted_over_distinct_known_members(
            n in 1usize..=7,
            all in any::<bool>(),
            read in any::<bool>(),
            events in prop::collection::vec((0usize..9, prop::bool::weighted(0.75)), 0..24),
        ) {
            let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let mut net = Net::new(&refs);
            let level = if all { Consistency::All } else { Consistency::Majority };
            let required = if all { n } else { n / 2 + 1 };
            // A key at m0, so that a reached read has something to read, and
            // a state to break for a refusal.
            let id = net.write("m0", "k", put("v"), Consistency::Local);
            write_ok(net.reply("m0", id));
            net.queue.clear();
            let mut bad = net.nodes["m0"].replica.store().state("k").cloned().expect("state");
            if let plexus_state::Body::Live(l) = &mut bad.body {
                l.creations.clear();
            }
            let id = if read {
                net.read("m0", "k", level)
            } else {
                net.write("m0", "k", put("w"), level)
            };
            let wire = net.queue.first().map(|(_, _, m)| match m {
                StateWire::Write { id, .. } | StateWire::ReadReq { id, .. } => *id,
                other => panic!("{other:?}"),
            });
            let mut acked: BTreeSet<String> = BTreeSet::from(["m0".to_string()]);
            let mut refused: BTreeSet<String> = BTreeSet::new();
            let status = |acked: &BTreeSet<String>, refused: &BTreeSet<String>| {
                if acked.len() >= required {
                    Some(End::Reached(acked.iter().cloned().collect()))
                } else if n - refused.len() < required {
                    Some(End::Failed(acked.iter().cloned().collect()))
                } else {
                    None
                }
            };
            let mut end = status(&acked, &refused);
            let ended = |net: &Net| -> Option<End> {
                net.reply("m0", id).map(|r| match r {
                    Reply::Write(Ok(w)) => End::Reached(w.acked_by),
                    Reply::Read(Ok(x)) => End::Reached(x.acked_by),
                    Reply::Write(Err(RequestError::NotConfirmed { acked_by, .. }))
                    | Reply::Read(Err(RequestError::NotConfirmed { acked_by, .. })) => End::Failed(acked_by),
                    other => panic!("{other:?}"),
                })
            };
            prop_assert_eq!(ended(&net), end.as_ref().map(|e| match e {
                End::Reached(a) => End::Reached(a.clone()),
                End::Failed(a) => End::Failed(a.clone()),
            }));
            for (who, ok) in events {
                let Some(wire) = wire else { break };
                let from = if who < n { names[who].clone() } else { ["x", "y"][who % 2].to_string() };
                let msg = match (read, ok) {
                    (false, ok) => StateWire::WriteAck { id: wire, ok, reason: None },
                    (true, true) => StateWire::ReadResp { id: wire, state: None },
                    (true, false) => StateWire::ReadResp { id: wire, state: Some(bad.clone()) },
                };
                net.inject(&from, "m0", msg);
                if end.is_none() && who < n {
                    if ok {
                        if !refused.contains(&from) {
                            acked.insert(from);
                        }
                    } else if !acked.contains(&from) {
                        refused.insert(from);
                    }
                    end = status(&acked, &refused);
                }
                let now = ended(&net);
                prop_assert_eq!(now.is_some(), end.is_some());
                if let (Some(got), Some(want)) = (now, end.as_ref()) {
                    match (got, want) {
                        (End::Reached(g), End::Reached(w)) | (End::Failed(g), End::Failed(w)) => prop_assert_eq!(&g, w),
                        (g, w) => prop_assert!(false, "{:?} vs {:?}", g, w),
                    }
                }
            }
            net.expire("m0", id);
            let got = ended(&net).expect("answered by the deadline");
            let want = end.unwrap_or(End::Failed(acked.iter().cloned().collect()));
            prop_assert_eq!(got, want);
            prop_assert_eq!(net.node("m0").coord.pending_len(), 0);
        }

        /// A majority write and a majority read always share a member: when
        /// both succeed, whichever members answered, the read sees the write.
        #[test]
        fn a_majority_read_sees_a_majority_write(
            n in 3usize..=7,
            writer in 0usize..7,
            reader in 0usize..7,
            wsub in prop::collection::vec(any::<bool>(), 7),
            rsub in prop::collection::vec(any::<bool>(), 7),
        ) {
            let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let (w, r) = (&names[writer % n], &names[reader % n]);
            let maj = n / 2 + 1;
            let mut net = Net::new(&refs);
            // "old" everywhere.
            let id = net.write("m0", "k", put("old"), Consistency::Local);
            write_ok(net.reply("m0", id));
            net.deliver_all();
            // "new" at majority, reaching the members picked by `wsub`.
            let wid = net.write(w, "k", put("new"), Consistency::Majority);
            let reach: BTreeSet<String> = (0..n).filter(|i| wsub[*i]).map(|i| names[i].clone()).collect();
            net.deliver(|f, t, _| (f == w && reach.contains(t)) || (t == w && reach.contains(f)));
            net.queue.clear();
            net.expire(w, wid);
            let wrote = matches!(net.reply(w, wid), Some(Reply::Write(Ok(_))));
            let held = 1 + reach.iter().filter(|m| *m != w).count();
            prop_assert_eq!(wrote, held >= maj);
            // A majority read at `r`, answered by the members picked by `rsub`.
            let rid = net.read(r, "k", Consistency::Majority);
            let answer: BTreeSet<String> = (0..n).filter(|i| rsub[*i]).map(|i| names[i].clone()).collect();
            net.deliver(|f, t, _| (f == r && answer.contains(t)) || (t == r && answer.contains(f)));
            net.queue.clear();
            net.expire(r, rid);
            let answered = 1 + answer.iter().filter(|m| *m != r).count();
            match net.reply(r, rid) {
                Some(Reply::Read(Ok(x))) => {
                    prop_assert!(answered >= maj);
                    if wrote {
                        prop_assert_eq!(x.view, View::Lww(Some("\"new\"".into())));
                    }
                }
                Some(Reply::Read(Err(RequestError::NotConfirmed { .. }))) => prop_assert!(answered < maj),
                other => prop_assert!(false, "{:?}", other),
            }
        }

        /// Several nodes race for one lease while messages are delayed,
        /// reordered and lost and time passes (one clock for all): tokens
        /// name one holder each, and two holders' leases never overlap in
        /// time (from the grant to `expires_at_ms`).
        #[test]
        fn concurrent_lease_requests_never_overlap(
            n in 3usize..=5,
            steps in prop::collection::vec((0u8..20, 0usize..64, 0u64..4_000), 1..250),
        ) {
            let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let mut net = Net::new(&refs);
            // (node, request, deadline)
            let mut asked: Vec<(String, ReqId, u64)> = vec![];
            // (granted at, lease)
            let mut grants: Vec<(u64, Lease)> = vec![];
            let mut seen = 0;
            for (what, pick, dt) in steps {
                match what {
                    // A node asks for the lease, for its own holder.
                    0..=1 => {
                        let p = names[pick % n].clone();
                        let id = net.acquire(&p, "job", &format!("h-{p}"));
                        asked.push((p, id, net.now + TIMEOUT));
                    }
                    // Deliver one message.
                    2..=14 if !net.queue.is_empty() => {
                        let (f, t, m) = net.queue.remove(pick % net.queue.len());
                        net.inject(&f, &t, m);
                    }
                    // Lose one message.
                    15..=16 if !net.queue.is_empty() => {
                        net.queue.remove(pick % net.queue.len());
                    }
                    // Time passes; deadlines fire.
                    _ => {
                        net.now += dt;
                        for (p, id, deadline) in asked.clone() {
                            let set = net.timers.iter().any(|(m, t, _)| *m == p && *t == Timer::Expire(id));
                            if set && net.reply(&p, id).is_none() && net.now >= deadline {
                                net.expire(&p, id);
                            }
                        }
                    }
                }
                for (_, _, r) in &net.replies[seen..] {
                    if let Reply::Lease(Ok(l)) = r {
                        grants.push((net.now, l.clone()));
                    }
                }
                seen = net.replies.len();
            }
            for (i, (t1, a)) in grants.iter().enumerate() {
                for (t2, b) in &grants[i + 1..] {
                    if a.token == b.token {
                        prop_assert_eq!(&a.holder, &b.holder, "one holder per token");
                    }
                    if a.holder != b.holder {
                        // [t1, a.expires) and [t2, b.expires) are disjoint.
                        let overlap = *t1 < b.expires_at_ms && *t2 < a.expires_at_ms;
                        prop_assert!(!overlap, "{:?} at {} and {:?} at {}", a, t1, b, t2);
                    }
                }
            }
        }
    }
}
