//! A small deterministic 64-bit hash for flow keys.
//!
//! Instance choice (Maglev) must give the same answer on every gateway, on
//! every architecture and after every restart, so the hash has no random seed
//! and is computed from field *values*, never from in-memory layout or
//! endianness. It is not a defence against an adversary who picks flows to
//! collide; the session table bounds its probing instead.
//!
//! Construction: every 64-bit word is folded into the state with a
//! multiply-rotate step, and the state is finalised with the murmur3 `fmix64`
//! avalanche so that every input bit affects every output bit (Maglev takes
//! the hash modulo a prime, so the low bits must be as good as the high ones).

/// Multiplier of the folding step (2^64 / golden ratio, odd).
const FOLD: u64 = 0x9E37_79B9_7F4A_7C15;

/// Incremental state of the flow hash.
#[derive(Clone, Copy, Debug)]
pub struct FlowHasher {
    state: u64,
}

impl FlowHasher {
    /// A hasher with the fixed starting state; `domain` separates unrelated
    /// uses of the hash (say, session table and instance choice) so that
    /// their collisions are independent.
    #[must_use]
    pub const fn new(domain: u64) -> Self {
        Self {
            state: domain ^ 0x243F_6A88_85A3_08D3,
        }
    }

    /// Folds one word into the state.
    #[must_use]
    pub const fn word(self, w: u64) -> Self {
        Self {
            state: (self.state ^ w).wrapping_mul(FOLD).rotate_left(31),
        }
    }

    /// The final, fully mixed hash value.
    #[must_use]
    pub const fn finish(self) -> u64 {
        fmix64(self.state)
    }
}

/// A hash of a byte string (names): eight bytes per word, the length last.
#[must_use]
pub fn hash_bytes(domain: u64, bytes: &[u8]) -> u64 {
    let mut h = FlowHasher::new(domain);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = h.word(u64::from_le_bytes(w));
    }
    let mut w = [0u8; 8];
    let rest = chunks.remainder();
    if let Some(dst) = w.get_mut(..rest.len()) {
        dst.copy_from_slice(rest);
    }
    h.word(u64::from_le_bytes(w))
        .word(bytes.len() as u64)
        .finish()
}

/// The murmur3 64-bit finaliser: a bijection with full avalanche.
#[must_use]
pub const fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_values_do_not_change_between_builds() {
        // Gateways of different builds and architectures must agree: pin
        // the function, not just its properties.
        // Reference values computed independently (Python, 64-bit wrap).
        assert_eq!(
            FlowHasher::new(0).word(1).word(2).finish(),
            0xFE6E_BBB9_901B_7254
        );
        assert_eq!(fmix64(0), 0);
        assert_eq!(fmix64(1), 0xB456_BCFC_34C2_CB2C);
    }

    #[test]
    fn order_of_words_matters() {
        let a = FlowHasher::new(0).word(1).word(2).finish();
        let b = FlowHasher::new(0).word(2).word(1).finish();
        assert_ne!(a, b);
    }

    #[test]
    fn byte_strings_hash_by_content_and_length() {
        assert_eq!(hash_bytes(1, b"fw-1"), hash_bytes(1, b"fw-1"));
        assert_ne!(hash_bytes(1, b"fw-1"), hash_bytes(1, b"fw-2"));
        assert_ne!(hash_bytes(1, b"a"), hash_bytes(1, b"a\0"));
        assert_ne!(hash_bytes(1, b"0123456789"), hash_bytes(1, b"0123456780"));
    }

    #[test]
    fn domains_separate() {
        let a = FlowHasher::new(1).word(7).finish();
        let b = FlowHasher::new(2).word(7).finish();
        assert_ne!(a, b);
    }
}
