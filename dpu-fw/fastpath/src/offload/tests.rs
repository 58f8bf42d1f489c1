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
use super::soft::{Mlx5, Outcome, Profile, SoftSwitch};
use super::{FlowOffload, Refusal};
use crate::datapath::{Datapath, Options, Verdict, VlanAction};
use crate::testing::{Rig, Svc, rig, rig_at};
use crate::wire::build::{FrameSpec, IpSpec, L4Spec, NetSpec};
use crate::wire::rewrite::{self, End};
use crate::wire::tcp::{TcpFlags, TcpRepr};
use crate::wire::{EthernetAddress, FrameBuf, parse};

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const NAT_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

fn client(i: u32) -> Ipv4Addr {
    Ipv4Addr::from_bits(0x0A00_0000 + 2 + i)
}

/// An IPv4 frame from `src` to `dst` with `l4` and `payload`.
fn v4_frame(src: Ipv4Addr, dst: Ipv4Addr, l4: L4Spec, payload: &[u8]) -> Vec<u8> {
    let spec = FrameSpec {
        dst_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
        src_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
        vlans: &[],
        net: NetSpec::Ip(IpSpec::v4(src, dst), l4),
        payload,
    };
    let mut buf = vec![0u8; spec.len()];
    spec.build(&mut buf).unwrap();
    buf
}

fn udp_frame(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let l4 = L4Spec::Udp {
        src_port: src.1,
        dst_port: dst.1,
    };
    v4_frame(src.0, dst.0, l4, b"datagram")
}

