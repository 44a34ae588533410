//! `Redlock::durability`: what the nodes say about keeping their writes across a crash, read
//! from real servers started with and without AOF.

use std::{
    io,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use redlock_core::{Durability, Redlock};
use redlock_tests::{Cluster, Persistence};

use crate::support::{cluster, redlock};

/// The harness's default nodes run without AOF: none keeps its fence counters.
#[tokio::test]
async fn nodes_without_aof_say_so() {
    let nodes = cluster(3);
    let report = redlock(&nodes).durability().await;
    assert_eq!(report.len(), 3);
    for (node, server) in report.iter().zip(nodes.iter()) {
        assert_eq!(node.node, format!("127.0.0.1:{}", server.port()));
        assert_eq!(node.durability, Durability::NoAof);
        assert!(!node.durability.keeps_fence_counters());
    }
}

/// Nodes with AOF and `appendfsync always` keep their fence counters; one switched to
/// `everysec` at run time no longer does, and says which policy it runs.
#[tokio::test]
async fn nodes_with_aof_say_which_fsync_policy() {
    let nodes = Cluster::start_with(3, Persistence::AofAlways).expect("nodes start");
    let client = redlock(&nodes);
    let report = client.durability().await;
    assert!(
        report.iter().all(|n| n.durability == Durability::AofAlways),
        "{report:?}"
    );
    assert!(report.iter().all(|n| n.durability.keeps_fence_counters()));

    nodes[1]
        .query(&["CONFIG", "SET", "appendfsync", "everysec"])
        .unwrap();
    let report = client.durability().await;
    assert_eq!(
        report[1].durability,
        Durability::AofRelaxed {
            appendfsync: "everysec".to_owned()
        }
    );
    assert!(!report[1].durability.keeps_fence_counters());
    assert_eq!(report[0].durability, Durability::AofAlways);
}

/// A node that does not answer is reported as unknown within the node timeout, and the others
/// still answer.
#[tokio::test]
async fn a_node_that_does_not_answer_is_unknown() {
    let nodes = cluster(3);
    let client = Redlock::builder()
        .nodes(nodes.urls())
        .node_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    nodes[2].pause().unwrap();
    let started = Instant::now();
    let report = client.durability().await;
    let took = started.elapsed();
    nodes[2].resume().unwrap();
    assert!(
        matches!(report[2].durability, Durability::Unknown { .. }),
        "{report:?}"
    );
    assert_eq!(report[0].durability, Durability::NoAof);
    assert_eq!(report[1].durability, Durability::NoAof);
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

/// A node whose `CONFIG` command is refused (as managed services do) is unknown, not an error.
#[tokio::test]
async fn a_node_that_refuses_config_is_unknown() {
    let nodes = cluster(3);
    // A user that may run everything but CONFIG, as a managed service's default user.
    nodes[0]
        .query(&["ACL", "SETUSER", "default", "-config"])
        .unwrap();
    let report = redlock(&nodes).durability().await;
    match &report[0].durability {
        Durability::Unknown { reason } => assert!(reason.contains("permission"), "{reason}"),
        other => panic!("expected unknown, got {other:?}"),
    }
    assert_eq!(report[1].durability, Durability::NoAof);
}

/// What a test's tracing events printed.
#[derive(Clone, Default)]
struct Logged(Arc<Mutex<Vec<u8>>>);

impl io::Write for Logged {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Logged {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// With fencing on, `connect` warns about each node that may lose its fence counters in a
/// crash, and only about those. (One thread: the log capture is this thread's.)
#[tokio::test]
async fn connect_warns_when_fencing_runs_on_nodes_that_may_lose_counters() {
    let durable = Cluster::start_with(2, Persistence::AofAlways).expect("nodes start");
    let plain = cluster(1);
    let mut urls = durable.urls();
    urls.extend(plain.urls());
    let logged = Logged::default();
    let writer = logged.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fenced = Redlock::builder()
        .nodes(urls.clone())
        .fencing(true)
        .build()
        .unwrap();
    fenced.connect().await.expect("every node answers");
    let text = logged.text();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("may lose its fence counters"))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(
        warnings[0].contains(&format!("127.0.0.1:{}", plain[0].port())),
        "{text}"
    );
    assert!(warnings[0].contains("no AOF"), "{text}");

    // Without fencing the lock needs no more than the contract's delayed restart: no warning.
    logged.0.lock().unwrap().clear();
    let unfenced = Redlock::builder().nodes(urls).build().unwrap();
    unfenced.connect().await.expect("every node answers");
    assert!(
        !logged.text().contains("fence counters"),
        "{}",
        logged.text()
    );
}
