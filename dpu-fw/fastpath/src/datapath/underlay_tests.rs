//! Two DPUs in memory, joined by their underlay ports: frames walk through
//! both fast paths as the switches, the instances (reflecting with their
//! tag kept, a NAT rewriting) and the underlay link would move them.

extern crate std;
use std::collections::HashMap;
use std::format;
use std::string::String;
use std::vec;
use std::vec::Vec;

use core::net::Ipv4Addr;

use chaingate_shared::config::{
    Attachment, FailMode, InstanceState, PortRole, Scaling, Travel, Uplink,
};
use chaingate_shared::policy::{Match, Policy, PolicyAction};
use chaingate_shared::underlay::{Leg, Vni};
use chaingate_shared::{Config, Generation, InstanceId, Nanos, PeerId, PortId};

use super::tests::tcp_frame;
use super::*;
use crate::wire::tcp::TcpFlags;
use crate::wire::{EthernetAddress, FrameBuf, parse};

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const NAT_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

/// The DPUs' underlay addresses and MACs.
fn addr(dpu: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 9, 0, 1 + u8::try_from(dpu).unwrap())
}
fn mac(dpu: usize) -> [u8; 6] {
    [2, 0, 0, 9, 0, 1 + u8::try_from(dpu).unwrap()]
}

/// A service of the cluster and the DPU each of its instances is behind.
struct Placed {
    name: &'static str,
    on: &'static [usize],
    fail: FailMode,
}

const fn placed(name: &'static str, on: &'static [usize]) -> Placed {
    Placed {
        name,
        on,
        fail: FailMode::Open,
    }
}

/// Instance names, in the order every DPU lists them: `SERVICE-N`.
fn instance_names(services: &[Placed]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    for (s, p) in services.iter().enumerate() {
        for (n, dpu) in p.on.iter().enumerate() {
            out.push((format!("{}-{n}", p.name), s, *dpu));
        }
    }
    out
}

/// The configuration of DPU `me` of two: lan, wan, the underlay port, a VF
/// per local instance (ports 3, 4, ...), the other DPU as peer, remote
/// instances at the slot of their VF there; one chain through every
/// service, for everything from lan.
fn config_of(me: usize, services: &[Placed], mtu: u16) -> Config {
    config_with(me, services, mtu, false)
}

fn config_with(me: usize, services: &[Placed], mtu: u16, prefer_local: bool) -> Config {
    let mut b = Config::builder(Generation(1));
    b.prefer_local(prefer_local);
    b.add_port("lan", PortRole::Uplink(Uplink::Lan)).unwrap();
    b.add_port("wan", PortRole::Uplink(Uplink::Wan)).unwrap();
    let ul = b.add_port("ul", PortRole::Underlay).unwrap();
    b.set_underlay(addr(me), mac(me), mtu).unwrap();
    let other = 1 - me;
    let peer = b.add_peer("other", addr(other), mac(other)).unwrap();
    let mut ids = Vec::new();
    for p in services {
        let scaling = Scaling {
            max_instances: 8,
            ..Scaling::default()
        };
        ids.push(
            b.add_service(p.name, 1_000_000_000, scaling, p.fail)
                .unwrap(),
        );
    }
    let names = instance_names(services);
    let slot_on = |dpu: usize, name: &str| {
        let n = names
            .iter()
            .filter(|(_, _, d)| *d == dpu)
            .position(|(m, _, _)| m == name)
            .unwrap();
        u8::try_from(3 + n).unwrap()
    };
    for (name, s, dpu) in &names {
        let attachment = if *dpu == me {
            let vf = b.add_port(&format!("vf-{name}"), PortRole::Vf).unwrap();
            assert_eq!(vf.index(), usize::from(slot_on(me, name)));
            Attachment::Single(vf)
        } else {
            Attachment::Remote {
                peer,
                slot: slot_on(*dpu, name),
                via: ul,
            }
        };
        b.add_instance(name, ids[*s], attachment, InstanceState::Active, 1)
            .unwrap();
    }
    let chain = b.add_chain("main", &ids).unwrap();
    b.add_policy(Policy {
        priority: 1,
        matches: Match::default(),
        action: PolicyAction::Chain(chain),
    })
    .unwrap();
    b.build().unwrap()
}

