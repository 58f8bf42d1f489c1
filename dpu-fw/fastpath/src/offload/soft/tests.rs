//! The rule semantics, one case per item and action, priority and group
//! ordering: what each rule does to a frame, as rte_flow defines it.

extern crate std;
use std::vec;
use std::vec::Vec;

use core::net::{Ipv4Addr, Ipv6Addr};

use chaingate_shared::{Nanos, PortId, VlanId};

use super::*;
use crate::offload::rule::{
    Attr, EthFields, Icmp6Fields, IcmpFields, Ipv4Fields, Ipv6Fields, Spec, TcpFields, UdpFields,
    VlanFields, VxlanFields,
};
use crate::wire::build::{FrameSpec, IpSpec, L4Spec, NetSpec};
use crate::wire::icmpv4::Icmpv4Repr;
use crate::wire::icmpv6::Icmpv6Repr;
use crate::wire::tcp::{TcpFlags, TcpRepr};
use crate::wire::{EtherType, EthernetAddress, Tci, parse};

const P1: PortId = PortId::from_index(1);
const P2: PortId = PortId::from_index(2);
const P3: PortId = PortId::from_index(3);
const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);

fn tag(vid: u16) -> (EtherType, Tci) {
    (
        EtherType::Vlan,
        Tci::new(5, false, VlanId::new(vid).unwrap()),
    )
}

fn frame_v4(vlans: &[(EtherType, Tci)], l4: L4Spec) -> Vec<u8> {
    let spec = FrameSpec {
        dst_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
        src_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
        vlans,
        net: NetSpec::Ip(
            IpSpec::V4 {
                src: A,
                dst: B,
                ttl: 64,
                dscp: 10,
                ident: 1,
                frag: None,
                options: &[],
            },
            l4,
        ),
        payload: b"data",
    };
    let mut buf = vec![0u8; spec.len()];
    spec.build(&mut buf).unwrap();
    buf
}

fn tcp(sport: u16, dport: u16, flags: TcpFlags) -> L4Spec {
    L4Spec::Tcp(TcpRepr {
        src_port: sport,
        dst_port: dport,
        seq: 1,
        ack: 0,
        flags,
        window: 100,
    })
}

fn plain() -> Vec<u8> {
    frame_v4(&[], tcp(1000, 80, TcpFlags::SYN))
}

/// Runs a frame through the switch; returns the outcome and the frame as
/// it left.
fn run(sw: &mut SoftSwitch, port: PortId, frame: &[u8]) -> (Outcome, Vec<u8>) {
    run_at(sw, port, frame, Nanos(0))
}

fn run_at(sw: &mut SoftSwitch, port: PortId, frame: &[u8], now: Nanos) -> (Outcome, Vec<u8>) {
    let head = 64;
    let mut buf = vec![0u8; frame.len() + 2 * head];
    buf[head..head + frame.len()].copy_from_slice(frame);
    let mut fb = FrameBuf::new(&mut buf, head, frame.len()).unwrap();
    let out = sw.process(port, &mut fb, now);
    (out, fb.frame().to_vec())
}

fn rule(group: u32, priority: u32, pattern: &[Item], actions: &[Action]) -> Rule {
    let mut r = Rule::transfer(group, priority);
    for i in pattern {
        r.item(*i).unwrap();
    }
    for a in actions {
        r.action(*a).unwrap();
    }
    r
}

/// A switch whose group 0 jumps everything to group 1, plus `rules`.
fn switch(rules: &[Rule]) -> SoftSwitch {
    let mut sw = SoftSwitch::new(1000);
    sw.create(&rule(0, 0, &[], &[Action::Jump(1)])).unwrap();
    for r in rules {
        sw.create(r).unwrap();
    }
    sw
}

fn eth_type(t: EtherType) -> Item {
    Item::Eth(Spec::new(
        EthFields {
            ether_type: t.number(),
            ..EthFields::default()
        },
        EthFields {
            ether_type: 0xFFFF,
            ..EthFields::default()
        },
    ))
}

fn ipv4_dst(dst: Ipv4Addr, prefix: u32) -> Item {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    Item::Ipv4(Spec::new(
        Ipv4Fields {
            dst: dst.to_bits(),
            ..Ipv4Fields::default()
        },
        Ipv4Fields {
            dst: mask,
            ..Ipv4Fields::default()
        },
    ))
}

#[test]
fn a_miss_goes_to_software_as_received() {
    let mut sw = SoftSwitch::new(10);
    assert_eq!(run(&mut sw, P1, &plain()).0, Outcome::ToSoftware(P1));
    // A rule in group 1 is never reached without a jump from group 0.
    let mut sw = SoftSwitch::new(10);
    sw.create(&rule(1, 0, &[], &[Action::RepresentedPort(P2)]))
        .unwrap();
    assert_eq!(run(&mut sw, P1, &plain()).0, Outcome::ToSoftware(P1));
    assert_eq!(sw.stats().misses, 1);
}

#[test]
fn jump_moves_to_another_group() {
    let mut sw = switch(&[rule(1, 0, &[], &[Action::RepresentedPort(P2)])]);
    let (out, frame) = run(&mut sw, P1, &plain());
    assert_eq!(out, Outcome::Out(P2));
    assert_eq!(frame, plain(), "a jump changes nothing");
}

