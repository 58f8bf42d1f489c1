//! What a policy matches and what it does: the classifier's input language.
//!
//! A policy matches on the ingress port, the outermost customer VLAN, IPv4
//! or IPv6 source and destination prefixes, the IP protocol, source and
//! destination port ranges (TCP, UDP and SCTP only) and the DSCP; every
//! field is optional ("any"). Overlapping policies are fine: the highest
//! priority wins, and among equal priorities the one configured first.

use core::fmt;
use core::net::IpAddr;

use crate::{ChainId, FlowKey, IpProtocol, PortId, VlanId};

/// An IPv4 or IPv6 prefix with no host bits set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

/// Why a prefix was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PrefixError {
    /// The length is above 32 (IPv4) or 128 (IPv6).
    TooLong,
    /// Bits below the prefix length are set (`10.0.0.1/8`).
    HostBits,
}

impl fmt::Display for PrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooLong => "prefix length above the address length",
            Self::HostBits => "host bits set below the prefix length",
        })
    }
}

impl core::error::Error for PrefixError {}

impl IpPrefix {
    /// A checked prefix.
    ///
    /// # Errors
    /// [`PrefixError`] for a length beyond the address or host bits set.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, PrefixError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(PrefixError::TooLong);
        }
        let prefix = Self { addr, len };
        let network = match addr {
            IpAddr::V4(a) => prefix.v4_range().0 == a.to_bits(),
            IpAddr::V6(a) => prefix.v6_range().0 == a.to_bits(),
        };
        if network {
            Ok(prefix)
        } else {
            Err(PrefixError::HostBits)
        }
    }

    /// The network address.
    #[must_use]
    pub const fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    #[must_use]
    pub const fn len(&self) -> u8 {
        self.len
    }

    /// True for `/0`.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True for an IPv6 prefix.
    #[must_use]
    pub const fn is_ipv6(&self) -> bool {
        matches!(self.addr, IpAddr::V6(_))
    }

    /// First and last IPv4 address covered (meaningful for IPv4 only).
    #[must_use]
    pub fn v4_range(&self) -> (u32, u32) {
        let base = match self.addr {
            IpAddr::V4(a) => a.to_bits(),
            IpAddr::V6(_) => 0,
        };
        let host = u32::MAX.checked_shr(u32::from(self.len)).unwrap_or(0);
        (base & !host, base | host)
    }

    /// First and last IPv6 address covered (meaningful for IPv6 only).
    #[must_use]
    pub fn v6_range(&self) -> (u128, u128) {
        let base = match self.addr {
            IpAddr::V6(a) => a.to_bits(),
            IpAddr::V4(_) => 0,
        };
        let host = u128::MAX.checked_shr(u32::from(self.len)).unwrap_or(0);
        (base & !host, base | host)
    }

    /// True when `addr` is inside the prefix (never across families).
    #[must_use]
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) if !self.is_ipv6() => {
                let (lo, hi) = self.v4_range();
                (lo..=hi).contains(&a.to_bits())
            }
            IpAddr::V6(a) if self.is_ipv6() => {
                let (lo, hi) = self.v6_range();
                (lo..=hi).contains(&a.to_bits())
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// An inclusive range of L4 ports.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PortRange {
    lo: u16,
    hi: u16,
}

impl PortRange {
    /// `lo..=hi`, or `None` when `lo > hi`.
    #[must_use]
    pub const fn new(lo: u16, hi: u16) -> Option<Self> {
        if lo <= hi {
            Some(Self { lo, hi })
        } else {
            None
        }
    }

    /// One port.
    #[must_use]
    pub const fn single(port: u16) -> Self {
        Self { lo: port, hi: port }
    }

    /// Lowest port.
    #[must_use]
    pub const fn lo(&self) -> u16 {
        self.lo
    }

    /// Highest port.
    #[must_use]
    pub const fn hi(&self) -> u16 {
        self.hi
    }

    /// True when `port` is in the range.
    #[must_use]
    pub const fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// A differentiated services code point (0 to 63).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Dscp(u8);

impl Dscp {
    /// A code point, or `None` above 63.
    #[must_use]
    pub const fn new(v: u8) -> Option<Self> {
        if v < 64 { Some(Self(v)) } else { None }
    }

