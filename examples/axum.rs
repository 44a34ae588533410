//! A bank API whose withdrawals are serialised per account across replicas with
//! `redlock_tower::RequestLockLayer`.
//!
//! Run with
//!
//! ```not_rust
//! cargo run -p redlock-examples --example axum
//! ```
//!
//! It starts two replicas of the service (two routers on two ports, each with its own Redlock
//! client, as two processes would have) against the same nodes, fires 40 concurrent withdrawals
//! of 10 at each of two accounts holding 100, alternating between the replicas, and checks that
//! exactly 10 succeeded per account and that no balance went below zero. For contrast it then
//! does the same on a route without the layer. Without `REDLOCK_NODES` it starts three local
//! `redis-server` nodes through the test harness, and stops them at the end.
//!
//! The balances live in the first node under `bank:balance:{id}`: a plain key that stands for
//! the bank's database, shared by every replica (it is not part of the lock). Each withdrawal
//! reads the balance, pauses for a "fraud check", then decrements it if the funds sufficed:
//! without the lock, concurrent withdrawals all pass the check and the balance goes negative.
//!
//! To run real replicas as separate processes, start nodes (`docker compose up -d`), then in two
//! terminals:
//!
//! ```not_rust
//! export REDLOCK_NODES=redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003
//! cargo run -p redlock-examples --example axum -- --serve 127.0.0.1:3000
//! cargo run -p redlock-examples --example axum -- --serve 127.0.0.1:3001
//! ```
//!
//! and withdraw from both at once:
//!
//! ```not_rust
//! for i in $(seq 20); do
//!     curl -s -XPOST localhost:300$((i % 2))/accounts/1/withdraw & done; wait
//! ```
//!
//! `--serve` sets account 1 to 100 at startup and runs until ctrl-c. `RUST_LOG=redlock_tower=debug`
//! shows every acquisition and release.

use std::{error::Error, net::SocketAddr, time::Duration};

use axum::{
    Extension, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::post,
};
use futures_util::future::join_all;
use redlock_core::{
    Redlock, Retry,
    redis::{self, AsyncCommands, aio::MultiplexedConnection},
};
use redlock_tests::Cluster;
use redlock_tower::{KeyFromPath, LockInfo, RequestLockLayer};
use tracing::info;
use tracing_subscriber::EnvFilter;

const AMOUNT: i64 = 10;
const OPENING_BALANCE: i64 = 100;
const REQUESTS_PER_ACCOUNT: usize = 40;
/// The pause between reading and writing a balance, where unserialised withdrawals race.
const FRAUD_CHECK: Duration = Duration::from_millis(5);

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("axum=info,redlock_tower=info")),
        )
        .with_target(false)
        .init();

    let serve_addr = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => None,
        [flag, addr] if flag == "--serve" => Some(addr.parse::<SocketAddr>()?),
        _ => return Err("usage: axum [--serve <addr:port>]".into()),
    };

    // `_cluster` keeps the local nodes alive until the end of `main`; dropping it kills them.
    let (urls, _cluster) = match std::env::var("REDLOCK_NODES") {
        Ok(nodes) if !nodes.trim().is_empty() => {
            let urls: Vec<String> = nodes.split(',').map(|u| u.trim().to_owned()).collect();
            info!("using {} nodes from REDLOCK_NODES", urls.len());
            (urls, None)
        }
        _ => {
            let cluster = tokio::task::spawn_blocking(|| Cluster::start(3)).await??;
            info!("REDLOCK_NODES is unset: started 3 local redis-server nodes");
            (cluster.urls(), Some(cluster))
        }
    };
    let store_url = urls.first().ok_or("no nodes")?.clone();

    match serve_addr {
        Some(addr) => serve_until_ctrl_c(addr, &urls, &store_url).await,
        None => tokio::select! {
            result = two_replicas(&urls, &store_url) => result,
            signal = tokio::signal::ctrl_c() => {
                signal?;
                info!("ctrl-c: stopping");
                Ok(())
            }
        },
    }
}

/// One replica: its own Redlock client (as a separate process would have) and its router.
fn replica(urls: &[String], store: MultiplexedConnection) -> Result<Router, Box<dyn Error>> {
    let redlock = Redlock::builder()
        .nodes(urls.iter().cloned())
        .ttl(Duration::from_secs(5))
        .node_timeout(Duration::from_millis(50))
        .retry(Retry::none())
        .fencing(true)
        .build()?;
    let lock = RequestLockLayer::new(
        redlock,
        KeyFromPath::new("/accounts/{id}/withdraw", "account:{id}")?,
    )
    // Queue for the account for up to 5 s, then answer 409 with Retry-After.
    .wait(Duration::from_secs(5));
    Ok(Router::new()
        .route("/accounts/{id}/withdraw", post(withdraw))
        .route_layer(lock)
        // The same handler without the lock, to show what the lock prevents.
        .route("/unlocked/accounts/{id}/withdraw", post(withdraw_unlocked))
        .with_state(store))
}

