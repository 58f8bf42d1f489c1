//! The frame parser: one pass from the first byte of an Ethernet frame to
//! the transport header, for the outer frame and, for VXLAN and Geneve
//! tunnels, the frame inside. It yields the offsets of each layer and the
//! flow keys, or a [`ParseError`] with the offset of the offending header.
//!
//! Decisions (also in docs/wire.md):
//! - At most three VLAN tags (802.1Q, 802.1ad, in any order): a customer's
//!   two and, inside a chain, the gateway's segment tag on top; a fourth is
//!   an error (the data path also refuses a third at an uplink, where it
//!   would leave no room for the segment tag).
//! - ARP and unknown EtherTypes are not errors: the frame has layers but no
//!   flow key.
//! - IPv4 header checksums are verified; transport checksums are not (the
//!   endpoints do, and veths and NICs hand over partial checksums).
//! - After a non-first fragment there is no transport header: the key has
//!   the protocol and zero ports. A first fragment's UDP length covers the
//!   whole datagram, so it is not checked against the fragment.
//! - ICMP echo: the identifier stands in for both ports. ICMP errors: the
//!   key is that of the quoted packet, reversed (the error travels back
//!   towards the quoted packet's sender), so it finds the connection the
//!   error is about. The quote is parsed leniently (it is cut short by
//!   design and its checksum is not the sender's concern) and never as a
//!   tunnel or another error.
//! - Tunnels: UDP destination port 4789 is VXLAN and 6081 is Geneve, on
//!   unfragmented outer packets only; the inner frame is parsed within the
//!   outer UDP payload, and not decapsulated further.

use core::net::{Ipv4Addr, Ipv6Addr};
use core::num::NonZeroU32;

use chaingate_shared::{FlowKey, IpProtocol, VlanStack};

use super::geneve::{GENEVE_PORT, GenevePacket};
use super::icmp::{IcmpPacket, IcmpType};
use super::icmpv4::Icmpv4Type;
use super::icmpv6::Icmpv6Type;
use super::ipv4::Ipv4Packet;
use super::ipv6::Ipv6Packet;
use super::ipv6ext;
use super::tcp::{TcpFlags, TcpPacket};
use super::udp::UdpPacket;
use super::vlan::VlanPacket;
use super::vxlan::{VXLAN_PORT, VxlanPacket};
use super::{Capture, Context, EtherType, EthernetFrame, Header, ParseError, ParseErrorKind, Vni};

/// The network layer of a frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Network {
    /// IPv4 header at this offset.
    Ipv4(usize),
    /// IPv6 fixed header at this offset.
    Ipv6(usize),
    /// ARP at this offset (recognised, not parsed).
    Arp(usize),
    /// Anything else (or an 802.3 length field), payload at this offset.
    Other(EtherType, usize),
}

impl Network {
    /// Offset of the network header.
    #[must_use]
    pub const fn offset(&self) -> usize {
        match *self {
            Self::Ipv4(o) | Self::Ipv6(o) | Self::Arp(o) | Self::Other(_, o) => o,
        }
    }
}

/// Fragmentation of an IP packet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Fragment {
    /// Offset of this fragment's data in the datagram, in bytes.
    pub offset: u16,
    /// More fragments follow.
    pub more: bool,
    /// Identification (IPv4's is 16 bits).
    pub ident: u32,
}

impl Fragment {
    /// True for the fragment that carries the transport header.
    #[must_use]
    pub const fn is_first(&self) -> bool {
        self.offset == 0
    }
}

/// An ICMP error message and where its quote of the offending packet is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct IcmpError {
    /// ICMP type.
    pub ty: u8,
    /// ICMP code.
    pub code: u8,
    /// Offset of the quoted packet's IP header.
    pub quote: usize,
}

/// Which tunnel a frame arrived in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TunnelKind {
    /// VXLAN (RFC 7348).
    Vxlan,
    /// Geneve (RFC 8926).
    Geneve,
}

/// A tunnel header of the outer frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Tunnel {
    /// VXLAN or Geneve.
    pub kind: TunnelKind,
    /// Offset of the VXLAN or Geneve header.
    pub offset: usize,
    /// Offset of the encapsulated frame (or packet).
    pub inner_offset: usize,
    /// Network identifier.
    pub vni: Vni,
}

