//! Acquisition: DESIGN.md §3.2 rules 1–5, against real nodes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use redlock_core::{Error, LockOptions, Redlock, Retry};
use redlock_tests::{ProxyMode, ProxySet};

use crate::support::{
    Overlap, cluster, eventually, gone_everywhere, lines_until_quiet, monitor, redlock,
    redlock_with, stall_all, stored_everywhere,
};

/// Rule 1 and 4: the deadline is `T1 + ttl − drift` with T1 taken before the first send, so time
/// spent waiting for replies is subtracted from the validity. All nodes are stalled for 300 ms
/// during the acquisition: a T1 taken after the replies would push the deadline past
/// `invoke + ttl − drift`.
#[tokio::test]
async fn deadline_is_anchored_before_the_first_send() {
    let nodes = cluster(3);
    let ttl = Duration::from_secs(5);
    let redlock = redlock_with(&nodes, |b| b.ttl(ttl).node_timeout(Duration::from_secs(2)));
    redlock.connect().await.unwrap();
    let stalls = stall_all(&nodes, 0.5);
    let invoked = Instant::now();
    let lock = redlock.lock("deadline").await.unwrap();
    let took = invoked.elapsed();
    let drift = Duration::from_secs_f64(ttl.as_secs_f64() * 0.01) + Duration::from_millis(2);
    assert!(
        took >= Duration::from_millis(200),
        "the nodes were stalled: {took:?}"
    );
    // T1 lies between the call and the first send (microseconds apart); a T1 taken after the
    // replies would be `took` later.
    let slack = Duration::from_millis(50);
    assert!(
        lock.deadline() >= invoked + ttl - drift,
        "anchored at T1 >= invoke"
    );
    assert!(
        lock.deadline() <= invoked + ttl - drift + slack,
        "deadline overstated"
    );
    assert!(lock.remaining() <= ttl - drift - (took - slack));
    lock.release().await.unwrap();
    stalls.into_iter().for_each(|h| h.join().unwrap());
}

/// Rule 4: a quorum reached too late to leave `min_validity` is not granted, and the keys it
/// wrote are released at once.
#[tokio::test]
async fn slow_acquisition_without_enough_validity_is_refused_and_undone() {
    let nodes = cluster(3);
    let redlock = redlock_with(&nodes, |b| {
        b.ttl(Duration::from_millis(3000))
            .min_validity(Duration::from_millis(2900))
            .node_timeout(Duration::from_secs(2))
            .retry(Retry::none())
    });
    redlock.connect().await.unwrap();
    let stalls = stall_all(&nodes, 0.2);
    let err = redlock.lock("slow").await.unwrap_err();
    assert!(matches!(err, Error::Expired { .. }), "{err:?}");
    // Settled nodes are released before `lock` returns, a straggler right behind its SET.
    assert!(gone_everywhere(&nodes, "redlock:slow").await);
    stalls.into_iter().for_each(|h| h.join().unwrap());
}

/// Rules 2, 3 and 7: SETs go to every node at once and the outcome is decided as soon as a
/// quorum answered. One node is frozen and the node timeout is 2 s: waiting for it, or asking
/// the nodes one by one, would take at least that long; deciding at quorum takes a millisecond
/// or two. The frozen node's SET applies when it resumes, and the release queued behind it on the
/// same connection removes it.
#[tokio::test]
async fn quorum_decides_without_waiting_for_a_frozen_node() {
    let nodes = cluster(3);
    let node_timeout = Duration::from_secs(2);
    let redlock = redlock_with(&nodes, |b| {
        b.ttl(Duration::from_secs(30)).node_timeout(node_timeout)
    });
    redlock.connect().await.unwrap();
    for frozen in 0..3 {
        nodes[frozen].pause().unwrap();
        let lock = tokio::time::timeout(node_timeout / 2, redlock.lock("fanout"))
            .await
            .expect("decided at quorum, before the frozen node's timeout")
            .unwrap();
        let held = values(&nodes_except(&nodes, frozen), "redlock:fanout");
        assert!(held.iter().all(Option::is_some), "{held:?}");
        let release = tokio::time::timeout(node_timeout / 2, lock.release())
            .await
            .expect("release does not wait for the frozen node")
            .unwrap();
        assert_eq!(release.released, 2);
        assert_eq!(
            release.pending, 1,
            "the frozen node's SET is released behind it"
        );
        nodes[frozen].resume().unwrap();
        assert!(
            eventually(Duration::from_secs(5), || nodes[frozen]
                .get("redlock:fanout")
                .unwrap()
                .is_none())
            .await,
            "the late SET on node {frozen} was released behind it"
        );
    }
}

