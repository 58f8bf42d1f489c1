//! IPv4 headers (RFC 791 3.1), with options (skipped, but covered by the
//! header checksum) and fragmentation fields (RFC 791 2.3: only the first
//! fragment, offset 0, carries the transport header). DSCP and ECN are the
//! RFC 2474 / RFC 3168 split of the old type-of-service octet.

use core::fmt;
use core::net::Ipv4Addr;

use chaingate_shared::IpProtocol;
use zerocopy::byteorder::network_endian::U16;
use zerocopy::{
    ByteSlice, ByteSliceMut, FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice,
    Unaligned,
};

use super::{BufferTooShort, Capture, Header, ParseErrorKind, checksum};

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Ipv4Header {
    version_ihl: u8,
    dscp_ecn: u8,
    total_len: U16,
    ident: U16,
    flags_frag: U16,
    ttl: u8,
    protocol: u8,
    checksum: U16,
    src: [u8; 4],
    dst: [u8; 4],
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1FFF;

/// A zero-copy view of an IPv4 packet: header, options, and the payload up
/// to the total length (Ethernet padding after it is not part of the view).
pub struct Ipv4Packet<B> {
    header: Ref<B, Ipv4Header>,
    options: B,
    payload: B,
}

impl<B: ByteSlice> fmt::Debug for Ipv4Packet<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ipv4Packet")
            .field("src", &self.src_addr())
            .field("dst", &self.dst_addr())
            .field("protocol", &self.protocol())
            .field("total_len", &self.total_len())
            .finish_non_exhaustive()
    }
}

impl<B: SplitByteSlice> Ipv4Packet<B> {
    /// Length of the header without options.
    pub const MIN_HEADER_LEN: usize = 20;

    /// A view of `buf` after checking version, header length and total
    /// length against the buffer (see [`Capture`]). The checksum is checked
    /// by [`Self::verify_checksum`].
    ///
    /// # Errors
    /// Truncated header, bad version, header length below 20, total length
    /// below the header length, or (for [`Capture::Whole`]) beyond the
    /// buffer.
    pub fn new_checked(buf: B, capture: Capture) -> Result<Self, ParseErrorKind> {
        let (header, rest) = Ref::<B, Ipv4Header>::from_prefix(buf)
            .map_err(|_| ParseErrorKind::Truncated(Header::Ipv4))?;
        if header.version_ihl >> 4 != 4 {
            return Err(ParseErrorKind::BadVersion(Header::Ipv4));
        }
        let header_len = usize::from(header.version_ihl & 0x0F) * 4;
        let options_len = header_len
            .checked_sub(Self::MIN_HEADER_LEN)
            .ok_or(ParseErrorKind::BadHeaderLength(Header::Ipv4))?;
        let (options, rest) = rest
            .split_at(options_len)
            .map_err(|_| ParseErrorKind::Truncated(Header::Ipv4))?;
        let payload_len = usize::from(header.total_len.get())
            .checked_sub(header_len)
            .ok_or(ParseErrorKind::BadLength(Header::Ipv4))?;
        let payload = capture.cut(rest, payload_len, Header::Ipv4)?;
        Ok(Self {
            header,
            options,
            payload,
        })
    }
}

impl<B: ByteSlice> Ipv4Packet<B> {
    /// Header length in bytes, options included.
    #[must_use]
    pub fn header_len(&self) -> usize {
        usize::from(self.header.version_ihl & 0x0F) * 4
    }

    /// Differentiated services code point.
    #[must_use]
    pub fn dscp(&self) -> u8 {
        self.header.dscp_ecn >> 2
    }

    /// Explicit congestion notification bits.
    #[must_use]
    pub fn ecn(&self) -> u8 {
        self.header.dscp_ecn & 0x3
    }

    /// Total length field.
    #[must_use]
    pub fn total_len(&self) -> u16 {
        self.header.total_len.get()
    }

    /// Identification.
    #[must_use]
    pub fn ident(&self) -> u16 {
        self.header.ident.get()
    }

    /// Don't-fragment flag.
    #[must_use]
    pub fn dont_frag(&self) -> bool {
        self.header.flags_frag.get() & FLAG_DF != 0
    }

    /// More-fragments flag.
    #[must_use]
    pub fn more_frags(&self) -> bool {
        self.header.flags_frag.get() & FLAG_MF != 0
    }

