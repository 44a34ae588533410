//! Wait queues: waiters in different processes take a contended lock in the order they asked,
//! a release wakes only the next one, and a waiter that leaves or dies never blocks the others
//! for long. Each `Redlock` here is its own client (no shared in-process queue), exactly like
//! separate processes.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use redlock_core::{Error, LockOptions, Redlock, Retry};
use redlock_tests::{ProxyMode, ProxySet};

use crate::support::{cluster, command_calls, eventually, held_everywhere, redlock, redlock_with};

/// Entries in the wait queue of `key`, over every node (only its sequencer node keeps one).
pub(crate) fn queued(nodes: &redlock_tests::Cluster, key: &str) -> i64 {
    nodes
        .iter()
        .filter_map(|n| {
            n.query(&["LLEN", &format!("{key}:line")])
                .ok()
                .and_then(|r| r.as_int())
        })
        .sum()
}

/// Whether `key`'s wait queue holds `waiters` within 12 s. A waiter joins at its first ask in
/// turn, unless the machine stalled past its node timeout; then it joins at its next ask, after
/// its retry pause (5 s for [`patient`] clients). The callers check who stands in line, not how
/// soon.
pub(crate) async fn in_line_soon(nodes: &redlock_tests::Cluster, key: &str, waiters: i64) -> bool {
    eventually(Duration::from_secs(12), || queued(nodes, key) == waiters).await
}

/// A client with the node timeout `node_timeout` that asks again every `pause` (no jitter).
pub(crate) fn asking_every(
    nodes: &redlock_tests::Cluster,
    node_timeout: Duration,
    pause: Duration,
) -> Redlock {
    redlock_with(nodes, |b| {
        b.node_timeout(node_timeout)
            .retry(Retry::new(1_000, pause, Duration::ZERO))
    })
}

/// A client whose retry pause is far longer than the test: it can only get the lock in time if
/// it is woken when its turn comes.
pub(crate) fn patient(nodes: &redlock_tests::Cluster) -> Redlock {
    redlock_with(nodes, |b| {
        b.retry(Retry::new(1_000, Duration::from_secs(5), Duration::ZERO))
    })
}

/// Four clients ask for a held lock one after the other; after the release each gets it in
/// that order, each woken by the previous holder's release rather than by its 5 s pause.
/// Without the queue the woken waiters race, and the order is one of 24 at random.
#[tokio::test]
async fn waiters_in_other_processes_take_the_lock_in_arrival_order() {
    let nodes = cluster(3);
    let holder = redlock(&nodes);
    let held = held_everywhere(&nodes, &holder, "line").await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for index in 0..4 {
        let (waiter, order) = (patient(&nodes), order.clone());
        tasks.push(tokio::spawn(async move {
            let lock = waiter
                .lock_with("line", LockOptions::new().wait(Duration::from_secs(20)))
                .await
                .expect("woken in turn");
            order.lock().unwrap().push(index);
            lock.release().await.unwrap();
        }));
        // The next client asks only once this one stands in line.
        let in_line = eventually(Duration::from_secs(5), || {
            queued(&nodes, "redlock:line") == index + 1
        })
        .await;
        assert!(in_line, "waiter {index} joined the queue");
    }
    let released = Instant::now();
    held.release().await.unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
    assert!(
        released.elapsed() < Duration::from_secs(3),
        "each woken by a release, not by its pause: {:?}",
        released.elapsed()
    );
    assert_eq!(
        queued(&nodes, "redlock:line"),
        0,
        "the queue empties itself"
    );
}

/// A waiter cancelled while standing in line leaves it at once: the waiter behind it is woken
/// by the release, instead of waiting for the cancelled one's place (held for 20 s by its lease)
/// to run out.
#[tokio::test]
async fn a_cancelled_waiter_leaves_the_queue() {
    let nodes = cluster(3);
    let holder = redlock(&nodes);
    let held = held_everywhere(&nodes, &holder, "leave").await;
    let quitter = patient(&nodes);
    let quitting = tokio::spawn(async move {
        quitter
            .lock_with("leave", LockOptions::new().wait(Duration::from_secs(20)))
            .await
    });
    assert!(in_line_soon(&nodes, "redlock:leave", 1).await);
    let next = patient(&nodes);
    let waiting = tokio::spawn(async move {
        next.lock_with("leave", LockOptions::new().wait(Duration::from_secs(20)))
            .await
    });
    assert!(in_line_soon(&nodes, "redlock:leave", 2).await);
    quitting.abort();
    assert!(quitting.await.unwrap_err().is_cancelled());
    assert!(
        eventually(Duration::from_secs(5), || queued(&nodes, "redlock:leave")
            == 1)
        .await,
        "the cancelled waiter left the queue"
    );
    woken_by_the_release(held, waiting).await;
}

/// A waiter that died in line (here: a queue entry with a 2 s lease that nobody renews) keeps
/// its turn, even over a free lock, only until its lease runs out; then the live waiter behind
/// it is served.
#[tokio::test]
async fn a_dead_waiter_loses_its_place_when_its_lease_runs_out() {
    let nodes = cluster(3);
    let lease = Duration::from_secs(2);
    let lease_end = Instant::now() + lease;
    for node in nodes.iter() {
        let time = node.query(&["TIME"]).unwrap();
        let parts = time.as_array().unwrap();
        let secs: u128 = parts[0].as_str().unwrap().parse().unwrap();
        let micros: u128 = parts[1].as_str().unwrap().parse().unwrap();
        let until = (secs * 1000 + micros / 1000 + lease.as_millis()).to_string();
        node.query(&["RPUSH", "redlock:ghost:line", "ghost"])
            .unwrap();
        node.query(&["HSET", "redlock:ghost:line:entries", "ghost", &until])
            .unwrap();
    }
    let waiter = redlock_with(&nodes, |b| {
        b.retry(Retry::new(1_000, Duration::from_millis(50), Duration::ZERO))
    });
    // A client that saw no contention asks every node at once without consulting the queue;
    // finding the lock held makes it a queued waiter.
    let blocked = held_everywhere(&nodes, &redlock(&nodes), "ghost").await;
    let waiting = tokio::spawn(async move {
        waiter
            .lock_with("ghost", LockOptions::new().wait(Duration::from_secs(10)))
            .await
    });
    // The ghost stands in line on every node; the waiter joins it on the sequencer node.
    let joined = eventually(Duration::from_secs(5), || {
        queued(&nodes, "redlock:ghost") == 4
    })
    .await;
    assert!(joined, "the waiter queued behind the ghost");
    blocked.release().await.unwrap();
    let lock = waiting
        .await
        .unwrap()
        .expect("served once the dead waiter's lease ran out");
    let now = Instant::now();
    assert!(
        now + Duration::from_millis(100) >= lease_end,
        "the free lock waited for the dead waiter's turn to expire"
    );
    assert!(
        now < lease_end + Duration::from_secs(3),
        "and not much longer: {:?} after it",
        now.saturating_duration_since(lease_end)
    );
    lock.release().await.unwrap();
    // Gone from the sequencer node; the other nodes never look at theirs.
    let gone = eventually(Duration::from_secs(5), || {
        queued(&nodes, "redlock:ghost") == 2
    })
    .await;
    assert!(gone, "the dead entry left the sequencer node's queue");
}

