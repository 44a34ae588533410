//! Requests with the same key never run at once, across replicas; other keys and keyless
//! requests are not held up. A real axum server, real nodes.

use std::{sync::Arc, time::Duration};

use axum::{
    Extension, Router,
    extract::{Path, Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use futures_util::future::join_all;
use redlock_core::{LockOptions, Redlock};
use redlock_tower::{KeyFromHeader, KeyFromPath, LockInfo, Rejection, RequestLockLayer};
use tokio::sync::Barrier;

use crate::{Gate, Overlap, PATIENCE, lock_keys, nodes, redlock, serve, wait_for_no_lock_keys};

fn by_account() -> KeyFromPath {
    KeyFromPath::new("/accounts/{id}/withdraw", "account:{id}").unwrap()
}

/// A router whose handler counts how many requests are inside it at once.
fn counting_app(layer: RequestLockLayer<KeyFromPath>, overlap: Arc<Overlap>) -> Router {
    async fn withdraw(State(overlap): State<Arc<Overlap>>) -> &'static str {
        let _inside = overlap.enter();
        // Simulated work, so that requests would overlap if the lock let them.
        tokio::time::sleep(Duration::from_millis(2)).await;
        "ok"
    }
    Router::new()
        .route("/accounts/{id}/withdraw", post(withdraw))
        .route_layer(layer)
        .with_state(overlap)
}

/// A router whose handler waits at `gate` for account 1 and answers at once for the others.
fn gated_app(layer: RequestLockLayer<KeyFromPath>, gate: Arc<Gate>) -> Router {
    async fn withdraw(State(gate): State<Arc<Gate>>, Path(id): Path<String>) -> &'static str {
        if id == "1" {
            gate.pass().await;
        }
        "ok"
    }
    Router::new()
        .route("/accounts/{id}/withdraw", post(withdraw))
        .route_layer(layer)
        .with_state(gate)
}

/// One request for account 1 that holds its lock inside the handler until `gate` opens, served
/// by [`gated_app`] behind `layer`, and a client to send more.
struct HeldAccount {
    gate: Arc<Gate>,
    client: reqwest::Client,
    url: String,
    holder: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
}

impl HeldAccount {
    async fn start(layer: RequestLockLayer<KeyFromPath>) -> HeldAccount {
        let gate = Gate::new();
        let base = serve(gated_app(layer, gate.clone())).await;
        let client = reqwest::Client::new();
        let url = format!("{base}/accounts/1/withdraw");
        let holder = tokio::spawn(client.post(&url).send());
        gate.entered().await;
        HeldAccount {
            gate,
            client,
            url,
            holder,
        }
    }

    /// Another request for account 1.
    fn request(&self) -> impl Future<Output = reqwest::Result<reqwest::Response>> {
        self.client.post(&self.url).send()
    }

