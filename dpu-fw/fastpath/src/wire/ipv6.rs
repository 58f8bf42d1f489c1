//! IPv6 fixed headers (RFC 8200 3). Extension headers are walked by
//! [`super::ipv6ext`]. The payload length counts everything after the fixed
//! header; a jumbogram (payload length 0 with a hop-by-hop jumbo option,
//! RFC 2675) cannot occur on the Ethernet links the gateway serves and reads
//! as an empty payload.

use core::fmt;
use core::net::Ipv6Addr;

use chaingate_shared::IpProtocol;
use zerocopy::byteorder::network_endian::{U16, U32};
use zerocopy::{
    ByteSlice, ByteSliceMut, FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice,
    Unaligned,
};

use super::{BufferTooShort, Capture, Header, ParseErrorKind};

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Ipv6Header {
    version_tc_flow: U32,
    payload_len: U16,
    next_header: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

/// A zero-copy view of an IPv6 packet: fixed header and the payload up to
/// the payload length.
pub struct Ipv6Packet<B> {
    header: Ref<B, Ipv6Header>,
    payload: B,
}

impl<B: ByteSlice> fmt::Debug for Ipv6Packet<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ipv6Packet")
            .field("src", &self.src_addr())
            .field("dst", &self.dst_addr())
            .field("next_header", &self.next_header())
            .field("payload_len", &self.payload_len())
            .finish_non_exhaustive()
    }
}

impl<B: SplitByteSlice> Ipv6Packet<B> {
    /// Length of the fixed header.
    pub const HEADER_LEN: usize = 40;

    /// A view of `buf` after checking the version and the payload length
    /// against the buffer (see [`Capture`]).
    ///
    /// # Errors
    /// Truncated header, bad version, or (for [`Capture::Whole`]) a payload
    /// length beyond the buffer.
    pub fn new_checked(buf: B, capture: Capture) -> Result<Self, ParseErrorKind> {
        let (header, rest) = Ref::<B, Ipv6Header>::from_prefix(buf)
            .map_err(|_| ParseErrorKind::Truncated(Header::Ipv6))?;
        if header.version_tc_flow.get() >> 28 != 6 {
            return Err(ParseErrorKind::BadVersion(Header::Ipv6));
        }
        let len = usize::from(header.payload_len.get());
        let payload = capture.cut(rest, len, Header::Ipv6)?;
        Ok(Self { header, payload })
    }
}

impl<B: ByteSlice> Ipv6Packet<B> {
    /// Traffic class (DSCP in the high 6 bits, ECN in the low 2).
    #[must_use]
    pub fn traffic_class(&self) -> u8 {
        // Eight bits after the shift and mask.
        #[allow(clippy::cast_possible_truncation)]
        let tc = (self.header.version_tc_flow.get() >> 20) as u8;
        tc
    }

    /// Flow label (20 bits).
    #[must_use]
    pub fn flow_label(&self) -> u32 {
        self.header.version_tc_flow.get() & 0x000F_FFFF
    }

    /// Payload length field.
    #[must_use]
    pub fn payload_len(&self) -> u16 {
        self.header.payload_len.get()
    }

    /// Next header (an extension header or the upper layer).
    #[must_use]
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(self.header.next_header)
    }

    /// Hop limit.
    #[must_use]
    pub fn hop_limit(&self) -> u8 {
        self.header.hop_limit
    }

    /// Source address.
    #[must_use]
    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.header.src)
    }

    /// Destination address.
    #[must_use]
    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.header.dst)
    }

    /// Everything after the fixed header, up to the payload length.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

impl<B: ByteSliceMut> Ipv6Packet<B> {
    /// Writes the source address.
    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        self.header.src = addr.octets();
    }

    /// Writes the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        self.header.dst = addr.octets();
    }

    /// Writes the hop limit.
    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.header.hop_limit = hop_limit;
    }

    /// Payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.payload
    }
}

/// The fields of an IPv6 fixed header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Ipv6Repr {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Next header.
    pub next_header: IpProtocol,
    /// Payload length (extension headers included).
    pub payload_len: u16,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
}

impl Ipv6Repr {
    /// Reads a checked packet.
    #[must_use]
    pub fn parse<B: ByteSlice>(packet: &Ipv6Packet<B>) -> Self {
        Self {
            src: packet.src_addr(),
            dst: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: packet.payload_len(),
            hop_limit: packet.hop_limit(),
            traffic_class: packet.traffic_class(),
            flow_label: packet.flow_label(),
        }
    }

    /// Bytes [`Self::emit`] writes.
    #[must_use]
    pub const fn buffer_len(&self) -> usize {
        Ipv6Packet::<&[u8]>::HEADER_LEN
    }

    /// Writes the fixed header at the start of `buf`.
    ///
    /// # Errors
    /// [`BufferTooShort`] when `buf` cannot hold it.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), BufferTooShort> {
        let header = Ipv6Header {
            version_tc_flow: U32::new(
                (6 << 28) | (u32::from(self.traffic_class) << 20) | (self.flow_label & 0x000F_FFFF),
            ),
            payload_len: U16::new(self.payload_len),
            next_header: self.next_header.number(),
            hop_limit: self.hop_limit,
            src: self.src.octets(),
            dst: self.dst.octets(),
        };
        super::write_header(buf, &header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr() -> Ipv6Repr {
        Ipv6Repr {
            src: "2001:db8::1".parse().unwrap(),
            dst: "2001:db8::2".parse().unwrap(),
            next_header: IpProtocol::Tcp,
            payload_len: 4,
            hop_limit: 64,
            traffic_class: 0xB8,
            flow_label: 0x12345,
        }
    }

    const PACKET: [u8; 44] = [
        0x6B, 0x81, 0x23, 0x45, 0x00, 0x04, 0x06, 0x40, // ver 6, tc 0xB8, flow 0x12345
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, //
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, //
        9, 9, 9, 9,
    ];

    #[test]
    fn parse_emit_round_trip() {
        let packet = Ipv6Packet::new_checked(&PACKET[..], Capture::Whole).unwrap();
        assert_eq!(Ipv6Repr::parse(&packet), repr());
        assert_eq!(packet.payload(), &[9, 9, 9, 9]);
        let mut buf = [0u8; 40];
        repr().emit(&mut buf).unwrap();
        assert_eq!(buf, PACKET[..40]);
    }

    #[test]
    fn malformed_headers() {
        for n in 0..40 {
            assert_eq!(
                Ipv6Packet::new_checked(&PACKET[..n], Capture::Whole).unwrap_err(),
                ParseErrorKind::Truncated(Header::Ipv6)
            );
        }
        let mut p = PACKET;
        p[0] = 0x4B;
        assert_eq!(
            Ipv6Packet::new_checked(&p[..], Capture::Whole).unwrap_err(),
            ParseErrorKind::BadVersion(Header::Ipv6)
        );
        assert_eq!(
            Ipv6Packet::new_checked(&PACKET[..43], Capture::Whole).unwrap_err(),
            ParseErrorKind::LengthBeyondFrame(Header::Ipv6)
        );
        let snapped = Ipv6Packet::new_checked(&PACKET[..43], Capture::Snapped).unwrap();
        assert_eq!(snapped.payload(), &[9, 9, 9]);
    }
}
