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

/// One path measured as the rig benches do: the rate at overload and the
/// no-drop rate at 64 and 1500 bytes, and latency.
#[derive(Clone, Debug)]
pub struct Measured {
    /// The set-up's name in the tables.
    pub name: &'static str,
    /// Frame size, and the rates at it.
    pub by_size: Vec<(usize, Throughput)>,
    /// Latency percentiles.
    pub latency: Latency,
}

/// Measures the path `go` runs plans through, after a short warm-up run
/// (it opens the sessions and warms caches and rings).
pub fn measure(name: &'static str, go: &dyn Fn(&Plan) -> Outcome) -> Measured {
    let _ = go(&Plan::udp(4, 100, 0));
    let by_size = [64, 1500].map(|s| (s, throughput(s, go))).to_vec();
    let latency = latency(go);
    eprintln!("measured: {name}");
    Measured {
        name,
        by_size,
        latency,
    }
}

/// Prints the rate and latency tables of `setups`, each figure beside its
/// ratio to the first set-up's (the baseline of the run).
#[allow(clippy::cast_precision_loss)]
pub fn print_tables(setups: &[&Measured]) {
    let Some(base) = setups.first() else { return };
    let w = setups
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0)
        .max(10);
    println!(
        "{:<w$} {:>6} {:>10} {:>9} {:>8} {:>7} {:>7} {:>13} {:>7}",
        "set-up", "frame", "offered", "Mpps", "Gb/s", "loss", "ratio", "no-drop Mpps", "ratio"
    );
    for s in setups {
        for ((size, t), (_, b)) in s.by_size.iter().zip(&base.by_size) {
            println!(
                "{:<w$} {:>5}B {:>8.3}Mp {:>9.3} {:>8.3} {:>6.1}% {:>6.2}x {:>13.3} {:>6.2}x",
                s.name,
                size,
                t.offered_pps / 1e6,
                t.pps / 1e6,
                t.pps * (*size as f64) * 8.0 / 1e9,
                t.loss * 100.0,
                t.pps / b.pps.max(1.0),
                t.no_drop_pps / 1e6,
                t.no_drop_pps / b.no_drop_pps.max(1.0),
            );
        }
    }
    println!(
        "\n{:<w$} {:>10} {:>10} {:>10} {:>12}",
        "latency", "p50", "p90", "p99", "p50 ratio"
    );
    for s in setups {
        println!(
            "{:<w$} {:>10.1?} {:>10.1?} {:>10.1?} {:>11.2}x",
            s.name,
            s.latency.p50,
            s.latency.p90,
            s.latency.p99,
            s.latency.p50.as_secs_f64() / base.latency.p50.as_secs_f64().max(1e-9),
        );
    }
}
