//! Bandwidth meters: how loaded each instance is, and when a service is
//! short of bandwidth.
//!
//! Each instance accumulates bytes and packets between ticks, from two
//! sources: the hardware counters of its rules (deltas fed by the offload
//! layer) and the packets the fast path forwards to it in software. At
//! every tick the rates over the interval are folded into an exponentially
//! weighted moving average with time constant `tau`; the weight of a new
//! sample is `dt / (tau + dt)`, a first-order form of `1 - e^(-dt/tau)` that
//! needs no floating-point library and stays right for irregular ticks.
//!
//! An instance has headroom while its smoothed bit rate is below its
//! service's scale-out watermark. A service is short of bandwidth when
//! every active instance is over it (checked at each tick) or when a new
//! session found none with headroom; it then raises a [`ScaleRequest`], at
//! most once per cooldown, into a bounded queue.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use chaingate_shared::config::{Config, InstanceState};
use chaingate_shared::telemetry::{InstanceLoad, ScaleRequest};
use chaingate_shared::{InstanceId, Nanos, ServiceId};

/// Scale requests kept until the host agent reads them.
pub const SCALE_QUEUE: usize = 64;

#[derive(Clone, Debug, Default)]
struct InstanceMeter {
    service: u16,
    active: bool,
    pending_bytes: u64,
    pending_packets: u64,
    bps: f64,
    pps: f64,
    capacity_bps: u64,
    high_bps: u64,
}

#[derive(Clone, Debug, Default)]
struct ServiceMeter {
    cooldown: Nanos,
    last_request: Option<Nanos>,
}

/// Per-instance load and per-service scale requests.
#[derive(Clone, Debug)]
pub struct Meters {
    tau: Nanos,
    last_tick: Option<Nanos>,
    instances: Vec<InstanceMeter>,
    services: Vec<ServiceMeter>,
    requests: VecDeque<ScaleRequest>,
    requests_dropped: u64,
}

impl Meters {
    /// Meters for a configuration's instances, smoothing over `tau`.
    #[must_use]
    pub fn new(config: &Config, tau: Nanos) -> Self {
        let mut meters = Self {
            tau,
            last_tick: None,
            instances: Vec::new(),
            services: Vec::new(),
            requests: VecDeque::with_capacity(SCALE_QUEUE),
            requests_dropped: 0,
        };
        meters.reconfigure(config, |_| None);
        meters
    }

    /// Takes a new configuration. `previous` maps a new instance to its
    /// id in the old configuration, whose load carries over.
    pub fn reconfigure(
        &mut self,
        config: &Config,
        previous: impl Fn(InstanceId) -> Option<InstanceId>,
    ) {
        let old = core::mem::take(&mut self.instances);
        self.instances = config
            .instances()
            .iter()
            .enumerate()
            .map(|(n, inst)| {
                let id = InstanceId::from_index(u16::try_from(n).unwrap_or(u16::MAX));
                let carried = previous(id)
                    .and_then(|p| old.get(p.index()))
                    .cloned()
                    .unwrap_or_default();
                let service = config.service(inst.service());
                let capacity_bps = service.map_or(0, |s| s.capacity_bps());
                InstanceMeter {
                    service: u16::try_from(inst.service().index()).unwrap_or(u16::MAX),
                    active: inst.state() == InstanceState::Active,
                    capacity_bps,
                    high_bps: service.map_or(0, |s| s.scaling().scale_out_at.of(capacity_bps)),
                    ..carried
                }
            })
            .collect();
        let old_services = core::mem::take(&mut self.services);
        self.services = config
            .services()
            .iter()
            .enumerate()
            .map(|(n, s)| ServiceMeter {
                cooldown: Nanos::from_millis(u64::from(s.scaling().cooldown_ms)),
                last_request: old_services.get(n).and_then(|o| o.last_request),
            })
            .collect();
    }

    /// Marks an instance active or not (only active ones count for a
    /// service's shortage).
    pub fn set_active(&mut self, instance: InstanceId, active: bool) {
        if let Some(m) = self.instances.get_mut(instance.index()) {
            m.active = active;
        }
    }

    /// Counts a packet forwarded to `instance` in software.
    #[inline]
    pub fn record(&mut self, instance: InstanceId, bytes: usize) {
        if let Some(m) = self.instances.get_mut(instance.index()) {
            m.pending_bytes += bytes as u64;
            m.pending_packets += 1;
        }
    }

