//! A suspension of the client's system counts against its leases, as it does on the nodes
//! (`clock` in the crate). `Instant` stops while the system is suspended; these tests make the
//! lease clock jump as a suspension would (`test_util::simulate_suspend`, feature `test-util`)
//! against real nodes, whose keys are left as they are: what they check is what the client
//! reports and does.
//!
//! A simulated suspension is process-wide and cannot be undone, so these tests live in a binary
//! of their own and take turns (nextest runs each in its own process anyway).

use std::time::{Duration, Instant};

use redlock_core::{AutoExtend, Error, Redlock, Retry, test_util::simulate_suspend};
use redlock_tests::Cluster;
use tokio::sync::Mutex;

/// One test at a time: a suspension simulated by one would end the others' locks.
static TURNS: Mutex<()> = Mutex::const_new(());

fn cluster() -> Cluster {
    Cluster::start(3).expect("redis-server nodes start")
}

fn redlock(cluster: &Cluster, ttl: Duration, node_timeout: Duration) -> Redlock {
    Redlock::builder()
        .nodes(cluster.urls())
        .ttl(ttl)
        .node_timeout(node_timeout)
        .retry(Retry::none())
        .build()
        .expect("valid configuration")
}

/// Whether `key` is stored on each node, in node order.
fn stored(cluster: &Cluster, key: &str) -> Vec<bool> {
    cluster
        .iter()
        .map(|n| n.get(key).expect("GET").is_some())
        .collect()
}

/// Polls `condition` every 5 ms for up to `within`; true if it held.
async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while !condition() {
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Woken from a suspension longer than its lease, a lock reports itself expired at once (with
/// `Instant` alone it would report nearly its whole lease left), and an extension is refused
/// without reaching the nodes.
#[tokio::test]
async fn a_lock_whose_lease_ran_out_during_a_suspension_is_not_valid_on_waking() {
    let _turn = TURNS.lock().await;
    let nodes = cluster();
    let client = redlock(&nodes, Duration::from_secs(10), Duration::from_millis(200));
    let lock = client.lock("slept").await.expect("lock taken");
    assert!(lock.is_valid());
    assert!(lock.remaining() > Duration::from_secs(9));

    simulate_suspend(Duration::from_secs(11));

    assert!(!lock.is_valid(), "valid after its lease ran out");
    assert_eq!(lock.remaining(), Duration::ZERO);
    assert!(
        lock.deadline() <= Instant::now(),
        "the deadline moved earlier"
    );
    let extended = lock.extend().await;
    assert!(
        matches!(extended, Err(Error::Expired { .. })),
        "{extended:?}"
    );
    // The nodes never slept: our keys are still there, and the release deletes them.
    let release = lock.release().await.expect("release");
    assert!(release.released >= 2, "{release:?}");
}

/// A suspension shorter than the lease leaves the lock valid, with that much less time left.
#[tokio::test]
async fn a_shorter_suspension_takes_its_length_off_the_lease() {
    let _turn = TURNS.lock().await;
    let nodes = cluster();
    let client = redlock(&nodes, Duration::from_secs(30), Duration::from_millis(200));
    let lock = client.lock("napped").await.expect("lock taken");
    let before = lock.remaining();

    simulate_suspend(Duration::from_secs(10));

    let after = lock.remaining();
    assert!(lock.is_valid());
    assert!(
        after <= before - Duration::from_secs(10) && after > before - Duration::from_secs(11),
        "{before:?} left before, {after:?} after a 10 s suspension"
    );
    lock.release().await.expect("release");
}

/// `lost()` and `run` hear of a suspension that outlasted the lease soon after waking (within
/// the half-second check), although their timers, on the monotonic clock, would fire a whole
/// lease later; `run` drops the work.
#[tokio::test]
async fn lost_fires_and_run_drops_the_work_soon_after_waking_from_a_long_suspension() {
    let _turn = TURNS.lock().await;
    let nodes = cluster();
    let client = redlock(&nodes, Duration::from_secs(30), Duration::from_millis(200));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let run = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .run("scoped", |lock| async move {
                    started_tx.send(lock.lost()).ok();
                    std::future::pending::<()>().await;
                })
                .await
        })
    };
    let lost = started_rx.await.expect("the work started");

    simulate_suspend(Duration::from_secs(31));
    let woke = Instant::now();

    tokio::time::timeout(Duration::from_secs(3), lost)
        .await
        .expect("lost() fired soon after waking");
    let out = tokio::time::timeout(Duration::from_secs(3), run)
        .await
        .expect("run returned soon after waking")
        .expect("run's task");
    assert!(matches!(out, Err(Error::Lost { .. })), "{out:?}");
    assert!(woke.elapsed() < Duration::from_secs(3));
}

