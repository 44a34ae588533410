//! The one-trip hand-over of a contended key: what the notices of a hand-over say, and the
//! successor a holder names to every node at its release.
//!
//! A release on the key's sequencer node that hands the key over to the waiter at the head of
//! its line ([`RELEASE_CONTENDED`](crate::scripts::RELEASE_CONTENDED)) tells that waiter, the new
//! holder, who is next in line. At its own release, the new holder names that successor to
//! every node: the sequencer hands over to it if it is still at the head of the line, and each
//! other node sets the key to the successor's token if it still holds the holder's
//! ([`RELEASE_HEIR`](crate::scripts::RELEASE_HEIR)). The successor holds the lock on the
//! sequencer's notice plus notices from enough other nodes for a quorum, one trip after the
//! release, without sending a SET. The rules (docs/design-notes.md, *One-trip hand-over*):
//!
//! - only the sequencer decides whose turn it is: a successor never holds without its notice,
//!   and the other nodes' notices count only for the token the sequencer handed over;
//! - a holder names a successor only within the lease the successor had left when the
//!   sequencer named it, counted from before the holder's own ask, so the sequencer cannot
//!   have dropped the successor from its line meanwhile;
//! - the validity counts from the start of the successor's ask that the notice names, which
//!   the sequencer saw before it named the successor (and every node set the key after that);
//! - a waiter that stops using a token leaves a tombstone for it on the other nodes, so that a
//!   hand-over naming it that arrives later deletes the key instead.

use std::{sync::Arc, time::Duration};

use crate::clock::LeaseInstant;

/// The waiter a holder names at its release, as the sequencer node told the holder.
#[derive(Clone, Debug)]
pub(crate) struct Successor {
    /// Its waiter id (its turn channel is `<key>:released:<waiter>`).
    pub(crate) waiter: Arc<str>,
    /// The token it registered.
    pub(crate) token: Arc<str>,
    /// The ttl it asked for, in ms.
    pub(crate) ttl_ms: u64,
    /// The number of its ask the sequencer had seen.
    pub(crate) ask: u64,
    /// Naming it is safe until then: its lease on the sequencer runs at least that long.
    pub(crate) use_by: LeaseInstant,
}

impl Successor {
    /// Whether it may still be named.
    pub(crate) fn usable(&self) -> bool {
        !self.use_by.has_passed()
    }
}

/// A hand-over notice on a waiter's turn channel, from one node.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Notice {
    /// The token the key was handed to.
    pub(crate) token: String,
    /// The number of the waiter's ask the node's release named.
    pub(crate) ask: u64,
    /// From the sequencer: the releasing holder named this waiter to the other nodes too.
    pub(crate) marked: bool,
    /// From the sequencer: the next waiter, with its lease left in ms.
    pub(crate) next: Option<NextWaiter>,
}

/// The next waiter in line, as a sequencer's notice names it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NextWaiter {
    pub(crate) waiter: String,
    pub(crate) ttl_ms: u64,
    pub(crate) token: String,
    pub(crate) ask: u64,
    pub(crate) lease_left_ms: u64,
}

impl NextWaiter {
    /// The successor to name, given when the ask of ours that the sequencer's notice named was
    /// started (before the sequencer read the next waiter's lease) and the allowance for
    /// clocks running at different rates.
    pub(crate) fn successor(
        self,
        asked_at: LeaseInstant,
        drift: impl Fn(Duration) -> Duration,
    ) -> Successor {
        let left = Duration::from_millis(self.lease_left_ms);
        Successor {
            waiter: self.waiter.into(),
            token: self.token.into(),
            ttl_ms: self.ttl_ms,
            ask: self.ask,
            use_by: asked_at + left.saturating_sub(drift(left)),
        }
    }
}

impl Notice {
    /// Parses `token ask [marked [next ttl token ask lease_left]]`; `None` for an empty or
    /// malformed payload (a plain wake-up).
    pub(crate) fn parse(payload: &str) -> Option<Notice> {
        let mut words = payload.split(' ');
        let token = words.next().filter(|t| !t.is_empty())?.to_owned();
        let ask = words.next()?.parse().ok()?;
        let marked = words.next() == Some("1");
        let next = (|| {
            Some(NextWaiter {
                waiter: words.next()?.to_owned(),
                ttl_ms: words.next()?.parse().ok()?,
                token: words.next()?.to_owned(),
                ask: words.next()?.parse().ok()?,
                lease_left_ms: words.next()?.parse().ok()?,
            })
        })();
        Some(Notice {
            token,
            ask,
            marked,
            next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_parse_in_each_form() {
        assert_eq!(Notice::parse(""), None);
        assert_eq!(Notice::parse("r"), None);
        let other = Notice::parse("r 7").unwrap();
        assert_eq!(
            (other.token.as_str(), other.ask, other.marked),
            ("r", 7, false)
        );
        assert!(other.next.is_none());
        let marked = Notice::parse("r 7 1 w 3000 s 2 850").unwrap();
        assert!(marked.marked);
        assert_eq!(
            marked.next,
            Some(NextWaiter {
                waiter: "w".into(),
                ttl_ms: 3000,
                token: "s".into(),
                ask: 2,
                lease_left_ms: 850
            })
        );
        assert!(!Notice::parse("r 7 0").unwrap().marked);
    }

    #[test]
    fn a_successor_is_named_only_within_its_lease_left() {
        let asked_at = LeaseInstant::now() - Duration::from_millis(900);
        let next = Notice::parse("r 7 0 w 3000 s 2 1000")
            .unwrap()
            .next
            .unwrap();
        let successor = next.successor(asked_at, |d| d / 100 + Duration::from_millis(2));
        assert!(successor.usable());
        let stale = Notice::parse("r 7 0 w 3000 s 2 800").unwrap().next.unwrap();
        assert!(!stale.successor(asked_at, |_| Duration::ZERO).usable());
    }
}
