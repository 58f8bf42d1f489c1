//! Frames the tests send: plain Ethernet/IPv4 with UDP or TCP, with a
//! payload that says which flow and which packet it is.

use std::net::Ipv4Addr;

use chaingate_fastpath::wire::build::{FrameSpec, IpSpec, L4Spec, NetSpec};
use chaingate_fastpath::wire::tcp::{TcpFlags, TcpRepr};
use chaingate_fastpath::wire::{EthernetAddress, parse};

/// The MAC address of the lan-side host.
pub const LAN_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x0a]);
/// The MAC address of the wan-side host.
pub const WAN_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x0b]);

/// An Ethernet/IPv4 frame from `src` to `dst` (address, MAC) with the
/// transport header `l4` and `payload`.
///
/// # Panics
/// If the spec cannot be built (a payload past 64 KiB).
#[must_use]
pub fn ipv4(
    src: (Ipv4Addr, EthernetAddress),
    dst: (Ipv4Addr, EthernetAddress),
    l4: L4Spec,
    payload: &[u8],
) -> Vec<u8> {
    let spec = FrameSpec {
        dst_mac: dst.1,
        src_mac: src.1,
        vlans: &[],
        net: NetSpec::Ip(IpSpec::v4(src.0, dst.0), l4),
        payload,
    };
    let mut buf = vec![0u8; spec.len()];
    let n = spec.build(&mut buf).expect("a valid frame");
    buf.truncate(n);
    buf
}

/// A UDP datagram from `src` to `dst` (lan to wan when `to_wan`).
#[must_use]
pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), to_wan: bool, payload: &[u8]) -> Vec<u8> {
    let (smac, dmac) = if to_wan {
        (LAN_MAC, WAN_MAC)
    } else {
        (WAN_MAC, LAN_MAC)
    };
    ipv4(
        (src.0, smac),
        (dst.0, dmac),
        L4Spec::Udp {
            src_port: src.1,
            dst_port: dst.1,
        },
        payload,
    )
}

/// A TCP segment from `src` to `dst` (lan to wan when `to_wan`).
#[must_use]
pub fn tcp(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    to_wan: bool,
    flags: TcpFlags,
    payload: &[u8],
) -> Vec<u8> {
    let (smac, dmac) = if to_wan {
        (LAN_MAC, WAN_MAC)
    } else {
        (WAN_MAC, LAN_MAC)
    };
    ipv4(
        (src.0, smac),
        (dst.0, dmac),
        L4Spec::Tcp(TcpRepr {
            src_port: src.1,
            dst_port: dst.1,
            seq: 1,
            ack: 1,
            flags,
            window: 1000,
        }),
        payload,
    )
}

/// The outer VLAN id of a frame, if it is tagged.
#[must_use]
pub fn outer_vlan(frame: &[u8]) -> Option<u16> {
    parse(frame).ok()?.outer().vlans().outer().map(|v| v.get())
}

/// Asserts that `got` holds exactly the frames `sent`, in any order, each
/// unchanged; the message counts instead of dumping bytes.
///
/// # Panics
/// When they differ.
pub fn assert_same(got: &[Vec<u8>], sent: &[Vec<u8>], what: &str) {
    let (mut got, mut sent) = (got.to_vec(), sent.to_vec());
    got.sort();
    sent.sort();
    let unchanged = got.iter().filter(|f| sent.binary_search(f).is_ok()).count();
    assert!(
        got == sent,
        "{what}: {} of {} frames arrived, {unchanged} of them unchanged",
        got.len(),
        sent.len()
    );
}
