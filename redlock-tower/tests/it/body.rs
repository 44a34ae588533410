//! `hold_until_body_end`: the lock covers a streamed body, and is gone once the body ends.

use std::{sync::Arc, time::Duration};

use axum::{Router, body::Body, extract::State, http::StatusCode, routing::post};
use futures_util::stream;
use redlock_tower::{KeyFromPath, RequestLockLayer};
use tokio::sync::{Mutex, mpsc};

use crate::{lock_keys, nodes, redlock, serve, wait_for_no_lock_keys};

/// A streamed body fed by the test through a channel.
fn chunks() -> (mpsc::UnboundedSender<String>, Body) {
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let stream = stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    (tx, Body::from_stream(stream))
}

type Pending = Arc<Mutex<Option<Body>>>;

fn app(hold: bool, body: Pending, redlock: redlock_core::Redlock) -> Router {
    async fn report(State(body): State<Pending>) -> Body {
        body.lock().await.take().unwrap_or_default()
    }
    Router::new()
        .route("/reports/{id}", post(report))
        .route_layer(
            RequestLockLayer::new(
                redlock,
                KeyFromPath::new("/reports/{id}", "report:{id}").unwrap(),
            )
            .hold_until_body_end(hold),
        )
        .with_state(body)
}

/// While the body streams, the key is held and a second request is refused; once the client
/// has read the body to its end the key is already gone, because the end of a chunked body is
/// only sent after the release finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_is_held_until_the_body_ends() {
    let cluster = nodes().await;
    let (tx, body) = chunks();
    let pending: Pending = Arc::new(Mutex::new(Some(body)));
    let base = serve(app(
        true,
        pending,
        redlock(&cluster, Duration::from_secs(5)),
    ))
    .await;
    let client = reqwest::Client::new();
    let url = format!("{base}/reports/1");

    tx.send("first ".into()).unwrap();
    let streaming = client.post(&url).send().await.unwrap();
    assert_eq!(streaming.status(), StatusCode::OK);
    assert!(
        lock_keys(&cluster).len() >= 2,
        "held on a quorum while the body streams"
    );
    let second = client.post(&url).send().await.unwrap();
    assert_eq!(second.status(), StatusCode::CONFLICT);

    tx.send("last".into()).unwrap();
    drop(tx);
    assert_eq!(streaming.text().await.unwrap(), "first last");
    // Released on a quorum before the body ended; a node whose SET answered late is released
    // right behind it in the background.
    assert!(lock_keys(&cluster).len() < 2, "no quorum still held");
    wait_for_no_lock_keys(&cluster).await;
    let third = client.post(&url).send().await.unwrap();
    assert_eq!(third.status(), StatusCode::OK);
}

/// By default the lock is released before the response head is sent, even if the body is
/// still streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_the_lock_is_released_before_the_head() {
    let cluster = nodes().await;
    let (tx, body) = chunks();
    let pending: Pending = Arc::new(Mutex::new(Some(body)));
    let base = serve(app(
        false,
        pending,
        redlock(&cluster, Duration::from_secs(5)),
    ))
    .await;
    let client = reqwest::Client::new();

    let streaming = client
        .post(format!("{base}/reports/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(streaming.status(), StatusCode::OK);
    // Released on a quorum before the head was sent (a straggling node right behind it).
    assert!(lock_keys(&cluster).len() < 2, "no quorum still held");
    wait_for_no_lock_keys(&cluster).await;
    tx.send("done".into()).unwrap();
    drop(tx);
    assert_eq!(streaming.text().await.unwrap(), "done");
}

/// A lock lost while its body streams (the majority stops answering extensions) ends the body
/// with an error, so the client sees a broken response rather than a complete one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_lost_while_streaming_aborts_the_body() {
    let cluster = nodes().await;
    let redlock = redlock_core::Redlock::builder()
        .nodes(cluster.urls())
        .ttl(Duration::from_millis(600))
        .node_timeout(Duration::from_millis(100))
        .retry(redlock_core::Retry::none())
        .build()
        .unwrap();
    let (tx, body) = chunks();
    let pending: Pending = Arc::new(Mutex::new(Some(body)));
    let base = serve(app(true, pending, redlock)).await;

    tx.send("first ".into()).unwrap();
    let streaming = reqwest::Client::new()
        .post(format!("{base}/reports/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(streaming.status(), StatusCode::OK);
    cluster[1].pause().unwrap();
    cluster[2].pause().unwrap();
    let read = tokio::time::timeout(crate::PATIENCE, streaming.text())
        .await
        .expect("the body ended once the lock was lost");
    assert!(
        read.is_err(),
        "the body completed without its lock: {read:?}"
    );
    drop(tx);
    cluster[1].resume().unwrap();
    cluster[2].resume().unwrap();
}