/// Reads the balance, checks it, writes it back: safe only while no one else does the same for
/// this account, which the layer guarantees across replicas.
async fn withdraw(
    State(store): State<MultiplexedConnection>,
    Path(id): Path<u64>,
    Extension(lock): Extension<LockInfo>,
) -> (StatusCode, String) {
    let token = lock.fencing_token().map_or(0, |t| t.get());
    match debit(store, id).await {
        Ok(Some(balance)) => (
            StatusCode::OK,
            format!(
                "withdrew {AMOUNT} from account {id} under fencing token {token}: balance {balance}\n"
            ),
        ),
        Ok(None) => (
            StatusCode::PAYMENT_REQUIRED,
            "insufficient funds\n".to_owned(),
        ),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

async fn withdraw_unlocked(
    State(store): State<MultiplexedConnection>,
    Path(id): Path<u64>,
) -> (StatusCode, String) {
    match debit(store, id).await {
        Ok(Some(balance)) => (StatusCode::OK, format!("balance {balance}\n")),
        Ok(None) => (
            StatusCode::PAYMENT_REQUIRED,
            "insufficient funds\n".to_owned(),
        ),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

/// The new balance, or `None` when the funds are insufficient. Check, pause, then act: the
/// decrement itself is atomic, but the check is stale by the time it runs unless no one else
/// withdraws from this account meanwhile.
async fn debit(mut store: MultiplexedConnection, id: u64) -> redis::RedisResult<Option<i64>> {
    let key = format!("bank:balance:{id}");
    let balance: i64 = store.get::<_, Option<i64>>(&key).await?.unwrap_or(0);
    tokio::time::sleep(FRAUD_CHECK).await;
    if balance < AMOUNT {
        return Ok(None);
    }
    store.decr(&key, AMOUNT).await.map(Some)
}

async fn store(url: &str) -> Result<MultiplexedConnection, Box<dyn Error>> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

async fn open_accounts(store: &mut MultiplexedConnection, ids: &[u64]) -> redis::RedisResult<()> {
    for id in ids {
        let _: () = store
            .set(format!("bank:balance:{id}"), OPENING_BALANCE)
            .await?;
    }
    Ok(())
}

/// Serves `router` on `addr` (port 0 for a free one) in the background; returns its base URL.
async fn spawn_server(addr: SocketAddr, router: Router) -> Result<String, Box<dyn Error>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(url)
}

async fn two_replicas(urls: &[String], store_url: &str) -> Result<(), Box<dyn Error>> {
    let mut bank = store(store_url).await?;
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let a = spawn_server(any, replica(urls, bank.clone())?).await?;
    let b = spawn_server(any, replica(urls, bank.clone())?).await?;
    info!("replica A on {a}, replica B on {b}");

    let client = reqwest::Client::new();
    let accounts = [1, 2];
    let replicas = [a.as_str(), b.as_str()];
    for (prefix, locked) in [("", true), ("/unlocked", false)] {
        open_accounts(&mut bank, &accounts).await?;
        let requests = accounts
            .iter()
            .flat_map(|&id| (0..REQUESTS_PER_ACCOUNT).map(move |i| (id, replicas[i % 2])));
        let responses = join_all(requests.map(|(id, base)| {
            let request = client
                .post(format!("{base}{prefix}/accounts/{id}/withdraw"))
                .send();
            async move { (id, request.await) }
        }))
        .await;

        let label = if locked {
            "with the lock"
        } else {
            "WITHOUT the lock"
        };
        let mut failures = Vec::new();
        for id in accounts {
            let paid = responses
                .iter()
                .filter(|(account, r)| {
                    *account == id && r.as_ref().is_ok_and(|r| r.status() == StatusCode::OK)
                })
                .count();
            let balance: i64 = bank.get(format!("bank:balance:{id}")).await?;
            let paid_out = i64::try_from(paid)? * AMOUNT;
            info!(
                "{label}: account {id} paid out {paid_out} of {OPENING_BALANCE} in {paid} \
                 withdrawals, balance {balance}"
            );
            if paid_out != OPENING_BALANCE || balance != 0 {
                failures.push(id);
            }
        }
        match (locked, failures.is_empty()) {
            (true, true) => info!(
                "with the lock: exactly {OPENING_BALANCE} paid out per account, no balance below \
                 zero, across both replicas"
            ),
            (true, false) => {
                return Err(format!("double withdrawals despite the lock: {failures:?}").into());
            }
            (false, true) => info!("without the lock: no race this time (it is timing-dependent)"),
            (false, false) => info!(
                "without the lock: more paid out than the accounts held; that is the race the \
                 layer prevents"
            ),
        }
    }
    Ok(())
}

async fn serve_until_ctrl_c(
    addr: SocketAddr,
    urls: &[String],
    store_url: &str,
) -> Result<(), Box<dyn Error>> {
    let mut bank = store(store_url).await?;
    open_accounts(&mut bank, &[1]).await?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!("serving on http://{}; ctrl-c stops", listener.local_addr()?);
    axum::serve(listener, replica(urls, bank)?)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
