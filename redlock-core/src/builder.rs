//! [`RedlockBuilder`]: consuming setters, validation in `build`.

use std::time::Duration;

use bb8_redis::{RedisConnectionManager, bb8};

use crate::{
    config::{RedlockConfig, Settings},
    error::Result,
    node::Node,
    redlock::Redlock,
    retry::Retry,
};

/// Builds a [`Redlock`]. Setters never fail or panic; [`build`](RedlockBuilder::build) checks
/// everything and returns a typed error.
///
/// ```
/// use std::time::Duration;
/// use redlock_core::{Redlock, Retry};
///
/// let redlock = Redlock::builder()
///     .nodes(["redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003"])
///     .ttl(Duration::from_secs(10))
///     .retry(Retry::jittered(8, Duration::from_millis(10)))
///     .node_timeout(Duration::from_millis(50))
///     .drift_factor(0.01)
///     .build()?; // lazy: no connection is made here
/// assert_eq!(redlock.quorum(), 2);
/// # Ok::<(), redlock_core::Error>(())
/// ```
#[derive(Debug, Default)]
#[must_use]
pub struct RedlockBuilder {
    config: RedlockConfig,
    pools: Vec<bb8::Pool<RedisConnectionManager>>,
}

impl RedlockBuilder {
    /// A builder with every setting at its default.
    pub fn new() -> Self {
        RedlockBuilder::default()
    }

    /// A builder starting from `config` (for example one deserialized from a file).
    pub fn from_config(config: RedlockConfig) -> Self {
        RedlockBuilder {
            config,
            pools: Vec::new(),
        }
    }

    /// Adds one node URL (`redis://[user:password@]host:port[/db]`). Each node must be an
    /// independent primary, with no failover behind the address. Defaults to no nodes.
    pub fn node(mut self, url: impl Into<String>) -> Self {
        self.config.nodes.push(url.into());
        self
    }

    /// Adds several node URLs. Defaults to no nodes.
    pub fn nodes<I>(mut self, urls: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.config.nodes.extend(urls.into_iter().map(Into::into));
        self
    }

    /// Adds a node through a bb8-redis pool you built yourself. Its `connection_timeout` should
    /// not exceed the node timeout (every call is bounded by the node timeout anyway), and it
    /// should use `test_on_check_out(true)` if the node may restart, since bb8-redis cannot tell a
    /// dead connection otherwise. Its connections keep redis-rs's defaults, among them room for
    /// 50 commands waiting to be written, which a client with hundreds of locks in flight outgrows
    /// (its tasks then wait for room); the pools built from URLs ([`node`](Self::node)) make room
    /// for 1,024. Defaults to no pools.
    pub fn pool(mut self, pool: bb8::Pool<RedisConnectionManager>) -> Self {
        self.pools.push(pool);
        self
    }

    /// Default lease length of every lock. Defaults to 10 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = ttl;
        self
    }

    /// Retry policy of [`Redlock::lock`]. Defaults to [`Retry::default`] (10 attempts, 50–150 ms
    /// apart).
    pub fn retry(mut self, retry: Retry) -> Self {
        self.config.retry = retry;
        self
    }

    /// Budget for one node to answer one command, connection checkout included. Keep it well
    /// below the ttl: a dead node costs this much per attempt. Defaults to 100 ms.
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.config.node_timeout = timeout;
        self
    }

    /// Clock rate error allowed between client and nodes, in `[0, 1)`; the deadline is shortened
    /// by `ttl * factor + 2 ms`. Defaults to 0.01.
    pub fn drift_factor(mut self, factor: f64) -> Self {
        self.config.drift_factor = factor;
        self
    }

    /// Votes needed, from a majority up to every node. Defaults to `None` (a majority).
    pub fn quorum(mut self, quorum: impl Into<Option<usize>>) -> Self {
        self.config.quorum = quorum.into();
        self
    }

    /// Validity a lock must still have when granted; an acquisition that took longer is undone
    /// and retried. Defaults to 1 ms.
    pub fn min_validity(mut self, min: Duration) -> Self {
        self.config.min_validity = min;
        self
    }

    /// Prefix of every key written. Defaults to `"redlock:"`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.key_prefix = prefix.into();
        self
    }

    /// Issues a [`FencingToken`](crate::FencingToken) with every lock, at the cost of one more
    /// round trip per acquisition. The tokens' order relies on the fence counters never being
    /// lost: run the nodes with AOF `appendfsync always`. Defaults to `false`.
    pub fn fencing(mut self, enabled: bool) -> Self {
        self.config.fencing = enabled;
        self
    }

    /// Multiplexed connections kept per node. Defaults to 4.
    pub fn pool_size(mut self, size: u32) -> Self {
        self.config.pool_size = size;
        self
    }

    /// Validates the settings and builds lazy pools. Synchronous and free of I/O: no connection
    /// is made until the first lock (or [`Redlock::connect`]). Needs no tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::NoNodes`](crate::Error::NoNodes), [`Error::TooFewNodes`](crate::Error::TooFewNodes),
    /// [`Error::InvalidUrl`](crate::Error::InvalidUrl), [`Error::InvalidTtl`](crate::Error::InvalidTtl)
    /// and [`Error::InvalidConfig`](crate::Error::InvalidConfig), naming what is wrong.
    pub fn build(self) -> Result<Redlock> {
        let count = self.config.nodes.len() + self.pools.len();
        let settings = Settings::validate(&self.config, count)?;
        let mut nodes = Vec::with_capacity(count);
        for url in &self.config.nodes {
            nodes.push(Node::from_url(
                url,
                settings.node_timeout,
                self.config.pool_size,
            )?);
        }
        for (index, pool) in self.pools.into_iter().enumerate() {
            nodes.push(Node::from_pool(
                pool,
                format!("pool-{index}"),
                settings.node_timeout,
            ));
        }
        Ok(Redlock::from_parts(self.config, nodes, settings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn build_is_lazy_and_needs_no_runtime() {
        let redlock = RedlockBuilder::new()
            .nodes([
                "redis://127.0.0.1:1",
                "redis://127.0.0.1:2",
                "redis://127.0.0.1:3",
            ])
            .build()
            .unwrap();
        assert_eq!(redlock.node_count(), 3);
        assert_eq!(redlock.quorum(), 2);
        assert_eq!(redlock.config().nodes[2], "redis://127.0.0.1:3");
    }

    #[test]
    fn bad_url_is_a_typed_error_without_the_password() {
        let err = RedlockBuilder::new()
            .node("redis://127.0.0.1:1")
            .node("postgres://user:hunter2@host/db")
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
        assert!(!err.to_string().contains("hunter2"));
        assert!(!format!("{err:?}").contains("hunter2"));
    }

    #[test]
    fn no_nodes_and_bad_quorum_are_typed_errors() {
        assert!(matches!(RedlockBuilder::new().build(), Err(Error::NoNodes)));
        let err = RedlockBuilder::new()
            .nodes(["redis://a:1", "redis://b:1"])
            .quorum(3)
            .build()
            .unwrap_err();
        assert!(matches!(
            err,
            Error::TooFewNodes {
                nodes: 2,
                quorum: 3
            }
        ));
    }
}
