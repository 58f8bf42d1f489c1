//! From a session to its flow rules (DESIGN.md section 5).
//!
//! The switch's base rules: in group 0, one rule per port that only jumps
//! to the session group. Nothing else: a packet no session rule takes
//! misses, and a miss goes to software as received on its port (on mlx5,
//! to the eSwitch manager and on to the port's representor; hardware
//! steering in DPDK 22.11 has no PORT_REPRESENTOR action).
//!
//! A session's rules, in the session group, one exact-match rule per hop
//! per direction of travel: ingress port, the outer (segment) tag when the
//! packet comes back from an instance, the customer tags, and the
//! direction's addresses, protocol and ports (ICMP: the echo identifier);
//! TCP rules also require SYN, FIN and RST clear, so the segments that
//! open or end a connection go to the fast path.
//!
//! One counter per rule at most (mlx5 refuses two): a rule that hands the
//! packet to an instance counts into that instance's shared counter (its
//! load); the others (the way out of the chain, bypass, drop) carry an AGE
//! instead, so the NIC reports a session that went idle. Then, in the
//! order the eSwitch applies them: pop the segment tag (leaving the
//! chain), the counter or AGE, push and set (entering) or set (hop to hop)
//! the segment tag, and the next port. A bypass session gets one rule per
//! direction between the uplinks, a drop session one drop rule per
//! direction.
//!
//! A continuation session (a flow a NAT rewrote) only gets the rules of the
//! part of the chain it travels: onwards from the rewriting instance, and
//! back up to it.
//!
//! A hop whose instance is behind another DPU (a peer) is a VXLAN
//! encapsulation (see `chaingate_shared::underlay`): the rule into it pops
//! the segment tag if there is one, counts into the instance's counter
//! and encapsulates towards the peer; the rule that takes the packet back
//! matches the outer headers (the peer's address, VXLAN, the VNI of the
//! return) and the inner 5-tuple, decapsulates and goes on. The outer UDP
//! source port of a hardware encapsulation is one per (peer, VNI), not per
//! flow as in software: the encapsulation is defined once and shared.
//! mlx5 takes one reformat per rule, so a packet going from one remote
//! instance straight to another (decap and encap) stays in software there.
//!
//! The DPU that delivers to a local instance for a peer has stateless
//! rules ([`guest_rules`]): per (peer, segment, instance), decapsulate
//! and tag with the guest tag towards the instance, and back: pop the
//! guest tag and encapsulate towards the peer.
//!
//! Patterns are written so that they mean the same under rte_flow's
//! documented semantics and mlx5's (the software eSwitch's two profiles):
//! `has_vlan` on the ETH item rather than a TPID in its type, the L3
//! EtherType in the last VLAN item's `inner_type`.

use alloc::vec::Vec;
use core::fmt;
use core::net::IpAddr;

use chaingate_shared::config::{Attachment, Config, MAX_HOPS, Segment, Travel, Uplink};
use chaingate_shared::underlay::{Leg, VXLAN_PORT, Vni};
use chaingate_shared::{ChainId, FlowKey, InstanceId, IpProtocol, PeerId, PortId, VlanId};

use super::CounterId;
use super::rule::{
    Action, ActionKind, Age, EncapId, EthFields, Icmp6Fields, IcmpFields, Ipv4Fields, Ipv6Fields,
    Item, Rule, RuleFull, Spec, TcpFields, UdpFields, VlanFields, VxlanFields, VxlanTunnel,
};
use crate::datapath::Encap;
use crate::session::{Session, SessionAction};
use crate::wire::EtherType;
use crate::wire::tcp::TcpFlags;

/// The groups session rules live in: a new configuration's rules go to the
/// other one, and one swap of the base jumps puts them in force.
pub const SESSION_GROUPS: [u32; 2] = [1, 2];
/// Priority of session rules.
pub const SESSION_PRIORITY: u32 = 1;
/// TCP flags a session rule requires clear (SYN, FIN, RST): the segments
/// that open and end a connection miss and reach the fast path, which
/// follows the connection's state; rules carry only what lies between.
pub const CONTROL_FLAGS: u8 = TcpFlags::SYN.union(TcpFlags::FIN).union(TcpFlags::RST).0;

/// The actions templates of rules that take packets from an uplink:
/// into a chain's first instance, straight across (bypass, or a chain
/// with no instance), drop.
pub const FROM_UPLINK: [&[ActionKind]; 3] = [
    &[
        ActionKind::SharedCount,
        ActionKind::OfPushVlan,
        ActionKind::OfSetVlanVid,
        ActionKind::RepresentedPort,
    ],
    &[ActionKind::Age, ActionKind::RepresentedPort],
    &[ActionKind::Age, ActionKind::Drop],
];

