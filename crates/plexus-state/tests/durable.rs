//! Persistence in redb: round trip, crash after an acknowledged write,
//! node identity, lease promises, audit retention.

use plexus_state::{
    Access, AuditQuery, DurableConfig, DurableStore, Kind, LeaseRequest, LeaseVote, LocalOp,
    StateError, View,
};

const NOW: u64 = 1_700_000_000_000;

fn open(path: &std::path::Path) -> DurableStore {
    DurableStore::open(path, "n0", DurableConfig::default()).expect("open")
}

#[test]
fn round_trip_restores_data_and_audit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let (digest, version) = {
        let mut db = open(&path);
        db.apply_local(
            "owner",
            "cfg",
            LocalOp::Create {
                kind: Kind::Map,
                access: Access::Private,
                expires_at: None,
            },
            NOW,
        )
        .expect("create");
        db.apply_local(
            "owner",
            "cfg",
            LocalOp::MapPut {
                field: "mode".into(),
                value: "\"fast\"".into(),
            },
            NOW + 1,
        )
        .expect("map put");
        db.apply_local("owner", "hits", LocalOp::Incr(3), NOW + 2)
            .expect("incr");
        db.apply_local(
            "owner",
            "tags",
            LocalOp::Add(vec!["a".into(), "b".into()]),
            NOW + 3,
        )
        .expect("add");
        db.apply_local("owner", "tags", LocalOp::Remove(vec!["a".into()]), NOW + 4)
            .expect("remove");
        db.apply_local("owner", "gone", LocalOp::Put("1".into()), NOW + 5)
            .expect("put");
        db.apply_local("owner", "gone", LocalOp::Delete, NOW + 6)
            .expect("delete");
        assert!(db
            .apply_local(
                "evil",
                "cfg",
                LocalOp::MapPut {
                    field: "mode".into(),
                    value: "0".into()
                },
                NOW + 7
            )
            .is_err());
        let s = db.store().expect("store");
        (s.digest(), s.state("hits").expect("held").version.clone())
    }; // dropped: closed

    let mut db = open(&path);
    let s = db.store().expect("store");
    assert_eq!(s.digest(), digest);
    assert_eq!(s.state("hits").expect("held").version, version);
    assert_eq!(
        s.get("owner", "hits", NOW).expect("read"),
        Some(View::Counter(3))
    );
    assert_eq!(
        s.get("owner", "tags", NOW).expect("read"),
        Some(View::Set(["b".to_string()].into()))
    );
    assert!(s.state("gone").expect("tombstone kept").is_tombstone());
    assert!(matches!(
        s.get("evil", "cfg", NOW),
        Err(StateError::AccessDenied { .. })
    ));
    match s.get("owner", "cfg", NOW).expect("read") {
        Some(View::Map(m)) => assert_eq!(m.len(), 1),
        other => panic!("{other:?}"),
    }

    // The audit log is back, in memory and on disk, and queryable.
    let q = AuditQuery {
        key: Some("cfg".into()),
        ..AuditQuery::default()
    };
    let mem = s.audit_query(&q);
    let disk = db.audit_query(&q).expect("audit");
    assert_eq!(mem, disk);
    assert_eq!(disk.len(), 3);
    assert!(!disk[2].outcome.is_accepted() && disk[2].author == "evil");
    let by_time = db
        .audit_query(&AuditQuery {
            from_ms: Some(NOW + 2),
            to_ms: Some(NOW + 5),
            ..AuditQuery::default()
        })
        .expect("audit");
    assert_eq!(
        by_time.iter().map(|r| r.op.as_str()).collect::<Vec<_>>(),
        ["incr", "or-add", "or-remove"]
    );
    let newest = db
        .audit_query(&AuditQuery {
            limit: 2,
            ..AuditQuery::default()
        })
        .expect("audit");
    assert_eq!(newest.iter().map(|r| r.seq).collect::<Vec<_>>(), [6, 7]);
    assert_eq!(
        newest,
        s.audit_query(&AuditQuery {
            limit: 2,
            ..AuditQuery::default()
        })
    );
    let by_plugin = db
        .audit_query(&AuditQuery {
            plugin: Some("evil".into()),
            ..AuditQuery::default()
        })
        .expect("audit");
    assert_eq!(by_plugin.len(), 1);
    assert_eq!(db.audit_len().expect("len"), 8);

    // New changes continue the node's dot counters and the audit sequence.
    let seq_before = s.audit().next_seq();
    let c = db
        .apply_local("owner", "hits", LocalOp::Incr(1), NOW + 10)
        .expect("incr");
    assert_eq!(c.deltas[0].counter, 3);
    assert_eq!(
        db.store().expect("store").audit().next_seq(),
        seq_before + 1
    );
}

#[test]
fn another_node_cannot_open_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    drop(open(&path));
    assert!(matches!(
        DurableStore::open(&path, "n1", DurableConfig::default()),
        Err(StateError::Invalid(_))
    ));
    drop(open(&path));
}

