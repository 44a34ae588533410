//! Integration tests of redlock-tower against real `redis-server` nodes (from the
//! `redlock-tests` harness) and, where the behaviour involves the network, a real axum server.

mod body;
mod downstream;
mod faults;
mod generic;
mod serialise;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::Router;
use redlock_core::{Redlock, Retry};
use redlock_tests::Cluster;
use tokio::sync::{Mutex, mpsc, watch};

/// How long a test waits for something that should happen at once before it fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// Three local nodes. Starting them blocks briefly, so it runs off the runtime's threads.
pub(crate) async fn nodes() -> Cluster {
    tokio::task::spawn_blocking(|| Cluster::start(3))
        .await
        .unwrap()
        .expect("redis-server nodes start")
}

/// A client of `cluster` with a lease of `ttl` and no retries of its own (the layer decides how
/// to retry). The node timeout is generous so that a loaded CI machine does not turn a
/// fail-fast acquisition into a spurious 503.
pub(crate) fn redlock(cluster: &Cluster, ttl: Duration) -> Redlock {
    Redlock::builder()
        .nodes(cluster.urls())
        .ttl(ttl)
        .node_timeout(Duration::from_millis(500))
        .retry(Retry::none())
        .build()
        .unwrap()
}

/// Serves `router` on a free loopback port; returns its base URL.
pub(crate) async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

/// The lock keys (not fence counters) stored on the nodes that answer.
pub(crate) fn lock_keys(cluster: &Cluster) -> Vec<String> {
    cluster
        .iter()
        .filter_map(|node| node.keys("redlock:*").ok())
        .flatten()
        .filter(|key| !key.ends_with(":fence"))
        .collect()
}

/// Polls the nodes until no lock key is left, failing after [`PATIENCE`]. Polling is the only
/// way to observe a background release from outside the process.
pub(crate) async fn wait_for_no_lock_keys(cluster: &Cluster) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let keys = lock_keys(cluster);
        if keys.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "keys left behind: {keys:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A rendezvous between a handler and its test: the handler reports that it is inside and
/// then waits until the test opens the gate.
pub(crate) struct Gate {
    entered_tx: mpsc::UnboundedSender<()>,
    entered_rx: Mutex<mpsc::UnboundedReceiver<()>>,
    open: watch::Sender<bool>,
}

impl Gate {
    pub(crate) fn new() -> Arc<Gate> {
        let (entered_tx, entered_rx) = mpsc::unbounded_channel();
        Arc::new(Gate {
            entered_tx,
            entered_rx: Mutex::new(entered_rx),
            open: watch::channel(false).0,
        })
    }

    /// Called by the handler.
    pub(crate) async fn pass(&self) {
        let _ = self.entered_tx.send(());
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
    }

    /// Waits until a handler is inside.
    pub(crate) async fn entered(&self) {
        tokio::time::timeout(PATIENCE, self.entered_rx.lock().await.recv())
            .await
            .expect("a handler entered the gate")
            .expect("gate sender alive");
    }

    pub(crate) fn open(&self) {
        self.open.send_replace(true);
    }
}

/// Counts handlers inside a critical section and remembers the most seen at once.
#[derive(Default)]
pub(crate) struct Overlap {
    inside: AtomicUsize,
    max: AtomicUsize,
    total: AtomicUsize,
}

impl Overlap {
    pub(crate) fn enter(self: &Arc<Self>) -> OverlapGuard {
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        self.total.fetch_add(1, Ordering::SeqCst);
        OverlapGuard(self.clone())
    }

    pub(crate) fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }

    pub(crate) fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

pub(crate) struct OverlapGuard(Arc<Overlap>);

impl Drop for OverlapGuard {
    fn drop(&mut self) {
        self.0.inside.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Sends on drop: tells a test that a handler future was dropped (or finished).
pub(crate) struct DropSignal(pub(crate) Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}
