//! A Redlock guard for [apalis](apalis_core) workers: a job delivered twice (a duplicate push, an
//! orphaned job re-enqueued while its first worker still runs it, a cron tick on every instance)
//! runs to completion once, on one worker at a time, across the whole fleet.
//!
//! [`JobLockExt::lock_jobs`] wraps the handler you give to `WorkerBuilder::build`. For each
//! delivery the guard takes a [Redlock](redlock_core) lock on the job's key (the task id, or a
//! dedup key computed from the job), checks the key's completion marker, runs the handler while
//! the lock is auto-extended, and after a success writes the marker on a quorum of nodes before
//! releasing the lock. Deliveries of a completed key are acknowledged without running; deliveries
//! of a key held by another worker are handed back to the backend to be retried with its backoff.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use apalis::prelude::*;
//! use apalis_redis::{Config, RedisStorage};
//! use redlock_apalis::{CompletionMarkers, JobLockConfig, JobLockExt, JobLockInfo};
//! use redlock_core::{RedlockBuilder, RedlockConfig};
//! # #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
//! # struct Invoice { id: u64 }
//!
//! async fn send_invoice(job: Invoice, lock: Data<JobLockInfo>) -> Result<(), BoxDynError> {
//!     // Runs once per invoice id, on one worker at a time, fleet-wide. Give the downstream
//!     // `lock.fencing_token()` if it can reject stale writers.
//!     Ok(())
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let nodes = RedlockConfig::from_env()?; // REDLOCK_NODES=redis://10.0.0.1:6379,...
//! let redlock = RedlockBuilder::from_config(nodes).ttl(Duration::from_secs(30)).build()?;
//! let markers = CompletionMarkers::for_redlock(&redlock)?; // the same nodes, timeout and prefix
//!
//! let conn = apalis_redis::connect("redis://10.0.0.9:6379").await?;
//! let storage = RedisStorage::<Invoice>::new(conn).with_config(Config::default().queue("invoices"));
//! let worker = WorkerBuilder::new(format!("invoices-{}", std::process::id())) // unique per process
//!     .backend(storage.poll_with_interval(Duration::from_millis(200)))
//!     .retry(RetryPolicy::retries(3).retry_if(redlock_apalis::not_locked))
//!     .build(send_invoice.lock_jobs_with(
//!         redlock,
//!         markers,
//!         JobLockConfig::new().key_fn(|job: &Invoice| format!("invoice:{}", job.id)),
//!     ));
//! worker.run().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Placement
//!
//! The guard must run *inside* apalis's lifecycle service, which is what wrapping the handler
//! passed to `build` does ([`JobLockExt`], or [`JobLockLayer`] applied to `task_fn(handler)`).
//! There, a refused delivery is an attempt like any other: apalis records it and apalis-redis
//! reschedules it at `now + attempt` seconds. Added with `WorkerBuilder::layer` instead, the
//! guard sits outside the lifecycle: a refusal changes neither the attempt count nor the status,
//! apalis-redis redelivers the job at once in a hot loop, and with `.retry(..)` the loop becomes
//! synchronous and never yields.
//!
//! # What a delivery does
//!
//! | situation | the guard returns | apalis | apalis-redis |
//! |---|---|---|---|
//! | handler succeeded | `Ok(Some(response))`, after the marker is written | `Done` | done set |
//! | key already completed (marker found) | `Ok(None)`, handler not run | `Done` | done set |
//! | key held by another worker | `Err(`[`JobLocked`]`)` | `Failed` | rescheduled |
//! | lock or marker nodes unreachable | `Err(`[`LockUnavailable`]`)` | `Failed` | rescheduled |
//! | lock lost while the handler ran | `Err(`[`JobLockLost`]`)`, handler dropped | `Failed` | rescheduled |
//! | handler failed | the handler's error, unchanged | as the error says | as the error says |
//! | no task id, empty key, invalid ttl | `Err(AbortError(`[`Error`]`))` | `Killed` | dead set |
//!
//! Contention should not be retried in-process (it would call the guard again while the other
//! worker still holds the key): use [`not_locked`] as the retry predicate, or your own
//! `e.downcast_ref::<JobLocked>().is_none()`.
//!
//! Completion markers follow the rules described on [`CompletionMarkers`]: written on a majority
//! after a success and before the release; read under the lock, and one copy on any node means
//! done.
//!
//! # Guarantees
//!
//! Within the dedup window, each job key is processed to completion once, and never by two
//! workers at the same time. Each claim has an integration test in `redlock-apalis/tests/it`:
//!
//! - 500 deliveries over four workers, 30% of them duplicate pushes or re-deliveries of
//!   acknowledged jobs: every key completes once, handlers of a key never overlap
//!   (`fleet::every_key_completes_once_across_a_fleet_with_duplicates_and_redeliveries`).
//! - A worker stalled past apalis-redis's orphan window, whose job is re-delivered to another
//!   worker while it still runs it: the second worker is refused, and acknowledges the job without
//!   running it once the first completed (`stall::a_job_redelivered_from_a_stalled_worker_is_not_run_twice`).
//! - A majority of lock nodes freezing mid-job: the lock is lost, the handler is dropped, and the
//!   job completes once later (`lost::losing_the_lock_drops_the_job_and_it_completes_once_later`).
//! - Refusals are rescheduled, never lost or dead; failures leave no marker; a marker on any one
//!   node counts; bad keys abort; undecided markers defer (`guard::*`).
//!
//! The conditions, and what is outside them:
//!
//! - **Completion means the handler returned `Ok`.** A process that dies after the handler's side
//!   effects but before the marker is written runs the job again: make handlers idempotent where
//!   that matters. A marker write that misses its quorum is retried while the lock is held (for
//!   up to one lease); if it never succeeds, that is logged (`warn`) and the delivery still
//!   succeeds, since the job did complete.
//! - **Dropping needs an await point.** A lost lock drops the handler where it awaits; a handler
//!   that blocks its thread cannot be dropped until it yields. Run CPU-bound work with
//!   `spawn_blocking`, on a multi-threaded runtime (the watchdog must keep running).
//! - **Without fencing this is an efficiency guarantee.** A process paused longer than the lease
//!   (GC, SIGSTOP, VM migration) can wake up after another worker took the key. Enable fencing
//!   ([`JobLockConfig::fencing`]) and have the downstream reject stale
//!   [`fencing_token`](JobLockInfo::fencing_token)s. The nodes must follow redlock-core's
//!   operational contract (independent primaries, clocks that slew, no restart without
//!   persistence within a ttl).
//! - **apalis-redis gives up after 25 attempts.** Contended deliveries count as attempts, and its
//!   backoff grows by a second per attempt (about 5 minutes in all). A duplicate of a job that
//!   holds its key longer than that ends in the dead set; it was a duplicate, so the key still
//!   completes once through the holder's own delivery.
//! - **The window is the marker's ttl** ([`JobLockConfig::dedup_window`], 24 h by default). A
//!   key delivered again after it has expired runs again.
//!
//! # Feature flags
//!
//! None. The crate builds on `apalis-core` only; `apalis` and `apalis-redis` appear in the
//! examples.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod config;
mod error;
mod ext;
mod layer;
mod marker;
mod service;

pub use config::{JobLockConfig, MakeJobKey, TaskIdKey};
pub use error::{Error, JobLockLost, JobLocked, LockUnavailable, MarkerError, Result, not_locked};
pub use ext::JobLockExt;
pub use layer::JobLockLayer;
pub use marker::CompletionMarkers;
pub use redlock_core;
pub use service::{JobLock, JobLockInfo, ResponseFuture};
