//! The frame parser end to end: every kind of frame the gateway meets, the
//! keys and offsets it must yield, and the errors it must report.

use core::net::{Ipv4Addr, Ipv6Addr};

use chaingate_fastpath::wire::build::{FrameSpec, IpSpec, L4Spec, NetSpec};
use chaingate_fastpath::wire::icmpv4::{Icmpv4Repr, Icmpv4Type};
use chaingate_fastpath::wire::icmpv6::{Icmpv6Repr, Icmpv6Type};
use chaingate_fastpath::wire::ipv6ext::{FragmentFields, Ipv6ExtRepr};
use chaingate_fastpath::wire::tcp::{TcpFlags, TcpRepr};
use chaingate_fastpath::wire::{
    Context, EtherType, EthernetAddress, Header, Network, ParseErrorKind, Tci, TunnelKind, parse,
    parse_snapped,
};
use chaingate_shared::{FlowKey, IpProtocol, VlanId, VlanStack};

const A4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B4: Ipv4Addr = Ipv4Addr::new(192, 168, 7, 9);

fn a6() -> Ipv6Addr {
    "2001:db8::a".parse().unwrap()
}
fn b6() -> Ipv6Addr {
    "2001:db8:1::b".parse().unwrap()
}

fn tcp(sport: u16, dport: u16, flags: TcpFlags) -> L4Spec {
    L4Spec::Tcp(TcpRepr {
        src_port: sport,
        dst_port: dport,
        seq: 100,
        ack: 0,
        flags,
        window: 1024,
    })
}

fn v4() -> IpSpec<'static> {
    IpSpec::V4 {
        src: A4,
        dst: B4,
        ttl: 64,
        dscp: 0,
        ident: 1,
        frag: None,
        options: &[],
    }
}

fn v4_frag(offset: u16, more: bool) -> IpSpec<'static> {
    IpSpec::V4 {
        src: A4,
        dst: B4,
        ttl: 64,
        dscp: 0,
        ident: 1,
        frag: Some((offset, more)),
        options: &[],
    }
}

fn v6(ext: &[Ipv6ExtRepr]) -> IpSpec<'_> {
    IpSpec::V6 {
        src: a6(),
        dst: b6(),
        hop_limit: 64,
        traffic_class: 0,
        ext,
    }
}

fn frame(vlans: &[(EtherType, Tci)], net: NetSpec<'_>, payload: &[u8]) -> Vec<u8> {
    let spec = FrameSpec {
        dst_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
        src_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
        vlans,
        net,
        payload,
    };
    let mut buf = vec![0u8; spec.len()];
    assert_eq!(spec.build(&mut buf).unwrap(), buf.len());
    buf
}

fn tag(tpid: EtherType, vid: u16) -> (EtherType, Tci) {
    (tpid, Tci::new(3, false, VlanId::new(vid).unwrap()))
}

/// A hand-written frame, independent of the builder: VLAN 100, IPv4
/// 10.0.0.1 -> 10.0.0.2, TCP 1234 -> 80, SYN, padded to 64 bytes.
const TCP_FIXTURE: [u8; 64] = [
    0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, // MACs
    0x81, 0x00, 0x00, 0x64, 0x08, 0x00, // tag 100, IPv4
    0x45, 0x00, 0x00, 0x28, 0x00, 0x01, 0x40, 0x00, 0x40, 0x06, 0x26, 0xcd, // IPv4
    10, 0, 0, 1, 10, 0, 0, 2, //
    0x04, 0xd2, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0x04, 0x00, 0, 0, 0, 0, // TCP
    0, 0, 0, 0, 0, 0, // padding
];

#[test]
fn fixture_tcp_over_vlan() {
    let parsed = parse(&TCP_FIXTURE).unwrap();
    let outer = parsed.outer();
    let expected = FlowKey::v4(
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 2),
        IpProtocol::Tcp,
        1234,
        80,
    )
    .with_vlans(VlanStack::single(VlanId::new(100).unwrap()));
    assert_eq!(parsed.key(), Some(&expected));
    assert_eq!(outer.l2_offset(), Some(0));
    assert_eq!(outer.network(), Network::Ipv4(18));
    assert_eq!(outer.transport_offset(), Some(38));
    assert_eq!(outer.payload_offset(), Some(58));
    assert_eq!(outer.end(), 58, "padding is not part of the packet");
    assert_eq!(outer.tcp_flags(), TcpFlags::SYN);
    assert_eq!(outer.protocol(), Some(IpProtocol::Tcp));
    assert!(parsed.tunnel().is_none() && parsed.inner().is_none());
}

