//! [`CompletionMarkers`]: a quorum-written record that a job key has completed.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{StreamExt, future::join_all, stream::FuturesUnordered};
use redlock_core::{
    NodeError, NodeErrorKind, RedlockConfig,
    redis::{
        self, AsyncConnectionConfig, Client, FromRedisValue, IntoConnectionInfo, RedisError,
        aio::MultiplexedConnection,
    },
};
use tokio::sync::Mutex;
use tracing::{debug, instrument};

use crate::error::{Error, MarkerError, Result};

/// The completion-marker store of a guarded worker fleet: one connection per node, every call
/// bounded by the node timeout. Use the same nodes as the [`Redlock`](redlock_core::Redlock).
///
/// Cheap to clone (the connections are shared). Building it is synchronous and lazy: each node
/// is dialled on first use, and again after its connection fails.
///
/// ```
/// use std::time::Duration;
/// use redlock_apalis::CompletionMarkers;
///
/// let nodes = ["redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003"];
/// let markers = CompletionMarkers::new(nodes)?.node_timeout(Duration::from_millis(50));
/// assert_eq!(markers.quorum(), 2);
/// # Ok::<(), redlock_apalis::Error>(())
/// ```
///
/// # How markers are used
///
/// After a guarded job succeeds, and *before* its lock is released, the guard writes
/// `SET <prefix><namespace>done:<key> 1 PX <dedup window>` on every marker node and needs a
/// majority `W = N/2 + 1` of them to store it. A later delivery of the same key first takes the
/// lock, then reads the marker from every node:
///
/// - **present on any node → done.** Markers are written only after the job succeeded, so a
///   single copy, even one a failed write left on a minority, proves the key completed. The read
///   waits for every node (each for at most the node timeout) so that such a copy is seen.
/// - **absent on at least `N − W + 1` nodes → not done.** Any `W` nodes and any `N − W + 1` nodes
///   share at least one node, so no marker written on a quorum can hide from this many answers.
/// - otherwise (too few answers) → undecided: the delivery is retried later, never run blind.
///
/// The read happens under the lock, and the write happens-before the release, so a delivery that
/// acquires the key after the winner released it always sees the winner's marker (on a quorum,
/// when its write succeeded). That is what turns mutual exclusion into "completes once per dedup
/// window". A write that misses its quorum is retried while the lock is still held (other
/// deliveries of the key wait meanwhile), for up to one lease. If it never succeeds (the lock was
/// lost, or the marker nodes stayed down), the job has still completed: the guard reports
/// success, logs a warning, and a later duplicate may run again.
#[derive(Clone)]
pub struct CompletionMarkers {
    nodes: Arc<[MarkerNode]>,
    node_timeout: Duration,
    key_prefix: Arc<str>,
}

/// One marker node.
struct MarkerNode {
    /// `host:port`, for errors and traces; never the password.
    addr: String,
    client: Client,
    /// The node's multiplexed connection: dialled by the first call that needs it (others wait
    /// on the mutex rather than dialling too), cloned out for each command, and cleared after a
    /// connection error so that the next call dials a fresh one. A timeout does not clear it:
    /// a paused node's connection is still good once the node resumes.
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl fmt::Debug for CompletionMarkers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<&str> = self.nodes.iter().map(|n| n.addr.as_str()).collect();
        f.debug_struct("CompletionMarkers")
            .field("nodes", &nodes)
            .field("node_timeout", &self.node_timeout)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

impl CompletionMarkers {
    /// A marker store on `urls` (`redis://[user:password@]host:port[/db]`), normally the same
    /// independent primaries the [`Redlock`](redlock_core::Redlock) uses. No connection is made
    /// here.
    ///
    /// # Errors
    ///
    /// [`Error::NoNodes`] for an empty list, [`Error::InvalidUrl`] for a URL redis-rs rejects.
    pub fn new<I>(urls: I) -> Result<CompletionMarkers>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut nodes = Vec::new();
        for url in urls {
            let url = url.as_ref();
            let invalid = |source| Error::InvalidUrl {
                url: redact(url),
                source,
            };
            let info = url.into_connection_info().map_err(invalid)?;
            let addr = info.addr().to_string();
            let client = Client::open(info).map_err(invalid)?;
            nodes.push(MarkerNode {
                addr,
                client,
                conn: Mutex::new(None),
            });
        }
        if nodes.is_empty() {
            return Err(Error::NoNodes);
        }
        Ok(CompletionMarkers {
            nodes: nodes.into(),
            node_timeout: Duration::from_millis(100),
            key_prefix: Arc::from("redlock:"),
        })
    }

