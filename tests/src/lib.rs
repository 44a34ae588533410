//! Test harness for redlock-rs: real `redis-server` processes on free loopback ports.
//!
//! Integration tests, examples and benchmarks of the workspace run against
//! *real* servers rather than mocks, because what Redlock has to get right —
//! expiry, scripts, timeouts, a node freezing or dying and coming back empty —
//! only shows up against the real thing. This crate owns those servers:
//!
//! * [`RedisNode`] spawns one server on `127.0.0.1:<free port>` with a private
//!   temporary data directory (prefixed `redlock-harness-`), waits until it
//!   answers `PING`, and lets a test [pause](RedisNode::pause) (`SIGSTOP`),
//!   [resume](RedisNode::resume), [kill](RedisNode::kill) and
//!   [restart](RedisNode::restart) it on the same port.
//! * [`Cluster`] starts N independent nodes in parallel — a Redlock deployment.
//! * [`RedisNode::query`] speaks just enough RESP2 (a [`Reply`]) to inspect a
//!   node without a redis client crate.
//! * Fault injection for chaos tests: [`Proxy`] / [`ProxySet`] put an
//!   in-process TCP proxy between each client and each node, with
//!   [delay, blackhole, refuse and reset](ProxyMode) switchable at runtime, so
//!   asymmetric partitions work on loopback; [`RedisNode::restart_after`]
//!   (delayed restart), [`RedisNode::snapshot`] and [`RedisNode::restart_from`]
//!   (rollback to an older data directory) and [`RedisNode::jump_clock`]
//!   (an emulated forward clock jump) cover the ways a node can forget a key.
//!
//! Dropping a node (or cluster) kills its processes and deletes its data.
//!
//! The server binary is `redis-server` unless the `REDLOCK_SERVER` environment
//! variable names another one (`valkey-server`, a path, or — best effort —
//! `dragonfly`); see [`server_binary`] and [`server_available`]. The API is
//! synchronous and every call is short, so it can also be used briefly from
//! async tests.
//!
//! ```
//! use redlock_tests::{Cluster, Persistence, RedisNode};
//!
//! # fn main() -> std::io::Result<()> {
//! let cluster = Cluster::start(3)?;
//! let urls: Vec<String> = cluster.urls(); // "redis://127.0.0.1:<port>" each
//! assert_eq!(urls.len(), 3);
//!
//! cluster[0].set("lock", "token")?;
//! cluster[0].pause()?; // frozen: connections hang until resumed
//! cluster[0].resume()?;
//! cluster[0].restart()?; // same port, no persistence: comes back empty
//! assert_eq!(cluster[0].get("lock")?, None);
//!
//! let durable = RedisNode::start_with(Persistence::AofAlways)?;
//! durable.set("lock", "token")?;
//! durable.restart()?; // SIGKILL, then start again from the append-only file
//! assert_eq!(durable.get("lock")?.as_deref(), Some("token"));
//! # Ok(())
//! # }
//! ```

mod cluster;
mod faults;
mod node;
mod proxy;
mod resp;
mod server;

pub use cluster::Cluster;
pub use faults::DataSnapshot;
pub use node::RedisNode;
pub use proxy::{Direction, Proxy, ProxyMode, ProxySet};
pub use resp::Reply;
pub use server::{Persistence, server_available, server_binary};
