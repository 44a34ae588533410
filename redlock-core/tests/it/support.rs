//! Shared set-up: a cluster of real nodes and a Redlock over it.

use std::time::{Duration, Instant};

use redlock_core::{Lock, Redlock, RedlockBuilder, Retry};
use redlock_tests::Cluster;

pub(crate) fn cluster(n: usize) -> Cluster {
    Cluster::start(n).expect("redis-server nodes start")
}

/// A Redlock over `cluster` with test-friendly timeouts, customised by `f`.
pub(crate) fn redlock_with(
    cluster: &Cluster,
    f: impl FnOnce(RedlockBuilder) -> RedlockBuilder,
) -> Redlock {
    let builder = Redlock::builder()
        .nodes(cluster.urls())
        .ttl(Duration::from_secs(10))
        .node_timeout(Duration::from_millis(200))
        .retry(Retry::jittered(3, Duration::from_millis(10)));
    f(builder).build().expect("valid configuration")
}

pub(crate) fn redlock(cluster: &Cluster) -> Redlock {
    redlock_with(cluster, |b| b)
}

/// The value of `key` on every node, in node order.
pub(crate) fn values(cluster: &Cluster, key: &str) -> Vec<Option<String>> {
    cluster.iter().map(|n| n.get(key).expect("GET")).collect()
}

/// Total number of keys across the nodes that answer.
pub(crate) fn key_count(cluster: &Cluster) -> i64 {
    cluster.iter().filter_map(|n| n.dbsize().ok()).sum()
}

/// Polls `condition` every 5 ms until it holds or `within` passes; true if it held.
pub(crate) async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits up to 2 s for every node to store `key`: `lock` returns at quorum, and the last SET
/// lands a moment later.
pub(crate) async fn stored_everywhere(cluster: &Cluster, key: &str) -> bool {
    eventually(Duration::from_secs(2), || {
        values(cluster, key).iter().all(Option::is_some)
    })
    .await
}

/// `client`'s lock on `resource`, once its key is stored on every node. `lock` returns at quorum
/// and its last SET lands a moment later: a waiter that asked in between could take that node's
/// key first. On the key's sequencer node that leaves the holder without a key there and the
/// waiter with no line to join, so tests of waiting start from a lock held everywhere.
pub(crate) async fn held_everywhere(cluster: &Cluster, client: &Redlock, resource: &str) -> Lock {
    let lock = client.lock(resource).await.expect("lock taken");
    assert!(
        stored_everywhere(cluster, &format!("redlock:{resource}")).await,
        "the holder's key reached every node"
    );
    lock
}

/// Waits up to 2 s for `key` to be gone from every node: `release` returns at quorum, and the
/// last node follows in the background.
pub(crate) async fn gone_everywhere(cluster: &Cluster, key: &str) -> bool {
    eventually(Duration::from_secs(2), || {
        values(cluster, key).iter().all(Option::is_none)
    })
    .await
}

/// Runs `DEBUG SLEEP secs` on every node at once, from threads, so the next commands queue
/// behind it: a way to make every node slow without touching the client.
pub(crate) fn stall_all(cluster: &Cluster, secs: f64) -> Vec<std::thread::JoinHandle<()>> {
    let ports: Vec<u16> = cluster.iter().map(|n| n.port()).collect();
    let handles = ports
        .into_iter()
        .map(|port| {
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
                let cmd = format!("DEBUG SLEEP {secs}\r\n");
                s.write_all(cmd.as_bytes()).expect("write");
                let mut buf = [0u8; 64];
                let _ = s.read(&mut buf);
            })
        })
        .collect();
    // Wait until every node is inside its sleep: a PING with a short timeout no longer answers.
    for node in cluster.iter() {
        let started = Instant::now();
        while node
            .query_timeout(&["PING"], Duration::from_millis(20))
            .is_ok()
        {
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "DEBUG SLEEP did not start"
            );
        }
    }
    handles
}

/// Counts holders inside a critical section and remembers the most seen at once: a lock that
/// works keeps the maximum at 1.
#[derive(Clone, Default)]
pub(crate) struct Overlap {
    inside: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    max: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Overlap {
    /// Enters, yields once so another holder could interleave, and leaves.
    pub(crate) async fn critical_section(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.inside.fetch_add(1, SeqCst) + 1;
        self.max.fetch_max(now, SeqCst);
        tokio::task::yield_now().await;
        self.inside.fetch_sub(1, SeqCst);
    }

    /// The most holders seen inside at once.
    pub(crate) fn max(&self) -> usize {
        self.max.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// How many times `node` has run `command` (lower case, as `INFO commandstats` names it).
pub(crate) fn command_calls(node: &redlock_tests::RedisNode, command: &str) -> i64 {
    node.command_calls(command).expect("INFO commandstats")
}

/// [`RedisNode::monitor`](redlock_tests::RedisNode::monitor) on `node`, which must start.
pub(crate) fn monitor(
    node: &redlock_tests::RedisNode,
    life: Duration,
) -> std::sync::mpsc::Receiver<String> {
    node.monitor(life).expect("MONITOR starts")
}

/// The lines `seen` ([`monitor`]) delivers until the node has been quiet for `quiet`, read off
/// the runtime's thread so that the client's background tasks keep running meanwhile.
pub(crate) async fn lines_until_quiet(
    seen: std::sync::mpsc::Receiver<String>,
    quiet: Duration,
) -> Vec<String> {
    tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        while let Ok(line) = seen.recv_timeout(quiet) {
            lines.push(line);
        }
        lines
    })
    .await
    .expect("the monitor reader does not panic")
}
