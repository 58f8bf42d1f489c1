//! The software eSwitch: executes flow rules over frames moving between
//! ports, exactly as rte_flow defines them (see [`super::rule`]). It is the
//! "hardware" of the simulated rig and of every test without a NIC; a frame
//! no rule takes goes to software (the fast path), as on the NIC.
//!
//! Matching is tuple space search: every distinct mask of a group has a
//! hash table of masked keys. A frame is reduced once to a fixed vector of
//! fields; each table of the group is probed with `fields & mask`, in the
//! order of the best priority it holds, and the search stops when no table
//! left can hold a better rule. The cost follows the number of distinct
//! masks (a handful: the rule generator uses a few shapes), not the number
//! of rules.
//!
//! A VXLAN frame (UDP 4789, as the wire parser takes it) is reduced to its
//! outer headers, as any frame, plus its VNI and the inner headers a
//! pattern can name after a VXLAN item (inner IPv4 addresses, TOS,
//! protocol, TCP/UDP ports, TCP flags, whether the inner frame is tagged);
//! a rule without a VXLAN item leaves those out of its mask and matches
//! the outer headers alone. Inner items it does not model (VLAN, IPv6,
//! ICMP, ETH fields) are refused as unsupported.
//!
//! Groups are evaluated from 0; `Jump` moves on (at most 8 times: a loop is
//! a drop). Actions apply in order; a group after a jump matches the frame
//! as modified. Counters, shared counters and AGE behave as rte_flow's.
//!
//! A [`Profile`] says which card the eSwitch stands for: [`Profile::Generic`]
//! is rte_flow as documented (the one-by-one API and the template API, any
//! item and action of the rule language); [`Profile::Mlx5`] is a BlueField
//! under DPDK 22.11's mlx5 driver with hardware steering: it refuses what
//! that driver refuses (see [`mlx5`]), matches VLANs and EtherTypes the way
//! its steering layer does, and holds each table to its template and size.
//!
//! Life cycle, as ethdev's (`lib/ethdev/rte_flow.c`): [`FlowOffload::configure`]
//! before [`FlowOffload::start`] (ethdev refuses it on a started port);
//! tables, counters and template rules only after configure.

use alloc::vec::Vec;
use core::hash::Hasher;

use chaingate_shared::hash::FlowHasher;
use chaingate_shared::{IpProtocol, Nanos, PortId};
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use super::rule::{
    Action, EthFields, Icmp6Fields, IcmpFields, Ipv4Fields, Ipv6Fields, Item, MAX_ACTIONS,
    TcpFields, UdpFields, VlanFields, VxlanFields, VxlanTunnel,
};

pub mod mlx5;
use super::template::{Place, PortAttr, TableId, TableSpec};
use super::{CounterId, Counts, EncapId, FlowOffload, OffloadError, Rule, RuleHandle};
use crate::wire::build::{FrameSpec, IpSpec, L4Spec, NetSpec};
use crate::wire::vxlan::VXLAN_PORT;
use crate::wire::{EtherType, FrameBuf, Layers, Network, Tci, TunnelKind, parse};

/// Most jumps a frame may take before it is dropped as looping.
pub const MAX_JUMPS: usize = 8;

/// Bytes of outer headers a VXLAN encapsulation adds.
pub const VXLAN_OVERHEAD: usize = 50;

const WORDS: usize = 13;

/// A frame reduced to the fields rules match, or a rule's key or mask.
///
/// Layout (bit offsets within 64-bit words):
/// w0: in_port 0..16, tag presence 16..24 (bit k: more than k tags),
///     family 24..32 (4 or 6), L4 protocol 32..40, TCP flags 40..48,
///     TOS/traffic class 48..56, outer tag kind 56..58 (0 none, 1 802.1Q,
///     2 802.1ad), tunnel 58..60 (0 none, 1 VXLAN);
/// w1: EtherType/TPID 0..16, tag 0 TCI 16..32, tag 0 inner type 32..48,
///     tag 1 TCI 48..64; w2: tag 1 inner type 0..16, source port 16..32,
///     destination port 32..48, ICMP type 48..56, code 56..64;
/// w3: ICMP identifier 0..16, sequence 16..32, EtherType after the tags
///     32..48;
/// w4/w5: source address (IPv4 in w5's low half); w6/w7: destination;
/// w8: destination MAC; w9: source MAC.
///
/// Inside a VXLAN tunnel (all zero without one): w10: VNI 0..24, inner
/// family 24..32 (4 or 6), inner L4 protocol 32..40, inner TCP flags
/// 40..48, inner TOS 48..56, inner frame tagged 56..57; w11: inner IPv4
/// source 0..32, destination 32..64; w12: inner source port 0..16,
/// destination port 16..32. The outer fields stay those of the outer
/// headers: a rule without a VXLAN item matches a VXLAN frame as any
/// other UDP datagram.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
struct Fields([u64; WORDS]);

impl core::hash::Hash for Fields {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for w in self.0 {
            state.write_u64(w);
        }
    }
}

#[derive(Clone, Copy)]
struct Field {
    word: usize,
    shift: u32,
    bits: u32,
}

const IN_PORT: Field = Field {
    word: 0,
    shift: 0,
    bits: 16,
};
const TAGS: Field = Field {
    word: 0,
    shift: 16,
    bits: 8,
};
const FAMILY: Field = Field {
    word: 0,
    shift: 24,
    bits: 8,
};
const L4: Field = Field {
    word: 0,
    shift: 32,
    bits: 8,
};
const TCP_FLAGS: Field = Field {
    word: 0,
    shift: 40,
    bits: 8,
};
const TOS: Field = Field {
    word: 0,
    shift: 48,
    bits: 8,
};
const VLAN_Q: Field = Field {
    word: 0,
    shift: 56,
    bits: 2,
};
/// [`VLAN_Q`] values (mlx5's `first_vlan_qualifier`).
const Q_NONE: u64 = 0;
const Q_CVLAN: u64 = 1;
const Q_SVLAN: u64 = 2;
const L3_TYPE: Field = Field {
    word: 3,
    shift: 32,
    bits: 16,
};
const ETH_TYPE: Field = Field {
    word: 1,
    shift: 0,
    bits: 16,
};
const TAG_TCI: [Field; 2] = [
    Field {
        word: 1,
        shift: 16,
        bits: 16,
    },
    Field {
        word: 1,
        shift: 48,
        bits: 16,
    },
];
const TAG_INNER: [Field; 2] = [
    Field {
        word: 1,
        shift: 32,
        bits: 16,
    },
    Field {
        word: 2,
        shift: 0,
        bits: 16,
    },
];
const SPORT: Field = Field {
    word: 2,
    shift: 16,
    bits: 16,
};
const DPORT: Field = Field {
    word: 2,
    shift: 32,
    bits: 16,
};
const ICMP_TYPE: Field = Field {
    word: 2,
    shift: 48,
    bits: 8,
};
const ICMP_CODE: Field = Field {
    word: 2,
    shift: 56,
    bits: 8,
};
const ICMP_IDENT: Field = Field {
    word: 3,
    shift: 0,
    bits: 16,
};
const ICMP_SEQ: Field = Field {
    word: 3,
    shift: 16,
    bits: 16,
};
const TUNNEL: Field = Field {
    word: 0,
    shift: 58,
    bits: 2,
};
/// [`TUNNEL`] value of a VXLAN frame.
const T_VXLAN: u64 = 1;
const VNI: Field = Field {
    word: 10,
    shift: 0,
    bits: 24,
};
const IN_FAMILY: Field = Field {
    word: 10,
    shift: 24,
    bits: 8,
};
const IN_L4: Field = Field {
    word: 10,
    shift: 32,
    bits: 8,
};
const IN_TCP_FLAGS: Field = Field {
    word: 10,
    shift: 40,
    bits: 8,
};
const IN_TOS: Field = Field {
    word: 10,
    shift: 48,
    bits: 8,
};
const IN_TAGGED: Field = Field {
    word: 10,
    shift: 56,
    bits: 1,
};
const IN_SRC: Field = Field {
    word: 11,
    shift: 0,
    bits: 32,
};
const IN_DST: Field = Field {
    word: 11,
    shift: 32,
    bits: 32,
};
const IN_SPORT: Field = Field {
    word: 12,
    shift: 0,
    bits: 16,
};
const IN_DPORT: Field = Field {
    word: 12,
    shift: 16,
    bits: 16,
};
const SRC: [usize; 2] = [4, 5];
const DST: [usize; 2] = [6, 7];
const DST_MAC: Field = Field {
    word: 8,
    shift: 0,
    bits: 48,
};
const SRC_MAC: Field = Field {
    word: 9,
    shift: 0,
    bits: 48,
};

