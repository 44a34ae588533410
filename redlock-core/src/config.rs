//! The serde-friendly configuration, and its validation into the settings a [`Redlock`] runs on.
//!
//! [`Redlock`]: crate::Redlock

use std::{fmt, time::Duration};

use crate::{
    error::{Error, Redacted, Result},
    retry::Retry,
    timing,
};

/// The longest lease accepted: one day. Longer leases are almost always a unit mistake
/// (seconds given as milliseconds), and a crashed holder would block the resource that long.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Everything a [`Redlock`](crate::Redlock) needs, as plain data.
///
/// Build one by hand, deserialize it (feature `serde`, every field optional thanks to
/// `#[serde(default)]`), then pass it to [`RedlockBuilder::from_config`](crate::RedlockBuilder::from_config).
/// Durations are [humantime](https://docs.rs/humantime) strings in serde (`"10s"`, `"50ms"`).
#[derive(Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct RedlockConfig {
    /// Node URLs (`redis://[user:password@]host:port[/db]`, `rediss://` with feature `tls`), one
    /// per independent primary. 3 or 5 in production.
    pub nodes: Vec<String>,
    /// Default lease length. Defaults to 10 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub ttl: Duration,
    /// Retry policy of [`Redlock::lock`](crate::Redlock::lock). Defaults to [`Retry::default`].
    pub retry: Retry,
    /// Budget for one node to answer one command, connection checkout included. Must be well
    /// below the ttl. Defaults to 100 ms.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub node_timeout: Duration,
    /// Clock rate error allowed between client and nodes, in `[0, 1)`. Defaults to 0.01.
    pub drift_factor: f64,
    /// Votes needed, at least a majority of `nodes`. Defaults to `None` (a majority).
    pub quorum: Option<usize>,
    /// Validity a lock must still have when granted. Defaults to 1 ms.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub min_validity: Duration,
    /// Prefix of every key written. Defaults to `"redlock:"`.
    pub key_prefix: String,
    /// Connections kept per node (multiplexed, so a few are plenty). Defaults to 4.
    pub pool_size: u32,
    /// Issue fencing tokens on every acquisition (one more round trip; see
    /// [`FencingToken`](crate::FencingToken)). Defaults to `false`.
    pub fencing: bool,
}

impl Default for RedlockConfig {
    fn default() -> Self {
        RedlockConfig {
            nodes: Vec::new(),
            ttl: Duration::from_secs(10),
            retry: Retry::default(),
            node_timeout: Duration::from_millis(100),
            drift_factor: 0.01,
            quorum: None,
            min_validity: Duration::from_millis(1),
            key_prefix: "redlock:".to_owned(),
            pool_size: 4,
            fencing: false,
        }
    }
}

impl fmt::Debug for RedlockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<String> = self.nodes.iter().map(|n| Redacted(n).to_string()).collect();
        f.debug_struct("RedlockConfig")
            .field("nodes", &nodes)
            .field("ttl", &self.ttl)
            .field("retry", &self.retry)
            .field("node_timeout", &self.node_timeout)
            .field("drift_factor", &self.drift_factor)
            .field("quorum", &self.quorum)
            .field("min_validity", &self.min_validity)
            .field("key_prefix", &self.key_prefix)
            .field("pool_size", &self.pool_size)
            .field("fencing", &self.fencing)
            .finish()
    }
}

/// Validated settings shared by every clone of a `Redlock`.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) ttl: Duration,
    pub(crate) retry: Retry,
    pub(crate) node_timeout: Duration,
    pub(crate) drift_factor: f64,
    pub(crate) quorum: usize,
    pub(crate) min_validity: Duration,
    pub(crate) key_prefix: String,
    pub(crate) fencing: bool,
}

