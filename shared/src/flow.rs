//! The identity of a connection: [`FlowKey`] and the codes it is made of.
//!
//! A key is the 5-tuple (addresses, IP protocol, ports) plus the stack of
//! VLAN identifiers the frame carried. For ICMP echo messages the echo
//! identifier stands in for both ports, so that a request and its reply
//! (which carry the same identifier) are the two directions of one flow.
//!
//! Both directions of a connection must find the same session and the same
//! service instance, so a key has a *normalised* form (the lower endpoint
//! first) and a *symmetric* hash that is the same for a key and its reverse.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::hash::FlowHasher;

crate::code_enum! {
    /// An IP protocol number (IPv4 protocol field, IPv6 next header), IANA
    /// "Assigned Internet Protocol Numbers".
    pub enum IpProtocol: u8 {
        /// IPv6 hop-by-hop options.
        HopByHop = 0,
        /// ICMP for IPv4.
        Icmp = 1,
        /// TCP.
        Tcp = 6,
        /// UDP.
        Udp = 17,
        /// IPv6 routing header.
        Ipv6Route = 43,
        /// IPv6 fragment header.
        Ipv6Frag = 44,
        /// GRE.
        Gre = 47,
        /// IPsec Encapsulating Security Payload.
        Esp = 50,
        /// IPsec Authentication Header.
        Ah = 51,
        /// ICMP for IPv6.
        Icmpv6 = 58,
        /// IPv6 "no next header".
        Ipv6NoNext = 59,
        /// IPv6 destination options.
        Ipv6Opts = 60,
        /// SCTP.
        Sctp = 132,
    }
}

impl IpProtocol {
    /// True for ICMP and ICMPv6, whose echo identifier stands in for ports.
    #[must_use]
    pub const fn is_icmp(self) -> bool {
        matches!(self.number(), 1 | 58)
    }
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Icmp => f.write_str("icmp"),
            Self::Tcp => f.write_str("tcp"),
            Self::Udp => f.write_str("udp"),
            Self::Icmpv6 => f.write_str("icmpv6"),
            Self::Gre => f.write_str("gre"),
            Self::Esp => f.write_str("esp"),
            Self::Ah => f.write_str("ah"),
            Self::Sctp => f.write_str("sctp"),
            other => write!(f, "proto-{}", other.number()),
        }
    }
}

/// A 12-bit IEEE 802.1Q VLAN identifier (0 to 4095).
///
/// 0 marks a priority-only tag and 4095 is reserved; both can appear on the
/// wire and are kept as they are.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct VlanId(u16);

impl VlanId {
    /// The largest identifier.
    pub const MAX: u16 = 0x0FFF;

    /// An identifier, or `None` above 4095.
    #[must_use]
    pub const fn new(vid: u16) -> Option<Self> {
        if vid <= Self::MAX {
            Some(Self(vid))
        } else {
            None
        }
    }

    /// The identifier carried in a tag control information field (its low
    /// 12 bits; priority and drop-eligible bits are not part of it).
    #[must_use]
    pub const fn from_tci(tci: u16) -> Self {
        Self(tci & Self::MAX)
    }

    /// The number.
    #[must_use]
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for VlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The VLAN identifiers of a frame, outermost first: none, one (802.1Q),
/// two (802.1ad QinQ: service tag, then customer tag), or three (a
/// double-tagged customer frame inside a chain, under the gateway's
/// segment tag).
///
/// Entries past `len` are always zero, so the derived equality, ordering and
/// hash only see the tags that are there.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct VlanStack {
    len: u8,
    vids: [VlanId; VlanStack::CAPACITY],
}

/// A fourth VLAN tag did not fit in a [`VlanStack`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VlanStackFull;

impl fmt::Display for VlanStackFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "more than {} VLAN tags", VlanStack::CAPACITY)
    }
}

impl core::error::Error for VlanStackFull {}

impl VlanStack {
    /// The most tags a frame may carry: a customer's two, and the
    /// gateway's segment tag on top inside a chain.
    pub const CAPACITY: usize = 3;

    /// The most tags a customer's frame may carry at an uplink (the
    /// segment tag takes the third place).
    pub const CUSTOMER: usize = 2;

