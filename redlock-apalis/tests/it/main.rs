//! Integration tests of redlock-apalis against real redis-server nodes and a real apalis-redis
//! queue.

mod common;
mod fleet;
mod guard;
mod lost;
mod stall;
