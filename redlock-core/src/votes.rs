//! The per-node state of one acquisition attempt, from the parallel SETs to the last release.
//!
//! Each node's `SET NX PX` runs in a task of its own and reports through its join handle. The
//! attempt decides as soon as the outcome is known; nodes still pending at that point are
//! *stragglers*. Their replies are still collected before anything else is sent for them, and a
//! doubtful SET is released on the very connection it went out on, so a release never overtakes
//! the SET it undoes
//! (DESIGN.md §3.2 rule 7: otherwise a paused node would run the release first, then the SET, and
//! keep an orphan key for a whole ttl).

use std::{sync::Arc, time::Duration};

use futures_util::future::join_all;
use futures_util::{FutureExt, StreamExt, stream::FuturesUnordered};
use tokio::task::{JoinError, JoinHandle};
use tracing::{Instrument, debug_span};

use crate::{
    error::NodeError,
    node::{Keys, Link, Vote},
    redlock::Shared,
};

/// What we know about our key on one node.
pub(crate) enum Slot {
    /// The SET has not been sent (the rest of a sequenced attempt that was refused first).
    Unsent,
    /// The SET has not answered yet.
    Pending,
    /// The SET answered (or failed).
    Settled {
        /// Whether our token may be on the node.
        holds: Holds,
        /// The connection the SET went out on, when it went out.
        link: Option<Link>,
        /// With fencing, the node's fence counter read when our SET applied.
        fence: Option<u64>,
    },
}

/// Whether our token may be stored on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Holds {
    /// The node said OK.
    Yes,
    /// The node said the key is someone else's, or the SET never left: our fresh token cannot be
    /// there, so nothing needs releasing.
    No,
    /// The SET was sent but no answer came back: it may have applied, or may still apply.
    Maybe,
}

/// Per-node state of one attempt (and, once granted, of the lock it became).
pub(crate) struct Votes {
    pub(crate) slots: Vec<Slot>,
    /// The per-node SET tasks still running, yielding their replies in arrival order. Dropping
    /// a handle detaches its task, which still finishes its SET.
    replies: FuturesUnordered<JoinHandle<Reply>>,
    pending: usize,
    /// Nodes that answered that someone else holds the key.
    busy: usize,
    /// What the unsent SETs of a sequenced attempt need; dropped once they are sent.
    rest: Option<Rest>,
    /// Failures seen so far, for the error of a failed attempt.
    pub(crate) failures: Vec<NodeError>,
}

/// What a SET task reports: which node, what it said, and the connection it used.
type Reply = (usize, Vote, Option<Link>);

/// The parameters of SETs not sent yet.
struct Rest {
    keys: Keys,
    value: Arc<str>,
    ttl: Duration,
    fenced: bool,
}

/// The tally of a vote once it was decided.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tally {
    pub(crate) acquired: usize,
    pub(crate) busy: usize,
}

impl Votes {
    /// Sends `SET key value NX PX ttl` to every node at once, one task each. The tasks are
    /// detached: if the caller stops waiting, the SETs still finish and report, and the cleanup
    /// that drains this channel knows exactly which nodes to release.
    pub(crate) fn send(
        shared: &Arc<Shared>,
        keys: &Keys,
        value: &Arc<str>,
        ttl: Duration,
        fenced: bool,
    ) -> Votes {
        let mut votes = Votes::unsent(shared, keys, value, ttl, fenced);
        votes.send_rest(shared);
        votes
    }

    /// Sends the SET to node `first` only; [`send_rest`](Votes::send_rest) sends the others.
    ///
    /// Used by waiters woken by a release: if they all sent to every node at once, their SETs
    /// would split the nodes between them and nobody would reach a quorum. Asking one node first
    /// (the same one for every client of a key) lets exactly one of them through.
    pub(crate) fn send_first(
        shared: &Arc<Shared>,
        keys: &Keys,
        value: &Arc<str>,
        ttl: Duration,
        fenced: bool,
        first: usize,
    ) -> Votes {
        let mut votes = Votes::unsent(shared, keys, value, ttl, fenced);
        votes.spawn(shared, first);
        votes
    }

