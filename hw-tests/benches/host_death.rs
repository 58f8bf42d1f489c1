//! How long a dead host's instances stay in another DPU's configuration:
//! from the moment host B's agent and DPU are killed to the moment host
//! A's DPU runs without B's instance (new sessions avoid it from then on),
//! over several runs, against the lease TTL that bounds it (docs/cluster.md).
//! Needs root and etcd; `ci/bench host_death` runs it.
//!
//! `cargo bench -p chaingate-hw-tests --bench host_death`

use std::time::{Duration, Instant};

use chaingate_hw_tests::agent::WebChain;
use chaingate_hw_tests::etcd::require_etcd;
use chaingate_hw_tests::require_root;
use chaingate_hw_tests::two_dpus::Dpu;
use chaingate_hw_tests::two_hosts::TwoHosts;

const RUNS: usize = 5;
const UP: Duration = Duration::from_secs(60);

/// The web chain with per-host minimums: `(firewall, ids, nat)`.
fn web(min: (u16, u16, u16)) -> String {
    WebChain::with_minimums(min).gateway()
}

fn once(ttl: Duration) -> Duration {
    let mut rig = TwoHosts::start([3, 1], ttl).expect("the rig");
    rig.host(Dpu::A)
        .agent
        .apply_and_wait(&web((1, 1, 1)), &["firewall-0", "ids-0", "nat-0"], UP);
    rig.host(Dpu::B)
        .agent
        .apply_and_wait(&web((1, 0, 0)), &["firewall-1"], UP);
    rig.wait_dpu(Dpu::A, &["firewall-0", "firewall-1", "ids-0", "nat-0"], UP);
    let b = rig.host_mut(Dpu::B);
    let dead = Instant::now();
    b.agent.kill();
    b.dpu.kill();
    rig.wait_dpu(Dpu::A, &["firewall-0", "ids-0", "nat-0"], UP);
    dead.elapsed()
}

fn main() {
    if !require_root() || !require_etcd() {
        return;
    }
    for ttl in [Duration::from_secs(2), Duration::from_secs(5)] {
        let mut runs: Vec<Duration> = (0..RUNS).map(|_| once(ttl)).collect();
        runs.sort();
        let median = runs[RUNS / 2];
        println!(
            "host death to new sessions avoiding it, lease TTL {ttl:?}: median {median:.2?} ({:.2}x the TTL), \
             runs {runs:.2?}",
            median.as_secs_f64() / ttl.as_secs_f64()
        );
    }
}