fn nodes_except(cluster: &redlock_tests::Cluster, skip: usize) -> Vec<&redlock_tests::RedisNode> {
    cluster
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != skip)
        .map(|(_, n)| n)
        .collect()
}

fn values(nodes: &[&redlock_tests::RedisNode], key: &str) -> Vec<Option<String>> {
    nodes.iter().map(|n| n.get(key).unwrap()).collect()
}

/// Rule 2 (tokens): every attempt stores a fresh 128-bit token, 32 hex digits, never reused.
#[tokio::test]
async fn every_acquisition_stores_a_fresh_128_bit_token() {
    let nodes = cluster(3);
    let redlock = redlock(&nodes);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let lock = redlock.lock("token").await.unwrap();
        // A quorum has the token when `lock` returns. The third node may still be on its way,
        // or, now and then, hold the previous round's token for a moment: that round's SET to
        // it can land after the check below saw the node empty (its release follows it, in the
        // background).
        let stored: Vec<String> = crate::support::values(&nodes, "redlock:token")
            .into_iter()
            .flatten()
            .collect();
        let token = stored
            .iter()
            .find(|v| stored.iter().filter(|w| w == v).count() >= 2)
            .expect("a quorum stores one token")
            .clone();
        assert_eq!(token.len(), 32);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(seen.insert(token), "token reused");
        lock.release().await.unwrap();
        // A straggler's key is released in the background; wait for it before the next round.
        assert!(gone_everywhere(&nodes, "redlock:token").await);
    }
}

/// Rule 3, the other way round: an attempt is denied as soon as too few nodes are left to reach
/// a quorum. Two nodes hold the key for someone else and answer at once; the third is frozen and
/// the node timeout is 2 s. Waiting for the frozen node before giving up would take that long.
#[tokio::test]
async fn denial_is_decided_without_waiting_for_a_frozen_node() {
    let nodes = cluster(3);
    let node_timeout = Duration::from_secs(2);
    let redlock = redlock_with(&nodes, |b| {
        b.node_timeout(node_timeout).retry(Retry::none())
    });
    redlock.connect().await.unwrap();
    for frozen in 0..3 {
        for (index, node) in nodes.iter().enumerate() {
            if index != frozen {
                node.set("redlock:denied", "someone-else").unwrap();
            }
        }
        nodes[frozen].pause().unwrap();
        let err = tokio::time::timeout(node_timeout / 2, redlock.lock("denied"))
            .await
            .expect("denied before the frozen node's timeout")
            .unwrap_err();
        assert!(err.is_contended(), "{err}");
        nodes[frozen].resume().unwrap();
        // The frozen node's SET applies when it resumes; the release queued behind it removes it.
        let undone = eventually(Duration::from_secs(5), || {
            nodes[frozen].get("redlock:denied").unwrap().is_none()
        })
        .await;
        assert!(
            undone,
            "our key on node {frozen} is released behind its SET"
        );
        for node in nodes.iter() {
            node.query(&["DEL", "redlock:denied"]).unwrap();
        }
    }
}

/// Rule 2, per attempt: every attempt of one `lock` call sends a token of its own. A reply to an
/// earlier attempt that lands late must never count for a later one, whose validity is measured
/// from a later start. Two nodes are down, so each of the four attempts reaches only the third,
/// whose `MONITOR` shows the token each SET carried.
#[tokio::test]
async fn every_attempt_of_one_call_sends_its_own_token() {
    let nodes = cluster(3);
    let seen = monitor(&nodes[2], Duration::from_secs(10));
    nodes[0].kill().unwrap();
    nodes[1].kill().unwrap();
    let redlock = redlock_with(&nodes, |b| {
        b.retry(Retry::jittered(4, Duration::from_millis(5)))
    });
    let err = redlock.lock("retried").await.unwrap_err();
    assert!(matches!(err, Error::NoQuorum { .. }), "{err}");
    // The last attempt's SET may still be on its way out: read off the runtime's thread, so
    // that the connection's task can write it meanwhile.
    let tokens = tokio::task::spawn_blocking(move || {
        let mut tokens = Vec::new();
        while tokens.len() < 4 {
            let line = seen
                .recv_timeout(Duration::from_secs(2))
                .expect("each attempt's SET reaches the live node");
            if let Some(rest) = line.split("\"SET\" \"redlock:retried\" \"").nth(1) {
                tokens.push(rest.split('"').next().unwrap_or_default().to_owned());
            }
        }
        tokens
    })
    .await
    .unwrap();
    for token in &tokens {
        assert_eq!(token.len(), 32, "{token}");
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    }
    let distinct: std::collections::HashSet<_> = tokens.iter().collect();
    assert_eq!(distinct.len(), 4, "one token per attempt: {tokens:?}");
}

