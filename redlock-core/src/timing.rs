//! The arithmetic of Redlock: quorum, drift and deadlines. Pure functions, unit-tested here.

use std::time::Duration;

use crate::clock::LeaseInstant;

/// The smallest majority of `nodes`: `N/2 + 1`. Two majorities of the same N always share at
/// least one node, and a node holds one value per key, so two clients can never both hold a
/// majority at the same time.
pub(crate) fn majority(nodes: usize) -> usize {
    nodes / 2 + 1
}

/// The clock drift allowance for a lease of `ttl`: `ttl * factor + 2 ms`.
///
/// The factor covers the rate difference between the client's clock and each node's (1 % is far
/// above what NTP-disciplined clocks show); the 2 ms cover Redis's 1 ms expiry precision plus a
/// floor for very short leases (as in antirez's redlock-rb).
pub(crate) fn drift(ttl: Duration, factor: f64) -> Duration {
    Duration::from_secs_f64(ttl.as_secs_f64() * factor) + Duration::from_millis(2)
}

/// The instant until which a lock acquired with `t1` sampled before the first SET is safe.
///
/// Every node ran its SET at a real time of at least `t1`, so every key lives until at least
/// `t1 + ttl` on its node's clock, which is `t1 + ttl - drift` on ours. Anchoring at `t1`
/// rather than at the last reply means the time spent acquiring is already subtracted:
/// validity = ttl − elapsed − drift. Both are on the lease clock, which counts the time the
/// system spends suspended, as the nodes' clocks do ([`clock`](crate::clock)).
pub(crate) fn deadline(t1: LeaseInstant, ttl: Duration, drift: Duration) -> LeaseInstant {
    t1 + ttl.saturating_sub(drift)
}

/// Whether a quorum of `ok` votes still leaves enough validity to grant.
pub(crate) fn still_valid(
    deadline: LeaseInstant,
    now: LeaseInstant,
    min_validity: Duration,
) -> bool {
    deadline
        .checked_duration_since(now)
        .is_some_and(|left| left >= min_validity)
}

/// The outcome of a vote as soon as it is known. `None` while it still depends on pending nodes.
pub(crate) fn decide(ok: usize, pending: usize, quorum: usize) -> Option<bool> {
    if ok >= quorum {
        Some(true)
    } else if ok + pending < quorum {
        Some(false)
    } else {
        None
    }
}

/// A failed vote is contention (not unavailability) when the nodes that answered "held by
/// someone else" alone make a quorum impossible: `busy > N - Q`.
pub(crate) fn is_contention(busy: usize, nodes: usize, quorum: usize) -> bool {
    busy > nodes - quorum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_of_odd_and_even_counts() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
        assert_eq!(majority(5), 3);
    }

    #[test]
    fn drift_is_factor_times_ttl_plus_two_ms() {
        assert_eq!(
            drift(Duration::from_secs(10), 0.01),
            Duration::from_millis(102)
        );
        assert_eq!(
            drift(Duration::from_millis(100), 0.0),
            Duration::from_millis(2)
        );
    }

    #[test]
    fn deadline_is_anchored_before_the_first_send() {
        let t1 = LeaseInstant::now();
        let d = deadline(t1, Duration::from_secs(10), Duration::from_millis(102));
        assert_eq!(
            d.saturating_duration_since(t1),
            Duration::from_millis(9_898)
        );
    }

    #[test]
    fn validity_needs_min_validity_left() {
        let now = LeaseInstant::now();
        let d = now + Duration::from_millis(5);
        assert!(still_valid(d, now, Duration::from_millis(5)));
        assert!(!still_valid(d, now, Duration::from_millis(6)));
        assert!(!still_valid(
            now,
            now + Duration::from_millis(1),
            Duration::ZERO
        ));
    }

    #[test]
    fn decision_is_taken_as_soon_as_it_is_known() {
        assert_eq!(decide(2, 1, 2), Some(true));
        assert_eq!(decide(1, 1, 2), None);
        assert_eq!(decide(1, 0, 2), Some(false));
        assert_eq!(decide(0, 1, 2), Some(false));
        assert_eq!(decide(3, 0, 3), Some(true));
    }

    #[test]
    fn contention_versus_unavailability() {
        // 3 nodes, quorum 2: two "held elsewhere" answers block us.
        assert!(is_contention(2, 3, 2));
        // One busy, one failed: unavailability decided it.
        assert!(!is_contention(1, 3, 2));
        assert!(is_contention(3, 5, 3));
        assert!(!is_contention(2, 5, 3));
    }
}
