use std::time::{Duration, Instant};

use apalis::prelude::*;
use redlock_apalis::{JobLockConfig, JobLockExt};

use crate::common::*;

const WORKERS: usize = 4;
const UNIQUE: usize = 350;
const DUPLICATE_PUSHES: usize = 100;
const REDELIVERIES: usize = 50;

/// 500 deliveries over four workers: 350 distinct keys, 100 more pushes of keys already pushed
/// (pushed in the same shuffled batch, so many run into their original while it runs), and 50
/// re-deliveries of task ids the queue had already acknowledged, pushed back onto the active
/// list as apalis-redis does with an orphaned worker's jobs. Every key's handler completes
/// exactly once, no two handlers of a key ever overlap, and every delivery is acknowledged: 350
/// runs and 150 skips, with contention (and slow nodes) only ever costing rescheduled attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_completes_once_across_a_fleet_with_duplicates_and_redeliveries() {
    let env = Env::start(Duration::from_secs(1));
    let config = queue_config("fleet").batch_size(4);
    let tracker = Tracker::new();
    let mut fleet = Fleet::default();
    for i in 0..WORKERS {
        let guarded = work.lock_jobs_with(
            env.redlock.clone(),
            env.markers.clone(),
            JobLockConfig::new().key_fn(|job: &Job| job.key.clone()),
        );
        let worker = WorkerBuilder::new(worker_name("fleet", i))
            .backend(env.storage(&config).await.poll_with_interval(POLL))
            .data(tracker.clone())
            .retry(RetryPolicy::retries(2).retry_if(redlock_apalis::not_locked))
            .build(Observe::new(guarded, tracker.clone()));
        fleet.push(tokio::spawn(async move {
            let _ = worker.run().await;
        }));
    }

    // Keys 0..350 once each, plus 100 distinct keys a second time; shuffled by a fixed LCG so
    // that duplicates land anywhere in the batch, often next to their original.
    let mut jobs: Vec<Job> = (0..UNIQUE)
        .chain((0..DUPLICATE_PUSHES).map(|i| (i * 37) % UNIQUE))
        .map(|k| Job::new(format!("k{k}"), 2 + (k as u64 * 7) % 20))
        .collect();
    let mut seed: u64 = 0x5eed;
    for i in (1..jobs.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        jobs.swap(i, (seed >> 33) as usize % (i + 1));
    }
    let started = Instant::now();
    let mut producer = env.storage(&config).await;
    producer.push_bulk(jobs).await.unwrap();

    // Re-deliver 50 acknowledged task ids, as an orphan re-enqueue would.
    let done = config.done_jobs_set();
    eventually("50 acknowledged jobs", Duration::from_secs(20), || {
        env.count("SCARD", &done) >= REDELIVERIES as i64
    })
    .await;
    let members = env.queue.query(&["SRANDMEMBER", &done, "50"]).unwrap();
    let ids: Vec<&str> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), REDELIVERIES);
    let active = config.active_jobs_list();
    let mut rpush = vec!["RPUSH", active.as_str()];
    rpush.extend(ids);
    env.queue.query(&rpush).unwrap();

    let pushed = (UNIQUE + DUPLICATE_PUSHES) as i64;
    // The re-delivered ids are already in the done set, so its size alone does not tell when
    // they have been handled: also wait until every delivery has ended as a run or a skip.
    let ended = || {
        tracker.read(|r| {
            r.outcomes
                .values()
                .flatten()
                .filter(|o| matches!(o, Outcome::Ran | Outcome::Skipped))
                .count()
        })
    };
    eventually(
        "every delivery acknowledged",
        Duration::from_secs(40),
        || {
            env.count("SCARD", &done) == pushed
                && env.queue_is_idle(&config)
                && ended() == UNIQUE + DUPLICATE_PUSHES + REDELIVERIES
        },
    )
    .await;
    let elapsed = started.elapsed();

    assert_eq!(env.count("SCARD", &config.dead_jobs_set()), 0);
    tracker.read(|r| {
        let count = |o: Outcome| r.outcomes.values().flatten().filter(|x| **x == o).count();
        println!(
            "fleet: {} deliveries, {UNIQUE} keys, {} ran, {} skipped, {} locked, {} unavailable, \
             {} lost attempts, {elapsed:?}",
            UNIQUE + DUPLICATE_PUSHES + REDELIVERIES,
            count(Outcome::Ran),
            count(Outcome::Skipped),
            count(Outcome::Locked),
            count(Outcome::Unavailable),
            count(Outcome::Lost),
        );
        assert!(r.overlaps.is_empty(), "overlapping runs: {:?}", r.overlaps);
        assert_eq!(r.completed.len(), UNIQUE);
        for k in 0..UNIQUE {
            let key = format!("k{k}");
            assert_eq!(r.completed.get(&key), Some(&1), "{key} completed");
        }
        // Every delivery ends as one run or one skip. Refusals, deferrals and (on a starved
        // machine) lost locks only add attempts before that end.
        assert_eq!(count(Outcome::Ran), UNIQUE);
        assert_eq!(count(Outcome::Skipped), DUPLICATE_PUSHES + REDELIVERIES);
        assert_eq!(count(Outcome::Failed), 0);
    });
}
