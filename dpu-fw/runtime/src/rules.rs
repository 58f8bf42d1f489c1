//! The rules a gateway installs, for operators: as dpdk-testpmd `flow`
//! commands (`dpu-fw rules`, `dpu-fw ctl rules --testpmd`), and the rules N
//! synthetic sessions over a configuration's policies would install on a
//! card, without the daemon (`dpu-fw rules CONFIG --sessions N`).
//!
//! Synthetic sessions: the policies take turns (in priority order), each
//! gets connections that match it from the uplink it names (lan when it
//! names none): addresses counted up inside its prefixes (10.0.0.0/8 to
//! 198.51.100.0/24 when it gives none), its protocol (TCP when it gives
//! none), ports counted up inside its ranges (a client port from 1024, to
//! 443, 53 for UDP), its customer VLAN and DSCP. TCP connections are
//! opened and answered (rules are for established connections), others
//! send one packet. The classifier then decides as it would on the card:
//! a policy that a higher one shadows gets none of its own.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chaingate_fastpath::datapath::{Datapath, Options};
use chaingate_fastpath::offload::manager::{ManagerOptions, OffloadManager};
use chaingate_fastpath::offload::testpmd::{self, Names};
use chaingate_fastpath::offload::{FlowOffload, Refusal, Rule, SoftSwitch};
use chaingate_fastpath::session::SessionAction;
use chaingate_fastpath::wire::build::{FrameSpec, IpSpec, L4Spec, NetSpec};
use chaingate_fastpath::wire::tcp::{TcpFlags, TcpRepr};
use chaingate_fastpath::wire::{EtherType, EthernetAddress, Tci};
use chaingate_shared::config::{PortRole, Uplink};
use chaingate_shared::policy::{IpPrefix, Match};
use chaingate_shared::{Config, IpProtocol, Nanos, PortId};

/// Appends a page of the rules in force as testpmd lines: on the first
/// page (`from` 0) the shared counters and the base jumps first, then the
/// rules of at most `sessions` sessions from slot `from`. Returns the
/// slot the next page starts at (`None`: this was the last).
pub fn testpmd_page<B: FlowOffload>(
    mgr: &OffloadManager<B>,
    dp: &Datapath,
    port: &dyn Fn(PortId) -> u16,
    from: usize,
    sessions: usize,
    lines: &mut Vec<String>,
) -> Option<usize> {
    let encap = |_| None;
    let names = Names {
        port,
        encap: &encap,
    };
    let mut text = String::new();
    if from == 0 {
        for (_, c) in mgr.counters() {
            let _ = testpmd::write_counter(&mut text, c);
        }
        for r in mgr.jump_rules(dp) {
            let _ = testpmd::write_rule(&mut text, &r, &names);
        }
    }
    let mut rules: Vec<Rule> = Vec::new();
    let next = mgr.rules_in_force(dp, from, sessions, &mut rules);
    for r in &rules {
        let _ = testpmd::write_rule(&mut text, r, &names);
    }
    lines.extend(text.lines().map(str::to_owned));
    next
}

/// What the synthetic sessions got.
#[derive(Debug, Default)]
pub struct Summary {
    /// Sessions made, by what they do (chain name, bypass, drop).
    pub sessions: BTreeMap<String, usize>,
    /// Sessions whose rules are in force.
    pub offloaded: usize,
    /// Rules in force (sessions' only).
    pub rules: usize,
    /// Template tables made.
    pub tables: usize,
    /// Refused sessions by reason class (full, unsupported, ...).
    pub refused: BTreeMap<&'static str, u64>,
    /// Refused sessions by the backend's own words.
    pub reasons: Vec<(&'static str, u64)>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: usize = self.sessions.values().sum();
        write!(f, "{total} sessions (")?;
        for (i, (what, n)) in self.sessions.iter().enumerate() {
            write!(f, "{}{what}: {n}", if i == 0 { "" } else { ", " })?;
        }
        writeln!(
            f,
            "); {} offloaded with {} rules in {} tables",
            self.offloaded, self.rules, self.tables
        )?;
        if self.refused.is_empty() {
            writeln!(f, "refused: none")?;
        }
        for (class, n) in &self.refused {
            writeln!(f, "refused ({class}): {n}")?;
        }
        for (why, n) in &self.reasons {
            writeln!(f, "  {n}: {why}")?;
        }
        Ok(())
    }
}