impl Fields {
    fn set(&mut self, f: Field, value: u64) {
        let ones = if f.bits == 64 {
            u64::MAX
        } else {
            (1u64 << f.bits) - 1
        };
        if let Some(w) = self.0.get_mut(f.word) {
            *w = (*w & !(ones << f.shift)) | ((value & ones) << f.shift);
        }
    }

    fn get(&self, f: Field) -> u64 {
        let ones = if f.bits == 64 {
            u64::MAX
        } else {
            (1u64 << f.bits) - 1
        };
        self.0.get(f.word).map_or(0, |w| (w >> f.shift) & ones)
    }

    fn set_word(&mut self, word: usize, value: u64) {
        if let Some(w) = self.0.get_mut(word) {
            *w = value;
        }
    }

    const fn word0(&self) -> u64 {
        let [w0, ..] = self.0;
        w0
    }

    fn masked(&self, mask: &Self) -> Self {
        let mut out = *self;
        for (o, m) in out.0.iter_mut().zip(mask.0) {
            *o &= m;
        }
        out
    }

    /// Reduces a frame that entered at `in_port`.
    fn of_frame(in_port: PortId, frame: &[u8]) -> Self {
        let mut f = Self::default();
        f.set(IN_PORT, in_port.index() as u64);
        let be16 = |at: usize| {
            frame
                .get(at..at + 2)
                .and_then(|b| <[u8; 2]>::try_from(b).ok())
                .map_or(0, |b| u64::from(u16::from_be_bytes(b)))
        };
        let mac = |at: usize| {
            frame.get(at..at + 6).map_or(0, |b| {
                b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x))
            })
        };
        f.set(DST_MAC, mac(0));
        f.set(SRC_MAC, mac(6));
        let mut ty = be16(12);
        f.set(ETH_TYPE, ty);
        let mut tags = 0usize;
        let mut at = 14;
        while EtherType::from(u16::try_from(ty).unwrap_or(0)).is_vlan_tag() && tags < 3 {
            if let (Some(tci), Some(inner)) = (TAG_TCI.get(tags), TAG_INNER.get(tags)) {
                f.set(*tci, be16(at));
                f.set(*inner, be16(at + 2));
            }
            ty = be16(at + 2);
            tags += 1;
            at += 4;
        }
        f.set(TAGS, (1u64 << tags) - 1);
        f.set(L3_TYPE, ty);
        f.set(
            VLAN_Q,
            match EtherType::from(u16::try_from(be16(12)).unwrap_or(0)) {
                EtherType::Vlan => Q_CVLAN,
                EtherType::QinQ => Q_SVLAN,
                _ => Q_NONE,
            },
        );
        let Ok(parsed) = parse(frame) else { return f };
        if let (Some(tunnel), Some(inner)) = (parsed.tunnel(), parsed.inner())
            && tunnel.kind == TunnelKind::Vxlan
        {
            f.set(TUNNEL, T_VXLAN);
            f.set(VNI, u64::from(tunnel.vni.get()));
            f.reduce_inner(frame, inner);
        }
        let layers = parsed.outer();
        let byte = |at: usize| frame.get(at).copied().map_or(0, u64::from);
        let word = |at: usize, n: usize| {
            frame.get(at..at + n).map_or(0, |b| {
                b.iter().fold(0u128, |acc, x| (acc << 8) | u128::from(*x))
            })
        };
        match layers.network() {
            Network::Ipv4(l3) => {
                f.set(FAMILY, 4);
                f.set(TOS, byte(l3 + 1));
                f.set_word(SRC[1], halves(word(l3 + 12, 4)).1);
                f.set_word(DST[1], halves(word(l3 + 16, 4)).1);
            }
            Network::Ipv6(l3) => {
                f.set(FAMILY, 6);
                f.set(TOS, ((byte(l3) & 0x0F) << 4) | (byte(l3 + 1) >> 4));
                let (s, d) = (word(l3 + 8, 16), word(l3 + 24, 16));
                let (s, d) = (halves(s), halves(d));
                f.set_word(SRC[0], s.0);
                f.set_word(SRC[1], s.1);
                f.set_word(DST[0], d.0);
                f.set_word(DST[1], d.1);
            }
            _ => return f,
        }
        let Some(proto) = layers.protocol() else {
            return f;
        };
        f.set(L4, u64::from(proto.number()));
        let Some(l4) = layers.transport_offset() else {
            return f;
        };
        match proto {
            IpProtocol::Tcp => {
                f.set(SPORT, be16(l4));
                f.set(DPORT, be16(l4 + 2));
                f.set(TCP_FLAGS, byte(l4 + 13));
            }
            IpProtocol::Udp => {
                f.set(SPORT, be16(l4));
                f.set(DPORT, be16(l4 + 2));
            }
            IpProtocol::Icmp | IpProtocol::Icmpv6 => {
                f.set(ICMP_TYPE, byte(l4));
                f.set(ICMP_CODE, byte(l4 + 1));
                f.set(ICMP_IDENT, be16(l4 + 4));
                f.set(ICMP_SEQ, be16(l4 + 6));
            }
            _ => {}
        }
        f
    }
}

impl Fields {
    /// The inner frame of a VXLAN frame: what a pattern after its VXLAN
    /// item can name (the inner tags' presence, IPv4 addresses, TOS,
    /// protocol, TCP/UDP ports and TCP flags). An inner IPv6 packet sets
    /// only the family: no rule can name more of it.
    fn reduce_inner(&mut self, frame: &[u8], inner: &Layers) {
        self.set(IN_TAGGED, u64::from(!inner.vlans().is_empty()));
        let l3 = match inner.network() {
            Network::Ipv4(l3) => l3,
            Network::Ipv6(_) => {
                self.set(IN_FAMILY, 6);
                return;
            }
            _ => return,
        };
        self.set(IN_FAMILY, 4);
        self.set(IN_TOS, byte_at(frame, l3 + 1));
        self.set(IN_SRC, bytes_at(frame, l3 + 12, 4));
        self.set(IN_DST, bytes_at(frame, l3 + 16, 4));
        let Some(proto) = inner.protocol() else {
            return;
        };
        self.set(IN_L4, u64::from(proto.number()));
        let Some(l4) = inner.transport_offset() else {
            return;
        };
        if matches!(proto, IpProtocol::Tcp | IpProtocol::Udp) {
            self.set(IN_SPORT, bytes_at(frame, l4, 2));
            self.set(IN_DPORT, bytes_at(frame, l4 + 2, 2));
        }
        if proto == IpProtocol::Tcp {
            self.set(IN_TCP_FLAGS, byte_at(frame, l4 + 13));
        }
    }
}

/// The byte at `at` (0 past the end).
fn byte_at(frame: &[u8], at: usize) -> u64 {
    frame.get(at).copied().map_or(0, u64::from)
}

/// `n` (at most 8) big-endian bytes at `at` (0 past the end).
fn bytes_at(frame: &[u8], at: usize, n: usize) -> u64 {
    frame.get(at..at + n).map_or(0, |b| {
        b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x))
    })
}

