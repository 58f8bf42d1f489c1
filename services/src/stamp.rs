//! The trace stamp: which instances a frame passed, for the tests.
//!
//! A service started with `--stamp ID` appends its 16-bit ID to a trailer
//! at the very end of the Ethernet frame, after the IP packet, where IP
//! and the DPU ignore it (as they ignore Ethernet padding) and checksums
//! do not reach:
//!
//! ```text
//! | frame ... | id1 | id2 | ... | idN | N (1 byte) | "CGT1" |
//!               u16 big-endian, in the order passed
//! ```
//!
//! A frame without the trailer gets one; one with it gets its ID added
//! (up to 32). The receiver reads it from the end with [`read`].

/// The trailer's magic, last on the frame.
pub const MAGIC: &[u8; 4] = b"CGT1";

/// Most IDs a trailer holds.
pub const MAX_IDS: usize = 32;

/// The IDs in a frame's trailer, in order, and the frame's length without
/// the trailer; `None` when it has none.
#[must_use]
pub fn read(frame: &[u8]) -> Option<(Vec<u16>, usize)> {
    let body = frame.strip_suffix(MAGIC.as_slice())?;
    let (&n, body) = body.split_last()?;
    let n = usize::from(n);
    let start = body.len().checked_sub(2 * n)?;
    let ids = body[start..]
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Some((ids, start))
}

/// Adds `id` to the trailer of the frame in `buf[..len]`, growing it in
/// place; returns the new length, or `None` when `buf` has no room or the
/// trailer is full (the frame is then left as it was).
pub fn stamp(buf: &mut [u8], len: usize, id: u16) -> Option<usize> {
    let frame = buf.get(..len)?;
    let (ids, body) = read(frame).unwrap_or((Vec::new(), len));
    if ids.len() >= MAX_IDS {
        return None;
    }
    let new_len = body + 2 * (ids.len() + 1) + 1 + MAGIC.len();
    if new_len > buf.len() {
        return None;
    }
    let mut at = body + 2 * ids.len();
    buf[at..at + 2].copy_from_slice(&id.to_be_bytes());
    at += 2;
    buf[at] = u8::try_from(ids.len() + 1).expect("at most MAX_IDS");
    buf[at + 1..at + 1 + MAGIC.len()].copy_from_slice(MAGIC);
    Some(new_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_accumulate_in_order_and_read_back() {
        let mut buf = [0u8; 128];
        buf[..60].copy_from_slice(&[0xAB; 60]);
        assert_eq!(read(&buf[..60]), None);
        let len = stamp(&mut buf, 60, 7).unwrap();
        assert_eq!(len, 60 + 2 + 1 + 4);
        let len = stamp(&mut buf, len, 300).unwrap();
        let (ids, body) = read(&buf[..len]).unwrap();
        assert_eq!(ids, [7, 300]);
        assert_eq!(body, 60);
        assert!(
            buf[..body].iter().all(|b| *b == 0xAB),
            "the frame itself is untouched"
        );
    }

    #[test]
    fn no_room_or_a_full_trailer_leaves_the_frame_alone() {
        let mut buf = [1u8; 64];
        assert_eq!(stamp(&mut buf, 60, 1), None);
        assert_eq!(buf, [1u8; 64]);
        let mut big = vec![0u8; 60 + 2 * 40 + 5];
        let mut len = 60;
        for i in 0..MAX_IDS as u16 {
            len = stamp(&mut big, len, i).unwrap();
        }
        assert_eq!(stamp(&mut big, len, 99), None);
        assert_eq!(read(&big[..len]).unwrap().0.len(), MAX_IDS);
    }
}