    fn unsent(
        shared: &Shared,
        keys: &Keys,
        value: &Arc<str>,
        ttl: Duration,
        fenced: bool,
    ) -> Votes {
        let n = shared.nodes.len();
        Votes {
            slots: (0..n).map(|_| Slot::Unsent).collect(),
            replies: FuturesUnordered::new(),
            pending: 0,
            busy: 0,
            rest: Some(Rest {
                keys: keys.clone(),
                value: value.clone(),
                ttl,
                fenced,
            }),
            failures: Vec::new(),
        }
    }

    /// Sends the SET to every node it was not sent to yet.
    pub(crate) fn send_rest(&mut self, shared: &Arc<Shared>) {
        for index in 0..self.slots.len() {
            if matches!(self.slots[index], Slot::Unsent) {
                self.spawn(shared, index);
            }
        }
        self.rest = None;
    }

    fn spawn(&mut self, shared: &Arc<Shared>, index: usize) {
        let Some(rest) = &self.rest else { return };
        let (shared, keys, value) = (shared.clone(), rest.keys.clone(), rest.value.clone());
        let (ttl, fenced) = (rest.ttl, rest.fenced);
        let span = debug_span!("redlock.set", node = %shared.nodes[index].addr());
        let task = tokio::spawn(
            async move {
                let (vote, link) = shared.nodes[index]
                    .set_nx_px(&keys, &value, ttl, fenced)
                    .await;
                (index, vote, link)
            }
            .instrument(span),
        );
        self.replies.push(task);
        self.slots[index] = Slot::Pending;
        self.pending += 1;
    }

    /// Waits for the answers sent so far; true if a node said the key is held by someone else.
    pub(crate) async fn first_is_busy(&mut self, shared: &Shared) -> bool {
        self.settle(shared).await;
        self.busy > 0
    }

    /// Nodes whose SET has not answered yet.
    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    /// Records every reply that has already arrived, without waiting.
    pub(crate) fn drain(&mut self, shared: &Shared) {
        while self.pending > 0 {
            match self.replies.next().now_or_never() {
                Some(Some(reply)) => self.receive(shared, reply),
                _ => return,
            }
        }
    }

    /// Waits for the next reply; `false` when none is pending.
    async fn next(&mut self, shared: &Shared) -> bool {
        if self.pending == 0 {
            return false;
        }
        match self.replies.next().await {
            Some(reply) => {
                self.receive(shared, reply);
                true
            }
            None => {
                // Unreachable while `pending > 0`: every pending node has a task.
                self.pending = 0;
                false
            }
        }
    }

    fn receive(&mut self, shared: &Shared, reply: Result<Reply, JoinError>) {
        match reply {
            Ok((index, vote, link)) => self.record(shared, index, vote, link),
            // A SET task died without answering (it panicked, or its runtime shut down): we
            // cannot tell which node it was for; see below.
            Err(_) => self.pending -= 1,
        }
        if self.replies.is_empty() {
            // Every task has reported or died: a node still pending had a task that died, and
            // is doubtful; it will be released.
            for slot in &mut self.slots {
                if matches!(slot, Slot::Pending) {
                    *slot = Slot::Settled {
                        holds: Holds::Maybe,
                        link: None,
                        fence: None,
                    };
                }
            }
            self.pending = 0;
        }
    }

    fn record(&mut self, shared: &Shared, index: usize, vote: Vote, link: Option<Link>) {
        self.pending -= 1;
        let mut fence = None;
        let holds = match vote {
            Vote::Acquired(counter) => {
                fence = counter;
                Holds::Yes
            }
            Vote::Busy => {
                self.busy += 1;
                Holds::No
            }
            Vote::Failed { error, sent } => {
                self.failures.push(shared.nodes[index].error(error));
                if sent { Holds::Maybe } else { Holds::No }
            }
        };
        self.slots[index] = Slot::Settled { holds, link, fence };
    }