/// The actions templates of rules that take packets coming back from an
/// instance: on to the next instance, out of the chain.
pub const FROM_INSTANCE: [&[ActionKind]; 2] = [
    &[
        ActionKind::SharedCount,
        ActionKind::OfSetVlanVid,
        ActionKind::RepresentedPort,
    ],
    &[
        ActionKind::OfPopVlan,
        ActionKind::Age,
        ActionKind::RepresentedPort,
    ],
];

/// The actions templates of rules that send packets to a peer: into a
/// remote instance from an uplink, from a local instance, and a local
/// instance's answer to a peer (a guest tag).
pub const TO_PEER: [&[ActionKind]; 3] = [
    &[
        ActionKind::SharedCount,
        ActionKind::VxlanEncap,
        ActionKind::RepresentedPort,
    ],
    &[
        ActionKind::OfPopVlan,
        ActionKind::SharedCount,
        ActionKind::VxlanEncap,
        ActionKind::RepresentedPort,
    ],
    &[
        ActionKind::OfPopVlan,
        ActionKind::VxlanEncap,
        ActionKind::RepresentedPort,
    ],
];

/// The actions templates of rules that take packets from a peer: into a
/// local instance, out of the chain.
pub const FROM_PEER: [&[ActionKind]; 2] = [
    &[
        ActionKind::VxlanDecap,
        ActionKind::SharedCount,
        ActionKind::OfPushVlan,
        ActionKind::OfSetVlanVid,
        ActionKind::RepresentedPort,
    ],
    &[
        ActionKind::VxlanDecap,
        ActionKind::Age,
        ActionKind::RepresentedPort,
    ],
];

/// The actions template of a rule that takes packets from one peer's
/// instance on to another remote instance: a table of its own, since
/// mlx5 refuses it (one reformat per rule) and with it its whole table.
pub const PEER_TO_PEER: [&[ActionKind]; 1] = [&[
    ActionKind::VxlanDecap,
    ActionKind::SharedCount,
    ActionKind::VxlanEncap,
    ActionKind::RepresentedPort,
]];

/// The actions template of the base jumps.
pub const JUMP: [&[ActionKind]; 1] = [&[ActionKind::Jump]];

/// The actions templates a table for `rule` needs, by where its packets
/// come from (a rule carrying the segment tag in its match comes back
/// from an instance).
#[must_use]
pub fn templates_for(rule: &Rule) -> &'static [&'static [ActionKind]] {
    if rule.actions.iter().any(|a| matches!(a, Action::Jump(_))) {
        &JUMP
    } else if rule.actions.iter().any(|a| matches!(a, Action::VxlanDecap)) {
        if rule
            .actions
            .iter()
            .any(|a| matches!(a, Action::VxlanEncap(_)))
        {
            &PEER_TO_PEER
        } else {
            &FROM_PEER
        }
    } else if rule
        .actions
        .iter()
        .any(|a| matches!(a, Action::VxlanEncap(_)))
    {
        &TO_PEER
    } else if rule
        .actions
        .iter()
        .any(|a| matches!(a, Action::OfPopVlan) || matches!(a, Action::OfSetVlanVid(_)))
        && !rule
            .actions
            .iter()
            .any(|a| matches!(a, Action::OfPushVlan(_)))
    {
        &FROM_INSTANCE
    } else {
        &FROM_UPLINK
    }
}

/// The reason given for a session through an instance that has no
/// shared counter.
pub const NO_COUNTER: &str = "an instance without its shared counter";

/// Why a session gets no rules.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GenerateError {
    /// The rule language cannot express the session's match (ICMPv6 echo:
    /// DPDK 22.11 has no item for its identifier).
    Unsupported(&'static str),
    /// The configuration does not have what the session refers to (it is
    /// being replaced).
    Stale,
    /// A rule would need more items or actions than a rule holds.
    TooLong,
}

impl fmt::Display for GenerateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported(what) => write!(f, "cannot offload: {what}"),
            Self::Stale => f.write_str("the session refers to another configuration"),
            Self::TooLong => f.write_str("the rule needs more items or actions than fit"),
        }
    }
}

impl core::error::Error for GenerateError {}

impl From<RuleFull> for GenerateError {
    fn from(_: RuleFull) -> Self {
        Self::TooLong
    }
}

