//! A chain across two DPUs joined by an underlay (VXLAN between their
//! underlay ports): the web chain's firewall and NAT behind DPU A, its IDS
//! behind DPU B, the lan and wan hosts on A's uplinks. Every frame passes
//! firewall -> ids -> nat in order and every answer nat -> ids ->
//! firewall, whole and in order; B only delivers and returns (no session
//! of its own). A frame too big for the underlay with the outer headers is
//! dropped and counted by the DPU that would send it. With the two
//! directions of each connection through different DPUs, each DPU decides
//! alone and both pick the same instance.
//!
//! The instances are `chaingate-service` processes on the DPUs' VFs,
//! stamping what they pass; the rig is `hw-tests/src/two_dpus.rs`. Each
//! scenario runs twice: with every frame through the fast path (the
//! offload backend refuses every rule), then on the software eSwitch's
//! rules (mlx5 profile), as the DPUs run by default.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use chaingate_hw_tests::agent::NAT_ADDRESS;
use chaingate_hw_tests::flows::{self, Outcome, Plan, Proto};
use chaingate_hw_tests::require_root;
use chaingate_hw_tests::two_dpus::{Cluster, Dpu, TwoDpus, dropped, drops, instance};
use chaingate_proto::dpu::Stats;
use chaingate_shared::underlay::{IP_OVERHEAD, Leg, Vni};

const FIREWALL: u16 = 100;
const IDS: u16 = 200;
const NAT: u16 = 300;
const FORWARD: [u16; 3] = [FIREWALL, IDS, NAT];
const BACK: [u16; 3] = [NAT, IDS, FIREWALL];

/// The web chain with firewall-0 and nat-0 behind A, ids-0 behind B, for
/// everything from 10.0.0.0/8.
fn web_cluster(mtu: u16, dpu_extra: &str) -> Cluster {
    let stamp = |n: u16, args: &[&str]| {
        let mut all = vec!["--stamp".to_owned(), n.to_string()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        all
    };
    let place = |name: &str, on, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        instance(name, on, &args)
    };
    let nat_to = NAT_ADDRESS.to_string();
    Cluster {
        instances: vec![
            place("firewall-0", Dpu::A, stamp(FIREWALL, &["firewall"])),
            place(
                "ids-0",
                Dpu::B,
                stamp(IDS, &["ids", "--signature", "EVIL", "--mode", "drop"]),
            ),
            place(
                "nat-0",
                Dpu::A,
                stamp(
                    NAT,
                    &[
                        "nat",
                        "--inside",
                        "10.0.0.0/8",
                        "--to",
                        &nat_to,
                        "--ports",
                        "20000-20999",
                    ],
                ),
            ),
        ],
        chain: vec!["firewall".into(), "ids".into(), "nat".into()],
        policies: vec![
            "{ priority: 10, match: { src: 10.0.0.0/8 }, action: { chain: web } }".into(),
        ],
        mtu,
        dpu_extra: dpu_extra.to_owned(),
    }
}

/// How the DPUs move frames: (name, dpu-fw runtime YAML).
const PATHS: [(&str, &str); 2] = [
    ("software", "offload: { backend: refuse }\n"),
    ("rules", ""),
];

/// A plan of `proto` with echo, 4 clients, from source ports `port` on.
fn plan(proto: Proto, flows: u32, packets: u32, size: usize, port: u16) -> Plan {
    let mut plan = match proto {
        Proto::Tcp => Plan::tcp(flows, packets, 800),
        Proto::Udp => Plan::udp(flows, packets, 800),
    };
    plan.clients = 4;
    plan.echo = true;
    plan.size = size;
    plan.client = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), port);
    plan
}

/// Frames that crossed the whole gateway, both ways (handshakes and FINs
/// included): each went over the underlay to B and back once.
fn frames_through(out: &Outcome) -> u64 {
    out.forward.frames()
        + out.back.frames()
        + out.forward.handshakes
        + out.back.handshakes
        + out.forward.fins
        + out.back.fins
}

