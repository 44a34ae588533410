//! [`RequestLockLayer`]: the configuration, applied to services with `Layer::layer`.

use std::{fmt, sync::Arc, time::Duration};

use http::{Response, StatusCode};
use redlock_core::{AutoExtend, LockOptions, Redlock};
use tower_layer::Layer;

use crate::{
    rejection::{DefaultOnRejection, RejectAsError, Rejection},
    run::{Contention, Settings},
    service::RequestLock,
};

/// Applies [`RequestLock`] to services: every request with a key runs under a Redlock lock on
/// that key. See the [crate docs](crate) for the semantics and examples.
///
/// Built with [`new`](RequestLockLayer::new), then consuming setters. Cloning is cheap.
#[must_use]
pub struct RequestLockLayer<K, R = DefaultOnRejection> {
    make_key: K,
    on_rejection: R,
    settings: Arc<Settings>,
}

impl<K> RequestLockLayer<K> {
    /// Locks each request on the key `make_key` derives from it (a closure
    /// `FnMut(&Req) -> Option<String>`, [`KeyFromHeader`](crate::KeyFromHeader) or
    /// [`KeyFromPath`](crate::KeyFromPath)); requests without a key pass through unlocked.
    ///
    /// Rejections are HTTP responses ([`DefaultOnRejection`]); for other request types, call
    /// [`rejections_as_errors`](RequestLockLayer::rejections_as_errors).
    pub fn new(redlock: Redlock, make_key: K) -> Self {
        RequestLockLayer {
            make_key,
            on_rejection: DefaultOnRejection::new(),
            settings: Arc::new(Settings::new(redlock)),
        }
    }
}

impl<K, R> RequestLockLayer<K, R> {
    /// Rejects a request at once when its key is held by another request: one acquisition
    /// attempt, then [`Rejection::Contended`] (`409 Conflict` by default). The inner service's
    /// readiness is checked before the attempt, as usual. This is the default.
    pub fn fail_fast(mut self) -> Self {
        self.settings_mut().contention = Contention::FailFast;
        self
    }

    /// Waits for a held key, for up to `max` from the request's arrival; then rejects with
    /// [`Rejection::Contended`], or [`Rejection::Unavailable`] when the nodes were the problem.
    /// Errors that may pass (too few nodes answering) are waited out too.
    ///
    /// The wait is redlock-core's [`lock_with`](Redlock::lock_with): the requests of this
    /// process that wait for one key line up in arrival order and only the first talks to the
    /// nodes; a release, here or on another replica, wakes it through a release notification,
    /// and [`wait_interval`](Self::wait_interval) bounds the pause when none arrives.
    ///
    /// While waiting, a request holds nothing of the inner service: `poll_ready` reports ready
    /// at once, and the inner service's readiness is awaited after the lock is acquired. So a
    /// concurrency limit or buffer inside this layer is not filled by requests queueing for a
    /// lock. Defaults to [`fail_fast`](Self::fail_fast).
    pub fn wait(mut self, max: Duration) -> Self {
        self.settings_mut().contention = Contention::Wait { max };
        self
    }

    /// Sets the longest pause between attempts while waiting, when no release notification
    /// comes first: `interval` plus a random part up to `interval`, so that waiters on different
    /// replicas do not retry in lockstep. Only used after [`wait`](Self::wait); kept between
    /// 1 ms and the wait's `max` (and at most an hour). Defaults to 20 ms.
    pub fn wait_interval(mut self, interval: Duration) -> Self {
        self.settings_mut().wait_interval = interval;
        self
    }

    /// Sets the options of each acquisition: lease length ([`LockOptions::ttl`]) and fencing
    /// ([`LockOptions::fencing`]). Their retry policy is not used: see
    /// [`fail_fast`](Self::fail_fast) and [`wait`](Self::wait). Defaults to the
    /// [`Redlock`]'s settings.
    pub fn lock_options(mut self, options: LockOptions) -> Self {
        self.settings_mut().options = options;
        self
    }

