//! From a session to its flow rules (DESIGN.md section 5).
//!
//! The switch's base rules: in group 0, one rule per port that only jumps
//! to group 1; in group 1, one lowest-priority rule per port that sends
//! what no session rule took to software (the fast path), as received on
//! that port.
//!
//! A session's rules, in group 1, one exact-match rule per hop per
//! direction of travel: ingress port, the outer (segment) tag when the
//! packet comes back from an instance, the customer tags, and the
//! direction's addresses, protocol and ports (ICMP: the echo identifier);
//! TCP rules also require FIN and RST clear, so the segments that end a
//! connection go to the fast path.
//! The actions count into the rule's own counter (idleness) and, when the
//! rule hands the packet to an instance, into that instance's shared
//! counter (its load); then push (entering the chain), rewrite (hop to
//! hop) or pop (leaving it) the segment tag, and send the packet to the
//! next port. A bypass session gets one rule per direction between the
//! uplinks, a drop session one drop rule per direction.
//!
//! A continuation session (a flow a NAT rewrote) only gets the rules of the
//! part of the chain it travels: onwards from the rewriting instance, and
//! back up to it.

use alloc::vec::Vec;
use core::fmt;
use core::net::IpAddr;

use chaingate_shared::config::{Config, MAX_HOPS, Segment, Travel, Uplink};
use chaingate_shared::{ChainId, FlowKey, InstanceId, IpProtocol, PortId, VlanId};

use super::CounterId;
use super::rule::{
    Action, EthFields, Icmp6Fields, IcmpFields, Ipv4Fields, Ipv6Fields, Item, Rule, RuleFull, Spec,
    TcpFields, UdpFields, VlanFields,
};
use crate::session::{Session, SessionAction};
use crate::wire::EtherType;
use crate::wire::tcp::TcpFlags;

/// The group base rules jump to and session rules live in.
pub const SESSION_GROUP: u32 = 1;
/// Priority of session rules.
pub const SESSION_PRIORITY: u32 = 1;
/// Priority of the miss rules (the lowest).
pub const MISS_PRIORITY: u32 = 1000;
/// TCP flags a session rule requires clear (FIN, RST): segments that end
/// a connection miss and reach the fast path, which must see them to end
/// the session. (SYN is not among them: the answer to a SYN is learnt from
/// the counters of the responder's rules, so the handshake stays in
/// hardware.)
pub const TEARDOWN_FLAGS: u8 = TcpFlags::FIN.union(TcpFlags::RST).0;

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

/// The base rules of every port: jump to the session group, and send
/// misses to software.
///
/// # Errors
/// None in practice (two items and one action per rule).
pub fn base_rules(config: &Config) -> Result<Vec<Rule>, GenerateError> {
    let mut rules = Vec::new();
    for n in 0..config.ports().len() {
        let port = PortId::from_index(u16::try_from(n).map_err(|_| GenerateError::Stale)?);
        let mut jump = Rule::transfer(0, 0);
        jump.item(Item::RepresentedPort(port))?
            .action(Action::Jump(SESSION_GROUP))?;
        rules.push(jump);
        let mut miss = Rule::transfer(SESSION_GROUP, MISS_PRIORITY);
        miss.item(Item::RepresentedPort(port))?
            .action(Action::PortRepresentor(port))?;
        rules.push(miss);
    }
    Ok(rules)
}

/// One step of a packet's walk: where it comes from, and where it goes.
#[derive(Clone, Copy)]
struct Step {
    /// Ingress port, and the segment tag it carries there (from an
    /// instance).
    from: (PortId, Option<VlanId>),
    /// Egress port, the instance it delivers to, and the tag it must carry
    /// (`None`: leaves the chain).
    to: (PortId, Option<(InstanceId, VlanId)>),
}

/// Appends the rules of `session` to `out`. `counter` gives an instance's
/// shared counter. The rules for the opener's packets come first; the
/// number of them is returned (the rest carry the responder's packets, so
/// their counters tell whether the connection was answered).
///
/// # Errors
/// [`GenerateError`] when the session cannot be expressed in rules.
pub fn session_rules(
    config: &Config,
    session: &Session,
    counter: impl Fn(InstanceId) -> Option<CounterId>,
    out: &mut Vec<Rule>,
) -> Result<usize, GenerateError> {
    let key = session.key();
    if key.proto() == IpProtocol::Icmpv6 && key.src_port() != 0 {
        return Err(GenerateError::Unsupported("ICMPv6 echo identifier"));
    }
    let start = out.len();
    let mut from_opener = 0;
    let opener = session.origin().travel();
    for travel in [opener, opener.reverse()] {
        if travel != opener {
            from_opener = out.len() - start;
        }
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
                let r = matching(out, &dir_key, (entry, None))?;
                r.action(Action::Count)?
                    .action(Action::RepresentedPort(exit))?;
            }
            SessionAction::Drop(_) => {
                let r = matching(out, &dir_key, (entry, None))?;
                r.action(Action::Count)?.action(Action::Drop)?;
            }
            SessionAction::Chain(chain) => {
                for step in walk(config, session, chain, travel, entry, exit)? {
                    let r = matching(out, &dir_key, step.from)?;
                    r.action(Action::Count)?;
                    match (step.from.1, step.to.1) {
                        (None, Some((instance, tag))) => {
                            if let Some(c) = counter(instance) {
                                r.action(Action::SharedCount(c))?;
                            }
                            r.action(Action::OfPushVlan(EtherType::Vlan.number()))?
                                .action(Action::OfSetVlanVid(tag))?;
                        }
                        (Some(_), Some((instance, tag))) => {
                            if let Some(c) = counter(instance) {
                                r.action(Action::SharedCount(c))?;
                            }
                            r.action(Action::OfSetVlanVid(tag))?;
                        }
                        (Some(_), None) => {
                            r.action(Action::OfPopVlan)?;
                        }
                        (None, None) => {}
                    }
                    r.action(Action::RepresentedPort(step.to.0))?;
                }
            }
        }
    }
    Ok(from_opener)
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
    let mut from: (PortId, Option<VlanId>) = (entry, None);
    for (n, &(hop, instance)) in stops.iter().enumerate() {
        let t = tag(hop)?;
        // A continuation's own direction starts as the packet comes back
        // from its first instance: no step into it.
        if !(cont_start.is_some() && n == 0) {
            push(
                &mut steps,
                Step {
                    from,
                    to: (port_of(instance, true)?, Some((instance, t))),
                },
            )?;
        }
        if cont_end == Some(hop) {
            // The way back ends at the rewriting instance: from there the
            // original session's rules take the restored packet.
            return Ok(steps);
        }
        from = (port_of(instance, false)?, Some(t));
    }
    push(
        &mut steps,
        Step {
            from,
            to: (exit, None),
        },
    )?;
    Ok(steps)
}

