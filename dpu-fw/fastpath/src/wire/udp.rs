//! UDP headers (RFC 768). The length field covers header and payload; in a
//! first IPv4/IPv6 fragment it covers the whole datagram, so the frame
//! parser checks it as [`Capture::Snapped`] there. Over IPv4 a zero
//! checksum means "not computed" (and a computed zero is sent as 0xFFFF);
//! over IPv6 a checksum is mandatory except for tunnels (RFC 6935).

use core::fmt;

use zerocopy::byteorder::network_endian::U16;
use zerocopy::{
    ByteSlice, ByteSliceMut, FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice,
    Unaligned,
};

use super::{BufferTooShort, Capture, Header, ParseErrorKind, checksum};

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct UdpHeader {
    src_port: U16,
    dst_port: U16,
    len: U16,
    checksum: U16,
}

/// A zero-copy view of a UDP datagram: header and payload up to the length
/// field.
pub struct UdpPacket<B> {
    header: Ref<B, UdpHeader>,
    payload: B,
}

impl<B: ByteSlice> fmt::Debug for UdpPacket<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpPacket")
            .field("src_port", &self.src_port())
            .field("dst_port", &self.dst_port())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl<B: SplitByteSlice> UdpPacket<B> {
    /// Header length.
    pub const HEADER_LEN: usize = 8;

    /// A view of `buf` after checking the length field (see [`Capture`]).
    ///
    /// # Errors
    /// Truncated header, a length below 8, or (for [`Capture::Whole`]) a
    /// length beyond the buffer.
    pub fn new_checked(buf: B, capture: Capture) -> Result<Self, ParseErrorKind> {
        let (header, rest) = Ref::<B, UdpHeader>::from_prefix(buf)
            .map_err(|_| ParseErrorKind::Truncated(Header::Udp))?;
        let payload_len = usize::from(header.len.get())
            .checked_sub(Self::HEADER_LEN)
            .ok_or(ParseErrorKind::BadLength(Header::Udp))?;
        let payload = capture.cut(rest, payload_len, Header::Udp)?;
        Ok(Self { header, payload })
    }
}

impl<B: ByteSlice> UdpPacket<B> {
    /// Source port.
    #[must_use]
    pub fn src_port(&self) -> u16 {
        self.header.src_port.get()
    }

    /// Destination port.
    #[must_use]
    pub fn dst_port(&self) -> u16 {
        self.header.dst_port.get()
    }

    /// Length field (header and payload).
    #[must_use]
    pub fn len(&self) -> u16 {
        self.header.len.get()
    }

    /// True when the length field says there is no payload.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() <= 8
    }

    /// Checksum field.
    #[must_use]
    pub fn checksum(&self) -> u16 {
        self.header.checksum.get()
    }

    /// Payload.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// True when the checksum verifies given the pseudo-header sum, or is
    /// zero ("not computed", IPv4 only; the caller decides for IPv6).
    #[must_use]
    pub fn verify_checksum(&self, pseudo_header: u64) -> bool {
        self.checksum() == 0 || checksum::verifies(pseudo_header + self.sum())
    }

    fn sum(&self) -> u64 {
        checksum::sum(self.header.as_bytes()) + checksum::sum(&self.payload)
    }
}

impl<B: ByteSliceMut> UdpPacket<B> {
    /// Writes the source port (checksum untouched).
    pub fn set_src_port(&mut self, port: u16) {
        self.header.src_port.set(port);
    }

    /// Writes the destination port (checksum untouched).
    pub fn set_dst_port(&mut self, port: u16) {
        self.header.dst_port.set(port);
    }

    /// Writes the checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        self.header.checksum.set(value);
    }

    /// Computes and writes the checksum, given the pseudo-header sum; a
    /// computed zero is written as 0xFFFF.
    pub fn fill_checksum(&mut self, pseudo_header: u64) {
        self.header.checksum.set(0);
        let value = checksum::finish(pseudo_header + self.sum());
        self.header
            .checksum
            .set(if value == 0 { 0xFFFF } else { value });
    }

    /// Payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.payload
    }
}

/// The fields of a UDP header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct UdpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Payload length.
    pub payload_len: u16,
}

impl UdpRepr {
    /// Reads a checked datagram.
    #[must_use]
    pub fn parse<B: ByteSlice>(packet: &UdpPacket<B>) -> Self {
        Self {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: packet.len().saturating_sub(8),
        }
    }

    /// Bytes [`Self::emit`] writes.
    #[must_use]
    pub const fn buffer_len(&self) -> usize {
        UdpPacket::<&[u8]>::HEADER_LEN
    }

    /// Writes the header at the start of `buf` with a zero checksum; fill
    /// it with [`UdpPacket::fill_checksum`] once the payload is in place.
    ///
    /// # Errors
    /// [`BufferTooShort`] when `buf` cannot hold it.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), BufferTooShort> {
        let header = UdpHeader {
            src_port: U16::new(self.src_port),
            dst_port: U16::new(self.dst_port),
            len: U16::new(self.payload_len.saturating_add(8)),
            checksum: U16::ZERO,
        };
        super::write_header(buf, &header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 5353 -> 53, length 12, checksum 0 (not computed), payload 4 bytes.
    const DATAGRAM: [u8; 13] = [0x14, 0xe9, 0x00, 0x35, 0x00, 0x0c, 0, 0, 1, 2, 3, 4, 0xEE];

    #[test]
    fn parse_emit_round_trip() {
        let packet = UdpPacket::new_checked(&DATAGRAM[..], Capture::Whole).unwrap();
        let repr = UdpRepr::parse(&packet);
        assert_eq!(
            repr,
            UdpRepr {
                src_port: 5353,
                dst_port: 53,
                payload_len: 4
            }
        );
        assert_eq!(packet.payload(), &[1, 2, 3, 4], "surplus byte not payload");
        assert!(packet.verify_checksum(0));
        let mut buf = [0u8; 8];
        repr.emit(&mut buf).unwrap();
        assert_eq!(buf, DATAGRAM[..8]);
    }

    #[test]
    fn malformed_headers() {
        for n in 0..8 {
            assert_eq!(
                UdpPacket::new_checked(&DATAGRAM[..n], Capture::Whole).unwrap_err(),
                ParseErrorKind::Truncated(Header::Udp)
            );
        }
        let mut d = DATAGRAM;
        d[5] = 7;
        assert_eq!(
            UdpPacket::new_checked(&d[..], Capture::Whole).unwrap_err(),
            ParseErrorKind::BadLength(Header::Udp)
        );
        d[5] = 14;
        assert_eq!(
            UdpPacket::new_checked(&d[..], Capture::Whole).unwrap_err(),
            ParseErrorKind::LengthBeyondFrame(Header::Udp)
        );
        assert_eq!(
            UdpPacket::new_checked(&d[..], Capture::Snapped)
                .unwrap()
                .payload()
                .len(),
            5
        );
    }

    #[test]
    fn computed_zero_checksum_is_sent_as_all_ones() {
        // Choose a pseudo-header sum that makes the datagram sum to 0xFFFF.
        let mut d = [0u8; 8];
        UdpRepr {
            src_port: 0,
            dst_port: 0,
            payload_len: 0,
        }
        .emit(&mut d)
        .unwrap();
        let pseudo = u64::from(0xFFFFu16 - 8);
        let mut packet = UdpPacket::new_checked(&mut d[..], Capture::Whole).unwrap();
        packet.fill_checksum(pseudo);
        assert_eq!(packet.checksum(), 0xFFFF);
        assert!(packet.verify_checksum(pseudo));
    }
}
