//! Connection state and idle timeouts.
//!
//! TCP is tracked only as far as the gateway needs: whether the connection
//! got past its SYN (half-open sessions expire soon), whether each side has
//! sent FIN (closing sessions expire soon), and RST (the session ends
//! with the packet). Sequence numbers are the endpoints' business and the
//! services'.

use chaingate_shared::{IpProtocol, Nanos};

use crate::wire::tcp::TcpFlags;

/// Where a connection is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ConnState {
    /// Not TCP: alive while packets flow.
    Stateless,
    /// TCP, only the opener has spoken (SYN).
    Opening,
    /// TCP, both sides have spoken.
    Established,
    /// TCP, one side sent FIN.
    HalfClosed,
    /// TCP, both sides sent FIN.
    Closing,
    /// TCP, reset: the session ends with this packet.
    Reset,
}

/// Idle timeouts per protocol and state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Timeouts {
    /// TCP before the responder answered.
    pub tcp_opening: Nanos,
    /// TCP established.
    pub tcp_established: Nanos,
    /// TCP after a FIN from either side.
    pub tcp_closing: Nanos,
    /// TCP after a RST: long enough for the RST to walk its chain.
    pub tcp_reset: Nanos,
    /// UDP.
    pub udp: Nanos,
    /// ICMP and ICMPv6.
    pub icmp: Nanos,
    /// Any other protocol.
    pub other: Nanos,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_opening: Nanos::from_secs(30),
            tcp_established: Nanos::from_secs(300),
            tcp_closing: Nanos::from_secs(15),
            tcp_reset: Nanos::from_secs(2),
            udp: Nanos::from_secs(60),
            icmp: Nanos::from_secs(15),
            other: Nanos::from_secs(60),
        }
    }
}

impl Timeouts {
    /// How long a session of `proto` in `state` may stay idle.
    #[must_use]
    pub const fn idle(&self, proto: IpProtocol, state: ConnState) -> Nanos {
        match state {
            ConnState::Opening => self.tcp_opening,
            ConnState::Established => self.tcp_established,
            ConnState::HalfClosed | ConnState::Closing => self.tcp_closing,
            ConnState::Reset => self.tcp_reset,
            ConnState::Stateless => match proto.number() {
                17 => self.udp,
                1 | 58 => self.icmp,
                _ => self.other,
            },
        }
    }
}

/// The TCP part of a session: state and which sides sent FIN.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Tcp {
    state: ConnState,
    fin_opener: bool,
    fin_responder: bool,
}

impl Tcp {
    /// The state of a new session of `proto`.
    #[must_use]
    pub const fn new(proto: IpProtocol) -> Self {
        Self {
            state: if proto.number() == 6 {
                ConnState::Opening
            } else {
                ConnState::Stateless
            },
            fin_opener: false,
            fin_responder: false,
        }
    }

    /// The state.
    #[must_use]
    pub const fn state(&self) -> ConnState {
        self.state
    }

    /// Advances on a packet with `flags`, from the opener or the responder.
    pub fn on_packet(&mut self, flags: TcpFlags, from_opener: bool) {
        if self.state == ConnState::Stateless || self.state == ConnState::Reset {
            return;
        }
        if flags.contains(TcpFlags::RST) {
            self.state = ConnState::Reset;
            return;
        }
        if flags.contains(TcpFlags::FIN) {
            if from_opener {
                self.fin_opener = true;
            } else {
                self.fin_responder = true;
            }
        }
        self.state = match (self.fin_opener, self.fin_responder) {
            (true, true) => ConnState::Closing,
            (true, false) | (false, true) => ConnState::HalfClosed,
            (false, false) if !from_opener || self.state != ConnState::Opening => {
                ConnState::Established
            }
            (false, false) => ConnState::Opening,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_data_and_close() {
        let mut t = Tcp::new(IpProtocol::Tcp);
        t.on_packet(TcpFlags::SYN, true);
        assert_eq!(t.state(), ConnState::Opening);
        t.on_packet(TcpFlags::SYN, true); // a retransmitted SYN
        assert_eq!(t.state(), ConnState::Opening);
        t.on_packet(TcpFlags::SYN | TcpFlags::ACK, false);
        assert_eq!(t.state(), ConnState::Established);
        t.on_packet(TcpFlags::FIN | TcpFlags::ACK, true);
        assert_eq!(t.state(), ConnState::HalfClosed);
        t.on_packet(TcpFlags::ACK, false);
        assert_eq!(t.state(), ConnState::HalfClosed);
        t.on_packet(TcpFlags::FIN | TcpFlags::ACK, false);
        assert_eq!(t.state(), ConnState::Closing);
    }

    #[test]
    fn reset_ends_and_stays() {
        let mut t = Tcp::new(IpProtocol::Tcp);
        t.on_packet(TcpFlags::SYN, true);
        t.on_packet(TcpFlags::RST, false);
        assert_eq!(t.state(), ConnState::Reset);
        t.on_packet(TcpFlags::ACK, true);
        assert_eq!(t.state(), ConnState::Reset);
    }

    #[test]
    fn other_protocols_are_stateless_and_time_out_by_protocol() {
        let mut t = Tcp::new(IpProtocol::Udp);
        t.on_packet(TcpFlags::FIN, true);
        assert_eq!(t.state(), ConnState::Stateless);
        let to = Timeouts::default();
        assert_eq!(to.idle(IpProtocol::Udp, ConnState::Stateless), to.udp);
        assert_eq!(to.idle(IpProtocol::Icmpv6, ConnState::Stateless), to.icmp);
        assert_eq!(to.idle(IpProtocol::Gre, ConnState::Stateless), to.other);
        assert_eq!(to.idle(IpProtocol::Tcp, ConnState::Opening), to.tcp_opening);
    }
}
