//! The resources the locks protect: in-memory counters updated read-modify-write.
//!
//! The plain store trusts whoever calls it, as most resources do. The fenced store takes the
//! lock's fencing token on every read and write and rejects any token below the largest it has
//! seen, so a holder that was paused past its deadline cannot overwrite its successor's work.
//! Both record each write into the history while holding their mutex, so the times of store
//! accesses are exact and totally ordered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::history::{Final, Record, Recorder, Write};

/// Who is writing: the acquisition and client of the lock held.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Holder {
    pub(crate) acq: u64,
    pub(crate) client: usize,
}

/// A read that a write will build on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Read {
    pub(crate) value: u64,
    pub(crate) t_read: u64,
}

/// Counters without any check: a lost update here is a mutual-exclusion failure made visible.
#[derive(Debug)]
pub(crate) struct PlainStore {
    recorder: Arc<Recorder>,
    values: Mutex<HashMap<String, u64>>,
}

impl PlainStore {
    pub(crate) fn new(recorder: Arc<Recorder>) -> Self {
        PlainStore {
            recorder,
            values: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn read(&self, resource: &str) -> Read {
        let values = lock(&self.values);
        Read {
            value: values.get(resource).copied().unwrap_or(0),
            t_read: self.recorder.now(),
        }
    }

    /// Writes `read.value + 1`.
    pub(crate) fn write(&self, holder: Holder, resource: &str, read: Read) {
        let mut values = lock(&self.values);
        values.insert(resource.to_owned(), read.value + 1);
        self.recorder.push(Record::PlainWrite(Write {
            acq: holder.acq,
            client: holder.client,
            resource: resource.to_owned(),
            token: None,
            t_read: read.t_read,
            read: read.value,
            t_write: self.recorder.now(),
            wrote: read.value + 1,
            accepted: true,
        }));
    }

    /// Records the final value of every counter.
    pub(crate) fn finish(&self) {
        for (resource, value) in lock(&self.values).iter() {
            self.recorder.push(Record::Final(Final {
                resource: resource.clone(),
                fenced: false,
                value: *value,
            }));
        }
    }
}

/// Counters that accept a read or write only with a token at least as large as any seen.
#[derive(Debug)]
pub(crate) struct FencedStore {
    recorder: Arc<Recorder>,
    /// Per resource: the value and the largest token seen.
    values: Mutex<HashMap<String, (u64, u64)>>,
}

impl FencedStore {
    pub(crate) fn new(recorder: Arc<Recorder>) -> Self {
        FencedStore {
            recorder,
            values: Mutex::new(HashMap::new()),
        }
    }

    /// Reads with `token`; `None` when a larger token was already seen. The token is remembered,
    /// so a holder with a smaller one can no longer write.
    pub(crate) fn read(&self, resource: &str, token: u64) -> Option<Read> {
        let mut values = lock(&self.values);
        let entry = values.entry(resource.to_owned()).or_insert((0, 0));
        if token < entry.1 {
            return None;
        }
        entry.1 = token;
        Some(Read {
            value: entry.0,
            t_read: self.recorder.now(),
        })
    }

    /// Writes `read.value + 1` if `token` is still the largest seen; returns whether it did.
    pub(crate) fn write(&self, holder: Holder, resource: &str, token: u64, read: Read) -> bool {
        let mut values = lock(&self.values);
        let entry = values.entry(resource.to_owned()).or_insert((0, 0));
        let accepted = token >= entry.1;
        if accepted {
            *entry = (read.value + 1, token);
        }
        self.recorder.push(Record::FencedWrite(Write {
            acq: holder.acq,
            client: holder.client,
            resource: resource.to_owned(),
            token: Some(token),
            t_read: read.t_read,
            read: read.value,
            t_write: self.recorder.now(),
            wrote: read.value + 1,
            accepted,
        }));
        accepted
    }

    /// Records the final value of every counter.
    pub(crate) fn finish(&self) {
        for (resource, (value, _)) in lock(&self.values).iter() {
            self.recorder.push(Record::Final(Final {
                resource: resource.clone(),
                fenced: true,
                value: *value,
            }));
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
