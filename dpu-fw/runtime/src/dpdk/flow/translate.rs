//! The rule language in rte_flow's C structures, built in Rust.
//!
//! Every item becomes an `rte_flow_item` whose spec and mask point at C
//! structures owned by the returned value (boxed, so the pointers stay put
//! while it lives); every action an `rte_flow_action` with its
//! configuration. Multi-byte fields are big-endian, as on the wire. The
//! default masks of `rte_flow.h` are never used (they are not symbols):
//! every mask is spelled out here.

use std::any::Any;
use std::ffi::c_void;
use std::ptr;

use chaingate_fastpath::offload::rule::{
    EthFields, Icmp6Fields, IcmpFields, Ipv4Fields, Ipv6Fields, Spec, TcpFields, UdpFields,
    VlanFields, VxlanFields,
};
use chaingate_fastpath::offload::{
    Action, ActionKind, Age, Attr, CounterId, EncapId, Item, OffloadError, VxlanTunnel,
};
use chaingate_fastpath::wire::EthernetAddress;
use chaingate_shared::PortId;
use chaingate_shared::VlanId;
use dpdk_sys as sys;

/// How ids of the rule language become DPDK's.
pub struct Resolve<'a> {
    /// The DPDK port of a switch port.
    pub port: &'a dyn Fn(PortId) -> Option<u16>,
    /// The indirect COUNT action of a shared counter.
    pub counter: &'a dyn Fn(CounterId) -> Option<*mut sys::rte_flow_action_handle>,
    /// The outer headers of an encapsulation.
    pub encap: &'a dyn Fn(EncapId) -> Option<VxlanTunnel>,
}

/// C structures kept alive for as long as the items or actions point at
/// them.
type Keep = Vec<Box<dyn Any>>;

fn keep<T: 'static>(keep: &mut Keep, value: T) -> *const c_void {
    let b = Box::new(value);
    // The value lives on the heap: moving the box into `keep` leaves it
    // where the pointer says.
    let p = ptr::from_ref::<T>(&*b).cast::<c_void>();
    keep.push(b);
    p
}

impl std::fmt::Debug for Resolve<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolve")
    }
}

/// A pattern: items ending with END.
pub struct CPattern {
    items: Vec<sys::rte_flow_item>,
    _keep: Keep,
}

impl std::fmt::Debug for CPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let types: Vec<_> = self.items.iter().map(|i| i.type_).collect();
        f.debug_struct("CPattern").field("types", &types).finish()
    }
}

impl CPattern {
    /// The items, END last.
    #[must_use]
    pub fn items(&self) -> &[sys::rte_flow_item] {
        &self.items
    }

    /// The items as a template wants them: masks only.
    #[must_use]
    pub fn template(&self) -> Vec<sys::rte_flow_item> {
        self.items
            .iter()
            .map(|i| sys::rte_flow_item {
                spec: ptr::null(),
                ..*i
            })
            .collect()
    }
}

/// Actions ending with END.
pub struct CActions {
    actions: Vec<sys::rte_flow_action>,
    _keep: Keep,
}

impl std::fmt::Debug for CActions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let types: Vec<_> = self.actions.iter().map(|a| a.type_).collect();
        f.debug_struct("CActions").field("types", &types).finish()
    }
}

impl CActions {
    /// The actions, END last.
    #[must_use]
    pub fn actions(&self) -> &[sys::rte_flow_action] {
        &self.actions
    }

    /// The masks of an actions template: same types, no configuration, so
    /// that every value comes with each rule (an indirect action is named
    /// by the type it stands for).
    #[must_use]
    pub fn template_masks(&self) -> Vec<sys::rte_flow_action> {
        self.actions
            .iter()
            .map(|a| sys::rte_flow_action {
                type_: if a.type_ == sys::RTE_FLOW_ACTION_TYPE_INDIRECT {
                    sys::RTE_FLOW_ACTION_TYPE_COUNT
                } else {
                    a.type_
                },
                conf: ptr::null(),
            })
            .collect()
    }
}

