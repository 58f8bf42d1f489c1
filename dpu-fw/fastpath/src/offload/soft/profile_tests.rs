//! The mlx5 profile, one constraint a test: a rule, template or call that
//! mlx5's hardware steering (DPDK 22.11, `dv_flow_en=2`) refuses is
//! refused, with the driver's reason; and rules match as the card's
//! steering layer matches them.

extern crate std;
use std::vec;
use std::vec::Vec;

use chaingate_shared::{Nanos, PortId, VlanId};

use super::*;
use crate::offload::rule::{
    Age, EthFields, Ipv4Fields, Ipv6Fields, Spec, TcpFields, UdpFields, VlanFields, VxlanFields,
};
use crate::offload::template::{Place, PortAttr, TableId, TableSpec};
use crate::wire::build::{FrameSpec, IpSpec, L4Spec, NetSpec};
use crate::wire::{EtherType, EthernetAddress, Tci};

const P0: PortId = PortId::from_index(0);
const P1: PortId = PortId::from_index(1);
const P2: PortId = PortId::from_index(2);

fn mlx5() -> Profile {
    Profile::Mlx5(Mlx5::default())
}

/// A card whose group 0 sends port 0's traffic to group 1, where the
/// tests' rules are.
fn card() -> SoftSwitch {
    let mut sw = SoftSwitch::ready(1000, mlx5());
    jump(&mut sw);
    sw
}

/// The same, of the generic profile.
fn generic() -> SoftSwitch {
    let mut sw = SoftSwitch::ready(1000, Profile::Generic);
    jump(&mut sw);
    sw
}

fn jump(sw: &mut SoftSwitch) {
    let r = rule(
        0,
        &[Item::RepresentedPort(PortId::from_index(0))],
        &[Action::Jump(1)],
    );
    install(sw, &r).unwrap();
}

fn rule(group: u32, pattern: &[Item], actions: &[Action]) -> Rule {
    let mut r = Rule::transfer(group, 1);
    for i in pattern {
        r.item(*i).unwrap();
    }
    for a in actions {
        r.action(*a).unwrap();
    }
    r
}

fn table_for(sw: &mut SoftSwitch, r: &Rule, size: u32) -> Result<TableId, OffloadError> {
    sw.create_table(&TableSpec::of(r, &[], 0, size))
}

/// Makes a table for `r` and enqueues it.
fn install(sw: &mut SoftSwitch, r: &Rule) -> Result<RuleHandle, OffloadError> {
    let t = table_for(sw, r, 16)?;
    insert(sw, t, r)
}

fn insert(sw: &mut SoftSwitch, t: TableId, r: &Rule) -> Result<RuleHandle, OffloadError> {
    let mut out = Vec::new();
    sw.enqueue(
        core::slice::from_ref(r),
        &[Place {
            table: t,
            actions: 0,
        }],
        &mut out,
    );
    out.pop().unwrap()
}

/// The reason a refusal gives, to check it names its source.
fn reason(e: OffloadError) -> &'static str {
    match e {
        OffloadError::Unsupported(r) | OffloadError::Invalid(r) => r,
        other => panic!("no reason: {other:?}"),
    }
}

fn eth_vlan(has_vlan: bool) -> Item {
    Item::Eth(Spec::new(
        EthFields {
            has_vlan,
            ..EthFields::default()
        },
        EthFields {
            has_vlan: true,
            ..EthFields::default()
        },
    ))
}

fn vlan(vid: u16, inner: u16) -> Item {
    Item::Vlan(Spec::new(
        VlanFields {
            tci: vid,
            inner_type: inner,
            has_more_vlan: false,
        },
        VlanFields {
            tci: 0x0FFF,
            inner_type: if inner == 0 { 0 } else { 0xFFFF },
            has_more_vlan: false,
        },
    ))
}

fn ipv4(src: u32, mask: u32) -> Item {
    Item::Ipv4(Spec::new(
        Ipv4Fields {
            src,
            ..Ipv4Fields::default()
        },
        Ipv4Fields {
            src: mask,
            ..Ipv4Fields::default()
        },
    ))
}

