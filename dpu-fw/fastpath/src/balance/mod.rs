//! Instance choice: for every hop of a new session, which instance of the
//! hop's service takes it.
//!
//! Per service, a [`maglev::Maglev`] table over the instances that are
//! active (draining and down instances take no new sessions), of prime size
//! at least 1,000 times the service's maximum instance count, keyed by the
//! session's symmetric flow hash: both directions and every gateway pick
//! the same instance, and adding an instance moves about 1/(N+1) of the
//! keys. Established sessions keep the instances stored with them, so a
//! table rebuild moves no session.
//!
//! Bandwidth: if the Maglev pick is over its scale-out watermark, the next
//! instance in the table order from the key's slot that has headroom takes
//! the session (each key has its own fallback order, so the overflow of one
//! instance spreads over the others). When none has headroom, the least
//! loaded takes it and the caller raises a scale request.

pub mod maglev;

use alloc::vec::Vec;

use chaingate_shared::config::{Config, InstanceState};
use chaingate_shared::hash::hash_bytes;
use chaingate_shared::{InstanceId, ServiceId};

use crate::meter::Meters;
use maglev::{Backend, Maglev, prime_at_least};

/// Hash domain of instance names.
const NAME_DOMAIN: u64 = 0x4E41_4D45; // "NAME"

/// Table slots per possible instance.
pub const SLOTS_PER_INSTANCE: usize = 1000;

/// The outcome of a choice.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Choice {
    /// An instance with headroom.
    Picked(InstanceId),
    /// None had headroom: the least loaded, and the service needs another.
    Overloaded(InstanceId),
    /// The service has no active instance.
    Unavailable,
}

impl Choice {
    /// The chosen instance, if any.
    #[must_use]
    pub const fn instance(self) -> Option<InstanceId> {
        match self {
            Self::Picked(i) | Self::Overloaded(i) => Some(i),
            Self::Unavailable => None,
        }
    }
}

#[derive(Clone, Debug)]
struct ServiceTable {
    /// Active instances; the table holds positions in this list.
    active: Vec<InstanceId>,
    table: Maglev,
}

impl ServiceTable {
    /// The first instance for which `ok` holds, in the table order from
    /// slot `start` (each instance once): a key's own fallback order.
    fn first_in_order(&self, start: usize, ok: impl Fn(InstanceId) -> bool) -> Option<InstanceId> {
        // At most 64 instances per service: one bit each.
        let mut tried: u64 = 0;
        let mut seen = 0;
        for k in 0..self.table.len() {
            let pos = self.table.at(start + k)?;
            let bit = 1u64.checked_shl(u32::from(pos)).unwrap_or(0);
            if tried & bit != 0 {
                continue;
            }
            tried |= bit;
            seen += 1;
            if let Some(candidate) = self.active.get(usize::from(pos)).copied()
                && ok(candidate)
            {
                return Some(candidate);
            }
            if seen == self.active.len() {
                break;
            }
        }
        None
    }
}

/// The per-service tables.
#[derive(Clone, Debug)]
pub struct Balancer {
    services: Vec<ServiceTable>,
}

impl Balancer {
    /// Tables for a configuration, with the instances' current states.
    #[must_use]
    pub fn new(config: &Config, state: impl Fn(InstanceId) -> InstanceState) -> Self {
        let services = config
            .services()
            .iter()
            .enumerate()
            .map(|(n, svc)| {
                let id = ServiceId::from_index(u16::try_from(n).unwrap_or(u16::MAX));
                let active: Vec<InstanceId> = config
                    .instances_of(id)
                    .filter(|(i, _)| state(*i) == InstanceState::Active)
                    .map(|(i, _)| i)
                    .collect();
                let backends: Vec<Backend> = active
                    .iter()
                    .enumerate()
                    .filter_map(|(pos, i)| {
                        let inst = config.instance(*i)?;
                        Some(Backend {
                            id: u16::try_from(pos).ok()?,
                            name_hash: hash_bytes(NAME_DOMAIN, inst.name().as_str().as_bytes()),
                            weight: inst.weight(),
                        })
                    })
                    .collect();
                let size =
                    prime_at_least(SLOTS_PER_INSTANCE * usize::from(svc.scaling().max_instances));
                ServiceTable {
                    table: Maglev::new(&backends, size),
                    active,
                }
            })
            .collect();
        Self { services }
    }

    /// The active instances of a service.
    #[must_use]
    pub fn active(&self, service: ServiceId) -> &[InstanceId] {
        self.services
            .get(service.index())
            .map_or(&[], |s| &s.active)
    }

    /// The Maglev table of a service.
    #[must_use]
    pub fn table(&self, service: ServiceId) -> Option<&Maglev> {
        self.services.get(service.index()).map(|s| &s.table)
    }

    /// The instance of `service` for a session with symmetric hash `hash`.
    #[must_use]
    pub fn choose(&self, service: ServiceId, hash: u64, meters: &Meters) -> Choice {
        let Some(svc) = self.services.get(service.index()) else {
            return Choice::Unavailable;
        };
        let instance = |pos: u16| svc.active.get(usize::from(pos)).copied();
        let start = svc.table.slot(hash);
        let Some(first) = svc.table.at(start).and_then(instance) else {
            return Choice::Unavailable;
        };
        if meters.has_headroom(first) {
            return Choice::Picked(first);
        }
        if let Some(c) = svc.first_in_order(start, |i| meters.has_headroom(i)) {
            return Choice::Picked(c);
        }
        svc.active
            .iter()
            .copied()
            .min_by(|a, b| meters.utilisation(*a).total_cmp(&meters.utilisation(*b)))
            .map_or(Choice::Unavailable, Choice::Overloaded)
    }

    /// [`Self::choose`], but an instance for which `local` holds takes the
    /// session while one has headroom: the first such in the key's table
    /// order (so the choice is still stable and spread); else the choice
    /// over all. Two DPUs with different local instances may then choose
    /// differently for the two directions of one connection.
    pub fn choose_preferring(
        &self,
        service: ServiceId,
        hash: u64,
        meters: &Meters,
        local: impl Fn(InstanceId) -> bool,
    ) -> Choice {
        let Some(svc) = self.services.get(service.index()) else {
            return Choice::Unavailable;
        };
        let start = svc.table.slot(hash);
        if let Some(c) = svc.first_in_order(start, |i| local(i) && meters.has_headroom(i)) {
            return Choice::Picked(c);
        }
        self.choose(service, hash, meters)
    }
}

#[cfg(test)]
mod tests;
