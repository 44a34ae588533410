//! Release notifications and wait queues: waiters in other processes are woken when a lock is
//! released, one at a time and in the order they asked.
//!
//! A task that found a lock held (the head of its process's queue, see [`local`](crate::local))
//! subscribes on the key's *sequencer* node (the same node for every client: [`sequencer`]) and
//! sleeps until a message arrives or its retry pause runs out, whichever is first. Nothing is
//! subscribed while there is no contention.
//!
//! For a single-resource lock without fencing the waiter also joins the key's **wait queue** on
//! the sequencer node ([`FAIR_ACQUIRE`](crate::scripts::FAIR_ACQUIRE)): that node then grants
//! the key only to the waiter at the head of the queue, and the release script turns to exactly
//! that waiter, on `<key>:released:<waiter>`: a contended lock's release hands the key over on
//! that node to the token the waiter registered when it joined, and publishes the token, so
//! that the waiter asks only the other nodes
//! ([`RELEASE_CONTENDED`](crate::scripts::RELEASE_CONTENDED)); an uncontended lock's release
//! only wakes it, and a release passes over waiters whose lease ran out. A queued waiter listens
//! on its turn channel on every node: the holder's release can hand the key over to it on each
//! of them at once, in one trip ([`handover`](crate::handover)).
//! Waiters thus take the lock in arrival order, and a release wakes one process instead of all
//! of them (every woken waiter would otherwise send a SET that all but one lose). The queue only
//! decides who *asks* first: a lock is still granted only by a quorum of `SET NX` (the sequencer
//! node's, for a hand-over, set by the release), so it adds no safety assumption. A waiter keeps
//! its place by
//! asking again within its lease; one that crashed is dropped from the head once its lease runs
//! out, and one that gives up leaves at once ([`LEAVE_QUEUE`](crate::scripts::LEAVE_QUEUE)).
//!
//! Other waiters (`lock_many`, fenced locks) listen to `<key>:released`, which the release
//! script publishes on the sequencer node; refused there, they flag the key as waited for
//! ([`waiting_flag`](crate::scripts::waiting_flag)). The release of a lock taken uncontended
//! wakes anybody only while the key's queue or its flag exists: nearly every release has nobody
//! to wake. After a split vote in which a waiter's attempt won the sequencer node and lost the
//! vote, the holder holds nothing there: that waiter flags the key and listens to every release,
//! and the holder's release there, finding the key free, wakes it. A `lock_many` waiter listens
//! on its first key's sequencer node only, so the release of another of its keys whose sequencer
//! is another node does not wake it. Either way the retry pause is only a fallback bound, for a
//! missed message, a node without pub/sub or a dropped connection.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bb8_redis::redis::{Client, aio::PubSubSink};
use futures_util::{StreamExt, future::join_all};
use tokio::sync::Notify;
use tracing::debug;

use crate::handover::Notice;

/// The channel a release of `key` is announced on, to every listener.
pub(crate) fn channel(key: &str) -> String {
    format!("{key}:released")
}

/// The channel on which `waiter` is told that `key` is free and its turn has come.
pub(crate) fn turn_channel(key: &str, waiter: &str) -> String {
    format!("{key}:released:{waiter}")
}

/// The node a sequenced attempt asks first: the same for every client of `key` that lists the
/// nodes in the same order (FNV-1a, stable across processes and Rust versions).
pub(crate) fn sequencer(key: &str, nodes: usize) -> usize {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    usize::try_from(hash % nodes.max(1) as u64).unwrap_or(0)
}

/// How long a channel stays subscribed after its last watcher left.
const LINGER: Duration = Duration::from_secs(1);

/// Channel name → its watches (none while lingering).
type Watched = Arc<Mutex<HashMap<String, Listeners>>>;

/// The watches on one subscribed channel.
#[derive(Default)]
struct Listeners {
    /// The wake-up of every watch on it (empty while lingering).
    watchers: Vec<Arc<Notify>>,
    /// When the last watch left, while none is on it. The channel is unsubscribed once it has
    /// been idle for [`LINGER`] without a break, so a client that waits for a lock again and
    /// again (holding it in between) stays subscribed.
    idle_at: Option<tokio::time::Instant>,
    /// A linger timer is running for it: one per idle channel, not one per watch.
    timed: bool,
    /// The non-empty messages on it not read yet, with the node each came from: on a waiter's
    /// turn channel, hand-over notices ([`Notice`]). Only the last of each node is kept.
    payloads: Vec<(usize, String)>,
}

/// The subscriptions of one `Redlock`: one pub/sub connection per node, opened on first use.
pub(crate) struct Notifier {
    feeds: Vec<Feed>,
    watched: Watched,
    /// This client's id in wait queues: random, so that clients never share one.
    waiter: Arc<str>,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("nodes", &self.feeds.len())
            .finish()
    }
}

/// The pub/sub connection to one node.
struct Feed {
    /// The node's index.
    node: usize,
    client: Client,
    timeout: Duration,
    /// The open connection's sink and a flag its reader sets when the connection ends. The
    /// async mutex makes concurrent first subscriptions share one connect.
    sink: tokio::sync::Mutex<Option<(PubSubSink, Arc<AtomicBool>)>>,
}