fn frame(vlans: &[(EtherType, Tci)]) -> Vec<u8> {
    let spec = FrameSpec {
        dst_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
        src_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
        vlans,
        net: NetSpec::Ip(
            IpSpec::v4([10, 0, 0, 1].into(), [10, 0, 0, 2].into()),
            L4Spec::Udp {
                src_port: 1,
                dst_port: 2,
            },
        ),
        payload: b"data",
    };
    let mut buf = vec![0u8; spec.len()];
    spec.build(&mut buf).unwrap();
    buf
}

fn run(sw: &mut SoftSwitch, port: PortId, frame: &[u8], now: Nanos) -> (Outcome, Vec<u8>) {
    let mut buf = vec![0u8; frame.len() + 128];
    buf[64..64 + frame.len()].copy_from_slice(frame);
    let mut fb = FrameBuf::new(&mut buf, 64, frame.len()).unwrap();
    let out = sw.process(port, &mut fb, now);
    (out, fb.frame().to_vec())
}

fn q(vid: u16) -> (EtherType, Tci) {
    (
        EtherType::Vlan,
        Tci::new(5, false, VlanId::new(vid).unwrap()),
    )
}

fn ad(vid: u16) -> (EtherType, Tci) {
    (
        EtherType::QinQ,
        Tci::new(5, false, VlanId::new(vid).unwrap()),
    )
}

const TO_P2: Action = Action::RepresentedPort(P2);

#[test]
fn only_the_template_api_inserts_rules() {
    let mut sw = card();
    let r = rule(1, &[Item::RepresentedPort(P0)], &[TO_P2]);
    assert!(reason(sw.create(&r).unwrap_err()).contains("Flow non-Q creation not supported"));
    assert!(install(&mut sw, &r).is_ok());
}

#[test]
fn configure_comes_before_start_and_tables_after_it() {
    let attr = PortAttr::for_rules(100, 10);
    let r = rule(1, &[Item::RepresentedPort(P0)], &[TO_P2]);
    let mut sw = SoftSwitch::with_profile(100, mlx5());
    assert!(reason(table_for(&mut sw, &r, 4).unwrap_err()).contains("not configured"));
    sw.configure(&attr).unwrap();
    assert!(
        reason(table_for(&mut sw, &r, 4).unwrap_err()).contains("flow_hw_translate_group"),
        "a table before start would land in the root table"
    );
    sw.start().unwrap();
    assert!(reason(sw.configure(&attr).unwrap_err()).contains("already started"));
    assert!(table_for(&mut sw, &r, 4).is_ok());
}

#[test]
fn a_table_fixes_the_masks_of_its_rules() {
    let mut sw = card();
    let r = rule(
        1,
        &[Item::RepresentedPort(P0), ipv4(0x0A00_0001, u32::MAX)],
        &[TO_P2],
    );
    let t = table_for(&mut sw, &r, 16).unwrap();
    assert!(insert(&mut sw, t, &r).is_ok());
    let wider = rule(
        1,
        &[Item::RepresentedPort(P0), ipv4(0x0A00_0000, 0xFFFF_FF00)],
        &[TO_P2],
    );
    assert!(reason(insert(&mut sw, t, &wider).unwrap_err()).contains("masks are fixed per table"));
    let other_items = rule(1, &[Item::RepresentedPort(P0)], &[TO_P2]);
    assert!(insert(&mut sw, t, &other_items).is_err());
    // A value with bits outside the mask never matches on the card.
    let mut stray = rule(
        1,
        &[Item::RepresentedPort(P0), ipv4(0x0A00_0001, 0xFFFF_FF00)],
        &[TO_P2],
    );
    let t2 = table_for(&mut sw, &stray, 16).unwrap();
    assert!(
        reason(insert(&mut sw, t2, &stray).unwrap_err()).contains("outside the template's mask")
    );
    stray.pattern[1] = ipv4(0x0A00_0000, 0xFFFF_FF00);
    assert!(insert(&mut sw, t2, &stray).is_ok());
}

#[test]
fn a_rule_has_one_counter() {
    let mut sw = card();
    let c = sw.create_counter(0).unwrap();
    let two = rule(
        1,
        &[Item::RepresentedPort(P0)],
        &[Action::Count, Action::SharedCount(c), TO_P2],
    );
    assert!(reason(install(&mut sw, &two).unwrap_err()).contains("flow_hw_validate_action_count"));
    let age_on_shared = rule(
        1,
        &[Item::RepresentedPort(P0)],
        &[
            Action::SharedCount(c),
            Action::Age(Age {
                timeout_s: 10,
                context: 1,
            }),
            TO_P2,
        ],
    );
    assert!(reason(install(&mut sw, &age_on_shared).unwrap_err()).contains("wrong age state"));
    let one = rule(
        1,
        &[Item::RepresentedPort(P0)],
        &[Action::SharedCount(c), TO_P2],
    );
    assert!(install(&mut sw, &one).is_ok());
}

