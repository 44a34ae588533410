//! The Lua scripts that make release and extension owner-only.
//!
//! Each is sent as `EVALSHA`; a node that answers NOSCRIPT (it restarted, or someone ran
//! `SCRIPT FLUSH`) gets the call again as `EVAL` with the body, which also caches the script
//! there ([`Node`](crate::node::Node) does this). Every key a script touches is passed in KEYS,
//! which Dragonfly requires and Redis Cluster needs for routing.

use std::{io::Write, sync::LazyLock};

use bb8_redis::redis::{Cmd, RedisWrite, Script, ToRedisArgs};

/// The Lua `clock()` the queue's scripts share: the node's time in ms (`TIME`, read once per
/// call and only if needed), or, where a script sees no clock (Dragonfly answers `TIME` with
/// zeros inside scripts), the caller's wall clock from `ARGV[caller_clock]`, which the script
/// declares first. A macro, so that each script stays one `&'static str` built by `concat!`.
macro_rules! node_clock_lua {
    () => {
        r#"local now = nil
local function clock()
    if not now then
        local t = redis.call("TIME")
        now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        if now == 0 then
            now = tonumber(ARGV[caller_clock])
        end
    end
    return now
end
"#
    };
}

/// The Lua `live_head(me)` of the scripts that look at the head of the line (KEYS[2], entries in
/// KEYS[3]) without taking it: drops waiters whose lease ran out from the head, stopping at `me`
/// (an ask never drops its own waiter; `nil` for a release), and returns the head then and
/// whether it dropped any. Needs [`node_clock_lua`]'s `clock()` before it.
macro_rules! live_head_lua {
    () => {
        r#"local function live_head(me)
    local head = redis.call("LINDEX", KEYS[2], 0)
    local dropped = false
    while head and head ~= me do
        local entry = redis.call("HGET", KEYS[3], head)
        local lease = entry and tonumber(string.match(entry, "^%d+"))
        if lease and lease > clock() then
            break
        end
        redis.call("LPOP", KEYS[2])
        redis.call("HDEL", KEYS[3], head)
        dropped = true
        head = redis.call("LINDEX", KEYS[2], 0)
    end
    return head, dropped
end
"#
    };
}

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

    /// `EVALSHA <hash>` (`by_hash`) or `EVAL <body>`, sized for the keys and arguments the
    /// caller appends next (`numkeys` first).
    pub(crate) fn command(&self, by_hash: bool) -> Cmd {
        self.command_sized(by_hash, 6, 96)
    }

    /// [`command`](Lua::command) with room for `args` more arguments of `bytes` in all, so
    /// that appending them never grows the command's buffers.
    pub(crate) fn command_sized(&self, by_hash: bool, args: usize, bytes: usize) -> Cmd {
        let (verb, code) = if by_hash {
            ("EVALSHA", self.hash.as_str())
        } else {
            ("EVAL", self.body)
        };
        let mut cmd = Cmd::with_capacity(2 + args, verb.len() + code.len() + bytes);
        cmd.arg(verb).arg(code);
        cmd
    }
}

/// Compare-and-delete: deletes each lock key only while it still holds our token, so a lock
/// that expired and was taken by someone else is never released by us. Returns how many keys it
/// deleted.
///
/// KEYS: the lock keys (a multi-key lock's: a single key's release is [`RELEASE_ONE`],
/// [`RELEASE_UNCONTENDED`] or [`RELEASE_CONTENDED`]). ARGV: the token, the announcement mode, the
/// number of lock keys. When it deleted a key, mode "1" (a held lock's release, on the first
/// key's sequencer node) announces it on `<key>:released` for waiters that listen to every
/// release ([`notify`](crate::notify)); mode "2" (the cleanup of a failed attempt, which must not
/// wake its own waiter) and mode "0" (every other node) announce nothing.
pub(crate) static RELEASE: LazyLock<Lua> = LazyLock::new(|| Lua::new(RELEASE_LUA));

/// The body of [`RELEASE`]. Releases behind a SET whose reply never came are sent with `EVAL`
/// and the body (of whichever release script applies). That release may also never be answered
/// in time, and EVALSHA's NOSCRIPT fallback only happens when the client reads the reply; a node
/// that resumes with an empty script cache would then drop the release and keep the orphan key.
pub(crate) const RELEASE_LUA: &str = r#"local n = tonumber(ARGV[3])
local deleted = 0
for i = 1, n do
    if redis.call("GET", KEYS[i]) == ARGV[1] then
        deleted = deleted + redis.call("DEL", KEYS[i])
        if ARGV[2] == "1" then
            redis.call("PUBLISH", KEYS[i] .. ":released", "")
        end
    end
