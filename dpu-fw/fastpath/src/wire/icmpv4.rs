//! ICMP for IPv4 (RFC 792): message types. The header is shared with
//! ICMPv6 ([`super::icmp`]). Error messages (destination unreachable, source
//! quench, redirect, time exceeded, parameter problem) quote the IPv4
//! header and at least 8 bytes of the offending datagram.

use chaingate_shared::IpProtocol;

use super::Header;
use super::icmp::{IcmpRepr, IcmpType};

chaingate_shared::code_enum! {
    /// ICMPv4 message types.
    pub enum Icmpv4Type: u8 {
        /// Echo reply.
        EchoReply = 0,
        /// Destination unreachable.
        DstUnreachable = 3,
        /// Source quench (deprecated, RFC 6633, still an error message).
        SourceQuench = 4,
        /// Redirect.
        Redirect = 5,
        /// Echo request.
        EchoRequest = 8,
        /// Time exceeded.
        TimeExceeded = 11,
        /// Parameter problem.
        ParamProblem = 12,
    }
}

impl IcmpType for Icmpv4Type {
    const HEADER: Header = Header::Icmpv4;
    const PROTOCOL: IpProtocol = IpProtocol::Icmp;
    const ECHO_REQUEST: Self = Self::EchoRequest;
    const ECHO_REPLY: Self = Self::EchoReply;

    fn is_error(self) -> bool {
        matches!(self.number(), 3 | 4 | 5 | 11 | 12)
    }
}

/// An ICMPv4 message header.
pub type Icmpv4Repr = IcmpRepr<Icmpv4Type>;

#[cfg(test)]
mod tests {
    use super::super::icmp::IcmpPacket;
    use super::*;

    // Echo request, id 0x1234, seq 1, body "hi", checksum 0x7d61.
    const ECHO: [u8; 10] = [8, 0, 0x7d, 0x61, 0x12, 0x34, 0x00, 0x01, b'h', b'i'];

    #[test]
    fn echo_fixture() {
        let packet = IcmpPacket::new_checked(&ECHO[..], Header::Icmpv4).unwrap();
        assert_eq!(
            Icmpv4Repr::parse(&packet),
            Icmpv4Repr::EchoRequest {
                ident: 0x1234,
                seq: 1
            }
        );
        assert!(packet.verify_checksum(0));
        let mut buf = ECHO;
        buf[..8].fill(0);
        Icmpv4Repr::EchoRequest {
            ident: 0x1234,
            seq: 1,
        }
        .emit(&mut buf)
        .unwrap();
        IcmpPacket::new_checked(&mut buf[..], Header::Icmpv4)
            .unwrap()
            .fill_checksum(0);
        assert_eq!(buf, ECHO);
    }

    #[test]
    fn errors_and_others() {
        let msg = [3, 3, 0, 0, 0, 0, 0, 0];
        let packet = IcmpPacket::new_checked(&msg[..], Header::Icmpv4).unwrap();
        assert!(matches!(
            Icmpv4Repr::parse(&packet),
            Icmpv4Repr::Error {
                ty: Icmpv4Type::DstUnreachable,
                code: 3,
                ..
            }
        ));
        let msg = [13, 0, 0, 0, 0, 0, 0, 0]; // timestamp request
        let packet = IcmpPacket::new_checked(&msg[..], Header::Icmpv4).unwrap();
        assert!(matches!(
            Icmpv4Repr::parse(&packet),
            Icmpv4Repr::Other { .. }
        ));
        assert_eq!(
            IcmpPacket::new_checked(&msg[..7], Header::Icmpv4).unwrap_err(),
            super::super::ParseErrorKind::Truncated(Header::Icmpv4)
        );
    }
}
