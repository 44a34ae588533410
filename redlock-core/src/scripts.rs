//! The Lua scripts that make release and extension owner-only.
//!
//! Each is sent as `EVALSHA`; a node that answers NOSCRIPT (it restarted, or someone ran
//! `SCRIPT FLUSH`) gets the call again as `EVAL` with the body, which also caches the script
//! there ([`Node`](crate::node::Node) does this). Every key a script touches is passed in KEYS,
//! which Dragonfly requires and Redis Cluster needs for routing.

use std::sync::LazyLock;

use bb8_redis::redis::Script;

/// A Lua script: its body and the SHA1 `EVALSHA` names it by.
pub(crate) struct Lua {
    pub(crate) body: &'static str,
    pub(crate) hash: String,
}

impl Lua {
    fn new(body: &'static str) -> Lua {
        Lua {
            body,
            hash: Script::new(body).get_hash().to_owned(),
        }
    }
}

/// Compare-and-delete: deletes each key only while it still holds our token, so a lock that
/// expired and was taken by someone else is never released by us, and announces each deletion
/// on `<key>:released` for waiters in other processes ([`notify`](crate::notify)) when ARGV[2] is
/// "1" (a held lock's release; the cleanup of a failed attempt stays quiet, or the waiter would
/// wake itself). Returns how many keys it deleted.
pub(crate) static RELEASE: LazyLock<Lua> = LazyLock::new(|| Lua::new(RELEASE_LUA));

/// The body of [`RELEASE`], for the one place that must send it with `EVAL`: releasing behind a
/// SET whose reply never came. That release may also never be answered in time, and EVALSHA's
/// NOSCRIPT fallback only happens when the client reads the reply; a node that resumes with an
/// empty script cache would then drop the release and keep the orphan key.
pub(crate) const RELEASE_LUA: &str = r#"local n = 0
for i = 1, #KEYS do
    if redis.call("GET", KEYS[i]) == ARGV[1] then
        n = n + redis.call("DEL", KEYS[i])
        if ARGV[2] == "1" then
            redis.call("PUBLISH", KEYS[i] .. ":released", "")
        end
    end
end
return n"#;

/// All-or-nothing acquisition of several keys ([`Redlock::lock_many`](crate::Redlock::lock_many)):
/// sets every key to our token with the ttl only if none of them exists. Returns 1 or 0.
pub(crate) static ACQUIRE_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"for i = 1, #KEYS do
    if redis.call("EXISTS", KEYS[i]) == 1 then
        return 0
    end
end
for i = 1, #KEYS do
    redis.call("SET", KEYS[i], ARGV[1], "PX", ARGV[2])
end
return 1"#,
    )
});

/// Compare-and-extend: resets the expiry only while every key holds our token. A missing key is
/// never created again, so an expired lock cannot be resurrected. Returns 1 or 0.
pub(crate) static EXTEND: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r#"for i = 1, #KEYS do
    if redis.call("GET", KEYS[i]) ~= ARGV[1] then
        return 0
    end
end
for i = 1, #KEYS do
    redis.call("PEXPIRE", KEYS[i], ARGV[2])
end
return 1"#,
    )
});

/// Compare-and-extend for a batch of single-key locks: KEYS are the keys, ARGV the ttl in ms
/// followed by each key's token. Extends each key that still holds its token and returns one
/// 1 or 0 per key, in order ([`renewer`](crate::renewer)).
pub(crate) static EXTEND_BATCH: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r#"local out = {}
for i = 1, #KEYS do
    if redis.call("GET", KEYS[i]) == ARGV[i + 1] then
        redis.call("PEXPIRE", KEYS[i], ARGV[1])
        out[i] = 1
    else
        out[i] = 0
    end
end
return out"#,
    )
});
