//! Node faults beyond pause and kill: delayed restart, rollback to an older
//! copy of the data directory, and an emulated forward clock jump.
//!
//! These are the ways a Redlock node can lose or shorten a key it granted:
//!
//! * [`RedisNode::restart_after`] keeps a killed node down for a while before
//!   starting it again (the operational rule that makes restarts without
//!   persistence safe when the delay exceeds the longest ttl);
//! * [`RedisNode::snapshot`] / [`RedisNode::restart_from`] emulate power loss
//!   that loses the un-fsynced tail: a plain `SIGKILL` cannot, because the page
//!   cache survives a process crash, so the node is restarted from a copy of its
//!   data directory taken earlier;
//! * [`RedisNode::jump_clock`] sets the remaining time to live of keys to 1 ms,
//!   the observable effect of the node's wall clock jumping past their expiry
//!   (`libfaketime` does not work with Debian's jemalloc-linked `redis-server`).

use std::fs;
use std::io;
use std::path::Path;
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use crate::node::RedisNode;
use crate::resp::Reply;
use crate::server::{LOG_FILE, STDERR_FILE};

/// Keys examined per `SCAN` call by [`RedisNode::jump_clock`].
const SCAN_COUNT: &str = "1000";

/// Upper bound on `SCAN` round trips of one [`RedisNode::jump_clock`].
const MAX_SCAN_CALLS: usize = 10_000;

/// A copy of a node's data directory (its append-only files), taken by
/// [`RedisNode::snapshot`] and restored by [`RedisNode::restart_from`].
///
/// Log files are not part of it. The copy lives in its own temporary
/// directory, removed when the snapshot drops.
#[derive(Debug)]
pub struct DataSnapshot {
    dir: TempDir,
}

impl DataSnapshot {
    /// Where the copy is stored.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl RedisNode {
    /// Kills the node (if it runs), keeps it down for `delay`, then starts it
    /// again on the same port with the same data directory.
    ///
    /// Blocks the calling thread for `delay`: call it from the thread that
    /// runs the fault schedule, not from an async task.
    pub fn restart_after(&self, delay: Duration) -> io::Result<()> {
        self.kill()?;
        thread::sleep(delay);
        self.start_again()
    }

    /// Copies the node's data directory as it is now (the node may be
    /// running: with `appendfsync always` every acknowledged write is already
    /// in the file).
    pub fn snapshot(&self) -> io::Result<DataSnapshot> {
        let dir = tempfile::Builder::new()
            .prefix("redlock-harness-snapshot-")
            .tempdir()?;
        copy_data(self.data_dir(), dir.path())?;
        Ok(DataSnapshot { dir })
    }

    /// Replaces the data directory of a stopped node with `snapshot`.
    ///
    /// Fails with [`io::ErrorKind::AlreadyExists`] if the node is running.
    pub fn restore(&self, snapshot: &DataSnapshot) -> io::Result<()> {
        if self.is_running() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("node on port {} must be stopped to restore", self.port()),
            ));
        }
        for entry in fs::read_dir(self.data_dir())? {
            let entry = entry?;
            if is_log(&entry.file_name()) {
                continue;
            }
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
            } else {
                fs::remove_file(entry.path())?;
            }
        }
        copy_data(snapshot.path(), self.data_dir())
    }

    /// Kills the node, rolls its data directory back to `snapshot` and starts
    /// it again at once: a restart that forgets every write made after the
    /// snapshot, even with `appendfsync always`.
    pub fn restart_from(&self, snapshot: &DataSnapshot) -> io::Result<()> {
        self.kill()?;
        self.restore(snapshot)?;
        self.start_again()
    }

    /// Emulates a forward jump of the node's wall clock past the expiry of its
    /// keys: every key matching `pattern` *that has a time to live* gets 1 ms
    /// left (`SCAN MATCH` + `PEXPIRE key 1 XX`). Keys without a time to live
    /// (fence counters, say) are untouched, as a clock jump would leave them.
    /// Returns how many keys were shortened.
    ///
    /// Needs Redis 7 or Valkey (`PEXPIRE ... XX`).
    pub fn jump_clock(&self, pattern: &str) -> io::Result<usize> {
        let mut cursor = "0".to_owned();
        let mut shortened = 0;
        for _ in 0..MAX_SCAN_CALLS {
            let reply = self.query(&["SCAN", &cursor, "MATCH", pattern, "COUNT", SCAN_COUNT])?;
            let (next, keys) = scan_page(&reply)?;
            for key in keys {
                if self.query(&["PEXPIRE", &key, "1", "XX"])?.as_int() == Some(1) {
                    shortened += 1;
                }
            }
            if next == "0" {
                return Ok(shortened);
            }
            cursor = next;
        }
        Err(io::Error::other("SCAN did not finish"))
    }
}

