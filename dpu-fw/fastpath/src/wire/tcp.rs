//! TCP headers (RFC 9293 3.1). Options are skipped: the gateway needs the
//! ports and the flags (session state), not the options. The checksum
//! covers a pseudo-header of the IP layer, which the caller supplies as a
//! sum (see [`super::checksum::pseudo_header_v4`]).

use core::fmt;

use zerocopy::byteorder::network_endian::{U16, U32};
use zerocopy::{
    ByteSlice, ByteSliceMut, FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice,
    Unaligned,
};

use super::{BufferTooShort, Header, ParseErrorKind, checksum};

/// The TCP control bits (the low byte of the flags field).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// No more data from sender.
    pub const FIN: Self = Self(0x01);
    /// Synchronise sequence numbers.
    pub const SYN: Self = Self(0x02);
    /// Reset the connection.
    pub const RST: Self = Self(0x04);
    /// Push function.
    pub const PSH: Self = Self(0x08);
    /// Acknowledgment field is significant.
    pub const ACK: Self = Self(0x10);
    /// Urgent pointer field is significant.
    pub const URG: Self = Self(0x20);
    /// ECN echo.
    pub const ECE: Self = Self(0x40);
    /// Congestion window reduced.
    pub const CWR: Self = Self(0x80);

    /// True when every bit of `other` is set.
    #[must_use]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Union.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl core::ops::BitOr for TcpFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
        let mut first = true;
        for (bit, name) in NAMES.iter().enumerate() {
            if self.0 & (1 << bit) != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct TcpHeader {
    src_port: U16,
    dst_port: U16,
    seq: U32,
    ack: U32,
    offset_reserved: u8,
    flags: u8,
    window: U16,
    checksum: U16,
    urgent: U16,
}

/// A zero-copy view of a TCP segment: header, options, payload.
pub struct TcpPacket<B> {
    header: Ref<B, TcpHeader>,
    options: B,
    payload: B,
}

impl<B: ByteSlice> fmt::Debug for TcpPacket<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpPacket")
            .field("src_port", &self.src_port())
            .field("dst_port", &self.dst_port())
            .field("flags", &self.flags())
            .finish_non_exhaustive()
    }
}

impl<B: SplitByteSlice> TcpPacket<B> {
    /// Length of the header without options.
    pub const MIN_HEADER_LEN: usize = 20;

    /// A view of `buf` after checking the data offset.
    ///
    /// # Errors
    /// Truncated header (options included) or a data offset below 5.
    pub fn new_checked(buf: B) -> Result<Self, ParseErrorKind> {
        let (header, rest) = Ref::<B, TcpHeader>::from_prefix(buf)
            .map_err(|_| ParseErrorKind::Truncated(Header::Tcp))?;
        let header_len = usize::from(header.offset_reserved >> 4) * 4;
        let options_len = header_len
            .checked_sub(Self::MIN_HEADER_LEN)
            .ok_or(ParseErrorKind::BadHeaderLength(Header::Tcp))?;
        let (options, payload) = rest
            .split_at(options_len)
            .map_err(|_| ParseErrorKind::Truncated(Header::Tcp))?;
        Ok(Self {
            header,
            options,
            payload,
        })
    }
}

impl<B: ByteSlice> TcpPacket<B> {
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

    /// Sequence number.
    #[must_use]
    pub fn seq(&self) -> u32 {
        self.header.seq.get()
    }

    /// Acknowledgment number.
    #[must_use]
    pub fn ack(&self) -> u32 {
        self.header.ack.get()
    }

    /// Header length in bytes, options included.
    #[must_use]
    pub fn header_len(&self) -> usize {
        usize::from(self.header.offset_reserved >> 4) * 4
    }

    /// Control bits.
    #[must_use]
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.header.flags)
    }

    /// Window.
    #[must_use]
    pub fn window(&self) -> u16 {
        self.header.window.get()
    }

    /// Checksum field.
    #[must_use]
    pub fn checksum(&self) -> u16 {
        self.header.checksum.get()
    }

    /// Options bytes.
    #[must_use]
    pub fn options(&self) -> &[u8] {
        &self.options
    }

    /// Payload.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// True when the checksum verifies, given the pseudo-header sum.
    #[must_use]
    pub fn verify_checksum(&self, pseudo_header: u64) -> bool {
        checksum::verifies(pseudo_header + self.sum())
    }

    fn sum(&self) -> u64 {
        checksum::sum(self.header.as_bytes())
            + checksum::sum(&self.options)
            + checksum::sum(&self.payload)
    }
}

impl<B: ByteSliceMut> TcpPacket<B> {
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

