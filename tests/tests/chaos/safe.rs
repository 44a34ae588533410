//! Safe random scenarios: the faults Redlock is meant to survive. Each asserts P1–P6 as
//! applicable on a seeded schedule (`REDLOCK_CHAOS_SEED`) for `REDLOCK_CHAOS_SECS` seconds.

use crate::checker::{Property, SAFE};
use crate::history::{Outcome, Record};
use crate::nemesis::{NemesisLog, Scenario};
use crate::scenario::{Shape, run, run_shaped};

/// The safe properties but P3, for runs where fence counters can be lost.
fn without_fencing() -> Vec<Property> {
    SAFE.iter()
        .copied()
        .filter(|p| *p != Property::Fencing)
        .collect()
}

fn nothing(_: &[Record], _: &NemesisLog) -> Vec<String> {
    Vec::new()
}

/// Baseline: contention alone never breaks mutual exclusion, and every resource keeps moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s0_no_faults_is_safe_and_live() {
    let report = run(Scenario::S0, SAFE, nothing).await;
    assert!(report.stats.grants > 0, "no acquisition at all");
}

/// A paused node keeps wall time, so its keys expire on resume; SETs queued while it was
/// stopped run on resume and are removed by the releases queued behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_paused_minority_is_safe_and_live() {
    run(Scenario::S1, SAFE, nothing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_killed_minority_is_safe_and_live() {
    run(Scenario::S2, SAFE, nothing).await;
}

/// Delays only shrink validity or make attempts fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_latency_on_a_minority_is_safe_and_live() {
    run(Scenario::S3, SAFE, nothing).await;
}

/// Each client loses a different minority: majorities still intersect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_asymmetric_partitions_are_safe_and_live() {
    run(Scenario::S4, SAFE, nothing).await;
}

/// Three tasks per client share its `Redlock`, under the asymmetric partitions of S4 (blackholed,
/// refused and reset connections, so links are replaced mid-run): tasks of one client queue for
/// each other's locks and take them over with their SETs right behind the release's deletes
/// (or, where a replaced connection lets a SET overtake a delete, lose that vote). The history
/// must show such hand-overs, and every safe property must hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_tasks_sharing_a_client_hand_over_safely_under_partitions() {
    let shape = Shape {
        tasks_per_client: 3,
        ..Shape::default()
    };
    run_shaped(Scenario::S4, shape, SAFE, |records, _| {
        if local_hand_overs(records) > 0 {
            Vec::new()
        } else {
            vec!["s4 shared: no lock passed between two tasks of one client".to_owned()]
        }
    })
    .await;
}

/// Unfenced clients wait in each resource's queue on its sequencer node, and S1 pauses nodes,
/// the sequencers among them: waiters must still be served safely, and every resource keep
/// moving, while the node that orders them is frozen. (Fenced clients, as in every other
/// scenario, never use the queue.) Two tasks per client, so local hand-overs run too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_unfenced_waiters_queue_safely_while_a_sequencer_is_paused() {
    unfenced_waiters(Scenario::S1).await;
}

/// S4's partitions with unfenced clients: a client may lose the sequencer node its queue lives
/// on while the others still reach it, and must still be safe and the resources keep moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_unfenced_waiters_queue_safely_under_partitions() {
    unfenced_waiters(Scenario::S4).await;
}

/// `scenario` with unfenced clients of two tasks each, asserting every property but P3 (no
/// fencing tokens) and that locks were granted (the runner also checks that waiters queued).
async fn unfenced_waiters(scenario: Scenario) {
    let shape = Shape {
        tasks_per_client: 2,
        fencing: false,
    };
    let report = run_shaped(scenario, shape, &without_fencing(), nothing).await;
    assert!(report.stats.grants > 0, "no acquisition at all");
}

/// Granted acquisitions that were waiting while another task of the same client released the
/// same resource: the lock passed from one task to the other inside the client.
fn local_hand_overs(records: &[Record]) -> usize {
    let releases: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            Record::Release(r) => Some(r),
            _ => None,
        })
        .collect();
    records
        .iter()
        .filter_map(|r| match r {
            Record::Acquire(a) if a.outcome == Outcome::Ok => Some(a),
            _ => None,
        })
        .filter(|a| {
            releases.iter().any(|r| {
                r.client == a.client
                    && r.resource == a.resource
                    && r.acq != a.acq
                    && a.t_invoke < r.t_invoke
                    && r.t_invoke < a.t_return
            })
        })
        .count()
}

/// With `appendfsync always` a restarted node reloads its keys (with their absolute expiry) and
/// fence counters, so even several nodes restarting at once are safe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_kill_and_immediate_restart_with_aof_always_is_safe() {
    run(Scenario::S5, SAFE, nothing).await;
}

/// A node restarted empty after more than the ttl can only have lost keys that had expired.
/// Fence counters are lost with it, so token order (P3) is not asserted here: see
/// `u5_fence_counters_regress_after_delayed_restart_without_persistence`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_delayed_restart_without_persistence_is_safe_for_locks() {
    run(Scenario::S6, &without_fencing(), nothing).await;
}

/// With a majority down nothing is granted and no call hangs; once it recovers, locks are
/// granted again. Without persistence a killed majority takes the fence counters with it, so
/// token order (P3) is not asserted: that is U5 at majority scale, and runs of this scenario do
/// show duplicate and regressed tokens after a kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_majority_down_is_unavailable_but_safe_without_hangs() {
    let report = run(Scenario::S7, &without_fencing(), |records, log| {
        let tried = records.iter().any(|r| {
            matches!(r, Record::Acquire(a) if log
                .majority_down
                .iter()
                .any(|(d0, d1)| a.t_invoke >= *d0 && a.t_invoke <= *d1))
        });
        if tried || log.majority_down.is_empty() {
            Vec::new()
        } else {
            vec!["s7: no acquisition was attempted while the majority was down".to_owned()]
        }
    })
    .await;
    assert!(
        report.stats.unavailable > 0,
        "the majority outage was never seen"
    );
}

/// Kleppmann's "replies in flight": the nodes apply the SETs, the client hears back after the
/// ttl. Such an acquisition must fail, and its keys must not block the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_replies_delayed_past_the_ttl_fail_the_acquisition() {
    run(Scenario::S8, SAFE, |records, _| {
        let windows: Vec<(u64, u64, usize)> = records
            .iter()
            .filter_map(|r| match r {
                Record::Fault(f) => f.client.map(|c| (f.t_start, f.t_end, c)),
                _ => None,
            })
            .collect();
        let mut tried = 0;
        let mut findings = Vec::new();
        for record in records {
            let Record::Acquire(a) = record else { continue };
            let during = windows
                .iter()
                .any(|(t0, t1, c)| *c == a.client && a.t_invoke >= *t0 && a.t_return <= *t1);
            if !during {
                continue;
            }
            tried += 1;
            if a.outcome == Outcome::Ok {
                findings.push(format!(
                    "s8: acq {} of client {} granted at {} while its replies were delayed past the ttl",
                    a.acq, a.client, a.t_return
                ));
            }
        }
        if tried == 0 && !windows.is_empty() {
            findings.push("s8: no acquisition ran entirely inside a delayed-replies window".to_owned());
        }
        findings
    })
    .await;
}
