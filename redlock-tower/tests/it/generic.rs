//! Requests that are not HTTP, and the readiness contract of wait mode, through plain tower.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http::{Request, Response, StatusCode};
use redlock_tower::{BoxError, KeyFromHeader, Rejection, RequestLockLayer};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

use crate::{Gate, PATIENCE, nodes, redlock};

struct Job {
    order: u64,
}

/// Contention and unavailability come back as a `BoxError` holding a `Rejection`; the inner
/// service's own errors pass through as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_http_rejection_is_a_downcastable_error() {
    let cluster = nodes().await;
    let redlock = redlock(&cluster, Duration::from_secs(5));
    let service = ServiceBuilder::new()
        .layer(
            RequestLockLayer::new(redlock.clone(), |job: &Job| {
                Some(format!("order:{}", job.order))
            })
            .rejections_as_errors(),
        )
        .service_fn(|job: Job| async move {
            match job.order {
                0 => Err::<u64, BoxError>("boom".into()),
                order => Ok(order),
            }
        });

    let held = redlock.try_lock("order:1").await.unwrap().unwrap();
    let error = service.clone().oneshot(Job { order: 1 }).await.unwrap_err();
    let rejection = error.downcast_ref::<Rejection>().expect("a Rejection");
    assert!(rejection.is_contended());
    assert_eq!(rejection.resource(), "order:1");
    assert_eq!(service.clone().oneshot(Job { order: 2 }).await.unwrap(), 2);
    held.release().await.unwrap();
    assert_eq!(service.clone().oneshot(Job { order: 1 }).await.unwrap(), 1);

    let error = service.clone().oneshot(Job { order: 0 }).await.unwrap_err();
    assert!(error.downcast_ref::<Rejection>().is_none());
    assert_eq!(error.to_string(), "boom");

    cluster[0].kill().unwrap();
    cluster[1].kill().unwrap();
    let error = service.oneshot(Job { order: 1 }).await.unwrap_err();
    match error.downcast_ref::<Rejection>() {
        Some(Rejection::Unavailable { source, .. }) => assert!(source.is_unavailable()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// With a concurrency limit of 2 inside the lock layer: A holds account 1 and one permit,
/// parked. B, for account 1 too, has passed `poll_ready` and is waiting for the lock. C, for
/// account 2, must still get the second permit and finish while A is parked: B's wait holds
/// no permit. (Had `poll_ready` been delegated, B would hold the second permit and C would
/// block until A finished.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_requests_do_not_hold_inner_readiness() {
    let cluster = nodes().await;
    let gate = Gate::new();
    let handler_gate = gate.clone();
    let service = ServiceBuilder::new()
        .layer(
            RequestLockLayer::new(
                redlock(&cluster, Duration::from_secs(5)),
                KeyFromHeader::new("x-account-id").unwrap(),
            )
            .wait(Duration::from_secs(20)),
        )
        .concurrency_limit(2)
        .service(service_fn(move |request: Request<String>| {
            let gate = Arc::clone(&handler_gate);
            async move {
                if request.headers()["x-account-id"] == "1" {
                    gate.pass().await;
                }
                Ok::<_, Infallible>(Response::new(String::from("ok")))
            }
        }));
    let request = |account: &str| {
        Request::post("/")
            .header("x-account-id", account)
            .body(String::new())
            .unwrap()
    };

    let a = tokio::spawn(service.clone().oneshot(request("1")));
    gate.entered().await;
    let mut b_service = service.clone();
    b_service.ready().await.unwrap();
    let b = tokio::spawn(b_service.call(request("1")));
    let c = tokio::time::timeout(PATIENCE, service.clone().oneshot(request("2")))
        .await
        .expect("C was not blocked by B's wait")
        .unwrap();
    assert_eq!(c.status(), StatusCode::OK);
    assert!(!a.is_finished() && !b.is_finished());

    gate.open();
    assert_eq!(a.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(b.await.unwrap().unwrap().status(), StatusCode::OK);
}
