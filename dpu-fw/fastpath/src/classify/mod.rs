//! Policy classification: which policy a new connection's first packet
//! matches (highest priority; among equals, the one configured first).
//!
//! Algorithm: bit-vector intersection with aggregate summaries (Lakshman
//! and Stiliadis' bit-vector scheme, with the "aggregated bit vector"
//! refinement of Baboescu and Varghese). Rules are numbered in priority
//! order, so the lowest set bit of a bitmap is the best rule in it. For
//! each of the eight match fields the value line is cut into elementary
//! intervals at every rule boundary (or, for small fields, indexed
//! directly); each interval holds the bitmap of the rules that match all of
//! it, plus a summary word with one bit per non-zero bitmap word. A lookup
//! is one binary search per field (O(log n)), an AND of eight summaries,
//! and then ANDs of single 64-bit words only where every field has rules,
//! stopping at the first non-zero one: its lowest bit is the answer. The
//! cost grows with log n and the number of words visited, which is one or
//! two for real rule sets, not with n.
//!
//! Fields: ingress port, outer customer VLAN, source and destination
//! prefixes (IPv4 and IPv6 on separate lines: a rule with a prefix of one
//! family has no bits on the other's line, so it never matches the other
//! family), protocol, source and destination ports, DSCP.
//!
//! Memory is O(fields × n²/64) bits at worst: about 2 MB for the maximum of
//! 1,024 policies, allocated when a configuration is applied, never while
//! classifying.

use alloc::vec;
use alloc::vec::Vec;
use core::net::IpAddr;

use chaingate_shared::config::{MAX_POLICIES, MAX_PORTS};
use chaingate_shared::policy::{ClassifyInput, IpPrefix, Match, Policy, PolicyAction, PortRange};
use chaingate_shared::{Config, PortId};

/// The decision for a connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Classification {
    /// What to do.
    pub action: PolicyAction,
    /// The policy that decided (index in the configuration), or `None`
    /// when none matched and the default action applies.
    pub policy: Option<usize>,
}

/// Words of a bitmap over the rules.
const MAX_WORDS: usize = MAX_POLICIES.div_ceil(64);

// One summary word covers all bitmap words.
const _: () = assert!(MAX_WORDS <= 64);

/// Value used for "untagged" on the VLAN line (VIDs are 0 to 4095).
const UNTAGGED: u16 = 4096;

/// Bitmaps for the entries of one field, with their summaries.
#[derive(Clone, Debug)]
struct Bitmaps {
    words: usize,
    bits: Vec<u64>,
    summary: Vec<u64>,
}

impl Bitmaps {
    fn new(entries: usize, words: usize) -> Self {
        Self {
            words,
            bits: vec![0; entries * words],
            summary: vec![0; entries],
        }
    }

    fn set(&mut self, entry: usize, rule: usize) {
        let w = rule / 64;
        if let Some(word) = self.bits.get_mut(entry * self.words + w) {
            *word |= 1 << (rule % 64);
        }
        if let Some(s) = self.summary.get_mut(entry) {
            *s |= 1 << w;
        }
    }

    /// The bitmap words and the summary of an entry.
    #[inline]
    fn row(&self, entry: usize) -> (&[u64], u64) {
        let start = entry * self.words;
        (
            self.bits.get(start..start + self.words).unwrap_or(&[]),
            self.summary.get(entry).copied().unwrap_or(0),
        )
    }
}

/// What part of a field's value line a rule covers.
#[derive(Clone, Copy, Debug)]
enum Span<V> {
    All,
    Range(V, V),
    Nothing,
}

/// A field whose value line is cut into elementary intervals.
#[derive(Clone, Debug)]
struct Intervals<V> {
    /// Entry `i` covers `starts[i] .. starts[i + 1]`.
    starts: Vec<V>,
    maps: Bitmaps,
}

trait LineValue: Copy + Ord {
    const MIN: Self;
    fn next(self) -> Option<Self>;
}

macro_rules! line_value {
    ($($t:ty),*) => {$(
        impl LineValue for $t {
            const MIN: Self = <$t>::MIN;
            fn next(self) -> Option<Self> {
                self.checked_add(1)
            }
        }
    )*};
}
line_value!(u16, u32, u128);

impl<V: LineValue> Intervals<V> {
    fn build(spans: &[Span<V>], words: usize) -> Self {
        let mut starts = vec![V::MIN];
        for span in spans {
            if let Span::Range(lo, hi) = *span {
                starts.push(lo);
                if let Some(after) = hi.next() {
                    starts.push(after);
                }
            }
        }
        starts.sort_unstable();
        starts.dedup();
        let mut maps = Bitmaps::new(starts.len(), words);
        for (rule, span) in spans.iter().enumerate() {
            let (first, last) = match *span {
                Span::All => (0, starts.len()),
                Span::Range(lo, hi) => (Self::find(&starts, lo), Self::find(&starts, hi) + 1),
                Span::Nothing => (0, 0),
            };
            for entry in first..last {
                maps.set(entry, rule);
            }
        }
        Self { starts, maps }
    }

    fn find(starts: &[V], v: V) -> usize {
        starts.partition_point(|s| *s <= v).saturating_sub(1)
    }

    #[inline]
    fn lookup(&self, v: V) -> (&[u64], u64) {
        self.maps.row(Self::find(&self.starts, v))
    }
}

/// A small field indexed directly by value.
#[derive(Clone, Debug)]
struct Direct {
    maps: Bitmaps,
}

impl Direct {
    fn build(values: usize, rules: impl Iterator<Item = Option<usize>>, words: usize) -> Self {
        let mut maps = Bitmaps::new(values, words);
        for (rule, value) in rules.enumerate() {
            match value {
                None => (0..values).for_each(|v| maps.set(v, rule)),
                Some(v) => maps.set(v, rule),
            }
        }
        Self { maps }
    }

