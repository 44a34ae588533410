use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use apalis::prelude::*;
use redlock_apalis::{CompletionMarkers, JobLockConfig, JobLockExt, JobLockInfo, not_locked};
use redlock_core::{FencingToken, Redlock};

use crate::common::*;

/// Spawns one worker running `svc` (observed) on `config`'s queue, with the tracker as data.
async fn spawn_worker<S>(
    env: &Env,
    config: &apalis_redis::Config,
    name: &str,
    tracker: &Arc<Tracker>,
    svc: S,
) -> Fleet
where
    S: tower::Service<Task<Job>, Response = Option<()>, Error = BoxDynError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let worker = WorkerBuilder::new(worker_name(name, 0))
        .backend(env.storage(config).await.poll_with_interval(POLL))
        .data(tracker.clone())
        .retry(RetryPolicy::retries(3).retry_if(not_locked))
        .build(Observe::new(svc, tracker.clone()));
    let mut fleet = Fleet::default();
    fleet.push(tokio::spawn(async move {
        let _ = worker.run().await;
    }));
    fleet
}

fn by_job_key() -> JobLockConfig<impl Fn(&Job) -> String + Clone> {
    JobLockConfig::new().key_fn(|job: &Job| job.key.clone())
}

#[derive(Clone, Debug)]
struct Seen {
    task_id: String,
    key: String,
    fencing_token: Option<FencingToken>,
    remaining: Duration,
}

async fn report_lock(
    _job: Job,
    id: TaskId,
    info: Data<JobLockInfo>,
    seen: Data<Arc<Mutex<Vec<Seen>>>>,
) -> Result<(), BoxDynError> {
    seen.lock().unwrap().push(Seen {
        task_id: id.to_string(),
        key: info.key().to_owned(),
        fencing_token: info.fencing_token(),
        remaining: info.remaining(),
    });
    Ok(())
}

/// With the default configuration jobs are keyed by their task id; the handler receives the
/// key, the fencing token and the live deadline as `Data<JobLockInfo>`; and a completed job
/// leaves its marker on every node, expiring with the dedup window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_sees_the_task_id_key_and_fencing_token_and_a_marker_is_left() {
    let env = Env::start(Duration::from_secs(2));
    let redlock = Redlock::builder()
        .nodes(env.cluster.urls())
        .ttl(Duration::from_secs(2))
        .fencing(true)
        .build()
        .unwrap();
    let config = queue_config("info");
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let window = Duration::from_secs(60);
    let guarded = report_lock.lock_jobs_with(
        redlock,
        env.markers.clone(),
        JobLockConfig::new().dedup_window(window),
    );
    let worker = WorkerBuilder::new(worker_name("info", 0))
        .backend(env.storage(&config).await.poll_with_interval(POLL))
        .data(seen.clone())
        .build(guarded);
    let mut fleet = Fleet::default();
    fleet.push(tokio::spawn(async move {
        let _ = worker.run().await;
    }));
    let mut producer = env.storage(&config).await;
    producer.push(Job::new("a", 0)).await.unwrap();
    producer.push(Job::new("a", 0)).await.unwrap();
    eventually("both jobs acknowledged", Duration::from_secs(10), || {
        env.count("SCARD", &config.done_jobs_set()) == 2
    })
    .await;

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "two pushes, two task ids: {seen:?}");
    assert_ne!(seen[0].task_id, seen[1].task_id);
    for s in &seen {
        assert_eq!(s.key, s.task_id);
        assert!(s.remaining > Duration::from_secs(1), "{s:?}");
        let marker = format!("redlock:job:done:{}", s.task_id);
        for node in env.cluster.iter() {
            assert_eq!(node.get(&marker).unwrap().as_deref(), Some("1"));
            let ttl = node.query(&["PTTL", &marker]).unwrap().as_int().unwrap();
            assert!(ttl > 50_000 && ttl <= 60_000, "marker ttl {ttl}");
        }
    }
    let tokens: Vec<_> = seen.iter().map(|s| s.fencing_token).collect();
    assert!(tokens.iter().all(Option::is_some), "{tokens:?}");
}

