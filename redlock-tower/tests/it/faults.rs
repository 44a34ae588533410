//! Cancellation and node failures: nothing is left behind, nothing hangs, a lost lock stops
//! the handler.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::State,
    http::{Request, StatusCode},
    routing::post,
};
use redlock_core::{AutoExtend, Redlock, Retry};
use redlock_tower::{KeyFromPath, RequestLockLayer};
use tokio::sync::{Mutex, oneshot};
use tower::ServiceExt;

use crate::{
    DropSignal, Gate, Overlap, PATIENCE, lock_keys, nodes, redlock, serve, wait_for_no_lock_keys,
};

fn by_account() -> KeyFromPath {
    KeyFromPath::new("/accounts/{id}/withdraw", "account:{id}").unwrap()
}

fn withdraw(base: &str) -> Request<Body> {
    Request::post(format!("{base}/accounts/1/withdraw"))
        .body(Body::empty())
        .unwrap()
}

/// A handler that reports when it is dropped, parked at a gate.
#[derive(Clone)]
struct Parked {
    gate: Arc<Gate>,
    dropped: Arc<Mutex<Option<oneshot::Sender<()>>>>,
}

impl Parked {
    fn new() -> (Parked, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let parked = Parked {
            gate: Gate::new(),
            dropped: Arc::new(Mutex::new(Some(tx))),
        };
        (parked, rx)
    }

    fn app(&self, layer: RequestLockLayer<KeyFromPath>) -> Router {
        async fn handler(State(parked): State<Parked>) -> &'static str {
            let _signal = DropSignal(parked.dropped.lock().await.take());
            parked.gate.pass().await;
            "ok"
        }
        Router::new()
            .route("/accounts/{id}/withdraw", post(handler))
            .route_layer(layer)
            .with_state(self.clone())
    }
}

/// Dropping the response future while the handler is parked (what hyper does when the client
/// goes away) drops the handler and releases the lock in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_releases_the_lock() {
    let cluster = nodes().await;
    let (parked, dropped) = Parked::new();
    let app = parked.app(RequestLockLayer::new(
        redlock(&cluster, Duration::from_secs(30)),
        by_account(),
    ));

    let call = tokio::spawn(app.oneshot(withdraw("")));
    parked.gate.entered().await;
    assert!(lock_keys(&cluster).len() >= 2, "held on a quorum");
    call.abort();
    tokio::time::timeout(PATIENCE, dropped)
        .await
        .expect("the handler future was dropped")
        .unwrap();
    // The ttl is 30 s: only the release can clear the keys within the patience.
    wait_for_no_lock_keys(&cluster).await;
}

/// The same through a real connection: the client's request is dropped mid-flight, hyper sees
/// the connection close and drops the service future.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_connection_releases_the_lock() {
    let cluster = nodes().await;
    let (parked, dropped) = Parked::new();
    let base = serve(parked.app(RequestLockLayer::new(
        redlock(&cluster, Duration::from_secs(30)),
        by_account(),
    )))
    .await;

    let client = reqwest::Client::new();
    let call = tokio::spawn(client.post(format!("{base}/accounts/1/withdraw")).send());
    parked.gate.entered().await;
    assert!(lock_keys(&cluster).len() >= 2);
    call.abort();
    drop(client);
    tokio::time::timeout(PATIENCE, dropped)
        .await
        .expect("hyper dropped the handler future")
        .unwrap();
    wait_for_no_lock_keys(&cluster).await;
}

/// With two of three nodes dead, no quorum is possible: the answer is a quick 503 with
/// `Retry-After`, both failing fast and waiting, and the handler never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn majority_down_is_503_not_a_hang() {
    let cluster = nodes().await;
    cluster[0].kill().unwrap();
    cluster[1].kill().unwrap();
    let overlap = Arc::new(Overlap::default());
    let app = |layer: RequestLockLayer<KeyFromPath>| {
        async fn handler(State(overlap): State<Arc<Overlap>>) -> &'static str {
            let _inside = overlap.enter();
            "ok"
        }
        Router::new()
            .route("/accounts/{id}/withdraw", post(handler))
            .route_layer(layer)
            .with_state(overlap.clone())
    };
    let redlock = redlock(&cluster, Duration::from_secs(5));
    let fail_fast = app(RequestLockLayer::new(redlock.clone(), by_account()));
    let waiting =
        app(RequestLockLayer::new(redlock, by_account()).wait(Duration::from_millis(300)));

    for app in [fail_fast, waiting] {
        let response = tokio::time::timeout(PATIENCE, app.oneshot(withdraw("")))
            .await
            .expect("answered, not hung")
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1");
    }
    assert_eq!(overlap.total(), 0, "the handler ran without a lock");
}

/// A handler still running when the majority stops answering: the extensions fail, the
/// deadline passes, the handler future is dropped and the client gets 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_lock_drops_the_handler_and_answers_503() {
    let cluster = nodes().await;
    let redlock = Redlock::builder()
        .nodes(cluster.urls())
        .ttl(Duration::from_millis(600))
        .node_timeout(Duration::from_millis(100))
        .retry(Retry::none())
        .build()
        .unwrap();
    let (parked, dropped) = Parked::new();
    let app = parked.app(
        RequestLockLayer::new(redlock, by_account())
            // Waiting retries an acquisition that a loaded machine made time out.
            .wait(PATIENCE)
            .auto_extend(AutoExtend::new().every(Duration::from_millis(100))),
    );

    let call = tokio::spawn(app.oneshot(withdraw("")));
    parked.gate.entered().await;
    cluster[1].pause().unwrap();
    cluster[2].pause().unwrap();
    let response = tokio::time::timeout(PATIENCE, call)
        .await
        .expect("answered once the lock was lost")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    tokio::time::timeout(PATIENCE, dropped)
        .await
        .expect("the handler future was dropped")
        .unwrap();
    parked.gate.open();
    cluster[1].resume().unwrap();
    cluster[2].resume().unwrap();
}
