//! [`LockLost`]: a future that fires when a lock's deadline passes unextended.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use tokio::sync::watch;

/// Resolves when the lock's deadline passes without a successful extension.
///
/// It watches the deadline that [`Lock::extend`](crate::Lock::extend) and the auto-extension
/// publish, and sleeps on this process's monotonic clock: no node needs to answer for it to
/// fire, so it fires even when every node is unreachable. Clones are independent futures
/// watching the same lock. Returned by [`Lock::lost`](crate::Lock::lost).
pub struct LockLost {
    deadline: watch::Receiver<Instant>,
    wait: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
}

impl LockLost {
    pub(crate) fn new(deadline: watch::Receiver<Instant>) -> Self {
        LockLost {
            deadline,
            wait: None,
        }
    }
}

impl Clone for LockLost {
    fn clone(&self) -> Self {
        LockLost::new(self.deadline.clone())
    }
}

impl fmt::Debug for LockLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockLost")
            .field("deadline", &*self.deadline.borrow())
            .finish()
    }
}

impl Future for LockLost {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let rx = self.deadline.clone();
        self.wait
            .get_or_insert_with(|| Box::pin(wait_past_deadline(rx)))
            .as_mut()
            .poll(cx)
    }
}

async fn wait_past_deadline(mut rx: watch::Receiver<Instant>) {
    loop {
        let deadline = *rx.borrow_and_update();
        tokio::select! {
            () = tokio::time::sleep_until(deadline.into()) => {
                // An extension may have published a later deadline while we slept.
                if *rx.borrow() <= Instant::now() {
                    return;
                }
            }
            changed = rx.changed() => {
                if changed.is_err() {
                    // The lock is gone; it stops being held at its last deadline.
                    let last = *rx.borrow();
                    tokio::time::sleep_until(last.into()).await;
                    return;
                }
            }
        }
    }
}
