//! Service VMs in the chain: the agent launches the service as a QEMU VM
//! (TCG on this kind of machine) whose NIC is a tap device that dpu-fw
//! has as a VF port; connections from the lan host pass the VM's service
//! on their way to the wan host and back, and the VM's stamp shows it.

use std::time::Duration;

use chaingate_hw_tests::agent::{AgentProc, instances_in, on_dpu};
use chaingate_hw_tests::dpu::DpuFw;
use chaingate_hw_tests::flows::{self, Plan};
use chaingate_hw_tests::require_root;
use chaingate_hw_tests::topology::Topology;
use chaingate_hw_tests::vm::{require_vm, static_service};

#[test]
fn connections_pass_a_service_vm() {
    if !require_root() {
        return;
    }
    let Some(kit) = require_vm() else { return };
    let service = static_service();
    let mut topo = Topology::new().unwrap();
    let lan = topo.link("lan").unwrap();
    let wan = topo.link("wan").unwrap();
    let tap = topo.tap("q0").unwrap();
    let dpu = DpuFw::start(
        &[
            ("lan", &lan.inner, "lan"),
            ("wan", &wan.inner, "wan"),
            ("vf0", &tap, "vf"),
        ],
        "sessions: 1024\n",
    )
    .unwrap();
    let agent = AgentProc::start(
        &dpu.addr.to_string(),
        &[format!("{{ port: vf0, tap: {tap} }}")],
        "",
    )
    .unwrap();
    // The image's service stamps 50 + its instance number.
    let initrd = agent.dir.join("monitor.img");
    kit.service_initramfs(&service, "monitor --stamp 50+", &[])
        .unwrap()
        .write_file(&initrd)
        .unwrap();
    let gateway = format!(
        "ports:
  - {{ name: lan, role: lan }}
  - {{ name: wan, role: wan }}
services:
  - name: mon
    capacity: 100Mbit
    scaling: {{ min: 1, max: 1 }}
    launch: {{ vm: {{ kernel: {}, initrd: {}, memory_mib: 256, cpus: 1 }} }}
chains:
  - {{ name: web, services: [mon] }}
policies:
  - {{ priority: 10, action: {{ chain: web }} }}
",
        kit.kernel.display(),
        initrd.display()
    );
    let file = agent.dir.join("gateway.yaml");
    std::fs::write(&file, gateway).unwrap();
    let applied = agent.cli_ok(&["apply", "-f", file.to_str().unwrap()]);
    assert!(applied.starts_with("applied"), "{applied}");
    // A boot under TCG takes seconds; a stalled one is failed at the
    // probe's start timeout and launched again by the agent.
    let status = agent.wait_for("the VM on the DPU", Duration::from_secs(150), |s| {
        instances_in(s, "active") == ["mon-0"] && on_dpu(s)
    });
    assert_eq!(status["instances"][0]["launcher"], "qemu", "{status:#}");

    let mut plan = Plan::udp(4, 25, 100);
    plan.echo = true;
    plan.settle = Duration::from_secs(3);
    let out = flows::run(
        &plan,
        (topo.netns(), &lan.outer),
        (topo.netns(), &wan.outer),
    )
    .unwrap();
    assert_eq!(out.forward.lost(&plan), 0, "{}", dpu.log());
    assert_eq!(out.back.lost(&plan), 0);
    assert_eq!((out.forward.corrupt, out.back.corrupt), (0, 0));
    assert_eq!(
        out.forward.stamps().into_keys().collect::<Vec<_>>(),
        [vec![50]],
        "every frame passed the VM"
    );
    assert_eq!(
        out.back.stamps().into_keys().collect::<Vec<_>>(),
        [vec![50]]
    );
    // The guest's own kernel kept quiet on its VF: nothing arrived off a
    // segment.
    let dropped = dpu.stats().fast_path.unwrap_or_default().dropped;
    assert_eq!(
        dropped.get("not_a_segment").copied().unwrap_or(0),
        0,
        "{dropped:?}"
    );
    eprintln!(
        "through the VM: one way p50 {:?}, round trip p50 {:?}",
        out.forward.latency.percentile(50.0).unwrap(),
        out.back.latency.percentile(50.0).unwrap()
    );
}