#[test]
fn the_lower_priority_value_wins_whatever_the_order() {
    let general = rule(1, 5, &[ipv4_dst(B, 16)], &[Action::RepresentedPort(P2)]);
    let specific = rule(1, 1, &[ipv4_dst(B, 32)], &[Action::RepresentedPort(P3)]);
    for rules in [
        [general.clone(), specific.clone()],
        [specific.clone(), general.clone()],
    ] {
        let mut sw = switch(&rules);
        assert_eq!(run(&mut sw, P1, &plain()).0, Outcome::Out(P3));
    }
    // Where only the general one matches, it applies.
    let mut sw = switch(&[general, specific]);
    let other = {
        let spec = FrameSpec {
            dst_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            src_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            vlans: &[],
            net: NetSpec::Ip(
                IpSpec::V4 {
                    src: A,
                    dst: Ipv4Addr::new(10, 0, 9, 9),
                    ttl: 64,
                    dscp: 0,
                    ident: 1,
                    frag: None,
                    options: &[],
                },
                tcp(1, 2, TcpFlags::SYN),
            ),
            payload: b"",
        };
        let mut buf = vec![0u8; spec.len()];
        spec.build(&mut buf).unwrap();
        buf
    };
    assert_eq!(run(&mut sw, P1, &other).0, Outcome::Out(P2));
}

#[test]
fn masks_select_bits() {
    let mut sw = switch(&[rule(
        1,
        0,
        &[ipv4_dst(Ipv4Addr::new(10, 0, 1, 0), 24)],
        &[Action::RepresentedPort(P2)],
    )]);
    assert_eq!(run(&mut sw, P1, &plain()).0, Outcome::Out(P2));
    let mut sw = switch(&[rule(
        1,
        0,
        &[ipv4_dst(Ipv4Addr::new(10, 0, 2, 0), 24)],
        &[Action::RepresentedPort(P2)],
    )]);
    assert_eq!(run(&mut sw, P1, &plain()).0, Outcome::ToSoftware(P1));
}

#[test]
fn represented_port_item_matches_the_ingress_port() {
    let mut sw = switch(&[rule(
        1,
        0,
        &[Item::RepresentedPort(P1)],
        &[Action::RepresentedPort(P2)],
    )]);
    assert_eq!(run(&mut sw, P1, &plain()).0, Outcome::Out(P2));
    assert_eq!(run(&mut sw, P3, &plain()).0, Outcome::ToSoftware(P3));
}

#[test]
fn eth_type_says_tagged_or_not() {
    let tagged = frame_v4(&[tag(100)], tcp(1000, 80, TcpFlags::SYN));
    // An EtherType matches only untagged frames.
    let mut sw = switch(&[rule(
        1,
        0,
        &[eth_type(EtherType::Ipv4)],
        &[Action::RepresentedPort(P2)],
    )]);
    assert_eq!(run(&mut sw, P1, &plain()).0, Outcome::Out(P2));
    assert_eq!(run(&mut sw, P1, &tagged).0, Outcome::ToSoftware(P1));
    // A TPID only tagged ones.
    let mut sw = switch(&[rule(
        1,
        0,
        &[eth_type(EtherType::Vlan)],
        &[Action::RepresentedPort(P2)],
    )]);
    assert_eq!(run(&mut sw, P1, &plain()).0, Outcome::ToSoftware(P1));
    assert_eq!(run(&mut sw, P1, &tagged).0, Outcome::Out(P2));
    // has_vlan: any tagged frame.
    let has_vlan = Item::Eth(Spec::new(
        EthFields {
            has_vlan: true,
            ..EthFields::default()
        },
        EthFields {
            has_vlan: true,
            ..EthFields::default()
        },
    ));
    let mut sw = switch(&[rule(1, 0, &[has_vlan], &[Action::RepresentedPort(P2)])]);
    let qinq = frame_v4(
        &[(EtherType::QinQ, Tci(7)), tag(8)],
        tcp(1, 2, TcpFlags::ACK),
    );
    assert_eq!(run(&mut sw, P1, &qinq).0, Outcome::Out(P2));
    assert_eq!(run(&mut sw, P1, &plain()).0, Outcome::ToSoftware(P1));
    // Neither: both.
    let any = Item::Eth(Spec::default());
    let mut sw = switch(&[rule(1, 0, &[any], &[Action::RepresentedPort(P2)])]);
    assert_eq!(run(&mut sw, P1, &plain()).0, Outcome::Out(P2));
    assert_eq!(run(&mut sw, P1, &tagged).0, Outcome::Out(P2));
}

#[test]
fn vlan_items_follow_the_tags_one_by_one() {
    let vlan = |vid: u16, mask: u16| {
        Item::Vlan(Spec::new(
            VlanFields {
                tci: vid,
                ..VlanFields::default()
            },
            VlanFields {
                tci: mask,
                ..VlanFields::default()
            },
        ))
    };
    let v4 = Item::Ipv4(Spec::default());
    let one = frame_v4(&[tag(100)], tcp(1, 2, TcpFlags::ACK));
    let two = frame_v4(&[tag(100), tag(200)], tcp(1, 2, TcpFlags::ACK));
    let mut sw = switch(&[rule(
        1,
        0,
        &[Item::Eth(Spec::default()), vlan(100, 0x0FFF), v4],
        &[Action::RepresentedPort(P2)],
    )]);
    assert_eq!(run(&mut sw, P1, &one).0, Outcome::Out(P2));
    assert_eq!(
        run(&mut sw, P1, &two).0,
        Outcome::ToSoftware(P1),
        "a second tag needs a second VLAN item"
    );
    assert_eq!(run(&mut sw, P1, &plain()).0, Outcome::ToSoftware(P1));
    let mut sw = switch(&[rule(
        1,
        0,
        &[
            Item::Eth(Spec::default()),
            vlan(100, 0x0FFF),
            vlan(200, 0x0FFF),
            v4,
        ],
        &[Action::RepresentedPort(P2)],
    )]);
    assert_eq!(run(&mut sw, P1, &two).0, Outcome::Out(P2));
    // The TCI mask: priority bits (PCP 5 here) can be matched too.
    let mut sw = switch(&[rule(
        1,
        0,
        &[Item::Eth(Spec::default()), vlan(0xA000 | 100, 0xFFFF), v4],
        &[Action::RepresentedPort(P2)],
    )]);
    assert_eq!(run(&mut sw, P1, &one).0, Outcome::Out(P2));
    let mut sw = switch(&[rule(
        1,
        0,
        &[Item::Eth(Spec::default()), vlan(100, 0xFFFF), v4],
        &[Action::RepresentedPort(P2)],
    )]);
    assert_eq!(
        run(&mut sw, P1, &one).0,
        Outcome::ToSoftware(P1),
        "PCP 0 is not PCP 5"
    );
    // A pattern that ends at a VLAN item takes any further tags.
    let mut sw = switch(&[rule(
        1,
        0,
        &[Item::Eth(Spec::default()), vlan(100, 0x0FFF)],
        &[Action::RepresentedPort(P2)],
    )]);
    assert_eq!(run(&mut sw, P1, &two).0, Outcome::Out(P2));
}

