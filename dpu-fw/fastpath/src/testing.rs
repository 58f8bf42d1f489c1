//! Configurations for unit tests: uplinks, VFs, services with instances,
//! chains and policies, built the way an operator's file would be.

use alloc::format;
use alloc::vec::Vec;

use chaingate_shared::config::{Attachment, FailMode, InstanceState, PortRole, Scaling, Uplink};
use chaingate_shared::policy::{Match, Policy, PolicyAction};
use chaingate_shared::{Config, ConfigBuilder, Generation, InstanceId, PortId, ServiceId};

/// One service of a test rig: name, instances, capacity, fail mode.
pub(crate) struct Svc {
    pub name: &'static str,
    pub instances: usize,
    pub capacity_bps: u64,
    pub fail: FailMode,
    /// Instances in state Down at first (the last ones).
    pub down: usize,
}

impl Svc {
    pub(crate) const fn new(name: &'static str, instances: usize) -> Self {
        Self {
            name,
            instances,
            capacity_bps: 1_000_000_000,
            fail: FailMode::Open,
            down: 0,
        }
    }
}

/// What a rig configuration holds.
pub(crate) struct Rig {
    pub config: Config,
    pub lan: PortId,
    pub wan: PortId,
    pub services: Vec<ServiceId>,
    /// Instances per service, in order.
    pub instances: Vec<Vec<InstanceId>>,
}

/// Ports lan, wan and one VF per instance; the services; one chain through
/// all of them in order; a policy sending everything from lan through it.
pub(crate) fn rig(services: &[Svc]) -> Rig {
    rig_with(services, |_, _| {})
}

/// [`rig`] as configuration generation `generation`.
pub(crate) fn rig_at(services: &[Svc], generation: u64) -> Rig {
    rig_built(Generation(generation), services, |_, _| {})
}

/// [`rig`], with a hook to add more (chains, policies) before building.
pub(crate) fn rig_with(
    services: &[Svc],
    more: impl FnOnce(&mut ConfigBuilder, &[ServiceId]),
) -> Rig {
    rig_built(Generation(1), services, more)
}

fn rig_built(
    generation: Generation,
    services: &[Svc],
    more: impl FnOnce(&mut ConfigBuilder, &[ServiceId]),
) -> Rig {
    let mut b = Config::builder(generation);
    let lan = b.add_port("lan", PortRole::Uplink(Uplink::Lan)).unwrap();
    let wan = b.add_port("wan", PortRole::Uplink(Uplink::Wan)).unwrap();
    let mut ids = Vec::new();
    let mut instances = Vec::new();
    for svc in services {
        let scaling = Scaling {
            min_instances: 1,
            max_instances: u16::try_from(svc.instances.max(4)).unwrap(),
            ..Scaling::default()
        };
        let s = b
            .add_service(svc.name, svc.capacity_bps, scaling, svc.fail)
            .unwrap();
        ids.push(s);
        let mut list = Vec::new();
        for i in 0..svc.instances {
            let vf = b
                .add_port(&format!("{}-vf{i}", svc.name), PortRole::Vf)
                .unwrap();
            let state = if i >= svc.instances - svc.down {
                InstanceState::Down
            } else {
                InstanceState::Active
            };
            list.push(
                b.add_instance(
                    &format!("{}-{i}", svc.name),
                    s,
                    Attachment::Single(vf),
                    state,
                    1,
                )
                .unwrap(),
            );
        }
        instances.push(list);
    }
    let chain = b.add_chain("main", &ids).unwrap();
    b.add_policy(Policy {
        priority: 1,
        matches: Match {
            in_port: Some(lan),
            ..Match::default()
        },
        action: PolicyAction::Chain(chain),
    })
    .unwrap();
    more(&mut b, &ids);
    Rig {
        config: b.build().unwrap(),
        lan,
        wan,
        services: ids,
        instances,
    }
}

/// Counts the allocations of the current thread, to prove the packet path
/// allocates nothing.
#[allow(unsafe_code)]
pub(crate) mod alloc_count {
    extern crate std;
    use core::alloc::{GlobalAlloc, Layout};
    use core::cell::Cell;
    use std::alloc::System;

    std::thread_local! {
        static COUNT: Cell<u64> = const { Cell::new(0) };
    }

    struct Counting;

    // SAFETY: every call is forwarded unchanged to the system allocator;
    // counting touches only a const-initialised thread-local cell.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
            // SAFETY: the caller's contract is passed on as it is.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as above.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
            // SAFETY: as above.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// Allocations made by this thread so far.
    pub(crate) fn count() -> u64 {
        COUNT.with(Cell::get)
    }
}