/// The base rules of every port: jump to `group`, at `priority` in
/// group 0.
///
/// # Errors
/// None in practice (one item and one action per rule).
pub fn base_rules(config: &Config, group: u32, priority: u32) -> Result<Vec<Rule>, GenerateError> {
    let mut rules = Vec::new();
    for n in 0..config.ports().len() {
        let port = PortId::from_index(u16::try_from(n).map_err(|_| GenerateError::Stale)?);
        let mut jump = Rule::transfer(0, priority);
        jump.item(Item::RepresentedPort(port))?
            .action(Action::Jump(group))?;
        rules.push(jump);
    }
    Ok(rules)
}

/// One step of a packet's walk: where it comes from, and where it goes.
#[derive(Clone, Copy)]
struct Step {
    /// Ingress port, and the segment tag it carries there (from an
    /// instance).
    from: (PortId, Option<VlanId>),
    /// Over the underlay from this peer, with this VNI (a remote
    /// instance's return).
    from_peer: Option<(PeerId, Vni)>,
    /// Egress port, the instance it delivers to, and the tag it must carry
    /// (`None`: leaves the chain).
    to: (PortId, Option<(InstanceId, VlanId)>),
    /// Over the underlay to this peer, with this VNI (a remote instance).
    to_peer: Option<(PeerId, Vni)>,
}

/// What a rule needs of the backend besides the rule: an instance's shared
/// counter, an encapsulation's handle. A closure gives counters only.
pub trait Handles {
    /// The instance's shared counter.
    fn counter(&self, instance: InstanceId) -> Option<CounterId>;
    /// The handle of an encapsulation defined with the backend.
    fn encap(&self, _tunnel: &VxlanTunnel) -> Option<EncapId> {
        None
    }
}

impl<F: Fn(InstanceId) -> Option<CounterId>> Handles for F {
    fn counter(&self, instance: InstanceId) -> Option<CounterId> {
        self(instance)
    }
}

/// The reason given for a customer-tagged session through a remote hop.
pub const INNER_TAGS: &str = "customer VLAN tags inside the underlay";

/// The reason given for an encapsulation the backend has no handle for.
pub const NO_ENCAP: &str = "an encapsulation not defined with the backend";

/// The outer headers of a hardware encapsulation towards `peer` with
/// `vni`: one per (peer, VNI), its UDP source port from the VNI.
#[must_use]
pub fn tunnel_to(config: &Config, peer: PeerId, vni: Vni) -> Option<VxlanTunnel> {
    let v = vni.encode();
    #[allow(clippy::cast_possible_truncation)] // 14 bits
    let src_port = 0xC000 | (v ^ (v >> 14)) as u16 & 0x3FFF;
    Encap {
        peer,
        vni,
        src_port,
    }
    .tunnel(config)
}

/// Appends the rules of `session` to `out`, in session group `group`.
/// `counter` gives an instance's shared counter; `age` is the AGE the
/// rules that hand no packet to an instance carry.
///
/// # Errors
/// [`GenerateError`] when the session cannot be expressed in rules.
pub fn session_rules(
    config: &Config,
    session: &Session,
    group: u32,
    handles: impl Handles,
    age: Age,
    out: &mut Vec<Rule>,
) -> Result<(), GenerateError> {
    let key = session.key();
    if key.proto() == IpProtocol::Icmpv6 && key.src_port() != 0 {
        return Err(GenerateError::Unsupported("ICMPv6 echo identifier"));
    }
    let opener = session.origin().travel();
    let shared = |i: InstanceId| {
        handles
            .counter(i)
            .map(Action::SharedCount)
            .ok_or(GenerateError::Unsupported(NO_COUNTER))
    };
    let encap = |peer: PeerId, vni: Vni| {
        tunnel_to(config, peer, vni)
            .and_then(|t| handles.encap(&t))
            .map(Action::VxlanEncap)
            .ok_or(GenerateError::Unsupported(NO_ENCAP))
    };
    for travel in [opener, opener.reverse()] {
        // The packet's own key in this direction: the session stores the
        // normalised key; lan-to-wan packets of a session opened at lan go
        // as they came.
        let dir_key = directional_key(session, travel);
        let entry = config.uplink_port(match travel {
            Travel::ToWan => Uplink::Lan,
            Travel::ToLan => Uplink::Wan,
        });
        let exit = config.uplink_port(travel.exit());
        match session.action() {
            SessionAction::Bypass => {
                let r = matching(out, group, &dir_key, (entry, None), None, config)?;
                r.action(Action::Age(age))?
                    .action(Action::RepresentedPort(exit))?;
            }
            SessionAction::Drop(_) => {
                let r = matching(out, group, &dir_key, (entry, None), None, config)?;
                r.action(Action::Age(age))?.action(Action::Drop)?;
            }
            SessionAction::Chain(chain) => {
                for step in walk(config, session, chain, travel, entry, exit)? {
                    let r = matching(out, group, &dir_key, step.from, step.from_peer, config)?;
                    if step.from_peer.is_some() {
                        r.action(Action::VxlanDecap)?;
                    }
                    let tagged = step.from.1.is_some();
                    match (step.to.1, step.to_peer) {
                        (Some((instance, _)), Some((peer, vni))) => {
                            if tagged {
                                r.action(Action::OfPopVlan)?;
                            }
                            r.action(shared(instance)?)?.action(encap(peer, vni)?)?;
                        }
                        (Some((instance, tag)), None) if tagged => {
                            r.action(shared(instance)?)?
                                .action(Action::OfSetVlanVid(tag))?;
                        }
                        (Some((instance, tag)), None) => {
                            r.action(shared(instance)?)?
                                .action(Action::OfPushVlan(EtherType::Vlan.number()))?
                                .action(Action::OfSetVlanVid(tag))?;
                        }
                        (None, _) => {
                            if tagged {
                                r.action(Action::OfPopVlan)?;
                            }
                            r.action(Action::Age(age))?;
                        }
                    }
                    r.action(Action::RepresentedPort(step.to.0))?;
                }
            }
        }
    }
    Ok(())
}

