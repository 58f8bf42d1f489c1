//! Rules as dpdk-testpmd `flow` commands (DPDK 22.11's
//! `app/test-pmd/cmdline_flow.c` grammar), so an operator can replay on a
//! card what the gateway installs, one command a line.
//!
//! Transfer rules are created on port 0, the transfer proxy (the PF), as
//! `flow create 0 group G priority P transfer pattern ... / end actions
//! ... / end`. A field is printed only when its mask is not empty: `is`
//! for a whole mask, `spec` and `mask` otherwise. A shared counter is
//! `indirect N`, after the `flow indirect_action 0 create action_id N
//! transfer action count / end` that [`write_counter`] prints; a VXLAN
//! encapsulation is a `set vxlan ...` line before its rule. The one-by-one
//! API these lines use is what mlx5 serves with `dv_flow_en=1`; with
//! `dv_flow_en=2` it takes only the template API (docs/bluefield.md).
//!
//! testpmd reads lines of at most 512 characters; the longest rule the
//! generator makes (IPv6, three tags) stays well below.

use core::fmt::{self, Write};
use core::net::{Ipv4Addr, Ipv6Addr};

use chaingate_shared::PortId;

use super::rule::{Action, CounterId, EncapId, Item, Rule, VxlanFields, VxlanTunnel};

/// The longest line testpmd reads (`RDLINE_BUF_SIZE`).
pub const MAX_LINE: usize = 512;

/// The ethdev port id of each of the rule language's ports, and the
/// encapsulations.
pub struct Names<'a> {
    /// The ethdev port id of a port.
    pub port: &'a dyn Fn(PortId) -> u16,
    /// An encapsulation's outer headers.
    pub encap: &'a dyn Fn(EncapId) -> Option<VxlanTunnel>,
}

impl fmt::Debug for Names<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Names").finish_non_exhaustive()
    }
}

/// Writes the line that creates shared counter `counter` as indirect
/// action `counter.0` on port 0.
///
/// # Errors
/// The writer's.
pub fn write_counter(w: &mut impl Write, counter: CounterId) -> fmt::Result {
    writeln!(
        w,
        "flow indirect_action 0 create action_id {} transfer action count / end",
        counter.0
    )
}

/// Writes `rule` as one `flow create` line (preceded by the `set vxlan`
/// line of its encapsulation, if it has one).
///
/// # Errors
/// The writer's, or [`fmt::Error`] for an encapsulation `names` does not
/// know.
pub fn write_rule(w: &mut impl Write, rule: &Rule, names: &Names<'_>) -> fmt::Result {
    for a in &rule.actions {
        if let Action::VxlanEncap(e) = a {
            let t = (names.encap)(*e).ok_or(fmt::Error)?;
            writeln!(
                w,
                "set vxlan ip-version ipv4 vni {} udp-src {} udp-dst {} ip-src {} ip-dst {} eth-src {} eth-dst {}",
                t.vni & 0x00FF_FFFF,
                t.src_port,
                crate::wire::vxlan::VXLAN_PORT,
                Ipv4Addr::from_bits(t.src),
                Ipv4Addr::from_bits(t.dst),
                t.src_mac,
                t.dst_mac,
            )?;
        }
    }
    write!(
        w,
        "flow create 0 group {} priority {}",
        rule.attr.group, rule.attr.priority
    )?;
    if rule.attr.ingress {
        w.write_str(" ingress")?;
    }
    if rule.attr.transfer {
        w.write_str(" transfer")?;
    }
    w.write_str(" pattern")?;
    for item in &rule.pattern {
        w.write_char(' ')?;
        write_item(w, item, names)?;
        w.write_str(" /")?;
    }
    w.write_str(" end actions")?;
    for action in &rule.actions {
        w.write_char(' ')?;
        write_action(w, action, names)?;
        w.write_str(" /")?;
    }
    w.write_str(" end\n")
}

/// A field: `name is v` for a whole mask, `name spec v name mask m` for
/// part of one, nothing for none.
fn field<T: PartialEq + Default + fmt::Display>(
    w: &mut impl Write,
    name: &str,
    spec: T,
    mask: T,
    full: T,
) -> fmt::Result {
    if mask == T::default() {
        Ok(())
    } else if mask == full {
        write!(w, " {name} is {spec}")
    } else {
        write!(w, " {name} spec {spec} {name} mask {mask}")
    }
}

