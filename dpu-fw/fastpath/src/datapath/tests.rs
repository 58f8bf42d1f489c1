//! Scenarios in memory: frames walk through the fast path as the switch and
//! the service instances would move them (instances reflect frames on
//! their VF with the segment tag kept; one service may rewrite them like a
//! NAT), and the tests check where they went.

extern crate std;
use std::collections::HashMap;
use std::vec;
use std::vec::Vec;

use core::net::{IpAddr, Ipv4Addr};

use chaingate_shared::config::{FailMode, InstanceState, Travel};
use chaingate_shared::policy::{Match, Policy, PolicyAction, PortRange};
use chaingate_shared::{InstanceId, IpProtocol, Nanos, PortId, VlanId};

use super::*;
use crate::session::Admission;
use crate::testing::{Rig, Svc, alloc_count, rig, rig_with};
use crate::wire::build::{FrameSpec, IpSpec, L4Spec, NetSpec};
use crate::wire::icmpv4::{Icmpv4Repr, Icmpv4Type};
use crate::wire::rewrite::{self, End};
use crate::wire::tcp::{TcpFlags, TcpRepr};
use crate::wire::{EtherType, EthernetAddress, FrameBuf, parse};

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const NAT_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

fn client(i: u32) -> Ipv4Addr {
    Ipv4Addr::from_bits(0x0A00_0000 + 2 + i)
}

pub(super) fn tcp_frame(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    flags: TcpFlags,
    payload: &[u8],
) -> Vec<u8> {
    let spec = FrameSpec {
        dst_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
        src_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
        vlans: &[],
        net: NetSpec::Ip(
            IpSpec::V4 {
                src: src.0,
                dst: dst.0,
                ttl: 64,
                dscp: 0,
                ident: 1,
                frag: None,
                options: &[],
            },
            L4Spec::Tcp(TcpRepr {
                src_port: src.1,
                dst_port: dst.1,
                seq: 1,
                ack: 1,
                flags,
                window: 1000,
            }),
        ),
        payload,
    };
    let mut buf = vec![0u8; spec.len()];
    spec.build(&mut buf).unwrap();
    buf
}

fn apply_vlan(frame: &[u8], action: VlanAction) -> Vec<u8> {
    let mut buf = vec![0u8; frame.len() + 8];
    buf[4..4 + frame.len()].copy_from_slice(frame);
    let mut fb = FrameBuf::new(&mut buf, 4, frame.len()).unwrap();
    action.apply(&mut fb).unwrap();
    fb.frame().to_vec()
}

/// A source NAT as a service instance would run it.
/// Each instance allocates from its own port pool: rewritten tuples must
/// be unique across the instances of a NAT service.
struct Nat {
    out: HashMap<(IpAddr, u16), u16>,
    back: HashMap<u16, (IpAddr, u16)>,
    next: u16,
}

impl Nat {
    fn new(instance: InstanceId) -> Self {
        Self {
            out: HashMap::new(),
            back: HashMap::new(),
            next: 20000 + 1000 * instance.index() as u16,
        }
    }
}

impl Nat {
    fn process(&mut self, frame: &mut [u8], travel: Travel) {
        let layers = *parse(frame).unwrap().outer();
        let key = *layers.key().unwrap();
        match travel {
            Travel::ToWan => {
                let from = (key.src(), key.src_port());
                let port = *self.out.entry(from).or_insert_with(|| {
                    self.next += 1;
                    self.next
                });
                self.back.insert(port, from);
                rewrite::set_addr(frame, &layers, End::Src, IpAddr::V4(NAT_ADDR)).unwrap();
                rewrite::set_port(frame, &layers, End::Src, port).unwrap();
            }
            Travel::ToLan => {
                if let Some((addr, port)) = self.back.get(&key.dst_port()).copied() {
                    rewrite::set_addr(frame, &layers, End::Dst, addr).unwrap();
                    rewrite::set_port(frame, &layers, End::Dst, port).unwrap();
                }
            }
        }
    }
}

/// Where a frame went.
#[derive(Debug)]
struct Walk {
    exit: Result<PortId, DropReason>,
    visited: Vec<InstanceId>,
    frame: Vec<u8>,
}

