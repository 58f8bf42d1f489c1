//! IPv6 extension headers (RFC 8200 4) and the walk from the fixed header
//! to the upper-layer header.
//!
//! Hop-by-hop options (0), routing (43), destination options (60) and the
//! other headers of the RFC 7045 list that share their format (mobility 135,
//! HIP 139, shim6 140) are `next header, length in 8-octet units minus one`.
//! The fragment header (44) is 8 bytes: after a non-first fragment nothing
//! can be parsed. The authentication header (51, RFC 4302 2.2) counts its
//! length in 4-octet units minus two. ESP (50) and "no next header" (59)
//! end the walk: what follows is opaque.

use core::fmt;

use chaingate_shared::IpProtocol;
use zerocopy::byteorder::network_endian::{U16, U32};
use zerocopy::{
    ByteSlice, FromBytes, Immutable, IntoBytes, KnownLayout, Ref, SplitByteSlice, Unaligned,
};

use super::{BufferTooShort, Header, ParseErrorKind};

/// The most extension headers the walk follows before it gives up. Real
/// traffic rarely has more than two; an endless chain is an attack.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// True for a protocol number the walk treats as an extension header.
#[must_use]
pub const fn is_extension(proto: IpProtocol) -> bool {
    matches!(proto.number(), 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140)
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ExtHeader {
    next_header: u8,
    len: u8,
}

/// A zero-copy view of one extension header of a known kind.
pub struct Ipv6ExtHeader<B> {
    kind: IpProtocol,
    header: Ref<B, ExtHeader>,
    data: B,
    payload: B,
}

impl<B: ByteSlice> fmt::Debug for Ipv6ExtHeader<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ipv6ExtHeader")
            .field("kind", &self.kind)
            .field("next_header", &self.next_header())
            .field("header_len", &self.header_len())
            .finish_non_exhaustive()
    }
}

impl<B: SplitByteSlice> Ipv6ExtHeader<B> {
    /// A view of the extension header of kind `kind` at the start of `buf`.
    ///
    /// # Errors
    /// [`ParseErrorKind::Truncated`] when the buffer ends inside it.
    pub fn new_checked(buf: B, kind: IpProtocol) -> Result<Self, ParseErrorKind> {
        let truncated = ParseErrorKind::Truncated(Header::Ipv6Ext);
        let (header, rest) = Ref::<B, ExtHeader>::from_prefix(buf).map_err(|_| truncated)?;
        let len = header_len(kind, header.len);
        let (data, payload) = rest.split_at(len - 2).map_err(|_| truncated)?;
        Ok(Self {
            kind,
            header,
            data,
            payload,
        })
    }
}

impl<B: ByteSlice> Ipv6ExtHeader<B> {
    /// The kind of header.
    #[must_use]
    pub fn kind(&self) -> IpProtocol {
        self.kind
    }

    /// What follows.
    #[must_use]
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(self.header.next_header)
    }

    /// Length in bytes, the first two included.
    #[must_use]
    pub fn header_len(&self) -> usize {
        header_len(self.kind, self.header.len)
    }

    /// The header's bytes after next-header and length.
    #[must_use]
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The fragment fields, for a fragment header.
    #[must_use]
    pub fn fragment(&self) -> Option<FragmentFields> {
        if self.kind != IpProtocol::Ipv6Frag {
            return None;
        }
        let (fields, _) = FragBody::ref_from_prefix(&self.data).ok()?;
        let word = fields.offset_flags.get();
        Some(FragmentFields {
            offset: word & 0xFFF8,
            more: word & 1 != 0,
            ident: fields.ident.get(),
        })
    }

    /// Bytes after the header.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

fn header_len(kind: IpProtocol, len: u8) -> usize {
    match kind {
        IpProtocol::Ipv6Frag => 8,
        IpProtocol::Ah => (usize::from(len) + 2) * 4,
        _ => (usize::from(len) + 1) * 8,
    }
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct FragBody {
    offset_flags: U16,
    ident: U32,
}

/// The fields of an IPv6 fragment header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FragmentFields {
    /// Offset of this fragment's data in bytes (a multiple of 8).
    pub offset: u16,
    /// More fragments follow.
    pub more: bool,
    /// Identification.
    pub ident: u32,
}

