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
//! Groups are evaluated from 0; `Jump` moves on (at most 8 times: a loop is
//! a drop). Actions apply in order; a group after a jump matches the frame
//! as modified. Counters, shared counters and meters behave as rte_flow's.

use alloc::vec::Vec;
use core::hash::Hasher;

use chaingate_shared::hash::FlowHasher;
use chaingate_shared::{IpProtocol, Nanos, PortId};
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use super::rule::{
    Action, EthFields, Icmp6Fields, IcmpFields, Ipv4Fields, Ipv6Fields, Item, MAX_ACTIONS,
    TcpFields, UdpFields, VlanFields, VxlanTunnel,
};
use super::{CounterId, Counts, EncapId, FlowOffload, MeterId, OffloadError, Rule, RuleHandle};
use crate::wire::build::{FrameSpec, IpSpec, L4Spec, NetSpec};
use crate::wire::{EtherType, FrameBuf, Network, Tci, TunnelKind, parse};

/// Most jumps a frame may take before it is dropped as looping.
pub const MAX_JUMPS: usize = 8;

/// Bytes of outer headers a VXLAN encapsulation adds.
pub const VXLAN_OVERHEAD: usize = 50;

const WORDS: usize = 10;

/// A frame reduced to the fields rules match, or a rule's key or mask.
///
/// Layout (bit offsets within 64-bit words):
/// w0: in_port 0..16, tag presence 16..24 (bit k: more than k tags),
///     family 24..32 (4 or 6), L4 protocol 32..40, TCP flags 40..48,
///     TOS/traffic class 48..56;
/// w1: EtherType/TPID 0..16, tag 0 TCI 16..32, tag 0 inner type 32..48,
///     tag 1 TCI 48..64; w2: tag 1 inner type 0..16, source port 16..32,
///     destination port 32..48, ICMP type 48..56, code 56..64;
/// w3: ICMP identifier 0..16, sequence 16..32;
/// w4/w5: source address (IPv4 in w5's low half); w6/w7: destination;
/// w8: destination MAC; w9: source MAC.
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
        let Ok(parsed) = parse(frame) else { return f };
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

/// Splits a 128-bit value into its high and low 64-bit words.
fn halves(x: u128) -> (u64, u64) {
    let b = x.to_be_bytes();
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(b.get(..8).unwrap_or(&[0; 8]));
    lo.copy_from_slice(b.get(8..).unwrap_or(&[0; 8]));
    (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
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
        for item in &rule.pattern {
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
                Item::Tcp(s) => {
                    c.l4_start(&mut l4, l3, None, IpProtocol::Tcp)?;
                    c.tcp(s.spec, s.mask);
                }
                Item::Udp(s) => {
                    c.l4_start(&mut l4, l3, None, IpProtocol::Udp)?;
                    c.udp(s.spec, s.mask);
                }
                Item::Icmp(s) => {
                    c.l4_start(&mut l4, l3, Some(4), IpProtocol::Icmp)?;
                    c.icmp(s.spec, s.mask);
                }
                Item::Icmp6(s) => {
                    c.l4_start(&mut l4, l3, Some(6), IpProtocol::Icmpv6)?;
                    c.icmp6(s.spec, s.mask);
                }
            }
        }
        Ok(c)
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
                "two L3 items (tunnels: match the outer headers)",
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
    /// The next rule with the same group, mask and key (worse priority).
    next: u32,
}

/// Structural bits of word 0 (tags, family, L4 protocol): a table only
/// holds rules of a few shapes, and a frame of another shape need not
/// probe it.
const SHAPE_BITS: u64 = 0x0000_00FF_FFFF_0000;

/// Distinct shapes a table remembers before it stops filtering.
const SHAPES: usize = 8;

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

struct Meter {
    rate_bps: u64,
    burst_bytes: u64,
    tokens: u64,
    last: Nanos,
}

/// Why the eSwitch dropped a frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum SwitchDrop {
    /// A rule's `Drop`.
    Rule,
    /// A meter's red.
    Meter,
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
    capacity: usize,
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
    counters: Vec<Option<Counts>>,
    meters: Vec<Option<Meter>>,
    encaps: Vec<VxlanTunnel>,
    stats: SwitchStats,
}

impl core::fmt::Debug for SoftSwitch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SoftSwitch")
            .field("capacity", &self.capacity)
            .field("rules", &self.len)
            .field("tables", &self.tables.len())
            .finish_non_exhaustive()
    }
}

