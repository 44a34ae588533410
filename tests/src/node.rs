//! [`RedisNode`]: one `redis-server` child process on a private loopback port.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::resp::{self, Reply};
use crate::server::{self, LOG_FILE, Persistence, SERVER_ENV, STDERR_FILE};

/// How long a node may take to answer `PING` after being spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between readiness polls.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Timeout of each readiness `PING` (a fresh server answers in microseconds).
const POLL_QUERY_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a [`RedisNode::monitor`] read waits before checking the monitor's life again.
const MONITOR_READ_TIMEOUT: Duration = Duration::from_millis(100);

/// Timeout for connect, write and read of [`RedisNode::query`].
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// How many ports a fresh node tries before giving up (the port can be taken
/// by another process between picking it and the server binding it).
const START_ATTEMPTS: usize = 5;

/// How long [`RedisNode::pause`] waits for the kernel to report the process stopped.
const STOP_CONFIRM_TIMEOUT: Duration = Duration::from_millis(200);

/// Lines of server log quoted in startup errors.
const LOG_TAIL_LINES: usize = 20;

/// Prefix of every data directory, so leftovers can be found with
/// `pkill -f redlock-harness`.
const DIR_PREFIX: &str = "redlock-harness-";

/// One `redis-server` (or compatible) child process listening on
/// `127.0.0.1:<port>`, with its own temporary data directory.
///
/// The node can be paused (`SIGSTOP`), resumed, killed (`SIGKILL`) and started
/// again on the same port with the same data directory, which is what fault
/// injection tests need. Dropping the node kills the process and removes the
/// directory.
///
/// All methods take `&self` (the process handle sits behind a mutex), so a node
/// can be shared between threads, e.g. killed from one while another queries it.
pub struct RedisNode {
    port: u16,
    binary: String,
    persistence: Persistence,
    dir: TempDir,
    state: Mutex<State>,
}

/// The mutable part of a node: its current process, if any.
#[derive(Debug, Default)]
struct State {
    child: Option<Child>,
    paused: bool,
}

impl State {
    /// The child if it is still alive; reaps and forgets it if it has exited.
    fn live_child(&mut self) -> Option<&mut Child> {
        let exited = match self.child.as_mut()?.try_wait() {
            Ok(None) => false,
            Ok(Some(_)) | Err(_) => true,
        };
        if exited {
            self.child = None;
            self.paused = false;
        }
        self.child.as_mut()
    }

    /// Resumes (if paused), kills and reaps the child; a no-op without one.
    fn kill(&mut self) -> io::Result<()> {
        let paused = std::mem::take(&mut self.paused);
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if paused {
            // SIGKILL terminates stopped processes too; this is belt and braces.
            let _ = signal(child.id(), "CONT");
        }
        // Fails only if the child was already reaped, which `wait` covers.
        let _ = child.kill();
        child.wait().map(drop)
    }
}

/// Why a spawned server did not become ready.
#[derive(Debug)]
enum NotReady {
    /// The process exited (most likely the port was taken): worth another port.
    Exited(io::Error),
    /// Anything else (deadline passed, I/O error): give up.
    Failed(io::Error),
}

impl NotReady {
    fn into_error(self) -> io::Error {
        match self {
            NotReady::Exited(err) | NotReady::Failed(err) => err,
        }
    }
}

impl RedisNode {
    /// Starts a node without persistence and waits until it answers `PING`.
    pub fn start() -> io::Result<RedisNode> {
        RedisNode::start_with(Persistence::None)
    }

    /// Starts a node with the given persistence and waits until it answers `PING`.
    ///
    /// Retries on a new port (up to 5 times) if the server exits early, which
    /// is what happens when another process takes the port first.
    pub fn start_with(persistence: Persistence) -> io::Result<RedisNode> {
        let node = RedisNode::spawn(persistence, server::free_port()?)?;
        node.finish_start()
    }

