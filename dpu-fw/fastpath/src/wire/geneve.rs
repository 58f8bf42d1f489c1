//! Geneve headers (RFC 8926 3.4): version (2 bits, must be 0), options
//! length in 4-byte words (6 bits), O (control) and C (critical options)
//! flags, the protocol type of the payload (an EtherType: 0x6558 for an
//! Ethernet frame, or IPv4/IPv6 directly), the 24-bit VNI, then the
//! variable-length options, which the gateway skips. The IANA port is UDP
//! 6081.

use core::fmt;

use zerocopy::byteorder::network_endian::U16;
use zerocopy::{
    ByteSlice, ByteSliceMut, FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice,
    Unaligned,
};

use super::{BufferTooShort, EtherType, Header, ParseErrorKind, Vni};

/// The UDP destination port of Geneve.
pub const GENEVE_PORT: u16 = 6081;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct GeneveHeader {
    ver_optlen: u8,
    flags: u8,
    protocol: U16,
    vni: [u8; 3],
    reserved: u8,
}

const FLAG_O: u8 = 0x80;
const FLAG_C: u8 = 0x40;

/// A zero-copy view of a Geneve header, its options, and the payload.
pub struct GenevePacket<B> {
    header: Ref<B, GeneveHeader>,
    options: B,
    payload: B,
}

impl<B: ByteSlice> fmt::Debug for GenevePacket<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenevePacket")
            .field("vni", &self.vni())
            .field("protocol", &self.protocol())
            .finish_non_exhaustive()
    }
}

impl<B: SplitByteSlice> GenevePacket<B> {
    /// Length of the header without options.
    pub const MIN_HEADER_LEN: usize = 8;

    /// A view of `buf` after checking version and options length.
    ///
    /// # Errors
    /// Truncated header or options, or a version other than 0.
    pub fn new_checked(buf: B) -> Result<Self, ParseErrorKind> {
        let (header, rest) = Ref::<B, GeneveHeader>::from_prefix(buf)
            .map_err(|_| ParseErrorKind::Truncated(Header::Geneve))?;
        if header.ver_optlen >> 6 != 0 {
            return Err(ParseErrorKind::BadVersion(Header::Geneve));
        }
        let options_len = usize::from(header.ver_optlen & 0x3F) * 4;
        let (options, payload) = rest
            .split_at(options_len)
            .map_err(|_| ParseErrorKind::Truncated(Header::Geneve))?;
        Ok(Self {
            header,
            options,
            payload,
        })
    }
}

impl<B: ByteSlice> GenevePacket<B> {
    /// Header length in bytes, options included.
    #[must_use]
    pub fn header_len(&self) -> usize {
        GenevePacket::<&[u8]>::MIN_HEADER_LEN + self.options.len()
    }

    /// The control-packet flag.
    #[must_use]
    pub fn oam(&self) -> bool {
        self.header.flags & FLAG_O != 0
    }

    /// The critical-options flag.
    #[must_use]
    pub fn critical(&self) -> bool {
        self.header.flags & FLAG_C != 0
    }

    /// Protocol of the payload.
    #[must_use]
    pub fn protocol(&self) -> EtherType {
        EtherType::from(self.header.protocol.get())
    }

    /// Network identifier.
    #[must_use]
    pub fn vni(&self) -> Vni {
        Vni::from_bytes(self.header.vni)
    }

    /// Option bytes.
    #[must_use]
    pub fn options(&self) -> &[u8] {
        &self.options
    }

    /// The encapsulated frame or packet.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

impl<B: ByteSliceMut> GenevePacket<B> {
    /// Writes the network identifier.
    pub fn set_vni(&mut self, vni: Vni) {
        self.header.vni = vni.to_bytes();
    }
}

/// The fields of a Geneve header. Options are skipped on parse; emit writes
/// `options_len` zero bytes of them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GeneveRepr {
    /// Network identifier.
    pub vni: Vni,
    /// Protocol of the payload.
    pub protocol: EtherType,
    /// Length of the options in bytes (a multiple of 4, at most 252).
    pub options_len: usize,
    /// Control packet.
    pub oam: bool,
    /// Critical options present.
    pub critical: bool,
}

impl GeneveRepr {
    /// Reads a checked header.
    #[must_use]
    pub fn parse<B: ByteSlice>(packet: &GenevePacket<B>) -> Self {
        Self {
            vni: packet.vni(),
            protocol: packet.protocol(),
            options_len: packet.options().len(),
            oam: packet.oam(),
            critical: packet.critical(),
        }
    }

    /// Bytes [`Self::emit`] writes.
    #[must_use]
    pub const fn buffer_len(&self) -> usize {
        GenevePacket::<&[u8]>::MIN_HEADER_LEN + self.options_len
    }

    /// Writes the header and zeroed options at the start of `buf`.
    ///
    /// # Errors
    /// [`BufferTooShort`] when `buf` cannot hold them.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), BufferTooShort> {
        let too_short = BufferTooShort {
            needed: self.buffer_len(),
            available: buf.len(),
        };
        let out = buf.get_mut(..self.buffer_len()).ok_or(too_short)?;
        let (mut header, options) =
            Ref::<_, GeneveHeader>::from_prefix(out).map_err(|_| too_short)?;
        options.fill(0);
        let mut flags = 0;
        if self.oam {
            flags |= FLAG_O;
        }
        if self.critical {
            flags |= FLAG_C;
        }
        *header = GeneveHeader {
            ver_optlen: u8::try_from(self.options_len / 4).unwrap_or(0) & 0x3F,
            flags,
            protocol: U16::new(self.protocol.number()),
            vni: self.vni.to_bytes(),
            reserved: 0,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One 8-byte option, C flag, Ethernet payload, VNI 0xABCDEF.
    const HEADER: [u8; 18] = [
        0x02, 0x40, 0x65, 0x58, 0xAB, 0xCD, 0xEF, 0, // fixed
        0, 0, 0, 0, 0, 0, 0, 0, // option
        0xEE, 0xFF, // payload
    ];

    #[test]
    fn parse_emit_round_trip() {
        let packet = GenevePacket::new_checked(&HEADER[..]).unwrap();
        let repr = GeneveRepr::parse(&packet);
        assert_eq!(
            repr,
            GeneveRepr {
                vni: Vni::new(0xAB_CDEF).unwrap(),
                protocol: EtherType::TransparentBridging,
                options_len: 8,
                oam: false,
                critical: true,
            }
        );
        assert_eq!(packet.payload(), &[0xEE, 0xFF]);
        assert_eq!(packet.header_len(), 16);
        let mut buf = [0xFFu8; 16];
        repr.emit(&mut buf).unwrap();
        assert_eq!(buf, HEADER[..16]);
    }

    #[test]
    fn malformed() {
        for n in 0..16 {
            assert_eq!(
                GenevePacket::new_checked(&HEADER[..n]).unwrap_err(),
                ParseErrorKind::Truncated(Header::Geneve)
            );
        }
        let mut h = HEADER;
        h[0] |= 0x40;
        assert_eq!(
            GenevePacket::new_checked(&h[..]).unwrap_err(),
            ParseErrorKind::BadVersion(Header::Geneve)
        );
    }
}