/// Offsets are stored in 32 bits: the parser never reaches past the end of
/// one IP packet inside another (about 2^17 bytes), so they always fit, and
/// a compact [`Layers`] is cheaper to fill and move on every packet.
type Off = u32;

#[allow(clippy::cast_possible_truncation)] // see `Off`
const fn off(o: usize) -> Off {
    o as Off
}

/// A transport offset: never 0, since an IP header comes first.
fn nonzero(o: usize) -> Option<NonZeroU32> {
    NonZeroU32::new(off(o))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum NetKind {
    Ipv4,
    Ipv6,
    Arp,
    Other(EtherType),
}

/// The layers of one frame (outer, or inside a tunnel).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Layers {
    key: Option<FlowKey>,
    vlans: VlanStack,
    net: NetKind,
    l2: Option<Off>,
    net_offset: Off,
    end: Off,
    transport: Option<NonZeroU32>,
    payload: Option<NonZeroU32>,
    protocol: Option<IpProtocol>,
    tcp_flags: TcpFlags,
    dscp: u8,
    fragment: Option<Fragment>,
    icmp_error: Option<(u8, u8, Off)>,
}

impl Layers {
    const EMPTY: Self = Self {
        key: None,
        vlans: VlanStack::EMPTY,
        net: NetKind::Other(EtherType::Unknown(0)),
        l2: None,
        net_offset: 0,
        end: 0,
        transport: None,
        payload: None,
        protocol: None,
        tcp_flags: TcpFlags(0),
        dscp: 0,
        fragment: None,
        icmp_error: None,
    };

    /// Offset of the Ethernet header (`None` for a Geneve payload that is
    /// an IP packet).
    #[must_use]
    pub fn l2_offset(&self) -> Option<usize> {
        self.l2.map(|o| o as usize)
    }

    /// VLAN identifiers, outermost first.
    #[must_use]
    pub const fn vlans(&self) -> &VlanStack {
        &self.vlans
    }

    /// Network layer and its offset.
    #[must_use]
    pub const fn network(&self) -> Network {
        let o = self.net_offset as usize;
        match self.net {
            NetKind::Ipv4 => Network::Ipv4(o),
            NetKind::Ipv6 => Network::Ipv6(o),
            NetKind::Arp => Network::Arp(o),
            NetKind::Other(t) => Network::Other(t, o),
        }
    }

    /// The upper-layer protocol of this packet (after IPv6 extension
    /// headers), `None` without IP. For an ICMP error this is ICMP, while
    /// the key carries the protocol of the quoted packet.
    #[must_use]
    pub const fn protocol(&self) -> Option<IpProtocol> {
        self.protocol
    }

    /// Offset of the transport header (TCP, UDP, ICMP, or the opaque
    /// upper layer), or `None` without IP or after a non-first fragment.
    #[must_use]
    pub fn transport_offset(&self) -> Option<usize> {
        self.transport.map(|o| o.get() as usize)
    }

    /// Offset of the transport payload (after a TCP, UDP or ICMP header;
    /// for other protocols, the transport offset).
    #[must_use]
    pub fn payload_offset(&self) -> Option<usize> {
        self.payload.map(|o| o.get() as usize)
    }

    /// End of the network packet (Ethernet padding excluded); for frames
    /// without IP, the end of the frame.
    #[must_use]
    pub const fn end(&self) -> usize {
        self.end as usize
    }

    /// Fragmentation, if the IP packet is a fragment.
    #[must_use]
    pub const fn fragment(&self) -> Option<Fragment> {
        self.fragment
    }

    /// The DSCP of the IP header (0 without IP).
    #[must_use]
    pub const fn dscp(&self) -> u8 {
        self.dscp
    }

    /// TCP control bits (empty for other protocols).
    #[must_use]
    pub const fn tcp_flags(&self) -> TcpFlags {
        self.tcp_flags
    }

    /// The ICMP error this frame is, if it is one.
    #[must_use]
    pub fn icmp_error(&self) -> Option<IcmpError> {
        self.icmp_error.map(|(ty, code, quote)| IcmpError {
            ty,
            code,
            quote: quote as usize,
        })
    }