/// `n` synthetic sessions over `config`'s policies, offloaded into
/// `backend` (configured and started) by the offload manager.
pub fn synthetic<B: FlowOffload>(
    config: &Config,
    n: usize,
    backend: B,
) -> (Datapath, OffloadManager<B>, Summary) {
    let options = Options {
        sessions: (2 * n).max(16).next_power_of_two(),
        events: (4 * n).max(4096),
        ..Options::default()
    };
    let mut dp = Datapath::new(config.clone(), &options);
    let manager = ManagerOptions {
        budget: usize::MAX,
        install_budget: usize::MAX,
        max_pending: usize::MAX,
        ..ManagerOptions::default()
    };
    let mut mgr = OffloadManager::new(backend, &dp, manager);
    let mut policies: Vec<&chaingate_shared::policy::Policy> = config
        .policies()
        .iter()
        .filter(|p| {
            p.matches.in_port.is_none_or(|port| {
                matches!(
                    config.port(port).map(|x| x.role()),
                    Some(PortRole::Uplink(_))
                )
            })
        })
        .collect();
    policies.sort_by_key(|p| std::cmp::Reverse(p.priority));
    let fallback = Match::default();
    let matches: Vec<&Match> = if policies.is_empty() {
        vec![&fallback]
    } else {
        policies.iter().map(|p| &p.matches).collect()
    };
    let now = Nanos::from_secs(1);
    for i in 0..n {
        let Some(m) = matches.get(i % matches.len()) else {
            break;
        };
        let round = u32::try_from(i / matches.len()).unwrap_or(u32::MAX);
        let entry = m.in_port.unwrap_or_else(|| config.uplink_port(Uplink::Lan));
        let other = match config.port(entry).map(|p| p.role()) {
            Some(PortRole::Uplink(u)) => config.uplink_port(u.other()),
            _ => config.uplink_port(Uplink::Wan),
        };
        let flow = Flow::of(m, round);
        dp.process(entry, &flow.frame(false, TcpFlags::SYN), now);
        if flow.proto == IpProtocol::Tcp {
            dp.process(other, &flow.frame(true, TcpFlags::SYN | TcpFlags::ACK), now);
        }
        mgr.handle_events(&mut dp);
    }
    mgr.handle_events(&mut dp);
    let mut summary = Summary::default();
    for id in dp.sessions().ids().collect::<Vec<_>>() {
        let Some(s) = dp.session(id) else { continue };
        let what = match s.action() {
            SessionAction::Chain(c) => config
                .chain(c)
                .map_or_else(|| "chain".to_owned(), |c| format!("chain {}", c.name())),
            SessionAction::Bypass => "bypass".to_owned(),
            SessionAction::Drop(_) => "drop".to_owned(),
        };
        *summary.sessions.entry(what).or_default() += 1;
    }
    let stats = mgr.stats();
    summary.offloaded = stats.sessions_offloaded;
    summary.rules = stats.rules;
    summary.tables = stats.tables;
    for r in Refusal::ALL {
        let n = stats.refusals(r);
        if n > 0 {
            summary.refused.insert(r.name(), n);
        }
    }
    summary.reasons = mgr.refusal_reasons().to_vec();
    (dp, mgr, summary)
}

/// A synthetic connection that matches a policy.
struct Flow {
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
    sport: u16,
    dport: u16,
    vlan: Option<u16>,
    dscp: u8,
}

/// The `n`th address of `prefix` (wrapping inside it), or of `default`.
fn nth(prefix: Option<IpPrefix>, default: IpAddr, n: u32) -> IpAddr {
    let (base, len) = prefix.map_or((default, 24), |p| (p.addr(), p.len()));
    match base {
        IpAddr::V4(a) => {
            let host_bits = 32 - u32::from(len.min(32));
            let span = if host_bits >= 32 {
                u32::MAX
            } else {
                (1u32 << host_bits).max(1)
            };
            IpAddr::V4(Ipv4Addr::from_bits(a.to_bits().wrapping_add(n % span)))
        }
        IpAddr::V6(a) => {
            let host_bits = 128 - u32::from(len.min(128));
            let span = if host_bits >= 32 {
                u128::from(u32::MAX)
            } else {
                1u128 << host_bits
            };
            IpAddr::V6(Ipv6Addr::from_bits(
                a.to_bits().wrapping_add(u128::from(n) % span.max(1)),
            ))
        }
    }
}

