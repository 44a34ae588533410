//! Auto-extension: keeps a lock alive while its holder works.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use tracing::{Instrument, debug, debug_span, warn};

use crate::{clock::ResumeWatch, error::Error, lock::LockState};

/// How a lock is kept alive by [`Lock::auto_extend`](crate::Lock::auto_extend),
/// [`Redlock::run`](crate::Redlock::run) and the tower and apalis guards.
///
/// Every `every` (a third of the ttl by default) the lock is extended by its ttl, each attempt
/// anchored at its own send time, and never later than when half the lease is left. Woken from a
/// suspension of the system, it extends at once if the lease still runs. A failed attempt keeps
/// the old deadline and is retried sooner while the deadline has not passed; extension never
/// happens after it (no resurrection).
/// With `max_hold`, the lock is never extended past that long after auto-extension started, and
/// is then lost at its last deadline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AutoExtend {
    /// Interval between extensions. Defaults to `None`: a third of the ttl.
    pub every: Option<Duration>,
    /// Longest total hold. Defaults to `None`: unbounded.
    pub max_hold: Option<Duration>,
}

impl AutoExtend {
    /// Extend every third of the ttl, without bound.
    pub fn new() -> Self {
        AutoExtend::default()
    }

    /// Sets the interval between extensions. Defaults to a third of the ttl.
    #[must_use]
    pub fn every(mut self, every: Duration) -> Self {
        self.every = Some(every);
        self
    }

    /// Sets the longest total hold. Defaults to unbounded.
    #[must_use]
    pub fn max_hold(mut self, max_hold: impl Into<Option<Duration>>) -> Self {
        self.max_hold = max_hold.into();
        self
    }
}

/// Starts the watchdog task of one lock. It stops when the lock is released or dropped, when
/// `max_hold` is reached, or when the deadline passes.
pub(crate) fn spawn(state: Arc<LockState>, config: AutoExtend) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        warn!("no tokio runtime: auto-extension is off");
        return;
    };
    let span = debug_span!("redlock.watchdog", key = %state.key_str());
    runtime.spawn(run(state, config).instrument(span));
}

async fn run(state: Arc<LockState>, config: AutoExtend) {
    let started = Instant::now();
    let ttl = state.ttl();
    let every = config
        .every
        .unwrap_or(ttl / 3)
        .max(Duration::from_millis(1));
    let mut next = within_lease(aligned(started, every), &state);
    state.settle_stragglers().await;
    // Its timer stops while the system is suspended, the lease does not: woken from a
    // suspension, it extends at once if the lease is still running (see `clock`).
    let suspension = ResumeWatch::new();
    loop {
        let stopped = state.stopped().notified();
        let resumed = suspension.resumed();
        tokio::pin!(resumed);
        resumed.as_mut().enable();
        if state.is_released() {
            return;
        }
        tokio::select! {
            () = stopped => return,
            () = tokio::time::sleep_until(next.into()) => {}
            () = &mut resumed => debug!("woken from a suspension: extending now"),
        }
        let now = Instant::now();
        crate::telemetry::extension_lag(now.saturating_duration_since(next));
        // On the lease clock: a suspension that outlasted the lease ended it.
        if state.deadline().has_passed() {
            crate::telemetry::lost();
            return;
        }
        let mut extension = ttl;
        if let Some(max_hold) = config.max_hold {
            let end = started + max_hold;
            if now >= end {
                debug!("max hold reached: no more extensions");
                return;
            }
            extension = extension.min(end - now);
        }
        match state.shared.renewer.extend(state.clone(), extension).await {
            Ok(_) => next = within_lease(aligned(Instant::now(), every), &state),
            Err(Error::Expired { .. }) => {
                crate::telemetry::lost();
                return;
            }
            // A ttl cut down by max_hold below the drift: the hold is over.
            Err(e) if e.is_input() => return,
            Err(e) => {
                debug!(error = %e, "extension failed, retrying");
                let left = state.deadline().left();
                next = Instant::now() + (every / 4).min(left / 2).max(Duration::from_millis(1));
            }
        }
    }
}

/// `next`, or sooner if half the lease left comes first: an `every` longer than that (set so,
/// or a suspension that ate the lease before the watchdog started) would let the lease run out
/// between two extensions.
fn within_lease(next: Instant, state: &LockState) -> Instant {
    let half_left = state.deadline().left() / 2;
    next.min(Instant::now() + half_left)
}

/// The next extension time, `now + every` rounded *down* to a grid of `every / 8` shared by the
/// whole process. Locks with the same interval then come due together and are renewed in one
/// batch ([`renewer`](crate::renewer)); rounding down only makes an extension a little early.
fn aligned(now: Instant, every: Duration) -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let target = now + every;
    let grid = (every / 8).max(Duration::from_millis(1));
    let since = target.saturating_duration_since(epoch);
    let slots = since.as_nanos() / grid.as_nanos();
    let snapped = u32::try_from(slots)
        .ok()
        .and_then(|slots| grid.checked_mul(slots))
        .map_or(target, |offset| epoch + offset);
    if snapped > now { snapped } else { target }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_snap_early_onto_a_shared_grid() {
        let every = Duration::from_millis(800);
        let a = Instant::now();
        let b = a + Duration::from_millis(30);
        let (na, nb) = (aligned(a, every), aligned(b, every));
        assert!(na <= a + every && na > a + every - every / 8);
        assert!(nb <= b + every && nb > b + every - every / 8);
        // Two locks 30 ms apart usually land in the same 100 ms slot, never more than one apart.
        assert!(nb.duration_since(na) <= every / 8);
    }
}
