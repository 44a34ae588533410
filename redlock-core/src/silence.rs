//! Nodes that stopped answering, as one client saw them: a waiter that found a key's sequencer
//! node down or paused asks every node at once for a while (see `Redlock::lock_waiting`), and
//! so do the client's other waits on keys of that node, instead of waiting out the node's
//! timeout (its subscription, then its first ask) to find out again.
//!
//! Only for a while ([`Silence::span`]), or until a waiter hears the node answer: an attempt
//! that asks every node at once decides at the quorum, before a healthy sequencer's reply
//! comes, so it cannot tell that the node is back. Once the while is over, the next attempt
//! asks the sequencer first again, and finds out; a hiccup of one reply costs a waiter its
//! place in line for that while at most.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Until when each node counts as not answering.
#[derive(Debug)]
pub(crate) struct Silence {
    /// The clock's zero: deadlines are kept as 1 + milliseconds since then, 0 meaning none.
    base: Instant,
    until_ms: Box<[AtomicU64]>,
    span: Duration,
}

impl Silence {
    /// For `nodes` nodes, each remembered as silent for `span` after it failed to answer.
    pub(crate) fn new(nodes: usize, span: Duration) -> Silence {
        Silence {
            base: Instant::now(),
            until_ms: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            span,
        }
    }

    /// How long a node stays silent after it failed to answer: long enough to spare the waits
    /// that follow, short enough that a node that is back soon gets its turns in order again.
    pub(crate) fn span(node_timeout: Duration) -> Duration {
        node_timeout.saturating_mul(4).max(Duration::from_secs(1))
    }

    /// Node `node` answered (`true`) or failed to (`false`).
    pub(crate) fn heard(&self, node: usize, answered: bool) {
        let Some(until) = self.until_ms.get(node) else {
            return;
        };
        let value = if answered {
            0
        } else {
            self.stamp(Instant::now() + self.span)
        };
        until.store(value, Ordering::Relaxed);
    }

    /// Whether node `node` failed to answer a moment ago and has not answered since.
    pub(crate) fn is_silent(&self, node: usize) -> bool {
        self.until_ms.get(node).is_some_and(|until| {
            let until = until.load(Ordering::Relaxed);
            until != 0 && self.stamp(Instant::now()) < until
        })
    }

    /// `at` as kept: 1 + milliseconds since `base` (never 0).
    fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX - 1)
            + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_silent_from_a_failure_until_it_answers_or_the_span_ends() {
        let silence = Silence::new(3, Duration::from_secs(60));
        assert!(!silence.is_silent(1));
        silence.heard(1, false);
        assert!(silence.is_silent(1));
        assert!(!silence.is_silent(0), "one node's silence is its own");
        silence.heard(1, true);
        assert!(!silence.is_silent(1));
        let brief = Silence::new(1, Duration::ZERO);
        brief.heard(0, false);
        assert!(!brief.is_silent(0), "the span is over at once");
        assert!(!silence.is_silent(7), "no such node");
    }
}
