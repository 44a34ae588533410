//! Extension: owner-only compare-and-expire, quorum, no resurrection (DESIGN.md §3.3).

use std::time::{Duration, Instant};

use redlock_core::Error;

use crate::support::{cluster, gone_everywhere, redlock, redlock_with, stored_everywhere, values};

/// Extension moves the deadline to `T1' + ttl − drift` and resets the expiry on the nodes.
#[tokio::test]
async fn extend_moves_the_deadline_and_the_expiry() {
    let nodes = cluster(3);
    let redlock = redlock_with(&nodes, |b| b.ttl(Duration::from_secs(2)));
    let lock = redlock.lock("ext").await.unwrap();
    let before = lock.deadline();
    let invoked = Instant::now();
    let deadline = lock.extend_by(Duration::from_secs(8)).await.unwrap();
    assert!(deadline > before);
    assert_eq!(deadline, lock.deadline());
    let drift = Duration::from_millis(80 + 2);
    assert!(deadline >= invoked + Duration::from_secs(8) - drift);
    assert!(deadline <= Instant::now() + Duration::from_secs(8) - drift);
    let pttl = nodes[2]
        .query(&["PTTL", "redlock:ext"])
        .unwrap()
        .as_int()
        .unwrap();
    assert!(pttl > 7_000, "{pttl}");
    lock.release().await.unwrap();
}

/// Keys that vanished (expired) are never created again by an extension, and the extension
/// fails without a quorum, keeping the old deadline.
#[tokio::test]
async fn extend_never_recreates_a_missing_key() {
    let nodes = cluster(3);
    let redlock = redlock(&nodes);
    let lock = redlock.lock("gone").await.unwrap();
    let before = lock.deadline();
    // Let a straggling SET land first, so the deletions below are final.
    assert!(stored_everywhere(&nodes, "redlock:gone").await);
    nodes[0].query(&["DEL", "redlock:gone"]).unwrap();
    nodes[1].query(&["DEL", "redlock:gone"]).unwrap();
    let err = lock.extend().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::NoQuorum {
                acquired: 1,
                quorum: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        lock.deadline(),
        before,
        "a failed extension keeps the old deadline"
    );
    assert_eq!(values(&nodes, "redlock:gone")[..2], [None, None]);
    lock.release().await.unwrap();
}

/// Once the deadline has passed, extension is refused outright: a lock reported lost is never
/// resurrected, even though its keys may still live a few ms on the nodes.
#[tokio::test]
async fn extend_after_the_deadline_fails_and_creates_nothing() {
    let nodes = cluster(3);
    let redlock = redlock_with(&nodes, |b| {
        b.ttl(Duration::from_millis(300))
            .node_timeout(Duration::from_millis(100))
    });
    let lock = redlock.lock("late").await.unwrap();
    lock.lost().await;
    let err = lock.extend().await.unwrap_err();
    assert!(matches!(err, Error::Expired { .. }), "{err:?}");
    assert!(!lock.is_valid());
    // Whatever was left expires by itself; nothing was extended.
    assert!(gone_everywhere(&nodes, "redlock:late").await);
    drop(lock);
}

/// A key overwritten by another owner is not extended.
#[tokio::test]
async fn extend_leaves_another_owners_key_alone() {
    let nodes = cluster(3);
    let redlock = redlock(&nodes);
    let lock = redlock.lock("theirs").await.unwrap();
    for node in nodes.iter() {
        node.query(&["SET", "redlock:theirs", "other", "PX", "5000"])
            .unwrap();
    }
    assert!(lock.extend_by(Duration::from_secs(60)).await.is_err());
    let pttl = nodes[0]
        .query(&["PTTL", "redlock:theirs"])
        .unwrap()
        .as_int()
        .unwrap();
    assert!(pttl <= 5000, "their expiry untouched: {pttl}");
    lock.release().await.unwrap();
    assert_eq!(
        values(&nodes, "redlock:theirs"),
        vec![Some("other".into()); 3]
    );
}

/// A failed extension to a shorter ttl shortens the deadline: the nodes that applied it now
/// expire sooner than the old deadline, so keeping the old one would report the lock as held
/// past its keys. Two nodes lost the key (10 s ttl); the third applies a 1 s ttl, too few for a
/// quorum.
#[tokio::test]
async fn a_failed_shorter_extension_shortens_the_deadline() {
    let nodes = cluster(3);
    let redlock = redlock(&nodes);
    let lock = redlock.lock("shorter").await.unwrap();
    assert!(stored_everywhere(&nodes, "redlock:shorter").await);
    assert!(lock.deadline() > Instant::now() + Duration::from_secs(5));
    nodes[0].query(&["DEL", "redlock:shorter"]).unwrap();
    nodes[1].query(&["DEL", "redlock:shorter"]).unwrap();
    let err = lock.extend_by(Duration::from_secs(1)).await.unwrap_err();
    assert!(
        matches!(err, Error::NoQuorum { acquired: 1, .. }),
        "{err:?}"
    );
    let pttl = nodes[2]
        .query(&["PTTL", "redlock:shorter"])
        .unwrap()
        .as_int()
        .unwrap();
    assert!(
        (0..=1_000).contains(&pttl),
        "the live node applied 1 s: {pttl}"
    );
    assert!(
        lock.deadline() <= Instant::now() + Duration::from_secs(1),
        "the deadline follows the shorter expiry"
    );
    lock.release().await.unwrap();
}
