//! Bad configurations, whether they come over the API or from a file: each
//! is refused with the path of the field at fault, and the configuration
//! in force keeps forwarding exactly as before.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use chaingate_hw_tests::dpu::{DpuFw, binary};
use chaingate_hw_tests::endpoint::Endpoint;
use chaingate_hw_tests::frames::{assert_same, udp};
use chaingate_hw_tests::reflector::Reflector;
use chaingate_hw_tests::require_root;
use chaingate_hw_tests::topology::Topology;
use chaingate_proto::dpu;
use chaingate_proto::dpu::dpu_control_client::DpuControlClient;
use tonic::transport::Channel;

const GOOD: &str = "
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
  - { priority: 1, match: { dst: 198.51.100.0/24 }, action: { chain: guarded } }
";

fn flows(first: u8, n: u8) -> Vec<Vec<u8>> {
    (first..first + n)
        .map(|i| {
            udp(
                (Ipv4Addr::new(10, 2, 0, i), 7000),
                (Ipv4Addr::new(198, 51, 100, 9), 80),
                true,
                &[i],
            )
        })
        .collect()
}

async fn apply(
    control: &mut DpuControlClient<Channel>,
    config: dpu::Config,
) -> Result<dpu::ApplyConfigResponse, tonic::Status> {
    control
        .apply_config(dpu::ApplyConfigRequest {
            config: Some(config),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_are_refused_and_traffic_goes_on() {
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
    let fw = Reflector::start(topo.netns(), &vf0.outer).unwrap();
    let mut lan_host = Endpoint::open(topo.netns(), &lan.outer).unwrap();
    let mut wan_host = Endpoint::open(topo.netns(), &wan.outer).unwrap();
    let mut control = dpu.client().await.unwrap();

    let (_, good) = chaingate_proto::file::load(GOOD, 1).unwrap();
    assert!(apply(&mut control, good.clone()).await.unwrap().applied);
    let established = flows(1, 4);
    lan_host.send(&established);
    assert_same(
        &wan_host.receive(4, Duration::from_secs(10)),
        &established,
        "with the good configuration",
    );

    // Over the API: each mistake, in a newer generation.
    let mut generation = 1;
    type Mistake = (fn(&mut dpu::Config), &'static str);
    let mistakes: [Mistake; 5] = [
        (
            |c| c.chains[0].services[0] = "ids".into(),
            "chains[0].services[0]: no service named \"ids\"",
        ),
        (
            |c| c.services.push(c.services[0].clone()),
            "services[1].name: another item has this name",
        ),
        (
            |c| c.policies[0].r#match.as_mut().unwrap().dst = Some("198.51.100.7/24".into()),
            "policies[0].match.dst: \"198.51.100.7/24\": host bits set",
        ),
        (
            |c| {
                c.ports.push(dpu::Port {
                    name: "vf7".into(),
                    role: dpu::PortRole::Vf.into(),
                });
            },
            "ports[3].name: no port named \"vf7\" on this DPU (it has lan, wan, vf0)",
        ),
        (
            |c| {
                c.ports[0].role = dpu::PortRole::Wan.into();
                c.ports[1].role = dpu::PortRole::Lan.into();
            },
            "ports[0].role: port \"lan\" is lan on this DPU, not wan",
        ),
    ];
    for (mutate, expected) in mistakes {
        generation += 1;
        let mut bad = good.clone();
        bad.generation = generation;
        mutate(&mut bad);
        let refused = apply(&mut control, bad).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().starts_with(expected),
            "expected {expected:?}, got {:?}",
            refused.message()
        );
    }
    // An older generation is not applied; the answer says which is.
    let mut old = good.clone();
    old.generation = 1;
    let answer = apply(&mut control, old).await.unwrap();
    assert!(!answer.applied);
    assert_eq!(answer.current_generation, 1);

    // From a file: an unknown field stops `dpu-fw ctl apply` before
    // anything is sent.
    let file = std::env::temp_dir().join(format!("cg-bad-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        GOOD.replace("capacity: 1Gbit", "capacity: 1Gbit, burst: 2"),
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["ctl", "--dpu", &dpu.addr.to_string(), "apply"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("services[0].burst: unknown field `burst`"),
        "{err}"
    );

    // Nothing changed: generation 1 still forwards old and new flows.
    let stats = control
        .get_stats(dpu::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.generation, 1);
    let more: Vec<Vec<u8>> = established.iter().cloned().chain(flows(50, 4)).collect();
    lan_host.send(&more);
    assert_same(
        &wan_host.receive(more.len(), Duration::from_secs(10)),
        &more,
        "after the refusals",
    );
    assert_eq!(fw.seen(), 12, "every frame through the chain");
}