fn client(i: u16) -> (Ipv4Addr, u16) {
    (Ipv4Addr::new(10, 0, 0, 2), 40000 + i)
}

/// What an underlay frame said.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Hop {
    from: usize,
    vni: Vni,
    src_port: u16,
}

/// Where a frame went.
#[derive(Debug)]
struct Walk {
    exit: Result<(usize, Uplink), DropReason>,
    /// (DPU, instance name) in the order the frame passed them.
    visited: Vec<(usize, String)>,
    underlay: Vec<Hop>,
    frame: Vec<u8>,
}

struct Cluster {
    dps: [Datapath; 2],
    now: Nanos,
    nat_service: Option<&'static str>,
    /// NAT state per instance name: (client port -> rewritten port).
    nats: HashMap<String, HashMap<u16, u16>>,
}

impl Cluster {
    fn new(services: &[Placed], mtu: u16) -> Self {
        Self::with(services, mtu, false)
    }

    fn with(services: &[Placed], mtu: u16, prefer_local: bool) -> Self {
        let options = Options::default();
        Self {
            dps: [
                Datapath::new(config_with(0, services, mtu, prefer_local), &options),
                Datapath::new(config_with(1, services, mtu, prefer_local), &options),
            ],
            now: Nanos::from_secs(1),
            nat_service: None,
            nats: HashMap::new(),
        }
    }

    fn apply(dp: &Datapath, frame: &[u8], v: Verdict) -> Result<(PortId, Vec<u8>), DropReason> {
        let mut buf = vec![0u8; frame.len() + 128];
        buf[64..64 + frame.len()].copy_from_slice(frame);
        let mut fb = FrameBuf::new(&mut buf, 64, frame.len()).unwrap();
        match v {
            Verdict::Drop(r) => Err(r),
            Verdict::ToHost => panic!("to host"),
            v @ Verdict::Forward { .. } => {
                let port = v.apply(&mut fb, dp.config()).unwrap().unwrap();
                Ok((port, fb.frame().to_vec()))
            }
        }
    }

    fn walk(&mut self, mut dpu: usize, mut port: PortId, mut frame: Vec<u8>) -> Walk {
        let mut visited = Vec::new();
        let mut underlay = Vec::new();
        for _ in 0..32 {
            let v = self.dps[dpu].process(port, &frame, self.now);
            let out = match Self::apply(&self.dps[dpu], &frame, v) {
                Err(r) => {
                    return Walk {
                        exit: Err(r),
                        visited,
                        underlay,
                        frame,
                    };
                }
                Ok((out, f)) => {
                    frame = f;
                    out
                }
            };
            let config = self.dps[dpu].config();
            match config.port(out).unwrap().role() {
                PortRole::Uplink(u) => {
                    return Walk {
                        exit: Ok((dpu, u)),
                        visited,
                        underlay,
                        frame,
                    };
                }
                PortRole::Underlay => {
                    let p = parse(&frame).unwrap();
                    let t = p.tunnel().expect("vxlan on the underlay");
                    let key = p.key().unwrap();
                    assert_eq!(key.src(), IpAddr::V4(addr(dpu)));
                    assert_eq!(key.dst(), IpAddr::V4(addr(1 - dpu)));
                    assert_eq!(&frame[0..6], &mac(1 - dpu), "to the peer's MAC");
                    underlay.push(Hop {
                        from: dpu,
                        vni: Vni::decode(t.vni.get()).expect("one of ours"),
                        src_port: key.src_port(),
                    });
                    dpu = 1 - dpu;
                    port = self.dps[dpu].config().underlay().unwrap().port;
                }
                PortRole::Vf => {
                    let instance = config.port_owner(out).expect("a VF with an instance");
                    let inst = config.instance(instance).unwrap().clone();
                    let service = config.service(inst.service()).unwrap().name().clone();
                    visited.push((dpu, String::from(inst.name().as_str())));
                    if Some(service.as_str()) == self.nat_service {
                        self.nat(inst.name().as_str(), &mut frame);
                    }
                    // The instance sends it back on the same VF, tag kept.
                    port = out;
                }
            }
        }
        panic!("the frame loops");
    }

