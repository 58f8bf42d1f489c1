//! dpu-fw is killed with SIGKILL and started again: the host agent's DPU
//! client notices, pushes the configuration again by itself, and traffic
//! flows through the chain as before. Then SIGTERM stops it cleanly.

use std::net::Ipv4Addr;
use std::time::Duration;

use chaingate_agent::dpu::{ClientOptions, DpuClient, DpuState};
use chaingate_hw_tests::dpu::DpuFw;
use chaingate_hw_tests::endpoint::Endpoint;
use chaingate_hw_tests::frames::{assert_same, udp};
use chaingate_hw_tests::reflector::Reflector;
use chaingate_hw_tests::require_root;
use chaingate_hw_tests::topology::Topology;
use tokio::sync::watch;

const GATEWAY: &str = "
generation: 5
ports:
  - { name: lan, role: lan }
  - { name: wan, role: wan }
  - { name: vf0, role: vf }
services:
  - { name: fw, capacity: 1Gbit }
instances:
  - { name: fw-0, service: fw, port: vf0 }
chains:
  - { name: guarded, services: [fw] }
policies:
  - { priority: 1, action: { chain: guarded } }
";

async fn wait_for(
    state: &mut watch::Receiver<DpuState>,
    what: &str,
    ok: impl FnMut(&DpuState) -> bool,
) -> DpuState {
    let got = tokio::time::timeout(Duration::from_secs(20), state.wait_for(ok))
        .await
        .map(|r| r.map(|s| s.clone()));
    match got {
        Ok(Ok(s)) => s,
        _ => panic!("{what}: not within 20 s; last state {:?}", *state.borrow()),
    }
}

fn flows(first: u8, n: u8) -> Vec<Vec<u8>> {
    (first..first + n)
        .map(|i| {
            udp(
                (Ipv4Addr::new(10, 1, 0, i), 4000),
                (Ipv4Addr::new(198, 51, 100, 1), 443),
                true,
                &[i],
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_dpu_is_configured_again_without_an_operator() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new().unwrap();
    let lan = topo.link("lan").unwrap();
    let wan = topo.link("wan").unwrap();
    let vf0 = topo.link("vf0").unwrap();
    let mut dpu = DpuFw::start(
        &[
            ("lan", &lan.inner, "lan"),
            ("wan", &wan.inner, "wan"),
            ("vf0", &vf0.inner, "vf"),
        ],
        "sessions: 1024\n",
    )
    .unwrap();
    let fw = Reflector::start(topo.netns(), &vf0.outer).unwrap();
    let mut lan_host = Endpoint::open(topo.netns(), &lan.outer).unwrap();
    let mut wan_host = Endpoint::open(topo.netns(), &wan.outer).unwrap();

    let client = DpuClient::start(
        &dpu.addr.to_string(),
        ClientOptions {
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(400),
            telemetry_period: Duration::from_millis(100),
            timeout: Duration::from_secs(2),
        },
    );
    let (_, config) = chaingate_proto::file::load(GATEWAY, 0).unwrap();
    client.set_desired(config);
    let mut state = client.state();
    let first = wait_for(&mut state, "first push", |s| {
        s.connected && s.generation == 5
    })
    .await;
    assert_eq!(first.pushes, 1);

    let before = flows(1, 8);
    lan_host.send(&before);
    assert_same(
        &wan_host.receive(before.len(), Duration::from_secs(10)),
        &before,
        "before the kill",
    );
    assert_eq!(fw.seen(), 8);

    dpu.kill();
    wait_for(&mut state, "noticing the loss", |s| !s.connected).await;
    lan_host.send(&flows(20, 1));
    assert!(
        wan_host.drain(Duration::from_millis(300)).is_empty(),
        "nothing forwards while dpu-fw is down"
    );

    dpu.restart().unwrap();
    let again = wait_for(&mut state, "the second push", |s| {
        s.connected && s.generation == 5 && s.pushes == 2
    })
    .await;
    assert_eq!(again.restarts, 1, "a new boot id was seen");
    assert_ne!(again.boot_id, first.boot_id);

    let after = flows(40, 8);
    lan_host.send(&after);
    assert_same(
        &wan_host.receive(after.len(), Duration::from_secs(10)),
        &after,
        "after the restart",
    );
    assert_eq!(fw.seen(), 16, "through the chain again");

    let status = dpu.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
}