    /// The code point in the low six bits of `v` (the rest ignored).
    #[must_use]
    pub const fn masked(v: u8) -> Self {
        Self(v & 63)
    }

    /// The code point.
    #[must_use]
    pub const fn get(self) -> u8 {
        self.0
    }
}

/// The fields a policy matches; `None` is "any".
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Match {
    /// Ingress port.
    pub in_port: Option<PortId>,
    /// Outermost customer VLAN.
    pub vlan: Option<VlanId>,
    /// Source prefix.
    pub src: Option<IpPrefix>,
    /// Destination prefix.
    pub dst: Option<IpPrefix>,
    /// IP protocol (after IPv6 extension headers).
    pub proto: Option<IpProtocol>,
    /// Source ports (needs `proto` TCP, UDP or SCTP).
    pub src_ports: Option<PortRange>,
    /// Destination ports (needs `proto` TCP, UDP or SCTP).
    pub dst_ports: Option<PortRange>,
    /// DSCP.
    pub dscp: Option<Dscp>,
}

/// What the classifier looks at for one packet.
#[derive(Clone, Copy, Debug)]
pub struct ClassifyInput<'a> {
    /// Where the packet entered.
    pub in_port: PortId,
    /// Its flow key (customer VLANs only).
    pub key: &'a FlowKey,
    /// Its DSCP.
    pub dscp: Dscp,
}

impl Match {
    /// True when the packet matches every field given. This is the
    /// definition the classifier must agree with.
    #[must_use]
    pub fn matches(&self, input: &ClassifyInput<'_>) -> bool {
        let key = input.key;
        self.in_port.is_none_or(|p| p == input.in_port)
            && self.vlan.is_none_or(|v| key.vlans().outer() == Some(v))
            && self.src.is_none_or(|p| p.contains(key.src()))
            && self.dst.is_none_or(|p| p.contains(key.dst()))
            && self.proto.is_none_or(|p| p == key.proto())
            && self.src_ports.is_none_or(|r| r.contains(key.src_port()))
            && self.dst_ports.is_none_or(|r| r.contains(key.dst_port()))
            && self.dscp.is_none_or(|d| d == input.dscp)
    }
}

/// What a policy does with the connections it matches.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PolicyAction {
    /// Send the connection through a chain.
    Chain(ChainId),
    /// Forward it between the uplinks without services.
    Bypass,
    /// Drop it.
    Drop,
}

/// A prioritised match and its action.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Policy {
    /// Higher wins.
    pub priority: u32,
    /// What it matches.
    pub matches: Match,
    /// What it does.
    pub action: PolicyAction,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str, len: u8) -> Result<IpPrefix, PrefixError> {
        IpPrefix::new(s.parse().unwrap(), len)
    }

    #[test]
    fn prefixes_are_checked_and_contain() {
        let net = p("10.1.0.0", 16).unwrap();
        assert!(net.contains("10.1.255.7".parse().unwrap()));
        assert!(!net.contains("10.2.0.0".parse().unwrap()));
        assert!(
            !net.contains("::a01:0".parse().unwrap()),
            "never across families"
        );
        assert_eq!(p("10.1.0.1", 16), Err(PrefixError::HostBits));
        assert_eq!(p("10.0.0.0", 33), Err(PrefixError::TooLong));
        assert_eq!(p("0.0.0.0", 0).unwrap().v4_range(), (0, u32::MAX));
        assert_eq!(
            p("1.2.3.4", 32).unwrap().v4_range(),
            (0x0102_0304, 0x0102_0304)
        );
        let v6 = p("2001:db8::", 32).unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert_eq!(p("2001:db8::1", 64), Err(PrefixError::HostBits));
        assert_eq!(p("::", 0).unwrap().v6_range(), (0, u128::MAX));
        assert_eq!(p("::", 129), Err(PrefixError::TooLong));
    }

    #[test]
    fn ranges_and_code_points() {
        assert_eq!(PortRange::new(5, 4), None);
        assert!(PortRange::new(80, 90).unwrap().contains(90));
        assert!(!PortRange::single(80).contains(81));
        assert_eq!(Dscp::new(64), None);
        assert_eq!(Dscp::new(46).unwrap().get(), 46);
    }
}