/// The switch and the instances around a data path.
struct Net {
    dp: Datapath,
    rig_lan: PortId,
    rig_wan: PortId,
    now: Nanos,
    /// Instances of this service rewrite like a NAT, each with its state.
    nat_service: Option<chaingate_shared::ServiceId>,
    nats: HashMap<InstanceId, Nat>,
}

impl Net {
    fn new(r: Rig, options: &Options) -> Self {
        Self {
            dp: Datapath::new(r.config, options),
            rig_lan: r.lan,
            rig_wan: r.wan,
            now: Nanos::from_secs(1),
            nat_service: None,
            nats: HashMap::new(),
        }
    }

    fn walk(&mut self, mut port: PortId, mut frame: Vec<u8>) -> Walk {
        let mut visited = Vec::new();
        for _ in 0..32 {
            match self.dp.process(port, &frame, self.now) {
                Verdict::Drop(r) => {
                    return Walk {
                        exit: Err(r),
                        visited,
                        frame,
                    };
                }
                Verdict::ToHost => panic!("to host"),
                Verdict::Forward {
                    port: out, vlan, ..
                } => {
                    frame = apply_vlan(&frame, vlan);
                    if self.dp.config().uplink(out).is_some() {
                        return Walk {
                            exit: Ok(out),
                            visited,
                            frame,
                        };
                    }
                    let instance = self
                        .dp
                        .config()
                        .port_owner(out)
                        .expect("a VF with an instance");
                    visited.push(instance);
                    let tag = parse(&frame)
                        .unwrap()
                        .outer()
                        .vlans()
                        .outer()
                        .expect("tagged for the instance");
                    let segment = self.dp.config().segment(tag).expect("a segment tag");
                    let inst = self.dp.config().instance(instance).unwrap().clone();
                    assert_eq!(inst.attachment().entry(segment.travel), out);
                    if Some(inst.service()) == self.nat_service {
                        self.nats
                            .entry(instance)
                            .or_insert_with(|| Nat::new(instance))
                            .process(&mut frame, segment.travel);
                    }
                    port = inst.attachment().exit(segment.travel);
                }
            }
        }
        panic!("the frame loops");
    }

    fn send_lan(&mut self, frame: Vec<u8>) -> Walk {
        let lan = self.rig_lan;
        self.walk(lan, frame)
    }

    fn send_wan(&mut self, frame: Vec<u8>) -> Walk {
        let wan = self.rig_wan;
        self.walk(wan, frame)
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.dp.next_event()).collect()
    }
}

fn three_hop(instances: usize) -> Rig {
    rig(&[
        Svc::new("fw", instances),
        Svc::new("ids", instances),
        Svc::new("nat", instances),
    ])
}

#[test]
fn a_session_walks_three_hops_out_and_the_reply_walks_them_back() {
    let r = three_hop(3);
    let (lan, wan) = (r.lan, r.wan);
    let services = r.services.clone();
    let mut net = Net::new(r, &Options::default());
    let syn = tcp_frame((client(1), 40000), (SERVER, 443), TcpFlags::SYN, b"");
    let out = net.send_lan(syn.clone());
    assert_eq!(out.exit, Ok(wan));
    assert_eq!(out.visited.len(), 3);
    for (hop, inst) in out.visited.iter().enumerate() {
        assert_eq!(
            net.dp.config().instance(*inst).unwrap().service(),
            services[hop],
            "in chain order"
        );
    }
    assert_eq!(
        out.frame, syn,
        "tag pushed, rewritten and popped: the frame leaves as it came"
    );
    assert!(net.events().is_empty(), "no rules while it opens");

    let reply = tcp_frame(
        (SERVER, 443),
        (client(1), 40000),
        TcpFlags::SYN | TcpFlags::ACK,
        b"",
    );
    let back = net.send_wan(reply);
    assert_eq!(
        net.events(),
        [Event::Install(net.dp.sessions().ids().next().unwrap())],
        "rules once answered"
    );
    assert_eq!(back.exit, Ok(lan));
    let mut expected = out.visited.clone();
    expected.reverse();
    assert_eq!(back.visited, expected, "the same instances, in reverse");
    assert_eq!(net.dp.sessions().len(), 1);
    assert_eq!(net.dp.counters().sessions_opened, 1);

    // Later packets of both directions keep to the same instances.
    for _ in 0..3 {
        let again = net.send_lan(tcp_frame(
            (client(1), 40000),
            (SERVER, 443),
            TcpFlags::ACK,
            b"data",
        ));
        assert_eq!(again.visited, out.visited);
    }
}

