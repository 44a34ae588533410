//! Release: owner-only compare-and-delete (DESIGN.md §3.3).

use std::time::Duration;

use redlock_core::Redlock;
use redlock_tests::{Proxy, ProxyMode};

use crate::support::{
    cluster, eventually, gone_everywhere, redlock, redlock_with, stored_everywhere, values,
};

/// A lock whose keys expired and were taken by someone else must not delete their keys: the
/// release compares the stored value with our token on each node. With fewer than a quorum
/// deleted, `release` waits for every node, so the report is complete: three absent, none
/// pending.
#[tokio::test]
async fn release_leaves_a_key_held_by_another_token() {
    let nodes = cluster(3);
    let redlock = redlock(&nodes);
    let lock = redlock.lock("owned").await.unwrap();
    // Every SET has landed (the third may answer after `lock` returned) before the takeover.
    assert!(stored_everywhere(&nodes, "redlock:owned").await);
    for node in nodes.iter() {
        node.set("redlock:owned", "another-owner").unwrap();
    }
    let release = lock.release().await.unwrap();
    assert_eq!(release.released, 0);
    assert_eq!(release.absent, 3, "{release:?}");
    assert_eq!(release.pending, 0, "{release:?}");
    assert!(release.was_expired());
    assert_eq!(
        values(&nodes, "redlock:owned"),
        vec![Some("another-owner".into()); 3]
    );
}

/// A normal release deletes our key on every node and says so.
#[tokio::test]
async fn release_deletes_our_key_everywhere() {
    let nodes = cluster(3);
    let redlock = redlock(&nodes);
    let lock = redlock.lock("mine").await.unwrap();
    // A quorum answered before `lock` returned; the third SET lands a moment later.
    assert!(stored_everywhere(&nodes, "redlock:mine").await);
    let release = lock.release().await.unwrap();
    // A node whose SET reply was still in flight is released right behind it, in the background.
    assert_eq!(release.released + release.pending, 3, "{release:?}");
    assert_eq!(release.absent, 0);
    assert!(!release.was_expired());
    assert!(gone_everywhere(&nodes, "redlock:mine").await);
}

/// Scripts run by EVALSHA; after `SCRIPT FLUSH` (as after a restart) the NOSCRIPT answer makes
/// the client load the script and retry, so release and extend keep working.
#[tokio::test]
async fn release_and_extend_survive_script_flush() {
    let nodes = cluster(3);
    let redlock = redlock(&nodes);
    let lock = redlock.lock("flush").await.unwrap();
    lock.extend().await.unwrap();
    for node in nodes.iter() {
        assert_eq!(
            node.query(&["SCRIPT", "FLUSH"]).unwrap().as_str(),
            Some("OK")
        );
    }
    lock.extend_by(Duration::from_secs(20)).await.unwrap();
    let pttl = nodes[1]
        .query(&["PTTL", "redlock:flush"])
        .unwrap()
        .as_int()
        .unwrap();
    assert!(pttl > 10_000, "extended to 20 s: {pttl}");
    for node in nodes.iter() {
        node.query(&["SCRIPT", "FLUSH"]).unwrap();
    }
    let release = lock.release().await.unwrap();
    // `release` returns once a quorum answered; the last node finishes in the background.
    assert_eq!(release.released + release.pending, 3, "{release:?}");
    assert!(release.released >= 2, "{release:?}");
    assert!(gone_everywhere(&nodes, "redlock:flush").await);
}

/// A node restart kills its connections and empties its script cache (and, without persistence,
/// its keys). Extension still reaches a quorum, release works, and the next lock uses a fresh
/// connection to the restarted node.
#[tokio::test]
async fn release_and_extend_survive_a_node_restart() {
    let nodes = cluster(3);
    let redlock = redlock(&nodes);
    let lock = redlock.lock("restart").await.unwrap();
    // The lock was decided at quorum: let the third SET land before node 0 goes away.
    assert!(stored_everywhere(&nodes, "redlock:restart").await);
    nodes[0].restart().unwrap();
    lock.extend().await.expect("a quorum still holds our token");
    let release = lock.release().await.unwrap();
    assert_eq!(release.released, 2, "node 0 lost the key in its restart");
    // The dead connection is retired on first use; within a couple of locks node 0 is back.
    let mut node0_back = false;
    for _ in 0..3 {
        let lock = redlock.lock("restart").await.unwrap();
        node0_back = nodes[0].get("redlock:restart").unwrap().is_some();
        lock.extend().await.unwrap();
        lock.release().await.unwrap();
        if node0_back {
            break;
        }
    }
    assert!(node0_back, "the pool reconnected to the restarted node");
    assert_eq!(values(&nodes, "redlock:restart"), vec![None, None, None]);
}

/// `Debug` of a lock never shows its token.
#[tokio::test]
async fn debug_output_never_shows_the_token() {
    let nodes = cluster(3);
    let redlock = redlock(&nodes);
    let lock = redlock.lock("secret").await.unwrap();
    // A quorum stored the token before `lock` returned; the third node may not have yet.
    let token = values(&nodes, "redlock:secret")
        .into_iter()
        .flatten()
        .next()
        .unwrap();
    let shown = format!("{lock:?} {:?}", lock.handle());
    assert!(!shown.contains(&token), "{shown}");
    assert!(!shown.contains(&token[4..12]), "{shown}");
    lock.release().await.unwrap();
}

