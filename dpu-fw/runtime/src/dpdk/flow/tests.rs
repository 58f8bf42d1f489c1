//! Every item and action of the rule language, translated into rte_flow's
//! C structures and read back field by field (no EAL needed).

use chaingate_fastpath::offload::rule::{
    EthFields, Icmp6Fields, IcmpFields, Ipv4Fields, Ipv6Fields, Spec, TcpFields, UdpFields,
    VlanFields, VxlanFields,
};
use chaingate_fastpath::offload::{Action, ActionKind, Age, Attr};
use chaingate_fastpath::wire::EthernetAddress;
use chaingate_shared::VlanId;

use super::translate::{self, Resolve};
use super::*;

const HANDLE: usize = 0x1000;

fn resolve<T>(f: impl FnOnce(&Resolve<'_>) -> T) -> T {
    let port = |p: PortId| (p.index() < 4).then(|| 10 + u16::try_from(p.index()).unwrap());
    let counter = |c: CounterId| {
        (c.0 == 7).then_some(ptr::without_provenance_mut::<sys::rte_flow_action_handle>(
            HANDLE,
        ))
    };
    let encap = |e: EncapId| {
        (e.0 == 0).then_some(VxlanTunnel {
            dst_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            src_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            src: 0x0A00_0001,
            dst: 0x0A00_0002,
            src_port: 49_152,
            vni: 0x12_3456,
            ttl: 64,
        })
    };
    f(&Resolve {
        port: &port,
        counter: &counter,
        encap: &encap,
    })
}

/// The spec and mask of the single item of a pattern, as `T`.
fn read<T: Copy>(item: Item, ty: sys::rte_flow_item_type) -> (T, T) {
    resolve(|r| {
        let p = translate::pattern(&[item], r).unwrap();
        let items = p.items();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].type_, ty);
        assert_eq!(items[1].type_, sys::RTE_FLOW_ITEM_TYPE_END);
        assert!(items[0].last.is_null());
        // SAFETY: the translation stores a `T` behind both pointers for
        // this item type; `p` keeps them alive.
        unsafe {
            (
                items[0].spec.cast::<T>().read_unaligned(),
                items[0].mask.cast::<T>().read_unaligned(),
            )
        }
    })
}

