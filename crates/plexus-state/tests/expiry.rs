//! Expiry (time passed in explicitly), purge to tombstones, tombstone
//! collection, re-creation after expiry.

mod common;

use common::{converge, deliver, stores};
use plexus_state::{
    Access, ChangeKind, DeltaStatus, Kind, LocalOp, StateError, Store, StoreConfig, View,
};

const NOW: u64 = 1_700_000_000_000;

fn cfg() -> StoreConfig {
    StoreConfig {
        expiry_grace_ms: 1_000,
        tombstone_ttl_ms: 10_000,
        epoch_ms: 10_000,
        ..StoreConfig::default()
    }
}

#[test]
fn expired_entries_vanish_then_purge_then_are_forgotten() {
    let mut s = Store::new("n0", cfg());
    s.create("p", "k", Kind::Lww, Access::Public, Some(NOW + 100), NOW)
        .expect("create");
    s.put("p", "k", "1", NOW + 1).expect("put");
    assert!(s.get("p", "k", NOW + 99).expect("read").is_some());
    assert_eq!(
        s.info("p", "k", NOW)
            .expect("read")
            .expect("held")
            .expires_at,
        Some(NOW + 100)
    );
    assert_eq!(
        s.get("p", "k", NOW + 100).expect("read"),
        None,
        "invisible from its expiry on"
    );
    assert!(s.keys("p", NOW + 100).is_empty());
    assert!(matches!(
        s.delete("p", "k", NOW + 100),
        Err(StateError::NotFound(_))
    ));

    // Within the grace period nothing is purged.
    assert!(s.purge(NOW + 100 + 999).is_empty());
    assert!(!s.state("k").expect("held").is_tombstone());
    let ev = s.purge(NOW + 1_100);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].kind, ChangeKind::Expired);
    assert!(ev[0].readable_by("p"));
    let tomb = s.state("k").expect("held");
    assert!(tomb.is_tombstone());
    // Stamped with the expiry time, so every replica purges alike.
    assert!(matches!(tomb.body, plexus_state::Body::Tombstone { at_ms } if at_ms == NOW + 100));

    // The tombstone is forgotten after its TTL.
    s.purge(NOW + 100 + 9_999);
    assert!(s.state("k").is_some());
    s.purge(NOW + 100 + 10_000);
    assert!(s.state("k").is_none());
    assert!(s.is_empty());
}

#[test]
fn owner_extends_or_clears_expiry() {
    let mut s = Store::new("n0", cfg());
    s.create("p", "k", Kind::Set, Access::Public, Some(NOW + 100), NOW)
        .expect("create");
    assert!(matches!(
        s.apply_local("q", "k", LocalOp::SetExpiry(None), NOW),
        Err(StateError::AccessDenied { .. })
    ));
    s.apply_local("p", "k", LocalOp::SetExpiry(Some(NOW + 500)), NOW + 50)
        .expect("extend");
    assert!(s.get("q", "k", NOW + 400).expect("read").is_some());
    s.apply_local("p", "k", LocalOp::SetExpiry(None), NOW + 60)
        .expect("clear");
    assert!(s.get("q", "k", NOW + 1_000_000).expect("read").is_some());
    assert!(s.purge(NOW + 1_000_000).is_empty());
}

/// Replicas purge independently but to the same state.
#[test]
fn replicas_purge_to_the_same_state() {
    let mut s: Vec<Store> = (0..2).map(|i| Store::new(format!("n{i}"), cfg())).collect();
    let c = s[0]
        .create(
            "p",
            "k",
            Kind::PnCounter,
            Access::Public,
            Some(NOW + 100),
            NOW,
        )
        .expect("create");
    deliver(&mut s[1], "n0", &c.deltas, NOW);
    s[0].purge(NOW + 5_000);
    assert_ne!(s[0].digest(), s[1].digest(), "one side purged");
    converge(&mut s, NOW + 5_000, 3);
    assert!(s[1].state("k").expect("held").is_tombstone());
    s[1].purge(NOW + 5_000);
    assert_eq!(s[0].digest(), s[1].digest());
}

/// Once an entry expired, another plugin may create the key again; a
/// replica that has not purged yet accepts the new generation because the
/// old one had expired when the creation was made.
#[test]
fn key_can_be_recreated_after_expiry() {
    let mut s: Vec<Store> = (0..2).map(|i| Store::new(format!("n{i}"), cfg())).collect();
    let c = s[0]
        .create(
            "alice",
            "k",
            Kind::Lww,
            Access::Private,
            Some(NOW + 100),
            NOW,
        )
        .expect("create");
    deliver(&mut s[1], "n0", &c.deltas, NOW);
    // bob cannot create it while it is alive...
    assert!(matches!(
        s[1].create("bob", "k", Kind::Lww, Access::Public, None, NOW + 50),
        Err(StateError::AlreadyExists(_))
    ));
    // ...but can after it expired (no purge anywhere yet).
    let re = s[1]
        .create("bob", "k", Kind::Lww, Access::Public, None, NOW + 200)
        .expect("re-create")
        .deltas;
    assert!(s[1].state("k").expect("held").gen > s[0].state("k").expect("held").gen);
    let out = s[0]
        .apply_remote(re[0].clone(), NOW + 200)
        .expect("accepted");
    assert_eq!(out.status, DeltaStatus::Applied);
    assert_eq!(
        s[0].info("bob", "k", NOW + 200)
            .expect("read")
            .expect("held")
            .owner,
        "bob"
    );
    assert_eq!(
        s[0].get("bob", "k", NOW + 200).expect("read"),
        Some(View::Lww(None))
    );
    // Late changes of the old generation are obsolete.
    let mut old = Store::new("n0", cfg());
    old.apply_remote(c.deltas[0].clone(), NOW).expect("create");
    let late = old.put("alice", "k", "1", NOW + 10).expect("put").deltas;
    assert_eq!(
        s[0].apply_remote(late[0].clone(), NOW + 300)
            .expect("ok")
            .status,
        DeltaStatus::Obsolete
    );
}

/// A key deleted and re-created after its tombstone was forgotten lands in
/// a later generation than any replica's old copy.
#[test]
fn recreation_after_tombstone_collection_wins() {
    let mut s = stores(2);
    let cfg = cfg();
    s[0] = Store::new("n0", cfg.clone());
    s[1] = Store::new("n1", cfg);
    let c = s[0]
        .create("p", "k", Kind::Lww, Access::Public, None, NOW)
        .expect("create");
    deliver(&mut s[1], "n0", &c.deltas, NOW);
    let d = s[0].delete("p", "k", NOW + 1).expect("delete");
    deliver(&mut s[1], "n0", &d.deltas, NOW + 1);
    s[0].purge(NOW + 20_000);
    assert!(s[0].state("k").is_none());
    // n1 still holds the tombstone (it has not purged).
    let re = s[0]
        .put("p", "k", "\"new\"", NOW + 20_001)
        .expect("put")
        .deltas;
    for d in re {
        s[1].apply_remote(d, NOW + 20_001).expect("accepted");
    }
    assert_eq!(
        s[1].get("p", "k", NOW + 20_001).expect("read"),
        Some(View::Lww(Some("\"new\"".into())))
    );
}