#[test]
fn fixture_every_truncation_is_an_error_at_the_right_header() {
    for n in 0..58 {
        let err = parse(&TCP_FIXTURE[..n]).unwrap_err();
        let (kind, offset) = match n {
            0..14 => (ParseErrorKind::Truncated(Header::Ethernet), 0),
            14..18 => (ParseErrorKind::Truncated(Header::Vlan), 14),
            18..38 => (ParseErrorKind::Truncated(Header::Ipv4), 18),
            _ => (ParseErrorKind::LengthBeyondFrame(Header::Ipv4), 18),
        };
        assert_eq!((err.kind(), err.offset()), (kind, offset), "length {n}");
    }
}

#[test]
fn bad_ipv4_checksum_is_reported() {
    let mut f = TCP_FIXTURE;
    f[26] ^= 0x01; // TTL
    let err = parse(&f).unwrap_err();
    assert_eq!(err.kind(), ParseErrorKind::BadChecksum(Header::Ipv4));
    assert_eq!(err.to_string(), "bad ipv4 checksum at offset 18");
}

#[test]
fn snapped_capture_keeps_the_key_when_only_payload_is_cut() {
    let f = frame(&[], NetSpec::Ip(v4(), tcp(5, 6, TcpFlags::ACK)), &[7; 100]);
    let cut = &f[..70];
    assert_eq!(
        parse(cut).unwrap_err().kind(),
        ParseErrorKind::LengthBeyondFrame(Header::Ipv4)
    );
    let parsed = parse_snapped(cut).unwrap();
    assert_eq!(parsed.key().unwrap().dst_port(), 6);
    // A cut inside a header is still an error.
    let err = parse_snapped(&f[..40]).unwrap_err();
    assert_eq!(
        (err.kind(), err.offset()),
        (ParseErrorKind::Truncated(Header::Tcp), 34)
    );
}

#[test]
fn qinq_keeps_outer_and_inner_tags() {
    let vlans = [tag(EtherType::QinQ, 10), tag(EtherType::Vlan, 20)];
    let f = frame(
        &vlans,
        NetSpec::Ip(
            v4(),
            L4Spec::Udp {
                src_port: 1,
                dst_port: 2,
            },
        ),
        b"x",
    );
    let parsed = parse(&f).unwrap();
    let stack = parsed.key().unwrap().vlans();
    assert_eq!(
        *stack,
        VlanStack::double(VlanId::new(10).unwrap(), VlanId::new(20).unwrap())
    );
    assert_eq!(parsed.outer().network(), Network::Ipv4(22));
}

#[test]
fn three_tags_are_kept_and_a_fourth_is_an_error() {
    // A QinQ customer frame under the gateway's segment tag.
    let three = [
        tag(EtherType::Vlan, 10),
        tag(EtherType::QinQ, 20),
        tag(EtherType::Vlan, 30),
    ];
    let f = frame(
        &three,
        NetSpec::Ip(
            v4(),
            L4Spec::Udp {
                src_port: 1,
                dst_port: 2,
            },
        ),
        b"",
    );
    let p = parse(&f).unwrap();
    let vids: Vec<u16> = p
        .key()
        .unwrap()
        .vlans()
        .as_slice()
        .iter()
        .map(|v| v.get())
        .collect();
    assert_eq!(vids, [10, 20, 30]);
    let vlans = [
        tag(EtherType::QinQ, 10),
        tag(EtherType::Vlan, 20),
        tag(EtherType::Vlan, 30),
        tag(EtherType::Vlan, 40),
    ];
    let f = frame(
        &vlans,
        NetSpec::Ip(
            v4(),
            L4Spec::Udp {
                src_port: 1,
                dst_port: 2,
            },
        ),
        b"",
    );
    let err = parse(&f).unwrap_err();
    assert_eq!(
        (err.kind(), err.offset()),
        (ParseErrorKind::TooManyVlanTags, 26)
    );
    assert_eq!(err.to_string(), "more than 3 vlan tags at offset 26");
}