    /// Computes and writes the checksum, given the pseudo-header sum.
    pub fn fill_checksum(&mut self, pseudo_header: u64) {
        self.header.checksum.set(0);
        let value = checksum::finish(pseudo_header + self.sum());
        self.header.checksum.set(value);
    }

    /// Payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.payload
    }
}

/// The fields of a TCP header the gateway uses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TcpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Control bits.
    pub flags: TcpFlags,
    /// Window.
    pub window: u16,
}

impl TcpRepr {
    /// Reads a checked segment.
    #[must_use]
    pub fn parse<B: ByteSlice>(packet: &TcpPacket<B>) -> Self {
        Self {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq: packet.seq(),
            ack: packet.ack(),
            flags: packet.flags(),
            window: packet.window(),
        }
    }

    /// Bytes [`Self::emit`] writes: the header without options.
    #[must_use]
    pub const fn buffer_len(&self) -> usize {
        TcpPacket::<&[u8]>::MIN_HEADER_LEN
    }

    /// Writes the header at the start of `buf` with a zero checksum; fill
    /// it with [`TcpPacket::fill_checksum`] once the payload is in place.
    ///
    /// # Errors
    /// [`BufferTooShort`] when `buf` cannot hold it.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), BufferTooShort> {
        let header = TcpHeader {
            src_port: U16::new(self.src_port),
            dst_port: U16::new(self.dst_port),
            seq: U32::new(self.seq),
            ack: U32::new(self.ack),
            offset_reserved: 5 << 4,
            flags: self.flags.0,
            window: U16::new(self.window),
            checksum: U16::ZERO,
            urgent: U16::ZERO,
        };
        super::write_header(buf, &header)
    }
}

#[cfg(test)]
mod tests {
    use core::net::Ipv4Addr;

    use chaingate_shared::IpProtocol;

    use super::*;

    // 1234 -> 80, seq 1, ack 0, data offset 6 (one 4-byte option: MSS
    // 1460), SYN, window 65535, checksum 0x7f01 for 10.0.0.1 -> 10.0.0.2.
    const SEGMENT: [u8; 24] = [
        0x04, 0xd2, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x60, 0x02, 0xff, 0xff, 0x7f, 0x01, 0, 0,
        0x02, 0x04, 0x05, 0xb4,
    ];

    fn pseudo() -> u64 {
        checksum::pseudo_header_v4(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            IpProtocol::Tcp,
            24,
        )
    }

    #[test]
    fn parse_fixture() {
        let packet = TcpPacket::new_checked(&SEGMENT[..]).unwrap();
        let repr = TcpRepr::parse(&packet);
        assert_eq!((repr.src_port, repr.dst_port), (1234, 80));
        assert_eq!(repr.flags, TcpFlags::SYN);
        assert_eq!(packet.options(), &[0x02, 0x04, 0x05, 0xb4]);
        assert!(packet.payload().is_empty());
        assert!(packet.verify_checksum(pseudo()));
    }

    #[test]
    fn emit_then_fill_checksum() {
        let mut buf = [0u8; 20];
        let repr = TcpRepr {
            src_port: 1234,
            dst_port: 80,
            seq: 1,
            ack: 0,
            flags: TcpFlags::SYN | TcpFlags::ACK,
            window: 512,
        };
        repr.emit(&mut buf).unwrap();
        let mut packet = TcpPacket::new_checked(&mut buf[..]).unwrap();
        let pseudo = checksum::pseudo_header_v4(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            IpProtocol::Tcp,
            20,
        );
        packet.fill_checksum(pseudo);
        let packet = TcpPacket::new_checked(&buf[..]).unwrap();
        assert!(packet.verify_checksum(pseudo));
        assert_eq!(TcpRepr::parse(&packet), repr);
    }

    #[test]
    fn malformed_headers() {
        for n in 0..24 {
            assert_eq!(
                TcpPacket::new_checked(&SEGMENT[..n]).unwrap_err(),
                ParseErrorKind::Truncated(Header::Tcp)
            );
        }
        let mut s = SEGMENT;
        s[12] = 0x40;
        assert_eq!(
            TcpPacket::new_checked(&s[..]).unwrap_err(),
            ParseErrorKind::BadHeaderLength(Header::Tcp)
        );
    }

    #[test]
    fn flags_print_by_name() {
        extern crate std;
        assert_eq!(
            std::format!("{:?}", TcpFlags::SYN | TcpFlags::ACK),
            "SYN|ACK"
        );
        assert_eq!(std::format!("{:?}", TcpFlags::default()), "-");
    }
}