/// Splits a 128-bit value into its high and low 64-bit words.
fn halves(x: u128) -> (u64, u64) {
    let b = x.to_be_bytes();
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(b.get(..8).unwrap_or(&[0; 8]));
    lo.copy_from_slice(b.get(8..).unwrap_or(&[0; 8]));
    (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
}

/// Which inner items a pattern has had after its VXLAN item.
#[derive(Default)]
struct Inner {
    eth: bool,
    l3: bool,
    l4: bool,
}

/// A rule's key and mask over [`Fields`].
#[derive(Default)]
struct Compiled {
    key: Fields,
    mask: Fields,
}

impl Compiled {
    fn field(&mut self, f: Field, spec: u64, mask: u64) {
        let m = self.mask.get(f) | mask;
        self.key.set(f, (self.key.get(f) & !mask) | (spec & mask));
        self.mask.set(f, m);
    }

    fn words(&mut self, words: [usize; 2], spec: u128, mask: u128) {
        let (spec, mask) = (halves(spec), halves(mask));
        let parts = [(spec.0, mask.0), (spec.1, mask.1)];
        for (w, (s, m)) in words.into_iter().zip(parts) {
            if let (Some(k), Some(mm)) = (self.key.0.get_mut(w), self.mask.0.get_mut(w)) {
                *k = s & m;
                *mm = m;
            }
        }
    }

    /// Requires "more than `k` tags" to be `present`.
    fn tags(&mut self, k: usize, present: bool) -> Result<(), OffloadError> {
        if k >= 3 {
            return Err(OffloadError::Unsupported("more than two VLAN items"));
        }
        self.field(TAGS, u64::from(present) << k, 1 << k);
        Ok(())
    }

    fn compile(rule: &Rule) -> Result<Self, OffloadError> {
        let mut c = Self::default();
        let mut vlans = 0usize;
        let mut saw_eth = false;
        let mut l3: Option<u8> = None;
        let mut l4 = false;
        let mut inner: Option<Inner> = None;
        for item in &rule.pattern {
            if let Some(st) = inner.as_mut() {
                c.inner_item(item, st, true)?;
                continue;
            }
            match *item {
                Item::RepresentedPort(p) => c.field(IN_PORT, p.index() as u64, 0xFFFF),
                Item::Eth(s) => {
                    if saw_eth || vlans > 0 || l3.is_some() {
                        return Err(OffloadError::Invalid("ETH item out of order"));
                    }
                    saw_eth = true;
                    c.eth(s.spec, s.mask)?;
                }
                Item::Vlan(s) => {
                    if l3.is_some() {
                        return Err(OffloadError::Invalid("VLAN item after L3"));
                    }
                    c.vlan(vlans, s.spec, s.mask)?;
                    vlans += 1;
                }
                Item::Ipv4(s) => {
                    c.l3_start(&mut l3, 4, saw_eth, vlans)?;
                    c.ipv4(s.spec, s.mask);
                }
                Item::Ipv6(s) => {
                    c.l3_start(&mut l3, 6, saw_eth, vlans)?;
                    c.ipv6(s.spec, s.mask);
                }
                Item::Tcp(_) | Item::Udp(_) | Item::Icmp(_) | Item::Icmp6(_) => {
                    c.l4_item(item, &mut l4, l3)?;
                }
                Item::Vxlan(s) => {
                    c.vxlan(s.spec, s.mask)?;
                    inner = Some(Inner::default());
                }
            }
        }
        Ok(c)
    }

    /// The rule's match as mlx5's steering layer reads it
    /// (`hws/mlx5dr_definer.c`, 22.11): ETH `type` and VLAN `inner_type`
    /// are the EtherType after the tags (`l3_ethertype`); `has_vlan` and a
    /// VLAN item ask for the outer tag's kind (`first_vlan_qualifier`:
    /// 802.1Q, or 802.1ad when the VLAN item's `has_more_vlan` is 1); a
    /// VLAN item's `tci` is the outer tag's. L3 and L4 items add their
    /// protocol (non-relaxed matching) and nothing about tags; after a
    /// VXLAN item they name the inner headers (`cd->tunnel`), again
    /// without a word about the inner frame's tags.
    fn compile_mlx5(rule: &Rule) -> Result<Self, OffloadError> {
        let mut c = Self::default();
        let mut l3: Option<u8> = None;
        let mut l4 = false;
        let mut inner: Option<Inner> = None;
        for item in &rule.pattern {
            if let Some(st) = inner.as_mut() {
                c.inner_item(item, st, false)?;
                continue;
            }
            match *item {
                Item::RepresentedPort(p) => c.field(IN_PORT, p.index() as u64, 0xFFFF),
                Item::Eth(s) => {
                    let (v, m) = (s.spec, s.mask);
                    c.field(DST_MAC, mac(v.dst), mac(m.dst));
                    c.field(SRC_MAC, mac(v.src), mac(m.src));
                    c.field(L3_TYPE, u64::from(v.ether_type), u64::from(m.ether_type));
                    if m.has_vlan {
                        c.field(VLAN_Q, if v.has_vlan { Q_CVLAN } else { Q_NONE }, 3);
                    }
                }
                Item::Vlan(s) => {
                    let (v, m) = (s.spec, s.mask);
                    let q = if m.has_more_vlan && v.has_more_vlan {
                        Q_SVLAN
                    } else {
                        Q_CVLAN
                    };
                    c.field(VLAN_Q, q, 3);
                    if let Some(tci) = TAG_TCI.first() {
                        c.field(*tci, u64::from(v.tci), u64::from(m.tci));
                    }
                    c.field(L3_TYPE, u64::from(v.inner_type), u64::from(m.inner_type));
                }
                Item::Ipv4(s) => {
                    l3 = Some(4);
                    c.field(FAMILY, 4, 0xFF);
                    c.ipv4(s.spec, s.mask);
                }
                Item::Ipv6(s) => {
                    l3 = Some(6);
                    c.field(FAMILY, 6, 0xFF);
                    c.ipv6(s.spec, s.mask);
                }
                Item::Tcp(_) | Item::Udp(_) | Item::Icmp(_) | Item::Icmp6(_) => {
                    c.l4_item(item, &mut l4, l3)?;
                }
                Item::Vxlan(s) => {
                    c.vxlan(s.spec, s.mask)?;
                    inner = Some(Inner::default());
                }
            }
        }
        Ok(c)
    }

    /// A VXLAN item (the same under both profiles): the frame is VXLAN
    /// (outer UDP to port 4789, as the parser and the card take it), with
    /// this VNI.
    fn vxlan(&mut self, spec: VxlanFields, mask: VxlanFields) -> Result<(), OffloadError> {
        if spec.vni > VxlanFields::VNI_MASK || mask.vni > VxlanFields::VNI_MASK {
            return Err(OffloadError::Invalid("a VNI beyond 24 bits"));
        }
        let udp = u64::from(IpProtocol::Udp.number());
        let (proto, proto_mask) = (self.key.get(L4), self.mask.get(L4));
        if proto & proto_mask != udp & proto_mask {
            return Err(OffloadError::Invalid(
                "a VXLAN item after an L3/L4 item of another protocol than UDP",
            ));
        }
        let (port, port_mask) = (self.key.get(DPORT), self.mask.get(DPORT));
        if port & port_mask != u64::from(VXLAN_PORT) & port_mask {
            return Err(OffloadError::Unsupported(
                "VXLAN on a UDP port other than 4789 (the eSwitch, as the card, parses VXLAN at 4789 only)",
            ));
        }
        self.field(TUNNEL, T_VXLAN, 3);
        self.field(VNI, u64::from(spec.vni), u64::from(mask.vni));
        Ok(())
    }

    /// An item after the VXLAN item: the inner frame's. `generic` reads
    /// it as rte_flow does (an inner IPv4 item right after the inner ETH
    /// item asks for an untagged inner frame), otherwise as mlx5 does (an
    /// L3 item says nothing about tags).
    fn inner_item(
        &mut self,
        item: &Item,
        st: &mut Inner,
        generic: bool,
    ) -> Result<(), OffloadError> {
        match *item {
            Item::RepresentedPort(p) => self.field(IN_PORT, p.index() as u64, 0xFFFF),
            Item::Eth(s) => {
                if st.eth || st.l3 {
                    return Err(OffloadError::Invalid("inner ETH item out of order"));
                }
                if s.mask != EthFields::default() {
                    return Err(OffloadError::Unsupported(
                        "inner ETH fields (MACs, type, has_vlan) are not modelled: leave its mask empty",
                    ));
                }
                st.eth = true;
            }
            Item::Vlan(_) => {
                return Err(OffloadError::Unsupported(
                    "an inner VLAN item is not modelled (inner tags stay in software)",
                ));
            }
            Item::Ipv4(s) => {
                if st.l3 {
                    return Err(OffloadError::Unsupported("two inner L3 items"));
                }
                st.l3 = true;
                self.field(IN_FAMILY, 4, 0xFF);
                if generic && st.eth {
                    // Items follow the headers one by one: no inner tag.
                    self.field(IN_TAGGED, 0, 1);
                }
                let (v, m) = (s.spec, s.mask);
                self.field(IN_SRC, u64::from(v.src), u64::from(m.src));
                self.field(IN_DST, u64::from(v.dst), u64::from(m.dst));
                self.field(IN_L4, u64::from(v.proto), u64::from(m.proto));
                self.field(IN_TOS, u64::from(v.tos), u64::from(m.tos));
            }
            Item::Ipv6(_) => {
                return Err(OffloadError::Unsupported(
                    "an inner IPv6 item is not modelled (inner IPv6 stays in software)",
                ));
            }
            Item::Tcp(_) | Item::Udp(_) => {
                if st.l4 {
                    return Err(OffloadError::Invalid("two inner L4 items"));
                }
                if !st.l3 {
                    return Err(OffloadError::Invalid(
                        "inner L4 item without an inner IPv4 item",
                    ));
                }
                let proto = if matches!(item, Item::Tcp(_)) {
                    IpProtocol::Tcp
                } else {
                    IpProtocol::Udp
                };
                let (set, mask) = (self.key.get(IN_L4), self.mask.get(IN_L4));
                if set & mask != u64::from(proto.number()) & mask {
                    return Err(OffloadError::Invalid(
                        "inner L4 item contradicts the inner L3 protocol",
                    ));
                }
                st.l4 = true;
                self.field(IN_L4, u64::from(proto.number()), 0xFF);
                let ((sport, sport_m), (dport, dport_m)) = match *item {
                    Item::Tcp(s) => {
                        self.field(
                            IN_TCP_FLAGS,
                            u64::from(s.spec.flags),
                            u64::from(s.mask.flags),
                        );
                        (
                            (s.spec.src_port, s.mask.src_port),
                            (s.spec.dst_port, s.mask.dst_port),
                        )
                    }
                    Item::Udp(s) => (
                        (s.spec.src_port, s.mask.src_port),
                        (s.spec.dst_port, s.mask.dst_port),
                    ),
                    _ => ((0, 0), (0, 0)),
                };
                self.field(IN_SPORT, u64::from(sport), u64::from(sport_m));
                self.field(IN_DPORT, u64::from(dport), u64::from(dport_m));
            }
            Item::Icmp(_) | Item::Icmp6(_) => {
                return Err(OffloadError::Unsupported(
                    "an inner ICMP item is not modelled (inner ICMP stays in software)",
                ));
            }
            Item::Vxlan(_) => {
                return Err(OffloadError::Unsupported(
                    "VXLAN inside VXLAN (one tunnel is parsed; mlx5: inner VXLAN item not supported)",
                ));
            }
        }
        Ok(())
    }

    /// An L4 item (the same under both profiles).
    fn l4_item(&mut self, item: &Item, l4: &mut bool, l3: Option<u8>) -> Result<(), OffloadError> {
        match *item {
            Item::Tcp(s) => {
                self.l4_start(l4, l3, None, IpProtocol::Tcp)?;
                self.tcp(s.spec, s.mask);
            }
            Item::Udp(s) => {
                self.l4_start(l4, l3, None, IpProtocol::Udp)?;
                self.udp(s.spec, s.mask);
            }
            Item::Icmp(s) => {
                self.l4_start(l4, l3, Some(4), IpProtocol::Icmp)?;
                self.icmp(s.spec, s.mask);
            }
            Item::Icmp6(s) => {
                self.l4_start(l4, l3, Some(6), IpProtocol::Icmpv6)?;
                self.icmp6(s.spec, s.mask);
            }
            _ => {}
        }
        Ok(())
    }

    fn eth(&mut self, spec: EthFields, mask: EthFields) -> Result<(), OffloadError> {
        self.field(DST_MAC, mac(spec.dst), mac(mask.dst));
        self.field(SRC_MAC, mac(spec.src), mac(mask.src));
        self.field(
            ETH_TYPE,
            u64::from(spec.ether_type),
            u64::from(mask.ether_type),
        );
        if mask.ether_type == 0xFFFF {
            // A TPID matches only tagged packets, an EtherType only untagged.
            self.tags(0, EtherType::from(spec.ether_type).is_vlan_tag())?;
        }
        if mask.has_vlan {
            self.tags(0, spec.has_vlan)?;
        }
        Ok(())
    }

    fn vlan(&mut self, i: usize, spec: VlanFields, mask: VlanFields) -> Result<(), OffloadError> {
        let (Some(tci), Some(inner)) = (TAG_TCI.get(i), TAG_INNER.get(i)) else {
            return Err(OffloadError::Unsupported("more than two VLAN items"));
        };
        self.tags(i, true)?;
        self.field(*tci, u64::from(spec.tci), u64::from(mask.tci));
        self.field(
            *inner,
            u64::from(spec.inner_type),
            u64::from(mask.inner_type),
        );
        if mask.inner_type == 0xFFFF {
            self.tags(i + 1, EtherType::from(spec.inner_type).is_vlan_tag())?;
        }
        if mask.has_more_vlan {
            self.tags(i + 1, spec.has_more_vlan)?;
        }
        Ok(())
    }

    fn l3_start(
        &mut self,
        l3: &mut Option<u8>,
        family: u8,
        saw_eth: bool,
        vlans: usize,
    ) -> Result<(), OffloadError> {
        if l3.is_some() {
            return Err(OffloadError::Unsupported(
                "two L3 items without a VXLAN item between them",
            ));
        }
        *l3 = Some(family);
        self.field(FAMILY, u64::from(family), 0xFF);
        if saw_eth {
            // Items follow the headers one by one: no further tag.
            self.tags(vlans, false)?;
        }
        Ok(())
    }

    fn l4_start(
        &mut self,
        l4: &mut bool,
        l3: Option<u8>,
        family: Option<u8>,
        proto: IpProtocol,
    ) -> Result<(), OffloadError> {
        if *l4 {
            return Err(OffloadError::Invalid("two L4 items"));
        }
        let Some(l3) = l3 else {
            return Err(OffloadError::Invalid("L4 item without an L3 item"));
        };
        if family.is_some_and(|f| f != l3) {
            return Err(OffloadError::Invalid("ICMP item of the other IP version"));
        }
        let (set, mask) = (self.key.get(L4), self.mask.get(L4));
        if mask != 0 && (set & mask) != (u64::from(proto.number()) & mask) {
            return Err(OffloadError::Invalid("L4 item contradicts the L3 protocol"));
        }
        *l4 = true;
        self.field(L4, u64::from(proto.number()), 0xFF);
        Ok(())
    }

    fn ipv4(&mut self, s: Ipv4Fields, m: Ipv4Fields) {
        self.words(SRC, u128::from(s.src), u128::from(m.src));
        self.words(DST, u128::from(s.dst), u128::from(m.dst));
        self.field(L4, u64::from(s.proto), u64::from(m.proto));
        self.field(TOS, u64::from(s.tos), u64::from(m.tos));
    }

    fn ipv6(&mut self, s: Ipv6Fields, m: Ipv6Fields) {
        self.words(SRC, s.src, m.src);
        self.words(DST, s.dst, m.dst);
        self.field(L4, u64::from(s.proto), u64::from(m.proto));
        self.field(TOS, u64::from(s.tc), u64::from(m.tc));
    }

    fn tcp(&mut self, s: TcpFields, m: TcpFields) {
        self.field(SPORT, u64::from(s.src_port), u64::from(m.src_port));
        self.field(DPORT, u64::from(s.dst_port), u64::from(m.dst_port));
        self.field(TCP_FLAGS, u64::from(s.flags), u64::from(m.flags));
    }

    fn udp(&mut self, s: UdpFields, m: UdpFields) {
        self.field(SPORT, u64::from(s.src_port), u64::from(m.src_port));
        self.field(DPORT, u64::from(s.dst_port), u64::from(m.dst_port));
    }

    fn icmp(&mut self, s: IcmpFields, m: IcmpFields) {
        self.field(ICMP_TYPE, u64::from(s.ty), u64::from(m.ty));
        self.field(ICMP_CODE, u64::from(s.code), u64::from(m.code));
        self.field(ICMP_IDENT, u64::from(s.ident), u64::from(m.ident));
        self.field(ICMP_SEQ, u64::from(s.seq), u64::from(m.seq));
    }

    fn icmp6(&mut self, s: Icmp6Fields, m: Icmp6Fields) {
        self.field(ICMP_TYPE, u64::from(s.ty), u64::from(m.ty));
        self.field(ICMP_CODE, u64::from(s.code), u64::from(m.code));
    }
}

fn mac(b: [u8; 6]) -> u64 {
    b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x))
}

