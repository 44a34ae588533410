//! [`JobLock`]: the guard service that wraps a job handler, and [`JobLockInfo`], what the
//! handler learns about the lock it runs under.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use apalis_core::{
    error::{AbortError, BoxDynError},
    task::Task,
};
use futures_util::future::BoxFuture;
use redlock_core::{FencingToken, Lock, LockHandle, LockLost, LockOptions, Redlock};
use tower_service::Service;
use tracing::{Instrument, debug, debug_span, warn};

use crate::{
    config::{JobLockConfig, MakeJobKey, TaskIdKey},
    error::{Error, JobLockLost, JobLocked, LockUnavailable},
    marker::CompletionMarkers,
};

/// Guards a job handler with a Redlock lock per job key and a completion marker.
///
/// Build it with [`JobLockExt::lock_jobs`](crate::JobLockExt::lock_jobs) on the handler given to
/// `WorkerBuilder::build`, or with [`JobLockLayer`](crate::JobLockLayer). It must sit *inside*
/// apalis's lifecycle service, which is what wrapping the handler does. Its response is
/// `Some(response)` when the handler ran and `None` when the key had already completed.
///
/// See the [crate docs](crate) for the protocol and the guarantee.
pub struct JobLock<S, K = TaskIdKey> {
    inner: S,
    guard: Arc<Guard<K>>,
}

/// What every clone of a guard shares.
pub(crate) struct Guard<K> {
    pub(crate) redlock: Redlock,
    pub(crate) markers: CompletionMarkers,
    pub(crate) config: JobLockConfig<K>,
}

impl<S: Clone, K> Clone for JobLock<S, K> {
    fn clone(&self) -> Self {
        JobLock {
            inner: self.inner.clone(),
            guard: self.guard.clone(),
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for JobLock<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobLock")
            .field("inner", &self.inner)
            .field("guard", &self.guard)
            .finish()
    }
}

impl<K> fmt::Debug for Guard<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("redlock", &self.redlock)
            .field("markers", &self.markers)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, K> JobLock<S, K> {
    pub(crate) fn from_guard(inner: S, guard: Arc<Guard<K>>) -> Self {
        JobLock { inner, guard }
    }

    /// The wrapped handler.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped handler, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the handler.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, K, Args> Service<Task<Args>> for JobLock<S, K>
where
    S: Service<Task<Args>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxDynError>,
    K: MakeJobKey<Args> + Send + Sync + 'static,
    Args: Send + 'static,
{
    type Response = Option<S::Response>;
    type Error = BoxDynError;
    type Future = ResponseFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxDynError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<Args>) -> Self::Future {
        // `poll_ready` readied `self.inner`, not a clone of it: take the ready one into the
        // future and leave the clone for the next call (see tower-service's "Be careful when
        // cloning inner services").
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let key = self.guard.config.key.make_key(&task);
        let guard = self.guard.clone();
        let span = debug_span!("redlock.job", key = key.as_deref().unwrap_or(""));
        ResponseFuture {
            inner: Box::pin(guard.run(key, task, inner).instrument(span)),
        }
    }
}

impl<K: Send + Sync + 'static> Guard<K> {
    /// One delivery: lock, check the marker, run under auto-extension, mark, release.
    async fn run<S, Args>(
        self: Arc<Self>,
        key: Option<String>,
        mut task: Task<Args>,
        mut inner: S,
    ) -> Result<Option<S::Response>, BoxDynError>
    where
        S: Service<Task<Args>>,
        S::Error: Into<BoxDynError>,
    {
        let config = &self.config;
        let key = match key {
            None => return Err(Box::new(AbortError::new(Error::MissingTaskId))),
            Some(key) if key.is_empty() => return Err(Box::new(AbortError::new(Error::EmptyKey))),
            Some(key) => key,
        };
        let mut options = LockOptions::new();
        if let Some(ttl) = config.ttl {
            options = options.ttl(ttl);
        }
        if let Some(fencing) = config.fencing {
            options = options.fencing(fencing);
        }
        // One attempt: a contended job is not waited for here but handed back to the backend,
        // which delivers it again after its backoff. Waiting would hold a worker slot for as long
        // as the other worker runs the job.
        let lock = match self
            .redlock
            .try_lock_with(&config.lock_resource(&key), options)
            .await
        {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                debug!("held by another worker: retry later");
                return Err(Box::new(JobLocked::new(key)));
            }
            Err(source) if source.is_input() => {
                return Err(Box::new(AbortError::new(Error::Lock { key, source })));
            }
            Err(source) => {
                debug!(error = %source, "lock unavailable: retry later");
                return Err(Box::new(LockUnavailable::new(key, source)));
            }
        };
        // Kept alive from here on, so that a slow marker read cannot eat the lease.
        lock.auto_extend(config.extend);

        // Checked under the lock: whoever completed the key wrote its marker before releasing,
        // so holding the lock now means that marker, if any, is already in place.
        let marker = config.marker_key(&key);
        match self.markers.is_done(&marker).await {
            Ok(false) => {}
            Ok(true) => {
                debug!("already completed: acknowledged without running");
                release(lock).await;
                return Ok(None);
            }
            Err(source) => {
                debug!(error = %source, "marker undecided: retry later");
                release(lock).await;
                return Err(Box::new(LockUnavailable::new(key, source)));
            }
        }

