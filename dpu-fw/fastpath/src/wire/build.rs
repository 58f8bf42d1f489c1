//! Building whole frames from a description: what the traffic tool, the
//! tests, the benchmarks and sample captures use to make frames that every
//! checksum and length field agrees with.
//!
//! The builder writes into a caller's buffer (no allocation) and returns the
//! frame length. It emits what it is told, including what the parser
//! rejects on purpose (a non-first fragment with a transport header is the
//! caller's choice), so tests can build both good and bad frames.

use core::net::{Ipv4Addr, Ipv6Addr};

use chaingate_shared::IpProtocol;

use super::icmp::IcmpPacket;
use super::icmpv4::Icmpv4Repr;
use super::icmpv6::Icmpv6Repr;
use super::ipv4::{Ipv4Packet, Ipv4Repr};
use super::ipv6::Ipv6Repr;
use super::ipv6ext::Ipv6ExtRepr;
use super::tcp::{TcpPacket, TcpRepr};
use super::udp::{UdpPacket, UdpRepr};
use super::vlan::VlanRepr;
use super::{
    BufferTooShort, Capture, EtherType, EthernetAddress, EthernetRepr, Header, Tci, checksum,
};

/// The IP header of a frame to build.
#[derive(Clone, Copy, Debug)]
pub enum IpSpec<'a> {
    /// IPv4 with optional options bytes (a multiple of 4) and fragment
    /// fields (offset in bytes, more fragments).
    V4 {
        /// Source.
        src: Ipv4Addr,
        /// Destination.
        dst: Ipv4Addr,
        /// Time to live.
        ttl: u8,
        /// DSCP.
        dscp: u8,
        /// Identification.
        ident: u16,
        /// Fragment offset in bytes and the more-fragments flag.
        frag: Option<(u16, bool)>,
        /// Options bytes.
        options: &'a [u8],
    },
    /// IPv6 with extension headers; the last one's next header is set by
    /// the builder to the transport's protocol.
    V6 {
        /// Source.
        src: Ipv6Addr,
        /// Destination.
        dst: Ipv6Addr,
        /// Hop limit.
        hop_limit: u8,
        /// Traffic class.
        traffic_class: u8,
        /// Extension headers in order.
        ext: &'a [Ipv6ExtRepr],
    },
}

impl IpSpec<'_> {
    /// A plain IPv4 header: TTL 64, DSCP 0, identification 1, not a
    /// fragment, no options.
    #[must_use]
    pub const fn v4(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        IpSpec::V4 {
            src,
            dst,
            ttl: 64,
            dscp: 0,
            ident: 1,
            frag: None,
            options: &[],
        }
    }
}

/// The transport header of a frame to build.
#[derive(Clone, Copy, Debug)]
pub enum L4Spec {
    /// TCP.
    Tcp(TcpRepr),
    /// UDP (the length is the payload's).
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// ICMPv4 (over IPv4).
    Icmpv4(Icmpv4Repr),
    /// ICMPv6 (over IPv6).
    Icmpv6(Icmpv6Repr),
    /// No transport header: the payload follows the IP header as this
    /// protocol (a non-first fragment, ESP, GRE, ...).
    Raw(IpProtocol),
}

impl L4Spec {
    fn protocol(&self) -> IpProtocol {
        match self {
            Self::Tcp(_) => IpProtocol::Tcp,
            Self::Udp { .. } => IpProtocol::Udp,
            Self::Icmpv4(_) => IpProtocol::Icmp,
            Self::Icmpv6(_) => IpProtocol::Icmpv6,
            Self::Raw(p) => *p,
        }
    }

    fn header_len(&self) -> usize {
        match self {
            Self::Tcp(_) => TcpPacket::<&[u8]>::MIN_HEADER_LEN,
            Self::Udp { .. } => UdpPacket::<&[u8]>::HEADER_LEN,
            Self::Icmpv4(_) | Self::Icmpv6(_) => IcmpPacket::<&[u8]>::HEADER_LEN,
            Self::Raw(_) => 0,
        }
    }
}

/// What follows the Ethernet header and tags.
#[derive(Clone, Copy, Debug)]
pub enum NetSpec<'a> {
    /// An IP packet.
    Ip(IpSpec<'a>, L4Spec),
    /// Raw bytes of another EtherType (the payload).
    Raw(EtherType),
}

/// A frame to build.
#[derive(Clone, Copy, Debug)]
pub struct FrameSpec<'a> {
    /// Destination MAC.
    pub dst_mac: EthernetAddress,
    /// Source MAC.
    pub src_mac: EthernetAddress,
    /// VLAN tags, outermost first: TPID and TCI.
    pub vlans: &'a [(EtherType, Tci)],
    /// Network and transport.
    pub net: NetSpec<'a>,
    /// Transport payload (for [`NetSpec::Raw`], the Ethernet payload).
    pub payload: &'a [u8],
}

