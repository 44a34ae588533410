//! Throughput, latency, fairness and held-lock cost of redlock-core, measured in the same run
//! against the *floor*: a bare redis-rs client that sends only what a Redlock must send
//! (DESIGN.md §7). See `docs/performance.md` for what each row measures and a reference run.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --release -p redlock-examples --example bench
//! cargo run --release -p redlock-examples --example bench -- --rows A,C --secs 5 --rounds 3 --json bench.jsonl
//! ```
//!
//! Without `REDLOCK_NODES` it starts three local `redis-server` nodes on free ports through the
//! test harness, and stops them when it ends (or on ctrl-c). With `REDLOCK_NODES` it uses those
//! nodes; give it dedicated ones, since every row checks that no `redlock:bench:*` key is left.
//!
//! Options:
//!
//! - `--rows A,Ai,B,Bi,C,Ci,Cf,E,D` rows to run (default all): A one client, sequential; B 32
//!   and 256 tasks on distinct keys; C 32 tasks contending for one key (`C1` or `C32` alone runs
//!   one of its two rows); Ai, Bi (B32i, B256i) and Ci (C32i) the same with the clients taking
//!   turns in short bursts within one run; Cf (C32f) row C32 while the nodes are paused in turn
//!   (on the bench's own nodes only); E two processes colliding on a free key, how long after the
//!   winner's release the loser holds it; D 10,000 auto-extended locks held at once.
//! - `--secs N` measured seconds per row and client (default 3), after `--warmup N` (default 0.5).
//! - `--rounds R` repeat every row R times and report medians (default 1).
//! - `--hold-locks N`, `--hold-secs N`, `--hold-ttl-ms N` shape row D (defaults 10000, 30, 3000).
//! - `--node-timeout-ms N` our client's per-node timeout (default: the library's, 100 ms).
//! - `--hold-here` run row D in this process rather than in a fresh child process per client and
//!   round (which the bench starts with this flag and `REDLOCK_NODES` set to its nodes).
//! - `--clients ours,floor,floor-q,ping-q` which clients to run (default all; one alone is handy
//!   under a profiler such as `perf record`). `floor-q` is the floor deciding at the quorum, the
//!   best any Redlock client can do; it runs in rows A, Ai and B, and its ratio to the floor is
//!   printed in parentheses. `ping-q` (row Ai only) is two quorum rounds of `PING`: the round
//!   trips of a cycle without its commands, the bound of row A on these nodes.
//! - `--json PATH` write one JSON object per row to PATH; without it they go to stdout, each
//!   line prefixed with `json `.
//!
//! `RUST_LOG` sets the log filter (default `warn`: the hot path logs at `debug`).

use std::{
    collections::BTreeMap,
    error::Error,
    fmt::Write as _,
    fs,
    io::Write as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{FutureExt, StreamExt, future::join_all, stream::FuturesUnordered};
use redlock_core::{
    AutoExtend, Lock, Redlock, Retry,
    redis::{self, AsyncConnectionConfig, aio::MultiplexedConnection},
};
use redlock_tests::Cluster;
use serde_json::json;
use tokio::{sync::Mutex, task::JoinSet};
use tracing_subscriber::EnvFilter;

type BoxError = Box<dyn Error + Send + Sync>;

/// Every key both clients write starts with this, so leftovers are easy to find and remove.
const PREFIX: &str = "redlock:";
const BENCH_PATTERN: &str = "redlock:bench:*";
/// Lease of rows A to C: long enough that no lock expires during a measurement.
const TTL: Duration = Duration::from_secs(10);
/// Upper bound on the cycles of one task in one row, so that every loop ends by count as well
/// as by time.
const MAX_CYCLES: u64 = 10_000_000;
/// Concurrency used to take and release the locks of row D.
const HOLD_WORKERS: usize = 64;
/// Length of one client's turn in row Ai; rows Bi take [`BURST_MANY`].
const BURST: Duration = Duration::from_millis(20);
/// Length of one client's turn in rows B32i and B256i: long enough that starting and draining
/// the tasks is a small part of it.
const BURST_MANY: Duration = Duration::from_millis(100);
/// Length of one client's turn in row C32i: long enough that starting the contenders (joining
/// the queue, subscribing) and dropping the waiters at its end are a small part of it (200 ms
/// gave ours 1.01× where 500 ms gave 1.10×, ten rounds each).
const BURST_CONTENDED: Duration = Duration::from_millis(500);
/// Tasks contending in row C.
const CONTENDERS: usize = 32;
/// Row C32f's faults: one node after the other is paused for [`FAULT_PAUSE`] every
/// [`FAULT_EVERY`], the key's sequencer node in its turn.
const FAULT_EVERY: Duration = Duration::from_millis(1000);
const FAULT_PAUSE: Duration = Duration::from_millis(300);
/// Row C retry pause, for ours and the floor alike: 5 ms plus up to 5 ms of jitter.
const POLL_DELAY: Duration = Duration::from_millis(5);
/// Row E: how long the winner of a collision holds the key.
const COLLISION_HOLD: Duration = Duration::from_millis(20);
/// Row E: how long a collision's loser waits before it counts as an error.
const COLLISION_GIVE_UP: Duration = Duration::from_secs(2);
/// /proc/self/stat counts CPU time in clock ticks of 1/USER_HZ s; USER_HZ is 100 on Linux.
const CLOCK_TICKS_PER_SEC: u64 = 100;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Some(args) = Args::parse(std::env::args().skip(1))? else {
        return Ok(());
    };

    // `cluster` keeps the local nodes alive until the end of `main`; dropping it kills them.
    let (urls, cluster) = match std::env::var("REDLOCK_NODES") {
        Ok(nodes) if !nodes.trim().is_empty() => (
            nodes
                .split(',')
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect::<Vec<_>>(),
            None,
        ),
        _ => {
            let cluster = tokio::task::spawn_blocking(|| Cluster::start(3)).await??;
            (cluster.urls(), Some(cluster))
        }
    };

    let outcome = tokio::select! {
        outcome = run(&args, &urls, cluster.as_ref()) => outcome,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted: stopping the nodes");
            Ok(())
        }
    };
    drop(cluster);
    outcome.map_err(|e| e as Box<dyn Error>)
}

