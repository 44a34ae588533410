//! Node failures: minority down or paused, majority down (DESIGN.md §3.2 rules 3–5, 7).

use std::time::{Duration, Instant};

use redlock_core::{Error, Retry};

use crate::support::{cluster, eventually, gone_everywhere, redlock, redlock_with, values};

/// With a minority of nodes killed, locks are still granted within a bounded time: the dead
/// nodes cost at most one node timeout each attempt, in parallel.
#[tokio::test]
async fn killed_minority_still_locks_within_a_bounded_time() {
    for (n, dead) in [(3, 1), (5, 2)] {
        let nodes = cluster(n);
        let redlock = redlock_with(&nodes, |b| b.node_timeout(Duration::from_millis(100)));
        for i in 0..dead {
            nodes[i].kill().unwrap();
        }
        for round in 0..5 {
            let lock = tokio::time::timeout(Duration::from_secs(2), redlock.lock("minority"))
                .await
                .expect("bounded")
                .unwrap_or_else(|e| panic!("{n} nodes, {dead} dead, round {round}: {e}"));
            lock.release().await.unwrap();
        }
    }
}

/// A paused (SIGSTOPped) minority behaves like a slow one: the lock is granted by the others,
/// and the SETs that reach the paused nodes when they resume are removed by the releases queued
/// behind them on the same connections (rule 7), leaving no orphan key.
#[tokio::test]
async fn paused_minority_leaves_no_orphan_key() {
    let nodes = cluster(5);
    let redlock = redlock_with(&nodes, |b| b.node_timeout(Duration::from_millis(100)));
    redlock.connect().await.unwrap();
    nodes[3].pause().unwrap();
    nodes[4].pause().unwrap();
    for i in 0..5 {
        let lock = redlock.lock(&format!("paused:{i}")).await.unwrap();
        lock.release().await.unwrap();
    }
    // A failed attempt too: someone else holds the key on two healthy nodes.
    nodes[0].set("redlock:paused:busy", "other").unwrap();
    nodes[1].set("redlock:paused:busy", "other").unwrap();
    let err = redlock.try_lock("paused:busy").await;
    assert!(
        matches!(err, Ok(None) | Err(Error::NoQuorum { .. })),
        "{err:?}"
    );
    nodes[3].resume().unwrap();
    nodes[4].resume().unwrap();
    let clean = eventually(Duration::from_secs(5), || {
        nodes
            .iter()
            .skip(3)
            .all(|n| n.keys("redlock:*").unwrap().is_empty())
    })
    .await;
    assert!(
        clean,
        "orphans: {:?} {:?}",
        nodes[3].keys("*").unwrap(),
        nodes[4].keys("*").unwrap()
    );
    assert_eq!(nodes[2].keys("redlock:*").unwrap(), Vec::<String>::new());
}

/// With a majority down the lock fails fast as unavailable, naming each failed node, and leaves
/// no key on the survivor.
#[tokio::test]
async fn majority_down_fails_fast_as_unavailable() {
    let nodes = cluster(3);
    let redlock = redlock_with(&nodes, |b| {
        b.node_timeout(Duration::from_millis(100))
            .retry(Retry::none())
    });
    nodes[0].kill().unwrap();
    nodes[1].kill().unwrap();
    let started = Instant::now();
    let err = redlock.lock("down").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "fails fast: {:?}",
        started.elapsed()
    );
    match &err {
        Error::NoQuorum {
            acquired,
            quorum,
            failures,
        } => {
            assert_eq!((*acquired, *quorum), (1, 2));
            assert_eq!(failures.len(), 2);
            let ports: Vec<String> = [0, 1]
                .iter()
                .map(|i| nodes[*i].port().to_string())
                .collect();
            for failure in failures {
                assert!(ports.iter().any(|p| failure.node.ends_with(p)), "{failure}");
            }
        }
        other => panic!("expected NoQuorum, got {other:?}"),
    }
    assert!(err.is_unavailable() && err.is_retryable() && !err.is_contended());
    assert_eq!(nodes[2].get("redlock:down").unwrap(), None);
    assert!(redlock.connect().await.is_err());
}

/// A majority frozen: every wait is bounded by the node timeout, so `lock` returns an error
/// instead of hanging, and `connect` too.
#[tokio::test]
async fn majority_paused_never_hangs() {
    let nodes = cluster(3);
    let redlock = redlock_with(&nodes, |b| {
        b.node_timeout(Duration::from_millis(100))
            .retry(Retry::jittered(2, Duration::from_millis(10)))
    });
    redlock.connect().await.unwrap();
    nodes[0].pause().unwrap();
    nodes[1].pause().unwrap();
    let result = tokio::time::timeout(Duration::from_secs(3), redlock.lock("frozen"))
        .await
        .expect("no hang");
    assert!(matches!(result, Err(Error::NoQuorum { .. })), "{result:?}");
    let connect = tokio::time::timeout(Duration::from_secs(3), redlock.connect())
        .await
        .expect("no hang");
    assert!(connect.is_err());
    nodes[0].resume().unwrap();
    nodes[1].resume().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || nodes
            .iter()
            .all(|n| n.keys("redlock:*").unwrap().is_empty()))
        .await,
        "late SETs released on resume"
    );
}

/// A node that answers a SET with an error (here out of memory: `maxmemory` 1 byte, no
/// eviction; a read-only replica listed by mistake answers the same way) is a failed vote, never
/// a granted one: the other two still make a quorum, and the lock works. With two such nodes
/// there is no quorum: a typed error that carries the nodes' answers, and the one SET that
/// applied is undone.
#[tokio::test]
async fn a_node_refusing_writes_is_a_failed_vote() {
    let nodes = cluster(3);
    let redlock = redlock(&nodes);
    let refuse_writes = |i: usize| {
        nodes[i]
            .query(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
            .unwrap();
        nodes[i]
            .query(&["CONFIG", "SET", "maxmemory", "1"])
            .unwrap();
    };
    refuse_writes(2);
    let lock = redlock
        .lock("refused")
        .await
        .expect("two nodes make a quorum");
    assert!(
        eventually(Duration::from_secs(2), || {
            let stored = values(&nodes, "redlock:refused");
            stored[0].is_some() && stored[0] == stored[1]
        })
        .await,
        "both healthy nodes hold the token"
    );
    assert_eq!(nodes[2].get("redlock:refused").unwrap(), None);
    lock.release().await.unwrap();
    assert!(gone_everywhere(&nodes, "redlock:refused").await);

    refuse_writes(1);
    let result = redlock.lock("refused").await;
    let Err(Error::NoQuorum {
        acquired, failures, ..
    }) = &result
    else {
        panic!("expected NoQuorum, got {result:?}");
    };
    assert!(*acquired <= 1, "{result:?}");
    assert!(
        failures.iter().any(|f| f.to_string().contains("OOM")),
        "the nodes' answers are reported: {failures:?}"
    );
    assert!(
        gone_everywhere(&nodes, "redlock:refused").await,
        "the SET on the healthy node is undone"
    );
}