    /// Creates the data directory and spawns the server on `port` without
    /// waiting for it (see [`RedisNode::finish_start`]).
    pub(crate) fn spawn(persistence: Persistence, port: u16) -> io::Result<RedisNode> {
        let dir = tempfile::Builder::new().prefix(DIR_PREFIX).tempdir()?;
        let node = RedisNode {
            port,
            binary: server::server_binary(),
            persistence,
            dir,
            state: Mutex::new(State::default()),
        };
        node.spawn_child()?;
        Ok(node)
    }

    /// Waits until a node from [`RedisNode::spawn`] is ready, moving it to a
    /// fresh port if the server exits early.
    pub(crate) fn finish_start(mut self) -> io::Result<RedisNode> {
        let mut attempt = 1;
        loop {
            match self.wait_ready() {
                Ok(()) => return Ok(self),
                Err(NotReady::Exited(_)) if attempt < START_ATTEMPTS => {
                    attempt += 1;
                    self.lock().kill()?;
                    self.port = server::free_port()?;
                    self.spawn_child()?;
                }
                Err(not_ready) => return Err(not_ready.into_error()),
            }
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The loopback port; it stays the same across [`RedisNode::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server process id, or `None` if the node is not running.
    pub fn pid(&self) -> Option<u32> {
        self.lock().live_child().map(|child| child.id())
    }

    /// The persistence mode the node was started with.
    pub fn persistence(&self) -> Persistence {
        self.persistence
    }

    /// The node's data directory (kept across restarts, removed on drop).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the server process exists (a paused node counts as running).
    pub fn is_running(&self) -> bool {
        self.lock().live_child().is_some()
    }

    /// Whether the node is paused by [`RedisNode::pause`].
    pub fn is_paused(&self) -> bool {
        let mut state = self.lock();
        state.live_child().is_some() && state.paused
    }

    /// Freezes the server with `SIGSTOP`: connections still open (the kernel
    /// accepts them) but nothing is answered until [`RedisNode::resume`].
    pub fn pause(&self) -> io::Result<()> {
        let mut state = self.lock();
        let pid = state.live_child().ok_or_else(not_running)?.id();
        signal(pid, "STOP")?;
        state.paused = true;
        wait_until_stopped(pid);
        Ok(())
    }

    /// Unfreezes a paused server with `SIGCONT`.
    pub fn resume(&self) -> io::Result<()> {
        let mut state = self.lock();
        let pid = state.live_child().ok_or_else(not_running)?.id();
        signal(pid, "CONT")?;
        state.paused = false;
        Ok(())
    }

    /// Kills the server with `SIGKILL` (after `SIGCONT` if paused) and reaps it.
    /// The data directory is kept. Does nothing if the node is not running.
    pub fn kill(&self) -> io::Result<()> {
        self.lock().kill()
    }

    /// Kills the server if it runs, then starts it again on the same port with
    /// the same data directory and waits until it answers `PING`.
    pub fn restart(&self) -> io::Result<()> {
        self.kill()?;
        self.start_again()
    }

    /// Starts a killed node again on the same port with the same data
    /// directory and waits until it answers `PING`.
    ///
    /// Fails with [`io::ErrorKind::AlreadyExists`] if the node is running.
    pub fn start_again(&self) -> io::Result<()> {
        if self.is_running() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("node on port {} is already running", self.port),
            ));
        }
        self.spawn_child()?;
        self.wait_ready().map_err(|not_ready| {
            // Leave the node consistently stopped.
            let _ = self.kill();
            not_ready.into_error()
        })
    }

    /// Sends one command on a fresh connection and returns the reply;
    /// connect, write and read each time out after 2 s.
    ///
    /// Server errors come back as `Ok(Reply::Error(..))`; `Err` means the
    /// node could not be reached or did not answer in time.
    pub fn query(&self, args: &[&str]) -> io::Result<Reply> {
        self.query_timeout(args, QUERY_TIMEOUT)
    }

    /// [`RedisNode::query`] with a custom timeout (per connect, write and read).
    pub fn query_timeout(&self, args: &[&str], timeout: Duration) -> io::Result<Reply> {
        resp::query(self.port, args, timeout)
    }

    /// Every command the node executes from now on, as `MONITOR` prints it, one line per
    /// command (commands run by scripts included, tagged `lua`), in the order the node ran
    /// them. A thread reads them until the receiver is dropped, the node closes the
    /// connection, or `life` has passed, so it never outlives a test by much.
    pub fn monitor(&self, life: Duration) -> io::Result<mpsc::Receiver<String>> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(MONITOR_READ_TIMEOUT))?;
        stream.write_all(b"MONITOR\r\n")?;
        let mut reader = BufReader::new(stream);
        let mut ok = String::new();
        reader.read_line(&mut ok)?;
        if ok.trim_end() != "+OK" {
            return Err(io::Error::other(format!("MONITOR answered {ok:?}")));
        }
        let (lines, received) = mpsc::channel();
        let end = Instant::now() + life;
        thread::spawn(move || {
            let mut line = String::new();
            while Instant::now() < end {
                match reader.read_line(&mut line) {
                    Ok(0) => return,
                    Ok(_) if line.ends_with('\n') => {
                        if lines.send(std::mem::take(&mut line)).is_err() {
                            return;
                        }
                    }
                    // The end of the stream in the middle of a line: nothing more will come.
                    Ok(_) => return,
                    // Timed out, keeping what part of a line came: read on.
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => return,
                }
            }
        });
        Ok(received)
    }

    /// `PING`, expecting `PONG`.
    pub fn ping(&self) -> io::Result<()> {
        match self.query(&["PING"])? {
            Reply::Simple(pong) if pong == "PONG" => Ok(()),
            other => Err(unexpected("PING", &other)),
        }
    }

    /// `GET key`: `None` if the key does not exist.
    pub fn get(&self, key: &str) -> io::Result<Option<String>> {
        match self.query(&["GET", key])? {
            Reply::Nil => Ok(None),
            Reply::Bulk(value) => Ok(Some(value)),
            other => Err(unexpected("GET", &other)),
        }
    }

    /// How many times the node has run `command` (lower case, as `INFO commandstats` names it;
    /// 0 for one it never ran).
    pub fn command_calls(&self, command: &str) -> io::Result<i64> {
        let info = self.query(&["INFO", "commandstats"])?;
        let prefix = format!("cmdstat_{command}:calls=");
        Ok(info
            .as_str()
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.split(',').next())
            .and_then(|calls| calls.parse().ok())
            .unwrap_or(0))
    }

    /// `SET key value`.
    pub fn set(&self, key: &str, value: &str) -> io::Result<()> {
        expect_ok("SET", &self.query(&["SET", key, value])?)
    }

    /// `KEYS pattern`.
    pub fn keys(&self, pattern: &str) -> io::Result<Vec<String>> {
        match self.query(&["KEYS", pattern])? {
            Reply::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Reply::Bulk(key) | Reply::Simple(key) => Ok(key),
                    other => Err(unexpected("KEYS", &other)),
                })
                .collect(),
            other => Err(unexpected("KEYS", &other)),
        }
    }

    /// `DBSIZE`.
    pub fn dbsize(&self) -> io::Result<i64> {
        match self.query(&["DBSIZE"])? {
            Reply::Int(n) => Ok(n),
            other => Err(unexpected("DBSIZE", &other)),
        }
    }

    /// `FLUSHALL`.
    pub fn flushall(&self) -> io::Result<()> {
        expect_ok("FLUSHALL", &self.query(&["FLUSHALL"])?)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` inconsistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Spawns the server process on `self.port`; does not wait for it.
    fn spawn_child(&self) -> io::Result<()> {
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(STDERR_FILE))?;
        let child = Command::new(&self.binary)
            .args(server::server_args(
                &self.binary,
                self.port,
                self.dir.path(),
                self.persistence,
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!(
                        "cannot run `{}` ({err}); install redis-server or set {SERVER_ENV}",
                        self.binary
                    ),
                )
            })?;
        let mut state = self.lock();
        state.kill()?;
        state.child = Some(child);
        Ok(())
    }

    /// Polls `PING` until the server answers `PONG`, the process exits or the
    /// deadline passes.
    fn wait_ready(&self) -> Result<(), NotReady> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let pid = {
                let mut state = self.lock();
                let Some(child) = state.child.as_mut() else {
                    return Err(NotReady::Failed(not_running()));
                };
                match child.try_wait() {
                    Ok(None) => child.id(),
                    Ok(Some(status)) => {
                        state.child = None;
                        let what = format!("exited during startup ({status})");
                        return Err(NotReady::Exited(self.startup_error(&what)));
                    }
                    Err(err) => return Err(NotReady::Failed(err)),
                }
            };
            if let Ok(Reply::Simple(pong)) = resp::query(self.port, &["PING"], POLL_QUERY_TIMEOUT)
                && pong == "PONG"
            {
                return self.check_identity(pid);
            }
            if Instant::now() >= deadline {
                let what = format!("did not answer PING within {READY_TIMEOUT:?}");
                return Err(NotReady::Failed(self.startup_error(&what)));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Makes sure the server answering on our port is our child (and not
    /// another process that won the race for the port while ours is dying).
    fn check_identity(&self, pid: u32) -> Result<(), NotReady> {
        let info = match resp::query(self.port, &["INFO", "server"], POLL_QUERY_TIMEOUT) {
            Ok(Reply::Bulk(info)) => info,
            // Servers without INFO (or odd replies) get the benefit of the doubt.
            _ => return Ok(()),
        };
        let reported = info
            .lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .and_then(|id| id.trim().parse::<u32>().ok());
        match reported {
            Some(other) if other != pid => {
                let what = format!("port {} is served by another process ({other})", self.port);
                Err(NotReady::Exited(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    what,
                )))
            }
            _ => Ok(()),
        }
    }

    /// An error describing a failed start, with the tail of the server's logs.
    fn startup_error(&self, what: &str) -> io::Error {
        let mut message = format!("`{}` on 127.0.0.1:{} {what}", self.binary, self.port);
        for file in [LOG_FILE, STDERR_FILE] {
            let tail = log_tail(&self.dir.path().join(file), LOG_TAIL_LINES);
            if !tail.is_empty() {
                message.push_str(&format!("\n--- {file} (tail) ---\n{tail}"));
            }
        }
        io::Error::other(message)
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = state.kill();
        // `dir` is removed when the field drops, after the process is gone.
    }
}

impl fmt::Debug for RedisNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisNode")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .field("paused", &self.lock().paused)
            .field("persistence", &self.persistence)
            .field("binary", &self.binary)
            .field("data_dir", &self.dir.path())
            .finish()
    }
}