#[test]
fn ipv6_tcp_udp_icmp_items() {
    let s6: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let d6: Ipv6Addr = "2001:db8::2".parse().unwrap();
    let v6frame = |l4: L4Spec| {
        let spec = FrameSpec {
            dst_mac: EthernetAddress([2; 6]),
            src_mac: EthernetAddress([4; 6]),
            vlans: &[],
            net: NetSpec::Ip(
                IpSpec::V6 {
                    src: s6,
                    dst: d6,
                    hop_limit: 64,
                    traffic_class: 0,
                    ext: &[],
                },
                l4,
            ),
            payload: b"x",
        };
        let mut buf = vec![0u8; spec.len()];
        spec.build(&mut buf).unwrap();
        buf
    };
    let v6item = Item::Ipv6(Spec::new(
        Ipv6Fields {
            src: s6.to_bits(),
            proto: 17,
            ..Ipv6Fields::default()
        },
        Ipv6Fields {
            src: u128::MAX,
            proto: 0xFF,
            ..Ipv6Fields::default()
        },
    ));
    let udp = Item::Udp(Spec::new(
        UdpFields {
            dst_port: 53,
            ..UdpFields::default()
        },
        UdpFields {
            dst_port: 0xFFFF,
            ..UdpFields::default()
        },
    ));
    let mut sw = switch(&[rule(1, 0, &[v6item, udp], &[Action::RepresentedPort(P2)])]);
    assert_eq!(
        run(
            &mut sw,
            P1,
            &v6frame(L4Spec::Udp {
                src_port: 9,
                dst_port: 53
            })
        )
        .0,
        Outcome::Out(P2)
    );
    assert_eq!(
        run(
            &mut sw,
            P1,
            &v6frame(L4Spec::Udp {
                src_port: 9,
                dst_port: 54
            })
        )
        .0,
        Outcome::ToSoftware(P1)
    );
    assert_eq!(
        run(&mut sw, P1, &plain()).0,
        Outcome::ToSoftware(P1),
        "IPv4 is not IPv6"
    );

    let syn_only = Item::Tcp(Spec::new(
        TcpFields {
            flags: 0x02,
            ..TcpFields::default()
        },
        TcpFields {
            flags: 0x17,
            ..TcpFields::default()
        },
    ));
    let mut sw = switch(&[rule(
        1,
        0,
        &[Item::Ipv4(Spec::default()), syn_only],
        &[Action::Drop],
    )]);
    assert_eq!(
        run(&mut sw, P1, &plain()).0,
        Outcome::Dropped(SwitchDrop::Rule)
    );
    assert_eq!(
        run(&mut sw, P1, &frame_v4(&[], tcp(1000, 80, TcpFlags::ACK))).0,
        Outcome::ToSoftware(P1)
    );

    let echo = Item::Icmp(Spec::new(
        IcmpFields {
            ident: 77,
            ..IcmpFields::default()
        },
        IcmpFields {
            ident: 0xFFFF,
            ..IcmpFields::default()
        },
    ));
    let mut sw = switch(&[rule(
        1,
        0,
        &[Item::Ipv4(Spec::default()), echo],
        &[Action::RepresentedPort(P2)],
    )]);
    let ping = |id| {
        frame_v4(
            &[],
            L4Spec::Icmpv4(Icmpv4Repr::EchoRequest { ident: id, seq: 1 }),
        )
    };
    assert_eq!(run(&mut sw, P1, &ping(77)).0, Outcome::Out(P2));
    assert_eq!(run(&mut sw, P1, &ping(78)).0, Outcome::ToSoftware(P1));

    let na = Item::Icmp6(Spec::new(
        Icmp6Fields { ty: 128, code: 0 },
        Icmp6Fields { ty: 0xFF, code: 0 },
    ));
    let mut sw = switch(&[rule(
        1,
        0,
        &[Item::Ipv6(Spec::default()), na],
        &[Action::RepresentedPort(P2)],
    )]);
    assert_eq!(
        run(
            &mut sw,
            P1,
            &v6frame(L4Spec::Icmpv6(Icmpv6Repr::EchoRequest { ident: 1, seq: 1 }))
        )
        .0,
        Outcome::Out(P2)
    );
    assert_eq!(
        run(
            &mut sw,
            P1,
            &v6frame(L4Spec::Icmpv6(Icmpv6Repr::EchoReply { ident: 1, seq: 1 }))
        )
        .0,
        Outcome::ToSoftware(P1)
    );
}

fn outer(frame: &[u8]) -> Option<(u16, u16)> {
    let ty = u16::from_be_bytes([frame[12], frame[13]]);
    EtherType::from(ty)
        .is_vlan_tag()
        .then(|| (ty, u16::from_be_bytes([frame[14], frame[15]])))
}

