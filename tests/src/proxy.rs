//! [`Proxy`]: an in-process TCP proxy in front of one node, with faults switchable at runtime.
//!
//! Loopback has no network to break, so fault tests put a proxy between every
//! (client, node) pair and break *that* instead: one client can lose a node
//! while another still reaches it, which is how asymmetric partitions are made
//! without iptables or network namespaces. [`ProxySet`] builds one proxy per
//! node of a [`Cluster`] for one client.
//!
//! Each accepted connection gets its own upstream connection and two pump
//! threads, one per direction. A pump reads a chunk, stamps it with a release
//! time according to the current [`ProxyMode`], and writes chunks out in FIFO
//! order once they are due, so a delay never reorders bytes and a healed
//! blackhole flushes what it held. Bytes are never dropped from the middle of
//! a stream (TCP would not do that either); a partition that loses data is a
//! [`ProxyMode::Reset`] or [`ProxyMode::Refuse`], which close the connection.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::Index;
use std::slice;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;

/// How long a proxy waits for the upstream node to accept a connection.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a pump holding blackholed bytes looks for a mode change.
const BLACKHOLE_POLL: Duration = Duration::from_millis(2);

/// Size of one read; RESP commands of lock clients are far smaller.
const CHUNK: usize = 16 * 1024;

/// Stack size of the pump threads (they only shovel bytes).
const PUMP_STACK: usize = 128 * 1024;

/// Which way a [`ProxyMode::Delay`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Both requests and replies are delayed.
    #[default]
    Both,
    /// Only client → node bytes (requests) are delayed.
    ToServer,
    /// Only node → client bytes (replies) are delayed: the node applies a
    /// command at once, and the client hears about it late (a "GC pause with
    /// replies in flight").
    ToClient,
}

impl Direction {
    fn includes(self, flow: Flow) -> bool {
        match self {
            Direction::Both => true,
            Direction::ToServer => flow == Flow::ToServer,
            Direction::ToClient => flow == Flow::ToClient,
        }
    }
}

/// What a [`Proxy`] does with the bytes and connections it sees.
///
/// Switching modes affects bytes read from then on; bytes already queued keep
/// their place in line, so nothing is reordered. See [`Proxy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyMode {
    /// Forward everything at once.
    #[default]
    Pass,
    /// Hold each chunk for `base` plus a uniformly random part of `jitter`
    /// before forwarding it, in the given direction(s). Order is kept: a
    /// chunk never leaves before the one read before it.
    Delay {
        /// Fixed part of the delay.
        base: Duration,
        /// Upper bound of the random part of the delay.
        jitter: Duration,
        /// Which way the delay applies.
        direction: Direction,
    },
    /// Forward nothing, in either direction, and keep connections open: the
    /// node looks frozen to this client. Held bytes are forwarded, in order,
    /// as soon as the mode changes to a forwarding one (like a very long
    /// delay); to drop them instead, switch to [`ProxyMode::Reset`] first.
    Blackhole,
    /// Close every live connection (FIN) and every new one as soon as it is
    /// accepted: the node looks down while its process keeps running.
    Refuse,
    /// Like [`ProxyMode::Refuse`], but connections are aborted with a TCP
    /// reset (`SO_LINGER` 0), live ones included.
    Reset,
}

impl ProxyMode {
    /// [`ProxyMode::Delay`] in both directions.
    pub fn delay(base: Duration, jitter: Duration) -> ProxyMode {
        ProxyMode::Delay {
            base,
            jitter,
            direction: Direction::Both,
        }
    }

    /// [`ProxyMode::Delay`] of the replies only ([`Direction::ToClient`]).
    pub fn delay_replies(base: Duration, jitter: Duration) -> ProxyMode {
        ProxyMode::Delay {
            base,
            jitter,
            direction: Direction::ToClient,
        }
    }

    /// Whether connections are closed in this mode.
    fn closes(self) -> bool {
        matches!(self, ProxyMode::Refuse | ProxyMode::Reset)
    }
}

