//! Access control on local operations and on remote deltas, audit of
//! refusals, and bad input.

mod common;

use common::{converge, deliver, stores};
use plexus_state::{
    Access, AuditQuery, DeltaOp, DeltaStatus, GossipMsg, Kind, LocalOp, Outcome, Source,
    StateError, Store, StoreConfig, ValueOp, View,
};

const NOW: u64 = 1_700_000_000_000;

fn denied(r: Result<impl std::fmt::Debug, StateError>) -> bool {
    matches!(r, Err(StateError::AccessDenied { .. }))
}

fn rejections(s: &Store, key: &str) -> Vec<String> {
    s.audit_query(&AuditQuery {
        key: Some(key.into()),
        accepted: Some(false),
        ..AuditQuery::default()
    })
    .into_iter()
    .map(|r| r.author)
    .collect()
}

#[test]
fn private_entries_are_owner_only_locally() {
    let mut s = stores(1);
    let s = &mut s[0];
    s.create("owner", "secret", Kind::Lww, Access::Private, None, NOW)
        .expect("create");
    s.put("owner", "secret", "\"s3\"", NOW)
        .expect("owner writes");
    assert_eq!(
        s.get("owner", "secret", NOW).expect("read"),
        Some(View::Lww(Some("\"s3\"".into())))
    );
    assert!(denied(s.get("evil", "secret", NOW)));
    assert!(denied(s.info("evil", "secret", NOW)));
    assert!(denied(s.put("evil", "secret", "\"x\"", NOW)));
    assert!(denied(s.delete("evil", "secret", NOW)));
    assert!(denied(s.apply_local(
        "evil",
        "secret",
        LocalOp::SetAccess(Access::Public),
        NOW
    )));
    assert!(!s.keys("evil", NOW).contains(&"secret".to_string()));
    assert!(s.keys("owner", NOW).contains(&"secret".to_string()));
    assert!(matches!(
        s.create("evil", "secret", Kind::Lww, Access::Public, None, NOW),
        Err(StateError::AlreadyExists(_))
    ));
    // Every refusal is audited with who, what, from which node.
    let recs = s.audit_query(&AuditQuery {
        plugin: Some("evil".into()),
        ..AuditQuery::default()
    });
    assert_eq!(recs.len(), 4);
    assert!(recs
        .iter()
        .all(|r| !r.outcome.is_accepted() && r.node == "n0" && r.source == Source::Local));
    assert_eq!(
        s.get("owner", "secret", NOW).expect("read"),
        Some(View::Lww(Some("\"s3\"".into())))
    );
}

#[test]
fn public_and_protected_rules() {
    let mut s = stores(1);
    let s = &mut s[0];
    s.create("owner", "pub", Kind::PnCounter, Access::Public, None, NOW)
        .expect("create");
    assert!(s.get("anyone", "pub", NOW).expect("public read").is_some());
    assert!(denied(s.incr("anyone", "pub", 1, NOW)));
    s.create(
        "owner",
        "prot",
        Kind::Set,
        Access::protected(["friend"]),
        None,
        NOW,
    )
    .expect("create");
    s.add("friend", "prot", "a", NOW)
        .expect("listed plugin writes");
    assert!(s
        .get("friend", "prot", NOW)
        .expect("listed plugin reads")
        .is_some());
    assert!(denied(s.get("other", "prot", NOW)));
    assert!(denied(s.add("other", "prot", "b", NOW)));
    // Listed plugins may write but not administer.
    assert!(denied(s.delete("friend", "prot", NOW)));
    assert!(denied(s.apply_local(
        "friend",
        "prot",
        LocalOp::SetExpiry(Some(NOW)),
        NOW
    )));
}

#[test]
fn events_are_only_readable_by_allowed_plugins() {
    let mut s = stores(1);
    let c = s[0]
        .create("owner", "secret", Kind::Lww, Access::Private, None, NOW)
        .expect("create");
    let ev = &c.events[0];
    assert_eq!(ev.topic(), "state/changes/secret");
    assert!(ev.readable_by("owner"));
    assert!(!ev.readable_by("evil"));
    let c = s[0].delete("owner", "secret", NOW + 1).expect("delete");
    assert!(c.events[0].readable_by("owner") && !c.events[0].readable_by("evil"));
}

