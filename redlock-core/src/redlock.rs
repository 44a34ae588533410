//! The [`Redlock`] handle: acquisition with quorum, validity and retries.

use std::{
    collections::VecDeque,
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use tracing::{Instrument, debug, instrument, warn};

use crate::{
    builder::RedlockBuilder,
    clock::LeaseInstant,
    config::{RedlockConfig, Settings},
    durability::NodeDurability,
    error::{Error, Result},
    fencing::FencingToken,
    finisher::Finisher,
    handover::{Notice, Successor},
    load::Load,
    local::{LocalQueues, Turn},
    lock::Lock,
    node::{Ask, Fair, Keys, Node},
    notify::{Notifier, Watch, sequencer},
    renewer::Renewer,
    retry::Retry,
    silence::Silence,
    timing,
    token::LockToken,
    votes::{Heirship, Votes, tried_again},
};

/// Pauses before a waiter whose turn came asks the nodes that were still held again (see
/// `Redlock::attempt`): the previous holder's release is on its way to them.
const IN_TURN_PAUSES: [Duration; 5] = [
    Duration::ZERO,
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(4),
    Duration::from_millis(8),
];

/// How often a waiter with others ahead of it in the wait queue asks again (it is woken when its
/// turn comes; asking again only renews its place).
const QUEUE_POLL: Duration = Duration::from_millis(100);

/// How long a waiter keeps its place in a wait queue without asking again: well above its
/// longest pause, so only a waiter that crashed or stalled loses it.
fn queue_lease(retry: &Retry) -> Duration {
    retry
        .delay
        .saturating_add(retry.jitter)
        .max(QUEUE_POLL)
        .saturating_mul(4)
        .max(Duration::from_secs(1))
}

/// Our place in a wait queue: leaves it (in the background, tried again while it gets no
/// answer) when dropped still armed, i.e. when the waiter gave up, failed or was cancelled
/// before it was granted the lock, or was granted around the line.
struct QueueSpot {
    shared: Arc<Shared>,
    key: String,
    node: usize,
    /// The token we registered for a hand-over: leaving frees the key if a release handed it
    /// to this token meanwhile.
    heir: Option<Arc<str>>,
    /// How long the tombstones for that token live (see [`tombstone_life`]).
    tombstone_life: Duration,
    armed: bool,
}

impl QueueSpot {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for QueueSpot {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (shared, key, node, heir, life) = (
            self.shared.clone(),
            std::mem::take(&mut self.key),
            self.node,
            self.heir.take(),
            self.tombstone_life,
        );
        runtime.spawn(
            async move {
                let waiter = shared.notifier.waiter().clone();
                // Left in line, a release there would hand the key over to our registered
                // token, and nobody would free it before its ttl: leaving is tried again while
                // it gets no answer (harmless to repeat).
                let sequencer = &shared.nodes[node];
                let leave = |bound| sequencer.leave_queue(&key, &waiter, heir.as_deref(), bound);
                let node_timeout = shared.settings.node_timeout;
                let left = tried_again(node_timeout, leave(node_timeout).await, leave).await;
                if let Err(error) = left {
                    debug!(%error, "could not leave the wait queue; the lease will drop us");
                }
                // A holder may have named our token to the other nodes (see `handover`).
                if let Some(token) = heir {
                    retire_elsewhere(&shared, &key, node, &token, life).await;
                }
            }
            .instrument(tracing::debug_span!("redlock.leave_queue")),
        );
    }
}

/// Frees `key` on every node but the sequencer `first` where it holds `token`, a token
/// registered for a hand-over that its waiter stops using, and leaves a tombstone for it where
/// it does not: a release naming it may still be on its way ([`handover`](crate::handover)).
async fn retire_elsewhere(
    shared: &Arc<Shared>,
    key: &str,
    first: usize,
    token: &str,
    life: Duration,
) {
    let keys = [key.to_owned()];
    let tombstones = [crate::scripts::tombstone(key, token)];
    let heir = crate::node::QueueRelease::Heir(crate::node::HeirRelease {
        tombstones: &tombstones,
        life,
        successor: None,
    });
    // One bound for them all: the releases have none of their own.
    let releases = join_all(
        shared
            .nodes
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != first)
            .map(|(_, node)| {
                node.release(
                    crate::node::Via::Any,
                    &keys,
                    token,
                    crate::node::Wake::Nobody,
                    Some(heir),
                )
            }),
    );
    let _ = tokio::time::timeout(shared.settings.node_timeout, releases).await;
}

/// How long a registered token's tombstone lives on a node: a holder names a successor only
/// within the lease the successor had left in the sequencer's line, so no release naming it is
/// sent later than a lease after its last ask; the node timeout covers the release's trip.
fn tombstone_life(shared: &Shared, lease: Duration) -> Duration {
    lease.saturating_add(shared.settings.node_timeout)
}

/// What a waiter heard after a wake-up: hand-over notices for its registered token, from the
/// sequencer node and from the others.
#[derive(Default)]
struct Heard {
    sequencer: Option<Notice>,
    others: Vec<(usize, Notice)>,
}

impl Heard {
    /// Adds `notices`, the sequencer node being `first`: the last notice of each node counts.
    fn record(&mut self, notices: Vec<(usize, Notice)>, first: usize) {
        for (node, notice) in notices {
            if node == first {
                self.sequencer = Some(notice);
            } else {
                self.others.retain(|(n, _)| *n != node);
                self.others.push((node, notice));
            }
        }
    }
}

/// A hand-over to act on: when the key can have been set for us at the earliest (the start of
/// the oldest ask the counted notices name), the other nodes whose notices count, and the
/// successor to name at our own release.
struct TakeOver {
    at: LeaseInstant,
    noticed: Vec<usize>,
    successor: Option<Successor>,
}

/// The token a queued waiter registers for a hand-over (see `scripts::RELEASE_CONTENDED`),
/// drawn afresh for each hand-over: a release that finds us at the head of the queue sets the
/// key to it on the sequencer node. A hand-over's validity counts from a moment before the node
/// set the key: the notice names the last ask the node had seen (sent before the hand-over), and
/// an ask answered with a place in the queue proves the key was not handed over when it ran.
struct Heir {
    /// Drawn at the first ask that carries it: an uncontended `lock` never draws one.
    token: Option<Arc<str>>,
    /// The asks that carried the token, by number, with when each was started (the last few).
    asks: VecDeque<(u64, LeaseInstant)>,
    next_ask: u64,
    /// No hand-over to the token can have happened before this: when the first ask carrying
    /// it started, then when the last ask answered with a place in the queue started.
    floor: Option<LeaseInstant>,
}