/// Appends a rule matching a packet with `key` arriving at `from` (with
/// the segment tag outermost, if given), built in place.
fn matching<'a>(
    out: &'a mut Vec<Rule>,
    key: &FlowKey,
    from: (PortId, Option<VlanId>),
) -> Result<&'a mut Rule, GenerateError> {
    out.push(Rule::transfer(SESSION_GROUP, SESSION_PRIORITY));
    let r = out.last_mut().ok_or(GenerateError::TooLong)?;
    r.item(Item::RepresentedPort(from.0))?;
    let l3_type = if key.is_ipv6() {
        EtherType::Ipv6
    } else {
        EtherType::Ipv4
    }
    .number();
    let customer = key.vlans().as_slice();
    let mut tags: heapless::Vec<(Option<u16>, VlanId), 3> = heapless::Vec::new();
    if let Some(seg) = from.1 {
        tags.push((Some(EtherType::Vlan.number()), seg))
            .map_err(|_| GenerateError::TooLong)?;
    }
    for vid in customer {
        // Customer tags may be 802.1Q or 802.1ad: the key keeps the VID only.
        tags.push((None, *vid))
            .map_err(|_| GenerateError::TooLong)?;
    }
    let first_type = tags.first().map_or(Some(l3_type), |(tpid, _)| *tpid);
    let eth = match first_type {
        Some(t) => Spec::new(
            EthFields {
                ether_type: t,
                ..EthFields::default()
            },
            EthFields {
                ether_type: 0xFFFF,
                ..EthFields::default()
            },
        ),
        None => Spec::new(
            EthFields {
                has_vlan: true,
                ..EthFields::default()
            },
            EthFields {
                has_vlan: true,
                ..EthFields::default()
            },
        ),
    };
    r.item(Item::Eth(eth))?;
    for (i, (_, vid)) in tags.iter().enumerate() {
        let last = i + 1 == tags.len();
        let spec = VlanFields {
            tci: vid.get(),
            inner_type: if last { l3_type } else { 0 },
            has_more_vlan: !last,
        };
        let mask = VlanFields {
            tci: VlanId::MAX,
            inner_type: if last { 0xFFFF } else { 0 },
            has_more_vlan: true,
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
                flags: TEARDOWN_FLAGS,
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
    fn bypass_and_drop_sessions_get_one_rule_per_direction() {
        let r = rig(&[Svc::new("fw", 1)]);
        for (action, fate) in [
            (SessionAction::Bypass, Action::RepresentedPort(r.wan)),
            (SessionAction::Drop(DropCause::Policy), Action::Drop),
        ] {
            let s = Session::new(&key(IpProtocol::Udp, 1, 2), Uplink::Lan, action, Nanos(0));
            let mut out = Vec::new();
            session_rules(&r.config, &s, |_| None, &mut out).unwrap();
            assert_eq!(out.len(), 2);
            assert_eq!(out[0].fate(), Some(fate));
            assert_eq!(out[0].pattern[0], Item::RepresentedPort(r.lan));
            assert_eq!(out[1].pattern[0], Item::RepresentedPort(r.wan));
        }
    }

    #[test]
    fn a_chain_session_pushes_rewrites_and_pops_and_counts_into_instances() {
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
            |i| Some(CounterId(i.index() as u32 + 100)),
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 6, "3 steps each way");
        let has = |r: &Rule, a: &dyn Fn(&Action) -> bool| r.actions.iter().any(a);
        assert!(has(&out[0], &|a| matches!(a, Action::OfPushVlan(0x8100))));
        assert!(
            has(&out[0], &|a| *a == Action::SharedCount(CounterId(100))),
            "into the firewall's counter"
        );
        assert!(has(&out[1], &|a| matches!(a, Action::OfSetVlanVid(_))));
        assert!(has(&out[1], &|a| *a == Action::SharedCount(CounterId(101))));
        assert!(has(&out[2], &|a| *a == Action::OfPopVlan));
        assert_eq!(out[2].fate(), Some(Action::RepresentedPort(r.wan)));
        assert!(
            out.iter().all(|r| r.actions.contains(&Action::Count)),
            "every rule counts for idleness"
        );
        // The reply direction matches the reversed tuple from wan.
        assert_eq!(out[3].pattern[0], Item::RepresentedPort(r.wan));
        let Some(Item::Tcp(t)) = out[3].pattern.iter().find(|i| matches!(i, Item::Tcp(_))) else {
            panic!()
        };
        assert_eq!((t.spec.src_port, t.spec.dst_port), (80, 1000));
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
            session_rules(&r.config, &s, |_| None, &mut out),
            Err(GenerateError::Unsupported(_))
        ));
    }
}