/// The rule's attributes.
#[must_use]
pub fn attr(a: &Attr) -> sys::rte_flow_attr {
    let mut c = sys::rte_flow_attr {
        group: a.group,
        priority: a.priority,
        ..Default::default()
    };
    c.set_ingress(u32::from(a.ingress));
    c.set_transfer(u32::from(a.transfer));
    c
}

fn be16(v: u16) -> u16 {
    v.to_be()
}

fn ether(spec: &EthFields) -> sys::rte_flow_item_eth {
    let mut e = sys::rte_flow_item_eth::default();
    e.__bindgen_anon_1.hdr = sys::rte_ether_hdr {
        dst_addr: sys::rte_ether_addr {
            addr_bytes: spec.dst,
        },
        src_addr: sys::rte_ether_addr {
            addr_bytes: spec.src,
        },
        ether_type: be16(spec.ether_type),
    };
    e.set_has_vlan(u32::from(spec.has_vlan));
    e
}

fn vlan(spec: &VlanFields) -> sys::rte_flow_item_vlan {
    let mut v = sys::rte_flow_item_vlan::default();
    v.__bindgen_anon_1.hdr = sys::rte_vlan_hdr {
        vlan_tci: be16(spec.tci),
        eth_proto: be16(spec.inner_type),
    };
    v.set_has_more_vlan(u32::from(spec.has_more_vlan));
    v
}

fn ipv4(spec: &Ipv4Fields) -> sys::rte_flow_item_ipv4 {
    let mut i = sys::rte_flow_item_ipv4::default();
    i.hdr.src_addr = spec.src.to_be();
    i.hdr.dst_addr = spec.dst.to_be();
    i.hdr.next_proto_id = spec.proto;
    i.hdr.type_of_service = spec.tos;
    i
}

fn ipv6(spec: &Ipv6Fields) -> sys::rte_flow_item_ipv6 {
    let mut i = sys::rte_flow_item_ipv6::default();
    i.hdr.src_addr = spec.src.to_be_bytes();
    i.hdr.dst_addr = spec.dst.to_be_bytes();
    i.hdr.proto = spec.proto;
    // Version 4 bits, traffic class 8, flow label 20.
    i.hdr.vtc_flow = (u32::from(spec.tc) << 20).to_be();
    i
}

fn tcp(spec: &TcpFields) -> sys::rte_flow_item_tcp {
    let mut t = sys::rte_flow_item_tcp::default();
    t.hdr.src_port = be16(spec.src_port);
    t.hdr.dst_port = be16(spec.dst_port);
    t.hdr.tcp_flags = spec.flags;
    t
}

fn udp(spec: &UdpFields) -> sys::rte_flow_item_udp {
    let mut u = sys::rte_flow_item_udp::default();
    u.hdr.src_port = be16(spec.src_port);
    u.hdr.dst_port = be16(spec.dst_port);
    u
}

fn icmp(spec: &IcmpFields) -> sys::rte_flow_item_icmp {
    let mut i = sys::rte_flow_item_icmp::default();
    i.hdr.icmp_type = spec.ty;
    i.hdr.icmp_code = spec.code;
    i.hdr.icmp_ident = be16(spec.ident);
    i.hdr.icmp_seq_nb = be16(spec.seq);
    i
}

fn icmp6(spec: &Icmp6Fields) -> sys::rte_flow_item_icmp6 {
    sys::rte_flow_item_icmp6 {
        type_: spec.ty,
        code: spec.code,
        checksum: 0,
    }
}

/// The VNI as `rte_flow_item_vxlan` holds it: three bytes, big-endian
/// (flags and reserved bits zero, in the spec and in the mask).
fn vxlan(spec: &VxlanFields) -> sys::rte_flow_item_vxlan {
    let mut v = sys::rte_flow_item_vxlan::default();
    let [_, a, b, c] = spec.vni.to_be_bytes();
    v.__bindgen_anon_1.__bindgen_anon_1.vni = [a, b, c];
    v
}

fn item<T: Copy, C: 'static>(
    k: &mut Keep,
    ty: sys::rte_flow_item_type,
    s: &Spec<T>,
    f: fn(&T) -> C,
) -> sys::rte_flow_item {
    sys::rte_flow_item {
        type_: ty,
        spec: keep(k, f(&s.spec)),
        last: ptr::null(),
        mask: keep(k, f(&s.mask)),
    }
}

