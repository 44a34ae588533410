//! Server binary selection, command-line building and free-port picking.
//!
//! Nothing in here spawns long-lived processes: it only decides *which* binary
//! to run, *how* to run it, and *where* (which loopback port).

use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};

/// Environment variable naming the server binary (path or bare name).
pub(crate) const SERVER_ENV: &str = "REDLOCK_SERVER";

/// Binary used when [`SERVER_ENV`] is unset or empty.
const DEFAULT_SERVER: &str = "redis-server";

/// The port a shared, developer-owned redis usually listens on. Never used.
const RESERVED_PORT: u16 = 6379;

/// Name of the server log file inside a node's data directory.
pub(crate) const LOG_FILE: &str = "server.log";

/// Name of the file capturing the server's stderr inside its data directory.
pub(crate) const STDERR_FILE: &str = "stderr.log";

/// How a spawned server persists its data.
///
/// The harness always starts servers with RDB snapshots disabled, so the only
/// question is whether writes go to an append-only file before they are
/// acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Persistence {
    /// Nothing is persisted: a killed and restarted node comes back empty
    /// (`--save "" --appendonly no`).
    #[default]
    None,
    /// Every write is fsynced to the append-only file before the reply
    /// (`--appendonly yes --appendfsync always --save ""`), so a key that was
    /// acknowledged survives `SIGKILL` + restart.
    ///
    /// Dragonfly has no equivalent; with it this behaves like [`Persistence::None`].
    AofAlways,
}

/// The server binary the harness runs: `$REDLOCK_SERVER` if set and non-empty,
/// otherwise `redis-server`.
///
/// `valkey-server` works as a drop-in replacement; a binary whose name contains
/// `dragonfly` gets Dragonfly-style flags (best effort).
pub fn server_binary() -> String {
    match std::env::var(SERVER_ENV) {
        Ok(bin) if !bin.trim().is_empty() => bin,
        _ => DEFAULT_SERVER.to_owned(),
    }
}

/// Whether [`server_binary`] can be executed (`<binary> --version` succeeds).
///
/// Useful for skipping integration tests on machines without a server.
pub fn server_available() -> bool {
    Command::new(server_binary())
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Whether `binary` looks like Dragonfly (which takes gflags-style options).
pub(crate) fn is_dragonfly(binary: &str) -> bool {
    Path::new(binary)
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or(binary)
        .to_ascii_lowercase()
        .contains("dragonfly")
}

/// Picks `n` distinct free loopback ports (never 6379).
///
/// All listeners are held until every port is chosen so the kernel cannot hand
/// out the same port twice; they are released on return, so another process
/// may still grab a port before the server binds it (callers retry).
pub(crate) fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let mut listeners = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        // Keep a reserved-port listener bound too, so the next bind differs.
        listeners.push(listener);
        if port != RESERVED_PORT {
            ports.push(port);
        }
    }
    drop(listeners);
    Ok(ports)
}

/// Picks one free loopback port (never 6379).
pub(crate) fn free_port() -> io::Result<u16> {
    free_ports(1)?
        .pop()
        .ok_or_else(|| io::Error::other("no free port"))
}

/// The arguments (without the binary) that start `binary` in the foreground on
/// `127.0.0.1:port` with its data (and log) in `dir`.
pub(crate) fn server_args(
    binary: &str,
    port: u16,
    dir: &Path,
    persistence: Persistence,
) -> Vec<String> {
    let dir = dir.display().to_string();
    if is_dragonfly(binary) {
        // gflags style. Dragonfly only snapshots on shutdown unless asked to,
        // and SIGKILL skips that, so there is no persistence either way.
        return vec![
            format!("--port={port}"),
            "--bind=127.0.0.1".to_owned(),
            format!("--dir={dir}"),
            "--dbfilename=dump".to_owned(),
            format!("--log_dir={dir}"),
        ];
    }
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
        // Tests stall nodes with DEBUG SLEEP (Redis 7+ refuses DEBUG unless enabled).
        "--enable-debug-command",
        "local",
        "--dir",
        &dir,
        "--logfile",
        &format!("{dir}/{LOG_FILE}"),
        "--save",
        "",
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    let persistence_args: &[&str] = match persistence {
        Persistence::None => &["--appendonly", "no"],
        Persistence::AofAlways => &["--appendonly", "yes", "--appendfsync", "always"],
    };
    args.extend(persistence_args.iter().map(|arg| (*arg).to_owned()));
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_dragonfly_by_file_name() {
        assert!(is_dragonfly("dragonfly"));
        assert!(is_dragonfly("/opt/bin/dragonfly-x86_64"));
        assert!(!is_dragonfly("redis-server"));
        assert!(!is_dragonfly("/home/dragonfly/bin/valkey-server"));
    }

    #[test]
    fn redis_args_disable_snapshots() {
        let args = server_args("redis-server", 4000, Path::new("/tmp/x"), Persistence::None);
        let joined = args.join(" ");
        assert!(joined.starts_with("--port 4000 --bind 127.0.0.1"));
        assert!(joined.contains("--logfile /tmp/x/server.log"));
        assert!(joined.ends_with("--appendonly no"));
        let save = args.iter().position(|a| a == "--save").unwrap();
        assert_eq!(args[save + 1], "");
    }

    #[test]
    fn aof_args_fsync_always() {
        let args = server_args(
            "valkey-server",
            4000,
            Path::new("/tmp/x"),
            Persistence::AofAlways,
        );
        assert!(
            args.join(" ")
                .ends_with("--appendonly yes --appendfsync always")
        );
    }

    #[test]
    fn dragonfly_args_use_gflags_style() {
        let args = server_args("dragonfly", 4000, Path::new("/tmp/x"), Persistence::None);
        assert!(args.contains(&"--port=4000".to_owned()));
        assert!(args.contains(&"--dir=/tmp/x".to_owned()));
    }

    #[test]
    fn free_ports_are_distinct_and_not_reserved() {
        let mut ports = free_ports(8).unwrap();
        assert!(!ports.contains(&RESERVED_PORT));
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 8);
    }
}
