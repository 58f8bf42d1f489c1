//! The rule language: flow rules shaped like DPDK's rte_flow, so that the
//! DPDK backend is a direct translation and the software eSwitch can mean
//! exactly what rte_flow means.
//!
//! A [`Rule`] is attributes, a pattern (items matched from the outermost
//! header in, as on the wire) and a list of actions applied in order.
//!
//! Items (rte_flow_item_*), each a spec and a mask; a field matches when
//! `packet & mask == spec & mask`, so a zero mask is "any":
//! - [`Item::RepresentedPort`]: traffic entering the switch from this port
//!   (`REPRESENTED_PORT`, the ethdev port id of an uplink or a VF
//!   representor).
//! - [`Item::Eth`]: MACs, EtherType/TPID and `has_vlan`. As rte_flow says:
//!   a TPID in the type matches only packets tagged with it; another
//!   EtherType only untagged packets; `has_vlan` any tagged packet; neither
//!   (masked out) both. A pattern that goes on to L3 also needs one `Vlan`
//!   item per tag the packet carries: items follow the headers one by one.
//! - [`Item::Vlan`]: one 802.1Q/802.1ad tag (TCI, the EtherType or TPID that
//!   follows it, `has_more_vlan`). Only tagged packets match.
//! - [`Item::Ipv4`], [`Item::Ipv6`]: addresses, protocol (IPv6: next header
//!   after extension headers), TOS / traffic class.
//! - [`Item::Tcp`], [`Item::Udp`]: ports, and TCP flags.
//! - [`Item::Icmp`]: type, code, echo identifier and sequence.
//! - [`Item::Icmp6`]: type and code (DPDK 22.11 has no ICMPv6 echo
//!   identifier item).
//! - [`Item::Vxlan`]: a VXLAN header (RFC 7348) after the outer UDP
//!   header: its 24-bit VNI. As in rte_flow, the items after it describe
//!   the frame inside the tunnel (inner ETH, IPv4, TCP/UDP), and the items
//!   before it the outer headers; a pattern without it matches a VXLAN
//!   frame on its outer headers only. VXLAN is UDP port 4789 (the port
//!   the eSwitch and the card parse as VXLAN; a UDP item naming another
//!   destination port before it is refused).
//!
//! Actions (rte_flow_action_*), in order:
//! - fates, exactly one per rule: [`Action::RepresentedPort`] (out of the
//!   switch at that port), [`Action::PortRepresentor`] (to software, as if
//!   received on that port's representor: the fast path), [`Action::Jump`]
//!   (evaluate another group), [`Action::Drop`];
//! - [`Action::OfPushVlan`] pushes a new outermost tag with that TPID (its
//!   TCI copied from the tag it covers, or zero: OpenFlow's push_vlan);
//!   [`Action::OfSetVlanVid`] and [`Action::OfSetVlanPcp`] set fields of the
//!   outermost tag; [`Action::OfPopVlan`] removes it;
//! - [`Action::SetMacSrc`], [`Action::SetMacDst`];
//! - [`Action::Count`] counts the rule's own hits; [`Action::SharedCount`]
//!   counts into an indirect counter that several rules share (a rule has
//!   at most one of them: one counter per rule); both count the frame as
//!   it matched, before any action (a decapsulating rule counts the outer
//!   headers' bytes, as mlx5 does: its counter runs first);
//! - [`Action::Age`] reports the rule once no packet matched it for its
//!   timeout (`rte_flow_action_age`, aged flows pulled from the port);
//! - [`Action::VxlanEncap`] / [`Action::VxlanDecap`] add or strip outer
//!   Ethernet/IPv4/UDP/VXLAN headers. The outer headers are defined once
//!   with the backend ([`super::FlowOffload::create_encap`]) and named by
//!   an [`EncapId`], as rte_flow's indirect actions are, so that a rule
//!   stays small. A rule that decapsulates must match the tunnel with an
//!   [`Item::Vxlan`] (rte_flow: "the flow items pattern ... must define a
//!   valid VXLAN tunnel"); the actions after the decap apply to the inner
//!   frame (a push tags the inner frame).
//!
//! Attributes: group (group 0 is evaluated first; `Jump` moves on),
//! priority (lower value wins; rte_flow leaves the order of overlapping
//! rules of equal priority undefined, and so do the users of this language),
//! ingress and transfer (switch-level rules between ports: transfer).