#[test]
fn vlan_actions_push_set_pop() {
    let vid = VlanId::new(300).unwrap();
    // Push on an untagged frame: a zero TCI, then the VID set.
    let mut sw = switch(&[rule(
        1,
        0,
        &[],
        &[
            Action::OfPushVlan(0x8100),
            Action::OfSetVlanVid(vid),
            Action::RepresentedPort(P2),
        ],
    )]);
    let (out, f) = run(&mut sw, P1, &plain());
    assert_eq!(out, Outcome::Out(P2));
    assert_eq!(outer(&f), Some((0x8100, 300)));
    assert_eq!(&f[16..], &plain()[12..], "the rest is untouched");
    // Push on a tagged frame copies the covered TCI (PCP 5, VID 100).
    let tagged = frame_v4(&[tag(100)], tcp(1, 2, TcpFlags::ACK));
    let mut sw = switch(&[rule(
        1,
        0,
        &[],
        &[Action::OfPushVlan(0x88A8), Action::RepresentedPort(P2)],
    )]);
    let (_, f) = run(&mut sw, P1, &tagged);
    assert_eq!(outer(&f), Some((0x88A8, 0xA000 | 100)));
    // Set the PCP; pop.
    let mut sw = switch(&[rule(
        1,
        0,
        &[],
        &[Action::OfSetVlanPcp(1), Action::RepresentedPort(P2)],
    )]);
    assert_eq!(
        outer(&run(&mut sw, P1, &tagged).1),
        Some((0x8100, 0x2000 | 100))
    );
    let mut sw = switch(&[rule(
        1,
        0,
        &[],
        &[Action::OfPopVlan, Action::RepresentedPort(P2)],
    )]);
    assert_eq!(
        run(&mut sw, P1, &tagged).1,
        frame_v4(&[], tcp(1, 2, TcpFlags::ACK))
    );
    // Popping or setting on an untagged frame does nothing.
    let mut sw = switch(&[rule(
        1,
        0,
        &[],
        &[
            Action::OfPopVlan,
            Action::OfSetVlanVid(vid),
            Action::RepresentedPort(P2),
        ],
    )]);
    assert_eq!(run(&mut sw, P1, &plain()).1, plain());
}

#[test]
fn mac_actions() {
    let (s, d) = (EthernetAddress([0xAA; 6]), EthernetAddress([0xBB; 6]));
    let mut sw = switch(&[rule(
        1,
        0,
        &[],
        &[
            Action::SetMacSrc(s),
            Action::SetMacDst(d),
            Action::RepresentedPort(P2),
        ],
    )]);
    let (_, f) = run(&mut sw, P1, &plain());
    assert_eq!((&f[..6], &f[6..12]), (&d.0[..], &s.0[..]));
}

#[test]
fn a_group_after_a_jump_matches_the_modified_frame() {
    let vlan = Item::Vlan(Spec::new(
        VlanFields {
            tci: 42,
            ..VlanFields::default()
        },
        VlanFields {
            tci: 0x0FFF,
            ..VlanFields::default()
        },
    ));
    let mut sw = SoftSwitch::new(10);
    sw.create(&rule(
        0,
        0,
        &[],
        &[
            Action::OfPushVlan(0x8100),
            Action::OfSetVlanVid(VlanId::new(42).unwrap()),
            Action::Jump(1),
        ],
    ))
    .unwrap();
    sw.create(&rule(
        1,
        0,
        &[Item::Eth(Spec::default()), vlan],
        &[Action::RepresentedPort(P3)],
    ))
    .unwrap();
    assert_eq!(run(&mut sw, P1, &plain()).0, Outcome::Out(P3));
}

#[test]
fn counters_and_shared_counters() {
    let mut sw = SoftSwitch::new(10);
    let shared = sw.create_counter(0).unwrap();
    sw.create(&rule(
        0,
        0,
        &[Item::RepresentedPort(P1)],
        &[
            Action::Count,
            Action::SharedCount(shared),
            Action::RepresentedPort(P2),
        ],
    ))
    .unwrap();
    let h = sw
        .create(&rule(
            0,
            0,
            &[Item::RepresentedPort(P2)],
            &[Action::SharedCount(shared), Action::RepresentedPort(P1)],
        ))
        .unwrap();
    let len = plain().len() as u64;
    run(&mut sw, P1, &plain());
    run(&mut sw, P1, &plain());
    run(&mut sw, P2, &plain());
    let own = sw
        .create(&rule(
            0,
            1,
            &[Item::RepresentedPort(P3)],
            &[Action::Count, Action::Drop],
        ))
        .unwrap();
    assert_eq!(sw.query(own).unwrap(), Counts::default());
    assert_eq!(
        sw.query_counter(shared).unwrap(),
        Counts {
            packets: 3,
            bytes: 3 * len
        }
    );
    assert_eq!(
        sw.query(h),
        Err(OffloadError::Invalid("the rule has no COUNT action"))
    );
}

#[test]
fn fates_drop_and_to_software() {
    let mut sw = switch(&[rule(1, 0, &[Item::RepresentedPort(P1)], &[Action::Drop])]);
    assert_eq!(
        run(&mut sw, P1, &plain()).0,
        Outcome::Dropped(SwitchDrop::Rule)
    );
    let mut sw = switch(&[rule(1, 0, &[], &[Action::PortRepresentor(P3)])]);
    assert_eq!(run(&mut sw, P1, &plain()).0, Outcome::ToSoftware(P3));
    let mut sw = SoftSwitch::new(10);
    sw.create(&rule(0, 0, &[], &[Action::Jump(1)])).unwrap();
    sw.create(&rule(1, 0, &[], &[Action::Jump(0)])).unwrap();
    assert_eq!(
        run(&mut sw, P1, &plain()).0,
        Outcome::Dropped(SwitchDrop::Loop)
    );
}

