//! One Redis node: its pool of multiplexed connections and the commands Redlock sends to it.
//!
//! Every call here is bounded by `node_timeout`, connection checkout included. A slow or dead
//! node costs at most that long, never bb8's 30 s default.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bb8_redis::{
    RedisConnectionManager, bb8,
    redis::{
        self, AsyncConnectionConfig, Client, Cmd, ErrorKind, IntoConnectionInfo, RedisError,
        ServerErrorKind, ToRedisArgs, Value,
        aio::{ConnectionLike, MultiplexedConnection},
    },
};
use tracing::{debug, instrument};

use crate::{
    durability::Durability,
    error::{Error, NodeError, NodeErrorKind, Redacted},
    fencing,
    handover::Successor,
    scripts,
    votes::{SetFuture, traced},
};

/// A connection checked out for one operation, with the flag that retires it from the pool.
///
/// Redlock clones the multiplexed connection out of the pool and returns the pooled object at
/// once, so any number of tasks share a few TCP connections. Commands sent through one `Link`
/// reach the node in the order they were sent: that is what lets a release follow a SET that
/// timed out without overtaking it (DESIGN.md §3.2 rule 7).
#[derive(Clone)]
pub(crate) struct Link {
    conn: MultiplexedConnection,
    /// Shared with the pooled connection. Set when the TCP connection died, so that bb8 drops it
    /// the next time it is returned (bb8 asks `has_broken` on return) and dials a fresh one.
    broken: Arc<AtomicBool>,
}

impl Link {
    /// The vote of a SET sent on this link that came back with `err`.
    fn failed(&self, err: RedisError) -> Vote {
        self.note(&err);
        Vote::Failed {
            error: NodeErrorKind::Redis(err),
            sent: true,
        }
    }

    fn note(&self, err: &RedisError) {
        if !err.is_timeout() && (err.is_connection_dropped() || err.is_unrecoverable_error()) {
            self.broken.store(true, Ordering::Relaxed);
        }
    }
}

/// The pooled connection: a multiplexed connection plus its broken flag.
pub(crate) struct PooledLink(Link);

/// bb8 manager that dials multiplexed connections with our own connect and response timeouts,
/// and retires connections that died (bb8-redis's manager never reports one as broken, so after
/// a node restart its pool would keep handing out a dead connection).
pub(crate) struct NodeConnectionManager {
    client: Client,
    config: AsyncConnectionConfig,
}

impl bb8::ManageConnection for NodeConnectionManager {
    type Connection = PooledLink;
    type Error = RedisError;

    async fn connect(&self) -> Result<PooledLink, RedisError> {
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok(PooledLink(Link {
            conn,
            broken: Arc::new(AtomicBool::new(false)),
        }))
    }

    async fn is_valid(&self, conn: &mut PooledLink) -> Result<(), RedisError> {
        redis::cmd("PING").query_async(&mut conn.0.conn).await
    }

    fn has_broken(&self, conn: &mut PooledLink) -> bool {
        conn.0.broken.load(Ordering::Relaxed)
    }
}

enum Pool {
    Managed(bb8::Pool<NodeConnectionManager>),
    User(bb8::Pool<RedisConnectionManager>),
}

/// How many commands may wait for a connection's writer before senders wait for room (redis-rs
/// keeps 50 by default). Every task of a client sends on the node's one cached connection, so a
/// client with a few hundred locks in flight kept its tasks parked on that channel and woke them
/// one by one: with the default, 256 tasks on distinct keys made about 24,000 cycles/s on the
/// benchmark's row B256i, and about 30,000 with this bound (the bare floor client gains as
/// much with the same setting, which the benchmark gives it too). The channel grows in small
/// blocks as it fills, so the bound costs nothing while fewer commands are waiting.
const PIPELINE_BUFFER: usize = 1024;

/// The keys of one lock: one per resource, at least one, sorted and without duplicates.
pub(crate) type Keys = Arc<[String]>;

/// One node of the Redlock set.
pub(crate) struct Node {
    /// `host:port` for errors and traces; never the password.
    addr: String,
    /// The client the pool dials with, for the release-notification connection. `None` for a
    /// pool the user built.
    client: Option<Client>,
    pool: Pool,
    timeout: Duration,
    /// The last healthy connection from our own pool, reused without a pool checkout: a
    /// multiplexed connection pipelines any number of concurrent commands, and a checkout per
    /// command (with its timer) costs more client CPU than the command itself. Replaced through
    /// the pool as soon as it is marked broken.
    cached: std::sync::RwLock<Option<Link>>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node").field("addr", &self.addr).finish()
    }
}

