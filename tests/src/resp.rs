//! A tiny synchronous RESP2 client: one connection per query, bounded by timeouts.
//!
//! It exists so tests can inspect a node (and check that a paused node does not
//! answer) without depending on a redis client crate.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Deepest array nesting the decoder accepts.
const MAX_DEPTH: usize = 32;

/// Largest bulk string the decoder accepts (redis' own default limit).
const MAX_BULK_LEN: usize = 512 * 1024 * 1024;

/// A decoded RESP2 reply.
///
/// Server errors (`-ERR ...`) are values ([`Reply::Error`]), not `Err`s: the
/// `io::Result` around a reply only reports transport and protocol failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Null bulk string or null array (`$-1`, `*-1`).
    Nil,
    /// Simple string (`+OK`).
    Simple(String),
    /// Error reply (`-ERR ...`), without the leading `-`.
    Error(String),
    /// Integer reply (`:42`).
    Int(i64),
    /// Bulk string (`$3\r\nfoo`); invalid UTF-8 is replaced lossily.
    Bulk(String),
    /// Array reply (`*2\r\n...`).
    Array(Vec<Reply>),
}

impl Reply {
    /// Whether this is [`Reply::Nil`].
    pub fn is_nil(&self) -> bool {
        matches!(self, Reply::Nil)
    }

    /// The integer of an [`Reply::Int`].
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The text of a [`Reply::Simple`] or [`Reply::Bulk`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Reply::Simple(s) | Reply::Bulk(s) => Some(s),
            _ => None,
        }
    }

    /// The elements of a [`Reply::Array`].
    pub fn as_array(&self) -> Option<&[Reply]> {
        match self {
            Reply::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The message of a [`Reply::Error`].
    pub fn as_error(&self) -> Option<&str> {
        match self {
            Reply::Error(message) => Some(message),
            _ => None,
        }
    }
}

/// Encodes a command as a RESP2 array of bulk strings.
pub(crate) fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Decodes one reply from `reader`.
pub(crate) fn decode<R: BufRead>(reader: &mut R) -> io::Result<Reply> {
    decode_at(reader, 0)
}

fn decode_at<R: BufRead>(reader: &mut R, depth: usize) -> io::Result<Reply> {
    if depth > MAX_DEPTH {
        return Err(invalid("reply nested too deeply"));
    }
    let line = read_line(reader)?;
    let (kind, rest) = match line.split_first() {
        Some((kind, rest)) => (*kind, rest),
        None => return Err(invalid("empty reply line")),
    };
    let text = || String::from_utf8_lossy(rest).into_owned();
    match kind {
        b'+' => Ok(Reply::Simple(text())),
        b'-' => Ok(Reply::Error(text())),
        b':' => Ok(Reply::Int(parse_int(rest)?)),
        b'$' => {
            let Some(len) = parse_len(rest)? else {
                return Ok(Reply::Nil);
            };
            if len > MAX_BULK_LEN {
                return Err(invalid("bulk string too long"));
            }
            let mut buf = vec![0; len + 2];
            reader.read_exact(&mut buf)?;
            if !buf.ends_with(b"\r\n") {
                return Err(invalid("bulk string not terminated by CRLF"));
            }
            buf.truncate(len);
            Ok(Reply::Bulk(String::from_utf8_lossy(&buf).into_owned()))
        }
        b'*' => {
            let Some(len) = parse_len(rest)? else {
                return Ok(Reply::Nil);
            };
            // Do not trust the length for the allocation: elements are read one by one.
            let mut items = Vec::with_capacity(len.min(1024));
            for _ in 0..len {
                items.push(decode_at(reader, depth + 1)?);
            }
            Ok(Reply::Array(items))
        }
        other => Err(invalid(&format!(
            "unknown reply type byte {:?}",
            char::from(other)
        ))),
    }
}

/// Reads one CRLF-terminated line and returns it without the CRLF.
fn read_line<R: BufRead>(reader: &mut R) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a reply",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(invalid("reply line not terminated by CRLF"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn parse_int(bytes: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("invalid integer in reply"))
}