#[test]
fn arp_and_unknown_ethertypes_have_no_key() {
    let f = frame(
        &[tag(EtherType::Vlan, 5)],
        NetSpec::Raw(EtherType::Arp),
        &[0; 28],
    );
    let parsed = parse(&f).unwrap();
    assert_eq!(parsed.outer().network(), Network::Arp(18));
    assert_eq!(parsed.key(), None);
    assert_eq!(parsed.outer().vlans().len(), 1);
    let f = frame(&[], NetSpec::Raw(EtherType::Unknown(0x88CC)), &[0; 30]);
    assert_eq!(
        parse(&f).unwrap().outer().network(),
        Network::Other(EtherType::Unknown(0x88CC), 14)
    );
    // 802.3 length field (an LLC frame).
    let f = frame(&[], NetSpec::Raw(EtherType::Unknown(46)), &[0; 46]);
    assert_eq!(parse(&f).unwrap().key(), None);
}

#[test]
fn ipv4_options_are_skipped() {
    let ip = IpSpec::V4 {
        src: A4,
        dst: B4,
        ttl: 1,
        dscp: 46,
        ident: 9,
        frag: None,
        options: &[0x94, 0x04, 0, 0, 1, 1, 1, 0], // router alert, NOPs, EOL
    };
    let f = frame(&[], NetSpec::Ip(ip, tcp(1, 2, TcpFlags::SYN)), b"");
    let parsed = parse(&f).unwrap();
    assert_eq!(parsed.outer().transport_offset(), Some(14 + 28));
    assert_eq!(parsed.outer().dscp(), 46);
    assert_eq!(parsed.key().unwrap().src_port(), 1);
}

#[test]
fn ipv4_fragments_only_the_first_has_ports() {
    let first = v4_frag(0, true);
    let f = frame(
        &[],
        NetSpec::Ip(
            first,
            L4Spec::Udp {
                src_port: 53,
                dst_port: 9,
            },
        ),
        &[1; 32],
    );
    let parsed = parse(&f).unwrap();
    let outer = parsed.outer();
    assert_eq!(parsed.key().unwrap().src_port(), 53);
    assert!(outer.fragment().unwrap().is_first() && outer.fragment().unwrap().more);

    let later = v4_frag(1480, false);
    let f = frame(
        &[],
        NetSpec::Ip(later, L4Spec::Raw(IpProtocol::Udp)),
        &[1; 32],
    );
    let parsed = parse(&f).unwrap();
    let key = parsed.key().unwrap();
    assert_eq!(
        (key.proto(), key.src_port(), key.dst_port()),
        (IpProtocol::Udp, 0, 0)
    );
    assert_eq!(parsed.outer().transport_offset(), None);
    assert_eq!(parsed.outer().fragment().unwrap().offset, 1480);
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let ext = [
        Ipv6ExtRepr {
            kind: IpProtocol::HopByHop,
            next_header: IpProtocol::Tcp,
            len: 8,
            fragment: None,
        },
        Ipv6ExtRepr {
            kind: IpProtocol::Ipv6Route,
            next_header: IpProtocol::Tcp,
            len: 24,
            fragment: None,
        },
        Ipv6ExtRepr {
            kind: IpProtocol::Ah,
            next_header: IpProtocol::Tcp,
            len: 24,
            fragment: None,
        },
        Ipv6ExtRepr {
            kind: IpProtocol::Ipv6Opts,
            next_header: IpProtocol::Tcp,
            len: 16,
            fragment: None,
        },
    ];
    let f = frame(
        &[],
        NetSpec::Ip(v6(&ext), tcp(443, 50000, TcpFlags::ACK)),
        b"data",
    );
    let parsed = parse(&f).unwrap();
    let key = parsed.key().unwrap();
    assert_eq!(*key, FlowKey::v6(a6(), b6(), IpProtocol::Tcp, 443, 50000));
    assert_eq!(parsed.outer().transport_offset(), Some(14 + 40 + 72));
    assert_eq!(parsed.outer().network(), Network::Ipv6(14));
}

