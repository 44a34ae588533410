//! [`Redlock::run`]: a critical section that stops when the lock is lost.

use std::future::Future;

use tracing::{instrument, warn};

use crate::{
    error::{Error, Result},
    lock::LockHandle,
    redlock::{LockOptions, Redlock},
    watchdog::AutoExtend,
};

impl Redlock {
    /// Runs `work` while holding `resource`: acquires (retrying per policy), keeps the lock alive
    /// with [`AutoExtend::default`], and releases on every exit path.
    ///
    /// The lock is *enforced*, not advisory: `work` is raced against [`Lock::lost`](crate::Lock::lost),
    /// and the moment the deadline passes without a successful extension (nodes unreachable,
    /// majority paused) `work` is dropped at its current await point and `run` returns
    /// [`Error::Lost`]. Code after that await never runs. Side effects that must not happen
    /// without the lock should still carry the [fencing token](crate::LockHandle::fencing_token),
    /// since a write already in flight cannot be recalled.
    ///
    /// ```no_run
    /// # async fn demo(redlock: redlock_core::Redlock) -> Result<(), redlock_core::Error> {
    /// let total = redlock
    ///     .run("orders:42", |lock| async move {
    ///         // ... work while the lock is held; lock.remaining(), lock.fencing_token() ...
    ///         lock.resource().len()
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`lock`](Redlock::lock), plus [`Error::Lost`] when the lock was lost before `work`
    /// finished.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops `work` and releases the lock in the background. A panic in
    /// `work` unwinds through here and releases the lock the same way.
    pub async fn run<F, Fut, T>(&self, resource: &str, work: F) -> Result<T>
    where
        F: FnOnce(LockHandle) -> Fut,
        Fut: Future<Output = T>,
    {
        self.run_with(
            resource,
            LockOptions::default(),
            AutoExtend::default(),
            work,
        )
        .await
    }

    /// [`run`](Redlock::run) with per-call lock options and auto-extension settings (for example
    /// a `max_hold`).
    ///
    /// # Errors
    ///
    /// As [`run`](Redlock::run).
    ///
    /// # Cancel safety
    ///
    /// As [`run`](Redlock::run).
    #[instrument(level = "debug", skip_all, fields(key = %resource))]
    pub async fn run_with<F, Fut, T>(
        &self,
        resource: &str,
        options: LockOptions,
        extend: AutoExtend,
        work: F,
    ) -> Result<T>
    where
        F: FnOnce(LockHandle) -> Fut,
        Fut: Future<Output = T>,
    {
        let lock = self.lock_with(resource, options).await?;
        lock.auto_extend(extend);
        let lost = lock.lost();
        let outcome = tokio::select! {
            // Checked first: once the deadline has passed, a result is not trusted.
            biased;
            () = lost => None,
            out = work(lock.handle()) => Some(out),
        };
        match outcome {
            Some(out) => {
                if let Err(error) = lock.release().await {
                    // The work is done; the keys that did not answer expire by ttl.
                    warn!(%error, "release after run failed");
                }
                Ok(out)
            }
            None => {
                warn!("lock lost: work dropped");
                drop(lock);
                Err(Error::Lost {
                    key: resource.to_owned(),
                })
            }
        }
    }
}
