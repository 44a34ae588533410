//! Why a request was refused ([`Rejection`]) and how the refusal reaches the client
//! ([`OnRejection`], [`DefaultOnRejection`], [`RejectAsError`]).

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header::RETRY_AFTER};

/// Why [`RequestLock`](crate::RequestLock) did not let a request run to completion.
///
/// For HTTP it becomes a response (see [`DefaultOnRejection`] and
/// [`on_rejection`](crate::RequestLockLayer::on_rejection)); with
/// [`rejections_as_errors`](crate::RequestLockLayer::rejections_as_errors) it is the error,
/// boxed, and can be downcast:
///
/// ```
/// use redlock_tower::{BoxError, Rejection};
///
/// fn is_busy(error: &BoxError) -> bool {
///     error.downcast_ref::<Rejection>().is_some_and(Rejection::is_contended)
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// Another request, here or on another replica, holds the key: at once with
    /// [`fail_fast`](crate::RequestLockLayer::fail_fast), or until the end of the wait with
    /// [`wait`](crate::RequestLockLayer::wait). The inner service was not called.
    #[error("lock {resource} is held by another request")]
    #[non_exhaustive]
    Contended {
        /// The lock key.
        resource: String,
        /// When the client may try again.
        retry_after: Duration,
    },
    /// The lock could not be acquired for another reason, usually that too few nodes answered.
    /// The inner service was not called.
    #[error("lock service unavailable for {resource}")]
    #[non_exhaustive]
    Unavailable {
        /// The lock key.
        resource: String,
        /// When the client may try again.
        retry_after: Duration,
        /// What redlock-core reported (per-node failures for [`redlock_core::Error::NoQuorum`]).
        #[source]
        source: redlock_core::Error,
    },
    /// The lock's deadline passed while the inner service was still working (the nodes stopped
    /// answering extensions), so its future was dropped at its current await point.
    #[error("lock {resource} was lost before the request completed")]
    #[non_exhaustive]
    Lost {
        /// The lock key.
        resource: String,
        /// When the client may try again.
        retry_after: Duration,
    },
}

impl Rejection {
    /// The lock key of the refused request.
    pub fn resource(&self) -> &str {
        match self {
            Rejection::Contended { resource, .. }
            | Rejection::Unavailable { resource, .. }
            | Rejection::Lost { resource, .. } => resource,
        }
    }

    /// When the client may try again; sent as `Retry-After` by [`DefaultOnRejection`].
    pub fn retry_after(&self) -> Duration {
        match self {
            Rejection::Contended { retry_after, .. }
            | Rejection::Unavailable { retry_after, .. }
            | Rejection::Lost { retry_after, .. } => *retry_after,
        }
    }

    /// True when another request holds the key.
    pub fn is_contended(&self) -> bool {
        matches!(self, Rejection::Contended { .. })
    }

    /// True when the lock could not be acquired for another reason than contention.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Rejection::Unavailable { .. })
    }

    /// True when the lock was lost mid-request and the inner future dropped.
    pub fn is_lost(&self) -> bool {
        matches!(self, Rejection::Lost { .. })
    }
}

/// Turns a [`Rejection`] into an HTTP response with body type `B`.
///
/// Implemented by [`DefaultOnRejection`] and by closures `FnMut(Rejection) -> Response<B>`
/// (set with [`on_rejection`](crate::RequestLockLayer::on_rejection)); the trait is sealed. `B`
/// is the inner service's response body type.
pub trait OnRejection<B>: sealed::Http {
    /// The response for `rejection`.
    fn on_rejection(&mut self, rejection: Rejection) -> Response<B>;
}

impl<F, B> OnRejection<B> for F
where
    F: FnMut(Rejection) -> Response<B>,
{
    fn on_rejection(&mut self, rejection: Rejection) -> Response<B> {
        self(rejection)
    }
}

