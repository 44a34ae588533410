//! [`RequestLock`]: the middleware service, for `http::Request` and for any request type.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use redlock_core::{Lock, Redlock};
use tower_service::Service;

use crate::{
    body::LockBody,
    error::BoxError,
    future::ResponseFuture,
    info::LockInfo,
    key::MakeLockKey,
    layer::RequestLockLayer,
    rejection::{DefaultOnRejection, OnRejection, RejectAsError},
    run::{self, Settings},
};

/// Runs each request that has a key under a Redlock lock on that key, held across the whole
/// inner call. Usually built by [`RequestLockLayer`]. See the [crate docs](crate).
///
/// It is a `Service<http::Request<B>>` with the inner service's error type (rejections are
/// responses, built by `R`), and with `R = `[`RejectAsError`] a `Service<Req>` for any `Req`
/// whose error is [`BoxError`].
///
/// # Readiness
///
/// With [`fail_fast`](RequestLockLayer::fail_fast), `poll_ready` is the inner service's, and
/// `call` uses the service it readied (see the comment in `call`). With
/// [`wait`](RequestLockLayer::wait), `poll_ready` is always ready and the response future drives
/// the inner service's readiness itself once the lock is held: a request queueing for a lock
/// must not keep a slot of the inner service (a concurrency limit permit, a buffer slot) that
/// requests for other keys could use, or that the holder of the lock it waits for may need.
pub struct RequestLock<S, K, R = DefaultOnRejection> {
    inner: S,
    make_key: K,
    on_rejection: R,
    settings: Arc<Settings>,
}

impl<S, K> RequestLock<S, K> {
    /// Wraps `inner`, with the defaults of [`RequestLockLayer::new`].
    pub fn new(inner: S, redlock: Redlock, make_key: K) -> Self {
        RequestLock::from_parts(
            inner,
            make_key,
            DefaultOnRejection::new(),
            Arc::new(Settings::new(redlock)),
        )
    }

    /// A [`RequestLockLayer`] with the same arguments, for `ServiceBuilder`.
    pub fn layer(redlock: Redlock, make_key: K) -> RequestLockLayer<K> {
        RequestLockLayer::new(redlock, make_key)
    }
}

impl<S, K, R> RequestLock<S, K, R> {
    pub(crate) fn from_parts(
        inner: S,
        make_key: K,
        on_rejection: R,
        settings: Arc<Settings>,
    ) -> Self {
        RequestLock {
            inner,
            make_key,
            on_rejection,
            settings,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The service to move into a response future, and whether it is ready.
    fn take_inner(&mut self) -> (S, bool)
    where
        S: Clone,
    {
        if self.settings.waits() {
            // `poll_ready` did not touch `inner`: a clone is as good, and the future readies it.
            (self.inner.clone(), false)
        } else {
            // `poll_ready` readied `self.inner`, and a clone of it may not be ready (tower's
            // "be careful when cloning inner services"): take the readied one into the future
            // and leave the clone here, to be readied by the next `poll_ready`.
            let clone = self.inner.clone();
            (std::mem::replace(&mut self.inner, clone), true)
        }
    }
}

impl<S, K, R, ReqBody, ResBody> Service<Request<ReqBody>> for RequestLock<S, K, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    K: MakeLockKey<Request<ReqBody>>,
    R: OnRejection<ResBody> + Clone,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<LockBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.settings.waits() {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let key = self.make_key.make_key(&request);
        let on_rejection = self.on_rejection.clone();
        if key.is_none() && !self.settings.waits() {
            return ResponseFuture::unlocked(self.inner.call(request), on_rejection);
        }
        let inner = self.take_inner();
        let settings = self.settings.clone();
        ResponseFuture::locked(
            Box::pin(async move {
                let hold = settings.hold_body;
                run::serve(&settings, key, inner, request, insert_info, hold).await
            }),
            on_rejection,
            self.settings.retry_after,
        )
    }
}

fn insert_info<B>(request: &mut Request<B>, lock: &Lock) {
    request
        .extensions_mut()
        .insert(LockInfo::new(lock.handle()));
}

impl<S, K, Req> Service<Req> for RequestLock<S, K, RejectAsError>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    K: MakeLockKey<Req>,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, RejectAsError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.settings.waits() {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let key = self.make_key.make_key(&request);
        if key.is_none() && !self.settings.waits() {
            return ResponseFuture::unlocked(self.inner.call(request), RejectAsError);
        }
        let inner = self.take_inner();
        let settings = self.settings.clone();
        ResponseFuture::locked(
            Box::pin(
                async move { run::serve(&settings, key, inner, request, |_, _| {}, false).await },
            ),
            RejectAsError,
            self.settings.retry_after,
        )
    }
}

impl<S: Clone, K: Clone, R: Clone> Clone for RequestLock<S, K, R> {
    fn clone(&self) -> Self {
        RequestLock {
            inner: self.inner.clone(),
            make_key: self.make_key.clone(),
            on_rejection: self.on_rejection.clone(),
            settings: self.settings.clone(),
        }
    }
}

impl<S: fmt::Debug, K, R> fmt::Debug for RequestLock<S, K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestLock")
            .field("inner", &self.inner)
            .field("make_key", &std::any::type_name::<K>())
            .field("on_rejection", &std::any::type_name::<R>())
            .field("settings", &self.settings)
            .finish()
    }
}
