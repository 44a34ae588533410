//! The random value that proves ownership of a lock key.

use std::{fmt, sync::Arc};

/// 128 bits from a CSPRNG, fresh for every acquisition attempt (never reused across attempts, so a
/// late reply to an old attempt can never be mistaken for ownership). Stored on the nodes as 32
/// lowercase hex digits. `Debug` shows only a prefix, so logs never carry a full token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct LockToken(u128);

impl LockToken {
    /// Draws a fresh token from the thread-local CSPRNG (ChaCha, seeded by the OS).
    pub(crate) fn random() -> Self {
        LockToken(rand::random())
    }

    /// The value written to the nodes, shared by everything that sends it: one allocation
    /// per acquisition attempt. Written digit by digit: `format!("{:032x}")` costs several
    /// times more.
    pub(crate) fn encode(self) -> Arc<str> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [0u8; 32];
        for (i, digit) in digits.iter_mut().enumerate() {
            *digit = HEX[((self.0 >> (124 - 4 * i)) & 0xf) as usize];
        }
        // Always ASCII, so nothing is ever replaced, and nothing is copied but into the `Arc`.
        Arc::from(&*String::from_utf8_lossy(&digits))
    }
}

impl fmt::Debug for LockToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{:04x}…\"", self.0 >> 112)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_128_bit_hex_and_fresh() {
        let a = LockToken::random();
        let b = LockToken::random();
        assert_ne!(a, b);
        let s = a.encode();
        assert_eq!(s.len(), 32);
        assert!(s.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn encoding_is_32_lowercase_hex_digits_most_significant_first() {
        let t = LockToken(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
        assert_eq!(&*t.encode(), "0123456789abcdeffedcba9876543210");
        assert_eq!(*LockToken(1).encode(), format!("{:032x}", 1));
        assert_eq!(*LockToken(u128::MAX).encode(), "f".repeat(32));
    }

    #[test]
    fn debug_shows_only_a_prefix() {
        let t = LockToken(0x3f9a_0000_0000_0000_0000_0000_0000_1234);
        assert_eq!(format!("{t:?}"), "\"3f9a…\"");
        assert!(!format!("{t:?}").contains("1234"));
    }
}
