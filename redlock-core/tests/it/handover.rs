//! The one-trip hand-over: a holder that the sequencer node told who is next names that waiter
//! to every node at its release, and the waiter holds the lock on their notices without sending
//! a SET anywhere (`handover` in the crate). Each `Redlock` here is its own client, as separate
//! processes are.

use std::time::Duration;

use redlock_core::{Lock, LockOptions, Redlock, Retry};

use crate::queue::{
    asking_every, deafen, in_line_soon, patient, queued, sequencer, taken_in_turn, wait_for,
};
use crate::support::{
    cluster, command_calls, eventually, gone_everywhere, held_everywhere, redlock_with,
};

type Waiting = tokio::task::JoinHandle<Result<Lock, redlock_core::Error>>;

/// A lock on `resource` handed over to its holder on the sequencer node while `successor`
/// waited behind it: the sequencer's notice named `successor` as next, so the holder's release
/// names it to every node. Returns the lock and the successor's pending `lock` call.
async fn held_with_a_successor(
    nodes: &redlock_tests::Cluster,
    resource: &str,
    successor: Redlock,
) -> (Lock, Waiting) {
    let key = format!("redlock:{resource}");
    let first = taken_in_turn(nodes, resource).await;
    // A 2 s node timeout: a claim of the holder's that meets the first holder's key (its release
    // has not reached that node yet) is asked again only after half a second, long after the
    // other claims answered, so the nodes that hold the holder's token are settled when read.
    let holder = wait_for(
        slow_to_fall_back(nodes, Duration::from_secs(5)),
        resource,
        LockOptions::new(),
    );
    assert!(in_line_soon(nodes, &key, 1).await);
    let next = wait_for(successor, resource, LockOptions::new());
    assert!(in_line_soon(nodes, &key, 2).await);
    first.release().await.unwrap();
    let held = holder.await.unwrap().expect("handed over in turn");
    (held, next)
}

/// A successor that asks again every `pause`, whose 2 s node timeout gives the notices of one
/// release half a second (a quarter of it) to arrive together before it falls back to claiming
/// the other nodes, even on a loaded machine: the one-trip hand-over is what the test sees.
fn slow_to_fall_back(nodes: &redlock_tests::Cluster, pause: Duration) -> Redlock {
    asking_every(nodes, Duration::from_secs(2), pause)
}

/// The nodes other than `key`'s sequencer node.
fn others<'a>(
    nodes: &'a redlock_tests::Cluster,
    key: &str,
) -> impl Iterator<Item = &'a redlock_tests::RedisNode> {
    let seq = usize::try_from(sequencer(key, 3)).unwrap();
    nodes
        .iter()
        .enumerate()
        .filter(move |(i, _)| *i != seq)
        .map(|(_, n)| n)
}