#[test]
fn group_0_only_jumps() {
    let mut sw = card();
    let forward = rule(0, &[Item::RepresentedPort(P0)], &[TO_P2]);
    assert!(reason(install(&mut sw, &forward).unwrap_err()).contains("group 0 only jumps"));
    let count = rule(
        0,
        &[Item::RepresentedPort(P0)],
        &[Action::Count, Action::Jump(1)],
    );
    assert!(install(&mut sw, &count).is_err());
    let jump = rule(0, &[Item::RepresentedPort(P0)], &[Action::Jump(1)]);
    assert!(install(&mut sw, &jump).is_ok());
}

#[test]
fn rules_are_transfer_rules_with_one_supported_fate() {
    let mut sw = card();
    let mut ingress = rule(1, &[Item::RepresentedPort(P0)], &[TO_P2]);
    ingress.attr.transfer = false;
    ingress.attr.ingress = true;
    assert!(install(&mut sw, &ingress).is_err());
    let to_sw = rule(
        1,
        &[Item::RepresentedPort(P0)],
        &[Action::PortRepresentor(P0)],
    );
    assert!(reason(install(&mut sw, &to_sw).unwrap_err()).contains("PORT_REPRESENTOR"));
    let two = rule(1, &[Item::RepresentedPort(P0)], &[Action::Drop, TO_P2]);
    assert!(install(&mut sw, &two).is_err());
}

#[test]
fn one_vlan_item_and_no_ipv6_five_tuple() {
    let mut sw = card();
    let two_tags = rule(
        1,
        &[
            Item::RepresentedPort(P0),
            eth_vlan(true),
            vlan(10, 0),
            vlan(20, 0x0800),
        ],
        &[TO_P2],
    );
    assert!(reason(install(&mut sw, &two_tags).unwrap_err()).contains("2 sequential VLAN items"));
    let v6 = rule(
        1,
        &[
            Item::RepresentedPort(P0),
            Item::Ipv6(Spec::new(
                Ipv6Fields {
                    src: 1,
                    dst: 2,
                    proto: 6,
                    tc: 0,
                },
                Ipv6Fields {
                    src: u128::MAX,
                    dst: u128::MAX,
                    proto: 0xFF,
                    tc: 0,
                },
            )),
            Item::Tcp(Spec::new(
                TcpFields {
                    src_port: 1,
                    dst_port: 2,
                    flags: 0,
                },
                TcpFields {
                    src_port: 0xFFFF,
                    dst_port: 0xFFFF,
                    flags: 0,
                },
            )),
        ],
        &[TO_P2],
    );
    assert!(reason(install(&mut sw, &v6).unwrap_err()).contains("IPv6 5-tuple"));
}

#[test]
fn vlan_actions_in_the_cards_order() {
    let mut sw = card();
    let vid = Action::OfSetVlanVid(VlanId::new(7).unwrap());
    let port = [Item::RepresentedPort(P0)];
    let tagged = [Item::RepresentedPort(P0), eth_vlan(true), vlan(7, 0)];
    let cases: [(&[Item], &[Action], &str); 6] = [
        (
            &port,
            &[Action::OfPushVlan(0x8100), TO_P2],
            "invalid actions order",
        ),
        (
            &port,
            &[Action::OfPushVlan(0x8100), Action::Count, vid, TO_P2],
            "invalid actions order",
        ),
        (
            &port,
            &[Action::OfPushVlan(0x8100), vid, Action::Count, TO_P2],
            "mlx5dr_action_check_combo",
        ),
        (
            &tagged,
            &[Action::Count, Action::OfPopVlan, TO_P2],
            "mlx5dr_action_check_combo",
        ),
        (&tagged, &[Action::OfSetVlanPcp(3), TO_P2], "set PCP"),
        (&port, &[Action::OfPopVlan, TO_P2], "VLAN pop offload"),
    ];
    for (pattern, actions, why) in cases {
        let r = rule(1, pattern, actions);
        let e = install(&mut sw, &r).unwrap_err();
        assert!(reason(e).contains(why), "{actions:?}: {e:?}");
    }
    let good: [(&[Item], &[Action]); 3] = [
        (
            &port,
            &[Action::Count, Action::OfPushVlan(0x8100), vid, TO_P2],
        ),
        (
            &port,
            &[
                Action::OfPushVlan(0x88A8),
                vid,
                Action::OfSetVlanPcp(3),
                TO_P2,
            ],
        ),
        (&tagged, &[Action::OfPopVlan, Action::Count, TO_P2]),
    ];
    for (pattern, actions) in good {
        assert!(
            install(&mut sw, &rule(1, pattern, actions)).is_ok(),
            "{actions:?}"
        );
    }
}

