//! Bounding node commands by a deadline with one timer per owner, not one per command.
//!
//! Every command to a node is bounded by the node timeout. Bounding each with a tokio timer of
//! its own costs a timer-wheel registration and removal per command (each under a lock shared
//! with the other workers), six per lock + release on three nodes. Measured on the benchmark's
//! rows B32i and B256i (hundreds of tasks locking at once): without those timers, 3–10 % more
//! cycles per second.
//!
//! So the commands of an attempt carry no timer. Whoever drives them, the attempt's votes (for
//! its SETs, then its releases) or the background chore that finishes their last release, holds
//! one [`Timer`], armed at the earliest deadline of the commands in flight: the commands sent
//! together share one, so it is armed once per phase. When it fires, the driver gives up the
//! commands whose deadline passed, as a per-command timeout would have. The clock is read only
//! then, which, with nodes that answer, is never. What is left costs no more than measuring can
//! tell: a throwaway build with no timer at all (nothing bounded) made 0.93, 0.93 and 0.91× the
//! floor in row B256i against 0.88, 0.92 and 0.92× for this one, in alternated runs.

use std::{
    future::{Future, poll_fn},
    pin::{Pin, pin},
    task::{Context, Poll},
};

use tokio::time::{Instant, Sleep};

/// One timer for the commands one owner drives, armed at the earliest of their deadlines.
/// Allocated at its first use, then moved along with what it drives (an attempt's votes hand it
/// to the background chore that finishes their last release).
#[derive(Default)]
pub(crate) struct Timer {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Timer {
    /// Polls `step` until it is ready, waking at each deadline it names. `step` is given the
    /// instant up to which deadlines have passed (`None` until the timer fired); it polls what
    /// it drives and returns its output (a command given up counts as one), or the earliest
    /// deadline after that instant among the commands still in flight (`Err(None)`: none has
    /// one, and whatever is in flight wakes `step` by itself).
    ///
    /// A driver gives up every command whose deadline passed, so each wake-up names a strictly
    /// later deadline than the one before: this always ends.
    pub(crate) fn poll_woken<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut step: impl FnMut(&mut Context<'_>, Option<Instant>) -> Result<T, Option<Instant>>,
    ) -> Poll<T> {
        let mut passed = None;
        loop {
            match step(cx, passed) {
                Ok(output) => return Poll::Ready(output),
                Err(None) => return Poll::Pending,
                Err(Some(wake)) => {
                    if self.poll_at(wake, cx).is_pending() {
                        return Poll::Pending;
                    }
                    passed = Some(Instant::now());
                }
            }
        }
    }

    /// Arms the timer at `wake` (unless it is already) and polls it.
    fn poll_at(&mut self, wake: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if sleep.deadline() != wake {
                    sleep.as_mut().reset(wake);
                }
                sleep
            }
            none => none.insert(Box::pin(tokio::time::sleep_until(wake))),
        };
        sleep.as_mut().poll(cx)
    }

    /// Awaits `work` until `until` (none: for as long as it takes, `work` bounds itself);
    /// `None` if it had not finished by then.
    pub(crate) async fn drive<F: Future>(
        &mut self,
        until: Option<Instant>,
        work: F,
    ) -> Option<F::Output> {
        let mut work = pin!(work);
        poll_fn(|cx| {
            self.poll_woken(cx, |cx, passed| match work.as_mut().poll(cx) {
                Poll::Ready(output) => Ok(Some(output)),
                Poll::Pending => match until {
                    Some(until) if !is_ahead(until, passed) => Ok(None),
                    until => Err(until),
                },
            })
        })
        .await
    }
}

/// Whether `deadline` is still ahead of `passed`, the instant up to which deadlines have passed
/// (see [`Timer::poll_woken`]).
pub(crate) fn is_ahead(deadline: Instant, passed: Option<Instant>) -> bool {
    passed.is_none_or(|passed| deadline > passed)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Work that never finishes is given up at its deadline, woken by the timer: without the
    /// wake-up it would wait for ever (the test's own bound fails it then).
    #[tokio::test(start_paused = true)]
    async fn silent_work_is_given_up_at_its_deadline() {
        let started = Instant::now();
        let until = started + Duration::from_millis(100);
        let outcome = tokio::time::timeout(
            Duration::from_secs(5),
            Timer::default().drive(Some(until), std::future::pending::<()>()),
        )
        .await;
        assert_eq!(outcome, Ok(None));
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }

    /// Work that finishes first is not given up, and its output comes back.
    #[tokio::test(start_paused = true)]
    async fn work_that_finishes_in_time_keeps_its_output() {
        let until = Instant::now() + Duration::from_millis(100);
        let work = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            7
        };
        assert_eq!(Timer::default().drive(Some(until), work).await, Some(7));
    }

    /// One timer wakes its owner at each deadline in turn, the later ones included, and the
    /// owner gives up each command at its own.
    #[tokio::test(start_paused = true)]
    async fn a_timer_wakes_at_each_deadline_in_turn() {
        let started = Instant::now();
        let deadlines = [
            started + Duration::from_millis(100),
            started + Duration::from_millis(200),
        ];
        let mut given_up: Vec<Duration> = Vec::new();
        let mut timer = Timer::default();
        poll_fn(|cx| {
            timer.poll_woken(cx, |_, passed| {
                for deadline in deadlines {
                    if !is_ahead(deadline, passed) && given_up.len() < 2 {
                        let at = deadline - started;
                        if !given_up.contains(&at) {
                            given_up.push(at);
                        }
                    }
                }
                if given_up.len() == 2 {
                    Ok(())
                } else {
                    Err(deadlines
                        .into_iter()
                        .find(|&deadline| is_ahead(deadline, passed)))
                }
            })
        })
        .await;
        assert_eq!(
            given_up,
            [Duration::from_millis(100), Duration::from_millis(200)]
        );
        assert_eq!(started.elapsed(), Duration::from_millis(200));
    }
}
