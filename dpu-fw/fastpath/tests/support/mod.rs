//! Random frames of every kind the parser reads, each with the flow keys it
//! must yield. Shared by the property tests, the etherparse cross-check and
//! the parser benchmark; deterministic from a seed so a failure reproduces.

#![allow(dead_code, clippy::cast_possible_truncation)]

pub(crate) mod etherparse;

use core::net::{Ipv4Addr, Ipv6Addr};

use chaingate_fastpath::wire::build::{FrameSpec, IpSpec, L4Spec, NetSpec};
use chaingate_fastpath::wire::icmpv4::{Icmpv4Repr, Icmpv4Type};
use chaingate_fastpath::wire::icmpv6::{Icmpv6Repr, Icmpv6Type};
use chaingate_fastpath::wire::ipv6ext::{FragmentFields, Ipv6ExtRepr};
use chaingate_fastpath::wire::tcp::{TcpFlags, TcpRepr};
use chaingate_fastpath::wire::{EtherType, EthernetAddress, Tci};
use chaingate_shared::{FlowKey, IpProtocol, VlanId, VlanStack};

/// splitmix64: small, fast, and good enough to pick test cases.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.u64() % n
    }

    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub(crate) fn u16(&mut self) -> u16 {
        self.u64() as u16
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u64() as u8).collect()
    }
}

/// What kind of frame was made (for reports and the benchmark's mix).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Tcp,
    Udp,
    IcmpEcho,
    IcmpError,
    IcmpOther,
    Opaque,
    FirstFragment,
    LaterFragment,
}

/// A frame and what the parser must say about it.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    pub(crate) bytes: Vec<u8>,
    pub(crate) kind: Kind,
    pub ipv6: bool,
    pub(crate) key: FlowKey,
    /// For a VXLAN or Geneve frame: the inner frame's key.
    pub(crate) inner: Option<Box<Sample>>,
    /// Where the tunnel's inner frame starts.
    pub(crate) inner_offset: Option<usize>,
}

const MAC_A: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xA]);
const MAC_B: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xB]);

fn vlans(rng: &mut Rng) -> Vec<(EtherType, Tci)> {
    let n = [0, 0, 1, 1, 2][rng.below(5) as usize];
    (0..n)
        .map(|_| {
            let tpid = if rng.chance(50) {
                EtherType::Vlan
            } else {
                EtherType::QinQ
            };
            let vid = VlanId::from_tci(rng.u16());
            (tpid, Tci::new(rng.below(8) as u8, rng.chance(10), vid))
        })
        .collect()
}

fn stack(tags: &[(EtherType, Tci)]) -> VlanStack {
    let mut s = VlanStack::EMPTY;
    for (_, tci) in tags {
        s.push_inner(tci.vid()).unwrap();
    }
    s
}

/// A port that is not a tunnel port (the generator decides on tunnels).
pub(crate) fn port(rng: &mut Rng) -> u16 {
    match rng.u16() {
        4789 | 6081 => 4790,
        p => p,
    }
}

fn ext_chain(rng: &mut Rng, fragment: Option<FragmentFields>) -> Vec<Ipv6ExtRepr> {
    let mut chain = Vec::new();
    let ext = |kind, len| Ipv6ExtRepr {
        kind,
        next_header: IpProtocol::Udp,
        len,
        fragment: None,
    };
    if rng.chance(25) {
        chain.push(ext(IpProtocol::HopByHop, 8 * (1 + rng.below(2) as usize)));
    }
    if rng.chance(20) {
        chain.push(ext(IpProtocol::Ipv6Opts, 8 * (1 + rng.below(3) as usize)));
    }
    if rng.chance(15) {
        chain.push(ext(IpProtocol::Ipv6Route, 8 * (1 + rng.below(3) as usize)));
    }
    if let Some(f) = fragment {
        chain.push(Ipv6ExtRepr {
            fragment: Some(f),
            ..ext(IpProtocol::Ipv6Frag, 8)
        });
    }
    // After a non-first fragment nothing more is parsed: end the chain.
    let later_fragment = fragment.is_some_and(|f| f.offset != 0);
    if !later_fragment && rng.chance(10) {
        chain.push(ext(IpProtocol::Ah, 4 * (3 + rng.below(4) as usize)));
    }
    chain
}

struct Ends {
    v4: (Ipv4Addr, Ipv4Addr),
    v6: (Ipv6Addr, Ipv6Addr),
}

fn ends(rng: &mut Rng) -> Ends {
    Ends {
        v4: (
            Ipv4Addr::from_bits(rng.u64() as u32),
            Ipv4Addr::from_bits(rng.u64() as u32),
        ),
        v6: (
            Ipv6Addr::from_bits(u128::from(rng.u64()) << 64 | u128::from(rng.u64())),
            Ipv6Addr::from_bits(u128::from(rng.u64()) << 64 | u128::from(rng.u64())),
        ),
    }
}

fn build(tags: &[(EtherType, Tci)], net: NetSpec<'_>, payload: &[u8]) -> Vec<u8> {
    let spec = FrameSpec {
        dst_mac: MAC_B,
        src_mac: MAC_A,
        vlans: tags,
        net,
        payload,
    };
    let mut buf = vec![0u8; spec.len()];
    spec.build(&mut buf).unwrap();
    buf
}