#[test]
fn items_read_back() {
    let (s, m) = read::<sys::rte_flow_item_ethdev>(
        Item::RepresentedPort(PortId::from_index(3)),
        sys::RTE_FLOW_ITEM_TYPE_REPRESENTED_PORT,
    );
    assert_eq!((s.port_id, m.port_id), (13, u16::MAX));

    let eth = EthFields {
        dst: [1, 2, 3, 4, 5, 6],
        src: [7, 8, 9, 10, 11, 12],
        ether_type: 0x8100,
        has_vlan: true,
    };
    let (s, m) = read::<sys::rte_flow_item_eth>(
        Item::Eth(Spec::new(
            eth,
            EthFields {
                ether_type: 0xFFFF,
                ..EthFields::default()
            },
        )),
        sys::RTE_FLOW_ITEM_TYPE_ETH,
    );
    // SAFETY: the translation writes the `hdr` view of the union.
    let (sh, mh) = unsafe { (s.__bindgen_anon_1.hdr, m.__bindgen_anon_1.hdr) };
    assert_eq!(sh.dst_addr.addr_bytes, eth.dst);
    assert_eq!(sh.src_addr.addr_bytes, eth.src);
    assert_eq!(u16::from_be(sh.ether_type), 0x8100);
    assert_eq!(s.has_vlan(), 1);
    assert_eq!(
        (
            u16::from_be(mh.ether_type),
            mh.dst_addr.addr_bytes,
            m.has_vlan()
        ),
        (0xFFFF, [0; 6], 0)
    );

    let vlan = VlanFields {
        tci: 0x2005,
        inner_type: 0x0800,
        has_more_vlan: true,
    };
    let (s, m) = read::<sys::rte_flow_item_vlan>(
        Item::Vlan(Spec::new(
            vlan,
            VlanFields {
                tci: 0x0FFF,
                ..VlanFields::default()
            },
        )),
        sys::RTE_FLOW_ITEM_TYPE_VLAN,
    );
    // SAFETY: as above, the `hdr` view.
    let (sh, mh) = unsafe { (s.__bindgen_anon_1.hdr, m.__bindgen_anon_1.hdr) };
    assert_eq!(
        (u16::from_be(sh.vlan_tci), u16::from_be(sh.eth_proto)),
        (0x2005, 0x0800)
    );
    assert_eq!(s.has_more_vlan(), 1);
    assert_eq!((u16::from_be(mh.vlan_tci), m.has_more_vlan()), (0x0FFF, 0));

    let v4 = Ipv4Fields {
        src: 0x0A00_0001,
        dst: 0xC000_0250,
        proto: 6,
        tos: 0xB8,
    };
    let (s, m) = read::<sys::rte_flow_item_ipv4>(
        Item::Ipv4(Spec::new(
            v4,
            Ipv4Fields {
                src: u32::MAX,
                dst: 0xFFFF_FF00,
                proto: 0xFF,
                tos: 0,
            },
        )),
        sys::RTE_FLOW_ITEM_TYPE_IPV4,
    );
    assert_eq!(s.hdr.src_addr.to_ne_bytes(), [10, 0, 0, 1], "network order");
    assert_eq!(u32::from_be(s.hdr.dst_addr), 0xC000_0250);
    assert_eq!((s.hdr.next_proto_id, s.hdr.type_of_service), (6, 0xB8));
    assert_eq!(
        (
            u32::from_be(m.hdr.dst_addr),
            m.hdr.next_proto_id,
            m.hdr.type_of_service
        ),
        (0xFFFF_FF00, 0xFF, 0)
    );

    let v6 = Ipv6Fields {
        src: 0x2001_0db8_0000_0000_0000_0000_0000_0001,
        dst: 0x2001_0db8_0000_0000_0000_0000_0000_0002,
        proto: 17,
        tc: 0x2E,
    };
    let (s, m) = read::<sys::rte_flow_item_ipv6>(
        Item::Ipv6(Spec::new(
            v6,
            Ipv6Fields {
                src: u128::MAX,
                dst: u128::MAX,
                proto: 0xFF,
                tc: 0xFF,
            },
        )),
        sys::RTE_FLOW_ITEM_TYPE_IPV6,
    );
    assert_eq!(s.hdr.src_addr, v6.src.to_be_bytes());
    assert_eq!(s.hdr.dst_addr, v6.dst.to_be_bytes());
    assert_eq!(s.hdr.proto, 17);
    assert_eq!(
        (u32::from_be(s.hdr.vtc_flow) >> 20) & 0xFF,
        0x2E,
        "traffic class bits"
    );
    assert_eq!(
        u32::from_be(m.hdr.vtc_flow),
        0x0FF0_0000,
        "only the class is matched"
    );

    let (s, m) = read::<sys::rte_flow_item_tcp>(
        Item::Tcp(Spec::new(
            TcpFields {
                src_port: 4000,
                dst_port: 443,
                flags: 0,
            },
            TcpFields {
                src_port: 0xFFFF,
                dst_port: 0xFFFF,
                flags: 0x05,
            },
        )),
        sys::RTE_FLOW_ITEM_TYPE_TCP,
    );
    assert_eq!(
        (u16::from_be(s.hdr.src_port), u16::from_be(s.hdr.dst_port)),
        (4000, 443)
    );
    assert_eq!(
        (m.hdr.tcp_flags, u16::from_be(m.hdr.dst_port)),
        (0x05, 0xFFFF)
    );

    let (s, _) = read::<sys::rte_flow_item_udp>(
        Item::Udp(Spec::new(
            UdpFields {
                src_port: 53,
                dst_port: 5353,
            },
            UdpFields {
                src_port: 0xFFFF,
                dst_port: 0xFFFF,
            },
        )),
        sys::RTE_FLOW_ITEM_TYPE_UDP,
    );
    assert_eq!(
        (u16::from_be(s.hdr.src_port), u16::from_be(s.hdr.dst_port)),
        (53, 5353)
    );

    let (s, m) = read::<sys::rte_flow_item_icmp>(
        Item::Icmp(Spec::new(
            IcmpFields {
                ty: 8,
                code: 0,
                ident: 0x1234,
                seq: 7,
            },
            IcmpFields {
                ty: 0xFF,
                code: 0xFF,
                ident: 0xFFFF,
                seq: 0,
            },
        )),
        sys::RTE_FLOW_ITEM_TYPE_ICMP,
    );
    assert_eq!(
        (
            s.hdr.icmp_type,
            u16::from_be(s.hdr.icmp_ident),
            u16::from_be(s.hdr.icmp_seq_nb)
        ),
        (8, 0x1234, 7)
    );
    assert_eq!(
        (u16::from_be(m.hdr.icmp_ident), m.hdr.icmp_seq_nb),
        (0xFFFF, 0)
    );

    let (s, m) = read::<sys::rte_flow_item_icmp6>(
        Item::Icmp6(Spec::new(
            Icmp6Fields { ty: 128, code: 0 },
            Icmp6Fields { ty: 0xFF, code: 0 },
        )),
        sys::RTE_FLOW_ITEM_TYPE_ICMP6,
    );
    assert_eq!((s.type_, m.type_, m.code), (128, 0xFF, 0));
}

