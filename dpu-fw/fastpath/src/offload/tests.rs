//! The offload layer end to end, in memory: the software eSwitch carries
//! frames between ports, tiny reflector instances send them back, misses
//! go to the fast path, and the manager installs the rules it asks for.

extern crate std;
use std::collections::HashMap;
use std::vec;
use std::vec::Vec;

use core::net::{IpAddr, Ipv4Addr};

use chaingate_shared::config::{InstanceState, Travel};
use chaingate_shared::{InstanceId, Nanos, PortId};

use super::manager::{ManagerOptions, OffloadManager};
use super::refuse::Refusing;
use super::soft::{Outcome, SoftSwitch};
use super::{FlowOffload, Refusal};
use crate::datapath::{Datapath, Options, Verdict, VlanAction};
use crate::session::ConnState;
use crate::testing::{Rig, Svc, rig};
use crate::wire::build::{FrameSpec, IpSpec, L4Spec, NetSpec};
use crate::wire::rewrite::{self, End};
use crate::wire::tcp::{TcpFlags, TcpRepr};
use crate::wire::{EthernetAddress, FrameBuf, parse};

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const NAT_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

fn client(i: u32) -> Ipv4Addr {
    Ipv4Addr::from_bits(0x0A00_0000 + 2 + i)
}

fn tcp_frame(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: TcpFlags) -> Vec<u8> {
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
        payload: b"payload!",
    };
    let mut buf = vec![0u8; spec.len()];
    spec.build(&mut buf).unwrap();
    buf
}

/// A frame in a buffer with room for tags and outer headers.
struct Buf {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl Buf {
    fn new(frame: &[u8]) -> Self {
        let mut bytes = vec![0u8; frame.len() + 128];
        bytes[64..64 + frame.len()].copy_from_slice(frame);
        Self {
            bytes,
            start: 64,
            len: frame.len(),
        }
    }

    fn with<R>(&mut self, f: impl FnOnce(&mut FrameBuf<'_>) -> R) -> R {
        let mut fb = FrameBuf::new(&mut self.bytes, self.start, self.len).unwrap();
        let r = f(&mut fb);
        self.start = fb.start();
        self.len = fb.len();
        r
    }

    fn frame(&self) -> Vec<u8> {
        self.bytes[self.start..self.start + self.len].to_vec()
    }

    fn set(&mut self, frame: &[u8]) {
        *self = Self::new(frame);
    }
}

/// A source NAT instance with its own port pool.
struct Nat {
    back: HashMap<u16, (IpAddr, u16)>,
    out: HashMap<(IpAddr, u16), u16>,
    next: u16,
}

impl Nat {
    fn process(&mut self, frame: &mut [u8], travel: Travel) {
        let layers = *parse(frame).unwrap().outer();
        let key = *layers.key().unwrap();
        match travel {
            Travel::ToWan => {
                let from = (key.src(), key.src_port());
                let next = &mut self.next;
                let port = *self.out.entry(from).or_insert_with(|| {
                    *next += 1;
                    *next
                });
                self.back.insert(port, from);
                rewrite::set_addr(frame, &layers, End::Src, IpAddr::V4(NAT_ADDR)).unwrap();
                rewrite::set_port(frame, &layers, End::Src, port).unwrap();
            }
            Travel::ToLan => {
                if let Some(&(addr, port)) = self.back.get(&key.dst_port()) {
                    rewrite::set_addr(frame, &layers, End::Dst, addr).unwrap();
                    rewrite::set_port(frame, &layers, End::Dst, port).unwrap();
                }
            }
        }
    }
}

#[derive(Debug)]
struct Walk {
    exit: Option<PortId>,
    visited: Vec<InstanceId>,
    frame: Vec<u8>,
    /// Times the frame reached the fast path.
    fast_path: usize,
}

struct Node<B> {
    dp: Datapath,
    mgr: OffloadManager<B>,
    lan: PortId,
    wan: PortId,
    now: Nanos,
    nat_service: Option<chaingate_shared::ServiceId>,
    nats: HashMap<InstanceId, Nat>,
}

impl<B: FlowOffload> Node<B> {
    fn new(r: Rig, backend: B, options: &Options) -> Self {
        let dp = Datapath::new(r.config, options);
        let mgr = OffloadManager::new(backend, &dp, ManagerOptions::default());
        Self {
            dp,
            mgr,
            lan: r.lan,
            wan: r.wan,
            now: Nanos::from_secs(1),
            nat_service: None,
            nats: HashMap::new(),
        }
    }

