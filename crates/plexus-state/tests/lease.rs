//! Leases: majority grants, expiry, renewal, release, partitions, fencing;
//! and the ack counting behind consistency levels.

use plexus_state::{
    AckStatus, AckTracker, Consistency, Fence, Lease, LeaseAcquire, LeaseProgress, LeaseTable,
    LeaseVote, StateError,
};

const NOW: u64 = 1_700_000_000_000;
const TTL: u64 = 10_000;

/// Ask the acceptors `reachable` (indices into `tables`) for a lease.
fn acquire(
    tables: &mut [LeaseTable],
    reachable: &[usize],
    holder: &str,
    now: u64,
) -> LeaseProgress {
    let proposer = reachable[0];
    let req = tables[proposer].request("job", holder, TTL, now);
    let mut acq = LeaseAcquire::new(req.clone(), tables.len(), now);
    let mut progress = LeaseProgress::Pending;
    for &i in reachable {
        let vote = tables[i].vote(&req, now);
        progress = acq.on_vote(&format!("n{i}"), vote);
    }
    if progress == LeaseProgress::Pending {
        progress = acq.time_out();
    }
    progress
}

fn granted(p: LeaseProgress) -> Lease {
    match p {
        LeaseProgress::Granted(l) => l,
        other => panic!("not granted: {other:?}"),
    }
}

#[test]
fn majority_grants_and_tokens_increase() {
    let mut t = vec![LeaseTable::new(); 3];
    let a = granted(acquire(&mut t, &[0, 1, 2], "a", NOW));
    assert_eq!(a.token, 1);
    assert_eq!(a.expires_at_ms, NOW + TTL);
    assert!(a.valid_at(NOW + TTL - 600, 500));
    assert!(!a.valid_at(NOW + TTL - 400, 500));
    // b is refused while a's lease runs.
    assert!(
        matches!(acquire(&mut t, &[1, 0, 2], "b", NOW + 1), LeaseProgress::Refused { current: Some(l) } if l.holder == "a")
    );
    // After it expires, b gets a higher token.
    let b = granted(acquire(&mut t, &[1, 0, 2], "b", NOW + TTL));
    assert!(b.token > a.token);
}

#[test]
fn renewal_keeps_the_token_and_release_frees_the_lease() {
    let mut t = vec![LeaseTable::new(); 3];
    let a = granted(acquire(&mut t, &[0, 1, 2], "a", NOW));
    let renewed = granted(acquire(&mut t, &[0, 1, 2], "a", NOW + 5_000));
    assert_eq!(renewed.token, a.token);
    assert_eq!(renewed.expires_at_ms, NOW + 5_000 + TTL);
    assert!(matches!(
        acquire(&mut t, &[2, 0, 1], "b", NOW + TTL + 1),
        LeaseProgress::Refused { .. }
    ));
    for table in t.iter_mut() {
        assert!(table.release("job", "a", a.token, NOW + 6_000));
    }
    let b = granted(acquire(&mut t, &[2, 0, 1], "b", NOW + 6_001));
    assert_eq!(b.token, a.token + 1);
}

/// Two proposers with the same token: at most one reaches a majority.
#[test]
fn competing_requests_cannot_both_win() {
    let mut t = vec![LeaseTable::new(); 5];
    let ra = t[0].request("job", "a", TTL, NOW);
    let rb = t[4].request("job", "b", TTL, NOW);
    assert_eq!(ra.token, rb.token);
    let mut acq_a = LeaseAcquire::new(ra.clone(), 5, NOW);
    let mut acq_b = LeaseAcquire::new(rb.clone(), 5, NOW);
    // Interleaved arrival: n0, n1 see a first; n2, n3, n4 see b first.
    for (i, table) in t.iter_mut().enumerate() {
        let (first, second) = if i < 2 { (&ra, &rb) } else { (&rb, &ra) };
        let v1 = table.vote(first, NOW);
        let v2 = table.vote(second, NOW);
        let (va, vb) = if i < 2 { (v1, v2) } else { (v2, v1) };
        acq_a.on_vote(&format!("n{i}"), va);
        acq_b.on_vote(&format!("n{i}"), vb);
    }
    assert!(matches!(acq_a.progress(), LeaseProgress::Refused { .. }));
    let b = granted(acq_b.progress());
    // The loser retries above every token it saw, once b's lease expired.
    let retry = acq_a.retry();
    assert!(retry.token > b.token);
    let mut acq = LeaseAcquire::new(retry.clone(), 5, NOW + TTL);
    for (i, table) in t.iter_mut().enumerate() {
        acq.on_vote(&format!("n{i}"), table.vote(&retry, NOW + TTL));
    }
    assert!(granted(acq.progress()).token > b.token);
}