/// The key of the session's packets travelling `travel`.
fn directional_key(session: &Session, travel: Travel) -> FlowKey {
    let key = *session.key();
    // Packets from the opener travel away from the origin uplink.
    let opener_travel = session.origin().travel();
    let opener_key = if session.from_opener(chaingate_shared::FlowDirection::Forward) {
        key
    } else {
        key.reversed()
    };
    if travel == opener_travel {
        opener_key
    } else {
        opener_key.reversed()
    }
}

/// The steps of one direction: a hop each, and the way out.
type Steps = heapless::Vec<Step, { MAX_HOPS + 1 }>;

/// The steps of the session's packets travelling `travel` through `chain`.
fn walk(
    config: &Config,
    session: &Session,
    chain: ChainId,
    travel: Travel,
    entry: PortId,
    exit: PortId,
) -> Result<Steps, GenerateError> {
    let hops = config.chain(chain).ok_or(GenerateError::Stale)?.len();
    let order = (0..hops).map(|n| match travel {
        Travel::ToWan => n,
        Travel::ToLan => hops - 1 - n,
    });
    let mut stops: heapless::Vec<(usize, InstanceId), MAX_HOPS> = order
        .filter_map(|h| session.hop(h).map(|i| (h, i)))
        .collect();
    // A continuation covers only its part of the chain.
    let (cont_start, cont_end) = match session.continuation() {
        Some((hop, t)) if t == travel => (Some(usize::from(hop)), None),
        Some((hop, _)) => (None, Some(usize::from(hop))),
        None => (None, None),
    };
    if let Some(start) = cont_start {
        let at = stops
            .iter()
            .position(|(h, _)| *h == start)
            .ok_or(GenerateError::Stale)?;
        stops = stops.iter().skip(at).copied().collect();
    }
    let tag = |hop: usize| {
        config
            .segment_tag(Segment {
                chain,
                hop: u8::try_from(hop).unwrap_or(u8::MAX),
                travel,
            })
            .ok_or(GenerateError::Stale)
    };
    let port_of = |i: InstanceId, entering: bool| {
        config
            .instance(i)
            .map(|inst| {
                let a = inst.attachment();
                if entering {
                    a.entry(travel)
                } else {
                    a.exit(travel)
                }
            })
            .ok_or(GenerateError::Stale)
    };
    let mut steps = Steps::new();
    let push = |steps: &mut Steps, step| steps.push(step).map_err(|_| GenerateError::TooLong);
    let remote = |i: InstanceId| match config.instance(i).map(|inst| inst.attachment()) {
        Some(Attachment::Remote { peer, slot, .. }) => Some((peer, slot)),
        _ => None,
    };
    let mut from: (PortId, Option<VlanId>) = (entry, None);
    let mut from_peer = None;
    for (n, &(hop, instance)) in stops.iter().enumerate() {
        let t = tag(hop)?;
        let at = remote(instance);
        let vni = |leg| {
            at.map(|(peer, slot)| {
                (
                    peer,
                    Vni {
                        segment: t,
                        leg,
                        slot,
                    },
                )
            })
        };
        // A continuation's own direction starts as the packet comes back
        // from its first instance: no step into it.
        if !(cont_start.is_some() && n == 0) {
            push(
                &mut steps,
                Step {
                    from,
                    from_peer,
                    to: (port_of(instance, true)?, Some((instance, t))),
                    to_peer: vni(Leg::Deliver),
                },
            )?;
        }
        if cont_end == Some(hop) {
            // The way back ends at the rewriting instance: from there the
            // original session's rules take the restored packet.
            return Ok(steps);
        }
        // Back from a remote instance the packet carries no tag: the VNI
        // says where it is.
        from = (port_of(instance, false)?, Some(t).filter(|_| at.is_none()));
        from_peer = vni(Leg::Return);
    }
    push(
        &mut steps,
        Step {
            from,
            from_peer,
            to: (exit, None),
            to_peer: None,
        },
    )?;
    Ok(steps)
}