const fn end_item() -> sys::rte_flow_item {
    sys::rte_flow_item {
        type_: sys::RTE_FLOW_ITEM_TYPE_END,
        spec: ptr::null(),
        last: ptr::null(),
        mask: ptr::null(),
    }
}

/// The items of a pattern (the items after a VXLAN item are the inner
/// headers, as rte_flow reads them).
///
/// # Errors
/// A port without a DPDK device, a VNI beyond 24 bits.
pub fn pattern(items: &[Item], r: &Resolve<'_>) -> Result<CPattern, OffloadError> {
    let mut k: Keep = Vec::new();
    let mut out = Vec::with_capacity(items.len() + 1);
    for it in items {
        out.push(match it {
            Item::RepresentedPort(p) => {
                let id =
                    (r.port)(*p).ok_or(OffloadError::Invalid("a port without a DPDK device"))?;
                sys::rte_flow_item {
                    type_: sys::RTE_FLOW_ITEM_TYPE_REPRESENTED_PORT,
                    spec: keep(&mut k, sys::rte_flow_item_ethdev { port_id: id }),
                    last: ptr::null(),
                    mask: keep(&mut k, sys::rte_flow_item_ethdev { port_id: u16::MAX }),
                }
            }
            Item::Eth(s) => item(&mut k, sys::RTE_FLOW_ITEM_TYPE_ETH, s, ether),
            Item::Vlan(s) => item(&mut k, sys::RTE_FLOW_ITEM_TYPE_VLAN, s, vlan),
            Item::Ipv4(s) => item(&mut k, sys::RTE_FLOW_ITEM_TYPE_IPV4, s, ipv4),
            Item::Ipv6(s) => item(&mut k, sys::RTE_FLOW_ITEM_TYPE_IPV6, s, ipv6),
            Item::Tcp(s) => item(&mut k, sys::RTE_FLOW_ITEM_TYPE_TCP, s, tcp),
            Item::Udp(s) => item(&mut k, sys::RTE_FLOW_ITEM_TYPE_UDP, s, udp),
            Item::Icmp(s) => item(&mut k, sys::RTE_FLOW_ITEM_TYPE_ICMP, s, icmp),
            Item::Icmp6(s) => item(&mut k, sys::RTE_FLOW_ITEM_TYPE_ICMP6, s, icmp6),
            Item::Vxlan(s) => {
                if s.spec.vni > VxlanFields::VNI_MASK || s.mask.vni > VxlanFields::VNI_MASK {
                    return Err(OffloadError::Invalid("a VNI beyond 24 bits"));
                }
                item(&mut k, sys::RTE_FLOW_ITEM_TYPE_VXLAN, s, vxlan)
            }
        });
    }
    out.push(end_item());
    Ok(CPattern {
        items: out,
        _keep: k,
    })
}

/// The outer headers of a VXLAN encapsulation as the items
/// `VXLAN_ENCAP` takes (ETH / IPV4 / UDP 4789 / VXLAN / END).
fn vxlan_definition(k: &mut Keep, t: &VxlanTunnel) -> *const c_void {
    let mut eth = sys::rte_flow_item_eth::default();
    eth.__bindgen_anon_1.hdr = sys::rte_ether_hdr {
        dst_addr: sys::rte_ether_addr {
            addr_bytes: t.dst_mac.0,
        },
        src_addr: sys::rte_ether_addr {
            addr_bytes: t.src_mac.0,
        },
        ether_type: be16(0x0800),
    };
    let mut ip = sys::rte_flow_item_ipv4::default();
    ip.hdr.__bindgen_anon_1.version_ihl = 0x45;
    ip.hdr.time_to_live = t.ttl;
    ip.hdr.next_proto_id = 17;
    ip.hdr.src_addr = t.src.to_be();
    ip.hdr.dst_addr = t.dst.to_be();
    let mut udp = sys::rte_flow_item_udp::default();
    udp.hdr.src_port = be16(t.src_port);
    udp.hdr.dst_port = be16(4789);
    let mut vx = sys::rte_flow_item_vxlan::default();
    let vni = t.vni.to_be_bytes();
    vx.__bindgen_anon_1.__bindgen_anon_1.flags = 0x08;
    vx.__bindgen_anon_1.__bindgen_anon_1.vni = [vni[1], vni[2], vni[3]];
    let with = |ty, spec| sys::rte_flow_item {
        type_: ty,
        spec,
        last: ptr::null(),
        mask: ptr::null(),
    };
    let items = vec![
        with(sys::RTE_FLOW_ITEM_TYPE_ETH, keep(k, eth)),
        with(sys::RTE_FLOW_ITEM_TYPE_IPV4, keep(k, ip)),
        with(sys::RTE_FLOW_ITEM_TYPE_UDP, keep(k, udp)),
        with(sys::RTE_FLOW_ITEM_TYPE_VXLAN, keep(k, vx)),
        end_item(),
    ];
    let first = items.as_ptr().cast_mut();
    k.push(Box::new(items));
    keep(k, sys::rte_flow_action_vxlan_encap { definition: first })
}