/// The two flows of one proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    ToServer,
    ToClient,
}

/// An in-process TCP proxy listening on `127.0.0.1:<free port>` and
/// forwarding to one upstream port, with a [`ProxyMode`] that can be switched
/// at any time from any thread.
///
/// Loopback has no network to break, so fault tests put a proxy between every
/// (client, node) pair and break *that* instead: one client can lose a node
/// while another still reaches it, which is how asymmetric partitions are made
/// without iptables or network namespaces. [`ProxySet`] builds one proxy per
/// node of a [`Cluster`] for one client.
///
/// Each accepted connection gets its own upstream connection and two pump
/// threads, one per direction. A pump reads a chunk, stamps it with a release
/// time according to the current mode, and writes chunks out in FIFO order
/// once they are due, so a delay never reorders bytes and a healed blackhole
/// flushes what it held. Bytes are never dropped from the middle of a stream
/// (TCP would not do that either); a partition that loses data is a
/// [`ProxyMode::Reset`] or [`ProxyMode::Refuse`], which close the connection.
///
/// Dropping the proxy stops its listener and closes every connection.
///
/// ```
/// use std::time::Duration;
/// use redlock_tests::{Cluster, ProxyMode, ProxySet};
///
/// # fn main() -> std::io::Result<()> {
/// let cluster = Cluster::start(3)?;
/// let client_a = ProxySet::new(&cluster)?; // give client_a.urls() to client A
/// let client_b = ProxySet::new(&cluster)?;
/// client_a[2].set_mode(ProxyMode::Blackhole); // A loses node 2, B still sees it
/// client_b.set_all(ProxyMode::delay(Duration::from_millis(20), Duration::from_millis(5)));
/// client_a.heal_all();
/// # Ok(())
/// # }
/// ```
pub struct Proxy {
    port: u16,
    upstream: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// State shared by a proxy handle, its acceptor thread and its pumps.
struct Shared {
    upstream: u16,
    /// The current mode. Pumps read it for every chunk; the acceptor reads it
    /// under the `conns` lock, so a connection accepted while the mode turns
    /// to `Refuse`/`Reset` is either closed by `set_mode` or refused.
    mode: Mutex<ProxyMode>,
    /// Live connections, so that a mode change (or drop) can close them.
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Set when the proxy is dropped: the acceptor and pumps stop.
    closed: AtomicBool,
    /// Connections accepted so far.
    accepted: AtomicU64,
    /// Bytes received while in blackhole mode, in total.
    blackholed: AtomicU64,
    /// Seed state of the jitter generator (splitmix64).
    rng: Mutex<u64>,
}

/// One proxied connection: both sockets, kept so another thread can close them.
struct Conn {
    id: u64,
    client: TcpStream,
    server: TcpStream,
    /// Set when the connection is aborted with a reset: the pumps must then
    /// not send FIN on their way out (the last close sends the RST).
    reset: AtomicBool,
}

impl Conn {
    /// Closes both sides with FIN; both pumps see end of stream.
    fn close(&self) {
        if !self.reset.load(Ordering::Acquire) {
            let _ = self.client.shutdown(Shutdown::Both);
            let _ = self.server.shutdown(Shutdown::Both);
        }
    }