/// Rule 5 (contention): a key held by someone else on a majority is reported as contended,
/// after the configured number of attempts, and none of our keys stay behind on the minority
/// node where our SET succeeded.
#[tokio::test]
async fn contended_attempt_leaves_none_of_our_keys() {
    let nodes = cluster(3);
    nodes[0].set("redlock:busy", "someone-else").unwrap();
    nodes[1].set("redlock:busy", "someone-else").unwrap();
    let redlock = redlock_with(&nodes, |b| {
        b.retry(Retry::jittered(3, Duration::from_millis(5)))
    });
    let err = redlock.lock("busy").await.unwrap_err();
    assert!(
        matches!(err, Error::Contended { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(err.is_contended() && err.is_retryable());
    // The vote was decided by the two busy nodes; our SET on node 2 may answer just after, and
    // is then released right behind it.
    let expected = vec![
        Some("someone-else".to_owned()),
        Some("someone-else".to_owned()),
        None,
    ];
    assert!(
        eventually(Duration::from_secs(2), || crate::support::values(
            &nodes,
            "redlock:busy"
        ) == expected)
        .await,
        "{:?}",
        crate::support::values(&nodes, "redlock:busy")
    );
    assert!(redlock.try_lock("busy").await.unwrap().is_none());
}

/// A failed attempt does not ask the nodes that answered "held by someone else" to release:
/// their key is not ours, and the compare-and-delete would only cost them a script. `MONITOR`
/// on the two busy nodes shows our SET and no script after it; the free node is released.
#[tokio::test]
async fn busy_nodes_are_not_asked_to_release() {
    let nodes = cluster(3);
    nodes[0].set("redlock:taken", "someone-else").unwrap();
    nodes[1].set("redlock:taken", "someone-else").unwrap();
    let busy = [
        monitor(&nodes[0], Duration::from_secs(10)),
        monitor(&nodes[1], Duration::from_secs(10)),
    ];
    let redlock = redlock_with(&nodes, |b| b.retry(Retry::none()));
    let err = redlock.lock("taken").await.unwrap_err();
    assert!(err.is_contended(), "{err}");
    let released = eventually(Duration::from_secs(2), || {
        nodes[2].get("redlock:taken").unwrap().is_none()
    })
    .await;
    assert!(released, "the free node's key is released");
    for seen in busy {
        let lines = lines_until_quiet(seen, Duration::from_millis(300)).await;
        assert!(
            lines
                .iter()
                .any(|l| l.contains("\"SET\" \"redlock:taken\"")),
            "our SET reached the busy node: {lines:?}"
        );
        assert!(
            !lines.iter().any(|l| l.contains("\"EVAL")),
            "a busy node was asked to release: {lines:?}"
        );
    }
}

/// Rule 5 (retries): `lock` keeps trying with jittered pauses and gets the lock once the holder
/// releases it.
#[tokio::test]
async fn lock_retries_until_the_holder_releases() {
    let nodes = cluster(3);
    let redlock = redlock_with(&nodes, |b| {
        b.retry(Retry::jittered(200, Duration::from_millis(5)))
    });
    let held = redlock.lock("handover").await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let waiter = {
        let redlock = redlock.clone();
        tokio::spawn(async move {
            tx.send(()).unwrap();
            redlock.lock("handover").await
        })
    };
    rx.await.unwrap();
    held.release().await.unwrap();
    let lock = waiter.await.unwrap().expect("acquired after the release");
    lock.release().await.unwrap();
}

/// Mutual exclusion under contention: tasks on several `Redlock` clients (as on several hosts)
/// take turns on one resource, and never two at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_never_overlap() {
    let nodes = cluster(3);
    let overlap = Overlap::default();
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let redlock = redlock_with(&nodes, |b| {
            b.retry(Retry::new(
                400,
                Duration::from_millis(1),
                Duration::from_millis(5),
            ))
        });
        let (overlap, done) = (overlap.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let lock = redlock.lock("shared").await.unwrap();
                overlap.critical_section().await;
                lock.release().await.unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 40);
    assert_eq!(overlap.max(), 1);
}

/// Per-call ttl: `lock_with` writes the requested expiry.
#[tokio::test]
async fn lock_with_uses_the_requested_ttl() {
    let nodes = cluster(3);
    let redlock = redlock(&nodes);
    let lock = redlock
        .lock_with("short", LockOptions::new().ttl(Duration::from_millis(1500)))
        .await
        .unwrap();
    // The key is on a quorum at once, on the third node a moment later.
    let mut pttl = -2;
    assert!(
        eventually(Duration::from_secs(2), || {
            pttl = nodes[0]
                .query(&["PTTL", "redlock:short"])
                .unwrap()
                .as_int()
                .unwrap();
            pttl != -2
        })
        .await
    );
    assert!(pttl > 1000 && pttl <= 1500, "{pttl}");
    assert!(lock.remaining() <= Duration::from_millis(1500));
    lock.release().await.unwrap();
}

/// Tasks of one process that want the same lock queue in arrival order instead of polling the
/// nodes: each release hands the lock to the next task at once, so 16 tasks × 5 rounds finish
/// with every task served, never two inside, and a default retry budget that polling alone
/// would exhaust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_waiters_queue_fairly_and_never_overlap() {
    let nodes = cluster(3);
    let redlock = redlock_with(&nodes, |b| {
        b.retry(Retry::new(3, Duration::from_millis(200), Duration::ZERO))
    });
    let overlap = Overlap::default();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (redlock, overlap) = (redlock.clone(), overlap.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let lock = redlock.lock("queue").await.expect("served in turn");
                overlap.critical_section().await;
                lock.release().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(overlap.max(), 1);
}

/// A release hands the lock to the next task of the same process as soon as its deletes are
/// on their way: the waiter's SETs follow them on the same connections, so every node deletes
/// our key first and the hand-over costs the waiter's round trip only. The nodes sit behind
/// proxies that hold every reply for 2 s, and the waiter's token is on a quorum of nodes while
/// the release still waits for its replies. Passing the turn once the release has returned, the
/// key would stay gone for those 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_hands_over_to_a_local_waiter_before_its_replies_come_back() {
    let releasing = hand_over_to_a_local_waiter(|held| tokio::spawn(held.release())).await;
    let release = releasing.await.unwrap().unwrap();
    assert!(release.released >= 2, "{release:?}");
}

/// The same when the lock is dropped instead of released, as a guard going out of scope: the
/// background release is queued on the connections before the turn passes. Passing the turn
/// first, the waiter's SETs would reach the nodes ahead of the deletes and find the key held.
/// (One thread, so that the order in which the runtime runs the waiter and the release is the
/// order they were woken in.)
#[tokio::test]
async fn a_dropped_lock_hands_over_to_a_local_waiter_behind_its_deletes() {
    hand_over_to_a_local_waiter(drop).await;
}

/// Holds `handover`, queues a second task of the same client for it, delays every reply by 2 s
/// and lets `end` end the first lock; asserts that the waiter's token reached a quorum of nodes
/// within 1.5 s, and that the waiter then holds a valid lock. Returns what `end` returned.
async fn hand_over_to_a_local_waiter<T>(end: impl FnOnce(redlock_core::Lock) -> T) -> T {
    let nodes = cluster(3);
    let proxies = ProxySet::new(&nodes).expect("proxies start");
    let redlock = Redlock::builder()
        .nodes(proxies.urls())
        .ttl(Duration::from_secs(30))
        .node_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let key = "redlock:handover";
    // Once first, so that every node has the release scripts cached: a NOSCRIPT answer would
    // come back late too, and the script run only after it. Every node answers each step
    // before the next, so that no straggling SET or release of it meets the lock below.
    let warm = redlock.lock("handover").await.unwrap();
    assert!(stored_everywhere(&nodes, key).await);
    warm.release().await.unwrap();
    assert!(gone_everywhere(&nodes, key).await);
    let held = redlock.lock("handover").await.unwrap();
    assert!(stored_everywhere(&nodes, key).await);
    let ours = crate::support::values(&nodes, key)[0].clone();
    let waiter = tokio::spawn({
        let redlock = redlock.clone();
        async move { redlock.lock("handover").await }
    });
    proxies.set_all(ProxyMode::delay_replies(
        Duration::from_secs(2),
        Duration::ZERO,
    ));
    let ended = end(held);
    let handed = eventually(Duration::from_millis(1500), || {
        let values = crate::support::values(&nodes, key);
        values.iter().filter(|v| v.is_some() && **v != ours).count() >= 2
    })
    .await;
    assert!(
        handed,
        "the waiter's SETs reached the nodes behind the deletes: {:?}, waiter done: {}",
        crate::support::values(&nodes, key),
        waiter.is_finished()
    );
    proxies.heal_all();
    let lock = waiter.await.unwrap().expect("the waiter holds the lock");
    assert!(lock.is_valid());
    lock.release().await.unwrap();
    ended
}

/// `try_lock` sees a local holder without asking the nodes.
#[tokio::test]
async fn try_lock_is_contended_while_a_local_task_holds_the_lock() {
    let nodes = cluster(3);
    let redlock = redlock(&nodes);
    let held = redlock.lock("local").await.unwrap();
    assert!(redlock.try_lock("local").await.unwrap().is_none());
    held.release().await.unwrap();
    let again = redlock
        .try_lock("local")
        .await
        .unwrap()
        .expect("free again");
    again.release().await.unwrap();
}

/// A waiter blocked by another process is woken by the release announcement, not by its retry
/// timer: with a 5 s pause between attempts it still takes over within a fraction of that.
/// (Two `Redlock` clients share no in-process queue, exactly like two processes.)
#[tokio::test]
async fn a_release_in_another_process_wakes_the_waiter() {
    let nodes = cluster(3);
    let holder = redlock(&nodes);
    let waiter = redlock_with(&nodes, |b| {
        b.retry(Retry::new(10, Duration::from_secs(5), Duration::ZERO))
    });
    let held = holder.lock("announce").await.unwrap();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let _ = subscribed_tx.send(());
        let started = Instant::now();
        let lock = waiter.lock("announce").await;
        (lock, started.elapsed())
    });
    subscribed_rx.await.unwrap();
    // Let the waiter fail its first attempt and subscribe: its subscription shows on the nodes
    // (its turn channel on every node, where a one-trip hand-over may reach it).
    let subscribed = eventually(Duration::from_secs(2), || subscribers(&nodes) == 3).await;
    assert!(subscribed, "the waiter listens for the release");
    held.release().await.unwrap();
    let (lock, waited) = task.await.unwrap();
    let lock = lock.expect("acquired after the release");
    assert!(
        waited < Duration::from_secs(4),
        "woken by the announcement: {waited:?}"
    );
    lock.release().await.unwrap();
    // Nobody waits any more: the subscription is dropped (after lingering a second).
    assert!(eventually(Duration::from_secs(5), || subscribers(&nodes) == 0).await);
}