    /// A source NAT: the client's port becomes one of the instance's own,
    /// to NAT_ADDR; the reverse for packets to NAT_ADDR.
    fn nat(&mut self, instance: &str, frame: &mut [u8]) {
        use crate::wire::rewrite::{self, End};
        let layers = *parse(frame).unwrap().outer();
        let key = *layers.key().unwrap();
        let base = 20000 + 1000 * u16::from(instance.ends_with('1'));
        let table = self.nats.entry(String::from(instance)).or_default();
        if key.dst() == IpAddr::V4(NAT_ADDR) {
            let (client_port, _) = table
                .iter()
                .find(|(_, v)| **v == key.dst_port())
                .map(|(k, v)| (*k, *v))
                .expect("a known mapping");
            rewrite::set_addr(frame, &layers, End::Dst, IpAddr::V4(client(0).0)).unwrap();
            rewrite::set_port(frame, &layers, End::Dst, client_port).unwrap();
        } else {
            let n = u16::try_from(table.len()).unwrap();
            let port = *table.entry(key.src_port()).or_insert(base + n);
            rewrite::set_addr(frame, &layers, End::Src, IpAddr::V4(NAT_ADDR)).unwrap();
            rewrite::set_port(frame, &layers, End::Src, port).unwrap();
        }
    }

    fn uplink(&self, dpu: usize, u: Uplink) -> PortId {
        self.dps[dpu].config().uplink_port(u)
    }

    fn send(&mut self, dpu: usize, u: Uplink, frame: Vec<u8>) -> Walk {
        let port = self.uplink(dpu, u);
        self.walk(dpu, port, frame)
    }
}

fn names(w: &Walk) -> Vec<(usize, &str)> {
    w.visited.iter().map(|(d, n)| (*d, n.as_str())).collect()
}

#[test]
fn a_chain_across_two_dpus_keeps_its_order_and_both_directions_its_instances() {
    // firewall on A, ids on B, nat on A: the web chain of the rig.
    let services = [
        placed("firewall", &[0]),
        placed("ids", &[1]),
        placed("nat", &[0]),
    ];
    let mut c = Cluster::new(&services, 1500);
    let syn = tcp_frame(client(1), (SERVER, 443), TcpFlags::SYN, b"");
    let out = c.send(0, Uplink::Lan, syn.clone());
    assert_eq!(out.exit, Ok((0, Uplink::Wan)));
    assert_eq!(names(&out), [(0, "firewall-0"), (1, "ids-0"), (0, "nat-0")]);
    assert_eq!(
        out.frame, syn,
        "outer headers and tags gone: it leaves as it came"
    );
    // Over the underlay: to B for ids (deliver, slot of ids-0's VF there),
    // and back (return, the same slot), the segment of hop 1 lan-to-wan.
    let seg = c.dps[0]
        .config()
        .segment_tag(Segment {
            chain: ChainId::from_index(0),
            hop: 1,
            travel: Travel::ToWan,
        })
        .unwrap();
    let deliver = Vni {
        segment: seg,
        leg: Leg::Deliver,
        slot: 3,
    };
    let back = Vni {
        leg: Leg::Return,
        ..deliver
    };
    assert_eq!(
        out.underlay
            .iter()
            .map(|h| (h.from, h.vni))
            .collect::<Vec<_>>(),
        [(0, deliver), (1, back)]
    );
    // B keeps no session for A's connection: it only delivers and returns.
    assert_eq!(c.dps[1].sessions().len(), 0);

    let reply = tcp_frame((SERVER, 443), client(1), TcpFlags::SYN | TcpFlags::ACK, b"");
    let back = c.send(0, Uplink::Wan, reply.clone());
    assert_eq!(back.exit, Ok((0, Uplink::Lan)));
    assert_eq!(
        names(&back),
        [(0, "nat-0"), (1, "ids-0"), (0, "firewall-0")]
    );
    assert_eq!(back.frame, reply);
    assert_eq!(
        back.underlay[0].src_port, out.underlay[0].src_port,
        "one flow, one outer source port (ECMP keeps it on one path)"
    );
    assert!(back.underlay[0].src_port >= 0xC000);
    assert_eq!(c.dps[0].sessions().len(), 1);
    // A: in, to B, back, on, out; both ways. B: delivered and returned.
    assert_eq!(c.dps[0].counters().forwarded, 8);
    assert_eq!(c.dps[1].counters().forwarded, 4);
}