/// A registration for the release of some keys; unsubscribes when dropped.
pub(crate) struct Watch {
    notifier: Arc<Notifier>,
    channels: Vec<String>,
    notify: Arc<Notify>,
    /// A channel had to be subscribed for it (none was still listening).
    fresh: bool,
}

impl Notifier {
    /// A notifier for nodes reachable through `clients` (nodes given as user pools have none
    /// and are simply not watched).
    pub(crate) fn new(clients: Vec<Client>, timeout: Duration) -> Self {
        Notifier {
            feeds: clients
                .into_iter()
                .enumerate()
                .map(|(node, client)| Feed {
                    node,
                    client,
                    timeout,
                    sink: tokio::sync::Mutex::new(None),
                })
                .collect(),
            watched: Arc::default(),
            waiter: format!("{:016x}", rand::random::<u64>()).into(),
        }
    }

    /// This client's id in wait queues.
    pub(crate) fn waiter(&self) -> &Arc<str> {
        &self.waiter
    }

    /// True while this client listens for the release of `key`, in turn or to every release:
    /// it was contended moments ago.
    pub(crate) fn is_watched(&self, key: &str) -> bool {
        self.watched
            .lock()
            .map(|w| {
                // Nothing is subscribed while there is no contention: answer without building
                // channel names, on every uncontended acquisition.
                !w.is_empty()
                    && (w.contains_key(&turn_channel(key, &self.waiter))
                        || w.contains_key(&channel(key)))
            })
            .unwrap_or(false)
    }

    /// Subscribes to the release of `keys` on node `node` (the sequencer of the key), bounded by
    /// the node timeout; if it fails, the waiter's retry pause is the fallback. A queued waiter
    /// (`in_turn`) listens only for its turn; others hear every release. Unless `answering` (the
    /// sequencer failed to answer a moment ago), that subscription is made in the background too:
    /// waiting out the node's timeout would only delay the waiter.
    pub(crate) async fn watch(
        self: &Arc<Self>,
        keys: &[String],
        node: usize,
        in_turn: bool,
        answering: bool,
    ) -> Watch {
        let notify = Arc::new(Notify::new());
        let channels: Vec<String> = if in_turn {
            keys.iter().map(|k| turn_channel(k, &self.waiter)).collect()
        } else {
            keys.iter().map(|k| channel(k)).collect()
        };
        let mut fresh = Vec::new();
        if let Ok(mut watched) = self.watched.lock() {
            for ch in &channels {
                // An entry exists while subscribed, lingering ones included.
                if !watched.contains_key(ch) {
                    fresh.push(ch.clone());
                }
                let listeners = watched.entry(ch.clone()).or_default();
                listeners.watchers.push(notify.clone());
                listeners.idle_at = None;
            }
        }
        if !fresh.is_empty() {
            // A waiter outside the queue listens on the sequencer only: one message per release
            // per waiter keeps a crowd of waiters from waking three times each. A queued one
            // listens on every node, which may hand the key over to it in one trip (see
            // `handover`), but only the sequencer's message is needed: the others are listened
            // to in the background, so that a slow or paused node costs the waiter nothing.
            let first = if self.feeds.get(node).is_some() {
                node
            } else {
                0
            };
            let background =
                move |index: usize| (index != first && in_turn) || (index == first && !answering);
            self.listen_in_background(&fresh, background);
            if answering && let Some(feed) = self.feeds.get(first) {
                // Awaited: the sequencer's message is the one that wakes a waiter.
                feed.subscribe(&fresh, &self.watched).await;
            }
        }
        Watch {
            notifier: self.clone(),
            channels,
            notify,
            fresh: !fresh.is_empty(),
        }
    }
}

impl Notifier {
    /// Subscribes `channels` on the nodes `which` picks, in a task of its own (each
    /// subscription bounded by the node timeout). A channel whose last watch ended meanwhile may
    /// have been unsubscribed already (see [`linger`]), before this subscription landed: once
    /// done, the channels nobody listens on any more are unsubscribed again.
    fn listen_in_background(
        self: &Arc<Self>,
        channels: &[String],
        which: impl Fn(usize) -> bool + Send + Sync + 'static,
    ) {
        if !(0..self.feeds.len()).any(&which) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (notifier, channels) = (self.clone(), channels.to_vec());
        runtime.spawn(async move {
            let others = || {
                notifier
                    .feeds
                    .iter()
                    .enumerate()
                    .filter(|(index, _)| which(*index))
                    .map(|(_, feed)| feed)
            };
            join_all(others().map(|feed| feed.subscribe(&channels, &notifier.watched))).await;
            let gone: Vec<String> = match notifier.watched.lock() {
                Ok(watched) => channels
                    .iter()
                    .filter(|ch| !watched.contains_key(*ch))
                    .cloned()
                    .collect(),
                Err(_) => return,
            };
            if !gone.is_empty() {
                join_all(others().map(|feed| feed.unsubscribe(&gone))).await;
            }
        });
    }
}

