//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4):
//! a lookup table of prime size in which every backend takes slots in the
//! order of its own permutation, so that adding or removing a backend
//! moves few slots and every gateway that sees the same backends builds the
//! same table.
//!
//! A backend's permutation is `offset + j * skip (mod M)`, with offset and
//! skip from two hashes of its name: stable across configuration
//! generations and gateways, whatever its index. Weights: in each round a
//! backend gains its weight in credit and takes one slot per whole
//! `max weight` of credit, so shares follow the weights.

use alloc::vec;
use alloc::vec::Vec;

use chaingate_shared::hash::FlowHasher;

/// One backend to place in the table.
#[derive(Clone, Copy, Debug)]
pub struct Backend {
    /// What the table returns for it.
    pub id: u16,
    /// A stable hash of its name.
    pub name_hash: u64,
    /// Its relative weight (at least 1).
    pub weight: u16,
}

/// Marks an empty slot while filling.
const EMPTY: u16 = u16::MAX;

/// A Maglev lookup table.
#[derive(Clone, Debug)]
pub struct Maglev {
    slots: Vec<u16>,
}

/// The smallest prime at or above `n` (`n` is small: a few thousand).
#[must_use]
pub fn prime_at_least(n: usize) -> usize {
    let is_prime = |m: usize| {
        m >= 2
            && (2..)
                .take_while(|d| d * d <= m)
                .all(|d| !m.is_multiple_of(d))
    };
    (n.max(2)..).find(|&m| is_prime(m)).unwrap_or(n)
}

impl Maglev {
    /// The table of `size` slots (a prime) over `backends`; empty when
    /// there are none.
    #[must_use]
    pub fn new(backends: &[Backend], size: usize) -> Self {
        if backends.is_empty() || size < 2 {
            return Self { slots: Vec::new() };
        }
        let m = size as u64;
        let perms: Vec<(u64, u64)> = backends
            .iter()
            .map(|b| {
                let offset = FlowHasher::new(0x4D41_474C_4F46).word(b.name_hash).finish() % m;
                let skip =
                    FlowHasher::new(0x4D41_474C_534B).word(b.name_hash).finish() % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let max_weight = backends
            .iter()
            .map(|b| u64::from(b.weight.max(1)))
            .max()
            .unwrap_or(1);
        let mut next = vec![0u64; backends.len()];
        let mut credit = vec![0u64; backends.len()];
        let mut slots = vec![EMPTY; size];
        let mut filled = 0;
        'fill: loop {
            for (i, b) in backends.iter().enumerate() {
                let (Some(c), Some(&(offset, skip)), Some(n)) =
                    (credit.get_mut(i), perms.get(i), next.get_mut(i))
                else {
                    continue;
                };
                *c += u64::from(b.weight.max(1));
                while *c >= max_weight {
                    *c -= max_weight;
                    // Find this backend's next preferred empty slot.
                    loop {
                        // Below m, the table size: fits usize.
                        #[allow(clippy::cast_possible_truncation)]
                        let slot = ((offset + *n * skip) % m) as usize;
                        *n += 1;
                        if let Some(s) = slots.get_mut(slot)
                            && *s == EMPTY
                        {
                            *s = b.id;
                            filled += 1;
                            break;
                        }
                    }
                    if filled == size {
                        break 'fill;
                    }
                }
            }
        }
        Self { slots }
    }

    /// Number of slots (0 without backends).
    #[must_use]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True without backends.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The slot a hash falls in.
    #[inline]
    #[must_use]
    pub fn slot(&self, hash: u64) -> usize {
        if self.slots.is_empty() {
            0
        } else {
            // Below the table length: fits usize.
            #[allow(clippy::cast_possible_truncation)]
            let slot = (hash % self.slots.len() as u64) as usize;
            slot
        }
    }

    /// The backend of a slot (wrapping around the table).
    #[inline]
    #[must_use]
    pub fn at(&self, slot: usize) -> Option<u16> {
        let len = self.slots.len();
        if len == 0 {
            return None;
        }
        self.slots.get(slot % len).copied()
    }

    /// The backend for a hash.
    #[inline]
    #[must_use]
    pub fn lookup(&self, hash: u64) -> Option<u16> {
        self.at(self.slot(hash))
    }

    /// All slots (for tests and reports).
    #[must_use]
    pub fn slots(&self) -> &[u16] {
        &self.slots
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn backends(n: u16) -> Vec<Backend> {
        (0..n)
            .map(|i| Backend {
                id: i,
                name_hash: FlowHasher::new(1).word(u64::from(i) + 1000).finish(),
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn primes() {
        assert_eq!(prime_at_least(400), 401);
        assert_eq!(prime_at_least(6400), 6421);
        assert_eq!(prime_at_least(2), 2);
        assert_eq!(prime_at_least(0), 2);
    }

    #[test]
    fn shares_are_even_and_follow_weights() {
        let t = Maglev::new(&backends(5), 1009);
        let mut count = [0usize; 5];
        for s in t.slots() {
            count[usize::from(*s)] += 1;
        }
        for c in count {
            assert!(c.abs_diff(1009 / 5) <= 2, "{count:?}");
        }
        let mut b = backends(2);
        b[1].weight = 3;
        let t = Maglev::new(&b, 4001);
        let heavy = t.slots().iter().filter(|s| **s == 1).count();
        assert!(heavy.abs_diff(3000) <= 5, "{heavy}");
    }

    #[test]
    fn the_table_depends_on_names_not_order() {
        let b = backends(4);
        let mut reversed = b.clone();
        reversed.reverse();
        // Same names and ids in another order: the same table up to ties
        // resolved by fill order, so nearly every slot agrees.
        let (t1, t2) = (Maglev::new(&b, 401), Maglev::new(&reversed, 401));
        let same = t1
            .slots()
            .iter()
            .zip(t2.slots())
            .filter(|(a, b)| a == b)
            .count();
        assert!(same * 100 >= 401 * 90, "{same}");
    }

    #[test]
    fn empty_without_backends() {
        let t = Maglev::new(&[], 401);
        assert!(t.is_empty());
        assert_eq!(t.lookup(12345), None);
    }
}