/// A connection as (protocol, the lower endpoint, the higher one).
type Conn = (u8, SocketAddrV4, SocketAddrV4);

/// Checks a frame `from` sent on the underlay as a router and the peer
/// would read it: Ethernet to the peer's MAC from the sender's, untagged;
/// IPv4 between their underlay addresses with the right lengths and header
/// checksum; UDP to 4789 from a flow port (49152 and up) with the right
/// length; VXLAN with the I flag and one of our VNIs; an untagged inner
/// IPv4 frame. Returns the VNI, the outer source port and the inner
/// connection.
fn underlay_frame(from: Dpu, f: &[u8]) -> Result<(Vni, u16, Conn), String> {
    let mac = |s: &str| -> Vec<u8> {
        s.split(':')
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    };
    let be16 = |at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
    // Outer headers, inner Ethernet, IPv4 and the ports.
    if f.len() < 50 + 14 + 20 + 4 {
        return Err(format!("a frame of {} bytes", f.len()));
    }
    if f[0..6] != mac(from.other().mac())[..] || f[6..12] != mac(from.mac())[..] {
        return Err("wrong MACs".into());
    }
    if be16(12) != 0x0800 {
        return Err(format!("EtherType {:#06x} (tagged?)", be16(12)));
    }
    let ip = &f[14..34];
    if ip[0] != 0x45 || usize::from(be16(16)) != f.len() - 14 || ip[9] != 17 || ip[8] == 0 {
        return Err("a wrong IPv4 header (version, length, protocol, TTL)".into());
    }
    let sum = ip
        .chunks(2)
        .fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    if (sum & 0xFFFF) + (sum >> 16) != 0xFFFF {
        return Err("a wrong IPv4 header checksum".into());
    }
    if ip[12..16] != from.address().octets() || ip[16..20] != from.other().address().octets() {
        return Err("wrong underlay addresses".into());
    }
    let src_port = be16(34);
    if be16(36) != 4789 || src_port < 0xC000 || usize::from(be16(38)) != f.len() - 34 {
        return Err("a wrong UDP header (ports, length)".into());
    }
    if f[42] != 0x08 || f[43..46] != [0, 0, 0] || f[49] != 0 {
        return Err("wrong VXLAN flags or reserved bits".into());
    }
    let vni = Vni::decode(u32::from_be_bytes([0, f[46], f[47], f[48]]))
        .ok_or_else(|| "a VNI that is not ours".to_owned())?;
    let inner = &f[50..];
    if u16::from_be_bytes([inner[12], inner[13]]) != 0x0800 {
        return Err("an inner frame that is tagged or not IPv4".into());
    }
    let ip = &inner[14..];
    let at = |a: usize, p: usize| {
        SocketAddrV4::new(
            Ipv4Addr::new(ip[a], ip[a + 1], ip[a + 2], ip[a + 3]),
            u16::from_be_bytes([ip[p], ip[p + 1]]),
        )
    };
    let hl = usize::from(ip[0] & 0x0F) * 4;
    let (s, d) = (at(12, hl), at(16, hl + 2));
    Ok((vni, src_port, (ip[9], s.min(d), s.max(d))))
}

/// A DPU's drops, sessions and ports in a line, for failure messages.
fn summary(stats: &Stats) -> String {
    let f = fast_path(stats);
    let ports: Vec<String> = stats
        .ports
        .iter()
        .map(|p| format!("{} {}/{}", p.name, p.rx_packets, p.tx_packets))
        .collect();
    format!(
        "drops {:?}, sessions opened {} continuations {}, in software {}, ports (rx/tx) {}",
        drops(stats),
        f.sessions_opened,
        f.continuations,
        f.forwarded,
        ports.join(", ")
    )
}

fn fast_path(stats: &Stats) -> chaingate_proto::dpu::FastPathStats {
    stats.fast_path.clone().expect("fast path counters")
}

