//! Bad input gets a typed error, never a panic or a hang.

use std::time::{Duration, Instant};

use redlock_core::{Error, LockOptions, MAX_TTL, Redlock, Retry};

use crate::support::{cluster, redlock};

#[tokio::test]
async fn empty_key_is_refused_before_any_network_call() {
    let redlock = Redlock::builder()
        .nodes([
            "redis://127.0.0.1:1",
            "redis://127.0.0.1:2",
            "redis://127.0.0.1:3",
        ])
        .build()
        .unwrap();
    assert!(matches!(redlock.lock("").await, Err(Error::EmptyKey)));
    assert!(matches!(redlock.try_lock("").await, Err(Error::EmptyKey)));
    assert!(!Error::EmptyKey.is_retryable());
}

#[tokio::test]
async fn zero_and_huge_ttls_are_refused() {
    let nodes = cluster(3);
    let redlock = redlock(&nodes);
    for ttl in [Duration::ZERO, MAX_TTL + Duration::from_secs(1)] {
        let err = redlock
            .lock_with("ttl", LockOptions::new().ttl(ttl))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidTtl { .. }), "{ttl:?}: {err:?}");
    }
    let lock = redlock.lock("ttl").await.unwrap();
    assert!(matches!(
        lock.extend_by(Duration::ZERO).await,
        Err(Error::InvalidTtl { .. })
    ));
    lock.release().await.unwrap();
    let err = Redlock::builder()
        .nodes(nodes.urls())
        .ttl(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidTtl { .. }) || matches!(err, Error::InvalidConfig { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn bad_urls_and_too_few_nodes_are_typed() {
    let err = Redlock::builder()
        .node("redis://:pw@[::1")
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
    assert!(!err.to_string().contains("pw@"), "{err}");
    assert!(matches!(Redlock::builder().build(), Err(Error::NoNodes)));
    assert!(matches!(
        Redlock::builder()
            .nodes(["redis://a:1"; 3])
            .quorum(4)
            .build(),
        Err(Error::TooFewNodes {
            nodes: 3,
            quorum: 4
        })
    ));
    assert!(matches!(
        Redlock::builder()
            .nodes(["redis://a:1"; 3])
            .drift_factor(1.5)
            .build(),
        Err(Error::InvalidConfig { .. })
    ));
}

/// Nodes nobody listens on: `connect` and `lock` fail quickly with per-node errors.
#[tokio::test]
async fn unreachable_nodes_fail_fast_with_per_node_errors() {
    let ports: Vec<u16> = (0..3)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let redlock = Redlock::builder()
        .nodes(ports.iter().map(|p| format!("redis://127.0.0.1:{p}")))
        .node_timeout(Duration::from_millis(100))
        .retry(Retry::none())
        .build()
        .unwrap();
    let started = Instant::now();
    let err = redlock.connect().await.unwrap_err();
    assert_eq!(err.node_failures().len(), 3, "{err:?}");
    let err = redlock.lock("nowhere").await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    // Decided as soon as a quorum became impossible: two failures out of three.
    assert!(err.node_failures().len() >= 2, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