end
return deleted"#;

/// The release of a single-key lock taken through its wait queue (a contended key), on its
/// sequencer node: compare, then turn to the waiter at the head of the queue, once waiters whose
/// lease ran out are dropped from it (they crashed or stalled: one would be handed a key it never
/// releases). If that waiter registered a token ([`FAIR_ACQUIRE`]), the key is **handed over**
/// to it here: our token is replaced by the waiter's with the waiter's ttl, the waiter
/// taken out of the queue, and the token published on `<key>:released:<waiter>` with the number
/// of the waiter's last ask this node saw (the waiter counts its validity from when it sent that
/// ask), so that the waiter holds this node's vote without asking for it. The key is never free
/// in between, so nobody else is told of this release: a waiter listening to every release
/// could not take the key. Otherwise the key is deleted, mode "1" (a held lock's release)
/// announces it on `<key>:released`, and the head (if any) is woken with an empty message and
/// asks as usual; a mode "1" release that finds nobody in the queue deletes the key's
/// [`waiting_flag`]. Mode "2" (the cleanup of a failed attempt) tells no broadcast listener.
///
/// The head is taken off the list first (`LPOP`) and put back only in the rare case that it
/// is alive but registered no token: the common hand-over is seven calls.
///
/// The hand-over sets the key with `PSETEX` (`SET PX` by another name), which nothing else here
/// calls: `cmdstat_psetex` in `INFO commandstats` counts the hand-overs a node made. Returns 1
/// when our token was there (deleted or replaced).
///
/// **One-trip hand-over.** The notice also says whether the releasing holder named this
/// waiter, with this token, to the other nodes ([`RELEASE_HEIR`]: ARGV[4] and ARGV[5], the
/// successor the holder was told of; `"1"` if so, `"0"` if not), and names the waiter then at
/// the head of the line, if it registered a token and its lease runs: its id, ttl, token, last
/// ask's number and lease left in ms (node clock minus node clock), for the new holder to name
/// at its own release. Notice: `token ask marked [next ttl token ask lease_left]`.
///
/// KEYS: the lock key, the two keys of its [`wait_queue`], its [`waiting_flag`]. ARGV: the
/// token, the mode, the caller's wall clock in ms (for nodes whose scripts see no clock, as in
/// [`FAIR_ACQUIRE`]), the successor's waiter id and token the holder named elsewhere (or "").
pub(crate) static RELEASE_CONTENDED: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(concat!(
        r#"if redis.call("GET", KEYS[1]) ~= ARGV[1] then
    return 0
end
local caller_clock = 3
"#,
        node_clock_lua!(),
        r#"local head = ARGV[2] ~= "0" and redis.call("LPOP", KEYS[2])
while head do
    local entry = redis.call("HGET", KEYS[3], head)
    local lease, ttl, token, ask = nil, nil, nil, nil
    if entry then
        lease, ttl, token, ask = string.match(entry, "^(%d+) (%d+) (%S+) (%d+)$")
        lease = tonumber(lease or entry)
    end
    if lease and lease > clock() then
        if token then
            redis.call("PSETEX", KEYS[1], ttl, token)
            redis.call("HDEL", KEYS[3], head)
            -- Marked when the releasing holder named this waiter to the other nodes too.
            local notice = token .. " " .. ask .. " " .. ((head == ARGV[4] and token == ARGV[5]) and "1" or "0")
            -- The next waiter, for the new holder to name at its own release.
            local next = redis.call("LINDEX", KEYS[2], 0)
            local following = next and redis.call("HGET", KEYS[3], next)
            if following then
                local l, t, r, a = string.match(following, "^(%d+) (%d+) (%S+) (%d+)$")
                if r and tonumber(l) > clock() then
                    notice = notice .. " " .. next .. " " .. t .. " " .. r .. " " .. a .. " " .. (tonumber(l) - clock())
                end
            end
            redis.call("PUBLISH", KEYS[1] .. ":released:" .. head, notice)
            return 1
        end
        -- Alive, but nothing to hand over to: back at the head, and woken below.
        redis.call("LPUSH", KEYS[2], head)
        break
    end
    -- Gone (its lease ran out): it would be handed a key it never releases.
    redis.call("HDEL", KEYS[3], head)
    head = redis.call("LPOP", KEYS[2])
end
redis.call("DEL", KEYS[1])
if ARGV[2] == "1" then
    redis.call("PUBLISH", KEYS[1] .. ":released", "")
end
if head then
    redis.call("PUBLISH", KEYS[1] .. ":released:" .. head, "")
elseif ARGV[2] == "1" then
    redis.call("DEL", KEYS[4])
end
return 1"#
    ))
});