/// A suspension while the votes come in counts against the validity, as time spent acquiring
/// does: `T1` is read on the lease clock before the first SET, so a quorum that answers after
/// the lease ran out grants nothing, and the attempt undoes its SETs.
#[tokio::test]
async fn a_suspension_during_an_acquisition_counts_against_its_validity() {
    let _turn = TURNS.lock().await;
    let nodes = cluster();
    let client = redlock(&nodes, Duration::from_secs(30), Duration::from_secs(2));
    nodes[0].pause().expect("pause");
    nodes[1].pause().expect("pause");
    let attempt = {
        let client = client.clone();
        tokio::spawn(async move { client.lock("interrupted").await })
    };
    // The SETs are out (T1 was read) once the node that answers stores the key.
    assert!(
        eventually(Duration::from_secs(2), || {
            nodes[2].get("redlock:interrupted").expect("GET").is_some()
        })
        .await,
        "the SET reached the live node"
    );

    simulate_suspend(Duration::from_secs(31));
    nodes[0].resume().expect("resume");
    nodes[1].resume().expect("resume");

    let out = tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .expect("bounded")
        .expect("the attempt's task");
    assert!(matches!(out, Err(Error::Expired { .. })), "{out:?}");
    assert!(
        eventually(Duration::from_secs(2), || stored(
            &nodes,
            "redlock:interrupted"
        )
        .iter()
        .all(|s| !s))
        .await,
        "the failed attempt left a key behind"
    );
}

/// A watchdog that starts after a suspension ate most of the lease extends within half the lease
/// left, not at its first tick (a third of the ttl), which would come after the lease's end.
#[tokio::test]
async fn a_watchdog_started_after_a_suspension_extends_within_half_the_lease_left() {
    let _turn = TURNS.lock().await;
    let nodes = cluster();
    let client = redlock(&nodes, Duration::from_secs(30), Duration::from_millis(200));
    let lock = client.lock("kept").await.expect("lock taken");
    // Every 10 s: the next extension would come when 35 s of the 30 s lease have passed.
    lock.auto_extend(AutoExtend::new());

    simulate_suspend(Duration::from_secs(25));
    assert!(lock.remaining() < Duration::from_secs(5));

    assert!(
        eventually(Duration::from_secs(4), || lock.remaining()
            > Duration::from_secs(25))
        .await,
        "not extended on waking: {:?} left",
        lock.remaining()
    );
    lock.release().await.expect("release");
}

/// A watchdog already waiting for its next tick when the system is suspended is woken by the
/// suspension check and extends while the lease lasts: its tick, delayed by the suspension,
/// would come after the lease's end.
#[tokio::test]
async fn a_waiting_watchdog_is_woken_by_a_suspension_and_extends_in_time() {
    let _turn = TURNS.lock().await;
    let nodes = cluster();
    let client = redlock(&nodes, Duration::from_secs(12), Duration::from_millis(200));
    let lock = client.lock("watched").await.expect("lock taken");
    let first = lock.deadline();
    // Every 4 s: once it extended, the watchdog waits 4 s for its next tick.
    lock.auto_extend(AutoExtend::new());
    assert!(
        eventually(Duration::from_secs(6), || lock.deadline()
            > first + Duration::from_secs(2))
        .await,
        "the first extension"
    );

    // About 2 s of the lease are left, and the next tick is up to 4 s away.
    simulate_suspend(Duration::from_secs(10));
    assert!(lock.remaining() < Duration::from_secs(2));

    assert!(
        eventually(Duration::from_secs(2), || lock.remaining()
            > Duration::from_secs(10))
        .await,
        "not extended on waking: {:?} left",
        lock.remaining()
    );
    assert!(lock.is_valid());
    lock.release().await.expect("release");
}
