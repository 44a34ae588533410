//! [`JobLockLayer`]: builds [`JobLock`] guards around job handlers.

use std::{fmt, sync::Arc};

use redlock_core::Redlock;
use tower_layer::Layer;

use crate::{
    config::{JobLockConfig, TaskIdKey},
    marker::CompletionMarkers,
    service::{Guard, JobLock},
};

/// Wraps a job handler in a [`JobLock`].
///
/// Apply it to the handler passed to `WorkerBuilder::build`, **not** with `WorkerBuilder::layer`:
/// only inside apalis's lifecycle service is a refused delivery recorded as an attempt and
/// rescheduled with backoff. Outside it, apalis-redis redelivers the job at once, in a hot loop.
/// [`JobLockExt`](crate::JobLockExt) makes the right placement the short one.
///
/// ```
/// use apalis_core::{
///     backend::memory::MemoryStorage, task::task_fn::task_fn, worker::builder::WorkerBuilder,
/// };
/// use redlock_apalis::{CompletionMarkers, JobLockLayer};
/// use redlock_core::Redlock;
/// use tower_layer::Layer;
///
/// async fn send_invoice(id: u64) {}
///
/// let nodes = ["redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003"];
/// let redlock = Redlock::builder().nodes(nodes).build()?; // lazy: no connection yet
/// let markers = CompletionMarkers::new(nodes)?;
/// let guard = JobLockLayer::new(redlock, markers);
/// let worker = WorkerBuilder::new("invoices-1")
///     .backend(MemoryStorage::<u64>::new())
///     .build(guard.layer(task_fn(send_invoice))); // the handler, wrapped
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// See the [crate docs](crate) for the protocol.
pub struct JobLockLayer<K = TaskIdKey> {
    guard: Arc<Guard<K>>,
}

impl JobLockLayer {
    /// A guard keyed by task id, with [`JobLockConfig::new`]'s defaults.
    pub fn new(redlock: Redlock, markers: CompletionMarkers) -> Self {
        JobLockLayer::with_config(redlock, markers, JobLockConfig::new())
    }
}

impl<K> JobLockLayer<K> {
    /// A guard with its own key function, lease or dedup window.
    pub fn with_config(
        redlock: Redlock,
        markers: CompletionMarkers,
        config: JobLockConfig<K>,
    ) -> Self {
        JobLockLayer {
            guard: Arc::new(Guard {
                redlock,
                markers,
                config,
            }),
        }
    }
}

impl<K> Clone for JobLockLayer<K> {
    fn clone(&self) -> Self {
        JobLockLayer {
            guard: self.guard.clone(),
        }
    }
}

impl<K> fmt::Debug for JobLockLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobLockLayer")
            .field("guard", &self.guard)
            .finish()
    }
}

impl<S, K> Layer<S> for JobLockLayer<K> {
    type Service = JobLock<S, K>;

    fn layer(&self, inner: S) -> JobLock<S, K> {
        JobLock::from_guard(inner, self.guard.clone())
    }
}