async fn run(args: &Args, urls: &[String], cluster: Option<&Cluster>) -> Result<(), BoxError> {
    let own_nodes = cluster.is_some();
    let floor = Floor::connect(urls).await?;
    let version = floor
        .server_version()
        .await
        .unwrap_or_else(|| "?".to_owned());
    println!(
        "# {} nodes ({}, redis {version}), {} cores, tokio multi-thread runtime with 2 workers",
        urls.len(),
        if own_nodes {
            "local, started by the harness"
        } else {
            "REDLOCK_NODES"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "# {} s per row and client after a {} s warm-up, {} round(s), medians",
        args.secs.as_secs_f64(),
        args.warmup.as_secs_f64(),
        args.rounds
    );
    println!("# load average at start: {}", load_average());
    let before = floor.leftovers(own_nodes).await?;
    if before > 0 {
        return Err(format!(
            "the nodes already hold {before} keys: the leftover check needs them empty"
        )
        .into());
    }

    let builder = || {
        let builder = Redlock::builder().nodes(urls).ttl(TTL);
        match args.node_timeout {
            Some(timeout) => builder.node_timeout(timeout),
            None => builder,
        }
    };
    let ours = builder().build()?;
    // Row C retries effectively forever, like the floor's polling loop; the row's end stops it.
    let forever = Retry::new(u32::MAX, POLL_DELAY, POLL_DELAY);
    let ours_contended = builder().retry(forever).build()?;
    let ours_hold = builder().ttl(args.hold_ttl).build()?;
    // Row C32: one client per task, as 32 processes would be (own connections, own queues).
    let (mut ours_apart, mut floors_apart) = (Vec::new(), Vec::new());
    if args
        .rows
        .iter()
        .any(|r| ["C", "C32", "CI", "CF", "E"].contains(&r.as_str()))
    {
        for _ in 0..CONTENDERS {
            ours_apart.push(Client::Ours(builder().retry(forever).build()?));
            floors_apart.push(Client::Floor(Floor::connect(urls).await?));
        }
    }

    let mut rows: Vec<Row> = Vec::new();
    for id in &args.rows {
        match id.as_str() {
            "A" => rows.push(Row::Throughput { id: "A", tasks: 1 }),
            "AI" => rows.push(Row::Interleaved { id: "Ai", tasks: 1 }),
            "BI" => {
                rows.push(Row::Interleaved {
                    id: "B32i",
                    tasks: 32,
                });
                rows.push(Row::Interleaved {
                    id: "B256i",
                    tasks: 256,
                });
            }
            "B" => {
                rows.push(Row::Throughput {
                    id: "B32",
                    tasks: 32,
                });
                rows.push(Row::Throughput {
                    id: "B256",
                    tasks: 256,
                });
            }
            "C" => {
                rows.push(Row::Contended {
                    id: "C1",
                    clients: 1,
                    turns: false,
                    faults: false,
                });
                rows.push(Row::Contended {
                    id: "C32",
                    clients: CONTENDERS,
                    turns: false,
                    faults: false,
                });
            }
            "C1" => rows.push(Row::Contended {
                id: "C1",
                clients: 1,
                turns: false,
                faults: false,
            }),
            "CI" => rows.push(Row::Contended {
                id: "C32i",
                clients: CONTENDERS,
                turns: true,
                faults: false,
            }),
            "C32" => rows.push(Row::Contended {
                id: "C32",
                clients: CONTENDERS,
                turns: false,
                faults: false,
            }),
            "CF" if own_nodes => rows.push(Row::Contended {
                id: "C32f",
                clients: CONTENDERS,
                turns: false,
                faults: true,
            }),
            "CF" => {
                eprintln!("row C32f pauses the nodes, so it runs on the bench's own only: skipped")
            }
            "E" => rows.push(Row::Collision),
            "D" => rows.push(Row::Hold),
            _ => unreachable!("rows are validated when parsed"),
        }
    }

    let mut results = Vec::new();
    for row in &rows {
        let mut ours_rounds = Vec::new();
        let mut floor_rounds = Vec::new();
        let mut quorum_rounds = Vec::new();
        let mut ping_rounds = Vec::new();
        // The quorum-deciding floor is a reference for rows A and B (and Ai, Bi) only, ping-q
        // for Ai only.
        let mut names = vec!["ours", "floor"];
        if matches!(row, Row::Throughput { .. } | Row::Interleaved { .. }) {
            names.push("floor-q");
        }
        if matches!(row, Row::Interleaved { tasks: 1, .. }) {
            names.push("ping-q");
        }
        names.retain(|name| args.clients.contains(name));
        for round in 0..args.rounds {
            // Interleaved rows run all their clients together, taking turns (the rotation is
            // inside).
            if matches!(
                row,
                Row::Interleaved { .. } | Row::Contended { turns: true, .. }
            ) {
                eprintln!(
                    "row {} round {}/{}: {}",
                    row.id(),
                    round + 1,
                    args.rounds,
                    names.join(", ")
                );
                let measured = if let Row::Interleaved { id, tasks } = *row {
                    let clients: Vec<Client> = names
                        .iter()
                        .map(|name| Client::named(name, &ours, &floor))
                        .collect();
                    interleaved(&clients, id, tasks, args).await
                } else {
                    let sets: Vec<&[Client]> = names
                        .iter()
                        .map(|name| match *name {
                            "ours" => ours_apart.as_slice(),
                            _ => floors_apart.as_slice(),
                        })
                        .collect();
                    contended_turns(&sets, args).await
                };
                // Leftovers cannot be told apart by client here: every client reports them.
                let left = floor.settle(own_nodes, TTL / 2).await?;
                for (name, mut metrics) in names.iter().zip(measured) {
                    if let Some(value) = metrics.get(row.metric()) {
                        eprintln!("  {name} {}: {value:.1}", row.metric());
                    }
                    metrics.insert("leftover_keys", left as f64);
                    match *name {
                        "ours" => ours_rounds.push(metrics),
                        "floor-q" => quorum_rounds.push(metrics),
                        "ping-q" => ping_rounds.push(metrics),
                        _ => floor_rounds.push(metrics),
                    }
                }
                continue;
            }
            // Rotate which client goes first, so none always runs on a warmer (or busier)
            // machine.
            let mut order = names.clone();
            order.rotate_left(round % names.len().max(1));
            for name in order {
                let ours_turn = name == "ours";
                let ours_here = match row {
                    Row::Contended { .. } | Row::Collision => &ours_contended,
                    Row::Hold => &ours_hold,
                    Row::Throughput { .. } | Row::Interleaved { .. } => &ours,
                };
                let client = Client::named(name, ours_here, &floor);
                eprintln!(
                    "row {} round {}/{}: {}",
                    row.id(),
                    round + 1,
                    args.rounds,
                    client.name()
                );
                let mut metrics = match *row {
                    Row::Throughput { id, tasks } => {
                        throughput(&client, id, tasks, args, &floor).await
                    }
                    Row::Interleaved { .. } => {
                        unreachable!("interleaved rows run their clients together, above")
                    }
                    Row::Contended { clients: 1, .. } => contended(&[client], args, &floor).await,
                    Row::Contended { faults: true, .. } => {
                        let clients = if ours_turn {
                            &ours_apart
                        } else {
                            &floors_apart
                        };
                        let Some(cluster) = cluster else {
                            unreachable!("row C32f is only planned on the bench's own nodes")
                        };
                        let (mut metrics, paused) = tokio::join!(
                            contended(clients, args, &floor),
                            pause_nodes_in_turn(cluster, args)
                        );
                        metrics.insert("pauses", paused as f64);
                        metrics
                    }
                    Row::Contended { .. } if ours_turn => {
                        contended(&ours_apart, args, &floor).await
                    }
                    Row::Contended { .. } => contended(&floors_apart, args, &floor).await,
                    // Two clients of their own each, as two processes would be.
                    Row::Collision if ours_turn => collisions(&ours_apart[..2], args).await,
                    Row::Collision => collisions(&floors_apart[..2], args).await,
                    // A fresh process per client and round: RSS growth is only meaningful from a
                    // heap that no earlier row (or the other client) has grown already.
                    Row::Hold if !args.hold_here => {
                        hold_in_child(client.name(), args, urls).await?
                    }
                    Row::Hold => hold(&client, args).await?,
                };
                if let Some(value) = metrics.get(row.metric()) {
                    eprintln!("  {}: {value:.1}", row.metric());
                }
                // Background releases (stragglers, dropped acquisitions) get a bounded moment to
                // land; the bound stays below the ttl, so expiry never hides a leftover.
                let ttl = if matches!(row, Row::Hold) {
                    args.hold_ttl
                } else {
                    TTL
                };
                let left = floor.settle(own_nodes, ttl / 2).await?;
                metrics.insert("leftover_keys", left as f64);
                match name {
                    "ours" => ours_rounds.push(metrics),
                    "floor-q" => quorum_rounds.push(metrics),
                    _ => floor_rounds.push(metrics),
                }
            }
        }
        let metric = row.metric();
        results.push(RowResult {
            row: *row,
            ratio_rounds: paired(&ours_rounds, &floor_rounds, metric),
            quorum_ratio_rounds: paired(&quorum_rounds, &floor_rounds, metric),
            ping_ratio_rounds: paired(&ping_rounds, &floor_rounds, metric),
            ours: aggregate(&ours_rounds),
            floor: aggregate(&floor_rounds),
            quorum_floor: (!quorum_rounds.is_empty()).then(|| aggregate(&quorum_rounds)),
            ping: (!ping_rounds.is_empty()).then(|| aggregate(&ping_rounds)),
        });
    }

    print_tables(&results, args);
    println!("\n# load average at the end: {}", load_average());
    let mut lines = String::new();
    for r in &results {
        let (metric, ratio) = r.ratio();
        let line = json!({
            "row": r.row.id(),
            "tasks": r.row.tasks(args),
            "clients": match r.row {
                Row::Contended { clients, .. } => clients,
                Row::Collision => 2,
                _ => 1,
            },
            "secs": if matches!(r.row, Row::Hold) { args.hold_secs.as_secs_f64() } else { args.secs.as_secs_f64() },
            "rounds": args.rounds,
            "nodes": urls.len(),
            "ours": r.ours,
            "floor": r.floor,
            "quorum_floor": r.quorum_floor,
            "ratio_metric": metric,
            "ratio": ratio,
            "ratio_rounds": r.ratio_rounds,
            "ratio_paired_median": paired_median(&r.ratio_rounds),
            "quorum_ratio_rounds": r.quorum_ratio_rounds,
            "ping_quorum": r.ping,
            "ping_ratio_rounds": r.ping_ratio_rounds,
        });
        let _ = writeln!(lines, "{line}");
    }
    match &args.json {
        Some(path) => {
            fs::write(path, lines)?;
            println!("\nJSON lines written to {}", path.display());
        }
        None => {
            println!();
            for line in lines.lines() {
                println!("json {line}");
            }
        }
    }
    std::io::stdout().flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The two clients.

#[derive(Clone)]
enum Client {
    Ours(Redlock),
    Floor(Floor),
    /// The floor deciding at the quorum (rows A and B only): the best a Redlock client can do.
    QuorumFloor(Floor),
    /// Two rounds of `PING` deciding at the quorum (row Ai only): the round trips of a cycle
    /// without its commands, which no client can beat on these nodes.
    PingQuorum(Floor),
}

/// A lock held by either client.
enum Held {
    Ours(Lock),
    Floor(FloorLock),
}

impl Client {
    /// The client `--clients` calls `name`, over `ours` or `floor`.
    fn named(name: &str, ours: &Redlock, floor: &Floor) -> Client {
        match name {
            "ours" => Client::Ours(ours.clone()),
            "floor-q" => Client::QuorumFloor(floor.clone()),
            "ping-q" => Client::PingQuorum(floor.clone()),
            _ => Client::Floor(floor.clone()),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Client::Ours(_) => "ours",
            Client::Floor(_) => "floor",
            Client::QuorumFloor(_) => "floor-q",
            Client::PingQuorum(_) => "ping-q",
        }
    }

    /// One lock + release of `resource`. False when either step failed.
    async fn cycle(&self, resource: &str) -> bool {
        match self {
            Client::Ours(redlock) => match redlock.lock(resource).await {
                Ok(lock) => lock.release().await.is_ok(),
                Err(_) => false,
            },
            Client::Floor(floor) => floor.cycle(resource, TTL).await,
            Client::QuorumFloor(floor) => floor.cycle_quorum(resource, TTL).await,
            Client::PingQuorum(floor) => floor.ping_quorum().await,
        }
    }

    /// Waits for `resource` until `end`, retrying every 5-10 ms. `Ok(None)` at the end.
    async fn acquire_until(&self, resource: &str, end: Instant) -> Result<Option<Held>, ()> {
        match self {
            Client::Ours(redlock) => tokio::select! {
                biased;
                lock = redlock.lock(resource) => lock.map(|l| Some(Held::Ours(l))).map_err(|_| ()),
                () = tokio::time::sleep_until(end.into()) => Ok(None),
            },
            Client::Floor(floor) | Client::QuorumFloor(floor) | Client::PingQuorum(floor) => {
                Ok(floor.poll_until(resource, TTL, end).await.map(Held::Floor))
            }
        }
    }

    async fn release(&self, held: Held) -> bool {
        match (self, held) {
            (_, Held::Ours(lock)) => lock.release().await.is_ok(),
            (
                Client::Floor(floor) | Client::QuorumFloor(floor) | Client::PingQuorum(floor),
                Held::Floor(lock),
            ) => floor.release(&lock).await == 0,
            (Client::Ours(_), Held::Floor(_)) => false,
        }
    }
}

/// The floor: a bare redis-rs client, one multiplexed connection per node, sending only the
/// commands a Redlock must send. An acquisition is `SET key token NX PX ttl` on every node at
/// once, a release is a compare-and-delete script by EVALSHA on every node whose SET may have
/// applied. It waits for every node's reply (as a plain client would) and does nothing else: no
/// validity bookkeeping, no per-node ordering, no cleanup on cancellation.
#[derive(Clone)]
struct Floor {
    conns: Arc<[MultiplexedConnection]>,
    quorum: usize,
    release_sha: Arc<str>,
    extend_sha: Arc<str>,
}

/// What one node answered to the floor's SET.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reply {
    Ok,
    Held,
    Failed,
}

struct FloorLock {
    key: String,
    token: String,
    votes: Vec<Reply>,
}

const FLOOR_RELEASE: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0"#;
const FLOOR_EXTEND: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) end return 0"#;

