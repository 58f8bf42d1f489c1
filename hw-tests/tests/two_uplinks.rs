//! Two uplinks on two PFs of a BlueField are two eSwitches (DPDK 22.11 has
//! no multiport E-Switch, docs/bluefield.md). The rig's eSwitch models it:
//! with lan on PF 0 and wan on PF 1, a session's rules that would cross
//! from one to the other are refused ("cannot forward to port from a
//! different E-Switch"), counted, and every frame still passes its chain,
//! by the fast path. With multiport E-Switch the same sessions are
//! offloaded whole.

use std::net::Ipv4Addr;
use std::time::Duration;

use chaingate_hw_tests::dpu::DpuFw;
use chaingate_hw_tests::endpoint::Endpoint;
use chaingate_hw_tests::frames::{assert_same, udp};
use chaingate_hw_tests::reflector::Reflector;
use chaingate_hw_tests::require_root;
use chaingate_hw_tests::topology::Topology;
use chaingate_proto::dpu;

const GATEWAY: &str = "
ports:
  - { name: lan, role: lan }
  - { name: wan, role: wan }
  - { name: vf0, role: vf }
services:
  - { name: fw, capacity: 1Gbit }
instances:
  - { name: fw-0, service: fw, port: vf0 }
chains:
  - { name: web, services: [fw] }
policies:
  - { priority: 10, action: { chain: web } }
";

const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);

/// Ten flows through the chain, both ways, on a DPU whose wan port is on
/// PF 1; returns the offload counters.
async fn run(offload: &str) -> dpu::OffloadCounters {
    let mut topo = Topology::new().unwrap();
    let lan = topo.link("lan").unwrap();
    let wan = topo.link("wan").unwrap();
    let vf0 = topo.link("vf0").unwrap();
    // The role field carries the port's PF too: `role: wan, pf: 1`.
    let dpu = DpuFw::start(
        &[
            ("lan", &lan.inner, "lan"),
            ("wan", &wan.inner, "wan, pf: 1"),
            ("vf0", &vf0.inner, "vf"),
        ],
        &format!("sessions: 1024\noffload: {offload}\n"),
    )
    .unwrap();
    let fw = Reflector::start(topo.netns(), &vf0.outer).unwrap();
    let mut lan_host = Endpoint::open(topo.netns(), &lan.outer).unwrap();
    let mut wan_host = Endpoint::open(topo.netns(), &wan.outer).unwrap();
    let mut control = dpu.client().await.unwrap();
    let (_, config) = chaingate_proto::file::load(GATEWAY, 1).unwrap();
    assert!(
        control
            .apply_config(dpu::ApplyConfigRequest {
                config: Some(config),
            })
            .await
            .unwrap()
            .into_inner()
            .applied
    );
    let client = |i: u8| Ipv4Addr::new(10, 0, 0, i);
    for round in 0..3u8 {
        let out: Vec<Vec<u8>> = (1..=10)
            .map(|i| udp((client(i), 5000), (SERVER, 53), true, &[i, round]))
            .collect();
        lan_host.send(&out);
        assert_same(
            &wan_host.receive(out.len(), Duration::from_secs(10)),
            &out,
            "lan to wan",
        );
        let back: Vec<Vec<u8>> = (1..=10)
            .map(|i| udp((SERVER, 53), (client(i), 5000), false, &[i, round, 1]))
            .collect();
        wan_host.send(&back);
        assert_same(
            &lan_host.receive(back.len(), Duration::from_secs(10)),
            &back,
            "wan to lan",
        );
    }
    assert_eq!(fw.seen(), 60, "every frame passed the firewall");
    control
        .get_stats(dpu::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .offload
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_across_two_eswitches_stay_in_software_and_pass() {
    if !require_root() {
        return;
    }
    let apart = run("{ profile: mlx5 }").await;
    assert_eq!(apart.sessions, 0, "nothing crosses PFs in hardware");
    assert_eq!(apart.refused.get("unsupported"), Some(&10), "{apart:?}");
    assert!(
        apart
            .reasons
            .keys()
            .any(|r| r.contains("different E-Switch")),
        "{:?}",
        apart.reasons
    );
    let joined = run("{ profile: mlx5, multiport: true }").await;
    assert_eq!(joined.sessions, 10, "multiport E-Switch: one switch");
    assert!(joined.refused.values().all(|n| *n == 0), "{joined:?}");
}