/// Parses a bulk/array length: `None` for `-1` (nil).
fn parse_len(bytes: &[u8]) -> io::Result<Option<usize>> {
    match parse_int(bytes)? {
        -1 => Ok(None),
        n => usize::try_from(n)
            .map(Some)
            .map_err(|_| invalid("negative length in reply")),
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

/// Sends one command to `127.0.0.1:port` on a fresh connection and reads the
/// reply; connect, write and read are each bounded by `timeout`.
pub(crate) fn query(port: u16, args: &[&str], timeout: Duration) -> io::Result<Reply> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    stream.write_all(&encode(args))?;
    decode(&mut BufReader::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> io::Result<Reply> {
        decode(&mut &bytes[..])
    }

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        assert_eq!(
            encode(&["SET", "k", ""]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"
        );
        assert_eq!(encode(&[]), b"*0\r\n");
        assert_eq!(encode(&["é"]), "*1\r\n$2\r\né\r\n".as_bytes());
    }

    #[test]
    fn decodes_scalars() {
        assert_eq!(parse(b"+PONG\r\n").unwrap(), Reply::Simple("PONG".into()));
        assert_eq!(
            parse(b"-ERR nope\r\n").unwrap(),
            Reply::Error("ERR nope".into())
        );
        assert_eq!(parse(b":-42\r\n").unwrap(), Reply::Int(-42));
        assert_eq!(
            parse(b"$5\r\nhe\r\no\r\n").unwrap(),
            Reply::Bulk("he\r\no".into())
        );
        assert_eq!(parse(b"$0\r\n\r\n").unwrap(), Reply::Bulk(String::new()));
        assert!(parse(b"$-1\r\n").unwrap().is_nil());
        assert!(parse(b"*-1\r\n").unwrap().is_nil());
    }

    #[test]
    fn decodes_nested_arrays() {
        let reply = parse(b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n$-1\r\n+x\r\n").unwrap();
        assert_eq!(
            reply,
            Reply::Array(vec![
                Reply::Int(1),
                Reply::Array(vec![Reply::Bulk("a".into()), Reply::Nil]),
                Reply::Simple("x".into()),
            ])
        );
        assert_eq!(reply.as_array().map(<[Reply]>::len), Some(3));
        assert_eq!(parse(b"*0\r\n").unwrap(), Reply::Array(vec![]));
    }

    #[test]
    fn decodes_consecutive_replies_from_one_reader() {
        let mut input = &b"+OK\r\n:7\r\n"[..];
        assert_eq!(decode(&mut input).unwrap(), Reply::Simple("OK".into()));
        assert_eq!(decode(&mut input).unwrap(), Reply::Int(7));
        assert_eq!(
            decode(&mut input).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn rejects_malformed_input() {
        for bad in [
            &b"?x\r\n"[..],
            b"+no-crlf",
            b":abc\r\n",
            b"$-2\r\n",
            b"$3\r\nabcd\r\n",
            b"\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
        // Truncated bulk body and truncated array.
        assert!(parse(b"$10\r\nabc\r\n").is_err());
        assert!(parse(b"*2\r\n:1\r\n").is_err());
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2);
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn accessors() {
        assert_eq!(Reply::Int(3).as_int(), Some(3));
        assert_eq!(Reply::Bulk("v".into()).as_str(), Some("v"));
        assert_eq!(Reply::Simple("OK".into()).as_str(), Some("OK"));
        assert_eq!(Reply::Error("E".into()).as_str(), None);
        assert_eq!(Reply::Error("E".into()).as_error(), Some("E"));
        assert_eq!(Reply::Nil.as_int(), None);
        assert!(!Reply::Int(0).is_nil());
    }
}