    /// The flow key (`None` without IP).
    #[must_use]
    pub const fn key(&self) -> Option<&FlowKey> {
        self.key.as_ref()
    }
}

/// A parsed frame: its layers and, for a tunnel, the layers inside.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ParsedFrame {
    outer: Layers,
    tunnel: Option<Tunnel>,
    inner: Option<Layers>,
}

impl ParsedFrame {
    /// Nothing parsed yet: what [`parse_into`] starts from.
    pub const EMPTY: Self = Self {
        outer: Layers::EMPTY,
        tunnel: None,
        inner: None,
    };

    /// The frame's own layers.
    #[must_use]
    pub const fn outer(&self) -> &Layers {
        &self.outer
    }

    /// The tunnel header, if the frame is VXLAN or Geneve.
    #[must_use]
    pub const fn tunnel(&self) -> Option<&Tunnel> {
        self.tunnel.as_ref()
    }

    /// The layers inside the tunnel (`None` without a tunnel, or for a
    /// Geneve payload of a protocol other than Ethernet, IPv4, IPv6).
    #[must_use]
    pub const fn inner(&self) -> Option<&Layers> {
        self.inner.as_ref()
    }

    /// The outer flow key.
    #[must_use]
    pub const fn key(&self) -> Option<&FlowKey> {
        self.outer.key()
    }

    /// The inner flow key.
    #[must_use]
    pub fn inner_key(&self) -> Option<&FlowKey> {
        self.inner.as_ref().and_then(Layers::key)
    }
}

/// Parses a whole frame, as the data path receives it.
///
/// # Errors
/// A [`ParseError`] naming what was wrong and its offset.
pub fn parse(frame: &[u8]) -> Result<ParsedFrame, ParseError> {
    let mut parsed = ParsedFrame::EMPTY;
    parse_with(frame, Capture::Whole, &mut parsed)?;
    Ok(parsed)
}

/// Parses a frame that may be cut short of the lengths its headers declare
/// (a capture with a snap length); every header must still be whole.
///
/// # Errors
/// A [`ParseError`] naming what was wrong and its offset.
pub fn parse_snapped(frame: &[u8]) -> Result<ParsedFrame, ParseError> {
    let mut parsed = ParsedFrame::EMPTY;
    parse_with(frame, Capture::Snapped, &mut parsed)?;
    Ok(parsed)
}

/// [`parse`] into a caller's slot (the per-packet metadata of a burst), so
/// the data path fills it in place instead of moving it.
///
/// # Errors
/// A [`ParseError`] naming what was wrong and its offset; `out` then holds
/// what was parsed before the error and must not be used.
pub fn parse_into(frame: &[u8], out: &mut ParsedFrame) -> Result<(), ParseError> {
    *out = ParsedFrame::EMPTY;
    parse_with(frame, Capture::Whole, out)
}

#[inline(always)]
fn parse_with(frame: &[u8], capture: Capture, parsed: &mut ParsedFrame) -> Result<(), ParseError> {
    let outer = Level {
        frame,
        limit: frame.len(),
        capture,
        context: Context::Outer,
    };
    let Some((tunnel, start)) = outer.ethernet(0, &mut parsed.outer)? else {
        return Ok(());
    };
    parsed.tunnel = Some(tunnel);
    let inner = Level {
        limit: parsed.outer.end(),
        context: Context::Tunnel,
        ..outer
    };
    match start {
        InnerStart::Ethernet => {
            inner.ethernet(tunnel.inner_offset, parsed.inner.insert(Layers::EMPTY))?;
        }
        InnerStart::Ip(ethertype) => {
            let layers = parsed.inner.insert(Layers::EMPTY);
            inner.network(tunnel.inner_offset, ethertype.number(), layers)?;
        }
        InnerStart::Opaque => {}
    }
    Ok(())
}

const VLAN: u16 = EtherType::Vlan.number();
const QINQ: u16 = EtherType::QinQ.number();
const IPV4: u16 = EtherType::Ipv4.number();
const IPV6: u16 = EtherType::Ipv6.number();
const ARP: u16 = EtherType::Arp.number();

