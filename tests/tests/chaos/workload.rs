//! Clients that contend for a few resources, recording every call into the history.
//!
//! Each client has its own `Redlock` built over its own proxies, so faults can target what one
//! client sees. A granted lock is used Jepsen-style: read a counter, pause, write it back plus
//! one, in the plain store (after checking that at least `WRITE_MARGIN` of validity remains, with
//! no await between the check and the write) and in the fenced store (with the token). A fifth of
//! the holds are kept alive by auto-extension for up to two ttls and update the plain store
//! repeatedly; the others extend once by hand with probability 0.3.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redlock_core::{AutoExtend, Error, Lock, Redlock, Retry};

use crate::history::{Acquire, Extend, Outcome, Record, Recorder, Release, nanos};
use crate::store::{FencedStore, Holder, PlainStore};

/// Validity a holder wants left before it writes the plain store.
const WRITE_MARGIN: Duration = Duration::from_millis(20);

/// Slack added to every time bound: a loaded 2-core machine runs other test binaries too.
const SLACK: Duration = Duration::from_millis(1500);

/// Upper bound on the iterations of one client, whatever the clock says.
const MAX_ITERATIONS: usize = 1_000_000;

/// Upper bound on the plain-store updates of one long hold.
const MAX_UPDATES: usize = 1_000;

/// The Redlock settings of every client of a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) ttl: Duration,
    pub(crate) node_timeout: Duration,
    pub(crate) attempts: u32,
    pub(crate) retry_delay: Duration,
    pub(crate) fencing: bool,
}

/// The drift factor of every client (the library's default).
const DRIFT_FACTOR: f64 = 0.01;

impl Settings {
    /// `ttl - drift`, as the library computes it: a deadline is `T1 + lease`.
    pub(crate) fn lease(&self) -> Duration {
        let drift = Duration::from_secs_f64(self.ttl.as_secs_f64() * DRIFT_FACTOR)
            + Duration::from_millis(2);
        self.ttl.saturating_sub(drift)
    }

    /// Longest an acquisition may take: per attempt a SET and, fenced, a publish (each a
    /// checkout plus a command, both under the node timeout) and the release of a failed
    /// attempt, plus the pauses between attempts.
    pub(crate) fn acquire_bound(&self) -> Duration {
        let per_attempt = self.node_timeout * 6;
        per_attempt * self.attempts + self.retry_delay * 2 * self.attempts + SLACK
    }

    /// Longest an extension may take: one script per node, in parallel.
    pub(crate) fn extend_bound(&self) -> Duration {
        self.node_timeout * 2 + SLACK
    }

    /// Longest a release may take: stragglers settle, then one script per node.
    pub(crate) fn release_bound(&self) -> Duration {
        self.node_timeout * 4 + SLACK
    }
}

/// One client: its own Redlock over its own proxies.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub(crate) id: usize,
    redlock: Redlock,
    recorder: Arc<Recorder>,
    settings: Settings,
}

/// A lock held by a client.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) lock: Lock,
    pub(crate) acq: u64,
    pub(crate) client: usize,
}

impl Held {
    pub(crate) fn holder(&self) -> Holder {
        Holder {
            acq: self.acq,
            client: self.client,
        }
    }

    pub(crate) fn token(&self) -> Option<u64> {
        self.lock.fencing_token().map(|t| t.get())
    }
}

fn classify(error: &Error) -> Outcome {
    if error.is_contended() {
        Outcome::Contended
    } else if error.is_unavailable() {
        Outcome::Unavailable
    } else if matches!(error, Error::Expired { .. }) {
        Outcome::Expired
    } else {
        Outcome::Failed
    }
}

/// Runs `call` under `guard`; `None` when it did not return in time (and was dropped).
async fn guarded<T>(guard: Duration, call: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(guard, call).await.ok()
}

impl Client {
    /// A client whose Redlock talks to `urls` (its proxies) with `settings`.
    pub(crate) fn new(
        id: usize,
        urls: Vec<String>,
        settings: Settings,
        recorder: Arc<Recorder>,
    ) -> Self {
        let redlock = Redlock::builder()
            .nodes(urls)
            .ttl(settings.ttl)
            .node_timeout(settings.node_timeout)
            .retry(Retry::jittered(settings.attempts, settings.retry_delay))
            .drift_factor(DRIFT_FACTOR)
            .fencing(settings.fencing)
            .key_prefix("chaos:")
            .pool_size(2)
            .build()
            .expect("valid chaos configuration");
        Client {
            id,
            redlock,
            recorder,
            settings,
        }
    }

    /// `lock(resource)` with the client's retry policy, recorded.
    pub(crate) async fn acquire(&self, resource: &str) -> Option<Held> {
        let rec = &self.recorder;
        let acq = rec.next_acq();
        let t_invoke = rec.now();
        // The guard is twice the bound: the checker flags anything over the bound, the guard
        // only keeps a hung call from hanging the test.
        let result = guarded(
            self.settings.acquire_bound() * 2,
            self.redlock.lock(resource),
        )
        .await;
        let t_return = rec.now();
        let mut record = Acquire {
            acq,
            client: self.id,
            resource: resource.to_owned(),
            t_invoke,
            t_return,
            outcome: Outcome::Hang,
            lease: nanos(self.settings.lease()),
            deadline: None,
            token: None,
            error: None,
        };
        let held = match result {
            Some(Ok(lock)) => {
                record.outcome = Outcome::Ok;
                record.deadline = Some(rec.at(lock.deadline()));
                record.token = lock.fencing_token().map(|t| t.get());
                Some(Held {
                    lock,
                    acq,
                    client: self.id,
                })
            }
            Some(Err(error)) => {
                record.outcome = classify(&error);
                record.error = Some(error.to_string());
                None
            }
            None => None,
        };
        rec.push(Record::Acquire(record));
        held
    }