    /// Aborts both sides: `SO_LINGER` 0 makes the last close send RST, and
    /// shutting down only the read side wakes the pumps without a FIN.
    fn abort(&self) {
        self.reset.store(true, Ordering::Release);
        for stream in [&self.client, &self.server] {
            let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
            let _ = stream.shutdown(Shutdown::Read);
        }
    }
}

impl Shared {
    fn mode(&self) -> ProxyMode {
        *lock(&self.mode)
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// A uniformly random duration in `[0, max]`.
    fn jitter(&self, max: Duration) -> Duration {
        if max.is_zero() {
            return Duration::ZERO;
        }
        let mut state = lock(&self.rng);
        let r = splitmix64(&mut state);
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(r % nanos.saturating_add(1))
    }

    fn forget(&self, id: u64) {
        lock(&self.conns).retain(|conn| conn.id != id);
    }
}

impl Proxy {
    /// Starts a proxy on a free loopback port (never 6379) forwarding to
    /// `127.0.0.1:upstream`, in [`ProxyMode::Pass`].
    pub fn start(upstream: u16) -> io::Result<Proxy> {
        let listener = bind_free()?;
        let port = listener.local_addr()?.port();
        let seed = u64::from(port) << 32 ^ u64::from(upstream) ^ clock_seed();
        let shared = Arc::new(Shared {
            upstream,
            mode: Mutex::new(ProxyMode::Pass),
            conns: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            blackholed: AtomicU64::new(0),
            rng: Mutex::new(seed),
        });
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("redlock-proxy-{port}"))
                .spawn(move || accept_loop(&listener, &shared))?
        };
        Ok(Proxy {
            port,
            upstream,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// `redis://127.0.0.1:<proxy port>`: give this to the client instead of the node's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The node port the proxy forwards to.
    pub fn upstream(&self) -> u16 {
        self.upstream
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        self.shared.mode()
    }

    /// Switches the mode. [`ProxyMode::Refuse`] and [`ProxyMode::Reset`]
    /// close every live connection before returning; other modes apply to
    /// bytes read from now on (see [`Proxy`]).
    pub fn set_mode(&self, mode: ProxyMode) {
        *lock(&self.shared.mode) = mode;
        match mode {
            ProxyMode::Refuse => self.close_all(false),
            ProxyMode::Reset => self.close_all(true),
            _ => {}
        }
    }

    /// Back to [`ProxyMode::Pass`] (bytes held by a blackhole or a delay are
    /// forwarded in order).
    pub fn heal(&self) {
        self.set_mode(ProxyMode::Pass);
    }

    /// Aborts every live connection with a TCP reset, dropping whatever bytes
    /// are held, and keeps the current mode for new connections.
    pub fn reset_connections(&self) {
        self.close_all(true);
    }

    /// Number of live proxied connections.
    pub fn connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Number of connections accepted since the proxy started (refused ones included).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Bytes this proxy has received and held in [`ProxyMode::Blackhole`], in total: a test can
    /// wait for it to grow to know a command reached the proxy and was held there.
    pub fn blackholed_bytes(&self) -> u64 {
        self.shared.blackholed.load(Ordering::Relaxed)
    }

    fn close_all(&self, reset: bool) {
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for conn in conns {
            if reset {
                conn.abort();
            } else {
                conn.close();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        // Wake the acceptor out of `accept` so it sees `closed`.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)),
            Duration::from_millis(200),
        );
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.close_all(false);
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("port", &self.port)
            .field("upstream", &self.upstream)
            .field("mode", &self.mode())
            .field("connections", &self.connections())
            .finish()
    }
}

/// One client's proxies, one per node of a [`Cluster`] and in node order.
///
/// Build the client with [`ProxySet::urls`] instead of the cluster's URLs;
/// a fault on `set[i]` then affects only this client's view of node `i`.
#[derive(Debug)]
pub struct ProxySet {
    proxies: Vec<Proxy>,
}

impl ProxySet {
    /// Starts one [`Proxy`] in front of every node of `cluster`.
    pub fn new(cluster: &Cluster) -> io::Result<ProxySet> {
        ProxySet::for_ports(cluster.iter().map(|node| node.port()))
    }

    /// Starts one [`Proxy`] in front of each upstream port, in order.
    pub fn for_ports(ports: impl IntoIterator<Item = u16>) -> io::Result<ProxySet> {
        let proxies = ports
            .into_iter()
            .map(Proxy::start)
            .collect::<io::Result<Vec<_>>>()?;
        Ok(ProxySet { proxies })
    }

    /// The proxies' `redis://` URLs, in node order.
    pub fn urls(&self) -> Vec<String> {
        self.proxies.iter().map(Proxy::url).collect()
    }

    /// Number of proxies.
    pub fn len(&self) -> usize {
        self.proxies.len()
    }

    /// Whether the set has no proxies.
    pub fn is_empty(&self) -> bool {
        self.proxies.is_empty()
    }

    /// Sets `mode` on every proxy of the set.
    pub fn set_all(&self, mode: ProxyMode) {
        for proxy in &self.proxies {
            proxy.set_mode(mode);
        }
    }

    /// Sets `mode` on the proxies of the given nodes.
    pub fn set_some(&self, nodes: &[usize], mode: ProxyMode) {
        for &i in nodes {
            self.proxies[i].set_mode(mode);
        }
    }

    /// Every proxy back to [`ProxyMode::Pass`].
    pub fn heal_all(&self) {
        self.set_all(ProxyMode::Pass);
    }

    /// Iterates over the proxies in node order.
    pub fn iter(&self) -> slice::Iter<'_, Proxy> {
        self.proxies.iter()
    }
}

impl Index<usize> for ProxySet {
    type Output = Proxy;

    fn index(&self, i: usize) -> &Proxy {
        &self.proxies[i]
    }
}

impl<'a> IntoIterator for &'a ProxySet {
    type Item = &'a Proxy;
    type IntoIter = slice::Iter<'a, Proxy>;

    fn into_iter(self) -> Self::IntoIter {
        self.proxies.iter()
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.is_closed() {
            return;
        }
        let Ok(client) = stream else {
            continue;
        };
        let id = shared.accepted.fetch_add(1, Ordering::Relaxed);
        match shared.mode() {
            ProxyMode::Refuse => drop(client),
            ProxyMode::Reset => {
                let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                drop(client);
            }
            _ => {
                let shared = shared.clone();
                // Connecting upstream happens off the acceptor so a slow node
                // cannot hold up other clients' connections.
                let spawned = thread::Builder::new()
                    .name("redlock-proxy-conn".to_owned())
                    .stack_size(PUMP_STACK)
                    .spawn(move || serve(id, client, &shared));
                drop(spawned);
            }
        }
    }
}

/// Connects upstream, registers the connection and runs the client → node
/// pump on this thread and the node → client pump on another.
fn serve(id: u64, client: TcpStream, shared: &Arc<Shared>) {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, shared.upstream));
    let Ok(server) = TcpStream::connect_timeout(&addr, UPSTREAM_CONNECT_TIMEOUT) else {
        // The node is down: the client sees its connection aborted.
        let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let conn = match (client.try_clone(), server.try_clone()) {
        (Ok(client), Ok(server)) => Arc::new(Conn {
            id,
            client,
            server,
            reset: AtomicBool::new(false),
        }),
        _ => return,
    };
    {
        let mut conns = lock(&shared.conns);
        if shared.mode().closes() || shared.is_closed() {
            return;
        }
        conns.push(conn.clone());
    }
    let (Ok(client_in), Ok(server_in)) = (client.try_clone(), server.try_clone()) else {
        conn.close();
        shared.forget(conn.id);
        return;
    };
    let back = {
        let (shared, conn) = (shared.clone(), conn.clone());
        thread::Builder::new()
            .name("redlock-proxy-pump".to_owned())
            .stack_size(PUMP_STACK)
            .spawn(move || pump(server_in, client, Flow::ToClient, &shared, &conn))
    };
    if back.is_err() {
        conn.close();
        shared.forget(conn.id);
        return;
    }
    pump(client_in, server, Flow::ToServer, shared, &conn);
}

/// A chunk of bytes waiting to be forwarded.
struct Chunk {
    data: Vec<u8>,
    /// When it may leave; `None` while a blackhole holds it.
    due: Option<Instant>,
}

/// Forwards `from` → `to` according to the proxy mode until either side
/// closes, then closes the whole connection.
fn pump(mut from: TcpStream, mut to: TcpStream, flow: Flow, shared: &Shared, conn: &Conn) {
    let mut queue: VecDeque<Chunk> = VecDeque::new();
    // The release time of the last chunk queued: later chunks never leave before it.
    let mut last_due = Instant::now();
    let mut buf = vec![0; CHUNK];
    let result = (|| -> io::Result<()> {
        loop {
            if shared.is_closed() {
                return Ok(());
            }
            let mode = shared.mode();
            if mode.closes() {
                return Ok(());
            }
            let now = Instant::now();
            if mode != ProxyMode::Blackhole {
                for chunk in queue.iter_mut().filter(|c| c.due.is_none()) {
                    last_due = last_due.max(now);
                    chunk.due = Some(last_due);
                }
            }
            while queue
                .front()
                .is_some_and(|c| c.due.is_some_and(|due| due <= now))
            {
                if let Some(chunk) = queue.pop_front() {
                    to.write_all(&chunk.data)?;
                }
            }
            let wait = queue.front().map(|chunk| match chunk.due {
                Some(due) => due
                    .saturating_duration_since(now)
                    .max(Duration::from_micros(100)),
                None => BLACKHOLE_POLL,
            });
            from.set_read_timeout(wait)?;
            let n = match from.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            let due = match shared.mode() {
                ProxyMode::Blackhole => {
                    shared
                        .blackholed
                        .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
                    None
                }
                ProxyMode::Delay {
                    base,
                    jitter,
                    direction,
                } if direction.includes(flow) => {
                    last_due = last_due.max(now + base + shared.jitter(jitter));
                    Some(last_due)
                }
                _ => {
                    last_due = last_due.max(now);
                    Some(last_due)
                }
            };
            queue.push_back(Chunk {
                data: buf[..n].to_vec(),
                due,
            });
        }
    })();
    drop(result);
    conn.close();
    shared.forget(conn.id);
}

/// Binds a listener on a free loopback port other than 6379.
fn bind_free() -> io::Result<TcpListener> {
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        if listener.local_addr()?.port() != 6379 {
            return Ok(listener);
        }
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One step of splitmix64: small, fast and good enough for jitter.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoning cannot leave the proxy state inconsistent: every update is one assignment.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cluster, Reply};

