//! The setup errors of this crate, and the boxed error of the non-HTTP mode.

/// A `Result` whose error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A type-erased error, as tower uses it: the error of a [`RequestLock`](crate::RequestLock)
/// built with [`rejections_as_errors`](crate::RequestLockLayer::rejections_as_errors), from
/// which a [`Rejection`](crate::Rejection) can be downcast.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A key maker that cannot work as written. Returned when it is built, never per request.
///
/// What happens to a request is a [`Rejection`](crate::Rejection), not an `Error`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A header name given to [`KeyFromHeader`](crate::KeyFromHeader) is not a valid HTTP header
    /// name.
    #[error("invalid header name {name:?}")]
    InvalidHeaderName {
        /// The name as given.
        name: String,
        /// Why `http` rejected it.
        #[source]
        source: http::header::InvalidHeaderName,
    },
    /// A path template or key format given to [`KeyFromPath`](crate::KeyFromPath) is malformed.
    #[error("invalid path template {template:?}: {reason}")]
    InvalidTemplate {
        /// The template or key format as given.
        template: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}