    /// No tags.
    pub const EMPTY: Self = Self {
        len: 0,
        vids: [VlanId(0); Self::CAPACITY],
    };

    /// One tag.
    #[must_use]
    pub const fn single(vid: VlanId) -> Self {
        Self {
            len: 1,
            vids: [vid, VlanId(0), VlanId(0)],
        }
    }

    /// Two tags, outer (service) first.
    #[must_use]
    pub const fn double(outer: VlanId, inner: VlanId) -> Self {
        Self {
            len: 2,
            vids: [outer, inner, VlanId(0)],
        }
    }

    /// Appends a tag inside the ones already there.
    ///
    /// # Errors
    /// [`VlanStackFull`] when the stack already holds [`Self::CAPACITY`] tags.
    pub fn push_inner(&mut self, vid: VlanId) -> Result<(), VlanStackFull> {
        let slot = self
            .vids
            .get_mut(usize::from(self.len))
            .ok_or(VlanStackFull)?;
        *slot = vid;
        self.len += 1;
        Ok(())
    }

    /// The tags, outermost first.
    #[must_use]
    pub fn as_slice(&self) -> &[VlanId] {
        self.vids.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// The outermost tag.
    #[must_use]
    pub fn outer(&self) -> Option<VlanId> {
        self.as_slice().first().copied()
    }

    /// The stack without its outermost tag (what remains after a pop).
    #[must_use]
    pub fn without_outer(&self) -> Self {
        match self.as_slice() {
            [_, a, b] => Self::double(*a, *b),
            [_, inner] => Self::single(*inner),
            _ => Self::EMPTY,
        }
    }

    /// How many tags.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// True without tags.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn hash_word(&self) -> u64 {
        let [a, b, c] = self.vids;
        (u64::from(self.len) << 48)
            | (u64::from(a.0) << 32)
            | (u64::from(b.0) << 16)
            | u64::from(c.0)
    }
}

/// Which way a packet travels relative to the normalised form of its key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum FlowDirection {
    /// The key was already normalised (lower endpoint is the source).
    Forward,
    /// The key is the reverse of its normalised form.
    Reverse,
}

impl FlowDirection {
    /// The other direction.
    #[must_use]
    pub const fn reverse(self) -> Self {
        match self {
            Self::Forward => Self::Reverse,
            Self::Reverse => Self::Forward,
        }
    }
}

/// Source and destination, of one family by construction.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
enum Addrs {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

/// The identity of one direction of a connection.
///
/// Fields are private: a key always has both addresses of one family, and
/// ports of zero where the protocol has none (or the packet was a non-first
/// fragment).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct FlowKey {
    addrs: Addrs,
    proto: IpProtocol,
    src_port: u16,
    dst_port: u16,
    vlans: VlanStack,
}

/// Hash domain of [`FlowKey::symmetric_hash`].
const SYMMETRIC_DOMAIN: u64 = 0x5359_4D4D; // "SYMM"

impl FlowKey {
    /// An IPv4 key without VLAN tags.
    #[must_use]
    pub const fn v4(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: IpProtocol,
        src_port: u16,
        dst_port: u16,
    ) -> Self {
        Self {
            addrs: Addrs::V4 { src, dst },
            proto,
            src_port,
            dst_port,
            vlans: VlanStack::EMPTY,
        }
    }

    /// An IPv6 key without VLAN tags.
    #[must_use]
    pub const fn v6(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        proto: IpProtocol,
        src_port: u16,
        dst_port: u16,
    ) -> Self {
        Self {
            addrs: Addrs::V6 { src, dst },
            proto,
            src_port,
            dst_port,
            vlans: VlanStack::EMPTY,
        }
    }