impl Floor {
    async fn connect(urls: &[String]) -> Result<Floor, BoxError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            // As our client's connections have it (`redlock_core`'s `PIPELINE_BUFFER`): with
            // redis-rs's default of 50, hundreds of tasks wait for room on each connection, and
            // the floor would be slowed by a setting rather than by what it sends.
            .set_pipeline_buffer_size(1024);
        let mut conns = Vec::with_capacity(urls.len());
        let (mut release_sha, mut extend_sha) = (String::new(), String::new());
        for url in urls {
            let client = redis::Client::open(url.as_str())?;
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            release_sha = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(FLOOR_RELEASE)
                .query_async(&mut conn)
                .await?;
            extend_sha = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(FLOOR_EXTEND)
                .query_async(&mut conn)
                .await?;
            conns.push(conn);
        }
        Ok(Floor {
            quorum: conns.len() / 2 + 1,
            conns: conns.into(),
            release_sha: release_sha.into(),
            extend_sha: extend_sha.into(),
        })
    }

    async fn set_all(&self, key: &str, token: &str, ttl: Duration) -> Vec<Reply> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        join_all(self.conns.iter().map(|conn| {
            let mut conn = conn.clone();
            async move {
                match redis::cmd("SET")
                    .arg(key)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async::<Option<String>>(&mut conn)
                    .await
                {
                    Ok(Some(_)) => Reply::Ok,
                    Ok(None) => Reply::Held,
                    Err(_) => Reply::Failed,
                }
            }
        }))
        .await
    }

    /// Compare-and-delete on every node whose SET may have applied; returns the failures.
    async fn release(&self, lock: &FloorLock) -> usize {
        let results = join_all(
            lock.votes
                .iter()
                .enumerate()
                .filter(|(_, vote)| **vote != Reply::Held)
                .map(|(node, _)| self.release_node(node, &lock.key, &lock.token)),
        )
        .await;
        results.iter().filter(|r| r.is_err()).count()
    }

    /// One attempt: `Ok` with a quorum, otherwise what it must release.
    async fn try_lock(&self, resource: &str, ttl: Duration) -> Result<FloorLock, FloorLock> {
        let key = format!("{PREFIX}{resource}");
        let token = format!("{:032x}", rand::random::<u128>());
        let votes = self.set_all(&key, &token, ttl).await;
        let ok = votes.iter().filter(|v| **v == Reply::Ok).count();
        let lock = FloorLock { key, token, votes };
        if ok >= self.quorum {
            Ok(lock)
        } else {
            Err(lock)
        }
    }

    /// One lock + release deciding at the quorum, the best a Redlock client can do: returns
    /// from the SETs once a quorum said OK, and from the releases once those nodes answered. A
    /// node still pending is left to a spawned task that releases it behind its own SET
    /// (DESIGN.md §3.2 rule 7). No validity bookkeeping, no retries, no cancellation cleanup.
    async fn cycle_quorum(&self, resource: &str, ttl: Duration) -> bool {
        let key: Arc<str> = format!("{PREFIX}{resource}").into();
        let token: Arc<str> = format!("{:032x}", rand::random::<u128>()).into();
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let mut sets: FuturesUnordered<_> = (0..self.conns.len())
            .map(|node| {
                let (mut conn, key, token) = (self.conns[node].clone(), key.clone(), token.clone());
                async move {
                    let reply = redis::cmd("SET")
                        .arg(&*key)
                        .arg(&*token)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async::<Option<String>>(&mut conn)
                        .await;
                    let vote = match reply {
                        Ok(Some(_)) => Reply::Ok,
                        Ok(None) => Reply::Held,
                        Err(_) => Reply::Failed,
                    };
                    (node, vote)
                }
            })
            .collect();
        let (mut granted, mut to_release) = (0, Vec::with_capacity(self.conns.len()));
        while granted < self.quorum
            && let Some((node, vote)) = sets.next().await
        {
            granted += usize::from(vote == Reply::Ok);
            if vote != Reply::Held {
                to_release.push(node);
            }
        }
        if !sets.is_empty() {
            let floor = self.clone();
            let (key, token) = (key.clone(), token.clone());
            tokio::spawn(async move {
                while let Some((node, vote)) = sets.next().await {
                    if vote != Reply::Held {
                        let _ = floor.release_node(node, &key, &token).await;
                    }
                }
            });
        }
        let results = join_all(
            to_release
                .iter()
                .map(|node| self.release_node(*node, &key, &token)),
        )
        .await;
        granted >= self.quorum && results.iter().all(Result::is_ok)
    }

    /// Two rounds of `PING` to every node, each ending once a quorum answered: the round trips
    /// of a cycle deciding at the quorum, without the cycle's commands. What is left of a late
    /// reply is dropped with its future (the connection discards the reply).
    async fn ping_quorum(&self) -> bool {
        for _ in 0..2 {
            let mut pings: FuturesUnordered<_> = self
                .conns
                .iter()
                .map(|conn| {
                    let mut conn = conn.clone();
                    async move {
                        redis::cmd("PING")
                            .query_async::<String>(&mut conn)
                            .await
                            .is_ok()
                    }
                })
                .collect();
            let mut answered = 0;
            while answered < self.quorum {
                match pings.next().await {
                    Some(true) => answered += 1,
                    Some(false) => {}
                    None => return false,
                }
            }
        }
        true
    }

    /// Compare-and-delete on one node.
    async fn release_node(&self, node: usize, key: &str, token: &str) -> redis::RedisResult<i64> {
        let mut conn = self.conns[node].clone();
        redis::cmd("EVALSHA")
            .arg(&*self.release_sha)
            .arg(1)
            .arg(key)
            .arg(token)
            .query_async::<i64>(&mut conn)
            .await
    }

    async fn cycle(&self, resource: &str, ttl: Duration) -> bool {
        match self.try_lock(resource, ttl).await {
            Ok(lock) => self.release(&lock).await == 0,
            Err(lock) => {
                self.release(&lock).await;
                false
            }
        }
    }

    /// The "everyone polls" baseline: try, undo a partial lock, sleep 5-10 ms, try again.
    async fn poll_until(&self, resource: &str, ttl: Duration, end: Instant) -> Option<FloorLock> {
        for _ in 0..MAX_CYCLES {
            if Instant::now() >= end {
                return None;
            }
            match self.try_lock(resource, ttl).await {
                Ok(lock) => return Some(lock),
                Err(partial) => {
                    self.release(&partial).await;
                }
            }
            let jitter = rand::random_range(0..=POLL_DELAY.as_micros() as u64);
            let pause = POLL_DELAY + Duration::from_micros(jitter);
            tokio::time::sleep_until((Instant::now() + pause).min(end).into()).await;
        }
        None
    }

    /// Compare-and-expire on every node; returns how many extended.
    async fn extend(&self, lock: &FloorLock, ttl: Duration) -> usize {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let (key, token) = (lock.key.as_str(), lock.token.as_str());
        let results = join_all(self.conns.iter().map(|conn| {
            let mut conn = conn.clone();
            async move {
                redis::cmd("EVALSHA")
                    .arg(&*self.extend_sha)
                    .arg(1)
                    .arg(key)
                    .arg(token)
                    .arg(ttl_ms)
                    .query_async::<i64>(&mut conn)
                    .await
            }
        }))
        .await;
        results.iter().filter(|r| matches!(r, Ok(1))).count()
    }

    async fn server_version(&self) -> Option<String> {
        let mut conn = self.conns.first()?.clone();
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(|v| v.trim().to_owned())
    }

    /// The CPU time the nodes report having spent so far (`used_cpu_user` + `used_cpu_sys` of
    /// `INFO cpu`), summed over the nodes; `None` when a node does not say.
    async fn nodes_cpu(&self) -> Option<Duration> {
        let mut total = 0.0;
        for conn in self.conns.iter() {
            let info: String = redis::cmd("INFO")
                .arg("cpu")
                .query_async(&mut conn.clone())
                .await
                .ok()?;
            for field in ["used_cpu_user:", "used_cpu_sys:"] {
                let seconds: f64 = info
                    .lines()
                    .find_map(|l| l.strip_prefix(field))?
                    .trim()
                    .parse()
                    .ok()?;
                total += seconds;
            }
        }
        Some(Duration::from_secs_f64(total))
    }

    /// Keys left on the nodes: all of them (DBSIZE) on nodes we started, the bench's own on
    /// nodes from REDLOCK_NODES.
    async fn leftovers(&self, own_nodes: bool) -> Result<usize, BoxError> {
        let mut total = 0;
        for conn in self.conns.iter() {
            let mut conn = conn.clone();
            total += if own_nodes {
                redis::cmd("DBSIZE").query_async::<usize>(&mut conn).await?
            } else {
                redis::cmd("KEYS")
                    .arg(BENCH_PATTERN)
                    .query_async::<Vec<String>>(&mut conn)
                    .await?
                    .len()
            };
        }
        Ok(total)
    }

    /// Polls the leftover count every 20 ms until it is zero or `bound` passed, then deletes
    /// whatever bench keys remain so that the next row starts clean. Returns the count.
    async fn settle(&self, own_nodes: bool, bound: Duration) -> Result<usize, BoxError> {
        let end = Instant::now() + bound;
        let mut left = self.leftovers(own_nodes).await?;
        while left > 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
            left = self.leftovers(own_nodes).await?;
        }
        if left > 0 {
            for (node, conn) in self.conns.iter().enumerate() {
                let mut conn = conn.clone();
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(BENCH_PATTERN)
                    .query_async(&mut conn)
                    .await?;
                if let Some(sample) = keys.first() {
                    let ttl: i64 = redis::cmd("PTTL")
                        .arg(sample)
                        .query_async(&mut conn)
                        .await?;
                    let value: Option<String> = redis::cmd("GET")
                        .arg(sample)
                        .query_async(&mut conn)
                        .await
                        .unwrap_or(None);
                    eprintln!(
                        "  {} leftover keys on node {node}, e.g. {sample} = {value:?} (expires in {ttl} ms)",
                        keys.len()
                    );
                }
                for chunk in keys.chunks(1000) {
                    redis::cmd("DEL")
                        .arg(chunk)
                        .query_async::<()>(&mut conn)
                        .await?;
                }
            }
        }
        Ok(left)
    }
}

