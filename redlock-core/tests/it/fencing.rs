//! Fencing tokens: the two-phase quorum max-register (DESIGN.md §3.5).

use std::time::Duration;

use redlock_core::{LockOptions, Redlock, Retry};
use redlock_tests::Cluster;

use crate::support::{cluster, eventually, redlock_with, stored_everywhere};

fn fenced(nodes: &Cluster) -> Redlock {
    redlock_with(nodes, |b| b.fencing(true).retry(Retry::none()))
}

/// A fenced client whose scripts are loaded on every node, for [`lock_through`]: on a fresh
/// node a script's first call takes two trips (`EVALSHA`, `NOSCRIPT`, then `EVAL`), and a SET
/// that takes two trips can run after the `PING` meant to wait for it.
async fn fenced_and_warm(nodes: &Cluster) -> Redlock {
    let redlock = fenced(nodes);
    lock_through(nodes, &redlock, "warm-up", &[]).await;
    redlock
}

/// Locks `resource` through exactly the nodes not in `blocked`, by parking another owner's key
/// on the blocked ones for the duration of the attempt.
async fn lock_through(
    nodes: &Cluster,
    redlock: &Redlock,
    resource: &str,
    blocked: &[usize],
) -> u64 {
    let key = format!("redlock:{resource}");
    for &i in blocked {
        nodes[i].set(&key, "blocker").unwrap();
    }
    let lock = redlock.lock(resource).await.unwrap();
    let token = lock.fencing_token().expect("fenced").get();
    lock.release().await.unwrap();
    // The lock was decided at the quorum and released at the quorum, so its SETs to the blocked
    // nodes may not have run yet; one that runs after its blocker is gone sets our token there
    // (released behind it, but the next lock could find it first). A PING to every node, on the
    // connection that carried the SET, answers only after it.
    redlock.connect().await.unwrap();
    for &i in blocked {
        nodes[i].query(&["DEL", &key]).unwrap();
    }
    token
}

/// The counterexample that breaks "INCR everywhere, take the max of the majority": counters
/// 10,10,10,10,50; X locks through C,D,E, then Y through A,B,C. Naively X gets 51 and Y 12. The
/// max-register publishes X's token on C, so Y reads it there and gets a larger one.
#[tokio::test]
async fn fencing_survives_the_naive_incr_counterexample() {
    let nodes = cluster(5);
    for (i, value) in [10, 10, 10, 10, 50].iter().enumerate() {
        nodes[i]
            .set("redlock:acct:fence", &value.to_string())
            .unwrap();
    }
    let redlock = fenced_and_warm(&nodes).await;
    let x = lock_through(&nodes, &redlock, "acct", &[0, 1]).await;
    let y = lock_through(&nodes, &redlock, "acct", &[3, 4]).await;
    assert_eq!(x, 51);
    assert!(y > x, "y={y} must exceed x={x}");
}

/// Fencing tokens strictly increase across 50 holders whose majorities differ, starting from
/// skewed counters.
#[tokio::test]
async fn fencing_tokens_increase_across_fifty_holders_through_different_majorities() {
    let nodes = cluster(5);
    for (i, value) in [3, 0, 17, 5, 40].iter().enumerate() {
        nodes[i]
            .set("redlock:ledger:fence", &value.to_string())
            .unwrap();
    }
    let redlock = fenced_and_warm(&nodes).await;
    let minorities: Vec<Vec<usize>> = (0..5)
        .flat_map(|a| ((a + 1)..5).map(move |b| vec![a, b]))
        .collect();
    let mut last = 0;
    for holder in 0..50 {
        let blocked = &minorities[(holder * 7) % minorities.len()];
        let token = lock_through(&nodes, &redlock, "ledger", blocked).await;
        assert!(
            token > last,
            "holder {holder} through all but {blocked:?}: {token} <= {last}"
        );
        last = token;
    }
}

/// A clock jump on a majority (emulated by shortening the lock key's expiry on two of three
/// nodes) lets a second client take the lock while the first still believes it holds it: mutual
/// exclusion is gone, as the operational contract warns. The fencing tokens still order the
/// two, because the fence counters have no expiry for a jump to cut: the resource can reject the
/// first holder's writes.
#[tokio::test]
async fn a_clock_jump_on_a_majority_never_reorders_fencing_tokens() {
    let nodes = cluster(3);
    let (first, second) = (fenced(&nodes), fenced(&nodes));
    let held = first.lock("jump").await.unwrap();
    let stale = held.fencing_token().expect("fenced").get();
    assert!(stored_everywhere(&nodes, "redlock:jump").await);
    for node in [&nodes[0], &nodes[1]] {
        // Every key with a time to live jumps: the lock key, and only it.
        assert_eq!(node.jump_clock("redlock:jump*").unwrap(), 1);
    }
    let expired = eventually(Duration::from_secs(2), || {
        nodes[0].get("redlock:jump").unwrap().is_none()
            && nodes[1].get("redlock:jump").unwrap().is_none()
    })
    .await;
    assert!(expired, "the jump expired the key on a majority");
    let newer = second
        .lock("jump")
        .await
        .expect("the jump freed a majority");
    assert!(
        held.is_valid(),
        "the first holder still believes it holds the lock"
    );
    let token = newer.fencing_token().expect("fenced").get();
    assert!(
        token > stale,
        "the newer holder's token {token} after {stale}"
    );
    newer.release().await.unwrap();
    held.release().await.unwrap();
}

/// Fencing is opt-in: off by default, and can be turned on per lock.
#[tokio::test]
async fn fencing_is_opt_in_per_redlock_or_per_lock() {
    let nodes = cluster(3);
    let plain = redlock_with(&nodes, |b| b);
    let lock = plain.lock("opt").await.unwrap();
    assert_eq!(lock.fencing_token(), None);
    lock.release().await.unwrap();
    let lock = plain
        .lock_with(
            "opt",
            LockOptions::new().fencing(true).ttl(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    let first = lock.fencing_token().unwrap();
    lock.release().await.unwrap();
    let lock = plain
        .lock_with("opt", LockOptions::new().fencing(true))
        .await
        .unwrap();
    assert!(lock.fencing_token().unwrap() > first);
    assert!(lock.handle().fencing_token() == lock.fencing_token());
    lock.release().await.unwrap();
}