/// Where the extension-header walk ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ExtWalk {
    /// Protocol of what follows the last extension header. For a non-first
    /// fragment, the fragment header's next header.
    pub protocol: IpProtocol,
    /// Offset of the upper-layer header from the start of the IPv6
    /// payload, or `None` after a non-first fragment.
    pub upper_offset: Option<usize>,
    /// The fragment header, if there was one.
    pub fragment: Option<FragmentFields>,
}

/// Walks the extension headers of an IPv6 payload whose first header is
/// `first`.
///
/// # Errors
/// The error kind and its offset from the start of `payload`: a truncated
/// extension header, a hop-by-hop header not in first place, or more than
/// [`MAX_EXTENSION_HEADERS`] headers.
pub fn walk(payload: &[u8], first: IpProtocol) -> Result<ExtWalk, (ParseErrorKind, usize)> {
    let mut proto = first;
    let mut offset = 0usize;
    let mut fragment = None;
    for index in 0..=MAX_EXTENSION_HEADERS {
        if !is_extension(proto) {
            return Ok(ExtWalk {
                protocol: proto,
                upper_offset: Some(offset),
                fragment,
            });
        }
        if index == MAX_EXTENSION_HEADERS {
            break;
        }
        if proto == IpProtocol::HopByHop && index != 0 {
            return Err((ParseErrorKind::MisplacedHopByHop, offset));
        }
        let rest = payload.get(offset..).unwrap_or(&[]);
        let ext = Ipv6ExtHeader::new_checked(rest, proto).map_err(|e| (e, offset))?;
        if let Some(frag) = ext.fragment() {
            fragment = Some(frag);
            if frag.offset != 0 {
                return Ok(ExtWalk {
                    protocol: ext.next_header(),
                    upper_offset: None,
                    fragment,
                });
            }
        }
        offset += ext.header_len();
        proto = ext.next_header();
    }
    Err((ParseErrorKind::TooManyExtensionHeaders, offset))
}

/// An extension header to emit (tests and traffic generation): options
/// headers are padded with PadN, routing and AH bodies are zero.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Ipv6ExtRepr {
    /// Which header.
    pub kind: IpProtocol,
    /// What follows it.
    pub next_header: IpProtocol,
    /// Length in bytes: a multiple of 8 (of 4 for AH), at least 8; 8 for
    /// a fragment header.
    pub len: usize,
    /// Fragment fields, for a fragment header.
    pub fragment: Option<FragmentFields>,
}

impl Ipv6ExtRepr {
    /// Bytes [`Self::emit`] writes.
    #[must_use]
    pub const fn buffer_len(&self) -> usize {
        self.len
    }