#[test]
fn flows_spread_over_instances_and_each_keeps_its_own() {
    let r = three_hop(4);
    let mut net = Net::new(r, &Options::default());
    let mut paths = HashMap::new();
    for i in 0..200 {
        let w = net.send_lan(tcp_frame(
            (client(i), 40000),
            (SERVER, 443),
            TcpFlags::SYN,
            b"",
        ));
        paths.insert(i, w.visited);
    }
    let firsts: std::collections::HashSet<_> = paths.values().map(|p| p[0]).collect();
    assert_eq!(firsts.len(), 4, "every firewall instance gets sessions");
    for i in 0..200 {
        let back = net.send_wan(tcp_frame(
            (SERVER, 443),
            (client(i), 40000),
            TcpFlags::ACK,
            b"",
        ));
        let mut expected = paths[&i].clone();
        expected.reverse();
        assert_eq!(back.visited, expected);
    }
}

#[test]
fn a_nat_hop_rewrites_the_tuple_and_both_directions_keep_their_instances() {
    let r = three_hop(3);
    let (lan, wan) = (r.lan, r.wan);
    let nat_service = r.services[2];
    let mut net = Net::new(r, &Options::default());
    net.nat_service = Some(nat_service);
    for i in 0..60 {
        let out = net.send_lan(tcp_frame(
            (client(i), 5555),
            (SERVER, 443),
            TcpFlags::SYN,
            b"",
        ));
        assert_eq!(out.exit, Ok(wan));
        let left = *parse(&out.frame).unwrap().key().unwrap();
        assert_eq!(left.src(), IpAddr::V4(NAT_ADDR), "it left translated");
        // The reply comes back to the translated address.
        let reply = tcp_frame(
            (SERVER, 443),
            (NAT_ADDR, left.src_port()),
            TcpFlags::SYN | TcpFlags::ACK,
            b"",
        );
        let back = net.send_wan(reply);
        assert_eq!(back.exit, Ok(lan));
        let arrived = *parse(&back.frame).unwrap().key().unwrap();
        assert_eq!(
            (arrived.dst(), arrived.dst_port()),
            (IpAddr::V4(client(i)), 5555),
            "untranslated"
        );
        let mut expected = out.visited.clone();
        expected.reverse();
        assert_eq!(
            back.visited, expected,
            "flow {i}: same NAT, IDS and firewall instances back"
        );
        // And again in both directions.
        let out2 = net.send_lan(tcp_frame(
            (client(i), 5555),
            (SERVER, 443),
            TcpFlags::ACK,
            b"x",
        ));
        assert_eq!(out2.visited, out.visited);
    }
    assert_eq!(net.dp.counters().continuations, 60);
    assert_eq!(
        net.dp.sessions().len(),
        120,
        "each flow and its continuation"
    );
}

#[test]
fn an_instance_that_goes_down_mid_session_hands_its_sessions_over() {
    let r = three_hop(3);
    let wan = r.wan;
    let mut net = Net::new(r, &Options::default());
    let mut paths = Vec::new();
    for i in 0..60 {
        paths.push(
            net.send_lan(tcp_frame(
                (client(i), 1000),
                (SERVER, 80),
                TcpFlags::SYN,
                b"",
            ))
            .visited,
        );
    }
    net.events();
    let victim = paths[0][1]; // an IDS instance
    let on_victim = paths.iter().filter(|p| p[1] == victim).count();
    net.dp
        .set_instance_state(victim, InstanceState::Down, net.now)
        .unwrap();
    let updates = net.events().len();
    assert_eq!(updates, on_victim, "one rule update per moved session");
    assert_eq!(net.dp.counters().repathed, on_victim as u64);
    for (i, before) in paths.iter().enumerate() {
        let after = net
            .send_lan(tcp_frame(
                (client(i as u32), 1000),
                (SERVER, 80),
                TcpFlags::ACK,
                b"",
            ))
            .visited;
        assert_eq!(after.len(), 3);
        assert!(!after.contains(&victim));
        assert_eq!(after[0], before[0], "other hops stay");
        assert_eq!(after[2], before[2]);
        if before[1] != victim {
            assert_eq!(after[1], before[1], "sessions elsewhere do not move");
        }
    }
    // New sessions avoid it too.
    for i in 100..200 {
        let w = net.send_lan(tcp_frame(
            (client(i), 1000),
            (SERVER, 80),
            TcpFlags::SYN,
            b"",
        ));
        assert_eq!(w.exit, Ok(wan));
        assert!(!w.visited.contains(&victim));
    }
}

