//! Negative controls (correctness.md §7.6–7.7): directed scripts of faults Redlock does *not*
//! survive. Each must be detected by the checker; a checker that cannot see a violation proves
//! nothing. U1+ is the positive twin of U1: the same script with a delayed restart is safe.
//!
//! Topology: five nodes A–E, two clients X and Y with their own proxies. X cannot reach D and E,
//! so it locks through A, B, C; Y cannot reach A and B, so it locks through C, D, E. C is the
//! only node both majorities share: whatever makes C forget X's key lets Y in while X holds.

use std::time::Duration;

use redlock_tests::{Persistence, ProxyMode};

use crate::checker::{Property, Report, SAFE};
use crate::history::{Fault, Record};
use crate::scenario::{Profile, Rig, bounds, judge};
use crate::workload::{Held, Settings};

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const D: usize = 3;
const E: usize = 4;

/// Directed scripts use a longer lease than the random scenarios, to leave room for the
/// interleaving on a loaded machine.
fn directed(fencing: bool) -> Settings {
    Settings {
        ttl: Duration::from_millis(1500),
        node_timeout: Duration::from_millis(50),
        attempts: 1,
        retry_delay: Duration::from_millis(20),
        fencing,
    }
}

/// How C forgets X's key.
#[derive(Debug, Clone, Copy)]
enum Amnesia {
    /// kill -9 and immediate restart without persistence (U1).
    ImmediateRestart,
    /// kill -9 and restart without persistence after ttl + drift + margin (U1+, safe).
    DelayedRestart,
    /// kill -9 and restart from a copy of the AOF directory taken before X acquired (U2).
    Rollback,
    /// C's clock jumps past the expiry of X's key (U3, emulated by PEXPIRE 1).
    ClockJump,
}

/// A client's attempts, one at a time, until one succeeds; bounded. Every acquisition of these
/// scripts goes through it: with one attempt per call and a 50 ms node timeout, a single call can
/// fail when a loaded machine holds a node's reply back (this made U2 fail once in nine full
/// runs with one core kept busy), and the scripts are about what happens once the lock is held.
async fn acquire_eventually(rig: &Rig, client: usize, resource: &str, within: Duration) -> Held {
    let end = tokio::time::Instant::now() + within;
    for _ in 0..1_000 {
        if let Some(held) = rig.clients[client].acquire(resource).await {
            return held;
        }
        if tokio::time::Instant::now() >= end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("client {client} never acquired {resource} within {within:?}");
}

async fn amnesia(name: &str, how: Amnesia, asserted: &[Property]) -> Report {
    let profile = Profile::from_env();
    let settings = directed(false);
    let persistence = match how {
        Amnesia::Rollback => Persistence::AofAlways,
        _ => Persistence::None,
    };
    let rig = Rig::start(persistence, 2, settings);
    let cluster = rig.cluster.clone();
    let snapshot = match how {
        Amnesia::Rollback => Some(cluster[C].snapshot().expect("snapshot of C")),
        _ => None,
    };

    rig.proxies[0].set_some(&[D, E], ProxyMode::Blackhole);
    let hx = acquire_eventually(&rig, 0, "r", settings.ttl * 3).await;
    rig.proxies[1].set_some(&[A, B], ProxyMode::Blackhole);

    let t0 = rig.recorder.now();
    let delay = settings.ttl + Duration::from_millis(250);
    tokio::task::spawn_blocking(move || match how {
        Amnesia::ImmediateRestart => cluster[C].restart(),
        Amnesia::DelayedRestart => cluster[C].restart_after(delay),
        Amnesia::Rollback => cluster[C].restart_from(snapshot.as_ref().expect("snapshot")),
        Amnesia::ClockJump => cluster[C].jump_clock("chaos:*").map(drop),
    })
    .await
    .expect("fault task")
    .expect("fault on C");
    rig.recorder.push(Record::Fault(Fault {
        t_start: t0,
        t_end: rig.recorder.now(),
        what: format!("{how:?} of node C"),
        client: None,
    }));

    let hy = acquire_eventually(&rig, 1, "r", settings.ttl * 3).await;
    rig.clients[0].release(hx).await;
    rig.clients[1].release(hy).await;
    let records = rig.recorder.snapshot();
    judge(name, &profile, &records, &bounds(settings), asserted, &[])
}

/// U1: a node restarted empty at once lets a second client in while the first holds the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u1_immediate_restart_without_persistence_breaks_mutual_exclusion() {
    let report = amnesia("u1-immediate-restart", Amnesia::ImmediateRestart, &[]).await;
    assert!(
        report.has(Property::Overlap),
        "the checker missed U1: {}",
        report.summary()
    );
}

/// U1+: the same script, with C kept down for longer than the ttl, is safe: Y gets in only
/// after X's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u1_plus_delayed_restart_without_persistence_is_safe() {
    let asserted: Vec<Property> = SAFE
        .iter()
        .copied()
        .filter(|p| *p != Property::Progress)
        .collect();
    amnesia(
        "u1-plus-delayed-restart",
        Amnesia::DelayedRestart,
        &asserted,
    )
    .await;
}

