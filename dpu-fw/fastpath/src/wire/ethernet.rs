//! Ethernet II frames (IEEE 802.3-2018 3.1.1, DIX framing): destination and
//! source MAC, EtherType, payload. The frame check sequence is not part of
//! the buffers the fast path sees. An EtherType field below 0x0600 is an
//! 802.3 length (LLC frames such as STP); it is reported as an unknown
//! EtherType, not as an error.

use core::fmt;

use zerocopy::byteorder::network_endian::U16;
use zerocopy::{
    ByteSlice, ByteSliceMut, FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice,
    Unaligned,
};

use super::{BufferTooShort, Header, ParseErrorKind};

chaingate_shared::code_enum! {
    /// EtherType (IEEE 802 numbers), as found in Ethernet II, 802.1Q tags
    /// and Geneve's protocol type.
    pub enum EtherType: u16 {
        /// IPv4.
        Ipv4 = 0x0800,
        /// ARP.
        Arp = 0x0806,
        /// Transparent Ethernet bridging: an Ethernet frame follows (Geneve).
        TransparentBridging = 0x6558,
        /// 802.1Q customer VLAN tag (C-tag).
        Vlan = 0x8100,
        /// IPv6.
        Ipv6 = 0x86DD,
        /// 802.1ad service VLAN tag (S-tag, the outer tag of QinQ).
        QinQ = 0x88A8,
    }
}

impl EtherType {
    /// True for the two tag protocol identifiers the parser unwraps.
    #[must_use]
    pub const fn is_vlan_tag(self) -> bool {
        matches!(self.number(), 0x8100 | 0x88A8)
    }
}

/// A 48-bit MAC address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: Self = Self([0xFF; 6]);

    /// The group bit (I/G) of the first octet.
    #[must_use]
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct EthernetHeader {
    dst: [u8; 6],
    src: [u8; 6],
    ethertype: U16,
}

/// A zero-copy view of an Ethernet II frame.
pub struct EthernetFrame<B> {
    header: Ref<B, EthernetHeader>,
    payload: B,
}

impl<B> fmt::Debug for EthernetFrame<B>
where
    B: ByteSlice,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EthernetFrame")
            .field("dst", &self.dst_addr())
            .field("src", &self.src_addr())
            .field("ethertype", &self.ethertype())
            .finish_non_exhaustive()
    }
}

impl<B: SplitByteSlice> EthernetFrame<B> {
    /// Header length.
    pub const HEADER_LEN: usize = 14;

    /// A view of `buf`, which must hold at least the header.
    ///
    /// # Errors
    /// [`ParseErrorKind::Truncated`] when `buf` is shorter than the header.
    pub fn new_checked(buf: B) -> Result<Self, ParseErrorKind> {
        let (header, payload) =
            Ref::from_prefix(buf).map_err(|_| ParseErrorKind::Truncated(Header::Ethernet))?;
        Ok(Self { header, payload })
    }
}

impl<B: ByteSlice> EthernetFrame<B> {
    /// Destination MAC.
    #[must_use]
    pub fn dst_addr(&self) -> EthernetAddress {
        EthernetAddress(self.header.dst)
    }

    /// Source MAC.
    #[must_use]
    pub fn src_addr(&self) -> EthernetAddress {
        EthernetAddress(self.header.src)
    }

    /// The EtherType field as a number (the frame parser's hot path
    /// compares numbers rather than decoding the enum).
    #[inline]
    pub(crate) fn ethertype_number(&self) -> u16 {
        self.header.ethertype.get()
    }

    /// EtherType (or TPID of the first VLAN tag).
    #[must_use]
    pub fn ethertype(&self) -> EtherType {
        EtherType::from(self.header.ethertype.get())
    }

    /// Bytes after the header.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

impl<B: ByteSliceMut> EthernetFrame<B> {
    /// Writes the destination MAC.
    pub fn set_dst_addr(&mut self, addr: EthernetAddress) {
        self.header.dst = addr.0;
    }

    /// Writes the source MAC.
    pub fn set_src_addr(&mut self, addr: EthernetAddress) {
        self.header.src = addr.0;
    }

    /// Writes the EtherType.
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        self.header.ethertype.set(ethertype.number());
    }

    /// Bytes after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.payload
    }
}

/// The fields of an Ethernet II header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EthernetRepr {
    /// Destination MAC.
    pub dst: EthernetAddress,
    /// Source MAC.
    pub src: EthernetAddress,
    /// EtherType of the payload (or TPID of the first tag).
    pub ethertype: EtherType,
}

impl EthernetRepr {
    /// Reads the header of a checked frame.
    #[must_use]
    pub fn parse<B: ByteSlice>(frame: &EthernetFrame<B>) -> Self {
        Self {
            dst: frame.dst_addr(),
            src: frame.src_addr(),
            ethertype: frame.ethertype(),
        }
    }

    /// Bytes [`Self::emit`] writes.
    #[must_use]
    pub const fn buffer_len(&self) -> usize {
        EthernetFrame::<&[u8]>::HEADER_LEN
    }

    /// Writes the header at the start of `buf`.
    ///
    /// # Errors
    /// [`BufferTooShort`] when `buf` cannot hold the header.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), BufferTooShort> {
        let header = EthernetHeader {
            dst: self.dst.0,
            src: self.src.0,
            ethertype: U16::new(self.ethertype.number()),
        };
        super::write_header(buf, &header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: [u8; 18] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // dst
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // src
        0x08, 0x00, // IPv4
        0xde, 0xad, 0xbe, 0xef, // payload
    ];

    fn repr() -> EthernetRepr {
        EthernetRepr {
            dst: EthernetAddress([2, 0, 0, 0, 0, 2]),
            src: EthernetAddress([2, 0, 0, 0, 0, 1]),
            ethertype: EtherType::Ipv4,
        }
    }

    #[test]
    fn parse_fixture() {
        let frame = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(EthernetRepr::parse(&frame), repr());
        assert_eq!(frame.payload(), &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn emit_fixture_and_round_trip() {
        let mut buf = [0u8; 18];
        repr().emit(&mut buf).unwrap();
        buf[14..].copy_from_slice(&FRAME[14..]);
        assert_eq!(buf, FRAME);
        let frame = EthernetFrame::new_checked(&buf[..]).unwrap();
        assert_eq!(EthernetRepr::parse(&frame), repr());
    }

    #[test]
    fn truncated_at_every_length() {
        for n in 0..EthernetFrame::<&[u8]>::HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&FRAME[..n]).unwrap_err(),
                ParseErrorKind::Truncated(Header::Ethernet)
            );
        }
        let mut short = [0u8; 13];
        assert_eq!(
            repr().emit(&mut short),
            Err(BufferTooShort {
                needed: 14,
                available: 13
            })
        );
    }

    #[test]
    fn unknown_ethertype_is_data() {
        assert_eq!(EtherType::from(0x0026), EtherType::Unknown(0x0026));
        assert_eq!(EtherType::Unknown(0x0800), EtherType::Ipv4);
        assert!(EtherType::QinQ.is_vlan_tag() && EtherType::Vlan.is_vlan_tag());
        assert!(!EtherType::Ipv4.is_vlan_tag());
    }
}
