//! The sample capture that the demo prints (`samples/mixed.pcap`) and the
//! output it must give (`samples/mixed.flows.jsonl`): every kind of frame
//! the parser reads, a few it rejects, and what `dpu-fw flows` says about
//! each. Both files are generated here; `CHAINGATE_UPDATE_SAMPLES=1 cargo
//! test -p dpu-fw --test sample` rewrites them after a deliberate change.

// Frames are pushed one by one, each with the story of why it is there.
#![allow(clippy::vec_init_then_push)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use chaingate_fastpath::wire::build::{FrameSpec, IpSpec, L4Spec, NetSpec};
use chaingate_fastpath::wire::icmpv4::{Icmpv4Repr, Icmpv4Type};
use chaingate_fastpath::wire::icmpv6::Icmpv6Repr;
use chaingate_fastpath::wire::ipv6ext::{FragmentFields, Ipv6ExtRepr};
use chaingate_fastpath::wire::tcp::{TcpFlags, TcpRepr};
use chaingate_fastpath::wire::{EtherType, EthernetAddress, Tci};
use chaingate_shared::{IpProtocol, VlanId};
use dpu_fw::capture::{CaptureWriter, LINKTYPE_ETHERNET};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 5);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 80);

fn frame(vlans: &[(EtherType, Tci)], net: NetSpec<'_>, payload: &[u8]) -> Vec<u8> {
    let spec = FrameSpec {
        dst_mac: EthernetAddress([0x02, 0, 0, 0, 0, 0x02]),
        src_mac: EthernetAddress([0x02, 0, 0, 0, 0, 0x01]),
        vlans,
        net,
        payload,
    };
    let mut buf = vec![0u8; spec.len()];
    spec.build(&mut buf).unwrap();
    buf
}

fn v4(src: Ipv4Addr, dst: Ipv4Addr) -> IpSpec<'static> {
    IpSpec::V4 {
        src,
        dst,
        ttl: 64,
        dscp: 0,
        ident: 7,
        frag: None,
        options: &[],
    }
}

fn v4_frag(offset: u16, more: bool) -> IpSpec<'static> {
    IpSpec::V4 {
        src: CLIENT,
        dst: SERVER,
        ttl: 64,
        dscp: 0,
        ident: 99,
        frag: Some((offset, more)),
        options: &[],
    }
}

fn v6<'a>(src: &str, dst: &str, ext: &'a [Ipv6ExtRepr]) -> IpSpec<'a> {
    IpSpec::V6 {
        src: src.parse::<Ipv6Addr>().unwrap(),
        dst: dst.parse::<Ipv6Addr>().unwrap(),
        hop_limit: 64,
        traffic_class: 0,
        ext,
    }
}

fn tcp(sport: u16, dport: u16, flags: TcpFlags) -> L4Spec {
    L4Spec::Tcp(TcpRepr {
        src_port: sport,
        dst_port: dport,
        seq: 1000,
        ack: 0,
        flags,
        window: 64240,
    })
}

fn tag(tpid: EtherType, vid: u16) -> (EtherType, Tci) {
    (tpid, Tci::new(0, false, VlanId::new(vid).unwrap()))
}

fn tunnel_header(vxlan: bool, vni: u32, ethernet: bool) -> Vec<u8> {
    let [_, a, b, c] = vni.to_be_bytes();
    if vxlan {
        vec![0x08, 0, 0, 0, a, b, c, 0]
    } else {
        let proto: u16 = if ethernet { 0x6558 } else { 0x86DD };
        let [p0, p1] = proto.to_be_bytes();
        vec![0, 0, p0, p1, a, b, c, 0]
    }
}