/// How many asks of one wait a hand-over notice may name (older ones are forgotten: a notice
/// naming one is ignored, and the next ask finds the hand-over instead).
const ASKS_KEPT: usize = 16;

impl Heir {
    fn fresh() -> Heir {
        Heir {
            token: None,
            asks: VecDeque::new(),
            next_ask: 0,
            floor: None,
        }
    }

    /// The token and a number for an ask about to start, whose start it notes.
    fn register(&mut self) -> (Arc<str>, u64) {
        let (ask, now) = (self.next_ask, LeaseInstant::now());
        self.next_ask += 1;
        if self.asks.len() == ASKS_KEPT {
            self.asks.pop_front();
        }
        self.asks.push_back((ask, now));
        self.floor.get_or_insert(now);
        let token = self
            .token
            .get_or_insert_with(|| LockToken::random().encode());
        (token.clone(), ask)
    }

    /// When ask `ask` started, if it is still remembered.
    fn started(&self, ask: u64) -> Option<LeaseInstant> {
        self.asks
            .iter()
            .find_map(|(n, at)| (*n == ask).then_some(*at))
    }

    /// Ask `ask` was answered with a place in the queue: no hand-over happened before it ran.
    fn queued(&mut self, ask: u64) {
        if let Some(at) = self.started(ask) {
            self.floor = Some(self.floor.map_or(at, |floor| floor.max(at)));
        }
    }

    /// The token, once an ask may have registered it.
    fn registered(&self) -> Option<&Arc<str>> {
        self.token.as_ref()
    }
}

/// A client for one set of independent Redis nodes.
///
/// `Redlock` is a cheap handle: it holds an `Arc` to the node pools and settings, so clone it
/// into every task that needs locks rather than wrapping it in another `Arc`.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use redlock_core::Redlock;
///
/// # async fn demo() -> Result<(), redlock_core::Error> {
/// let redlock = Redlock::builder()
///     .nodes(["redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003"])
///     .ttl(Duration::from_secs(10))
///     .build()?;
/// let lock = redlock.lock("orders:42").await?;
/// // ... work while lock.is_valid() ...
/// lock.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Redlock {
    shared: Arc<Shared>,
}

impl Redlock {
    /// What every clone shares, for the crate's unit tests.
    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// What every clone of a [`Redlock`] shares.
pub(crate) struct Shared {
    /// What the client was built from (URLs with credentials: never logged).
    pub(crate) config: RedlockConfig,
    pub(crate) nodes: Vec<Node>,
    pub(crate) settings: Settings,
    /// In-process queues of tasks waiting for the same lock.
    pub(crate) local: Arc<LocalQueues>,
    /// Subscriptions to release announcements, for waiters blocked by other processes.
    pub(crate) notifier: Arc<Notifier>,
    /// Batches the extensions of auto-extended locks.
    pub(crate) renewer: Renewer,
    /// Finishes the node work nobody waits for (stragglers, dropped attempts).
    pub(crate) finisher: Finisher,
    /// The `lock` and `release` calls in flight.
    pub(crate) load: Load,
    /// Sequencer nodes that a waiter saw fail to answer a moment ago.
    pub(crate) silence: Silence,
    /// Every node sends all commands through one connection (our own pools), so a release can
    /// let the next local waiter go as soon as its deletes are sent (see `Lock::release`).
    pub(crate) keeps_order: bool,
}

impl fmt::Debug for Redlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redlock")
            .field("nodes", &self.shared.nodes)
            .field("quorum", &self.shared.settings.quorum)
            .field("ttl", &self.shared.settings.ttl)
            .finish()
    }
}

/// Per-call overrides for [`Redlock::lock_with`] and [`Redlock::try_lock_with`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct LockOptions {
    /// Lease length. Defaults to the `Redlock`'s ttl.
    pub ttl: Option<Duration>,
    /// Retry policy. Defaults to the `Redlock`'s.
    pub retry: Option<Retry>,
    /// Issue a fencing token. Defaults to the `Redlock`'s setting.
    pub fencing: Option<bool>,
    /// Keep retrying until this much time has passed, however many attempts that takes.
    /// Defaults to `None`: the retry policy's attempts.
    pub wait: Option<Duration>,
}

impl LockOptions {
    /// Options with every value taken from the `Redlock`.
    pub fn new() -> Self {
        LockOptions::default()
    }

    /// Sets the lease length. Defaults to the `Redlock`'s ttl.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets the retry policy. Defaults to the `Redlock`'s.
    #[must_use]
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Waits for the lock up to `max` (queueing, woken by releases, retrying with the policy's
    /// pauses), then returns the last attempt's error: [`Error::Contended`] or
    /// [`Error::NoQuorum`]. The attempt count of the retry policy is ignored. Defaults to
    /// `None`: the policy's attempts.
    #[must_use]
    pub fn wait(mut self, max: Duration) -> Self {
        self.wait = Some(max);
        self
    }

    /// Issues a fencing token with this lock (or not). Defaults to the `Redlock`'s setting.
    #[must_use]
    pub fn fencing(mut self, enabled: bool) -> Self {
        self.fencing = Some(enabled);
        self
    }
}

impl Redlock {
    /// A builder with every setting at its default.
    pub fn builder() -> RedlockBuilder {
        RedlockBuilder::new()
    }

    /// Builds from `REDLOCK_*` environment variables; see [`RedlockConfig::from_env`].
    ///
    /// # Errors
    ///
    /// [`Error::NoNodes`] when `REDLOCK_NODES` is unset or empty, [`Error::InvalidConfig`] for a
    /// malformed variable, and whatever [`RedlockBuilder::build`] rejects.
    pub fn from_env() -> Result<Redlock> {
        RedlockBuilder::from_config(RedlockConfig::from_env()?).build()
    }

    pub(crate) fn from_parts(
        config: RedlockConfig,
        nodes: Vec<Node>,
        settings: Settings,
    ) -> Redlock {
        let silence = Silence::new(nodes.len(), Silence::span(settings.node_timeout));
        Redlock {
            shared: Arc::new(Shared {
                config,
                keeps_order: nodes.iter().all(Node::keeps_order),
                notifier: Arc::new(Notifier::new(
                    nodes.iter().filter_map(|n| n.client().cloned()).collect(),
                    settings.node_timeout,
                )),
                nodes,
                settings,
                local: Arc::default(),
                renewer: Renewer::default(),
                finisher: Finisher::default(),
                load: Load::default(),
                silence,
            }),
        }
    }

