//! Running a scenario: the topology, the profile (seed and duration), the check and the report.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use redlock_tests::{Cluster, Persistence, ProxySet};

use crate::checker::{self, CheckConfig, Property, Report};
use crate::history::{self, Nanos, Record, Recorder, nanos};
use crate::nemesis::{Nemesis, NemesisLog, Scenario};
use crate::workload::{self, Client, Settings, World};

/// Nodes of every scenario.
pub(crate) const NODES: usize = 5;

/// Clients of a random scenario.
pub(crate) const CLIENTS: usize = 5;

/// Resources they contend for: few, so that contention is high.
pub(crate) const RESOURCES: &[&str] = &["r0", "r1"];

/// Seconds per random scenario when `REDLOCK_CHAOS_SECS` is unset (the quick profile).
const QUICK_SECS: f64 = 6.0;

/// The settings of random scenarios: short leases and node timeouts keep runs quick.
pub(crate) fn settings() -> Settings {
    Settings {
        ttl: Duration::from_millis(500),
        node_timeout: Duration::from_millis(50),
        attempts: 3,
        retry_delay: Duration::from_millis(20),
        fencing: true,
    }
}

/// How long and with which seed to run, from the environment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Profile {
    pub(crate) seed: u64,
    pub(crate) duration: Duration,
    /// Write the history even when the run passes (`REDLOCK_CHAOS_DUMP=1`).
    pub(crate) dump_always: bool,
}

impl Profile {
    /// `REDLOCK_CHAOS_SEED` (random when unset), `REDLOCK_CHAOS_SECS` (per random scenario,
    /// 6 s when unset), `REDLOCK_CHAOS_DUMP`.
    pub(crate) fn from_env() -> Profile {
        let seed = std::env::var("REDLOCK_CHAOS_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(rand::random);
        let secs = std::env::var("REDLOCK_CHAOS_SECS")
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .unwrap_or(QUICK_SECS);
        let dump_always =
            std::env::var("REDLOCK_CHAOS_DUMP").is_ok_and(|v| v != "0" && !v.is_empty());
        Profile {
            seed,
            duration: Duration::from_secs_f64(secs),
            dump_always,
        }
    }
}

/// Nodes, one proxy set per client, and the clients built over them.
pub(crate) struct Rig {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) proxies: Vec<Arc<ProxySet>>,
    pub(crate) clients: Vec<Client>,
    pub(crate) recorder: Arc<Recorder>,
}

impl Rig {
    pub(crate) fn start(persistence: Persistence, clients: usize, settings: Settings) -> Rig {
        let cluster =
            Arc::new(Cluster::start_with(NODES, persistence).expect("redis-server nodes start"));
        let recorder = Arc::new(Recorder::new());
        let proxies: Vec<Arc<ProxySet>> = (0..clients)
            .map(|_| Arc::new(ProxySet::new(&cluster).expect("proxies start")))
            .collect();
        let clients = proxies
            .iter()
            .enumerate()
            .map(|(id, set)| Client::new(id, set.urls(), settings, recorder.clone()))
            .collect();
        Rig {
            cluster,
            proxies,
            clients,
            recorder,
        }
    }
}

/// The bounds of P6 for `settings`.
pub(crate) fn bounds(settings: Settings) -> CheckConfig {
    CheckConfig {
        fenced: settings.fencing,
        acquire_bound: nanos(settings.acquire_bound()),
        extend_bound: nanos(settings.extend_bound()),
        release_bound: nanos(settings.release_bound()),
        ..CheckConfig::default()
    }
}

/// `[from, to]` minus `holes`.
fn complement(from: Nanos, to: Nanos, holes: &[(Nanos, Nanos)]) -> Vec<(Nanos, Nanos)> {
    let mut holes = holes.to_vec();
    holes.sort_unstable();
    let mut out = Vec::new();
    let mut at = from;
    for (h0, h1) in holes {
        if h0 > at {
            out.push((at, h0.min(to)));
        }
        at = at.max(h1);
        if at >= to {
            break;
        }
    }
    if at < to {
        out.push((at, to));
    }
    out.retain(|(a, b)| b > a);
    out
}

/// Checks `records` and fails the test, with the history written to `target/chaos/`, if any
/// of `asserted` (or an `extra` finding) is violated; prints a summary either way.
pub(crate) fn judge(
    name: &str,
    profile: &Profile,
    records: &[Record],
    config: &CheckConfig,
    asserted: &[Property],
    extra: &[String],
) -> Report {
    let report = checker::check(records, config);
    let failed = report.among(asserted);
    eprintln!(
        "chaos {name}: seed={} {} violations={} (asserted: {}), other findings: {}",
        profile.seed,
        report.stats,
        failed.len() + extra.len(),
        asserted.len(),
        report.summary()
    );
    if !failed.is_empty() || !extra.is_empty() || profile.dump_always {
        match history::dump(name, profile.seed, records) {
            Ok(path) => eprintln!("chaos {name}: history written to {}", path.display()),
            Err(e) => eprintln!("chaos {name}: cannot write the history: {e}"),
        }
    }
    if !failed.is_empty() || !extra.is_empty() {
        let details: Vec<String> = failed
            .iter()
            .take(10)
            .map(|v| format!("  {}: {}", v.property, v.detail))
            .chain(extra.iter().take(10).map(|e| format!("  {e}")))
            .collect();
        panic!(
            "chaos {name} (REDLOCK_CHAOS_SEED={} reproduces the schedule): {} violation(s)\n{}",
            profile.seed,
            failed.len() + extra.len(),
            details.join("\n")
        );
    }
    report
}

