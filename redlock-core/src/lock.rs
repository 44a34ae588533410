//! A held lock: its deadline, extension and release.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use tokio::sync::{Mutex, Notify};
use tracing::{debug, instrument, warn};

use crate::{
    clock::LeaseInstant,
    error::{Error, NodeError, Result},
    fencing::FencingToken,
    local::Turn,
    lost::{Deadline, LockLost},
    node::Keys,
    redlock::Shared,
    timing,
    votes::Votes,
    watchdog::{self, AutoExtend},
};

/// A lock held on a quorum of nodes until [`deadline`](Lock::deadline).
///
/// The deadline is measured on this process's clock from an instant taken *before* the first SET
/// was sent, minus the clock drift allowance, so the lock is never reported as held for longer
/// than the keys can live on the nodes. That clock counts the time the system spends suspended
/// (see [`deadline`](Lock::deadline)).
///
/// # Drop
///
/// Dropping a `Lock` without calling [`release`](Lock::release) stops its auto-extension and
/// spawns a best-effort release on the current tokio runtime (if there is none, the keys expire
/// by their ttl). The deletes are on their connections before `drop` returns, so a task of
/// this process waiting for the same lock takes it over in one round trip, as after `release`.
/// Prefer `release`: it reports what happened and lets you wait for it.
#[must_use = "dropping a Lock releases it in the background at once; hold it for the critical section and call release()"]
pub struct Lock {
    state: Arc<LockState>,
}

/// A cheap, cloneable view of a held lock, for code that must watch it but not release it: the
/// closure of [`Redlock::run`](crate::Redlock::run), a tower handler, an apalis job.
#[derive(Clone)]
pub struct LockHandle {
    state: Arc<LockState>,
}

/// What a [`Lock`], its handles and its watchdog share.
pub(crate) struct LockState {
    pub(crate) shared: Arc<Shared>,
    /// The resources locked (one, or several for `lock_many`), sorted.
    resources: Arc<[String]>,
    /// Their keys on the nodes, in the same order.
    keys: Keys,
    /// The token of the attempt that won; never shown in `Debug`.
    value: Arc<str>,
    fencing_token: Option<FencingToken>,
    /// The current deadline. Every successful extension sets a later one, a failed extension
    /// with a shorter ttl an earlier one; [`LockLost`] futures watch it.
    deadline: Deadline,
    /// The current lease length, in nanoseconds (what `extend` renews).
    ttl_nanos: AtomicU64,
    /// Per-node state of the winning attempt; `None` once released. The async mutex makes
    /// extensions wait for stragglers without racing a release.
    votes: Mutex<Option<Votes>>,
    /// Set once the lock is released or dropped; the watchdog stops on it.
    released: AtomicBool,
    /// Wakes the watchdog when `released` is set.
    stop: Notify,
    /// This process's turn for the lock's key: held for the lock's life so that local waiters
    /// queue instead of polling the nodes, handed on as soon as the lock is released or dropped.
    turn: std::sync::Mutex<Option<Turn>>,
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.state.fmt_fields("Lock", f)
    }
}

impl fmt::Debug for LockHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.state.fmt_fields("LockHandle", f)
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
    /// Nodes whose release had not answered when `release` returned: once a quorum deleted our
    /// token, the others are not waited for; a node whose SET had not even answered (its
    /// release goes out on the same connection once it does) is given a quarter of the node
    /// timeout after the others. Each finishes in the background.
    pub pending: usize,
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