// ---------------------------------------------------------------------------------------------
// Rows.

#[derive(Clone, Copy)]
enum Row {
    Throughput {
        id: &'static str,
        tasks: usize,
    },
    /// Rows A and B with the clients taking turns in bursts ([`interleaved`]).
    Interleaved {
        id: &'static str,
        tasks: usize,
    },
    /// `CONTENDERS` tasks spread over `clients` clients; with `turns`, the clients take turns
    /// in bursts ([`contended_turns`]); with `faults`, the nodes are paused in turn meanwhile
    /// ([`pause_nodes_in_turn`]).
    Contended {
        id: &'static str,
        clients: usize,
        turns: bool,
        faults: bool,
    },
    /// Row E: two clients collide on a fresh key, again and again ([`collisions`]).
    Collision,
    Hold,
}

impl Row {
    /// The metric its ratio ours/floor is taken of (for E, latency, and for D, CPU: lower is
    /// better).
    fn metric(&self) -> &'static str {
        match self {
            Row::Throughput { .. } | Row::Interleaved { .. } => "cycles_per_sec",
            Row::Contended { .. } => "sections_per_sec",
            Row::Collision => "handover_p90_ms",
            Row::Hold => "cpu_pct_of_core",
        }
    }

    fn id(&self) -> &'static str {
        match self {
            Row::Throughput { id, .. } => id,
            Row::Interleaved { id, .. } => id,
            Row::Contended { id, .. } => id,
            Row::Collision => "E",
            Row::Hold => "D",
        }
    }

    fn tasks(&self, args: &Args) -> usize {
        match *self {
            Row::Throughput { tasks, .. } => tasks,
            Row::Interleaved { tasks, .. } => tasks,
            Row::Contended { .. } => CONTENDERS,
            Row::Collision => 2,
            Row::Hold => args.hold_locks,
        }
    }
}

type Metrics = BTreeMap<&'static str, f64>;

/// Measured window of a row: work before `warm_end` is not counted, nothing starts after `end`.
#[derive(Clone, Copy)]
struct Window {
    warm_end: Instant,
    end: Instant,
}

impl Window {
    fn new(args: &Args) -> Window {
        let warm_end = Instant::now() + args.warmup;
        Window {
            warm_end,
            end: warm_end + args.secs,
        }
    }
}

/// Rows A and B: `tasks` tasks, each locking and releasing a fresh key per cycle.
async fn throughput(
    client: &Client,
    row: &'static str,
    tasks: usize,
    args: &Args,
    floor: &Floor,
) -> Metrics {
    let window = Window::new(args);
    let name = client.name();
    let mut set = JoinSet::new();
    for task in 0..tasks {
        let client = client.clone();
        set.spawn(async move {
            let mut samples = Vec::with_capacity(4096);
            let mut errors = 0u64;
            let mut key = String::with_capacity(64);
            for i in 0..MAX_CYCLES {
                let start = Instant::now();
                if start >= window.end {
                    break;
                }
                key.clear();
                let _ = write!(key, "bench:{row}:{name}:{task}:{i}");
                let ok = client.cycle(&key).await;
                if start >= window.warm_end {
                    if ok {
                        samples.push(micros(start.elapsed()));
                    } else {
                        errors += 1;
                    }
                }
            }
            (samples, errors)
        });
    }
    let cpu = cpu_between(window, floor).await;
    let mut samples = Vec::new();
    let mut errors = 0;
    while let Some(joined) = set.join_next().await {
        if let Ok((s, e)) = joined {
            samples.extend(s);
            errors += e;
        } else {
            errors += 1;
        }
    }
    samples.sort_unstable();
    let cycles = samples.len() as f64;
    let (cpu, node_cpu) = cpu.per(cycles);
    Metrics::from([
        ("cycles_per_sec", cycles / args.secs.as_secs_f64()),
        ("p50_ms", percentile_ms(&samples, 0.50)),
        ("p99_ms", percentile_ms(&samples, 0.99)),
        ("cpu_us_per_cycle", cpu),
        ("node_cpu_us_per_cycle", node_cpu),
        ("errors", errors as f64),
    ])
}