/// The index hash of a masked key in a table, with the project's flow
/// hasher (no random state: the eSwitch behaves the same on every run).
fn index_hash(table: usize, key: &Fields) -> u64 {
    let mut h = FlowHasher::new(0x5357_4954_4348).word(table as u64); // "SWITCH"
    for w in key.0 {
        h = h.word(w);
    }
    h.finish()
}

const NONE: u32 = u32::MAX;

struct Installed {
    generation: u32,
    priority: u32,
    table: usize,
    key: Fields,
    actions: heapless::Vec<Action, MAX_ACTIONS>,
    counter: Option<Counts>,
    age: Option<AgeState>,
    /// The template table it was enqueued into, if any.
    template: Option<u32>,
    /// The next rule with the same group, mask and key (worse priority).
    next: u32,
}

/// A rule's AGE: reported once when no packet hit it for `timeout`.
struct AgeState {
    timeout: Nanos,
    context: u64,
    last_hit: Nanos,
    reported: bool,
}

/// Structural bits of word 0 (tags, family, L4 protocol, tunnel): a
/// table only holds rules of a few shapes, and a frame of another shape
/// need not probe it.
const SHAPE_BITS: u64 = 0x0000_00FF_FFFF_0000 | (3 << 58);

/// Distinct shapes a table remembers before it stops filtering.
const SHAPES: usize = 8;

