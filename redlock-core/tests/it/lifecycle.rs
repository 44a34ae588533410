//! Lifecycle: lost-lock signal, auto-extension, scoped `run` (DESIGN.md §3.4).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use redlock_core::{AutoExtend, Error, LockOptions};

use crate::support::{cluster, command_calls, eventually, key_count, redlock, redlock_with};

/// `lost()` fires at the local deadline even when every node is unreachable: it needs no reply.
#[tokio::test]
async fn lost_fires_at_the_deadline_with_all_nodes_frozen() {
    let nodes = cluster(3);
    let redlock = redlock_with(&nodes, |b| {
        b.ttl(Duration::from_millis(400))
            .node_timeout(Duration::from_millis(50))
    });
    let lock = redlock.lock("lost").await.unwrap();
    let lost = lock.lost();
    for node in nodes.iter() {
        node.pause().unwrap();
    }
    tokio::time::timeout(Duration::from_secs(3), lost.clone())
        .await
        .expect("lost fires");
    assert!(Instant::now() >= lock.deadline());
    assert!(!lock.is_valid());
    for node in nodes.iter() {
        node.resume().unwrap();
    }
    drop(lock);
}

/// Auto-extension extends at a third of the ttl (snapped early onto a grid of an eighth of
/// that), by the whole ttl: with a 3 s ttl, the first extension reaches a node between 0.875 and
/// 1 s after `auto_extend`, and resets the key's expiry to 3 s (`MONITOR` shows the script's
/// `PEXPIRE`). The band allows for scheduling; a half or a quarter of the ttl falls outside it.
#[tokio::test]
async fn auto_extension_runs_at_a_third_of_the_ttl() {
    let nodes = cluster(3);
    let redlock = redlock_with(&nodes, |b| b.ttl(Duration::from_secs(3)));
    let lock = redlock.lock("third").await.unwrap();
    let seen = crate::support::monitor(&nodes[0], Duration::from_secs(10));
    let started = Instant::now();
    lock.auto_extend(AutoExtend::new());
    // Read the monitor off the runtime's thread, which the watchdog needs.
    let (first, after) = tokio::task::spawn_blocking(move || {
        loop {
            let line = seen
                .recv_timeout(Duration::from_secs(3))
                .expect("an extension within a ttl");
            if line.contains("\"PEXPIRE\" \"redlock:third\"") {
                return (line, started.elapsed());
            }
        }
    })
    .await
    .unwrap();
    assert!(
        (Duration::from_millis(800)..Duration::from_millis(1_250)).contains(&after),
        "first extension after {after:?}"
    );
    assert!(first.contains("\"3000\""), "extended by the ttl: {first}");
    lock.release().await.unwrap();
}

/// Auto-extension keeps a lock for ten times its ttl while the nodes are healthy; nobody else
/// can take it meanwhile, and `lost()` does not fire.
#[tokio::test]
async fn auto_extension_holds_a_lock_for_ten_ttls() {
    let nodes = cluster(3);
    let ttl = Duration::from_millis(300);
    let redlock = redlock_with(&nodes, |b| {
        b.ttl(ttl).node_timeout(Duration::from_millis(50))
    });
    let other = redlock_with(&nodes, |b| b.ttl(ttl));
    let lock = redlock.lock("kept").await.unwrap();
    lock.auto_extend(AutoExtend::new());
    let first_deadline = lock.deadline();
    let mut lost = std::pin::pin!(lock.lost());
    let until = Instant::now() + ttl * 10;
    while Instant::now() < until {
        tokio::select! {
            () = &mut lost => panic!("lock lost while nodes were healthy"),
            () = tokio::time::sleep(ttl / 2) => {}
        }
        assert!(
            other.try_lock("kept").await.unwrap().is_none(),
            "someone else got it"
        );
    }
    assert!(lock.is_valid());
    assert!(lock.deadline() > first_deadline + ttl * 8);
    lock.release().await.unwrap();
    assert!(eventually(Duration::from_secs(2), || key_count(&nodes) == 0).await);
}

/// With `max_hold`, auto-extension stops and the lock is lost at the last deadline, no sooner
/// than the bound minus drift.
#[tokio::test]
async fn auto_extension_stops_at_max_hold() {
    let nodes = cluster(3);
    let ttl = Duration::from_millis(300);
    let redlock = redlock_with(&nodes, |b| {
        b.ttl(ttl).node_timeout(Duration::from_millis(50))
    });
    let lock = redlock.lock("bounded").await.unwrap();
    let started = Instant::now();
    lock.auto_extend(AutoExtend::new().max_hold(Duration::from_millis(900)));
    tokio::time::timeout(Duration::from_secs(5), lock.lost())
        .await
        .expect("lost after max_hold");
    let held = started.elapsed();
    assert!(
        held >= Duration::from_millis(800),
        "extended until max_hold: {held:?}"
    );
    assert!(
        held <= Duration::from_millis(900) + ttl,
        "not past max_hold: {held:?}"
    );
    drop(lock);
}