use core::fmt;

use chaingate_shared::{PortId, VlanId};
use heapless::Vec;

use crate::wire::EthernetAddress;

/// Most pattern items in a rule.
pub const MAX_ITEMS: usize = 8;
/// Most actions in a rule.
pub const MAX_ACTIONS: usize = 10;

/// A field's value and which of its bits matter.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Spec<T> {
    /// The value.
    pub spec: T,
    /// The bits that must match.
    pub mask: T,
}

impl<T: Copy> Spec<T> {
    /// A spec with its mask.
    pub const fn new(spec: T, mask: T) -> Self {
        Self { spec, mask }
    }
}

/// Ethernet header fields.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct EthFields {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// EtherType or TPID.
    pub ether_type: u16,
    /// At least one VLAN tag follows.
    pub has_vlan: bool,
}

/// VLAN tag fields.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct VlanFields {
    /// Tag control information.
    pub tci: u16,
    /// EtherType or TPID after the tag.
    pub inner_type: u16,
    /// Another tag follows.
    pub has_more_vlan: bool,
}

/// IPv4 header fields (addresses as host-order integers).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Ipv4Fields {
    /// Source.
    pub src: u32,
    /// Destination.
    pub dst: u32,
    /// Protocol.
    pub proto: u8,
    /// Type of service (DSCP and ECN).
    pub tos: u8,
}

/// IPv6 header fields.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Ipv6Fields {
    /// Source.
    pub src: u128,
    /// Destination.
    pub dst: u128,
    /// Upper-layer protocol (after extension headers).
    pub proto: u8,
    /// Traffic class.
    pub tc: u8,
}

/// TCP header fields.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct TcpFields {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Control bits.
    pub flags: u8,
}

/// UDP header fields.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct UdpFields {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

/// ICMP (v4) header fields.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct IcmpFields {
    /// Type.
    pub ty: u8,
    /// Code.
    pub code: u8,
    /// Echo identifier.
    pub ident: u16,
    /// Echo sequence number.
    pub seq: u16,
}

/// ICMPv6 header fields.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Icmp6Fields {
    /// Type.
    pub ty: u8,
    /// Code.
    pub code: u8,
}

/// VXLAN header fields (`rte_flow_item_vxlan`'s VNI; its flags and
/// reserved bits are not matched: mlx5 needs none of them, and
/// dpdk-testpmd 22.11 cannot spell the flags).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct VxlanFields {
    /// VXLAN network identifier (24 bits; a value or mask above is
    /// refused).
    pub vni: u32,
}

impl VxlanFields {
    /// The mask of the whole VNI.
    pub const VNI_MASK: u32 = 0x00FF_FFFF;

    /// The spec of exactly `vni` (whole mask).
    #[must_use]
    pub const fn exactly(vni: u32) -> Spec<Self> {
        Spec {
            spec: Self { vni },
            mask: Self {
                vni: Self::VNI_MASK,
            },
        }
    }
}

/// A pattern item.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Item {
    /// Entered the switch at this port.
    RepresentedPort(PortId),
    /// Ethernet.
    Eth(Spec<EthFields>),
    /// One VLAN tag.
    Vlan(Spec<VlanFields>),
    /// IPv4.
    Ipv4(Spec<Ipv4Fields>),
    /// IPv6.
    Ipv6(Spec<Ipv6Fields>),
    /// TCP.
    Tcp(Spec<TcpFields>),
    /// UDP.
    Udp(Spec<UdpFields>),
    /// ICMP.
    Icmp(Spec<IcmpFields>),
    /// ICMPv6.
    Icmp6(Spec<Icmp6Fields>),
    /// VXLAN: the items after it are the inner frame's.
    Vxlan(Spec<VxlanFields>),
}