/// A delta whose author has no right is rejected at every replica, audited,
/// and never merged; the honest delta with the same dot still applies.
#[test]
fn forged_remote_write_is_rejected_and_audited() {
    let mut s = stores(3);
    let c = s[0]
        .create("owner", "secret", Kind::Lww, Access::Private, None, NOW)
        .expect("create");
    deliver(&mut s[1], "n0", &c.deltas, NOW);
    deliver(&mut s[2], "n0", &c.deltas, NOW);

    // The owner writes on n2; a forger relabels that delta as evil's.
    let honest = s[2]
        .put("owner", "secret", "\"v1\"", NOW + 1)
        .expect("owner put")
        .deltas
        .remove(0);
    let mut forged = honest.clone();
    forged.author = "evil".into();
    let before = s[1].state("secret").cloned();
    let err = s[1]
        .apply_remote(forged.clone(), NOW + 2)
        .expect_err("forged write must be refused");
    assert!(
        matches!(err, StateError::AccessDenied { ref plugin, action: "write", .. } if plugin == "evil")
    );
    assert_eq!(s[1].state("secret").cloned(), before, "nothing merged");
    let recs = s[1].audit_query(&AuditQuery {
        key: Some("secret".into()),
        plugin: Some("evil".into()),
        ..AuditQuery::default()
    });
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].node, "n2");
    assert_eq!(recs[0].source, Source::Remote);
    assert_eq!(recs[0].op, "put");
    assert!(matches!(recs[0].outcome, Outcome::Rejected(_)));

    // Through the gossip path too.
    let out = s[0].handle_gossip(
        "n2",
        GossipMsg::Items(vec![plexus_state::SyncItem::Delta(forged)]),
        NOW + 2,
        1 << 20,
    );
    assert_eq!(out.rejected.len(), 1);
    assert!(out.events.is_empty());

    // The honest delta (same dot) is accepted afterwards.
    let ok = s[1].apply_remote(honest, NOW + 3).expect("honest delta");
    assert_eq!(ok.status, DeltaStatus::Applied);
    assert_eq!(
        s[1].get("owner", "secret", NOW).expect("read"),
        Some(View::Lww(Some("\"v1\"".into())))
    );
}

#[test]
fn forged_admin_changes_are_rejected() {
    let mut s = stores(2);
    let c = s[0]
        .create(
            "owner",
            "k",
            Kind::Set,
            Access::protected(["friend"]),
            None,
            NOW,
        )
        .expect("create");
    deliver(&mut s[1], "n0", &c.deltas, NOW);
    // Owner-only changes made by the owner, relabelled.
    let mut scratch = s[1].clone();
    let del = scratch
        .delete("owner", "k", NOW + 1)
        .expect("delete")
        .deltas
        .remove(0);
    let mut scratch = s[1].clone();
    let acc = scratch
        .apply_local("owner", "k", LocalOp::SetAccess(Access::Public), NOW + 1)
        .expect("access")
        .deltas
        .remove(0);
    let mut scratch = s[1].clone();
    let exp = scratch
        .apply_local("owner", "k", LocalOp::SetExpiry(Some(NOW)), NOW + 1)
        .expect("expiry")
        .deltas
        .remove(0);
    for d in [del, acc, exp] {
        let mut forged = d;
        forged.author = "friend".into();
        assert!(
            denied(s[0].apply_remote(forged, NOW + 2)),
            "listed plugin may not administer"
        );
    }
    assert!(s[0].state("k").is_some_and(|st| !st.is_tombstone()));
    assert_eq!(rejections(&s[0], "k"), vec!["friend"; 3]);
}