    /// Lets the holder leave the handler; its status.
    async fn open(&mut self) -> StatusCode {
        self.gate.open();
        (&mut self.holder).await.unwrap().unwrap().status()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_requests_never_overlap_and_all_complete_when_waiting() {
    let cluster = nodes().await;
    let overlap = Arc::new(Overlap::default());
    let layer = RequestLockLayer::new(redlock(&cluster, Duration::from_secs(5)), by_account())
        .wait(Duration::from_secs(20));
    let base = serve(counting_app(layer, overlap.clone())).await;

    let client = reqwest::Client::new();
    let url = format!("{base}/accounts/1/withdraw");
    let responses = join_all((0..64).map(|_| client.post(&url).send())).await;
    for response in responses {
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(overlap.total(), 64);
    assert_eq!(overlap.max(), 1, "two handlers ran at once for one key");
    wait_for_no_lock_keys(&cluster).await;
}

/// The losers of a contended key are answered at once; the winner, and a request sent after
/// its answer, succeed (the lock is released before the answer leaves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_losers_get_409_with_retry_after() {
    let cluster = nodes().await;
    let layer = RequestLockLayer::new(redlock(&cluster, Duration::from_secs(5)), by_account())
        .fail_fast()
        .retry_after(Duration::from_secs(2));
    let mut held = HeldAccount::start(layer).await;
    let losers = join_all((0..8).map(|_| held.request())).await;
    for response in losers {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers()["retry-after"], "2");
    }
    assert_eq!(held.open().await, StatusCode::OK);
    let next = held.request().await.unwrap();
    assert_eq!(
        next.status(),
        StatusCode::OK,
        "the lock outlived the response"
    );
}

/// A request that waits for a held key and whose wait runs out is answered `409` with
/// `Retry-After`, once it has waited its whole `wait`, and without entering the handler (which
/// would block at the closed gate); the holder is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_runs_out_gets_409_with_retry_after() {
    let cluster = nodes().await;
    let wait = Duration::from_millis(300);
    let layer = RequestLockLayer::new(redlock(&cluster, Duration::from_secs(5)), by_account())
        .wait(wait)
        .retry_after(Duration::from_secs(2));
    let mut held = HeldAccount::start(layer).await;
    let asked = std::time::Instant::now();
    let late = tokio::time::timeout(PATIENCE, held.request())
        .await
        .expect("answered once its wait ran out")
        .unwrap();
    assert_eq!(late.status(), StatusCode::CONFLICT);
    assert_eq!(late.headers()["retry-after"], "2");
    assert!(
        asked.elapsed() >= wait,
        "refused after {:?}",
        asked.elapsed()
    );
    assert_eq!(held.open().await, StatusCode::OK);
    wait_for_no_lock_keys(&cluster).await;
}

/// Two handlers for different keys meet at a barrier: they can only both pass it if both are
/// inside at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_keys_run_in_parallel() {
    let cluster = nodes().await;
    async fn withdraw(State(barrier): State<Arc<Barrier>>) -> StatusCode {
        match tokio::time::timeout(PATIENCE, barrier.wait()).await {
            Ok(_) => StatusCode::OK,
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
    let layer = RequestLockLayer::new(redlock(&cluster, Duration::from_secs(5)), by_account());
    let app = Router::new()
        .route("/accounts/{id}/withdraw", post(withdraw))
        .route_layer(layer)
        .with_state(Arc::new(Barrier::new(2)));
    let base = serve(app).await;
    let client = reqwest::Client::new();
    let (a, b) = tokio::join!(
        client.post(format!("{base}/accounts/1/withdraw")).send(),
        client.post(format!("{base}/accounts/2/withdraw")).send(),
    );
    assert_eq!(a.unwrap().status(), StatusCode::OK);
    assert_eq!(b.unwrap().status(), StatusCode::OK);
}

/// Requests without the key header are inside the handler together, see no `LockInfo`, and
/// leave no lock key on the nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_without_key_is_not_locked() {
    let cluster = nodes().await;
    let gate = Gate::new();
    async fn handler(State(gate): State<Arc<Gate>>, request: Request) -> &'static str {
        gate.pass().await;
        match request.extensions().get::<LockInfo>() {
            Some(_) => "locked",
            None => "unlocked",
        }
    }
    let layer = RequestLockLayer::new(
        redlock(&cluster, Duration::from_secs(5)),
        KeyFromHeader::new("x-account-id").unwrap(),
    )
    .wait(Duration::from_secs(5));
    let app = Router::new()
        .route("/withdraw", post(handler))
        .layer(layer)
        .with_state(gate.clone());
    let base = serve(app).await;
    let client = reqwest::Client::new();
    let url = format!("{base}/withdraw");

    let first = tokio::spawn(client.post(&url).send());
    let second = tokio::spawn(client.post(&url).send());
    gate.entered().await;
    gate.entered().await;
    assert_eq!(lock_keys(&cluster), Vec::<String>::new());
    gate.open();
    for response in [first.await.unwrap(), second.await.unwrap()] {
        assert_eq!(response.unwrap().text().await.unwrap(), "unlocked");
    }
    let keyed = client
        .post(&url)
        .header("x-account-id", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.text().await.unwrap(), "locked");
}

