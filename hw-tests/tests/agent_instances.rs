//! The host agent end to end on veths: `dpu-fw` with afpacket ports, the
//! agent with the process launcher and three VFs, `chaingate-service
//! monitor` as the service function. Applying a configuration launches
//! the service's minimum, which becomes active on its probe and carries
//! traffic; `chaingate scale` adds one, `chaingate drain` removes one and
//! gives its VF back; a SIGKILLed instance is replaced and the DPU stops
//! using it.

use std::net::Ipv4Addr;
use std::time::Duration;

use chaingate_agent::launcher::probe_socket;
use chaingate_hw_tests::agent::{AgentProc, device_here, instances_in, monitor_gateway, pid_of};
use chaingate_hw_tests::dpu::DpuFw;
use chaingate_hw_tests::endpoint::Endpoint;
use chaingate_hw_tests::frames::{assert_same, udp};
use chaingate_hw_tests::require_root;
use chaingate_hw_tests::topology::Topology;

const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);

fn gateway() -> String {
    // A long hold: the scaler stays out of this scenario's manual steps.
    monitor_gateway("1Gbit", "{ min: 1, max: 3, hold: 10m, drain_timeout: 2s }")
}

fn flows(tag: u8) -> Vec<Vec<u8>> {
    (1..=8)
        .map(|i| {
            udp(
                (Ipv4Addr::new(10, 0, tag, i), 4000),
                (SERVER, 53),
                true,
                &[tag, i],
            )
        })
        .collect()
}

fn rx_of(agent: &AgentProc, instance: &str) -> u64 {
    let answer = probe_socket(
        &agent
            .run_dir
            .join("instances")
            .join(instance)
            .join("probe.sock"),
        Duration::from_secs(2),
    )
    .unwrap_or_default();
    answer
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rx="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn on_dpu(status: &serde_json::Value) -> bool {
    status["dpu_connected"] == true && status["dpu_generation"] == status["desired_generation"]
}

#[test]
fn instances_launch_scale_drain_and_are_replaced() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new().unwrap();
    let lan = topo.link("lan").unwrap();
    let wan = topo.link("wan").unwrap();
    let vfs: Vec<_> = (0..3)
        .map(|i| topo.host_link(&format!("vf{i}")).unwrap())
        .collect();
    let ports: Vec<(String, String, &str)> =
        [("lan", &lan.inner, "lan"), ("wan", &wan.inner, "wan")]
            .into_iter()
            .map(|(n, d, r)| (n.to_owned(), d.clone(), r))
            .chain(
                vfs.iter()
                    .enumerate()
                    .map(|(i, l)| (format!("vf{i}"), l.inner.clone(), "vf")),
            )
            .collect();
    let ports: Vec<(&str, &str, &str)> = ports
        .iter()
        .map(|(n, d, r)| (n.as_str(), d.as_str(), *r))
        .collect();
    let dpu = DpuFw::start(&ports, "sessions: 1024\n").unwrap();
    let vf_list: Vec<String> = vfs
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{{ port: vf{i}, netdev: {} }}", l.outer))
        .collect();
    let agent = AgentProc::start(&dpu.addr.to_string(), &vf_list, "").unwrap();
    let mut lan_host = Endpoint::open(topo.netns(), &lan.outer).unwrap();
    let mut wan_host = Endpoint::open(topo.netns(), &wan.outer).unwrap();

    // Apply: the minimum (one) is launched, probed, put on the DPU.
    let file = agent.dir.join("gateway.yaml");
    std::fs::write(&file, gateway()).unwrap();
    let out = agent.cli_ok(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.starts_with("applied"), "{out}");
    let status = agent.wait_for(
        "one active instance on the DPU",
        Duration::from_secs(30),
        |s| instances_in(s, "active") == ["mon-0"] && on_dpu(s),
    );
    assert_eq!(status["services"][0]["running"], 1);
    assert!(
        !device_here(&vfs[0].outer),
        "the VF moved into the instance's namespace"
    );

    let sent = flows(1);
    lan_host.send(&sent);
    assert_same(
        &wan_host.receive(sent.len(), Duration::from_secs(10)),
        &sent,
        "through mon-0",
    );
    assert!(rx_of(&agent, "mon-0") >= 8, "mon-0 saw the frames");

    // Scale to two: a second instance on the next VF.
    assert_eq!(
        agent.cli_ok(&["scale", "mon", "2"]).trim(),
        "mon: target 2 instances"
    );
    agent.wait_for("two active", Duration::from_secs(30), |s| {
        instances_in(s, "active").len() == 2 && on_dpu(s)
    });

    // Drain the new one: stopped after the drain, its VF back here.
    assert_eq!(agent.cli_ok(&["drain", "mon-1"]).trim(), "mon-1: draining");
    let status = agent.wait_for("mon-1 gone", Duration::from_secs(30), |s| {
        s["instances"].as_array().is_some_and(|a| a.len() == 1) && on_dpu(s)
    });
    assert_eq!(instances_in(&status, "active"), ["mon-0"]);
    assert_eq!(
        status["services"][0]["target"], 1,
        "drain lowered the target"
    );
    assert!(
        device_here(&vfs[1].outer),
        "mon-1's VF is back in the agent's namespace"
    );

    // SIGKILL mon-0: it is failed, taken off the DPU, and replaced.
    let pid = pid_of(&status, "mon-0").unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    let status = agent.wait_for("a replacement", Duration::from_secs(30), |s| {
        let active = instances_in(s, "active");
        active.len() == 1 && active[0] != "mon-0" && on_dpu(s)
    });
    let replacement = instances_in(&status, "active").remove(0);
    let sent = flows(2);
    lan_host.send(&sent);
    assert_same(
        &wan_host.receive(sent.len(), Duration::from_secs(10)),
        &sent,
        "through the replacement",
    );
    assert!(
        rx_of(&agent, &replacement) >= 8,
        "{replacement} carries the new sessions"
    );

    // A figure for the reader, not a check: launch to healthy, mon-0.
    let events: Vec<serde_json::Value> = agent
        .cli_ok(&["--json", "events"])
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let at = |kind: &str| {
        events
            .iter()
            .find(|e| e["kind"] == kind && e["instance"] == "mon-0")
            .and_then(|e| e["at_ms"].as_u64())
    };
    if let (Some(a), Some(b)) = (at("instance_launched"), at("instance_ready")) {
        eprintln!("process instance: launched to healthy in {} ms", b - a);
    }
    let kinds = agent.event_kinds();
    for want in [
        "config_applied",
        "instance_launched",
        "instance_ready",
        "scale_set",
        "drain_started",
        "drain_finished",
        "instance_stopped",
        "instance_failed",
    ] {
        assert!(
            kinds.iter().any(|k| k == want),
            "no {want} event in {kinds:?}"
        );
    }
    let table = agent.cli_ok(&["instances"]);
    assert!(table.starts_with("INSTANCE"), "{table}");
    assert!(table.contains(&replacement), "{table}");
    let sessions = agent.cli_ok(&["sessions"]);
    assert!(sessions.contains("192.0.2.80:53"), "{sessions}");
}