/// The rules of one group with one mask (tuple space search).
struct Table {
    group: u32,
    mask: Fields,
    /// The shapes of the rules it has held (`None`: too many to filter).
    shapes: Option<heapless::Vec<u64, SHAPES>>,
    /// The best (lowest) priority any rule of the table ever had: a bound
    /// for stopping the search early.
    best: u32,
    rules: usize,
}

/// A template table: its spec, its size, the rules it holds.
struct Template {
    spec: TableSpec,
    size: usize,
    rules: usize,
}

/// Which card the eSwitch stands for.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub enum Profile {
    /// rte_flow as documented: every item, action and attribute of the
    /// rule language, the one-by-one API and the template API.
    #[default]
    Generic,
    /// A BlueField under DPDK 22.11's mlx5 driver with hardware steering
    /// (`dv_flow_en=2`): what it refuses is refused, with the driver's
    /// reason ([`mlx5`]), and rules match as its steering layer matches.
    Mlx5(Mlx5),
}

/// How the ports of a BlueField split into eSwitches.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Mlx5 {
    /// The eSwitch (transfer proxy) of each port, by [`PortId`] index;
    /// ports past the end are on eSwitch 0. One eSwitch per PF unless
    /// multiport E-Switch joins them (docs/bluefield.md).
    pub switches: Vec<u16>,
}

impl Mlx5 {
    fn switch_of(&self, port: PortId) -> u16 {
        self.switches.get(port.index()).copied().unwrap_or(0)
    }
}

/// Why the eSwitch dropped a frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum SwitchDrop {
    /// A rule's `Drop`.
    Rule,
    /// More than [`MAX_JUMPS`] jumps.
    Loop,
    /// An action could not be applied (no room for a tag or outer
    /// headers, decapsulating a frame that is not VXLAN).
    Action,
}

/// Where a frame goes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Outcome {
    /// Out of the switch at this port.
    Out(PortId),
    /// To software, as received at this port.
    ToSoftware(PortId),
    /// Dropped.
    Dropped(SwitchDrop),
}

/// What the eSwitch has done.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SwitchStats {
    /// Frames processed.
    pub frames: u64,
    /// Frames a rule sent out of a port.
    pub out: u64,
    /// Frames that went to software (a rule, or no rule).
    pub to_software: u64,
    /// Frames no rule took.
    pub misses: u64,
    /// Frames dropped.
    pub dropped: u64,
}

/// The software eSwitch.
pub struct SoftSwitch {
    profile: Profile,
    capacity: usize,
    /// What `configure` reserved (`None`: not configured).
    configured: Option<PortAttr>,
    started: bool,
    rules: Vec<Option<Installed>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    len: usize,
    /// Tables keep their index (rules refer to it); `order` sorts them.
    tables: Vec<Table>,
    order: Vec<usize>,
    /// Every table's rules in one index of rule slots (the head of each
    /// same-key list), keyed by (table, masked key) as stored in the
    /// slot: 4 bytes an entry, so the index of a million rules stays
    /// small enough for the caches. Sized once for the capacity.
    heads: HashTable<u32>,
    /// The table the last rule went to (rules come in runs of one shape).
    last_table: usize,
    templates: Vec<Option<Template>>,
    counters: Vec<Option<Counts>>,
    /// Counters in use: shared ones, and one per rule with COUNT or AGE
    /// (what `PortAttr::counters` bounds).
    counters_used: usize,
    /// Rules with AGE (what `PortAttr::aging` bounds).
    ages_used: usize,
    encaps: Vec<VxlanTunnel>,
    stats: SwitchStats,
    /// The latest time seen (a rule's AGE starts from it).
    clock: Nanos,
}

impl core::fmt::Debug for SoftSwitch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SoftSwitch")
            .field("profile", &self.profile)
            .field("capacity", &self.capacity)
            .field("rules", &self.len)
            .field("tables", &self.tables.len())
            .finish_non_exhaustive()
    }
}

