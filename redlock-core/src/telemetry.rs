//! Metrics behind the `metrics` feature; every function is a no-op without it.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `redlock_acquire_seconds` | histogram | `outcome` |
//! | `redlock_acquire_total` | counter | `outcome`: granted, contended, unavailable, expired |
//! | `redlock_extend_total` | counter | `outcome`: extended, failed |
//! | `redlock_extend_lag_seconds` | histogram | how late the watchdog ran against its schedule |
//! | `redlock_lost_total` | counter | locks whose deadline passed while held |

use std::time::Duration;

use crate::error::Error;

/// The label of an acquisition outcome.
fn outcome(result: Result<(), &Error>) -> &'static str {
    match result {
        Ok(()) => "granted",
        Err(Error::Contended { .. }) => "contended",
        Err(Error::Expired { .. }) => "expired",
        Err(_) => "unavailable",
    }
}

/// One acquisition attempt finished.
pub(crate) fn acquisition(result: Result<(), &Error>, elapsed: Duration) {
    let outcome = outcome(result);
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("redlock_acquire_total", "outcome" => outcome).increment(1);
        metrics::histogram!("redlock_acquire_seconds", "outcome" => outcome)
            .record(elapsed.as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (outcome, elapsed);
}

/// One extension finished.
pub(crate) fn extension(extended: bool) {
    #[cfg(feature = "metrics")]
    metrics::counter!("redlock_extend_total", "outcome" => if extended { "extended" } else { "failed" })
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = extended;
}

/// The watchdog ran `lag` after it was scheduled.
pub(crate) fn extension_lag(lag: Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!("redlock_extend_lag_seconds").record(lag.as_secs_f64());
    #[cfg(not(feature = "metrics"))]
    let _ = lag;
}

/// A held lock was lost.
pub(crate) fn lost() {
    #[cfg(feature = "metrics")]
    metrics::counter!("redlock_lost_total").increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_labelled() {
        assert_eq!(outcome(Ok(())), "granted");
        let contended = Error::Contended {
            key: "k".into(),
            attempts: 1,
        };
        assert_eq!(outcome(Err(&contended)), "contended");
        let down = Error::NoQuorum {
            acquired: 0,
            quorum: 2,
            failures: vec![],
        };
        assert_eq!(outcome(Err(&down)), "unavailable");
    }
}
