//! What can be wrong with a frame, and where.

use core::fmt;

/// A header the parser reads.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Header {
    /// Ethernet II.
    Ethernet,
    /// An 802.1Q or 802.1ad tag.
    Vlan,
    /// IPv4.
    Ipv4,
    /// IPv6 fixed header.
    Ipv6,
    /// An IPv6 extension header.
    Ipv6Ext,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP for IPv4.
    Icmpv4,
    /// ICMP for IPv6.
    Icmpv6,
    /// VXLAN.
    Vxlan,
    /// Geneve.
    Geneve,
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ethernet => "ethernet",
            Self::Vlan => "vlan",
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
            Self::Ipv6Ext => "ipv6 extension",
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmpv4 => "icmpv4",
            Self::Icmpv6 => "icmpv6",
            Self::Vxlan => "vxlan",
            Self::Geneve => "geneve",
        })
    }
}

/// What was wrong with a header.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ParseErrorKind {
    /// The buffer ends inside the header.
    Truncated(Header),
    /// The header is whole but the length it declares runs past the end
    /// of the frame (or of the enclosing packet).
    LengthBeyondFrame(Header),
    /// The version field is not the header's version.
    BadVersion(Header),
    /// The header declares a header length below its minimum.
    BadHeaderLength(Header),
    /// A declared total or payload length contradicts the headers or the
    /// enclosing packet.
    BadLength(Header),
    /// The header checksum does not verify.
    BadChecksum(Header),
    /// A flag that must be set is clear, or the reverse.
    BadFlags(Header),
    /// More VLAN tags than a flow key holds.
    TooManyVlanTags,
    /// More IPv6 extension headers than the parser walks.
    TooManyExtensionHeaders,
    /// An IPv6 hop-by-hop header somewhere else than first (RFC 8200 4.1).
    MisplacedHopByHop,
}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated(h) => write!(f, "truncated {h} header"),
            Self::LengthBeyondFrame(h) => write!(f, "{h} length beyond end of frame"),
            Self::BadVersion(h) => write!(f, "bad {h} version"),
            Self::BadHeaderLength(h) => write!(f, "bad {h} header length"),
            Self::BadLength(h) => write!(f, "bad {h} length"),
            Self::BadChecksum(h) => write!(f, "bad {h} checksum"),
            Self::BadFlags(h) => write!(f, "bad {h} flags"),
            Self::TooManyVlanTags => write!(
                f,
                "more than {} vlan tags",
                chaingate_shared::VlanStack::CAPACITY
            ),
            Self::TooManyExtensionHeaders => write!(
                f,
                "more than {} ipv6 extension headers",
                super::ipv6ext::MAX_EXTENSION_HEADERS
            ),
            Self::MisplacedHopByHop => f.write_str("ipv6 hop-by-hop header not first"),
        }
    }
}

impl core::error::Error for ParseErrorKind {}

/// Which part of a frame an error is in.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Context {
    /// The frame itself (for a tunnel: the outer headers).
    Outer,
    /// The frame inside a VXLAN or Geneve tunnel.
    Tunnel,
    /// The original packet quoted by an ICMP error message.
    IcmpError,
}

/// A frame that does not parse: what was wrong, where it was, and at which
/// byte offset (from the start of the frame) the offending header starts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ParseError {
    kind: ParseErrorKind,
    context: Context,
    offset: usize,
}

impl ParseError {
    pub(crate) const fn new(kind: ParseErrorKind, context: Context, offset: usize) -> Self {
        Self {
            kind,
            context,
            offset,
        }
    }

    /// What was wrong.
    #[must_use]
    pub const fn kind(&self) -> ParseErrorKind {
        self.kind
    }

    /// Where in the frame's nesting.
    #[must_use]
    pub const fn context(&self) -> Context {
        self.context
    }

    /// Byte offset of the offending header from the start of the frame.
    #[must_use]
    pub const fn offset(&self) -> usize {
        self.offset
    }
}

impl fmt::Display for ParseError {
    /// `truncated tcp header at offset 34`, `bad ipv4 checksum in tunnel at
    /// offset 64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind.fmt(f)?;
        match self.context {
            Context::Outer => {}
            Context::Tunnel => f.write_str(" in tunnel")?,
            Context::IcmpError => f.write_str(" in icmp error")?,
        }
        write!(f, " at offset {}", self.offset)
    }
}

impl core::error::Error for ParseError {}

/// The buffer given to an emitter is shorter than the header it writes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct BufferTooShort {
    /// Bytes the header needs.
    pub needed: usize,
    /// Bytes the buffer had.
    pub available: usize,
}

impl fmt::Display for BufferTooShort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "buffer of {} bytes is shorter than the {} bytes needed",
            self.available, self.needed
        )
    }
}

impl core::error::Error for BufferTooShort {}
