//! Batched renewal: many auto-extended locks share one extension script call per node.
//!
//! Each lock's watchdog asks the renewer instead of extending on its own. The renewer gathers
//! requests for a few milliseconds (or until a batch is full), then sends one script per node
//! that extends every key of the batch that still holds its token. 10,000 held locks thus cost
//! about 100 script calls per node per renewal period instead of 10,000. Every lock's extension
//! keeps the exact rules of [`Lock::extend_by`](crate::Lock::extend_by): its own `T1'` (taken
//! before the batch is sent), a quorum, and completion before its current deadline.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::Duration,
};

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, debug_span};

use crate::{clock::LeaseInstant, error::Result, lock::LockState};

/// Most locks per script call (Redisson uses 100 too).
pub(crate) const BATCH: usize = 100;

/// How long the renewer waits for more requests before sending a batch: far below any ttl/3.
const WINDOW: Duration = Duration::from_millis(5);

struct Request {
    state: Arc<LockState>,
    ttl: Duration,
    reply: oneshot::Sender<Result<LeaseInstant>>,
}

/// The renewal queue of one `Redlock`; its task starts on first use and ends with the handle.
#[derive(Default)]
pub(crate) struct Renewer {
    tx: OnceLock<mpsc::UnboundedSender<Request>>,
}

impl std::fmt::Debug for Renewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewer")
            .field("started", &self.tx.get().is_some())
            .finish()
    }
}

impl Renewer {
    /// Extends `state` by `ttl`, in a batch when it can (single-key locks on a running tokio
    /// runtime), directly otherwise.
    pub(crate) async fn extend(
        &self,
        state: Arc<LockState>,
        ttl: Duration,
    ) -> Result<LeaseInstant> {
        // The direct path is boxed: every auto-extended lock's watchdog task embeds this future,
        // and the direct extension's state is large and rarely needed.
        if state.single_key().is_none() {
            return Box::pin(state.extend_by(ttl)).await;
        }
        let Some(tx) = self.sender() else {
            return Box::pin(state.extend_by(ttl)).await;
        };
        let (reply, rx) = oneshot::channel();
        let request = Request {
            state: state.clone(),
            ttl,
            reply,
        };
        if tx.send(request).is_err() {
            return Box::pin(state.extend_by(ttl)).await;
        }
        match rx.await {
            Ok(result) => result,
            // The renewer's runtime is gone: do it here.
            Err(_) => Box::pin(state.extend_by(ttl)).await,
        }
    }

    fn sender(&self) -> Option<&mpsc::UnboundedSender<Request>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            runtime.spawn(run(rx).instrument(debug_span!("redlock.renewer")));
            tx
        });
        (!tx.is_closed()).then_some(tx)
    }
}

/// Gathers requests into batches until every sender is gone.
async fn run(mut rx: mpsc::UnboundedReceiver<Request>) {
    while let Some(first) = rx.recv().await {
        let mut pending = vec![first];
        let until = tokio::time::Instant::now() + WINDOW;
        while pending.len() < BATCH {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(request)) => pending.push(request),
                Ok(None) | Err(_) => break,
            }
        }
        let mut by_ttl: HashMap<Duration, Vec<Request>> = HashMap::new();
        for request in pending {
            by_ttl.entry(request.ttl).or_default().push(request);
        }
        for (ttl, requests) in by_ttl {
            // Batches run concurrently: one slow node must not delay the next batch.
            tokio::spawn(extend_batch(requests, ttl));
        }
    }
}

/// One script call per node for the whole batch, then each lock's own verdict.
async fn extend_batch(requests: Vec<Request>, ttl: Duration) {
    let t1 = LeaseInstant::now();
    let mut live = Vec::with_capacity(requests.len());
    for request in requests {
        match request.state.extension_start(ttl, t1) {
            Ok(old_deadline) => live.push((request, old_deadline)),
            Err(e) => {
                let _ = request.reply.send(Err(e));
            }
        }
    }
    let Some((first, _)) = live.first() else {
        return;
    };
    let shared = first.state.shared.clone();
    let (keys, tokens): (Vec<&str>, Vec<&str>) = live
        .iter()
        .filter_map(|(r, _)| r.state.single_key())
        .unzip();
    let results = join_all(shared.nodes.iter().map(|node| async {
        node.extend_batch(&keys, &tokens, ttl)
            .await
            .map_err(|kind| node.error(kind))
    }))
    .await;
    for (index, (request, old_deadline)) in live.into_iter().enumerate() {
        let mut extended = 0;
        let mut failures = Vec::new();
        for result in &results {
            match result {
                Ok(flags) if flags.get(index) == Some(&true) => extended += 1,
                Ok(_) => {}
                Err(e) => failures.push(e.clone()),
            }
        }
        let verdict = request
            .state
            .extension_end(t1, old_deadline, ttl, extended, failures);
        let _ = request.reply.send(verdict);
    }
}
