//! An HTTP downstream (wiremock) behind the layer sees at most one call per key in flight.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Path, State},
    http::StatusCode,
    routing::post,
};
use futures_util::future::join_all;
use redlock_tower::{KeyFromPath, RequestLockLayer};
use wiremock::{Mock, MockServer, Respond, ResponseTemplate, matchers};

use crate::{nodes, redlock, serve};

/// How long the downstream takes to answer each call.
const DELAY: Duration = Duration::from_millis(40);

/// Records when each call for each account arrives, and answers after [`DELAY`].
#[derive(Clone, Default)]
struct Recorder {
    arrivals: Arc<Mutex<Vec<(String, Instant)>>>,
}

impl Respond for Recorder {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let account = request
            .headers
            .get("x-account")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.arrivals
            .lock()
            .unwrap()
            .push((account, Instant::now()));
        ResponseTemplate::new(200).set_delay(DELAY)
    }
}

#[derive(Clone)]
struct Downstream {
    client: reqwest::Client,
    url: String,
}

async fn charge(State(down): State<Downstream>, Path(id): Path<String>) -> StatusCode {
    match down
        .client
        .post(&down.url)
        .header("x-account", id)
        .send()
        .await
    {
        Ok(response) if response.status().is_success() => StatusCode::OK,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// 3 accounts × 6 concurrent charges. A call for an account leaves the handler only once the
/// downstream has answered it, `DELAY` after its arrival, so with the lock the next call for
/// that account cannot arrive sooner than `DELAY` after the previous one. Both instants are read
/// on this process's monotonic clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_sees_one_call_per_key_at_a_time() {
    let cluster = nodes().await;
    let mock = MockServer::start().await;
    let recorder = Recorder::default();
    Mock::given(matchers::method("POST"))
        .and(matchers::path("/charge"))
        .respond_with(recorder.clone())
        .expect(18)
        .mount(&mock)
        .await;

    let layer = RequestLockLayer::new(
        redlock(&cluster, Duration::from_secs(5)),
        KeyFromPath::new("/accounts/{id}/charge", "account:{id}").unwrap(),
    )
    .wait(Duration::from_secs(20));
    let app = Router::new()
        .route("/accounts/{id}/charge", post(charge))
        .route_layer(layer)
        .with_state(Downstream {
            client: reqwest::Client::new(),
            url: format!("{}/charge", mock.uri()),
        });
    let base = serve(app).await;
    let client = reqwest::Client::new();
    let responses = join_all((0..18).map(|i| {
        client
            .post(format!("{base}/accounts/{}/charge", i % 3))
            .send()
    }))
    .await;
    for response in responses {
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }

    let mut per_account: HashMap<String, Vec<Instant>> = HashMap::new();
    for (account, at) in recorder.arrivals.lock().unwrap().iter() {
        per_account.entry(account.clone()).or_default().push(*at);
    }
    assert_eq!(per_account.len(), 3);
    for (account, mut arrivals) in per_account {
        assert_eq!(arrivals.len(), 6, "account {account}");
        arrivals.sort();
        for pair in arrivals.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= DELAY,
                "account {account}: a call arrived {gap:?} after the previous one, still in flight"
            );
        }
    }
    mock.verify().await;
}