impl SoftSwitch {
    /// An eSwitch that holds up to `capacity` rules.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            rules: Vec::with_capacity(capacity),
            generations: Vec::with_capacity(capacity),
            free: Vec::new(),
            len: 0,
            tables: Vec::new(),
            order: Vec::new(),
            heads: HashTable::with_capacity(capacity),
            last_table: 0,
            counters: Vec::new(),
            meters: Vec::new(),
            encaps: Vec::new(),
            stats: SwitchStats::default(),
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

    /// Creates a meter of `rate_bps` bits per second with a burst of
    /// `burst_bytes` (a single-rate token bucket: green passes, red drops).
    pub fn create_meter(&mut self, rate_bps: u64, burst_bytes: u64) -> MeterId {
        self.meters.push(Some(Meter {
            rate_bps,
            burst_bytes,
            tokens: burst_bytes,
            last: Nanos(0),
        }));
        MeterId(u32::try_from(self.meters.len() - 1).unwrap_or(u32::MAX))
    }

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
                Action::Meter(m) if !matches!(self.meters.get(m.0 as usize), Some(Some(_))) => {
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
    /// their actions to it, at `now` (for meters).
    pub fn process(&mut self, in_port: PortId, frame: &mut FrameBuf<'_>, now: Nanos) -> Outcome {
        self.stats.frames += 1;
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
            let actions = rule.actions.clone();
            let mut modified = false;
            for action in &actions {
                match self.apply(*action, frame, now) {
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
        now: Nanos,
    ) -> Result<Option<Outcome>, SwitchDrop> {
        match action {
            Action::RepresentedPort(p) => return Ok(Some(Outcome::Out(p))),
            Action::PortRepresentor(p) => return Ok(Some(Outcome::ToSoftware(p))),
            Action::Drop => return Err(SwitchDrop::Rule),
            Action::Jump(_) | Action::Count => {}
            Action::OfPushVlan(tpid) => {
                // OpenFlow push_vlan: the new tag copies the TCI it covers.
                let tci = frame.outer_tag().map_or(Tci(0), |(_, t)| t);
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
            Action::SharedCount(c) => {
                if let Some(Some(counts)) = self.counters.get_mut(c.0 as usize) {
                    counts.packets += 1;
                    counts.bytes += frame.len() as u64;
                }
            }
            Action::Meter(m) => {
                let Some(Some(meter)) = self.meters.get_mut(m.0 as usize) else {
                    return Err(SwitchDrop::Meter);
                };
                let elapsed = now.since(meter.last).0;
                meter.last = now;
                let refill = u128::from(meter.rate_bps) * u128::from(elapsed) / 8 / 1_000_000_000;
                meter.tokens = u64::try_from(u128::from(meter.tokens) + refill)
                    .unwrap_or(u64::MAX)
                    .min(meter.burst_bytes);
                let need = frame.len() as u64;
                if meter.tokens < need {
                    return Err(SwitchDrop::Meter);
                }
                meter.tokens -= need;
            }
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
}

/// Puts outer Ethernet/IPv4/UDP/VXLAN headers in front of the frame.
fn encap(frame: &mut FrameBuf<'_>, t: &VxlanTunnel) -> Result<(), ()> {
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
                dst_port: crate::wire::vxlan::VXLAN_PORT,
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
    fn validate(&mut self, rule: &Rule) -> Result<(), OffloadError> {
        self.check_actions(rule)?;
        Compiled::compile(rule).map(|_| ())
    }

    fn create(&mut self, rule: &Rule) -> Result<RuleHandle, OffloadError> {
        self.check_actions(rule)?;
        let compiled = Compiled::compile(rule)?;
        if self.len >= self.capacity {
            return Err(OffloadError::Full);
        }
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
        self.len += 1;
        Ok(RuleHandle((u64::from(generation) << 32) | u64::from(slot)))
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
        self.free.push(slot);
        self.len -= 1;
        Ok(())
    }

    fn query(&mut self, handle: RuleHandle) -> Result<Counts, OffloadError> {
        let slot = (handle.0 & 0xFFFF_FFFF) as usize;
        match self.rules.get(slot) {
            Some(Some(r)) if u64::from(r.generation) == handle.0 >> 32 => r
                .counter
                .ok_or(OffloadError::Invalid("the rule has no COUNT action")),
            _ => Err(OffloadError::UnknownHandle),
        }
    }

    fn create_counter(&mut self) -> Result<CounterId, OffloadError> {
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
        c.take().map(|_| ()).ok_or(OffloadError::UnknownHandle)
    }

    fn create_encap(&mut self, tunnel: &VxlanTunnel) -> Result<EncapId, OffloadError> {
        self.encaps.push(*tunnel);
        Ok(EncapId(
            u32::try_from(self.encaps.len() - 1).map_err(|_| OffloadError::Full)?,
        ))
    }

    fn capacity(&self) -> Option<usize> {
        Some(self.capacity)
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
