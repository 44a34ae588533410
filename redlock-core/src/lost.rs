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
    time::Duration,
};

use tokio::sync::Notify;

use crate::{
    clock::{LeaseInstant, ResumeWatch},
    lock::LockState,
};

/// A lock's deadline, on the lease clock: read without locking by every getter, moved by
/// extensions, which wake the [`LockLost`] futures watching it. (A `tokio::sync::watch` channel
/// did this before; it cost an allocation of about half a kilobyte per lock.)
pub(crate) struct Deadline {
    /// Nanoseconds after [`epoch`].
    nanos: AtomicU64,
    moved: Notify,
}

/// The origin of stored deadlines: the first time any lock was granted in this process.
fn epoch() -> LeaseInstant {
    static EPOCH: OnceLock<LeaseInstant> = OnceLock::new();
    *EPOCH.get_or_init(LeaseInstant::now)
}

fn since_epoch(at: LeaseInstant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

impl Deadline {
    pub(crate) fn new(at: LeaseInstant) -> Deadline {
        Deadline {
            nanos: AtomicU64::new(since_epoch(at)),
            moved: Notify::new(),
        }
    }

    pub(crate) fn get(&self) -> LeaseInstant {
        epoch() + Duration::from_nanos(self.nanos.load(Ordering::Acquire))
    }

    /// Moves the deadline (later after an extension, earlier after a failed one that some nodes
    /// applied with a shorter ttl) and wakes every `lost()` future.
    pub(crate) fn set(&self, at: LeaseInstant) {
        self.nanos.store(since_epoch(at), Ordering::Release);
        self.moved.notify_waiters();
    }
}

/// Resolves when the lock's deadline passes without a successful extension.
///
/// It watches the deadline that [`Lock::extend`](crate::Lock::extend) and the auto-extension
/// move, and sleeps on this process's clock: no node needs to answer for it to fire, so it fires
/// even when every node is unreachable. The time the system spends suspended counts, as it does
/// for the nodes' keys: woken from a suspension that outlasted the lease, it fires within half
/// a second. Once the lock is released or dropped, it fires at the last deadline. Clones are
/// independent futures watching the same lock. Returned by [`Lock::lost`](crate::Lock::lost).
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
            .field("remaining", &self.state.deadline().left())
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
    // Timers stop while the system is suspended: this wakes us when it was.
    let suspension = ResumeWatch::new();
    loop {
        // Registered before the deadline and the clock are read, so a move or a suspension
        // found in between still wakes us.
        let moved = deadline.moved.notified();
        let resumed = suspension.resumed();
        tokio::pin!(moved, resumed);
        moved.as_mut().enable();
        resumed.as_mut().enable();
        let at = deadline.get();
        if at.has_passed() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep_until(at.to_instant().into()) => {}
            () = &mut moved => {}
            () = &mut resumed => {}
        }
    }
}