impl Settings {
    /// Checks every setting against `nodes` configured nodes.
    pub(crate) fn validate(config: &RedlockConfig, nodes: usize) -> Result<Settings> {
        if nodes == 0 {
            return Err(Error::NoNodes);
        }
        let majority = timing::majority(nodes);
        let quorum = config.quorum.unwrap_or(majority);
        if quorum < majority || quorum > nodes {
            return Err(Error::TooFewNodes { nodes, quorum });
        }
        if !(0.0..1.0).contains(&config.drift_factor) {
            return Err(Error::InvalidConfig {
                reason: format!("drift_factor {} is outside [0, 1)", config.drift_factor),
            });
        }
        if config.node_timeout.is_zero() {
            return Err(Error::InvalidConfig {
                reason: "node_timeout must be above zero".to_owned(),
            });
        }
        if config.retry.attempts == 0 {
            return Err(Error::InvalidConfig {
                reason: "retry.attempts must be at least 1".to_owned(),
            });
        }
        if config.pool_size == 0 {
            return Err(Error::InvalidConfig {
                reason: "pool_size must be at least 1".to_owned(),
            });
        }
        let settings = Settings {
            ttl: config.ttl,
            retry: config.retry,
            node_timeout: config.node_timeout,
            drift_factor: config.drift_factor,
            quorum,
            min_validity: config.min_validity,
            key_prefix: config.key_prefix.clone(),
            fencing: config.fencing,
        };
        settings.check_ttl(config.ttl)?;
        if config.node_timeout >= config.ttl {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "node_timeout {:?} must be well below the ttl {:?}",
                    config.node_timeout, config.ttl
                ),
            });
        }
        Ok(settings)
    }

    /// A ttl is usable when it is at most [`MAX_TTL`] and leaves more than the minimum validity
    /// after drift: otherwise no acquisition could ever be granted.
    pub(crate) fn check_ttl(&self, ttl: Duration) -> Result<()> {
        let floor = timing::drift(ttl, self.drift_factor) + self.min_validity;
        if ttl.is_zero() || ttl > MAX_TTL || ttl <= floor {
            return Err(Error::InvalidTtl { ttl, max: MAX_TTL });
        }
        Ok(())
    }

    pub(crate) fn drift(&self, ttl: Duration) -> Duration {
        timing::drift(ttl, self.drift_factor)
    }

    /// The key written for `resource`. Empty resources are refused: they are almost always a
    /// missing value, and every empty key would serialise on the same lock.
    pub(crate) fn key(&self, resource: &str) -> Result<String> {
        if resource.is_empty() {
            return Err(Error::EmptyKey);
        }
        // Concatenated by hand: `format!` costs several times more, on every acquisition.
        let mut key = String::with_capacity(self.key_prefix.len() + resource.len());
        key.push_str(&self.key_prefix);
        key.push_str(resource);
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(nodes: usize) -> RedlockConfig {
        RedlockConfig {
            nodes: (0..nodes)
                .map(|i| format!("redis://127.0.0.1:{}", 7001 + i))
                .collect(),
            ..RedlockConfig::default()
        }
    }

    #[test]
    fn defaults_are_valid_and_use_a_majority() {
        let s = Settings::validate(&config(5), 5).unwrap();
        assert_eq!(s.quorum, 3);
    }

    #[test]
    fn no_nodes_is_a_typed_error() {
        assert!(matches!(
            Settings::validate(&config(0), 0),
            Err(Error::NoNodes)
        ));
    }

    #[test]
    fn quorum_may_only_be_raised_up_to_the_node_count() {
        let mut c = config(3);
        c.quorum = Some(3);
        assert_eq!(Settings::validate(&c, 3).unwrap().quorum, 3);
        c.quorum = Some(1);
        assert!(matches!(
            Settings::validate(&c, 3),
            Err(Error::TooFewNodes {
                nodes: 3,
                quorum: 1
            })
        ));
        c.quorum = Some(4);
        assert!(matches!(
            Settings::validate(&c, 3),
            Err(Error::TooFewNodes {
                nodes: 3,
                quorum: 4
            })
        ));
    }

    #[test]
    fn ttl_must_be_positive_bounded_and_above_drift() {
        for ttl in [
            Duration::ZERO,
            Duration::from_millis(2),
            MAX_TTL + Duration::from_millis(1),
        ] {
            let mut c = config(3);
            c.ttl = ttl;
            c.node_timeout = Duration::from_micros(1);
            assert!(
                matches!(Settings::validate(&c, 3), Err(Error::InvalidTtl { .. })),
                "{ttl:?}"
            );
        }
    }

    #[test]
    fn drift_factor_and_timeouts_are_checked() {
        for factor in [-0.1, 1.0, f64::NAN] {
            let mut c = config(3);
            c.drift_factor = factor;
            assert!(matches!(
                Settings::validate(&c, 3),
                Err(Error::InvalidConfig { .. })
            ));
        }
        let mut c = config(3);
        c.node_timeout = c.ttl;
        assert!(matches!(
            Settings::validate(&c, 3),
            Err(Error::InvalidConfig { .. })
        ));
        let mut c = config(3);
        c.node_timeout = Duration::ZERO;
        assert!(matches!(
            Settings::validate(&c, 3),
            Err(Error::InvalidConfig { .. })
        ));
    }

    #[test]
    fn empty_resource_is_refused_and_prefix_applied() {
        let s = Settings::validate(&config(3), 3).unwrap();
        assert!(matches!(s.key(""), Err(Error::EmptyKey)));
        assert_eq!(s.key("orders:42").unwrap(), "redlock:orders:42");
    }

    #[test]
    fn debug_redacts_passwords() {
        let mut c = config(1);
        c.nodes = vec!["redis://u:hunter2@host:1".into()];
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

impl RedlockConfig {
    /// Reads the configuration from the environment:
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `REDLOCK_NODES` | comma-separated node URLs (required) |
    /// | `REDLOCK_TTL_MS` | default lease, milliseconds |
    /// | `REDLOCK_NODE_TIMEOUT_MS` | per-node budget, milliseconds |
    /// | `REDLOCK_RETRY_ATTEMPTS` | attempts of `lock` |
    /// | `REDLOCK_QUORUM` | votes needed |
    /// | `REDLOCK_KEY_PREFIX` | key prefix |
    /// | `REDLOCK_FENCING` | `true` or `1` to issue fencing tokens |
    ///
    /// Unset variables keep their defaults.
    ///
    /// # Errors
    ///
    /// [`Error::NoNodes`] when `REDLOCK_NODES` is unset or empty, [`Error::InvalidConfig`] naming
    /// the variable that does not parse.
    pub fn from_env() -> Result<RedlockConfig> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<RedlockConfig> {
        let mut config = RedlockConfig {
            nodes: get("REDLOCK_NODES")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            ..RedlockConfig::default()
        };
        if config.nodes.is_empty() {
            return Err(Error::NoNodes);
        }
        let number = |name: &str| -> Result<Option<u64>> {
            get(name)
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|_| Error::InvalidConfig {
                        reason: format!("{name}={v:?} is not a whole number"),
                    })
                })
                .transpose()
        };
        if let Some(ms) = number("REDLOCK_TTL_MS")? {
            config.ttl = Duration::from_millis(ms);
        }
        if let Some(ms) = number("REDLOCK_NODE_TIMEOUT_MS")? {
            config.node_timeout = Duration::from_millis(ms);
        }
        if let Some(n) = number("REDLOCK_RETRY_ATTEMPTS")? {
            config.retry.attempts = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(q) = number("REDLOCK_QUORUM")? {
            config.quorum = Some(usize::try_from(q).unwrap_or(usize::MAX));
        }
        if let Some(fencing) = get("REDLOCK_FENCING") {
            config.fencing = matches!(fencing.trim(), "1" | "true" | "yes" | "on");
        }
        if let Some(prefix) = get("REDLOCK_KEY_PREFIX") {
            config.key_prefix = prefix;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod env_tests {
    use super::*;

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn reads_nodes_and_numbers() {
        let c = RedlockConfig::from_lookup(lookup(&[
            ("REDLOCK_NODES", "redis://a:1, redis://b:2,redis://c:3"),
            ("REDLOCK_TTL_MS", "3000"),
            ("REDLOCK_QUORUM", "3"),
        ]))
        .unwrap();
        assert_eq!(c.nodes, ["redis://a:1", "redis://b:2", "redis://c:3"]);
        assert_eq!(c.ttl, Duration::from_secs(3));
        assert_eq!(c.quorum, Some(3));
    }

    #[test]
    fn reads_timeout_attempts_fencing_and_prefix() {
        let c = RedlockConfig::from_lookup(lookup(&[
            ("REDLOCK_NODES", "redis://a:1"),
            ("REDLOCK_NODE_TIMEOUT_MS", "250"),
            ("REDLOCK_RETRY_ATTEMPTS", "7"),
            ("REDLOCK_FENCING", "true"),
            ("REDLOCK_KEY_PREFIX", "app:locks:"),
        ]))
        .unwrap();
        assert_eq!(c.node_timeout, Duration::from_millis(250));
        assert_eq!(c.retry.attempts, 7);
        assert!(c.fencing);
        assert_eq!(c.key_prefix, "app:locks:");
        // Unset, each keeps its default; any other word than the four "on" spellings is off.
        let defaults = RedlockConfig::default();
        let c = RedlockConfig::from_lookup(lookup(&[
            ("REDLOCK_NODES", "redis://a:1"),
            ("REDLOCK_FENCING", "no"),
        ]))
        .unwrap();
        assert_eq!(c.node_timeout, defaults.node_timeout);
        assert_eq!(c.retry.attempts, defaults.retry.attempts);
        assert!(!c.fencing);
        assert_eq!(c.key_prefix, defaults.key_prefix);
        let err = RedlockConfig::from_lookup(lookup(&[
            ("REDLOCK_NODES", "redis://a:1"),
            ("REDLOCK_RETRY_ATTEMPTS", "-1"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("REDLOCK_RETRY_ATTEMPTS"), "{err}");
    }

    #[test]
    fn missing_nodes_and_bad_numbers_are_typed() {
        assert!(matches!(
            RedlockConfig::from_lookup(lookup(&[])),
            Err(Error::NoNodes)
        ));
        let err = RedlockConfig::from_lookup(lookup(&[
            ("REDLOCK_NODES", "redis://a:1"),
            ("REDLOCK_TTL_MS", "10s"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("REDLOCK_TTL_MS"), "{err}");
    }
}