/// One action's type and configuration.
fn action(
    a: &Action,
    r: &Resolve<'_>,
    k: &mut Keep,
) -> Result<(sys::rte_flow_action_type, *const c_void), OffloadError> {
    let port = |p: PortId| (r.port)(p).ok_or(OffloadError::Invalid("a port without a DPDK device"));
    Ok(match a {
        Action::RepresentedPort(p) => (
            sys::RTE_FLOW_ACTION_TYPE_REPRESENTED_PORT,
            keep(k, sys::rte_flow_action_ethdev { port_id: port(*p)? }),
        ),
        Action::PortRepresentor(p) => (
            sys::RTE_FLOW_ACTION_TYPE_PORT_REPRESENTOR,
            keep(k, sys::rte_flow_action_ethdev { port_id: port(*p)? }),
        ),
        Action::Jump(g) => (
            sys::RTE_FLOW_ACTION_TYPE_JUMP,
            keep(k, sys::rte_flow_action_jump { group: *g }),
        ),
        Action::Drop => (sys::RTE_FLOW_ACTION_TYPE_DROP, ptr::null()),
        Action::OfPushVlan(tpid) => (
            sys::RTE_FLOW_ACTION_TYPE_OF_PUSH_VLAN,
            keep(
                k,
                sys::rte_flow_action_of_push_vlan {
                    ethertype: be16(*tpid),
                },
            ),
        ),
        Action::OfSetVlanVid(vid) => (
            sys::RTE_FLOW_ACTION_TYPE_OF_SET_VLAN_VID,
            keep(
                k,
                sys::rte_flow_action_of_set_vlan_vid {
                    vlan_vid: be16(vid.get()),
                },
            ),
        ),
        Action::OfSetVlanPcp(pcp) => (
            sys::RTE_FLOW_ACTION_TYPE_OF_SET_VLAN_PCP,
            keep(k, sys::rte_flow_action_of_set_vlan_pcp { vlan_pcp: *pcp }),
        ),
        Action::OfPopVlan => (sys::RTE_FLOW_ACTION_TYPE_OF_POP_VLAN, ptr::null()),
        Action::SetMacSrc(m) => (
            sys::RTE_FLOW_ACTION_TYPE_SET_MAC_SRC,
            keep(k, sys::rte_flow_action_set_mac { mac_addr: m.0 }),
        ),
        Action::SetMacDst(m) => (
            sys::RTE_FLOW_ACTION_TYPE_SET_MAC_DST,
            keep(k, sys::rte_flow_action_set_mac { mac_addr: m.0 }),
        ),
        Action::Count => (
            sys::RTE_FLOW_ACTION_TYPE_COUNT,
            keep(k, sys::rte_flow_action_count { id: 0 }),
        ),
        Action::SharedCount(c) => (
            sys::RTE_FLOW_ACTION_TYPE_INDIRECT,
            (r.counter)(*c)
                .ok_or(OffloadError::UnknownHandle)?
                .cast::<c_void>()
                .cast_const(),
        ),
        Action::Age(age) => {
            let mut conf = sys::rte_flow_action_age::default();
            conf.set_timeout(age.timeout_s);
            // The context comes back with the aged report: the number
            // itself, not an address.
            conf.context =
                ptr::without_provenance_mut(usize::try_from(age.context).unwrap_or(usize::MAX));
            (sys::RTE_FLOW_ACTION_TYPE_AGE, keep(k, conf))
        }
        Action::VxlanEncap(e) => {
            let t = (r.encap)(*e).ok_or(OffloadError::UnknownHandle)?;
            (
                sys::RTE_FLOW_ACTION_TYPE_VXLAN_ENCAP,
                vxlan_definition(k, &t),
            )
        }
        Action::VxlanDecap => (sys::RTE_FLOW_ACTION_TYPE_VXLAN_DECAP, ptr::null()),
    })
}