#[test]
fn a_nat_behind_the_other_dpu_rewrites_and_the_answer_finds_its_way_back() {
    // The rewritten tuple comes back over the underlay with the NAT's
    // slot: A opens the continuation as for a local NAT.
    let services = [placed("firewall", &[0]), placed("nat", &[1])];
    let mut c = Cluster::new(&services, 1500);
    c.nat_service = Some("nat");
    let out = c.send(
        0,
        Uplink::Lan,
        tcp_frame(client(1), (SERVER, 443), TcpFlags::SYN, b""),
    );
    assert_eq!(out.exit, Ok((0, Uplink::Wan)));
    assert_eq!(names(&out), [(0, "firewall-0"), (1, "nat-0")]);
    let key = *parse(&out.frame).unwrap().key().unwrap();
    assert_eq!(key.src(), IpAddr::V4(NAT_ADDR));
    assert_eq!(c.dps[0].counters().continuations, 1);
    let reply = tcp_frame(
        (SERVER, 443),
        (NAT_ADDR, key.src_port()),
        TcpFlags::SYN | TcpFlags::ACK,
        b"",
    );
    let back = c.send(0, Uplink::Wan, reply);
    assert_eq!(back.exit, Ok((0, Uplink::Lan)));
    assert_eq!(names(&back), [(1, "nat-0"), (0, "firewall-0")]);
    let key = *parse(&back.frame).unwrap().key().unwrap();
    assert_eq!(
        (key.dst(), key.dst_port()),
        (IpAddr::V4(client(1).0), client(1).1)
    );
}

#[test]
fn two_dpus_that_see_the_two_directions_pick_the_same_instances() {
    // Asymmetric routing: lan-to-wan through A, wan-to-lan through B.
    // Each DPU decides alone, by Maglev over the same instances.
    let services = [placed("firewall", &[0, 1, 0, 1]), placed("ids", &[1, 0, 1])];
    let mut c = Cluster::new(&services, 1500);
    let mut spread = HashMap::new();
    for i in 0..200 {
        let out = c.send(
            0,
            Uplink::Lan,
            tcp_frame(client(i), (SERVER, 443), TcpFlags::SYN, b""),
        );
        assert_eq!(out.exit, Ok((0, Uplink::Wan)));
        let back = c.send(
            1,
            Uplink::Wan,
            tcp_frame((SERVER, 443), client(i), TcpFlags::SYN | TcpFlags::ACK, b""),
        );
        assert_eq!(back.exit, Ok((1, Uplink::Lan)));
        let mut fwd: Vec<_> = names(&out).into_iter().map(|(_, n)| n).collect();
        let rev: Vec<_> = names(&back).into_iter().rev().map(|(_, n)| n).collect();
        assert_eq!(fwd, rev, "flow {i}: the same instances both ways");
        *spread.entry(String::from(fwd.remove(0))).or_insert(0) += 1;
    }
    assert_eq!(
        spread.len(),
        4,
        "every firewall instance takes flows: {spread:?}"
    );
}