/// The release of a lock taken uncontended, on its key's sequencer node: compare-and-delete,
/// then, only while someone waits (the key's wait queue or its [`waiting_flag`] exists), the
/// wake-ups of [`RELEASE_CONTENDED`] without the hand-over: mode "1" announces the release to
/// every listener to `<key>:released` (and deletes the flag: whoever set it hears this and flags
/// the key again if refused again) and wakes the head of the queue, once waiters whose lease
/// ran out are dropped from it (a dead head would take the wake-up with it, and the live waiter
/// behind it would sleep through its pause); mode "2" wakes the head only. With nobody waiting it
/// costs the node about what [`RELEASE_ONE`] does plus the lookup of two keys. A waiter is in the
/// queue, or has flagged the key, from the moment the node refused it, in the same script, so a
/// release that runs after a refusal always finds it. Returns 1 when it deleted the key.
///
/// **A lock that never held the key here.** In a split vote, another attempt's SET reached this
/// node first and was undone after it lost: the lock holds a quorum elsewhere and nothing here.
/// That attempt's waiter flags the key and listens to every release (see `lock_waiting`). So a
/// mode "1" release that finds the key free (not ours, and nobody's) wakes whoever waits all the
/// same: the lock is free, or about to be. One that finds another token leaves everything alone.
///
/// KEYS: the lock key, the two keys of its [`wait_queue`], its waiting flag. ARGV: the token, the
/// mode, the caller's wall clock in ms (for nodes whose scripts see no clock).
pub(crate) static RELEASE_UNCONTENDED: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(concat!(
        r#"local current = redis.call("GET", KEYS[1])
local ours = current == ARGV[1]
if not ours and (current or ARGV[2] ~= "1") then
    return 0
end
if ours then
    redis.call("DEL", KEYS[1])
end
local caller_clock = 3
"#,
        node_clock_lua!(),
        live_head_lua!(),
        r#"if redis.call("EXISTS", KEYS[2], KEYS[4]) > 0 then
    if ARGV[2] == "1" then
        redis.call("PUBLISH", KEYS[1] .. ":released", "")
        redis.call("DEL", KEYS[4])
    end
    local head = live_head(nil)
    if head then
        redis.call("PUBLISH", KEYS[1] .. ":released:" .. head, "")
    end
end
if ours then
    return 1
end
return 0"#
    ))
});

/// Compare-and-delete of one key that wakes nobody: [`RELEASE`] without its loop and
/// announcements, for every node that is not the key's sequencer. KEYS: the lock key. ARGV: the
/// token. Returns 1 when it deleted the key.
pub(crate) static RELEASE_ONE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r#"if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0"#,
    )
});

/// The release, on a node other than the key's sequencer, of a token registered for a
/// hand-over (a lock a release handed over to its waiter, or such a waiter's token it stops
/// using): the **one-trip hand-over**'s half on those nodes. If the key holds our token: when a
/// successor is named (ARGV[3..]) and has not retired its token (no tombstone, KEYS[3]), the key
/// is set to the successor's token with its ttl (`PSETEX`) and `<successor token> <ask>` is
/// published on `<key>:released:<successor>`, so that the successor holds this node's vote
/// without asking for it; otherwise the key is deleted. If the key does not hold our token, a
/// holder's release may name us and be on its way here (the sequencer told that holder we
/// were next), so a tombstone for our token (KEYS[2], for ARGV[2] ms: as long as such a release
/// can still be sent) makes that release delete the key instead of handing it to us. Even a
/// free key needs one: that holder's SET may still be on its way too (a straggler of a vote
/// decided at the quorum), and its release behind it. Returns 1 when our token was there.
///
/// KEYS: the lock key, our tombstone, the successor's tombstone (when one is named). ARGV: our
/// token, the tombstone's life in ms, then optionally the successor's token, ttl ms, waiter id
/// and ask number.
pub(crate) static RELEASE_HEIR: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r#"if redis.call("GET", KEYS[1]) ~= ARGV[1] then
    redis.call("SET", KEYS[2], "1", "PX", ARGV[2])
    return 0