    /// A raw RESP PING through `port`, with a timeout.
    fn ping(port: u16, timeout: Duration) -> io::Result<Reply> {
        crate::resp::query(port, &["PING"], timeout)
    }

    #[test]
    fn pass_forwards_and_modes_switch_at_runtime() {
        let cluster = Cluster::start(1).unwrap();
        let proxy = Proxy::start(cluster[0].port()).unwrap();
        assert_ne!(proxy.port(), 6379);
        assert_eq!(proxy.upstream(), cluster[0].port());
        assert_eq!(proxy.url(), format!("redis://127.0.0.1:{}", proxy.port()));
        let ok = Duration::from_secs(2);
        assert_eq!(
            ping(proxy.port(), ok).unwrap(),
            Reply::Simple("PONG".into())
        );

        proxy.set_mode(ProxyMode::Blackhole);
        assert!(ping(proxy.port(), Duration::from_millis(100)).is_err());
        proxy.set_mode(ProxyMode::Refuse);
        assert!(ping(proxy.port(), ok).is_err());
        proxy.set_mode(ProxyMode::Reset);
        assert!(ping(proxy.port(), ok).is_err());
        proxy.heal();
        assert_eq!(
            ping(proxy.port(), ok).unwrap(),
            Reply::Simple("PONG".into())
        );
        assert!(proxy.accepted() >= 5);
        assert!(format!("{proxy:?}").contains("Pass"));
    }