/// The getters shared by [`Lock`] and [`LockHandle`].
macro_rules! getters {
    () => {
        /// The resource name given to `lock` (the first one, in sorted order, for `lock_many`).
        pub fn resource(&self) -> &str {
            &self.state.resources[0]
        }

        /// Every resource this lock holds, sorted (one, unless acquired by `lock_many`).
        pub fn resources(&self) -> &[String] {
            &self.state.resources
        }

        /// The key stored on the nodes (the resource with the configured prefix).
        pub fn key(&self) -> &str {
            &self.state.keys[0]
        }

        /// Every key this lock holds on the nodes.
        pub fn keys(&self) -> &[String] {
            &self.state.keys
        }

        /// The lease length of the last acquisition or extension.
        pub fn ttl(&self) -> Duration {
            self.state.ttl()
        }

        /// The instant until which the lock is held: `T1 + ttl − drift`, where `T1` was taken
        /// before the first byte of the last acquisition or extension was sent.
        ///
        /// The lease is measured on a clock that keeps counting while the system is suspended
        /// (on Linux and Android; Windows' `Instant` does so itself), as the nodes' clocks do:
        /// `Instant` stops then. So the instant returned is where the deadline stands on the
        /// monotonic clock *now*: a suspension moves it earlier by as long as it lasted.
        /// Compare it with `Instant::now()` at once, or use [`is_valid`](Self::is_valid) and
        /// [`remaining`](Self::remaining), which read the lease clock.
        pub fn deadline(&self) -> Instant {
            self.state.deadline.get().to_instant()
        }

        /// Time left before the deadline; zero once it passed. Time the system spent
        /// suspended counts.
        pub fn remaining(&self) -> Duration {
            self.state.deadline.get().left()
        }

        /// True while the deadline has not passed. Time the system spent suspended counts:
        /// a lock whose lease ran out while the machine slept is not valid on waking.
        pub fn is_valid(&self) -> bool {
            !self.state.deadline.get().has_passed()
        }

        /// The fencing token of this acquisition, when fencing is enabled: unique per
        /// resource and increasing with the real-time order of acquisitions. Pass it to the
        /// protected resource and have it reject tokens lower than one it has seen.
        pub fn fencing_token(&self) -> Option<FencingToken> {
            self.state.fencing_token
        }

        /// A future that resolves when the lock is lost: its deadline passes without a
        /// successful extension. Driven by this process's clock, so it fires even when every
        /// node is unreachable, and within half a second of waking from a suspension that
        /// outlasted the lease. Cheap to clone.
        pub fn lost(&self) -> LockLost {
            LockLost::new(self.state.clone())
        }
    };
}

impl LockHandle {
    getters!();
}

impl Lock {
    getters!();

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<Shared>,
        resources: Arc<[String]>,
        keys: Keys,
        value: Arc<str>,
        ttl: Duration,
        deadline: LeaseInstant,
        votes: Votes,
        fencing_token: Option<FencingToken>,
    ) -> Lock {
        let deadline = Deadline::new(deadline);
        Lock {
            state: Arc::new(LockState {
                shared,
                resources,
                keys,
                value,
                fencing_token,
                deadline,
                ttl_nanos: AtomicU64::new(nanos(ttl)),
                votes: Mutex::new(Some(votes)),
                released: AtomicBool::new(false),
                stop: Notify::new(),
                turn: std::sync::Mutex::new(None),
            }),
        }
    }

    pub(crate) fn hold_turn(&self, turn: Turn) {
        if let Ok(mut slot) = self.state.turn.lock() {
            *slot = Some(turn);
        }
    }

    /// A cloneable view of this lock (getters and [`lost`](LockHandle::lost), no release).
    pub fn handle(&self) -> LockHandle {
        LockHandle {
            state: self.state.clone(),
        }
    }

    /// Keeps the lock alive in the background: extends it by its ttl every `ttl / 3` (see
    /// [`AutoExtend`]) until it is released or dropped, or until `max_hold` is reached. A failed
    /// extension keeps the old deadline and is retried while time remains; once the deadline
    /// passes, [`lost`](Lock::lost) fires. Needs a tokio runtime.
    pub fn auto_extend(&self, config: AutoExtend) {
        watchdog::spawn(self.state.clone(), config);
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
    pub async fn extend(&self) -> Result<Instant> {
        self.state
            .extend_by(self.state.ttl())
            .await
            .map(LeaseInstant::to_instant)
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
    pub async fn extend_by(&self, ttl: Duration) -> Result<Instant> {
        self.state
            .extend_by(ttl)
            .await
            .map(LeaseInstant::to_instant)
    }

    /// Releases the lock: compare-and-delete on every node where our token is or may be stored,
    /// including nodes whose SET failed or never answered (each behind its own SET, on the same
    /// connection). A key holding another token is never touched. Bounded: a SET still unanswered
    /// is waited for at most its node timeout, and each release too.
    ///
    /// Returns as soon as a quorum of nodes deleted our token: from then on nobody can see the
    /// lock as held, and the remaining nodes finish in the background (counted in
    /// [`Release::pending`]). When fewer than a quorum still held it, it waits for every node
    /// so that [`Release::was_expired`] is accurate; so does a client with more than 64 `lock`
    /// and `release` calls in flight, for which finishing in place is cheaper than handing over.
    ///
    /// A task of this process waiting for the same lock is let go as soon as the deletes are on
    /// their way, before the nodes answer: its SETs follow them on the same connections, so each
    /// node runs our delete first, and the hand-over between local tasks costs one round trip
    /// instead of two.
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
    #[instrument(level = "debug", skip_all, fields(key = %self.state.keys[0]))]
    pub async fn release(self) -> Result<Release> {
        let state = &self.state;
        let _entered = state.shared.load.enter();
        state.stop();
        let mut guard = state.votes.lock().await;
        let Some(votes) = guard.as_mut() else {
            return Err(Error::Expired {
                key: state.resource_name(),
            });
        };
        // The votes stay in place until the release is done: if this future is dropped mid-way,
        // dropping the Lock hands what is left to a background task. Once a quorum deleted our
        // token the lock is gone, and the other nodes finish in the background. A node whose SET
        // has not answered yet (a straggler of a vote decided at quorum) is released in the same
        // round, as soon as that SET answers, on the same connection.
        let releasing = votes.release_settled(
            &state.shared,
            &state.keys,
            &state.value,
            true,
            false,
            // A busy client finishes every node here (see `load`).
            (!state.shared.load.is_busy()).then_some(state.shared.settings.quorum),
        );
        let tally = if state.shared.keeps_order {
            pass_turn_once_sent(state, releasing).await
        } else {
            releasing.await
        };
        let pending = votes.pending();
        if let Some(rest) = guard.take() {
            rest.release_in_background(
                state.shared.clone(),
                state.keys.clone(),
                state.value.clone(),
                true,
            );
        }
        drop(guard);
        // Passed already once the deletes were sent; this covers a release that finished
        // within its first poll.
        state.pass_turn();
        let quorum = state.shared.settings.quorum;
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
            pending,
            quorum,
            failures: tally.failures,
        })
    }
}