end
if ARGV[3] and redis.call("EXISTS", KEYS[3]) == 0 then
    redis.call("PSETEX", KEYS[1], ARGV[4], ARGV[3])
    redis.call("PUBLISH", KEYS[1] .. ":released:" .. ARGV[5], ARGV[3] .. " " .. ARGV[6])
    return 1
end
redis.call("DEL", KEYS[1])
return 1"#,
    )
});

/// The tombstone of a registered token on a node other than the key's sequencer
/// ([`RELEASE_HEIR`]): while it lives, a release that names that token as successor deletes
/// the key instead of handing it over.
pub(crate) fn tombstone(lock_key: &str, token: &str) -> String {
    format!("{lock_key}:gone:{token}")
}

/// A waiter's SET of its registered token on the nodes other than the sequencer, once the
/// sequencer handed the key over to it: `SET NX PX`, or, where a release already handed the key
/// to that token ([`RELEASE_HEIR`], whose notice did not arrive), a fresh expiry of ttl, so that
/// the key lives at least a ttl from when this was sent, like a SET. Returns 1 if the key now
/// holds our token, 0 if someone else holds it. KEYS: the lock key. ARGV: token, ttl ms.
pub(crate) static CLAIM: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r#"if redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
    return 1
end
if redis.call("GET", KEYS[1]) == ARGV[1] then
    redis.call("PEXPIRE", KEYS[1], ARGV[2])
    return 1
end
return 0"#,
    )
});

/// The wait queue of a lock key on its sequencer node: a list of waiter ids in arrival order,
/// `<key>:line`, and a hash of their entries, `<key>:line:entries`: each waiter's lease (server
/// time in ms), followed, when it registered a token for a hand-over, by `<ttl ms> <token> <ask
/// number>` (see [`RELEASE_CONTENDED`]). One hash rather than one per field spares every ask and
/// every hand-over a call. In Redis Cluster or Dragonfly cluster mode, put a hash tag in the
/// resource name (`{orders:42}`) so they land in the lock key's slot.
///
/// The names differ from those of versions that kept leases and tokens in two hashes
/// (`<key>:queue`, `:queue:leases`, `:queue:heirs`): during a rolling upgrade each version keeps
/// its own line and neither drops the other's waiters as dead. Both still take the lock only by
/// a quorum of `SET NX`; waiters of the other version are woken by their own releases or their
/// retry pause.
pub(crate) fn wait_queue(lock_key: &str) -> [String; 2] {
    [wait_queue_list(lock_key), suffixed(lock_key, LINE_ENTRIES)]
}

/// The list of [`wait_queue`]: all an uncontended lock's release needs of it.
pub(crate) fn wait_queue_list(lock_key: &str) -> String {
    suffixed(lock_key, LINE)
}

/// The suffixes of the names of [`wait_queue`] and [`waiting_flag`].
const LINE: &str = ":line";
const LINE_ENTRIES: &str = ":line:entries";
const WAITING: &str = ":queue:waiting";

fn suffixed(lock_key: &str, suffix: &str) -> String {
    let mut name = String::with_capacity(lock_key.len() + suffix.len());
    name.push_str(lock_key);
    name.push_str(suffix);
    name
}

/// A lock key's [`wait_queue`] and [`waiting_flag`], in that order, as three arguments of a
/// command, written into it directly: every release on a key's sequencer node names them, and
/// building them as strings first cost that release five allocations.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueKeys<'a>(pub(crate) &'a str);

impl ToRedisArgs for QueueKeys<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        for suffix in [LINE, LINE_ENTRIES, WAITING] {
            let mut arg = out.writer_for_next_arg();
            // Writing into a command's buffer cannot fail.
            let _ = arg.write_all(self.0.as_bytes());
            let _ = arg.write_all(suffix.as_bytes());
        }
    }

    fn num_of_args(&self) -> usize {
        3
    }
}