/// What a tunnel header says follows it.
#[derive(Clone, Copy)]
enum InnerStart {
    Ethernet,
    Ip(EtherType),
    Opaque,
}

type TunnelStart = Option<(Tunnel, InnerStart)>;

/// One level of parsing: the outer frame, or the frame inside a tunnel.
/// `limit` bounds what this level may read.
#[derive(Clone, Copy)]
struct Level<'a> {
    frame: &'a [u8],
    limit: usize,
    capture: Capture,
    context: Context,
}

/// Source and destination of one IP header.
#[derive(Clone, Copy)]
enum IpPair {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

impl IpPair {
    fn key(self, proto: IpProtocol, (sport, dport): (u16, u16)) -> FlowKey {
        match self {
            Self::V4(s, d) => FlowKey::v4(s, d, proto, sport, dport),
            Self::V6(s, d) => FlowKey::v6(s, d, proto, sport, dport),
        }
    }
}

/// What an IP header (IPv6: with its extension headers) says.
struct IpHeader {
    pair: IpPair,
    /// Upper-layer protocol.
    proto: IpProtocol,
    /// Upper-layer header offset; `None` after a non-first fragment.
    l4: Option<usize>,
    /// End of the packet within the buffer.
    end: usize,
    fragment: Option<Fragment>,
    dscp: u8,
}

impl Level<'_> {
    #[inline(always)]
    fn at(&self, offset: usize) -> &[u8] {
        self.frame.get(offset..self.limit).unwrap_or(&[])
    }

    #[inline(always)]
    fn err(&self, kind: ParseErrorKind, offset: usize) -> ParseError {
        ParseError::new(kind, self.context, offset)
    }

    #[inline(always)]
    fn ethernet(&self, offset: usize, layers: &mut Layers) -> Result<TunnelStart, ParseError> {
        let eth = EthernetFrame::new_checked(self.at(offset)).map_err(|k| self.err(k, offset))?;
        let mut ethertype = eth.ethertype_number();
        let mut pos = offset + EthernetFrame::<&[u8]>::HEADER_LEN;
        while ethertype == VLAN || ethertype == QINQ {
            let tag = VlanPacket::new_checked(self.at(pos)).map_err(|k| self.err(k, pos))?;
            layers
                .vlans
                .push_inner(tag.tci().vid())
                .map_err(|_| self.err(ParseErrorKind::TooManyVlanTags, pos))?;
            ethertype = tag.ethertype_number();
            pos += VlanPacket::<&[u8]>::HEADER_LEN;
        }
        layers.l2 = Some(off(offset));
        self.network(pos, ethertype, layers)
    }

    #[inline(always)]
    fn network(
        &self,
        pos: usize,
        ethertype: u16,
        layers: &mut Layers,
    ) -> Result<TunnelStart, ParseError> {
        layers.net_offset = off(pos);
        layers.end = off(self.limit);
        // Numbers, not the enum: see `transport`.
        let ip = match ethertype {
            IPV4 => {
                layers.net = NetKind::Ipv4;
                self.ip(pos, false, self.capture)?
            }
            IPV6 => {
                layers.net = NetKind::Ipv6;
                self.ip(pos, true, self.capture)?
            }
            ARP => {
                layers.net = NetKind::Arp;
                return Ok(None);
            }
            other => {
                layers.net = NetKind::Other(EtherType::from(other));
                return Ok(None);
            }
        };
        layers.end = off(ip.end);
        layers.protocol = Some(ip.proto);
        layers.fragment = ip.fragment;
        layers.dscp = ip.dscp;
        let Some(l4) = ip.l4 else {
            layers.key = Some(ip.pair.key(ip.proto, (0, 0)).with_vlans(layers.vlans));
            return Ok(None);
        };
        layers.transport = nonzero(l4);
        let ip_level = Level {
            limit: ip.end,
            ..*self
        };
        ip_level.transport(l4, &ip, layers)
    }