/// A random frame without tunnel, `ipv6` chosen by the caller when given.
fn plain(rng: &mut Rng, ipv6: Option<bool>, allow_error: bool) -> Sample {
    let tags = vlans(rng);
    let ipv6 = ipv6.unwrap_or_else(|| rng.chance(40));
    let e = ends(rng);
    let mut kind = match rng.below(100) {
        0..30 => Kind::Tcp,
        30..58 => Kind::Udp,
        58..70 => Kind::IcmpEcho,
        70..80 => Kind::IcmpError,
        80..84 => Kind::IcmpOther,
        84..88 => Kind::Opaque,
        88..94 => Kind::FirstFragment,
        _ => Kind::LaterFragment,
    };
    if kind == Kind::IcmpError && !allow_error {
        kind = Kind::IcmpEcho;
    }
    let payload_len = rng.below(48) as usize;
    let mut payload = rng.bytes(payload_len);
    let (sport, dport) = (port(rng), port(rng));
    let tcp = L4Spec::Tcp(TcpRepr {
        src_port: sport,
        dst_port: dport,
        seq: rng.u64() as u32,
        ack: rng.u64() as u32,
        flags: TcpFlags(rng.u64() as u8),
        window: rng.u16(),
    });
    let udp = L4Spec::Udp {
        src_port: sport,
        dst_port: dport,
    };
    let ident = rng.u16();
    let frag_offset = 8 * (1 + rng.below(180) as u16);
    let (l4, proto, ports) = match kind {
        Kind::Tcp => (tcp, IpProtocol::Tcp, (sport, dport)),
        Kind::Udp => (udp, IpProtocol::Udp, (sport, dport)),
        Kind::FirstFragment => (udp, IpProtocol::Udp, (sport, dport)),
        Kind::LaterFragment => (L4Spec::Raw(IpProtocol::Tcp), IpProtocol::Tcp, (0, 0)),
        Kind::Opaque => {
            let p = [IpProtocol::Gre, IpProtocol::Esp, IpProtocol::Sctp][rng.below(3) as usize];
            (L4Spec::Raw(p), p, (0, 0))
        }
        Kind::IcmpEcho if ipv6 => (
            L4Spec::Icmpv6(if rng.chance(50) {
                Icmpv6Repr::EchoRequest { ident, seq: 1 }
            } else {
                Icmpv6Repr::EchoReply { ident, seq: 1 }
            }),
            IpProtocol::Icmpv6,
            (ident, ident),
        ),
        Kind::IcmpEcho => (
            L4Spec::Icmpv4(if rng.chance(50) {
                Icmpv4Repr::EchoRequest { ident, seq: 1 }
            } else {
                Icmpv4Repr::EchoReply { ident, seq: 1 }
            }),
            IpProtocol::Icmp,
            (ident, ident),
        ),
        Kind::IcmpOther if ipv6 => (
            L4Spec::Icmpv6(Icmpv6Repr::Other {
                ty: Icmpv6Type::NeighborSolicit,
                code: 0,
                rest: [0; 4],
            }),
            IpProtocol::Icmpv6,
            (0, 0),
        ),
        Kind::IcmpOther => (
            L4Spec::Icmpv4(Icmpv4Repr::Other {
                ty: Icmpv4Type::Unknown(10), // router solicitation
                code: 0,
                rest: [0; 4],
            }),
            IpProtocol::Icmp,
            (0, 0),
        ),
        Kind::IcmpError => {
            let quoted = plain(rng, Some(ipv6), false);
            let ip_start = 14 + 4 * quoted_vlans(&quoted.bytes);
            // ICMPv4 quotes the IP header and 8 bytes; ICMPv6 as much as
            // fits, here the whole packet.
            let quote_len = if ipv6 {
                quoted.bytes.len() - ip_start
            } else {
                let ihl = usize::from(quoted.bytes[ip_start] & 0x0F) * 4;
                (ihl + 8).min(quoted.bytes.len() - ip_start)
            };
            payload = quoted.bytes[ip_start..ip_start + quote_len].to_vec();
            let key = quoted.key.reversed().with_vlans(stack(&tags));
            let l4 = if ipv6 {
                L4Spec::Icmpv6(Icmpv6Repr::Error {
                    ty: [
                        Icmpv6Type::DstUnreachable,
                        Icmpv6Type::PacketTooBig,
                        Icmpv6Type::TimeExceeded,
                    ][rng.below(3) as usize],
                    code: 0,
                    rest: [0, 0, 5, 0],
                })
            } else {
                L4Spec::Icmpv4(Icmpv4Repr::Error {
                    ty: [Icmpv4Type::DstUnreachable, Icmpv4Type::TimeExceeded]
                        [rng.below(2) as usize],
                    code: rng.below(4) as u8,
                    rest: [0; 4],
                })
            };
            let net = ip_spec(rng, ipv6, &e, None, &[]);
            let bytes = match net {
                Ip::V4(ip) => build(&tags, NetSpec::Ip(ip, l4), &payload),
                Ip::V6(src, dst, chain) => {
                    build(&tags, NetSpec::Ip(v6_spec(src, dst, &chain), l4), &payload)
                }
            };
            return Sample {
                bytes,
                kind,
                ipv6,
                key,
                inner: None,
                inner_offset: None,
            };
        }
    };
    let fragment = match kind {
        Kind::FirstFragment => Some((0, true)),
        Kind::LaterFragment => Some((frag_offset, rng.chance(50))),
        _ => None,
    };
    let options = if !ipv6 && rng.chance(15) {
        vec![1u8; 4 * (1 + rng.below(3) as usize)]
    } else {
        Vec::new()
    };
    let net = ip_spec(rng, ipv6, &e, fragment, &options);
    let (bytes, key) = match net {
        Ip::V4(ip) => (
            build(&tags, NetSpec::Ip(ip, l4), &payload),
            FlowKey::v4(e.v4.0, e.v4.1, proto, ports.0, ports.1),
        ),
        Ip::V6(src, dst, chain) => (
            build(&tags, NetSpec::Ip(v6_spec(src, dst, &chain), l4), &payload),
            FlowKey::v6(src, dst, proto, ports.0, ports.1),
        ),
    };
    Sample {
        bytes,
        kind,
        ipv6,
        key: key.with_vlans(stack(&tags)),
        inner: None,
        inner_offset: None,
    }
}