#[test]
fn encap_goes_last_and_not_with_decap() {
    let mut sw = card();
    let e = sw
        .create_encap(&VxlanTunnel {
            dst_mac: EthernetAddress([2; 6]),
            src_mac: EthernetAddress([4; 6]),
            src: 1,
            dst: 2,
            src_port: 1000,
            vni: 5,
            ttl: 64,
        })
        .unwrap();
    let vid = Action::OfSetVlanVid(VlanId::new(7).unwrap());
    let port = [Item::RepresentedPort(P0)];
    let before_push = rule(
        1,
        &port,
        &[
            Action::VxlanEncap(e),
            Action::OfPushVlan(0x8100),
            vid,
            TO_P2,
        ],
    );
    assert!(
        reason(install(&mut sw, &before_push).unwrap_err()).contains("mlx5dr_action_check_combo")
    );
    let both = rule(
        1,
        &port,
        &[Action::VxlanDecap, Action::VxlanEncap(e), TO_P2],
    );
    assert!(reason(install(&mut sw, &both).unwrap_err()).contains("one reformat"));
    let ok = rule(
        1,
        &port,
        &[
            Action::OfPushVlan(0x8100),
            vid,
            Action::VxlanEncap(e),
            TO_P2,
        ],
    );
    assert!(install(&mut sw, &ok).is_ok());
}

#[test]
fn tables_hold_their_size_rounded_up_and_no_more() {
    let mut sw = card();
    let r = |src| {
        rule(
            1,
            &[Item::RepresentedPort(P0), ipv4(src, u32::MAX)],
            &[TO_P2],
        )
    };
    let t = table_for(&mut sw, &r(0), 3).unwrap();
    for src in 0..4 {
        insert(&mut sw, t, &r(src)).unwrap();
    }
    assert_eq!(
        insert(&mut sw, t, &r(4)),
        Err(OffloadError::Full),
        "3 rounds up to 4"
    );
}

#[test]
fn counters_and_ages_come_from_what_configure_reserved() {
    let mut sw = SoftSwitch::with_profile(100, mlx5());
    sw.configure(&PortAttr {
        counters: 2,
        aging: 1,
        queue_size: 64,
    })
    .unwrap();
    sw.start().unwrap();
    let aged = |src| {
        rule(
            1,
            &[Item::RepresentedPort(P0), ipv4(src, u32::MAX)],
            &[
                Action::Age(Age {
                    timeout_s: 5,
                    context: 1,
                }),
                TO_P2,
            ],
        )
    };
    let t = table_for(&mut sw, &aged(0), 16).unwrap();
    insert(&mut sw, t, &aged(1)).unwrap();
    assert_eq!(
        insert(&mut sw, t, &aged(2)),
        Err(OffloadError::Full),
        "one AGE object"
    );
    sw.create_counter(0).unwrap();
    assert_eq!(
        sw.create_counter(0),
        Err(OffloadError::Full),
        "two counters, one taken by AGE"
    );
    let mut none = SoftSwitch::with_profile(100, mlx5());
    none.configure(&PortAttr {
        counters: 0,
        aging: 0,
        queue_size: 64,
    })
    .unwrap();
    none.start().unwrap();
    let t = table_for(&mut none, &aged(0), 16).unwrap();
    assert!(reason(insert(&mut none, t, &aged(1)).unwrap_err()).contains("aging pool"));
}

