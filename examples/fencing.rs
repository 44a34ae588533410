//! Fencing tokens protect a resource from a holder that was paused past its lease.
//!
//! Run with
//!
//! ```not_rust
//! cargo run -p redlock-examples --example fencing
//! ```
//!
//! A lease-based lock cannot stop a holder that stalls (a GC pause, a frozen VM, a slow disk)
//! after it checked its lock: when it wakes up, its lease has expired, someone else holds the
//! lock, and its next write is stale. The fix is on the resource's side: every write carries the
//! lock's fencing token and the resource rejects tokens lower than one it has already seen.
//!
//! Here holder A takes the lock (token t), writes, then stalls past its deadline. Holder B takes
//! the lock (token > t) and writes. A wakes up and writes with its old token: the toy store
//! rejects it. Without `REDLOCK_NODES` three local nodes are started with AOF `appendfsync
//! always`, the durability fencing counters need.

use std::{error::Error, sync::Mutex, time::Duration};

use redlock_core::{FencingToken, Redlock, Retry};
use redlock_tests::{Cluster, Persistence};
use tracing::info;
use tracing_subscriber::EnvFilter;

/// A toy resource that accepts a write only with a token at least as high as any it has seen:
/// the check and the write happen under one mutex, as a database would do them in one statement
/// (`UPDATE .. WHERE fence <= $token`).
#[derive(Default)]
struct FencedStore {
    state: Mutex<(u64, Vec<String>)>,
}

impl FencedStore {
    fn write(&self, token: FencingToken, entry: &str) -> Result<(), String> {
        let mut state = self.state.lock().map_err(|_| "store poisoned".to_owned())?;
        if token.get() < state.0 {
            return Err(format!("rejected {entry:?}: token {token} < {}", state.0));
        }
        state.0 = token.get();
        state.1.push(format!("{entry} (token {token})"));
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| "fencing=info".into()),
        )
        .init();

    let mut _local = None;
    let builder = match std::env::var("REDLOCK_NODES") {
        Ok(_) => {
            redlock_core::RedlockBuilder::from_config(redlock_core::RedlockConfig::from_env()?)
        }
        Err(_) => {
            let cluster = Cluster::start_with(3, Persistence::AofAlways)?;
            info!(nodes = ?cluster.urls(), "started 3 local nodes with AOF appendfsync always");
            let builder = Redlock::builder().nodes(cluster.urls());
            _local = Some(cluster);
            builder
        }
    };
    let ttl = Duration::from_millis(500);
    let redlock = builder
        .ttl(ttl)
        .fencing(true)
        .retry(Retry::jittered(100, Duration::from_millis(20)))
        .build()?;
    let store = FencedStore::default();

    let a = redlock.lock("fencing:ledger").await?;
    let token_a = a.fencing_token().ok_or("fencing is enabled")?;
    store.write(token_a, "A: first write")?;
    info!(%token_a, "A holds the lock and wrote");

    info!("A stalls for {:?} (twice its lease)...", ttl * 2);
    tokio::select! {
        () = tokio::time::sleep(ttl * 2) => {}
        () = a.lost() => info!("A's lock.lost() fired: the lease is over"),
    }
    tokio::time::sleep(ttl).await; // the stall goes on past the lost signal

    let b = redlock.lock("fencing:ledger").await?;
    let token_b = b.fencing_token().ok_or("fencing is enabled")?;
    store.write(token_b, "B: write")?;
    info!(%token_b, "B took the lock and wrote");

    info!(
        valid = a.is_valid(),
        "A wakes up and writes with its old token"
    );
    let late = store.write(token_a, "A: late write");
    match &late {
        Err(reason) => info!("the store {reason}"),
        Ok(()) => return Err("the stale write was accepted".into()),
    }
    b.release().await?;
    drop(a);

    let state = store.state.lock().map_err(|_| "store poisoned")?;
    info!(entries = ?state.1, "final store");
    assert!(token_b > token_a);
    Ok(())
}
