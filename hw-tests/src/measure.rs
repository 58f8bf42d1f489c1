//! What the rig benches measure of a path (`benches/rig.rs`,
//! `benches/two_hosts.rs`): the rate delivered at overload, the no-drop
//! rate, latency percentiles. `go` runs a traffic plan through the path.

use std::time::Duration;

use crate::flows::{Outcome, Plan};

/// Rates through a path, frames per second.
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    /// What the sender managed to offer, as fast as it could.
    pub offered_pps: f64,
    /// What arrived of it.
    pub pps: f64,
    /// The share lost.
    pub loss: f64,
    /// The highest rate found with at most 0.1% loss.
    pub no_drop_pps: f64,
}

/// The highest rate up to `max` at which at most 0.1% of frames are
/// lost: a binary search of half-second trials.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]
pub fn no_drop_rate(size: usize, max: f64, go: &dyn Fn(&Plan) -> Outcome) -> f64 {
    let (mut good, mut bad) = (0.0_f64, max.max(2_000.0));
    for trial in 0..8 {
        // The full rate first: the ceiling often carries it whole.
        let rate = if trial == 0 { bad } else { (good + bad) / 2.0 };
        let pps = rate as u32;
        let mut plan = Plan::udp(64, (pps / 2 / 64).max(4), pps);
        plan.size = size;
        plan.settle = Duration::from_millis(300);
        let out = go(&plan);
        let lost = out.forward.lost(&plan) as f64 / f64::from(plan.flows * plan.packets);
        if lost <= 0.001 {
            good = rate;
        } else {
            bad = rate;
        }
        if bad - good < bad * 0.03 {
            break;
        }
    }
    good
}

/// Frames of `size` bytes as fast as the sender goes (overload), then the
/// no-drop rate below that.
#[allow(clippy::cast_precision_loss)]
pub fn throughput(size: usize, go: &dyn Fn(&Plan) -> Outcome) -> Throughput {
    let packets = if size < 200 { 3_000 } else { 1_000 };
    let mut plan = Plan::udp(64, packets, 0);
    plan.size = size;
    plan.settle = Duration::from_secs(1);
    let out = go(&plan);
    let secs = out.sending.as_secs_f64().max(1e-6);
    let got = out.forward.frames() as f64;
    let offered_pps = out.sent as f64 / secs;
    Throughput {
        offered_pps,
        pps: got / secs,
        loss: 1.0 - got / (out.sent.max(1) as f64),
        no_drop_pps: no_drop_rate(size, offered_pps, go),
    }
}

/// One-way latency percentiles.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

/// Latency of 4,000 small frames at 2,000 a second.
#[must_use]
pub fn latency(go: &dyn Fn(&Plan) -> Outcome) -> Latency {
    let plan = Plan::udp(16, 250, 2_000);
    let out = go(&plan);
    let p = |q| out.forward.latency.percentile(q).unwrap_or_default();
    Latency {
        p50: p(50.0),
        p90: p(90.0),
        p99: p(99.0),
    }
}