    /// The IPv4 or IPv6 header at `pos`. Only whole packets have their
    /// IPv4 checksum verified: an ICMP quote is the sender's business.
    #[inline(always)]
    fn ip(&self, pos: usize, ipv6: bool, capture: Capture) -> Result<IpHeader, ParseError> {
        let fail = |k| self.err(k, pos);
        if ipv6 {
            let ip = Ipv6Packet::new_checked(self.at(pos), capture).map_err(fail)?;
            let ext_base = pos + Ipv6Packet::<&[u8]>::HEADER_LEN;
            let (proto, l4, fragment) = match ip.next_header() {
                // The common case needs no walk.
                p if !ipv6ext::is_extension(p) => (p, Some(ext_base), None),
                first => {
                    let walk = ipv6ext::walk(ip.payload(), first)
                        .map_err(|(k, o)| self.err(k, ext_base + o))?;
                    let fragment = walk.fragment.map(|f| Fragment {
                        offset: f.offset,
                        more: f.more,
                        ident: f.ident,
                    });
                    (
                        walk.protocol,
                        walk.upper_offset.map(|o| ext_base + o),
                        fragment,
                    )
                }
            };
            Ok(IpHeader {
                pair: IpPair::V6(ip.src_addr(), ip.dst_addr()),
                proto,
                l4,
                end: ext_base + ip.payload().len(),
                fragment,
                dscp: ip.traffic_class() >> 2,
            })
        } else {
            let ip = Ipv4Packet::new_checked(self.at(pos), capture).map_err(fail)?;
            if self.context != Context::IcmpError && !ip.verify_checksum() {
                return Err(fail(ParseErrorKind::BadChecksum(Header::Ipv4)));
            }
            let fragment = (ip.more_frags() || ip.frag_offset() != 0).then(|| Fragment {
                offset: ip.frag_offset(),
                more: ip.more_frags(),
                ident: u32::from(ip.ident()),
            });
            let l4 = pos + ip.header_len();
            Ok(IpHeader {
                pair: IpPair::V4(ip.src_addr(), ip.dst_addr()),
                proto: ip.protocol(),
                l4: fragment.is_none_or(|f| f.is_first()).then_some(l4),
                end: l4 + ip.payload().len(),
                fragment,
                dscp: ip.dscp(),
            })
        }
    }

    #[inline(always)]
    fn transport(
        &self,
        l4: usize,
        ip: &IpHeader,
        layers: &mut Layers,
    ) -> Result<TunnelStart, ParseError> {
        let buf = self.at(l4);
        let fail = |k| self.err(k, l4);
        let mut ports = (0, 0);
        let mut tunnel = None;
        let mut payload = l4;
        // Match the protocol number, not the enum: the numbers are sparse
        // and compile to compares, where the enum's dense discriminants
        // compile to a jump table that mispredicts on mixed traffic.
        const TCP: u8 = IpProtocol::Tcp.number();
        const UDP: u8 = IpProtocol::Udp.number();
        const ICMP: u8 = IpProtocol::Icmp.number();
        const ICMPV6: u8 = IpProtocol::Icmpv6.number();
        match (ip.proto.number(), ip.pair) {
            (TCP, _) => {
                let tcp = TcpPacket::new_checked(buf).map_err(fail)?;
                ports = (tcp.src_port(), tcp.dst_port());
                layers.tcp_flags = tcp.flags();
                payload = l4 + tcp.header_len();
            }
            (UDP, _) => {
                // A first fragment's UDP length covers the whole datagram.
                let capture = if ip.fragment.is_some() {
                    Capture::Snapped
                } else {
                    self.capture
                };
                let udp = UdpPacket::new_checked(buf, capture).map_err(fail)?;
                ports = (udp.src_port(), udp.dst_port());
                payload = l4 + UdpPacket::<&[u8]>::HEADER_LEN;
                if self.context == Context::Outer && ip.fragment.is_none() {
                    tunnel = self.tunnel(payload, udp.dst_port())?;
                }
            }
            (ICMP, IpPair::V4(..)) => {
                return self.icmp::<Icmpv4Type>(l4, ip.pair, layers).map(|()| None);
            }
            (ICMPV6, IpPair::V6(..)) => {
                return self.icmp::<Icmpv6Type>(l4, ip.pair, layers).map(|()| None);
            }
            _ => {}
        }
        layers.payload = nonzero(payload);
        layers.key = Some(ip.pair.key(ip.proto, ports).with_vlans(layers.vlans));
        Ok(tunnel)
    }