#[test]
fn a_vxlan_item_reads_back_and_the_items_after_it_are_the_inner_ones() {
    let (s, m) = read::<sys::rte_flow_item_vxlan>(
        Item::Vxlan(Spec::new(
            VxlanFields { vni: 0x12_3456 },
            VxlanFields { vni: 0x00FF_FF00 },
        )),
        sys::RTE_FLOW_ITEM_TYPE_VXLAN,
    );
    // SAFETY: the translation writes the field view of the union, every
    // byte of which is initialised (the default is all zero).
    let (sv, mv) = unsafe {
        (
            s.__bindgen_anon_1.__bindgen_anon_1,
            m.__bindgen_anon_1.__bindgen_anon_1,
        )
    };
    assert_eq!(sv.vni, [0x12, 0x34, 0x56], "big-endian, three bytes");
    assert_eq!(mv.vni, [0xFF, 0xFF, 0x00]);
    assert_eq!(
        (sv.flags, mv.flags, sv.rsvd0, mv.rsvd0, sv.rsvd1, mv.rsvd1),
        (0, 0, [0; 3], [0; 3], 0, 0),
        "flags and reserved bits are neither set nor matched"
    );
    // SAFETY: the same bytes through the header view.
    let hdr = unsafe { m.__bindgen_anon_1.hdr };
    assert_eq!(
        (u32::from_be(hdr.vx_vni), hdr.vx_flags),
        (0x00FF_FF00 << 8, 0),
        "the header's view agrees"
    );

    // Shape (b) of a remote hop: outer headers, VXLAN, inner 5-tuple.
    let v4 = |src: u32, dst: u32| {
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
    };
    let pattern = [
        Item::RepresentedPort(PortId::from_index(0)),
        Item::Eth(Spec::default()),
        v4(0xC0A8_0001, 0xC0A8_0002),
        Item::Udp(Spec::new(
            UdpFields {
                src_port: 0,
                dst_port: 4789,
            },
            UdpFields {
                src_port: 0,
                dst_port: 0xFFFF,
            },
        )),
        Item::Vxlan(VxlanFields::exactly(100)),
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
    ];
    resolve(|r| {
        let p = translate::pattern(&pattern, r).unwrap();
        let types: Vec<_> = p.items().iter().map(|i| i.type_).collect();
        assert_eq!(
            types,
            [
                sys::RTE_FLOW_ITEM_TYPE_REPRESENTED_PORT,
                sys::RTE_FLOW_ITEM_TYPE_ETH,
                sys::RTE_FLOW_ITEM_TYPE_IPV4,
                sys::RTE_FLOW_ITEM_TYPE_UDP,
                sys::RTE_FLOW_ITEM_TYPE_VXLAN,
                sys::RTE_FLOW_ITEM_TYPE_ETH,
                sys::RTE_FLOW_ITEM_TYPE_IPV4,
                sys::RTE_FLOW_ITEM_TYPE_TCP,
                sys::RTE_FLOW_ITEM_TYPE_END,
            ]
        );
        let items = p.items();
        // SAFETY: IPv4 items point at rte_flow_item_ipv4, the VXLAN item
        // at rte_flow_item_vxlan, all kept alive by `p`.
        let (outer, vx, inner) = unsafe {
            (
                items[2]
                    .spec
                    .cast::<sys::rte_flow_item_ipv4>()
                    .read_unaligned(),
                items[4]
                    .spec
                    .cast::<sys::rte_flow_item_vxlan>()
                    .read_unaligned(),
                items[6]
                    .spec
                    .cast::<sys::rte_flow_item_ipv4>()
                    .read_unaligned(),
            )
        };
        assert_eq!(u32::from_be(outer.hdr.dst_addr), 0xC0A8_0002);
        // SAFETY: the field view, as above.
        let vni = unsafe { vx.__bindgen_anon_1.__bindgen_anon_1.vni };
        assert_eq!(vni, [0, 0, 100]);
        assert_eq!(u32::from_be(inner.hdr.dst_addr), 0x0A00_0002);
        // A template keeps the VXLAN mask and drops the value.
        let t = p.template();
        assert!(t[4].spec.is_null() && !t[4].mask.is_null());
        // A VNI past 24 bits has no place in the item.
        assert!(matches!(
            translate::pattern(
                &[Item::Vxlan(Spec::new(
                    VxlanFields { vni: 1 << 24 },
                    VxlanFields { vni: u32::MAX },
                ))],
                r
            ),
            Err(OffloadError::Invalid(_))
        ));
    });
}