/// U2: `appendfsync always` does not help a node restored from an older copy of its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u2_rollback_restart_breaks_mutual_exclusion() {
    let report = amnesia("u2-rollback-restart", Amnesia::Rollback, &[]).await;
    assert!(
        report.has(Property::Overlap),
        "the checker missed U2: {}",
        report.summary()
    );
}

/// U3: a forward clock jump on one node expires X's key early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u3_clock_jump_breaks_mutual_exclusion() {
    let report = amnesia("u3-clock-jump", Amnesia::ClockJump, &[]).await;
    assert!(
        report.has(Property::Overlap),
        "the checker missed U3: {}",
        report.summary()
    );
}

/// U5: fence counters live only in memory without persistence. A delayed restart protects the
/// lock keys (they would have expired anyway) but not the counters, so a later acquisition can
/// get a smaller token than an earlier one: P3 is violated while P1 holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u5_fence_counters_regress_after_delayed_restart_without_persistence() {
    let profile = Profile::from_env();
    let settings = directed(true);
    let rig = Rig::start(Persistence::None, 2, settings);
    let cluster = rig.cluster.clone();

    rig.proxies[0].set_some(&[D, E], ProxyMode::Blackhole);
    let mut last = 0;
    for _ in 0..6 {
        let held = acquire_eventually(&rig, 0, "r", settings.ttl * 3).await;
        last = held.token().expect("fenced");
        rig.clients[0].release(held).await;
    }
    // Six grants through A, B, C; an attempt that failed in its second phase may have raised a
    // counter once more.
    assert!(last >= 6, "counters on A, B, C reach 6, got {last}");

    let t0 = rig.recorder.now();
    let delay = settings.ttl + Duration::from_millis(250);
    tokio::task::spawn_blocking(move || cluster[C].restart_after(delay))
        .await
        .expect("fault task")
        .expect("delayed restart of C");
    rig.recorder.push(Record::Fault(Fault {
        t_start: t0,
        t_end: rig.recorder.now(),
        what: format!("kill -9 C, empty restart after {delay:?}"),
        client: None,
    }));

    rig.proxies[1].set_some(&[A, B], ProxyMode::Blackhole);
    let held = acquire_eventually(&rig, 1, "r", settings.ttl * 3).await;
    let token = held.token().expect("fenced");
    rig.clients[1].release(held).await;
    assert!(
        token < last,
        "expected a regressed token, got {token} after {last}"
    );

    let records = rig.recorder.snapshot();
    let report = judge(
        "u5-fence-regression",
        &profile,
        &records,
        &bounds(settings),
        &[Property::Overlap],
        &[],
    );
    assert!(
        report.has(Property::Fencing),
        "the checker missed U5: {}",
        report.summary()
    );
}

/// U6: the rejected "INCR on every node, token = max over the majority" scheme (correctness.md
/// §4.2), run by hand against real nodes: counters 10, 10, 10, 10, 50; X locks C, D, E and gets
/// 51; Y then locks A, B, C and gets 12. The checker must flag the backward token.
#[test]
fn u6_incr_max_of_a_majority_is_not_monotonic() {
    let cluster = redlock_tests::Cluster::start(5).expect("redis-server nodes start");
    for (i, start) in [10, 10, 10, 10, 50].into_iter().enumerate() {
        cluster[i].set("u6:fence", &start.to_string()).expect("SET");
    }
    let recorder = crate::history::Recorder::new();
    let lease = crate::history::nanos(directed(true).lease());
    let strawman = |client: usize, nodes: [usize; 3]| {
        let acq = recorder.next_acq();
        let t_invoke = recorder.now();
        let mut token = 0;
        for i in nodes {
            let reply = cluster[i]
                .query(&["SET", "u6:lock", "x", "NX", "PX", "1500"])
                .expect("SET NX");
            assert_eq!(reply.as_str(), Some("OK"));
            let n = cluster[i].query(&["INCR", "u6:fence"]).expect("INCR");
            token = token.max(n.as_int().expect("integer"));
        }
        let t_return = recorder.now();
        recorder.push(Record::Acquire(crate::history::Acquire {
            acq,
            client,
            resource: "r".to_owned(),
            t_invoke,
            t_return,
            outcome: crate::history::Outcome::Ok,
            lease,
            deadline: Some(t_invoke + lease),
            token: u64::try_from(token).ok(),
            error: None,
        }));
        let t_release = recorder.now();
        for i in nodes {
            cluster[i].query(&["DEL", "u6:lock"]).expect("DEL");
        }
        recorder.push(Record::Release(crate::history::Release {
            acq,
            client,
            resource: "r".to_owned(),
            t_invoke: t_release,
            t_return: recorder.now(),
            outcome: crate::history::Outcome::Ok,
            deadline: Some(t_invoke + lease),
            lease,
            error: None,
        }));
        token
    };
    assert_eq!(strawman(0, [C, D, E]), 51);
    assert_eq!(strawman(1, [A, B, C]), 12);
    let report = crate::checker::check(&recorder.snapshot(), &bounds(directed(true)));
    assert!(
        report.has(Property::Fencing),
        "the checker missed U6: {}",
        report.summary()
    );
    assert!(!report.has(Property::Overlap), "{}", report.summary());
}
