//! The clock that leases are measured on: one that keeps counting while the system is
//! suspended.
//!
//! `std::time::Instant` (and tokio's timers) read `CLOCK_MONOTONIC` on Linux, which stops while
//! the machine is suspended (a laptop's lid closed, a VM frozen through the kernel's suspend).
//! The nodes' keys keep expiring meanwhile. A deadline on the monotonic clock would then call a
//! lock valid for as long as the system slept after its keys were gone: a lock taken with a 30 s
//! ttl before a one-hour suspension would report 29 s left on waking, while another client may
//! hold it already. So a lease is measured on a [`LeaseInstant`], a reading of
//! `CLOCK_BOOTTIME`: the monotonic clock plus every suspension since boot.
//!
//! Timers still sleep on the monotonic clock, so one armed before a suspension fires late by as
//! long as it lasted. [`ResumeWatch`] covers that for the futures that must fire on time
//! ([`LockLost`](crate::LockLost)): while any waits, one thread per process checks every
//! [`RESUME_CHECK`] whether the two clocks drew apart, and wakes them when they did.
//!
//! Elsewhere than Linux and Android the lease clock is `Instant`: Windows' already counts
//! sleep; on macOS and the BSDs a suspension is not seen (the crate's docs say so).

use std::{
    ops::{Add, Sub},
    sync::{
        LazyLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

/// An instant on the lease clock: comparable only with other lease instants, so that a deadline
/// is never compared with a reading of the monotonic clock by mistake. A reading of one clock
/// (`CLOCK_BOOTTIME` on Linux and Android; `Instant` elsewhere), so that comparing two is exact:
/// only the conversion to an `Instant` for timers mixes clocks, and it errs early.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct LeaseInstant(Duration);

impl LeaseInstant {
    /// Now, on the lease clock.
    pub(crate) fn now() -> LeaseInstant {
        LeaseInstant(lease_clock().saturating_add(simulated::offset()))
    }

    /// The time from `earlier` to this instant, zero if `earlier` is later.
    pub(crate) fn saturating_duration_since(self, earlier: LeaseInstant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// The time from `earlier` to this instant, `None` if `earlier` is later.
    pub(crate) fn checked_duration_since(self, earlier: LeaseInstant) -> Option<Duration> {
        self.0.checked_sub(earlier.0)
    }

    /// The time since this instant.
    pub(crate) fn elapsed(self) -> Duration {
        LeaseInstant::now().saturating_duration_since(self)
    }

    /// The time left until this instant, zero once it passed.
    pub(crate) fn left(self) -> Duration {
        self.saturating_duration_since(LeaseInstant::now())
    }

    /// Whether this instant has passed.
    pub(crate) fn has_passed(self) -> bool {
        LeaseInstant::now() >= self
    }

    /// The same moment on the monotonic clock, as the system stands now (a later suspension
    /// moves it earlier): for timers and for the public API, which speak `Instant`. The same
    /// lease instant converts to the same `Instant` until the system is suspended again (see
    /// [`counted_suspension`]).
    pub(crate) fn to_instant(self) -> Instant {
        let origin = &*ORIGIN;
        let suspension = counted_suspension();
        match self.0.checked_sub(origin.lease) {
            Some(after) => origin
                .monotonic
                .checked_add(after.saturating_sub(suspension))
                .unwrap_or(origin.monotonic),
            None => origin
                .monotonic
                .checked_sub(origin.lease.saturating_sub(self.0) + suspension)
                .unwrap_or(origin.monotonic),
        }
    }
}

impl Sub<Duration> for LeaseInstant {
    type Output = LeaseInstant;

    /// Saturates at the clock's origin rather than panicking.
    fn sub(self, rhs: Duration) -> LeaseInstant {
        LeaseInstant(self.0.saturating_sub(rhs))
    }
}

impl Add<Duration> for LeaseInstant {
    type Output = LeaseInstant;

    /// Saturates rather than panicking.
    fn add(self, rhs: Duration) -> LeaseInstant {
        LeaseInstant(self.0.saturating_add(rhs))
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod source {
    use std::time::Duration;

    use rustix::time::{ClockId, Timespec, clock_gettime};

    fn duration(t: Timespec) -> Duration {
        Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_nsec).unwrap_or(0),
        )
    }

    /// The time since boot, suspensions included (`CLOCK_BOOTTIME`).
    pub(super) fn boot() -> Duration {
        duration(clock_gettime(ClockId::Boottime))
    }
}

/// The lease clock's reading: the time since boot, suspensions included.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn lease_clock() -> Duration {
    source::boot()
}

/// The lease clock's reading: `Instant`, as the time since the first reading in this process.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn lease_clock() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// Where the two clocks stood at the first conversion: the monotonic clock read first, so that
/// converted instants come out early by the time between the two reads, never late.
struct Origin {
    monotonic: Instant,
    lease: Duration,
}

static ORIGIN: LazyLock<Origin> = LazyLock::new(|| {
    // The closest of a few readings: a thread preempted between two reads would leave every
    // conversion early by the preemption.
    let read = || {
        let monotonic = Instant::now();
        let lease = LeaseInstant::now().0;
        (monotonic.elapsed(), Origin { monotonic, lease })
    };
    (1..8)
        .map(|_| read())
        .fold(
            read(),
            |closest, next| if next.0 < closest.0 { next } else { closest },
        )
        .1
});

/// The suspensions since [`ORIGIN`] that conversions count, in nanoseconds.
static COUNTED_NANOS: AtomicU64 = AtomicU64::new(0);

/// How far the clocks must draw apart beyond what is counted to count as a suspension: far above
/// the time between two clock reads (so that one moment always converts to the same `Instant`
/// while the system stays awake), far below any lease.
const SUSPENSION_FOUND: Duration = Duration::from_millis(20);

/// How long the system has been suspended since [`ORIGIN`], as conversions count it: the
/// clocks' drift apart since then, read now, once it exceeds what was counted by
/// [`SUSPENSION_FOUND`]. A suspension shorter than that is left out of conversions (its timers
/// fire that much late at most); comparisons of lease instants count every nanosecond.
fn counted_suspension() -> Duration {
    let origin = &*ORIGIN;
    let monotonic = origin.monotonic.elapsed();
    let lease = LeaseInstant::now().0.saturating_sub(origin.lease);
    let drawn_apart = lease.saturating_sub(monotonic);
    let counted = Duration::from_nanos(COUNTED_NANOS.load(Ordering::Acquire));
    if drawn_apart >= counted + SUSPENSION_FOUND {
        let nanos = u64::try_from(drawn_apart.as_nanos()).unwrap_or(u64::MAX);
        let before = COUNTED_NANOS.fetch_max(nanos, Ordering::AcqRel);
        return Duration::from_nanos(before.max(nanos));
    }
    counted
}

/// How often a process with futures waiting on a lease checks whether the system was suspended.
pub(crate) const RESUME_CHECK: Duration = Duration::from_millis(500);

/// Wakes the futures that wait for a lease when the system was suspended.
static RESUMED: LazyLock<Notify> = LazyLock::new(Notify::new);
/// How many futures wait on [`RESUMED`].
static WAITING: AtomicUsize = AtomicUsize::new(0);
/// Whether the thread that checks for a suspension runs.
static CHECKING: AtomicBool = AtomicBool::new(false);

/// A registration for [`resumed`](ResumeWatch::resumed): keeps the checking thread running while
/// it lives.
pub(crate) struct ResumeWatch {
    resumed: &'static Notify,
}

impl ResumeWatch {
    /// Registers a waiter, and starts the checking thread if none runs.
    pub(crate) fn new() -> ResumeWatch {
        WAITING.fetch_add(1, Ordering::AcqRel);
        ensure_checking();
        ResumeWatch { resumed: &RESUMED }
    }

    /// Resolves when the system was found suspended after this call. Create the future, then
    /// read the clock: a suspension found in between still wakes it.
    pub(crate) fn resumed(&self) -> tokio::sync::futures::Notified<'static> {
        self.resumed.notified()
    }
}

/// Starts the checking thread unless one runs. A thread, not a task: the check is the whole
/// process's, it must outlive any one tokio runtime, and its sleeps must not take part in a
/// runtime's paused clock (`tokio::time::pause`).
fn ensure_checking() {
    if CHECKING.load(Ordering::Acquire) || CHECKING.swap(true, Ordering::AcqRel) {
        return;
    }
    // The count is read now, not when the thread first runs: a suspension in between counts.
    let since = counted_suspension();
    let started = std::thread::Builder::new()
        .name("redlock-suspension-check".to_owned())
        .spawn(move || check_for_suspension(since));
    if let Err(error) = started {
        // Nothing checks: the waiters' timers fire late after a suspension, as `Instant`'s would.
        CHECKING.store(false, Ordering::Release);
        tracing::warn!(%error, "could not start the suspension check");
    }
}

impl Drop for ResumeWatch {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Checks every [`RESUME_CHECK`] while anybody waits whether the system was suspended since the
/// count read `last` (see [`counted_suspension`]), waking every waiter when it was. Ends once
/// nobody waits; a waiter that registers as it ends keeps it running, and one that registers
/// after it ended starts another.
fn check_for_suspension(mut last: Duration) {
    loop {
        std::thread::sleep(RESUME_CHECK);
        let now = counted_suspension();
        if now > last {
            tracing::debug!(
                suspended_ms = (now - last).as_millis(),
                "the system was suspended"
            );
            RESUMED.notify_waiters();
            last = now;
        }
        if WAITING.load(Ordering::Acquire) == 0 {
            CHECKING.store(false, Ordering::Release);
            // A waiter that came in between saw the flag still set and started nothing.
            if WAITING.load(Ordering::Acquire) == 0 || CHECKING.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }
}

/// A suspension simulated by tests (feature `test-util`); none otherwise.
mod simulated {
    use std::time::Duration;

    #[cfg(feature = "test-util")]
    pub(super) static OFFSET_NANOS: std::sync::atomic::AtomicU64 =
        std::sync::atomic::AtomicU64::new(0);

    #[cfg(feature = "test-util")]
    pub(super) fn offset() -> Duration {
        Duration::from_nanos(OFFSET_NANOS.load(std::sync::atomic::Ordering::Acquire))
    }

    #[cfg(not(feature = "test-util"))]
    pub(super) fn offset() -> Duration {
        Duration::ZERO
    }
}

/// Makes the lease clock jump forward by `by`, as a suspension of the system for that long
/// would, for tests of code that must stop when its lock expires while the machine sleeps.
/// Every lock of the process sees it: [`Lock::is_valid`](crate::Lock::is_valid) and
/// [`remaining`](crate::Lock::remaining) at once, [`Lock::lost`](crate::Lock::lost) (and so
/// [`Redlock::run`](crate::Redlock::run)) within half a second. The jump cannot be undone, as a
/// real suspension cannot.
///
/// ```
/// use std::time::Duration;
///
/// // A lock taken before this with a ttl under an hour is no longer valid after it.
/// redlock_core::test_util::simulate_suspend(Duration::from_secs(3600));
/// ```
#[cfg(feature = "test-util")]
pub fn simulate_suspend(by: Duration) {
    let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
    simulated::OFFSET_NANOS.fetch_add(nanos, Ordering::AcqRel);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_clock_runs_with_the_monotonic_clock_while_awake() {
        let (a, lease_a) = (Instant::now(), LeaseInstant::now());
        std::thread::sleep(Duration::from_millis(20));
        let (lease_b, b) = (LeaseInstant::now(), Instant::now());
        let lease = lease_b.saturating_duration_since(lease_a);
        assert!(lease >= Duration::from_millis(20));
        assert!(lease <= b - a + Duration::from_millis(1));
    }

    #[test]
    fn a_lease_instant_converts_to_the_same_monotonic_moment() {
        let deadline = LeaseInstant::now() + Duration::from_secs(10);
        let left = deadline
            .to_instant()
            .saturating_duration_since(Instant::now());
        assert!(left <= Duration::from_secs(10));
        assert!(left >= Duration::from_secs(9));
        assert!(deadline.left() <= Duration::from_secs(10));
        assert!(!deadline.has_passed());
    }

    #[test]
    fn a_lease_instant_converts_to_the_same_instant_every_time_while_awake() {
        let deadline = LeaseInstant::now() + Duration::from_secs(10);
        let first = deadline.to_instant();
        for _ in 0..10_000 {
            assert_eq!(deadline.to_instant(), first);
        }
    }

    #[test]
    fn adding_too_much_saturates_instead_of_panicking() {
        let far = LeaseInstant::now() + Duration::MAX;
        assert!(far > LeaseInstant::now() + Duration::from_secs(3600));
    }
}