fn tcp_frame(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: TcpFlags) -> Vec<u8> {
    let l4 = L4Spec::Tcp(TcpRepr {
        src_port: src.1,
        dst_port: dst.1,
        seq: 1,
        ack: 1,
        flags,
        window: 1000,
    });
    v4_frame(src.0, dst.0, l4, b"payload!")
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
        Self::with(r, backend, options, ManagerOptions::default())
    }

    fn with(r: Rig, mut backend: B, options: &Options, manager: ManagerOptions) -> Self {
        let attr = super::PortAttr::for_rules(100_000, 1024);
        backend.configure(&attr).unwrap();
        backend.start().unwrap();
        let dp = Datapath::new(r.config, options);
        let mgr = OffloadManager::new(backend, &dp, manager);
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
                        Verdict::Forward {
                            port: out, vlan, ..
                        } => {
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
            let Verdict::Forward {
                port: out, vlan, ..
            } = verdict
            else {
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

/// The eSwitch of a BlueField (mlx5 profile, one eSwitch) of `capacity`
/// rules.
fn mlx5(capacity: usize) -> SoftSwitch {
    SoftSwitch::with_profile(capacity, Profile::Mlx5(Mlx5::default()))
}

fn three_hop(n: usize) -> Rig {
    rig(&[Svc::new("fw", n), Svc::new("ids", n), Svc::new("nat", n)])
}

impl Node<SoftSwitch> {
    /// Opens connection `i` to the server (SYN from lan, SYN-ACK from
    /// wan) and returns the path.
    fn open(&mut self, i: u32, port: u16) -> Vec<InstanceId> {
        let (lan, wan) = (self.lan, self.wan);
        let syn = self.walk(
            lan,
            &tcp_frame((client(i), port), (SERVER, 80), TcpFlags::SYN),
        );
        assert_eq!(syn.exit, Some(wan));
        let answer = self.walk(
            wan,
            &tcp_frame(
                (SERVER, 80),
                (client(i), port),
                TcpFlags::SYN | TcpFlags::ACK,
            ),
        );
        assert_eq!(answer.exit, Some(lan));
        syn.visited
    }

    fn data(&mut self, i: u32, port: u16) -> Walk {
        let lan = self.lan;
        self.walk(
            lan,
            &tcp_frame((client(i), port), (SERVER, 80), TcpFlags::ACK),
        )
    }

    fn reply(&mut self, i: u32, port: u16) -> Walk {
        let wan = self.wan;
        self.walk(
            wan,
            &tcp_frame((SERVER, 80), (client(i), port), TcpFlags::ACK),
        )
    }

    /// Moves time on by `s` seconds: the manager polls, the data path
    /// ticks.
    fn wait(&mut self, s: u64) {
        self.now = self.now + Nanos::from_secs(s);
        self.mgr.poll(&mut self.dp, self.now);
        self.dp.tick(self.now);
        self.mgr.handle_events(&mut self.dp);
    }
}

#[test]
fn the_handshake_goes_through_software_and_everything_after_by_rules() {
    for profile in [Profile::Generic, Profile::Mlx5(Mlx5::default())] {
        let mut node = Node::new(
            three_hop(3),
            SoftSwitch::with_profile(10_000, profile.clone()),
            &Options::default(),
        );
        let (lan, wan) = (node.lan, node.wan);
        let syn = node.walk(
            lan,
            &tcp_frame((client(1), 4000), (SERVER, 443), TcpFlags::SYN),
        );
        assert_eq!(syn.exit, Some(wan));
        assert_eq!(syn.fast_path, 4, "an opening connection gets no rules");
        assert_eq!(node.mgr.stats().sessions_offloaded, 0);
        let answer = node.walk(
            wan,
            &tcp_frame(
                (SERVER, 443),
                (client(1), 4000),
                TcpFlags::SYN | TcpFlags::ACK,
            ),
        );
        assert_eq!(answer.fast_path, 4, "the answer too, which asks for rules");
        assert_eq!(node.mgr.stats().sessions_offloaded, 1, "{profile:?}");
        assert_eq!(node.mgr.stats().rules, 8, "3 hops: 4 steps each way");
        let ports = node.dp.config().ports().len();
        assert_eq!(node.mgr.backend().len(), ports + 8, "and a jump per port");
        for i in 0..10 {
            let out = node.walk(
                lan,
                &tcp_frame((client(1), 4000), (SERVER, 443), TcpFlags::ACK),
            );
            assert_eq!((out.exit, out.fast_path), (Some(wan), 0), "packet {i}");
            assert_eq!(out.visited, syn.visited);
            let back = node.walk(
                wan,
                &tcp_frame((SERVER, 443), (client(1), 4000), TcpFlags::ACK),
            );
            assert_eq!((back.exit, back.fast_path), (Some(lan), 0));
            let mut expected = syn.visited.clone();
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
            8,
            "the fast path forwarded the handshake's hops only"
        );
        let refused: u64 = node.mgr.stats().refused.iter().sum();
        assert_eq!(refused, 0, "{:?}", node.mgr.refusal_reasons());
    }
}

#[test]
fn a_syn_flood_takes_no_rules_and_times_out() {
    let options = Options {
        sessions: 256,
        ..Options::default()
    };
    let mut node = Node::new(three_hop(1), mlx5(10_000), &options);
    let lan = node.lan;
    for i in 0..100 {
        node.walk(lan, &tcp_frame((client(i), 1), (SERVER, 80), TcpFlags::SYN));
    }
    assert_eq!(node.dp.sessions().len(), 100);
    assert_eq!(node.mgr.stats().rules, 0);
    node.wait(31);
    assert_eq!(node.dp.sessions().len(), 0, "the opening timeout (30 s)");
}

#[test]
fn fin_and_rst_reach_the_fast_path_and_end_offloaded_sessions() {
    let options = Options {
        sessions: 64,
        ..Options::default()
    };
    let mut node = Node::new(three_hop(1), mlx5(10_000), &options);
    let (lan, wan) = (node.lan, node.wan);
    let base = node.mgr.backend().len();
    let to_server = |i, flags| tcp_frame((client(i), 1), (SERVER, 80), flags);
    let to_client = |i, flags| tcp_frame((SERVER, 80), (client(i), 1), flags);
    for i in 0..2 {
        node.open(i, 1);
        assert_eq!(node.data(i, 1).fast_path, 0);
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
    // The last ACK of the close still goes by rules, made again with the
    // closing timeout's AGE.
    assert_eq!(node.data(0, 1).fast_path, 0);
    for _ in 0..17 {
        node.wait(1);
    }
    assert_eq!(node.dp.sessions().len(), 0, "closed (15 s) and reset (2 s)");
    assert_eq!(node.mgr.backend().len(), base, "and their rules removed");
    assert_eq!(node.mgr.stats().sessions_offloaded, 0);
}

#[test]
fn a_nat_hop_gets_its_continuation_offloaded_too() {
    let r = three_hop(3);
    let nat = r.services[2];
    let mut node = Node::new(r, mlx5(10_000), &Options::default());
    node.nat_service = Some(nat);
    let (lan, wan) = (node.lan, node.wan);
    for i in 0..20 {
        let out = node.walk(
            lan,
            &tcp_frame((client(i), 5555), (SERVER, 443), TcpFlags::SYN),
        );
        assert_eq!(out.exit, Some(wan));
        let left = *parse(&out.frame).unwrap().key().unwrap();
        assert_eq!(left.src(), IpAddr::V4(NAT_ADDR));
        let reply = |flags| tcp_frame((SERVER, 443), (NAT_ADDR, left.src_port()), flags);
        let back = node.walk(wan, &reply(TcpFlags::SYN | TcpFlags::ACK));
        assert_eq!(back.exit, Some(lan));
        let mut expected = out.visited.clone();
        expected.reverse();
        assert_eq!(back.visited, expected);
        let arrived = *parse(&back.frame).unwrap().key().unwrap();
        assert_eq!(arrived.dst(), IpAddr::V4(client(i)));
        // Established: the flow and its continuation are in hardware.
        let again = node.walk(
            lan,
            &tcp_frame((client(i), 5555), (SERVER, 443), TcpFlags::ACK),
        );
        assert_eq!((again.fast_path, &again.visited), (0, &out.visited));
        let back = node.walk(wan, &reply(TcpFlags::ACK));
        assert_eq!((back.exit, back.fast_path), (Some(lan), 0), "flow {i}");
        assert_eq!(back.visited, expected);
    }
}

#[test]
fn an_instance_going_down_gets_its_sessions_new_rules() {
    let mut node = Node::new(three_hop(3), mlx5(10_000), &Options::default());
    let wan = node.wan;
    let mut paths = Vec::new();
    for i in 0..30 {
        paths.push(node.open(i, 1));
    }
    let victim = paths[0][1];
    node.dp
        .set_instance_state(victim, InstanceState::Down, node.now)
        .unwrap();
    node.mgr.handle_events(&mut node.dp);
    for (i, before) in paths.iter().enumerate() {
        let out = node.data(i as u32, 1);
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
    // Room for the base jumps (one for each of 8 ports) and two sessions
    // (8 rules each).
    let options = Options {
        sessions: 64,
        ..Options::default()
    };
    let mut node = Node::new(three_hop(2), mlx5(8 + 16), &options);
    let wan = node.wan;
    for i in 0..10 {
        node.open(i, 1);
    }
    assert_eq!(node.mgr.stats().sessions_offloaded, 2);
    assert_eq!(
        node.mgr.stats().refusals(Refusal::Full),
        8,
        "{:?}",
        node.mgr.refusal_reasons()
    );
    assert_eq!(
        node.mgr.backend().len(),
        8 + 16,
        "refused sessions leave no rules behind"
    );
    for round in 0..3 {
        for i in 0..10 {
            let out = node.data(i, 1);
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
    let lan = node.lan;
    for i in 0..2 {
        node.walk(lan, &tcp_frame((client(i), 1), (SERVER, 80), TcpFlags::RST));
    }
    node.wait(3);
    node.wait(1);
    assert_eq!(node.dp.sessions().len(), 8);
    assert_eq!(node.mgr.stats().sessions_offloaded, 2);
    let offloaded = (2..10)
        .filter(|&i| {
            let out = node.data(i, 1);
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
        let back = node.walk(
            wan,
            &tcp_frame((SERVER, 80), (client(i), 1), TcpFlags::SYN | TcpFlags::ACK),
        );
        assert_eq!(back.exit, Some(lan));
    }
    assert_eq!(node.mgr.stats().refusals(Refusal::Full), 20);
    assert_eq!(node.mgr.stats().base_refused, 8);
    assert_eq!(node.dp.counters().dropped.iter().sum::<u64>(), 0);
}

#[test]
fn idle_sessions_age_out_and_one_way_ones_come_back() {
    let options = Options {
        sessions: 64,
        ..Options::default()
    };
    let mut node = Node::new(three_hop(1), mlx5(10_000), &options);
    // Three established connections: 0 talks both ways every 10 s, 1
    // only from lan, 2 is silent.
    for i in 0..3 {
        node.open(i, 1);
    }
    let base = node.dp.config().ports().len();
    assert_eq!(node.mgr.backend().len(), base + 3 * 8);
    let mut software = [0usize; 2];
    for _ in (10..=600).step_by(10) {
        node.wait(10);
        let out = node.data(0, 1);
        software[0] += out.fast_path;
        assert_eq!(out.exit, Some(node.wan));
        assert_eq!(node.reply(0, 1).fast_path, 0);
        let out = node.data(1, 1);
        assert_eq!(out.exit, Some(node.wan), "the one-way flow is delivered");
        software[1] += out.fast_path;
    }
    assert_eq!(software[0], 0, "a busy connection never leaves hardware");
    // The one-way connection's reply rule goes idle every 150 s (half the
    // established timeout): it comes back to software for one packet and
    // gets its rules again.
    assert!(
        (3..=4 * 4).contains(&software[1]),
        "one-way: {} software hops",
        software[1]
    );
    assert!(node.mgr.stats().aged >= 4, "{:?}", node.mgr.stats());
    assert_eq!(
        node.dp.sessions().len(),
        2,
        "the silent one timed out (150 s in hardware, 150 s in software)"
    );
    assert_eq!(node.mgr.backend().len(), base + 2 * 8);
}

#[test]
fn rule_counters_feed_the_instance_meters() {
    let options = Options {
        meter_tau: Nanos::from_millis(1),
        ..Options::default()
    };
    let r = rig(&[Svc::new("fw", 1)]);
    let fw = r.instances[0][0];
    let mut node = Node::new(r, mlx5(10_000), &options);
    node.open(1, 1);
    node.mgr.poll(&mut node.dp, Nanos::from_secs(1));
    node.dp.tick(Nanos::from_secs(1));
    let frame = tcp_frame((client(1), 1), (SERVER, 80), TcpFlags::ACK);
    let lan = node.lan;
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
    let manager = ManagerOptions {
        install_budget: 16,
        max_pending: 4,
        ..ManagerOptions::default()
    };
    let mut node = Node::with(three_hop(1), mlx5(10_000), &options, manager);
    let lan = node.lan;
    let udp = |i| udp_frame((client(i), 1), (SERVER, 53));
    // A session is offloaded at its third packet, not before: the first
    // two walk all three hops in software (four visits each).
    assert_eq!(node.walk(lan, &udp(0)).fast_path, 4);
    assert_eq!(node.walk(lan, &udp(0)).fast_path, 4);
    assert_eq!(node.mgr.stats().sessions_offloaded, 0);
    assert_eq!(
        node.walk(lan, &udp(0)).fast_path,
        1,
        "the third asks for rules at once"
    );
    assert_eq!(node.mgr.stats().sessions_offloaded, 1);
    assert_eq!(node.walk(lan, &udp(0)).fast_path, 0);
    // Many sessions at once: two installed per call (16 rules), four may
    // wait in the queue, the rest stay in software for the moment.
    for i in 1..=10 {
        for _ in 0..3 {
            node.dp.process(lan, &udp(i), node.now);
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
    for _ in 1..=4 {
        node.wait(1);
        node.mgr.handle_events(&mut node.dp);
    }
    assert_eq!(node.mgr.stats().sessions_offloaded, 11);
    for i in 0..=10 {
        assert_eq!(node.walk(lan, &udp(i)).fast_path, 0, "session {i}");
    }
}

#[test]
fn a_new_configuration_swaps_in_behind_the_old_rules() {
    let mut node = Node::new(three_hop(2), mlx5(10_000), &Options::default());
    let mut paths = Vec::new();
    for i in 0..40 {
        paths.push(node.open(i, 1));
    }
    let group = node.mgr.group();
    let tables = node.mgr.stats().tables;
    // The same gateway, with the second ids instance down: the sessions
    // through it change, the others must not notice.
    let victim = three_hop(2).instances[1][1];
    let next = rig_at(
        &[
            Svc::new("fw", 2),
            Svc {
                down: 1,
                ..Svc::new("ids", 2)
            },
            Svc::new("nat", 2),
        ],
        2,
    )
    .config;
    let forwarded = node.dp.counters().forwarded;
    node.dp.apply(next, node.now);
    node.mgr.reconfigured(&mut node.dp);
    assert!(
        !node.mgr.swapping(),
        "all sessions fit in one call: swapped"
    );
    assert_ne!(node.mgr.group(), group, "the other group is in force");
    assert_eq!(node.mgr.stats().swaps, 1);
    let moved: Vec<usize> = (0..40).filter(|&i| paths[i][1] == victim).collect();
    assert!(!moved.is_empty() && moved.len() < 40);
    for (i, before) in paths.iter().enumerate() {
        let out = node.data(i as u32, 1);
        assert_eq!(out.fast_path, 0, "flow {i}: in hardware after the swap");
        if moved.contains(&i) {
            assert!(!out.visited.contains(&victim));
        } else {
            assert_eq!(&out.visited, before);
        }
    }
    assert_eq!(node.dp.counters().forwarded, forwarded);
    assert_eq!(node.mgr.stats().sessions_offloaded, 40);
    assert_eq!(
        node.mgr.backend().len(),
        node.dp.config().ports().len() + 40 * 8,
        "the old group and the old jumps are gone"
    );
    assert_eq!(
        node.mgr.stats().tables,
        2 * tables,
        "the other group's tables, and the other jump table"
    );
}

#[test]
fn old_rules_steer_until_the_new_ones_are_all_in() {
    // Installation paced at one session per call: the swap waits for the
    // last one, and until then the old rules carry the traffic.
    let manager = ManagerOptions {
        install_budget: 8,
        batch: 1,
        ..ManagerOptions::default()
    };
    let mut node = Node::with(three_hop(1), mlx5(10_000), &Options::default(), manager);
    for i in 0..5 {
        node.open(i, 1);
        node.mgr.handle_events(&mut node.dp);
    }
    let next = rig_at(
        &[Svc::new("fw", 1), Svc::new("ids", 1), Svc::new("nat", 1)],
        2,
    )
    .config;
    node.dp.apply(next, node.now);
    node.mgr.reconfigured(&mut node.dp);
    let mut calls = 1;
    while node.mgr.swapping() {
        for i in 0..5 {
            let lan = node.lan;
            // Not `data`: its walk would drain the queue in passing.
            let frame = tcp_frame((client(i), 1), (SERVER, 80), TcpFlags::ACK);
            let outcome = {
                let mut buf = Buf::new(&frame);
                let now = node.now;
                buf.with(|fb| node.mgr.backend_mut().process(lan, fb, now))
            };
            assert!(
                matches!(outcome, Outcome::Out(_)),
                "call {calls}, flow {i}: by rule"
            );
        }
        node.mgr.handle_events(&mut node.dp);
        calls += 1;
    }
    assert_eq!(calls, 5, "one session per call");
    for i in 0..5 {
        assert_eq!(node.data(i, 1).fast_path, 0);
    }
}

#[test]
fn a_double_tagged_customer_passes_whole_and_stays_in_software_on_the_card() {
    use crate::wire::{EtherType, Tci};
    let qinq = |src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)| {
        let tags = [
            (
                EtherType::QinQ,
                Tci::new(3, false, chaingate_shared::VlanId::new(100).unwrap()),
            ),
            (
                EtherType::Vlan,
                Tci::new(0, false, chaingate_shared::VlanId::new(200).unwrap()),
            ),
        ];
        let spec = FrameSpec {
            dst_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            src_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            vlans: &tags,
            net: NetSpec::Ip(
                IpSpec::v4(src.0, dst.0),
                L4Spec::Udp {
                    src_port: src.1,
                    dst_port: dst.1,
                },
            ),
            payload: b"customer",
        };
        let mut buf = vec![0u8; spec.len()];
        spec.build(&mut buf).unwrap();
        buf
    };
    for profile in [Profile::Generic, Profile::Mlx5(Mlx5::default())] {
        let mut node = Node::new(
            three_hop(1),
            SoftSwitch::with_profile(10_000, profile),
            &Options::default(),
        );
        let (lan, wan) = (node.lan, node.wan);
        let out_frame = qinq((client(1), 5000), (SERVER, 53));
        let back_frame = qinq((SERVER, 53), (client(1), 5000));
        for _ in 0..3 {
            let out = node.walk(lan, &out_frame);
            assert_eq!(out.exit, Some(wan));
            assert_eq!(out.visited.len(), 3, "every hop, under the segment tag");
            assert_eq!(
                out.frame, out_frame,
                "both customer tags, 802.1ad and 802.1Q, intact"
            );
            let back = node.walk(wan, &back_frame);
            assert_eq!(
                (back.exit, back.frame.clone()),
                (Some(lan), back_frame.clone())
            );
            assert!(back.fast_path > 0, "in software");
        }
        // Three VLAN items: neither a rule the generic eSwitch can match
        // (its field vector holds two tags) nor one mlx5 takes (one VLAN
        // item): refused, and counted.
        assert_eq!(node.mgr.stats().refusals(Refusal::Unsupported), 1);
        assert_eq!(node.dp.counters().dropped.iter().sum::<u64>(), 0);
    }
}