fn quoted_vlans(frame: &[u8]) -> usize {
    let mut n = 0;
    while matches!(
        u16::from_be_bytes([frame[12 + 4 * n], frame[13 + 4 * n]]),
        0x8100 | 0x88A8
    ) {
        n += 1;
    }
    n
}

enum Ip<'a> {
    V4(IpSpec<'a>),
    V6(Ipv6Addr, Ipv6Addr, Vec<Ipv6ExtRepr>),
}

fn ip_spec<'a>(
    rng: &mut Rng,
    ipv6: bool,
    e: &Ends,
    fragment: Option<(u16, bool)>,
    options: &'a [u8],
) -> Ip<'a> {
    if ipv6 {
        let frag = fragment.map(|(offset, more)| FragmentFields {
            offset,
            more,
            ident: rng.u64() as u32,
        });
        Ip::V6(e.v6.0, e.v6.1, ext_chain(rng, frag))
    } else {
        Ip::V4(IpSpec::V4 {
            src: e.v4.0,
            dst: e.v4.1,
            ttl: rng.below(256) as u8,
            dscp: rng.below(64) as u8,
            ident: rng.u16(),
            frag: fragment,
            options,
        })
    }
}

fn v6_spec(src: Ipv6Addr, dst: Ipv6Addr, chain: &[Ipv6ExtRepr]) -> IpSpec<'_> {
    IpSpec::V6 {
        src,
        dst,
        hop_limit: 64,
        traffic_class: 0,
        ext: chain,
    }
}

/// A random frame: mostly plain, some VXLAN or Geneve tunnels around a
/// random inner frame.
pub(crate) fn sample(rng: &mut Rng) -> Sample {
    if !rng.chance(12) {
        return plain(rng, None, true);
    }
    let inner = plain(rng, None, true);
    let vni = (rng.u64() as u32) & 0x00FF_FFFF;
    let geneve = rng.chance(50);
    let mut tunnel_payload = if geneve {
        let mut h = vec![0x00, 0x00, 0x65, 0x58];
        h.extend_from_slice(&vni.to_be_bytes()[1..]);
        h.push(0);
        h
    } else {
        let mut h = vec![0x08, 0, 0, 0];
        h.extend_from_slice(&vni.to_be_bytes()[1..]);
        h.push(0);
        h
    };
    tunnel_payload.extend_from_slice(&inner.bytes);
    let tags = vlans(rng);
    let ipv6 = rng.chance(30);
    let e = ends(rng);
    let sport = port(rng);
    let dport = if geneve { 6081 } else { 4789 };
    let l4 = L4Spec::Udp {
        src_port: sport,
        dst_port: dport,
    };
    let (bytes, key, header_len) = match ip_spec(rng, ipv6, &e, None, &[]) {
        Ip::V4(ip) => (
            build(&tags, NetSpec::Ip(ip, l4), &tunnel_payload),
            FlowKey::v4(e.v4.0, e.v4.1, IpProtocol::Udp, sport, dport),
            20,
        ),
        Ip::V6(src, dst, chain) => {
            let len = 40 + chain.iter().map(|c| c.len).sum::<usize>();
            (
                build(
                    &tags,
                    NetSpec::Ip(v6_spec(src, dst, &chain), l4),
                    &tunnel_payload,
                ),
                FlowKey::v6(src, dst, IpProtocol::Udp, sport, dport),
                len,
            )
        }
    };
    let inner_offset = 14 + 4 * tags.len() + header_len + 8 + 8;
    Sample {
        bytes,
        kind: Kind::Udp,
        ipv6,
        key: key.with_vlans(stack(&tags)),
        inner: Some(Box::new(inner)),
        inner_offset: Some(inner_offset),
    }
}