/// How a queued waiter asks the sequencer node.
#[derive(Clone, Debug)]
pub(crate) struct Fair {
    /// This client's waiter id.
    pub(crate) waiter: Arc<str>,
    /// Join the queue if refused (false for `try_lock`).
    pub(crate) join: bool,
    /// How long our place is kept without a renewal.
    pub(crate) lease: Duration,
    /// The token registered for a hand-over (see
    /// [`RELEASE_CONTENDED`](scripts::RELEASE_CONTENDED)) and the number of this ask: a release
    /// that finds us at the head of the queue sets the key to the token and tells us the number
    /// of the last ask it saw. `None` registers nothing.
    pub(crate) heir: Option<(Arc<str>, u64)>,
}

/// How a sequenced attempt asks the key's sequencer node.
#[derive(Clone, Debug)]
pub(crate) enum Ask {
    /// Through the key's wait queue (single-key locks without fencing).
    Fair(Fair),
    /// With a fenced or multi-key SET that, refused, flags the keys as waited for this long
    /// ([`waiting_flag`](scripts::waiting_flag)), so that their release wakes this waiter.
    Flagged(Duration),
}

/// Whom a release wakes on a node (the release scripts' mode, see
/// [`RELEASE_CONTENDED`](scripts::RELEASE_CONTENDED)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Nobody: a node that is not the key's sequencer (waiters listen on the sequencer only).
    Nobody,
    /// The waiter at the head of the wait queue: the cleanup of a failed attempt, whose own
    /// waiter may be listening to every release.
    Head,
    /// The head of the wait queue and every listener to `<key>:released`: a held lock's release.
    Everyone,
}

/// What a single-key release does beyond compare-and-delete. On the key's sequencer node, with
/// its wait queue (the queue's two keys and the waiting flag, [`QueueKeys`](scripts::QueueKeys)):
/// whether to hand the key over. On the other nodes, for a token registered for a hand-over: its
/// tombstones and the successor to hand the key over to ([`Heir`](QueueRelease::Heir)).
#[derive(Clone, Copy, Debug)]
pub(crate) enum QueueRelease<'a> {
    /// A lock taken uncontended: wake the head of the queue, if anyone waits
    /// ([`RELEASE_UNCONTENDED`](scripts::RELEASE_UNCONTENDED)).
    Wake,
    /// A lock taken through the queue: hand the key over to the head
    /// ([`RELEASE_CONTENDED`](scripts::RELEASE_CONTENDED)), saying whom the holder named to the
    /// other nodes.
    HandOver(Option<&'a Successor>),
    /// Elsewhere, a token registered for a hand-over
    /// ([`RELEASE_HEIR`](scripts::RELEASE_HEIR)).
    Heir(HeirRelease<'a>),
}

/// The release, on a node other than the key's sequencer, of a token registered for a
/// hand-over ([`RELEASE_HEIR`](scripts::RELEASE_HEIR)).
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeirRelease<'a> {
    /// Our tombstone, then the successor's when one is named.
    pub(crate) tombstones: &'a [String],
    /// How long our tombstone lives.
    pub(crate) life: Duration,
    /// The waiter to hand the key over to, if any.
    pub(crate) successor: Option<&'a Successor>,
}

