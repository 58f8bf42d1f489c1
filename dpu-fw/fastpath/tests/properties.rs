//! Properties of the parser and the writers over generated frames and
//! arbitrary bytes: the keys are the ones the frames were built with, no
//! input makes the parser panic, and rewrites keep every checksum valid.

mod support;

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chaingate_fastpath::wire::icmp::IcmpPacket;
use chaingate_fastpath::wire::rewrite::{self, End};
use chaingate_fastpath::wire::tcp::TcpPacket;
use chaingate_fastpath::wire::udp::UdpPacket;
use chaingate_fastpath::wire::{Capture, Header, Network, checksum, parse, parse_snapped};
use chaingate_shared::IpProtocol;
use proptest::prelude::*;
use support::{Kind, Rng, sample};

#[test]
fn generated_frames_yield_the_keys_they_were_built_with() {
    let mut rng = Rng::new(0x5EED_0001);
    for i in 0..20_000 {
        let s = sample(&mut rng);
        let parsed = parse(&s.bytes).unwrap_or_else(|e| panic!("frame {i} {:?}: {e}", s.kind));
        assert_eq!(parsed.key(), Some(&s.key), "frame {i} {:?}", s.kind);
        match &s.inner {
            Some(inner) => {
                assert_eq!(parsed.inner_key(), Some(&inner.key), "inner of frame {i}");
                assert_eq!(parsed.tunnel().map(|t| t.inner_offset), s.inner_offset);
            }
            None => assert!(parsed.tunnel().is_none(), "frame {i}"),
        }
        assert_eq!(
            parsed.outer().icmp_error().is_some(),
            s.kind == Kind::IcmpError
        );
    }
}

/// Verifies the IPv4 header checksum and the transport checksum of one
/// level of a frame, as a receiver would.
fn checksums_verify(frame: &[u8], layers: &chaingate_fastpath::wire::Layers) -> bool {
    let Some(l4) = layers.transport_offset() else {
        return true;
    };
    let segment = &frame[l4..layers.end()];
    let len = segment.len();
    let (pseudo, ipv6) = match layers.network() {
        Network::Ipv4(l3) => {
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(&frame[l3 + 12..l3 + 16]).unwrap());
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&frame[l3 + 16..l3 + 20]).unwrap());
            let ihl = usize::from(frame[l3] & 0xF) * 4;
            if !checksum::verifies(checksum::sum(&frame[l3..l3 + ihl])) {
                return false;
            }
            let p = layers.protocol().unwrap();
            (checksum::pseudo_header_v4(src, dst, p, len as u16), false)
        }
        Network::Ipv6(l3) => {
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[l3 + 8..l3 + 24]).unwrap());
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&frame[l3 + 24..l3 + 40]).unwrap());
            let p = layers.protocol().unwrap();
            (checksum::pseudo_header_v6(src, dst, p, len as u32), true)
        }
        _ => return true,
    };
    match layers.protocol() {
        Some(IpProtocol::Tcp) => TcpPacket::new_checked(segment)
            .unwrap()
            .verify_checksum(pseudo),
        Some(IpProtocol::Udp) => UdpPacket::new_checked(segment, Capture::Whole)
            .unwrap()
            .verify_checksum(pseudo),
        Some(IpProtocol::Icmp) => IcmpPacket::new_checked(segment, Header::Icmpv4)
            .unwrap()
            .verify_checksum(0),
        Some(IpProtocol::Icmpv6) if ipv6 => IcmpPacket::new_checked(segment, Header::Icmpv6)
            .unwrap()
            .verify_checksum(pseudo),
        _ => true,
    }
}

#[test]
fn rewrites_keep_every_checksum_valid() {
    let mut rng = Rng::new(0x5EED_0002);
    let mut rewritten = [0usize; 3];
    for i in 0..5_000 {
        let s = sample(&mut rng);
        // Fragments carry a partial datagram: their transport checksum
        // cannot be verified alone, before or after.
        if matches!(s.kind, Kind::FirstFragment | Kind::LaterFragment) {
            continue;
        }
        let mut frame = s.bytes.clone();
        let layers = *parse(&frame).unwrap().outer();
        assert!(checksums_verify(&frame, &layers), "frame {i} as built");
        let new_src: IpAddr = if s.ipv6 {
            IpAddr::V6(Ipv6Addr::from_bits(
                u128::from(rng.u64()) << 64 | u128::from(rng.u64()),
            ))
        } else {
            IpAddr::V4(Ipv4Addr::from_bits(rng.u64() as u32))
        };
        rewrite::set_addr(&mut frame, &layers, End::Src, new_src).unwrap();
        rewritten[0] += 1;
        let new_port = support::port(&mut rng);
        match rewrite::set_port(&mut frame, &layers, End::Dst, new_port) {
            Ok(()) => rewritten[1] += 1,
            Err(e) => assert!(
                !matches!(s.kind, Kind::Tcp | Kind::Udp),
                "frame {i} {:?}: {e}",
                s.kind
            ),
        }
        if rewrite::set_echo_ident(&mut frame, &layers, new_port).is_ok() {
            rewritten[2] += 1;
        }
        assert!(
            checksums_verify(&frame, &layers),
            "frame {i} {:?} after rewrite",
            s.kind
        );
        let key = *parse(&frame).unwrap().key().unwrap();
        if s.kind != Kind::IcmpError {
            assert_eq!(key.src(), new_src, "frame {i}");
        }
        if matches!(s.kind, Kind::Tcp | Kind::Udp) {
            assert_eq!(key.dst_port(), new_port, "frame {i}");
        }
        if s.kind == Kind::IcmpEcho {
            assert_eq!((key.src_port(), key.dst_port()), (new_port, new_port));
        }
    }
    assert!(rewritten.iter().all(|&n| n > 100), "{rewritten:?}");
}

#[test]
fn rewrites_refuse_what_is_not_there() {
    let mut rng = Rng::new(7);
    let s = loop {
        let s = sample(&mut rng);
        if s.kind == Kind::LaterFragment && !s.ipv6 {
            break s;
        }
    };
    let mut frame = s.bytes.clone();
    let layers = *parse(&frame).unwrap().outer();
    assert_eq!(
        rewrite::set_port(&mut frame, &layers, End::Src, 1),
        Err(rewrite::RewriteError::NoSuchField)
    );
    assert_eq!(
        rewrite::set_addr(
            &mut frame,
            &layers,
            End::Dst,
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        ),
        Err(rewrite::RewriteError::FamilyMismatch)
    );
    assert_eq!(frame, s.bytes, "refused rewrites change nothing");
    let short = &mut frame[..layers.network().offset() + 10];
    assert_eq!(
        rewrite::set_addr(short, &layers, End::Dst, IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Err(rewrite::RewriteError::OutOfBounds)
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(4096),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse(&bytes);
        let _ = parse_snapped(&bytes);
    }

    #[test]
    fn damaged_frames_never_panic_and_errors_point_inside(
        seed in any::<u64>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut rng = Rng::new(seed);
        let mut bytes = sample(&mut rng).bytes;
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        for result in [parse(&bytes), parse_snapped(&bytes)] {
            match result {
                Ok(p) => {
                    prop_assert!(p.outer().end() <= bytes.len());
                    if let Some(l4) = p.outer().transport_offset() {
                        prop_assert!(l4 <= p.outer().end());
                    }
                }
                Err(e) => prop_assert!(e.offset() <= bytes.len(), "{e} in {} bytes", bytes.len()),
            }
        }
    }
}
