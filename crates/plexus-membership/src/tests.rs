//! The membership state machine driven by a tiny deterministic simulator:
//! virtual time, in-memory packets, and a switch to cut a node off.

use super::*;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

fn id(name: &str, generation: u64) -> NodeIdentity {
    NodeIdentity {
        name: name.into(),
        cluster_addr: format!("{name}:1"),
        api_addr: format!("{name}:2"),
        generation,
    }
}

enum Ev {
    Packet(String, Vec<u8>),
    Timer(String, Timer<NodeIdentity>),
}

struct Sim {
    now: Duration,
    nodes: BTreeMap<String, Membership>,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    events: BTreeMap<u64, Ev>,
    seq: u64,
    cut: BTreeSet<String>,
    log: Vec<(Duration, String, MemberEvent)>,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            now: Duration::ZERO,
            nodes: BTreeMap::new(),
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            seq: 0,
            cut: BTreeSet::new(),
            log: vec![],
        }
    }

    fn push(&mut self, after: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + after, self.seq)));
        self.events.insert(self.seq, ev);
    }

    fn apply(&mut self, from: &str, out: Output) {
        for (to, data) in out.send {
            if self.cut.contains(from) || self.cut.contains(&to.name) {
                continue;
            }
            self.push(Duration::from_millis(1), Ev::Packet(to.name, data));
        }
        for (after, t) in out.timers {
            self.push(after, Ev::Timer(from.to_string(), t));
        }
        for e in out.events {
            self.log.push((self.now, from.to_string(), e));
        }
    }

    fn add(&mut self, ident: NodeIdentity, seed: u64) {
        let m = Membership::new(ident.clone(), &MembershipConfig::default(), seed);
        self.nodes.insert(ident.name.clone(), m);
    }

    fn announce(&mut self, from: &str, to: NodeIdentity) {
        let out = self.nodes.get_mut(from).unwrap().announce(to).unwrap();
        self.apply(from, out);
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(Reverse((t, seq))) = self.queue.peek().copied() {
            if t > end {
                break;
            }
            self.queue.pop();
            self.now = t;
            let Some(ev) = self.events.remove(&seq) else {
                continue;
            };
            let (node, out) = match ev {
                Ev::Packet(to, data) => match self.nodes.get_mut(&to) {
                    Some(m) => (to.clone(), m.handle_data(&data).unwrap_or_default()),
                    None => continue,
                },
                Ev::Timer(at, t) => match self.nodes.get_mut(&at) {
                    Some(m) => (at.clone(), m.handle_timer(t).unwrap_or_default()),
                    None => continue,
                },
            };
            self.apply(&node, out);
        }
        self.now = end;
    }

    fn status(&self, observer: &str, of: &str) -> Option<MemberStatus> {
        self.nodes[observer].status_of(of)
    }
}

fn three() -> Sim {
    let mut s = Sim::new();
    s.add(id("a", 1), 1);
    s.add(id("b", 1), 2);
    s.add(id("c", 1), 3);
    s.announce("b", id("a", 1));
    s.announce("c", id("a", 1));
    s.run_for(Duration::from_secs(3));
    s
}

#[test]
fn nodes_join_through_a_seed_and_see_each_other() {
    let s = three();
    for obs in ["a", "b", "c"] {
        for of in ["a", "b", "c"] {
            assert_eq!(s.status(obs, of), Some(MemberStatus::Up), "{obs} sees {of}");
        }
    }
}

#[test]
fn a_silent_node_goes_unreachable_then_down_then_rejoins_with_a_new_generation() {
    let mut s = three();
    s.cut.insert("c".into());
    // Within a couple of probe periods c is suspected by someone.
    let mut saw_unreachable = false;
    for _ in 0..20 {
        s.run_for(Duration::from_millis(100));
        if s.status("a", "c") == Some(MemberStatus::Unreachable)
            || s.status("b", "c") == Some(MemberStatus::Unreachable)
        {
            saw_unreachable = true;
            break;
        }
    }
    assert!(saw_unreachable, "c never became unreachable");
    s.run_for(Duration::from_secs(5));
    assert_eq!(s.status("a", "c"), Some(MemberStatus::Down));
    assert_eq!(s.status("b", "c"), Some(MemberStatus::Down));
    assert!(s
        .log
        .iter()
        .any(|(_, n, e)| n == "a" && matches!(e, MemberEvent::Down(i) if i.name == "c")));

    // c restarts (new process, higher generation) and announces to a.
    s.cut.clear();
    s.nodes.remove("c");
    s.add(id("c", 2), 4);
    s.announce("c", id("a", 1));
    s.run_for(Duration::from_secs(3));
    assert_eq!(s.status("a", "c"), Some(MemberStatus::Up));
    assert_eq!(s.status("b", "c"), Some(MemberStatus::Up));
    let view = s.nodes["a"].view();
    let c = view.iter().find(|m| m.identity.name == "c").unwrap();
    assert_eq!(c.identity.generation, 2);
}

#[test]
fn garbage_packets_are_errors_not_panics() {
    let mut m = Membership::new(id("a", 1), &MembershipConfig::default(), 1);
    for junk in [&b""[..], b"\x00\x01\x02", &[0xffu8; 64][..]] {
        assert!(m.handle_data(junk).is_err());
    }
}

#[test]
fn codec_round_trips_members() {
    let mut buf = Vec::new();
    let member = Member::alive(id("z", 9));
    FocaCodec.encode_member(&member, &mut buf).unwrap();
    let back = FocaCodec.decode_member(&buf[..]).unwrap();
    assert_eq!(back, member);
}