/// The sample's records: (bytes kept, original length).
fn sample_records() -> Vec<(Vec<u8>, u32)> {
    let vlan100 = [tag(EtherType::Vlan, 100)];
    let mut frames: Vec<Vec<u8>> = Vec::new();
    // A TCP handshake on VLAN 100.
    frames.push(frame(
        &vlan100,
        NetSpec::Ip(v4(CLIENT, SERVER), tcp(40000, 443, TcpFlags::SYN)),
        b"",
    ));
    frames.push(frame(
        &vlan100,
        NetSpec::Ip(
            v4(SERVER, CLIENT),
            tcp(443, 40000, TcpFlags::SYN | TcpFlags::ACK),
        ),
        b"",
    ));
    frames.push(frame(
        &vlan100,
        NetSpec::Ip(v4(CLIENT, SERVER), tcp(40000, 443, TcpFlags::ACK)),
        b"",
    ));
    // DNS over IPv6.
    frames.push(frame(
        &[],
        NetSpec::Ip(
            v6("2001:db8:1::5", "2001:db8:2::53", &[]),
            L4Spec::Udp {
                src_port: 53000,
                dst_port: 53,
            },
        ),
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00",
    ));
    // A ping and its answer.
    frames.push(frame(
        &[],
        NetSpec::Ip(
            v4(CLIENT, SERVER),
            L4Spec::Icmpv4(Icmpv4Repr::EchoRequest {
                ident: 0x1234,
                seq: 1,
            }),
        ),
        b"abcdefgh",
    ));
    frames.push(frame(
        &[],
        NetSpec::Ip(
            v4(SERVER, CLIENT),
            L4Spec::Icmpv4(Icmpv4Repr::EchoReply {
                ident: 0x1234,
                seq: 1,
            }),
        ),
        b"abcdefgh",
    ));
    // Port unreachable about a UDP datagram CLIENT:5353 -> SERVER:9999.
    let dgram = frame(
        &[],
        NetSpec::Ip(
            v4(CLIENT, SERVER),
            L4Spec::Udp {
                src_port: 5353,
                dst_port: 9999,
            },
        ),
        b"hello",
    );
    let unreachable = Icmpv4Repr::Error {
        ty: Icmpv4Type::DstUnreachable,
        code: 3,
        rest: [0; 4],
    };
    frames.push(frame(
        &[],
        NetSpec::Ip(v4(SERVER, CLIENT), L4Spec::Icmpv4(unreachable)),
        &dgram[14..14 + 28],
    ));
    // QinQ: service tag 200, customer tag 300.
    frames.push(frame(
        &[tag(EtherType::QinQ, 200), tag(EtherType::Vlan, 300)],
        NetSpec::Ip(v4(CLIENT, SERVER), tcp(40001, 80, TcpFlags::SYN)),
        b"",
    ));
    // VXLAN 5000 carrying a TCP SYN.
    let inner = frame(
        &[],
        NetSpec::Ip(
            v4(
                Ipv4Addr::new(192, 168, 1, 10),
                Ipv4Addr::new(192, 168, 1, 20),
            ),
            tcp(5555, 80, TcpFlags::SYN),
        ),
        b"",
    );
    let mut payload = tunnel_header(true, 5000, true);
    payload.extend_from_slice(&inner);
    frames.push(frame(
        &[],
        NetSpec::Ip(
            v4(Ipv4Addr::new(172, 16, 0, 1), Ipv4Addr::new(172, 16, 0, 2)),
            L4Spec::Udp {
                src_port: 49152,
                dst_port: 4789,
            },
        ),
        &payload,
    ));
    // Geneve 7 carrying an IPv6 UDP packet directly (no inner Ethernet).
    let inner6 = frame(
        &[],
        NetSpec::Ip(
            v6("fd00::1", "fd00::2", &[]),
            L4Spec::Udp {
                src_port: 7000,
                dst_port: 7001,
            },
        ),
        b"x",
    );
    let mut payload = tunnel_header(false, 7, false);
    payload.extend_from_slice(&inner6[14..]);
    frames.push(frame(
        &[],
        NetSpec::Ip(
            v4(Ipv4Addr::new(172, 16, 0, 1), Ipv4Addr::new(172, 16, 0, 3)),
            L4Spec::Udp {
                src_port: 49153,
                dst_port: 6081,
            },
        ),
        &payload,
    ));
    // A UDP datagram in two IPv4 fragments.
    frames.push(frame(
        &[],
        NetSpec::Ip(
            v4_frag(0, true),
            L4Spec::Udp {
                src_port: 6000,
                dst_port: 6001,
            },
        ),
        &[0x55; 32],
    ));
    frames.push(frame(
        &[],
        NetSpec::Ip(v4_frag(40, false), L4Spec::Raw(IpProtocol::Udp)),
        &[0x55; 24],
    ));
    // IPv6 with hop-by-hop options and a (first) fragment header.
    let ext = [
        Ipv6ExtRepr {
            kind: IpProtocol::HopByHop,
            next_header: IpProtocol::Udp,
            len: 8,
            fragment: None,
        },
        Ipv6ExtRepr {
            kind: IpProtocol::Ipv6Frag,
            next_header: IpProtocol::Udp,
            len: 8,
            fragment: Some(FragmentFields {
                offset: 0,
                more: true,
                ident: 0x0BAD_CAFE,
            }),
        },
    ];
    frames.push(frame(
        &[],
        NetSpec::Ip(
            v6("2001:db8:1::5", "2001:db8:2::7", &ext),
            L4Spec::Udp {
                src_port: 4000,
                dst_port: 4001,
            },
        ),
        &[0; 16],
    ));
    // ARP and LLDP: no IP, no key, no error.
    frames.push(frame(&vlan100, NetSpec::Raw(EtherType::Arp), &[0; 28]));
    frames.push(frame(
        &[],
        NetSpec::Raw(EtherType::Unknown(0x88CC)),
        &[0; 46],
    ));
    // ICMPv6 echo.
    frames.push(frame(
        &[],
        NetSpec::Ip(
            v6("2001:db8:1::5", "2001:db8:2::53", &[]),
            L4Spec::Icmpv6(Icmpv6Repr::EchoRequest { ident: 77, seq: 1 }),
        ),
        b"ping",
    ));
    let mut records: Vec<(Vec<u8>, u32)> = frames
        .into_iter()
        .map(|f| {
            let len = f.len() as u32;
            (f, len)
        })
        .collect();
    // A large TCP segment captured with a 96-byte snap length.
    let big = frame(
        &[],
        NetSpec::Ip(
            v4(CLIENT, SERVER),
            tcp(40000, 443, TcpFlags::ACK | TcpFlags::PSH),
        ),
        &[0x42; 1400],
    );
    records.push((big[..96].to_vec(), big.len() as u32));
    // A corrupt IPv4 header checksum.
    let mut bad = frame(
        &[],
        NetSpec::Ip(v4(CLIENT, SERVER), tcp(1, 2, TcpFlags::SYN)),
        b"",
    );
    bad[24] ^= 0xFF;
    let len = bad.len() as u32;
    records.push((bad, len));
    // A frame that ends inside its IPv4 header (whole as captured).
    let short = frame(
        &[],
        NetSpec::Ip(v4(CLIENT, SERVER), tcp(1, 2, TcpFlags::SYN)),
        b"",
    )[..24]
        .to_vec();
    let len = short.len() as u32;
    records.push((short, len));
    records
}