    #[inline]
    fn lookup(&self, v: usize) -> (&[u64], u64) {
        self.maps.row(v)
    }
}

/// The classifier of one configuration.
#[derive(Clone, Debug)]
pub struct Classifier {
    /// Rules in priority order: (configuration index, action).
    rules: Vec<(usize, PolicyAction)>,
    default_action: PolicyAction,
    in_port: Direct,
    vlan: Intervals<u16>,
    src4: Intervals<u32>,
    dst4: Intervals<u32>,
    src6: Intervals<u128>,
    dst6: Intervals<u128>,
    proto: Direct,
    sport: Intervals<u16>,
    dport: Intervals<u16>,
    dscp: Direct,
}

impl Classifier {
    /// Builds the classifier for a configuration's policies.
    #[must_use]
    pub fn new(config: &Config) -> Self {
        let mut order: Vec<(usize, &Policy)> = config.policies().iter().enumerate().collect();
        // Highest priority first; among equals, configuration order.
        order.sort_by(|(ia, a), (ib, b)| b.priority.cmp(&a.priority).then(ia.cmp(ib)));
        let words = order.len().div_ceil(64).max(1);
        let spans = |f: fn(&Match) -> Span<u16>| {
            order.iter().map(|(_, p)| f(&p.matches)).collect::<Vec<_>>()
        };
        let spans4 = |f: fn(&Match) -> Span<u32>| {
            order.iter().map(|(_, p)| f(&p.matches)).collect::<Vec<_>>()
        };
        let spans6 = |f: fn(&Match) -> Span<u128>| {
            order.iter().map(|(_, p)| f(&p.matches)).collect::<Vec<_>>()
        };
        let direct = |values, f: fn(&Match) -> Option<usize>| {
            Direct::build(values, order.iter().map(|(_, p)| f(&p.matches)), words)
        };
        Self {
            rules: order.iter().map(|(i, p)| (*i, p.action)).collect(),
            default_action: config.default_action(),
            in_port: direct(MAX_PORTS, |m| m.in_port.map(PortId::index)),
            vlan: Intervals::build(
                &spans(|m| m.vlan.map_or(Span::All, |v| Span::Range(v.get(), v.get()))),
                words,
            ),
            src4: Intervals::build(&spans4(|m| v4_span(m.src)), words),
            dst4: Intervals::build(&spans4(|m| v4_span(m.dst)), words),
            src6: Intervals::build(&spans6(|m| v6_span(m.src)), words),
            dst6: Intervals::build(&spans6(|m| v6_span(m.dst)), words),
            proto: direct(256, |m| m.proto.map(|p| usize::from(p.number()))),
            sport: Intervals::build(&spans(|m| port_span(m.src_ports)), words),
            dport: Intervals::build(&spans(|m| port_span(m.dst_ports)), words),
            dscp: direct(64, |m| m.dscp.map(|d| usize::from(d.get()))),
        }
    }

    /// The decision for a connection's first packet.
    #[must_use]
    pub fn classify(&self, input: &ClassifyInput<'_>) -> Classification {
        let key = input.key;
        let vlan = key.vlans().outer().map_or(UNTAGGED, |v| v.get());
        let (src, dst) = match (key.src(), key.dst()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                (self.src4.lookup(s.to_bits()), self.dst4.lookup(d.to_bits()))
            }
            (s, d) => (self.src6.lookup(v6_bits(s)), self.dst6.lookup(v6_bits(d))),
        };
        let rows = [
            self.in_port.lookup(input.in_port.index()),
            self.vlan.lookup(vlan),
            src,
            dst,
            self.proto.lookup(usize::from(key.proto().number())),
            self.sport.lookup(key.src_port()),
            self.dport.lookup(key.dst_port()),
            self.dscp.lookup(usize::from(input.dscp.get())),
        ];
        let mut summary = rows.iter().fold(u64::MAX, |acc, (_, s)| acc & s);
        while summary != 0 {
            let w = summary.trailing_zeros() as usize;
            let word = rows.iter().fold(u64::MAX, |acc, (bits, _)| {
                acc & bits.get(w).copied().unwrap_or(0)
            });
            if word != 0 {
                let rule = w * 64 + word.trailing_zeros() as usize;
                if let Some(&(index, action)) = self.rules.get(rule) {
                    return Classification {
                        action,
                        policy: Some(index),
                    };
                }
            }
            summary &= summary - 1;
        }
        Classification {
            action: self.default_action,
            policy: None,
        }
    }

    /// Number of policies.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True without policies.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

fn v6_bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V6(a) => a.to_bits(),
        IpAddr::V4(a) => a.to_ipv6_mapped().to_bits(),
    }
}

fn v4_span(prefix: Option<IpPrefix>) -> Span<u32> {
    match prefix {
        None => Span::All,
        Some(p) if p.is_ipv6() => Span::Nothing,
        Some(p) => {
            let (lo, hi) = p.v4_range();
            Span::Range(lo, hi)
        }
    }
}

fn v6_span(prefix: Option<IpPrefix>) -> Span<u128> {
    match prefix {
        None => Span::All,
        Some(p) if !p.is_ipv6() => Span::Nothing,
        Some(p) => {
            let (lo, hi) = p.v6_range();
            Span::Range(lo, hi)
        }
    }
}

fn port_span(range: Option<PortRange>) -> Span<u16> {
    range.map_or(Span::All, |r| Span::Range(r.lo(), r.hi()))
}

#[cfg(test)]
mod tests;