#[test]
fn ports_of_another_eswitch_cannot_be_reached() {
    // lan and its VF on the PF 0 eSwitch, wan on PF 1's (no multiport
    // E-Switch).
    let profile = Profile::Mlx5(Mlx5 {
        switches: vec![0, 0, 1],
    });
    let mut sw = SoftSwitch::ready(100, profile);
    let r = rule(1, &[Item::RepresentedPort(P0)], &[TO_P2]);
    let t = sw
        .create_table(&TableSpec::of(&r, &[], sw.switch_of(P0), 4))
        .unwrap();
    assert!(reason(insert(&mut sw, t, &r).unwrap_err()).contains("different E-Switch"));
    let same = rule(
        1,
        &[Item::RepresentedPort(P0)],
        &[Action::RepresentedPort(P1)],
    );
    let t = sw
        .create_table(&TableSpec::of(&same, &[], sw.switch_of(P0), 4))
        .unwrap();
    assert!(insert(&mut sw, t, &same).is_ok());
}

#[test]
fn age_reports_an_idle_rule_once() {
    let mut sw = card();
    let r = |src| {
        rule(
            1,
            &[Item::RepresentedPort(P0), ipv4(src, u32::MAX)],
            &[
                Action::Age(Age {
                    timeout_s: 10,
                    context: u64::from(src),
                }),
                TO_P2,
            ],
        )
    };
    let t = table_for(&mut sw, &r(0x0A00_0001), 16).unwrap();
    insert(&mut sw, t, &r(0x0A00_0001)).unwrap();
    insert(&mut sw, t, &r(0x0A00_0009)).unwrap();
    let mut out = Vec::new();
    // Flow 10.0.0.1 passes every 5 s; 10.0.0.9 never.
    for s in (5..=30).step_by(5) {
        let now = Nanos::from_secs(s);
        assert!(matches!(
            run(&mut sw, P0, &frame(&[]), now).0,
            Outcome::Out(_)
        ));
        sw.aged(now, &mut out);
    }
    assert_eq!(out, [0x0A00_0009], "the idle rule, once");
}

#[test]
fn the_card_reads_ethertypes_after_the_tags() {
    // `eth type is 0x0800`: rte_flow means an untagged IPv4 frame (a tag's
    // TPID would be the type); mlx5 matches the EtherType after the
    // tags, so a tagged IPv4 frame matches too.
    let typed = rule(
        1,
        &[
            Item::RepresentedPort(P0),
            Item::Eth(Spec::new(
                EthFields {
                    ether_type: 0x0800,
                    ..EthFields::default()
                },
                EthFields {
                    ether_type: 0xFFFF,
                    ..EthFields::default()
                },
            )),
        ],
        &[TO_P2],
    );
    let mut generic = generic();
    let t = table_for(&mut generic, &typed, 4).unwrap();
    insert(&mut generic, t, &typed).unwrap();
    let mut card = card();
    install(&mut card, &typed).unwrap();
    let tagged = frame(&[q(100)]);
    assert_eq!(
        run(&mut generic, P0, &tagged, Nanos(0)).0,
        Outcome::ToSoftware(P0)
    );
    assert_eq!(run(&mut card, P0, &tagged, Nanos(0)).0, Outcome::Out(P2));
    // `has_vlan is 1` and a VLAN item ask mlx5 for an 802.1Q outer tag:
    // an 802.1ad one does not match.
    let mut card = card_with(&rule(
        1,
        &[Item::RepresentedPort(P0), eth_vlan(true), vlan(100, 0x0800)],
        &[TO_P2],
    ));
    assert_eq!(
        run(&mut card, P0, &frame(&[q(100)]), Nanos(0)).0,
        Outcome::Out(P2)
    );
    assert_eq!(
        run(&mut card, P0, &frame(&[ad(100)]), Nanos(0)).0,
        Outcome::ToSoftware(P0)
    );
}

fn card_with(r: &Rule) -> SoftSwitch {
    let mut sw = card();
    install(&mut sw, r).unwrap();
    sw
}