impl FrameSpec<'_> {
    /// The length of the frame [`Self::build`] writes.
    #[must_use]
    pub fn len(&self) -> usize {
        let l2 = 14 + 4 * self.vlans.len();
        l2 + match self.net {
            NetSpec::Ip(ip, l4) => ip_header_len(&ip) + l4.header_len() + self.payload.len(),
            NetSpec::Raw(_) => self.payload.len(),
        }
    }

    /// True never: a frame has at least an Ethernet header.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the frame at the start of `buf` and returns its length.
    ///
    /// # Errors
    /// [`BufferTooShort`] when `buf` cannot hold it, or when a length field
    /// cannot hold the size (an IP packet over 64 KiB).
    pub fn build(&self, buf: &mut [u8]) -> Result<usize, BufferTooShort> {
        let len = self.len();
        let too_short = BufferTooShort {
            needed: len,
            available: buf.len(),
        };
        let out = buf.get_mut(..len).ok_or(too_short)?;
        let net_type = match self.net {
            NetSpec::Ip(IpSpec::V4 { .. }, _) => EtherType::Ipv4,
            NetSpec::Ip(IpSpec::V6 { .. }, _) => EtherType::Ipv6,
            NetSpec::Raw(t) => t,
        };
        EthernetRepr {
            dst: self.dst_mac,
            src: self.src_mac,
            ethertype: self.vlans.first().map_or(net_type, |(tpid, _)| *tpid),
        }
        .emit(out)?;
        let mut pos = 14;
        for (i, (_, tci)) in self.vlans.iter().enumerate() {
            VlanRepr {
                tci: *tci,
                ethertype: self.vlans.get(i + 1).map_or(net_type, |(tpid, _)| *tpid),
            }
            .emit(tail(out, pos)?)?;
            pos += 4;
        }
        match self.net {
            NetSpec::Ip(ip, l4) => build_ip(tail(out, pos)?, &ip, &l4, self.payload)?,
            NetSpec::Raw(_) => tail(out, pos)?.copy_from_slice(self.payload),
        }
        Ok(len)
    }
}

fn tail(buf: &mut [u8], at: usize) -> Result<&mut [u8], BufferTooShort> {
    let available = buf.len();
    buf.get_mut(at..).ok_or(BufferTooShort {
        needed: at,
        available,
    })
}

fn ip_header_len(ip: &IpSpec<'_>) -> usize {
    match ip {
        IpSpec::V4 { options, .. } => 20 + options.len(),
        IpSpec::V6 { ext, .. } => 40 + ext.iter().map(|e| e.len).sum::<usize>(),
    }
}

fn build_ip(
    out: &mut [u8],
    ip: &IpSpec<'_>,
    l4: &L4Spec,
    payload: &[u8],
) -> Result<(), BufferTooShort> {
    let header_len = ip_header_len(ip);
    let l4_len = l4.header_len() + payload.len();
    let too_big = BufferTooShort {
        needed: header_len + l4_len,
        available: usize::from(u16::MAX),
    };
    let proto = l4.protocol();
    let pseudo = match *ip {
        IpSpec::V4 {
            src,
            dst,
            ttl,
            dscp,
            ident,
            frag,
            options,
        } => {
            let total = u16::try_from(header_len + l4_len).map_err(|_| too_big)?;
            let (frag_offset, more_frags) = frag.unwrap_or((0, false));
            Ipv4Repr {
                src,
                dst,
                protocol: proto,
                payload_len: total - 20,
                ttl,
                dscp,
                ecn: 0,
                ident,
                dont_frag: frag.is_none(),
                more_frags,
                frag_offset,
            }
            .emit(out)?;
            // Options go in before the checksum is computed again.
            if let (Some(first), Some(opts)) =
                (out.first_mut(), u8::try_from(options.len() / 4).ok())
            {
                *first = 0x45 + opts;
            }
            tail(out, 20)?
                .get_mut(..options.len())
                .ok_or(too_big)?
                .copy_from_slice(options);
            if let Ok(mut packet) = Ipv4Packet::new_checked(&mut *out, Capture::Snapped) {
                packet.fill_checksum();
            }
            let l4_len = u16::try_from(l4_len).map_err(|_| too_big)?;
            checksum::pseudo_header_v4(src, dst, proto, l4_len)
        }
        IpSpec::V6 {
            src,
            dst,
            hop_limit,
            traffic_class,
            ext,
        } => {
            let payload_len = u16::try_from(header_len - 40 + l4_len).map_err(|_| too_big)?;
            let first = ext.first().map_or(proto, |e| e.kind);
            Ipv6Repr {
                src,
                dst,
                next_header: first,
                payload_len,
                hop_limit,
                traffic_class,
                flow_label: 0,
            }
            .emit(out)?;
            let mut pos = 40;
            for (i, e) in ext.iter().enumerate() {
                let next = ext.get(i + 1).map_or(proto, |n| n.kind);
                Ipv6ExtRepr {
                    next_header: next,
                    ..*e
                }
                .emit(tail(out, pos)?)?;
                pos += e.len;
            }
            let l4_len = u32::try_from(l4_len).map_err(|_| too_big)?;
            checksum::pseudo_header_v6(src, dst, proto, l4_len)
        }
    };
    let l4_out = tail(out, header_len)?;
    tail(l4_out, l4.header_len())?.copy_from_slice(payload);
    match l4 {
        L4Spec::Tcp(repr) => {
            repr.emit(l4_out)?;
            if let Ok(mut p) = TcpPacket::new_checked(l4_out) {
                p.fill_checksum(pseudo);
            }
        }
        L4Spec::Udp { src_port, dst_port } => {
            let payload_len = u16::try_from(payload.len()).map_err(|_| too_big)?;
            UdpRepr {
                src_port: *src_port,
                dst_port: *dst_port,
                payload_len,
            }
            .emit(l4_out)?;
            if let Ok(mut p) = UdpPacket::new_checked(l4_out, Capture::Snapped) {
                p.fill_checksum(pseudo);
            }
        }
        L4Spec::Icmpv4(repr) => {
            repr.emit(l4_out)?;
            if let Ok(mut p) = IcmpPacket::new_checked(l4_out, Header::Icmpv4) {
                p.fill_checksum(0);
            }
        }
        L4Spec::Icmpv6(repr) => {
            repr.emit(l4_out)?;
            if let Ok(mut p) = IcmpPacket::new_checked(l4_out, Header::Icmpv6) {
                p.fill_checksum(pseudo);
            }
        }
        L4Spec::Raw(_) => {}
    }
    Ok(())
}