/// The handler sees the lock it runs under, with a fencing token that grows with each request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_info_reaches_the_handler_with_fencing_tokens() {
    let cluster = nodes().await;
    async fn withdraw(Extension(lock): Extension<LockInfo>) -> String {
        assert!(lock.remaining() > Duration::ZERO);
        let token = lock.fencing_token().map_or(0, |t| t.get());
        format!("{} {token}", lock.resource())
    }
    let layer = RequestLockLayer::new(redlock(&cluster, Duration::from_secs(5)), by_account())
        .lock_options(LockOptions::new().fencing(true));
    let app = Router::new()
        .route("/accounts/{id}/withdraw", post(withdraw))
        .route_layer(layer);
    let base = serve(app).await;
    let client = reqwest::Client::new();
    let mut last = 0;
    for _ in 0..3 {
        let response = client
            .post(format!("{base}/accounts/9/withdraw"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.text().await.unwrap();
        let (resource, token) = body.split_once(' ').unwrap();
        assert_eq!(resource, "account:9");
        let token: u64 = token.parse().unwrap();
        assert!(
            token > last,
            "fencing tokens increase: {token} after {last}"
        );
        last = token;
    }
}

/// Two replicas (two routers, two listeners, two independent Redlock clients, as two processes
/// would have) serialise one key between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serialise_the_same_key() {
    let cluster = nodes().await;
    let overlap = Arc::new(Overlap::default());
    let replica = |redlock: Redlock| {
        counting_app(
            RequestLockLayer::new(redlock, by_account()).wait(Duration::from_secs(20)),
            overlap.clone(),
        )
    };
    let a = serve(replica(redlock(&cluster, Duration::from_secs(5)))).await;
    let b = serve(replica(redlock(&cluster, Duration::from_secs(5)))).await;
    let client = reqwest::Client::new();
    let responses = join_all((0..32).map(|i| {
        let base = if i % 2 == 0 { &a } else { &b };
        client.post(format!("{base}/accounts/7/withdraw")).send()
    }))
    .await;
    for response in responses {
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(overlap.total(), 32);
    assert_eq!(overlap.max(), 1, "the replicas ran one key at once");

    // And a replica failing fast sees the other's lock.
    let gate = Gate::new();
    let holder_app = gated_app(
        RequestLockLayer::new(redlock(&cluster, Duration::from_secs(5)), by_account()),
        gate.clone(),
    );
    let other_app = gated_app(
        RequestLockLayer::new(redlock(&cluster, Duration::from_secs(5)), by_account()),
        Gate::new(),
    );
    let (holder_base, other_base) = (serve(holder_app).await, serve(other_app).await);
    let holder = tokio::spawn(
        client
            .post(format!("{holder_base}/accounts/1/withdraw"))
            .send(),
    );
    gate.entered().await;
    let other = client
        .post(format!("{other_base}/accounts/1/withdraw"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::CONFLICT);
    gate.open();
    assert_eq!(holder.await.unwrap().unwrap().status(), StatusCode::OK);
}

/// `contended_status` changes the status; `on_rejection` builds the whole response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contended_status_and_on_rejection_customise_the_answer() {
    let cluster = nodes().await;
    let redlock = redlock(&cluster, Duration::from_secs(5));
    let gate = Gate::new();
    let locked = gated_app(
        RequestLockLayer::new(redlock.clone(), by_account()).contended_status(StatusCode::LOCKED),
        gate.clone(),
    );
    let custom = Router::new()
        .route("/accounts/{id}/withdraw", post(|| async { "ok" }))
        .route_layer(RequestLockLayer::new(redlock, by_account()).on_rejection(
            |rejection: Rejection| -> Response {
                (StatusCode::TOO_MANY_REQUESTS, rejection.to_string()).into_response()
            },
        ));
    let (locked, custom) = (serve(locked).await, serve(custom).await);
    let client = reqwest::Client::new();
    let holder = tokio::spawn(client.post(format!("{locked}/accounts/1/withdraw")).send());
    gate.entered().await;

    let response = client
        .post(format!("{locked}/accounts/1/withdraw"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::LOCKED);
    assert_eq!(response.headers()["retry-after"], "1");
    let response = client
        .post(format!("{custom}/accounts/1/withdraw"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        response.text().await.unwrap(),
        "lock account:1 is held by another request"
    );
    gate.open();
    assert_eq!(holder.await.unwrap().unwrap().status(), StatusCode::OK);
}