#[test]
fn ipv6_esp_ends_the_walk_and_later_fragments_have_no_ports() {
    let f = frame(
        &[],
        NetSpec::Ip(v6(&[]), L4Spec::Raw(IpProtocol::Esp)),
        &[0xAB; 40],
    );
    let key = *parse(&f).unwrap().key().unwrap();
    assert_eq!((key.proto(), key.src_port()), (IpProtocol::Esp, 0));

    let frag = [Ipv6ExtRepr {
        kind: IpProtocol::Ipv6Frag,
        next_header: IpProtocol::Udp,
        len: 8,
        fragment: Some(FragmentFields {
            offset: 8,
            more: true,
            ident: 77,
        }),
    }];
    let f = frame(
        &[],
        NetSpec::Ip(v6(&frag), L4Spec::Raw(IpProtocol::Udp)),
        &[0; 16],
    );
    let parsed = parse(&f).unwrap();
    assert_eq!(parsed.key().unwrap().proto(), IpProtocol::Udp);
    assert_eq!(parsed.outer().transport_offset(), None);
    assert_eq!(parsed.outer().fragment().unwrap().ident, 77);
}

#[test]
fn icmp_echo_identifier_stands_in_for_ports_in_both_directions() {
    let req = frame(
        &[],
        NetSpec::Ip(
            v4(),
            L4Spec::Icmpv4(Icmpv4Repr::EchoRequest {
                ident: 0x4242,
                seq: 1,
            }),
        ),
        b"abcd",
    );
    let rep = frame(
        &[],
        NetSpec::Ip(
            IpSpec::V4 {
                src: B4,
                dst: A4,
                ttl: 64,
                dscp: 0,
                ident: 2,
                frag: None,
                options: &[],
            },
            L4Spec::Icmpv4(Icmpv4Repr::EchoReply {
                ident: 0x4242,
                seq: 1,
            }),
        ),
        b"abcd",
    );
    let (kq, kr) = (
        *parse(&req).unwrap().key().unwrap(),
        *parse(&rep).unwrap().key().unwrap(),
    );
    assert_eq!((kq.src_port(), kq.dst_port()), (0x4242, 0x4242));
    assert_eq!(kq.normalised().0, kr.normalised().0);
    assert_eq!(kq.symmetric_hash(), kr.symmetric_hash());

    let f = frame(
        &[],
        NetSpec::Ip(
            v6(&[]),
            L4Spec::Icmpv6(Icmpv6Repr::EchoRequest { ident: 9, seq: 3 }),
        ),
        b"",
    );
    let key = *parse(&f).unwrap().key().unwrap();
    assert_eq!(
        (key.proto(), key.src_port(), key.dst_port()),
        (IpProtocol::Icmpv6, 9, 9)
    );
}

/// The quote of a packet `A:1234 -> B:80` as a router would send it back.
fn quoted_v4_tcp() -> Vec<u8> {
    let original = frame(
        &[],
        NetSpec::Ip(v4(), tcp(1234, 80, TcpFlags::SYN)),
        &[0; 64],
    );
    original[14..14 + 28].to_vec() // IP header and 8 bytes of TCP, as RFC 792 says
}

#[test]
fn icmpv4_error_maps_to_the_connection_it_is_about() {
    let router = Ipv4Addr::new(172, 16, 0, 1);
    let error = Icmpv4Repr::Error {
        ty: Icmpv4Type::DstUnreachable,
        code: 4,
        rest: [0, 0, 0x05, 0xdc],
    };
    let ip = IpSpec::V4 {
        src: router,
        dst: A4,
        ttl: 64,
        dscp: 0,
        ident: 3,
        frag: None,
        options: &[],
    };
    let f = frame(
        &[tag(EtherType::Vlan, 7)],
        NetSpec::Ip(ip, L4Spec::Icmpv4(error)),
        &quoted_v4_tcp(),
    );
    let parsed = parse(&f).unwrap();
    let connection = FlowKey::v4(A4, B4, IpProtocol::Tcp, 1234, 80)
        .with_vlans(VlanStack::single(VlanId::new(7).unwrap()));
    assert_eq!(
        parsed.key(),
        Some(&connection.reversed()),
        "travels back to A"
    );
    let icmp = parsed.outer().icmp_error().unwrap();
    assert_eq!((icmp.ty, icmp.code, icmp.quote), (3, 4, 18 + 20 + 8));
    assert_eq!(parsed.outer().protocol(), Some(IpProtocol::Icmp));
}

