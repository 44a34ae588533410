//! Redlock distributed locks over N independent Redis, Valkey or Dragonfly primaries.
//!
//! A lock is held when a quorum (`N/2 + 1`) of nodes stored our random token with `SET NX PX`
//! within the lease, and only until `T1 + ttl − drift`, where `T1` is read before the first byte
//! is sent. Release and extension are compare-and-delete and compare-and-expire scripts, so a
//! key holding another client's token is never touched. Every network wait has a deadline.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use redlock_core::Redlock;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let redlock = Redlock::builder()
//!     .nodes(["redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003"])
//!     .ttl(Duration::from_secs(10))
//!     .build()?;
//! redlock.connect().await?; // optional: fail fast when no quorum is reachable
//!
//! let lock = redlock.lock("orders:42").await?;
//! println!("held for {:?}", lock.remaining());
//! lock.extend().await?;
//! lock.release().await?;
//!
//! if let Some(lock) = redlock.try_lock("orders:43").await? {
//!     lock.release().await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! Each claim is backed by an integration test in `redlock-core/tests/it`:
//!
//! - A lock is granted only with a quorum of OK votes and while validity remains; the deadline
//!   never exceeds `T1 + ttl − drift` (`acquire::deadline_is_anchored_before_the_first_send`).
//! - Two clients never hold the same resource at once while the nodes keep their keys
//!   (`acquire::concurrent_clients_never_overlap`).
//! - A failed attempt releases every node it may have reached, including nodes that timed
//!   out, each behind its own SET (`faults::paused_minority_leaves_no_orphan_key`,
//!   `acquire::contended_attempt_leaves_none_of_our_keys`).
//! - Release and extension never touch a key holding another token, and an expired lock is
//!   never resurrected (`release::*`, `extend::*`).
//! - Dropping a `lock()` future at any point leaves no key behind
//!   (`cancel::dropped_acquisitions_leave_no_keys`).
//! - A minority of nodes down or paused costs at most the node timeout; a majority down fails
//!   fast with per-node errors (`faults::*`).
//!
//! Without fencing tokens, Redlock is an *efficiency* lock: a holder paused past its deadline can
//! still act. See the operational contract in the repository README: independent primaries, no
//! failover behind an endpoint, clocks that slew and never step, and nodes that either persist
//! with `appendfsync always` or stay down for a ttl after a crash.
//!
//! # Feature flags
//!
//! - `serde`: `Serialize`/`Deserialize` for [`RedlockConfig`] and [`Retry`] (humantime durations).
//! - `tls`: `rediss://` node URLs through redis-rs and rustls.
//! - `metrics`: counters and histograms through the [`metrics`](https://docs.rs/metrics) crate:
//!   `redlock_acquire_total{outcome}`, `redlock_acquire_seconds{outcome}`,
//!   `redlock_extend_total{outcome}`, `redlock_extend_lag_seconds`, `redlock_lost_total`.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod builder;
mod config;
mod error;
mod fencing;
mod local;
mod lock;
mod lost;
mod node;
mod notify;
mod redlock;
mod renewer;
mod retry;
mod scoped;
mod scripts;
mod telemetry;
mod timing;
mod token;
mod votes;
mod watchdog;

pub use bb8_redis::{bb8, redis};
pub use builder::RedlockBuilder;
pub use config::{MAX_TTL, RedlockConfig};
pub use error::{Error, NodeError, NodeErrorKind, Result};
pub use fencing::FencingToken;
pub use lock::{Lock, LockHandle, Release};
pub use lost::LockLost;
pub use redlock::{LockOptions, Redlock};
pub use retry::Retry;
pub use watchdog::AutoExtend;
