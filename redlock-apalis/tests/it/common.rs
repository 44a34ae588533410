//! Shared fixtures: real lock nodes and a real apalis-redis queue node, a tracker of handler
//! runs that detects overlaps, and helpers to run a fleet of workers.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use apalis::prelude::*;
use apalis_redis::{Config, RedisStorage};
use redlock_apalis::{CompletionMarkers, JobLockLost, JobLocked, LockUnavailable};
use redlock_core::Redlock;
use redlock_tests::{Cluster, RedisNode};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tower::Service;

/// How often idle workers poll the queue.
pub(crate) const POLL: Duration = Duration::from_millis(25);

/// Per-node budget of the lock and marker nodes: generous, because the suite shares two cores
/// with whatever else runs; a slow node only defers a delivery, it never breaks a guarantee.
pub(crate) const NODE_TIMEOUT: Duration = Duration::from_millis(250);

/// Three lock nodes (also the marker nodes) and one queue node.
pub(crate) struct Env {
    pub(crate) cluster: Cluster,
    pub(crate) queue: RedisNode,
    pub(crate) redlock: Redlock,
    pub(crate) markers: CompletionMarkers,
}

impl Env {
    pub(crate) fn start(ttl: Duration) -> Env {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let cluster = Cluster::start(3).unwrap();
        let queue = RedisNode::start().unwrap();
        let redlock = Redlock::builder()
            .nodes(cluster.urls())
            .ttl(ttl)
            .node_timeout(NODE_TIMEOUT)
            .build()
            .unwrap();
        let markers = CompletionMarkers::new(cluster.urls())
            .unwrap()
            .node_timeout(NODE_TIMEOUT);
        Env {
            cluster,
            queue,
            redlock,
            markers,
        }
    }

    /// A storage on its own connection, as a separate process would have.
    pub(crate) async fn storage(&self, config: &Config) -> RedisStorage<Job> {
        let conn = apalis_redis::connect(self.queue.url()).await.unwrap();
        RedisStorage::new(conn).with_config(config.clone())
    }

    /// Number of entries in the queue's `what` key (a list, set or sorted set).
    pub(crate) fn count(&self, kind: &str, key: &str) -> i64 {
        self.queue.query(&[kind, key]).unwrap().as_int().unwrap()
    }

    /// True when nothing is waiting, scheduled or in flight in `config`'s queue.
    pub(crate) fn queue_is_idle(&self, config: &Config) -> bool {
        let inflight = self
            .queue
            .keys(&format!("{}:*", config.inflight_jobs_set()))
            .unwrap();
        self.count("LLEN", &config.active_jobs_list()) == 0
            && self.count("ZCARD", &config.scheduled_jobs_set()) == 0
            && inflight.iter().all(|set| self.count("SCARD", set) == 0)
    }
}

/// A queue config for tests: a fresh queue name, one job per fetch, fast heartbeats.
pub(crate) fn queue_config(name: &str) -> Config {
    Config::default()
        .queue(format!("it:{name}:{}", std::process::id()))
        .batch_size(1)
        .heartbeat_interval(Duration::from_secs(1))
        .missed_heartbeats(2)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Job {
    pub(crate) key: String,
    pub(crate) work_ms: u64,
}

impl Job {
    pub(crate) fn new(key: impl Into<String>, work_ms: u64) -> Job {
        Job {
            key: key.into(),
            work_ms,
        }
    }
}

/// What the guard answered to one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ran,
    Skipped,
    Locked,
    Lost,
    Unavailable,
    Failed,
}

/// Everything the handlers and the guard did, per job key.
#[derive(Debug, Default)]
pub(crate) struct Record {
    /// Key -> worker currently running its handler.
    pub(crate) in_flight: HashMap<String, String>,
    pub(crate) started: HashMap<String, usize>,
    pub(crate) completed: HashMap<String, usize>,
    /// Handler runs whose future was dropped before completing.
    pub(crate) dropped: HashMap<String, usize>,
    /// (key, worker already running it, worker that started it too).
    pub(crate) overlaps: Vec<(String, String, String)>,
    pub(crate) outcomes: HashMap<String, Vec<Outcome>>,
}