impl SoftSwitch {
    /// An eSwitch of the generic profile that holds up to `capacity`
    /// rules.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self::with_profile(capacity, Profile::Generic)
    }

    /// An eSwitch of `profile` that holds up to `capacity` rules.
    #[must_use]
    pub fn with_profile(capacity: usize, profile: Profile) -> Self {
        Self {
            profile,
            capacity,
            configured: None,
            started: false,
            rules: Vec::with_capacity(capacity),
            generations: Vec::with_capacity(capacity),
            free: Vec::new(),
            len: 0,
            tables: Vec::new(),
            order: Vec::new(),
            heads: HashTable::with_capacity(capacity),
            last_table: 0,
            templates: Vec::new(),
            counters: Vec::new(),
            counters_used: 0,
            ages_used: 0,
            encaps: Vec::new(),
            stats: SwitchStats::default(),
            clock: Nanos(0),
        }
    }

    /// A generic eSwitch of `capacity` rules, configured for as many and
    /// started: ready for tables and rules (tests, benches).
    #[must_use]
    pub fn ready(capacity: usize, profile: Profile) -> Self {
        let mut s = Self::with_profile(capacity, profile);
        let attr = PortAttr::for_rules(capacity, 1024);
        // Neither can fail on a new switch.
        let _ = s.configure(&attr);
        let _ = s.start();
        s
    }

    /// The profile.
    #[must_use]
    pub const fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The eSwitch of each port (by [`PortId`] index) under the mlx5
    /// profile; nothing under the generic one.
    pub fn set_switches(&mut self, switches: &[u16]) {
        if let Profile::Mlx5(m) = &mut self.profile {
            m.switches = switches.to_vec();
        }
    }

    /// Rules installed.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// True without rules.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What it has done.
    #[must_use]
    pub const fn stats(&self) -> &SwitchStats {
        &self.stats
    }

    /// Template tables made and not destroyed.
    #[must_use]
    pub fn tables(&self) -> usize {
        self.templates.iter().flatten().count()
    }

    /// A rule's own counter (the rule needs a [`Action::Count`]).
    ///
    /// # Errors
    /// An unknown rule, or one without a counter.
    pub fn query(&self, handle: RuleHandle) -> Result<Counts, OffloadError> {
        let slot = (handle.0 & 0xFFFF_FFFF) as usize;
        match self.rules.get(slot) {
            Some(Some(r)) if u64::from(r.generation) == handle.0 >> 32 => r
                .counter
                .ok_or(OffloadError::Invalid("the rule has no COUNT action")),
            _ => Err(OffloadError::UnknownHandle),
        }
    }

    const fn mlx5(&self) -> Option<&Mlx5> {
        match &self.profile {
            Profile::Mlx5(m) => Some(m),
            Profile::Generic => None,
        }
    }

    /// ethdev (`rte_flow.c`): template-API objects need `rte_flow_configure`
    /// first ("Flow engine on port_id=N is not configured").
    fn require_configured(&self) -> Result<&PortAttr, OffloadError> {
        self.configured.as_ref().ok_or(OffloadError::Invalid(
            "the flow engine is not configured (rte_flow_configure first)",
        ))
    }

    /// The generic checks of a rule's actions (rte_flow's own rules).
    fn check_actions(&self, rule: &Rule) -> Result<(), OffloadError> {
        if !rule.attr.transfer {
            return Err(OffloadError::Unsupported("only transfer (switch) rules"));
        }
        let Some(fate) = rule.fate() else {
            return Err(OffloadError::Invalid(
                "a rule needs exactly one fate action",
            ));
        };
        if fate == Action::Jump(rule.attr.group) {
            return Err(OffloadError::Invalid("jump to its own group"));
        }
        let mut counts = 0;
        for a in &rule.actions {
            match *a {
                Action::OfPushVlan(tpid) if !EtherType::from(tpid).is_vlan_tag() => {
                    return Err(OffloadError::Invalid(
                        "OF_PUSH_VLAN needs TPID 0x8100 or 0x88A8",
                    ));
                }
                Action::OfSetVlanPcp(p) if p > 7 => {
                    return Err(OffloadError::Invalid("PCP above 7"));
                }
                Action::Count => counts += 1,
                Action::SharedCount(c)
                    if !matches!(self.counters.get(c.0 as usize), Some(Some(_))) =>
                {
                    return Err(OffloadError::UnknownHandle);
                }
                Action::VxlanEncap(e) if self.encaps.get(e.0 as usize).is_none() => {
                    return Err(OffloadError::UnknownHandle);
                }
                _ => {}
            }
        }
        if counts > 1 {
            return Err(OffloadError::Invalid("more than one COUNT"));
        }
        if rule.actions.contains(&Action::VxlanDecap)
            && !rule.pattern.iter().any(|i| matches!(i, Item::Vxlan(_)))
        {
            // rte_flow.rst, VXLAN_DECAP: "The flow items pattern ... must
            // define a valid VXLAN tunnel ... If the flow pattern does not
            // specify a valid VXLAN tunnel then a RTE_FLOW_ERROR_TYPE_ACTION
            // error should be returned."
            return Err(OffloadError::Invalid(
                "VXLAN_DECAP without a VXLAN item (rte_flow: the pattern must define the VXLAN tunnel)",
            ));
        }
        Ok(())
    }

    /// The mlx5 profile's checks of a rule in its eSwitch: both ends of a
    /// transfer rule on the table's eSwitch.
    fn check_switches(&self, rule: &Rule, table: &TableSpec) -> Result<(), OffloadError> {
        let Some(m) = self.mlx5() else {
            return Ok(());
        };
        let ports = rule
            .pattern
            .iter()
            .filter_map(|i| match i {
                Item::RepresentedPort(p) => Some(*p),
                _ => None,
            })
            .chain(rule.actions.iter().filter_map(|a| match a {
                Action::RepresentedPort(p) => Some(*p),
                _ => None,
            }));
        for p in ports {
            if m.switch_of(p) != table.switch {
                // hw.c flow_hw_validate_action_represented_port: "cannot
                // forward to port from a different E-Switch"; a port
                // item of another eSwitch never matches (its vport tag is
                // not in this one). Multiport E-Switch (DPDK 23.11) joins
                // them.
                return Err(OffloadError::Unsupported(
                    "ports on different eSwitches (hw.c flow_hw_validate_action_represented_port: cannot forward to port from a different E-Switch)",
                ));
            }
        }
        Ok(())
    }

    /// Counters and AGE contexts a rule takes, within what `configure`
    /// reserved (mlx5: `mlx5_hws_cnt_pool_get`, the age pool).
    fn reserve(&mut self, rule: &Rule) -> Result<(), OffloadError> {
        let needs_counter = rule
            .actions
            .iter()
            .any(|a| matches!(a, Action::Count | Action::Age(_)));
        let needs_age = rule.actions.iter().any(|a| matches!(a, Action::Age(_)));
        if let Some(attr) = self.configured
            && self.mlx5().is_some()
        {
            if needs_age && attr.aging == 0 {
                return Err(OffloadError::Invalid(
                    "AGE without aging objects (hw.c: aging pool not initialized)",
                ));
            }
            if needs_counter && self.counters_used >= attr.counters as usize {
                return Err(OffloadError::Full);
            }
            if needs_age && self.ages_used >= attr.aging as usize {
                return Err(OffloadError::Full);
            }
        }
        self.counters_used += usize::from(needs_counter);
        self.ages_used += usize::from(needs_age);
        Ok(())
    }

    fn best_rule(&self, group: u32, fields: &Fields) -> Option<u32> {
        let mut best: Option<(u32, u32)> = None;
        let tables = self
            .order
            .iter()
            .filter_map(|&i| Some((i, self.tables.get(i)?)));
        for (n, table) in tables.filter(|(_, t)| t.group == group && t.rules > 0) {
            // Tables come in order of the best priority they can hold.
            if best.is_some_and(|(p, _)| table.best > p) {
                break;
            }
            if let Some(shapes) = &table.shapes {
                let shape = fields.word0() & table.mask.word0() & SHAPE_BITS;
                if !shapes.contains(&shape) {
                    continue;
                }
            }
            // A same-key list is in priority order: its head is its best.
            let key = fields.masked(&table.mask);
            let Some(&head) = self
                .heads
                .find(index_hash(n, &key), |&s| holds(&self.rules, s, n, &key))
            else {
                continue;
            };
            if let Some(Some(rule)) = self.rules.get(head as usize)
                && best.is_none_or(|(p, _)| rule.priority < p)
            {
                best = Some((rule.priority, head));
            }
        }
        best.map(|(_, slot)| slot)
    }

    /// Runs a frame that entered at `in_port` through the rules, applying
    /// their actions to it, at `now` (for AGE).
    pub fn process(&mut self, in_port: PortId, frame: &mut FrameBuf<'_>, now: Nanos) -> Outcome {
        self.stats.frames += 1;
        self.clock = self.clock.max(now);
        let mut fields = Fields::of_frame(in_port, frame.frame());
        let mut group = 0;
        for _ in 0..=MAX_JUMPS {
            let Some(slot) = self.best_rule(group, &fields) else {
                self.stats.misses += 1;
                self.stats.to_software += 1;
                return Outcome::ToSoftware(in_port);
            };
            let len = frame.len() as u64;
            let Some(Some(rule)) = self.rules.get_mut(slot as usize) else {
                break;
            };
            if let Some(c) = rule.counter.as_mut() {
                c.packets += 1;
                c.bytes += len;
            }
            if let Some(age) = rule.age.as_mut() {
                age.last_hit = now;
            }
            let actions = rule.actions.clone();
            // A shared counter counts the frame as it matched, as the
            // rule's own counter does (mlx5: the counter is the first
            // action of the STE, dr_action.c mlx5dr_action_template_process:
            // "Current counter executed first"): a decapsulating rule
            // counts the outer headers, a pushed tag is not counted.
            for a in &actions {
                if let Action::SharedCount(c) = a
                    && let Some(Some(counts)) = self.counters.get_mut(c.0 as usize)
                {
                    counts.packets += 1;
                    counts.bytes += len;
                }
            }
            let mut modified = false;
            for action in &actions {
                match self.apply(*action, frame) {
                    Ok(Some(outcome)) => return self.finish(outcome),
                    Ok(None) => {}
                    Err(drop) => return self.finish(Outcome::Dropped(drop)),
                }
                modified |= matches!(
                    action,
                    Action::OfPushVlan(_)
                        | Action::OfSetVlanVid(_)
                        | Action::OfSetVlanPcp(_)
                        | Action::OfPopVlan
                        | Action::SetMacSrc(_)
                        | Action::SetMacDst(_)
                        | Action::VxlanEncap(_)
                        | Action::VxlanDecap
                );
                if let Action::Jump(g) = action {
                    group = *g;
                }
            }
            if modified {
                fields = Fields::of_frame(in_port, frame.frame());
            }
        }
        self.finish(Outcome::Dropped(SwitchDrop::Loop))
    }

    fn finish(&mut self, outcome: Outcome) -> Outcome {
        match outcome {
            Outcome::Out(_) => self.stats.out += 1,
            Outcome::ToSoftware(_) => self.stats.to_software += 1,
            Outcome::Dropped(_) => self.stats.dropped += 1,
        }
        outcome
    }

    /// Applies one action; a fate ends the walk (`Some`), a jump does not.
    fn apply(
        &mut self,
        action: Action,
        frame: &mut FrameBuf<'_>,
    ) -> Result<Option<Outcome>, SwitchDrop> {
        match action {
            Action::RepresentedPort(p) => return Ok(Some(Outcome::Out(p))),
            Action::PortRepresentor(p) => return Ok(Some(Outcome::ToSoftware(p))),
            Action::Drop => return Err(SwitchDrop::Rule),
            // Counted when the rule matched (`process`).
            Action::Jump(_) | Action::Count | Action::Age(_) | Action::SharedCount(_) => {}
            Action::OfPushVlan(tpid) => {
                // OpenFlow push_vlan copies the TCI it covers; mlx5 builds
                // the new tag from the push and the OF_SET_VLAN_VID /
                // OF_SET_VLAN_PCP that must follow it (hw.c
                // vlan_hdr_to_be32): priority 0 unless set.
                let tci = match self.profile {
                    Profile::Generic => frame.outer_tag().map_or(Tci(0), |(_, t)| t),
                    Profile::Mlx5(_) => Tci(0),
                };
                frame
                    .push_vlan(EtherType::from(tpid), tci)
                    .map_err(|_| SwitchDrop::Action)?;
            }
            Action::OfSetVlanVid(vid) => {
                let _ = frame.set_outer_vid(vid);
            }
            Action::OfSetVlanPcp(pcp) => {
                if let Some((tpid, tci)) = frame.outer_tag() {
                    let new = Tci::new(pcp, tci.dei(), tci.vid());
                    let _ = frame.pop_vlan();
                    frame.push_vlan(tpid, new).map_err(|_| SwitchDrop::Action)?;
                }
            }
            Action::OfPopVlan => {
                let _ = frame.pop_vlan();
            }
            Action::SetMacSrc(m) => frame.set_src_mac(m).map_err(|_| SwitchDrop::Action)?,
            Action::SetMacDst(m) => frame.set_dst_mac(m).map_err(|_| SwitchDrop::Action)?,
            Action::VxlanEncap(e) => {
                let tunnel = self
                    .encaps
                    .get(e.0 as usize)
                    .copied()
                    .ok_or(SwitchDrop::Action)?;
                encap(frame, &tunnel).map_err(|()| SwitchDrop::Action)?;
            }
            Action::VxlanDecap => {
                let inner = parse(frame.frame())
                    .ok()
                    .and_then(|p| p.tunnel().copied())
                    .filter(|t| t.kind == TunnelKind::Vxlan)
                    .ok_or(SwitchDrop::Action)?;
                frame
                    .pull_front(inner.inner_offset)
                    .map_err(|_| SwitchDrop::Action)?;
            }
        }
        Ok(None)
    }

    fn table_for(&mut self, group: u32, mask: &Fields) -> usize {
        let fits = |t: &Table| t.group == group && t.mask == *mask;
        if self.tables.get(self.last_table).is_some_and(fits) {
            return self.last_table;
        }
        if let Some(i) = self.tables.iter().position(fits) {
            self.last_table = i;
            return i;
        }
        self.tables.push(Table {
            group,
            mask: *mask,
            shapes: Some(heapless::Vec::new()),
            best: u32::MAX,
            rules: 0,
        });
        self.reorder();
        self.last_table = self.tables.len() - 1;
        self.last_table
    }

    /// Compiles a rule's match as this profile reads it.
    fn compile(&self, rule: &Rule) -> Result<Compiled, OffloadError> {
        match self.profile {
            Profile::Generic => Compiled::compile(rule),
            Profile::Mlx5(_) => Compiled::compile_mlx5(rule),
        }
    }

    /// Installs a checked rule: into the tuple space, and into its
    /// template table if it has one.
    fn install(
        &mut self,
        rule: &Rule,
        compiled: &Compiled,
        template: Option<u32>,
    ) -> Result<RuleHandle, OffloadError> {
        if self.len >= self.capacity {
            return Err(OffloadError::Full);
        }
        self.reserve(rule)?;
        let table = self.table_for(rule.attr.group, &compiled.mask);
        let key = compiled.key.masked(&compiled.mask);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.rules.push(None);
                self.generations.push(0);
                u32::try_from(self.rules.len() - 1).map_err(|_| OffloadError::Full)?
            }
        };
        let generation = self
            .generations
            .get(slot as usize)
            .copied()
            .unwrap_or(0)
            .wrapping_add(1);
        if let Some(g) = self.generations.get_mut(slot as usize) {
            *g = generation;
        }
        // Insert in the same-key list by priority (stable among equals).
        // One probe of the index: find the same-key list and, if this rule
        // goes first, take its place.
        let rules = &self.rules;
        let mut entry = self.heads.entry(
            index_hash(table, &key),
            |&s| holds(rules, s, table, &key),
            |&s| slot_hash(rules, s),
        );
        let head = match &entry {
            Entry::Occupied(o) => *o.get(),
            Entry::Vacant(_) => NONE,
        };
        let mut prev = NONE;
        let mut cur = head;
        while let Some(Some(r)) = rules.get(cur as usize) {
            if r.priority > rule.attr.priority {
                break;
            }
            prev = cur;
            cur = r.next;
        }
        if prev == NONE {
            match &mut entry {
                Entry::Occupied(o) => *o.get_mut() = slot,
                Entry::Vacant(_) => {
                    if let Entry::Vacant(v) = entry {
                        v.insert(slot);
                    }
                }
            }
        }
        let clock = self.clock;
        let installed = Installed {
            generation,
            priority: rule.attr.priority,
            table,
            key,
            actions: rule.actions.clone(),
            counter: rule
                .actions
                .contains(&Action::Count)
                .then_some(Counts::default()),
            age: rule.actions.iter().find_map(|a| match a {
                Action::Age(age) if age.timeout_s > 0 => Some(AgeState {
                    timeout: Nanos::from_secs(u64::from(age.timeout_s)),
                    context: age.context,
                    last_hit: clock,
                    reported: false,
                }),
                _ => None,
            }),
            template,
            next: cur,
        };
        if let Some(s) = self.rules.get_mut(slot as usize) {
            *s = Some(installed);
        }
        if prev != NONE
            && let Some(Some(p)) = self.rules.get_mut(prev as usize)
        {
            p.next = slot;
        }
        if let Some(t) = self.tables.get_mut(table) {
            t.rules += 1;
            let shape = key.word0() & SHAPE_BITS;
            if let Some(shapes) = &mut t.shapes
                && !shapes.contains(&shape)
                && shapes.push(shape).is_err()
            {
                t.shapes = None;
            }
            if rule.attr.priority < t.best {
                t.best = rule.attr.priority;
                self.reorder();
            }
        }
        if let Some(Some(t)) = template.and_then(|t| self.templates.get_mut(t as usize)) {
            t.rules += 1;
        }
        self.len += 1;
        Ok(RuleHandle((u64::from(generation) << 32) | u64::from(slot)))
    }

    /// One rule into a template table (`rte_flow_async_create`).
    fn enqueue_one(&mut self, rule: &Rule, place: Place) -> Result<RuleHandle, OffloadError> {
        self.require_configured()?;
        let Some(Some(t)) = self.templates.get(place.table.0 as usize) else {
            return Err(OffloadError::UnknownHandle);
        };
        let at = t
            .spec
            .place(rule)
            .map_err(|m| OffloadError::Invalid(m.reason()))?;
        if at != place.actions {
            return Err(OffloadError::Invalid(
                "the rule's actions follow another actions template",
            ));
        }
        if t.rules >= t.size {
            // mlx5: the table's flow pool (nb_flows) is used up
            // (hw.c flow_hw_async_flow_create: "fail to create rte flow").
            return Err(OffloadError::Full);
        }
        self.check_switches(rule, &t.spec)?;
        self.check_actions(rule)?;
        if self.mlx5().is_some() {
            mlx5::check_rule(rule)?;
        }
        let compiled = self.compile(rule)?;
        self.install(rule, &compiled, Some(place.table.0))
    }
}