    /// A key from two addresses, or `None` when their families differ.
    #[must_use]
    pub fn new(
        src: IpAddr,
        dst: IpAddr,
        proto: IpProtocol,
        src_port: u16,
        dst_port: u16,
    ) -> Option<Self> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Some(Self::v4(s, d, proto, src_port, dst_port)),
            (IpAddr::V6(s), IpAddr::V6(d)) => Some(Self::v6(s, d, proto, src_port, dst_port)),
            _ => None,
        }
    }

    /// The same key carrying `vlans`.
    #[must_use]
    pub const fn with_vlans(mut self, vlans: VlanStack) -> Self {
        self.vlans = vlans;
        self
    }

    /// Source address.
    #[must_use]
    pub const fn src(&self) -> IpAddr {
        match self.addrs {
            Addrs::V4 { src, .. } => IpAddr::V4(src),
            Addrs::V6 { src, .. } => IpAddr::V6(src),
        }
    }

    /// Destination address.
    #[must_use]
    pub const fn dst(&self) -> IpAddr {
        match self.addrs {
            Addrs::V4 { dst, .. } => IpAddr::V4(dst),
            Addrs::V6 { dst, .. } => IpAddr::V6(dst),
        }
    }

    /// True for an IPv6 key.
    #[must_use]
    pub const fn is_ipv6(&self) -> bool {
        matches!(self.addrs, Addrs::V6 { .. })
    }

    /// IP protocol of the transport (after IPv6 extension headers).
    #[must_use]
    pub const fn proto(&self) -> IpProtocol {
        self.proto
    }

    /// Source port, or the ICMP echo identifier, or 0.
    #[must_use]
    pub const fn src_port(&self) -> u16 {
        self.src_port
    }

    /// Destination port, or the ICMP echo identifier, or 0.
    #[must_use]
    pub const fn dst_port(&self) -> u16 {
        self.dst_port
    }

    /// VLAN identifiers, outermost first.
    #[must_use]
    pub const fn vlans(&self) -> &VlanStack {
        &self.vlans
    }

    /// The key of the other direction of the same connection.
    #[must_use]
    pub const fn reversed(&self) -> Self {
        let addrs = match self.addrs {
            Addrs::V4 { src, dst } => Addrs::V4 { src: dst, dst: src },
            Addrs::V6 { src, dst } => Addrs::V6 { src: dst, dst: src },
        };
        Self {
            addrs,
            proto: self.proto,
            src_port: self.dst_port,
            dst_port: self.src_port,
            vlans: self.vlans,
        }
    }

    /// True when the source endpoint (address, then port) is not above the
    /// destination endpoint.
    #[must_use]
    pub fn is_normalised(&self) -> bool {
        let ports = (self.src_port, self.dst_port);
        match self.addrs {
            Addrs::V4 { src, dst } => (src, ports.0) <= (dst, ports.1),
            Addrs::V6 { src, dst } => (src, ports.0) <= (dst, ports.1),
        }
    }

    /// The form both directions of a connection share (the lower endpoint
    /// as source), and which direction `self` is relative to it.
    #[must_use]
    pub fn normalised(&self) -> (Self, FlowDirection) {
        if self.is_normalised() {
            (*self, FlowDirection::Forward)
        } else {
            (self.reversed(), FlowDirection::Reverse)
        }
    }

    /// A hash equal for a key and its reverse, deterministic across
    /// gateways, builds and architectures (see [`crate::hash`]).
    #[must_use]
    pub fn symmetric_hash(&self) -> u64 {
        self.normalised().0.ordered_hash()
    }

    /// The normalised key, the direction of `self`, and the symmetric hash,
    /// normalising once (the session table's lookup).
    #[must_use]
    pub fn normalised_with_hash(&self) -> (Self, FlowDirection, u64) {
        let (n, dir) = self.normalised();
        (n, dir, n.ordered_hash())
    }

    /// The hash of the key in its own field order.
    fn ordered_hash(&self) -> u64 {
        let tail = (u64::from(self.proto.number()) << 56) ^ self.vlans.hash_word();
        let h = FlowHasher::new(SYMMETRIC_DOMAIN);
        let h = match self.addrs {
            Addrs::V4 { src, dst } => h
                .word((u64::from(src.to_bits()) << 32) | u64::from(dst.to_bits()))
                .word(4),
            Addrs::V6 { src, dst } => {
                let (s, d) = (src.to_bits(), dst.to_bits());
                #[allow(clippy::cast_possible_truncation)] // halves of a u128
                h.word((s >> 64) as u64)
                    .word(s as u64)
                    .word((d >> 64) as u64)
                    .word(d as u64)
                    .word(6)
            }
        };
        h.word((u64::from(self.src_port) << 16) | u64::from(self.dst_port))
            .word(tail)
            .finish()
    }
}