#[test]
fn a_fail_closed_service_drops_the_sessions_of_a_failed_instance() {
    let mut ids = Svc::new("ids", 2);
    ids.fail = FailMode::Closed;
    let r = rig(&[Svc::new("fw", 2), ids]);
    let mut net = Net::new(r, &Options::default());
    let first = net.send_lan(tcp_frame((client(1), 1), (SERVER, 80), TcpFlags::SYN, b""));
    let victim = first.visited[1];
    net.dp
        .set_instance_state(victim, InstanceState::Down, net.now)
        .unwrap();
    let again = net.send_lan(tcp_frame((client(1), 1), (SERVER, 80), TcpFlags::ACK, b""));
    assert_eq!(again.exit, Err(DropReason::ServiceFailed));
    assert_eq!(net.dp.counters().failed_closed, 1);
    // With both instances down, new connections cannot be served.
    let other = net
        .dp
        .config()
        .instances()
        .iter()
        .position(|i| i.name().as_str() == "ids-1")
        .unwrap();
    let other = InstanceId::from_index(other as u16);
    let other = if other == victim {
        InstanceId::from_index(0)
    } else {
        other
    };
    net.dp
        .set_instance_state(other, InstanceState::Down, net.now)
        .unwrap();
    let fresh = net.send_lan(tcp_frame((client(9), 1), (SERVER, 80), TcpFlags::SYN, b""));
    assert_eq!(fresh.exit, Err(DropReason::NoInstance));
    assert_eq!(net.dp.counters().drops(DropReason::NoInstance), 1);
}

#[test]
fn a_fail_open_service_without_instances_is_skipped() {
    let mut ids = Svc::new("ids", 1);
    ids.down = 1;
    let r = rig(&[Svc::new("fw", 1), ids]);
    let (wan, fw) = (r.wan, r.instances[0][0]);
    let mut net = Net::new(r, &Options::default());
    let w = net.send_lan(tcp_frame((client(1), 1), (SERVER, 80), TcpFlags::SYN, b""));
    assert_eq!(w.exit, Ok(wan));
    assert_eq!(w.visited, [fw]);
}

#[test]
fn draining_instances_keep_their_sessions_and_take_no_new_ones() {
    let r = three_hop(2);
    let mut net = Net::new(r, &Options::default());
    let first = net
        .send_lan(tcp_frame((client(1), 1), (SERVER, 80), TcpFlags::SYN, b""))
        .visited;
    let draining = first[0];
    net.events();
    net.dp
        .set_instance_state(draining, InstanceState::Draining, net.now)
        .unwrap();
    assert!(net.events().is_empty(), "no session moves");
    let again = net
        .send_lan(tcp_frame((client(1), 1), (SERVER, 80), TcpFlags::ACK, b""))
        .visited;
    assert_eq!(again, first);
    for i in 2..100 {
        let w = net.send_lan(tcp_frame((client(i), 1), (SERVER, 80), TcpFlags::SYN, b""));
        assert_ne!(w.visited[0], draining);
    }
}