/// A port's (rx, tx) frames.
fn port(stats: &Stats, port: &str) -> (u64, u64) {
    stats
        .ports
        .iter()
        .find(|p| p.name == port)
        .map_or((0, 0), |p| (p.rx_packets, p.tx_packets))
}

#[test]
fn web_chain_across_two_dpus() {
    if !require_root() {
        return;
    }
    for (path, extra) in PATHS {
        web_chain_on(path, extra);
    }
}

fn web_chain_on(path: &str, extra: &str) {
    let t0 = Instant::now();
    let rig = TwoDpus::start(web_cluster(1500, extra)).expect("the rig");
    let base = baseline(&rig);
    let capture = rig.capture_underlay().expect("capture the underlay");
    let mut crossed = 0;
    let mut flows_total = 0;
    for (proto, port) in [(Proto::Tcp, 10_000), (Proto::Udp, 11_000)] {
        let plan = plan(proto, 8, 40, 300, port);
        let what = format!("{path} {proto:?}");
        let out = rig.traffic(&plan);
        let total = u64::from(plan.flows * plan.packets);
        if proto == Proto::Tcp {
            assert_eq!(
                out.opened,
                plan.flows,
                "{what}: every handshake completed\nA: {}\nB: {}\n{}",
                summary(&rig.stats(Dpu::A)),
                summary(&rig.stats(Dpu::B)),
                rig.logs()
            );
            assert_eq!(out.forward.handshakes, u64::from(plan.flows));
            assert_eq!(out.back.fins, u64::from(plan.flows), "{what}: FIN answered");
        }
        assert_eq!(out.sent, total, "{what}");
        for (side, name, order) in [
            (&out.forward, "forward", FORWARD),
            (&out.back, "back", BACK),
        ] {
            assert_eq!(
                side.lost(&plan),
                0,
                "{what} {name}: lost frames\nA: {}\nB: {}\n{}",
                summary(&rig.stats(Dpu::A)),
                summary(&rig.stats(Dpu::B)),
                rig.logs()
            );
            assert_eq!(side.corrupt, 0, "{what} {name}: changed frames");
            assert_eq!(
                side.disorder(),
                (0, 0),
                "{what} {name}: duplicates, reordering"
            );
            assert_eq!(
                side.stamps().keys().collect::<Vec<_>>(),
                [&order.to_vec()],
                "{what} {name}: every frame passed the chain in order"
            );
        }
        for (flow, seen) in &out.forward.flows {
            let tuples: Vec<_> = seen.tuples.iter().collect();
            assert_eq!(tuples.len(), 1, "{what}: flow {flow} kept one NAT mapping");
            let (src, dst) = tuples[0];
            assert_eq!(
                *src.ip(),
                NAT_ADDRESS,
                "{what}: the wan sees the NAT's address"
            );
            assert!((20_000..21_000).contains(&src.port()), "nat-0's ports");
            assert_eq!(*dst, plan.server);
            let client = plan.client.ip().to_bits() + flow % plan.clients;
            let (bsrc, bdst) = out.back.flows[flow].tuples.iter().next().copied().unwrap();
            assert_eq!(bsrc, plan.server, "{what}: answers come from the server");
            assert_eq!(
                bdst,
                SocketAddrV4::new(client.into(), plan.client.port() + *flow as u16),
                "{what}: answers reach the client's own address again"
            );
        }
        crossed += frames_through(&out);
        flows_total += u64::from(plan.flows);
        eprintln!(
            "{what}: one way p50 {:?} p99 {:?}; round trip p50 {:?} p99 {:?}",
            out.forward.latency.percentile(50.0).unwrap(),
            out.forward.latency.percentile(99.0).unwrap(),
            out.back.latency.percentile(50.0).unwrap(),
            out.back.latency.percentile(99.0).unwrap(),
        );
    }

    // On the underlay: each frame once to B (deliver) and once back
    // (return), well-formed, for ids-0's slot.
    let frames = capture.finish();
    let mut legs = HashMap::new();
    let mut ports: BTreeMap<_, BTreeSet<(u16, String)>> = BTreeMap::new();
    for (from, f) in &frames {
        let (vni, src_port, conn) =
            underlay_frame(*from, f).unwrap_or_else(|e| panic!("{from:?} sent {e}: {f:02x?}"));
        assert_eq!(vni.slot, 3, "ids-0 is B's vf0, port 3");
        *legs.entry((*from, vni.leg)).or_insert(0u64) += 1;
        ports.entry(conn).or_default().insert((
            src_port,
            format!("{from:?} {:?} {}", vni.leg, vni.segment.get()),
        ));
    }
    assert_eq!(
        legs,
        HashMap::from([
            ((Dpu::A, Leg::Deliver), crossed),
            ((Dpu::B, Leg::Return), crossed)
        ]),
        "A delivers each frame, B returns each"
    );
    // In software every leg of a connection takes the outer source port of
    // its flow's hash, so an ECMP underlay keeps it on one path both ways.
    // (Rules take one port per peer and VNI: the encapsulation is shared.)
    for (conn, p) in &ports {
        let distinct: BTreeSet<u16> = p.iter().map(|(port, _)| *port).collect();
        if path == "software" {
            assert_eq!(
                distinct.len(),
                1,
                "{conn:?}: one outer source port, both directions and legs \
                 (port, sender, leg, segment): {p:?}"
            );
        } else if conn == ports.keys().next().unwrap() {
            eprintln!("{path} {conn:?}: outer source ports (port, sender, leg, segment): {p:?}");
        }
    }

    let (a, b) = (rig.stats(Dpu::A), rig.stats(Dpu::B));
    assert_eq!(
        since(&a, &base[0]),
        BTreeMap::new(),
        "{path}: A dropped nothing"
    );
    assert_eq!(
        since(&b, &base[1]),
        BTreeMap::new(),
        "{path}: B dropped nothing"
    );
    let (fa, fb) = (fast_path(&a), fast_path(&b));
    assert_eq!(
        (fa.sessions_opened, fa.continuations),
        (flows_total, flows_total),
        "{path}: A owns every connection and its NAT continuation"
    );
    let bs = b.sessions.expect("B's session counters");
    assert_eq!(
        (bs.active, bs.opened, fb.sessions_opened),
        (0, 0, 0),
        "B keeps no session: it only delivers and returns"
    );
    // By rules or in software, B moved each frame in twice and out twice.
    assert_eq!(
        [port(&b, "ul"), port(&b, "vf0")],
        [(crossed, crossed); 2],
        "B: each frame from A to ids-0 and back to A once (rx, tx)"
    );
    if path == "software" {
        assert_eq!(fb.forwarded, 2 * crossed, "B's fast path moved them all");
    }
    eprintln!(
        "{path}: B moved {crossed} frames each way, {} of them in software",
        fb.forwarded / 2
    );
    assert_eq!(
        rig.services
            .iter()
            .find(|s| s.name == "ids-0")
            .unwrap()
            .rx(),
        crossed,
        "{path}: ids-0 saw each frame once"
    );
    eprintln!("web_chain_across_two_dpus, {path}: {:?}", t0.elapsed());
}

