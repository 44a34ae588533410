//! [`Cluster`]: N independent [`RedisNode`]s, as a Redlock deployment uses them.

use std::io;
use std::ops::{Index, IndexMut};
use std::slice;

use crate::node::RedisNode;
use crate::server::{self, Persistence};

/// N independent nodes (not a Redis Cluster: no replication, no slots), the
/// topology the Redlock algorithm runs against.
///
/// Nodes are started in parallel and all stopped when the cluster drops.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<RedisNode>,
}

impl Cluster {
    /// Starts `n` nodes without persistence.
    pub fn start(n: usize) -> io::Result<Cluster> {
        Cluster::start_with(n, Persistence::None)
    }

    /// Starts `n` nodes with the given persistence: all processes are spawned
    /// first, then each is waited for, so startup takes about as long as one node.
    pub fn start_with(n: usize, persistence: Persistence) -> io::Result<Cluster> {
        let spawned = server::free_ports(n)?
            .into_iter()
            .map(|port| RedisNode::spawn(persistence, port))
            .collect::<io::Result<Vec<_>>>()?;
        let nodes = spawned
            .into_iter()
            .map(RedisNode::finish_start)
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Cluster { nodes })
    }

    /// The nodes' `redis://127.0.0.1:<port>` URLs, in node order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisNode::url).collect()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`; panics if out of range, like indexing.
    pub fn node(&self, i: usize) -> &RedisNode {
        &self.nodes[i]
    }

    /// Node `i`, mutably; panics if out of range, like indexing.
    ///
    /// Every [`RedisNode`] method takes `&self`, so this is rarely needed.
    pub fn node_mut(&mut self, i: usize) -> &mut RedisNode {
        &mut self.nodes[i]
    }

    /// All nodes, in order.
    pub fn nodes(&self) -> &[RedisNode] {
        &self.nodes
    }

    /// Iterates over the nodes in order.
    pub fn iter(&self) -> slice::Iter<'_, RedisNode> {
        self.nodes.iter()
    }
}

impl Index<usize> for Cluster {
    type Output = RedisNode;

    fn index(&self, i: usize) -> &RedisNode {
        &self.nodes[i]
    }
}

impl IndexMut<usize> for Cluster {
    fn index_mut(&mut self, i: usize) -> &mut RedisNode {
        &mut self.nodes[i]
    }
}

impl<'a> IntoIterator for &'a Cluster {
    type Item = &'a RedisNode;
    type IntoIter = slice::Iter<'a, RedisNode>;

    fn into_iter(self) -> Self::IntoIter {
        self.nodes.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::Reply;

    #[test]
    fn three_node_cluster() {
        let started = Instant::now();
        let cluster = Cluster::start(3).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(cluster.len(), 3);
        assert!(!cluster.is_empty());
        let urls = cluster.urls();
        assert_eq!(urls.iter().collect::<HashSet<_>>().len(), 3);
        assert_eq!(urls[1], cluster[1].url());

        for (i, node) in cluster.iter().enumerate() {
            let value = i.to_string();
            assert_eq!(
                node.query(&["SET", "key", &value]).unwrap(),
                Reply::Simple("OK".into())
            );
        }
        // Nodes are independent: each keeps its own value.
        for (i, node) in (&cluster).into_iter().enumerate() {
            let reply = node.query(&["GET", "key"]).unwrap();
            assert_eq!(reply.as_str(), Some(i.to_string().as_str()));
        }

        cluster.node(0).pause().unwrap();
        assert!(
            cluster[0]
                .query_timeout(&["PING"], Duration::from_millis(100))
                .is_err()
        );
        cluster[1].ping().unwrap();
        cluster.node(0).resume().unwrap();
        assert_eq!(cluster[0].get("key").unwrap().as_deref(), Some("0"));

        cluster[2].kill().unwrap();
        assert!(cluster[2].query(&["PING"]).is_err());
        assert_eq!(cluster.nodes().iter().filter(|n| n.is_running()).count(), 2);
        cluster[2].restart().unwrap();
        assert_eq!(cluster[2].dbsize().unwrap(), 0);
        assert_eq!(cluster.urls(), urls, "ports survive restarts");
    }

    #[test]
    fn aof_cluster_keeps_acknowledged_writes() {
        let mut cluster = Cluster::start_with(2, Persistence::AofAlways).unwrap();
        cluster.node_mut(0).set("lock", "token").unwrap();
        cluster[0].restart().unwrap();
        assert_eq!(cluster[0].get("lock").unwrap().as_deref(), Some("token"));
        assert_eq!(cluster[1].get("lock").unwrap(), None);
    }

    #[test]
    fn empty_cluster() {
        let cluster = Cluster::start(0).unwrap();
        assert!(cluster.is_empty());
        assert!(cluster.urls().is_empty());
    }
}
