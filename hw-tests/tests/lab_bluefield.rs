//! LabRig, on a real BlueField (opt-in: `CHAINGATE_LABRIG=labrig.yaml`; see
//! `chaingate_hw_tests::labrig`). With the rte_flow backend, the first
//! packet of a connection goes through the DPU's fast path and installs
//! transfer rules; every later packet is switched by the NIC: the wan side
//! receives them all while the fast path's forwarding counter stays at the
//! first packet's hops.

use std::net::Ipv4Addr;
use std::time::Duration;

use chaingate_hw_tests::endpoint::Endpoint;
use chaingate_hw_tests::frames::udp;
use chaingate_hw_tests::labrig::LabRig;
use chaingate_hw_tests::reflector::Reflector;
use chaingate_proto::dpu;

/// The host's own namespace, for endpoints on real interfaces.
const HOST: &str = "/proc/1/ns/net";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn established_packets_bypass_the_arm_cores() {
    let Some(lab) = LabRig::from_env() else {
        eprintln!("skipped: set CHAINGATE_LABRIG to a LabRig description to run on a BlueField");
        return;
    };
    let reflectors: Vec<Reflector> = lab
        .reflect
        .iter()
        .map(|dev| Reflector::start(HOST, dev).unwrap())
        .collect();
    let mut lan = Endpoint::open(HOST, &lab.lan).unwrap();
    let mut wan = Endpoint::open(HOST, &lab.wan).unwrap();
    let mut control = dpu_fw::ctl::connect(&lab.dpu).await.unwrap();
    let current = control
        .get_stats(dpu::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let Some(gateway) = &lab.gateway else {
        eprintln!("skipped: the LabRig file has no `gateway` for this test");
        return;
    };
    let (_, config) = chaingate_proto::file::load(gateway, current.generation + 1).unwrap();
    control
        .apply_config(dpu::ApplyConfigRequest {
            config: Some(config),
        })
        .await
        .unwrap();
    let before = control
        .get_stats(dpu::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let offload = before.offload.clone().unwrap();
    assert_eq!(
        offload.backend, "rte_flow",
        "dpu-fw must run with the rte_flow backend"
    );

    // One flow: the first frame opens it, then wait for its rules.
    let frame = udp(
        (Ipv4Addr::new(10, 200, 0, 1), 40_000),
        (Ipv4Addr::new(198, 18, 0, 1), 9),
        true,
        &[0xEE; 64],
    );
    lan.send(std::slice::from_ref(&frame));
    assert_eq!(wan.receive(1, Duration::from_secs(5)).len(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let opened = control
        .get_stats(dpu::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        opened.offload.unwrap().sessions >= 1,
        "the session's rules are installed"
    );
    let fast_before = opened.fast_path.unwrap().forwarded;

    for chunk in 0..lab.frames / 100 {
        lan.send(&vec![frame.clone(); 100]);
        let got = wan.receive(100, Duration::from_secs(5)).len();
        assert_eq!(got, 100, "chunk {chunk}");
    }
    let after = control
        .get_stats(dpu::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let fast_after = after.fast_path.unwrap().forwarded;
    assert_eq!(
        fast_after, fast_before,
        "no established packet reached the Arm cores"
    );
    assert!(reflectors.iter().map(Reflector::seen).sum::<u64>() >= u64::from(lab.frames));
}
