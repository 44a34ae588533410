//! [`LockInfo`]: what a handler can see of the lock it runs under.

use std::time::{Duration, Instant};

use redlock_core::{FencingToken, LockHandle, LockLost};

/// The lock a request runs under, inserted into the request's extensions before the inner
/// service is called (HTTP only). In axum, take it with `Extension<LockInfo>`.
///
/// It is a live view: [`deadline`](LockInfo::deadline) moves forward as the lock is
/// auto-extended. Pass the [fencing token](LockInfo::fencing_token) to anything downstream that
/// can reject stale writers.
///
/// ```no_run
/// use axum::Extension;
/// use redlock_tower::LockInfo;
///
/// async fn withdraw(Extension(lock): Extension<LockInfo>) -> String {
///     format!("{} held for {:?} more", lock.resource(), lock.remaining())
/// }
/// ```
#[derive(Clone, Debug)]
pub struct LockInfo {
    handle: LockHandle,
}

impl LockInfo {
    pub(crate) fn new(handle: LockHandle) -> Self {
        LockInfo { handle }
    }

    /// The lock key (the Redlock resource name).
    pub fn resource(&self) -> &str {
        self.handle.resource()
    }

    /// The fencing token of this acquisition, when fencing is enabled on the
    /// [`Redlock`](redlock_core::Redlock) or in the layer's
    /// [lock options](crate::RequestLockLayer::lock_options).
    pub fn fencing_token(&self) -> Option<FencingToken> {
        self.handle.fencing_token()
    }

    /// The instant until which the lock is held, as of the last successful extension.
    pub fn deadline(&self) -> Instant {
        self.handle.deadline()
    }

    /// Time left before the deadline; zero once it passed.
    pub fn remaining(&self) -> Duration {
        self.handle.remaining()
    }

    /// A future that resolves when the lock is lost. The layer already drops the inner future
    /// at that moment; this is for work spawned outside it.
    pub fn lost(&self) -> LockLost {
        self.handle.lost()
    }

    /// The underlying handle of redlock-core.
    pub fn handle(&self) -> &LockHandle {
        &self.handle
    }
}