    /// Hands the frame to an instance on `port` and returns the port it
    /// comes back on.
    fn instance(&mut self, port: PortId, buf: &mut Buf, visited: &mut Vec<InstanceId>) -> PortId {
        let instance = self
            .dp
            .config()
            .port_owner(port)
            .expect("a VF of an instance");
        visited.push(instance);
        let frame = buf.frame();
        let tag = parse(&frame)
            .unwrap()
            .outer()
            .vlans()
            .outer()
            .expect("a segment tag");
        let segment = self.dp.config().segment(tag).expect("a known segment");
        let inst = self.dp.config().instance(instance).unwrap().clone();
        assert_eq!(
            inst.attachment().entry(segment.travel),
            port,
            "handed to the right VF"
        );
        if Some(inst.service()) == self.nat_service {
            let mut f = frame.clone();
            let base = 20000 + 1000 * instance.index() as u16;
            self.nats
                .entry(instance)
                .or_insert_with(|| Nat {
                    back: HashMap::new(),
                    out: HashMap::new(),
                    next: base,
                })
                .process(&mut f, segment.travel);
            buf.set(&f);
        }
        inst.attachment().exit(segment.travel)
    }
}

/// The walk for the software eSwitch: rules first, misses to the fast path.
impl Node<SoftSwitch> {
    fn walk(&mut self, mut port: PortId, frame: &[u8]) -> Walk {
        let mut buf = Buf::new(frame);
        let mut visited = Vec::new();
        let mut fast_path = 0;
        for _ in 0..32 {
            let now = self.now;
            let outcome = buf.with(|fb| self.mgr.backend_mut().process(port, fb, now));
            let out = match outcome {
                Outcome::Out(p) => p,
                Outcome::Dropped(_) => {
                    return Walk {
                        exit: None,
                        visited,
                        frame: buf.frame(),
                        fast_path,
                    };
                }
                Outcome::ToSoftware(p) => {
                    fast_path += 1;
                    let verdict = self.dp.process(p, &buf.frame(), now);
                    self.mgr.handle_events(&mut self.dp);
                    match verdict {
                        Verdict::Forward { port: out, vlan } => {
                            buf.with(|fb| apply(fb, vlan));
                            out
                        }
                        _ => {
                            return Walk {
                                exit: None,
                                visited,
                                frame: buf.frame(),
                                fast_path,
                            };
                        }
                    }
                }
            };
            if out == self.lan || out == self.wan {
                return Walk {
                    exit: Some(out),
                    visited,
                    frame: buf.frame(),
                    fast_path,
                };
            }
            port = self.instance(out, &mut buf, &mut visited);
        }
        panic!("the frame loops");
    }
}

/// The walk for a backend that carries no frames: everything is software.
impl Node<Refusing> {
    fn walk(&mut self, mut port: PortId, frame: &[u8]) -> Walk {
        let mut buf = Buf::new(frame);
        let mut visited = Vec::new();
        for fast_path in 1..=32 {
            let verdict = self.dp.process(port, &buf.frame(), self.now);
            self.mgr.handle_events(&mut self.dp);
            let Verdict::Forward { port: out, vlan } = verdict else {
                return Walk {
                    exit: None,
                    visited,
                    frame: buf.frame(),
                    fast_path,
                };
            };
            buf.with(|fb| apply(fb, vlan));
            if out == self.lan || out == self.wan {
                return Walk {
                    exit: Some(out),
                    visited,
                    frame: buf.frame(),
                    fast_path,
                };
            }
            port = self.instance(out, &mut buf, &mut visited);
        }
        panic!("the frame loops");
    }
}

fn apply(fb: &mut FrameBuf<'_>, vlan: VlanAction) {
    vlan.apply(fb).unwrap();
}

fn three_hop(n: usize) -> Rig {
    rig(&[Svc::new("fw", n), Svc::new("ids", n), Svc::new("nat", n)])
}

#[test]
fn only_the_first_packet_reaches_the_fast_path_in_either_direction() {
    let mut node = Node::new(three_hop(3), SoftSwitch::new(10_000), &Options::default());
    let (lan, wan) = (node.lan, node.wan);
    let first = node.walk(
        lan,
        &tcp_frame((client(1), 4000), (SERVER, 443), TcpFlags::SYN),
    );
    assert_eq!(first.exit, Some(wan));
    assert_eq!(
        first.fast_path, 1,
        "the first packet, once; its later hops by rules"
    );
    assert_eq!(node.mgr.stats().sessions_offloaded, 1);
    assert_eq!(node.mgr.stats().rules, 8, "3 hops: 4 steps each way");
    let ports = node.dp.config().ports().len();
    assert_eq!(
        node.mgr.backend().len(),
        2 * ports + 8,
        "and a jump and a miss rule per port"
    );
    for i in 0..10 {
        let out = node.walk(
            lan,
            &tcp_frame((client(1), 4000), (SERVER, 443), TcpFlags::ACK),
        );
        assert_eq!((out.exit, out.fast_path), (Some(wan), 0), "packet {i}");
        assert_eq!(out.visited, first.visited);
        let back = node.walk(
            wan,
            &tcp_frame((SERVER, 443), (client(1), 4000), TcpFlags::ACK),
        );
        assert_eq!((back.exit, back.fast_path), (Some(lan), 0));
        let mut expected = first.visited.clone();
        expected.reverse();
        assert_eq!(back.visited, expected);
        assert_eq!(
            back.frame,
            tcp_frame((SERVER, 443), (client(1), 4000), TcpFlags::ACK),
            "tags gone"
        );
    }
    assert_eq!(
        node.dp.counters().forwarded,
        1,
        "the fast path forwarded one packet in all"
    );
}

#[test]
fn the_answer_to_a_syn_is_learnt_from_counters() {
    let options = Options {
        sessions: 64,
        ..Options::default()
    };
    let mut node = Node::new(three_hop(1), SoftSwitch::new(10_000), &options);
    let (lan, wan) = (node.lan, node.wan);
    for i in 0..2 {
        node.walk(lan, &tcp_frame((client(i), 1), (SERVER, 80), TcpFlags::SYN));
    }
    // Connection 0 is answered, by rules alone; connection 1 is not.
    let answer = node.walk(
        wan,
        &tcp_frame((SERVER, 80), (client(0), 1), TcpFlags::SYN | TcpFlags::ACK),
    );
    assert_eq!((answer.exit, answer.fast_path), (Some(lan), 0));
    let state = |node: &Node<SoftSwitch>, i: u32| {
        node.dp
            .sessions()
            .ids()
            .filter_map(|id| node.dp.session(id))
            .find(|s| {
                s.key().src() == IpAddr::V4(client(i)) || s.key().dst() == IpAddr::V4(client(i))
            })
            .map(|s| s.conn())
    };
    assert_eq!(state(&node, 0), Some(ConnState::Opening), "not looked yet");
    node.now = node.now + Nanos::from_secs(5);
    node.mgr.poll(&mut node.dp, node.now);
    assert_eq!(state(&node, 0), Some(ConnState::Established));
    assert_eq!(state(&node, 1), Some(ConnState::Opening));
    // Past the opening timeout (30 s) but well within the established one
    // (300 s): only the unanswered connection is gone.
    for s in [20, 40] {
        node.now = node.now + Nanos::from_secs(s);
        node.dp.tick(node.now);
        node.mgr.handle_events(&mut node.dp);
    }
    assert_eq!(state(&node, 0), Some(ConnState::Established));
    assert_eq!(state(&node, 1), None);
}

#[test]
fn fin_and_rst_reach_the_fast_path_and_end_offloaded_sessions() {
    let options = Options {
        sessions: 64,
        ..Options::default()
    };
    let mut node = Node::new(three_hop(1), SoftSwitch::new(10_000), &options);
    let (lan, wan) = (node.lan, node.wan);
    let base = node.mgr.backend().len();
    let to_server = |i, flags| tcp_frame((client(i), 1), (SERVER, 80), flags);
    let to_client = |i, flags| tcp_frame((SERVER, 80), (client(i), 1), flags);
    for i in 0..2 {
        node.walk(lan, &to_server(i, TcpFlags::SYN));
        node.walk(wan, &to_client(i, TcpFlags::SYN | TcpFlags::ACK));
        assert_eq!(node.walk(lan, &to_server(i, TcpFlags::ACK)).fast_path, 0);
    }
    assert_eq!(node.mgr.backend().len(), base + 2 * 8);
    // Connection 0 closes with FINs both ways, connection 1 is reset: every
    // such segment walks its chain in software, and is delivered.
    for (port, frame) in [
        (lan, to_server(0, TcpFlags::FIN | TcpFlags::ACK)),
        (wan, to_client(0, TcpFlags::FIN | TcpFlags::ACK)),
        (wan, to_client(1, TcpFlags::RST)),
    ] {
        let out = node.walk(port, &frame);
        assert_eq!(out.visited.len(), 3);
        assert_eq!(out.fast_path, 4, "each hop and the way out in software");
        assert_eq!(out.exit, Some(if port == lan { wan } else { lan }));
    }
    // The last ACK of the close still goes by rules.
    assert_eq!(node.walk(lan, &to_server(0, TcpFlags::ACK)).fast_path, 0);
    node.now = node.now + Nanos::from_secs(16);
    node.dp.tick(node.now);
    node.mgr.handle_events(&mut node.dp);
    assert_eq!(node.dp.sessions().len(), 0, "closed (15 s) and reset (2 s)");
    assert_eq!(node.mgr.backend().len(), base, "and their rules removed");
    assert_eq!(node.mgr.stats().sessions_offloaded, 0);
}

#[test]
fn a_nat_hop_gets_its_continuation_offloaded_too() {
    let r = three_hop(3);
    let nat = r.services[2];
    let mut node = Node::new(r, SoftSwitch::new(10_000), &Options::default());
    node.nat_service = Some(nat);
    let (lan, wan) = (node.lan, node.wan);
    for i in 0..20 {
        let out = node.walk(
            lan,
            &tcp_frame((client(i), 5555), (SERVER, 443), TcpFlags::SYN),
        );
        assert_eq!(
            (out.exit, out.fast_path),
            (Some(wan), 2),
            "the flow and its continuation"
        );
        let left = *parse(&out.frame).unwrap().key().unwrap();
        assert_eq!(left.src(), IpAddr::V4(NAT_ADDR));
        let reply = tcp_frame(
            (SERVER, 443),
            (NAT_ADDR, left.src_port()),
            TcpFlags::SYN | TcpFlags::ACK,
        );
        let back = node.walk(wan, &reply);
        assert_eq!(
            (back.exit, back.fast_path),
            (Some(lan), 0),
            "flow {i}: all by rules"
        );
        let mut expected = out.visited.clone();
        expected.reverse();
        assert_eq!(back.visited, expected);
        let arrived = *parse(&back.frame).unwrap().key().unwrap();
        assert_eq!(arrived.dst(), IpAddr::V4(client(i)));
        let again = node.walk(
            lan,
            &tcp_frame((client(i), 5555), (SERVER, 443), TcpFlags::ACK),
        );
        assert_eq!((again.fast_path, &again.visited), (0, &out.visited));
    }
}

#[test]
fn an_instance_going_down_gets_its_sessions_new_rules() {
    let mut node = Node::new(three_hop(3), SoftSwitch::new(10_000), &Options::default());
    let (lan, wan) = (node.lan, node.wan);
    let mut paths = Vec::new();
    for i in 0..30 {
        paths.push(
            node.walk(lan, &tcp_frame((client(i), 1), (SERVER, 80), TcpFlags::SYN))
                .visited,
        );
    }
    let victim = paths[0][1];
    node.dp
        .set_instance_state(victim, InstanceState::Down, node.now)
        .unwrap();
    node.mgr.handle_events(&mut node.dp);
    for (i, before) in paths.iter().enumerate() {
        let out = node.walk(
            lan,
            &tcp_frame((client(i as u32), 1), (SERVER, 80), TcpFlags::ACK),
        );
        assert_eq!(
            (out.exit, out.fast_path),
            (Some(wan), 0),
            "flow {i}: rules replaced, not removed"
        );
        assert!(!out.visited.contains(&victim));
        assert_eq!((out.visited[0], out.visited[2]), (before[0], before[2]));
    }
}

#[test]
fn a_full_rule_table_leaves_sessions_in_software_without_drops() {
    // Room for the base rules (2 for each of 8 ports) and two sessions (8
    // rules each).
    let options = Options {
        sessions: 64,
        ..Options::default()
    };
    let mut node = Node::new(three_hop(2), SoftSwitch::new(16 + 16), &options);
    let (lan, wan) = (node.lan, node.wan);
    for i in 0..10 {
        node.walk(lan, &tcp_frame((client(i), 1), (SERVER, 80), TcpFlags::SYN));
    }
    assert_eq!(node.mgr.stats().sessions_offloaded, 2);
    assert_eq!(node.mgr.stats().refusals(Refusal::Full), 8);
    assert_eq!(
        node.mgr.backend().len(),
        16 + 16,
        "refused sessions leave no rules behind"
    );
    for round in 0..3 {
        for i in 0..10 {
            let out = node.walk(lan, &tcp_frame((client(i), 1), (SERVER, 80), TcpFlags::ACK));
            assert_eq!(out.exit, Some(wan), "round {round}, flow {i}: delivered");
            assert_eq!(
                out.fast_path > 0,
                i >= 2,
                "software path exactly for the refused ones"
            );
        }
    }
    assert_eq!(node.dp.counters().dropped.iter().sum::<u64>(), 0);
    // The two offloaded connections are reset; once they are gone, the
    // next reconciliation gives their room to two of the waiting ones.
    for i in 0..2 {
        node.walk(lan, &tcp_frame((client(i), 1), (SERVER, 80), TcpFlags::RST));
    }
    for s in [3, 6] {
        node.now = node.now + Nanos::from_secs(s);
        node.dp.tick(node.now);
        node.mgr.handle_events(&mut node.dp);
        node.mgr.poll(&mut node.dp, node.now);
        node.mgr.handle_events(&mut node.dp);
    }
    assert_eq!(node.dp.sessions().len(), 8);
    assert_eq!(node.mgr.stats().sessions_offloaded, 2);
    let offloaded = (2..10)
        .filter(|&i| {
            let out = node.walk(lan, &tcp_frame((client(i), 1), (SERVER, 80), TcpFlags::ACK));
            assert_eq!(out.exit, Some(wan));
            out.fast_path == 0
        })
        .count();
    assert_eq!(offloaded, 2, "refused sessions get the room that freed up");
}

#[test]
fn a_refusing_backend_means_all_software_and_no_loss() {
    let mut node = Node::new(three_hop(2), Refusing::default(), &Options::default());
    let (lan, wan) = (node.lan, node.wan);
    for i in 0..20 {
        let out = node.walk(lan, &tcp_frame((client(i), 1), (SERVER, 80), TcpFlags::SYN));
        assert_eq!(out.exit, Some(wan));
        assert_eq!(out.visited.len(), 3);
    }
    assert_eq!(node.mgr.stats().refusals(Refusal::Full), 20);
    assert_eq!(node.mgr.stats().base_refused, 16);
    assert_eq!(node.dp.counters().dropped.iter().sum::<u64>(), 0);
}

#[test]
fn idle_sessions_lose_their_rules_and_busy_ones_keep_them() {
    let options = Options {
        sessions: 64,
        ..Options::default()
    };
    let mut node = Node::new(three_hop(1), SoftSwitch::new(10_000), &options);
    let (lan, wan) = (node.lan, node.wan);
    let busy = |i| tcp_frame((client(i), 1), (SERVER, 80), TcpFlags::ACK);
    // Two established connections.
    for i in 0..2 {
        node.walk(lan, &tcp_frame((client(i), 1), (SERVER, 80), TcpFlags::SYN));
        node.walk(
            wan,
            &tcp_frame((SERVER, 80), (client(i), 1), TcpFlags::SYN | TcpFlags::ACK),
        );
    }
    let base = 2 * node.dp.config().ports().len();
    assert_eq!(node.mgr.backend().len(), base + 2 * 8);
    // Ten minutes: connection 0 sends every 10 s through its rules only;
    // connection 1 is silent.
    let start = node.now;
    for s in (10..=600).step_by(10) {
        node.now = start + Nanos::from_secs(s);
        let out = node.walk(lan, &busy(0));
        assert_eq!(out.fast_path, 0);
        node.mgr.poll(&mut node.dp, node.now);
        node.dp.tick(node.now);
        node.mgr.handle_events(&mut node.dp);
    }
    assert_eq!(
        node.dp.sessions().len(),
        1,
        "the silent one timed out, the busy one did not"
    );
    assert_eq!(node.mgr.backend().len(), base + 8, "and its rules are gone");
    assert_eq!(node.walk(lan, &busy(0)).fast_path, 0);
}

#[test]
fn rule_counters_feed_the_instance_meters() {
    let options = Options {
        meter_tau: Nanos::from_millis(1),
        ..Options::default()
    };
    let mut node = Node::new(rig(&[Svc::new("fw", 1)]), SoftSwitch::new(10_000), &options);
    let (lan, fw) = (node.lan, rig(&[Svc::new("fw", 1)]).instances[0][0]);
    node.walk(lan, &tcp_frame((client(1), 1), (SERVER, 80), TcpFlags::SYN));
    node.mgr.poll(&mut node.dp, Nanos::from_secs(1));
    node.dp.tick(Nanos::from_secs(1));
    let frame = tcp_frame((client(1), 1), (SERVER, 80), TcpFlags::ACK);
    for _ in 0..1000 {
        assert_eq!(node.walk(lan, &frame).fast_path, 0);
    }
    node.mgr.poll(&mut node.dp, Nanos::from_secs(2));
    node.dp.tick(Nanos::from_secs(2));
    let load = node.dp.meters().load(fw).unwrap();
    // 1000 frames in one second, counted as the rule matched them (before
    // the segment tag was pushed).
    let expected = 1000.0 * frame.len() as f64 * 8.0;
    assert!(
        (load.bps - expected).abs() < expected * 0.01,
        "{} vs {expected}",
        load.bps
    );
}

#[test]
fn rules_wait_for_the_packet_count_and_installation_is_paced() {
    let options = Options {
        offload_after: 3,
        ..Options::default()
    };
    let r = three_hop(1);
    let dp = Datapath::new(r.config.clone(), &options);
    let manager = ManagerOptions {
        install_budget: 16,
        max_pending: 4,
        ..ManagerOptions::default()
    };
    let mgr = OffloadManager::new(SoftSwitch::new(10_000), &dp, manager);
    let mut node = Node {
        dp,
        mgr,
        lan: r.lan,
        wan: r.wan,
        now: Nanos::from_secs(1),
        nat_service: None,
        nats: HashMap::new(),
    };
    let lan = node.lan;
    let syn = |i| tcp_frame((client(i), 1), (SERVER, 80), TcpFlags::SYN);
    // A session is offloaded at its third packet, not before: the first
    // two walk all three hops in software (four visits each).
    assert_eq!(node.walk(lan, &syn(0)).fast_path, 4);
    assert_eq!(node.walk(lan, &syn(0)).fast_path, 4);
    assert_eq!(node.mgr.stats().sessions_offloaded, 0);
    assert_eq!(
        node.walk(lan, &syn(0)).fast_path,
        1,
        "the third asks for rules at once"
    );
    assert_eq!(node.mgr.stats().sessions_offloaded, 1);
    assert_eq!(node.walk(lan, &syn(0)).fast_path, 0);
    // Many sessions at once: two installed per call (16 rules), four may
    // wait in the queue, the rest stay in software for the moment.
    for i in 1..=10 {
        for _ in 0..3 {
            node.dp.process(lan, &syn(i), node.now);
        }
    }
    node.mgr.handle_events(&mut node.dp);
    assert_eq!(node.mgr.stats().sessions_offloaded, 1 + 2);
    assert_eq!(node.mgr.pending(), 2);
    assert_eq!(node.mgr.stats().refusals(Refusal::Budget), 6);
    node.mgr.handle_events(&mut node.dp);
    assert_eq!(node.mgr.stats().sessions_offloaded, 1 + 4);
    assert_eq!(node.mgr.pending(), 0);
    // Reconciliation queues the ones left out, and calls drain them.
    for round in 1..=4 {
        node.mgr.poll(&mut node.dp, Nanos::from_secs(10 * round));
        node.mgr.handle_events(&mut node.dp);
        node.mgr.handle_events(&mut node.dp);
    }
    assert_eq!(node.mgr.stats().sessions_offloaded, 11);
    for i in 0..=10 {
        assert_eq!(node.walk(lan, &syn(i)).fast_path, 0, "session {i}");
    }
}