#[test]
fn policies_pick_chains_bypass_and_drop() {
    let r = rig_with(&[Svc::new("fw", 1)], |b, _| {
        b.add_policy(Policy {
            priority: 10,
            matches: Match {
                proto: Some(IpProtocol::Tcp),
                dst_ports: PortRange::new(22, 22),
                ..Match::default()
            },
            action: PolicyAction::Drop,
        })
        .unwrap();
        b.add_policy(Policy {
            priority: 10,
            matches: Match {
                proto: Some(IpProtocol::Tcp),
                dst_ports: PortRange::new(53, 53),
                ..Match::default()
            },
            action: PolicyAction::Bypass,
        })
        .unwrap();
    });
    let (lan, wan) = (r.lan, r.wan);
    let mut net = Net::new(r, &Options::default());
    assert_eq!(
        net.send_lan(tcp_frame((client(1), 1), (SERVER, 22), TcpFlags::SYN, b""))
            .exit,
        Err(DropReason::Policy)
    );
    let dns = net.send_lan(tcp_frame((client(1), 2), (SERVER, 53), TcpFlags::SYN, b""));
    assert_eq!((dns.exit, dns.visited.len()), (Ok(wan), 0));
    let web = net.send_lan(tcp_frame((client(1), 3), (SERVER, 80), TcpFlags::SYN, b""));
    assert_eq!(web.visited.len(), 1, "the lan policy's chain");
    // From wan, no policy matches: the default (bypass).
    let inbound = net.send_wan(tcp_frame((SERVER, 80), (client(7), 7), TcpFlags::SYN, b""));
    assert_eq!((inbound.exit, inbound.visited.len()), (Ok(lan), 0));
    // The dropped connection stays dropped.
    assert_eq!(
        net.send_lan(tcp_frame((client(1), 1), (SERVER, 22), TcpFlags::ACK, b""))
            .exit,
        Err(DropReason::Policy)
    );
    assert_eq!(net.dp.counters().drops(DropReason::Policy), 2);
}

#[test]
fn bad_frames_and_segments_are_dropped_and_counted() {
    let r = three_hop(1);
    let (lan, fw_port) = (r.lan, PortId::from_index(2));
    let mut net = Net::new(r, &Options::default());
    assert_eq!(
        net.dp.process(lan, &[0u8; 10], net.now),
        Verdict::Drop(DropReason::Malformed)
    );
    assert_eq!(
        net.dp.process(PortId::from_index(60), &[0u8; 60], net.now),
        Verdict::Drop(DropReason::UnknownPort)
    );
    let plain = tcp_frame((client(1), 1), (SERVER, 80), TcpFlags::SYN, b"");
    assert_eq!(
        net.dp.process(fw_port, &plain, net.now),
        Verdict::Drop(DropReason::NotASegment)
    );
    let tagged = apply_vlan(&plain, VlanAction::Push(VlanId::new(1000).unwrap()));
    assert_eq!(
        net.dp.process(fw_port, &tagged, net.now),
        Verdict::Drop(DropReason::NotASegment)
    );
    // The IDS hop's tag on the firewall's port.
    let ids_tag = net
        .dp
        .config()
        .segment_tag(Segment {
            chain: ChainId::from_index(0),
            hop: 1,
            travel: Travel::ToWan,
        })
        .unwrap();
    let wrong = apply_vlan(&plain, VlanAction::Push(ids_tag));
    assert_eq!(
        net.dp.process(fw_port, &wrong, net.now),
        Verdict::Drop(DropReason::WrongInstance)
    );
    for reason in [
        DropReason::Malformed,
        DropReason::UnknownPort,
        DropReason::WrongInstance,
    ] {
        assert_eq!(net.dp.counters().drops(reason), 1, "{reason}");
    }
    assert_eq!(net.dp.counters().drops(DropReason::NotASegment), 2);
    // ARP crosses the gateway.
    let arp = FrameSpec {
        dst_mac: EthernetAddress::BROADCAST,
        src_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
        vlans: &[],
        net: NetSpec::Raw(EtherType::Arp),
        payload: &[0; 28],
    };
    let mut buf = vec![0u8; arp.len()];
    arp.build(&mut buf).unwrap();
    assert!(matches!(
        net.dp.process(lan, &buf, net.now),
        Verdict::Forward {
            vlan: VlanAction::Keep,
            ..
        }
    ));
}