impl Feed {
    async fn subscribe(&self, channels: &[String], watched: &Watched) {
        let result = tokio::time::timeout(self.timeout, async {
            let mut slot = self.sink.lock().await;
            let usable = slot
                .as_ref()
                .is_some_and(|(_, dead)| !dead.load(Ordering::Relaxed));
            if !usable {
                let pubsub = self.client.get_async_pubsub().await?;
                let (sink, mut stream) = pubsub.split();
                let dead = Arc::new(AtomicBool::new(false));
                let (flag, watched, node) = (dead.clone(), watched.clone(), self.node);
                tokio::spawn(async move {
                    while let Some(msg) = stream.next().await {
                        if let Ok(mut watched) = watched.lock()
                            && let Some(listeners) = watched.get_mut(msg.get_channel_name())
                        {
                            if let Ok(payload) = msg.get_payload::<String>()
                                && !payload.is_empty()
                            {
                                listeners.payloads.retain(|(n, _)| *n != node);
                                listeners.payloads.push((node, payload));
                            }
                            // One stored permit each: a wake-up that lands before the waiter
                            // sleeps is not lost, and three nodes announcing one release wake
                            // it once.
                            listeners.watchers.iter().for_each(|n| n.notify_one());
                        }
                    }
                    flag.store(true, Ordering::Relaxed);
                });
                *slot = Some((sink, dead));
            }
            match slot.as_mut() {
                Some((sink, _)) => sink.subscribe(channels).await,
                None => Ok(()),
            }
        })
        .await;
        if !matches!(result, Ok(Ok(()))) {
            debug!("release notifications unavailable on a node; polling covers it");
        }
    }

    async fn unsubscribe(&self, channels: &[String]) {
        let _ = tokio::time::timeout(self.timeout, async {
            let mut slot = self.sink.lock().await;
            if let Some((sink, _)) = slot.as_mut() {
                let _ = sink.unsubscribe(channels).await;
            }
        })
        .await;
    }
}

impl Watch {
    /// True when this watch started listening just now: a release announced before it could
    /// not have been heard.
    pub(crate) fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Resolves when a release of one of the keys was announced (possibly before this call).
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }

    /// The hand-over notices for `token` heard on this watch's channels since the last call,
    /// with the node each came from (notices for other tokens are dropped: stale).
    pub(crate) fn notices(&self, token: &str) -> Vec<(usize, Notice)> {
        let Ok(mut watched) = self.notifier.watched.lock() else {
            return Vec::new();
        };
        let mut notices = Vec::new();
        for ch in &self.channels {
            if let Some(listeners) = watched.get_mut(ch) {
                for (node, payload) in listeners.payloads.drain(..) {
                    if let Some(notice) = Notice::parse(&payload)
                        && notice.token == token
                    {
                        notices.push((node, notice));
                    }
                }
            }
        }
        notices
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut arm = Vec::new();
        if let Ok(mut watched) = self.notifier.watched.lock() {
            let now = tokio::time::Instant::now();
            for ch in &self.channels {
                if let Some(listeners) = watched.get_mut(ch) {
                    listeners.watchers.retain(|n| !Arc::ptr_eq(n, &self.notify));
                    if listeners.watchers.is_empty() {
                        listeners.idle_at = Some(now);
                        if !listeners.timed {
                            listeners.timed = true;
                            arm.push(ch.clone());
                        }
                    }
                }
            }
        }
        if arm.is_empty() {
            return;
        }
        // A contended lock is usually wanted again soon: keep listening a little longer rather
        // than unsubscribing and subscribing again on every acquisition.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let notifier = self.notifier.clone();
            runtime.spawn(linger(notifier, arm));
        }
    }
}

/// Unsubscribes `channels` once each has been idle for [`LINGER`] in a row; a channel that is
/// watched again meanwhile is left alone (its next idle spell arms a new timer).
async fn linger(notifier: Arc<Notifier>, mut channels: Vec<String>) {
    let mut wake = tokio::time::Instant::now() + LINGER;
    loop {
        tokio::time::sleep_until(wake).await;
        let now = tokio::time::Instant::now();
        let mut gone = Vec::new();
        let mut next: Option<tokio::time::Instant> = None;
        {
            let Ok(mut watched) = notifier.watched.lock() else {
                return;
            };
            channels.retain(|ch| {
                let Some(listeners) = watched.get_mut(ch) else {
                    return false;
                };
                match listeners.idle_at {
                    Some(idle_at) if listeners.watchers.is_empty() => {
                        if now >= idle_at + LINGER {
                            watched.remove(ch);
                            gone.push(ch.clone());
                            false
                        } else {
                            let due = idle_at + LINGER;
                            next = Some(next.map_or(due, |n| n.min(due)));
                            true
                        }
                    }
                    _ => {
                        listeners.timed = false;
                        false
                    }
                }
            });
        }
        if !gone.is_empty() {
            join_all(notifier.feeds.iter().map(|f| f.unsubscribe(&gone))).await;
        }
        match next {
            Some(due) => wake = due,
            None => return,
        }
    }
}