/// The configuration of the single action of a list, as `T`.
fn conf<T: Copy>(action: Action, ty: sys::rte_flow_action_type) -> Option<T> {
    resolve(|r| {
        let a = translate::actions(&[action], r).unwrap();
        let list = a.actions();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].type_, ty, "{action:?}");
        assert_eq!(list[1].type_, sys::RTE_FLOW_ACTION_TYPE_END);
        // SAFETY: a non-null configuration is a `T` for this action type;
        // `a` keeps it alive.
        (!list[0].conf.is_null()).then(|| unsafe { list[0].conf.cast::<T>().read_unaligned() })
    })
}

#[test]
fn actions_read_back() {
    let port = PortId::from_index(2);
    let p = conf::<sys::rte_flow_action_ethdev>(
        Action::RepresentedPort(port),
        sys::RTE_FLOW_ACTION_TYPE_REPRESENTED_PORT,
    );
    assert_eq!(p.unwrap().port_id, 12);
    let p = conf::<sys::rte_flow_action_ethdev>(
        Action::PortRepresentor(port),
        sys::RTE_FLOW_ACTION_TYPE_PORT_REPRESENTOR,
    );
    assert_eq!(p.unwrap().port_id, 12);
    assert_eq!(
        conf::<sys::rte_flow_action_jump>(Action::Jump(3), sys::RTE_FLOW_ACTION_TYPE_JUMP)
            .unwrap()
            .group,
        3
    );
    assert!(conf::<u8>(Action::Drop, sys::RTE_FLOW_ACTION_TYPE_DROP).is_none());
    let push = conf::<sys::rte_flow_action_of_push_vlan>(
        Action::OfPushVlan(0x88A8),
        sys::RTE_FLOW_ACTION_TYPE_OF_PUSH_VLAN,
    );
    assert_eq!(u16::from_be(push.unwrap().ethertype), 0x88A8);
    let vid = conf::<sys::rte_flow_action_of_set_vlan_vid>(
        Action::OfSetVlanVid(VlanId::new(1001).unwrap()),
        sys::RTE_FLOW_ACTION_TYPE_OF_SET_VLAN_VID,
    );
    assert_eq!(u16::from_be(vid.unwrap().vlan_vid), 1001);
    let pcp = conf::<sys::rte_flow_action_of_set_vlan_pcp>(
        Action::OfSetVlanPcp(5),
        sys::RTE_FLOW_ACTION_TYPE_OF_SET_VLAN_PCP,
    );
    assert_eq!(pcp.unwrap().vlan_pcp, 5);
    assert!(conf::<u8>(Action::OfPopVlan, sys::RTE_FLOW_ACTION_TYPE_OF_POP_VLAN).is_none());
    let mac = EthernetAddress([2, 4, 6, 8, 10, 12]);
    let src = conf::<sys::rte_flow_action_set_mac>(
        Action::SetMacSrc(mac),
        sys::RTE_FLOW_ACTION_TYPE_SET_MAC_SRC,
    );
    assert_eq!(src.unwrap().mac_addr, mac.0);
    let dst = conf::<sys::rte_flow_action_set_mac>(
        Action::SetMacDst(mac),
        sys::RTE_FLOW_ACTION_TYPE_SET_MAC_DST,
    );
    assert_eq!(dst.unwrap().mac_addr, mac.0);
    assert_eq!(
        conf::<sys::rte_flow_action_count>(Action::Count, sys::RTE_FLOW_ACTION_TYPE_COUNT)
            .unwrap()
            .id,
        0
    );
    let age = conf::<sys::rte_flow_action_age>(
        Action::Age(Age {
            timeout_s: 150,
            context: 0x1234_5678_9ABC,
        }),
        sys::RTE_FLOW_ACTION_TYPE_AGE,
    )
    .unwrap();
    assert_eq!(age.timeout(), 150);
    assert_eq!(
        age.context.addr(),
        0x1234_5678_9ABC,
        "the context comes back as given"
    );
    assert!(conf::<u8>(Action::VxlanDecap, sys::RTE_FLOW_ACTION_TYPE_VXLAN_DECAP).is_none());

    // An indirect action's configuration is the handle itself.
    resolve(|r| {
        let a = translate::actions(&[Action::SharedCount(CounterId(7))], r).unwrap();
        assert_eq!(a.actions()[0].type_, sys::RTE_FLOW_ACTION_TYPE_INDIRECT);
        assert_eq!(a.actions()[0].conf.addr(), HANDLE);
        // A template names it by the action it stands for.
        assert_eq!(a.template_masks()[0].type_, sys::RTE_FLOW_ACTION_TYPE_COUNT);
        assert!(a.template_masks()[0].conf.is_null());
    });
}