#[test]
fn preferring_local_instances_keeps_hops_off_the_underlay() {
    // A firewall behind each DPU; connections enter at A.
    let services = [placed("firewall", &[0, 1])];
    let spread = |prefer| {
        let mut c = Cluster::with(&services, 1500, prefer);
        let mut on_b = 0;
        for i in 0..64 {
            let out = c.send(
                0,
                Uplink::Lan,
                tcp_frame(client(i), (SERVER, 443), TcpFlags::SYN, b""),
            );
            assert_eq!(out.exit, Ok((0, Uplink::Wan)));
            on_b += usize::from(names(&out) == [(1, "firewall-1")]);
        }
        on_b
    };
    assert!(
        spread(false) > 8,
        "Maglev alone spreads over both DPUs' firewalls"
    );
    assert_eq!(spread(true), 0, "every connection on A's own firewall");
}

#[test]
fn a_frame_too_big_for_the_underlay_is_counted_not_lost_silently() {
    let services = [placed("firewall", &[1])];
    // 612: the smallest underlay MTU, room for 576-byte inner frames.
    let mut c = Cluster::new(&services, 612);
    let fits = tcp_frame(client(1), (SERVER, 80), TcpFlags::SYN, &[0; 576 - 54]);
    assert_eq!(fits.len(), 576);
    assert_eq!(c.send(0, Uplink::Lan, fits).exit, Ok((0, Uplink::Wan)));
    let big = tcp_frame(client(2), (SERVER, 80), TcpFlags::SYN, &[0; 577 - 54]);
    assert_eq!(c.send(0, Uplink::Lan, big).exit, Err(DropReason::TooBig));
    assert_eq!(c.dps[0].counters().drops(DropReason::TooBig), 1);
}

/// An underlay frame from `from` to `to` with `vni` around `inner`.
fn underlay_frame(c: &Cluster, from: Ipv4Addr, to: usize, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; inner.len() + 128];
    buf[64..64 + inner.len()].copy_from_slice(inner);
    let mut fb = FrameBuf::new(&mut buf, 64, inner.len()).unwrap();
    let t = VxlanTunnel {
        dst_mac: EthernetAddress(mac(to)),
        src_mac: EthernetAddress([2, 0, 0, 9, 9, 9]),
        src: u32::from(from),
        dst: u32::from(addr(to)),
        src_port: 50000,
        vni,
        ttl: 64,
    };
    crate::offload::soft::encap(&mut fb, &t).unwrap();
    let _ = c;
    fb.frame().to_vec()
}