/// A string key on the sequencer node that says someone waits for the lock key without standing
/// in its wait queue (fenced and `lock_many` waiters, which listen to every release): such a
/// waiter sets it, for two leases, in the script that refuses it (the acquisition scripts of
/// [`fencing`](crate::fencing) and [`ACQUIRE_MANY`]). The loser of a split vote sets it too
/// (its attempt won the sequencer node, the holder the others, so the holder's release there has
/// no key of its own and only the flag says someone waits). A waiter in the queue needs none, the
/// queue's list says it. The release of an uncontended lock looks both up
/// ([`RELEASE_UNCONTENDED`]) and wakes nobody while neither exists, which spares the node the
/// wake-ups' calls on nearly every release. A release that announces itself to every listener
/// deletes the flag (those it woke set it again if refused again): an uncontended lock's always,
/// a contended lock's ([`RELEASE_CONTENDED`]) when nobody is left in the queue (until then the
/// flag stays: a hand-over leaves the key held and tells nobody else). A flag left behind by a
/// waiter that went away only costs the next release those calls, and never touches a lock.
pub(crate) fn waiting_flag(lock_key: &str) -> String {
    suffixed(lock_key, WAITING)
}

/// A queued waiter's acquisition on the sequencer node: `SET NX PX` only when the key is free and
/// the queue is empty or this waiter is at its head (waiters whose lease ran out are dropped
/// from the head first, and the waiter the turn passes to is woken). While the key is held the
/// queue is left as it is: the release drops those waiters ([`RELEASE_CONTENDED`]), and a new
/// waiter's place is the length of the line it joins (no search of the list). Every ask reads
/// the key once, for both questions: is it free, and was it handed to us.
/// On success the waiter leaves the queue and the script returns 0. If the key already holds
/// the waiter's registered token, ARGV[7] (a release handed it over, see [`RELEASE_CONTENDED`],
/// and the waiter has not heard), it returns -2 and changes nothing: the waiter holds this
/// node's vote for that token. Otherwise, with ARGV[5] = "1", the waiter joins the queue (or
/// renews its lease, and registers ARGV[7] with the ttl and the number of this ask, ARGV[8],
/// for a hand-over when it is not empty) and the script returns its 1-based place; with "0" it
/// returns -1 and leaves no trace (a `try_lock`). A place returned thus also says that the key
/// was not handed over to ARGV[7] when this ask ran.
///
/// Leases are judged by the node's clock (`TIME`); where a script sees no clock (Dragonfly
/// answers `TIME` with zeros inside scripts), by the caller's wall clock, ARGV[6]. Clients whose
/// clocks disagree by more than a lease may then drop a live waiter, who joins again at the end
/// of the line: fairness suffers, never safety.
///
/// KEYS: lock, queue list, entry hash. ARGV: token, ttl ms, waiter id, lease ms, join, the
/// caller's wall clock in ms, the registered token (or ""), the ask's number.
pub(crate) static FAIR_ACQUIRE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(concat!(
        r#"local me = ARGV[3]
local caller_clock = 6
"#,
        node_clock_lua!(),
        live_head_lua!(),
        r#"local current = redis.call("GET", KEYS[1])
local head = nil
local dropped = false
if not current then
    -- Free: waiters whose lease ran out are dropped from the head, then the head (or anyone,
    -- with nobody in line) takes it.
    head, dropped = live_head(me)
    if (not head or head == me) and redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
        if head then
            redis.call("LPOP", KEYS[2])
            redis.call("HDEL", KEYS[3], me)
        end
        return 0
    end
elseif ARGV[7] ~= "" and current == ARGV[7] then
    return -2
end
if ARGV[5] ~= "1" then
    return -1
end
local entry = string.format("%d", clock() + tonumber(ARGV[4]))
if ARGV[7] ~= "" then
    entry = entry .. " " .. ARGV[2] .. " " .. ARGV[7] .. " " .. ARGV[8]
end
local place = nil
if redis.call("HSET", KEYS[3], me, entry) == 1 then
    -- A new waiter goes last: its place is the length of the line.
    place = redis.call("RPUSH", KEYS[2], me)
end
redis.call("PEXPIRE", KEYS[2], 2 * tonumber(ARGV[4]))
redis.call("PEXPIRE", KEYS[3], 2 * tonumber(ARGV[4]))
if dropped and head and head ~= me then
    -- Free, and the turn passed from a waiter that is gone to one that may not know it.
    redis.call("PUBLISH", KEYS[1] .. ":released:" .. head, "")
end
if not place then
    place = (redis.call("LPOS", KEYS[2], me) or 0) + 1
end
return place"#
    ))
});