#[test]
fn vxlan_encap_carries_the_outer_headers() {
    resolve(|r| {
        let a = translate::actions(&[Action::VxlanEncap(EncapId(0))], r).unwrap();
        let list = a.actions();
        assert_eq!(list[0].type_, sys::RTE_FLOW_ACTION_TYPE_VXLAN_ENCAP);
        // SAFETY: the configuration is an rte_flow_action_vxlan_encap whose
        // definition is five items (ETH, IPV4, UDP, VXLAN, END), all kept
        // alive by `a`.
        unsafe {
            let def = list[0]
                .conf
                .cast::<sys::rte_flow_action_vxlan_encap>()
                .read_unaligned()
                .definition;
            let items = std::slice::from_raw_parts(def, 5);
            let types: Vec<_> = items.iter().map(|i| i.type_).collect();
            assert_eq!(
                types,
                [
                    sys::RTE_FLOW_ITEM_TYPE_ETH,
                    sys::RTE_FLOW_ITEM_TYPE_IPV4,
                    sys::RTE_FLOW_ITEM_TYPE_UDP,
                    sys::RTE_FLOW_ITEM_TYPE_VXLAN,
                    sys::RTE_FLOW_ITEM_TYPE_END
                ]
            );
            let ip = items[1]
                .spec
                .cast::<sys::rte_flow_item_ipv4>()
                .read_unaligned();
            assert_eq!(
                (
                    u32::from_be(ip.hdr.dst_addr),
                    ip.hdr.time_to_live,
                    ip.hdr.next_proto_id
                ),
                (0x0A00_0002, 64, 17)
            );
            let udp = items[2]
                .spec
                .cast::<sys::rte_flow_item_udp>()
                .read_unaligned();
            assert_eq!(
                (
                    u16::from_be(udp.hdr.src_port),
                    u16::from_be(udp.hdr.dst_port)
                ),
                (49_152, 4789)
            );
            let vx = items[3]
                .spec
                .cast::<sys::rte_flow_item_vxlan>()
                .read_unaligned();
            assert_eq!(vx.__bindgen_anon_1.__bindgen_anon_1.vni, [0x12, 0x34, 0x56]);
        }
    });
}