/// Runs a random scenario for the profile's duration and asserts `asserted` (plus what `extra`
/// finds in the history and nemesis log).
pub(crate) async fn run(
    scenario: Scenario,
    asserted: &[Property],
    extra: impl Fn(&[Record], &NemesisLog) -> Vec<String>,
) -> Report {
    run_shaped(scenario, Shape::default(), asserted, extra).await
}

/// How the clients of a run are built.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Tasks per client sharing its `Redlock`: with more than one, they also queue for each
    /// other's locks inside the client and take them over from each other.
    pub(crate) tasks_per_client: usize,
    /// Fenced clients (the default) never use the wait queue; unfenced ones queue on each
    /// resource's sequencer node when they find it held.
    pub(crate) fencing: bool,
}

impl Default for Shape {
    fn default() -> Shape {
        Shape {
            tasks_per_client: 1,
            fencing: true,
        }
    }
}

/// [`run`] with clients of another [`Shape`].
pub(crate) async fn run_shaped(
    scenario: Scenario,
    shape: Shape,
    asserted: &[Property],
    extra: impl Fn(&[Record], &NemesisLog) -> Vec<String>,
) -> Report {
    let profile = Profile::from_env();
    // Its own name (and history file) for every shape but the default.
    let mut name = scenario.name().to_owned();
    if shape.tasks_per_client > 1 {
        name += &format!("-{}-tasks-per-client", shape.tasks_per_client);
    }
    if !shape.fencing {
        name += "-unfenced";
    }
    eprintln!(
        "chaos {name}: REDLOCK_CHAOS_SEED={} REDLOCK_CHAOS_SECS={:.1}",
        profile.seed,
        profile.duration.as_secs_f64()
    );
    let settings = Settings {
        fencing: shape.fencing,
        ..settings()
    };
    let persistence = match scenario {
        Scenario::S5 => Persistence::AofAlways,
        _ => Persistence::None,
    };
    let rig = Rig::start(persistence, CLIENTS, settings);
    let world = Arc::new(World::new(rig.recorder.clone(), RESOURCES));
    let start = rig.recorder.now();
    let stop = Instant::now() + profile.duration;

    let nemesis = Nemesis::new(
        rig.cluster.clone(),
        rig.proxies.clone(),
        rig.recorder.clone(),
        settings.ttl,
        profile.seed,
        stop,
    );
    let nemesis = thread::spawn(move || nemesis.run(scenario));
    let tasks: Vec<_> = rig
        .clients
        .iter()
        .flat_map(|client| (0..shape.tasks_per_client).map(move |task| (client.clone(), task)))
        .map(|(client, task)| {
            tokio::spawn(workload::run_client(
                client,
                task,
                world.clone(),
                profile.seed,
                stop,
            ))
        })
        .collect();
    let mut clients_done = Vec::new();
    for task in tasks {
        clients_done.push(task.await);
    }
    let end = rig.recorder.now();
    // Join the nemesis before anything can panic: it holds the cluster, whose drop is what
    // kills the servers.
    let log = tokio::task::spawn_blocking(move || nemesis.join())
        .await
        .expect("join nemesis")
        .expect("nemesis thread");
    for done in clients_done {
        done.expect("client task");
    }
    world.plain.finish();
    world.fenced.finish();

    let mut config = bounds(settings);
    let warmup = nanos(Duration::from_millis(300));
    config.healthy = complement(start + warmup, end, &log.unhealthy);
    config.progress_gap = nanos((settings.ttl * 6).max(Duration::from_secs(2)));
    config.majority_down = log.majority_down.clone();
    let records = rig.recorder.snapshot();
    let mut extra = extra(&records, &log);
    if !shape.fencing && command_calls(&rig.cluster, "rpush") == 0 {
        extra.push(format!("{name}: no waiter ever joined a wait queue"));
    }
    if !shape.fencing && command_calls(&rig.cluster, "psetex") == 0 {
        extra.push(format!(
            "{name}: no release ever handed a key over to a waiter"
        ));
    }
    // A node that is no resource's sequencer sets a key with `PSETEX` only in a one-trip
    // hand-over (the holder naming its successor to every node).
    let one_trip: i64 = rig
        .cluster
        .iter()
        .enumerate()
        .filter(|(index, _)| {
            !RESOURCES
                .iter()
                .any(|r| sequencer(&format!("chaos:{r}")) == *index)
        })
        .filter_map(|(_, node)| node.command_calls("psetex").ok())
        .sum();
    if !shape.fencing && one_trip == 0 {
        extra.push(format!(
            "{name}: no release ever handed a key over in one trip"
        ));
    }
    judge(&name, &profile, &records, &config, asserted, &extra)
}

/// The node a client asks first for `key` (FNV-1a over the key, as the client picks it).
fn sequencer(key: &str) -> usize {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    usize::try_from(hash % NODES as u64).unwrap_or(0)
}

/// How many times the nodes that answer ran `command` (`INFO commandstats`). The wait queue's
/// script is the only caller of `RPUSH` (a waiter joins a queue), and a release handing a key
/// over to a waiter the only caller of `PSETEX`.
fn command_calls(cluster: &Cluster, command: &str) -> i64 {
    cluster
        .iter()
        .filter_map(|node| node.command_calls(command).ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complement_cuts_holes_out_of_a_span() {
        assert_eq!(complement(0, 100, &[]), vec![(0, 100)]);
        assert_eq!(
            complement(0, 100, &[(10, 20), (50, 60)]),
            vec![(0, 10), (20, 50), (60, 100)]
        );
        assert_eq!(
            complement(0, 100, &[(50, 60), (10, 55)]),
            vec![(0, 10), (60, 100)]
        );
        assert_eq!(complement(0, 100, &[(0, 150)]), vec![]);
    }
}
