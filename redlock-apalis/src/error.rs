//! Errors: [`Error`] for setup and bad input, and the small rejection types a guarded job fails
//! with, in the vocabulary apalis understands. The crate docs have the table of outcomes.

use redlock_core::{NodeError, redis::RedisError};

/// A `Result` whose error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error, as apalis passes them around.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Setup errors, and the input errors that make a job impossible to guard.
///
/// At job time these are returned wrapped in apalis's
/// [`AbortError`](apalis_core::error::AbortError): retrying cannot fix them, so the job goes to
/// the dead set instead of looping.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [`CompletionMarkers::new`](crate::CompletionMarkers::new) was given no node.
    #[error("no completion marker nodes configured")]
    NoNodes,
    /// A marker node URL could not be parsed. The password, if any, is redacted.
    #[error("invalid marker node url {url}")]
    InvalidUrl {
        /// The URL with its password replaced by `***`.
        url: String,
        /// Why redis-rs rejected it.
        #[source]
        source: RedisError,
    },
    /// The task has no id and no key function is configured. apalis-redis always assigns one;
    /// other backends may not: use [`JobLockConfig::key_fn`](crate::JobLockConfig::key_fn).
    #[error("task has no id to lock on; configure a key function")]
    MissingTaskId,
    /// The key function returned an empty key.
    #[error("job key is empty")]
    EmptyKey,
    /// redlock-core rejected the lock settings (for example a ttl out of range).
    #[error("invalid lock settings for job {key}")]
    Lock {
        /// The job key.
        key: String,
        /// What redlock-core rejected.
        #[source]
        source: redlock_core::Error,
    },
}

/// The job's key is locked by another worker: it is running there now.
///
/// The job is not run here and fails this attempt, so the backend delivers it again later; by
/// then the holder has either finished (the completion marker makes the next delivery a no-op)
/// or died (its lock expires and the next delivery runs the job). Exclude it from in-process
/// retries with `e.downcast_ref::<JobLocked>().is_none()`. See the [crate docs](crate).
#[derive(Clone, Debug, thiserror::Error)]
#[error("job {key} is locked by another worker")]
pub struct JobLocked {
    key: String,
}

impl JobLocked {
    pub(crate) fn new(key: String) -> Self {
        JobLocked { key }
    }

    /// The job key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// The lock was lost while the job ran (its deadline passed without a successful extension,
/// for example because a majority of lock nodes stopped answering).
///
/// The job future was dropped at its current await point and the attempt fails, so the backend
/// delivers the job again. See the [crate docs](crate).
#[derive(Clone, Debug, thiserror::Error)]
#[error("lock on job {key} was lost while it ran")]
pub struct JobLockLost {
    key: String,
}

impl JobLockLost {
    pub(crate) fn new(key: String) -> Self {
        JobLockLost { key }
    }

    /// The job key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Too few lock or marker nodes answered to decide whether the job may run. The job is not
/// run and the attempt fails, so the backend delivers it again later. See the
/// [crate docs](crate).
#[derive(Debug, thiserror::Error)]
#[error("lock service unavailable for job {key}")]
pub struct LockUnavailable {
    key: String,
    #[source]
    source: BoxError,
}

impl LockUnavailable {
    pub(crate) fn new(key: String, source: impl Into<BoxError>) -> Self {
        LockUnavailable {
            key,
            source: source.into(),
        }
    }

    /// The job key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// A predicate for apalis's `RetryPolicy::retry_if`: retry any error except [`JobLocked`].
///
/// Retrying contention in-process only calls the guard again while the other worker still
/// holds the key; the backend's own rescheduling is what waits for it. A function rather than a
/// closure also sidesteps a higher-ranked lifetime error that `|e: &BoxDynError| ..` closures
/// hit when the worker future is spawned.
///
/// ```
/// use apalis::layers::retry::RetryPolicy;
///
/// let policy = RetryPolicy::retries(3).retry_if(redlock_apalis::not_locked);
/// ```
pub fn not_locked(error: &BoxError) -> bool {
    error.downcast_ref::<JobLocked>().is_none()
}

/// Too few completion-marker nodes answered a read or a write.
#[derive(Debug, thiserror::Error)]
#[error("marker quorum not reached: {answered}/{needed} nodes")]
pub struct MarkerError {
    /// Nodes that answered (for a write: that stored the marker).
    pub answered: usize,
    /// Nodes needed.
    pub needed: usize,
    /// What went wrong on the nodes that failed.
    pub failures: Vec<NodeError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_lowercase_and_names_the_key() {
        assert_eq!(
            JobLocked::new("invoice:42".into()).to_string(),
            "job invoice:42 is locked by another worker"
        );
        assert_eq!(
            JobLockLost::new("k".into()).to_string(),
            "lock on job k was lost while it ran"
        );
        let marker = MarkerError {
            answered: 1,
            needed: 2,
            failures: Vec::new(),
        };
        assert_eq!(marker.to_string(), "marker quorum not reached: 1/2 nodes");
        let unavailable = LockUnavailable::new("k".into(), marker);
        assert_eq!(
            unavailable.to_string(),
            "lock service unavailable for job k"
        );
        assert!(std::error::Error::source(&unavailable).is_some());
    }

    #[test]
    fn contention_is_found_by_downcasting_the_boxed_error() {
        let boxed: BoxError = Box::new(JobLocked::new("k".into()));
        assert!(boxed.downcast_ref::<JobLocked>().is_some());
        let other: BoxError = Box::new(JobLockLost::new("k".into()));
        assert!(other.downcast_ref::<JobLocked>().is_none());
        assert!(!not_locked(&boxed));
        assert!(not_locked(&other));
    }
}
