//! [`JobLockConfig`]: what a guarded job locks on and for how long, and [`MakeJobKey`], the key
//! derivation.

use std::{fmt, time::Duration};

use apalis_core::task::Task;
use redlock_core::AutoExtend;

/// Derives the key a job is locked and deduplicated on.
///
/// Implemented by [`TaskIdKey`] (the default: the task id) and by every closure
/// `Fn(&Args) -> String`, which computes a dedup key from the job's arguments, so that two
/// pushes of the same logical work ("invoice:42") run once:
///
/// ```
/// use redlock_apalis::JobLockConfig;
/// # struct Invoice { id: u64 }
///
/// let config = JobLockConfig::new().key_fn(|job: &Invoice| format!("invoice:{}", job.id));
/// ```
pub trait MakeJobKey<Args> {
    /// The key of `task`, or `None` when it has none (the job is then aborted, see
    /// [`Error::MissingTaskId`](crate::Error::MissingTaskId)).
    fn make_key(&self, task: &Task<Args>) -> Option<String>;
}

/// Keys each job by its task id: a ULID assigned when apalis-redis stores the job, and kept
/// across retries, reschedules and orphan re-deliveries. Two *pushes* of the same work get two
/// ids; use [`JobLockConfig::key_fn`] to deduplicate those.
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskIdKey;

impl<Args> MakeJobKey<Args> for TaskIdKey {
    fn make_key(&self, task: &Task<Args>) -> Option<String> {
        task.task_id().map(ToString::to_string)
    }
}

impl<Args, F> MakeJobKey<Args> for F
where
    F: Fn(&Args) -> String,
{
    fn make_key(&self, task: &Task<Args>) -> Option<String> {
        Some(self(&task.args))
    }
}

/// How jobs are guarded: the key, the lease, auto-extension and the dedup window.
///
/// ```
/// use std::time::Duration;
/// use redlock_apalis::JobLockConfig;
/// # struct Email { to: String }
///
/// let config = JobLockConfig::new()
///     .key_fn(|job: &Email| format!("welcome:{}", job.to))
///     .ttl(Duration::from_secs(30))
///     .dedup_window(Duration::from_secs(7 * 24 * 3600));
/// ```
#[derive(Clone)]
#[must_use]
pub struct JobLockConfig<K = TaskIdKey> {
    pub(crate) key: K,
    pub(crate) namespace: String,
    pub(crate) ttl: Option<Duration>,
    pub(crate) fencing: Option<bool>,
    pub(crate) extend: AutoExtend,
    pub(crate) dedup_window: Duration,
}

impl<K> fmt::Debug for JobLockConfig<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobLockConfig")
            .field("key", &std::any::type_name::<K>())
            .field("namespace", &self.namespace)
            .field("ttl", &self.ttl)
            .field("fencing", &self.fencing)
            .field("extend", &self.extend)
            .field("dedup_window", &self.dedup_window)
            .finish()
    }
}

impl Default for JobLockConfig {
    fn default() -> Self {
        JobLockConfig {
            key: TaskIdKey,
            namespace: "job:".to_owned(),
            ttl: None,
            fencing: None,
            extend: AutoExtend::new(),
            dedup_window: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl JobLockConfig {
    /// Every setting at its default: keyed by task id, the `Redlock`'s ttl, extended every third
    /// of it, a 24 h dedup window.
    pub fn new() -> Self {
        JobLockConfig::default()
    }
}

impl<K> JobLockConfig<K> {
    /// Locks and deduplicates on a key computed from the job's arguments, such as
    /// `|job: &Invoice| format!("invoice:{}", job.id)`. Jobs with the same key never run at the
    /// same time, and once one of them completed, the others are acknowledged without running
    /// until the dedup window ends. Defaults to the task id ([`TaskIdKey`]).
    pub fn key_fn<F>(self, key: F) -> JobLockConfig<F> {
        JobLockConfig {
            key,
            namespace: self.namespace,
            ttl: self.ttl,
            fencing: self.fencing,
            extend: self.extend,
            dedup_window: self.dedup_window,
        }
    }

    /// Namespace placed before every key, so that several queues can share nodes. The lock is
    /// taken on resource `{namespace}lock:{key}` (the `Redlock` adds its own key prefix) and the
    /// marker is `{namespace}done:{key}` (after the markers' prefix). Defaults to `"job:"`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Lease of each job lock. Auto-extension renews it while the job runs, so it bounds how
    /// long a crashed worker keeps a key blocked, not how long a job may run. Defaults to the
    /// `Redlock`'s ttl.
    pub fn ttl(mut self, ttl: impl Into<Option<Duration>>) -> Self {
        self.ttl = ttl.into();
        self
    }

    /// Issues a fencing token with each job lock (see
    /// [`JobLockInfo::fencing_token`](crate::JobLockInfo::fencing_token)). Defaults to the
    /// `Redlock`'s setting.
    pub fn fencing(mut self, enabled: impl Into<Option<bool>>) -> Self {
        self.fencing = enabled.into();
        self
    }

    /// How the lock is kept alive while the job runs, for example with a
    /// [`max_hold`](AutoExtend::max_hold) after which a runaway job loses its lock and is
    /// dropped. Defaults to [`AutoExtend::new`]: every third of the ttl, unbounded.
    pub fn auto_extend(mut self, extend: AutoExtend) -> Self {
        self.extend = extend;
        self
    }

    /// How long a completed key stays done: deliveries of the key within this window are
    /// acknowledged without running. A zero window is taken as 1 ms. Defaults to 24 h.
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = window.max(Duration::from_millis(1));
        self
    }

    /// The resource locked for `key`.
    pub(crate) fn lock_resource(&self, key: &str) -> String {
        format!("{}lock:{key}", self.namespace)
    }

    /// The marker key for `key`, before the markers' prefix.
    pub(crate) fn marker_key(&self, key: &str) -> String {
        format!("{}done:{key}", self.namespace)
    }
}

#[cfg(test)]
mod tests {
    use apalis_core::task::{builder::TaskBuilder, task_id::TaskId};

    use super::*;

    struct Invoice {
        id: u64,
    }

    #[test]
    fn task_id_key_reads_the_id_and_closures_read_the_args() {
        let id = TaskId::from_string("01J0000000000000000000000A");
        let task = TaskBuilder::new(Invoice { id: 42 })
            .task_id(id.clone())
            .build();
        assert_eq!(TaskIdKey.make_key(&task), Some(id.to_string()));
        let by_args = |job: &Invoice| format!("invoice:{}", job.id);
        assert_eq!(by_args.make_key(&task).as_deref(), Some("invoice:42"));
        let anonymous = TaskBuilder::new(Invoice { id: 1 }).build();
        assert_eq!(TaskIdKey.make_key(&anonymous), None);
    }

    #[test]
    fn lock_and_marker_keys_never_collide() {
        let config = JobLockConfig::new();
        assert_eq!(config.lock_resource("a"), "job:lock:a");
        assert_eq!(config.marker_key("a"), "job:done:a");
        // A user key that looks like a marker still lands under `lock:`.
        assert_ne!(config.lock_resource("done:a"), config.marker_key("a"));
        let config = config.namespace("emails:");
        assert_eq!(config.marker_key("a"), "emails:done:a");
    }

    #[test]
    fn a_zero_dedup_window_is_clamped() {
        let config = JobLockConfig::new().dedup_window(Duration::ZERO);
        assert_eq!(config.dedup_window, Duration::from_millis(1));
    }
}