/// Appends a rule in `group` matching a packet with `key` arriving at
/// `from` (with the segment tag outermost, if given), built in place.
fn matching<'a>(
    out: &'a mut Vec<Rule>,
    group: u32,
    key: &FlowKey,
    from: (PortId, Option<VlanId>),
    from_peer: Option<(PeerId, Vni)>,
    config: &Config,
) -> Result<&'a mut Rule, GenerateError> {
    out.push(Rule::transfer(group, SESSION_PRIORITY));
    let r = out.last_mut().ok_or(GenerateError::TooLong)?;
    r.item(Item::RepresentedPort(from.0))?;
    if let Some((peer, vni)) = from_peer {
        underlay_items(r, config, peer, vni)?;
    }
    let l3_type = if key.is_ipv6() {
        EtherType::Ipv6
    } else {
        EtherType::Ipv4
    }
    .number();
    // The tags, outermost first: the segment tag (ours, 802.1Q), then the
    // customer's (802.1Q or 802.1ad: the key keeps the VID only).
    let mut tags: heapless::Vec<VlanId, 3> = heapless::Vec::new();
    if let Some(seg) = from.1 {
        tags.push(seg).map_err(|_| GenerateError::TooLong)?;
    }
    for vid in key.vlans().as_slice() {
        tags.push(*vid).map_err(|_| GenerateError::TooLong)?;
    }
    let tagged = !tags.is_empty();
    if from_peer.is_some() && tagged {
        // Inner VLAN items are not matched (mlx5 22.11, see
        // docs/offload.md): such sessions stay in software.
        return Err(GenerateError::Unsupported(INNER_TAGS));
    }
    // The inner ETH item says nothing: inner `has_vlan` is not matched
    // either, so an inner frame is told by its 5-tuple and VNI alone.
    let vlan_mask = from_peer.is_none();
    r.item(Item::Eth(Spec::new(
        EthFields {
            has_vlan: tagged,
            ..EthFields::default()
        },
        EthFields {
            has_vlan: vlan_mask,
            ..EthFields::default()
        },
    )))?;
    for (i, vid) in tags.iter().enumerate() {
        let last = i + 1 == tags.len();
        let spec = VlanFields {
            tci: vid.get(),
            inner_type: if last { l3_type } else { 0 },
            has_more_vlan: !last,
        };
        let mask = VlanFields {
            tci: VlanId::MAX,
            inner_type: if last { 0xFFFF } else { 0 },
            has_more_vlan: !last,
        };
        r.item(Item::Vlan(Spec::new(spec, mask)))?;
    }
    let proto = key.proto().number();
    match (key.src(), key.dst()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => r.item(Item::Ipv4(Spec::new(
            Ipv4Fields {
                src: s.to_bits(),
                dst: d.to_bits(),
                proto,
                tos: 0,
            },
            Ipv4Fields {
                src: u32::MAX,
                dst: u32::MAX,
                proto: 0xFF,
                tos: 0,
            },
        )))?,
        (s, d) => r.item(Item::Ipv6(Spec::new(
            Ipv6Fields {
                src: v6(s),
                dst: v6(d),
                proto,
                tc: 0,
            },
            Ipv6Fields {
                src: u128::MAX,
                dst: u128::MAX,
                proto: 0xFF,
                tc: 0,
            },
        )))?,
    };
    let ports = |s, d| (s, d);
    let (sport, dport) = ports(key.src_port(), key.dst_port());
    match key.proto() {
        IpProtocol::Tcp => r.item(Item::Tcp(Spec::new(
            TcpFields {
                src_port: sport,
                dst_port: dport,
                flags: 0,
            },
            TcpFields {
                src_port: 0xFFFF,
                dst_port: 0xFFFF,
                flags: CONTROL_FLAGS,
            },
        )))?,
        IpProtocol::Udp => r.item(Item::Udp(Spec::new(
            UdpFields {
                src_port: sport,
                dst_port: dport,
            },
            UdpFields {
                src_port: 0xFFFF,
                dst_port: 0xFFFF,
            },
        )))?,
        IpProtocol::Icmp if sport != 0 => r.item(Item::Icmp(Spec::new(
            IcmpFields {
                ident: sport,
                ..IcmpFields::default()
            },
            IcmpFields {
                ident: 0xFFFF,
                ..IcmpFields::default()
            },
        )))?,
        IpProtocol::Icmpv6 => r.item(Item::Icmp6(Spec::new(
            Icmp6Fields::default(),
            Icmp6Fields::default(),
        )))?,
        _ => r,
    };
    Ok(r)
}

