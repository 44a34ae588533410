//! A benchmark of one moment of contention: two processes lock the same free key at once, and
//! the winner holds it a while. How long after the winner's release does the loser hold it?
//!
//! Run with
//!
//! ```not_rust
//! cargo run --release -p redlock-examples --example collision -- [rounds] [hold ms]
//! ```
//!
//! (150 rounds and 50 ms by default). Without `REDLOCK_NODES` it starts three local
//! `redis-server` nodes on free ports through the test harness and stops them when it ends.
//!
//! Each round uses a fresh key and two fresh clients (two `Redlock` handles are two processes to
//! each other: separate local queues, separate waiter ids), released from a barrier together.
//! Whichever wins holds the key for the hold time; the loser waits in the library's own way, with
//! a retry pause of 20 ms (jittered) as its fallback. A round where the loser won the key's
//! sequencer node (a split vote) is the case `queue::the_loser_of_a_split_vote_is_woken_by_the_winners_release`
//! pins: the winner's release there wakes the loser, which would otherwise find out at its next
//! ask. The numbers are in `docs/performance.md` (*Where the remaining gap is*).

use std::{
    error::Error,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use redlock_core::{Redlock, Retry};
use redlock_tests::Cluster;
use tokio::sync::Barrier;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(150);
    let hold = Duration::from_millis(args.next().map(|a| a.parse()).transpose()?.unwrap_or(50));

    // `cluster` keeps the local nodes alive until the end of `main`.
    let (urls, _cluster) = match std::env::var("REDLOCK_NODES") {
        Ok(nodes) => (nodes.split(',').map(str::to_owned).collect(), None),
        Err(_) => {
            let cluster = tokio::task::spawn_blocking(|| Cluster::start(3)).await??;
            (cluster.urls(), Some(cluster))
        }
    };
    let client = || {
        Redlock::builder()
            .nodes(urls.clone())
            .ttl(Duration::from_secs(5))
            .retry(Retry::jittered(200, Duration::from_millis(20)))
            .build()
    };

    let mut waits = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let key = format!("bench:collision:{}:{round}", std::process::id());
        let start = Arc::new(Barrier::new(2));
        // When the winner released, read by the loser once it holds the key.
        let released: Arc<Mutex<Option<Instant>>> = Arc::default();
        let mut tasks = Vec::new();
        for redlock in [client()?, client()?] {
            let (start, released, key) = (start.clone(), released.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                let lock = redlock.lock(&key).await?;
                let taken = Instant::now();
                let after = released.lock().map_or(None, |mut r| r.take());
                tokio::time::sleep(hold).await;
                if let Ok(mut r) = released.lock() {
                    *r = Some(Instant::now());
                }
                lock.release().await?;
                Ok::<_, redlock_core::Error>(after.map(|at| taken.saturating_duration_since(at)))
            }));
        }
        for task in tasks {
            if let Some(wait) = task.await?? {
                waits.push(wait);
            }
        }
    }

    waits.sort_unstable();
    let at = |q: f64| {
        let index = ((waits.len() as f64 - 1.0) * q).round() as usize;
        waits.get(index).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "{} collisions, winner holding {} ms: the loser held the key {:.2} ms after the winner's \
         release at the median, {:.2} ms at p90, {:.2} ms at p99, {:.2} ms at most",
        waits.len(),
        hold.as_millis(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
    Ok(())
}