    fn icmp<T: IcmpType>(
        &self,
        l4: usize,
        pair: IpPair,
        layers: &mut Layers,
    ) -> Result<(), ParseError> {
        let icmp = IcmpPacket::new_checked(self.at(l4), T::HEADER).map_err(|k| self.err(k, l4))?;
        let body = l4 + IcmpPacket::<&[u8]>::HEADER_LEN;
        layers.payload = nonzero(body);
        let key = if let Some(id) = echo_ident::<T, _>(&icmp) {
            pair.key(T::PROTOCOL, (id, id))
        } else if T::from(icmp.msg_type()).is_error() {
            let quote = Level {
                context: Context::IcmpError,
                ..*self
            };
            layers.icmp_error = Some((icmp.msg_type(), icmp.code(), off(body)));
            // The error travels back towards the quoted packet's sender.
            quote.quoted::<T>(body)?.reversed()
        } else {
            pair.key(T::PROTOCOL, (0, 0))
        };
        layers.key = Some(key.with_vlans(layers.vlans));
        Ok(())
    }

    /// The key of the packet an ICMP error quotes: its IP header must be
    /// whole, and enough of its transport header for the ports. A quoted
    /// ICMP message gives its echo identifier, never another quote.
    fn quoted<T: IcmpType>(&self, pos: usize) -> Result<FlowKey, ParseError> {
        let ip = self.ip(pos, T::HEADER == Header::Icmpv6, Capture::Snapped)?;
        let Some(l4) = ip.l4 else {
            return Ok(ip.pair.key(ip.proto, (0, 0)));
        };
        let fail = |k| self.err(k, l4);
        let ports = match ip.proto {
            IpProtocol::Tcp | IpProtocol::Udp => match *self.at(l4) {
                [a, b, c, d, ..] => (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])),
                _ if ip.proto == IpProtocol::Tcp => {
                    return Err(fail(ParseErrorKind::Truncated(Header::Tcp)));
                }
                _ => return Err(fail(ParseErrorKind::Truncated(Header::Udp))),
            },
            p if p == T::PROTOCOL => {
                let icmp = IcmpPacket::new_checked(self.at(l4), T::HEADER).map_err(fail)?;
                let id = echo_ident::<T, _>(&icmp).unwrap_or(0);
                (id, id)
            }
            _ => (0, 0),
        };
        Ok(ip.pair.key(ip.proto, ports))
    }

    #[inline(always)]
    fn tunnel(&self, pos: usize, dst_port: u16) -> Result<TunnelStart, ParseError> {
        let fail = |k| self.err(k, pos);
        Ok(match dst_port {
            VXLAN_PORT => {
                let vxlan = VxlanPacket::new_checked(self.at(pos)).map_err(fail)?;
                let tunnel = Tunnel {
                    kind: TunnelKind::Vxlan,
                    offset: pos,
                    inner_offset: pos + VxlanPacket::<&[u8]>::HEADER_LEN,
                    vni: vxlan.vni(),
                };
                Some((tunnel, InnerStart::Ethernet))
            }
            GENEVE_PORT => {
                let geneve = GenevePacket::new_checked(self.at(pos)).map_err(fail)?;
                let start = match geneve.protocol() {
                    EtherType::TransparentBridging => InnerStart::Ethernet,
                    p @ (EtherType::Ipv4 | EtherType::Ipv6) => InnerStart::Ip(p),
                    _ => InnerStart::Opaque,
                };
                let tunnel = Tunnel {
                    kind: TunnelKind::Geneve,
                    offset: pos,
                    inner_offset: pos + geneve.header_len(),
                    vni: geneve.vni(),
                };
                Some((tunnel, start))
            }
            _ => None,
        })
    }
}

/// The identifier of an echo request or reply.
fn echo_ident<T: IcmpType, B: zerocopy::ByteSlice>(icmp: &IcmpPacket<B>) -> Option<u16> {
    let ty = T::from(icmp.msg_type());
    (ty == T::ECHO_REQUEST || ty == T::ECHO_REPLY).then(|| icmp.echo_ident())
}