/// The node that keeps a key's wait queue is down: waiting degrades to polling at the retry
/// pause (nobody can stand in line or be woken), and the lock still changes hands through the
/// other two nodes.
#[tokio::test]
async fn a_dead_sequencer_node_costs_only_the_order() {
    let nodes = cluster(3);
    // A resource whose sequencer is node 0 (FNV-1a of the key, modulo the node count).
    let resource = (0..)
        .map(|i| format!("orphaned-line-{i}"))
        .find(|r| sequencer(&format!("redlock:{r}"), 3) == 0)
        .unwrap();
    nodes[0].kill().unwrap();
    let holder = redlock(&nodes);
    let held = holder
        .lock(&resource)
        .await
        .expect("two nodes are a quorum");
    let sets_before = command_calls(&nodes[1], "set");
    let waiter = redlock_with(&nodes, |b| {
        b.retry(Retry::new(1_000, Duration::from_millis(50), Duration::ZERO))
    });
    let waiting = {
        let resource = resource.clone();
        tokio::spawn(async move {
            waiter
                .lock_with(&resource, LockOptions::new().wait(Duration::from_secs(10)))
                .await
        })
    };
    // The waiter has asked (and been refused) before the holder lets go.
    assert!(
        eventually(Duration::from_secs(5), || command_calls(&nodes[1], "set")
            > sets_before)
        .await
    );
    let released = Instant::now();
    held.release().await.unwrap();
    let lock = waiting.await.unwrap().expect("served by the live nodes");
    assert!(
        released.elapsed() < Duration::from_secs(3),
        "polling at the retry pause: {:?}",
        released.elapsed()
    );
    let key = format!("redlock:{resource}");
    for node in [&nodes[1], &nodes[2]] {
        assert!(node.get(&key).unwrap().is_some(), "held on the live nodes");
    }
    lock.release().await.unwrap();
}

/// A node other than the key's sequencer is down, the case Redlock is built for: a waiter
/// still stands in the sequencer's line and is served when the lock is released, not at its
/// 5 s retry pause. Its first attempt hears "held" from one node and an error from the dead one,
/// which is as much contention as two "held": the live node it did not count holds the key too.
#[tokio::test]
async fn a_dead_node_elsewhere_leaves_waiters_in_line() {
    let nodes = cluster(3);
    let resource = (0..)
        .map(|i| format!("half-dark-{i}"))
        .find(|r| sequencer(&format!("redlock:{r}"), 3) == 0)
        .unwrap();
    let key = format!("redlock:{resource}");
    // Both clients are connected when the node dies, so their commands to it fail at once.
    let (holder, waiter) = (redlock(&nodes), patient(&nodes));
    holder.connect().await.unwrap();
    waiter.connect().await.unwrap();
    nodes[2].kill().unwrap();
    let held = holder
        .lock(&resource)
        .await
        .expect("two nodes are a quorum");
    let waiting = wait_for(waiter, &resource, LockOptions::new());
    // Within its first ask's time, not `in_line_soon`: before the fix, a later ask could still
    // get two "held" replies in first, and put the waiter in line after all.
    assert!(
        eventually(Duration::from_secs(5), || queued(&nodes, &key) == 1).await,
        "the waiter stands in line"
    );
    let released = Instant::now();
    held.release().await.unwrap();
    let lock = waiting.await.unwrap().expect("served by the live nodes");
    assert!(
        released.elapsed() < Duration::from_secs(3),
        "served {:?} after the release: polling at the retry pause",
        released.elapsed()
    );
    lock.release().await.unwrap();
}

/// A release wakes exactly one waiter in another process, the one whose turn it is. Three
/// waiters stand in line; `MONITOR` on the sequencer node shows the release script's turn
/// messages: one, to the first waiter, while the two others stay in line. A release that woke
/// every waiter would publish three.
#[tokio::test]
async fn a_release_wakes_only_the_waiter_in_turn() {
    let nodes = cluster(3);
    let holder = redlock(&nodes);
    let held = held_everywhere(&nodes, &holder, "one").await;
    let (served, mut serving) = tokio::sync::mpsc::unbounded_channel();
    let mut waiters = Vec::new();
    for index in 0..3 {
        let (waiter, served) = (patient(&nodes), served.clone());
        waiters.push(tokio::spawn(async move {
            let lock = waiter
                .lock_with("one", LockOptions::new().wait(Duration::from_secs(20)))
                .await
                .expect("woken in turn");
            served.send((index, lock)).unwrap();
        }));
        let in_line = eventually(Duration::from_secs(5), || {
            queued(&nodes, "redlock:one") == index + 1
        })
        .await;
        assert!(in_line, "waiter {index} joined the queue");
    }
    let seen = crate::support::monitor(
        &nodes[sequencer("redlock:one", 3) as usize],
        Duration::from_secs(10),
    );
    held.release().await.unwrap();
    let (first, lock) = tokio::time::timeout(Duration::from_secs(3), serving.recv())
        .await
        .expect("the waiter in turn is woken by the release")
        .unwrap();
    assert_eq!(first, 0, "served in arrival order");
    assert_eq!(queued(&nodes, "redlock:one"), 2, "the others stay in line");
    // Whatever else the release caused has reached the node once it has been quiet a moment.
    let turns: Vec<String> = crate::support::lines_until_quiet(seen, Duration::from_millis(300))
        .await
        .into_iter()
        .filter(|line| line.contains("\"PUBLISH\" \"redlock:one:released:"))
        .collect();
    assert_eq!(turns.len(), 1, "one turn message per release: {turns:?}");
    for waiter in waiters {
        waiter.abort();
    }
    lock.release().await.unwrap();
}

/// The wait queue's two keys expire two leases after the last ask (README, operational
/// contract), so a queue whose waiters all vanished leaves nothing behind for longer. A waiter
/// with a 5 s pause has a 20 s lease: right after it joined, both keys have 30 to 40 s to live.
#[tokio::test]
async fn the_queue_keys_expire_two_leases_after_the_last_ask() {
    let nodes = cluster(3);
    let holder = redlock(&nodes);
    let held = held_everywhere(&nodes, &holder, "expiring").await;
    let waiter = patient(&nodes);
    let waiting = tokio::spawn(async move {
        waiter
            .lock_with("expiring", LockOptions::new().wait(Duration::from_secs(30)))
            .await
            .map(drop)
    });
    let joined = eventually(Duration::from_secs(5), || {
        queued(&nodes, "redlock:expiring") == 1
    })
    .await;
    assert!(joined, "the waiter joined the queue");
    let node = &nodes[sequencer("redlock:expiring", 3) as usize];
    for key in ["redlock:expiring:line", "redlock:expiring:line:entries"] {
        let pttl = node
            .query(&["PTTL", key])
            .ok()
            .and_then(|r| r.as_int())
            .expect("PTTL answers");
        assert!((30_000..=40_000).contains(&pttl), "{key}: PTTL {pttl} ms");
    }
    waiting.abort();
    held.release().await.unwrap();
}