impl fmt::Display for FlowKey {
    /// `tcp 10.0.0.1:1234 -> 10.0.0.2:80 vlan 100.200`; IPv6 addresses in
    /// brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addrs {
            Addrs::V4 { src, dst } => write!(
                f,
                "{} {src}:{} -> {dst}:{}",
                self.proto, self.src_port, self.dst_port
            )?,
            Addrs::V6 { src, dst } => write!(
                f,
                "{} [{src}]:{} -> [{dst}]:{}",
                self.proto, self.src_port, self.dst_port
            )?,
        }
        for (i, vid) in self.vlans.as_slice().iter().enumerate() {
            f.write_str(if i == 0 { " vlan " } else { "." })?;
            vid.fmt(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::format;

    use proptest::prelude::*;

    use super::*;

    // Computed independently (Python, 64-bit wrap) from the documented words.
    const PINNED: u64 = 0x076F_43C2_CABF_D558;

    fn v4(a: [u8; 4]) -> Ipv4Addr {
        Ipv4Addr::from(a)
    }

    prop_compose! {
        fn any_key()(
            v6 in any::<bool>(),
            s in any::<u128>(),
            d in any::<u128>(),
            proto in any::<u8>(),
            sp in any::<u16>(),
            dp in any::<u16>(),
            nv in 0usize..=2,
            o in 0u16..4096,
            i in 0u16..4096,
        ) -> FlowKey {
            let proto = IpProtocol::from(proto);
            #[allow(clippy::cast_possible_truncation)]
            let key = if v6 {
                FlowKey::v6(Ipv6Addr::from_bits(s), Ipv6Addr::from_bits(d), proto, sp, dp)
            } else {
                FlowKey::v4(Ipv4Addr::from_bits(s as u32), Ipv4Addr::from_bits(d as u32), proto, sp, dp)
            };
            let (o, i) = (VlanId::from_tci(o), VlanId::from_tci(i));
            key.with_vlans(match nv { 0 => VlanStack::EMPTY, 1 => VlanStack::single(o), _ => VlanStack::double(o, i) })
        }
    }

    proptest! {
        #[test]
        fn both_directions_share_hash_and_normal_form(key in any_key()) {
            let rev = key.reversed();
            prop_assert_eq!(key.symmetric_hash(), rev.symmetric_hash());
            let (n, dir, h) = key.normalised_with_hash();
            prop_assert_eq!((n, dir, h), (key.normalised().0, key.normalised().1, key.symmetric_hash()));
            prop_assert_eq!(key.normalised().0, rev.normalised().0);
            prop_assert!(key.normalised().0.is_normalised());
            prop_assert_eq!(rev.reversed(), key);
            if key != rev {
                prop_assert_ne!(key.normalised().1, rev.normalised().1);
            }
        }

        #[test]
        fn protocol_numbers_round_trip(n in any::<u8>()) {
            prop_assert_eq!(IpProtocol::from(n).number(), n);
            prop_assert_eq!(IpProtocol::Unknown(n), IpProtocol::from(n));
        }
    }

    #[test]
    fn pinned_key_hash() {
        // Gateways of different builds must agree on instance choice: pin
        // the key-to-words mapping, not only the mixer.
        let key = FlowKey::v4(
            v4([10, 0, 0, 1]),
            v4([10, 0, 0, 2]),
            IpProtocol::Tcp,
            1234,
            80,
        );
        assert_eq!(key.symmetric_hash(), PINNED);
    }

    #[test]
    fn hash_tells_apart_what_differs() {
        let base = FlowKey::v4(
            v4([10, 0, 0, 1]),
            v4([10, 0, 0, 2]),
            IpProtocol::Tcp,
            1000,
            80,
        );
        let others = [
            FlowKey::v4(
                v4([10, 0, 0, 1]),
                v4([10, 0, 0, 3]),
                IpProtocol::Tcp,
                1000,
                80,
            ),
            FlowKey::v4(
                v4([10, 0, 0, 1]),
                v4([10, 0, 0, 2]),
                IpProtocol::Udp,
                1000,
                80,
            ),
            FlowKey::v4(
                v4([10, 0, 0, 1]),
                v4([10, 0, 0, 2]),
                IpProtocol::Tcp,
                1001,
                80,
            ),
            FlowKey::v4(
                v4([10, 0, 0, 1]),
                v4([10, 0, 0, 2]),
                IpProtocol::Tcp,
                80,
                1000,
            ),
            base.with_vlans(VlanStack::single(VlanId::from_tci(100))),
            FlowKey::v6(
                v4([10, 0, 0, 1]).to_ipv6_mapped(),
                v4([10, 0, 0, 2]).to_ipv6_mapped(),
                IpProtocol::Tcp,
                1000,
                80,
            ),
        ];
        for other in others {
            assert_ne!(base.symmetric_hash(), other.symmetric_hash(), "{other}");
        }
    }

    #[test]
    fn hash_spreads_sequential_flows_evenly() {
        // Maglev reduces the hash modulo a prime and a session table masks
        // the low bits: sequential client ports must fill buckets evenly.
        const BUCKETS: usize = 64;
        const FLOWS: u32 = 64_000;
        let mut low = [0u32; BUCKETS];
        let mut prime = [0u32; 61];
        for i in 0..FLOWS {
            #[allow(clippy::cast_possible_truncation)]
            let key = FlowKey::v4(
                v4([10, 0, 0, 1]),
                Ipv4Addr::from_bits(0x0A01_0000 + i / 1000),
                IpProtocol::Tcp,
                (20_000 + i % 1000) as u16,
                443,
            );
            let h = key.symmetric_hash();
            low[(h % BUCKETS as u64) as usize] += 1;
            prime[(h % 61) as usize] += 1;
        }
        let mean = FLOWS / BUCKETS as u32;
        for (b, n) in low.iter().enumerate() {
            assert!(
                n.abs_diff(mean) < mean / 5,
                "bucket {b}: {n} vs mean {mean}"
            );
        }
        let mean = FLOWS / 61;
        for (b, n) in prime.iter().enumerate() {
            assert!(
                n.abs_diff(mean) < mean / 5,
                "prime bucket {b}: {n} vs mean {mean}"
            );
        }
    }

    #[test]
    fn vlan_stack_keeps_at_most_three_tags() {
        let mut s = VlanStack::EMPTY;
        assert_eq!(s.push_inner(VlanId::from_tci(0xF00A)), Ok(()));
        assert_eq!(s.push_inner(VlanId::from_tci(20)), Ok(()));
        assert_eq!(s.push_inner(VlanId::from_tci(30)), Ok(()));
        assert_eq!(s.push_inner(VlanId::from_tci(40)), Err(VlanStackFull));
        assert_eq!(
            s.as_slice(),
            &[
                VlanId::from_tci(10),
                VlanId::from_tci(20),
                VlanId::from_tci(30)
            ]
        );
        assert_eq!(s.outer(), VlanId::new(10));
        assert_eq!(
            s.without_outer(),
            VlanStack::double(VlanId::from_tci(20), VlanId::from_tci(30))
        );
        assert_eq!(
            VlanStack::double(VlanId::from_tci(2), VlanId::from_tci(3)).without_outer(),
            VlanStack::single(VlanId::from_tci(3))
        );
        assert_eq!(
            VlanStack::single(VlanId::from_tci(3)).without_outer(),
            VlanStack::EMPTY
        );
        assert_eq!(VlanId::new(4096), None);
    }

    #[test]
    fn display_reads_like_a_flow() {
        let key = FlowKey::v4(
            v4([10, 0, 0, 1]),
            v4([10, 0, 0, 2]),
            IpProtocol::Tcp,
            1234,
            80,
        )
        .with_vlans(VlanStack::double(
            VlanId::from_tci(100),
            VlanId::from_tci(200),
        ));
        assert_eq!(
            format!("{key}"),
            "tcp 10.0.0.1:1234 -> 10.0.0.2:80 vlan 100.200"
        );
        let key = FlowKey::v6(
            Ipv6Addr::LOCALHOST,
            Ipv6Addr::UNSPECIFIED,
            IpProtocol::Udp,
            5,
            6,
        );
        assert_eq!(format!("{key}"), "udp [::1]:5 -> [::]:6");
        assert_eq!(
            FlowKey::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
                IpProtocol::Tcp,
                1,
                2
            ),
            None
        );
    }
}
