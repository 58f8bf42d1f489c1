//! ICMP for IPv6 (RFC 4443): message types. The header is shared with
//! ICMPv4 ([`super::icmp`]); the checksum covers the IPv6 pseudo-header.
//! Types below 128 are errors (RFC 4443 2.1) and quote as much of the
//! offending packet as fits in the minimum MTU.

use chaingate_shared::IpProtocol;

use super::Header;
use super::icmp::{IcmpRepr, IcmpType};

chaingate_shared::code_enum! {
    /// ICMPv6 message types.
    pub enum Icmpv6Type: u8 {
        /// Destination unreachable.
        DstUnreachable = 1,
        /// Packet too big.
        PacketTooBig = 2,
        /// Time exceeded.
        TimeExceeded = 3,
        /// Parameter problem.
        ParamProblem = 4,
        /// Echo request.
        EchoRequest = 128,
        /// Echo reply.
        EchoReply = 129,
        /// Router solicitation (RFC 4861).
        RouterSolicit = 133,
        /// Router advertisement.
        RouterAdvert = 134,
        /// Neighbor solicitation.
        NeighborSolicit = 135,
        /// Neighbor advertisement.
        NeighborAdvert = 136,
        /// Redirect.
        Redirect = 137,
    }
}

impl IcmpType for Icmpv6Type {
    const HEADER: Header = Header::Icmpv6;
    const PROTOCOL: IpProtocol = IpProtocol::Icmpv6;
    const ECHO_REQUEST: Self = Self::EchoRequest;
    const ECHO_REPLY: Self = Self::EchoReply;

    fn is_error(self) -> bool {
        self.number() < 128
    }
}

/// An ICMPv6 message header.
pub type Icmpv6Repr = IcmpRepr<Icmpv6Type>;

#[cfg(test)]
mod tests {
    use core::net::Ipv6Addr;

    use chaingate_shared::IpProtocol;

    use super::super::checksum;
    use super::super::icmp::IcmpPacket;
    use super::*;

    #[test]
    fn echo_reply_round_trip_with_pseudo_header() {
        let src: Ipv6Addr = "fe80::1".parse().unwrap();
        let dst: Ipv6Addr = "fe80::2".parse().unwrap();
        let pseudo = checksum::pseudo_header_v6(src, dst, IpProtocol::Icmpv6, 12);
        let mut buf = [0u8; 12];
        let repr = Icmpv6Repr::EchoReply { ident: 7, seq: 9 };
        repr.emit(&mut buf).unwrap();
        buf[8..].copy_from_slice(b"ping");
        IcmpPacket::new_checked(&mut buf[..], Header::Icmpv6)
            .unwrap()
            .fill_checksum(pseudo);
        let packet = IcmpPacket::new_checked(&buf[..], Header::Icmpv6).unwrap();
        assert_eq!(buf[0], 129);
        assert_eq!(Icmpv6Repr::parse(&packet), repr);
        assert!(packet.verify_checksum(pseudo));
        assert!(!packet.verify_checksum(0), "the pseudo-header is covered");
    }

    #[test]
    fn types_below_128_are_errors() {
        for (ty, error) in [
            (1, true),
            (2, true),
            (4, true),
            (127, true),
            (128, false),
            (135, false),
        ] {
            assert_eq!(Icmpv6Type::from(ty).is_error(), error, "type {ty}");
        }
    }
}