/// Puts outer Ethernet/IPv4/UDP/VXLAN headers in front of the frame.
pub(crate) fn encap(frame: &mut FrameBuf<'_>, t: &VxlanTunnel) -> Result<(), ()> {
    let inner_len = frame.len();
    let mut vxlan = [0u8; 8];
    crate::wire::vxlan::VxlanRepr {
        vni: crate::wire::Vni::new(t.vni & 0x00FF_FFFF).ok_or(())?,
    }
    .emit(&mut vxlan)
    .map_err(|_| ())?;
    let spec = FrameSpec {
        dst_mac: t.dst_mac,
        src_mac: t.src_mac,
        vlans: &[],
        net: NetSpec::Ip(
            IpSpec::V4 {
                src: t.src.into(),
                dst: t.dst.into(),
                ttl: t.ttl,
                dscp: 0,
                ident: 0,
                frag: None,
                options: &[],
            },
            L4Spec::Udp {
                src_port: t.src_port,
                dst_port: VXLAN_PORT,
            },
        ),
        payload: &vxlan,
    };
    // Build the outer headers with the right lengths, then fix the lengths
    // for the inner frame behind them.
    let mut outer = [0u8; VXLAN_OVERHEAD];
    spec.build(&mut outer).map_err(|_| ())?;
    let ip_len = u16::try_from(VXLAN_OVERHEAD - 14 + inner_len).map_err(|_| ())?;
    let udp_len = ip_len - 20;
    outer[16..18].copy_from_slice(&ip_len.to_be_bytes());
    outer[24..26].copy_from_slice(&[0, 0]);
    let sum = crate::wire::checksum::finish(crate::wire::checksum::sum(&outer[14..34]));
    outer[24..26].copy_from_slice(&sum.to_be_bytes());
    outer[38..40].copy_from_slice(&udp_len.to_be_bytes());
    outer[40..42].copy_from_slice(&[0, 0]); // UDP checksum 0 (RFC 7348 5)
    frame
        .push_front(VXLAN_OVERHEAD)
        .map_err(|_| ())?
        .copy_from_slice(&outer);
    Ok(())
}

