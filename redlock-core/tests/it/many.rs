//! `lock_many`: all-or-nothing over several resources, one script per node.

use std::time::Duration;

use redlock_core::{Error, LockOptions, Retry};

use crate::support::{
    cluster, eventually, gone_everywhere, lines_until_quiet, monitor, redlock_with, values,
};

/// If any one resource is held elsewhere, none is taken: the script checks every key before
/// setting any, so no node is left with a partial set, not even for a moment (`MONITOR` on a
/// node shows the script's own commands: it looked at `a`, and never set `a` or `c`).
#[tokio::test]
async fn lock_many_is_all_or_nothing() {
    let nodes = cluster(3);
    let redlock = redlock_with(&nodes, |b| b.retry(Retry::none()));
    let held = redlock.lock("b").await.unwrap();
    let seen = monitor(&nodes[0], Duration::from_secs(10));
    let err = redlock.lock_many(["a", "b", "c"]).await.unwrap_err();
    assert!(err.is_contended(), "{err:?}");
    for key in ["redlock:a", "redlock:c"] {
        assert!(gone_everywhere(&nodes, key).await, "{key} untouched");
    }
    let lines = lines_until_quiet(seen, Duration::from_millis(300)).await;
    assert!(
        lines.iter().any(|l| l.contains("\"EXISTS\" \"redlock:a\"")),
        "the script checked a: {lines:?}"
    );
    let written: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("\"SET\" \"redlock:a\"") || l.contains("\"SET\" \"redlock:c\""))
        .collect();
    assert!(written.is_empty(), "a or c was set: {written:?}");
    held.release().await.unwrap();
    // A straggler of the held lock is released in the background: let it go first.
    assert!(gone_everywhere(&nodes, "redlock:b").await);
    let lock = redlock.lock_many(["c", "a", "b", "a"]).await.unwrap();
    assert_eq!(lock.resources(), ["a", "b", "c"]);
    assert!(
        eventually(Duration::from_secs(2), || {
            let token = nodes[0].get("redlock:a").unwrap();
            token.is_some()
                && ["redlock:a", "redlock:b", "redlock:c"]
                    .iter()
                    .all(|k| values(&nodes, k).iter().all(|v| *v == token))
        })
        .await
    );
    lock.extend_by(Duration::from_secs(30)).await.unwrap();
    let pttl = nodes[1]
        .query(&["PTTL", "redlock:c"])
        .unwrap()
        .as_int()
        .unwrap();
    assert!(pttl > 20_000, "every key extended: {pttl}");
    let release = lock.release().await.unwrap();
    // `release` returns once a quorum answered; the last node finishes in the background.
    assert_eq!(release.released + release.pending, 3, "{release:?}");
    for key in ["redlock:a", "redlock:b", "redlock:c"] {
        assert!(gone_everywhere(&nodes, key).await, "{key} left behind");
    }
}

/// Two overlapping sets named in opposite orders never deadlock and never both hold.
#[tokio::test]
async fn overlapping_sets_exclude_each_other_in_any_order() {
    let nodes = cluster(3);
    let redlock = redlock_with(&nodes, |b| b.retry(Retry::none()));
    let first = redlock.lock_many(["x", "y"]).await.unwrap();
    let second = redlock.lock_many(["y", "z"]).await;
    assert!(matches!(second, Err(Error::Contended { .. })), "{second:?}");
    first.release().await.unwrap();
    let second = redlock.lock_many(["z", "y"]).await.unwrap();
    second.release().await.unwrap();
}

/// Fencing tokens are per resource; asking for one over several is a typed error, and so is an
/// empty list.
#[tokio::test]
async fn lock_many_refuses_fencing_and_empty_lists() {
    let nodes = cluster(3);
    let redlock = redlock_with(&nodes, |b| b);
    let err = redlock
        .lock_many_with(["p", "q"], LockOptions::new().fencing(true))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
    let none: [&str; 0] = [];
    assert!(matches!(
        redlock.lock_many(none).await,
        Err(Error::EmptyKey)
    ));
    assert!(matches!(
        redlock.lock_many(["ok", ""]).await,
        Err(Error::EmptyKey)
    ));
}