    /// A marker store on the nodes of `config`, with its node timeout and key prefix: the same
    /// nodes the `Redlock` built from `config` locks on.
    ///
    /// # Errors
    ///
    /// As [`new`](CompletionMarkers::new).
    pub fn from_config(config: &RedlockConfig) -> Result<CompletionMarkers> {
        Ok(CompletionMarkers::new(&config.nodes)?
            .node_timeout(config.node_timeout)
            .key_prefix(config.key_prefix.clone()))
    }

    /// A marker store on the nodes `redlock` locks on, with its node timeout and key prefix.
    ///
    /// # Errors
    ///
    /// As [`new`](CompletionMarkers::new); [`Error::NoNodes`](crate::Error::NoNodes) when the
    /// `Redlock` was built from pools only (no URLs to reach the nodes by).
    pub fn for_redlock(redlock: &redlock_core::Redlock) -> Result<CompletionMarkers> {
        CompletionMarkers::from_config(redlock.config())
    }

    /// Budget for one node to answer one command, connecting included. A dead node costs at most
    /// this per read or write. Defaults to 100 ms.
    #[must_use]
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Prefix of every marker key. Defaults to `"redlock:"`, the lock keys' default prefix.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = Arc::from(prefix.into());
        self
    }

    /// Number of marker nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Nodes a marker must be written on: a majority.
    pub fn quorum(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    /// Whether `key` (without the prefix) is marked done.
    ///
    /// Reads every node at once: `true` as soon as one node holds the marker; `false` once
    /// every node answered or timed out and at least `N − quorum + 1` said they do not. Waiting
    /// for all of them (at most the node timeout) lets a marker that a failed write left on a
    /// minority still count. See the type docs for why the two
    /// thresholds differ.
    ///
    /// # Errors
    ///
    /// [`MarkerError`] when neither threshold was reached: too few nodes answered in time.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    #[instrument(skip_all, fields(key = %key))]
    pub async fn is_done(&self, key: &str) -> Result<bool, MarkerError> {
        let key = format!("{}{key}", self.key_prefix);
        let needed = self.nodes.len() - self.quorum() + 1;
        let mut replies: FuturesUnordered<_> = self
            .nodes
            .iter()
            .map(|node| {
                let mut cmd = redis::cmd("EXISTS");
                cmd.arg(&key);
                async move { (node, node.query::<bool>(&cmd, self.node_timeout).await) }
            })
            .collect();
        let mut absent = 0;
        let mut failures = Vec::new();
        while let Some((node, reply)) = replies.next().await {
            match reply {
                Ok(true) => {
                    debug!(node = %node.addr, "marker found");
                    return Ok(true);
                }
                Ok(false) => absent += 1,
                Err(kind) => failures.push(node.error(kind)),
            }
        }
        if absent >= needed {
            return Ok(false);
        }
        Err(MarkerError {
            answered: absent,
            needed,
            failures,
        })
    }

    /// Marks `key` (without the prefix) done for `window` on every node, and returns on how many
    /// it was stored.
    ///
    /// # Errors
    ///
    /// [`MarkerError`] when fewer than a [quorum](CompletionMarkers::quorum) stored it. Nodes that
    /// did store it keep their copy, which later reads still honour.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the marker on some nodes: it only ever records a completion
    /// that happened.
    #[instrument(skip_all, fields(key = %key))]
    pub async fn mark_done(&self, key: &str, window: Duration) -> Result<usize, MarkerError> {
        let key = format!("{}{key}", self.key_prefix);
        let millis = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(1).arg("PX").arg(millis);
        let cmd = &cmd;
        let replies = join_all(self.nodes.iter().map(|node| async move {
            (
                node,
                node.query::<Option<String>>(cmd, self.node_timeout).await,
            )
        }))
        .await;
        let mut stored = 0;
        let mut failures = Vec::new();
        for (node, reply) in replies {
            match reply {
                Ok(Some(_)) => stored += 1,
                Ok(None) => failures
                    .push(node.error(NodeErrorKind::Protocol("SET answered nil".to_owned()))),
                Err(kind) => failures.push(node.error(kind)),
            }
        }
        let needed = self.quorum();
        debug!(stored, needed, "marker written");
        if stored < needed {
            return Err(MarkerError {
                answered: stored,
                needed,
                failures,
            });
        }
        Ok(stored)
    }
}