/// The release of a lock whose holder was told who is next hands the key over on every node
/// that holds the holder's token: each sets it to the successor's token (`PSETEX`) and tells the
/// successor, which holds the lock without a single command to the other nodes (their `SET` count does not move; a
/// successor that asked them would run `SET` there in its claim). Its 5 s pause shows it was
/// not polling.
#[tokio::test]
async fn a_release_hands_the_key_over_on_every_node_in_one_trip() {
    let nodes = cluster(3);
    let key = "redlock:relay";
    let successor = slow_to_fall_back(&nodes, Duration::from_secs(5));
    let (held, next) = held_with_a_successor(&nodes, "relay", successor).await;
    let seq = &nodes[usize::try_from(sequencer(key, 3)).unwrap()];
    let holder = seq.get(key).unwrap().expect("held");
    // The holder decided at the quorum: a node its claim reached too late does not hold it,
    // and nothing is handed over there.
    let held_there: Vec<bool> = others(&nodes, key)
        .map(|n| n.get(key).unwrap().as_deref() == Some(holder.as_str()))
        .collect();
    assert!(held_there.contains(&true), "the holder holds a quorum");
    let sets: Vec<i64> = others(&nodes, key)
        .map(|n| command_calls(n, "set"))
        .collect();
    assert!(others(&nodes, key).all(|n| command_calls(n, "psetex") == 0));
    held.release().await.unwrap();
    let lock = tokio::time::timeout(Duration::from_secs(3), next)
        .await
        .expect("handed over, not left to a 5 s pause")
        .unwrap()
        .expect("the successor holds the lock");
    // The release returned at the quorum, and the successor may hold on the quorum's notices
    // before the last node ran its part.
    let handed = || {
        others(&nodes, key)
            .zip(&held_there)
            .all(|(node, held)| command_calls(node, "psetex") == i64::from(*held))
    };
    assert!(
        eventually(Duration::from_secs(2), handed).await,
        "a hand-over wherever the holder's token was, and nowhere else"
    );
    // Where the holder's token was not, its release leaves a tombstone (a `SET`) instead.
    for ((node, before), held) in others(&nodes, key).zip(sets).zip(&held_there) {
        if *held {
            assert_eq!(
                command_calls(node, "set"),
                before,
                "the successor sent no SET"
            );
        }
    }
    let token = seq.get(key).unwrap().expect("held");
    let holding = nodes
        .iter()
        .filter(|n| n.get(key).unwrap().as_deref() == Some(token.as_str()))
        .count();
    let expected = 1 + held_there.iter().filter(|held| **held).count();
    assert_eq!(
        holding, expected,
        "the successor's token wherever the holder's was"
    );
    assert!(lock.is_valid());
    assert!(lock.release().await.unwrap().released >= 2);
    assert!(gone_everywhere(&nodes, key).await);
}

/// A successor that stops waiting after it was named leaves a tombstone for its token on the
/// other nodes, and the holder's release then deletes the key there instead of handing it to a
/// token nobody will use (which would keep the key for the successor's ttl).
#[tokio::test]
async fn a_named_successor_that_left_is_not_handed_the_key() {
    let nodes = cluster(3);
    let key = "redlock:left";
    let (held, next) = held_with_a_successor(&nodes, "left", patient(&nodes)).await;
    next.abort();
    let tombstones = || {
        others(&nodes, key)
            .map(|n| n.keys("redlock:left:gone:*").unwrap().len())
            .sum::<usize>()
    };
    assert!(
        eventually(Duration::from_secs(3), || tombstones() == 2).await,
        "the successor left a tombstone on each other node"
    );
    assert_eq!(queued(&nodes, key), 0, "and left the line");
    held.release().await.unwrap();
    assert!(gone_everywhere(&nodes, key).await, "nobody holds the key");
    assert!(others(&nodes, key).all(|n| command_calls(n, "psetex") == 0));
}

/// A holder names its successor only within the lease the successor had left when the
/// sequencer named it: later, the sequencer may have dropped it from the line. Past that, the
/// release hands over on the sequencer alone, and the successor claims the other nodes itself.
#[tokio::test]
async fn a_holder_does_not_name_a_successor_whose_lease_may_have_run_out() {
    let nodes = cluster(3);
    let key = "redlock:stale";
    // Asks every 100 ms (its lease: 1 s), so it stays in line while the holder holds.
    let eager = redlock_with(&nodes, |b| {
        b.retry(Retry::new(
            1_000,
            Duration::from_millis(100),
            Duration::ZERO,
        ))
    });
    let (held, next) = held_with_a_successor(&nodes, "stale", eager).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    held.release().await.unwrap();
    let lock = next.await.unwrap().expect("the successor holds the lock");
    assert!(
        others(&nodes, key).all(|n| command_calls(n, "psetex") == 0),
        "no hand-over named a successor past its lease"
    );
    lock.release().await.unwrap();
}