#[test]
fn unknown_references_are_refused_not_guessed() {
    resolve(|r| {
        let far = PortId::from_index(9);
        assert!(matches!(
            translate::pattern(&[Item::RepresentedPort(far)], r),
            Err(OffloadError::Invalid(_))
        ));
        assert!(matches!(
            translate::actions(&[Action::RepresentedPort(far)], r),
            Err(OffloadError::Invalid(_))
        ));
        assert_eq!(
            translate::actions(&[Action::SharedCount(CounterId(1))], r).err(),
            Some(OffloadError::UnknownHandle)
        );
        assert_eq!(
            translate::actions(&[Action::VxlanEncap(EncapId(5))], r).err(),
            Some(OffloadError::UnknownHandle)
        );
    });
}

#[test]
fn attributes_and_errnos() {
    let a = translate::attr(&Attr {
        group: 1,
        priority: 1000,
        ingress: false,
        transfer: true,
    });
    assert_eq!(
        (a.group, a.priority, a.transfer(), a.ingress()),
        (1, 1000, 1, 0)
    );
    let e = |errno| {
        FlowError {
            call: "x",
            errno: Errno(errno),
            kind: 0,
            message: String::new(),
        }
        .offload_error()
    };
    assert_eq!(e(libc::ENOSYS), OffloadError::NoSys);
    assert!(matches!(e(libc::ENOTSUP), OffloadError::Unsupported(_)));
    assert_eq!(e(libc::EEXIST), OffloadError::Exists);
    assert_eq!(e(libc::ENOSPC), OffloadError::Full);
    assert!(matches!(e(libc::EINVAL), OffloadError::Invalid(_)));
    assert_eq!(e(libc::EBUSY), OffloadError::Other(libc::EBUSY));
}

#[test]
fn an_actions_template_has_every_type_and_no_fixed_value() {
    use ActionKind as K;
    let kinds = [
        K::OfPopVlan,
        K::SharedCount,
        K::Age,
        K::OfPushVlan,
        K::OfSetVlanVid,
        K::VxlanEncap,
        K::RepresentedPort,
    ];
    resolve(|r| {
        let a = translate::template_actions(&kinds, r);
        let types: Vec<_> = a.actions().iter().map(|a| a.type_).collect();
        assert_eq!(
            types,
            [
                sys::RTE_FLOW_ACTION_TYPE_OF_POP_VLAN,
                sys::RTE_FLOW_ACTION_TYPE_INDIRECT,
                sys::RTE_FLOW_ACTION_TYPE_AGE,
                sys::RTE_FLOW_ACTION_TYPE_OF_PUSH_VLAN,
                sys::RTE_FLOW_ACTION_TYPE_OF_SET_VLAN_VID,
                sys::RTE_FLOW_ACTION_TYPE_VXLAN_ENCAP,
                sys::RTE_FLOW_ACTION_TYPE_REPRESENTED_PORT,
                sys::RTE_FLOW_ACTION_TYPE_END,
            ]
        );
        // mlx5 reads an encapsulation's definition at template time
        // (hw.c: its length must match the rules'); an indirect action
        // there has no handle.
        assert!(!a.actions()[5].conf.is_null());
        assert!(a.actions()[1].conf.is_null());
        // Masks without configuration: every value comes with its rule
        // (push and its VID both unmasked, as hw.c
        // flow_hw_validate_action_push_vlan wants them to agree).
        let masks = a.template_masks();
        assert!(masks.iter().all(|m| m.conf.is_null()));
        assert_eq!(masks[1].type_, sys::RTE_FLOW_ACTION_TYPE_COUNT);
    });
}