#[test]
fn vxlan_encap_and_decap() {
    let tunnel = VxlanTunnel {
        dst_mac: EthernetAddress([0xDD; 6]),
        src_mac: EthernetAddress([0x55; 6]),
        src: 0xC0A8_0001,
        dst: 0xC0A8_0002,
        src_port: 49152,
        vni: 4242,
        ttl: 64,
    };
    let mut sw = switch(&[]);
    let encap = sw.create_encap(&tunnel).unwrap();
    sw.create(&rule(
        1,
        0,
        &[Item::RepresentedPort(P1)],
        &[Action::VxlanEncap(encap), Action::RepresentedPort(P2)],
    ))
    .unwrap();
    let (out, f) = run(&mut sw, P1, &plain());
    assert_eq!(out, Outcome::Out(P2));
    let p = parse(&f).expect("the encapsulated frame is valid: lengths and checksum");
    assert_eq!(p.tunnel().unwrap().vni.get(), 4242);
    assert_eq!(&f[VXLAN_OVERHEAD..], &plain()[..]);
    assert_eq!(p.key().unwrap().dst_port(), 4789);
    let mut sw = switch(&[rule(
        1,
        0,
        &[Item::Vxlan(Spec::default())],
        &[Action::VxlanDecap, Action::RepresentedPort(P3)],
    )]);
    assert_eq!(run(&mut sw, P2, &f), (Outcome::Out(P3), plain()));
    assert_eq!(
        run(&mut sw, P2, &plain()).0,
        Outcome::ToSoftware(P2),
        "not VXLAN: the VXLAN item does not match it"
    );
    // rte_flow: a decapsulating rule's pattern must define the tunnel.
    assert!(matches!(
        sw.create(&rule(
            1,
            0,
            &[Item::RepresentedPort(P2)],
            &[Action::VxlanDecap, Action::RepresentedPort(P3)],
        )),
        Err(OffloadError::Invalid(r)) if r.contains("VXLAN_DECAP without a VXLAN item")
    ));
}

const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);

/// The underlay from the peer DPU to this one, with `vni`.
fn underlay(vni: u32) -> VxlanTunnel {
    VxlanTunnel {
        dst_mac: EthernetAddress([2, 0, 0, 0, 0, 0xDD]),
        src_mac: EthernetAddress([2, 0, 0, 0, 0, 0x55]),
        src: PEER.to_bits(),
        dst: LOCAL.to_bits(),
        src_port: 49_152,
        vni,
        ttl: 64,
    }
}

/// `inner` as the peer DPU sends it: in VXLAN with `vni`.
fn vxlan_frame(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; inner.len() + VXLAN_OVERHEAD];
    buf[VXLAN_OVERHEAD..].copy_from_slice(inner);
    let mut fb = FrameBuf::new(&mut buf, VXLAN_OVERHEAD, inner.len()).unwrap();
    encap(&mut fb, &underlay(vni)).unwrap();
    fb.frame().to_vec()
}

fn v4(src: Ipv4Addr, dst: Ipv4Addr) -> Item {
    Item::Ipv4(Spec::new(
        Ipv4Fields {
            src: src.to_bits(),
            dst: dst.to_bits(),
            ..Ipv4Fields::default()
        },
        Ipv4Fields {
            src: u32::MAX,
            dst: u32::MAX,
            ..Ipv4Fields::default()
        },
    ))
}

fn udp_dst(port: u16) -> Item {
    Item::Udp(Spec::new(
        UdpFields {
            dst_port: port,
            ..UdpFields::default()
        },
        UdpFields {
            dst_port: 0xFFFF,
            ..UdpFields::default()
        },
    ))
}

fn tcp_ports(sport: u16, dport: u16) -> Item {
    Item::Tcp(Spec::new(
        TcpFields {
            src_port: sport,
            dst_port: dport,
            flags: 0,
        },
        TcpFields {
            src_port: 0xFFFF,
            dst_port: 0xFFFF,
            flags: 0x07,
        },
    ))
}

/// Shape (a): VXLAN from the peer with `vni`, entering at P1.
fn from_peer(vni: u32) -> Vec<Item> {
    vec![
        Item::RepresentedPort(P1),
        Item::Eth(Spec::default()),
        v4(PEER, LOCAL),
        udp_dst(4789),
        Item::Vxlan(VxlanFields::exactly(vni)),
    ]
}

/// Shape (b): the same with the inner 5-tuple (8 items).
fn from_peer_flow(vni: u32, sport: u16, dport: u16) -> Vec<Item> {
    let mut p = from_peer(vni);
    p.extend([
        Item::Eth(Spec::default()),
        v4(A, B),
        tcp_ports(sport, dport),
    ]);
    p
}

fn tagged(vid: u16, l4: L4Spec) -> Vec<u8> {
    frame_v4(
        &[(
            EtherType::Vlan,
            Tci::new(0, false, VlanId::new(vid).unwrap()),
        )],
        l4,
    )
}

#[test]
fn a_vxlan_item_matches_the_vni_and_the_inner_frame() {
    let vid = |v| Action::OfSetVlanVid(VlanId::new(v).unwrap());
    // (a) per (peer, segment, instance); (b) one session, preferred.
    let a = rule(
        1,
        2,
        &from_peer(100),
        &[
            Action::VxlanDecap,
            Action::OfPushVlan(0x8100),
            vid(7),
            Action::RepresentedPort(P2),
        ],
    );
    let b = rule(
        1,
        1,
        &from_peer_flow(100, 1000, 80),
        &[Action::VxlanDecap, Action::RepresentedPort(P3)],
    );
    let mut sw = switch(&[a, b]);
    let session = frame_v4(&[], tcp(1000, 80, TcpFlags::ACK));
    assert_eq!(
        run(&mut sw, P1, &vxlan_frame(100, &session)),
        (Outcome::Out(P3), session.clone()),
        "(b): VNI and inner 5-tuple; decapsulated"
    );
    let other_port = frame_v4(&[], tcp(1001, 80, TcpFlags::ACK));
    assert_eq!(
        run(&mut sw, P1, &vxlan_frame(100, &other_port)),
        (Outcome::Out(P2), tagged(7, tcp(1001, 80, TcpFlags::ACK))),
        "(a): another inner port; decapsulated, then tagged"
    );
    assert_eq!(
        run(&mut sw, P1, &vxlan_frame(200, &session)).0,
        Outcome::ToSoftware(P1),
        "another VNI"
    );
    assert_eq!(
        run(&mut sw, P2, &vxlan_frame(100, &session)).0,
        Outcome::ToSoftware(P2),
        "another port"
    );
    assert_eq!(
        run(&mut sw, P1, &session).0,
        Outcome::ToSoftware(P1),
        "not VXLAN"
    );
    // The inner TCP flags: a SYN of the same ports is not the session's
    // (the flags mask asks SYN, FIN and RST clear); (a) takes it.
    assert_eq!(
        run(&mut sw, P1, &vxlan_frame(100, &plain())).0,
        Outcome::Out(P2)
    );
}