impl Flow {
    fn of(m: &Match, round: u32) -> Self {
        let v6 = matches!(m.src.map(|p| p.addr()), Some(IpAddr::V6(_)))
            || matches!(m.dst.map(|p| p.addr()), Some(IpAddr::V6(_)));
        let (src0, dst0): (IpAddr, IpAddr) = if v6 {
            (
                "2001:db8::"
                    .parse()
                    .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
                "2001:db8:ffff::"
                    .parse()
                    .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            )
        } else {
            (
                Ipv4Addr::new(10, 0, 0, 0).into(),
                Ipv4Addr::new(198, 51, 100, 0).into(),
            )
        };
        let proto = m.proto.unwrap_or(IpProtocol::Tcp);
        let in_range = |r: Option<chaingate_shared::policy::PortRange>, default: u16, step: u32| {
            r.map_or(default, |r| {
                let span = u32::from(r.hi() - r.lo()) + 1;
                r.lo() + u16::try_from(step % span).unwrap_or(0)
            })
        };
        let sport = match m.src_ports {
            None => 1024 + u16::try_from(round % 60_000).unwrap_or(0),
            some => in_range(some, 1024, round).max(1),
        };
        let dport = in_range(
            m.dst_ports,
            if proto == IpProtocol::Udp { 53 } else { 443 },
            round / 60_000,
        );
        Self {
            // A new client every 60,000 source ports.
            src: nth(m.src, src0, 1 + round / 60_000),
            dst: nth(m.dst, dst0, 1),
            proto,
            sport,
            dport,
            vlan: m.vlan.map(chaingate_shared::VlanId::get),
            dscp: m.dscp.map_or(0, chaingate_shared::policy::Dscp::get),
        }
    }

    /// A frame of the flow, from the client (`reply` false) or back.
    fn frame(&self, reply: bool, flags: TcpFlags) -> Vec<u8> {
        let (src, dst, sport, dport) = if reply {
            (self.dst, self.src, self.dport, self.sport)
        } else {
            (self.src, self.dst, self.sport, self.dport)
        };
        let tags: Vec<(EtherType, Tci)> = self
            .vlan
            .and_then(chaingate_shared::VlanId::new)
            .map(|v| (EtherType::Vlan, Tci::new(0, false, v)))
            .into_iter()
            .collect();
        let l4 = match self.proto {
            IpProtocol::Tcp => L4Spec::Tcp(TcpRepr {
                src_port: sport,
                dst_port: dport,
                seq: 1,
                ack: u32::from(reply),
                flags,
                window: 1000,
            }),
            IpProtocol::Udp => L4Spec::Udp {
                src_port: sport,
                dst_port: dport,
            },
            other => L4Spec::Raw(other),
        };
        let ip = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => IpSpec::V4 {
                src: s,
                dst: d,
                ttl: 64,
                dscp: self.dscp,
                ident: 1,
                frag: None,
                options: &[],
            },
            (s, d) => IpSpec::V6 {
                src: match s {
                    IpAddr::V6(a) => a,
                    IpAddr::V4(a) => a.to_ipv6_mapped(),
                },
                dst: match d {
                    IpAddr::V6(a) => a,
                    IpAddr::V4(a) => a.to_ipv6_mapped(),
                },
                hop_limit: 64,
                traffic_class: self.dscp << 2,
                ext: &[],
            },
        };
        let spec = FrameSpec {
            dst_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            src_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            vlans: &tags,
            net: NetSpec::Ip(ip, l4),
            payload: b"synthetic",
        };
        let mut buf = vec![0u8; spec.len()];
        let _ = spec.build(&mut buf);
        buf
    }
}

/// The software eSwitch of the mlx5 profile, set up in DPDK's order, with
/// room for every rule of `sessions` sessions.
#[must_use]
pub fn card(sessions: usize, profile: chaingate_fastpath::offload::Profile) -> SoftSwitch {
    let rules =
        sessions.saturating_mul(chaingate_fastpath::offload::manager::MAX_SESSION_RULES) + 1024;
    SoftSwitch::ready(rules, profile)
}
