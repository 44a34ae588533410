//! [`LockBody`]: the response body, which can keep the lock until the body ends.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use futures_util::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use redlock_core::{Lock, LockLost};

use crate::{error::BoxError, rejection::Rejection, run};

pin_project! {
    /// The response body of [`RequestLock`](crate::RequestLock) for HTTP: the inner service's
    /// body, unchanged, unless
    /// [`hold_until_body_end`](crate::RequestLockLayer::hold_until_body_end) is set.
    ///
    /// Then the lock stays held (and auto-extended) while the body streams, and is released
    /// when the body ends: the end of the stream is reported only once the release has
    /// finished, so a client reading the body to its end (without a `Content-Length`) cannot
    /// overtake the release. If the body is dropped early (the client went away), the lock is
    /// released in the background. If the lock is lost while the body streams, the body ends
    /// with a [`Rejection::Lost`] error, which makes hyper abort the response.
    pub struct LockBody<B> {
        #[pin]
        inner: B,
        // `Some` while a lock is held for this body.
        hold: Option<Hold>,
    }
}

/// The lock a body keeps, and how far its release has got.
struct Hold {
    /// `None` once the release has started.
    lock: Option<Lock>,
    /// Fires when the lock's deadline passes unextended.
    lost: LockLost,
    resource: String,
    retry_after: Duration,
    /// The release started at the end of the stream; the end is reported when it is done.
    release: Option<BoxFuture<'static, ()>>,
}

impl<B> LockBody<B> {
    pub(crate) fn new(inner: B, lock: Option<Lock>, retry_after: Duration) -> Self {
        let hold = lock.map(|lock| Hold {
            lost: lock.lost(),
            resource: lock.resource().to_owned(),
            retry_after,
            lock: Some(lock),
            release: None,
        });
        LockBody { inner, hold }
    }

    pub(crate) fn unlocked(inner: B) -> Self {
        LockBody { inner, hold: None }
    }

    /// Whether this body still holds a lock.
    pub fn holds_lock(&self) -> bool {
        self.hold.as_ref().is_some_and(|h| h.lock.is_some())
    }

    /// The inner body. A lock this body still holds is released in the background.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Default> Default for LockBody<B> {
    fn default() -> Self {
        LockBody::unlocked(B::default())
    }
}

impl<B> fmt::Debug for LockBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockBody")
            .field("holds_lock", &self.holds_lock())
            .finish_non_exhaustive()
    }
}

impl<B> Body for LockBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some(hold) = this.hold.as_mut() {
            if let Some(release) = hold.release.as_mut() {
                ready!(release.as_mut().poll(cx));
                *this.hold = None;
                return Poll::Ready(None);
            }
            if Pin::new(&mut hold.lost).poll(cx).is_ready() {
                let rejection = Rejection::Lost {
                    resource: std::mem::take(&mut hold.resource),
                    retry_after: hold.retry_after,
                };
                tracing::warn!(key = %rejection.resource(), "lock lost while the body streamed");
                // Dropping the lock releases what is left of it in the background.
                *this.hold = None;
                return Poll::Ready(Some(Err(Box::new(rejection))));
            }
        }
        match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            Some(Err(error)) => {
                *this.hold = None;
                Poll::Ready(Some(Err(error.into())))
            }
            None => {
                let Some(hold) = this.hold.as_mut() else {
                    return Poll::Ready(None);
                };
                let Some(lock) = hold.lock.take() else {
                    *this.hold = None;
                    return Poll::Ready(None);
                };
                let release = hold.release.insert(Box::pin(run::release(lock)));
                ready!(release.as_mut().poll(cx));
                *this.hold = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // While a lock is held the end must be polled for, so that the release runs then.
        self.hold.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
