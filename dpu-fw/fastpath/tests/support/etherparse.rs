//! etherparse's reading of a frame's flow key: the independent oracle of
//! the cross-check, and the baseline of the parser benchmark. Where
//! etherparse stops early by design (the transport header of a first
//! fragment, VXLAN/Geneve, ICMP quotes cut to 8 bytes), it takes
//! etherparse's offsets and reads the ports there.

use core::net::IpAddr;

use chaingate_shared::{FlowKey, IpProtocol, VlanId, VlanStack};
use etherparse::{
    Icmpv4Type, Icmpv6Type, LaxNetSlice, LaxSlicedPacket, LinkExtSlice, NetSlice, SlicedPacket,
    TransportSlice,
};

/// Ports from the first four bytes of a transport header.
fn ports_at(bytes: &[u8]) -> (u16, u16) {
    match bytes {
        [a, b, c, d, ..] => (u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d])),
        _ => (0, 0),
    }
}

/// etherparse's reading of a quoted packet (lax: the quote is cut short).
fn quoted_key(quote: &[u8]) -> Option<FlowKey> {
    let q = LaxSlicedPacket::from_ip(quote).ok()?;
    let (src, dst, payload, later_fragment) = match q.net? {
        LaxNetSlice::Ipv4(ip) => (
            IpAddr::V4(ip.header().source_addr()),
            IpAddr::V4(ip.header().destination_addr()),
            ip.payload().clone(),
            ip.header().fragments_offset().value() != 0,
        ),
        LaxNetSlice::Ipv6(ip) => (
            IpAddr::V6(ip.header().source_addr()),
            IpAddr::V6(ip.header().destination_addr()),
            ip.payload().clone(),
            ip.extensions().clone().into_iter().any(|e| {
                matches!(e, etherparse::Ipv6ExtensionSlice::Fragment(f) if f.fragment_offset().value() != 0)
            }),
        ),
        LaxNetSlice::Arp(_) => return None,
    };
    let proto = IpProtocol::from(payload.ip_number.0);
    let ports = match (q.transport, proto) {
        (Some(TransportSlice::Icmpv4(i)), _) => echo_ports4(&i.icmp_type()),
        (Some(TransportSlice::Icmpv6(i)), _) => echo_ports6(&i.icmp_type()),
        _ if later_fragment => (0, 0),
        (_, IpProtocol::Tcp | IpProtocol::Udp) => ports_at(payload.payload),
        (_, IpProtocol::Icmp | IpProtocol::Icmpv6) => match *payload.payload {
            [0 | 8 | 128 | 129, _, _, _, a, b, ..] => {
                let id = u16::from_be_bytes([a, b]);
                (id, id)
            }
            _ => (0, 0),
        },
        _ => (0, 0),
    };
    FlowKey::new(src, dst, proto, ports.0, ports.1)
}

fn echo_ports4(t: &Icmpv4Type) -> (u16, u16) {
    match t {
        Icmpv4Type::EchoRequest(h) | Icmpv4Type::EchoReply(h) => (h.id, h.id),
        _ => (0, 0),
    }
}

fn echo_ports6(t: &Icmpv6Type) -> (u16, u16) {
    match t {
        Icmpv6Type::EchoRequest(h) | Icmpv6Type::EchoReply(h) => (h.id, h.id),
        _ => (0, 0),
    }
}

/// etherparse's reading of a whole frame: the key, and the bytes of a
/// VXLAN/Geneve inner frame if there is one; `None` when etherparse finds
/// no IP packet or an error.
pub(crate) fn etherparse_key(frame: &[u8]) -> Option<(FlowKey, Option<&[u8]>)> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let mut vlans = VlanStack::EMPTY;
    for ext in &p.link_exts {
        if let LinkExtSlice::Vlan(v) = ext {
            vlans
                .push_inner(VlanId::new(v.vlan_identifier().value())?)
                .ok()?;
        }
    }
    let (src, dst, payload, later_fragment) = match p.net.as_ref()? {
        NetSlice::Ipv4(ip) => (
            IpAddr::V4(ip.header().source_addr()),
            IpAddr::V4(ip.header().destination_addr()),
            ip.payload().clone(),
            ip.header().fragments_offset().value() != 0,
        ),
        NetSlice::Ipv6(ip) => (
            IpAddr::V6(ip.header().source_addr()),
            IpAddr::V6(ip.header().destination_addr()),
            ip.payload().clone(),
            frag_offset_v6(ip) != 0,
        ),
        NetSlice::Arp(_) => return None,
    };
    let proto = IpProtocol::from(payload.ip_number.0);
    let mut inner = None;
    let key_of = |ports: (u16, u16)| FlowKey::new(src, dst, proto, ports.0, ports.1);
    let key = match &p.transport {
        Some(TransportSlice::Tcp(t)) => key_of((t.source_port(), t.destination_port())),
        Some(TransportSlice::Udp(u)) => {
            let data = u.payload();
            inner = match (u.destination_port(), data.first()) {
                (4789, _) => data.get(8..),
                (6081, Some(b)) => data.get(8 + usize::from(b & 0x3F) * 4..),
                _ => None,
            };
            key_of((u.source_port(), u.destination_port()))
        }
        Some(TransportSlice::Icmpv4(i)) if matches!(i.type_u8(), 3 | 4 | 5 | 11 | 12) => {
            quoted_key(i.payload()).map(|k| k.reversed())
        }
        Some(TransportSlice::Icmpv6(i)) if i.type_u8() < 128 => {
            quoted_key(i.payload()).map(|k| k.reversed())
        }
        Some(TransportSlice::Icmpv4(i)) => key_of(echo_ports4(&i.icmp_type())),
        Some(TransportSlice::Icmpv6(i)) => key_of(echo_ports6(&i.icmp_type())),
        Some(_) => return None,
        // etherparse does not read the transport of any fragment: the first
        // one still has its ports where etherparse says the payload starts.
        None => match proto {
            IpProtocol::Tcp | IpProtocol::Udp if payload.fragmented && !later_fragment => {
                key_of(ports_at(payload.payload))
            }
            _ => key_of((0, 0)),
        },
    };
    Some((key?.with_vlans(vlans), inner))
}

fn frag_offset_v6(ip: &etherparse::Ipv6Slice<'_>) -> u16 {
    let mut offset = 0;
    for ext in ip.extensions().clone().into_iter() {
        if let etherparse::Ipv6ExtensionSlice::Fragment(f) = ext {
            offset = f.fragment_offset().value();
        }
    }
    offset
}