#[test]
fn a_rule_without_a_vxlan_item_matches_a_vxlan_frame_on_its_outer_headers() {
    let outer = rule(
        1,
        5,
        &[
            Item::RepresentedPort(P1),
            Item::Eth(Spec::default()),
            v4(PEER, LOCAL),
            udp_dst(4789),
        ],
        &[Action::RepresentedPort(P3)],
    );
    let a = rule(1, 1, &from_peer(100), &[Action::RepresentedPort(P2)]);
    let inner_dst = rule(1, 0, &[ipv4_dst(B, 32)], &[Action::Drop]);
    let mut sw = switch(&[outer, a, inner_dst]);
    assert_eq!(
        run(&mut sw, P1, &vxlan_frame(100, &plain())).0,
        Outcome::Out(P2)
    );
    let (out, f) = run(&mut sw, P1, &vxlan_frame(200, &plain()));
    assert_eq!(
        (out, f),
        (Outcome::Out(P3), vxlan_frame(200, &plain())),
        "the outer headers match; the inner destination is not the outer one"
    );
}

#[test]
fn inner_items_follow_the_inner_headers() {
    // rte_flow: `vxlan / eth / ipv4` is an untagged inner IPv4 frame;
    // without the inner ETH item, the inner frame's tags are not asked.
    let inner_tagged = tagged(30, tcp(1000, 80, TcpFlags::ACK));
    let with_eth = rule(
        1,
        0,
        &[
            Item::Vxlan(Spec::default()),
            Item::Eth(Spec::default()),
            ipv4_dst(B, 32),
        ],
        &[Action::RepresentedPort(P2)],
    );
    let mut sw = switch(&[with_eth]);
    assert_eq!(
        run(&mut sw, P1, &vxlan_frame(9, &inner_tagged)).0,
        Outcome::ToSoftware(P1)
    );
    assert_eq!(
        run(&mut sw, P1, &vxlan_frame(9, &plain())).0,
        Outcome::Out(P2)
    );
    let without = rule(
        1,
        0,
        &[Item::Vxlan(Spec::default()), ipv4_dst(B, 32)],
        &[Action::RepresentedPort(P2)],
    );
    let mut sw = switch(&[without]);
    assert_eq!(
        run(&mut sw, P1, &vxlan_frame(9, &inner_tagged)).0,
        Outcome::Out(P2)
    );
    // Inner UDP ports.
    let dns = frame_v4(
        &[],
        L4Spec::Udp {
            src_port: 5353,
            dst_port: 53,
        },
    );
    let udp = rule(
        1,
        0,
        &[Item::Vxlan(Spec::default()), ipv4_dst(B, 32), udp_dst(53)],
        &[Action::RepresentedPort(P3)],
    );
    let mut sw = switch(&[udp]);
    assert_eq!(run(&mut sw, P1, &vxlan_frame(9, &dns)).0, Outcome::Out(P3));
    assert_eq!(
        run(&mut sw, P1, &vxlan_frame(9, &plain())).0,
        Outcome::ToSoftware(P1),
        "inner TCP"
    );
}

#[test]
fn a_hop_to_a_remote_instance_and_back_in_from_the_underlay() {
    // The sending DPU: the session's frame comes back from a local
    // instance at P2 with segment tag 10; pop, count, encapsulate, out to
    // the underlay at P1 (shape c).
    let mut sender = switch(&[]);
    let e = sender
        .create_encap(&VxlanTunnel {
            src: LOCAL.to_bits(),
            dst: PEER.to_bits(),
            ..underlay(100)
        })
        .unwrap();
    let h = sender
        .create(&rule(
            1,
            1,
            &[
                Item::RepresentedPort(P2),
                Item::Eth(Spec::new(
                    EthFields {
                        has_vlan: true,
                        ..EthFields::default()
                    },
                    EthFields {
                        has_vlan: true,
                        ..EthFields::default()
                    },
                )),
                Item::Vlan(Spec::new(
                    VlanFields {
                        tci: 10,
                        inner_type: 0x0800,
                        has_more_vlan: false,
                    },
                    VlanFields {
                        tci: 0x0FFF,
                        inner_type: 0xFFFF,
                        has_more_vlan: false,
                    },
                )),
                v4(A, B),
                tcp_ports(1000, 80),
            ],
            &[
                Action::OfPopVlan,
                Action::Count,
                Action::VxlanEncap(e),
                Action::RepresentedPort(P1),
            ],
        ))
        .unwrap();
    let ack = frame_v4(&[], tcp(1000, 80, TcpFlags::ACK));
    let in_chain = tagged(10, tcp(1000, 80, TcpFlags::ACK));
    let (out, wire) = run(&mut sender, P2, &in_chain);
    assert_eq!(out, Outcome::Out(P1));
    assert_eq!(
        &wire[VXLAN_OVERHEAD..],
        &ack[..],
        "popped, then encapsulated"
    );
    let p = parse(&wire).unwrap();
    assert_eq!(p.tunnel().unwrap().vni.get(), 100);
    assert_eq!(
        sender.query(h).unwrap().bytes,
        in_chain.len() as u64,
        "counted as it matched"
    );
    // The receiving DPU: decapsulate, tag for the instance's segment 20,
    // out to its VF at P3 (shape a), with the instance's shared counter.
    let mut receiver = switch(&[]);
    let c = receiver.create_counter(0).unwrap();
    receiver
        .create(&rule(
            1,
            1,
            &[
                Item::RepresentedPort(P1),
                Item::Eth(Spec::default()),
                v4(LOCAL, PEER),
                udp_dst(4789),
                Item::Vxlan(VxlanFields::exactly(100)),
            ],
            &[
                Action::VxlanDecap,
                Action::SharedCount(c),
                Action::OfPushVlan(0x8100),
                Action::OfSetVlanVid(VlanId::new(20).unwrap()),
                Action::RepresentedPort(P3),
            ],
        ))
        .unwrap();
    assert_eq!(
        run(&mut receiver, P1, &wire),
        (Outcome::Out(P3), tagged(20, tcp(1000, 80, TcpFlags::ACK)))
    );
    assert_eq!(
        receiver.query_counter(c).unwrap(),
        Counts {
            packets: 1,
            bytes: wire.len() as u64
        },
        "the shared counter counts the frame as it matched, outer headers included"
    );
}

