//! The response future of [`RequestLock`](crate::RequestLock).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use futures_util::{TryFuture, future::BoxFuture};
use http::Response;
use pin_project_lite::pin_project;

use crate::{
    body::LockBody,
    error::BoxError,
    rejection::{DefaultOnRejection, OnRejection, RejectAsError},
    run::Outcome,
};

pin_project! {
    /// Response future of [`RequestLock`](crate::RequestLock).
    ///
    /// A request without a key polls the inner future `F` directly. A locked one runs in a
    /// boxed future (acquire, call, release: network I/O that dwarfs the allocation).
    /// Dropping this future drops the inner future and the lock, which is then released in
    /// the background: a client that disconnects leaves no key behind.
    pub struct ResponseFuture<F, R = DefaultOnRejection>
    where
        F: TryFuture,
    {
        #[pin]
        kind: Kind<F>,
        on_rejection: R,
        retry_after: Duration,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F>
    where
        F: TryFuture,
    {
        Unlocked {
            #[pin]
            future: F,
        },
        Locked {
            future: BoxFuture<'static, Result<Outcome<F::Ok>, F::Error>>,
        },
    }
}

impl<F: TryFuture, R> ResponseFuture<F, R> {
    pub(crate) fn unlocked(future: F, on_rejection: R) -> Self {
        ResponseFuture {
            kind: Kind::Unlocked { future },
            on_rejection,
            retry_after: Duration::ZERO,
        }
    }

    pub(crate) fn locked(
        future: BoxFuture<'static, Result<Outcome<F::Ok>, F::Error>>,
        on_rejection: R,
        retry_after: Duration,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Locked { future },
            on_rejection,
            retry_after,
        }
    }
}

impl<F, R, B, E> Future for ResponseFuture<F, R>
where
    F: Future<Output = Result<Response<B>, E>>,
    R: OnRejection<B>,
{
    type Output = Result<Response<LockBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = match this.kind.project() {
            KindProj::Unlocked { future } => {
                let response = ready!(future.poll(cx))?;
                return Poll::Ready(Ok(response.map(LockBody::unlocked)));
            }
            KindProj::Locked { future } => ready!(future.as_mut().poll(cx))?,
        };
        Poll::Ready(Ok(match outcome {
            Outcome::Response { response, lock } => {
                let retry_after = *this.retry_after;
                response.map(|body| LockBody::new(body, lock, retry_after))
            }
            Outcome::Rejected(rejection) => this
                .on_rejection
                .on_rejection(rejection)
                .map(LockBody::unlocked),
        }))
    }
}

impl<F, T, E> Future for ResponseFuture<F, RejectAsError>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let outcome = match self.project().kind.project() {
            KindProj::Unlocked { future } => {
                return future.poll(cx).map_err(Into::into);
            }
            KindProj::Locked { future } => ready!(future.as_mut().poll(cx)).map_err(Into::into)?,
        };
        Poll::Ready(match outcome {
            // Without a body to carry it, the lock was released before the response
            // (`serve` is called with `hold = false`).
            Outcome::Response { response, .. } => Ok(response),
            Outcome::Rejected(rejection) => Err(Box::new(rejection)),
        })
    }
}

impl<F: TryFuture, R> fmt::Debug for ResponseFuture<F, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Unlocked { .. } => "unlocked",
            Kind::Locked { .. } => "locked",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}
