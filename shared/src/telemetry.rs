//! What the fast path reports to the host agent.

use crate::{InstanceId, Nanos, ServiceId};

/// A service ran short of bandwidth: every active instance is over its
/// scale-out watermark (or a new session found none with headroom).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ScaleRequest {
    /// The service.
    pub service: ServiceId,
    /// Load of its active instances, bits per second.
    pub load_bps: u64,
    /// Capacity of its active instances, bits per second.
    pub capacity_bps: u64,
    /// Active instances.
    pub instances: u16,
    /// When it was raised.
    pub at: Nanos,
}

/// The measured load of one instance.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct InstanceLoad {
    /// The instance.
    pub instance: InstanceId,
    /// Smoothed bits per second.
    pub bps: f64,
    /// Smoothed packets per second.
    pub pps: f64,
    /// Its share of capacity (1.0 is full).
    pub utilisation: f64,
}
