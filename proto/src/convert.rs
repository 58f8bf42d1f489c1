//! From protobuf messages to validated configuration, and back for the
//! values the runtime reports.
//!
//! Messages refer to ports, services and chains by name; the conversion
//! resolves every name and hands the builder of `chaingate_shared::Config`
//! checked values, so every error, whether found here or by the builder,
//! names the field path as the operator wrote it (`policies[3].match.src`).
//! Unset enum fields take the documented default; unknown enum values are
//! errors, never guesses.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use chaingate_shared::config::{
    Attachment, ConfigErrorKind, DEFAULT_UNDERLAY_MTU, FailMode, InstanceState, Permille, PortRole,
    Scaling, Section, Uplink,
};
use chaingate_shared::policy::{Dscp, IpPrefix, Match, Policy, PolicyAction, PortRange};
use chaingate_shared::{
    ChainId, Config, ConfigError, Generation, IpProtocol, PeerId, PortId, ServiceId, VlanId,
};

use crate::dpu;

/// A message that is not a valid configuration: the field path and what
/// is wrong with it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ConvertError {
    /// Where, as `section[index].field` (`instances[2].attachment.port`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl ConvertError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for ConvertError {}

/// The names a configuration gives, for resolving references and for
/// saying what a builder error is about.
#[derive(Default)]
struct Names<'a> {
    ports: HashMap<&'a str, PortId>,
    services: HashMap<&'a str, ServiceId>,
    chains: HashMap<&'a str, ChainId>,
    peers: HashMap<&'a str, PeerId>,
    port_names: Vec<&'a str>,
    instance_names: Vec<&'a str>,
}

impl Names<'_> {
    /// A builder error, with names instead of ids.
    fn describe(&self, e: &ConfigError) -> ConvertError {
        let section = match e.section {
            Section::Config => "",
            Section::Ports => "ports",
            Section::Services => "services",
            Section::Instances => "instances",
            Section::Peers => "peers",
            Section::Chains => "chains",
            Section::Policies => "policies",
        };
        let path = match (e.section, e.field.is_empty()) {
            (Section::Config, _) => e.field.to_owned(),
            (_, true) => format!("{section}[{}]", e.index),
            (_, false) => format!("{section}[{}].{}", e.index, e.field),
        };
        let port = |p: PortId| {
            self.port_names
                .get(p.index())
                .map_or_else(|| p.to_string(), |n| format!("port \"{n}\""))
        };
        let message = match e.kind {
            ConfigErrorKind::PortInUse { port: p, by } => format!(
                "{} is already attached to instance \"{}\"",
                port(p),
                self.instance_names.get(by.index()).unwrap_or(&"?")
            ),
            ConfigErrorKind::NotAVf(p) => format!("{} is not a VF", port(p)),
            ConfigErrorKind::SamePortTwice(p) => format!("{} is both ingress and egress", port(p)),
            kind => kind.to_string(),
        };
        ConvertError::new(path, message)
    }
}

impl TryFrom<&dpu::Config> for Config {
    type Error = ConvertError;