    /// `extend()`, recorded; true on success.
    pub(crate) async fn extend(&self, held: &Held) -> bool {
        let rec = &self.recorder;
        let old_deadline = rec.at(held.lock.deadline());
        let t_invoke = rec.now();
        let result = guarded(self.settings.extend_bound() * 2, held.lock.extend()).await;
        let t_return = rec.now();
        let (outcome, error) = match &result {
            Some(Ok(_)) => (Outcome::Ok, None),
            Some(Err(e)) => (classify(e), Some(e.to_string())),
            None => (Outcome::Hang, None),
        };
        rec.push(Record::Extend(Extend {
            acq: held.acq,
            client: self.id,
            resource: held.lock.resource().to_owned(),
            t_invoke,
            t_return,
            outcome,
            lease: nanos(self.settings.lease()),
            old_deadline,
            deadline_after: rec.at(held.lock.deadline()),
            error,
        }));
        outcome == Outcome::Ok
    }

    /// `release()`, recorded; true when a quorum answered.
    pub(crate) async fn release(&self, held: Held) -> bool {
        let rec = &self.recorder;
        let resource = held.lock.resource().to_owned();
        let deadline = rec.at(held.lock.deadline());
        let t_invoke = rec.now();
        let result = guarded(self.settings.release_bound() * 2, held.lock.release()).await;
        let t_return = rec.now();
        let (outcome, error) = match &result {
            Some(Ok(_)) => (Outcome::Ok, None),
            Some(Err(e)) => (classify(e), Some(e.to_string())),
            None => (Outcome::Hang, None),
        };
        rec.push(Record::Release(Release {
            acq: held.acq,
            client: self.id,
            resource,
            t_invoke,
            t_return,
            outcome,
            deadline: Some(deadline),
            lease: nanos(self.settings.lease()),
            error,
        }));
        outcome == Outcome::Ok
    }
}

/// What the clients of a random scenario share.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) plain: PlainStore,
    pub(crate) fenced: FencedStore,
    pub(crate) resources: Vec<String>,
}

impl World {
    pub(crate) fn new(recorder: Arc<Recorder>, resources: &[&str]) -> Self {
        World {
            plain: PlainStore::new(recorder.clone()),
            fenced: FencedStore::new(recorder),
            resources: resources.iter().map(|r| (*r).to_owned()).collect(),
        }
    }
}

/// How long to pause between a read and its write: up to `max`, never more than a quarter of
/// what is left of the lock.
fn pause(rng: &mut StdRng, held: &Held, max: Duration) -> Duration {
    let limit = max.min(held.lock.remaining() / 4);
    Duration::from_micros(rng.random_range(0..=nanos(limit) / 1_000))
}

/// The loop of one task of a client until `stop`: lock a random resource, update both stores,
/// maybe extend, release. Tasks of one client share its `Redlock` (`task` only seeds their
/// choices apart), as the tasks of one process would.
pub(crate) async fn run_client(
    client: Client,
    task: usize,
    world: Arc<World>,
    seed: u64,
    stop: Instant,
) {
    let stream = (client.id as u64) | ((task as u64) << 32);
    let mut rng = StdRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let hold = Duration::from_millis(40);
    for _ in 0..MAX_ITERATIONS {
        if Instant::now() >= stop {
            return;
        }
        let resource = world.resources[rng.random_range(0..world.resources.len())].clone();
        let Some(held) = client.acquire(&resource).await else {
            let backoff = rng.random_range(0..20);
            tokio::time::sleep(Duration::from_millis(backoff)).await;
            continue;
        };
        // Some holds outlive the ttl, kept alive by auto-extension (batched renewals); their
        // extensions are not recorded one by one, the deadline seen at release covers them.
        let long = rng.random_bool(0.2);
        let until = if long {
            held.lock.auto_extend(AutoExtend::new());
            let ttl = nanos(client.settings.ttl) / 1_000;
            Instant::now() + Duration::from_micros(rng.random_range(ttl / 2..=ttl * 2))
        } else {
            Instant::now()
        };
        for _ in 0..MAX_UPDATES {
            let read = world.plain.read(&resource);
            tokio::time::sleep(pause(&mut rng, &held, hold)).await;
            // No await between this check and the write: the write lands inside the window
            // unless the thread itself is descheduled for longer than the margin.
            if held.lock.remaining() >= WRITE_MARGIN {
                world.plain.write(held.holder(), &resource, read);
            }
            if Instant::now() >= until || !held.lock.is_valid() {
                break;
            }
        }
        if let Some(token) = held.token()
            && let Some(read) = world.fenced.read(&resource, token)
        {
            tokio::time::sleep(pause(&mut rng, &held, hold)).await;
            world.fenced.write(held.holder(), &resource, token, read);
        }
        if !long && rng.random_bool(0.3) && held.lock.is_valid() {
            client.extend(&held).await;
        }
        client.release(held).await;
    }
}