impl FlowOffload for SoftSwitch {
    fn configure(&mut self, attr: &PortAttr) -> Result<(), OffloadError> {
        if self.started {
            // lib/ethdev/rte_flow.c rte_flow_configure: "Device with
            // port_id=N already started." (EINVAL), before any driver.
            return Err(OffloadError::Invalid(
                "rte_flow_configure on a started port (ethdev: already started)",
            ));
        }
        if self.mlx5().is_some() && attr.aging > 0 && attr.counters == 0 {
            // hw.c flow_hw_configure: AGE objects are requested without
            // counters.
            return Err(OffloadError::Invalid(
                "AGE objects without counters (hw.c flow_hw_configure)",
            ));
        }
        // A second configure rebuilds everything (hw.c flow_hw_configure
        // releases every table and template first).
        let tables: Vec<u32> = (0..self.templates.len())
            .filter_map(|t| u32::try_from(t).ok())
            .collect();
        for t in tables {
            self.drop_template_rules(t);
        }
        self.templates.clear();
        self.configured = Some(*attr);
        Ok(())
    }

    fn start(&mut self) -> Result<(), OffloadError> {
        if self.started {
            return Err(OffloadError::Invalid("the port is started already"));
        }
        self.started = true;
        Ok(())
    }

    fn switch_of(&self, port: PortId) -> u16 {
        self.mlx5().map_or(0, |m| m.switch_of(port))
    }

    fn create(&mut self, rule: &Rule) -> Result<RuleHandle, OffloadError> {
        if self.mlx5().is_some() {
            return Err(mlx5::SYNC_REFUSED);
        }
        self.check_actions(rule)?;
        let compiled = Compiled::compile(rule)?;
        self.install(rule, &compiled, None)
    }

    fn create_table(&mut self, spec: &TableSpec) -> Result<TableId, OffloadError> {
        self.require_configured()?;
        let size = match self.profile {
            Profile::Generic => spec.size as usize,
            Profile::Mlx5(_) => {
                if !self.started {
                    return Err(mlx5::TABLE_BEFORE_START);
                }
                mlx5::check_table(spec)?;
                // hw.c flow_hw_table_create: nb_flows = rte_align32pow2.
                spec.size.checked_next_power_of_two().unwrap_or(u32::MAX) as usize
            }
        };
        let template = Template {
            spec: spec.clone(),
            size,
            rules: 0,
        };
        let slot = super::template::store(&mut self.templates, template);
        Ok(TableId(
            u32::try_from(slot).map_err(|_| OffloadError::Full)?,
        ))
    }

    fn destroy_table(&mut self, table: TableId) -> Result<(), OffloadError> {
        match self.templates.get_mut(table.0 as usize) {
            Some(t @ Some(_)) => {
                if t.as_ref().is_some_and(|t| t.rules > 0) {
                    return Err(OffloadError::Invalid("the table still holds rules"));
                }
                *t = None;
                Ok(())
            }
            _ => Err(OffloadError::UnknownHandle),
        }
    }

    fn enqueue(
        &mut self,
        rules: &[Rule],
        places: &[Place],
        out: &mut Vec<Result<RuleHandle, OffloadError>>,
    ) {
        out.clear();
        for (n, rule) in rules.iter().enumerate() {
            out.push(match places.get(n) {
                Some(place) => self.enqueue_one(rule, *place),
                None => Err(OffloadError::Invalid("no place for the rule")),
            });
        }
    }

    fn destroy(&mut self, handle: RuleHandle) -> Result<(), OffloadError> {
        let slot = (handle.0 & 0xFFFF_FFFF) as u32;
        let generation = (handle.0 >> 32) as u32;
        let rule = match self.rules.get_mut(slot as usize) {
            Some(r @ Some(_)) if r.as_ref().is_some_and(|r| r.generation == generation) => r.take(),
            _ => None,
        }
        .ok_or(OffloadError::UnknownHandle)?;
        // Unlink from the same-key list. The slot is empty now, so the
        // list's head is recognised by its slot number when it is this
        // rule, by its stored key otherwise.
        let rules = &self.rules;
        let found = self
            .heads
            .find_entry(index_hash(rule.table, &rule.key), |&s| {
                s == slot || holds(rules, s, rule.table, &rule.key)
            })
            .ok();
        let head = found.as_ref().map_or(NONE, |o| *o.get());
        if head == slot {
            if let Some(mut o) = found {
                if rule.next == NONE {
                    o.remove();
                } else {
                    *o.get_mut() = rule.next;
                }
            }
        } else {
            let mut cur = head;
            while let Some(Some(r)) = self.rules.get_mut(cur as usize) {
                if r.next == slot {
                    r.next = rule.next;
                    break;
                }
                cur = r.next;
            }
        }
        if let Some(t) = self.tables.get_mut(rule.table) {
            t.rules = t.rules.saturating_sub(1);
        }
        if let Some(Some(t)) = rule
            .template
            .and_then(|t| self.templates.get_mut(t as usize))
        {
            t.rules = t.rules.saturating_sub(1);
        }
        let had_age = rule.actions.iter().any(|a| matches!(a, Action::Age(_)));
        let had_counter = had_age || rule.counter.is_some();
        self.counters_used -= usize::from(had_counter);
        self.ages_used -= usize::from(had_age);
        self.free.push(slot);
        self.len -= 1;
        Ok(())
    }

    fn create_counter(&mut self, _switch: u16) -> Result<CounterId, OffloadError> {
        if let Some(attr) = self.configured
            && self.mlx5().is_some()
            && self.counters_used >= attr.counters as usize
        {
            // hw.c flow_hw_action_handle_create: no counter left in the
            // pool reserved by rte_flow_configure.
            return Err(OffloadError::Full);
        }
        if self.mlx5().is_some() {
            self.require_configured()?;
        }
        self.counters_used += 1;
        self.counters.push(Some(Counts::default()));
        Ok(CounterId(
            u32::try_from(self.counters.len() - 1).map_err(|_| OffloadError::Full)?,
        ))
    }

    fn query_counter(&mut self, counter: CounterId) -> Result<Counts, OffloadError> {
        self.counters
            .get(counter.0 as usize)
            .copied()
            .flatten()
            .ok_or(OffloadError::UnknownHandle)
    }

    fn destroy_counter(&mut self, counter: CounterId) -> Result<(), OffloadError> {
        let c = self
            .counters
            .get_mut(counter.0 as usize)
            .ok_or(OffloadError::UnknownHandle)?;
        c.take().ok_or(OffloadError::UnknownHandle)?;
        self.counters_used = self.counters_used.saturating_sub(1);
        Ok(())
    }

    fn create_encap(&mut self, tunnel: &VxlanTunnel) -> Result<EncapId, OffloadError> {
        self.encaps.push(*tunnel);
        Ok(EncapId(
            u32::try_from(self.encaps.len() - 1).map_err(|_| OffloadError::Full)?,
        ))
    }

    fn aged(&mut self, now: Nanos, out: &mut Vec<u64>) {
        self.clock = self.clock.max(now);
        // As mlx5's counter service does (mlx5_hws_cnt.c
        // mlx5_hws_aging_check): a rule without a hit for its timeout is
        // reported once, and stays aged until it is destroyed.
        for age in self
            .rules
            .iter_mut()
            .flatten()
            .filter_map(|r| r.age.as_mut())
        {
            if !age.reported && now.since(age.last_hit) > age.timeout {
                age.reported = true;
                out.push(age.context);
            }
        }
    }

    fn capacity(&self) -> Option<usize> {
        Some(self.capacity)
    }
}

impl SoftSwitch {
    /// Destroys the rules of template table `t` (a second configure).
    fn drop_template_rules(&mut self, t: u32) {
        let handles: Vec<RuleHandle> = self
            .rules
            .iter()
            .enumerate()
            .filter_map(|(slot, r)| {
                let r = r.as_ref()?;
                (r.template == Some(t))
                    .then(|| RuleHandle((u64::from(r.generation) << 32) | slot as u64))
            })
            .collect();
        for h in handles {
            let _ = self.destroy(h);
        }
    }
}

/// Tables are few (the distinct masks of the rules): their index fits.
#[allow(clippy::cast_possible_truncation)]
/// True when `slot` holds a rule of `table` with masked key `key`.
fn holds(rules: &[Option<Installed>], slot: u32, table: usize, key: &Fields) -> bool {
    matches!(rules.get(slot as usize), Some(Some(r)) if r.table == table && r.key == *key)
}

/// The index hash of the rule in `slot` (for the index growing, which its
/// sizing at creation prevents).
fn slot_hash(rules: &[Option<Installed>], slot: u32) -> u64 {
    match rules.get(slot as usize) {
        Some(Some(r)) => index_hash(r.table, &r.key),
        _ => 0,
    }
}

impl SoftSwitch {
    /// Orders the tables by group, then by the best priority they hold.
    fn reorder(&mut self) {
        let tables = &self.tables;
        self.order = (0..tables.len()).collect();
        self.order
            .sort_by_key(|&i| tables.get(i).map(|t| (t.group, t.best)));
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod profile_tests;
