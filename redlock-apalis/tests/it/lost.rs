use std::{sync::Arc, time::Duration};

use apalis::prelude::*;
use redlock_apalis::{JobLockConfig, JobLockExt};

use crate::common::*;

/// The first run of a job waits (for up to 20 s) for the test to drop it; later runs work for
/// `job.work_ms`.
async fn hang_first_run(
    job: Job,
    tracker: Data<Arc<Tracker>>,
    worker: WorkerContext,
) -> Result<(), BoxDynError> {
    let run = tracker.enter(&job.key, worker.name());
    if tracker.read(|r| r.started[&job.key]) == 1 {
        tokio::time::sleep(Duration::from_secs(20)).await;
    } else {
        tokio::time::sleep(Duration::from_millis(job.work_ms)).await;
    }
    run.complete();
    Ok(())
}

/// While a job runs, two of the three lock nodes freeze: extensions fail, the lock's deadline
/// passes, and the guard drops the handler's future at its await point and fails the attempt
/// with `JobLockLost`. Once the nodes are back, apalis-redis delivers the job again and it
/// completes, exactly once in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_lock_drops_the_job_and_it_completes_once_later() {
    let env = Env::start(Duration::from_millis(600));
    let config = queue_config("lost");
    let tracker = Tracker::new();
    let mut fleet = Fleet::default();
    for i in 0..2 {
        let guarded = hang_first_run.lock_jobs_with(
            env.redlock.clone(),
            env.markers.clone(),
            JobLockConfig::new().key_fn(|job: &Job| job.key.clone()),
        );
        let worker = WorkerBuilder::new(worker_name("lost", i))
            .backend(env.storage(&config).await.poll_with_interval(POLL))
            .data(tracker.clone())
            .build(Observe::new(guarded, tracker.clone()));
        fleet.push(tokio::spawn(async move {
            let _ = worker.run().await;
        }));
    }
    let mut producer = env.storage(&config).await;
    producer.push(Job::new("fragile", 10)).await.unwrap();

    eventually("the first run", Duration::from_secs(10), || {
        tracker.read(|r| r.started.contains_key("fragile"))
    })
    .await;
    env.cluster[0].pause().unwrap();
    env.cluster[1].pause().unwrap();
    eventually("the run dropped", Duration::from_secs(5), || {
        tracker.read(|r| r.dropped.contains_key("fragile"))
    })
    .await;
    env.cluster[0].resume().unwrap();
    env.cluster[1].resume().unwrap();

    eventually("the job acknowledged", Duration::from_secs(20), || {
        env.count("SCARD", &config.done_jobs_set()) == 1 && env.queue_is_idle(&config)
    })
    .await;
    tracker.read(|r| {
        println!("lost: {:?}", r.outcomes("fragile"));
        assert!(r.overlaps.is_empty(), "overlapping runs: {:?}", r.overlaps);
        assert_eq!(r.dropped["fragile"], 1);
        assert_eq!(r.completed["fragile"], 1);
        let outcomes = r.outcomes("fragile");
        assert_eq!(outcomes.first(), Some(&Outcome::Lost), "{outcomes:?}");
        assert_eq!(outcomes.last(), Some(&Outcome::Ran), "{outcomes:?}");
        assert_eq!(outcomes.iter().filter(|o| **o == Outcome::Ran).count(), 1);
    });
    assert_eq!(env.count("SCARD", &config.dead_jobs_set()), 0);
}
