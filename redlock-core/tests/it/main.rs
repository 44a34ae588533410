//! Integration tests of redlock-core against real `redis-server` nodes started by the harness.

mod acquire;
mod cancel;
mod durability;
mod extend;
mod faults;
mod fencing;
mod handover;
mod input;
mod lifecycle;
mod many;
mod queue;
mod release;
mod support;