/// The outer items of a frame from `peer` with `vni`: untagged Ethernet,
/// IPv4 from the peer to this DPU, UDP to the VXLAN port, the VNI.
fn underlay_items(
    r: &mut Rule,
    config: &Config,
    peer: PeerId,
    vni: Vni,
) -> Result<(), GenerateError> {
    let (Some(own), Some(p)) = (config.underlay(), config.peer(peer)) else {
        return Err(GenerateError::Stale);
    };
    r.item(Item::Eth(Spec::new(
        EthFields::default(),
        EthFields {
            has_vlan: true,
            ..EthFields::default()
        },
    )))?
    .item(Item::Ipv4(Spec::new(
        Ipv4Fields {
            src: p.addr().to_bits(),
            dst: own.addr.to_bits(),
            proto: 17,
            tos: 0,
        },
        Ipv4Fields {
            src: u32::MAX,
            dst: u32::MAX,
            proto: 0xFF,
            tos: 0,
        },
    )))?
    .item(Item::Udp(Spec::new(
        UdpFields {
            src_port: 0,
            dst_port: VXLAN_PORT,
        },
        UdpFields {
            src_port: 0,
            dst_port: 0xFFFF,
        },
    )))?
    .item(Item::Vxlan(Spec::new(
        VxlanFields { vni: vni.encode() },
        VxlanFields {
            vni: VxlanFields::VNI_MASK,
        },
    )))?;
    Ok(())
}