impl Item {
    /// The item with its values taken out and its mask kept: what a
    /// pattern template fixes (the port of [`Item::RepresentedPort`] is
    /// a value; its mask is always the whole id).
    #[must_use]
    pub fn blank(&self) -> Self {
        fn mask_only<T: Copy + Default>(s: &Spec<T>) -> Spec<T> {
            Spec::new(T::default(), s.mask)
        }
        match self {
            Self::RepresentedPort(_) => Self::RepresentedPort(PortId::from_index(0)),
            Self::Eth(s) => Self::Eth(mask_only(s)),
            Self::Vlan(s) => Self::Vlan(mask_only(s)),
            Self::Ipv4(s) => Self::Ipv4(mask_only(s)),
            Self::Ipv6(s) => Self::Ipv6(mask_only(s)),
            Self::Tcp(s) => Self::Tcp(mask_only(s)),
            Self::Udp(s) => Self::Udp(mask_only(s)),
            Self::Icmp(s) => Self::Icmp(mask_only(s)),
            Self::Icmp6(s) => Self::Icmp6(mask_only(s)),
            Self::Vxlan(s) => Self::Vxlan(mask_only(s)),
        }
    }

    /// True when `other` is of the same type with the same mask (what a
    /// pattern template fixes), values aside.
    #[must_use]
    pub fn same_shape(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::RepresentedPort(_), Self::RepresentedPort(_)) => true,
            (Self::Eth(a), Self::Eth(b)) => a.mask == b.mask,
            (Self::Vlan(a), Self::Vlan(b)) => a.mask == b.mask,
            (Self::Ipv4(a), Self::Ipv4(b)) => a.mask == b.mask,
            (Self::Ipv6(a), Self::Ipv6(b)) => a.mask == b.mask,
            (Self::Tcp(a), Self::Tcp(b)) => a.mask == b.mask,
            (Self::Udp(a), Self::Udp(b)) => a.mask == b.mask,
            (Self::Icmp(a), Self::Icmp(b)) => a.mask == b.mask,
            (Self::Icmp6(a), Self::Icmp6(b)) => a.mask == b.mask,
            (Self::Vxlan(a), Self::Vxlan(b)) => a.mask == b.mask,
            _ => false,
        }
    }

    /// True when the spec sets no bit its mask leaves out.
    #[must_use]
    pub fn spec_within_mask(&self) -> bool {
        match self {
            Self::RepresentedPort(_) => true,
            Self::Eth(s) => {
                let (v, m) = (&s.spec, &s.mask);
                within_bytes(&v.dst, &m.dst)
                    && within_bytes(&v.src, &m.src)
                    && v.ether_type & !m.ether_type == 0
                    && (!v.has_vlan || m.has_vlan)
            }
            Self::Vlan(s) => {
                let (v, m) = (&s.spec, &s.mask);
                v.tci & !m.tci == 0
                    && v.inner_type & !m.inner_type == 0
                    && (!v.has_more_vlan || m.has_more_vlan)
            }
            Self::Ipv4(s) => {
                let (v, m) = (&s.spec, &s.mask);
                v.src & !m.src == 0
                    && v.dst & !m.dst == 0
                    && v.proto & !m.proto == 0
                    && v.tos & !m.tos == 0
            }
            Self::Ipv6(s) => {
                let (v, m) = (&s.spec, &s.mask);
                v.src & !m.src == 0
                    && v.dst & !m.dst == 0
                    && v.proto & !m.proto == 0
                    && v.tc & !m.tc == 0
            }
            Self::Tcp(s) => {
                let (v, m) = (&s.spec, &s.mask);
                v.src_port & !m.src_port == 0
                    && v.dst_port & !m.dst_port == 0
                    && v.flags & !m.flags == 0
            }
            Self::Udp(s) => {
                let (v, m) = (&s.spec, &s.mask);
                v.src_port & !m.src_port == 0 && v.dst_port & !m.dst_port == 0
            }
            Self::Icmp(s) => {
                let (v, m) = (&s.spec, &s.mask);
                v.ty & !m.ty == 0
                    && v.code & !m.code == 0
                    && v.ident & !m.ident == 0
                    && v.seq & !m.seq == 0
            }
            Self::Icmp6(s) => {
                let (v, m) = (&s.spec, &s.mask);
                v.ty & !m.ty == 0 && v.code & !m.code == 0
            }
            Self::Vxlan(s) => s.spec.vni & !s.mask.vni == 0,
        }
    }
}

