//! [`JobLockExt`]: `handler.lock_jobs(redlock, markers)`, the guard in the right place.

use apalis_core::task::{
    Task,
    task_fn::{TaskFn, task_fn},
};
use redlock_core::Redlock;
#[cfg(doc)]
use redlock_core::RedlockConfig;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    config::{JobLockConfig, TaskIdKey},
    layer::JobLockLayer,
    marker::CompletionMarkers,
    service::JobLock,
};

/// Guards a job handler, so that it goes into `WorkerBuilder::build` already wrapped:
///
/// ```no_run
/// use std::time::Duration;
/// use apalis::prelude::*;
/// use apalis_redis::RedisStorage;
/// use redlock_apalis::{CompletionMarkers, JobLockExt};
/// use redlock_core::Redlock;
///
/// async fn send_invoice(id: u64) -> Result<(), BoxDynError> {
///     Ok(())
/// }
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let nodes = ["redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003"];
/// let redlock = Redlock::builder().nodes(nodes).build()?;
/// let markers = CompletionMarkers::new(nodes)?;
/// let storage = RedisStorage::<u64>::new(apalis_redis::connect("redis://127.0.0.1:7010").await?);
///
/// let worker = WorkerBuilder::new("invoices-host1-1234")
///     .backend(storage.poll_with_interval(Duration::from_millis(200)))
///     .retry(RetryPolicy::retries(3).retry_if(redlock_apalis::not_locked)) // no retry on contention
///     .build(send_invoice.lock_jobs(redlock, markers)); // inside the lifecycle service
/// worker.run().await?;
/// # Ok(())
/// # }
/// ```
///
/// `markers` must live on the lock's nodes: [`CompletionMarkers::for_redlock`] builds them from
/// the `Redlock`'s own configuration.
///
/// Implemented for async functions taking the job and up to 16 extractors (like `build` itself),
/// and for any `Service<Task<Args>>`. `Args` and `Svc` are inferred; they only tell the two
/// kinds of implementations apart. The same trait shape as apalis's own `IntoWorkerService`.
pub trait JobLockExt<Args, Svc>: Sized {
    /// Guards the handler, keyed by task id, with the default [`JobLockConfig`].
    fn lock_jobs(self, redlock: Redlock, markers: CompletionMarkers) -> JobLock<Svc, TaskIdKey> {
        self.lock_jobs_with(redlock, markers, JobLockConfig::new())
    }

    /// Guards the handler with `config`: a key function, a lease, a dedup window.
    fn lock_jobs_with<K>(
        self,
        redlock: Redlock,
        markers: CompletionMarkers,
        config: JobLockConfig<K>,
    ) -> JobLock<Svc, K>;
}

impl<S, Args> JobLockExt<Args, S> for S
where
    S: Service<Task<Args>>,
{
    fn lock_jobs_with<K>(
        self,
        redlock: Redlock,
        markers: CompletionMarkers,
        config: JobLockConfig<K>,
    ) -> JobLock<S, K> {
        JobLockLayer::with_config(redlock, markers, config).layer(self)
    }
}

// A handler function becomes the same `TaskFn` service that `build` would have made of it. The
// two impls cannot overlap: `Svc` would have to be both `T` and `TaskFn<T, ..>`.
impl<T, Args, FnArgs> JobLockExt<Args, TaskFn<T, Args, FnArgs>> for T
where
    TaskFn<T, Args, FnArgs>: Service<Task<Args>>,
{
    fn lock_jobs_with<K>(
        self,
        redlock: Redlock,
        markers: CompletionMarkers,
        config: JobLockConfig<K>,
    ) -> JobLock<TaskFn<T, Args, FnArgs>, K> {
        JobLockLayer::with_config(redlock, markers, config).layer(task_fn(self))
    }
}