    /// Sets how the lock is kept alive while the request runs (for example a
    /// [`max_hold`](AutoExtend::max_hold), after which the lock is lost and the request gets
    /// [`Rejection::Lost`]). Defaults to [`AutoExtend::new`]: extend every third of the ttl,
    /// without bound.
    pub fn auto_extend(mut self, auto_extend: AutoExtend) -> Self {
        self.settings_mut().auto_extend = auto_extend;
        self
    }

    /// Keeps the lock until the response body has been sent, not just until the inner service
    /// has returned the response head (HTTP only; see [`LockBody`](crate::LockBody)). Use it for
    /// streamed bodies produced under the lock. Defaults to `false`.
    pub fn hold_until_body_end(mut self, hold: bool) -> Self {
        self.settings_mut().hold_body = hold;
        self
    }

    /// Sets the retry hint of every rejection ([`Rejection::retry_after`], the `Retry-After`
    /// header of the default responses). Defaults to 1 s.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.settings_mut().retry_after = after;
        self
    }

    /// Builds the rejection responses with `f` instead of [`DefaultOnRejection`]. `B` is the
    /// inner service's response body type (in axum, return an `axum::response::Response`).
    ///
    /// ```
    /// use axum::{http::StatusCode, response::{IntoResponse, Response}};
    /// use redlock_core::Redlock;
    /// use redlock_tower::{KeyFromHeader, Rejection, RequestLockLayer};
    ///
    /// # let redlock = Redlock::builder().nodes(["redis://127.0.0.1:7001"]).build()?;
    /// let layer = RequestLockLayer::new(redlock, KeyFromHeader::new("x-account-id")?)
    ///     .on_rejection(|rejection: Rejection| -> Response {
    ///         let status = if rejection.is_contended() {
    ///             StatusCode::LOCKED
    ///         } else {
    ///             StatusCode::SERVICE_UNAVAILABLE
    ///         };
    ///         (status, rejection.to_string()).into_response()
    ///     });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_rejection<F, B>(self, f: F) -> RequestLockLayer<K, F>
    where
        F: FnMut(Rejection) -> Response<B> + Clone,
    {
        RequestLockLayer {
            make_key: self.make_key,
            on_rejection: f,
            settings: self.settings,
        }
    }

    /// Makes rejections errors instead of responses, so the layer works for requests of any
    /// type: the service's error becomes [`BoxError`](crate::BoxError), holding either the
    /// inner service's error or a [`Rejection`] that can be downcast. Requests are not given a
    /// [`LockInfo`](crate::LockInfo) (there is no general place to put it) and responses are
    /// not wrapped.
    pub fn rejections_as_errors(self) -> RequestLockLayer<K, RejectAsError> {
        RequestLockLayer {
            make_key: self.make_key,
            on_rejection: RejectAsError,
            settings: self.settings,
        }
    }

    fn settings_mut(&mut self) -> &mut Settings {
        Arc::make_mut(&mut self.settings)
    }
}

impl<K> RequestLockLayer<K, DefaultOnRejection> {
    /// Sets the status of the response to a contended request, e.g. `423 Locked`. Defaults to
    /// `409 Conflict`.
    pub fn contended_status(mut self, status: StatusCode) -> Self {
        self.on_rejection = self.on_rejection.contended_status(status);
        self
    }
}

impl<S, K: Clone, R: Clone> Layer<S> for RequestLockLayer<K, R> {
    type Service = RequestLock<S, K, R>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLock::from_parts(
            inner,
            self.make_key.clone(),
            self.on_rejection.clone(),
            self.settings.clone(),
        )
    }
}

impl<K: Clone, R: Clone> Clone for RequestLockLayer<K, R> {
    fn clone(&self) -> Self {
        RequestLockLayer {
            make_key: self.make_key.clone(),
            on_rejection: self.on_rejection.clone(),
            settings: self.settings.clone(),
        }
    }
}

impl<K, R> fmt::Debug for RequestLockLayer<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestLockLayer")
            .field("make_key", &std::any::type_name::<K>())
            .field("on_rejection", &std::any::type_name::<R>())
            .field("settings", &self.settings)
            .finish()
    }
}
