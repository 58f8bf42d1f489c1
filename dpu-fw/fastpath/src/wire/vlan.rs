//! IEEE 802.1Q VLAN tags (802.1Q-2018 9.6) and 802.1ad service tags.
//!
//! On the wire a tag is the tag protocol identifier (TPID: 0x8100 for a
//! customer tag, 0x88A8 for a service tag) in the place of the EtherType,
//! followed by this 4-byte view: tag control information (priority code
//! point 3 bits, drop eligible 1 bit, VLAN id 12 bits) and the EtherType of
//! what follows (another TPID for QinQ). The TPID itself belongs to the
//! header before.

use core::fmt;

use chaingate_shared::VlanId;
use zerocopy::byteorder::network_endian::U16;
use zerocopy::{
    ByteSlice, ByteSliceMut, FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice,
    Unaligned,
};

use super::{BufferTooShort, EtherType, Header, ParseErrorKind};

/// Tag control information: priority, drop eligibility and VLAN id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Tci(pub u16);

impl Tci {
    /// A TCI from its parts; `pcp` keeps its low 3 bits.
    #[must_use]
    pub const fn new(pcp: u8, dei: bool, vid: VlanId) -> Self {
        Self((((pcp & 0x7) as u16) << 13) | ((dei as u16) << 12) | vid.get())
    }

    /// Priority code point (0 to 7).
    #[must_use]
    pub const fn pcp(self) -> u8 {
        // Three bits after the shift.
        #[allow(clippy::cast_possible_truncation)]
        let pcp = (self.0 >> 13) as u8;
        pcp
    }

    /// Drop eligible indicator.
    #[must_use]
    pub const fn dei(self) -> bool {
        self.0 & 0x1000 != 0
    }

    /// VLAN identifier.
    #[must_use]
    pub const fn vid(self) -> VlanId {
        VlanId::from_tci(self.0)
    }

    /// The same priority and drop bit with another identifier.
    #[must_use]
    pub const fn with_vid(self, vid: VlanId) -> Self {
        Self((self.0 & !VlanId::MAX) | vid.get())
    }
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct VlanHeader {
    tci: U16,
    ethertype: U16,
}

/// A zero-copy view of the 4 bytes after a TPID.
pub struct VlanPacket<B> {
    header: Ref<B, VlanHeader>,
    payload: B,
}

impl<B: ByteSlice> fmt::Debug for VlanPacket<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VlanPacket")
            .field("tci", &self.tci())
            .field("ethertype", &self.ethertype())
            .finish_non_exhaustive()
    }
}

impl<B: SplitByteSlice> VlanPacket<B> {
    /// Length of the view (the TPID is not part of it).
    pub const HEADER_LEN: usize = 4;

    /// A view of `buf`, which must hold at least the 4 bytes.
    ///
    /// # Errors
    /// [`ParseErrorKind::Truncated`] when `buf` is shorter.
    pub fn new_checked(buf: B) -> Result<Self, ParseErrorKind> {
        let (header, payload) =
            Ref::from_prefix(buf).map_err(|_| ParseErrorKind::Truncated(Header::Vlan))?;
        Ok(Self { header, payload })
    }
}

impl<B: ByteSlice> VlanPacket<B> {
    /// Tag control information.
    #[must_use]
    pub fn tci(&self) -> Tci {
        Tci(self.header.tci.get())
    }

    /// The EtherType field as a number (the frame parser's hot path
    /// compares numbers rather than decoding the enum).
    #[inline]
    pub(crate) fn ethertype_number(&self) -> u16 {
        self.header.ethertype.get()
    }

    /// EtherType of what follows the tag.
    #[must_use]
    pub fn ethertype(&self) -> EtherType {
        EtherType::from(self.header.ethertype.get())
    }

    /// Bytes after the tag.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

impl<B: ByteSliceMut> VlanPacket<B> {
    /// Writes the tag control information.
    pub fn set_tci(&mut self, tci: Tci) {
        self.header.tci.set(tci.0);
    }

    /// Writes the EtherType of what follows.
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        self.header.ethertype.set(ethertype.number());
    }
}

/// The fields of one tag (after its TPID).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VlanRepr {
    /// Priority, drop bit, identifier.
    pub tci: Tci,
    /// EtherType of what follows.
    pub ethertype: EtherType,
}

impl VlanRepr {
    /// Reads a checked tag.
    #[must_use]
    pub fn parse<B: ByteSlice>(packet: &VlanPacket<B>) -> Self {
        Self {
            tci: packet.tci(),
            ethertype: packet.ethertype(),
        }
    }

    /// Bytes [`Self::emit`] writes.
    #[must_use]
    pub const fn buffer_len(&self) -> usize {
        VlanPacket::<&[u8]>::HEADER_LEN
    }

    /// Writes the tag at the start of `buf`.
    ///
    /// # Errors
    /// [`BufferTooShort`] when `buf` cannot hold it.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), BufferTooShort> {
        let header = VlanHeader {
            tci: U16::new(self.tci.0),
            ethertype: U16::new(self.ethertype.number()),
        };
        super::write_header(buf, &header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // PCP 5, DEI 1, VID 0x123, then IPv6.
    const TAG: [u8; 4] = [0xB1, 0x23, 0x86, 0xDD];

    #[test]
    fn parse_emit_round_trip() {
        let packet = VlanPacket::new_checked(&TAG[..]).unwrap();
        let repr = VlanRepr::parse(&packet);
        assert_eq!(repr.tci.pcp(), 5);
        assert!(repr.tci.dei());
        assert_eq!(repr.tci.vid().get(), 0x123);
        assert_eq!(repr.ethertype, EtherType::Ipv6);
        let mut buf = [0u8; 4];
        repr.emit(&mut buf).unwrap();
        assert_eq!(buf, TAG);
        assert_eq!(Tci::new(5, true, VlanId::from_tci(0x123)), repr.tci);
    }

    #[test]
    fn rewriting_the_id_keeps_priority() {
        let tci = Tci(0xB123).with_vid(VlanId::from_tci(7));
        assert_eq!(tci, Tci(0xB007));
    }

    #[test]
    fn truncated() {
        for n in 0..4 {
            assert_eq!(
                VlanPacket::new_checked(&TAG[..n]).unwrap_err(),
                ParseErrorKind::Truncated(Header::Vlan)
            );
        }
    }
}