    /// The configuration this client was built from, for components that talk to the same
    /// nodes (the apalis guard's completion markers, for one). Its node URLs may carry
    /// credentials; its `Debug` redacts them. Nodes added with
    /// [`RedlockBuilder::pool`] have no URL here.
    pub fn config(&self) -> &RedlockConfig {
        &self.shared.config
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.shared.nodes.len()
    }

    /// Votes needed to hold a lock.
    pub fn quorum(&self) -> usize {
        self.shared.settings.quorum
    }

    /// The default lease length.
    pub fn ttl(&self) -> Duration {
        self.shared.settings.ttl
    }

    /// Checks that a quorum of nodes answers `PING`, each within the node timeout. Optional:
    /// pools connect lazily on first use; call this at startup to fail fast on a bad deployment.
    /// With fencing on, it then asks the nodes about their persistence
    /// ([`durability`](Redlock::durability)) and logs a warning for each node that may lose its
    /// fence counters in a crash; that is not an error, as many servers cannot tell.
    ///
    /// # Errors
    ///
    /// [`Error::NoQuorum`] with the failure of each node that did not answer.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it writes nothing.
    #[instrument(level = "debug", skip_all, fields(nodes = self.shared.nodes.len()))]
    pub async fn connect(&self) -> Result<()> {
        let results = join_all(
            self.shared
                .nodes
                .iter()
                .map(|node| async move { node.ping().await.map_err(|kind| node.error(kind)) }),
        )
        .await;
        let failures: Vec<_> = results.into_iter().filter_map(|r| r.err()).collect();
        let answered = self.shared.nodes.len() - failures.len();
        if answered < self.quorum() {
            warn!(answered, quorum = self.quorum(), "nodes unreachable");
            return Err(Error::NoQuorum {
                acquired: answered,
                quorum: self.quorum(),
                failures,
            });
        }
        if self.shared.settings.fencing {
            for node in self.durability().await {
                if !node.durability.keeps_fence_counters() {
                    warn!(
                        node = %node.node,
                        durability = %node.durability,
                        "fencing is on, but this node may lose its fence counters in a crash: \
                         run it with AOF and appendfsync always"
                    );
                }
            }
        }
        Ok(())
    }

    /// What each node says about keeping its writes across a crash (`CONFIG GET append*`), in
    /// node order: the operational contract's persistence rule, checked at startup instead of
    /// assumed. Fencing tokens increase only while no node loses its fence counters, which
    /// takes AOF with `appendfsync always` (see
    /// [`keeps_fence_counters`](crate::Durability::keeps_fence_counters)); locks alone are
    /// also safe on nodes without it that stay down for the longest ttl after a crash.
    /// [`connect`](Redlock::connect) logs a warning for each node that does not keep its fence
    /// counters when fencing is on.
    ///
    /// Never fails: a node that cannot or will not tell (`CONFIG` disabled, a server without
    /// these settings, no answer within the node timeout) is
    /// [`Durability::Unknown`](crate::Durability::Unknown). Asks every node at once, each bounded
    /// by the node timeout.
    ///
    /// ```no_run
    /// # async fn example(redlock: redlock_core::Redlock) {
    /// for node in redlock.durability().await {
    ///     if !node.durability.keeps_fence_counters() {
    ///         eprintln!("{}: {}, fence counters at risk", node.node, node.durability);
    ///     }
    /// }
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it writes nothing.
    #[instrument(level = "debug", skip_all, fields(nodes = self.shared.nodes.len()))]
    pub async fn durability(&self) -> Vec<NodeDurability> {
        join_all(self.shared.nodes.iter().map(|node| async move {
            NodeDurability {
                node: node.addr().to_owned(),
                durability: node.durability().await,
            }
        }))
        .await
    }

    /// Acquires `resource`, retrying per the retry policy while it is contended or unavailable.
    ///
    /// # Errors
    ///
    /// - [`Error::EmptyKey`] for an empty resource.
    /// - [`Error::Contended`] when every attempt found the lock held by someone else.
    /// - [`Error::NoQuorum`] when too few nodes answered on the last attempt, with per-node errors.
    /// - [`Error::Expired`] when the last attempt reached a quorum too late to leave any validity.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future at any await leaves no key behind: SETs already sent finish in their
    /// own tasks, and a background task releases every node they may have reached, each behind its
    /// own SET.
    pub async fn lock(&self, resource: &str) -> Result<Lock> {
        // Straight to the shared body: one async layer less in every lock's future.
        self.lock_resources(one(resource), LockOptions::default())
            .await
    }

    /// [`lock`](Redlock::lock) with per-call options.
    ///
    /// # Errors
    ///
    /// As [`lock`](Redlock::lock), plus [`Error::InvalidTtl`] for a ttl out of range.
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Redlock::lock).
    pub async fn lock_with(&self, resource: &str, options: LockOptions) -> Result<Lock> {
        self.lock_resources(one(resource), options).await
    }