impl LockState {
    fn fmt_fields(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let remaining = self.deadline.get().left();
        f.debug_struct(name)
            .field("resources", &self.resources)
            .field(
                "token",
                &format_args!("\"{}…\"", self.value.get(..4).unwrap_or_default()),
            )
            .field("fencing_token", &self.fencing_token)
            .field("remaining", &remaining)
            .finish()
    }

    pub(crate) fn key_str(&self) -> &str {
        &self.keys[0]
    }

    /// The resources as one name, for errors.
    pub(crate) fn resource_name(&self) -> String {
        self.resources.join(",")
    }

    pub(crate) fn ttl(&self) -> Duration {
        Duration::from_nanos(self.ttl_nanos.load(Ordering::Relaxed))
    }

    pub(crate) fn deadline(&self) -> LeaseInstant {
        self.deadline.get()
    }

    pub(crate) fn deadline_cell(&self) -> &Deadline {
        &self.deadline
    }

    /// Waits for the SETs still unanswered when the lock was granted (bounded by the node
    /// timeout). Their futures live in the votes until someone polls them; a long-held lock
    /// would otherwise keep them, and their buffers, until its first extension or release.
    pub(crate) async fn settle_stragglers(&self) {
        let mut votes = self.votes.lock().await;
        if let Some(votes) = votes.as_mut()
            && votes.pending() > 0
        {
            votes.settle(&self.shared).await;
        }
    }

    pub(crate) fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    pub(crate) fn stopped(&self) -> &Notify {
        &self.stop
    }

    /// Hands this process's turn for the key to the next local waiter.
    fn pass_turn(&self) {
        let turn = self.turn.lock().ok().and_then(|mut t| t.take());
        drop(turn);
    }

    fn stop(&self) {
        self.released.store(true, Ordering::Release);
        self.stop.notify_waiters();
    }

    #[instrument(level = "debug", skip_all, fields(key = %self.keys[0], ttl_ms = ttl.as_millis()))]
    pub(crate) async fn extend_by(&self, ttl: Duration) -> Result<LeaseInstant> {
        let t1 = LeaseInstant::now();
        let old_deadline = self.extension_start(ttl, t1)?;
        let shared = &self.shared;
        let (keys, value) = (&*self.keys, &*self.value);
        let results = join_all(shared.nodes.iter().map(|node| async move {
            node.extend(keys, value, ttl)
                .await
                .map_err(|kind| node.error(kind))
        }))
        .await;
        let mut extended = 0;
        let mut failures = Vec::new();
        for result in results {
            match result {
                Ok(true) => extended += 1,
                Ok(false) => {}
                Err(e) => failures.push(e),
            }
        }
        self.extension_end(t1, old_deadline, ttl, extended, failures)
    }

    /// Checks that an extension sent at `t1` may start; returns the deadline it must beat.
    pub(crate) fn extension_start(&self, ttl: Duration, t1: LeaseInstant) -> Result<LeaseInstant> {
        self.shared.settings.check_ttl(ttl)?;
        if self.is_released() {
            return Err(Error::Expired {
                key: self.resource_name(),
            });
        }
        // Stragglers are not waited for: an extension that overtakes our own late SET finds no
        // key there and leaves it alone, and the SET then applies with its own ttl under our
        // token, which the release removes. Replies that did arrive are recorded, which frees
        // the reply channel of a long-held lock.
        if let Ok(mut votes) = self.votes.try_lock()
            && let Some(votes) = votes.as_mut()
        {
            votes.drain(&self.shared);
        }
        let old_deadline = self.deadline();
        if t1 >= old_deadline {
            return Err(Error::Expired {
                key: self.resource_name(),
            });
        }
        Ok(old_deadline)
    }

