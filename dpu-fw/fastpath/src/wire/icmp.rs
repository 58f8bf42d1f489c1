//! The header ICMPv4 (RFC 792) and ICMPv6 (RFC 4443 2.1) share: type, code,
//! checksum and four bytes whose meaning depends on the type, then the
//! message body. Echo messages carry an identifier and sequence number in
//! those four bytes (RFC 792 "Echo", RFC 4443 4.1); error messages quote as
//! much of the offending packet as fits in their body (RFC 792: the IP
//! header and 8 bytes; RFC 4443 2.4(c): up to the minimum MTU).
//!
//! The two versions differ in their type numbers ([`super::icmpv4`],
//! [`super::icmpv6`]) and in the checksum: ICMPv6 covers an IPv6
//! pseudo-header, ICMPv4 does not (pass 0 as the pseudo-header sum).

use core::fmt;

use chaingate_shared::IpProtocol;

use zerocopy::byteorder::network_endian::U16;
use zerocopy::{
    ByteSlice, ByteSliceMut, FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice,
    Unaligned,
};

use super::{BufferTooShort, Header, ParseErrorKind, checksum};

/// The type numbers of one ICMP version.
pub trait IcmpType: Copy + Eq + fmt::Debug + From<u8> + Into<u8> {
    /// Which header the parser reports errors for.
    const HEADER: Header;
    /// The IP protocol number of this ICMP version.
    const PROTOCOL: IpProtocol;
    /// The echo request type.
    const ECHO_REQUEST: Self;
    /// The echo reply type.
    const ECHO_REPLY: Self;

    /// True for an error message (whose body quotes the offending packet).
    fn is_error(self) -> bool;
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct IcmpHeader {
    ty: u8,
    code: u8,
    checksum: U16,
    rest: [u8; 4],
}

/// A zero-copy view of an ICMP message: the 8-byte header and the body.
pub struct IcmpPacket<B> {
    header: Ref<B, IcmpHeader>,
    body: B,
}

impl<B: ByteSlice> fmt::Debug for IcmpPacket<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IcmpPacket")
            .field("type", &self.msg_type())
            .field("code", &self.code())
            .finish_non_exhaustive()
    }
}

impl<B: SplitByteSlice> IcmpPacket<B> {
    /// Header length (with the type-specific four bytes).
    pub const HEADER_LEN: usize = 8;

    /// A view of `buf`; `header` names the version in the error.
    ///
    /// # Errors
    /// [`ParseErrorKind::Truncated`] when `buf` is shorter than 8 bytes.
    pub fn new_checked(buf: B, header: Header) -> Result<Self, ParseErrorKind> {
        let (h, body) = Ref::<B, IcmpHeader>::from_prefix(buf)
            .map_err(|_| ParseErrorKind::Truncated(header))?;
        Ok(Self { header: h, body })
    }
}

impl<B: ByteSlice> IcmpPacket<B> {
    /// Type number.
    #[must_use]
    pub fn msg_type(&self) -> u8 {
        self.header.ty
    }

    /// Code.
    #[must_use]
    pub fn code(&self) -> u8 {
        self.header.code
    }

    /// Checksum field.
    #[must_use]
    pub fn checksum(&self) -> u16 {
        self.header.checksum.get()
    }

    /// The type-specific four bytes.
    #[must_use]
    pub fn rest_of_header(&self) -> [u8; 4] {
        self.header.rest
    }

    /// Echo identifier (meaningful for echo messages).
    #[must_use]
    pub fn echo_ident(&self) -> u16 {
        let [a, b, _, _] = self.header.rest;
        u16::from_be_bytes([a, b])
    }

    /// Echo sequence number (meaningful for echo messages).
    #[must_use]
    pub fn echo_seq(&self) -> u16 {
        let [_, _, a, b] = self.header.rest;
        u16::from_be_bytes([a, b])
    }

