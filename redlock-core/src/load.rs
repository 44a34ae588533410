//! How busy a client is: the number of `lock` and `release` calls in flight on it.
//!
//! A release has its answer once a quorum of nodes deleted our token; the other nodes can finish
//! in the caller's task or be handed to the background ([`Finisher`](crate::finisher::Finisher)).
//! Handing them over saves the caller the last node's latency, which is what matters to a client
//! doing one or a few things at a time (the benchmark's row A went from about 1.0× to about 1.1×
//! the all-nodes floor, level with a bare client deciding at quorum). A client with many
//! operations in flight is bound by CPU instead: its tasks have other work to run while one
//! waits, and finishing in place saves the hand-over. On this project's 2-core benchmark machine
//! the difference was within its noise: medians of eight paired runs gave 0.87× (hand over)
//! against 0.90× (finish in place) with 32 tasks, and 0.80× against 0.85× with 256 tasks. The
//! threshold keeps the latency win for ordinary services and the in-place path for batch-like
//! loads. Measured again later, in the benchmark's interleaved row B256i (whose per-round ratios
//! spread by a few per cent): with the threshold out of reach, so that every release hands its
//! last node over, 0.89, 0.88 and 0.88× the floor in three alternated runs, against 0.95, 0.93
//! and 0.94× with it.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Above this many operations in flight, a release finishes every node in place.
pub(crate) const BUSY: usize = 64;

/// The counter of one client.
#[derive(Debug, Default)]
pub(crate) struct Load(AtomicUsize);

impl Load {
    /// Counts one operation until the guard is dropped.
    pub(crate) fn enter(&self) -> Entered<'_> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Entered(self)
    }

    /// Whether more than [`BUSY`] operations are in flight.
    pub(crate) fn is_busy(&self) -> bool {
        self.0.load(Ordering::Relaxed) > BUSY
    }
}

/// One operation in flight.
pub(crate) struct Entered<'a>(&'a Load);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_operations_in_flight() {
        let load = Load::default();
        let entered: Vec<_> = (0..BUSY).map(|_| load.enter()).collect();
        assert!(!load.is_busy());
        let one_more = load.enter();
        assert!(load.is_busy());
        drop(one_more);
        drop(entered);
        assert_eq!(load.0.load(Ordering::Relaxed), 0);
    }
}
