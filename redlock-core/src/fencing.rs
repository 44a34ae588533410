//! Fencing tokens: a two-phase quorum max-register over the nodes.
//!
//! "INCR on every node and take the max of the majority" is not monotonic: with counters
//! 10,10,10,10,50, X locks C,D,E and gets 51, then Y locks A,B,C and gets 12. Instead:
//!
//! 1. Phase 1, one script per node: `SET lock NX PX` and, if it succeeded, read the fence
//!    counter. With a quorum `S1` of successes, the candidate is `t = 1 + max(counters of S1)`.
//! 2. Phase 2, one script per node of `S1`: while the lock key still holds our token, raise the
//!    counter to `max(counter, t)`. A quorum must confirm.
//!
//! Any two quorums share a node, and on that node the two holders owned the lock key in disjoint
//! periods, each publishing its token inside its own period; so a later acquisition always reads
//! at least the earlier token and picks a larger one. Tokens are unique and increase with the
//! real-time order of acquisitions, under any pause, delay or clock jump, **provided the fence
//! counters are never lost**: run the nodes with AOF `appendfsync always`. A delayed restart
//! without persistence protects lock keys (they expire anyway) but not counters, which have no
//! ttl. Counters have no expiry and cost a few bytes per resource.

use std::{fmt, sync::LazyLock};

use bb8_redis::redis::Script;

/// A fencing token: unique per resource and increasing with the real-time order of
/// acquisitions. Compare tokens with `<`; a protected resource rejects a write whose token is
/// below the largest it has accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a raw value (for tests and for resources that store tokens).
    pub fn new(value: u64) -> Self {
        FencingToken(value)
    }

    /// The raw value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<FencingToken> for u64 {
    fn from(token: FencingToken) -> u64 {
        token.0
    }
}

/// The fence key of a lock key. In Redis Cluster or Dragonfly cluster mode, put a hash tag in
/// the resource name (`{orders:42}`) so both keys land in one slot.
pub(crate) fn fence_key(lock_key: &str) -> String {
    format!("{lock_key}:fence")
}

/// Phase 1: `SET lock token NX PX ttl`; on success returns the fence counter (0 when absent),
/// otherwise -1, and for a waiter asking the key's sequencer node sets the key's waiting flag
/// for ARGV[3] ms (see [`waiting_flag`](crate::scripts::waiting_flag)). KEYS: lock, fence, and
/// with ARGV[3] the flag. ARGV: token, ttl in ms, and the flag's lifetime in ms.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"if redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
    return tonumber(redis.call("GET", KEYS[2]) or "0")
end
if ARGV[3] then
    redis.call("SET", KEYS[3], "1", "PX", ARGV[3])
end
return -1"#,
    )
});

/// Phase 2: while the lock key holds our token, `fence = max(fence, t)`; returns 1, else 0.
/// KEYS: lock, fence. ARGV: token, t.
pub(crate) static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"if redis.call("GET", KEYS[1]) == ARGV[1] then
    local t = tonumber(ARGV[2])
    if t > tonumber(redis.call("GET", KEYS[2]) or "0") then
        redis.call("SET", KEYS[2], ARGV[2])
    end
    return 1
end
return 0"#,
    )
});