#[test]
fn icmpv4_error_with_a_short_quote_is_an_error_in_the_quote() {
    let quote = &quoted_v4_tcp()[..22]; // IP header and only 2 bytes of TCP
    let error = Icmpv4Repr::Error {
        ty: Icmpv4Type::TimeExceeded,
        code: 0,
        rest: [0; 4],
    };
    let f = frame(&[], NetSpec::Ip(v4(), L4Spec::Icmpv4(error)), quote);
    let err = parse(&f).unwrap_err();
    assert_eq!(
        (err.kind(), err.context(), err.offset()),
        (
            ParseErrorKind::Truncated(Header::Tcp),
            Context::IcmpError,
            14 + 20 + 8 + 20
        )
    );
    assert_eq!(
        err.to_string(),
        "truncated tcp header in icmp error at offset 62"
    );
}

#[test]
fn icmpv6_error_quoting_udp_behind_an_extension_header() {
    let ext = [Ipv6ExtRepr {
        kind: IpProtocol::Ipv6Opts,
        next_header: IpProtocol::Udp,
        len: 8,
        fragment: None,
    }];
    let original = frame(
        &[],
        NetSpec::Ip(
            v6(&ext),
            L4Spec::Udp {
                src_port: 5000,
                dst_port: 53,
            },
        ),
        &[0; 200],
    );
    let quote = &original[14..14 + 40 + 8 + 8 + 20];
    let error = Icmpv6Repr::Error {
        ty: Icmpv6Type::PacketTooBig,
        code: 0,
        rest: 1280u32.to_be_bytes(),
    };
    let ip = IpSpec::V6 {
        src: "2001:db8:ffff::1".parse().unwrap(),
        dst: a6(),
        hop_limit: 64,
        traffic_class: 0,
        ext: &[],
    };
    let f = frame(&[], NetSpec::Ip(ip, L4Spec::Icmpv6(error)), quote);
    let parsed = parse(&f).unwrap();
    assert_eq!(
        parsed.key(),
        Some(&FlowKey::v6(b6(), a6(), IpProtocol::Udp, 53, 5000))
    );
}

#[test]
fn icmp_error_quoting_an_echo_maps_to_the_ping() {
    let ping = frame(
        &[],
        NetSpec::Ip(
            v4(),
            L4Spec::Icmpv4(Icmpv4Repr::EchoRequest { ident: 77, seq: 1 }),
        ),
        &[0; 8],
    );
    let error = Icmpv4Repr::Error {
        ty: Icmpv4Type::TimeExceeded,
        code: 0,
        rest: [0; 4],
    };
    let f = frame(
        &[],
        NetSpec::Ip(v4(), L4Spec::Icmpv4(error)),
        &ping[14..14 + 28],
    );
    let key = *parse(&f).unwrap().key().unwrap();
    assert_eq!(key, FlowKey::v4(B4, A4, IpProtocol::Icmp, 77, 77));
}

fn vxlan_payload(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut p = vec![0x08, 0, 0, 0];
    p.extend_from_slice(&vni.to_be_bytes()[1..]);
    p.push(0);
    p.extend_from_slice(inner);
    p
}

