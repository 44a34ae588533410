//! The one error type of redlock-core.
//!
//! Variants fall in two groups. **Input** errors ([`Error::EmptyKey`], [`Error::InvalidTtl`],
//! [`Error::InvalidUrl`], [`Error::NoNodes`], [`Error::TooFewNodes`], [`Error::InvalidConfig`])
//! mean the call can never succeed as written. **Outcome** errors ([`Error::Contended`],
//! [`Error::NoQuorum`], [`Error::Expired`], [`Error::Lost`], [`Error::Timeout`]) describe what
//! the nodes did; [`Error::is_retryable`] tells them apart.

use std::{fmt, time::Duration};

use bb8_redis::redis::RedisError;

/// A `Result` whose error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when building a [`Redlock`](crate::Redlock) or using a lock.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The resource name was empty.
    #[error("lock key is empty")]
    EmptyKey,
    /// The lease length was zero, too short for the drift and minimum validity, or above `max`.
    #[error("invalid ttl {ttl:?}: must be above the drift and min validity and at most {max:?}")]
    InvalidTtl {
        /// The rejected ttl.
        ttl: Duration,
        /// The largest ttl accepted.
        max: Duration,
    },
    /// A node URL could not be parsed. The password, if any, is redacted.
    #[error("invalid node url {url}")]
    InvalidUrl {
        /// The URL with its password replaced by `***`.
        url: String,
        /// Why redis-rs rejected it.
        #[source]
        source: RedisError,
    },
    /// No node was configured.
    #[error("no redis nodes configured")]
    NoNodes,
    /// The quorum cannot be reached with the configured nodes, or is below a majority.
    #[error(
        "quorum {quorum} is impossible with {nodes} nodes (it must be a majority, at most the node count)"
    )]
    TooFewNodes {
        /// How many nodes are configured.
        nodes: usize,
        /// The quorum asked for.
        quorum: usize,
    },
    /// A setting is out of range (drift factor, node timeout, retry policy, ...).
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong, naming the setting.
        reason: String,
    },
    /// A majority of nodes answered that someone else holds the lock.
    #[error("lock {key} is held by another owner (after {attempts} attempts)")]
    Contended {
        /// The resource.
        key: String,
        /// How many acquisition attempts were made.
        attempts: u32,
    },
    /// Too few nodes answered to reach a quorum.
    #[error("quorum not reached: {acquired}/{quorum} nodes")]
    NoQuorum {
        /// Nodes that granted (or answered, for release).
        acquired: usize,
        /// Nodes needed.
        quorum: usize,
        /// What went wrong on the nodes that failed.
        failures: Vec<NodeError>,
    },
    /// The lock's validity was used up before the operation finished (a slow acquisition, or an
    /// extension attempted at or after the deadline).
    #[error("lock {key} expired before the operation completed")]
    Expired {
        /// The resource.
        key: String,
    },
    /// The lock was lost while it was held: its deadline passed without a successful extension.
    #[error("lock {key} was lost")]
    Lost {
        /// The resource.
        key: String,
    },
    /// An operation with a deadline of its own ran out of time.
    #[error("{op} timed out after {after:?}")]
    Timeout {
        /// The operation, e.g. `"connect"`.
        op: &'static str,
        /// The deadline that passed.
        after: Duration,
    },
}

impl Error {
    /// True when another owner holds the lock.
    pub fn is_contended(&self) -> bool {
        matches!(self, Error::Contended { .. })
    }

    /// True when the same call may succeed later (contention, unavailable nodes, timeouts).
    /// Input errors and [`Error::Lost`] are not retryable.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Contended { .. }
                | Error::NoQuorum { .. }
                | Error::Expired { .. }
                | Error::Timeout { .. }
        )
    }

    /// True when the error comes from bad input or configuration, not from the nodes.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            Error::EmptyKey
                | Error::InvalidTtl { .. }
                | Error::InvalidUrl { .. }
                | Error::NoNodes
                | Error::TooFewNodes { .. }
                | Error::InvalidConfig { .. }
        )
    }

    /// True when too few nodes answered (the lock service is unavailable).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::NoQuorum { .. })
    }

    /// The per-node failures behind a [`Error::NoQuorum`], empty otherwise.
    pub fn node_failures(&self) -> &[NodeError] {
        match self {
            Error::NoQuorum { failures, .. } => failures,
            _ => &[],
        }
    }
}

/// What went wrong on one node, and which node it was.
#[derive(Clone, Debug, thiserror::Error)]
#[error("node {node}: {kind}")]
pub struct NodeError {
    /// The node's address (`host:port`), never its password.
    pub node: String,
    /// What happened.
    #[source]
    pub kind: NodeErrorKind,
}

/// The ways one node can fail an operation.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeErrorKind {
    /// The node did not answer within `node_timeout` (the command may still run on it later).
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// No connection could be had from the node's pool within `node_timeout`.
    #[error("no connection within {0:?}")]
    Connect(Duration),
    /// The node answered with an error, or the connection failed.
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// The node answered something the script or command never returns.
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

impl NodeErrorKind {
    /// True when the node did not answer in time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, NodeErrorKind::Timeout(_) | NodeErrorKind::Connect(_))
            || matches!(self, NodeErrorKind::Redis(e) if e.is_timeout())
    }
}

/// Displays a URL with the password replaced by `***`, for errors and logs.
pub(crate) struct Redacted<'a>(pub(crate) &'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = self.0;
        let Some(scheme_end) = url.find("://") else {
            return f.write_str(url);
        };
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find('/').unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => {
                let userinfo = &rest[..at];
                let user = userinfo.split(':').next().unwrap_or("");
                let shown = if userinfo.contains(':') {
                    format!("{user}:***")
                } else {
                    "***".to_owned()
                };
                write!(f, "{}{shown}{}", &url[..scheme_end + 3], &rest[at..])
            }
            None => f.write_str(url),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_passwords_and_keeps_the_rest() {
        assert_eq!(
            Redacted("redis://user:secret@host:6380/0").to_string(),
            "redis://user:***@host:6380/0"
        );
        assert_eq!(
            Redacted("redis://:secret@host").to_string(),
            "redis://:***@host"
        );
        assert_eq!(
            Redacted("rediss://token@host").to_string(),
            "rediss://***@host"
        );
        assert_eq!(
            Redacted("redis://127.0.0.1:7001").to_string(),
            "redis://127.0.0.1:7001"
        );
        assert_eq!(Redacted("not a url").to_string(), "not a url");
    }

    #[test]
    fn predicates_split_input_from_outcome() {
        assert!(Error::EmptyKey.is_input());
        assert!(!Error::EmptyKey.is_retryable());
        let contended = Error::Contended {
            key: "k".into(),
            attempts: 3,
        };
        assert!(contended.is_contended() && contended.is_retryable());
        assert!(!Error::Lost { key: "k".into() }.is_retryable());
        assert_eq!(
            Error::NoQuorum {
                acquired: 1,
                quorum: 2,
                failures: vec![]
            }
            .to_string(),
            "quorum not reached: 1/2 nodes"
        );
    }
}
