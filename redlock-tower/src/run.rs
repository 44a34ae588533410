//! What a locked request goes through: acquire (once or until a deadline), call the inner
//! service while the lock is held and auto-extended, release. Shared by the HTTP and the
//! generic `Service` impls.

use std::{
    future::poll_fn,
    time::{Duration, Instant},
};

use redlock_core::{AutoExtend, Lock, LockOptions, Redlock, Retry};
use tower_service::Service;
use tracing::{Instrument, debug, debug_span, warn};

use crate::rejection::Rejection;

/// Everything a [`RequestLockLayer`](crate::RequestLockLayer) configures, shared by its
/// services and their futures behind one `Arc`.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) redlock: Redlock,
    pub(crate) contention: Contention,
    pub(crate) wait_interval: Duration,
    pub(crate) options: LockOptions,
    pub(crate) auto_extend: AutoExtend,
    pub(crate) hold_body: bool,
    pub(crate) retry_after: Duration,
}

/// What to do when the key is held by someone else.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Contention {
    /// One attempt, then reject.
    FailFast,
    /// Retry, pausing `wait_interval` plus up to as much jitter (or less when a release
    /// notification comes first), until `max` has passed.
    Wait { max: Duration },
}

impl Settings {
    pub(crate) fn new(redlock: Redlock) -> Self {
        Settings {
            redlock,
            contention: Contention::FailFast,
            wait_interval: Duration::from_millis(20),
            options: LockOptions::new(),
            auto_extend: AutoExtend::new(),
            hold_body: false,
            retry_after: Duration::from_secs(1),
        }
    }

    /// Whether `poll_ready` reports ready without asking the inner service; see the
    /// service docs for why waiting requests must not hold the inner service's readiness.
    pub(crate) fn waits(&self) -> bool {
        matches!(self.contention, Contention::Wait { .. })
    }
}

/// How a locked call ended, before it is turned into the service's response or error.
pub(crate) enum Outcome<T> {
    /// The inner service answered. `lock` is still held when the response body must keep it.
    Response { response: T, lock: Option<Lock> },
    /// The inner service was not called, or its future was dropped when the lock was lost.
    Rejected(Rejection),
}

/// Serves one request. `ready` says whether `inner` was already driven to readiness by
/// `poll_ready`; if not (wait mode), readiness is awaited only once the lock is held.
/// `prepare` hands the lock to the request (extensions for HTTP) before the call; `hold`
/// returns the lock with the response instead of releasing it (for the response body).
pub(crate) async fn serve<S, Req>(
    settings: &Settings,
    key: Option<String>,
    (mut inner, ready): (S, bool),
    mut request: Req,
    prepare: fn(&mut Req, &Lock),
    hold: bool,
) -> Result<Outcome<S::Response>, S::Error>
where
    S: Service<Req>,
{
    let Some(key) = key else {
        if !ready {
            poll_fn(|cx| inner.poll_ready(cx)).await?;
        }
        let response = inner.call(request).await?;
        return Ok(Outcome::Response {
            response,
            lock: None,
        });
    };
    let span = debug_span!("redlock_tower.request", key = %key);
    async move {
        let lock = match acquire(settings, &key).await {
            Ok(lock) => lock,
            Err(rejection) => return Ok(Outcome::Rejected(rejection)),
        };
        lock.auto_extend(settings.auto_extend);
        prepare(&mut request, &lock);
        let lost = lock.lost();
        let work = async move {
            if !ready {
                poll_fn(|cx| inner.poll_ready(cx)).await?;
            }
            inner.call(request).await
        };
        let result = tokio::select! {
            // Checked first: once the deadline has passed, a result is no longer trusted to
            // have been produced under the lock.
            biased;
            () = lost => None,
            result = work => Some(result),
        };
        let Some(result) = result else {
            // `work` (and with it the inner future) is already dropped here; dropping the lock
            // releases whatever is left of it in the background.
            warn!("lock lost mid-request: inner future dropped");
            drop(lock);
            return Ok(Outcome::Rejected(Rejection::Lost {
                resource: key,
                retry_after: settings.retry_after,
            }));
        };
        match result {
            Ok(response) if hold => Ok(Outcome::Response {
                response,
                lock: Some(lock),
            }),
            result => {
                // Released before the response leaves, so a client that sends its next
                // request for the same key as soon as it has the answer never finds the lock
                // still held by its previous one.
                release(lock).await;
                result.map(|response| Outcome::Response {
                    response,
                    lock: None,
                })
            }
        }
    }
    .instrument(span)
    .await
}

/// One attempt with `FailFast`. With `Wait`, redlock-core's `lock_with` bounded by the wait:
/// it lines up this process's waiters for a key in arrival order, wakes them on release
/// announcements rather than having every waiting request poll the nodes, and reports the last
/// outcome (contended or unavailable) when the wait runs out. Input errors are never waited out.
async fn acquire(settings: &Settings, key: &str) -> Result<Lock, Rejection> {
    let started = Instant::now();
    let retry_after = settings.retry_after;
    let outcome = match settings.contention {
        Contention::FailFast => {
            settings
                .redlock
                .try_lock_with(key, settings.options.clone())
                .await
        }
        Contention::Wait { max } => {
            // The pause between attempts when no release announcement comes first; never zero,
            // which would spin on the nodes.
            let interval = settings
                .wait_interval
                .clamp(Duration::from_millis(1), Duration::from_secs(3600));
            let options = settings
                .options
                .clone()
                .retry(Retry::new(1, interval, interval))
                .wait(max);
            settings.redlock.lock_with(key, options).await.map(Some)
        }
    };
    let rejection = match outcome {
        Ok(Some(lock)) => return Ok(acquired(lock, started)),
        Ok(None) => Rejection::Contended {
            resource: key.to_owned(),
            retry_after,
        },
        Err(error) if error.is_contended() => Rejection::Contended {
            resource: key.to_owned(),
            retry_after,
        },
        Err(error) => unavailable(key, retry_after, error),
    };
    log_rejection(&rejection);
    Err(rejection)
}

fn acquired(lock: Lock, started: Instant) -> Lock {
    debug!(
        elapsed_ms = started.elapsed().as_millis(),
        fencing_token = ?lock.fencing_token(),
        "acquired"
    );
    lock
}

fn log_rejection(rejection: &Rejection) {
    if rejection.is_contended() {
        debug!("contended");
    } else {
        warn!(error = %rejection, "lock unavailable");
    }
}

fn unavailable(key: &str, retry_after: Duration, source: redlock_core::Error) -> Rejection {
    Rejection::Unavailable {
        resource: key.to_owned(),
        retry_after,
        source,
    }
}

/// Releases on every node and logs what happened: the response does not depend on it.
pub(crate) async fn release(lock: Lock) {
    match lock.release().await {
        Ok(release) if release.was_expired() => {
            warn!(
                released = release.released,
                quorum = release.quorum,
                "lock had expired before release: the request outlived its lease"
            );
        }
        Ok(_) => debug!("released"),
        Err(error) => warn!(%error, "release failed: remaining keys expire by ttl"),
    }
}