#[test]
fn garbage_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    std::fs::write(&path, b"this is not a redb file at all, not even close").expect("write");
    assert!(matches!(
        DurableStore::open(&path, "n0", DurableConfig::default()),
        Err(StateError::Storage(_))
    ));
}

#[test]
fn lease_promises_survive_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let req = |holder: &str, token| LeaseRequest {
        name: "job".into(),
        holder: holder.into(),
        token,
        ttl_ms: 10_000,
    };
    {
        let mut db = open(&path);
        assert_eq!(
            db.lease_vote(&req("a", 1), NOW).expect("vote"),
            LeaseVote::Granted
        );
    }
    let mut db = open(&path);
    assert_eq!(
        db.leases()
            .expect("leases")
            .get("job")
            .expect("kept")
            .holder,
        "a"
    );
    assert!(matches!(
        db.lease_vote(&req("b", 2), NOW + 1).expect("vote"),
        LeaseVote::Refused { .. }
    ));
    assert!(db.lease_release("job", "a", 1, NOW + 2).expect("release"));
    assert_eq!(
        db.lease_vote(&req("b", 2), NOW + 3).expect("vote"),
        LeaseVote::Granted
    );
}

#[test]
fn audit_retention_bounds_the_disk_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let cfg = DurableConfig {
        audit_retention: 5,
        ..DurableConfig::default()
    };
    let mut db = DurableStore::open(&path, "n0", cfg.clone()).expect("open");
    for i in 0..20 {
        db.apply_local("p", "c", LocalOp::Incr(1), NOW + i)
            .expect("incr");
    }
    assert_eq!(db.audit_len().expect("len"), 5);
    drop(db);
    let db = DurableStore::open(&path, "n0", cfg).expect("open");
    let recs = db.audit_query(&AuditQuery::default()).expect("audit");
    assert_eq!(
        recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [15, 16, 17, 18, 19]
    );
    assert_eq!(
        db.store().expect("store").get("p", "c", NOW).expect("read"),
        Some(View::Counter(20))
    );
}

const CHILD_ENV: &str = "PLEXUS_STATE_CRASH_CHILD";

/// Child half of `acknowledged_write_survives_abort`: writes, reports each
/// acknowledged write on stdout, then dies without any cleanup.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut db = DurableStore::open(&path, "n0", DurableConfig::default()).expect("open");
    for i in 0..50u64 {
        db.apply_local("p", &format!("k{i}"), LocalOp::Put(format!("{i}")), NOW + i)
            .expect("put");
        println!("ACK k{i}");
        std::io::Write::flush(&mut std::io::stdout()).expect("flush");
    }
    std::process::abort();
}

#[test]
fn acknowledged_write_survives_abort() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .output()
        .expect("run child");
    assert!(!out.status.success(), "the child aborts");
    let acked: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.find("ACK ").map(|i| l[i + 4..].trim().to_string()))
        .collect();
    assert_eq!(
        acked.len(),
        50,
        "child output: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = open(&path);
    let s = db.store().expect("store");
    for key in &acked {
        assert!(
            s.get("p", key, NOW).expect("read").is_some(),
            "acknowledged {key} lost"
        );
    }
    assert_eq!(db.audit_len().expect("len"), 50);
}

/// A coordinator changes the replica in memory (`replica_mut`); only
/// `commit` makes the change durable.
#[test]
fn changes_made_through_the_replica_are_durable_after_commit_only() {
    use plexus_state::{
        Consistency, Coordinator, CoordinatorConfig, LeaseAcquireRequest, Member, WriteRequest,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let write = |key: &str| WriteRequest {
        plugin: "p".into(),
        by: String::new(),
        key: key.into(),
        op: LocalOp::Incr(1),
        access: None,
        ttl_ms: None,
        kind: None,
        consistency: Consistency::Local,
        timeout_ms: 1_000,
    };
    {
        let mut db = open(&path);
        let mut c = Coordinator::new("n0", CoordinatorConfig::default(), NOW);
        c.set_members(Some(vec![Member::live("n0")]));
        let (_, ready) = c.write(NOW, write("kept"), db.replica_mut().expect("replica"));
        assert!(ready.persist.keys.contains("kept"));
        let lease = LeaseAcquireRequest {
            name: "job".into(),
            holder: "h".into(),
            ttl_ms: 60_000,
            timeout_ms: 1_000,
        };
        let (_, ready) = c.acquire_lease(NOW, lease, db.replica_mut().expect("replica"));
        assert!(ready.persist.leases.contains("job"));
        db.commit().expect("commit");
        assert!(db.replica_mut().expect("replica").unpersisted().is_empty());
        // Changed but never committed: lost with the process.
        let (_, ready) = c.write(NOW, write("lost"), db.replica_mut().expect("replica"));
        assert!(ready.persist.keys.contains("lost"));
    }
    let db = open(&path);
    let s = db.store().expect("store");
    assert_eq!(
        s.get("p", "kept", NOW).expect("get"),
        Some(View::Counter(1))
    );
    assert_eq!(s.get("p", "lost", NOW).expect("get"), None);
    assert_eq!(
        db.leases().expect("leases").get("job").map(|l| l.token),
        Some(1)
    );
}