#[test]
fn a_full_table_refuses_new_connections() {
    let r = three_hop(1);
    let options = Options {
        sessions: 4,
        admission: Admission::Refuse,
        ..Options::default()
    };
    let mut net = Net::new(r, &options);
    for i in 0..4 {
        assert!(
            net.send_lan(tcp_frame((client(i), 1), (SERVER, 80), TcpFlags::SYN, b""))
                .exit
                .is_ok()
        );
    }
    let refused = net.send_lan(tcp_frame((client(9), 1), (SERVER, 80), TcpFlags::SYN, b""));
    assert_eq!(refused.exit, Err(DropReason::TableFull));
    assert_eq!(net.dp.sessions().stats().refused, 1);
    // Existing sessions still pass.
    assert!(
        net.send_lan(tcp_frame((client(0), 1), (SERVER, 80), TcpFlags::ACK, b""))
            .exit
            .is_ok()
    );
}

#[test]
fn reset_ends_the_session_and_idle_sessions_expire() {
    let r = three_hop(1);
    let mut net = Net::new(
        r,
        &Options {
            sessions: 64,
            ..Options::default()
        },
    );
    net.send_lan(tcp_frame((client(1), 1), (SERVER, 80), TcpFlags::SYN, b""));
    net.send_lan(tcp_frame((client(2), 1), (SERVER, 80), TcpFlags::SYN, b""));
    let ids: Vec<_> = net.dp.sessions().ids().collect();
    net.events();
    let rst = net.send_wan(tcp_frame((SERVER, 80), (client(1), 1), TcpFlags::RST, b""));
    assert_eq!(rst.visited.len(), 3, "the RST walks the whole chain");
    assert_eq!(net.dp.counters().sessions_reset, 1);
    assert!(
        net.events().is_empty(),
        "no continuation opened behind the RST"
    );
    // The reset session ends after its short timeout (2 s).
    net.dp.tick(net.now + Nanos::from_secs(3));
    assert_eq!(net.dp.sessions().len(), 1);
    let removed = net.events();
    assert_eq!(removed.len(), 1);
    assert!(matches!(removed[0], Event::Remove(id) if ids.contains(&id)));
    // 31 s later the half-open one (30 s) is gone.
    net.dp.tick(net.now + Nanos::from_secs(31));
    assert_eq!(net.dp.sessions().len(), 0);
    assert!(matches!(net.events()[..], [Event::Remove(_)]));
}

#[test]
fn an_aged_session_waits_half_its_timeout_and_asks_for_rules_again() {
    let r = three_hop(1);
    let mut net = Net::new(
        r,
        &Options {
            sessions: 64,
            ..Options::default()
        },
    );
    let syn = tcp_frame((client(1), 1), (SERVER, 80), TcpFlags::SYN, b"");
    net.send_lan(syn);
    assert!(
        net.events().is_empty(),
        "no rules for a connection still opening"
    );
    net.send_wan(tcp_frame(
        (SERVER, 80),
        (client(1), 1),
        TcpFlags::SYN | TcpFlags::ACK,
        b"",
    ));
    let id = net.dp.sessions().ids().next().unwrap();
    assert!(
        matches!(net.events()[..], [Event::Install(i)] if i == id),
        "rules once the responder answered"
    );
    // The NIC finds a rule idle (half of the established 300 s) ten
    // minutes on: the session has the other half left in software.
    let aged = net.now + Nanos::from_secs(600);
    net.dp.demote(id, aged);
    net.dp.tick(aged + Nanos::from_secs(149));
    assert!(net.dp.session(id).is_some());
    // A packet within it asks for rules again, once.
    net.now = aged + Nanos::from_secs(149);
    let ack = tcp_frame((client(1), 1), (SERVER, 80), TcpFlags::ACK, b"");
    net.send_lan(ack.clone());
    assert!(matches!(net.events()[..], [Event::Install(i)] if i == id));
    net.send_lan(ack);
    assert!(net.events().is_empty());
    // Aged again and silent: gone after the other half.
    let aged = net.now + Nanos::from_secs(150);
    net.dp.demote(id, aged);
    net.dp.tick(aged + Nanos::from_secs(151));
    assert!(net.dp.session(id).is_none());
}

