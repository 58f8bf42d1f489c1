//! A frame in a buffer with headroom and tailroom, and the writers that
//! change its length: pushing and popping 802.1Q/802.1ad tags.
//!
//! Like a DPDK mbuf, the frame need not start at the start of the buffer.
//! A push moves the 12 MAC bytes into the headroom (or, without headroom,
//! shifts the frame into the tailroom) so the cost does not grow with the
//! frame; a pop moves the MAC bytes forward. Both follow OpenFlow/rte_flow
//! semantics: they act on the outermost tag, right after the MAC addresses.
//!
//! Offsets in a [`super::ParsedFrame`] taken before a push or pop are
//! stale afterwards: rewrite addresses and ports first, tags last.

use core::fmt;
use core::ops::Range;

use chaingate_shared::VlanId;

use super::{EtherType, EthernetAddress, Tci};

/// Why a frame buffer operation could not be done.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FrameBufError {
    /// `start + len` is beyond the buffer.
    OutOfBounds,
    /// Neither headroom nor tailroom for 4 more bytes.
    NoRoom,
    /// The frame is shorter than the Ethernet header (plus tag, for a pop).
    TooShort,
    /// The frame has no outer VLAN tag to pop or rewrite.
    NotTagged,
}

impl fmt::Display for FrameBufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OutOfBounds => "frame extends beyond its buffer",
            Self::NoRoom => "no room in the buffer for a vlan tag",
            Self::TooShort => "frame too short for the operation",
            Self::NotTagged => "frame has no vlan tag",
        })
    }
}

impl core::error::Error for FrameBufError {}

const MACS: usize = 12;
const TAG: usize = 4;

/// A frame at `start..start + len` of a mutable buffer.
#[derive(Debug)]
pub struct FrameBuf<'a> {
    buf: &'a mut [u8],
    start: usize,
    len: usize,
}

impl<'a> FrameBuf<'a> {
    /// The frame at `start..start + len` of `buf`.
    ///
    /// # Errors
    /// [`FrameBufError::OutOfBounds`] when the range is not inside `buf`.
    pub fn new(buf: &'a mut [u8], start: usize, len: usize) -> Result<Self, FrameBufError> {
        match start.checked_add(len) {
            Some(end) if end <= buf.len() => Ok(Self { buf, start, len }),
            _ => Err(FrameBufError::OutOfBounds),
        }
    }