#[test]
fn underlay_frames_that_are_not_ours_are_dropped_and_counted() {
    let services = [placed("firewall", &[1]), placed("ids", &[1])];
    let mut c = Cluster::new(&services, 1500);
    let inner = tcp_frame(client(1), (SERVER, 80), TcpFlags::SYN, b"");
    let ul = c.dps[1].config().underlay().unwrap().port;
    let config = c.dps[1].config().clone();
    let seg = |hop| {
        config
            .segment_tag(Segment {
                chain: ChainId::from_index(0),
                hop,
                travel: Travel::ToWan,
            })
            .unwrap()
    };
    let vni = |hop, slot| {
        Vni {
            segment: seg(hop),
            leg: Leg::Deliver,
            slot,
        }
        .encode()
    };
    let cases = [
        // From an address that is no peer.
        (Ipv4Addr::new(10, 9, 0, 77), vni(0, 3), DropReason::NotAPeer),
        // A VNI that is not a segment here.
        (addr(0), 0x00FF_F003, DropReason::NotASegment),
        // The firewall's segment, for the ids instance's slot.
        (addr(0), vni(0, 4), DropReason::WrongInstance),
        // A slot without an instance.
        (addr(0), vni(0, 9), DropReason::UnknownPort),
    ];
    for (from, v, reason) in cases {
        let f = underlay_frame(&c, from, 1, v, &inner);
        assert_eq!(
            c.dps[1].process(ul, &f, c.now),
            Verdict::Drop(reason),
            "{reason}"
        );
        assert_eq!(c.dps[1].counters().drops(reason), 1);
    }
    // And the right one is delivered, tagged with the peer's guest tag.
    let f = underlay_frame(&c, addr(0), 1, vni(0, 3), &inner);
    let guest = config.guest_tag(PeerId::from_index(0), seg(0)).unwrap();
    assert_eq!(
        c.dps[1].process(ul, &f, c.now),
        Verdict::Forward {
            port: PortId::from_index(3),
            vlan: VlanAction::Push(guest),
            decap: true,
            encap: None,
        }
    );
    // Another service's instance answering with a firewall guest tag
    // does not reach the peer.
    let mut tagged = vec![0u8; inner.len() + 8];
    tagged[4..4 + inner.len()].copy_from_slice(&inner);
    let mut fb = FrameBuf::new(&mut tagged, 4, inner.len()).unwrap();
    VlanAction::Push(guest).apply(&mut fb).unwrap();
    let tagged = fb.frame().to_vec();
    let ids_vf = PortId::from_index(4);
    assert_eq!(
        c.dps[1].process(ids_vf, &tagged, c.now),
        Verdict::Drop(DropReason::WrongInstance)
    );
    // The firewall's own answer goes back to the peer.
    assert!(matches!(
        c.dps[1].process(PortId::from_index(3), &tagged, c.now),
        Verdict::Forward {
            encap: Some(_),
            vlan: VlanAction::Pop,
            ..
        }
    ));
    // A plain frame at the underlay port is not for the chain.
    assert_eq!(
        c.dps[1].process(ul, &inner, c.now),
        Verdict::Drop(DropReason::NotAPeer)
    );
    let _: InstanceId = InstanceId::from_index(0);
}

/// Two DPUs with the software eSwitch (mlx5's profile) in front of each
/// fast path, and the offload managers installing what sessions ask for.
mod in_hardware {
    use super::*;
    use crate::offload::manager::{ManagerOptions, OffloadManager};
    use crate::offload::soft::{Mlx5, Outcome, Profile, SoftSwitch};
    use crate::offload::{FlowOffload, PortAttr};

    struct Node {
        dp: Datapath,
        mgr: OffloadManager<SoftSwitch>,
        fast_path: usize,
    }

    struct HwCluster {
        nodes: [Node; 2],
        now: Nanos,
    }

    impl HwCluster {
        fn new(services: &[Placed], profile: &Profile) -> Self {
            let node = |me| {
                let mut sw = SoftSwitch::with_profile(100_000, profile.clone());
                sw.configure(&PortAttr::for_rules(100_000, 1024)).unwrap();
                sw.start().unwrap();
                let dp = Datapath::new(config_of(me, services, 1500), &Options::default());
                let mgr = OffloadManager::new(sw, &dp, ManagerOptions::default());
                Node {
                    dp,
                    mgr,
                    fast_path: 0,
                }
            };
            let mut c = Self {
                nodes: [node(0), node(1)],
                now: Nanos::from_secs(1),
            };
            for n in &mut c.nodes {
                n.mgr.reconfigured(&mut n.dp);
            }
            c
        }