/// The default rejection responses: an empty body, a `Retry-After` header in whole seconds
/// (rounded up), and
///
/// - `409 Conflict` for [`Rejection::Contended`] (see
///   [`contended_status`](crate::RequestLockLayer::contended_status), e.g. `423 Locked`),
/// - `503 Service Unavailable` for [`Rejection::Unavailable`] and [`Rejection::Lost`].
///
/// Needs `B: Default` for the empty body.
#[derive(Clone, Copy, Debug)]
pub struct DefaultOnRejection {
    contended: StatusCode,
}

impl DefaultOnRejection {
    /// `409 Conflict` for contention, `503 Service Unavailable` otherwise.
    pub fn new() -> Self {
        DefaultOnRejection {
            contended: StatusCode::CONFLICT,
        }
    }

    /// Sets the status of a contended request. Defaults to `409 Conflict`.
    #[must_use]
    pub fn contended_status(mut self, status: StatusCode) -> Self {
        self.contended = status;
        self
    }

    /// The default response for `rejection`, for closures that only want to add to it:
    ///
    /// ```
    /// use axum::{body::Body, response::Response};
    /// use redlock_tower::{DefaultOnRejection, Rejection};
    ///
    /// let on_rejection = |rejection: Rejection| -> Response {
    ///     let mut response = DefaultOnRejection::new().response::<Body>(&rejection);
    ///     *response.body_mut() = Body::from(rejection.to_string());
    ///     response
    /// };
    /// ```
    pub fn response<B: Default>(&self, rejection: &Rejection) -> Response<B> {
        let status = match rejection {
            Rejection::Contended { .. } => self.contended,
            Rejection::Unavailable { .. } | Rejection::Lost { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let mut response = Response::new(B::default());
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(RETRY_AFTER, retry_after_header(rejection.retry_after()));
        response
    }
}

impl Default for DefaultOnRejection {
    fn default() -> Self {
        DefaultOnRejection::new()
    }
}

impl<B: Default> OnRejection<B> for DefaultOnRejection {
    fn on_rejection(&mut self, rejection: Rejection) -> Response<B> {
        self.response(&rejection)
    }
}

/// Rejections as errors, for requests of any type: the service's error becomes [`BoxError`],
/// holding either the inner service's error or a [`Rejection`]. Set with
/// [`rejections_as_errors`](crate::RequestLockLayer::rejections_as_errors).
///
/// [`BoxError`]: crate::BoxError
#[derive(Clone, Copy, Debug, Default)]
pub struct RejectAsError;

/// `Retry-After` in delta-seconds, rounded up so that a client never retries early.
fn retry_after_header(after: Duration) -> HeaderValue {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

mod sealed {
    use http::Response;

    use super::{DefaultOnRejection, Rejection};

    /// Marks the HTTP rejection handlers. [`RejectAsError`](super::RejectAsError) does not have
    /// it, which is what lets `RequestLock` implement `Service<http::Request<_>>` for these and
    /// `Service<Req>` for any `Req` with `RejectAsError` without the two overlapping.
    pub trait Http {}

    impl Http for DefaultOnRejection {}

    impl<F, B> Http for F where F: FnMut(Rejection) -> Response<B> {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_header(Duration::ZERO), "1");
        assert_eq!(retry_after_header(Duration::from_millis(1)), "1");
        assert_eq!(retry_after_header(Duration::from_secs(2)), "2");
        assert_eq!(retry_after_header(Duration::from_millis(2001)), "3");
    }

    #[test]
    fn default_responses_map_kinds_to_statuses() {
        let contended = Rejection::Contended {
            resource: "k".into(),
            retry_after: Duration::from_secs(2),
        };
        let lost = Rejection::Lost {
            resource: "k".into(),
            retry_after: Duration::from_secs(1),
        };
        let response: Response<String> = DefaultOnRejection::new().response(&contended);
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers()[RETRY_AFTER], "2");
        let response: Response<String> = DefaultOnRejection::new()
            .contended_status(StatusCode::LOCKED)
            .response(&contended);
        assert_eq!(response.status(), StatusCode::LOCKED);
        let response: Response<String> = DefaultOnRejection::new().response(&lost);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(lost.is_lost() && !lost.is_contended() && lost.resource() == "k");
    }
}