/// A waiter that stops waiting leaves the queue, and frees the key if a release handed it over
/// to the token it registered (ARGV[2], or "") and it never took it; if the lock is then free,
/// the new head is woken. KEYS: lock, queue list, entry hash. ARGV: waiter id, registered
/// token.
pub(crate) static LEAVE_QUEUE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r#"redis.call("LREM", KEYS[2], 0, ARGV[1])
redis.call("HDEL", KEYS[3], ARGV[1])
if ARGV[2] ~= "" and redis.call("GET", KEYS[1]) == ARGV[2] then
    redis.call("DEL", KEYS[1])
end
if redis.call("EXISTS", KEYS[1]) == 0 then
    local head = redis.call("LINDEX", KEYS[2], 0)
    if head then
        redis.call("PUBLISH", KEYS[1] .. ":released:" .. head, "")
    end
end
return 1"#,
    )
});

/// All-or-nothing acquisition of several keys ([`Redlock::lock_many`](crate::Redlock::lock_many)):
/// sets every key to our token with the ttl only if none of them exists. Returns 1 or 0.
///
/// KEYS: the lock keys, then, for a waiter asking the sequencer node, each one's
/// [`waiting_flag`], which a refusal sets for ARGV[3] ms. ARGV: token, ttl ms, and with the flags
/// their lifetime.
pub(crate) static ACQUIRE_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"local n = #KEYS
if ARGV[3] then
    n = n / 2
end
for i = 1, n do
    if redis.call("EXISTS", KEYS[i]) == 1 then
        if ARGV[3] then
            for j = n + 1, 2 * n do
                redis.call("SET", KEYS[j], "1", "PX", ARGV[3])
            end
        end
        return 0
    end
end
for i = 1, n do
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key a script touches is declared in KEYS (Dragonfly refuses undeclared keys, and
    /// Redis Cluster routes by them): each `redis.call` of a command that takes a key names it
    /// as `KEYS[...]`, never as a name built in the script. Reads the scripts' own sources,
    /// this module's and `fencing`'s.
    #[test]
    fn every_key_a_script_touches_is_declared() {
        // Commands whose first argument is not a key.
        const KEYLESS: [&str; 2] = ["TIME", "PUBLISH"];
        let mut checked = 0;
        for source in [include_str!("scripts.rs"), include_str!("fencing.rs")] {
            for call in source.split("redis.call(\"").skip(1) {
                let Some((command, rest)) = call.split_once('"') else {
                    continue;
                };
                if KEYLESS.contains(&command) {
                    continue;
                }
                let argument = rest.trim_start_matches(',').trim_start();
                // `KEYS[<index>]` and nothing more: the next thing is `,` or `)`.
                let declared = argument
                    .strip_prefix("KEYS[")
                    .and_then(|index| index.split_once(']'))
                    .is_some_and(|(_, after)| after.trim_start().starts_with([',', ')']));
                let shown: String = argument.chars().take(32).collect();
                assert!(declared, "{command} on an undeclared key: {shown}");
                checked += 1;
            }
        }
        assert!(checked >= 20, "only {checked} calls found");
    }

    /// The release on a key's sequencer node writes the names of the key's wait queue and
    /// waiting flag straight into its command: they must be the names the queued waiters and
    /// the refusing scripts use.
    #[test]
    fn queue_keys_are_the_wait_queue_and_the_waiting_flag() {
        let key = "redlock:orders:42";
        let mut written = Cmd::new();
        written.arg(QueueKeys(key));
        let [list, entries] = wait_queue(key);
        let mut expected = Cmd::new();
        expected.arg(&list).arg(&entries).arg(waiting_flag(key));
        assert_eq!(written.get_packed_command(), expected.get_packed_command());
        assert_eq!(list, "redlock:orders:42:line");
        assert_eq!(entries, "redlock:orders:42:line:entries");
        assert_eq!(waiting_flag(key), "redlock:orders:42:queue:waiting");
    }
}