impl MarkerNode {
    fn error(&self, kind: NodeErrorKind) -> NodeError {
        NodeError {
            node: self.addr.clone(),
            kind,
        }
    }

    /// Runs `cmd` on this node; connecting and answering together take at most `timeout`.
    async fn query<T: FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        timeout: Duration,
    ) -> Result<T, NodeErrorKind> {
        let started = Instant::now();
        let mut conn = match tokio::time::timeout(timeout, self.connection(timeout)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(NodeErrorKind::Redis(e)),
            Err(_) => return Err(NodeErrorKind::Connect(timeout)),
        };
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if !e.is_timeout() && (e.is_io_error() || e.is_unrecoverable_error()) {
                    *self.conn.lock().await = None;
                }
                Err(NodeErrorKind::Redis(e))
            }
            Err(_) => Err(NodeErrorKind::Timeout(timeout)),
        }
    }

    async fn connection(&self, timeout: Duration) -> Result<MultiplexedConnection, RedisError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout * 2));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

/// `url` with the password of its userinfo replaced by `***`.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let shown = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_owned(),
            };
            format!("{}{shown}{}", &url[..scheme_end + 3], &rest[at..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn building_is_lazy_and_counts_a_majority() {
        let markers =
            CompletionMarkers::new(["redis://127.0.0.1:1", "redis://127.0.0.1:2"]).unwrap();
        assert_eq!(markers.quorum(), 2);
        let five: Vec<String> = (1..=5).map(|p| format!("redis://127.0.0.1:{p}")).collect();
        assert_eq!(CompletionMarkers::new(&five).unwrap().quorum(), 3);
    }

    #[test]
    fn bad_input_is_a_typed_error_without_the_password() {
        assert!(matches!(
            CompletionMarkers::new(Vec::<String>::new()),
            Err(Error::NoNodes)
        ));
        let err = CompletionMarkers::new(["postgres://user:hunter2@host/db"]).unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
        assert!(!err.to_string().contains("hunter2"));
        assert!(!format!("{err:?}").contains("hunter2"));
    }

    #[test]
    fn redaction_keeps_everything_but_the_password() {
        assert_eq!(redact("redis://u:p@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:p@h"), "redis://:***@h");
        assert_eq!(redact("rediss://tok@h"), "rediss://***@h");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert_eq!(redact("nonsense"), "nonsense");
    }

    #[tokio::test]
    async fn unreachable_nodes_are_undecided_within_the_timeout() {
        // Port 1 on loopback refuses at once; nothing listens there.
        let markers = CompletionMarkers::new(["redis://127.0.0.1:1", "redis://127.0.0.1:1"])
            .unwrap()
            .node_timeout(Duration::from_millis(200));
        let started = Instant::now();
        let err = markers.is_done("k").await.unwrap_err();
        assert_eq!((err.answered, err.needed, err.failures.len()), (0, 1, 2));
        let err = markers
            .mark_done("k", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!((err.answered, err.needed), (0, 2));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
