//! The rig bench (run as root; `ci/bench` runs it):
//! `cargo bench -p chaingate-hw-tests --bench rig`.
//!
//! Throughput and latency from the lan host to the wan host on the
//! simulated rig, for three set-ups measured in the same run:
//!
//! - `veth ceiling`: the same veths with no gateway, the kernel passing
//!   frames straight from the lan link to the wan link (tc mirred): what
//!   the rig itself can carry, the baseline of the ratios;
//! - `dpu-fw bypass`: dpu-fw between them, every connection bypassing
//!   the services (its fast path and software eSwitch only);
//! - `3-hop chain`: firewall -> ids -> nat, `chaingate-service` processes
//!   launched by the agent, every connection through all three.
//!
//! Throughput: 64 UDP flows offered as fast as the lan host's socket
//! takes them, 64- and 1500-byte frames (Ethernet, without FCS); Mpps and
//! Gb/s received at the wan host over the sending time, loss of what was
//! sent; and the no-drop rate, the highest offered rate with at most 0.1%
//! loss (a binary search of half-second trials). Latency: one way, 16
//! flows at 2,000 frames/s, 128-byte frames. These machines are shared: compare the ratios, not the absolute
//! figures, across runs.

use chaingate_hw_tests::agent::{AgentRig, WebChain};
use chaingate_hw_tests::flows;
use chaingate_hw_tests::measure::{Measured, measure, print_tables};
use chaingate_hw_tests::rig::Rig as _;
use chaingate_hw_tests::topology::Topology;

fn ceiling() -> Measured {
    let mut topo = Topology::new().expect("netns");
    let lan = topo.link("lan").expect("veth");
    let wan = topo.link("wan").expect("veth");
    topo.cross_connect(&lan.inner, &wan.inner)
        .expect("tc mirred");
    let netns = topo.netns().to_owned();
    measure("veth ceiling", &|plan| {
        flows::run(plan, (&netns, &lan.outer), (&netns, &wan.outer)).expect("traffic")
    })
}

fn bypass() -> Measured {
    let rig = AgentRig::start(0).expect("rig");
    rig.apply_and_wait(
        "ports:\n  - { name: lan, role: lan }\n  - { name: wan, role: wan }\n\
         services: []\nchains: []\npolicies: []\ndefault_action: bypass\n",
        &[],
    );
    measure("dpu-fw bypass", &|plan| rig.traffic(plan))
}

fn chain() -> Measured {
    let rig = AgentRig::start(3).expect("rig");
    let chain = WebChain {
        firewall_capacity: "10Gbit".into(),
        stamps: false,
        ..WebChain::default()
    };
    rig.apply_and_wait(&chain.gateway(), &["firewall-0", "ids-0", "nat-0"]);
    measure("3-hop chain", &|plan| rig.traffic(plan))
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the rig bench needs root (network namespaces, raw sockets)");
        std::process::exit(2);
    }
    let setups = [ceiling(), bypass(), chain()];
    println!(
        "\nrig bench: lan -> wan on the simulated rig (ratios against the veth ceiling of this run)"
    );
    print_tables(&setups.iter().collect::<Vec<_>>());
}
