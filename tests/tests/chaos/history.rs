//! The history of a chaos run: every lock operation and store access, stamped on one clock.
//!
//! All clients run in this process, so a single monotonic clock (`Instant`, as nanoseconds
//! since the run's base) orders everything; the checker can compare intervals directly instead
//! of searching for a linearization. Operations are recorded once they complete, with both
//! their invoke and return times; one that never returned within its guard is a `Hang`.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Nanoseconds since the history's base instant.
pub(crate) type Nanos = u64;

/// How a lock operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// Granted, extended or released.
    Ok,
    /// Someone else holds the lock.
    Contended,
    /// Too few nodes answered.
    Unavailable,
    /// The validity ran out before the operation finished.
    Expired,
    /// Any other error.
    Failed,
    /// The call did not return within its guard and was dropped.
    Hang,
}

/// One acquisition attempt (`lock`/`try_lock`, retries included).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Acquire {
    /// Id of this acquisition; extensions, releases and writes refer to it.
    pub(crate) acq: u64,
    pub(crate) client: usize,
    pub(crate) resource: String,
    pub(crate) t_invoke: Nanos,
    pub(crate) t_return: Nanos,
    pub(crate) outcome: Outcome,
    /// `ttl - drift` as the library computes it: a deadline is `T1 + lease`.
    pub(crate) lease: Nanos,
    pub(crate) deadline: Option<Nanos>,
    pub(crate) token: Option<u64>,
    pub(crate) error: Option<String>,
}

/// One `extend` of a held lock.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Extend {
    pub(crate) acq: u64,
    pub(crate) client: usize,
    pub(crate) resource: String,
    pub(crate) t_invoke: Nanos,
    pub(crate) t_return: Nanos,
    pub(crate) outcome: Outcome,
    pub(crate) lease: Nanos,
    /// The lock's deadline when the extension was invoked.
    pub(crate) old_deadline: Nanos,
    /// The lock's deadline after the call (moved on success, possibly shortened on failure).
    pub(crate) deadline_after: Nanos,
    pub(crate) error: Option<String>,
}

/// One `release` of a held lock.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Release {
    pub(crate) acq: u64,
    pub(crate) client: usize,
    pub(crate) resource: String,
    pub(crate) t_invoke: Nanos,
    pub(crate) t_return: Nanos,
    pub(crate) outcome: Outcome,
    /// The lock's deadline when the release was invoked: it includes extensions made in the
    /// background by auto-extension, which have no record of their own. `None` when unknown.
    pub(crate) deadline: Option<Nanos>,
    pub(crate) lease: Nanos,
    pub(crate) error: Option<String>,
}

/// A read-modify-write of a counter in a store (plain or fenced), recorded under the store's
/// mutex so store times are exact.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Write {
    pub(crate) acq: u64,
    pub(crate) client: usize,
    pub(crate) resource: String,
    /// The fencing token presented (fenced store only).
    pub(crate) token: Option<u64>,
    pub(crate) t_read: Nanos,
    pub(crate) read: u64,
    pub(crate) t_write: Nanos,
    pub(crate) wrote: u64,
    /// Whether the store applied the write (a fenced store rejects stale tokens).
    pub(crate) accepted: bool,
}

/// The final value of a counter.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Final {
    pub(crate) resource: String,
    pub(crate) fenced: bool,
    pub(crate) value: u64,
}

/// A fault applied by the nemesis (or a directed script).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Fault {
    pub(crate) t_start: Nanos,
    pub(crate) t_end: Nanos,
    pub(crate) what: String,
    /// The client the fault targets, when it targets one.
    pub(crate) client: Option<usize>,
}

/// One line of the history.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Record {
    Acquire(Acquire),
    Extend(Extend),
    Release(Release),
    PlainWrite(Write),
    FencedWrite(Write),
    Final(Final),
    Fault(Fault),
}

/// Collects records from every client, store and the nemesis.
#[derive(Debug)]
pub(crate) struct Recorder {
    base: Instant,
    records: Mutex<Vec<Record>>,
    next_acq: AtomicU64,
}

impl Recorder {
    pub(crate) fn new() -> Self {
        Recorder {
            base: Instant::now(),
            records: Mutex::new(Vec::new()),
            next_acq: AtomicU64::new(1),
        }
    }

    /// Now, on the history clock.
    pub(crate) fn now(&self) -> Nanos {
        self.at(Instant::now())
    }

    /// An instant on the history clock (instants before the base map to 0).
    pub(crate) fn at(&self, instant: Instant) -> Nanos {
        nanos(instant.saturating_duration_since(self.base))
    }

    /// A fresh acquisition id.
    pub(crate) fn next_acq(&self) -> u64 {
        self.next_acq.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn push(&self, record: Record) {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(record);
    }

    /// A copy of every record so far, in recording order.
    pub(crate) fn snapshot(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

pub(crate) fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Writes `records` as JSON lines to `target/chaos/<name>-<seed>.jsonl` and returns the path.
pub(crate) fn dump(name: &str, seed: u64, records: &[Record]) -> io::Result<PathBuf> {
    let dir = target_dir().join("chaos");
    fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}-{seed}.jsonl"));
    let mut text = String::new();
    for record in records {
        let line = serde_json::to_string(record).map_err(io::Error::other)?;
        let _ = writeln!(text, "{line}");
    }
    fs::write(&path, text)?;
    Ok(path)
}

/// `$CARGO_TARGET_DIR`, or the workspace's `target/`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}
