//! [`LockLost`]: a future that fires when a lock's deadline passes unextended.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use crate::lock::LockState;

/// A lock's deadline: read without locking by every getter, moved by extensions, which wake the
/// [`LockLost`] futures watching it. (A `tokio::sync::watch` channel did this before; it cost an
/// allocation of about half a kilobyte per lock.)
pub(crate) struct Deadline {
    /// Nanoseconds after [`epoch`].
    nanos: AtomicU64,
    moved: Notify,
}

/// The origin of stored deadlines: the first time any lock was granted in this process.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

impl Deadline {
    pub(crate) fn new(at: Instant) -> Deadline {
        Deadline {
            nanos: AtomicU64::new(since_epoch(at)),
            moved: Notify::new(),
        }
    }

    pub(crate) fn get(&self) -> Instant {
        epoch() + Duration::from_nanos(self.nanos.load(Ordering::Acquire))
    }

    /// Moves the deadline (later after an extension, earlier after a failed one that some nodes
    /// applied with a shorter ttl) and wakes every `lost()` future.
    pub(crate) fn set(&self, at: Instant) {
        self.nanos.store(since_epoch(at), Ordering::Release);
        self.moved.notify_waiters();
    }
}

/// Resolves when the lock's deadline passes without a successful extension.
///
/// It watches the deadline that [`Lock::extend`](crate::Lock::extend) and the auto-extension
/// move, and sleeps on this process's monotonic clock: no node needs to answer for it to fire,
/// so it fires even when every node is unreachable. Once the lock is released or dropped, it
/// fires at the last deadline. Clones are independent futures watching the same lock. Returned
/// by [`Lock::lost`](crate::Lock::lost).
pub struct LockLost {
    state: Arc<LockState>,
    wait: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
}

impl LockLost {
    pub(crate) fn new(state: Arc<LockState>) -> Self {
        LockLost { state, wait: None }
    }
}

impl Clone for LockLost {
    fn clone(&self) -> Self {
        LockLost::new(self.state.clone())
    }
}

impl fmt::Debug for LockLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockLost")
            .field("deadline", &self.state.deadline())
            .finish()
    }
}

impl Future for LockLost {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let state = self.state.clone();
        self.wait
            .get_or_insert_with(|| Box::pin(wait_past_deadline(state)))
            .as_mut()
            .poll(cx)
    }
}

async fn wait_past_deadline(state: Arc<LockState>) {
    let deadline = state.deadline_cell();
    loop {
        // Registered before the deadline is read, so a move in between still wakes us.
        let moved = deadline.moved.notified();
        tokio::pin!(moved);
        moved.as_mut().enable();
        let at = deadline.get();
        if Instant::now() >= at {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep_until(at.into()) => {}
            () = &mut moved => {}
        }
    }
}
