//! Cancel safety: dropped acquisitions and dropped locks leave no keys behind.

use std::time::Duration;

use crate::support::{cluster, eventually, key_count, redlock};

/// 100 acquisitions dropped at random points (before, during and after the SETs answered) leave
/// zero keys within a short bound, far below the 10 s ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_acquisitions_leave_no_keys() {
    let nodes = cluster(3);
    let redlock = redlock(&nodes);
    redlock.connect().await.unwrap();
    let mut completed = 0;
    for i in 0..100u64 {
        let cut = Duration::from_micros(rand_below(i, 1500));
        let redlock = redlock.clone();
        let res = tokio::time::timeout(
            cut,
            async move { redlock.lock(&format!("cancel:{i}")).await },
        )
        .await;
        if let Ok(Ok(lock)) = res {
            completed += 1;
            drop(lock);
        }
    }
    let clean = eventually(Duration::from_secs(2), || key_count(&nodes) == 0).await;
    assert!(
        clean,
        "{} keys left; {completed} acquisitions completed",
        key_count(&nodes)
    );
}

/// A `Lock` dropped without `release` is released in the background.
#[tokio::test]
async fn dropped_lock_is_released_in_the_background() {
    let nodes = cluster(3);
    let redlock = redlock(&nodes);
    let lock = redlock.lock("dropped").await.unwrap();
    drop(lock);
    assert!(eventually(Duration::from_secs(2), || key_count(&nodes) == 0).await);
    assert!(redlock.try_lock("dropped").await.unwrap().is_some());
}

/// A cheap deterministic spread of cut points (no rand dev-dependency needed).
fn rand_below(i: u64, bound: u64) -> u64 {
    (i.wrapping_mul(2_654_435_761) ^ (i << 7)) % bound
}

/// Denied attempts dropped at random points, including while they undo their partial lock,
/// leave none of their keys behind: the votes stay with the drop guard until every node
/// confirmed its release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_denied_attempts_leave_no_partial_keys() {
    let nodes = cluster(3);
    let redlock = crate::support::redlock_with(&nodes, |b| {
        b.retry(redlock_core::Retry::new(
            50,
            Duration::from_micros(100),
            Duration::from_micros(200),
        ))
    });
    redlock.connect().await.unwrap();
    for i in 0..100u64 {
        let key = format!("redlock:denied:{i}");
        nodes[0].set(&key, "other").unwrap();
        nodes[1].set(&key, "other").unwrap();
        let cut = Duration::from_micros(200 + rand_below(i, 2000));
        let redlock = redlock.clone();
        let resource = format!("denied:{i}");
        let _ = tokio::time::timeout(cut, async move { redlock.lock(&resource).await }).await;
    }
    let clean = eventually(Duration::from_secs(3), || {
        nodes[2].keys("redlock:denied:*").unwrap().is_empty()
    })
    .await;
    assert!(
        clean,
        "partial keys left: {:?}",
        nodes[2].keys("redlock:denied:*").unwrap()
    );
}