/// The stateless rules of a DPU that delivers to its instances for peers:
/// per peer, segment and local instance of the segment's service, the
/// frame from the peer decapsulated and tagged with the peer's guest tag
/// towards the instance (counted as the instance's load), and what the
/// instance sends back with that tag untagged and encapsulated towards
/// the peer.
///
/// # Errors
/// [`GenerateError`] when a rule cannot be expressed (an encapsulation or
/// counter without a handle).
pub fn guest_rules(
    config: &Config,
    group: u32,
    handles: &impl Handles,
    out: &mut Vec<Rule>,
) -> Result<(), GenerateError> {
    let Some(own) = config.underlay().copied() else {
        return Ok(());
    };
    for (p, _) in config.peers().iter().enumerate() {
        let peer = PeerId::from_index(u16::try_from(p).map_err(|_| GenerateError::Stale)?);
        for (c, chain) in config.chains().iter().enumerate() {
            let chain_id = ChainId::from_index(u16::try_from(c).map_err(|_| GenerateError::Stale)?);
            for (hop, service) in chain.services().iter().enumerate() {
                for travel in [Travel::ToWan, Travel::ToLan] {
                    let segment = Segment {
                        chain: chain_id,
                        hop: u8::try_from(hop).map_err(|_| GenerateError::Stale)?,
                        travel,
                    };
                    let (Some(tag), Some(guest)) = (
                        config.segment_tag(segment),
                        config
                            .segment_tag(segment)
                            .and_then(|t| config.guest_tag(peer, t)),
                    ) else {
                        return Err(GenerateError::Stale);
                    };
                    for (instance, inst) in config.instances_of(*service) {
                        let a = inst.attachment();
                        if a.is_remote() {
                            continue;
                        }
                        let slot = u8::try_from(a.entry(Travel::ToWan).index())
                            .map_err(|_| GenerateError::Stale)?;
                        let vni = |leg| Vni {
                            segment: tag,
                            leg,
                            slot,
                        };
                        let counter = handles
                            .counter(instance)
                            .ok_or(GenerateError::Unsupported(NO_COUNTER))?;
                        let back = tunnel_to(config, peer, vni(Leg::Return))
                            .and_then(|t| handles.encap(&t))
                            .ok_or(GenerateError::Unsupported(NO_ENCAP))?;
                        out.push(Rule::transfer(group, SESSION_PRIORITY));
                        let r = out.last_mut().ok_or(GenerateError::TooLong)?;
                        r.item(Item::RepresentedPort(own.port))?;
                        underlay_items(r, config, peer, vni(Leg::Deliver))?;
                        r.action(Action::VxlanDecap)?
                            .action(Action::SharedCount(counter))?
                            .action(Action::OfPushVlan(EtherType::Vlan.number()))?
                            .action(Action::OfSetVlanVid(guest))?
                            .action(Action::RepresentedPort(a.entry(travel)))?;
                        out.push(Rule::transfer(group, SESSION_PRIORITY));
                        let r = out.last_mut().ok_or(GenerateError::TooLong)?;
                        r.item(Item::RepresentedPort(a.exit(travel)))?
                            .item(Item::Eth(Spec::new(
                                EthFields {
                                    has_vlan: true,
                                    ..EthFields::default()
                                },
                                EthFields {
                                    has_vlan: true,
                                    ..EthFields::default()
                                },
                            )))?
                            .item(Item::Vlan(Spec::new(
                                VlanFields {
                                    tci: guest.get(),
                                    ..VlanFields::default()
                                },
                                VlanFields {
                                    tci: VlanId::MAX,
                                    ..VlanFields::default()
                                },
                            )))?;
                        r.action(Action::OfPopVlan)?
                            .action(Action::VxlanEncap(back))?
                            .action(Action::RepresentedPort(own.port))?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Every encapsulation the rules of `config` use: towards each remote
/// instance for each segment of its service, and back to each peer from
/// each local instance for each segment of its service.
#[must_use]
pub fn tunnels(config: &Config) -> Vec<VxlanTunnel> {
    let mut out = Vec::new();
    for (c, chain) in config.chains().iter().enumerate() {
        for (hop, service) in chain.services().iter().enumerate() {
            for travel in [Travel::ToWan, Travel::ToLan] {
                let segment = Segment {
                    chain: ChainId::from_index(u16::try_from(c).unwrap_or(u16::MAX)),
                    hop: u8::try_from(hop).unwrap_or(u8::MAX),
                    travel,
                };
                let Some(tag) = config.segment_tag(segment) else {
                    continue;
                };
                for (_, inst) in config.instances_of(*service) {
                    let a = inst.attachment();
                    let targets: Vec<(PeerId, Vni)> = match a {
                        Attachment::Remote { peer, slot, .. } => {
                            alloc::vec![(
                                peer,
                                Vni {
                                    segment: tag,
                                    leg: Leg::Deliver,
                                    slot
                                }
                            )]
                        }
                        _ => {
                            let Ok(slot) = u8::try_from(a.entry(Travel::ToWan).index()) else {
                                continue;
                            };
                            (0..config.peers().len())
                                .filter_map(|p| u16::try_from(p).ok())
                                .map(|p| {
                                    (
                                        PeerId::from_index(p),
                                        Vni {
                                            segment: tag,
                                            leg: Leg::Return,
                                            slot,
                                        },
                                    )
                                })
                                .collect()
                        }
                    };
                    for (peer, vni) in targets {
                        if let Some(t) = tunnel_to(config, peer, vni)
                            && !out.contains(&t)
                        {
                            out.push(t);
                        }
                    }
                }
            }
        }
    }
    out
}

fn v6(a: IpAddr) -> u128 {
    match a {
        IpAddr::V6(a) => a.to_bits(),
        IpAddr::V4(a) => a.to_ipv6_mapped().to_bits(),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use chaingate_shared::{FlowKey, IpProtocol, Nanos};

    use super::*;
    use crate::session::{DropCause, Session, SessionAction};
    use crate::testing::{Svc, rig};

    const AGE: Age = Age {
        timeout_s: 30,
        context: 7,
    };

    fn key(proto: IpProtocol, sport: u16, dport: u16) -> FlowKey {
        FlowKey::v4(
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            proto,
            sport,
            dport,
        )
    }

    #[test]
    fn bypass_and_drop_sessions_get_one_aging_rule_per_direction() {
        let r = rig(&[Svc::new("fw", 1)]);
        for (action, fate) in [
            (SessionAction::Bypass, Action::RepresentedPort(r.wan)),
            (SessionAction::Drop(DropCause::Policy), Action::Drop),
        ] {
            let s = Session::new(&key(IpProtocol::Udp, 1, 2), Uplink::Lan, action, Nanos(0));
            let mut out = Vec::new();
            session_rules(&r.config, &s, 1, |_| None, AGE, &mut out).unwrap();
            assert_eq!(out.len(), 2);
            assert_eq!(out[0].fate(), Some(fate));
            assert_eq!(out[0].actions[0], Action::Age(AGE));
            assert_eq!(out[0].pattern[0], Item::RepresentedPort(r.lan));
            assert_eq!(out[1].pattern[0], Item::RepresentedPort(r.wan));
        }
    }

    #[test]
    fn a_chain_session_counts_into_instances_and_ages_on_the_way_out() {
        let r = rig(&[Svc::new("fw", 1), Svc::new("nat", 1)]);
        let mut s = Session::new(
            &key(IpProtocol::Tcp, 1000, 80),
            Uplink::Lan,
            SessionAction::Chain(ChainId::from_index(0)),
            Nanos(0),
        );
        s.set_hop(0, Some(r.instances[0][0]));
        s.set_hop(1, Some(r.instances[1][0]));
        let mut out = Vec::new();
        session_rules(
            &r.config,
            &s,
            2,
            |i: InstanceId| Some(CounterId(i.index() as u32 + 100)),
            AGE,
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 6, "3 steps each way");
        assert!(out.iter().all(|r| r.attr.group == 2));
        let kinds = |r: &Rule| r.actions.iter().map(Action::kind).collect::<Vec<_>>();
        assert_eq!(kinds(&out[0]), FROM_UPLINK[0]);
        assert_eq!(out[0].actions[0], Action::SharedCount(CounterId(100)));
        assert_eq!(kinds(&out[1]), FROM_INSTANCE[0]);
        assert_eq!(out[1].actions[0], Action::SharedCount(CounterId(101)));
        assert_eq!(kinds(&out[2]), FROM_INSTANCE[1]);
        assert_eq!(out[2].fate(), Some(Action::RepresentedPort(r.wan)));
        for rule in &out {
            let counters = rule
                .actions
                .iter()
                .filter(|a| matches!(a, Action::Count | Action::SharedCount(_) | Action::Age(_)))
                .count();
            assert_eq!(counters, 1, "one counter (or AGE) per rule: {rule:?}");
        }
        // The reply direction matches the reversed tuple from wan.
        assert_eq!(out[3].pattern[0], Item::RepresentedPort(r.wan));
        let Some(Item::Tcp(t)) = out[3].pattern.iter().find(|i| matches!(i, Item::Tcp(_))) else {
            panic!()
        };
        assert_eq!((t.spec.src_port, t.spec.dst_port), (80, 1000));
        assert_eq!(t.mask.flags, CONTROL_FLAGS);
        // Rules from an instance match its segment tag, with the L3 type
        // in the tag's inner type.
        let Some(Item::Vlan(v)) = out[1].pattern.iter().find(|i| matches!(i, Item::Vlan(_))) else {
            panic!()
        };
        assert_eq!(v.spec.inner_type, 0x0800);
        for rule in &out {
            assert_eq!(
                templates_for(rule)
                    .iter()
                    .filter(|t| **t == kinds(rule))
                    .count(),
                1,
                "every rule has its template: {rule:?}"
            );
        }
    }

    #[test]
    fn an_instance_without_its_counter_is_not_offloaded() {
        let r = rig(&[Svc::new("fw", 1)]);
        let mut s = Session::new(
            &key(IpProtocol::Udp, 1, 2),
            Uplink::Lan,
            SessionAction::Chain(ChainId::from_index(0)),
            Nanos(0),
        );
        s.set_hop(0, Some(r.instances[0][0]));
        let mut out = Vec::new();
        assert!(matches!(
            session_rules(&r.config, &s, 1, |_| None, AGE, &mut out),
            Err(GenerateError::Unsupported(_))
        ));
    }

    #[test]
    fn base_rules_only_jump() {
        let r = rig(&[Svc::new("fw", 1)]);
        let rules = base_rules(&r.config, 2, 1).unwrap();
        assert_eq!(rules.len(), r.config.ports().len());
        assert!(
            rules
                .iter()
                .all(|r| r.actions.as_slice() == [Action::Jump(2)]
                    && r.attr.group == 0
                    && r.attr.priority == 1)
        );
    }

    #[test]
    fn icmpv6_echo_cannot_be_expressed() {
        let r = rig(&[Svc::new("fw", 1)]);
        let k = FlowKey::v6(
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            IpProtocol::Icmpv6,
            7,
            7,
        );
        let s = Session::new(&k, Uplink::Lan, SessionAction::Bypass, Nanos(0));
        let mut out = Vec::new();
        assert!(matches!(
            session_rules(&r.config, &s, 1, |_| None, AGE, &mut out),
            Err(GenerateError::Unsupported(_))
        ));
    }
}