fn within_bytes(v: &[u8; 6], m: &[u8; 6]) -> bool {
    v.iter().zip(m).all(|(v, m)| v & !m == 0)
}

/// A shared (indirect) counter.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct CounterId(pub u32);

/// An AGE action's settings: the rule is reported aged once no packet
/// matched it for `timeout_s` seconds (24 bits, as in rte_flow), with
/// `context` to say which rule it was.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Age {
    /// Seconds without a hit before the rule is reported.
    pub timeout_s: u32,
    /// Given back with the report.
    pub context: u64,
}

impl Age {
    /// The largest timeout rte_flow can carry (24 bits).
    pub const MAX_TIMEOUT_S: u32 = (1 << 24) - 1;
}

/// A VXLAN encapsulation defined with a backend.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct EncapId(pub u32);

/// The outer headers a VXLAN encapsulation adds.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct VxlanTunnel {
    /// Outer destination MAC.
    pub dst_mac: EthernetAddress,
    /// Outer source MAC.
    pub src_mac: EthernetAddress,
    /// Outer IPv4 source.
    pub src: u32,
    /// Outer IPv4 destination.
    pub dst: u32,
    /// Outer UDP source port.
    pub src_port: u16,
    /// VXLAN network identifier.
    pub vni: u32,
    /// Outer TTL.
    pub ttl: u8,
}

/// An action.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Action {
    /// Out of the switch at this port.
    RepresentedPort(PortId),
    /// To software, as received on this port's representor.
    PortRepresentor(PortId),
    /// Evaluate this group next.
    Jump(u32),
    /// Drop.
    Drop,
    /// Push a new outermost tag with this TPID.
    OfPushVlan(u16),
    /// Set the outermost tag's identifier.
    OfSetVlanVid(VlanId),
    /// Set the outermost tag's priority.
    OfSetVlanPcp(u8),
    /// Remove the outermost tag.
    OfPopVlan,
    /// Set the source MAC.
    SetMacSrc(EthernetAddress),
    /// Set the destination MAC.
    SetMacDst(EthernetAddress),
    /// Count this rule's hits.
    Count,
    /// Count into a shared counter.
    SharedCount(CounterId),
    /// Report the rule when idle.
    Age(Age),
    /// Add outer VXLAN headers.
    VxlanEncap(EncapId),
    /// Strip outer VXLAN headers.
    VxlanDecap,
}

/// An action's type, without its configuration: what an actions
/// template fixes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ActionKind {
    /// [`Action::RepresentedPort`].
    RepresentedPort,
    /// [`Action::PortRepresentor`].
    PortRepresentor,
    /// [`Action::Jump`].
    Jump,
    /// [`Action::Drop`].
    Drop,
    /// [`Action::OfPushVlan`].
    OfPushVlan,
    /// [`Action::OfSetVlanVid`].
    OfSetVlanVid,
    /// [`Action::OfSetVlanPcp`].
    OfSetVlanPcp,
    /// [`Action::OfPopVlan`].
    OfPopVlan,
    /// [`Action::SetMacSrc`].
    SetMacSrc,
    /// [`Action::SetMacDst`].
    SetMacDst,
    /// [`Action::Count`].
    Count,
    /// [`Action::SharedCount`].
    SharedCount,
    /// [`Action::Age`].
    Age,
    /// [`Action::VxlanEncap`].
    VxlanEncap,
    /// [`Action::VxlanDecap`].
    VxlanDecap,
}