/// Under partition: the minority side cannot grant; the majority side can
/// once the old lease expired, with a higher token, and the old holder's
/// late actions are fenced off.
#[test]
fn partition_minority_cannot_grant_and_stale_holder_is_fenced() {
    let mut t = vec![LeaseTable::new(); 5];
    let a = granted(acquire(&mut t, &[0, 1, 2, 3, 4], "a", NOW));
    let mut fence = Fence::new();
    fence.check("job", a.token).expect("a acts");

    // Partition {0,1} | {2,3,4}. a (on the minority side) cannot renew.
    assert!(matches!(
        acquire(&mut t, &[0, 1], "a", NOW + 5_000),
        LeaseProgress::Refused { .. }
    ));
    // Nor can anyone else there, even after expiry.
    assert!(matches!(
        acquire(&mut t, &[1, 0], "c", NOW + TTL + 1),
        LeaseProgress::Refused { .. }
    ));
    // The majority side waits for expiry, then grants b a higher token.
    assert!(matches!(
        acquire(&mut t, &[2, 3, 4], "b", NOW + 5_000),
        LeaseProgress::Refused { .. }
    ));
    let b = granted(acquire(&mut t, &[2, 3, 4], "b", NOW + TTL + 1));
    assert!(b.token > a.token);
    fence.check("job", b.token).expect("b acts");

    // a, paused across its expiry (GC pause, clock jump), acts late: fenced.
    let err = fence.check("job", a.token).expect_err("stale holder");
    assert!(
        matches!(err, StateError::Fenced { token, highest, .. } if token == a.token && highest == b.token)
    );
    assert_eq!(fence.highest("job"), Some(b.token));

    // Healed: a vote on a's stale token is refused everywhere.
    let stale = plexus_state::LeaseRequest {
        name: "job".into(),
        holder: "a".into(),
        token: a.token,
        ttl_ms: TTL,
    };
    for table in t.iter_mut().skip(2) {
        assert!(matches!(
            table.vote(&stale, NOW + TTL + 2),
            LeaseVote::Refused { .. }
        ));
    }
}

#[test]
fn ack_counting_for_consistency_levels() {
    assert_eq!(Consistency::Local.required(5), 1);
    assert_eq!(Consistency::Majority.required(5), 3);
    assert_eq!(Consistency::Majority.required(4), 3);
    assert_eq!(Consistency::All.required(5), 5);

    let mut m = AckTracker::new(Consistency::Majority, 5);
    assert_eq!(m.ack("n0"), AckStatus::Pending);
    assert_eq!(m.ack("n0"), AckStatus::Pending, "repeats count once");
    assert_eq!(m.ack("n1"), AckStatus::Pending);
    assert_eq!(m.ack("n2"), AckStatus::Reached);

    let mut m = AckTracker::new(Consistency::Majority, 5);
    m.ack("n0");
    m.refuse("n1");
    m.refuse("n2");
    assert_eq!(m.refuse("n3"), AckStatus::Failed, "only 2 nodes left");

    let mut all = AckTracker::new(Consistency::All, 3);
    all.ack("n0");
    all.ack("n1");
    assert_eq!(all.time_out(), AckStatus::Failed);

    let mut local = AckTracker::new(Consistency::Local, 3);
    assert_eq!(local.ack("n0"), AckStatus::Reached);
    assert_eq!(local.time_out(), AckStatus::Reached);
}
