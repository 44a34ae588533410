//! A held lock: its deadline, extension and release.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use tracing::{debug, instrument, warn};

use crate::{
    error::{Error, NodeError, Result},
    redlock::Shared,
    timing,
    votes::Votes,
};

/// A lock held on a quorum of nodes until [`deadline`](Lock::deadline).
///
/// The deadline is measured on this process's monotonic clock from an instant taken *before* the
/// first SET was sent, minus the clock drift allowance, so the lock is never reported as held
/// for longer than the keys can live on the nodes.
///
/// # Drop
///
/// Dropping a `Lock` without calling [`release`](Lock::release) spawns a best-effort release on
/// the current tokio runtime (if there is none, the keys expire by their ttl). Prefer `release`:
/// it reports what happened and lets you wait for it.
#[must_use = "dropping a Lock releases it in the background at once; hold it for the critical section and call release()"]
pub struct Lock {
    shared: Arc<Shared>,
    resource: String,
    key: Arc<str>,
    /// The token of the attempt that won; never shown in `Debug`.
    value: Arc<str>,
    ttl: Duration,
    deadline: Instant,
    /// Per-node state of the winning attempt. `None` once released.
    votes: Option<Votes>,
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("resource", &self.resource)
            .field("token", &format_args!("\"{}…\"", &self.value[..4]))
            .field("remaining", &self.remaining())
            .finish()
    }
}

/// What [`Lock::release`] found on the nodes.
#[derive(Debug)]
#[non_exhaustive]
pub struct Release {
    /// Nodes where our token was still stored and has now been deleted.
    pub released: usize,
    /// Nodes that answered but no longer held our token (it expired, or was never set there).
    pub absent: usize,
    /// The quorum of the lock.
    pub quorum: usize,
    /// Nodes that did not answer; their keys expire by ttl.
    pub failures: Vec<NodeError>,
}

impl Release {
    /// True when fewer than a quorum of nodes still held our token: the lock had already
    /// expired (or was about to) when it was released. Not an error, but worth a log line: the
    /// critical section outlived the lease.
    pub fn was_expired(&self) -> bool {
        self.released < self.quorum
    }
}

impl Lock {
    pub(crate) fn new(
        shared: Arc<Shared>,
        resource: String,
        key: Arc<str>,
        value: Arc<str>,
        ttl: Duration,
        deadline: Instant,
        votes: Votes,
    ) -> Lock {
        Lock {
            shared,
            resource,
            key,
            value,
            ttl,
            deadline,
            votes: Some(votes),
        }
    }