    fn try_from(msg: &dpu::Config) -> Result<Self, ConvertError> {
        let mut names = Names::default();
        let mut b = Self::builder(Generation(msg.generation));
        if msg.segment_base != 0 {
            let base = usable_vlan(msg.segment_base)
                .ok_or_else(|| ConvertError::new("segment_base", "must be 1 to 4094"))?;
            b.segment_base(base);
        }
        for (i, p) in msg.ports.iter().enumerate() {
            let role = match enum_field::<dpu::PortRole>(p.role, || format!("ports[{i}].role"))? {
                dpu::PortRole::Lan => PortRole::Uplink(Uplink::Lan),
                dpu::PortRole::Wan => PortRole::Uplink(Uplink::Wan),
                dpu::PortRole::Vf => PortRole::Vf,
                dpu::PortRole::Underlay => PortRole::Underlay,
                dpu::PortRole::Unspecified => {
                    return Err(ConvertError::new(
                        format!("ports[{i}].role"),
                        "must be lan, wan, vf or underlay",
                    ));
                }
            };
            let id = b.add_port(&p.name, role).map_err(|e| names.describe(&e))?;
            names.ports.insert(&p.name, id);
            names.port_names.push(&p.name);
        }
        if let Some(u) = &msg.underlay {
            let addr = ipv4(&u.address, "underlay.address")?;
            let mac = mac(&u.mac, "underlay.mac")?;
            let mtu = match u.mtu {
                0 => DEFAULT_UNDERLAY_MTU,
                m => u16::try_from(m)
                    .map_err(|_| ConvertError::new("underlay.mtu", "must be 612 to 65535"))?,
            };
            b.set_underlay(addr, mac, mtu)
                .map_err(|e| names.describe(&e))?;
        }
        b.prefer_local(msg.prefer_local);
        for (i, p) in msg.peers.iter().enumerate() {
            let addr = ipv4(&p.address, &format!("peers[{i}].address"))?;
            let mac = mac(&p.mac, &format!("peers[{i}].mac"))?;
            let id = b
                .add_peer(&p.name, addr, mac)
                .map_err(|e| names.describe(&e))?;
            names.peers.insert(&p.name, id);
        }
        for (i, s) in msg.services.iter().enumerate() {
            let at = |field: &str| format!("services[{i}].{field}");
            let scaling = match &s.scaling {
                None => Scaling::default(),
                Some(sc) => scaling(sc, &at)?,
            };
            let fail = match enum_field::<dpu::FailMode>(s.fail, || at("fail"))? {
                dpu::FailMode::Unspecified | dpu::FailMode::Open => FailMode::Open,
                dpu::FailMode::Closed => FailMode::Closed,
            };
            let id = b
                .add_service(&s.name, s.capacity_bps, scaling, fail)
                .map_err(|e| names.describe(&e))?;
            names.services.insert(&s.name, id);
        }
        for (i, inst) in msg.instances.iter().enumerate() {
            let at = |field: &str| format!("instances[{i}].{field}");
            let service = *names.services.get(inst.service.as_str()).ok_or_else(|| {
                ConvertError::new(at("service"), no_such("service", &inst.service))
            })?;
            let port = |field: &str, name: &str| {
                names
                    .ports
                    .get(name)
                    .copied()
                    .ok_or_else(|| ConvertError::new(at(field), no_such("port", name)))
            };
            let attachment = match &inst.attachment {
                None => {
                    return Err(ConvertError::new(
                        at("attachment"),
                        "missing: give a port or an ingress/egress pair",
                    ));
                }
                Some(dpu::instance::Attachment::Port(p)) => {
                    Attachment::Single(port("attachment.port", p)?)
                }
                Some(dpu::instance::Attachment::Pair(pair)) => Attachment::Pair {
                    ingress: port("attachment.ingress", &pair.ingress)?,
                    egress: port("attachment.egress", &pair.egress)?,
                },
                Some(dpu::instance::Attachment::Remote(r)) => {
                    let peer = *names.peers.get(r.peer.as_str()).ok_or_else(|| {
                        ConvertError::new(at("attachment.remote.peer"), no_such("peer", &r.peer))
                    })?;
                    let slot = u8::try_from(r.slot).map_err(|_| {
                        ConvertError::new(at("attachment.remote.slot"), "must be 0 to 255")
                    })?;
                    let via = msg
                        .ports
                        .iter()
                        .position(|p| p.role == dpu::PortRole::Underlay as i32)
                        .and_then(|n| u16::try_from(n).ok())
                        .map(PortId::from_index)
                        .ok_or_else(|| {
                            ConvertError::new(
                                at("attachment.remote"),
                                "a remote instance needs a port with role underlay",
                            )
                        })?;
                    Attachment::Remote { peer, slot, via }
                }
            };
            let state = instance_state(inst.state, || at("state"))?;
            let weight = match inst.weight {
                0 => 1,
                w => u16::try_from(w)
                    .map_err(|_| ConvertError::new(at("weight"), "must be 1 to 65535"))?,
            };
            b.add_instance(&inst.name, service, attachment, state, weight)
                .map_err(|e| names.describe(&e))?;
            names.instance_names.push(&inst.name);
        }
        for (i, c) in msg.chains.iter().enumerate() {
            let services = c
                .services
                .iter()
                .enumerate()
                .map(|(j, s)| {
                    names.services.get(s.as_str()).copied().ok_or_else(|| {
                        ConvertError::new(
                            format!("chains[{i}].services[{j}]"),
                            no_such("service", s),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let id = b
                .add_chain(&c.name, &services)
                .map_err(|e| names.describe(&e))?;
            names.chains.insert(&c.name, id);
        }
        for (i, p) in msg.policies.iter().enumerate() {
            let at = |field: &str| format!("policies[{i}].{field}");
            let matches = match &p.r#match {
                None => Match::default(),
                Some(m) => policy_match(m, &names, &at)?,
            };
            let action = match &p.action {
                None => {
                    return Err(ConvertError::new(
                        at("action"),
                        "missing: give a chain, bypass or drop",
                    ));
                }
                Some(a) => action(a, &names, &at("action"))?,
            };
            b.add_policy(Policy {
                priority: p.priority,
                matches,
                action,
            })
            .map_err(|e| names.describe(&e))?;
        }
        if let Some(a) = &msg.default_action {
            let a = action(a, &names, "default_action")?;
            b.default_action(a).map_err(|e| names.describe(&e))?;
        }
        b.build().map_err(|e| names.describe(&e))
    }
}

impl TryFrom<dpu::Config> for Config {
    type Error = ConvertError;

    fn try_from(msg: dpu::Config) -> Result<Self, ConvertError> {
        Self::try_from(&msg)
    }
}

/// An IPv4 address, dotted.
fn ipv4(text: &str, path: &str) -> Result<std::net::Ipv4Addr, ConvertError> {
    text.parse()
        .map_err(|_| ConvertError::new(path, format!("\"{text}\" is not an IPv4 address")))
}

/// A MAC address, six hex bytes separated by colons.
pub fn mac(text: &str, path: &str) -> Result<[u8; 6], ConvertError> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut out {
        *b = parts
            .next()
            .filter(|p| p.len() == 2)
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or_else(|| {
                ConvertError::new(path, format!("\"{text}\" is not a MAC (aa:bb:cc:dd:ee:ff)"))
            })?;
    }
    if parts.next().is_some() {
        return Err(ConvertError::new(
            path,
            format!("\"{text}\" is not a MAC (aa:bb:cc:dd:ee:ff)"),
        ));
    }
    Ok(out)
}

/// A VLAN id a frame can carry (0 means untagged, 4095 is reserved).
fn usable_vlan(v: u32) -> Option<VlanId> {
    u16::try_from(v)
        .ok()
        .filter(|v| (1..=4094).contains(v))
        .and_then(VlanId::new)
}

fn no_such(what: &str, name: &str) -> String {
    if name.is_empty() {
        format!("missing: name a {what}")
    } else {
        format!("no {what} named \"{name}\"")
    }
}

/// A protobuf enum field's value, or an error for a number the schema does
/// not have.
fn enum_field<E: TryFrom<i32>>(v: i32, path: impl FnOnce() -> String) -> Result<E, ConvertError> {
    E::try_from(v).map_err(|_| ConvertError::new(path(), format!("unknown value {v}")))
}

/// An instance state; unset is active.
///
/// # Errors
/// A number the schema does not have.
pub fn instance_state(
    v: i32,
    path: impl FnOnce() -> String,
) -> Result<InstanceState, ConvertError> {
    Ok(match enum_field::<dpu::InstanceState>(v, path)? {
        dpu::InstanceState::Unspecified | dpu::InstanceState::Active => InstanceState::Active,
        dpu::InstanceState::Draining => InstanceState::Draining,
        dpu::InstanceState::Down => InstanceState::Down,
    })
}

/// The protobuf value of an instance state.
#[must_use]
pub fn instance_state_to_proto(s: InstanceState) -> dpu::InstanceState {
    match s {
        InstanceState::Active => dpu::InstanceState::Active,
        InstanceState::Draining => dpu::InstanceState::Draining,
        InstanceState::Down => dpu::InstanceState::Down,
    }
}

fn scaling(sc: &dpu::Scaling, at: &dyn Fn(&str) -> String) -> Result<Scaling, ConvertError> {
    let u16_of = |v: u32, field: &str| {
        u16::try_from(v).map_err(|_| ConvertError::new(at(field), "must be at most 65535"))
    };
    let permille = |v: u32, field: &str| {
        u16::try_from(v)
            .ok()
            .and_then(Permille::new)
            .ok_or_else(|| ConvertError::new(at(field), "must be 0 to 1000 (thousandths)"))
    };
    Ok(Scaling {
        min_instances: u16_of(sc.min_instances, "scaling.min_instances")?,
        max_instances: u16_of(sc.max_instances, "scaling.max_instances")?,
        scale_out_at: permille(sc.scale_out_permille, "scaling.scale_out_permille")?,
        scale_in_at: permille(sc.scale_in_permille, "scaling.scale_in_permille")?,
        hold_ms: sc.hold_ms,
        cooldown_ms: sc.cooldown_ms,
        drain_timeout_ms: sc.drain_timeout_ms,
    })
}

fn action(
    a: &dpu::PolicyAction,
    names: &Names<'_>,
    path: &str,
) -> Result<PolicyAction, ConvertError> {
    match &a.action {
        None => Err(ConvertError::new(
            path,
            "missing: give a chain, bypass or drop",
        )),
        Some(dpu::policy_action::Action::Bypass(_)) => Ok(PolicyAction::Bypass),
        Some(dpu::policy_action::Action::Drop(_)) => Ok(PolicyAction::Drop),
        Some(dpu::policy_action::Action::Chain(name)) => names
            .chains
            .get(name.as_str())
            .map(|c| PolicyAction::Chain(*c))
            .ok_or_else(|| ConvertError::new(format!("{path}.chain"), no_such("chain", name))),
    }
}

fn policy_match(
    m: &dpu::Match,
    names: &Names<'_>,
    at: &dyn Fn(&str) -> String,
) -> Result<Match, ConvertError> {
    let in_port = m
        .in_port
        .as_deref()
        .map(|p| {
            names
                .ports
                .get(p)
                .copied()
                .ok_or_else(|| ConvertError::new(at("match.in_port"), no_such("port", p)))
        })
        .transpose()?;
    let vlan = m
        .vlan
        .map(|v| {
            usable_vlan(v).ok_or_else(|| ConvertError::new(at("match.vlan"), "must be 1 to 4094"))
        })
        .transpose()?;
    let prefix = |s: &Option<String>, field: &str| {
        s.as_deref()
            .map(|s| parse_prefix(s).map_err(|e| ConvertError::new(at(field), e)))
            .transpose()
    };
    let proto = m
        .protocol
        .map(|p| {
            u8::try_from(p)
                .map(IpProtocol::from)
                .map_err(|_| ConvertError::new(at("match.protocol"), "must be 0 to 255"))
        })
        .transpose()?;
    let range = |r: &Option<dpu::PortRange>, field: &str| {
        r.as_ref()
            .map(|r| {
                let lo = u16::try_from(r.lo).ok();
                let hi = u16::try_from(r.hi).ok();
                lo.zip(hi)
                    .and_then(|(lo, hi)| PortRange::new(lo, hi))
                    .ok_or_else(|| {
                        ConvertError::new(at(field), "must be lo <= hi, both 0 to 65535")
                    })
            })
            .transpose()
    };
    let dscp = m
        .dscp
        .map(|d| {
            u8::try_from(d)
                .ok()
                .and_then(Dscp::new)
                .ok_or_else(|| ConvertError::new(at("match.dscp"), "must be 0 to 63"))
        })
        .transpose()?;
    Ok(Match {
        in_port,
        vlan,
        src: prefix(&m.src, "match.src")?,
        dst: prefix(&m.dst, "match.dst")?,
        proto,
        src_ports: range(&m.src_ports, "match.src_ports")?,
        dst_ports: range(&m.dst_ports, "match.dst_ports")?,
        dscp,
    })
}

/// Parses `10.0.0.0/8`, `2001:db8::/32`, or an address alone (a host
/// prefix).
///
/// # Errors
/// What is wrong with it, for an operator.
pub fn parse_prefix(s: &str) -> Result<IpPrefix, String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("\"{s}\" is not an IPv4 or IPv6 prefix"))?;
    let len = match len {
        None => {
            if addr.is_ipv4() {
                32
            } else {
                128
            }
        }
        Some(l) => l
            .trim()
            .parse::<u8>()
            .map_err(|_| format!("\"{s}\": the prefix length is not a number"))?,
    };
    IpPrefix::new(addr, len).map_err(|e| format!("\"{s}\": {e}"))
}

#[cfg(test)]
mod tests;