#[test]
fn an_overloaded_instance_is_skipped_and_the_service_asks_for_more() {
    let r = rig(&[Svc::new("fw", 2)]);
    let (a, b) = (r.instances[0][0], r.instances[0][1]);
    let options = Options {
        meter_tau: Nanos::from_millis(1),
        ..Options::default()
    };
    let mut net = Net::new(r, &options);
    net.dp.tick(Nanos(0));
    net.dp.add_counts(a, 950_000_000 / 8, 1);
    net.dp.tick(Nanos::SECOND);
    net.now = Nanos::SECOND;
    for i in 0..50 {
        let w = net.send_lan(tcp_frame((client(i), 1), (SERVER, 80), TcpFlags::SYN, b""));
        assert_eq!(w.visited, [b]);
    }
    assert_eq!(
        net.dp.next_scale_request(),
        None,
        "one instance still has headroom"
    );
    net.dp.add_counts(b, 950_000_000 / 8, 1);
    net.dp.add_counts(a, 950_000_000 / 8, 1);
    net.dp.tick(Nanos::from_secs(2));
    let req = net
        .dp
        .next_scale_request()
        .expect("both full: a scale request");
    assert_eq!((req.instances, req.capacity_bps), (2, 2_000_000_000));
}

#[test]
fn an_icmp_error_follows_the_path_of_the_connection_it_is_about() {
    let r = three_hop(3);
    let lan = r.lan;
    let mut net = Net::new(r, &Options::default());
    let syn = tcp_frame((client(1), 40000), (SERVER, 443), TcpFlags::SYN, b"");
    let out = net.send_lan(syn.clone());
    // A router beyond wan says the server is unreachable, quoting the SYN.
    let spec = FrameSpec {
        dst_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
        src_mac: EthernetAddress([2, 0, 0, 0, 0, 9]),
        vlans: &[],
        net: NetSpec::Ip(
            IpSpec::V4 {
                src: Ipv4Addr::new(192, 0, 2, 254),
                dst: client(1),
                ttl: 64,
                dscp: 0,
                ident: 1,
                frag: None,
                options: &[],
            },
            L4Spec::Icmpv4(Icmpv4Repr::Error {
                ty: Icmpv4Type::DstUnreachable,
                code: 1,
                rest: [0; 4],
            }),
        ),
        payload: &syn[14..14 + 28],
    };
    let mut icmp = vec![0u8; spec.len()];
    spec.build(&mut icmp).unwrap();
    let back = net.send_wan(icmp);
    assert_eq!(back.exit, Ok(lan));
    let mut expected = out.visited;
    expected.reverse();
    assert_eq!(back.visited, expected);
    assert_eq!(
        net.dp.sessions().len(),
        1,
        "no session for the error itself"
    );
    // An error about nothing known is dropped.
    let stray = tcp_frame((client(5), 1), (SERVER, 1), TcpFlags::SYN, b"");
    let spec = FrameSpec {
        payload: &stray[14..14 + 28],
        ..spec
    };
    let mut icmp = vec![0u8; spec.len()];
    spec.build(&mut icmp).unwrap();
    assert_eq!(net.send_wan(icmp).exit, Err(DropReason::NoSession));
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    let r = three_hop(4);
    let mut net = Net::new(r, &Options::default());
    let frag = |i: u32, offset: u16, more: bool, l4: L4Spec| {
        let spec = FrameSpec {
            dst_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            src_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            vlans: &[],
            net: NetSpec::Ip(
                IpSpec::V4 {
                    src: client(i),
                    dst: SERVER,
                    ttl: 64,
                    dscp: 0,
                    ident: 4242,
                    frag: Some((offset, more)),
                    options: &[],
                },
                l4,
            ),
            payload: &[7; 64],
        };
        let mut buf = vec![0u8; spec.len()];
        spec.build(&mut buf).unwrap();
        buf
    };
    for i in 0..20 {
        let first = net.send_lan(frag(
            i,
            0,
            true,
            L4Spec::Udp {
                src_port: 5000,
                dst_port: 6000,
            },
        ));
        let later = net.send_lan(frag(i, 72, false, L4Spec::Raw(IpProtocol::Udp)));
        assert_eq!(later.visited, first.visited, "datagram {i}");
    }
    assert_eq!(net.dp.counters().fragments_matched, 20);
    assert_eq!(net.dp.sessions().len(), 20);
}