    /// Applies the outcome of an extension sent at `t1`: granted only with a quorum and before
    /// the old deadline, the new deadline being `t1 + ttl − drift`.
    pub(crate) fn extension_end(
        &self,
        t1: LeaseInstant,
        old_deadline: LeaseInstant,
        ttl: Duration,
        extended: usize,
        failures: Vec<NodeError>,
    ) -> Result<LeaseInstant> {
        let now = LeaseInstant::now();
        let new_deadline = timing::deadline(t1, ttl, self.shared.settings.drift(ttl));
        let quorum = self.shared.settings.quorum;
        let late = now >= old_deadline;
        crate::telemetry::extension(!late && extended >= quorum);
        if late || extended < quorum {
            // Nodes that applied a shorter ttl now expire sooner than the old deadline.
            if new_deadline < old_deadline {
                self.deadline.set(new_deadline);
            }
            warn!(key = %self.keys[0], extended, quorum, late, "extension failed");
            return Err(if late {
                Error::Expired {
                    key: self.resource_name(),
                }
            } else {
                Error::NoQuorum {
                    acquired: extended,
                    quorum,
                    failures,
                }
            });
        }
        self.deadline.set(new_deadline);
        self.ttl_nanos.store(nanos(ttl), Ordering::Relaxed);
        debug!(
            key = %self.keys[0],
            extended,
            remaining_ms = new_deadline.saturating_duration_since(now).as_millis(),
            "extended"
        );
        Ok(new_deadline)
    }

    /// The single key and the token, for batched renewal (`None` for `lock_many` locks).
    pub(crate) fn single_key(&self) -> Option<(&str, &str)> {
        match &*self.keys {
            [key] => Some((key, &self.value)),
            _ => None,
        }
    }
}

/// Runs `releasing` and hands this process's turn for the key to the next local waiter as soon
/// as the release has been handed to the nodes' connections, before their replies come back.
///
/// The first poll of a node's release puts the compare-and-delete in its connection's queue,
/// and the next waiter's `SET NX` goes through the same connection after it, so each node runs
/// our delete first and the waiter's SET finds the key free: a hand-over between tasks of one
/// process costs one round trip (the waiter's SETs) instead of two (our release's replies, then
/// its SETs). Where the SET does overtake the delete (a node whose release still waits behind
/// our own unanswered SET, or a connection replaced meanwhile), `SET NX` finds our key and fails
/// on that node: the waiter loses a vote, never exclusion, and is woken by the release to try
/// again. Over pools the user built, where two commands may take different connections, the
/// turn passes only once the release has returned.
async fn pass_turn_once_sent<T>(state: &LockState, releasing: impl Future<Output = T>) -> T {
    let mut releasing = std::pin::pin!(releasing);
    let mut passed = false;
    std::future::poll_fn(|cx| {
        let progress = releasing.as_mut().poll(cx);
        if progress.is_pending() && !passed {
            passed = true;
            state.pass_turn();
        }
        progress
    })
    .await
}

impl Drop for Lock {
    fn drop(&mut self) {
        let state = &self.state;
        state.stop();
        // `release` holds the mutex while it runs; if it was dropped mid-way, the votes are still
        // here. When the mutex is busy (an extension settling stragglers), wait for it in a task.
        match state.votes.try_lock() {
            Ok(mut guard) => {
                if let Some(votes) = guard.take() {
                    debug!(key = %state.keys[0], "lock dropped without release: releasing in the background");
                    votes.release_in_background(
                        state.shared.clone(),
                        state.keys.clone(),
                        state.value.clone(),
                        true,
                    );
                }
                // Only now: the deletes are queued on the connections, so the next local
                // waiter's SETs follow them, as after `release` (`pass_turn_once_sent`).
                state.pass_turn();
            }
            Err(_) => {
                // The release waits for the mutex in a task: the next local waiter may race it,
                // and then waits to be woken by it.
                state.pass_turn();
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let state = state.clone();
                    runtime.spawn(async move {
                        let mut guard = state.votes.lock().await;
                        if let Some(votes) = guard.as_mut() {
                            votes
                                .release(&state.shared, &state.keys, &state.value, true)
                                .await;
                        }
                        *guard = None;
                    });
                }
            }
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