#[test]
fn vxlan_inner_frame_is_parsed() {
    let inner = frame(
        &[tag(EtherType::Vlan, 300)],
        NetSpec::Ip(v6(&[]), tcp(1, 2, TcpFlags::FIN)),
        b"in",
    );
    let outer = frame(
        &[],
        NetSpec::Ip(
            v4(),
            L4Spec::Udp {
                src_port: 49152,
                dst_port: 4789,
            },
        ),
        &vxlan_payload(0x00AB_CDEF, &inner),
    );
    let parsed = parse(&outer).unwrap();
    let tunnel = parsed.tunnel().unwrap();
    assert_eq!(tunnel.kind, TunnelKind::Vxlan);
    assert_eq!(tunnel.vni.get(), 0x00AB_CDEF);
    assert_eq!((tunnel.offset, tunnel.inner_offset), (42, 50));
    assert_eq!(parsed.key().unwrap().dst_port(), 4789);
    let inner_key = parsed.inner_key().unwrap();
    assert_eq!(
        *inner_key,
        FlowKey::v6(a6(), b6(), IpProtocol::Tcp, 1, 2)
            .with_vlans(VlanStack::single(VlanId::new(300).unwrap()))
    );
    assert_eq!(parsed.inner().unwrap().tcp_flags(), TcpFlags::FIN);
    assert_eq!(parsed.inner().unwrap().l2_offset(), Some(50));
}

#[test]
fn vxlan_errors_inside_the_tunnel_say_so() {
    let inner = frame(&[], NetSpec::Ip(v4(), tcp(1, 2, TcpFlags::SYN)), b"");
    let outer = frame(
        &[],
        NetSpec::Ip(
            v4(),
            L4Spec::Udp {
                src_port: 1,
                dst_port: 4789,
            },
        ),
        &vxlan_payload(1, &inner[..30]),
    );
    let err = parse(&outer).unwrap_err();
    assert_eq!(
        (err.kind(), err.context(), err.offset()),
        (
            ParseErrorKind::Truncated(Header::Ipv4),
            Context::Tunnel,
            50 + 14
        )
    );
    let mut bad = vxlan_payload(1, &inner);
    bad[0] = 0;
    let outer = frame(
        &[],
        NetSpec::Ip(
            v4(),
            L4Spec::Udp {
                src_port: 1,
                dst_port: 4789,
            },
        ),
        &bad,
    );
    let err = parse(&outer).unwrap_err();
    assert_eq!(
        (err.kind(), err.offset()),
        (ParseErrorKind::BadFlags(Header::Vxlan), 42)
    );
}

#[test]
fn nested_tunnels_are_not_unwrapped_twice() {
    let innermost = frame(&[], NetSpec::Ip(v4(), tcp(1, 2, TcpFlags::SYN)), b"");
    let middle = frame(
        &[],
        NetSpec::Ip(
            v4(),
            L4Spec::Udp {
                src_port: 7,
                dst_port: 4789,
            },
        ),
        &vxlan_payload(2, &innermost),
    );
    let outer = frame(
        &[],
        NetSpec::Ip(
            v4(),
            L4Spec::Udp {
                src_port: 8,
                dst_port: 4789,
            },
        ),
        &vxlan_payload(1, &middle),
    );
    let parsed = parse(&outer).unwrap();
    assert_eq!(parsed.inner_key().unwrap().dst_port(), 4789);
}

fn geneve_payload(protocol: u16, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut p = vec![0x01, 0x00];
    p.extend_from_slice(&protocol.to_be_bytes());
    p.extend_from_slice(&vni.to_be_bytes()[1..]);
    p.push(0);
    p.extend_from_slice(&[0x01, 0x02, 0x80, 0x00]); // one empty option (4 bytes)
    p.extend_from_slice(inner);
    p
}