/// FNV-1a, as the client picks a key's sequencer node.
pub(crate) fn sequencer(key: &str, nodes: u64) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) % nodes
}

/// A waiter woken in turn whose other nodes still hold the previous key a moment longer (its
/// release reached the sequencer node first) asks those nodes again instead of giving its turn
/// away and sleeping for its pause (5 s here).
#[tokio::test]
async fn a_waiter_in_turn_asks_again_the_nodes_the_release_has_not_reached() {
    let nodes = cluster(3);
    let resource = sequenced_on_node_0("late-release");
    let key = format!("redlock:{resource}");
    let held = held_everywhere(&nodes, &redlock(&nodes), &resource).await;
    let waiting = wait_for(patient(&nodes), &resource, LockOptions::new());
    assert!(in_line_soon(&nodes, &key, 1).await);
    served_though_the_other_nodes_are_late(&nodes, &key, &[1, 2], held, waiting).await;
}

/// The same for a waiter outside the queue (fenced here; `lock_many` waiters alike): woken by
/// the release on the sequencer node, which grants it, it finds the other nodes still held a
/// moment longer and asks them again instead of sleeping for its pause (5 s). Under load the
/// holder's release can reach the sequencer node well before the others: it goes out first.
#[tokio::test]
async fn a_woken_fenced_waiter_asks_again_the_nodes_the_release_has_not_reached() {
    let nodes = cluster(3);
    let resource = sequenced_on_node_0("late-fenced");
    let key = format!("redlock:{resource}");
    let held = held_everywhere(&nodes, &redlock(&nodes), &resource).await;
    let waiter = redlock_with(&nodes, |b| {
        b.fencing(true)
            .retry(Retry::new(1_000, Duration::from_secs(5), Duration::ZERO))
    });
    let waiting = wait_for(waiter, &resource, LockOptions::new());
    assert!(flagged_soon(&nodes, &resource).await);
    served_though_the_other_nodes_are_late(&nodes, &key, &[1, 2], held, waiting).await;
}

/// The same with the third node dead: woken in turn, the waiter has the sequencer's vote, a
/// "held" from the late node and an error from the dead one, which loses the vote before the
/// late node is asked again unless "held" counts for asking again as it does with three live
/// nodes.
#[tokio::test]
async fn a_waiter_in_turn_asks_a_late_node_again_while_another_is_dead() {
    let nodes = cluster(3);
    let waiter = patient(&nodes);
    let (resource, key, held) = held_on_node_0(&nodes, "late-and-dead", &waiter).await;
    nodes[2].kill().unwrap();
    let waiting = wait_for(waiter, &resource, LockOptions::new());
    assert!(in_line_soon(&nodes, &key, 1).await);
    served_though_the_other_nodes_are_late(&nodes, &key, &[1], held, waiting).await;
}

/// The same with the third node paused, and a node timeout of 3 s: the waiter asks the late
/// node again while the paused node's SET is still pending, instead of waiting out its node
/// timeout first.
#[tokio::test]
async fn a_waiter_in_turn_asks_a_late_node_again_while_another_is_paused() {
    let nodes = cluster(3);
    let waiter = asking_every(&nodes, Duration::from_secs(3), Duration::from_secs(5));
    let (resource, key, held) = held_on_node_0(&nodes, "late-and-paused", &waiter).await;
    nodes[2].pause().unwrap();
    let waiting = wait_for(waiter, &resource, LockOptions::new());
    // Only the sequencer is asked: a query to the paused node would wait for its timeout.
    let in_line = || {
        nodes[0]
            .query(&["LLEN", &format!("{key}:line")])
            .ok()
            .and_then(|r| r.as_int())
            == Some(1)
    };
    assert!(eventually(Duration::from_secs(5), in_line).await);
    served_though_the_other_nodes_are_late(&nodes, &key, &[1], held, waiting).await;
    nodes[2].resume().unwrap();
}

/// A resource `<prefix>-<i>` sequenced on node 0 (with its key), held by a fresh client, with
/// that client and `waiter` connected first: a holder still dialling a node could lose it to the
/// waiter's first ask, and a waiter's first ask would include dialling.
async fn held_on_node_0(
    nodes: &redlock_tests::Cluster,
    prefix: &str,
    waiter: &Redlock,
) -> (String, String, redlock_core::Lock) {
    let resource = sequenced_on_node_0(prefix);
    let key = format!("redlock:{resource}");
    let holder = redlock(nodes);
    holder.connect().await.unwrap();
    waiter.connect().await.unwrap();
    let held = held_everywhere(nodes, &holder, &resource).await;
    (resource, key, held)
}

/// The first resource `<prefix>-<i>` whose key's sequencer is node 0.
fn sequenced_on_node_0(prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|r| sequencer(&format!("redlock:{r}"), 3) == 0)
        .unwrap_or_default()
}

/// Replaces `key` on the nodes `late` (not its sequencer, node 0) with a foreign value that
/// expires 10 ms later, releases `held`, and asserts that the waiter (which asked already, with
/// a 5 s pause) is served within 2 s: its first try after the release finds those nodes held.
async fn served_though_the_other_nodes_are_late(
    nodes: &redlock_tests::Cluster,
    key: &str,
    late: &[usize],
    held: redlock_core::Lock,
    waiting: tokio::task::JoinHandle<Result<redlock_core::Lock, redlock_core::Error>>,
) {
    for &node in late {
        nodes[node]
            .query(&["SET", key, "previous-holder", "PX", "10"])
            .unwrap();
    }
    release_then_served(
        held,
        waiting,
        Duration::from_secs(2),
        "asked again instead of sleeping for its pause",
    )
    .await;
}