fn sample_capture() -> Vec<u8> {
    let mut w = CaptureWriter::new(Vec::new(), LINKTYPE_ETHERNET, 65535).unwrap();
    for (i, (kept, orig)) in sample_records().iter().enumerate() {
        w.write_cut(kept, *orig, 1_767_225_600_000_000 + i as u64 * 1000)
            .unwrap();
    }
    w.finish().unwrap()
}

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../samples")
}

fn check_or_update(name: &str, generated: &[u8]) {
    let path = samples().join(name);
    if std::env::var_os("CHAINGATE_UPDATE_SAMPLES").is_some() {
        std::fs::write(&path, generated).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} differs from what the sample generator makes; if the change is deliberate, \
         run CHAINGATE_UPDATE_SAMPLES=1 cargo test -p dpu-fw --test sample",
        path.display()
    );
}

#[test]
fn sample_capture_is_current() {
    check_or_update("mixed.pcap", &sample_capture());
}

#[test]
fn sample_flows_are_what_operators_see() {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    let summary = dpu_fw::flows::dump(&sample_capture()[..], &mut out, &mut notes).unwrap();
    assert_eq!(summary.frames, sample_records().len() as u64);
    assert!(summary.stopped.is_none() && notes.is_empty());
    check_or_update("mixed.flows.jsonl", &out);
}