/// The actions of a rule.
///
/// # Errors
/// A port without a DPDK device, an unknown counter or encapsulation.
pub fn actions(actions: &[Action], r: &Resolve<'_>) -> Result<CActions, OffloadError> {
    let mut k: Keep = Vec::new();
    let mut out = Vec::with_capacity(actions.len() + 1);
    for a in actions {
        let (type_, conf) = action(a, r, &mut k)?;
        out.push(sys::rte_flow_action { type_, conf });
    }
    Ok(finish(out, k))
}

/// The actions of an actions template of `kinds`: every configuration is
/// a placeholder (with the masks of [`CActions::template_masks`], each
/// rule brings its own), present where mlx5 reads one at template time
/// (an encapsulation's length); an indirect action has none.
#[must_use]
pub fn template_actions(kinds: &[ActionKind], r: &Resolve<'_>) -> CActions {
    let mut k: Keep = Vec::new();
    let mut out = Vec::with_capacity(kinds.len() + 1);
    let any_port = (0..64)
        .map(PortId::from_index)
        .find(|p| (r.port)(*p).is_some())
        .unwrap_or(PortId::from_index(0));
    let vid = VlanId::new(1).unwrap_or(VlanId::from_tci(1));
    let mac = EthernetAddress([0; 6]);
    for kind in kinds {
        let placeholder = match kind {
            ActionKind::RepresentedPort => Action::RepresentedPort(any_port),
            ActionKind::PortRepresentor => Action::PortRepresentor(any_port),
            ActionKind::Jump => Action::Jump(1),
            ActionKind::Drop => Action::Drop,
            ActionKind::OfPushVlan => Action::OfPushVlan(0x8100),
            ActionKind::OfSetVlanVid => Action::OfSetVlanVid(vid),
            ActionKind::OfSetVlanPcp => Action::OfSetVlanPcp(0),
            ActionKind::OfPopVlan => Action::OfPopVlan,
            ActionKind::SetMacSrc => Action::SetMacSrc(mac),
            ActionKind::SetMacDst => Action::SetMacDst(mac),
            ActionKind::Count => Action::Count,
            ActionKind::Age => Action::Age(Age {
                timeout_s: 1,
                context: 0,
            }),
            ActionKind::VxlanDecap => Action::VxlanDecap,
            ActionKind::SharedCount => {
                out.push(sys::rte_flow_action {
                    type_: sys::RTE_FLOW_ACTION_TYPE_INDIRECT,
                    conf: ptr::null(),
                });
                continue;
            }
            ActionKind::VxlanEncap => {
                let t = VxlanTunnel {
                    dst_mac: mac,
                    src_mac: mac,
                    src: 0,
                    dst: 0,
                    src_port: 0,
                    vni: 0,
                    ttl: 64,
                };
                out.push(sys::rte_flow_action {
                    type_: sys::RTE_FLOW_ACTION_TYPE_VXLAN_ENCAP,
                    conf: vxlan_definition(&mut k, &t),
                });
                continue;
            }
        };
        // Placeholders name no counter or encapsulation: they translate.
        if let Ok((type_, conf)) = action(&placeholder, r, &mut k) {
            out.push(sys::rte_flow_action { type_, conf });
        }
    }
    finish(out, k)
}

/// Closes an action list with END.
fn finish(mut out: Vec<sys::rte_flow_action>, k: Keep) -> CActions {
    out.push(sys::rte_flow_action {
        type_: sys::RTE_FLOW_ACTION_TYPE_END,
        conf: ptr::null(),
    });
    CActions {
        actions: out,
        _keep: k,
    }
}