/// `LockOptions::wait` bounds the wait by time, whatever the attempt count, and reports the
/// last outcome when it runs out.
#[tokio::test]
async fn wait_is_bounded_by_time_and_reports_the_last_outcome() {
    let nodes = cluster(3);
    let holder = redlock(&nodes);
    let waiter = redlock_with(&nodes, |b| {
        b.retry(Retry::new(1, Duration::from_millis(20), Duration::ZERO))
    });
    let held = holder.lock("patience").await.unwrap();
    let started = Instant::now();
    let err = waiter
        .lock_with(
            "patience",
            LockOptions::new().wait(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(err.is_contended(), "{err:?}");
    assert!(
        waited >= Duration::from_millis(300),
        "waited the whole bound: {waited:?}"
    );
    assert!(
        matches!(err, Error::Contended { attempts, .. } if attempts > 1),
        "{err:?}"
    );
    let task = tokio::spawn(async move {
        waiter
            .lock_with("patience", LockOptions::new().wait(Duration::from_secs(10)))
            .await
    });
    held.release().await.unwrap();
    task.await
        .unwrap()
        .expect("acquired within the wait")
        .release()
        .await
        .unwrap();
}

/// Sixteen clients (as sixteen processes: no shared queue) contend for one key, woken by release
/// announcements. Sequenced retries let one waiter through per release instead of splitting
/// the votes between all of them: every round completes, never two holders at once, and no key
/// is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_processes_contending_make_progress_without_split_votes() {
    let nodes = cluster(3);
    let overlap = Overlap::default();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let redlock = redlock_with(&nodes, |b| {
            b.retry(Retry::new(
                1,
                Duration::from_millis(5),
                Duration::from_millis(5),
            ))
        });
        let overlap = overlap.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let lock = redlock
                    .lock_with("herd", LockOptions::new().wait(Duration::from_secs(20)))
                    .await
                    .expect("progress under contention");
                overlap.critical_section().await;
                lock.release().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(overlap.max(), 1);
    assert!(
        eventually(Duration::from_secs(2), || crate::support::key_count(&nodes)
            == 0)
        .await,
        "leftover keys: {}",
        crate::support::key_count(&nodes)
    );
}

/// Channels someone listens on for the release of `redlock:announce` (a waiter in a wait queue
/// listens on its own `<key>:released:<waiter>`), over every node.
fn subscribers(nodes: &redlock_tests::Cluster) -> usize {
    nodes
        .iter()
        .filter_map(|n| {
            n.query(&["PUBSUB", "CHANNELS", "redlock:announce:released*"])
                .ok()
                .and_then(|r| r.as_array().map(<[_]>::len))
        })
        .sum()
}