#[test]
fn too_big_frames_are_counted() {
    if !require_root() {
        return;
    }
    for (path, extra) in PATHS {
        too_big_on(path, extra);
    }
}

fn too_big_on(path: &str, extra: &str) {
    const MTU: u16 = 700;
    // A trace trailer of one stamp is 7 bytes (ID, count, magic), each
    // further stamp 2: a frame reaches B with the firewall's (+7) and comes
    // back with the IDS's too (+9); the answers likewise with the NAT's.
    let room = usize::from(MTU) - IP_OVERHEAD;
    let to_b_fits = room - 7; // 657: the largest A sends to B
    let back_fits = room - 9; // 655: the largest B sends back
    let t0 = Instant::now();
    let mut rig = TwoDpus::start(web_cluster(MTU, extra)).expect("the rig");
    let base = baseline(&rig);
    let too_big =
        |rig: &TwoDpus| [Dpu::A, Dpu::B].map(|d| dropped(&rig.stats(d), "too_big_for_underlay"));
    let run = |rig: &TwoDpus, plan: &Plan| {
        let out = rig.traffic(plan);
        assert_eq!(out.sent, u64::from(plan.flows * plan.packets));
        out
    };

    // The largest frame that fits both legs passes whole, both ways.
    let p = plan(Proto::Udp, 4, 10, back_fits, 12_000);
    let out = run(&rig, &p);
    assert_eq!(
        (out.forward.lost(&p), out.back.lost(&p)),
        (0, 0),
        "{path}: {back_fits}-byte frames fit the underlay\n{}",
        rig.logs()
    );
    assert_eq!(
        out.forward.stamps().keys().collect::<Vec<_>>(),
        [&FORWARD.to_vec()]
    );
    assert_eq!(too_big(&rig), [0, 0]);

    // One byte more: A still sends it to B, B cannot send it back.
    let p = plan(Proto::Udp, 4, 10, back_fits + 1, 13_000);
    let out = run(&rig, &p);
    assert_eq!(out.forward.frames(), 0, "{path}: none came through");
    assert_eq!(
        too_big(&rig),
        [0, 40],
        "{path}: B counted each on its way back to A"
    );

    // Too big to leave A.
    let p = plan(Proto::Udp, 4, 10, to_b_fits + 1, 14_000);
    let out = run(&rig, &p);
    assert_eq!(out.forward.frames(), 0, "{path}: none came through");
    assert_eq!(too_big(&rig), [40, 40], "{path}: A counted each");

    // 1000-byte TCP data: the handshakes and FINs pass, the data is
    // counted by A.
    let p = plan(Proto::Tcp, 4, 10, 1000, 15_000);
    let out = run(&rig, &p);
    assert_eq!(out.opened, 4, "{path}: the small handshake frames pass");
    assert_eq!(out.forward.frames(), 0, "{path}: no data came through");
    assert_eq!(out.back.fins, 4, "{path}: FIN and FIN-ACK pass");
    assert_eq!(too_big(&rig), [80, 40], "{path}: A counted the data");

    for (n, (d, stats)) in [(Dpu::A, rig.stats(Dpu::A)), (Dpu::B, rig.stats(Dpu::B))]
        .into_iter()
        .enumerate()
    {
        let mut other = since(&stats, &base[n]);
        other.remove("too_big_for_underlay");
        assert_eq!(other, BTreeMap::new(), "{path} {d:?}: no other drop");
    }

    // A bigger underlay MTU takes them (generation 2 on both).
    rig.cluster.mtu = 1500;
    for d in [Dpu::A, Dpu::B] {
        let yaml = rig.cluster.gateway(d);
        rig.apply(d, &yaml).expect("MTU 1500 applied");
    }
    let p = plan(Proto::Udp, 4, 10, 1000, 16_000);
    let out = run(&rig, &p);
    assert_eq!(
        (out.forward.lost(&p), out.back.lost(&p)),
        (0, 0),
        "{path}: MTU 1500"
    );
    assert_eq!(too_big(&rig), [80, 40]);
    eprintln!("too_big_frames_are_counted, {path}: {:?}", t0.elapsed());
}

