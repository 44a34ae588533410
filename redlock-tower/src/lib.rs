//! tower and axum middleware that serialises requests per key across a fleet of replicas, with
//! Redlock distributed locks from [`redlock_core`].
//!
//! [`RequestLockLayer`] derives a key from each request ([`MakeLockKey`]: a closure, a header
//! with [`KeyFromHeader`], path parameters with [`KeyFromPath`]) and calls the inner service only
//! while it holds a Redlock lock on that key. Two requests with the same key never run at the same
//! time on any replica that uses the same nodes; requests with different keys run in parallel. For
//! `http::Request`, refusals are responses (`409` with `Retry-After` when the key is busy), so an
//! axum handler's `Infallible` error stays `Infallible` and no `HandleErrorLayer` is needed.
//!
//! # Example
//!
//! Withdrawals are serialised per account, on every replica:
//!
//! ```
//! use std::time::Duration;
//! use axum::{Extension, Router, routing::post};
//! use redlock_core::Redlock;
//! use redlock_tower::{KeyFromPath, LockInfo, RequestLockLayer};
//!
//! async fn withdraw(Extension(lock): Extension<LockInfo>) -> String {
//!     // Only one request per account runs this, fleet-wide, while `lock` is held.
//!     format!("{} is ours for {:?}", lock.resource(), lock.remaining())
//! }
//!
//! let redlock = Redlock::builder() // lazy: no connection is made here
//!     .nodes(["redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003"])
//!     .ttl(Duration::from_secs(10))
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/accounts/{id}/withdraw", post(withdraw))
//!     .route_layer(
//!         RequestLockLayer::new(redlock, KeyFromPath::new("/accounts/{id}/withdraw", "account:{id}")?)
//!             .wait(Duration::from_secs(5)), // queue up to 5 s for the account, then 409
//!     );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The same layer in a plain `tower::ServiceBuilder` stack, keyed by a header. A request without
//! the header has no key and goes through unlocked (this one needs no Redis at all):
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use http::{Request, Response};
//! use redlock_core::Redlock;
//! use redlock_tower::{KeyFromHeader, RequestLockLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let redlock = Redlock::builder()
//!     .nodes(["redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003"])
//!     .build()?;
//! let service = ServiceBuilder::new()
//!     .concurrency_limit(64)
//!     .layer(RequestLockLayer::new(redlock, KeyFromHeader::new("x-account-id")?).fail_fast())
//!     .service_fn(|_: Request<String>| async { Ok::<_, Infallible>(Response::new(String::from("done"))) });
//!
//! let response = service.oneshot(Request::new(String::new())).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(())
//! # }
//! ```
//!
//! # What the layer does
//!
//! - **No key, no lock.** When [`MakeLockKey::make_key`] returns `None`, the request goes to the
//!   inner service unlocked. If a key is mandatory, reject keyless requests before this layer.
//! - **The lock covers the whole inner call.** It is acquired before the inner service is called,
//!   kept alive by redlock-core's auto-extension ([`auto_extend`](RequestLockLayer::auto_extend))
//!   and released on every node before the response is returned, so a client's next request for
//!   the same key never finds it still held. With
//!   [`hold_until_body_end`](RequestLockLayer::hold_until_body_end) it is held until the response
//!   body has been sent ([`LockBody`]).
//! - **Cancellation releases.** A client that disconnects makes hyper drop the response future;
//!   that drops the inner future and the lock, which is released in the background.
//! - **Contention**: [`fail_fast`](RequestLockLayer::fail_fast) (the default) makes one attempt;
//!   [`wait(max)`](RequestLockLayer::wait) waits up to `max`, queued in arrival order behind the
//!   other requests of this process for the key and woken by release notifications. A waiting
//!   request holds no readiness of the inner service: see [`RequestLock`]'s readiness notes.
//! - **Rejections** ([`Rejection`]), for HTTP, with [`DefaultOnRejection`]:
//!
//!   | outcome | response | inner service |
//!   |---|---|---|
//!   | key held elsewhere ([`Rejection::Contended`]) | `409 Conflict` ([configurable](RequestLockLayer::contended_status), e.g. `423`) + `Retry-After` | not called |
//!   | too few nodes, other lock errors ([`Rejection::Unavailable`]) | `503 Service Unavailable` + `Retry-After` | not called |
//!   | lock lost mid-request ([`Rejection::Lost`]) | `503 Service Unavailable` + `Retry-After` | future dropped |
//!
//!   [`on_rejection`](RequestLockLayer::on_rejection) builds your own responses instead.
//! - **Lost locks are enforced**: when the lock's deadline passes without a successful
//!   extension (the nodes stopped answering), the inner future is dropped at its current await
//!   point, as [`Redlock::run`](redlock_core::Redlock::run) does. A side effect already in flight
//!   cannot be recalled: pass the fencing token to resources that can reject stale writers.
//! - **The handler sees the lock** as a [`LockInfo`] in the request extensions (resource,
//!   fencing token, live deadline). In axum: `Extension<LockInfo>`.
//!
//! # Requests that are not HTTP
//!
//! [`rejections_as_errors`](RequestLockLayer::rejections_as_errors) makes the layer work for any
//! request type: the error becomes [`BoxError`], from which a [`Rejection`] can be downcast.
//!
//! ```
//! use redlock_core::Redlock;
//! use redlock_tower::{BoxError, Rejection, RequestLockLayer};
//! use tower::{ServiceBuilder, service_fn};
//!
//! struct Job { order: u64 }
//!
//! # let redlock = Redlock::builder().nodes(["redis://127.0.0.1:7001"]).build()?;
//! let service = ServiceBuilder::new()
//!     .layer(
//!         RequestLockLayer::new(redlock, |job: &Job| Some(format!("order:{}", job.order)))
//!             .rejections_as_errors(),
//!     )
//!     .service_fn(|job: Job| async move { Ok::<_, BoxError>(job.order) });
//!
//! fn was_busy(error: &BoxError) -> bool {
//!     error.downcast_ref::<Rejection>().is_some_and(Rejection::is_contended)
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Guarantees
//!
//! Each claim is backed by an integration test in `redlock-tower/tests/it`, against real
//! `redis-server` nodes and, where a network is involved, a real axum server:
//!
//! - 64 concurrent requests for one key never overlap in the handler and all complete when
//!   waiting (`serialise::same_key_requests_never_overlap_and_all_complete_when_waiting`); when
//!   failing fast the losers get `409` with `Retry-After`, and the next request after the
//!   winner's answer succeeds (`serialise::fail_fast_losers_get_409_with_retry_after`); a
//!   request whose wait runs out gets the same answer once it has waited its whole `wait`
//!   (`serialise::a_wait_that_runs_out_gets_409_with_retry_after`).
//! - Different keys run in parallel (`serialise::different_keys_run_in_parallel`); a request
//!   without a key is not locked (`serialise::request_without_key_is_not_locked`).
//! - Two replicas sharing the nodes serialise the same key
//!   (`serialise::two_replicas_serialise_the_same_key`), and an HTTP downstream behind the layer
//!   sees at most one call per key in flight
//!   (`downstream::downstream_sees_one_call_per_key_at_a_time`).
//! - A client that goes away mid-request leaves no key behind
//!   (`faults::client_disconnect_releases_the_lock`, `faults::closed_connection_releases_the_lock`).
//! - With a majority of nodes down the answer is `503`, not a hang
//!   (`faults::majority_down_is_503_not_a_hang`); when the lock is lost mid-request the handler
//!   is dropped and the answer is `503` (`faults::lost_lock_drops_the_handler_and_answers_503`).
//! - With [`hold_until_body_end`](RequestLockLayer::hold_until_body_end) the lock is held until
//!   the body ends, and released by the time the client has read it
//!   (`body::lock_is_held_until_the_body_ends`); a lock lost meanwhile aborts the body
//!   (`body::lock_lost_while_streaming_aborts_the_body`). Without it, the lock is released before
//!   the response head (`body::by_default_the_lock_is_released_before_the_head`).
//! - Waiting requests hold no readiness of the inner service
//!   (`generic::waiting_requests_do_not_hold_inner_readiness`), and non-HTTP requests get a
//!   downcastable [`Rejection`] (`generic::non_http_rejection_is_a_downcastable_error`).
//!
//! # Feature flags
//!
//! None.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod body;
mod error;
pub mod future;
mod info;
mod key;
mod layer;
mod rejection;
mod run;
mod service;

pub use body::LockBody;
pub use error::{BoxError, Error, Result};
pub use info::LockInfo;
pub use key::{KeyFromHeader, KeyFromPath, MakeLockKey};
pub use layer::RequestLockLayer;
pub use redlock_core;
pub use rejection::{DefaultOnRejection, OnRejection, RejectAsError, Rejection};
pub use service::RequestLock;