/// Rows Ai, B32i and B256i: rows A, B32 and B256 with the clients taking turns in bursts of
/// [`BURST`] (one task) or [`BURST_MANY`] (the order rotates every pass), for `--secs` per
/// client after the warm-up. The machine's slow and fast phases, which last far longer than a
/// burst, then fall on every client alike, where rows A and B run them one after the other for
/// seconds each. A burst's first cycles may still meet the previous client's background work
/// (a straggler's release). Returns each client's metrics, in `clients`' order; CPU cannot be
/// told apart by client here.
async fn interleaved(
    clients: &[Client],
    row: &'static str,
    tasks: usize,
    args: &Args,
) -> Vec<Metrics> {
    let burst = if tasks == 1 { BURST } else { BURST_MANY };
    let (turns, busy) = take_turns(clients.len(), burst, args, |index, pass, end| {
        // Spawned, on the runtime's workers, as rows A and B are.
        let mut set = JoinSet::new();
        for task in 0..tasks {
            let client = clients[index].clone();
            set.spawn(async move {
                let (mut mine, mut failed) = (Vec::with_capacity(256), 0u64);
                let mut key = String::with_capacity(64);
                for cycle in 0..MAX_CYCLES {
                    if Instant::now() >= end {
                        break;
                    }
                    key.clear();
                    let _ = write!(key, "bench:{row}:{}:{pass}:{task}:{cycle}", client.name());
                    let start = Instant::now();
                    if client.cycle(&key).await {
                        mine.push(micros(start.elapsed()));
                    } else {
                        failed += 1;
                    }
                }
                (mine, failed)
            });
        }
        async move {
            let mut done = Vec::with_capacity(tasks);
            while let Some(joined) = set.join_next().await {
                done.push(joined.unwrap_or_else(|_| (Vec::new(), 1)));
            }
            done
        }
    })
    .await;
    turns
        .into_iter()
        .zip(busy)
        .map(|(turns, busy)| {
            let (mut samples, mut errors) = (Vec::new(), 0u64);
            for (mine, failed) in turns.into_iter().flatten() {
                samples.extend(mine);
                errors += failed;
            }
            samples.sort_unstable();
            Metrics::from([
                (
                    "cycles_per_sec",
                    samples.len() as f64 / busy.as_secs_f64().max(f64::MIN_POSITIVE),
                ),
                ("p50_ms", percentile_ms(&samples, 0.50)),
                ("p99_ms", percentile_ms(&samples, 0.99)),
                ("cpu_us_per_cycle", f64::NAN),
                ("node_cpu_us_per_cycle", f64::NAN),
                ("errors", errors as f64),
            ])
        })
        .collect()
}

/// The schedule of the interleaved rows: `n` clients take turns of `burst`, in passes that
/// rotate the order, until each has had `--secs` after the `--warmup`. `turn(client, pass,
/// end)` starts one turn, which must stop starting work at `end`; a turn lasts until its future
/// is done. Returns, per client, the results of its measured turns (those that started after
/// the warm-up) and the time they took.
async fn take_turns<R, F, Fut>(
    n: usize,
    burst: Duration,
    args: &Args,
    mut turn: F,
) -> (Vec<Vec<R>>, Vec<Duration>)
where
    F: FnMut(usize, usize, Instant) -> Fut,
    Fut: Future<Output = R>,
{
    let warm_end = Instant::now() + args.warmup;
    let end = warm_end + args.secs * n as u32;
    let mut results: Vec<Vec<R>> = (0..n).map(|_| Vec::new()).collect();
    let mut busy = vec![Duration::ZERO; n];
    for pass in 0..MAX_CYCLES as usize {
        if Instant::now() >= end {
            break;
        }
        for offset in 0..n {
            let index = (pass + offset) % n;
            let start = Instant::now();
            let result = turn(index, pass, start + burst).await;
            if start >= warm_end {
                busy[index] += start.elapsed();
                results[index].push(result);
            }
        }
    }
    (results, busy)
}

/// Row C: `CONTENDERS` tasks, spread over `clients`, contend for one key; each takes it, checks
/// that nobody else is inside, yields once (so an overlapping holder would get to run), leaves
/// and releases, then asks again.
async fn contended(clients: &[Client], args: &Args, floor: &Floor) -> Metrics {
    let window = Window::new(args);
    let resource = format!("bench:C{}:{}", clients.len(), clients[0].name());
    let exclusion = Arc::new(Exclusion::default());
    let mut set = JoinSet::new();
    for task in 0..CONTENDERS {
        let client = clients[task % clients.len()].clone();
        set.spawn(contend(
            client,
            resource.clone(),
            exclusion.clone(),
            window.warm_end,
            window.end,
        ));
    }
    let cpu = cpu_between(window, floor).await;
    let mut per_task = Vec::with_capacity(CONTENDERS);
    while let Some(joined) = set.join_next().await {
        per_task.push(joined.unwrap_or_else(|_| (Vec::new(), 1)));
    }
    contended_metrics(per_task, &exclusion, args.secs, cpu)
}

/// Row E: two clients, each with connections and queues of its own as two processes have, lock
/// one fresh key at the same moment, again and again until the row's end. The winner holds the
/// key for [`COLLISION_HOLD`], then releases; the loser waits in its client's own way (the
/// floor asks again every 5-10 ms). Measured: how long after the winner's release the loser
/// held the key. The tail is a split vote in which the loser won the key's sequencer node, which
/// the winner's release there must wake (the case
/// `queue::the_loser_of_a_split_vote_is_woken_by_the_winners_release` pins); a loser that would
/// find out only by asking again shows here as the floor's polling pause.
async fn collisions(pair: &[Client], args: &Args) -> Metrics {
    let window = Window::new(args);
    let exclusion = Arc::new(Exclusion::default());
    let mut waits = Vec::with_capacity(256);
    let mut errors = 0u64;
    for collision in 0..MAX_CYCLES {
        let now = Instant::now();
        if now >= window.end {
            break;
        }
        let counted = now >= window.warm_end;
        let key = format!("bench:E:{}:{collision}", pair[0].name());
        let start = Arc::new(tokio::sync::Barrier::new(pair.len()));
        // When the winner released: taken by the loser once it holds the key.
        let released = Arc::new(std::sync::Mutex::new(None::<Instant>));
        let mut set = JoinSet::new();
        for client in pair {
            let (client, key) = (client.clone(), key.clone());
            let (start, released, exclusion) = (start.clone(), released.clone(), exclusion.clone());
            set.spawn(async move {
                start.wait().await;
                let give_up = Instant::now() + COLLISION_GIVE_UP;
                let Ok(Some(held)) = client.acquire_until(&key, give_up).await else {
                    return Err(());
                };
                let taken = Instant::now();
                let after = released.lock().ok().and_then(|mut at| at.take());
                exclusion.enter();
                if after.is_none() {
                    // The winner: the loser is waiting meanwhile.
                    tokio::time::sleep(COLLISION_HOLD).await;
                } else {
                    tokio::task::yield_now().await;
                }
                exclusion.leave();
                if let Ok(mut at) = released.lock() {
                    *at = Some(Instant::now());
                }
                if !client.release(held).await {
                    return Err(());
                }
                Ok(after.map(|at| micros(taken.saturating_duration_since(at))))
            });
        }
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(Ok(Some(wait))) if counted => waits.push(wait),
                Ok(Ok(_)) => {}
                Ok(Err(())) | Err(_) => errors += 1,
            }
        }
    }
    waits.sort_unstable();
    Metrics::from([
        ("collisions", waits.len() as f64),
        ("handover_p50_ms", percentile_ms(&waits, 0.50)),
        ("handover_p90_ms", percentile_ms(&waits, 0.90)),
        ("handover_p99_ms", percentile_ms(&waits, 0.99)),
        ("handover_max_ms", percentile_ms(&waits, 1.0)),
        ("max_in_cs", exclusion.most.load(Ordering::SeqCst) as f64),
        ("overlaps", exclusion.overlaps.load(Ordering::SeqCst) as f64),
        ("errors", errors as f64),
    ])
}

/// Row C32f's faults, from now until the row's end (its warm-up and measured time): every
/// [`FAULT_EVERY`] the next node is paused (`SIGSTOP`) for [`FAULT_PAUSE`], so every node, the
/// key's sequencer node among them, is paused in turn and a majority always answers. Returns
/// how many pauses there were; every node is running again when it returns.
async fn pause_nodes_in_turn(cluster: &Cluster, args: &Args) -> usize {
    let end = Instant::now() + args.warmup + args.secs;
    let mut paused = 0;
    loop {
        tokio::time::sleep(FAULT_EVERY - FAULT_PAUSE).await;
        if Instant::now() + FAULT_PAUSE > end {
            return paused;
        }
        let node = cluster.node(paused % cluster.len());
        // Signals and a short wait for the process to stop: blocking, but brief.
        if let Err(error) = tokio::task::block_in_place(|| node.pause()) {
            eprintln!("  could not pause node {}: {error}", paused % cluster.len());
            return paused;
        }
        tokio::time::sleep(FAULT_PAUSE).await;
        if let Err(error) = tokio::task::block_in_place(|| node.resume()) {
            eprintln!(
                "  could not resume node {}: {error}",
                paused % cluster.len()
            );
        }
        paused += 1;
    }
}

/// Row C32i: row C32 with the clients taking turns in bursts of [`BURST_CONTENDED`] (the
/// order rotates every pass), for `--secs` per client after the warm-up, each client on its own
/// key. Every turn starts the client's 32 contenders and ends when the last one has left (the
/// waiting ones are dropped at the burst's end, as at the end of row C). Task `i` is always
/// client `i`, so fairness adds up over the turns.
async fn contended_turns(sets: &[&[Client]], args: &Args) -> Vec<Metrics> {
    let exclusions: Vec<Arc<Exclusion>> = sets.iter().map(|_| Arc::default()).collect();
    let (turns, busy) = take_turns(sets.len(), BURST_CONTENDED, args, |index, _, end| {
        let (clients, start) = (sets[index], Instant::now());
        let resource = format!("bench:C32i:{}", clients[0].name());
        let mut set = JoinSet::new();
        for task in 0..CONTENDERS {
            let client = clients[task % clients.len()].clone();
            let (resource, exclusion) = (resource.clone(), exclusions[index].clone());
            set.spawn(
                async move { (task, contend(client, resource, exclusion, start, end).await) },
            );
        }
        async move {
            let mut done = Vec::with_capacity(CONTENDERS);
            while let Some(joined) = set.join_next().await {
                done.extend(joined.ok());
            }
            done
        }
    })
    .await;
    turns
        .into_iter()
        .zip(busy)
        .zip(&exclusions)
        .map(|((turns, busy), exclusion)| {
            let mut per_task = vec![(Vec::new(), 0); CONTENDERS];
            for (task, (waits, errors)) in turns.into_iter().flatten() {
                per_task[task].0.extend(waits);
                per_task[task].1 += errors;
            }
            contended_metrics(per_task, exclusion, busy, CpuSpent::UNKNOWN)
        })
        .collect()
}