/// A held lock is released once a quorum deleted our token: a node that answers late (frozen
/// here, with a 2 s node timeout) does not hold up `release`, and is released in the background
/// as soon as it answers.
#[tokio::test]
async fn release_returns_at_quorum_and_finishes_the_last_node_in_the_background() {
    let nodes = cluster(3);
    let redlock = redlock_with(&nodes, |b| b.node_timeout(Duration::from_secs(2)));
    let lock = redlock.lock("late").await.unwrap();
    assert!(stored_everywhere(&nodes, "redlock:late").await);
    nodes[2].pause().unwrap();
    let release = tokio::time::timeout(Duration::from_millis(500), lock.release())
        .await
        .expect("release does not wait for the frozen node")
        .unwrap();
    assert_eq!(release.released, 2, "{release:?}");
    assert_eq!(release.pending, 1, "{release:?}");
    assert!(!release.was_expired());
    for node in nodes.iter().take(2) {
        assert_eq!(node.get("redlock:late").unwrap(), None);
    }
    nodes[2].resume().unwrap();
    assert!(
        eventually(Duration::from_secs(2), || nodes[2]
            .get("redlock:late")
            .unwrap()
            .is_none())
        .await,
        "the frozen node is released once it answers"
    );
}

/// A release that nobody waits for and whose first try fails is tried again in the background,
/// so the key goes long before its ttl. Node 2 sits behind a proxy that holds the release (the
/// node looks frozen), then drops it with the connection; the retry dials again and deletes the
/// key. Tried once only, the key would stay for its whole 10 s ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_release_whose_first_try_failed_is_tried_again() {
    let nodes = cluster(3);
    let proxy = released_while_node_2_is_frozen(&nodes, "again").await;
    // The first try is lost with its connection; new connections go through.
    proxy.reset_connections();
    proxy.heal();
    let gone = eventually(Duration::from_secs(3), || {
        nodes[2].get("redlock:again").unwrap().is_none()
    })
    .await;
    assert!(gone, "the retry deleted the key long before its ttl");
}

/// A background release that gets no answer is given up at its bound and tried again, three
/// tries in all, even while its connection stays open and silent: node 2 sits behind a proxy
/// that holds every byte (the node looks frozen) and forwards them in order once healed. Each
/// try reaching the proxy shows the one before was given up; a try waiting for ever would leave
/// a task behind for every lock released while a node hangs. Once healed, the node runs all
/// three tries and the key is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_release_that_gets_no_answer_is_given_up_and_tried_again() {
    let nodes = cluster(3);
    let proxy = released_while_node_2_is_frozen(&nodes, "silent").await;
    let first = proxy.blackholed_bytes();
    // The tries come 0.2 s + 0.2 s and 1 s + 0.2 s apart; the retries send the script's body,
    // so they are no smaller than the first try.
    let retried = eventually(Duration::from_secs(5), || {
        proxy.blackholed_bytes() >= 3 * first
    })
    .await;
    assert!(
        retried,
        "the background release was not tried three times: {} bytes held, the first try {first}",
        proxy.blackholed_bytes()
    );
    proxy.heal();
    let gone = eventually(Duration::from_secs(3), || {
        nodes[2].get("redlock:silent").unwrap().is_none()
    })
    .await;
    assert!(gone, "the node deleted the key once it answered");
}

/// Takes `resource` with node 2 behind a proxy (node timeout 200 ms, ttl 10 s), makes the proxy
/// hold every byte (node 2 looks frozen), releases the lock (at the quorum of the other two) and
/// waits until the release's first try on node 2 reached the proxy. Returns the proxy.
async fn released_while_node_2_is_frozen(nodes: &redlock_tests::Cluster, resource: &str) -> Proxy {
    let proxy = Proxy::start(nodes[2].port()).expect("proxy starts");
    let redlock = Redlock::builder()
        .nodes([nodes[0].url(), nodes[1].url(), proxy.url()])
        .ttl(Duration::from_secs(10))
        .node_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let lock = redlock.lock(resource).await.unwrap();
    assert!(stored_everywhere(nodes, &format!("redlock:{resource}")).await);
    proxy.set_mode(ProxyMode::Blackhole);
    let release = lock.release().await.unwrap();
    assert_eq!((release.released, release.pending), (2, 1), "{release:?}");
    let held = eventually(Duration::from_secs(2), || proxy.blackholed_bytes() > 0).await;
    assert!(held, "the release's first try reached the proxy");
    proxy
}

/// A lock taken on one runtime can be released on another once the first has shut down: the
/// release does not poll a timer of the dead runtime (tokio panics on that). The connections were
/// dialled on a third runtime that stays up, as a service's shared client's would be.
#[test]
fn a_lock_taken_on_a_runtime_that_shut_down_is_released_on_another() {
    let nodes = cluster(3);
    let redlock = redlock(&nodes);
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    };
    let connections = runtime();
    connections.block_on(redlock.connect()).unwrap();
    let first = runtime();
    let lock = first.block_on(async {
        let lock = redlock.lock("moved").await.unwrap();
        assert!(stored_everywhere(&nodes, "redlock:moved").await);
        lock
    });
    drop(first);
    let second = runtime();
    let release = second.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), lock.release())
            .await
            .expect("the release ends")
    });
    // It returns at the quorum; the last node's release finishes in the background.
    assert!(release.unwrap().released >= 2);
    assert!(second.block_on(gone_everywhere(&nodes, "redlock:moved")));
    drop(connections);
}
