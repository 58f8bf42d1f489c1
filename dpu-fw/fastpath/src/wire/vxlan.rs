//! VXLAN headers (RFC 7348 5): flags with the I bit ("VNI is valid") that
//! must be set, 24 reserved bits, the 24-bit VXLAN network identifier and 8
//! reserved bits; an Ethernet frame follows. The IANA port is UDP 4789.
//! Reserved bits are ignored on receipt, as the RFC says.

use core::fmt;

use zerocopy::{
    ByteSlice, ByteSliceMut, FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice,
    Unaligned,
};

use super::{BufferTooShort, Header, ParseErrorKind};

/// The UDP destination port of VXLAN.
pub const VXLAN_PORT: u16 = 4789;

/// A 24-bit virtual network identifier (VXLAN VNI, Geneve VNI).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Vni(u32);

impl Vni {
    /// The largest identifier.
    pub const MAX: u32 = 0x00FF_FFFF;

    /// An identifier, or `None` above 24 bits.
    #[must_use]
    pub const fn new(vni: u32) -> Option<Self> {
        if vni <= Self::MAX {
            Some(Self(vni))
        } else {
            None
        }
    }

    /// The number.
    #[must_use]
    pub const fn get(self) -> u32 {
        self.0
    }

    pub(crate) const fn from_bytes([a, b, c]: [u8; 3]) -> Self {
        Self(u32::from_be_bytes([0, a, b, c]))
    }

    pub(crate) const fn to_bytes(self) -> [u8; 3] {
        let [_, a, b, c] = self.0.to_be_bytes();
        [a, b, c]
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

const FLAG_I: u8 = 0x08;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct VxlanHeader {
    flags: u8,
    reserved1: [u8; 3],
    vni: [u8; 3],
    reserved2: u8,
}

/// A zero-copy view of a VXLAN header and the frame it carries.
pub struct VxlanPacket<B> {
    header: Ref<B, VxlanHeader>,
    payload: B,
}

impl<B: ByteSlice> fmt::Debug for VxlanPacket<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VxlanPacket")
            .field("vni", &self.vni())
            .finish_non_exhaustive()
    }
}

impl<B: SplitByteSlice> VxlanPacket<B> {
    /// Header length.
    pub const HEADER_LEN: usize = 8;

    /// A view of `buf` after checking the I flag.
    ///
    /// # Errors
    /// Truncated header, or the I flag clear.
    pub fn new_checked(buf: B) -> Result<Self, ParseErrorKind> {
        let (header, payload) = Ref::<B, VxlanHeader>::from_prefix(buf)
            .map_err(|_| ParseErrorKind::Truncated(Header::Vxlan))?;
        if header.flags & FLAG_I == 0 {
            return Err(ParseErrorKind::BadFlags(Header::Vxlan));
        }
        Ok(Self { header, payload })
    }
}

impl<B: ByteSlice> VxlanPacket<B> {
    /// Network identifier.
    #[must_use]
    pub fn vni(&self) -> Vni {
        Vni::from_bytes(self.header.vni)
    }

    /// The encapsulated Ethernet frame.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

impl<B: ByteSliceMut> VxlanPacket<B> {
    /// Writes the network identifier.
    pub fn set_vni(&mut self, vni: Vni) {
        self.header.vni = vni.to_bytes();
    }
}

/// The fields of a VXLAN header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VxlanRepr {
    /// Network identifier.
    pub vni: Vni,
}

impl VxlanRepr {
    /// Reads a checked header.
    #[must_use]
    pub fn parse<B: ByteSlice>(packet: &VxlanPacket<B>) -> Self {
        Self { vni: packet.vni() }
    }

    /// Bytes [`Self::emit`] writes.
    #[must_use]
    pub const fn buffer_len(&self) -> usize {
        VxlanPacket::<&[u8]>::HEADER_LEN
    }

    /// Writes the header at the start of `buf`.
    ///
    /// # Errors
    /// [`BufferTooShort`] when `buf` cannot hold it.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), BufferTooShort> {
        let header = VxlanHeader {
            flags: FLAG_I,
            reserved1: [0; 3],
            vni: self.vni.to_bytes(),
            reserved2: 0,
        };
        super::write_header(buf, &header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: [u8; 8] = [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0];

    #[test]
    fn parse_emit_round_trip() {
        let packet = VxlanPacket::new_checked(&HEADER[..]).unwrap();
        let repr = VxlanRepr::parse(&packet);
        assert_eq!(repr.vni.get(), 0x12_3456);
        let mut buf = [0xFFu8; 8];
        repr.emit(&mut buf).unwrap();
        assert_eq!(buf, HEADER);
    }

    #[test]
    fn malformed() {
        for n in 0..8 {
            assert_eq!(
                VxlanPacket::new_checked(&HEADER[..n]).unwrap_err(),
                ParseErrorKind::Truncated(Header::Vxlan)
            );
        }
        let mut h = HEADER;
        h[0] = 0;
        assert_eq!(
            VxlanPacket::new_checked(&h[..]).unwrap_err(),
            ParseErrorKind::BadFlags(Header::Vxlan)
        );
        h[0] = 0x08 | 0x80; // reserved bits are ignored
        assert!(VxlanPacket::new_checked(&h[..]).is_ok());
        assert_eq!(Vni::new(1 << 24), None);
    }
}