    /// Adds counter deltas (hardware rules) for `instance`.
    pub fn add_counts(&mut self, instance: InstanceId, bytes: u64, packets: u64) {
        if let Some(m) = self.instances.get_mut(instance.index()) {
            m.pending_bytes = m.pending_bytes.saturating_add(bytes);
            m.pending_packets = m.pending_packets.saturating_add(packets);
        }
    }

    /// Folds the counts since the last tick into the averages, then raises
    /// a scale request for every service whose active instances are all
    /// over their watermark.
    pub fn tick(&mut self, now: Nanos) {
        let Some(last) = self.last_tick.replace(now) else {
            for m in &mut self.instances {
                m.pending_bytes = 0;
                m.pending_packets = 0;
            }
            return;
        };
        let dt = now.since(last);
        if dt.0 == 0 {
            return;
        }
        let secs = dt.as_secs_f64();
        let alpha = secs / (self.tau.as_secs_f64() + secs);
        for m in &mut self.instances {
            #[allow(clippy::cast_precision_loss)] // counts below 2^53 per tick
            let (bps, pps) = (
                m.pending_bytes as f64 * 8.0 / secs,
                m.pending_packets as f64 / secs,
            );
            m.bps += alpha * (bps - m.bps);
            m.pps += alpha * (pps - m.pps);
            m.pending_bytes = 0;
            m.pending_packets = 0;
        }
        for service in 0..self.services.len() {
            let id = ServiceId::from_index(u16::try_from(service).unwrap_or(u16::MAX));
            let short = {
                let mut active = self.active_of(id).peekable();
                active.peek().is_some() && active.all(|m| !m.has_headroom())
            };
            if short {
                self.request_scale(id, now);
            }
        }
    }

    fn active_of(&self, service: ServiceId) -> impl Iterator<Item = &InstanceMeter> {
        self.instances
            .iter()
            .filter(move |m| m.active && usize::from(m.service) == service.index())
    }

    /// True while the instance is below its scale-out watermark.
    #[must_use]
    pub fn has_headroom(&self, instance: InstanceId) -> bool {
        self.instances
            .get(instance.index())
            .is_some_and(InstanceMeter::has_headroom)
    }

    /// The instance's load as a share of its capacity.
    #[must_use]
    pub fn utilisation(&self, instance: InstanceId) -> f64 {
        self.instances
            .get(instance.index())
            .map_or(f64::INFINITY, InstanceMeter::utilisation)
    }

    /// The measured load of an instance.
    #[must_use]
    pub fn load(&self, instance: InstanceId) -> Option<InstanceLoad> {
        self.instances.get(instance.index()).map(|m| InstanceLoad {
            instance,
            bps: m.bps,
            pps: m.pps,
            utilisation: m.utilisation(),
        })
    }

    /// Raises a scale request for `service` unless one was raised within
    /// its cooldown. Returns whether it was raised.
    pub fn request_scale(&mut self, service: ServiceId, now: Nanos) -> bool {
        let (load, capacity, count) =
            self.active_of(service)
                .fold((0.0, 0u64, 0u16), |(l, c, n), m| {
                    (
                        l + m.bps,
                        c.saturating_add(m.capacity_bps),
                        n.saturating_add(1),
                    )
                });
        let Some(state) = self.services.get_mut(service.index()) else {
            return false;
        };
        if state
            .last_request
            .is_some_and(|t| now.since(t) < state.cooldown)
        {
            return false;
        }
        state.last_request = Some(now);
        if self.requests.len() >= SCALE_QUEUE {
            self.requests.pop_front();
            self.requests_dropped += 1;
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        // rates are finite and positive
        self.requests.push_back(ScaleRequest {
            service,
            load_bps: load as u64,
            capacity_bps: capacity,
            instances: count,
            at: now,
        });
        true
    }

    /// The oldest scale request not yet taken.
    pub fn pop_request(&mut self) -> Option<ScaleRequest> {
        self.requests.pop_front()
    }

    /// Requests pushed out of the full queue.
    #[must_use]
    pub const fn requests_dropped(&self) -> u64 {
        self.requests_dropped
    }
}

impl InstanceMeter {
    fn has_headroom(&self) -> bool {
        #[allow(clippy::cast_precision_loss)]
        let high = self.high_bps as f64;
        self.bps < high
    }

    fn utilisation(&self) -> f64 {
        if self.capacity_bps == 0 {
            return f64::INFINITY;
        }
        #[allow(clippy::cast_precision_loss)]
        let capacity = self.capacity_bps as f64;
        self.bps / capacity
    }
}

#[cfg(test)]
mod tests;