#[test]
fn vxlan_patterns_the_eswitch_cannot_mean_are_refused() {
    let mut sw = SoftSwitch::new(10);
    let mut check = |pattern: &[Item]| {
        sw.create(&rule(0, 0, pattern, &[Action::Drop]))
            .unwrap_err()
    };
    let vx = Item::Vxlan(VxlanFields::exactly(5));
    let unsupported: [(&[Item], &str); 7] = [
        (
            &[vx, Item::Eth(Spec::default()), Item::Vlan(Spec::default())],
            "inner VLAN",
        ),
        (&[vx, Item::Ipv6(Spec::default())], "inner IPv6"),
        (
            &[vx, ipv4_dst(B, 32), Item::Icmp(Spec::default())],
            "inner ICMP",
        ),
        (&[vx, eth_type(EtherType::Ipv4)], "inner ETH fields"),
        (&[vx, vx], "VXLAN inside VXLAN"),
        (&[v4(A, B), udp_dst(4790), vx], "other than 4789"),
        (&[v4(A, B), v4(A, B)], "without a VXLAN item between"),
    ];
    for (pattern, why) in unsupported {
        let e = check(pattern);
        assert!(
            matches!(e, OffloadError::Unsupported(r) if r.contains(why)),
            "{pattern:?}: {e:?}"
        );
    }
    let big = Item::Vxlan(Spec::new(
        VxlanFields { vni: 1 << 24 },
        VxlanFields { vni: u32::MAX },
    ));
    let invalid: [(&[Item], &str); 3] = [
        (&[big], "beyond 24 bits"),
        (
            &[ipv4_dst(B, 32), tcp_ports(1, 2), vx],
            "another protocol than UDP",
        ),
        (&[vx, Item::Tcp(Spec::default())], "without an inner IPv4"),
    ];
    for (pattern, why) in invalid {
        let e = check(pattern);
        assert!(
            matches!(e, OffloadError::Invalid(r) if r.contains(why)),
            "{pattern:?}: {e:?}"
        );
    }
}

#[test]
fn malformed_rules_are_refused() {
    let mut sw = SoftSwitch::new(10);
    let check = |sw: &mut SoftSwitch, r: Rule| sw.create(&r).unwrap_err();
    assert!(matches!(
        check(&mut sw, rule(0, 0, &[], &[])),
        OffloadError::Invalid(_)
    ));
    assert!(matches!(
        check(
            &mut sw,
            rule(0, 0, &[], &[Action::Drop, Action::RepresentedPort(P1)])
        ),
        OffloadError::Invalid(_)
    ));
    assert!(matches!(
        check(
            &mut sw,
            rule(0, 0, &[], &[Action::OfPushVlan(0x0800), Action::Drop])
        ),
        OffloadError::Invalid(_)
    ));
    assert!(matches!(
        check(&mut sw, rule(1, 0, &[], &[Action::Jump(1)])),
        OffloadError::Invalid(_)
    ));
    assert!(matches!(
        check(
            &mut sw,
            rule(0, 0, &[Item::Tcp(Spec::default())], &[Action::Drop])
        ),
        OffloadError::Invalid(_)
    ));
    assert!(matches!(
        check(
            &mut sw,
            rule(0, 0, &[], &[Action::Count, Action::Count, Action::Drop])
        ),
        OffloadError::Invalid(_)
    ));
    assert_eq!(
        check(
            &mut sw,
            rule(
                0,
                0,
                &[],
                &[Action::SharedCount(CounterId(9)), Action::Drop]
            )
        ),
        OffloadError::UnknownHandle
    );
    assert_eq!(
        check(
            &mut sw,
            rule(0, 0, &[], &[Action::VxlanEncap(EncapId(0)), Action::Drop])
        ),
        OffloadError::UnknownHandle
    );
    assert!(matches!(
        check(
            &mut sw,
            rule(
                0,
                0,
                &[Item::Ipv6(Spec::default()), Item::Icmp(Spec::default())],
                &[Action::Drop]
            )
        ),
        OffloadError::Invalid(_)
    ));
    let mut ingress = rule(0, 0, &[], &[Action::Drop]);
    ingress.attr = Attr {
        ingress: true,
        ..Attr::default()
    };
    assert!(matches!(
        check(&mut sw, ingress),
        OffloadError::Unsupported(_)
    ));
    assert_eq!(sw.len(), 0, "nothing was installed");
}

#[test]
fn capacity_and_destroy() {
    let mut sw = SoftSwitch::new(2);
    let a = sw
        .create(&rule(0, 1, &[], &[Action::RepresentedPort(P2)]))
        .unwrap();
    let b = sw
        .create(&rule(0, 0, &[], &[Action::RepresentedPort(P3)]))
        .unwrap();
    assert_eq!(
        sw.create(&rule(0, 2, &[], &[Action::Drop])),
        Err(OffloadError::Full)
    );
    // Same key, two priorities: the better one applies; remove it and the
    // other takes over.
    assert_eq!(run(&mut sw, P1, &plain()).0, Outcome::Out(P3));
    sw.destroy(b).unwrap();
    assert_eq!(run(&mut sw, P1, &plain()).0, Outcome::Out(P2));
    assert_eq!(
        sw.destroy(b),
        Err(OffloadError::UnknownHandle),
        "a stale handle"
    );
    sw.destroy(a).unwrap();
    assert_eq!(run(&mut sw, P1, &plain()).0, Outcome::ToSoftware(P1));
    assert!(sw.is_empty());
    // The freed slot is reused under a new handle.
    let c = sw.create(&rule(0, 0, &[], &[Action::Drop])).unwrap();
    assert_ne!(c, a);
    assert_eq!(sw.query(a), Err(OffloadError::UnknownHandle));
}

