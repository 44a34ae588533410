//! The chaos suite: K clients contend for a few resources through their own proxies while a
//! seeded nemesis pauses, kills, restarts, delays and partitions nodes; a pure checker then
//! judges the recorded history (DESIGN.md §6, correctness.md §7). See `docs/chaos.md`.
//!
//! - `checker`: P1–P6 over a history, with unit tests on hand-made good and bad histories.
//! - `safe`: random scenarios S0–S8 that must pass; `stale`: S10 and U4; `controls`: the
//!   negative controls U1–U6 (and U1+), which the checker must catch.
//!
//! `REDLOCK_CHAOS_SEED` reproduces a schedule, `REDLOCK_CHAOS_SECS` sets the seconds per random
//! scenario (6 by default: the quick profile), `REDLOCK_CHAOS_DUMP=1` keeps every history in
//! `target/chaos/` (failing runs always write theirs).

mod checker;
mod controls;
mod history;
mod nemesis;
mod safe;
mod scenario;
mod stale;
mod store;
mod workload;