/// A creation of a higher generation by a plugin that does not own the live
/// entry (and had not seen it end) would take the key over: refused.
#[test]
fn forged_takeover_is_rejected() {
    let mut s = stores(2);
    let c = s[0]
        .create("owner", "k", Kind::Lww, Access::Private, None, NOW)
        .expect("create");
    deliver(&mut s[1], "n0", &c.deltas, NOW);
    // evil creates k on a replica that never heard of it, one generation up.
    let mut other = Store::new("n9", StoreConfig::default());
    let mut d = other
        .create("evil", "k", Kind::Lww, Access::Public, None, NOW + 1)
        .expect("create")
        .deltas
        .remove(0);
    d.gen = s[0].state("k").expect("held").gen + 1;
    assert!(matches!(d.op, DeltaOp::Create { prev: None, .. }));
    assert!(matches!(
        s[0].apply_remote(d, NOW + 2),
        Err(StateError::AccessDenied {
            action: "replace",
            ..
        })
    ));
    assert_eq!(
        s[0].info("owner", "k", NOW)
            .expect("read")
            .expect("held")
            .owner,
        "owner"
    );

    // After the owner deletes it, anyone may create the key again.
    let del = s[0].delete("owner", "k", NOW + 3).expect("delete").deltas;
    deliver(&mut s[1], "n0", &del, NOW + 3);
    let re = s[1]
        .create("evil", "k", Kind::Lww, Access::Public, None, NOW + 4)
        .expect("re-create")
        .deltas;
    let out = s[0].apply_remote(re[0].clone(), NOW + 5).expect("accepted");
    assert_eq!(out.status, DeltaStatus::Applied);
    assert_eq!(
        s[0].info("evil", "k", NOW + 5)
            .expect("read")
            .expect("held")
            .owner,
        "evil"
    );
}

/// A forged operation carrying another node's dot is refused (it would
/// corrupt that node's counts).
#[test]
fn forged_dot_is_invalid() {
    let mut s = stores(2);
    let c = s[0]
        .create("p", "c", Kind::PnCounter, Access::Public, None, NOW)
        .expect("create");
    deliver(&mut s[1], "n0", &c.deltas, NOW);
    let mut d = s[1]
        .incr("p", "c", 5, NOW + 1)
        .expect("incr")
        .deltas
        .remove(0);
    if let DeltaOp::Value {
        op: ValueOp::Pn(ref mut step),
        ..
    } = d.op
    {
        step.dot.actor = "n0".into();
    }
    assert!(matches!(
        s[0].apply_remote(d, NOW + 2),
        Err(StateError::Invalid(_))
    ));
}

/// Access changes are judged deterministically: a write made under the
/// access level its author had seen is accepted everywhere, even by a
/// replica that already applied a concurrent revocation; a write whose
/// author had seen the revocation is refused everywhere.
#[test]
fn revocation_is_judged_the_same_everywhere() {
    let mut s = stores(3);
    let c = s[0]
        .create(
            "owner",
            "k",
            Kind::PnCounter,
            Access::protected(["friend"]),
            None,
            NOW,
        )
        .expect("create");
    for st in s.iter_mut().skip(1) {
        deliver(st, "n0", &c.deltas, NOW);
    }
    // Concurrently: the owner revokes on n0, the friend increments on n1.
    let revoke = s[0]
        .apply_local("owner", "k", LocalOp::SetAccess(Access::Private), NOW + 1)
        .expect("revoke")
        .deltas;
    let incr = s[1]
        .incr("friend", "k", 7, NOW + 1)
        .expect("friend incr")
        .deltas;
    // n2 sees the revocation first, then the concurrent write: accepted.
    deliver(&mut s[2], "n0", &revoke, NOW + 2);
    assert!(s[2].apply_remote(incr[0].clone(), NOW + 2).is_ok());
    deliver(&mut s[0], "n1", &incr, NOW + 2);
    deliver(&mut s[1], "n0", &revoke, NOW + 2);
    converge(&mut s, NOW + 3, 3);
    assert_eq!(
        s[0].get("owner", "k", NOW + 3).expect("read"),
        Some(View::Counter(7))
    );
    for st in &s {
        assert!(rejections(st, "k").is_empty());
    }

    // Now the friend has seen the revocation: it cannot write locally, and
    // a forged delta claiming so is refused by every replica.
    assert!(denied(s[1].incr("friend", "k", 1, NOW + 4)));
    let mut scratch = s[1].clone();
    let mut forged = scratch
        .incr("owner", "k", 1, NOW + 4)
        .expect("owner incr")
        .deltas
        .remove(0);
    forged.author = "friend".into();
    for (i, st) in s.iter_mut().enumerate() {
        if i != 1 {
            assert!(denied(st.apply_remote(forged.clone(), NOW + 5)));
        }
    }
}

