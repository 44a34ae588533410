//! A tour of redlock-core: five tasks take turns on one resource, and the demo checks at the end
//! that no two of them ever held it at the same time.
//!
//! Run with
//!
//! ```not_rust
//! cargo run -p redlock-examples --example demo
//! ```
//!
//! Without `REDLOCK_NODES` the demo starts three local `redis-server` nodes on free ports through
//! the test harness and stops them when it ends. To run it against your own nodes:
//!
//! ```not_rust
//! docker compose up -d
//! REDLOCK_NODES=redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003 \
//!     cargo run -p redlock-examples --example demo
//! ```
//!
//! `RUST_LOG=redlock_core=debug,demo=info` also shows every vote. Ctrl-C stops the tasks, which
//! release what they hold before the demo exits.

use std::{
    error::Error,
    io::IsTerminal,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use redlock_core::{Lock, Redlock, Retry};
use redlock_tests::Cluster;
use tokio::{sync::watch, task::JoinSet};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// The one resource every task wants.
const RESOURCE: &str = "demo:nightly-report";
const TASKS: usize = 5;
const ROUNDS: usize = 3;
/// The simulated work done while holding the lock; task `i` works `WORK + i * 10 ms`.
const WORK: Duration = Duration::from_millis(50);
/// Time a task spends on other things between its turns. Without it, the task that just released
/// usually wins again at once, since waiters only retry every 10-20 ms.
const REST: Duration = Duration::from_millis(30);

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("redlock_core=info,demo=info")),
        )
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_ansi(std::io::stdout().is_terminal())
        .init();

    // `cluster` keeps the local nodes alive until the end of `main`; dropping it kills them.
    let (redlock, cluster) = match Redlock::from_env() {
        Ok(redlock) => {
            info!("using {} nodes from REDLOCK_NODES", redlock.node_count());
            (redlock, None)
        }
        Err(redlock_core::Error::NoNodes) => {
            // Starting servers blocks for a moment, so keep it off the runtime's threads.
            let cluster = tokio::task::spawn_blocking(|| Cluster::start(3)).await??;
            info!("REDLOCK_NODES is unset: started 3 local redis-server nodes");
            for url in cluster.urls() {
                info!("  {url}");
            }
            let redlock = Redlock::builder()
                .nodes(cluster.urls())
                .ttl(Duration::from_secs(2))
                // Waiters poll every 10-20 ms; 200 attempts outlast every other task's turns.
                .retry(Retry::jittered(200, Duration::from_millis(10)))
                .node_timeout(Duration::from_millis(50))
                .build()?;
            (redlock, Some(cluster))
        }
        Err(err) => return Err(err.into()),
    };
    redlock.connect().await?;
    info!(
        "quorum is {} of {} nodes, ttl {} ms",
        redlock.quorum(),
        redlock.node_count(),
        redlock.ttl().as_millis()
    );

    let (stop, stopping) = watch::channel(false);
    let demo = run(redlock, stopping);
    tokio::pin!(demo);
    let interrupted = tokio::select! {
        result = &mut demo => result.map(|()| false)?,
        signal = tokio::signal::ctrl_c() => {
            signal?;
            warn!("ctrl-c: tasks release what they hold and stop");
            stop.send_replace(true);
            demo.await?;
            true
        }
    };
    // A terminal's ctrl-c reaches the local redis-server children too, so only check them after
    // a full run.
    if let (Some(cluster), false) = (&cluster, interrupted) {
        check_no_keys_left(cluster).await?;
    }
    Ok(())
}