/// Who is inside one contended key's critical section: never more than one unless mutual
/// exclusion broke.
#[derive(Default)]
struct Exclusion {
    inside: AtomicUsize,
    most: AtomicUsize,
    overlaps: AtomicU64,
}

impl Exclusion {
    /// A holder comes in: an overlap if someone is inside already.
    fn enter(&self) {
        let inside = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(inside, Ordering::SeqCst);
        if inside > 1 {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A holder leaves (before it releases).
    fn leave(&self) {
        self.inside.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One contender of row C: asks for `resource` until `end`; each time it holds it, checks that
/// nobody else is inside, yields once (so an overlapping holder would get to run), leaves and
/// releases, then asks again at once. Returns the waits of the sections it asked for from
/// `count_from` on, and its errors.
async fn contend(
    client: Client,
    resource: String,
    exclusion: Arc<Exclusion>,
    count_from: Instant,
    end: Instant,
) -> (Vec<u32>, u64) {
    let mut waits = Vec::with_capacity(1024);
    let mut errors = 0u64;
    for _ in 0..MAX_CYCLES {
        let start = Instant::now();
        if start >= end {
            break;
        }
        let held = match client.acquire_until(&resource, end).await {
            Ok(Some(held)) => held,
            Ok(None) => break,
            Err(()) => {
                errors += 1;
                continue;
            }
        };
        let acquired = Instant::now();
        exclusion.enter();
        tokio::task::yield_now().await;
        exclusion.leave();
        let released = client.release(held).await;
        if start >= count_from {
            waits.push(micros(acquired - start));
            if !released {
                errors += 1;
            }
        }
    }
    (waits, errors)
}

/// Row C's metrics from each task's waits and errors over `measured` time.
fn contended_metrics(
    per_task: Vec<(Vec<u32>, u64)>,
    exclusion: &Exclusion,
    measured: Duration,
    cpu: CpuSpent,
) -> Metrics {
    let mut waits = Vec::new();
    let mut counts = Vec::with_capacity(per_task.len());
    let mut errors = 0;
    for (w, e) in per_task {
        counts.push(w.len() as f64);
        waits.extend(w);
        errors += e;
    }
    waits.sort_unstable();
    let sections = waits.len() as f64;
    let min = counts.iter().copied().fold(f64::INFINITY, f64::min);
    let max = counts.iter().copied().fold(0.0, f64::max);
    Metrics::from([
        (
            "sections_per_sec",
            sections / measured.as_secs_f64().max(f64::MIN_POSITIVE),
        ),
        ("wait_p50_ms", percentile_ms(&waits, 0.50)),
        ("wait_p99_ms", percentile_ms(&waits, 0.99)),
        ("per_task_min", min),
        ("per_task_max", max),
        (
            "fairness_max_over_min",
            if min > 0.0 { max / min } else { f64::NAN },
        ),
        ("max_in_cs", exclusion.most.load(Ordering::SeqCst) as f64),
        ("overlaps", exclusion.overlaps.load(Ordering::SeqCst) as f64),
        ("cpu_us_per_section", cpu.per(sections).0),
        ("node_cpu_us_per_section", cpu.per(sections).1),
        ("errors", errors as f64),
    ])
}

/// Row D in a child process: this binary again, with `--hold-here`, on the same nodes.
async fn hold_in_child(client: &str, args: &Args, urls: &[String]) -> Result<Metrics, BoxError> {
    const KEYS: [&str; 8] = [
        "locks",
        "acquire_secs",
        "release_secs",
        "rss_growth_mib",
        "cpu_pct_of_core",
        "min_remaining_ms",
        "lost",
        "errors",
    ];
    let exe = std::env::current_exe()?;
    let json = std::env::temp_dir().join(format!(
        "redlock-bench-{}-{client}.jsonl",
        std::process::id()
    ));
    let mut command = std::process::Command::new(exe);
    command
        .args([
            "--rows",
            "D",
            "--rounds",
            "1",
            "--hold-here",
            "--clients",
            client,
        ])
        .args(["--hold-locks", &args.hold_locks.to_string()])
        .args(["--hold-secs", &args.hold_secs.as_secs_f64().to_string()])
        .args(["--hold-ttl-ms", &args.hold_ttl.as_millis().to_string()])
        .arg("--json")
        .arg(&json)
        .env("REDLOCK_NODES", urls.join(","))
        .stdout(std::process::Stdio::null());
    if let Some(timeout) = args.node_timeout {
        command.args(["--node-timeout-ms", &timeout.as_millis().to_string()]);
    }
    let status = tokio::task::spawn_blocking(move || command.status()).await??;
    if !status.success() {
        let _ = fs::remove_file(&json);
        return Err(format!("row D child for {client} failed: {status}").into());
    }
    let line = fs::read_to_string(&json)?;
    let _ = fs::remove_file(&json);
    let row: serde_json::Value = serde_json::from_str(line.trim())?;
    Ok(KEYS
        .iter()
        .map(|k| (*k, row[client][*k].as_f64().unwrap_or(f64::NAN)))
        .collect())
}

/// Row D: `hold_locks` locks taken, kept alive for `hold_secs` with a short ttl, then released.
/// Measures RSS growth (before taking them, against the end of the hold), the CPU time of the
/// whole process during the hold, and whether any lock was lost.
async fn hold(client: &Client, args: &Args) -> Result<Metrics, BoxError> {
    let rss_before = rss_kib();
    let name = client.name();
    let acquire_start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let held: Arc<Mutex<Vec<Held>>> = Arc::new(Mutex::new(Vec::with_capacity(args.hold_locks)));
    let mut set = JoinSet::new();
    for _ in 0..HOLD_WORKERS.min(args.hold_locks) {
        let (client, next, errors, held) =
            (client.clone(), next.clone(), errors.clone(), held.clone());
        let (count, ttl) = (args.hold_locks, args.hold_ttl);
        set.spawn(async move {
            let mut mine = Vec::new();
            let mut resource = String::with_capacity(48);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                resource.clear();
                let _ = write!(resource, "bench:D:{name}:{i}");
                let lock = match &client {
                    Client::Ours(redlock) => redlock.lock(&resource).await.ok().map(|lock| {
                        lock.auto_extend(AutoExtend::new());
                        Held::Ours(lock)
                    }),
                    Client::Floor(floor)
                    | Client::QuorumFloor(floor)
                    | Client::PingQuorum(floor) => match floor.try_lock(&resource, ttl).await {
                        Ok(lock) => Some(Held::Floor(lock)),
                        Err(partial) => {
                            floor.release(&partial).await;
                            None
                        }
                    },
                };
                match lock {
                    Some(lock) => mine.push(lock),
                    None => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            held.lock().await.extend(mine);
        });
    }
    while set.join_next().await.is_some() {}
    let acquire_secs = acquire_start.elapsed().as_secs_f64();
    let mut held = std::mem::take(&mut *held.lock().await);
    let hold_start = Instant::now();
    let hold_end = hold_start + args.hold_secs;

    // The floor keeps its locks alive the way a bare client would: one task per lock extending
    // it on every node every ttl/3. It counts a lock lost when an extension misses the quorum.
    let floor_lost = Arc::new(AtomicU64::new(0));
    let mut renewers = JoinSet::new();
    if let Client::Floor(floor) | Client::QuorumFloor(floor) | Client::PingQuorum(floor) = client {
        let every = args.hold_ttl / 3;
        for lock in held.drain(..) {
            let Held::Floor(lock) = lock else { continue };
            let (floor, lost, ttl) = (floor.clone(), floor_lost.clone(), args.hold_ttl);
            renewers.spawn(async move {
                let mut next = Instant::now() + every;
                while next < hold_end {
                    tokio::time::sleep_until(next.into()).await;
                    if floor.extend(&lock, ttl).await < floor.quorum {
                        lost.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    next += every;
                }
                lock
            });
        }
    }

    let cpu_start = cpu_time();
    // Watch our locks while they are held: the smallest validity left ever seen tells whether
    // renewals kept up. A scan of 10,000 deadlines costs well under a millisecond.
    let mut min_remaining = f64::INFINITY;
    for _ in 0..=(args.hold_secs.as_millis() / 500) {
        let now = Instant::now();
        if now >= hold_end {
            break;
        }
        for lock in &held {
            if let Held::Ours(lock) = lock {
                min_remaining = min_remaining.min(lock.remaining().as_secs_f64() * 1e3);
            }
        }
        tokio::time::sleep_until((now + Duration::from_millis(500)).min(hold_end).into()).await;
    }
    let cpu_end = cpu_time();
    let wall = hold_start.elapsed();
    let rss_after = rss_kib();

    while let Some(joined) = renewers.join_next().await {
        if let Ok(lock) = joined {
            held.push(Held::Floor(lock));
        }
    }
    let invalid = held
        .iter()
        .filter(|h| matches!(h, Held::Ours(lock) if !lock.is_valid()))
        .count();
    let lost_fired = held
        .iter()
        .filter(|h| matches!(h, Held::Ours(lock) if lock.lost().now_or_never().is_some()))
        .count();
    let lost = match client {
        Client::Ours(_) => invalid.max(lost_fired) as f64,
        Client::Floor(_) | Client::QuorumFloor(_) | Client::PingQuorum(_) => {
            floor_lost.load(Ordering::Relaxed) as f64
        }
    };
    let locks = held.len() as f64;

    let release_start = Instant::now();
    let queue = Arc::new(Mutex::new(held));
    let mut set = JoinSet::new();
    for _ in 0..HOLD_WORKERS {
        let (client, queue, errors) = (client.clone(), queue.clone(), errors.clone());
        set.spawn(async move {
            for _ in 0..MAX_CYCLES {
                let Some(lock) = queue.lock().await.pop() else {
                    break;
                };
                if !client.release(lock).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    let release_secs = release_start.elapsed().as_secs_f64();

    let cpu_pct = match (cpu_start, cpu_end) {
        (Some(a), Some(b)) => (b.saturating_sub(a)).as_secs_f64() / wall.as_secs_f64() * 100.0,
        _ => f64::NAN,
    };
    let rss_growth = match (rss_before, rss_after) {
        (Some(a), Some(b)) => (b as f64 - a as f64) / 1024.0,
        _ => f64::NAN,
    };
    Ok(Metrics::from([
        ("locks", locks),
        ("acquire_secs", acquire_secs),
        ("release_secs", release_secs),
        ("rss_growth_mib", rss_growth),
        ("cpu_pct_of_core", cpu_pct),
        (
            "min_remaining_ms",
            if min_remaining.is_finite() {
                min_remaining
            } else {
                f64::NAN
            },
        ),
        ("lost", lost),
        ("errors", errors.load(Ordering::Relaxed) as f64),
    ]))
}

// ---------------------------------------------------------------------------------------------
// Measurement helpers.

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Nearest-rank percentile of sorted microsecond samples, in milliseconds.
fn percentile_ms(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1e3
}

/// CPU time (user + system) spent between `window.warm_end` and `window.end`.
#[derive(Clone, Copy)]
struct CpuSpent {
    /// By this whole process: the client under test (and the bench's own bookkeeping).
    client: Option<Duration>,
    /// By the nodes together, as they report it (`INFO cpu`). On a machine where the client
    /// and the nodes share the cores, this is as much the client's cost as its own CPU: a
    /// costlier script on the nodes leaves less CPU for everything else.
    nodes: Option<Duration>,
}

impl CpuSpent {
    /// Where CPU cannot be told apart by client (the interleaved rows).
    const UNKNOWN: CpuSpent = CpuSpent {
        client: None,
        nodes: None,
    };

    /// Each of them per unit of work, in microseconds (NaN when unknown).
    fn per(&self, units: f64) -> (f64, f64) {
        let us = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e6 / units);
        (us(self.client), us(self.nodes))
    }
}

/// The CPU this process and the nodes spend between `window.warm_end` and `window.end`.
async fn cpu_between(window: Window, floor: &Floor) -> CpuSpent {
    tokio::time::sleep_until(window.warm_end.into()).await;
    let (client, nodes) = (cpu_time(), floor.nodes_cpu().await);
    tokio::time::sleep_until(window.end.into()).await;
    let (client_end, nodes_end) = (cpu_time(), floor.nodes_cpu().await);
    let spent = |start: Option<Duration>, end: Option<Duration>| Some(end?.saturating_sub(start?));
    CpuSpent {
        client: spent(client, client_end),
        nodes: spent(nodes, nodes_end),
    }
}

/// utime + stime of this process, from /proc/self/stat (fields 14 and 15).
fn cpu_time() -> Option<Duration> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces; every field after it follows its ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / CLOCK_TICKS_PER_SEC,
    ))
}

/// The 1, 5 and 15 minute load averages: other work on the machine skews every number here.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// Resident set size of this process in KiB, from /proc/self/status.
fn rss_kib() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Medians across rounds, except for counts that must stay at zero, which keep their worst.
fn aggregate(rounds: &[Metrics]) -> Metrics {
    const WORST: [&str; 6] = [
        "errors",
        "leftover_keys",
        "overlaps",
        "max_in_cs",
        "lost",
        "handover_max_ms",
    ];
    let mut out = Metrics::new();
    let Some(first) = rounds.first() else {
        return out;
    };
    for key in first.keys() {
        let mut values: Vec<f64> = rounds.iter().filter_map(|m| m.get(key).copied()).collect();
        let value = if WORST.contains(key) {
            values.iter().copied().fold(0.0, f64::max)
        } else {
            values.retain(|v| !v.is_nan());
            values.sort_by(f64::total_cmp);
            match values.len() {
                0 => f64::NAN,
                n if n % 2 == 1 => values[n / 2],
                n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
            }
        };
        out.insert(key, value);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Reporting.

struct RowResult {
    row: Row,
    ours: Metrics,
    floor: Metrics,
    /// Rows A and B: the floor deciding at the quorum.
    quorum_floor: Option<Metrics>,
    /// Ours / floor of the headline metric within each round, where both ran back to back:
    /// the machine's slow and fast phases hit both sides of a pair alike.
    ratio_rounds: Vec<f64>,
    /// The same for floor-q / floor.
    quorum_ratio_rounds: Vec<f64>,
    /// Row Ai: two quorum rounds of `PING`, the bound of a cycle on these nodes.
    ping: Option<Metrics>,
    /// ping-q / floor round by round.
    ping_ratio_rounds: Vec<f64>,
}

/// `a / b` of `metric` round by round (rounds where both ran).
fn paired(a: &[Metrics], b: &[Metrics], metric: &str) -> Vec<f64> {
    a.iter()
        .zip(b)
        .filter_map(|(a, b)| Some(a.get(metric)? / b.get(metric)?))
        .filter(|r| r.is_finite())
        .collect()
}

/// The median of per-round ratios and their range, as `1.05 [0.93–1.21]`.
fn spread(ratios: &[f64]) -> String {
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if ratios.is_empty() {
        return String::new();
    }
    format!("{:.2} [{min:.2}–{max:.2}]", paired_median(ratios))
}

/// The median of per-round ratios (NaN without rounds).
fn paired_median(ratios: &[f64]) -> f64 {
    let mut sorted = ratios.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

impl RowResult {
    /// The clients that ran, with their metrics.
    fn clients<'a>(&'a self, args: &Args) -> Vec<(&'static str, &'a Metrics)> {
        [("ours", &self.ours), ("floor", &self.floor)]
            .into_iter()
            .chain(self.quorum_floor.iter().map(|m| ("floor-q", m)))
            .chain(self.ping.iter().map(|m| ("ping-q", m)))
            .filter(|(name, _)| args.clients.contains(name))
            .collect()
    }

    /// `name`'s headline metric over the floor's.
    fn ratio_of(&self, name: &str) -> f64 {
        let metric = self.ratio().0;
        let get = |m: &Metrics| m.get(metric).copied().unwrap_or(f64::NAN);
        match name {
            "floor-q" => self.quorum_floor.as_ref().map_or(f64::NAN, get) / get(&self.floor),
            "ping-q" => self.ping.as_ref().map_or(f64::NAN, get) / get(&self.floor),
            _ => get(&self.ours) / get(&self.floor),
        }
    }

    /// The table cell of `name`'s ratio: ours/floor in bold on ours' line, empty on the others.
    fn ratio_cell(&self, name: &str) -> String {
        if name == "ours" {
            format!("**{:.2}×**", self.ratio().1)
        } else {
            String::new()
        }
    }

    /// The table cell of the per-round ratios on ours' line, empty on the others.
    fn spread_cell(&self, name: &str) -> String {
        if name == "ours" {
            spread(&self.ratio_rounds)
        } else {
            String::new()
        }
    }

    /// The headline metric and ours/floor for it (for D, CPU: lower is better).
    fn ratio(&self) -> (&'static str, f64) {
        let metric = self.row.metric();
        let get = |m: &Metrics| m.get(metric).copied().unwrap_or(f64::NAN);
        (metric, get(&self.ours) / get(&self.floor))
    }
}

/// A CPU cost for the tables: "–" where it cannot be told apart by client.
fn cpu_cell(us: f64) -> String {
    if us.is_nan() {
        "–".to_owned()
    } else {
        format!("{us:.1}")
    }
}

fn print_tables(results: &[RowResult], args: &Args) {
    let get = |m: &Metrics, k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    let throughput: Vec<_> = results
        .iter()
        .filter(|r| matches!(r.row, Row::Throughput { .. } | Row::Interleaved { .. }))
        .collect();
    if !throughput.is_empty() {
        println!("\n## A, B: lock + release of a fresh key per cycle\n");
        println!(
            "| row | tasks | client | cycles/s | p50 ms | p99 ms | CPU µs/cycle | nodes' CPU µs/cycle | errors | leftover keys | ours/floor | per round: median [range] |"
        );
        println!("|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for r in throughput {
            for (name, m) in r.clients(args) {
                println!(
                    "| {} | {} | {name} | {:.0} | {:.3} | {:.3} | {} | {} | {} | {} | {} | {} |",
                    r.row.id(),
                    r.row.tasks(args),
                    get(m, "cycles_per_sec"),
                    get(m, "p50_ms"),
                    get(m, "p99_ms"),
                    // Row Ai cannot tell CPU apart by client.
                    cpu_cell(get(m, "cpu_us_per_cycle")),
                    cpu_cell(get(m, "node_cpu_us_per_cycle")),
                    get(m, "errors"),
                    get(m, "leftover_keys"),
                    match name {
                        "floor-q" | "ping-q" => format!("({:.2}×)", r.ratio_of(name)),
                        _ => r.ratio_cell(name),
                    },
                    match name {
                        "floor-q" => format!("({})", spread(&r.quorum_ratio_rounds)),
                        "ping-q" => format!("({})", spread(&r.ping_ratio_rounds)),
                        _ => r.spread_cell(name),
                    },
                );
            }
        }
    }
    let contended: Vec<_> = results
        .iter()
        .filter(|r| matches!(r.row, Row::Contended { .. }))
        .collect();
    if !contended.is_empty() {
        println!(
            "\n## C: {CONTENDERS} tasks contend for one key (retry pause 5-10 ms, ~0 work inside)\n"
        );
        println!(
            "| row | clients | client | sections/s | wait p50 ms | wait p99 ms | per task min / max | max/min | max holders at once | overlaps | CPU µs/section | nodes' CPU µs/section | errors | leftover keys | ours/floor | per round: median [range] |"
        );
        println!("|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    }
    for r in contended {
        let Row::Contended { clients, .. } = r.row else {
            continue;
        };
        for (name, m) in r.clients(args) {
            println!(
                "| {} | {clients} | {name} | {:.0} | {:.1} | {:.1} | {} / {} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.row.id(),
                get(m, "sections_per_sec"),
                get(m, "wait_p50_ms"),
                get(m, "wait_p99_ms"),
                get(m, "per_task_min"),
                get(m, "per_task_max"),
                get(m, "fairness_max_over_min"),
                get(m, "max_in_cs"),
                get(m, "overlaps"),
                // Row C32i cannot tell CPU apart by client.
                cpu_cell(get(m, "cpu_us_per_section")),
                cpu_cell(get(m, "node_cpu_us_per_section")),
                get(m, "errors"),
                get(m, "leftover_keys"),
                r.ratio_cell(name),
                r.spread_cell(name),
            );
        }
    }
    for r in results.iter().filter(|r| matches!(r.row, Row::Collision)) {
        println!(
            "\n## E: two processes lock one free key at once, the winner holds it {} ms\n",
            COLLISION_HOLD.as_millis()
        );
        println!(
            "| client | collisions | loser holds after the release: p50 ms | p90 ms | p99 ms | max ms | max holders at once | overlaps | errors | leftover keys | p90 ours/floor | per round: median [range] |"
        );
        println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for (name, m) in r.clients(args) {
            println!(
                "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} |",
                get(m, "collisions"),
                get(m, "handover_p50_ms"),
                get(m, "handover_p90_ms"),
                get(m, "handover_p99_ms"),
                get(m, "handover_max_ms"),
                get(m, "max_in_cs"),
                get(m, "overlaps"),
                get(m, "errors"),
                get(m, "leftover_keys"),
                r.ratio_cell(name),
                r.spread_cell(name),
            );
        }
    }
    for r in results.iter().filter(|r| matches!(r.row, Row::Hold)) {
        println!(
            "\n## D: {} locks held for {} s with ttl {} ms, extended every ttl/3\n",
            args.hold_locks,
            args.hold_secs.as_secs_f64(),
            args.hold_ttl.as_millis()
        );
        println!(
            "| client | locks held | acquire s | RSS growth MiB | CPU % of one core | min validity left ms | lost | errors | release s | leftover keys | CPU ours/floor |"
        );
        println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for (name, m) in r.clients(args) {
            println!(
                "| {name} | {} | {:.2} | {:.1} | {:.1} | {:.0} | {} | {} | {:.2} | {} | {} |",
                get(m, "locks"),
                get(m, "acquire_secs"),
                get(m, "rss_growth_mib"),
                get(m, "cpu_pct_of_core"),
                get(m, "min_remaining_ms"),
                get(m, "lost"),
                get(m, "errors"),
                get(m, "release_secs"),
                get(m, "leftover_keys"),
                r.ratio_cell(name),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Command line.

struct Args {
    rows: Vec<String>,
    secs: Duration,
    warmup: Duration,
    rounds: usize,
    hold_locks: usize,
    hold_secs: Duration,
    hold_ttl: Duration,
    node_timeout: Option<Duration>,
    hold_here: bool,
    clients: Vec<&'static str>,
    json: Option<PathBuf>,
}

const USAGE: &str = "usage: bench [--rows A,Ai,B,Bi,C,Ci,Cf,E,D] [--secs N] [--warmup N] [--rounds R] \
[--hold-locks N] [--hold-secs N] [--hold-ttl-ms N] [--node-timeout-ms N] [--clients ours,floor,floor-q,ping-q] [--hold-here] [--json PATH]";

impl Args {
    /// `None` when only the usage was asked for.
    fn parse(mut argv: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
        let mut args = Args {
            rows: ["A", "AI", "B", "BI", "C", "CI", "CF", "E", "D"]
                .map(str::to_owned)
                .to_vec(),
            secs: Duration::from_secs(3),
            warmup: Duration::from_millis(500),
            rounds: 1,
            hold_locks: 10_000,
            hold_secs: Duration::from_secs(30),
            hold_ttl: Duration::from_secs(3),
            node_timeout: None,
            hold_here: false,
            clients: vec!["ours", "floor", "floor-q", "ping-q"],
            json: None,
        };
        let secs = |v: &str, max: f64| -> Result<Duration, String> {
            match v.parse::<f64>() {
                Ok(s) if s > 0.0 && s <= max => Ok(Duration::from_secs_f64(s)),
                _ => Err(format!(
                    "expected seconds in (0, {max}], got {v:?}\n{USAGE}"
                )),
            }
        };
        let count = |v: &str, max: usize| -> Result<usize, String> {
            match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(format!(
                    "expected a count in [1, {max}], got {v:?}\n{USAGE}"
                )),
            }
        };
        while let Some(flag) = argv.next() {
            if flag == "--hold-here" {
                args.hold_here = true;
                continue;
            }
            if flag == "-h" || flag == "--help" {
                println!("{USAGE}");
                return Ok(None);
            }
            let value = argv
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
            match flag.as_str() {
                "--rows" => {
                    args.rows = value
                        .split(',')
                        .map(|r| r.trim().to_ascii_uppercase())
                        .filter(|r| !r.is_empty())
                        .collect();
                    if args.rows.is_empty()
                        || args.rows.iter().any(|r| {
                            !["A", "AI", "B", "BI", "C", "C1", "C32", "CI", "CF", "E", "D"]
                                .contains(&r.as_str())
                        })
                    {
                        return Err(format!(
                            "--rows takes a list of A, Ai, B, Bi, C (or C1, C32), Ci, Cf, E, D\n{USAGE}"
                        ));
                    }
                }
                "--secs" => args.secs = secs(&value, 600.0)?,
                "--warmup" => args.warmup = secs(&value, 60.0)?,
                "--rounds" => args.rounds = count(&value, 100)?,
                "--hold-locks" => args.hold_locks = count(&value, 1_000_000)?,
                "--hold-secs" => args.hold_secs = secs(&value, 3600.0)?,
                "--node-timeout-ms" => {
                    args.node_timeout = Some(Duration::from_millis(count(&value, 60_000)? as u64));
                }
                "--hold-ttl-ms" => {
                    args.hold_ttl = Duration::from_millis(count(&value, 86_400_000)? as u64);
                }
                "--clients" => {
                    args.clients = Vec::new();
                    for client in value.split(',').map(str::trim) {
                        match client {
                            "ours" => args.clients.push("ours"),
                            "floor" => args.clients.push("floor"),
                            "floor-q" => args.clients.push("floor-q"),
                            "ping-q" => args.clients.push("ping-q"),
                            _ => {
                                return Err(format!(
                                    "--clients takes ours, floor, floor-q and ping-q\n{USAGE}"
                                ));
                            }
                        }
                    }
                }
                "--json" => args.json = Some(PathBuf::from(value)),
                _ => return Err(format!("unknown option {flag}\n{USAGE}")),
            }
        }
        Ok(Some(args))
    }
}