/// Splits a `SCAN` reply into the next cursor and the keys of this page.
fn scan_page(reply: &Reply) -> io::Result<(String, Vec<String>)> {
    let bad = || io::Error::other(format!("unexpected reply to SCAN: {reply:?}"));
    let [cursor, keys] = reply.as_array().ok_or_else(bad)? else {
        return Err(bad());
    };
    let cursor = cursor.as_str().ok_or_else(bad)?.to_owned();
    let keys = keys
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|key| key.as_str().map(str::to_owned).ok_or_else(bad))
        .collect::<io::Result<Vec<_>>>()?;
    Ok((cursor, keys))
}

fn is_log(name: &std::ffi::OsStr) -> bool {
    name == LOG_FILE || name == STDERR_FILE
}

/// Copies `from` into `to` recursively, skipping the server's log files.
fn copy_data(from: &Path, to: &Path) -> io::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        if is_log(&entry.file_name()) {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            fs::create_dir_all(&target)?;
            copy_data(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::Persistence;

    #[test]
    fn restart_from_snapshot_forgets_later_writes() {
        let node = RedisNode::start_with(Persistence::AofAlways).unwrap();
        node.set("counter", "10").unwrap();
        let snapshot = node.snapshot().unwrap();
        node.set("counter", "11").unwrap();
        node.set("lock", "x").unwrap();
        assert!(node.restore(&snapshot).is_err(), "running node");

        node.restart_from(&snapshot).unwrap();
        assert_eq!(node.get("counter").unwrap().as_deref(), Some("10"));
        assert_eq!(node.get("lock").unwrap(), None);
        // Logs stay where they were.
        assert!(node.data_dir().join(LOG_FILE).exists());
    }

    #[test]
    fn delayed_restart_keeps_the_node_down_for_the_delay() {
        let node = RedisNode::start().unwrap();
        node.set("k", "v").unwrap();
        let started = Instant::now();
        node.restart_after(Duration::from_millis(150)).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!(node.get("k").unwrap(), None);
    }

    #[test]
    fn clock_jump_expires_keys_with_a_ttl_only() {
        let node = RedisNode::start().unwrap();
        node.query(&["SET", "lock:a", "x", "PX", "60000"]).unwrap();
        node.query(&["SET", "lock:b", "y", "PX", "60000"]).unwrap();
        node.set("lock:a:fence", "7").unwrap();
        node.query(&["SET", "other", "z", "PX", "60000"]).unwrap();
        assert_eq!(node.jump_clock("lock:*").unwrap(), 2);
        let deadline = Instant::now() + Duration::from_secs(2);
        while node.get("lock:a").unwrap().is_some() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(node.get("lock:a").unwrap(), None);
        assert_eq!(node.get("lock:b").unwrap(), None);
        assert_eq!(node.get("lock:a:fence").unwrap().as_deref(), Some("7"));
        assert_eq!(node.get("other").unwrap().as_deref(), Some("z"));
    }

    #[test]
    fn scan_page_rejects_odd_replies() {
        assert!(scan_page(&Reply::Nil).is_err());
        let page = Reply::Array(vec![
            Reply::Bulk("0".into()),
            Reply::Array(vec![Reply::Bulk("k".into())]),
        ]);
        assert_eq!(
            scan_page(&page).unwrap(),
            ("0".to_owned(), vec!["k".to_owned()])
        );
    }
}