/// An address field (the caller leaves out empty masks).
fn addr<T: PartialEq + fmt::Display>(
    w: &mut impl Write,
    name: &str,
    spec: T,
    mask: T,
    full: T,
) -> fmt::Result {
    if mask == full {
        write!(w, " {name} is {spec}")
    } else {
        write!(w, " {name} spec {spec} {name} mask {mask}")
    }
}

/// A number in hex, as testpmd reads it.
#[derive(PartialEq, Default)]
struct Hex(u32);

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:x}", self.0)
    }
}

/// A MAC address as testpmd reads it.
#[derive(PartialEq, Default)]
struct Mac([u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

fn write_item(w: &mut impl Write, item: &Item, names: &Names<'_>) -> fmt::Result {
    match item {
        Item::RepresentedPort(p) => {
            write!(w, "represented_port ethdev_port_id is {}", (names.port)(*p))
        }
        Item::Eth(s) => {
            let (v, m) = (s.spec, s.mask);
            w.write_str("eth")?;
            field(w, "dst", Mac(v.dst), Mac(m.dst), Mac([0xFF; 6]))?;
            field(w, "src", Mac(v.src), Mac(m.src), Mac([0xFF; 6]))?;
            field(
                w,
                "type",
                Hex(v.ether_type.into()),
                Hex(m.ether_type.into()),
                Hex(0xFFFF),
            )?;
            field(w, "has_vlan", u8::from(v.has_vlan), u8::from(m.has_vlan), 1)
        }
        Item::Vlan(s) => {
            let (v, m) = (s.spec, s.mask);
            w.write_str("vlan")?;
            field(w, "tci", Hex(v.tci.into()), Hex(m.tci.into()), Hex(0xFFFF))?;
            field(
                w,
                "inner_type",
                Hex(v.inner_type.into()),
                Hex(m.inner_type.into()),
                Hex(0xFFFF),
            )?;
            field(
                w,
                "has_more_vlan",
                u8::from(v.has_more_vlan),
                u8::from(m.has_more_vlan),
                1,
            )
        }
        Item::Ipv4(s) => {
            let (v, m) = (s.spec, s.mask);
            w.write_str("ipv4")?;
            let a = |x: u32| Ipv4Addr::from_bits(x);
            if m.src != 0 {
                addr(w, "src", a(v.src), a(m.src), a(u32::MAX))?;
            }
            if m.dst != 0 {
                addr(w, "dst", a(v.dst), a(m.dst), a(u32::MAX))?;
            }
            field(w, "tos", v.tos, m.tos, 0xFF)?;
            field(w, "proto", v.proto, m.proto, 0xFF)
        }
        Item::Ipv6(s) => {
            let (v, m) = (s.spec, s.mask);
            w.write_str("ipv6")?;
            let a = |x: u128| Ipv6Addr::from_bits(x);
            if m.src != 0 {
                addr(w, "src", a(v.src), a(m.src), a(u128::MAX))?;
            }
            if m.dst != 0 {
                addr(w, "dst", a(v.dst), a(m.dst), a(u128::MAX))?;
            }
            field(w, "tc", v.tc, m.tc, 0xFF)?;
            field(w, "proto", v.proto, m.proto, 0xFF)
        }
        Item::Tcp(s) => {
            let (v, m) = (s.spec, s.mask);
            w.write_str("tcp")?;
            field(w, "src", v.src_port, m.src_port, u16::MAX)?;
            field(w, "dst", v.dst_port, m.dst_port, u16::MAX)?;
            field(
                w,
                "flags",
                Hex(v.flags.into()),
                Hex(m.flags.into()),
                Hex(0xFF),
            )
        }
        Item::Udp(s) => {
            let (v, m) = (s.spec, s.mask);
            w.write_str("udp")?;
            field(w, "src", v.src_port, m.src_port, u16::MAX)?;
            field(w, "dst", v.dst_port, m.dst_port, u16::MAX)
        }
        Item::Icmp(s) => {
            let (v, m) = (s.spec, s.mask);
            w.write_str("icmp")?;
            field(w, "type", v.ty, m.ty, 0xFF)?;
            field(w, "code", v.code, m.code, 0xFF)?;
            field(w, "ident", v.ident, m.ident, u16::MAX)?;
            field(w, "seq", v.seq, m.seq, u16::MAX)
        }
        Item::Icmp6(s) => {
            let (v, m) = (s.spec, s.mask);
            w.write_str("icmp6")?;
            field(w, "type", v.ty, m.ty, 0xFF)?;
            field(w, "code", v.code, m.code, 0xFF)
        }
        Item::Vxlan(s) => {
            // cmdline_flow.c ITEM_VXLAN_VNI: the VNI as a number (the
            // items after it are the inner headers, printed as any).
            w.write_str("vxlan")?;
            field(w, "vni", s.spec.vni, s.mask.vni, VxlanFields::VNI_MASK)
        }
    }
}

fn write_action(w: &mut impl Write, action: &Action, names: &Names<'_>) -> fmt::Result {
    match action {
        Action::RepresentedPort(p) => {
            write!(w, "represented_port ethdev_port_id {}", (names.port)(*p))
        }
        Action::PortRepresentor(p) => write!(w, "port_representor port_id {}", (names.port)(*p)),
        Action::Jump(g) => write!(w, "jump group {g}"),
        Action::Drop => w.write_str("drop"),
        Action::OfPushVlan(tpid) => write!(w, "of_push_vlan ethertype 0x{tpid:04x}"),
        Action::OfSetVlanVid(vid) => write!(w, "of_set_vlan_vid vlan_vid {}", vid.get()),
        Action::OfSetVlanPcp(pcp) => write!(w, "of_set_vlan_pcp vlan_pcp {pcp}"),
        Action::OfPopVlan => w.write_str("of_pop_vlan"),
        Action::SetMacSrc(m) => write!(w, "set_mac_src mac_addr {m}"),
        Action::SetMacDst(m) => write!(w, "set_mac_dst mac_addr {m}"),
        Action::Count => w.write_str("count"),
        Action::SharedCount(c) => write!(w, "indirect {}", c.0),
        Action::Age(a) => write!(w, "age timeout {}", a.timeout_s),
        Action::VxlanEncap(_) => w.write_str("vxlan_encap"),
        Action::VxlanDecap => w.write_str("vxlan_decap"),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::String;

    use chaingate_shared::VlanId;

    use super::*;
    use crate::offload::rule::{
        Age, EthFields, Ipv4Fields, Spec, TcpFields, UdpFields, VlanFields, VxlanFields,
    };

    fn names() -> (
        impl Fn(PortId) -> u16,
        impl Fn(EncapId) -> Option<VxlanTunnel>,
    ) {
        (|p: PortId| p.index() as u16 + 10, |_| None)
    }

    #[test]
    fn a_session_rule_reads_as_testpmd_writes_it() {
        let mut r = Rule::transfer(1, 1);
        r.item(Item::RepresentedPort(PortId::from_index(2)))
            .unwrap()
            .item(Item::Eth(Spec::new(
                EthFields {
                    has_vlan: true,
                    ..EthFields::default()
                },
                EthFields {
                    has_vlan: true,
                    ..EthFields::default()
                },
            )))
            .unwrap()
            .item(Item::Vlan(Spec::new(
                VlanFields {
                    tci: 100,
                    inner_type: 0x0800,
                    has_more_vlan: false,
                },
                VlanFields {
                    tci: 0x0FFF,
                    inner_type: 0xFFFF,
                    has_more_vlan: false,
                },
            )))
            .unwrap()
            .item(Item::Ipv4(Spec::new(
                Ipv4Fields {
                    src: 0x0A00_0001,
                    dst: 0xC000_0250,
                    proto: 6,
                    tos: 0,
                },
                Ipv4Fields {
                    src: u32::MAX,
                    dst: u32::MAX,
                    proto: 0xFF,
                    tos: 0,
                },
            )))
            .unwrap()
            .item(Item::Tcp(Spec::new(
                TcpFields {
                    src_port: 4000,
                    dst_port: 80,
                    flags: 0,
                },
                TcpFields {
                    src_port: 0xFFFF,
                    dst_port: 0xFFFF,
                    flags: 0x07,
                },
            )))
            .unwrap();
        r.action(Action::OfPopVlan)
            .unwrap()
            .action(Action::Age(Age {
                timeout_s: 150,
                context: 9,
            }))
            .unwrap()
            .action(Action::RepresentedPort(PortId::from_index(1)))
            .unwrap();
        let (port, encap) = names();
        let mut out = String::new();
        write_rule(
            &mut out,
            &r,
            &Names {
                port: &port,
                encap: &encap,
            },
        )
        .unwrap();
        assert_eq!(
            out,
            "flow create 0 group 1 priority 1 transfer pattern represented_port ethdev_port_id is 12 / \
             eth has_vlan is 1 / vlan tci spec 0x64 tci mask 0xfff inner_type is 0x800 / \
             ipv4 src is 10.0.0.1 dst is 192.0.2.80 proto is 6 / \
             tcp src is 4000 dst is 80 flags spec 0x0 flags mask 0x7 / end \
             actions of_pop_vlan / age timeout 150 / represented_port ethdev_port_id 11 / end\n"
        );
        let mut push = Rule::transfer(1, 1);
        push.item(Item::RepresentedPort(PortId::from_index(0)))
            .unwrap()
            .action(Action::SharedCount(CounterId(3)))
            .unwrap()
            .action(Action::OfPushVlan(0x8100))
            .unwrap()
            .action(Action::OfSetVlanVid(VlanId::new(7).unwrap()))
            .unwrap()
            .action(Action::RepresentedPort(PortId::from_index(2)))
            .unwrap();
        out.clear();
        write_rule(
            &mut out,
            &push,
            &Names {
                port: &port,
                encap: &encap,
            },
        )
        .unwrap();
        assert!(out.ends_with(
            "actions indirect 3 / of_push_vlan ethertype 0x8100 / of_set_vlan_vid vlan_vid 7 / represented_port ethdev_port_id 12 / end\n"
        ));
    }

    #[test]
    fn a_vxlan_rule_reads_as_testpmd_writes_it() {
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
        let mut r = Rule::transfer(2, 1);
        for item in [
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
        ] {
            r.item(item).unwrap();
        }
        for a in [
            Action::VxlanDecap,
            Action::SharedCount(CounterId(1)),
            Action::OfPushVlan(0x8100),
            Action::OfSetVlanVid(VlanId::new(9).unwrap()),
            Action::RepresentedPort(PortId::from_index(1)),
        ] {
            r.action(a).unwrap();
        }
        let (port, encap) = names();
        let mut out = String::new();
        write_rule(
            &mut out,
            &r,
            &Names {
                port: &port,
                encap: &encap,
            },
        )
        .unwrap();
        assert_eq!(
            out,
            "flow create 0 group 2 priority 1 transfer pattern represented_port ethdev_port_id is 10 / \
             eth / ipv4 src is 192.168.0.1 dst is 192.168.0.2 / udp dst is 4789 / vxlan vni is 100 / \
             eth / ipv4 src is 10.0.0.1 dst is 10.0.0.2 / \
             tcp src is 1000 dst is 80 flags spec 0x0 flags mask 0x7 / end \
             actions vxlan_decap / indirect 1 / of_push_vlan ethertype 0x8100 / of_set_vlan_vid vlan_vid 9 / \
             represented_port ethdev_port_id 11 / end\n"
        );
        let mut partial = Rule::transfer(1, 0);
        partial
            .item(Item::Vxlan(Spec::new(
                VxlanFields { vni: 0x100 },
                VxlanFields { vni: 0xFF00 },
            )))
            .unwrap()
            .action(Action::Drop)
            .unwrap();
        out.clear();
        write_rule(
            &mut out,
            &partial,
            &Names {
                port: &port,
                encap: &encap,
            },
        )
        .unwrap();
        assert!(
            out.contains("pattern vxlan vni spec 256 vni mask 65280 / end"),
            "{out}"
        );
    }
}