        fn walk(&mut self, mut dpu: usize, mut port: PortId, frame: &[u8]) -> Walk {
            let mut visited = Vec::new();
            let mut buf = vec![0u8; frame.len() + 256];
            let mut start = 128;
            let mut len = frame.len();
            buf[start..start + len].copy_from_slice(frame);
            for _ in 0..32 {
                let now = self.now;
                let node = &mut self.nodes[dpu];
                let mut fb = FrameBuf::new(&mut buf, start, len).unwrap();
                let out = match node.mgr.backend_mut().process(port, &mut fb, now) {
                    Outcome::Out(p) => p,
                    Outcome::Dropped(_) => panic!("dropped by the eSwitch"),
                    Outcome::ToSoftware(p) => {
                        node.fast_path += 1;
                        let v = node.dp.process(p, fb.frame(), now);
                        node.mgr.handle_events(&mut node.dp);
                        match v.apply(&mut fb, node.dp.config()) {
                            Ok(Some(p)) => p,
                            _ => {
                                return Walk {
                                    exit: Err(match v {
                                        Verdict::Drop(r) => r,
                                        _ => DropReason::Malformed,
                                    }),
                                    visited,
                                    underlay: Vec::new(),
                                    frame: fb.frame().to_vec(),
                                };
                            }
                        }
                    }
                };
                // Re-centre the frame in the buffer for the next step.
                let f = fb.frame().to_vec();
                start = 128;
                len = f.len();
                buf[start..start + len].copy_from_slice(&f);
                let config = self.nodes[dpu].dp.config();
                match config.port(out).unwrap().role() {
                    PortRole::Uplink(u) => {
                        return Walk {
                            exit: Ok((dpu, u)),
                            visited,
                            underlay: Vec::new(),
                            frame: f,
                        };
                    }
                    PortRole::Underlay => {
                        dpu = 1 - dpu;
                        port = self.nodes[dpu].dp.config().underlay().unwrap().port;
                    }
                    PortRole::Vf => {
                        let instance = config.port_owner(out).unwrap();
                        let name = config.instance(instance).unwrap().name().clone();
                        visited.push((dpu, String::from(name.as_str())));
                        port = out;
                    }
                }
            }
            panic!("the frame loops");
        }
    }

    #[test]
    fn established_sessions_through_a_remote_hop_run_in_both_eswitches() {
        let services = [
            placed("firewall", &[0]),
            placed("ids", &[1]),
            placed("nat", &[0]),
        ];
        for profile in [Profile::Generic, Profile::Mlx5(Mlx5::default())] {
            let mut c = HwCluster::new(&services, &profile);
            let lan = c.nodes[0].dp.config().uplink_port(Uplink::Lan);
            let wan = c.nodes[0].dp.config().uplink_port(Uplink::Wan);
            let open = [
                (lan, tcp_frame(client(1), (SERVER, 443), TcpFlags::SYN, b"")),
                (
                    wan,
                    tcp_frame((SERVER, 443), client(1), TcpFlags::SYN | TcpFlags::ACK, b""),
                ),
                (lan, tcp_frame(client(1), (SERVER, 443), TcpFlags::ACK, b"")),
            ];
            for (port, f) in &open {
                let w = c.walk(0, *port, f);
                assert!(w.exit.is_ok(), "{profile:?}: {w:?}");
            }
            let refused = c.nodes[0].mgr.refusal_reasons().to_vec();
            assert!(refused.is_empty(), "{profile:?}: refused {refused:?}");
            assert_eq!(c.nodes[0].mgr.stats().sessions_offloaded, 1, "{profile:?}");
            assert_eq!(
                c.nodes[1].mgr.stats().base_refused,
                0,
                "{profile:?}: guest rules"
            );
            let before = (c.nodes[0].fast_path, c.nodes[1].fast_path);
            for _ in 0..3 {
                let data = tcp_frame(client(1), (SERVER, 443), TcpFlags::ACK, b"data");
                let w = c.walk(0, lan, &data);
                assert_eq!(w.exit, Ok((0, Uplink::Wan)), "{profile:?}");
                assert_eq!(names(&w), [(0, "firewall-0"), (1, "ids-0"), (0, "nat-0")]);
                assert_eq!(
                    w.frame, data,
                    "{profile:?}: decapsulated, untagged, as it came"
                );
                let back = tcp_frame((SERVER, 443), client(1), TcpFlags::ACK, b"data");
                let w = c.walk(0, wan, &back);
                assert_eq!(w.exit, Ok((0, Uplink::Lan)), "{profile:?}");
                assert_eq!(names(&w), [(0, "nat-0"), (1, "ids-0"), (0, "firewall-0")]);
                assert_eq!(w.frame, back);
            }
            assert_eq!(
                (c.nodes[0].fast_path, c.nodes[1].fast_path),
                before,
                "{profile:?}: established frames never reach either fast path"
            );
        }
    }
}
