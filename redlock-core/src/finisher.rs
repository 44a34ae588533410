//! Finishes node work that no caller waits for: the releases of straggling nodes once a release
//! has its quorum, and whatever a dropped or failed attempt left in flight.
//!
//! One background task per client drives all of them at once, instead of one task per release:
//! handing work over is a channel send, and replies that arrive together are handled in one
//! wake-up. The task ends as soon as it has nothing left to do, and the next hand-over starts a
//! new one on the caller's runtime, so an idle client keeps no task alive and a client used from
//! several runtimes never hands work to one that is not running.

use std::{
    future::{Future, poll_fn},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::Poll,
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tracing::{Instrument, debug_span, warn};

/// A piece of node work to finish: it reports its own outcome (a trace line) when it is done.
pub(crate) type Chore = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The hand-over point to the client's background task.
#[derive(Default)]
pub(crate) struct Finisher {
    /// The running task's inbox; `None` when no task runs.
    inbox: Arc<Mutex<Option<UnboundedSender<Chore>>>>,
}

impl Finisher {
    /// Runs `chore` to completion in the background. Needs a tokio runtime; without one the
    /// chore is dropped (the keys it would have released expire by their ttl).
    pub(crate) fn hand(&self, chore: Chore) {
        let mut inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
        let chore = match inbox.as_ref() {
            Some(sender) => match sender.send(chore) {
                Ok(()) => return,
                // The task's runtime shut down under it: start another one.
                Err(mpsc::error::SendError(chore)) => chore,
            },
            None => chore,
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!("no tokio runtime: lock keys are left to expire by their ttl");
            return;
        };
        let (sender, receiver) = mpsc::unbounded_channel();
        // Cannot fail: the receiver is right here.
        let _ = sender.send(chore);
        *inbox = Some(sender);
        runtime
            .spawn(run(self.inbox.clone(), receiver).instrument(debug_span!("redlock.finisher")));
    }
}

/// The background task: drives every chore handed over until none is left, then closes the
/// inbox and ends.
async fn run(
    inbox: Arc<Mutex<Option<UnboundedSender<Chore>>>>,
    mut receiver: UnboundedReceiver<Chore>,
) {
    let mut chores = FuturesUnordered::new();
    loop {
        poll_fn(|cx| {
            loop {
                while let Poll::Ready(Some(chore)) = receiver.poll_recv(cx) {
                    chores.push(chore);
                }
                match chores.poll_next_unpin(cx) {
                    Poll::Ready(Some(())) => {}
                    // Nothing left, and the inbox was empty when last looked at.
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
        // Close the inbox under its lock, unless a chore came in meanwhile: a hand-over either
        // reaches this task or starts the next one, never neither.
        let mut open = inbox.lock().unwrap_or_else(PoisonError::into_inner);
        match receiver.try_recv() {
            Ok(chore) => chores.push(chore),
            Err(_) => {
                *open = None;
                return;
            }
        }
    }
}