/// A successor that does not hear the other nodes (its pub/sub connections to them dropped)
/// holds on the sequencer's notice alone, claiming the other nodes, where the release already
/// set its token: the claim counts a key that holds our token as set.
#[tokio::test]
async fn a_successor_deaf_to_the_other_nodes_claims_them() {
    let nodes = cluster(3);
    let key = "redlock:deaf";
    let (held, next) = held_with_a_successor(&nodes, "deaf", patient(&nodes)).await;
    others(&nodes, key).for_each(deafen);
    held.release().await.unwrap();
    let lock = tokio::time::timeout(Duration::from_secs(3), next)
        .await
        .expect("served, not left to a 5 s pause")
        .unwrap()
        .expect("the successor holds the lock");
    assert!(others(&nodes, key).all(|n| command_calls(n, "psetex") == 1));
    assert!(lock.is_valid());
    assert!(lock.release().await.unwrap().released >= 2);
    assert!(gone_everywhere(&nodes, key).await);
}

/// A successor that holds on other nodes' notices counts its validity from the ask the holder
/// named to them, which the sequencer saw before it named the successor, not from its later
/// asks, which the sequencer's own notice names: those other nodes set the key after the named
/// ask, but maybe before a later one. Here the successor renews its place every second while
/// the holder holds for 2.5 s: counted from its last renewal, its lock would claim about 2 s
/// more than those keys are sure to live.
#[tokio::test]
async fn a_successor_counts_its_validity_from_the_ask_the_holder_named() {
    let nodes = cluster(3);
    let key = "redlock:named";
    let successor = slow_to_fall_back(&nodes, Duration::from_secs(1));
    let (held, next) = held_with_a_successor(&nodes, "named", successor).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    held.release().await.unwrap();
    let lock = next.await.unwrap().expect("the successor holds the lock");
    assert!(
        others(&nodes, key).any(|n| command_calls(n, "psetex") == 1),
        "handed over in one trip"
    );
    // ttl 10 s, held 2.5 s since the named ask: about 7.4 s left; from the last renewal, 9.4 s.
    let left = lock.remaining();
    assert!(
        left < Duration::from_millis(8_400),
        "{left:?} left: validity counted from a later ask"
    );
    lock.release().await.unwrap();
}

/// A waiter does not wait for its subscriptions on the nodes other than the sequencer: those
/// only add the one-trip hand-over. Here one of them is paused (it accepts connections and
/// never answers), the node timeout is 2 s, and the lock is released 100 ms after the waiter
/// asked: the waiter is served well within the 2 s a blocking subscription would cost it.
#[tokio::test]
async fn a_waiter_does_not_wait_for_a_paused_node_to_listen() {
    let nodes = cluster(3);
    let key = "redlock:paused";
    let holder = redlock_with(&nodes, |b| b.node_timeout(Duration::from_secs(2)));
    let held = held_everywhere(&nodes, &holder, "paused").await;
    let paused = others(&nodes, key).next().expect("another node");
    paused.pause().unwrap();
    let waiter = slow_to_fall_back(&nodes, Duration::from_secs(5));
    let asked = std::time::Instant::now();
    let waiting = tokio::spawn(async move {
        waiter
            .lock_with("paused", LockOptions::new().wait(Duration::from_secs(20)))
            .await
    });
    // Only the sequencer is asked: a query to the paused node would wait for its timeout.
    let seq = &nodes[usize::try_from(sequencer(key, 3)).unwrap()];
    let in_line = || {
        seq.query(&["LLEN", "redlock:paused:line"])
            .ok()
            .and_then(|r| r.as_int())
            == Some(1)
    };
    assert!(eventually(Duration::from_secs(5), in_line).await);
    held.release().await.unwrap();
    let lock = waiting.await.unwrap().expect("served");
    let waited = asked.elapsed();
    paused.resume().unwrap();
    assert!(
        waited < Duration::from_millis(1_500),
        "waited {waited:?}: held up by the paused node's subscription"
    );
    lock.release().await.unwrap();
}
