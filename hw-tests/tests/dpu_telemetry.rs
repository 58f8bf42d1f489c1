//! Telemetry from a running dpu-fw: an instance pushed past its capacity
//! shows its load and its sessions, and the DPU asks for another instance
//! of the service (a scale request) on the telemetry stream.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use chaingate_hw_tests::dpu::DpuFw;
use chaingate_hw_tests::endpoint::Endpoint;
use chaingate_hw_tests::frames::udp;
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
  - { name: fw, capacity: 100kbit, scaling: { max: 2 } }
instances:
  - { name: fw-0, service: fw, port: vf0 }
chains:
  - { name: guarded, services: [fw] }
policies:
  - { priority: 1, action: { chain: guarded } }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_instance_raises_a_scale_request() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new().unwrap();
    let lan = topo.link("lan").unwrap();
    let wan = topo.link("wan").unwrap();
    let vf0 = topo.link("vf0").unwrap();
    let dpu = DpuFw::start(
        &[
            ("lan", &lan.inner, "lan"),
            ("wan", &wan.inner, "wan"),
            ("vf0", &vf0.inner, "vf"),
        ],
        "sessions: 1024\n",
    )
    .unwrap();
    let _fw = Reflector::start(topo.netns(), &vf0.outer).unwrap();
    let mut lan_host = Endpoint::open(topo.netns(), &lan.outer).unwrap();
    let _wan_host = Endpoint::open(topo.netns(), &wan.outer).unwrap();
    let mut control = dpu.client().await.unwrap();
    let (_, config) = chaingate_proto::file::load(GATEWAY, 1).unwrap();
    control
        .apply_config(dpu::ApplyConfigRequest {
            config: Some(config),
        })
        .await
        .unwrap();
    let mut stream = control
        .watch_telemetry(dpu::WatchTelemetryRequest { period_ms: 50 })
        .await
        .unwrap()
        .into_inner();

    // About 1.6 Mbit/s through an instance made for 100 kbit/s, from five
    // connections, for at most 5 s.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_sending = std::sync::Arc::clone(&stop);
    let sender = std::thread::spawn(move || {
        let payload = [0x5Au8; 950];
        let frames: Vec<Vec<u8>> = (1..=5)
            .map(|i| {
                udp(
                    (Ipv4Addr::new(10, 3, 0, i), 9000),
                    (Ipv4Addr::new(203, 0, 113, 5), 9000),
                    true,
                    &payload,
                )
            })
            .collect();
        let end = Instant::now() + Duration::from_secs(5);
        let mut n = 0;
        while Instant::now() < end && !stop_sending.load(std::sync::atomic::Ordering::Relaxed) {
            lan_host.send(&frames[n % 5..=n % 5]);
            n += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
    });

    let mut request = None;
    let mut busiest = dpu::InstanceLoad::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // The request and the load that caused it may come in different
    // messages (a snapshot is taken each period; requests ride on the
    // next message): read until both are seen.
    while request.is_none() || busiest.utilisation <= 0.8 {
        let t = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("a scale request and the load within 10 s")
            .unwrap()
            .expect("the stream stays open");
        if let Some(i) = t.instances.first()
            && i.utilisation > busiest.utilisation
        {
            busiest = i.clone();
        }
        if request.is_none() {
            request = t.scale_requests.first().cloned();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let request = request.unwrap();
    assert_eq!(request.service, "fw");
    assert_eq!((request.instances, request.capacity_bps), (1, 100_000));
    assert!(request.load_bps > 80_000, "{request:?}");
    assert_eq!(busiest.instance, "fw-0");
    assert!(busiest.utilisation > 0.8, "{busiest:?}");
    assert_eq!(busiest.sessions, 5, "{busiest:?}");
    sender.join().unwrap();
}
