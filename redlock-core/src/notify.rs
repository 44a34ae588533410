//! Release notifications: waiters in other processes are woken when a lock is released.
//!
//! The release script publishes `<key>:released` on every node where it deleted our key. A task
//! that found a lock held (the head of its process's queue, see [`local`](crate::local)) subscribes
//! to that channel on every node and sleeps until a message arrives or its retry pause runs out,
//! whichever is first. So a released lock is taken over within one round trip, and the pause is
//! only a fallback bound (for a missed message, a node without pub/sub, a dropped connection).
//! Nothing is subscribed while there is no contention.

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

/// The channel a release of `key` is announced on.
pub(crate) fn channel(key: &str) -> String {
    format!("{key}:released")
}

/// How long a channel stays subscribed after its last watcher left.
const LINGER: Duration = Duration::from_secs(1);

/// Channel name → the wake-up of every watch on it (empty while lingering).
type Watched = Arc<Mutex<HashMap<String, Vec<Arc<Notify>>>>>;

/// The subscriptions of one `Redlock`: one pub/sub connection per node, opened on first use.
pub(crate) struct Notifier {
    feeds: Vec<Feed>,
    watched: Watched,
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
}

impl Notifier {
    /// A notifier for nodes reachable through `clients` (nodes given as user pools have none
    /// and are simply not watched).
    pub(crate) fn new(clients: Vec<Client>, timeout: Duration) -> Self {
        Notifier {
            feeds: clients
                .into_iter()
                .map(|client| Feed {
                    client,
                    timeout,
                    sink: tokio::sync::Mutex::new(None),
                })
                .collect(),
            watched: Arc::default(),
        }
    }

    /// True while this client listens for the release of `key`: it was contended moments ago.
    pub(crate) fn is_watched(&self, key: &str) -> bool {
        self.watched
            .lock()
            .map(|w| w.contains_key(&channel(key)))
            .unwrap_or(false)
    }

    /// Subscribes to the release of `keys` on node `node` (the sequencer of the key), bounded by
    /// the node timeout; if it fails, the waiter's retry pause is the fallback.
    pub(crate) async fn watch(self: &Arc<Self>, keys: &[String], node: usize) -> Watch {
        let notify = Arc::new(Notify::new());
        let channels: Vec<String> = keys.iter().map(|k| channel(k)).collect();
        let mut fresh = Vec::new();
        if let Ok(mut watched) = self.watched.lock() {
            for ch in &channels {
                // An entry exists while subscribed, lingering ones included.
                if !watched.contains_key(ch) {
                    fresh.push(ch.clone());
                }
                watched.entry(ch.clone()).or_default().push(notify.clone());
            }
        }
        if !fresh.is_empty() {
            let watched = &self.watched;
            // One node is enough to hear a release (every node announces it), and one message
            // per release per waiter keeps a crowd of waiters from waking three times each.
            if let Some(feed) = self.feeds.get(node).or_else(|| self.feeds.first()) {
                feed.subscribe(&fresh, watched).await;
            }
        }
        Watch {
            notifier: self.clone(),
            channels,
            notify,
        }
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
                let (flag, watched) = (dead.clone(), watched.clone());
                tokio::spawn(async move {
                    while let Some(msg) = stream.next().await {
                        if let Ok(watched) = watched.lock()
                            && let Some(watchers) = watched.get(msg.get_channel_name())
                        {
                            // One stored permit each: a wake-up that lands before the waiter
                            // sleeps is not lost, and three nodes announcing one release wake
                            // it once.
                            watchers.iter().for_each(|n| n.notify_one());
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
    /// Resolves when a release of one of the keys was announced (possibly before this call).
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut idle = Vec::new();
        if let Ok(mut watched) = self.notifier.watched.lock() {
            for ch in &self.channels {
                if let Some(watchers) = watched.get_mut(ch) {
                    watchers.retain(|n| !Arc::ptr_eq(n, &self.notify));
                    if watchers.is_empty() {
                        idle.push(ch.clone());
                    }
                }
            }
        }
        if idle.is_empty() {
            return;
        }
        // A contended lock is usually wanted again soon: keep listening a little longer rather
        // than unsubscribing and subscribing again on every acquisition.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let notifier = self.notifier.clone();
            runtime.spawn(async move {
                tokio::time::sleep(LINGER).await;
                let gone: Vec<String> = match notifier.watched.lock() {
                    Ok(mut watched) => idle
                        .into_iter()
                        .filter(|ch| {
                            let unused = watched.get(ch).is_some_and(Vec::is_empty);
                            if unused {
                                watched.remove(ch);
                            }
                            unused
                        })
                        .collect(),
                    Err(_) => return,
                };
                if !gone.is_empty() {
                    join_all(notifier.feeds.iter().map(|f| f.unsubscribe(&gone))).await;
                }
            });
        }
    }
}