    /// Fragment offset in bytes.
    #[must_use]
    pub fn frag_offset(&self) -> u16 {
        (self.header.flags_frag.get() & FRAG_OFFSET_MASK) << 3
    }

    /// Time to live.
    #[must_use]
    pub fn ttl(&self) -> u8 {
        self.header.ttl
    }

    /// Protocol of the payload.
    #[must_use]
    pub fn protocol(&self) -> IpProtocol {
        IpProtocol::from(self.header.protocol)
    }

    /// Header checksum field.
    #[must_use]
    pub fn checksum(&self) -> u16 {
        self.header.checksum.get()
    }

    /// Source address.
    #[must_use]
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.header.src)
    }

    /// Destination address.
    #[must_use]
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.header.dst)
    }

    /// Options bytes (possibly empty).
    #[must_use]
    pub fn options(&self) -> &[u8] {
        &self.options
    }

    /// Payload up to the total length (for [`Capture::Snapped`], up to what
    /// the buffer holds).
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// True when the header checksum (options included) verifies.
    #[must_use]
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::verifies(self.header_sum())
    }

    fn header_sum(&self) -> u64 {
        let fixed = <&[u8; 20]>::try_from(self.header.as_bytes()).map_or(0, checksum::sum20);
        if self.options.is_empty() {
            fixed
        } else {
            fixed + checksum::sum(&self.options)
        }
    }
}

impl<B: ByteSliceMut> Ipv4Packet<B> {
    /// Writes the source address (checksum untouched).
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.header.src = addr.octets();
    }

    /// Writes the destination address (checksum untouched).
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.header.dst = addr.octets();
    }

    /// Writes the time to live (checksum untouched).
    pub fn set_ttl(&mut self, ttl: u8) {
        self.header.ttl = ttl;
    }

    /// Writes the checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        self.header.checksum.set(value);
    }

    /// Computes and writes the header checksum.
    pub fn fill_checksum(&mut self) {
        self.header.checksum.set(0);
        let acc = self.header_sum();
        self.header.checksum.set(checksum::finish(acc));
    }

    /// Payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.payload
    }
}

/// The fields of an IPv4 header the gateway uses. Options are skipped on
/// parse and not emitted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Ipv4Repr {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol of the payload.
    pub protocol: IpProtocol,
    /// Payload length (total length minus header length).
    pub payload_len: u16,
    /// Time to live.
    pub ttl: u8,
    /// DSCP (6 bits).
    pub dscp: u8,
    /// ECN (2 bits).
    pub ecn: u8,
    /// Identification.
    pub ident: u16,
    /// Don't-fragment flag.
    pub dont_frag: bool,
    /// More-fragments flag.
    pub more_frags: bool,
    /// Fragment offset in bytes (a multiple of 8).
    pub frag_offset: u16,
}