/// A marker found on a single node is proof of completion (markers are only ever written after
/// a success), so a delivery of that key is acknowledged as done without running the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_marked_done_on_any_node_is_acknowledged_without_running() {
    let env = Env::start(Duration::from_secs(1));
    let config = queue_config("marked");
    let tracker = Tracker::new();
    env.markers
        .mark_done("job:done:quorum", Duration::from_secs(60))
        .await
        .unwrap();
    env.cluster[2]
        .query(&["SET", "redlock:job:done:single", "1", "PX", "60000"])
        .unwrap();
    let guarded = work.lock_jobs_with(env.redlock.clone(), env.markers.clone(), by_job_key());
    let _fleet = spawn_worker(&env, &config, "marked", &tracker, guarded).await;
    let mut producer = env.storage(&config).await;
    for key in ["quorum", "single", "fresh"] {
        producer.push(Job::new(key, 0)).await.unwrap();
    }
    eventually("three jobs acknowledged", Duration::from_secs(10), || {
        env.count("SCARD", &config.done_jobs_set()) == 3
    })
    .await;
    tracker.read(|r| {
        assert_eq!(r.outcomes("quorum"), [Outcome::Skipped]);
        assert_eq!(r.outcomes("single"), [Outcome::Skipped]);
        assert_eq!(r.outcomes("fresh"), [Outcome::Ran]);
        assert_eq!(r.started.keys().collect::<Vec<_>>(), ["fresh"]);
    });
}

/// A key held elsewhere makes the delivery fail with `JobLocked` inside the lifecycle service:
/// apalis-redis reschedules it with backoff (one guard call per delivery: no hot loop, and
/// `not_locked` keeps the in-process retry out of it), it never goes to the dead set, and it
/// runs once the holder lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_key_is_rescheduled_with_backoff_and_runs_once_released() {
    let env = Env::start(Duration::from_secs(5));
    let config = queue_config("held");
    let tracker = Tracker::new();
    let holder = env
        .redlock
        .try_lock("job:lock:held")
        .await
        .unwrap()
        .unwrap();
    let guarded = work.lock_jobs_with(env.redlock.clone(), env.markers.clone(), by_job_key());
    let _fleet = spawn_worker(&env, &config, "held", &tracker, guarded).await;
    let mut producer = env.storage(&config).await;
    producer.push(Job::new("held", 0)).await.unwrap();

    eventually("a refused delivery", Duration::from_secs(10), || {
        tracker.read(|r| !r.outcomes("held").is_empty())
    })
    .await;
    eventually("the job rescheduled", Duration::from_secs(5), || {
        env.count("ZCARD", &config.scheduled_jobs_set()) == 1
    })
    .await;
    assert_eq!(
        tracker.read(|r| r.outcomes("held").to_vec()),
        [Outcome::Locked]
    );
    assert_eq!(env.count("SCARD", &config.dead_jobs_set()), 0);
    holder.release().await.unwrap();

    eventually("the job acknowledged", Duration::from_secs(10), || {
        env.count("SCARD", &config.done_jobs_set()) == 1
    })
    .await;
    tracker.read(|r| {
        let outcomes = r.outcomes("held");
        assert_eq!(outcomes.last(), Some(&Outcome::Ran), "{outcomes:?}");
        let locked = outcomes.iter().filter(|o| **o == Outcome::Locked).count();
        assert!(locked <= 2, "one refusal per delivery, got {outcomes:?}");
        assert_eq!(r.completed["held"], 1);
    });
}

/// A handler error passes through unchanged (apalis retries the job) and leaves no marker: only
/// a success is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_leaves_no_marker_and_the_job_is_retried() {
    async fn fail_first(
        job: Job,
        tracker: Data<Arc<Tracker>>,
        worker: WorkerContext,
    ) -> Result<(), BoxDynError> {
        let run = tracker.enter(&job.key, worker.name());
        if tracker.read(|r| r.started[&job.key]) == 1 {
            return Err("first run fails".into());
        }
        run.complete();
        Ok(())
    }
    let env = Env::start(Duration::from_secs(1));
    let config = queue_config("failing");
    let tracker = Tracker::new();
    let guarded = fail_first.lock_jobs_with(env.redlock.clone(), env.markers.clone(), by_job_key());
    let worker = WorkerBuilder::new(worker_name("failing", 0))
        .backend(env.storage(&config).await.poll_with_interval(POLL))
        .data(tracker.clone())
        .build(Observe::new(guarded, tracker.clone()));
    let mut fleet = Fleet::default();
    fleet.push(tokio::spawn(async move {
        let _ = worker.run().await;
    }));
    let mut producer = env.storage(&config).await;
    producer.push(Job::new("flaky", 0)).await.unwrap();

    eventually("the failed run", Duration::from_secs(10), || {
        tracker.read(|r| r.outcomes("flaky") == [Outcome::Failed])
    })
    .await;
    for node in env.cluster.iter() {
        assert_eq!(node.get("redlock:job:done:flaky").unwrap(), None);
    }
    eventually("the retried run", Duration::from_secs(10), || {
        env.count("SCARD", &config.done_jobs_set()) == 1
    })
    .await;
    tracker.read(|r| {
        assert_eq!(r.outcomes("flaky"), [Outcome::Failed, Outcome::Ran]);
        assert_eq!(r.completed["flaky"], 1);
    });
    let marked = env
        .cluster
        .iter()
        .filter(|n| n.get("redlock:job:done:flaky").unwrap().is_some())
        .count();
    assert!(marked >= 2);
}