#[test]
fn asymmetric_routing_picks_the_same_instances() {
    if !require_root() {
        return;
    }
    for (path, extra) in PATHS {
        asymmetric_on(path, extra);
    }
}

fn asymmetric_on(path: &str, extra: &str) {
    // firewall-0 behind A, firewall-1 behind B; a policy that also takes
    // what the wan sends first, so that B classifies the answers.
    let t0 = Instant::now();
    let cluster = Cluster {
        instances: vec![
            instance("firewall-0", Dpu::A, &["--stamp", "100", "firewall"]),
            instance("firewall-1", Dpu::B, &["--stamp", "101", "firewall"]),
        ],
        chain: vec!["firewall".into()],
        policies: vec!["{ priority: 10, action: { chain: web } }".into()],
        mtu: 1500,
        dpu_extra: extra.to_owned(),
    };
    let rig = TwoDpus::start(cluster).expect("the rig");
    let base = baseline(&rig);
    // The lan host sends into A's lan uplink and hears B's; the wan host
    // hears A's wan uplink and answers into B's.
    let (lan, wan) = rig.split_paths().expect("split paths");
    let ns = rig.topo.netns();
    let mut picked = BTreeMap::new();
    let mut flows_total = 0;
    for (proto, port) in [(Proto::Tcp, 20_000), (Proto::Udp, 21_000)] {
        let plan = plan(proto, 16, 20, 300, port);
        let what = format!("{path} {proto:?}");
        let out = flows::run(&plan, (ns, &lan), (ns, &wan)).expect("the traffic tool");
        if proto == Proto::Tcp {
            assert_eq!(out.opened, plan.flows, "{what}: handshakes\n{}", rig.logs());
            assert_eq!(out.back.fins, u64::from(plan.flows));
        }
        for (side, name) in [(&out.forward, "forward"), (&out.back, "back")] {
            assert_eq!(
                side.lost(&plan),
                0,
                "{what} {name}: lost\nA: {}\nB: {}\n{}",
                summary(&rig.stats(Dpu::A)),
                summary(&rig.stats(Dpu::B)),
                rig.logs()
            );
            assert_eq!(side.corrupt, 0);
            assert_eq!(side.disorder(), (0, 0));
        }
        for flow in 0..plan.flows {
            let fwd: Vec<_> = out.forward.flows[&flow].stamps.keys().cloned().collect();
            let back: Vec<_> = out.back.flows[&flow].stamps.keys().cloned().collect();
            assert_eq!(fwd.len(), 1, "{what} flow {flow}: one firewall: {fwd:?}");
            assert_eq!(
                fwd, back,
                "{what} flow {flow}: A and B picked the same firewall"
            );
            *picked.entry(fwd[0].clone()).or_insert(0) += 1;
        }
        flows_total += u64::from(plan.flows);
    }
    assert_eq!(
        picked.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([vec![100], vec![101]]),
        "{path}: both firewalls take flows: {picked:?}"
    );
    let (a, b) = (rig.stats(Dpu::A), rig.stats(Dpu::B));
    assert_eq!(
        since(&a, &base[0]),
        BTreeMap::new(),
        "{path}: A dropped nothing"
    );
    assert_eq!(
        since(&b, &base[1]),
        BTreeMap::new(),
        "{path}: B dropped nothing"
    );
    assert_eq!(
        (fast_path(&a).sessions_opened, fast_path(&b).sessions_opened),
        (flows_total, flows_total),
        "{path}: each DPU opened every connection, from its own side"
    );
    assert_eq!(
        (port(&a, "lan").1, port(&b, "wan").1),
        (0, 0),
        "{path}: nothing went back the way it came"
    );
    eprintln!(
        "asymmetric_routing_picks_the_same_instances, {path}: {:?} ({picked:?})",
        t0.elapsed()
    );
}

/// Both DPUs' drops once the rig is up: frames that reached a DPU before
/// its configuration (the links come up before it) are not the test's.
fn baseline(rig: &TwoDpus) -> [BTreeMap<String, u64>; 2] {
    [Dpu::A, Dpu::B].map(|d| drops(&rig.stats(d)))
}

/// The drops since `base`, without the zeros.
fn since(stats: &Stats, base: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    drops(stats)
        .into_iter()
        .map(|(k, v)| {
            let was = base.get(&k).copied().unwrap_or(0);
            (k, v - was)
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}