/// Sends `SIG<name>` to `pid` by running the `kill` binary (no `unsafe`).
fn signal(pid: u32, name: &str) -> io::Result<()> {
    let status = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`kill -s {name} {pid}` failed ({status})"
        )))
    }
}

/// Waits (briefly, best effort, Linux only) until `/proc` reports `pid` stopped,
/// so a query right after [`RedisNode::pause`] cannot slip through.
fn wait_until_stopped(pid: u32) {
    let stat = PathBuf::from(format!("/proc/{pid}/stat"));
    let deadline = Instant::now() + STOP_CONFIRM_TIMEOUT;
    while Instant::now() < deadline {
        let Ok(text) = fs::read_to_string(&stat) else {
            return;
        };
        // Format: `pid (comm) STATE ...`; comm may contain spaces and parens.
        let state = text
            .rfind(')')
            .and_then(|end| text[end + 1..].trim_start().chars().next());
        match state {
            Some('T' | 't') | None => return,
            Some(_) => thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// The last `lines` lines of `path`, or an empty string if it is unreadable.
fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(bytes) = fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn not_running() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "node is not running")
}

fn unexpected(command: &str, reply: &Reply) -> io::Error {
    io::Error::other(format!("unexpected reply to {command}: {reply:?}"))
}

fn expect_ok(command: &str, reply: &Reply) -> io::Result<()> {
    match reply {
        Reply::Simple(ok) if ok == "OK" => Ok(()),
        other => Err(unexpected(command, other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_keeps_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        fs::write(&path, "a\nb\nc\n").unwrap();
        assert_eq!(log_tail(&path, 2), "b\nc");
        assert_eq!(log_tail(&path, 10), "a\nb\nc");
        assert_eq!(log_tail(&dir.path().join("missing"), 2), "");
    }

    #[test]
    fn single_node_lifecycle() {
        let node = RedisNode::start().unwrap();
        assert!(node.is_running());
        assert_ne!(node.port(), 6379);
        assert_eq!(node.url(), format!("redis://127.0.0.1:{}", node.port()));
        assert!(
            node.data_dir()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(DIR_PREFIX)
        );
        node.set("k", "v").unwrap();
        assert_eq!(node.get("k").unwrap().as_deref(), Some("v"));
        assert_eq!(node.get("missing").unwrap(), None);
        assert_eq!(node.keys("*").unwrap(), vec!["k".to_owned()]);
        assert_eq!(node.dbsize().unwrap(), 1);
        assert!(matches!(node.query(&["NOPE"]).unwrap(), Reply::Error(_)));
        node.flushall().unwrap();
        assert_eq!(node.dbsize().unwrap(), 0);
        assert!(format!("{node:?}").contains("RedisNode"));

        let dir = node.data_dir().to_path_buf();
        let pid = node.pid().unwrap();
        drop(node);
        assert!(!dir.exists(), "data dir removed on drop");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process reaped"
        );
    }

    #[test]
    fn pause_resume_kill_restart() {
        let node = RedisNode::start().unwrap();
        node.set("k", "v").unwrap();

        node.pause().unwrap();
        assert!(node.is_paused() && node.is_running());
        let started = Instant::now();
        let timeout = Duration::from_millis(200);
        assert!(node.query_timeout(&["PING"], timeout).is_err());
        assert!(started.elapsed() < timeout * 3);
        node.resume().unwrap();
        assert!(!node.is_paused());
        node.ping().unwrap();

        // Killing a paused node works too.
        node.pause().unwrap();
        node.kill().unwrap();
        node.kill().unwrap(); // idempotent
        assert!(!node.is_running());
        assert_eq!(node.pid(), None);
        assert!(node.query(&["PING"]).is_err());
        assert!(node.pause().is_err());

        let port = node.port();
        node.start_again().unwrap();
        assert_eq!(node.port(), port);
        assert_eq!(node.get("k").unwrap(), None, "no persistence: empty");
        let err = node.start_again().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);

        node.set("k", "v2").unwrap();
        let old_pid = node.pid();
        node.restart().unwrap();
        assert_ne!(node.pid(), old_pid);
        assert_eq!(node.dbsize().unwrap(), 0);
    }

    #[test]
    fn aof_always_survives_kill() {
        let node = RedisNode::start_with(Persistence::AofAlways).unwrap();
        assert_eq!(node.persistence(), Persistence::AofAlways);
        node.set("durable", "yes").unwrap();
        node.kill().unwrap();
        node.start_again().unwrap();
        assert_eq!(node.get("durable").unwrap().as_deref(), Some("yes"));
    }

    #[test]
    fn taken_port_moves_to_a_new_one() {
        let first = RedisNode::start().unwrap();
        // The second server cannot bind (or PING reaches `first`, whose pid differs).
        let second = RedisNode::spawn(Persistence::None, first.port())
            .unwrap()
            .finish_start()
            .unwrap();
        assert_ne!(second.port(), first.port());
        second.set("k", "second").unwrap();
        assert_eq!(first.get("k").unwrap(), None);
        let info = second.query(&["INFO", "server"]).unwrap();
        let pid = format!("process_id:{}", second.pid().unwrap());
        assert!(info.as_str().unwrap().contains(&pid));
    }

    #[test]
    fn startup_error_carries_log_tail() {
        let node = RedisNode::start().unwrap();
        fs::write(node.data_dir().join(STDERR_FILE), "boom: bad option\n").unwrap();
        let err = node.startup_error("exited during startup");
        assert!(err.to_string().contains("boom: bad option"), "{err}");
    }
}