#[test]
fn a_new_generation_keeps_sessions_on_instances_that_remain() {
    let r = three_hop(2);
    let mut net = Net::new(r, &Options::default());
    let mut before = Vec::new();
    for i in 0..40 {
        before.push(
            net.send_lan(tcp_frame((client(i), 1), (SERVER, 80), TcpFlags::SYN, b""))
                .visited,
        );
    }
    let names = |net: &Net, path: &[InstanceId]| -> Vec<std::string::String> {
        path.iter()
            .map(|i| {
                std::string::String::from(net.dp.config().instance(*i).unwrap().name().as_str())
            })
            .collect()
    };
    let named_before: Vec<_> = before.iter().map(|p| names(&net, p)).collect();
    // The new generation lists more instances (ids shift) and drops ids-1.
    let next = rig_with(
        &[Svc::new("fw", 3), Svc::new("ids", 1), Svc::new("nat", 2)],
        |_, _| {},
    );
    net.dp.apply(next.config, net.now);
    for (i, old) in named_before.iter().enumerate() {
        let after = net
            .send_lan(tcp_frame(
                (client(i as u32), 1),
                (SERVER, 80),
                TcpFlags::ACK,
                b"",
            ))
            .visited;
        let after = names(&net, &after);
        assert_eq!(after[0], old[0], "the firewall instance remains");
        assert_eq!(after[2], old[2]);
        assert_eq!(after[1], "ids-0", "ids-1 is gone: its sessions moved");
    }
}

#[test]
fn the_packet_path_allocates_nothing() {
    let r = three_hop(4);
    let options = Options {
        sessions: 4096,
        ..Options::default()
    };
    let mut net = Net::new(r, &options);
    let frames: Vec<Vec<u8>> = (0..500)
        .map(|i| tcp_frame((client(i), 1), (SERVER, 80), TcpFlags::SYN, b""))
        .collect();
    let lan = net.rig_lan;
    // Warm up: the first process() call sizes nothing, but be fair.
    net.dp.process(lan, &frames[0], net.now);
    let before = alloc_count::count();
    for f in &frames[1..] {
        let v = net.dp.process(lan, f, net.now); // new sessions
        assert!(matches!(v, Verdict::Forward { .. }));
    }
    for f in &frames {
        net.dp.process(lan, f, net.now); // established
    }
    assert_eq!(
        alloc_count::count() - before,
        0,
        "allocations on the packet path"
    );
}

#[test]
fn bursts_decide_exactly_as_single_packets() {
    // The same frames through two data paths, one packet at a time and in
    // bursts: repeated flows within a burst (the second must find the
    // session the first opened), resets, evictions from a small table,
    // and frames that do not parse.
    let options = Options {
        sessions: 48,
        admission: Admission::EvictOldestIdle,
        ..Options::default()
    };
    let mut one = Net::new(three_hop(3), &options);
    let mut many = Net::new(three_hop(3), &options);
    let lan = one.rig_lan;
    let mut frames = Vec::new();
    for i in 0..400u32 {
        let flags = match i % 7 {
            0 => TcpFlags::RST,
            1 | 2 => TcpFlags::SYN,
            _ => TcpFlags::ACK,
        };
        let flow = (i * 37) % 61;
        frames.push(tcp_frame((client(flow), 1000), (SERVER, 80), flags, b""));
        if i % 50 == 0 {
            frames.push(vec![0u8; 20]);
        }
    }
    let singles: Vec<Verdict> = frames
        .iter()
        .map(|f| one.dp.process(lan, f, one.now))
        .collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let mut bursts = vec![Verdict::ToHost; refs.len()];
    for (chunk, out) in refs.chunks(20).zip(bursts.chunks_mut(20)) {
        many.dp.process_burst(lan, chunk, many.now, out);
    }
    assert_eq!(singles, bursts);
    assert_eq!(one.dp.counters(), many.dp.counters());
    assert_eq!(one.dp.sessions().len(), many.dp.sessions().len());
    assert_eq!(one.events(), many.events());
}
