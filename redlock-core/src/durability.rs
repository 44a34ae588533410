//! What each node says about keeping its writes across a crash: the persistence rule of the
//! operational contract, read off the nodes instead of assumed.
//!
//! A node that restarts empty right after a crash has forgotten the lock keys it granted, and
//! every fence counter it held: fencing tokens can then go backwards. Locks survive a delayed
//! restart (the keys would have expired anyway); fence counters, which have no ttl, need AOF
//! with `appendfsync always`. Nothing in the protocol tells a client how a node is run, but
//! `CONFIG GET` does, where the server allows it.

use std::{collections::HashMap, fmt};

/// How a node keeps its writes across a crash, as it reports it (`CONFIG GET append*`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// AOF with `appendfsync always`: every write is on disk before the node answers it. Lock
    /// keys and fence counters survive a crash and an immediate restart.
    AofAlways,
    /// AOF with a weaker fsync policy (`everysec` or `no`): a crash can lose the last writes
    /// the node acknowledged, a lock key or a fence counter's raise among them.
    AofRelaxed {
        /// The node's `appendfsync` setting.
        appendfsync: String,
    },
    /// No AOF: a crash loses everything written since the last snapshot, if any. Locks stay
    /// safe only if the node stays down for the longest ttl after a crash; fence counters are
    /// not protected at all.
    NoAof,
    /// The node did not tell: `CONFIG` is disabled or renamed (as on managed services), the
    /// server has no such settings (Dragonfly has no AOF), or the node did not answer.
    Unknown {
        /// Why, in words.
        reason: String,
    },
}

impl Durability {
    /// Whether the node's fence counters survive a crash and an immediate restart: only with
    /// AOF and `appendfsync always`.
    pub fn keeps_fence_counters(&self) -> bool {
        matches!(self, Durability::AofAlways)
    }

    /// Reads the node's answer to `CONFIG GET append*` (setting name → value).
    pub(crate) fn from_config(config: &HashMap<String, String>) -> Durability {
        match config.get("appendonly").map(String::as_str) {
            Some("yes") => match config.get("appendfsync").map(String::as_str) {
                Some("always") => Durability::AofAlways,
                Some(policy) => Durability::AofRelaxed {
                    appendfsync: policy.to_owned(),
                },
                None => Durability::Unknown {
                    reason: "AOF is on but the node has no appendfsync setting".to_owned(),
                },
            },
            Some("no") => Durability::NoAof,
            Some(other) => Durability::Unknown {
                reason: format!("unexpected appendonly setting {other:?}"),
            },
            None => Durability::Unknown {
                reason: "the node has no appendonly setting".to_owned(),
            },
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::AofAlways => f.write_str("AOF, appendfsync always"),
            Durability::AofRelaxed { appendfsync } => write!(f, "AOF, appendfsync {appendfsync}"),
            Durability::NoAof => f.write_str("no AOF"),
            Durability::Unknown { reason } => write!(f, "unknown ({reason})"),
        }
    }
}

/// One node's [`Durability`], from [`Redlock::durability`](crate::Redlock::durability).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDurability {
    /// The node's address (`host:port`), never its password.
    pub node: String,
    /// What it said.
    pub durability: Durability,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn reads_the_aof_settings() {
        let always = config(&[("appendonly", "yes"), ("appendfsync", "always")]);
        assert_eq!(Durability::from_config(&always), Durability::AofAlways);
        let everysec = config(&[("appendonly", "yes"), ("appendfsync", "everysec")]);
        assert_eq!(
            Durability::from_config(&everysec),
            Durability::AofRelaxed {
                appendfsync: "everysec".to_owned()
            }
        );
        let off = config(&[("appendonly", "no"), ("appendfsync", "always")]);
        assert_eq!(Durability::from_config(&off), Durability::NoAof);
    }

    #[test]
    fn a_node_without_the_settings_is_unknown() {
        assert!(matches!(
            Durability::from_config(&config(&[])),
            Durability::Unknown { .. }
        ));
        assert!(matches!(
            Durability::from_config(&config(&[("appendonly", "yes")])),
            Durability::Unknown { .. }
        ));
        assert!(!Durability::from_config(&config(&[])).keeps_fence_counters());
    }
}