        task.inject_data(JobLockInfo {
            key: Arc::from(key.as_str()),
            lock: lock.handle(),
        });
        let lost = lock.lost();
        let outcome = tokio::select! {
            // The handler is polled first: a result it has produced is a completed job, and
            // recording it is better than running the job again.
            biased;
            out = inner.call(task) => Some(out.map_err(Into::into)),
            () = lost => None,
        };
        match outcome {
            None => {
                // The handler future was dropped at its current await point, so nothing after
                // it runs without the lock; dropping the Lock releases it in the background.
                warn!("lock lost while the job ran: job dropped, retry later");
                drop(lock);
                Err(Box::new(JobLockLost::new(key)))
            }
            Some(Err(error)) => {
                release(lock).await;
                Err(error)
            }
            Some(Ok(response)) => {
                if !lock.is_valid() {
                    warn!("job completed after its lock deadline");
                }
                // The job is done: recording that must not depend on this future being polled
                // to the end. apalis drops in-flight futures when a worker stops (a failed
                // heartbeat, a shutdown timeout), and a completion without its marker would run
                // again on the next delivery. A task owns the lock until the marker is written.
                let recorded = tokio::spawn(self.clone().finish(lock, marker).in_current_span());
                let _ = recorded.await;
                Ok(Some(response))
            }
        }
    }

    /// After a successful run: writes the marker while the lock is held, then releases.
    async fn finish(self: Arc<Self>, lock: Lock, marker: String) {
        self.mark_done(&lock, &marker).await;
        release(lock).await;
    }

    /// Writes the completion marker while the lock is still held.
    ///
    /// Holding the lock keeps every other delivery of the key waiting, so a failed write is
    /// retried (with a growing pause) rather than given up: once the marker is on a quorum, no
    /// later read can miss it. It gives up only when the lock is lost or a whole lease has
    /// passed, for example because the marker nodes are down while the lock nodes are not.
    async fn mark_done(&self, lock: &Lock, marker: &str) {
        let give_up = Instant::now() + lock.ttl().max(Duration::from_secs(1));
        let mut pause = Duration::from_millis(10);
        loop {
            let error = match self
                .markers
                .mark_done(marker, self.config.dedup_window)
                .await
            {
                Ok(_) => return,
                Err(error) => error,
            };
            if !lock.is_valid() || Instant::now() >= give_up {
                // The job did complete, so the delivery still succeeds; a later duplicate may
                // not see this completion and run again.
                warn!(%error, "completion marker not stored on a quorum");
                return;
            }
            debug!(%error, "completion marker write failed, retrying");
            tokio::time::sleep(pause.min(lock.remaining() / 2)).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}

async fn release(lock: Lock) {
    if let Err(error) = lock.release().await {
        // Nodes that did not answer let the key expire by its ttl.
        debug!(%error, "release failed");
    }
}

/// What a guarded handler learns about its lock, injected into the task as data: take it with
/// `Data<JobLockInfo>`.
///
/// The deadline is live: auto-extension moves it forward while the job runs. Pass the
/// [fencing token](JobLockInfo::fencing_token) to any downstream that can reject stale writers;
/// it is what protects correctness when a paused worker outlives its lock.
///
/// ```
/// use apalis_core::{error::BoxDynError, task::data::Data};
/// use redlock_apalis::JobLockInfo;
/// # struct Invoice;
///
/// async fn send_invoice(job: Invoice, lock: Data<JobLockInfo>) -> Result<(), BoxDynError> {
///     let token = lock.fencing_token(); // Some(..) when fencing is enabled
///     let left = lock.remaining();
///     Ok(())
/// }
/// ```
#[derive(Clone, Debug)]
pub struct JobLockInfo {
    key: Arc<str>,
    lock: LockHandle,
}

impl JobLockInfo {
    /// The job key (the task id, or the key computed by the key function).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The fencing token of this lock, when fencing is enabled: unique per key and increasing
    /// with each acquisition.
    pub fn fencing_token(&self) -> Option<FencingToken> {
        self.lock.fencing_token()
    }

    /// The instant until which the lock is held, as last extended.
    pub fn deadline(&self) -> Instant {
        self.lock.deadline()
    }

    /// Time left before the deadline; zero once it passed.
    pub fn remaining(&self) -> Duration {
        self.lock.remaining()
    }

    /// A future that resolves when the lock is lost. The guard already drops the job at that
    /// moment; this is for work the handler spawned elsewhere.
    pub fn lost(&self) -> LockLost {
        self.lock.lost()
    }

    /// The underlying lock handle.
    pub fn handle(&self) -> &LockHandle {
        &self.lock
    }
}

/// The future returned by [`JobLock`]: `Ok(Some(_))` when the handler ran, `Ok(None)` when the
/// key had already completed, `Err(_)` when the handler failed or the job could not run here.
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<R> {
    inner: BoxFuture<'static, Result<Option<R>, BoxDynError>>,
}

impl<R> fmt::Debug for ResponseFuture<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<R> Future for ResponseFuture<R> {
    type Output = Result<Option<R>, BoxDynError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
