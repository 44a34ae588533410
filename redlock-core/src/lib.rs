//! Redlock distributed locks over N independent Redis, Valkey or Dragonfly primaries.
//!
//! A lock is held when a quorum (`N/2 + 1`) of nodes stored our random token with `SET NX PX`
//! within the lease, and only until `T1 + ttl − drift`, where `T1` is read before the first byte
//! is sent. Release and extension are compare-and-delete and compare-and-expire scripts, so a
//! key holding another client's token is never touched. Every network wait has a deadline.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use redlock_core::Redlock;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let redlock = Redlock::builder()
//!     .nodes(["redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003"])
//!     .ttl(Duration::from_secs(10))
//!     .build()?;
//! redlock.connect().await?; // optional: fail fast when no quorum is reachable
//!
//! let lock = redlock.lock("orders:42").await?;
//! println!("held for {:?}", lock.remaining());
//! lock.extend().await?;
//! lock.release().await?;
//!
//! if let Some(lock) = redlock.try_lock("orders:43").await? {
//!     lock.release().await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! Each claim is backed by an integration test in `redlock-core/tests/it` (module::test):
//!
//! - A lock is granted only with a quorum of OK votes and while validity remains; its deadline
//!   is `T1 + ttl − drift` with `T1` read before the first send
//!   (`acquire::deadline_is_anchored_before_the_first_send`,
//!   `acquire::slow_acquisition_without_enough_validity_is_refused_and_undone`).
//! - Every attempt, retries of one call included, sends a fresh 128-bit token
//!   (`acquire::every_acquisition_stores_a_fresh_128_bit_token`,
//!   `acquire::every_attempt_of_one_call_sends_its_own_token`).
//! - The vote is decided as soon as its outcome is known, without waiting for a frozen node,
//!   granted or denied (`acquire::quorum_decides_without_waiting_for_a_frozen_node`,
//!   `acquire::denial_is_decided_without_waiting_for_a_frozen_node`); `release` returns once a
//!   quorum deleted our token and finishes the other nodes in the background
//!   (`release::release_returns_at_quorum_and_finishes_the_last_node_in_the_background`).
//! - Two clients never hold the same resource at once while the nodes keep their keys
//!   (`acquire::concurrent_clients_never_overlap`, `acquire::local_waiters_queue_fairly_and_never_overlap`).
//! - A failed attempt releases every node it may have reached, including nodes that timed
//!   out, each behind its own SET (`faults::paused_minority_leaves_no_orphan_key`,
//!   `acquire::contended_attempt_leaves_none_of_our_keys`).
//! - Release and extension never touch a key holding another token, and an expired lock is
//!   never resurrected (`release::release_leaves_a_key_held_by_another_token`,
//!   `extend::extend_never_recreates_a_missing_key`,
//!   `extend::extend_after_the_deadline_fails_and_creates_nothing`); both survive `SCRIPT FLUSH`
//!   and node restarts (`release::release_and_extend_survive_*`). A failed extension keeps the
//!   old deadline, or the sooner expiry its nodes applied
//!   (`extend::a_failed_shorter_extension_shortens_the_deadline`). Every key a script touches
//!   is declared in `KEYS`, as Dragonfly requires (unit test
//!   `scripts::tests::every_key_a_script_touches_is_declared`).
//! - Dropping a `lock()` future at any point, or a `Lock`, leaves no key behind
//!   (`cancel::dropped_acquisitions_leave_no_keys`, `cancel::dropped_lock_is_released_in_the_background`).
//! - A minority of nodes down or paused costs at most the node timeout; a majority down fails
//!   fast with per-node errors and never hangs (`faults::*`); a node that answers a SET with an
//!   error is a failed vote, reported with its answer
//!   (`faults::a_node_refusing_writes_is_a_failed_vote`).
//! - [`Lock::lost`] fires at the deadline even with every node frozen; [`Redlock::run`] drops
//!   the work when the lock is lost, releases on every exit path including panics, and
//!   auto-extension holds a lock for ten ttls and stops at `max_hold` (`lifecycle::*`).
//! - Time the system spends suspended counts against a lease, as on the nodes (leases are
//!   measured on `CLOCK_BOOTTIME` on Linux and Android; `Instant` stops during a suspension):
//!   on waking, a lock whose lease ran out is not valid and cannot be extended, `lost()` fires
//!   and `run` drops the work within half a second, and a suspension during an acquisition
//!   counts against its validity (in `redlock-core/tests/suspend`:
//!   `a_lock_whose_lease_ran_out_during_a_suspension_is_not_valid_on_waking`,
//!   `a_shorter_suspension_takes_its_length_off_the_lease`,
//!   `lost_fires_and_run_drops_the_work_soon_after_waking_from_a_long_suspension`,
//!   `a_suspension_during_an_acquisition_counts_against_its_validity`); auto-extension extends
//!   on waking while the lease lasts
//!   (`a_waiting_watchdog_is_woken_by_a_suspension_and_extends_in_time`), and never later than
//!   half the lease left (`a_watchdog_started_after_a_suspension_extends_within_half_the_lease_left`).
//!   Windows' `Instant`
//!   counts sleep itself; on macOS and the BSDs a suspension is not seen.
//! - Fencing tokens strictly increase across holders whose majorities differ, including the
//!   counterexample that breaks "INCR and take the max", and after a clock jump on a majority
//!   let a second holder in (`fencing::*`,
//!   `fencing::a_clock_jump_on_a_majority_never_reorders_fencing_tokens`).
//! - `lock_many` is all or nothing (`many::*`).
//! - The quorum is `N/2 + 1` and may only be raised; drift is `ttl × factor + 2 ms` (unit tests
//!   `config::quorum_may_only_be_raised_up_to_the_node_count`,
//!   `timing::drift_is_factor_times_ttl_plus_two_ms`).
//! - Contention and unavailability are different errors, and bad input is a typed error before
//!   any network call (`acquire::contended_attempt_leaves_none_of_our_keys`,
//!   `faults::majority_down_fails_fast_as_unavailable`, `input::*`).
//!
//! # Waiting, fairness and renewals
//!
//! Tasks of one process that want the same lock queue in arrival order: only the head of the
//! line talks to the nodes, and a release (or a dropped lock) hands the lock to the next task at
//! once, as soon as its deletes are sent and ahead of that task's SETs on each connection
//! (`acquire::a_release_hands_over_to_a_local_waiter_before_its_replies_come_back`,
//! `acquire::a_dropped_lock_hands_over_to_a_local_waiter_behind_its_deletes`); the lock still
//! leaves the nodes in between, so other processes get their turn
//! (`queue::local_hand_overs_do_not_starve_a_waiter_in_another_process`). Across processes, a
//! waiter joins the lock's wait queue on its sequencer node, which then grants the key only in
//! turn; the release of a lock that was itself taken through the queue hands the key over on
//! that node to the waiter whose turn it is (to a token the waiter registered when it joined)
//! and tells only that waiter, which asks the other nodes alone (an uncontended lock's release
//! wakes that waiter, which asks every node), so waiters are served in arrival order and a
//! release wakes one process, not all of them (`queue::*`,
//! `queue::a_release_wakes_only_the_waiter_in_turn`,
//! `queue::a_release_hands_the_key_over_to_the_waiter_in_turn_on_its_sequencer_node`). A handed
//! lock counts its validity from the waiter's last ask that node saw
//! (`queue::a_handed_over_lock_counts_its_validity_from_the_registration`,
//! `queue::a_waiter_in_line_longer_than_its_ttl_still_takes_the_hand_over`); a waiter that missed
//! the message takes the key at its next ask, and one that gives up frees it
//! (`queue::a_waiter_that_missed_its_hand_over_takes_it_when_it_asks_again`,
//! `queue::a_waiter_cancelled_after_its_hand_over_frees_the_key`). A waiter that died in line is
//! passed over once its lease runs out: a release neither hands it the key nor spends its wake-up
//! on it (`queue::a_release_skips_a_dead_waiter_and_hands_over_to_the_next`,
//! `queue::an_uncontended_release_wakes_the_live_waiter_behind_a_dead_one`,
//! `queue::a_dead_waiter_loses_its_place_when_its_lease_runs_out`). The loser of a split vote that
//! won the sequencer node, where the holder then holds nothing, is woken by the holder's release
//! all the same (`queue::the_loser_of_a_split_vote_is_woken_by_the_winners_release`). While the
//! lock stays contended, a holder that was handed the key also learns who is next, and its
//! release hands the key over to that waiter on every node where it still holds its own token:
//! the waiter
//! holds on the sequencer's notice plus enough other nodes' for a quorum, one trip after the
//! release, without a SET of its own (`handover::a_release_hands_the_key_over_on_every_node_in_one_trip`),
//! its validity counted from the ask of its that the holder named
//! (`handover::a_successor_counts_its_validity_from_the_ask_the_holder_named`);
//! a successor is named only within the lease it had left
//! (`handover::a_holder_does_not_name_a_successor_whose_lease_may_have_run_out`), one that left
//! leaves tombstones that turn the hand-over into a delete
//! (`handover::a_named_successor_that_left_is_not_handed_the_key`), and one that hears only the
//! sequencer claims the other nodes (`handover::a_successor_deaf_to_the_other_nodes_claims_them`).
//! The queue only orders who asks first: a lock still needs a quorum of nodes holding its token,
//! each set by an atomic compare on that node. A node down other than the sequencer changes none
//! of this: a waiter that heard "held" from any node stands in line
//! (`queue::a_dead_node_elsewhere_leaves_waiters_in_line`), one whose turn came asks the nodes
//! the release has not reached yet again without waiting for a dead or paused one
//! (`queue::a_waiter_in_turn_asks_a_late_node_again_while_another_is_paused`), and a paused node
//! does not hold up a waiter's subscriptions
//! (`handover::a_waiter_does_not_wait_for_a_paused_node_to_listen`). With the sequencer itself
//! down or paused nobody can stand in line, and the client's waiters ask every node at once for
//! a while (`queue::a_paused_sequencer_node_costs_a_waiter_no_node_timeout_per_ask`,
//! `queue::a_client_remembers_a_paused_sequencer_node_for_its_next_wait`). A waiter granted
//! around the line leaves it, which frees the key there if the sequencer, once it answers, hands
//! it over to the waiter's token (`queue::a_waiter_granted_around_a_paused_sequencer_leaves_its_line`,
//! `queue::a_waiter_granted_after_its_ask_met_a_paused_sequencer_leaves_no_key_there`), and
//! leaving is tried again while it gets no answer (`queue::a_leave_that_gets_no_answer_is_tried_again`).
//! The retry pause is only a fallback bound.
//! Auto-extended locks are renewed in batches of up to 100 per node and script call.
//!
//! # Fencing
//!
//! Without fencing tokens, Redlock is an *efficiency* lock: a holder paused past its deadline
//! (GC, swap, a stopped VM) can still act after someone else took the lock. With
//! [`fencing`](RedlockBuilder::fencing) enabled, every lock carries a [`FencingToken`] from a
//! two-phase quorum max-register: phase 1 sets the lock key and reads `{key}:fence` on each node
//! in one script; the candidate is one more than the largest counter of the granting quorum;
//! phase 2 writes it back, on each of those nodes that still holds our token, and needs a quorum
//! again. Any two quorums share a node, where the two holders owned the key in disjoint periods,
//! so tokens are unique and increase with the real-time order of acquisitions, under any pause,
//! delay or clock jump, **provided fence counters are never lost**: run the nodes with AOF
//! `appendfsync always`. A delayed restart without persistence protects lock keys, which expire
//! anyway, but not counters, which have no ttl. A resource that rejects writes carrying a token
//! lower than one it has accepted is then safe from stale holders (see the `fencing` example).
//!
//! # Operational contract
//!
//! Independent primaries with no failover behind an endpoint; clocks that slew and never step;
//! nodes that either persist with `appendfsync always` or stay down for a ttl after a crash.
//! [`Redlock::durability`] reports what each node says about its persistence, and
//! [`Redlock::connect`] warns, when fencing is on, about each node that may lose its fence
//! counters in a crash.
//!
//! # Feature flags
//!
//! - `serde`: `Serialize`/`Deserialize` for [`RedlockConfig`] and [`Retry`] (humantime durations).
//! - `tls`: `rediss://` node URLs through redis-rs and rustls.
//! - `metrics`: counters and histograms through the [`metrics`](https://docs.rs/metrics) crate:
//!   `redlock_acquire_total{outcome}`, `redlock_acquire_seconds{outcome}`,
//!   `redlock_extend_total{outcome}`, `redlock_extend_lag_seconds`, `redlock_lost_total`.
//! - `test-util`: `test_util::simulate_suspend`, a suspension of the system simulated for
//!   tests of code that must stop when its lock expires while the machine sleeps.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod builder;
mod clock;
mod config;
mod durability;
mod error;
mod expiry;
mod fencing;
mod finisher;
mod handover;
mod load;
mod local;
mod lock;
mod lost;
mod node;
mod notify;
mod redlock;
mod renewer;
mod retry;
mod scoped;
mod scripts;
mod silence;
mod telemetry;
mod timing;
mod token;
mod votes;
mod watchdog;

pub use bb8_redis::{RedisConnectionManager, bb8, redis};
pub use builder::RedlockBuilder;
pub use config::{MAX_TTL, RedlockConfig};
pub use durability::{Durability, NodeDurability};
pub use error::{Error, NodeError, NodeErrorKind, Result};
pub use fencing::FencingToken;
pub use lock::{Lock, LockHandle, Release};
pub use lost::LockLost;
pub use redlock::{LockOptions, Redlock};
pub use retry::Retry;
pub use watchdog::AutoExtend;

/// Helpers for testing code that uses locks (feature `test-util`).
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod test_util {
    pub use crate::clock::simulate_suspend;
}