impl Action {
    /// The action's type.
    #[must_use]
    pub const fn kind(&self) -> ActionKind {
        match self {
            Self::RepresentedPort(_) => ActionKind::RepresentedPort,
            Self::PortRepresentor(_) => ActionKind::PortRepresentor,
            Self::Jump(_) => ActionKind::Jump,
            Self::Drop => ActionKind::Drop,
            Self::OfPushVlan(_) => ActionKind::OfPushVlan,
            Self::OfSetVlanVid(_) => ActionKind::OfSetVlanVid,
            Self::OfSetVlanPcp(_) => ActionKind::OfSetVlanPcp,
            Self::OfPopVlan => ActionKind::OfPopVlan,
            Self::SetMacSrc(_) => ActionKind::SetMacSrc,
            Self::SetMacDst(_) => ActionKind::SetMacDst,
            Self::Count => ActionKind::Count,
            Self::SharedCount(_) => ActionKind::SharedCount,
            Self::Age(_) => ActionKind::Age,
            Self::VxlanEncap(_) => ActionKind::VxlanEncap,
            Self::VxlanDecap => ActionKind::VxlanDecap,
        }
    }

    /// True for the actions that decide where the packet goes.
    #[must_use]
    pub const fn is_fate(&self) -> bool {
        matches!(
            self,
            Self::RepresentedPort(_) | Self::PortRepresentor(_) | Self::Jump(_) | Self::Drop
        )
    }
}

/// Rule attributes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Attr {
    /// Group (0 is evaluated first).
    pub group: u32,
    /// Priority within the group; lower wins.
    pub priority: u32,
    /// Applies to traffic received by the port.
    pub ingress: bool,
    /// Applies at switch level, between ports.
    pub transfer: bool,
}

/// A flow rule.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Rule {
    /// Attributes.
    pub attr: Attr,
    /// Pattern, outermost first.
    pub pattern: Vec<Item, MAX_ITEMS>,
    /// Actions, in order.
    pub actions: Vec<Action, MAX_ACTIONS>,
}

impl Rule {
    /// A transfer rule in `group` at `priority`, with nothing yet.
    #[must_use]
    pub const fn transfer(group: u32, priority: u32) -> Self {
        Self {
            attr: Attr {
                group,
                priority,
                ingress: false,
                transfer: true,
            },
            pattern: Vec::new(),
            actions: Vec::new(),
        }
    }

    /// Appends an item.
    ///
    /// # Errors
    /// [`RuleFull`] beyond [`MAX_ITEMS`].
    pub fn item(&mut self, item: Item) -> Result<&mut Self, RuleFull> {
        self.pattern.push(item).map_err(|_| RuleFull)?;
        Ok(self)
    }

    /// Appends an action.
    ///
    /// # Errors
    /// [`RuleFull`] beyond [`MAX_ACTIONS`].
    pub fn action(&mut self, action: Action) -> Result<&mut Self, RuleFull> {
        self.actions.push(action).map_err(|_| RuleFull)?;
        Ok(self)
    }

    /// The rule's fate, if it has exactly one.
    #[must_use]
    pub fn fate(&self) -> Option<Action> {
        let mut fates = self.actions.iter().filter(|a| a.is_fate());
        match (fates.next(), fates.next()) {
            (Some(f), None) => Some(*f),
            _ => None,
        }
    }
}

/// A rule has no room for another item or action.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RuleFull;

impl fmt::Display for RuleFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a rule holds at most {MAX_ITEMS} items and {MAX_ACTIONS} actions"
        )
    }
}

impl core::error::Error for RuleFull {}