/// Two plugins that create the same key concurrently: the earliest
/// creation wins ownership, and the loser's data is never shown under the
/// winner's access level.
#[test]
fn concurrent_creations_keep_data_apart() {
    let mut s = stores(2);
    let a = s[0]
        .create("alice", "k", Kind::Lww, Access::Private, None, NOW)
        .expect("create")
        .deltas;
    let a2 = s[0]
        .put("alice", "k", "\"alice-secret\"", NOW + 1)
        .expect("put")
        .deltas;
    let b = s[1]
        .create("bob", "k", Kind::Lww, Access::Public, None, NOW + 5)
        .expect("create")
        .deltas;
    let b2 = s[1]
        .put("bob", "k", "\"bob-data\"", NOW + 6)
        .expect("put")
        .deltas;
    deliver(&mut s[1], "n0", &[a, a2].concat(), NOW + 7);
    deliver(&mut s[0], "n1", &[b, b2].concat(), NOW + 7);
    for st in &s {
        let info = st.info("alice", "k", NOW + 8).expect("read").expect("held");
        assert_eq!(info.owner, "alice", "earliest creation wins");
        assert!(denied(st.get("bob", "k", NOW + 8)));
        assert_eq!(
            st.get("alice", "k", NOW + 8).expect("read"),
            Some(View::Lww(Some("\"alice-secret\"".into())))
        );
    }
    assert_eq!(s[0].digest(), s[1].digest());
}

#[test]
fn bad_input_is_a_clear_error_and_changes_nothing() {
    let cfg = StoreConfig {
        max_value_bytes: 16,
        max_key_bytes: 8,
        ..StoreConfig::default()
    };
    let mut s = Store::new("n0", cfg);
    assert!(matches!("bogus".parse::<Kind>(), Err(StateError::UnknownType(t)) if t == "bogus"));
    assert_eq!("or-set".parse::<Kind>().expect("known"), Kind::Set);
    s.put("p", "reg", "1", NOW).expect("put");
    let before = s.state("reg").cloned();
    let digest = s.digest();
    assert!(matches!(
        s.incr("p", "reg", 1, NOW),
        Err(StateError::TypeMismatch {
            expected: Kind::PnCounter,
            found: Kind::Lww,
            ..
        })
    ));
    assert!(matches!(
        s.add("p", "reg", "m", NOW),
        Err(StateError::TypeMismatch { .. })
    ));
    assert!(matches!(
        s.put("p", "reg", "x".repeat(17), NOW),
        Err(StateError::TooLarge { what: "value", .. })
    ));
    assert!(matches!(
        s.put("p", "much-too-long", "1", NOW),
        Err(StateError::TooLarge { what: "key", .. })
    ));
    assert!(matches!(
        s.put("p", "", "1", NOW),
        Err(StateError::Invalid(_))
    ));
    assert!(matches!(
        s.remove("p", "none", "m", NOW),
        Err(StateError::NotFound(_))
    ));
    s.apply_local(
        "p",
        "map",
        LocalOp::MapIncr {
            field: "f".into(),
            by: 1,
        },
        NOW,
    )
    .expect("map");
    assert!(matches!(
        s.apply_local(
            "p",
            "map",
            LocalOp::MapPut {
                field: "f".into(),
                value: "1".into()
            },
            NOW
        ),
        Err(StateError::Invalid(_))
    ));
    assert_eq!(s.state("reg").cloned(), before);
    assert_eq!(s.len(), 2);
    assert_ne!(s.digest(), digest, "only the map was added");
    // Malformed bytes from a peer are an error, not a panic.
    assert!(matches!(
        GossipMsg::decode(&[0xff, 0x00, 0x13], 1024),
        Err(StateError::Invalid(_))
    ));
    assert!(matches!(
        GossipMsg::decode(&[0u8; 2048], 1024),
        Err(StateError::TooLarge { .. })
    ));
}