impl Record {
    pub(crate) fn outcomes(&self, key: &str) -> &[Outcome] {
        self.outcomes.get(key).map_or(&[], Vec::as_slice)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Tracker {
    pub(crate) record: Mutex<Record>,
}

impl Tracker {
    pub(crate) fn new() -> Arc<Tracker> {
        Arc::new(Tracker::default())
    }

    /// Marks the start of a handler run; the returned guard marks its end (completed, or
    /// dropped if the future is dropped first).
    pub(crate) fn enter(self: &Arc<Self>, key: &str, worker: &str) -> Run {
        let mut record = self.record.lock().unwrap();
        if let Some(other) = record.in_flight.get(key) {
            let overlap = (key.to_owned(), other.clone(), worker.to_owned());
            record.overlaps.push(overlap);
        }
        record.in_flight.insert(key.to_owned(), worker.to_owned());
        *record.started.entry(key.to_owned()).or_default() += 1;
        Run {
            tracker: self.clone(),
            key: key.to_owned(),
            completed: false,
        }
    }

    pub(crate) fn read<T>(&self, f: impl FnOnce(&Record) -> T) -> T {
        f(&self.record.lock().unwrap())
    }

    fn outcome(&self, key: &str, outcome: Outcome) {
        let mut record = self.record.lock().unwrap();
        record
            .outcomes
            .entry(key.to_owned())
            .or_default()
            .push(outcome);
    }
}

/// One handler run in progress.
pub(crate) struct Run {
    tracker: Arc<Tracker>,
    key: String,
    completed: bool,
}

impl Run {
    pub(crate) fn complete(mut self) {
        self.completed = true;
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let mut record = self.tracker.record.lock().unwrap();
        record.in_flight.remove(&self.key);
        let counts = if self.completed {
            &mut record.completed
        } else {
            &mut record.dropped
        };
        *counts.entry(self.key.clone()).or_default() += 1;
    }
}

/// The plain test handler: records its run and works for `job.work_ms`.
pub(crate) async fn work(
    job: Job,
    tracker: Data<Arc<Tracker>>,
    worker: WorkerContext,
) -> Result<(), BoxDynError> {
    let run = tracker.enter(&job.key, worker.name());
    tokio::time::sleep(Duration::from_millis(job.work_ms)).await;
    run.complete();
    Ok(())
}

/// Records what the guard answered to each delivery, between the lifecycle service and the
/// guard (so it sits inside the lifecycle too).
#[derive(Clone)]
pub(crate) struct Observe<S> {
    inner: S,
    tracker: Arc<Tracker>,
}

impl<S> Observe<S> {
    pub(crate) fn new(inner: S, tracker: Arc<Tracker>) -> Self {
        Observe { inner, tracker }
    }
}

impl<S, R> Service<Task<Job>> for Observe<S>
where
    S: Service<Task<Job>, Response = Option<R>, Error = BoxDynError>,
    S::Future: Send + 'static,
{
    type Response = Option<R>;
    type Error = BoxDynError;
    type Future = Pin<Box<dyn Future<Output = Result<Option<R>, BoxDynError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxDynError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, task: Task<Job>) -> Self::Future {
        let key = task.args.key.clone();
        let tracker = self.tracker.clone();
        let fut = self.inner.call(task);
        Box::pin(async move {
            let result = fut.await;
            let outcome = match &result {
                Ok(Some(_)) => Outcome::Ran,
                Ok(None) => Outcome::Skipped,
                Err(e) if e.downcast_ref::<JobLocked>().is_some() => Outcome::Locked,
                Err(e) if e.downcast_ref::<JobLockLost>().is_some() => Outcome::Lost,
                Err(e) if e.downcast_ref::<LockUnavailable>().is_some() => Outcome::Unavailable,
                Err(_) => Outcome::Failed,
            };
            tracker.outcome(&key, outcome);
            result
        })
    }
}

/// Polls `condition` every few milliseconds until it holds; fails the test after `within`.
pub(crate) async fn eventually(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A worker name unique in the fleet and across test runs.
pub(crate) fn worker_name(test: &str, i: usize) -> String {
    format!("it-{test}-{}-w{i}", std::process::id())
}

/// Workers of a test; aborted (their in-flight futures dropped) when this drops.
#[derive(Default)]
pub(crate) struct Fleet {
    handles: Vec<JoinHandle<()>>,
}

impl Fleet {
    pub(crate) fn push(&mut self, handle: JoinHandle<()>) {
        self.handles.push(handle);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for handle in &self.handles {
            handle.abort();
        }
    }
}