/// A rule of the churn test: destination prefix, optional destination
/// port, priority, and the port it sends to.
#[derive(Clone, Copy, Debug)]
struct Churn {
    dst: Ipv4Addr,
    prefix: u32,
    dport: Option<u16>,
    priority: u32,
    out: PortId,
}

impl Churn {
    fn rule(&self) -> Rule {
        let mut pattern = vec![ipv4_dst(self.dst, self.prefix)];
        if let Some(p) = self.dport {
            pattern.push(Item::Tcp(Spec::new(
                TcpFields {
                    dst_port: p,
                    ..TcpFields::default()
                },
                TcpFields {
                    dst_port: 0xFFFF,
                    ..TcpFields::default()
                },
            )));
        }
        rule(
            1,
            self.priority,
            &pattern,
            &[Action::RepresentedPort(self.out)],
        )
    }

    fn matches(&self, dst: Ipv4Addr, dport: u16) -> bool {
        let mask = u32::MAX.checked_shl(32 - self.prefix).unwrap_or(0);
        (dst.to_bits() & mask) == (self.dst.to_bits() & mask)
            && self.dport.is_none_or(|p| p == dport)
    }
}

const CHURN_ADDRS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 0, 1, 2),
    Ipv4Addr::new(10, 0, 1, 3),
    Ipv4Addr::new(10, 9, 0, 1),
];

fn any_churn() -> impl proptest::strategy::Strategy<Value = Churn> {
    use proptest::prelude::*;
    (
        0..CHURN_ADDRS.len(),
        prop::sample::select(vec![8u32, 16, 24, 32]),
        prop::option::of(prop::sample::select(vec![80u16, 443])),
        0u32..4,
        4u16..8,
    )
        .prop_map(|(a, prefix, dport, priority, out)| Churn {
            dst: CHURN_ADDRS[a],
            prefix,
            dport,
            priority,
            out: PortId::from_index(out),
        })
}

/// Any sequence of creates and destroys (well past the capacity, so freed
/// slots and index entries are reused) leaves the switch doing what a
/// linear scan of the live rules says: a frame goes where one of the
/// matching rules with the best priority sends it, or to software.
#[test]
fn agrees_with_a_linear_scan_under_churn() {
    use proptest::test_runner::{Config, TestRunner};
    // Each case is up to 150 operations with 9 probes each: the cases are
    // capped at 500 whatever PROPTEST_CASES asks (proptest! would let the
    // variable override the cap).
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .map_or(128, |c: u32| c.min(500));
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(
        (
            any_churn(),
            proptest::prelude::any::<proptest::sample::Index>(),
        ),
        1..150,
    );
    runner
        .run(&strategy, |ops| {
            let mut sw = SoftSwitch::new(24);
            sw.create(&rule(0, 0, &[], &[Action::Jump(1)])).unwrap();
            let mut live: Vec<(Churn, RuleHandle)> = Vec::new();
            let probes: Vec<(Ipv4Addr, u16)> = CHURN_ADDRS
                .iter()
                .flat_map(|a| [(*a, 80), (*a, 443), (*a, 22)])
                .collect();
            for (n, (c, pick)) in ops.into_iter().enumerate() {
                // Create two of three times; otherwise destroy one.
                if n % 3 != 2 {
                    match sw.create(&c.rule()) {
                        Ok(h) => live.push((c, h)),
                        Err(e) => {
                            proptest::prop_assert_eq!(e, OffloadError::Full);
                            proptest::prop_assert_eq!(live.len() + 1, 24);
                        }
                    }
                } else if !live.is_empty() {
                    let (_, h) = live.swap_remove(pick.index(live.len()));
                    proptest::prop_assert_eq!(sw.destroy(h), Ok(()));
                    proptest::prop_assert_eq!(sw.destroy(h), Err(OffloadError::UnknownHandle));
                }
                proptest::prop_assert_eq!(sw.len(), live.len() + 1);
                for &(dst, dport) in &probes {
                    let frame = {
                        let spec = FrameSpec {
                            dst_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
                            src_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
                            vlans: &[],
                            net: NetSpec::Ip(
                                IpSpec::V4 {
                                    src: A,
                                    dst,
                                    ttl: 64,
                                    dscp: 0,
                                    ident: 1,
                                    frag: None,
                                    options: &[],
                                },
                                tcp(1000, dport, TcpFlags::ACK),
                            ),
                            payload: b"",
                        };
                        let mut buf = vec![0u8; spec.len()];
                        spec.build(&mut buf).unwrap();
                        buf
                    };
                    let matching: Vec<&Churn> = live
                        .iter()
                        .map(|(c, _)| c)
                        .filter(|c| c.matches(dst, dport))
                        .collect();
                    let got = run(&mut sw, P1, &frame).0;
                    match matching.iter().map(|c| c.priority).min() {
                        None => proptest::prop_assert_eq!(got, Outcome::ToSoftware(P1)),
                        Some(best) => {
                            let allowed: Vec<Outcome> = matching
                                .iter()
                                .filter(|c| c.priority == best)
                                .map(|c| Outcome::Out(c.out))
                                .collect();
                            proptest::prop_assert!(
                                allowed.contains(&got),
                                "{dst}:{dport} went {got:?}, not one of {allowed:?}"
                            );
                        }
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}