impl Ipv4Repr {
    /// Reads a checked packet, verifying its header checksum.
    ///
    /// # Errors
    /// [`ParseErrorKind::BadChecksum`].
    pub fn parse<B: ByteSlice>(packet: &Ipv4Packet<B>) -> Result<Self, ParseErrorKind> {
        if !packet.verify_checksum() {
            return Err(ParseErrorKind::BadChecksum(Header::Ipv4));
        }
        // The header length fits a u16 because the total length does.
        #[allow(clippy::cast_possible_truncation)]
        let header_len = packet.header_len() as u16;
        Ok(Self {
            src: packet.src_addr(),
            dst: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: packet.total_len().saturating_sub(header_len),
            ttl: packet.ttl(),
            dscp: packet.dscp(),
            ecn: packet.ecn(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
            more_frags: packet.more_frags(),
            frag_offset: packet.frag_offset(),
        })
    }

    /// Bytes [`Self::emit`] writes: the header without options.
    #[must_use]
    pub const fn buffer_len(&self) -> usize {
        Ipv4Packet::<&[u8]>::MIN_HEADER_LEN
    }

    /// Writes the header (with its checksum) at the start of `buf`.
    ///
    /// # Errors
    /// [`BufferTooShort`] when `buf` cannot hold it.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), BufferTooShort> {
        let mut flags_frag = (self.frag_offset >> 3) & FRAG_OFFSET_MASK;
        if self.dont_frag {
            flags_frag |= FLAG_DF;
        }
        if self.more_frags {
            flags_frag |= FLAG_MF;
        }
        let mut header = Ipv4Header {
            version_ihl: 0x45,
            dscp_ecn: (self.dscp << 2) | (self.ecn & 0x3),
            total_len: U16::new(self.payload_len.saturating_add(20)),
            ident: U16::new(self.ident),
            flags_frag: U16::new(flags_frag),
            ttl: self.ttl,
            protocol: self.protocol.number(),
            checksum: U16::ZERO,
            src: self.src.octets(),
            dst: self.dst.octets(),
        };
        header.checksum = U16::new(checksum::finish(checksum::sum(header.as_bytes())));
        super::write_header(buf, &header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 10.0.0.1 -> 10.0.0.2, UDP, total length 28 (8 payload bytes), TTL 64,
    // DF, checksum 0x149b, then two bytes of Ethernet padding.
    const PACKET: [u8; 30] = [
        0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x14, 0x9b, 10, 0, 0, 1, 10, 0,
        0, 2, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0,
    ];

    fn repr() -> Ipv4Repr {
        Ipv4Repr {
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            protocol: IpProtocol::Udp,
            payload_len: 8,
            ttl: 64,
            dscp: 0,
            ecn: 0,
            ident: 0x1234,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        }
    }

    #[test]
    fn parse_fixture() {
        let packet = Ipv4Packet::new_checked(&PACKET[..], Capture::Whole).unwrap();
        assert_eq!(Ipv4Repr::parse(&packet).unwrap(), repr());
        assert_eq!(
            packet.payload(),
            &[1, 2, 3, 4, 5, 6, 7, 8],
            "padding cut off"
        );
    }

    #[test]
    fn emit_fixture_and_round_trip() {
        let mut buf = [0u8; 20];
        repr().emit(&mut buf).unwrap();
        assert_eq!(buf, PACKET[..20]);
    }

    #[test]
    fn options_are_skipped_but_checksummed() {
        // IHL 6: one 4-byte option (NOP NOP NOP EOL).
        let mut p = [0u8; 28];
        p[..20].copy_from_slice(&PACKET[..20]);
        p[0] = 0x46;
        p[3] = 28;
        p[20..24].copy_from_slice(&[1, 1, 1, 0]);
        let mut packet = Ipv4Packet::new_checked(&mut p[..], Capture::Whole).unwrap();
        packet.fill_checksum();
        let packet = Ipv4Packet::new_checked(&p[..], Capture::Whole).unwrap();
        assert_eq!(packet.options(), &[1, 1, 1, 0]);
        assert_eq!(packet.payload().len(), 4);
        assert!(packet.verify_checksum());
        p[21] = 0x44; // damage an option byte
        let packet = Ipv4Packet::new_checked(&p[..], Capture::Whole).unwrap();
        assert_eq!(
            Ipv4Repr::parse(&packet),
            Err(ParseErrorKind::BadChecksum(Header::Ipv4))
        );
    }

    #[test]
    fn malformed_headers() {
        let check = |bytes: &[u8]| Ipv4Packet::new_checked(bytes, Capture::Whole).unwrap_err();
        for n in 0..20 {
            assert_eq!(check(&PACKET[..n]), ParseErrorKind::Truncated(Header::Ipv4));
        }
        let mut p = PACKET;
        p[0] = 0x65;
        assert_eq!(check(&p), ParseErrorKind::BadVersion(Header::Ipv4));
        p[0] = 0x44;
        assert_eq!(check(&p), ParseErrorKind::BadHeaderLength(Header::Ipv4));
        p[0] = 0x4F; // 60-byte header in a 30-byte buffer
        assert_eq!(check(&p), ParseErrorKind::Truncated(Header::Ipv4));
        p[0] = 0x45;
        p[3] = 19; // total length below the header
        assert_eq!(check(&p), ParseErrorKind::BadLength(Header::Ipv4));
        p[3] = 31; // beyond the buffer
        assert_eq!(check(&p), ParseErrorKind::LengthBeyondFrame(Header::Ipv4));
        let snapped = Ipv4Packet::new_checked(&p[..], Capture::Snapped).unwrap();
        assert_eq!(snapped.payload().len(), 10);
    }

    #[test]
    fn fragment_fields() {
        let mut p = PACKET;
        p[6] = 0x20 | 0x01; // MF, offset 0x100 * 8
        p[7] = 0x00;
        let packet = Ipv4Packet::new_checked(&p[..], Capture::Whole).unwrap();
        assert!(packet.more_frags() && !packet.dont_frag());
        assert_eq!(packet.frag_offset(), 0x800);
    }
}
