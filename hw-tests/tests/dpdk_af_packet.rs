//! dpu-fw on DPDK ports: net_af_packet on the rig's veths, with the
//! rte_flow backend. No device here installs rules, so every rule is
//! refused (ENOSYS), the refusals are counted, and the data path forwards
//! the chain in software: packets arrive where their session says, none
//! lost.

#![cfg(feature = "dpdk")]

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
  - { name: vf1, role: vf }
services:
  - { name: fw, capacity: 1Gbit }
instances:
  - { name: fw-0, service: fw, port: vf0 }
  - { name: fw-1, service: fw, port: vf1 }
chains:
  - { name: guarded, services: [fw] }
policies:
  - { priority: 1, action: { chain: guarded } }
";

/// Removes the run-time files dpu-fw's EAL leaves, when the test ends
/// (dpu-fw is killed first: it is declared later).
struct RuntimeFiles(std::path::PathBuf);

impl Drop for RuntimeFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_on_dpdk_ports_forwards_in_software_when_rules_are_refused() {
    if !require_root() {
        return;
    }
    let prefix = format!("cgdpdk{}", std::process::id());
    let _files = RuntimeFiles(dpu_fw::dpdk::Eal::runtime_dir(&prefix));
    let mut topo = Topology::new().unwrap();
    let links: Vec<_> = ["lan", "wan", "vf0", "vf1"]
        .iter()
        .map(|n| topo.link(n).unwrap())
        .collect();
    let mut eal = format!(
        "dpdk:\n  eal: [\"--no-huge\", \"--no-pci\", \"--no-shconf\", \"-m\", \"256\", \"-l\", \"0\", \
         \"--log-level=lib.eal:error\", \"--no-telemetry\", \"--file-prefix={prefix}\""
    );
    for (i, l) in links.iter().enumerate() {
        eal.push_str(&format!(", \"--vdev=net_af_packet{i},iface={}\"", l.inner));
    }
    eal.push_str("]\n  mbufs: 8191\n  descriptors: 512\n");
    let ports: Vec<(&str, String, &str)> = ["lan", "wan", "vf0", "vf1"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let role = if i < 2 { *name } else { "vf" };
            (*name, format!("dpdk:net_af_packet{i}"), role)
        })
        .collect();
    let dpu = DpuFw::start_with_io(
        &ports,
        &format!("sessions: 1024\noffload: {{ backend: rte_flow }}\n{eal}"),
    )
    .unwrap();
    let fw0 = Reflector::start(topo.netns(), &links[2].outer).unwrap();
    let fw1 = Reflector::start(topo.netns(), &links[3].outer).unwrap();
    let mut lan_host = Endpoint::open(topo.netns(), &links[0].outer).unwrap();
    let mut wan_host = Endpoint::open(topo.netns(), &links[1].outer).unwrap();

    let mut control = dpu.client().await.unwrap();
    let (_, config) = chaingate_proto::file::load(GATEWAY, 1).unwrap();
    control
        .apply_config(dpu::ApplyConfigRequest {
            config: Some(config),
        })
        .await
        .unwrap();

    let client = |i: u8| Ipv4Addr::new(10, 9, 0, i);
    let server = Ipv4Addr::new(203, 0, 113, 7);
    let out: Vec<Vec<u8>> = (1..=16)
        .flat_map(|i| (0..2).map(move |n| udp((client(i), 3000), (server, 443), true, &[i, n])))
        .collect();
    lan_host.send(&out);
    assert_same(
        &wan_host.receive(out.len(), Duration::from_secs(10)),
        &out,
        "lan to wan",
    );
    let back: Vec<Vec<u8>> = (1..=16)
        .map(|i| udp((server, 443), (client(i), 3000), false, &[i]))
        .collect();
    wan_host.send(&back);
    assert_same(
        &lan_host.receive(back.len(), Duration::from_secs(10)),
        &back,
        "wan to lan",
    );
    assert_eq!(
        fw0.seen() + fw1.seen(),
        48,
        "every frame through the firewall"
    );
    assert!(
        fw0.seen() > 0 && fw1.seen() > 0,
        "sessions spread over both"
    );
    assert!(
        fw0.tags().iter().all(Option::is_some),
        "segment tags survive the DPDK receive path"
    );

    let stats = control
        .get_stats(dpu::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let offload = stats.offload.unwrap();
    assert_eq!(offload.backend, "rte_flow");
    assert_eq!(offload.sessions, 0, "nothing in hardware");
    assert_eq!(
        offload.refused["nosys"], 16,
        "each session's rules refused once"
    );
    let fast = stats.fast_path.unwrap();
    assert_eq!(
        fast.forwarded,
        48 * 2,
        "every frame by the fast path, into the chain and out: {fast:?}"
    );
    assert!(fast.dropped.values().all(|d| *d == 0), "{:?}", fast.dropped);
    let sessions = control
        .list_sessions(dpu::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sessions.total, 16);
    assert!(sessions.sessions.iter().all(|s| !s.offloaded));
}
