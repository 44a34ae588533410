//! `RequestLockLayer` in a plain `tower::ServiceBuilder` stack, for requests that are not HTTP:
//! a payment worker that receives each charge several times (at-least-once delivery) and must
//! charge each order once.
//!
//! Run with
//!
//! ```not_rust
//! cargo run -p redlock-examples --example tower_stack
//! ```
//!
//! The stack, outermost first:
//!
//! 1. `timeout(2 s)` bounds everything below, the wait for the lock included;
//! 2. `RequestLockLayer` locks `order:{id}`, waiting up to 1 s for it, and (with
//!    `rejections_as_errors`) reports refusals as a `BoxError` holding a `Rejection`;
//! 3. `concurrency_limit(4)` sits inside the lock, so a permit is only taken once the lock is
//!    held: requests queueing for a busy order do not starve the others (the lock layer's
//!    `poll_ready` is always ready in wait mode);
//! 4. the `service_fn` checks whether the order was already charged, "calls the payment
//!    provider", and records the charge: a check-then-act that is only safe under the lock.
//!
//! Without `REDLOCK_NODES` it starts three local `redis-server` nodes through the test harness.
//! `RUST_LOG=redlock_tower=debug` shows every acquisition and release.

use std::{
    collections::HashSet,
    error::Error,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::future::join_all;
use redlock_core::{Redlock, Retry};
use redlock_tests::Cluster;
use redlock_tower::{BoxError, Rejection, RequestLockLayer};
use tower::{ServiceBuilder, ServiceExt};
use tracing::info;
use tracing_subscriber::EnvFilter;

/// One delivery of a charge.
#[derive(Clone, Copy, Debug)]
struct Charge {
    order: u64,
    delivery: u32,
}

/// What the worker did with a delivery.
#[derive(Debug, PartialEq)]
enum Outcome {
    Charged,
    AlreadyCharged,
}

const ORDERS: u64 = 4;
const DELIVERIES: u32 = 5;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("tower_stack=info,redlock_tower=info")),
        )
        .with_target(false)
        .init();

    // `_cluster` keeps the local nodes alive until the end of `main`; dropping it kills them.
    let (redlock, _cluster) = match Redlock::from_env() {
        Ok(redlock) => (redlock, None),
        Err(redlock_core::Error::NoNodes) => {
            let cluster = tokio::task::spawn_blocking(|| Cluster::start(3)).await??;
            info!("REDLOCK_NODES is unset: started 3 local redis-server nodes");
            let redlock = Redlock::builder()
                .nodes(cluster.urls())
                .ttl(Duration::from_secs(5))
                .node_timeout(Duration::from_millis(50))
                .retry(Retry::none())
                .build()?;
            (redlock, Some(cluster))
        }
        Err(error) => return Err(error.into()),
    };

    tokio::select! {
        result = run(redlock) => result,
        signal = tokio::signal::ctrl_c() => {
            signal?;
            info!("ctrl-c: stopping");
            Ok(())
        }
    }
}

async fn run(redlock: Redlock) -> Result<(), Box<dyn Error>> {
    let charged: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let worker = {
        let charged = charged.clone();
        move |charge: Charge| {
            let charged = charged.clone();
            async move {
                if charged
                    .lock()
                    .map_err(|e| e.to_string())?
                    .contains(&charge.order)
                {
                    return Ok::<_, BoxError>(Outcome::AlreadyCharged);
                }
                // The payment provider's round trip: the window in which a duplicate delivery
                // would charge again if nothing serialised them.
                tokio::time::sleep(Duration::from_millis(20)).await;
                charged
                    .lock()
                    .map_err(|e| e.to_string())?
                    .insert(charge.order);
                Ok(Outcome::Charged)
            }
        }
    };
    let service = ServiceBuilder::new()
        .timeout(Duration::from_secs(2))
        .layer(
            RequestLockLayer::new(redlock.clone(), |charge: &Charge| {
                Some(format!("order:{}", charge.order))
            })
            .wait(Duration::from_secs(1))
            .rejections_as_errors(),
        )
        .concurrency_limit(4)
        .service_fn(worker);

    let deliveries = (1..=ORDERS)
        .flat_map(|order| (1..=DELIVERIES).map(move |delivery| Charge { order, delivery }));
    let results = join_all(deliveries.map(|charge| {
        let service = service.clone();
        async move { (charge, service.oneshot(charge).await) }
    }))
    .await;
    for order in 1..=ORDERS {
        let of_order = results.iter().filter(|(c, _)| c.order == order);
        let charged_by: Vec<u32> = of_order
            .clone()
            .filter(|(_, r)| matches!(r, Ok(Outcome::Charged)))
            .map(|(c, _)| c.delivery)
            .collect();
        let skipped = of_order
            .filter(|(_, r)| matches!(r, Ok(Outcome::AlreadyCharged)))
            .count();
        info!("order {order}: charged by delivery {charged_by:?}, {skipped} duplicates skipped");
        if charged_by.len() != 1 {
            return Err(format!("order {order} was charged {} times", charged_by.len()).into());
        }
    }

    // An order someone else is working on: the delivery waits 1 s for the lock, then gives up
    // with a `Rejection` that the caller can tell apart from the worker's own errors.
    let held = redlock.lock("order:99").await?;
    let busy = Charge {
        order: 99,
        delivery: 1,
    };
    match service.oneshot(busy).await {
        Err(error) => match error.downcast_ref::<Rejection>() {
            Some(rejection) if rejection.is_contended() => info!(
                "{busy:?} refused: {rejection}; retry in {:?}",
                rejection.retry_after()
            ),
            _ => return Err(error),
        },
        Ok(outcome) => return Err(format!("order 99 was processed while held: {outcome:?}").into()),
    }
    held.release().await?;
    Ok(())
}
