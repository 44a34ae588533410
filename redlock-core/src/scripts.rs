//! The Lua scripts that make release and extension owner-only.
//!
//! Each is sent as EVALSHA by [`redis::Script`]; a node that answers NOSCRIPT (it restarted, or
//! someone ran `SCRIPT FLUSH`) gets the body loaded and the call retried. Every key a script
//! touches is passed in KEYS, which Dragonfly requires and Redis Cluster needs for routing.

use std::sync::LazyLock;

use bb8_redis::redis::Script;

/// Compare-and-delete: deletes the key only while it still holds our token, so a lock that
/// expired and was taken by someone else is never released by us. Returns 1 or 0.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));

/// The body of [`RELEASE`], for the one place that must send it with `EVAL`: releasing behind a
/// SET whose reply never came. That release may also never be answered in time, and EVALSHA's
/// NOSCRIPT fallback only happens when the client reads the reply; a node that resumes with an
/// empty script cache would then drop the release and keep the orphan key.
pub(crate) const RELEASE_LUA: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0"#;

/// Compare-and-extend: resets the expiry only while the key holds our token. A missing key is
/// never created again, so an expired lock cannot be resurrected. Returns 1 or 0.
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0"#,
    )
});