/// The connection a release goes out on.
pub(crate) enum Via<'a> {
    /// Whichever is at hand: the node's cached connection.
    Any,
    /// The connection of a SET that answered, still usable: it spares the release a lookup of
    /// the cached connection and a clone of it (a read lock and a few reference counts that
    /// every task of the client shares, so that each costs a cache line moved between cores).
    Reuse(&'a mut Link),
    /// The connection of a SET that got no answer, which the release must follow there, with
    /// the script's body (see [`RELEASE_LUA`](scripts::RELEASE_LUA)).
    Follow(&'a Link),
}

impl<'a> Via<'a> {
    /// Behind a SET that went out on `link`: followed there if the SET is `doubtful` (it got
    /// no answer), reused otherwise; any connection if it had none.
    pub(crate) fn behind(link: Option<&'a mut Link>, doubtful: bool) -> Via<'a> {
        match link {
            Some(link) if doubtful => Via::Follow(link),
            Some(link) => Via::Reuse(link),
            None => Via::Any,
        }
    }
}

/// What one node said to `SET key token NX PX ttl`.
#[derive(Debug)]
pub(crate) enum Vote {
    /// The key is ours on this node; with fencing, the node's fence counter.
    Acquired(Option<u64>),
    /// Someone else holds the key here; our SET did not apply.
    Busy,
    /// Not our turn: the key is held, or waiters are ahead of us in its wait queue (our place,
    /// 1-based). Our SET did not apply.
    Queued(u32),
    /// The key holds the token we registered for a hand-over: a release handed it to us. Our
    /// SET did not apply; the node's vote is ours for the registered token instead.
    Handed,
    /// No usable answer. `sent` tells whether the SET may have reached the node (and so may
    /// still apply later: a SET that timed out against a paused node runs when it resumes).
    Failed { error: NodeErrorKind, sent: bool },
}

impl Node {
    /// Builds a lazy pool for `url`; nothing touches the network until the first command.
    pub(crate) fn from_url(url: &str, timeout: Duration, pool_size: u32) -> Result<Node, Error> {
        let invalid = |source| Error::InvalidUrl {
            url: Redacted(url).to_string(),
            source,
        };
        let info = url.into_connection_info().map_err(invalid)?;
        let addr = info.addr().to_string();
        let client = Client::open(info).map_err(invalid)?;
        // Every command is already bounded by the node timeout (`Node::run`), so the connection's
        // own response timer (a second timer per command) is turned off.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(None)
            .set_pipeline_buffer_size(PIPELINE_BUFFER);
        let pool = bb8::Pool::builder()
            .max_size(pool_size)
            .min_idle(None)
            .max_lifetime(None)
            .idle_timeout(None)
            .connection_timeout(timeout)
            .retry_connection(false)
            // A PING per checkout would double the round trips of every lock.
            .test_on_check_out(false)
            .build_unchecked(NodeConnectionManager {
                client: client.clone(),
                config,
            });
        Ok(Node {
            addr,
            cached: std::sync::RwLock::new(None),
            client: Some(client),
            pool: Pool::Managed(pool),
            timeout,
        })
    }

    /// Wraps a pool the user built. Such a pool cannot retire dead connections by itself (the
    /// bb8-redis manager never reports one as broken); enable `test_on_check_out` on it if nodes
    /// may restart.
    pub(crate) fn from_pool(
        pool: bb8::Pool<RedisConnectionManager>,
        addr: String,
        timeout: Duration,
    ) -> Node {
        Node {
            addr,
            cached: std::sync::RwLock::new(None),
            client: None,
            pool: Pool::User(pool),
            timeout,
        }
    }

    /// Whether every command goes through the one cached connection (our own pool), so that
    /// two commands sent one after the other reach the node in that order. A pool the user
    /// built hands each command the connection it checks out, which may differ.
    pub(crate) fn keeps_order(&self) -> bool {
        matches!(self.pool, Pool::Managed(_))
    }

    pub(crate) fn client(&self) -> Option<&Client> {
        self.client.as_ref()
    }

    /// The node's address (`host:port`), never its password.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    pub(crate) fn error(&self, kind: NodeErrorKind) -> NodeError {
        NodeError {
            node: self.addr.clone(),
            kind,
        }
    }

    /// The cached connection, while it is healthy.
    pub(crate) fn cached_link(&self) -> Option<Link> {
        // Read by every command of every task: a read lock, so they never wait on each other.
        let cached = self.cached.read().ok()?;
        cached
            .as_ref()
            .filter(|link| !link.broken.load(Ordering::Relaxed))
            .cloned()
    }

    /// A connection to send on: the cached one while it is healthy, else a fresh checkout
    /// (skipping a pooled connection that died since it was last used).
    pub(crate) async fn link(&self) -> Result<Link, NodeErrorKind> {
        if let Some(link) = self.cached_link() {
            return Ok(link);
        }
        let link = self.checkout().await?;
        if matches!(self.pool, Pool::Managed(_))
            && let Ok(mut cached) = self.cached.write()
        {
            *cached = Some(link.clone());
        }
        Ok(link)
    }

    /// `link` if given, else a connection checked out; a failure is the vote of a SET that never
    /// left.
    async fn link_for_set(&self, link: Option<Link>) -> Result<Link, Vote> {
        let link = match link {
            Some(link) => return Ok(link),
            // Boxed, like every path off the common one: the SET future is allocated once per
            // node and attempt, and without the pool checkout's state (and the fenced and
            // multi-key branches) it is about half the size (1,960 → 1,056 bytes).
            None => Box::pin(self.link()).await,
        };
        link.map_err(|error| {
            debug!(node = %self.addr, %error, "no connection");
            Vote::Failed { error, sent: false }
        })
    }

    /// A connection from the pool, bounded by the node timeout.
    async fn checkout(&self) -> Result<Link, NodeErrorKind> {
        let timeout = self.timeout;
        let checkout = async {
            match &self.pool {
                Pool::Managed(pool) => {
                    for _ in 0..2 {
                        let pooled = pool
                            .get()
                            .await
                            .map_err(|_| NodeErrorKind::Connect(timeout))?;
                        if !pooled.0.broken.load(Ordering::Relaxed) {
                            return Ok(pooled.0.clone());
                        }
                        // Dropping it returns it to bb8, which sees has_broken and discards it.
                    }
                    Err(NodeErrorKind::Connect(timeout))
                }
                Pool::User(pool) => {
                    let pooled = pool
                        .get()
                        .await
                        .map_err(|_| NodeErrorKind::Connect(timeout))?;
                    Ok(Link {
                        conn: (*pooled).clone(),
                        broken: Arc::new(AtomicBool::new(false)),
                    })
                }
            }
        };
        tokio::time::timeout(timeout, checkout)
            .await
            .unwrap_or(Err(NodeErrorKind::Connect(timeout)))
    }

    /// Runs one command on `link` under the node timeout.
    async fn run<T: redis::FromRedisValue>(
        &self,
        link: &Link,
        cmd: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, NodeErrorKind> {
        Node::run_within(self.timeout, link, cmd).await
    }

    /// One plain command (no script) on a link to this node, bounded by the node timeout.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, NodeErrorKind> {
        let link = self.link().await?;
        let mut conn = link.conn.clone();
        self.run(&link, cmd.query_async(&mut conn)).await
    }

    /// [`run`](Node::run) with another bound than the node timeout.
    async fn run_within<T: redis::FromRedisValue>(
        timeout: Duration,
        link: &Link,
        cmd: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, NodeErrorKind> {
        match tokio::time::timeout(timeout, cmd).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                link.note(&e);
                Err(NodeErrorKind::Redis(e))
            }
            Err(_) => Err(NodeErrorKind::Timeout(timeout)),
        }
    }

    /// `SET key token NX PX ttl` on `link`, or on a connection checked out within the node
    /// timeout. Returns the link used, so a later release of a doubtful SET travels the same
    /// ordered connection. `waiting`, for a waiter asking the key's sequencer node with a fenced
    /// or multi-key SET, is how long a refusal flags the keys as waited for
    /// ([`waiting_flag`](scripts::waiting_flag)); a plain SET flags nothing (single-key waiters
    /// without fencing ask through the wait queue, whose list tells the release they wait).
    #[instrument(level = "debug", name = "redlock.set", skip_all, fields(node = %self.addr))]
    pub(crate) async fn set_nx_px(
        &self,
        link: Option<Link>,
        keys: &[String],
        token: &str,
        ttl: Duration,
        fenced: bool,
        waiting: Option<Duration>,
    ) -> (Vote, Option<Link>) {
        let link = match self.link_for_set(link).await {
            Ok(link) => link,
            Err(vote) => return (vote, None),
        };
        let mut conn = link.conn.clone();
        let ttl_ms = ttl_millis(ttl);
        let vote = if let [key] = keys
            && fenced
        {
            // Phase 1 of fencing: SET NX PX and read the fence counter atomically.
            let mut invocation = fencing::ACQUIRE.prepare_invoke();
            invocation
                .key(key)
                .key(fencing::fence_key(key))
                .arg(token)
                .arg(ttl_ms);
            if let Some(waiting) = waiting {
                invocation
                    .key(scripts::waiting_flag(key))
                    .arg(ttl_millis(waiting));
            }
            match Box::pin(self.run(&link, invocation.invoke_async::<i64>(&mut conn))).await {
                Ok(n) if n >= 0 => Vote::Acquired(u64::try_from(n).ok()),
                Ok(_) => Vote::Busy,
                Err(error) => Vote::Failed { error, sent: true },
            }
        } else if keys.len() > 1 {
            // All or nothing: every key is free and set, or none is touched.
            let mut invocation = scripts::ACQUIRE_MANY.prepare_invoke();
            for key in keys {
                invocation.key(key);
            }
            invocation.arg(token).arg(ttl_ms);
            if let Some(waiting) = waiting {
                for key in keys {
                    invocation.key(scripts::waiting_flag(key));
                }
                invocation.arg(ttl_millis(waiting));
            }
            match Box::pin(self.run(&link, invocation.invoke_async::<i64>(&mut conn))).await {
                Ok(1) => Vote::Acquired(None),
                Ok(_) => Vote::Busy,
                Err(error) => Vote::Failed { error, sent: true },
            }
        } else {
            let set = Node::send_set(link.clone(), set_command(&keys[0], token, ttl));
            return match tokio::time::timeout(self.timeout, set).await {
                Ok(voted) => voted,
                Err(_) => (
                    Vote::Failed {
                        error: NodeErrorKind::Timeout(self.timeout),
                        sent: true,
                    },
                    Some(link),
                ),
            };
        };
        debug!(node = %self.addr, ?vote, "set nx px");
        (vote, Some(link))
    }

    /// The uncontended SET on a healthy connection at hand: `SET key token NX PX ttl`, built
    /// here and sent by the returned future, which owns everything it needs. It does what
    /// [`set_nx_px`](Node::set_nx_px) does for one key without fencing, as one flat future
    /// without a reply string to allocate: every attempt sends one per node, so with hundreds
    /// of tasks locking at once each layer and copy of it shows. Its `redlock.set` span is
    /// attached only while it is enabled. It has no timer of its own: whoever drives it gives it
    /// up at its deadline ([`expiry`](crate::expiry)).
    pub(crate) fn plain_set(&self, link: Link, key: &str, token: &str, ttl: Duration) -> SetFuture {
        traced(
            tracing::debug_span!("redlock.set", node = %self.addr),
            Node::send_set(link, set_command(key, token, ttl)),
        )
    }

    /// Sends `set` (a [`set_command`]) on `link` and waits for its vote, without a bound of its
    /// own: whoever awaits it bounds it.
    ///
    /// A function returning an `async move` block rather than an `async fn`: an `async fn`
    /// keeps its arguments twice in its future (as arguments, and as the locals they are moved
    /// into), and this future is allocated for every node of every lock (440 → 280 bytes).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its future (see above)"
    )]
    fn send_set(
        mut link: Link,
        set: Cmd,
    ) -> impl Future<Output = (Vote, Option<Link>)> + Send + 'static {
        async move {
            let vote = match link.conn.req_packed_command(&set).await {
                Ok(value) => match value.extract_error() {
                    Ok(Value::Okay) => Vote::Acquired(None),
                    Ok(Value::SimpleString(ok)) if ok == "OK" => Vote::Acquired(None),
                    Ok(Value::Nil) => Vote::Busy,
                    Ok(other) => Vote::Failed {
                        error: NodeErrorKind::Protocol(format!("unexpected SET reply {other:?}")),
                        sent: true,
                    },
                    Err(e) => link.failed(e),
                },
                Err(e) => link.failed(e),
            };
            debug!(?vote, "set nx px");
            (vote, Some(link))
        }
    }

    /// A waiter's SET of the token the sequencer node handed the key over to, on another node
    /// ([`CLAIM`](scripts::CLAIM)): a key a release already handed to that token here counts as
    /// set, with a fresh expiry.
    #[instrument(level = "debug", name = "redlock.claim", skip_all, fields(node = %self.addr))]
    pub(crate) async fn claim(
        &self,
        link: Option<Link>,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> (Vote, Option<Link>) {
        let link = match self.link_for_set(link).await {
            Ok(link) => link,
            Err(vote) => return (vote, None),
        };
        let reply: Result<i64, _> = self
            .eval(&link, &scripts::CLAIM, true, self.timeout, |cmd| {
                cmd.arg(1).arg(key).arg(token).arg(ttl_millis(ttl));
            })
            .await;
        let vote = match reply {
            Ok(1) => Vote::Acquired(None),
            Ok(_) => Vote::Busy,
            Err(error) => Vote::Failed { error, sent: true },
        };
        debug!(node = %self.addr, ?vote, "claim");
        (vote, Some(link))
    }

    /// A queued waiter's `SET NX PX` on the key's sequencer node
    /// ([`FAIR_ACQUIRE`](scripts::FAIR_ACQUIRE)): granted only in turn. With `fair.join`, a
    /// waiter that is refused takes (or keeps) its place in the queue for `fair.lease`.
    #[instrument(level = "debug", name = "redlock.set_fair", skip_all, fields(node = %self.addr))]
    pub(crate) async fn set_fair(
        &self,
        link: Option<Link>,
        key: &str,
        token: &str,
        ttl: Duration,
        fair: &Fair,
    ) -> (Vote, Option<Link>) {
        let link = match self.link_for_set(link).await {
            Ok(link) => link,
            Err(vote) => return (vote, None),
        };
        let queue = scripts::wait_queue(key);
        let reply: Result<i64, _> = self
            .eval(&link, &scripts::FAIR_ACQUIRE, true, self.timeout, |cmd| {
                cmd.arg(3)
                    .arg(key)
                    .arg(&queue[..])
                    .arg(token)
                    .arg(ttl_millis(ttl))
                    .arg(&*fair.waiter)
                    .arg(ttl_millis(fair.lease))
                    .arg(if fair.join { "1" } else { "0" })
                    .arg(wall_clock_millis())
                    .arg(fair.heir.as_ref().map_or("", |(token, _)| &**token))
                    .arg(fair.heir.as_ref().map_or(0, |(_, ask)| *ask));
            })
            .await;
        let vote = match reply {
            Ok(0) => Vote::Acquired(None),
            Ok(place) if place > 0 => Vote::Queued(u32::try_from(place).unwrap_or(u32::MAX)),
            Ok(-2) => Vote::Handed,
            Ok(_) => Vote::Busy,
            Err(error) => Vote::Failed { error, sent: true },
        };
        debug!(node = %self.addr, ?vote, "fair set nx px");
        (vote, Some(link))
    }

    /// Flags `key` as waited for on this node, its sequencer, for `ttl`
    /// ([`waiting_flag`](scripts::waiting_flag)): the waiter of an attempt that won this node but
    /// lost the vote (a split), whose holder holds nothing here, so that the holder's release
    /// here wakes it ([`RELEASE_UNCONTENDED`](scripts::RELEASE_UNCONTENDED)). Bounded by the node
    /// timeout.
    #[instrument(level = "debug", skip_all, fields(node = %self.addr))]
    pub(crate) async fn flag_waiting(&self, key: &str, ttl: Duration) -> Result<(), NodeErrorKind> {
        let mut flag = Cmd::new();
        flag.arg("SET")
            .arg(scripts::waiting_flag(key))
            .arg("1")
            .arg("PX")
            .arg(ttl_millis(ttl));
        self.query(&flag).await
    }

    /// Whether no token holds `key` on this node: read by the loser of a split vote once it
    /// flagged the key, to find a release that reached the sequencer node before the flag and
    /// so woke nobody. Bounded by the node timeout.
    #[instrument(level = "debug", skip_all, fields(node = %self.addr))]
    pub(crate) async fn is_free(&self, key: &str) -> Result<bool, NodeErrorKind> {
        let found: i64 = self.query(redis::cmd("EXISTS").arg(key)).await?;
        Ok(found == 0)
    }

    /// Leaves the wait queue of `key` (a waiter that stopped waiting), freeing the key if it
    /// was handed over to `heir` (our registered token) meanwhile, and waking the next waiter
    /// if the lock is free. Waits for the answer up to `timeout`.
    #[instrument(level = "debug", skip_all, fields(node = %self.addr))]
    pub(crate) async fn leave_queue(
        &self,
        key: &str,
        waiter: &str,
        heir: Option<&str>,
        timeout: Duration,
    ) -> Result<(), NodeErrorKind> {
        let link = self.link().await?;
        let queue = scripts::wait_queue(key);
        let _: i64 = self
            .eval(&link, &scripts::LEAVE_QUEUE, true, timeout, |cmd| {
                cmd.arg(3)
                    .arg(key)
                    .arg(&queue[..])
                    .arg(waiter)
                    .arg(heir.unwrap_or(""));
            })
            .await?;
        Ok(())
    }

    /// Compare-and-delete. `Ok(true)` when our token was there and is now gone. Goes through
    /// `link` when given (to stay behind a doubtful SET on the same connection); a link whose
    /// connection dropped is replaced by a fresh one, since nothing more can arrive through it.
    /// `wake` says whom the release wakes here, and `queue` is, when this node is the key's
    /// sequencer, the keys of its wait queue ([`wait_queue`](scripts::wait_queue)) and its
    /// [`waiting_flag`](scripts::waiting_flag) (the release hands the key over to the head), or
    /// the queue's list and the flag (an uncontended lock's release: wakes waiters if any).
    /// It has no bound of its own: whoever awaits it bounds it (the node timeout when a caller
    /// waits, longer in the background), with one timer for all the commands it drives
    /// ([`expiry`](crate::expiry)).
    ///
    /// Every lock sends one per node, so the common path is one flat future, like
    /// [`plain_set`](Node::plain_set); its `release` span is attached by whoever boxes it
    /// ([`release_span`](Node::release_span)). Like [`send_set`](Node::send_set), an `async`
    /// block rather than an `async fn`, so its arguments are not kept twice, and the NOSCRIPT
    /// fallback is boxed whole (616 → 416 bytes).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its future (see above)"
    )]
    pub(crate) fn release<'a>(
        &'a self,
        via: Via<'a>,
        keys: &'a [String],
        token: &str,
        wake: Wake,
        queue: Option<QueueRelease<'_>>,
    ) -> impl Future<Output = Result<bool, NodeErrorKind>> {
        async move {
            let mode = match wake {
                Wake::Nobody => "0",
                Wake::Everyone => "1",
                Wake::Head => "2",
            };
            // One key that wakes nobody (the common case: every node but a lock's sequencer) takes
            // the plain compare-and-delete, which costs the node less than the general script; an
            // uncontended lock's sequencer node the one that wakes waiters only when there are
            // some, and a contended lock's the one that hands the key over to the head of the
            // queue (both given the queue's two keys and the waiting flag).
            let plain = matches!((keys, wake, queue), ([_], Wake::Nobody, None));
            let script = match (keys, queue) {
                _ if plain => &*scripts::RELEASE_ONE,
                ([_], Some(QueueRelease::Wake)) => &*scripts::RELEASE_UNCONTENDED,
                ([_], Some(QueueRelease::HandOver(..))) => &*scripts::RELEASE_CONTENDED,
                ([_], Some(QueueRelease::Heir(_))) => &*scripts::RELEASE_HEIR,
                _ => &*scripts::RELEASE,
            };
            // Room for what follows: the key and the token, and on the sequencer node three
            // more keys that start alike and up to five short arguments (numbers, a mode, a
            // successor).
            let key_bytes = keys.iter().map(String::len).sum::<usize>();
            let (args, bytes) = if plain {
                (3, key_bytes + token.len() + 8)
            } else {
                (12, key_bytes * 4 + token.len() + 160)
            };
            let command = |by_hash: bool| {
                let mut cmd = script.command_sized(by_hash, args, bytes);
                match (keys, queue) {
                    _ if plain => {
                        cmd.arg(1).arg(keys).arg(token);
                    }
                    ([key], Some(QueueRelease::Wake)) => {
                        let queue = scripts::QueueKeys(key);
                        // The caller's clock: for the lease checks where scripts see none.
                        cmd.arg(1 + queue.num_of_args())
                            .arg(key)
                            .arg(queue)
                            .arg(token)
                            .arg(mode)
                            .arg(wall_clock_millis());
                    }
                    ([key], Some(QueueRelease::HandOver(successor))) => {
                        let queue = scripts::QueueKeys(key);
                        cmd.arg(1 + queue.num_of_args())
                            .arg(key)
                            .arg(queue)
                            .arg(token)
                            .arg(mode)
                            .arg(wall_clock_millis())
                            .arg(successor.map_or("", |s| &*s.waiter))
                            .arg(successor.map_or("", |s| &*s.token));
                    }
                    ([_], Some(QueueRelease::Heir(heir))) => {
                        cmd.arg(1 + heir.tombstones.len())
                            .arg(keys)
                            .arg(heir.tombstones)
                            .arg(token)
                            .arg(ttl_millis(heir.life));
                        if let Some(successor) = heir.successor {
                            cmd.arg(&*successor.token)
                                .arg(successor.ttl_ms)
                                .arg(&*successor.waiter)
                                .arg(successor.ask);
                        }
                    }
                    _ => {
                        cmd.arg(keys.len())
                            .arg(keys)
                            .arg(token)
                            .arg(mode)
                            .arg(keys.len());
                    }
                }
                cmd
            };
            // Behind a doubtful SET the body goes with it (see `scripts::RELEASE_LUA`).
            let mut owned: Link;
            let (link, by_hash): (&mut Link, bool) = match via {
                Via::Follow(link) if !link.broken.load(Ordering::Relaxed) => {
                    owned = link.clone();
                    (&mut owned, false)
                }
                Via::Reuse(link) if !link.broken.load(Ordering::Relaxed) => (link, true),
                _ => {
                    owned = match self.cached_link() {
                        Some(link) => link,
                        // Boxed: off the common path (see `link_for_set`).
                        None => Box::pin(self.link()).await?,
                    };
                    (&mut owned, true)
                }
            };
            let cmd = command(by_hash);
            let reply = link
                .conn
                .req_packed_command(&cmd)
                .await
                .and_then(Value::extract_error);
            let deleted = match reply {
                Ok(Value::Int(n)) => n,
                Ok(other) => {
                    return Err(NodeErrorKind::Protocol(format!(
                        "unexpected release reply {other:?}"
                    )));
                }
                Err(e) if by_hash && e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    debug!(node = %self.addr, "script not cached on the node: sending its body");
                    // Boxed whole: the fallback's state stays out of every release's future.
                    Box::pin(async {
                        let body = command(false);
                        let mut conn = link.conn.clone();
                        body.query_async::<i64>(&mut conn).await.map_err(|e| {
                            link.note(&e);
                            NodeErrorKind::Redis(e)
                        })
                    })
                    .await?
                }
                Err(e) => {
                    link.note(&e);
                    return Err(NodeErrorKind::Redis(e));
                }
            };
            Ok(deleted > 0)
        }
    }

    /// The span of a release on this node: `release`, with the node's address.
    pub(crate) fn release_span(&self) -> tracing::Span {
        tracing::debug_span!("release", node = %self.addr)
    }

    /// Compare-and-extend. `Ok(true)` when our token was there and its expiry is now `ttl`.
    #[instrument(level = "debug", skip_all, fields(node = %self.addr))]
    pub(crate) async fn extend(
        &self,
        keys: &[String],
        token: &str,
        ttl: Duration,
    ) -> Result<bool, NodeErrorKind> {
        let link = self.link().await?;
        let n: i64 = self
            .eval(&link, &scripts::EXTEND, true, self.timeout, |cmd| {
                cmd.arg(keys.len())
                    .arg(keys)
                    .arg(token)
                    .arg(ttl_millis(ttl));
            })
            .await?;
        Ok(n == 1)
    }

    /// Batched compare-and-extend: one flag per key, in order.
    #[instrument(level = "debug", skip_all, fields(node = %self.addr))]
    pub(crate) async fn extend_batch(
        &self,
        keys: &[&str],
        tokens: &[&str],
        ttl: Duration,
    ) -> Result<Vec<bool>, NodeErrorKind> {
        let link = self.link().await?;
        let flags: Vec<i64> = self
            .eval(&link, &scripts::EXTEND_BATCH, true, self.timeout, |cmd| {
                cmd.arg(keys.len())
                    .arg(keys)
                    .arg(ttl_millis(ttl))
                    .arg(tokens);
            })
            .await?;
        if flags.len() != keys.len() {
            return Err(NodeErrorKind::Protocol(format!(
                "{} flags for {} keys",
                flags.len(),
                keys.len()
            )));
        }
        Ok(flags.into_iter().map(|f| f == 1).collect())
    }

    /// Runs `script` with the keys and arguments `args` appends (`numkeys` first). By `EVALSHA`
    /// when `by_hash`, falling back to `EVAL` on NOSCRIPT (a restarted or flushed node); by `EVAL`
    /// otherwise, for a call whose reply may never be read (see [`scripts::RELEASE_LUA`]).
    async fn eval<T: redis::FromRedisValue>(
        &self,
        link: &Link,
        script: &scripts::Lua,
        by_hash: bool,
        timeout: Duration,
        args: impl Fn(&mut Cmd),
    ) -> Result<T, NodeErrorKind> {
        let command = |by_hash: bool| {
            let mut cmd = script.command(by_hash);
            args(&mut cmd);
            cmd
        };
        let mut conn = link.conn.clone();
        let result = Node::run_within(timeout, link, command(by_hash).query_async(&mut conn)).await;
        match result {
            Err(NodeErrorKind::Redis(e))
                if by_hash && e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) =>
            {
                debug!(node = %self.addr, "script not cached on the node: sending its body");
                Node::run_within(timeout, link, command(false).query_async(&mut conn)).await
            }
            other => other,
        }
    }

    /// Phase 2 of fencing: raise the fence counter to `t` while the lock key holds our token.
    #[instrument(level = "debug", skip_all, fields(node = %self.addr))]
    pub(crate) async fn publish_fence(
        &self,
        key: &str,
        token: &str,
        t: u64,
    ) -> Result<bool, NodeErrorKind> {
        let link = self.link().await?;
        let mut invocation = fencing::PUBLISH.prepare_invoke();
        invocation
            .key(key)
            .key(fencing::fence_key(key))
            .arg(token)
            .arg(t);
        let mut conn = link.conn.clone();
        let n: i64 = self.run(&link, invocation.invoke_async(&mut conn)).await?;
        Ok(n == 1)
    }

    /// What this node says about keeping its writes across a crash (`CONFIG GET append*`, one
    /// pattern, so Redis 6 answers it too). Bounded by the node timeout; a node that cannot or
    /// will not tell is [`Durability::Unknown`].
    #[instrument(level = "debug", skip_all, fields(node = %self.addr))]
    pub(crate) async fn durability(&self) -> Durability {
        let config = self
            .query::<HashMap<String, String>>(redis::cmd("CONFIG").arg("GET").arg("append*"))
            .await;
        match config {
            Ok(config) => Durability::from_config(&config),
            Err(kind) => Durability::Unknown {
                reason: kind.to_string(),
            },
        }
    }

    /// `PING`, to check reachability in [`Redlock::connect`](crate::Redlock::connect).
    #[instrument(level = "debug", skip_all, fields(node = %self.addr))]
    pub(crate) async fn ping(&self) -> Result<(), NodeErrorKind> {
        let pong: String = self.query(&redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(NodeErrorKind::Protocol(pong))
        }
    }
}

/// This machine's wall clock in ms since the Unix epoch (0 if it is set before 1970), for wait
/// queue leases on nodes whose scripts see no clock.
fn wall_clock_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `SET key token NX PX ttl`, sized up front: growing the command's buffers argument by
/// argument costs more allocations than the rest of the SET.
fn set_command(key: &str, token: &str, ttl: Duration) -> Cmd {
    let mut set = Cmd::with_capacity(6, 64 + key.len() + token.len());
    set.arg("SET")
        .arg(key)
        .arg(token)
        .arg("NX")
        .arg("PX")
        .arg(ttl_millis(ttl));
    set
}

/// Milliseconds for PX / PEXPIRE; never 0, which Redis rejects.
fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