/// Tasks of one process that keep handing a lock to each other (the next one's SETs queued
/// right behind the release's deletes) never shut out a waiter in another process: each of its
/// ten acquisitions gets the lock within its 2 s wait while eight local tasks keep taking turns
/// (they go on completing sections between the other process's turns). A local hand-over that
/// kept the keys on the nodes (lending the lock from task to task) would starve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_hand_overs_do_not_starve_a_waiter_in_another_process() {
    let nodes = cluster(3);
    let local = redlock(&nodes);
    let remote = redlock(&nodes);
    let stop = Arc::new(AtomicBool::new(false));
    let sections = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (local, stop, sections) = (local.clone(), stop.clone(), sections.clone());
        tasks.push(tokio::spawn(async move {
            let options = LockOptions::default().wait(Duration::from_secs(10));
            while !stop.load(Ordering::Relaxed) {
                let lock = local.lock_with("chain", options.clone()).await.unwrap();
                tokio::task::yield_now().await;
                lock.release().await.unwrap();
                sections.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // The local tasks are handing the lock around before the other process asks.
    let busy = eventually(Duration::from_secs(5), || {
        sections.load(Ordering::Relaxed) >= 20
    })
    .await;
    assert!(busy, "the local tasks take turns");
    let before = sections.load(Ordering::Relaxed);
    let options = LockOptions::default().wait(Duration::from_secs(2));
    for _ in 0..10 {
        let lock = remote
            .lock_with("chain", options.clone())
            .await
            .expect("the other process gets its turn");
        lock.release().await.unwrap();
    }
    let during = sections.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    assert!(during > 0, "the local tasks kept taking turns meanwhile");
}

/// Releases `held`; the waiter behind it must be served within `limit` (far below its pause
/// and the ttl), for the reason `why`. Releases what it was served.
async fn release_then_served(
    held: redlock_core::Lock,
    waiting: tokio::task::JoinHandle<Result<redlock_core::Lock, redlock_core::Error>>,
    limit: Duration,
    why: &str,
) {
    let released = Instant::now();
    held.release().await.unwrap();
    let lock = waiting.await.unwrap().expect("the next waiter is served");
    assert!(
        released.elapsed() < limit,
        "{why}: {:?}",
        released.elapsed()
    );
    lock.release().await.unwrap();
}

/// [`release_then_served`] for a waiter that only a release can serve in time: within 3 s.
async fn woken_by_the_release(
    held: redlock_core::Lock,
    waiting: tokio::task::JoinHandle<Result<redlock_core::Lock, redlock_core::Error>>,
) {
    release_then_served(
        held,
        waiting,
        Duration::from_secs(3),
        "woken by the release",
    )
    .await;
}

/// A client that waits for `resource` up to 20 s in a task of its own.
pub(crate) fn wait_for(
    waiter: Redlock,
    resource: &str,
    options: LockOptions,
) -> tokio::task::JoinHandle<Result<redlock_core::Lock, redlock_core::Error>> {
    let resource = resource.to_owned();
    tokio::spawn(async move {
        waiter
            .lock_with(&resource, options.wait(Duration::from_secs(20)))
            .await
    })
}

/// A lock on `resource` taken through its wait queue (another client held it first), as locks
/// are while a resource stays contended: only such a lock's release hands the key over. An
/// uncontended lock's release wakes the next waiter, which asks for itself.
pub(crate) async fn taken_in_turn(
    nodes: &redlock_tests::Cluster,
    resource: &str,
) -> redlock_core::Lock {
    let first = held_everywhere(nodes, &redlock(nodes), resource).await;
    let waiting = wait_for(patient(nodes), resource, LockOptions::new());
    let key = format!("redlock:{resource}");
    assert!(in_line_soon(nodes, &key, 1).await);
    first.release().await.unwrap();
    waiting.await.unwrap().expect("taken in turn")
}

/// Drops every pub/sub connection to `node`: its waiters no longer hear their turn.
pub(crate) fn deafen(node: &redlock_tests::RedisNode) {
    node.query(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .expect("CLIENT KILL");
}

/// A release hands the key over to the waiter in turn on the sequencer node: that node sets
/// the key to the token the waiter registered when it joined the queue, and the waiter, told
/// so, asks only the other nodes. The sequencer node runs one script for the whole hand-over
/// (the release), where a woken waiter's own grant would be a second; the waiter's 5 s pause
/// means it renews nothing meanwhile.
#[tokio::test]
async fn a_release_hands_the_key_over_to_the_waiter_in_turn_on_its_sequencer_node() {
    let nodes = cluster(3);
    let key = "redlock:handed";
    let seq = &nodes[sequencer(key, 3) as usize];
    let held = taken_in_turn(&nodes, "handed").await;
    let waiting = wait_for(patient(&nodes), "handed", LockOptions::new());
    assert!(in_line_soon(&nodes, key, 1).await);
    let scripts_before = command_calls(seq, "evalsha");
    held.release().await.unwrap();
    let lock = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("handed over, not left to a 5 s pause")
        .unwrap()
        .expect("granted");
    assert_eq!(
        command_calls(seq, "evalsha") - scripts_before,
        1,
        "only the release ran a script on the sequencer node"
    );
    assert_eq!(command_calls(seq, "psetex"), 1, "one hand-over");
    let on_sequencer = seq.get(key).unwrap().expect("the key is held");
    let others = nodes
        .iter()
        .filter(|n| n.get(key).unwrap().as_deref() == Some(on_sequencer.as_str()))
        .count();
    assert!(others >= 2, "one token on a quorum: {others} nodes");
    assert!(lock.is_valid());
    let release = lock.release().await.unwrap();
    assert!(release.released >= 2, "{release:?}");
}

/// Puts `waiter` at the end of `key`'s line on its sequencer node `seq`, with `entry` (its lease
/// in ms of node time, then optionally `<ttl> <token> <ask>`) as a client's join would.
fn stand_in_line(seq: &redlock_tests::RedisNode, key: &str, waiter: &str, entry: &str) {
    seq.query(&["RPUSH", &format!("{key}:line"), waiter])
        .unwrap();
    seq.query(&["HSET", &format!("{key}:line:entries"), waiter, entry])
        .unwrap();
}

/// With `held` holding `resource`, a dead waiter (`entry`, a lease that ran out) first in line
/// and a live one behind it: the release must serve the live waiter within 3 s (its pause is
/// 5 s), and the dead entry must have left the queue.
async fn served_past_a_dead_waiter(
    nodes: &redlock_tests::Cluster,
    resource: &str,
    held: redlock_core::Lock,
    entry: &str,
) {
    let key = format!("redlock:{resource}");
    stand_in_line(&nodes[sequencer(&key, 3) as usize], &key, "ghost", entry);
    let waiting = wait_for(patient(nodes), resource, LockOptions::new());
    assert!(in_line_soon(nodes, &key, 2).await);
    release_then_served(
        held,
        waiting,
        Duration::from_secs(3),
        "served past the dead waiter",
    )
    .await;
    assert_eq!(queued(nodes, &key), 0, "the dead entry left the queue");
}

/// A waiter that died at the head of the line (an entry whose lease already ran out, with a
/// registered token) is skipped by the release of a contended lock: the key goes to the live
/// waiter behind it at once, not to a token nobody uses, and the dead entry leaves the queue.
/// Without the release's check the key would stay handed to the dead waiter for its ttl (or,
/// woken instead, the live waiter would sleep through its 5 s pause).
#[tokio::test]
async fn a_release_skips_a_dead_waiter_and_hands_over_to_the_next() {
    let nodes = cluster(3);
    let key = "redlock:skipped";
    let seq = &nodes[sequencer(key, 3) as usize];
    let held = taken_in_turn(&nodes, "skipped").await;
    // Dead since 1970: first in line, with a token a hand-over would set.
    served_past_a_dead_waiter(&nodes, "skipped", held, "1 30000 ghost-token 0").await;
    assert_eq!(
        command_calls(seq, "psetex"),
        1,
        "one hand-over, not to the ghost"
    );
}

/// The release of a lock taken uncontended wakes the live waiter behind a dead one at the head
/// of the line: the dead entry (lease run out) leaves the queue, and the live waiter, woken, is
/// served long before its 5 s pause. Without the release's check the wake-up would go to the
/// dead waiter.
#[tokio::test]
async fn an_uncontended_release_wakes_the_live_waiter_behind_a_dead_one() {
    let nodes = cluster(3);
    let held = held_everywhere(&nodes, &redlock(&nodes), "behind").await;
    served_past_a_dead_waiter(&nodes, "behind", held, "1").await;
}

/// A live waiter at the head of the line that registered no token for a hand-over (an entry
/// with a lease only) is not handed the key: the release frees it and leaves that waiter first
/// in line, to be woken and ask for itself.
#[tokio::test]
async fn a_release_frees_the_key_for_a_head_with_no_token() {
    let nodes = cluster(3);
    let key = "redlock:tokenless";
    let seq = &nodes[sequencer(key, 3) as usize];
    let held = taken_in_turn(&nodes, "tokenless").await;
    stand_in_line(seq, key, "tokenless", "99999999999999");
    let handed_before = command_calls(seq, "psetex");
    held.release().await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || seq.get(key).unwrap().is_none()).await,
        "freed on the sequencer node"
    );
    assert_eq!(
        command_calls(seq, "psetex"),
        handed_before,
        "nothing handed over"
    );
    let head = seq.query(&["LINDEX", &format!("{key}:line"), "0"]).unwrap();
    assert_eq!(head.as_str(), Some("tokenless"), "still first in line");
}

/// A waiter that did not hear its hand-over (its pub/sub connection dropped) finds it the next
/// time it asks the sequencer node, after its 300 ms pause, and takes the lock then. Without
/// that, the key would stay handed to a token nobody uses until its 10 s ttl ran out.
#[tokio::test]
async fn a_waiter_that_missed_its_hand_over_takes_it_when_it_asks_again() {
    let nodes = cluster(3);
    let key = "redlock:unheard";
    let held = taken_in_turn(&nodes, "unheard").await;
    let waiter = redlock_with(&nodes, |b| {
        b.retry(Retry::new(
            1_000,
            Duration::from_millis(300),
            Duration::ZERO,
        ))
    });
    let waiting = wait_for(waiter, "unheard", LockOptions::new());
    assert!(in_line_soon(&nodes, key, 1).await);
    deafen(&nodes[sequencer(key, 3) as usize]);
    release_then_served(
        held,
        waiting,
        Duration::from_secs(3),
        "took the hand-over at its next ask, not at the ttl",
    )
    .await;
}

/// A waiter cancelled after a release handed it the key, before it took it (it did not hear:
/// its pub/sub connection dropped), frees the key as it leaves the queue: nobody waits for
/// the 10 s ttl of a token nobody holds.
#[tokio::test]
async fn a_waiter_cancelled_after_its_hand_over_frees_the_key() {
    let nodes = cluster(3);
    let key = "redlock:abandoned";
    let seq = &nodes[sequencer(key, 3) as usize];
    let held = taken_in_turn(&nodes, "abandoned").await;
    let holder_token = seq.get(key).unwrap().expect("held");
    let waiting = wait_for(patient(&nodes), "abandoned", LockOptions::new());
    assert!(in_line_soon(&nodes, key, 1).await);
    deafen(seq);
    held.release().await.unwrap();
    // The release returned at the quorum: the sequencer node's answer may still be on its way
    // (the first hand-over on a node also sends the script's body once).
    let handed_over = eventually(Duration::from_secs(2), || {
        seq.get(key)
            .unwrap()
            .is_some_and(|token| token != holder_token)
    })
    .await;
    assert!(
        handed_over,
        "the release handed the key over on the sequencer node: {:?}",
        seq.get(key)
    );
    waiting.abort();
    assert!(
        eventually(Duration::from_secs(2), || seq.get(key).unwrap().is_none()).await,
        "the cancelled waiter freed the key"
    );
    assert!(
        redlock(&nodes)
            .try_lock("abandoned")
            .await
            .unwrap()
            .is_some()
    );
}

/// A lock handed over counts its validity from when the waiter registered its token (before
/// any node could set the key to it), not from the hand-over: a waiter that stood in line for
/// a second for a 3 s lock holds it for at most 2 s.
#[tokio::test]
async fn a_handed_over_lock_counts_its_validity_from_the_registration() {
    let nodes = cluster(3);
    let key = "redlock:counted";
    let held = taken_in_turn(&nodes, "counted").await;
    let waiting = wait_for(
        patient(&nodes),
        "counted",
        LockOptions::new().ttl(Duration::from_secs(3)),
    );
    assert!(in_line_soon(&nodes, key, 1).await);
    // Time in line is what is measured here: nothing to wait for but the clock.
    tokio::time::sleep(Duration::from_secs(1)).await;
    held.release().await.unwrap();
    let lock = waiting.await.unwrap().expect("granted");
    let remaining = lock.remaining();
    assert!(
        remaining <= Duration::from_secs(2),
        "validity counted from the registration: {remaining:?} left of 3 s"
    );
    assert!(remaining > Duration::from_millis(1_500), "{remaining:?}");
    lock.release().await.unwrap();
}

/// A waiter that keeps asking while it stands in line counts a hand-over's validity from its
/// last ask before the hand-over, not from when it first joined: a waiter that stood in line
/// for 2.5 s, longer than its 2.5 s ttl, asking every 2 s, takes the key handed over to it
/// with about 2 s of validity and without asking the sequencer node again. Counted from its
/// first ask it would have no validity left: it would give the key back and ask again.
#[tokio::test]
async fn a_waiter_in_line_longer_than_its_ttl_still_takes_the_hand_over() {
    let nodes = cluster(3);
    let key = "redlock:long-line";
    let seq = &nodes[sequencer(key, 3) as usize];
    let held = taken_in_turn(&nodes, "long-line").await;
    let waiter = redlock_with(&nodes, |b| {
        b.retry(Retry::new(1_000, Duration::from_secs(2), Duration::ZERO))
    });
    let waiting = wait_for(
        waiter,
        "long-line",
        LockOptions::new().ttl(Duration::from_millis(2_500)),
    );
    assert!(in_line_soon(&nodes, key, 1).await);
    // Time in line is what is measured here: halfway between the waiter's asks (at about 0 s
    // and 2 s), so that none falls in the hand-over.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let scripts_before = command_calls(seq, "evalsha");
    held.release().await.unwrap();
    let lock = waiting.await.unwrap().expect("granted");
    assert_eq!(
        command_calls(seq, "evalsha") - scripts_before,
        1,
        "taken as handed over, without asking the sequencer node again"
    );
    let remaining = lock.remaining();
    assert!(
        remaining > Duration::from_millis(1_200) && remaining <= Duration::from_millis(2_100),
        "validity from the last ask: {remaining:?}"
    );
    lock.release().await.unwrap();
}

/// A lock taken uncontended (every node asked at once) releases with the cheaper call that
/// only wakes the next waiter, which then asks for itself: no hand-over, so the uncontended
/// path (every lock of a quiet key) pays nothing for it. Only the locks that follow, taken
/// through the queue, hand over.
#[tokio::test]
async fn an_uncontended_lock_wakes_the_next_waiter_without_handing_over() {
    let nodes = cluster(3);
    let key = "redlock:quiet";
    let seq = &nodes[sequencer(key, 3) as usize];
    let held = held_everywhere(&nodes, &redlock(&nodes), "quiet").await;
    let waiting = wait_for(patient(&nodes), "quiet", LockOptions::new());
    assert!(in_line_soon(&nodes, key, 1).await);
    woken_by_the_release(held, waiting).await;
    assert_eq!(command_calls(seq, "psetex"), 0, "no hand-over");
}

/// The release of a lock nobody waits for deletes the key and wakes nobody: the sequencer node
/// finds neither a wait queue nor a waiting flag, and publishes nothing and reads no queue.
/// (Publishing to every release's listeners and looking up the head of the queue on every
/// release cost the nodes about 7 % of the benchmark's B256 row.)
#[tokio::test]
async fn a_release_nobody_waits_for_wakes_nobody() {
    let nodes = cluster(3);
    let key = "redlock:alone";
    let seq = &nodes[sequencer(key, 3) as usize];
    let lock = redlock(&nodes).lock("alone").await.unwrap();
    lock.release().await.unwrap();
    assert!(crate::support::gone_everywhere(&nodes, key).await);
    assert_eq!(command_calls(seq, "publish"), 0, "nobody to announce to");
    assert_eq!(command_calls(seq, "lindex"), 0, "no queue to look at");
}

/// A fenced waiter (which waits without the queue, listening to every release of the key)
/// flags the key as waited for when the sequencer node refuses it, so the release of an
/// uncontended lock still announces itself and wakes it long before its 5 s pause.
#[tokio::test]
async fn a_release_wakes_a_fenced_waiter() {
    let nodes = cluster(3);
    let waiter = redlock_with(&nodes, |b| {
        b.fencing(true)
            .retry(Retry::new(1_000, Duration::from_secs(5), Duration::ZERO))
    });
    broadcast_waiter_is_woken(&nodes, "fenced-wake", || {
        wait_for(waiter, "fenced-wake", LockOptions::new())
    })
    .await;
}

/// A `lock_many` waiter is woken by the release of one of its keys, as a fenced one is (see
/// above): the flag is set for each of its keys.
#[tokio::test]
async fn a_release_wakes_a_lock_many_waiter() {
    let nodes = cluster(3);
    let waiter = patient(&nodes);
    broadcast_waiter_is_woken(&nodes, "many-wake", || {
        tokio::spawn(async move {
            waiter
                .lock_many_with(
                    ["many-wake", "many-wake-2"],
                    LockOptions::new().wait(Duration::from_secs(20)),
                )
                .await
        })
    })
    .await;
}

/// Holds `resource` uncontended while the waiter that `wait` starts (it waits for `resource`
/// with a 5 s pause) is refused by the sequencer node, which then flags the key; the waiter is
/// served within 3 s of the release.
async fn broadcast_waiter_is_woken(
    nodes: &redlock_tests::Cluster,
    resource: &str,
    wait: impl FnOnce() -> tokio::task::JoinHandle<Result<redlock_core::Lock, redlock_core::Error>>,
) {
    let held = held_everywhere(nodes, &redlock(nodes), resource).await;
    let waiting = wait();
    let refused = flagged_soon(nodes, resource).await;
    assert!(refused, "the refused waiter flagged the key");
    woken_by_the_release(held, waiting).await;
}

/// The waiting flag lives only while someone waits (README, operational contract): a fenced
/// waiter sets it for two leases (40 s for these clients), and the release that wakes it deletes
/// it, whether the lock was taken uncontended or in turn (the waiter sets it again if refused
/// again). A waiter in the wait queue sets none: the queue says it waits.
#[tokio::test]
async fn the_waiting_flag_is_deleted_by_the_release_that_wakes_its_waiter() {
    let nodes = cluster(3);
    let fenced = || {
        redlock_with(&nodes, |b| {
            b.fencing(true)
                .retry(Retry::new(1_000, Duration::from_secs(5), Duration::ZERO))
        })
    };
    // Stored on every node first: `lock` returns at the quorum, and a waiter's first round
    // (every node at once) that beat the holder's last SET to the sequencer would be granted
    // there and never flag the key (see `held_everywhere`).
    let uncontended = held_everywhere(&nodes, &fenced(), "flagged").await;
    let waiting = wait_for(fenced(), "flagged", LockOptions::new());
    assert!(flagged_soon(&nodes, "flagged").await);
    uncontended.release().await.unwrap();
    let in_turn = waiting.await.unwrap().expect("woken by the release");
    assert!(
        unflagged(&nodes, "flagged").await,
        "deleted by an uncontended lock's release"
    );

    let waiting = wait_for(fenced(), "flagged", LockOptions::new());
    assert!(flagged_soon(&nodes, "flagged").await);
    in_turn.release().await.unwrap();
    let last = waiting.await.unwrap().expect("woken by the release");
    assert!(
        unflagged(&nodes, "flagged").await,
        "deleted by a contended lock's release"
    );
    last.release().await.unwrap();

    let held = held_everywhere(&nodes, &redlock(&nodes), "queued").await;
    let waiting = wait_for(patient(&nodes), "queued", LockOptions::new());
    assert!(in_line_soon(&nodes, "redlock:queued", 1).await);
    assert!(!flagged(&nodes, "queued"), "the queue says it");
    woken_by_the_release(held, waiting).await;
}

/// Whether `resource`'s waiting flag is set on its sequencer node.
fn flagged(nodes: &redlock_tests::Cluster, resource: &str) -> bool {
    let key = format!("redlock:{resource}");
    nodes[sequencer(&key, 3) as usize]
        .get(&format!("{key}:queue:waiting"))
        .expect("GET answers")
        .is_some()
}

/// Whether `resource`'s waiting flag is gone within a second (it was set for 40 s).
/// Whether a waiter flags `resource` within 12 s: its first ask does at once, unless the
/// machine stalled past its 200 ms node timeout; then its next ask does, after its 5 s pause.
/// (The flag, not the time, is what the callers check.)
async fn flagged_soon(nodes: &redlock_tests::Cluster, resource: &str) -> bool {
    eventually(Duration::from_secs(12), || flagged(nodes, resource)).await
}

async fn unflagged(nodes: &redlock_tests::Cluster, resource: &str) -> bool {
    eventually(Duration::from_secs(1), || !flagged(nodes, resource)).await
}

/// The key's sequencer node is paused: nobody can stand in line, and a waiter asks every node
/// at once rather than the sequencer first, so it does not wait out the sequencer's node timeout
/// (1 s here) at every ask: served within half a second of the release.
#[tokio::test]
async fn a_paused_sequencer_node_costs_a_waiter_no_node_timeout_per_ask() {
    let nodes = cluster(3);
    let waiter = asking_every(&nodes, Duration::from_secs(1), Duration::from_millis(50));
    let (resource, _, held) = held_on_node_0(&nodes, "paused-line", &waiter).await;
    nodes[0].pause().unwrap();
    let sets_before = command_calls(&nodes[1], "set");
    let waiting = wait_for(waiter, &resource, LockOptions::new());
    // The waiter has asked, and waited out the sequencer at least once, before the release.
    assert!(
        eventually(Duration::from_secs(10), || command_calls(&nodes[1], "set")
            > sets_before + 1)
        .await
    );
    release_then_served(
        held,
        waiting,
        Duration::from_millis(500),
        "waited out the paused sequencer",
    )
    .await;
    nodes[0].resume().unwrap();
}

/// A waiter that stood in the sequencer's line and was then granted the lock around it (the
/// sequencer paused meanwhile) leaves the line: once the sequencer resumes, the waiter's entry is
/// gone, instead of heading the line until its lease runs out.
#[tokio::test]
async fn a_waiter_granted_around_a_paused_sequencer_leaves_its_line() {
    let nodes = cluster(3);
    let waiter = asking_every(
        &nodes,
        Duration::from_millis(300),
        Duration::from_millis(50),
    );
    let (resource, key, held) = held_on_node_0(&nodes, "around-the-line", &waiter).await;
    let waiting = wait_for(waiter, &resource, LockOptions::new());
    assert!(in_line_soon(&nodes, &key, 1).await);
    nodes[0].pause().unwrap();
    let sets_before = command_calls(&nodes[1], "set");
    // The waiter has timed out on the sequencer and asked the other nodes since.
    assert!(
        eventually(Duration::from_secs(5), || command_calls(&nodes[1], "set")
            > sets_before)
        .await
    );
    held.release().await.unwrap();
    let lock = waiting.await.unwrap().expect("served by the live nodes");
    nodes[0].resume().unwrap();
    assert!(
        eventually(Duration::from_millis(800), || queued(&nodes, &key) == 0).await,
        "the waiter still heads the sequencer's line"
    );
    lock.release().await.unwrap();
}

/// A waiter in the sequencer's line whose ask met the sequencer paused, and that the other nodes
/// then granted in the same attempt, leaves the line too. The holder, which took the lock in
/// turn, releases while the sequencer is paused; its release runs there only once the node
/// resumes, and hands the key over to the head of the line: our waiter's registered token. The
/// waiter's leave frees it. Taken for out of the line, the waiter left the key held there for
/// that token until its ttl ran out (found by the benchmark's row C32f, which pauses the nodes
/// in turn).
#[tokio::test]
async fn a_waiter_granted_after_its_ask_met_a_paused_sequencer_leaves_no_key_there() {
    let nodes = cluster(3);
    let resource = sequenced_on_node_0("asked-while-paused");
    let key = format!("redlock:{resource}");
    let held = taken_in_turn(&nodes, &resource).await;
    let waiter = asking_every(
        &nodes,
        Duration::from_millis(300),
        Duration::from_millis(50),
    );
    waiter.connect().await.unwrap();
    let waiting = wait_for(waiter, &resource, LockOptions::new());
    assert!(in_line_soon(&nodes, &key, 1).await);
    nodes[0].pause().unwrap();
    // Released on the other nodes at once: the waiter's next ask, which waits out the paused
    // sequencer first, finds them free. Taken in turn, the lock may hold two nodes only (its ask
    // reached the third before the previous holder's release did); with the sequencer paused,
    // its release then deletes one key and cannot count a quorum.
    let released = held.release().await;
    assert!(
        matches!(released, Ok(_) | Err(Error::NoQuorum { .. })),
        "{released:?}"
    );
    let lock = waiting.await.unwrap().expect("served by the live nodes");
    nodes[0].resume().unwrap();
    lock.release().await.unwrap();
    assert!(
        eventually(Duration::from_secs(2), || nodes[0]
            .get(&key)
            .unwrap()
            .is_none())
        .await,
        "a key is left on the sequencer: {:?}",
        nodes[0].get(&key)
    );
    assert_eq!(queued(&nodes, &key), 0, "the waiter still stands in line");
}

/// A waiter that stops waiting leaves the sequencer's line even when its first try to leave gets
/// no answer: the leave is tried again, as a background release is. The sequencer sits behind a
/// proxy that holds the leave (the node looks frozen), then drops it with the connection, as a
/// paused node's backlog drops commands whose caller gave up before they were written. Left in
/// line (its lease runs 8 s), the waiter would be handed the key at the next release there, for
/// a token nobody frees. The node timeout is 1 s, so that a loaded machine does not keep the
/// waiter out of the line by timing out its asks through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_that_gets_no_answer_is_tried_again() {
    let nodes = cluster(3);
    let resource = sequenced_on_node_0("leave-again");
    let key = format!("redlock:{resource}");
    let proxy = redlock_tests::Proxy::start(nodes[0].port()).expect("proxy starts");
    let waiter = Redlock::builder()
        .nodes([proxy.url(), nodes[1].url(), nodes[2].url()])
        .ttl(Duration::from_secs(10))
        .node_timeout(Duration::from_secs(1))
        .retry(Retry::new(1_000, Duration::from_secs(2), Duration::ZERO))
        .build()
        .unwrap();
    waiter.connect().await.unwrap();
    let held = held_everywhere(&nodes, &redlock(&nodes), &resource).await;
    let waiting = wait_for(waiter, &resource, LockOptions::new());
    assert!(in_line_soon(&nodes, &key, 1).await);
    proxy.set_mode(redlock_tests::ProxyMode::Blackhole);
    waiting.abort();
    let held_back = eventually(Duration::from_secs(2), || proxy.blackholed_bytes() > 0).await;
    assert!(held_back, "the leave reached the proxy");
    // The first try is lost with its connection; new connections go through.
    proxy.reset_connections();
    proxy.heal();
    // Tried again a node timeout after the first try failed; left in line, the entry would stay
    // for two leases (16 s).
    assert!(
        eventually(Duration::from_secs(5), || queued(&nodes, &key) == 0).await,
        "the waiter still stands in the sequencer's line"
    );
    held.release().await.unwrap();
}

/// A client that found a key's sequencer node paused remembers it for a while: its next wait, on
/// another key of that node, asks every node at once from the start instead of waiting out the
/// node's 1 s timeout twice (subscribing there, then asking there first) to find out again.
#[tokio::test]
async fn a_client_remembers_a_paused_sequencer_node_for_its_next_wait() {
    let nodes = cluster(3);
    let waiter = asking_every(&nodes, Duration::from_secs(1), Duration::from_millis(50));
    let (resource, _, held) = held_on_node_0(&nodes, "silent-line", &waiter).await;
    nodes[0].pause().unwrap();
    // The first wait finds the sequencer silent.
    let sets_before = command_calls(&nodes[1], "set");
    let waiting = wait_for(waiter.clone(), &resource, LockOptions::new());
    assert!(
        eventually(Duration::from_secs(10), || command_calls(&nodes[1], "set")
            > sets_before + 1)
        .await
    );
    held.release().await.unwrap();
    waiting.await.unwrap().unwrap().release().await.unwrap();
    // The next wait, on a key of the same sequencer whose channel nobody listens to yet.
    let other = sequenced_on_node_0("silent-line-too");
    let held = redlock(&nodes).lock(&other).await.unwrap();
    let sets_before = command_calls(&nodes[1], "set");
    let waiting = wait_for(waiter, &other, LockOptions::new());
    assert!(
        eventually(Duration::from_secs(10), || command_calls(&nodes[1], "set")
            > sets_before)
        .await
    );
    release_then_served(
        held,
        waiting,
        Duration::from_millis(800),
        "found the paused sequencer out again",
    )
    .await;
    nodes[0].resume().unwrap();
}

/// `resource` locked by `holder` on the nodes other than its key's sequencer node, where the
/// key is left free: a split vote's winner. Another attempt's SET holds the sequencer node when
/// the holder's arrives, and is undone.
async fn held_on_the_other_nodes(
    nodes: &redlock_tests::Cluster,
    holder: &Redlock,
    resource: &str,
) -> redlock_core::Lock {
    let key = format!("redlock:{resource}");
    let seq = usize::try_from(sequencer(&key, 3)).unwrap();
    nodes[seq]
        .query(&["SET", &key, "another-attempt", "PX", "10000"])
        .unwrap();
    let lock = holder.lock(resource).await.expect("a quorum elsewhere");
    // `lock` returns at the quorum: the holder's SET there may still be on its way, and must be
    // refused before the other attempt's key goes.
    assert!(
        eventually(Duration::from_secs(2), || command_calls(&nodes[seq], "set")
            >= 2)
        .await,
        "the holder's SET reached the sequencer node"
    );
    assert_eq!(
        crate::support::values(nodes, &key)[seq].as_deref(),
        Some("another-attempt"),
        "the holder has nothing on the sequencer node"
    );
    nodes[seq].query(&["DEL", &key]).unwrap();
    lock
}

/// A split vote: the waiter's first round won the key's sequencer node and lost the vote, so the
/// holder holds nothing on that node, and its release there has no key of its own to compare.
/// The waiter flags the key there and listens to every release of it, and the holder's release,
/// finding the key free there, wakes it: it takes the lock at once, not at its next ask (a 1 s
/// pause here).
#[tokio::test]
async fn the_loser_of_a_split_vote_is_woken_by_the_winners_release() {
    let nodes = cluster(3);
    let key = "redlock:split";
    let seq = usize::try_from(sequencer(key, 3)).unwrap();
    let holder = redlock(&nodes);
    let waiter = redlock_with(&nodes, |b| {
        b.retry(Retry::new(30, Duration::from_secs(1), Duration::ZERO))
    });
    let lock = held_on_the_other_nodes(&nodes, &holder, "split").await;

    let waiting = tokio::spawn(async move {
        let lock = waiter.lock("split").await;
        (lock, Instant::now())
    });
    // Its first round wins the free sequencer node, loses the vote, and flags the key there.
    let flag = format!("{key}:queue:waiting");
    assert!(
        eventually(Duration::from_secs(3), || nodes[seq]
            .get(&flag)
            .unwrap()
            .is_some())
        .await,
        "the waiter flagged the key"
    );

    let released = Instant::now();
    lock.release().await.expect("release");
    let (taken, at) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("bounded")
        .unwrap();
    let taken = taken.expect("the waiter took the lock");
    let after = at.saturating_duration_since(released);
    assert!(
        after < Duration::from_millis(300),
        "taken {after:?} after the release"
    );
    taken.release().await.expect("release");
}

/// The same split, but the holder's release reaches the sequencer node while the loser's own SET
/// is still there (its attempt not yet decided): the release finds the key taken and wakes
/// nobody, and the loser flags the key after it. Once flagged, the loser looks at the other
/// nodes, finds them free and asks again at once, instead of sleeping out its pause (5 s here).
/// The loser reaches the other nodes through proxies that hold their replies 300 ms, so its
/// attempt is decided only after the release, whatever the machine's speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loser_of_a_split_vote_finds_a_release_that_woke_nobody() {
    let nodes = cluster(3);
    let key = "redlock:split-unheard";
    let seq = usize::try_from(sequencer(key, 3)).unwrap();
    let proxies = ProxySet::new(&nodes).expect("proxies start");
    let waiter = Redlock::builder()
        .nodes(proxies.urls())
        .ttl(Duration::from_secs(10))
        .node_timeout(Duration::from_secs(2))
        .retry(Retry::new(30, Duration::from_secs(5), Duration::ZERO))
        .build()
        .unwrap();
    // Its connections are open before its replies are held back.
    waiter
        .lock("warm-up")
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let holder = redlock(&nodes);
    let lock = held_on_the_other_nodes(&nodes, &holder, "split-unheard").await;

    let others: Vec<usize> = (0..3).filter(|&i| i != seq).collect();
    proxies.set_some(
        &others,
        ProxyMode::delay_replies(Duration::from_millis(300), Duration::ZERO),
    );
    let waiting = tokio::spawn(async move {
        let lock = waiter.lock("split-unheard").await;
        (lock, Instant::now())
    });
    // The waiter's SET took the free sequencer node; its other votes are 300 ms away.
    assert!(
        eventually(Duration::from_secs(2), || nodes[seq]
            .get(key)
            .unwrap()
            .is_some())
        .await,
        "the waiter's SET reached the sequencer node"
    );
    let released = Instant::now();
    lock.release().await.expect("release");
    let flag = format!("{key}:queue:waiting");
    assert!(
        nodes[seq].get(&flag).unwrap().is_none(),
        "released before the waiter flagged the key"
    );
    let (taken, at) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("bounded")
        .unwrap();
    let taken = taken.expect("the waiter took the lock");
    let after = at.saturating_duration_since(released);
    // Its first round is decided 300 ms on, the look at the other nodes and the next round
    // take 300 ms each: about 0.9 s. Sleeping out the pause would take 5.3 s or more.
    assert!(
        after < Duration::from_secs(3),
        "taken {after:?} after the release"
    );
    taken.release().await.expect("release");
}