/// A key function that yields an empty key is a configuration error retrying cannot fix: the
/// job is aborted (`AbortError`, so apalis moves it to the dead set) without running. Also
/// shows `lock_jobs_with` on a plain `tower::Service` rather than a handler function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_key_aborts_the_job_without_running_it() {
    let env = Env::start(Duration::from_secs(1));
    let config = queue_config("empty");
    let tracker = Tracker::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let handler = tower::service_fn(move |_task: Task<Job>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<(), BoxDynError>(()) }
    });
    let guarded = handler.lock_jobs_with(
        env.redlock.clone(),
        env.markers.clone(),
        JobLockConfig::new().key_fn(|_: &Job| String::new()),
    );
    let _fleet = spawn_worker(&env, &config, "empty", &tracker, guarded).await;
    let mut producer = env.storage(&config).await;
    producer.push(Job::new("anything", 0)).await.unwrap();
    eventually("the job dead", Duration::from_secs(10), || {
        env.count("SCARD", &config.dead_jobs_set()) == 1
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(
        tracker.read(|r| r.outcomes("anything").to_vec()),
        [Outcome::Failed]
    );
}

/// When too few marker nodes answer, the guard cannot tell whether the key already completed:
/// it does not run the job, releases the lock and fails the attempt with `LockUnavailable`, so
/// the job is rescheduled rather than run blind or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_marker_nodes_defer_the_job_instead_of_running_it() {
    let env = Env::start(Duration::from_secs(1));
    let config = queue_config("nomarkers");
    let tracker = Tracker::new();
    // Nothing listens on port 1: connections are refused at once.
    let markers = CompletionMarkers::new(["redis://127.0.0.1:1"; 3])
        .unwrap()
        .node_timeout(Duration::from_millis(50));
    let guarded = work.lock_jobs_with(env.redlock.clone(), markers, by_job_key());
    let _fleet = spawn_worker(&env, &config, "nomarkers", &tracker, guarded).await;
    let mut producer = env.storage(&config).await;
    producer.push(Job::new("blind", 0)).await.unwrap();
    eventually("a deferred delivery", Duration::from_secs(10), || {
        tracker.read(|r| !r.outcomes("blind").is_empty())
    })
    .await;
    eventually("the job rescheduled", Duration::from_secs(5), || {
        env.count("ZCARD", &config.scheduled_jobs_set()) == 1
    })
    .await;
    // The in-process retry policy retries this one (only contention is excluded from it).
    let outcomes = tracker.read(|r| r.outcomes("blind").to_vec());
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Unavailable),
        "{outcomes:?}"
    );
    assert!(tracker.read(|r| r.started.is_empty()));
    eventually("the lock released", Duration::from_secs(2), || {
        env.cluster
            .iter()
            .all(|n| n.keys("redlock:job:lock:*").unwrap().is_empty())
    })
    .await;
}

/// The completion marker is read under the lock, never before it: on the nodes, `MONITOR`
/// shows the delivery's lock SET before its marker read. A read before the lock could see "not
/// done", then wait while the winner writes its marker and releases, and run the job again.
/// A straggling SET may reach one node after the read, so two of the three nodes must show the
/// order; reading first puts the read first on all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_marker_is_read_under_the_lock() {
    let env = Env::start(Duration::from_secs(5));
    let config = queue_config("ordered");
    let tracker = Tracker::new();
    let seen: Vec<_> = (0..3)
        .map(|i| env.cluster[i].monitor(Duration::from_secs(30)).unwrap())
        .collect();
    let guarded = work.lock_jobs_with(env.redlock.clone(), env.markers.clone(), by_job_key());
    let _fleet = spawn_worker(&env, &config, "ordered", &tracker, guarded).await;
    let mut producer = env.storage(&config).await;
    producer.push(Job::new("ordered", 0)).await.unwrap();
    eventually("the job acknowledged", Duration::from_secs(10), || {
        env.count("SCARD", &config.done_jobs_set()) == 1
    })
    .await;
    tracker.read(|r| assert_eq!(r.outcomes("ordered"), [Outcome::Ran]));
    let mut in_order = 0;
    for node in seen {
        let lines: Vec<String> = node.try_iter().collect();
        let locked = lines
            .iter()
            .position(|l| l.contains("\"SET\" \"redlock:job:lock:ordered\""));
        let read = lines
            .iter()
            .position(|l| l.contains("\"redlock:job:done:ordered\""));
        if let (Some(locked), Some(read)) = (locked, read)
            && locked < read
        {
            in_order += 1;
        }
    }
    assert!(in_order >= 2, "lock before marker on {in_order} of 3 nodes");
}
