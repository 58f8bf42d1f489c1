//! The web chain across two hosts (run as root; `ci/bench two_hosts`):
//! `cargo bench -p chaingate-hw-tests --bench two_hosts`.
//!
//! Throughput and latency from the lan host to the wan host through
//! firewall -> ids -> nat on the two-DPU rig (`hw-tests/src/two_dpus.rs`,
//! the lan and wan hosts on DPU A's uplinks), in two set-ups measured in
//! the same run:
//!
//! - `one host`: all three instances behind DPU A, the baseline of the
//!   ratios (B is up, configured with them as remote, and idle);
//! - `two hosts`: the same with ids-0 behind DPU B, so every frame goes
//!   over the underlay (VXLAN on a veth) to B and back, both ways.
//!
//! Only the underlay differs: the same rig, processes, configuration and
//! dpu-fw path (the default: the software eSwitch's rules, mlx5 profile;
//! the rig bench does not measure the fast path alone either). The
//! underlay's MTU is 9000, on both dpu-fws and on the veth, so that
//! 1500-byte frames cross whole.
//!
//! The method is the rig bench's (`benches/rig.rs`), kept identical so that
//! the rows compare: 64 UDP flows offered as fast as the lan host's socket
//! takes them, 64- and 1500-byte frames; Mpps and Gb/s received at the wan
//! host over the sending time and loss of what was sent (the overload);
//! the no-drop rate, the highest offered rate with at most 0.1% loss (a
//! binary search of half-second trials); one-way latency, 16 flows at
//! 2,000 frames/s, 128-byte frames. Then what the DPUs counted: frames
//! each way on the underlay, those one end sent and the other did not
//! receive, and every drop. These machines are shared: compare the
//! ratios, not the absolute figures, across runs.

use std::collections::BTreeMap;

use chaingate_hw_tests::agent::NAT_ADDRESS;
use chaingate_hw_tests::flows::Plan;
use chaingate_hw_tests::measure::{Measured, measure, print_tables};
use chaingate_hw_tests::two_dpus::{Cluster, Dpu, TwoDpus, drops, instance};
use chaingate_proto::dpu::Stats;

/// The underlay MTU: 1500-byte frames and 50 bytes of outer headers fit.
const UNDERLAY_MTU: u16 = 9000;

/// The rig bench's web chain (no stamps), ids-0 behind `ids_on`.
fn web_chain(ids_on: Dpu) -> Cluster {
    let nat_to = NAT_ADDRESS.to_string();
    Cluster {
        instances: vec![
            instance(
                "firewall-0",
                Dpu::A,
                &["firewall", "--rule", "deny tcp port 23"],
            ),
            instance(
                "ids-0",
                ids_on,
                &["ids", "--signature", "EVIL", "--mode", "drop"],
            ),
            instance(
                "nat-0",
                Dpu::A,
                &[
                    "nat",
                    "--inside",
                    "10.0.0.0/8",
                    "--to",
                    &nat_to,
                    "--ports",
                    "20000-59999",
                ],
            ),
        ],
        chain: vec!["firewall".into(), "ids".into(), "nat".into()],
        policies: vec![
            "{ priority: 10, match: { src: 10.0.0.0/8 }, action: { chain: web } }".into(),
        ],
        mtu: UNDERLAY_MTU,
        dpu_extra: String::new(),
    }
}

/// What the DPUs counted over a set-up's whole measurement (overloads
/// included).
#[derive(Debug, Default)]
struct Counted {
    /// Underlay frames A sent, and B received.
    a_to_b: (u64, u64),
    /// Underlay frames B sent, and A received.
    b_to_a: (u64, u64),
    /// Every drop either DPU counted, `A ...` / `B ...`.
    drops: BTreeMap<String, u64>,
}

struct Setup {
    path: Measured,
    counted: Counted,
}

/// A port's (rx, tx) frames.
fn port(stats: &Stats, name: &str) -> (u64, u64) {
    stats
        .ports
        .iter()
        .find(|p| p.name == name)
        .map_or((0, 0), |p| (p.rx_packets, p.tx_packets))
}

fn counted(rig: &TwoDpus, before: &[Stats; 2]) -> Counted {
    let after = Dpu::BOTH.map(|d| rig.stats(d));
    let delta = |i: usize, f: &dyn Fn(&Stats) -> u64| f(&after[i]) - f(&before[i]);
    let ul_rx = |i| delta(i, &|s| port(s, "ul").0);
    let ul_tx = |i| delta(i, &|s| port(s, "ul").1);
    let mut all = BTreeMap::new();
    for (i, d) in Dpu::BOTH.into_iter().enumerate() {
        let was = drops(&before[i]);
        for (what, n) in drops(&after[i]) {
            let n = n - was.get(&what).copied().unwrap_or(0);
            if n > 0 {
                all.insert(format!("{d:?} {what}"), n);
            }
        }
    }
    Counted {
        a_to_b: (ul_tx(0), ul_rx(1)),
        b_to_a: (ul_tx(1), ul_rx(0)),
        drops: all,
    }
}

fn measure_web_chain(name: &'static str, ids_on: Dpu) -> Setup {
    let rig = TwoDpus::start(web_chain(ids_on)).expect("the two-DPU rig");
    let go = |plan: &Plan| rig.traffic(plan);
    let before = Dpu::BOTH.map(|d| rig.stats(d));
    let path = measure(name, &go);
    Setup {
        counted: counted(&rig, &before),
        path,
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the two-hosts bench needs root (network namespaces, raw sockets)");
        std::process::exit(2);
    }
    let setups = [
        measure_web_chain("one host", Dpu::A),
        measure_web_chain("two hosts", Dpu::B),
    ];
    println!(
        "\ntwo-hosts bench: lan -> wan through firewall -> ids -> nat on the two-DPU rig \
         (ratios against the chain on one host of this run)"
    );
    print_tables(&setups.iter().map(|s| &s.path).collect::<Vec<_>>());
    println!(
        "\nunderlay frames over each whole measurement (sent by one DPU / received by the other), \
         and the drops the DPUs counted"
    );
    for s in &setups {
        let c = &s.counted;
        println!(
            "{:<10} A->B {}/{} ({} not received), B->A {}/{} ({} not received); drops {:?}",
            s.path.name,
            c.a_to_b.0,
            c.a_to_b.1,
            c.a_to_b.0.saturating_sub(c.a_to_b.1),
            c.b_to_a.0,
            c.b_to_a.1,
            c.b_to_a.0.saturating_sub(c.b_to_a.1),
            c.drops,
        );
    }
}