    /// The resource name given to `lock`.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The key stored on the nodes (the resource with the configured prefix).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease length this lock was acquired (or last extended) with.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The monotonic instant until which the lock is held: `T1 + ttl − drift`, where `T1` was
    /// taken before the first byte was sent.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left before the deadline; zero once it passed.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// True while the deadline has not passed.
    pub fn is_valid(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// Extends the lease by the lock's ttl, measured from now. See [`extend_by`](Lock::extend_by).
    ///
    /// # Errors
    ///
    /// As [`extend_by`](Lock::extend_by).
    ///
    /// # Cancel safety
    ///
    /// As [`extend_by`](Lock::extend_by).
    pub async fn extend(&mut self) -> Result<Instant> {
        self.extend_by(self.ttl).await
    }

    /// Extends the lease to `ttl` from now, on every node where the key still holds our token.
    ///
    /// Succeeds only if a quorum extended and the old deadline had not passed by the time they
    /// answered; the new deadline is `T1' + ttl − drift` with `T1'` taken before sending. A key
    /// that already expired is never created again. On failure the lock keeps its old deadline
    /// (shortened if `ttl` was shorter and some nodes applied it), so the caller may still finish
    /// within it or release.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidTtl`] for a ttl out of range.
    /// - [`Error::Expired`] when the deadline passed before or during the extension.
    /// - [`Error::NoQuorum`] when fewer than a quorum of nodes still held our token.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the lock with its old deadline; some nodes may have applied the
    /// new expiry, which only keeps our own keys longer.
    #[instrument(skip_all, fields(key = %self.key, ttl_ms = ttl.as_millis()))]
    pub async fn extend_by(&mut self, ttl: Duration) -> Result<Instant> {
        self.shared.settings.check_ttl(ttl)?;
        let Some(votes) = self.votes.as_mut() else {
            return Err(Error::Expired {
                key: self.resource.clone(),
            });
        };
        // Stragglers must answer first, so an extension never races a SET of our own.
        votes.settle(&self.shared).await;
        let t1 = Instant::now();
        if t1 >= self.deadline {
            return Err(Error::Expired {
                key: self.resource.clone(),
            });
        }
        let shared = &self.shared;
        let (key, value) = (&*self.key, &*self.value);
        let results = join_all(shared.nodes.iter().map(|node| async move {
            node.extend(key, value, ttl)
                .await
                .map_err(|kind| node.error(kind))
        }))
        .await;
        let now = Instant::now();
        let mut extended = 0;
        let mut failures = Vec::new();
        for result in results {
            match result {
                Ok(true) => extended += 1,
                Ok(false) => {}
                Err(e) => failures.push(e),
            }
        }
        let drift = shared.settings.drift(ttl);
        let new_deadline = timing::deadline(t1, ttl, drift);
        if now >= self.deadline {
            self.deadline = self.deadline.min(new_deadline);
            warn!(extended, "extension finished after the deadline");
            return Err(Error::Expired {
                key: self.resource.clone(),
            });
        }
        if extended < shared.settings.quorum {
            // Nodes that applied a shorter ttl now expire sooner than the old deadline.
            self.deadline = self.deadline.min(new_deadline);
            warn!(
                extended,
                quorum = shared.settings.quorum,
                "extension failed"
            );
            return Err(Error::NoQuorum {
                acquired: extended,
                quorum: shared.settings.quorum,
                failures,
            });
        }
        self.deadline = new_deadline;
        self.ttl = ttl;
        debug!(
            extended,
            remaining_ms = self.remaining().as_millis(),
            "extended"
        );
        Ok(new_deadline)
    }

    /// Releases the lock: compare-and-delete on every node where our token is or may be stored,
    /// including nodes whose SET failed or never answered. A key that holds another token is
    /// never touched.
    ///
    /// # Errors
    ///
    /// [`Error::NoQuorum`] when fewer than a quorum of nodes answered: the lock may still be held
    /// on the others until its ttl runs out. A lock that had already expired is not an error;
    /// see [`Release::was_expired`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future hands the release to a background task, as dropping the `Lock` does.
    #[instrument(skip_all, fields(key = %self.key))]
    pub async fn release(mut self) -> Result<Release> {
        let Some(votes) = self.votes.as_mut() else {
            return Err(Error::Expired {
                key: self.resource.clone(),
            });
        };
        // The votes stay in `self` until the release is done: if this future is dropped
        // mid-way, dropping the Lock hands what is left to a background task.
        let tally = votes.release(&self.shared, &self.key, &self.value).await;
        self.votes = None;
        let quorum = self.shared.settings.quorum;
        let answered = tally.released + tally.absent;
        debug!(
            released = tally.released,
            absent = tally.absent,
            failed = tally.failures.len(),
            "released"
        );
        if answered < quorum {
            return Err(Error::NoQuorum {
                acquired: answered,
                quorum,
                failures: tally.failures,
            });
        }
        Ok(Release {
            released: tally.released,
            absent: tally.absent,
            quorum,
            failures: tally.failures,
        })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(votes) = self.votes.take() {
            debug!(key = %self.key, "lock dropped without release: releasing in the background");
            votes.release_in_background(self.shared.clone(), self.key.clone(), self.value.clone());
        }
    }
}