#[test]
fn geneve_carries_ethernet_or_ip() {
    let inner_eth = frame(&[], NetSpec::Ip(v4(), tcp(10, 20, TcpFlags::SYN)), b"");
    let outer = frame(
        &[],
        NetSpec::Ip(
            v6(&[]),
            L4Spec::Udp {
                src_port: 3,
                dst_port: 6081,
            },
        ),
        &geneve_payload(0x6558, 42, &inner_eth),
    );
    let parsed = parse(&outer).unwrap();
    let tunnel = parsed.tunnel().unwrap();
    assert_eq!((tunnel.kind, tunnel.vni.get()), (TunnelKind::Geneve, 42));
    assert_eq!(tunnel.inner_offset, 14 + 40 + 8 + 12);
    assert_eq!(parsed.inner_key().unwrap().src_port(), 10);

    let outer = frame(
        &[],
        NetSpec::Ip(
            v4(),
            L4Spec::Udp {
                src_port: 3,
                dst_port: 6081,
            },
        ),
        &geneve_payload(0x0800, 42, &inner_eth[14..]),
    );
    let parsed = parse(&outer).unwrap();
    let inner = parsed.inner().unwrap();
    assert_eq!(inner.l2_offset(), None);
    assert_eq!(inner.network(), Network::Ipv4(14 + 20 + 8 + 12));
    assert_eq!(parsed.inner_key().unwrap().dst_port(), 20);

    let outer = frame(
        &[],
        NetSpec::Ip(
            v4(),
            L4Spec::Udp {
                src_port: 3,
                dst_port: 6081,
            },
        ),
        &geneve_payload(0x88CC, 42, &[0; 20]),
    );
    let parsed = parse(&outer).unwrap();
    assert!(parsed.tunnel().is_some() && parsed.inner().is_none());
}

#[test]
fn tunnel_ports_in_fragments_are_plain_udp() {
    let first = v4_frag(0, true);
    let f = frame(
        &[],
        NetSpec::Ip(
            first,
            L4Spec::Udp {
                src_port: 1,
                dst_port: 4789,
            },
        ),
        &[0; 8],
    );
    assert!(parse(&f).unwrap().tunnel().is_none());
}

#[test]
fn malformed_transport_headers_are_located() {
    let f = frame(&[], NetSpec::Ip(v4(), tcp(1, 2, TcpFlags::SYN)), b"");
    let mut bad = f.clone();
    bad[14 + 20 + 12] = 0x30; // data offset 3
    let err = parse(&bad).unwrap_err();
    assert_eq!(
        (err.kind(), err.offset()),
        (ParseErrorKind::BadHeaderLength(Header::Tcp), 34)
    );

    let f = frame(
        &[],
        NetSpec::Ip(
            v4(),
            L4Spec::Udp {
                src_port: 1,
                dst_port: 2,
            },
        ),
        b"abc",
    );
    let mut bad = f.clone();
    bad[14 + 20 + 5] = 200; // UDP length beyond the IP packet
    let err = parse(&bad).unwrap_err();
    assert_eq!(
        (err.kind(), err.offset()),
        (ParseErrorKind::LengthBeyondFrame(Header::Udp), 34)
    );
    bad[14 + 20 + 5] = 4;
    assert_eq!(
        parse(&bad).unwrap_err().kind(),
        ParseErrorKind::BadLength(Header::Udp)
    );

    let f = frame(
        &[],
        NetSpec::Ip(
            v6(&[]),
            L4Spec::Icmpv6(Icmpv6Repr::EchoRequest { ident: 1, seq: 1 }),
        ),
        b"",
    );
    let mut bad = f.clone();
    bad[19] = 4; // payload length 4: ICMPv6 header cut
    let err = parse(&bad[..58]).unwrap_err();
    assert_eq!(
        (err.kind(), err.offset()),
        (ParseErrorKind::Truncated(Header::Icmpv6), 54)
    );
}

#[test]
fn misplaced_hop_by_hop_is_an_error() {
    let ext = [
        Ipv6ExtRepr {
            kind: IpProtocol::Ipv6Opts,
            next_header: IpProtocol::HopByHop,
            len: 8,
            fragment: None,
        },
        Ipv6ExtRepr {
            kind: IpProtocol::HopByHop,
            next_header: IpProtocol::Udp,
            len: 8,
            fragment: None,
        },
    ];
    let f = frame(
        &[],
        NetSpec::Ip(
            v6(&ext),
            L4Spec::Udp {
                src_port: 1,
                dst_port: 2,
            },
        ),
        b"",
    );
    let err = parse(&f).unwrap_err();
    assert_eq!(
        (err.kind(), err.offset()),
        (ParseErrorKind::MisplacedHopByHop, 14 + 40 + 8)
    );
}