    /// Acquires several resources at once, all or nothing: on each node one script sets every
    /// key only if none of them is held. The lock then behaves as one (one deadline, one
    /// extension, one release). No deadlock is possible, whatever order callers name the
    /// resources in.
    ///
    /// In Redis Cluster or Dragonfly cluster mode every key of one script must live in one slot:
    /// give the resources a common hash tag, e.g. `{order:42}:payment` and `{order:42}:stock`.
    ///
    /// ```no_run
    /// # async fn demo(redlock: redlock_core::Redlock) -> Result<(), redlock_core::Error> {
    /// let lock = redlock.lock_many(["account:1", "account:2"]).await?;
    /// // ... move money between the two accounts ...
    /// lock.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`lock`](Redlock::lock) (an empty list is [`Error::EmptyKey`]), plus
    /// [`Error::InvalidConfig`] when fencing is enabled: tokens are per resource.
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Redlock::lock).
    pub async fn lock_many<I>(&self, resources: I) -> Result<Lock>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.lock_many_with(resources, LockOptions::default()).await
    }

    /// [`lock_many`](Redlock::lock_many) with per-call options.
    ///
    /// # Errors
    ///
    /// As [`lock_many`](Redlock::lock_many).
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Redlock::lock).
    pub async fn lock_many_with<I>(&self, resources: I, options: LockOptions) -> Result<Lock>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut resources: Vec<String> = resources
            .into_iter()
            .map(|r| r.as_ref().to_owned())
            .collect();
        resources.sort_unstable();
        resources.dedup();
        self.lock_resources(resources.into(), options).await
    }

    /// The body of every `lock*` call, in the one `redlock.lock` span each call has.
    #[instrument(name = "redlock.lock", level = "debug", skip_all, fields(key = %resources.first().map(String::as_str).unwrap_or("")))]
    async fn lock_resources(&self, resources: Resources, options: LockOptions) -> Result<Lock> {
        let _entered = self.shared.load.enter();
        let ttl = options.ttl.unwrap_or(self.shared.settings.ttl);
        let fenced = options.fencing.unwrap_or(self.shared.settings.fencing);
        let target = self.target(resources, ttl, fenced)?;
        let started = Instant::now();
        // Nearly every lock: no task of this process wants it and no other process was seen
        // contending for it moments ago, so the first attempt asks every node at once, as the
        // waiting loop's first round would. Only a lock that must wait carries that loop's
        // state, boxed: it is most of this future, and an uncontended lock never touches it.
        let mut first = None;
        if !self.shared.notifier.is_watched(&target.keys[0])
            && let Some(turn) = self.shared.local.try_turn(&target.keys)
        {
            let mut refused = Refused::default();
            let outcome = self
                .attempt(&target, ttl, fenced, Approach::Parallel, None, &mut refused)
                .await;
            match outcome {
                Ok(lock) => {
                    lock.hold_turn(turn);
                    return Ok(lock);
                }
                Err(error) => first = Some((turn, error, refused)),
            }
        }
        Box::pin(self.lock_waiting(target, options, ttl, fenced, started, first)).await
    }

    /// The rest of `lock_resources` for a lock that is contended (or failed its first attempt,
    /// `first`, made holding the local turn): queues behind the other tasks of this process,
    /// then asks again with the retry policy's pauses, in the key's wait queue and woken by
    /// releases when another process holds it.
    async fn lock_waiting(
        &self,
        target: Target,
        options: LockOptions,
        ttl: Duration,
        fenced: bool,
        started: Instant,
        first: Option<(Turn, Error, Refused)>,
    ) -> Result<Lock> {
        let retry = options.retry.unwrap_or(self.shared.settings.retry);
        // With `wait`, time bounds everything; otherwise the attempt count bounds the retries
        // and the longest the pauses could add up to bounds the wait in the local queue.
        let (attempts, until) = match options.wait {
            Some(max) => (u32::MAX, started.checked_add(max)),
            None => (retry.attempts, started.checked_add(retry.budget())),
        };
        // A wait too long to represent is no deadline at all.
        let until = until.unwrap_or_else(|| started + Duration::from_secs(100 * 365 * 24 * 3600));
        let timed = options.wait.is_some();
        // Queue behind the other tasks of this process that want the same lock: only the head
        // of the line talks to the nodes, and a local release wakes the next one at once.
        let (turn, mut first) = match first {
            Some((turn, error, refused)) => (turn, Some((error, refused))),
            None => match self.shared.local.turn(&target.keys, until).await {
                Some(turn) => (turn, None),
                None => {
                    return Err(Error::Contended {
                        key: target.name(),
                        attempts: 0,
                    });
                }
            },
        };
        let mut attempt = 1;
        let mut watch = None;
        // The key's sequencer node: its wait queue, its turn messages, its silence.
        let first_node = sequencer(&target.keys[0], self.shared.nodes.len());
        // Single-resource locks without fencing wait in the key's queue on the sequencer node
        // (see `notify`); `spot` leaves it if we give up.
        let fair = (target.keys.len() == 1 && !fenced).then(|| Fair {
            waiter: self.shared.notifier.waiter().clone(),
            join: true,
            lease: queue_lease(&retry),
            heir: None,
        });
        // The token a release may hand the key over to while we wait in the queue (see
        // `scripts::RELEASE_CONTENDED`), used for one hand-over at most, and when we first
        // registered it.
        let mut heir = Heir::fresh();
        // How long a token we stop using leaves tombstones (see `handover`).
        let life = tombstone_life(&self.shared, queue_lease(&retry));
        let mut spot: Option<QueueSpot> = None;
        // After a split vote, a queued waiter also listens to every release of the key (see
        // `listen_after_a_split`), until it stands in line.
        let mut every_release: Option<Watch> = None;
        // Set when a split vote's loser asks again at once because the holder's release woke
        // nobody (see `listen_after_a_split`).
        let mut released_unheard = false;
        // Set when a message said our turn came (or the lock was released).
        let mut in_turn = false;
        // Set when the sequencer node handed the key over to our registered token (a moment
        // before it did, and which other nodes did too).
        let mut take_over: Option<TakeOver> = None;
        loop {
            let mut refused = Refused::default();
            // The attempt was granted around the sequencer's line: it asked every node at once,
            // or the sequencer did not answer its ask and the other nodes granted it. Only an
            // attempt the sequencer granted (or a hand-over it made) took us out of the line.
            let mut around_the_line = true;
            let outcome = match first.take() {
                // The first round, already asked (see `lock_resources`): every node at once.
                Some((error, first_refused)) => {
                    refused = first_refused;
                    Err(error)
                }
                None => {
                    // Once the lock is known to be contended by other processes (now, or moments
                    // ago), attempts go to one node first: see `Votes::send_first`. Not while
                    // that node failed to answer a moment ago (in this wait or another of this
                    // client's, see `silence`): nobody can stand in its line then, and asking it
                    // first would only add its node timeout to every attempt.
                    let sequenced = !self.shared.silence.is_silent(first_node)
                        && (watch.is_some() || self.shared.notifier.is_watched(&target.keys[0]));
                    let approach = match (sequenced, in_turn && fair.is_some()) {
                        (false, _) => Approach::Parallel,
                        (true, false) => Approach::Sequenced,
                        (true, true) => Approach::InTurn,
                    };
                    in_turn = false;
                    // Refused, our ask leaves a trace that the next release looks for before it
                    // wakes anyone: our place in the wait queue, or a waiting flag that lives as
                    // long as the queue's keys would (see `scripts::waiting_flag`).
                    let mut ask = sequenced.then(|| match &fair {
                        Some(fair) => Ask::Fair(fair.clone()),
                        None => Ask::Flagged(queue_lease(&retry).saturating_mul(2)),
                    });
                    let mut asked = None;
                    if let Some(Ask::Fair(ask)) = ask.as_mut()
                        && take_over.is_none()
                    {
                        // We may join the queue with a token to be handed the key: from now on,
                        // giving up (or being cancelled) must leave the queue and free the key if a
                        // release handed it to that token, even before the reply that says we
                        // joined.
                        let (token, number) = heir.register();
                        let spot = spot.get_or_insert_with(|| QueueSpot {
                            shared: self.shared.clone(),
                            key: target.keys[0].clone(),
                            node: first_node,
                            heir: None,
                            tombstone_life: life,
                            armed: true,
                        });
                        spot.heir = Some(token.clone());
                        ask.heir = Some((token, number));
                        asked = Some(number);
                    }
                    let handed = take_over
                        .take()
                        .and_then(|at| heir.registered().map(|token| (token.clone(), at)));
                    if let Some((token, handed)) = handed {
                        let outcome = self.attempt_handed(&target, ttl, token, handed, life).await;
                        around_the_line = false;
                        // Won or lost, the registered token served its one hand-over.
                        heir = Heir::fresh();
                        if let Some(spot) = spot.as_mut() {
                            spot.heir = None;
                        }
                        outcome
                    } else {
                        let outcome = self
                            .attempt(&target, ttl, fenced, approach, ask, &mut refused)
                            .await;
                        if let (Some(number), Some(_)) = (asked, refused.queued) {
                            heir.queued(number);
                        }
                        around_the_line =
                            approach == Approach::Parallel || refused.sequencer != Some(true);
                        outcome
                    }
                }
            };
            match outcome {
                Ok(lock) => {
                    // Granted in turn, the sequencer node took us out of the queue. Granted
                    // around it (the sequencer down or paused, when we asked every node or when
                    // it did not answer our ask), we still stand in it: the spot leaves it as it
                    // drops, and frees the key there if a release handed it to our registered
                    // token meanwhile.
                    if let Some(spot) = spot.take()
                        && !around_the_line
                    {
                        spot.disarm();
                    }
                    lock.hold_turn(turn);
                    return Ok(lock);
                }
                Err(err)
                    if err.is_retryable()
                        && attempt < attempts
                        && (!timed || Instant::now() < until) =>
                {
                    let Refused {
                        queued,
                        handed,
                        held,
                        sequencer: answered,
                        won_sequencer,
                    } = refused;
                    // An attempt decided before the sequencer's reply came says nothing about it.
                    if let Some(answered) = answered {
                        self.shared.silence.heard(first_node, answered);
                    }
                    debug!(attempt, error = %err, ?queued, handed, "attempt failed");
                    attempt += 1;
                    if handed {
                        // The sequencer node holds the key for our registered token: take it
                        // from the other nodes at once. It was handed over after the last ask
                        // that found us in the queue.
                        take_over = heir.floor.map(|at| TakeOver {
                            at,
                            noticed: Vec::new(),
                            successor: None,
                        });
                        continue;
                    }
                    // A split vote: we won the sequencer node and lost the vote, so the holder
                    // holds nothing there, and its release there has no key of its own to
                    // compare. Asking again now would only win that node again. Instead we
                    // flag the key there and listen to every release of it: a release that
                    // finds the key free there wakes flagged waiters
                    // (`scripts::RELEASE_UNCONTENDED`).
                    // Only when a quorum of the other nodes said "held": one "held" and a node
                    // down or paused is a failed vote, not a holder elsewhere.
                    let split = won_sequencer
                        && err.is_contended()
                        && target.keys.len() == 1
                        && queued.is_none();
                    if (err.is_contended() || held) && watch.is_none() {
                        // Held by another process: listen for its release, then try once more
                        // at once, in case it was released before we listened (unless we were
                        // listening all along: the channel was still subscribed).
                        // The contended paths are boxed: the uncontended `lock` future stays
                        // small, which shows with hundreds of tasks locking at once.
                        let listening = Box::pin(self.shared.notifier.watch(
                            &target.keys,
                            first_node,
                            fair.is_some(),
                            !self.shared.silence.is_silent(first_node),
                        ))
                        .await;
                        let fresh = listening.is_fresh();
                        watch = Some(listening);
                        if fresh && !split {
                            continue;
                        }
                    }
                    if queued.is_some() {
                        // In line: our turn message wakes us.
                        every_release = None;
                    }
                    let asked_at_once = std::mem::take(&mut released_unheard);
                    if split {
                        let released = Box::pin(self.listen_after_a_split(
                            &target.keys[..1],
                            first_node,
                            fair.is_some(),
                            queue_lease(&retry).saturating_mul(2),
                            &mut every_release,
                        ))
                        .await;
                        // Once: a split again right after asking at once found a new holder, or
                        // one whose release is still on its way, and the flag covers both.
                        if released && !asked_at_once {
                            released_unheard = true;
                            continue;
                        }
                    }
                    let mut pause = retry.pause();
                    if queued.is_some_and(|place| place > 1) || split {
                        // Others are ahead of us: we will be woken when our turn comes, and
                        // only need to ask again to keep our place. Or we lost a split vote
                        // and flagged the key: the release wakes us, and an ask meanwhile
                        // would take the sequencer node again and hold it through the release,
                        // whose wake-up would then find the key taken.
                        pause = pause.max(QUEUE_POLL);
                    }
                    if timed || queued.is_some() {
                        pause = pause.min(until.saturating_duration_since(Instant::now()));
                    }
                    match &watch {
                        Some(watch) => {
                            let woken = Box::pin(async {
                                let every = async {
                                    match &every_release {
                                        Some(every) => every.notified().await,
                                        None => std::future::pending().await,
                                    }
                                };
                                tokio::select! {
                                    () = watch.notified() => true,
                                    () = every => true,
                                    () = tokio::time::sleep(pause) => false,
                                }
                            })
                            .await;
                            if woken {
                                debug!("woken by a release");
                                in_turn = true;
                                if let Some(token) = heir.registered().cloned() {
                                    let heard =
                                        Box::pin(self.hear_hand_over(watch, &token, first_node))
                                            .await;
                                    let elsewhere =
                                        heard.sequencer.is_none() && !heard.others.is_empty();
                                    take_over = self.take_over(heard, &heir);
                                    if elsewhere {
                                        // Named elsewhere, not handed over by the sequencer:
                                        // free those nodes for whoever it turned to.
                                        retire_elsewhere(
                                            &self.shared,
                                            &target.keys[0],
                                            first_node,
                                            &token,
                                            life,
                                        )
                                        .await;
                                    }
                                }
                            }
                        }
                        None => Box::pin(tokio::time::sleep(pause)).await,
                    }
                }
                Err(Error::Contended { key, .. }) => {
                    return Err(Error::Contended {
                        key,
                        attempts: attempt,
                    });
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Checks a set of resources (sorted, without duplicates) and makes their keys: each
    /// resource non-empty, the ttl in range, fencing asked for one resource only.
    fn target(&self, resources: Resources, ttl: Duration, fenced: bool) -> Result<Target> {
        let settings = &self.shared.settings;
        if resources.is_empty() {
            return Err(Error::EmptyKey);
        }
        if fenced && resources.len() > 1 {
            return Err(Error::InvalidConfig {
                reason: "fencing tokens are per resource: lock_many cannot issue one".to_owned(),
            });
        }
        let keys: Keys = match &resources[..] {
            // Nearly every lock: straight into the shared slice, without a `Vec` first.
            [resource] => Arc::new([settings.key(resource)?]),
            _ => resources
                .iter()
                .map(|r| settings.key(r))
                .collect::<Result<Vec<_>>>()?
                .into(),
        };
        settings.check_ttl(ttl)?;
        Ok(Target { resources, keys })
    }

    /// One attempt at `resource`: `Ok(None)` when someone else holds it.
    ///
    /// # Errors
    ///
    /// As [`lock`](Redlock::lock), except that contention is `Ok(None)`.
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Redlock::lock).
    pub async fn try_lock(&self, resource: &str) -> Result<Option<Lock>> {
        self.try_lock_with(resource, LockOptions::default()).await
    }

    /// [`try_lock`](Redlock::try_lock) with per-call options (its retry policy is ignored).
    ///
    /// # Errors
    ///
    /// As [`lock_with`](Redlock::lock_with), except that contention is `Ok(None)`.
    ///
    /// # Cancel safety
    ///
    /// As [`lock`](Redlock::lock).
    #[instrument(level = "debug", skip_all, fields(key = %resource))]
    pub async fn try_lock_with(
        &self,
        resource: &str,
        options: LockOptions,
    ) -> Result<Option<Lock>> {
        let _entered = self.shared.load.enter();
        let ttl = options.ttl.unwrap_or(self.shared.settings.ttl);
        let fenced = options.fencing.unwrap_or(self.shared.settings.fencing);
        let target = self.target(one(resource), ttl, fenced)?;
        // Another task of this process holds or is acquiring it: that is contention too.
        let Some(turn) = self.shared.local.try_turn(&target.keys) else {
            return Ok(None);
        };
        match self
            .attempt(
                &target,
                ttl,
                fenced,
                Approach::Parallel,
                None,
                &mut Refused::default(),
            )
            .await
        {
            Ok(lock) => {
                lock.hold_turn(turn);
                Ok(Some(lock))
            }
            Err(Error::Contended { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// One Redlock round: SET NX PX everywhere at once, decide at quorum, check validity (and,
    /// fenced, publish the token on a quorum first).
    async fn attempt(
        &self,
        target: &Target,
        ttl: Duration,
        fenced: bool,
        approach: Approach,
        ask: Option<Ask>,
        refused: &mut Refused,
    ) -> Result<Lock> {
        let keys = &target.keys;
        // A fresh token per attempt: a late reply to an earlier attempt can never count as ours.
        let value = LockToken::random().encode();
        // T1 is taken before the first byte leaves, so the time spent acquiring is subtracted
        // from the validity whatever happens while waiting for replies.
        let t1 = LeaseInstant::now();
        let votes = match approach {
            Approach::Parallel => Votes::send(&self.shared, keys, &value, ttl, fenced),
            Approach::Sequenced | Approach::InTurn => {
                Votes::send_first(&self.shared, keys, &value, ttl, fenced, ask)
            }
        };
        let mut guard = AttemptGuard {
            votes: Some(votes),
            shared: &self.shared,
            keys,
            value: &value,
        };
        if approach == Approach::InTurn
            && let Some(votes) = guard.votes.as_mut()
        {
            // Woken because our turn came: the sequencer node is all but certain to grant it,
            // so the other nodes are asked at the same time. Its verdict is still awaited: the
            // lock is ours only in turn, never by a quorum of the other nodes alone.
            votes.send_rest(&self.shared);
            votes.settle_node(&self.shared, votes.first()).await;
            refused.sequencer = votes.sequencer_answered();
            if let Some(place) = votes.queued() {
                refused.queued = Some(place);
                return Box::pin(self.refuse(&mut guard, &target.name(), keys, &value)).await;
            }
            if votes.handed() {
                refused.handed = true;
                return Box::pin(self.refuse(&mut guard, &target.name(), keys, &value)).await;
            }
        }
        if approach == Approach::Sequenced
            && let Some(votes) = guard.votes.as_mut()
        {
            let busy = votes.first_is_busy(&self.shared).await;
            refused.sequencer = votes.sequencer_answered();
            if busy {
                refused.queued = votes.queued();
                refused.handed = votes.handed();
                // Another waiter got through first (or the holder is still there): nothing of
                // ours was set anywhere.
                return Err(Error::Contended {
                    key: target.name(),
                    attempts: 1,
                });
            }
            votes.send_rest(&self.shared);
        }
        // Not boxed: this is every uncontended lock's path. An attempt the sequencer node
        // granted first (in turn, or a woken waiter outside the queue) asks the other nodes
        // again if the release has not reached them yet.
        let outcome = self
            .conclude(
                target,
                ttl,
                fenced,
                approach != Approach::Parallel,
                t1,
                &mut guard,
            )
            .await;
        if outcome.is_err()
            && let Some(votes) = guard.votes.as_ref()
        {
            // A failed attempt keeps its votes in the guard until it is dropped.
            refused.held = votes.saw_held();
            refused.sequencer = votes.sequencer_answered();
            refused.won_sequencer = votes.won_sequencer();
        }
        outcome
    }

    /// After a split vote (see `lock_waiting`): flags the lock's one key (`keys`) on its
    /// sequencer node `first`, so that the holder's release there wakes us, and, for a queued
    /// waiter (`fair`), which listens to its turn messages only, also listens to every release of
    /// the key (`every_release`). A flag that could not be set leaves the retry pause to find the
    /// release.
    ///
    /// The holder's release may have reached the sequencer node before the flag, while our
    /// attempt's key was still there: it found the key taken and woke nobody. So once the flag
    /// is set (a release from then on wakes us), the other nodes are asked whether the key is
    /// still held there. Returns true when enough of them are free to make a quorum with the
    /// sequencer: the release came, and asking again at once will take the lock.
    async fn listen_after_a_split(
        &self,
        keys: &[String],
        first: usize,
        fair: bool,
        flag_for: Duration,
        every_release: &mut Option<Watch>,
    ) -> bool {
        if fair && every_release.is_none() {
            let answering = !self.shared.silence.is_silent(first);
            *every_release = Some(
                self.shared
                    .notifier
                    .watch(keys, first, false, answering)
                    .await,
            );
        }
        let (Some(node), Some(key)) = (self.shared.nodes.get(first), keys.first()) else {
            return false;
        };
        if let Err(error) = node.flag_waiting(key, flag_for).await {
            debug!(%error, "could not flag the key after a split vote");
            return false;
        }
        let nodes = &self.shared.nodes;
        let free = join_all(
            nodes
                .iter()
                .enumerate()
                .filter(|(index, _)| *index != first)
                .map(|(_, node)| node.is_free(key)),
        )
        .await
        .into_iter()
        .filter(|free| matches!(free, Ok(true)))
        .count();
        let released = free + 1 >= self.shared.settings.quorum;
        if released {
            debug!("the holder released before the key was flagged");
        }
        released
    }

    /// After a wake-up, collects the hand-over notices for our registered `token`: once the
    /// sequencer's (node `first`) says the holder named us to the other nodes too, until
    /// enough of theirs for a quorum came; once only other nodes' came, until the sequencer's
    /// does. Each a quarter of the node timeout at most: the notices of one release arrive
    /// together.
    async fn hear_hand_over(&self, watch: &Watch, token: &str, first: usize) -> Heard {
        let quorum = self.shared.settings.quorum;
        let until = tokio::time::Instant::now() + self.shared.settings.node_timeout / 4;
        let mut heard = Heard::default();
        loop {
            heard.record(watch.notices(token), first);
            let more = match &heard.sequencer {
                Some(notice) => notice.marked && heard.others.len() + 1 < quorum,
                None => !heard.others.is_empty(),
            };
            if !more {
                return heard;
            }
            if tokio::time::timeout_at(until, watch.notified())
                .await
                .is_err()
            {
                // Whatever came in the meantime without a wake-up of its own.
                heard.record(watch.notices(token), first);
                return heard;
            }
        }
    }

    /// The hand-over the notices in `heard` make: only with the sequencer's (it alone decides
    /// whose turn it is), counting the other nodes whose notice names an ask we remember, with
    /// the validity from the oldest ask named.
    fn take_over(&self, heard: Heard, heir: &Heir) -> Option<TakeOver> {
        let notice = heard.sequencer?;
        let asked = heir.started(notice.ask)?;
        let mut at = asked;
        let mut noticed = Vec::new();
        for (node, other) in heard.others {
            if let Some(started) = heir.started(other.ask) {
                at = at.min(started);
                noticed.push(node);
            }
        }
        let settings = &self.shared.settings;
        let successor = notice
            .next
            .map(|next| next.successor(asked, |left| settings.drift(left)));
        Some(TakeOver {
            at,
            noticed,
            successor,
        })
    }

    /// A waiter's attempt once a release handed the key over to its registered token `value`
    /// on the sequencer node (see `scripts::RELEASE_CONTENDED`), and maybe on other nodes too
    /// (see `handover`): those nodes' votes are in hand, the token is claimed on every other
    /// node, and the validity counts from a moment before the first of those nodes set the key.
    async fn attempt_handed(
        &self,
        target: &Target,
        ttl: Duration,
        value: Arc<str>,
        handed: TakeOver,
        tombstone_life: Duration,
    ) -> Result<Lock> {
        let TakeOver {
            at: t1,
            noticed,
            successor,
        } = handed;
        debug!(others = noticed.len(), "the key was handed over to us");
        let heirship = Heirship {
            successor,
            life: tombstone_life,
        };
        let votes = Votes::handed_over(&self.shared, &target.keys, &value, ttl, &noticed, heirship);
        let mut guard = AttemptGuard {
            votes: Some(votes),
            shared: &self.shared,
            keys: &target.keys,
            value: &value,
        };
        Box::pin(self.conclude(target, ttl, false, true, t1, &mut guard)).await
    }

    /// The rest of an attempt whose SETs were sent at `t1` (or later): decides at the quorum,
    /// asks nodes still held by the previous holder again when the sequencer node granted it
    /// first (`in_turn`: a waiter in turn, or one outside the queue asking that node first),
    /// checks the validity, and makes the lock or undoes what applied.
    async fn conclude(
        &self,
        target: &Target,
        ttl: Duration,
        fenced: bool,
        in_turn: bool,
        t1: LeaseInstant,
        guard: &mut AttemptGuard<'_>,
    ) -> Result<Lock> {
        let value = guard.value;
        let settings = &self.shared.settings;
        let keys = &target.keys;
        let deadline = timing::deadline(t1, ttl, settings.drift(ttl));
        // In turn (the sequencer node granted it first), nodes the previous holder's release
        // has not reached yet are asked again shortly: giving up would hand our turn to the
        // next waiter and put us to sleep for a whole pause.
        let in_turn = in_turn.then_some(deadline);
        let outcome = match guard.votes.as_mut() {
            Some(votes) => self.decide(votes, target, value, fenced, in_turn).await,
            None => Err(Error::EmptyKey),
        };
        let outcome = outcome.and_then(|fence| {
            if timing::still_valid(deadline, LeaseInstant::now(), settings.min_validity) {
                Ok(fence)
            } else {
                Err(Error::Expired { key: target.name() })
            }
        });
        crate::telemetry::acquisition(outcome.as_ref().map(|_| ()), t1.elapsed());
        match outcome {
            Ok(fence) => {
                let Some(votes) = guard.votes.take() else {
                    return Err(Error::EmptyKey);
                };
                debug!(elapsed_ms = t1.elapsed().as_millis(), fence = ?fence, "granted");
                Ok(Lock::new(
                    self.shared.clone(),
                    target.resources.clone(),
                    keys.clone(),
                    value.clone(),
                    ttl,
                    deadline,
                    votes,
                    fence,
                ))
            }
            Err(error) => {
                // Not granted: undo every SET that may have applied before reporting, so a
                // competitor does not wait a whole ttl for our partial lock. The votes stay in
                // the guard meanwhile: if this future is dropped here, the guard still owes the
                // release. Stragglers are not waited for: the guard hands them (and any node
                // that did not answer) to a background task that releases each behind its own
                // SET.
                if let Some(votes) = guard.votes.as_mut() {
                    Box::pin(votes.release_settled(&self.shared, keys, value, false, false, None))
                        .await;
                }
                debug!(%error, "denied");
                Err(error)
            }
        }
    }

    /// Ends an attempt that was not our turn: undoes whatever the other nodes granted, then
    /// reports contention.
    async fn refuse(
        &self,
        guard: &mut AttemptGuard<'_>,
        name: &str,
        keys: &Keys,
        value: &Arc<str>,
    ) -> Result<Lock> {
        if let Some(votes) = guard.votes.as_mut() {
            votes
                .release_settled(&self.shared, keys, value, false, false, None)
                .await;
        }
        Err(Error::Contended {
            key: name.to_owned(),
            attempts: 1,
        })
    }

    /// Collects votes until the outcome is known; with fencing, runs phase 2. Returns the fence
    /// token (if fenced) when a quorum granted. `in_turn`, the deadline of a waiter's attempt
    /// that the sequencer node granted first: see [`Votes::decide_in_turn`].
    async fn decide(
        &self,
        votes: &mut Votes,
        target: &Target,
        value: &str,
        fenced: bool,
        in_turn: Option<LeaseInstant>,
    ) -> Result<Option<FencingToken>> {
        let quorum = self.shared.settings.quorum;
        let (granted, tally) = match in_turn {
            // Boxed: contended only, and every lock's future holds this one.
            Some(deadline) => {
                let min_validity = self.shared.settings.min_validity;
                let may_ask = || timing::still_valid(deadline, LeaseInstant::now(), min_validity);
                Box::pin(votes.decide_in_turn(&self.shared, &IN_TURN_PAUSES, may_ask)).await
            }
            None => votes.decide(&self.shared).await,
        };
        if !granted {
            debug!(
                acquired = tally.acquired,
                busy = tally.busy,
                quorum,
                "not granted"
            );
            return Err(
                if timing::is_contention(tally.busy, self.shared.nodes.len(), quorum) {
                    Error::Contended {
                        key: target.name(),
                        attempts: 1,
                    }
                } else {
                    Error::NoQuorum {
                        acquired: tally.acquired,
                        quorum,
                        failures: std::mem::take(&mut votes.failures),
                    }
                },
            );
        }
        if !fenced {
            return Ok(None);
        }
        // Phase 2: publish t = 1 + max(counters of the granting nodes) on those nodes, while
        // they still hold our token. Only a quorum of confirmations makes t a valid token.
        let granting = votes.granted_fences();
        let t = 1 + granting.iter().map(|(_, f)| *f).max().unwrap_or(0);
        let results = Box::pin(join_all(granting.iter().map(|(index, _)| {
            let node = &self.shared.nodes[*index];
            async move {
                node.publish_fence(&target.keys[0], value, t)
                    .await
                    .map_err(|k| node.error(k))
            }
        })))
        .await;
        let mut published = 0;
        let mut failures = Vec::new();
        for result in results {
            match result {
                Ok(true) => published += 1,
                Ok(false) => {}
                Err(e) => failures.push(e),
            }
        }
        if published < quorum {
            warn!(published, quorum, "fence token not published on a quorum");
            return Err(Error::NoQuorum {
                acquired: published,
                quorum,
                failures,
            });
        }
        Ok(Some(FencingToken::new(t)))
    }
}

/// Why an attempt was refused: what the sequencer node said, when it did, and whether any node
/// said the key was taken.
#[derive(Clone, Copy, Debug, Default)]
struct Refused {
    /// Our place in the key's wait queue.
    queued: Option<u32>,
    /// A release handed the key over to the token we registered: the node's vote is ours for
    /// that token instead.
    handed: bool,
    /// Some node answered that another token holds the key. A vote is lost as
    /// [`Error::NoQuorum`] as soon as too few nodes are left for a quorum, so one "held" and
    /// one node down fail it before a second "held" can make it [`Error::Contended`]; the key
    /// is taken all the same, and waiting for its release beats polling.
    held: bool,
    /// Whether the key's sequencer node answered (`Some(true)`), failed to (`Some(false)`: down
    /// or paused past its node timeout), or had not yet when the attempt ended.
    sequencer: Option<bool>,
    /// The sequencer node stored our token, yet the attempt failed: when a quorum of the other
    /// nodes said "held" ([`Error::Contended`]), a split vote, whose holder holds nothing on the
    /// sequencer node.
    won_sequencer: bool,
}

/// How an attempt asks the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Approach {
    /// Every node at once: the uncontended case.
    Parallel,
    /// The sequencer node first (through the wait queue, when fair), the others only if it
    /// granted: contended, so that woken waiters do not split the nodes between them.
    Sequenced,
    /// Every node at once, the sequencer through the wait queue: woken because our turn came.
    InTurn,
}

/// The resources of one lock, sorted and without duplicates, shared by its attempts and by
/// the lock they make.
type Resources = Arc<[String]>;

/// The resources of a single-resource lock: one allocation for the name, one for the slice.
fn one(resource: &str) -> Resources {
    Arc::new([resource.to_owned()])
}

/// A checked set of resources to lock. Its keys also name its local queue (see `local`).
struct Target {
    resources: Resources,
    keys: Keys,
}

impl Target {
    /// The resources as one name, for errors: only a failed attempt needs it, so it is not
    /// built for every lock.
    fn name(&self) -> String {
        self.resources.join(",")
    }
}

/// Releases in the background whatever an attempt leaves behind when it is dropped or fails:
/// this is what makes `lock` cancel safe.
struct AttemptGuard<'a> {
    votes: Option<Votes>,
    shared: &'a Arc<Shared>,
    keys: &'a Keys,
    value: &'a Arc<str>,
}

impl Drop for AttemptGuard<'_> {
    fn drop(&mut self) {
        if let Some(votes) = self.votes.take() {
            votes.release_in_background(
                self.shared.clone(),
                self.keys.clone(),
                self.value.clone(),
                false,
            );
        }
    }
}