    /// Writes the header at the start of `buf`.
    ///
    /// # Errors
    /// [`BufferTooShort`] when `buf` cannot hold it.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), BufferTooShort> {
        let too_short = BufferTooShort {
            needed: self.len,
            available: buf.len(),
        };
        let out = buf.get_mut(..self.len).ok_or(too_short)?;
        out.fill(0);
        let len_field = match self.kind {
            IpProtocol::Ipv6Frag => 0,
            IpProtocol::Ah => (self.len / 4).saturating_sub(2),
            _ => (self.len / 8).saturating_sub(1),
        };
        let (header, body) = Ref::<_, ExtHeader>::from_prefix(out).map_err(|_| too_short)?;
        let header = Ref::into_mut(header);
        header.next_header = self.next_header.number();
        header.len = u8::try_from(len_field).unwrap_or(u8::MAX);
        match (self.kind.number(), self.fragment) {
            (44, Some(f)) => {
                let (fields, _) = FragBody::mut_from_prefix(body).map_err(|_| too_short)?;
                fields
                    .offset_flags
                    .set((f.offset & 0xFFF8) | u16::from(f.more));
                fields.ident.set(f.ident);
            }
            (0 | 60, _) => {
                // One PadN option covering the body (RFC 8200 4.2).
                if let [ty, len, ..] = body {
                    *ty = 1;
                    *len = u8::try_from(self.len.saturating_sub(4)).unwrap_or(u8::MAX);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn chain(headers: &[Ipv6ExtRepr], upper: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for h in headers {
            let mut b = std::vec![0u8; h.buffer_len()];
            h.emit(&mut b).unwrap();
            out.extend_from_slice(&b);
        }
        out.extend_from_slice(upper);
        out
    }

    fn ext(kind: IpProtocol, next_header: IpProtocol, len: usize) -> Ipv6ExtRepr {
        Ipv6ExtRepr {
            kind,
            next_header,
            len,
            fragment: None,
        }
    }

    #[test]
    fn walks_every_kind_to_the_upper_layer() {
        let frag = Ipv6ExtRepr {
            fragment: Some(FragmentFields {
                offset: 0,
                more: true,
                ident: 7,
            }),
            ..ext(IpProtocol::Ipv6Frag, IpProtocol::Ah, 8)
        };
        let bytes = chain(
            &[
                ext(IpProtocol::HopByHop, IpProtocol::Ipv6Route, 8),
                ext(IpProtocol::Ipv6Route, IpProtocol::Ipv6Opts, 24),
                ext(IpProtocol::Ipv6Opts, IpProtocol::Ipv6Frag, 16),
                frag,
                ext(IpProtocol::Ah, IpProtocol::Udp, 12),
            ],
            &[0; 8],
        );
        let w = walk(&bytes, IpProtocol::HopByHop).unwrap();
        assert_eq!(w.protocol, IpProtocol::Udp);
        assert_eq!(w.upper_offset, Some(8 + 24 + 16 + 8 + 12));
        assert_eq!(w.fragment, frag.fragment);
    }

    #[test]
    fn esp_and_no_next_end_the_walk() {
        let bytes = chain(
            &[ext(IpProtocol::Ipv6Opts, IpProtocol::Esp, 8)],
            &[0xAA; 16],
        );
        let w = walk(&bytes, IpProtocol::Ipv6Opts).unwrap();
        assert_eq!((w.protocol, w.upper_offset), (IpProtocol::Esp, Some(8)));
        let w = walk(&[], IpProtocol::Ipv6NoNext).unwrap();
        assert_eq!(
            (w.protocol, w.upper_offset),
            (IpProtocol::Ipv6NoNext, Some(0))
        );
    }

    #[test]
    fn later_fragment_has_no_upper_layer() {
        let frag = Ipv6ExtRepr {
            fragment: Some(FragmentFields {
                offset: 1448,
                more: false,
                ident: 9,
            }),
            ..ext(IpProtocol::Ipv6Frag, IpProtocol::Tcp, 8)
        };
        let bytes = chain(&[frag], &[1, 2, 3]);
        let w = walk(&bytes, IpProtocol::Ipv6Frag).unwrap();
        assert_eq!(w.protocol, IpProtocol::Tcp);
        assert_eq!(w.upper_offset, None);
        assert_eq!(w.fragment.unwrap().offset, 1448);
    }

    #[test]
    fn malformed_chains() {
        let bytes = chain(
            &[ext(IpProtocol::Ipv6Opts, IpProtocol::HopByHop, 8)],
            &[0; 8],
        );
        assert_eq!(
            walk(&bytes, IpProtocol::Ipv6Opts),
            Err((ParseErrorKind::MisplacedHopByHop, 8))
        );
        let bytes = chain(&[ext(IpProtocol::Ipv6Route, IpProtocol::Tcp, 24)], &[]);
        assert_eq!(
            walk(&bytes[..23], IpProtocol::Ipv6Route),
            Err((ParseErrorKind::Truncated(Header::Ipv6Ext), 0))
        );
        let many: Vec<_> = (0..=MAX_EXTENSION_HEADERS)
            .map(|_| ext(IpProtocol::Ipv6Opts, IpProtocol::Ipv6Opts, 8))
            .collect();
        let bytes = chain(&many, &[]);
        assert_eq!(
            walk(&bytes, IpProtocol::Ipv6Opts),
            Err((
                ParseErrorKind::TooManyExtensionHeaders,
                8 * MAX_EXTENSION_HEADERS
            ))
        );
        // Exactly the maximum is fine.
        let mut ok = many[..MAX_EXTENSION_HEADERS].to_vec();
        if let Some(last) = ok.last_mut() {
            last.next_header = IpProtocol::Udp;
        }
        let bytes = chain(&ok, &[0; 8]);
        assert_eq!(
            walk(&bytes, IpProtocol::Ipv6Opts).unwrap().protocol,
            IpProtocol::Udp
        );
    }
}