#[test]
fn the_card_builds_a_pushed_tag_from_the_actions() {
    // OpenFlow's push copies the priority of the tag it covers; mlx5 builds
    // the tag from OF_PUSH_VLAN / OF_SET_VLAN_VID (priority 0).
    let r = rule(
        1,
        &[Item::RepresentedPort(P0)],
        &[
            Action::OfPushVlan(0x8100),
            Action::OfSetVlanVid(VlanId::new(9).unwrap()),
            TO_P2,
        ],
    );
    let mut generic = generic();
    let t = table_for(&mut generic, &r, 4).unwrap();
    insert(&mut generic, t, &r).unwrap();
    let mut card = card_with(&r);
    let pcp = |f: &[u8]| f[14] >> 5;
    let (_, g) = run(&mut generic, P0, &frame(&[q(100)]), Nanos(0));
    let (_, m) = run(&mut card, P0, &frame(&[q(100)]), Nanos(0));
    assert_eq!((pcp(&g), pcp(&m)), (5, 0));
}

const PEER: u32 = 0xC0A8_0001;
const LOCAL: u32 = 0xC0A8_0002;

/// The underlay from the peer DPU to this one, with `vni`.
fn underlay(vni: u32) -> VxlanTunnel {
    VxlanTunnel {
        dst_mac: EthernetAddress([2, 0, 0, 0, 0, 0xDD]),
        src_mac: EthernetAddress([2, 0, 0, 0, 0, 0x55]),
        src: PEER,
        dst: LOCAL,
        src_port: 49_152,
        vni,
        ttl: 64,
    }
}

/// `inner` in VXLAN with `tunnel`'s outer headers.
fn vxlan_frame(tunnel: &VxlanTunnel, inner: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; inner.len() + VXLAN_OVERHEAD];
    buf[VXLAN_OVERHEAD..].copy_from_slice(inner);
    let mut fb = FrameBuf::new(&mut buf, VXLAN_OVERHEAD, inner.len()).unwrap();
    encap(&mut fb, tunnel).unwrap();
    fb.frame().to_vec()
}

/// A TCP ACK 10.0.0.1:1000 -> 10.0.0.2:80 with `vlans`.
fn tcp_frame(vlans: &[(EtherType, Tci)]) -> Vec<u8> {
    let spec = FrameSpec {
        dst_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
        src_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
        vlans,
        net: NetSpec::Ip(
            IpSpec::v4([10, 0, 0, 1].into(), [10, 0, 0, 2].into()),
            L4Spec::Tcp(crate::wire::tcp::TcpRepr {
                src_port: 1000,
                dst_port: 80,
                seq: 1,
                ack: 1,
                flags: crate::wire::tcp::TcpFlags::ACK,
                window: 100,
            }),
        ),
        payload: b"data",
    };
    let mut buf = vec![0u8; spec.len()];
    spec.build(&mut buf).unwrap();
    buf
}

/// A tag as mlx5 pushes it (priority 0).
fn seg(vid: u16) -> (EtherType, Tci) {
    (
        EtherType::Vlan,
        Tci::new(0, false, VlanId::new(vid).unwrap()),
    )
}