    #[test]
    fn delay_holds_replies_in_order() {
        let cluster = Cluster::start(1).unwrap();
        let proxy = Proxy::start(cluster[0].port()).unwrap();
        proxy.set_mode(ProxyMode::delay_replies(
            Duration::from_millis(150),
            Duration::from_millis(20),
        ));
        let started = Instant::now();
        let reply = crate::resp::query(proxy.port(), &["SET", "k", "v"], Duration::from_secs(2));
        assert_eq!(reply.unwrap(), Reply::Simple("OK".into()));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(150), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");

        // Replies were late, but the command ran at once.
        proxy.set_mode(ProxyMode::delay_replies(
            Duration::from_secs(5),
            Duration::ZERO,
        ));
        let blocked =
            crate::resp::query(proxy.port(), &["SET", "k", "w"], Duration::from_millis(200));
        assert!(blocked.is_err());
        assert_eq!(cluster[0].get("k").unwrap().as_deref(), Some("w"));
    }

    #[test]
    fn healed_blackhole_flushes_held_bytes() {
        let cluster = Cluster::start(1).unwrap();
        let proxy = Proxy::start(cluster[0].port()).unwrap();
        proxy.set_mode(ProxyMode::Blackhole);
        let port = proxy.port();
        let writer = thread::spawn(move || {
            crate::resp::query(port, &["SET", "held", "1"], Duration::from_secs(5))
        });
        // The command waits inside the proxy until the blackhole heals.
        let deadline = Instant::now() + Duration::from_secs(2);
        while proxy.blackholed_bytes() == 0 {
            assert!(
                Instant::now() < deadline,
                "the command never reached the proxy"
            );
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(cluster[0].get("held").unwrap(), None);
        proxy.heal();
        assert_eq!(writer.join().unwrap().unwrap(), Reply::Simple("OK".into()));
        assert_eq!(cluster[0].get("held").unwrap().as_deref(), Some("1"));
    }

    #[test]
    fn reset_drops_held_bytes_and_live_connections() {
        let cluster = Cluster::start(1).unwrap();
        let proxy = Proxy::start(cluster[0].port()).unwrap();
        proxy.set_mode(ProxyMode::Blackhole);
        let port = proxy.port();
        let writer = thread::spawn(move || {
            crate::resp::query(port, &["SET", "dropped", "1"], Duration::from_secs(5))
        });
        let deadline = Instant::now() + Duration::from_secs(2);
        while proxy.connections() == 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        proxy.reset_connections();
        assert!(writer.join().unwrap().is_err());
        assert_eq!(proxy.connections(), 0);
        proxy.heal();
        assert_eq!(cluster[0].get("dropped").unwrap(), None);
    }

    #[test]
    fn proxy_set_fronts_every_node() {
        let cluster = Cluster::start(3).unwrap();
        let set = ProxySet::new(&cluster).unwrap();
        assert_eq!(set.len(), 3);
        assert!(!set.is_empty());
        assert_eq!(set.urls().len(), 3);
        for (proxy, node) in set.iter().zip(cluster.iter()) {
            assert_eq!(proxy.upstream(), node.port());
        }
        set.set_some(&[1], ProxyMode::Refuse);
        assert_eq!(set[1].mode(), ProxyMode::Refuse);
        assert_eq!(set[0].mode(), ProxyMode::Pass);
        set.set_all(ProxyMode::Blackhole);
        assert!((&set).into_iter().all(|p| p.mode() == ProxyMode::Blackhole));
        set.heal_all();
        assert!(set.iter().all(|p| p.mode() == ProxyMode::Pass));
    }

    #[test]
    fn killed_node_looks_refused_through_the_proxy() {
        let cluster = Cluster::start(1).unwrap();
        let proxy = Proxy::start(cluster[0].port()).unwrap();
        cluster[0].kill().unwrap();
        assert!(ping(proxy.port(), Duration::from_secs(1)).is_err());
        cluster[0].start_again().unwrap();
        assert!(ping(proxy.port(), Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn jitter_stays_in_range() {
        let proxy = Proxy::start(1).unwrap();
        let max = Duration::from_millis(3);
        let samples: Vec<_> = (0..100).map(|_| proxy.shared.jitter(max)).collect();
        assert!(samples.iter().all(|d| *d <= max));
        assert!(samples.iter().any(|d| *d != samples[0]));
        assert_eq!(proxy.shared.jitter(Duration::ZERO), Duration::ZERO);
    }
}
