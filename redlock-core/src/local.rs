//! Turns: in-process FIFO queueing of tasks that want the same lock.
//!
//! Without it, every task of a process that waits for a busy resource polls the nodes on its own
//! retry timer: the nodes see a storm of failing SETs, the task that just released usually wins
//! again (it is already awake), and waits are long and unfair. With it, only the task at the head
//! of the process's queue talks to the nodes; when a local holder releases, the next task in line
//! is woken as soon as the deletes are sent (before their replies) and acquires in one round
//! trip, its SETs queued behind the deletes on the same connections. Tasks of *other* processes
//! still compete through the nodes as usual, so this adds exclusion and never weakens it.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::sync::oneshot;

use crate::node::Keys;

/// The queues of one `Redlock`, one per resource set with local interest.
#[derive(Default)]
pub(crate) struct LocalQueues {
    /// Per set of keys (one for nearly every lock): whether a task holds the turn, and who
    /// waits for it in arrival order. An entry exists only while some task holds or waits, so
    /// the map stays as small as the contention. Keyed by the lock's own shared keys, so that
    /// taking a turn copies no string.
    queues: Mutex<HashMap<Keys, Queue>>,
}

#[derive(Default)]
struct Queue {
    held: bool,
    waiters: VecDeque<oneshot::Sender<Turn>>,
}

impl fmt::Debug for LocalQueues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self.queues.lock().map(|q| q.len()).unwrap_or(0);
        f.debug_struct("LocalQueues").field("keys", &len).finish()
    }
}

/// The right to talk to the nodes about one key on behalf of this process. Held while acquiring
/// and for the lifetime of the lock; dropping it hands it to the next waiter.
pub(crate) struct Turn {
    queues: Arc<LocalQueues>,
    key: Keys,
    /// False for a turn that failed to reach a waiter and is being passed on by hand.
    armed: bool,
}

impl LocalQueues {
    /// Takes the turn for `key` if nobody in this process holds it.
    pub(crate) fn try_turn(self: &Arc<Self>, key: &Keys) -> Option<Turn> {
        let mut queues = self.queues.lock().ok()?;
        let queue = queues.entry(key.clone()).or_default();
        if queue.held {
            return None;
        }
        queue.held = true;
        Some(self.turn_for(key))
    }

    /// Waits in line for the turn of `key`, until `until` at the latest.
    pub(crate) async fn turn(self: &Arc<Self>, key: &Keys, until: Instant) -> Option<Turn> {
        let rx = {
            let mut queues = self.queues.lock().ok()?;
            let queue = queues.entry(key.clone()).or_default();
            if !queue.held {
                queue.held = true;
                return Some(self.turn_for(key));
            }
            let (tx, rx) = oneshot::channel();
            queue.waiters.push_back(tx);
            rx
        };
        // Giving up drops the receiver: the turn then skips us (or, if it was already sent,
        // dropping it inside the channel passes it on).
        tokio::time::timeout_at(until.into(), rx).await.ok()?.ok()
    }

    fn turn_for(self: &Arc<Self>, key: &Keys) -> Turn {
        Turn {
            queues: self.clone(),
            key: key.clone(),
            armed: true,
        }
    }

    /// Hands the turn of `key` to the first waiter still waiting, or frees it.
    fn pass(self: &Arc<Self>, key: &Keys) {
        let Ok(mut queues) = self.queues.lock() else {
            return;
        };
        let Some(queue) = queues.get_mut(key) else {
            return;
        };
        while let Some(waiter) = queue.waiters.pop_front() {
            match waiter.send(self.turn_for(key)) {
                Ok(()) => return,
                // That waiter gave up: disarm the returned turn so it does not pass again
                // (we hold the map lock) and try the next one.
                Err(mut turn) => turn.armed = false,
            }
        }
        queues.remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.queues.lock().map(|q| q.len()).unwrap_or(0)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.armed {
            self.queues.pass(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn keys(key: &str) -> Keys {
        vec![key.to_owned()].into()
    }

    #[tokio::test]
    async fn turns_are_handed_over_in_arrival_order() {
        let queues = Arc::new(LocalQueues::default());
        let first = queues.try_turn(&keys("k")).unwrap();
        assert!(queues.try_turn(&keys("k")).is_none());
        let until = Instant::now() + Duration::from_secs(5);
        let (q2, q3) = (queues.clone(), queues.clone());
        let second = tokio::spawn(async move { q2.turn(&keys("k"), until).await.map(|t| (2, t)) });
        tokio::task::yield_now().await;
        let third = tokio::spawn(async move { q3.turn(&keys("k"), until).await.map(|t| (3, t)) });
        tokio::task::yield_now().await;
        drop(first);
        let (who, turn) = second.await.unwrap().unwrap();
        assert_eq!(who, 2);
        assert!(!third.is_finished());
        drop(turn);
        let (who, turn) = third.await.unwrap().unwrap();
        assert_eq!(who, 3);
        drop(turn);
        assert_eq!(
            queues.len(),
            0,
            "entries are removed when nobody holds or waits"
        );
    }

    #[tokio::test]
    async fn a_waiter_that_gave_up_is_skipped() {
        let queues = Arc::new(LocalQueues::default());
        let first = queues.try_turn(&keys("k")).unwrap();
        let gone = queues.turn(&keys("k"), Instant::now()).await;
        assert!(gone.is_none(), "deadline already passed");
        let q = queues.clone();
        let waiter = tokio::spawn(async move {
            q.turn(&keys("k"), Instant::now() + Duration::from_secs(5))
                .await
        });
        tokio::task::yield_now().await;
        drop(first);
        assert!(waiter.await.unwrap().is_some());
        assert_eq!(queues.len(), 0);
    }

    #[tokio::test]
    async fn other_keys_are_independent() {
        let queues = Arc::new(LocalQueues::default());
        let _a = queues.try_turn(&keys("a")).unwrap();
        assert!(queues.try_turn(&keys("b")).is_some());
    }
}