    fn range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }

    /// The frame's bytes.
    #[must_use]
    pub fn frame(&self) -> &[u8] {
        self.buf.get(self.range()).unwrap_or(&[])
    }

    /// The frame's bytes, writable.
    pub fn frame_mut(&mut self) -> &mut [u8] {
        let range = self.range();
        self.buf.get_mut(range).unwrap_or(&mut [])
    }

    /// Where the frame starts in the buffer (the headroom).
    #[must_use]
    pub const fn start(&self) -> usize {
        self.start
    }

    /// Frame length.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// True for an empty frame.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes the destination MAC.
    ///
    /// # Errors
    /// [`FrameBufError::TooShort`] without an Ethernet header.
    pub fn set_dst_mac(&mut self, mac: EthernetAddress) -> Result<(), FrameBufError> {
        self.write(0, &mac.0)
    }

    /// Writes the source MAC.
    ///
    /// # Errors
    /// [`FrameBufError::TooShort`] without an Ethernet header.
    pub fn set_src_mac(&mut self, mac: EthernetAddress) -> Result<(), FrameBufError> {
        self.write(6, &mac.0)
    }

    /// The outermost tag: its TPID and TCI, if the frame has one.
    #[must_use]
    pub fn outer_tag(&self) -> Option<(EtherType, Tci)> {
        match *self.frame() {
            [_, _, _, _, _, _, _, _, _, _, _, _, t0, t1, c0, c1, ..] => {
                let tpid = EtherType::from(u16::from_be_bytes([t0, t1]));
                tpid.is_vlan_tag()
                    .then(|| (tpid, Tci(u16::from_be_bytes([c0, c1]))))
            }
            _ => None,
        }
    }

    /// Pushes a new outermost tag (`tpid` 0x8100 or 0x88A8).
    ///
    /// # Errors
    /// [`FrameBufError::TooShort`] without an Ethernet header,
    /// [`FrameBufError::NoRoom`] without 4 bytes of head- or tailroom.
    pub fn push_vlan(&mut self, tpid: EtherType, tci: Tci) -> Result<(), FrameBufError> {
        if self.len < MACS + 2 {
            return Err(FrameBufError::TooShort);
        }
        if self.start >= TAG {
            let macs = self.start..self.start + MACS;
            self.buf.copy_within(macs, self.start - TAG);
            self.start -= TAG;
        } else if self.buf.len() - self.start - self.len >= TAG {
            let after_macs = self.start + MACS..self.start + self.len;
            self.buf.copy_within(after_macs, self.start + MACS + TAG);
        } else {
            return Err(FrameBufError::NoRoom);
        }
        self.len += TAG;
        let ([t0, t1], [c0, c1]) = (tpid.number().to_be_bytes(), tci.0.to_be_bytes());
        self.write(MACS, &[t0, t1, c0, c1])
    }

    /// Removes the outermost tag and returns its TPID and TCI.
    ///
    /// # Errors
    /// [`FrameBufError::NotTagged`] when the frame has no tag.
    pub fn pop_vlan(&mut self) -> Result<(EtherType, Tci), FrameBufError> {
        let tag = self.outer_tag().ok_or(FrameBufError::NotTagged)?;
        if self.len < MACS + TAG + 2 {
            return Err(FrameBufError::TooShort);
        }
        let macs = self.start..self.start + MACS;
        self.buf.copy_within(macs, self.start + TAG);
        self.start += TAG;
        self.len -= TAG;
        Ok(tag)
    }

    /// Rewrites the identifier of the outermost tag, keeping its priority.
    ///
    /// # Errors
    /// [`FrameBufError::NotTagged`] when the frame has no tag.
    pub fn set_outer_vid(&mut self, vid: VlanId) -> Result<(), FrameBufError> {
        let (_, tci) = self.outer_tag().ok_or(FrameBufError::NotTagged)?;
        self.write(MACS + 2, &tci.with_vid(vid).0.to_be_bytes())
    }

    /// Grows the frame by `len` bytes at the front (into the headroom)
    /// and returns them, for the caller to fill (outer headers).
    ///
    /// # Errors
    /// [`FrameBufError::NoRoom`] without `len` bytes of headroom.
    pub fn push_front(&mut self, len: usize) -> Result<&mut [u8], FrameBufError> {
        self.start = self.start.checked_sub(len).ok_or(FrameBufError::NoRoom)?;
        self.len += len;
        let range = self.start..self.start + len;
        self.buf.get_mut(range).ok_or(FrameBufError::OutOfBounds)
    }

    /// Removes `len` bytes from the front (outer headers).
    ///
    /// # Errors
    /// [`FrameBufError::TooShort`] when the frame is shorter.
    pub fn pull_front(&mut self, len: usize) -> Result<(), FrameBufError> {
        if len > self.len {
            return Err(FrameBufError::TooShort);
        }
        self.start += len;
        self.len -= len;
        Ok(())
    }

    fn write(&mut self, at: usize, bytes: &[u8]) -> Result<(), FrameBufError> {
        self.frame_mut()
            .get_mut(at..at + bytes.len())
            .ok_or(FrameBufError::TooShort)?
            .copy_from_slice(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNTAGGED: [u8; 18] = [
        1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0x08, 0x00, 0xAA, 0xBB, 0xCC, 0xDD,
    ];
    const TAGGED: [u8; 22] = [
        1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0x81, 0x00, 0x20, 0x64, 0x08, 0x00, 0xAA, 0xBB, 0xCC,
        0xDD,
    ];

    fn tci() -> Tci {
        Tci::new(1, false, VlanId::from_tci(100))
    }

    #[test]
    fn push_into_headroom_then_pop() {
        let mut buf = [0u8; 26];
        buf[4..22].copy_from_slice(&UNTAGGED);
        let mut fb = FrameBuf::new(&mut buf, 4, 18).unwrap();
        fb.push_vlan(EtherType::Vlan, tci()).unwrap();
        assert_eq!(fb.start(), 0);
        assert_eq!(fb.frame(), &TAGGED);
        assert_eq!(fb.pop_vlan().unwrap(), (EtherType::Vlan, tci()));
        assert_eq!(fb.frame(), &UNTAGGED);
        assert_eq!(fb.start(), 4);
    }

    #[test]
    fn push_into_tailroom_without_headroom() {
        let mut buf = [0u8; 22];
        buf[..18].copy_from_slice(&UNTAGGED);
        let mut fb = FrameBuf::new(&mut buf, 0, 18).unwrap();
        fb.push_vlan(EtherType::Vlan, tci()).unwrap();
        assert_eq!(fb.frame(), &TAGGED);
        assert_eq!(
            fb.push_vlan(EtherType::QinQ, tci()),
            Err(FrameBufError::NoRoom)
        );
    }

    #[test]
    fn qinq_push_goes_outermost() {
        let mut buf = [0u8; 26];
        buf[4..].copy_from_slice(&TAGGED);
        let mut fb = FrameBuf::new(&mut buf, 4, 22).unwrap();
        let outer = Tci::new(0, false, VlanId::from_tci(7));
        fb.push_vlan(EtherType::QinQ, outer).unwrap();
        assert_eq!(fb.outer_tag(), Some((EtherType::QinQ, outer)));
        assert_eq!(&fb.frame()[16..22], &TAGGED[12..18], "inner tag intact");
    }

    #[test]
    fn rewrite_outer_vid_keeps_priority() {
        let mut buf = TAGGED;
        let mut fb = FrameBuf::new(&mut buf, 0, 22).unwrap();
        fb.set_outer_vid(VlanId::from_tci(0xABC)).unwrap();
        assert_eq!(fb.outer_tag().unwrap().1, Tci(0x2ABC));
        let mut buf = UNTAGGED;
        let mut fb = FrameBuf::new(&mut buf, 0, 18).unwrap();
        assert_eq!(
            fb.set_outer_vid(VlanId::from_tci(1)),
            Err(FrameBufError::NotTagged)
        );
        assert_eq!(fb.pop_vlan(), Err(FrameBufError::NotTagged));
    }

    #[test]
    fn outer_headers_go_on_and_come_off_at_the_front() {
        let mut buf = [0u8; 30];
        buf[8..26].copy_from_slice(&UNTAGGED);
        let mut fb = FrameBuf::new(&mut buf, 8, 18).unwrap();
        fb.push_front(8).unwrap().copy_from_slice(&[7; 8]);
        assert_eq!(&fb.frame()[..8], &[7; 8]);
        assert_eq!(&fb.frame()[8..], &UNTAGGED);
        assert_eq!(fb.push_front(1), Err(FrameBufError::NoRoom));
        fb.pull_front(8).unwrap();
        assert_eq!(fb.frame(), &UNTAGGED);
        assert_eq!(fb.pull_front(19), Err(FrameBufError::TooShort));
    }

    #[test]
    fn macs_and_bounds() {
        let mut buf = UNTAGGED;
        let mut fb = FrameBuf::new(&mut buf, 0, 18).unwrap();
        fb.set_dst_mac(EthernetAddress([9; 6])).unwrap();
        fb.set_src_mac(EthernetAddress([8; 6])).unwrap();
        assert_eq!(&fb.frame()[..12], &[9, 9, 9, 9, 9, 9, 8, 8, 8, 8, 8, 8]);
        assert_eq!(
            FrameBuf::new(&mut buf, 1, 18).unwrap_err(),
            FrameBufError::OutOfBounds
        );
        assert_eq!(
            FrameBuf::new(&mut buf, usize::MAX, 2).unwrap_err(),
            FrameBufError::OutOfBounds
        );
        let mut short = [0u8; 16];
        let mut fb = FrameBuf::new(&mut short, 4, 10).unwrap();
        assert_eq!(
            fb.push_vlan(EtherType::Vlan, tci()),
            Err(FrameBufError::TooShort)
        );
    }
}