fn v4(src: u32, dst: u32) -> Item {
    Item::Ipv4(Spec::new(
        Ipv4Fields {
            src,
            dst,
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

/// Shape (a): VXLAN from the peer with `vni` at the underlay port P0.
fn from_peer(vni: u32) -> Vec<Item> {
    vec![
        Item::RepresentedPort(P0),
        Item::Eth(Spec::default()),
        v4(PEER, LOCAL),
        udp_dst(4789),
        Item::Vxlan(VxlanFields::exactly(vni)),
    ]
}

/// The inner 5-tuple of [`tcp_frame`], SYN, FIN and RST clear.
fn inner_flow() -> [Item; 3] {
    [
        Item::Eth(Spec::default()),
        v4(0x0A00_0001, 0x0A00_0002),
        Item::Tcp(Spec::new(
            TcpFields {
                src_port: 1000,
                dst_port: 80,
                flags: 0,
            },
            TcpFields {
                src_port: 0xFFFF,
                dst_port: 0xFFFF,
                flags: 0x07,
            },
        )),
    ]
}

/// Shape (b): (a) and the inner 5-tuple, eight items.
fn from_peer_flow(vni: u32) -> Vec<Item> {
    let mut p = from_peer(vni);
    p.extend(inner_flow());
    p
}

fn vid(v: u16) -> Action {
    Action::OfSetVlanVid(VlanId::new(v).unwrap())
}

#[test]
fn vxlan_shapes_run_on_the_card() {
    let inner = tcp_frame(&[]);
    let wire = vxlan_frame(&underlay(100), &inner);
    // (a) per (peer, segment, instance): decapsulate, tag, to the VF.
    let a = rule(
        1,
        &from_peer(100),
        &[
            Action::VxlanDecap,
            Action::OfPushVlan(0x8100),
            vid(7),
            TO_P2,
        ],
    );
    let mut sw = card_with(&a);
    assert_eq!(
        run(&mut sw, P0, &wire, Nanos(0)),
        (Outcome::Out(P2), tcp_frame(&[seg(7)]))
    );
    // (b) per session, the instance's shared counter (before the push:
    // the card's order), or an AGE without a tag.
    let mut sw = card();
    let c = sw.create_counter(0).unwrap();
    let b = rule(
        1,
        &from_peer_flow(100),
        &[
            Action::VxlanDecap,
            Action::SharedCount(c),
            Action::OfPushVlan(0x8100),
            vid(9),
            Action::RepresentedPort(P1),
        ],
    );
    assert_eq!(b.pattern.len(), crate::offload::rule::MAX_ITEMS);
    install(&mut sw, &b).unwrap();
    assert_eq!(
        run(&mut sw, P0, &wire, Nanos(0)),
        (Outcome::Out(P1), tcp_frame(&[seg(9)]))
    );
    assert_eq!(
        sw.query_counter(c).unwrap(),
        Counts {
            packets: 1,
            bytes: wire.len() as u64
        },
        "the counter runs first: outer headers counted"
    );
    let other_vni = vxlan_frame(&underlay(101), &inner);
    assert_eq!(
        run(&mut sw, P0, &other_vni, Nanos(0)).0,
        Outcome::ToSoftware(P0)
    );
    let aged = rule(
        1,
        &from_peer_flow(100),
        &[
            Action::VxlanDecap,
            Action::Age(Age {
                timeout_s: 30,
                context: 1,
            }),
            TO_P2,
        ],
    );
    let mut sw = card_with(&aged);
    assert_eq!(
        run(&mut sw, P0, &wire, Nanos(0)),
        (Outcome::Out(P2), inner.clone())
    );
    // (c) from a local instance at P1 on segment 10 to the peer: pop,
    // count, encapsulate, out to the underlay.
    let mut sw = card();
    install(
        &mut sw,
        &rule(0, &[Item::RepresentedPort(P1)], &[Action::Jump(1)]),
    )
    .unwrap();
    let back = VxlanTunnel {
        src: LOCAL,
        dst: PEER,
        ..underlay(100)
    };
    let e = sw.create_encap(&back).unwrap();
    let mut c_items = vec![Item::RepresentedPort(P1), eth_vlan(true), vlan(10, 0x0800)];
    c_items.extend(inner_flow().into_iter().skip(1));
    let c = rule(
        1,
        &c_items,
        &[
            Action::OfPopVlan,
            Action::Count,
            Action::VxlanEncap(e),
            Action::RepresentedPort(P0),
        ],
    );
    let h = install(&mut sw, &c).unwrap();
    let tagged = tcp_frame(&[q(10)]);
    assert_eq!(
        run(&mut sw, P1, &tagged, Nanos(0)),
        (Outcome::Out(P0), vxlan_frame(&back, &inner))
    );
    assert_eq!(sw.query(h).unwrap().bytes, tagged.len() as u64);
}

#[test]
fn decap_comes_before_the_counter_and_the_push() {
    // The order the feature first asked for (push, then the counter)
    // breaks the eSwitch's order: decap, pop, counter, push, modify,
    // encap, fate.
    let mut sw = card();
    let c = sw.create_counter(0).unwrap();
    let r = rule(
        1,
        &from_peer_flow(100),
        &[
            Action::VxlanDecap,
            Action::OfPushVlan(0x8100),
            vid(9),
            Action::SharedCount(c),
            TO_P2,
        ],
    );
    assert!(reason(install(&mut sw, &r).unwrap_err()).contains("mlx5dr_action_check_combo"));
}

#[test]
fn a_decap_needs_a_vxlan_item() {
    let mut sw = card();
    let mut outer_only = from_peer(100);
    outer_only.pop();
    let r = rule(1, &outer_only, &[Action::VxlanDecap, TO_P2]);
    let e = table_for(&mut sw, &r, 4).unwrap_err();
    assert!(
        reason(e).contains("VXLAN_DECAP without a VXLAN item"),
        "{e:?}"
    );
}

#[test]
fn one_vxlan_item() {
    let mut sw = card();
    let mut twice = from_peer(100);
    twice.push(Item::Vxlan(VxlanFields::exactly(5)));
    let r = rule(1, &twice, &[TO_P2]);
    assert!(reason(install(&mut sw, &r).unwrap_err()).contains("inner VXLAN item not supported"));
}

#[test]
fn vxlan_is_udp_port_4789() {
    let mut sw = card();
    let mut other = from_peer(100);
    other[3] = udp_dst(4790);
    let r = rule(1, &other, &[TO_P2]);
    let e = install(&mut sw, &r).unwrap_err();
    assert!(
        reason(e).contains("mlx5dr_definer_conv_item_vxlan"),
        "{e:?}"
    );
    // Without a UDP item the card adds UDP and 4789 itself.
    let mut bare = from_peer(100);
    bare.remove(3);
    let mut sw = card_with(&rule(1, &bare, &[TO_P2]));
    let wire = vxlan_frame(&underlay(100), &tcp_frame(&[]));
    assert_eq!(run(&mut sw, P0, &wire, Nanos(0)).0, Outcome::Out(P2));
}

#[test]
fn no_vni_0() {
    let mut sw = card();
    let r = rule(1, &from_peer(0), &[TO_P2]);
    assert!(reason(install(&mut sw, &r).unwrap_err()).contains("matching value equals 0"));
    // Any VNI (an empty mask) is not a match on 0.
    let mut any = from_peer(0);
    any[4] = Item::Vxlan(Spec::default());
    assert!(install(&mut sw, &rule(1, &any, &[TO_P2])).is_ok());
}

#[test]
fn a_vxlan_pattern_fits_one_match_definer() {
    // (b) takes six full-DW selectors (port register, outer and inner
    // IPv4 addresses, VNI); the outer MACs need more than the limited
    // and byte selectors left.
    let mac = |dst: bool, src: bool| {
        Item::Eth(Spec::new(
            EthFields {
                dst: if dst { [2, 0, 0, 0, 0, 0xDD] } else { [0; 6] },
                src: if src { [2, 0, 0, 0, 0, 0x55] } else { [0; 6] },
                ..EthFields::default()
            },
            EthFields {
                dst: if dst { [0xFF; 6] } else { [0; 6] },
                src: if src { [0xFF; 6] } else { [0; 6] },
                ..EthFields::default()
            },
        ))
    };
    let mut sw = card();
    let mut both = from_peer_flow(100);
    both[1] = mac(true, true);
    let e = install(&mut sw, &rule(1, &both, &[Action::VxlanDecap, TO_P2])).unwrap_err();
    assert!(
        reason(e).contains("mlx5dr_definer_find_best_hl_fit"),
        "{e:?}"
    );
    let mut one = from_peer_flow(100);
    one[1] = mac(true, false);
    let r = rule(1, &one, &[Action::VxlanDecap, TO_P2]);
    let mut sw = card_with(&r);
    let wire = vxlan_frame(&underlay(100), &tcp_frame(&[]));
    assert_eq!(run(&mut sw, P0, &wire, Nanos(0)).0, Outcome::Out(P2));
}

#[test]
fn the_card_reads_an_inner_ipv4_item_whatever_the_inner_tags() {
    // rte_flow: `vxlan / eth / ipv4` is an untagged inner frame; mlx5's
    // inner IPv4 item asks for the inner L3 type only.
    let mut p = from_peer(100);
    p.extend([Item::Eth(Spec::default()), v4(0x0A00_0001, 0x0A00_0002)]);
    let r = rule(1, &p, &[Action::VxlanDecap, TO_P2]);
    let mut generic = generic();
    let t = table_for(&mut generic, &r, 4).unwrap();
    insert(&mut generic, t, &r).unwrap();
    let mut card = card_with(&r);
    let wire = vxlan_frame(&underlay(100), &tcp_frame(&[q(30)]));
    assert_eq!(
        run(&mut generic, P0, &wire, Nanos(0)).0,
        Outcome::ToSoftware(P0)
    );
    assert_eq!(run(&mut card, P0, &wire, Nanos(0)).0, Outcome::Out(P2));
}
