//! A fleet of apalis workers sharing one apalis-redis queue, each job guarded by redlock-apalis:
//! the producer pushes every invoice job once and a third of them a second time, and the report
//! at the end shows that each invoice was processed exactly once, never by two workers at the
//! same time.
//!
//! Run with
//!
//! ```not_rust
//! cargo run -p redlock-examples --example apalis_fleet
//! ```
//!
//! Without `REDLOCK_NODES` the example starts three local `redis-server` lock nodes and a fourth
//! one for the queue, on free ports, and stops them when it ends. Against your own nodes:
//!
//! ```not_rust
//! docker compose up -d
//! REDLOCK_NODES=redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003 \
//! REDLOCK_QUEUE=redis://127.0.0.1:7004 \
//!     cargo run -p redlock-examples --example apalis_fleet
//! ```
//!
//! `REDLOCK_QUEUE` is the queue's Redis (a local one is started when it is unset). It finishes on
//! its own in a few seconds; ctrl-c stops the workers early. `RUST_LOG=redlock_apalis=debug`
//! shows every guard decision.

use std::{
    collections::{BTreeMap, HashMap},
    error::Error,
    io::IsTerminal,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use apalis::prelude::*;
use apalis_redis::{Config, RedisStorage};
use redlock_apalis::{CompletionMarkers, JobLockConfig, JobLockExt, JobLocked};
use redlock_core::{RedlockBuilder, RedlockConfig, redis};
use redlock_tests::{Cluster, RedisNode};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

const WORKERS: usize = 4;
const INVOICES: u64 = 150;
/// Every third invoice is pushed twice, as a client retrying a timed-out request would.
const DUPLICATE_EVERY: u64 = 3;
/// The example gives up waiting after this long, so it always ends by itself.
const DEADLINE: Duration = Duration::from_secs(25);

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SendInvoice {
    invoice: u64,
    amount_cents: u64,
}

/// What the handlers did, for the report.
#[derive(Debug, Default)]
struct Ledger {
    /// Invoice -> worker processing it right now. Finding an entry on entry is an overlap.
    in_flight: Mutex<HashMap<u64, String>>,
    /// Invoice -> completed runs.
    runs: Mutex<BTreeMap<u64, usize>>,
    overlaps: AtomicUsize,
    /// Deliveries refused because another worker held the invoice.
    refused: AtomicUsize,
}

/// The job: "send" the invoice. The guard runs it at most once per invoice, fleet-wide.
async fn send_invoice(
    job: SendInvoice,
    ledger: Data<Arc<Ledger>>,
    worker: WorkerContext,
) -> Result<(), BoxDynError> {
    {
        let mut in_flight = ledger.in_flight.lock().map_err(|_| "ledger poisoned")?;
        if let Some(other) = in_flight.insert(job.invoice, worker.name().to_owned()) {
            warn!(invoice = job.invoice, %other, "two workers on one invoice");
            ledger.overlaps.fetch_add(1, Ordering::SeqCst);
        }
    }
    // The "email": long enough for a duplicate to arrive while the original runs.
    tokio::time::sleep(Duration::from_millis(20 + job.amount_cents % 40)).await;
    ledger
        .in_flight
        .lock()
        .map_err(|_| "ledger poisoned")?
        .remove(&job.invoice);
    *ledger
        .runs
        .lock()
        .map_err(|_| "ledger poisoned")?
        .entry(job.invoice)
        .or_default() += 1;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("apalis_fleet=info,redlock_apalis=info")),
        )
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_ansi(std::io::stdout().is_terminal())
        .init();

    // Lock nodes (also the completion-marker nodes) and the queue node. The local servers live
    // until the end of `main`; dropping them kills them.
    let (nodes, _cluster) = match RedlockConfig::from_env() {
        Ok(config) => {
            info!("using {} lock nodes from REDLOCK_NODES", config.nodes.len());
            (config, None)
        }
        Err(redlock_core::Error::NoNodes) => {
            let cluster = tokio::task::spawn_blocking(|| Cluster::start(3)).await??;
            info!("REDLOCK_NODES is unset: started 3 local lock nodes");
            let mut config = RedlockConfig::default();
            config.nodes = cluster.urls();
            config.ttl = Duration::from_secs(2);
            config.node_timeout = Duration::from_millis(50);
            (config, Some(cluster))
        }
        Err(e) => return Err(e.into()),
    };
    let (queue_url, _queue_node) = match std::env::var("REDLOCK_QUEUE") {
        Ok(url) => (url, None),
        Err(_) => {
            let node = tokio::task::spawn_blocking(RedisNode::start).await??;
            info!("REDLOCK_QUEUE is unset: started a local queue node");
            (node.url(), Some(node))
        }
    };
    let redlock = RedlockBuilder::from_config(nodes.clone()).build()?;
    let markers = CompletionMarkers::from_config(&nodes)?;

    // A queue and a lock namespace of their own per run: a rerun against the same nodes would
    // otherwise find every invoice already marked done (for the 24 h dedup window) and skip it.
    let started = Instant::now();
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let config = Config::default()
        .queue(format!("apalis-fleet:{run}"))
        .batch_size(2);
    let ledger = Arc::new(Ledger::default());

    let (stop, stopped) = watch::channel(false);
    let mut workers = Vec::new();
    for i in 0..WORKERS {
        // Each worker has its own queue connection, as separate processes would.
        let storage = RedisStorage::<SendInvoice>::new(apalis_redis::connect(&*queue_url).await?)
            .with_config(config.clone());
        let guarded = send_invoice.lock_jobs_with(
            redlock.clone(),
            markers.clone(),
            JobLockConfig::new()
                .namespace(format!("apalis-fleet:{run}:"))
                .key_fn(|job: &SendInvoice| format!("invoice:{}", job.invoice)),
        );
        let counted = ledger.clone();
        let worker = WorkerBuilder::new(format!("fleet-{}-w{i}", std::process::id()))
            .backend(storage.poll_with_interval(Duration::from_millis(50)))
            .data(ledger.clone())
            .retry(RetryPolicy::retries(2).retry_if(redlock_apalis::not_locked))
            .on_event(move |_, event| {
                if let Event::Error(e) = event
                    && e.downcast_ref::<JobLocked>().is_some()
                {
                    counted.refused.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build(guarded);
        let stopped = stopped.clone();
        workers.push(tokio::spawn(worker.run_with_ctx(move |ctx| {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
                ctx.stop()
            }
        })));
    }

    // Each invoice once, and every third one again right behind it.
    let jobs: Vec<SendInvoice> = (0..INVOICES)
        .flat_map(|invoice| {
            let job = SendInvoice {
                invoice,
                amount_cents: invoice * 137 % 10_000,
            };
            let copies = if invoice % DUPLICATE_EVERY == 0 { 2 } else { 1 };
            std::iter::repeat_n(job, copies)
        })
        .collect();
    let pushed = jobs.len();
    let mut producer = RedisStorage::<SendInvoice>::new(apalis_redis::connect(&*queue_url).await?)
        .with_config(config.clone());
    producer.push_bulk(jobs).await?;
    info!(
        pushed,
        invoices = INVOICES,
        workers = WORKERS,
        "jobs pushed"
    );

    // Done when every pushed job is acknowledged (run once, or skipped as already done).
    let mut queue = apalis_redis::connect(&*queue_url).await?;
    let done_set = config.done_jobs_set();
    let all_done = async {
        loop {
            let done: usize = redis::cmd("SCARD")
                .arg(&done_set)
                .query_async(&mut queue)
                .await?;
            if done >= pushed {
                return Ok::<_, redis::RedisError>(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        finished = tokio::time::timeout(DEADLINE, all_done) => match finished {
            Ok(result) => result?,
            Err(_) => warn!("not every job was acknowledged within {DEADLINE:?}"),
        },
        _ = tokio::signal::ctrl_c() => warn!("ctrl-c: stopping the workers"),
    }
    let wall = started.elapsed();

    // Graceful stop: each worker finishes what it runs and hands back what it prefetched.
    stop.send_replace(true);
    for worker in workers {
        match tokio::time::timeout(Duration::from_secs(5), worker).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "worker ended with an error"),
            Ok(Err(e)) => warn!(error = %e, "worker task failed"),
            Err(_) => warn!("a worker did not stop within 5 s"),
        }
    }

    let runs = ledger.runs.lock().map_err(|_| "ledger poisoned")?.clone();
    let executions: usize = runs.values().sum();
    let mut histogram = BTreeMap::<usize, usize>::new();
    for count in runs.values() {
        *histogram.entry(*count).or_default() += 1;
    }
    let overlaps = ledger.overlaps.load(Ordering::SeqCst);
    println!();
    println!("jobs pushed            {pushed}");
    println!("unique keys            {INVOICES}");
    println!("keys completed         {}", runs.len());
    println!("executions             {executions}");
    for (count, keys) in &histogram {
        println!("  keys run {count} time(s)   {keys}");
    }
    println!(
        "skipped as done        {}",
        pushed.saturating_sub(executions)
    );
    println!(
        "refused while held     {} (rescheduled by apalis-redis)",
        ledger.refused.load(Ordering::Relaxed)
    );
    println!("overlaps               {overlaps}");
    println!("wall time              {wall:.2?}");
    let once = runs.len() as u64 == INVOICES && histogram.keys().all(|count| *count == 1);
    if once && overlaps == 0 {
        println!("\nevery invoice was sent exactly once, by one worker at a time");
        Ok(())
    } else {
        Err("some invoice was not sent exactly once".into())
    }
}
