use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use apalis::prelude::*;
use redlock_apalis::{JobLockConfig, JobLockExt};

use crate::common::*;

/// The first run of a job blocks its worker's thread (and so the worker's heartbeat, which runs
/// on the same task) until another worker has been handed the same job and refused it, then
/// completes at once. Later runs work for `job.work_ms`.
async fn stall_first_run(
    job: Job,
    tracker: Data<Arc<Tracker>>,
    worker: WorkerContext,
) -> Result<(), BoxDynError> {
    let run = tracker.enter(&job.key, worker.name());
    if tracker.read(|r| r.started[&job.key]) == 1 {
        let deadline = Instant::now() + Duration::from_secs(20);
        // `block_in_place` hands this thread's other tasks (the lock's watchdog among them) to
        // a fresh thread, so only this worker freezes, as a CPU-bound handler would freeze it.
        tokio::task::block_in_place(|| {
            while !tracker.read(|r| r.outcomes(&job.key).contains(&Outcome::Locked)) {
                assert!(Instant::now() < deadline, "the job was never re-delivered");
                std::thread::sleep(Duration::from_millis(10));
            }
        });
    } else {
        tokio::time::sleep(Duration::from_millis(job.work_ms)).await;
    }
    run.complete();
    Ok(())
}

/// Worker A takes a job and stalls past apalis-redis's orphan window (heartbeat 1 s, 2 missed
/// beats), so worker B re-enqueues A's in-flight job and receives it while A still runs it: the
/// duplicate delivery DESIGN.md §1 exists for. B's guard finds the key locked and hands the job
/// back. A then completes; apalis stops A's worker on its next (failed) heartbeat and drops the
/// guard's future, but the completion marker is written by a task that owns the lock, so B's
/// next delivery acknowledges the job without running it. The handler completes once and never
/// runs on both workers at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_job_redelivered_from_a_stalled_worker_is_not_run_twice() {
    let env = Env::start(Duration::from_secs(1));
    let config = queue_config("stall");
    let tracker = Tracker::new();
    let mut fleet = Fleet::default();
    for i in 0..2 {
        let guarded = stall_first_run.lock_jobs_with(
            env.redlock.clone(),
            env.markers.clone(),
            JobLockConfig::new().key_fn(|job: &Job| job.key.clone()),
        );
        let worker = WorkerBuilder::new(worker_name("stall", i))
            .backend(env.storage(&config).await.poll_with_interval(POLL))
            .data(tracker.clone())
            .build(Observe::new(guarded, tracker.clone()));
        fleet.push(tokio::spawn(async move {
            let _ = worker.run().await;
        }));
    }
    eventually("both workers registered", Duration::from_secs(5), || {
        env.count("ZCARD", &config.workers_set()) == 2
    })
    .await;

    let started = Instant::now();
    let mut producer = env.storage(&config).await;
    producer.push(Job::new("stalled", 10)).await.unwrap();
    eventually("the job acknowledged", Duration::from_secs(20), || {
        env.count("SCARD", &config.done_jobs_set()) == 1 && env.queue_is_idle(&config)
    })
    .await;

    tracker.read(|r| {
        println!(
            "stall: {:?} in {:?}",
            r.outcomes("stalled"),
            started.elapsed()
        );
        assert!(r.overlaps.is_empty(), "overlapping runs: {:?}", r.overlaps);
        assert_eq!(r.started["stalled"], 1);
        assert_eq!(r.completed["stalled"], 1);
        assert!(r.dropped.is_empty());
        // B was refused while A ran, then acknowledged the job without running it. A's own
        // outcome may never be observed: apalis drops A's future once its heartbeat fails.
        let outcomes = r.outcomes("stalled");
        assert!(outcomes.contains(&Outcome::Locked), "{outcomes:?}");
        assert_eq!(outcomes.last(), Some(&Outcome::Skipped), "{outcomes:?}");
    });
    assert_eq!(env.count("SCARD", &config.dead_jobs_set()), 0);
}