/// `run` drops the user future within a small bound after the deadline when a majority of
/// nodes is paused mid-hold, and returns `Error::Lost`.
#[tokio::test]
async fn run_drops_the_work_when_the_lock_is_lost() {
    let nodes = cluster(3);
    let ttl = Duration::from_millis(400);
    let redlock = redlock_with(&nodes, |b| {
        b.ttl(ttl).node_timeout(Duration::from_millis(50))
    });
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let finished = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    let run = {
        let (redlock, finished, dropped) = (redlock.clone(), finished.clone(), dropped.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            let out = redlock
                .run("scoped", |lock| async move {
                    let _on_drop = SetOnDrop(dropped);
                    started_tx.send(lock.deadline()).unwrap();
                    std::future::pending::<()>().await;
                    finished.store(true, Ordering::SeqCst);
                })
                .await;
            (out, t0)
        })
    };
    let first_deadline = started_rx.await.unwrap();
    nodes[0].pause().unwrap();
    nodes[1].pause().unwrap();
    let (out, _) = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("bounded")
        .unwrap();
    let returned = Instant::now();
    assert!(matches!(out, Err(Error::Lost { .. })), "{out:?}");
    assert!(
        dropped.load(Ordering::SeqCst),
        "the work future was dropped"
    );
    assert!(!finished.load(Ordering::SeqCst));
    // Extensions after the pause fail, so the deadline is at most one extension later.
    assert!(
        returned <= first_deadline + ttl + Duration::from_millis(300),
        "dropped soon after the deadline"
    );
    nodes[0].resume().unwrap();
    nodes[1].resume().unwrap();
}

/// `run` returns the work's output and releases the lock.
#[tokio::test]
async fn run_returns_the_output_and_releases() {
    let nodes = cluster(3);
    let redlock = redlock(&nodes);
    let out = redlock
        .run("scoped-ok", |lock| async move {
            assert!(lock.is_valid());
            lock.resource().to_owned()
        })
        .await
        .unwrap();
    assert_eq!(out, "scoped-ok");
    assert!(eventually(Duration::from_secs(2), || key_count(&nodes) == 0).await);
}

/// A panic inside `run`'s work still releases the lock.
#[tokio::test]
async fn run_releases_when_the_work_panics() {
    let nodes = cluster(3);
    let redlock = redlock(&nodes);
    let task = {
        let redlock = redlock.clone();
        tokio::spawn(async move {
            redlock
                .run_with(
                    "panics",
                    LockOptions::new(),
                    AutoExtend::new(),
                    |_lock| async move {
                        panic!("work failed");
                    },
                )
                .await
        })
    };
    assert!(task.await.unwrap_err().is_panic());
    assert!(eventually(Duration::from_secs(2), || key_count(&nodes) == 0).await);
    assert!(redlock.try_lock("panics").await.unwrap().is_some());
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Auto-extended locks are renewed in batches of at most 100 locks: 200 locks held for about
/// nine renewal periods cost a few dozen extension scripts per node, not one per lock per
/// period, none carries more than 100 keys (`MONITOR` shows each call's key count), and no lock
/// is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_extension_batches_renewals_per_node() {
    let nodes = cluster(3);
    let ttl = Duration::from_millis(600);
    let redlock = redlock_with(&nodes, |b| {
        b.ttl(ttl).node_timeout(Duration::from_millis(100))
    });
    let mut locks = Vec::new();
    for i in 0..200 {
        let lock = redlock.lock(&format!("batch:{i}")).await.unwrap();
        lock.auto_extend(AutoExtend::new());
        locks.push(lock);
    }
    let seen = crate::support::monitor(&nodes[0], Duration::from_secs(10));
    let before = command_calls(&nodes[0], "evalsha");
    tokio::time::sleep(ttl * 3).await;
    let calls = command_calls(&nodes[0], "evalsha") - before;
    assert!(locks.iter().all(|l| l.is_valid()), "no lock lost");
    // Unbatched this would be about 200 locks × 9 periods = 1800 calls.
    assert!(
        calls > 0 && calls < 200,
        "extension scripts on one node: {calls}"
    );
    // `"EVALSHA" "<sha>" "<numkeys>" ...`: the key count of every renewal call.
    let sizes: Vec<usize> = seen
        .try_iter()
        .filter_map(|line| {
            let args = line.split("\"EVALSHA\" \"").nth(1)?;
            args.split('"').nth(2)?.parse().ok()
        })
        .collect();
    assert!(!sizes.is_empty(), "renewals seen");
    assert!(sizes.iter().all(|&n| n <= 100), "batch sizes {sizes:?}");
    assert!(sizes.iter().any(|&n| n > 1), "batch sizes {sizes:?}");
    for lock in locks {
        lock.release().await.unwrap();
    }
}
