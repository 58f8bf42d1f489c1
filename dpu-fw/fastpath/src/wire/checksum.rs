//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Sums are kept unfolded in a `u64` while adding, so a caller can add the
//! pseudo-header, header and payload in any order and fold once. A frame is
//! at most 64 KiB, far below the 2^48 16-bit words that could overflow it.
//!
//! Incremental update (RFC 1624 eqn. 3): when 16-bit words `m` of a
//! checksummed region become `m'`, the checksum `HC` becomes
//! `HC' = ~(~HC + ~m + m')`. Unlike eqn. 2 of RFC 1141 it never produces the
//! "negative zero" mistake, so the result verifies exactly as a checksum
//! computed from scratch does.

use core::net::{Ipv4Addr, Ipv6Addr};

use chaingate_shared::IpProtocol;

/// The unfolded one's-complement sum of `data` read as big-endian 16-bit
/// words; an odd last byte is padded with zero (RFC 1071 4.1).
///
/// Adds 32-bit words where it can: a 32-bit word `hi * 2^16 + lo` is
/// congruent to `hi + lo` modulo 2^16 - 1, so the folded result is the same
/// (RFC 1071 2(B), "parallel summation") at half the additions.
#[must_use]
#[inline]
pub fn sum(data: &[u8]) -> u64 {
    let mut acc = 0u64;
    let mut quads = data.chunks_exact(4);
    for q in &mut quads {
        if let [a, b, c, d] = *q {
            acc += u64::from(u32::from_be_bytes([a, b, c, d]));
        }
    }
    match *quads.remainder() {
        [a, b, c] => acc + u64::from(u32::from_be_bytes([a, b, c, 0])),
        [a, b] => acc + u64::from(u16::from_be_bytes([a, b])),
        [a] => acc + (u64::from(a) << 8),
        _ => acc,
    }
}

/// [`sum`] of a fixed 20-byte block (an IPv4 header without options, a TCP
/// header without options), unrolled: no loop, no length to test.
#[must_use]
#[inline]
pub fn sum20(b: &[u8; 20]) -> u64 {
    let w = |i: usize| match b.get(i..i + 4) {
        Some(&[a, b, c, d]) => u64::from(u32::from_be_bytes([a, b, c, d])),
        _ => 0,
    };
    w(0) + w(4) + w(8) + w(12) + w(16)
}

/// Folds the carries of a sum into 16 bits (not complemented).
///
/// Four fixed steps instead of a loop: the number of carries depends on
/// the data, and a data-dependent loop mispredicts on every packet.
#[must_use]
#[inline]
pub fn fold(acc: u64) -> u16 {
    let acc = (acc >> 32) + (acc & 0xFFFF_FFFF); // < 2^33
    let acc = (acc >> 16) + (acc & 0xFFFF); // < 2^17 + 2^16
    let acc = (acc >> 16) + (acc & 0xFFFF); // <= 0xFFFF + 2
    let acc = (acc >> 16) + (acc & 0xFFFF); // <= 0xFFFF
    // The steps above leave at most 16 bits.
    #[allow(clippy::cast_possible_truncation)]
    let folded = acc as u16;
    folded
}

/// The checksum field value for a region whose sum (with the checksum field
/// zeroed) is `acc`.
#[must_use]
#[inline]
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// True when a region that includes its checksum field sums to all ones.
#[must_use]
#[inline]
pub fn verifies(acc: u64) -> bool {
    fold(acc) == 0xFFFF
}

/// Sum of the IPv4 pseudo-header for TCP/UDP (RFC 793 3.1, RFC 768).
#[must_use]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: IpProtocol, len: u16) -> u64 {
    sum(&src.octets()) + sum(&dst.octets()) + u64::from(proto.number()) + u64::from(len)
}

/// Sum of the IPv6 pseudo-header for upper layers (RFC 8200 8.1).
#[must_use]
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, proto: IpProtocol, len: u32) -> u64 {
    sum(&src.octets())
        + sum(&dst.octets())
        + u64::from(len >> 16)
        + u64::from(len & 0xFFFF)
        + u64::from(proto.number())
}

/// The checksum after the 16-bit words `old` of the covered region became
/// `new` (RFC 1624 eqn. 3). Both slices hold the same words at the same
/// even offset in the region; extra bytes of the longer one are ignored.
#[must_use]
pub fn update(checksum: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut acc = u64::from(!checksum);
    for (o, n) in old.chunks(2).zip(new.chunks(2)) {
        acc += u64::from(!word(o)) + u64::from(word(n));
    }
    !fold(acc)
}

/// [`update`] for one 16-bit word.
#[must_use]
pub fn update_word(checksum: u16, old: u16, new: u16) -> u16 {
    !fold(u64::from(!checksum) + u64::from(!old) + u64::from(new))
}

fn word(b: &[u8]) -> u16 {
    match *b {
        [hi, lo, ..] => u16::from_be_bytes([hi, lo]),
        [hi] => u16::from_be_bytes([hi, 0]),
        [] => 0,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(finish(sum(&data)), !0xddf2);
    }

    #[test]
    fn fold_takes_every_carry() {
        assert_eq!(fold(0), 0);
        assert_eq!(fold(0xFFFF), 0xFFFF);
        assert_eq!(fold(0x1_0000), 1);
        assert_eq!(fold(0x1_FFFE), 0xFFFF);
        assert_eq!(fold(u64::MAX), 0xFFFF);
        assert_eq!(fold(0xFFFF_FFFF_0000_0001), 1);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(sum(&[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
        assert_eq!(
            fold(sum(&[0x12, 0x34, 0x56, 0x78, 0x9A])),
            fold(0x1234 + 0x5678 + 0x9A00)
        );
    }

    proptest! {
        #[test]
        fn sum20_is_sum(block in any::<[u8; 20]>()) {
            prop_assert_eq!(sum20(&block), sum(&block));
        }

        #[test]
        fn wide_words_fold_like_16_bit_words(data in proptest::collection::vec(any::<u8>(), 0..80usize)) {
            let mut narrow = 0u64;
            for pair in data.chunks(2) {
                let hi = u64::from(pair[0]) << 8;
                narrow += hi + pair.get(1).map_or(0, |&lo| u64::from(lo));
            }
            prop_assert_eq!(fold(sum(&data)), fold(narrow));
        }
    }

    #[test]
    fn rfc1624_corner_case() {
        // RFC 1624 section 3: header sum 0xCD7A with checksum 0x3285; a
        // word 0x5555 becomes 0x3285 and the new checksum must be 0x0000,
        // not the 0xFFFF that eqn. 2 of RFC 1141 gives.
        assert_eq!(update_word(0xDD2F, 0x5555, 0x3285), 0x0000);
    }

    proptest! {
        #[test]
        fn incremental_update_matches_recomputation(
            mut data in proptest::collection::vec(any::<u8>(), 2..64usize),
            at in any::<prop::sample::Index>(),
            new in any::<[u8; 4]>(),
        ) {
            if data.len() % 2 == 1 { data.push(0); }
            let ck = finish(sum(&data));
            let words = data.len() / 2;
            let i = at.index(words) * 2;
            let n = (data.len() - i).min(4);
            let old: [u8; 4] = {
                let mut o = [0u8; 4];
                o[..n].copy_from_slice(&data[i..i + n]);
                o
            };
            data[i..i + n].copy_from_slice(&new[..n]);
            let updated = update(ck, &old[..n], &new[..n]);
            // The updated checksum verifies over the new data.
            prop_assert!(verifies(sum(&data) + u64::from(updated)));
        }
    }
}