    fn count(&self, holds: Holds) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::Settled { holds: h, .. } if *h == holds))
            .count()
    }

    /// Collects replies until the vote is decided: a quorum said OK, or too few are left for one.
    pub(crate) async fn decide(&mut self, shared: &Shared) -> (bool, Tally) {
        let quorum = shared.settings.quorum;
        loop {
            let acquired = self.count(Holds::Yes);
            if let Some(granted) = crate::timing::decide(acquired, self.pending, quorum) {
                return (
                    granted,
                    Tally {
                        acquired,
                        busy: self.busy,
                    },
                );
            }
            if !self.next(shared).await {
                // Unreachable in practice: with nothing pending, `decide` always decides.
                return (
                    false,
                    Tally {
                        acquired,
                        busy: self.busy,
                    },
                );
            }
        }
    }

    /// Waits for every straggler. Bounded: each SET task gives up after its node timeout.
    pub(crate) async fn settle(&mut self, shared: &Shared) {
        while self.next(shared).await {}
    }

    /// Compare-and-delete on every node where our token is or may be, after settling stragglers.
    pub(crate) async fn release(
        &mut self,
        shared: &Shared,
        keys: &[String],
        value: &str,
        announce: bool,
    ) -> ReleaseTally {
        self.settle(shared).await;
        self.release_settled(shared, keys, value, announce).await
    }

    /// Compare-and-delete on every settled node where our token is or may be; stragglers are
    /// left alone (and still pending). A doubtful node is released through the connection its
    /// SET used, behind that SET. Released nodes are marked, so a later call skips them.
    pub(crate) async fn release_settled(
        &mut self,
        shared: &Shared,
        keys: &[String],
        value: &str,
        announce: bool,
    ) -> ReleaseTally {
        // Replies that arrived since the decision are as good as settled.
        self.drain(shared);
        // A node is marked released only once it answered: if this future is dropped mid-way,
        // the nodes not yet confirmed are still owed a release (by the caller's drop guard).
        let calls = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| match slot {
                Slot::Settled {
                    holds: holds @ (Holds::Yes | Holds::Maybe),
                    link,
                    ..
                } => {
                    // An answered SET leaves nothing in flight, so any connection will do; a
                    // doubtful one must be followed on its own connection.
                    let link = if *holds == Holds::Maybe {
                        link.clone()
                    } else {
                        None
                    };
                    let node = &shared.nodes[index];
                    Some(async move {
                        (
                            index,
                            node.release(link.as_ref(), keys, value, announce).await,
                        )
                    })
                }
                Slot::Settled {
                    holds: Holds::No, ..
                }
                | Slot::Pending
                | Slot::Unsent => None,
            });
        let results = join_all(calls).await;
        let mut tally = ReleaseTally::default();
        for (index, result) in results {
            match result {
                Ok(released) => {
                    if released {
                        tally.released += 1;
                    } else {
                        tally.absent += 1;
                    }
                    if let Slot::Settled { holds, link, .. } = &mut self.slots[index] {
                        *holds = Holds::No;
                        *link = None;
                    }
                }
                // No answer: the release may or may not have run; the node stays owed one, and
                // compare-and-delete is harmless to repeat.
                Err(kind) => tally.failures.push(shared.nodes[index].error(kind)),
            }
        }
        tally
    }

    /// Nodes that granted, with their fence counters (fenced attempts only).
    pub(crate) fn granted_fences(&self) -> Vec<(usize, u64)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| match slot {
                Slot::Settled {
                    holds: Holds::Yes,
                    fence: Some(f),
                    ..
                } => Some((index, *f)),
                _ => None,
            })
            .collect()
    }

    /// True when nothing is pending and no node may hold our token.
    fn is_clean(&self) -> bool {
        self.pending == 0
            && self.slots.iter().all(|s| {
                matches!(
                    s,
                    Slot::Unsent
                        | Slot::Settled {
                            holds: Holds::No,
                            ..
                        }
                )
            })
    }

    /// Hands the stragglers and the doubtful nodes to a background task (used when the caller
    /// will not wait, or is gone). Needs a tokio runtime; without one the keys expire by ttl.
    pub(crate) fn release_in_background(
        mut self,
        shared: Arc<Shared>,
        keys: Keys,
        value: Arc<str>,
        announce: bool,
    ) {
        if self.is_clean() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(
                    async move {
                        let tally = self.release(&shared, &keys, &value, announce).await;
                        tracing::debug!(
                            released = tally.released,
                            failed = tally.failures.len(),
                            "background release"
                        );
                    }
                    .instrument(debug_span!("redlock.release_background")),
                );
            }
            Err(_) => tracing::warn!("no tokio runtime: lock keys are left to expire by their ttl"),
        }
    }
}

/// How a release went, node by node.
#[derive(Debug, Default)]
pub(crate) struct ReleaseTally {
    /// Nodes where our token was found and deleted.
    pub(crate) released: usize,
    /// Nodes that answered that our token was not there (expired, or never applied).
    pub(crate) absent: usize,
    pub(crate) failures: Vec<NodeError>,
}