    /// Message body (for errors, the quoted packet).
    #[must_use]
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// True when the checksum verifies given the pseudo-header sum (0 for
    /// ICMPv4).
    #[must_use]
    pub fn verify_checksum(&self, pseudo_header: u64) -> bool {
        checksum::verifies(pseudo_header + self.sum())
    }

    fn sum(&self) -> u64 {
        checksum::sum(self.header.as_bytes()) + checksum::sum(&self.body)
    }
}

impl<B: ByteSliceMut> IcmpPacket<B> {
    /// Writes the echo identifier (checksum untouched).
    pub fn set_echo_ident(&mut self, ident: u16) {
        let [a, b] = ident.to_be_bytes();
        let [_, _, c, d] = self.header.rest;
        self.header.rest = [a, b, c, d];
    }

    /// Writes the checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        self.header.checksum.set(value);
    }

    /// Computes and writes the checksum given the pseudo-header sum (0 for
    /// ICMPv4).
    pub fn fill_checksum(&mut self, pseudo_header: u64) {
        self.header.checksum.set(0);
        let value = checksum::finish(pseudo_header + self.sum());
        self.header.checksum.set(value);
    }

    /// Message body, writable.
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.body
    }
}

/// An ICMP message header, by kind.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IcmpRepr<T> {
    /// Echo request.
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq: u16,
    },
    /// Echo reply.
    EchoReply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq: u16,
    },
    /// An error message; the body quotes the offending packet.
    Error {
        /// Type.
        ty: T,
        /// Code.
        code: u8,
        /// Type-specific bytes (pointer, MTU, gateway, or unused).
        rest: [u8; 4],
    },
    /// Any other message.
    Other {
        /// Type.
        ty: T,
        /// Code.
        code: u8,
        /// Type-specific bytes.
        rest: [u8; 4],
    },
}

impl<T: IcmpType> IcmpRepr<T> {
    /// Reads a checked message (the checksum is not verified: the fast
    /// path forwards what it cannot vouch for and leaves that to the
    /// endpoints).
    #[must_use]
    pub fn parse<B: ByteSlice>(packet: &IcmpPacket<B>) -> Self {
        let ty = T::from(packet.msg_type());
        let (code, rest) = (packet.code(), packet.rest_of_header());
        if ty == T::ECHO_REQUEST {
            Self::EchoRequest {
                ident: packet.echo_ident(),
                seq: packet.echo_seq(),
            }
        } else if ty == T::ECHO_REPLY {
            Self::EchoReply {
                ident: packet.echo_ident(),
                seq: packet.echo_seq(),
            }
        } else if ty.is_error() {
            Self::Error { ty, code, rest }
        } else {
            Self::Other { ty, code, rest }
        }
    }

    /// Bytes [`Self::emit`] writes.
    #[must_use]
    pub const fn buffer_len(&self) -> usize {
        IcmpPacket::<&[u8]>::HEADER_LEN
    }

    /// Writes the header at the start of `buf` with a zero checksum; fill
    /// it with [`IcmpPacket::fill_checksum`] once the body is in place.
    ///
    /// # Errors
    /// [`BufferTooShort`] when `buf` cannot hold it.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), BufferTooShort> {
        let (ty, code, rest) = match *self {
            Self::EchoRequest { ident, seq } => (T::ECHO_REQUEST, 0, echo_rest(ident, seq)),
            Self::EchoReply { ident, seq } => (T::ECHO_REPLY, 0, echo_rest(ident, seq)),
            Self::Error { ty, code, rest } | Self::Other { ty, code, rest } => (ty, code, rest),
        };
        let header = IcmpHeader {
            ty: ty.into(),
            code,
            checksum: U16::ZERO,
            rest,
        };
        super::write_header(buf, &header)
    }
}

fn echo_rest(ident: u16, seq: u16) -> [u8; 4] {
    let ([a, b], [c, d]) = (ident.to_be_bytes(), seq.to_be_bytes());
    [a, b, c, d]
}