/// Checks that every lock was cleaned up on the local nodes. A node whose SET had not answered
/// yet when the lock was released is released by a background task (see `Lock::release`), so
/// that task gets a short grace period.
async fn check_no_keys_left(cluster: &Cluster) -> Result<(), Box<dyn Error>> {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        let mut left = Vec::new();
        for node in cluster {
            left.extend(node.keys("*")?);
        }
        if left.is_empty() {
            info!("no lock keys left on the local nodes");
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("keys left on the local nodes: {left:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Shows one lock's whole life, then lets the tasks contend and checks they never overlapped.
async fn run(redlock: Redlock, stopping: watch::Receiver<bool>) -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    solo(&redlock).await?;

    let holders = Arc::new(Holders::default());
    let mut tasks = JoinSet::new();
    for id in 1..=TASKS {
        tasks.spawn(contend(
            id,
            redlock.clone(),
            holders.clone(),
            stopping.clone(),
        ));
    }
    let (mut held, mut gave_up) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        let turns = joined??;
        held += turns.held;
        gave_up += turns.gave_up;
    }

    let max = holders.max.load(Ordering::SeqCst);
    info!(
        "{held} critical sections by {TASKS} tasks in {} ms, {gave_up} gave up waiting",
        started.elapsed().as_millis()
    );
    info!("max concurrent holders = {max}");
    if max > 1 {
        return Err(format!("holders overlapped: {max} tasks held {RESOURCE} at once").into());
    }
    Ok(())
}

/// The API in order: lock, try_lock on a held resource, extend, release, try_lock on a free one.
async fn solo(redlock: &Redlock) -> Result<(), Box<dyn Error>> {
    let lock = redlock.lock(RESOURCE).await?;
    info!(
        "main holds {} for {} ms",
        lock.resource(),
        lock.remaining().as_millis()
    );

    match redlock.try_lock(RESOURCE).await? {
        None => info!("try_lock while main holds it -> None (held by someone else)"),
        Some(other) => {
            other.release().await?;
            return Err("try_lock acquired a resource that main holds".into());
        }
    }

    let deadline = lock.extend().await?;
    info!(
        "main extended it: {} ms left",
        deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
    );
    report_release("main", lock, redlock.node_count()).await?;

    match redlock.try_lock(RESOURCE).await? {
        Some(lock) => {
            info!("try_lock after the release -> acquired at once");
            lock.release().await?;
        }
        None => warn!("try_lock after the release -> None (another client holds it)"),
    }
    Ok(())
}

/// What one task did.
struct Turns {
    held: usize,
    gave_up: usize,
}

/// One contender: `ROUNDS` times, wait for the lock, work, release.
async fn contend(
    id: usize,
    redlock: Redlock,
    holders: Arc<Holders>,
    mut stopping: watch::Receiver<bool>,
) -> Result<Turns, redlock_core::Error> {
    let name = format!("task {id}");
    let work = WORK + Duration::from_millis(10 * id as u64);
    let mut turns = Turns {
        held: 0,
        gave_up: 0,
    };
    for round in 1..=ROUNDS {
        if round > 1 {
            tokio::select! {
                _ = stopped(&mut stopping) => break,
                _ = tokio::time::sleep(REST) => {}
            }
        }
        let asked = Instant::now();
        // Dropping `lock()` on shutdown is fine: an abandoned attempt leaves no key behind.
        let lock = tokio::select! {
            _ = stopped(&mut stopping) => break,
            lock = redlock.lock(RESOURCE) => lock,
        };
        let lock = match lock {
            Ok(lock) => lock,
            // Every retry found it held: a normal outcome under contention, not a failure.
            Err(err) if err.is_contended() => {
                warn!("{name} gave up in round {round}: {err}");
                turns.gave_up += 1;
                continue;
            }
            Err(err) => return Err(err),
        };
        info!(
            "{name} holds {} for {} ms (waited {} ms, round {round})",
            lock.resource(),
            lock.remaining().as_millis(),
            asked.elapsed().as_millis()
        );
        turns.held += 1;

        // The critical section. Stop working when asked to, but still release below.
        holders.enter();
        let interrupted = tokio::select! {
            _ = stopped(&mut stopping) => true,
            _ = tokio::time::sleep(work) => false,
        };
        holders.leave();
        if !lock.is_valid() {
            warn!("{name} worked past its deadline: the lock was no longer safe");
        }
        // The next task in line may log that it holds the lock before this release returns: it
        // is let go as soon as our deletes are on their way, and its SETs follow them.
        info!("{name} is done and releases");
        match report_release(&name, lock, redlock.node_count()).await {
            Ok(()) => {}
            // On ctrl-c the terminal may have stopped the local nodes as well; the keys expire
            // by their ttl anyway.
            Err(err) if interrupted => warn!("{name} could not release while stopping: {err}"),
            Err(err) => return Err(err),
        }
        if interrupted {
            break;
        }
    }
    Ok(turns)
}

/// Releases `lock` and says what the nodes answered. The counts can add up to fewer than `nodes`:
/// nodes known not to hold our token are not asked, and `release` returns once a quorum deleted
/// it, leaving the others to finish in the background (`pending`).
async fn report_release(who: &str, lock: Lock, nodes: usize) -> Result<(), redlock_core::Error> {
    let release = lock.release().await?;
    if release.was_expired() {
        warn!(
            "{who} released too late: only {} nodes still held its token (quorum {})",
            release.released, release.quorum
        );
    } else {
        info!(
            "{who} released: token deleted on {} of {nodes} nodes ({} already gone, {} unreachable, {} finishing in the background)",
            release.released,
            release.absent,
            release.failures.len(),
            release.pending
        );
    }
    Ok(())
}

/// Resolves once shutdown is requested (or the sender is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// Counts tasks inside the critical section. A correct lock keeps `current` at 0 or 1; `max`
/// keeps the worst value seen, so the end of the demo can check holders never overlapped.
///
/// The counter is entered after `lock()` returned and left before `release()` starts, so it
/// measures exactly the span in which a task believes it holds the lock.
#[derive(Default)]
struct Holders {
    current: AtomicUsize,
    max: AtomicUsize,
}

impl Holders {
    fn enter(&self) {
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.current.fetch_sub(1, Ordering::SeqCst);
    }
}
